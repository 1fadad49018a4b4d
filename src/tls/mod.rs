//! HTTPS: certificates and keys from PEM files, the certificate store chosen by SNI, the rustls
//! server and backend-client configurations, ACME (RFC 8555) certificates, and what the plain port
//! answers for HTTPS (ACME challenges, redirects). TLS sessions themselves belong to the data plane's
//! event loops; everything here is independent of their sockets.
//!
//! - `error`: [`error::CertError`], `file: what is wrong`;
//! - `pem`: a certificate chain and its key, checked and loaded;
//! - `store`: the SNI-chosen certificate set, swapped whole on reload;
//! - `sites`: the set the configuration describes (`tls_cert`, `[tls.NAME]`, `tls_dir`, ACME files);
//! - `server`: the listener's `ServerConfig` (TLS 1.2/1.3, ALPN `http/1.1`);
//! - `client`: the `ClientConfig` for `https://` backends;
//! - `challenge`: HTTP-01 tokens the ACME client published, for the plain port to serve;
//! - `plain`: the plain port's own answers (challenges, 308 to https) and the HSTS header;
//! - `acme`: getting, storing and renewing certificates from an ACME server;
//! - `https`: the parts a running pibl holds (store, ACME thread), started and stopped as one.
//!
//! Wiring: the runtime starts [`https::Https`] before the data plane and hands the server its
//! listener's `ServerConfig`, the backend `ClientConfig` and the challenges
//! (`crate::server::TlsPlane`); the event loops run one `rustls::ServerConnection` per TLS client
//! (`server::event_loop::transport`), set `X-Forwarded-Proto` and [`plain::hsts_header`], and answer
//! [`plain::plain_answer`] on the plain port.

pub mod acme;
pub mod challenge;
pub mod client;
pub mod error;
pub mod https;
pub mod pem;
pub mod plain;
pub mod server;
pub mod sites;
pub mod store;
