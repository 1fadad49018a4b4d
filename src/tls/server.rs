//! The TLS listener's rustls configuration: ring's default suites, TLS 1.3 and 1.2 only (rustls
//! has no older versions), certificates from the [`CertStore`] by SNI, ALPN `http/1.1`.

use std::sync::Arc;

use rustls::ServerConfig;

use super::pem::provider;
use super::store::CertStore;

/// The one ALPN protocol offered: pibl speaks HTTP/1.1 (a client offering only `h2` is refused with
/// the `no_application_protocol` alert, as RFC 7301 asks).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A server configuration that takes its certificates from `store` at every handshake.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}
