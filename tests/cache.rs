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
    let admin = register_and_login(api_addr, ADMIN);
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

both_engines!(
    fifty_concurrent_cold_requests_reach_the_backend_once,
    section_3_what_is_stored,
    section_3_only_get_is_stored_and_errors_need_explicit_freshness,
    head_is_answered_from_a_stored_get_and_hits_carry_age,
    section_4_1_vary_keys_on_the_listed_request_fields,
    section_4_2_freshness_from_max_age_expires_and_age,
    section_4_2_ttl_caps_every_lifetime,
    section_4_3_stale_entries_are_revalidated_and_refreshed_by_304,
    section_4_3_2_client_conditionals_get_304_from_fresh_entries,
    section_4_4_unsafe_requests_invalidate_the_url_and_its_locations,
    section_5_2_1_request_directives_are_respected,
    section_5_2_2_no_cache_responses_are_revalidated_before_each_reuse,
    stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background,
    a_background_refresh_retries_a_pooled_connection_the_backend_closed,
    a_background_refresh_takes_a_dead_backend_out_of_rotation,
    stale_if_error_covers_a_dead_or_failing_backend,
    must_revalidate_is_never_served_stale,
    memory_stays_bounded_and_recent_entries_still_hit,
    purge_removes_entries,
    ttl_zero_turns_the_cache_off,
    urls_that_answered_uncacheable_are_not_coalesced,
);
