//! What one request carries through the pipeline: the per-worker [`Scratch`] buffers, the
//! per-request [`RequestCtx`] (server state, buffers, client connection, request, dispatch
//! decision), and the named results of a step: an [`Answer`] written to the client, or a
//! [`Failure`](super::error::Failure) still to be answered.

use crate::http::buffer::ReadBuf;
use crate::http::request::Request;
use crate::proxy::dispatch::Dispatch;
use crate::proxy::error::Failure;
use crate::server::conn::Conn;
use crate::server::shared::Shared;

/// Per-worker buffers, reused for every request the worker handles.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Batches writes to the client (and a request body's writes to the backend).
    pub(super) out: Vec<u8>,
    /// The request head sent upstream.
    pub(super) upstream_head: Vec<u8>,
    /// Bytes read from a backend.
    pub(super) upstream_buf: ReadBuf,
    /// Body bytes sent to the client for the current request, for the access log.
    pub(super) body_bytes: u64,
}

/// What the connection does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    KeepAlive,
    Close,
}

impl Outcome {
    pub fn keep_alive_if(keep: bool) -> Outcome {
        if keep {
            Outcome::KeepAlive
        } else {
            Outcome::Close
        }
    }
}

/// One admitted request on its way through the pipeline, with everything its steps share.
pub struct RequestCtx<'a> {
    pub shared: &'a Shared,
    pub scratch: &'a mut Scratch,
    /// The client connection; the request head has already been consumed from its buffer.
    pub conn: &'a mut Conn,
    pub req: &'a Request,
    pub dispatch: &'a Dispatch<'a>,
}

impl RequestCtx<'_> {
    /// Whether the client connection may carry another request after an answer that allows it.
    pub fn may_keep_alive(&self) -> bool {
        self.req.keep_alive && !self.shared.is_shutting_down()
    }
}

/// A response written to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status sent.
    pub status: u16,
    /// Who answered, for the access log: a backend's name, or `cache`.
    pub by: Option<String>,
    /// What the client connection does next.
    pub next: Outcome,
}

/// What forwarding one request came to.
pub type Forwarded = Result<Answer, Failure>;
