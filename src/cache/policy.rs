//! Cache policy, kept apart from storage (RFC 9111): which responses a shared cache may store, how
//! long they stay fresh, what a request's own directives demand, and when a stored response answers
//! a client's conditional request with 304.

use std::time::{Duration, SystemTime};

use crate::clock;
use crate::http::trim;

/// Longest delta-seconds value honoured (RFC 9111 section 1.2.2 suggests 2^31).
const MAX_DELTA: u64 = 1 << 31;

/// Status codes a cache may store without explicit freshness (RFC 9110 section 15.1), less 206:
/// pibl does not cache partial content.
const HEURISTIC_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The `Cache-Control` directives pibl acts on, from a request or a response.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub only_if_cached: bool,
    pub no_transform: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub min_fresh: Option<u64>,
    /// `Some(None)`: `max-stale` without a limit.
    pub max_stale: Option<Option<u64>>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Parses every `Cache-Control` value of a message. Unknown directives are ignored; a malformed
    /// number makes the directive mean zero, the safe reading.
    pub fn parse<'a>(values: impl Iterator<Item = &'a [u8]>) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in values {
            for directive in split_directives(value) {
                let (name, arg) = match directive.iter().position(|&b| b == b'=') {
                    Some(i) => (trim(&directive[..i]), Some(unquote(trim(&directive[i + 1..])))),
                    None => (trim(directive), None),
                };
                let seconds = || Some(arg.and_then(parse_delta).unwrap_or(0));
                match name.to_ascii_lowercase().as_slice() {
                    b"no-store" => cc.no_store = true,
                    // The field-name forms (`no-cache="Set-Cookie"`) are taken as the whole directive:
                    // stricter than needed, never wrong.
                    b"no-cache" => cc.no_cache = true,
                    b"private" => cc.private = true,
                    b"public" => cc.public = true,
                    b"must-revalidate" => cc.must_revalidate = true,
                    b"proxy-revalidate" => cc.proxy_revalidate = true,
                    b"only-if-cached" => cc.only_if_cached = true,
                    b"no-transform" => cc.no_transform = true,
                    b"max-age" => cc.max_age = seconds(),
                    b"s-maxage" => cc.s_maxage = seconds(),
                    b"min-fresh" => cc.min_fresh = seconds(),
                    b"max-stale" => cc.max_stale = Some(arg.and_then(parse_delta)),
                    b"stale-while-revalidate" => cc.stale_while_revalidate = seconds(),
                    b"stale-if-error" => cc.stale_if_error = seconds(),
                    _ => {}
                }
            }
        }
        cc
    }
}

/// Splits a directive list on commas that are not inside a quoted string.
fn split_directives(value: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in value.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts.into_iter().map(trim).filter(|p| !p.is_empty()).collect()
}

fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

fn parse_delta(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Longer than any u64: saturate, as RFC 9111 asks for overflowing values.
    let n = std::str::from_utf8(v).ok()?.parse::<u64>().unwrap_or(MAX_DELTA);
    Some(n.min(MAX_DELTA))
}

/// The value of a response's first `Age` field (RFC 9111 section 5.1): of a list, the first member
/// counts; a value that is not a non-negative integer (`3600abc`, `-1`, `1.5`) is ignored.
pub fn parse_age(first_field: &[u8]) -> Option<u64> {
    let first = first_field.split(|&b| b == b',').next().unwrap_or(first_field);
    parse_delta(trim(first))
}

/// The time in a date field's value (`Date`, `Expires`, `If-Modified-Since`, ...), whitespace around it
/// allowed; `None` when it is not an HTTP date.
fn field_date(v: &[u8]) -> Option<SystemTime> {
    clock::parse_http_date(std::str::from_utf8(trim(v)).ok()?)
}

/// What the request asks of the cache.
#[derive(Debug, Default, Clone)]
pub struct RequestDirectives {
    pub cc: CacheControl,
    /// `Pragma: no-cache` without `Cache-Control` (RFC 9111 section 5.4).
    pub pragma_no_cache: bool,
    pub has_authorization: bool,
}

impl RequestDirectives {
    /// The request may not be answered from storage without asking the origin.
    pub fn wants_revalidation(&self) -> bool {
        self.cc.no_cache || self.pragma_no_cache || self.cc.max_age == Some(0)
    }
}

/// The facts about a stored response that decide freshness and reuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    /// How long the response is fresh, from its generation.
    pub lifetime: Duration,
    /// Its age when pibl received it (RFC 9111 section 4.2.3, `corrected_initial_age`).
    pub initial_age: Duration,
    /// Must be revalidated before every reuse (`no-cache`).
    pub no_cache: bool,
    /// May never be served stale (`must-revalidate`, `proxy-revalidate`, `s-maxage`).
    pub never_stale: bool,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// May answer a request that carries `Authorization`.
    pub shareable_with_auth: bool,
}

/// The response fields the storing decision reads.
#[derive(Debug, Default, Clone)]
pub struct ResponseFacts<'a> {
    pub status: u16,
    pub cache_control: CacheControl,
    pub expires: Option<&'a [u8]>,
    pub date: Option<&'a [u8]>,
    pub age: Option<&'a [u8]>,
    pub has_validator: bool,
    pub has_set_cookie: bool,
    pub vary_star: bool,
    pub has_content_range: bool,
}

/// When the exchange happened, for the age calculation.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    pub request_time: SystemTime,
    pub response_time: SystemTime,
}

/// Decides whether a response to a GET may be stored by a shared cache, and if so how fresh it is.
/// `ttl` is both the lifetime given to responses that have a validator but no explicit freshness,
/// and the cap on every lifetime.
pub fn storable(req: &RequestDirectives, res: &ResponseFacts<'_>, ttl: Duration, at: Exchange) -> Option<Freshness> {
    let cc = &res.cache_control;
    if ttl.is_zero() || req.cc.no_store || cc.no_store || cc.private || res.vary_star || res.has_content_range {
        return None;
    }
    if res.has_set_cookie && !cc.public {
        return None;
    }
    let shareable_with_auth = cc.public || cc.s_maxage.is_some() || cc.must_revalidate;
    if req.has_authorization && !shareable_with_auth {
        return None;
    }
    let date = res.date.and_then(field_date);
    let explicit = if let Some(s) = cc.s_maxage {
        Some(Duration::from_secs(s))
    } else if let Some(m) = cc.max_age {
        Some(Duration::from_secs(m))
    } else {
        res.expires.map(|e| match field_date(e) {
            // An invalid Expires means "already expired" (RFC 9111 section 5.3).
            None => Duration::ZERO,
            Some(expires) => expires.duration_since(date.unwrap_or(at.response_time)).unwrap_or(Duration::ZERO),
        })
    };
    let heuristic_status = HEURISTIC_STATUSES.contains(&res.status);
    let lifetime = match explicit {
        Some(lifetime) if (200..600).contains(&res.status) && res.status != 206 && res.status != 304 => lifetime,
        Some(_) => return None,
        None if heuristic_status && (res.has_validator || cc.public) => ttl,
        None => return None,
    };
    let lifetime = lifetime.min(ttl);
    // Without a validator, a response that is never fresh could only ever be fetched again.
    if (lifetime.is_zero() || cc.no_cache) && !res.has_validator {
        return None;
    }
    let apparent_age = date.and_then(|d| at.response_time.duration_since(d).ok()).unwrap_or(Duration::ZERO);
    let age_value = res.age.and_then(parse_age).map(Duration::from_secs).unwrap_or(Duration::ZERO);
    let response_delay = at.response_time.duration_since(at.request_time).unwrap_or(Duration::ZERO);
    let initial_age = apparent_age.max(age_value + response_delay);
    Some(Freshness {
        lifetime,
        initial_age,
        no_cache: cc.no_cache,
        never_stale: cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some(),
        stale_while_revalidate: Duration::from_secs(cc.stale_while_revalidate.unwrap_or(0)),
        stale_if_error: Duration::from_secs(cc.stale_if_error.unwrap_or(0)),
        shareable_with_auth,
    })
}

/// How a stored response may be used for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usability {
    /// Serve it as it is.
    Fresh,
    /// Serve it stale now and refresh it in the background (`stale-while-revalidate`).
    StaleWhileRevalidate,
    /// Ask the origin first (conditionally when it has a validator).
    Revalidate,
}

impl Freshness {
    /// Usability of a response of age `age` for a request with directives `req`.
    pub fn usability(&self, age: Duration, req: &RequestDirectives) -> Usability {
        if self.no_cache || req.wants_revalidation() {
            return Usability::Revalidate;
        }
        if req.cc.max_age.is_some_and(|max| age > Duration::from_secs(max)) {
            return Usability::Revalidate;
        }
        let fresh_for = self.lifetime.saturating_sub(age);
        if age < self.lifetime {
            let min_fresh = Duration::from_secs(req.cc.min_fresh.unwrap_or(0));
            return if fresh_for >= min_fresh { Usability::Fresh } else { Usability::Revalidate };
        }
        if self.never_stale {
            return Usability::Revalidate;
        }
        let staleness = age - self.lifetime;
        match req.cc.max_stale {
            Some(None) => return Usability::Fresh,
            Some(Some(limit)) if staleness <= Duration::from_secs(limit) => return Usability::Fresh,
            _ => {}
        }
        if staleness < self.stale_while_revalidate {
            Usability::StaleWhileRevalidate
        } else {
            Usability::Revalidate
        }
    }

    /// Whether a response of age `age` may stand in for an origin that failed (`stale-if-error`).
    pub fn usable_on_error(&self, age: Duration) -> bool {
        !self.never_stale && age < self.lifetime + self.stale_if_error
    }
}

/// Whether a client's `If-None-Match` / `If-Modified-Since` is satisfied by a stored response with
/// these validators, so the answer is 304 (RFC 9110 section 13.2.2).
pub fn not_modified(
    if_none_match: Option<&[u8]>,
    if_modified_since: Option<&[u8]>,
    etag: Option<&[u8]>,
    last_modified: Option<&[u8]>,
) -> bool {
    if let Some(inm) = if_none_match {
        let Some(etag) = etag else { return trim(inm) == b"*" };
        return trim(inm) == b"*" || entity_tags(inm).any(|tag| weak_eq(tag, etag));
    }
    match (if_modified_since.and_then(field_date), last_modified.and_then(field_date)) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// What a HEAD answer and a stored GET answer are compared by (RFC 9111 section 4.3.5).
#[derive(Debug, Default, Clone, Copy)]
pub struct Validators<'a> {
    pub etag: Option<&'a [u8]>,
    pub last_modified: Option<&'a [u8]>,
    pub content_length: Option<u64>,
}

/// Whether a 200 to a HEAD describes the stored GET response, so its fields may update it: it carries
/// a validator, every validator it carries equals the stored one, and so does its `Content-Length` when
/// it has one. Otherwise the stored response is no longer to be trusted (section 4.3.5).
pub fn head_updates_stored(stored: Validators<'_>, head: Validators<'_>) -> bool {
    let same = |h: Option<&[u8]>, s: Option<&[u8]>| h.is_none() || h.map(trim) == s.map(trim);
    (head.etag.is_some() || head.last_modified.is_some())
        && same(head.etag, stored.etag)
        && same(head.last_modified, stored.last_modified)
        && (head.content_length.is_none() || head.content_length == stored.content_length)
}

/// The elements of an entity-tag list (`If-None-Match`, RFC 9110 section 8.8.3): `[W/]"…"`, where
/// the quoted part may itself hold commas, so the list cannot be split on them. An element that is
/// not a well-formed entity-tag (an unquoted tag some clients send) runs to the next comma, as
/// before, so it can still equal a stored tag of the same malformed shape.
fn entity_tags(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = list;
    std::iter::from_fn(move || {
        // Empty elements and the whitespace around elements are allowed (RFC 9110 section 5.6.1).
        while let [b' ' | b'\t' | b',', tail @ ..] = rest {
            rest = tail;
        }
        if rest.is_empty() {
            return None;
        }
        let opaque_at = if rest.starts_with(b"W/") { 2 } else { 0 };
        let quoted_len = match rest.get(opaque_at) {
            Some(b'"') => rest[opaque_at + 1..].iter().position(|&b| b == b'"').map(|end| opaque_at + end + 2),
            _ => None,
        };
        let after = |len: usize| trim(&rest[len..]).first().is_none_or(|&b| b == b',');
        let len = match quoted_len {
            // A well-formed tag is followed by the next element or nothing.
            Some(len) if after(len) => len,
            _ => rest.iter().position(|&b| b == b',').unwrap_or(rest.len()),
        };
        let (tag, tail) = rest.split_at(len);
        rest = tail;
        Some(trim(tag))
    })
}

/// Weak comparison of entity tags: equal opaque tags, whatever their `W/` prefix.
fn weak_eq(a: &[u8], b: &[u8]) -> bool {
    let strip = |t: &[u8]| -> Vec<u8> { trim(t).strip_prefix(b"W/").unwrap_or(trim(t)).to_vec() };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(s: &str) -> CacheControl {
        CacheControl::parse(std::iter::once(s.as_bytes()))
    }

    #[test]
    fn directives_parse_with_quotes_and_bad_numbers() {
        let c = cc(r#"public, max-age=60, no-cache="Set-Cookie, X", s-maxage="30", stale-if-error=x"#);
        assert!(c.public && c.no_cache);
        assert_eq!((c.max_age, c.s_maxage, c.stale_if_error), (Some(60), Some(30), Some(0)));
        assert_eq!(cc("max-stale").max_stale, Some(None));
        assert_eq!(cc("MAX-AGE=99999999999999999999999").max_age, Some(MAX_DELTA));
    }

    fn at() -> Exchange {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Exchange { request_time: t, response_time: t }
    }

    fn facts(status: u16, cache_control: &str) -> ResponseFacts<'static> {
        ResponseFacts { status, cache_control: cc(cache_control), ..Default::default() }
    }

    const TTL: Duration = Duration::from_secs(600);

    #[test]
    fn storing_rules() {
        let req = RequestDirectives::default();
        let lifetime = |f: &ResponseFacts<'_>| storable(&req, f, TTL, at()).map(|f| f.lifetime.as_secs());
        assert_eq!(lifetime(&facts(200, "max-age=60")), Some(60));
        assert_eq!(lifetime(&facts(200, "max-age=60, s-maxage=10")), Some(10));
        assert_eq!(lifetime(&facts(200, "max-age=6000")), Some(600), "ttl caps every lifetime");
        assert_eq!(lifetime(&facts(200, "")), None, "no freshness, no validator: not reused");
        let mut validated = facts(200, "");
        validated.has_validator = true;
        assert_eq!(lifetime(&validated), Some(600), "validator only: ttl");
        for cc in ["no-store", "private", "max-age=60, private"] {
            assert_eq!(lifetime(&facts(200, cc)), None, "{cc}");
        }
        assert_eq!(lifetime(&facts(500, "")), None);
        assert_eq!(lifetime(&facts(500, "max-age=5")), Some(5), "explicit freshness makes any final status storable");
        let mut cookie = facts(200, "max-age=60");
        cookie.has_set_cookie = true;
        assert_eq!(lifetime(&cookie), None);
        cookie.cache_control.public = true;
        assert_eq!(lifetime(&cookie), Some(60));
        let mut star = facts(200, "max-age=60");
        star.vary_star = true;
        assert_eq!(lifetime(&star), None);
        assert_eq!(storable(&req, &facts(200, "max-age=60"), Duration::ZERO, at()), None, "ttl 0 turns caching off");
    }

    #[test]
    fn authorization_needs_explicit_permission() {
        let req = RequestDirectives { has_authorization: true, ..Default::default() };
        assert!(storable(&req, &facts(200, "max-age=60"), TTL, at()).is_none());
        for ok in ["public, max-age=60", "s-maxage=60", "must-revalidate, max-age=60"] {
            assert!(storable(&req, &facts(200, ok), TTL, at()).is_some(), "{ok}");
        }
    }

    #[test]
    fn expires_and_age_are_counted() {
        let mut f = facts(200, "");
        f.date = Some(b"Tue, 14 Nov 2023 22:13:20 GMT");
        f.expires = Some(b"Tue, 14 Nov 2023 22:14:20 GMT");
        f.age = Some(b"5");
        let fresh = storable(&RequestDirectives::default(), &f, TTL, at()).unwrap();
        assert_eq!((fresh.lifetime.as_secs(), fresh.initial_age.as_secs()), (60, 5));
        f.expires = Some(b"0");
        assert!(storable(&RequestDirectives::default(), &f, TTL, at()).is_none(), "invalid Expires is already stale");
    }

    #[test]
    fn section_5_1_age_takes_the_first_member_and_ignores_invalid_values() {
        assert_eq!(parse_age(b"7200, 0"), Some(7200), "a list: the first member");
        assert_eq!(parse_age(b" 0 ,7200"), Some(0));
        for invalid in [&b"3600abc"[..], b"-7200", b"7200.0", b"abc", b""] {
            assert_eq!(parse_age(invalid), None, "{:?}", String::from_utf8_lossy(invalid));
        }
        assert_eq!(parse_age(b"2147483649"), Some(MAX_DELTA));
        let mut f = facts(200, "max-age=3600");
        f.age = Some(b"7200, 0");
        let stored = storable(&RequestDirectives::default(), &f, Duration::from_secs(1 << 20), at()).unwrap();
        assert_eq!(stored.initial_age.as_secs(), 7200);
    }

    #[test]
    fn section_4_3_5_a_head_answer_updates_only_a_matching_stored_get() {
        let stored = Validators { etag: Some(b"\"v1\""), last_modified: None, content_length: Some(10) };
        let head = |etag: &'static [u8], len| Validators { etag: Some(etag), last_modified: None, content_length: len };
        assert!(head_updates_stored(stored, head(b"\"v1\"", Some(10))));
        assert!(head_updates_stored(stored, head(b"\"v1\"", None)));
        assert!(!head_updates_stored(stored, head(b"\"v2\"", Some(10))), "another etag");
        assert!(!head_updates_stored(stored, head(b"\"v1\"", Some(11))), "another length");
        assert!(!head_updates_stored(stored, Validators::default()), "no validator: nothing to compare");
    }

    #[test]
    fn usability_by_age_and_request() {
        let mut f = facts(200, "max-age=60, stale-while-revalidate=30, stale-if-error=100");
        f.has_validator = true;
        let fresh = storable(&RequestDirectives::default(), &f, TTL, at()).unwrap();
        let plain = RequestDirectives::default();
        let s = Duration::from_secs;
        assert_eq!(fresh.usability(s(10), &plain), Usability::Fresh);
        assert_eq!(fresh.usability(s(70), &plain), Usability::StaleWhileRevalidate);
        assert_eq!(fresh.usability(s(95), &plain), Usability::Revalidate);
        assert!(fresh.usable_on_error(s(150)) && !fresh.usable_on_error(s(170)));
        let no_cache = RequestDirectives { cc: cc("no-cache"), ..Default::default() };
        assert_eq!(fresh.usability(s(1), &no_cache), Usability::Revalidate);
        let pragma = RequestDirectives { pragma_no_cache: true, ..Default::default() };
        assert_eq!(fresh.usability(s(1), &pragma), Usability::Revalidate);
        let max_age = RequestDirectives { cc: cc("max-age=5"), ..Default::default() };
        assert_eq!(fresh.usability(s(10), &max_age), Usability::Revalidate);
        let min_fresh = RequestDirectives { cc: cc("min-fresh=55"), ..Default::default() };
        assert_eq!(fresh.usability(s(10), &min_fresh), Usability::Revalidate);
        let max_stale = RequestDirectives { cc: cc("max-stale=100"), ..Default::default() };
        assert_eq!(fresh.usability(s(95), &max_stale), Usability::Fresh);

        let strict = storable(&plain, &facts(200, "max-age=60, must-revalidate, stale-if-error=100"), TTL, at());
        let mut strict = strict.unwrap_or_else(|| fresh.clone());
        strict.never_stale = true;
        assert_eq!(strict.usability(s(70), &max_stale), Usability::Revalidate);
        assert!(!strict.usable_on_error(s(70)));
    }

    #[test]
    fn entity_tag_lists_keep_commas_inside_tags() {
        let list = |v: &'static [u8]| entity_tags(v).collect::<Vec<_>>();
        assert_eq!(list(b"\"a,b\""), [&b"\"a,b\""[..]]);
        assert_eq!(list(b" W/\"a, b\" ,, \"c\","), [&b"W/\"a, b\""[..], b"\"c\""]);
        assert_eq!(list(b"\"x\",W/\"\""), [&b"\"x\""[..], b"W/\"\""]);
        // Not entity-tags: each runs to the next comma, as a plain token.
        assert_eq!(list(b"abc, \"d"), [&b"abc"[..], b"\"d"]);
        assert_eq!(list(b"\"a\"b, \"c\""), [&b"\"a\"b"[..], b"\"c\""]);
        assert!(list(b" , ").is_empty());
        let etag: &[u8] = b"W/\"a,b\"";
        assert!(not_modified(Some(b"\"x\", \"a,b\""), None, Some(etag), None));
        assert!(!not_modified(Some(b"\"a\", \"b\""), None, Some(b"\"a,b\""), None));
        assert!(!not_modified(Some(b"\"a,b\""), None, Some(b"\"a\""), None));
    }

    #[test]
    fn conditional_requests() {
        let etag: &[u8] = b"\"v1\"";
        assert!(not_modified(Some(b"\"v0\", W/\"v1\""), None, Some(etag), None));
        assert!(!not_modified(Some(b"\"v2\""), Some(b"Tue, 14 Nov 2023 22:13:20 GMT"), Some(etag), None));
        assert!(not_modified(Some(b"*"), None, Some(etag), None));
        let lm: &[u8] = b"Tue, 14 Nov 2023 22:13:20 GMT";
        assert!(not_modified(None, Some(b"Tue, 14 Nov 2023 22:13:20 GMT"), None, Some(lm)));
        assert!(!not_modified(None, Some(b"Tue, 14 Nov 2023 22:13:19 GMT"), None, Some(lm)));
    }
}
