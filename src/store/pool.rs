//! A small bounded pool of PostgreSQL connections for one process: at most `max` open, idle ones
//! reused after a liveness check, a connection that failed at the socket level never returned. It
//! keeps the "is the database up" flag that `/metrics` shows. No background thread: a connection is
//! opened when asked for and none is idle, and a caller waits at most `wait` for one.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::postgres::{Client, NoTls};
use parking_lot::{Condvar, Mutex};

use super::model::StoreError;
use super::tls::Tls;

/// How long checking an idle connection may take before it counts as dead.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(2);

struct Idle {
    clients: Vec<Client>,
    /// Connections handed out or idle.
    open: usize,
}

/// The pool; share it through an `Arc`.
pub struct Pool {
    config: ::postgres::Config,
    tls: Tls,
    max: usize,
    wait: Duration,
    idle: Mutex<Idle>,
    freed: Condvar,
    up: Arc<AtomicBool>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").field("max", &self.max).field("up", &self.is_up()).finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(config: ::postgres::Config, tls: Tls, max: usize, wait: Duration) -> Pool {
        Pool {
            config,
            tls,
            max: max.max(1),
            wait,
            idle: Mutex::new(Idle { clients: Vec::new(), open: 0 }),
            freed: Condvar::new(),
            up: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Whether the last attempt to reach the database worked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records what the last attempt found (the change listener reports too).
    pub fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                log::info!("database: reachable again");
            } else {
                log::error!("database: unreachable; the API answers 503 and routing keeps its last table");
            }
        }
    }

    /// A fresh connection outside the pool (the change listener's own).
    pub fn connect_unpooled(&self) -> Result<Client, ::postgres::Error> {
        match &self.tls {
            Tls::Plain => self.config.connect(NoTls),
            Tls::Verified(tls) => self.config.connect(tls.clone()),
        }
    }

    /// A connection: an idle one that still answers, or a new one while fewer than `max` are open.
    pub fn get(&self) -> Result<Conn<'_>, StoreError> {
        let deadline = Instant::now() + self.wait;
        let mut idle = self.idle.lock();
        loop {
            if let Some(mut client) = idle.clients.pop() {
                drop(idle);
                if client.is_valid(VALIDATE_TIMEOUT).is_ok() {
                    return Ok(Conn { pool: self, client: Some(client), broken: false });
                }
                // Dead (the server restarted, or the socket went): drop it and look again.
                idle = self.idle.lock();
                idle.open -= 1;
                continue;
            }
            if idle.open < self.max {
                idle.open += 1;
                drop(idle);
                return match self.connect_unpooled() {
                    Ok(client) => {
                        self.set_up(true);
                        Ok(Conn { pool: self, client: Some(client), broken: false })
                    }
                    Err(e) => {
                        let mut idle = self.idle.lock();
                        idle.open -= 1;
                        drop(idle);
                        self.freed.notify_one();
                        self.set_up(false);
                        Err(StoreError::Unavailable(describe(&e)))
                    }
                };
            }
            if self.freed.wait_until(&mut idle, deadline).timed_out() {
                return Err(StoreError::Unavailable(format!(
                    "all {} database connections stayed busy for {:?}",
                    self.max, self.wait
                )));
            }
        }
    }
}

/// A connection on loan; back to the pool when dropped, unless it broke.
pub struct Conn<'a> {
    pool: &'a Pool,
    client: Option<Client>,
    broken: bool,
}

impl Conn<'_> {
    /// The connection failed at the socket level: close it instead of reusing it.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    pub fn client(&mut self) -> &mut Client {
        // Only `Drop` takes the client out.
        self.client.as_mut().expect("a loaned connection holds its client until dropped")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let client = self.client.take();
        let mut idle = self.pool.idle.lock();
        match client {
            Some(client) if !self.broken && !client.is_closed() => idle.clients.push(client),
            _ => idle.open -= 1,
        }
        drop(idle);
        self.pool.freed.notify_one();
    }
}

/// `e` with its causes ("error performing TLS handshake: invalid peer certificate: UnknownIssuer").
pub fn describe(e: &::postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Whether `e` means the database is out of reach rather than refusing a statement: the socket
/// failed or closed, a timeout, or the server shutting down, starting up or out of connections.
pub fn is_connection_error(e: &::postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        return code.starts_with("08") || code.starts_with("57P") || code == "53300";
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    e.to_string().contains("timeout")
}
