//! The admin endpoints: the lock-out's blocked list and unblocking (admins only), and purging the
//! data plane's response cache (one URL, a tag or a path prefix of the caller's own apps, or anything
//! for an admin).

use serde_json::json;

use super::apps::own_app;
use super::auth::{authenticate, is_admin, require_admin};
use super::input::{app_id, percent_decode};
use super::json::FieldError;
use super::reply::{ApiError, ApiResult, Reply};
use super::state::ApiState;
use crate::http::request::Request;
use crate::store::CachePurge;

/// `GET /api/blocked`: the addresses locked out now.
pub fn blocked(state: &ApiState, req: &Request) -> ApiResult<Reply> {
    require_admin(state, req, "list or unblock blocked users")?;
    let list = state.store.blocked_list(state.clock.now_ms())?;
    Ok(Reply::json(200, json!({ "users-blocked": list })))
}

/// `DELETE /api/blocked/{email}`: lifts the lock-out of `email` (percent-encoded).
pub fn unblock(state: &ApiState, req: &Request, email: &str) -> ApiResult<Reply> {
    let admin = require_admin(state, req, "list or unblock blocked users")?;
    let email = percent_decode(email)
        .ok_or_else(|| ApiError::BadParameter(FieldError::new("email", "is not valid percent-encoded UTF-8")))?;
    if state.store.unblock(&email, state.clock.now_ms())? {
        log::info!("[lockout] {email} unblocked by {}", admin.email);
        Ok(Reply::json(200, json!({ "message": "user unblocked", "email": email })))
    } else {
        Err(ApiError::NotFound(format!("{email} is not blocked")))
    }
}

/// The query parameters of `DELETE /api/cache`, at most one of which may be given.
pub const PURGE_PARAMETERS: [&str; 3] = ["url", "tag", "prefix"];

/// Reads the one purge parameter of a query, decoded: `None` for an empty query.
fn purge_parameter(query: &str) -> ApiResult<Option<(&'static str, String)>> {
    let mut found: Option<(&'static str, String)> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |message: String| ApiError::BadParameter(FieldError::new(key, message));
        let Some(name) = PURGE_PARAMETERS.iter().copied().find(|p| *p == key) else {
            return Err(bad(format!("is not a parameter here; give one of {}", PURGE_PARAMETERS.join(", "))));
        };
        if let Some((first, _)) = &found {
            return Err(bad(format!("cannot be given with {first}; purge by one of them at a time")));
        }
        let value = percent_decode(value).ok_or_else(|| bad("is not valid percent-encoded UTF-8".into()))?;
        if value.is_empty() {
            return Err(bad("is empty".into()));
        }
        found = Some((name, value));
    }
    Ok(found)
}

/// `DELETE /api/cache?url=<url>` drops the stored responses of one URL, `?tag=<tag>` every answer a
/// backend tagged so (`Cache-Tag`, `Surrogate-Key`), `?prefix=</path/>` every URL under a path
/// prefix: of the user's own apps, or anything for an admin. With no parameter an admin empties
/// the whole cache.
pub fn purge_cache(state: &ApiState, req: &Request, query: &str) -> ApiResult<Reply> {
    let user = authenticate(state, req)?;
    let admin = is_admin(state, &user)?;
    let parameter = purge_parameter(query)?;
    let Some(cache) = &state.cache else {
        return Ok(Reply::json(200, json!({ "purged": 0, "message": "the cache is off (ttl = 0)" })));
    };
    let url = match parameter {
        Some(("tag", tag)) => {
            // An owner's tag purge reaches only answers their own apps gave.
            let apps: Option<Vec<String>> =
                if admin { None } else { Some(state.store.apps_of(user.id)?.into_iter().map(|a| a.name).collect()) };
            let purge = CachePurge::Tag { tag: tag.clone(), apps };
            let purged = purge.apply(cache);
            announce_purge(state, &purge);
            return Ok(Reply::json(200, json!({ "purged": purged, "tag": tag })));
        }
        Some(("prefix", prefix)) => {
            if !prefix.starts_with('/') {
                return Err(ApiError::BadParameter(FieldError::new("prefix", "must be a path starting with /")));
            }
            let app = if admin {
                None
            } else {
                let first = prefix.trim_start_matches('/').split(['/', '?']).next().unwrap_or("");
                Some(own_app(state, &user, app_id(first)?)?.name)
            };
            let purge = CachePurge::Prefix { prefix: prefix.clone(), apps: app.map(|app| vec![app]) };
            let purged = purge.apply(cache);
            announce_purge(state, &purge);
            return Ok(Reply::json(200, json!({ "purged": purged, "prefix": prefix })));
        }
        Some((_, url)) => Some(url),
        None => None,
    };
    let Some(url) = url else {
        if !admin {
            return Err(ApiError::Forbidden(
                "only admins may empty the whole cache; give ?url=, ?tag= or ?prefix= to purge part of it".into(),
            ));
        }
        let purged = cache.purge_all();
        announce_purge(state, &CachePurge::All);
        log::info!("[cache] emptied by {}: {purged} entries", user.email);
        return Ok(Reply::json(200, json!({ "purged": purged })));
    };
    // `http://host/path` names one host's entry; a bare `/path` the entries of every host.
    let (host, target) = match url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) {
        Some(rest) => match rest.find('/') {
            Some(i) => (Some(rest[..i].to_ascii_lowercase()), rest[i..].to_string()),
            None => (Some(rest.to_ascii_lowercase()), "/".to_string()),
        },
        None if url.starts_with('/') => (None, url.clone()),
        None => {
            return Err(ApiError::BadParameter(FieldError::new("url", "must be a path (/app/page) or an http:// URL")))
        }
    };
    if !admin {
        // The app's id is the first segment under `app_prefix`.
        let under = target.strip_prefix(state.router.app_prefix()).unwrap_or(&target);
        let first = under.trim_start_matches('/').split(['/', '?']).next().unwrap_or("");
        own_app(state, &user, app_id(first)?)?;
    }
    // One description of the purge, applied here and announced to the other instances.
    let purge = match host {
        Some(host) => CachePurge::Key { host, target },
        None => CachePurge::Target(target),
    };
    let purged = purge.apply(cache);
    announce_purge(state, &purge);
    Ok(Reply::json(200, json!({ "purged": purged, "url": url })))
}

/// Records a purge for the instances sharing the database (nothing to do with a SQLite file). This
/// instance's cache is already purged; if the database is down the others keep their entries until
/// they expire, which the log says.
fn announce_purge(state: &ApiState, purge: &CachePurge) {
    if let Err(e) = state.store.announce_cache_purge(purge, state.clock.now_ms()) {
        log::warn!("[cache] purge {purge:?} done here but not announced to the other instances: {e}");
    }
}
