//! The admin endpoints: the lock-out's blocked list and unblocking (admins only), and purging the
//! data plane's response cache (one URL of the caller's own app, or anything for an admin).

use serde_json::json;

use super::apps::own_app;
use super::auth::{authenticate, is_admin, require_admin};
use super::input::{app_id, percent_decode};
use super::json::FieldError;
use super::reply::{ApiError, ApiResult, Reply};
use super::state::ApiState;
use crate::cache::Cache;
use crate::http::request::Request;

/// `GET /api/blocked`: the addresses locked out now.
pub fn blocked(state: &ApiState, req: &Request) -> ApiResult<Reply> {
    require_admin(state, req)?;
    let list = state.store.blocked_list(state.clock.now_ms())?;
    Ok(Reply::json(200, json!({ "users-blocked": list })))
}

/// `DELETE /api/blocked/{email}`: lifts the lock-out of `email` (percent-encoded).
pub fn unblock(state: &ApiState, req: &Request, email: &str) -> ApiResult<Reply> {
    let admin = require_admin(state, req)?;
    let email = percent_decode(email)
        .ok_or_else(|| ApiError::BadParameter(FieldError::new("email", "is not valid percent-encoded UTF-8")))?;
    if state.store.unblock(&email, state.clock.now_ms())? {
        log::info!("[lockout] {email} unblocked by {}", admin.email);
        Ok(Reply::json(200, json!({ "message": "user unblocked", "email": email })))
    } else {
        Err(ApiError::NotFound(format!("{email} is not blocked")))
    }
}

/// `DELETE /api/cache?url=<url>` drops the stored responses of one URL of the user's own app (any URL
/// for an admin); `DELETE /api/cache` with no `url` empties the cache, for admins only.
pub fn purge_cache(state: &ApiState, req: &Request, query: &str) -> ApiResult<Reply> {
    let user = authenticate(state, req)?;
    let admin = is_admin(state, &user)?;
    let url = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "url")
        .map(|(_, value)| {
            percent_decode(value)
                .ok_or_else(|| ApiError::BadParameter(FieldError::new("url", "is not valid percent-encoded UTF-8")))
        })
        .transpose()?;
    let Some(cache) = &state.cache else {
        return Ok(Reply::json(200, json!({ "purged": 0, "message": "the cache is off (ttl = 0)" })));
    };
    let Some(url) = url else {
        if !admin {
            return Err(ApiError::Forbidden(
                "only admins may empty the whole cache; give ?url= to purge one URL".into(),
            ));
        }
        let purged = cache.purge_all();
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
    let purged = match host {
        Some(host) => cache.invalidate(&Cache::key(Some(&host), &target)),
        None => cache.purge_matching(|key| key.split_once(' ').is_some_and(|(_, t)| t == target)),
    };
    Ok(Reply::json(200, json!({ "purged": purged, "url": url })))
}
