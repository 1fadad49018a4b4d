//! Everything `proxy` runs, started and stopped as one: the data plane ([`Server`]), the management
//! API ([`ApiServer`]) over the store (a SQLite file, or PostgreSQL shared with other instances), and
//! the background threads (health checks, execution log writer, lock-out consumer, purge of apps
//! without endpoints, and with PostgreSQL the change listener). Tests start it on `127.0.0.1:0`
//! listeners with a temporary database and a clock they control.
//!
//! ```text
//! proxy listener ─► Server (loops) ─► Router snapshot ─► app pools / ip_serverN pool
//!                         │ request records          ▲ swap after each change
//!                         ▼                          │
//!                    LogWriter ─► SQLite ◄─ ApiServer (api_port) ─► Lockout consumer ─► SQLite
//! HealthChecker ─► backends' healthy flags            Purger ─► SQLite + Router
//! ```

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::api::scrape::MetricsListener;
use crate::api::throttle::Throttle;
use crate::api::{ApiServer, ApiState};
use crate::background::Background;
use crate::clock::Clock;
use crate::config::Config;
use crate::server::{Server, TlsPlane};
use crate::store::applog::LogWriter;
use crate::store::credentials::{self, Tokens};
use crate::store::lockout::Lockout;
use crate::store::private::{self, PrivateError};
use crate::store::{Database, Durability, Store, StoreError};
use crate::tls::challenge::Challenges;
use crate::tls::https::{self, Https};
use crate::upstream::apps::Router;
use crate::upstream::health::{HealthChecker, Targets};
use crate::upstream::policy::EndpointPolicy;
use crate::upstream::sync::ChangeListener;

/// Why pibl could not start.
#[derive(Debug)]
pub enum StartError {
    /// Binding a port or starting a thread failed.
    Io { what: String, source: io::Error },
    /// The database could not be opened or migrated.
    Store { path: String, source: StoreError },
    /// No random JWT secret could be made.
    Secret(credentials::HashError),
    /// `jwt_secret_file` could not be used.
    SecretFile(PrivateError),
    /// A certificate, key or CA file was refused, or ACME could not start: `file: what is wrong`.
    Tls(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Io { what, source } => write!(f, "{what}: {source}"),
            StartError::Store { path, source } => write!(f, "database {path}: {source}"),
            StartError::Secret(e) => write!(f, "JWT secret: {e}"),
            StartError::SecretFile(e) => write!(f, "jwt_secret_file: {e}"),
            StartError::Tls(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> StartError + '_ {
    move |source| StartError::Io { what: what.to_string(), source }
}

/// A running pibl: data plane, management API and background threads.
pub struct Pibl {
    server: Server,
    api: ApiServer,
    state: Arc<ApiState>,
    health: HealthChecker,
    logs: LogWriter,
    lockout: Lockout,
    purger: Background,
    metrics: Option<MetricsListener>,
    /// Follows the other instances' changes (PostgreSQL only).
    listener: Option<ChangeListener>,
    /// Certificates and the ACME thread, when any HTTPS key is set.
    https: Option<Https>,
}

impl Pibl {
    /// Binds `bind:port` and `api_bind:api_port` and starts everything with the system clock.
    pub fn start(config: Config) -> Result<Pibl, StartError> {
        let proxy = TcpListener::bind(SocketAddr::new(config.bind, config.port))
            .map_err(io_err(&format!("cannot listen on {}:{}", config.bind, config.port)))?;
        let api = TcpListener::bind(SocketAddr::new(config.api_bind, config.api_port))
            .map_err(io_err(&format!("cannot listen on {}:{} (api_port)", config.api_bind, config.api_port)))?;
        Pibl::start_on(proxy, api, config, Clock::system())
    }

    /// Starts everything on listeners already bound, with `clock` for what expires.
    pub fn start_on(proxy: TcpListener, api: TcpListener, config: Config, clock: Clock) -> Result<Pibl, StartError> {
        // [pg] `database` is a SQLite file or a postgres:// URL; shown with its password hidden.
        let database = Database::from_setting(&config.database).map_err(|why| StartError::Store {
            path: config.database.display().to_string(),
            source: StoreError::Unavailable(why),
        })?;
        let path = database.to_string();
        let store = Arc::new(
            Store::connect(&database, Durability::Full, config.log_retention)
                .map_err(|source| StartError::Store { path: path.clone(), source })?,
        );
        let open =
            |durability| store.another(durability).map_err(|source| StartError::Store { path: path.clone(), source });
        // The secret's source, first found: PIBL_JWT_SECRET (put in `jwt_secret` by `apply_env`, which
        // clears the file), `jwt_secret_file`, `jwt_secret`, else one made once and kept in the database.
        let secret = if let Some(file) = &config.jwt_secret_file {
            private::read_secret(file).map_err(StartError::SecretFile)?
        } else if config.jwt_secret.is_empty() {
            let mut failure = None;
            let secret = store
                .setting_or_insert("jwt_secret", || match credentials::new_secret() {
                    Ok(s) => s,
                    Err(e) => {
                        failure = Some(e);
                        String::new()
                    }
                })
                .map_err(|source| StartError::Store { path: path.clone(), source })?;
            if let Some(e) = failure {
                return Err(StartError::Secret(e));
            }
            secret
        } else {
            config.jwt_secret.clone()
        };

        // Bound before the proxy starts, so a taken port fails the start instead of losing the metrics.
        let metrics_listener = match config.metrics_bind {
            Some(addr) => {
                Some(TcpListener::bind(addr).map_err(io_err(&format!("cannot listen on {addr} (metrics_bind)")))?)
            }
            None => None,
        };
        let router = Arc::new(Router::new(config.backend_pool_size, clock.clone()));
        // pibl's own ports are never an endpoint: an app at the API port would serve the API on the
        // public data plane.
        let mut own_ports = vec![proxy.local_addr().map_err(io_err("proxy listener"))?.port()];
        own_ports.push(api.local_addr().map_err(io_err("API listener"))?.port());
        if config.tls_port != 0 {
            own_ports.push(config.tls_port);
        }
        if let Some(listener) = &metrics_listener {
            own_ports.push(listener.local_addr().map_err(io_err("metrics listener"))?.port());
        }
        router.set_app_prefix(&config.app_prefix);
        router.set_endpoint_policy(EndpointPolicy::new(config.endpoint_allow.clone(), own_ports));
        let logs = LogWriter::start(open(Durability::Normal)?).map_err(io_err("cannot start the log writer"))?;
        router.set_log_sink(logs.sender());
        let lockout = Lockout::start(open(Durability::Full)?, config.lockout_secs, clock.clone())
            .map_err(io_err("cannot start the lock-out consumer"))?;

        let tokens = Arc::new(Tokens::new(secret.as_bytes(), config.jwt_ttl.as_secs()));
        // Being listed grants nothing by itself (anyone could register the address first).
        for email in &config.admins {
            let granted = match store.user(email) {
                Ok(Some(user)) => crate::store::admins::is_admin(&store, &user).unwrap_or(false),
                _ => false,
            };
            if !granted {
                log::warn!(
                    "admins lists {email}, which has no admin rights: grant them on this host with \
                     `proxy --config FILE --admin add {email}`"
                );
            }
        }
        // The apps are routed from the first request on.
        router.reload(|| store.all_apps()).map_err(|source| StartError::Store { path: path.clone(), source })?;

        let (health_interval, purge_interval) = (config.health_interval, config.purge_interval);
        let default_path = Some(config.health_path.clone()).filter(|p| !p.is_empty());
        let (auth_rate, admins, access_log) = (config.auth_rate, config.admins.clone(), config.access_log);
        let metrics_need_token = config.metrics_auth.needs_token(config.api_bind);
        let lockout_scope = config.lockout_scope;
        let reserved_app_ids =
            crate::api::apps::reserved_ids(&config.app_prefix, config.routes.iter().map(|r| r.prefix.as_str()));
        // Certificates are checked before anything serves, so a broken file stops the start-up.
        let challenges = Arc::new(Challenges::default());
        let https = match https::is_configured(&config) {
            true => Some(Https::start(&config, Arc::clone(&challenges), clock.clone()).map_err(StartError::Tls)?),
            false => None,
        };
        let stop_https = |https: Option<Https>| https.map(Https::stop);
        let tls_listener = match https.as_ref().and_then(Https::server_config) {
            Some(server_config) => match TcpListener::bind(SocketAddr::new(config.bind, config.tls_port)) {
                Ok(listener) => Some((listener, server_config)),
                Err(e) => {
                    stop_https(https);
                    return Err(io_err(&format!("cannot listen on {}:{} (tls_port)", config.bind, config.tls_port))(e));
                }
            },
            None => None,
        };
        let plane =
            TlsPlane { listener: tls_listener, backend: https.as_ref().and_then(Https::backend_config), challenges };
        let tokens_for_proxy = Some(Arc::clone(&tokens));
        let server =
            match Server::start_with_router(proxy, config, Arc::clone(&router), tokens_for_proxy, clock.clone(), plane)
            {
                Ok(server) => server,
                Err(e) => {
                    stop_https(https);
                    return Err(io_err("cannot start the proxy")(e));
                }
            };
        if let Some((name, days)) = https.as_ref().and_then(Https::days_left) {
            server.metrics().watch_certificate(name, days);
        }
        let state = Arc::new(ApiState {
            store,
            tokens,
            router: Arc::clone(&router),
            lockout: lockout.sender(),
            throttle: Throttle::new(auth_rate),
            clock: clock.clone(),
            admins: admins.iter().map(|a| a.to_lowercase()).collect(),
            access_log,
            metrics_need_token,
            reserved_app_ids,
            lockout_per_ip: lockout_scope == crate::config::LockoutScope::AccountIp,
            cache: server.cache_handle(),
            certificates: https.as_ref().map(Https::store),
            acme: https.as_ref().and_then(Https::acme_control),
            observe: Default::default(),
        });
        state.observe.attach(server.probe());
        state.observe.metrics_elsewhere.store(metrics_listener.is_some(), std::sync::atomic::Ordering::Relaxed);
        // [pg] Other instances' changes reach this one's routes and cache through the database.
        let listener = ChangeListener::start(Arc::clone(&state.store), Arc::clone(&router), server.cache_handle())
            .map_err(io_err("cannot start the database listener"))?;
        let targets =
            Targets { router, pools: Box::new(server.health_targets(default_path)), tls: server.backend_tls() };
        let health =
            HealthChecker::start(targets, health_interval, clock).map_err(io_err("cannot start the health checker"))?;
        let api = ApiServer::start(api, Arc::clone(&state)).map_err(io_err("cannot start the API"))?;
        let purger = start_purger(Arc::clone(&state), purge_interval).map_err(io_err("cannot start the purger"))?;
        let metrics = match metrics_listener {
            Some(listener) => Some(
                MetricsListener::start(listener, Arc::clone(&state))
                    .map_err(io_err("cannot start the metrics listener"))?,
            ),
            None => None,
        };
        Ok(Pibl { server, api, state, health, logs, lockout, purger, metrics, listener, https })
    }

    /// The data plane: its cache, clock, access log and reload.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Where the data plane listens.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The certificates and ACME thread, when HTTPS is configured.
    pub fn https(&self) -> Option<&Https> {
        self.https.as_ref()
    }

    /// Where the management API listens.
    pub fn api_addr(&self) -> SocketAddr {
        self.api.local_addr()
    }

    /// Where `/metrics` is served when `metrics_bind` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsListener::local_addr)
    }

    /// The API's shared state (store, router), for tests and tools.
    pub fn state(&self) -> &Arc<ApiState> {
        &self.state
    }

    /// Stops the API, then the data plane (in-flight requests finish within `shutdown_grace`), then
    /// the background threads, writing what they still hold. Returns whether the data plane
    /// finished in time.
    pub fn shutdown(self) -> bool {
        self.api.shutdown();
        if let Some(metrics) = self.metrics {
            metrics.shutdown();
        }
        self.purger.stop();
        if let Some(listener) = self.listener {
            listener.shutdown();
        }
        if let Some(https) = self.https {
            https.stop();
        }
        let clean = self.server.shutdown();
        self.health.shutdown();
        self.lockout.shutdown();
        self.logs.shutdown();
        clean
    }
}

/// The purger: deletes apps without endpoints every `interval`.
fn start_purger(state: Arc<ApiState>, interval: Duration) -> io::Result<Background> {
    Background::spawn("pibl-purge", move |stop| {
        while !stop.wait(interval) {
            if let Err(e) = state.purge() {
                log::error!("[purge] failed: {e}");
            }
        }
    })
}
