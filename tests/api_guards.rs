//! What the management API refuses, and with which status: lock-out after failed logins, the
//! per-IP throttle, expired and forged tokens, every schema violation (table-driven), and HTTP-level
//! mistakes (unknown paths, wrong methods, bodies too large or not JSON). Expiry is driven by a
//! clock the test moves, never by sleeping.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use pibl::clock::Clock;
use pibl::store::credentials::Tokens;
use serde_json::Value;

fn start(name: &str, clock: &Clock, tweak: impl FnOnce(&mut pibl::Config)) -> (pibl::Pibl, TempDb) {
    let db = TempDb::new(name);
    let mut config = api_config(&[SocketAddr::from(([127, 0, 0, 1], 9))], &db);
    tweak(&mut config);
    (start_pibl(config, clock.clone()), db)
}

fn fields(res: &Response) -> Vec<String> {
    res.json()["details"]
        .as_array()
        .map(|d| d.iter().filter_map(|f| f["field"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn blocked(addr: SocketAddr, admin: &str) -> Value {
    let res = api(addr, "GET", "/api/blocked", Some(admin), None);
    assert_eq!(res.status, 200, "{}", res.text());
    res.json()["users-blocked"].clone()
}

#[test]
fn five_failures_lock_an_address_until_unblocked_or_expired() {
    let clock = Clock::system();
    let (pibl, _db) = start("lockout", &clock, |c| c.lockout_secs = Duration::from_secs(900));
    let addr = pibl.api_addr();
    let admin = admin_login(&pibl);
    let user = register_and_login(addr, "victim@x.io");
    let wrong = r#"{"email":"victim@x.io","password":"guess-123"}"#;
    let right = r#"{"email":"victim@x.io","password":"password"}"#;

    for _ in 0..5 {
        assert_eq!(api(addr, "POST", "/api/auth", None, Some(wrong)).status, 401);
    }
    wait_until("the consumer blocks victim", || blocked(addr, &admin) == serde_json::json!(["victim@x.io"]));
    let res = api(addr, "POST", "/api/auth", None, Some(right));
    assert_eq!(res.status, 423, "even the right password: {}", res.text());
    assert_eq!(res.header("retry-after"), Some("900"));
    assert_eq!(api(addr, "DELETE", "/api/users", None, Some(right)).status, 423, "nor can it delete the account");

    // Only admins see and lift blocks.
    assert_eq!(api(addr, "GET", "/api/blocked", Some(&user), None).status, 403);
    assert_eq!(api(addr, "GET", "/api/blocked", None, None).status, 401);
    assert_eq!(api(addr, "DELETE", "/api/blocked/victim@x.io", Some(&user), None).status, 403);
    let res = api(addr, "DELETE", "/api/blocked/victim%40x.io", Some(&admin), None);
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(api(addr, "DELETE", "/api/blocked/victim@x.io", Some(&admin), None).status, 404);
    assert_eq!(api(addr, "POST", "/api/auth", None, Some(right)).status, 200);

    // A block also ends by itself.
    for _ in 0..5 {
        assert_eq!(api(addr, "POST", "/api/auth", None, Some(wrong)).status, 401);
    }
    wait_until("blocked again", || blocked(addr, &admin) == serde_json::json!(["victim@x.io"]));
    clock.advance(Duration::from_secs(899));
    assert_eq!(api(addr, "POST", "/api/auth", None, Some(right)).status, 423);
    clock.advance(Duration::from_secs(1));
    assert_eq!(api(addr, "POST", "/api/auth", None, Some(right)).status, 200);
    let admin = login(addr, ADMIN, "password");
    assert_eq!(blocked(addr, &admin), serde_json::json!([]));
    assert!(pibl.shutdown());
}

#[test]
fn credential_endpoints_are_throttled_per_client_address() {
    let clock = Clock::stopped(); // Retry-After is asserted to the second
    let (pibl, _db) = start("throttle", &clock, |c| c.auth_rate = 3);
    let addr = pibl.api_addr();
    let creds = r#"{"email":"someone@x.io","password":"whatever"}"#;
    assert_eq!(api(addr, "POST", "/api/users", None, Some(creds)).status, 201);
    assert_eq!(api(addr, "POST", "/api/auth", None, Some(creds)).status, 200);
    assert_eq!(api(addr, "POST", "/api/auth", None, Some(r#"{"email":"a@x.io","password":"guess-1"}"#)).status, 401);
    let res = api(addr, "POST", "/api/auth", None, Some(creds));
    assert_eq!(res.status, 429, "{}", res.text());
    assert_eq!(res.header("retry-after"), Some("20"), "3 a minute: one more every 20 s");
    assert_eq!(api(addr, "POST", "/api/users", None, Some(creds)).status, 429, "one budget for both paths");
    assert_eq!(api(addr, "GET", "/api/apps", None, None).status, 401, "other paths are not throttled");
    clock.advance(Duration::from_secs(20));
    assert_eq!(api(addr, "POST", "/api/auth", None, Some(creds)).status, 200);
    assert_eq!(api(addr, "POST", "/api/auth", None, Some(creds)).status, 429);
    assert!(pibl.shutdown());
}

#[test]
fn expired_forged_and_malformed_tokens_are_refused() {
    // Stopped: the token must be valid 299 s after its issue and expired at 300 s exactly, which
    // real seconds passing during a slow run would blur.
    let clock = Clock::stopped();
    let (pibl, _db) = start("tokens", &clock, |c| c.jwt_ttl = Duration::from_secs(300));
    let addr = pibl.api_addr();
    let token = register_and_login(addr, "holder@x.io");
    assert_eq!(api(addr, "GET", "/api/apps", Some(&token), None).status, 200, "Authorization: JWT <token>");
    let bearer = format!("GET /api/apps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    assert_eq!(request(addr, bearer.as_bytes()).status, 200, "Authorization: Bearer <token>");

    let forged = Tokens::new(b"not the server's secret", 300).issue("holder@x.io", clock.now_secs()).unwrap();
    let seed_example = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZGVudGl0eSI6ImFuZ2VsQGFuZ2VsLmNvbSIsImlhdCI6MTQ2MzkxNTE1MCwibmJmIjoxNDYzOTE1MTUwLCJleHAiOjE0NjM5MTU0NTB9.5NXV8LxNFUUU1MbPxRa-tLsGU-i23G0BviIM7vX_ed4";
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    parts[1] = parts[1].chars().rev().collect();
    let tampered = parts.join(".");
    for (what, header) in [
        ("no header", None),
        ("unknown scheme", Some(format!("Basic {token}"))),
        ("no token", Some("JWT ".to_string())),
        ("garbage", Some("JWT abc.def.ghi".to_string())),
        ("forged", Some(format!("JWT {forged}"))),
        ("tampered", Some(format!("JWT {tampered}"))),
        ("the seed's example", Some(format!("JWT {seed_example}"))),
    ] {
        let auth = header.map(|h| format!("Authorization: {h}\r\n")).unwrap_or_default();
        let res = request(addr, format!("GET /api/apps HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes());
        assert_eq!(res.status, 401, "{what}: {}", res.text());
        assert!(res.json()["error"].is_string());
    }

    clock.advance(Duration::from_secs(299));
    assert_eq!(api(addr, "GET", "/api/apps", Some(&token), None).status, 200);
    clock.advance(Duration::from_secs(1));
    let res = api(addr, "GET", "/api/apps", Some(&token), None);
    assert_eq!(res.status, 401);
    assert!(res.json()["error"].as_str().unwrap().contains("expired"), "{}", res.text());
    assert!(pibl.shutdown());
}

/// (method, path, needs token, content type, body, status, fields named in details)
type Case<'a> = (&'a str, &'a str, bool, Option<&'a str>, &'a str, u16, &'a [&'a str]);

/// A request with an explicit `Content-Type` (or none).
fn raw(method: &str, path: &str, token: Option<&str>, content_type: Option<&str>, body: &str) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost:5000\r\nContent-Length: {}\r\n", body.len());
    if let Some(t) = token {
        head.push_str(&format!("Authorization: JWT {t}\r\n"));
    }
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    format!("{head}\r\n{body}").into_bytes()
}

#[test]
fn every_schema_violation_is_a_400_naming_its_fields() {
    let clock = Clock::system();
    let backend = TestBackend::named("b");
    let (pibl, _db) = start("schema", &clock, |_| {});
    let addr = pibl.api_addr();
    let token = register_and_login(addr, "schema@x.io");
    let port = backend.addr.port();
    let json = Some("application/json");
    let ok_endpoint = format!(r#"{{"host":"127.0.0.1","port":{port},"statuspath":"/"}}"#);
    assert_eq!(request(addr, &raw("POST", "/api/apps/valid", Some(&token), json, &ok_endpoint)).status, 201);

    let cases: &[Case] = &[
        ("POST", "/api/users", false, json, "{}", 400, &["email", "password"]),
        ("POST", "/api/users", false, json, r#"{"email":"nope","password":"12345"}"#, 400, &["email", "password"]),
        ("POST", "/api/users", false, json, r#"{"email":"a@b.c","password":123456}"#, 400, &["password"]),
        ("POST", "/api/users", false, json, r#"{"email":["a@b.c"],"password":"123456"}"#, 400, &["email"]),
        (
            "POST",
            "/api/users",
            false,
            json,
            r#"{"email":"a@b.c","password":"0123456789012345678901234567890"}"#,
            400,
            &["password"],
        ),
        ("POST", "/api/users", false, json, r#"{"email":"a@b","password":"123456"}"#, 400, &["email"]),
        ("POST", "/api/users", false, json, "[1,2]", 400, &["body"]),
        ("POST", "/api/users", false, json, "{\"email\":", 400, &["body"]),
        ("POST", "/api/users", false, json, "", 400, &["body"]),
        ("POST", "/api/users", false, None, r#"{"email":"a@b.c","password":"123456"}"#, 415, &[]),
        ("POST", "/api/users", false, Some("text/plain"), r#"{"email":"a@b.c","password":"123456"}"#, 415, &[]),
        ("DELETE", "/api/users", false, json, r#"{"password":"123456"}"#, 400, &["email"]),
        ("POST", "/api/auth", false, json, r#"{"email":"a@b.c"}"#, 400, &["password"]),
        ("POST", "/api/auth", false, json, r#"{"email":"a b@c.d","password":"123"}"#, 400, &["email", "password"]),
        ("POST", "/api/apps/valid", true, json, "{}", 400, &["host", "port", "statuspath"]),
        ("POST", "/api/apps/valid", true, json, r#"{"host":"h","port":"80","statuspath":"/"}"#, 400, &["port"]),
        ("POST", "/api/apps/valid", true, json, r#"{"host":"h","port":65536,"statuspath":"/"}"#, 400, &["port"]),
        ("POST", "/api/apps/valid", true, json, r#"{"host":"h","port":-1,"statuspath":"/"}"#, 400, &["port"]),
        ("POST", "/api/apps/valid", true, json, r#"{"host":"h","port":80.5,"statuspath":"/"}"#, 400, &["port"]),
        (
            "POST",
            "/api/apps/valid",
            true,
            json,
            r#"{"host":5,"port":80,"statuspath":false}"#,
            400,
            &["host", "statuspath"],
        ),
        (
            "POST",
            "/api/apps/valid",
            true,
            json,
            r#"{"host":"http://h/","port":80,"statuspath":"/a b"}"#,
            400,
            &["host", "statuspath"],
        ),
        (
            "POST",
            "/api/apps/valid",
            true,
            json,
            r#"{"host":"no-such-host.invalid","port":80,"statuspath":"/"}"#,
            400,
            &["host"],
        ),
        ("POST", "/api/apps/valid", true, None, r#"{"host":"h","port":80,"statuspath":"/"}"#, 415, &[]),
        ("POST", "/api/apps/Not_Valid", true, json, r#"{"host":"h","port":80,"statuspath":"/"}"#, 400, &["appid"]),
        ("GET", "/api/apps/-bad", true, None, "", 400, &["appid"]),
        ("DELETE", "/api/apps/valid/endpoints/one", true, None, "", 400, &["endpoint_id"]),
        ("GET", "/api/apps/valid/logs?limit=0", true, None, "", 400, &["limit"]),
        ("GET", "/api/apps/valid/logs?limit=5000", true, None, "", 400, &["limit"]),
        ("GET", "/api/apps/valid/logs?before=x", true, None, "", 400, &["before"]),
        ("GET", "/api/apps/valid/logs?page=0", true, None, "", 400, &["page"]),
    ];
    for (method, path, auth, content_type, body, status, expected) in cases {
        let token = auth.then_some(token.as_str());
        let res = request(addr, &raw(method, path, token, *content_type, body));
        let what = format!("{method} {path} {content_type:?} {body}");
        assert_eq!(res.status, *status, "{what}: {}", res.text());
        assert_eq!(res.header("content-type"), Some("application/json"), "{what}");
        assert!(res.json()["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}");
        assert_eq!(fields(&res), *expected, "{what}: {}", res.text());
    }
    assert!(pibl.shutdown());
}

#[test]
fn http_level_mistakes_get_json_errors_and_keep_alive_works() {
    let clock = Clock::system();
    let (pibl, _db) = start("http", &clock, |_| {});
    let addr = pibl.api_addr();

    let mut client = Client::connect(addr);
    let res = client.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").read_response(false).unwrap();
    assert_eq!(res.status, 404);
    assert!(res.json()["error"].as_str().unwrap().contains("/nope"));
    let res =
        client.send(b"PUT /api/users HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").read_response(false).unwrap();
    assert_eq!((res.status, res.header("allow")), (405, Some("POST, DELETE")));
    let res = client.send(b"GET /api/auth HTTP/1.1\r\nHost: x\r\n\r\n").read_response(false).unwrap();
    assert_eq!((res.status, res.header("allow")), (405, Some("POST")));
    let res = client.send(b"HEAD /api/apps HTTP/1.1\r\nHost: x\r\n\r\n").read_response(true).unwrap();
    assert_eq!(res.status, 405, "HEAD gets the head only, so the connection stays in step");
    let body = r#"{"email":"kept@x.io","password":"alive-1"}"#;
    let res = client.send(&curl_request("POST", "/api/users", None, Some(body))).read_response(false).unwrap();
    assert_eq!(res.status, 201, "four answers on one connection, then this one");

    let big = format!(r#"{{"email":"a@b.c","password":"{}"}}"#, "x".repeat(70 * 1024));
    let res = request(addr, &curl_request("POST", "/api/users", None, Some(&big)));
    assert_eq!(res.status, 413);
    assert!(res.json()["error"].is_string());
    let chunked = format!(
        "POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        String::from_utf8(chunked_body(big.as_bytes())).unwrap()
    );
    assert_eq!(request(addr, chunked.as_bytes()).status, 413);
    let res = request(addr, b"GARBAGE\r\n\r\n");
    assert_eq!(res.status, 400);
    assert!(res.json()["error"].is_string());
    assert!(pibl.shutdown());
}

fn chunked_body(body: &[u8]) -> Vec<u8> {
    chunked(body, 8192)
}
