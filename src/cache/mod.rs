//! The shared in-memory response cache: entries in sharded maps keyed by host and target (with `Vary`
//! variants), least-recently-used eviction by bytes, request coalescing, purge, and statistics. The
//! rules for what may be stored and reused live in [`policy`]; a stored response is the `entry`
//! module's, the maps that keep entries the `shards` module's.
//!
//! A hit locks one shard just long enough to clone an `Arc<Entry>`; bodies are shared `Arc<[u8]>` and
//! response heads are built once at store time, so serving a hit copies nothing per request.

pub mod compress;
mod entry;
pub mod policy;
mod shards;

pub use entry::{
    governing_cache_control, is_targeted_cache_control, response_facts, vary_names, Encoded, Entry, Origin, VaryValues,
    TARGETED_CACHE_CONTROL,
};
pub use shards::{Cache, Flight, FlightGuard, Join, Limits, Notify, OwnedFlightGuard, Stats, PASS_TIME};
