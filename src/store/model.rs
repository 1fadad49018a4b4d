//! What the store keeps and says, shared by both dialects and by the callers: the records (users,
//! apps, endpoints, execution-log entries), the error type with who is at fault, a cache purge as it
//! travels between instances, and a whole database's rows for `--copy-database`.

use std::fmt;

use crate::cache::Cache;

/// Why the database could not do what was asked.
#[derive(Debug)]
pub enum StoreError {
    Sqlite(rusqlite::Error),
    /// PostgreSQL answered with an error (a 500 for an API client).
    Postgres(::postgres::Error),
    /// The database cannot be reached now (down, restarting, connections exhausted): a 503 for an
    /// API client, and it passes by itself.
    Unavailable(String),
    /// The file or a side file is readable by other users, or cannot be created private.
    Private(super::private::PrivateError),
    /// The file was written by a newer pibl whose schema this one does not know.
    TooNew {
        found: i64,
        known: i64,
    },
    /// The file cannot be written and is at an older schema version, which only a write can
    /// migrate.
    ReadOnlyOutdated {
        found: i64,
        known: i64,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Sqlite(e) => write!(f, "database error: {e}"),
            StoreError::Postgres(e) => match e.as_db_error() {
                Some(db) => write!(f, "database error: {}: {}", db.code().code(), db.message()),
                None => write!(f, "database error: {e}"),
            },
            StoreError::Unavailable(why) => write!(f, "the database is unavailable: {why}"),
            StoreError::Private(e) => e.fmt(f),
            StoreError::TooNew { found, known } => write!(
                f,
                "the database has schema version {found}, newer than this pibl knows ({known}); use a newer pibl"
            ),
            StoreError::ReadOnlyOutdated { found, known } => write!(
                f,
                "the database is read-only and has schema version {found}; this pibl needs version {known}, \
                 and migrating it needs a write: make the file writable for one start"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// Whether the database is out of reach (as opposed to refusing one statement).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// Why the database cannot take writes now (its disk is full, its file read-only, or I/O
    /// fails: nothing is wrong with the request, and it may work later), in words for an API
    /// client; `None` for any other error.
    pub fn write_failure(&self) -> Option<&'static str> {
        use rusqlite::ErrorCode::{CannotOpen, DiskFull, ReadOnly, SystemIoFailure};
        let StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) = self else { return None };
        match e.code {
            DiskFull => Some("the disk holding the database is full"),
            ReadOnly => Some("the database is read-only (its file or its file system cannot be written)"),
            CannotOpen | SystemIoFailure => Some("the database file cannot be written (an I/O error)"),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// How hard each commit is pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: an acknowledged change survives a crash of the process or the machine.
    Full,
    /// `synchronous=NORMAL`: survives a crash of the process; the last commits may be lost with the
    /// machine. For the batched execution log.
    Normal,
}

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub password_hash: String,
    pub created_ms: u64,
}

/// One backend server of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: i64,
    pub host: String,
    pub port: u16,
    pub statuspath: String,
}

/// An app with its owner and endpoints. `pk` changes when an app is deleted and its name taken again,
/// so records about the old app never reach the new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub pk: i64,
    pub name: String,
    pub owner_id: i64,
    pub owner: String,
    pub endpoints: Vec<Endpoint>,
}

/// One execution-log record: a proxied request, a management action, or a health change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogEntry {
    /// Set when read back; ignored on insert.
    pub id: i64,
    pub app_pk: i64,
    pub time_ms: u64,
    /// `request`, `action` or `health`.
    pub kind: String,
    /// Who: the client address of a request, the user's e-mail for an action.
    pub actor: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub status: Option<u16>,
    pub endpoint: Option<String>,
    pub duration_ms: Option<f64>,
    /// What happened, for actions and health changes.
    pub detail: Option<String>,
}

impl LogEntry {
    /// A management action by `actor` on an app.
    pub fn action(app_pk: i64, time_ms: u64, actor: &str, detail: String) -> LogEntry {
        LogEntry {
            app_pk,
            time_ms,
            kind: "action".into(),
            actor: Some(actor.into()),
            detail: Some(detail),
            ..LogEntry::default()
        }
    }
}

/// What adding an endpoint did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddEndpoint {
    /// Added (the app was created first when `created`).
    Added { app: App, created: bool },
    /// The app belongs to someone else.
    NotYours,
    /// The app already has this host, port and status path.
    Duplicate,
}

/// What deleting an app or an endpoint found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    NotFound,
    NotYours,
}

/// A time in ms as the databases store it.
pub(super) fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What one cache purge removed: everything, one host's entry of a URL, a URL on every host, every
/// answer with a tag, or every URL under a path prefix. A tag or prefix purge by an app's owner names
/// the apps whose answers it may reach (`apps`); an admin's reaches all (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachePurge {
    All,
    Key { host: String, target: String },
    Target(String),
    Tag { tag: String, apps: Option<Vec<String>> },
    Prefix { prefix: String, apps: Option<Vec<String>> },
}

/// One purge as a row of `cache_purges`: what kind, and its host, target and apps columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeColumns {
    pub kind: &'static str,
    pub host: Option<String>,
    pub target: Option<String>,
    /// App names joined by commas (app ids hold none).
    pub apps: Option<String>,
}

impl CachePurge {
    /// Removes the matching entries from `cache`; returns how many went.
    pub fn apply(&self, cache: &Cache) -> usize {
        let within = |apps: &Option<Vec<String>>, entry: &crate::cache::Entry| {
            apps.as_ref().is_none_or(|apps| entry.origin().app.as_ref().is_some_and(|app| apps.contains(app)))
        };
        match self {
            CachePurge::All => cache.purge_all(),
            CachePurge::Key { host, target } => cache.invalidate(&Cache::key(Some(host), target)),
            CachePurge::Target(target) => {
                cache.purge_matching(|key| key.split_once(' ').is_some_and(|(_, t)| t == target))
            }
            CachePurge::Tag { tag, apps } => cache.purge_where(|_, entry| entry.has_tag(tag) && within(apps, entry)),
            CachePurge::Prefix { prefix, apps } => cache
                .purge_where(|key, entry| Cache::key_target(key).starts_with(prefix.as_str()) && within(apps, entry)),
        }
    }

    /// The purge as the `cache_purges` table keeps it.
    pub fn columns(&self) -> PurgeColumns {
        let joined = |apps: &Option<Vec<String>>| apps.as_ref().map(|a| a.join(","));
        let row = |kind, host: Option<&String>, target: Option<&String>, apps| PurgeColumns {
            kind,
            host: host.cloned(),
            target: target.cloned(),
            apps,
        };
        match self {
            CachePurge::All => row("url", None, None, None),
            CachePurge::Key { host, target } => row("url", Some(host), Some(target), None),
            CachePurge::Target(target) => row("url", None, Some(target), None),
            CachePurge::Tag { tag, apps } => row("tag", None, Some(tag), joined(apps)),
            CachePurge::Prefix { prefix, apps } => row("prefix", None, Some(prefix), joined(apps)),
        }
    }

    /// The purge a `cache_purges` row describes; a kind this pibl does not know (written by a newer
    /// one) purges everything, which is never wrong for a cache, only slower.
    pub fn from_columns(kind: &str, host: Option<String>, target: Option<String>, apps: Option<String>) -> CachePurge {
        let apps = apps.map(|a| a.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect());
        match (kind, host, target) {
            ("url", Some(host), Some(target)) => CachePurge::Key { host, target },
            ("url", None, Some(target)) => CachePurge::Target(target),
            ("tag", _, Some(tag)) => CachePurge::Tag { tag, apps },
            ("prefix", _, Some(prefix)) => CachePurge::Prefix { prefix, apps },
            _ => CachePurge::All,
        }
    }
}

/// The tables copied, in an order that respects the foreign keys.
pub const TABLES: &[&str] = &["settings", "users", "apps", "endpoints", "app_logs", "login_failures", "blocked"];

/// An app row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRow {
    pub pk: i64,
    pub name: String,
    pub owner_id: i64,
    pub created_ms: i64,
}

/// An endpoint row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRow {
    pub id: i64,
    pub app_pk: i64,
    pub host: String,
    pub port: i64,
    pub statuspath: String,
    pub created_ms: i64,
}

/// Every row of a database, read in one go.
#[derive(Debug, Clone, Default)]
pub struct Dump {
    pub settings: Vec<(String, String)>,
    pub users: Vec<User>,
    pub apps: Vec<AppRow>,
    pub endpoints: Vec<EndpointRow>,
    pub logs: Vec<LogEntry>,
    /// (email, count, last_ms)
    pub failures: Vec<(String, i64, i64)>,
    /// (email, since_ms, until_ms)
    pub blocked: Vec<(String, i64, i64)>,
}
