//! Cache fields (`pibl::cache::policy` and `pibl::cache::response_facts`): `Cache-Control` from
//! requests and responses, `Expires`/`Date`/`Last-Modified`/`If-Modified-Since` dates, `Age`,
//! `ETag`/`If-None-Match`, `Vary`, and the storing and reuse decisions built on them.
//!
//! Properties:
//! - `Cache-Control`: every delta is capped at 2^31; the parsed directives written back parse to the
//!   same directives; several field lines mean the same as one comma-joined line (RFC 9110 5.3);
//! - dates: a parsed HTTP date formatted again parses to the same instant;
//! - storing (RFC 9111 section 3): never `no-store`/`private`/`Vary: *`/partial/`Set-Cookie` without
//!   `public`/`Authorization` without explicit permission; the lifetime never passes `ttl`; nothing
//!   is stored that could never be reused;
//! - reuse (RFC 9111 section 4): `usability` and `usable_on_error` agree with a reference model
//!   written from the RFC, for any age, and a request's `no-cache`/`max-age=0` always revalidates;
//! - conditionals (RFC 9110 section 13.1): `*` matches any stored tag; a stored tag sent back (weak
//!   or strong) matches; `If-Modified-Since` equal to `Last-Modified` is not modified.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use pibl::cache::policy::{
    not_modified, storable, CacheControl, Exchange, RequestDirectives, Usability,
};
use pibl::cache::response_facts;
use pibl_fuzz::Cursor;

const MAX_DELTA: u64 = 1 << 31;

/// Directives written back as a `Cache-Control` value.
/// An HTTP date from a field's bytes, as the cache policy reads `Date`, `Expires` and
/// `Last-Modified`: trimmed, then `clock::parse_http_date`.
fn parse_http_date(value: &[u8]) -> Option<std::time::SystemTime> {
    std::str::from_utf8(value).ok().and_then(|text| pibl::clock::parse_http_date(text.trim()))
}

fn render(cc: &CacheControl) -> String {
    let mut parts: Vec<String> = Vec::new();
    let flags = [
        (cc.no_store, "no-store"),
        (cc.no_cache, "no-cache"),
        (cc.private, "private"),
        (cc.public, "public"),
        (cc.must_revalidate, "must-revalidate"),
        (cc.proxy_revalidate, "proxy-revalidate"),
        (cc.only_if_cached, "only-if-cached"),
    ];
    parts.extend(flags.iter().filter(|(on, _)| *on).map(|(_, name)| name.to_string()));
    let deltas = [
        (cc.max_age, "max-age"),
        (cc.s_maxage, "s-maxage"),
        (cc.min_fresh, "min-fresh"),
        (cc.stale_while_revalidate, "stale-while-revalidate"),
        (cc.stale_if_error, "stale-if-error"),
    ];
    parts.extend(deltas.iter().filter_map(|(v, name)| v.map(|n| format!("{name}={n}"))));
    match cc.max_stale {
        Some(None) => parts.push("max-stale".into()),
        Some(Some(n)) => parts.push(format!("max-stale={n}")),
        None => {}
    }
    parts.join(", ")
}

fn check_cache_control(values: &[&[u8]]) -> CacheControl {
    let cc = CacheControl::parse(values.iter().copied());
    for d in
        [cc.max_age, cc.s_maxage, cc.min_fresh, cc.stale_while_revalidate, cc.stale_if_error, cc.max_stale.flatten()]
    {
        assert!(d.is_none_or(|d| d <= MAX_DELTA), "delta {d:?} passed 2^31");
    }
    let text = render(&cc);
    assert_eq!(CacheControl::parse(std::iter::once(text.as_bytes())), cc, "{text:?} does not parse back");
    if values.iter().all(|v| !v.contains(&b'"') && !v.contains(&b'\\')) {
        let joined = values.join(&b", "[..]);
        assert_eq!(CacheControl::parse(std::iter::once(&joined[..])), cc, "field lines and their comma join differ");
    }
    cc
}

/// RFC 9111 section 4.2 and RFC 5861, for a request without directives of its own.
fn expected_usability(f: &pibl::cache::policy::Freshness, age: Duration) -> Usability {
    if f.no_cache {
        Usability::Revalidate
    } else if age < f.lifetime {
        Usability::Fresh
    } else if f.never_stale {
        Usability::Revalidate
    } else if age - f.lifetime < f.stale_while_revalidate {
        Usability::StaleWhileRevalidate
    } else {
        Usability::Revalidate
    }
}

/// An entity-tag as RFC 9110 section 8.8.3 writes it: optional `W/`, then a quoted opaque tag.
fn is_entity_tag(v: &[u8]) -> bool {
    let v = v.strip_prefix(b"W/").unwrap_or(v);
    v.len() >= 2
        && v[0] == b'"'
        && v[v.len() - 1] == b'"'
        && v[1..v.len() - 1].iter().all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
}

fuzz_target!(|data: &[u8]| {
    let mut cur = Cursor::new(data);
    let status = cur.u16() % 1000;
    // ttl comes from the config, which caps durations at one year.
    let ttl = Duration::from_secs(u64::from(cur.u32()) % (365 * 24 * 3600 + 1));
    let response_time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000 + u64::from(cur.u32()));
    let request_time = response_time - Duration::from_secs(u64::from(cur.u16()));
    let age = Duration::from_millis(cur.u64() % (1 << 45));
    let text = cur.rest();

    // Lines `name: value`; those starting with `>` belong to the request.
    let mut request: Vec<(&str, &[u8])> = Vec::new();
    let mut response: Vec<(&str, &[u8])> = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let (to_request, line) = match line.strip_prefix(b">") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let Ok(name) = std::str::from_utf8(&line[..colon]) else { continue };
        let value = pibl::http::trim(&line[colon + 1..]);
        if to_request {
            request.push((name, value))
        } else {
            response.push((name, value))
        }
    }
    let find = |list: &[(&str, &[u8])], name: &str| -> Vec<Vec<u8>> {
        list.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.to_vec()).collect()
    };

    let res_cc_values = find(&response, "cache-control");
    let res_cc = check_cache_control(&res_cc_values.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let req_cc_values = find(&request, "cache-control");
    let req_cc = check_cache_control(&req_cc_values.iter().map(Vec::as_slice).collect::<Vec<_>>());

    for (_, value) in request.iter().chain(response.iter()) {
        if let Some(t) = parse_http_date(value) {
            let again = httpdate::fmt_http_date(t);
            assert_eq!(parse_http_date(again.as_bytes()), Some(t), "{again:?} does not parse back");
        }
    }

    // Storing.
    let req = RequestDirectives {
        cc: req_cc.clone(),
        pragma_no_cache: false,
        has_authorization: request.iter().any(|(n, _)| n.eq_ignore_ascii_case("authorization")),
    };
    let facts = response_facts(status, response.iter().copied());
    assert_eq!(facts.cache_control, res_cc);
    let at = Exchange { request_time, response_time };
    if let Some(f) = storable(&req, &facts, ttl, at) {
        assert!(!ttl.is_zero() && f.lifetime <= ttl, "lifetime {:?} passed ttl {ttl:?}", f.lifetime);
        assert!(!req.cc.no_store && !res_cc.no_store && !res_cc.private, "stored despite no-store/private");
        assert!(!facts.vary_star && !facts.has_content_range, "stored Vary: * or partial content");
        assert!(!facts.has_set_cookie || res_cc.public, "stored Set-Cookie without public");
        assert!(!req.has_authorization || f.shareable_with_auth, "stored an answer to Authorization");
        assert!(facts.has_validator || (!f.lifetime.is_zero() && !f.no_cache), "stored what can never be reused");
        assert!((200..600).contains(&status) && status != 206 && status != 304, "stored status {status}");
        assert_eq!(f.never_stale, res_cc.must_revalidate || res_cc.proxy_revalidate || res_cc.s_maxage.is_some());

        let plain = RequestDirectives::default();
        assert_eq!(f.usability(age, &plain), expected_usability(&f, age), "age {age:?}, {f:?}");
        assert_eq!(f.usable_on_error(age), !f.never_stale && age < f.lifetime + f.stale_if_error);
        if req.cc.no_cache || req.cc.max_age == Some(0) {
            assert_eq!(f.usability(age, &req), Usability::Revalidate);
        }
        let _ = f.usability(age, &req);
    }

    // Conditionals against the stored validators.
    let etag = find(&response, "etag").into_iter().next();
    let last_modified = find(&response, "last-modified").into_iter().next();
    if let Some(etag) = &etag {
        assert!(not_modified(Some(b"*"), None, Some(etag), None), "* did not match a stored tag");
        // Entity-tags may hold commas (RFC 9110 section 8.8.3): F4, fixed.
        if is_entity_tag(etag) {
            assert!(not_modified(Some(etag), None, Some(etag), None), "a stored tag sent back did not match");
            let weak = [&b"W/"[..], etag.strip_prefix(b"W/").unwrap_or(etag)].concat();
            assert!(not_modified(Some(&weak), None, Some(etag), None), "weak comparison failed");
        }
    }
    if let Some(lm) = &last_modified {
        if parse_http_date(lm).is_some() {
            assert!(not_modified(None, Some(lm), etag.as_deref(), Some(lm)) || etag.is_some());
        }
    }
    for inm in find(&request, "if-none-match") {
        let ims = find(&request, "if-modified-since").into_iter().next();
        let _ = not_modified(Some(&inm), ims.as_deref(), etag.as_deref(), last_modified.as_deref());
    }
});
