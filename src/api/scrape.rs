//! The `metrics_bind` listener: a loopback-only port that answers `GET /metrics` and nothing else, so Prometheus can scrape while the API port stays closed to it.
//!
//! One thread serves one connection at a time, one request each (`Connection: close`): scrapers
//! come every few seconds, and the head read is bounded by the API's limits and timeouts.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::reply::ApiError;
use super::state::ApiState;
use super::status;
use super::wire::{read_head, REQUEST_TIMEOUT};
use crate::background::Background;
use crate::http::buffer::ReadBuf;

/// The running metrics listener.
pub struct MetricsListener {
    local_addr: SocketAddr,
    thread: Background,
}

impl MetricsListener {
    /// Serves `/metrics` of `state` on an already bound listener.
    pub fn start(listener: TcpListener, state: Arc<ApiState>) -> io::Result<MetricsListener> {
        let local_addr = listener.local_addr()?;
        let thread = Background::spawn("pibl-metrics", move |stop| {
            let flag = stop.as_flag();
            for conn in listener.incoming() {
                if flag.load(Ordering::Acquire) {
                    break;
                }
                match conn {
                    Ok(stream) => serve(stream, &state, flag),
                    Err(e) => {
                        log::warn!("metrics: accept failed: {e}");
                        thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        })?;
        Ok(MetricsListener { local_addr, thread })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and waits for the thread.
    pub fn shutdown(self) {
        let local_addr = self.local_addr;
        self.thread.stop_waking(|| crate::server::wake::wake_acceptor(local_addr));
    }
}

fn serve(mut stream: TcpStream, state: &ApiState, shutdown: &AtomicBool) {
    if stream.set_write_timeout(Some(REQUEST_TIMEOUT)).is_err() {
        return;
    }
    let mut buf = ReadBuf::new();
    let reply = match read_head(&mut stream, &mut buf, shutdown) {
        Ok(None) => return,
        Err(e) => ApiError::from_request(e).reply(),
        Ok(Some(req)) => match (req.method(), req.target().split('?').next()) {
            ("GET" | "HEAD", Some("/metrics")) => status::metrics(state),
            (_, Some("/metrics")) => ApiError::MethodNotAllowed("GET").reply(),
            _ => ApiError::NotFound("this port serves only GET /metrics".into()).reply(),
        },
    };
    let _ = stream.write_all(&reply.encode(false, false));
}
