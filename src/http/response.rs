//! Backend response heads: parsing, how the body is framed (RFC 9112 section 6.3), and whether the
//! backend connection can be reused afterwards.

use std::fmt;
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::ops::Range;

use super::headers::HeaderList;
use super::{parse_content_length, tokens, ConnectionOptions, Framing};
use crate::http::buffer::ReadBuf;

/// Most header fields accepted from a backend.
const MAX_RESPONSE_HEADERS: usize = 256;
/// Largest response head accepted from a backend.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Why a backend's answer cannot be relayed (each is a 502 for the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    Malformed(String),
    HeadTooLarge,
    Framing(&'static str),
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::Malformed(what) => write!(f, "backend sent a malformed response: {what}"),
            ResponseError::HeadTooLarge => write!(f, "backend response head is larger than {MAX_RESPONSE_HEAD} bytes"),
            ResponseError::Framing(what) => write!(f, "backend response framing is invalid: {what}"),
        }
    }
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct Response {
    fields: HeaderList,
    /// Where the reason phrase sits in the head.
    reason: Range<usize>,
    pub status: u16,
    /// Minor version of the backend's HTTP/1.x.
    pub version: u8,
    pub framing: Framing,
    /// The backend connection may carry another request once this body is read.
    pub reusable: bool,
    pub connection: ConnectionOptions,
}

impl Response {
    pub fn reason(&self) -> &[u8] {
        self.fields.slice(&self.reason)
    }

    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        self.fields.iter()
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields.get(name)
    }

    /// The length of the head as the backend sent it.
    pub fn head_len(&self) -> usize {
        self.fields.head_len()
    }

    /// 1xx answers precede the final response.
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// Why no final response head could be read from a backend.
#[derive(Debug)]
pub enum ReadHeadError {
    /// The peer closed the connection; `before_any_byte` when it sent nothing at all (a pooled
    /// connection it had already closed).
    Closed { before_any_byte: bool },
    /// Reading failed or timed out (`WouldBlock`/`TimedOut` kinds are the socket timeout).
    Io { error: io::Error, before_any_byte: bool },
    /// What arrived is not a valid response head.
    Invalid(ResponseError),
}

impl fmt::Display for ReadHeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadHeadError::Closed { before_any_byte: true } => f.write_str("closed the connection without answering"),
            ReadHeadError::Closed { before_any_byte: false } => f.write_str("closed the connection mid-response"),
            ReadHeadError::Io { error, .. } => write!(f, "reading the response failed: {error}"),
            ReadHeadError::Invalid(e) => e.fmt(f),
        }
    }
}

/// Reads from `src` into `buf` (`step` bytes at a time) until a final response head is complete and
/// consumes it; interim 1xx answers are skipped, except 101, which is final.
pub fn read_head<R: Read>(
    buf: &mut ReadBuf,
    src: &mut R,
    step: usize,
    request_was_head: bool,
) -> Result<Response, ReadHeadError> {
    read_head_with_interim(buf, src, step, request_was_head, &mut |_| {})
}

/// As [`read_head`], handing each interim 1xx answer (`103 Early Hints`, ...) to `on_interim` as it
/// arrives, so a proxy can pass it on before the final answer exists (RFC 9110 section 15.2).
pub fn read_head_with_interim<R: Read>(
    buf: &mut ReadBuf,
    src: &mut R,
    step: usize,
    request_was_head: bool,
    on_interim: &mut dyn FnMut(&Response),
) -> Result<Response, ReadHeadError> {
    loop {
        if !buf.is_empty() {
            match parse(buf.filled(), request_was_head) {
                Ok(Some((res, len))) => {
                    buf.consume(len);
                    if res.is_informational() && res.status != 101 {
                        on_interim(&res);
                        continue;
                    }
                    return Ok(res);
                }
                Ok(None) => {}
                Err(e) => return Err(ReadHeadError::Invalid(e)),
            }
        }
        let before_any_byte = buf.is_empty();
        match buf.fill_from(src, step, MAX_RESPONSE_HEAD) {
            Ok(0) => return Err(ReadHeadError::Closed { before_any_byte }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(ReadHeadError::Io { error, before_any_byte }),
        }
    }
}

/// Where the reason phrase of the status line at the start of `buf` lies: after the second space, to
/// the line's end (empty when there is none). Found in the bytes themselves: the parser's own reason
/// is a string that may not point into `buf` (an empty or non-UTF-8 phrase), and the phrase is relayed
/// as the backend sent it (RFC 9112 section 4 allows obs-text there).
fn reason_span(buf: &[u8]) -> Range<usize> {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line_end = if line_end > 0 && buf[line_end - 1] == b'\r' { line_end - 1 } else { line_end };
    let line = &buf[..line_end];
    match line.iter().enumerate().filter(|(_, &b)| b == b' ').nth(1) {
        Some((space, _)) => space + 1..line_end,
        None => line_end..line_end,
    }
}

/// Parses the response head at the start of `buf`; `request_was_head` matters for framing.
pub fn parse(buf: &[u8], request_was_head: bool) -> Result<Option<(Response, usize)>, ResponseError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_RESPONSE_HEAD { Err(ResponseError::HeadTooLarge) } else { Ok(None) };
        }
        Err(e) => return Err(ResponseError::Malformed(e.to_string())),
    };
    let (Some(status), Some(version)) = (res.code, res.version) else {
        return Err(ResponseError::Malformed("incomplete status line".into()));
    };
    // RFC 9110 section 15: a status code is three digits, 100 to 599 in use; `002` would be relayed
    // as `2`, which no client reads.
    if !(100..=599).contains(&status) {
        return Err(ResponseError::Malformed(format!("status code {status} is not between 100 and 599")));
    }
    let fields = HeaderList::parsed(buf, head_len, res.headers);
    let mut content_length = None;
    let mut transfer_encoding: Option<bool> = None;
    let mut connection = ConnectionOptions::default();
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let len = parse_content_length(h.value).ok_or(ResponseError::Framing("invalid Content-Length"))?;
            if content_length.is_some_and(|prev| prev != len) {
                return Err(ResponseError::Framing("conflicting Content-Length fields"));
            }
            content_length = Some(len);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding decides: chunked framing, or anything else read until close.
            for coding in tokens(h.value) {
                transfer_encoding = Some(coding.eq_ignore_ascii_case(b"chunked"));
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection.add(h.value);
        }
    }
    let reason = reason_span(buf);
    let no_body = request_was_head || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if no_body {
        Framing::None
    } else {
        match (transfer_encoding, content_length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(len)) => Framing::Length(len),
            (None, None) => Framing::UntilClose,
        }
    };
    let keep_alive = if version == 1 { !connection.close } else { connection.keep_alive && !connection.close };
    let reusable = keep_alive && framing != Framing::UntilClose;
    Ok(Some((Response { fields, reason, status, version, framing, reusable, connection }, head_len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str, head: bool) -> Response {
        parse(s.as_bytes(), head).unwrap().unwrap().0
    }

    #[test]
    fn framing_rules() {
        let cases: &[(&str, bool, Framing, bool)] = &[
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false, Framing::Length(5), true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, Framing::None, true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false, Framing::Chunked, true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", false, Framing::UntilClose, false),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Framing::UntilClose, false),
            ("HTTP/1.1 204 No Content\r\n\r\n", false, Framing::None, true),
            ("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false, Framing::None, true),
            ("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, Framing::Length(1), false),
            ("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", false, Framing::Length(1), false),
        ];
        for (raw, head, framing, reusable) in cases {
            let res = parse_str(raw, *head);
            assert_eq!((res.framing, res.reusable), (*framing, *reusable), "{raw:?}");
        }
    }

    #[test]
    fn bad_responses() {
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false).is_err());
        assert!(parse(b"HTTP/1.1 2000 OK\r\n\r\n", false).is_err());
        assert!(parse(b"garbage\r\n\r\n", false).is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\n", false).unwrap().is_none());
    }
}
