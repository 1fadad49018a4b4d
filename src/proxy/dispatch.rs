//! Where an admitted request goes, decided before any backend is contacted: the upstream (a
//! configured pool or an app of the management API), the target sent to it, the client address
//! and the authenticated user. A background cache refresh is the same decision replayed later for
//! a stored entry ([`RefreshJob`]).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use crate::cache::{Entry, Origin};
use crate::upstream::apps::AppRoute;
use crate::upstream::backend::Pool;

/// The backends a request goes to: a configured pool, or an app registered through the API.
#[derive(Clone)]
pub enum Upstream {
    Pool(Arc<Pool>),
    App(Arc<AppRoute>),
}

impl Upstream {
    pub fn pool(&self) -> &Pool {
        match self {
            Upstream::Pool(pool) => pool,
            Upstream::App(app) => &app.pool,
        }
    }

    pub fn app(&self) -> Option<&Arc<AppRoute>> {
        match self {
            Upstream::Pool(_) => None,
            Upstream::App(app) => Some(app),
        }
    }
}

/// Where and how one admitted request is forwarded.
pub struct Dispatch<'a> {
    pub upstream: Upstream,
    /// The target sent upstream: the client's, less the route prefix when the route strips it (an
    /// app's `/<appid>` always goes, into `X-Forwarded-Prefix`).
    pub target: Cow<'a, str>,
    /// The client's address (behind trusted proxies), for `ip_hash`.
    pub client: IpAddr,
    /// The auth server's `X-Auth-User`, passed on to the backend.
    pub auth_user: Option<Vec<u8>>,
    /// The response cache serves and stores these answers (a route's `cache`).
    pub cache: bool,
    /// Stored answers are kept compressed too (`compress`, or the route's own).
    pub compress: bool,
}

impl Dispatch<'_> {
    /// The routing decision as the cache records it with what it stores: an answer is only reused
    /// while the same URL still goes the same way (same app, same backends, same target).
    pub fn cache_origin(&self) -> Origin {
        use std::fmt::Write;
        let mut route = String::with_capacity(64);
        let app = self.upstream.app();
        match app {
            // The database key changes when an app is deleted and its name taken again.
            Some(app) => {
                let _ = write!(route, "app {}#{}", app.name, app.pk);
            }
            None => route.push_str("pool"),
        }
        for backend in self.upstream.pool().backends() {
            let _ = write!(route, " {}", backend.addr);
        }
        let _ = write!(route, " -> {}", self.target);
        Origin { route, app: app.map(|a| a.name.clone()) }
    }
}

/// A stale entry to refresh off the request path (`stale-while-revalidate`).
pub struct RefreshJob {
    /// The cache key of the entry.
    pub key: String,
    pub host: Option<String>,
    /// Where the request that found the entry stale was dispatched; no user goes with a refresh.
    pub dispatch: Dispatch<'static>,
    pub entry: Arc<Entry>,
}
