//! The response cache through a real proxy, against a real backend whose answers each test scripts,
//! grouped by the RFC 9111 section they exercise. Time is advanced on the proxy's clock; no test
//! sleeps for expiry.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime};

use common::*;
use pibl::Server;

/// A backend answering `200` with `headers` and a body naming the request count.
fn scripted(headers: &'static str) -> TestBackend {
    let count = Arc::new(AtomicUsize::new(0));
    TestBackend::start(move |_| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let body = format!("response {n}");
        Reply::Raw(format!("HTTP/1.1 200 OK\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes())
    })
}

fn cache_proxy(backend: &TestBackend) -> Server {
    let mut config = test_config(&[backend.addr]);
    config.ttl = Duration::from_secs(600);
    start_proxy(config)
}

fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// Sends `extra` header lines with a GET of `path` on a fresh connection.
fn get_with(proxy: &Server, path: &str, extra: &str) -> Response {
    request(proxy.local_addr(), format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes())
}

fn x_cache(res: &Response) -> &str {
    res.header("x-cache").unwrap_or("-")
}

// --- RFC 9111 section 3: storing responses -----------------------------------------------------

#[test]
fn section_3_what_is_stored() {
    // (response headers, request headers, stored?)
    let cases: &[(&str, &str, &str, bool)] = &[
        ("max-age", "Cache-Control: max-age=60\r\n", "", true),
        ("s-maxage", "Cache-Control: s-maxage=60\r\n", "", true),
        ("validator only (ttl)", "ETag: \"a\"\r\n", "", true),
        ("last-modified only (ttl)", "Last-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\n", "", true),
        ("no freshness, no validator", "", "", false),
        ("no-store", "Cache-Control: no-store, max-age=60\r\n", "", false),
        ("private", "Cache-Control: private, max-age=60\r\n", "", false),
        ("set-cookie", "Cache-Control: max-age=60\r\nSet-Cookie: a=b\r\n", "", false),
        ("set-cookie public", "Cache-Control: public, max-age=60\r\nSet-Cookie: a=b\r\n", "", true),
        ("vary star", "Cache-Control: max-age=60\r\nVary: *\r\n", "", false),
        ("authorization", "Cache-Control: max-age=60\r\n", "Authorization: Basic eDp5\r\n", false),
        ("authorization public", "Cache-Control: public, max-age=60\r\n", "Authorization: Basic eDp5\r\n", true),
        ("authorization s-maxage", "Cache-Control: s-maxage=60\r\n", "Authorization: Basic eDp5\r\n", true),
        ("request no-store", "Cache-Control: max-age=60\r\n", "Cache-Control: no-store\r\n", false),
    ];
    for (name, res_headers, req_headers, stored) in cases {
        let backend = scripted(res_headers);
        let proxy = cache_proxy(&backend);
        let first = get_with(&proxy, "/x", req_headers);
        assert_eq!((first.status, x_cache(&first)), (200, "MISS"), "{name}");
        let second = get_with(&proxy, "/x", req_headers);
        assert_eq!(second.status, 200, "{name}");
        if *stored {
            assert_eq!((x_cache(&second), second.text().as_str()), ("HIT", "response 1"), "{name}");
            assert_eq!(backend.requests(), 1, "{name}");
        } else {
            assert_eq!((x_cache(&second), second.text().as_str()), ("MISS", "response 2"), "{name}");
            assert_eq!(backend.requests(), 2, "{name}");
        }
    }
}

#[test]
fn section_3_only_get_is_stored_and_errors_need_explicit_freshness() {
    let backend = TestBackend::start(|req| {
        let status = if req.target == "/missing" {
            "404 Not Found"
        } else if req.target == "/err" {
            "500 Oops"
        } else {
            "200 OK"
        };
        Reply::Raw(format!("HTTP/1.1 {status}\r\nETag: \"e\"\r\nContent-Length: 2\r\n\r\nok").into_bytes())
    });
    let proxy = cache_proxy(&backend);
    for _ in 0..2 {
        assert_eq!(
            request(proxy.local_addr(), b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").status,
            200
        );
        assert_eq!(get_with(&proxy, "/missing", "").status, 404);
        assert_eq!(get_with(&proxy, "/err", "").status, 500);
    }
    // POST twice, 404 once (heuristically cacheable with a validator), 500 twice.
    assert_eq!(backend.requests(), 5);
}

#[test]
fn head_is_answered_from_a_stored_get_and_hits_carry_age() {
    let backend = scripted("Cache-Control: max-age=60\r\nAge: 7\r\n");
    let proxy = cache_proxy(&backend);
    assert_eq!(get_with(&proxy, "/h", "").text(), "response 1");
    let mut client = Client::connect(proxy.local_addr());
    client.send(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = client.read_response(true).unwrap();
    assert_eq!((head.status, x_cache(&head), head.header("content-length")), (200, "HIT", Some("10")));
    client.send(b"GET /h HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response(false).unwrap().text(), "response 1", "no stray body after the HEAD answer");
    proxy.clock().advance(Duration::from_secs(5));
    let hit = get_with(&proxy, "/h", "");
    assert_eq!(hit.header("age"), Some("12"), "upstream Age plus time in the cache");
    assert_eq!(backend.requests(), 1);
}

// --- Section 4.1: Vary ---------------------------------------------------------------------------

#[test]
fn section_4_1_vary_keys_on_the_listed_request_fields() {
    let backend = TestBackend::start(|req| {
        let enc = req.header("accept-encoding").unwrap_or("none").to_string();
        Reply::Raw(
            format!("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nVary: Accept-Encoding\r\nContent-Length: {}\r\n\r\n{enc}", enc.len())
                .into_bytes(),
        )
    });
    let proxy = cache_proxy(&backend);
    for _ in 0..2 {
        assert_eq!(get_with(&proxy, "/v", "Accept-Encoding: gzip\r\n").text(), "gzip");
        assert_eq!(get_with(&proxy, "/v", "Accept-Encoding: br\r\n").text(), "br");
        assert_eq!(get_with(&proxy, "/v", "").text(), "none");
    }
    assert_eq!(backend.requests(), 3);
}

// --- Section 4.2: freshness ----------------------------------------------------------------------

#[test]
fn section_4_2_freshness_from_max_age_expires_and_age() {
    let now = SystemTime::now();
    let expires = format!("Date: {}\r\nExpires: {}\r\n", http_date(now), http_date(now + Duration::from_secs(30)));
    let expires: &'static str = Box::leak(expires.into_boxed_str());
    // (response headers, seconds fresh)
    let cases: &[(&'static str, u64)] = &[
        ("Cache-Control: max-age=20\r\n", 20),
        ("Cache-Control: max-age=100, s-maxage=20\r\n", 20),
        (expires, 30),
        ("Cache-Control: max-age=60\r\nAge: 40\r\n", 20),
    ];
    for (headers, fresh) in cases {
        let backend = scripted(headers);
        let proxy = cache_proxy(&backend);
        get_with(&proxy, "/f", "");
        proxy.clock().advance(Duration::from_secs(fresh - 2));
        assert_eq!(x_cache(&get_with(&proxy, "/f", "")), "HIT", "{headers:?} still fresh");
        proxy.clock().advance(Duration::from_secs(4));
        let res = get_with(&proxy, "/f", "");
        assert_eq!((x_cache(&res), res.text().as_str()), ("MISS", "response 2"), "{headers:?} stale");
    }
}

#[test]
fn section_4_2_ttl_caps_every_lifetime() {
    let backend = scripted("Cache-Control: max-age=3600\r\n");
    let mut config = test_config(&[backend.addr]);
    config.ttl = Duration::from_secs(10);
    let proxy = start_proxy(config);
    get_with(&proxy, "/c", "");
    proxy.clock().advance(Duration::from_secs(11));
    assert_eq!(get_with(&proxy, "/c", "").text(), "response 2");
}

// --- Section 4.3: validation ---------------------------------------------------------------------

/// A backend that answers 304 to a matching `If-None-Match` and records what it was sent.
fn validating_backend(extra_on_304: &'static str) -> (TestBackend, Arc<Mutex<Vec<Option<String>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let backend = TestBackend::start(move |req| {
        log.lock().unwrap().push(req.header("if-none-match").map(str::to_string));
        if req.header("if-none-match") == Some("\"v1\"") {
            Reply::Raw(
                format!("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nCache-Control: max-age=10\r\n{extra_on_304}\r\n")
                    .into_bytes(),
            )
        } else {
            Reply::Raw(b"HTTP/1.1 200 OK\r\nETag: \"v1\"\r\nCache-Control: max-age=10\r\nX-Version: old\r\nContent-Length: 4\r\n\r\nbody".to_vec())
        }
    });
    (backend, seen)
}

#[test]
fn section_4_3_stale_entries_are_revalidated_and_refreshed_by_304() {
    let (backend, seen) = validating_backend("X-Version: new\r\n");
    let proxy = cache_proxy(&backend);
    assert_eq!(get_with(&proxy, "/r", "").text(), "body");
    proxy.clock().advance(Duration::from_secs(11));
    let res = get_with(&proxy, "/r", "");
    assert_eq!((res.status, x_cache(&res), res.text().as_str()), (200, "REVALIDATED", "body"));
    assert_eq!(res.header("x-version"), Some("new"), "the 304's fields replace the stored ones");
    assert_eq!(seen.lock().unwrap().as_slice(), [None, Some("\"v1\"".to_string())]);
    // Fresh again for max-age from the 304.
    assert_eq!(x_cache(&get_with(&proxy, "/r", "")), "HIT");
    assert_eq!(backend.requests(), 2);
}

#[test]
fn section_4_3_2_client_conditionals_get_304_from_fresh_entries() {
    let (backend, _) = validating_backend("");
    let proxy = cache_proxy(&backend);
    get_with(&proxy, "/c", "");
    let res = get_with(&proxy, "/c", "If-None-Match: \"other\", \"v1\"\r\n");
    assert_eq!((res.status, res.header("etag"), x_cache(&res)), (304, Some("\"v1\""), "HIT"));
    assert!(res.body.is_empty());
    let res = get_with(&proxy, "/c", "If-None-Match: \"v2\"\r\n");
    assert_eq!((res.status, res.text().as_str()), (200, "body"));
    assert_eq!(backend.requests(), 1);
}

// --- Section 4.4: invalidation -------------------------------------------------------------------

#[test]
fn section_4_4_unsafe_requests_invalidate_the_url_and_its_locations() {
    let backend = TestBackend::start(|req| {
        if req.method == "POST" {
            return Reply::Raw(
                b"HTTP/1.1 201 Created\r\nLocation: http://t/items/9\r\nContent-Location: /other\r\nContent-Length: 0\r\n\r\n"
                    .to_vec(),
            );
        }
        ok_cached(&req.target)
    });
    let proxy = cache_proxy(&backend);
    for path in ["/items", "/items/9", "/other", "/untouched"] {
        get_with(&proxy, path, "");
        assert_eq!(x_cache(&get_with(&proxy, path, "")), "HIT", "{path}");
    }
    let post = request(proxy.local_addr(), b"POST /items HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(post.status, 201);
    for (path, expected) in [("/items", "MISS"), ("/items/9", "MISS"), ("/other", "MISS"), ("/untouched", "HIT")] {
        assert_eq!(x_cache(&get_with(&proxy, path, "")), expected, "{path}");
    }
}

fn ok_cached(body: &str) -> Reply {
    Reply::Raw(
        format!("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .into_bytes(),
    )
}

// --- Section 5.2.1: request directives -----------------------------------------------------------

#[test]
fn section_5_2_1_request_directives_are_respected() {
    let (backend, seen) = validating_backend("");
    let proxy = cache_proxy(&backend);
    get_with(&proxy, "/d", "");
    for header in ["Cache-Control: no-cache\r\n", "Pragma: no-cache\r\n", "Cache-Control: max-age=0\r\n"] {
        let res = get_with(&proxy, "/d", header);
        assert_eq!((res.status, x_cache(&res)), (200, "REVALIDATED"), "{header:?}");
    }
    assert_eq!(seen.lock().unwrap().len(), 4, "each forced a conditional request");
    let res = get_with(&proxy, "/d", "Cache-Control: no-store\r\n");
    assert_eq!(x_cache(&res), "MISS");
    let res = get_with(&proxy, "/nothing", "Cache-Control: only-if-cached\r\n");
    assert_eq!(res.status, 504);
}

// --- Section 5.2.2: response directives ----------------------------------------------------------

#[test]
fn section_5_2_2_no_cache_responses_are_revalidated_before_each_reuse() {
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    let backend = TestBackend::start(move |req| {
        count.fetch_add(1, Ordering::SeqCst);
        if req.header("if-none-match").is_some() {
            Reply::Raw(b"HTTP/1.1 304 Not Modified\r\nETag: \"n\"\r\n\r\n".to_vec())
        } else {
            Reply::Raw(
                b"HTTP/1.1 200 OK\r\nCache-Control: no-cache\r\nETag: \"n\"\r\nContent-Length: 2\r\n\r\nnc".to_vec(),
            )
        }
    });
    let proxy = cache_proxy(&backend);
    assert_eq!(get_with(&proxy, "/n", "").text(), "nc");
    for _ in 0..3 {
        let res = get_with(&proxy, "/n", "");
        assert_eq!((x_cache(&res), res.text().as_str()), ("REVALIDATED", "nc"));
    }
    assert_eq!(seen.load(Ordering::SeqCst), 4);
}

// --- RFC 5861: stale-while-revalidate and stale-if-error -----------------------------------------

#[test]
fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() {
    let backend = scripted("Cache-Control: max-age=10, stale-while-revalidate=60\r\nETag: \"s\"\r\n");
    let proxy = cache_proxy(&backend);
    get_with(&proxy, "/s", "");
    proxy.clock().advance(Duration::from_secs(15));
    for _ in 0..5 {
        let res = get_with(&proxy, "/s", "");
        if x_cache(&res) != "STALE" {
            break;
        }
        assert_eq!(res.text(), "response 1");
    }
    wait_until("the background refresh reaches the backend", || backend.requests() == 2);
    wait_until("the refreshed entry is served", || get_with(&proxy, "/s", "").text() == "response 2");
    assert_eq!(backend.requests(), 2, "one refresh, however many stale answers");
}

#[test]
fn a_background_refresh_retries_a_pooled_connection_the_backend_closed() {
    // Every answer promises keep-alive, then the backend hangs up: the connection pibl pooled after
    // the first fetch is dead when the refresh takes it.
    let count = Arc::new(AtomicUsize::new(0));
    let n = count.clone();
    let backend = TestBackend::start(move |_| {
        let body = format!("response {}", n.fetch_add(1, Ordering::SeqCst) + 1);
        Reply::RawThenClose(
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=10, stale-while-revalidate=60\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let proxy = cache_proxy(&backend);
    assert_eq!(get_with(&proxy, "/p", "").text(), "response 1");
    proxy.clock().advance(Duration::from_secs(15));
    let res = get_with(&proxy, "/p", "");
    assert_eq!((x_cache(&res), res.text().as_str()), ("STALE", "response 1"));
    // No further request could schedule another refresh: the one refresh must get through on its own.
    wait_until("the refresh reaches the backend on a fresh connection", || backend.requests() == 2);
    wait_until("the refreshed entry is served", || get_with(&proxy, "/p", "").text() == "response 2");
    assert_eq!(backend.connections(), 2);
}

#[test]
fn a_background_refresh_takes_a_dead_backend_out_of_rotation() {
    let backend = scripted("Cache-Control: max-age=10, stale-while-revalidate=60\r\n");
    let proxy = cache_proxy(&backend);
    let backends = proxy.health_targets(Some("/".into()));
    let is_up = || backends()[0].0.is_up(proxy.clock().now());
    get_with(&proxy, "/d", "");
    proxy.clock().advance(Duration::from_secs(15));
    backend.stop();
    assert!(is_up(), "nothing has tried the stopped backend yet");
    let res = get_with(&proxy, "/d", "");
    assert_eq!((x_cache(&res), res.text().as_str()), ("STALE", "response 1"));
    wait_until("the refresh finds the backend refusing and marks it down", || !is_up());
    proxy.clock().advance(Duration::from_secs(11));
    assert!(is_up(), "back in rotation once the cool-down has passed on the proxy's clock");
}

#[test]
fn stale_if_error_covers_a_dead_or_failing_backend() {
    let failing = Arc::new(AtomicBool::new(false));
    let fail = failing.clone();
    let backend = TestBackend::start(move |_| {
        if fail.load(Ordering::SeqCst) {
            Reply::Raw(b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec())
        } else {
            ok_with("Cache-Control: max-age=10, stale-if-error=300\r\n", "good")
        }
    });
    let proxy = cache_proxy(&backend);
    assert_eq!(get_with(&proxy, "/e", "").text(), "good");
    proxy.clock().advance(Duration::from_secs(20));
    failing.store(true, Ordering::SeqCst);
    let res = get_with(&proxy, "/e", "");
    assert_eq!((res.status, x_cache(&res), res.text().as_str()), (200, "STALE", "good"), "5xx replaced by stale");
    backend.stop();
    let res = get_with(&proxy, "/e", "");
    assert_eq!(
        (res.status, x_cache(&res), res.text().as_str()),
        (200, "STALE", "good"),
        "dead backend replaced by stale"
    );
    proxy.clock().advance(Duration::from_secs(400));
    assert_eq!(get_with(&proxy, "/e", "").status, 502, "past the stale-if-error window");
}

#[test]
fn must_revalidate_is_never_served_stale() {
    let backend =
        TestBackend::start(|_| ok_with("Cache-Control: max-age=10, must-revalidate, stale-if-error=300\r\n", "x"));
    let proxy = cache_proxy(&backend);
    get_with(&proxy, "/m", "");
    proxy.clock().advance(Duration::from_secs(20));
    backend.stop();
    assert_eq!(get_with(&proxy, "/m", "").status, 502);
}

fn ok_with(headers: &str, body: &str) -> Reply {
    Reply::Raw(format!("HTTP/1.1 200 OK\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes())
}

// --- Coalescing, memory bound, purge ---------------------------------------------------------------

#[test]
fn fifty_concurrent_cold_requests_reach_the_backend_once() {
    let backend = TestBackend::start(|_| {
        thread::sleep(Duration::from_millis(300));
        ok_with("Cache-Control: max-age=60\r\n", "slow")
    });
    let mut config = test_config(&[backend.addr]);
    config.ttl = Duration::from_secs(60);
    config.threads = 8;
    let proxy = start_proxy(config);
    let addr = proxy.local_addr();
    let clients: Vec<_> =
        (0..50).map(|_| thread::spawn(move || request(addr, b"GET /cold HTTP/1.1\r\nHost: t\r\n\r\n"))).collect();
    for client in clients {
        let res = client.join().unwrap();
        assert_eq!((res.status, res.text().as_str()), (200, "slow"));
    }
    assert_eq!(backend.requests(), 1);
    let cache = proxy.cache().unwrap();
    assert!(cache.stats.coalesced.load(Ordering::Relaxed) > 0);
}

#[test]
fn memory_stays_bounded_and_recent_entries_still_hit() {
    let backend = TestBackend::start(|req| ok_with("Cache-Control: max-age=600\r\n", &req.target.repeat(1000)));
    let mut config = test_config(&[backend.addr]);
    config.cache_max_bytes = 256 * 1024;
    config.cache_max_object_bytes = 16 * 1024;
    let proxy = start_proxy(config);
    let cache = proxy.cache().unwrap();
    let mut client = Client::connect(proxy.local_addr());
    // About four times the budget: 100 bodies of ~10 KB.
    for i in 0..100 {
        assert_eq!(client.get(&format!("/{i:08}")).status, 200);
        assert!(cache.stats.bytes() <= 256 * 1024, "{} bytes cached", cache.stats.bytes());
    }
    assert!(cache.stats.evictions.load(Ordering::Relaxed) > 0);
    let recent = client.get("/00000099");
    assert_eq!(x_cache(&recent), "HIT");
    // Too big for cache_max_object_bytes: streams through, never stored.
    let big = format!("/{}", "b".repeat(20));
    for _ in 0..2 {
        let res = client.get(&big);
        assert_eq!((x_cache(&res), res.body.len()), ("MISS", 21_000));
    }
}

#[test]
fn purge_removes_entries() {
    let backend = scripted("Cache-Control: max-age=60\r\n");
    let proxy = cache_proxy(&backend);
    get_with(&proxy, "/a", "");
    get_with(&proxy, "/b", "");
    let cache = proxy.cache().unwrap();
    assert_eq!(cache.stats.entries(), 2);
    assert_eq!(cache.invalidate(&pibl::cache::Cache::key(Some("t"), "/a")), 1);
    assert_eq!(x_cache(&get_with(&proxy, "/a", "")), "MISS");
    assert_eq!(cache.purge_all(), 2);
    assert_eq!((cache.stats.entries(), cache.stats.bytes()), (0, 0));
}

#[test]
fn ttl_zero_turns_the_cache_off() {
    let backend = scripted("Cache-Control: max-age=60\r\n");
    let mut config = test_config(&[backend.addr]);
    config.ttl = Duration::ZERO;
    let proxy = start_proxy(config);
    assert!(proxy.cache().is_none());
    get_with(&proxy, "/z", "");
    let res = get_with(&proxy, "/z", "");
    assert_eq!((res.header("x-cache"), backend.requests()), (None, 2));
}

#[test]
fn the_management_api_purges_an_owners_urls_and_admins_purge_everything() {
    let backend = scripted("Cache-Control: max-age=600\r\n");
    let db = TempDb::new("purge");
    let pibl = start_pibl(api_config(&[backend.addr], &db), pibl::clock::Clock::system());
    let (api_addr, proxy) = (pibl.api_addr(), pibl.proxy_addr());
    let owner = register_and_login(api_addr, "owner@example.com");
    let other = register_and_login(api_addr, "other@example.com");
    let admin = admin_login(&pibl);
    let app = api(api_addr, "POST", "/api/apps/shop", Some(&owner), Some(&endpoint_body(backend.addr, "/status")));
    assert_eq!(app.status, 201, "{}", app.text());

    let fetch = |path: &str| request(proxy, format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    fetch("/shop/item");
    assert_eq!(x_cache(&fetch("/shop/item")), "HIT");

    let purge = |token: &str, query: &str| api(api_addr, "DELETE", &format!("/api/cache{query}"), Some(token), None);
    assert_eq!(purge(&other, "?url=/shop/item").status, 403, "not their app");
    assert_eq!(purge(&owner, "").status, 403, "only admins empty the whole cache");
    let res = purge(&owner, "?url=/shop/item");
    assert_eq!((res.status, res.json()["purged"].as_u64()), (200, Some(1)));
    assert_eq!(x_cache(&fetch("/shop/item")), "MISS");
    assert_eq!(x_cache(&fetch("/shop/item")), "HIT");
    let res = purge(&admin, "");
    assert_eq!((res.status, res.json()["purged"].as_u64()), (200, Some(1)));
    assert_eq!(x_cache(&fetch("/shop/item")), "MISS");
}

#[test]
fn urls_that_answered_uncacheable_are_not_coalesced() {
    // Each request waits until three are at the backend together (or gives up after a while): only
    // uncoalesced requests can all be there at once.
    let (current, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (now_in, peak, seen) = (current.clone(), most.clone(), Arc::new(AtomicUsize::new(0)));
    let backend = TestBackend::start(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            return ok_with("Cache-Control: no-store\r\n", "dynamic");
        }
        let n = now_in.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(n, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while now_in.load(Ordering::SeqCst) < 3
            && peak.load(Ordering::SeqCst) < 3
            && std::time::Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(1));
        }
        now_in.fetch_sub(1, Ordering::SeqCst);
        ok_with("Cache-Control: no-store\r\n", "dynamic")
    });
    let proxy = cache_proxy(&backend);
    // The first answer teaches the cache that this URL is not storable.
    assert_eq!(get_with(&proxy, "/live", "").text(), "dynamic");
    let addr = proxy.local_addr();
    let clients: Vec<_> =
        (0..3).map(|_| thread::spawn(move || request(addr, b"GET /live HTTP/1.1\r\nHost: t\r\n\r\n"))).collect();
    for client in clients {
        assert_eq!(client.join().unwrap().text(), "dynamic");
    }
    assert_eq!(most.load(Ordering::SeqCst), 3, "all three reached the backend together");
}

// --- A stored answer never outlives the routing decision that produced it ------------------------

/// A backend answering every GET with a cacheable body naming itself.
fn named_cacheable(name: &'static str) -> TestBackend {
    TestBackend::start(move |_| ok_with("Cache-Control: max-age=600\r\n", name))
}

#[test]
fn deleting_recreating_or_repointing_an_app_never_serves_its_old_answers() {
    let (default, alpha, beta) = (named_cacheable("default"), named_cacheable("alpha"), named_cacheable("beta"));
    let db = TempDb::new("cache-routes");
    let pibl = start_pibl(api_config(&[default.addr], &db), pibl::clock::Clock::system());
    let (api_addr, proxy) = (pibl.api_addr(), pibl.proxy_addr());
    let owner = register_and_login(api_addr, "owner@example.com");
    let fetch = || request(proxy, b"GET /cachetest/ HTTP/1.1\r\nHost: t\r\n\r\n");
    let add = |backend: &TestBackend| {
        let res = api(api_addr, "POST", "/api/apps/cachetest", Some(&owner), Some(&endpoint_body(backend.addr, "/")));
        assert!(matches!(res.status, 200 | 201), "{}", res.text());
    };

    add(&alpha);
    assert_eq!(fetch().text(), "alpha");
    let hit = fetch();
    assert_eq!((x_cache(&hit), hit.text().as_str()), ("HIT", "alpha"));

    // Deleted: the path now belongs to the default pool.
    assert_eq!(api(api_addr, "DELETE", "/api/apps/cachetest", Some(&owner), None).status, 200);
    let after_delete = fetch();
    assert_eq!((x_cache(&after_delete), after_delete.text().as_str()), ("MISS", "default"));

    // Re-created on another backend: its own answers, not the deleted app's.
    add(&beta);
    let recreated = fetch();
    assert_eq!((x_cache(&recreated), recreated.text().as_str()), ("MISS", "beta"));
    assert_eq!(x_cache(&fetch()), "HIT");

    // Its endpoints change: the next request goes to the new pool.
    add(&alpha);
    assert_eq!(x_cache(&fetch()), "MISS", "a stored answer from the old endpoint list is not reused");
}

#[test]
fn a_reload_that_moves_a_prefix_to_another_pool_drops_its_stored_answers() {
    let (old, new) = (named_cacheable("old pool"), named_cacheable("new pool"));
    let routed = |server: &TestBackend| {
        let ini = format!("[route.img]\nprefix = /img\nservers = {}\n", server.addr);
        let mut config = test_config(&[server.addr]);
        config.ttl = Duration::from_secs(600);
        config.routes = pibl::Config::from_ini_str(&ini, "reload.ini").expect("valid route").routes;
        config
    };
    let proxy = start_proxy(routed(&old));
    assert_eq!(get_with(&proxy, "/img/a.png", "").text(), "old pool");
    assert_eq!(x_cache(&get_with(&proxy, "/img/a.png", "")), "HIT");

    proxy.reload(&routed(&new));
    let res = get_with(&proxy, "/img/a.png", "");
    assert_eq!((x_cache(&res), res.text().as_str()), ("MISS", "new pool"));
    assert_eq!(x_cache(&get_with(&proxy, "/img/a.png", "")), "HIT");
    assert_eq!(old.requests(), 1);

    // A reload that leaves the route as it was keeps what is stored.
    proxy.reload(&routed(&new));
    assert_eq!(x_cache(&get_with(&proxy, "/img/a.png", "")), "HIT");
}

// --- Section 5.1: Age ----------------------------------------------------------------------------

#[test]
fn section_5_1_age_uses_the_first_value_and_ignores_invalid_ones() {
    // (Age field lines, reused from storage?) with max-age=3600: an age of 7200 is stale at once.
    let cases: &[(&str, bool)] = &[
        ("Age: 7200, 0\r\n", false),
        ("Age: 0, 7200\r\n", true),
        ("Age: 7200\r\nAge: 0\r\n", false),
        ("Age: 0\r\nAge: 7200\r\n", true),
        ("Age: 3600abc\r\n", true),
        ("Age: -7200\r\n", true),
        ("Age: 7200.0\r\n", true),
        ("Age: 2147483648\r\n", false),
    ];
    for (age, reused) in cases {
        let headers: &'static str = Box::leak(format!("Cache-Control: max-age=3600\r\n{age}").into_boxed_str());
        let backend = scripted(headers);
        let proxy = cache_proxy(&backend);
        get_with(&proxy, "/age", "");
        let second = get_with(&proxy, "/age", "");
        let expected = if *reused { "response 1" } else { "response 2" };
        assert_eq!(second.text(), expected, "{age:?}");
    }
}

// --- Section 3.1: fields named in Connection are not stored ----------------------------------------

#[test]
fn section_3_1_fields_that_connection_names_are_neither_stored_nor_served_on_hits() {
    let backend =
        scripted("Cache-Control: max-age=60\r\nConnection: x-hop, X-Other\r\nX-Hop: a\r\nX-Other: b\r\nX-Kept: c\r\n");
    let proxy = cache_proxy(&backend);
    for label in ["MISS", "HIT"] {
        let res = get_with(&proxy, "/conn", "");
        assert_eq!(x_cache(&res), label);
        assert_eq!((res.header("x-hop"), res.header("x-other")), (None, None), "{label}");
        assert_eq!(res.header("x-kept"), Some("c"), "{label}");
    }
}

// --- RFC 9110 section 15.2: interim responses ------------------------------------------------------

#[test]
fn rfc_9110_section_15_2_early_hints_reach_the_client_first_and_are_never_stored() {
    let backend = TestBackend::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
              HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 4\r\n\r\npage"
                .to_vec(),
        )
    });
    let proxy = cache_proxy(&backend);
    let mut client = Client::connect(proxy.local_addr());
    client.send(b"GET /hints HTTP/1.1\r\nHost: t\r\n\r\n");
    let hints = client.read_response(false).unwrap();
    assert_eq!((hints.status, hints.header("link")), (103, Some("</style.css>; rel=preload")));
    let page = client.read_response(false).unwrap();
    assert_eq!((page.status, x_cache(&page), page.text().as_str()), (200, "MISS", "page"));

    // A hit is the final answer alone.
    client.send(b"GET /hints HTTP/1.1\r\nHost: t\r\n\r\n");
    let hit = client.read_response(false).unwrap();
    assert_eq!((hit.status, x_cache(&hit), hit.header("link")), (200, "HIT", None));

    // An HTTP/1.0 client is never sent a 1xx.
    let old = request(proxy.local_addr(), b"GET /other HTTP/1.0\r\nHost: t\r\n\r\n");
    assert_eq!((old.status, old.text().as_str()), (200, "page"));
}

// --- Section 4.3.2 and 4.3.5: a client's conditional miss, HEAD -----------------------------------

#[test]
fn section_4_3_2_a_conditional_miss_fills_the_cache_and_gets_its_304() {
    let backend = scripted("Cache-Control: max-age=60\r\nETag: \"e1\"\r\n");
    let proxy = cache_proxy(&backend);
    let res = get_with(&proxy, "/cond", "If-None-Match: \"e1\"\r\n");
    assert_eq!((res.status, x_cache(&res)), (304, "MISS"));
    assert_eq!(backend.last().header("if-none-match"), None, "the backend was asked for the full answer");
    let full = get_with(&proxy, "/cond", "");
    assert_eq!((full.status, x_cache(&full), full.text().as_str()), (200, "HIT", "response 1"));
    let other = get_with(&proxy, "/cond2", "If-None-Match: \"nope\"\r\n");
    assert_eq!((other.status, other.text().as_str()), (200, "response 2"), "no match: the full answer");
}

/// A backend answering GET and HEAD on `/h` with `etag` and `max-age=10`; HEAD without a body.
fn head_backend(head_etag: &'static str) -> TestBackend {
    let count = Arc::new(AtomicUsize::new(0));
    TestBackend::start(move |req| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let body = format!("response {n}");
        let etag = if req.method == "HEAD" { head_etag } else { "\"v1\"" };
        let head = format!(
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=10\r\nETag: {etag}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        Reply::Raw(if req.method == "HEAD" { head.into_bytes() } else { format!("{head}{body}").into_bytes() })
    })
}

fn head_request(proxy: &Server, path: &str) -> Response {
    let mut client = Client::connect(proxy.local_addr());
    client.send(format!("HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    client.read_response(true).expect("an answer to HEAD")
}

#[test]
fn section_4_3_5_a_head_answer_refreshes_or_drops_the_stored_get() {
    // Same validator: the stored GET is fresh again.
    let backend = head_backend("\"v1\"");
    let proxy = cache_proxy(&backend);
    assert_eq!(get_with(&proxy, "/h", "").text(), "response 1");
    proxy.clock().advance(Duration::from_secs(20));
    assert_eq!(head_request(&proxy, "/h").status, 200);
    let after = get_with(&proxy, "/h", "");
    assert_eq!((x_cache(&after), after.text().as_str()), ("HIT", "response 1"));
    assert_eq!(backend.requests(), 2);

    // Another validator: the stored GET is not used again.
    let backend = head_backend("\"v2\"");
    let proxy = cache_proxy(&backend);
    get_with(&proxy, "/h", "");
    proxy.clock().advance(Duration::from_secs(20));
    head_request(&proxy, "/h");
    let after = get_with(&proxy, "/h", "");
    assert_eq!((x_cache(&after), after.text().as_str()), ("MISS", "response 3"));
    assert_eq!(backend.last().header("if-none-match"), None, "dropped, not revalidated");
}

// --- RFC 9213: targeted cache control ------------------------------------------------------------

#[test]
fn rfc_9213_section_2_1_a_targeted_field_overrides_cache_control_for_pibl_only() {
    // (response fields, stored?)
    let cases: &[(&str, bool)] = &[
        ("Cache-Control: no-store\r\nCDN-Cache-Control: max-age=60\r\n", true),
        ("Cache-Control: max-age=60\r\nCDN-Cache-Control: no-store\r\n", false),
        ("Cache-Control: max-age=60\r\nCDN-Cache-Control: private\r\n", false),
        ("Cache-Control: no-store\r\nCDN-Cache-Control: no-store\r\nPibl-Cache-Control: max-age=60\r\n", true),
        ("Cache-Control: max-age=60\r\nPibl-Cache-Control: no-store\r\nCDN-Cache-Control: max-age=60\r\n", false),
        ("Cache-Control: max-age=60\r\nCDN-Cache-Control: Max-Age=0, no-store\r\n", true),
    ];
    for (fields, stored) in cases {
        let backend = scripted(fields);
        let proxy = cache_proxy(&backend);
        let first = get_with(&proxy, "/t", "");
        assert_eq!(
            first.header("cache-control"),
            fields.split("\r\n").next().and_then(|l| l.split_once(": ")).map(|p| p.1)
        );
        let second = get_with(&proxy, "/t", "");
        let expected = if *stored { ("HIT", "response 1") } else { ("MISS", "response 2") };
        assert_eq!((x_cache(&second), second.text().as_str()), expected, "{fields:?}");
    }
}

#[test]
fn rfc_9213_targeted_lifetimes_and_grace_windows_rule_and_may_be_kept_from_clients() {
    let fields = "Cache-Control: max-age=600\r\nCDN-Cache-Control: max-age=5, stale-if-error=60\r\n";
    let backend = scripted(fields);
    let proxy = cache_proxy(&backend);
    let first = get_with(&proxy, "/life", "");
    assert_eq!(first.header("cdn-cache-control"), Some("max-age=5, stale-if-error=60"), "passed on by default");
    proxy.clock().advance(Duration::from_secs(10));
    assert_eq!(get_with(&proxy, "/life", "").text(), "response 2", "stale after the targeted max-age");

    let backend = scripted(fields);
    let mut config = test_config(&[backend.addr]);
    config.ttl = Duration::from_secs(600);
    config.strip_targeted_cache_control = true;
    let proxy = start_proxy(config);
    for label in ["MISS", "HIT"] {
        let res = get_with(&proxy, "/life", "");
        assert_eq!((x_cache(&res), res.header("cdn-cache-control")), (label, None));
        assert_eq!(res.header("cache-control"), Some("max-age=600"));
    }
    proxy.clock().advance(Duration::from_secs(10));
    assert_eq!(get_with(&proxy, "/life", "").text(), "response 2", "still obeyed when kept from clients");
}

// --- Purge by tag and by path prefix through the management API -----------------------------------

#[test]
fn the_management_api_purges_by_tag_and_by_prefix_within_an_owners_apps() {
    let backend = TestBackend::start(|req| {
        let tags =
            if req.target.starts_with("/img/") { "Cache-Tag: images, all\r\n" } else { "Surrogate-Key: pages all\r\n" };
        ok_with(&format!("Cache-Control: max-age=600\r\n{tags}"), &req.target)
    });
    let db = TempDb::new("purge-tags");
    let pibl = start_pibl(api_config(&[backend.addr], &db), pibl::clock::Clock::system());
    let (api_addr, proxy) = (pibl.api_addr(), pibl.proxy_addr());
    let owner = register_and_login(api_addr, "owner@example.com");
    let other = register_and_login(api_addr, "other@example.com");
    let admin = admin_login(&pibl);
    for (token, app) in [(&owner, "shop"), (&other, "blog")] {
        let res =
            api(api_addr, "POST", &format!("/api/apps/{app}"), Some(token), Some(&endpoint_body(backend.addr, "/")));
        assert_eq!(res.status, 201, "{}", res.text());
    }
    let fetch = |path: &str| request(proxy, format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let paths = ["/shop/img/a.png", "/shop/img/b.png", "/shop/page", "/blog/img/c.png", "/blog/page"];
    let fill = || {
        for path in paths {
            fetch(path);
            assert_eq!(x_cache(&fetch(path)), "HIT", "{path}");
        }
    };
    let cached = |path: &str| x_cache(&fetch(path)) == "HIT";
    let purge = |token: &str, query: &str| api(api_addr, "DELETE", &format!("/api/cache?{query}"), Some(token), None);
    let purged = |res: &Response| (res.status, res.json()["purged"].as_u64());

    fill();
    // An owner's tag purge reaches their own apps' answers only.
    assert_eq!(purged(&purge(&owner, "tag=images")), (200, Some(2)));
    assert!(!cached("/shop/img/a.png") && !cached("/shop/img/b.png"));
    assert!(cached("/blog/img/c.png"), "another owner's answer with the same tag stays");
    assert_eq!(purged(&purge(&other, "tag=pages")), (200, Some(1)), "Surrogate-Key tags, space-separated");
    assert!(!cached("/blog/page") && cached("/shop/page"));

    // An admin's tag purge reaches everything.
    fill();
    assert_eq!(purged(&purge(&admin, "tag=all")), (200, Some(5)));

    // Path prefixes: within the owner's app; anything for an admin.
    fill();
    assert_eq!(purged(&purge(&owner, "prefix=/shop/img/")), (200, Some(2)));
    assert!(!cached("/shop/img/a.png") && cached("/shop/page"));
    assert_eq!(purge(&other, "prefix=/shop/").status, 403, "not their app");
    assert_eq!(purged(&purge(&admin, "prefix=%2F")), (200, Some(4)), "all but b.png, gone since the owner's purge");

    // Bad input names the field.
    for (query, field) in
        [("tag=", "tag"), ("prefix=img", "prefix"), ("tag=a&prefix=/shop", "prefix"), ("tags=a", "tags")]
    {
        let res = purge(&owner, query);
        assert_eq!(res.status, 400, "{query}: {}", res.text());
        assert!(res.text().contains(field), "{query}: {}", res.text());
    }
}

// --- Compression: encoded variants kept with the stored answer -----------------------------------

fn compress_proxy(backend: &TestBackend) -> Server {
    let mut config = test_config(&[backend.addr]);
    config.ttl = Duration::from_secs(600);
    config.compress = true;
    config.compress_min_bytes = 1024;
    start_proxy(config)
}

fn decoded(res: &Response) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    match res.header("content-encoding") {
        Some("gzip") => flate2::read::GzDecoder::new(res.body.as_slice()).read_to_end(&mut out).map(|_| ()),
        Some("br") => brotli::Decompressor::new(res.body.as_slice(), 4096).read_to_end(&mut out).map(|_| ()),
        None => {
            out = res.body.clone();
            Ok(())
        }
        Some(other) => panic!("unexpected coding {other}"),
    }
    .expect("a body that decodes");
    out
}

#[test]
fn compression_picks_the_clients_coding_and_hits_reuse_the_stored_encodings() {
    let page = "<p>pibl compresses what it stores</p>\n".repeat(80);
    let body = page.clone();
    let backend = TestBackend::start(move |_| {
        ok_with("Content-Type: text/html; charset=utf-8\r\nCache-Control: max-age=60\r\nETag: \"p1\"\r\n", &body)
    });
    let proxy = compress_proxy(&backend);
    let gz = get_with(&proxy, "/page", "Accept-Encoding: gzip, br;q=0.5\r\n");
    assert_eq!((gz.status, x_cache(&gz), gz.header("content-encoding")), (200, "MISS", Some("gzip")));
    assert!(gz.body.len() < page.len() / 4, "{} bytes", gz.body.len());
    assert_eq!(decoded(&gz), page.as_bytes());
    assert_eq!(gz.header("vary"), Some("Accept-Encoding"));
    assert_eq!(gz.header("etag"), Some("W/\"p1\""), "another representation: a weak tag");

    let br = get_with(&proxy, "/page", "Accept-Encoding: gzip;q=0.8, br\r\n");
    assert_eq!((x_cache(&br), br.header("content-encoding")), ("HIT", Some("br")));
    assert_eq!(decoded(&br), page.as_bytes());

    for (accept, name) in [
        ("", "none"),
        ("Accept-Encoding: identity\r\n", "identity"),
        ("Accept-Encoding: gzip;q=0, br;q=0\r\n", "refused"),
    ] {
        let plain = get_with(&proxy, "/page", accept);
        assert_eq!((x_cache(&plain), plain.header("content-encoding")), ("HIT", None), "{name}");
        assert_eq!((plain.text(), plain.header("vary")), (page.clone(), Some("Accept-Encoding")), "{name}");
    }
    let range = get_with(&proxy, "/page", "Accept-Encoding: gzip\r\nRange: bytes=0-9\r\n");
    assert_eq!(range.header("content-encoding"), None, "never for ranges");
    assert_eq!(backend.requests(), 1, "one fetch, every coding from storage");
}

#[test]
fn compression_leaves_unfit_answers_alone() {
    let long = "x".repeat(4096);
    let cases: &[(&str, &str, &str)] = &[
        ("image", "Content-Type: image/png\r\n", &long),
        ("small", "Content-Type: text/plain\r\n", "tiny body"),
        ("encoded", "Content-Type: text/plain\r\nContent-Encoding: deflate\r\n", &long),
        ("no-transform", "Content-Type: text/plain\r\nCache-Control: max-age=60, no-transform\r\n", &long),
    ];
    for (name, fields, body) in cases {
        let (fields, body) = (fields.to_string(), body.to_string());
        let backend = TestBackend::start(move |_| {
            let cc = if fields.contains("Cache-Control") { "" } else { "Cache-Control: max-age=60\r\n" };
            ok_with(&format!("{cc}{fields}"), &body)
        });
        let proxy = compress_proxy(&backend);
        for _ in 0..2 {
            let res = get_with(&proxy, "/x", "Accept-Encoding: gzip, br\r\n");
            let expected = if *name == "encoded" { Some("deflate") } else { None };
            assert_eq!(res.header("content-encoding"), expected, "{name}");
            assert_eq!(res.header("vary"), None, "{name}");
        }
    }
    // Off by default.
    let backend =
        TestBackend::start(|_| ok_with("Content-Type: text/plain\r\nCache-Control: max-age=60\r\n", &"y".repeat(4096)));
    let proxy = cache_proxy(&backend);
    for _ in 0..2 {
        assert_eq!(get_with(&proxy, "/y", "Accept-Encoding: gzip\r\n").header("content-encoding"), None);
    }
}

#[test]
fn a_route_may_turn_the_cache_off_or_set_its_own_compress() {
    let body = "route text, compressible enough. ".repeat(64);
    let page = body.clone();
    let backend =
        TestBackend::start(move |_| ok_with("Content-Type: text/plain\r\nCache-Control: max-age=60\r\n", &page));
    let ini = format!(
        "[route.live]\nprefix = /live/\nservers = {0}\ncache = off\n\n[route.raw]\nprefix = /raw/\nservers = {0}\ncompress = off\n",
        backend.addr
    );
    let mut config = test_config(&[backend.addr]);
    config.ttl = Duration::from_secs(600);
    config.compress = true;
    config.routes = pibl::Config::from_ini_str(&ini, "routes.ini").expect("valid routes").routes;
    let proxy = start_proxy(config);
    for _ in 0..2 {
        let live = get_with(&proxy, "/live/a", "Accept-Encoding: gzip\r\n");
        assert_eq!((live.header("x-cache"), live.header("content-encoding")), (None, None), "cache = off");
    }
    assert_eq!(backend.requests(), 2);
    get_with(&proxy, "/raw/a", "Accept-Encoding: gzip\r\n");
    let raw = get_with(&proxy, "/raw/a", "Accept-Encoding: gzip\r\n");
    assert_eq!((x_cache(&raw), raw.header("content-encoding"), raw.text()), ("HIT", None, body.clone()));
    let default = get_with(&proxy, "/other", "Accept-Encoding: gzip\r\n");
    assert_eq!(default.header("content-encoding"), Some("gzip"), "[DEFAULT]'s compress elsewhere");
}

#[test]
fn rfc_9110_section_9_3_2_a_head_miss_goes_upstream_as_get_and_fills_the_cache() {
    let backend = scripted("Cache-Control: max-age=60\r\n");
    let proxy = cache_proxy(&backend);
    let head = head_request(&proxy, "/hm");
    assert_eq!((head.status, x_cache(&head), head.header("content-length")), (200, "MISS", Some("10")));
    assert_eq!(backend.last().method, "GET");
    let get = get_with(&proxy, "/hm", "");
    assert_eq!((x_cache(&get), get.text().as_str()), ("HIT", "response 1"));
    assert_eq!(backend.requests(), 1);

    // Not storable: the head alone all the same, and the connection stays in step.
    let backend = scripted("Cache-Control: no-store\r\n");
    let proxy = cache_proxy(&backend);
    let mut client = Client::connect(proxy.local_addr());
    client.send(b"HEAD /ns HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = client.read_response(true).unwrap();
    assert_eq!((head.status, head.header("content-length")), (200, Some("10")));
    client.send(b"GET /ns HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response(false).unwrap().text(), "response 2");
}
