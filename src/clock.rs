//! Wall-clock time for everything in the management plane that expires or is stored (tokens,
//! lock-outs, throttles, log timestamps): the system clock in production, a clock that tests set
//! and advance, so nothing has to sleep to age state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, from the system or set by hand.
#[derive(Debug, Clone)]
pub struct Clock(Arc<Source>);

#[derive(Debug)]
enum Source {
    System,
    Manual(AtomicU64),
}

impl Clock {
    /// The system's real-time clock.
    pub fn system() -> Clock {
        Clock(Arc::new(Source::System))
    }

    /// A clock that stands still at `start_ms` until [`Clock::advance`] or [`Clock::set`] moves it.
    /// Copies share the same time.
    pub fn manual(start_ms: u64) -> Clock {
        Clock(Arc::new(Source::Manual(AtomicU64::new(start_ms))))
    }

    /// A manual clock starting at the current system time.
    pub fn manual_now() -> Clock {
        Clock::manual(system_ms())
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match &*self.0 {
            Source::System => system_ms(),
            Source::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// Now, in whole seconds since the Unix epoch (JWT's `iat`, `nbf`, `exp`).
    pub fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// Moves a manual clock forward; the system clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Source::Manual(ms) = &*self.0 {
            ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        }
    }

    /// Sets a manual clock; the system clock ignores it.
    pub fn set(&self, to_ms: u64) {
        if let Source::Manual(ms) = &*self.0 {
            ms.store(to_ms, Ordering::SeqCst);
        }
    }
}

/// The system clock in milliseconds since the Unix epoch (0 if it is set before 1970).
pub fn system_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
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
    fn manual_clock_moves_only_when_told() {
        let clock = Clock::manual(1_000);
        let copy = clock.clone();
        assert_eq!(clock.now_ms(), 1_000);
        copy.advance(Duration::from_secs(2));
        assert_eq!((clock.now_ms(), clock.now_secs()), (3_000, 3));
        clock.set(10);
        assert_eq!(copy.now_ms(), 10);
        assert!(Clock::system().now_secs() > 1_700_000_000);
    }
}
