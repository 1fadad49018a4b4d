//! What the request path counts: fixed-bucket histograms and counters of atomics that it bumps
//! without a lock or an allocation, and a 5-minute ring of 10-second slots for the dashboard.
//!
//! Per-label counters live in maps keyed by route/app name and backend name. The maps are only
//! read on the request path (a `parking_lot` read lock and a hash of a short name); an entry is
//! created once, at start-up and reload for the configured routes, or the first time a new app or
//! backend is seen. Label values are therefore bounded by configuration and API changes, never by
//! what clients send.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::config::Config;
use crate::gateway::Refusal;

/// Upper bounds of the histogram buckets, in microseconds (1 ms to 10 s); slower goes to `+Inf`.
const BOUNDS_US: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
/// The same bounds as Prometheus `le` labels.
pub(super) const BOUNDS_LE: [&str; 13] =
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
    pub(super) duration: Histogram,
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
    /// The ACME certificate's first name and days left on it, when ACME runs.
    certificate_days_left: RwLock<Option<(String, Arc<AtomicI64>)>>,
    /// Upgraded connections (WebSockets) closed, and the bytes they carried each way.
    pub tunnels: AtomicU64,
    pub tunnel_bytes_up: AtomicU64,
    pub tunnel_bytes_down: AtomicU64,
    /// Panics caught while serving a request (a bug in pibl; the connection was closed).
    pub panics: AtomicU64,
    /// TLS connections closed before their handshake finished, by [`TLS_FAILURE_REASONS`].
    pub tls_handshake_failures: [AtomicU64; 3],
}

/// Why a TLS handshake did not finish: rustls refused it (not TLS, no common version or suite),
/// its deadline (`header_timeout`) passed, or the client closed first.
pub const TLS_FAILURE_REASONS: [&str; 3] = ["refused", "timeout", "closed"];

/// Timings of one backend (by name, so they outlive reloads that rebuild the pools).
#[derive(Debug, Default)]
pub struct BackendMetrics {
    pub(super) connect: Histogram,
    pub(super) response: Histogram,
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
    /// Shows `days_left` (set by the ACME thread) as `pibl_tls_certificate_days_left{name}`.
    pub fn watch_certificate(&self, name: String, days_left: Arc<AtomicI64>) {
        *self.certificate_days_left.write() = Some((name, days_left));
    }

    /// The watched certificate's name and days left.
    pub fn certificate_days_left(&self) -> Option<(String, i64)> {
        self.certificate_days_left.read().as_ref().map(|(name, days)| (name.clone(), days.load(Ordering::Relaxed)))
    }

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

    /// Counts one TLS connection closed before its handshake finished; `reason` is one of
    /// [`TLS_FAILURE_REASONS`].
    pub fn count_tls_handshake_failure(&self, reason: &str) {
        if let Some(i) = TLS_FAILURE_REASONS.iter().position(|r| *r == reason) {
            self.tls_handshake_failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The TLS handshakes that failed for `reason`.
    pub fn tls_handshake_failures(&self, reason: &str) -> u64 {
        TLS_FAILURE_REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.tls_handshake_failures[i].load(Ordering::Relaxed))
    }

    /// Counts one closed tunnel and its bytes: from the client to the backend, and back.
    pub fn count_tunnel(&self, up: u64, down: u64) {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
        self.tunnel_bytes_up.fetch_add(up, Ordering::Relaxed);
        self.tunnel_bytes_down.fetch_add(down, Ordering::Relaxed);
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

    pub(super) fn upstreams(&self) -> Vec<(String, Arc<BackendMetrics>)> {
        let mut all: Vec<_> = self.upstream.read().iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
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
}
