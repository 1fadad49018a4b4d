//! A session's client side: the non-blocking connection (plain or TLS), the bytes read from it and
//! not yet used, and the bytes waiting to be written to it. Reads and writes never block; each
//! returns whether it made progress, and a full output buffer is what stops a session from reading
//! more from its backend (back-pressure).

use std::io::{self, Read, Write};
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
