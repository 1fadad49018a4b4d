//! Backend response heads (`pibl::http::response::parse` and `read_head`).
//!
//! Properties:
//! - limits hold: an accepted head is at most `MAX_RESPONSE_HEAD` bytes and 256 fields;
//! - framing follows RFC 9112 section 6.3: no body for HEAD, 1xx, 204 and 304; otherwise the last
//!   transfer coding decides (chunked, or read until close) and `Content-Length` only counts without
//!   one; every `Content-Length` agrees; a connection framed until close is never reused;
//! - a parsed head re-serialised parses to the same head (status, version, reason, fields, framing,
//!   reuse);
//! - the decision does not depend on how the bytes arrive (pieces of 1 to 16 bytes);
//! - `read_head` over a socket delivering `step` bytes at a time returns the first final head the
//!   parser finds (interim 1xx skipped, 101 final), consumes exactly its bytes, and reports a close
//!   or a refusal exactly when the parser does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pibl::http::buffer::ReadBuf;
use pibl::http::response::{parse, read_head, ReadHeadError, Response, ResponseError, MAX_RESPONSE_HEAD};
use pibl::http::{parse_content_length, tokens, Framing};
use pibl_fuzz::{fields, serialise_response, Cursor};

type Parsed = Result<Option<(Response, usize)>, ResponseError>;

fn decision(r: &Parsed) -> Option<Result<usize, ResponseError>> {
    match r {
        Ok(None) => None,
        Ok(Some((_, len))) => Some(Ok(*len)),
        Err(e) => Some(Err(e.clone())),
    }
}

fn check_accepted(res: &Response, len: usize, buf: &[u8], head_request: bool) {
    assert!(len <= buf.len() && len <= MAX_RESPONSE_HEAD);
    assert!(res.headers().count() <= 256);
    assert!((100..=999).contains(&res.status), "status {}", res.status);
    assert!(res.version <= 1);

    let cls: Vec<&[u8]> =
        res.headers().filter(|(n, _)| n.eq_ignore_ascii_case("content-length")).map(|h| h.1).collect();
    let last_coding =
        res.headers().filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding")).flat_map(|(_, v)| tokens(v)).last();
    let length = cls.first().map(|v| parse_content_length(v).expect("accepted an invalid Content-Length"));
    for v in &cls {
        assert_eq!(parse_content_length(v), length, "accepted disagreeing Content-Length fields");
    }
    let no_body = head_request || res.is_informational() || res.status == 204 || res.status == 304;
    let expected = match (no_body, last_coding, length) {
        (true, _, _) => Framing::None,
        (false, Some(c), _) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
        (false, Some(_), _) => Framing::UntilClose,
        (false, None, Some(n)) => Framing::Length(n),
        (false, None, None) => Framing::UntilClose,
    };
    assert_eq!(res.framing, expected);
    if res.reusable {
        assert_ne!(res.framing, Framing::UntilClose, "a connection framed until close is reused");
        assert!(!res.connection.close);
    }
}

fn same_head(a: &Response, b: &Response) {
    assert_eq!(a.status, b.status);
    assert_eq!(a.version, b.version);
    assert_eq!(a.reason(), b.reason());
    assert_eq!(fields(a.headers()), fields(b.headers()));
    assert_eq!(a.framing, b.framing);
    assert_eq!(a.reusable, b.reusable);
}

fuzz_target!(|data: &[u8]| {
    let mut cur = Cursor::new(data);
    let flags = cur.byte();
    let head_request = flags & 1 == 1;
    let step = usize::from(flags >> 4) + 1;
    let buf = cur.rest();

    let whole = parse(buf, head_request);
    if let Ok(Some((res, len))) = &whole {
        assert!((100..=599).contains(&res.status), "status {} accepted", res.status);
        check_accepted(res, *len, buf, head_request);
        let again = serialise_response(res);
        match parse(&again, head_request) {
            Ok(Some((res2, len2))) => {
                assert_eq!(len2, again.len(), "re-serialised head not read whole");
                same_head(res, &res2);
            }
            other => panic!(
                "re-serialised head {:?} does not parse back: {:?}",
                String::from_utf8_lossy(&again),
                other.map(|o| o.map(|(_, l)| l))
            ),
        }
    }

    // Fed in pieces: the first prefix that decides decides the same as the whole input.
    let want = decision(&whole);
    let mut end = 0;
    while end < buf.len() {
        end = (end + step).min(buf.len());
        if let Some(got) = decision(&parse(&buf[..end], head_request)) {
            assert_eq!(Some(got), want, "prefix of {end} bytes decided differently from the whole input");
            break;
        }
    }

    // read_head: what the parser would find after skipping interim answers.
    let mut offset = 0;
    let expected = loop {
        match parse(&buf[offset..], head_request) {
            Ok(Some((res, len))) if res.is_informational() && res.status != 101 => offset += len,
            Ok(Some((res, len))) => break Ok((res, offset + len)),
            Ok(None) => break Err(None),
            Err(e) => break Err(Some(e)),
        }
    };
    let mut rbuf = ReadBuf::new();
    let mut sock: &[u8] = buf;
    let got = read_head(&mut rbuf, &mut sock, step, head_request);
    match (got, expected) {
        (Ok(res), Ok((want, end))) => {
            same_head(&res, &want);
            let mut rest = rbuf.filled().to_vec();
            rest.extend_from_slice(sock);
            assert_eq!(rest, &buf[end..], "read_head consumed the wrong bytes");
        }
        (Err(ReadHeadError::Invalid(e)), Err(Some(want))) => assert_eq!(e, want),
        (Err(ReadHeadError::Closed { before_any_byte }), Err(None)) => {
            assert_eq!(before_any_byte, offset == buf.len(), "before_any_byte wrong at offset {offset}");
        }
        (got, want) => {
            panic!("read_head gave {:?}, the parser {:?}", got.map(|r| r.status), want.map(|(r, l)| (r.status, l)))
        }
    }
});
