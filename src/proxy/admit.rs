//! Admission, the pipeline's first step: the gateway's checks in order — deny/allow, rate limits,
//! hidden auth endpoints, the route's authentication — and, for an admitted request, where it goes
//! ([`Dispatch`]).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::RouteAuth;
use crate::gateway::auth_request::AuthDecision;
use crate::gateway::{Gateway, Refusal, Route};
use crate::http::request::Request;
use crate::proxy::dispatch::{Dispatch, Upstream};
use crate::server::shared::Shared;
use crate::store::credentials;

/// What an auth server's decision makes of a request: the user to pass on, or the refusal.
pub fn auth_outcome(req: &Request, decision: AuthDecision) -> Result<Option<Vec<u8>>, Refusal> {
    match decision {
        AuthDecision::Allow(user) => Ok(user),
        AuthDecision::Deny { status, challenge } => Err(Refusal::Unauthorized { status, challenge }),
        AuthDecision::Failed(reason) => {
            log::warn!("auth for {} {}: {reason}", req.method(), req.target());
            Err(Refusal::AuthBroken { status: 500, reason })
        }
        AuthDecision::Unavailable(reason) => {
            log::warn!("auth for {} {}: {reason}", req.method(), req.target());
            Err(Refusal::AuthBroken { status: 503, reason })
        }
    }
}

/// Runs the gateway's checks and decides where the request goes, except that an `auth = request`
/// route's sub-request is left to the caller (an event loop asks without blocking, then applies
/// [`auth_outcome`]).
pub fn admit_before_auth_request<'r>(
    shared: &Shared,
    gateway: &Gateway,
    route: Option<&Arc<Route>>,
    client: IpAddr,
    req: &'r Request,
) -> Result<Dispatch<'r>, Refusal> {
    let now = shared.clock.now();
    gateway.admit(client, route.map(|r| &**r), now)?;
    let (upstream, target) = match route {
        // No configured route: an app of the management API owns `/<appid>/...`, else the default pool.
        None => match shared.router.lookup(req.target()) {
            Some(matched) => (Upstream::App(matched.app), Cow::Owned(matched.target)),
            None => (Upstream::Pool(Arc::clone(&gateway.default_pool)), Cow::Borrowed(req.target())),
        },
        Some(route) => {
            let target = if route.config.strip_prefix {
                let rest = &req.target()[route.config.prefix.len()..];
                if rest.starts_with('/') {
                    Cow::Borrowed(rest)
                } else {
                    Cow::Owned(format!("/{rest}"))
                }
            } else {
                Cow::Borrowed(req.target())
            };
            (Upstream::Pool(Arc::clone(&route.pool)), target)
        }
    };
    if gateway.hides(upstream.pool(), route.map(|r| &**r), &target) {
        return Err(Refusal::Hidden);
    }
    let auth_user = match route.map(|r| (&r.config.auth, r.auth.as_ref())) {
        None | Some((RouteAuth::None, _)) => None,
        Some((RouteAuth::Jwt, _)) => Some(verify_jwt(shared, req)?),
        // Asked by the loop once the other checks have passed.
        Some((RouteAuth::Request(_), _)) => None,
    };
    let cache = route.is_none_or(|r| r.config.cache);
    let compress = route.and_then(|r| r.config.compress).unwrap_or(shared.config.compress);
    Ok(Dispatch { upstream, target, client, auth_user, cache, compress })
}

/// `auth = jwt`: a token from pibl's own `/api/auth`, checked locally (signature, `nbf`, `exp`);
/// its identity goes on as `X-Auth-User`.
fn verify_jwt(shared: &Shared, req: &Request) -> Result<Vec<u8>, Refusal> {
    let refuse = || Refusal::Unauthorized { status: 401, challenge: Some(b"Bearer realm=\"pibl\"".to_vec()) };
    let Some(tokens) = &shared.tokens else {
        return Err(Refusal::AuthBroken { status: 503, reason: "jwt routes need the management API".into() });
    };
    let token = req.header("authorization").and_then(credentials::token_from_header).ok_or_else(refuse)?;
    let claims = tokens.verify(token, shared.clock.now_secs()).map_err(|_| refuse())?;
    Ok(claims.identity.into_bytes())
}
