//! Log output: `simplelog` to stderr, one line per event, with the access log on the `access` target.

use std::io::IsTerminal;

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
