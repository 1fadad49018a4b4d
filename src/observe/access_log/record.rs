//! One finished request as the access log sees it ([`AccessRecord`]) and how it is written as a line:
//! `seed` (the original proxy's), `combined` (Apache/nginx) or `json`, with whatever a client sent
//! escaped so it cannot break a line apart or forge a field. Which format is used and where the lines
//! go is the access log's choice, made in its writer module.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::clock::Utc;

/// One finished request as the access log sees it. Everything is borrowed from the request, so
/// building one allocates nothing.
#[derive(Debug, Clone)]
pub struct AccessRecord<'a> {
    /// When the response was finished.
    pub time: SystemTime,
    pub client: IpAddr,
    pub method: &'a str,
    /// The origin-form target (`/path?query`).
    pub target: &'a str,
    /// Minor HTTP version of the request: 0 or 1.
    pub version: u8,
    pub status: u16,
    /// Body bytes sent to the client, head excluded (nginx's `$body_bytes_sent`).
    pub body_bytes: u64,
    pub duration: Duration,
    /// Who answered: a backend's name, `cache` for a cache hit, `None` when no one did.
    pub backend: Option<&'a str>,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
}

impl AccessRecord<'_> {
    /// The original proxy's line: `[*] Request done: <client> => <METHOD> <path> <status> <secs>s <= <backend>`.
    pub fn write_seed(&self, f: &mut impl fmt::Write) -> fmt::Result {
        write!(
            f,
            "[*] Request done: {} => {} {} {} {:.4}s <= {}",
            self.client,
            self.method,
            self.target,
            self.status,
            self.duration.as_secs_f64(),
            self.backend.unwrap_or("-"),
        )
    }

    /// Apache/nginx combined log format, which log analysers (GoAccess, AWStats) read as is.
    pub fn write_combined(&self, f: &mut impl fmt::Write) -> fmt::Result {
        // $remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"
        write!(f, "{} - - [", self.client)?;
        Utc::at(self.time).write_common_log(f)?;
        f.write_str("] \"")?;
        write_clf_escaped(f, self.method.as_bytes())?;
        f.write_char(' ')?;
        write_clf_escaped(f, self.target.as_bytes())?;
        write!(f, " HTTP/1.{}\" {} {} \"", self.version, self.status, self.body_bytes)?;
        write_clf_escaped(f, or_dash(self.referer))?;
        f.write_str("\" \"")?;
        write_clf_escaped(f, or_dash(self.user_agent))?;
        f.write_char('"')
    }

    /// One JSON object, for log shippers.
    pub fn write_json(&self, f: &mut impl fmt::Write) -> fmt::Result {
        f.write_str("{\"time\":\"")?;
        Utc::at(self.time).write_rfc3339(f)?;
        write!(f, "\",\"client\":\"{}\",\"method\":", self.client)?;
        write_json_string(f, self.method.as_bytes())?;
        f.write_str(",\"path\":")?;
        write_json_string(f, self.target.as_bytes())?;
        write!(
            f,
            ",\"status\":{},\"bytes\":{},\"duration_ms\":{:.3},\"backend\":",
            self.status,
            self.body_bytes,
            self.duration.as_secs_f64() * 1000.0
        )?;
        write_json_opt(f, self.backend.map(str::as_bytes))?;
        f.write_str(",\"user_agent\":")?;
        write_json_opt(f, self.user_agent)?;
        f.write_str(",\"referer\":")?;
        write_json_opt(f, self.referer)?;
        f.write_char('}')
    }
}

/// nginx writes `-` for a field that is missing or empty.
fn or_dash(value: Option<&[u8]>) -> &[u8] {
    match value {
        Some(v) if !v.is_empty() => v,
        _ => b"-",
    }
}

/// As nginx escapes log variables: `"`, `\`, control bytes and bytes past ASCII become `\xHH`, so a
/// client cannot break the line apart or forge a field.
fn write_clf_escaped(f: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            // Everything before `i` is printable ASCII, so it is valid UTF-8.
            f.write_str(std::str::from_utf8(&bytes[start..i]).unwrap_or_default())?;
            write!(f, "\\x{b:02X}")?;
            start = i + 1;
        }
    }
    f.write_str(std::str::from_utf8(&bytes[start..]).unwrap_or_default())
}

/// A JSON string: quotes, backslashes and control characters escaped; bytes that are not UTF-8
/// become U+FFFD so the line stays valid JSON; other non-ASCII text is written as UTF-8.
fn write_json_string(f: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    f.write_char('"')?;
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if u32::from(c) < 0x20 || c == '\u{7f}' => write!(f, "\\u{:04x}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

fn write_json_opt(f: &mut impl fmt::Write, value: Option<&[u8]>) -> fmt::Result {
    match value {
        Some(v) => write_json_string(f, v),
        None => f.write_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    fn record() -> AccessRecord<'static> {
        AccessRecord {
            time: at(1_700_000_000, 42),
            client: IpAddr::from([203, 0, 113, 9]),
            method: "GET",
            target: "/index.html?q=1",
            version: 1,
            status: 200,
            body_bytes: 5120,
            duration: Duration::from_micros(1234),
            backend: Some("10.0.1.12:8080"),
            referer: Some(b"http://example.com/start"),
            user_agent: Some(b"curl/8.5.0"),
        }
    }

    fn seed(r: &AccessRecord<'_>) -> String {
        let mut line = String::new();
        r.write_seed(&mut line).unwrap();
        line
    }

    fn combined(r: &AccessRecord<'_>) -> String {
        let mut line = String::new();
        r.write_combined(&mut line).unwrap();
        line
    }

    fn json(r: &AccessRecord<'_>) -> String {
        let mut line = String::new();
        r.write_json(&mut line).unwrap();
        line
    }

    #[test]
    fn seed_line_is_the_original_proxys() {
        assert_eq!(
            seed(&record()),
            "[*] Request done: 203.0.113.9 => GET /index.html?q=1 200 0.0012s <= 10.0.1.12:8080"
        );
        let none = AccessRecord { backend: None, status: 502, ..record() };
        assert!(seed(&none).ends_with(" 502 0.0012s <= -"));
    }

    #[test]
    fn combined_line() {
        assert_eq!(
            combined(&record()),
            "203.0.113.9 - - [14/Nov/2023:22:13:20 +0000] \"GET /index.html?q=1 HTTP/1.1\" 200 5120 \
             \"http://example.com/start\" \"curl/8.5.0\""
        );
        // Missing or empty fields are `-`; quotes, backslashes, control and non-ASCII bytes are escaped.
        let odd = AccessRecord {
            client: IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]),
            version: 0,
            referer: Some(b""),
            user_agent: Some(b"a\"b\\c\x01\xc3\xa9"),
            body_bytes: 0,
            ..record()
        };
        assert_eq!(
            combined(&odd),
            "::1 - - [14/Nov/2023:22:13:20 +0000] \"GET /index.html?q=1 HTTP/1.0\" 200 0 \"-\" \
             \"a\\x22b\\x5Cc\\x01\\xC3\\xA9\""
        );
        let bare = AccessRecord { referer: None, user_agent: None, ..record() };
        assert!(combined(&bare).ends_with(" 200 5120 \"-\" \"-\""));
    }

    #[test]
    fn json_line() {
        assert_eq!(
            json(&record()),
            "{\"time\":\"2023-11-14T22:13:20.042Z\",\"client\":\"203.0.113.9\",\"method\":\"GET\",\
             \"path\":\"/index.html?q=1\",\"status\":200,\"bytes\":5120,\"duration_ms\":1.234,\
             \"backend\":\"10.0.1.12:8080\",\"user_agent\":\"curl/8.5.0\",\"referer\":\"http://example.com/start\"}"
        );
        let odd = AccessRecord {
            backend: None,
            user_agent: Some("q\"b\\s\n\r\t\x01\x7f é 日本 \u{2028}".as_bytes()),
            referer: Some(b"\xff"),
            ..record()
        };
        let text = json(&odd);
        assert!(text.contains(r#""backend":null,"#), "{text}");
        assert!(text.contains(r#""user_agent":"q\"b\\s\n\r\t\u0001\u007f é 日本 "#), "{text}");
        assert!(text.ends_with("\"referer\":\"\u{fffd}\"}"), "{text}");
        assert!(!text.contains('\n'));
    }
}
