//! Client request heads (`pibl::http::request::parse`) under fuzzed limits.
//!
//! Properties:
//! - limits hold: an accepted head is no longer than `max_head_bytes`, has at most `max_headers`
//!   fields, and declares no body larger than `max_body_bytes`;
//! - framing is never ambiguous: `Transfer-Encoding` only as a single `chunked` in HTTP/1.1 and never
//!   beside `Content-Length`; every `Content-Length` agrees with the framing; at most one `Host`,
//!   and HTTP/1.1 has one;
//! - a parsed head re-serialised parses to the same head (method, target, host, version, fields,
//!   framing, keep-alive, `Expect`, `Connection` options);
//! - the decision does not depend on how the bytes arrive: fed in pieces (1 to 16 bytes, as reads
//!   deliver them), the first prefix that decides gives the same head length or the same refusal
//!   status as the whole buffer, and no strict prefix of an accepted head is already accepted;
//! - the host of an accepted request (its `Host`, and an absolute-form target's authority) is
//!   `host[:port]` as RFC 3986 writes it (checked by an independent regular expression, the IPv6
//!   literal by `std`, the port by range): no space, `@`, `/`, `\`, control byte or non-ASCII byte;
//! - the cache key of an accepted request names it unambiguously.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pibl::cache::Cache;
use pibl::http::request::{parse, Limits, Request, RequestError, HEADER_CAPACITY};
use pibl::http::{parse_content_length, tokens, Framing};
use pibl_fuzz::{fields, serialise_request, Cursor};
use regex::Regex;

/// RFC 3986 `host [ ":" port ]`: an IP literal (`[IPv6]` or `[vX.…]`) or a reg-name
/// (unreserved, `%XX`, sub-delims), then an optional port of digits (possibly none).
static AUTHORITY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|\[[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(?::(?P<port>[0-9]*))?$",
    )
    .unwrap()
});

/// Whether `value` is a valid `host[:port]` by the reference.
fn valid_authority(value: &str) -> bool {
    let Some(m) = AUTHORITY.captures(value) else { return false };
    let v6_ok = m.name("v6").is_none_or(|v6| v6.as_str().parse::<std::net::Ipv6Addr>().is_ok());
    let port_ok = m.name("port").is_none_or(|p| p.as_str().is_empty() || p.as_str().parse::<u16>().is_ok());
    v6_ok && port_ok
}

type Parsed = Result<Option<(Request, usize)>, RequestError>;

/// What a parse decided, comparable across parses: the head length or the refusal status.
fn decision(r: &Parsed) -> Option<Result<usize, u16>> {
    match r {
        Ok(None) => None,
        Ok(Some((_, len))) => Some(Ok(*len)),
        Err(e) => Some(Err(e.status())),
    }
}

fn check_accepted(req: &Request, len: usize, buf: &[u8], limits: &Limits) {
    assert!(len <= buf.len());
    assert!(len <= limits.max_head_bytes, "head of {len} bytes passed a limit of {}", limits.max_head_bytes);
    let count = req.headers().count();
    assert!(count <= limits.max_headers.clamp(1, HEADER_CAPACITY), "{count} fields passed the limit");
    let head = &buf[..len];
    assert!(head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"), "head does not end with an empty line");

    assert!(!req.method().is_empty() && !req.method().contains([' ', '\r', '\n']));
    assert!(req.target().starts_with('/') || (req.target() == "*" && req.method() == "OPTIONS"), "{:?}", req.target());
    assert!(req.version <= 1);

    // Framing (RFC 9112 section 6.3, and section 11.2 on smuggling).
    let tes: Vec<&[u8]> =
        req.headers().filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding")).map(|h| h.1).collect();
    let cls: Vec<&[u8]> =
        req.headers().filter(|(n, _)| n.eq_ignore_ascii_case("content-length")).map(|h| h.1).collect();
    if !tes.is_empty() {
        assert_eq!(req.framing, Framing::Chunked, "Transfer-Encoding present but framing is {:?}", req.framing);
        assert!(cls.is_empty(), "Transfer-Encoding beside Content-Length was accepted");
        assert_eq!(req.version, 1, "Transfer-Encoding accepted in HTTP/1.0");
        let codings: Vec<&[u8]> = tes.iter().flat_map(|v| tokens(v)).collect();
        assert_eq!(codings.len(), 1, "more than one transfer coding accepted");
        assert!(codings[0].eq_ignore_ascii_case(b"chunked"));
    }
    if req.framing == Framing::Chunked {
        assert!(!tes.is_empty(), "chunked framing without Transfer-Encoding");
    }
    if let Some(first) = cls.first() {
        let n = parse_content_length(first).expect("accepted an invalid Content-Length");
        for other in &cls {
            assert_eq!(parse_content_length(other), Some(n), "accepted disagreeing Content-Length fields");
        }
        assert_eq!(req.framing, if n == 0 { Framing::None } else { Framing::Length(n) });
    }
    match req.framing {
        Framing::Length(n) => {
            assert!(n > 0 && n <= limits.max_body_bytes, "declared body of {n} passed {}", limits.max_body_bytes)
        }
        Framing::UntilClose => panic!("a request framed until close"),
        Framing::None if cls.is_empty() => assert!(tes.is_empty()),
        _ => {}
    }
    let hosts = req.headers().filter(|(n, _)| n.eq_ignore_ascii_case("host")).count();
    assert!(hosts <= 1, "{hosts} Host fields accepted");
    if req.version == 1 {
        assert!(req.host().is_some(), "HTTP/1.1 without a host");
    }
    if let Some(host) = req.host() {
        assert!(valid_authority(host), "accepted the host {host:?}");
    }
    if let Some(field) = req.header("host") {
        let field = String::from_utf8_lossy(field);
        assert!(valid_authority(field.trim_matches([' ', '\t'])), "accepted Host: {field:?}");
    }
    if req.expect_continue {
        assert!(req.framing.has_body());
    }

    // The cache key splits back into exactly this host and target (targets never hold a space).
    let key = Cache::key(req.host(), req.target());
    let (host, target) = key.rsplit_once(' ').expect("cache key without separator");
    assert_eq!(target, req.target());
    assert_eq!(host, req.host().unwrap_or("").to_ascii_lowercase());
}

fn same_head(a: &Request, b: &Request) {
    assert_eq!(a.method(), b.method());
    assert_eq!(a.target(), b.target());
    assert_eq!(a.host(), b.host());
    assert_eq!(a.version, b.version);
    assert_eq!(fields(a.headers()), fields(b.headers()));
    assert_eq!(a.framing, b.framing);
    assert_eq!(a.keep_alive, b.keep_alive);
    assert_eq!(a.expect_continue, b.expect_continue);
    assert_eq!(a.connection.close, b.connection.close);
    assert_eq!(a.connection.keep_alive, b.connection.keep_alive);
    assert_eq!(a.connection.named, b.connection.named);
}

fuzz_target!(|data: &[u8]| {
    let mut cur = Cursor::new(data);
    let limits = Limits {
        max_head_bytes: 16 + usize::from(cur.u16() % 4096),
        max_headers: usize::from(cur.byte()) + 1,
        max_body_bytes: u64::from(cur.u32()),
    };
    let step = usize::from(cur.byte() % 16) + 1;
    // The server never buffers more than `max_head_bytes` while it waits for a head.
    let buf = cur.rest();
    let buf = &buf[..buf.len().min(limits.max_head_bytes)];

    let whole = parse(buf, &limits);
    if let Ok(Some((req, len))) = &whole {
        check_accepted(req, *len, buf, &limits);

        let again = serialise_request(req);
        let relaxed = Limits { max_head_bytes: again.len() + 1, ..limits };
        match parse(&again, &relaxed) {
            Ok(Some((req2, len2))) => {
                assert_eq!(len2, again.len(), "re-serialised head not read whole");
                same_head(req, &req2);
            }
            other => panic!(
                "re-serialised head {:?} does not parse back: {:?}",
                String::from_utf8_lossy(&again),
                other.map(|o| o.map(|(_, l)| l))
            ),
        }
    }

    // Fed in pieces, as a socket delivers it: the first prefix that decides decides the same.
    let want = decision(&whole);
    let mut end = 0;
    while end < buf.len() {
        end = (end + step).min(buf.len());
        let partial = parse(&buf[..end], &limits);
        if let Some(got) = decision(&partial) {
            if let (Some(Ok(len)), Ok(_)) = (want, &partial) {
                assert!(end >= len, "a strict prefix of an accepted head was accepted");
            }
            assert_eq!(Some(got), want, "prefix of {end} bytes decided differently from the whole input");
            break;
        }
        assert!(end < buf.len() || want.is_none());
    }
});
