//! Inputs the fuzz targets in `fuzz/` found, minimised, fed to the same public functions with the
//! same property asserted. Plain `cargo test`; no nightly toolchain needed.
//!
//! A finding whose fix is not merged yet is `#[ignore]`d with its id (docs/hardening.md lists them);
//! `cargo test --test fuzz_regressions -- --ignored` shows which still fail. Remove the `ignore`,
//! and the matching skip in the fuzz target, with the fix.

use pibl::api::json::new_endpoint;
use pibl::cache::policy::not_modified;
use pibl::http::body::{transfer, BodyError, Encoding, Source};
use pibl::http::buffer::{ReadBuf, WriteBatch};
use pibl::http::response::parse;
use pibl::http::Framing;

/// F1 (response_head): `HTTP/1.1 200` with no space before the (empty) reason phrase. httparse
/// reports the reason as a `""` that is not a slice of the input; `parse` subtracts the two pointers
/// (overflow panic with overflow checks; without them `Response::reason` indexes out of range),
/// so relaying or caching such an answer panics the worker.
#[test]
fn f1_status_line_without_reason() {
    let (res, len) = parse(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", false).unwrap().unwrap();
    assert_eq!((res.status, len), (200, 35));
    assert_eq!(res.reason(), b"");
}

/// F1 (response_head): a reason phrase with obs-text (RFC 9112 allows bytes 0x80-0xFF), which
/// httparse also reports as a `""` outside the input because it is not UTF-8.
#[test]
fn f1_status_line_with_obs_text_reason() {
    let (res, _) = parse(b"HTTP/1.1 200 Caf\xe9\r\nContent-Length: 0\r\n\r\n", false).unwrap().unwrap();
    assert_eq!(res.status, 200);
    // The phrase as sent, or none at all: either is a sound reading, a panic is not.
    assert!(res.reason() == b"Caf\xe9" || res.reason().is_empty());
}

/// F2 (chunked_body): the 4096-byte limit on a chunk-size line holds only when the line arrives in
/// reads of at most 4 KiB; with pibl's default 8 KiB buffer a 5000-byte line that arrives in one
/// read is accepted. The framing decision must not depend on how the bytes arrive.
#[test]
fn f2_chunk_line_limit_depends_on_read_size() {
    let mut input = b"5;".to_vec();
    input.extend(std::iter::repeat_n(b'e', 5000));
    input.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    let decode = |step: usize| {
        let mut buf = ReadBuf::new();
        let mut sock = &input[..];
        let (mut batch, mut out) = (Vec::new(), Vec::new());
        let mut src = Source { buf: &mut buf, sock: &mut sock, step };
        let mut dst = WriteBatch::new(&mut batch, &mut out, 64);
        let r = transfer(&mut src, Framing::Chunked, &mut dst, Encoding::Identity, u64::MAX);
        match r {
            Ok(n) => format!("ok {n}"),
            Err(BodyError::Malformed(why)) => format!("malformed: {why}"),
            Err(e) => format!("{e}"),
        }
    };
    assert_eq!(decode(8192), decode(1), "read size 8192 and read size 1 disagree");
}

/// F3 (response_head): status codes 000-099 are accepted from a backend; pibl then relays them as
/// `HTTP/1.1 2 OK`, a status line no client can parse (RFC 9110 section 15: codes are 100-599, an
/// invalid one is to be treated as a 5xx).
#[test]
fn f3_status_code_below_100() {
    let parsed = parse(b"HTTP/1.1 002 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false);
    assert!(
        !matches!(parsed, Ok(Some((ref r, _))) if r.status < 100),
        "status {:?} accepted",
        parsed.map(|o| o.map(|(r, _)| r.status))
    );
}

/// F4 (cache_policy): an entity-tag may hold a comma (RFC 9110 section 8.8.3, etagc includes
/// %x2C), but `If-None-Match` is split on every comma, so a client sending back the stored tag
/// verbatim never gets its 304.
#[test]
fn f4_entity_tag_with_comma() {
    let etag: &[u8] = b"\"a,b\"";
    assert!(not_modified(Some(etag), None, Some(etag), None));
}

/// F5 (api_json): `statuspath` is limited to 1024 characters before the missing `/` is added, so a
/// 1024-character path without it is stored as 1025 characters, and the API refuses the very value
/// it returned (no round trip; the limit is passed by one).
#[test]
fn f5_statuspath_limit_checked_before_the_slash() {
    let body = format!(r#"{{"host":"h","port":1,"statuspath":"{}"}}"#, "a".repeat(1024));
    if let Ok(e) = new_endpoint(body.as_bytes()) {
        assert!(e.statuspath.len() <= 1024, "stored a statuspath of {} characters", e.statuspath.len());
        let again = format!(r#"{{"host":"h","port":1,"statuspath":"{}"}}"#, e.statuspath);
        assert_eq!(new_endpoint(again.as_bytes()), Ok(e), "the returned value is refused");
    }
}

/// The shapes next to each finding that already behave, so a fix cannot break them.
#[test]
fn neighbours_of_the_findings_behave() {
    let (res, _) = parse(b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", false).unwrap().unwrap();
    assert_eq!(res.reason(), b"");
    let (res, _) = parse(b"HTTP/1.1 599 Odd\r\nContent-Length: 0\r\n\r\n", false).unwrap().unwrap();
    assert_eq!((res.status, res.reason()), (599, &b"Odd"[..]));
    assert!(not_modified(Some(b"\"a\", \"b\""), None, Some(b"\"b\""), None));
    assert!(not_modified(Some(b"W/\"b\""), None, Some(b"\"b\""), None));
    let path = format!("/{}", "a".repeat(1023));
    let e = new_endpoint(format!(r#"{{"host":"h","port":1,"statuspath":"{path}"}}"#).as_bytes()).unwrap();
    assert_eq!(e.statuspath, path);
}
