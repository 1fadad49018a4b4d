//! Client request heads: parsing with `httparse` under size limits, and the checks that keep a
//! request from being read two ways (RFC 9112 sections 3, 6 and 11.2: request smuggling).

use std::fmt;
use std::mem::MaybeUninit;
use std::ops::Range;

use super::headers::{span, HeaderList};
use super::{parse_content_length, tokens, ConnectionOptions, Framing};

/// The highest `max_headers` the config accepts; sizes the parser's stack array.
pub const HEADER_CAPACITY: usize = 1000;

/// Limits applied while reading a request head.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
}

/// Why a request is refused before it is forwarded; each maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The head is not valid HTTP/1.x (400).
    Malformed(String),
    /// The framing could be read two ways or is not one we accept (400).
    Framing(&'static str),
    /// The head is larger than `max_header_bytes` (431).
    HeadTooLarge,
    /// More than `max_headers` fields (431).
    TooManyHeaders,
    /// The declared body is larger than `max_body_bytes` (413).
    BodyTooLarge,
    /// An `Expect` other than `100-continue` (417).
    Expectation,
    /// A method pibl does not proxy, such as CONNECT (501).
    NotImplemented(String),
    /// Not HTTP/1.0 or HTTP/1.1 (505).
    Version,
}

impl RequestError {
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Malformed(_) | RequestError::Framing(_) => 400,
            RequestError::HeadTooLarge | RequestError::TooManyHeaders => 431,
            RequestError::BodyTooLarge => 413,
            RequestError::Expectation => 417,
            RequestError::NotImplemented(_) => 501,
            RequestError::Version => 505,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Malformed(what) => write!(f, "malformed request: {what}"),
            RequestError::Framing(what) => write!(f, "ambiguous message framing: {what}"),
            RequestError::HeadTooLarge => f.write_str("request head is larger than the limit"),
            RequestError::TooManyHeaders => f.write_str("request has more header fields than the limit"),
            RequestError::BodyTooLarge => f.write_str("request body is larger than the limit"),
            RequestError::Expectation => f.write_str("only \"Expect: 100-continue\" is supported"),
            RequestError::NotImplemented(method) => write!(f, "method {method} is not supported"),
            RequestError::Version => f.write_str("only HTTP/1.0 and HTTP/1.1 are supported"),
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct Request {
    fields: HeaderList,
    /// Where the method sits in the head.
    method: Range<usize>,
    /// The origin-form target (`/path?query`).
    target: String,
    /// `Host`, or the authority of an absolute-form target.
    host: Option<String>,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub connection: ConnectionOptions,
}

impl Request {
    pub fn method(&self) -> &str {
        std::str::from_utf8(self.fields.slice(&self.method)).unwrap_or("")
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    pub fn is_head(&self) -> bool {
        self.method() == "HEAD"
    }

    /// Every header field in order, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        self.fields.iter()
    }

    /// The value of the first field called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields.get(name)
    }
}

/// Parses the request head at the start of `buf`. `Ok(None)` means more bytes are needed; on success
/// returns the request and the length of its head.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, RequestError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_CAPACITY];
    let slots = &mut slots[..limits.max_headers.clamp(1, HEADER_CAPACITY)];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= limits.max_head_bytes { Err(RequestError::HeadTooLarge) } else { Ok(None) };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(RequestError::Version),
        Err(e) => return Err(RequestError::Malformed(e.to_string())),
    };
    if head_len > limits.max_head_bytes {
        return Err(RequestError::HeadTooLarge);
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(RequestError::Malformed("incomplete request line".into()));
    };
    let fields = HeaderList::parsed(buf, head_len, req.headers);

    if method == "CONNECT" {
        return Err(RequestError::NotImplemented(method.to_string()));
    }
    let (target, target_host) = origin_form(method, path)?;

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut hosts = 0;
    let mut host_header = None;
    let mut expect_continue = false;
    let mut connection = ConnectionOptions::default();
    for h in req.headers.iter() {
        let name = h.name;
        if super::is_framing_lookalike(name) {
            return Err(RequestError::Framing("a header name that looks like Content-Length or Transfer-Encoding"));
        }
        if name.eq_ignore_ascii_case("content-length") {
            let len = parse_content_length(h.value).ok_or(RequestError::Framing("invalid Content-Length"))?;
            if content_length.is_some_and(|prev| prev != len) {
                return Err(RequestError::Framing("conflicting Content-Length fields"));
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            for coding in tokens(h.value) {
                // Only a single, final `chunked` is accepted: anything else cannot be delimited
                // the same way by every server behind us.
                if chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                    return Err(RequestError::Framing("unsupported Transfer-Encoding (only \"chunked\" is accepted)"));
                }
                chunked = true;
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host_header = Some(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            connection.add(h.value);
        } else if name.eq_ignore_ascii_case("expect") {
            if super::trim(h.value).eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(RequestError::Expectation);
            }
        }
    }

    if transfer_encoding && !chunked {
        return Err(RequestError::Framing("empty Transfer-Encoding"));
    }
    if transfer_encoding && content_length.is_some() {
        return Err(RequestError::Framing("both Content-Length and Transfer-Encoding"));
    }
    if transfer_encoding && version == 0 {
        return Err(RequestError::Framing("Transfer-Encoding in an HTTP/1.0 request"));
    }
    if hosts > 1 {
        return Err(RequestError::Malformed("more than one Host field".into()));
    }
    if version == 1 && hosts == 0 {
        return Err(RequestError::Malformed("HTTP/1.1 request without Host".into()));
    }
    // RFC 9112 section 3.2: a Host that is not `host[:port]` is a 400, even when an absolute-form
    // target's authority is the one used: a backend may read either. The value is not echoed back.
    if let Some(value) = host_header {
        super::host::check(super::trim(value))
            .map_err(|why| RequestError::Malformed(format!("invalid Host: {why}")))?;
    }
    let framing = match content_length {
        _ if chunked => Framing::Chunked,
        Some(0) | None => Framing::None,
        Some(len) if len > limits.max_body_bytes => return Err(RequestError::BodyTooLarge),
        Some(len) => Framing::Length(len),
    };
    // Checked above: ASCII only.
    let host = target_host.or_else(|| host_header.map(|v| String::from_utf8_lossy(super::trim(v)).into_owned()));
    let keep_alive = if version == 1 { !connection.close } else { connection.keep_alive && !connection.close };

    Ok(Some((
        Request {
            method: span(buf, method.as_bytes()),
            fields,
            target,
            host,
            version,
            framing,
            keep_alive,
            expect_continue: expect_continue && framing.has_body(),
            connection,
        },
        head_len,
    )))
}

/// Turns the request target into origin form, returning the authority of an absolute-form target.
fn origin_form(method: &str, target: &str) -> Result<(String, Option<String>), RequestError> {
    if target.starts_with('/') {
        return Ok((target.to_string(), None));
    }
    if target == "*" && method == "OPTIONS" {
        return Ok((target.to_string(), None));
    }
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return Err(RequestError::Malformed(format!("request target {target:?} is not a path or an absolute URI")));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(RequestError::Malformed("absolute URI without a usable host".into()));
    }
    super::host::check(authority.as_bytes())
        .map_err(|why| RequestError::Malformed(format!("invalid host in the request target: {why}")))?;
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok((path, Some(authority.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_head_bytes: 1024, max_headers: 10, max_body_bytes: 100 };

    fn parse_str(s: &str) -> Result<Option<(Request, usize)>, RequestError> {
        parse(s.as_bytes(), &LIMITS)
    }

    #[test]
    fn simple_get() {
        let (req, len) =
            parse_str("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Hop\r\n\r\nrest").unwrap().unwrap();
        assert_eq!(len, 63);
        assert_eq!((req.method(), req.target(), req.host()), ("GET", "/a?b=1", Some("x")));
        assert!(req.keep_alive);
        assert!(req.connection.drops("x-hop"));
        assert_eq!(req.framing, Framing::None);
        assert_eq!(req.header("HOST"), Some(&b"x"[..]));
    }

    #[test]
    fn partial_heads_need_more_bytes_byte_by_byte() {
        let full = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n";
        for end in 0..full.len() {
            assert!(parse_str(&full[..end]).unwrap().is_none(), "prefix {end}");
        }
        let (req, _) = parse_str(full).unwrap().unwrap();
        assert_eq!(req.framing, Framing::Length(5));
    }

    #[test]
    fn http10_keep_alive_rules() {
        let (req, _) = parse_str("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!req.keep_alive);
        let (req, _) = parse_str("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().unwrap();
        assert!(req.keep_alive);
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        let (req, _) = parse_str("GET http://example.com:8080?q HTTP/1.1\r\nHost: other\r\n\r\n").unwrap().unwrap();
        assert_eq!((req.target(), req.host()), ("/?q", Some("example.com:8080")));
    }

    #[test]
    fn refusals_map_to_status_codes() {
        let cases: &[(&str, u16)] = &[
            ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1,1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a/b@c\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: h:99999\r\n\r\n", 400),
            ("GET / HTTP/1.0\r\nHost: h\\x\r\n\r\n", 400),
            ("GET http://a\\b/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET http://a/ HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
            ("GET nopath HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent_Length: 5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer---Encoding: chunked\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n", 413),
            ("POST / HTTP/1.1\r\nHost: x\r\nExpect: tea\r\n\r\n", 417),
            ("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 501),
        ];
        for (raw, status) in cases {
            let err = parse_str(raw).expect_err(raw);
            assert_eq!(err.status(), *status, "{raw:?}: {err}");
        }
    }

    #[test]
    fn valid_hosts_are_kept_trimmed() {
        for (raw, host) in [
            ("GET / HTTP/1.1\r\nHost: example.com:8080 \r\n\r\n", "example.com:8080"),
            ("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", "[::1]:80"),
            ("GET / HTTP/1.1\r\nHost: h:\r\n\r\n", "h:"),
            ("GET / HTTP/1.1\r\nHost:\r\n\r\n", ""),
        ] {
            let (req, _) = parse_str(raw).unwrap().unwrap();
            assert_eq!(req.host(), Some(host), "{raw:?}");
        }
    }

    #[test]
    fn head_and_header_count_limits() {
        let many: String = (0..11).map(|i| format!("X-{i}: v\r\n")).collect();
        let err = parse_str(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")).unwrap_err();
        assert_eq!(err.status(), 431);
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(2000));
        assert_eq!(parse_str(&long).unwrap_err(), RequestError::HeadTooLarge);
    }

    #[test]
    fn expect_continue_only_with_a_body() {
        let (req, _) = parse_str("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(req.expect_continue);
        let (req, _) = parse_str("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!req.expect_continue);
    }
}
