//! A session's client side: the non-blocking connection (plain or TLS), the bytes read from it and
//! not yet used, and the bytes waiting to be written to it. Reads and writes never block; each
//! returns whether it made progress, and a full output buffer is what stops a session from reading
//! more from its backend (back-pressure).

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::http::buffer::ReadBuf;
use crate::server::event_loop::transport::{HintedRead, Input, Transport};

/// Bytes to write to a socket, written as far as the socket takes them.
#[derive(Debug, Default)]
pub struct OutBuf {
    pub data: Vec<u8>,
    sent: usize,
}

impl OutBuf {
    /// Bytes still to write.
    pub fn pending(&self) -> usize {
        self.data.len() - self.sent
    }

    pub fn is_empty(&self) -> bool {
        self.pending() == 0
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
    }

    /// Writes until the socket would block or nothing is left; `Ok(true)` when bytes went out.
    pub fn write_to<W: Write>(&mut self, dst: &mut W) -> io::Result<bool> {
        let mut wrote = false;
        while self.sent < self.data.len() {
            match dst.write(&self.data[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.sent += n;
                    wrote = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(wrote),
                Err(e) => return Err(e),
            }
        }
        self.data.clear();
        self.sent = 0;
        Ok(wrote)
    }

    /// Writes what is pending and then `extra`, in vectored writes, so `extra` need not be copied in
    /// first; stops when the socket would block. Returns whether bytes went out and how many of
    /// `extra` did (the caller keeps the rest, which must follow before anything else is added).
    pub fn write_with<W: Write>(&mut self, extra: &[u8], dst: &mut W) -> io::Result<(bool, usize)> {
        let (mut wrote, mut taken) = (false, 0);
        loop {
            let (pending, rest) = (&self.data[self.sent..], &extra[taken..]);
            if pending.is_empty() && rest.is_empty() {
                break;
            }
            match dst.write_vectored(&[IoSlice::new(pending), IoSlice::new(rest)]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let from_pending = n.min(pending.len());
                    self.sent += from_pending;
                    taken += n - from_pending;
                    wrote = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.data.len() {
            self.data.clear();
            self.sent = 0;
        }
        Ok((wrote, taken))
    }

    /// Gives the allocation back while empty (an idle keep-alive session holds no buffer).
    pub fn release(&mut self) {
        if self.is_empty() {
            self.data = Vec::new();
            self.sent = 0;
        }
    }
}

/// What a non-blocking read came to.
#[derive(Debug)]
pub enum Got {
    Bytes(usize),
    Eof,
    WouldBlock,
    Failed(io::Error),
}

/// Reads once into `buf` (keeping at most `max` unconsumed bytes), retrying on `Interrupted`.
pub fn read_into<R: Read>(buf: &mut ReadBuf, src: &mut R, step: usize, max: usize) -> Got {
    loop {
        match buf.fill_from(src, step, max) {
            Ok(0) => return Got::Eof,
            Ok(n) => return Got::Bytes(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Got::WouldBlock,
            Err(e) => return Got::Failed(e),
        }
    }
}

/// The client connection of a session.
pub struct Client {
    pub transport: Transport,
    pub peer: SocketAddr,
    /// Bytes received and not yet used: a partial head, a body on its way, pipelined requests.
    pub cin: ReadBuf,
    /// Bytes on their way to the client.
    pub cout: OutBuf,
    /// The last time bytes moved on this connection, for `client_timeout`.
    pub seen: Instant,
    /// Header fields every answer head on this connection carries (HSTS over TLS), each ending in CRLF.
    pub answer_fields: Arc<Vec<u8>>,
    /// What the loop knows of the socket's input (see [`HintedRead`]); events update it.
    pub input: Input,
}

impl Client {
    pub fn new(transport: Transport, peer: SocketAddr, now: Instant, answer_fields: Arc<Vec<u8>>) -> Client {
        Client {
            transport,
            peer,
            cin: ReadBuf::new(),
            cout: OutBuf::default(),
            seen: now,
            answer_fields,
            input: Input::Unknown,
        }
    }

    /// Over TLS: the connection came in on the TLS listener.
    pub fn is_tls(&self) -> bool {
        self.transport.is_tls()
    }

    /// Everything written has left for the socket (nothing in `cout`, nothing held by rustls).
    pub fn output_done(&self) -> bool {
        self.cout.is_empty() && !self.transport.pending_out()
    }

    /// Writes what is pending; `Err` means the client is gone.
    pub fn flush(&mut self, now: Instant) -> io::Result<bool> {
        let mut wrote = self.cout.write_to(&mut self.transport)?;
        wrote |= self.transport.flush_out()?;
        if wrote {
            self.seen = now;
        }
        Ok(wrote)
    }

    /// [`Client::flush`], with `extra` written after what is pending (see [`OutBuf::write_with`]);
    /// returns whether bytes went out and how many of `extra` did.
    pub fn flush_with(&mut self, extra: &[u8], now: Instant) -> io::Result<(bool, usize)> {
        let (mut wrote, taken) = self.cout.write_with(extra, &mut self.transport)?;
        wrote |= self.transport.flush_out()?;
        if wrote {
            self.seen = now;
        }
        Ok((wrote, taken))
    }

    /// Reads once into `cin`, keeping at most `max` unconsumed bytes.
    pub fn read(&mut self, step: usize, max: usize, now: Instant) -> Got {
        if self.cin.len() >= max {
            return Got::WouldBlock;
        }
        let mut src = HintedRead { transport: &mut self.transport, input: &mut self.input };
        let read = read_into(&mut self.cin, &mut src, step, max);
        if matches!(read, Got::Bytes(_)) {
            self.seen = now;
        }
        read
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, IoSlice, Write};

    use super::OutBuf;

    /// A socket that takes at most `per_call` bytes per write (gathering across buffers, as `writev`
    /// does) and `budget` bytes in all, then would block.
    struct Trickle {
        got: Vec<u8>,
        per_call: usize,
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let room = self.per_call.min(self.budget);
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let before = self.got.len();
            for buf in bufs {
                let take = buf.len().min(room - (self.got.len() - before));
                self.got.extend_from_slice(&buf[..take]);
            }
            let n = self.got.len() - before;
            self.budget -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn extra_bytes_follow_the_pending_ones_in_order_across_partial_writes() {
        let mut out = OutBuf::default();
        out.extend(b"HEAD:");
        let body = b"0123456789";
        // 3 bytes a call, 9 in all: the head and the body's first 4 bytes go, then it would block.
        let mut sock = Trickle { got: Vec::new(), per_call: 3, budget: 9 };
        let (wrote, taken) = out.write_with(body, &mut sock).unwrap();
        assert_eq!((wrote, taken, out.is_empty()), (true, 4, true));
        assert_eq!(sock.got, b"HEAD:0123");
        // The rest of the body, from where it was left.
        sock.budget = usize::MAX;
        let (_, taken) = out.write_with(&body[4..], &mut sock).unwrap();
        assert_eq!(taken, 6);
        assert_eq!(sock.got, b"HEAD:0123456789");
        // Nothing pending and nothing extra: nothing written, nothing taken.
        assert_eq!(out.write_with(b"", &mut sock).unwrap(), (false, 0));
    }

    #[test]
    fn a_socket_that_blocks_at_once_takes_nothing_and_keeps_the_pending_bytes() {
        let mut out = OutBuf::default();
        out.extend(b"HEAD:");
        let mut sock = Trickle { got: Vec::new(), per_call: 2, budget: 0 };
        assert_eq!(out.write_with(b"body", &mut sock).unwrap(), (false, 0));
        assert_eq!(out.pending(), 5);
    }
}
