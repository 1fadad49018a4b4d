//! Bad input from clients: each malformed or smuggling-prone request gets its status code, the
//! connection is closed cleanly, no backend sees it, and the proxy keeps serving.

#[macro_use]
mod common;

use common::*;

/// (name, raw request, expected status)
const CASES: &[(&str, &str, u16)] = &[
    ("garbage request line", "HELLO\r\n\r\n", 400),
    ("bad header name", "GET / HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n", 400),
    ("obs-fold header", "GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  folded\r\n\r\n", 400),
    ("no Host in HTTP/1.1", "GET / HTTP/1.1\r\n\r\n", 400),
    ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("target not a path", "GET index.html HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (
        "CL and TE",
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("differing CLs", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("CL with sign", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc", 400),
    ("TE not chunked", "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    ("chunked not last", "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("bad chunk size", "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    (
        "chunk longer than size",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    ("HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("CONNECT", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", 501),
    ("unknown expectation", "POST / HTTP/1.1\r\nHost: t\r\nExpect: tea\r\nContent-Length: 1\r\n\r\nx", 417),
    ("body over the limit", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2048\r\n\r\n", 413),
    ("chunked body over the limit", "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n", 413),
];

#[test]
fn each_bad_request_gets_its_status_and_a_closed_connection() {
    let backend = TestBackend::named("b");
    let mut config = test_config(&[backend.addr]);
    config.max_body_bytes = 1000;
    let proxy = start_proxy(config);
    let mut forwarded_bodies = 0;
    for (name, raw, status) in CASES {
        let mut client = Client::connect(proxy.local_addr());
        client.send(raw.as_bytes());
        let res = client.read_response(false).unwrap_or_else(|e| panic!("{name}: no response: {e}"));
        assert_eq!(res.status, *status, "{name}: {}", res.text());
        assert_eq!(res.header("connection"), Some("close"), "{name}");
        assert!(client.is_closed(), "{name}: connection must be closed after the error");
        if *status == 400 && raw.contains("chunked\r\n\r\n") {
            forwarded_bodies += 1;
        }
    }
    // Invalid chunked bodies are only detected while streaming, so those reached a backend as a
    // request head; nothing else did.
    assert!(backend.requests() <= forwarded_bodies, "{} requests reached the backend", backend.requests());
    assert_eq!(get(proxy.local_addr(), "/").status, 200, "the proxy still serves after bad input");
}

#[test]
fn oversized_heads_get_431() {
    let backend = TestBackend::named("b");
    let mut config = test_config(&[backend.addr]);
    config.max_header_bytes = 2048;
    config.max_headers = 20;
    let proxy = start_proxy(config);

    let long_line = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(4096));
    let many_fields: String = (0..21).map(|i| format!("X-F{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: t\r\n{many_fields}\r\n");
    let big_field = format!("GET / HTTP/1.1\r\nHost: t\r\nCookie: {}\r\n\r\n", "c".repeat(3000));
    for raw in [long_line, many, big_field] {
        let mut client = Client::connect(proxy.local_addr());
        // The proxy may answer and close before reading everything; that is fine.
        let _ = std::io::Write::write_all(&mut client.stream, raw.as_bytes());
        let res = client.read_response(false).expect("a 431 response");
        assert_eq!(res.status, 431);
    }
    assert_eq!(backend.requests(), 0);
    assert_eq!(get(proxy.local_addr(), "/").status, 200);
}

#[test]
fn a_client_that_hangs_up_early_harms_nobody() {
    let backend = TestBackend::named("b");
    let proxy = start_proxy(test_config(&[backend.addr]));
    for raw in [
        "GET / HT",
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\npartial",
        "GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        let client = Client::connect(proxy.local_addr());
        let mut stream = &client.stream;
        std::io::Write::write_all(&mut stream, raw.as_bytes()).unwrap();
        drop(client);
    }
    let random = pattern(64 * 1024);
    let mut client = Client::connect(proxy.local_addr());
    let _ = std::io::Write::write_all(&mut client.stream, &random);
    drop(client);
    for _ in 0..10 {
        assert_eq!(get(proxy.local_addr(), "/").status, 200);
    }
}
