//! The Prometheus text exposition format (version 0.0.4) of everything one scrape shows: the request
//! counters and histograms, each backend's state, the cache's figures and the connection gauges.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::counters::{Histogram, Metrics, BOUNDS_LE, BUCKETS, TLS_FAILURE_REASONS};
use crate::cache;

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
    /// Client connections per event loop (empty until the loops start).
    pub loop_connections: Vec<usize>,
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
    let m = s.metrics;
    family(o, "pibl_tunnels_total", "counter", "Upgraded connections (WebSockets) closed.");
    let _ = writeln!(o, "pibl_tunnels_total {}", m.tunnels.load(Ordering::Relaxed));
    family(o, "pibl_tunnel_bytes_total", "counter", "Bytes carried by closed tunnels, by direction.");
    let _ = writeln!(o, "pibl_tunnel_bytes_total{{direction=\"up\"}} {}", m.tunnel_bytes_up.load(Ordering::Relaxed));
    let _ =
        writeln!(o, "pibl_tunnel_bytes_total{{direction=\"down\"}} {}", m.tunnel_bytes_down.load(Ordering::Relaxed));
    family(o, "pibl_panics_total", "counter", "Panics caught while serving a request; each closed its connection.");
    let _ = writeln!(o, "pibl_panics_total {}", m.panics.load(Ordering::Relaxed));
    family(
        o,
        "pibl_tls_handshake_failures_total",
        "counter",
        "TLS connections closed before their handshake finished.",
    );
    for reason in TLS_FAILURE_REASONS {
        let _ = writeln!(
            o,
            "pibl_tls_handshake_failures_total{{reason=\"{reason}\"}} {}",
            m.tls_handshake_failures(reason)
        );
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
        "Open client connections: active (a request under way) or parked idle (waiting for one).",
    );
    let active = s.open_connections.saturating_sub(s.parked_connections);
    let _ = writeln!(o, "pibl_client_connections{{state=\"active\"}} {active}");
    let _ = writeln!(o, "pibl_client_connections{{state=\"parked\"}} {}", s.parked_connections);
    if !s.loop_connections.is_empty() {
        family(o, "pibl_loop_connections", "gauge", "Client connections each event loop serves.");
        for (i, n) in s.loop_connections.iter().enumerate() {
            let _ = writeln!(o, "pibl_loop_connections{{loop=\"{i}\"}} {n}");
        }
    }
    if let Some((name, days)) = s.metrics.certificate_days_left() {
        family(
            o,
            "pibl_tls_certificate_days_left",
            "gauge",
            "Whole days until the ACME certificate expires (-1: none yet).",
        );
        let _ = writeln!(o, "pibl_tls_certificate_days_left{{name=\"{}\"}} {days}", label(&name));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::observe::metrics::counters::Rejection;

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
            loop_connections: vec![3, 2],
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
            "# TYPE pibl_loop_connections gauge",
            "pibl_loop_connections{loop=\"0\"} 3",
            "pibl_loop_connections{loop=\"1\"} 2",
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
