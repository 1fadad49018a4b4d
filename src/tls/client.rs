//! The rustls client configuration for `https://` backends: certificates are checked against the
//! system roots or a `backend_ca` file, or not at all with `backend_tls_verify = off` (lab backends
//! with self-signed certificates; logged as a warning at start-up).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::error::CertError;
use super::pem::{certs_from_pem, provider};
use super::server::ALPN_HTTP11;

/// Where backends' certificates are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendTrust<'a> {
    /// The operating system's roots (`/etc/ssl/certs` on Debian).
    System,
    /// The certificates in this PEM file (`backend_ca`).
    File(&'a Path),
    /// No check (`backend_tls_verify = off`).
    Off,
}

impl<'a> BackendTrust<'a> {
    /// From `backend_ca` (empty = system) and `backend_tls_verify`.
    pub fn from_keys(backend_ca: &'a Path, verify: bool) -> BackendTrust<'a> {
        match (verify, backend_ca.as_os_str().is_empty()) {
            (false, _) => BackendTrust::Off,
            (true, true) => BackendTrust::System,
            (true, false) => BackendTrust::File(backend_ca),
        }
    }
}

/// The configuration every TLS connection to a backend uses; SNI is on (rustls' default).
pub fn backend_client_config(trust: BackendTrust<'_>) -> Result<Arc<ClientConfig>, CertError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CertError::new("rustls", e.to_string()))?;
    let mut config = match trust {
        BackendTrust::Off => {
            log::warn!(
                "backend_tls_verify = off: https:// backends' certificates are not checked; \
                 anyone on the path to them can read and change the traffic"
            );
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider))).with_no_client_auth()
        }
        BackendTrust::File(path) => {
            let text = std::fs::read(path).map_err(|e| CertError::unreadable(path, &e))?;
            let label = path.display().to_string();
            let mut roots = RootCertStore::empty();
            for cert in certs_from_pem(&text, &label)? {
                roots
                    .add(cert)
                    .map_err(|e| CertError::new(&label, format!("holds an unusable CA certificate: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        BackendTrust::System => builder.with_root_certificates(system_roots()?).with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// A TLS client connection to the `https://` backend `host` (the event loops' and the cache
/// refresher's alike): SNI and certificate checks by `host`, trust from `config`, which is `None`
/// when pibl started without any `https://` backend (one added by a reload needs a restart).
pub fn backend_connection(config: Option<&Arc<ClientConfig>>, host: &str) -> Result<ClientConnection, String> {
    let config = config.ok_or("is https:// but pibl has no TLS client configuration (added by a reload: restart)")?;
    let name = backend_server_name(host).map_err(|e| e.to_string())?;
    ClientConnection::new(Arc::clone(config), name).map_err(|e| format!("TLS: {e}"))
}

/// The name a backend is asked for (SNI) and its certificate is checked against: a DNS name or an
/// IP address.
pub fn backend_server_name(host: &str) -> Result<ServerName<'static>, CertError> {
    ServerName::try_from(host.to_string())
        .map_err(|_| CertError::new(host, "is not a name a TLS certificate can be checked against"))
}

fn system_roots() -> Result<RootCertStore, CertError> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        log::warn!("system root certificates: {e}");
    }
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(CertError::new(
            "system root certificates",
            "none found (install the ca-certificates package, or set backend_ca)",
        ));
    }
    Ok(roots)
}

/// `backend_tls_verify = off`: any certificate is accepted, but the handshake's signatures are still
/// checked by the provider, so the session keys are at least bound to the certificate shown.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
