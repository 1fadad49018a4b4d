//! Log output: `simplelog` to stderr, one line per event, with the access log on the `access` target;
//! and the throttle for warnings that would otherwise repeat on every retry.

use std::fmt;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use log::LevelFilter;
use simplelog::{ColorChoice, ConfigBuilder, SimpleLogger, TermLogger, TerminalMode};

/// Installs the process-wide logger; later calls are ignored (tests start many servers).
pub fn init(level: LevelFilter) {
    let config = ConfigBuilder::new()
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .set_time_format_rfc3339()
        .build();
    // Colours only for a person at a terminal, never escape codes in a log file.
    let color = if std::io::stderr().is_terminal() { ColorChoice::Auto } else { ColorChoice::Never };
    if TermLogger::init(level, config.clone(), TerminalMode::Stderr, color).is_err() {
        let _ = SimpleLogger::init(level, config);
    }
}

/// Parses a `--log-level` / `log_level` value.
pub fn parse_level(text: &str) -> Option<LevelFilter> {
    match text.to_ascii_lowercase().as_str() {
        "off" => Some(LevelFilter::Off),
        "error" => Some(LevelFilter::Error),
        "warn" | "warning" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

/// A warning about a condition that can last (out of descriptors at accept), written at most once
/// per interval with the count of repeats in between: a line every few seconds instead of one per
/// retry, which would flood the log exactly when the machine is already short of resources.
#[derive(Debug)]
pub struct Throttled {
    every: Duration,
    last: Option<Instant>,
    repeats: u64,
}

impl Throttled {
    pub const fn new(every: Duration) -> Throttled {
        Throttled { every, last: None, repeats: 0 }
    }

    /// Writes `message` at warn level unless a line was written less than an interval ago.
    pub fn warn(&mut self, now: Instant, message: fmt::Arguments<'_>) {
        match self.due(now) {
            Some(0) => log::warn!("{message}"),
            Some(repeats) => log::warn!("{message} ({repeats} more since the last such line)"),
            None => {}
        }
    }

    /// `Some(repeats since the last line)` when a line is due now; `None` counts one more repeat.
    fn due(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|at| now.saturating_duration_since(at) < self.every) {
            self.repeats += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.repeats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lasting_condition_is_written_once_per_interval_with_its_repeats() {
        let mut throttle = Throttled::new(Duration::from_secs(5));
        let start = Instant::now();
        assert_eq!(throttle.due(start), Some(0), "the first occurrence is written");
        for ms in [10, 20, 4_999] {
            assert_eq!(throttle.due(start + Duration::from_millis(ms)), None, "{ms} ms later");
        }
        assert_eq!(throttle.due(start + Duration::from_secs(5)), Some(3), "then one line with the repeats");
        assert_eq!(throttle.due(start + Duration::from_secs(6)), None);
        assert_eq!(throttle.due(start + Duration::from_secs(60)), Some(1));
    }
}
