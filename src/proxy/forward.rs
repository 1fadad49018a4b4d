//! Forwarding to a pool: choose a backend, take a pooled connection or open one (timing it for the
//! metrics, taking a backend that refuses out of rotation for the cool-down), send the request
//! head and body, read the response head, and send again on a fresh connection when a pooled one
//! turns out closed. [`exchange`] is that loop for any request pibl sends upstream; [`send`] uses it
//! for a client's request, whose answer `relay` then streams back.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use crate::cache::Entry;
use crate::config::Config;
use crate::http::body::{self, BodyError, Encoding, Source};
use crate::http::buffer::{ReadBuf, WriteBatch};
use crate::http::outbound::RequestHead;
use crate::http::request::Request;
use crate::http::response::{self, ReadHeadError, Response};
use crate::http::Framing;
use crate::proxy::context::{RequestCtx, Scratch};
use crate::proxy::dispatch::Dispatch;
use crate::proxy::error::{is_timeout, Failure, ForwardError};
use crate::server::shared::Shared;
use crate::upstream::backend::{Backend, InFlight, Pool};

/// Least bytes asked of a backend per read. The buffer belongs to the worker, not to a connection,
/// so it can be larger than `buffer_size`: a 64 KiB body then takes one read instead of eight.
const MIN_UPSTREAM_READ: usize = 64 * 1024;

pub fn upstream_read_step(config: &Config) -> usize {
    config.buffer_size.max(MIN_UPSTREAM_READ)
}

/// Streams a request body to the backend after its head.
pub type SendBody<'b> = dyn FnMut(&mut TcpStream) -> Result<(), ForwardError> + 'b;

/// One request to send to a pool.
pub struct Outbound<'p, 'x> {
    pub pool: &'p Pool,
    /// The client's address, for `ip_hash`.
    pub client: IpAddr,
    pub head: &'x [u8],
    /// Sends the body after the head; `None` for a request without one, which alone may go on a
    /// pooled connection, since it can be sent again if that connection turns out closed.
    pub body: Option<&'x mut SendBody<'x>>,
    /// A HEAD request: its answer has no body, whatever its framing fields say.
    pub is_head: bool,
}

/// A backend that answered: its connection, the final response head (its body, if any, follows in
/// the read buffer and on the stream), and the in-flight count held until the caller is done.
pub struct Exchanged<'p> {
    pub backend: &'p Arc<Backend>,
    pub stream: TcpStream,
    pub response: Response,
    pub in_flight: InFlight<'p>,
}

/// A failure on one backend connection; `Stale` means a reused connection had been closed by the
/// backend before the request reached it, so the request can be sent again on a fresh one.
enum AttemptError {
    Stale,
    Fatal(ForwardError),
}

/// Sends `out` to the pool's backends in turn until one answers with a final response head, read
/// into `buf`.
pub fn exchange<'p>(shared: &Shared, out: &mut Outbound<'p, '_>, buf: &mut ReadBuf) -> Result<Exchanged<'p>, Failure> {
    let pool = out.pool;
    // Cool-downs are pibl's own timing (the one clock, which tests advance); an idle connection's
    // age is the socket's, measured as the backend measures it, in real time.
    let (now, socket_now) = (shared.clock.now(), Instant::now());
    for backend in pool.candidates(now, out.client) {
        // A reused connection may have been closed by the backend; without a body the request can
        // simply be sent again, so only body-less requests take an idle connection.
        let mut pooled = if out.body.is_none() { backend.take_idle(socket_now) } else { None };
        loop {
            let (mut stream, reused) = match pooled.take() {
                Some(stream) => (stream, true),
                None => match connect(shared, backend) {
                    Some(stream) => (stream, false),
                    None => break,
                },
            };
            let in_flight = InFlight::enter(backend);
            let sent = Instant::now();
            match attempt(shared, out, &mut stream, reused, buf) {
                Ok(response) => {
                    shared.metrics.observe_upstream(&backend.name, sent.elapsed());
                    return Ok(Exchanged { backend, stream, response, in_flight });
                }
                Err(AttemptError::Stale) => continue, // stale pooled connection: retry on a fresh one
                Err(AttemptError::Fatal(error)) => return Err(Failure { error, backend: Some(backend.name.clone()) }),
            }
        }
    }
    Err(Failure::from(ForwardError::NoBackend))
}

/// A new connection to `backend`: timed when it opens, which also puts the backend back in
/// rotation; a refusal takes it out for the cool-down.
fn connect(shared: &Shared, backend: &Backend) -> Option<TcpStream> {
    let config = &shared.config;
    let connecting = Instant::now();
    match backend.connect(config.connect_timeout, config.backend_timeout) {
        Ok(stream) => {
            shared.metrics.observe_connect(&backend.name, connecting.elapsed());
            backend.mark_up();
            Some(stream)
        }
        Err(e) => {
            log::warn!("backend {} is down for {:?}: {e}", backend.name, config.backend_cooldown);
            backend.mark_down(shared.clock.now(), config.backend_cooldown);
            None
        }
    }
}

/// Sends the request on `stream` and reads the final response head into `buf`.
fn attempt(
    shared: &Shared,
    out: &mut Outbound<'_, '_>,
    stream: &mut TcpStream,
    reused: bool,
    buf: &mut ReadBuf,
) -> Result<Response, AttemptError> {
    let config = &shared.config;
    let stale_or = |e: ForwardError| if reused { AttemptError::Stale } else { AttemptError::Fatal(e) };
    let replayable = out.body.is_none();
    match out.body.as_mut() {
        Some(send_body) => {
            stream
                .write_all(out.head)
                .map_err(|e| AttemptError::Fatal(ForwardError::Upstream(format!("sending the request failed: {e}"))))?;
            send_body(stream).map_err(AttemptError::Fatal)?;
        }
        None => {
            if let Err(e) = stream.write_all(out.head) {
                return Err(stale_or(ForwardError::Upstream(format!("sending the request failed: {e}"))));
            }
        }
    }

    buf.clear();
    match response::read_head(buf, stream, upstream_read_step(config), out.is_head) {
        Ok(res) if res.status == 101 => Err(AttemptError::Fatal(ForwardError::Upstream(
            "backend switched protocols, which pibl does not relay".into(),
        ))),
        Ok(res) => Ok(res),
        Err(ReadHeadError::Io { error, .. }) if is_timeout(&error) => {
            Err(AttemptError::Fatal(ForwardError::Timeout(format!("no response within {:?}", config.backend_timeout))))
        }
        Err(
            e @ (ReadHeadError::Closed { before_any_byte: true } | ReadHeadError::Io { before_any_byte: true, .. }),
        ) if replayable => Err(stale_or(ForwardError::Upstream(format!("backend {e}")))),
        Err(e) => Err(AttemptError::Fatal(ForwardError::Upstream(format!("backend {e}")))),
    }
}

/// Sends the client's request (head, then body) to the dispatch's pool until a backend answers.
/// When revalidating a stored entry, its validators go instead of the client's.
pub fn send<'a>(ctx: &mut RequestCtx<'a>, revalidating: Option<&Entry>) -> Result<Exchanged<'a>, Failure> {
    let (shared, req, dispatch) = (ctx.shared, ctx.req, ctx.dispatch);
    build_upstream_head(req, dispatch, ctx.conn.peer, revalidating, &mut ctx.scratch.upstream_head);
    let Scratch { out, upstream_head, upstream_buf, .. } = &mut *ctx.scratch;
    let conn = &mut *ctx.conn;
    let mut send_body = |stream: &mut TcpStream| -> Result<(), ForwardError> {
        if req.expect_continue && conn.buf.is_empty() {
            conn.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").map_err(ForwardError::ClientGone)?;
        }
        let config = &shared.config;
        let mut src = Source { buf: &mut conn.buf, sock: &mut conn.stream, step: config.buffer_size };
        let mut dst = WriteBatch::new(out, stream, config.buffer_size);
        let encoding = if req.framing == Framing::Chunked { Encoding::Chunked } else { Encoding::Identity };
        let sent = body::transfer(&mut src, req.framing, &mut dst, encoding, config.max_body_bytes)
            .and_then(|_| dst.send().map_err(BodyError::Write));
        match sent {
            Ok(()) => Ok(()),
            Err(BodyError::Write(e)) => Err(ForwardError::Upstream(format!("sending the request body failed: {e}"))),
            Err(e) => Err(ForwardError::ClientBody(e)),
        }
    };
    let mut outbound = Outbound {
        pool: dispatch.upstream.pool(),
        client: dispatch.client,
        head: upstream_head,
        body: match req.framing.has_body() {
            true => Some(&mut send_body),
            false => None,
        },
        is_head: req.is_head(),
    };
    exchange(shared, &mut outbound, upstream_buf)
}

/// Writes the head sent to every backend for this request: hop-by-hop fields removed, `Host` kept,
/// `X-Forwarded-*` and `Via` added, framing written by pibl. When revalidating a stored entry, its
/// validators replace the client's own conditional fields.
pub fn build_upstream_head(
    req: &Request,
    dispatch: &Dispatch<'_>,
    peer: SocketAddr,
    revalidating: Option<&Entry>,
    out: &mut Vec<u8>,
) {
    let prefix = dispatch.upstream.app().map(|app| app.prefix.as_str());
    let mut head = RequestHead::start(out, req.method(), &dispatch.target);
    if let Some(host) = req.host() {
        head.field("Host", host.as_bytes());
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
            // Only the auth server may say who the user is.
            || is(name, "x-auth-user")
            || (revalidating.is_some() && (is(name, "if-none-match") || is(name, "if-modified-since")))
        {
            continue;
        }
        head.field(name, value);
    }
    if let Some(entry) = revalidating {
        head.validators(entry.header("etag"), entry.header("last-modified"));
    }
    // Appended to what earlier proxies recorded, as nginx's $proxy_add_x_forwarded_for does.
    head.list_field(
        "X-Forwarded-For",
        req.headers().filter(|(n, _)| is(n, "x-forwarded-for")).map(|(_, v)| v),
        peer.ip(),
    );
    head.field("X-Forwarded-Proto", b"http");
    if let Some(user) = &dispatch.auth_user {
        head.field("X-Auth-User", user);
    }
    if let Some(host) = req.host() {
        head.field("X-Forwarded-Host", host.as_bytes());
    }
    if let Some(prefix) = prefix {
        head.field("X-Forwarded-Prefix", prefix.as_bytes());
    }
    head.via(req.headers().filter(|(n, _)| is(n, "via")).map(|(_, v)| v), req.version);
    head.framing(req.framing, req.method());
    head.finish();
}
