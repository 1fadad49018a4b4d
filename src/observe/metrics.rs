//! Request metrics: fixed-bucket histograms and counters of atomics that the request path bumps without a lock or an allocation, a 5-minute ring of 10-second slots for the dashboard, and [`render`], which writes everything in the Prometheus text format.
//!
//! Per-label counters live in maps keyed by route/app name and backend name. The maps are only
//! read on the request path (a `parking_lot` read lock and a hash of a short name); an entry is
//! created once, at start-up and reload for the configured routes, or the first time a new app or
//! backend is seen. Label values are therefore bounded by configuration and API changes, never by
//! what clients send.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;

use crate::cache;
use crate::config::Config;
use crate::gateway::Refusal;

/// Upper bounds of the histogram buckets, in microseconds (1 ms to 10 s); slower goes to `+Inf`.
const BOUNDS_US: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
/// The same bounds as Prometheus `le` labels.
const BOUNDS_LE: [&str; 13] =
    ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10"];
pub const BUCKETS: usize = BOUNDS_US.len() + 1;

/// Seconds covered by one slot of the recent-traffic ring.
pub const SLOT_SECS: u64 = 10;
/// Slots in the ring: 5 minutes of history.
pub const SLOTS: usize = 30;

/// The label of requests that no route or app claimed (the `ip_serverN` pool).
pub const DEFAULT_ROUTE: &str = "default";

/// A histogram with fixed buckets; each bucket counts only its own range (rendering accumulates).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let slot = BOUNDS_US.iter().position(|&bound| us <= bound).unwrap_or(BOUNDS_US.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative) and the sum in microseconds.
    pub fn read(&self) -> ([u64; BUCKETS], u64) {
        (std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)), self.sum_us.load(Ordering::Relaxed))
    }

    fn reset(&self) {
        for bucket in &self.buckets {
            bucket.store(0, Ordering::Relaxed);
        }
        self.sum_us.store(0, Ordering::Relaxed);
    }
}

/// The `q` quantile (0..1) of per-bucket counts, as the upper bound of its bucket in seconds; the
/// slowest bound stands for `+Inf`. `None` without observations.
pub fn quantile(counts: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, &n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(BOUNDS_US[i.min(BOUNDS_US.len() - 1)] as f64 / 1e6);
        }
    }
    Some(BOUNDS_US[BOUNDS_US.len() - 1] as f64 / 1e6)
}

/// One 10-second slot of the ring: which slot of time it holds, and its latency histogram (whose
/// total is the request count).
#[derive(Debug, Default)]
struct Slot {
    /// Slot number (`unix secs / SLOT_SECS`) plus one; 0 = never used.
    epoch: AtomicU64,
    latency: Histogram,
}

/// Recent traffic: a fixed ring of slots rotated by the time passed in, so tests need not sleep.
/// A slot is reset by the first request of its new period; a request racing that reset may be
/// lost, which a dashboard can live with.
#[derive(Debug)]
pub struct Window {
    slots: [Slot; SLOTS],
}

impl Default for Window {
    fn default() -> Self {
        Window { slots: std::array::from_fn(|_| Slot::default()) }
    }
}

/// One slot of [`Window::series`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// Start of the slot, in seconds since the Unix epoch.
    pub start_secs: u64,
    pub counts: [u64; BUCKETS],
}

impl Point {
    pub fn requests(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl Window {
    pub fn record(&self, elapsed: Duration, now_secs: u64) {
        let epoch = now_secs / SLOT_SECS + 1;
        let slot = &self.slots[(epoch as usize) % SLOTS];
        let seen = slot.epoch.load(Ordering::Relaxed);
        if seen != epoch && slot.epoch.compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            slot.latency.reset();
        }
        slot.latency.observe(elapsed);
    }

    /// The last [`SLOTS`] slots up to `now_secs`, oldest first; slots without traffic are zero.
    pub fn series(&self, now_secs: u64) -> Vec<Point> {
        let current = now_secs / SLOT_SECS + 1;
        (0..SLOTS as u64)
            .rev()
            .filter_map(|back| current.checked_sub(back).filter(|&e| e > 0))
            .map(|epoch| {
                let slot = &self.slots[(epoch as usize) % SLOTS];
                let counts = match slot.epoch.load(Ordering::Relaxed) == epoch {
                    true => slot.latency.read().0,
                    false => [0; BUCKETS],
                };
                Point { start_secs: (epoch - 1) * SLOT_SECS, counts }
            })
            .collect()
    }
}

/// Why the gateway turned a request away, for the rejection counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    RateLimited,
    Denied,
    AuthFailed,
}

impl Rejection {
    pub fn of(refusal: &Refusal) -> Option<Rejection> {
        match refusal {
            Refusal::RateLimited(_) => Some(Rejection::RateLimited),
            Refusal::Forbidden => Some(Rejection::Denied),
            Refusal::Unauthorized { .. } => Some(Rejection::AuthFailed),
            Refusal::AuthBroken { .. } | Refusal::Hidden => None,
        }
    }
}

/// Counters of one route, app, or the default pool.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// By status class: 1xx..5xx.
    codes: [AtomicU64; 5],
    duration: Histogram,
    pub rate_limited: AtomicU64,
    pub denied: AtomicU64,
    pub auth_failed: AtomicU64,
    pub window: Window,
}

impl RouteMetrics {
    pub fn requests(&self, class: usize) -> u64 {
        self.codes.get(class).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Everything the data plane counts; one per server.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: RwLock<HashMap<String, Arc<RouteMetrics>>>,
    upstream: RwLock<HashMap<String, Arc<BackendMetrics>>>,
}

/// Timings of one backend (by name, so they outlive reloads that rebuild the pools).
#[derive(Debug, Default)]
pub struct BackendMetrics {
    connect: Histogram,
    response: Histogram,
}

/// Runs `f` on the entry for `key`, creating it the first time (the only allocation).
fn with_entry<T: Default>(map: &RwLock<HashMap<String, Arc<T>>>, key: &str, f: impl FnOnce(&T)) {
    if let Some(entry) = map.read().get(key) {
        return f(entry);
    }
    let entry = Arc::clone(map.write().entry(key.to_string()).or_default());
    f(&entry)
}

impl Metrics {
    /// Creates the entries of the configured routes and the default pool, so they are scraped as
    /// zeros before their first request. Called at start-up and on reload.
    pub fn prepare(&self, config: &Config) {
        let mut routes = self.routes.write();
        for name in config.routes.iter().map(|r| r.name.as_str()).chain([DEFAULT_ROUTE]) {
            routes.entry(name.to_string()).or_default();
        }
    }

    /// Counts one finished request of `route`.
    pub fn record(&self, route: &str, status: u16, elapsed: Duration, rejection: Option<Rejection>, now_secs: u64) {
        with_entry(&self.routes, route, |m| {
            let class = usize::from(status / 100).clamp(1, 5) - 1;
            m.codes[class].fetch_add(1, Ordering::Relaxed);
            m.duration.observe(elapsed);
            m.window.record(elapsed, now_secs);
            match rejection {
                Some(Rejection::RateLimited) => m.rate_limited.fetch_add(1, Ordering::Relaxed),
                Some(Rejection::Denied) => m.denied.fetch_add(1, Ordering::Relaxed),
                Some(Rejection::AuthFailed) => m.auth_failed.fetch_add(1, Ordering::Relaxed),
                None => 0,
            };
        });
    }

    /// Time from sending a request to a backend until its response head arrived.
    pub fn observe_upstream(&self, backend: &str, elapsed: Duration) {
        with_entry(&self.upstream, backend, |m| m.response.observe(elapsed));
    }

    /// Time to open a new connection to a backend.
    pub fn observe_connect(&self, backend: &str, elapsed: Duration) {
        with_entry(&self.upstream, backend, |m| m.connect.observe(elapsed));
    }

    /// Every route's counters, by name.
    pub fn routes(&self) -> Vec<(String, Arc<RouteMetrics>)> {
        let mut all: Vec<_> = self.routes.read().iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn upstreams(&self) -> Vec<(String, Arc<BackendMetrics>)> {
        let mut all: Vec<_> = self.upstream.read().iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// The route label of a request: its app, else its `[route.NAME]`, else the default pool.
pub fn route_label<'a>(app: Option<&'a str>, route: Option<&'a str>) -> &'a str {
    app.or(route).unwrap_or(DEFAULT_ROUTE)
}

/// Seconds since the Unix epoch of `time`.
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One backend as status pages show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendState {
    /// `default`, the route name, or the app name.
    pub pool: String,
    pub backend: String,
    /// In rotation: healthy and not cooling down after a refused connection.
    pub up: bool,
    pub last_check_ms: Option<u64>,
    pub in_flight: usize,
}

/// Everything one scrape shows, gathered before rendering.
pub struct Scrape<'a> {
    pub metrics: &'a Metrics,
    pub backends: &'a [BackendState],
    pub cache: Option<&'a cache::Stats>,
    pub open_connections: usize,
    pub parked_connections: usize,
    pub queue_depth: usize,
    pub api_auth_failures: u64,
    pub locked_accounts: usize,
}

/// Escapes a label value: backslash, double quote and newline.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let (counts, sum_us) = h.read();
    let mut cumulative = 0;
    for (le, n) in BOUNDS_LE.iter().zip(counts) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    cumulative += counts[BUCKETS - 1];
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
}

/// Writes every metric in the Prometheus text exposition format (version 0.0.4).
pub fn render(s: &Scrape<'_>) -> String {
    let mut out = String::with_capacity(8192);
    let o = &mut out;
    family(o, "pibl_build_info", "gauge", "Version of the running pibl.");
    let _ = writeln!(o, "pibl_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));

    let routes = s.metrics.routes();
    family(o, "pibl_requests_total", "counter", "Requests answered, by route or app and status class.");
    for (name, m) in &routes {
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let _ = writeln!(
                o,
                "pibl_requests_total{{route=\"{}\",code_class=\"{class}\"}} {}",
                label(name),
                m.requests(i)
            );
        }
    }
    family(o, "pibl_request_duration_seconds", "histogram", "Time from the parsed request head to the last byte sent.");
    for (name, m) in &routes {
        histogram(o, "pibl_request_duration_seconds", &format!("route=\"{}\"", label(name)), &m.duration);
    }
    family(o, "pibl_rejections_total", "counter", "Requests the gateway refused, by route and reason.");
    for (name, m) in &routes {
        for (reason, n) in [("rate_limit", &m.rate_limited), ("deny", &m.denied)] {
            let _ = writeln!(
                o,
                "pibl_rejections_total{{route=\"{}\",reason=\"{reason}\"}} {}",
                label(name),
                n.load(Ordering::Relaxed)
            );
        }
    }
    family(o, "pibl_auth_failures_total", "counter", "401/403 from route auth servers (proxy) and 401 from the API.");
    let proxy_auth: u64 = routes.iter().map(|(_, m)| m.auth_failed.load(Ordering::Relaxed)).sum();
    let _ = writeln!(o, "pibl_auth_failures_total{{source=\"proxy\"}} {proxy_auth}");
    let _ = writeln!(o, "pibl_auth_failures_total{{source=\"api\"}} {}", s.api_auth_failures);

    family(
        o,
        "pibl_upstream_response_seconds",
        "histogram",
        "Time from sending a request to a backend to its response head.",
    );
    let upstreams = s.metrics.upstreams();
    for (backend, m) in &upstreams {
        histogram(o, "pibl_upstream_response_seconds", &format!("backend=\"{}\"", label(backend)), &m.response);
    }
    family(o, "pibl_upstream_connect_seconds", "histogram", "Time to open a new connection to a backend.");
    for (backend, m) in &upstreams {
        histogram(o, "pibl_upstream_connect_seconds", &format!("backend=\"{}\"", label(backend)), &m.connect);
    }
    family(o, "pibl_backend_up", "gauge", "1 when the backend is in rotation (healthy, not cooling down).");
    for b in s.backends {
        let _ = writeln!(
            o,
            "pibl_backend_up{{pool=\"{}\",backend=\"{}\"}} {}",
            label(&b.pool),
            label(&b.backend),
            u8::from(b.up)
        );
    }
    family(o, "pibl_backend_in_flight", "gauge", "Requests being forwarded to the backend now.");
    for b in s.backends {
        let _ = writeln!(
            o,
            "pibl_backend_in_flight{{pool=\"{}\",backend=\"{}\"}} {}",
            label(&b.pool),
            label(&b.backend),
            b.in_flight
        );
    }

    if let Some(c) = s.cache {
        let counters = [
            ("hits", &c.hits, "Requests answered from the cache."),
            ("misses", &c.misses, "Cacheable requests that went to a backend."),
            ("stale", &c.stale, "Stale responses served (while revalidating or for a failed backend)."),
            ("revalidated", &c.revalidated, "Stored responses a backend confirmed with 304."),
            ("stores", &c.stores, "Responses stored."),
            ("evictions", &c.evictions, "Entries evicted to stay within cache_max_bytes."),
            ("coalesced", &c.coalesced, "Requests that waited for another request's fetch of the same URL."),
        ];
        for (name, value, help) in counters {
            family(o, &format!("pibl_cache_{name}_total"), "counter", help);
            let _ = writeln!(o, "pibl_cache_{name}_total {}", value.load(Ordering::Relaxed));
        }
        family(o, "pibl_cache_bytes", "gauge", "Bytes held by the cache.");
        let _ = writeln!(o, "pibl_cache_bytes {}", c.bytes());
        family(o, "pibl_cache_objects", "gauge", "Responses held by the cache.");
        let _ = writeln!(o, "pibl_cache_objects {}", c.entries());
    }

    family(o, "pibl_locked_accounts", "gauge", "Accounts blocked after failed logins.");
    let _ = writeln!(o, "pibl_locked_accounts {}", s.locked_accounts);
    family(
        o,
        "pibl_client_connections",
        "gauge",
        "Open client connections: active (with a worker or queued) or parked idle.",
    );
    let active = s.open_connections.saturating_sub(s.parked_connections);
    let _ = writeln!(o, "pibl_client_connections{{state=\"active\"}} {active}");
    let _ = writeln!(o, "pibl_client_connections{{state=\"parked\"}} {}", s.parked_connections);
    family(o, "pibl_worker_queue_depth", "gauge", "Connections waiting for a worker.");
    let _ = writeln!(o, "pibl_worker_queue_depth {}", s.queue_depth);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_quantiles() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let (counts, sum) = h.read();
        assert_eq!((counts[0], counts[5], counts[BUCKETS - 1]), (1, 1, 1));
        assert_eq!(sum, 60_030_500);
        assert_eq!(quantile(&counts, 0.5), Some(0.05));
        assert_eq!(quantile(&counts, 0.99), Some(10.0));
        assert_eq!(quantile(&[0; BUCKETS], 0.5), None);
    }

    #[test]
    fn window_rotates_by_the_time_passed_in() {
        let w = Window::default();
        let t = 1_000_000;
        w.record(Duration::from_millis(2), t);
        w.record(Duration::from_millis(2), t + 5);
        w.record(Duration::from_millis(200), t + 10);
        let series = w.series(t + 10);
        assert_eq!(series.len(), SLOTS);
        assert_eq!(series[SLOTS - 1].requests(), 1);
        assert_eq!(series[SLOTS - 2].requests(), 2);
        assert_eq!(series[SLOTS - 2].start_secs, t);
        // Five minutes on, both slots are out of the window and the second one's place is reused.
        let later_secs = t + SLOTS as u64 * SLOT_SECS + 10;
        w.record(Duration::from_millis(2), later_secs);
        let later = w.series(later_secs);
        assert_eq!(later[SLOTS - 1].requests(), 1);
        assert_eq!(later.iter().map(Point::requests).sum::<u64>(), 1);
    }

    #[test]
    fn render_writes_the_exposition_format() {
        let metrics = Metrics::default();
        metrics.record("api", 200, Duration::from_millis(3), None, 0);
        metrics.record("api", 429, Duration::from_micros(10), Some(Rejection::RateLimited), 0);
        metrics.record("default", 502, Duration::from_secs(20), None, 0);
        metrics.record("api", 401, Duration::from_micros(10), Some(Rejection::AuthFailed), 0);
        metrics.observe_upstream("127.0.0.1:9", Duration::from_millis(40));
        metrics.observe_connect("127.0.0.1:9", Duration::from_micros(300));
        let cache = cache::Stats::default();
        cache.hits.store(7, Ordering::Relaxed);
        let backends = [BackendState {
            pool: "default".into(),
            backend: "127.0.0.1:9".into(),
            up: false,
            last_check_ms: None,
            in_flight: 2,
        }];
        let text = render(&Scrape {
            metrics: &metrics,
            backends: &backends,
            cache: Some(&cache),
            open_connections: 5,
            parked_connections: 3,
            queue_depth: 1,
            api_auth_failures: 4,
            locked_accounts: 2,
        });
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "# TYPE pibl_requests_total counter",
            "pibl_build_info{version=\"0.1.0\"} 1",
            "pibl_requests_total{route=\"api\",code_class=\"2xx\"} 1",
            "pibl_requests_total{route=\"api\",code_class=\"4xx\"} 2",
            "pibl_requests_total{route=\"default\",code_class=\"5xx\"} 1",
            "# TYPE pibl_request_duration_seconds histogram",
            "pibl_request_duration_seconds_bucket{route=\"api\",le=\"0.001\"} 2",
            "pibl_request_duration_seconds_bucket{route=\"api\",le=\"0.005\"} 3",
            "pibl_request_duration_seconds_bucket{route=\"api\",le=\"+Inf\"} 3",
            "pibl_request_duration_seconds_sum{route=\"api\"} 0.00302",
            "pibl_request_duration_seconds_count{route=\"api\"} 3",
            "pibl_request_duration_seconds_bucket{route=\"default\",le=\"10\"} 0",
            "pibl_request_duration_seconds_bucket{route=\"default\",le=\"+Inf\"} 1",
            "pibl_rejections_total{route=\"api\",reason=\"rate_limit\"} 1",
            "pibl_rejections_total{route=\"api\",reason=\"deny\"} 0",
            "pibl_auth_failures_total{source=\"proxy\"} 1",
            "pibl_auth_failures_total{source=\"api\"} 4",
            "pibl_upstream_response_seconds_bucket{backend=\"127.0.0.1:9\",le=\"0.025\"} 0",
            "pibl_upstream_response_seconds_bucket{backend=\"127.0.0.1:9\",le=\"0.05\"} 1",
            "pibl_upstream_connect_seconds_bucket{backend=\"127.0.0.1:9\",le=\"0.001\"} 1",
            "pibl_upstream_connect_seconds_count{backend=\"127.0.0.1:9\"} 1",
            "pibl_backend_up{pool=\"default\",backend=\"127.0.0.1:9\"} 0",
            "pibl_backend_in_flight{pool=\"default\",backend=\"127.0.0.1:9\"} 2",
            "pibl_cache_hits_total 7",
            "pibl_cache_misses_total 0",
            "pibl_cache_bytes 0",
            "pibl_locked_accounts 2",
            "pibl_client_connections{state=\"active\"} 2",
            "pibl_client_connections{state=\"parked\"} 3",
            "pibl_worker_queue_depth 1",
        ] {
            assert!(lines.contains(&expected), "missing line {expected:?} in:\n{text}");
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
