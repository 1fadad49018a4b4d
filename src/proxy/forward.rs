//! What every request pibl sends upstream shares: the head a backend is sent
//! ([`build_upstream_head`]), interim answers as they go to a client, which methods may be sent
//! twice; and [`exchange`], the blocking send-and-read-the-head the cache's background refresher
//! uses on its own thread (choose a backend, take a pooled connection or open one, timing it for the
//! metrics and taking a backend that refuses out of rotation for the cool-down, send again on a
//! fresh connection when a pooled one turns out closed; `https://` backends over TLS, checked as
//! the loops check them). Client requests go through the event loops' own non-blocking exchange.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use crate::cache::Entry;
use crate::config::Config;
use crate::http::buffer::ReadBuf;
use crate::http::outbound::RequestHead;
use crate::http::request::Request;
use crate::http::response::{self, ReadHeadError, Response};
use crate::http::{forwardable_name, Framing};
use crate::proxy::dispatch::Dispatch;
use crate::proxy::error::{is_timeout, Failure, ForwardError};
use crate::server::shared::Shared;
use crate::tls::client::backend_connection;
use crate::upstream::backend::{is_local_exhaustion, Backend, InFlight, Pool};

/// Least bytes asked of a backend per read. The buffer belongs to the worker, not to a connection,
/// so it can be larger than `buffer_size`: a 64 KiB body then takes one read instead of eight.
const MIN_UPSTREAM_READ: usize = 64 * 1024;

pub fn upstream_read_step(config: &Config) -> usize {
    config.buffer_size.max(MIN_UPSTREAM_READ)
}

/// One body-less request to send to a pool (a body-less request may go on a pooled connection,
/// since it can be sent again if that connection turns out closed).
pub struct Outbound<'p, 'x> {
    pub pool: &'p Pool,
    /// The client's address, for `ip_hash`.
    pub client: IpAddr,
    pub head: &'x [u8],
    /// A HEAD request: its answer has no body, whatever its framing fields say.
    pub is_head: bool,
    /// The method is idempotent (RFC 9110 section 9.2.2): when a backend fails before sending a byte
    /// of answer, the request may go once to another backend. Others get the 502.
    pub idempotent: bool,
}

/// A backend that answered: its connection, the final response head (its body, if any, follows in
/// the read buffer and on the stream), and the in-flight count held until the caller is done.
pub struct Exchanged<'p> {
    pub backend: &'p Arc<Backend>,
    pub stream: BackendStream,
    pub response: Response,
    pub in_flight: InFlight<'p>,
}

/// A blocking connection to a backend: plain, or TLS for an `https://` backend.
pub enum BackendStream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl BackendStream {
    /// Done with the connection: a plain one goes back to `backend`'s idle pool when `reusable`;
    /// a TLS one is closed with a `close_notify` (TLS connections are not kept between refreshes).
    pub fn finish(self, backend: &Backend, reusable: bool) {
        match self {
            BackendStream::Plain(stream) if reusable => backend.put_idle(stream, Instant::now()),
            BackendStream::Plain(_) => {}
            BackendStream::Tls(mut tls) => {
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        }
    }
}

impl Read for BackendStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BackendStream::Plain(stream) => stream.read(buf),
            BackendStream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for BackendStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BackendStream::Plain(stream) => stream.write(buf),
            BackendStream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            BackendStream::Plain(stream) => stream.flush(),
            BackendStream::Tls(tls) => tls.flush(),
        }
    }
}

/// A failure on one backend connection; `Stale` means a reused connection had been closed by the
/// backend before the request reached it, so the request can be sent again on a fresh one;
/// `Unanswered` means a fresh connection broke (closed or reset, not timed out) before any byte of
/// answer came back: the backend may have died, so an idempotent request may try another one.
enum AttemptError {
    Stale,
    Unanswered(ForwardError),
    Fatal(ForwardError),
}

/// True for methods that may be sent twice with the effect of once (RFC 9110 section 9.2.2).
pub fn is_idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}

/// Sends `out` to the pool's backends in turn until one answers with a final response head, read
/// into `buf`.
pub fn exchange<'p>(shared: &Shared, out: &Outbound<'p, '_>, buf: &mut ReadBuf) -> Result<Exchanged<'p>, Failure> {
    let pool = out.pool;
    // Cool-downs are pibl's own timing (the one clock, which tests advance); an idle connection's
    // age is the socket's, measured as the backend measures it, in real time.
    let (now, socket_now) = (shared.clock.now(), Instant::now());
    // Sent again only once, so a request that kills backends cannot walk through the whole pool.
    let mut may_retry = out.idempotent;
    // The failure that sent the request on, answered if no other backend is left to try.
    let mut unanswered: Option<Failure> = None;
    for backend in pool.candidates(now, out.client) {
        // A reused connection may have been closed by the backend; the body-less request can
        // simply be sent again then. Only plain connections are pooled here.
        let mut pooled = backend.take_idle(socket_now).filter(is_quiet);
        loop {
            let (mut stream, reused) = match pooled.take() {
                Some(stream) => (BackendStream::Plain(stream), true),
                None => match connect(shared, backend) {
                    Ok(stream) => (stream, false),
                    Err(ConnectError::BackendDown) => break,
                    Err(ConnectError::Local(error)) => return Err(Failure::from(error)),
                    Err(ConnectError::Tls(error)) => {
                        return Err(Failure { error, backend: Some(backend.name.clone()) })
                    }
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
                Err(AttemptError::Unanswered(error)) if may_retry => {
                    log::warn!("backend {}: {error}; trying the request on another backend", backend.name);
                    may_retry = false;
                    unanswered = Some(Failure { error, backend: Some(backend.name.clone()) });
                    break;
                }
                Err(AttemptError::Unanswered(error) | AttemptError::Fatal(error)) => {
                    return Err(Failure { error, backend: Some(backend.name.clone()) })
                }
            }
        }
    }
    Err(unanswered.unwrap_or_else(|| Failure::from(ForwardError::NoBackend)))
}

/// True when an idle pooled connection has nothing to say: no bytes and no close pending. Bytes
/// there were sent after the response they followed had ended (a `Content-Length` shorter than the
/// body, or a response nobody asked for); read as the answer to the next request, they would hand
/// one client's bytes, or a forged response, to another. Such a connection is dropped.
fn is_quiet(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let quiet = matches!(stream.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    quiet && stream.set_nonblocking(false).is_ok()
}

/// Why no connection to a backend could be opened.
enum ConnectError {
    /// The backend refused or did not answer in time: try the next one.
    BackendDown,
    /// pibl itself is out of descriptors or socket memory: no backend is to blame, and none would
    /// do better right now.
    Local(ForwardError),
    /// An `https://` backend pibl cannot speak TLS to as configured (no client configuration, a
    /// name no certificate can be checked against): the same for every attempt.
    Tls(ForwardError),
}

/// A new connection to `backend`: timed when it opens, which also puts the backend back in
/// rotation; a refusal takes it out for the cool-down. Running out of pibl's own resources
/// (descriptors, buffers) is not the backend's fault and does not take it out. An `https://`
/// backend gets a TLS client (the handshake happens with the first write, under the socket's
/// timeouts; a certificate that does not verify fails it), never a plain-text request.
fn connect(shared: &Shared, backend: &Backend) -> Result<BackendStream, ConnectError> {
    let config = &shared.config;
    let connecting = Instant::now();
    match backend.connect(config.connect_timeout, config.backend_timeout) {
        Ok(stream) => {
            shared.metrics.observe_connect(&backend.name, connecting.elapsed());
            backend.mark_up();
            let Some(host) = &backend.tls_host else { return Ok(BackendStream::Plain(stream)) };
            let conn = backend_connection(shared.backend_tls.as_ref(), host)
                .map_err(|e| ConnectError::Tls(ForwardError::Upstream(e)))?;
            Ok(BackendStream::Tls(Box::new(rustls::StreamOwned::new(conn, stream))))
        }
        Err(e) if is_local_exhaustion(&e) => {
            log::warn!("cannot open a connection to backend {}: {e}", backend.name);
            Err(ConnectError::Local(ForwardError::Overloaded(format!("pibl is out of resources ({e})"))))
        }
        Err(e) => {
            log::warn!("backend {} is down for {:?}: {e}", backend.name, config.backend_cooldown);
            backend.mark_down(shared.clock.now(), config.backend_cooldown);
            Err(ConnectError::BackendDown)
        }
    }
}

/// Sends the request on `stream` and reads the final response head into `buf` (interim answers
/// are dropped: nobody waits for them).
fn attempt(
    shared: &Shared,
    out: &Outbound<'_, '_>,
    stream: &mut BackendStream,
    reused: bool,
    buf: &mut ReadBuf,
) -> Result<Response, AttemptError> {
    let config = &shared.config;
    let stale_or = |e: ForwardError| if reused { AttemptError::Stale } else { AttemptError::Unanswered(e) };
    if let Err(e) = stream.write_all(out.head).and_then(|()| stream.flush()) {
        return Err(stale_or(ForwardError::Upstream(format!("sending the request failed: {e}"))));
    }
    buf.clear();
    match response::read_head_with_interim(buf, stream, upstream_read_step(config), out.is_head, &mut |_| {}) {
        Ok(res) if res.status == 101 => {
            Err(AttemptError::Fatal(ForwardError::Upstream("backend switched protocols unasked".into())))
        }
        Ok(res) => Ok(res),
        Err(ReadHeadError::Io { error, .. }) if is_timeout(&error) => {
            Err(AttemptError::Fatal(ForwardError::Timeout(format!("no response within {:?}", config.backend_timeout))))
        }
        Err(
            e @ (ReadHeadError::Closed { before_any_byte: true } | ReadHeadError::Io { before_any_byte: true, .. }),
        ) => Err(stale_or(ForwardError::Upstream(format!("backend {e}")))),
        Err(e) => Err(AttemptError::Fatal(ForwardError::Upstream(format!("backend {e}")))),
    }
}

/// An interim answer as it goes to the client: its status line and end-to-end fields.
pub fn interim_head(res: &Response) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {} ", res.status).into_bytes();
    head.extend_from_slice(res.reason());
    head.extend_from_slice(b"\r\n");
    for (name, value) in res.headers().filter(|(name, _)| !res.connection.drops(name)) {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// What shapes the upstream head besides the request itself.
pub struct UpstreamFields<'e> {
    /// The body's framing as sent upstream (a chunked GET body is re-framed by length).
    pub framing: Framing,
    /// `underscores_in_headers`.
    pub allow_underscores: bool,
    pub peer: SocketAddr,
    /// A stored entry being revalidated: its validators replace the client's.
    pub revalidating: Option<&'e Entry>,
    /// The client's `If-None-Match` / `If-Modified-Since` stay behind.
    pub drop_client_conditionals: bool,
    /// A HEAD goes as a GET.
    pub head_as_get: bool,
    /// The request came over TLS: `X-Forwarded-Proto: https`.
    pub https: bool,
}

/// Writes the head sent to every backend for this request: hop-by-hop fields removed, `Host` kept,
/// `X-Forwarded-*` and `Via` added, framing written by pibl. When revalidating a stored entry, its
/// validators replace the client's own conditional fields.
pub fn build_upstream_head(req: &Request, dispatch: &Dispatch<'_>, fields: &UpstreamFields<'_>, out: &mut Vec<u8>) {
    let UpstreamFields { framing, allow_underscores, peer, revalidating, drop_client_conditionals, head_as_get, https } =
        *fields;
    let drop_conditionals = revalidating.is_some() || drop_client_conditionals;
    let prefix = dispatch.upstream.app().map(|app| app.prefix.as_str());
    let method = if head_as_get && req.is_head() { "GET" } else { req.method() };
    let mut head = RequestHead::start(out, method, &dispatch.target);
    if let Some(host) = req.host() {
        head.field("Host", host.as_bytes());
    }
    let is = |name: &str, other: &str| name.eq_ignore_ascii_case(other);
    for (name, value) in req.headers() {
        if req.connection.drops(name)
            || !forwardable_name(name, allow_underscores)
            || is(name, "host")
            || is(name, "expect")
            || is(name, "x-forwarded-for")
            || is(name, "x-forwarded-proto")
            || is(name, "x-forwarded-host")
            || (prefix.is_some() && is(name, "x-forwarded-prefix"))
            || is(name, "via")
            // Only the auth server may say who the user is.
            || is(name, "x-auth-user")
            || (drop_conditionals && (is(name, "if-none-match") || is(name, "if-modified-since")))
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
    // What the client sent is replaced: only pibl knows how the request reached it.
    head.field("X-Forwarded-Proto", if https { b"https" } else { b"http" });
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
    head.framing(framing, method);
    head.finish();
}
