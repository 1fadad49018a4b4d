//! The API's bounds on a request (the head within [`LIMITS`], a body of at most [`MAX_BODY`], the
//! whole of it within [`REQUEST_TIMEOUT`], an idle keep-alive connection dropped after
//! [`IDLE_TIMEOUT`]), a blocking head reader for the metrics listener, and a lingering close after an
//! error answer. The API port reads through `gate`, which holds no thread per waiting client.

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::http::buffer::ReadBuf;
use crate::http::request::{self, Limits, Request, RequestError};

/// Largest request body accepted (413 past it).
pub const MAX_BODY: u64 = 64 * 1024;
/// Bounds of a request head, and of its body.
pub(super) const LIMITS: Limits = Limits { max_head_bytes: 16 * 1024, max_headers: 100, max_body_bytes: MAX_BODY };
/// How long an idle keep-alive connection is kept.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to send a whole request, from its first byte (408 past it).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Slice in which a waiting worker checks for shutdown.
const POLL: Duration = Duration::from_millis(200);

/// Reads until a complete request head is buffered. `Ok(None)`: the connection is done (closed,
/// idle past [`IDLE_TIMEOUT`], or shutting down while idle).
pub fn read_head(
    stream: &mut TcpStream,
    buf: &mut ReadBuf,
    shutdown: &AtomicBool,
) -> Result<Option<Request>, RequestError> {
    if stream.set_read_timeout(Some(POLL)).is_err() {
        return Ok(None);
    }
    let idle_since = Instant::now();
    let mut head_started = if buf.is_empty() { None } else { Some(idle_since) };
    loop {
        if !buf.is_empty() {
            if let Some((req, len)) = request::parse(buf.filled(), &LIMITS)? {
                buf.consume(len);
                return Ok(Some(req));
            }
        }
        match buf.fill_from(stream, 8192, LIMITS.max_head_bytes) {
            Ok(0) => return Ok(None),
            Ok(_) => {
                head_started.get_or_insert_with(Instant::now);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                let now = Instant::now();
                match head_started {
                    None if shutdown.load(Ordering::Acquire) || now >= idle_since + IDLE_TIMEOUT => return Ok(None),
                    Some(start) if now >= start + REQUEST_TIMEOUT => return Ok(None),
                    _ => {}
                }
            }
            Err(_) => return Ok(None),
        }
    }
}

/// Closes after an error answer without resetting: a close with unread request bytes would send a
/// TCP reset, which can destroy the answer before the client reads it. So stop writing, then read
/// and drop what the client still sends, for a short while.
pub fn linger(mut stream: TcpStream) {
    const MAX_DRAIN: usize = 1024 * 1024;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 8192];
    let mut drained = 0;
    while drained < MAX_DRAIN {
        match io::Read::read(&mut stream, &mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}
