//! One client connection as it moves between the acceptor, the workers and the parker: its socket,
//! the bytes read but not yet used, its deadlines, and its slot under `max_conn`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::http::buffer::ReadBuf;

/// Counts open client connections against `max_conn` and lets the acceptor wait for a free slot.
#[derive(Debug, Default)]
pub struct ConnLimit {
    open: AtomicUsize,
    lock: Mutex<()>,
    freed: Condvar,
}

impl ConnLimit {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes a slot; the returned guard gives it back when the connection is dropped.
    pub fn acquire(self: &Arc<Self>) -> ConnSlot {
        self.open.fetch_add(1, Ordering::Relaxed);
        ConnSlot(Arc::clone(self))
    }

    /// Waits until fewer than `max` connections are open, or `timeout` passes.
    pub fn wait_below(&self, max: usize, timeout: Duration) -> bool {
        if self.open() < max {
            return true;
        }
        let mut guard = self.lock.lock();
        // Re-checked under the lock; the timeout covers a wake-up lost between the check and the wait.
        if self.open() < max {
            return true;
        }
        self.freed.wait_for(&mut guard, timeout);
        self.open() < max
    }
}

/// A slot under `max_conn`, released on drop.
#[derive(Debug)]
pub struct ConnSlot(Arc<ConnLimit>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        let _guard = self.0.lock.lock();
        self.0.freed.notify_one();
    }
}

/// Counts open connections per client IP against `max_conn_per_ip`.
#[derive(Debug, Default)]
pub struct PerIpLimit {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIpLimit {
    /// Takes a slot for `ip` unless it already holds `max` connections.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = self.open.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot(Arc::clone(self), ip))
    }
}

/// One connection's slot under `max_conn_per_ip`, released on drop.
#[derive(Debug)]
pub struct IpSlot(Arc<PerIpLimit>, IpAddr);

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.0.open.lock();
        if let Some(count) = open.get_mut(&self.1) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// A client connection.
#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Bytes received and not yet consumed: a partial head, or the start of pipelined requests.
    pub buf: ReadBuf,
    /// When the request head now being read began to arrive (or the connection was accepted);
    /// `None` while idle between requests.
    pub head_started: Option<Instant>,
    /// When the last response was completed.
    pub idle_since: Instant,
    /// Requests served on this connection.
    pub served: u64,
    nonblocking: bool,
    _slot: ConnSlot,
    _ip_slot: Option<IpSlot>,
}

impl Conn {
    pub fn new(stream: TcpStream, peer: SocketAddr, slot: ConnSlot, ip_slot: Option<IpSlot>, now: Instant) -> Self {
        Conn {
            stream,
            peer,
            buf: ReadBuf::new(),
            head_started: Some(now),
            idle_since: now,
            served: 0,
            nonblocking: false,
            _slot: slot,
            _ip_slot: ip_slot,
        }
    }

    /// Switches between non-blocking reads (waiting for a head, never holding a worker) and blocking
    /// I/O bounded by the socket timeouts (while a request is in flight).
    pub fn set_nonblocking(&mut self, on: bool) -> io::Result<()> {
        if self.nonblocking != on {
            self.stream.set_nonblocking(on)?;
            self.nonblocking = on;
        }
        Ok(())
    }

    /// When this connection must be closed if no complete head has arrived.
    pub fn deadline(&self, header_timeout: Duration, keepalive_timeout: Duration) -> Instant {
        match self.head_started {
            Some(start) => start + header_timeout,
            None => self.idle_since + keepalive_timeout,
        }
    }
}
