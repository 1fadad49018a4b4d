//! The management API server: its own listener (`api_port`), an acceptor thread, a `gate` thread
//! that holds every connection while its request arrives (whole-request deadline, per-address cap),
//! and a small fixed pool of workers that only ever see whole requests, apart from the data plane, so
//! API load never takes a proxy worker and slow clients never take an API worker. Each connection is
//! kept alive; a request flows `gate` (head and body, bounded by `wire`: 413 past [`MAX_BODY`])
//! -> `dispatch` (method and path to an endpoint of `users`, `apps`, `admin` or `status`) -> a
//! [`Reply`] (`reply`), always JSON but for the spec, the metrics and the dashboard. The endpoints
//! share one [`ApiState`] (`state`); `scrape` serves `/metrics` on its own port when asked to.

mod admin;
pub mod apps;
mod auth;
pub mod dispatch;
mod gate;
mod input;
pub mod json;
pub mod reply;
pub mod scrape;
pub mod state;
pub mod status;
pub mod throttle;
mod tls;
mod users;
mod wire;

/// The query parameters `DELETE /api/cache` takes, for the spec's test.
pub use admin::PURGE_PARAMETERS;

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::background::Background;
use crate::http::body::BodyError;
use crate::http::request;
use crate::server::conn::PerIpLimit;
use crossbeam_channel::Receiver;

use gate::{Gate, Ready, MAX_CONN_PER_IP};
pub use reply::{ApiError, Reply};
pub use state::ApiState;
pub use wire::MAX_BODY;
use wire::{linger, LIMITS, REQUEST_TIMEOUT};

/// Worker threads answering API requests (whole requests only: waiting clients hold none).
pub const API_THREADS: usize = 4;
/// Complete requests waiting for a worker; past it the gate waits.
const QUEUE: usize = 64;

/// The running API server.
pub struct ApiServer {
    local_addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    acceptor: Option<Background>,
    gate: Option<(Arc<Gate>, Background)>,
    workers: Vec<Background>,
}

impl ApiServer {
    /// Serves `state` on an already bound listener.
    pub fn start(listener: TcpListener, state: Arc<ApiState>) -> io::Result<ApiServer> {
        let local_addr = listener.local_addr()?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Gate::new()?);
        let (tx, rx) = crossbeam_channel::bounded::<Ready>(QUEUE);
        let mut workers = Vec::with_capacity(API_THREADS);
        for i in 0..API_THREADS {
            let (rx, state, shutdown, gate) =
                (rx.clone(), Arc::clone(&state), Arc::clone(&shutdown), Arc::clone(&gate));
            // Stopped by the queue: it ends when the gate thread, its only sender, has finished.
            workers.push(Background::spawn(&format!("pibl-api-{i}"), move |_| worker(&rx, &state, &shutdown, &gate))?);
        }
        let gate_thread = {
            let gate = Arc::clone(&gate);
            Background::spawn("pibl-api-gate", move |stop| gate.run(&tx, stop))?
        };
        let acceptor = {
            let (shutdown, gate) = (Arc::clone(&shutdown), Arc::clone(&gate));
            // Stopped by the shared flag and a connection to itself that wakes its accept().
            Background::spawn("pibl-api-acceptor", move |_| accept(&listener, &gate, &shutdown))?
        };
        Ok(ApiServer { local_addr, shutdown, acceptor: Some(acceptor), gate: Some((gate, gate_thread)), workers })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes waiting connections, lets requests being answered finish.
    pub fn shutdown(mut self) {
        self.shutdown.store(true, Ordering::Release);
        crate::server::wake::wake_acceptor(self.local_addr);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.stop();
        }
        if let Some((gate, thread)) = self.gate.take() {
            // Woken after the signal is raised, so it cannot go back to sleep without seeing it.
            thread.stop_waking(|| gate.wake());
        }
        for worker in self.workers.drain(..) {
            worker.stop();
        }
    }
}

fn accept(listener: &TcpListener, gate: &Gate, shutdown: &AtomicBool) {
    let per_ip = Arc::new(PerIpLimit::default());
    for conn in listener.incoming() {
        if shutdown.load(Ordering::Acquire) {
            break;
        }
        match conn {
            Ok(mut stream) => {
                let Ok(peer) = stream.peer_addr() else { continue };
                let Some(slot) = per_ip.acquire(peer.ip(), MAX_CONN_PER_IP) else {
                    log::info!("api: refusing {peer}: {MAX_CONN_PER_IP} connections from that address already");
                    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
                    let why = format!("too many connections from your address (at most {MAX_CONN_PER_IP})");
                    let _ = stream.write_all(&ApiError::Request(429, why).reply().encode(false, false));
                    continue;
                };
                gate.admit(Ready { stream, peer, buf: crate::http::buffer::ReadBuf::new(), slot });
            }
            Err(e) => {
                log::warn!("api: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn worker(rx: &Receiver<Ready>, state: &ApiState, shutdown: &AtomicBool, gate: &Gate) {
    for conn in rx.iter() {
        let peer = conn.peer;
        let served = panic::catch_unwind(AssertUnwindSafe(|| serve(conn, state, shutdown, gate)));
        if served.is_err() {
            log::error!("api: internal error while serving {peer}; connection closed");
        }
    }
}

/// Answers the one whole request the gate buffered, then hands a kept-alive connection back to it.
fn serve(conn: Ready, state: &ApiState, shutdown: &AtomicBool, gate: &Gate) {
    let Ready { mut stream, peer, mut buf, slot } = conn;
    if stream.set_nodelay(true).is_err() || stream.set_write_timeout(Some(REQUEST_TIMEOUT)).is_err() {
        return;
    }
    let req = match request::parse(buf.filled(), &LIMITS) {
        Ok(Some((req, len))) => {
            buf.consume(len);
            req
        }
        // The gate hands over only complete heads; nothing to answer otherwise.
        Ok(None) => return,
        Err(e) => {
            let status = e.status();
            let _ = stream.write_all(&ApiError::from_request(e).reply().encode(false, false));
            log::info!("api: {peer}: bad request head ({status})");
            linger(stream);
            return;
        }
    };
    let mut body = Vec::new();
    if req.framing.has_body() {
        if let Err(e) = gate::take_body(&mut buf, &req, &mut body) {
            let error = match e {
                BodyError::TooLarge => ApiError::TooLarge,
                BodyError::Read(_) | BodyError::Write(_) | BodyError::Truncated => return,
                BodyError::Malformed(what) => ApiError::BadRequest(format!("invalid chunked body: {what}")),
            };
            let _ = stream.write_all(&error.reply().encode(false, req.is_head()));
            linger(stream);
            return;
        }
    }
    let started = Instant::now();
    let reply = dispatch::handle(state, &req, &body, peer.ip());
    if state.access_log {
        log::info!(
            target: "access",
            "[api] {} => {} {} {} {:.4}s",
            peer.ip(),
            req.method(),
            req.target(),
            reply.status,
            started.elapsed().as_secs_f64()
        );
    }
    let keep_alive = req.keep_alive && !shutdown.load(Ordering::Acquire);
    if stream.write_all(&reply.encode(keep_alive, req.is_head())).is_ok() && keep_alive {
        gate.admit(Ready { stream, peer, buf, slot });
    }
}
