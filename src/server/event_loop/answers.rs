//! What a loop session writes itself and what it records: error answers and stored (cached)
//! responses appended to the client's output buffer, and the access-log line, metrics and app
//! execution-log entry of each finished request.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::cache::policy;
use crate::cache::Entry;
use crate::http::reason;
use crate::http::request::Request;
use crate::observe::access_log::AccessRecord;
use crate::observe::metrics::{self, Rejection};
use crate::proxy::cache_step;
use crate::server::shared::Shared;
use crate::upstream::apps::AppRoute;

/// What the records of one request need besides the request itself.
#[derive(Clone)]
pub struct Record {
    pub started: Instant,
    /// The client's own address (the access log shows the peer).
    pub peer: IpAddr,
    /// The `[route.NAME]` that matched, if any.
    pub route: Option<String>,
    /// The app of the management API the request went to, if any.
    pub app: Option<Arc<AppRoute>>,
    pub rejection: Option<Rejection>,
}

/// Writes the access-log line, the metrics and the app's execution-log entry of a finished request.
pub fn finish(shared: &Shared, rec: &Record, req: &Request, status: u16, body_bytes: u64, by: Option<&str>) {
    let elapsed = rec.started.elapsed();
    if shared.config.access_log {
        shared.access_log.log(&AccessRecord {
            time: SystemTime::now(),
            client: rec.peer,
            method: req.method(),
            target: req.target(),
            version: req.version,
            status,
            body_bytes,
            duration: elapsed,
            backend: by,
            referer: req.header("referer"),
            user_agent: req.header("user-agent"),
        });
    }
    // A refused request never reached the app lookup; find its app so its owner sees the refusal.
    let refused_app = match (&rec.app, &rec.route, rec.rejection) {
        (None, None, Some(_)) => shared.router.lookup(req.target()).map(|m| m.app),
        _ => None,
    };
    let app = rec.app.as_ref().or(refused_app.as_ref());
    let label = metrics::route_label(app.map(|a| a.name.as_str()), rec.route.as_deref());
    let now_secs = metrics::unix_secs(shared.clock.wall());
    shared.metrics.record(label, status, elapsed, rec.rejection, now_secs);
    if let Some(app) = &rec.app {
        shared.router.log_request(app, rec.peer, req, status, by.map(str::to_string), elapsed);
    }
}

/// Appends an answer pibl writes itself (an error) to `out`, with the error's own `extra` fields and
/// the connection's (`conn`: HSTS over TLS); returns the body bytes it carries.
pub fn error_answer(
    out: &mut Vec<u8>,
    status: u16,
    detail: &str,
    keep_alive: bool,
    head_only: bool,
    extra: &[u8],
    conn: &[u8],
) -> u64 {
    let body = format!("{status} {}: {detail}\n", reason(status));
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: {}\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    out.extend_from_slice(extra);
    out.extend_from_slice(conn);
    out.extend_from_slice(b"\r\n");
    if head_only {
        return 0;
    }
    out.extend_from_slice(body.as_bytes());
    body.len() as u64
}

/// Appends a stored response to `out`, or 304 when the client's own validators match it, with the
/// connection's fields (`conn`: HSTS over TLS, unless the stored head has its own); returns the
/// status and the body bytes sent.
pub fn entry_answer(
    out: &mut Vec<u8>,
    entry: &Entry,
    label: &str,
    conn: &[u8],
    req: &Request,
    keep_alive: bool,
    now: Instant,
) -> (u16, u64) {
    let age = entry.age(now).as_secs();
    let not_modified = policy::not_modified(
        req.header("if-none-match"),
        req.header("if-modified-since"),
        entry.header("etag"),
        entry.header("last-modified"),
    ) && entry.status == 200;
    // The encoding the client prefers, when one is stored.
    let encoded = cache_step::client_coding(req).and_then(|coding| entry.encoded(coding));
    let (head, body) = encoded.map_or((&entry.head, &entry.body), |e| (&e.head, &e.body));
    if not_modified {
        // RFC 9110 section 15.4.5: the fields a 200 would have carried that describe the representation.
        out.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\n");
        const KEPT: [&str; 7] =
            ["cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified"];
        for (name, value) in entry.headers() {
            if KEPT.iter().any(|k| k.eq_ignore_ascii_case(name)) {
                let _ = write!(out, "{name}: ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        }
    } else {
        out.extend_from_slice(head);
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    let _ = write!(out, "Age: {age}\r\nX-Cache: {label}\r\n");
    if entry.header("strict-transport-security").is_none() {
        out.extend_from_slice(conn);
    }
    out.extend_from_slice(if keep_alive { b"\r\n" as &[u8] } else { b"Connection: close\r\n\r\n" });
    if not_modified {
        return (304, 0);
    }
    if req.is_head() {
        return (entry.status, 0);
    }
    out.extend_from_slice(body);
    (entry.status, body.len() as u64)
}
