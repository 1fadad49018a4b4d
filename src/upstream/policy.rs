//! Which addresses an app endpoint may point at. Any registered user adds endpoints, and pibl then
//! connects to them from inside the host, so an endpoint is a way in: to pibl's own API through the
//! public data plane, or to the cloud metadata service and its credentials. So a host is resolved to
//! addresses (the resolver reads `127.1`, `0x7f000001` and `2130706433` as the kernel would; no
//! string matching) and every address is checked: pibl's own listening ports on a local address,
//! unspecified, link-local, metadata, broadcast and multicast addresses are always refused; the rest
//! must fall in `endpoint_allow`. The check runs when an endpoint is added, each time the route table
//! resolves it again (DNS can change), and before every connection.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};

use crate::config::IpNet;

/// Why an endpoint address is refused; the text is what the API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The name resolves to no address.
    Unresolved(String),
    /// pibl's own data, API or metrics port on an address of this host.
    OwnListener(SocketAddr),
    /// An address that is never a backend: unspecified, link-local, metadata, broadcast, multicast.
    Reserved(IpAddr, &'static str),
    /// Outside `endpoint_allow`.
    NotAllowed(IpAddr),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unresolved(host) => write!(f, "{host:?} does not resolve to an address"),
            Refusal::OwnListener(addr) => {
                write!(f, "{addr} is one of this proxy's own ports; an app cannot point at pibl itself")
            }
            Refusal::Reserved(ip, what) => write!(f, "{ip} is {what}, which an endpoint may never point at"),
            Refusal::NotAllowed(ip) => {
                write!(f, "{ip} is outside the networks endpoints may point at (the `endpoint_allow` setting)")
            }
        }
    }
}

/// The rule every endpoint address passes.
#[derive(Debug, Clone)]
pub struct EndpointPolicy {
    allow: Vec<IpNet>,
    /// Ports pibl listens on (data plane, API, metrics).
    own_ports: Vec<u16>,
}

impl Default for EndpointPolicy {
    /// The default `endpoint_allow`, with no own ports known.
    fn default() -> Self {
        EndpointPolicy { allow: crate::config::Config::default().endpoint_allow, own_ports: Vec::new() }
    }
}

impl EndpointPolicy {
    pub fn new(allow: Vec<IpNet>, own_ports: Vec<u16>) -> Self {
        EndpointPolicy { allow, own_ports }
    }

    /// Resolves `host:port` (an IPv6 literal may come in brackets) and checks every address it
    /// resolves to; returns the one to connect to, IPv4 first (a `localhost` backend usually listens
    /// on 127.0.0.1).
    pub fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, Refusal> {
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let addrs: Vec<SocketAddr> = match (bare, port).to_socket_addrs() {
            Ok(addrs) => addrs.collect(),
            Err(_) => Vec::new(),
        };
        for addr in &addrs {
            self.check(*addr)?;
        }
        addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied().ok_or_else(|| Refusal::Unresolved(host.into()))
    }

    /// Checks one address, as resolved.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Refusal> {
        // ::ffff:127.0.0.1 is 127.0.0.1 to the kernel.
        let ip = addr.ip().to_canonical();
        if let Some(what) = reserved(ip) {
            return Err(Refusal::Reserved(ip, what));
        }
        if self.own_ports.contains(&addr.port()) && is_local(ip) {
            return Err(Refusal::OwnListener(SocketAddr::new(ip, addr.port())));
        }
        if !self.allow.iter().any(|net| net.contains(ip)) {
            return Err(Refusal::NotAllowed(ip));
        }
        Ok(())
    }
}

/// What kind of never-a-backend address `ip` is, if it is one.
fn reserved(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => reserved_v4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_unspecified() {
                Some("the unspecified address (this host)")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("a cloud metadata service address")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if s[..6] == [0; 6] && !v6.is_loopback() {
                // ::a.b.c.d, the deprecated IPv4-compatible form.
                Some("an IPv4-compatible IPv6 address")
            } else {
                None
            }
        }
    }
}

fn reserved_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if o[0] == 0 {
        // 0.0.0.0/8: connecting to it reaches this host.
        Some("an unspecified address (this host)")
    } else if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some("a cloud metadata service address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

/// Whether `ip` is an address of this host: loopback, or one a socket can be bound to.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> EndpointPolicy {
        EndpointPolicy { own_ports: vec![5000, 8080], ..EndpointPolicy::default() }
    }

    #[test]
    fn every_spelling_of_a_refused_address_is_refused() {
        let p = policy();
        // Each spelling the resolver reads as loopback reaches pibl's own API port.
        for host in ["127.0.0.1", "127.1", "0x7f000001", "2130706433", "0177.0.0.1", "localhost", "[::1]", "::1"] {
            assert!(
                matches!(p.resolve(host, 5000), Err(Refusal::OwnListener(_))),
                "{host}: {:?}",
                p.resolve(host, 5000)
            );
        }
        assert!(matches!(p.resolve("[::ffff:127.0.0.1]", 8080), Err(Refusal::OwnListener(_))));
        let cases = [
            ("0.0.0.0", "unspecified"),
            ("0", "unspecified"),
            ("::", "unspecified"),
            ("[::]", "unspecified"),
            ("169.254.169.254", "metadata"),
            ("0xa9fea9fe", "metadata"),
            ("[::ffff:169.254.169.254]", "metadata"),
            ("fd00:ec2::254", "metadata"),
            ("169.254.1.2", "link-local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("::127.0.0.1", "IPv4-compatible"),
        ];
        for (host, why) in cases {
            match p.resolve(host, 80) {
                Err(refusal @ Refusal::Reserved(..)) => assert!(refusal.to_string().contains(why), "{host}: {refusal}"),
                other => panic!("{host}: {other:?}"),
            }
        }
        // Outside the default allow list (this host and private ranges).
        for host in ["8.8.8.8", "2001:db8::1", "100.64.0.1"] {
            assert!(matches!(p.resolve(host, 80), Err(Refusal::NotAllowed(_))), "{host}");
        }
        assert!(matches!(p.resolve("no-such-host.invalid", 80), Err(Refusal::Unresolved(_))));
    }

    #[test]
    fn a_guarded_backend_checks_before_each_connection() {
        use crate::config::BackendAddr;
        use crate::upstream::backend::Backend;
        use std::sync::Arc;
        use std::time::Duration;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let target = BackendAddr::plain("own".to_string(), addr);
        let own = Arc::new(EndpointPolicy::new(policy().allow, vec![addr.port()]));
        let err =
            Backend::guarded(&target, 1, own).connect(Duration::from_secs(1), Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
        let other = Arc::new(EndpointPolicy::default());
        assert!(Backend::guarded(&target, 1, other).connect(Duration::from_secs(1), Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn allowed_addresses_pass_and_the_allow_list_governs_the_rest() {
        let p = policy();
        assert_eq!(p.resolve("127.0.0.1", 9001), Ok(SocketAddr::from(([127, 0, 0, 1], 9001))));
        assert_eq!(p.resolve("127.1", 9001), Ok(SocketAddr::from(([127, 0, 0, 1], 9001))));
        assert!(p.resolve("[::1]", 9001).is_ok());
        assert!(p.resolve("10.1.2.3", 80).is_ok());
        assert!(p.resolve("192.168.1.1", 5000).is_ok(), "port 5000 of another host is not pibl's");
        let narrow = EndpointPolicy::new(crate::config::Config::default().endpoint_allow[2..3].to_vec(), vec![]);
        assert!(narrow.resolve("10.9.9.9", 80).is_ok());
        assert!(matches!(narrow.resolve("127.0.0.1", 80), Err(Refusal::NotAllowed(_))));
    }
}
