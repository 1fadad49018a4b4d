//! Who is calling the API: the user named by the request's token (`Authorization: JWT <token>` as in
//! the seed, or `Bearer`), checked against the account it was issued for, and whether that user is an
//! admin (granted on the host by `proxy --admin add`; see `store::admins`).

use super::reply::{ApiError, ApiResult};
use super::state::ApiState;
use crate::http::request::Request;
use crate::store::credentials;
use crate::store::{admins, User};

/// The user the request's token names.
pub fn authenticate(state: &ApiState, req: &Request) -> ApiResult<User> {
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
    // A token of a deleted account of that address: its creation time (ms) differs, even when the
    // new account was made in the same second; a token without that claim is judged by its `iat`.
    let stale = match claims.acct {
        Some(account_ms) => account_ms != user.created_ms,
        None => claims.iat < user.created_ms / 1000,
    };
    if stale {
        return Err(ApiError::Unauthorized("this token was issued before the account was created".into()));
    }
    Ok(user)
}

/// Whether `user` is an admin: the very account an admin grant was made for on the host.
pub fn is_admin(state: &ApiState, user: &User) -> ApiResult<bool> {
    Ok(admins::is_admin(&state.store, user)?)
}

/// The caller, who must be an admin (for the blocked list).
pub fn require_admin(state: &ApiState, req: &Request) -> ApiResult<User> {
    let user = authenticate(state, req)?;
    if is_admin(state, &user)? {
        Ok(user)
    } else {
        Err(ApiError::Forbidden(
            "only admins (made on the host with `proxy --admin add`) may manage blocked users".into(),
        ))
    }
}
