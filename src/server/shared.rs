//! The state every thread of one data-plane server shares: configuration, the swappable gateway
//! snapshot, the cache and its refresh queue, logs and metrics, and the connection accounting the
//! event loops keep. Built by [`crate::server::Server`]; read by the request
//! pipeline (`proxy`) and, through a [`crate::server::probe::Probe`], by the status pages.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use crossbeam_channel::Sender;
use parking_lot::RwLock;

use crate::cache::Cache;
use crate::clock::Clock;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::http::request::Limits;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::{BackendState, Metrics, DEFAULT_ROUTE};
use crate::proxy::dispatch::RefreshJob;
use crate::server::conn::{ConnLimit, PerIpLimit};
use crate::server::event_loop::spread::LoadBoard;
use crate::store::credentials::Tokens;
use crate::tls::plain::PlainPort;
use crate::upstream::apps::Router;
use crate::upstream::backend::Backend;

/// State every thread of one server shares.
pub struct Shared {
    pub config: Config,
    /// Routes, pools and access rules; replaced whole by [`crate::server::Server::reload`].
    pub(super) gateway: RwLock<Arc<Gateway>>,
    /// Apps registered through the management API (empty when none is running).
    pub router: Arc<Router>,
    /// Verifies pibl's own tokens on `auth = jwt` routes (`None` without the management API).
    pub tokens: Option<Arc<Tokens>>,
    pub limits: Limits,
    /// The response cache; `None` when `ttl` is zero.
    pub cache: Option<Arc<Cache>>,
    pub clock: Clock,
    /// Background refreshes of stale cache entries.
    pub refresh_tx: Option<Sender<RefreshJob>>,
    pub access_log: AccessLog,
    /// Counters and histograms for `/metrics` and the dashboard.
    pub metrics: Metrics,
    pub(super) shutdown: AtomicBool,
    pub(super) conns: Arc<ConnLimit>,
    pub(super) per_ip: Arc<PerIpLimit>,
    /// What the plain port answers by itself for HTTPS: ACME challenges and `https_redirect`.
    pub plain_port: PlainPort,
    /// The header field lines every answer over TLS carries (`hsts`); swapped by a reload.
    pub tls_answer_fields: ArcSwap<Vec<u8>>,
    /// The rustls configuration for `https://` backends, when any is configured.
    pub backend_tls: Option<Arc<rustls::ClientConfig>>,
    /// Client connections waiting, idle, for their next request.
    pub(super) idle_sessions: AtomicUsize,
    /// Each event loop's connections, once the loops run.
    pub(super) loop_loads: OnceLock<Arc<LoadBoard>>,
}

/// Live figures about a server, for tests and status pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub open_connections: usize,
    pub parked_connections: usize,
}

impl Shared {
    /// The current routes and pools; the lock is held only to clone the `Arc`.
    pub fn gateway(&self) -> Arc<Gateway> {
        Arc::clone(&self.gateway.read())
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> Stats {
        Stats { open_connections: self.conns.open(), parked_connections: self.idle_sessions.load(Ordering::Relaxed) }
    }

    /// How many client connections each event loop serves (empty until the loops start).
    pub fn loop_connections(&self) -> Vec<usize> {
        self.loop_loads.get().map(|board| board.loads()).unwrap_or_default()
    }

    /// Every backend the server can send to: the default pool, each route's, each app's (by name),
    /// as status pages show them at `now` (read from [`Shared::clock`]).
    pub fn backend_states(&self, now: Instant) -> Vec<BackendState> {
        let gateway = self.gateway();
        let routes = self.router.snapshot();
        let mut pools: Vec<(&str, &[Arc<Backend>])> = vec![(DEFAULT_ROUTE, gateway.default_pool.backends())];
        pools.extend(gateway.routes().iter().map(|r| (r.config.name.as_str(), r.pool.backends())));
        let mut apps: Vec<_> = routes.apps().collect();
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        pools.extend(apps.iter().map(|a| (a.name.as_str(), a.pool.backends())));
        pools
            .into_iter()
            .flat_map(|(pool, backends)| {
                backends.iter().map(move |b| BackendState {
                    pool: pool.to_string(),
                    backend: b.name.clone(),
                    up: b.is_usable(now),
                    last_check_ms: b.last_check_ms(),
                    in_flight: b.in_flight.load(Ordering::Relaxed),
                })
            })
            .collect()
    }
}
