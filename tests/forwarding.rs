//! Forwarding through a real proxy to real backends: balancing, failover, header rewriting, body
//! framing in both directions, keep-alive, pipelining and upstream connection reuse.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use common::*;

#[test]
fn round_robin_spreads_requests_evenly() {
    let backends = [TestBackend::named("one"), TestBackend::named("two"), TestBackend::named("three")];
    let proxy = start_proxy(test_config(&backends.iter().map(|b| b.addr).collect::<Vec<_>>()));
    let mut client = Client::connect(proxy.local_addr());
    let mut seen = Vec::new();
    for _ in 0..30 {
        let res = client.get("/");
        assert_eq!(res.status, 200);
        seen.push(res.text());
    }
    assert_eq!(&seen[..3], ["one", "two", "three"]);
    let counts = seen.iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.clone()).or_insert(0) += 1;
        m
    });
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [10, 10, 10]);
    assert!(backends.iter().all(|b| b.requests() == 10));
    assert!(proxy.shutdown());
}

#[test]
fn request_headers_are_rewritten_for_the_backend() {
    let backend = TestBackend::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nX-App: a\r\n\r\nok"
                .to_vec(),
        )
    });
    let proxy = start_proxy(test_config(&[backend.addr]));
    let res = request(
        proxy.local_addr(),
        b"GET /p?q=1 HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 300\r\n\
          TE: trailers\r\nTrailer: X\r\nUpgrade: websocket\r\nProxy-Authorization: Basic x\r\nX-Forwarded-For: 10.1.1.1\r\n\
          Via: 1.1 edge\r\nX-Custom: kept\r\n\r\n",
    );
    assert_eq!(res.status, 200);
    assert_eq!(res.header("x-app"), Some("a"));
    for dropped in ["x-secret", "keep-alive"] {
        assert_eq!(res.header(dropped), None, "response field {dropped} must not reach the client");
    }
    let got = backend.last();
    assert_eq!((got.method.as_str(), got.target.as_str(), got.version), ("GET", "/p?q=1", 1));
    assert_eq!(got.header("host"), Some("example.test"));
    assert_eq!(got.header("x-custom"), Some("kept"));
    assert_eq!(got.header("x-forwarded-for"), Some("10.1.1.1, 127.0.0.1"));
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
    assert_eq!(got.header("x-forwarded-host"), Some("example.test"));
    assert_eq!(got.header("via"), Some("1.1 edge, 1.1 pibl"));
    for dropped in ["connection", "x-hop", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization"] {
        assert_eq!(got.header(dropped), None, "request field {dropped} must not be forwarded");
    }
}

#[test]
fn one_mebibyte_bodies_arrive_byte_identical_in_every_framing() {
    let body = pattern(1 << 20);
    // Echoes the request body back, framed as the request path says.
    let backend = TestBackend::start(|req| {
        let body = req.body.clone();
        match req.target.as_str() {
            "/length" => {
                let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                out.extend_from_slice(&body);
                Reply::Raw(out)
            }
            "/chunked" => {
                let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                out.extend_from_slice(&chunked(&body, 10_000));
                Reply::Raw(out)
            }
            _ => {
                let mut out = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
                out.extend_from_slice(&body);
                Reply::RawThenClose(out)
            }
        }
    });
    let proxy = start_proxy(test_config(&[backend.addr]));
    let mut client = Client::connect(proxy.local_addr());
    for path in ["/length", "/chunked", "/close"] {
        // Fixed-length request body.
        client.send(format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
        client.send(&body);
        let res = client.read_response(false).unwrap();
        assert_eq!(res.status, 200);
        assert!(backend.last().body == body, "{path}: request body (Content-Length) changed on the way");
        assert!(res.body == body, "{path}: response body changed on the way");
        // Chunked request body, in uneven chunks.
        client.send(format!("POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes());
        client.send(&chunked(&body, 7_777));
        let res = client.read_response(false).unwrap();
        assert_eq!(res.status, 200);
        assert!(backend.last().body == body, "{path}: request body (chunked) changed on the way");
        assert!(res.body == body, "{path}: response body changed on the way");
        if path == "/close" {
            // A read-until-close body reaches an HTTP/1.1 client re-chunked, and the client connection lives on.
            assert_eq!(res.header("transfer-encoding"), Some("chunked"));
        }
    }
    // An HTTP/1.0 client gets a read-until-close body as it is, and the connection closes.
    let mut old = Client::connect(proxy.local_addr());
    old.send(format!("POST /close HTTP/1.0\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes()).send(&body);
    let res = old.read_response(false).unwrap();
    assert!(res.body == body);
    assert_eq!(res.header("transfer-encoding"), None);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let backend = TestBackend::start(|req| ok(&req.target));
    let proxy = start_proxy(test_config(&[backend.addr]));
    let mut client = Client::connect(proxy.local_addr());
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.extend_from_slice(format!("GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    batch.extend_from_slice(
        b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabcGET /last HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    client.send(&batch);
    for expected in ["/0", "/1", "/2", "/3", "/4", "/body", "/last"] {
        assert_eq!(client.read_response(false).unwrap().text(), expected);
    }
}

#[test]
fn http10_clients_and_keep_alive_rules() {
    let backend = TestBackend::named("b");
    let proxy = start_proxy(test_config(&[backend.addr]));
    let mut plain = Client::connect(proxy.local_addr());
    plain.send(b"GET / HTTP/1.0\r\n\r\n");
    let res = plain.read_response(false).unwrap();
    assert_eq!((res.status, res.header("connection")), (200, Some("close")));
    assert!(plain.is_closed());

    let mut kept = Client::connect(proxy.local_addr());
    for _ in 0..3 {
        kept.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let res = kept.read_response(false).unwrap();
        assert_eq!((res.status, res.header("connection")), (200, Some("keep-alive")));
    }

    let mut closing = Client::connect(proxy.local_addr());
    closing.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(closing.read_response(false).unwrap().header("connection"), Some("close"));
    assert!(closing.is_closed());
}

#[test]
fn head_204_and_304_carry_no_body() {
    let backend = TestBackend::start(|req| match req.target.as_str() {
        "/204" => Reply::Raw(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
        "/304" => Reply::Raw(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n\r\n".to_vec()),
        _ => Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec()),
    });
    let proxy = start_proxy(test_config(&[backend.addr]));
    let mut client = Client::connect(proxy.local_addr());
    client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n");
    let res = client.read_response(true).unwrap();
    assert_eq!((res.status, res.header("content-length")), (200, Some("10")));
    client.send(b"GET /204 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response(false).unwrap().status, 204);
    client.send(b"GET /304 HTTP/1.1\r\nHost: t\r\n\r\n");
    let res = client.read_response(false).unwrap();
    assert_eq!((res.status, res.header("etag")), (304, Some("\"x\"")));
    // Had any of those carried body bytes, this response would be garbled.
    client.send(b"GET /204 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response(false).unwrap().status, 204);
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let backend = TestBackend::start(|req| ok(&format!("got {}", req.body.len())));
    let proxy = start_proxy(test_config(&[backend.addr]));
    let mut client = Client::connect(proxy.local_addr());
    client.send(b"PUT /up HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    let interim = client.read_response(false).unwrap();
    assert_eq!(interim.status, 100);
    client.send(b"hello");
    let res = client.read_response(false).unwrap();
    assert_eq!((res.status, res.text().as_str()), (200, "got 5"));
    assert_eq!(backend.last().header("expect"), None);

    // Too large: refused with 413 before the client sends the body.
    let mut config = test_config(&[backend.addr]);
    config.max_body_bytes = 4;
    let small = start_proxy(config);
    let res =
        request(small.local_addr(), b"PUT / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(res.status, 413);
}

#[test]
fn backend_connections_are_pooled_and_reused() {
    let backend = TestBackend::named("b");
    let config = test_config(&[backend.addr]);
    // Each event loop keeps its own pool, without a lock.
    let most = config.threads;
    let proxy = start_proxy(config);
    for _ in 0..20 {
        assert_eq!(get(proxy.local_addr(), "/").status, 200);
    }
    assert_eq!(backend.requests(), 20);
    assert!(backend.connections() <= most, "sequential requests should share pooled backend connections");
}

#[test]
fn a_backend_closing_pooled_connections_costs_no_request() {
    // Answers, then closes without saying so: the proxy's pooled connection goes stale each time.
    let backend =
        TestBackend::start(|_| Reply::RawThenClose(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()));
    let proxy = start_proxy(test_config(&[backend.addr]));
    let mut client = Client::connect(proxy.local_addr());
    for _ in 0..10 {
        assert_eq!(client.get("/").status, 200);
    }
    assert_eq!(backend.requests(), 10);
}

#[test]
fn bytes_on_an_idle_pooled_connection_keep_it_from_reuse() {
    // The first connection answers, then (once the client has its answer, so the connection sits
    // idle in the pool) says more than its response: those bytes would be read as the next
    // request's answer. Later connections answer normally.
    let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(1);
    let (said_tx, said_rx) = crossbeam_channel::bounded::<()>(1);
    let (end_tx, end_rx) = crossbeam_channel::bounded::<()>(1);
    let first = std::sync::atomic::AtomicBool::new(true);
    let backend = TestBackend::start(move |_| {
        if !first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return ok("fresh");
        }
        let (go_rx, said_tx, end_rx) = (go_rx.clone(), said_tx.clone(), end_rx.clone());
        Reply::With(Box::new(move |stream| {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst");
            let _ = go_rx.recv_timeout(Duration::from_secs(10));
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale");
            let _ = said_tx.send(());
            // Kept open: a proxy that reused it would read "stale" as its next answer.
            let _ = end_rx.recv_timeout(Duration::from_secs(10));
        }))
    });
    let proxy = start_proxy(test_config(&[backend.addr]));
    let mut client = Client::connect(proxy.local_addr());
    assert_eq!(client.get("/").text(), "first");
    go_tx.send(()).unwrap();
    said_rx.recv_timeout(Duration::from_secs(10)).expect("the backend wrote its extra bytes");
    let res = client.get("/");
    assert_eq!((res.status, res.text().as_str()), (200, "fresh"));
    assert_eq!(backend.connections(), 2, "the stirred connection must not be reused");
    let _ = end_tx.send(());
}

#[test]
fn a_backend_killed_mid_run_costs_no_request() {
    let (a, b) = (TestBackend::named("a"), TestBackend::named("b"));
    let proxy = start_proxy(test_config(&[a.addr, b.addr]));
    let mut client = Client::connect(proxy.local_addr());
    for _ in 0..4 {
        assert_eq!(client.get("/").status, 200);
    }
    a.stop();
    let mut bodies = Vec::new();
    for _ in 0..10 {
        let res = client.get("/");
        assert_eq!(res.status, 200, "no client sees an error while a backend is up");
        bodies.push(res.text());
    }
    assert!(bodies.iter().all(|t| t == "b"));
    assert_eq!(b.requests(), 12);
}

#[test]
fn all_backends_down_is_502_and_silent_backend_is_504() {
    let dead = {
        let b = TestBackend::named("gone");
        let addr = b.addr;
        b.stop();
        addr
    };
    let proxy = start_proxy(test_config(&[dead]));
    let mut client = Client::connect(proxy.local_addr());
    let res = client.get("/");
    assert_eq!(res.status, 502);
    assert!(res.text().contains("no backend"), "{}", res.text());
    // The connection survives a 502 (the request was complete), and stays 502 during the cool-down.
    assert_eq!(client.get("/").status, 502);

    let silent = TestBackend::start(|_| Reply::Silent);
    let mut config = test_config(&[silent.addr]);
    config.backend_timeout = Duration::from_millis(300);
    let proxy = start_proxy(config);
    assert_eq!(get(proxy.local_addr(), "/").status, 504);

    let rude = TestBackend::start(|_| Reply::Raw(b"NOT HTTP AT ALL\r\n\r\n".to_vec()));
    let proxy = start_proxy(test_config(&[rude.addr]));
    assert_eq!(get(proxy.local_addr(), "/").status, 502);
}

#[test]
fn a_backend_dying_mid_body_closes_the_client_connection() {
    let backend = TestBackend::start(|req| {
        if req.target != "/cut" {
            return ok("fine");
        }
        Reply::With(Box::new(|s| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part");
        }))
    });
    let proxy = start_proxy(test_config(&[backend.addr]));
    let mut client = Client::connect(proxy.local_addr());
    client.send(b"GET /cut HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(client.read_response(false).is_err(), "a cut body must not look complete");
    assert_eq!(get(proxy.local_addr(), "/").text(), "fine");
}
