//! The HTTPS parts a running pibl holds, started and stopped as one: the certificate store loaded
//! from the configuration (a refused file stops the start-up with `file: what is wrong`), the
//! backend TLS settings checked at start-up, and the ACME thread. The event-loop data plane builds
//! its listener's `ServerConfig` from [`Https::store`].

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::{ClientConfig, ServerConfig};

use super::acme::{spawn, AcmeClient, AcmeControl, AcmeSettings};
use super::challenge::Challenges;
use super::client::{backend_client_config, BackendTrust};
use super::error::CertError;
use super::server::server_config;
use super::sites::{load_configured, reload};
use super::store::CertStore;
use crate::background::Background;
use crate::clock::Clock;
use crate::config::Config;

/// Certificates and the ACME thread of a running pibl.
#[derive(Debug)]
pub struct Https {
    store: Arc<CertStore>,
    /// The listener's configuration over `store` (`tls_port` set).
    server: Option<Arc<ServerConfig>>,
    /// How `https://` backends are spoken to (any such backend, `backend_ca` or verify off).
    backend: Option<Arc<ClientConfig>>,
    acme: Option<Background>,
    /// The ACME thread's controls, for the management API.
    acme_control: Option<AcmeControl>,
    /// The first ACME domain and days left on its certificate, for `/metrics`.
    days_left: Option<(String, Arc<AtomicI64>)>,
}

/// Whether the configuration asks for any HTTPS part.
pub fn is_configured(config: &Config) -> bool {
    !config.tls_cert.as_os_str().is_empty()
        || !config.tls_dir.as_os_str().is_empty()
        || !config.tls_sites.is_empty()
        || !config.acme_domains.is_empty()
        || !config.backend_ca.as_os_str().is_empty()
        || !config.backend_tls_verify
}

impl Https {
    /// Loads the certificates, checks the backend trust settings (warning for
    /// `backend_tls_verify = off`) and starts ACME; `challenges` are the plain port's.
    pub fn start(config: &Config, challenges: Arc<Challenges>, clock: Clock) -> Result<Https, String> {
        let now = clock.wall();
        let set = load_configured(config, now).map_err(|e| e.to_string())?;
        if set.is_empty() && config.tls_port != 0 && config.acme_domains.is_empty() {
            return Err(format!(
                "tls_port = {}: no certificate to serve (tls_dir {} holds no NAME.crt + NAME.key pair)",
                config.tls_port,
                config.tls_dir.display()
            ));
        }
        let store = Arc::new(CertStore::new(set));
        // The system roots are read only when some backend speaks TLS: a host without the
        // ca-certificates package can still serve HTTPS itself.
        let tls_backends = config.tls_upstreams().next().is_some();
        let backend = if tls_backends || !config.backend_ca.as_os_str().is_empty() || !config.backend_tls_verify {
            let trust = BackendTrust::from_keys(&config.backend_ca, config.backend_tls_verify);
            Some(backend_client_config(trust).map_err(|e: CertError| e.to_string())?)
        } else {
            None
        };
        let server = match config.tls_port {
            0 => None,
            _ => Some(server_config(Arc::clone(&store)).map_err(|e| format!("TLS listener: {e}"))?),
        };
        let (acme, acme_control, days_left) = match AcmeSettings::from_config(config) {
            None => (None, None, None),
            Some(settings) => {
                if config.port != 80 {
                    log::warn!(
                        "acme_domains: the CA checks HTTP-01 on port 80; make sure port 80 reaches pibl's port {}",
                        config.port
                    );
                }
                let first = settings.domains[0].clone();
                let client =
                    AcmeClient::new(settings, Arc::clone(&store), challenges, now).map_err(|e| e.to_string())?;
                let days = client.days_left();
                let (thread, control) =
                    spawn(client, clock).map_err(|e| format!("cannot start the ACME thread: {e}"))?;
                (Some(thread), Some(control), Some((first, days)))
            }
        };
        Ok(Https { store, server, backend, acme, acme_control, days_left })
    }

    /// The certificates the TLS listener serves.
    pub fn store(&self) -> Arc<CertStore> {
        Arc::clone(&self.store)
    }

    /// The TLS listener's rustls configuration (certificates by SNI from [`Https::store`], ALPN
    /// `http/1.1`), when `tls_port` is set: one `rustls::ServerConnection` per accepted connection.
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.server.clone()
    }

    /// The rustls configuration for `https://` backends (SNI and the name checked from
    /// [`crate::config::BackendAddr::host`] via [`super::client::backend_server_name`]).
    pub fn backend_config(&self) -> Option<Arc<ClientConfig>> {
        self.backend.clone()
    }

    /// The ACME certificate's gauge: its first name and days left (-1 before the first one).
    pub fn days_left(&self) -> Option<(String, Arc<AtomicI64>)> {
        self.days_left.clone()
    }

    /// The ACME thread's controls (`acme_domains` set): its state, and revoke-and-reissue.
    pub fn acme_control(&self) -> Option<AcmeControl> {
        self.acme_control.clone()
    }

    /// SIGHUP: reloads every certificate file; on a refused one the old set stays.
    pub fn reload(&self, config: &Config, now: SystemTime) -> Result<(), CertError> {
        reload(&self.store, config, now)
    }

    /// Stops the ACME thread (an order in progress finishes first).
    pub fn stop(self) {
        if let Some(acme) = self.acme {
            acme.stop();
        }
    }
}
