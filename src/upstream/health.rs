//! Active health checks: one thread GETs every app endpoint's status path, and every `ip_serverN`
//! backend's `health_path` when one is set, each `health_interval`. Anything but a 200 within
//! [`PROBE_TIMEOUT`] is a failure; [`FALL`] failures in a row take a backend out of rotation and
//! [`RISE`] passes in a row bring it back, so one slow answer does not flap it. The state is an
//! atomic on the backend, which `Pool::candidates` reads without a lock. An `https://` backend is
//! checked over TLS, with the same trust settings as the requests it serves.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::background::Background;
use crate::clock::Clock;
use crate::http::response;
use crate::store::LogEntry;
use crate::tls::client::backend_server_name;
use crate::upstream::apps::Router;
use crate::upstream::backend::{is_local_exhaustion, Backend};

/// Failures in a row that take a healthy backend out of rotation.
pub const FALL: u32 = 2;
/// Passes in a row that bring an unhealthy backend back.
pub const RISE: u32 = 2;
/// Longest a probe may take, connect and answer together.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most probes run at once.
pub const PARALLEL: usize = 8;
/// Largest status answer head read.
const MAX_HEAD: usize = 16 * 1024;

/// The pool backends to probe and on which path, read afresh each round.
pub type PoolTargets = Box<dyn Fn() -> Vec<(Arc<Backend>, String)> + Send + Sync>;

/// What the checker looks at.
pub struct Targets {
    pub router: Arc<Router>,
    /// The `ip_serverN` backends (on `health_path`) and each route's servers (on its own path).
    pub pools: PoolTargets,
    /// How `https://` backends are spoken to (the data plane's own configuration).
    pub tls: Option<Arc<ClientConfig>>,
}

/// The running checker thread.
pub struct HealthChecker {
    thread: Background,
}

impl HealthChecker {
    pub fn start(targets: Targets, interval: Duration, clock: Clock) -> io::Result<HealthChecker> {
        let thread = Background::spawn("pibl-health", move |stop| loop {
            check_all(&targets, &clock);
            if stop.wait(interval) {
                break;
            }
        })?;
        Ok(HealthChecker { thread })
    }

    /// Stops after the round in progress, if any.
    pub fn shutdown(self) {
        self.thread.stop();
    }
}

/// Why a probe has no status to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// The backend refused, timed out, closed, answered garbage or is not allowed: counts against it.
    Backend(String),
    /// pibl had no descriptor or memory for the probe: says nothing of the backend, so it neither
    /// passes nor fails the check (a proxy out of descriptors must not empty its own pools).
    Local(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Backend(why) => f.write_str(why),
            ProbeError::Local(why) => write!(f, "pibl is out of resources ({why})"),
        }
    }
}

/// One probe to run: which backend, with which `Host` and path, and for which app endpoint.
struct Job<'a> {
    backend: &'a Arc<Backend>,
    host: String,
    path: &'a str,
    /// (app name, app pk, endpoint id) for an app endpoint; `None` for an `ip_serverN` backend.
    app: Option<(&'a str, i64, i64)>,
}

/// Runs one round of checks over every target, up to [`PARALLEL`] probes at a time, so a few
/// endpoints that time out do not hold up the others' checks.
pub fn check_all(targets: &Targets, clock: &Clock) {
    let routes = targets.router.snapshot();
    let mut jobs = Vec::new();
    for app in routes.apps() {
        for ep in &app.endpoints {
            if let Some(backend) = &ep.backend {
                let host = format!("{}:{}", ep.host, ep.port);
                jobs.push(Job { backend, host, path: &ep.statuspath, app: Some((&app.name, app.pk, ep.id)) });
            }
        }
    }
    let pools = (targets.pools)();
    for (backend, path) in &pools {
        jobs.push(Job { backend, host: backend.name.clone(), path, app: None });
    }
    let next = AtomicUsize::new(0);
    let run = || {
        while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
            check_one(targets, job, clock);
        }
    };
    thread::scope(|scope| {
        for _ in 1..jobs.len().min(PARALLEL) {
            scope.spawn(run);
        }
        run();
    });
}

fn check_one(targets: &Targets, job: &Job<'_>, clock: &Clock) {
    let backend = job.backend;
    // An app endpoint's address is checked before each probe too (see `upstream::policy`).
    let result = match backend.permitted() {
        Ok(()) => match (&backend.tls_host, &targets.tls) {
            (None, _) => probe(backend.addr, &job.host, job.path, PROBE_TIMEOUT),
            (Some(name), Some(config)) => probe_tls(backend.addr, &job.host, job.path, PROBE_TIMEOUT, config, name),
            (Some(_), None) => {
                Err(ProbeError::Backend("https:// backend, but pibl has no TLS client configuration".into()))
            }
        },
        Err(e) => Err(ProbeError::Backend(e.to_string())),
    };
    if let Err(e @ ProbeError::Local(_)) = &result {
        log::warn!("backend {}: health check skipped: {e}", backend.name);
        return;
    }
    let Some(healthy) = record(backend, &result, clock) else { return };
    let detail = describe(healthy, job.path, &result);
    match job.app {
        Some((name, pk, endpoint_id)) => {
            log::warn!("app {name} endpoint {endpoint_id} ({}): {detail}", backend.name);
            // The owner learns up or down, not why: "refused" against "timed out" or "answered 404"
            // would make endpoints a port scanner of whatever pibl can reach. The reason is in the
            // operator's log above.
            let state = if healthy { "healthy again" } else { "out of rotation" };
            targets.router.log(LogEntry {
                app_pk: pk,
                time_ms: clock.now_ms(),
                kind: "health".into(),
                endpoint: Some(backend.name.clone()),
                detail: Some(format!("endpoint {endpoint_id}: {state}")),
                ..LogEntry::default()
            });
        }
        None => log::warn!("backend {}: {detail}", backend.name),
    }
}

fn record(backend: &Backend, result: &Result<u16, ProbeError>, clock: &Clock) -> Option<bool> {
    backend.record_check(matches!(result, Ok(200)), clock.now_ms(), FALL, RISE)
}

fn describe(healthy: bool, path: &str, result: &Result<u16, ProbeError>) -> String {
    let what = match result {
        Ok(status) => format!("GET {path} answered {status}"),
        Err(e) => format!("GET {path} failed: {e}"),
    };
    if healthy {
        format!("healthy again ({what})")
    } else {
        format!("out of rotation ({what})")
    }
}

/// GETs `path` from `addr` and returns the status code.
pub fn probe(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> Result<u16, ProbeError> {
    ask(connect(addr, timeout)?, host, path).map_err(ProbeError::Backend)
}

/// [`probe`] over TLS, asking for `name` (SNI unless it is an address) and checking the certificate
/// as `config` says.
pub fn probe_tls(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
    config: &Arc<ClientConfig>,
    name: &str,
) -> Result<u16, ProbeError> {
    let name = backend_server_name(name).map_err(|e| ProbeError::Backend(e.to_string()))?;
    let conn = ClientConnection::new(Arc::clone(config), name).map_err(|e| ProbeError::Backend(format!("TLS: {e}")))?;
    ask(StreamOwned::new(conn, connect(addr, timeout)?), host, path).map_err(ProbeError::Backend)
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ProbeError> {
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| match is_local_exhaustion(&e) {
        true => ProbeError::Local(e.to_string()),
        false => ProbeError::Backend(format!("connect: {e}")),
    })?;
    let set = |e: io::Error| ProbeError::Backend(e.to_string());
    stream.set_read_timeout(Some(timeout)).map_err(set)?;
    stream.set_write_timeout(Some(timeout)).map_err(set)?;
    Ok(stream)
}

/// Sends the status request on `stream` and reads the final answer's status.
fn ask<S: Read + Write>(mut stream: S, host: &str, path: &str) -> Result<u16, String> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: pibl-health\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        match response::parse(&buf, false) {
            Ok(Some((res, _))) if !res.is_informational() => return Ok(res.status),
            Ok(Some((_, len))) => {
                buf.drain(..len);
                continue;
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        if buf.len() >= MAX_HEAD {
            return Err("status answer head too large".into());
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("connection closed before an answer".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server that reads the request head and writes `answer`.
    fn answering(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let _ = stream.write_all(answer);
            }
        });
        addr
    }

    #[test]
    fn probe_reads_the_final_status() {
        let t = Duration::from_secs(2);
        let ok = answering(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(probe(ok, "h", "/status", t), Ok(200));
        assert_eq!(probe(answering(b"HTTP/1.0 503 Busy\r\n\r\n"), "h", "/", t), Ok(503));
        assert!(probe(answering(b"garbage\r\n\r\n"), "h", "/", t).is_err());
        assert!(probe(answering(b""), "h", "/", t).unwrap_err().to_string().contains("closed"));
    }
}
