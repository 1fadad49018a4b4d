//! Why a request could not be relayed, by whose fault — the client (4xx), a backend (502/504), the
//! gateway's rules — which picks the status code and the fields of the answer pibl writes for it.

use std::fmt;
use std::io::{self, Write};

use crate::gateway::Refusal;
use crate::http::body::BodyError;

/// Why a request could not be relayed, by whose fault.
#[derive(Debug)]
pub enum ForwardError {
    /// No backend accepted a connection (502).
    NoBackend,
    /// A backend accepted the request but did not answer in time (504).
    Timeout(String),
    /// A backend answered wrongly or went away (502).
    Upstream(String),
    /// pibl itself is out of a resource (file descriptors) and cannot reach a backend now (503).
    Overloaded(String),
    /// The client's request body could not be read (400, 408 or 413).
    ClientBody(BodyError),
    /// The client went away or stopped reading; nothing can be sent.
    ClientGone(io::Error),
    /// `Cache-Control: only-if-cached` and nothing usable is stored (504).
    NotCached,
    /// The gateway refused the request before any backend saw it.
    Refused(Refusal),
}

impl ForwardError {
    pub fn status(&self) -> u16 {
        match self {
            ForwardError::NoBackend | ForwardError::Upstream(_) => 502,
            ForwardError::Timeout(_) | ForwardError::NotCached => 504,
            ForwardError::Overloaded(_) => 503,
            ForwardError::Refused(Refusal::Forbidden) => 403,
            ForwardError::Refused(Refusal::RateLimited(_)) => 429,
            ForwardError::Refused(Refusal::Unauthorized { status, .. }) => *status,
            ForwardError::Refused(Refusal::AuthBroken { status, .. }) => *status,
            ForwardError::Refused(Refusal::Hidden) => 404,
            ForwardError::ClientBody(BodyError::TooLarge) => 413,
            ForwardError::ClientBody(BodyError::Read(e)) if is_timeout(e) => 408,
            ForwardError::ClientBody(_) => 400,
            ForwardError::ClientGone(_) => 499,
        }
    }

    /// The backend failed or did not answer: a stored response may stand in (`stale-if-error`), and
    /// the request body, if any, has been read in full.
    pub fn is_backend_fault(&self) -> bool {
        matches!(self, ForwardError::NoBackend | ForwardError::Timeout(_) | ForwardError::Upstream(_))
    }

    /// Header fields the error answer carries: `Retry-After` for 429, the auth server's challenge
    /// for 401.
    pub fn answer_fields(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            ForwardError::Refused(Refusal::RateLimited(wait)) => {
                let _ = write!(out, "Retry-After: {}\r\n", wait.as_secs_f64().ceil().max(1.0) as u64);
            }
            ForwardError::Overloaded(_) => out.extend_from_slice(b"Retry-After: 1\r\n"),
            ForwardError::Refused(Refusal::Unauthorized { challenge: Some(challenge), .. }) => {
                out.extend_from_slice(b"WWW-Authenticate: ");
                out.extend_from_slice(challenge);
                out.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
        out
    }
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardError::NoBackend => f.write_str("no backend is reachable"),
            ForwardError::Timeout(what) => write!(f, "backend timed out: {what}"),
            ForwardError::Upstream(what) => f.write_str(what),
            ForwardError::Overloaded(what) => write!(f, "{what}; retry shortly"),
            ForwardError::ClientBody(e) => write!(f, "request body: {e}"),
            ForwardError::ClientGone(e) => write!(f, "client connection failed: {e}"),
            ForwardError::NotCached => f.write_str("only-if-cached was asked and no usable response is stored"),
            ForwardError::Refused(Refusal::Forbidden) => f.write_str("access denied"),
            ForwardError::Refused(Refusal::RateLimited(_)) => f.write_str("rate limit exceeded; retry later"),
            ForwardError::Refused(Refusal::Unauthorized { .. }) => f.write_str("authentication required"),
            // The details (which server, why) go to the log, not to the client.
            ForwardError::Refused(Refusal::AuthBroken { .. }) => f.write_str("the authentication service failed"),
            ForwardError::Refused(Refusal::Hidden) => f.write_str("no such resource"),
        }
    }
}

/// A request that could not be answered normally, and the backend involved, if any.
#[derive(Debug)]
pub struct Failure {
    pub error: ForwardError,
    /// The backend that failed, for the access log (`None` when none was reached).
    pub backend: Option<String>,
}

impl From<ForwardError> for Failure {
    /// A failure before any backend was involved.
    fn from(error: ForwardError) -> Failure {
        Failure { error, backend: None }
    }
}

/// A socket timeout, as `std` reports it on the platforms pibl runs on.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}
