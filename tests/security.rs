//! The management plane against an attacker with a registered account or a login on the same host
//! (issue 16), one test per hole: private files and the signing secret's source, endpoints that
//! point at internal addresses, slow clients on the API, admin rights, and the smaller ones.

mod common;

use std::net::SocketAddr;

use common::*;
use pibl::clock::Clock;
use pibl::store::credentials::Tokens;

fn start(name: &str, tweak: impl FnOnce(&mut pibl::Config)) -> (pibl::Pibl, TempDb) {
    let db = TempDb::new(name);
    let mut config = api_config(&[SocketAddr::from(([127, 0, 0, 1], 9))], &db);
    tweak(&mut config);
    (start_pibl(config, Clock::system()), db)
}

#[cfg(unix)]
#[test]
fn the_signing_secret_comes_from_a_private_file_and_an_exposed_one_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("secret-file");
    let secret = "0123456789abcdef0123456789abcdef-test";
    let file = dir.file("jwt.key", &format!("{secret}\n"));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (pibl, db) = start("secret-file", |c| c.jwt_secret_file = Some(file.clone()));
    let addr = pibl.api_addr();
    register_and_login(addr, "owner@x.io");
    // A token signed with the file's secret is accepted: it is the one in use...
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let token = Tokens::new(secret.as_bytes(), 300).issue("owner@x.io", now).unwrap();
    assert_eq!(api(addr, "GET", "/api/apps", Some(&token), None).status, 200);
    // ...and the database holds no secret.
    let conn = rusqlite::Connection::open(&db.0).unwrap();
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM settings WHERE key = 'jwt_secret'", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 0, "the secret is not copied into the database");
    drop(conn);
    pibl.shutdown();

    // A key file other users can read stops the start, naming the fix.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let db = TempDb::new("secret-file-exposed");
    let mut config = api_config(&[SocketAddr::from(([127, 0, 0, 1], 9))], &db);
    config.jwt_secret_file = Some(file.clone());
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = pibl::Pibl::start_on(proxy, api_listener, config, Clock::system()).err().expect("refused");
    assert!(err.to_string().contains("chmod 600"), "{err}");
}
