//! One loop's idle keep-alive connections to backends, by backend address, and which session holds
//! each backend socket of the loop. The loop owns both, so taking and returning a connection takes
//! no lock; a connection is used only by the loop that opened it. A TLS connection is kept with its
//! session, so reusing it costs no handshake.
//!
//! A backend socket is registered with the poller once, under a token made of its descriptor (see
//! [`backend_token`](crate::server::event_loop::tokens::backend_token)), and stays registered until it
//! is closed: moving it from a session to the pool and on to the next session changes only the
//! holder recorded here, with no system call. While it sits idle, an event saying it became
//! readable or closed marks it, and only a marked connection is peeked at before reuse (the rest
//! go out at once; a backend that closed one in the instant between the poll and the request costs
//! a retry on a fresh connection, as it would after a peek).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::server::event_loop::tokens::descriptor_of;
use crate::server::event_loop::transport::{Input, Transport};

/// An idle connection older than this is not trusted: many servers close idle connections after
/// 5 s, and one closed while the request travels costs a retry.
pub const MAX_IDLE_AGE: Duration = Duration::from_secs(4);

#[derive(Default)]
pub struct UpstreamPool {
    idle: HashMap<SocketAddr, Vec<(Transport, Instant)>>,
    /// By descriptor. An entry outlives its socket until the descriptor is used again; no event
    /// comes for a closed socket, and a new one sets its entry when it is registered.
    sockets: Vec<Socket>,
}

/// What the loop knows of one backend socket.
#[derive(Clone, Copy)]
struct Socket {
    holder: Holder,
    /// What the loop knows of its input (see
    /// [`HintedRead`](crate::server::event_loop::transport::HintedRead)).
    input: Input,
}

/// Who has a backend socket.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// The session in this slot.
    Session(usize),
    /// The pool, with nothing reported on it since it was put there.
    Idle,
    /// The pool, after the poller reported input or a close on it.
    Stirred,
}

impl UpstreamPool {
    /// Records that the session in `slot` uses the backend socket `stream`, just registered.
    pub fn hold_new(&mut self, stream: &impl AsRawFd, slot: usize) {
        *self.socket(descriptor_of(stream)) = Socket { holder: Holder::Session(slot), input: Input::Unknown };
    }

    fn socket(&mut self, fd: usize) -> &mut Socket {
        if self.sockets.len() <= fd {
            self.sockets.resize(fd + 1, Socket { holder: Holder::Idle, input: Input::Unknown });
        }
        &mut self.sockets[fd]
    }

    /// What the loop knows of backend socket `stream`'s input, for a
    /// [`HintedRead`](crate::server::event_loop::transport::HintedRead).
    pub fn input(&mut self, stream: &impl AsRawFd) -> &mut Input {
        &mut self.socket(descriptor_of(stream)).input
    }

    /// The session to run for an event on backend descriptor `fd` (`readable`: the poller reported
    /// input; `closed`: the peer's close or an error). An idle connection has no session: input or
    /// a close on it marks it to be checked before reuse.
    pub fn on_event(&mut self, fd: usize, readable: bool, closed: bool) -> Option<usize> {
        let socket = self.sockets.get_mut(fd)?;
        socket.input.on_event(readable, closed);
        let stirred = readable || closed;
        match socket.holder {
            Holder::Session(slot) => Some(slot),
            Holder::Idle if stirred => {
                socket.holder = Holder::Stirred;
                None
            }
            Holder::Idle | Holder::Stirred => None,
        }
    }

    /// The most recently used young idle connection to `addr` that has nothing to say, now held by
    /// the session in `slot`.
    pub fn take(&mut self, addr: SocketAddr, now: Instant, slot: usize) -> Option<Transport> {
        let list = self.idle.get_mut(&addr)?;
        while let Some((mut stream, since)) = list.pop() {
            if now.saturating_duration_since(since) >= MAX_IDLE_AGE {
                continue;
            }
            let fd = descriptor_of(stream.sock());
            // Bytes past the end of the response it carried, or a close, would be read as the next
            // request's answer: a connection the poller reported anything on is looked at first.
            let stirred = self.sockets.get(fd).is_some_and(|s| s.holder == Holder::Stirred);
            let quiet = match stirred {
                true => stream.is_quiet(),
                false => stream.holds_no_input(),
            };
            if quiet {
                self.socket(fd).holder = Holder::Session(slot);
                return Some(stream);
            }
        }
        None
    }

    /// Keeps a connection for reuse unless `limit` are already idle for `addr` (then it closes).
    pub fn put(&mut self, addr: SocketAddr, stream: Transport, now: Instant, limit: usize) {
        let list = self.idle.entry(addr).or_default();
        if list.len() < limit {
            let fd = descriptor_of(stream.sock());
            list.push((stream, now));
            self.socket(fd).holder = Holder::Idle;
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
