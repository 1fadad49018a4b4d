//! The inputs of an endpoint, checked before use: a body declared as JSON, an app id from the path,
//! and percent-encoded path and query values (`%40` for `@`). Each failure is an [`ApiError`] that
//! names what is wrong.

use super::json as schema;
use super::reply::{ApiError, ApiResult};
use crate::http::request::Request;

/// The body as JSON: it must be declared `application/json`.
pub fn json_body<'a>(req: &Request, body: &'a [u8]) -> ApiResult<&'a [u8]> {
    let declared = req.header("content-type").and_then(|v| std::str::from_utf8(v).ok()).map(|v| {
        let media = v.split(';').next().unwrap_or("").trim();
        media.eq_ignore_ascii_case("application/json")
    });
    if declared != Some(true) {
        return Err(ApiError::NotJson);
    }
    Ok(body)
}

/// `id` if it is a valid app id (the path parameter `{appid}`).
pub fn app_id(id: &str) -> ApiResult<&str> {
    schema::check_app_id(id).map_err(ApiError::BadParameter)?;
    Ok(id)
}

/// Decodes `%XX` escapes (`%40` for `@`).
pub fn percent_decode(s: &str) -> Option<String> {
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

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%40b.c").as_deref(), Some("a@b.c"));
        assert_eq!(percent_decode("plain@x.io").as_deref(), Some("plain@x.io"));
        assert_eq!(percent_decode("bad%4"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
