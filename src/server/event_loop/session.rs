//! One client connection in a loop, as a state machine:
//!
//! ```text
//! ReadingHead ─► (admit, cache) ─► Exchange{backend, bodies both ways} ─► ReadingHead …
//!      │                 │ hit: answered from storage        │ 101
//!      │                 │ miss with a fetch under way: Coalescing until it ends (then again)
//!      │ bad head        └────────────────────────────────►  └─► Tunnel ─► closed
//!      └─► Lingering (answer flushed, half-closed, input discarded for a bounded time) ─► closed
//! ```
//!
//! [`Session::drive`] moves the session as far as its sockets allow without blocking and returns
//! whether it stays open; [`Session::deadline`] says when it must hear from someone, and
//! [`Session::timed_out`] acts on it. The request pipeline's steps that need no socket are `proxy`'s
//! (`proxy::admit`, `proxy::cache_step`, `proxy::forward`'s upstream head).

use std::borrow::Cow;
use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::policy::Usability;
use crate::cache::{Cache, Entry, Flight};
use crate::config::RouteAuth;
use crate::gateway::auth_request::AuthDecision;
use crate::gateway::Refusal;
use crate::http::buffer::SpareBuffers;
use crate::http::must_reframe_body;
use crate::http::request::{self, Request};
use crate::http::Framing;
use crate::observe::metrics::Rejection;
use crate::proxy::admit;
use crate::proxy::cache_step;
use crate::proxy::dispatch::Dispatch;
use crate::proxy::error::ForwardError;
use crate::proxy::forward::{build_upstream_head, UpstreamFields};
use crate::server::conn::{ConnSlot, IpSlot};
use crate::server::event_loop::answers::{entry_answer, error_answer, finish, Record};
use crate::server::event_loop::auth::{AuthProbe, Probe};
use crate::server::event_loop::client::{Client, Got};
use crate::server::event_loop::env::Env;
use crate::server::event_loop::exchange::{Advance, CacheParts, Exchange};
use crate::server::event_loop::timers::Owner;
use crate::server::event_loop::transport::Handshake;
use crate::server::event_loop::tunnel::{Pipe, Tunnel};
use crate::server::shared::Shared;
use crate::tls::plain::{plain_answer, PlainReply};

/// Longest time an error answer's connection is kept to discard what the client still sends, so
/// it reads the answer instead of a reset (nginx's `lingering_time`). Discarding costs a read and
/// no memory, so time is the only bound.
const LINGER_TIME: Duration = Duration::from_secs(5);

/// Steps one session may take in one turn of its loop. A session whose sockets never run dry (a
/// WebSocket echoing faster than the loop comes round, a large body on a fast backend) would
/// otherwise hold the loop, and every other connection on it, for as long as it keeps moving.
pub const STEPS_PER_TURN: usize = 32;

/// Whether the session stays open after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Waiting for its sockets or a timer.
    Open,
    /// Still moving when its turn ended: to be driven again once the loop has served the others.
    Yield,
    Close,
}

enum State {
    /// Waiting for (the rest of) a request head, or idle between requests.
    ReadingHead,
    /// Waiting for the route's auth server (`auth = request`).
    Authorizing(Box<AuthProbe>),
    /// Waiting for another request's fetch of the same URL to fill the cache.
    Coalescing(Box<Coalescing>),
    Exchange(Box<Exchange>),
    Tunnel(Box<Tunnel>),
    /// An answer that closes the connection is being written; then input is discarded until the
    /// client closes or `until`.
    Lingering {
        until: Instant,
        shut: bool,
    },
    /// The last answer is being written; then the connection closes.
    Closing,
}

/// A cache miss parked until the request fetching the same URL finishes.
struct Coalescing {
    req: Request,
    rec: Record,
    dispatch: Dispatch<'static>,
    flight: Arc<Flight>,
    since: Instant,
}

/// One client connection and the request it is serving, if any.
pub struct Session {
    pub client: Client,
    state: State,
    /// When the request head now being read began to arrive; `None` while idle between requests.
    head_started: Option<Instant>,
    idle_since: Instant,
    /// The deadline this session has armed in the loop's timers.
    pub armed: Option<Instant>,
    slot: usize,
    generation: u64,
    /// The session is closing because a deadline passed (a TLS handshake that never finished).
    expired: bool,
    _conn_slot: ConnSlot,
    _ip_slot: Option<IpSlot>,
}

impl Session {
    pub fn new(client: Client, owner: Owner, conn_slot: ConnSlot, ip_slot: Option<IpSlot>, now: Instant) -> Session {
        Session {
            client,
            state: State::ReadingHead,
            head_started: Some(now),
            idle_since: now,
            armed: None,
            slot: owner.slot,
            generation: owner.generation,
            expired: false,
            _conn_slot: conn_slot,
            _ip_slot: ip_slot,
        }
    }

    /// Waiting for a request with nothing to write: what the status pages count as parked.
    pub fn is_parked(&self) -> bool {
        matches!(self.state, State::ReadingHead) && self.client.output_done()
    }

    /// Nothing of the current request has been answered yet, so a 500 can still be sent.
    pub fn can_answer(&self) -> bool {
        match &self.state {
            State::ReadingHead => self.client.cout.is_empty(),
            State::Authorizing(_) | State::Coalescing(_) => true,
            State::Exchange(ex) => !ex.answer_started,
            State::Tunnel(_) | State::Lingering { .. } | State::Closing => false,
        }
    }

    /// Moves the session as far as its sockets allow, for at most [`STEPS_PER_TURN`] steps.
    pub fn drive(&mut self, env: &mut Env<'_>) -> Verdict {
        for _ in 0..STEPS_PER_TURN {
            let step = match &mut self.state {
                State::ReadingHead => self.read_head(env),
                State::Authorizing(probe) => match probe.advance() {
                    Probe::Waiting => Ok(false),
                    Probe::Decided(decision) => {
                        self.authorized(decision, env);
                        Ok(true)
                    }
                },
                State::Coalescing(wait) if !wait.flight.is_done() => Ok(false),
                State::Coalescing(_) => {
                    self.resume_after_flight(env);
                    Ok(true)
                }
                State::Exchange(_) => self.exchange(env),
                State::Tunnel(tunnel) => match tunnel.advance(&mut self.client, env) {
                    Pipe::Progress => Ok(true),
                    Pipe::Waiting => Ok(false),
                    Pipe::Closed => Err(()),
                },
                State::Lingering { .. } => self.linger(env),
                State::Closing => match self.client.flush(env.now) {
                    Ok(_) if self.client.output_done() => Err(()),
                    Ok(wrote) => Ok(wrote),
                    Err(_) => Err(()),
                },
            };
            match step {
                Ok(true) => continue,
                Ok(false) => return Verdict::Open,
                Err(()) => return Verdict::Close,
            }
        }
        Verdict::Yield
    }

    /// When the session must next hear from someone.
    pub fn deadline(&self, env: &Env<'_>) -> Instant {
        let config = &env.shared.config;
        match &self.state {
            State::ReadingHead if !self.client.output_done() => self.client.seen + config.client_timeout,
            State::ReadingHead => match self.head_started {
                Some(start) => start + config.header_timeout,
                None => self.idle_since + config.keepalive_timeout,
            },
            State::Authorizing(probe) => probe.deadline(env),
            // A fetch slower than this no longer holds the others: they go to a backend themselves.
            State::Coalescing(wait) => wait.since + config.backend_timeout,
            State::Exchange(ex) => ex.deadline(&self.client, env),
            State::Tunnel(tunnel) => tunnel.deadline(config.tunnel_timeout),
            State::Lingering { until, .. } => *until,
            State::Closing => self.client.seen + config.client_timeout,
        }
    }

    /// The deadline passed.
    pub fn timed_out(&mut self, env: &mut Env<'_>) -> Verdict {
        self.expired = true;
        match &mut self.state {
            State::ReadingHead if self.client.cout.is_empty() && !self.client.cin.is_empty() => {
                log::info!("{}: request head not complete in time", self.client.peer);
                let client = &mut self.client;
                let detail = "request head not complete in time";
                error_answer(&mut client.cout.data, 408, detail, false, false, b"", &client.answer_fields);
                self.linger_after_answer(env.now);
                self.drive(env)
            }
            State::ReadingHead | State::Tunnel(_) | State::Lingering { .. } | State::Closing => Verdict::Close,
            State::Coalescing(_) => {
                self.resume_after_flight(env);
                self.drive(env)
            }
            State::Authorizing(_) => {
                let wait = env.shared.config.connect_timeout + env.shared.config.backend_timeout;
                self.authorized(AuthDecision::Unavailable(format!("auth server did not answer within {wait:?}")), env);
                self.drive(env)
            }
            State::Exchange(ex) => {
                let advance = ex.timed_out(&mut self.client, env);
                match self.after_exchange(advance, env) {
                    Ok(_) => self.drive(env),
                    Err(()) => Verdict::Close,
                }
            }
        }
    }

    /// The session is being closed (by either side, a deadline, shutdown or a panic): records what
    /// it was doing.
    pub fn on_close(&mut self, env: &Env<'_>) {
        self.count_handshake(env);
        match &mut self.state {
            State::Exchange(ex) => ex.record(env),
            State::Authorizing(probe) => finish(env.shared, &probe.rec, &probe.req, 499, 0, None),
            State::Coalescing(wait) => finish(env.shared, &wait.rec, &wait.req, 499, 0, None),
            State::Tunnel(tunnel) => tunnel.record(env),
            State::ReadingHead | State::Lingering { .. } | State::Closing => {}
        }
    }

    /// Gives the session's read buffers back to the loop as it closes (a connection that closes after
    /// each answer would otherwise take one from the spares and free it, every time).
    pub fn return_buffers(&mut self, spare: &mut SpareBuffers) {
        self.client.cin.clear();
        spare.keep(&mut self.client.cin);
        if let State::Exchange(ex) = &mut self.state {
            ex.from_backend.clear();
            spare.keep(&mut ex.from_backend);
        }
    }

    /// A TLS connection that closes without having finished its handshake is counted by why: rustls
    /// refused it (not TLS, no common version...), its deadline passed, or the client went away.
    fn count_handshake(&self, env: &Env<'_>) {
        let Some(tls) = self.client.transport.tls() else { return };
        let reason = match tls.handshake() {
            Handshake::Done => return,
            Handshake::Failed => "refused",
            Handshake::Pending if self.expired => "timeout",
            Handshake::Pending => "closed",
        };
        match &tls.error {
            Some(e) => log::debug!("{}: TLS handshake failed: {e}", self.client.peer),
            None => log::debug!("{}: TLS handshake not completed ({reason})", self.client.peer),
        }
        env.shared.metrics.count_tls_handshake_failure(reason);
    }

    /// After a panic while serving: a 500 if nothing was answered yet, written as far as the socket
    /// takes it at once.
    pub fn answer_panic(&mut self, env: &Env<'_>) {
        if self.can_answer() {
            let client = &mut self.client;
            client.cout = Default::default();
            error_answer(&mut client.cout.data, 500, "internal error", false, false, b"", &client.answer_fields);
            let _ = client.flush(env.now);
        }
    }

    fn read_head(&mut self, env: &mut Env<'_>) -> Result<bool, ()> {
        let shared = env.shared;
        let config = &shared.config;
        if !self.client.cout.is_empty() {
            // The previous answer goes out before the next request is read (pipelining keeps order,
            // and a client that does not read stops being read).
            let wrote = self.client.flush(env.now).map_err(drop)?;
            if !self.client.cout.is_empty() {
                return Ok(wrote);
            }
            self.client.cout.release();
        }
        if !self.client.cin.is_empty() {
            match request::parse(self.client.cin.filled(), &shared.limits) {
                Ok(Some((req, head_len))) => {
                    self.client.cin.consume(head_len);
                    if !req.framing.has_body() {
                        // Nothing more to read until the answer is out: the buffer goes back to the
                        // loop, so a session waiting on its backend holds one buffer, not two (the
                        // spares are bounded, and a buffer freed there is allocated and zeroed again).
                        env.spare.keep(&mut self.client.cin);
                    }
                    self.start_request(req, env);
                    return Ok(true);
                }
                Ok(None) => {}
                Err(e) => {
                    log::info!("{}: {e}", self.client.peer);
                    let client = &mut self.client;
                    let fields = &client.answer_fields;
                    error_answer(&mut client.cout.data, e.status(), &e.to_string(), false, false, b"", fields);
                    self.linger_after_answer(env.now);
                    return Ok(true);
                }
            }
        }
        if shared.is_shutting_down() {
            return Err(());
        }
        env.spare.lend(&mut self.client.cin, config.buffer_size.min(config.max_header_bytes));
        match self.client.read(config.buffer_size, config.max_header_bytes, env.now) {
            Got::Bytes(_) => {
                self.head_started.get_or_insert(env.now);
                Ok(true)
            }
            Got::WouldBlock => {
                // An idle keep-alive connection holds no buffer: the read buffer goes back to the
                // loop for the next read, and the output buffer (emptied by the last write, which
                // keeps its allocation) is freed.
                env.spare.keep(&mut self.client.cin);
                self.client.cout.release();
                Ok(false)
            }
            Got::Eof | Got::Failed(_) => Err(()),
        }
    }

    fn linger_after_answer(&mut self, now: Instant) {
        self.state = State::Lingering { until: now + LINGER_TIME, shut: false };
    }

    /// Writes the last answer, half-closes (after `close_notify` over TLS), and discards input until
    /// the client closes.
    fn linger(&mut self, env: &mut Env<'_>) -> Result<bool, ()> {
        let wrote = self.client.flush(env.now).map_err(drop)?;
        if !self.client.output_done() {
            return Ok(wrote);
        }
        let State::Lingering { shut, .. } = &mut self.state else { return Err(()) };
        if !*shut {
            match self.client.transport.shutdown_write() {
                Ok(()) => *shut = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(wrote),
                Err(_) => return Err(()),
            }
        }
        let mut sink = [0u8; 4096];
        loop {
            match self.client.transport.read(&mut sink) {
                Ok(0) => return Err(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(_) => return Err(()),
            }
        }
    }

    fn exchange(&mut self, env: &mut Env<'_>) -> Result<bool, ()> {
        let State::Exchange(ex) = &mut self.state else { return Err(()) };
        let advance = ex.advance(&mut self.client, env);
        self.after_exchange(advance, env)
    }

    fn after_exchange(&mut self, advance: Advance, env: &mut Env<'_>) -> Result<bool, ()> {
        match advance {
            Advance::Progress => Ok(true),
            Advance::Waiting => Ok(false),
            Advance::Close => Err(()),
            Advance::Finished { keep } => {
                // Only a client that may still be sending (an unread body) needs the lingering close.
                let unread = match &mut self.state {
                    State::Exchange(ex) => {
                        ex.hand_owed_to_client(&mut self.client);
                        env.spare.keep(&mut ex.from_backend);
                        ex.input_pending()
                    }
                    _ => false,
                };
                if !keep && (unread || !self.client.cin.is_empty()) {
                    self.linger_after_answer(env.now);
                } else {
                    self.request_done(keep, env.now);
                }
                Ok(true)
            }
            Advance::Upgrade => {
                let State::Exchange(ex) = std::mem::replace(&mut self.state, State::ReadingHead) else {
                    return Err(());
                };
                let mut ex = *ex;
                let (Some(up), Some(res)) = (ex.upstream.take(), ex.res.take()) else { return Err(()) };
                let from_backend = std::mem::take(&mut ex.from_backend);
                let tunnel = Tunnel::open(up, ex.req, ex.rec, &res, from_backend, &mut self.client, env.now);
                self.state = State::Tunnel(Box::new(tunnel));
                Ok(true)
            }
        }
    }

    /// The answer is complete in the output buffer: read the next request, or write it and close.
    fn request_done(&mut self, keep: bool, now: Instant) {
        if keep {
            self.state = State::ReadingHead;
            self.head_started = None;
            self.idle_since = now;
            self.client.seen = now;
        } else {
            self.state = State::Closing;
        }
    }

    /// A request head has arrived: admit it, answer it from the cache, or start forwarding it.
    fn start_request(&mut self, req: Request, env: &mut Env<'_>) {
        let shared = env.shared;
        self.head_started = None;
        #[cfg(test)]
        if req.target() == crate::server::event_loop::env::PANIC_TARGET {
            panic!("test request asked for a panic");
        }
        // ACME challenges and `https_redirect` belong to the plain port alone.
        if !self.client.is_tls() {
            if let Some(reply) = plain_answer(&shared.plain_port, req.method(), req.target(), req.header("host")) {
                return self.answer_plain_port(env, &req, &reply);
            }
        }
        let gateway = shared.gateway();
        let client_ip = gateway.client_ip(self.client.peer.ip(), &req);
        let route = gateway.route(req.target()).cloned();
        let mut rec = Record {
            started: Instant::now(),
            peer: self.client.peer.ip(),
            route: route.as_ref().map(|r| r.config.name.clone()),
            app: None,
            rejection: None,
        };
        let dispatch = match admit::admit_before_auth_request(shared, &gateway, route.as_ref(), client_ip, &req) {
            Ok(dispatch) => owned(dispatch),
            Err(refusal) => return self.refuse(env, &req, &mut rec, refusal),
        };
        rec.app = dispatch.upstream.app().cloned();
        let asks = route.filter(|r| matches!(r.config.auth, RouteAuth::Request(_)) && r.auth.is_some());
        let Some(route) = asks else { return self.proceed(req, rec, dispatch, false, env) };
        let cached = route.auth.as_ref().and_then(|checker| checker.cached(&req, shared.clock.now()));
        if let Some(decision) = cached {
            return self.apply_decision(req, rec, dispatch, decision, env);
        }
        match AuthProbe::start(req, rec, route, dispatch, self.slot, env) {
            Ok(probe) => self.state = State::Authorizing(Box::new(probe)),
            Err((parts, decision)) => {
                let (req, rec, dispatch) = *parts;
                self.apply_decision(req, rec, dispatch, decision, env)
            }
        }
    }

    /// The auth server decided (or could not be asked): go on with the request, or refuse it.
    fn authorized(&mut self, decision: AuthDecision, env: &mut Env<'_>) {
        let State::Authorizing(probe) = std::mem::replace(&mut self.state, State::ReadingHead) else { return };
        let AuthProbe { req, rec, route, dispatch, .. } = *probe;
        if let Some(checker) = route.auth.as_ref() {
            checker.remember(&req, &decision, env.shared.clock.now());
        }
        self.apply_decision(req, rec, dispatch, decision, env)
    }

    fn apply_decision(
        &mut self,
        req: Request,
        mut rec: Record,
        mut dispatch: Dispatch<'static>,
        decision: AuthDecision,
        env: &mut Env<'_>,
    ) {
        match admit::auth_outcome(&req, decision) {
            Ok(user) => {
                dispatch.auth_user = user;
                self.proceed(req, rec, dispatch, false, env)
            }
            Err(refusal) => self.refuse(env, &req, &mut rec, refusal),
        }
    }

    /// Answers a request the gateway refused.
    fn refuse(&mut self, env: &Env<'_>, req: &Request, rec: &mut Record, refusal: Refusal) {
        let may_keep = req.keep_alive && !env.shared.is_shutting_down();
        rec.rejection = Rejection::of(&refusal);
        // A refused request's body was never read, so its connection cannot carry another.
        let keep = refusal != Refusal::Forbidden && may_keep && !req.framing.has_body();
        let error = ForwardError::Refused(refusal);
        log::info!("{} {} {}: {error}", self.client.peer, req.method(), req.target());
        let fields = error.answer_fields();
        self.answer_now(env, req, rec, error.status(), &error.to_string(), &fields, keep);
    }

    /// The fetch this request waited for finished (or took too long): look the cache up again.
    fn resume_after_flight(&mut self, env: &mut Env<'_>) {
        let State::Coalescing(wait) = std::mem::replace(&mut self.state, State::ReadingHead) else { return };
        let Coalescing { req, rec, dispatch, .. } = *wait;
        self.proceed(req, rec, dispatch, true, env);
    }

    /// An admitted request: answered from the cache, or forwarded. A miss of a GET waits for a
    /// fetch of the same URL already under way (once: `waited`), or leads one others wait for.
    fn proceed(&mut self, req: Request, rec: Record, dispatch: Dispatch<'static>, waited: bool, env: &mut Env<'_>) {
        let shared = env.shared;
        let may_keep = req.keep_alive && !shared.is_shutting_down();
        let mut leader = None;

        let mut cache_parts = None;
        let cached_here = dispatch.cache && matches!(req.method(), "GET" | "HEAD");
        if let Some(cache) = shared.cache.as_deref().filter(|_| cached_here) {
            match lookup(shared, cache, &req, &dispatch) {
                Lookup::Stored { entry, label } => {
                    let client = &mut self.client;
                    let (out, fields) = (&mut client.cout.data, &client.answer_fields);
                    let (status, bytes) = entry_answer(out, &entry, label, fields, &req, may_keep, shared.clock.now());
                    finish(shared, &rec, &req, status, bytes, Some(cache_step::CACHE_LABEL));
                    return self.request_done(may_keep, env.now);
                }
                Lookup::NotCached => {
                    let error = ForwardError::NotCached;
                    return self.answer_now(env, &req, &rec, error.status(), &error.to_string(), b"", may_keep);
                }
                Lookup::Forward(parts) => {
                    // Only a GET fills the cache for others waiting (a HEAD sent as GET does not lead).
                    let coalesce = parts.store
                        && req.method() == "GET"
                        && !waited
                        && !cache.is_uncacheable(&parts.key, shared.clock.now());
                    if let Some(cache) = shared.cache.as_ref().filter(|_| coalesce) {
                        match cache.join_flight_owned(&parts.key) {
                            Ok(guard) => leader = Some(guard),
                            Err(flight) => {
                                let inbox = Arc::clone(env.inbox);
                                let owner = Owner { slot: self.slot, generation: self.generation };
                                flight.on_done(Box::new(move || inbox.push(owner)));
                                let since = env.now;
                                self.state =
                                    State::Coalescing(Box::new(Coalescing { req, rec, dispatch, flight, since }));
                                return;
                            }
                        }
                    }
                    cache.stats.misses.fetch_add(1, Ordering::Relaxed);
                    cache_parts = Some(*parts);
                }
            }
        }

        let revalidating =
            cache_parts.as_ref().and_then(|p: &CacheParts| p.stale.as_deref()).filter(|e| e.has_validator());
        // A chunked GET or HEAD body is read whole first and goes with Content-Length: the head
        // is written without framing fields, and the exchange adds the length once it is known.
        let reframe = must_reframe_body(req.method(), req.framing);
        let fields = UpstreamFields {
            framing: if reframe { Framing::None } else { req.framing },
            allow_underscores: shared.config.underscores_in_headers,
            peer: self.client.peer,
            revalidating,
            drop_client_conditionals: cache_parts.as_ref().is_some_and(CacheParts::fills_for_client_conditional),
            head_as_get: cache_parts.as_ref().is_some_and(|p| p.head_as_get),
            https: self.client.is_tls(),
        };
        let mut head = Vec::with_capacity(512);
        build_upstream_head(&req, &dispatch, &fields, &mut head);
        let upgrade = is_upgrade(&req);
        if upgrade {
            // The hop-by-hop fields that ask for the switch go on to the backend, which decides.
            head.truncate(head.len() - 2);
            head.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
            head.extend_from_slice(req.header("upgrade").unwrap_or_default());
            head.extend_from_slice(b"\r\n\r\n");
        }
        let candidates: Vec<_> =
            dispatch.upstream.pool().candidates(shared.clock.now(), dispatch.client).cloned().collect();
        let max_body = shared.config.max_body_bytes;
        match Exchange::new(self.slot, req, rec, head, candidates, cache_parts, upgrade, env.now, max_body, reframe) {
            Ok(mut ex) => {
                ex.leader = leader;
                self.state = State::Exchange(Box::new(ex));
            }
            Err(_) => {
                // Request::parse refuses a declared length over the limit; nothing else fails here.
                self.linger_after_answer(env.now);
            }
        }
    }

    /// Answers a request pibl refuses itself, before any backend is involved.
    #[allow(clippy::too_many_arguments)]
    fn answer_now(
        &mut self,
        env: &Env<'_>,
        req: &Request,
        rec: &Record,
        status: u16,
        detail: &str,
        fields: &[u8],
        keep: bool,
    ) {
        let client = &mut self.client;
        let (out, own) = (&mut client.cout.data, &client.answer_fields);
        let bytes = error_answer(out, status, detail, keep, req.is_head(), fields, own);
        finish(env.shared, rec, req, status, bytes, None);
        self.answered_unread(req, keep, env.now);
    }

    /// The answer went out without the request's body being read: a connection that is not kept
    /// lingers, as the client may still be sending it.
    fn answered_unread(&mut self, req: &Request, keep: bool, now: Instant) {
        if !keep && req.framing.has_body() {
            self.linger_after_answer(now);
        } else {
            self.request_done(keep, now);
        }
    }

    /// The plain port's own answer (an ACME challenge, a redirect to https), recorded like any other.
    fn answer_plain_port(&mut self, env: &Env<'_>, req: &Request, reply: &PlainReply) {
        let keep = req.keep_alive && !req.framing.has_body() && !env.shared.is_shutting_down();
        self.client.cout.extend(&reply.to_bytes(keep, req.is_head()));
        let rec =
            Record { started: Instant::now(), peer: self.client.peer.ip(), route: None, app: None, rejection: None };
        let bytes = if req.is_head() { 0 } else { reply.body.len() as u64 };
        finish(env.shared, &rec, req, reply.status, bytes, None);
        self.answered_unread(req, keep, env.now);
    }
}

/// The dispatch decision with its own copy of the target, so the request can move on without it.
fn owned(dispatch: Dispatch<'_>) -> Dispatch<'static> {
    let Dispatch { upstream, target, client, auth_user, cache, compress } = dispatch;
    Dispatch { upstream, target: Cow::Owned(target.into_owned()), client, auth_user, cache, compress }
}

/// A request that asks to switch protocols (`Connection: upgrade` and an `Upgrade` field).
fn is_upgrade(req: &Request) -> bool {
    req.header("upgrade").is_some() && req.connection.named.iter().any(|n| n == "upgrade")
}

/// What the cache does with one GET or HEAD in a loop.
enum Lookup {
    Stored { entry: Arc<Entry>, label: &'static str },
    NotCached,
    Forward(Box<CacheParts>),
}

/// Looks the request up: a fresh stored response answers it (a stale one while a background
/// refresh runs, when `stale-while-revalidate` allows); otherwise it is forwarded, revalidating a
/// stale entry that has validators. Whether a miss waits for another request's fetch is the
/// caller's decision ([`Session::proceed`]).
fn lookup(shared: &Shared, cache: &Cache, req: &Request, dispatch: &Dispatch<'_>) -> Lookup {
    let directives = cache_step::request_directives(req);
    let mut parts = CacheParts {
        key: Cache::key(req.host(), req.target()),
        origin: dispatch.cache_origin(),
        store: req.method() == "GET" && !directives.cc.no_store,
        client_conditional: req.header("if-none-match").is_some() || req.header("if-modified-since").is_some(),
        head_as_get: false,
        hide_targeted: shared.config.strip_targeted_cache_control,
        compress_min: dispatch.compress.then_some(shared.config.compress_min_bytes),
        directives,
        stale: None,
        request_time: shared.clock.wall(),
    };
    if !parts.directives.cc.no_store {
        let values = |name: &str| cache_step::request_value(req, name);
        if let Some(entry) = cache.lookup(&parts.key, &parts.origin.route, &values) {
            let now = shared.clock.now();
            if !parts.directives.has_authorization || entry.freshness.shareable_with_auth {
                match entry.freshness.usability(entry.age(now), &parts.directives) {
                    Usability::Fresh => {
                        cache.stats.hits.fetch_add(1, Ordering::Relaxed);
                        return Lookup::Stored { entry, label: "HIT" };
                    }
                    Usability::StaleWhileRevalidate => {
                        if entry.claim_refresh() {
                            cache_step::schedule_refresh(shared, &parts.key, req, dispatch, &entry);
                        }
                        cache.stats.stale.fetch_add(1, Ordering::Relaxed);
                        return Lookup::Stored { entry, label: "STALE" };
                    }
                    Usability::Revalidate => parts.stale = Some(entry),
                }
            }
        }
        if parts.directives.cc.only_if_cached {
            return Lookup::NotCached;
        }
        // A HEAD nothing stored answers goes upstream as a GET, whose answer fills the cache.
        if req.is_head() && parts.stale.is_none() {
            parts.head_as_get = true;
            parts.store = true;
        }
    }
    // A miss that goes on is counted by the caller, once it is not waiting for another fetch.
    Lookup::Forward(Box::new(parts))
}
