//! [`ApiState`]: everything the API's endpoints share (store, token keys, route table, lock-out
//! channel, throttle, clock, admins, cache, certificates, counters), made once at start-up and shared by the API
//! workers, the metrics listener and the purger.

use std::sync::Arc;

use crossbeam_channel::Sender;

use super::throttle::Throttle;
use crate::cache::Cache;
use crate::clock::Clock;
use crate::server::probe::ApiObserver;
use crate::store::credentials::Tokens;
use crate::store::lockout::LoginEvent;
use crate::store::{Store, StoreError};
use crate::tls::acme::AcmeControl;
use crate::tls::store::CertStore;
use crate::upstream::apps::Router;

/// Everything the endpoints share.
pub struct ApiState {
    pub store: Arc<Store>,
    /// Shared with the data plane, which verifies tokens on `auth = jwt` routes.
    pub tokens: Arc<Tokens>,
    pub router: Arc<Router>,
    pub lockout: Sender<LoginEvent>,
    pub throttle: Throttle,
    pub clock: Clock,
    /// `admins`, lower-cased: only named in a warning at start-up; rights come from `proxy --admin add`.
    pub admins: Vec<String>,
    /// `access_log`: one line per API request too.
    pub access_log: bool,
    /// `lockout_scope = account+ip`: failed logins lock the account from that address only.
    pub lockout_per_ip: bool,
    /// App ids no one may create (see `apps::reserved_ids`).
    pub reserved_app_ids: Vec<String>,
    /// `/metrics` on the API port takes an admin's token (`metrics_auth`, given `api_bind`).
    pub metrics_need_token: bool,
    /// The data plane's response cache, for `DELETE /api/cache` (`None` when `ttl` is 0).
    pub cache: Option<Arc<Cache>>,
    /// The certificates the TLS listener serves, for `GET /api/tls` (`None` without HTTPS).
    pub certificates: Option<Arc<CertStore>>,
    /// The ACME thread (`acme_domains` set), for `GET /api/tls` and `POST /api/tls/revoke`.
    pub acme: Option<AcmeControl>,
    /// The data plane's figures for `/metrics` and `/api/status`, and the API's own counters.
    pub observe: ApiObserver,
}

impl ApiState {
    /// Loads every app from the database into a new route table.
    pub fn reload_routes(&self) -> Result<(), StoreError> {
        self.router.reload(|| self.store.all_apps())
    }

    /// Deletes apps left without endpoints and updates the routes; returns their names.
    pub fn purge(&self) -> Result<Vec<String>, StoreError> {
        let purged = self.store.purge_empty_apps()?;
        for name in &purged {
            log::info!("[purge] app {name} deleted: it had no endpoints left");
        }
        if !purged.is_empty() {
            self.reload_routes()?;
        }
        Ok(purged)
    }

    /// Reloads the routes after an endpoint changed the apps; a failure is logged, not answered,
    /// since the change itself is already stored.
    pub(super) fn routes_changed(&self) {
        if let Err(e) = self.reload_routes() {
            log::error!("api: the route table could not be reloaded: {e}");
        }
    }
}
