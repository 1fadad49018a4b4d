//! The request pipeline for one parsed request: choose a backend, forward the request head and
//! body, relay the response head and body back, and log the exchange. Errors carry who is at fault,
//! which picks the status code: the client (4xx), a backend (502/504), or pibl itself (500).

pub mod cache_step;

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Write};
use std::net::IpAddr;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::cache::Entry;
use crate::config::RouteAuth;
use crate::gateway::auth_request::AuthDecision;
use crate::gateway::{Gateway, Refusal, Route};
use crate::http::body::{self, BodyError, Encoding, Source};
use crate::http::buffer::{ReadBuf, WriteBatch};
use crate::http::request::Request;
use crate::http::response::{self, ReadHeadError, Response};
use crate::http::{reason, Framing};
use crate::observe::access_log::AccessRecord;
use crate::observe::metrics;
use crate::server::conn::Conn;
use crate::server::Shared;
use crate::store::credentials;
use crate::upstream::apps::AppRoute;
use crate::upstream::backend::{Backend, InFlight, Pool};
use cache_step::CachePlan;

/// The `Via` pseudonym pibl adds to forwarded requests.
const VIA_NAME: &str = "pibl";

/// Least bytes asked of a backend per read. The buffer belongs to the worker, not to a connection,
/// so it can be larger than `buffer_size`: a 64 KiB body then takes one read instead of eight.
const MIN_UPSTREAM_READ: usize = 64 * 1024;

fn upstream_read_step(config: &crate::config::Config) -> usize {
    config.buffer_size.max(MIN_UPSTREAM_READ)
}

/// Per-worker buffers, reused for every request the worker handles.
#[derive(Debug, Default)]
pub struct Scratch {
    out: Vec<u8>,
    upstream_head: Vec<u8>,
    upstream_buf: ReadBuf,
    /// Body bytes sent to the client for the current request, for the access log.
    body_bytes: u64,
}

impl Scratch {
    /// The buffer that batches writes to the client.
    pub fn out_buf(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Records the response body size for the access log.
    pub fn set_body_bytes(&mut self, bytes: u64) {
        self.body_bytes = bytes;
    }

    /// The buffer that holds bytes read from a backend.
    pub fn upstream_buf_mut(&mut self) -> &mut ReadBuf {
        &mut self.upstream_buf
    }
}

/// What the connection does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    KeepAlive,
    Close,
}

/// Why a request could not be relayed, by whose fault.
#[derive(Debug)]
pub enum ForwardError {
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
    /// `Cache-Control: only-if-cached` and nothing usable is stored (504).
    NotCached,
    /// The gateway refused the request before any backend saw it.
    Refused(Refusal),
}

impl ForwardError {
    fn status(&self) -> u16 {
        match self {
            ForwardError::NoBackend | ForwardError::Upstream(_) => 502,
            ForwardError::Timeout(_) | ForwardError::NotCached => 504,
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
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardError::NoBackend => f.write_str("no backend is reachable"),
            ForwardError::Timeout(what) => write!(f, "backend timed out: {what}"),
            ForwardError::Upstream(what) => f.write_str(what),
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

/// The backends a request goes to: a configured pool, or an app registered through the API.
#[derive(Clone)]
pub enum Upstream {
    Pool(Arc<Pool>),
    App(Arc<AppRoute>),
}

impl Upstream {
    pub fn pool(&self) -> &Pool {
        match self {
            Upstream::Pool(pool) => pool,
            Upstream::App(app) => &app.pool,
        }
    }

    pub fn app(&self) -> Option<&Arc<AppRoute>> {
        match self {
            Upstream::Pool(_) => None,
            Upstream::App(app) => Some(app),
        }
    }
}

/// Where and how one admitted request is forwarded, decided before any backend is contacted.
pub struct Dispatch<'a> {
    pub upstream: Upstream,
    /// The target sent upstream: the client's, less the route prefix when the route strips it (an
    /// app's `/<appid>` always goes, into `X-Forwarded-Prefix`).
    pub target: Cow<'a, str>,
    /// The client's address (behind trusted proxies), for `ip_hash`.
    pub client: IpAddr,
    /// The auth server's `X-Auth-User`, passed on to the backend.
    pub auth_user: Option<Vec<u8>>,
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
    scratch.body_bytes = 0;
    let gateway = shared.gateway();
    let client = gateway.client_ip(conn.peer.ip(), &req);
    let route = gateway.route(req.target());
    let admitted = admit(shared, &gateway, route, client, &req);
    let app = admitted.as_ref().ok().and_then(|d| d.upstream.app()).cloned();
    let result = match admitted {
        Err(refusal) => Err((ForwardError::Refused(refusal), None)),
        Ok(dispatch) => match &shared.cache {
            Some(cache) if matches!(req.method(), "GET" | "HEAD") => {
                cache_step::handle(shared, cache, scratch, conn, &req, &dispatch)
            }
            _ => forward(shared, scratch, conn, &req, &dispatch, None),
        },
    };
    let rejection = match &result {
        Err((ForwardError::Refused(refusal), _)) => metrics::Rejection::of(refusal),
        _ => None,
    };
    let (status, backend, outcome) = match result {
        Ok((status, backend, outcome)) => (status, backend, outcome),
        Err((e, backend)) => {
            let status = e.status();
            match &e {
                ForwardError::ClientGone(_) => {}
                ForwardError::ClientBody(_) | ForwardError::Refused(_) => {
                    log::info!("{} {} {}: {e}", conn.peer, req.method(), req.target())
                }
                _ => log::warn!("{} {} {}: {e}", conn.peer, req.method(), req.target()),
            }
            // After a backend failure the request body has been read in full (or there was none),
            // so the connection stays usable; after a client-side failure it does not.
            let keep = matches!(
                e,
                ForwardError::NoBackend
                    | ForwardError::Timeout(_)
                    | ForwardError::Upstream(_)
                    | ForwardError::NotCached
            ) && req.keep_alive
                && !shared.is_shutting_down();
            // A refused request's body was never read, so its connection cannot carry another.
            let keep = keep
                || (matches!(e, ForwardError::Refused(ref r) if *r != Refusal::Forbidden)
                    && req.keep_alive
                    && !req.framing.has_body()
                    && !shared.is_shutting_down());
            if !matches!(e, ForwardError::ClientGone(_)) {
                let extra = refusal_headers(&e);
                scratch.body_bytes =
                    write_error_with(&mut conn.stream, status, &e.to_string(), keep, req.is_head(), &extra)
                        .unwrap_or(0);
            }
            (status, backend, if keep { Outcome::KeepAlive } else { Outcome::Close })
        }
    };
    if shared.config.access_log {
        shared.access_log.log(&AccessRecord {
            time: SystemTime::now(),
            client: conn.peer.ip(),
            method: req.method(),
            target: req.target(),
            version: req.version,
            status,
            body_bytes: scratch.body_bytes,
            duration: started.elapsed(),
            backend: backend.as_deref(),
            referer: req.header("referer"),
            user_agent: req.header("user-agent"),
        });
    }
    let route = route.map(|r| r.config.name.as_str());
    // A refused request never reached the app lookup; find its app so its owner sees the refusal.
    let refused_app = match (&app, route, rejection) {
        (None, None, Some(_)) => shared.router.lookup(req.target()).map(|m| m.app),
        _ => None,
    };
    let label = metrics::route_label(app.as_ref().or(refused_app.as_ref()).map(|a| a.name.as_str()), route);
    let now_secs = metrics::unix_secs(shared.clock.wall());
    shared.metrics.record(label, status, started.elapsed(), rejection, now_secs);
    if let Some(app) = &app {
        shared.router.log_request(app, conn.peer.ip(), &req, status, backend, started.elapsed());
    }
    outcome
}

/// The status sent, the backend (or `cache`) that answered, and what the connection does next.
pub type Forwarded = (u16, Option<String>, Outcome);

/// Sends the request to the backends in turn until one answers, then relays the answer. With a
/// cache plan, a stale entry may answer for a failed backend.
pub fn forward(
    shared: &Shared,
    scratch: &mut Scratch,
    conn: &mut Conn,
    req: &Request,
    dispatch: &Dispatch<'_>,
    mut plan: Option<&mut CachePlan<'_>>,
) -> Result<Forwarded, (ForwardError, Option<String>)> {
    let result = forward_to_backends(shared, scratch, conn, req, dispatch, plan.as_deref_mut());
    match (result, plan) {
        (
            Err((e @ (ForwardError::NoBackend | ForwardError::Timeout(_) | ForwardError::Upstream(_)), backend)),
            Some(plan),
        ) => match plan.stale_for_error(shared) {
            Some(entry) => {
                log::warn!("{} {}: {e}; answering with the stale stored response", req.method(), req.target());
                plan.cache.stats.stale.fetch_add(1, Ordering::Relaxed);
                Ok(cache_step::serve_entry(shared, scratch, conn, req, &entry, "STALE"))
            }
            None => Err((e, backend)),
        },
        (result, _) => result,
    }
}

fn forward_to_backends(
    shared: &Shared,
    scratch: &mut Scratch,
    conn: &mut Conn,
    req: &Request,
    dispatch: &Dispatch<'_>,
    mut plan: Option<&mut CachePlan<'_>>,
) -> Result<Forwarded, (ForwardError, Option<String>)> {
    let config = &shared.config;
    let now = Instant::now();
    let revalidating = plan.as_deref().and_then(CachePlan::revalidating);
    build_upstream_head(req, dispatch, conn.peer, revalidating, &mut scratch.upstream_head);
    let has_body = req.framing.has_body();
    for backend in dispatch.upstream.pool().candidates(now, dispatch.client) {
        // A reused connection may have been closed by the backend; without a body the request can
        // simply be sent again, so only body-less requests take an idle connection.
        let idle = if has_body { None } else { backend.take_idle(now) };
        let mut attempt = idle.map(|s| (s, true));
        loop {
            let (mut stream, reused) = match attempt.take() {
                Some(pair) => pair,
                // The tuple takes the start time before connecting (left to right).
                None => match (Instant::now(), backend.connect(config.connect_timeout, config.backend_timeout)) {
                    (connecting, Ok(stream)) => {
                        shared.metrics.observe_connect(&backend.name, connecting.elapsed());
                        backend.mark_up();
                        (stream, false)
                    }
                    (_, Err(e)) => {
                        log::warn!("backend {} is down for {:?}: {e}", backend.name, config.backend_cooldown);
                        backend.mark_down(Instant::now(), config.backend_cooldown);
                        break;
                    }
                },
            };
            let in_flight = InFlight::enter(backend);
            let sent = Instant::now();
            let exchanged = exchange(shared, scratch, conn, req, &mut stream, reused);
            if exchanged.is_ok() {
                shared.metrics.observe_upstream(&backend.name, sent.elapsed());
            }
            let result = match exchanged {
                Ok(res) => Ok(relay(shared, scratch, conn, req, res, backend, in_flight, stream, plan.as_deref_mut())),
                Err(AttemptError::Stale) => Err(None),
                Err(AttemptError::Fatal(e)) => Err(Some(e)),
            };
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
    let replayable = !req.framing.has_body();
    match response::read_head(&mut scratch.upstream_buf, stream, upstream_read_step(config), req.is_head()) {
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

/// Writes the response head and streams its body to the client; returns the status and what the
/// client connection does next. A failure here can only close the connection: the status line has
/// already gone out. With a cache plan, a 304 to a revalidation or a 5xx with a usable stale entry is
/// answered from storage instead, and a storable response is copied into the cache as it streams.
#[allow(clippy::too_many_arguments)]
fn relay(
    shared: &Shared,
    scratch: &mut Scratch,
    conn: &mut Conn,
    req: &Request,
    res: Response,
    backend: &Backend,
    in_flight: InFlight<'_>,
    mut stream: TcpStream,
    plan: Option<&mut CachePlan<'_>>,
) -> (u16, Outcome) {
    let config = &shared.config;
    if let Some(plan) = plan.as_deref() {
        let answered_from_storage = if res.status == 304 && plan.revalidating().is_some() {
            plan.stale.as_deref().map(|stale| (cache_step::refresh_from_304(shared, plan, stale, &res), "REVALIDATED"))
        } else if res.status >= 500 {
            plan.stale_for_error(shared).map(|entry| {
                plan.cache.stats.stale.fetch_add(1, Ordering::Relaxed);
                (entry, "STALE")
            })
        } else {
            None
        };
        if let Some((entry, label)) = answered_from_storage {
            if res.status == 304 && res.reusable && scratch.upstream_buf.is_empty() {
                backend.put_idle(stream, Instant::now());
            }
            let (status, _, outcome) = cache_step::serve_entry(shared, scratch, conn, req, &entry, label);
            return (status, outcome);
        }
    }
    if let Some(cache) = &shared.cache {
        if !matches!(req.method(), "GET" | "HEAD" | "OPTIONS" | "TRACE") {
            cache_step::invalidate_after_unsafe(cache, req, &res);
        }
    }
    let mut pending = plan
        .as_deref()
        .and_then(|plan| cache_step::start_storing(shared, plan, &|name| cache_step::request_value(req, name), &res));

    // Bodies whose end only the closing of the connection marks are re-chunked for HTTP/1.1
    // clients, so their connection survives; HTTP/1.0 clients get the bytes and a close.
    let (encoding, length_known) = match res.framing {
        Framing::None | Framing::Length(_) => (Encoding::Identity, true),
        Framing::Chunked | Framing::UntilClose if req.version == 1 => (Encoding::Chunked, true),
        Framing::Chunked | Framing::UntilClose => (Encoding::Identity, false),
    };
    let keep_alive = req.keep_alive && length_known && !shared.is_shutting_down();
    let cache_label: &[u8] = if plan.is_some() { b"X-Cache: MISS\r\n" } else { b"" };

    let mut dst = WriteBatch::new(&mut scratch.out, &mut conn.stream, config.buffer_size);
    let head = write_response_head(&mut dst, req, &res, encoding, keep_alive, cache_label);
    if head.is_err() {
        return (res.status, Outcome::Close);
    }
    let copied = {
        let mut src = Source { buf: &mut scratch.upstream_buf, sock: &mut stream, step: upstream_read_step(config) };
        match pending.as_mut() {
            Some(p) => body::transfer_with_copy(&mut src, res.framing, &mut dst, encoding, &mut p.tee),
            None => body::transfer(&mut src, res.framing, &mut dst, encoding, u64::MAX),
        }
    };
    if copied.is_ok() {
        // The backend's part is done before the client's last bytes go out, so the client's next
        // request already finds the stored response and the pooled connection.
        if let (Some(plan), Some(pending)) = (plan.as_deref(), pending) {
            cache_step::finish_storing(plan, &res, pending);
        }
        if res.reusable && scratch.upstream_buf.is_empty() {
            backend.put_idle(stream, Instant::now());
        }
    }
    drop(in_flight);
    match copied.and_then(|sent| dst.send().map(|()| sent).map_err(BodyError::Write)) {
        Ok(sent) => {
            scratch.body_bytes = sent;
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
    extra: &[u8],
) -> io::Result<()> {
    let head = dst;
    write!(head, "HTTP/1.1 {} ", res.status)?;
    head.put(res.reason())?;
    head.put(b"\r\n")?;
    for (name, value) in res.headers() {
        if res.connection.drops(name) || (!extra.is_empty() && name.eq_ignore_ascii_case("x-cache")) {
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
    head.put(extra)?;
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

/// Runs the gateway's checks in order — deny/allow, rate limits, hidden auth endpoints, the route's
/// authentication — and decides where the request goes.
fn admit<'r>(
    shared: &Shared,
    gateway: &Gateway,
    route: Option<&Arc<Route>>,
    client: IpAddr,
    req: &'r Request,
) -> Result<Dispatch<'r>, Refusal> {
    let now = shared.clock.now();
    gateway.admit(client, route.map(|r| &**r), now)?;
    let (upstream, target) = match route {
        // No configured route: an app of the management API owns `/<appid>/...`, else the default pool.
        None => match shared.router.lookup(req.target()) {
            Some(matched) => (Upstream::App(matched.app), Cow::Owned(matched.target)),
            None => (Upstream::Pool(Arc::clone(&gateway.default_pool)), Cow::Borrowed(req.target())),
        },
        Some(route) => {
            let target = if route.config.strip_prefix {
                let rest = &req.target()[route.config.prefix.len()..];
                if rest.starts_with('/') {
                    Cow::Borrowed(rest)
                } else {
                    Cow::Owned(format!("/{rest}"))
                }
            } else {
                Cow::Borrowed(req.target())
            };
            (Upstream::Pool(Arc::clone(&route.pool)), target)
        }
    };
    if gateway.hides(upstream.pool(), route.map(|r| &**r), &target) {
        return Err(Refusal::Hidden);
    }
    let auth_user = match route.map(|r| (&r.config.auth, r.auth.as_ref())) {
        None | Some((RouteAuth::None, _)) => None,
        Some((RouteAuth::Jwt, _)) => Some(verify_jwt(shared, req)?),
        Some((RouteAuth::Request(_), None)) => None,
        Some((RouteAuth::Request(_), Some(checker))) => match checker.check(req, client, now) {
            AuthDecision::Allow(user) => user,
            AuthDecision::Deny { status, challenge } => return Err(Refusal::Unauthorized { status, challenge }),
            AuthDecision::Failed(reason) => {
                log::warn!("auth for {} {}: {reason}", req.method(), req.target());
                return Err(Refusal::AuthBroken { status: 500, reason });
            }
            AuthDecision::Unavailable(reason) => {
                log::warn!("auth for {} {}: {reason}", req.method(), req.target());
                return Err(Refusal::AuthBroken { status: 503, reason });
            }
        },
    };
    Ok(Dispatch { upstream, target, client, auth_user })
}

/// `auth = jwt`: a token from pibl's own `/api/auth`, checked locally (signature, `nbf`, `exp`);
/// its identity goes on as `X-Auth-User`.
fn verify_jwt(shared: &Shared, req: &Request) -> Result<Vec<u8>, Refusal> {
    let refuse = || Refusal::Unauthorized { status: 401, challenge: Some(b"Bearer realm=\"pibl\"".to_vec()) };
    let Some(tokens) = &shared.tokens else {
        return Err(Refusal::AuthBroken { status: 503, reason: "jwt routes need the management API".into() });
    };
    let token = req.header("authorization").and_then(credentials::token_from_header).ok_or_else(refuse)?;
    let now = shared.clock.wall().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let claims = tokens.verify(token, now).map_err(|_| refuse())?;
    Ok(claims.identity.into_bytes())
}

/// Header fields an error answer carries: `Retry-After` for 429, the auth server's challenge for 401.
fn refusal_headers(e: &ForwardError) -> Vec<u8> {
    let mut out = Vec::new();
    match e {
        ForwardError::Refused(Refusal::RateLimited(wait)) => {
            let _ = write!(out, "Retry-After: {}\r\n", wait.as_secs_f64().ceil().max(1.0) as u64);
        }
        ForwardError::Refused(Refusal::Unauthorized { challenge: Some(challenge), .. }) => {
            push_field(&mut out, "WWW-Authenticate", challenge);
        }
        _ => {}
    }
    out
}

/// Writes the head sent to every backend for this request: hop-by-hop fields removed, `Host` kept,
/// `X-Forwarded-*` and `Via` added, framing written by pibl. When revalidating a stored entry, its
/// validators replace the client's own conditional fields.
fn build_upstream_head(
    req: &Request,
    dispatch: &Dispatch<'_>,
    peer: SocketAddr,
    revalidating: Option<&Entry>,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(req.method().as_bytes());
    out.push(b' ');
    out.extend_from_slice(dispatch.target.as_bytes());
    let prefix = dispatch.upstream.app().map(|app| app.prefix.as_str());
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
            // Only the auth server may say who the user is.
            || is(name, "x-auth-user")
            || (revalidating.is_some() && (is(name, "if-none-match") || is(name, "if-modified-since")))
        {
            continue;
        }
        push_field(out, name, value);
    }
    if let Some(entry) = revalidating {
        if let Some(etag) = entry.header("etag") {
            push_field(out, "If-None-Match", etag);
        }
        if let Some(modified) = entry.header("last-modified") {
            push_field(out, "If-Modified-Since", modified);
        }
    }
    // Appended to what earlier proxies recorded, as nginx's $proxy_add_x_forwarded_for does.
    out.extend_from_slice(b"X-Forwarded-For: ");
    for (_, value) in req.headers().filter(|(n, _)| is(n, "x-forwarded-for")) {
        out.extend_from_slice(value);
        out.extend_from_slice(b", ");
    }
    let _ = write!(out, "{}\r\n", peer.ip());
    out.extend_from_slice(b"X-Forwarded-Proto: http\r\n");
    if let Some(user) = &dispatch.auth_user {
        push_field(out, "X-Auth-User", user);
    }
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

/// Writes a response pibl generates itself (an error), small enough for one write; returns the body
/// bytes sent.
pub fn write_error(
    stream: &mut TcpStream,
    status: u16,
    detail: &str,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<u64> {
    write_error_with(stream, status, detail, keep_alive, head_only, b"")
}

/// [`write_error`] with extra header fields, each ending in CRLF.
pub fn write_error_with(
    stream: &mut TcpStream,
    status: u16,
    detail: &str,
    keep_alive: bool,
    head_only: bool,
    extra: &[u8],
) -> io::Result<u64> {
    let body = format!("{status} {}: {detail}\n", reason(status));
    let mut msg = Vec::with_capacity(160 + extra.len() + body.len());
    write!(
        msg,
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: {}\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )?;
    msg.extend_from_slice(extra);
    msg.extend_from_slice(b"\r\n");
    if !head_only {
        msg.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&msg).map(|()| if head_only { 0 } else { body.len() as u64 })
}
