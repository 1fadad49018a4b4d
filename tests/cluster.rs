//! Several real `proxy` processes sharing one PostgreSQL database: what one instance's API changes is
//! in force on the others (accounts, tokens, apps, deletes, lock-outs, cache purges), instances
//! starting together migrate once, and PostgreSQL going away and coming back costs no data-plane
//! request. Needs a PostgreSQL server: `PIBL_TEST_PG_URL` (a superuser URL, as
//! `scripts/pg-test-cluster.sh start` prints); each test makes its own database on it. Without it the
//! tests say SKIPPED loudly and pass, except in CI, where they fail.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const CLUSTER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-test-cluster.sh");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// One `proxy` process on loopback ports, killed on drop.
struct Instance {
    child: Child,
    proxy: SocketAddr,
    api: SocketAddr,
    stderr: PathBuf,
    _dir: TempDir,
}

impl Instance {
    /// Starts without waiting; `via_env` passes the URL as `PIBL_DATABASE_URL` instead of in the INI.
    fn spawn(name: &str, url: &str, default_backend: SocketAddr, via_env: bool, extra: &str) -> Instance {
        let dir = TempDir::new(&format!("cluster-{name}"));
        let (port, api_port) = (free_port(), free_port());
        let database = if via_env { dir.0.join("unused.db").display().to_string() } else { url.to_string() };
        let ini = dir.file(
            "parser.ini",
            &format!(
                "[DEFAULT]\nbind = 127.0.0.1\nport = {port}\napi_port = {api_port}\ndatabase = {database}\n\
                 threads = 4\nip_server1 = {default_backend}\naccess_log = off\nlog_level = warn\n\
                 admins = {ADMIN}\nauth_rate = 0\nhealth_interval = 1\nshutdown_grace = 1\n{extra}"
            ),
        );
        let stderr = dir.0.join("stderr.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxy"));
        cmd.arg("--config").arg(&ini).stdin(Stdio::null()).stdout(Stdio::null());
        cmd.stderr(std::fs::File::create(&stderr).expect("stderr file"));
        if via_env {
            cmd.env("PIBL_DATABASE_URL", url);
        } else {
            cmd.env_remove("PIBL_DATABASE_URL");
        }
        let child = cmd.spawn().expect("start proxy");
        Instance {
            child,
            proxy: SocketAddr::from(([127, 0, 0, 1], port)),
            api: SocketAddr::from(([127, 0, 0, 1], api_port)),
            stderr,
            _dir: dir,
        }
    }

    /// Waits until the API answers (the database is open and migrated by then).
    fn ready(mut self) -> Instance {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll proxy") {
                panic!("proxy exited ({status}): {}", std::fs::read_to_string(&self.stderr).unwrap_or_default());
            }
            if try_request(self.api, "GET", "/api/openapi.yaml", None, None).is_ok_and(|(s, _)| s == 200) {
                return self;
            }
            assert!(Instant::now() < deadline, "the API of {} did not come up", self.api);
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `n` instances at once on `url` (so their migrations race) and waits for all of them.
fn cluster(n: usize, url: &str, default_backend: SocketAddr, extra: &str) -> Vec<Instance> {
    let names = ["a", "b", "c"];
    let started: Vec<Instance> =
        (0..n).map(|i| Instance::spawn(names[i], url, default_backend, i % 2 == 1, extra)).collect();
    started.into_iter().map(Instance::ready).collect()
}

/// One request on its own connection that never panics: (status, body), or why it failed.
fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(WAIT))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: cluster.test\r\nConnection: close\r\n");
    if let Some(token) = token {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no status line: {text:?}")))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Polls `cond` until it holds; returns how long that took. The deadline is generous on purpose:
/// the figure printed is what matters, the deadline only stops a hung test.
fn poll(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting until {what}");
        thread::sleep(Duration::from_millis(10));
    }
    let took = start.elapsed();
    eprintln!("cluster: {what}: {took:?}");
    took
}

fn creds(email: &str, password: &str) -> String {
    format!(r#"{{"email":"{email}","password":"{password}"}}"#)
}

#[test]
fn accounts_apps_and_deletes_reach_every_instance() {
    let Some(pg) = TempPg::new("reach") else { return };
    let default = TestBackend::named("default-pool");
    let app_backend = TestBackend::named("app-backend");
    // Three instances starting together: their migrations race under the advisory lock.
    let nodes = cluster(3, &pg.url, default.addr, "");
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut check = postgres::Client::connect(&pg.url, postgres::NoTls).expect("connect");
    let steps: i64 = check.query_one("SELECT COUNT(*) FROM schema_version", &[]).expect("versions").get(0);
    let distinct: i64 =
        check.query_one("SELECT COUNT(DISTINCT version) FROM schema_version", &[]).expect("versions").get(0);
    assert_eq!(steps, distinct, "each migration step applied once");

    // Register on A, log in on B, use the token on C.
    let res = api(a.api, "POST", "/api/users", None, Some(&creds("owner@x.io", "password")));
    assert_eq!(res.status, 201, "{}", res.text());
    let token = login(b.api, "owner@x.io", "password");
    let res = api(c.api, "GET", "/api/apps", Some(&token), None);
    assert_eq!(res.status, 200, "a token from B works on C: {}", res.text());

    // An app created on B is routed by A.
    let res = api(b.api, "POST", "/api/apps/shared", Some(&token), Some(&endpoint_body(app_backend.addr, "/")));
    assert_eq!(res.status, 201, "{}", res.text());
    let took = poll("an app created on B is routed by A", Duration::from_secs(10), || {
        try_request(a.proxy, "GET", "/shared/", None, None).is_ok_and(|(s, body)| s == 200 && body == "app-backend")
    });
    assert!(took < Duration::from_secs(5), "{took:?}");
    let res = api(c.api, "GET", "/api/apps/shared", Some(&token), None);
    assert_eq!((res.status, res.json()["owner"].as_str()), (200, Some("owner@x.io")));

    // Deleting the user on C takes its apps off A (the path falls back to the default pool).
    let res = api(c.api, "DELETE", "/api/users", None, Some(&creds("owner@x.io", "password")));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["apps_deleted"], serde_json::json!(["shared"]));
    poll("the deleted user's app is gone from A", Duration::from_secs(10), || {
        try_request(a.proxy, "GET", "/shared/", None, None).is_ok_and(|(_, body)| body == "default-pool")
    });
    let res = api(a.api, "GET", "/api/apps", Some(&token), None);
    assert_eq!(res.status, 401, "the token of a deleted user is refused everywhere: {}", res.text());
}

#[test]
fn failed_logins_across_instances_lock_everywhere() {
    let Some(pg) = TempPg::new("lockout") else { return };
    let default = TestBackend::named("default-pool");
    let nodes = cluster(2, &pg.url, default.addr, "lockout_secs = 60\n");
    let (a, b) = (&nodes[0], &nodes[1]);
    // The grant `proxy --admin add` makes on the host, in the shared database: in force on every instance.
    let database = pibl::store::Database::parse(&pg.url).expect("the test database's URL");
    let store = pibl::store::Store::connect(&database, pibl::store::Durability::Full, 100).expect("connect");
    let now_ms = pibl::clock::Clock::system().now_ms();
    pibl::store::admins::add(&store, ADMIN, "password", now_ms).expect("make the admin");
    let admin = login(a.api, ADMIN, "password");
    let res = api(b.api, "POST", "/api/users", None, Some(&creds("victim@x.io", "right-password")));
    assert_eq!(res.status, 201);
    // Five wrong passwords, alternating between the instances: no instance sees five by itself.
    for i in 0..5 {
        let node = if i % 2 == 0 { a } else { b };
        let res = api(node.api, "POST", "/api/auth", None, Some(&creds("victim@x.io", "wrong-password")));
        assert_eq!(res.status, 401, "attempt {i}: {}", res.text());
    }
    poll("the account is on the blocked list", Duration::from_secs(10), || {
        let res = api(b.api, "GET", "/api/blocked", Some(&admin), None);
        res.status == 200 && res.json()["users-blocked"] == serde_json::json!(["victim@x.io"])
    });
    for node in [a, b] {
        let res = api(node.api, "POST", "/api/auth", None, Some(&creds("victim@x.io", "right-password")));
        assert_eq!(res.status, 423, "locked on {}: {}", node.api, res.text());
    }
    // Unblocked on B: logs in on A.
    let res = api(b.api, "DELETE", "/api/blocked/victim%40x.io", Some(&admin), None);
    assert_eq!(res.status, 200, "{}", res.text());
    let res = api(a.api, "POST", "/api/auth", None, Some(&creds("victim@x.io", "right-password")));
    assert_eq!(res.status, 200, "{}", res.text());
}

#[test]
fn cache_purge_on_one_instance_reaches_the_others() {
    let Some(pg) = TempPg::new("purge") else { return };
    let default = TestBackend::named("default-pool");
    let origin = TestBackend::start(|_| {
        let body = "cacheable";
        Reply::Raw(
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=300\r\nCache-Tag: pages\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let nodes = cluster(2, &pg.url, default.addr, "ttl = 300\n");
    let (a, b) = (&nodes[0], &nodes[1]);
    let token = register_and_login(a.api, "cache@x.io");
    let res = api(a.api, "POST", "/api/apps/cached", Some(&token), Some(&endpoint_body(origin.addr, "/")));
    assert_eq!(res.status, 201, "{}", res.text());
    poll("B routes the app", Duration::from_secs(10), || {
        try_request(b.proxy, "GET", "/cached/page", None, None).is_ok_and(|(s, body)| s == 200 && body == "cacheable")
    });
    let fetched = origin.requests();
    let (status, _) = try_request(b.proxy, "GET", "/cached/page", None, None).expect("a cached answer");
    assert_eq!((status, origin.requests()), (200, fetched), "B answers from its cache");

    // Purged through A: B's next request goes to the origin again.
    let res = api(a.api, "DELETE", "/api/cache?url=/cached/page", Some(&token), None);
    assert_eq!(res.status, 200, "{}", res.text());
    poll("B's entry is purged", Duration::from_secs(10), || {
        let _ = try_request(b.proxy, "GET", "/cached/page", None, None);
        origin.requests() > fetched
    });

    // By tag, then by path prefix, through A: each time B's stored answer goes too.
    for query in ["tag=pages", "prefix=/cached/"] {
        let fetched = origin.requests();
        let (status, _) = try_request(b.proxy, "GET", "/cached/page", None, None).expect("a cached answer");
        assert_eq!((status, origin.requests()), (200, fetched), "B answers from its cache before ?{query}");
        let res = api(a.api, "DELETE", &format!("/api/cache?{query}"), Some(&token), None);
        assert_eq!(res.status, 200, "{query}: {}", res.text());
        poll(&format!("B's entry is purged by ?{query}"), Duration::from_secs(10), || {
            let _ = try_request(b.proxy, "GET", "/cached/page", None, None);
            origin.requests() > fetched
        });
    }
}

#[test]
fn kill_9_during_api_writes_loses_no_acknowledged_write() {
    let Some(pg) = TempPg::new("kill") else { return };
    let default = TestBackend::named("default-pool");
    let nodes = cluster(2, &pg.url, default.addr, "");
    let mut nodes = nodes.into_iter();
    let (a, b) = (nodes.next().expect("a"), nodes.next().expect("b"));
    let token = register_and_login(a.api, "writer@x.io");
    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(parking_lot::Mutex::new(Vec::new())));
    let writer = {
        let (stop, acked, token, api_addr, backend) = (stop.clone(), acked.clone(), token.clone(), a.api, default.addr);
        thread::spawn(move || {
            for i in 0..10_000 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let name = format!("w{i}");
                let body = endpoint_body(backend, "/");
                match try_request(api_addr, "POST", &format!("/api/apps/{name}"), Some(&token), Some(&body)) {
                    Ok((201, _)) => acked.lock().push(name),
                    _ => break,
                }
            }
        })
    };
    poll("a few writes are acknowledged", Duration::from_secs(10), || acked.lock().len() >= 5);
    a.kill_9();
    stop.store(true, Ordering::Release);
    let _ = writer.join();
    let acked = acked.lock().clone();
    let res = api(b.api, "GET", "/api/apps", Some(&token), None);
    assert_eq!(res.status, 200);
    let listed: Vec<String> = res.json()["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .filter_map(|a| a["app"].as_str().map(String::from))
        .collect();
    for name in &acked {
        assert!(listed.contains(name), "acknowledged app {name} lost; B lists {listed:?}");
    }
    eprintln!("cluster: {} acknowledged writes before kill -9, all kept", acked.len());
}

/// Runs the test cluster script; returns its stdout.
fn cluster_script(args: &[&str]) -> String {
    let out = Command::new("bash").arg(CLUSTER_SCRIPT).args(args).output().expect("run pg-test-cluster.sh");
    assert!(out.status.success(), "pg-test-cluster.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PostgreSQL server of this test's own (it is stopped and started), deleted on drop.
struct OwnServer {
    dir: String,
    url: String,
}

impl OwnServer {
    fn start() -> OwnServer {
        OwnServer::start_with(false).0
    }

    /// With `tls`, the server speaks TLS with a certificate from a throwaway CA, whose file comes back.
    fn start_with(tls: bool) -> (OwnServer, String) {
        let out = Command::new("bash")
            .arg(CLUSTER_SCRIPT)
            .arg("start")
            .env("PIBL_PG_TLS", if tls { "1" } else { "0" })
            .output()
            .expect("run pg-test-cluster.sh");
        assert!(out.status.success(), "pg-test-cluster.sh start: {}", String::from_utf8_lossy(&out.stderr));
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let value = |key: &str| {
            out.lines()
                .find_map(|l| l.trim().strip_prefix("export ").and_then(|kv| kv.strip_prefix(key)))
                .map(|v| v.trim_start_matches('=').to_string())
                .unwrap_or_else(|| panic!("{key} in {out:?}"))
        };
        let ca = if tls { value("PIBL_TEST_PG_CA") } else { String::new() };
        (OwnServer { dir: value("PIBL_TEST_PG_DIR"), url: value("PIBL_TEST_PG_URL") }, ca)
    }

    fn halt(&self) {
        cluster_script(&["halt", &self.dir]);
    }

    fn resume(&self) {
        cluster_script(&["start", &self.dir]);
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(CLUSTER_SCRIPT).args(["stop", &self.dir]).output();
    }
}

#[test]
fn database_outage_keeps_routing_and_the_api_comes_back() {
    if pg_server_url().is_none() {
        return;
    }
    let server = OwnServer::start();
    let pg = TempPg::on(&server.url, "outage");
    let default = TestBackend::named("default-pool");
    let app_backend = TestBackend::named("app-backend");
    let nodes = cluster(2, &pg.url, default.addr, "");
    let (a, b) = (&nodes[0], &nodes[1]);
    let token = register_and_login(a.api, "ops@x.io");
    let res = api(a.api, "POST", "/api/apps/steady", Some(&token), Some(&endpoint_body(app_backend.addr, "/")));
    assert_eq!(res.status, 201, "{}", res.text());
    poll("B routes the app", Duration::from_secs(10), || {
        try_request(b.proxy, "GET", "/steady/", None, None).is_ok_and(|(_, body)| body == "app-backend")
    });

    // Light load on both data planes for the whole outage: one request every few ms, counted.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = [a.proxy, b.proxy]
        .into_iter()
        .map(|addr| {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::Acquire) && started.elapsed() < Duration::from_secs(60) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    match try_request(addr, "GET", "/steady/", None, None) {
                        Ok((200, body)) if body == "app-backend" => {}
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("cluster: data-plane request to {addr} failed: {other:?}");
                        }
                    }
                    thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();

    server.halt();
    let at_halt = sent.load(Ordering::Relaxed);
    poll("A's API answers 503", Duration::from_secs(15), || {
        try_request(a.api, "GET", "/api/apps", Some(&token), None).is_ok_and(|(s, _)| s == 503)
    });
    let (status, body) = try_request(b.api, "GET", "/api/apps", Some(&token), None).expect("B answers");
    assert_eq!(status, 503, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
    assert!(error["error"].as_str().is_some_and(|e| e.contains("database is unavailable")), "{body}");
    let (_, metrics) = try_request(a.api, "GET", "/metrics", None, None).expect("metrics");
    assert!(metrics.lines().any(|l| l == "pibl_database_up 0"), "metrics show the database down");

    // The data planes keep serving while the database stays away.
    poll("300 more data-plane requests while the database is down", Duration::from_secs(20), || {
        sent.load(Ordering::Relaxed) >= at_halt + 300
    });
    server.resume();
    for node in [a, b] {
        poll("the API works again", Duration::from_secs(20), || {
            try_request(node.api, "GET", "/api/apps", Some(&token), None).is_ok_and(|(s, _)| s == 200)
        });
    }
    // The listeners reconnected: a change made now on B reaches A.
    let res = api(b.api, "POST", "/api/apps/after", Some(&token), Some(&endpoint_body(app_backend.addr, "/")));
    assert_eq!(res.status, 201, "{}", res.text());
    poll("an app created after the outage is routed by A", Duration::from_secs(10), || {
        try_request(a.proxy, "GET", "/after/", None, None).is_ok_and(|(_, body)| body == "app-backend")
    });
    let (_, metrics) = try_request(a.api, "GET", "/metrics", None, None).expect("metrics");
    assert!(metrics.lines().any(|l| l == "pibl_database_up 1"), "metrics show the database up");

    stop.store(true, Ordering::Release);
    for t in load {
        let _ = t.join();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("cluster: {sent} data-plane requests during the outage, {failed} failed");
    assert!(sent > 50, "the load ran ({sent} requests)");
    assert_eq!(failed, 0, "no data-plane request fails because of the database");
    // Both instances' execution logs, those held during the outage included, land in one place.
    let want = sent.min(1000);
    poll("every request is in the shared execution log", Duration::from_secs(20), || {
        let res = api(a.api, "GET", "/api/apps/steady/logs?limit=1000", Some(&token), None);
        let logs = res.json()["logs"].as_array().cloned().unwrap_or_default();
        logs.iter().filter(|l| l["kind"] == "request").count() >= want
    });
    drop(nodes);
    drop(pg);
}

#[test]
fn tls_to_the_database_is_verified() {
    if pg_server_url().is_none() {
        return;
    }
    let (server, ca) = OwnServer::start_with(true);
    let pg = TempPg::on(&server.url, "tls");
    let url = format!("{}?sslmode=require&sslrootcert={ca}", pg.url);
    let default = TestBackend::named("default-pool");
    let node = Instance::spawn("tls", &url, default.addr, true, "").ready();
    register_and_login(node.api, "tls@x.io");
    let mut admin = postgres::Client::connect(&pg.url, postgres::NoTls).expect("connect");
    let mut connections = |ssl: bool| -> i64 {
        admin
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.application_name = 'pibl' AND s.ssl = $1",
                &[&ssl],
            )
            .expect("pg_stat_ssl")
            .get(0)
    };
    // The change listener connects on its own thread, maybe after the API answered: wait for it.
    wait_until("pibl's pool and change listener are connected over TLS", || connections(true) >= 2);
    assert_eq!(connections(false), 0, "a connection of pibl's without TLS");
    // Without the CA the self-made certificate is not trusted: no connection.
    let untrusted = pibl::store::Database::parse(&format!("{}?sslmode=require", pg.url)).expect("a URL");
    let refused = pibl::store::Store::connect(&untrusted, pibl::store::Durability::Full, 10).expect_err("refused");
    assert!(refused.to_string().contains("certificate"), "{refused}");
    drop(node);
    drop(pg);
}

#[test]
fn deploy_example_configurations_load() {
    for name in ["a.ini", "b.ini", "parser.ini"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/two-instances").join(name);
        let config = pibl::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let database = pibl::store::Database::from_setting(&config.database).expect("a database setting");
        assert!(matches!(database, pibl::store::Database::Postgres(_)), "{name}: {database}");
    }
    // A malformed URL is refused when the file is read, with its line and key.
    let e = pibl::Config::from_ini_str("[DEFAULT]\nport = 8080\ndatabase = postgres://u@db:notaport/pibl\n", "p.ini")
        .expect_err("a bad URL");
    assert!(e.to_string().starts_with("p.ini:3: database: is not a valid PostgreSQL URL"), "{e}");
}
