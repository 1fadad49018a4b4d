//! The parker: holds client connections that are waiting for bytes (idle keep-alive, or a request
//! head still arriving) without holding a worker, using epoll readiness through `polling`. Readable
//! connections go back on the ready queue; connections past their deadline are closed.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use polling::{Event, Events, Poller};

use crate::server::conn::Conn;

/// A parked connection and the instant it must be closed by.
struct Parked {
    conn: Conn,
    deadline: Instant,
}

pub struct Parker {
    poller: Poller,
    parked: Mutex<HashMap<usize, Parked>>,
    next_key: AtomicUsize,
}

impl Parker {
    pub fn new() -> std::io::Result<Self> {
        Ok(Parker { poller: Poller::new()?, parked: Mutex::new(HashMap::new()), next_key: AtomicUsize::new(0) })
    }

    /// Connections parked right now.
    pub fn len(&self) -> usize {
        self.parked.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parks `conn` until it is readable or `deadline` passes. Its buffer memory is given back if
    /// it holds no bytes.
    pub fn park(&self, mut conn: Conn, deadline: Instant) {
        conn.buf.release();
        // Keys wrap long before usize::MAX, which `polling` reserves for its own wake-ups.
        let key = self.next_key.fetch_add(1, Ordering::Relaxed) % (usize::MAX / 2);
        let mut parked = self.parked.lock();
        // SAFETY: the socket is deleted from the poller before its `Conn` leaves `parked` (see
        // `unpark`, `sweep` and `close_all`), so the poller never refers to a closed descriptor.
        let added = unsafe { self.poller.add(&conn.stream, Event::readable(key)) };
        match added {
            Ok(()) => {
                parked.insert(key, Parked { conn, deadline });
            }
            Err(e) => log::warn!("cannot park connection from {}: {e}", conn.peer),
        }
    }

    /// Wakes `run` so it notices shutdown.
    pub fn wake(&self) {
        let _ = self.poller.notify();
    }

    fn unpark(&self, key: usize, parked: &mut HashMap<usize, Parked>) -> Option<Conn> {
        let entry = parked.remove(&key)?;
        let _ = self.poller.delete(&entry.conn.stream);
        Some(entry.conn)
    }

    /// The parker thread's loop: until `shutdown`, hands readable connections to `ready` and closes
    /// the ones past their deadline, checking deadlines every `tick`.
    pub fn run(&self, ready: &Sender<Conn>, shutdown: &AtomicBool, tick: Duration) {
        let mut events = Events::new();
        let mut woken = Vec::new();
        let mut next_sweep = Instant::now() + tick;
        while !shutdown.load(Ordering::Acquire) {
            events.clear();
            if let Err(e) = self.poller.wait(&mut events, Some(tick)) {
                log::error!("parker: waiting for readiness failed: {e}");
                std::thread::sleep(tick);
            }
            if !events.is_empty() {
                let mut parked = self.parked.lock();
                woken.extend(events.iter().filter_map(|ev| self.unpark(ev.key, &mut parked)));
            }
            for conn in woken.drain(..) {
                // The queue holds max_conn entries, so this never blocks; it fails only at shutdown.
                let _ = ready.send(conn);
            }
            let now = Instant::now();
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + tick;
            }
        }
        self.close_all();
    }

    /// Closes every connection past its deadline. One whose request head was half sent is told 408.
    fn sweep(&self, now: Instant) {
        let mut expired = Vec::new();
        {
            let mut parked = self.parked.lock();
            let keys: Vec<usize> = parked.iter().filter(|(_, p)| p.deadline <= now).map(|(k, _)| *k).collect();
            expired.extend(keys.into_iter().filter_map(|k| self.unpark(k, &mut parked)));
        }
        for mut conn in expired {
            if !conn.buf.is_empty() {
                log::debug!("closing {}: request head not complete within header_timeout", conn.peer);
                let _ = conn
                    .stream
                    .write_all(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
            }
        }
    }

    fn close_all(&self) {
        let mut parked = self.parked.lock();
        let keys: Vec<usize> = parked.keys().copied().collect();
        for key in keys {
            drop(self.unpark(key, &mut parked));
        }
    }
}
