//! Change propagation between instances that share a PostgreSQL database: one thread per instance
//! holds a connection of its own with `LISTEN pibl` and, on each notification, rebuilds the route
//! table the data plane reads ([`Router::reload`]) or applies the cache purges recorded since the
//! last one. After a (re)connect it re-reads everything, so a notification missed while it was
//! away is not lost. It never blocks the data plane: while the database is down the router keeps
//! its last table and this thread retries with a growing pause. What a purge names is
//! `store::CachePurge`: the API purges its own cache and records it, this listener applies it.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ::postgres::fallible_iterator::FallibleIterator;

use crate::background::Background;
use crate::cache::Cache;
use crate::store::postgres::{APPS_CHANGED, CACHE_PURGED, CHANNEL};
use crate::store::{Store, StoreError};
use crate::upstream::apps::Router;

/// How long one wait for notifications lasts before the stop flag is looked at.
const TICK: Duration = Duration::from_millis(200);
/// How often an idle listening connection is checked (a silent peer is otherwise never noticed).
const PING_EVERY: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before the first reconnection attempt, doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The running listener thread.
pub struct ChangeListener {
    thread: Background,
}

impl ChangeListener {
    /// Starts listening when `store` is shared (PostgreSQL); `None` for a SQLite file, whose only
    /// writer is this process.
    pub fn start(store: Arc<Store>, router: Arc<Router>, cache: Option<Arc<Cache>>) -> io::Result<Option<Self>> {
        if !store.is_shared() {
            return Ok(None);
        }
        let thread = Background::spawn("pibl-db-listen", move |stop| {
            let mut follower = Follower { store: &store, router: &router, cache: cache.as_deref(), last_purge: None };
            follower.run(stop.as_flag())
        })?;
        Ok(Some(ChangeListener { thread }))
    }

    pub fn shutdown(self) {
        self.thread.stop();
    }
}

struct Follower<'a> {
    store: &'a Store,
    router: &'a Router,
    cache: Option<&'a Cache>,
    /// The newest cache purge applied; `None` until the first connection reads where it stands.
    last_purge: Option<i64>,
}

/// Why a listening session ended.
enum Ended {
    Stopped,
    Lost(String),
}

impl Follower<'_> {
    fn run(&mut self, stop: &AtomicBool) {
        let mut backoff = MIN_BACKOFF;
        while !stop.load(Ordering::Acquire) {
            let (ended, listened) = self.session(stop);
            match ended {
                Ended::Stopped => return,
                Ended::Lost(why) => {
                    if let Some(pg) = self.store.postgres() {
                        pg.set_up(false);
                    }
                    log::warn!("database listener: {why}; reconnecting (routing keeps its last table)");
                }
            }
            // A session that got as far as listening starts the pauses over.
            if listened {
                backoff = MIN_BACKOFF;
            }
            let until = Instant::now() + backoff;
            while Instant::now() < until && !stop.load(Ordering::Acquire) {
                thread::sleep(TICK.min(backoff));
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Connects, listens, catches up on everything, then follows notifications until the
    /// connection is lost or a stop is asked. Also says whether it got as far as listening.
    fn session(&mut self, stop: &AtomicBool) -> (Ended, bool) {
        let Some(pg) = self.store.postgres() else { return (Ended::Stopped, false) };
        let mut client = match pg.connect_listener() {
            Ok(client) => client,
            Err(e) => return (Ended::Lost(e.to_string()), false),
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
            return (Ended::Lost(e.to_string()), false);
        }
        // Listening from here on: a change committed from now is notified, one before is read now.
        if let Err(e) = self.catch_up(true, true) {
            return (Ended::Lost(e.to_string()), false);
        }
        pg.set_up(true);
        (self.follow(&mut client, stop), true)
    }

    /// Follows notifications on a listening connection until it is lost or a stop is asked.
    fn follow(&mut self, client: &mut ::postgres::Client, stop: &AtomicBool) -> Ended {
        let mut last_ping = Instant::now();
        loop {
            if stop.load(Ordering::Acquire) {
                return Ended::Stopped;
            }
            let (mut apps, mut purges) = (false, false);
            let mut note = |payload: &str| match payload {
                APPS_CHANGED => apps = true,
                CACHE_PURGED => purges = true,
                other => log::debug!("database listener: unknown notification {other:?}"),
            };
            let first = client.notifications().timeout_iter(TICK).next();
            match first {
                Ok(Some(n)) => {
                    note(n.payload());
                    // Take whatever else already arrived, then act once for the lot.
                    let mut more = client.notifications();
                    let mut pending = more.iter();
                    loop {
                        match pending.next() {
                            Ok(Some(n)) => note(n.payload()),
                            Ok(None) => break,
                            Err(e) => return Ended::Lost(e.to_string()),
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => return Ended::Lost(e.to_string()),
            }
            if apps || purges {
                if let Err(e) = self.catch_up(apps, purges) {
                    if e.is_unavailable() {
                        return Ended::Lost(e.to_string());
                    }
                    log::error!("database listener: cannot apply a change: {e}");
                }
            }
            if client.is_closed() {
                return Ended::Lost("the listening connection closed".into());
            }
            if last_ping.elapsed() >= PING_EVERY {
                if let Err(e) = client.is_valid(PING_TIMEOUT) {
                    return Ended::Lost(e.to_string());
                }
                last_ping = Instant::now();
            }
        }
    }

    /// Re-reads the apps and/or applies the cache purges recorded since the last one applied.
    fn catch_up(&mut self, apps: bool, purges: bool) -> Result<(), StoreError> {
        if apps {
            self.router.reload(|| self.store.all_apps())?;
        }
        let Some(pg) = self.store.postgres() else { return Ok(()) };
        if purges {
            match self.last_purge {
                // First connection: this instance's cache is new, nothing before now concerns it.
                None => self.last_purge = Some(pg.last_cache_purge_id()?),
                Some(last) => {
                    for (id, purge) in pg.cache_purges_after(last)? {
                        if let Some(cache) = self.cache {
                            let n = purge.apply(cache);
                            log::debug!("[cache] purge {id} from another instance: {purge:?}, {n} entries");
                        }
                        self.last_purge = Some(id);
                    }
                }
            }
        }
        Ok(())
    }
}
