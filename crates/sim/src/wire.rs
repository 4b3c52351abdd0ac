//! WeChat's wire format: `Content-Type: application/json; encoding=utf-8`, HTTP 200 even for
//! errors, error bodies `{"errcode":N,"errmsg":"... rid: <hex>"}`, and the random token strings.
//!
//! Must not: decide *which* answer to give (that is the product modules' job), or put anything
//! secret into a body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::{json, Value};

use crate::errcode;

/// WeChat's (slightly odd) JSON content type.
pub const JSON_CONTENT_TYPE: &str = "application/json; encoding=utf-8";

/// Length of simulated access tokens (real ones are about 136 characters).
pub const ACCESS_TOKEN_LEN: usize = 136;
/// Length of simulated tickets (real jsapi tickets are about 86 characters).
pub const TICKET_LEN: usize = 86;

const TOKEN_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// The answer a WeChat endpoint gives: a success body or an errcode.
#[derive(Debug, Clone, PartialEq)]
pub enum WxReply {
    /// HTTP 200 with this JSON body.
    Ok(Value),
    /// HTTP 200 with `{"errcode":code,"errmsg":"<msg> rid: ..."}`.
    Err {
        /// The errcode.
        code: i64,
        /// The errmsg without the rid suffix.
        msg: String,
    },
}

impl WxReply {
    /// An error with WeChat's standard message for the code.
    pub fn err(code: i64) -> WxReply {
        WxReply::Err {
            code,
            msg: errcode::errmsg(code).to_string(),
        }
    }
}

impl IntoResponse for WxReply {
    fn into_response(self) -> Response {
        match self {
            WxReply::Ok(body) => json_response(StatusCode::OK, body.to_string()),
            WxReply::Err { code, msg } => json_response(
                StatusCode::OK,
                json!({ "errcode": code, "errmsg": format!("{msg} rid: {}", rid()) }).to_string(),
            ),
        }
    }
}

/// A response with WeChat's JSON content type and the given (possibly not even valid) body.
pub fn json_response(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    resp
}

/// A random request id in WeChat's shape, e.g. `6613a5c2-4b1f2e3d-7a8b9c0d`.
pub fn rid() -> String {
    let mut rng = rand::rng();
    format!(
        "{:08x}-{:08x}-{:08x}",
        rng.random::<u32>(),
        rng.random::<u32>(),
        rng.random::<u32>()
    )
}

/// A random token of `len` characters from `[A-Za-z0-9_-]`, random from the first character.
pub fn random_token(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(TOKEN_ALPHABET[rng.random_range(0..TOKEN_ALPHABET.len())]))
        .collect()
}

/// The first 8 characters of a token: all that evidence and logs ever show.
pub fn prefix(token: &str) -> String {
    token.chars().take(8).collect()
}

/// Whole seconds for the wire (floor), at least 1.
pub fn wire_secs(d: std::time::Duration) -> u64 {
    d.as_secs().max(1)
}

/// Parses a query string leniently (like WeChat: no 400 for odd encodings). Later duplicates
/// are ignored; empty values count as missing.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let query = query?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_length_and_alphabet() {
        let t = random_token(ACCESS_TOKEN_LEN);
        assert_eq!(t.len(), ACCESS_TOKEN_LEN);
        assert!(t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        assert_ne!(prefix(&t), prefix(&random_token(ACCESS_TOKEN_LEN)));
    }

    #[test]
    fn wire_secs_floors_with_minimum_one() {
        assert_eq!(wire_secs(std::time::Duration::from_millis(2999)), 2);
        assert_eq!(wire_secs(std::time::Duration::from_millis(10)), 1);
    }

    #[test]
    fn query_param_treats_empty_as_missing() {
        assert_eq!(query_param(Some("a=1&b="), "a").as_deref(), Some("1"));
        assert_eq!(query_param(Some("a=1&b="), "b"), None);
        assert_eq!(query_param(None, "a"), None);
        assert_eq!(query_param(Some("x=a%20b"), "x").as_deref(), Some("a b"));
    }
}
