//! Response compression, kept apart from I/O: which content coding a
//! client's `Accept-Encoding` prefers (with q-values), whether a response may be compressed at all
//! (type, size, `no-transform`, already encoded, ranges), and the gzip (`flate2`) and brotli
//! (`brotli`) encoders themselves.

use std::io::{self, Write};

use crate::http::{tokens, trim};

/// A content coding pibl produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Brotli,
    Gzip,
}

impl Coding {
    /// The codings, in pibl's order of preference when a client likes them equally.
    pub const ALL: [Coding; 2] = [Coding::Brotli, Coding::Gzip];

    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// Index into per-coding tables.
    pub fn index(self) -> usize {
        match self {
            Coding::Brotli => 0,
            Coding::Gzip => 1,
        }
    }
}

/// The coding to answer with for a request's `Accept-Encoding` values (RFC 9110 section 12.5.3):
/// the acceptable one with the highest q-value, brotli first on a tie; `*` stands for codings not
/// named; `q=0` refuses. `None`: identity (no field, or nothing pibl produces is acceptable).
pub fn choose<'a>(accept_encoding: impl Iterator<Item = &'a [u8]>) -> Option<Coding> {
    let mut named: [Option<u16>; 2] = [None, None];
    let mut star: Option<u16> = None;
    for value in accept_encoding {
        for member in tokens(value) {
            let mut parts = member.split(|&b| b == b';');
            let coding = trim(parts.next().unwrap_or_default());
            let q = parts.find_map(parse_q).unwrap_or(1000);
            if coding == b"*" {
                star = Some(q);
            } else if let Some(c) = Coding::ALL.iter().find(|c| coding.eq_ignore_ascii_case(c.token().as_bytes())) {
                named[c.index()] = Some(q);
            } else if coding.eq_ignore_ascii_case(b"x-gzip") {
                named[Coding::Gzip.index()].get_or_insert(q);
            }
        }
    }
    let mut best: Option<(Coding, u16)> = None;
    for coding in Coding::ALL {
        let q = named[coding.index()].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((coding, q));
        }
    }
    best.map(|(coding, _)| coding)
}

/// A `q=` parameter as thousandths; a malformed one counts as `q=0`, the safe reading.
fn parse_q(param: &[u8]) -> Option<u16> {
    let param = trim(param);
    let value = param.strip_prefix(b"q=").or_else(|| param.strip_prefix(b"Q="))?;
    let text = std::str::from_utf8(value).ok()?;
    let q: f64 = text.parse().unwrap_or(0.0);
    Some(if (0.0..=1.0).contains(&q) { (q * 1000.0).round() as u16 } else { 0 })
}

/// Media types worth compressing: text, JSON, JavaScript, XML, SVG and their kin. Images, video,
/// archives and fonts are already compressed.
pub fn is_compressible_type(content_type: &[u8]) -> bool {
    let essence = trim(content_type.split(|&b| b == b';').next().unwrap_or_default()).to_ascii_lowercase();
    const TYPES: [&[u8]; 9] = [
        b"application/json",
        b"application/javascript",
        b"application/ecmascript",
        b"application/xml",
        b"application/xhtml+xml",
        b"application/rss+xml",
        b"application/atom+xml",
        b"application/wasm",
        b"image/svg+xml",
    ];
    essence.starts_with(b"text/")
        || TYPES.contains(&essence.as_slice())
        || essence.ends_with(b"+json")
        || essence.ends_with(b"+xml")
}

/// What decides whether a response may be compressed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Candidate<'a> {
    pub status: u16,
    pub content_type: Option<&'a [u8]>,
    pub content_encoding: Option<&'a [u8]>,
    pub has_content_range: bool,
    /// `Cache-Control: no-transform` (RFC 9111 section 5.2.2.6).
    pub no_transform: bool,
    pub body_len: u64,
}

/// Whether pibl may compress this response: a 200 of a compressible type, at least `min_bytes`
/// long, not encoded already, not a range, and not marked `no-transform`.
pub fn may_compress(c: &Candidate<'_>, min_bytes: u64) -> bool {
    let identity = c.content_encoding.is_none_or(|e| trim(e).is_empty() || trim(e).eq_ignore_ascii_case(b"identity"));
    c.status == 200
        && identity
        && !c.has_content_range
        && !c.no_transform
        && c.body_len >= min_bytes
        && c.content_type.is_some_and(is_compressible_type)
}

/// The body encoded with `coding`.
pub fn encode(coding: Coding, body: &[u8]) -> io::Result<Vec<u8>> {
    match coding {
        Coding::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            encoder.write_all(body)?;
            encoder.finish()
        }
        Coding::Brotli => {
            // Quality 5 and a 4 MiB window: most of brotli's gain at a fraction of its top cost.
            let mut out = Vec::new();
            {
                let mut encoder = brotli::CompressorWriter::new(&mut out, 16 * 1024, 5, 22);
                encoder.write_all(body)?;
                encoder.flush()?;
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pick(v: &str) -> Option<Coding> {
        choose(std::iter::once(v.as_bytes()))
    }

    #[test]
    fn the_client_chooses_by_q_value() {
        assert_eq!(pick("gzip, deflate, br"), Some(Coding::Brotli), "a tie goes to brotli");
        assert_eq!(pick("gzip;q=1.0, br;q=0.5"), Some(Coding::Gzip));
        assert_eq!(pick("br;q=0, gzip"), Some(Coding::Gzip));
        assert_eq!(pick("br;q=0, gzip;q=0"), None);
        assert_eq!(pick("*"), Some(Coding::Brotli));
        assert_eq!(pick("*;q=0, gzip;q=0.1"), Some(Coding::Gzip));
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("deflate"), None);
        assert_eq!(pick("gzip;q=abc, br;q=2"), None, "malformed q-values refuse");
        assert_eq!(choose(std::iter::empty()), None, "no field: identity");
    }

    #[test]
    fn only_fitting_responses_are_compressed() {
        let ok = Candidate {
            status: 200,
            content_type: Some(b"text/html; charset=utf-8"),
            body_len: 2000,
            ..Default::default()
        };
        assert!(may_compress(&ok, 1024));
        assert!(!may_compress(&Candidate { body_len: 100, ..ok }, 1024), "small");
        assert!(!may_compress(&Candidate { content_type: Some(b"image/png"), ..ok }, 1024));
        assert!(!may_compress(&Candidate { content_type: None, ..ok }, 1024));
        assert!(!may_compress(&Candidate { content_encoding: Some(b"gzip"), ..ok }, 1024), "already encoded");
        assert!(!may_compress(&Candidate { no_transform: true, ..ok }, 1024));
        assert!(!may_compress(&Candidate { has_content_range: true, ..ok }, 1024));
        assert!(!may_compress(&Candidate { status: 206, ..ok }, 1024));
        for t in ["application/json", "application/problem+json", "image/svg+xml", "text/css", "application/javascript"]
        {
            assert!(is_compressible_type(t.as_bytes()), "{t}");
        }
    }

    #[test]
    fn encodings_round_trip() {
        let body = "hello, compressible world. ".repeat(100).into_bytes();
        let gz = encode(Coding::Gzip, &body).unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(&mut back).unwrap();
        assert_eq!(back, body);
        assert!(gz.len() < body.len() / 4);
        let br = encode(Coding::Brotli, &body).unwrap();
        let mut back = Vec::new();
        brotli::Decompressor::new(br.as_slice(), 4096).read_to_end(&mut back).unwrap();
        assert_eq!(back, body);
        assert!(br.len() < body.len() / 4);
    }
}
