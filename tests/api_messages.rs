//! The API's error messages, as a person reads them: one table over the error paths (no token, an
//! empty token, another scheme, a forged token, bad JSON, bad fields, bad parameters, wrong method,
//! wrong media type, wrong password, not an admin, no such path), each with its status and its exact
//! `error` text, in the `{"error", "details"}` shape.

mod common;

use common::*;
use pibl::clock::Clock;

/// The seed's example token: well formed, signed with another secret.
const FORGED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZGVudGl0eSI6ImFuZ2VsQGFuZ2VsLmNvbSIsImlhdCI6MTQ2MzkxNTE1MCwibmJmIjoxNDYzOTE1MTUwLCJleHAiOjE0NjM5MTU0NTB9.5NXV8LxNFUUU1MbPxRa-tLsGU-i23G0BviIM7vX_ed4";

/// A request with these extra header lines (each ending in CRLF) and this body.
fn raw(method: &str, path: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost:5000\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn every_api_error_reads_as_a_sentence() {
    let backend = TestBackend::named("b");
    let db = TempDb::new("messages");
    let pibl = start_pibl(api_config(&[backend.addr], &db), Clock::system());
    let api_addr = pibl.api_addr();
    let token = register_and_login(api_addr, "reader@pibl.test");
    let jwt = format!("Authorization: JWT {token}\r\n");
    let json = "Content-Type: application/json\r\n";
    let how = "send the header `Authorization: JWT <token>` (or `Bearer <token>`) with a token from POST /api/auth";

    let table: Vec<(&str, Vec<u8>, u16, String)> = vec![
        ("no token", raw("GET", "/api/apps", "", ""), 401, format!("this request needs a token: {how}")),
        (
            "the JWT scheme with no token",
            raw("GET", "/api/apps", "Authorization: JWT \r\n", ""),
            401,
            "the Authorization header says JWT but carries no token after it: send `Authorization: JWT <token>` \
             with a token from POST /api/auth"
                .into(),
        ),
        (
            "another scheme",
            raw("GET", "/api/apps", "Authorization: Basic dXNlcjpwYXNz\r\n", ""),
            401,
            "the Authorization header must be `JWT <token>` or `Bearer <token>`, with a token from POST /api/auth"
                .into(),
        ),
        (
            "a forged token",
            raw("GET", "/api/apps", &format!("Authorization: Bearer {FORGED}\r\n"), ""),
            401,
            "this token is not valid: it is malformed, was changed, or was signed by another server; \
             get a new one from POST /api/auth"
                .into(),
        ),
        (
            "a body that is not JSON",
            raw("POST", "/api/users", json, "{nope"),
            400,
            "the request body is not valid JSON (key must be a string at line 1 column 2)".into(),
        ),
        (
            "JSON that is not an object",
            raw("POST", "/api/users", json, "[1]"),
            400,
            "the request body must be a JSON object ({...}), not a list or a single value".into(),
        ),
        (
            "one bad field",
            raw("POST", "/api/users", json, r#"{"email":"a@b.io","password":"abc"}"#),
            400,
            "the request body's password must be 6 to 30 characters long (it has 3)".into(),
        ),
        (
            "two bad fields",
            raw("POST", "/api/users", json, "{}"),
            400,
            "some fields of the request body are wrong; `details` names each one".into(),
        ),
        (
            "a bad app id",
            raw("GET", "/api/apps/Hello_World", &jwt, ""),
            400,
            "the appid in the request must be 1-63 lower-case letters, digits or '-', not starting or ending \
             with '-' (like a DNS label)"
                .into(),
        ),
        (
            "a method the path does not take",
            raw("PUT", "/api/auth", "", ""),
            405,
            "this path does not take that method; use POST".into(),
        ),
        (
            "a body not declared as JSON",
            raw("POST", "/api/auth", "Content-Type: text/plain\r\n", "{}"),
            415,
            "send the body as JSON with the header Content-Type: application/json".into(),
        ),
        (
            "a wrong password",
            raw("POST", "/api/auth", json, r#"{"email":"reader@pibl.test","password":"wrong-one"}"#),
            401,
            "wrong e-mail or password".into(),
        ),
        (
            "the blocked list without being an admin",
            raw("GET", "/api/blocked", &jwt, ""),
            403,
            "only admins (made on the host with `proxy --admin add`) may list or unblock blocked users".into(),
        ),
        ("no such app", raw("GET", "/api/apps/nothing-here", &jwt, ""), 404, "no app called nothing-here".into()),
    ];

    for (what, bytes, status, message) in table {
        let res = request(api_addr, &bytes);
        assert_eq!(res.status, status, "{what}: {}", res.text());
        let body = res.json();
        assert_eq!(body["error"].as_str(), Some(message.as_str()), "{what}");
        assert!(body["details"].is_array(), "{what}: the error shape keeps `details`");
        // No Rust names leak through (`InvalidSignature`, `Error(...)`): lower case, then words.
        let camel = message.split(|c: char| !c.is_ascii_alphanumeric()).find(|word| {
            word.len() > 2
                && word.chars().skip(1).any(|c| c.is_ascii_uppercase())
                && word.chars().any(|c| c.is_ascii_lowercase())
        });
        assert_eq!(camel, None, "{what}: {message}");
    }
}
