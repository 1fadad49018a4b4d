//! Incremental body framing (`pibl::http::framing`): the decoder the event loops feed with
//! whatever bytes have arrived, and its chunked encoder.
//!
//! Input: a mode byte (chunked, `Content-Length`, until close), the limit (u64), the length (u32,
//! for `Content-Length`), a count of split points (0-16) and the points (u16 each), then the body
//! bytes. The fuzzer chooses where the input is split, as TCP segmentation would.
//!
//! Properties:
//! - fed in the pieces the split points make, the decoder decides exactly as on the whole input in
//!   one piece: the same end (done, or the same refusal) and, when done, the same body bytes and
//!   number of bytes used (before a refusal, one run's bytes are a prefix of the other's);
//! - it agrees with the blocking decoder the API uses (`http::body::transfer`): both
//!   accept with the same body and leave the same bytes after it, or both refuse (413 for a body
//!   over the limit, 400 otherwise);
//! - limits: the decoded bytes never pass the limit, even before a refusal; no chunk-size or
//!   trailer line over 4096 bytes and no more than 16 KiB of trailers are ever used up; each step
//!   uses no more than it was given and its data lies within what it used;
//! - the end of a body does not depend on the bytes after it (the used prefix alone decodes the
//!   same);
//! - a decoded body re-encoded as chunks (`encode_piece` in the fuzzer's pieces, `encode_end`)
//!   decodes to the same bytes and ends exactly at the encoding's end; encoded as identity it is
//!   the body itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pibl::http::body::{transfer, BodyError, Encoding, Source};
use pibl::http::buffer::{ReadBuf, WriteBatch};
use pibl::http::framing::{encode_end, encode_piece, Decoder};
use pibl::http::Framing;
use pibl_fuzz::Cursor;

/// The longest chunk-size or trailer line, CRLF included, and the most trailer bytes (pibl's
/// documented limits).
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// How decoding ended, comparable across runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Done(u64),
    Truncated,
    Malformed(&'static str),
    TooLarge,
}

impl End {
    fn of(e: BodyError) -> End {
        match e {
            BodyError::Truncated => End::Truncated,
            BodyError::Malformed(why) => End::Malformed(why),
            BodyError::TooLarge => End::TooLarge,
            e @ (BodyError::Read(_) | BodyError::Write(_)) => panic!("I/O error without I/O: {e}"),
        }
    }

    /// The answer a refusal leads to: 413 for a body over the limit, 400 (or 502 from a backend)
    /// for framing that is broken or cut short.
    fn decision(&self) -> Option<u16> {
        match self {
            End::Done(_) => None,
            End::TooLarge => Some(413),
            End::Truncated | End::Malformed(_) => Some(400),
        }
    }
}

#[derive(Debug)]
struct Fed {
    end: End,
    body: Vec<u8>,
    /// Input bytes used by the body's framing and data.
    used: usize,
}

/// Feeds `input` to a decoder in the pieces `cuts` (sorted positions; those past the end ignored) make, as an event loop does:
/// each step gets everything buffered and not used yet; when a step uses nothing, the next piece
/// arrives, and after the last one the sender closes.
fn feed(input: &[u8], framing: Framing, limit: u64, cuts: &[usize]) -> Fed {
    let mut decoder = match Decoder::new(framing, limit) {
        Ok(d) => d,
        Err(e) => return Fed { end: End::of(e), body: Vec::new(), used: 0 },
    };
    let (mut buf, mut body) = (Vec::new(), Vec::new());
    let (mut offered, mut used, mut last_data_end) = (0, 0, 0);
    let end = loop {
        if decoder.is_done() {
            break End::Done(decoder.total());
        }
        let step = match decoder.step(&buf) {
            Ok(step) => step,
            Err(e) => break End::of(e),
        };
        assert!(step.consumed <= buf.len(), "used {} of {} bytes", step.consumed, buf.len());
        assert!(
            step.data.start <= step.data.end && step.data.end <= step.consumed,
            "data {:?} outside the {} bytes used",
            step.data,
            step.consumed
        );
        if step.data.is_empty() && step.consumed > 0 {
            // A framing element: a chunk-size line, a trailer line, or a chunk's CRLF.
            assert!(step.consumed <= MAX_LINE, "a line of {} bytes was used", step.consumed);
        }
        body.extend_from_slice(&buf[step.data.clone()]);
        assert!(body.len() as u64 <= limit, "decoded {} bytes past a limit of {limit}", body.len());
        if !step.data.is_empty() {
            last_data_end = used + step.data.end;
        }
        buf.drain(..step.consumed);
        used += step.consumed;
        if step.consumed == 0 {
            if offered == input.len() {
                break match decoder.finish_at_eof() {
                    Ok(()) => End::Done(decoder.total()),
                    Err(e) => End::of(e),
                };
            }
            let next = cuts.iter().copied().find(|&c| c > offered && c < input.len()).unwrap_or(input.len());
            buf.extend_from_slice(&input[offered..next]);
            offered = next;
        }
    };
    if let (End::Done(n), Framing::Chunked) = (&end, framing) {
        assert_eq!(*n, body.len() as u64, "the decoder counted {n} bytes and gave {}", body.len());
        // After the last data: its CRLF, the last-chunk line, the trailers and the empty line.
        assert!(
            used - last_data_end <= 2 + MAX_LINE + MAX_TRAILERS + 2,
            "{} bytes of framing after the last data",
            used - last_data_end
        );
    }
    Fed { end, body, used }
}

/// The blocking decoder on the same input, read `step` bytes at a time:
/// how it ends, the body, and the bytes it left.
fn blocking(input: &[u8], framing: Framing, limit: u64, step: usize) -> (End, Vec<u8>, Vec<u8>) {
    let mut buf = ReadBuf::new();
    let mut sock = input;
    let (mut batch, mut out) = (Vec::new(), Vec::new());
    let result = {
        let mut src = Source { buf: &mut buf, sock: &mut sock, step };
        let mut dst = WriteBatch::new(&mut batch, &mut out, 64);
        let r = transfer(&mut src, framing, &mut dst, Encoding::Identity, limit);
        dst.send().expect("writing to a Vec");
        r
    };
    let mut rest = buf.filled().to_vec();
    rest.extend_from_slice(sock);
    (result.map_or_else(End::of, End::Done), out, rest)
}

fuzz_target!(|data: &[u8]| {
    let mut cur = Cursor::new(data);
    let mode = cur.byte() % 3;
    let limit = cur.u64();
    let length = u64::from(cur.u32());
    let count = usize::from(cur.byte() % 17);
    let mut cuts: Vec<usize> = (0..count).map(|_| usize::from(cur.u16())).collect();
    let input = cur.rest();
    cuts.retain(|&c| c > 0 && c < input.len());
    cuts.sort_unstable();
    cuts.dedup();
    let framing = match mode {
        0 => Framing::Chunked,
        1 => Framing::Length(length),
        _ => Framing::UntilClose,
    };

    let whole = feed(input, framing, limit, &[]);
    let split = feed(input, framing, limit, &cuts);
    assert_eq!(whole.end, split.end, "split at {cuts:?}, the decoder ends differently");
    if let End::Done(_) = whole.end {
        assert_eq!(whole.body, split.body, "split at {cuts:?}, the decoder gives other bytes");
        assert_eq!(whole.used, split.used, "split at {cuts:?}, the body ends elsewhere");
    } else {
        // Before a refusal, what was passed on depends on how much had arrived (an until-close
        // body over its limit is refused at the piece that passes it), but it is the same bytes.
        let (short, long) = if whole.body.len() <= split.body.len() { (&whole, &split) } else { (&split, &whole) };
        assert!(long.body.starts_with(&short.body), "split at {cuts:?}, the bytes before the refusal differ");
    }

    // The blocking decoder decides the same, read in the first piece's size (the size of a read).
    let step = cuts.first().copied().unwrap_or(input.len()).max(1);
    let (end, out, rest) = blocking(input, framing, limit, step);
    assert_eq!(whole.end.decision(), end.decision(), "event loop {:?}, blocking {end:?} (read size {step})", whole.end);
    if let End::Done(_) = end {
        assert_eq!(whole.end, end, "read size {step}");
        assert_eq!(whole.body, out, "the engines decode different bodies (read size {step})");
        assert_eq!(&input[whole.used..], &rest[..], "the engines end the body at different places");
    }

    let End::Done(_) = whole.end else { return };
    if framing == Framing::Chunked {
        let prefix = feed(&input[..whole.used], framing, limit, &cuts);
        assert_eq!((&prefix.end, &prefix.body), (&whole.end, &whole.body), "the end depends on what follows");
    }
    // Re-encoded as chunks in the fuzzer's pieces, the body decodes to itself.
    let mut encoded = Vec::new();
    let mut from = 0;
    for &c in cuts.iter().filter(|&&c| c < whole.body.len()).chain([&whole.body.len()]) {
        encode_piece(&mut encoded, &whole.body[from..c], Encoding::Chunked);
        from = c;
    }
    encode_end(&mut encoded, Encoding::Chunked);
    let again = feed(&encoded, Framing::Chunked, u64::MAX, &cuts);
    assert_eq!(again.end, End::Done(whole.body.len() as u64), "pibl's own chunks do not decode");
    assert_eq!(again.body, whole.body, "re-encoded chunks decode to other bytes");
    assert_eq!(again.used, encoded.len(), "pibl's own chunks end before their end");
    let mut plain = Vec::new();
    encode_piece(&mut plain, &whole.body, Encoding::Identity);
    encode_end(&mut plain, Encoding::Identity);
    assert_eq!(plain, whole.body);
});
