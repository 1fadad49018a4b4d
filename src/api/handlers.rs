//! The management API's endpoints: routing a request by method and path, authentication
//! (`Authorization: JWT <token>` as in the seed, or `Bearer`), and one function per endpoint.
//! Every answer is JSON; every error is `{"error": "...", "details": [...]}` with the status that
//! says whose fault it is ([`ApiError`]).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crossbeam_channel::Sender;
use serde_json::{json, Value};

use super::json::{self as schema, BodyError, FieldError};
use crate::cache::Cache;
use crate::clock::{rfc3339, Clock};
use crate::http::request::{Request, RequestError};
use crate::store::credentials::{self, Tokens};
use crate::store::lockout::LoginEvent;
use crate::store::notify::CachePurge;
use crate::store::{self, AddEndpoint, Endpoint, LogEntry, Removal, Store, StoreError, User};
use crate::upstream::apps::{resolve, Router};

/// Every (method, path template) that [`route`] answers, as `docs/openapi.yaml` writes them. The
/// spec is tested against this table (`tests/openapi.rs`), and `route` against it (the unit test
/// `routes_table_matches_the_router`): a new route goes into `route`, this table and the spec.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/users"),
    ("DELETE", "/api/users"),
    ("POST", "/api/auth"),
    ("GET", "/api/apps"),
    ("GET", "/api/apps/{appid}"),
    ("POST", "/api/apps/{appid}"),
    ("DELETE", "/api/apps/{appid}"),
    ("DELETE", "/api/apps/{appid}/endpoints/{endpoint_id}"),
    ("GET", "/api/apps/{appid}/logs"),
    ("GET", "/api/blocked"),
    ("DELETE", "/api/blocked/{email}"),
    ("DELETE", "/api/cache"),
    ("GET", "/api/status"),
    ("GET", "/api/openapi.yaml"),
    ("GET", "/metrics"),
    ("GET", "/dashboard"),
];

/// The API's description, served at `GET /api/openapi.yaml`; embedded so the binary needs no file.
pub const OPENAPI_YAML: &str = include_str!("../../docs/openapi.yaml");

/// Default and largest page of `GET /api/apps/<appid>/logs`.
const DEFAULT_LOG_PAGE: usize = 100;
const MAX_LOG_PAGE: usize = 1000;

/// Everything the handlers share.
pub struct ApiState {
    pub store: Arc<Store>,
    /// Shared with the data plane, which verifies tokens on `auth = jwt` routes.
    pub tokens: Arc<Tokens>,
    pub router: Arc<Router>,
    pub lockout: Sender<LoginEvent>,
    pub throttle: super::throttle::Throttle,
    pub clock: Clock,
    /// `admins`, lower-cased.
    pub admins: Vec<String>,
    /// `access_log`: one line per API request too.
    pub access_log: bool,
    /// The data plane's response cache, for `DELETE /api/cache` (`None` when `ttl` is 0).
    pub cache: Option<Arc<Cache>>,
    /// The data plane's figures for `/metrics` and `/api/status`, and the API's own counters.
    pub observe: crate::observe::metrics::ApiObserver,
}

impl ApiState {
    /// Loads every app from the database into a new route table.
    pub fn reload_routes(&self) -> std::result::Result<(), StoreError> {
        self.router.reload(|| self.store.all_apps())
    }

    /// Deletes apps left without endpoints and updates the routes; returns their names.
    pub fn purge(&self) -> std::result::Result<Vec<String>, StoreError> {
        let purged = self.store.purge_empty_apps()?;
        for name in &purged {
            log::info!("[purge] app {name} deleted: it had no endpoints left");
        }
        if !purged.is_empty() {
            self.reload_routes()?;
        }
        Ok(purged)
    }

    fn routes_changed(&self) {
        if let Err(e) = self.reload_routes() {
            log::error!("api: the route table could not be reloaded: {e}");
        }
    }
}

/// An answer: status, JSON body, extra header fields; or, when `raw` is set, that fixed document
/// (content type, text) instead of the JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
    /// A body that is not JSON (`/metrics`, `/dashboard`): its media type and bytes, sent instead of `body`.
    pub raw: Option<(&'static str, Vec<u8>)>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply { status, body, headers: Vec::new(), raw: None }
    }

    /// A 200 with a fixed document that is not JSON (the OpenAPI description).
    pub fn document(content_type: &'static str, text: &'static str) -> Reply {
        Reply::raw(content_type, text.as_bytes().to_vec())
    }

    /// A 200 answer with a body of `media_type`.
    pub fn raw(media_type: &'static str, bytes: Vec<u8>) -> Reply {
        Reply { raw: Some((media_type, bytes)), ..Reply::json(200, Value::Null) }
    }
}

/// Why a request failed; the variant picks the status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: the body is not JSON, or not an object.
    BadJson(String),
    /// 400: fields that break the schema (each one named).
    Schema(Vec<FieldError>),
    /// 400: something else about the request is wrong.
    BadRequest(String),
    /// 400: a path or query parameter is wrong.
    BadParameter(FieldError),
    /// 401: wrong credentials, or a missing, expired or invalid token.
    Unauthorized(String),
    /// 403: it belongs to someone else, or needs an admin.
    Forbidden(String),
    /// 404
    NotFound(String),
    /// 405, with the methods that the path accepts.
    MethodNotAllowed(&'static str),
    /// 409
    Conflict(String),
    /// 413
    TooLarge,
    /// 415
    NotJson,
    /// 423, with seconds until the block ends.
    Locked { retry_after: u64 },
    /// 429, with seconds until the next try is allowed.
    Throttled { retry_after: u64 },
    /// A request head pibl cannot take (its own status: 400, 413, 431, 501, 505...).
    Request(u16, String),
    /// 500: pibl's fault; the details are logged, not sent.
    Internal,
}

impl ApiError {
    pub fn from_request(e: RequestError) -> ApiError {
        ApiError::Request(e.status(), e.to_string())
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadJson(_) | ApiError::Schema(_) | ApiError::BadRequest(_) | ApiError::BadParameter(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Conflict(_) => 409,
            ApiError::TooLarge => 413,
            ApiError::NotJson => 415,
            ApiError::Locked { .. } => 423,
            ApiError::Throttled { .. } => 429,
            ApiError::Request(status, _) => *status,
            ApiError::Internal => 500,
        }
    }

    pub fn reply(&self) -> Reply {
        let details: Vec<Value> = match self {
            ApiError::Schema(fields) => fields.iter().map(FieldError::to_json).collect(),
            ApiError::BadParameter(field) => vec![field.to_json()],
            ApiError::BadJson(why) => vec![FieldError::new("body", why.clone()).to_json()],
            _ => Vec::new(),
        };
        let mut reply = Reply::json(self.status(), json!({ "error": self.to_string(), "details": details }));
        match self {
            ApiError::MethodNotAllowed(allow) => reply.headers.push(("Allow", allow.to_string())),
            ApiError::Locked { retry_after } | ApiError::Throttled { retry_after } => {
                reply.headers.push(("Retry-After", retry_after.to_string()))
            }
            _ => {}
        }
        reply
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::BadJson(_) => f.write_str("the request body is not a JSON object"),
            ApiError::Schema(_) => f.write_str("the request body does not match the schema; see details"),
            ApiError::BadRequest(why) => f.write_str(why),
            ApiError::BadParameter(field) => write!(f, "{}: {}", field.field, field.message),
            ApiError::Unauthorized(why)
            | ApiError::Forbidden(why)
            | ApiError::NotFound(why)
            | ApiError::Conflict(why) => f.write_str(why),
            ApiError::MethodNotAllowed(allow) => write!(f, "method not allowed here; use {allow}"),
            ApiError::TooLarge => write!(f, "the request body is larger than {} bytes", super::MAX_BODY),
            ApiError::NotJson => f.write_str("send the body as JSON with the header Content-Type: application/json"),
            ApiError::Locked { retry_after } => write!(
                f,
                "this account is locked after too many failed logins; try again in {retry_after} s or ask an admin"
            ),
            ApiError::Throttled { retry_after } => {
                write!(f, "too many requests from this address; try again in {retry_after} s")
            }
            ApiError::Request(_, why) => f.write_str(why),
            ApiError::Internal => f.write_str("internal error; the server log has the details"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // [pg] A database out of reach (PostgreSQL down or restarting) is a 503 that passes by itself;
        // the store logs the outage once, not once per request.
        if e.is_unavailable() {
            log::debug!("api: {e}");
            return ApiError::Request(
                503,
                "the database is unavailable; the proxy keeps routing, and the API works again once the \
                 database is back: retry shortly"
                    .into(),
            );
        }
        log::error!("api: {e}");
        ApiError::Internal
    }
}

impl From<credentials::HashError> for ApiError {
    fn from(e: credentials::HashError) -> Self {
        log::error!("api: {e}");
        ApiError::Internal
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::NotJson(why) => ApiError::BadJson(why),
            BodyError::NotObject => ApiError::BadJson("expected a JSON object: {...}".into()),
            BodyError::Fields(fields) => ApiError::Schema(fields),
        }
    }
}

type Result<T> = std::result::Result<T, ApiError>;

/// Answers one request.
pub fn handle(state: &ApiState, req: &Request, body: &[u8], client: IpAddr) -> Reply {
    match route(state, req, body, client) {
        Ok(reply) => reply,
        Err(e) => {
            if e.status() == 401 {
                state.observe.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            e.reply()
        }
    }
}

/// Dispatches on method and path segments. Every arm here has its rows in [`ROUTES`].
fn route(state: &ApiState, req: &Request, body: &[u8], client: IpAddr) -> Result<Reply> {
    let (path, query) = match req.target().split_once('?') {
        Some((p, q)) => (p, q),
        None => (req.target(), ""),
    };
    let path = if path.len() > 1 { path.strip_suffix('/').unwrap_or(path) } else { path };
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method();
    let wrong = |allow: &'static str| Err(ApiError::MethodNotAllowed(allow));
    match segments.as_slice() {
        ["api", "users"] => {
            throttle(state, client)?;
            match method {
                "POST" => register(state, req, body),
                "DELETE" => unregister(state, req, body),
                _ => wrong("POST, DELETE"),
            }
        }
        ["api", "auth"] => {
            throttle(state, client)?;
            match method {
                "POST" => login(state, req, body),
                _ => wrong("POST"),
            }
        }
        ["api", "apps"] => match method {
            "GET" => list_apps(state, req),
            _ => wrong("GET"),
        },
        ["api", "apps", id] => match method {
            "GET" => show_app(state, req, id),
            "POST" => add_endpoint(state, req, body, id),
            "DELETE" => delete_app(state, req, id),
            _ => wrong("GET, POST, DELETE"),
        },
        ["api", "apps", id, "endpoints", endpoint] => match method {
            "DELETE" => delete_endpoint(state, req, id, endpoint),
            _ => wrong("DELETE"),
        },
        ["api", "apps", id, "logs"] => match method {
            "GET" => app_logs(state, req, id, query),
            _ => wrong("GET"),
        },
        ["api", "cache"] => match method {
            "DELETE" => purge_cache(state, req, query),
            _ => wrong("DELETE"),
        },
        ["api", "blocked"] => match method {
            "GET" => blocked(state, req),
            _ => wrong("GET"),
        },
        ["api", "blocked", email] => match method {
            "DELETE" => unblock(state, req, email),
            _ => wrong("DELETE"),
        },
        ["metrics"] => match method {
            "GET" => super::status::metrics_on_api(state),
            _ => wrong("GET"),
        },
        ["dashboard"] => match method {
            "GET" => Ok(super::status::dashboard()),
            _ => wrong("GET"),
        },
        ["api", "status"] => match method {
            "GET" => super::status::status(state, &authenticate(state, req)?),
            _ => wrong("GET"),
        },
        // No auth: the description of the API is public, like the docs.
        ["api", "openapi.yaml"] => match method {
            "GET" => Ok(Reply::document("application/yaml", OPENAPI_YAML)),
            _ => wrong("GET"),
        },
        _ => {
            Err(ApiError::NotFound(format!("no such API endpoint: {path} (see docs/api.md or GET /api/openapi.yaml)")))
        }
    }
}

fn throttle(state: &ApiState, client: IpAddr) -> Result<()> {
    state.throttle.check(client, state.clock.now_ms()).map_err(|retry_after| ApiError::Throttled { retry_after })
}

/// The body as JSON: it must be declared `application/json`.
fn json_body<'a>(req: &Request, body: &'a [u8]) -> Result<&'a [u8]> {
    let declared = req.header("content-type").and_then(|v| std::str::from_utf8(v).ok()).map(|v| {
        let media = v.split(';').next().unwrap_or("").trim();
        media.eq_ignore_ascii_case("application/json")
    });
    if declared != Some(true) {
        return Err(ApiError::NotJson);
    }
    Ok(body)
}

/// The user the request's token names.
fn authenticate(state: &ApiState, req: &Request) -> Result<User> {
    const HOW: &str =
        "send the header `Authorization: JWT <token>` (or `Bearer <token>`) with a token from POST /api/auth";
    let value = req.header("authorization").ok_or_else(|| ApiError::Unauthorized(format!("missing token: {HOW}")))?;
    let token = credentials::token_from_header(value)
        .ok_or_else(|| ApiError::Unauthorized(format!("unsupported Authorization scheme: {HOW}")))?;
    let claims =
        state.tokens.verify(token, state.clock.now_secs()).map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    let user = state
        .store
        .user(&claims.identity)?
        .ok_or_else(|| ApiError::Unauthorized("the user of this token no longer exists".into()))?;
    // A token from before the account was (re)created belongs to a deleted account of that name.
    if claims.iat < user.created_ms / 1000 {
        return Err(ApiError::Unauthorized("this token was issued before the account was created".into()));
    }
    Ok(user)
}

fn app_id(id: &str) -> Result<&str> {
    schema::check_app_id(id).map_err(ApiError::BadParameter)?;
    Ok(id)
}

/// Checks e-mail and password, with the lock-out: a blocked address is refused before its password
/// is looked at, and each outcome goes to the lock-out consumer.
fn check_credentials(state: &ApiState, creds: &schema::Credentials) -> Result<User> {
    let now = state.clock.now_ms();
    if let Some(until) = state.store.blocked_until(&creds.email, now)? {
        return Err(ApiError::Locked { retry_after: (until - now).div_ceil(1000) });
    }
    let user = state.store.user(&creds.email)?;
    let ok = match &user {
        Some(user) => credentials::verify_password(&creds.password, &user.password_hash),
        None => {
            credentials::verify_dummy(&creds.password);
            false
        }
    };
    let email = creds.email.clone();
    match (ok, user) {
        (true, Some(user)) => {
            let _ = state.lockout.send(LoginEvent::Succeeded { email });
            Ok(user)
        }
        _ => {
            let _ = state.lockout.send(LoginEvent::Failed { email });
            Err(ApiError::Unauthorized("wrong e-mail or password".into()))
        }
    }
}

fn register(state: &ApiState, req: &Request, body: &[u8]) -> Result<Reply> {
    let creds = schema::credentials(json_body(req, body)?)?;
    let hash = credentials::hash_password(&creds.password)?;
    match state.store.create_user(&creds.email, &hash, state.clock.now_ms())? {
        Some(user) => {
            log::info!("api: user {} registered", user.email);
            Ok(Reply::json(201, json!({ "message": "user created", "email": user.email })))
        }
        None => Err(ApiError::Conflict(format!("a user with the e-mail {} already exists", creds.email))),
    }
}

fn unregister(state: &ApiState, req: &Request, body: &[u8]) -> Result<Reply> {
    let creds = schema::credentials(json_body(req, body)?)?;
    let user = check_credentials(state, &creds)?;
    let apps = state.store.delete_user(user.id)?;
    if !apps.is_empty() {
        state.routes_changed();
    }
    log::info!("api: user {} deleted with {} app(s)", user.email, apps.len());
    Ok(Reply::json(200, json!({ "message": "user deleted", "email": user.email, "apps_deleted": apps })))
}

fn login(state: &ApiState, req: &Request, body: &[u8]) -> Result<Reply> {
    let creds = schema::credentials(json_body(req, body)?)?;
    let user = check_credentials(state, &creds)?;
    let token = state.tokens.issue(&user.email, state.clock.now_secs()).map_err(|e| {
        log::error!("api: cannot issue a token: {e}");
        ApiError::Internal
    })?;
    Ok(Reply::json(200, json!({ "access_token": token })))
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
fn own_app(state: &ApiState, user: &User, id: &str) -> Result<store::App> {
    match state.store.app(id)? {
        None => Err(ApiError::NotFound(format!("no app called {id}"))),
        Some(app) if app.owner_id != user.id => Err(ApiError::Forbidden(format!("app {id} belongs to another user"))),
        Some(app) => Ok(app),
    }
}

fn list_apps(state: &ApiState, req: &Request) -> Result<Reply> {
    let user = authenticate(state, req)?;
    let apps: Vec<Value> = state.store.apps_of(user.id)?.iter().map(|a| app_json(state, a)).collect();
    Ok(Reply::json(200, json!({ "apps": apps })))
}

fn show_app(state: &ApiState, req: &Request, id: &str) -> Result<Reply> {
    let user = authenticate(state, req)?;
    let app = own_app(state, &user, app_id(id)?)?;
    Ok(Reply::json(200, app_json(state, &app)))
}

fn add_endpoint(state: &ApiState, req: &Request, body: &[u8], id: &str) -> Result<Reply> {
    let user = authenticate(state, req)?;
    let id = app_id(id)?;
    let new = schema::new_endpoint(json_body(req, body)?)?;
    if resolve(&new.host, new.port).is_none() {
        return Err(ApiError::Schema(vec![FieldError::new(
            "host",
            format!("{:?} does not resolve to an address", new.host),
        )]));
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

fn delete_app(state: &ApiState, req: &Request, id: &str) -> Result<Reply> {
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

fn delete_endpoint(state: &ApiState, req: &Request, id: &str, endpoint: &str) -> Result<Reply> {
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

/// `?limit=&before=` (keyset) or `?limit=&page=` (1-based).
fn app_logs(state: &ApiState, req: &Request, id: &str, query: &str) -> Result<Reply> {
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

fn require_admin(state: &ApiState, req: &Request) -> Result<User> {
    let user = authenticate(state, req)?;
    if state.admins.iter().any(|a| a.eq_ignore_ascii_case(&user.email)) {
        Ok(user)
    } else {
        Err(ApiError::Forbidden("only admins (the `admins` setting) may manage blocked users".into()))
    }
}

fn blocked(state: &ApiState, req: &Request) -> Result<Reply> {
    require_admin(state, req)?;
    let list = state.store.blocked_list(state.clock.now_ms())?;
    Ok(Reply::json(200, json!({ "users-blocked": list })))
}

fn unblock(state: &ApiState, req: &Request, email: &str) -> Result<Reply> {
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
fn purge_cache(state: &ApiState, req: &Request, query: &str) -> Result<Reply> {
    let user = authenticate(state, req)?;
    let is_admin = state.admins.iter().any(|a| a.eq_ignore_ascii_case(&user.email));
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
        if !is_admin {
            return Err(ApiError::Forbidden(
                "only admins may empty the whole cache; give ?url= to purge one URL".into(),
            ));
        }
        let purged = cache.purge_all();
        announce_purge(state, &CachePurge::All); // [pg]
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
    if !is_admin {
        let first = target.trim_start_matches('/').split(['/', '?']).next().unwrap_or("");
        own_app(state, &user, app_id(first)?)?;
    }
    // [pg] One description of the purge, applied here and announced to the other instances.
    let purge = match host {
        Some(host) => CachePurge::Key { host, target },
        None => CachePurge::Target(target),
    };
    let purged = purge.apply(cache);
    announce_purge(state, &purge);
    Ok(Reply::json(200, json!({ "purged": purged, "url": url })))
}

/// [pg] Records a purge for the instances sharing the database (nothing to do with a SQLite file).
/// This instance's cache is already purged; if the database is down the others keep their entries
/// until they expire, which the log says.
fn announce_purge(state: &ApiState, purge: &CachePurge) {
    if let Err(e) = state.store.announce_cache_purge(purge, state.clock.now_ms()) {
        log::warn!("[cache] purge {purge:?} done here but not announced to the other instances: {e}");
    }
}

/// Decodes `%XX` escapes (`%40` for `@`).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{self, Limits};
    use std::collections::BTreeSet;

    /// An API state over a fresh database in the temp dir, with no throttle; the file goes on drop.
    struct TestState(ApiState, std::path::PathBuf);

    impl TestState {
        fn new(name: &str) -> TestState {
            let path = std::env::temp_dir().join(format!("pibl-unit-{}-{name}.db", std::process::id()));
            let store = Arc::new(Store::open(&path, store::Durability::Normal, 100).expect("open store"));
            let state = ApiState {
                store,
                tokens: Arc::new(Tokens::new(b"unit-test-secret", 300)),
                router: Arc::new(Router::new(4, Clock::system())),
                lockout: crossbeam_channel::unbounded().0,
                throttle: super::super::throttle::Throttle::new(0),
                clock: Clock::system(),
                admins: Vec::new(),
                access_log: false,
                cache: None,
                observe: Default::default(),
            };
            TestState(state, path)
        }
    }

    impl Drop for TestState {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.1.display()));
            }
        }
    }

    /// `method path` without a token, as the router sees it.
    fn call(state: &ApiState, method: &str, path: &str) -> Reply {
        let head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let limits = Limits { max_head_bytes: 16 * 1024, max_headers: 100, max_body_bytes: 1024 };
        let (req, _) = request::parse(head.as_bytes(), &limits).expect("valid head").expect("complete head");
        handle(state, &req, b"", IpAddr::from([127, 0, 0, 1]))
    }

    /// A concrete path for a template: each `{parameter}` filled with a valid value.
    fn concrete(template: &str) -> String {
        template.replace("{appid}", "helloworld").replace("{endpoint_id}", "1").replace("{email}", "a%40b.io")
    }

    #[test]
    fn routes_table_matches_the_router() {
        let state = TestState::new("routes");
        let templates: BTreeSet<&str> = ROUTES.iter().map(|(_, t)| *t).collect();
        for template in &templates {
            let path = concrete(template);
            let listed: BTreeSet<&str> = ROUTES.iter().filter(|(_, t)| t == template).map(|(m, _)| *m).collect();
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] {
                let reply = call(&state.0, method, &path);
                if listed.contains(method) {
                    // Without a token or body the handler refuses (401, 415...) but never as "no
                    // such path" (404) or "wrong method" (405): those only come from the router here.
                    assert!(![404, 405].contains(&reply.status), "{method} {path}: {} {}", reply.status, reply.body);
                } else {
                    assert_eq!(reply.status, 405, "{method} {path} should be refused: {}", reply.body);
                    let allow: BTreeSet<&str> = reply.headers[0].1.split(", ").collect();
                    assert_eq!(allow, listed, "Allow of {path}");
                }
            }
        }
        // Paths outside the table are not routed.
        for path in ["/api", "/api/apps/x/y", "/api/apps/x/endpoints", "/api/openapi.json", "/metrics/x"] {
            assert_eq!(call(&state.0, "GET", path).status, 404, "{path}");
        }
        // A coarse tripwire against an arm added to `route` but not to ROUTES: `route`'s slice
        // patterns (`["api", ...] =>`) are as many as the table's distinct templates.
        let source = include_str!("handlers.rs");
        let body = source.split("fn route(").nth(1).and_then(|s| s.split("\nfn throttle(").next()).unwrap_or("");
        let arms = body.lines().filter(|l| l.trim_start().starts_with("[\"") && l.contains("=>")).count();
        assert_eq!(arms, templates.len(), "route has {arms} path arms, ROUTES {} templates", templates.len());
    }

    #[test]
    fn openapi_is_served_as_yaml_without_auth() {
        let state = TestState::new("openapi");
        let reply = call(&state.0, "GET", "/api/openapi.yaml");
        assert_eq!((reply.status, reply.raw), (200, Some(("application/yaml", OPENAPI_YAML.as_bytes().to_vec()))));
        assert!(OPENAPI_YAML.starts_with("openapi: 3.1"), "the embedded file is the spec");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%40b.c").as_deref(), Some("a@b.c"));
        assert_eq!(percent_decode("plain@x.io").as_deref(), Some("plain@x.io"));
        assert_eq!(percent_decode("bad%4"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn errors_carry_status_details_and_headers() {
        let r = ApiError::Schema(vec![FieldError::new("email", "is required")]).reply();
        assert_eq!(r.status, 400);
        assert_eq!(r.body["details"][0]["field"], "email");
        let r = ApiError::Throttled { retry_after: 7 }.reply();
        assert_eq!((r.status, r.headers.clone()), (429, vec![("Retry-After", "7".to_string())]));
        assert_eq!(ApiError::MethodNotAllowed("GET").reply().headers, vec![("Allow", "GET".to_string())]);
        assert_eq!(ApiError::Locked { retry_after: 1 }.status(), 423);
        assert!(ApiError::NotJson.reply().body["details"].as_array().is_some_and(|d| d.is_empty()));
    }
}
