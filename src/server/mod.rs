//! The data-plane server, in one of two engines chosen by `engine`. `threads`: one acceptor
//! thread, a fixed pool of worker threads fed by a bounded crossbeam queue, and the parker thread
//! that holds connections waiting for bytes. `loops`: `threads` event loops ([`event_loop`]), each
//! owning its client and backend sockets, and the only one with HTTPS (a TLS listener on `tls_port`,
//! `https://` backends). Also owns graceful shutdown, for both.
//!
//! ```text
//! acceptor ──► ready queue ──► N workers ──► backends
//!    ▲              ▲              │
//!    │              └── parker ◄───┘   (idle keep-alive, or head still arriving)
//! ```

pub mod conn;
pub mod event_loop;
pub mod parker;
pub mod probe;
pub mod shared;
pub mod wake;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::RwLock;
use rustls::{ClientConfig, ServerConfig};

use crate::cache::{Cache, Limits as CacheLimits};
use crate::clock::Clock;
use crate::config::{Config, Engine};
use crate::gateway::Gateway;
use crate::http::request::{self, Limits};
use crate::observe::access_log::AccessLog;
use crate::observe::logging::Throttled;
use crate::observe::metrics::Metrics;
use crate::proxy;
use crate::proxy::context::{Outcome, Scratch};
use crate::proxy::error::write_error;
use crate::proxy::refresh;
use crate::server::conn::{Conn, ConnLimit, PerIpLimit};
use crate::server::parker::Parker;
use crate::server::probe::Probe;
use crate::server::shared::{Shared, Stats};
use crate::store::credentials::Tokens;
use crate::tls::challenge::Challenges;
use crate::tls::client::{backend_client_config, BackendTrust};
use crate::tls::plain::{tls_answer_fields, PlainPort};
use crate::upstream::apps::Router;
use crate::upstream::backend::Backend;

/// The HTTPS parts the data plane serves with, built by the runtime from
/// [`crate::tls::https::Https`] (the default: none, and challenges nobody publishes).
#[derive(Default)]
pub struct TlsPlane {
    /// The listener on `tls_port` and the rustls configuration of its handshakes (engine = loops).
    pub listener: Option<(TcpListener, Arc<ServerConfig>)>,
    /// How `https://` backends are spoken to.
    pub backend: Option<Arc<ClientConfig>>,
    /// The HTTP-01 answers the plain port gives, published by the ACME client.
    pub challenges: Arc<Challenges>,
}

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// Where the TLS listener listens, when there is one.
    tls_addr: Option<SocketAddr>,
    acceptor: Option<JoinHandle<()>>,
    parker: Option<JoinHandle<()>>,
    refresher: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    worker_done: Receiver<()>,
    /// The event loops, with `engine = loops` (then there is no acceptor, parker or worker).
    loops: Option<event_loop::Loops>,
}

impl Server {
    /// Binds `config.bind:config.port` and starts serving.
    pub fn start(config: Config) -> io::Result<Server> {
        let addr = SocketAddr::new(config.bind, config.port);
        let listener = TcpListener::bind(addr)?;
        Server::start_on(listener, config)
    }

    /// Starts serving on a listener that is already bound (tests bind `127.0.0.1:0`).
    pub fn start_on(listener: TcpListener, config: Config) -> io::Result<Server> {
        let clock = Clock::system();
        let router = Arc::new(Router::new(config.backend_pool_size, clock.clone()));
        Server::start_with_router(listener, config, router, None, clock, TlsPlane::default())
    }

    /// The counters `/metrics` shows.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The HTTP-01 answers this server's plain port gives; an ACME client publishes into it.
    pub fn challenges(&self) -> Arc<Challenges> {
        Arc::clone(&self.shared.plain_port.challenges)
    }

    /// Like [`Server::start_on`], routing `/<appid>/...` by `router`, which the management API updates.
    /// `tls` is what it serves HTTPS with.
    pub fn start_with_router(
        listener: TcpListener,
        config: Config,
        router: Arc<Router>,
        tokens: Option<Arc<Tokens>>,
        clock: Clock,
        tls: TlsPlane,
    ) -> io::Result<Server> {
        refuse_tls_on_threads(&config, &tls)?;
        // A server started without the runtime's HTTPS parts (a library user, a test) still gets the
        // backend TLS settings of its configuration.
        let backend_tls = match tls.backend {
            Some(backend) => Some(backend),
            None if config.tls_upstreams().next().is_some() => {
                let trust = BackendTrust::from_keys(&config.backend_ca, config.backend_tls_verify);
                Some(
                    backend_client_config(trust)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?,
                )
            }
            None => None,
        };
        let local_addr = listener.local_addr()?;
        let tls_addr = match &tls.listener {
            Some((listener, _)) => Some(listener.local_addr()?),
            None => None,
        };
        let limits = Limits {
            max_head_bytes: config.max_header_bytes,
            max_headers: config.max_headers,
            max_body_bytes: config.max_body_bytes,
        };
        let cache = (!config.ttl.is_zero()).then(|| {
            Arc::new(Cache::new(CacheLimits {
                max_bytes: config.cache_max_bytes,
                max_object_bytes: config.cache_max_object_bytes,
            }))
        });
        // Refreshes wait in a short queue; when it is full the entry is simply refreshed later.
        let (refresh_tx, refresh_rx) = crossbeam_channel::bounded(64);
        // Every open connection is in at most one place, so a queue of max_conn never blocks the
        // parker; the acceptor waits for a free slot before it accepts.
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Conn>(config.max_conn + 1);
        let shared = Arc::new(Shared {
            gateway: RwLock::new(Arc::new(Gateway::new(&config))),
            router,
            tokens,
            limits,
            refresh_tx: cache.is_some().then_some(refresh_tx),
            cache,
            clock,
            access_log: AccessLog::start(&config).map_err(io::Error::other)?,
            metrics: Metrics::default(),
            ready: ready_rx.clone(),
            shutdown: AtomicBool::new(false),
            conns: Arc::new(ConnLimit::default()),
            per_ip: Arc::new(PerIpLimit::default()),
            parker: Parker::new()?,
            plain_port: PlainPort::from_config(&config, tls.challenges),
            tls_answer_fields: ArcSwap::from_pointee(tls_answer_fields(config.hsts)),
            backend_tls,
            loop_parked: Default::default(),
            loop_loads: Default::default(),
            config,
        });
        let (done_tx, worker_done) = crossbeam_channel::unbounded();
        shared.metrics.prepare(&shared.config);
        let refresher = match shared.cache.is_some() {
            true => {
                let shared = Arc::clone(&shared);
                Some(thread::Builder::new().name("pibl-cache".into()).spawn(move || {
                    if let Some(cache) = &shared.cache {
                        refresh::run_refresher(&shared, cache, &refresh_rx);
                    }
                })?)
            }
            false => None,
        };
        if shared.config.engine == Engine::Loops {
            let tls = tls.listener.map(|(listener, config)| event_loop::TlsListener { listener, config });
            let loops = event_loop::Loops::start(listener, tls, &shared)?;
            return Ok(Server {
                shared,
                local_addr,
                tls_addr,
                acceptor: None,
                parker: None,
                refresher,
                workers: Vec::new(),
                worker_done,
                loops: Some(loops),
            });
        }

        let mut workers = Vec::with_capacity(shared.config.thread_count());
        for i in 0..shared.config.thread_count() {
            let (shared, rx, done) = (Arc::clone(&shared), ready_rx.clone(), done_tx.clone());
            workers.push(thread::Builder::new().name(format!("pibl-worker-{i}")).spawn(move || {
                worker_loop(&shared, &rx);
                let _ = done.send(());
            })?);
        }
        let parker = {
            let (shared, tx) = (Arc::clone(&shared), ready_tx.clone());
            let tick = parker_tick(&shared.config);
            thread::Builder::new()
                .name("pibl-parker".into())
                .spawn(move || shared.parker.run(&tx, &shared.shutdown, tick))?
        };
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("pibl-acceptor".into())
                .spawn(move || accept_loop(&listener, &shared, &ready_tx))?
        };
        Ok(Server {
            shared,
            local_addr,
            tls_addr,
            acceptor: Some(acceptor),
            parker: Some(parker),
            refresher,
            workers,
            worker_done,
            loops: None,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How `https://` backends are spoken to, when any is configured (the health checker uses it too).
    pub fn backend_tls(&self) -> Option<Arc<ClientConfig>> {
        self.shared.backend_tls.clone()
    }

    /// Where the TLS listener listens (`tls_port`), when it serves HTTPS.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The clock the server reads; tests advance it to age cached responses.
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// The response cache, unless `ttl` is zero.
    pub fn cache(&self) -> Option<&Cache> {
        self.shared.cache.as_deref()
    }

    /// A shared handle on the response cache, for the management API's purge.
    pub fn cache_handle(&self) -> Option<Arc<Cache>> {
        self.shared.cache.clone()
    }

    /// The access log, for the binary to hook SIGUSR1 to it.
    pub fn access_log(&self) -> &AccessLog {
        &self.shared.access_log
    }

    /// Swaps in the routes, pools, access lists and rate limits of `config`. Requests in flight
    /// finish on the old ones; every other setting keeps the value read at start-up, and each
    /// changed one is named in a warning ([`restart_only_changes`]).
    pub fn reload(&self, config: &Config) {
        let pending = restart_only_changes(&self.shared.config, config);
        if !pending.is_empty() {
            log::warn!(
                "reload: {} changed in the file; a restart applies {}",
                pending.join(", "),
                if pending.len() == 1 { "it" } else { "them" }
            );
        }
        if let Err(e) = refuse_tls_on_threads(config, &TlsPlane::default()) {
            log::error!("reload refused, the running configuration stays: {e}");
            return;
        }
        if self.shared.backend_tls.is_none() {
            if let Some((key, _)) = config.tls_upstreams().next() {
                log::warn!("reload: {key} is https:// but pibl started without TLS backends; restart to reach it");
            }
        }
        *self.shared.gateway.write() = Arc::new(Gateway::new(config));
        // HTTPS behaviour, on the listener that runs (`tls_port` itself needs a restart).
        self.shared.plain_port.set_redirect(config.https_redirect, self.shared.config.tls_port);
        self.shared.tls_answer_fields.store(Arc::new(tls_answer_fields(config.hsts)));
        self.shared.metrics.prepare(config);
        log::info!("reload: {} route(s), {} default backend(s)", config.routes.len(), config.backends.len());
    }

    /// What the health checker probes, read afresh each round so a reload's pools are checked: the
    /// `ip_serverN` backends on `default_path` (when set), and each route's servers on its
    /// `health_path`.
    pub fn health_targets(
        &self,
        default_path: Option<String>,
    ) -> impl Fn() -> Vec<(Arc<Backend>, String)> + Send + Sync {
        let shared = Arc::clone(&self.shared);
        move || {
            let gateway = shared.gateway();
            let mut targets = Vec::new();
            if let Some(path) = &default_path {
                targets.extend(gateway.default_pool.backends().iter().map(|b| (Arc::clone(b), path.clone())));
            }
            for route in gateway.routes() {
                if let Some(path) = &route.config.health_path {
                    targets.extend(route.pool.backends().iter().map(|b| (Arc::clone(b), path.clone())));
                }
            }
            targets
        }
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// How many client connections each event loop serves (empty with `engine = threads`).
    pub fn loop_loads(&self) -> Vec<usize> {
        self.shared.loop_connections()
    }

    /// A handle for metrics and status pages.
    pub fn probe(&self) -> Probe {
        Probe::new(&self.shared)
    }

    /// Stops accepting, closes idle connections, lets in-flight requests finish for up to
    /// `shutdown_grace`, and returns whether every worker finished in time.
    pub fn shutdown(mut self) -> bool {
        let deadline = Instant::now() + self.shared.config.shutdown_grace;
        self.shared.shutdown.store(true, Ordering::Release);
        if let Some(loops) = self.loops.take() {
            loops.wake_all();
            if let Some(handle) = self.refresher.take() {
                let _ = handle.join();
            }
            let clean = loops.finish(deadline);
            self.shared.access_log.close();
            return clean;
        }
        self.shared.parker.wake();
        wake::wake_acceptor(self.local_addr);
        for handle in [self.acceptor.take(), self.parker.take(), self.refresher.take()].into_iter().flatten() {
            let _ = handle.join();
        }
        let mut finished = 0;
        while finished < self.workers.len() {
            match self.worker_done.recv_deadline(deadline) {
                Ok(()) => finished += 1,
                Err(_) => break,
            }
        }
        let clean = finished == self.workers.len();
        // Lines of requests still running past the grace period are dropped; the rest reach the file.
        self.shared.access_log.close();
        if clean {
            for handle in self.workers.drain(..) {
                let _ = handle.join();
            }
        } else {
            log::warn!("shutdown: {} request(s) still running after the grace period", self.workers.len() - finished);
        }
        clean
    }
}

/// How often the parker checks deadlines: a quarter of the shortest timeout, within 10-250 ms.
fn parker_tick(config: &Config) -> Duration {
    (config.header_timeout.min(config.keepalive_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_millis(250))
}

fn accept_loop(listener: &TcpListener, shared: &Shared, ready: &Sender<Conn>) {
    let config = &shared.config;
    let mut failures = Throttled::new(event_loop::ACCEPT_FAILURE_LOG_EVERY);
    while !shared.is_shutting_down() {
        if !shared.conns.wait_below(config.max_conn, Duration::from_millis(100)) {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(pair) => pair,
            Err(e) => {
                if !shared.is_shutting_down() {
                    // Out of descriptors or a transient network error: back off instead of spinning.
                    failures.warn(Instant::now(), format_args!("accept failed: {e}"));
                    thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
        };
        if shared.is_shutting_down() {
            break;
        }
        let setup = stream
            .set_nodelay(true)
            .and_then(|_| stream.set_read_timeout(Some(config.client_timeout)))
            .and_then(|_| stream.set_write_timeout(Some(config.client_timeout)));
        if let Err(e) = setup {
            log::debug!("dropping connection from {peer}: {e}");
            continue;
        }
        let ip_slot = match config.max_conn_per_ip {
            0 => None,
            max => match shared.per_ip.acquire(peer.ip(), max) {
                Some(slot) => Some(slot),
                None => {
                    log::debug!("refusing {peer}: max_conn_per_ip ({max}) reached");
                    let mut stream = stream;
                    let _ = std::io::Write::write_all(
                        &mut stream,
                        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                    );
                    continue;
                }
            },
        };
        let conn = Conn::new(stream, peer, shared.conns.acquire(), ip_slot, Instant::now());
        if ready.send(conn).is_err() {
            break;
        }
    }
}

fn worker_loop(shared: &Shared, ready: &Receiver<Conn>) {
    let mut scratch = Scratch::default();
    for conn in ready.iter() {
        let peer = conn.peer;
        // A bug triggered by one peer must not take the worker down with it.
        let served = panic::catch_unwind(AssertUnwindSafe(|| serve(shared, &mut scratch, conn)));
        if served.is_err() {
            log::error!("internal error while serving {peer}; connection closed");
            scratch = Scratch::default();
        }
    }
}

/// Serves requests on `conn` until it must wait for bytes (then it is parked) or is closed.
fn serve(shared: &Shared, scratch: &mut Scratch, mut conn: Conn) {
    let config = &shared.config;
    loop {
        if !conn.buf.is_empty() {
            match request::parse(conn.buf.filled(), &shared.limits) {
                Ok(Some((req, head_len))) => {
                    conn.buf.consume(head_len);
                    if conn.set_nonblocking(false).is_err() {
                        return;
                    }
                    let outcome = proxy::handle(shared, scratch, &mut conn, req);
                    conn.served += 1;
                    conn.head_started = None;
                    conn.idle_since = Instant::now();
                    if outcome == Outcome::Close || shared.is_shutting_down() {
                        return;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    log::info!("{}: {e}", conn.peer);
                    if conn.set_nonblocking(false).is_ok() {
                        let _ = write_error(&mut conn.stream, e.status(), &e.to_string(), false, false);
                    }
                    return;
                }
            }
        }
        if shared.is_shutting_down() && conn.buf.is_empty() {
            return;
        }
        if conn.set_nonblocking(true).is_err() {
            return;
        }
        match conn.buf.fill_from(&mut conn.stream, config.buffer_size, config.max_header_bytes) {
            Ok(0) => return,
            Ok(_) => {
                conn.head_started.get_or_insert_with(Instant::now);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let now = Instant::now();
                let deadline = conn.deadline(config.header_timeout, config.keepalive_timeout);
                if now >= deadline {
                    if !conn.buf.is_empty() && conn.set_nonblocking(false).is_ok() {
                        let _ = write_error(&mut conn.stream, 408, "request head not complete in time", false, false);
                    }
                    return;
                }
                if shared.is_shutting_down() {
                    return;
                }
                shared.parker.park(conn, deadline);
                return;
            }
            Err(_) => return,
        }
    }
}

/// The threaded engine has no TLS: a TLS listener or an `https://` backend given to it is refused
/// at start-up (a configuration file with either selects the loops, see `config`) rather than
/// served wrong, e.g. spoken to in plain text.
fn refuse_tls_on_threads(config: &Config, tls: &TlsPlane) -> io::Result<()> {
    if config.engine != Engine::Threads {
        return Ok(());
    }
    if tls.listener.is_some() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "tls_port = {}: HTTPS is served by the event-loop engine only; set engine = loops",
                config.tls_port
            ),
        ));
    }
    if let Some((key, backend)) = config.tls_upstreams().next() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{key} = {}: TLS to backends is spoken by the event-loop engine only; set engine = loops",
                backend.written()
            ),
        ));
    }
    if config.tls_port != 0 {
        log::warn!(
            "tls_port = {}: engine = threads has no HTTPS listener; only ACME challenges and https_redirect \
             are served, on port {}",
            config.tls_port,
            config.port
        );
    }
    Ok(())
}

/// The `[DEFAULT]` keys a SIGHUP applies: the gateway's (pools and their size, access lists, rate
/// limits), the redirect to https and HSTS, and the certificate files (reloaded by `tls::https`).
/// `ip_serverN`, `[route.NAME]` and `[tls.NAME]` sections are applied too; they are not keys of
/// the table.
const RELOADED_KEYS: [&str; 11] = [
    "backend_pool_size",
    "rate_limit",
    "rate_burst",
    "deny",
    "allow",
    "trusted_proxies",
    "https_redirect",
    "hsts",
    "tls_cert",
    "tls_key",
    "tls_dir",
];

/// The keys changed between `running` and `file` that only a restart applies (the listeners,
/// threads, timeouts, limits, cache, logging, API, HTTPS behaviour...), in file order.
pub fn restart_only_changes(running: &Config, file: &Config) -> Vec<&'static str> {
    running.changed_keys(file).into_iter().filter(|key| !RELOADED_KEYS.contains(key)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_names_every_changed_key_it_does_not_apply() {
        let running = Config::default();
        let mut file = running.clone();
        assert!(restart_only_changes(&running, &file).is_empty());
        for (key, value) in [
            ("hsts", "8760h"),
            ("tls_port", "8443"),
            ("keepalive_timeout", "9s"),
            ("deny", "10.0.0.0/8"),
            ("rate_limit", "5/s"),
        ] {
            file.set_key(key, value).expect(key);
        }
        assert_eq!(restart_only_changes(&running, &file), ["keepalive_timeout", "tls_port"]);
        for key in RELOADED_KEYS {
            assert!(running.key_text(key).is_some(), "{key} is a key of the table");
        }
    }
}
