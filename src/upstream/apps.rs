//! The route table the data plane reads on every request: app id → that app's pool of endpoints.
//! It is an immutable snapshot behind an `ArcSwap`; the management API builds a new one after each
//! change and swaps it in, so a request takes no lock and sees either the old table or the new one.
//! Backends of endpoints that did not change carry over between snapshots with their health,
//! round-robin neighbours and idle connections.
//!
//! `GET /<appid>/<rest>` → app `appid` gets `/<rest>` with `X-Forwarded-Prefix: /<appid>`; a path
//! whose first segment is no app goes to the `ip_serverN` pool.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_channel::{Sender, TrySendError};
use parking_lot::Mutex;

use crate::clock::Clock;
use crate::config::BackendAddr;
use crate::http::request::Request;
use crate::store::{self, LogEntry};
use crate::upstream::backend::{Backend, Pool};
use crate::upstream::policy::EndpointPolicy;

/// One endpoint of an app as the data plane sees it.
#[derive(Debug)]
pub struct EndpointRoute {
    pub id: i64,
    pub host: String,
    pub port: u16,
    pub statuspath: String,
    /// `None` when the host name did not resolve; such an endpoint gets no traffic.
    pub backend: Option<Arc<Backend>>,
}

/// One app: its pool and what the health checker needs.
#[derive(Debug)]
pub struct AppRoute {
    pub name: String,
    /// Database key; changes when the app is deleted and the name taken again.
    pub pk: i64,
    /// `/<name>`, sent as `X-Forwarded-Prefix`.
    pub prefix: String,
    pub pool: Pool,
    pub endpoints: Vec<EndpointRoute>,
}

/// One immutable version of the table.
#[derive(Debug, Default)]
pub struct Routes {
    apps: HashMap<String, Arc<AppRoute>>,
}

impl Routes {
    pub fn app(&self, name: &str) -> Option<&Arc<AppRoute>> {
        self.apps.get(name)
    }

    pub fn apps(&self) -> impl Iterator<Item = &Arc<AppRoute>> {
        self.apps.values()
    }

    /// Health of one endpoint: (healthy, last check in ms since the epoch).
    pub fn endpoint_health(&self, app: &str, endpoint_id: i64) -> (bool, Option<u64>) {
        let found = self.apps.get(app).and_then(|a| a.endpoints.iter().find(|e| e.id == endpoint_id));
        match found {
            Some(EndpointRoute { backend: Some(b), .. }) => (b.is_healthy(), b.last_check_ms()),
            Some(EndpointRoute { backend: None, .. }) => (false, None),
            None => (true, None),
        }
    }
}

/// A request that belongs to an app, with the target to forward.
#[derive(Debug, Clone)]
pub struct Matched {
    pub app: Arc<AppRoute>,
    /// The request target without the `/<appid>` prefix (`/` at least).
    pub target: String,
}

/// Room in the execution-log channel; past it entries are dropped (and counted), never waited for.
pub const LOG_QUEUE: usize = 65_536;

/// The live route table and the execution-log sink of the data plane.
#[derive(Debug)]
pub struct Router {
    table: ArcSwap<Routes>,
    idle_limit: usize,
    /// Serialises rebuilds so they are swapped in the order they were built.
    rebuild: Mutex<()>,
    log: OnceLock<Sender<LogEntry>>,
    dropped_logs: AtomicU64,
    /// Stamps execution-log entries.
    clock: Clock,
    /// What endpoint addresses must pass; the default until [`Router::set_endpoint_policy`].
    policy: OnceLock<Arc<EndpointPolicy>>,
    /// `app_prefix` without its last `/` (`/apps`), or empty: apps are served under it.
    app_prefix: OnceLock<String>,
}

impl Router {
    /// An empty table; `idle_limit` is the idle connections kept per endpoint.
    pub fn new(idle_limit: usize, clock: Clock) -> Router {
        Router {
            clock,
            table: ArcSwap::from_pointee(Routes::default()),
            idle_limit,
            rebuild: Mutex::new(()),
            log: OnceLock::new(),
            dropped_logs: AtomicU64::new(0),
            policy: OnceLock::new(),
            app_prefix: OnceLock::new(),
        }
    }

    /// Serves every app under `prefix` (`/apps/`; empty = at the root). Set once, before the first
    /// rebuild; later calls are ignored.
    pub fn set_app_prefix(&self, prefix: &str) {
        let _ = self.app_prefix.set(prefix.trim_end_matches('/').to_string());
    }

    /// `app_prefix` without its last `/` (`/apps`), or empty.
    pub fn app_prefix(&self) -> &str {
        self.app_prefix.get().map_or("", String::as_str)
    }

    /// Sets the endpoint policy (once, before the first rebuild; later calls are ignored).
    pub fn set_endpoint_policy(&self, policy: EndpointPolicy) {
        let _ = self.policy.set(Arc::new(policy));
    }

    /// The endpoint policy in force.
    pub fn endpoint_policy(&self) -> &Arc<EndpointPolicy> {
        self.policy.get_or_init(|| Arc::new(EndpointPolicy::default()))
    }

    /// The current table (a cheap `Arc` clone).
    pub fn snapshot(&self) -> Arc<Routes> {
        self.table.load_full()
    }

    /// The app a request target belongs to, by its first path segment.
    pub fn lookup(&self, target: &str) -> Option<Matched> {
        let rest = target.strip_prefix(self.app_prefix())?.strip_prefix('/')?;
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (name, tail) = rest.split_at(end);
        if name.is_empty() {
            return None;
        }
        let table = self.table.load();
        let app = table.apps.get(name)?;
        let target = if tail.starts_with('/') { tail.to_string() } else { format!("/{tail}") };
        Some(Matched { app: Arc::clone(app), target })
    }

    /// Replaces the table with `apps`, keeping the backends of endpoints that did not change.
    pub fn rebuild(&self, apps: &[store::App]) {
        let _guard = self.rebuild.lock();
        self.rebuild_locked(apps);
    }

    /// Loads the apps with `load` and rebuilds from them, both under the rebuild lock, so two
    /// concurrent reloads cannot swap in an older read after a newer one.
    pub fn reload<E>(&self, load: impl FnOnce() -> Result<Vec<store::App>, E>) -> Result<(), E> {
        let _guard = self.rebuild.lock();
        let apps = load()?;
        self.rebuild_locked(&apps);
        Ok(())
    }

    fn rebuild_locked(&self, apps: &[store::App]) {
        let old = self.table.load_full();
        let mut previous: HashMap<(i64, i64), &EndpointRoute> = HashMap::new();
        for app in old.apps.values() {
            for ep in &app.endpoints {
                previous.insert((app.pk, ep.id), ep);
            }
        }
        let mut table = Routes::default();
        for app in apps {
            let mut endpoints = Vec::with_capacity(app.endpoints.len());
            for ep in &app.endpoints {
                // Resolved and checked again on every rebuild, since a name may point elsewhere now;
                // the old backend (health, idle connections) is kept while the address is the same.
                let backend = match self.endpoint_policy().resolve(&ep.host, ep.port) {
                    Ok(addr) => {
                        let kept = previous
                            .get(&(app.pk, ep.id))
                            .filter(|old| old.host == ep.host && old.port == ep.port)
                            .and_then(|old| old.backend.clone())
                            .filter(|b| b.addr == addr);
                        kept.or_else(|| {
                            let name = format!("{}:{}", ep.host, ep.port);
                            let policy = Arc::clone(self.endpoint_policy());
                            Some(Arc::new(Backend::guarded(&BackendAddr::plain(name, addr), self.idle_limit, policy)))
                        })
                    }
                    Err(refusal) => {
                        log::warn!("app {}: endpoint {}: {refusal}; no traffic", app.name, ep.id);
                        None
                    }
                };
                endpoints.push(EndpointRoute {
                    id: ep.id,
                    host: ep.host.clone(),
                    port: ep.port,
                    statuspath: ep.statuspath.clone(),
                    backend,
                });
            }
            let pool = Pool::from_backends(endpoints.iter().filter_map(|e| e.backend.clone()).collect())
                .continuing(old.apps.get(&app.name).filter(|o| o.pk == app.pk).map(|o| &o.pool));
            let route = AppRoute {
                name: app.name.clone(),
                pk: app.pk,
                prefix: format!("{}/{}", self.app_prefix(), app.name),
                pool,
                endpoints,
            };
            table.apps.insert(app.name.clone(), Arc::new(route));
        }
        self.table.store(Arc::new(table));
    }

    /// Connects the execution-log writer; the first call wins.
    pub fn set_log_sink(&self, sink: Sender<LogEntry>) {
        let _ = self.log.set(sink);
    }

    /// Queues an execution-log entry without waiting; drops it if the writer is behind.
    pub fn log(&self, entry: LogEntry) {
        if let Some(sink) = self.log.get() {
            if let Err(TrySendError::Full(_)) = sink.try_send(entry) {
                let n = self.dropped_logs.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    log::warn!("execution log is behind: {} entries dropped so far", n + 1);
                }
            }
        }
    }

    /// Queues the execution-log record of one proxied request to an app.
    pub fn log_request(
        &self,
        app: &AppRoute,
        client: IpAddr,
        req: &Request,
        status: u16,
        endpoint: Option<String>,
        took: Duration,
    ) {
        self.log(LogEntry {
            app_pk: app.pk,
            time_ms: self.clock.now_ms(),
            kind: "request".into(),
            actor: Some(client.to_string()),
            method: Some(req.method().to_string()),
            path: Some(req.target().to_string()),
            status: Some(status),
            endpoint,
            duration_ms: Some(took.as_secs_f64() * 1000.0),
            ..LogEntry::default()
        });
    }

    /// Execution-log entries dropped because the writer was behind.
    pub fn dropped_logs(&self) -> u64 {
        self.dropped_logs.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{App, Endpoint};

    fn app(pk: i64, name: &str, eps: &[(i64, u16)]) -> App {
        App {
            pk,
            name: name.into(),
            owner_id: 1,
            owner: "o@x.io".into(),
            endpoints: eps
                .iter()
                .map(|&(id, port)| Endpoint { id, host: "127.0.0.1".into(), port, statuspath: "/".into() })
                .collect(),
        }
    }

    #[test]
    fn lookup_strips_the_prefix() {
        let router = Router::new(1, Clock::system());
        router.rebuild(&[app(1, "hello", &[(1, 9)])]);
        let cases = [("/hello", "/"), ("/hello/", "/"), ("/hello/a/b?c", "/a/b?c"), ("/hello?x=1", "/?x=1")];
        for (target, stripped) in cases {
            let m = router.lookup(target).unwrap_or_else(|| panic!("{target}"));
            assert_eq!((m.app.name.as_str(), m.target.as_str()), ("hello", stripped));
        }
        for target in ["/", "/hell", "/helloworld", "/x/hello", "*", ""] {
            assert!(router.lookup(target).is_none(), "{target}");
        }
    }

    #[test]
    fn rebuild_keeps_unchanged_backends() {
        let router = Router::new(1, Clock::system());
        router.rebuild(&[app(1, "a", &[(1, 9), (2, 10)])]);
        let before = router.snapshot();
        let b1 = before.app("a").unwrap().endpoints[0].backend.clone().unwrap();
        b1.record_check(false, 5, 1, 1);
        router.rebuild(&[app(1, "a", &[(1, 9), (3, 11)]), app(2, "b", &[(4, 12)])]);
        let after = router.snapshot();
        let a = after.app("a").unwrap();
        assert!(Arc::ptr_eq(a.endpoints[0].backend.as_ref().unwrap(), &b1), "endpoint 1 kept its backend");
        assert_eq!(after.endpoint_health("a", 1), (false, Some(5)));
        assert_eq!(after.endpoint_health("a", 3), (true, None));
        assert_eq!(a.pool.backends().len(), 2);
        assert!(after.app("b").is_some());
        // Re-created under a new pk: fresh backends.
        router.rebuild(&[app(7, "a", &[(1, 9)])]);
        assert!(router.snapshot().endpoint_health("a", 1).0);
    }

    #[test]
    fn a_rebuild_goes_on_with_the_rotation_where_it_was() {
        let router = Router::new(1, Clock::system());
        let apps = [app(1, "a", &[(1, 9), (2, 10)])];
        router.rebuild(&apps);
        let first = |router: &Router| {
            let table = router.snapshot();
            let pool = &table.app("a").unwrap().pool;
            let ip = std::net::IpAddr::from([127, 0, 0, 1]);
            pool.candidates(std::time::Instant::now(), ip).next().unwrap().addr.port()
        };
        assert_eq!(first(&router), 9);
        // The same apps read again (a change notified back): the next request goes to the other one.
        router.rebuild(&apps);
        assert_eq!(first(&router), 10);
        assert_eq!(first(&router), 9);
    }
}
