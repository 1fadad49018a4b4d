//! Backend servers and pools: round-robin choice without locks, passive health (a backend that
//! refuses a connection sits out a cool-down), and a bounded set of idle keep-alive connections per
//! backend for reuse.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::BackendAddr;

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
    /// Until when (ticks from the clock epoch) the backend is out of rotation; 0 when up.
    down_until: AtomicU64,
    idle: Mutex<Vec<(TcpStream, Instant)>>,
    idle_limit: usize,
    /// Requests being forwarded to it right now.
    pub in_flight: AtomicUsize,
}

impl Backend {
    pub fn new(addr: &BackendAddr, idle_limit: usize) -> Self {
        Backend {
            name: addr.name.clone(),
            addr: addr.addr,
            down_until: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
            idle_limit,
            in_flight: AtomicUsize::new(0),
        }
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

    pub fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }
}

/// A set of interchangeable backends, chosen round-robin.
#[derive(Debug)]
pub struct Pool {
    backends: Vec<Arc<Backend>>,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(addrs: &[BackendAddr], idle_limit: usize) -> Self {
        Pool {
            backends: addrs.iter().map(|a| Arc::new(Backend::new(a, idle_limit))).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// The backends to try for one request, in order: every backend that is up, starting with the
    /// one whose turn it is. Each request advances the turn by one.
    pub fn candidates(&self, now: Instant) -> impl Iterator<Item = &Arc<Backend>> {
        let n = self.backends.len();
        let start = if n == 0 { 0 } else { self.next.fetch_add(1, Ordering::Relaxed) % n };
        (0..n).map(move |i| &self.backends[(start + i) % n]).filter(move |b| b.is_up(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u16) -> Pool {
        let addrs: Vec<BackendAddr> = (1..=n)
            .map(|i| BackendAddr { name: format!("b{i}"), addr: SocketAddr::from(([127, 0, 0, 1], i)) })
            .collect();
        Pool::new(&addrs, 4)
    }

    fn first(pool: &Pool, now: Instant) -> Option<String> {
        pool.candidates(now).next().map(|b| b.name.clone())
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
        assert_eq!(pool.candidates(later).count(), 3);
        for b in pool.backends() {
            b.mark_down(now, Duration::from_secs(10));
        }
        assert_eq!(pool.candidates(now).count(), 0);
    }
}
