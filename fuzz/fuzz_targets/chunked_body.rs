//! Message bodies (`pibl::http::body::transfer` and `transfer_with_copy`): the chunked decoder, the
//! chunked encoder, and the length and until-close copies, through pibl's own buffers.
//!
//! Properties:
//! - decoder: whatever the read size (1 byte at a time, or a large buffer), a chunked body decodes
//!   to the same bytes, stops at the same place, and fails the same way; the end of the body does
//!   not depend on the bytes after it (decoding just the consumed prefix gives the same body); the
//!   decoded size never passes the limit; what follows the body is left in the buffer untouched;
//! - decoder + encoder: a decoded body re-encoded as chunks decodes to the same bytes (what goes in
//!   comes out), and the encoding ends with the last chunk;
//! - encoder + decoder: any bytes framed by length or until close, re-encoded as chunks, de-frame to
//!   exactly the same bytes;
//! - the cache's copy (`Tee`) equals the body unless the body passed its cap, and then it is empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pibl::http::body::{transfer, transfer_with_copy, BodyError, Encoding, Source, Tee};
use pibl::http::buffer::{ReadBuf, WriteBatch};
use pibl::http::Framing;
use pibl_fuzz::Cursor;

/// How a transfer ended, comparable across runs.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Done(u64),
    Truncated,
    Malformed(&'static str),
    TooLarge,
}

struct Run {
    end: End,
    /// What the receiver got.
    out: Vec<u8>,
    /// What was left unread: the buffer's bytes, then the socket's.
    rest: Vec<u8>,
}

fn run(input: &[u8], framing: Framing, encoding: Encoding, limit: u64, step: usize, tee: Option<&mut Tee>) -> Run {
    let mut buf = ReadBuf::new();
    let mut sock = input;
    let mut batch = Vec::new();
    let mut out = Vec::new();
    let result = {
        let mut src = Source { buf: &mut buf, sock: &mut sock, step };
        let mut dst = WriteBatch::new(&mut batch, &mut out, 64);
        let r = match tee {
            Some(tee) => transfer_with_copy(&mut src, framing, &mut dst, encoding, tee),
            None => transfer(&mut src, framing, &mut dst, encoding, limit),
        };
        dst.send().expect("writing to a Vec");
        r
    };
    let end = match result {
        Ok(n) => End::Done(n),
        Err(BodyError::Truncated) => End::Truncated,
        Err(BodyError::Malformed(why)) => End::Malformed(why),
        Err(BodyError::TooLarge) => End::TooLarge,
        Err(e @ (BodyError::Read(_) | BodyError::Write(_))) => panic!("I/O error from memory: {e}"),
    };
    let mut rest = buf.filled().to_vec();
    rest.extend_from_slice(sock);
    Run { end, out, rest }
}

/// Decodes chunked `bytes` completely, expecting success.
fn decode_all(bytes: &[u8], step: usize) -> Vec<u8> {
    let r = run(bytes, Framing::Chunked, Encoding::Identity, u64::MAX, step, None);
    assert_eq!(
        r.end,
        End::Done(r.out.len() as u64),
        "pibl's own chunked output does not decode: {:?}",
        String::from_utf8_lossy(bytes)
    );
    assert!(r.rest.is_empty(), "pibl's own chunked output has bytes after its end");
    r.out
}

fuzz_target!(|data: &[u8]| {
    let mut cur = Cursor::new(data);
    let s = cur.byte();
    // Small reads, and reads the size of pibl's I/O buffers (1 KiB to 32 KiB; 8 KiB by default).
    let step = if s < 128 { usize::from(s).max(1) } else { usize::from(s - 127) * 256 };
    let mode = cur.byte() % 3;
    let limit = cur.u64();
    let input = cur.rest();

    match mode {
        0 => {
            let a = run(input, Framing::Chunked, Encoding::Identity, limit, step, None);
            assert!(a.out.len() as u64 <= limit, "decoded {} bytes past a limit of {limit}", a.out.len());
            assert!(input.ends_with(&a.rest), "the bytes after the body were changed");
            let b = run(input, Framing::Chunked, Encoding::Identity, limit, 1, None);
            assert_eq!(a.end, b.end, "read size {step} and read size 1 end differently");
            assert_eq!(a.out, b.out, "read size {step} and read size 1 decode differently");
            if let End::Done(n) = a.end {
                assert_eq!(a.rest, b.rest, "read size {step} and read size 1 stop at different places");
                assert_eq!(n, a.out.len() as u64);
                assert!(n <= limit);
                let consumed = input.len() - a.rest.len();
                let alone = run(&input[..consumed], Framing::Chunked, Encoding::Identity, limit, step, None);
                assert_eq!(
                    (alone.end, &alone.out),
                    (End::Done(n), &a.out),
                    "the body's end depends on what follows it"
                );
                assert!(alone.rest.is_empty());

                // Decoder + encoder: re-framed as chunks, the same bytes come out.
                let chunked = run(input, Framing::Chunked, Encoding::Chunked, limit, step, None);
                assert_eq!(chunked.end, End::Done(n));
                assert!(chunked.out.ends_with(b"0\r\n\r\n"));
                assert_eq!(decode_all(&chunked.out, step), a.out);

                // The cache's copy.
                let cap = (limit % 4096) as usize;
                let mut tee = Tee::new(cap);
                let copied = run(input, Framing::Chunked, Encoding::Identity, u64::MAX, step, Some(&mut tee));
                assert_eq!(copied.out, a.out);
                assert_eq!(tee.overflowed, a.out.len() > cap);
                assert_eq!(tee.data, if tee.overflowed { Vec::new() } else { a.out.clone() });
            }
        }
        1 => {
            // Encoder + decoder for a body framed by Content-Length, followed by another message.
            let mut stream = input.to_vec();
            stream.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
            let len = input.len() as u64;
            let r = run(&stream, Framing::Length(len), Encoding::Chunked, limit, step, None);
            if len > limit {
                assert_eq!(r.end, End::TooLarge);
                assert!(r.out.is_empty());
                return;
            }
            assert_eq!(r.end, End::Done(len));
            assert_eq!(r.rest, b"GET /next HTTP/1.1\r\n\r\n");
            assert_eq!(decode_all(&r.out, step), input);
            // One byte short is a truncation, never a shorter body.
            if len > 0 {
                let short = run(&input[..input.len() - 1], Framing::Length(len), Encoding::Identity, limit, step, None);
                assert_eq!(short.end, End::Truncated);
            }
        }
        _ => {
            // Until close, re-encoded as chunks, with the cache's copy.
            let cap = (limit % 8192) as usize;
            let mut tee = Tee::new(cap);
            let r = run(input, Framing::UntilClose, Encoding::Chunked, u64::MAX, step, Some(&mut tee));
            assert_eq!(r.end, End::Done(input.len() as u64));
            assert!(r.rest.is_empty());
            assert_eq!(decode_all(&r.out, step), input);
            assert_eq!(tee.overflowed, input.len() > cap);
            assert_eq!(tee.data, if tee.overflowed { &[][..] } else { input });
            let limited = run(input, Framing::UntilClose, Encoding::Identity, limit, step, None);
            assert!(limited.out.len() as u64 <= limit);
            assert_eq!(
                limited.end,
                if input.len() as u64 > limit { End::TooLarge } else { End::Done(input.len() as u64) }
            );
        }
    }
});
