//! `[route.NAME]` sections and the gateway's access keys: path routes to named backend pools with
//! their balancing, authentication and rate limits, and the CIDR lists of `deny`/`allow`.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ini::Properties;

use super::error::ConfigError;
use super::scan::{section_error, ScannedLine};
use super::values::{parse_backend, parse_bool, parse_duration, render_duration, BackendAddr};

/// Documentation written after `[DEFAULT]` by `to_ini`, with a commented example route.
pub(super) const ROUTES_HELP: &str = "
# --- Routes (API gateway) ---
# A [route.NAME] section sends every request whose path starts with `prefix` to its own servers;
# the longest matching prefix wins and the rest go to ip_server1..N. Keys of a route:
#   prefix = /games/                      path prefix (starts with /)
#   servers = 127.0.0.1:5101, 127.0.0.1:5102
#   balance = round_robin                 or least_conn, random_two, ip_hash
#   strip_prefix = false                  true: drop the prefix before forwarding
#   auth = none                           or request (auth_request-style sub-request), jwt
#   auth_url = http://127.0.0.1:5100/auth with auth = request: 2xx lets the request through,
#                                         401/403 go back to the client (with WWW-Authenticate);
#                                         https:// is asked over TLS as https:// backends are
#   auth_cache_secs = 0                   cache positive auth answers per credential this long
#   rate_limit = 50/s                     per client IP on this route; rate_burst = 100
#   health_path = /status                 checked on each server
#   expose_auth = false                   true: the auth_url itself may be reached through the route
#   cache = on                            off: never stored nor served from the cache (to watch the
#                                         balancing, or for answers that must always be fresh)
#   compress = on                         this route's compress (default: [DEFAULT]'s)
# Example:
# [route.games]
# prefix = /games/
# servers = 127.0.0.1:5101, 127.0.0.1:5102, 127.0.0.1:5103
# auth = request
# auth_url = http://127.0.0.1:5100/auth
";

/// A rate as tokens per second with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    /// Extra requests allowed at once; 0 means one second's worth.
    pub burst: u32,
}

impl RateLimit {
    /// Bucket capacity: the burst, or one second's worth of requests, at least one.
    pub fn capacity(&self) -> f64 {
        if self.burst > 0 {
            f64::from(self.burst)
        } else {
            self.per_second.max(1.0)
        }
    }
}

/// An IPv4 or IPv6 network (a single address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            // An IPv4 client reached over an IPv6 socket appears as ::ffff:a.b.c.d.
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (_, ip) => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == full {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// How a route spreads requests over its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    /// The server with the fewest requests in flight.
    LeastConn,
    /// Power of two choices: the less busy of two servers picked at random.
    RandomTwo,
    /// The same client IP goes to the same server while it is up.
    IpHash,
}

impl Balance {
    fn name(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::RandomTwo => "random_two",
            Balance::IpHash => "ip_hash",
        }
    }
}

/// Where an `auth = request` sub-request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUrl {
    /// As written, for rendering.
    pub url: String,
    /// Where the sub-requests go: `http://` or `https://` (then TLS, checked as for `https://`
    /// backends).
    pub server: BackendAddr,
    /// `Host` of the sub-request.
    pub host: String,
    /// Path and query of the sub-request.
    pub path: String,
}

/// How a route authenticates requests before forwarding them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RouteAuth {
    #[default]
    None,
    /// nginx `auth_request`: a GET to this URL decides.
    Request(AuthUrl),
    /// A pibl-issued JWT, verified locally.
    Jwt,
}

/// One `[route.NAME]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    pub prefix: String,
    pub servers: Vec<BackendAddr>,
    pub balance: Balance,
    pub strip_prefix: bool,
    pub auth: RouteAuth,
    /// How long a positive auth answer is reused for the same credentials (zero: never).
    pub auth_cache: Duration,
    pub rate_limit: Option<RateLimit>,
    pub health_path: Option<String>,
    /// The auth URL may be reached through this route.
    pub expose_auth: bool,
    /// `cache`: the response cache serves and stores this route's answers.
    pub cache: bool,
    /// `compress`: this route's own compress switch; `None` takes `[DEFAULT]`'s.
    pub compress: Option<bool>,
}

/// Every key a `[route.NAME]` section may hold.
pub(super) const ROUTE_KEYS: [&str; 13] = [
    "prefix",
    "servers",
    "balance",
    "strip_prefix",
    "auth",
    "auth_url",
    "auth_cache_secs",
    "rate_limit",
    "rate_burst",
    "health_path",
    "expose_auth",
    "cache",
    "compress",
];

/// Validates one `[route.NAME]` section.
pub(super) fn parse_section(
    section: &str,
    props: &Properties,
    lines: &[ScannedLine],
    file: &str,
) -> Result<RouteConfig, ConfigError> {
    let name = section.trim_start_matches("route.").to_string();
    let invalid = section_error(file, lines, section);
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(invalid("", "a route name is letters, digits, - and _ (e.g. [route.games])".into()));
    }
    for (key, _) in props.iter() {
        if !ROUTE_KEYS.contains(&key) {
            return Err(invalid(key, format!("unknown route key; route keys are {}", ROUTE_KEYS.join(", "))));
        }
    }
    let get = |key: &str| props.get(key).map(str::trim).filter(|v| !v.is_empty());

    let prefix = get("prefix").ok_or_else(|| invalid("", "has no prefix (e.g. prefix = /games/)".into()))?;
    if !prefix.starts_with('/') || prefix.contains(char::is_whitespace) {
        return Err(invalid("prefix", format!("{prefix:?} must be a path starting with /")));
    }
    let servers_text =
        get("servers").ok_or_else(|| invalid("", "has no servers (e.g. servers = 127.0.0.1:5101)".into()))?;
    let servers = servers_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_backend)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("servers", e))?;
    if servers.is_empty() {
        return Err(invalid("servers", "lists no server".into()));
    }
    for (i, server) in servers.iter().enumerate() {
        if servers[..i].iter().any(|s| s.addr == server.addr) {
            return Err(invalid("servers", format!("{} is listed twice; list each server once", server.name)));
        }
    }
    let balance = match get("balance").unwrap_or("round_robin") {
        "round_robin" => Balance::RoundRobin,
        "least_conn" => Balance::LeastConn,
        "random_two" => Balance::RandomTwo,
        "ip_hash" => Balance::IpHash,
        other => {
            return Err(invalid(
                "balance",
                format!("{other:?} is not a policy: round_robin, least_conn, random_two or ip_hash"),
            ))
        }
    };
    let flag =
        |key: &str| get(key).map(parse_bool).transpose().map(Option::unwrap_or_default).map_err(|e| invalid(key, e));
    let strip_prefix = flag("strip_prefix")?;
    let expose_auth = flag("expose_auth")?;
    let switch = |key: &str| get(key).map(parse_bool).transpose().map_err(|e| invalid(key, e));
    let cache = switch("cache")?.unwrap_or(true);
    let compress = switch("compress")?;
    let auth = match get("auth").unwrap_or("none") {
        "none" => RouteAuth::None,
        "jwt" => RouteAuth::Jwt,
        "request" => {
            let url = get("auth_url").ok_or_else(|| invalid("auth", "auth = request needs auth_url".into()))?;
            RouteAuth::Request(parse_auth_url(url).map_err(|e| invalid("auth_url", e))?)
        }
        other => return Err(invalid("auth", format!("{other:?} is not none, request or jwt"))),
    };
    if get("auth_url").is_some() && !matches!(auth, RouteAuth::Request(_)) {
        return Err(invalid("auth_url", "is only used with auth = request".into()));
    }
    let auth_cache =
        get("auth_cache_secs").map(parse_duration).transpose().map_err(|e| invalid("auth_cache_secs", e))?;
    let rate_limit = match get("rate_limit").map(parse_rate).transpose().map_err(|e| invalid("rate_limit", e))? {
        Some(Some((per_second, _))) => {
            let burst = get("rate_burst")
                .map(|b| b.parse::<u32>().map_err(|_| invalid("rate_burst", format!("{b:?} is not a whole number"))))
                .transpose()?
                .unwrap_or(0);
            Some(RateLimit { per_second, burst })
        }
        _ => None,
    };
    let health_path = get("health_path").map(str::to_string);
    if let Some(path) = &health_path {
        if !path.starts_with('/') {
            return Err(invalid("health_path", format!("{path:?} must start with /")));
        }
    }
    Ok(RouteConfig {
        name,
        prefix: prefix.to_string(),
        servers,
        balance,
        strip_prefix,
        auth,
        auth_cache: auth_cache.unwrap_or(Duration::ZERO),
        rate_limit,
        health_path,
        expose_auth,
        cache,
        compress,
    })
}

fn parse_auth_url(url: &str) -> Result<AuthUrl, String> {
    let bad_scheme = || format!("{url:?} must be an http:// or https:// URL (e.g. http://127.0.0.1:5100/auth)");
    let (scheme, rest) = url.split_once("://").ok_or_else(bad_scheme)?;
    if !matches!(scheme, "http" | "https") {
        return Err(bad_scheme());
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // Read as an ip_serverN value is: port 80 or 443 when left out, a host name resolved now.
    let server = BackendAddr::parse(&format!("{scheme}://{authority}")).map_err(|e| e.to_string())?;
    Ok(AuthUrl { url: url.to_string(), server, host: authority.to_string(), path: path.to_string() })
}

/// `N/s` or `N/m` (N may be fractional); `off` or empty is no limit.
pub(super) fn parse_rate(v: &str) -> Result<Option<(f64, u32)>, String> {
    let t = v.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let bad = || format!("{v:?} is not a rate: write N/s or N/m, e.g. 50/s (or off)");
    let (n, unit) = t.split_once('/').ok_or_else(bad)?;
    let n: f64 = n.trim().parse().map_err(|_| bad())?;
    let per_second = match unit.trim() {
        "s" | "sec" | "second" => n,
        "m" | "min" | "minute" => n / 60.0,
        _ => return Err(bad()),
    };
    if !(per_second.is_finite() && per_second > 0.0) {
        return Err(bad());
    }
    Ok(Some((per_second, 0)))
}

pub(super) fn render_rate(limit: Option<RateLimit>) -> String {
    match limit {
        None => "off".to_string(),
        Some(l) if (l.per_second * 60.0).fract() == 0.0 && l.per_second.fract() != 0.0 => {
            format!("{}/m", l.per_second * 60.0)
        }
        Some(l) => format!("{}/s", l.per_second),
    }
}

/// A comma-separated list of addresses and CIDR networks.
pub(super) fn parse_nets(v: &str) -> Result<Vec<IpNet>, String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(parse_net).collect()
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?;
    let full = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => full,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= full)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0-{full}"))?,
    };
    Ok(IpNet { addr, prefix })
}

pub(super) fn render_nets(nets: &[IpNet]) -> String {
    nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The `[route.NAME]` section of a route, as `to_ini` writes it.
pub(super) fn render(route: &RouteConfig) -> String {
    let mut out = format!("\n[route.{}]\nprefix = {}\n", route.name, route.prefix);
    let servers: Vec<String> = route.servers.iter().map(BackendAddr::written).collect();
    out.push_str(&format!("servers = {}\n", servers.join(", ")));
    out.push_str(&format!("balance = {}\n", route.balance.name()));
    out.push_str(&format!("strip_prefix = {}\n", route.strip_prefix));
    match &route.auth {
        RouteAuth::None => out.push_str("auth = none\n"),
        RouteAuth::Jwt => out.push_str("auth = jwt\n"),
        RouteAuth::Request(url) => out.push_str(&format!("auth = request\nauth_url = {}\n", url.url)),
    }
    if !route.auth_cache.is_zero() {
        out.push_str(&format!("auth_cache_secs = {}\n", render_duration(route.auth_cache)));
    }
    if let Some(limit) = route.rate_limit {
        out.push_str(&format!("rate_limit = {}\nrate_burst = {}\n", render_rate(Some(limit)), limit.burst));
    }
    if let Some(path) = &route.health_path {
        out.push_str(&format!("health_path = {path}\n"));
    }
    if route.expose_auth {
        out.push_str("expose_auth = true\n");
    }
    if !route.cache {
        out.push_str("cache = off\n");
    }
    if let Some(compress) = route.compress {
        out.push_str(if compress { "compress = on\n" } else { "compress = off\n" });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const SEED: &str =
        "[DEFAULT]\nip_server1 = 127.0.0.1:9001\n\n[route.users]\nprefix = /users/\nservers = 127.0.0.1:5100\n\n\
        [route.games]\nprefix = /games/\nservers = 127.0.0.1:5101, 127.0.0.1:5102, 127.0.0.1:5103\nauth = request\n\
        auth_url = http://127.0.0.1:5100/auth\nstrip_prefix = false\nbalance = round_robin\n";

    #[test]
    fn cache_and_compress_switches_load_and_round_trip() {
        let text = "[route.live]\nprefix = /live/\nservers = 127.0.0.1:1\ncache = off\ncompress = on\n";
        let config = Config::from_ini_str(text, "r.ini").unwrap();
        assert_eq!((config.routes[0].cache, config.routes[0].compress), (false, Some(true)));
        assert_eq!(Config::from_ini_str(&config.to_ini(), "again"), Ok(config));
        let plain = Config::from_ini_str(SEED, "g.ini").unwrap();
        assert_eq!((plain.routes[0].cache, plain.routes[0].compress), (true, None));
        let bad = Config::from_ini_str("[route.x]\nprefix = /x\nservers = 127.0.0.1:1\ncache = maybe\n", "b.ini");
        assert!(bad.is_err_and(|e| e.to_string().contains("cache")));
    }

    #[test]
    fn the_issue_example_loads_and_round_trips() {
        let config = Config::from_ini_str(SEED, "g.ini").unwrap();
        assert_eq!(config.routes.len(), 2);
        let games = &config.routes[1];
        assert_eq!((games.name.as_str(), games.prefix.as_str(), games.servers.len()), ("games", "/games/", 3));
        let RouteAuth::Request(url) = &games.auth else { panic!("auth = request") };
        assert_eq!((url.server.addr.port(), url.path.as_str(), url.host.as_str()), (5100, "/auth", "127.0.0.1:5100"));
        assert!(!url.server.tls);
        assert_eq!(Config::from_ini_str(&config.to_ini(), "again.ini").unwrap(), config);
        // https://: TLS, port 443 unless written; other schemes are refused.
        let https = parse_auth_url("https://127.0.0.1/check?x=1").unwrap();
        assert_eq!((https.server.tls, https.server.addr.port(), https.path.as_str()), (true, 443, "/check?x=1"));
        assert!(parse_auth_url("ftp://127.0.0.1/auth").unwrap_err().contains("http:// or https://"));
    }

    #[test]
    fn route_errors_name_the_section_and_line() {
        let err = |text: &str| Config::from_ini_str(text, "g.ini").unwrap_err().to_string();
        assert_eq!(
            err("[route.a]\nprefix = /a/\nservers = 127.0.0.1:1\nbalance = fastest\n"),
            "g.ini:4: [route.a] balance: \"fastest\" is not a policy: round_robin, least_conn, random_two or ip_hash"
        );
        assert_eq!(
            err("[route.a]\nservers = 127.0.0.1:1\n"),
            "g.ini:1: [route.a]: has no prefix (e.g. prefix = /games/)"
        );
        assert!(err("[route.a]\nprefix = /a/\nservers = 127.0.0.1:1\nauth = request\n").contains("needs auth_url"));
        assert!(err("[route.a]\nprefix = /a/\nservers = 127.0.0.1:1\nprefx = 1\n")
            .starts_with("g.ini:4: [route.a] prefx: unknown route key"));
        assert!(err("[route.a]\nprefix = /a/\nservers = x:1:2\n").starts_with("g.ini:3: [route.a] servers:"));
        assert!(err(
            "[route.a]\nprefix = /a/\nservers = 127.0.0.1:1\n[route.b]\nprefix = /a/\nservers = 127.0.0.1:2\n"
        )
        .contains("already the prefix of [route.a]"));
    }

    #[test]
    fn nets_and_rates() {
        let nets = parse_nets("10.0.0.0/8, 203.0.113.7, 2001:db8::/32").unwrap();
        assert!(nets[0].contains("10.200.1.1".parse().unwrap()));
        assert!(!nets[0].contains("11.0.0.1".parse().unwrap()));
        assert!(nets[1].contains("203.0.113.7".parse().unwrap()));
        assert!(nets[0].contains("::ffff:10.1.2.3".parse().unwrap()), "IPv4-mapped IPv6 clients match IPv4 nets");
        assert!(nets[2].contains("2001:db8::1".parse().unwrap()));
        assert!(parse_nets("10.0.0.0/33").is_err());
        assert_eq!(render_nets(&nets), "10.0.0.0/8, 203.0.113.7, 2001:db8::/32");
        assert_eq!(parse_rate("50/s").unwrap(), Some((50.0, 0)));
        assert_eq!(parse_rate("30/m").unwrap(), Some((0.5, 0)));
        assert_eq!(parse_rate("off").unwrap(), None);
        assert!(parse_rate("fast").is_err());
        let cfg = Config::from_ini_str("rate_limit = 30/m\nrate_burst = 5\ndeny = 10.0.0.0/8\n", "r.ini").unwrap();
        assert_eq!(cfg.rate_limit, Some(RateLimit { per_second: 0.5, burst: 5 }));
        assert_eq!(Config::from_ini_str(&cfg.to_ini(), "again.ini").unwrap(), cfg);
    }
}
