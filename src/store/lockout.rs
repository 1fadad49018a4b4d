//! Lock-out after repeated failed logins, the in-process form of the seed's Kafka flow: the
//! `/api/auth` handler publishes each attempt's outcome on a channel and answers at once; this
//! consumer thread records them in the database and blocks an e-mail address after
//! [`MAX_FAILURES`] failures in a row, for `lockout_secs`. The count and the blocks live in the
//! database, so a restart lifts none, and with PostgreSQL failures through every instance add up to
//! one count and a block holds on all of them. The handler checks the block before the password.

use std::io;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::background::{Background, StopSignal};
use crate::clock::{rfc3339, Clock};
use crate::store::Store;

/// Failed logins in a row that block an address.
pub const MAX_FAILURES: u32 = 5;
/// Events waiting for the consumer; past it the producer waits (it never drops a failure).
const QUEUE: usize = 4096;

/// The outcome of one login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginEvent {
    Failed { email: String },
    Succeeded { email: String },
}

/// The running consumer.
pub struct Lockout {
    tx: Sender<LoginEvent>,
    thread: Background,
}

impl Lockout {
    /// Starts the consumer on its own connection; blocks last `lock_for`.
    pub fn start(store: Store, lock_for: Duration, clock: Clock) -> io::Result<Lockout> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let lock_ms = lock_for.as_millis() as u64;
        let thread = Background::spawn("pibl-lockout", move |stop| run(&store, &rx, stop, lock_ms, &clock))?;
        Ok(Lockout { tx, thread })
    }

    /// Where the auth handler publishes outcomes.
    pub fn sender(&self) -> Sender<LoginEvent> {
        self.tx.clone()
    }

    /// Records what is queued and stops.
    pub fn shutdown(self) {
        self.thread.stop();
    }
}

fn run(store: &Store, rx: &Receiver<LoginEvent>, stop: &StopSignal, lock_ms: u64, clock: &Clock) {
    loop {
        crossbeam_channel::select! {
            recv(rx) -> event => match event {
                Ok(event) => apply(store, event, lock_ms, clock),
                Err(_) => break,
            },
            recv(stop.stopped()) -> _ => break,
        }
    }
    for event in rx.try_iter() {
        apply(store, event, lock_ms, clock);
    }
}

fn apply(store: &Store, event: LoginEvent, lock_ms: u64, clock: &Clock) {
    let result = match &event {
        LoginEvent::Failed { email } => {
            store.record_failure(email, clock.now_ms(), MAX_FAILURES, lock_ms).map(|until| {
                if let Some(until) = until {
                    log::warn!("[lockout] {email} blocked until {} after {MAX_FAILURES} failed logins", rfc3339(until));
                }
            })
        }
        LoginEvent::Succeeded { email } => store.reset_failures(email),
    };
    if let Err(e) = result {
        log::error!("[lockout] cannot record {event:?}: {e}");
    }
}
