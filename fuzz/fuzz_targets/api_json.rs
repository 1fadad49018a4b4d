//! JSON bodies and path parameters of the management API (`pibl::api::json`): registration, login
//! and deletion bodies (`credentials`), new endpoints (`new_endpoint`), e-mail addresses and app ids.
//!
//! Properties (each checked against an independent reference written from the API's schema):
//! - a body is refused as not JSON exactly when serde_json cannot read it, as not an object exactly
//!   when it is another JSON value, and otherwise accepted exactly when the reference accepts it;
//! - every refusal names only fields of the schema, and at least one;
//! - an accepted body written back as JSON is accepted again with the same values (round trip);
//! - e-mail addresses match the seed's pattern `^[a-zA-Z0-9_.+-]+@[a-zA-Z0-9-]+\.[a-zA-Z0-9-.]+$`
//!   (at most 254 characters) and app ids `^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`, by the `regex`
//!   crate; an accepted endpoint has a port in range, a plausible host and a clean absolute path.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pibl::api::json::{check_app_id, check_email, credentials, new_endpoint, BodyError};
use regex::Regex;
use serde_json::{json, Value};

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_.+\-]+@[a-zA-Z0-9\-]+\.[a-zA-Z0-9\-.]+$").unwrap());
static APP_ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?$").unwrap());
static HOST: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9._\-]+$").unwrap());

fn email_ok(s: &str) -> bool {
    s.len() <= 254 && EMAIL.is_match(s)
}

fn refused_fields(r: &BodyError) -> Vec<String> {
    match r {
        BodyError::Fields(errors) => errors.iter().map(|e| e.field.clone()).collect(),
        other => panic!("expected field errors, got {other:?}"),
    }
}

/// Shared checks on the JSON layer; returns the object when the body is one. A body serde_json
/// reads but pibl refuses as not JSON must be one with a duplicate key (pibl refuses those at any
/// depth, serde_json keeps the last): the message says so, and the same value written once more
/// without duplicates (serde_json's reading of it) passes the JSON layer.
fn json_layer<T: std::fmt::Debug>(
    body: &[u8],
    result: &Result<T, BodyError>,
    parse_again: impl Fn(&[u8]) -> Result<T, BodyError>,
) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Err(_) => {
            assert!(matches!(result, Err(BodyError::NotJson(_))), "invalid JSON gave {result:?}");
            None
        }
        Ok(value) if matches!(result, Err(BodyError::NotJson(_))) => {
            let Err(BodyError::NotJson(why)) = result else { unreachable!() };
            assert!(why.contains("appears twice"), "valid JSON refused: {why}");
            let deduplicated = serde_json::to_vec(&value).expect("a Value writes");
            let again = parse_again(&deduplicated);
            assert!(!matches!(again, Err(BodyError::NotJson(_))), "without duplicates still refused: {again:?}");
            None
        }
        Ok(Value::Object(map)) => {
            assert!(!matches!(result, Err(BodyError::NotJson(_) | BodyError::NotObject)), "{result:?}");
            Some(map)
        }
        Ok(_) => {
            assert!(matches!(result, Err(BodyError::NotObject)), "a JSON non-object gave {result:?}");
            None
        }
    }
}

fn check_credentials(body: &[u8]) {
    let result = credentials(body);
    let Some(map) = json_layer(body, &result, credentials) else { return };
    let email = map.get("email").and_then(Value::as_str);
    let password = map.get("password").and_then(Value::as_str);
    let expected = email.is_some_and(email_ok) && password.is_some_and(|p| (6..=30).contains(&p.chars().count()));
    match &result {
        Ok(c) => {
            assert!(expected, "accepted {c:?}");
            // E-mail addresses are compared without case everywhere, so pibl keeps them lower-cased.
            let email = email.map(|e| e.trim().to_ascii_lowercase());
            assert_eq!((Some(c.email.as_str()), Some(c.password.as_str())), (email.as_deref(), password));
            let again = json!({"email": c.email, "password": c.password}).to_string();
            assert_eq!(credentials(again.as_bytes()).as_ref(), Ok(c), "round trip");
        }
        Err(e) => {
            assert!(!expected, "refused a valid body: {e:?}");
            let fields = refused_fields(e);
            assert!(!fields.is_empty() && fields.iter().all(|f| f == "email" || f == "password"), "{fields:?}");
        }
    }
}

fn check_endpoint(body: &[u8]) {
    let result = new_endpoint(body);
    let Some(map) = json_layer(body, &result, new_endpoint) else { return };
    let host_ok = map.get("host").and_then(Value::as_str).is_some_and(|h| {
        let bare = h.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(h);
        !h.is_empty() && h.len() <= 253 && (bare.parse::<std::net::IpAddr>().is_ok() || HOST.is_match(h))
    });
    let port = map.get("port").and_then(Value::as_f64).filter(|f| (0.0..=65535.0).contains(f) && f.fract() == 0.0);
    let path = map
        .get("statuspath")
        .and_then(Value::as_str)
        // At most 1024 bytes as stored, that is with the `/` added when missing (F5, fixed).
        .filter(|p| p.len() + usize::from(!p.starts_with('/')) <= 1024 && !p.bytes().any(|b| b <= b' ' || b == 0x7f))
        // A scheme, or a leading `//` or `\\` (a URL without a scheme to whatever reads it as one).
        .filter(|p| !p.contains("://") && !p.starts_with("//") && !p.starts_with("\\\\"));
    let expected = host_ok && port.is_some() && path.is_some();
    match &result {
        Ok(e) => {
            assert!(expected, "accepted {e:?}");
            assert_eq!(Some(f64::from(e.port)), port);
            assert!(e.statuspath.starts_with('/'));
            let p = path.unwrap();
            assert!(e.statuspath == p || e.statuspath == format!("/{p}"));
            assert!(e.statuspath.len() <= 1024, "stored a statuspath of {} bytes", e.statuspath.len());
            let again = json!({"host": e.host, "port": e.port, "statuspath": e.statuspath}).to_string();
            assert_eq!(new_endpoint(again.as_bytes()).as_ref(), Ok(e), "round trip");
        }
        Err(err) => {
            assert!(!expected, "refused a valid body: {err:?}");
            let fields = refused_fields(err);
            assert!(!fields.is_empty() && fields.iter().all(|f| ["host", "port", "statuspath"].contains(&f.as_str())));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    match mode % 4 {
        0 => check_credentials(body),
        1 => check_endpoint(body),
        2 => {
            if let Ok(s) = std::str::from_utf8(body) {
                assert_eq!(check_email(s).is_ok(), email_ok(s), "e-mail {s:?}");
            }
        }
        _ => {
            if let Ok(s) = std::str::from_utf8(body) {
                assert_eq!(check_app_id(s).is_ok(), APP_ID.is_match(s), "app id {s:?}");
            }
        }
    }
});
