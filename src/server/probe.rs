//! How the management API watches a running data plane: a [`Probe`] holds the server's state
//! weakly, and the [`ApiObserver`] keeps that probe beside the API's own counters, for `/metrics`
//! and `/api/status`.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock, Weak};

use crate::server::shared::Shared;

/// A handle on a running server's state for metrics and status pages. It holds the state weakly,
/// so a probe kept by the API never keeps a stopped server alive.
#[derive(Clone)]
pub struct Probe {
    shared: Weak<Shared>,
}

impl Probe {
    pub(super) fn new(shared: &Arc<Shared>) -> Probe {
        Probe { shared: Arc::downgrade(shared) }
    }

    /// The server's state, unless it has stopped.
    pub fn shared(&self) -> Option<Arc<Shared>> {
        self.shared.upgrade()
    }
}

/// What the management API adds to the data plane's figures.
#[derive(Default)]
pub struct ApiObserver {
    probe: OnceLock<Probe>,
    /// 401 answers of the API: wrong passwords and missing, expired or invalid tokens.
    pub auth_failures: AtomicU64,
    /// `metrics_bind` is set: the API port answers `/metrics` with 404.
    pub metrics_elsewhere: AtomicBool,
}

impl ApiObserver {
    /// Connects the API to the data plane it reports on (once, at start-up).
    pub fn attach(&self, probe: Probe) {
        let _ = self.probe.set(probe);
    }

    pub fn probe(&self) -> Option<&Probe> {
        self.probe.get()
    }
}
