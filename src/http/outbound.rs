//! Request heads pibl writes to upstream servers — forwarded client requests, background cache
//! refreshes and `auth = request` sub-requests — through one writer, so all three speak HTTP/1.1,
//! append to list fields (`Via`, `X-Forwarded-For`) and write body framing the same way. Which
//! fields go is each caller's policy; how they are written is this module's.

use std::fmt;
use std::io::Write;

use crate::http::Framing;

/// The pseudonym pibl records in `Via` (RFC 9110 section 7.6.3).
pub const VIA_PSEUDONYM: &str = "pibl";

/// One request head being written into a reused buffer; [`RequestHead::finish`] ends it.
pub struct RequestHead<'b> {
    out: &'b mut Vec<u8>,
}

impl<'b> RequestHead<'b> {
    /// Clears `out` and writes the request line. pibl speaks HTTP/1.1 to every upstream server,
    /// whatever version the client used.
    pub fn start(out: &'b mut Vec<u8>, method: &str, target: &str) -> RequestHead<'b> {
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        RequestHead { out }
    }

    pub fn field(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// A list field each hop appends to: the values earlier hops wrote, in order, then `own`.
    pub fn list_field<'v>(
        &mut self,
        name: &str,
        earlier: impl Iterator<Item = &'v [u8]>,
        own: impl fmt::Display,
    ) -> &mut Self {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        for value in earlier {
            self.out.extend_from_slice(value);
            self.out.extend_from_slice(b", ");
        }
        let _ = write!(self.out, "{own}\r\n");
        self
    }

    /// `Via`: the entries of earlier hops, then pibl's own for a message received as
    /// HTTP/1.`received_minor`.
    pub fn via<'v>(&mut self, earlier: impl Iterator<Item = &'v [u8]>, received_minor: u8) -> &mut Self {
        self.list_field("Via", earlier, format_args!("1.{received_minor} {VIA_PSEUDONYM}"))
    }

    /// The validators of a stored response, which make the request conditional (RFC 9110
    /// section 13.1): `If-None-Match` from its `ETag`, `If-Modified-Since` from its `Last-Modified`.
    pub fn validators(&mut self, etag: Option<&[u8]>, last_modified: Option<&[u8]>) -> &mut Self {
        if let Some(etag) = etag {
            self.field("If-None-Match", etag);
        }
        if let Some(modified) = last_modified {
            self.field("If-Modified-Since", modified);
        }
        self
    }

    /// The framing fields of a body framed as `framing`; pibl writes them itself and never copies a
    /// client's. A body-less POST, PUT or PATCH says `Content-Length: 0`, as servers expect.
    pub fn framing(&mut self, framing: Framing, method: &str) -> &mut Self {
        match framing {
            Framing::Length(len) => {
                let _ = write!(self.out, "Content-Length: {len}\r\n");
            }
            Framing::Chunked => self.out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
            Framing::None if matches!(method, "POST" | "PUT" | "PATCH") => {
                self.out.extend_from_slice(b"Content-Length: 0\r\n")
            }
            Framing::None | Framing::UntilClose => {}
        }
        self
    }

    /// Ends the head with its empty line.
    pub fn finish(self) {
        self.out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_fields_lists_validators_and_framing() {
        let mut out = b"left over".to_vec();
        let mut head = RequestHead::start(&mut out, "POST", "/a?b");
        head.field("Host", b"example.test")
            .list_field("X-Forwarded-For", [b"192.0.2.1" as &[u8]].into_iter(), "198.51.100.2")
            .validators(Some(b"\"v1\""), None)
            .via(std::iter::empty(), 0)
            .framing(Framing::None, "POST");
        head.finish();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?b HTTP/1.1\r\nHost: example.test\r\nX-Forwarded-For: 192.0.2.1, 198.51.100.2\r\n\
             If-None-Match: \"v1\"\r\nVia: 1.0 pibl\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn framing_follows_the_body() {
        let written = |framing, method| {
            let mut out = Vec::new();
            RequestHead::start(&mut out, method, "/").framing(framing, method);
            String::from_utf8(out).unwrap().split_once("\r\n").map(|(_, rest)| rest.to_string()).unwrap()
        };
        assert_eq!(written(Framing::Length(12), "PUT"), "Content-Length: 12\r\n");
        assert_eq!(written(Framing::Chunked, "POST"), "Transfer-Encoding: chunked\r\n");
        assert_eq!(written(Framing::None, "GET"), "");
        assert_eq!(written(Framing::None, "PATCH"), "Content-Length: 0\r\n");
    }
}
