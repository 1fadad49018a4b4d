//! The response cache's part of the request pipeline: answer GET and HEAD from storage when policy
//! allows, coalesce concurrent misses into one backend request, revalidate stale entries, serve stale
//! ones when the backend fails, store what comes back, and queue entries for a background refresh
//! (`stale-while-revalidate`, done by `refresh`). It decides and stores; forwarding is `forward`'s.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::cache::compress::{self, Candidate};
use crate::cache::policy::{self, CacheControl, Exchange, Freshness, RequestDirectives};
use crate::cache::{response_facts, vary_names, Cache, Entry, FlightGuard, Origin, VaryValues, PASS_TIME};
use crate::http::body::Tee;
use crate::http::request::Request;
use crate::http::response::Response;
use crate::http::{trim, Framing};
use crate::proxy::dispatch::{Dispatch, RefreshJob};
use crate::server::shared::Shared;

/// The access-log name of answers served from storage.
pub const CACHE_LABEL: &str = "cache";

/// What the cache contributes to one forwarded GET or HEAD.
pub struct CachePlan<'c> {
    pub cache: &'c Cache,
    pub key: String,
    /// The routing decision of this request: only entries it produced may answer, and what is
    /// stored is marked with it.
    pub origin: Origin,
    pub directives: RequestDirectives,
    /// A stored response that must be revalidated, or can stand in if the backend fails.
    pub stale: Option<Arc<Entry>>,
    /// The response may be stored (GET without `no-store`).
    pub store: bool,
    /// The client sent its own `If-None-Match` / `If-Modified-Since`.
    pub client_conditional: bool,
    /// A HEAD that nothing stored answers goes upstream as a GET, so its answer fills the cache
    /// (as nginx's `proxy_cache_convert_head`); the client still gets the head alone.
    pub head_as_get: bool,
    /// `strip_targeted_cache_control`: stored heads leave the targeted fields out.
    pub hide_targeted: bool,
    /// `compress = on`: what is stored gets its gzip and brotli variants when it is at least this
    /// long (`compress_min_bytes`) and fit to compress.
    pub compress_min: Option<u64>,
    pub request_time: SystemTime,
    /// Held while this request fetches the URL for others waiting on it; dropped with the plan.
    pub leader: Option<FlightGuard<'c>>,
}

impl CachePlan<'_> {
    /// The entry whose validators go out with the request, when revalidating.
    pub fn revalidating(&self) -> Option<&Entry> {
        self.stale.as_deref().filter(|e| e.has_validator())
    }

    /// A storable miss with the client's own conditionals: the backend is asked for the full
    /// answer, which fills the cache, and the client gets its 304 from the stored copy.
    pub fn fills_for_client_conditional(&self) -> bool {
        self.store && self.client_conditional && self.revalidating().is_none()
    }

    /// Whether this answer goes to the client from its stored copy rather than streamed: for a
    /// conditional miss (to answer 304), or when the client takes an encoding pibl will store
    /// (so the miss is compressed as the hits are).
    pub fn answers_from_storage(&self, req: &Request, res: &Response) -> bool {
        let Framing::Length(len) = res.framing else { return false };
        let compressed = self.compress_min.is_some_and(|min| {
            client_coding(req).is_some() && compress::may_compress(&compress_candidate(res, len), min)
        });
        self.head_as_get || (res.status == 200 && (self.fills_for_client_conditional() || compressed))
    }

    /// The stale entry if policy lets it answer at `now` for a failed backend.
    pub fn stale_for_error(&self, now: Instant) -> Option<Arc<Entry>> {
        self.stale.as_ref().filter(|e| e.freshness.usable_on_error(e.age(now))).cloned()
    }
}

/// A response being stored while it streams to the client.
pub struct Pending {
    freshness: Freshness,
    /// When the response head arrived: the entry's age counts from here.
    received_at: Instant,
    vary: VaryValues,
    pub tee: Tee,
}

pub fn request_directives(req: &Request) -> RequestDirectives {
    let cc_values = || req.headers().filter(|(n, _)| n.eq_ignore_ascii_case("cache-control")).map(|(_, v)| v);
    RequestDirectives {
        cc: CacheControl::parse(cc_values()),
        pragma_no_cache: cc_values().next().is_none()
            && req
                .headers()
                .filter(|(n, _)| n.eq_ignore_ascii_case("pragma"))
                .any(|(_, v)| crate::http::tokens(v).any(|t| t.eq_ignore_ascii_case(b"no-cache"))),
        has_authorization: req.header("authorization").is_some(),
    }
}

/// The value of a request's `name` fields as `Vary` compares them: all of them, joined.
pub fn request_value(req: &Request, name: &str) -> Option<Vec<u8>> {
    let mut joined: Option<Vec<u8>> = None;
    for (_, value) in req.headers().filter(|(n, _)| n.eq_ignore_ascii_case(name)) {
        let out = joined.get_or_insert_with(Vec::new);
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(trim(value));
    }
    joined
}

/// The content coding a request takes, by its `Accept-Encoding` (none for a range request: a
/// range of an encoded body is another thing).
pub fn client_coding(req: &Request) -> Option<compress::Coding> {
    if req.header("range").is_some() {
        return None;
    }
    compress::choose(req.headers().filter(|(n, _)| n.eq_ignore_ascii_case("accept-encoding")).map(|(_, v)| v))
}

/// What decides whether a backend's answer may be compressed, with its body length.
fn compress_candidate(res: &Response, body_len: u64) -> Candidate<'_> {
    let cc =
        CacheControl::parse(res.headers().filter(|(n, _)| n.eq_ignore_ascii_case("cache-control")).map(|(_, v)| v));
    Candidate {
        status: res.status,
        content_type: res.header("content-type"),
        content_encoding: res.header("content-encoding"),
        has_content_range: res.header("content-range").is_some(),
        no_transform: cc.no_transform,
        body_len,
    }
}

/// Decides, from the response head, whether to keep a copy of the body as it streams.
/// `values` gives the request's value of a header field, for the response's `Vary`.
pub fn start_storing(
    shared: &Shared,
    plan: &CachePlan<'_>,
    values: &dyn Fn(&str) -> Option<Vec<u8>>,
    res: &Response,
) -> Option<Pending> {
    if !plan.store {
        return None;
    }
    let pending = storable_answer(shared, plan, values, res);
    if pending.is_none() {
        plan.cache.mark_uncacheable(&plan.key, shared.clock.now() + PASS_TIME);
    }
    pending
}

fn storable_answer(
    shared: &Shared,
    plan: &CachePlan<'_>,
    values: &dyn Fn(&str) -> Option<Vec<u8>>,
    res: &Response,
) -> Option<Pending> {
    let limit = plan.cache.limits().max_object_bytes;
    if matches!(res.framing, Framing::Length(n) if n > limit as u64) {
        return None;
    }
    let at = Exchange { request_time: plan.request_time, response_time: shared.clock.wall() };
    let freshness =
        policy::storable(&plan.directives, &response_facts(res.status, res.headers()), shared.config.ttl, at)?;
    let vary = vary_names(res.headers()).into_iter().map(|name| {
        let value = values(&name);
        (name, value)
    });
    Some(Pending { freshness, received_at: shared.clock.now(), vary: vary.collect(), tee: Tee::new(limit) })
}

/// Stores a response whose body streamed through completely.
pub fn finish_storing(plan: &CachePlan<'_>, res: &Response, pending: Pending) {
    store_answer(plan, res, pending);
}

/// Stores a response whose body was read completely, and gives back the entry (stored, or built
/// but too big to keep); `None` when the body outgrew `cache_max_object_bytes` on the way.
pub fn store_answer(plan: &CachePlan<'_>, res: &Response, pending: Pending) -> Option<Arc<Entry>> {
    let entry = answer_entry(plan, res, pending)?;
    Some(plan.cache.store(&plan.key, entry).0)
}

/// The entry a response read whole makes, not stored: its body ran past its length, so it is not
/// kept, but the client still gets it as the plan meant to answer (a 304, an encoding).
pub fn unstored_answer(plan: &CachePlan<'_>, res: &Response, pending: Pending) -> Option<Arc<Entry>> {
    answer_entry(plan, res, pending).map(Arc::new)
}

fn answer_entry(plan: &CachePlan<'_>, res: &Response, pending: Pending) -> Option<Entry> {
    if pending.tee.overflowed {
        return None;
    }
    let body: Arc<[u8]> = pending.tee.data.into();
    let len = body.len() as u64;
    let entry =
        Entry::new(res.status, res.reason(), res.headers(), body, pending.freshness, pending.vary, pending.received_at)
            .from_origin(plan.origin.clone())
            .hiding_targeted(plan.hide_targeted);
    let entry = match plan.compress_min {
        Some(min) if compress::may_compress(&compress_candidate(res, len), min) => entry.with_encodings(),
        _ => entry,
    };
    Some(entry)
}

/// After a 200 to a forwarded HEAD: the stored GET response it could have been answered from is
/// updated with its fields when they describe the same representation, and dropped when they do
/// not (RFC 9111 section 4.3.5).
pub fn update_from_head(shared: &Shared, plan: &CachePlan<'_>, res: &Response) {
    let Some(stored) = plan.stale.as_deref() else { return };
    let stored_validators = policy::Validators {
        etag: stored.header("etag"),
        last_modified: stored.header("last-modified"),
        content_length: Some(stored.body.len() as u64),
    };
    let head_validators = policy::Validators {
        etag: res.header("etag"),
        last_modified: res.header("last-modified"),
        content_length: res.header("content-length").and_then(crate::http::parse_content_length),
    };
    if policy::head_updates_stored(stored_validators, head_validators) {
        refresh_from_304(shared, plan, stored, res);
    } else {
        plan.cache.remove_entry(&plan.key, stored);
    }
}

/// After a 304 to a revalidation: merges its fields into the stored entry and stores the result.
pub fn refresh_from_304(shared: &Shared, plan: &CachePlan<'_>, stale: &Entry, res: &Response) -> Arc<Entry> {
    let merged = stale.refreshed(res.headers(), stale.freshness.clone(), shared.clock.now());
    let at = Exchange { request_time: plan.request_time, response_time: shared.clock.wall() };
    let mut facts = response_facts(merged.status, merged.headers());
    if res.header("date").is_none() {
        // The stored Date is the original generation time; measured from it, the refreshed response
        // would look as old as the first one.
        facts.date = None;
    }
    match policy::storable(&plan.directives, &facts, shared.config.ttl, at) {
        Some(freshness) => {
            let entry = stale.refreshed(res.headers(), freshness, shared.clock.now());
            plan.cache.insert(&plan.key, entry);
            plan.cache.stats.revalidated.fetch_add(1, Ordering::Relaxed);
            plan.cache
                .lookup(&plan.key, &plan.origin.route, &|name| stale.vary_value(name))
                .unwrap_or_else(|| Arc::new(merged))
        }
        None => {
            // The origin no longer allows storing it: answer this once, then forget it.
            plan.cache.remove_entry(&plan.key, stale);
            Arc::new(merged)
        }
    }
}

/// After a successful unsafe request, drops what is stored for its URL and for the `Location` and
/// `Content-Location` it names on the same host (RFC 9111 section 4.4).
pub fn invalidate_after_unsafe(cache: &Cache, req: &Request, res: &Response) {
    if !(200..400).contains(&res.status) {
        return;
    }
    cache.invalidate(&Cache::key(req.host(), req.target()));
    for name in ["location", "content-location"] {
        let Some(value) = res.header(name).and_then(|v| std::str::from_utf8(trim(v)).ok()) else { continue };
        if let Some(target) = same_host_target(req.host(), value) {
            cache.invalidate(&Cache::key(req.host(), target));
        }
    }
}

/// The path of `uri` when it is relative or names `host`.
fn same_host_target<'a>(host: Option<&str>, uri: &'a str) -> Option<&'a str> {
    if uri.starts_with('/') {
        return Some(uri);
    }
    let rest = uri.strip_prefix("http://").or_else(|| uri.strip_prefix("https://"))?;
    let slash = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(slash);
    (host?.eq_ignore_ascii_case(authority) && !path.is_empty()).then_some(path)
}

/// Queues a stale entry for the cache's background refresher; when the queue is full (or there is
/// no refresher) the entry's refresh claim is released for a later request.
pub fn schedule_refresh(shared: &Shared, key: &str, req: &Request, dispatch: &Dispatch<'_>, entry: &Arc<Entry>) {
    let job = RefreshJob {
        key: key.to_string(),
        host: req.host().map(str::to_string),
        dispatch: Dispatch {
            upstream: dispatch.upstream.clone(),
            target: Cow::Owned(dispatch.target.to_string()),
            client: dispatch.client,
            auth_user: None,
            cache: dispatch.cache,
            compress: dispatch.compress,
        },
        entry: Arc::clone(entry),
    };
    match &shared.refresh_tx {
        // Queue full: a later request will try again.
        Some(tx) if tx.try_send(job).is_err() => entry.release_refresh(),
        Some(_) => {}
        None => entry.release_refresh(),
    }
}
