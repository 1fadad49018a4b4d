//! Active health checks: one thread GETs every app endpoint's status path, and every `ip_serverN`
//! backend's `health_path` when one is set, each `health_interval`. Anything but a 200 within
//! [`PROBE_TIMEOUT`] is a failure; [`FALL`] failures in a row take a backend out of rotation and
//! [`RISE`] passes in a row bring it back, so one slow answer does not flap it. The state is an
//! atomic on the backend, which `Pool::candidates` reads without a lock.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};

use crate::backend::Backend;
use crate::clock::Clock;
use crate::http::response;
use crate::routing::Router;
use crate::store::LogEntry;

/// Failures in a row that take a healthy backend out of rotation.
pub const FALL: u32 = 2;
/// Passes in a row that bring an unhealthy backend back.
pub const RISE: u32 = 2;
/// Longest a probe may take, connect and answer together.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest status answer head read.
const MAX_HEAD: usize = 16 * 1024;

/// What the checker looks at.
pub struct Targets {
    pub router: Arc<Router>,
    /// The `ip_serverN` backends, with `health_path` (`None`: not checked).
    pub defaults: Vec<Arc<Backend>>,
    pub default_path: Option<String>,
}

/// The running checker thread.
pub struct HealthChecker {
    stop: Sender<()>,
    handle: Option<JoinHandle<()>>,
}

impl HealthChecker {
    pub fn start(targets: Targets, interval: Duration, clock: Clock) -> io::Result<HealthChecker> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let handle = thread::Builder::new().name("pibl-health".into()).spawn(move || loop {
            check_all(&targets, &clock);
            match stopped.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => break,
            }
        })?;
        Ok(HealthChecker { stop, handle: Some(handle) })
    }

    pub fn shutdown(mut self) {
        let _ = self.stop.try_send(());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Runs one round of checks over every target.
pub fn check_all(targets: &Targets, clock: &Clock) {
    let routes = targets.router.snapshot();
    for app in routes.apps() {
        for ep in &app.endpoints {
            let Some(backend) = &ep.backend else { continue };
            let host = format!("{}:{}", ep.host, ep.port);
            let result = probe(backend.addr, &host, &ep.statuspath, PROBE_TIMEOUT);
            if let Some(healthy) = record(backend, &result, clock) {
                let detail = describe(healthy, &ep.statuspath, &result);
                log::warn!("app {} endpoint {} ({}): {detail}", app.name, ep.id, backend.name);
                targets.router.log(LogEntry {
                    app_pk: app.pk,
                    time_ms: clock.now_ms(),
                    kind: "health".into(),
                    endpoint: Some(backend.name.clone()),
                    detail: Some(format!("endpoint {}: {detail}", ep.id)),
                    ..LogEntry::default()
                });
            }
        }
    }
    if let Some(path) = &targets.default_path {
        for backend in &targets.defaults {
            let result = probe(backend.addr, &backend.name, path, PROBE_TIMEOUT);
            if let Some(healthy) = record(backend, &result, clock) {
                log::warn!("backend {}: {}", backend.name, describe(healthy, path, &result));
            }
        }
    }
}

fn record(backend: &Backend, result: &Result<u16, String>, clock: &Clock) -> Option<bool> {
    backend.record_check(matches!(result, Ok(200)), clock.now_ms(), FALL, RISE)
}

fn describe(healthy: bool, path: &str, result: &Result<u16, String>) -> String {
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
pub fn probe(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> Result<u16, String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
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
