//! Typed configuration: the INI file (`parser.ini`) is read once, validated, and turned into a
//! [`Config`] of typed values; raw strings never leave this module.
//!
//! Data flow: `file -> scan (syntax, line numbers) -> raw key/value pairs -> key table -> validated
//! Config`. The `parser` binary goes the other way: `Config -> key table -> documented INI text`.
//! This module runs both directions; its children each own one part:
//! - `settings`: the [`Config`] struct and its defaults;
//! - `keys`: the table of `[DEFAULT]` keys (name, documentation, parse, render);
//! - `scan`: INI text to sections and keys with their line numbers;
//! - `values`: typed values (durations, sizes, addresses, booleans...) from text and back;
//! - `routes`: `[route.NAME]` sections, rates and address lists;
//! - `access_log`: the access-log format and target;
//! - `suggest`: did-you-mean for unknown keys and sections;
//! - `error`: [`ConfigError`] and [`ValueError`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

mod access_log;
pub mod database;
mod error;
mod keys;
mod routes;
mod scan;
mod settings;
mod suggest;
mod tls;
mod values;

pub use access_log::{AccessLogFormat, AccessLogTarget};
pub use error::{ConfigError, ValueError};
pub use routes::{AuthUrl, Balance, IpNet, RateLimit, RouteAuth, RouteConfig};
pub use settings::{Config, LockoutScope, MetricsAuth, DEFAULT_ENDPOINT_ALLOW, LETS_ENCRYPT, THREADS_AUTO};
pub use tls::{TlsSite, TLS_SITE_KEYS};
pub use values::BackendAddr;

use keys::{key_names, key_spec, Entry, BACKENDS_HELP, INI_HEADER, LAYOUT};
use scan::{key_line, key_line_in, section_line};
use suggest::{suggest_key, suggest_section};
use values::{parse_backend, parse_count, parse_database, parse_server_number, parse_timeout, render_size};

// ---------------------------------------------------------------------------------------------------------
// Reading and writing the file
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
        let (ini, lines) = scan::read(text, file)?;

        let invalid = |line: Option<usize>, key: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            line,
            key: key.to_string(),
            message,
        };

        let mut config = Config::default();
        let mut first_line: HashMap<&str, Option<usize>> = HashMap::new();
        // Each backend with the key and line that named it, so a duplicate can point at both.
        let mut servers: BTreeMap<u32, (BackendAddr, &str, Option<usize>)> = BTreeMap::new();

        let mut pending_burst = None;
        for (section, properties) in ini.iter() {
            match section {
                None | Some("DEFAULT") => {}
                Some(name) if name.starts_with("route.") => {
                    let route = routes::parse_section(name, properties, &lines, file)?;
                    if let Some(other) = config.routes.iter().find(|r| r.prefix == route.prefix) {
                        return Err(invalid(
                            key_line_in(&lines, name, "prefix"),
                            &format!("[{name}] prefix"),
                            format!("{} is already the prefix of [route.{}]", route.prefix, other.name),
                        ));
                    }
                    config.routes.push(route);
                    continue;
                }
                Some(name) if name.starts_with("tls.") => {
                    let site = tls::parse_section(name, properties, &lines, file)?;
                    if config.tls_sites.iter().any(|s| s.name == site.name) {
                        return Err(invalid(section_line(&lines, name), &format!("[{name}]"), "appears twice".into()));
                    }
                    config.tls_sites.push(site);
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
                        servers.insert(n, (backend, key, line));
                        Ok(())
                    })
                } else if key == RETIRED_ENGINE_KEY {
                    check_retired_engine(value)
                } else if key == "rate_burst" {
                    parse_count(value, 0, 1_000_000).map(|b| pending_burst = Some(b as u32))
                } else if let Some(spec) = key_spec(key) {
                    (spec.apply)(&mut config, value).map_err(|e| with_comment_hint(e, value))
                } else {
                    Err(unknown_key_message(key))
                };
                result.map_err(|message| invalid(line, key, message))?;
            }
        }

        // The same backend twice would take two turns of every round and double its share: always a
        // slip (a copied line), so say which two lines name it.
        let listed: Vec<_> = servers.into_values().collect();
        for (i, (backend, key, line)) in listed.iter().enumerate() {
            if let Some((_, first_key, first_line)) = listed[..i].iter().find(|(b, _, _)| b.addr == backend.addr) {
                let at = first_line.map(|l| format!(" (line {l})")).unwrap_or_default();
                return Err(invalid(
                    *line,
                    key,
                    format!("{} is already {first_key}{at}; list each backend once", backend.name),
                ));
            }
        }
        if !listed.is_empty() {
            config.backends = listed.into_iter().map(|(backend, _, _)| backend).collect();
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
        let pair_line = |key: &str| first_line.get(key).copied().flatten();
        if config.tls_cert.as_os_str().is_empty() != config.tls_key.as_os_str().is_empty() {
            let (set, missing) =
                if config.tls_key.as_os_str().is_empty() { ("tls_cert", "tls_key") } else { ("tls_key", "tls_cert") };
            return Err(invalid(
                pair_line(set),
                set,
                format!("needs {missing} too: a certificate and its key go together"),
            ));
        }
        let has_certificates = !config.tls_cert.as_os_str().is_empty()
            || !config.tls_dir.as_os_str().is_empty()
            || !config.tls_sites.is_empty()
            || !config.acme_domains.is_empty();
        if config.tls_port != 0 && !has_certificates {
            return Err(invalid(
                pair_line("tls_port"),
                "tls_port",
                "needs a certificate: set tls_cert and tls_key, a [tls.NAME] section, tls_dir or acme_domains"
                    .to_string(),
            ));
        }
        if config.https_redirect && config.tls_port == 0 {
            return Err(invalid(
                pair_line("https_redirect"),
                "https_redirect",
                "needs tls_port: the redirects point at the HTTPS listener's port".to_string(),
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
                        out.push_str(&format!("ip_server{} = {}\n", i + 1, backend.written()));
                    }
                }
            }
        }
        out.push_str(routes::ROUTES_HELP);
        for route in &self.routes {
            out.push_str(&routes::render(route));
        }
        out.push_str(tls::TLS_HELP);
        for site in &self.tls_sites {
            out.push_str(&tls::render(site));
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

/// Advice on a file that loads but was probably not meant as written: one with no settings at all
/// (pibl runs on the built-in defaults) or with keys above any section header. Each line says what
/// `parser` would write instead; `proxy --check-config` prints them, and start-up logs them.
pub fn advice(text: &str, file_label: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut advice = retired_engine_advice(text, file_label);
    advice.extend(placement_advice(text, file_label));
    advice
}

/// `engine`, a key of earlier versions: files still say `engine = threads` (the blocking-worker
/// engine, since removed) or `engine = loops`. Either loads; the line is only noise now.
const RETIRED_ENGINE_KEY: &str = "engine";

/// Checks an `engine` value as earlier versions did, so a typo still fails loudly.
fn check_retired_engine(value: &str) -> Result<(), String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "threads" | "loops" => Ok(()),
        _ => Err(format!("{value:?} is not an engine (threads, loops); the key is no longer needed: remove it")),
    }
}

/// A warning for each `engine = ...` line: what pibl runs instead, and that the line can go.
fn retired_engine_advice(text: &str, file_label: &str) -> Vec<String> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == RETIRED_ENGINE_KEY).then(|| (i + 1, value.trim()))
        })
        .map(|(number, value)| {
            let what = match value.eq_ignore_ascii_case("threads") {
                true => "the threaded engine was removed, and pibl runs its event loops (`threads` of them)",
                false => "pibl always runs its event loops",
            };
            format!("{file_label}:{number}: warning: engine = {value}: {what}; remove this line")
        })
        .collect()
}

/// A file with no settings, or with keys above any section header.
fn placement_advice(text: &str, file_label: &str) -> Vec<String> {
    let first = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .find(|(_, l)| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'));
    match first {
        None => vec![format!(
            "{file_label}: warning: the file has no settings, so pibl runs on the built-in defaults; \
             `parser --out {file_label} --force` writes those defaults, each one documented"
        )],
        Some((number, line)) if !line.starts_with('[') => vec![format!(
            "{file_label}:{number}: warning: no section header before the first key; keys there count as \
             [DEFAULT], and `parser` writes a `[DEFAULT]` line above them: add it on line {number}"
        )],
        Some(_) => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Single keys and the environment
// ---------------------------------------------------------------------------------------------------------

/// The environment variable that overrides `purge_interval`, as the seed's purge cron was configured.
pub const PURGE_INTERVAL_ENV: &str = "PIBL_PURGE_INTERVAL";
/// The environment variable that overrides `database`, so a PostgreSQL password need not sit in the file.
pub const DATABASE_URL_ENV: &str = "PIBL_DATABASE_URL";
/// The environment variable that gives the token signing secret (over `jwt_secret_file` and
/// `jwt_secret`), for service managers that hand secrets over that way.
pub const JWT_SECRET_ENV: &str = "PIBL_JWT_SECRET";

impl Config {
    /// Every upstream spoken to over TLS (`https://` in `ip_serverN`, a route's `servers` or its
    /// `auth_url`), with the key that names it: what selects the event loops and loads the trust roots.
    pub fn tls_upstreams(&self) -> impl Iterator<Item = (String, &BackendAddr)> {
        let backends = self.backends.iter().enumerate().map(|(i, b)| (format!("ip_server{}", i + 1), b));
        let routes = self.routes.iter().flat_map(|r| {
            let servers = r.servers.iter().map(move |b| (format!("[route.{}] servers", r.name), b));
            let auth = match &r.auth {
                RouteAuth::Request(url) => Some((format!("[route.{}] auth_url", r.name), &url.server)),
                _ => None,
            };
            servers.chain(auth)
        });
        backends.chain(routes).filter(|(_, b)| b.tls)
    }

    /// Applies overrides from the environment (`PIBL_PURGE_INTERVAL`, a duration such as `30` or `2m`;
    /// `PIBL_DATABASE_URL`, a `database` value; `PIBL_JWT_SECRET`, the signing secret). The binary
    /// calls it after loading the file; tests leave it out.
    pub fn apply_env(&mut self) -> Result<(), String> {
        if let Ok(value) = std::env::var(JWT_SECRET_ENV) {
            if value.trim().len() < crate::store::private::MIN_SECRET_LEN {
                return Err(format!(
                    "{JWT_SECRET_ENV}: use at least {} characters (e.g. `openssl rand -hex 32`)",
                    crate::store::private::MIN_SECRET_LEN
                ));
            }
            self.jwt_secret = value.trim().to_string();
            self.jwt_secret_file = None;
        }
        if let Ok(value) = std::env::var(PURGE_INTERVAL_ENV) {
            self.purge_interval = parse_timeout(&value).map_err(|e| format!("{PURGE_INTERVAL_ENV}: {e}"))?;
        }
        if let Some(value) = std::env::var(DATABASE_URL_ENV).ok().filter(|v| !v.trim().is_empty()) {
            self.database = parse_database(&value).map_err(|e| format!("{DATABASE_URL_ENV}: {e}"))?;
        }
        Ok(())
    }

    /// Sets one `[DEFAULT]` key from its text, checked as in a file (`set_key("ttl", "90s")`), for a
    /// command line that takes a key's value. `ip_serverN` is not one key: set `backends` with
    /// [`BackendAddr::parse`]. `rate_burst` needs `rate_limit` set first.
    pub fn set_key(&mut self, key: &str, text: &str) -> Result<(), ValueError> {
        let spec = key_spec(key).ok_or_else(|| ValueError::new(unknown_key_message(key)))?;
        (spec.apply)(self, text).map_err(ValueError::new)
    }

    /// The `[DEFAULT]` keys whose values differ between `self` and `other`, in file order
    /// (`ip_serverN`, routes and `[tls.NAME]` sections are not keys of the table).
    pub fn changed_keys(&self, other: &Config) -> Vec<&'static str> {
        key_names().filter(|name| self.key_text(name) != other.key_text(name)).collect()
    }

    /// The text of one `[DEFAULT]` key as `parser.ini` would hold it (`key_text("ttl")` is `"60"` by
    /// default); `None` for a name that is not a key of the table.
    pub fn key_text(&self, key: &str) -> Option<String> {
        key_spec(key).map(|spec| (spec.render)(self))
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

/// "unknown key", with the key it was probably meant to be.
fn unknown_key_message(key: &str) -> String {
    match suggest_key(key) {
        Some(better) => format!("unknown key (did you mean \"{better}\"?)"),
        None => "unknown key".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::path::PathBuf;
    use std::time::Duration;

    use super::routes::parse_nets;
    use super::values::{GIB, MIB};
    use super::*;

    fn err(text: &str) -> String {
        match Config::from_ini_str(text, "t.ini") {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn threads_counts_event_loops_and_an_old_engine_line_still_loads_with_a_warning() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let load = |text: &str| Config::from_ini_str(&format!("[DEFAULT]\n{text}"), "x");
        let plain = load("port = 8080\n").unwrap();
        assert_eq!((plain.threads, plain.thread_count()), (THREADS_AUTO, cores));
        // A count is taken as written (an old `threads = 64` starts 64 loops, and says so at start).
        assert_eq!(load("threads = 64\n").unwrap().thread_count(), 64);
        assert_eq!(load("threads = auto\n").unwrap().thread_count(), cores);
        let zero = err("[DEFAULT]\nthreads = 0\n");
        assert!(zero.contains("out of range (1-1024), or auto"), "{zero}");
        // Files written for the threaded engine load, HTTPS included, and are told the line can go.
        let text = "[DEFAULT]\nengine = threads\ntls_port = 8443\ntls_cert = c.pem\ntls_key = k.pem\n";
        assert_eq!(Config::from_ini_str(text, "x").unwrap().tls_port, 8443);
        let warned = advice(text, "p.ini");
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0].starts_with("p.ini:2: warning: engine = threads: the threaded engine was removed"));
        assert!(warned[0].ends_with("remove this line"), "{warned:?}");
        assert!(advice("[DEFAULT]\nengine = loops\n", "p.ini")[0].contains("pibl always runs its event loops"));
        assert!(advice("[DEFAULT]\nport = 8080\n", "p.ini").is_empty());
        let typo = err("[DEFAULT]\nengine = thread\n");
        assert!(typo.contains("is not an engine (threads, loops)"), "{typo}");
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
            strip_targeted_cache_control: true,
            compress: true,
            compress_min_bytes: 1,
            backends: vec![parse_backend("[::1]:8080").unwrap(), parse_backend("10.1.2.3").unwrap()],
            header_timeout: Duration::from_millis(1500),
            keepalive_timeout: Duration::from_millis(1),
            client_timeout: Duration::from_secs(3600),
            connect_timeout: Duration::from_millis(250),
            backend_timeout: Duration::from_secs(1),
            tunnel_timeout: Duration::from_millis(90_500),
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
            underscores_in_headers: true,
            deny: parse_nets("10.0.0.0/8, ::1").unwrap(),
            allow: Vec::new(),
            trusted_proxies: parse_nets("127.0.0.1").unwrap(),
            routes: Vec::new(),
            api_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            metrics_bind: Some("[::1]:9100".parse().unwrap()),
            jwt_secret: "s3cret-value".to_string(),
            jwt_secret_file: Some(PathBuf::from("/etc/pibl/jwt secret")),
            jwt_ttl: Duration::from_millis(1500),
            admins: vec!["root@example.com".to_string(), "ops@example.org".to_string()],
            lockout_secs: Duration::from_secs(60),
            auth_rate: 0,
            health_interval: Duration::from_millis(250),
            health_path: "/status".to_string(),
            log_retention: 1,
            purge_interval: Duration::from_secs(3600),
            endpoint_allow: parse_nets("10.1.0.0/16, fd12::/16").unwrap(),
            metrics_auth: MetricsAuth::Token,
            app_prefix: "/apps/x/".to_string(),
            lockout_scope: LockoutScope::AccountIp,
            tls_port: 443,
            tls_cert: "/etc/pibl/my cert.pem".into(),
            tls_key: "/etc/pibl/key.pem".into(),
            tls_dir: "certs".into(),
            tls_sites: vec![TlsSite {
                name: "shop".into(),
                cert: "s.crt".into(),
                key: "s.key".into(),
                hosts: vec!["shop.test".into(), "*.shop.test".into()],
            }],
            acme_email: "ops@example.com".into(),
            acme_directory: "https://acme-staging-v02.api.letsencrypt.org/directory".into(),
            acme_domains: vec!["example.com".into(), "www.example.com".into()],
            acme_dir: "/var/lib/pibl/acme".into(),
            acme_ca_root: "pebble.pem".into(),
            https_redirect: true,
            hsts: Duration::from_secs(3600),
            backend_ca: "ca.pem".into(),
            backend_tls_verify: false,
        };
        assert_eq!(Config::from_ini_str(&modified.to_ini(), "x"), Ok(modified));
    }

    #[test]
    fn single_keys_are_checked_as_in_a_file() {
        let mut config = Config::default();
        assert_eq!(config.set_key("ttl", "90s"), Ok(()));
        assert_eq!(config.ttl, Duration::from_secs(90));
        assert_eq!(config.key_text("ttl").as_deref(), Some("90"));
        assert_eq!(config.set_key("port", "abc").unwrap_err().to_string(), "\"abc\" is not a port number (1-65535)");
        assert_eq!(config.set_key("prot", "80").unwrap_err().to_string(), "unknown key (did you mean \"port\"?)");
        assert_eq!(config.key_text("ip_server1"), None, "the backends are a list, not one key");
        assert_eq!(BackendAddr::parse("[::1]").map(|b| b.name), Ok("[::1]:80".to_string()));
        assert!(BackendAddr::parse("ftp://h").unwrap_err().to_string().contains("has a scheme"));
        assert!(BackendAddr::parse("https://h:8443/x").unwrap_err().to_string().contains("has a path"));
        let plain = BackendAddr::parse("http://127.0.0.1:81/").unwrap();
        assert_eq!((plain.name.as_str(), plain.tls), ("127.0.0.1:81", false));
        let tls = BackendAddr::parse("HTTPS://127.0.0.1").unwrap();
        assert_eq!((tls.name.as_str(), tls.addr.port(), tls.tls), ("127.0.0.1:443", 443, true));
        assert_eq!((tls.written().as_str(), tls.host()), ("https://127.0.0.1:443", "127.0.0.1"));
        assert_eq!(BackendAddr::parse("https://[::1]:8443").unwrap().host(), "::1");
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
    fn a_backend_listed_twice_names_both_lines() {
        assert_eq!(
            err("[DEFAULT]\nip_server1 = 127.0.0.1:9001\nip_server2 = 127.0.0.1:9002\nip_server3 = 127.0.0.1:9001\n"),
            "t.ini:4: ip_server3: 127.0.0.1:9001 is already ip_server1 (line 2); list each backend once"
        );
        // The same address however it is written; ordered by number, as the list is.
        assert_eq!(
            err("[DEFAULT]\nip_server2 = 127.0.0.1:80\nip_server1 = 127.0.0.1\n"),
            "t.ini:2: ip_server2: 127.0.0.1:80 is already ip_server1 (line 3); list each backend once"
        );
        assert!(
            err("[route.a]\nprefix = /a/\nservers = 127.0.0.1:1, 127.0.0.1:2, 127.0.0.1:1\n")
                .starts_with("t.ini:3: [route.a] servers: 127.0.0.1:1 is listed twice"),
            "{}",
            err("[route.a]\nprefix = /a/\nservers = 127.0.0.1:1, 127.0.0.1:2, 127.0.0.1:1\n")
        );
    }

    #[test]
    fn empty_and_header_less_files_get_advice() {
        let empty = advice("", "p.ini");
        assert_eq!(empty.len(), 1);
        assert!(empty[0].starts_with("p.ini: warning: the file has no settings"), "{empty:?}");
        assert!(empty[0].contains("`parser --out p.ini --force`"), "{empty:?}");
        assert_eq!(advice("# only a comment\n\n; and another\n", "p.ini"), empty);
        let bare = advice("\n# comment\nport = 8081\n", "p.ini");
        assert_eq!(bare.len(), 1);
        assert!(bare[0].starts_with("p.ini:3: warning: no section header"), "{bare:?}");
        assert!(bare[0].contains("add it on line 3"), "{bare:?}");
        assert!(advice("\u{feff}[DEFAULT]\nport = 8081\n", "p.ini").is_empty());
        assert!(advice(&Config::default().to_ini(), "p.ini").is_empty(), "what parser writes needs no advice");
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
