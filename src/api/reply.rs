//! What the API answers: a [`Reply`] (status, JSON body, extra header fields) and its HTTP/1.1
//! bytes, and [`ApiError`], why a request failed, whose variant picks the status (who is at fault)
//! and whose reply is always `{"error": "...", "details": [...]}`.

use std::fmt;
use std::io::Write;

use serde_json::{json, Value};

use super::json::{BodyError, FieldError};
use super::wire::MAX_BODY;
use crate::http::request::RequestError;
use crate::store::{credentials, StoreError};

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

    /// The reply as HTTP/1.1 bytes: JSON (or its fixed document, `raw`); `head_only` leaves the body
    /// out (an answer to HEAD) but keeps its length.
    pub fn encode(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let (media_type, body) = match &self.raw {
            Some((media_type, bytes)) => (*media_type, bytes.clone()),
            None => {
                let mut body = serde_json::to_vec_pretty(&self.body).unwrap_or_else(|_| b"{}".to_vec());
                body.push(b'\n');
                ("application/json", body)
            }
        };
        let mut out = Vec::with_capacity(body.len() + 256);
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {media_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
            self.status,
            crate::http::reason(self.status),
            body.len()
        );
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.extend_from_slice(if keep_alive {
            b"Connection: keep-alive\r\n\r\n"
        } else {
            b"Connection: close\r\n\r\n"
        });
        if !head_only {
            out.extend_from_slice(&body);
        }
        out
    }
}

/// Why a request failed; the variant picks the status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: the body is not JSON, or not an object; the text says which, as a sentence.
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
            ApiError::BadJson(why) => f.write_str(why),
            ApiError::Schema(fields) => match fields.as_slice() {
                [one] => write!(f, "the request body's {} {}", one.field, one.message),
                _ => f.write_str("some fields of the request body are wrong; `details` names each one"),
            },
            ApiError::BadRequest(why) => f.write_str(why),
            ApiError::BadParameter(field) => write!(f, "the {} in the request {}", field.field, field.message),
            ApiError::Unauthorized(why)
            | ApiError::Forbidden(why)
            | ApiError::NotFound(why)
            | ApiError::Conflict(why) => f.write_str(why),
            ApiError::MethodNotAllowed(allow) => write!(f, "this path does not take that method; use {allow}"),
            ApiError::TooLarge => write!(f, "the request body is larger than {} bytes", MAX_BODY),
            ApiError::NotJson => f.write_str("send the body as JSON with the header Content-Type: application/json"),
            ApiError::Locked { retry_after } => write!(
                f,
                "this account is locked after too many failed logins; try again in {retry_after} s or ask an admin"
            ),
            ApiError::Throttled { retry_after } => {
                write!(f, "too many requests from this address; try again in {retry_after} s")
            }
            ApiError::Request(_, why) => f.write_str(why),
            ApiError::Internal => f.write_str("something went wrong inside pibl; the server log has the details"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // A database out of reach (PostgreSQL down or restarting) is a 503 that passes by itself; the
        // store logs the outage once, not once per request.
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
        if let Some(cause) = e.write_failure() {
            // A full disk or a read-only file: the change was not made; retrying later may work.
            return ApiError::Request(
                503,
                format!(
                    "{cause}: the database cannot store changes now; nothing was changed, the proxy keeps \
                     routing, and reads and logins still work: retry once it is fixed"
                ),
            );
        }
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
            BodyError::NotJson(why) => ApiError::BadJson(format!("the request body is not valid JSON ({why})")),
            BodyError::NotObject => {
                ApiError::BadJson("the request body must be a JSON object ({...}), not a list or a single value".into())
            }
            BodyError::Fields(fields) => ApiError::Schema(fields),
        }
    }
}

/// What an endpoint returns: its reply, or why it failed.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn encoding_keeps_the_length_of_a_body_left_out() {
        let reply = Reply::json(201, json!({ "message": "user created" }));
        let full = String::from_utf8(reply.encode(true, false)).expect("utf-8");
        let head = String::from_utf8(reply.encode(false, true)).expect("utf-8");
        let body = "{\n  \"message\": \"user created\"\n}\n";
        assert!(full.starts_with("HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"), "{full}");
        assert!(full.ends_with(&format!("Connection: keep-alive\r\n\r\n{body}")), "{full}");
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())), "{head}");
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
    }
}
