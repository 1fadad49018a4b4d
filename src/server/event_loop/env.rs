//! What every session step of one loop can reach: the server's shared state, the loop's poller
//! registry (to register backend sockets) and its upstream pool, and the time of the wake-up.

use std::sync::Arc;
use std::time::Instant;

use mio::{Registry, Waker};
use parking_lot::Mutex;

use crate::http::buffer::SpareBuffers;
use crate::server::event_loop::spread::Arrival;
use crate::server::event_loop::timers::Owner;
use crate::server::event_loop::upstream_pool::UpstreamPool;
use crate::server::shared::Shared;

/// A request target that makes a loop panic, in the library's own tests of panic containment.
#[cfg(test)]
pub const PANIC_TARGET: &str = "/__pibl_test_panic";

/// What other threads hand a loop: sessions to run again (a cache fetch they waited for
/// finished) and connections another loop accepted for it.
pub struct Inbox {
    ready: Mutex<Vec<Owner>>,
    arrivals: Mutex<Vec<Arrival>>,
    waker: Arc<Waker>,
}

impl Inbox {
    pub fn new(waker: Arc<Waker>) -> Inbox {
        Inbox { ready: Mutex::new(Vec::new()), arrivals: Mutex::new(Vec::new()), waker }
    }

    /// Gives the loop a connection to serve; callable from any thread.
    pub fn hand_over(&self, arrival: Arrival) {
        self.arrivals.lock().push(arrival);
        let _ = self.waker.wake();
    }

    /// The connections handed over since the last call.
    pub fn take_arrivals(&self) -> Vec<Arrival> {
        std::mem::take(&mut *self.arrivals.lock())
    }

    /// Asks the loop to run `owner` again; callable from any thread.
    pub fn push(&self, owner: Owner) {
        self.ready.lock().push(owner);
        let _ = self.waker.wake();
    }

    /// The sessions asked for since the last call.
    pub fn take(&self) -> Vec<Owner> {
        std::mem::take(&mut *self.ready.lock())
    }
}

/// A loop's resources, lent to one session step.
pub struct Env<'a> {
    pub shared: &'a Shared,
    pub registry: &'a Registry,
    pub pool: &'a mut UpstreamPool,
    /// The loop's emptied read buffers, lent to the next reads.
    pub spare: &'a mut SpareBuffers,
    pub inbox: &'a Arc<Inbox>,
    /// Real time at the wake-up, for socket deadlines.
    pub now: Instant,
}
