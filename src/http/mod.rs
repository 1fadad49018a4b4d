//! HTTP/1.x message handling shared by both sides of the proxy: request heads from clients
//! (`request`), response heads from backends (`response`), request heads pibl sends upstream
//! (`outbound`), body framing and streaming (`body`, and `framing` for the event loops), the syntax of
//! a request's authority (`host`), and what both kinds of head share: their field list (`headers`),
//! hop-by-hop fields, token lists.

pub mod body;
pub mod buffer;
pub mod framing;
pub mod headers;
pub mod host;
pub mod outbound;
pub mod request;
pub mod response;

/// How the length of a message body is determined (RFC 9112 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the peer closes (responses only).
    UntilClose,
}

impl Framing {
    pub fn has_body(self) -> bool {
        !matches!(self, Framing::None | Framing::Length(0))
    }
}

/// Header fields that describe one hop and are never forwarded (RFC 9110 section 7.6.1), plus the
/// framing fields, which pibl always writes itself for the next hop.
pub fn is_hop_by_hop(name: &str) -> bool {
    const FIELDS: [&str; 8] = [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "proxy-connection",
    ];
    FIELDS.iter().any(|f| f.eq_ignore_ascii_case(name)) || (name.len() > 6 && name[..6].eq_ignore_ascii_case("proxy-"))
}

/// True for a field name that is not `Content-Length` or `Transfer-Encoding` but that some servers
/// read as one: the same letters with other separators or none (`Content_Length`,
/// `Transfer---Encoding`, `ContentLength`). WSGI/CGI servers map `-` and `_` alike to
/// `CONTENT_LENGTH`, so such a field could frame the body for the backend differently than for pibl;
/// requests carrying one are refused.
pub fn is_framing_lookalike(name: &str) -> bool {
    const FRAMING: [(&str, &str); 2] = [("content-length", "contentlength"), ("transfer-encoding", "transferencoding")];
    let squeezed: Vec<u8> = name.bytes().filter(u8::is_ascii_alphanumeric).map(|b| b.to_ascii_lowercase()).collect();
    FRAMING.iter().any(|(field, letters)| squeezed == letters.as_bytes() && !name.eq_ignore_ascii_case(field))
}

/// Whether a client's header field may go upstream by its name: names with `_` are dropped unless
/// `underscores_in_headers` allows them (nginx's default), because CGI-style servers cannot tell
/// `X_User` from `X-User` and would let a client forge a field pibl or an auth server set.
pub fn forwardable_name(name: &str, allow_underscores: bool) -> bool {
    allow_underscores || !name.contains('_')
}

/// A request whose body comes chunked but whose method gives a body no meaning (`GET`, `HEAD`):
/// many servers ignore `Transfer-Encoding` on them and would read the chunks as the next request.
/// Such a body is read whole (up to `max_body_bytes`) and sent with `Content-Length`, as nginx does.
pub fn must_reframe_body(method: &str, framing: Framing) -> bool {
    framing == Framing::Chunked && matches!(method, "GET" | "HEAD")
}

/// Iterates the comma-separated, trimmed, non-empty elements of a header value.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty())
}

/// Trims optional whitespace (SP / HTAB) on both sides.
pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The `Connection` options of one message: whether it asks to close and which other fields it
/// declares hop-by-hop.
#[derive(Debug, Default, Clone)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    /// Field names listed in `Connection` besides `close`/`keep-alive`, lower-cased.
    pub named: Vec<String>,
}

impl ConnectionOptions {
    pub fn add(&mut self, value: &[u8]) {
        for token in tokens(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if let Ok(name) = std::str::from_utf8(token) {
                self.named.push(name.to_ascii_lowercase());
            }
        }
    }

    /// True when `name` is hop-by-hop for this message, by the fixed list or by `Connection`.
    pub fn drops(&self, name: &str) -> bool {
        is_hop_by_hop(name) || self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Parses a `Content-Length` value: digits only, no sign, no list (RFC 9110 section 8.6).
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    let value = trim(value);
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The standard reason phrase of the status codes pibl generates itself.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        423 => "Locked",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields() {
        for name in ["Connection", "keep-alive", "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Proxy-Authorization"]
        {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in ["Host", "Content-Type", "Proxy", "Authorization", "Trailers-X"] {
            assert!(!is_hop_by_hop(name), "{name}");
        }
    }

    #[test]
    fn connection_options_collect_named_fields() {
        let mut opts = ConnectionOptions::default();
        opts.add(b" close , X-Secret,,keep-alive");
        assert!(opts.close && opts.keep_alive);
        assert!(opts.drops("x-secret"));
        assert!(!opts.drops("x-public"));
    }

    #[test]
    fn framing_lookalikes_and_underscores() {
        for name in [
            "Content_Length",
            "Transfer_Encoding",
            "Transfer___Encoding",
            "Transfer---Encoding",
            "contentlength",
            "CONTENT.LENGTH",
        ] {
            assert!(is_framing_lookalike(name), "{name}");
        }
        for name in ["Content-Length", "transfer-encoding", "Content-Type", "X-Content-Length", "Content-Lengths", ""] {
            assert!(!is_framing_lookalike(name), "{name}");
        }
        assert!(!forwardable_name("X_User", false));
        assert!(forwardable_name("X_User", true));
        assert!(forwardable_name("X-User", false));
        assert!(must_reframe_body("GET", Framing::Chunked));
        assert!(!must_reframe_body("POST", Framing::Chunked));
        assert!(!must_reframe_body("GET", Framing::Length(3)));
    }

    #[test]
    fn content_length_is_strict() {
        assert_eq!(parse_content_length(b"42"), Some(42));
        assert_eq!(parse_content_length(b" 7 "), Some(7));
        for bad in [&b""[..], b"-1", b"+1", b"1,1", b"0x10", b"99999999999999999999"] {
            assert_eq!(parse_content_length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
