//! `auth = request` routes: before forwarding, a GET to the route's `auth_url` carrying the client's
//! credentials decides (nginx's `auth_request`). A 2xx lets the request through, 401/403 go back to
//! the client with the auth server's challenge, anything else fails closed. Positive answers may be
//! cached per credential for `auth_cache_secs`.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::AuthUrl;
use crate::http::body::{self, Encoding, Source};
use crate::http::buffer::{ReadBuf, WriteBatch};
use crate::http::outbound::RequestHead;
use crate::http::request::Request;
use crate::http::response::{self, ReadHeadError, Response};
use crate::http::Framing;
use crate::upstream::backend::Backend;

/// Largest auth answer body read (and dropped) to keep the connection reusable.
const MAX_AUTH_BODY: u64 = 64 * 1024;
/// Credentials remembered at once; past it, expired ones go, then all.
const MAX_CACHED: usize = 10_000;

/// What the auth server decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Let the request through; the auth answer's `X-Auth-User`, if any, goes along.
    Allow(Option<Vec<u8>>),
    /// 401 or 403 for the client, with the auth answer's `WWW-Authenticate`.
    Deny { status: u16, challenge: Option<Vec<u8>> },
    /// The auth server answered something else (500 for the client).
    Failed(String),
    /// The auth server could not be reached or did not answer in time (503 for the client).
    Unavailable(String),
}

/// A remembered positive answer: until when, and the user it named.
type CachedAllow = (Instant, Option<Vec<u8>>);

/// Asks one auth URL; shared by every worker.
pub struct AuthChecker {
    url: AuthUrl,
    server: Backend,
    cache_for: Duration,
    cache: Mutex<HashMap<Vec<u8>, CachedAllow>>,
    connect_timeout: Duration,
    io_timeout: Duration,
}

impl AuthChecker {
    pub fn new(url: &AuthUrl, cache_for: Duration, connect_timeout: Duration, io_timeout: Duration) -> AuthChecker {
        let server = Backend::new(&url.server, 32);
        AuthChecker {
            url: url.clone(),
            server,
            cache_for,
            cache: Mutex::new(HashMap::new()),
            connect_timeout,
            io_timeout,
        }
    }

    pub fn url(&self) -> &AuthUrl {
        &self.url
    }

    /// Decides whether `req` from `client` may pass.
    pub fn check(&self, req: &Request, client: IpAddr, now: Instant) -> AuthDecision {
        if let Some(decision) = self.cached(req, now) {
            return decision;
        }
        let decision = self.ask(req, client);
        self.remember(req, &decision, now);
        decision
    }

    /// The remembered positive answer for `req`'s credentials, while it lasts.
    pub fn cached(&self, req: &Request, now: Instant) -> Option<AuthDecision> {
        let key = self.cache_key(req)?;
        let cache = self.cache.lock();
        let (until, user) = cache.get(&key)?;
        (now < *until).then(|| AuthDecision::Allow(user.clone()))
    }

    /// Remembers a positive answer for `req`'s credentials (when `auth_cache_secs` is set).
    pub fn remember(&self, req: &Request, decision: &AuthDecision, now: Instant) {
        if let (AuthDecision::Allow(user), Some(key)) = (decision, self.cache_key(req)) {
            let mut cache = self.cache.lock();
            if cache.len() >= MAX_CACHED {
                cache.retain(|_, (until, _)| now < *until);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
            }
            cache.insert(key, (now + self.cache_for, user.clone()));
        }
    }

    /// The auth server, as a backend (its address and name).
    pub fn server(&self) -> &Backend {
        &self.server
    }

    /// The sub-request asking about `req` from `client`: a GET of the auth URL with the client's
    /// credentials and the original method and URI.
    pub fn sub_request(&self, req: &Request, client: IpAddr) -> Vec<u8> {
        let mut head = Vec::with_capacity(512);
        let mut fields = RequestHead::start(&mut head, "GET", &self.url.path);
        fields.field("Host", self.url.host.as_bytes());
        for name in ["authorization", "cookie"] {
            for (field, value) in req.headers().filter(|(n, _)| n.eq_ignore_ascii_case(name)) {
                fields.field(field, value);
            }
        }
        fields
            .field("X-Original-URI", req.target().as_bytes())
            .field("X-Original-Method", req.method().as_bytes())
            .field("X-Forwarded-For", client.to_string().as_bytes())
            .framing(Framing::Length(0), "GET");
        fields.finish();
        head
    }

    /// The credentials a cached answer is keyed by; `None` when caching is off.
    fn cache_key(&self, req: &Request) -> Option<Vec<u8>> {
        if self.cache_for.is_zero() {
            return None;
        }
        let mut key = req.header("authorization").unwrap_or_default().to_vec();
        key.push(0);
        key.extend_from_slice(req.header("cookie").unwrap_or_default());
        Some(key)
    }

    fn ask(&self, req: &Request, client: IpAddr) -> AuthDecision {
        let head = self.sub_request(req, client);
        // A pooled connection may have been closed by the auth server: then ask once more on a new one.
        let now = Instant::now();
        if let Some(stream) = self.server.take_idle(now) {
            if let Ok(decision) = self.exchange(stream, &head) {
                return decision;
            }
        }
        match self.server.connect(self.connect_timeout, self.io_timeout) {
            Ok(stream) => self.exchange(stream, &head).unwrap_or_else(|Stale| {
                AuthDecision::Unavailable("the auth server closed the connection without answering".into())
            }),
            Err(e) => AuthDecision::Unavailable(format!("cannot reach {}: {e}", self.url.url)),
        }
    }

    fn exchange(&self, mut stream: TcpStream, head: &[u8]) -> Result<AuthDecision, Stale> {
        if stream.write_all(head).is_err() {
            return Err(Stale);
        }
        let mut buf = ReadBuf::new();
        let res = match response::read_head(&mut buf, &mut stream, 4096, false) {
            Ok(res) => res,
            Err(ReadHeadError::Invalid(e)) => return Ok(AuthDecision::Failed(format!("auth server: {e}"))),
            Err(ReadHeadError::Io { error, .. })
                if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                return Ok(AuthDecision::Unavailable(format!(
                    "auth server did not answer within {:?}",
                    self.io_timeout
                )))
            }
            Err(ReadHeadError::Closed { before_any_byte: true } | ReadHeadError::Io { before_any_byte: true, .. }) => {
                return Err(Stale)
            }
            Err(e) => return Ok(AuthDecision::Unavailable(format!("auth server {e}"))),
        };
        let decision = decision_of(&res);
        // Drop the body so the connection can serve the next check.
        let (mut out, mut sink) = (Vec::new(), io::sink());
        let mut discard = WriteBatch::new(&mut out, &mut sink, 4096);
        let mut src = Source { buf: &mut buf, sock: &mut stream, step: 4096 };
        let drained = body::transfer(&mut src, res.framing, &mut discard, Encoding::Identity, MAX_AUTH_BODY).is_ok();
        if drained && res.reusable && buf.is_empty() {
            self.server.put_idle(stream, Instant::now());
        }
        Ok(decision)
    }
}

/// What an auth server's answer decides: 2xx lets the request through (with its `X-Auth-User`),
/// 401/403 go back to the client with its challenge, anything else fails closed.
pub fn decision_of(res: &Response) -> AuthDecision {
    match res.status {
        200..=299 => AuthDecision::Allow(res.header("x-auth-user").map(<[u8]>::to_vec)),
        401 | 403 => {
            AuthDecision::Deny { status: res.status, challenge: res.header("www-authenticate").map(<[u8]>::to_vec) }
        }
        other => AuthDecision::Failed(format!("auth server answered {other}")),
    }
}

/// A reused connection turned out closed before any answer.
struct Stale;
