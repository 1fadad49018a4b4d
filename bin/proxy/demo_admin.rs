//! The demo's admin account, so a newcomer can try what only admins may do (list and lift lock-outs):
//! `admin@demo.local` with a generated password, kept in a JSON file beside the database that
//! `curl -d @FILE .../api/auth` sends as it is. The same password serves every run while the file and
//! the account agree; otherwise the account is made anew with a fresh one.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use pibl::store::credentials;
use pibl::store::{admins, Database, Durability, Store};

/// The demo admin's e-mail address.
pub const ADMIN_EMAIL: &str = "admin@demo.local";

/// The demo admin's login, ready for the log.
pub struct DemoAdmin {
    pub password: String,
    /// `{"email": ..., "password": ...}`, readable by its owner only.
    pub file: PathBuf,
}

/// `pibl-demo.db` keeps its admin's login in `pibl-demo-admin.json`.
pub fn credentials_file(database: &Path) -> PathBuf {
    let stem = database.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "pibl".into());
    database.with_file_name(format!("{stem}-admin.json"))
}

/// Makes sure `database` holds [`ADMIN_EMAIL`] with the password in its credentials file; run before
/// pibl opens the database, so the app table it loads is already final.
pub fn ensure(database: &Path, log_retention: usize, now_ms: u64) -> Result<DemoAdmin, String> {
    let setting = Database::from_setting(database)?;
    // A PostgreSQL URL has no folder to put the file beside: the working directory, as for SQLite.
    let file = match setting {
        Database::Sqlite(_) => credentials_file(database),
        Database::Postgres(_) => PathBuf::from("pibl-demo-admin.json"),
    };
    let store =
        Store::connect(&setting, Durability::Full, log_retention).map_err(|e| format!("cannot open {setting}: {e}"))?;
    let existing = store.user(ADMIN_EMAIL).map_err(|e| format!("cannot read {setting}: {e}"))?;
    let kept = std::fs::read(&file)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|v| v["password"].as_str().map(str::to_string));
    // Being listed in `admins` grants nothing: the grant is made here, as `proxy --admin add` makes it.
    let grant = |password: &str| {
        admins::add(&store, ADMIN_EMAIL, password, now_ms).map_err(|e| format!("cannot make the demo admin: {e}"))
    };
    if let (Some(user), Some(password)) = (&existing, &kept) {
        if credentials::verify_password(password, &user.password_hash).map_err(|e| e.to_string())? {
            grant(password)?;
            return Ok(DemoAdmin { password: password.clone(), file });
        }
    }
    // 12 random bytes as hex: 24 characters, within the API's 6-30 and safe in JSON and a shell.
    let bytes = credentials::random_bytes::<12>().map_err(|e| e.to_string())?;
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(user) = existing {
        store.delete_user(user.id).map_err(|e| format!("cannot replace the demo admin: {e}"))?;
    }
    grant(&password)?;
    let json = serde_json::json!({ "email": ADMIN_EMAIL, "password": password }).to_string();
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&file)
        .and_then(|mut f| f.write_all(format!("{json}\n").as_bytes()));
    written.map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(DemoAdmin { password, file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_keeps_its_password_while_file_and_account_agree() {
        let dir = std::env::temp_dir().join(format!("pibl-demo-admin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let db = dir.join("pibl-demo.db");
        let first = ensure(&db, 10, 1_000).expect("first run");
        assert_eq!(first.file, dir.join("pibl-demo-admin.json"));
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&first.file).expect("file")).expect("JSON");
        assert_eq!((saved["email"].as_str(), saved["password"].as_str()), (Some(ADMIN_EMAIL), Some(&*first.password)));
        let mode = std::fs::metadata(&first.file).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
        assert_eq!(mode.ok().map(|m| m & 0o777), Some(0o600), "only its owner reads the password");

        assert_eq!(ensure(&db, 10, 2_000).expect("second run").password, first.password, "kept");
        std::fs::remove_file(&first.file).expect("remove the file");
        let third = ensure(&db, 10, 3_000).expect("third run");
        assert_ne!(third.password, first.password, "a lost file means a new password");
        let store = Store::open(&db, Durability::Full, 10).expect("open");
        let user = store.user(ADMIN_EMAIL).expect("read").expect("the admin exists");
        assert!(credentials::verify_password(&third.password, &user.password_hash).expect("hash"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
