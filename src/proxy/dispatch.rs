//! Where an admitted request goes, decided before any backend is contacted: the upstream (a
//! configured pool or an app of the management API), the target sent to it, the client address
//! and the authenticated user. A background cache refresh is the same decision replayed later for
//! a stored entry ([`RefreshJob`]).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use crate::cache::Entry;
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
