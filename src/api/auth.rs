//! Who is calling the API: the user named by the request's token (`Authorization: JWT <token>` as in
//! the seed, or `Bearer`), checked against the account it was issued for, and whether that user is an
//! admin (the `admins` setting).

use super::reply::{ApiError, ApiResult};
use super::state::ApiState;
use crate::http::request::Request;
use crate::store::credentials;
use crate::store::User;

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
    // A token from before the account was (re)created belongs to a deleted account of that name.
    if claims.iat < user.created_ms / 1000 {
        return Err(ApiError::Unauthorized("this token was issued before the account was created".into()));
    }
    Ok(user)
}

/// Whether `user` is one of the `admins`.
pub fn is_admin(state: &ApiState, user: &User) -> bool {
    state.admins.iter().any(|a| a.eq_ignore_ascii_case(&user.email))
}

/// The caller, who must be an admin (for the blocked list).
pub fn require_admin(state: &ApiState, req: &Request) -> ApiResult<User> {
    let user = authenticate(state, req)?;
    if is_admin(state, &user) {
        Ok(user)
    } else {
        Err(ApiError::Forbidden("only admins (the `admins` setting) may manage blocked users".into()))
    }
}
