//! One request forwarded by a loop session, as a state machine that never blocks:
//!
//! ```text
//! [Collect] ─► Connect ─► Send (head, then the body streamed from the client) ─► AwaitHead ─► Relay ─► done
//!                 ▲  refused / timed out: next backend     │ stale pooled connection: again on a fresh one
//!                 └────────────────────────────────────────┘ no byte of answer: an idempotent request once elsewhere
//! ```
//!
//! `Collect` reads a chunked GET or HEAD body whole first, so it goes with `Content-Length`
//! (`http::must_reframe_body`). A storable answer the client takes from its stored copy (a
//! conditional miss, a compressed one, a HEAD sent as GET) is read whole before anything is written.
//!
//! Each call of [`Exchange::advance`] moves as far as the sockets allow and says what happened.
//! Bodies go through [`Decoder`]s in both directions; each side's output buffer is read into only
//! while it holds less than `buffer_size`, so a slow reader on either side stops its writer.
//! Backend choice, cool-down and pooling rules are `upstream::backend`'s; the upstream head is
//! `proxy::forward`'s and the response head `proxy::response_head`'s.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use mio::net::TcpStream;
use mio::Interest;
use rustls::ClientConfig;

use crate::cache::policy::RequestDirectives;
use crate::cache::{Cache, Entry, Origin, OwnedFlightGuard};
use crate::http::body::{BodyError, Encoding};
use crate::http::buffer::{ReadBuf, SpareBuffers};
use crate::http::framing::{encode_end, encode_piece, Decoder};
use crate::http::request::Request;
use crate::http::response::{self, Response, MAX_RESPONSE_HEAD};
use crate::http::Framing;
use crate::proxy::cache_step::{self, CachePlan, Pending};
use crate::proxy::error::ForwardError;
use crate::proxy::forward::{interim_head, is_idempotent, upstream_read_step};
use crate::proxy::response_head::write_response_head;
use crate::server::event_loop::answers::{entry_answer, error_answer, finish, Record};
use crate::server::event_loop::client::{read_into, Client, Got, OutBuf};
use crate::server::event_loop::env::Env;
use crate::server::event_loop::tokens::backend_token;
use crate::server::event_loop::transport::{buffer_limit, HintedRead, Transport};
use crate::tls::client::backend_connection;
use crate::upstream::backend::{is_local_exhaustion, Backend};

/// Least bytes asked of a backend per read while its response head arrives.
const HEAD_READ_STEP: usize = 16 * 1024;

/// Room a backend read buffer has beyond one read window, for the response head before its body.
const HEAD_ROOM: usize = 16 * 1024;

/// Where the exchange stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a chunked GET or HEAD body whole, before any backend is asked.
    Collect,
    /// Choosing a backend and opening (or reusing) a connection to it.
    Connect,
    /// Writing the request head and streaming the body.
    Send,
    /// Reading the backend's response head.
    AwaitHead,
    /// Streaming the response body to the client.
    Relay,
}

/// What one [`Exchange::advance`] came to.
pub enum Advance {
    /// Bytes moved or the state changed: call again.
    Progress,
    /// Waiting for readiness or a deadline.
    Waiting,
    /// The answer is complete in the client's buffer (maybe not yet written); the connection
    /// carries another request if `keep`.
    Finished { keep: bool },
    /// The backend switched protocols: the session becomes a tunnel.
    Upgrade,
    /// The client is gone or the connection cannot be used any more.
    Close,
}

/// Counts one request in flight on a backend (for `least_conn` and the status pages) until dropped.
struct Busy(Arc<Backend>);

impl Busy {
    fn enter(backend: &Arc<Backend>) -> Busy {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(backend))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection to a backend (plain, or TLS for an `https://` one), owned by the session that uses it.
pub struct Upstream {
    pub stream: Transport,
    pub backend: Arc<Backend>,
    /// Taken from the pool: if it turns out closed before any answer byte, the request goes again.
    reused: bool,
    /// Set while the connection is being opened.
    connecting_since: Option<Instant>,
    _busy: Busy,
}

/// The cache's part of a forwarded GET or HEAD, owned (a [`CachePlan`] is built from it when the
/// cache functions need one).
pub struct CacheParts {
    pub key: String,
    /// The routing decision: only entries it produced answer, and what is stored is marked with it.
    pub origin: Origin,
    pub directives: RequestDirectives,
    pub stale: Option<Arc<Entry>>,
    pub store: bool,
    /// The client sent its own `If-None-Match` / `If-Modified-Since`.
    pub client_conditional: bool,
    /// A HEAD nothing stored answers goes upstream as a GET, whose answer fills the cache.
    pub head_as_get: bool,
    /// `strip_targeted_cache_control`.
    pub hide_targeted: bool,
    /// `compress` (the route's or `[DEFAULT]`'s): `compress_min_bytes`.
    pub compress_min: Option<u64>,
    pub request_time: SystemTime,
}

impl CacheParts {
    fn with_plan<R>(&mut self, cache: &Cache, f: impl FnOnce(&CachePlan<'_>) -> R) -> R {
        let plan = CachePlan {
            cache,
            key: std::mem::take(&mut self.key),
            origin: std::mem::take(&mut self.origin),
            directives: std::mem::take(&mut self.directives),
            stale: self.stale.take(),
            store: self.store,
            client_conditional: self.client_conditional,
            head_as_get: self.head_as_get,
            hide_targeted: self.hide_targeted,
            compress_min: self.compress_min,
            request_time: self.request_time,
            leader: None,
        };
        let result = f(&plan);
        self.key = plan.key;
        self.origin = plan.origin;
        self.directives = plan.directives;
        self.stale = plan.stale;
        result
    }

    /// A storable miss with the client's own conditionals: the backend is asked for the full answer.
    pub fn fills_for_client_conditional(&self) -> bool {
        self.store && self.client_conditional && self.revalidating().is_none()
    }

    /// The stored entry whose validators went out with the request.
    fn revalidating(&self) -> Option<&Arc<Entry>> {
        self.stale.as_ref().filter(|e| e.has_validator())
    }
}

/// One request on its way to a backend and back.
pub struct Exchange {
    pub req: Request,
    pub rec: Record,
    /// The head sent upstream, kept to send again after a stale pooled connection.
    head: Vec<u8>,
    candidates: Vec<Arc<Backend>>,
    next: usize,
    /// A backend whose pooled connection turned out closed: tried again first, on a new connection.
    retry: Option<Arc<Backend>>,
    pub upstream: Option<Upstream>,
    phase: Phase,
    /// The request body still to send (`None`: the request has none).
    body: Option<Decoder>,
    body_encoding: Encoding,
    to_backend: OutBuf,
    /// Bytes read from the backend and not yet relayed.
    pub from_backend: ReadBuf,
    pub res: Option<Response>,
    res_body: Option<Decoder>,
    res_encoding: Encoding,
    keep_client: bool,
    pub body_bytes: u64,
    cache: Option<Box<CacheParts>>,
    pending: Option<Box<Pending>>,
    continue_sent: bool,
    /// The status line has gone into the client's buffer: a failure can only close the connection.
    pub answer_started: bool,
    /// The request asked to switch protocols (WebSocket).
    upgrade: bool,
    backend_seen: Instant,
    sent_at: Instant,
    /// The session's slot, which names the backend socket's poller token.
    slot: usize,
    /// The backend that answered, for the records.
    by: Option<String>,
    /// The request's records are written (they are written once).
    recorded: bool,
    /// The response body has been read in full (and the backend connection pooled or closed).
    complete: bool,
    /// Held while this request fetches its URL for others waiting on it; dropped with the exchange.
    pub leader: Option<OwnedFlightGuard>,
    /// A chunked GET or HEAD body read whole (`Phase::Collect`), sent after the head.
    collected: Vec<u8>,
    /// The request's body went out with its head (collected whole): it is not sent twice.
    sends_collected_body: bool,
    /// The request has gone once to another backend after one broke before answering.
    retried_elsewhere: bool,
    /// Why the last backend tried gave nothing, answered when no other is left.
    unanswered: Option<ForwardError>,
    /// The answer is read whole, stored, and served from the stored copy.
    fill: bool,
    /// The client's buffer waits for the short rest of a body before it is written (see `relay`).
    hold_for_tail: bool,
    /// The body goes to the client as the backend sent it (identity encoding of a `Content-Length`
    /// or until-close body): it is written from `from_backend` itself, never copied into `cout`.
    direct: bool,
    /// With `direct`: body bytes at the front of `from_backend` already decoded, still to write
    /// (after `cout`'s pending bytes).
    owed: usize,
}

// Every forwarded request boxes an `Exchange`. glibc's per-thread cache serves chunks up to 1,032
// bytes without a lock or a bin search; at 1,192 bytes the box went through `_int_malloc` and
// `_int_free` on every request (2 % of a loop's time in perf, small keep-alive), which is why the
// cache's parts live behind boxes of their own.
const _: () = assert!(std::mem::size_of::<Exchange>() <= 1024, "an Exchange outgrew the allocator's thread cache");

impl Exchange {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        slot: usize,
        req: Request,
        rec: Record,
        head: Vec<u8>,
        candidates: Vec<Arc<Backend>>,
        cache: Option<CacheParts>,
        upgrade: bool,
        now: Instant,
        max_body: u64,
        reframe: bool,
    ) -> Result<Exchange, BodyError> {
        let body = match req.framing.has_body() {
            true => Some(Decoder::new(req.framing, max_body)?),
            false => None,
        };
        let body_encoding = if req.framing == Framing::Chunked { Encoding::Chunked } else { Encoding::Identity };
        Ok(Exchange {
            req,
            rec,
            head,
            candidates,
            next: 0,
            retry: None,
            upstream: None,
            phase: if reframe && body.is_some() { Phase::Collect } else { Phase::Connect },
            body,
            body_encoding,
            to_backend: OutBuf::default(),
            from_backend: ReadBuf::new(),
            res: None,
            res_body: None,
            res_encoding: Encoding::Identity,
            keep_client: false,
            body_bytes: 0,
            cache: cache.map(Box::new),
            pending: None,
            continue_sent: false,
            answer_started: false,
            upgrade,
            backend_seen: now,
            sent_at: now,
            slot,
            by: None,
            recorded: false,
            complete: false,
            leader: None,
            collected: Vec::new(),
            sends_collected_body: false,
            retried_elsewhere: false,
            unanswered: None,
            fill: false,
            hold_for_tail: false,
            direct: false,
            owed: 0,
        })
    }

    fn replayable(&self) -> bool {
        self.body.is_none() && !self.sends_collected_body
    }

    /// The backend's answer is read as a GET's though the client asked HEAD.
    fn head_as_get(&self) -> bool {
        self.cache.as_ref().is_some_and(|p| p.head_as_get)
    }

    /// The client may still be sending this request's body.
    pub fn input_pending(&self) -> bool {
        !self.body_done()
    }

    fn body_done(&self) -> bool {
        self.body.as_ref().is_none_or(Decoder::is_done)
    }

    fn may_keep_alive(&self, env: &Env<'_>) -> bool {
        self.req.keep_alive && !env.shared.is_shutting_down()
    }

    /// Moves the exchange as far as the sockets allow.
    pub fn advance(&mut self, client: &mut Client, env: &mut Env<'_>) -> Advance {
        // A whole window and a response head's room if one is kept: a 64 KiB body whose head pushed
        // its last bytes out of the first read then finds room for them behind it (one write to the
        // client, nothing moved); a small answer fits anyway. A buffer already a window long (one
        // that carried a large body before) gets the head's room once; smaller ones are left as
        // they are, since zero-filling 80 KiB for every small answer costs more than it saves.
        let window = upstream_read_step(&env.shared.config);
        env.spare.lend(&mut self.from_backend, window + HEAD_ROOM);
        if self.from_backend.capacity() >= window && window + HEAD_ROOM <= SpareBuffers::LARGEST {
            self.from_backend.ensure_size(window + HEAD_ROOM);
        }
        match self.phase {
            Phase::Collect => self.collect(client, env),
            Phase::Connect => self.connect(client, env),
            Phase::Send => self.send(client, env),
            Phase::AwaitHead => self.await_head(client, env),
            Phase::Relay => self.relay(client, env),
        }
    }

    /// When the exchange gives up on whoever it waits for.
    pub fn deadline(&self, client: &Client, env: &Env<'_>) -> Instant {
        let config = &env.shared.config;
        let backend = self.backend_seen + config.backend_timeout;
        let client_side = client.seen + config.client_timeout;
        match self.phase {
            Phase::Connect => match self.upstream.as_ref().and_then(|u| u.connecting_since) {
                Some(since) => since + config.connect_timeout,
                None => env.now,
            },
            Phase::Collect => client_side,
            Phase::Send if !self.to_backend.is_empty() => backend,
            Phase::Send if !client.cout.is_empty() || !self.body_done() => client_side,
            Phase::Send | Phase::AwaitHead => backend,
            // A full buffer waits for the client alone; a part-full one for whichever comes first.
            Phase::Relay if client.cout.pending() + self.owed >= config.buffer_size => client_side,
            Phase::Relay if !client.cout.is_empty() || self.owed > 0 => client_side.min(backend),
            Phase::Relay => backend,
        }
    }

    /// The deadline passed: a backend that did not connect is skipped, one that went silent gives
    /// 504, a client that stopped sending its body gives 408, one that stopped reading is closed.
    pub fn timed_out(&mut self, client: &mut Client, env: &mut Env<'_>) -> Advance {
        let config = &env.shared.config;
        match self.phase {
            Phase::Connect => {
                if let Some(up) = self.upstream.take() {
                    connect_failed(env, &up.backend, &io::Error::from(io::ErrorKind::TimedOut));
                }
                Advance::Progress
            }
            Phase::Collect | Phase::Send if self.to_backend.is_empty() && !self.body_done() => {
                let error = io::Error::new(io::ErrorKind::TimedOut, "the client stopped sending its body");
                self.fail(client, env, ForwardError::ClientBody(BodyError::Read(error)))
            }
            Phase::Collect | Phase::Send | Phase::AwaitHead => {
                let wait = config.backend_timeout;
                self.fail(client, env, ForwardError::Timeout(format!("no response within {wait:?}")))
            }
            Phase::Relay
                if (!client.cout.is_empty() || self.owed > 0) && env.now >= client.seen + config.client_timeout =>
            {
                log::info!("{}: client stopped reading the response; closing", client.peer);
                self.record(env);
                Advance::Close
            }
            Phase::Relay => {
                let name = self.upstream.as_ref().map_or("?", |u| u.backend.name.as_str());
                log::warn!("{} {}: backend {name} stalled mid-body", self.req.method(), self.req.target());
                self.upstream = None;
                if self.fill {
                    self.pending = None;
                    return self.filled_badly(client, env, "the backend stalled mid-body");
                }
                self.record(env);
                Advance::Finished { keep: false }
            }
        }
    }

    fn connect(&mut self, client: &mut Client, env: &mut Env<'_>) -> Advance {
        loop {
            if let Some(up) = &mut self.upstream {
                // mio's recipe for a non-blocking connect: an error, or a peer once connected.
                let failed = match up.stream.sock().take_error() {
                    Ok(Some(e)) | Err(e) => Some(e),
                    Ok(None) => match up.stream.sock().peer_addr() {
                        Ok(_) => None,
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => return Advance::Waiting,
                        Err(e) => Some(e),
                    },
                };
                if let Some(e) = failed {
                    let backend = Arc::clone(&up.backend);
                    self.upstream = None;
                    connect_failed(env, &backend, &e);
                    continue;
                }
                if let Some(since) = up.connecting_since.take() {
                    env.shared.metrics.observe_connect(&up.backend.name, since.elapsed());
                    up.backend.mark_up();
                    let _ = up.stream.sock().set_nodelay(true);
                }
                self.start_sending(env.now);
                return Advance::Progress;
            }
            let (backend, fresh_only) = match self.retry.take() {
                Some(backend) => (backend, true),
                None => match self.candidates.get(self.next) {
                    Some(backend) => {
                        self.next += 1;
                        (Arc::clone(backend), false)
                    }
                    None => {
                        let error = self.unanswered.take().unwrap_or(ForwardError::NoBackend);
                        return self.fail(client, env, error);
                    }
                },
            };
            // Only a request without a body may go on a pooled connection: it can be sent again.
            if !fresh_only && self.replayable() {
                // Still registered from its opening (see `pool_upstream`): only its holder changes.
                if let Some(stream) = env.pool.take(backend.addr, env.now, self.slot) {
                    let busy = Busy::enter(&backend);
                    self.upstream =
                        Some(Upstream { stream, backend, reused: true, connecting_since: None, _busy: busy });
                    self.start_sending(env.now);
                    return Advance::Progress;
                }
            }
            // An app endpoint's address is checked against the endpoint policy before every connection
            // (as `Backend::connect` does for the refresher).
            match backend.permitted().and_then(|()| TcpStream::connect(backend.addr)) {
                Ok(mut stream) => {
                    let token = backend_token(&stream);
                    if let Err(e) = env.registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE) {
                        connect_failed(env, &backend, &e);
                        continue;
                    }
                    env.pool.hold_new(&stream, self.slot);
                    let limit = buffer_limit(env.shared.config.buffer_size);
                    let stream = match over_tls(&backend, stream, env.shared.backend_tls.as_ref(), limit) {
                        Ok(stream) => stream,
                        Err(what) => {
                            let error = ForwardError::Upstream(format!("backend {}: {what}", backend.name));
                            return self.fail(client, env, error);
                        }
                    };
                    let busy = Busy::enter(&backend);
                    self.upstream =
                        Some(Upstream { stream, backend, reused: false, connecting_since: Some(env.now), _busy: busy });
                }
                Err(e) if is_local_exhaustion(&e) => {
                    log::warn!("cannot open a connection to backend {}: {e}", backend.name);
                    let error = ForwardError::Overloaded(format!("pibl is out of resources ({e})"));
                    return self.fail(client, env, error);
                }
                Err(e) => connect_failed(env, &backend, &e),
            }
        }
    }

    /// Reads a chunked GET or HEAD body whole; then the head says its length and the body follows
    /// it.
    fn collect(&mut self, client: &mut Client, env: &mut Env<'_>) -> Advance {
        let config = &env.shared.config;
        if self.req.expect_continue && !self.continue_sent && client.cin.is_empty() {
            client.cout.extend(b"HTTP/1.1 100 Continue\r\n\r\n");
            self.continue_sent = true;
        }
        if !client.cout.is_empty() {
            if let Err(e) = client.flush(env.now) {
                return self.fail(client, env, ForwardError::ClientGone(e));
            }
        }
        while let Some(body) = self.body.as_mut().filter(|b| !b.is_done()) {
            if !client.cin.is_empty() {
                match body.step(client.cin.filled()) {
                    Ok(step) => {
                        self.collected.extend_from_slice(&client.cin.filled()[step.data]);
                        client.cin.consume(step.consumed);
                        if step.consumed > 0 {
                            continue;
                        }
                    }
                    Err(e) => return self.fail(client, env, ForwardError::ClientBody(e)),
                }
            }
            let max = client.cin.len() + config.buffer_size;
            match client.read(config.buffer_size, max, env.now) {
                Got::Bytes(_) => {}
                Got::WouldBlock => return Advance::Waiting,
                Got::Eof => return self.fail(client, env, ForwardError::ClientBody(BodyError::Truncated)),
                Got::Failed(e) => return self.fail(client, env, ForwardError::ClientBody(BodyError::Read(e))),
            }
        }
        self.body = None;
        if !self.collected.is_empty() {
            // The head was written without framing fields; it ends in an empty line.
            let end = self.head.len() - 2;
            let length = format!("Content-Length: {}\r\n", self.collected.len());
            self.head.splice(end..end, length.into_bytes());
            self.head.extend_from_slice(&self.collected);
            self.sends_collected_body = true;
        }
        self.collected = Vec::new();
        self.phase = Phase::Connect;
        Advance::Progress
    }

    fn start_sending(&mut self, now: Instant) {
        self.phase = Phase::Send;
        self.to_backend = OutBuf::default();
        self.to_backend.extend(&self.head);
        self.from_backend.clear();
        self.backend_seen = now;
        self.sent_at = now;
    }

    /// A pooled connection turned out closed before any answer: send again on a new one.
    fn retry_fresh(&mut self) -> Advance {
        if let Some(up) = self.upstream.take() {
            log::debug!("backend {}: pooled connection was closed; sending again", up.backend.name);
            self.retry = Some(up.backend);
        }
        self.phase = Phase::Connect;
        Advance::Progress
    }

    fn send(&mut self, client: &mut Client, env: &mut Env<'_>) -> Advance {
        let config = &env.shared.config;
        let mut progress = false;
        if self.req.expect_continue && !self.continue_sent && client.cin.is_empty() {
            client.cout.extend(b"HTTP/1.1 100 Continue\r\n\r\n");
            self.continue_sent = true;
        }
        if !client.cout.is_empty() {
            match client.flush(env.now) {
                Ok(wrote) => progress |= wrote,
                Err(e) => return self.fail(client, env, ForwardError::ClientGone(e)),
            }
        }
        let Some(up) = self.upstream.as_mut() else { return self.retry_fresh() };
        let reused = up.reused;
        match self.to_backend.write_to(&mut up.stream) {
            Ok(wrote) => {
                if wrote {
                    self.backend_seen = env.now;
                    progress = true;
                }
            }
            Err(_) if reused && self.replayable() => return self.retry_fresh(),
            Err(e) => {
                let error = ForwardError::Upstream(format!("sending the request failed: {e}"));
                return self.elsewhere_or_fail(client, env, error, !reused);
            }
        }
        if let Some(body) = self.body.as_mut().filter(|b| !b.is_done()) {
            if self.to_backend.pending() < config.buffer_size {
                // Decode all that is buffered before any of it is written, so a malformed element
                // right after a chunk's data stops that data too; read more only when it is used up
                // or ends in an incomplete element.
                let mut starved = client.cin.is_empty();
                while !starved && !body.is_done() && self.to_backend.pending() < config.buffer_size {
                    match body.step(client.cin.filled()) {
                        Ok(step) => {
                            encode_piece(
                                &mut self.to_backend.data,
                                &client.cin.filled()[step.data],
                                self.body_encoding,
                            );
                            client.cin.consume(step.consumed);
                            progress |= step.consumed > 0;
                            starved = step.consumed == 0 || client.cin.is_empty();
                            if body.is_done() {
                                encode_end(&mut self.to_backend.data, self.body_encoding);
                            }
                        }
                        Err(e) => return self.fail(client, env, ForwardError::ClientBody(e)),
                    }
                }
                if starved && !body.is_done() {
                    // The read buffer may hold a partial element; room for one more step beyond it.
                    let max = client.cin.len() + config.buffer_size;
                    match client.read(config.buffer_size, max, env.now) {
                        Got::Bytes(_) => progress = true,
                        Got::WouldBlock => {}
                        Got::Eof => return self.fail(client, env, ForwardError::ClientBody(BodyError::Truncated)),
                        Got::Failed(e) => return self.fail(client, env, ForwardError::ClientBody(BodyError::Read(e))),
                    }
                }
            }
        }
        if self.body_done() && self.to_backend.is_empty() {
            self.phase = Phase::AwaitHead;
            return Advance::Progress;
        }
        if progress {
            Advance::Progress
        } else {
            Advance::Waiting
        }
    }

    fn await_head(&mut self, client: &mut Client, env: &mut Env<'_>) -> Advance {
        loop {
            if !self.from_backend.is_empty() {
                let is_head = self.req.is_head() && !self.head_as_get();
                match response::parse(self.from_backend.filled(), is_head) {
                    Ok(Some((res, len))) => {
                        self.from_backend.consume(len);
                        if res.is_informational() && res.status != 101 {
                            // 100 Continue is pibl's own to send, and an HTTP/1.0 client may not be
                            // sent any 1xx (RFC 9110 section 15.2).
                            if self.req.version == 1 && res.status != 100 {
                                client.cout.extend(&interim_head(&res));
                                if let Err(e) = client.flush(env.now) {
                                    return self.fail(client, env, ForwardError::ClientGone(e));
                                }
                            }
                            continue;
                        }
                        return self.got_head(client, env, res);
                    }
                    Ok(None) => {}
                    Err(e) => return self.fail(client, env, ForwardError::Upstream(format!("backend {e}"))),
                }
            }
            let Some(up) = self.upstream.as_mut() else { return self.retry_fresh() };
            let before_any_byte = self.from_backend.is_empty();
            let step = env.shared.config.buffer_size.max(HEAD_READ_STEP);
            let input = env.pool.input(up.stream.sock());
            let mut src = HintedRead { transport: &mut up.stream, input };
            let what = match read_into(&mut self.from_backend, &mut src, step, MAX_RESPONSE_HEAD) {
                Got::Bytes(_) => {
                    self.backend_seen = env.now;
                    continue;
                }
                Got::WouldBlock => return Advance::Waiting,
                Got::Eof if before_any_byte => "closed the connection without answering".to_string(),
                Got::Eof => "closed the connection mid-response".to_string(),
                Got::Failed(e) => format!("reading the response failed: {e}"),
            };
            let reused = up.reused;
            if before_any_byte && reused && self.replayable() {
                return self.retry_fresh();
            }
            let error = ForwardError::Upstream(format!("backend {what}"));
            return self.elsewhere_or_fail(client, env, error, before_any_byte && !reused);
        }
    }

    /// A fresh connection broke (closed or reset, not timed out) before any byte of answer
    /// (`unanswered`): the backend may have died, so an idempotent request without a body goes
    /// once to another backend. Otherwise the failure is answered.
    fn elsewhere_or_fail(
        &mut self,
        client: &mut Client,
        env: &mut Env<'_>,
        error: ForwardError,
        unanswered: bool,
    ) -> Advance {
        let may_retry = is_idempotent(self.req.method()) && self.replayable() && !self.retried_elsewhere;
        if !(unanswered && may_retry) {
            return self.fail(client, env, error);
        }
        let name = self.upstream.as_ref().map_or("?", |u| u.backend.name.as_str());
        log::warn!("backend {name}: {error}; trying the request on another backend");
        self.retried_elsewhere = true;
        self.upstream = None;
        self.unanswered = Some(error);
        self.phase = Phase::Connect;
        Advance::Progress
    }

    fn got_head(&mut self, client: &mut Client, env: &mut Env<'_>, res: Response) -> Advance {
        let shared = env.shared;
        let Some(up) = self.upstream.as_ref() else { return self.retry_fresh() };
        let backend = Arc::clone(&up.backend);
        shared.metrics.observe_upstream(&backend.name, self.sent_at.elapsed());
        self.by = Some(backend.name.clone());
        if res.status == 101 {
            if self.upgrade {
                self.res = Some(res);
                return Advance::Upgrade;
            }
            let what = "backend switched protocols without being asked to";
            return self.fail(client, env, ForwardError::Upstream(what.into()));
        }
        let keep_alive = self.may_keep_alive(env);
        if let (Some(cache), Some(parts)) = (shared.cache.as_deref(), self.cache.as_mut()) {
            // A 304 to a revalidation, or a 5xx with a usable stale entry, is answered from storage.
            let stored = if res.status == 304 && parts.revalidating().is_some() {
                let stale = parts.revalidating().cloned();
                stale.map(|stale| {
                    let entry = parts.with_plan(cache, |plan| cache_step::refresh_from_304(shared, plan, &stale, &res));
                    (entry, "REVALIDATED")
                })
            } else if res.status >= 500 {
                let entry = parts.with_plan(cache, |plan| plan.stale_for_error(shared.clock.now()));
                entry.map(|entry| {
                    cache.stats.stale.fetch_add(1, Ordering::Relaxed);
                    (entry, "STALE")
                })
            } else {
                None
            };
            if let Some((entry, label)) = stored {
                if res.status == 304 && res.reusable && self.from_backend.is_empty() {
                    self.pool_upstream(env);
                }
                self.upstream = None;
                let (out, conn) = (&mut client.cout.data, &client.answer_fields);
                let (status, bytes) = entry_answer(out, &entry, label, conn, &self.req, keep_alive, shared.clock.now());
                self.record_as(env, status, bytes, Some(&backend.name));
                return Advance::Finished { keep: keep_alive };
            }
        }
        if let Some(cache) = shared.cache.as_deref() {
            if !matches!(self.req.method(), "GET" | "HEAD" | "OPTIONS" | "TRACE") {
                cache_step::invalidate_after_unsafe(cache, &self.req, &res);
            }
            if let Some(parts) = self.cache.as_mut() {
                let req = &self.req;
                if req.is_head() && res.status == 200 {
                    parts.with_plan(cache, |plan| cache_step::update_from_head(shared, plan, &res));
                }
                self.pending = parts.with_plan(cache, |plan| {
                    cache_step::start_storing(shared, plan, &|name| cache_step::request_value(req, name), &res)
                        .map(Box::new)
                });
                // Known length within the object limit (else nothing is pending): read it whole,
                // store it, and answer from the stored copy (a 304 for the client's conditional,
                // the encoding it prefers, or a HEAD's head alone).
                let from_storage = parts.with_plan(cache, |plan| plan.answers_from_storage(req, &res));
                if from_storage && self.pending.is_some() {
                    return self.start_relay(res, Encoding::Identity, true);
                }
            }
        }
        if self.head_as_get() {
            // A HEAD sent as a GET whose answer is not stored: the client gets the head alone, and
            // the unread body makes the backend connection unfit for another request.
            let encoding = if matches!(res.framing, Framing::Chunked | Framing::UntilClose) && self.req.version == 1 {
                Encoding::Chunked
            } else {
                Encoding::Identity
            };
            let fields = with_conn_fields(b"X-Cache: MISS\r\n", &res, client);
            write_response_head(&mut client.cout.data, &self.req, &res, encoding, keep_alive, &fields, false);
            self.upstream = None;
            self.pending = None;
            self.record_as(env, res.status, 0, Some(&backend.name));
            return Advance::Finished { keep: keep_alive };
        }
        // Bodies whose end only the closing of the connection marks are re-chunked for HTTP/1.1
        // clients, so their connection survives; HTTP/1.0 clients get the bytes and a close.
        let (encoding, length_known) = match res.framing {
            Framing::None | Framing::Length(_) => (Encoding::Identity, true),
            Framing::Chunked | Framing::UntilClose if self.req.version == 1 => (Encoding::Chunked, true),
            Framing::Chunked | Framing::UntilClose => (Encoding::Identity, false),
        };
        self.keep_client = keep_alive && length_known;
        let label: &[u8] = if self.cache.is_some() { b"X-Cache: MISS\r\n" } else { b"" };
        let fields = with_conn_fields(label, &res, client);
        let strip = shared.config.strip_targeted_cache_control;
        write_response_head(&mut client.cout.data, &self.req, &res, encoding, self.keep_client, &fields, strip);
        self.answer_started = true;
        self.start_relay(res, encoding, false)
    }

    /// Goes on to the response body: relayed as it comes, or (`fill`) read whole for the cache.
    fn start_relay(&mut self, res: Response, encoding: Encoding, fill: bool) -> Advance {
        self.res_encoding = encoding;
        self.fill = fill;
        // These framings' decoded data is their input itself (see `Decoder::step`), so it can be
        // written from where it was read. A 64 KiB body then costs no copy inside pibl (nginx
        // writes from its read buffers the same way).
        self.direct = !fill
            && encoding == Encoding::Identity
            && matches!(res.framing, Framing::Length(_) | Framing::UntilClose | Framing::None);
        match Decoder::new(res.framing, u64::MAX) {
            Ok(decoder) => self.res_body = Some(decoder),
            Err(_) => return Advance::Close,
        }
        self.res = Some(res);
        self.phase = Phase::Relay;
        Advance::Progress
    }

    fn relay(&mut self, client: &mut Client, env: &mut Env<'_>) -> Advance {
        let config = &env.shared.config;
        let mut progress = false;
        // What the client has not taken yet goes first, so the buffer holds one window at most;
        // except when body bytes are already at hand (they came in the read that brought the head):
        // they join the head first, and a small answer goes out in one write instead of two.
        if self.from_backend.is_empty() && !self.hold_for_tail {
            match client.flush(env.now) {
                Ok(wrote) => progress |= wrote,
                Err(_) => {
                    self.record(env);
                    return Advance::Close;
                }
            }
        }
        let Some(decoder) = self.res_body.as_mut() else { return Advance::Close };
        // A backend is read up to 64 KiB at a time (a 64 KiB body
        // takes one read and one write instead of eight of each); the client's buffer is bounded
        // by the same window, so a slow client still holds at most that much.
        let window = upstream_read_step(config);
        if !decoder.is_done() && client.cout.pending() + self.owed < window {
            let mut starved = self.from_backend.len() == self.owed;
            if !starved {
                match decoder.step(&self.from_backend.filled()[self.owed..]) {
                    Ok(step) => {
                        let data = &self.from_backend.filled()[self.owed..][step.data];
                        if let Some(pending) = self.pending.as_mut() {
                            pending.tee.keep(data);
                        }
                        if self.direct {
                            // `data` is the whole of what was consumed: it stays where it is.
                            self.body_bytes += data.len() as u64;
                            self.owed += step.consumed;
                        } else {
                            if !self.fill {
                                self.body_bytes += data.len() as u64;
                                encode_piece(&mut client.cout.data, data, self.res_encoding);
                            }
                            self.from_backend.consume(step.consumed);
                        }
                        progress |= step.consumed > 0;
                        starved = step.consumed == 0;
                        // What is left of a known length, when it is at most one more read, is read
                        // before the buffer goes out: a body one window long (64 KiB, whose head
                        // pushed its last bytes into a second read) then leaves in one write, so
                        // the client is woken once. Bounded: two windows in the client's buffer.
                        // Bytes owed to the client stay in the read buffer: the rest is held for
                        // only if it fits behind them, since moving them (or growing the buffer past
                        // the loop's spare size) would cost more than a second write.
                        let undecoded = (self.from_backend.len() - self.owed) as u64;
                        let unread = decoder.known_remaining().map(|left| left.saturating_sub(undecoded));
                        let fits = |left: u64| self.owed == 0 || left <= self.from_backend.room() as u64;
                        self.hold_for_tail = matches!(unread, Some(left) if left > 0 && left <= window as u64 && fits(left))
                            && client.cout.pending() + self.owed < window;
                    }
                    Err(e) => return self.broke_off(client, env, e),
                }
            }
            // Bytes owed to the client are read more behind only while the buffer has room: moving
            // them up or growing the buffer (past the size the loop keeps spare) costs more than
            // waiting for the client to take them.
            let room = self.owed == 0 || self.from_backend.room() > 0;
            if starved && room && !decoder.is_done() {
                let Some(up) = self.upstream.as_mut() else { return Advance::Close };
                let max = self.from_backend.len() + window;
                let input = env.pool.input(up.stream.sock());
                let mut src = HintedRead { transport: &mut up.stream, input };
                match read_into(&mut self.from_backend, &mut src, window, max) {
                    Got::Bytes(_) => {
                        self.backend_seen = env.now;
                        progress = true;
                    }
                    // Nothing more yet: what is at hand goes out now.
                    Got::WouldBlock => self.hold_for_tail = false,
                    Got::Eof => {
                        if let Err(e) = decoder.finish_at_eof() {
                            return self.broke_off(client, env, e);
                        }
                        // The backend closed, as an until-close body ends: nothing to pool.
                        self.upstream = None;
                        progress = true;
                    }
                    Got::Failed(e) => return self.broke_off(client, env, BodyError::Read(e)),
                }
            }
        }
        if !self.complete && self.res_body.as_ref().is_some_and(Decoder::is_done) {
            if self.fill {
                return self.answer_filled(client, env);
            }
            // Stored and pooled first, so the client's next request already finds both; then the
            // body's last bytes leave.
            self.body_complete(client, env);
            self.complete = true;
            if self.write_owed(client, env.now).is_err() {
                self.record(env);
                return Advance::Close;
            }
            self.hand_owed_to_client(client);
        }
        if self.complete {
            // What is left in the client's buffer is written before the next request is read.
            self.record(env);
            return Advance::Finished { keep: self.keep_client };
        }
        if self.hold_for_tail && progress {
            // Called again at once for the rest (a call that moves nothing always writes).
            return Advance::Progress;
        }
        self.hold_for_tail = false;
        match self.write_owed(client, env.now) {
            Ok(wrote) => progress |= wrote,
            Err(_) => {
                self.record(env);
                return Advance::Close;
            }
        }
        if progress {
            Advance::Progress
        } else {
            Advance::Waiting
        }
    }

    /// Writes the client's buffer and then the body bytes owed to it from `from_backend`; `Ok(true)`
    /// when bytes went out, `Err` when the client is gone.
    fn write_owed(&mut self, client: &mut Client, now: Instant) -> io::Result<bool> {
        let (wrote, taken) = client.flush_with(&self.from_backend.filled()[..self.owed], now)?;
        self.from_backend.consume(taken);
        self.owed -= taken;
        Ok(wrote)
    }

    /// Moves the owed body bytes the client has not taken into its buffer, after what is there, so
    /// they go out once the exchange is over (its read buffer goes back to the loop): called by the
    /// session whenever an exchange finishes, whichever way.
    pub fn hand_owed_to_client(&mut self, client: &mut Client) {
        client.cout.extend(&self.from_backend.filled()[..self.owed]);
        self.from_backend.consume(self.owed);
        self.owed = 0;
    }

    /// The response body is complete: end its framing, store it, and give the connection back.
    fn body_complete(&mut self, client: &mut Client, env: &mut Env<'_>) {
        let framing = self.res.as_ref().map_or(Framing::None, |r| r.framing);
        if framing != Framing::None {
            encode_end(&mut client.cout.data, self.res_encoding);
        }
        // The backend's part is done before the client's last bytes go out, so the client's next
        // request already finds the stored response and the pooled connection. Bytes already past
        // the body's end mean its length was wrong: what was relayed is neither stored nor is the
        // connection used again. (The body bytes still owed to the client are not past it.)
        let overran = self.from_backend.len() > self.owed;
        let pending = self.pending.take().filter(|_| !overran);
        if let (Some(cache), Some(parts), Some(pending), Some(res)) =
            (env.shared.cache.as_deref(), self.cache.as_mut(), pending, self.res.as_ref())
        {
            parts.with_plan(cache, |plan| cache_step::finish_storing(plan, res, *pending));
        }
        if self.res.as_ref().is_some_and(|r| r.reusable) && !overran {
            self.pool_upstream(env);
        }
        self.upstream = None;
    }

    /// A storable answer read whole: stored, and the client answered from the stored copy.
    fn answer_filled(&mut self, client: &mut Client, env: &mut Env<'_>) -> Advance {
        let shared = env.shared;
        let by = self.by.clone();
        let overran = !self.from_backend.is_empty();
        if self.res.as_ref().is_some_and(|r| r.reusable) && !overran {
            self.pool_upstream(env);
        }
        self.upstream = None;
        self.complete = true;
        // Bytes past the body's end: the answer goes to this client alone, not stored.
        let entry = match (shared.cache.as_deref(), self.cache.as_mut(), self.pending.take(), self.res.as_ref()) {
            (Some(cache), Some(parts), Some(pending), Some(res)) => parts.with_plan(cache, |plan| match overran {
                true => cache_step::unstored_answer(plan, res, *pending),
                false => cache_step::store_answer(plan, res, *pending),
            }),
            _ => None,
        };
        let keep = self.may_keep_alive(env) && self.body_done();
        match entry {
            Some(entry) => {
                let (out, conn) = (&mut client.cout.data, &client.answer_fields);
                let (status, bytes) = entry_answer(out, &entry, "MISS", conn, &self.req, keep, shared.clock.now());
                self.record_as(env, status, bytes, by.as_deref());
                Advance::Finished { keep }
            }
            None => self.filled_badly(client, env, "the backend's answer could not be stored"),
        }
    }

    /// Nothing has gone to the client yet of an answer being read whole: it gets a proper 502.
    fn filled_badly(&mut self, client: &mut Client, env: &mut Env<'_>, detail: &str) -> Advance {
        let by = self.by.clone();
        let (out, conn) = (&mut client.cout.data, &client.answer_fields);
        let bytes = error_answer(out, 502, detail, false, self.req.is_head(), b"", conn);
        self.record_as(env, 502, bytes, by.as_deref());
        Advance::Finished { keep: false }
    }

    /// Keeps the backend connection in the loop's pool. It stays registered with the poller under
    /// its own token (see [`upstream_pool`](crate::server::event_loop::upstream_pool)): a
    /// deregistration here and a registration at the next use would cost two system calls per
    /// request. Closing it removes it from the poller.
    fn pool_upstream(&mut self, env: &mut Env<'_>) {
        if let Some(up) = self.upstream.take() {
            env.pool.put(up.backend.addr, up.stream, env.now, env.shared.config.backend_pool_size);
        }
    }

    /// The backend broke off the response body: the status line is out, so the client connection
    /// can only be closed once what arrived is written.
    fn broke_off(&mut self, client: &mut Client, env: &mut Env<'_>, e: BodyError) -> Advance {
        let name = self.upstream.as_ref().map_or("?", |u| u.backend.name.as_str());
        log::warn!("{} {}: backend {name} broke off the response body: {e}", self.req.method(), self.req.target());
        self.upstream = None;
        self.pending = None;
        if self.fill {
            return self.filled_badly(client, env, "the backend broke off the response body");
        }
        self.record(env);
        Advance::Finished { keep: false }
    }

    /// Answers a failure, by whose fault it is, unless the answer has already started.
    pub fn fail(&mut self, client: &mut Client, env: &mut Env<'_>, error: ForwardError) -> Advance {
        let shared = env.shared;
        let by = self.upstream.take().map(|u| u.backend.name.clone()).or_else(|| self.by.clone());
        if self.answer_started {
            log::warn!("{} {} {}: {error}", client.peer, self.req.method(), self.req.target());
            self.record(env);
            return Advance::Finished { keep: false };
        }
        // A stored response may stand in for a failed backend (`stale-if-error`).
        if error.is_backend_fault() {
            if let (Some(cache), Some(parts)) = (shared.cache.as_deref(), self.cache.as_mut()) {
                if let Some(entry) = parts.with_plan(cache, |plan| plan.stale_for_error(shared.clock.now())) {
                    log::warn!(
                        "{} {}: {error}; answering with the stale stored response",
                        self.req.method(),
                        self.req.target()
                    );
                    cache.stats.stale.fetch_add(1, Ordering::Relaxed);
                    let keep = self.may_keep_alive(env) && self.body_done();
                    let (out, conn) = (&mut client.cout.data, &client.answer_fields);
                    let now = shared.clock.now();
                    let (status, bytes) = entry_answer(out, &entry, "STALE", conn, &self.req, keep, now);
                    self.record_as(env, status, bytes, by.as_deref());
                    return Advance::Finished { keep };
                }
            }
        }
        match &error {
            ForwardError::ClientGone(_) => {
                self.record_as(env, error.status(), 0, by.as_deref());
                return Advance::Close;
            }
            ForwardError::ClientBody(_) => {
                log::info!("{} {} {}: {error}", client.peer, self.req.method(), self.req.target())
            }
            _ => log::warn!("{} {} {}: {error}", client.peer, self.req.method(), self.req.target()),
        }
        // The connection carries another request only if this one was read in full.
        let keep = self.may_keep_alive(env) && error.is_backend_fault() && self.body_done();
        let status = error.status();
        let (out, conn) = (&mut client.cout.data, &client.answer_fields);
        let bytes =
            error_answer(out, status, &error.to_string(), keep, self.req.is_head(), &error.answer_fields(), conn);
        self.record_as(env, status, bytes, by.as_deref());
        Advance::Finished { keep }
    }

    /// Records the request as answered so far (a relayed response, or 499 for one whose client
    /// left first), once.
    pub fn record(&mut self, env: &Env<'_>) {
        let status = self.res.as_ref().map_or(499, |r| r.status);
        let by = self.by.take();
        self.record_as(env, status, self.body_bytes, by.as_deref());
    }

    fn record_as(&mut self, env: &Env<'_>, status: u16, body_bytes: u64, by: Option<&str>) {
        if !self.recorded {
            self.recorded = true;
            finish(env.shared, &self.rec, &self.req, status, body_bytes, by);
        }
    }
}

/// The fields pibl adds to a relayed head: `label`, then the connection's own (HSTS over TLS) unless
/// the backend sent its own `Strict-Transport-Security`.
fn with_conn_fields(label: &[u8], res: &Response, client: &Client) -> Vec<u8> {
    let mut fields = label.to_vec();
    if res.header("strict-transport-security").is_none() {
        fields.extend_from_slice(&client.answer_fields);
    }
    fields
}

/// The connection as the backend speaks: plain, or TLS asking for its host name (sent as SNI
/// unless it is an address) with the backend trust settings (`backend_ca`, `backend_tls_verify`).
pub fn over_tls(
    backend: &Backend,
    stream: TcpStream,
    config: Option<&Arc<ClientConfig>>,
    limit: usize,
) -> Result<Transport, String> {
    let Some(host) = &backend.tls_host else { return Ok(Transport::Plain(stream)) };
    Ok(Transport::tls_client(stream, backend_connection(config, host)?, limit))
}

/// A backend refused or did not answer the connection: it sits out the cool-down.
fn connect_failed(env: &Env<'_>, backend: &Backend, e: &io::Error) {
    let config = &env.shared.config;
    log::warn!("backend {} is down for {:?}: {e}", backend.name, config.backend_cooldown);
    backend.mark_down(env.shared.clock.now(), config.backend_cooldown);
}
