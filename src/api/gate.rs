//! The API's waiting room: a connection waits here, holding no worker, until a whole request (head
//! and body) has arrived. One thread reads every waiting socket as bytes come (epoll readiness
//! through `polling`); a request not complete within
//! [`REQUEST_TIMEOUT`] of its first byte is answered 408, an idle keep-alive connection is closed
//! after [`IDLE_TIMEOUT`], and one client address holds at most [`MAX_CONN_PER_IP`] connections. So
//! clients that send a byte every few seconds cost a buffer each, never a worker: the workers only
//! see requests they can answer at once.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use polling::{Event, Events, Poller};

use super::reply::ApiError;
use super::wire::{IDLE_TIMEOUT, LIMITS, MAX_BODY, REQUEST_TIMEOUT};
use crate::background::StopSignal;
use crate::http::body::{self, BodyError, Encoding, Source};
use crate::http::buffer::{ReadBuf, WriteBatch};
use crate::http::request;
use crate::http::Framing;
use crate::server::conn::IpSlot;

/// Connections one client address may hold on the API port (429 past it).
pub const MAX_CONN_PER_IP: usize = 64;
/// How long to back off after the poller itself failed.
const RETRY: Duration = Duration::from_millis(100);
/// Most bytes buffered for one request: a full head and a chunked body at its limit with its framing.
const MAX_BUFFERED: usize = LIMITS.max_head_bytes + 2 * MAX_BODY as usize;

/// A connection with a whole request buffered (or one that is wrong in a way a worker answers).
pub struct Ready {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub buf: ReadBuf,
    pub slot: IpSlot,
}

/// A connection waiting for its request.
struct Waiting {
    conn: Ready,
    /// Since when it has been idle (no byte of a next request yet).
    idle_since: Instant,
    /// When the request now arriving sent its first byte.
    started: Option<Instant>,
    /// `100 Continue` already sent for the request now arriving.
    continued: bool,
}

impl Waiting {
    /// When the gate gives up on it: the request's deadline once it has begun, else the idle one.
    fn deadline(&self) -> Instant {
        match self.started {
            Some(started) => started + REQUEST_TIMEOUT,
            None => self.idle_since + IDLE_TIMEOUT,
        }
    }
}

/// How long until the first of `waiting`'s deadlines; `None` (no limit) when nobody waits.
fn next_deadline(waiting: &HashMap<usize, Waiting>, now: Instant) -> Option<Duration> {
    waiting.values().map(Waiting::deadline).min().map(|at| at.saturating_duration_since(now))
}

/// The waiting room; [`Gate::run`] is its thread's loop.
pub struct Gate {
    poller: Poller,
    /// Connections handed in (by the acceptor, or a worker after a keep-alive answer).
    incoming: Mutex<Vec<Waiting>>,
}

/// What the buffered bytes hold.
enum Progress {
    /// A whole request, or something wrong with it a worker will answer.
    Complete,
    /// More to come; `continue_now` when the client waits for `100 Continue` before its body.
    Partial { continue_now: bool },
}

impl Gate {
    pub fn new() -> io::Result<Gate> {
        Ok(Gate { poller: Poller::new()?, incoming: Mutex::new(Vec::new()) })
    }

    /// Hands a connection in to wait for its next request (`buf` may already hold some of it).
    pub fn admit(&self, conn: Ready) {
        let started = (!conn.buf.is_empty()).then(Instant::now);
        self.incoming.lock().push(Waiting { conn, idle_since: Instant::now(), started, continued: false });
        let _ = self.poller.notify();
    }

    /// Wakes [`Gate::run`] so it notices the stop signal.
    pub fn wake(&self) {
        let _ = self.poller.notify();
    }

    /// Until `stop` is raised: reads waiting connections and sends each complete request to `ready`.
    pub fn run(&self, ready: &Sender<Ready>, stop: &StopSignal) {
        let mut waiting: HashMap<usize, Waiting> = HashMap::new();
        let mut events = Events::new();
        let mut next_key = 0usize;
        while !stop.is_raised() {
            events.clear();
            // Asleep until a socket, a hand-in or the stop signal wakes it, or the nearest deadline:
            // an idle API costs no wake-ups.
            if let Err(e) = self.poller.wait(&mut events, next_deadline(&waiting, Instant::now())) {
                log::error!("api: waiting for readiness failed: {e}");
                stop.wait(RETRY);
            }
            let arrived: Vec<Waiting> = std::mem::take(&mut *self.incoming.lock());
            for w in arrived {
                // Keys wrap long before usize::MAX, which `polling` keeps for its own wake-ups.
                next_key = (next_key + 1) % (usize::MAX / 2);
                if w.conn.stream.set_nonblocking(true).is_err() {
                    continue;
                }
                match progress(&w.conn.buf) {
                    Progress::Complete => self.hand_over(w, ready),
                    Progress::Partial { .. } => {
                        // SAFETY: the socket is deleted from the poller before its `Waiting` leaves
                        // `waiting` (`take`), so the poller never refers to a closed descriptor.
                        let added = unsafe { self.poller.add(&w.conn.stream, Event::readable(next_key)) };
                        match added {
                            Ok(()) => {
                                waiting.insert(next_key, w);
                            }
                            Err(e) => log::warn!("api: cannot wait on {}: {e}", w.conn.peer),
                        }
                    }
                }
            }
            for ev in events.iter() {
                let Some(w) = waiting.get_mut(&ev.key) else { continue };
                match read_available(w) {
                    Ok(Progress::Complete) => {
                        if let Some(w) = self.take(&mut waiting, ev.key) {
                            self.hand_over(w, ready);
                        }
                    }
                    Ok(Progress::Partial { continue_now }) => {
                        if continue_now && !w.continued {
                            w.continued = true;
                            let _ = w.conn.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                        }
                        let _ = self.poller.modify(&w.conn.stream, Event::readable(ev.key));
                    }
                    // Closed by the client, or a socket error: nothing to answer.
                    Err(_) => drop(self.take(&mut waiting, ev.key)),
                }
            }
            self.sweep(&mut waiting, Instant::now());
        }
        for key in waiting.keys().copied().collect::<Vec<_>>() {
            drop(self.take(&mut waiting, key));
        }
    }

    fn take(&self, waiting: &mut HashMap<usize, Waiting>, key: usize) -> Option<Waiting> {
        let w = waiting.remove(&key)?;
        let _ = self.poller.delete(&w.conn.stream);
        Some(w)
    }

    fn hand_over(&self, w: Waiting, ready: &Sender<Ready>) {
        if w.conn.stream.set_nonblocking(false).is_ok() {
            // Fails only when the workers are gone (shutdown): the connection is dropped.
            let _ = ready.send(w.conn);
        }
    }

    /// Closes idle connections past [`IDLE_TIMEOUT`] and answers 408 to requests past
    /// [`REQUEST_TIMEOUT`].
    fn sweep(&self, waiting: &mut HashMap<usize, Waiting>, now: Instant) {
        let expired: Vec<usize> = waiting.iter().filter(|(_, w)| now >= w.deadline()).map(|(k, _)| *k).collect();
        for key in expired {
            let Some(mut w) = self.take(waiting, key) else { continue };
            if w.started.is_some() {
                log::info!("api: {}: request not complete within {REQUEST_TIMEOUT:?} (408)", w.conn.peer);
                let why = format!("the request did not arrive within {} seconds", REQUEST_TIMEOUT.as_secs());
                // Best effort on a non-blocking socket: a client this slow may not read it either.
                let _ = w.conn.stream.write_all(&ApiError::Request(408, why).reply().encode(false, false));
                let _ = w.conn.stream.shutdown(std::net::Shutdown::Write);
            }
        }
    }
}

/// Reads what the socket has; `Err` when the client closed or the socket failed.
fn read_available(w: &mut Waiting) -> io::Result<Progress> {
    loop {
        if w.conn.buf.len() >= MAX_BUFFERED {
            return Ok(Progress::Complete);
        }
        match w.conn.buf.fill_from(&mut w.conn.stream, 8192, MAX_BUFFERED) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {
                w.started.get_or_insert_with(Instant::now);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(progress(&w.conn.buf)),
            Err(e) => return Err(e),
        }
    }
}

/// Whether `buf` holds a whole request.
fn progress(buf: &ReadBuf) -> Progress {
    if buf.is_empty() {
        return Progress::Partial { continue_now: false };
    }
    let (req, head_len) = match request::parse(buf.filled(), &LIMITS) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Progress::Partial { continue_now: false },
        // A worker answers the error.
        Err(_) => return Progress::Complete,
    };
    let body = &buf.filled()[head_len..];
    let complete = match req.framing {
        Framing::None | Framing::UntilClose => true,
        // Too large is answered (413) at once, without waiting for the bytes.
        Framing::Length(len) => len > MAX_BODY || body.len() as u64 >= len,
        Framing::Chunked => chunked_complete(body),
    };
    if complete {
        Progress::Complete
    } else {
        Progress::Partial { continue_now: req.expect_continue && body.is_empty() }
    }
}

/// Decodes a chunked body from what has arrived; anything but "it stops short" is complete, for a
/// worker to answer (the body, or its error).
fn chunked_complete(body: &[u8]) -> bool {
    let mut copy = ReadBuf::new();
    let mut rest = body;
    while !rest.is_empty() {
        match copy.fill_from(&mut rest, 8192, MAX_BUFFERED) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let (mut scratch, mut sink) = (Vec::new(), io::sink());
    let mut src = Source { buf: &mut copy, sock: &mut io::empty(), step: 8192 };
    let mut dst = WriteBatch::new(&mut scratch, &mut sink, 8192);
    !matches!(
        body::transfer(&mut src, Framing::Chunked, &mut dst, Encoding::Identity, MAX_BODY),
        Err(BodyError::Truncated)
    )
}

/// Moves the body of `req` out of `buf` into `body`. The gate handed the request over complete, so
/// the socket is not read: a body that stops short is one whose framing outgrew the buffer.
pub fn take_body(buf: &mut ReadBuf, req: &request::Request, body: &mut Vec<u8>) -> Result<(), BodyError> {
    let mut scratch = Vec::new();
    let mut src = Source { buf, sock: &mut io::empty(), step: 8192 };
    let mut dst = WriteBatch::new(&mut scratch, body, 8192);
    match body::transfer(&mut src, req.framing, &mut dst, Encoding::Identity, MAX_BODY) {
        Err(BodyError::Truncated) => Err(BodyError::TooLarge),
        Err(e) => Err(e),
        Ok(_) => dst.send().map_err(BodyError::Write),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffered(bytes: &[u8]) -> ReadBuf {
        let mut buf = ReadBuf::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            buf.fill_from(&mut rest, 8192, MAX_BUFFERED).unwrap();
        }
        buf
    }

    fn complete(bytes: &[u8]) -> bool {
        matches!(progress(&buffered(bytes)), Progress::Complete)
    }

    #[test]
    fn a_request_is_complete_when_its_head_and_body_are_in() {
        assert!(!complete(b""));
        assert!(!complete(b"GET /api/apps HTTP/1.1\r\nHost: x\r\n"));
        assert!(complete(b"GET /api/apps HTTP/1.1\r\nHost: x\r\n\r\n"));
        let post = b"POST /api/auth HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n";
        assert!(!complete(post));
        assert!(!complete(&[&post[..], b"{}"].concat()));
        assert!(complete(&[&post[..], b"{}   "].concat()));
        assert!(complete(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n"), "413 at once");
        let chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(!complete(&[&chunked[..], b"2\r\n{}\r\n"].concat()));
        assert!(complete(&[&chunked[..], b"2\r\n{}\r\n0\r\n\r\n"].concat()));
        assert!(complete(&[&chunked[..], b"zz\r\n"].concat()), "malformed: a worker answers 400");
        assert!(complete(b"BAD\r\n\r\n"), "a bad head is answered by a worker");
        let expect = b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(progress(&buffered(expect)), Progress::Partial { continue_now: true }));
    }
}
