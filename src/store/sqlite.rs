//! The SQLite implementation of the store: the embedded default, one file, one connection per
//! [`SqliteStore`] behind a mutex, WAL mode, foreign keys on, migrations recorded in `schema_version`.
//! All SQLite SQL lives here; `postgres.rs` holds the same operations in PostgreSQL's dialect.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};

use super::model::{ms, AddEndpoint, App, Durability, Endpoint, LogEntry, Removal, Result, StoreError, User};
use super::private;

/// How long a connection waits for another one's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Schema steps, applied in order; entry N brings the schema to version N + 1. Never edit one that
/// has shipped: add a new step.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the seed's model (users, apps, endpoints, execution logs) plus lock-out state and settings.
    "CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE users (
        id            INTEGER PRIMARY KEY,
        email         TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        created_ms    INTEGER NOT NULL
    );
    CREATE TABLE apps (
        pk         INTEGER PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        owner_id   INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX apps_owner ON apps(owner_id);
    CREATE TABLE endpoints (
        id         INTEGER PRIMARY KEY,
        app_pk     INTEGER NOT NULL REFERENCES apps(pk) ON DELETE CASCADE,
        host       TEXT NOT NULL,
        port       INTEGER NOT NULL,
        statuspath TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX endpoints_app ON endpoints(app_pk);
    CREATE TABLE app_logs (
        id          INTEGER PRIMARY KEY,
        app_pk      INTEGER NOT NULL REFERENCES apps(pk) ON DELETE CASCADE,
        time_ms     INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        actor       TEXT,
        method      TEXT,
        path        TEXT,
        status      INTEGER,
        endpoint    TEXT,
        duration_ms REAL,
        detail      TEXT
    );
    CREATE INDEX app_logs_app ON app_logs(app_pk, id);
    CREATE TABLE login_failures (
        email   TEXT PRIMARY KEY,
        count   INTEGER NOT NULL,
        last_ms INTEGER NOT NULL
    );
    CREATE TABLE blocked (
        email    TEXT PRIMARY KEY,
        since_ms INTEGER NOT NULL,
        until_ms INTEGER NOT NULL
    );",
    // 2: cache purges. Read only where instances share a PostgreSQL database; here so both dialects
    // stay at the same version and the copy tool can compare them.
    "CREATE TABLE cache_purges (
        id     INTEGER PRIMARY KEY,
        at_ms  INTEGER NOT NULL,
        host   TEXT,
        target TEXT
    );",
    // 3: purges by tag and by path prefix (`kind`), and the apps an owner's purge may reach.
    "ALTER TABLE cache_purges ADD COLUMN kind TEXT NOT NULL DEFAULT 'url';
    ALTER TABLE cache_purges ADD COLUMN apps TEXT;",
];

/// One connection to a SQLite file.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    log_retention: usize,
    /// Opened read-only because the file or its file system cannot be written: reads work, every
    /// write fails with `SQLITE_READONLY` (a 503 for an API client).
    read_only: bool,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("log_retention", &self.log_retention)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `path`; `log_retention` is how many
    /// execution-log entries each app keeps.
    ///
    /// A file that exists but cannot be written (a file system mounted read-only, or a file this
    /// user may not write) is opened read-only, with a warning, rather than refused: the proxy then
    /// routes the apps the file holds, logins work, and the API answers changes with 503 until the
    /// file is writable again (and pibl restarted). A management database that cannot take writes
    /// must not take the sites behind pibl down.
    pub fn open(path: &Path, durability: Durability, log_retention: usize) -> Result<SqliteStore> {
        if let Some(why) = not_writable(path) {
            let store = SqliteStore::open_read_only(path, log_retention)?;
            log::warn!(
                "database {}: {why}; opened READ-ONLY: the proxy routes the apps it holds and logins work, but \
                 API changes (registrations, apps, endpoints), execution logs and lock-out records fail \
                 (503 for API clients) until it is writable again and pibl is restarted",
                path.display()
            );
            return Ok(store);
        }
        // Created `0600` (SQLite gives its side files the same mode); one that other users can read is
        // refused, since it holds password hashes and may hold the signing secret.
        private::create(path).map_err(StoreError::Private)?;
        private::check_database(path).map_err(StoreError::Private)?;
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!("database {}: journal mode is {mode}, not WAL", path.display());
        }
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        // The side files exist now; made by an older pibl or another tool, they may not be private.
        private::check_database(path).map_err(StoreError::Private)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            log_retention: log_retention.max(1),
            read_only: false,
        })
    }

    /// Opens the existing file at `path` for reading only. A WAL database reads through its `-shm`
    /// file, which a read-only file system cannot give it unless an unclean stop left one there; so
    /// when a plain read-only open cannot read, the file is opened as immutable (no locks, no
    /// `-shm`), which is sound while nothing can write it.
    fn open_read_only(path: &Path, log_retention: usize) -> Result<SqliteStore> {
        private::check_database(path).map_err(StoreError::Private)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let plain = Connection::open_with_flags(path, flags)
            .map_err(StoreError::from)
            .and_then(|conn| schema_version_of(&conn).map(|version| (conn, version)));
        let (conn, version) = match plain {
            Ok(opened) => opened,
            Err(_) => {
                let wal = private::side_file(path, "-wal");
                if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
                    log::warn!(
                        "database {}: {} holds changes not yet copied into the database, which cannot be \
                         replayed on a read-only file system; they are kept, and shown again once it is writable",
                        path.display(),
                        wal.display()
                    );
                }
                let conn = Connection::open_with_flags(format!("file:{}?immutable=1", uri_path(path)), flags)?;
                let version = schema_version_of(&conn)?;
                (conn, version)
            }
        };
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew { found: version, known });
        }
        if version < known {
            return Err(StoreError::ReadOnlyOutdated { found: version, known });
        }
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            log_retention: log_retention.max(1),
            read_only: true,
        })
    }

    /// Whether the file was opened read-only (see [`SqliteStore::open`]).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Another connection to the same file (for a thread that writes on its own); read-only again,
    /// without a second warning, when this one is.
    pub fn another(&self, durability: Durability) -> Result<SqliteStore> {
        if self.read_only {
            return SqliteStore::open_read_only(&self.path, self.log_retention);
        }
        SqliteStore::open(&self.path, durability, self.log_retention)
    }

    /// The schema version the file is at.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self.conn.lock().query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |r| r.get(0))?)
    }

    // ----- settings -----

    /// The stored value of `key`, storing `make()` first when there is none (first start).
    pub fn setting_or_insert(&self, key: &str, make: impl FnOnce() -> String) -> Result<String> {
        let conn = self.conn.lock();
        if let Some(v) = conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).optional()? {
            return Ok(v);
        }
        conn.execute("INSERT OR IGNORE INTO settings (key, value) VALUES (?1, ?2)", params![key, make()])?;
        Ok(conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0))?)
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        let conn = self.conn.lock();
        Ok(conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        let conn = self.conn.lock();
        conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)", params![key, value])?;
        Ok(())
    }

    pub fn delete_setting(&self, key: &str) -> Result<bool> {
        let conn = self.conn.lock();
        Ok(conn.execute("DELETE FROM settings WHERE key = ?1", [key])? > 0)
    }

    // ----- users -----

    /// Registers a user; `None` when the e-mail address is taken (compared without case).
    pub fn create_user(&self, email: &str, password_hash: &str, now_ms: u64) -> Result<Option<User>> {
        let conn = self.conn.lock();
        let n = conn.execute(
            "INSERT OR IGNORE INTO users (email, password_hash, created_ms) VALUES (?1, ?2, ?3)",
            params![email, password_hash, ms(now_ms)],
        )?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(User {
            id: conn.last_insert_rowid(),
            email: email.to_string(),
            password_hash: password_hash.to_string(),
            created_ms: now_ms,
        }))
    }

    pub fn user(&self, email: &str) -> Result<Option<User>> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row("SELECT id, email, password_hash, created_ms FROM users WHERE email = ?1", [email], |r| {
                Ok(User {
                    id: r.get(0)?,
                    email: r.get(1)?,
                    password_hash: r.get(2)?,
                    created_ms: r.get::<_, i64>(3)?.max(0) as u64,
                })
            })
            .optional()?)
    }

    /// Deletes a user with their apps, endpoints and logs; returns the names of the apps deleted.
    pub fn delete_user(&self, user_id: i64) -> Result<Vec<String>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let names = {
            let mut stmt = tx.prepare("SELECT name FROM apps WHERE owner_id = ?1 ORDER BY name")?;
            let rows = stmt.query_map([user_id], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        tx.execute("DELETE FROM users WHERE id = ?1", [user_id])?;
        tx.commit()?;
        Ok(names)
    }

    // ----- apps and endpoints -----

    /// The app called `name`, with its endpoints.
    pub fn app(&self, name: &str) -> Result<Option<App>> {
        let conn = self.conn.lock();
        load_app(&conn, name)
    }

    /// Every app of `user_id`, by name.
    pub fn apps_of(&self, user_id: i64) -> Result<Vec<App>> {
        let conn = self.conn.lock();
        load_apps(&conn, Some(user_id))
    }

    /// Every app, by name (what the router serves).
    pub fn all_apps(&self) -> Result<Vec<App>> {
        let conn = self.conn.lock();
        load_apps(&conn, None)
    }

    /// Adds an endpoint to `name` for `user`, creating the app when it is new; logs the action.
    pub fn add_endpoint(&self, user: &User, name: &str, ep: &Endpoint, now_ms: u64) -> Result<AddEndpoint> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: Option<(i64, i64)> = tx
            .query_row("SELECT pk, owner_id FROM apps WHERE name = ?1", [name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (pk, created) = match existing {
            Some((_, owner)) if owner != user.id => return Ok(AddEndpoint::NotYours),
            Some((pk, _)) => (pk, false),
            None => {
                tx.execute(
                    "INSERT INTO apps (name, owner_id, created_ms) VALUES (?1, ?2, ?3)",
                    params![name, user.id, ms(now_ms)],
                )?;
                (tx.last_insert_rowid(), true)
            }
        };
        let duplicate: Option<i64> = tx
            .query_row(
                "SELECT id FROM endpoints WHERE app_pk = ?1 AND host = ?2 AND port = ?3 AND statuspath = ?4",
                params![pk, ep.host, ep.port, ep.statuspath],
                |r| r.get(0),
            )
            .optional()?;
        if duplicate.is_some() {
            return Ok(AddEndpoint::Duplicate);
        }
        tx.execute(
            "INSERT INTO endpoints (app_pk, host, port, statuspath, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![pk, ep.host, ep.port, ep.statuspath, ms(now_ms)],
        )?;
        let id = tx.last_insert_rowid();
        if created {
            insert_log(&tx, &LogEntry::action(pk, now_ms, &user.email, "created the app".into()))?;
        }
        let detail = format!("added endpoint {id} ({}:{}, status path {})", ep.host, ep.port, ep.statuspath);
        insert_log(&tx, &LogEntry::action(pk, now_ms, &user.email, detail))?;
        trim_logs(&tx, pk, self.log_retention)?;
        let app = load_app(&tx, name)?.ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))?;
        tx.commit()?;
        Ok(AddEndpoint::Added { app, created })
    }

    /// Deletes the app `name` of `user_id` with its endpoints and logs.
    pub fn delete_app(&self, user_id: i64, name: &str) -> Result<Removal> {
        let conn = self.conn.lock();
        let owner: Option<i64> =
            conn.query_row("SELECT owner_id FROM apps WHERE name = ?1", [name], |r| r.get(0)).optional()?;
        match owner {
            None => Ok(Removal::NotFound),
            Some(owner) if owner != user_id => Ok(Removal::NotYours),
            Some(_) => {
                conn.execute("DELETE FROM apps WHERE name = ?1 AND owner_id = ?2", params![name, user_id])?;
                Ok(Removal::Removed)
            }
        }
    }

    /// Deletes one endpoint of an app of `user`; logs the action. With `Removed` comes the app as
    /// the deletion left it (a purge may delete it right after).
    pub fn delete_endpoint(
        &self,
        user: &User,
        name: &str,
        endpoint_id: i64,
        now_ms: u64,
    ) -> Result<(Removal, Option<App>)> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let app: Option<(i64, i64)> = tx
            .query_row("SELECT pk, owner_id FROM apps WHERE name = ?1", [name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let pk = match app {
            None => return Ok((Removal::NotFound, None)),
            Some((_, owner)) if owner != user.id => return Ok((Removal::NotYours, None)),
            Some((pk, _)) => pk,
        };
        let n = tx.execute("DELETE FROM endpoints WHERE id = ?1 AND app_pk = ?2", params![endpoint_id, pk])?;
        if n == 0 {
            return Ok((Removal::NotFound, None));
        }
        insert_log(&tx, &LogEntry::action(pk, now_ms, &user.email, format!("removed endpoint {endpoint_id}")))?;
        trim_logs(&tx, pk, self.log_retention)?;
        let app = load_app(&tx, name)?;
        tx.commit()?;
        Ok((Removal::Removed, app))
    }

    /// Deletes every app that has no endpoint left; returns their names.
    pub fn purge_empty_apps(&self) -> Result<Vec<String>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        const EMPTY: &str = "NOT EXISTS (SELECT 1 FROM endpoints e WHERE e.app_pk = apps.pk)";
        let names = {
            let mut stmt = tx.prepare(&format!("SELECT name FROM apps WHERE {EMPTY} ORDER BY name"))?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        tx.execute(&format!("DELETE FROM apps WHERE {EMPTY}"), [])?;
        tx.commit()?;
        Ok(names)
    }

    // ----- execution logs -----

    /// Inserts a batch in one transaction, skipping entries whose app no longer exists, then trims
    /// each app touched to the retention limit.
    pub fn insert_logs(&self, entries: &[LogEntry]) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut touched: Vec<i64> = Vec::new();
        for entry in entries {
            insert_log(&tx, entry)?;
            if !touched.contains(&entry.app_pk) {
                touched.push(entry.app_pk);
            }
        }
        for pk in touched {
            trim_logs(&tx, pk, self.log_retention)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Up to `limit` entries of an app, newest first: those with an id below `before` when given,
    /// after skipping `offset`.
    pub fn logs(&self, app_pk: i64, before: Option<i64>, limit: usize, offset: usize) -> Result<Vec<LogEntry>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, app_pk, time_ms, kind, actor, method, path, status, endpoint, duration_ms, detail
             FROM app_logs WHERE app_pk = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3 OFFSET ?4",
        )?;
        let rows = stmt.query_map(params![app_pk, before.unwrap_or(i64::MAX), limit as i64, offset as i64], log_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    // ----- lock-out -----

    /// Until when (ms) `email` is blocked, if it is at `now_ms`.
    pub fn blocked_until(&self, email: &str, now_ms: u64) -> Result<Option<u64>> {
        let conn = self.conn.lock();
        let until: Option<i64> = conn
            .query_row("SELECT until_ms FROM blocked WHERE email = ?1", [email.to_lowercase()], |r| r.get(0))
            .optional()?;
        Ok(until.map(|u| u.max(0) as u64).filter(|&u| u > now_ms))
    }

    /// Counts one failed login. On the `max`-th in a row the address is blocked until
    /// `now_ms + lock_ms` and the count starts again; returns that time when it happens.
    pub fn record_failure(&self, email: &str, now_ms: u64, max: u32, lock_ms: u64) -> Result<Option<u64>> {
        let email = email.to_lowercase();
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let count: i64 = tx.query_row(
            "INSERT INTO login_failures (email, count, last_ms) VALUES (?1, 1, ?2)
             ON CONFLICT(email) DO UPDATE SET count = count + 1, last_ms = excluded.last_ms
             RETURNING count",
            params![email, ms(now_ms)],
            |r| r.get(0),
        )?;
        let blocked = if count >= i64::from(max) {
            let until = now_ms.saturating_add(lock_ms);
            tx.execute(
                "INSERT INTO blocked (email, since_ms, until_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(email) DO UPDATE SET since_ms = excluded.since_ms, until_ms = excluded.until_ms",
                params![email, ms(now_ms), ms(until)],
            )?;
            tx.execute("DELETE FROM login_failures WHERE email = ?1", [&email])?;
            Some(until)
        } else {
            None
        };
        tx.commit()?;
        Ok(blocked)
    }

    /// A successful login: the failures so far no longer count.
    pub fn reset_failures(&self, email: &str) -> Result<()> {
        self.conn.lock().execute("DELETE FROM login_failures WHERE email = ?1", [email.to_lowercase()])?;
        Ok(())
    }

    /// The addresses blocked at `now_ms`, sorted; expired blocks are cleared on the way.
    pub fn blocked_list(&self, now_ms: u64) -> Result<Vec<String>> {
        let conn = self.conn.lock();
        conn.execute("DELETE FROM blocked WHERE until_ms <= ?1", [ms(now_ms)])?;
        let mut stmt = conn.prepare("SELECT email FROM blocked ORDER BY email")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Lifts a block (and forgets the failures); false when the address was not blocked.
    pub fn unblock(&self, email: &str, now_ms: u64) -> Result<bool> {
        let email = email.to_lowercase();
        let conn = self.conn.lock();
        let n = conn.execute("DELETE FROM blocked WHERE email = ?1 AND until_ms > ?2", params![email, ms(now_ms)])?;
        conn.execute("DELETE FROM blocked WHERE email = ?1", [&email])?;
        conn.execute("DELETE FROM login_failures WHERE email = ?1", [&email])?;
        Ok(n > 0)
    }
}

/// Why the existing file at `path` cannot be written, if it cannot; `None` when it can, or when it
/// does not exist yet (creating it reports its own error).
fn not_writable(path: &Path) -> Option<&'static str> {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => Some("its file system is mounted read-only"),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && path.exists() => {
            Some("the file is not writable by this user")
        }
        _ => None,
    }
}

/// `path` as the path part of an SQLite `file:` URI: `%`, `?` and `#` escaped.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// The schema version of an open file, by reading only.
fn schema_version_of(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |r| r.get(0))?)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::TooNew { found: current, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql)?;
        tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [i as i64 + 1])?;
        log::info!("database: migrated to schema version {}", i + 1);
    }
    tx.commit()?;
    Ok(())
}

fn load_endpoints(conn: &Connection, app_pk: i64) -> Result<Vec<Endpoint>> {
    let mut stmt =
        conn.prepare_cached("SELECT id, host, port, statuspath FROM endpoints WHERE app_pk = ?1 ORDER BY id")?;
    let rows = stmt.query_map([app_pk], |r| {
        Ok(Endpoint {
            id: r.get(0)?,
            host: r.get(1)?,
            port: u16::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            statuspath: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

const APP_COLUMNS: &str = "SELECT a.pk, a.name, a.owner_id, u.email FROM apps a JOIN users u ON u.id = a.owner_id";

fn app_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<App> {
    Ok(App { pk: r.get(0)?, name: r.get(1)?, owner_id: r.get(2)?, owner: r.get(3)?, endpoints: Vec::new() })
}

fn load_app(conn: &Connection, name: &str) -> Result<Option<App>> {
    let app = conn.query_row(&format!("{APP_COLUMNS} WHERE a.name = ?1"), [name], app_row).optional()?;
    match app {
        Some(mut app) => {
            app.endpoints = load_endpoints(conn, app.pk)?;
            Ok(Some(app))
        }
        None => Ok(None),
    }
}

fn load_apps(conn: &Connection, owner: Option<i64>) -> Result<Vec<App>> {
    let mut apps = {
        let mut stmt =
            conn.prepare_cached(&format!("{APP_COLUMNS} WHERE ?1 IS NULL OR a.owner_id = ?1 ORDER BY a.name"))?;
        let rows = stmt.query_map([owner], app_row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    for app in &mut apps {
        app.endpoints = load_endpoints(conn, app.pk)?;
    }
    Ok(apps)
}

fn insert_log(tx: &Transaction<'_>, e: &LogEntry) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO app_logs (app_pk, time_ms, kind, actor, method, path, status, endpoint, duration_ms, detail)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 WHERE EXISTS (SELECT 1 FROM apps WHERE pk = ?1)",
    )?;
    stmt.execute(params![
        e.app_pk,
        ms(e.time_ms),
        e.kind,
        e.actor,
        e.method,
        e.path,
        e.status,
        e.endpoint,
        e.duration_ms,
        e.detail
    ])?;
    Ok(())
}

fn trim_logs(tx: &Transaction<'_>, app_pk: i64, keep: usize) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "DELETE FROM app_logs WHERE app_pk = ?1 AND id <=
           (SELECT id FROM app_logs WHERE app_pk = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
    )?;
    stmt.execute(params![app_pk, keep as i64])?;
    Ok(())
}

// ----- copying out (`proxy --copy-database`) -----

impl SqliteStore {
    /// Every row of every table, for copying into another database.
    pub fn dump(&self) -> Result<super::model::Dump> {
        use super::model::{AppRow, Dump, EndpointRow};
        let conn = self.conn.lock();
        let mut dump = Dump::default();
        let mut stmt = conn.prepare("SELECT key, value FROM settings ORDER BY key")?;
        dump.settings = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        let mut stmt = conn.prepare("SELECT id, email, password_hash, created_ms FROM users ORDER BY id")?;
        dump.users = stmt
            .query_map([], |r| {
                Ok(User {
                    id: r.get(0)?,
                    email: r.get(1)?,
                    password_hash: r.get(2)?,
                    created_ms: r.get::<_, i64>(3)?.max(0) as u64,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt = conn.prepare("SELECT pk, name, owner_id, created_ms FROM apps ORDER BY pk")?;
        dump.apps = stmt
            .query_map([], |r| {
                Ok(AppRow { pk: r.get(0)?, name: r.get(1)?, owner_id: r.get(2)?, created_ms: r.get(3)? })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt =
            conn.prepare("SELECT id, app_pk, host, port, statuspath, created_ms FROM endpoints ORDER BY id")?;
        dump.endpoints = stmt
            .query_map([], |r| {
                Ok(EndpointRow {
                    id: r.get(0)?,
                    app_pk: r.get(1)?,
                    host: r.get(2)?,
                    port: r.get(3)?,
                    statuspath: r.get(4)?,
                    created_ms: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt = conn.prepare(
            "SELECT id, app_pk, time_ms, kind, actor, method, path, status, endpoint, duration_ms, detail
             FROM app_logs ORDER BY id",
        )?;
        dump.logs = stmt.query_map([], log_row)?.collect::<rusqlite::Result<_>>()?;
        let mut stmt = conn.prepare("SELECT email, count, last_ms FROM login_failures ORDER BY email")?;
        dump.failures =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<_>>()?;
        let mut stmt = conn.prepare("SELECT email, since_ms, until_ms FROM blocked ORDER BY email")?;
        dump.blocked =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<_>>()?;
        Ok(dump)
    }

    /// Rows per table, in [`super::model::TABLES`] order.
    pub fn counts(&self) -> Result<Vec<i64>> {
        let conn = self.conn.lock();
        super::model::TABLES
            .iter()
            .map(|t| Ok(conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))?))
            .collect()
    }
}

fn log_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogEntry> {
    Ok(LogEntry {
        id: r.get(0)?,
        app_pk: r.get(1)?,
        time_ms: r.get::<_, i64>(2)?.max(0) as u64,
        kind: r.get(3)?,
        actor: r.get(4)?,
        method: r.get(5)?,
        path: r.get(6)?,
        status: r.get::<_, Option<i64>>(7)?.and_then(|s| u16::try_from(s).ok()),
        endpoint: r.get(8)?,
        duration_ms: r.get(9)?,
        detail: r.get(10)?,
    })
}
