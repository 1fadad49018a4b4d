//! The key table of `[DEFAULT]`: one entry per key with its name, its documentation, how its text is
//! parsed into a [`Config`] field and how the field is written back. One table drives parsing,
//! rendering and documentation, so a key cannot be read without also being written and explained.

use super::access_log::{parse_access_log_file, parse_access_log_format, render_access_log_file};
use super::routes::{parse_nets, parse_rate, render_nets, render_rate, RateLimit};
use super::settings::{Config, THREADS_AUTO};
use super::settings::{LockoutScope, MetricsAuth};
use super::tls::parse_names;
use super::values::{
    parse_admins, parse_bind, parse_bool, parse_buffer_bytes, parse_count, parse_database, parse_duration,
    parse_health_path, parse_log_level, parse_metrics_bind, parse_port, parse_size, parse_timeout, render_duration,
    render_path, render_size,
};
use std::path::PathBuf;

/// A file or folder name; empty is allowed and means "none".
fn path(v: &str) -> PathBuf {
    PathBuf::from(v.trim())
}

/// `tls_port`: a port, or 0 / off for no TLS listener.
fn parse_tls_port(v: &str) -> Result<u16, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "off" => Ok(0),
        _ => parse_port(v),
    }
}

/// `acme_directory`: an https URL (http only for a test server on this machine).
fn parse_acme_directory(v: &str) -> Result<String, String> {
    let t = v.trim();
    let local = ["http://127.0.0.1", "http://localhost", "http://[::1]"].iter().any(|p| t.starts_with(p));
    if !(t.starts_with("https://") || local) || t.contains(char::is_whitespace) {
        return Err(format!("{v:?} is not an ACME directory URL (https://..., e.g. Let's Encrypt's)"));
    }
    Ok(t.to_string())
}

/// `app_prefix`: empty, or one or more path segments written `/apps/` (the slashes are added when
/// left out).
fn parse_app_prefix(v: &str) -> Result<String, String> {
    let segments: Vec<&str> = v.trim().split('/').filter(|s| !s.is_empty()).collect();
    let plain =
        |s: &&str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)) && *s != "." && *s != "..";
    if !segments.iter().all(plain) {
        return Err(format!("{v:?} is not a path such as /apps/ (letters, digits, '-', '_', '.', '~')"));
    }
    Ok(if segments.is_empty() { String::new() } else { format!("/{}/", segments.join("/")) })
}

/// `threads`: a count, or `auto` for one per core.
fn parse_threads(v: &str) -> Result<usize, String> {
    match v.trim() {
        "auto" => Ok(THREADS_AUTO),
        _ => parse_count(v, 1, 1024).map_err(|e| format!("{e}, or auto")),
    }
}

/// One key of `[DEFAULT]`: its name, its documentation, and how its text becomes a `Config` field and back.
pub(super) struct KeySpec {
    pub(super) name: &'static str,
    /// One or two comment lines; the default is appended by `to_ini`.
    pub(super) help: &'static str,
    pub(super) apply: fn(&mut Config, &str) -> Result<(), String>,
    pub(super) render: fn(&Config) -> String,
}

/// One item of `parser.ini`'s `[DEFAULT]` section, in the order the file is written.
pub(super) enum Entry {
    Group(&'static str),
    Key(KeySpec),
    /// The `ip_serverN` keys, which are a list rather than one key.
    Backends,
}

/// The top of every written `parser.ini`: how to read and write the file.
pub(super) const INI_HEADER: &str = "\
# parser.ini: configuration of pibl, the reverse proxy and load balancer.
# Written by `parser` (cargo run --release --bin parser); edit the values, then restart the proxy.
#
# One `key = value` per line. Comments start with # or ; at the very start of a line, never after
# a value. Every key is optional: a key left out takes the default given in its comment.
# Durations: a plain number is seconds (60), or give a unit: 500ms, 10s, 2m, 1h.
# Sizes: a plain number is bytes, or give a unit: k, m, g for KiB, MiB, GiB (16m).
";

/// The comment above the `ip_serverN` keys.
pub(super) const BACKENDS_HELP: &str = "\
Backend servers requests are spread over: ip_server1, ip_server2, ... = host or host:port
(port 80 if left out; IPv6 as [::1]:8080). Host names are resolved at start-up.
https://host[:port] speaks TLS to the backend (port 443; checked against backend_ca).";

/// Every key of `[DEFAULT]` but `ip_serverN`, grouped as the written file shows them.
pub(super) const LAYOUT: &[Entry] = &[
    Entry::Group("Listener"),
    Entry::Key(KeySpec {
        name: "bind",
        help: "Address to listen on: 0.0.0.0 = every IPv4 interface, :: = every IPv6 one,\n\
               127.0.0.1 = this machine only.",
        apply: |c, v| parse_bind(v).map(|x| c.bind = x),
        render: |c| c.bind.to_string(),
    }),
    Entry::Key(KeySpec {
        name: "port",
        help: "Port clients connect to (1-65535).",
        apply: |c, v| parse_port(v).map(|x| c.port = x),
        render: |c| c.port.to_string(),
    }),
    Entry::Group("Workers and limits"),
    Entry::Key(KeySpec {
        name: "threads",
        help: "Event loops serving connections (1-1024, or auto): each is a thread that owns its\n\
               client and backend sockets and serves any number of connections; auto = one per\n\
               core, which is what they need (more only add switching).",
        apply: |c, v| parse_threads(v).map(|x| c.threads = x),
        render: |c| match c.threads {
            THREADS_AUTO => "auto".to_string(),
            count => count.to_string(),
        },
    }),
    Entry::Key(KeySpec {
        name: "max_conn",
        help: "Most client connections served at once (1-1000000);\n\
               more wait in the operating system's listen backlog.",
        apply: |c, v| parse_count(v, 1, 1_000_000).map(|x| c.max_conn = x),
        render: |c| c.max_conn.to_string(),
    }),
    Entry::Key(KeySpec {
        name: "buffer_size",
        help: "I/O buffer per connection, in bytes (1024-1048576, i.e. 1k-1m).",
        apply: |c, v| parse_buffer_bytes(v).map(|x| c.buffer_size = x),
        render: |c| render_size(c.buffer_size as u64),
    }),
    Entry::Key(KeySpec {
        name: "max_header_bytes",
        help: "Largest request head (request line and headers) in bytes (1024-1048576);\n\
               a bigger one is refused with 431.",
        apply: |c, v| parse_buffer_bytes(v).map(|x| c.max_header_bytes = x),
        render: |c| render_size(c.max_header_bytes as u64),
    }),
    Entry::Key(KeySpec {
        name: "max_headers",
        help: "Most header fields in one request (1-1000); more are refused with 431.",
        apply: |c, v| parse_count(v, 1, 1000).map(|x| c.max_headers = x),
        render: |c| c.max_headers.to_string(),
    }),
    Entry::Key(KeySpec {
        name: "max_body_bytes",
        help: "Largest request body in bytes (k, m, g allowed); a bigger one is refused with 413.",
        apply: |c, v| parse_size(v).map(|x| c.max_body_bytes = x),
        render: |c| render_size(c.max_body_bytes),
    }),
    Entry::Key(KeySpec {
        name: "underscores_in_headers",
        help: "Forward request header fields whose names contain `_` (on/off). Off, they are dropped,\n\
               as nginx does: CGI-style servers read X_User as X-User, so a client could forge one.",
        apply: |c, v| parse_bool(v).map(|x| c.underscores_in_headers = x),
        render: |c| if c.underscores_in_headers { "on".into() } else { "off".into() },
    }),
    Entry::Group("Timeouts (seconds, or 500ms, 2m, 1h; all must be above 0)"),
    Entry::Key(KeySpec {
        name: "header_timeout",
        help: "Time a client has to send a complete request head.",
        apply: |c, v| parse_timeout(v).map(|x| c.header_timeout = x),
        render: |c| render_duration(c.header_timeout),
    }),
    Entry::Key(KeySpec {
        name: "keepalive_timeout",
        help: "Idle time after which a keep-alive client connection is closed.",
        apply: |c, v| parse_timeout(v).map(|x| c.keepalive_timeout = x),
        render: |c| render_duration(c.keepalive_timeout),
    }),
    Entry::Key(KeySpec {
        name: "client_timeout",
        help: "Longest wait for each read or write on a client socket\n\
               while a request is in flight.",
        apply: |c, v| parse_timeout(v).map(|x| c.client_timeout = x),
        render: |c| render_duration(c.client_timeout),
    }),
    Entry::Key(KeySpec {
        name: "connect_timeout",
        help: "Time allowed to open a connection to a backend.",
        apply: |c, v| parse_timeout(v).map(|x| c.connect_timeout = x),
        render: |c| render_duration(c.connect_timeout),
    }),
    Entry::Key(KeySpec {
        name: "backend_timeout",
        help: "Longest wait for each read or write on a backend connection;\n\
               past it the client gets 504.",
        apply: |c, v| parse_timeout(v).map(|x| c.backend_timeout = x),
        render: |c| render_duration(c.backend_timeout),
    }),
    Entry::Key(KeySpec {
        name: "tunnel_timeout",
        help: "Idle time after which a WebSocket (or other upgraded) connection is closed.",
        apply: |c, v| parse_timeout(v).map(|x| c.tunnel_timeout = x),
        render: |c| render_duration(c.tunnel_timeout),
    }),
    Entry::Key(KeySpec {
        name: "shutdown_grace",
        help: "After Ctrl-C or SIGTERM, how long requests in flight may still run\n\
               before the proxy exits.",
        apply: |c, v| parse_timeout(v).map(|x| c.shutdown_grace = x),
        render: |c| render_duration(c.shutdown_grace),
    }),
    Entry::Group("Backends"),
    Entry::Backends,
    Entry::Key(KeySpec {
        name: "backend_pool_size",
        help: "Idle keep-alive connections kept open to each backend for reuse, by each event loop\n\
               (0-10000; 0 = a new connection for every request). Only connections that many\n\
               requests needed at once are kept, for 4 s at most: a lower cap makes a busy proxy\n\
               close connections just to open new ones.",
        apply: |c, v| parse_count(v, 0, 10_000).map(|x| c.backend_pool_size = x),
        render: |c| c.backend_pool_size.to_string(),
    }),
    Entry::Key(KeySpec {
        name: "backend_cooldown",
        help: "How long a backend that refused a connection is left out of rotation (a duration;\n\
               0 = try it again at once).",
        apply: |c, v| parse_duration(v).map(|x| c.backend_cooldown = x),
        render: |c| render_duration(c.backend_cooldown),
    }),
    Entry::Group("Cache"),
    Entry::Key(KeySpec {
        name: "ttl",
        help: "Response cache (RFC 9111, GET only). Freshness comes from Cache-Control s-maxage/max-age,\n\
               then Expires; a response with neither but with a validator (ETag or Last-Modified) is\n\
               fresh for ttl, one with no validator either is not cached. ttl also caps every\n\
               lifetime. A duration; 0 turns the cache off.",
        apply: |c, v| parse_duration(v).map(|x| c.ttl = x),
        render: |c| render_duration(c.ttl),
    }),
    Entry::Key(KeySpec {
        name: "cache_max_bytes",
        help: "Memory for cached responses, in bytes (k, m, g allowed); the least recently used\n\
               responses are dropped to stay under it.",
        apply: |c, v| parse_size(v).map(|x| c.cache_max_bytes = x as usize),
        render: |c| render_size(c.cache_max_bytes as u64),
    }),
    Entry::Key(KeySpec {
        name: "cache_max_object_bytes",
        help: "Largest response body kept in the cache (k, m, g allowed); bigger ones stream\n\
               through uncached.",
        apply: |c, v| parse_size(v).map(|x| c.cache_max_object_bytes = x as usize),
        render: |c| render_size(c.cache_max_object_bytes as u64),
    }),
    Entry::Key(KeySpec {
        name: "strip_targeted_cache_control",
        help: "A backend's Pibl-Cache-Control, else its CDN-Cache-Control (RFC 9213), rules the cache\n\
               instead of Cache-Control. on = pibl keeps those two fields to itself (on or off).",
        apply: |c, v| parse_bool(v).map(|x| c.strip_targeted_cache_control = x),
        render: |c| if c.strip_targeted_cache_control { "on" } else { "off" }.to_string(),
    }),
    Entry::Key(KeySpec {
        name: "compress",
        help: "on = cached text, JSON, JavaScript, SVG and similar answers are also kept gzip- and\n\
               brotli-encoded and served so to clients whose Accept-Encoding takes it (on or off).",
        apply: |c, v| parse_bool(v).map(|x| c.compress = x),
        render: |c| if c.compress { "on" } else { "off" }.to_string(),
    }),
    Entry::Key(KeySpec {
        name: "compress_min_bytes",
        help: "Smallest body compressed, in bytes (k, m, g allowed).",
        apply: |c, v| parse_size(v).map(|x| c.compress_min_bytes = x),
        render: |c| render_size(c.compress_min_bytes),
    }),
    Entry::Group("Limits and access"),
    Entry::Key(KeySpec {
        name: "rate_limit",
        help: "Requests each client IP may make, as N/s or N/m (e.g. 50/s); past it the answer is 429\n\
               with Retry-After. off = no limit. A [route.NAME] section may set its own.",
        apply: |c, v| {
            parse_rate(v).map(|r| {
                c.rate_limit =
                    r.map(|(per_second, _)| RateLimit { per_second, burst: c.rate_limit.map_or(0, |l| l.burst) })
            })
        },
        render: |c| render_rate(c.rate_limit),
    }),
    Entry::Key(KeySpec {
        name: "rate_burst",
        help: "Requests a client may send at once above rate_limit (0 = one second's worth).",
        apply: |c, v| {
            parse_count(v, 0, 1_000_000).map(|b| {
                if let Some(limit) = c.rate_limit.as_mut() {
                    limit.burst = b as u32;
                }
            })
        },
        render: |c| c.rate_limit.map_or(0, |l| l.burst).to_string(),
    }),
    Entry::Key(KeySpec {
        name: "max_conn_per_ip",
        help: "Connections one client IP may hold open at once; more are refused with 429.\n\
               0 = no limit.",
        apply: |c, v| parse_count(v, 0, 1_000_000).map(|x| c.max_conn_per_ip = x),
        render: |c| c.max_conn_per_ip.to_string(),
    }),
    Entry::Key(KeySpec {
        name: "deny",
        help: "Client addresses refused with 403, comma-separated, IPv4 or IPv6, single or CIDR\n\
               (e.g. 10.0.0.0/8, 203.0.113.7, 2001:db8::/32). Empty = none.",
        apply: |c, v| parse_nets(v).map(|x| c.deny = x),
        render: |c| render_nets(&c.deny),
    }),
    Entry::Key(KeySpec {
        name: "allow",
        help: "When set, only these client addresses are served (same form as deny; deny wins).",
        apply: |c, v| parse_nets(v).map(|x| c.allow = x),
        render: |c| render_nets(&c.allow),
    }),
    Entry::Key(KeySpec {
        name: "trusted_proxies",
        help: "Proxies in front of pibl whose X-Forwarded-For is believed when deciding the client\n\
               address for deny/allow and rate limits.\n\
               Empty = the connection's address is the client.",
        apply: |c, v| parse_nets(v).map(|x| c.trusted_proxies = x),
        render: |c| render_nets(&c.trusted_proxies),
    }),
    Entry::Group("Logging"),
    Entry::Key(KeySpec {
        name: "access_log",
        help: "One log line per request: on or off (true/false, yes/no, 1/0 also work).",
        apply: |c, v| parse_bool(v).map(|x| c.access_log = x),
        render: |c| if c.access_log { "on" } else { "off" }.to_string(),
    }),
    Entry::Key(KeySpec {
        name: "access_log_format",
        help: "Access log line: seed (\"[*] Request done: ...\", as the original proxy),\n\
               combined (the Apache/nginx combined format) or json (one object per line).",
        apply: |c, v| parse_access_log_format(v).map(|x| c.access_log_format = x),
        render: |c| c.access_log_format.name().to_string(),
    }),
    Entry::Key(KeySpec {
        name: "access_log_file",
        help: "Where access log lines go: empty = the log on stderr, - = standard output,\n\
               or a file, appended to and reopened on SIGUSR1 (for logrotate).",
        apply: |c, v| parse_access_log_file(v).map(|x| c.access_log_file = x),
        render: |c| render_access_log_file(&c.access_log_file),
    }),
    Entry::Key(KeySpec {
        name: "log_level",
        help: "Least severe messages logged: off, error, warn, info, debug or trace.",
        apply: |c, v| parse_log_level(v).map(|x| c.log_level = x),
        render: |c| c.log_level.as_str().to_ascii_lowercase(),
    }),
    Entry::Group("Management API"),
    Entry::Key(KeySpec {
        name: "api_port",
        help: "Port of the management API (1-65535).",
        apply: |c, v| parse_port(v).map(|x| c.api_port = x),
        render: |c| c.api_port.to_string(),
    }),
    Entry::Key(KeySpec {
        name: "database",
        help: "SQLite file of the management API (a relative path starts at the proxy's working\n\
               directory), or postgres://user:password@host:port/dbname for a PostgreSQL database\n\
               that several pibl instances share (see the README's \"Several instances\").\n\
               PIBL_DATABASE_URL in the environment overrides it (no password in files).",
        apply: |c, v| parse_database(v).map(|x| c.database = x),
        render: |c| render_path(&c.database),
    }),
    Entry::Key(KeySpec {
        name: "api_bind",
        help: "Address the management API listens on (127.0.0.1 = this machine only;\n\
               0.0.0.0 to reach it from elsewhere).",
        apply: |c, v| parse_bind(v).map(|x| c.api_bind = x),
        render: |c| c.api_bind.to_string(),
    }),
    Entry::Key(KeySpec {
        name: "metrics_bind",
        help: "Loopback address:port that serves only GET /metrics (e.g. 127.0.0.1:9100), away from\n\
               the API. Empty = /metrics is served on the API port.",
        apply: |c, v| parse_metrics_bind(v).map(|x| c.metrics_bind = x),
        render: |c| c.metrics_bind.map(|a| a.to_string()).unwrap_or_default(),
    }),
    Entry::Key(KeySpec {
        name: "jwt_secret",
        help: "Secret that signs access tokens (HS256). Empty = a random secret made on first start\n\
               and kept in the database (shared by the instances of one PostgreSQL database).",
        apply: |c, v| {
            c.jwt_secret = v.trim().to_string();
            Ok(())
        },
        render: |c| c.jwt_secret.clone(),
    }),
    Entry::Key(KeySpec {
        name: "jwt_secret_file",
        help: "File holding the signing secret (at least 32 characters, mode 0600), so it is not kept\n\
               in the database. The environment variable PIBL_JWT_SECRET overrides both.\n\
               Empty = unused.",
        apply: |c, v| {
            c.jwt_secret_file = Some(v.trim()).filter(|p| !p.is_empty()).map(std::path::PathBuf::from);
            Ok(())
        },
        render: |c| c.jwt_secret_file.as_deref().map(render_path).unwrap_or_default(),
    }),
    Entry::Key(KeySpec {
        name: "jwt_ttl",
        help: "How long an access token from /api/auth stays valid.",
        apply: |c, v| parse_timeout(v).map(|x| c.jwt_ttl = x),
        render: |c| render_duration(c.jwt_ttl),
    }),
    Entry::Key(KeySpec {
        name: "admins",
        help: "E-mail addresses of the admins, comma-separated. Listing grants nothing: rights come\n\
               from `proxy --admin add EMAIL` on this host; a listed address without them\n\
               is warned about at start-up.",
        apply: |c, v| parse_admins(v).map(|x| c.admins = x),
        render: |c| c.admins.join(", "),
    }),
    Entry::Key(KeySpec {
        name: "endpoint_allow",
        help: "Networks app endpoints may point at; narrow it with open registration (e.g. to the app\n\
               servers' subnet). pibl's own ports, link-local, metadata and unspecified addresses are\n\
               refused whatever it says.\n\
               CIDR list.",
        apply: |c, v| parse_nets(v).map(|x| c.endpoint_allow = x),
        render: |c| render_nets(&c.endpoint_allow),
    }),
    Entry::Key(KeySpec {
        name: "app_prefix",
        help: "Path every app is served under, e.g. /apps/ (then app x is at /apps/x/), so no app id\n\
               can collide with the default pool's paths. Empty = apps at /<appid>/.",
        apply: |c, v| parse_app_prefix(v).map(|x| c.app_prefix = x),
        render: |c| c.app_prefix.clone(),
    }),
    Entry::Key(KeySpec {
        name: "metrics_auth",
        help: "Whether /metrics on the API port needs a token: auto (when api_bind is not loopback),\n\
               token (always) or open (never; firewall the port).",
        apply: |c, v| {
            c.metrics_auth = match v.trim().to_ascii_lowercase().as_str() {
                "auto" => MetricsAuth::Auto,
                "token" => MetricsAuth::Token,
                "open" => MetricsAuth::Open,
                _ => return Err(format!("{v:?} is not auto, token or open")),
            };
            Ok(())
        },
        render: |c| c.metrics_auth.as_str().to_string(),
    }),
    Entry::Key(KeySpec {
        name: "lockout_secs",
        help: "How long 5 failed /api/auth attempts in a row block that address (a duration).",
        apply: |c, v| parse_timeout(v).map(|x| c.lockout_secs = x),
        render: |c| render_duration(c.lockout_secs),
    }),
    Entry::Key(KeySpec {
        name: "lockout_scope",
        help: "What those failures lock: account (from every address; anyone who knows an address can\n\
               lock its owner out) or account+ip (only from the address that failed).",
        apply: |c, v| {
            c.lockout_scope = match v.trim().to_ascii_lowercase().as_str() {
                "account" => LockoutScope::Account,
                "account+ip" => LockoutScope::AccountIp,
                _ => return Err(format!("{v:?} is not account or account+ip")),
            };
            Ok(())
        },
        render: |c| c.lockout_scope.as_str().to_string(),
    }),
    Entry::Key(KeySpec {
        name: "auth_rate",
        help: "Requests a minute one client IP may make to /api/auth and /api/users\n\
               (0-1000000; past it 429; 0 = no limit).",
        apply: |c, v| parse_count(v, 0, 1_000_000).map(|x| c.auth_rate = x as u32),
        render: |c| c.auth_rate.to_string(),
    }),
    Entry::Key(KeySpec {
        name: "log_retention",
        help: "Execution-log entries kept per app; older ones are deleted (1-10000000).",
        apply: |c, v| parse_count(v, 1, 10_000_000).map(|x| c.log_retention = x),
        render: |c| c.log_retention.to_string(),
    }),
    Entry::Key(KeySpec {
        name: "purge_interval",
        help: "How often apps left without endpoints are deleted (a duration above 0;\n\
               the environment variable PIBL_PURGE_INTERVAL overrides it).",
        apply: |c, v| parse_timeout(v).map(|x| c.purge_interval = x),
        render: |c| render_duration(c.purge_interval),
    }),
    Entry::Group("HTTPS (TLS)"),
    Entry::Key(KeySpec {
        name: "tls_port",
        help: "Port of the HTTPS listener, beside `port` (e.g. 443); 0 = no HTTPS.",
        apply: |c, v| parse_tls_port(v).map(|x| c.tls_port = x),
        render: |c| c.tls_port.to_string(),
    }),
    Entry::Key(KeySpec {
        name: "tls_cert",
        help: "PEM certificate chain (the site's certificate first) served to clients whose name\n\
               no [tls.NAME] section or tls_dir pair claims, and to clients without SNI.",
        apply: |c, v| {
            c.tls_cert = path(v);
            Ok(())
        },
        render: |c| render_path(&c.tls_cert),
    }),
    Entry::Key(KeySpec {
        name: "tls_key",
        help: "PEM private key of tls_cert (PKCS#8, PKCS#1 or SEC1).",
        apply: |c, v| {
            c.tls_key = path(v);
            Ok(())
        },
        render: |c| render_path(&c.tls_key),
    }),
    Entry::Key(KeySpec {
        name: "tls_dir",
        help: "A folder of NAME.crt + NAME.key pairs, each served for the names in its certificate.\n\
               Empty = none.",
        apply: |c, v| {
            c.tls_dir = path(v);
            Ok(())
        },
        render: |c| render_path(&c.tls_dir),
    }),
    Entry::Key(KeySpec {
        name: "https_redirect",
        help: "on: plain-HTTP requests are answered 308 to the same URL on https (tls_port), except\n\
               ACME challenges.",
        apply: |c, v| parse_bool(v).map(|x| c.https_redirect = x),
        render: |c| if c.https_redirect { "on".into() } else { "off".into() },
    }),
    Entry::Key(KeySpec {
        name: "hsts",
        help: "Strict-Transport-Security max-age on answers over HTTPS (never over plain HTTP), e.g.\n\
               8760h for a year: browsers then go to https by themselves. 0 = no header.",
        apply: |c, v| parse_duration(v).map(|x| c.hsts = x),
        render: |c| render_duration(c.hsts),
    }),
    Entry::Key(KeySpec {
        name: "acme_domains",
        help: "Names to get one certificate for automatically over ACME, comma-separated. The\n\
               HTTP-01 check comes to `port`, which must be reachable as port 80. Renewed 30 days\n\
               before expiry. Empty = no ACME.",
        apply: |c, v| parse_names(v, false).map(|x| c.acme_domains = x),
        render: |c| c.acme_domains.join(", "),
    }),
    Entry::Key(KeySpec {
        name: "acme_email",
        help: "Contact address of the ACME account (expiry warnings); empty = none.",
        apply: |c, v| {
            parse_admins(v).and_then(|mut x| match x.len() {
                0 | 1 => {
                    c.acme_email = x.pop().unwrap_or_default();
                    Ok(())
                }
                _ => Err("give one e-mail address".to_string()),
            })
        },
        render: |c| c.acme_email.clone(),
    }),
    Entry::Key(KeySpec {
        name: "acme_directory",
        help: "The ACME server's directory URL. For trials, Let's Encrypt's staging server:\n\
               https://acme-staging-v02.api.letsencrypt.org/directory\n\
               Production is the default.",
        apply: |c, v| parse_acme_directory(v).map(|x| c.acme_directory = x),
        render: |c| c.acme_directory.clone(),
    }),
    Entry::Key(KeySpec {
        name: "acme_dir",
        help: "Folder for the ACME account and certificates (files are written mode 0600).",
        apply: |c, v| parse_database(v).map(|x| c.acme_dir = x),
        render: |c| render_path(&c.acme_dir),
    }),
    Entry::Key(KeySpec {
        name: "acme_ca_root",
        help: "PEM root the ACME server's own HTTPS is checked against, for a test CA such as Pebble;\n\
               empty = the system roots.",
        apply: |c, v| {
            c.acme_ca_root = path(v);
            Ok(())
        },
        render: |c| render_path(&c.acme_ca_root),
    }),
    Entry::Key(KeySpec {
        name: "backend_ca",
        help: "PEM roots that https:// backends' certificates are checked against;\n\
               empty = the system roots.",
        apply: |c, v| {
            c.backend_ca = path(v);
            Ok(())
        },
        render: |c| render_path(&c.backend_ca),
    }),
    Entry::Key(KeySpec {
        name: "backend_tls_verify",
        help: "off: accept any certificate from https:// backends (self-signed lab backends only;\n\
               logged as a warning at start-up).",
        apply: |c, v| parse_bool(v).map(|x| c.backend_tls_verify = x),
        render: |c| if c.backend_tls_verify { "on".into() } else { "off".into() },
    }),
    Entry::Group("Health checks"),
    Entry::Key(KeySpec {
        name: "health_interval",
        help: "Time between two active health checks (GET of the status path) of each backend.",
        apply: |c, v| parse_timeout(v).map(|x| c.health_interval = x),
        render: |c| render_duration(c.health_interval),
    }),
    Entry::Key(KeySpec {
        name: "health_path",
        help: "Path checked on the ip_server backends, e.g. /status (anything but 200 takes a backend\n\
               out of rotation until it answers 200 again). Empty = no active checks for them.",
        apply: |c, v| parse_health_path(v).map(|x| c.health_path = x),
        render: |c| c.health_path.clone(),
    }),
];

/// The table entry of `name`, if it is a `[DEFAULT]` key (`ip_serverN` is not in the table).
pub(super) fn key_spec(name: &str) -> Option<&'static KeySpec> {
    LAYOUT.iter().find_map(|entry| match entry {
        Entry::Key(spec) if spec.name == name => Some(spec),
        _ => None,
    })
}

/// The names of the table's keys, in file order.
pub(super) fn key_names() -> impl Iterator<Item = &'static str> {
    LAYOUT.iter().filter_map(|entry| match entry {
        Entry::Key(spec) => Some(spec.name),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;
    use crate::config::routes::ROUTE_KEYS;

    fn repo_file(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The first cells of the first table after `heading` in `text`: the keys that table documents.
    fn first_cells(text: &str, heading: &str) -> Vec<String> {
        let start = text.find(heading).unwrap_or_else(|| panic!("README has no {heading:?}"));
        text[start..]
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .skip(2) // the header row and the |---| row
            .filter_map(|line| line.split('|').nth(1).map(|cell| cell.trim().to_string()))
            .collect()
    }

    fn documents(cells: &[String], key: &str) -> bool {
        cells.iter().any(|cell| cell.contains(&format!("`{key}`")) || cell.contains(&format!("`{key}1..N`")))
    }

    #[test]
    fn every_key_is_documented_once() {
        let text = Config::default().to_ini();
        for name in key_names() {
            // An empty value is written `key =`, without trailing space.
            let lines =
                text.lines().filter(|l| l.starts_with(&format!("{name} = ")) || *l == format!("{name} =")).count();
            assert_eq!(lines, 1, "{name}");
        }
        assert!(text.lines().all(|l| l.len() <= 100), "keep the file readable in a terminal");
    }

    /// The README's key tables and `parser.ini.example` are written by hand (the example is regenerated
    /// by `parser`, but only when someone runs it): a key added to the table must reach both.
    #[test]
    fn every_key_is_in_the_readme_tables_and_the_example_file() {
        let readme = repo_file("README.md");
        let defaults = first_cells(&readme, "## Configuration");
        let routes = first_cells(&readme, "### Routes");
        let example = repo_file("parser.ini.example");
        let example_keys: Vec<&str> = example
            .lines()
            .filter(|line| !line.starts_with(['#', ';', '[']))
            .filter_map(|line| line.split_once('=').map(|(key, _)| key.trim()))
            .collect();

        for key in key_names().chain(["ip_server"]) {
            assert!(documents(&defaults, key), "README's configuration table does not list `{key}`");
            let in_example = if key == "ip_server" {
                example_keys.iter().any(|k| k.starts_with("ip_server"))
            } else {
                example_keys.contains(&key)
            };
            assert!(in_example, "parser.ini.example does not set `{key}`; regenerate it with `parser`");
        }
        for key in ROUTE_KEYS {
            assert!(documents(&routes, key), "README's route table does not list `{key}`");
            let commented = example.lines().any(|line| line.starts_with('#') && line.contains(&format!("{key} = ")));
            assert!(commented, "parser.ini.example does not explain the route key `{key}`");
        }
    }
}
