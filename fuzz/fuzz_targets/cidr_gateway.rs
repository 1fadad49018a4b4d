//! CIDR lists (`deny`, `allow`, `trusted_proxies`, loaded through `pibl::Config::from_ini_str`) and
//! the gateway decisions made with them on outside input: `Gateway::client_ip` over
//! `X-Forwarded-For` chains, and `Gateway::admit` over deny lists.
//!
//! Properties:
//! - every loaded network, printed and read back by an independent parser, contains exactly the
//!   addresses a reference mask computation says it does (IPv4, IPv6, IPv4-mapped IPv6), including
//!   its first and last address and the neighbour just outside it;
//! - the client address is the peer unless the peer is a trusted proxy; then it is the rightmost
//!   `X-Forwarded-For` hop that is not trusted (or the leftmost hop), never an address a client could
//!   plant to the left of an untrusted hop, and an unparsable chain is ignored as a whole;
//! - `admit` refuses exactly the clients a deny network contains.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use pibl::config::IpNet;
use pibl::gateway::{Gateway, Refusal};
use pibl::http::request::{parse, Limits};
use pibl::Config;
use pibl_fuzz::Cursor;

pibl_fuzz::no_dns!();

/// `addr` or `addr/prefix`, as `IpNet` prints itself, read back independently.
fn reference(net: &IpNet) -> (IpAddr, u32) {
    let text = net.to_string();
    match text.split_once('/') {
        Some((a, p)) => (a.parse().expect("printed address"), p.parse().expect("printed prefix")),
        None => {
            let a: IpAddr = text.parse().expect("printed address");
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    }
}

fn reference_contains((net, prefix): (IpAddr, u32), ip: IpAddr) -> bool {
    let ip = match (net, ip) {
        (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => return false,
        },
        (_, ip) => ip,
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// Addresses at the edges of a network: first, last, and just outside each end.
fn edges((net, prefix): (IpAddr, u32)) -> Vec<IpAddr> {
    match net {
        IpAddr::V4(n) => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            let (lo, hi) = (u32::from(n) & mask, u32::from(n) | !mask);
            [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)].map(|v| IpAddr::V4(Ipv4Addr::from(v))).into()
        }
        IpAddr::V6(n) => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            let (lo, hi) = (u128::from(n) & mask, u128::from(n) | !mask);
            [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)].map(|v| IpAddr::V6(Ipv6Addr::from(v))).into()
        }
    }
}

fn ip_from(cur: &mut Cursor<'_>) -> IpAddr {
    let kind = cur.byte();
    let mut b = [0u8; 16];
    b.copy_from_slice(&[cur.bytes(16), &[0u8; 16][..]].concat()[..16]);
    match kind % 3 {
        0 => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
        1 => IpAddr::V6(Ipv6Addr::from(b)),
        _ => IpAddr::V6(Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_ipv6_mapped()),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut cur = Cursor::new(data);
    let peer = ip_from(&mut cur);
    let probe = ip_from(&mut cur);
    let text = String::from_utf8_lossy(cur.rest());
    let mut lines = text.split('\n');
    let list = lines.next().unwrap_or("");
    let Ok(config) = Config::from_ini_str(&format!("trusted_proxies = {list}\ndeny = {list}\n"), "cidr.ini") else {
        return;
    };
    assert_eq!(config.trusted_proxies, config.deny);
    let nets = &config.trusted_proxies;
    for net in nets {
        let r = reference(net);
        let mut probes = edges(r);
        probes.push(probe);
        probes.push(peer);
        probes.extend(probes.clone().into_iter().filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(_) => None,
        }));
        for ip in probes {
            assert_eq!(net.contains(ip), reference_contains(r, ip), "{net} contains {ip}?");
        }
        assert!(net.contains(r.0), "{net} does not contain its own address");
    }

    // X-Forwarded-For chains from the remaining lines.
    let mut head = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for line in lines {
        head.extend_from_slice(b"X-Forwarded-For: ");
        head.extend_from_slice(line.trim_end_matches('\r').as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let limits = Limits { max_head_bytes: 1 << 20, max_headers: 1000, max_body_bytes: 0 };
    let Ok(Some((req, _))) = parse(&head, &limits) else { return };
    let gateway = Gateway::new(&config);
    let client = gateway.client_ip(peer, &req);

    let trusted = |ip: IpAddr| nets.iter().any(|n| reference_contains(reference(n), ip));
    let chain: Option<Vec<IpAddr>> = req
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
        .flat_map(|(_, v)| v.split(|&b| b == b',').map(pibl::http::trim).filter(|t| !t.is_empty()))
        .map(|t| std::str::from_utf8(t).ok().and_then(|s| s.parse().ok()))
        .collect();
    let expected = if !trusted(peer) {
        peer
    } else {
        let chain = chain.unwrap_or_default();
        let mut c = peer;
        for hop in chain.iter().rev() {
            c = *hop;
            if !trusted(*hop) {
                break;
            }
        }
        c
    };
    assert_eq!(client, expected, "client address behind {peer}");

    let refused = gateway.admit(client, None, Instant::now());
    let denied = nets.iter().any(|n| reference_contains(reference(n), client));
    assert_eq!(refused, if denied { Err(Refusal::Forbidden) } else { Ok(()) });
});
