//! The API gateway with real services on ephemeral ports: the seed's Users + three Games scenario
//! (registration open, games behind an auth sub-request, balanced), balancing policies, rate limits,
//! deny/allow lists, per-IP connection caps, and SIGHUP reload under load.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;
use pibl::config::Config;
use pibl::Server;

/// `alice:secret` in HTTP Basic.
const ALICE: &str = "Basic YWxpY2U6c2VjcmV0";

/// The seed's Users service: registration without credentials, and `/auth` checking HTTP Basic.
fn users_service(log: Arc<Mutex<Vec<String>>>) -> TestBackend {
    TestBackend::start(move |req| {
        log.lock().unwrap().push(format!("users {}", req.target));
        match req.target.as_str() {
            "/auth" if req.header("authorization") == Some(ALICE) => {
                assert_eq!(req.header("x-original-method"), Some("GET"));
                assert!(req.header("x-original-uri").is_some_and(|u| u.starts_with("/games/")));
                Reply::Raw(b"HTTP/1.1 200 OK\r\nX-Auth-User: alice\r\nContent-Length: 0\r\n\r\n".to_vec())
            }
            "/auth" => Reply::Raw(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"wordle\"\r\nContent-Length: 0\r\n\r\n"
                    .to_vec(),
            ),
            _ => Reply::Raw(b"HTTP/1.1 201 Created\r\nContent-Length: 10\r\n\r\nregistered".to_vec()),
        }
    })
}

/// A Games instance that reports its name and the user the gateway vouched for.
fn games_service(name: &'static str, log: Arc<Mutex<Vec<String>>>) -> TestBackend {
    TestBackend::start(move |req| {
        log.lock().unwrap().push(format!("{name} {}", req.target));
        let body = format!("{name} for {}", req.header("x-auth-user").unwrap_or("nobody"));
        Reply::Raw(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes())
    })
}

fn gateway_config(ini: &str) -> Config {
    let mut config = Config::from_ini_str(ini, "gateway.ini").expect("valid gateway config");
    let base = test_config(&[]);
    config.bind = base.bind;
    config.port = 0;
    config.access_log = false;
    // The cache would coalesce concurrent requests for one URL; these tests are about routing.
    config.ttl = Duration::ZERO;
    config.connect_timeout = base.connect_timeout;
    config.backend_timeout = base.backend_timeout;
    config
}

fn get_as(proxy: &Server, path: &str, auth: Option<&str>) -> Response {
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    request(proxy.local_addr(), format!("GET {path} HTTP/1.1\r\nHost: wordle\r\n{auth}\r\n").as_bytes())
}

#[test]
fn the_seed_scenario_users_open_games_authenticated_and_balanced() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let users = users_service(log.clone());
    let games: Vec<TestBackend> =
        ["games.1", "games.2", "games.3"].into_iter().map(|n| games_service(n, log.clone())).collect();
    let ini = format!(
        "[DEFAULT]\nip_server1 = {users}\n\n[route.users]\nprefix = /users/\nservers = {users}\n\n\
         [route.games]\nprefix = /games/\nservers = {}, {}, {}\nauth = request\nauth_url = http://{users}/auth\n\
         strip_prefix = false\nbalance = round_robin\n",
        games[0].addr,
        games[1].addr,
        games[2].addr,
        users = users.addr
    );
    let proxy = start_proxy(gateway_config(&ini));

    // 1. Registration needs no credentials.
    let res =
        request(proxy.local_addr(), b"POST /users/register HTTP/1.1\r\nHost: wordle\r\nContent-Length: 2\r\n\r\n{}");
    assert_eq!((res.status, res.text().as_str()), (201, "registered"));

    // 2. Every game request needs them: none or wrong ones get 401 and the Basic challenge.
    for auth in [None, Some("Basic d3Jvbmc6d3Jvbmc=")] {
        let res = get_as(&proxy, "/games/new", auth);
        assert_eq!(res.status, 401);
        assert_eq!(res.header("www-authenticate"), Some("Basic realm=\"wordle\""));
    }
    assert!(games.iter().all(|g| g.requests() == 0), "no unauthenticated request reached a game");

    // 3. With valid credentials: one auth request then one game request each, games in turn.
    log.lock().unwrap().clear();
    let mut served = Vec::new();
    for i in 0..6 {
        let res = get_as(&proxy, &format!("/games/{i}"), Some(ALICE));
        assert_eq!(res.status, 200);
        served.push(res.text());
    }
    assert_eq!(
        served,
        [
            "games.1 for alice",
            "games.2 for alice",
            "games.3 for alice",
            "games.1 for alice",
            "games.2 for alice",
            "games.3 for alice"
        ]
    );
    let expected: Vec<String> =
        (0..6).flat_map(|i| ["users /auth".to_string(), format!("games.{} /games/{i}", i % 3 + 1)]).collect();
    assert_eq!(*log.lock().unwrap(), expected, "each game request: exactly one auth request, then the game");

    // 4. The auth endpoint is not reachable from outside, even through the default pool.
    assert_eq!(get_as(&proxy, "/auth", Some(ALICE)).status, 404);

    // 5. A client cannot claim a user: its own X-Auth-User never reaches a backend.
    let res = request(proxy.local_addr(), b"GET /users/me HTTP/1.1\r\nHost: wordle\r\nX-Auth-User: alice\r\n\r\n");
    assert_eq!(res.status, 201);
    assert_eq!(users.last().header("x-auth-user"), None);

    // 6. With the Users service down, games fail closed (503), never open.
    users.stop();
    assert_eq!(get_as(&proxy, "/games/1", Some(ALICE)).status, 503);
}

#[test]
fn auth_cache_reuses_positive_answers_per_credential() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let users = users_service(log.clone());
    let game = games_service("games.1", log.clone());
    let ini = format!(
        "[route.games]\nprefix = /games/\nservers = {}\nauth = request\nauth_url = http://{}/auth\nauth_cache_secs = 60\n",
        game.addr, users.addr
    );
    let proxy = start_proxy(gateway_config(&ini));
    for _ in 0..5 {
        assert_eq!(get_as(&proxy, "/games/a", Some(ALICE)).status, 200);
    }
    assert_eq!(users.requests(), 1, "one auth request for five game requests with the same credentials");
    assert_eq!(get_as(&proxy, "/games/a", None).status, 401, "other credentials are asked again");
}

#[test]
fn strip_prefix_and_longest_prefix() {
    let api = TestBackend::start(|req| ok(&format!("api saw {}", req.target)));
    let v2 = TestBackend::start(|req| ok(&format!("v2 saw {}", req.target)));
    let default = TestBackend::named("default");
    let ini = format!(
        "ip_server1 = {}\n[route.api]\nprefix = /api/\nservers = {}\nstrip_prefix = true\n\
         [route.v2]\nprefix = /api/v2/\nservers = {}\n",
        default.addr, api.addr, v2.addr
    );
    let proxy = start_proxy(gateway_config(&ini));
    assert_eq!(get(proxy.local_addr(), "/api/items?x=1").text(), "api saw /items?x=1");
    assert_eq!(get(proxy.local_addr(), "/api/v2/items").text(), "v2 saw /api/v2/items");
    assert_eq!(get(proxy.local_addr(), "/elsewhere").text(), "default");
}

/// Counts which of three named backends served `n` requests made by `client_ip` (through a trusted proxy).
fn spread(balance: &str, n: usize, client_ip: Option<&str>) -> HashMap<String, usize> {
    let backends = [TestBackend::named("a"), TestBackend::named("b"), TestBackend::named("c")];
    let ini = format!(
        "trusted_proxies = 127.0.0.1\n[route.r]\nprefix = /\nservers = {}, {}, {}\nbalance = {balance}\n",
        backends[0].addr, backends[1].addr, backends[2].addr
    );
    let proxy = start_proxy(gateway_config(&ini));
    let xff = client_ip.map(|ip| format!("X-Forwarded-For: {ip}\r\n")).unwrap_or_default();
    let mut counts = HashMap::new();
    let mut client = Client::connect(proxy.local_addr());
    for _ in 0..n {
        client.send(format!("GET / HTTP/1.1\r\nHost: t\r\n{xff}\r\n").as_bytes());
        *counts.entry(client.read_response(false).unwrap().text()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn each_balance_policy_spreads_as_it_promises() {
    let rr = spread("round_robin", 30, None);
    assert_eq!((rr["a"], rr["b"], rr["c"]), (10, 10, 10));
    // With no request in flight every server ties, and least_conn falls back to taking turns.
    let lc = spread("least_conn", 30, None);
    assert_eq!((lc["a"], lc["b"], lc["c"]), (10, 10, 10));
    let r2 = spread("random_two", 90, None);
    assert!(r2.len() == 3 && r2.values().all(|&n| n >= 10), "random_two uses every server: {r2:?}");
    for ip in ["198.51.100.1", "198.51.100.2", "203.0.113.50"] {
        let sticky = spread("ip_hash", 12, Some(ip));
        assert_eq!(sticky.len(), 1, "ip_hash keeps {ip} on one server: {sticky:?}");
    }
}

#[test]
fn least_conn_avoids_the_busy_server() {
    let release = Arc::new(AtomicBool::new(false));
    let hold = release.clone();
    let slow = TestBackend::start(move |_| {
        while !hold.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(2));
        }
        ok("slow")
    });
    let fast = TestBackend::named("fast");
    let ini = format!("[route.r]\nprefix = /\nservers = {}, {}\nbalance = least_conn\n", slow.addr, fast.addr);
    let proxy = start_proxy(gateway_config(&ini));
    let addr = proxy.local_addr();
    // Occupy the slow server with one request, then everything else goes to the idle one.
    let blocked = thread::spawn(move || get(addr, "/"));
    wait_until("the slow server holds a request", || slow.requests() == 1);
    for _ in 0..10 {
        assert_eq!(get(addr, "/").text(), "fast");
    }
    release.store(true, Ordering::SeqCst);
    assert_eq!(blocked.join().unwrap().text(), "slow");
}

#[test]
fn rate_limits_answer_429_and_recover() {
    let backend = TestBackend::named("ok");
    let ini = format!(
        "ip_server1 = {b}\nrate_limit = 2/s\nrate_burst = 3\n[route.tight]\nprefix = /tight/\nservers = {b}\nrate_limit = 1/m\n",
        b = backend.addr
    );
    let proxy = start_proxy(gateway_config(&ini));
    let mut client = Client::connect(proxy.local_addr());
    for _ in 0..3 {
        assert_eq!(client.get("/").status, 200);
    }
    let limited = client.get("/");
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(client.get("/").status, 429, "the connection stays usable after a 429");
    proxy.clock().advance(Duration::from_secs(1));
    assert_eq!(client.get("/").status, 200, "tokens come back with time");

    // A route's own limit applies on top of the global one.
    proxy.clock().advance(Duration::from_secs(10));
    assert_eq!(client.get("/tight/a").status, 200);
    let res = client.get("/tight/a");
    assert_eq!(res.status, 429);
    assert_eq!(res.header("retry-after"), Some("60"));
    assert_eq!(backend.requests(), 5);
}

#[test]
fn deny_and_allow_lists_with_trusted_proxies() {
    let backend = TestBackend::named("ok");
    let cases = [
        ("deny = 127.0.0.1\n", "", 403),
        ("allow = 10.0.0.0/8\n", "", 403),
        ("allow = 127.0.0.0/8, ::1\n", "", 200),
        // The forwarded address counts only when the peer is a trusted proxy.
        ("deny = 203.0.113.7\n", "X-Forwarded-For: 203.0.113.7\r\n", 200),
        ("deny = 203.0.113.7\ntrusted_proxies = 127.0.0.1\n", "X-Forwarded-For: 203.0.113.7\r\n", 403),
        ("deny = 2001:db8::/32\ntrusted_proxies = 127.0.0.1\n", "X-Forwarded-For: 2001:db8::1\r\n", 403),
    ];
    for (keys, header, status) in cases {
        let proxy = start_proxy(gateway_config(&format!("ip_server1 = {}\n{keys}", backend.addr)));
        let mut client = Client::connect(proxy.local_addr());
        client.send(format!("GET / HTTP/1.1\r\nHost: t\r\n{header}\r\n").as_bytes());
        let res = client.read_response(false).unwrap();
        assert_eq!(res.status, status, "{keys:?} {header:?}");
        if status == 403 {
            assert!(client.is_closed(), "a denied client is disconnected");
        }
    }
}

#[test]
fn max_conn_per_ip_caps_concurrent_connections() {
    let backend = TestBackend::named("ok");
    let proxy = start_proxy(gateway_config(&format!("ip_server1 = {}\nmax_conn_per_ip = 2\n", backend.addr)));
    let mut first = Client::connect(proxy.local_addr());
    let mut second = Client::connect(proxy.local_addr());
    assert_eq!(first.get("/").status, 200);
    assert_eq!(second.get("/").status, 200);
    let mut third = Client::connect(proxy.local_addr());
    assert_eq!(third.read_response(false).unwrap().status, 429);
    drop(first);
    wait_until("a slot frees up", || get(proxy.local_addr(), "/").status == 200);
}

#[test]
fn sighup_swaps_routes_under_load_without_a_failed_request() {
    let old = TestBackend::named("old");
    let new = TestBackend::named("new");
    let dir = TempDir::new("reload");
    let route = |b: &TestBackend| format!("\n[route.app]\nprefix = /app/\nservers = {}\n", b.addr);
    let proxy = ProxyProcess::start(&dir, old.addr, &route(&old));
    let addr = proxy.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let seen_new = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, failures, seen_new) = (stop.clone(), failures.clone(), seen_new.clone());
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                for _ in 0..20_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    client.send(b"GET /app/x HTTP/1.1\r\nHost: t\r\n\r\n");
                    match client.read_response(false) {
                        Ok(res) if res.status == 200 => {
                            if res.text() == "new" {
                                seen_new.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        _ => {
                            failures.fetch_add(1, Ordering::SeqCst);
                            client = Client::connect(addr);
                        }
                    }
                }
            })
        })
        .collect();
    wait_until("load is flowing", || old.requests() > 50);

    // A broken file is refused and the running routes stay.
    // The same file with another route: only the lines after `[DEFAULT]`'s keys change.
    let original = std::fs::read_to_string(dir.0.join("parser.ini")).expect("the proxy's config");
    let base = original.split("\n[route.app]").next().unwrap_or(&original).to_string();
    dir.file("parser.ini", &format!("{base}\n[route.app]\nprefix = app\n"));
    proxy.signal("HUP");
    let stderr = || std::fs::read_to_string(dir.0.join("proxy.stderr")).unwrap_or_default();
    wait_until("the broken file is reported", || stderr().contains("reload refused"));
    let before = old.requests();
    wait_until("requests still reach the old route", || old.requests() > before + 50);
    assert_eq!(new.requests(), 0);

    dir.file("parser.ini", &format!("{base}{}", route(&new)));
    proxy.signal("HUP");
    wait_until("the new route takes the traffic", || seen_new.load(Ordering::SeqCst) > 50);
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no request failed across two reloads");
}

#[test]
fn jwt_routes_accept_pibl_tokens_and_refuse_the_rest() {
    let secure = TestBackend::start(|req| ok(&format!("hello {}", req.header("x-auth-user").unwrap_or("?"))));
    let db = TempDb::new("jwt-route");
    let mut config = api_config(&[], &db);
    let route = Config::from_ini_str(
        &format!("[route.secure]\nprefix = /secure/\nservers = {}\nauth = jwt\n", secure.addr),
        "r.ini",
    )
    .expect("route");
    config.routes = route.routes;
    config.ttl = Duration::ZERO;
    let pibl = start_pibl(config, pibl::clock::Clock::system());
    let token = register_and_login(pibl.api_addr(), "ana@example.com");

    let get_with =
        |auth: &str| request(pibl.proxy_addr(), format!("GET /secure/x HTTP/1.1\r\nHost: t\r\n{auth}\r\n").as_bytes());
    let res = get_with("");
    assert_eq!((res.status, res.header("www-authenticate")), (401, Some("Bearer realm=\"pibl\"")));
    for scheme in ["JWT", "Bearer"] {
        let res = get_with(&format!("Authorization: {scheme} {token}\r\n"));
        assert_eq!((res.status, res.text().as_str()), (200, "hello ana@example.com"), "{scheme}");
    }
    // A token signed with another key, or tampered with, is refused.
    let mut forged = token.clone();
    forged.push('x');
    assert_eq!(get_with(&format!("Authorization: JWT {forged}\r\n")).status, 401);
    assert_eq!(get_with("Authorization: Basic YWxpY2U6c2VjcmV0\r\n").status, 401);
    // Past jwt_ttl (300 s) the token has expired.
    pibl.server().clock().advance(Duration::from_secs(301));
    assert_eq!(get_with(&format!("Authorization: JWT {token}\r\n")).status, 401);
    assert_eq!(secure.requests(), 2, "only the two valid requests reached the backend");
}

#[test]
fn route_servers_are_health_checked_on_the_routes_health_path() {
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let flaky = TestBackend::start(move |req| match req.target.as_str() {
        "/healthz" if flag.load(Ordering::SeqCst) => ok("up"),
        "/healthz" => Reply::Raw(b"HTTP/1.1 503 Down\r\nContent-Length: 0\r\n\r\n".to_vec()),
        _ => ok("flaky"),
    });
    let steady = TestBackend::start(|req| ok(if req.target == "/healthz" { "up" } else { "steady" }));
    let db = TempDb::new("route-health");
    let mut config = api_config(&[], &db);
    config.routes = Config::from_ini_str(
        &format!("[route.r]\nprefix = /r/\nservers = {}, {}\nhealth_path = /healthz\n", flaky.addr, steady.addr),
        "r.ini",
    )
    .expect("route")
    .routes;
    config.ttl = Duration::ZERO;
    let pibl = start_pibl(config, pibl::clock::Clock::system());
    let served = || (0..4).map(|_| get(pibl.proxy_addr(), "/r/x").text()).collect::<Vec<_>>();
    wait_until("both servers serve", || served().contains(&"flaky".to_string()));

    healthy.store(false, Ordering::SeqCst);
    wait_until("the failing server leaves rotation", || served().iter().all(|s| s == "steady"));
    healthy.store(true, Ordering::SeqCst);
    wait_until("it comes back", || served().contains(&"flaky".to_string()));
}

/// `cache = off` on a route: a backend that sends `Last-Modified` (cacheable for `ttl`, the
/// `python3 -m http.server` case) is asked every time through that route, while the same answers
/// through the default pool come from the cache.
#[test]
fn a_route_with_cache_off_always_reaches_its_backends() {
    let backend = TestBackend::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nLast-Modified: Mon, 02 Jan 2006 15:04:05 GMT\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        )
    });
    let ini = format!("[route.live]\nprefix = /live/\nservers = {}\ncache = off\n", backend.addr);
    let routes = Config::from_ini_str(&ini, "t.ini").expect("routes").routes;
    assert!(!routes[0].cache);
    let proxy = start_proxy(Config { routes, ..test_config(&[backend.addr]) });
    let addr = proxy.local_addr();

    let first = get(addr, "/live/page");
    let second = get(addr, "/live/page");
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(second.header("x-cache"), None, "not looked up in the cache at all");
    assert_eq!(backend.requests(), 2, "both went to the backend");

    assert_eq!(get(addr, "/other/page").header("x-cache"), Some("MISS"));
    assert_eq!(get(addr, "/other/page").header("x-cache"), Some("HIT"), "the default pool still caches");
    assert_eq!(backend.requests(), 3);
}
