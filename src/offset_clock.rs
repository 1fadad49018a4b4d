//! The data plane's notion of time: real time plus an offset that tests advance, so anything that expires
//! (cache freshness, cool-downs) can be aged without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Monotonic and wall-clock time, both shifted by the same adjustable offset.
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_nanos: AtomicU64,
}

impl OffsetClock {
    pub fn now(&self) -> Instant {
        Instant::now() + self.offset()
    }

    /// Wall-clock time, for HTTP dates (`Date`, `Expires`, `Last-Modified`).
    pub fn system_now(&self) -> SystemTime {
        SystemTime::now() + self.offset()
    }

    /// Moves time forward for everything that reads this clock.
    pub fn advance(&self, by: Duration) {
        self.offset_nanos.fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
    }

    fn offset(&self) -> Duration {
        Duration::from_nanos(self.offset_nanos.load(Ordering::Relaxed))
    }
}
