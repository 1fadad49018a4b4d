//! Helpers shared by the fuzz targets: a cursor that carves parameters out of the fuzzer's bytes,
//! serialisers that pibl does not offer publicly, and a stub resolver so that no target ever waits
//! on DNS.

use pibl::http::request::Request;
use pibl::http::response::Response;

/// Reads small parameters off the front of the fuzzer's input; the rest is the payload.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Header fields as owned pairs, for comparing two parses.
pub fn fields<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<(String, Vec<u8>)> {
    headers.map(|(n, v)| (n.to_string(), v.to_vec())).collect()
}

/// A request head written back as HTTP/1.1 wire bytes, the way pibl forwards fields
/// (`name: value\r\n`, names and values as parsed). An absolute-form authority that differs from
/// `Host` is written back as an absolute-form target so the re-parse sees the same host.
pub fn serialise_request(req: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(req.method().as_bytes());
    out.push(b' ');
    match req.host() {
        Some(host) if req.header("host") != Some(host.as_bytes()) => {
            out.extend_from_slice(b"http://");
            out.extend_from_slice(host.as_bytes());
            out.extend_from_slice(req.target().as_bytes());
        }
        _ => out.extend_from_slice(req.target().as_bytes()),
    }
    out.extend_from_slice(format!(" HTTP/1.{}\r\n", req.version).as_bytes());
    for (name, value) in req.headers() {
        push_field(&mut out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A response head written back as wire bytes (status line as received, fields as parsed).
pub fn serialise_response(res: &Response) -> Vec<u8> {
    let mut out = format!("HTTP/1.{} {:03} ", res.version, res.status).into_bytes();
    out.extend_from_slice(res.reason());
    out.extend_from_slice(b"\r\n");
    for (name, value) in res.headers() {
        push_field(&mut out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Defines `getaddrinfo` in the target binary, where it takes precedence over the C library's:
/// every name lookup fails at once with `EAI_NONAME`. pibl resolves backend host names while loading
/// a configuration; a fuzzer must not wait on (or depend on) the network. IP literals never reach
/// the resolver, so they load as usual.
#[macro_export]
macro_rules! no_dns {
    () => {
        #[no_mangle]
        pub extern "C" fn getaddrinfo(
            _node: *const ::std::ffi::c_char,
            _service: *const ::std::ffi::c_char,
            _hints: *const ::std::ffi::c_void,
            _res: *mut *mut ::std::ffi::c_void,
        ) -> ::std::ffi::c_int {
            -2 // EAI_NONAME
        }
    };
}
