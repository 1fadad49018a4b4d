//! The validated configuration: [`Config`], one typed field per key of `parser.ini`, and the default
//! each field keeps when its key is left out. Reading and writing the file is the parent module's job.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::access_log::{AccessLogFormat, AccessLogTarget};
use super::routes::{IpNet, RateLimit, RouteConfig};
use super::tls::TlsSite;
use super::values::BackendAddr;

/// The validated configuration shared by both binaries.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `bind`: address the proxy listens on.
    pub bind: IpAddr,
    /// `port`: data-plane port.
    pub port: u16,
    /// `threads`: the number of event loops; [`THREADS_AUTO`] for one per core (read it through
    /// [`Config::thread_count`]).
    pub threads: usize,
    /// `max_conn`: most client connections held at once; past it new ones wait in the listen backlog.
    pub max_conn: usize,
    /// `buffer_size`: I/O buffer per connection, in bytes.
    pub buffer_size: usize,
    /// `max_header_bytes`: largest request head accepted (431 past it).
    pub max_header_bytes: usize,
    /// `max_headers`: most header fields in one request head (431 past it).
    pub max_headers: usize,
    /// `max_body_bytes`: largest request body accepted (413 past it).
    pub max_body_bytes: u64,
    /// `underscores_in_headers`: forward client header fields whose names contain `_` (off: dropped).
    pub underscores_in_headers: bool,
    /// `ttl`: freshness given to cacheable responses that have a validator but no explicit lifetime,
    /// and the cap on every cached lifetime; zero turns the cache off.
    pub ttl: Duration,
    /// `cache_max_bytes`: memory for cached responses.
    pub cache_max_bytes: usize,
    /// `cache_max_object_bytes`: largest response body the cache keeps.
    pub cache_max_object_bytes: usize,
    /// `strip_targeted_cache_control`: `CDN-Cache-Control` and `Pibl-Cache-Control`, which pibl
    /// obeys, are not passed on to clients.
    pub strip_targeted_cache_control: bool,
    /// `compress`: stored text-like answers are kept gzip- and brotli-encoded too, and served so to
    /// clients that accept it.
    pub compress: bool,
    /// `compress_min_bytes`: smaller bodies are not compressed.
    pub compress_min_bytes: u64,
    /// `ip_server1..N`: the default backend pool, in order.
    pub backends: Vec<BackendAddr>,
    /// `header_timeout`: time a client has to send a complete request head.
    pub header_timeout: Duration,
    /// `keepalive_timeout`: idle time after which a keep-alive client connection is closed.
    pub keepalive_timeout: Duration,
    /// `client_timeout`: per read/write on the client socket while a request is in flight.
    pub client_timeout: Duration,
    /// `connect_timeout`: time to open a connection to a backend.
    pub connect_timeout: Duration,
    /// `backend_timeout`: per read/write on a backend connection; a backend silent this long gives 504.
    pub backend_timeout: Duration,
    /// `tunnel_timeout`: idle time after which a WebSocket (or other upgraded) tunnel is closed.
    pub tunnel_timeout: Duration,
    /// `backend_cooldown`: how long a backend that refused a connection stays out of rotation.
    pub backend_cooldown: Duration,
    /// `backend_pool_size`: idle keep-alive connections kept per backend.
    pub backend_pool_size: usize,
    /// `shutdown_grace`: how long in-flight requests may run after Ctrl-C / SIGTERM.
    pub shutdown_grace: Duration,
    /// `access_log`: one log line per request.
    pub access_log: bool,
    /// `access_log_format`: seed, combined or json.
    pub access_log_format: AccessLogFormat,
    /// `access_log_file`: the logger (empty), stdout (`-`) or a file reopened on SIGUSR1.
    pub access_log_file: AccessLogTarget,
    /// `log_level`: error, warn, info, debug or trace.
    pub log_level: log::LevelFilter,
    /// `api_port`: management API port.
    pub api_port: u16,
    /// `database`: SQLite file of the management API, or a `postgres://` URL shared by several
    /// instances (typed by `config::Database::from_setting`; `PIBL_DATABASE_URL` overrides it).
    pub database: PathBuf,
    /// `rate_limit` / `rate_burst`: requests per client IP, for every route (`None` = unlimited).
    pub rate_limit: Option<RateLimit>,
    /// `max_conn_per_ip`: concurrent connections one client IP may hold (0 = no limit).
    pub max_conn_per_ip: usize,
    /// `deny`: client addresses answered 403 before anything else runs.
    pub deny: Vec<IpNet>,
    /// `allow`: when not empty, only these client addresses are served.
    pub allow: Vec<IpNet>,
    /// `trusted_proxies`: peers whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<IpNet>,
    /// `[route.NAME]` sections, in file order.
    pub routes: Vec<RouteConfig>,
    /// `api_bind`: address the management API listens on.
    pub api_bind: IpAddr,
    /// `metrics_bind`: a loopback address and port serving only `/metrics`; `None` = on the API port.
    pub metrics_bind: Option<SocketAddr>,
    /// `jwt_secret`: HS256 signing secret; empty = a random one kept in the database.
    pub jwt_secret: String,
    /// `jwt_secret_file`: a file (mode 0600) holding the signing secret, instead of the database.
    pub jwt_secret_file: Option<PathBuf>,
    /// `jwt_ttl`: lifetime of an access token.
    pub jwt_ttl: Duration,
    /// `admins`: e-mail addresses allowed to see and lift lock-outs.
    pub admins: Vec<String>,
    /// `lockout_secs`: how long 5 failed logins in a row block an e-mail address.
    pub lockout_secs: Duration,
    /// `auth_rate`: requests a minute one client IP may make to `/api/auth` and `/api/users`; 0 = no limit.
    pub auth_rate: u32,
    /// `health_interval`: time between two active health checks of each backend.
    pub health_interval: Duration,
    /// `health_path`: path checked on the `ip_serverN` backends; empty = no active checks for them.
    pub health_path: String,
    /// `log_retention`: execution-log entries kept per app (the oldest go first).
    pub log_retention: usize,
    /// `purge_interval`: how often apps left without endpoints are deleted.
    pub purge_interval: Duration,
    /// `endpoint_allow`: networks an app endpoint may point at (pibl's own ports, link-local,
    /// metadata and unspecified addresses are refused whatever it says).
    pub endpoint_allow: Vec<IpNet>,
    /// `metrics_auth`: whether `/metrics` on the API port needs a token.
    pub metrics_auth: MetricsAuth,
    /// `app_prefix`: empty (apps at `/<appid>/`) or `/segment/` putting every app under it.
    pub app_prefix: String,
    /// `lockout_scope`: what 5 failed logins lock: the account from anywhere, or from that address.
    pub lockout_scope: LockoutScope,
    /// `tls_port`: the HTTPS listener's port; 0 = no TLS listener.
    pub tls_port: u16,
    /// `tls_cert` / `tls_key`: the default certificate chain and key (PEM); empty = none.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// `tls_dir`: a folder of `NAME.crt` + `NAME.key` pairs, each served for the names it holds.
    pub tls_dir: PathBuf,
    /// `[tls.NAME]` sections, in file order.
    pub tls_sites: Vec<TlsSite>,
    /// `acme_email`: contact address of the ACME account (empty = none given).
    pub acme_email: String,
    /// `acme_directory`: the ACME server's directory URL.
    pub acme_directory: String,
    /// `acme_domains`: names to get certificates for automatically; empty = no ACME.
    pub acme_domains: Vec<String>,
    /// `acme_dir`: where the ACME account and certificates are kept.
    pub acme_dir: PathBuf,
    /// `acme_ca_root`: a PEM root that the ACME server's own HTTPS is checked against (test CAs);
    /// empty = the system roots.
    pub acme_ca_root: PathBuf,
    /// `https_redirect`: plain-HTTP requests are answered 308 to the https URL.
    pub https_redirect: bool,
    /// `hsts`: `Strict-Transport-Security` max-age on redirects and HTTPS answers; zero = none.
    pub hsts: Duration,
    /// `backend_ca`: PEM roots `https://` backends are checked against; empty = the system roots.
    pub backend_ca: PathBuf,
    /// `backend_tls_verify`: check `https://` backends' certificates (off only for lab backends).
    pub backend_tls_verify: bool,
}

/// `lockout_scope`: what failed logins lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockoutScope {
    /// The account, from every address (the seed's rule): stops guessing, and lets anyone who knows
    /// an address lock its owner out.
    Account,
    /// The account from the address that failed: the owner elsewhere can still log in; a guesser
    /// with many addresses gets 5 tries from each (`auth_rate` still bounds each address).
    AccountIp,
}

impl LockoutScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LockoutScope::Account => "account",
            LockoutScope::AccountIp => "account+ip",
        }
    }
}

/// `metrics_auth`: who may read `/metrics` on the API port (it names every app and backend address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAuth {
    /// A token unless `api_bind` is a loopback address.
    Auto,
    /// Always a token.
    Token,
    /// Never (the operator firewalls the API port).
    Open,
}

impl MetricsAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricsAuth::Auto => "auto",
            MetricsAuth::Token => "token",
            MetricsAuth::Open => "open",
        }
    }

    /// Whether `/metrics` needs a token on an API listening on `api_bind`.
    pub fn needs_token(self, api_bind: IpAddr) -> bool {
        match self {
            MetricsAuth::Auto => !api_bind.is_loopback(),
            MetricsAuth::Token => true,
            MetricsAuth::Open => false,
        }
    }
}

/// The default `endpoint_allow`: this host and the private ranges (app servers on the same host or in
/// the same VPC), as single-host setups have always used.
pub const DEFAULT_ENDPOINT_ALLOW: &str = "127.0.0.0/8, ::1, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7";

/// Let's Encrypt's production directory, `acme_directory`'s default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 8080,
            threads: THREADS_AUTO,
            max_conn: 10_000,
            buffer_size: 8192,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 16 * 1024 * 1024,
            ttl: Duration::from_secs(60),
            cache_max_bytes: 64 * 1024 * 1024,
            cache_max_object_bytes: 1024 * 1024,
            strip_targeted_cache_control: false,
            compress: false,
            compress_min_bytes: 1024,
            backends: default_backends(),
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            client_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            backend_timeout: Duration::from_secs(30),
            tunnel_timeout: Duration::from_secs(3600),
            backend_cooldown: Duration::from_secs(10),
            backend_pool_size: 256,
            shutdown_grace: Duration::from_secs(10),
            access_log: true,
            access_log_format: AccessLogFormat::Seed,
            access_log_file: AccessLogTarget::Logger,
            log_level: log::LevelFilter::Info,
            api_port: 5000,
            database: PathBuf::from("pibl.db"),
            rate_limit: None,
            max_conn_per_ip: 0,
            underscores_in_headers: false,
            deny: Vec::new(),
            allow: Vec::new(),
            trusted_proxies: Vec::new(),
            routes: Vec::new(),
            api_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            metrics_bind: None,
            jwt_secret: String::new(),
            jwt_secret_file: None,
            jwt_ttl: Duration::from_secs(300),
            admins: Vec::new(),
            lockout_secs: Duration::from_secs(900),
            auth_rate: 30,
            health_interval: Duration::from_secs(5),
            health_path: String::new(),
            log_retention: 10_000,
            purge_interval: Duration::from_secs(60),
            endpoint_allow: super::routes::parse_nets(DEFAULT_ENDPOINT_ALLOW).unwrap_or_default(),
            metrics_auth: MetricsAuth::Auto,
            app_prefix: String::new(),
            lockout_scope: LockoutScope::Account,
            tls_port: 0,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_dir: PathBuf::new(),
            tls_sites: Vec::new(),
            acme_email: String::new(),
            acme_directory: LETS_ENCRYPT.to_string(),
            acme_domains: Vec::new(),
            acme_dir: PathBuf::from("acme"),
            acme_ca_root: PathBuf::new(),
            https_redirect: false,
            hsts: Duration::ZERO,
            backend_ca: PathBuf::new(),
            backend_tls_verify: true,
        }
    }
}

/// `threads = auto`: one event loop per core.
pub const THREADS_AUTO: usize = 0;

impl Config {
    /// The number of event loops to start: `threads`, or one per core for `auto`.
    pub fn thread_count(&self) -> usize {
        match self.threads {
            THREADS_AUTO => std::thread::available_parallelism().map_or(2, |n| n.get()),
            count => count,
        }
    }
}

/// The backends a fresh `parser.ini` lists: three servers on this host, as in the seed's three-server setup.
fn default_backends() -> Vec<BackendAddr> {
    (9001..=9003)
        .map(|port| BackendAddr::plain(format!("127.0.0.1:{port}"), SocketAddr::from(([127, 0, 0, 1], port))))
        .collect()
}
