//! The data plane's event loops: `threads` loops, each a thread with its own `mio`
//! poller that owns every socket it touches — the client connections it accepted and the backend
//! connections serving them — so a request is read, answered or forwarded, and relayed on the
//! thread that accepted it, with no queue and no other thread on its way.
//!
//! ```text
//! listener, TLS listener (registered in every loop; whichever wakes first accepts, and hands a
//!    │                     connection to the least-loaded loop when it carries more: `spread`)
//!    ▼
//! loop i: poll ─► sessions (slab of state machines) ⇄ backend sockets ─► upstream pool (per loop)
//!           └──── timers (one heap: header, keep-alive, client, connect, backend, tunnel, linger)
//! ```
//!
//! Nothing here blocks: sockets are non-blocking, locks are only taken for counters, and the SQLite
//! writer, the cache refresher and the health checker are other threads. A panic while serving
//! one session is caught: that connection gets a 500 if nothing was answered yet and is closed, and
//! the loop goes on.
//!
//! A connection from the TLS listener (`tls_port`) is the same session over a
//! [`transport::Transport`] that runs rustls: its handshake happens as the session reads its first
//! request head, within `header_timeout`.

pub mod answers;
pub mod auth;
pub mod client;
pub mod env;
pub mod exchange;
pub mod session;
pub mod spread;
pub mod timers;
pub mod tokens;
pub mod transport;
pub mod tunnel;
pub mod upstream_pool;

use std::io::{self, Write};
use std::net::TcpListener as StdListener;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Waker};
use rustls::ServerConfig;

use crate::http::buffer::SpareBuffers;
use crate::observe::logging::Throttled;
use crate::observe::metrics::{unix_secs, DEFAULT_ROUTE};
use crate::server::shared::Shared;
use client::Client;
use env::{Env, Inbox};
use session::{Session, Verdict};
use spread::{Arrival, LoadBoard};
use timers::{Owner, Timers};
use tokens::{backend_of, client_token, slot_of, LISTENER, TLS_LISTENER, WAKER};
use transport::Transport;
use upstream_pool::UpstreamPool;

/// Events taken from the poller per wake-up.
const EVENTS: usize = 1024;
/// How often a loop that stopped accepting at `max_conn` looks for a free slot (a slot freed by
/// another loop wakes nobody here).
const ACCEPT_RETRY: Duration = Duration::from_millis(20);
/// How often idle pooled backend connections are aged out.
const POOL_PURGE: Duration = Duration::from_secs(1);
/// At most one "accept failed" line per loop in this time while the failure lasts.
pub const ACCEPT_FAILURE_LOG_EVERY: Duration = Duration::from_secs(5);

/// The TLS listener (`tls_port`) and the rustls configuration its handshakes use.
pub struct TlsListener {
    pub listener: StdListener,
    pub config: Arc<ServerConfig>,
}
/// Readies a listener for the loops: non-blocking, and `TCP_NODELAY`, which every connection it
/// accepts inherits (Linux copies it from the listener), so no connection costs a `setsockopt` of
/// its own: answers go out as they are written, never held back waiting for an acknowledgement.
fn prepare_listener(listener: &StdListener) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    socket2::SockRef::from(listener).set_tcp_nodelay(true)
}

/// The running loops of one server.
pub struct Loops {
    wakers: Vec<Arc<Waker>>,
    handles: Vec<JoinHandle<()>>,
    done: Receiver<()>,
}

impl Loops {
    /// Starts `shared.config.thread_count()` loops, each accepting on its own handle of `listener` (and
    /// of the TLS listener, when there is one).
    pub fn start(listener: StdListener, tls: Option<TlsListener>, shared: &Arc<Shared>) -> io::Result<Loops> {
        prepare_listener(&listener)?;
        if let Some(tls) = &tls {
            prepare_listener(&tls.listener)?;
        }
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        let count = shared.config.thread_count().max(1);
        if count > 4 * cores {
            // A file written for the threaded engine, since removed (threads = 64), still starts, but says so.
            log::warn!(
                "threads = {count} starts {count} event loops on {cores} core(s); each serves any number of \
                 connections, so one per core is enough (threads = auto)"
            );
        }
        let (done_tx, done) = crossbeam_channel::unbounded();
        let board = Arc::new(LoadBoard::new(count));
        let _ = shared.loop_loads.set(Arc::clone(&board));
        let mut loops = Loops { wakers: Vec::new(), handles: Vec::new(), done };
        // Every loop's poller and inbox first: each loop may hand connections to any other.
        let mut polls = Vec::with_capacity(count);
        for _ in 0..count {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            loops.wakers.push(Arc::clone(&waker));
            polls.push((poll, Arc::new(Inbox::new(waker))));
        }
        let inboxes: Arc<[Arc<Inbox>]> = polls.iter().map(|(_, inbox)| Arc::clone(inbox)).collect();
        for (index, (poll, inbox)) in polls.into_iter().enumerate() {
            let mut own = TcpListener::from_std(listener.try_clone()?);
            poll.registry().register(&mut own, LISTENER, Interest::READABLE)?;
            let own_tls = match &tls {
                Some(tls) => {
                    let mut own = TcpListener::from_std(tls.listener.try_clone()?);
                    poll.registry().register(&mut own, TLS_LISTENER, Interest::READABLE)?;
                    Some((own, Arc::clone(&tls.config)))
                }
                None => None,
            };
            let (shared, done_tx) = (Arc::clone(shared), done_tx.clone());
            let peers = Peers { index, inboxes: Arc::clone(&inboxes), board: Arc::clone(&board) };
            let handle = thread::Builder::new().name(format!("pibl-loop-{index}")).spawn(move || {
                EventLoop::new(poll, own, own_tls, shared, inbox, peers).run();
                let _ = done_tx.send(());
            })?;
            loops.handles.push(handle);
        }
        // Every loop holds its own handles; once they drop them at shutdown the ports are closed.
        drop((listener, tls));
        Ok(loops)
    }

    /// Interrupts every loop's wait (to see the shutdown flag).
    pub fn wake_all(&self) {
        for waker in &self.wakers {
            let _ = waker.wake();
        }
    }

    /// Waits until every loop has finished or `deadline` passes; joins them when all finished.
    pub fn finish(mut self, deadline: Instant) -> bool {
        let mut finished = 0;
        while finished < self.handles.len() {
            match self.done.recv_deadline(deadline) {
                Ok(()) => finished += 1,
                Err(_) => break,
            }
        }
        let clean = finished == self.handles.len();
        if clean {
            for handle in self.handles.drain(..) {
                let _ = handle.join();
            }
        } else {
            log::warn!(
                "shutdown: {} loop(s) still serving requests after the grace period",
                self.handles.len() - finished
            );
        }
        clean
    }
}

/// A session in its slot, with the slot's generation (so timers of a closed session never fire on
/// the next one).
struct Entry {
    session: Session,
    generation: u64,
    parked: bool,
}

/// A loop's place among the others: its index, every loop's inbox and the shared load counts.
struct Peers {
    index: usize,
    inboxes: Arc<[Arc<Inbox>]>,
    board: Arc<LoadBoard>,
}

struct EventLoop {
    poll: Poll,
    listener: Option<TcpListener>,
    /// The TLS listener and its configuration.
    tls: Option<(TcpListener, Arc<ServerConfig>)>,
    /// What every answer over plain HTTP carries (nothing; over TLS: `Shared::tls_answer_fields`).
    plain_fields: Arc<Vec<u8>>,
    shared: Arc<Shared>,
    sessions: Vec<Option<Entry>>,
    free: Vec<usize>,
    open: usize,
    generation: u64,
    timers: Timers,
    pool: UpstreamPool,
    accept_paused: bool,
    last_purge: Instant,
    /// When the loop last woke (or ran its timers): read once per wake-up, not for every session
    /// it serves then, as nginx caches its time per turn. Deadlines and idle times need no better.
    now: Instant,
    inbox: Arc<Inbox>,
    /// Read buffers given back by this loop's sessions, lent to the next reads.
    spare: SpareBuffers,
    /// This loop's place among the others, for spreading accepted connections.
    peers: Peers,
    /// Sessions whose turn ended while they were still moving ([`Verdict::Yield`]): driven again
    /// after the next poll, which then does not wait.
    again: Vec<Owner>,
    /// The slots one poll found ready, each served once however many of its sockets had events.
    ready: Vec<usize>,
    /// "accept failed" once per interval while it lasts (it is retried every tick).
    accept_failures: Throttled,
}

impl EventLoop {
    fn new(
        poll: Poll,
        listener: TcpListener,
        tls: Option<(TcpListener, Arc<ServerConfig>)>,
        shared: Arc<Shared>,
        inbox: Arc<Inbox>,
        peers: Peers,
    ) -> EventLoop {
        EventLoop {
            poll,
            listener: Some(listener),
            tls,
            plain_fields: Arc::new(Vec::new()),
            shared,
            sessions: Vec::new(),
            free: Vec::new(),
            open: 0,
            generation: 0,
            timers: Timers::default(),
            pool: UpstreamPool::default(),
            accept_paused: false,
            last_purge: Instant::now(),
            now: Instant::now(),
            inbox,
            spare: SpareBuffers::default(),
            peers,
            again: Vec::new(),
            ready: Vec::new(),
            accept_failures: Throttled::new(ACCEPT_FAILURE_LOG_EVERY),
        }
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            if self.shared.is_shutting_down() {
                self.begin_shutdown();
                if self.open == 0 {
                    return;
                }
            }
            let now = Instant::now();
            let mut wait = self.timers.wait(now).unwrap_or(POOL_PURGE).min(POOL_PURGE);
            if self.accept_paused {
                wait = wait.min(ACCEPT_RETRY);
            }
            if self.listener.is_none() {
                wait = wait.min(Duration::from_millis(100));
            }
            if !self.again.is_empty() {
                wait = Duration::ZERO;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("event loop: poll failed: {e}");
                    return;
                }
                continue;
            }
            self.now = Instant::now();
            // A session is driven until it waits, so one turn per poll serves both of its sockets;
            // driving it again for its second event would only repeat reads that find nothing.
            let mut ready = std::mem::take(&mut self.ready);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(false),
                    TLS_LISTENER => self.accept(true),
                    WAKER => {
                        for arrival in self.inbox.take_arrivals() {
                            self.admit(arrival);
                        }
                        let woken = self.inbox.take();
                        ready.extend(woken.into_iter().filter(|&owner| self.owns(owner)).map(|owner| owner.slot));
                    }
                    token => {
                        let closed = event.is_read_closed() || event.is_error();
                        match backend_of(token) {
                            None => {
                                let slot = slot_of(token);
                                if let Some(Some(entry)) = self.sessions.get_mut(slot) {
                                    entry.session.client.input.on_event(event.is_readable(), closed);
                                }
                                ready.push(slot);
                            }
                            // An idle pooled connection has no session to run; input or a close on
                            // it is remembered for when it is next taken.
                            Some(fd) => ready.extend(self.pool.on_event(fd, event.is_readable(), closed)),
                        }
                    }
                }
            }
            ready.sort_unstable();
            ready.dedup();
            for &slot in &ready {
                self.serve(slot, None);
            }
            ready.clear();
            self.ready = ready;
            if self.accept_paused {
                self.accept_both();
            }
            for owner in std::mem::take(&mut self.again) {
                if self.owns(owner) {
                    self.serve(owner.slot, None);
                }
            }
            let now = Instant::now();
            self.now = now;
            while let Some((at, owner)) = self.timers.pop_due(now) {
                self.serve(owner.slot, Some((at, owner.generation)));
            }
            if now.duration_since(self.last_purge) >= POOL_PURGE {
                self.pool.purge(now);
                self.last_purge = now;
            }
        }
    }

    /// Stops accepting (the loop's listener handle is closed) and closes parked connections;
    /// requests in flight finish with `Connection: close`.
    fn begin_shutdown(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
            if let Some((mut tls, _)) = self.tls.take() {
                let _ = self.poll.registry().deregister(&mut tls);
            }
            for slot in 0..self.sessions.len() {
                if self.sessions[slot].as_ref().is_some_and(|e| e.session.is_parked()) {
                    self.close(slot);
                }
            }
        }
    }

    fn accept_both(&mut self) {
        self.accept(false);
        if self.tls.is_some() {
            self.accept(true);
        }
    }

    /// Accepts what is waiting on the plain listener, or on the TLS one (`tls`).
    fn accept(&mut self, tls: bool) {
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        loop {
            let listener = match tls {
                false => self.listener.as_ref(),
                true => self.tls.as_ref().map(|(listener, _)| listener),
            };
            let Some(listener) = listener else { return };
            if self.shared.conns.open() >= config.max_conn {
                self.accept_paused = true;
                return;
            }
            let (mut stream, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_paused = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors or a transient network error: try again on the next tick.
                    self.accept_failures.warn(Instant::now(), format_args!("accept failed: {e}"));
                    self.accept_paused = true;
                    return;
                }
            };
            let ip_slot = match config.max_conn_per_ip {
                0 => None,
                max => match self.shared.per_ip.acquire(peer.ip(), max) {
                    Some(slot) => Some(slot),
                    None => {
                        log::debug!("refusing {peer}: max_conn_per_ip ({max}) reached");
                        // A TLS client could not read a plain answer: it is just closed.
                        if !tls {
                            let _ = stream.write(
                                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                            );
                        }
                        continue;
                    }
                },
            };
            let arrival = Arrival { stream, peer, tls, conn_slot: self.shared.conns.acquire(), ip_slot };
            let Peers { index, inboxes, board } = &self.peers;
            let target = match self.shared.is_shutting_down() {
                false => board.assign(*index),
                true => {
                    board.count(*index);
                    *index
                }
            };
            match inboxes.get(target).filter(|_| target != *index) {
                Some(inbox) => inbox.hand_over(arrival),
                None => self.admit(arrival),
            }
        }
    }

    /// Starts serving a connection this loop accepted, or another loop handed over (already
    /// counted on this loop's [`LoadBoard`] entry).
    fn admit(&mut self, arrival: Arrival) {
        let Arrival { mut stream, peer, tls, conn_slot, ip_slot } = arrival;
        let slot = self.free.pop().unwrap_or_else(|| {
            self.sessions.push(None);
            self.sessions.len() - 1
        });
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut stream, client_token(slot), interest) {
            log::warn!("dropping connection from {peer}: {e}");
            self.free.push(slot);
            self.peers.board.left(self.peers.index);
            return;
        }
        let Some(client) = self.client(stream, peer, tls) else {
            self.free.push(slot);
            self.peers.board.left(self.peers.index);
            return;
        };
        let now = self.now;
        self.generation += 1;
        let owner = Owner { slot, generation: self.generation };
        let session = Session::new(client, owner, conn_slot, ip_slot, now);
        self.sessions[slot] = Some(Entry { session, generation: self.generation, parked: false });
        self.open += 1;
        // The registration reports the socket's readiness; until then the header timeout runs.
        self.settle(slot);
    }

    /// The client side of a new session: plain, or TLS with a new rustls connection.
    fn client(&self, stream: TcpStream, peer: std::net::SocketAddr, tls: bool) -> Option<Client> {
        let now = self.now;
        if !tls {
            return Some(Client::new(Transport::Plain(stream), peer, now, Arc::clone(&self.plain_fields)));
        }
        let Some((_, config)) = self.tls.as_ref() else {
            // Handed over by another loop just as this one began shutting down (and dropped its TLS
            // listener with its configuration): closed, never spoken to in plain text.
            log::debug!("dropping TLS connection from {peer}: the loop is shutting down");
            return None;
        };
        let limit = transport::buffer_limit(self.shared.config.buffer_size);
        match Transport::tls_server(stream, Arc::clone(config), limit) {
            Ok(transport) => Some(Client::new(transport, peer, now, self.shared.tls_answer_fields.load_full())),
            Err(e) => {
                log::warn!("dropping TLS connection from {peer}: {e}");
                None
            }
        }
    }

    /// Runs a session after an event (`timer` is `None`) or when one of its timer entries is due.
    fn serve(&mut self, slot: usize, timer: Option<(Instant, u64)>) {
        let EventLoop { poll, shared, sessions, pool, inbox, spare, .. } = self;
        let Some(Some(entry)) = sessions.get_mut(slot) else { return };
        let now = self.now;
        let mut env = Env { shared, registry: poll.registry(), pool, spare, inbox, now };
        if let Some((at, generation)) = timer {
            // Only the entry the session armed counts; an earlier one it replaced is dropped.
            if generation != entry.generation || entry.session.armed != Some(at) {
                return;
            }
            entry.session.armed = None;
            if now < entry.session.deadline(&env) {
                self.settle(slot);
                return;
            }
        }
        let session = &mut entry.session;
        let served = panic::catch_unwind(AssertUnwindSafe(|| match timer {
            None => session.drive(&mut env),
            Some(_) => session.timed_out(&mut env),
        }));
        match served {
            Ok(Verdict::Open) => self.settle(slot),
            Ok(Verdict::Yield) => {
                self.again.push(Owner { slot, generation: entry.generation });
                self.settle(slot);
            }
            Ok(Verdict::Close) => self.close(slot),
            Err(_) => {
                log::error!("internal error while serving {}; connection closed", entry.session.client.peer);
                entry.session.answer_panic(&env);
                let now_secs = unix_secs(shared.clock.wall());
                shared.metrics.record(DEFAULT_ROUTE, 500, Duration::ZERO, None, now_secs);
                shared.metrics.panics.fetch_add(1, Ordering::Relaxed);
                self.close(slot);
            }
        }
    }

    /// Whether `owner` is still the session in its slot (not closed, the slot not reused since).
    fn owns(&self, owner: Owner) -> bool {
        let current = self.sessions.get(owner.slot).and_then(Option::as_ref);
        current.is_some_and(|e| e.generation == owner.generation)
    }

    /// After a step: arms the session's deadline and keeps the parked count right.
    fn settle(&mut self, slot: usize) {
        let EventLoop { poll, shared, sessions, pool, timers, inbox, spare, .. } = self;
        let Some(Some(entry)) = sessions.get_mut(slot) else { return };
        let env = Env { shared, registry: poll.registry(), pool, spare, inbox, now: self.now };
        let deadline = entry.session.deadline(&env);
        timers.arm(Owner { slot, generation: entry.generation }, &mut entry.session.armed, deadline);
        let parked = entry.session.is_parked();
        if parked != entry.parked {
            entry.parked = parked;
            match parked {
                true => shared.idle_sessions.fetch_add(1, Ordering::Relaxed),
                false => shared.idle_sessions.fetch_sub(1, Ordering::Relaxed),
            };
        }
        if parked && shared.is_shutting_down() {
            self.close(slot);
        }
    }

    fn close(&mut self, slot: usize) {
        let EventLoop { poll, shared, sessions, pool, inbox, spare, .. } = self;
        let Some(mut entry) = sessions.get_mut(slot).and_then(Option::take) else { return };
        let env = Env { shared, registry: poll.registry(), pool, spare: &mut *spare, inbox, now: self.now };
        // Recording must not take the loop down either.
        let _ = panic::catch_unwind(AssertUnwindSafe(|| entry.session.on_close(&env)));
        entry.session.return_buffers(spare);
        if entry.parked {
            shared.idle_sessions.fetch_sub(1, Ordering::Relaxed);
        }
        self.free.push(slot);
        self.open -= 1;
        self.peers.board.left(self.peers.index);
        // Dropping the session closes its sockets, which also leaves the poller.
        drop(entry);
        if self.accept_paused {
            self.accept_both();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::Ordering;
    use std::thread;
    use std::time::Duration;

    use crate::config::{BackendAddr, Config};
    use crate::server::event_loop::env::PANIC_TARGET;
    use crate::server::Server;

    /// A backend that answers `ok` to every request on each connection it accepts.
    fn backend() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut seen = Vec::new();
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                        }
                    }
                });
            }
        });
        addr
    }

    /// One request on a new connection; returns the whole answer (the proxy closes after it).
    fn ask(proxy: SocketAddr, target: &str) -> String {
        let mut stream = TcpStream::connect(proxy).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(stream, "GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }

    #[test]
    fn accepted_connections_inherit_no_delay_from_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        super::prepare_listener(&listener).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // The connection is established: a blocking accept returns at once.
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap(), "the loops set TCP_NODELAY only on their listeners");
    }

    #[test]
    fn a_panic_in_one_request_answers_500_and_the_loop_serves_on() {
        let addr = backend();
        let config = Config {
            threads: 1,
            bind: [127, 0, 0, 1].into(),
            port: 0,
            access_log: false,
            backends: vec![BackendAddr::plain(addr.to_string(), addr)],
            ..Config::default()
        };
        let server = Server::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), config).unwrap();
        let proxy = server.local_addr();
        assert!(ask(proxy, "/").starts_with("HTTP/1.1 200"));
        let answer = ask(proxy, PANIC_TARGET);
        assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
        // The one loop survived and serves everyone else.
        for _ in 0..3 {
            assert!(ask(proxy, "/").starts_with("HTTP/1.1 200"));
        }
        let shared = server.probe().shared().unwrap();
        assert_eq!(shared.metrics.panics.load(Ordering::Relaxed), 1);
        assert!(server.shutdown());
    }
}
