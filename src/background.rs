//! Background threads that run until they are asked to stop: [`Background::spawn`] starts a named
//! thread and hands its body a [`StopSignal`]; [`Background::stop`] raises the signal and waits for
//! the thread to finish, so whatever it still holds is written before shutdown goes on. Dropping a
//! `Background` raises the signal without waiting: an error path that drops half-started parts must
//! not block on them.
//!
//! The body decides how it notices the signal: a periodic job sleeps in [`StopSignal::wait`], which
//! returns early when the signal is raised; a queue consumer waits on its queue and on
//! [`StopSignal::stopped`] at once (`crossbeam_channel::select!`), so it sleeps until either has
//! something; a thread stopped by other means (a message on its own queue, a flag it shares with
//! other threads) ignores it and is only joined.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};

/// The request to stop, shared by a [`Background`] and its thread. Raised once, never lowered.
#[derive(Debug)]
pub struct StopSignal {
    raised: AtomicBool,
    /// Only for sleeping in [`StopSignal::wait`]; the flag itself is read without it.
    lock: Mutex<()>,
    wake: Condvar,
    /// Dropped when the signal is raised, which disconnects `stopped`.
    raiser: Mutex<Option<Sender<()>>>,
    stopped: Receiver<()>,
}

impl Default for StopSignal {
    fn default() -> StopSignal {
        let (raiser, stopped) = crossbeam_channel::bounded(0);
        StopSignal {
            raised: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            raiser: Mutex::new(Some(raiser)),
            stopped,
        }
    }
}

impl StopSignal {
    /// Whether the thread has been asked to stop.
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Sleeps for `timeout`, or until the signal is raised if that comes first; true when it is raised.
    pub fn wait(&self, timeout: Duration) -> bool {
        // A timeout too long to add to now is a wait without one.
        let deadline = Instant::now().checked_add(timeout);
        let mut guard = self.lock.lock();
        while !self.is_raised() {
            match deadline {
                Some(deadline) => {
                    if self.wake.wait_until(&mut guard, deadline).timed_out() {
                        break;
                    }
                }
                None => self.wake.wait(&mut guard),
            }
        }
        self.is_raised()
    }

    /// A channel that never carries a message and is disconnected once the signal is raised: a queue
    /// consumer selects on it beside its queue and sleeps until one of them has something, instead
    /// of waking on a timer to look at the flag.
    pub fn stopped(&self) -> &Receiver<()> {
        &self.stopped
    }

    /// The signal as a plain flag, for code that polls an `&AtomicBool` between blocking reads.
    pub fn as_flag(&self) -> &AtomicBool {
        &self.raised
    }

    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        // Taking the lock waits out a waiter between its look at the flag and its sleep, so the
        // notification cannot fall in that gap and be lost.
        let _guard = self.lock.lock();
        self.wake.notify_all();
        drop(self.raiser.lock().take());
    }
}

/// A running background thread; see the module documentation for how it stops.
#[derive(Debug)]
pub struct Background {
    signal: Arc<StopSignal>,
    handle: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts `body` on a thread called `name` (what `top -H`, `ps -L` and panic messages show).
    pub fn spawn(name: &str, body: impl FnOnce(&StopSignal) + Send + 'static) -> io::Result<Background> {
        let signal = Arc::new(StopSignal::default());
        let theirs = Arc::clone(&signal);
        let handle = thread::Builder::new().name(name.to_string()).spawn(move || body(&theirs))?;
        Ok(Background { signal, handle: Some(handle) })
    }

    /// Asks the thread to stop and waits until it has finished. A thread that panicked has already
    /// had its panic reported, and there is nothing left to stop.
    pub fn stop(self) {
        self.stop_waking(|| {});
    }

    /// Like [`Background::stop`] for a thread blocked where the signal cannot reach it (an
    /// `accept()`): `wake` runs after the signal is raised and before the join, to unblock it.
    pub fn stop_waking(mut self, wake: impl FnOnce()) {
        self.signal.raise();
        wake();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Background {
    /// Asks the thread to stop, without waiting for it.
    fn drop(&mut self) {
        self.signal.raise();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn wait_times_out_unless_raised() {
        let signal = StopSignal::default();
        assert!(!signal.wait(Duration::from_millis(1)));
        signal.raise();
        assert!(signal.wait(Duration::from_secs(3600)), "a raised signal does not sleep");
        assert!(signal.wait(Duration::MAX), "nor does one without a deadline");
        assert!(signal.as_flag().load(Ordering::Acquire));
    }

    #[test]
    fn stop_wakes_a_sleeping_thread_and_joins_it() {
        let rounds = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&rounds);
        let started = Instant::now();
        let thread = Background::spawn("pibl-test-periodic", move |stop| {
            while !stop.wait(Duration::from_secs(3600)) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
            counted.fetch_add(100, Ordering::Relaxed);
        })
        .unwrap();
        thread.stop();
        assert_eq!(rounds.load(Ordering::Relaxed), 100, "the body finished before stop returned");
        assert!(started.elapsed() < Duration::from_secs(60), "stop did not wait out the hour");
    }

    #[test]
    fn a_queue_consumer_sleeps_until_a_message_or_the_stop() {
        let (tx, rx) = crossbeam_channel::unbounded::<u32>();
        let (seen_tx, seen_rx) = crossbeam_channel::unbounded();
        let thread = Background::spawn("pibl-test-consumer", move |stop| loop {
            crossbeam_channel::select! {
                recv(rx) -> msg => match msg {
                    Ok(n) => seen_tx.send(n).unwrap(),
                    Err(_) => return,
                },
                recv(stop.stopped()) -> _ => {
                    seen_tx.send(u32::MAX).unwrap();
                    return;
                }
            }
        })
        .unwrap();
        tx.send(7).unwrap();
        assert_eq!(seen_rx.recv_timeout(Duration::from_secs(10)), Ok(7));
        // The queue stays open: only the stop can end the wait.
        thread.stop();
        assert_eq!(seen_rx.recv_timeout(Duration::from_secs(10)), Ok(u32::MAX));
        drop(tx);
    }

    #[test]
    fn drop_asks_the_thread_to_stop_and_names_it() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let thread = Background::spawn("pibl-test-named", move |stop| {
            let raised = stop.wait(Duration::MAX);
            let _ = tx.send((raised, thread::current().name().map(str::to_string)));
        })
        .unwrap();
        drop(thread);
        let (raised, name) = rx.recv_timeout(Duration::from_secs(10)).expect("the thread saw the signal");
        assert!(raised);
        assert_eq!(name.as_deref(), Some("pibl-test-named"));
    }
}
