//! Request metrics: what the request path counts (`counters`: histograms, counters, the dashboard's
//! recent-traffic ring), the Prometheus text a scrape gets ([`render()`]), and the figures read from
//! the running server and the management API ([`backend_states`], [`ApiObserver`]).

mod counters;
mod render;

pub use counters::{
    quantile, BackendMetrics, Histogram, Metrics, Point, Rejection, RouteMetrics, Window, BUCKETS, DEFAULT_ROUTE,
    SLOTS, SLOT_SECS,
};
pub use render::{render, BackendState, Scrape};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::server::{Probe, Shared};

/// The route label of a request: its app, else its `[route.NAME]`, else the default pool.
pub fn route_label<'a>(app: Option<&'a str>, route: Option<&'a str>) -> &'a str {
    app.or(route).unwrap_or(DEFAULT_ROUTE)
}

/// Seconds since the Unix epoch of `time`.
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Every backend the server can send to: the default pool, each route's, each app's.
pub fn backend_states(shared: &Shared, now: Instant) -> Vec<BackendState> {
    let gateway = shared.gateway();
    let routes = shared.router.snapshot();
    let mut pools: Vec<(&str, &[Arc<crate::upstream::backend::Backend>])> =
        vec![(DEFAULT_ROUTE, gateway.default_pool.backends())];
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

/// What the management API adds to the data plane's figures.
#[derive(Default)]
pub struct ApiObserver {
    probe: OnceLock<Probe>,
    /// 401 answers of the API: wrong passwords and missing, expired or invalid tokens.
    pub auth_failures: AtomicU64,
    /// `metrics_bind` is set: the API port answers `/metrics` with 404.
    pub metrics_elsewhere: std::sync::atomic::AtomicBool,
}

impl ApiObserver {
    /// Connects the API to the data plane it reports on (once, at start-up).
    pub fn attach(&self, probe: Probe) {
        let _ = self.probe.set(probe);
    }

    pub fn probe(&self) -> Option<&Probe> {
        self.probe.get()
    }
}
