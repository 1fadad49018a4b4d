//! A loop connection's byte stream: plain TCP, or TLS (rustls) over it, behind one non-blocking
//! `Read` + `Write` face, so the session, the exchange and the tunnel never ask which.
//!
//! Over TLS, `read` gives plaintext: it takes records from the socket only when rustls holds no
//! plaintext (so rustls' own buffer never overflows), and sends the handshake's answers as they
//! come. `write` encrypts into rustls only while its TLS output is empty, then writes that output
//! out as far as the socket takes it: at most one buffer limit of ciphertext waits in rustls, so a
//! client that stops reading stops the session's writes as a plain socket would (back-pressure).
//! [`Transport::pending_out`] says what still waits there.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::{ClientConnection, Connection, ServerConfig, ServerConnection};

/// Least ciphertext rustls may hold for a socket (one TLS record), whatever `buffer_size` says.
const TLS_RECORD: usize = 16 * 1024 + 256;

/// How much ciphertext rustls may hold for one socket: `buffer_size`, as the session's own output
/// buffer, and at least one record.
pub fn buffer_limit(buffer_size: usize) -> usize {
    buffer_size.max(TLS_RECORD)
}

/// Where a TLS connection's handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Not complete yet.
    Pending,
    /// Complete: application data flows.
    Done,
    /// Refused by rustls (not TLS, no common version or suite, a bad certificate...).
    Failed,
}

/// A socket, maybe with TLS over it.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

/// A TLS connection over a non-blocking socket.
pub struct Tls {
    sock: TcpStream,
    conn: Connection,
    /// The socket reached its end: no more records will come.
    eof: bool,
    handshake: Handshake,
    /// What rustls refused, for the log.
    pub error: Option<rustls::Error>,
    close_notify_sent: bool,
}

impl Transport {
    /// The server side of a TLS connection accepted on the TLS listener; `limit` bounds the
    /// ciphertext rustls holds for the socket.
    pub fn tls_server(sock: TcpStream, config: Arc<ServerConfig>, limit: usize) -> Result<Transport, rustls::Error> {
        let mut conn = ServerConnection::new(config)?;
        conn.set_buffer_limit(Some(limit));
        Ok(Transport::over(sock, Connection::Server(conn)))
    }

    /// The client side of a TLS connection to a backend, asking for `name` (SNI when it is a DNS name).
    pub fn tls_client(sock: TcpStream, mut conn: ClientConnection, limit: usize) -> Transport {
        conn.set_buffer_limit(Some(limit));
        Transport::over(sock, Connection::Client(conn))
    }

    fn over(sock: TcpStream, conn: Connection) -> Transport {
        Transport::Tls(Box::new(Tls {
            sock,
            conn,
            eof: false,
            handshake: Handshake::Pending,
            error: None,
            close_notify_sent: false,
        }))
    }

    /// The socket under the stream (registration, connect checks, peeks).
    pub fn sock(&self) -> &TcpStream {
        match self {
            Transport::Plain(sock) => sock,
            Transport::Tls(tls) => &tls.sock,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The TLS connection, if this is one.
    pub fn tls(&self) -> Option<&Tls> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(tls) => Some(tls),
        }
    }

    /// Whether bytes already accepted by `write` still wait (in rustls) for the socket.
    pub fn pending_out(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(tls) => tls.conn.wants_write(),
        }
    }

    /// Writes what waits in rustls as far as the socket takes it; `Ok(true)` when bytes went out.
    pub fn flush_out(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain(_) => Ok(false),
            Transport::Tls(tls) => tls.flush_tls(),
        }
    }

    /// An idle connection has nothing to say: no bytes on the socket, and over TLS no plaintext
    /// already decrypted (bytes past the last response would be read as the next one's answer).
    pub fn is_quiet(&mut self) -> bool {
        let idle = matches!(self.sock().peek(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        idle && self.holds_no_input()
    }

    /// Whether nothing already taken off the socket waits to be read (always so for a plain
    /// socket; over TLS, no decrypted bytes and no `close_notify`). No system call.
    pub fn holds_no_input(&mut self) -> bool {
        match self {
            Transport::Plain(_) => true,
            Transport::Tls(tls) => {
                !tls.eof && tls.conn.process_new_packets().is_ok_and(|state| state.plaintext_bytes_to_read() == 0)
            }
        }
    }

    /// Ends the writing side: over TLS a `close_notify` goes first. `WouldBlock` until it is out.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if let Transport::Tls(tls) = self {
            tls.notify_close();
            tls.flush_tls()?;
            if tls.conn.wants_write() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        self.sock().shutdown(Shutdown::Write)
    }
}

impl Drop for Tls {
    /// A connection pibl is done with (a client session closed, a backend connection done with or
    /// broken off, a pooled one past its age) says `close_notify` as far as the socket takes it at
    /// once, so the peer can tell a meant end from a truncation.
    fn drop(&mut self) {
        if self.handshake == Handshake::Done {
            self.notify_close();
            let _ = self.flush_tls();
        }
    }
}

impl Tls {
    pub fn handshake(&self) -> Handshake {
        self.handshake
    }

    /// The protocol agreed by ALPN, once the handshake is done.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    fn notify_close(&mut self) {
        if !self.close_notify_sent {
            self.close_notify_sent = true;
            self.conn.send_close_notify();
        }
    }

    /// Writes rustls' TLS output until the socket would block or nothing is left.
    fn flush_tls(&mut self) -> io::Result<bool> {
        let mut wrote = false;
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => wrote = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(wrote)
    }

    /// Takes what the socket has into rustls (unless `input` knows it drained) and processes it
    /// (answering the handshake); `false` when the socket had nothing or has ended.
    fn receive(&mut self, input: &mut Input) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        match self.conn.read_tls(&mut HintedSocket { sock: &mut self.sock, input }) {
            Ok(0) => self.eof = true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
        if let Err(e) = self.conn.process_new_packets() {
            // The alert rustls queued tells the peer why, before the connection closes.
            let _ = self.flush_tls();
            if self.handshake == Handshake::Pending {
                self.handshake = Handshake::Failed;
            }
            self.error = Some(e.clone());
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        if self.handshake == Handshake::Pending && !self.conn.is_handshaking() {
            self.handshake = Handshake::Done;
        }
        self.flush_tls()?;
        Ok(!self.eof)
    }
}

/// What a loop knows of a plain socket's input, from its reads and the poller's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// A read found it empty (it would block, or filled less than it was offered); only an input
    /// event makes it worth reading again.
    Drained,
    /// Bytes may be there.
    Unknown,
    /// The poller reported the peer's close (or an error): reads go on until they say so, however
    /// short the reads before.
    Ending,
}

impl Input {
    /// After an event on the socket: `closed` when the poller reported the peer's close or an
    /// error, `readable` when it reported input.
    pub fn on_event(&mut self, readable: bool, closed: bool) {
        if closed {
            *self = Input::Ending;
        } else if readable && *self == Input::Drained {
            *self = Input::Unknown;
        }
    }
}

/// A read of `transport` through what the loop knows of its socket's input, so a read that could
/// only find nothing is not tried (the request just sent to a backend, the client after its
/// answer): an edge-triggered poller reports every arrival after the read that found the socket
/// drained. Over TLS, plaintext rustls already holds is read first; only the socket read is
/// skipped.
pub struct HintedRead<'a> {
    pub transport: &'a mut Transport,
    pub input: &'a mut Input,
}

impl Read for HintedRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut *self.transport {
            Transport::Plain(sock) => HintedSocket { sock, input: self.input }.read(buf),
            Transport::Tls(tls) => tls.read_plaintext(buf, self.input),
        }
    }
}

/// A socket read that skips a socket known [`Input::Drained`] and finds out when it is.
struct HintedSocket<'a> {
    sock: &'a mut TcpStream,
    input: &'a mut Input,
}

impl Read for HintedSocket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if *self.input == Input::Drained {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let read = self.sock.read(buf);
        let drained = match &read {
            Ok(n) => *n > 0 && *n < buf.len(),
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        };
        if drained && *self.input == Input::Unknown {
            *self.input = Input::Drained;
        }
        read
    }
}

impl Tls {
    /// Plaintext, reading the socket (through `input`) only when rustls holds none.
    fn read_plaintext(&mut self, buf: &mut [u8], input: &mut Input) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // No plaintext: what waits to go out goes first (a handshake answer), then more records.
            self.flush_tls()?;
            if !self.receive(input)? && !self.eof {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }
}

impl Read for Transport {
    /// Plaintext; `Ok(0)` at the end of the stream, with or without the peer's `close_notify` (HTTP
    /// framing finds a truncated message itself). The socket is always read when it is needed.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(sock) => sock.read(buf),
            Transport::Tls(tls) => tls.read_plaintext(buf, &mut Input::Unknown),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let tls = match self {
            Transport::Plain(sock) => return sock.write(buf),
            Transport::Tls(tls) => tls,
        };
        // A backend connection writes before it reads: its handshake moves here.
        while tls.conn.is_handshaking() && tls.receive(&mut Input::Unknown)? {}
        tls.flush_tls()?;
        if tls.conn.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = tls.conn.writer().write(buf)?;
        tls.flush_tls()?;
        if n == 0 && !buf.is_empty() {
            // rustls' buffer is full (plaintext held until the handshake ends).
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Plain TCP: one `writev`. TLS: the first non-empty buffer (rustls copies it anyway).
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(sock) => sock.write_vectored(bufs),
            Transport::Tls(_) => bufs.iter().find(|b| !b.is_empty()).map_or(Ok(0), |b| self.write(b)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_out().map(drop)
    }
}
