//! Per-client-IP throttle on the credential endpoints (`/api/auth`, `/api/users`): a token bucket
//! per address holding `rate` tokens, refilled at `rate` a minute. It stops guessing passwords
//! across many e-mail addresses, which the per-address lock-out alone would not. Time is passed in.

use std::collections::HashMap;
use std::net::IpAddr;

use parking_lot::Mutex;

/// Addresses tracked before full buckets (idle clients) are forgotten.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

/// The buckets of every client address.
#[derive(Debug)]
pub struct Throttle {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Throttle {
    /// `per_minute` requests a minute per address; 0 turns the throttle off.
    pub fn new(per_minute: u32) -> Throttle {
        Throttle { per_minute, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `ip`; when there is none, how many seconds until there is.
    pub fn check(&self, ip: IpAddr, now_ms: u64) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let per_ms = capacity / 60_000.0;
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&ip) {
            buckets.retain(|_, b| b.tokens + (now_ms.saturating_sub(b.at_ms) as f64) * per_ms < capacity);
        }
        let bucket = buckets.entry(ip).or_insert(Bucket { tokens: capacity, at_ms: now_ms });
        let elapsed = now_ms.saturating_sub(bucket.at_ms) as f64;
        bucket.tokens = (bucket.tokens + elapsed * per_ms).min(capacity);
        bucket.at_ms = bucket.at_ms.max(now_ms);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = (1.0 - bucket.tokens) / per_ms;
            Err(((wait_ms / 1000.0).ceil() as u64).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_empties_and_refills() {
        let t = Throttle::new(3);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..3 {
            assert_eq!(t.check(a, 1_000), Ok(()));
        }
        assert_eq!(t.check(a, 1_000), Err(20), "one token every 20 s at 3 a minute");
        assert_eq!(t.check(b, 1_000), Ok(()), "other addresses have their own bucket");
        assert_eq!(t.check(a, 11_000), Err(10));
        assert_eq!(t.check(a, 21_000), Ok(()));
        assert!(t.check(a, 21_000).is_err());
        assert_eq!(Throttle::new(0).check(a, 0), Ok(()));
    }
}
