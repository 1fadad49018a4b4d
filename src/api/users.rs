//! The user endpoints: `POST /api/users` (register), `DELETE /api/users` (delete an account and its
//! apps, with its credentials) and `POST /api/auth` (log in: a token for the credentials). Passwords
//! are checked under the lock-out: a blocked address is refused before its password is looked at.

use std::net::IpAddr;

use serde_json::json;

use super::input::json_body;
use super::json::{self as schema, Credentials};
use super::reply::{ApiError, ApiResult, Reply};
use super::state::ApiState;
use crate::http::request::Request;
use crate::store::credentials;
use crate::store::lockout::LoginEvent;
use crate::store::User;

/// Checks e-mail and password, with the lock-out: a blocked address is refused before its password
/// is looked at, and each outcome goes to the lock-out consumer.
fn check_credentials(state: &ApiState, creds: &Credentials, client: IpAddr) -> ApiResult<User> {
    let now = state.clock.now_ms();
    // What a failure counts against and a block locks (`lockout_scope`).
    let locked = match state.lockout_per_ip {
        true => format!("{} from {client}", creds.email),
        false => creds.email.clone(),
    };
    if let Some(until) = state.store.blocked_until(&locked, now)? {
        return Err(ApiError::Locked { retry_after: (until - now).div_ceil(1000) });
    }
    let user = state.store.user(&creds.email)?;
    let ok = match &user {
        Some(user) => credentials::verify_password(&creds.password, &user.password_hash).map_err(hash_error)?,
        None => {
            credentials::verify_dummy(&creds.password).map_err(hash_error)?;
            false
        }
    };
    let email = locked;
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

/// A full hashing queue is a 503 (retry later); any other hashing failure is pibl's (500).
fn hash_error(e: credentials::HashError) -> ApiError {
    match e {
        credentials::HashError::Busy => ApiError::Request(503, e.to_string()),
        e => ApiError::from(e),
    }
}

/// `POST /api/users`.
pub fn register(state: &ApiState, req: &Request, body: &[u8]) -> ApiResult<Reply> {
    let creds = schema::credentials(json_body(req, body)?)?;
    let hash = credentials::hash_password(&creds.password).map_err(hash_error)?;
    match state.store.create_user(&creds.email, &hash, state.clock.now_ms())? {
        Some(user) => {
            log::info!("api: user {} registered", user.email);
            Ok(Reply::json(201, json!({ "message": "user created", "email": user.email })))
        }
        None => Err(ApiError::Conflict(format!("a user with the e-mail {} already exists", creds.email))),
    }
}

/// `DELETE /api/users`.
pub fn unregister(state: &ApiState, req: &Request, body: &[u8], client: IpAddr) -> ApiResult<Reply> {
    let creds = schema::credentials(json_body(req, body)?)?;
    let user = check_credentials(state, &creds, client)?;
    let apps = state.store.delete_user(user.id)?;
    if !apps.is_empty() {
        state.routes_changed();
    }
    log::info!("api: user {} deleted with {} app(s)", user.email, apps.len());
    Ok(Reply::json(200, json!({ "message": "user deleted", "email": user.email, "apps_deleted": apps })))
}

/// `POST /api/auth`.
pub fn login(state: &ApiState, req: &Request, body: &[u8], client: IpAddr) -> ApiResult<Reply> {
    let creds = schema::credentials(json_body(req, body)?)?;
    let user = check_credentials(state, &creds, client)?;
    let token = state.tokens.issue_for(&user.email, user.created_ms, state.clock.now_secs()).map_err(|e| {
        log::error!("api: cannot issue a token: {e}");
        ApiError::Internal
    })?;
    Ok(Reply::json(200, json!({ "access_token": token })))
}
