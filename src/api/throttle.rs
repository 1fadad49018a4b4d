//! Per-client-IP throttle on the credential endpoints (`/api/auth`, `/api/users`): `auth_rate`
//! attempts a minute per address, as a bucket of that many tokens refilled evenly over the minute.
//! It stops guessing passwords across many e-mail addresses, which the per-address lock-out alone
//! would not. The buckets are the gateway's [`RateLimiter`] (sharded, bounded), so routes and the API
//! share one token-bucket implementation. Time is passed in, from the one clock.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::RateLimit;
use crate::gateway::ratelimit::RateLimiter;

/// The buckets of every client address; none when the throttle is off.
pub struct Throttle {
    limiter: Option<RateLimiter>,
}

impl Throttle {
    /// `per_minute` requests a minute per address, all of them at once if need be; 0 turns the
    /// throttle off.
    pub fn new(per_minute: u32) -> Throttle {
        let limit = RateLimit { per_second: f64::from(per_minute) / 60.0, burst: per_minute };
        Throttle { limiter: (per_minute > 0).then(|| RateLimiter::new(limit)) }
    }

    /// Takes one token for `ip` at `now`; when there is none, how many whole seconds until there is
    /// (at least 1), for `Retry-After`.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        match &self.limiter {
            None => Ok(()),
            Some(limiter) => limiter.check(ip, now).map_err(whole_seconds),
        }
    }
}

/// `wait` rounded up to whole seconds, at least 1: a client that waits that long finds a token.
fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_empties_and_refills() {
        let t = Throttle::new(3);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for _ in 0..3 {
            assert_eq!(t.check(a, at(1_000)), Ok(()));
        }
        assert_eq!(t.check(a, at(1_000)), Err(20), "one token every 20 s at 3 a minute");
        assert_eq!(t.check(b, at(1_000)), Ok(()), "other addresses have their own bucket");
        assert_eq!(t.check(a, at(11_000)), Err(10));
        assert_eq!(t.check(a, at(21_000)), Ok(()));
        assert!(t.check(a, at(21_000)).is_err());
        assert_eq!(Throttle::new(0).check(a, t0), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up_to_a_whole_second() {
        assert_eq!(whole_seconds(Duration::from_millis(8_571)), 9);
        assert_eq!(whole_seconds(Duration::from_secs(20)), 20);
        assert_eq!(whole_seconds(Duration::from_millis(6)), 1);
    }
}
