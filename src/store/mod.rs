//! The management plane's state: users, apps, endpoints, execution logs, failed logins and blocks,
//! settings such as the JWT secret, and (when shared) cache purges. [`Store`] is the one interface the
//! API and the background threads use; it dispatches to the embedded SQLite file (`sqlite.rs`, the
//! default) or to a PostgreSQL database shared by several pibl instances (`postgres.rs`). Each keeps
//! the same migrations in its own dialect, versioned in `schema_version`, and deleting a user or an
//! app takes its endpoints and logs with it.
//!
//! With SQLite one [`Store`] is one connection behind a mutex, and the log writer and the lock-out
//! consumer each open their own ([`Store::another`]). With PostgreSQL every [`Store`] of a process
//! shares one small pool of connections.

pub mod admins;
pub mod applog;
pub mod copy;
pub mod credentials;
pub mod lockout;
pub mod model;
mod pool;
pub mod postgres;
pub mod private;
pub mod sqlite;
pub mod tls;

use std::path::Path;

pub use crate::config::database::{Database, PgUrl};
pub use model::{
    AddEndpoint, App, AppRow, CachePurge, Dump, Durability, Endpoint, EndpointRow, LogEntry, Removal, Result,
    StoreError, User, TABLES,
};

use self::postgres::PgStore;
use self::sqlite::SqliteStore;

/// The one store interface: the same operations over SQLite or PostgreSQL.
#[derive(Debug)]
pub struct Store {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Calls the same method on whichever backend this store has.
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(s) => s.$method($($arg),*),
            Backend::Postgres(s) => s.$method($($arg),*),
        }
    };
}

impl Store {
    /// Opens (creating if needed) and migrates the SQLite database at `path`; `log_retention` is how
    /// many execution-log entries each app keeps.
    pub fn open(path: &Path, durability: Durability, log_retention: usize) -> Result<Store> {
        Ok(Store { backend: Backend::Sqlite(SqliteStore::open(path, durability, log_retention)?) })
    }

    /// Opens `database` and brings its schema up to date (in PostgreSQL under an advisory lock, so
    /// instances starting together migrate once).
    pub fn connect(database: &Database, durability: Durability, log_retention: usize) -> Result<Store> {
        match database {
            Database::Sqlite(path) => Store::open(path, durability, log_retention),
            Database::Postgres(url) => {
                Ok(Store { backend: Backend::Postgres(PgStore::connect(url, durability, log_retention)?) })
            }
        }
    }

    /// A store for another thread: its own SQLite connection, or the same PostgreSQL pool.
    pub fn another(&self, durability: Durability) -> Result<Store> {
        let backend = match &self.backend {
            Backend::Sqlite(s) => Backend::Sqlite(s.another(durability)?),
            Backend::Postgres(s) => Backend::Postgres(s.another(durability)),
        };
        Ok(Store { backend })
    }

    /// Whether several instances may share this database (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The PostgreSQL side, for the change listener and the copy tool.
    pub fn postgres(&self) -> Option<&PgStore> {
        match &self.backend {
            Backend::Postgres(s) => Some(s),
            Backend::Sqlite(_) => None,
        }
    }

    /// The SQLite side, for the copy tool.
    pub fn sqlite(&self) -> Option<&SqliteStore> {
        match &self.backend {
            Backend::Sqlite(s) => Some(s),
            Backend::Postgres(_) => None,
        }
    }

    /// Whether the database was opened read-only because its file cannot be written (SQLite only:
    /// see [`SqliteStore::open`]); every write then fails with a 503 for API clients.
    pub fn is_read_only(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(s) => s.is_read_only(),
            Backend::Postgres(_) => false,
        }
    }

    /// Whether the database answered last time it was asked (always true for a SQLite file).
    pub fn is_up(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(_) => true,
            Backend::Postgres(s) => s.is_up(),
        }
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i64> {
        dispatch!(self.schema_version())
    }

    // ----- settings -----

    /// The stored value of `key`, storing `make()` first when there is none (first start). With a
    /// shared database the first instance's value wins and every other one reads it.
    pub fn setting_or_insert(&self, key: &str, make: impl FnOnce() -> String) -> Result<String> {
        dispatch!(self.setting_or_insert(key, make))
    }

    /// The stored value of `key`, if any.
    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        dispatch!(self.setting(key))
    }

    /// Stores `value` under `key`, replacing what was there.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        dispatch!(self.set_setting(key, value))
    }

    /// Removes `key`; whether it was there.
    pub fn delete_setting(&self, key: &str) -> Result<bool> {
        dispatch!(self.delete_setting(key))
    }

    // ----- users -----

    /// Registers a user; `None` when the e-mail address is taken (compared without case).
    pub fn create_user(&self, email: &str, password_hash: &str, now_ms: u64) -> Result<Option<User>> {
        dispatch!(self.create_user(email, password_hash, now_ms))
    }

    pub fn user(&self, email: &str) -> Result<Option<User>> {
        dispatch!(self.user(email))
    }

    /// Deletes a user with their apps, endpoints and logs; returns the names of the apps deleted.
    pub fn delete_user(&self, user_id: i64) -> Result<Vec<String>> {
        dispatch!(self.delete_user(user_id))
    }

    // ----- apps and endpoints -----

    /// The app called `name`, with its endpoints.
    pub fn app(&self, name: &str) -> Result<Option<App>> {
        dispatch!(self.app(name))
    }

    /// Every app of `user_id`, by name.
    pub fn apps_of(&self, user_id: i64) -> Result<Vec<App>> {
        dispatch!(self.apps_of(user_id))
    }

    /// Every app, by name (what the router serves).
    pub fn all_apps(&self) -> Result<Vec<App>> {
        dispatch!(self.all_apps())
    }

    /// Adds an endpoint to `name` for `user`, creating the app when it is new; logs the action.
    pub fn add_endpoint(&self, user: &User, name: &str, ep: &Endpoint, now_ms: u64) -> Result<AddEndpoint> {
        dispatch!(self.add_endpoint(user, name, ep, now_ms))
    }

    /// Deletes the app `name` of `user_id` with its endpoints and logs.
    pub fn delete_app(&self, user_id: i64, name: &str) -> Result<Removal> {
        dispatch!(self.delete_app(user_id, name))
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
        dispatch!(self.delete_endpoint(user, name, endpoint_id, now_ms))
    }

    /// Deletes every app that has no endpoint left; returns their names. With a shared database
    /// one instance at a time does it (the others find nothing to do meanwhile).
    pub fn purge_empty_apps(&self) -> Result<Vec<String>> {
        dispatch!(self.purge_empty_apps())
    }

    // ----- execution logs -----

    /// Inserts a batch in one transaction, skipping entries whose app no longer exists, then trims
    /// each app touched to the retention limit.
    pub fn insert_logs(&self, entries: &[LogEntry]) -> Result<()> {
        dispatch!(self.insert_logs(entries))
    }

    /// Up to `limit` entries of an app, newest first: those with an id below `before` when given,
    /// after skipping `offset`.
    pub fn logs(&self, app_pk: i64, before: Option<i64>, limit: usize, offset: usize) -> Result<Vec<LogEntry>> {
        dispatch!(self.logs(app_pk, before, limit, offset))
    }

    // ----- lock-out -----

    /// Until when (ms) `email` is blocked, if it is at `now_ms`.
    pub fn blocked_until(&self, email: &str, now_ms: u64) -> Result<Option<u64>> {
        dispatch!(self.blocked_until(email, now_ms))
    }

    /// Counts one failed login. On the `max`-th in a row the address is blocked until
    /// `now_ms + lock_ms` and the count starts again; returns that time when it happens. The count
    /// is the database's, so failures through every instance add up.
    pub fn record_failure(&self, email: &str, now_ms: u64, max: u32, lock_ms: u64) -> Result<Option<u64>> {
        dispatch!(self.record_failure(email, now_ms, max, lock_ms))
    }

    /// A successful login: the failures so far no longer count.
    pub fn reset_failures(&self, email: &str) -> Result<()> {
        dispatch!(self.reset_failures(email))
    }

    /// The addresses blocked at `now_ms`, sorted; expired blocks are cleared on the way.
    pub fn blocked_list(&self, now_ms: u64) -> Result<Vec<String>> {
        dispatch!(self.blocked_list(now_ms))
    }

    /// Lifts a block (and forgets the failures); false when the address was not blocked.
    pub fn unblock(&self, email: &str, now_ms: u64) -> Result<bool> {
        dispatch!(self.unblock(email, now_ms))
    }

    // ----- cache purges (shared database only) -----

    /// Tells the other instances to purge what this one just purged from its cache. A SQLite file
    /// has no other instances: nothing to do.
    pub fn announce_cache_purge(&self, purge: &CachePurge, now_ms: u64) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(s) => s.announce_cache_purge(purge, now_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlite::MIGRATIONS;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A database file in the temp dir, removed (with its WAL files) on drop.
    struct TempDb(PathBuf);

    impl TempDb {
        fn new() -> TempDb {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!("pibl-store-{}-{}.db", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            TempDb(std::env::temp_dir().join(name))
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
            }
        }
    }

    /// A fresh PostgreSQL database on the server `PIBL_TEST_PG_URL` names, dropped on drop.
    struct TempPg {
        admin: String,
        name: String,
        url: String,
    }

    impl TempPg {
        /// `None` (with a loud notice) when no PostgreSQL is given; a failure in CI, where one must be.
        fn new() -> Option<TempPg> {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let Ok(admin) = std::env::var("PIBL_TEST_PG_URL") else {
                assert!(std::env::var_os("CI").is_none(), "CI must set PIBL_TEST_PG_URL (scripts/pg-test-cluster.sh)");
                eprintln!("SKIPPED: no PostgreSQL (set PIBL_TEST_PG_URL, see scripts/pg-test-cluster.sh)");
                return None;
            };
            let name = format!("pibl_unit_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            let mut client = ::postgres::Client::connect(&admin, ::postgres::NoTls).expect("connect PIBL_TEST_PG_URL");
            client.batch_execute(&format!("CREATE DATABASE {name}")).expect("create a test database");
            let base = admin.split('?').next().unwrap_or(&admin);
            let url = format!("{}/{name}", base.rsplit_once('/').map_or(base, |(b, _)| b));
            Some(TempPg { admin, name, url })
        }
    }

    impl Drop for TempPg {
        fn drop(&mut self) {
            if let Ok(mut c) = ::postgres::Client::connect(&self.admin, ::postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
            }
        }
    }

    /// Runs `check` on a new SQLite file, then on a new PostgreSQL database when there is a server.
    fn on_each_backend(check: impl Fn(&Database)) {
        let file = TempDb::new();
        check(&Database::Sqlite(file.0.clone()));
        if let Some(pg) = TempPg::new() {
            check(&Database::parse(&pg.url).expect("a postgres URL"));
        }
    }

    fn ep(host: &str, port: u16) -> Endpoint {
        Endpoint { id: 0, host: host.into(), port, statuspath: "/status".into() }
    }

    #[test]
    fn migrates_once_and_keeps_data() {
        on_each_backend(migrates_once_and_keeps_data_on);
    }

    fn migrates_once_and_keeps_data_on(db: &Database) {
        {
            let store = Store::connect(db, Durability::Full, 10).unwrap();
            assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
            assert_eq!(MIGRATIONS.len(), postgres::MIGRATIONS.len(), "both dialects at one version");
            assert_eq!(store.setting_or_insert("k", || "first".into()).unwrap(), "first");
            store.create_user("A@x.io", "h", 1).unwrap().unwrap();
        }
        let store = Store::connect(db, Durability::Normal, 10).unwrap();
        assert_eq!(store.setting_or_insert("k", || "second".into()).unwrap(), "first");
        assert!(store.create_user("a@X.io", "h", 2).unwrap().is_none(), "e-mail compared without case");
        assert_eq!(store.user("a@x.io").unwrap().unwrap().email, "A@x.io");
    }

    #[test]
    fn apps_endpoints_cascade_and_logs_trim() {
        on_each_backend(apps_endpoints_cascade_and_logs_trim_on);
    }

    fn apps_endpoints_cascade_and_logs_trim_on(db: &Database) {
        let store = Store::connect(db, Durability::Full, 3).unwrap();
        let alice = store.create_user("alice@x.io", "h", 1).unwrap().unwrap();
        let bob = store.create_user("bob@x.io", "h", 1).unwrap().unwrap();
        let AddEndpoint::Added { app, created } = store.add_endpoint(&alice, "web", &ep("h1", 80), 5).unwrap() else {
            panic!("not added")
        };
        assert!(created);
        assert_eq!(store.add_endpoint(&alice, "web", &ep("h1", 80), 6).unwrap(), AddEndpoint::Duplicate);
        assert_eq!(store.add_endpoint(&bob, "web", &ep("h2", 80), 6).unwrap(), AddEndpoint::NotYours);
        assert!(matches!(
            store.add_endpoint(&alice, "web", &ep("h2", 81), 7).unwrap(),
            AddEndpoint::Added { created: false, .. }
        ));
        let logs = store.logs(app.pk, None, 10, 0).unwrap();
        assert_eq!(logs.len(), 3, "created + two endpoints");
        assert!(logs[0].id > logs[1].id, "newest first");
        let entries: Vec<LogEntry> = (0..5)
            .map(|i| LogEntry { app_pk: app.pk, time_ms: 10 + i, kind: "request".into(), ..LogEntry::default() })
            .collect();
        store.insert_logs(&entries).unwrap();
        let logs = store.logs(app.pk, None, 10, 0).unwrap();
        assert_eq!(logs.iter().map(|l| l.time_ms).collect::<Vec<_>>(), [14, 13, 12], "retention keeps 3");
        let older = store.logs(app.pk, Some(logs[0].id), 10, 0).unwrap();
        assert_eq!(older.len(), 2);

        let e1 = store.app("web").unwrap().unwrap().endpoints[0].id;
        assert_eq!(store.delete_endpoint(&bob, "web", e1, 8).unwrap(), (Removal::NotYours, None));
        assert_eq!(store.delete_endpoint(&alice, "web", 9999, 8).unwrap(), (Removal::NotFound, None));
        let (removed, left) = store.delete_endpoint(&alice, "web", e1, 8).unwrap();
        assert_eq!((removed, left.map(|a| a.endpoints.len())), (Removal::Removed, Some(1)));
        assert!(store.purge_empty_apps().unwrap().is_empty());
        store.add_endpoint(&bob, "api", &ep("h3", 80), 9).unwrap();
        let e = store.app("api").unwrap().unwrap().endpoints[0].id;
        store.delete_endpoint(&bob, "api", e, 9).unwrap();
        assert_eq!(store.purge_empty_apps().unwrap(), ["api"]);

        assert_eq!(store.delete_user(alice.id).unwrap(), ["web"]);
        assert!(store.app("web").unwrap().is_none());
        assert!(store.logs(app.pk, None, 10, 0).unwrap().is_empty(), "logs go with the app");
        // A late log line for a deleted app is dropped, not an error.
        store.insert_logs(&entries).unwrap();
        assert!(store.logs(app.pk, None, 10, 0).unwrap().is_empty());
        assert_eq!(store.delete_app(bob.id, "nope").unwrap(), Removal::NotFound);
    }

    #[test]
    fn failures_block_and_expire() {
        on_each_backend(failures_block_and_expire_on);
    }

    fn failures_block_and_expire_on(db: &Database) {
        let store = Store::connect(db, Durability::Full, 3).unwrap();
        for i in 0..4 {
            assert_eq!(store.record_failure("U@x.io", 100 + i, 5, 1000).unwrap(), None);
        }
        store.reset_failures("u@x.io").unwrap();
        for i in 0..4 {
            assert_eq!(store.record_failure("u@x.io", 200 + i, 5, 1000).unwrap(), None);
        }
        assert_eq!(store.record_failure("u@x.io", 300, 5, 1000).unwrap(), Some(1300));
        assert_eq!(store.blocked_until("U@X.IO", 301).unwrap(), Some(1300));
        assert_eq!(store.blocked_list(301).unwrap(), ["u@x.io"]);
        assert_eq!(store.blocked_until("u@x.io", 1300).unwrap(), None);
        assert!(store.blocked_list(1300).unwrap().is_empty());
        store.record_failure("v@x.io", 0, 1, 1000).unwrap();
        assert!(store.unblock("v@x.io", 10).unwrap());
        assert!(!store.unblock("v@x.io", 10).unwrap());
    }

    #[test]
    fn database_setting_and_redaction() {
        assert_eq!(Database::parse("pibl.db"), Ok(Database::Sqlite(PathBuf::from("pibl.db"))));
        assert_eq!(Database::parse(" my db.db"), Ok(Database::Sqlite(PathBuf::from(" my db.db"))));
        assert!(Database::parse("  ").is_err());
        let pg = Database::parse("postgres://pibl:s3cret@db.internal:5433/pibl").unwrap();
        assert_eq!(pg.to_string(), "postgres://pibl:***@db.internal:5433/pibl");
        assert!(!format!("{pg:?}").contains("s3cret"));
        let pg = Database::parse("postgresql://pibl@127.0.0.1/pibl?password=x&application_name=a").unwrap();
        assert_eq!(pg.to_string(), "postgresql://pibl@127.0.0.1/pibl?password=***&application_name=a");
        assert!(Database::parse("postgres://pibl@host:notaport/pibl").is_err());
        assert!(Database::parse("postgres://pibl@host/pibl?sslmode=require&sslrootcert=/ca.pem").is_ok());
        assert!(Database::parse("postgres://pibl@host/pibl?sslrootcert=/ca.pem").unwrap_err().contains("sslmode"));
    }

    #[test]
    fn migrations_race_once_under_the_lock() {
        let Some(pg) = TempPg::new() else { return };
        let db = Database::parse(&pg.url).unwrap();
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let db = db.clone();
                std::thread::spawn(move || Store::connect(&db, Durability::Full, 10).map(|s| s.schema_version()))
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().unwrap().unwrap(), MIGRATIONS.len() as i64);
        }
        let mut c = ::postgres::Client::connect(&pg.url, ::postgres::NoTls).unwrap();
        let rows: i64 = c.query_one("SELECT COUNT(*) FROM schema_version", &[]).unwrap().get(0);
        assert_eq!(rows, MIGRATIONS.len() as i64, "each step applied once");
    }

    #[test]
    fn purge_lock_cache_purges_and_shared_secret() {
        let Some(pg) = TempPg::new() else { return };
        let db = Database::parse(&pg.url).unwrap();
        let a = Store::connect(&db, Durability::Full, 10).unwrap();
        let b = Store::connect(&db, Durability::Full, 10).unwrap();
        assert!(a.is_shared() && a.is_up());
        // The first instance's secret is everyone's.
        let secret = a.setting_or_insert("jwt_secret", || "one".into()).unwrap();
        assert_eq!(b.setting_or_insert("jwt_secret", || "two".into()).unwrap(), secret);
        // An app left empty is purged by whoever holds the lock; the other skips meanwhile.
        let u = a.create_user("u@x.io", "h", 1).unwrap().unwrap();
        a.add_endpoint(&u, "web", &ep("127.0.0.1", 80), 2).unwrap();
        let id = b.app("web").unwrap().unwrap().endpoints[0].id;
        b.delete_endpoint(&u, "web", id, 3).unwrap();
        let mut holder = ::postgres::Client::connect(&pg.url, ::postgres::NoTls).unwrap();
        let mut tx = holder.transaction().unwrap();
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&0x7069_626c_0002_i64]).unwrap();
        assert!(a.purge_empty_apps().unwrap().is_empty(), "another instance is purging");
        tx.rollback().unwrap();
        assert_eq!(b.purge_empty_apps().unwrap(), ["web"]);
        // Cache purges are kept in order for the listeners.
        let pgs = a.postgres().unwrap();
        let before = pgs.last_cache_purge_id().unwrap();
        let purges = [
            CachePurge::All,
            CachePurge::Key { host: "h:1".into(), target: "/a".into() },
            CachePurge::Target("/b".into()),
            CachePurge::Tag { tag: "images".into(), apps: Some(vec!["shop".into(), "blog".into()]) },
            CachePurge::Tag { tag: "all".into(), apps: None },
            CachePurge::Prefix { prefix: "/shop/img/".into(), apps: Some(vec!["shop".into()]) },
        ];
        for p in &purges {
            b.announce_cache_purge(p, 10).unwrap();
        }
        let seen: Vec<CachePurge> = pgs.cache_purges_after(before).unwrap().into_iter().map(|(_, p)| p).collect();
        assert_eq!(seen, purges);
    }

    #[test]
    fn copies_sqlite_into_postgres_with_ids_and_counts() {
        let Some(pg) = TempPg::new() else { return };
        let file = TempDb::new();
        let from = Database::Sqlite(file.0.clone());
        let to = Database::parse(&pg.url).unwrap();
        {
            let s = Store::connect(&from, Durability::Full, 100).unwrap();
            s.setting_or_insert("jwt_secret", || "kept".into()).unwrap();
            let u = s.create_user("a@x.io", "h", 1).unwrap().unwrap();
            s.create_user("b@x.io", "h", 1).unwrap().unwrap();
            s.add_endpoint(&u, "web", &ep("127.0.0.1", 80), 2).unwrap();
            s.add_endpoint(&u, "web", &ep("127.0.0.1", 81), 2).unwrap();
            let pk = s.app("web").unwrap().unwrap().pk;
            let logs: Vec<LogEntry> = (0..7)
                .map(|i| LogEntry {
                    app_pk: pk,
                    time_ms: i,
                    kind: "request".into(),
                    status: Some(200),
                    ..Default::default()
                })
                .collect();
            s.insert_logs(&logs).unwrap();
            s.record_failure("c@x.io", 5, 5, 1000).unwrap();
            s.record_failure("d@x.io", 5, 1, u64::MAX / 4).unwrap();
        }
        let report = copy::copy_database(&from, &to).unwrap();
        let counts: Vec<i64> = report.counts.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [1, 2, 1, 2, 10, 1, 1], "{report}");
        let s = Store::connect(&to, Durability::Full, 100).unwrap();
        assert_eq!(s.setting_or_insert("jwt_secret", || "new".into()).unwrap(), "kept");
        let web = s.app("web").unwrap().unwrap();
        assert_eq!((web.owner.as_str(), web.endpoints.len()), ("a@x.io", 2));
        assert_eq!(s.logs(web.pk, None, 100, 0).unwrap().len(), 10);
        assert!(s.blocked_until("d@x.io", 10).unwrap().is_some());
        // New rows get ids past the copied ones.
        let c = s.create_user("c@x.io", "h", 3).unwrap().unwrap();
        assert!(c.id > 2, "{}", c.id);
        assert!(matches!(copy::copy_database(&from, &to), Err(copy::CopyError::NotEmpty { .. })));
        assert!(matches!(copy::copy_database(&to, &from), Err(copy::CopyError::Direction)));
    }
}
