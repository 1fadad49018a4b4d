//! One certificate chain and its private key from PEM, checked before it may be served: the file
//! holds a certificate, the key parses and belongs to it, and the certificate is valid now. Parsing is
//! `rustls-pki-types`' PEM reader and `x509-parser`; keys load through rustls' ring provider.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use super::error::CertError;

/// How far in the future a certificate's start may lie (clock skew between pibl and the CA).
const NOT_BEFORE_SKEW: Duration = Duration::from_secs(300);

/// A checked certificate chain with its signing key, and what the leaf says about itself.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// The leaf's DNS names (subjectAltName, else its common name), lower-cased.
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The leaf's serial number in lower-case hex without separators (as ACME servers and
    /// `openssl x509 -serial` print it).
    pub serial: String,
}

impl LoadedCert {
    /// The leaf certificate, as sent to clients.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.key.cert[0]
    }

    /// Whole days until it expires (negative once expired).
    pub fn days_left(&self, now: SystemTime) -> i64 {
        match self.not_after.duration_since(now) {
            Ok(left) => (left.as_secs() / 86_400) as i64,
            Err(past) => -((past.duration().as_secs() / 86_400) as i64) - 1,
        }
    }
}

/// Reads and checks the pair in `cert` and `key` (PEM files).
pub fn load_pair(cert: &Path, key: &Path, now: SystemTime) -> Result<LoadedCert, CertError> {
    let cert_pem = std::fs::read(cert).map_err(|e| CertError::unreadable(cert, &e))?;
    let key_pem = std::fs::read(key).map_err(|e| CertError::unreadable(key, &e))?;
    pair_from_pem(&cert_pem, &cert.display().to_string(), &key_pem, &key.display().to_string(), now)
}

/// Checks a pair given as PEM text; the labels name the files in errors.
pub fn pair_from_pem(
    cert_pem: &[u8],
    cert_label: &str,
    key_pem: &[u8],
    key_label: &str,
    now: SystemTime,
) -> Result<LoadedCert, CertError> {
    let chain = certs_from_pem(cert_pem, cert_label)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => CertError::new(
            key_label,
            "holds no private key (expected -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)",
        ),
        e => CertError::new(key_label, format!("is not a valid PEM key: {e}")),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::new(key_label, format!("the key cannot be used: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    if certified.keys_match().is_err() {
        return Err(CertError::new(key_label, format!("does not match the certificate in {cert_label}")));
    }
    let leaf = Leaf::parse(&certified.cert[0], cert_label)?;
    if leaf.not_after < now {
        return Err(CertError::new(cert_label, format!("expired on {}", httpdate::fmt_http_date(leaf.not_after))));
    }
    // A certificate issued this very second (Pebble does not backdate) or a few minutes ahead of a
    // slightly slow clock is fine; one that starts later is not.
    if leaf.not_before > now + NOT_BEFORE_SKEW {
        return Err(CertError::new(
            cert_label,
            format!("is not valid before {}", httpdate::fmt_http_date(leaf.not_before)),
        ));
    }
    Ok(LoadedCert {
        key: Arc::new(certified),
        names: leaf.names,
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        serial: leaf.serial,
    })
}

/// Every certificate in a PEM text, in order; at least one.
pub fn certs_from_pem(text: &[u8], label: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain = CertificateDer::pem_slice_iter(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::new(label, format!("is not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(CertError::new(label, "holds no certificate (expected -----BEGIN CERTIFICATE-----)"));
    }
    Ok(chain)
}

/// The ring provider, the one every TLS configuration of pibl uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the leaf certificate says about itself.
struct Leaf {
    names: Vec<String>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: String,
}

impl Leaf {
    fn parse(der: &CertificateDer<'_>, label: &str) -> Result<Leaf, CertError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CertError::new(label, format!("its first certificate cannot be parsed: {e}")))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        if names.is_empty() {
            names.extend(
                cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase),
            );
        }
        let time = |secs: i64| UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
        let validity = cert.validity();
        let hex: String = cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect();
        let serial = match hex.trim_start_matches('0') {
            "" => "0".to_string(),
            digits => digits.to_string(),
        };
        Ok(Leaf {
            names,
            not_before: time(validity.not_before.timestamp()),
            not_after: time(validity.not_after.timestamp()),
            serial,
        })
    }
}
