//! Per-client rate limits: a token bucket per client IP, in sharded maps so no global lock sits on
//! the request path. Time is passed in, so tests age buckets without sleeping.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::RateLimit;

const SHARDS: usize = 16;
/// Buckets one shard holds before full (idle) ones are dropped to make room.
const MAX_BUCKETS_PER_SHARD: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets keyed by client IP.
pub struct RateLimiter {
    limit: RateLimit,
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    /// Takes one token for `client` at `now`; when none is left, returns how long until one is.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let capacity = self.limit.capacity();
        let rate = self.limit.per_second;
        let shard = &self.shards[(self.hasher.hash_one(client) as usize) % SHARDS];
        let mut buckets = shard.lock();
        if buckets.len() >= MAX_BUCKETS_PER_SHARD && !buckets.contains_key(&client) {
            // A full bucket is the same as a new one, so forgetting it changes nothing.
            buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < capacity);
            if buckets.len() >= MAX_BUCKETS_PER_SHARD {
                // Every client here is mid-burst (a flood from many addresses): memory stays bounded
                // at the price of forgetting their spending.
                buckets.clear();
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket { tokens: capacity, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let limiter = RateLimiter::new(RateLimit { per_second: 2.0, burst: 5 });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check(ip, t0).is_ok());
        }
        let wait = limiter.check(ip, t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500), "{wait:?}");
        assert!(limiter.check(other, t0).is_ok(), "each client has its own bucket");
        let t1 = t0 + Duration::from_millis(500);
        assert!(limiter.check(ip, t1).is_ok());
        assert!(limiter.check(ip, t1).is_err());
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(limiter.check(ip, later).is_ok(), "refilled up to the burst");
        }
        assert!(limiter.check(ip, later).is_err());
    }

    #[test]
    fn many_clients_stay_bounded() {
        let limiter = RateLimiter::new(RateLimit { per_second: 1000.0, burst: 1 });
        let t0 = Instant::now();
        for i in 0..(SHARDS * MAX_BUCKETS_PER_SHARD * 2) as u32 {
            let _ = limiter.check(IpAddr::from(i.to_be_bytes()), t0 + Duration::from_millis(u64::from(i) / 64));
        }
        let total: usize = limiter.shards.iter().map(|s| s.lock().len()).sum();
        assert!(total <= SHARDS * MAX_BUCKETS_PER_SHARD, "{total} buckets");
    }
}
