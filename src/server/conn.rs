//! The accounting every client connection is held to: its slot under `max_conn` and under
//! `max_conn_per_ip`, each given back when the connection is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Counts open client connections against `max_conn` (a loop stops accepting at the limit).
#[derive(Debug, Default)]
pub struct ConnLimit {
    open: AtomicUsize,
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
}

/// A slot under `max_conn`, released on drop.
#[derive(Debug)]
pub struct ConnSlot(Arc<ConnLimit>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
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
