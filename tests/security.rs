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

#[test]
fn endpoints_cannot_point_at_pibl_itself_or_internal_addresses_in_any_spelling() {
    let (pibl, _db) = start("ssrf", |_| {});
    let addr = pibl.api_addr();
    let token = register_and_login(addr, "mallory@x.io");
    let (api_port, data_port) = (addr.port(), pibl.proxy_addr().port());
    let mut refused = Vec::new();
    for port in [api_port, data_port] {
        for host in ["127.0.0.1", "127.1", "0x7f000001", "2130706433", "localhost", "[::ffff:127.0.0.1]", "::1"] {
            refused.push((host.to_string(), port, "own ports"));
        }
    }
    for (host, why) in [
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("169.254.169.254", "metadata"),
        ("fe80::1", "link-local"),
        ("8.8.8.8", "endpoint_allow"),
    ] {
        refused.push((host.to_string(), 80, why));
    }
    for (host, port, why) in refused {
        let body = format!(r#"{{"host":"{host}","port":{port},"statuspath":"/"}}"#);
        let res = api(addr, "POST", "/api/apps/ssrf", Some(&token), Some(&body));
        assert_eq!(res.status, 400, "{host}:{port} must be refused: {}", res.text());
        let detail = res.json()["details"][0].clone();
        assert_eq!(detail["field"], "host", "{host}");
        assert!(detail["message"].as_str().unwrap_or("").contains(why), "{host}:{port}: {detail}");
    }
    let backend = TestBackend::start(|_| ok("app"));
    let res = api(addr, "POST", "/api/apps/ssrf", Some(&token), Some(&endpoint_body(backend.addr, "/")));
    assert_eq!(res.status, 201, "{}", res.text());

    // A row that points at the API (an older pibl's, or a name that now resolves there) gets no
    // traffic: the route table checks again when it resolves.
    let app = pibl.state().store.app("ssrf").unwrap().unwrap();
    let owner = pibl.state().store.user("mallory@x.io").unwrap().unwrap();
    let ep = pibl::store::Endpoint { id: 0, host: "127.0.0.1".into(), port: api_port, statuspath: "/".into() };
    pibl.state().store.add_endpoint(&owner, &app.name, &ep, 1).unwrap();
    pibl.state().reload_routes().unwrap();
    let routes = pibl.state().router.snapshot();
    let route = routes.app("ssrf").unwrap();
    assert_eq!(route.endpoints.len(), 2);
    assert!(route.endpoints.iter().all(|e| e.backend.as_ref().is_none_or(|b| b.addr.port() != api_port)));
    for _ in 0..4 {
        let res = get(pibl.proxy_addr(), "/ssrf/metrics");
        assert_eq!(res.text(), "app", "only the real backend answers");
    }
    pibl.shutdown();
}

/// A client that has sent the head of a 60000-byte registration and one byte of its body.
fn slow_client(addr: SocketAddr) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let head =
        "POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{";
    s.write_all(head.as_bytes()).expect("send head");
    s
}

#[test]
fn slow_clients_hold_no_worker_and_get_408_at_the_request_deadline() {
    use std::io::{Read, Write};
    let (pibl, _db) = start("slow", |_| {});
    let addr = pibl.api_addr();
    register_and_login(addr, "fast@x.io");
    // As many slow clients as there are API workers, and more.
    let mut slow: Vec<_> = (0..pibl::api::API_THREADS + 2).map(|_| slow_client(addr)).collect();
    for s in &mut slow {
        s.write_all(b"\"").expect("a byte more");
    }
    // A fifth client logs in while they dawdle (the helper reads with a generous timeout).
    let token = login(addr, "fast@x.io", "password");
    assert!(!token.is_empty());
    assert_eq!(get(addr, "/api/openapi.yaml").status, 200);
    // ...and the slow ones were still connected, waiting, when it was answered.
    for s in &mut slow {
        s.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let waiting = matches!(s.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(waiting, "a slow client was answered or dropped before its deadline");
        s.set_nonblocking(false).unwrap();
    }
    // At the whole-request deadline (not per read: they kept sending), each gets 408.
    let mut first = slow.remove(0);
    first.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    let _ = first.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
    pibl.shutdown();
}

#[test]
fn an_idle_keep_alive_api_connection_is_closed_at_its_deadline() {
    use std::io::{Read, Write};
    let (pibl, _db) = start("idle", |_| {});
    let mut s = std::net::TcpStream::connect(pibl.api_addr()).expect("connect");
    s.write_all(b"GET /api/openapi.yaml HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    // The answer, then the end of the stream once the connection has idled past its limit: nothing
    // else happens on the API meanwhile, so the gate's deadline is what wakes it.
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut answer = Vec::new();
    let read = s.read_to_end(&mut answer);
    assert!(read.is_ok(), "the idle connection was never closed: {read:?}");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..answer.len().min(200)]));
    pibl.shutdown();
}

#[test]
fn one_address_holds_a_bounded_number_of_api_connections() {
    use std::io::Read;
    let (pibl, _db) = start("per-ip", |_| {});
    let addr = pibl.api_addr();
    let held: Vec<_> = (0..64).map(|_| std::net::TcpStream::connect(addr).expect("connect")).collect();
    let mut extra = std::net::TcpStream::connect(addr).expect("connect");
    extra.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    drop(held);
    // The slots come back as the connections close.
    wait_until("a connection is accepted again", || get(addr, "/api/openapi.yaml").status == 200);
    pibl.shutdown();
}

#[test]
fn admin_rights_come_from_the_host_never_from_registering_a_listed_address() {
    use pibl::store::admins::{self, Added, AdminError};
    let (pibl, _db) = start("admins", |_| {});
    let addr = pibl.api_addr();
    let store = &pibl.state().store;
    let now = || pibl.state().clock.now_ms();
    // `admins` lists ADMIN; registering it first (in another case) grants nothing.
    let squatter = register_and_login(addr, "Admin@Pibl.Test");
    assert_eq!(api(addr, "GET", "/api/blocked", Some(&squatter), None).status, 403);
    let dup = r#"{"email":"admin@pibl.test","password":"password"}"#;
    assert_eq!(api(addr, "POST", "/api/users", None, Some(dup)).status, 409, "one account per address, any case");
    // The operator cannot confirm an account whose password they do not know.
    assert!(matches!(admins::add(store, ADMIN, "operator-pw", now()), Err(AdminError::NotYourAccount(_))));
    assert_eq!(api(addr, "GET", "/api/blocked", Some(&squatter), None).status, 403);
    // Once that account is gone, the operator creates the admin on the host.
    let creds = r#"{"email":"ADMIN@pibl.test","password":"password"}"#;
    assert_eq!(api(addr, "DELETE", "/api/users", None, Some(creds)).status, 200);
    assert_eq!(admins::add(store, "Admin@PIBL.test", "operator-pw", now()).unwrap(), Added::Created);
    let admin = login(addr, "aDmIn@pibl.test", "operator-pw");
    assert_eq!(api(addr, "GET", "/api/blocked", Some(&admin), None).status, 200);
    assert_eq!(admins::add(store, ADMIN, "operator-pw", now()).unwrap(), Added::Confirmed);
    // Deleted and registered again by someone else: the grant was for the old account.
    let creds = r#"{"email":"admin@pibl.test","password":"operator-pw"}"#;
    assert_eq!(api(addr, "DELETE", "/api/users", None, Some(creds)).status, 200);
    let again = register_and_login(addr, ADMIN);
    assert_eq!(api(addr, "GET", "/api/blocked", Some(&again), None).status, 403);
    pibl.shutdown();
}

#[test]
fn proxy_admin_add_reads_the_password_from_stdin_for_scripts() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = TempDir::new("admin-cli");
    let db = dir.0.join("pibl.db");
    let config = dir.file("parser.ini", &format!("[DEFAULT]\ndatabase = {}\n", db.display()));
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_proxy"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run proxy --admin");
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, out) = run(&["--admin", "add", "Ops@Example.com"], "s3cret-pw\n");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("created ops@example.com"), "{out}");
    let (code, out) = run(&["--admin", "add", "ops@example.com"], "wrong-pw\n");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not its password"), "{out}");
    let (code, out) = run(&["--admin", "add", "x@example.com"], "short\n");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("6 to 30"), "{out}");
    let store = pibl::store::Store::open(&db, pibl::store::Durability::Full, 10).unwrap();
    let user = store.user("ops@example.com").unwrap().expect("created");
    assert!(pibl::store::credentials::verify_password("s3cret-pw", &user.password_hash).expect("a hash"));
    assert!(pibl::store::admins::is_admin(&store, &user).unwrap());
    drop(store);
    let (code, out) = run(&["--admin", "remove", "OPS@example.com"], "");
    assert_eq!(code, Some(0), "{out}");
    let store = pibl::store::Store::open(&db, pibl::store::Durability::Full, 10).unwrap();
    assert!(!pibl::store::admins::is_admin(&store, &user).unwrap());
}

#[test]
fn metrics_need_an_admin_token_where_the_api_faces_the_network() {
    // `api_bind` says where the operator exposed the API; the test still listens on loopback.
    let (pibl, _db) = start("metrics-auth", |c| c.api_bind = "0.0.0.0".parse().unwrap());
    let addr = pibl.api_addr();
    assert_eq!(get(addr, "/metrics").status, 401);
    let user = register_and_login(addr, "user@x.io");
    assert_eq!(api(addr, "GET", "/metrics", Some(&user), None).status, 403);
    let admin = admin_login(&pibl);
    let res = api(addr, "GET", "/metrics", Some(&admin), None);
    assert_eq!(res.status, 200);
    assert!(res.text().contains("pibl_build_info"));
    pibl.shutdown();
    // On loopback it stays open for a local scraper, unless the operator asks for a token.
    let (pibl, _db) = start("metrics-open", |_| {});
    assert_eq!(get(pibl.api_addr(), "/metrics").status, 200);
    pibl.shutdown();
    let (pibl, _db) = start("metrics-token", |c| c.metrics_auth = pibl::config::MetricsAuth::Token);
    assert_eq!(get(pibl.api_addr(), "/metrics").status, 401);
    pibl.shutdown();
}

#[test]
fn app_ids_cannot_take_over_reserved_paths_and_app_prefix_keeps_apps_apart() {
    let pool = TestBackend::start(|_| ok("default pool"));
    // Says which prefix the proxy forwarded a request with (health checks come too, without one).
    let app_backend = TestBackend::start(|req| ok(&format!("app {}", req.header("x-forwarded-prefix").unwrap_or("-"))));
    let db = TempDb::new("app-ids");
    let mut config = api_config(&[pool.addr], &db);
    config.routes = pibl::Config::from_ini_str("[route.shop]\nprefix = /shop/\nservers = 127.0.0.1:9\n", "t")
        .expect("route config")
        .routes;
    let pibl = start_pibl(config, Clock::system());
    let addr = pibl.api_addr();
    let token = register_and_login(addr, "squatter@x.io");
    let body = endpoint_body(app_backend.addr, "/");
    for id in ["api", "metrics", "dashboard", "shop"] {
        let res = api(addr, "POST", &format!("/api/apps/{id}"), Some(&token), Some(&body));
        assert_eq!(res.status, 400, "{id}: {}", res.text());
        assert_eq!(res.json()["details"][0]["field"], "appid");
    }
    assert_eq!(api(addr, "POST", "/api/apps/shared", Some(&token), Some(&body)).status, 201);
    assert_eq!(get(pibl.proxy_addr(), "/shared/x").text(), "app /shared", "apps live at the root by default");
    pibl.shutdown();

    // With app_prefix, apps live under it and the default pool keeps every other path.
    let db = TempDb::new("app-prefix");
    let mut config = api_config(&[pool.addr], &db);
    config.app_prefix = "/apps/".into();
    let pibl = start_pibl(config, Clock::system());
    let addr = pibl.api_addr();
    let token = register_and_login(addr, "owner@x.io");
    assert_eq!(api(addr, "POST", "/api/apps/shared", Some(&token), Some(&body)).status, 201);
    assert_eq!(get(pibl.proxy_addr(), "/apps/shared/x").text(), "app /apps/shared");
    assert_eq!(get(pibl.proxy_addr(), "/shared/x").text(), "default pool");
    pibl.shutdown();
}

#[test]
fn a_token_of_a_deleted_account_fails_even_in_the_second_it_was_remade_and_duplicate_keys_are_refused() {
    let secret = "a-known-secret-for-this-test-0123456789";
    let (pibl, _db) = start("same-second", |c| c.jwt_secret = secret.into());
    let addr = pibl.api_addr();
    let creds = r#"{"email":"re@x.io","password":"password"}"#;
    register_and_login(addr, "re@x.io");
    let old = pibl.state().store.user("re@x.io").unwrap().unwrap();
    assert_eq!(api(addr, "DELETE", "/api/users", None, Some(creds)).status, 200);
    assert_eq!(api(addr, "POST", "/api/users", None, Some(creds)).status, 201);
    let new = pibl.state().store.user("re@x.io").unwrap().unwrap();
    // A token of the old account issued in the very second the new one was made (what a login just
    // before the deletion gives when both fall in one second): refused, as the account differs.
    let tokens = Tokens::new(secret.as_bytes(), 300);
    let second = new.created_ms / 1000;
    let stale = tokens.issue_for("re@x.io", old.created_ms, second).unwrap();
    let res = api(addr, "GET", "/api/apps", Some(&stale), None);
    assert_eq!(res.status, 401, "{}", res.text());
    let fresh = tokens.issue_for("re@x.io", new.created_ms, second).unwrap();
    assert_eq!(api(addr, "GET", "/api/apps", Some(&fresh), None).status, 200);
    // The last of two equal keys does not win: the request is refused.
    let dup = r#"{"email":"dup@x.io","password":"password","email":"admin@pibl.test"}"#;
    let res = api(addr, "POST", "/api/users", None, Some(dup));
    assert_eq!(res.status, 400, "{}", res.text());
    assert!(res.text().contains("appears twice"), "{}", res.text());
    pibl.shutdown();
}

#[test]
fn lockout_scope_account_ip_locks_only_the_address_that_failed() {
    use pibl::http::request::{self, Limits};
    let (pibl, _db) = start("lockout-ip", |c| c.lockout_scope = pibl::config::LockoutScope::AccountIp);
    let addr = pibl.api_addr();
    register_and_login(addr, "victim@x.io");
    // Calls as if from another address (the dispatch is what the API runs for each request).
    let from = |ip: [u8; 4], password: &str| {
        let body = format!(r#"{{"email":"victim@x.io","password":"{password}"}}"#);
        let head = format!(
            "POST /api/auth HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let limits = Limits { max_head_bytes: 16 * 1024, max_headers: 100, max_body_bytes: 1024 };
        let (req, _) = request::parse(head.as_bytes(), &limits).unwrap().unwrap();
        pibl::api::dispatch::handle(pibl.state(), &req, body.as_bytes(), std::net::IpAddr::from(ip)).status
    };
    for _ in 0..5 {
        assert_eq!(from([10, 0, 0, 66], "wrong-password"), 401);
    }
    wait_until("the attacker's address is locked", || from([10, 0, 0, 66], "password") == 423);
    // The owner, from elsewhere, is not.
    assert_eq!(from([10, 0, 0, 7], "password"), 200);
    login(addr, "victim@x.io", "password");
    let admin = admin_login(&pibl);
    let blocked = api(addr, "GET", "/api/blocked", Some(&admin), None).json();
    assert_eq!(blocked["users-blocked"], serde_json::json!(["victim@x.io from 10.0.0.66"]));
    let path = "/api/blocked/victim%40x.io%20from%2010.0.0.66";
    assert_eq!(api(addr, "DELETE", path, Some(&admin), None).status, 200);
    assert_eq!(from([10, 0, 0, 66], "password"), 200);
    pibl.shutdown();
}

#[test]
fn owners_learn_up_or_down_from_health_checks_never_why() {
    let (pibl, _db) = start("health-detail", |_| {});
    let addr = pibl.api_addr();
    let token = register_and_login(addr, "owner@x.io");
    // One endpoint answers its status path 503, the other refuses connections: to the owner both
    // are just down (the reasons would tell a port scanner which ports are open).
    let failing = TestBackend::start(|_| Reply::Raw(b"HTTP/1.1 503 No\r\nContent-Length: 0\r\n\r\n".to_vec()));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for backend in [failing.addr, closed] {
        let res = api(addr, "POST", "/api/apps/probe", Some(&token), Some(&endpoint_body(backend, "/status")));
        assert_eq!(res.status, 201, "{}", res.text());
    }
    let health = || -> Vec<String> {
        api(addr, "GET", "/api/apps/probe/logs", Some(&token), None).json()["logs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["kind"] == "health")
            .map(|l| l["detail"].as_str().unwrap_or("").to_string())
            .collect()
    };
    wait_until("both endpoints are marked down", || health().len() == 2);
    for detail in health() {
        assert!(detail.ends_with(": out of rotation"), "{detail}");
    }
    pibl.shutdown();
}
