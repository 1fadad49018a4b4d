//! The `database` setting, typed: a SQLite file for one instance, or a PostgreSQL URL that several
//! instances share. The URL is checked when the file is read, so a typo names its line, and it never
//! shows its password (`postgres://user:***@host/db`) in a log line or an error.

use std::fmt;
use std::path::{Path, PathBuf};

/// Which database holds the management state: the `database` setting (or `PIBL_DATABASE_URL`).
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file: one instance.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://` or `postgresql://`): shared by several instances.
    Postgres(PgUrl),
}

/// A PostgreSQL connection URL; shown with its password hidden.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl(String);

impl PgUrl {
    /// The URL as written, password included: for connecting only, never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // postgres://user:secret@host/db -> postgres://user:***@host/db
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return f.write_str(url) };
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let redacted = match authority.rfind('@') {
            Some(at) => match authority[..at].find(':') {
                Some(colon) => format!("{}:***{}", &authority[..colon], &authority[at..]),
                None => authority.to_string(),
            },
            None => authority.to_string(),
        };
        let mut tail = rest[authority_end..].to_string();
        if let Some(i) = tail.find("password=") {
            let end = tail[i..].find('&').map_or(tail.len(), |e| i + e);
            tail.replace_range(i + "password=".len()..end, "***");
        }
        write!(f, "{}{redacted}{tail}", &url[..scheme_end])
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({self})")
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => write!(f, "{url}"),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "Sqlite({})", path.display()),
            Database::Postgres(url) => write!(f, "Postgres({url})"),
        }
    }
}

impl Database {
    /// `postgres://...` or `postgresql://...` selects PostgreSQL (checked here, so a typo fails at
    /// start-up with the key's line); anything else is a SQLite file name, kept as written.
    pub fn parse(value: &str) -> std::result::Result<Database, String> {
        let trimmed = value.trim();
        let lower = trimmed.to_ascii_lowercase();
        if !(lower.starts_with("postgres://") || lower.starts_with("postgresql://")) {
            if trimmed.is_empty() {
                return Err("has no value: give the SQLite file name (e.g. pibl.db) or a postgres:// URL".into());
            }
            return Ok(Database::Sqlite(PathBuf::from(value)));
        }
        let (bare, rootcert) = split_rootcert(trimmed);
        let config: ::postgres::Config = bare.parse().map_err(|e| {
            format!("is not a valid PostgreSQL URL ({e}); write postgres://user:password@host:port/dbname")
        })?;
        if config.get_dbname().is_none() {
            return Err("names no database: write postgres://user:password@host:port/dbname".into());
        }
        if rootcert.is_some() && config.get_ssl_mode() != ::postgres::config::SslMode::Require {
            return Err("has sslrootcert without sslmode=require".into());
        }
        Ok(Database::Postgres(PgUrl(trimmed.to_string())))
    }

    /// The typed form of the `database` setting as `Config` keeps it.
    pub fn from_setting(value: &Path) -> std::result::Result<Database, String> {
        Database::parse(&value.to_string_lossy())
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
    }
}
