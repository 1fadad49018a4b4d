//! A session after `101 Switching Protocols` (a WebSocket, or any other `Upgrade`): bytes are
//! copied both ways without framing until a side closes, either side fails, or nothing moves for
//! `tunnel_timeout`. Each direction is bounded by `buffer_size` (back-pressure). The backend's end
//! of stream ends the tunnel once its last bytes reach the client (as nginx does); the client's is
//! passed on as a half-close, and the backend then has [`HALF_CLOSED_TIME`] to finish. The bytes
//! moved are counted in the metrics and the access log.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::http::buffer::ReadBuf;
use crate::http::request::Request;
use crate::http::response::Response;
use crate::server::event_loop::answers::{finish, Record};
use crate::server::event_loop::client::{read_into, Client, Got, OutBuf};
use crate::server::event_loop::env::Env;
use crate::server::event_loop::exchange::Upstream;
use crate::server::event_loop::transport::HintedRead;

/// How long a backend may go on sending after the client closed its side.
pub const HALF_CLOSED_TIME: Duration = Duration::from_secs(5);

/// What one [`Tunnel::advance`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    Progress,
    Waiting,
    /// Both sides are done, or one failed: close the session.
    Closed,
}

pub struct Tunnel {
    up: Upstream,
    req: Request,
    rec: Record,
    to_backend: OutBuf,
    from_backend: ReadBuf,
    client_eof: bool,
    backend_eof: bool,
    backend_shut: bool,
    /// When the client closed its side.
    half_closed: Option<Instant>,
    /// Bytes from the client to the backend.
    pub up_bytes: u64,
    /// Bytes from the backend to the client.
    pub down_bytes: u64,
    pub last_active: Instant,
}

impl Tunnel {
    /// Opens the tunnel: the 101 answer goes to the client, and bytes either side sent after the
    /// heads are passed on first.
    pub fn open(
        up: Upstream,
        req: Request,
        rec: Record,
        res: &Response,
        mut from_backend: ReadBuf,
        client: &mut Client,
        now: Instant,
    ) -> Tunnel {
        let out = &mut client.cout.data;
        let _ = write!(out, "HTTP/1.1 101 ");
        out.extend_from_slice(if res.reason().is_empty() { b"Switching Protocols" } else { res.reason() });
        out.extend_from_slice(b"\r\n");
        for (name, value) in res.headers() {
            if res.connection.drops(name) {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(protocol) = res.header("upgrade") {
            out.extend_from_slice(b"Upgrade: ");
            out.extend_from_slice(protocol);
            out.extend_from_slice(b"\r\n");
        }
        if res.header("strict-transport-security").is_none() {
            out.extend_from_slice(&client.answer_fields);
        }
        out.extend_from_slice(b"Connection: upgrade\r\n\r\n");
        let down_bytes = from_backend.len() as u64;
        out.extend_from_slice(from_backend.filled());
        from_backend.clear();
        let mut to_backend = OutBuf::default();
        let up_bytes = client.cin.len() as u64;
        to_backend.extend(client.cin.filled());
        client.cin.clear();
        Tunnel {
            up,
            req,
            rec,
            to_backend,
            from_backend,
            client_eof: false,
            backend_eof: false,
            backend_shut: false,
            half_closed: None,
            up_bytes,
            down_bytes,
            last_active: now,
        }
    }

    /// Copies what the sockets allow, both ways.
    pub fn advance(&mut self, client: &mut Client, env: &mut Env<'_>) -> Pipe {
        let step = env.shared.config.buffer_size;
        let mut progress = false;

        // Client to backend.
        match self.to_backend.write_to(&mut self.up.stream) {
            Ok(wrote) => progress |= wrote,
            Err(_) => return Pipe::Closed,
        }
        if !self.client_eof && self.to_backend.pending() < step {
            if client.cin.is_empty() {
                match client.read(step, step, env.now) {
                    Got::Bytes(_) => {}
                    Got::Eof => {
                        self.client_eof = true;
                        self.half_closed = Some(env.now);
                        progress = true;
                    }
                    Got::WouldBlock => {}
                    Got::Failed(_) => return Pipe::Closed,
                }
            }
            if !client.cin.is_empty() {
                let n = client.cin.len();
                self.to_backend.extend(client.cin.filled());
                client.cin.consume(n);
                self.up_bytes += n as u64;
                progress = true;
            }
        }
        if self.client_eof && self.to_backend.is_empty() && !self.backend_shut {
            // Over TLS a close_notify goes first; until it is out this is tried again.
            match self.up.stream.shutdown_write() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => {
                    self.backend_shut = true;
                    progress = true;
                }
            }
        }

        // Backend to client.
        match client.flush(env.now) {
            Ok(wrote) => progress |= wrote,
            Err(_) => return Pipe::Closed,
        }
        if !self.backend_eof && client.cout.pending() < step {
            let input = env.pool.input(self.up.stream.sock());
            let mut src = HintedRead { transport: &mut self.up.stream, input };
            match read_into(&mut self.from_backend, &mut src, step, step) {
                Got::Bytes(n) => {
                    client.cout.extend(self.from_backend.filled());
                    self.from_backend.clear();
                    self.down_bytes += n as u64;
                    progress = true;
                }
                Got::Eof => {
                    self.backend_eof = true;
                    progress = true;
                }
                Got::WouldBlock => {}
                Got::Failed(_) => return Pipe::Closed,
            }
        }
        if self.backend_eof && client.output_done() {
            return Pipe::Closed;
        }
        if progress {
            self.last_active = env.now;
            Pipe::Progress
        } else {
            Pipe::Waiting
        }
    }

    /// When the tunnel is closed for want of traffic, or of the backend's end after the client's.
    pub fn deadline(&self, tunnel_timeout: Duration) -> Instant {
        let idle = self.last_active + tunnel_timeout;
        match self.half_closed {
            Some(at) => idle.min(at + HALF_CLOSED_TIME),
            None => idle,
        }
    }

    /// Records the tunnel when it closes: status 101, the bytes sent to the client, its whole life.
    pub fn record(&self, env: &Env<'_>) {
        log::debug!(
            "{} {}: tunnel to {} closed after {} byte(s) up, {} down",
            self.rec.peer,
            self.req.target(),
            self.up.backend.name,
            self.up_bytes,
            self.down_bytes
        );
        env.shared.metrics.count_tunnel(self.up_bytes, self.down_bytes);
        finish(env.shared, &self.rec, &self.req, 101, self.down_bytes, Some(&self.up.backend.name));
    }
}
