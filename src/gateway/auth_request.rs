//! `auth = request` routes: before forwarding, a GET to the route's `auth_url` carrying the client's
//! credentials decides (nginx's `auth_request`). A 2xx lets the request through, 401/403 go back to
//! the client with the auth server's challenge, anything else fails closed. Positive answers may be
//! cached per credential for `auth_cache_secs`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::AuthUrl;
use crate::http::outbound::RequestHead;
use crate::http::request::Request;
use crate::http::response::Response;
use crate::http::Framing;
use crate::upstream::backend::Backend;

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

/// One route's auth URL: how to ask it, and the positive answers remembered; shared by every loop.
pub struct AuthChecker {
    url: AuthUrl,
    server: Backend,
    cache_for: Duration,
    cache: Mutex<HashMap<Vec<u8>, CachedAllow>>,
}

impl AuthChecker {
    pub fn new(url: &AuthUrl, cache_for: Duration) -> AuthChecker {
        let server = Backend::new(&url.server, 32);
        AuthChecker { url: url.clone(), server, cache_for, cache: Mutex::new(HashMap::new()) }
    }

    pub fn url(&self) -> &AuthUrl {
        &self.url
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
