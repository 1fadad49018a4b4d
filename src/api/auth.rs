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
    let value = req
        .header("authorization")
        .ok_or_else(|| ApiError::Unauthorized(format!("this request needs a token: {HOW}")))?;
    let token = credentials::token_from_header(value).ok_or_else(|| ApiError::Unauthorized(scheme_problem(value)))?;
    let claims =
        state.tokens.verify(token, state.clock.now_secs()).map_err(|e| ApiError::Unauthorized(token_problem(&e)))?;
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

/// What is wrong with an `Authorization` value that holds no usable token: the scheme is right but the
/// token is missing, or the scheme is another one (`Basic`...).
fn scheme_problem(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let scheme = text.split_whitespace().next().unwrap_or("");
    if scheme.eq_ignore_ascii_case("jwt") || scheme.eq_ignore_ascii_case("bearer") {
        format!(
            "the Authorization header says {scheme} but carries no token after it: \
             send `Authorization: {scheme} <token>` with a token from POST /api/auth"
        )
    } else {
        "the Authorization header must be `JWT <token>` or `Bearer <token>`, with a token from POST /api/auth".into()
    }
}

/// A token refusal as a sentence: the library's own reason (`InvalidSignature`...) is for the log.
fn token_problem(error: &credentials::TokenError) -> String {
    match error {
        credentials::TokenError::Invalid(why) => {
            log::debug!("api: token refused: {why}");
            "this token is not valid: it is malformed, was changed, or was signed by another server; \
             get a new one from POST /api/auth"
                .into()
        }
        credentials::TokenError::Expired => "this token has expired; get a new one from POST /api/auth".into(),
        credentials::TokenError::NotYetValid => {
            "this token is not valid yet (its start time is in the future; check the clocks)".into()
        }
    }
}

/// Whether `user` is an admin: the very account an admin grant was made for on the host.
pub fn is_admin(state: &ApiState, user: &User) -> ApiResult<bool> {
    Ok(admins::is_admin(&state.store, user)?)
}

/// The caller, who must be an admin (for the blocked list).
pub fn require_admin(state: &ApiState, req: &Request, action: &str) -> ApiResult<User> {
    let user = authenticate(state, req)?;
    if is_admin(state, &user)? {
        Ok(user)
    } else {
        Err(ApiError::Forbidden(format!("only admins (made on the host with `proxy --admin add`) may {action}")))
    }
}
