//! The certificate set the configuration describes, loaded in one go so that a reload either takes
//! every file or none: `tls_dir` pairs first, then `[tls.NAME]` sections, then certificates ACME
//! stored (a later source wins a host name), and `tls_cert` as the default.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::error::CertError;
use super::pem::load_pair;
use super::store::{CertSet, CertStore};
use crate::config::Config;

/// Where ACME keeps the certificate for `domains` (named after the first one) and its key.
pub fn acme_files(acme_dir: &Path, domains: &[String]) -> Option<(PathBuf, PathBuf)> {
    let first = domains.first()?;
    Some((acme_dir.join(format!("{first}.crt")), acme_dir.join(format!("{first}.key"))))
}

/// Loads every certificate the configuration names; the first refused file fails the whole load.
pub fn load_configured(config: &Config, now: SystemTime) -> Result<CertSet, CertError> {
    let mut set = CertSet::default();
    if !config.tls_dir.as_os_str().is_empty() {
        for (cert, key) in dir_pairs(&config.tls_dir)? {
            set.insert(load_pair(&cert, &key, now)?, &[]);
        }
    }
    for site in &config.tls_sites {
        let loaded = load_pair(&site.cert, &site.key, now)?;
        for host in site.hosts.iter().filter(|h| !covers(&loaded.names, h)) {
            // Served as asked, but clients that check names will refuse it: say so at load time.
            log::warn!("[tls.{}] hosts: {host} is not a name in {}", site.name, site.cert.display());
        }
        set.insert(loaded, &site.hosts);
    }
    if let Some((cert, key)) = acme_files(&config.acme_dir, &config.acme_domains) {
        // Not there yet before the first order: the ACME thread installs it when it has one.
        if cert.exists() {
            match load_pair(&cert, &key, now) {
                Ok(loaded) => set.insert(loaded, &config.acme_domains),
                Err(e) => log::warn!("{e}; a new certificate will be ordered"),
            }
        }
    }
    if !config.tls_cert.as_os_str().is_empty() {
        set.set_default(load_pair(&config.tls_cert, &config.tls_key, now)?);
    }
    Ok(set)
}

/// Reloads the store from the configuration (SIGHUP): on any refused file the old set stays and
/// the error says which file and why.
pub fn reload(store: &CertStore, config: &Config, now: SystemTime) -> Result<(), CertError> {
    match load_configured(config, now) {
        Ok(set) => {
            store.replace(set);
            Ok(())
        }
        Err(e) => {
            log::error!("certificates not reloaded, the old ones stay: {e}");
            Err(e)
        }
    }
}

/// Whether a certificate with `names` is valid for `host` (exactly, or by a `*.` name one label up).
pub fn covers(names: &[String], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    names.iter().any(|name| {
        *name == host
            || name
                .strip_prefix("*.")
                .is_some_and(|parent| host.split_once('.').is_some_and(|(_, rest)| rest == parent))
    })
}

/// The `NAME.crt` + `NAME.key` pairs of a folder, sorted by name; a `.crt` without its key is an error.
fn dir_pairs(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>, CertError> {
    let entries = std::fs::read_dir(dir).map_err(|e| CertError::unreadable(dir, &e))?;
    let mut pairs = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| CertError::unreadable(dir, &e))?.path();
        if path.extension().is_some_and(|x| x == "crt") {
            let key = path.with_extension("key");
            if !key.exists() {
                return Err(CertError::new(
                    path.display().to_string(),
                    format!("has no key beside it (expected {})", key.display()),
                ));
            }
            pairs.push((path, key));
        }
    }
    pairs.sort();
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_hosts_exactly_or_one_label_under_a_wildcard() {
        let names = vec!["shop.test".to_string(), "*.wild.test".to_string()];
        assert!(covers(&names, "Shop.test"));
        assert!(covers(&names, "a.wild.test"));
        assert!(covers(&names, "*.wild.test"));
        assert!(!covers(&names, "wild.test"));
        assert!(!covers(&names, "a.b.wild.test"));
        assert!(!covers(&names, "www.shop.test"));
    }
}
