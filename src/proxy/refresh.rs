//! The cache's background refresher: one thread that re-fetches entries served under
//! `stale-while-revalidate` (queued by the cache step as [`RefreshJob`]s) and, every second,
//! reclaims entries that can no longer be used.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::cache::policy::RequestDirectives;
use crate::cache::Cache;
use crate::http::body::{self, Encoding, Source, Tee};
use crate::http::buffer::WriteBatch;
use crate::http::response;
use crate::proxy::cache_step::{finish_storing, refresh_from_304, start_storing, CachePlan};
use crate::proxy::context::Scratch;
use crate::proxy::dispatch::RefreshJob;
use crate::server::shared::Shared;

/// The refresher thread's loop, until shutdown.
pub fn run_refresher(shared: &Shared, cache: &Cache, jobs: &Receiver<RefreshJob>) {
    let mut scratch = Scratch::default();
    while !shared.is_shutting_down() {
        match jobs.recv_timeout(Duration::from_secs(1)) {
            Ok(job) => {
                if let Err(e) = refresh(shared, cache, &mut scratch, &job) {
                    log::debug!("background refresh of {} failed: {e}", job.dispatch.target);
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
    let _ = write!(head, "GET {} HTTP/1.1\r\n", job.dispatch.target);
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
        leader: None,
    };
    let now = std::time::Instant::now();
    let backend = job.dispatch.upstream.pool().candidates(now, job.dispatch.client).next().ok_or("no backend is up")?;
    let mut stream = match backend.take_idle(now) {
        Some(s) => s,
        None => backend.connect(config.connect_timeout, config.backend_timeout).map_err(|e| e.to_string())?,
    };
    stream.write_all(&head).map_err(|e| e.to_string())?;
    let buf = &mut scratch.upstream_buf;
    buf.clear();
    let res = response::read_head(buf, &mut stream, config.buffer_size, false).map_err(|e| e.to_string())?;
    if res.status == 304 {
        refresh_from_304(shared, &plan, entry, &res);
    } else {
        let pending = start_storing(shared, &plan, &|name| entry.vary_value(name), &res);
        let mut tee = Tee::new(cache.limits().max_object_bytes);
        let (mut out, mut sink) = (Vec::new(), io::sink());
        let mut dst = WriteBatch::new(&mut out, &mut sink, config.buffer_size);
        let mut src = Source { buf: &mut scratch.upstream_buf, sock: &mut stream, step: config.buffer_size };
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
    if res.reusable && scratch.upstream_buf.is_empty() {
        backend.put_idle(stream, std::time::Instant::now());
    }
    Ok(())
}
