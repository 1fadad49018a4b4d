//! What the plain-HTTP port answers by itself once HTTPS is set up, before any route or backend:
//! ACME HTTP-01 challenges, and with `https_redirect = on` a 308 to the same URL on https. Pure
//! functions over the request line and `Host`, kept apart from the loops' sockets; plus the HSTS header
//! for answers sent over TLS (RFC 6797 §7.2 forbids it over plain HTTP, so redirects never carry it).

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::challenge::{Challenges, CHALLENGE_PATH};
use crate::config::Config;

/// The plain port's HTTPS duties: ACME is fixed at start-up, the redirect follows SIGHUP.
#[derive(Debug, Default)]
pub struct PlainPort {
    /// The TLS port redirects go to with `https_redirect = on`; 0 when off.
    redirect_to: AtomicU16,
    /// ACME is on (`acme_domains`): unknown challenge tokens are answered 404 here, not forwarded.
    pub acme: bool,
    /// Tokens the ACME client is being validated on.
    pub challenges: Arc<Challenges>,
}

impl PlainPort {
    pub fn from_config(config: &Config, challenges: Arc<Challenges>) -> PlainPort {
        let port = PlainPort { redirect_to: AtomicU16::new(0), acme: !config.acme_domains.is_empty(), challenges };
        port.set_redirect(config.https_redirect, config.tls_port);
        port
    }

    /// `https_redirect` to the TLS listener on `tls_port` (the running one: a reload cannot move it).
    pub fn set_redirect(&self, on: bool, tls_port: u16) {
        self.redirect_to.store(if on { tls_port } else { 0 }, Ordering::Relaxed);
    }

    /// `Some(tls_port)` while `https_redirect` is on.
    pub fn redirect_to(&self) -> Option<u16> {
        Some(self.redirect_to.load(Ordering::Relaxed)).filter(|&port| port != 0)
    }
}

/// An answer the plain port gives without a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainReply {
    pub status: u16,
    /// `Location` of a redirect.
    pub location: Option<String>,
    pub body: String,
}

impl PlainReply {
    /// The whole response as bytes; `head_only` for HEAD.
    pub fn to_bytes(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            308 => "Permanent Redirect",
            400 => "Bad Request",
            404 => "Not Found",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: {}\r\n",
            self.status,
            self.body.len(),
            if keep_alive { "keep-alive" } else { "close" }
        );
        if let Some(location) = &self.location {
            out.push_str(&format!("Location: {location}\r\n"));
        }
        out.push_str("\r\n");
        if !head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

/// The plain port's own answer to `method target` with `Host: host`, or `None` to go on as usual.
pub fn plain_answer(port: &PlainPort, method: &str, target: &str, host: Option<&[u8]>) -> Option<PlainReply> {
    let path = origin_path(target);
    if let Some(token) = path.strip_prefix(CHALLENGE_PATH) {
        let token = token.split(['?', '#']).next().unwrap_or("");
        if let Some(answer) = port.challenges.get(token) {
            if matches!(method, "GET" | "HEAD") {
                return Some(PlainReply { status: 200, location: None, body: answer });
            }
        }
        if port.acme {
            return Some(PlainReply { status: 404, location: None, body: "no such ACME challenge\n".into() });
        }
        // Without ACME here, a backend may answer challenges itself (e.g. certbot --webroot behind
        // pibl): neither answered nor redirected.
        return None;
    }
    let tls_port = port.redirect_to()?;
    Some(match host.and_then(redirect_host) {
        Some(host) => {
            let port = if tls_port == 443 { String::new() } else { format!(":{tls_port}") };
            let location = format!("https://{host}{port}{path}");
            PlainReply { status: 308, location: Some(location.clone()), body: format!("moved to {location}\n") }
        }
        None => PlainReply {
            status: 400,
            location: None,
            body: "400 Bad Request: the redirect to https needs a valid Host header\n".into(),
        },
    })
}

/// The header field lines every answer over TLS carries: `Strict-Transport-Security` with `hsts`
/// as max-age, or nothing when it is zero.
pub fn tls_answer_fields(max_age: Duration) -> Vec<u8> {
    hsts_header(max_age).map(|v| format!("Strict-Transport-Security: {v}\r\n").into_bytes()).unwrap_or_default()
}

/// The `Strict-Transport-Security` value for answers over TLS (`hsts` = max-age); `None` when off.
pub fn hsts_header(max_age: Duration) -> Option<String> {
    (!max_age.is_zero()).then(|| format!("max-age={}", max_age.as_secs()))
}

/// The path and query of a target, also when it came in absolute form (`http://host/path`).
fn origin_path(target: &str) -> &str {
    if target.starts_with('/') {
        return target;
    }
    match target.split_once("://").map(|(_, rest)| rest) {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => "/",
    }
}

/// The host of a `Host` header without its port, if it is a name or address a URL may carry: no
/// user info, path or spaces, so a crafted header cannot send the client elsewhere.
fn redirect_host(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let host = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        inside.parse::<std::net::Ipv6Addr>().ok()?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok())) {
            return None;
        }
        return Some(format!("[{inside}]"));
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => host,
            Some(_) => return None,
            None => text,
        }
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    ok.then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(redirect_to: Option<u16>, acme: bool) -> PlainPort {
        PlainPort {
            redirect_to: AtomicU16::new(redirect_to.unwrap_or(0)),
            acme,
            challenges: Arc::new(Challenges::default()),
        }
    }

    #[test]
    fn redirects_keep_path_and_query_and_drop_the_plain_port() {
        let p = port(Some(443), false);
        let r = plain_answer(&p, "GET", "/a/b?c=d", Some(b"Example.com:8080")).unwrap();
        assert_eq!((r.status, r.location.as_deref()), (308, Some("https://example.com/a/b?c=d")));
        let p = port(Some(8443), false);
        let r = plain_answer(&p, "POST", "http://ignored/x", Some(b"[::1]:80")).unwrap();
        assert_eq!(r.location.as_deref(), Some("https://[::1]:8443/x"));
        assert_eq!(plain_answer(&p, "GET", "*", Some(b"h")).unwrap().location.as_deref(), Some("https://h:8443/"));
    }

    #[test]
    fn a_bad_or_missing_host_is_400_not_a_redirect_elsewhere() {
        let p = port(Some(443), false);
        for host in
            [None, Some(&b"evil.com/x"[..]), Some(b"a@b"), Some(b"a b"), Some(b"h:port"), Some(b"[zz]"), Some(b"")]
        {
            let r = plain_answer(&p, "GET", "/", host).unwrap();
            assert_eq!((r.status, r.location), (400, None), "{host:?}");
        }
    }

    #[test]
    fn challenges_are_answered_and_never_redirected() {
        let p = port(Some(443), true);
        p.challenges.insert("tok-1", "tok-1.thumb");
        let r = plain_answer(&p, "GET", "/.well-known/acme-challenge/tok-1", Some(b"h")).unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "tok-1.thumb"));
        let r = plain_answer(&p, "GET", "/.well-known/acme-challenge/other", Some(b"h")).unwrap();
        assert_eq!(r.status, 404, "an unknown token under ACME is not redirected");
        let bytes = String::from_utf8(r.to_bytes(true, true)).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 404 Not Found\r\n") && bytes.ends_with("\r\n\r\n"), "{bytes}");
        p.challenges.remove("tok-1");
        assert_eq!(plain_answer(&p, "GET", "/.well-known/acme-challenge/tok-1", None).unwrap().status, 404);
    }

    #[test]
    fn without_redirect_or_acme_everything_goes_on() {
        let p = port(None, false);
        assert_eq!(plain_answer(&p, "GET", "/", Some(b"h")), None);
        assert_eq!(plain_answer(&p, "GET", "/.well-known/acme-challenge/x", Some(b"h")), None);
        let p = port(Some(443), false);
        assert_eq!(plain_answer(&p, "GET", "/.well-known/acme-challenge/x", Some(b"h")), None, "a backend's own");
    }

    #[test]
    fn hsts_is_off_at_zero() {
        assert_eq!(hsts_header(Duration::ZERO), None);
        assert_eq!(hsts_header(Duration::from_secs(31_536_000)).as_deref(), Some("max-age=31536000"));
    }
}
