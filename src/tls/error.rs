//! Why a certificate, key or CA file was refused: the file, and what is wrong with it (the operator's
//! fault, so the message names what to fix).

use std::fmt;
use std::io;
use std::path::Path;

/// A refused certificate, key or CA file: `file: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError {
    pub file: String,
    pub problem: String,
}

impl CertError {
    pub fn new(file: impl Into<String>, problem: impl Into<String>) -> CertError {
        CertError { file: file.into(), problem: problem.into() }
    }

    /// A file that could not be read, said the way an operator fixes it.
    pub fn unreadable(path: &Path, e: &io::Error) -> CertError {
        let problem = match e.kind() {
            io::ErrorKind::NotFound => "does not exist".to_string(),
            io::ErrorKind::PermissionDenied => "cannot be read: permission denied".to_string(),
            _ => format!("cannot be read: {e}"),
        };
        CertError::new(path.display().to_string(), problem)
    }
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.problem)
    }
}

impl std::error::Error for CertError {}
