//! The management API server: its own listener (`api_port`), one acceptor thread and a small fixed
//! pool of worker threads, apart from the data plane, so API load never takes a proxy worker. Each
//! connection is kept alive; a request flows `wire` (head and body, bounded: 413 past [`MAX_BODY`])
//! -> `dispatch` (method and path to an endpoint of `users`, `apps`, `admin` or `status`) -> a
//! [`Reply`] (`reply`), always JSON but for the spec, the metrics and the dashboard. The endpoints
//! share one [`ApiState`] (`state`); `scrape` serves `/metrics` on its own port when asked to.

mod admin;
mod apps;
mod auth;
pub mod dispatch;
mod input;
pub mod json;
pub mod reply;
pub mod scrape;
pub mod state;
pub mod status;
pub mod throttle;
mod users;
mod wire;

/// The query parameters `DELETE /api/cache` takes, for the spec's test.
pub use admin::PURGE_PARAMETERS;

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::http::body::BodyError;
use crate::http::buffer::ReadBuf;
use crossbeam_channel::{Receiver, Sender};

pub use reply::{ApiError, Reply};
pub use state::ApiState;
pub use wire::MAX_BODY;
use wire::{linger, read_body, read_head, REQUEST_TIMEOUT};

/// Worker threads serving API connections.
pub const API_THREADS: usize = 4;
/// Accepted connections waiting for a worker; past it the acceptor waits.
const QUEUE: usize = 64;

/// The running API server.
pub struct ApiServer {
    local_addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

impl ApiServer {
    /// Serves `state` on an already bound listener.
    pub fn start(listener: TcpListener, state: Arc<ApiState>) -> io::Result<ApiServer> {
        let local_addr = listener.local_addr()?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::bounded::<(TcpStream, SocketAddr)>(QUEUE);
        let mut workers = Vec::with_capacity(API_THREADS);
        for i in 0..API_THREADS {
            let (rx, state, shutdown) = (rx.clone(), Arc::clone(&state), Arc::clone(&shutdown));
            workers.push(
                thread::Builder::new().name(format!("pibl-api-{i}")).spawn(move || worker(&rx, &state, &shutdown))?,
            );
        }
        let acceptor = {
            let shutdown = Arc::clone(&shutdown);
            thread::Builder::new().name("pibl-api-acceptor".into()).spawn(move || accept(&listener, &tx, &shutdown))?
        };
        Ok(ApiServer { local_addr, shutdown, acceptor: Some(acceptor), workers })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in progress finish, closes idle connections.
    pub fn shutdown(mut self) {
        self.shutdown.store(true, Ordering::Release);
        crate::server::wake::wake_acceptor(self.local_addr);
        if let Some(handle) = self.acceptor.take() {
            let _ = handle.join();
        }
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

fn accept(listener: &TcpListener, tx: &Sender<(TcpStream, SocketAddr)>, shutdown: &AtomicBool) {
    for conn in listener.incoming() {
        if shutdown.load(Ordering::Acquire) {
            break;
        }
        match conn {
            Ok(stream) => {
                let Ok(peer) = stream.peer_addr() else { continue };
                if tx.send((stream, peer)).is_err() {
                    break;
                }
            }
            Err(e) => {
                log::warn!("api: accept failed: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn worker(rx: &Receiver<(TcpStream, SocketAddr)>, state: &ApiState, shutdown: &AtomicBool) {
    for (stream, peer) in rx.iter() {
        let served = panic::catch_unwind(AssertUnwindSafe(|| serve(stream, peer, state, shutdown)));
        if served.is_err() {
            log::error!("api: internal error while serving {peer}; connection closed");
        }
    }
}

/// Serves requests on one connection until the client closes, stays idle too long, or shutdown.
fn serve(mut stream: TcpStream, peer: SocketAddr, state: &ApiState, shutdown: &AtomicBool) {
    if stream.set_nodelay(true).is_err() || stream.set_write_timeout(Some(REQUEST_TIMEOUT)).is_err() {
        return;
    }
    let mut buf = ReadBuf::new();
    loop {
        let req = match read_head(&mut stream, &mut buf, shutdown) {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) => {
                let status = e.status();
                let _ = stream.write_all(&ApiError::from_request(e).reply().encode(false, false));
                log::info!("api: {peer}: bad request head ({status})");
                linger(stream);
                return;
            }
        };
        if stream.set_read_timeout(Some(REQUEST_TIMEOUT)).is_err() {
            return;
        }
        let mut body = Vec::new();
        if req.framing.has_body() {
            if req.expect_continue && buf.is_empty() && stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
                return;
            }
            if let Err(e) = read_body(&mut stream, &mut buf, &req, &mut body) {
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
        if stream.write_all(&reply.encode(keep_alive, req.is_head())).is_err() || !keep_alive {
            return;
        }
    }
}
