//! Request metrics: what the request path counts (`counters`: histograms, counters, the dashboard's
//! recent-traffic ring) and the Prometheus text a scrape gets ([`render()`]). Metrics takes numbers
//! only: the figures read from a running server come from `server::shared` and `server::probe`.

mod counters;
mod render;

pub use counters::{
    quantile, BackendMetrics, Histogram, Metrics, Point, Rejection, RouteMetrics, Window, BUCKETS, DEFAULT_ROUTE,
    SLOTS, SLOT_SECS, TLS_FAILURE_REASONS,
};
pub use render::{render, BackendState, Scrape};

use std::time::{SystemTime, UNIX_EPOCH};

/// The route label of a request: its app, else its `[route.NAME]`, else the default pool.
pub fn route_label<'a>(app: Option<&'a str>, route: Option<&'a str>) -> &'a str {
    app.or(route).unwrap_or(DEFAULT_ROUTE)
}

/// Seconds since the Unix epoch of `time`.
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
