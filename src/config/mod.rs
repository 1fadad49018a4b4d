//! Typed configuration: the INI file (`parser.ini`) is read once, validated, and turned into a
//! [`Config`] of typed values; raw strings never leave this module.
//!
//! Data flow: `file -> rust-ini (syntax, line numbers) -> raw key/value pairs -> validated Config`.
//! The `parser` binary goes the other way: `Config -> documented INI text`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ini::Ini;

mod routes;
use crate::observe::access_log::{AccessLogFormat, AccessLogTarget};
use routes::{parse_nets, parse_rate, render_nets, render_rate};
pub use routes::{AuthUrl, Balance, IpNet, RateLimit, RouteAuth, RouteConfig};

/// One upstream server as written in the INI (`ip_serverN = host[:port]`), resolved at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendAddr {
    /// The text the user wrote, normalised to `host:port` (used in logs and the `Via`-free access log).
    pub name: String,
    /// Where pibl connects.
    pub addr: SocketAddr,
}

/// The validated configuration shared by both binaries.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `bind`: address the proxy listens on.
    pub bind: IpAddr,
    /// `port`: data-plane port.
    pub port: u16,
    /// `threads`: size of the worker pool.
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
    /// `ttl`: freshness given to cacheable responses that have a validator but no explicit lifetime,
    /// and the cap on every cached lifetime; zero turns the cache off.
    pub ttl: Duration,
    /// `cache_max_bytes`: memory for cached responses.
    pub cache_max_bytes: usize,
    /// `cache_max_object_bytes`: largest response body the cache keeps.
    pub cache_max_object_bytes: usize,
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
    /// instances (typed by `store::Database::from_setting`; `PIBL_DATABASE_URL` overrides it).
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 8080,
            threads: 64,
            max_conn: 10_000,
            buffer_size: 8192,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 16 * 1024 * 1024,
            ttl: Duration::from_secs(60),
            cache_max_bytes: 64 * 1024 * 1024,
            cache_max_object_bytes: 1024 * 1024,
            backends: default_backends(),
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            client_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            backend_timeout: Duration::from_secs(30),
            backend_cooldown: Duration::from_secs(10),
            backend_pool_size: 32,
            shutdown_grace: Duration::from_secs(10),
            access_log: true,
            access_log_format: AccessLogFormat::Seed,
            access_log_file: AccessLogTarget::Logger,
            log_level: log::LevelFilter::Info,
            api_port: 5000,
            database: PathBuf::from("pibl.db"),
            rate_limit: None,
            max_conn_per_ip: 0,
            deny: Vec::new(),
            allow: Vec::new(),
            trusted_proxies: Vec::new(),
            routes: Vec::new(),
            api_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            metrics_bind: None,
            jwt_secret: String::new(),
            jwt_ttl: Duration::from_secs(300),
            admins: Vec::new(),
            lockout_secs: Duration::from_secs(900),
            auth_rate: 30,
            health_interval: Duration::from_secs(5),
            health_path: String::new(),
            log_retention: 10_000,
            purge_interval: Duration::from_secs(60),
        }
    }
}

/// The environment variable that overrides `purge_interval`, as the seed's purge cron was configured.
pub const PURGE_INTERVAL_ENV: &str = "PIBL_PURGE_INTERVAL";
/// The environment variable that overrides `database`, so a PostgreSQL password need not sit in the file.
pub const DATABASE_URL_ENV: &str = "PIBL_DATABASE_URL";

impl Config {
    /// Applies overrides from the environment (`PIBL_PURGE_INTERVAL`, a duration such as `30` or `2m`;
    /// `PIBL_DATABASE_URL`, a `database` value). The binary calls it after loading the file; tests leave it out.
    pub fn apply_env(&mut self) -> Result<(), String> {
        if let Ok(value) = std::env::var(PURGE_INTERVAL_ENV) {
            self.purge_interval = parse_timeout(&value).map_err(|e| format!("{PURGE_INTERVAL_ENV}: {e}"))?;
        }
        if let Some(value) = std::env::var(DATABASE_URL_ENV).ok().filter(|v| !v.trim().is_empty()) {
            self.database = parse_database(&value).map_err(|e| format!("{DATABASE_URL_ENV}: {e}"))?;
        }
        Ok(())
    }
}

/// The backends a fresh `parser.ini` lists: three servers on this host, as in the seed's three-server setup.
fn default_backends() -> Vec<BackendAddr> {
    (9001..=9003)
        .map(|port| BackendAddr { name: format!("127.0.0.1:{port}"), addr: SocketAddr::from(([127, 0, 0, 1], port)) })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------------------

/// Why a configuration file was rejected. Every message starts with `file:line:` (or `file:` when no one
/// line is to blame) and names the key, so the user can jump straight to the mistake.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read: missing, unreadable, or not UTF-8.
    Io { file: String, source: io::Error },
    /// The text is not INI at all.
    Syntax { file: String, line: usize, message: String },
    /// A section, key or value is wrong. `key` is the key name, or `[name]` for a section.
    Invalid { file: String, line: Option<usize>, key: String, message: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { file, source } => write!(f, "{file}: cannot read: {source}"),
            ConfigError::Syntax { file, line, message } => write!(f, "{file}:{line}: syntax: {message}"),
            ConfigError::Invalid { file, line: Some(line), key, message } => {
                write!(f, "{file}:{line}: {key}: {message}")
            }
            ConfigError::Invalid { file, line: None, key, message } => write!(f, "{file}: {key}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// By hand because `io::Error` has no `PartialEq`; comparing kind and text is enough for tests that check
/// `Config::from_ini_str(..) == Ok(config)`.
impl PartialEq for ConfigError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ConfigError::Io { file: a, source: x }, ConfigError::Io { file: b, source: y }) => {
                a == b && x.kind() == y.kind() && x.to_string() == y.to_string()
            }
            (
                ConfigError::Syntax { file: a, line: l, message: m },
                ConfigError::Syntax { file: b, line: k, message: n },
            ) => a == b && l == k && m == n,
            (
                ConfigError::Invalid { file: a, line: l, key: k, message: m },
                ConfigError::Invalid { file: b, line: j, key: q, message: n },
            ) => a == b && l == j && k == q && m == n,
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------------------

impl Config {
    /// Reads and validates an INI file; errors are labelled with `path` as given.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_ini_str(&text, &file),
            Err(source) => Err(ConfigError::Io { file, source }),
        }
    }

    /// Validates INI text. `file_label` only appears in error messages. Keys may sit before any section
    /// or in `[DEFAULT]`; `[route.*]` sections are skipped (they belong to routing); any other section,
    /// unknown key, repeated key or bad value is an error. Missing keys keep their [`Default`] value;
    /// `ip_serverN` keys, when present, replace the default backends, ordered by N.
    pub fn from_ini_str(text: &str, file_label: &str) -> Result<Config, ConfigError> {
        // Editors on Windows may prepend a BOM, which would otherwise become part of the first key.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let file = file_label;
        let lines = scan_lines(text, file)?;
        // No escapes: `database = C:\data\pibl.db` must mean what it says.
        let ini = Ini::load_from_str_noescape(text).map_err(|e| ConfigError::Syntax {
            file: file.to_string(),
            line: e.line,
            message: friendly_syntax_message(&e.msg),
        })?;

        let invalid = |line: Option<usize>, key: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            line,
            key: key.to_string(),
            message,
        };

        let mut config = Config::default();
        let mut first_line: HashMap<&str, Option<usize>> = HashMap::new();
        let mut servers: BTreeMap<u32, BackendAddr> = BTreeMap::new();

        let mut pending_burst = None;
        for (section, properties) in ini.iter() {
            match section {
                None | Some("DEFAULT") => {}
                Some(name) if name.starts_with("route.") => {
                    let route = routes::parse_section(name, properties, &lines, file)?;
                    if let Some(other) = config.routes.iter().find(|r| r.prefix == route.prefix) {
                        return Err(invalid(
                            routes::key_line_in(&lines, name, "prefix"),
                            &format!("[{name}] prefix"),
                            format!("{} is already the prefix of [route.{}]", route.prefix, other.name),
                        ));
                    }
                    config.routes.push(route);
                    continue;
                }
                Some(name) => {
                    let mut message = "unknown section".to_string();
                    if let Some(better) = suggest_section(name) {
                        message.push_str(&format!(" (did you mean \"[{better}]\"?)"));
                    } else {
                        message.push_str("; settings go in [DEFAULT]");
                    }
                    return Err(invalid(section_line(&lines, name), &format!("[{name}]"), message));
                }
            }
            for (key, value) in properties.iter() {
                let seen_before = first_line.get(key).copied();
                let line = key_line(&lines, key, usize::from(seen_before.is_some()));
                if let Some(first) = seen_before {
                    let message = match first {
                        Some(first) => format!("set twice (first on line {first}); keep one"),
                        None => "set twice; keep one".to_string(),
                    };
                    return Err(invalid(line, key, message));
                }
                first_line.insert(key, line);

                let result = if let Some(suffix) = key.strip_prefix("ip_server") {
                    parse_server_number(suffix).and_then(|n| {
                        let backend = parse_backend(value).map_err(|e| with_comment_hint(e, value))?;
                        servers.insert(n, backend);
                        Ok(())
                    })
                } else if key == "rate_burst" {
                    parse_count(value, 0, 1_000_000).map(|b| pending_burst = Some(b as u32))
                } else if let Some(spec) = key_spec(key) {
                    (spec.apply)(&mut config, value).map_err(|e| with_comment_hint(e, value))
                } else {
                    let mut message = "unknown key".to_string();
                    if let Some(better) = suggest_key(key) {
                        message.push_str(&format!(" (did you mean \"{better}\"?)"));
                    }
                    Err(message)
                };
                result.map_err(|message| invalid(line, key, message))?;
            }
        }

        if !servers.is_empty() {
            config.backends = servers.into_values().collect();
        }
        if let (Some(limit), Some(burst)) = (config.rate_limit.as_mut(), pending_burst) {
            limit.burst = burst;
        }
        if config.cache_max_object_bytes > config.cache_max_bytes {
            let line = first_line.get("cache_max_object_bytes").copied().flatten();
            return Err(invalid(
                line,
                "cache_max_object_bytes",
                format!(
                    "{} is larger than cache_max_bytes ({}); lower it or raise cache_max_bytes",
                    render_size(config.cache_max_object_bytes as u64),
                    render_size(config.cache_max_bytes as u64)
                ),
            ));
        }
        Ok(config)
    }

    /// Renders the configuration as a commented INI file that [`Config::from_ini_str`] reads back to an
    /// equal `Config` (durations are kept to the millisecond). `backends` must not be empty: with no
    /// `ip_serverN` keys the file would load with the default backends.
    pub fn to_ini(&self) -> String {
        let defaults = Config::default();
        let mut out = String::new();
        out.push_str(INI_HEADER);
        out.push_str("\n[DEFAULT]\n");
        for entry in LAYOUT {
            match entry {
                Entry::Group(title) => {
                    out.push_str(&format!("\n# --- {title} ---\n"));
                }
                Entry::Key(spec) => {
                    push_comment(&mut out, spec.help, &(spec.render)(&defaults));
                    let value = (spec.render)(self);
                    if value.is_empty() {
                        out.push_str(&format!("{} =\n", spec.name));
                    } else {
                        out.push_str(&format!("{} = {value}\n", spec.name));
                    }
                }
                Entry::Backends => {
                    let listed: Vec<&str> = defaults.backends.iter().map(|b| b.name.as_str()).collect();
                    for line in BACKENDS_HELP.lines() {
                        out.push_str(&format!("# {line}\n"));
                    }
                    out.push_str(&format!("# Default, used when no ip_server key is given: {}.\n", listed.join(", ")));
                    for (i, backend) in self.backends.iter().enumerate() {
                        out.push_str(&format!("ip_server{} = {}\n", i + 1, backend.name));
                    }
                }
            }
        }
        out.push_str(routes::ROUTES_HELP);
        for route in &self.routes {
            out.push_str(&routes::render(route));
        }
        out
    }
}

/// Writes `help` as `# ` lines, the default appended to the last one, so every key documents itself.
fn push_comment(out: &mut String, help: &str, default: &str) {
    let mut lines = help.lines().peekable();
    while let Some(line) = lines.next() {
        out.push_str("# ");
        out.push_str(line);
        if lines.peek().is_none() {
            out.push_str(&format!(" Default: {}.", if default.is_empty() { "empty" } else { default }));
        }
        out.push('\n');
    }
}

/// rust-ini keeps `# ...` after a value as part of the value; say so rather than leave the user puzzled
/// by a value that looks right.
fn with_comment_hint(mut message: String, value: &str) -> String {
    if value.contains(" #") || value.contains(" ;") || value.contains("\t#") || value.contains("\t;") {
        message.push_str(" (comments must be on their own line)");
    }
    message
}

/// rust-ini's wording assumes the reader knows its internals; reword the one users actually hit.
fn friendly_syntax_message(msg: &str) -> String {
    if msg.contains("inline comment") {
        "comments must start at the beginning of a line".to_string()
    } else if msg.contains("found EOF") {
        format!("the file ended too early ({msg})")
    } else {
        msg.to_string()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Line locations. rust-ini reports lines only for syntax errors, so a light scan of the raw text finds
// where each key and section is; it also rejects line shapes that rust-ini would silently merge into the
// next key (a line without `=`, an indented comment, text after a section's `]`).
// ---------------------------------------------------------------------------------------------------------

enum LineKind {
    Section(String),
    /// A key in the general part or `[DEFAULT]` (the only keys whose lines are ever reported).
    Key(String),
    /// A key in any other section.
    SectionKey {
        section: String,
        key: String,
    },
}

struct ScannedLine {
    number: usize,
    kind: LineKind,
}

fn scan_lines(text: &str, file: &str) -> Result<Vec<ScannedLine>, ConfigError> {
    let syntax = |number: usize, message: String| ConfigError::Syntax { file: file.to_string(), line: number, message };
    let mut out = Vec::new();
    let mut in_default = true;
    let mut section = String::new();
    let mut continuation = false;
    for (index, raw) in text.split('\n').enumerate() {
        let number = index + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if continuation {
            // A value ending in `\` continues on this line; its text is the value's business.
            continuation = line.ends_with('\\');
            continue;
        }
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.starts_with('#') || trimmed.starts_with(';') {
            if trimmed.len() != line.len() {
                // rust-ini would read an indented comment as the start of a key name.
                return Err(syntax(
                    number,
                    "comments must start at the beginning of a line (this one is indented)".to_string(),
                ));
            }
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(syntax(
                    number,
                    format!("{trimmed:?}: a section line is just [name] (comments go on their own line)"),
                ));
            };
            let name = name.trim().to_string();
            in_default = name == "DEFAULT";
            section = name.clone();
            out.push(ScannedLine { number, kind: LineKind::Section(name) });
            continue;
        }
        let Some(split) = trimmed.find(['=', ':']) else {
            return Err(syntax(number, format!("{trimmed:?} is not a `key = value` line")));
        };
        let key = trimmed[..split].trim();
        if key.is_empty() {
            return Err(syntax(number, format!("{trimmed:?} has no key before {:?}", &trimmed[split..split + 1])));
        }
        let value = trimmed[split + 1..].trim_start();
        if let Some(quote) = value.chars().next().filter(|c| *c == '"' || *c == '\'') {
            // rust-ini would let the quoted value run on over the following lines, swallowing keys.
            if !value[1..].contains(quote) {
                return Err(syntax(
                    number,
                    format!("{key}: the value opens a {quote} quote that this line never closes"),
                ));
            }
        }
        continuation = line.ends_with('\\');
        let kind = if in_default {
            LineKind::Key(key.to_string())
        } else {
            LineKind::SectionKey { section: section.clone(), key: key.to_string() }
        };
        out.push(ScannedLine { number, kind });
    }
    Ok(out)
}

/// Line of the `nth` (0-based) occurrence of `key` in the general part or `[DEFAULT]`.
fn key_line(lines: &[ScannedLine], key: &str, nth: usize) -> Option<usize> {
    lines.iter().filter(|l| matches!(&l.kind, LineKind::Key(k) if k == key)).nth(nth).map(|l| l.number)
}

fn section_line(lines: &[ScannedLine], name: &str) -> Option<usize> {
    lines.iter().find(|l| matches!(&l.kind, LineKind::Section(s) if s == name)).map(|l| l.number)
}

// ---------------------------------------------------------------------------------------------------------
// Keys: one table drives parsing, rendering and documentation, so a key cannot be read without also
// being written and explained.
// ---------------------------------------------------------------------------------------------------------

struct KeySpec {
    name: &'static str,
    /// One or two comment lines; the default is appended by `to_ini`.
    help: &'static str,
    apply: fn(&mut Config, &str) -> Result<(), String>,
    render: fn(&Config) -> String,
}

enum Entry {
    Group(&'static str),
    Key(KeySpec),
    /// The `ip_serverN` keys, which are a list rather than one key.
    Backends,
}

const INI_HEADER: &str = "\
# parser.ini: configuration of pibl, the reverse proxy and load balancer.
# Written by `cargo run --bin parser`; edit the values, then restart the proxy.
#
# One `key = value` per line. Comments start with # or ; at the very start of a line, never after
# a value. Every key is optional: a key left out takes the default given in its comment.
# Durations: a plain number is seconds (60), or give a unit: 500ms, 10s, 2m, 1h.
# Sizes: a plain number is bytes, or give a unit: k, m, g for KiB, MiB, GiB (16m).
";

const BACKENDS_HELP: &str = "\
Backend servers requests are spread over: ip_server1, ip_server2, ... = host or host:port
(port 80 if left out; IPv6 as [::1]:8080). Host names are resolved at start-up.";

const MAX_DURATION_MS: u64 = 365 * 24 * 3600 * 1000;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

const LAYOUT: &[Entry] = &[
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
        help: "Worker threads (1-1024). Each forwards one request at a time, so this is how many\n\
               requests can wait on backends at once; idle keep-alive clients hold no thread.",
        apply: |c, v| parse_count(v, 1, 1024).map(|x| c.threads = x),
        render: |c| c.threads.to_string(),
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
        help: "Idle keep-alive connections kept open to each backend for reuse (0-10000;\n\
               0 = a new connection for every request).",
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
        render: |c| match &c.access_log_file {
            AccessLogTarget::Logger => String::new(),
            AccessLogTarget::Stdout => "-".to_string(),
            AccessLogTarget::File(path) => render_path(path),
        },
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
        name: "jwt_ttl",
        help: "How long an access token from /api/auth stays valid.",
        apply: |c, v| parse_timeout(v).map(|x| c.jwt_ttl = x),
        render: |c| render_duration(c.jwt_ttl),
    }),
    Entry::Key(KeySpec {
        name: "admins",
        help: "E-mail addresses, comma-separated, allowed to list and unblock locked-out users\n\
               (GET /api/blocked). Empty = nobody.",
        apply: |c, v| parse_admins(v).map(|x| c.admins = x),
        render: |c| c.admins.join(", "),
    }),
    Entry::Key(KeySpec {
        name: "lockout_secs",
        help: "How long 5 failed /api/auth attempts in a row block that address (a duration).",
        apply: |c, v| parse_timeout(v).map(|x| c.lockout_secs = x),
        render: |c| render_duration(c.lockout_secs),
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

fn key_spec(name: &str) -> Option<&'static KeySpec> {
    LAYOUT.iter().find_map(|entry| match entry {
        Entry::Key(spec) if spec.name == name => Some(spec),
        _ => None,
    })
}

fn key_names() -> impl Iterator<Item = &'static str> {
    LAYOUT.iter().filter_map(|entry| match entry {
        Entry::Key(spec) => Some(spec.name),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------------------------
// Value parsers. Each returns the message that follows `file:line: key: `, quoting the value as written.
// ---------------------------------------------------------------------------------------------------------

fn parse_port(v: &str) -> Result<u16, String> {
    match v.trim().parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("{v:?} is not a port number (1-65535)")),
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn parse_count(v: &str, min: usize, max: usize) -> Result<usize, String> {
    let t = v.trim();
    if !is_digits(t) {
        return Err(format!("{v:?} is not a whole number ({min}-{max})"));
    }
    match t.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("{v:?} is out of range ({min}-{max})")),
    }
}

/// Bytes with an optional binary unit: `8192`, `16k`, `16m`, `1g`.
fn parse_size(v: &str) -> Result<u64, String> {
    let t = v.trim().to_ascii_lowercase();
    let (digits, unit) = match t.as_bytes().last() {
        Some(b'k') => (&t[..t.len() - 1], KIB),
        Some(b'm') => (&t[..t.len() - 1], MIB),
        Some(b'g') => (&t[..t.len() - 1], GIB),
        _ => (t.as_str(), 1),
    };
    let digits = digits.trim_end();
    if !is_digits(digits) {
        return Err(format!("{v:?} is not a size (bytes like 8192, or with k, m or g: 16k, 16m)"));
    }
    digits.parse::<u64>().ok().and_then(|n| n.checked_mul(unit)).ok_or_else(|| format!("{v:?} is too large"))
}

fn parse_buffer_bytes(v: &str) -> Result<usize, String> {
    let n = parse_size(v)?;
    match usize::try_from(n) {
        Ok(n) if (1024..=1024 * 1024).contains(&n) => Ok(n),
        _ => Err(format!("{v:?} is out of range (1024-1048576 bytes, i.e. 1k-1m)")),
    }
}

/// A duration: a plain number of seconds (as the original parser.ini wrote `ttl = 60`) or a number with
/// `ms`, `s`, `m` or `h`. Capped at a year so adding it to an `Instant` can never overflow.
fn parse_duration(v: &str) -> Result<Duration, String> {
    let t = v.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let ms_per_unit = match unit.trim() {
        "" | "s" => 1000,
        "ms" => 1,
        "m" => 60 * 1000,
        "h" => 3600 * 1000,
        _ => 0,
    };
    if digits.is_empty() || ms_per_unit == 0 {
        return Err(format!("{v:?} is not a duration (seconds like 30, or with a unit: 500ms, 10s, 2m, 1h)"));
    }
    match digits.parse::<u64>().ok().and_then(|n| n.checked_mul(ms_per_unit)) {
        Some(ms) if ms <= MAX_DURATION_MS => Ok(Duration::from_millis(ms)),
        _ => Err(format!("{v:?} is too long (at most 8760h, one year)")),
    }
}

fn parse_timeout(v: &str) -> Result<Duration, String> {
    let d = parse_duration(v)?;
    if d.is_zero() {
        return Err(format!("{v:?} is not allowed: a timeout must be above 0 (e.g. 10 or 500ms)"));
    }
    Ok(d)
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{v:?} is not on or off (on/off, true/false, yes/no, 1/0)")),
    }
}

fn parse_log_level(v: &str) -> Result<log::LevelFilter, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "off" => Ok(log::LevelFilter::Off),
        "error" => Ok(log::LevelFilter::Error),
        "warn" => Ok(log::LevelFilter::Warn),
        "info" => Ok(log::LevelFilter::Info),
        "debug" => Ok(log::LevelFilter::Debug),
        "trace" => Ok(log::LevelFilter::Trace),
        _ => Err(format!("{v:?} is not a log level (off, error, warn, info, debug, trace)")),
    }
}

fn parse_access_log_format(v: &str) -> Result<AccessLogFormat, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "seed" => Ok(AccessLogFormat::Seed),
        "combined" => Ok(AccessLogFormat::Combined),
        "json" => Ok(AccessLogFormat::Json),
        _ => Err(format!("{v:?} is not an access log format (seed, combined or json)")),
    }
}

/// Empty: through the logger; `-`: standard output; anything else is a file name, kept as written (as
/// `database` is) so a name with spaces survives.
fn parse_access_log_file(v: &str) -> Result<AccessLogTarget, String> {
    match v.trim() {
        "" => Ok(AccessLogTarget::Logger),
        "-" => Ok(AccessLogTarget::Stdout),
        _ => Ok(AccessLogTarget::File(PathBuf::from(v))),
    }
}

fn parse_bind(v: &str) -> Result<IpAddr, String> {
    let t = v.trim();
    let unbracketed = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(t);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(ip);
    }
    if t.parse::<SocketAddr>().is_ok() {
        return Err(format!("{v:?} includes a port: write only the address here and the port in `port`"));
    }
    Err(format!("{v:?} is not an IP address (e.g. 0.0.0.0, 127.0.0.1 or ::)"))
}

/// `metrics_bind`: empty, or a loopback `address:port`, so the metrics never face the network.
fn parse_metrics_bind(v: &str) -> Result<Option<SocketAddr>, String> {
    let t = v.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr =
        t.parse().map_err(|_| format!("{v:?} is not an address:port (e.g. 127.0.0.1:9100 or [::1]:9100)"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{v:?} is not a loopback address: metrics_bind only listens on this machine (127.0.0.1 or ::1)"
        ));
    }
    Ok(Some(addr))
}

fn parse_database(v: &str) -> Result<PathBuf, String> {
    if v.trim().is_empty() {
        return Err("has no value: give the SQLite file name, e.g. pibl.db".to_string());
    }
    // A postgres:// URL is checked now, so a mistake names this line rather than failing at start-up.
    crate::store::Database::parse(v)?;
    Ok(PathBuf::from(v))
}

/// `admins`: a comma-separated list of e-mail addresses (empty entries are skipped).
fn parse_admins(v: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !item.contains('@') || item.contains(char::is_whitespace) {
            return Err(format!("{item:?} is not an e-mail address (write them comma-separated)"));
        }
        out.push(item.to_string());
    }
    Ok(out)
}

/// `health_path`: empty, or a path starting with `/` without spaces.
fn parse_health_path(v: &str) -> Result<String, String> {
    let t = v.trim();
    if t.is_empty() {
        return Ok(String::new());
    }
    if !t.starts_with('/') || t.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("{v:?} is not a path (it starts with / and has no spaces, e.g. /status)"));
    }
    Ok(t.to_string())
}

/// `ip_serverN`: N is a positive number without leading zeros, so each server has exactly one spelling.
fn parse_server_number(suffix: &str) -> Result<u32, String> {
    if suffix.is_empty() {
        return Err("needs a number: ip_server1, ip_server2, ...".to_string());
    }
    if !is_digits(suffix) || (suffix.starts_with('0') && suffix != "0") {
        return Err(format!("{suffix:?} is not a server number: use ip_server1, ip_server2, ..."));
    }
    match suffix.parse::<u32>() {
        Ok(0) => Err("server numbers start at 1 (ip_server1)".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{suffix:?} is too large for a server number")),
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; the port defaults to 80 as in the original proxy.
/// Host names are resolved now, so a typo fails at start-up rather than on the first request.
fn parse_backend(v: &str) -> Result<BackendAddr, String> {
    let t = v.trim();
    if t.is_empty() {
        return Err("has no value: write host or host:port, e.g. 127.0.0.1:9001".to_string());
    }
    if t.contains("://") {
        return Err(format!("{v:?} has a scheme: write host or host:port without http://"));
    }
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (inside, after) =
            rest.split_once(']').ok_or_else(|| format!("{v:?} has no closing \"]\" (IPv6 is written [::1]:8080)"))?;
        let ip: Ipv6Addr = inside.parse().map_err(|_| format!("{inside:?} in {v:?} is not an IPv6 address"))?;
        let port = match after {
            "" => 80,
            _ => match after.strip_prefix(':') {
                Some(p) => parse_port(p).map_err(|e| format!("in {v:?}: {e}"))?,
                None => return Err(format!("{v:?}: only \":port\" may follow \"]\"")),
            },
        };
        (IpAddr::V6(ip).to_string(), port)
    } else if let Ok(ip) = t.parse::<Ipv6Addr>() {
        (ip.to_string(), 80)
    } else if let Some((host, port)) = t.rsplit_once(':') {
        if host.contains(':') {
            return Err(format!("{v:?}: write IPv6 addresses in brackets, e.g. [::1]:8080"));
        }
        (host.to_string(), parse_port(port).map_err(|e| format!("in {v:?}: {e}"))?)
    } else {
        (t.to_string(), 80)
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{v:?} is not host or host:port"));
    }

    let addr = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("cannot resolve {host:?}: no address found"))?,
    };
    let name = match addr.ip() {
        _ if host.parse::<IpAddr>().is_err() => format!("{}:{port}", host.to_ascii_lowercase()),
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
        IpAddr::V4(ip) => format!("{ip}:{port}"),
    };
    Ok(BackendAddr { name, addr })
}

// ---------------------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------------------

/// Whole seconds as a plain number (the seed's `ttl = 60`), anything finer in milliseconds, rounded up so a
/// tiny non-zero timeout never turns into an invalid 0.
fn render_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{}ms", d.as_nanos().div_ceil(1_000_000))
    }
}

/// `16m` and `1g` where exact; KiB multiples stay plain (8192 reads as bytes at a glance).
fn render_size(n: u64) -> String {
    if n != 0 && n.is_multiple_of(GIB) {
        format!("{}g", n / GIB)
    } else if n != 0 && n.is_multiple_of(MIB) {
        format!("{}m", n / MIB)
    } else {
        n.to_string()
    }
}

/// Quotes a path only when rust-ini would otherwise change it (surrounding spaces, a leading quote).
fn render_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let plain = text.trim() == text && !text.starts_with(['"', '\'']);
    if plain {
        text.into_owned()
    } else if !text.contains('"') {
        format!("\"{text}\"")
    } else {
        format!("'{text}'")
    }
}

// ---------------------------------------------------------------------------------------------------------
// Suggestions for typos
// ---------------------------------------------------------------------------------------------------------

/// Optimal-string-alignment distance: like Levenshtein, but a swap of neighbours (`prot`) costs 1.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Close enough to be a typo: two edits, or one for short names where two edits reach unrelated words.
fn is_close(word: &str, target: &str) -> bool {
    let limit = if target.len() < 5 { 1 } else { 2 };
    edit_distance(&word.to_ascii_lowercase(), &target.to_ascii_lowercase()) <= limit
}

fn suggest_key(word: &str) -> Option<String> {
    let stem = word.trim_end_matches(|c: char| c.is_ascii_digit());
    if stem.len() < word.len() && is_close(stem, "ip_server") {
        return Some(format!("ip_server{}", &word[stem.len()..]));
    }
    key_names()
        .map(|name| (edit_distance(&word.to_ascii_lowercase(), name), name))
        .filter(|&(_, name)| is_close(word, name))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, name)| name.to_string())
}

fn suggest_section(name: &str) -> Option<&'static str> {
    if is_close(name, "DEFAULT") || name.eq_ignore_ascii_case("default") {
        Some("DEFAULT")
    } else if name.starts_with("route") || name.starts_with("routes.") {
        Some("route.NAME")
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------------------
// The `parser` command line: builds a Config from defaults and flags and writes it as documented INI.
// It lives here, not in the binary, so tests can drive it and reuse the same value parsers.
// ---------------------------------------------------------------------------------------------------------

/// What [`run_parser_cli`] did, for the binary to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParserOutcome {
    /// `-h`/`--help`: print this text on stdout and exit 0.
    Help(String),
    /// The file at `path` now holds `text`.
    Wrote { path: PathBuf, text: String },
}

/// Why the `parser` command stopped. [`ParserCliError::exit_code`] gives the process status.
#[derive(Debug)]
pub enum ParserCliError {
    /// Unknown flag or missing flag value; the usage text should follow the message. Exit 2.
    Usage(String),
    /// A flag's value is invalid. Exit 2.
    BadValue { flag: String, message: String },
    /// The output file exists and `--force` was not given; it was left untouched. Exit 1.
    Exists { path: PathBuf },
    /// The output file could not be written. Exit 1.
    Write { path: PathBuf, source: io::Error },
}

impl ParserCliError {
    /// 2 for a wrong command line, 1 when the command line was fine but the file could not be written.
    pub fn exit_code(&self) -> u8 {
        match self {
            ParserCliError::Usage(_) | ParserCliError::BadValue { .. } => 2,
            ParserCliError::Exists { .. } | ParserCliError::Write { .. } => 1,
        }
    }
}

impl fmt::Display for ParserCliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParserCliError::Usage(message) => f.write_str(message),
            ParserCliError::BadValue { flag, message } => write!(f, "{flag}: {message}"),
            ParserCliError::Exists { path } => {
                write!(f, "{} already exists; use --force to overwrite it", path.display())
            }
            ParserCliError::Write { path, source } => {
                write!(f, "cannot write {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for ParserCliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ParserCliError::Write { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The `parser` usage text, defaults filled in from [`Config::default`].
pub fn parser_usage() -> String {
    let d = Config::default();
    let backends: Vec<&str> = d.backends.iter().map(|b| b.name.as_str()).collect();
    format!(
        "usage: parser [--out FILE] [--port N] [--ttl DURATION] [--backend HOST[:PORT]]...\n\
         \x20             [--database FILE] [--access-log-file FILE] [--force]\n\
         \n\
         Writes a documented pibl configuration with the defaults, changed by the flags, and prints it.\n\
         \n\
         \x20 --out FILE              file to write (default: parser.ini)\n\
         \x20 --port N                port the proxy listens on, 1-65535 (default: {port})\n\
         \x20 --ttl DURATION          cache lifetime: seconds, or 500ms, 2m, 1h; 0 turns the cache off (default: {ttl})\n\
         \x20 --backend HOST[:PORT]   a backend server, port 80 if left out; repeat for more; replaces the\n\
         \x20                         default list ({backends})\n\
         \x20 --database FILE         SQLite file of the management API (default: {database})\n\
         \x20 --access-log-file FILE  access log file, reopened on SIGUSR1; - for standard output\n\
         \x20                         (default: through the log on stderr)\n\
         \x20 --force                 overwrite FILE if it already exists\n\
         \x20 -h, --help              show this help\n",
        port = d.port,
        ttl = render_duration(d.ttl),
        backends = backends.join(", "),
        database = d.database.display(),
    )
}

/// Runs the `parser` command with `args` (the arguments after the program name): parses the flags,
/// renders the config and writes it, refusing to replace an existing file unless `--force` is given.
pub fn run_parser_cli(args: &[String]) -> Result<ParserOutcome, ParserCliError> {
    let mut out = PathBuf::from("parser.ini");
    let mut force = false;
    let mut config = Config::default();
    let mut backends = Vec::new();

    let mut args = args.iter();
    while let Some(arg) = args.next() {
        // Both `--port 80` and `--port=80`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
            _ => (arg.as_str(), None),
        };
        match flag {
            "-h" | "--help" => return Ok(ParserOutcome::Help(parser_usage())),
            "--force" => {
                if inline.is_some() {
                    return Err(ParserCliError::Usage("--force takes no value".to_string()));
                }
                force = true;
            }
            "--out" | "--port" | "--ttl" | "--backend" | "--database" | "--access-log-file" => {
                let value = match inline {
                    Some(value) => value,
                    None => args
                        .next()
                        .map(String::as_str)
                        .ok_or_else(|| ParserCliError::Usage(format!("{flag} needs a value")))?,
                };
                let bad = |message: String| ParserCliError::BadValue { flag: flag.to_string(), message };
                match flag {
                    "--out" if value.is_empty() => return Err(bad("the file name is empty".to_string())),
                    "--out" => out = PathBuf::from(value),
                    "--port" => config.port = parse_port(value).map_err(bad)?,
                    "--ttl" => config.ttl = parse_duration(value).map_err(bad)?,
                    "--database" => config.database = parse_database(value).map_err(bad)?,
                    "--access-log-file" => config.access_log_file = parse_access_log_file(value).map_err(bad)?,
                    _ => backends.push(parse_backend(value).map_err(bad)?),
                }
            }
            _ => return Err(ParserCliError::Usage(format!("unknown argument {arg:?}"))),
        }
    }
    if !backends.is_empty() {
        config.backends = backends;
    }

    let text = config.to_ini();
    write_file(&out, &text, force)?;
    Ok(ParserOutcome::Wrote { path: out, text })
}

/// `create_new` makes "does it exist?" and "create it" one step, so an existing file is never touched.
fn write_file(path: &Path, text: &str, force: bool) -> Result<(), ParserCliError> {
    let mut options = OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let write_error = |source: io::Error| ParserCliError::Write { path: path.to_path_buf(), source };
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            ParserCliError::Exists { path: path.to_path_buf() }
        } else {
            write_error(source)
        }
    })?;
    file.write_all(text.as_bytes()).map_err(write_error)?;
    file.flush().map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Config::from_ini_str(text, "t.ini") {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn durations() {
        let ok = [
            ("60", 60_000),
            ("0", 0),
            ("500ms", 500),
            ("10s", 10_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            (" 3 S ", 3000),
            ("8760h", MAX_DURATION_MS),
        ];
        for (text, ms) in ok {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(ms)), "{text}");
        }
        for bad in ["", "ms", "-1", "1.5", "10x", "1d", "s10", "8761h", "99999999999999999999"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_timeout("0").unwrap_err().contains("above 0"));
        assert!(parse_timeout("0ms").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8192"), Ok(8192));
        assert_eq!(parse_size("16k"), Ok(16 * KIB));
        assert_eq!(parse_size("16M"), Ok(16 * MIB));
        assert_eq!(parse_size("2 g"), Ok(2 * GIB));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "k", "1.5m", "16q", "-1", "99999999999g"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(parse_buffer_bytes("1k"), Ok(1024));
        assert_eq!(parse_buffer_bytes("1m"), Ok(1024 * 1024));
        assert!(parse_buffer_bytes("1023").is_err());
        assert!(parse_buffer_bytes("1048577").is_err());
    }

    #[test]
    fn render_round_trips() {
        for ms in [0, 1, 999, 1000, 1500, 60_000, 3_600_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&render_duration(d)), Ok(d), "{ms}ms");
        }
        assert_eq!(render_duration(Duration::from_secs(60)), "60");
        assert_eq!(render_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(render_duration(Duration::from_nanos(1)), "1ms");
        for n in [0, 1, 1024, 8192, 16 * MIB, 3 * GIB, 3 * GIB + 1] {
            assert_eq!(parse_size(&render_size(n)), Ok(n), "{n}");
        }
        assert_eq!(render_size(16 * MIB), "16m");
        assert_eq!(render_size(16 * KIB), "16384");
    }

    #[test]
    fn scalars() {
        assert_eq!(parse_port("80"), Ok(80));
        assert_eq!(parse_port("80x").unwrap_err(), "\"80x\" is not a port number (1-65535)");
        assert!(parse_port("0").is_err());
        assert!(parse_port("65536").is_err());
        assert_eq!(parse_count("8", 1, 1024), Ok(8));
        assert_eq!(parse_count("0", 1, 1024).unwrap_err(), "\"0\" is out of range (1-1024)");
        assert_eq!(parse_count("eight", 1, 1024).unwrap_err(), "\"eight\" is not a whole number (1-1024)");
        assert_eq!(parse_bool("Yes"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("maybe").is_err());
        assert_eq!(parse_log_level("WARN"), Ok(log::LevelFilter::Warn));
        assert!(parse_log_level("verbose").is_err());
        assert_eq!(parse_bind("::"), Ok(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
        assert_eq!(parse_bind("[::1]"), Ok(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(parse_bind("0.0.0.0:8080").unwrap_err().contains("port"));
        assert!(parse_bind("localhost").is_err());
        assert!(parse_database("  ").is_err());
        assert_eq!(parse_admins(" a@b.c, ,d@e.f "), Ok(vec!["a@b.c".to_string(), "d@e.f".to_string()]));
        assert!(parse_admins("root").is_err());
        assert_eq!(parse_metrics_bind(" "), Ok(None));
        assert_eq!(parse_metrics_bind("127.0.0.1:9100"), Ok(Some("127.0.0.1:9100".parse().unwrap())));
        assert!(parse_metrics_bind("0.0.0.0:9100").unwrap_err().contains("loopback"));
        assert!(parse_metrics_bind("127.0.0.1").is_err());
        assert_eq!(parse_health_path(" "), Ok(String::new()));
        assert_eq!(parse_health_path("/status"), Ok("/status".to_string()));
        assert!(parse_health_path("status").is_err());
        assert!(parse_health_path("/a b").is_err());
    }

    #[test]
    fn backends() {
        let b = parse_backend("127.0.0.1").unwrap();
        assert_eq!((b.name.as_str(), b.addr), ("127.0.0.1:80", SocketAddr::from(([127, 0, 0, 1], 80))));
        let b = parse_backend("10.0.0.2:8081").unwrap();
        assert_eq!(b.name, "10.0.0.2:8081");
        let b = parse_backend("[::1]:8080").unwrap();
        assert_eq!((b.name.as_str(), b.addr), ("[::1]:8080", "[::1]:8080".parse().unwrap()));
        assert_eq!(parse_backend("[::1]").unwrap().name, "[::1]:80");
        assert_eq!(parse_backend("::1").unwrap().name, "[::1]:80");
        let b = parse_backend("LocalHost:9000").unwrap();
        assert_eq!(b.name, "localhost:9000");
        assert_eq!(b.addr.port(), 9000);
        for bad in ["", "host:", "host:0", "host:abc", "[::1", "[nope]:80", "[::1]x", "http://h", "a b", ":80"] {
            assert!(parse_backend(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_backend("no-such-host.invalid")
            .unwrap_err()
            .starts_with("cannot resolve \"no-such-host.invalid\": "));
    }

    #[test]
    fn server_numbers() {
        assert_eq!(parse_server_number("1"), Ok(1));
        assert_eq!(parse_server_number("12"), Ok(12));
        for bad in ["", "0", "01", "a", "-1", "1a", "99999999999"] {
            assert!(parse_server_number(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("prot", "port"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(suggest_key("prot").as_deref(), Some("port"));
        assert_eq!(suggest_key("Port").as_deref(), Some("port"));
        assert_eq!(suggest_key("max_con").as_deref(), Some("max_conn"));
        assert_eq!(suggest_key("ip_sever2").as_deref(), Some("ip_server2"));
        assert_eq!(suggest_key("url"), None);
        assert_eq!(suggest_key("completely_different"), None);
        assert_eq!(suggest_section("default"), Some("DEFAULT"));
        assert_eq!(suggest_section("DEFALT"), Some("DEFAULT"));
        assert_eq!(suggest_section("routes"), Some("route.NAME"));
        assert_eq!(suggest_section("users"), None);
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

    #[test]
    fn round_trip_default_and_modified() {
        let default = Config::default();
        assert_eq!(Config::from_ini_str(&default.to_ini(), "x"), Ok(default));

        let modified = Config {
            bind: IpAddr::V6(Ipv6Addr::LOCALHOST),
            port: 1,
            threads: 1024,
            max_conn: 1,
            buffer_size: 1024 * 1024,
            max_header_bytes: 1500,
            max_headers: 1000,
            max_body_bytes: 3 * GIB,
            ttl: Duration::ZERO,
            cache_max_bytes: 3 * MIB as usize,
            cache_max_object_bytes: 1536,
            backends: vec![parse_backend("[::1]:8080").unwrap(), parse_backend("10.1.2.3").unwrap()],
            header_timeout: Duration::from_millis(1500),
            keepalive_timeout: Duration::from_millis(1),
            client_timeout: Duration::from_secs(3600),
            connect_timeout: Duration::from_millis(250),
            backend_timeout: Duration::from_secs(1),
            backend_cooldown: Duration::ZERO,
            backend_pool_size: 0,
            shutdown_grace: Duration::from_secs(120),
            access_log: false,
            access_log_format: AccessLogFormat::Json,
            access_log_file: AccessLogTarget::File(PathBuf::from("/var/log/pibl/access log.txt")),
            log_level: log::LevelFilter::Off,
            api_port: 65535,
            database: PathBuf::from(" /var/lib/pibl #1.db"),
            rate_limit: Some(RateLimit { per_second: 2.5, burst: 7 }),
            max_conn_per_ip: 3,
            deny: parse_nets("10.0.0.0/8, ::1").unwrap(),
            allow: Vec::new(),
            trusted_proxies: parse_nets("127.0.0.1").unwrap(),
            routes: Vec::new(),
            api_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            metrics_bind: Some("[::1]:9100".parse().unwrap()),
            jwt_secret: "s3cret-value".to_string(),
            jwt_ttl: Duration::from_millis(1500),
            admins: vec!["root@example.com".to_string(), "ops@example.org".to_string()],
            lockout_secs: Duration::from_secs(60),
            auth_rate: 0,
            health_interval: Duration::from_millis(250),
            health_path: "/status".to_string(),
            log_retention: 1,
            purge_interval: Duration::from_secs(3600),
        };
        assert_eq!(Config::from_ini_str(&modified.to_ini(), "x"), Ok(modified));
    }

    #[test]
    fn layout_variants() {
        // General section, CRLF, BOM, `:` separator, quoted value and a route section are all accepted.
        let text = "\u{feff}port: 81\r\n[DEFAULT]\r\ndatabase = \"my db.db\"\r\n[route.api]\r\nprefix = /x\r\nservers = 127.0.0.1:1\r\n";
        let c = Config::from_ini_str(text, "t.ini").unwrap();
        assert_eq!((c.port, c.database), (81, PathBuf::from("my db.db")));

        let c = Config::from_ini_str("[DEFAULT]\nip_server10 = 10.0.0.10\nip_server2 = 10.0.0.2\n", "t").unwrap();
        let names: Vec<&str> = c.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["10.0.0.2:80", "10.0.0.10:80"], "ordered by number, not by text");

        assert_eq!(Config::from_ini_str("", "t"), Ok(Config::default()));
    }

    #[test]
    fn error_messages() {
        assert_eq!(err("[DEFAULT]\n\nport = 80x\n"), "t.ini:3: port: \"80x\" is not a port number (1-65535)");
        assert_eq!(
            err("[DEFAULT]\nport = 80 # web\n"),
            "t.ini:2: port: \"80 # web\" is not a port number (1-65535) (comments must be on their own line)"
        );
        assert_eq!(err("[DEFAULT]\nprot = 80\n"), "t.ini:2: prot: unknown key (did you mean \"port\"?)");
        assert_eq!(err("[DEFAULT]\nfoo = 1\n"), "t.ini:2: foo: unknown key");
        assert_eq!(err("port = 1\n[DEFAULT]\nport = 2\n"), "t.ini:3: port: set twice (first on line 1); keep one");
        assert_eq!(err("[default]\n"), "t.ini:1: [default]: unknown section (did you mean \"[DEFAULT]\"?)");
        assert_eq!(
            err("[DEFAULT]\n[server]\nport = 1\n"),
            "t.ini:2: [server]: unknown section; settings go in [DEFAULT]"
        );
        assert_eq!(
            err("[DEFAULT]\nip_server0 = 1.2.3.4\n"),
            "t.ini:2: ip_server0: server numbers start at 1 (ip_server1)"
        );
        assert!(
            err("[DEFAULT]\nip_serverA = 1.2.3.4\n").starts_with("t.ini:2: ip_serverA: \"A\" is not a server number")
        );
        assert!(err("ip_server = 1.2.3.4\n").starts_with("t.ini:1: ip_server: needs a number"));
        assert!(err("[DEFAULT]\nip_server2 = foo.invalid\n")
            .starts_with("t.ini:2: ip_server2: cannot resolve \"foo.invalid\": "));
        assert_eq!(
            err("[DEFAULT]\nheader_timeout = 0\n"),
            "t.ini:2: header_timeout: \"0\" is not allowed: a timeout must be above 0 (e.g. 10 or 500ms)"
        );
        // Shapes rust-ini would silently merge into the next key.
        assert_eq!(err("[DEFAULT]\nport\nttl = 1\n"), "t.ini:2: syntax: \"port\" is not a `key = value` line");
        assert!(err("[DEFAULT]\n  # note\nport = 1\n").starts_with("t.ini:2: syntax: comments must start"));
        assert!(err("[DEFAULT] ; x\n").starts_with("t.ini:1: syntax: "));
        assert!(err("[DEFAULT\nport = 1\n").starts_with("t.ini:1: syntax: "));
        assert!(err("= 1\n").starts_with("t.ini:1: syntax: "));
    }

    #[test]
    fn cli_flags() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches!(run_parser_cli(&args(&["-h"])), Ok(ParserOutcome::Help(_))));
        let e = run_parser_cli(&args(&["--bogus"])).unwrap_err();
        assert_eq!((e.exit_code(), e.to_string()), (2, "unknown argument \"--bogus\"".to_string()));
        let e = run_parser_cli(&args(&["--port"])).unwrap_err();
        assert_eq!((e.exit_code(), e.to_string()), (2, "--port needs a value".to_string()));
        let e = run_parser_cli(&args(&["--port=abc"])).unwrap_err();
        assert_eq!((e.exit_code(), e.to_string()), (2, "--port: \"abc\" is not a port number (1-65535)".to_string()));
        let e = run_parser_cli(&args(&["--ttl", "soon"])).unwrap_err();
        assert!(e.to_string().starts_with("--ttl: \"soon\" is not a duration"));
        assert_eq!(run_parser_cli(&args(&["--force=yes"])).unwrap_err().exit_code(), 2);
        assert_eq!(run_parser_cli(&args(&["--out", ""])).unwrap_err().exit_code(), 2);
        let e = run_parser_cli(&args(&["--database", " "])).unwrap_err();
        assert_eq!(e.to_string(), "--database: has no value: give the SQLite file name, e.g. pibl.db");
    }

    #[test]
    fn access_log_keys() {
        let c = Config::from_ini_str("access_log_format = JSON\naccess_log_file = /var/log/pibl/access.log\n", "t")
            .unwrap();
        assert_eq!(c.access_log_format, AccessLogFormat::Json);
        assert_eq!(c.access_log_file, AccessLogTarget::File(PathBuf::from("/var/log/pibl/access.log")));
        let c = Config::from_ini_str("access_log_format = combined\naccess_log_file = -\n", "t").unwrap();
        assert_eq!((c.access_log_format, c.access_log_file), (AccessLogFormat::Combined, AccessLogTarget::Stdout));
        let c = Config::from_ini_str("access_log_file =\n", "t").unwrap();
        assert_eq!(c.access_log_file, AccessLogTarget::Logger);
        assert_eq!(
            err("[DEFAULT]\naccess_log_format = apache\n"),
            "t.ini:2: access_log_format: \"apache\" is not an access log format (seed, combined or json)"
        );
        for target in [AccessLogTarget::Logger, AccessLogTarget::Stdout, AccessLogTarget::File(" odd name.log".into())]
        {
            let config = Config { access_log_file: target, ..Config::default() };
            assert_eq!(Config::from_ini_str(&config.to_ini(), "x"), Ok(config));
        }
    }
}
