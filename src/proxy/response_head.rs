//! The head of a backend's answer as it goes to the client: hop-by-hop fields dropped, the framing
//! chosen for the client, and pibl's own fields (cache status, HSTS) added.

use crate::cache::is_targeted_cache_control;
use crate::http::body::Encoding;
use crate::http::request::Request;
use crate::http::response::Response;
use crate::http::Framing;

/// Appends `res`'s head for the client of `req` to `out`, framed by `encoding`, with `extra` field
/// lines (each ending in CRLF; a backend's own `X-Cache` gives way to them), targeted cache fields
/// (`CDN-Cache-Control`, ...) dropped when `strip_targeted`.
pub fn write_response_head(
    out: &mut Vec<u8>,
    req: &Request,
    res: &Response,
    encoding: Encoding,
    keep_alive: bool,
    extra: &[u8],
    strip_targeted: bool,
) {
    // One allocation for the whole head: the backend's head bounds what is kept of it, and the
    // fields pibl adds are at most a length, a framing and a connection line.
    out.reserve(res.head_len() + extra.len() + 96);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(res.status));
    out.push(b' ');
    out.extend_from_slice(res.reason());
    out.extend_from_slice(b"\r\n");
    for (name, value) in res.headers() {
        if res.connection.drops(name)
            || (!extra.is_empty() && name.eq_ignore_ascii_case("x-cache"))
            || (strip_targeted && is_targeted_cache_control(name))
        {
            continue;
        }
        put_field(out, name, value);
    }
    match res.framing {
        Framing::Length(len) => {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, len);
            out.extend_from_slice(b"\r\n");
        }
        // HEAD and 304 answers describe the body they do not carry: keep the backend's length.
        Framing::None if req.is_head() || res.status == 304 => {
            if let Some(len) = res.header("content-length") {
                put_field(out, "Content-Length", len);
            }
        }
        Framing::None => {}
        Framing::Chunked | Framing::UntilClose if encoding == Encoding::Chunked => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        Framing::Chunked | Framing::UntilClose => {}
    }
    out.extend_from_slice(extra);
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if req.version == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn put_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal (the formatting machinery costs more than the digits, once per answer).
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::push_decimal;

    #[test]
    fn decimals_are_written_whole() {
        for n in [0, 7, 10, 200, 65_536, u64::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }
}
