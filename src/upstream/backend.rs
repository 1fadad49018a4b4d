//! Backend servers and pools: round-robin choice without locks, passive health (a backend that
//! refuses a connection sits out a cool-down), active health (a flag the health checker sets after
//! consecutive results, read with one atomic load), and a bounded set of idle keep-alive connections
//! per backend for reuse. Time is passed in: cool-downs are measured on the caller's
//! [`crate::clock::Clock`] (tests advance it), idle connections' ages in the socket's real time.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::{BackendAddr, Balance};
use crate::upstream::policy::EndpointPolicy;

/// Idle backend connections older than this are not reused: most servers close keep-alive
/// connections after 5 to 60 seconds of silence, and a request sent on a closed one would fail.
const MAX_IDLE_AGE: Duration = Duration::from_secs(4);

/// The reference point that lets instants live in an `AtomicU64`.
fn clock_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| Instant::now() - Duration::from_secs(1))
}

fn to_ticks(t: Instant) -> u64 {
    t.saturating_duration_since(clock_epoch()).as_nanos() as u64
}

/// One upstream server.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    /// Written `https://`: the host name (or address) TLS asks for and checks the certificate against.
    pub tls_host: Option<String>,
    /// Until when (ticks from the clock epoch) the backend is out of rotation; 0 when up.
    down_until: AtomicU64,
    idle: Mutex<Vec<(TcpStream, Instant)>>,
    idle_limit: usize,
    /// Requests being forwarded to it right now.
    pub in_flight: AtomicUsize,
    /// Active health: false once the checker saw enough failures in a row; true until then.
    healthy: AtomicBool,
    /// Consecutive check results against the current state (failures while healthy, passes while not).
    streak: AtomicU32,
    /// When the last active check finished (ms since the Unix epoch); 0 = never checked.
    last_check_ms: AtomicU64,
    /// For an app endpoint: the rule its address is checked against before every connection.
    guard: Option<Arc<EndpointPolicy>>,
}

impl Backend {
    pub fn new(addr: &BackendAddr, idle_limit: usize) -> Self {
        Backend {
            name: addr.name.clone(),
            addr: addr.addr,
            tls_host: addr.tls.then(|| addr.host().to_string()),
            down_until: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
            idle_limit,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            last_check_ms: AtomicU64::new(0),
            guard: None,
        }
    }

    /// A backend whose address `policy` checks before each connection (an app endpoint's).
    pub fn guarded(addr: &BackendAddr, idle_limit: usize, policy: Arc<EndpointPolicy>) -> Self {
        Backend { guard: Some(policy), ..Backend::new(addr, idle_limit) }
    }

    /// Whether the endpoint policy (if any) still lets pibl connect to this backend.
    pub fn permitted(&self) -> io::Result<()> {
        match &self.guard {
            Some(policy) => policy
                .check(self.addr)
                .map_err(|refusal| io::Error::new(io::ErrorKind::PermissionDenied, refusal.to_string())),
            None => Ok(()),
        }
    }

    /// Whether active health checks keep it in rotation (always true when none run).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// When the last active check finished, in ms since the Unix epoch.
    pub fn last_check_ms(&self) -> Option<u64> {
        Some(self.last_check_ms.load(Ordering::Relaxed)).filter(|&ms| ms != 0)
    }

    /// Records one active check (one writer: the health checker). The state flips after `fall`
    /// failures in a row while healthy, or `rise` passes in a row while unhealthy; returns the new
    /// state when it flipped.
    pub fn record_check(&self, passed: bool, now_ms: u64, fall: u32, rise: u32) -> Option<bool> {
        self.last_check_ms.store(now_ms.max(1), Ordering::Relaxed);
        let healthy = self.is_healthy();
        if passed == healthy {
            self.streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.streak.load(Ordering::Relaxed) + 1;
        if streak >= if healthy { fall } else { rise } {
            self.streak.store(0, Ordering::Relaxed);
            self.healthy.store(passed, Ordering::Relaxed);
            return Some(passed);
        }
        self.streak.store(streak, Ordering::Relaxed);
        None
    }

    /// In rotation: not cooling down after a refused connection, and not failed by health checks.
    pub fn is_usable(&self, now: Instant) -> bool {
        self.is_up(now) && self.is_healthy()
    }

    pub fn is_up(&self, now: Instant) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        until == 0 || to_ticks(now) >= until
    }

    /// Takes the backend out of rotation until `now + cooldown`, and drops its idle connections.
    pub fn mark_down(&self, now: Instant, cooldown: Duration) {
        self.down_until.store(to_ticks(now + cooldown).max(1), Ordering::Relaxed);
        self.idle.lock().clear();
    }

    /// Puts the backend back in rotation (it answered).
    pub fn mark_up(&self) {
        if self.down_until.load(Ordering::Relaxed) != 0 {
            self.down_until.store(0, Ordering::Relaxed);
        }
    }

    /// Opens a new connection with the given connect and I/O timeouts.
    pub fn connect(&self, connect_timeout: Duration, io_timeout: Duration) -> io::Result<TcpStream> {
        self.permitted()?;
        let stream = TcpStream::connect_timeout(&self.addr, connect_timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(io_timeout))?;
        stream.set_write_timeout(Some(io_timeout))?;
        Ok(stream)
    }

    /// The most recently used idle connection that is still young enough to trust.
    pub fn take_idle(&self, now: Instant) -> Option<TcpStream> {
        let mut idle = self.idle.lock();
        while let Some((stream, since)) = idle.pop() {
            if now.saturating_duration_since(since) < MAX_IDLE_AGE {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps a connection for reuse, unless the pool is full.
    pub fn put_idle(&self, stream: TcpStream, now: Instant) {
        let mut idle = self.idle.lock();
        if idle.len() < self.idle_limit {
            idle.push((stream, now));
        }
    }
}

/// Counts one request as in flight on a backend until dropped.
pub struct InFlight<'a>(&'a Backend);

impl<'a> InFlight<'a> {
    pub fn enter(backend: &'a Backend) -> Self {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(backend)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A set of interchangeable backends and the policy that chooses among them.
#[derive(Debug)]
pub struct Pool {
    backends: Vec<Arc<Backend>>,
    next: AtomicUsize,
    balance: Balance,
}

impl Pool {
    /// A round-robin pool.
    pub fn new(addrs: &[BackendAddr], idle_limit: usize) -> Self {
        Pool::with_balance(addrs, idle_limit, Balance::RoundRobin)
    }

    pub fn with_balance(addrs: &[BackendAddr], idle_limit: usize, balance: Balance) -> Self {
        Pool {
            backends: addrs.iter().map(|a| Arc::new(Backend::new(a, idle_limit))).collect(),
            next: AtomicUsize::new(0),
            balance,
        }
    }

    /// A pool over backends that already exist (their health and idle connections carry over).
    pub fn from_backends(backends: Vec<Arc<Backend>>) -> Self {
        Pool { backends, next: AtomicUsize::new(0), balance: Balance::RoundRobin }
    }

    /// Takes over `previous`'s place in the rotation: a rebuild of the same app (another
    /// instance's change, or this one's own notified back) then goes on where it was instead of
    /// starting every app at its first endpoint again.
    pub fn continuing(self, previous: Option<&Pool>) -> Self {
        if let Some(previous) = previous {
            self.next.store(previous.next.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// The backends to try for one request, in order: every backend that is up and healthy, the policy's choice
    /// first, then the others round-robin as fallbacks. No lock is taken.
    pub fn candidates(&self, now: Instant, client: IpAddr) -> Candidates<'_> {
        let n = self.backends.len();
        let start = if n == 0 { 0 } else { self.next.fetch_add(1, Ordering::Relaxed) % n };
        let up = |i: usize| self.backends[i].is_usable(now);
        let load = |i: usize| self.backends[i].in_flight.load(Ordering::Relaxed);
        let first = match self.balance {
            _ if n == 0 => None,
            Balance::RoundRobin => None,
            Balance::LeastConn => (0..n).map(|k| (start + k) % n).filter(|&i| up(i)).min_by_key(|&i| load(i)),
            Balance::RandomTwo => {
                let (a, b) = (random_below(n), random_below(n));
                [a, b].into_iter().filter(|&i| up(i)).min_by_key(|&i| load(i))
            }
            Balance::IpHash => {
                // A client keeps its server, and moves to the next one only while its own is down.
                let home = (hash_ip(client) % n as u64) as usize;
                (0..n).map(|k| (home + k) % n).find(|&i| up(i))
            }
        };
        Candidates { pool: self, now, first, chosen: None, start, step: 0 }
    }
}

/// The order in which one request tries a pool's backends.
pub struct Candidates<'a> {
    pool: &'a Pool,
    now: Instant,
    /// The policy's choice, tried first.
    first: Option<usize>,
    /// The choice once tried, skipped when the round-robin turn reaches it.
    chosen: Option<usize>,
    start: usize,
    step: usize,
}

impl<'a> Iterator for Candidates<'a> {
    type Item = &'a Arc<Backend>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(first) = self.first.take() {
            self.chosen = Some(first);
            return Some(&self.pool.backends[first]);
        }
        let n = self.pool.backends.len();
        while self.step < n {
            let i = (self.start + self.step) % n;
            self.step += 1;
            let backend = &self.pool.backends[i];
            if Some(i) != self.chosen && backend.is_usable(self.now) {
                return Some(backend);
            }
        }
        None
    }
}

fn hash_ip(ip: IpAddr) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    // A fixed-key hasher: the same client maps to the same server in every worker and after a restart.
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(ip)
}

/// A fast, non-cryptographic random index below `n`, per thread.
fn random_below(n: usize) -> usize {
    use std::cell::Cell;
    use std::hash::BuildHasher;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().hash_one(0u64) | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x % n as u64) as usize
    })
}

/// Errors of `socket()`/`connect()` that mean this process or machine is out of a resource:
/// EMFILE, ENFILE (descriptors), ENOBUFS, ENOMEM (socket memory) on Linux.
pub fn is_local_exhaustion(e: &std::io::Error) -> bool {
    const ENOMEM: i32 = 12;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const ENOBUFS: i32 = 105;
    matches!(e.raw_os_error(), Some(ENOMEM | ENFILE | EMFILE | ENOBUFS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u16) -> Pool {
        let addrs: Vec<BackendAddr> =
            (1..=n).map(|i| BackendAddr::plain(format!("b{i}"), SocketAddr::from(([127, 0, 0, 1], i)))).collect();
        Pool::new(&addrs, 4)
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn first(pool: &Pool, now: Instant) -> Option<String> {
        pool.candidates(now, CLIENT).next().map(|b| b.name.clone())
    }

    #[test]
    fn round_robin_turns() {
        let pool = pool(3);
        let now = Instant::now();
        let order: Vec<_> = (0..6).filter_map(|_| first(&pool, now)).collect();
        assert_eq!(order, ["b1", "b2", "b3", "b1", "b2", "b3"]);
    }

    #[test]
    fn down_backends_are_skipped_until_cooldown_ends() {
        let pool = pool(3);
        let now = Instant::now();
        pool.backends()[1].mark_down(now, Duration::from_secs(10));
        let order: Vec<_> = (0..4).filter_map(|_| first(&pool, now)).collect();
        assert_eq!(order, ["b1", "b3", "b3", "b1"]);
        let later = now + Duration::from_secs(11);
        assert_eq!(pool.candidates(later, CLIENT).count(), 3);
        for b in pool.backends() {
            b.mark_down(now, Duration::from_secs(10));
        }
        assert_eq!(pool.candidates(now, CLIENT).count(), 0);
    }

    fn policy_pool(balance: Balance) -> Pool {
        let addrs: Vec<BackendAddr> =
            (1..=4).map(|i| BackendAddr::plain(format!("b{i}"), SocketAddr::from(([127, 0, 0, 1], i)))).collect();
        Pool::with_balance(&addrs, 4, balance)
    }

    #[test]
    fn every_policy_lists_each_up_backend_once() {
        let now = Instant::now();
        for balance in [Balance::RoundRobin, Balance::LeastConn, Balance::RandomTwo, Balance::IpHash] {
            let pool = policy_pool(balance);
            pool.backends()[2].mark_down(now, Duration::from_secs(5));
            for _ in 0..20 {
                let mut names: Vec<String> = pool.candidates(now, CLIENT).map(|b| b.name.clone()).collect();
                names.sort();
                assert_eq!(names, ["b1", "b2", "b4"], "{balance:?}");
            }
        }
    }

    #[test]
    fn least_conn_prefers_the_idlest_and_ip_hash_is_sticky() {
        let now = Instant::now();
        let pool = policy_pool(Balance::LeastConn);
        for (i, load) in [3, 1, 0, 2].into_iter().enumerate() {
            pool.backends()[i].in_flight.store(load, Ordering::Relaxed);
        }
        assert!((0..8).all(|_| first(&pool, now).as_deref() == Some("b3")));

        let pool = policy_pool(Balance::IpHash);
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let home = pool.candidates(now, a).next().unwrap().name.clone();
        assert!((0..8).all(|_| pool.candidates(now, a).next().unwrap().name == home));
        let spread: std::collections::HashSet<String> =
            (0..64u8).map(|i| pool.candidates(now, IpAddr::from([10, 0, 0, i])).next().unwrap().name.clone()).collect();
        assert!(spread.len() >= 3, "clients spread over servers: {spread:?}");
    }

    #[test]
    fn active_health_needs_consecutive_results_to_flip() {
        let pool = pool(2);
        let b = &pool.backends()[0];
        assert!(b.is_healthy() && b.last_check_ms().is_none());
        assert_eq!(b.record_check(false, 10, 2, 2), None);
        assert_eq!(b.record_check(true, 11, 2, 2), None, "a pass resets the failure streak");
        assert_eq!(b.record_check(false, 12, 2, 2), None);
        assert_eq!(b.record_check(false, 13, 2, 2), Some(false));
        assert_eq!(b.last_check_ms(), Some(13));
        let now = Instant::now();
        assert_eq!(pool.candidates(now, CLIENT).map(|b| b.name.clone()).collect::<Vec<_>>(), ["b2"]);
        assert_eq!(b.record_check(true, 14, 2, 2), None);
        assert_eq!(b.record_check(true, 15, 2, 2), Some(true));
        assert_eq!(pool.candidates(now, CLIENT).count(), 2);
    }
}
