//! The request pipeline for one parsed request, and the orchestrator of its steps:
//!
//! ```text
//! handle ─► admit ─► cache_step::lookup ─► forward::send ─► relay ─► access log, metrics
//!             │            │ stored answer        │ backend failed
//!             └ refused    └► serve_entry         └► cache_step::stale_on_error
//! ```
//!
//! Each step is a sibling module that knows nothing of this one: `context` (what a request carries
//! and what a step returns), `dispatch` (where it goes), `error` (whose fault a failure is),
//! `admit`, `cache_step`, `forward`, `relay`, and `refresh` (the cache's background refresher).

pub mod admit;
pub mod cache_step;
pub mod context;
pub mod dispatch;
pub mod error;
pub mod forward;
pub mod refresh;
pub mod relay;

use std::time::{Instant, SystemTime};

use crate::cache::Cache;
use crate::gateway::Refusal;
use crate::http::request::Request;
use crate::observe::access_log::AccessRecord;
use crate::observe::metrics;
use crate::server::conn::Conn;
use crate::server::shared::Shared;
use cache_step::{CachePlan, Lookup};
use context::{Answer, Forwarded, Outcome, RequestCtx, Scratch};
use error::{write_error_with, Failure, ForwardError};
use std::io::Write;

use crate::tls::plain::{plain_answer, PlainReply};

/// Handles one request whose head has been consumed from `conn.buf`, writing the response (or an
/// error response) to the client, then logs and counts it.
pub fn handle(shared: &Shared, scratch: &mut Scratch, conn: &mut Conn, req: Request) -> Outcome {
    let started = Instant::now();
    scratch.body_bytes = 0;
    if let Some(reply) = plain_answer(&shared.plain_port, req.method(), req.target(), req.header("host")) {
        return answer_plain_port(shared, scratch, conn, &req, &reply, started);
    }
    let gateway = shared.gateway();
    let client = gateway.client_ip(conn.peer.ip(), &req);
    let route = gateway.route(req.target());
    let admitted = admit::admit(shared, &gateway, route, client, &req);
    let app = admitted.as_ref().ok().and_then(|d| d.upstream.app()).cloned();
    let result = match admitted {
        Err(refusal) => Err(Failure::from(ForwardError::Refused(refusal))),
        Ok(dispatch) => answer(&mut RequestCtx { shared, scratch, conn, req: &req, dispatch: &dispatch }),
    };
    let rejection = match &result {
        Err(Failure { error: ForwardError::Refused(refusal), .. }) => metrics::Rejection::of(refusal),
        _ => None,
    };
    let Answer { status, by: backend, next } = match result {
        Ok(answer) => answer,
        Err(failure) => answer_failure(shared, scratch, conn, &req, failure),
    };
    if shared.config.access_log {
        shared.access_log.log(&AccessRecord {
            time: SystemTime::now(),
            client: conn.peer.ip(),
            method: req.method(),
            target: req.target(),
            version: req.version,
            status,
            body_bytes: scratch.body_bytes,
            duration: started.elapsed(),
            backend: backend.as_deref(),
            referer: req.header("referer"),
            user_agent: req.header("user-agent"),
        });
    }
    let route = route.map(|r| r.config.name.as_str());
    // A refused request never reached the app lookup; find its app so its owner sees the refusal.
    let refused_app = match (&app, route, rejection) {
        (None, None, Some(_)) => shared.router.lookup(req.target()).map(|m| m.app),
        _ => None,
    };
    let label = metrics::route_label(app.as_ref().or(refused_app.as_ref()).map(|a| a.name.as_str()), route);
    let now_secs = metrics::unix_secs(shared.clock.wall());
    shared.metrics.record(label, status, started.elapsed(), rejection, now_secs);
    if let Some(app) = &app {
        shared.router.log_request(app, conn.peer.ip(), &req, status, backend, started.elapsed());
    }
    next
}

/// Writes the plain port's own answer (an ACME challenge, a redirect to https), then logs and counts
/// it like any other request. A request body is never read here, so its connection closes.
fn answer_plain_port(
    shared: &Shared,
    scratch: &mut Scratch,
    conn: &mut Conn,
    req: &Request,
    reply: &PlainReply,
    started: Instant,
) -> Outcome {
    let keep = req.keep_alive && !req.framing.has_body() && !shared.is_shutting_down();
    let bytes = reply.to_bytes(keep, req.is_head());
    let written = conn.stream.write_all(&bytes).is_ok();
    scratch.body_bytes = if req.is_head() { 0 } else { reply.body.len() as u64 };
    if shared.config.access_log {
        shared.access_log.log(&AccessRecord {
            time: SystemTime::now(),
            client: conn.peer.ip(),
            method: req.method(),
            target: req.target(),
            version: req.version,
            status: reply.status,
            body_bytes: scratch.body_bytes,
            duration: started.elapsed(),
            backend: None,
            referer: req.header("referer"),
            user_agent: req.header("user-agent"),
        });
    }
    let now_secs = metrics::unix_secs(shared.clock.wall());
    shared.metrics.record(metrics::route_label(None, None), reply.status, started.elapsed(), None, now_secs);
    Outcome::keep_alive_if(keep && written)
}

/// An admitted request: from the cache when it can answer (and its route lets it), else from a
/// backend.
fn answer(ctx: &mut RequestCtx<'_>) -> Forwarded {
    let cache: Option<&Cache> = ctx.shared.cache.as_deref();
    match cache {
        Some(cache) if ctx.dispatch.cache && matches!(ctx.req.method(), "GET" | "HEAD") => {
            match cache_step::lookup(ctx, cache) {
                Lookup::Stored { entry, label } => Ok(cache_step::serve_entry(ctx, &entry, label)),
                Lookup::NotCached => Err(Failure::from(ForwardError::NotCached)),
                Lookup::Forward(plan) => forward(ctx, Some(&*plan)),
            }
        }
        _ => forward(ctx, None),
    }
}

/// Sends the request to the backends in turn until one answers, then relays the answer. With a
/// cache plan, a stale entry may answer for a failed backend.
fn forward(ctx: &mut RequestCtx<'_>, plan: Option<&CachePlan<'_>>) -> Forwarded {
    let drop_conditionals = plan.is_some_and(CachePlan::fills_for_client_conditional);
    let head_as_get = plan.is_some_and(|p| p.head_as_get);
    match forward::send(ctx, plan.and_then(CachePlan::revalidating), drop_conditionals, head_as_get) {
        Ok(exchanged) => Ok(relay::relay(ctx, exchanged, plan)),
        Err(failure) => match plan {
            Some(plan) if failure.error.is_backend_fault() => cache_step::stale_on_error(ctx, plan, failure),
            _ => Err(failure),
        },
    }
}

/// Logs a failed request and writes its error answer (unless the client is gone); the connection
/// stays open only when the request was read in full.
fn answer_failure(shared: &Shared, scratch: &mut Scratch, conn: &mut Conn, req: &Request, failure: Failure) -> Answer {
    let Failure { error: e, backend } = failure;
    let status = e.status();
    match &e {
        ForwardError::ClientGone(_) => {}
        ForwardError::ClientBody(_) | ForwardError::Refused(_) => {
            log::info!("{} {} {}: {e}", conn.peer, req.method(), req.target())
        }
        _ => log::warn!("{} {} {}: {e}", conn.peer, req.method(), req.target()),
    }
    let may_keep = req.keep_alive && !shared.is_shutting_down();
    // After a backend failure the request body has been read in full (or there was none), so the
    // connection stays usable; after a client-side failure it does not.
    let keep = may_keep && (e.is_backend_fault() || matches!(e, ForwardError::NotCached));
    // A refused request's body was never read, so its connection cannot carry another.
    let keep = keep
        || (matches!(e, ForwardError::Refused(ref r) if *r != Refusal::Forbidden)
            && may_keep
            && !req.framing.has_body());
    if !matches!(e, ForwardError::ClientGone(_)) {
        scratch.body_bytes =
            write_error_with(&mut conn.stream, status, &e.to_string(), keep, req.is_head(), &e.answer_fields())
                .unwrap_or(0);
    }
    Answer { status, by: backend, next: Outcome::keep_alive_if(keep) }
}
