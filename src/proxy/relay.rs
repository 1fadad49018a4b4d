//! Relaying a backend's answer: write the response head (hop-by-hop fields dropped, framing chosen
//! for the client) and stream the body to the client, copying it into the cache when the plan says
//! so; then give the backend connection back to its pool when it can carry another request.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::cache::is_targeted_cache_control;
use crate::http::body::{self, BodyError, Encoding, Source};
use crate::http::buffer::WriteBatch;
use crate::http::request::Request;
use crate::http::response::Response;
use crate::http::Framing;
use crate::proxy::cache_step::{self, CachePlan, Pending};
use crate::proxy::context::{Answer, Outcome, RequestCtx};
use crate::proxy::error::write_error;
use crate::proxy::forward::{upstream_read_step, Exchanged};
use crate::upstream::backend::Backend;

/// Writes the response head and streams its body to the client. A failure here can only close the
/// connection: the status line has already gone out. With a cache plan, a 304 to a revalidation or
/// a 5xx with a usable stale entry is answered from storage instead, and a storable response is
/// copied into the cache as it streams.
pub fn relay(ctx: &mut RequestCtx<'_>, exchanged: Exchanged<'_>, plan: Option<&CachePlan<'_>>) -> Answer {
    let Exchanged { backend, mut stream, response: res, in_flight } = exchanged;
    let (shared, req) = (ctx.shared, ctx.req);
    let config = &shared.config;
    let by = Some(backend.name.clone());
    if let Some(plan) = plan {
        let answered_from_storage = if res.status == 304 && plan.revalidating().is_some() {
            plan.stale.as_deref().map(|stale| (cache_step::refresh_from_304(shared, plan, stale, &res), "REVALIDATED"))
        } else if res.status >= 500 {
            plan.stale_for_error(shared.clock.now()).map(|entry| {
                plan.cache.stats.stale.fetch_add(1, Ordering::Relaxed);
                (entry, "STALE")
            })
        } else {
            None
        };
        if let Some((entry, label)) = answered_from_storage {
            if res.status == 304 && res.reusable && ctx.scratch.upstream_buf.is_empty() {
                backend.put_idle(stream, Instant::now());
            }
            let answer = cache_step::serve_entry(ctx, &entry, label);
            return Answer { by, ..answer };
        }
    }
    if let Some(cache) = &shared.cache {
        if !matches!(req.method(), "GET" | "HEAD" | "OPTIONS" | "TRACE") {
            cache_step::invalidate_after_unsafe(cache, req, &res);
        }
    }
    if let Some(plan) = plan.filter(|_| req.is_head() && res.status == 200) {
        cache_step::update_from_head(shared, plan, &res);
    }
    let mut pending = plan
        .and_then(|plan| cache_step::start_storing(shared, plan, &|name| cache_step::request_value(req, name), &res));
    if let Some(plan) = plan.filter(|p| p.answers_from_storage(req, &res)) {
        // Known length within the object limit (else nothing is pending): read it whole, store
        // it, and answer from the stored copy: a 304 for the client's conditional, or the
        // encoding it prefers.
        if let Some(pending) = pending.take() {
            let answer = answer_from_filled_cache(ctx, backend, stream, &res, plan, pending);
            drop(in_flight);
            return answer;
        }
    }
    if plan.is_some_and(|p| p.head_as_get) {
        // A HEAD sent as a GET whose answer is not stored: the client gets the head alone, and
        // the unread body makes the backend connection unfit for another request.
        let encoding = if matches!(res.framing, Framing::Chunked | Framing::UntilClose) && req.version == 1 {
            Encoding::Chunked
        } else {
            Encoding::Identity
        };
        let keep_alive = ctx.may_keep_alive();
        let mut dst = WriteBatch::new(&mut ctx.scratch.out, &mut ctx.conn.stream, config.buffer_size);
        let sent = write_response_head(&mut dst, req, &res, encoding, keep_alive, b"X-Cache: MISS\r\n", false)
            .and_then(|()| dst.send());
        drop((stream, in_flight));
        let next = Outcome::keep_alive_if(keep_alive && sent.is_ok());
        return Answer { status: res.status, by, next };
    }

    // Bodies whose end only the closing of the connection marks are re-chunked for HTTP/1.1
    // clients, so their connection survives; HTTP/1.0 clients get the bytes and a close.
    let (encoding, length_known) = match res.framing {
        Framing::None | Framing::Length(_) => (Encoding::Identity, true),
        Framing::Chunked | Framing::UntilClose if req.version == 1 => (Encoding::Chunked, true),
        Framing::Chunked | Framing::UntilClose => (Encoding::Identity, false),
    };
    let keep_alive = ctx.may_keep_alive() && length_known;
    let cache_label: &[u8] = if plan.is_some() { b"X-Cache: MISS\r\n" } else { b"" };
    let closed = Answer { status: res.status, by: by.clone(), next: Outcome::Close };

    let scratch = &mut *ctx.scratch;
    let mut dst = WriteBatch::new(&mut scratch.out, &mut ctx.conn.stream, config.buffer_size);
    let strip_targeted = config.strip_targeted_cache_control;
    if write_response_head(&mut dst, req, &res, encoding, keep_alive, cache_label, strip_targeted).is_err() {
        return closed;
    }
    let copied = {
        let mut src = Source { buf: &mut scratch.upstream_buf, sock: &mut stream, step: upstream_read_step(config) };
        match pending.as_mut() {
            Some(p) => body::transfer_with_copy(&mut src, res.framing, &mut dst, encoding, &mut p.tee),
            None => body::transfer(&mut src, res.framing, &mut dst, encoding, u64::MAX),
        }
    };
    if copied.is_ok() {
        // The backend's part is done before the client's last bytes go out, so the client's next
        // request already finds the stored response and the pooled connection.
        // Bytes already past the body's end mean its length was wrong (or more follows that no one
        // asked for): what was relayed is not stored.
        let overran = !scratch.upstream_buf.is_empty();
        if let (Some(plan), Some(pending), false) = (plan, pending, overran) {
            cache_step::finish_storing(plan, &res, pending);
        }
        if res.reusable && !overran {
            backend.put_idle(stream, Instant::now());
        }
    }
    drop(in_flight);
    match copied.and_then(|sent| dst.send().map(|()| sent).map_err(BodyError::Write)) {
        Ok(sent) => {
            scratch.body_bytes = sent;
            Answer { status: res.status, by, next: Outcome::keep_alive_if(keep_alive) }
        }
        Err(BodyError::Write(_)) => closed,
        Err(e) => {
            log::warn!("{} {}: backend {} broke off the response body: {e}", req.method(), req.target(), backend.name);
            closed
        }
    }
}

/// Reads a storable answer whole, stores it, and answers the client from the stored copy, so its
/// own `If-None-Match` / `If-Modified-Since` get their 304 when they match (RFC 9111 section 4.3.2).
fn answer_from_filled_cache(
    ctx: &mut RequestCtx<'_>,
    backend: &Arc<Backend>,
    mut stream: TcpStream,
    res: &Response,
    plan: &CachePlan<'_>,
    mut pending: Pending,
) -> Answer {
    let config = &ctx.shared.config;
    let by = Some(backend.name.clone());
    let read = {
        let mut src =
            Source { buf: &mut ctx.scratch.upstream_buf, sock: &mut stream, step: upstream_read_step(config) };
        let (mut out, mut sink) = (Vec::new(), io::sink());
        let mut dst = WriteBatch::new(&mut out, &mut sink, config.buffer_size);
        body::transfer_with_copy(&mut src, res.framing, &mut dst, Encoding::Identity, &mut pending.tee)
    };
    let req = ctx.req;
    let entry = match read {
        Ok(_) => {
            // Bytes already past the body's end mean its length was wrong: the answer goes to this
            // client alone, neither stored nor its connection used again.
            let overran = !ctx.scratch.upstream_buf.is_empty();
            if res.reusable && !overran {
                backend.put_idle(stream, Instant::now());
            }
            match overran {
                true => cache_step::unstored_answer(plan, res, pending),
                false => cache_step::store_answer(plan, res, pending),
            }
        }
        Err(e) => {
            log::warn!("{} {}: backend {} broke off the response body: {e}", req.method(), req.target(), backend.name);
            None
        }
    };
    match entry {
        Some(entry) => Answer { by, ..cache_step::serve_entry(ctx, &entry, "MISS") },
        None => {
            // Nothing has gone to the client yet, so it still gets a proper answer.
            let detail = "the backend broke off the response body";
            ctx.scratch.body_bytes = write_error(&mut ctx.conn.stream, 502, detail, false, req.is_head()).unwrap_or(0);
            Answer { status: 502, by, next: Outcome::Close }
        }
    }
}

pub fn write_response_head<W: Write>(
    dst: &mut WriteBatch<'_, W>,
    req: &Request,
    res: &Response,
    encoding: Encoding,
    keep_alive: bool,
    extra: &[u8],
    strip_targeted: bool,
) -> io::Result<()> {
    let head = dst;
    write!(head, "HTTP/1.1 {} ", res.status)?;
    head.put(res.reason())?;
    head.put(b"\r\n")?;
    for (name, value) in res.headers() {
        if res.connection.drops(name)
            || (!extra.is_empty() && name.eq_ignore_ascii_case("x-cache"))
            || (strip_targeted && is_targeted_cache_control(name))
        {
            continue;
        }
        put_field(head, name, value)?;
    }
    match res.framing {
        Framing::Length(len) => {
            write!(head, "Content-Length: {len}\r\n")?;
        }
        // HEAD and 304 answers describe the body they do not carry: keep the backend's length.
        Framing::None if req.is_head() || res.status == 304 => {
            if let Some(len) = res.header("content-length") {
                put_field(head, "Content-Length", len)?;
            }
        }
        Framing::None => {}
        Framing::Chunked | Framing::UntilClose if encoding == Encoding::Chunked => {
            head.put(b"Transfer-Encoding: chunked\r\n")?;
        }
        Framing::Chunked | Framing::UntilClose => {}
    }
    head.put(extra)?;
    if !keep_alive {
        head.put(b"Connection: close\r\n")?;
    } else if req.version == 0 {
        head.put(b"Connection: keep-alive\r\n")?;
    }
    head.put(b"\r\n")
}

fn put_field<W: Write>(dst: &mut WriteBatch<'_, W>, name: &str, value: &[u8]) -> io::Result<()> {
    dst.put(name.as_bytes())?;
    dst.put(b": ")?;
    dst.put(value)?;
    dst.put(b"\r\n")
}
