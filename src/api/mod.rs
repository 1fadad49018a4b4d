//! The management API server: its own listener (`api_port`), one acceptor thread and a small fixed
//! pool of worker threads, apart from the data plane, so API load never takes a proxy worker. It
//! reuses the data plane's HTTP code (`http::request::parse`, `http::body::transfer`, `ReadBuf`),
//! keeps connections alive, limits bodies to [`MAX_BODY`] (413), and answers every request with
//! JSON (`handlers`).

pub mod handlers;
pub mod json;
pub mod scrape;
pub mod status;
pub mod throttle;

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::http::body::{self, BodyError, Encoding, Source};
use crate::http::buffer::{ReadBuf, WriteBatch};
use crate::http::request::{self, Limits, Request, RequestError};
use crossbeam_channel::{Receiver, Sender};

pub use handlers::{ApiError, ApiState, Reply};

/// Worker threads serving API connections.
pub const API_THREADS: usize = 4;
/// Largest request body accepted (413 past it).
pub const MAX_BODY: u64 = 64 * 1024;
/// Accepted connections waiting for a worker; past it the acceptor waits.
const QUEUE: usize = 64;
const LIMITS: Limits = Limits { max_head_bytes: 16 * 1024, max_headers: 100, max_body_bytes: MAX_BODY };
/// How long an idle keep-alive connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to send a complete request head, and each read of a body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Slice in which a waiting worker checks for shutdown.
const POLL: Duration = Duration::from_millis(200);

/// The running API server.
pub struct ApiServer {
    local_addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

impl ApiServer {
    /// Serves `state` on an already bound listener.
    pub fn start(listener: TcpListener, state: Arc<ApiState>) -> io::Result<ApiServer> {
        let local_addr = listener.local_addr()?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::bounded::<(TcpStream, SocketAddr)>(QUEUE);
        let mut workers = Vec::with_capacity(API_THREADS);
        for i in 0..API_THREADS {
            let (rx, state, shutdown) = (rx.clone(), Arc::clone(&state), Arc::clone(&shutdown));
            workers.push(
                thread::Builder::new().name(format!("pibl-api-{i}")).spawn(move || worker(&rx, &state, &shutdown))?,
            );
        }
        let acceptor = {
            let shutdown = Arc::clone(&shutdown);
            thread::Builder::new().name("pibl-api-acceptor".into()).spawn(move || accept(&listener, &tx, &shutdown))?
        };
        Ok(ApiServer { local_addr, shutdown, acceptor: Some(acceptor), workers })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in progress finish, closes idle connections.
    pub fn shutdown(mut self) {
        self.shutdown.store(true, Ordering::Release);
        crate::server::wake::wake_acceptor(self.local_addr);
        if let Some(handle) = self.acceptor.take() {
            let _ = handle.join();
        }
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

fn accept(listener: &TcpListener, tx: &Sender<(TcpStream, SocketAddr)>, shutdown: &AtomicBool) {
    for conn in listener.incoming() {
        if shutdown.load(Ordering::Acquire) {
            break;
        }
        match conn {
            Ok(stream) => {
                let Ok(peer) = stream.peer_addr() else { continue };
                if tx.send((stream, peer)).is_err() {
                    break;
                }
            }
            Err(e) => {
                log::warn!("api: accept failed: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn worker(rx: &Receiver<(TcpStream, SocketAddr)>, state: &ApiState, shutdown: &AtomicBool) {
    for (stream, peer) in rx.iter() {
        let served = panic::catch_unwind(AssertUnwindSafe(|| serve(stream, peer, state, shutdown)));
        if served.is_err() {
            log::error!("api: internal error while serving {peer}; connection closed");
        }
    }
}

/// Serves requests on one connection until the client closes, stays idle too long, or shutdown.
fn serve(mut stream: TcpStream, peer: SocketAddr, state: &ApiState, shutdown: &AtomicBool) {
    if stream.set_nodelay(true).is_err() || stream.set_write_timeout(Some(REQUEST_TIMEOUT)).is_err() {
        return;
    }
    let mut buf = ReadBuf::new();
    loop {
        let req = match read_head(&mut stream, &mut buf, shutdown) {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) => {
                let status = e.status();
                let _ = write_reply(&mut stream, &ApiError::from_request(e).reply(), false, false);
                log::info!("api: {peer}: bad request head ({status})");
                linger(stream);
                return;
            }
        };
        if stream.set_read_timeout(Some(REQUEST_TIMEOUT)).is_err() {
            return;
        }
        let mut body = Vec::new();
        if req.framing.has_body() {
            if req.expect_continue && buf.is_empty() && stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
                return;
            }
            if let Err(e) = read_body(&mut stream, &mut buf, &req, &mut body) {
                let error = match e {
                    BodyError::TooLarge => ApiError::TooLarge,
                    BodyError::Read(_) | BodyError::Write(_) | BodyError::Truncated => return,
                    BodyError::Malformed(what) => ApiError::BadRequest(format!("invalid chunked body: {what}")),
                };
                let _ = write_reply(&mut stream, &error.reply(), false, req.is_head());
                linger(stream);
                return;
            }
        }
        let started = Instant::now();
        let reply = handlers::handle(state, &req, &body, peer.ip());
        if state.access_log {
            log::info!(
                target: "access",
                "[api] {} => {} {} {} {:.4}s",
                peer.ip(),
                req.method(),
                req.target(),
                reply.status,
                started.elapsed().as_secs_f64()
            );
        }
        let keep_alive = req.keep_alive && !shutdown.load(Ordering::Acquire);
        if write_reply(&mut stream, &reply, keep_alive, req.is_head()).is_err() || !keep_alive {
            return;
        }
    }
}

/// Reads until a complete request head is buffered. `Ok(None)`: the connection is done (closed,
/// idle past [`IDLE_TIMEOUT`], or shutting down while idle).
fn read_head(
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
fn linger(mut stream: TcpStream) {
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

fn read_body(stream: &mut TcpStream, buf: &mut ReadBuf, req: &Request, body: &mut Vec<u8>) -> Result<(), BodyError> {
    let mut scratch = Vec::new();
    let mut src = Source { buf, sock: stream, step: 8192 };
    let mut dst = WriteBatch::new(&mut scratch, body, 8192);
    body::transfer(&mut src, req.framing, &mut dst, Encoding::Identity, MAX_BODY)?;
    dst.send().map_err(BodyError::Write)
}

/// The reason phrases of the statuses the API answers with.
pub fn reason(status: u16) -> &'static str {
    match status {
        201 => "Created",
        401 => "Unauthorized",
        409 => "Conflict",
        415 => "Unsupported Media Type",
        423 => "Locked",
        s => crate::http::reason(s),
    }
}

/// Writes `reply` as JSON (or its fixed document, `raw`); `head_only` leaves the body out (an answer
/// to HEAD) but keeps its length.
fn write_reply(stream: &mut TcpStream, reply: &Reply, keep_alive: bool, head_only: bool) -> io::Result<()> {
    let (media_type, body) = match &reply.raw {
        Some((media_type, bytes)) => (*media_type, bytes.clone()),
        None => {
            let mut body = serde_json::to_vec_pretty(&reply.body).unwrap_or_else(|_| b"{}".to_vec());
            body.push(b'\n');
            ("application/json", body)
        }
    };
    let mut out = Vec::with_capacity(body.len() + 256);
    write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {media_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        reply.status,
        reason(reply.status),
        body.len()
    )?;
    for (name, value) in &reply.headers {
        write!(out, "{name}: {value}\r\n")?;
    }
    out.extend_from_slice(if keep_alive { b"Connection: keep-alive\r\n\r\n" } else { b"Connection: close\r\n\r\n" });
    if !head_only {
        out.extend_from_slice(&body);
    }
    stream.write_all(&out)
}
