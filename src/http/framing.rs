//! Incremental body framing for the event loops: the same rules as the blocking [`super::body`]
//! (`Content-Length`, chunked, until close), as a state machine that is fed whatever bytes have
//! arrived and never reads a socket itself. Each [`Decoder::step`] consumes what it can of its input
//! and says which part of it is body data; the caller copies that data on (re-chunked or not, with
//! [`encode_piece`] / [`encode_end`]) and feeds the rest once more bytes have come.

use std::io::Write;
use std::ops::Range;

use super::body::{has_control_byte, BodyError, Encoding, MAX_LINE, MAX_TRAILERS};
use super::Framing;

/// Where a body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes of a `Content-Length` body are still to come.
    Length(u64),
    /// A chunk-size line is next.
    Size,
    /// This many bytes of the current chunk are still to come.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// Trailer lines (this many bytes so far) until an empty line.
    Trailers(usize),
    /// Everything until the sender closes.
    UntilClose,
    Done,
}

/// What one [`Decoder::step`] did with its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input used up (framing and data); 0 means more input is needed.
    pub consumed: usize,
    /// The body data among them, as a range of the input.
    pub data: Range<usize>,
}

/// Decodes one message body as its bytes arrive.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    /// Decoded bytes so far.
    total: u64,
    /// Most decoded bytes allowed (`max_body_bytes` for requests).
    limit: u64,
}

impl Decoder {
    /// A decoder for a body framed as `framing`, refusing more than `limit` decoded bytes.
    pub fn new(framing: Framing, limit: u64) -> Result<Decoder, BodyError> {
        let state = match framing {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(len) if len > limit => return Err(BodyError::TooLarge),
            Framing::Length(len) => State::Length(len),
            Framing::Chunked => State::Size,
            Framing::UntilClose => State::UntilClose,
        };
        Ok(Decoder { state, total: 0, limit })
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decoded bytes so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes of a `Content-Length` body still to come; `None` for other framings.
    pub fn known_remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(left) => Some(left),
            _ => None,
        }
    }

    /// Decodes from the start of `input` as far as one framing element goes.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, BodyError> {
        let none = |consumed| Ok(Step { consumed, data: 0..0 });
        match self.state {
            State::Done => none(0),
            State::Length(remaining) => {
                let take = (input.len() as u64).min(remaining) as usize;
                self.total += take as u64;
                self.state =
                    if remaining == take as u64 { State::Done } else { State::Length(remaining - take as u64) };
                Ok(Step { consumed: take, data: 0..take })
            }
            State::UntilClose => {
                self.total += input.len() as u64;
                if self.total > self.limit {
                    return Err(BodyError::TooLarge);
                }
                Ok(Step { consumed: input.len(), data: 0..input.len() })
            }
            State::Size => {
                let Some(line) = line_len(input)? else { return none(0) };
                // A bare CR or LF or another control byte (extensions included) means the sender
                // ends lines differently from us, so the body's end is in doubt.
                if has_control_byte(&input[..line - 2]) {
                    return Err(BodyError::Malformed("control byte or bare CR/LF in a chunk size line"));
                }
                let size = match httparse::parse_chunk_size(&input[..line]) {
                    Ok(httparse::Status::Complete((used, size))) if used == line => size,
                    _ => return Err(BodyError::Malformed("bad chunk size")),
                };
                if size == 0 {
                    self.state = State::Trailers(0);
                } else {
                    self.total = self.total.checked_add(size).ok_or(BodyError::TooLarge)?;
                    if self.total > self.limit {
                        return Err(BodyError::TooLarge);
                    }
                    self.state = State::Data(size);
                }
                none(line)
            }
            State::Data(remaining) => {
                let take = (input.len() as u64).min(remaining) as usize;
                self.state =
                    if remaining == take as u64 { State::DataEnd } else { State::Data(remaining - take as u64) };
                Ok(Step { consumed: take, data: 0..take })
            }
            State::DataEnd => match input {
                [b'\r', b'\n', ..] => {
                    self.state = State::Size;
                    none(2)
                }
                [] | [b'\r'] => none(0),
                _ => Err(BodyError::Malformed("chunk data longer than its size")),
            },
            State::Trailers(seen) => {
                let Some(line) = line_len(input)? else { return none(0) };
                // Trailers are dropped, but one framed oddly puts the message's end in doubt.
                if has_control_byte(&input[..line - 2]) {
                    return Err(BodyError::Malformed("control byte or bare CR/LF in a trailer"));
                }
                if line == 2 {
                    self.state = State::Done;
                } else if seen + line > MAX_TRAILERS {
                    return Err(BodyError::Malformed("trailers too large"));
                } else {
                    self.state = State::Trailers(seen + line);
                }
                none(line)
            }
        }
    }

    /// The sender closed: the end of an until-close body, a truncation of any other.
    pub fn finish_at_eof(&mut self) -> Result<(), BodyError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(BodyError::Truncated),
        }
    }
}

/// The length of the line at the start of `input` including its CRLF, `None` if it is not complete.
/// Only the first `MAX_LINE` bytes are searched, so a longer line is refused whether it comes in one
/// piece or many.
fn line_len(input: &[u8]) -> Result<Option<usize>, BodyError> {
    let window = &input[..input.len().min(MAX_LINE)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(pos) => Ok(Some(pos + 2)),
        None if input.len() >= MAX_LINE => Err(BodyError::Malformed("line too long")),
        None => Ok(None),
    }
}

/// Appends body data to `out` as `encoding` frames it.
pub fn encode_piece(out: &mut Vec<u8>, data: &[u8], encoding: Encoding) {
    if data.is_empty() {
        return;
    }
    if encoding == Encoding::Chunked {
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// Appends the end of a body framed as `encoding` (the last chunk; nothing for identity).
pub fn encode_end(out: &mut Vec<u8>, encoding: Encoding) {
    if encoding == Encoding::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` `piece` bytes at a time, as a socket might deliver it; returns the decoded body
    /// and the bytes left after it.
    fn feed(input: &[u8], framing: Framing, limit: u64, piece: usize) -> Result<(Vec<u8>, Vec<u8>), BodyError> {
        let mut decoder = Decoder::new(framing, limit)?;
        let (mut buf, mut body, mut offered) = (Vec::new(), Vec::new(), 0);
        while !decoder.is_done() {
            let step = decoder.step(&buf)?;
            body.extend_from_slice(&buf[step.data.clone()]);
            buf.drain(..step.consumed);
            if step.consumed == 0 {
                if offered == input.len() {
                    decoder.finish_at_eof()?;
                    break;
                }
                let end = (offered + piece).min(input.len());
                buf.extend_from_slice(&input[offered..end]);
                offered = end;
            }
        }
        buf.extend_from_slice(&input[offered..]);
        Ok((body, buf))
    }

    #[test]
    fn every_framing_byte_by_byte_and_whole() {
        let chunked = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nGET / HTTP/1.1";
        for piece in [1, 2, 3, 7, 1000] {
            let (body, rest) = feed(chunked, Framing::Chunked, 100, piece).unwrap();
            assert_eq!((body.as_slice(), rest.as_slice()), (&b"Wikipedia"[..], &b"GET / HTTP/1.1"[..]), "{piece}");
            let (body, rest) = feed(b"hello!extra", Framing::Length(6), 100, piece).unwrap();
            assert_eq!((body.as_slice(), rest.as_slice()), (&b"hello!"[..], &b"extra"[..]));
            let (body, _) = feed(b"all of it", Framing::UntilClose, 100, piece).unwrap();
            assert_eq!(body, b"all of it");
        }
    }

    #[test]
    fn bad_framing_limits_and_truncation() {
        let cases: [&[u8]; 7] = [
            b"zz\r\nab\r\n0\r\n\r\n",
            b"2\r\nabc\r\n0\r\n\r\n",
            b"2\nab\r\n0\r\n\r\n",
            b"fffffffffffffffffff\r\n",
            b"2;a\nb\r\nab\r\n0\r\n\r\n",
            b"2\r\nab\r\n0\r\nX: a\nb\r\n\r\n",
            b"2\r\nab\r\n0\r\nX: a\rb\r\n\r\n",
        ];
        for input in cases {
            let r = feed(input, Framing::Chunked, u64::MAX, 3);
            assert!(matches!(r, Err(BodyError::Malformed(_))), "{:?}: {r:?}", String::from_utf8_lossy(input));
        }
        assert!(matches!(feed(b"5\r\nhello\r\n0\r\n\r\n", Framing::Chunked, 4, 3), Err(BodyError::TooLarge)));
        assert!(matches!(Decoder::new(Framing::Length(5), 4), Err(BodyError::TooLarge)));
        assert!(matches!(feed(b"abc", Framing::Length(10), 100, 2), Err(BodyError::Truncated)));
        assert!(matches!(feed(&[b'a'; 5000], Framing::Chunked, 100, 5000), Err(BodyError::Malformed(_))));
    }

    #[test]
    fn line_limit_holds_for_any_piece_size() {
        let line = |len: usize| {
            let mut input = b"5;".to_vec();
            input.resize(len - 2, b'e');
            input.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
            input
        };
        for piece in [1, 3, 4095, 4096, 4097, 8192] {
            let (body, _) = feed(&line(MAX_LINE), Framing::Chunked, 100, piece).unwrap();
            assert_eq!(body, b"hello", "{piece}");
            for len in [MAX_LINE + 1, MAX_LINE + 2, 5000] {
                let r = feed(&line(len), Framing::Chunked, 100, piece);
                assert!(matches!(r, Err(BodyError::Malformed("line too long"))), "{len} in pieces of {piece}: {r:?}");
            }
        }
    }

    #[test]
    fn encoding_reframes_as_chunks() {
        let mut out = Vec::new();
        encode_piece(&mut out, b"hello", Encoding::Chunked);
        encode_piece(&mut out, b"", Encoding::Chunked);
        encode_end(&mut out, Encoding::Chunked);
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
        let mut plain = Vec::new();
        encode_piece(&mut plain, b"hello", Encoding::Identity);
        encode_end(&mut plain, Encoding::Identity);
        assert_eq!(plain, b"hello");
    }
}
