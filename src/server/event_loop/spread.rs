//! How accepted connections are spread over the loops: every loop is woken by a new connection and
//! the first to look accepts all that wait, so on its own one loop could take a whole burst (a
//! client opening 64 keep-alive connections at once left one loop with five times the other's
//! work). [`LoadBoard`] counts each loop's open connections; the loop that accepts keeps a
//! connection when it carries no more than the least-loaded loop (plus [`SLACK`]) and otherwise
//! hands it to that loop as an [`Arrival`], through its inbox.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use mio::net::TcpStream;

use crate::server::conn::{ConnSlot, IpSlot};

/// How many connections more than the least-loaded loop a loop may keep rather than hand over:
/// with connections that come and go fast (`Connection: close`) counts move all the time, and a
/// hand-over costs a wake-up of the other loop.
pub const SLACK: usize = 1;

/// The open connections of each loop, counted by whoever assigns one to it and by the loop that
/// closes it.
#[derive(Debug)]
pub struct LoadBoard {
    loads: Box<[AtomicUsize]>,
}

impl LoadBoard {
    pub fn new(loops: usize) -> LoadBoard {
        LoadBoard { loads: (0..loops.max(1)).map(|_| AtomicUsize::new(0)).collect() }
    }

    /// The loop that takes a connection loop `me` just accepted: `me`, unless another loop carries
    /// fewer by more than [`SLACK`], then the least-loaded one. The connection is counted there.
    pub fn assign(&self, me: usize) -> usize {
        let load = |i: usize| self.loads.get(i).map_or(usize::MAX, |l| l.load(Ordering::Relaxed));
        let (least, lowest) = (0..self.loads.len()).map(|i| (i, load(i))).min_by_key(|&(_, l)| l).unwrap_or((me, 0));
        let target = if load(me) <= lowest.saturating_add(SLACK) { me } else { least };
        self.count(target);
        target
    }

    /// Counts a connection on loop `me` without a choice (while shutting down, nothing is handed over).
    pub fn count(&self, me: usize) {
        if let Some(load) = self.loads.get(me) {
            load.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Loop `me` closed (or could not set up) a connection counted on it.
    pub fn left(&self, me: usize) {
        if let Some(load) = self.loads.get(me) {
            // Never below zero, whatever the order of a count and its release.
            let _ = load.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
        }
    }

    /// Each loop's count now (for tests and status).
    pub fn loads(&self) -> Vec<usize> {
        self.loads.iter().map(|l| l.load(Ordering::Relaxed)).collect()
    }
}

/// A connection one loop accepted for another: its socket (not yet registered with any poller),
/// the peer, which listener it came from, and the slots it holds under `max_conn` and
/// `max_conn_per_ip`.
#[derive(Debug)]
pub struct Arrival {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub tls: bool,
    pub conn_slot: ConnSlot,
    pub ip_slot: Option<IpSlot>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_accepted_by_one_loop_is_spread_evenly() {
        let board = LoadBoard::new(2);
        // Loop 0 accepts 64 connections in a row: it keeps one while it carries no more than SLACK
        // over loop 1.
        let mut taken = [0usize, 0];
        for _ in 0..64 {
            taken[board.assign(0)] += 1;
        }
        assert!(taken[0].abs_diff(taken[1]) <= SLACK + 1, "{taken:?}");
        assert_eq!(board.loads(), taken.to_vec());
        // Loop 1 closes ten: the next ten loop 0 accepts go to loop 1.
        for _ in 0..10 {
            board.left(1);
        }
        let next: Vec<usize> = (0..10).map(|_| board.assign(0)).collect();
        assert!(next.iter().filter(|&&t| t == 1).count() >= 10 - SLACK, "{next:?}");
        // A release that comes before its count never wraps.
        let lone = LoadBoard::new(1);
        lone.left(0);
        assert_eq!(lone.assign(0), 0);
        assert_eq!(lone.loads(), vec![1]);
    }
}
