//! Request smuggling and framing (RFC 9112 sections 6 and 11.2), table-driven: each case is the bytes
//! a client sends, the answers it gets, and exactly the bytes the backend receives (or that no
//! connection reached it). Every ambiguous request is refused with a 400 that closes the connection,
//! or normalised so the backend cannot read a request boundary other than pibl's.

#[macro_use]
mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{start_proxy, test_config, Client, RawBackend};

/// One case of the table.
struct Case {
    name: &'static str,
    send: Vec<u8>,
    /// The status of each answer, in order.
    answers: &'static [u16],
    /// Exactly what the backend receives; `None`: no connection reaches it.
    upstream: Option<String>,
}

fn case(name: &'static str, send: impl AsRef<[u8]>, answers: &'static [u16], upstream: Option<String>) -> Case {
    Case { name, send: send.as_ref().to_vec(), answers, upstream }
}

/// Refused before anything is forwarded.
fn refused(name: &'static str, send: impl AsRef<[u8]>) -> Case {
    case(name, send, &[400], None)
}

/// A chunked POST whose body turns out malformed after pibl has sent its head: the client gets a
/// 400, the backend the head and then a closed connection, never a complete request.
fn cut(name: &'static str, send: impl AsRef<[u8]>) -> Case {
    case(name, send, &[400], Some(fwd("POST / HTTP/1.1", "h", "", TE, "")))
}

/// The head pibl forwards for a request to `host` with the client's `fields` (each ending in CRLF),
/// pibl's own framing field and the body.
fn fwd(line: &str, host: &str, fields: &str, framing: &str, body: &str) -> String {
    format!(
        "{line}\r\nHost: {host}\r\n{fields}X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\
         X-Forwarded-Host: {host}\r\nVia: 1.1 pibl\r\n{framing}\r\n{body}"
    )
}

fn post(fields: &str, framing: &str, body: &str) -> Option<String> {
    Some(fwd("POST / HTTP/1.1", "h", fields, framing, body))
}

const CL5: &str = "Content-Length: 5\r\n";
const TE: &str = "Transfer-Encoding: chunked\r\n";

fn cases() -> Vec<Case> {
    let p = |fields: &str, body: &str| format!("POST / HTTP/1.1\r\nHost: h\r\n{fields}\r\n{body}");
    let chunked = |body: &str| p(TE, body);
    vec![
        // Content-Length and Transfer-Encoding.
        refused("CL with TE", p("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n")),
        refused("TE with CL", p("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n")),
        case("two equal CLs", p("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"), &[200], post("", CL5, "hello")),
        refused("two different CLs", p("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!")),
        refused("CL +5", p("Content-Length: +5\r\n", "hello")),
        case("CL with a leading space", p("Content-Length:  5\r\n", "hello"), &[200], post("", CL5, "hello")),
        refused("CL list 5,5", p("Content-Length: 5,5\r\n", "hello")),
        refused("CL 0x5", p("Content-Length: 0x5\r\n", "hello")),
        refused("CL -1", p("Content-Length: -1\r\n", "")),
        refused("CL overflow", p("Content-Length: 99999999999999999999\r\n", "")),
        // Transfer-Encoding forms.
        refused("TE chunked, identity", p("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n")),
        refused("TE identity, chunked", p("Transfer-Encoding: identity, chunked\r\n", "0\r\n\r\n")),
        refused("TE xchunked", p("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n")),
        refused("TE chunkedx", p("Transfer-Encoding: chunkedx\r\n", "0\r\n\r\n")),
        refused("TE twice", p("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n")),
        refused("TE empty", p("Transfer-Encoding: \r\n", "")),
        case("TE chunked with trailing whitespace", p("Transfer-Encoding: chunked \t\r\n", "0\r\n\r\n"), &[200], post("", TE, "0\r\n\r\n")),
        case("TE chunked after a tab", p("Transfer-Encoding:\tchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), &[200], post("", TE, "5\r\nhello\r\n0\r\n\r\n")),
        refused("TE chunked after a vertical tab", p("Transfer-Encoding: \x0bchunked\r\n", "0\r\n\r\n")),
        refused("TE chunked after a form feed", p("Transfer-Encoding: \x0cchunked\r\n", "0\r\n\r\n")),
        refused("TE in HTTP/1.0", "POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        // obs-fold, whitespace before the colon, control bytes.
        refused("obs-fold", p("X-A: 1\r\n folded\r\n", "")),
        refused("obs-fold of TE", p("X-A: 1\r\n Transfer-Encoding: chunked\r\n", "")),
        refused("space before the colon", p("Transfer-Encoding : chunked\r\n", "0\r\n\r\n")),
        refused("tab before the colon", p("Content-Length\t: 5\r\n", "hello")),
        refused("space before the first field", "POST / HTTP/1.1\r\n Host: h\r\nContent-Length: 5\r\n\r\nhello"),
        refused("NUL in a name", p("X-\0A: 1\r\n", "")),
        refused("NUL in a value", p("X-A: 1\x002\r\n", "")),
        refused("SOH in a value", p("X-A: \x01\r\n", "")),
        refused("DEL in a value", p("X-A: a\x7fb\r\n", "")),
        refused("control byte in a name", p("Content-Length\x01: 5\r\n", "hello")),
        // Bare CR and bare LF.
        refused("bare CR in the request line", "POST / HTTP/1.1\rHost: h\r\n\r\n"),
        refused("bare CR in a value", p("X-A: a\rContent-Length: 5\r\n", "hello")),
        refused("bare CR ending a field", p("X-A: a\r\rContent-Length: 5\r\n", "hello")),
        refused("bare CR ending the head", "POST / HTTP/1.1\r\nHost: h\r\n\rX"),
        cut("bare CR in a chunk size line", chunked("5\rhello\r\n0\r\n\r\n")),
        cut("bare LF in a chunk size line", chunked("5\nhello\r\n0\r\n\r\n")),
        cut("bare LF after chunk data", chunked("5\r\nhello\n0\r\n\r\n")),
        cut("bare LF in a trailer", chunked("0\r\nX-T: 1\nContent-Length: 5\r\n\r\n")),
        cut("bare LF in a chunk extension", chunked("5;a\nb\r\nhello\r\n0\r\n\r\n")),
        cut("bare LF ending the last chunk", chunked("0\n\r\n")),
        refused("bare LF in the target", "GET /a\nb HTTP/1.1\r\nHost: h\r\n\r\n"),
        refused("bare CR in the target", "GET /a\rb HTTP/1.1\r\nHost: h\r\n\r\n"),
        refused("bare LF in a name", p("X-\nA: 1\r\n", "")),
        cut("bare CR in a trailer", chunked("0\r\nX-T: 1\rContent-Length: 5\r\n\r\n")),
        // pibl reads a bare LF in the head as a line end (RFC 9112 section 2.2 allows it) and
        // forwards every field on a CRLF line of its own, so the backend reads the same fields.
        case("bare LF ending the request line", "POST / HTTP/1.1\nHost: h\r\nContent-Length: 5\r\n\r\nhello", &[200], post("", CL5, "hello")),
        case("bare LF ending a field", p("X-A: a\nContent-Length: 5\r\n", "hello"), &[200], post("X-A: a\r\n", CL5, "hello")),
        case("bare LF ending the head", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\nhello", &[200], post("", CL5, "hello")),
        // Chunk sizes.
        cut("chunk size overflow", chunked("1ffffffffffffffff\r\nhello\r\n0\r\n\r\n")),
        cut("chunk size with +", chunked("+5\r\nhello\r\n0\r\n\r\n")),
        cut("chunk size with 0x", chunked("0x5\r\nhello\r\n0\r\n\r\n")),
        cut("chunk size with a space inside", chunked("5 5\r\nhello\r\n0\r\n\r\n")),
        cut("negative chunk size", chunked("-5\r\nhello\r\n0\r\n\r\n")),
        case(
            "chunk extension with quotes",
            chunked("5;name=\"a;b\\\"c\"\r\nhello\r\n0;x=\"0\"\r\n\r\n"),
            &[200],
            post("", TE, "5\r\nhello\r\n0\r\n\r\n"),
        ),
        cut("chunk without its CRLF", chunked("5\r\nhello0\r\n\r\n")),
        cut("chunk longer than its size", chunked("5\r\nhello!\r\n0\r\n\r\n")),
        // Trailers are read and dropped: what they say never reaches the backend.
        case(
            "trailers with Content-Length and Host",
            chunked("5\r\nhello\r\n0\r\nContent-Length: 50\r\nHost: evil\r\n\r\n"),
            &[200],
            post("", TE, "5\r\nhello\r\n0\r\n\r\n"),
        ),
        // Hosts and targets.
        refused("two Hosts", "GET / HTTP/1.1\r\nHost: h\r\nHost: evil\r\n\r\n"),
        refused("two Hosts, equal", "GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n"),
        refused("no Host in HTTP/1.1", "GET / HTTP/1.1\r\n\r\n"),
        case(
            "absolute form disagreeing with Host",
            "GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
            &[200],
            Some(fwd("GET /x HTTP/1.1", "a.example", "", "", "")),
        ),
        // Host values that are not `host[:port]` (RFC 9112 section 3.2, RFC 3986 section 3.2.2).
        refused("Host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
        refused("Host with a tab inside", "GET / HTTP/1.1\r\nHost: a\tb\r\n\r\n"),
        refused("Host with user information", "GET / HTTP/1.1\r\nHost: user@h\r\n\r\n"),
        refused("Host with a path", "GET / HTTP/1.1\r\nHost: h/x\r\n\r\n"),
        refused("Host with a backslash", "GET / HTTP/1.1\r\nHost: h\\x\r\n\r\n"),
        refused("Host with a query", "GET / HTTP/1.1\r\nHost: h?x\r\n\r\n"),
        refused("Host with a control byte", "GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n"),
        refused("Host with a DEL", "GET / HTTP/1.1\r\nHost: a\x7fb\r\n\r\n"),
        refused("Host not in ASCII", "GET / HTTP/1.1\r\nHost: caf\u{e9}.example\r\n\r\n"),
        refused("Host with a bad % escape", "GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n"),
        refused("Host with a port that is not a number", "GET / HTTP/1.1\r\nHost: h:80x\r\n\r\n"),
        refused("Host with a port over 65535", "GET / HTTP/1.1\r\nHost: h:65536\r\n\r\n"),
        refused("Host with two ports", "GET / HTTP/1.1\r\nHost: h:1:2\r\n\r\n"),
        refused("Host with a broken IPv6 literal", "GET / HTTP/1.1\r\nHost: [::1:80\r\n\r\n"),
        refused("Host with an unbracketed IPv6 address", "GET / HTTP/1.1\r\nHost: ::1\r\n\r\n"),
        refused("invalid Host in HTTP/1.0", "GET / HTTP/1.0\r\nHost: a b\r\n\r\n"),
        refused("two Hosts, one invalid", "GET / HTTP/1.1\r\nHost: h\r\nHost: a b\r\n\r\n"),
        refused("absolute form with an invalid Host", "GET http://a.example/x HTTP/1.1\r\nHost: a b\r\n\r\n"),
        refused("absolute form with a backslash in its host", "GET http://a\\b/x HTTP/1.1\r\nHost: a\r\n\r\n"),
        refused("absolute form with a bad port", "GET http://a.example:http/x HTTP/1.1\r\nHost: a.example\r\n\r\n"),
        // Valid shapes pass as sent, OWS trimmed.
        case("Host with an empty port", "GET / HTTP/1.1\r\nHost: h:\r\n\r\n", &[200], Some(fwd("GET / HTTP/1.1", "h:", "", "", ""))),
        case("Host with an IPv6 literal", "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", &[200], Some(fwd("GET / HTTP/1.1", "[::1]:8080", "", "", ""))),
        case("Host with _ and a trailing space", "GET / HTTP/1.1\r\nHost: my_host.local:80 \r\n\r\n", &[200], Some(fwd("GET / HTTP/1.1", "my_host.local:80", "", "", ""))),
        refused("request line with two spaces", "GET  / HTTP/1.1\r\nHost: h\r\n\r\n"),
        // httparse reads " HTTP/1.1" as the version: refused as an unknown one, and closed too.
        case("request line with two spaces before the version", "GET /  HTTP/1.1\r\nHost: h\r\n\r\n", &[505], None),
        refused("request line with a tab", "GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n"),
        // Bodies on GET.
        case(
            "GET with a body, then a pipelined request",
            "GET /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
            &[200, 200],
            Some(fwd("GET /1 HTTP/1.1", "h", "", CL5, "hello") + &fwd("GET /2 HTTP/1.1", "h", "", "", "")),
        ),
        case(
            "GET with a chunked body goes with Content-Length",
            "GET /1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
            &[200, 200],
            Some(fwd("GET /1 HTTP/1.1", "h", "", CL5, "hello") + &fwd("GET /2 HTTP/1.1", "h", "", "", "")),
        ),
        case(
            "HEAD with a chunked body goes with Content-Length",
            "HEAD / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            &[200],
            Some(fwd("HEAD / HTTP/1.1", "h", "", CL5, "hello")),
        ),
        // Look-alikes of the framing fields and names with underscores.
        refused("Content_Length", p("Content_Length: 1000\r\n", "")),
        refused("Content_Length beside Content-Length", p("Content-Length: 5\r\nContent_Length: 1000\r\n", "hello")),
        refused("Transfer_Encoding", p("Transfer_Encoding: chunked\r\n", "0\r\n\r\n")),
        refused("Transfer___Encoding", p("Transfer___Encoding: chunked\r\n", "0\r\n\r\n")),
        refused("Transfer---Encoding", p("Transfer---Encoding: chunked\r\n", "0\r\n\r\n")),
        refused("TransferEncoding", p("TransferEncoding: chunked\r\n", "0\r\n\r\n")),
        refused("Content.Length", p("Content.Length: 5\r\n", "hello")),
        case(
            "a name with an underscore is dropped",
            p("X_User: admin\r\nX-Kept: 1\r\nContent-Length: 5\r\n", "hello"),
            &[200],
            post("X-Kept: 1\r\n", CL5, "hello"),
        ),
        case(
            "a body-less POST says Content-Length: 0",
            "POST / HTTP/1.1\r\nHost: h\r\n\r\n",
            &[200],
            post("", "Content-Length: 0\r\n", ""),
        ),
    ]
}

fn run(cases: Vec<Case>, underscores: bool) {
    let backend = RawBackend::start();
    let mut config = test_config(&[backend.addr]);
    config.ttl = Duration::ZERO;
    // A new backend connection per request, so the bytes of each case stand alone.
    config.backend_pool_size = 0;
    config.underscores_in_headers = underscores;
    let proxy = start_proxy(config);
    let mut failures = Vec::new();
    for case in cases {
        backend.clear();
        let mut client = Client::connect(proxy.local_addr());
        client.send(&case.send);
        let mut got = Vec::new();
        let mut last_closes = false;
        let head_only = case.send.starts_with(b"HEAD ");
        for _ in case.answers {
            match client.read_response(head_only) {
                Ok(res) => {
                    last_closes = res.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    got.push(res.status);
                }
                Err(e) => {
                    failures.push(format!("{}: no answer after {got:?}: {e}", case.name));
                    break;
                }
            }
        }
        if got != case.answers {
            failures.push(format!("{}: answers {got:?}, expected {:?}", case.name, case.answers));
            continue;
        }
        if case.answers.last().is_some_and(|&status| status >= 400) && !(last_closes && client.is_closed()) {
            failures.push(format!("{}: the refusal did not close the connection", case.name));
        }
        // Every backend connection ends with its request (the pool keeps none), so once all are
        // closed the backend has received all it ever will for this case.
        // A refused body may be answered before the backend has even accepted the connection its
        // head went on: a case that expects bytes waits for a connection.
        let least = usize::from(case.upstream.is_some());
        common::wait_until("the backend connections close", || {
            let opened = backend.connections.load(Ordering::SeqCst);
            opened >= least && backend.closed.load(Ordering::SeqCst) == opened
        });
        match &case.upstream {
            None => {
                if backend.connections.load(Ordering::SeqCst) != 0 || !backend.text().is_empty() {
                    failures.push(format!("{}: the backend received {:?}", case.name, backend.text()));
                }
            }
            Some(expected) => {
                // The backend answered before pibl did, so its bytes are all in.
                if backend.text() != *expected {
                    failures.push(format!(
                        "{}: the backend received\n{:?}\nexpected\n{expected:?}",
                        case.name,
                        backend.text()
                    ));
                }
            }
        }
    }
    proxy.shutdown();
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn ambiguous_requests_are_refused_or_normalised() {
    run(cases(), false);
}

#[test]
fn underscores_in_headers_on_forwards_such_names_but_never_framing_lookalikes() {
    let p = |fields: &str| format!("POST / HTTP/1.1\r\nHost: h\r\n{fields}Content-Length: 5\r\n\r\nhello");
    run(
        vec![
            case("X_User forwarded", p("X_User: admin\r\n"), &[200], post("X_User: admin\r\n", CL5, "hello")),
            refused("Content_Length still refused", p("Content_Length: 1000\r\n")),
        ],
        true,
    );
}
