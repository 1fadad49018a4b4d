//! The authorisation table of the management API: every endpoint that takes a token, called with no
//! token, a forged one, an `alg: none` one, an expired one, one of a deleted account, another user's
//! token on the owner's ids, and a plain user's token on admin-only endpoints, each with the status
//! written down beside it; then the owner and the admin, who get through. The public endpoints answer
//! everyone alike.

mod common;

use common::*;
use pibl::clock::Clock;
use pibl::store::credentials::Tokens;

const SECRET: &str = "authz-table-secret-0123456789abcdef";

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    NoToken,
    Forged,
    AlgNone,
    Expired,
    Deleted,
    /// Bob: a real user, not the owner of `alpha`, not an admin.
    Other,
    /// Alice, who owns `alpha`.
    Owner,
    Admin,
}

use Caller::*;

/// Statuses for NoToken, Forged, AlgNone, Expired, Deleted: a token that is not a live user's is
/// always 401.
const NOT_A_USER: [(Caller, u16); 5] = [(NoToken, 401), (Forged, 401), (AlgNone, 401), (Expired, 401), (Deleted, 401)];

/// One endpoint: method, path, body, and the statuses of the callers beyond [`NOT_A_USER`].
type Row<'a> = (&'a str, &'a str, Option<&'a str>, Vec<(Caller, u16)>);

#[test]
fn every_endpoint_answers_each_kind_of_caller_as_written_down() {
    let backend = TestBackend::start(|_| ok("alpha"));
    let db = TempDb::new("authz");
    let mut config = api_config(&[backend.addr], &db);
    config.jwt_secret = SECRET.into();
    // As if the API faced the network: /metrics then takes an admin's token too.
    config.api_bind = "0.0.0.0".parse().unwrap();
    let pibl = start_pibl(config, Clock::system());
    let addr = pibl.api_addr();

    let alice = register_and_login(addr, "alice@x.io");
    let bob = register_and_login(addr, "bob@x.io");
    let admin = admin_login(&pibl);
    let res = api(addr, "POST", "/api/apps/alpha", Some(&alice), Some(&endpoint_body(backend.addr, "/")));
    assert_eq!(res.status, 201, "{}", res.text());
    let endpoint_id = res.json()["endpoints"][0]["id"].as_i64().unwrap();
    let deleted = register_and_login(addr, "carol@x.io");
    let carol = r#"{"email":"carol@x.io","password":"password"}"#;
    assert_eq!(api(addr, "DELETE", "/api/users", None, Some(carol)).status, 200);

    let now = pibl.state().clock.now_secs();
    let alice_ms = pibl.state().store.user("alice@x.io").unwrap().unwrap().created_ms;
    let forged = Tokens::new(b"not-the-secret-not-the-secret-000", 300).issue_for("alice@x.io", alice_ms, now).unwrap();
    let expired = Tokens::new(SECRET.as_bytes(), 300).issue_for("alice@x.io", alice_ms, now - 1_000).unwrap();
    let payload = alice.split('.').nth(1).unwrap().to_string();
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    let token = |caller: Caller| -> Option<String> {
        match caller {
            NoToken => None,
            Forged => Some(forged.clone()),
            AlgNone => Some(alg_none.clone()),
            Expired => Some(expired.clone()),
            Deleted => Some(deleted.clone()),
            Other => Some(bob.clone()),
            Owner => Some(alice.clone()),
            Admin => Some(admin.clone()),
        }
    };

    let endpoint = endpoint_body(backend.addr, "/other");
    let ep_path = format!("/api/apps/alpha/endpoints/{endpoint_id}");
    // (method, path, body, statuses of the callers other than the five of NOT_A_USER). Changing
    // calls (the owner's POST, DELETEs) are not run as the owner or admin here, so the table leaves
    // `alpha` as it was for the rows after it.
    let table: Vec<Row> = vec![
        ("GET", "/api/apps", None, vec![(Other, 200), (Owner, 200), (Admin, 200)]),
        ("GET", "/api/apps/alpha", None, vec![(Other, 403), (Owner, 200), (Admin, 403)]),
        ("POST", "/api/apps/alpha", Some(&endpoint), vec![(Other, 403), (Admin, 403)]),
        ("DELETE", "/api/apps/alpha", None, vec![(Other, 403), (Admin, 403)]),
        ("DELETE", &ep_path, None, vec![(Other, 403), (Admin, 403)]),
        ("GET", "/api/apps/alpha/logs", None, vec![(Other, 403), (Owner, 200), (Admin, 403)]),
        ("GET", "/api/blocked", None, vec![(Other, 403), (Owner, 403), (Admin, 200)]),
        ("DELETE", "/api/blocked/nobody%40x.io", None, vec![(Other, 403), (Owner, 403), (Admin, 404)]),
        ("DELETE", "/api/cache?url=/alpha/page", None, vec![(Other, 403), (Owner, 200), (Admin, 200)]),
        ("DELETE", "/api/cache", None, vec![(Other, 403), (Owner, 403), (Admin, 200)]),
        ("GET", "/api/tls", None, vec![(Other, 403), (Owner, 403), (Admin, 200)]),
        // This pibl has no ACME: an admin's request is refused as a conflict, not done.
        ("POST", "/api/tls/revoke", None, vec![(Other, 403), (Owner, 403), (Admin, 409)]),
        ("GET", "/api/status", None, vec![(Other, 200), (Owner, 200), (Admin, 200)]),
        ("GET", "/metrics", None, vec![(Other, 403), (Owner, 403), (Admin, 200)]),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, rows) in &table {
        for (caller, expected) in NOT_A_USER.iter().chain(rows.iter()) {
            let res = api(addr, method, path, token(*caller).as_deref(), *body);
            if res.status != *expected {
                wrong.push(format!(
                    "{method} {path} as {caller:?}: {} (expected {expected}) {}",
                    res.status,
                    res.text()
                ));
            }
            if res.status == 401 {
                // The reason is in words, naming no library type.
                let why = res.json()["error"].as_str().unwrap_or("").to_string();
                assert!(!why.contains("ErrorKind") && !why.contains("InvalidSignature"), "{why}");
            }
        }
    }
    assert!(wrong.is_empty(), "statuses differ from the table:\n{}", wrong.join("\n"));

    // The public ones answer everyone alike.
    for path in ["/api/openapi.yaml", "/dashboard"] {
        for caller in [NoToken, Forged, Other, Admin] {
            assert_eq!(api(addr, "GET", path, token(caller).as_deref(), None).status, 200, "{path} as {caller:?}");
        }
    }
    // The owner's changes go through (last, as they change `alpha`).
    assert_eq!(api(addr, "POST", "/api/apps/alpha", Some(&alice), Some(&endpoint)).status, 201);
    assert_eq!(api(addr, "DELETE", &ep_path, Some(&alice), None).status, 200);
    assert_eq!(api(addr, "DELETE", "/api/apps/alpha", Some(&alice), None).status, 200);
    pibl.shutdown();
}
