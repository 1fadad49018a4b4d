//! Waking a thread blocked in `accept()`. `std`'s listener has no timeout, so every listener pibl
//! runs (the data plane's, the API's, the metrics port, the demo backends) stops the same way: set
//! its stop flag, then connect once to itself so `accept()` returns and the flag is seen.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// How long the wake-up connection may take; a listener that does not accept it in this time has
/// no thread left waiting in `accept()`.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connects once to the listener bound to `listening_on`, so a thread blocked in its `accept()`
/// returns. A failure is ignored: it means nobody is waiting there any more.
pub fn wake_acceptor(listening_on: SocketAddr) {
    let _ = TcpStream::connect_timeout(&reachable(listening_on), WAKE_TIMEOUT);
}

/// Where to connect to reach a listener bound to `addr`: a wildcard address is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn wildcard_listeners_are_woken_on_loopback() {
        assert_eq!(reachable("0.0.0.0:80".parse().unwrap()), "127.0.0.1:80".parse().unwrap());
        assert_eq!(reachable("[::]:80".parse().unwrap()), "[::1]:80".parse().unwrap());
        assert_eq!(reachable("192.0.2.1:80".parse().unwrap()), "192.0.2.1:80".parse().unwrap());
    }

    #[test]
    fn the_blocked_accept_returns() {
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let waiter = std::thread::spawn(move || listener.accept().is_ok());
        wake_acceptor(SocketAddr::from(([0, 0, 0, 0], port)));
        assert!(waiter.join().unwrap());
    }
}
