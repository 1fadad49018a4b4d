//! `auth = request` inside a loop: the sub-request to a route's auth server is one more
//! non-blocking exchange of the session (connect, TLS for an `https://` auth_url as for an
//! `https://` backend, write the head, read the answer's head), whose
//! answer the route's [`AuthChecker`] turns into a decision ([`decision_of`]). Each check opens its
//! own connection (positive answers are cached per
//! credential by the checker when `auth_cache_secs` is set).

use std::io;
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use mio::Interest;

use crate::gateway::auth_request::{decision_of, AuthDecision};
use crate::gateway::Route;
use crate::http::buffer::ReadBuf;
use crate::http::request::Request;
use crate::http::response::{self, MAX_RESPONSE_HEAD};
use crate::proxy::dispatch::Dispatch;
use crate::server::event_loop::answers::Record;
use crate::server::event_loop::client::{read_into, Got, OutBuf};
use crate::server::event_loop::env::Env;
use crate::server::event_loop::exchange::over_tls;
use crate::server::event_loop::tokens::backend_token;
use crate::server::event_loop::transport::{buffer_limit, Transport};

/// A request whose check ended before it began (no route checker, or no connection), with the
/// decision that stands for the auth server's.
pub type NotStarted = (Box<(Request, Record, Dispatch<'static>)>, AuthDecision);

/// What one [`AuthProbe::advance`] came to.
pub enum Probe {
    Waiting,
    Decided(AuthDecision),
}

/// A request waiting for its route's auth server.
pub struct AuthProbe {
    pub req: Request,
    pub rec: Record,
    pub route: Arc<Route>,
    pub dispatch: Dispatch<'static>,
    stream: Transport,
    connected: bool,
    out: OutBuf,
    buf: ReadBuf,
    started: Instant,
}

impl AuthProbe {
    /// Opens the connection to the auth server; a failure to even start is the decision.
    pub fn start(
        req: Request,
        rec: Record,
        route: Arc<Route>,
        dispatch: Dispatch<'static>,
        slot: usize,
        env: &mut Env<'_>,
    ) -> Result<AuthProbe, NotStarted> {
        let Some(checker) = route.auth.as_ref() else {
            return Err((Box::new((req, rec, dispatch)), AuthDecision::Allow(None)));
        };
        let head = checker.sub_request(&req, dispatch.client);
        let server = checker.server();
        let unreachable = |e: String| AuthDecision::Unavailable(format!("cannot reach {}: {e}", checker.url().url));
        let mut stream = match TcpStream::connect(server.addr) {
            Ok(stream) => stream,
            Err(e) => return Err((Box::new((req, rec, dispatch)), unreachable(e.to_string()))),
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        let token = backend_token(&stream);
        if let Err(e) = env.registry.register(&mut stream, token, interest) {
            return Err((Box::new((req, rec, dispatch)), unreachable(e.to_string())));
        }
        env.pool.hold_new(&stream, slot);
        let limit = buffer_limit(env.shared.config.buffer_size);
        let stream = match over_tls(server, stream, env.shared.backend_tls.as_ref(), limit) {
            Ok(stream) => stream,
            Err(what) => return Err((Box::new((req, rec, dispatch)), unreachable(what))),
        };
        let mut out = OutBuf::default();
        out.extend(&head);
        Ok(AuthProbe {
            req,
            rec,
            route,
            dispatch,
            stream,
            connected: false,
            out,
            buf: ReadBuf::new(),
            started: env.now,
        })
    }

    /// Moves the sub-request as far as the socket allows.
    pub fn advance(&mut self) -> Probe {
        let url = self.route.auth.as_ref().map_or("", |c| c.url().url.as_str());
        if !self.connected {
            let failed = match self.stream.sock().take_error() {
                Ok(Some(e)) | Err(e) => Some(e),
                Ok(None) => match self.stream.sock().peer_addr() {
                    Ok(_) => None,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return Probe::Waiting,
                    Err(e) => Some(e),
                },
            };
            if let Some(e) = failed {
                return Probe::Decided(AuthDecision::Unavailable(format!("cannot reach {url}: {e}")));
            }
            self.connected = true;
        }
        // Over TLS the handshake moves as the head is written, and what rustls still holds goes out.
        let sent = self.out.write_to(&mut self.stream).and_then(|_| self.stream.flush_out());
        if let Err(e) = sent {
            return Probe::Decided(AuthDecision::Unavailable(format!("auth server: sending failed: {e}")));
        }
        if !self.out.is_empty() || self.stream.pending_out() {
            return Probe::Waiting;
        }
        loop {
            if !self.buf.is_empty() {
                match response::parse(self.buf.filled(), false) {
                    Ok(Some((res, len))) if res.is_informational() => self.buf.consume(len),
                    Ok(Some((res, _))) => return Probe::Decided(decision_of(&res)),
                    Ok(None) => {}
                    Err(e) => return Probe::Decided(AuthDecision::Failed(format!("auth server: {e}"))),
                }
            }
            let what = match read_into(&mut self.buf, &mut self.stream, 4096, MAX_RESPONSE_HEAD) {
                Got::Bytes(_) => continue,
                Got::WouldBlock => return Probe::Waiting,
                Got::Eof => "closed the connection without answering".to_string(),
                Got::Failed(e) => format!("reading the answer failed: {e}"),
            };
            return Probe::Decided(AuthDecision::Unavailable(format!("auth server {what}")));
        }
    }

    /// The auth server must have answered by then (connect plus one read's worth of waiting).
    pub fn deadline(&self, env: &Env<'_>) -> Instant {
        let config = &env.shared.config;
        self.started + config.connect_timeout + config.backend_timeout
    }
}
