//! The API gateway's view of a request: who the client is (behind trusted proxies), whether it may
//! come in (deny/allow, rate limits), which route and pool serve it (longest `[route.NAME]` prefix,
//! else the `ip_serverN` pool), and how the route authenticates it. Built from a `Config` as one
//! snapshot that a reload swaps whole.

pub mod auth_request;
pub mod ratelimit;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, IpNet, RouteAuth, RouteConfig};
use crate::gateway::auth_request::AuthChecker;
use crate::gateway::ratelimit::RateLimiter;
use crate::http::request::Request;
use crate::http::tokens;
use crate::upstream::backend::Pool;

/// One `[route.NAME]` with its live parts.
pub struct Route {
    pub config: RouteConfig,
    pub pool: Arc<Pool>,
    pub limiter: Option<RateLimiter>,
    pub auth: Option<AuthChecker>,
}

/// Routes, pools and access rules of one configuration.
pub struct Gateway {
    /// Longest prefix first.
    routes: Vec<Arc<Route>>,
    pub default_pool: Arc<Pool>,
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
    limiter: Option<RateLimiter>,
    /// `auth_url` endpoints, never reachable through the proxy unless a route exposes them.
    auth_endpoints: Vec<(SocketAddr, String)>,
}

/// Why a request is refused before it is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// deny/allow (403).
    Forbidden,
    /// Over a rate limit (429 with `Retry-After`).
    RateLimited(Duration),
    /// The auth server said no (401/403 with its challenge).
    Unauthorized { status: u16, challenge: Option<Vec<u8>> },
    /// The auth server failed (500) or could not be asked (503).
    AuthBroken { status: u16, reason: String },
    /// The path is an auth endpoint (404).
    Hidden,
}

impl Gateway {
    pub fn new(config: &Config) -> Gateway {
        let mut routes: Vec<Arc<Route>> = config
            .routes
            .iter()
            .map(|rc| {
                let auth = match &rc.auth {
                    RouteAuth::Request(url) => Some(AuthChecker::new(url, rc.auth_cache)),
                    RouteAuth::None | RouteAuth::Jwt => None,
                };
                Arc::new(Route {
                    pool: Arc::new(Pool::with_balance(&rc.servers, config.backend_pool_size, rc.balance)),
                    limiter: rc.rate_limit.map(RateLimiter::new),
                    auth,
                    config: rc.clone(),
                })
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.config.prefix.len()));
        let auth_endpoints = routes
            .iter()
            .filter_map(|r| r.auth.as_ref().map(|a| (a.url().server.addr, path_only(&a.url().path).to_string())))
            .collect();
        Gateway {
            routes,
            default_pool: Arc::new(Pool::new(&config.backends, config.backend_pool_size)),
            deny: config.deny.clone(),
            allow: config.allow.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            limiter: config.rate_limit.map(RateLimiter::new),
            auth_endpoints,
        }
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route with the longest prefix of `target`'s path.
    pub fn route(&self, target: &str) -> Option<&Arc<Route>> {
        let path = path_only(target);
        self.routes.iter().find(|r| path.starts_with(&r.config.prefix))
    }

    /// The client's address: the peer, or — when the peer is a trusted proxy — the last address in
    /// `X-Forwarded-For` that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, req: &Request) -> IpAddr {
        let trusted = |ip: IpAddr| self.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let chain: Vec<IpAddr> = req
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
            .flat_map(|(_, v)| tokens(v).map(|t| std::str::from_utf8(t).ok().and_then(|s| s.parse().ok())))
            .collect::<Option<Vec<IpAddr>>>()
            .unwrap_or_default();
        for hop in chain.into_iter().rev() {
            client = hop;
            if !trusted(hop) {
                break;
            }
        }
        client
    }

    /// Access checks that need no backend: deny/allow, then the global and route rate limits.
    pub fn admit(&self, client: IpAddr, route: Option<&Route>, now: Instant) -> Result<(), Refusal> {
        if self.deny.iter().any(|n| n.contains(client))
            || (!self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(client)))
        {
            return Err(Refusal::Forbidden);
        }
        for limiter in [self.limiter.as_ref(), route.and_then(|r| r.limiter.as_ref())].into_iter().flatten() {
            limiter.check(client, now).map_err(Refusal::RateLimited)?;
        }
        Ok(())
    }

    /// Whether forwarding `path` to `pool` would reach an `auth_url` that `route` does not expose.
    pub fn hides(&self, pool: &Pool, route: Option<&Route>, path: &str) -> bool {
        if route.is_some_and(|r| r.config.expose_auth) {
            return false;
        }
        let path = path_only(path);
        self.auth_endpoints
            .iter()
            .any(|(addr, auth_path)| path == auth_path && pool.backends().iter().any(|b| b.addr == *addr))
    }
}

/// The path of a request target, without its query.
pub fn path_only(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{parse, Limits};

    fn gateway(ini: &str) -> Gateway {
        Gateway::new(&Config::from_ini_str(ini, "t.ini").unwrap())
    }

    fn request(raw: &str) -> Request {
        let limits = Limits { max_head_bytes: 4096, max_headers: 50, max_body_bytes: 0 };
        parse(raw.as_bytes(), &limits).unwrap().unwrap().0
    }

    #[test]
    fn longest_prefix_wins() {
        let g = gateway(
            "[route.a]\nprefix = /api/\nservers = 127.0.0.1:1\n[route.b]\nprefix = /api/v2/\nservers = 127.0.0.1:2\n",
        );
        assert_eq!(g.route("/api/v2/x?q").map(|r| r.config.name.as_str()), Some("b"));
        assert_eq!(g.route("/api/v1").map(|r| r.config.name.as_str()), Some("a"));
        assert!(g.route("/other").is_none());
    }

    #[test]
    fn client_ip_behind_trusted_proxies() {
        let g = gateway("trusted_proxies = 10.0.0.0/8\n");
        let req = request("GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.9, 10.1.1.1\r\n\r\n");
        assert_eq!(g.client_ip("10.0.0.5".parse().unwrap(), &req), "203.0.113.9".parse::<IpAddr>().unwrap());
        // An untrusted peer cannot claim another address.
        assert_eq!(g.client_ip("198.51.100.1".parse().unwrap(), &req), "198.51.100.1".parse::<IpAddr>().unwrap());
        let junk = request("GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: nonsense\r\n\r\n");
        assert_eq!(g.client_ip("10.0.0.5".parse().unwrap(), &junk), "10.0.0.5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn deny_allow_and_rate_limits() {
        let g = gateway(
            "deny = 10.0.0.0/8, 203.0.113.7\nallow = 10.0.0.0/8, 192.0.2.0/24\nrate_limit = 1/s\nrate_burst = 2\n",
        );
        let now = Instant::now();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(g.admit(ip("10.1.2.3"), None, now), Err(Refusal::Forbidden), "deny wins over allow");
        assert_eq!(g.admit(ip("198.51.100.1"), None, now), Err(Refusal::Forbidden), "not in allow");
        assert_eq!(g.admit(ip("192.0.2.1"), None, now), Ok(()));
        assert_eq!(g.admit(ip("192.0.2.1"), None, now), Ok(()));
        assert!(matches!(g.admit(ip("192.0.2.1"), None, now), Err(Refusal::RateLimited(_))));
        assert_eq!(g.admit(ip("192.0.2.1"), None, now + Duration::from_secs(1)), Ok(()));
    }
}
