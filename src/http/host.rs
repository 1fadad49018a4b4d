//! Syntax of a request's authority (`Host` field or absolute-form target): `host[:port]` as RFC 9112
//! section 3.2 and RFC 3986 section 3.2.2 define it, so that no value pibl forwards, keys its cache
//! by or logs can be read as a different host, a path or user information by what sits behind it.

/// Why an authority is not a valid `host[:port]`; the text goes into the 400's error message.
pub type Invalid = &'static str;

/// Checks `value` (OWS already trimmed) as `uri-host [ ":" port ]`. The host is an IP literal
/// (`[v6]` or `[vX.…]`), or a reg-name: letters, digits, `-._~`, `%XX` and the sub-delims
/// `!$&'()*+,;=` (an IPv4 address is a reg-name too). The port is digits up to 65535; an empty
/// port after `:` is allowed by RFC 3986. An empty value is allowed (RFC 9112 section 3.2: a
/// target without an authority is sent with an empty `Host`). Everything else — spaces, `@`, `/`,
/// `\`, `?`, `#`, control bytes, non-ASCII — is refused.
pub fn check(value: &[u8]) -> Result<(), Invalid> {
    let (host, port) = if value.first() == Some(&b'[') {
        let end = value.iter().position(|&b| b == b']').ok_or("an IP literal without its closing ]")?;
        check_ip_literal(&value[1..end])?;
        match &value[end + 1..] {
            [] => (&value[..=end], None),
            [b':', port @ ..] => (&value[..=end], Some(port)),
            _ => return Err("bytes after the IP literal other than :port"),
        }
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    if host.first() != Some(&b'[') {
        check_reg_name(host)?;
    }
    match port {
        Some(port) if !port.iter().all(u8::is_ascii_digit) => Err("the port is not a number"),
        // Digits only, so the text is ASCII; leading zeros are allowed (RFC 3986: *DIGIT).
        Some(port)
            if !port.is_empty() && std::str::from_utf8(port).ok().and_then(|p| p.parse::<u16>().ok()).is_none() =>
        {
            Err("the port is larger than 65535")
        }
        _ => Ok(()),
    }
}

fn check_reg_name(name: &[u8]) -> Result<(), Invalid> {
    let mut rest = name;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        let ok = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b);
        if ok {
            continue;
        }
        if b != b'%' {
            return Err("a byte that is not allowed in a host name (RFC 3986 reg-name)");
        }
        match rest {
            [h, l, tail @ ..] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => rest = tail,
            _ => return Err("a % not followed by two hex digits"),
        }
    }
    Ok(())
}

fn check_ip_literal(inside: &[u8]) -> Result<(), Invalid> {
    // IPvFuture: "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" ).
    if let [b'v' | b'V', rest @ ..] = inside {
        let dot = rest.iter().position(|&b| b == b'.').ok_or("an IPvFuture literal without its .")?;
        let (version, address) = (&rest[..dot], &rest[dot + 1..]);
        let address_ok = !address.is_empty()
            && address.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:".contains(&b));
        return if !version.is_empty() && version.iter().all(u8::is_ascii_hexdigit) && address_ok {
            Ok(())
        } else {
            Err("an invalid IPvFuture literal")
        };
    }
    std::str::from_utf8(inside)
        .ok()
        .and_then(|text| text.parse::<std::net::Ipv6Addr>().ok())
        .map(|_| ())
        .ok_or("an invalid IPv6 literal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_authorities() {
        for ok in [
            "example.com",
            "Example.COM:8080",
            "127.0.0.1",
            "127.0.0.1:0",
            "h:",
            "h:065535",
            "",
            "[::1]",
            "[::1]:443",
            "[2001:db8::7]:",
            "[v1.fe80::a+en1]",
            "my_host.local",
            "xn--bcher-kva.example",
            "a%2Db",
            "a!$&'()*+,;=b",
        ] {
            assert_eq!(check(ok.as_bytes()), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn invalid_authorities() {
        for bad in [
            &b"a b"[..],
            b"a/b",
            b"a\\b",
            b"user@host",
            b"a/b@c",
            b"h?x",
            b"h#x",
            b"h:80:80",
            b"h:8o",
            b"h:65536",
            b"h:99999999999999999999",
            b"h: 80",
            b"a\tb",
            b"a\x00b",
            b"a\x7fb",
            b"caf\xc3\xa9.example",
            b"%zz",
            b"a%2",
            b"[::1",
            b"[::1]x",
            b"[::1]:x",
            b"[127.0.0.1]",
            b"[]",
            b"[v.x]",
            b"[v1.]",
            b"::1",
        ] {
            assert!(check(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
