//! The access-log keys: `access_log_format` ([`AccessLogFormat`]) and `access_log_file`
//! ([`AccessLogTarget`]), read from and written back to their INI text. Writing the log is
//! `observe::access_log`'s business; this is only what the configuration says about it.

use std::path::PathBuf;

use super::values::render_path;

/// `access_log_format`: how one request is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogFormat {
    /// The original proxy's line: `[*] Request done: <client> => <METHOD> <path> <status> <secs>s <= <backend>`.
    #[default]
    Seed,
    /// Apache/nginx combined log format, which log analysers (GoAccess, AWStats) read as is.
    Combined,
    /// One JSON object per line, for log shippers.
    Json,
}

impl AccessLogFormat {
    /// The name used in `parser.ini`.
    pub fn name(self) -> &'static str {
        match self {
            AccessLogFormat::Seed => "seed",
            AccessLogFormat::Combined => "combined",
            AccessLogFormat::Json => "json",
        }
    }
}

/// `access_log_file`: where access records go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLogTarget {
    /// Through the process logger (stderr), beside every other log line (empty value).
    #[default]
    Logger,
    /// Bare lines on standard output (`-`), for a supervisor that collects stdout.
    Stdout,
    /// Appended to this file, reopened on SIGUSR1 so logrotate can move it away.
    File(PathBuf),
}

pub(super) fn parse_access_log_format(v: &str) -> Result<AccessLogFormat, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "seed" => Ok(AccessLogFormat::Seed),
        "combined" => Ok(AccessLogFormat::Combined),
        "json" => Ok(AccessLogFormat::Json),
        _ => Err(format!("{v:?} is not an access log format (seed, combined or json)")),
    }
}

/// Empty: through the logger; `-`: standard output; anything else is a file name, kept as written (as
/// `database` is) so a name with spaces survives.
pub(super) fn parse_access_log_file(v: &str) -> Result<AccessLogTarget, String> {
    match v.trim() {
        "" => Ok(AccessLogTarget::Logger),
        "-" => Ok(AccessLogTarget::Stdout),
        _ => Ok(AccessLogTarget::File(PathBuf::from(v))),
    }
}

/// The `access_log_file` value that [`parse_access_log_file`] reads back to `target`.
pub(super) fn render_access_log_file(target: &AccessLogTarget) -> String {
    match target {
        AccessLogTarget::Logger => String::new(),
        AccessLogTarget::Stdout => "-".to_string(),
        AccessLogTarget::File(path) => render_path(path),
    }
}
