//! The cache's background refresher: one thread that re-fetches entries served under
//! `stale-while-revalidate` (queued by the cache step as [`RefreshJob`]s) and, every second,
//! reclaims entries that can no longer be used.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::cache::policy::RequestDirectives;
use crate::cache::Cache;
use crate::http::body::{self, Encoding, Source, Tee};
use crate::http::buffer::{ReadBuf, WriteBatch};
use crate::http::outbound::RequestHead;
use crate::proxy::cache_step::{finish_storing, refresh_from_304, start_storing, CachePlan};
use crate::proxy::dispatch::RefreshJob;
use crate::proxy::error::ForwardError;
use crate::proxy::forward::{self, upstream_read_step, Exchanged, Outbound};
use crate::server::shared::Shared;

/// The refresher's buffers, reused for every refresh.
#[derive(Default)]
struct Scratch {
    /// The request head sent upstream.
    upstream_head: Vec<u8>,
    /// Bytes read from a backend.
    upstream_buf: ReadBuf,
}

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
/// It goes the way a forwarded request goes ([`forward::exchange`]): a stale pooled connection is
/// replaced, a backend that refuses is taken out of rotation, timings reach the metrics.
fn refresh(shared: &Shared, cache: &Cache, scratch: &mut Scratch, job: &RefreshJob) -> Result<(), ForwardError> {
    let config = &shared.config;
    let entry = &job.entry;
    let mut head = RequestHead::start(&mut scratch.upstream_head, "GET", &job.dispatch.target);
    if let Some(host) = &job.host {
        head.field("Host", host.as_bytes());
    }
    for (name, value) in entry.vary_values() {
        if let Some(value) = value {
            head.field(name, value);
        }
    }
    head.validators(entry.header("etag"), entry.header("last-modified"));
    head.via(std::iter::empty(), 1);
    head.finish();

    let plan = CachePlan {
        cache,
        key: job.key.clone(),
        origin: job.dispatch.cache_origin(),
        directives: RequestDirectives::default(),
        stale: Some(Arc::clone(entry)),
        store: true,
        client_conditional: false,
        head_as_get: false,
        hide_targeted: config.strip_targeted_cache_control,
        compress_min: job.dispatch.compress.then_some(config.compress_min_bytes),
        request_time: shared.clock.wall(),
        leader: None,
    };
    let outbound = Outbound {
        pool: job.dispatch.upstream.pool(),
        client: job.dispatch.client,
        head: &scratch.upstream_head,
        is_head: false,
        idempotent: true,
    };
    let Exchanged { backend, mut stream, response: res, in_flight } =
        forward::exchange(shared, &outbound, &mut scratch.upstream_buf).map_err(|failure| failure.error)?;
    if res.status == 304 {
        refresh_from_304(shared, &plan, entry, &res);
    } else {
        let pending = start_storing(shared, &plan, &|name| entry.vary_value(name), &res);
        let mut tee = Tee::new(cache.limits().max_object_bytes);
        let (mut out, mut sink) = (Vec::new(), io::sink());
        let mut dst = WriteBatch::new(&mut out, &mut sink, config.buffer_size);
        let mut src = Source { buf: &mut scratch.upstream_buf, sock: &mut stream, step: upstream_read_step(config) };
        body::transfer_with_copy(&mut src, res.framing, &mut dst, Encoding::Identity, &mut tee).map_err(|e| {
            ForwardError::Upstream(format!("backend {} broke off the response body: {e}", backend.name))
        })?;
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
    stream.finish(backend, res.reusable && scratch.upstream_buf.is_empty());
    drop(in_flight);
    Ok(())
}
