//! The management API end to end, as the seed's `curl` examples use it (raw HTTP on real sockets):
//! users, tokens, apps with endpoints on real test backends, traffic through the data plane,
//! health checks, execution logs, cascades, purge, and restart on the same database.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pibl::clock::Clock;
use serde_json::Value;

/// A backend that answers `name` everywhere but on `/status`, which answers 200 while `healthy`
/// holds and 503 otherwise.
fn app_backend(name: &'static str, healthy: Arc<AtomicBool>) -> TestBackend {
    TestBackend::start(move |req| {
        if req.target == "/status" {
            if healthy.load(Ordering::SeqCst) {
                ok("up")
            } else {
                Reply::Raw(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown".to_vec())
            }
        } else {
            ok(name)
        }
    })
}

fn up() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(true))
}

fn counts(bodies: &[String]) -> HashMap<String, usize> {
    bodies.iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.clone()).or_insert(0) += 1;
        m
    })
}

fn request_logs(addr: std::net::SocketAddr, token: &str, app: &str) -> Vec<Value> {
    let res = api(addr, "GET", &format!("/api/apps/{app}/logs?limit=1000"), Some(token), None);
    assert_eq!(res.status, 200, "{}", res.text());
    res.json()["logs"].as_array().cloned().unwrap_or_default().into_iter().filter(|l| l["kind"] == "request").collect()
}

#[test]
fn seed_flow_register_token_app_traffic_logs_delete() {
    let db = TempDb::new("seed");
    seed_flow(db.0.clone());
}

/// The same flow, unchanged, against an instance whose management state is in PostgreSQL.
#[test]
fn seed_flow_on_postgresql() {
    let Some(pg) = TempPg::new("seed") else { return };
    seed_flow(std::path::PathBuf::from(&pg.url));
}

/// The seed's `curl` examples in order, on the database `database` (a file or a postgres:// URL).
fn seed_flow(database: std::path::PathBuf) {
    let (alpha, beta) = (app_backend("alpha", up()), app_backend("beta", up()));
    let default = TestBackend::named("default");
    let unused = TempDb::new("seed-unused");
    let config = pibl::Config { database, ..api_config(&[default.addr], &unused) };
    let pibl = start_pibl(config, Clock::system());
    let addr = pibl.api_addr();

    // Registro de usuarios (the seed's first curl), then the same address again.
    let creds = r#"{"email":"your@email.com","password":"yourpassword"}"#;
    let res = api(addr, "POST", "/api/users", None, Some(creds));
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(res.json()["email"], "your@email.com");
    let res = api(addr, "POST", "/api/users", None, Some(creds));
    assert_eq!(res.status, 409);
    assert!(res.json()["error"].as_str().unwrap().contains("already exists"));

    // Obtención de tokens.
    let res = api(addr, "POST", "/api/auth", None, Some(creds));
    assert_eq!(res.status, 200, "{}", res.text());
    let token = res.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT");

    // Registro de una nueva aplicación, then a second endpoint (status path without its slash).
    let res = api(addr, "POST", "/api/apps/helloworld", Some(&token), Some(&endpoint_body(alpha.addr, "/status")));
    assert_eq!(res.status, 201, "{}", res.text());
    let app = res.json();
    assert_eq!((app["app"].as_str(), app["owner"].as_str()), (Some("helloworld"), Some("your@email.com")));
    assert_eq!(app["endpoints"].as_array().map(Vec::len), Some(1));
    let res = api(addr, "POST", "/api/apps/helloworld", Some(&token), Some(&endpoint_body(beta.addr, "status")));
    assert_eq!(res.status, 201, "{}", res.text());
    let app = res.json();
    let endpoints = app["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2);
    assert_eq!(endpoints[1]["statuspath"], "/status", "the leading slash is added");
    assert_eq!(endpoints[1]["port"], beta.addr.port());
    for key in ["id", "host", "port", "statuspath", "healthy", "last_check"] {
        assert!(endpoints[0].get(key).is_some(), "endpoint has {key}: {app}");
    }
    let res = api(addr, "POST", "/api/apps/helloworld", Some(&token), Some(&endpoint_body(beta.addr, "/status")));
    assert_eq!(res.status, 409, "same endpoint twice");

    // Traffic through the data plane: spread over both endpoints, prefix stripped.
    let mut client = Client::connect(pibl.proxy_addr());
    let bodies: Vec<String> = (0..10).map(|_| client.get("/helloworld/some/page?x=1").text()).collect();
    assert_eq!(counts(&bodies), HashMap::from([("alpha".to_string(), 5), ("beta".to_string(), 5)]));
    let seen = alpha.received.lock().unwrap().iter().find(|r| r.target == "/some/page?x=1").cloned();
    let seen = seen.expect("alpha got the stripped path");
    assert_eq!(seen.header("x-forwarded-prefix"), Some("/helloworld"));
    assert_eq!(client.get("/helloworld").text(), "alpha", "the bare prefix reaches the app as /");
    assert_eq!(client.get("/other/path").text(), "default", "no app: the ip_serverN pool");
    assert_eq!(default.last().target, "/other/path");

    // The owner sees the execution log, newest first, paginated.
    wait_until("the requests are in the execution log", || request_logs(addr, &token, "helloworld").len() >= 11);
    let logs = request_logs(addr, &token, "helloworld");
    assert_eq!(logs[0]["path"], "/helloworld", "newest first");
    assert_eq!((logs[1]["method"].as_str(), logs[1]["status"].as_u64()), (Some("GET"), Some(200)));
    assert_eq!(logs[1]["path"], "/helloworld/some/page?x=1");
    assert_eq!(logs[1]["actor"], "127.0.0.1");
    assert!(logs[1]["endpoint"].as_str().is_some() && logs[1]["duration_ms"].as_f64().is_some());
    let page = api(addr, "GET", "/api/apps/helloworld/logs?limit=2", Some(&token), None).json();
    assert_eq!(page["logs"].as_array().map(Vec::len), Some(2));
    let next = page["next"].as_str().expect("a next page").to_string();
    let older = api(addr, "GET", &next, Some(&token), None).json();
    assert!(older["logs"][0]["id"].as_i64() < page["logs"][1]["id"].as_i64());
    let page2 = api(addr, "GET", "/api/apps/helloworld/logs?limit=2&page=2", Some(&token), None).json();
    assert_eq!(page2["logs"], older["logs"]);
    let actions: Vec<String> = api(addr, "GET", "/api/apps/helloworld/logs", Some(&token), None).json()["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "action")
        .map(|l| l["detail"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(actions.iter().any(|a| a == "created the app"), "{actions:?}");
    assert_eq!(actions.iter().filter(|a| a.starts_with("added endpoint")).count(), 2);

    // Another user can neither see nor change it.
    let other = register_and_login(addr, "other@email.com");
    for (method, path, body) in [
        ("GET", "/api/apps/helloworld", None),
        ("GET", "/api/apps/helloworld/logs", None),
        ("DELETE", "/api/apps/helloworld", None),
        ("POST", "/api/apps/helloworld", Some(endpoint_body(default.addr, "/"))),
    ] {
        let res = api(addr, method, path, Some(&other), body.as_deref());
        assert_eq!(res.status, 403, "{method} {path}: {}", res.text());
    }
    assert_eq!(api(addr, "GET", "/api/apps", Some(&other), None).json()["apps"], serde_json::json!([]));
    let mine = api(addr, "GET", "/api/apps", Some(&token), None).json();
    assert_eq!(mine["apps"][0]["app"], "helloworld");

    // Baja de una aplicación (the seed's curl: no body), then the path falls back to the default pool.
    let res = api(addr, "DELETE", "/api/apps/helloworld", Some(&token), None);
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(client.get("/helloworld/x").text(), "default");
    assert_eq!(api(addr, "GET", "/api/apps/helloworld", Some(&token), None).status, 404);
    assert_eq!(api(addr, "DELETE", "/api/apps/helloworld", Some(&token), None).status, 404);

    // The id is free again, for anyone.
    let res = api(addr, "POST", "/api/apps/helloworld", Some(&other), Some(&endpoint_body(beta.addr, "/status")));
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(res.json()["owner"], "other@email.com");
    assert_eq!(client.get("/helloworld/").text(), "beta");
    let logs = api(addr, "GET", "/api/apps/helloworld/logs", Some(&other), None).json();
    let old = logs["logs"].as_array().unwrap().iter().filter(|l| l["path"] == "/helloworld/some/page?x=1").count();
    assert_eq!(old, 0, "the old app's logs went with it: {logs}");
    assert!(pibl.shutdown());
}

#[test]
fn unhealthy_endpoint_leaves_rotation_and_returns() {
    let beta_up = up();
    let (alpha, beta) = (app_backend("alpha", up()), app_backend("beta", beta_up.clone()));
    let db = TempDb::new("health");
    let pibl = start_pibl(api_config(&[alpha.addr], &db), Clock::system());
    let addr = pibl.api_addr();
    let token = register_and_login(addr, "ops@x.io");
    for b in [&alpha, &beta] {
        let res = api(addr, "POST", "/api/apps/shop", Some(&token), Some(&endpoint_body(b.addr, "/status")));
        assert_eq!(res.status, 201, "{}", res.text());
    }
    let health = |i: usize| {
        let app = api(addr, "GET", "/api/apps/shop", Some(&token), None).json();
        (app["endpoints"][i]["healthy"].as_bool(), app["endpoints"][i]["last_check"].is_string())
    };
    wait_until("beta has been checked", || health(1) == (Some(true), true));

    beta_up.store(false, Ordering::SeqCst);
    wait_until("beta is out of rotation", || health(1).0 == Some(false));
    assert_eq!(health(0).0, Some(true));
    let mut client = Client::connect(pibl.proxy_addr());
    let bodies: Vec<String> = (0..6).map(|_| client.get("/shop/").text()).collect();
    assert_eq!(counts(&bodies), HashMap::from([("alpha".to_string(), 6)]));

    beta_up.store(true, Ordering::SeqCst);
    wait_until("beta is back", || health(1).0 == Some(true));
    let bodies: Vec<String> = (0..6).map(|_| client.get("/shop/").text()).collect();
    assert_eq!(counts(&bodies), HashMap::from([("alpha".to_string(), 3), ("beta".to_string(), 3)]));
    wait_until("the health changes are in the log", || {
        let logs = api(addr, "GET", "/api/apps/shop/logs", Some(&token), None).json();
        logs["logs"].as_array().unwrap().iter().filter(|l| l["kind"] == "health").count() >= 2
    });
    assert!(pibl.shutdown());
}

#[test]
fn deleting_a_user_cascades_to_apps_endpoints_and_logs() {
    let alpha = app_backend("alpha", up());
    let default = TestBackend::named("default");
    let db = TempDb::new("cascade");
    let clock = Clock::system();
    let pibl = start_pibl(api_config(&[default.addr], &db), clock.clone());
    let addr = pibl.api_addr();
    let token = register_and_login(addr, "leaver@x.io");
    let res = api(addr, "POST", "/api/apps/goner", Some(&token), Some(&endpoint_body(alpha.addr, "/status")));
    assert_eq!(res.status, 201);
    assert_eq!(get(pibl.proxy_addr(), "/goner/").text(), "alpha");

    let wrong = r#"{"email":"leaver@x.io","password":"not-mine"}"#;
    assert_eq!(api(addr, "DELETE", "/api/users", None, Some(wrong)).status, 401);
    let creds = r#"{"email":"leaver@x.io","password":"password"}"#;
    let res = api(addr, "DELETE", "/api/users", None, Some(creds));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["apps_deleted"], serde_json::json!(["goner"]));
    assert_eq!(get(pibl.proxy_addr(), "/goner/").text(), "default", "the route is gone");
    assert_eq!(api(addr, "GET", "/api/apps", Some(&token), None).status, 401, "the user's token is dead");
    assert!(pibl.state().store.app("goner").unwrap().is_none());

    // Registering the same address again does not revive the old token or apps.
    clock.advance(Duration::from_secs(2));
    let fresh = register_and_login(addr, "leaver@x.io");
    assert_eq!(api(addr, "GET", "/api/apps", Some(&token), None).status, 401);
    assert_eq!(api(addr, "GET", "/api/apps", Some(&fresh), None).json()["apps"], serde_json::json!([]));
    assert!(pibl.shutdown());
}

#[test]
fn apps_left_without_endpoints_are_purged() {
    let alpha = app_backend("alpha", up());
    let db = TempDb::new("purge");
    let config = pibl::Config { purge_interval: Duration::from_millis(50), ..api_config(&[alpha.addr], &db) };
    let pibl = start_pibl(config, Clock::system());
    let addr = pibl.api_addr();
    let token = register_and_login(addr, "tidy@x.io");
    let res = api(addr, "POST", "/api/apps/empty-soon", Some(&token), Some(&endpoint_body(alpha.addr, "/status")));
    let id = res.json()["endpoints"][0]["id"].as_i64().unwrap();
    assert_eq!(api(addr, "DELETE", "/api/apps/empty-soon/endpoints/999", Some(&token), None).status, 404);
    let res = api(addr, "DELETE", &format!("/api/apps/empty-soon/endpoints/{id}"), Some(&token), None);
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["endpoints"], serde_json::json!([]));
    wait_until("the purge deletes the app", || {
        api(addr, "GET", "/api/apps/empty-soon", Some(&token), None).status == 404
    });
    assert!(pibl.shutdown());
}

#[test]
fn restart_keeps_users_apps_tokens_blocks_and_logs() {
    let alpha = app_backend("alpha", up());
    let db = TempDb::new("restart");
    let config = api_config(&[alpha.addr], &db);
    let first = start_pibl(config.clone(), Clock::system());
    let addr = first.api_addr();
    let token = register_and_login(addr, "keeper@x.io");
    let admin = admin_login(&first);
    let res = api(addr, "POST", "/api/apps/durable", Some(&token), Some(&endpoint_body(alpha.addr, "/status")));
    assert_eq!(res.status, 201);
    assert_eq!(get(first.proxy_addr(), "/durable/").text(), "alpha");
    let bad = r#"{"email":"guesser@x.io","password":"wrong-one"}"#;
    for _ in 0..5 {
        assert_eq!(api(addr, "POST", "/api/auth", None, Some(bad)).status, 401);
    }
    wait_until("guesser is blocked", || {
        api(addr, "GET", "/api/blocked", Some(&admin), None).json()["users-blocked"]
            == serde_json::json!(["guesser@x.io"])
    });
    assert!(first.shutdown());

    let second = start_pibl(config, Clock::system());
    let addr = second.api_addr();
    let app = api(addr, "GET", "/api/apps/durable", Some(&token), None);
    assert_eq!(app.status, 200, "the token signed before the restart still works: {}", app.text());
    assert_eq!(app.json()["owner"], "keeper@x.io");
    assert_eq!(request_logs(addr, &token, "durable").len(), 1, "the request logged before the restart");
    assert_eq!(get(second.proxy_addr(), "/durable/").text(), "alpha", "routes are loaded at start");
    let blocked = api(addr, "GET", "/api/blocked", Some(&admin), None).json();
    assert_eq!(blocked["users-blocked"], serde_json::json!(["guesser@x.io"]), "a restart unblocks nobody");
    login(addr, "keeper@x.io", "password");
    assert!(second.shutdown());
}

#[test]
fn default_pool_is_checked_on_health_path() {
    let beta_up = up();
    let (alpha, beta) = (app_backend("alpha", up()), app_backend("beta", beta_up.clone()));
    let db = TempDb::new("default-health");
    let config = pibl::Config { health_path: "/status".into(), ..api_config(&[alpha.addr, beta.addr], &db) };
    let pibl = start_pibl(config, Clock::system());
    let mut client = Client::connect(pibl.proxy_addr());
    beta_up.store(false, Ordering::SeqCst);
    wait_until("beta leaves the default pool", || {
        (0..4).map(|_| client.get("/page").text()).all(|body| body == "alpha")
    });
    beta_up.store(true, Ordering::SeqCst);
    wait_until("beta rejoins", || (0..4).any(|_| client.get("/page").text() == "beta"));
    assert!(pibl.shutdown());
}

#[test]
fn concurrent_clients_each_get_their_app_routed() {
    let alpha = app_backend("alpha", up());
    let default = TestBackend::named("default");
    let db = TempDb::new("concurrent");
    let pibl = start_pibl(api_config(&[default.addr], &db), Clock::system());
    let (addr, proxy) = (pibl.api_addr(), pibl.proxy_addr());
    let threads: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let token = register_and_login(addr, &format!("user{i}@x.io"));
                for j in 0..3 {
                    let path = format!("/api/apps/app-{i}-{j}");
                    let res = api(addr, "POST", &path, Some(&token), Some(&endpoint_body(alpha.addr, "/status")));
                    assert_eq!(res.status, 201, "{path}: {}", res.text());
                }
                token
            })
        })
        .collect();
    let tokens: Vec<String> = threads.into_iter().map(|t| t.join().expect("client thread")).collect();
    for (i, token) in tokens.iter().enumerate() {
        for j in 0..3 {
            assert_eq!(get(proxy, &format!("/app-{i}-{j}/")).text(), "alpha", "app-{i}-{j} is routed");
        }
        let apps = api(addr, "GET", "/api/apps", Some(token), None).json();
        assert_eq!(apps["apps"].as_array().map(Vec::len), Some(3));
    }
    assert!(pibl.shutdown());
}
