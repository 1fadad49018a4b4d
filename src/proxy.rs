//! The request pipeline for one parsed request: choose a backend, forward the request head and
//! body, relay the response head and body back, and log the exchange. Errors carry who is at fault,
//! which picks the status code: the client (4xx), a backend (502/504), or pibl itself (500).

use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::backend::Backend;
use crate::buffer::{ReadBuf, WriteBatch};
use crate::conn::Conn;
use crate::http::body::{self, BodyError, Encoding, Source};
use crate::http::request::Request;
use crate::http::response::{self, Response, MAX_RESPONSE_HEAD};
use crate::http::{reason, Framing};
use crate::routing::Matched;
use crate::server::Shared;

/// The `Via` pseudonym pibl adds to forwarded requests.
const VIA_NAME: &str = "pibl";

/// Per-worker buffers, reused for every request the worker handles.
#[derive(Debug, Default)]
pub struct Scratch {
    out: Vec<u8>,
    upstream_head: Vec<u8>,
    upstream_buf: ReadBuf,
}

/// What the connection does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    KeepAlive,
    Close,
}

/// Why a request could not be relayed, by whose fault.
#[derive(Debug)]
enum ForwardError {
    /// No backend accepted a connection (502).
    NoBackend,
    /// A backend accepted the request but did not answer in time (504).
    Timeout(String),
    /// A backend answered wrongly or went away (502).
    Upstream(String),
    /// The client's request body could not be read (400, 408 or 413).
    ClientBody(BodyError),
    /// The client went away or stopped reading; nothing can be sent.
    ClientGone(io::Error),
}

impl ForwardError {
    fn status(&self) -> u16 {
        match self {
            ForwardError::NoBackend | ForwardError::Upstream(_) => 502,
            ForwardError::Timeout(_) => 504,
            ForwardError::ClientBody(BodyError::TooLarge) => 413,
            ForwardError::ClientBody(BodyError::Read(e)) if is_timeout(e) => 408,
            ForwardError::ClientBody(_) => 400,
            ForwardError::ClientGone(_) => 499,
        }
    }
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardError::NoBackend => f.write_str("no backend is reachable"),
            ForwardError::Timeout(what) => write!(f, "backend timed out: {what}"),
            ForwardError::Upstream(what) => f.write_str(what),
            ForwardError::ClientBody(e) => write!(f, "request body: {e}"),
            ForwardError::ClientGone(e) => write!(f, "client connection failed: {e}"),
        }
    }
}

/// A failure on one backend connection; `Stale` means a reused connection had been closed by the
/// backend before the request reached it, so the request can be sent again on a fresh one.
enum AttemptError {
    Stale,
    Fatal(ForwardError),
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Handles one request whose head has been consumed from `conn.buf`, writing the response (or an
/// error response) to the client.
pub fn handle(shared: &Shared, scratch: &mut Scratch, conn: &mut Conn, req: Request) -> Outcome {
    let started = Instant::now();
    // An app registered through the management API owns the paths under `/<appid>`.
    let app = shared.router.lookup(req.target());
    // Cache seam: a cache lookup goes here. A hit is written to the client without touching a
    // backend; a miss falls through to `forward`, which offers the response to the cache as it streams.
    let result = forward(shared, scratch, conn, &req, app.as_ref());
    let (status, backend, outcome) = match result {
        Ok((status, backend, outcome)) => (status, backend, outcome),
        Err((e, backend)) => {
            let status = e.status();
            match &e {
                ForwardError::ClientGone(_) => {}
                ForwardError::ClientBody(_) => log::info!("{}: {e}", conn.peer),
                _ => log::warn!("{} {} {}: {e}", conn.peer, req.method(), req.target()),
            }
            // After a backend failure the request body has been read in full (or there was none),
            // so the connection stays usable; after a client-side failure it does not.
            let keep = matches!(e, ForwardError::NoBackend | ForwardError::Timeout(_) | ForwardError::Upstream(_))
                && req.keep_alive
                && !shared.is_shutting_down();
            if !matches!(e, ForwardError::ClientGone(_)) {
                let _ = write_error(&mut conn.stream, status, &e.to_string(), keep, req.is_head());
            }
            (status, backend, if keep { Outcome::KeepAlive } else { Outcome::Close })
        }
    };
    if shared.config.access_log {
        log::info!(
            target: "access",
            "[*] Request done: {} => {} {} {} {:.4}s <= {}",
            conn.peer.ip(),
            req.method(),
            req.target(),
            status,
            started.elapsed().as_secs_f64(),
            backend.as_deref().unwrap_or("-"),
        );
    }
    if let Some(app) = &app {
        shared.router.log_request(app, conn.peer.ip(), &req, status, backend, started.elapsed());
    }
    outcome
}

type Forwarded = (u16, Option<String>, Outcome);

/// Sends the request to the backends of its app (or of the default pool) in turn until one
/// answers, then relays the answer.
fn forward(
    shared: &Shared,
    scratch: &mut Scratch,
    conn: &mut Conn,
    req: &Request,
    app: Option<&Matched>,
) -> Result<Forwarded, (ForwardError, Option<String>)> {
    let config = &shared.config;
    let now = Instant::now();
    let (pool, target, prefix) = match app {
        Some(m) => (&m.app.pool, m.target.as_str(), Some(m.app.prefix.as_str())),
        None => (&shared.pool, req.target(), None),
    };
    build_upstream_head(req, target, prefix, conn.peer, &mut scratch.upstream_head);
    let has_body = req.framing.has_body();
    for backend in pool.candidates(now) {
        // A reused connection may have been closed by the backend; without a body the request can
        // simply be sent again, so only body-less requests take an idle connection.
        let idle = if has_body { None } else { backend.take_idle(now) };
        let mut attempt = idle.map(|s| (s, true));
        loop {
            let (mut stream, reused) = match attempt.take() {
                Some(pair) => pair,
                None => match backend.connect(config.connect_timeout, config.backend_timeout) {
                    Ok(stream) => {
                        backend.mark_up();
                        (stream, false)
                    }
                    Err(e) => {
                        log::warn!("backend {} is down for {:?}: {e}", backend.name, config.backend_cooldown);
                        backend.mark_down(Instant::now(), config.backend_cooldown);
                        break;
                    }
                },
            };
            backend.in_flight.fetch_add(1, Ordering::Relaxed);
            let exchanged = exchange(shared, scratch, conn, req, &mut stream, reused);
            let result = match exchanged {
                Ok(res) => Ok(relay(shared, scratch, conn, req, res, backend, stream)),
                Err(AttemptError::Stale) => Err(None),
                Err(AttemptError::Fatal(e)) => Err(Some(e)),
            };
            backend.in_flight.fetch_sub(1, Ordering::Relaxed);
            match result {
                Ok(relayed) => return Ok((relayed.0, Some(backend.name.clone()), relayed.1)),
                Err(None) => continue, // stale pooled connection: retry on a fresh one
                Err(Some(e)) => return Err((e, Some(backend.name.clone()))),
            }
        }
    }
    Err((ForwardError::NoBackend, None))
}

/// Sends the request on `stream` and reads the final response head into `scratch.upstream_buf`.
fn exchange(
    shared: &Shared,
    scratch: &mut Scratch,
    conn: &mut Conn,
    req: &Request,
    stream: &mut TcpStream,
    reused: bool,
) -> Result<Response, AttemptError> {
    let config = &shared.config;
    let stale_or = |e: ForwardError| if reused { AttemptError::Stale } else { AttemptError::Fatal(e) };
    if req.framing.has_body() {
        stream
            .write_all(&scratch.upstream_head)
            .map_err(|e| AttemptError::Fatal(ForwardError::Upstream(format!("sending the request failed: {e}"))))?;
        if req.expect_continue && conn.buf.is_empty() {
            conn.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|e| AttemptError::Fatal(ForwardError::ClientGone(e)))?;
        }
        let mut src = Source { buf: &mut conn.buf, sock: &mut conn.stream, step: config.buffer_size };
        let mut dst = WriteBatch::new(&mut scratch.out, stream, config.buffer_size);
        let encoding = if req.framing == Framing::Chunked { Encoding::Chunked } else { Encoding::Identity };
        let sent = body::transfer(&mut src, req.framing, &mut dst, encoding, config.max_body_bytes)
            .and_then(|_| dst.send().map_err(BodyError::Write));
        match sent {
            Ok(()) => {}
            Err(BodyError::Write(e)) => {
                return Err(AttemptError::Fatal(ForwardError::Upstream(format!(
                    "sending the request body failed: {e}"
                ))))
            }
            Err(e) => return Err(AttemptError::Fatal(ForwardError::ClientBody(e))),
        }
    } else if let Err(e) = stream.write_all(&scratch.upstream_head) {
        return Err(stale_or(ForwardError::Upstream(format!("sending the request failed: {e}"))));
    }

    scratch.upstream_buf.clear();
    loop {
        if !scratch.upstream_buf.is_empty() {
            match response::parse(scratch.upstream_buf.filled(), req.is_head()) {
                Ok(Some((res, len))) if res.status == 101 => {
                    let _ = len;
                    return Err(AttemptError::Fatal(ForwardError::Upstream(
                        "backend switched protocols, which pibl does not relay".into(),
                    )));
                }
                Ok(Some((res, len))) if res.is_informational() => {
                    scratch.upstream_buf.consume(len);
                    continue;
                }
                Ok(Some((res, len))) => {
                    scratch.upstream_buf.consume(len);
                    return Ok(res);
                }
                Ok(None) => {}
                Err(e) => return Err(AttemptError::Fatal(ForwardError::Upstream(e.to_string()))),
            }
        }
        let nothing_yet = scratch.upstream_buf.is_empty();
        match scratch.upstream_buf.fill_from(stream, config.buffer_size, MAX_RESPONSE_HEAD) {
            Ok(0) if nothing_yet && !req.framing.has_body() => {
                return Err(stale_or(ForwardError::Upstream("backend closed the connection without answering".into())))
            }
            Ok(0) => {
                return Err(AttemptError::Fatal(ForwardError::Upstream(
                    "backend closed the connection mid-response".into(),
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                return Err(AttemptError::Fatal(ForwardError::Timeout(format!(
                    "no response within {:?}",
                    config.backend_timeout
                ))))
            }
            Err(e) if nothing_yet && !req.framing.has_body() => {
                return Err(stale_or(ForwardError::Upstream(format!("reading the response failed: {e}"))))
            }
            Err(e) => {
                return Err(AttemptError::Fatal(ForwardError::Upstream(format!("reading the response failed: {e}"))))
            }
        }
    }
}

/// Writes the response head and streams its body to the client; returns the status and what the
/// client connection does next. A failure here can only close the connection: the status line has
/// already gone out.
fn relay(
    shared: &Shared,
    scratch: &mut Scratch,
    conn: &mut Conn,
    req: &Request,
    res: Response,
    backend: &Backend,
    mut stream: TcpStream,
) -> (u16, Outcome) {
    let config = &shared.config;
    // Bodies whose end only the closing of the connection marks are re-chunked for HTTP/1.1
    // clients, so their connection survives; HTTP/1.0 clients get the bytes and a close.
    let (encoding, length_known) = match res.framing {
        Framing::None | Framing::Length(_) => (Encoding::Identity, true),
        Framing::Chunked | Framing::UntilClose if req.version == 1 => (Encoding::Chunked, true),
        Framing::Chunked | Framing::UntilClose => (Encoding::Identity, false),
    };
    let keep_alive = req.keep_alive && length_known && !shared.is_shutting_down();

    let mut dst = WriteBatch::new(&mut scratch.out, &mut conn.stream, config.buffer_size);
    let head = write_response_head(&mut dst, req, &res, encoding, keep_alive);
    if head.is_err() {
        return (res.status, Outcome::Close);
    }
    let mut src = Source { buf: &mut scratch.upstream_buf, sock: &mut stream, step: config.buffer_size };
    let copied = body::transfer(&mut src, res.framing, &mut dst, encoding, u64::MAX)
        .and_then(|_| dst.send().map_err(BodyError::Write));
    match copied {
        Ok(()) => {
            if res.reusable && scratch.upstream_buf.is_empty() {
                backend.put_idle(stream, Instant::now());
            }
            (res.status, if keep_alive { Outcome::KeepAlive } else { Outcome::Close })
        }
        Err(BodyError::Write(_)) => (res.status, Outcome::Close),
        Err(e) => {
            log::warn!("{} {}: backend {} broke off the response body: {e}", req.method(), req.target(), backend.name);
            (res.status, Outcome::Close)
        }
    }
}

fn write_response_head<W: Write>(
    dst: &mut WriteBatch<'_, W>,
    req: &Request,
    res: &Response,
    encoding: Encoding,
    keep_alive: bool,
) -> io::Result<()> {
    let head = dst;
    write!(head, "HTTP/1.1 {} ", res.status)?;
    head.put(res.reason())?;
    head.put(b"\r\n")?;
    for (name, value) in res.headers() {
        if res.connection.drops(name) {
            continue;
        }
        put_field(head, name, value)?;
    }
    match res.framing {
        Framing::Length(len) => {
            write!(head, "Content-Length: {len}\r\n")?;
        }
        // HEAD and 304 answers describe the body they do not carry: keep the backend's length.
        Framing::None if req.is_head() || res.status == 304 => {
            if let Some(len) = res.header("content-length") {
                put_field(head, "Content-Length", len)?;
            }
        }
        Framing::None => {}
        Framing::Chunked | Framing::UntilClose if encoding == Encoding::Chunked => {
            head.put(b"Transfer-Encoding: chunked\r\n")?;
        }
        Framing::Chunked | Framing::UntilClose => {}
    }
    if !keep_alive {
        head.put(b"Connection: close\r\n")?;
    } else if req.version == 0 {
        head.put(b"Connection: keep-alive\r\n")?;
    }
    head.put(b"\r\n")
}

fn put_field<W: Write>(dst: &mut WriteBatch<'_, W>, name: &str, value: &[u8]) -> io::Result<()> {
    dst.put(name.as_bytes())?;
    dst.put(b": ")?;
    dst.put(value)?;
    dst.put(b"\r\n")
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the head sent to every backend for this request: hop-by-hop fields removed, `Host` kept,
/// `X-Forwarded-*` and `Via` added, framing written by pibl. `target` is the request target to send
/// (an app's requests lose their `/<appid>` prefix, which goes in `X-Forwarded-Prefix`).
fn build_upstream_head(req: &Request, target: &str, prefix: Option<&str>, peer: SocketAddr, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(req.method().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = req.host() {
        push_field(out, "Host", host.as_bytes());
    }
    let is = |name: &str, other: &str| name.eq_ignore_ascii_case(other);
    for (name, value) in req.headers() {
        if req.connection.drops(name)
            || is(name, "host")
            || is(name, "expect")
            || is(name, "x-forwarded-for")
            || is(name, "x-forwarded-proto")
            || is(name, "x-forwarded-host")
            || (prefix.is_some() && is(name, "x-forwarded-prefix"))
            || is(name, "via")
        {
            continue;
        }
        push_field(out, name, value);
    }
    // Appended to what earlier proxies recorded, as nginx's $proxy_add_x_forwarded_for does.
    out.extend_from_slice(b"X-Forwarded-For: ");
    for (_, value) in req.headers().filter(|(n, _)| is(n, "x-forwarded-for")) {
        out.extend_from_slice(value);
        out.extend_from_slice(b", ");
    }
    let _ = write!(out, "{}\r\n", peer.ip());
    out.extend_from_slice(b"X-Forwarded-Proto: http\r\n");
    if let Some(host) = req.host() {
        push_field(out, "X-Forwarded-Host", host.as_bytes());
    }
    if let Some(prefix) = prefix {
        push_field(out, "X-Forwarded-Prefix", prefix.as_bytes());
    }
    out.extend_from_slice(b"Via: ");
    for (_, value) in req.headers().filter(|(n, _)| is(n, "via")) {
        out.extend_from_slice(value);
        out.extend_from_slice(b", ");
    }
    let _ = write!(out, "1.{} {VIA_NAME}\r\n", req.version);
    match req.framing {
        Framing::Length(len) => {
            let _ = write!(out, "Content-Length: {len}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::None if matches!(req.method(), "POST" | "PUT" | "PATCH") => {
            out.extend_from_slice(b"Content-Length: 0\r\n")
        }
        Framing::None | Framing::UntilClose => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a response pibl generates itself (an error), small enough for one write.
pub fn write_error(
    stream: &mut TcpStream,
    status: u16,
    detail: &str,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let body = format!("{status} {}: {detail}\n", reason(status));
    let mut msg = Vec::with_capacity(160 + body.len());
    write!(
        msg,
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )?;
    if !head_only {
        msg.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&msg)
}
