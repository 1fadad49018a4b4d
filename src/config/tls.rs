//! HTTPS settings that are more than one key: `[tls.NAME]` sections (one certificate and key per
//! site, with the host names it serves) and the `acme_domains` list.

use std::path::PathBuf;

use ini::Properties;

use super::error::ConfigError;
use super::scan::{section_error, ScannedLine};
use super::values::render_path;

/// The keys a `[tls.NAME]` section may hold.
pub const TLS_SITE_KEYS: &[&str] = &["cert", "key", "hosts"];

/// Documentation written after the routes by `to_ini`, with a commented example site.
pub(super) const TLS_HELP: &str = "
# --- Certificates by host name (SNI) ---
# A [tls.NAME] section adds one certificate for the TLS listener; clients that name one of its
# hosts (SNI) get it, the others get tls_cert. Keys of a site:
#   cert = /etc/pibl/shop.crt             PEM certificate chain, the site's certificate first
#   key = /etc/pibl/shop.key              its PEM private key (PKCS#8, PKCS#1 or SEC1)
#   hosts = shop.example.com, *.shop.example.com
#                                         names it serves; empty = the names in the certificate
# Example:
# [tls.shop]
# cert = /etc/pibl/shop.crt
# key = /etc/pibl/shop.key
";

/// One `[tls.NAME]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSite {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Lower-case host names, `*.example.com` wildcards allowed; empty = the certificate's own names.
    pub hosts: Vec<String>,
}

/// Reads one `[tls.NAME]` section.
pub(super) fn parse_section(
    section: &str,
    props: &Properties,
    lines: &[ScannedLine],
    file: &str,
) -> Result<TlsSite, ConfigError> {
    let name = section.trim_start_matches("tls.").to_string();
    let invalid = section_error(file, lines, section);
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(invalid("", "a site name is letters, digits, - and _ (e.g. [tls.shop])".into()));
    }
    for (key, _) in props.iter() {
        if !TLS_SITE_KEYS.contains(&key) {
            return Err(invalid(key, format!("unknown key; [tls.NAME] keys are {}", TLS_SITE_KEYS.join(", "))));
        }
    }
    let get = |key: &str| props.get(key).map(str::trim).filter(|v| !v.is_empty());
    let cert = get("cert").ok_or_else(|| invalid("", "has no cert (a PEM certificate file)".into()))?;
    let key = get("key").ok_or_else(|| invalid("", "has no key (a PEM private key file)".into()))?;
    let hosts = parse_host_list(get("hosts").unwrap_or("")).map_err(|e| invalid("hosts", e))?;
    Ok(TlsSite { name, cert: PathBuf::from(cert), key: PathBuf::from(key), hosts })
}

/// Writes a site back as its section.
pub(super) fn render(site: &TlsSite) -> String {
    let mut out =
        format!("\n[tls.{}]\ncert = {}\nkey = {}\n", site.name, render_path(&site.cert), render_path(&site.key));
    if !site.hosts.is_empty() {
        out.push_str(&format!("hosts = {}\n", site.hosts.join(", ")));
    }
    out
}

/// A comma-separated list of DNS names (`example.com, *.example.com`), lower-cased; `wildcards` says
/// whether `*.` names are allowed (ACME's HTTP-01 cannot prove one).
pub(super) fn parse_names(v: &str, wildcards: bool) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let lower = name.to_ascii_lowercase();
        let bare = match lower.strip_prefix("*.") {
            Some(_) if !wildcards => {
                return Err(format!("{name:?}: a wildcard name cannot be proven over HTTP-01; list each name"))
            }
            Some(rest) => rest,
            None => lower.as_str(),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if bare.len() > 253 || !bare.split('.').all(label_ok) {
            return Err(format!("{name:?} is not a DNS name (letters, digits, - and dots, e.g. shop.example.com)"));
        }
        if !names.contains(&lower) {
            names.push(lower);
        }
    }
    Ok(names)
}

fn parse_host_list(v: &str) -> Result<Vec<String>, String> {
    parse_names(v, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_lower_cased() {
        assert_eq!(
            parse_names("Shop.Example.com, *.a.b, shop.example.com", true).unwrap(),
            ["shop.example.com", "*.a.b"]
        );
        assert!(parse_names("*.a.b", false).unwrap_err().contains("wildcard"));
        assert!(parse_names("a..b", true).unwrap_err().contains("not a DNS name"));
        assert!(parse_names("-a.b", true).is_err());
        assert!(parse_names("a b", true).is_err());
        assert_eq!(parse_names("", false).unwrap(), Vec::<String>::new());
    }
}
