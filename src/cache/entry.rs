//! One stored response ([`Entry`]): its status line and end-to-end header fields prebuilt as the head
//! of every answer, its shared body, its freshness and `Vary` values, and when it was stored; plus the
//! readings of a response's header fields that deciding to store it needs ([`response_facts`],
//! [`vary_names`]). Where entries are kept and evicted is the `shards` module's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::compress::{self, Coding};
use super::policy::{CacheControl, Freshness, ResponseFacts};
use crate::http::is_hop_by_hop;

/// Bookkeeping bytes counted per entry besides its head, key and body.
const ENTRY_OVERHEAD: usize = 256;

/// The request header values a variant was stored for, by `Vary` field name (lower case).
pub type VaryValues = Vec<(String, Option<Vec<u8>>)>;

/// The routing decision that produced a stored answer. A stored answer is only ever served for the
/// same decision: once an app is deleted or re-created, its endpoints change, or a reload points a
/// prefix elsewhere, the URL's old entries stop matching and are dropped at their next lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// Where the request went and as what: the kind of upstream (with an app's database key), its
    /// backends' addresses and the target sent. Compared whole, never hashed.
    pub route: String,
    /// The app of the management API that answered, for purges scoped to an owner's apps.
    pub app: Option<String>,
}

/// A stored answer in one content coding, made when it is stored so that a hit costs no
/// compression: its head (with `Content-Encoding`, `Vary: Accept-Encoding`, a weak `ETag`) and body.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub head: Vec<u8>,
    pub body: Arc<[u8]>,
}

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    pub status: u16,
    /// Status line and end-to-end header fields, each line ending in CRLF, without the empty line;
    /// `Age`, framing and `Connection` are added per answer.
    pub head: Vec<u8>,
    reason: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    pub body: Arc<[u8]>,
    pub freshness: Freshness,
    /// When it was stored or last revalidated.
    pub stored_at: Instant,
    pub(super) vary: VaryValues,
    /// The routing decision it came from.
    pub(super) origin: Origin,
    /// `CDN-Cache-Control` and `Pibl-Cache-Control` are kept (a 304's refresh reads them again) but
    /// left out of the head sent to clients.
    hide_targeted: bool,
    /// Its encoded variants by [`Coding::index`]; any present makes every head of it carry
    /// `Vary: Accept-Encoding`.
    encoded: [Option<Encoded>; 2],
    // Bookkeeping of the storage: which insert this is (unique per cache) and the use tick that is
    // its place in the least-recently-used order.
    pub(super) id: u64,
    pub(super) last_used: AtomicU64,
    /// A background refresh is under way.
    refreshing: AtomicBool,
    /// Bytes counted against the cache's budget: head, body and [`ENTRY_OVERHEAD`].
    pub(super) size: usize,
}

impl Entry {
    /// Builds an entry from a response's status, reason and header fields.
    pub fn new<'a>(
        status: u16,
        reason: &[u8],
        headers: impl Iterator<Item = (&'a str, &'a [u8])>,
        body: Arc<[u8]>,
        freshness: Freshness,
        vary: VaryValues,
        now: Instant,
    ) -> Entry {
        let headers = stored_fields(headers).into_iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
        Entry::assemble(status, reason.to_vec(), headers, body, freshness, vary, now)
    }

    /// The same entry, marked as produced by the routing decision `origin`.
    pub fn from_origin(mut self, origin: Origin) -> Entry {
        self.origin = origin;
        self.recount_size();
        self
    }

    /// The same entry, its head without the targeted cache-control fields when `hide` is set.
    pub fn hiding_targeted(mut self, hide: bool) -> Entry {
        if hide != self.hide_targeted {
            self.hide_targeted = hide;
            self.rebuild_head();
        }
        self
    }

    /// Whether the backend tagged this answer `tag`, in `Cache-Tag` (comma-separated, as Cloudflare
    /// reads it) or `Surrogate-Key` (space-separated, as Fastly reads it).
    pub fn has_tag(&self, tag: &str) -> bool {
        let tag = tag.as_bytes();
        !tag.is_empty()
            && self.headers().any(|(name, value)| {
                if name.eq_ignore_ascii_case("cache-tag") {
                    crate::http::tokens(value).any(|t| t == tag)
                } else if name.eq_ignore_ascii_case("surrogate-key") {
                    value.split(|b| b.is_ascii_whitespace()).any(|t| t == tag)
                } else {
                    false
                }
            })
    }

    /// The routing decision it came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    fn assemble(
        status: u16,
        reason: Vec<u8>,
        headers: Vec<(String, Vec<u8>)>,
        body: Arc<[u8]>,
        freshness: Freshness,
        vary: VaryValues,
        now: Instant,
    ) -> Entry {
        let mut entry = Entry {
            status,
            head: Vec::new(),
            reason,
            headers,
            body,
            freshness,
            stored_at: now,
            vary,
            origin: Origin::default(),
            hide_targeted: false,
            encoded: [None, None],
            id: 0,
            last_used: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
            size: 0,
        };
        entry.rebuild_head();
        entry
    }

    fn rebuild_head(&mut self) {
        self.head = self.build_head(None);
        for coding in Coding::ALL {
            if let Some(body) = self.encoded[coding.index()].as_ref().map(|e| Arc::clone(&e.body)) {
                let head = self.build_head(Some(coding));
                self.encoded[coding.index()] = Some(Encoded { head, body });
            }
        }
        self.recount_size();
    }

    /// Bytes counted against the cache's budget: heads, bodies (encoded ones too), its origin.
    fn recount_size(&mut self) {
        let encoded: usize = self.encoded.iter().flatten().map(|e| e.head.len() + e.body.len()).sum();
        let origin = self.origin.route.len() + self.origin.app.as_ref().map_or(0, String::len);
        self.size = ENTRY_OVERHEAD + self.head.len() + self.body.len() + encoded + origin;
    }

    /// The head of the answer in `coding` (identity for `None`).
    fn build_head(&self, coding: Option<Coding>) -> Vec<u8> {
        let varies = self.encoded.iter().any(Option::is_some);
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(format!("HTTP/1.1 {} ", self.status).as_bytes());
        head.extend_from_slice(&self.reason);
        head.extend_from_slice(b"\r\n");
        let mut vary_written = false;
        for (name, value) in &self.headers {
            if self.hide_targeted && is_targeted_cache_control(name) {
                continue;
            }
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            if coding.is_some() && name.eq_ignore_ascii_case("etag") && !value.starts_with(b"W/") {
                // Another encoding is another representation: its tag may only match weakly.
                head.extend_from_slice(b"W/");
            }
            head.extend_from_slice(value);
            if varies && name.eq_ignore_ascii_case("vary") && !vary_written {
                if !crate::http::tokens(value).any(|t| t.eq_ignore_ascii_case(b"accept-encoding")) {
                    head.extend_from_slice(b", Accept-Encoding");
                }
                vary_written = true;
            }
            head.extend_from_slice(b"\r\n");
        }
        if varies && !vary_written {
            head.extend_from_slice(b"Vary: Accept-Encoding\r\n");
        }
        if let Some(coding) = coding {
            head.extend_from_slice(format!("Content-Encoding: {}\r\n", coding.token()).as_bytes());
        }
        head
    }

    /// The same entry with its gzip and brotli variants made now, each kept only when smaller than
    /// the body itself. The caller has checked that it may be compressed ([`compress::may_compress`]).
    pub fn with_encodings(mut self) -> Entry {
        for coding in Coding::ALL {
            match compress::encode(coding, &self.body) {
                Ok(body) if body.len() < self.body.len() => {
                    self.encoded[coding.index()] = Some(Encoded { head: Vec::new(), body: body.into() });
                }
                Ok(_) => {}
                Err(e) => log::warn!("cache: {} encoding failed: {e}", coding.token()),
            }
        }
        self.rebuild_head();
        self
    }

    /// The stored variant in `coding`, if one was made.
    pub fn encoded(&self, coding: Coding) -> Option<&Encoded> {
        self.encoded[coding.index()].as_ref()
    }

    /// The stored header fields.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    pub fn has_validator(&self) -> bool {
        self.header("etag").is_some() || self.header("last-modified").is_some()
    }

    /// Current age (RFC 9111 section 4.2.3).
    pub fn age(&self, now: Instant) -> Duration {
        self.freshness.initial_age + now.saturating_duration_since(self.stored_at)
    }

    /// A copy with the header fields of a 304 merged in (RFC 9111 section 4.3.4), a new freshness
    /// and a new storage time.
    pub fn refreshed<'a>(
        &self,
        update: impl Iterator<Item = (&'a str, &'a [u8])>,
        freshness: Freshness,
        now: Instant,
    ) -> Entry {
        let mut headers = self.headers.clone();
        let update = stored_fields(update);
        headers.retain(|(name, _)| !update.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)));
        headers.extend(update.iter().map(|(n, v)| (n.to_string(), v.to_vec())));
        Entry::assemble(
            self.status,
            self.reason.clone(),
            headers,
            Arc::clone(&self.body),
            freshness,
            self.vary.clone(),
            now,
        )
        .from_origin(self.origin.clone())
        .hiding_targeted(self.hide_targeted)
        .keeping_encodings(&self.encoded)
    }

    fn keeping_encodings(mut self, encoded: &[Option<Encoded>; 2]) -> Entry {
        if encoded.iter().any(Option::is_some) {
            self.encoded = encoded.clone();
            self.rebuild_head();
        }
        self
    }

    /// The request values this variant was stored for.
    pub fn vary_values(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.vary.iter().map(|(n, v)| (n.as_str(), v.as_deref()))
    }

    /// The value of one `Vary` field this variant was stored for.
    pub fn vary_value(&self, name: &str) -> Option<Vec<u8>> {
        self.vary.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.clone())
    }

    /// Gives up a claimed refresh (it failed or could not be queued), so a later request may try.
    pub fn release_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }

    /// Claims the single background refresh of this entry; false if one is already running.
    pub fn claim_refresh(&self) -> bool {
        !self.refreshing.swap(true, Ordering::AcqRel)
    }

    /// Whether this variant was stored for the request header values `request_values` gives.
    pub(super) fn matches(&self, request_values: &dyn Fn(&str) -> Option<Vec<u8>>) -> bool {
        self.vary.iter().all(|(name, value)| request_values(name) == *value)
    }
}

/// Whether a response field is kept with a stored response: not hop-by-hop, and not the per-answer
/// `Age` and `X-Cache`, which pibl writes itself.
fn is_stored_field(name: &str) -> bool {
    !is_hop_by_hop(name) && !name.eq_ignore_ascii_case("age") && !name.eq_ignore_ascii_case("x-cache")
}

/// The fields of a response a cache keeps (RFC 9111 section 3.1): none that is hop-by-hop, by the
/// fixed list or because the response's own `Connection` field names it (RFC 9110 section 7.6.1).
fn stored_fields<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<(&'a str, &'a [u8])> {
    let all: Vec<(&str, &[u8])> = headers.collect();
    let mut connection = crate::http::ConnectionOptions::default();
    for (_, value) in all.iter().filter(|(n, _)| n.eq_ignore_ascii_case("connection")) {
        connection.add(value);
    }
    all.into_iter().filter(|(name, _)| is_stored_field(name) && !connection.drops(name)).collect()
}

/// The targeted cache-control fields pibl obeys (RFC 9213), most specific first.
pub const TARGETED_CACHE_CONTROL: [&str; 2] = ["pibl-cache-control", "cdn-cache-control"];

/// Whether `name` is one of [`TARGETED_CACHE_CONTROL`].
pub fn is_targeted_cache_control(name: &str) -> bool {
    TARGETED_CACHE_CONTROL.iter().any(|t| t.eq_ignore_ascii_case(name))
}

/// The directives that rule a shared cache's handling of a response: those of the most specific
/// valid targeted field present (RFC 9213 section 2.1: then `Cache-Control` is ignored), else
/// `Cache-Control`'s.
pub fn governing_cache_control<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])> + Clone) -> CacheControl {
    let values =
        |name: &'static str| headers.clone().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    for name in TARGETED_CACHE_CONTROL {
        let mut present = values(name).peekable();
        if present.peek().is_some() && values(name).all(is_valid_targeted) {
            return CacheControl::parse(values(name));
        }
    }
    CacheControl::parse(values("cache-control"))
}

/// A targeted field is a Structured Fields dictionary (RFC 8941 section 3.2): members with a
/// lower-case key, alone or with `=` and a value. Anything else makes the whole field invalid, and
/// an invalid targeted field is ignored.
fn is_valid_targeted(value: &[u8]) -> bool {
    let mut members = value.split(|&b| b == b',').map(crate::http::trim).peekable();
    members.peek().is_some()
        && members.all(|member| {
            let (key, arg) = match member.iter().position(|&b| b == b'=') {
                Some(i) => (&member[..i], Some(&member[i + 1..])),
                None => (member, None),
            };
            let key_ok = matches!(key.first(), Some(b'a'..=b'z' | b'*'))
                && key.iter().all(|&b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*'));
            key_ok && arg.is_none_or(|a| !a.is_empty() && !a.contains(&b' '))
        })
}

/// The facts the storing policy needs, read from any list of header fields.
pub fn response_facts<'a>(
    status: u16,
    headers: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
) -> ResponseFacts<'a> {
    let find = |name: &str| headers.clone().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    ResponseFacts {
        status,
        cache_control: governing_cache_control(headers.clone()),
        expires: find("expires"),
        date: find("date"),
        age: find("age"),
        has_validator: find("etag").is_some() || find("last-modified").is_some(),
        has_set_cookie: find("set-cookie").is_some(),
        vary_star: headers
            .clone()
            .filter(|(n, _)| n.eq_ignore_ascii_case("vary"))
            .any(|(_, v)| crate::http::tokens(v).any(|t| t == b"*")),
        has_content_range: find("content-range").is_some(),
    }
}

/// The `Vary` field names of a response, lower-cased.
pub fn vary_names<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<String> {
    let mut names = Vec::new();
    for (_, value) in headers.filter(|(n, _)| n.eq_ignore_ascii_case("vary")) {
        for token in crate::http::tokens(value) {
            let name = String::from_utf8_lossy(token).to_ascii_lowercase();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Fresh for `secs`, with no extensions: the plainest stored answer's timing.
    pub(crate) fn freshness(secs: u64) -> Freshness {
        Freshness {
            lifetime: Duration::from_secs(secs),
            initial_age: Duration::ZERO,
            no_cache: false,
            never_stale: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            shareable_with_auth: false,
        }
    }

    /// A 200 text answer of `body` bytes, fresh for a minute, as the storage tests need one.
    pub(crate) fn entry(body: usize, vary: VaryValues, now: Instant) -> Entry {
        let headers = [("Content-Type", &b"text/plain"[..]), ("Connection", b"close"), ("Age", b"3")];
        Entry::new(200, b"OK", headers.into_iter(), vec![7u8; body].into(), freshness(60), vary, now)
    }

    #[test]
    fn head_is_prebuilt_without_hop_by_hop_fields() {
        let e = entry(3, Vec::new(), Instant::now());
        assert_eq!(e.head, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n");
    }

    #[test]
    fn rfc_9213_the_most_specific_valid_targeted_field_rules() {
        let cc = |h: &[(&'static str, &'static [u8])]| governing_cache_control(h.iter().copied());
        let plain = [("Cache-Control", &b"max-age=60"[..])];
        assert_eq!(cc(&plain).max_age, Some(60));
        let cdn = [("Cache-Control", &b"no-store"[..]), ("CDN-Cache-Control", b"max-age=30")];
        assert_eq!((cc(&cdn).no_store, cc(&cdn).max_age), (false, Some(30)), "Cache-Control is ignored");
        let both = [("CDN-Cache-Control", &b"no-store"[..]), ("Pibl-Cache-Control", b"max-age=5, stale-if-error=9")];
        assert_eq!((cc(&both).no_store, cc(&both).max_age, cc(&both).stale_if_error), (false, Some(5), Some(9)));
        for invalid in [&b"Max-Age=60"[..], b"max-age=", b"max-age=60,,", b""] {
            let h = [("Cache-Control", &b"max-age=60"[..]), ("CDN-Cache-Control", invalid)];
            assert_eq!((cc(&h).max_age, cc(&h).no_store), (Some(60), false), "{:?}", String::from_utf8_lossy(invalid));
        }
    }

    #[test]
    fn tags_come_from_cache_tag_and_surrogate_key() {
        let headers = [("Cache-Tag", &b"a, b-1"[..]), ("Surrogate-Key", b"c  d"), ("X-Tag", b"e")];
        let e = Entry::new(200, b"OK", headers.into_iter(), vec![].into(), freshness(60), Vec::new(), Instant::now());
        for tag in ["a", "b-1", "c", "d"] {
            assert!(e.has_tag(tag), "{tag}");
        }
        for tag in ["b", "e", "", "A"] {
            assert!(!e.has_tag(tag), "{tag}");
        }
    }

    #[test]
    fn section_3_1_fields_named_in_connection_are_not_stored() {
        let headers = [("Connection", &b"x-a, X-B"[..]), ("X-A", b"1"), ("x-b", b"2"), ("X-C", b"3")];
        let e = Entry::new(200, b"OK", headers.into_iter(), vec![].into(), freshness(60), Vec::new(), Instant::now());
        assert_eq!(e.head, b"HTTP/1.1 200 OK\r\nX-C: 3\r\n");
        let refreshed =
            e.refreshed([("Connection", &b"x-d"[..]), ("X-D", b"4")].into_iter(), freshness(60), Instant::now());
        assert_eq!(refreshed.header("x-d"), None, "nor merged from a 304");
    }
}
