//! TLS to PostgreSQL, optional: `sslmode=require` in the database URL asks for it, and then the
//! server's certificate must chain to the system's trusted roots, or to the CA file the URL names
//! with `sslrootcert=/path/ca.pem` (PEM), and match the host name (or IP address) of the URL, like
//! libpq's `verify-full`. Without `sslmode=require` the connection is plain. rustls (with ring) does
//! the TLS, so no OpenSSL is needed.

use std::fs;
use std::path::Path;
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
    fn tls_is_asked_for_by_sslmode_and_needs_a_readable_root() {
        let plain: ::postgres::Config = "postgres://u@h/db".parse().unwrap();
        assert!(matches!(connector(&plain, None), Ok(Tls::Plain)));
        assert!(connector(&plain, Some(Path::new("/ca.pem"))).is_err());
        let tls: ::postgres::Config = "postgres://u@h/db?sslmode=require".parse().unwrap();
        assert!(connector(&tls, Some(Path::new("/nonexistent/ca.pem"))).unwrap_err().contains("nonexistent"));
    }
}
