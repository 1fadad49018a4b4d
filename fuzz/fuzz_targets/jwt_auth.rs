//! Access tokens and the `Authorization` header (`pibl::store::credentials`): `token_from_header`
//! on any header value, `Tokens::verify` on any token, and tokens pibl issued then tampered with.
//!
//! Properties:
//! - the header reader agrees with a reference (`JWT <token>` or `Bearer <token>`, scheme in any
//!   case, surrounding whitespace ignored) and returns a non-empty, trimmed part of the value;
//! - an issued token verifies at its issue time to exactly the claims given, is `Expired` from
//!   `exp` on and `NotYetValid` before `nbf`;
//! - a token that verifies is valid at that instant (`nbf <= now < exp`);
//! - a tampered token (a byte changed, dropped or added; a part swapped with another token's; the
//!   header replaced by `alg: none` or another algorithm) never verifies with different claims.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pibl::store::credentials::{token_from_header, Claims, TokenError, Tokens};
use pibl_fuzz::Cursor;

const TTL: u64 = 300;
static TOKENS: LazyLock<Tokens> = LazyLock::new(|| Tokens::new(b"fuzz-secret", TTL));

fn reference_header(value: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let space = s.find(' ')?;
    let (scheme, token) = (&s[..space], s[space + 1..].trim());
    let known = scheme.eq_ignore_ascii_case("jwt") || scheme.eq_ignore_ascii_case("bearer");
    (known && !token.is_empty()).then(|| token.to_string())
}

fn check_verified(token: &str, now: u64) -> Option<Claims> {
    match TOKENS.verify(token, now) {
        Ok(c) => {
            assert!(c.nbf <= now && now < c.exp, "accepted outside its validity: {c:?} at {now}");
            Some(c)
        }
        Err(TokenError::Expired | TokenError::NotYetValid | TokenError::Invalid(_)) => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut cur = Cursor::new(data);
    let mode = cur.byte() % 3;
    let now = u64::from(cur.u32()) + 1;
    match mode {
        0 => {
            // Any Authorization value, then whatever token it holds.
            let value = cur.rest();
            let token = token_from_header(value);
            assert_eq!(token.map(str::to_string), reference_header(value), "{:?}", String::from_utf8_lossy(value));
            if let Some(t) = token {
                assert!(!t.is_empty() && t.trim() == t);
                check_verified(t, now);
            }
        }
        1 => {
            // Any token text.
            if let Ok(t) = std::str::from_utf8(cur.rest()) {
                check_verified(t, now);
            }
        }
        _ => {
            // A token pibl issued, then tampered with.
            let op = cur.byte();
            let at = usize::from(cur.u16());
            let with = cur.byte();
            let identity = String::from_utf8_lossy(cur.rest()).into_owned();
            let token = TOKENS.issue(&identity, now).expect("issuing");
            let claims = Claims { identity: identity.clone(), iat: now, nbf: now, exp: now + TTL, acct: None };
            assert_eq!(TOKENS.verify(&token, now).as_ref(), Ok(&claims));
            assert_eq!(TOKENS.verify(&token, now + TTL - 1).as_ref(), Ok(&claims));
            assert_eq!(TOKENS.verify(&token, now + TTL), Err(TokenError::Expired));
            assert_eq!(TOKENS.verify(&token, now - 1), Err(TokenError::NotYetValid));
            let header = format!("Bearer {token}");
            assert_eq!(token_from_header(header.as_bytes()), Some(token.as_str()));

            let mut bytes = token.clone().into_bytes();
            let i = at % bytes.len();
            match op % 6 {
                0 => bytes[i] = with,
                1 => {
                    bytes.remove(i);
                }
                2 => bytes.insert(i, with),
                3 => bytes[i] ^= 1 << (with % 8),
                4 => {
                    // Claims of another identity under this token's signature.
                    let other = TOKENS.issue(&format!("{identity}x"), now).expect("issuing");
                    let mut parts: Vec<&str> = token.split('.').collect();
                    let theirs: Vec<&str> = other.split('.').collect();
                    parts[usize::from(with) % 3] = theirs[usize::from(with) % 3];
                    bytes = parts.join(".").into_bytes();
                }
                _ => {
                    // Another algorithm in the header, signature kept or dropped.
                    let alg = ["none", "HS384", "HS512", "RS256", "ES256", "EdDSA", "hs256"][usize::from(with) % 7];
                    let head = format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}");
                    let b64 = |s: &[u8]| -> String {
                        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                        let mut out = String::new();
                        for c in s.chunks(3) {
                            let n = (u32::from(c[0]) << 16)
                                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                                | u32::from(*c.get(2).unwrap_or(&0));
                            for k in 0..=c.len() {
                                out.push(T[((n >> (18 - 6 * k)) & 63) as usize] as char);
                            }
                        }
                        out
                    };
                    let parts: Vec<&str> = token.split('.').collect();
                    let sig = if at % 2 == 0 { "" } else { parts[2] };
                    bytes = format!("{}.{}.{sig}", b64(head.as_bytes()), parts[1]).into_bytes();
                }
            }
            if let Ok(tampered) = String::from_utf8(bytes) {
                if tampered != token {
                    if let Some(c) = check_verified(&tampered, now) {
                        assert_eq!(c, claims, "a tampered token {tampered:?} verified with other claims");
                    }
                }
            }
        }
    }
});
