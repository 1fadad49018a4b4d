//! Where entries are kept: sharded maps keyed by host and target, several `Vary` variants per key,
//! least-recently-used eviction by bytes, request coalescing (one fetch per URL, the others wait on
//! it), "hit-for-pass" marks for URLs that could not be stored, purge, and statistics.
//!
//! A hit locks one shard just long enough to clone an `Arc<Entry>`, so serving it copies nothing.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::entry::Entry;

/// Most shards; fewer when the budget is small, so each shard still holds several of the largest objects.
const MAX_SHARDS: usize = 16;
/// Variants (by `Vary`) kept per URL; the oldest goes first.
const MAX_VARIANTS: usize = 16;
/// How long an uncacheable answer exempts its URL from coalescing.
pub const PASS_TIME: Duration = Duration::from_secs(30);
/// Uncacheable URLs remembered per shard.
const MAX_PASSES_PER_SHARD: usize = 4096;

/// Limits of one cache.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Total bytes of all entries.
    pub max_bytes: usize,
    /// Largest single response stored; bigger ones stream through uncached.
    pub max_object_bytes: usize,
}

/// Counters, readable at any time.
#[derive(Debug, Default)]
pub struct Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale: AtomicU64,
    pub revalidated: AtomicU64,
    pub stores: AtomicU64,
    pub evictions: AtomicU64,
    pub coalesced: AtomicU64,
    bytes: AtomicUsize,
    entries: AtomicUsize,
}

impl Stats {
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct Shard {
    entries: HashMap<String, Vec<Arc<Entry>>>,
    /// Use order: tick of last use → (key, entry id).
    lru: BTreeMap<u64, (String, u64)>,
    bytes: usize,
    flights: HashMap<String, Arc<Flight>>,
    /// URLs whose last answer could not be stored, until when: their requests are not coalesced
    /// (Varnish's "hit-for-pass"), so a dynamic page never makes clients queue behind each other.
    passes: HashMap<String, Instant>,
}

impl Shard {
    fn remove_where(&mut self, key: &str, mut doomed: impl FnMut(&Entry) -> bool, stats: &Stats) -> usize {
        let Some(list) = self.entries.get_mut(key) else { return 0 };
        let mut removed = 0;
        list.retain(|e| {
            if doomed(e) {
                self.lru.remove(&e.last_used.load(Ordering::Relaxed));
                self.bytes -= e.size;
                stats.bytes.fetch_sub(e.size, Ordering::Relaxed);
                stats.entries.fetch_sub(1, Ordering::Relaxed);
                removed += 1;
                false
            } else {
                true
            }
        });
        if list.is_empty() {
            self.entries.remove(key);
        }
        removed
    }
}

/// Called when a fetch finishes, for a waiter that cannot block (an event loop's session).
pub type Notify = Box<dyn FnOnce() + Send>;

/// A fetch of one URL that other requests for it wait on.
#[derive(Default)]
pub struct Flight {
    done: Mutex<bool>,
    finished: Condvar,
    /// Waiters that asked to be told instead of blocking.
    notify: Mutex<Vec<Notify>>,
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight").field("done", &*self.done.lock()).finish()
    }
}

impl Flight {
    /// Whether the leading request has finished.
    pub fn is_done(&self) -> bool {
        *self.done.lock()
    }

    /// Calls `notify` once the leading request has finished (at once if it already has).
    pub fn on_done(&self, notify: Notify) {
        let done = self.done.lock();
        if *done {
            drop(done);
            return notify();
        }
        // Registered under the `done` lock, so finishing cannot slip in between.
        self.notify.lock().push(notify);
    }

    fn finish(&self) {
        let waiting = {
            let mut done = self.done.lock();
            *done = true;
            std::mem::take(&mut *self.notify.lock())
        };
        self.finished.notify_all();
        for notify in waiting {
            notify();
        }
    }

    /// Waits until the leading request has finished, or `timeout`; true when it finished.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut done = self.done.lock();
        if !*done {
            self.finished.wait_for(&mut done, timeout);
        }
        *done
    }
}

/// Held by the request that fetches for everyone; waiters are released when it is dropped.
pub struct FlightGuard<'a> {
    cache: &'a Cache,
    key: String,
    flight: Arc<Flight>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.cache.shard(&self.key).lock().flights.remove(&self.key);
        self.flight.finish();
    }
}

/// A [`FlightGuard`] that owns its handle on the cache, for a request whose fetch outlives any
/// borrow (an event loop's session).
pub struct OwnedFlightGuard {
    cache: Arc<Cache>,
    key: String,
    flight: Arc<Flight>,
}

impl Drop for OwnedFlightGuard {
    fn drop(&mut self) {
        self.cache.shard(&self.key).lock().flights.remove(&self.key);
        self.flight.finish();
    }
}

/// Whether this request leads the fetch of a URL or waits for another.
pub enum Join<'a> {
    Leader(FlightGuard<'a>),
    Follower(Arc<Flight>),
}

fn shard_count(limits: Limits) -> usize {
    (limits.max_bytes / limits.max_object_bytes.max(1) / 4).clamp(1, MAX_SHARDS)
}

/// The cache.
pub struct Cache {
    shards: Vec<Mutex<Shard>>,
    limits: Limits,
    hasher: std::collections::hash_map::RandomState,
    tick: AtomicU64,
    pub stats: Stats,
}

impl Cache {
    pub fn new(limits: Limits) -> Cache {
        Cache {
            shards: (0..shard_count(limits)).map(|_| Mutex::new(Shard::default())).collect(),
            limits,
            hasher: Default::default(),
            tick: AtomicU64::new(1),
            stats: Stats::default(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The cache key of a URL: the full text, never a hash alone, so two URLs cannot collide.
    pub fn key(host: Option<&str>, target: &str) -> String {
        let host = host.unwrap_or("");
        let mut key = String::with_capacity(host.len() + target.len() + 1);
        key.extend(host.chars().map(|c| c.to_ascii_lowercase()));
        key.push(' ');
        key.push_str(target);
        key
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % self.shards.len()]
    }

    fn next_tick(&self) -> u64 {
        self.tick.fetch_add(1, Ordering::Relaxed)
    }

    /// The stored variant of `key` that matches the request's header values and was produced by the
    /// routing decision `route` ([`Origin::route`](super::Origin)), marked as used. Variants that
    /// another routing decision produced can never answer this URL again and are dropped.
    pub fn lookup(
        &self,
        key: &str,
        route: &str,
        request_values: &dyn Fn(&str) -> Option<Vec<u8>>,
    ) -> Option<Arc<Entry>> {
        let tick = self.next_tick();
        let mut shard = self.shard(key).lock();
        shard.remove_where(key, |e| e.origin.route != route, &self.stats);
        let entry = shard.entries.get(key)?.iter().find(|e| e.matches(request_values)).cloned()?;
        let old = entry.last_used.swap(tick, Ordering::Relaxed);
        if let Some(slot) = shard.lru.remove(&old) {
            shard.lru.insert(tick, slot);
        }
        Some(entry)
    }

    /// Stores `entry` under `key`, replacing the variant with the same `Vary` values, then evicts the
    /// least recently used entries of the shard until it is within its share of `max_bytes`.
    /// Returns false when the entry is too big to store.
    pub fn insert(&self, key: &str, entry: Entry) -> bool {
        self.store(key, entry).1
    }

    /// As [`insert`](Cache::insert), giving back the entry, shared, and whether it was stored.
    pub fn store(&self, key: &str, mut entry: Entry) -> (Arc<Entry>, bool) {
        if entry.body.len() > self.limits.max_object_bytes || entry.size > self.shard_budget() {
            return (Arc::new(entry), false);
        }
        let tick = self.next_tick();
        entry.id = tick;
        entry.last_used = AtomicU64::new(tick);
        let size = entry.size;
        let entry = Arc::new(entry);
        let stored = Arc::clone(&entry);
        let mut shard = self.shard(key).lock();
        shard.remove_where(key, |old| old.vary == entry.vary || old.origin.route != entry.origin.route, &self.stats);
        if shard.entries.get(key).is_some_and(|l| l.len() >= MAX_VARIANTS) {
            let oldest = shard.entries[key].iter().map(|e| e.id).min();
            shard.remove_where(key, |e| Some(e.id) == oldest, &self.stats);
        }
        shard.passes.remove(key);
        shard.entries.entry(key.to_string()).or_default().push(entry);
        shard.lru.insert(tick, (key.to_string(), tick));
        shard.bytes += size;
        self.stats.bytes.fetch_add(size, Ordering::Relaxed);
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
        self.stats.stores.fetch_add(1, Ordering::Relaxed);
        let budget = self.shard_budget();
        while shard.bytes > budget {
            let Some((_, (victim_key, victim_id))) = shard.lru.pop_first() else { break };
            // Already out of the LRU index; remove_where's own index removal is a no-op.
            shard.remove_where(&victim_key, |e| e.id == victim_id, &self.stats);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
        (stored, true)
    }

    fn shard_budget(&self) -> usize {
        self.limits.max_bytes / self.shards.len()
    }

    /// Removes every variant of `key`; returns how many entries went.
    pub fn invalidate(&self, key: &str) -> usize {
        self.shard(key).lock().remove_where(key, |_| true, &self.stats)
    }

    /// Removes one specific stored entry (it turned out unusable), if still there.
    pub fn remove_entry(&self, key: &str, entry: &Entry) {
        let id = entry.id;
        self.shard(key).lock().remove_where(key, |e| e.id == id, &self.stats);
    }

    /// Removes every entry whose key satisfies `doomed` (`host target`); returns how many went.
    pub fn purge_matching(&self, doomed: impl Fn(&str) -> bool) -> usize {
        self.purge_where(|key, _| doomed(key))
    }

    /// Removes every entry for which `doomed(key, entry)` holds (by tag, by path prefix, ...);
    /// returns how many went. Locks each shard in turn, never on the request path.
    pub fn purge_where(&self, doomed: impl Fn(&str, &Entry) -> bool) -> usize {
        let mut removed = 0;
        for shard in &self.shards {
            let mut shard = shard.lock();
            let keys: Vec<String> = shard.entries.keys().cloned().collect();
            for key in keys {
                removed += shard.remove_where(&key, |e| doomed(&key, e), &self.stats);
            }
        }
        removed
    }

    /// The target part of a key (`host target`).
    pub fn key_target(key: &str) -> &str {
        key.split_once(' ').map_or(key, |(_, target)| target)
    }

    /// The `n` most recently used keys with the body bytes of their newest variant, most recent
    /// first. Locks each shard in turn, so it is for status pages, never the request path.
    pub fn top_keys(&self, n: usize) -> Vec<(String, usize)> {
        let mut found: Vec<(u64, String, usize)> = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock();
            for (tick, (key, id)) in shard.lru.iter().rev().take(n) {
                let size =
                    shard.entries.get(key).and_then(|l| l.iter().find(|e| e.id == *id)).map_or(0, |e| e.body.len());
                found.push((*tick, key.clone(), size));
            }
        }
        found.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut seen = std::collections::HashSet::new();
        found.into_iter().filter(|(_, key, _)| seen.insert(key.clone())).take(n).map(|(_, k, s)| (k, s)).collect()
    }

    /// Removes everything.
    pub fn purge_all(&self) -> usize {
        self.purge_matching(|_| true)
    }

    /// Reclaims entries that can never be used again: stale past every grace window and without a
    /// validator to revalidate them.
    pub fn reclaim_expired(&self, now: Instant) -> usize {
        let mut removed = 0;
        for shard in &self.shards {
            let mut shard = shard.lock();
            let keys: Vec<String> = shard.entries.keys().cloned().collect();
            for key in keys {
                removed += shard.remove_where(
                    &key,
                    |e| {
                        let f = &e.freshness;
                        let grace = f.stale_while_revalidate.max(f.stale_if_error);
                        !e.has_validator() && e.age(now) >= f.lifetime + grace
                    },
                    &self.stats,
                );
            }
        }
        removed
    }

    /// Remembers that `key`'s answer could not be stored, until `until`.
    pub fn mark_uncacheable(&self, key: &str, until: Instant) {
        let mut shard = self.shard(key).lock();
        if shard.passes.len() >= MAX_PASSES_PER_SHARD {
            let now = until.checked_sub(PASS_TIME).unwrap_or(until);
            shard.passes.retain(|_, t| *t > now);
            if shard.passes.len() >= MAX_PASSES_PER_SHARD {
                shard.passes.clear();
            }
        }
        shard.passes.insert(key.to_string(), until);
    }

    /// Whether `key` recently answered with something that could not be stored.
    pub fn is_uncacheable(&self, key: &str, now: Instant) -> bool {
        self.shard(key).lock().passes.get(key).is_some_and(|until| now < *until)
    }

    /// [`Cache::join_flight`] for a caller that holds the cache by `Arc`: the leader's guard owns it.
    pub fn join_flight_owned(self: &Arc<Self>, key: &str) -> Result<OwnedFlightGuard, Arc<Flight>> {
        let mut shard = self.shard(key).lock();
        if let Some(flight) = shard.flights.get(key) {
            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
            return Err(Arc::clone(flight));
        }
        let flight = Arc::new(Flight::default());
        shard.flights.insert(key.to_string(), Arc::clone(&flight));
        Ok(OwnedFlightGuard { cache: Arc::clone(self), key: key.to_string(), flight })
    }

    /// Joins the fetch of `key` in progress, or starts one.
    pub fn join_flight(&self, key: &str) -> Join<'_> {
        let mut shard = self.shard(key).lock();
        if let Some(flight) = shard.flights.get(key) {
            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
            return Join::Follower(Arc::clone(flight));
        }
        let flight = Arc::new(Flight::default());
        shard.flights.insert(key.to_string(), Arc::clone(&flight));
        Join::Leader(FlightGuard { cache: self, key: key.to_string(), flight })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::tests::{entry, freshness};

    #[test]
    fn top_keys_are_the_most_recently_used() {
        let cache = Cache::new(Limits { max_bytes: 1 << 20, max_object_bytes: 1 << 16 });
        let now = Instant::now();
        for i in 0..5 {
            assert!(cache.insert(&format!("h /{i}"), entry(10 + i, Vec::new(), now)));
        }
        assert!(cache.lookup("h /1", "", &|_| None).is_some());
        let top = cache.top_keys(3);
        assert_eq!(top, vec![("h /1".to_string(), 11), ("h /4".to_string(), 14), ("h /3".to_string(), 13)]);
    }

    #[test]
    fn variants_are_kept_apart() {
        let cache = Cache::new(Limits { max_bytes: 1 << 20, max_object_bytes: 1 << 16 });
        let now = Instant::now();
        let gzip = vec![("accept-encoding".to_string(), Some(b"gzip".to_vec()))];
        let plain = vec![("accept-encoding".to_string(), None)];
        assert!(cache.insert("h /", entry(10, gzip, now)));
        assert!(cache.insert("h /", entry(20, plain, now)));
        let found =
            |v: Option<&'static [u8]>| cache.lookup("h /", "", &|_| v.map(|x| x.to_vec())).map(|e| e.body.len());
        assert_eq!(found(Some(b"gzip")), Some(10));
        assert_eq!(found(None), Some(20));
        assert_eq!(found(Some(b"br")), None);
        assert_eq!(cache.invalidate("h /"), 2);
        assert_eq!(cache.stats.entries(), 0);
        assert_eq!(cache.stats.bytes(), 0);
    }

    #[test]
    fn an_entry_answers_only_for_the_routing_decision_that_stored_it() {
        let cache = Cache::new(Limits { max_bytes: 1 << 20, max_object_bytes: 1 << 16 });
        let now = Instant::now();
        let origin = |route: &str| crate::cache::Origin { route: route.to_string(), app: None };
        assert!(cache.insert("h /", entry(10, Vec::new(), now).from_origin(origin("app shop#1"))));
        assert!(cache.lookup("h /", "app shop#1", &|_| None).is_some());
        assert!(cache.lookup("h /", "app shop#2", &|_| None).is_none(), "another decision: no match");
        assert_eq!(cache.stats.entries(), 0, "and the orphan is gone");
        assert!(cache.lookup("h /", "app shop#1", &|_| None).is_none());
    }

    #[test]
    fn eviction_keeps_bytes_bounded_and_recent_entries() {
        let limits = Limits { max_bytes: 16 * 64 * 1024, max_object_bytes: 16 * 1024 };
        let cache = Cache::new(limits);
        let now = Instant::now();
        for i in 0..2000 {
            assert!(cache.insert(&format!("h /{i}"), entry(8 * 1024, Vec::new(), now)));
            assert!(cache.stats.bytes() <= limits.max_bytes);
        }
        assert!(cache.stats.evictions.load(Ordering::Relaxed) > 1000);
        assert!(cache.lookup("h /1999", "", &|_| None).is_some(), "the newest entry survives");
        assert!(cache.lookup("h /0", "", &|_| None).is_none(), "the oldest entry is gone");
        assert!(!cache.insert("h /big", entry(20 * 1024, Vec::new(), now)), "over max_object_bytes");
    }

    #[test]
    fn recently_used_entries_survive_eviction() {
        let cache = Cache::new(Limits { max_bytes: 16 * 20 * 1024, max_object_bytes: 16 * 1024 });
        let now = Instant::now();
        // All keys of one shard would be ideal; with 16 shards, keep "hot" in use across many inserts.
        cache.insert("h /hot", entry(1024, Vec::new(), now));
        for i in 0..500 {
            cache.insert(&format!("h /{i}"), entry(1024, Vec::new(), now));
            assert!(cache.lookup("h /hot", "", &|_| None).is_some(), "hot entry evicted after {i} inserts");
        }
    }

    #[test]
    fn coalescing_has_one_leader() {
        let cache = Cache::new(Limits { max_bytes: 1 << 20, max_object_bytes: 1 << 16 });
        let leader = match cache.join_flight("h /") {
            Join::Leader(g) => g,
            Join::Follower(_) => panic!("first is the leader"),
        };
        let follower = match cache.join_flight("h /") {
            Join::Follower(f) => f,
            Join::Leader(_) => panic!("second follows"),
        };
        assert!(!follower.wait(Duration::from_millis(1)));
        drop(leader);
        assert!(follower.wait(Duration::from_millis(1)));
        assert!(matches!(cache.join_flight("h /"), Join::Leader(_)));
    }

    #[test]
    fn reclaim_drops_only_useless_entries() {
        let cache = Cache::new(Limits { max_bytes: 1 << 20, max_object_bytes: 1 << 16 });
        let now = Instant::now();
        cache.insert("h /a", entry(10, Vec::new(), now));
        let with_etag = Entry::new(
            200,
            b"OK",
            [("ETag", &b"\"1\""[..])].into_iter(),
            vec![1u8].into(),
            freshness(60),
            Vec::new(),
            now,
        );
        cache.insert("h /b", with_etag);
        assert_eq!(cache.reclaim_expired(now + Duration::from_secs(30)), 0);
        assert_eq!(cache.reclaim_expired(now + Duration::from_secs(61)), 1);
        assert!(cache.lookup("h /b", "", &|_| None).is_some());
    }
}
