//! The app endpoints: list, show and delete apps, add and remove their endpoints (each change
//! reloads the route table the data plane reads), and page through an app's execution logs. A user
//! sees and changes only their own apps.

use serde_json::{json, Value};

use super::auth::authenticate;
use super::input::{app_id, json_body};
use super::json::{self as schema, FieldError};
use super::reply::{ApiError, ApiResult, Reply};
use super::state::ApiState;
use crate::clock::rfc3339;
use crate::http::request::Request;
use crate::store::{self, AddEndpoint, Endpoint, LogEntry, Removal, User};

/// Default and largest page of `GET /api/apps/<appid>/logs`.
const DEFAULT_LOG_PAGE: usize = 100;
const MAX_LOG_PAGE: usize = 1000;

/// Names pibl's own pages and common infrastructure paths take on the data plane's root; no app may
/// claim them when apps live at `/<appid>/` (an app would take their paths over from the default pool).
pub const RESERVED_APP_IDS: &[&str] =
    &["api", "apps", "metrics", "dashboard", "status", "health", "healthz", "static", "assets", "admin", "well-known"];

/// The app ids no one may create: with apps at the root, [`RESERVED_APP_IDS`]; in every case the
/// first segment (under `app_prefix`) of each configured route's prefix, which the route would keep.
pub fn reserved_ids<'a>(app_prefix: &str, route_prefixes: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut ids: Vec<String> = match app_prefix {
        "" => RESERVED_APP_IDS.iter().map(|s| s.to_string()).collect(),
        _ => Vec::new(),
    };
    let base = if app_prefix.is_empty() { "/" } else { app_prefix };
    for prefix in route_prefixes {
        let first = prefix.strip_prefix(base).and_then(|rest| rest.split('/').next()).unwrap_or("");
        if !first.is_empty() && !ids.iter().any(|i| i == first) {
            ids.push(first.to_string());
        }
    }
    ids
}

/// `{"app", "owner", "endpoints": [{"id", "host", "port", "statuspath", "healthy", "last_check"}]}`.
fn app_json(state: &ApiState, app: &store::App) -> Value {
    let routes = state.router.snapshot();
    let endpoints: Vec<Value> = app
        .endpoints
        .iter()
        .map(|ep| {
            let (healthy, last_check) = routes.endpoint_health(&app.name, ep.id);
            json!({
                "id": ep.id,
                "host": ep.host,
                "port": ep.port,
                "statuspath": ep.statuspath,
                "healthy": healthy,
                "last_check": last_check.map(rfc3339),
            })
        })
        .collect();
    json!({ "app": app.name, "owner": app.owner, "endpoints": endpoints })
}

/// The app `id` if it exists and belongs to `user`.
pub fn own_app(state: &ApiState, user: &User, id: &str) -> ApiResult<store::App> {
    match state.store.app(id)? {
        None => Err(ApiError::NotFound(format!("no app called {id}"))),
        Some(app) if app.owner_id != user.id => Err(ApiError::Forbidden(format!("app {id} belongs to another user"))),
        Some(app) => Ok(app),
    }
}

/// `GET /api/apps`: the caller's apps.
pub fn list_apps(state: &ApiState, req: &Request) -> ApiResult<Reply> {
    let user = authenticate(state, req)?;
    let apps: Vec<Value> = state.store.apps_of(user.id)?.iter().map(|a| app_json(state, a)).collect();
    Ok(Reply::json(200, json!({ "apps": apps })))
}

/// `GET /api/apps/{appid}`.
pub fn show_app(state: &ApiState, req: &Request, id: &str) -> ApiResult<Reply> {
    let user = authenticate(state, req)?;
    let app = own_app(state, &user, app_id(id)?)?;
    Ok(Reply::json(200, app_json(state, &app)))
}

/// `POST /api/apps/{appid}`: adds an endpoint, creating the app if it is new.
pub fn add_endpoint(state: &ApiState, req: &Request, body: &[u8], id: &str) -> ApiResult<Reply> {
    let user = authenticate(state, req)?;
    let id = app_id(id)?;
    if state.reserved_app_ids.iter().any(|r| r == id) && state.store.app(id)?.is_none() {
        return Err(ApiError::BadParameter(FieldError::new(
            "appid",
            format!("{id} is reserved: its path belongs to pibl or to a configured route; choose another id"),
        )));
    }
    let new = schema::new_endpoint(json_body(req, body)?)?;
    // Refused in every spelling (names are resolved; see `upstream::policy`), and checked again
    // whenever the route table resolves it and before each connection.
    if let Err(refusal) = state.router.endpoint_policy().resolve(&new.host, new.port) {
        return Err(ApiError::Schema(vec![FieldError::new("host", refusal.to_string())]));
    }
    let endpoint = Endpoint { id: 0, host: new.host, port: new.port, statuspath: new.statuspath };
    match state.store.add_endpoint(&user, id, &endpoint, state.clock.now_ms())? {
        AddEndpoint::Added { app, created } => {
            state.routes_changed();
            log::info!(
                "api: {} {} app {id} with endpoint {}:{}",
                user.email,
                if created { "created" } else { "extended" },
                endpoint.host,
                endpoint.port
            );
            Ok(Reply::json(201, app_json(state, &app)))
        }
        AddEndpoint::NotYours => Err(ApiError::Forbidden(format!("app {id} belongs to another user"))),
        AddEndpoint::Duplicate => Err(ApiError::Conflict(format!(
            "app {id} already has the endpoint {}:{} with status path {}",
            endpoint.host, endpoint.port, endpoint.statuspath
        ))),
    }
}

/// `DELETE /api/apps/{appid}`.
pub fn delete_app(state: &ApiState, req: &Request, id: &str) -> ApiResult<Reply> {
    let user = authenticate(state, req)?;
    let id = app_id(id)?;
    match state.store.delete_app(user.id, id)? {
        Removal::Removed => {
            state.routes_changed();
            log::info!("api: {} deleted app {id}", user.email);
            Ok(Reply::json(200, json!({ "message": "app deleted", "app": id })))
        }
        Removal::NotFound => Err(ApiError::NotFound(format!("no app called {id}"))),
        Removal::NotYours => Err(ApiError::Forbidden(format!("app {id} belongs to another user"))),
    }
}

/// `DELETE /api/apps/{appid}/endpoints/{endpoint_id}`.
pub fn delete_endpoint(state: &ApiState, req: &Request, id: &str, endpoint: &str) -> ApiResult<Reply> {
    let user = authenticate(state, req)?;
    let id = app_id(id)?;
    let endpoint_id: i64 = endpoint.parse().map_err(|_| {
        ApiError::BadParameter(FieldError::new("endpoint_id", "must be a whole number (an endpoint's id)"))
    })?;
    match state.store.delete_endpoint(&user, id, endpoint_id, state.clock.now_ms())? {
        (Removal::Removed, app) => {
            state.routes_changed();
            log::info!("api: {} removed endpoint {endpoint_id} of app {id}", user.email);
            let app = app.map(|a| app_json(state, &a)).unwrap_or(Value::Null);
            Ok(Reply::json(200, app))
        }
        (Removal::NotFound, _) => Err(ApiError::NotFound(format!("app {id} has no endpoint {endpoint_id}"))),
        (Removal::NotYours, _) => Err(ApiError::Forbidden(format!("app {id} belongs to another user"))),
    }
}

fn log_json(e: &LogEntry) -> Value {
    let mut v = json!({ "id": e.id, "time": rfc3339(e.time_ms), "kind": e.kind });
    let fields = [
        ("actor", e.actor.clone().map(Value::from)),
        ("method", e.method.clone().map(Value::from)),
        ("path", e.path.clone().map(Value::from)),
        ("status", e.status.map(Value::from)),
        ("endpoint", e.endpoint.clone().map(Value::from)),
        ("duration_ms", e.duration_ms.map(|d| Value::from((d * 1000.0).round() / 1000.0))),
        ("detail", e.detail.clone().map(Value::from)),
    ];
    if let Value::Object(map) = &mut v {
        for (name, value) in fields {
            if let Some(value) = value {
                map.insert(name.to_string(), value);
            }
        }
    }
    v
}

/// `GET /api/apps/{appid}/logs`, paged by `?limit=&before=` (keyset) or `?limit=&page=` (1-based).
pub fn app_logs(state: &ApiState, req: &Request, id: &str, query: &str) -> ApiResult<Reply> {
    let user = authenticate(state, req)?;
    let app = own_app(state, &user, app_id(id)?)?;
    let (mut limit, mut before, mut page) = (DEFAULT_LOG_PAGE, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |max: u64| value.parse::<u64>().ok().filter(|n| (1..=max).contains(n));
        match key {
            "limit" => {
                limit = number(MAX_LOG_PAGE as u64).ok_or_else(|| {
                    ApiError::BadParameter(FieldError::new(
                        "limit",
                        format!("must be a whole number from 1 to {MAX_LOG_PAGE}"),
                    ))
                })? as usize
            }
            "before" => {
                before = Some(number(i64::MAX as u64).ok_or_else(|| {
                    ApiError::BadParameter(FieldError::new(
                        "before",
                        "must be a log entry id (a positive whole number)",
                    ))
                })? as i64)
            }
            "page" => {
                page =
                    Some(number(1_000_000).ok_or_else(|| {
                        ApiError::BadParameter(FieldError::new("page", "must be a whole number from 1"))
                    })? as usize)
            }
            _ => {}
        }
    }
    let offset = page.map_or(0, |p| (p - 1) * limit);
    let entries = state.store.logs(app.pk, before, limit, offset)?;
    let next = match entries.last() {
        Some(last) if entries.len() == limit => {
            json!(format!("/api/apps/{}/logs?limit={limit}&before={}", app.name, last.id))
        }
        _ => Value::Null,
    };
    let logs: Vec<Value> = entries.iter().map(log_json).collect();
    Ok(Reply::json(200, json!({ "app": app.name, "logs": logs, "next": next })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ids_cover_pibls_pages_and_route_prefixes() {
        let routes = ["/shop/", "/api-v2", "/", "/apps/billing/x"];
        let ids = reserved_ids("", routes.iter().copied());
        for id in ["api", "metrics", "dashboard", "shop", "api-v2", "apps"] {
            assert!(ids.iter().any(|i| i == id), "{id} in {ids:?}");
        }
        // Under a prefix only the routes that reach into it take ids.
        assert_eq!(reserved_ids("/apps/", routes.iter().copied()), ["billing"]);
    }
}
