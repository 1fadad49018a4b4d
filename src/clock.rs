//! The one clock of a running pibl: real time plus an offset that tests advance, so anything that
//! expires (tokens, lock-outs, throttles, cache freshness, cool-downs, rate-limit buckets) can be
//! aged without sleeping. Made once at start-up and passed to both planes, so a JWT issued by the API
//! is checked on `auth = jwt` routes against the same time. Socket deadlines are not read from it:
//! those are the kernel's time, and a test never needs to age them.
//!
//! It also owns dates: [`Utc`] is pibl's only calendar arithmetic and writes a time as RFC 3339 (API
//! answers, the JSON access log, log messages) or as the common log format's time, and
//! [`parse_http_date`] reads `Date`, `Expires` and `Last-Modified`. (The process logger's line prefix
//! is `simplelog`'s own.)

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Monotonic and wall-clock time, both shifted by the same offset. Clones share the offset.
#[derive(Debug, Clone, Default)]
pub struct Clock(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    offset_nanos: AtomicU64,
    /// A stopped clock's instant: time moves only by [`Clock::advance`]. For tests that assert an
    /// exact duration (a `Retry-After`), which a loaded machine would otherwise shift by a second.
    stopped_at: Option<(Instant, SystemTime)>,
}

impl Clock {
    /// The system's clock, with no offset until [`Clock::advance`] moves it.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that stands at the current time and moves only when [`Clock::advance`] moves it.
    pub fn stopped() -> Clock {
        Clock(Arc::new(Inner {
            offset_nanos: AtomicU64::new(0),
            stopped_at: Some((Instant::now(), SystemTime::now())),
        }))
    }

    /// Monotonic now, for deadlines and durations.
    pub fn now(&self) -> Instant {
        self.0.stopped_at.map_or_else(Instant::now, |(at, _)| at) + self.offset()
    }

    /// Wall-clock now, for HTTP dates (`Date`, `Expires`, `Last-Modified`) and stored timestamps.
    pub fn wall(&self) -> SystemTime {
        self.0.stopped_at.map_or_else(SystemTime::now, |(_, at)| at) + self.offset()
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
        self.0.offset_nanos.fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
    }

    fn offset(&self) -> Duration {
        Duration::from_nanos(self.0.offset_nanos.load(Ordering::Relaxed))
    }
}

/// Milliseconds since the Unix epoch (0 for a time before 1970).
pub fn epoch_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------------------
// Dates: the one place that writes a time as text and reads HTTP dates
// ---------------------------------------------------------------------------------------------------------

/// A UTC calendar time, to the millisecond: what every date pibl writes is made from. Times before
/// 1970 (a clock set wrong) show as 1970. Done by hand rather than with a date crate for two formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    millis: u32,
}

impl Utc {
    /// The calendar time of `time`.
    pub fn at(time: SystemTime) -> Utc {
        Utc::from_epoch_ms(epoch_ms(time))
    }

    /// The calendar time `ms` milliseconds after the Unix epoch.
    pub fn from_epoch_ms(ms: u64) -> Utc {
        let secs = ms / 1000;
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let rem = (secs % 86_400) as u32;
        Utc { year, month, day, hour: rem / 3600, minute: rem / 60 % 60, second: rem % 60, millis: (ms % 1000) as u32 }
    }

    /// `2026-11-23T12:47:05.123Z` (RFC 3339), for the API and JSON access logs.
    pub fn write_rfc3339(&self, out: &mut impl fmt::Write) -> fmt::Result {
        write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }

    /// `23/Nov/2026:12:47:05 +0000`, the common log format's time. Always UTC: the local offset cannot
    /// be read safely from a multi-threaded process, and servers usually run in UTC anyway.
    pub fn write_common_log(&self, out: &mut impl fmt::Write) -> fmt::Result {
        const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        let month = MONTHS.get(self.month as usize - 1).copied().unwrap_or("Jan");
        write!(
            out,
            "{:02}/{month}/{:04}:{:02}:{:02}:{:02} +0000",
            self.day, self.year, self.hour, self.minute, self.second
        )
    }
}

/// Formats milliseconds since the epoch as RFC 3339 in UTC, e.g. `2026-11-23T12:33:12.042Z`.
pub fn rfc3339(ms: u64) -> String {
    let mut text = String::with_capacity(24);
    let _ = Utc::from_epoch_ms(ms).write_rfc3339(&mut text);
    text
}

/// Parses an HTTP date (IMF-fixdate, or the obsolete RFC 850 and asctime forms).
pub fn parse_http_date(text: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(text).ok()
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, 0..=365
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
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

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn calendar() {
        let rfc = |time| {
            let mut s = String::new();
            Utc::at(time).write_rfc3339(&mut s).unwrap();
            s
        };
        assert_eq!(rfc(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc(at(951_782_400, 999)), "2000-02-29T00:00:00.999Z");
        assert_eq!(rfc(at(951_868_799, 0)), "2000-02-29T23:59:59.000Z");
        assert_eq!(rfc(at(1_000_000_000, 0)), "2001-09-09T01:46:40.000Z");
        assert_eq!(rfc(at(4_102_444_800, 0)), "2100-01-01T00:00:00.000Z");
        assert_eq!(rfc(at(1_798_761_599, 0)), "2026-12-31T23:59:59.000Z");
        assert_eq!(
            rfc(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z",
            "a clock before 1970 does not panic"
        );
        let mut clf = String::new();
        Utc::at(at(1_709_164_800, 0)).write_common_log(&mut clf).unwrap();
        assert_eq!(clf, "29/Feb/2024:00:00:00 +0000");
    }

    #[test]
    fn parses_the_three_http_date_forms() {
        let expected = Some(at(784_111_777, 0));
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), expected);
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), expected);
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), expected);
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn a_stopped_clock_moves_only_when_advanced() {
        let clock = Clock::stopped();
        let (mono, wall) = (clock.now(), clock.wall());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!((clock.now(), clock.wall()), (mono, wall));
        clock.clone().advance(Duration::from_secs(20));
        assert_eq!(clock.now() - mono, Duration::from_secs(20));
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
