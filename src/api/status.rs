//! The operations endpoints of the API port: `GET /metrics` (Prometheus text), `GET /api/status` (the JSON the dashboard polls: admins see every pool, route and app, users their own apps) and `GET /dashboard` (one self-contained HTML page embedded in the binary).

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::auth::{authenticate, is_admin};
use super::reply::{ApiError, Reply};
use super::state::ApiState;
use crate::clock::rfc3339;
use crate::http::request::Request;
use crate::observe::metrics::{self, quantile, BackendState, Point, Scrape, BUCKETS, SLOT_SECS};
use crate::store::User;

/// The dashboard page; everything it needs (CSS, script, charts) is inside it.
const DASHBOARD: &str = include_str!("dashboard.html");
/// Cache keys listed on the dashboard.
const TOP_KEYS: usize = 10;
/// Slots averaged for the current request rate and percentiles: the last minute.
const RECENT_SLOTS: usize = 6;

/// `GET /dashboard`.
pub fn dashboard() -> Reply {
    let mut reply = Reply::raw("text/html; charset=utf-8", DASHBOARD.as_bytes().to_vec());
    // The browser enforces what the page promises: it loads nothing and talks only to this origin.
    reply.headers.push((
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            .into(),
    ));
    reply.headers.push(("X-Content-Type-Options", "nosniff".into()));
    reply
}

/// `GET /metrics` on the API port, unless `metrics_bind` moved it to its own listener. It names every
/// app and backend address, so where the API faces the network (`metrics_auth`) it takes an admin's
/// token.
pub fn metrics_on_api(state: &ApiState, req: &Request) -> Result<Reply, ApiError> {
    if state.observe.metrics_elsewhere.load(Ordering::Relaxed) {
        return Err(ApiError::NotFound("/metrics is served on the metrics_bind address".into()));
    }
    if state.metrics_need_token {
        let user = authenticate(state, req)?;
        if !is_admin(state, &user)? {
            return Err(ApiError::Forbidden(
                "/metrics names every app and backend: admins only (or scrape it on metrics_bind)".into(),
            ));
        }
    }
    Ok(metrics(state))
}

/// `GET /metrics`: the Prometheus text format. It names routes, apps and backends but no users, keys
/// or addresses of clients.
pub fn metrics(state: &ApiState) -> Reply {
    let Some(shared) = state.observe.probe().and_then(|p| p.shared()) else {
        return ApiError::Request(503, "the proxy is not running".into()).reply();
    };
    let backends = shared.backend_states(shared.clock.now());
    // A failed count is logged and scraped as 0 rather than failing the whole scrape.
    let locked_accounts = state.store.blocked_list(state.clock.now_ms()).map(|l| l.len()).unwrap_or_else(|e| {
        log::error!("metrics: cannot count blocked accounts: {e}");
        0
    });
    let stats = shared.stats();
    let mut text = metrics::render(&Scrape {
        metrics: &shared.metrics,
        backends: &backends,
        cache: shared.cache.as_ref().map(|c| &c.stats),
        open_connections: stats.open_connections,
        parked_connections: stats.parked_connections,
        loop_connections: shared.loop_connections(),
        api_auth_failures: state.observe.auth_failures.load(Ordering::Relaxed),
        locked_accounts,
    });
    // [pg] The management database: a SQLite file is always up; PostgreSQL may be out of reach.
    text.push_str(&format!(
        "# HELP pibl_database_up Whether the management database answered when last asked (1) or not (0).\n\
         # TYPE pibl_database_up gauge\npibl_database_up {}\n",
        u8::from(state.store.is_up())
    ));
    Reply::raw("text/plain; version=0.0.4; charset=utf-8", text.into_bytes())
}

fn ms(seconds: Option<f64>) -> Value {
    seconds.map_or(Value::Null, |s| json!((s * 1000.0 * 100.0).round() / 100.0))
}

/// Adds `other`'s counts into `into`, slot by slot (both cover the same slots).
fn merge(into: &mut Vec<Point>, other: Vec<Point>) {
    if into.is_empty() {
        *into = other;
        return;
    }
    for (a, b) in into.iter_mut().zip(other) {
        for (x, y) in a.counts.iter_mut().zip(b.counts) {
            *x += y;
        }
    }
}

/// `GET /api/status`: backends, recent traffic, rejections, cache and (admins) blocked accounts.
pub fn status(state: &ApiState, user: &User) -> Result<Reply, ApiError> {
    let Some(shared) = state.observe.probe().and_then(|p| p.shared()) else {
        return Err(ApiError::Request(503, "the proxy is not running".into()));
    };
    let admin = is_admin(state, user)?;
    let now_ms = state.clock.now_ms();
    // Users see the routes and pools of their own apps, whose names are their labels.
    let own: Option<Vec<String>> = match admin {
        true => None,
        false => Some(state.store.apps_of(user.id)?.into_iter().map(|a| a.name).collect()),
    };
    let visible = |name: &str| own.as_ref().is_none_or(|names| names.iter().any(|n| n == name));

    let backends: Vec<Value> = shared
        .backend_states(shared.clock.now())
        .into_iter()
        .filter(|b| visible(&b.pool))
        .map(|BackendState { pool, backend, up, last_check_ms, in_flight }| {
            json!({
                "pool": pool,
                "backend": backend,
                "healthy": up,
                "last_check": last_check_ms.map(rfc3339),
                "in_flight": in_flight,
            })
        })
        .collect();

    let now_secs = metrics::unix_secs(shared.clock.wall());
    let mut series: Vec<Point> = Vec::new();
    let mut routes = Vec::new();
    let (mut rate_limited, mut denied) = (0, 0);
    for (name, m) in shared.metrics.routes().into_iter().filter(|(name, _)| visible(name)) {
        merge(&mut series, m.window.series(now_secs));
        let (limited, deny) = (m.rate_limited.load(Ordering::Relaxed), m.denied.load(Ordering::Relaxed));
        rate_limited += limited;
        denied += deny;
        let classes: Vec<u64> = (0..5).map(|i| m.requests(i)).collect();
        routes.push(json!({
            "route": name,
            "requests": classes.iter().sum::<u64>(),
            "by_class": { "1xx": classes[0], "2xx": classes[1], "3xx": classes[2], "4xx": classes[3], "5xx": classes[4] },
            "rate_limited": limited,
            "denied": deny,
        }));
    }
    let points: Vec<Value> = series
        .iter()
        .map(|p| {
            json!({
                "time": rfc3339(p.start_secs * 1000),
                "rate": p.requests() as f64 / SLOT_SECS as f64,
                "p50_ms": ms(quantile(&p.counts, 0.5)),
                "p99_ms": ms(quantile(&p.counts, 0.99)),
            })
        })
        .collect();
    let recent_counts = series.iter().rev().take(RECENT_SLOTS).fold([0u64; BUCKETS], |mut acc, p| {
        for (a, c) in acc.iter_mut().zip(p.counts) {
            *a += c;
        }
        acc
    });
    let recent_requests: u64 = recent_counts.iter().sum();

    // The cache is shared by every route and its keys name other users' URLs: admins only.
    let cache = match (&shared.cache, admin) {
        (Some(cache), true) => {
            let s = &cache.stats;
            let (hits, misses) = (s.hits.load(Ordering::Relaxed), s.misses.load(Ordering::Relaxed));
            let top: Vec<Value> = cache
                .top_keys(TOP_KEYS)
                .into_iter()
                .map(|(key, bytes)| json!({ "key": key, "bytes": bytes }))
                .collect();
            json!({
                "enabled": true,
                "hits": hits,
                "misses": misses,
                "hit_ratio": if hits + misses == 0 { Value::Null } else { json!(hits as f64 / (hits + misses) as f64) },
                "bytes": s.bytes(),
                "max_bytes": cache.limits().max_bytes,
                "objects": s.entries(),
                "stale": s.stale.load(Ordering::Relaxed),
                "evictions": s.evictions.load(Ordering::Relaxed),
                "top_keys": top,
            })
        }
        (None, true) => json!({ "enabled": false }),
        (_, false) => Value::Null,
    };
    let blocked = match admin {
        true => json!(state.store.blocked_list(now_ms)?),
        false => Value::Null,
    };
    let stats = shared.stats();
    let connections = match admin {
        true => json!({
            "active": stats.open_connections.saturating_sub(stats.parked_connections),
            "parked": stats.parked_connections,
            "loops": shared.loop_connections(),
        }),
        false => Value::Null,
    };
    Ok(Reply::json(
        200,
        json!({
            "user": user.email,
            "admin": admin,
            "time": rfc3339(now_ms),
            "backends": backends,
            "traffic": {
                "slot_secs": SLOT_SECS,
                "rate": recent_requests as f64 / (RECENT_SLOTS as u64 * SLOT_SECS) as f64,
                "p50_ms": ms(quantile(&recent_counts, 0.5)),
                "p99_ms": ms(quantile(&recent_counts, 0.99)),
                "series": points,
            },
            "routes": routes,
            "rejections": { "rate_limited": rate_limited, "denied": denied },
            "cache": cache,
            "blocked": blocked,
            "connections": connections,
            // [pg] Which database holds the management state and whether it answers.
            "database": { "shared": state.store.is_shared(), "up": state.store.is_up() },
        }),
    ))
}
