//! The response cache's part of the request pipeline: answer GET and HEAD from storage when policy
//! allows, coalesce concurrent misses into one backend request, revalidate stale entries, serve stale
//! ones when the backend fails, store what comes back, and refresh entries in the background
//! (`stale-while-revalidate`).

use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::cache::policy::{self, CacheControl, Exchange, Freshness, RequestDirectives, Usability};
use crate::cache::{response_facts, vary_names, Cache, Entry, Join, VaryValues, PASS_TIME};
use crate::http::body::{self, Encoding, Source, Tee};
use crate::http::buffer::WriteBatch;
use crate::http::request::Request;
use crate::http::response::{self, Response};
use crate::http::{trim, Framing};
use crate::proxy::Upstream;
use crate::proxy::{self, Dispatch, ForwardError, Forwarded, Outcome, Scratch};
use crate::server::conn::Conn;
use crate::server::Shared;

/// The access-log name of answers served from storage.
pub const CACHE_LABEL: &str = "cache";

/// What the cache contributes to one forwarded GET or HEAD.
pub struct CachePlan<'c> {
    pub cache: &'c Cache,
    pub key: String,
    pub directives: RequestDirectives,
    /// A stored response that must be revalidated, or can stand in if the backend fails.
    pub stale: Option<Arc<Entry>>,
    /// The response may be stored (GET without `no-store`).
    pub store: bool,
    pub request_time: SystemTime,
}

impl CachePlan<'_> {
    /// The entry whose validators go out with the request, when revalidating.
    pub fn revalidating(&self) -> Option<&Entry> {
        self.stale.as_deref().filter(|e| e.has_validator())
    }

    /// The stale entry if policy lets it answer for a failed backend.
    pub fn stale_for_error(&self, shared: &Shared) -> Option<Arc<Entry>> {
        let now = shared.clock.now();
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

/// A stale entry to refresh off the request path.
pub struct RefreshJob {
    key: String,
    host: Option<String>,
    /// The target as sent upstream, and the pool that serves it.
    target: String,
    upstream: Upstream,
    client: IpAddr,
    entry: Arc<Entry>,
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

/// Answers a GET or HEAD from the cache, or forwards it with a plan for storing the answer.
pub fn handle(
    shared: &Shared,
    cache: &Cache,
    scratch: &mut Scratch,
    conn: &mut Conn,
    req: &Request,
    dispatch: &Dispatch<'_>,
) -> Result<Forwarded, (ForwardError, Option<String>)> {
    let directives = request_directives(req);
    let is_get = req.method() == "GET";
    let mut plan = CachePlan {
        cache,
        key: Cache::key(req.host(), req.target()),
        store: is_get && !directives.cc.no_store,
        directives,
        stale: None,
        request_time: shared.clock.wall(),
    };
    if plan.directives.cc.no_store {
        cache.stats.misses.fetch_add(1, Ordering::Relaxed);
        return proxy::forward(shared, scratch, conn, req, dispatch, Some(&mut plan));
    }
    let values = |name: &str| request_value(req, name);
    let mut waited = false;
    let _leader = loop {
        if let Some(entry) = cache.lookup(&plan.key, &values) {
            let now = shared.clock.now();
            let allowed = !plan.directives.has_authorization || entry.freshness.shareable_with_auth;
            if allowed {
                match entry.freshness.usability(entry.age(now), &plan.directives) {
                    Usability::Fresh => {
                        cache.stats.hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(serve_entry(shared, scratch, conn, req, &entry, "HIT"));
                    }
                    Usability::StaleWhileRevalidate => {
                        if entry.claim_refresh() {
                            schedule_refresh(shared, &plan.key, req, dispatch, &entry);
                        }
                        cache.stats.stale.fetch_add(1, Ordering::Relaxed);
                        return Ok(serve_entry(shared, scratch, conn, req, &entry, "STALE"));
                    }
                    Usability::Revalidate => plan.stale = Some(entry),
                }
            }
        }
        if plan.directives.cc.only_if_cached {
            return Err((ForwardError::NotCached, None));
        }
        // Only a GET can fill the cache for the others, only once per wait, and only for URLs
        // that lately answered with something storable.
        if !is_get || waited || cache.is_uncacheable(&plan.key, shared.clock.now()) {
            break None;
        }
        match cache.join_flight(&plan.key) {
            Join::Leader(guard) => break Some(guard),
            Join::Follower(flight) => {
                flight.wait(shared.config.backend_timeout);
                waited = true;
            }
        }
    };
    cache.stats.misses.fetch_add(1, Ordering::Relaxed);
    proxy::forward(shared, scratch, conn, req, dispatch, Some(&mut plan))
}

/// Writes a stored response to the client, or 304 when the client's own validators match it.
pub fn serve_entry(
    shared: &Shared,
    scratch: &mut Scratch,
    conn: &mut Conn,
    req: &Request,
    entry: &Entry,
    label: &str,
) -> Forwarded {
    let keep_alive = req.keep_alive && !shared.is_shutting_down();
    let age = entry.age(shared.clock.now()).as_secs();
    let not_modified = policy::not_modified(
        req.header("if-none-match"),
        req.header("if-modified-since"),
        entry.header("etag"),
        entry.header("last-modified"),
    ) && entry.status == 200;
    let mut body_bytes = 0;
    let mut dst = WriteBatch::new(scratch.out_buf(), &mut conn.stream, shared.config.buffer_size);
    let written = (|| -> io::Result<u16> {
        if not_modified {
            // RFC 9110 section 15.4.5: the fields a 200 would have carried that describe the representation.
            dst.put(b"HTTP/1.1 304 Not Modified\r\n")?;
            for (name, value) in entry.headers() {
                const KEPT: [&str; 7] =
                    ["cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified"];
                if KEPT.iter().any(|k| k.eq_ignore_ascii_case(name)) {
                    write!(dst, "{name}: ")?;
                    dst.put(value)?;
                    dst.put(b"\r\n")?;
                }
            }
        } else {
            dst.put(&entry.head)?;
            write!(dst, "Content-Length: {}\r\n", entry.body.len())?;
        }
        write!(dst, "Age: {age}\r\nX-Cache: {label}\r\n")?;
        dst.put(if keep_alive { b"\r\n" as &[u8] } else { b"Connection: close\r\n\r\n" })?;
        if !not_modified && !req.is_head() {
            dst.put(&entry.body)?;
            body_bytes = entry.body.len() as u64;
        }
        dst.send()?;
        Ok(if not_modified { 304 } else { entry.status })
    })();
    scratch.set_body_bytes(body_bytes);
    match written {
        Ok(status) => {
            (status, Some(CACHE_LABEL.to_string()), if keep_alive { Outcome::KeepAlive } else { Outcome::Close })
        }
        Err(_) => (entry.status, Some(CACHE_LABEL.to_string()), Outcome::Close),
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
    if pending.tee.overflowed {
        return;
    }
    let body: Arc<[u8]> = pending.tee.data.into();
    let entry =
        Entry::new(res.status, res.reason(), res.headers(), body, pending.freshness, pending.vary, pending.received_at);
    plan.cache.insert(&plan.key, entry);
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
            plan.cache.lookup(&plan.key, &|name| stale.vary_value(name)).unwrap_or_else(|| Arc::new(merged))
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

fn schedule_refresh(shared: &Shared, key: &str, req: &Request, dispatch: &Dispatch<'_>, entry: &Arc<Entry>) {
    let job = RefreshJob {
        key: key.to_string(),
        host: req.host().map(str::to_string),
        target: dispatch.target.to_string(),
        upstream: dispatch.upstream.clone(),
        client: dispatch.client,
        entry: Arc::clone(entry),
    };
    if let Some(tx) = &shared.refresh_tx {
        if tx.try_send(job).is_err() {
            // Queue full: a later request will try again.
            entry.release_refresh();
        }
    }
}

/// The refresher thread: refreshes entries served under `stale-while-revalidate`, and every second
/// reclaims entries that can no longer be used.
pub fn run_refresher(shared: &Shared, cache: &Cache, jobs: &Receiver<RefreshJob>) {
    let mut scratch = Scratch::default();
    while !shared.is_shutting_down() {
        match jobs.recv_timeout(Duration::from_secs(1)) {
            Ok(job) => {
                if let Err(e) = refresh(shared, cache, &mut scratch, &job) {
                    log::debug!("background refresh of {} failed: {e}", job.target);
                    job.entry.release_refresh();
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                cache.reclaim_expired(shared.clock.now());
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Fetches `job`'s URL again (conditionally when the entry has validators) and stores the result.
fn refresh(shared: &Shared, cache: &Cache, scratch: &mut Scratch, job: &RefreshJob) -> Result<(), String> {
    let config = &shared.config;
    let entry = &job.entry;
    let mut head = Vec::with_capacity(256);
    let _ = write!(head, "GET {} HTTP/1.1\r\n", job.target);
    if let Some(host) = &job.host {
        let _ = write!(head, "Host: {host}\r\n");
    }
    for (name, value) in entry.vary_values() {
        if let Some(value) = value {
            let _ = write!(head, "{name}: ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
    }
    if let Some(etag) = entry.header("etag") {
        head.extend_from_slice(b"If-None-Match: ");
        head.extend_from_slice(etag);
        head.extend_from_slice(b"\r\n");
    }
    if let Some(lm) = entry.header("last-modified") {
        head.extend_from_slice(b"If-Modified-Since: ");
        head.extend_from_slice(lm);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"Via: 1.1 pibl\r\n\r\n");

    let plan = CachePlan {
        cache,
        key: job.key.clone(),
        directives: RequestDirectives::default(),
        stale: Some(Arc::clone(entry)),
        store: true,
        request_time: shared.clock.wall(),
    };
    let now = std::time::Instant::now();
    let backend = job.upstream.pool().candidates(now, job.client).next().ok_or("no backend is up")?;
    let mut stream = match backend.take_idle(now) {
        Some(s) => s,
        None => backend.connect(config.connect_timeout, config.backend_timeout).map_err(|e| e.to_string())?,
    };
    stream.write_all(&head).map_err(|e| e.to_string())?;
    let buf = scratch.upstream_buf_mut();
    buf.clear();
    let res = response::read_head(buf, &mut stream, config.buffer_size, false).map_err(|e| e.to_string())?;
    if res.status == 304 {
        refresh_from_304(shared, &plan, entry, &res);
    } else {
        let pending = start_storing(shared, &plan, &|name| entry.vary_value(name), &res);
        let mut tee = Tee::new(cache.limits().max_object_bytes);
        let (mut out, mut sink) = (Vec::new(), io::sink());
        let mut dst = WriteBatch::new(&mut out, &mut sink, config.buffer_size);
        let mut src = Source { buf: scratch.upstream_buf_mut(), sock: &mut stream, step: config.buffer_size };
        body::transfer_with_copy(&mut src, res.framing, &mut dst, Encoding::Identity, &mut tee)
            .map_err(|e| e.to_string())?;
        match pending {
            Some(mut pending) => {
                pending.tee = tee;
                finish_storing(&plan, &res, pending);
            }
            None => {
                cache.remove_entry(&job.key, entry);
            }
        }
    }
    if res.reusable && scratch.upstream_buf_mut().is_empty() {
        backend.put_idle(stream, std::time::Instant::now());
    }
    Ok(())
}
