//! Request bodies checked against the seed's JSON schemas, by hand: every failing field is collected
//! (not just the first), so a 400 names them all. Also the checks on path parameters (app ids).

use serde_json::{Map, Value};

/// Longest e-mail address accepted (RFC 5321's path limit); the seed's pattern has none.
const MAX_EMAIL: usize = 254;
/// Longest host name (RFC 1035) or address accepted.
const MAX_HOST: usize = 253;
/// Longest status path accepted.
const MAX_STATUSPATH: usize = 1024;

/// One field that failed, as sent to the client in `details`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> FieldError {
        FieldError { field: field.to_string(), message: message.into() }
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({ "field": self.field, "message": self.message })
    }
}

/// `{"email", "password"}` (registration, deletion, login).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub email: String,
    pub password: String,
}

/// `{"host", "port", "statuspath"}` (a new endpoint). `statuspath` always starts with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEndpoint {
    pub host: String,
    pub port: u16,
    pub statuspath: String,
}

/// Why a body was refused: not JSON at all, or fields that break the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    NotJson(String),
    NotObject,
    Fields(Vec<FieldError>),
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, BodyError> {
    // serde_json keeps the last of two equal keys; two parsers that pick differently (a WAF, a
    // log pipeline and pibl) would act on different requests, so duplicates are refused.
    if let Err(e) = serde_json::from_slice::<NoDuplicateKeys>(body) {
        if e.is_data() {
            return Err(BodyError::NotJson(e.to_string()));
        }
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(BodyError::NotObject),
        Err(e) => Err(BodyError::NotJson(e.to_string())),
    }
}

/// One spelling per host, so `[::1]`, `::1` and `0:0::1` are one endpoint: an IP address in its
/// standard text form (no brackets), a name in lower case.
fn canonical_host(host: &str) -> String {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host.to_ascii_lowercase(),
    }
}

/// Walks a JSON document and fails on an object that has a key twice (at any depth).
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("the key {key:?} appears twice")));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(NoDuplicateKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
}

fn string_field<'a>(map: &'a Map<String, Value>, name: &str, errors: &mut Vec<FieldError>) -> Option<&'a str> {
    match map.get(name) {
        None => {
            errors.push(FieldError::new(name, "is required"));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errors.push(FieldError::new(name, "must be a string"));
            None
        }
    }
}

/// Checks `{"email": string matching the seed's pattern, "password": string of 6-30 characters}`.
pub fn credentials(body: &[u8]) -> Result<Credentials, BodyError> {
    let map = parse_object(body)?;
    let mut errors = Vec::new();
    let email = string_field(&map, "email", &mut errors);
    if let Some(email) = email {
        if let Err(why) = check_email(email) {
            errors.push(FieldError::new("email", why));
        }
    }
    let password = string_field(&map, "password", &mut errors);
    if let Some(password) = password {
        let n = password.chars().count();
        if !(6..=30).contains(&n) {
            errors.push(FieldError::new("password", format!("must be 6 to 30 characters long (it has {n})")));
        }
    }
    match (email, password) {
        (Some(email), Some(password)) if errors.is_empty() => {
            // Compared without case everywhere; kept in one form from here on.
            Ok(Credentials { email: crate::store::admins::normalise_email(email), password: password.to_string() })
        }
        _ => Err(BodyError::Fields(errors)),
    }
}

/// The seed's `^[a-zA-Z0-9_.+-]+@[a-zA-Z0-9-]+\.[a-zA-Z0-9-.]+$`, written out: a local part of
/// those characters, one `@`, a first domain label of letters, digits and `-`, a dot, and a rest
/// of letters, digits, `-` and `.`. Also at most 254 characters.
pub fn check_email(email: &str) -> Result<(), String> {
    const HINT: &str = "must be an e-mail address such as name@example.com";
    if email.len() > MAX_EMAIL {
        return Err(format!("must be at most {MAX_EMAIL} characters"));
    }
    let Some((local, domain)) = email.split_once('@') else { return Err(HINT.into()) };
    let local_ok = !local.is_empty() && local.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b));
    let Some((label, rest)) = domain.split_once('.') else { return Err(HINT.into()) };
    let label_ok = !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let rest_ok = !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if local_ok && label_ok && rest_ok {
        Ok(())
    } else {
        Err(HINT.into())
    }
}

/// Checks `{"host": string, "port": number 0-65535, "statuspath": string}`. Beyond the seed's
/// schema: the port must be a whole number, the host a plausible name or address, and the status
/// path a path; one given without its leading `/` gets it (`status` means `/status`).
pub fn new_endpoint(body: &[u8]) -> Result<NewEndpoint, BodyError> {
    let map = parse_object(body)?;
    let mut errors = Vec::new();

    let host = string_field(&map, "host", &mut errors).and_then(|h| match check_host(h) {
        Ok(()) => Some(canonical_host(h)),
        Err(why) => {
            errors.push(FieldError::new("host", why));
            None
        }
    });

    let port = match map.get("port") {
        None => {
            errors.push(FieldError::new("port", "is required"));
            None
        }
        Some(Value::Number(n)) => {
            let problem = match n.as_f64() {
                Some(f) if f < 0.0 => Some("must be at least 0"),
                Some(f) if f > 65_535.0 => Some("must be at most 65535"),
                Some(f) if f.fract() != 0.0 => Some("must be a whole number"),
                Some(_) => None,
                None => Some("must be a number from 0 to 65535"),
            };
            match problem {
                Some(why) => {
                    errors.push(FieldError::new("port", why));
                    None
                }
                None => n.as_f64().map(|f| f as u16),
            }
        }
        Some(_) => {
            errors.push(FieldError::new("port", "must be a number (0-65535), not a string or other type"));
            None
        }
    };

    let statuspath = string_field(&map, "statuspath", &mut errors).and_then(|p| match normalize_statuspath(p) {
        Ok(p) => Some(p),
        Err(why) => {
            errors.push(FieldError::new("statuspath", why));
            None
        }
    });

    match (host, port, statuspath) {
        (Some(host), Some(port), Some(statuspath)) if errors.is_empty() => Ok(NewEndpoint { host, port, statuspath }),
        _ => Err(BodyError::Fields(errors)),
    }
}

/// A host name (letters, digits, `-`, `.`, `_`), an IPv4 address, or an IPv6 address (bracketed
/// or not).
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("must not be empty".into());
    }
    if host.len() > MAX_HOST {
        return Err(format!("must be at most {MAX_HOST} characters"));
    }
    let unbracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if unbracketed.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
        Ok(())
    } else {
        Err("must be a host name or an IP address, without scheme, port or path".into())
    }
}

fn normalize_statuspath(path: &str) -> Result<String, String> {
    // The limit holds for the path as stored (with the `/` added when missing), so whatever the API
    // returns it accepts again.
    let stored_len = if path.starts_with('/') { path.len() } else { path.len() + 1 };
    if stored_len > MAX_STATUSPATH {
        return Err(format!("must be at most {MAX_STATUSPATH} bytes, the leading / included"));
    }
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("must be a path without spaces or control characters, e.g. /status".into());
    }
    // `//host/x` is a URL without a scheme to whatever reads it as one.
    if path.contains("://") || path.starts_with("//") || path.starts_with("\\\\") {
        return Err("must be a path such as /status, not a URL".into());
    }
    Ok(if path.starts_with('/') { path.to_string() } else { format!("/{path}") })
}

/// App ids are DNS-label-like: 1-63 lower-case letters, digits and `-`, not starting or ending with
/// `-` (they are the first segment of proxied paths).
pub fn check_app_id(id: &str) -> Result<(), FieldError> {
    let ok = (1..=63).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "appid",
            "must be 1-63 lower-case letters, digits or '-', not starting or ending with '-' (like a DNS label)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(r: Result<impl std::fmt::Debug, BodyError>) -> Vec<String> {
        match r {
            Err(BodyError::Fields(errors)) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn email_pattern_like_the_seed() {
        for ok in ["your@email.com", "a.b+c_d-e@x-y.co.uk", "A@B.C", "x@y.-"] {
            assert_eq!(check_email(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a", "a@b", "@b.c", "a@.c", "a@b.", "a b@c.d", "a@b@c.d", "a@b_c.d", "ñ@b.c", "a@b.c/"] {
            assert!(check_email(bad).is_err(), "{bad:?}");
        }
        assert!(check_email(&format!("{}@b.cc", "a".repeat(250))).is_err());
    }

    #[test]
    fn credentials_collect_every_failure() {
        let ok = credentials(br#"{"email":"your@email.com","password":"yourpassword","extra":1}"#).unwrap();
        assert_eq!((ok.email.as_str(), ok.password.as_str()), ("your@email.com", "yourpassword"));
        assert_eq!(fields(credentials(br#"{}"#)), ["email", "password"]);
        assert_eq!(fields(credentials(br#"{"email":"x","password":"12345"}"#)), ["email", "password"]);
        assert_eq!(fields(credentials(br#"{"email":1,"password":"123456"}"#)), ["email"]);
        let long = format!(r#"{{"email":"a@b.c","password":"{}"}}"#, "p".repeat(31));
        assert_eq!(fields(credentials(long.as_bytes())), ["password"]);
        assert_eq!(credentials(b"[1]"), Err(BodyError::NotObject));
        assert!(matches!(credentials(b"{nope"), Err(BodyError::NotJson(_))));
        // Length is counted in characters, as JSON Schema does.
        assert!(credentials("{\"email\":\"a@b.c\",\"password\":\"ññññññ\"}".as_bytes()).is_ok());
    }

    #[test]
    fn endpoints_follow_the_schema() {
        let e = new_endpoint(br#"{"host":"10.0.0.1","port":8080,"statuspath":"status"}"#).unwrap();
        assert_eq!((e.host.as_str(), e.port, e.statuspath.as_str()), ("10.0.0.1", 8080, "/status"));
        let e = new_endpoint(br#"{"host":"[::1]","port":0,"statuspath":"/health?x=1"}"#).unwrap();
        assert_eq!((e.port, e.statuspath.as_str()), (0, "/health?x=1"));
        assert_eq!(new_endpoint(br#"{"host":"h","port":80.0,"statuspath":"/"}"#).map(|e| e.port), Ok(80));
        assert_eq!(fields(new_endpoint(br#"{}"#)), ["host", "port", "statuspath"]);
        assert_eq!(fields(new_endpoint(br#"{"host":"h","port":"80","statuspath":"/"}"#)), ["port"]);
        assert_eq!(fields(new_endpoint(br#"{"host":"h","port":65536,"statuspath":"/"}"#)), ["port"]);
        assert_eq!(fields(new_endpoint(br#"{"host":"h","port":-1,"statuspath":"/"}"#)), ["port"]);
        assert_eq!(fields(new_endpoint(br#"{"host":"h","port":80.5,"statuspath":"/"}"#)), ["port"]);
        assert_eq!(
            fields(new_endpoint(br#"{"host":"http://h","port":80,"statuspath":"/ x"}"#)),
            ["host", "statuspath"]
        );
        assert_eq!(fields(new_endpoint(br#"{"host":"","port":80,"statuspath":5}"#)), ["host", "statuspath"]);
    }

    #[test]
    fn duplicate_keys_urls_as_paths_and_host_spellings() {
        let dup = credentials(br#"{"email":"a@b.io","password":"secret1","email":"admin@b.io"}"#);
        assert!(matches!(&dup, Err(BodyError::NotJson(why)) if why.contains("\"email\" appears twice")), "{dup:?}");
        let nested = new_endpoint(br#"{"host":"h","port":1,"statuspath":"/","x":{"a":1,"a":2}}"#);
        assert!(matches!(nested, Err(BodyError::NotJson(_))));
        assert!(credentials(br#"{"email":"a@b.io","password":"secret1","x":[{"a":1},{"a":2}]}"#).is_ok());
        for bad in ["//evil.example/x", "\\\\evil/x"] {
            let body = format!(r#"{{"host":"h","port":1,"statuspath":{}}}"#, serde_json::to_string(bad).unwrap());
            assert_eq!(fields(new_endpoint(body.as_bytes())), ["statuspath"], "{bad}");
        }
        let longest = "a".repeat(MAX_STATUSPATH - 1);
        for given in [longest.clone(), format!("/{longest}")] {
            let body = format!(r#"{{"host":"h","port":1,"statuspath":"{given}"}}"#);
            assert_eq!(new_endpoint(body.as_bytes()).map(|e| e.statuspath.len()), Ok(MAX_STATUSPATH));
        }
        for given in [format!("a{longest}"), format!("/a{longest}")] {
            let body = format!(r#"{{"host":"h","port":1,"statuspath":"{given}"}}"#);
            assert_eq!(fields(new_endpoint(body.as_bytes())), ["statuspath"], "{} characters", given.len());
        }
        for (given, kept) in [("[::1]", "::1"), ("::1", "::1"), ("0:0::1", "::1"), ("Example.COM", "example.com")] {
            let body = format!(r#"{{"host":"{given}","port":1,"statuspath":"/"}}"#);
            assert_eq!(new_endpoint(body.as_bytes()).map(|e| e.host), Ok(kept.to_string()), "{given}");
        }
    }

    #[test]
    fn app_ids_are_dns_labels() {
        for ok in ["helloworld", "a", "my-app-2", &"a".repeat(63)] {
            assert!(check_app_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Hello", "a_b", "a.b", "a b", "ñ", &"a".repeat(64)] {
            assert!(check_app_id(bad).is_err(), "{bad:?}");
        }
    }
}
