//! Typed values from INI text and back: ports, counts, sizes (`16m`), durations (`500ms`, `2m`),
//! booleans, addresses, paths, e-mail lists and backend addresses. Each parser returns the message that
//! follows `file:line: key: `, quoting the value as written; each renderer writes what its parser reads
//! back to the same value.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::ValueError;

/// One upstream server as written in the INI (`ip_serverN = [https://]host[:port]`), resolved at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendAddr {
    /// The text the user wrote without its scheme, normalised to `host:port` (used in logs and the
    /// `Via`-free access log).
    pub name: String,
    /// Where pibl connects.
    pub addr: SocketAddr,
    /// Written `https://...`: pibl speaks TLS to it (with SNI and certificate checks).
    pub tls: bool,
}

impl BackendAddr {
    /// Reads `host`, `host:port`, `[v6]` or `[v6]:port`, optionally after `http://` or `https://`, as an
    /// `ip_serverN` value is read (port 80, or 443 for https, if left out), resolving a host name now.
    pub fn parse(text: &str) -> Result<BackendAddr, ValueError> {
        parse_backend(text).map_err(ValueError::new)
    }

    /// A plain-HTTP backend at `addr`, named `name`.
    pub fn plain(name: String, addr: SocketAddr) -> BackendAddr {
        BackendAddr { name, addr, tls: false }
    }

    /// The value as `parser.ini` holds it: `host:port`, or `https://host:port`.
    pub fn written(&self) -> String {
        if self.tls {
            format!("https://{}", self.name)
        } else {
            self.name.clone()
        }
    }

    /// The host part of the name, without port or IPv6 brackets: what TLS sends as SNI and checks
    /// the backend's certificate against.
    pub fn host(&self) -> &str {
        let host = self.name.rsplit_once(':').map_or(self.name.as_str(), |(host, _)| host);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// The longest duration accepted: a year.
const MAX_DURATION_MS: u64 = 365 * 24 * 3600 * 1000;
const KIB: u64 = 1024;
pub(super) const MIB: u64 = 1024 * KIB;
pub(super) const GIB: u64 = 1024 * MIB;

pub(super) fn parse_port(v: &str) -> Result<u16, String> {
    match v.trim().parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("{v:?} is not a port number (1-65535)")),
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

pub(super) fn parse_count(v: &str, min: usize, max: usize) -> Result<usize, String> {
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
pub(super) fn parse_size(v: &str) -> Result<u64, String> {
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

pub(super) fn parse_buffer_bytes(v: &str) -> Result<usize, String> {
    let n = parse_size(v)?;
    match usize::try_from(n) {
        Ok(n) if (1024..=1024 * 1024).contains(&n) => Ok(n),
        _ => Err(format!("{v:?} is out of range (1024-1048576 bytes, i.e. 1k-1m)")),
    }
}

/// A duration: a plain number of seconds (as the original parser.ini wrote `ttl = 60`) or a number with
/// `ms`, `s`, `m` or `h`. Capped at a year so adding it to an `Instant` can never overflow.
pub(super) fn parse_duration(v: &str) -> Result<Duration, String> {
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

pub(super) fn parse_timeout(v: &str) -> Result<Duration, String> {
    let d = parse_duration(v)?;
    if d.is_zero() {
        return Err(format!("{v:?} is not allowed: a timeout must be above 0 (e.g. 10 or 500ms)"));
    }
    Ok(d)
}

pub(super) fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{v:?} is not on or off (on/off, true/false, yes/no, 1/0)")),
    }
}

pub(super) fn parse_log_level(v: &str) -> Result<log::LevelFilter, String> {
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

pub(super) fn parse_bind(v: &str) -> Result<IpAddr, String> {
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
pub(super) fn parse_metrics_bind(v: &str) -> Result<Option<SocketAddr>, String> {
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

pub(super) fn parse_database(v: &str) -> Result<PathBuf, String> {
    if v.trim().is_empty() {
        return Err("has no value: give the SQLite file name, e.g. pibl.db".to_string());
    }
    // A postgres:// URL is checked now, so a mistake names this line rather than failing at start-up.
    super::database::Database::parse(v)?;
    Ok(PathBuf::from(v))
}

/// `admins`: a comma-separated list of e-mail addresses (empty entries are skipped).
pub(super) fn parse_admins(v: &str) -> Result<Vec<String>, String> {
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
pub(super) fn parse_health_path(v: &str) -> Result<String, String> {
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
pub(super) fn parse_server_number(suffix: &str) -> Result<u32, String> {
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
pub(super) fn parse_backend(v: &str) -> Result<BackendAddr, String> {
    let t = v.trim();
    if t.is_empty() {
        return Err("has no value: write host or host:port, e.g. 127.0.0.1:9001".to_string());
    }
    let (t, tls) = match t.split_once("://") {
        None => (t, false),
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "http" => (rest.trim_end_matches('/'), false),
            "https" => (rest.trim_end_matches('/'), true),
            _ => {
                return Err(format!("{v:?} has a scheme pibl does not speak: write host:port, or http:// or https://"))
            }
        },
    };
    if t.contains('/') {
        return Err(format!("{v:?} has a path: write only [https://]host[:port]"));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (inside, after) =
            rest.split_once(']').ok_or_else(|| format!("{v:?} has no closing \"]\" (IPv6 is written [::1]:8080)"))?;
        let ip: Ipv6Addr = inside.parse().map_err(|_| format!("{inside:?} in {v:?} is not an IPv6 address"))?;
        let port = match after {
            "" => default_port,
            _ => match after.strip_prefix(':') {
                Some(p) => parse_port(p).map_err(|e| format!("in {v:?}: {e}"))?,
                None => return Err(format!("{v:?}: only \":port\" may follow \"]\"")),
            },
        };
        (IpAddr::V6(ip).to_string(), port)
    } else if let Ok(ip) = t.parse::<Ipv6Addr>() {
        (ip.to_string(), default_port)
    } else if let Some((host, port)) = t.rsplit_once(':') {
        if host.contains(':') {
            return Err(format!("{v:?}: write IPv6 addresses in brackets, e.g. [::1]:8080"));
        }
        (host.to_string(), parse_port(port).map_err(|e| format!("in {v:?}: {e}"))?)
    } else {
        (t.to_string(), default_port)
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
    Ok(BackendAddr { name, addr, tls })
}

/// Whole seconds as a plain number (the seed's `ttl = 60`), anything finer in milliseconds, rounded up so a
/// tiny non-zero timeout never turns into an invalid 0.
pub(super) fn render_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{}ms", d.as_nanos().div_ceil(1_000_000))
    }
}

/// `16m` and `1g` where exact; KiB multiples stay plain (8192 reads as bytes at a glance).
pub(super) fn render_size(n: u64) -> String {
    if n != 0 && n.is_multiple_of(GIB) {
        format!("{}g", n / GIB)
    } else if n != 0 && n.is_multiple_of(MIB) {
        format!("{}m", n / MIB)
    } else {
        n.to_string()
    }
}

/// Quotes a path only when rust-ini would otherwise change it (surrounding spaces, a leading quote).
pub(super) fn render_path(path: &Path) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
