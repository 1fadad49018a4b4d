//! One loop's idle keep-alive connections to backends, by backend address. The loop owns it, so
//! taking and returning a connection takes no lock; a connection is used only by the loop that
//! opened it. Idle connections stay registered with the poller under their last user's token (a
//! backend that closes one is found out when it is next used, and the request is sent again on a
//! fresh connection). A TLS
//! connection is kept with its session, so reusing it costs no handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::server::event_loop::transport::Transport;

/// An idle connection older than this is not trusted: many servers close idle connections after
/// 5 s, and one closed while the request travels costs a retry.
pub const MAX_IDLE_AGE: Duration = Duration::from_secs(4);

#[derive(Default)]
pub struct UpstreamPool {
    idle: HashMap<SocketAddr, Vec<(Transport, Instant)>>,
}

impl UpstreamPool {
    /// The most recently used young idle connection to `addr`.
    pub fn take(&mut self, addr: SocketAddr, now: Instant) -> Option<Transport> {
        let list = self.idle.get_mut(&addr)?;
        while let Some((stream, since)) = list.pop() {
            if now.saturating_duration_since(since) < MAX_IDLE_AGE {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps a connection for reuse unless `limit` are already idle for `addr`.
    pub fn put(&mut self, addr: SocketAddr, stream: Transport, now: Instant, limit: usize) {
        let list = self.idle.entry(addr).or_default();
        if list.len() < limit {
            list.push((stream, now));
        }
    }

    /// Closes the connections too old to be used.
    pub fn purge(&mut self, now: Instant) {
        for list in self.idle.values_mut() {
            list.retain(|(_, since)| now.saturating_duration_since(*since) < MAX_IDLE_AGE);
        }
        self.idle.retain(|_, list| !list.is_empty());
    }

    /// Idle connections held.
    pub fn len(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.idle.is_empty()
    }
}
