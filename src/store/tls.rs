//! TLS to PostgreSQL, optional: `sslmode=require` in the database URL asks for it, and then the
//! server's certificate must chain to the system's trusted roots, or to the CA file the URL names
//! with `sslrootcert=/path/ca.pem` (PEM), and match the host name (or IP address) of the URL, like
//! libpq's `verify-full`. Without `sslmode=require` the connection is plain. rustls (with ring) does
//! the TLS, so no OpenSSL is needed.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::postgres::config::SslMode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How connections to the database are made.
#[derive(Clone)]
pub enum Tls {
    Plain,
    Verified(MakeRustlsConnect),
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tls::Plain => "Plain",
            Tls::Verified(_) => "Verified",
        })
    }
}

/// The URL without its `sslrootcert=` parameter (which the client library does not know), and the
/// file that parameter names.
pub fn split_rootcert(url: &str) -> (String, Option<PathBuf>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_string(), None) };
    let mut rootcert = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("sslrootcert=") {
            Some(path) => {
                rootcert = Some(PathBuf::from(path));
                false
            }
            None => !pair.is_empty(),
        })
        .collect();
    let url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    (url, rootcert)
}

/// The connector for `config`: plain unless it asks for TLS. Fails when TLS is asked for and no
/// trusted root can be loaded, or `sslrootcert` comes without `sslmode=require`.
pub fn connector(config: &::postgres::Config, rootcert: Option<&Path>) -> Result<Tls, String> {
    if config.get_ssl_mode() != SslMode::Require {
        if rootcert.is_some() {
            return Err("sslrootcert is only read with sslmode=require".into());
        }
        return Ok(Tls::Plain);
    }
    let mut roots = RootCertStore::empty();
    match rootcert {
        Some(path) => {
            let pem = fs::read(path).map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("sslrootcert {}: not PEM certificates: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    if roots.is_empty() {
        return Err("sslmode=require, but no trusted root certificate was found (give sslrootcert=/path/ca.pem)".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Tls::Verified(MakeRustlsConnect::new(tls)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootcert_is_taken_out_of_the_url() {
        let (url, ca) = split_rootcert("postgres://u@h/db?sslmode=require&sslrootcert=/etc/pibl/ca.pem&x=1");
        assert_eq!(
            (url.as_str(), ca),
            ("postgres://u@h/db?sslmode=require&x=1", Some(PathBuf::from("/etc/pibl/ca.pem")))
        );
        assert_eq!(split_rootcert("postgres://u@h/db").0, "postgres://u@h/db");
        assert_eq!(split_rootcert("postgres://u@h/db?sslrootcert=/a").0, "postgres://u@h/db");
        let plain: ::postgres::Config = "postgres://u@h/db".parse().unwrap();
        assert!(matches!(connector(&plain, None), Ok(Tls::Plain)));
        assert!(connector(&plain, Some(Path::new("/ca.pem"))).is_err());
        let tls: ::postgres::Config = "postgres://u@h/db?sslmode=require".parse().unwrap();
        assert!(connector(&tls, Some(Path::new("/nonexistent/ca.pem"))).unwrap_err().contains("nonexistent"));
    }
}
