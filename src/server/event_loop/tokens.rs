//! How poller tokens name a loop's sockets: the listeners and the waker have fixed tokens, a client
//! socket an even one from its session slot, a backend socket an odd one from its descriptor (so
//! it keeps its registration whichever session uses it).

use std::os::fd::AsRawFd;

use mio::Token;

/// The listener's token in every loop.
pub const LISTENER: Token = Token(usize::MAX);
/// The token of the waker that interrupts a loop (shutdown).
pub const WAKER: Token = Token(usize::MAX - 1);
/// The TLS listener's token in every loop (`tls_port`).
pub const TLS_LISTENER: Token = Token(usize::MAX - 2);

/// The token of the client socket of the session in `slot`: even (a backend socket's is odd).
pub fn client_token(slot: usize) -> Token {
    Token(slot * 2)
}

/// The session slot a client socket's token names.
pub fn slot_of(token: Token) -> usize {
    token.0 / 2
}

/// The poller token of a backend socket: odd, and made of its descriptor, which no other open
/// socket of the process has, so it stays the socket's token whichever session uses it.
pub fn backend_token(stream: &impl AsRawFd) -> Token {
    Token(descriptor_of(stream) * 2 + 1)
}

/// The descriptor of the backend socket an odd token names; `None` for a client's (even) token.
pub fn backend_of(token: Token) -> Option<usize> {
    (token.0 % 2 == 1).then_some(token.0 / 2)
}

/// A socket's descriptor as an index.
pub fn descriptor_of(stream: &impl AsRawFd) -> usize {
    usize::try_from(stream.as_raw_fd()).unwrap_or_default()
}
