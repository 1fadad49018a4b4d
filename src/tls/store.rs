//! The certificates the TLS listener serves, chosen by the name the client asks for (SNI): exact
//! names first, then `*.parent` wildcards (one label deep), then the default for clients that send
//! no name or one nobody claims. The whole set is swapped at once (`arc-swap`) on reload or renewal:
//! a handshake reads one set, and connections already open keep the certificate they were given.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::pem::LoadedCert;

/// One immutable set of certificates by host name.
#[derive(Debug, Clone, Default)]
pub struct CertSet {
    exact: HashMap<String, Arc<LoadedCert>>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<String, Arc<LoadedCert>>,
    default: Option<Arc<LoadedCert>>,
}

impl CertSet {
    /// Serves `cert` for `hosts` (its own names when empty), replacing whatever served them before.
    /// The first certificate added is the default until [`CertSet::set_default`] names another; a
    /// certificate that replaces the default (a renewal of it) becomes the default, so clients
    /// without SNI are not left with an old, perhaps revoked, one.
    pub fn insert(&mut self, cert: LoadedCert, hosts: &[String]) {
        self.insert_shared(Arc::new(cert), hosts);
    }

    fn insert_shared(&mut self, cert: Arc<LoadedCert>, hosts: &[String]) {
        let hosts = if hosts.is_empty() { cert.names.clone() } else { hosts.to_vec() };
        let mut replaced_default = false;
        for host in hosts {
            let host = host.to_ascii_lowercase();
            let before = match host.strip_prefix("*.") {
                Some(parent) => self.wildcard.insert(parent.to_string(), Arc::clone(&cert)),
                None => self.exact.insert(host, Arc::clone(&cert)),
            };
            if let (Some(before), Some(default)) = (&before, &self.default) {
                replaced_default |= Arc::ptr_eq(before, default);
            }
        }
        if self.default.is_none() || replaced_default {
            self.default = Some(cert);
        }
    }

    /// Serves `cert` to clients without SNI and for names nothing else claims (and for its own names).
    pub fn set_default(&mut self, cert: LoadedCert) {
        let cert = Arc::new(cert);
        self.insert_shared(Arc::clone(&cert), &[]);
        self.default = Some(cert);
    }

    /// The certificate for a client that asked for `name` (`None`: it sent no SNI).
    pub fn lookup(&self, name: Option<&str>) -> Option<Arc<LoadedCert>> {
        let Some(name) = name else { return self.default.clone() };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(cert) = self.exact.get(&name) {
            return Some(Arc::clone(cert));
        }
        if let Some(cert) = name.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent)) {
            return Some(Arc::clone(cert));
        }
        self.default.clone()
    }

    /// Whether no certificate is in the set.
    pub fn is_empty(&self) -> bool {
        self.default.is_none()
    }

    /// Every distinct certificate in the set.
    pub fn certs(&self) -> Vec<Arc<LoadedCert>> {
        let mut all: Vec<Arc<LoadedCert>> = Vec::new();
        for cert in self.exact.values().chain(self.wildcard.values()).chain(self.default.iter()) {
            if !all.iter().any(|c| Arc::ptr_eq(c, cert)) {
                all.push(Arc::clone(cert));
            }
        }
        all
    }
}

/// The live set the listener resolves from; cheap to read on every handshake.
#[derive(Debug, Default)]
pub struct CertStore {
    current: ArcSwap<CertSet>,
}

impl CertStore {
    pub fn new(set: CertSet) -> CertStore {
        CertStore { current: ArcSwap::from_pointee(set) }
    }

    /// The set handshakes use now.
    pub fn current(&self) -> Arc<CertSet> {
        self.current.load_full()
    }

    /// Replaces the whole set (a reload that loaded every file successfully).
    pub fn replace(&self, set: CertSet) {
        self.current.store(Arc::new(set));
    }

    /// Serves `cert` for `hosts` from now on, keeping the rest of the set (a renewal).
    pub fn install(&self, cert: LoadedCert, hosts: &[String]) {
        self.current.rcu(|set| {
            let mut next = CertSet::clone(set);
            next.insert(cert.clone(), hosts);
            next
        });
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cert = self.current.load().lookup(client_hello.server_name());
        if cert.is_none() {
            log::debug!("TLS handshake for {:?}: no certificate to offer", client_hello.server_name());
        }
        cert.map(|c| Arc::clone(&c.key))
    }
}
