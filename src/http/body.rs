//! Streams one message body from a socket to another, decoding the sender's framing and encoding the
//! receiver's, through fixed-size buffers: a body is never held whole in memory.

use std::fmt;
use std::io::{self, Read, Write};

use super::Framing;
use crate::http::buffer::{ReadBuf, WriteBatch};

/// Longest chunk-size line (with extensions) or trailer line accepted, its CRLF included; the event
/// loops' [`super::framing`] holds lines to the same bound.
pub(super) const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk; trailers are read and dropped.
pub(super) const MAX_TRAILERS: usize = 16 * 1024;

/// Why a body transfer stopped; the side at fault decides the status code.
#[derive(Debug)]
pub enum BodyError {
    /// Reading from the sender failed or timed out.
    Read(io::Error),
    /// Writing to the receiver failed or timed out.
    Write(io::Error),
    /// The sender closed before the body was complete.
    Truncated,
    /// The sender's chunked framing is invalid.
    Malformed(&'static str),
    /// The body is larger than the limit.
    TooLarge,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Read(e) => write!(f, "reading the body failed: {e}"),
            BodyError::Write(e) => write!(f, "sending the body failed: {e}"),
            BodyError::Truncated => f.write_str("the sender closed before the body was complete"),
            BodyError::Malformed(what) => write!(f, "invalid chunked body: {what}"),
            BodyError::TooLarge => f.write_str("the body is larger than the limit"),
        }
    }
}

/// How the body is written to the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Bytes as they are (the receiver knows the length, or the connection closes after).
    Identity,
    /// Re-framed as chunks.
    Chunked,
}

/// A copy of the decoded body kept on the side (for the response cache), given up once it would
/// pass `cap` bytes.
#[derive(Debug, Default)]
pub struct Tee {
    pub data: Vec<u8>,
    pub cap: usize,
    pub overflowed: bool,
}

impl Tee {
    pub fn new(cap: usize) -> Tee {
        Tee { data: Vec::new(), cap, overflowed: false }
    }

    pub fn keep(&mut self, piece: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.data.len() + piece.len() > self.cap {
            self.overflowed = true;
            self.data = Vec::new();
        } else {
            self.data.extend_from_slice(piece);
        }
    }
}

/// The sending side: its socket and the bytes already read from it.
pub struct Source<'a, R: Read> {
    pub buf: &'a mut ReadBuf,
    pub sock: &'a mut R,
    /// How much to read at a time.
    pub step: usize,
}

impl<R: Read> Source<'_, R> {
    /// Reads more into the buffer; `Ok(false)` at end of stream.
    fn fill(&mut self, max: usize) -> Result<bool, BodyError> {
        loop {
            match self.buf.fill_from(self.sock, self.step, max) {
                Ok(n) => return Ok(n > 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(BodyError::Read(e)),
            }
        }
    }

    /// Makes sure at least one byte is buffered; `Ok(false)` at end of stream.
    fn fill_some(&mut self) -> Result<bool, BodyError> {
        if !self.buf.is_empty() {
            return Ok(true);
        }
        self.fill(self.step.max(1))
    }

    /// Returns the length of the next line including its CRLF, reading as needed. A line longer than
    /// `MAX_LINE` (CRLF included) is refused however it arrives: only the first `MAX_LINE` buffered
    /// bytes are searched, so one large read that brings a longer line whole decides as a trickle
    /// of small reads does.
    fn line(&mut self) -> Result<usize, BodyError> {
        loop {
            let filled = self.buf.filled();
            let window = &filled[..filled.len().min(MAX_LINE)];
            if let Some(pos) = window.windows(2).position(|w| w == b"\r\n") {
                return Ok(pos + 2);
            }
            if self.buf.len() >= MAX_LINE {
                return Err(BodyError::Malformed("line too long"));
            }
            if !self.fill(MAX_LINE.max(self.step))? {
                return Err(BodyError::Truncated);
            }
        }
    }
}

/// Copies one body from `src` to `dst`. `limit` caps the decoded size. Returns the decoded size.
/// With `Encoding::Chunked` the terminating chunk is written too; nothing is flushed.
pub fn transfer<R: Read, W: Write>(
    src: &mut Source<'_, R>,
    framing: Framing,
    dst: &mut WriteBatch<'_, W>,
    encoding: Encoding,
    limit: u64,
) -> Result<u64, BodyError> {
    transfer_tee(src, framing, &mut Sink { dst, encoding, tee: None }, limit)
}

/// Like [`transfer`], also keeping a copy of the decoded body in `tee`.
pub fn transfer_with_copy<R: Read, W: Write>(
    src: &mut Source<'_, R>,
    framing: Framing,
    dst: &mut WriteBatch<'_, W>,
    encoding: Encoding,
    tee: &mut Tee,
) -> Result<u64, BodyError> {
    transfer_tee(src, framing, &mut Sink { dst, encoding, tee: Some(tee) }, u64::MAX)
}

/// Where decoded body bytes go.
struct Sink<'s, 'b, W: Write> {
    dst: &'s mut WriteBatch<'b, W>,
    encoding: Encoding,
    tee: Option<&'s mut Tee>,
}

fn transfer_tee<R: Read, W: Write>(
    src: &mut Source<'_, R>,
    framing: Framing,
    sink: &mut Sink<'_, '_, W>,
    limit: u64,
) -> Result<u64, BodyError> {
    let total = match framing {
        Framing::None => 0,
        Framing::Length(len) => {
            if len > limit {
                return Err(BodyError::TooLarge);
            }
            copy_exact(src, len, sink)?;
            len
        }
        Framing::Chunked => copy_chunked(src, sink, limit)?,
        Framing::UntilClose => copy_until_close(src, sink, limit)?,
    };
    if sink.encoding == Encoding::Chunked && framing != Framing::None {
        sink.dst.put(b"0\r\n\r\n").map_err(BodyError::Write)?;
    }
    Ok(total)
}

fn write_piece<W: Write>(sink: &mut Sink<'_, '_, W>, data: &[u8]) -> Result<(), BodyError> {
    if data.is_empty() {
        return Ok(());
    }
    if let Some(tee) = sink.tee.as_deref_mut() {
        tee.keep(data);
    }
    let dst = &mut *sink.dst;
    if sink.encoding == Encoding::Chunked {
        write!(dst, "{:x}\r\n", data.len()).map_err(BodyError::Write)?;
        dst.put(data).map_err(BodyError::Write)?;
        dst.put(b"\r\n").map_err(BodyError::Write)
    } else {
        dst.put(data).map_err(BodyError::Write)
    }
}

fn copy_exact<R: Read, W: Write>(
    src: &mut Source<'_, R>,
    mut remaining: u64,
    sink: &mut Sink<'_, '_, W>,
) -> Result<(), BodyError> {
    while remaining > 0 {
        if !src.fill_some()? {
            return Err(BodyError::Truncated);
        }
        let take = (src.buf.len() as u64).min(remaining) as usize;
        write_piece(sink, &src.buf.filled()[..take])?;
        src.buf.consume(take);
        remaining -= take as u64;
    }
    Ok(())
}

fn copy_chunked<R: Read, W: Write>(
    src: &mut Source<'_, R>,
    sink: &mut Sink<'_, '_, W>,
    limit: u64,
) -> Result<u64, BodyError> {
    let mut total: u64 = 0;
    loop {
        let line = src.line()?;
        // httparse lets any byte through in a chunk extension; a bare LF or CR or another control
        // byte there means the sender ends lines differently from us, so the body's end is in doubt.
        if has_control_byte(&src.buf.filled()[..line - 2]) {
            return Err(BodyError::Malformed("control byte or bare CR/LF in a chunk size line"));
        }
        let size = match httparse::parse_chunk_size(&src.buf.filled()[..line]) {
            Ok(httparse::Status::Complete((used, size))) if used == line => size,
            _ => return Err(BodyError::Malformed("bad chunk size")),
        };
        src.buf.consume(line);
        if size == 0 {
            skip_trailers(src)?;
            return Ok(total);
        }
        total = total.checked_add(size).ok_or(BodyError::TooLarge)?;
        if total > limit {
            return Err(BodyError::TooLarge);
        }
        copy_exact(src, size, sink)?;
        let crlf = src.line()?;
        if crlf != 2 {
            return Err(BodyError::Malformed("chunk data longer than its size"));
        }
        src.buf.consume(2);
    }
}

/// A byte no line of a chunked body may hold: a control byte other than HTAB, or DEL.
pub(super) fn has_control_byte(line: &[u8]) -> bool {
    line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

fn skip_trailers<R: Read>(src: &mut Source<'_, R>) -> Result<(), BodyError> {
    let mut seen = 0;
    loop {
        let line = src.line()?;
        // Trailers are dropped, but a bare CR or LF or a control byte in one means the sender frames
        // lines differently from us: where its message ends is then in doubt.
        if has_control_byte(&src.buf.filled()[..line - 2]) {
            return Err(BodyError::Malformed("control byte or bare CR/LF in a trailer"));
        }
        src.buf.consume(line);
        if line == 2 {
            return Ok(());
        }
        seen += line;
        if seen > MAX_TRAILERS {
            return Err(BodyError::Malformed("trailers too large"));
        }
    }
}

fn copy_until_close<R: Read, W: Write>(
    src: &mut Source<'_, R>,
    sink: &mut Sink<'_, '_, W>,
    limit: u64,
) -> Result<u64, BodyError> {
    let mut total: u64 = 0;
    while src.fill_some()? {
        let piece = src.buf.filled();
        total += piece.len() as u64;
        if total > limit {
            return Err(BodyError::TooLarge);
        }
        write_piece(sink, piece)?;
        let n = piece.len();
        src.buf.consume(n);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        input: &[u8],
        framing: Framing,
        encoding: Encoding,
        limit: u64,
    ) -> (Result<u64, BodyError>, Vec<u8>, Vec<u8>) {
        let mut buf = ReadBuf::new();
        let mut sock = input;
        let mut out = Vec::new();
        let mut sink = Vec::new();
        let result = {
            let mut src = Source { buf: &mut buf, sock: &mut sock, step: 3 };
            let mut dst = WriteBatch::new(&mut out, &mut sink, 4);
            let r = transfer(&mut src, framing, &mut dst, encoding, limit);
            dst.send().unwrap();
            r
        };
        let mut rest = buf.filled().to_vec();
        rest.extend_from_slice(sock);
        (result, sink, rest)
    }

    #[test]
    fn chunked_is_decoded_and_leftover_kept() {
        let input = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nGET / HTTP/1.1";
        let (r, out, rest) = run(input, Framing::Chunked, Encoding::Identity, 100);
        assert_eq!(r.unwrap(), 9);
        assert_eq!(out, b"Wikipedia");
        assert_eq!(rest, b"GET / HTTP/1.1");
    }

    #[test]
    fn length_body_reencoded_as_chunks() {
        let (r, out, rest) = run(b"hello!extra", Framing::Length(6), Encoding::Chunked, 100);
        assert_eq!(r.unwrap(), 6);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("0\r\n\r\n"), "{text}");
        assert_eq!(rest, b"extra");
    }

    #[test]
    fn bad_chunks_are_rejected() {
        let cases: [&[u8]; 7] = [
            b"2;a\nb\r\nab\r\n0\r\n\r\n",
            b"zz\r\nab\r\n0\r\n\r\n",
            b"2\r\nabc\r\n0\r\n\r\n",
            b"2\nab\r\n0\r\n\r\n",
            b"fffffffffffffffffff\r\n",
            b"0\r\nA: 1\nB: 2\r\n\r\n",
            b"0\r\nA: 1\rB: 2\r\n\r\n",
        ];
        for input in cases {
            let (r, _, _) = run(input, Framing::Chunked, Encoding::Identity, u64::MAX);
            assert!(matches!(r, Err(BodyError::Malformed(_))), "{:?}: {r:?}", String::from_utf8_lossy(input));
        }
    }

    /// A chunk-size line of `len` bytes (CRLF included), then a 5-byte chunk and the end.
    fn body_with_size_line(len: usize) -> Vec<u8> {
        let mut input = b"5;".to_vec();
        input.resize(len - 2, b'e');
        input.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        input
    }

    #[test]
    fn line_limit_holds_for_any_read_size() {
        for step in [1, 3, 4095, 4096, 4097, 8192, 32 * 1024] {
            let decode = |input: &[u8]| {
                let mut buf = ReadBuf::new();
                let mut sock = input;
                let (mut out, mut sink) = (Vec::new(), Vec::new());
                let mut src = Source { buf: &mut buf, sock: &mut sock, step };
                let mut dst = WriteBatch::new(&mut out, &mut sink, 64);
                transfer(&mut src, Framing::Chunked, &mut dst, Encoding::Identity, u64::MAX)
            };
            assert_eq!(decode(&body_with_size_line(MAX_LINE)).unwrap(), 5, "read size {step}");
            for len in [MAX_LINE + 1, MAX_LINE + 2, 5000] {
                let r = decode(&body_with_size_line(len));
                assert!(matches!(r, Err(BodyError::Malformed("line too long"))), "{len} at read size {step}: {r:?}");
            }
            let mut trailer = b"0\r\nX: ".to_vec();
            trailer.resize(3 + MAX_LINE - 1, b't');
            trailer.extend_from_slice(b"\r\n\r\n");
            let r = decode(&trailer);
            assert!(matches!(r, Err(BodyError::Malformed("line too long"))), "trailer at read size {step}: {r:?}");
        }
    }

    #[test]
    fn limits_and_truncation() {
        let (r, _, _) = run(b"5\r\nhello\r\n0\r\n\r\n", Framing::Chunked, Encoding::Identity, 4);
        assert!(matches!(r, Err(BodyError::TooLarge)));
        let (r, _, _) = run(b"abc", Framing::Length(10), Encoding::Identity, 100);
        assert!(matches!(r, Err(BodyError::Truncated)));
        let (r, out, _) = run(b"all of it", Framing::UntilClose, Encoding::Identity, 100);
        assert_eq!((r.unwrap(), out), (9, b"all of it".to_vec()));
    }
}
