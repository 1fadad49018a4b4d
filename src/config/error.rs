//! Why a configuration was rejected: [`ConfigError`] for a file, with `file:line: key:` in every
//! message, and [`ValueError`] for one value given outside a file (a `parser` flag).

use std::fmt;
use std::io;

/// Why a configuration file was rejected. Every message starts with `file:line:` (or `file:` when no one
/// line is to blame) and names the key, so the user can jump straight to the mistake.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read: missing, unreadable, or not UTF-8.
    Io { file: String, source: io::Error },
    /// The text is not INI at all.
    Syntax { file: String, line: usize, message: String },
    /// A section, key or value is wrong. `key` is the key name, or `[name]` for a section.
    Invalid { file: String, line: Option<usize>, key: String, message: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { file, source } => write!(f, "{file}: cannot read: {source}"),
            ConfigError::Syntax { file, line, message } => write!(f, "{file}:{line}: syntax: {message}"),
            ConfigError::Invalid { file, line: Some(line), key, message } => {
                write!(f, "{file}:{line}: {key}: {message}")
            }
            ConfigError::Invalid { file, line: None, key, message } => write!(f, "{file}: {key}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// By hand because `io::Error` has no `PartialEq`; comparing kind and text is enough for tests that check
/// `Config::from_ini_str(..) == Ok(config)`.
impl PartialEq for ConfigError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ConfigError::Io { file: a, source: x }, ConfigError::Io { file: b, source: y }) => {
                a == b && x.kind() == y.kind() && x.to_string() == y.to_string()
            }
            (
                ConfigError::Syntax { file: a, line: l, message: m },
                ConfigError::Syntax { file: b, line: k, message: n },
            ) => a == b && l == k && m == n,
            (
                ConfigError::Invalid { file: a, line: l, key: k, message: m },
                ConfigError::Invalid { file: b, line: j, key: q, message: n },
            ) => a == b && l == j && k == q && m == n,
            _ => false,
        }
    }
}

/// One value that does not fit its key, given outside a file (so there is no line to name). The message
/// quotes the value as written and says what would fit, as the part after `file:line: key: ` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    message: String,
}

impl ValueError {
    pub(super) fn new(message: String) -> Self {
        ValueError { message }
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ValueError {}
