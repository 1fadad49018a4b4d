//! The one clock of a running pibl: real time plus an offset that tests advance, so anything that
//! expires (tokens, lock-outs, throttles, cache freshness, cool-downs, rate-limit buckets) can be
//! aged without sleeping. Made once at start-up and passed to both planes, so a JWT issued by the API
//! is checked on `auth = jwt` routes against the same time. Socket deadlines are not read from it:
//! those are the kernel's time, and a test never needs to age them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Monotonic and wall-clock time, both shifted by the same offset. Clones share the offset.
#[derive(Debug, Clone, Default)]
pub struct Clock(Arc<AtomicU64>);

impl Clock {
    /// The system's clock, with no offset until [`Clock::advance`] moves it.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// Monotonic now, for deadlines and durations.
    pub fn now(&self) -> Instant {
        Instant::now() + self.offset()
    }

    /// Wall-clock now, for HTTP dates (`Date`, `Expires`, `Last-Modified`) and stored timestamps.
    pub fn wall(&self) -> SystemTime {
        SystemTime::now() + self.offset()
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        epoch_ms(self.wall())
    }

    /// Now, in whole seconds since the Unix epoch (JWT's `iat`, `nbf`, `exp`).
    pub fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// Moves time forward for everything that reads this clock or a clone of it.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
    }

    fn offset(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

/// Milliseconds since the Unix epoch (0 for a time before 1970).
fn epoch_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Formats milliseconds since the epoch as RFC 3339 in UTC, e.g. `2026-11-23T12:33:12.042Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_463_915_150_042), "2016-05-22T11:05:50.042Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn advancing_moves_every_clone_and_both_kinds_of_time() {
        let clock = Clock::system();
        let copy = clock.clone();
        let (mono, wall) = (clock.now(), clock.now_ms());
        copy.advance(Duration::from_secs(3600));
        assert!(clock.now() >= mono + Duration::from_secs(3600));
        assert!(clock.now_ms() >= wall + 3_600_000);
        assert!(Clock::system().now_secs() > 1_700_000_000);
    }
}
