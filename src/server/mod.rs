//! The data-plane server: `threads` event loops ([`event_loop`]), each owning its client and backend
//! sockets (plain and TLS listeners, `https://` backends), the cache's refresher thread, reloads, and
//! graceful shutdown.

pub mod conn;
pub mod event_loop;
pub mod probe;
pub mod shared;
pub mod wake;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use arc_swap::ArcSwap;
use parking_lot::RwLock;
use rustls::{ClientConfig, ServerConfig};

use crate::cache::{Cache, Limits as CacheLimits};
use crate::clock::Clock;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::http::request::Limits;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Metrics;
use crate::proxy::refresh;
use crate::server::conn::{ConnLimit, PerIpLimit};
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
    /// The listener on `tls_port` and the rustls configuration of its handshakes.
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
    refresher: Option<JoinHandle<()>>,
    loops: event_loop::Loops,
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
            shutdown: AtomicBool::new(false),
            conns: Arc::new(ConnLimit::default()),
            per_ip: Arc::new(PerIpLimit::default()),
            plain_port: PlainPort::from_config(&config, tls.challenges),
            tls_answer_fields: ArcSwap::from_pointee(tls_answer_fields(config.hsts)),
            backend_tls,
            idle_sessions: Default::default(),
            loop_loads: Default::default(),
            config,
        });
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
        let tls = tls.listener.map(|(listener, config)| event_loop::TlsListener { listener, config });
        let loops = event_loop::Loops::start(listener, tls, &shared)?;
        Ok(Server { shared, local_addr, tls_addr, refresher, loops })
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

    /// How many client connections each event loop serves.
    pub fn loop_loads(&self) -> Vec<usize> {
        self.shared.loop_connections()
    }

    /// A handle for metrics and status pages.
    pub fn probe(&self) -> Probe {
        Probe::new(&self.shared)
    }

    /// Stops accepting, closes idle connections, lets in-flight requests finish for up to
    /// `shutdown_grace`, and returns whether every loop finished in time.
    pub fn shutdown(mut self) -> bool {
        let deadline = Instant::now() + self.shared.config.shutdown_grace;
        self.shared.shutdown.store(true, Ordering::Release);
        self.loops.wake_all();
        if let Some(handle) = self.refresher.take() {
            let _ = handle.join();
        }
        let clean = self.loops.finish(deadline);
        // Lines of requests still running past the grace period are dropped; the rest reach the file.
        self.shared.access_log.close();
        clean
    }
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
