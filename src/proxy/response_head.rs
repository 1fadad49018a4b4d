//! The head of a backend's answer as it goes to the client: hop-by-hop fields dropped, the framing
//! chosen for the client, and pibl's own fields (cache status, HSTS) added.

use std::io::{self, Write};

use crate::cache::is_targeted_cache_control;
use crate::http::body::Encoding;
use crate::http::buffer::WriteBatch;
use crate::http::request::Request;
use crate::http::response::Response;
use crate::http::Framing;

/// Writes `res`'s head for the client of `req`, framed by `encoding`, with `extra` field lines
/// (each ending in CRLF; a backend's own `X-Cache` gives way to them), targeted cache fields
/// (`CDN-Cache-Control`, ...) dropped when `strip_targeted`.
pub fn write_response_head<W: Write>(
    dst: &mut WriteBatch<'_, W>,
    req: &Request,
    res: &Response,
    encoding: Encoding,
    keep_alive: bool,
    extra: &[u8],
    strip_targeted: bool,
) -> io::Result<()> {
    let head = dst;
    write!(head, "HTTP/1.1 {} ", res.status)?;
    head.put(res.reason())?;
    head.put(b"\r\n")?;
    for (name, value) in res.headers() {
        if res.connection.drops(name)
            || (!extra.is_empty() && name.eq_ignore_ascii_case("x-cache"))
            || (strip_targeted && is_targeted_cache_control(name))
        {
            continue;
        }
        put_field(head, name, value)?;
    }
    match res.framing {
        Framing::Length(len) => {
            write!(head, "Content-Length: {len}\r\n")?;
        }
        // HEAD and 304 answers describe the body they do not carry: keep the backend's length.
        Framing::None if req.is_head() || res.status == 304 => {
            if let Some(len) = res.header("content-length") {
                put_field(head, "Content-Length", len)?;
            }
        }
        Framing::None => {}
        Framing::Chunked | Framing::UntilClose if encoding == Encoding::Chunked => {
            head.put(b"Transfer-Encoding: chunked\r\n")?;
        }
        Framing::Chunked | Framing::UntilClose => {}
    }
    head.put(extra)?;
    if !keep_alive {
        head.put(b"Connection: close\r\n")?;
    } else if req.version == 0 {
        head.put(b"Connection: keep-alive\r\n")?;
    }
    head.put(b"\r\n")
}

fn put_field<W: Write>(dst: &mut WriteBatch<'_, W>, name: &str, value: &[u8]) -> io::Result<()> {
    dst.put(name.as_bytes())?;
    dst.put(b": ")?;
    dst.put(value)?;
    dst.put(b"\r\n")
}
