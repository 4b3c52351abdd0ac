//! Calls to WeChat's credential APIs and the classification of what comes back.
//!
//! One function per endpoint (classic token, stable token, tickets); each
//! returns a [`Fetched`] value or a [`WechatError`] whose [`ErrorClass`] tells
//! the scheduler what to do next. Nothing here touches Redis, and nothing here
//! may print a secret: the classic API carries the AppSecret in its query
//! string, so transport errors are stripped of their URL, and every text that
//! came from upstream (errmsg, transport and parse error texts) has the
//! AppSecret (raw, percent-encoded, form-encoded, JSON-escaped) and the access
//! token of a ticket call replaced by `***` and control characters removed
//! before it is put into a [`WechatError`]. JSON parser messages are never
//! quoted: a wrong-typed field's message would quote the value.

mod component;
mod suite;
pub mod wecom;

pub use component::{AuthorizerGrant, ListPage, ListedAuthorizer, LIST_PAGE};
pub use suite::PermanentGrant;

use crate::config::WechatConfig;
use secrecy::{ExposeSecret, SecretString};
use std::time::{Duration, Instant};

/// Largest response body read from WeChat; anything longer is malformed.
const MAX_BODY: usize = 64 * 1024;
/// Largest body of a list page (`api_get_authorizer_list`: 500 entries of
/// an appid, a refresh token and a time).
const MAX_LIST_BODY: usize = 1024 * 1024;
/// Longest token or ticket accepted (WeChat says reserve 512 characters).
const MAX_TOKEN_LEN: usize = 2048;

/// A token or ticket WeChat handed out.
#[derive(Clone)]
pub struct Fetched {
    /// The value.
    pub token: String,
    /// WeChat's `expires_in`, seconds.
    pub expires_in: u64,
    /// When the request was sent; the value expires `expires_in` after this
    /// at the latest, which is what the stored TTL is based on.
    pub sent_at: Instant,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("token", &crate::token_prefix(&self.token))
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

impl Fetched {
    /// Time left until the value's real expiry, measured from now.
    pub fn remaining(&self) -> Duration {
        Duration::from_secs(self.expires_in).saturating_sub(self.sent_at.elapsed())
    }
}

/// What the scheduler should do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient: retry with capped exponential backoff.
    Retryable,
    /// The credential is misconfigured (secret, appid, IP whitelist, frozen):
    /// log loudly once, show in status, retry slowly.
    Config,
    /// Daily quota exhausted: pause the credential.
    Quota,
    /// The access token used for a ticket call is not valid.
    TokenInvalid,
}

/// A failed call. Display never includes a secret or a whole token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WechatError {
    /// WeChat answered with a non-zero errcode.
    #[error("WeChat errcode {errcode}: {errmsg}")]
    Api {
        /// WeChat's error code.
        errcode: i64,
        /// WeChat's message (truncated).
        errmsg: String,
    },
    /// WeCom answered with a non-zero errcode (its codes mean other things
    /// than WeChat's: see [`wecom::class`]).
    #[error("WeCom errcode {errcode}: {errmsg}")]
    Wecom {
        /// WeCom's error code.
        errcode: i64,
        /// WeCom's message (truncated).
        errmsg: String,
    },
    /// A non-200 HTTP status.
    #[error("HTTP {status} from WeChat")]
    Status {
        /// The status code.
        status: u16,
    },
    /// No answer within the request timeout.
    #[error("WeChat did not answer within {0:?}")]
    Timeout(Duration),
    /// No connection within the connect timeout.
    #[error("could not connect to WeChat within {0:?}")]
    ConnectTimeout(Duration),
    /// Connection-level failure.
    #[error("cannot reach WeChat: {0}")]
    Transport(String),
    /// An answer that is not what WeChat promises.
    #[error("malformed answer from WeChat: {0}")]
    Malformed(String),
}

impl WechatError {
    /// The WeChat errcode, if WeChat gave one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            WechatError::Api { errcode, .. } | WechatError::Wecom { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// How to react. Token-fetch and ticket-fetch share codes but not
    /// meanings: 40001 means "wrong secret" on a token fetch and "invalid
    /// access token" on a ticket fetch, hence `for_ticket`.
    pub fn class(&self, for_ticket: bool) -> ErrorClass {
        match self {
            WechatError::Api { errcode, .. } => match *errcode {
                45009 => ErrorClass::Quota,
                40001 | 40014 | 42001 if for_ticket => ErrorClass::TokenInvalid,
                // wrong secret, bad appid, bad params, IP whitelist, frozen, no permission
                40001 | 40002 | 40013 | 40125 | 40164 | 40243 | 41002 | 41004 | 48001 | 50001
                | 61004 | 89503 => ErrorClass::Config,
                _ => ErrorClass::Retryable,
            },
            WechatError::Wecom { errcode, .. } => wecom::class(*errcode, for_ticket),
            _ => ErrorClass::Retryable,
        }
    }
}

/// An HTTP client for WeChat's credential APIs.
#[derive(Debug, Clone)]
pub struct Wechat {
    http: reqwest::Client,
    base_url: String,
    wecom_base_url: String,
    timeout: Duration,
    connect_timeout: Duration,
}

/// Texts that must never leave this module: the AppSecret of a token call,
/// the access token of a ticket call, in every form a server or proxy could
/// echo them.
struct Scrub {
    /// Longest first, so a form containing another is replaced whole.
    needles: Vec<String>,
}

impl Scrub {
    fn new(secrets: &[&str]) -> Scrub {
        let mut needles = Vec::new();
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            needles.push((*secret).to_owned());
            // JSON-escaped, as in an echoed stable_token body.
            if let Ok(json) = serde_json::to_string(secret) {
                needles.push(json.trim_matches('"').to_owned());
            }
            for upper in [true, false] {
                // application/x-www-form-urlencoded (what reqwest's query uses): space as `+`.
                needles.push(percent_encode(secret, b"*-._", Some('+'), upper));
                needles.push(percent_encode(secret, b"*-._", None, upper));
                // RFC 3986 unreserved, and JavaScript's encodeURIComponent.
                needles.push(percent_encode(secret, b"-._~", None, upper));
                needles.push(percent_encode(secret, b"-_.!~*'()", None, upper));
                // Everything but letters and digits.
                needles.push(percent_encode(secret, b"", None, upper));
            }
        }
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Scrub { needles }
    }

    /// `text` without any needle and without control characters (so an
    /// upstream text cannot forge log lines or send terminal escapes).
    fn apply(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), "***");
            }
        }
        out.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }

    /// The error with every upstream text scrubbed.
    fn error(&self, e: WechatError) -> WechatError {
        match e {
            WechatError::Api { errcode, errmsg } => WechatError::Api {
                errcode,
                errmsg: self.apply(&errmsg),
            },
            WechatError::Wecom { errcode, errmsg } => WechatError::Wecom {
                errcode,
                errmsg: self.apply(&errmsg),
            },
            WechatError::Transport(t) => WechatError::Transport(self.apply(&t)),
            WechatError::Malformed(t) => WechatError::Malformed(self.apply(&t)),
            other => other,
        }
    }
}

/// Percent-encodes every byte but ASCII letters, digits and `keep`; a space
/// becomes `space` if given.
fn percent_encode(s: &str, keep: &[u8], space: Option<char>, upper: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(char::from(b));
        } else if let (b' ', Some(c)) = (b, space) {
            out.push(c);
        } else if upper {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

impl Wechat {
    /// Builds the client; fails only if the TLS backend cannot initialise.
    pub fn new(cfg: &WechatConfig) -> Result<Wechat, WechatError> {
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .user_agent(concat!("wxtoken/", env!("CARGO_PKG_VERSION")))
            // Never follow a redirect: the classic token URL carries the
            // AppSecret, which must go to the configured host only.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| WechatError::Transport(e.without_url().to_string()))?;
        Ok(Wechat {
            http,
            base_url: cfg.base_url.clone(),
            wecom_base_url: cfg.wecom_base_url.clone(),
            timeout: cfg.request_timeout,
            connect_timeout: cfg.connect_timeout,
        })
    }

    /// `GET /cgi-bin/token?grant_type=client_credential&appid=..&secret=..`.
    pub async fn classic_token(
        &self,
        appid: &str,
        secret: &SecretString,
    ) -> Result<Fetched, WechatError> {
        let req = self
            .http
            .get(format!("{}/cgi-bin/token", self.base_url))
            .query(&[
                ("grant_type", "client_credential"),
                ("appid", appid),
                ("secret", secret.expose_secret()),
            ]);
        self.send(req, "access_token", &Scrub::new(&[secret.expose_secret()]))
            .await
    }

    /// `POST /cgi-bin/stable_token` with `force_refresh` as given.
    pub async fn stable_token(
        &self,
        appid: &str,
        secret: &SecretString,
        force_refresh: bool,
    ) -> Result<Fetched, WechatError> {
        let body = serde_json::json!({
            "grant_type": "client_credential",
            "appid": appid,
            "secret": secret.expose_secret(),
            "force_refresh": force_refresh,
        });
        let req = self
            .http
            .post(format!("{}/cgi-bin/stable_token", self.base_url))
            .json(&body);
        self.send(req, "access_token", &Scrub::new(&[secret.expose_secret()]))
            .await
    }

    /// `GET /cgi-bin/ticket/getticket?access_token=..&type=..`.
    pub async fn ticket(
        &self,
        access_token: &str,
        ticket_type: &str,
    ) -> Result<Fetched, WechatError> {
        let req = self
            .http
            .get(format!("{}/cgi-bin/ticket/getticket", self.base_url))
            .query(&[("access_token", access_token), ("type", ticket_type)]);
        self.send(req, "ticket", &Scrub::new(&[access_token])).await
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        field: &'static str,
        scrub: &Scrub,
    ) -> Result<Fetched, WechatError> {
        let (reply, sent_at) = self.send_object(req, scrub).await?;
        token_of(&reply, field, sent_at).map_err(|e| scrub.error(e))
    }

    /// Sends `req` and returns WeChat's JSON object (errcode 0 or none) and
    /// when the request was sent; every error scrubbed.
    async fn send_object(
        &self,
        req: reqwest::RequestBuilder,
        scrub: &Scrub,
    ) -> Result<(serde_json::Map<String, serde_json::Value>, Instant), WechatError> {
        self.send_unscrubbed(req, scrub, MAX_BODY)
            .await
            .map_err(|e| scrub.error(e))
    }

    /// [`Wechat::send_object`] for a list page, whose body may be larger.
    async fn send_list(
        &self,
        req: reqwest::RequestBuilder,
        scrub: &Scrub,
    ) -> Result<serde_json::Map<String, serde_json::Value>, WechatError> {
        self.send_unscrubbed(req, scrub, MAX_LIST_BODY)
            .await
            .map(|(reply, _)| reply)
            .map_err(|e| scrub.error(e))
    }

    /// `scrub` is applied here only to the errmsg, before it is truncated (so
    /// no part of a secret survives the cut); [`Wechat::send_object`] scrubs
    /// the rest.
    async fn send_unscrubbed(
        &self,
        req: reqwest::RequestBuilder,
        scrub: &Scrub,
        max_body: usize,
    ) -> Result<(serde_json::Map<String, serde_json::Value>, Instant), WechatError> {
        let sent_at = Instant::now();
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(WechatError::Status {
                status: status.as_u16(),
            });
        }
        if resp.content_length().is_some_and(|n| n > max_body as u64) {
            return Err(WechatError::Malformed("body too large".into()));
        }
        // Read at most MAX_BODY bytes, whatever Content-Length said.
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(e))? {
            if body.len() + chunk.len() > max_body {
                return Err(WechatError::Malformed("body too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((reply(&body, scrub)?, sent_at))
    }

    fn transport(&self, e: reqwest::Error) -> WechatError {
        if e.is_timeout() && e.is_connect() {
            WechatError::ConnectTimeout(self.connect_timeout)
        } else if e.is_timeout() {
            WechatError::Timeout(self.timeout)
        } else if e.is_decode() || e.is_body() {
            WechatError::Malformed(format!("unreadable body: {}", e.without_url()))
        } else {
            // without_url: the classic token URL carries the AppSecret.
            WechatError::Transport(error_chain(&e.without_url()))
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Parses a WeChat reply carrying `field` ("access_token" or "ticket").
#[cfg(test)]
fn parse(
    body: &[u8],
    field: &str,
    sent_at: Instant,
    scrub: &Scrub,
) -> Result<Fetched, WechatError> {
    token_of(&reply(body, scrub)?, field, sent_at)
}

/// A WeChat reply: a JSON object whose errcode is 0 or absent (else
/// [`WechatError::Api`]). Error texts name fields and positions, never
/// content: the JSON parser's own messages can quote the input, so they are
/// not used.
fn reply(
    body: &[u8],
    scrub: &Scrub,
) -> Result<serde_json::Map<String, serde_json::Value>, WechatError> {
    use serde_json::Value;
    let reply: Value = serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Eof => "cut off",
            _ => "not JSON",
        };
        WechatError::Malformed(format!(
            "not the JSON WeChat sends ({what} at line {} column {})",
            e.line(),
            e.column()
        ))
    })?;
    let Value::Object(reply) = reply else {
        return Err(WechatError::Malformed(
            "not the JSON WeChat sends (not an object)".into(),
        ));
    };
    let wrong_type =
        |name: &str, want: &str| WechatError::Malformed(format!("{name} is not {want}"));
    let errcode = match reply.get("errcode") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_i64()
                .ok_or_else(|| wrong_type("errcode", "an integer"))?,
        ),
        Some(_) => return Err(wrong_type("errcode", "an integer")),
    };
    if let Some(errcode) = errcode.filter(|c| *c != 0) {
        let errmsg = match reply.get("errmsg") {
            Some(Value::String(m)) => scrub.apply(m),
            None | Some(Value::Null) => String::new(),
            Some(_) => "(errmsg is not a string)".to_owned(),
        };
        return Err(WechatError::Api {
            errcode,
            errmsg: truncate(errmsg, 200),
        });
    }
    Ok(reply)
}

/// The printable token in `reply[field]` (at most [`MAX_TOKEN_LEN`]).
fn text_field(
    reply: &serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<String, WechatError> {
    use serde_json::Value;
    let token = match reply.get(field) {
        Some(Value::String(t)) => t,
        None | Some(Value::Null) => {
            return Err(WechatError::Malformed(format!("no {field} in the reply")))
        }
        Some(_) => return Err(WechatError::Malformed(format!("{field} is not a string"))),
    };
    if token.is_empty()
        || token.len() > MAX_TOKEN_LEN
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(WechatError::Malformed(format!(
            "{field} is empty, too long or not printable ASCII"
        )));
    }
    Ok(token.clone())
}

/// The token `field` and its `expires_in` in `reply`, fetched by a request
/// sent at `sent_at`.
fn token_of(
    reply: &serde_json::Map<String, serde_json::Value>,
    field: &str,
    sent_at: Instant,
) -> Result<Fetched, WechatError> {
    use serde_json::Value;
    let token = text_field(reply, field)?;
    // expires_in is a number; accept a numeric string too, reject anything else.
    let expires_in = match reply.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|n| *n > 0)
    .ok_or_else(|| WechatError::Malformed("expires_in missing or not a positive integer".into()))?;
    Ok(Fetched {
        token,
        expires_in,
        sent_at,
    })
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let cut = (0..=max)
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(body: &str) -> Result<Fetched, WechatError> {
        parse(
            body.as_bytes(),
            "access_token",
            Instant::now(),
            &Scrub::new(&[]),
        )
    }

    #[test]
    fn parses_success_and_errors() {
        let ok = p(r#"{"access_token":"ACCESS_TOKEN_1","expires_in":7200}"#).unwrap();
        assert_eq!(ok.token, "ACCESS_TOKEN_1");
        assert_eq!(ok.expires_in, 7200);
        let ok = p(r#"{"errcode":0,"access_token":"T","expires_in":"60"}"#).unwrap();
        assert_eq!(ok.expires_in, 60);
        let e = p(r#"{"errcode":40164,"errmsg":"invalid ip 1.2.3.4, not in whitelist rid: x"}"#)
            .unwrap_err();
        assert_eq!(e.errcode(), Some(40164));
        assert_eq!(e.class(false), ErrorClass::Config);
    }

    #[test]
    fn malformed_replies_are_rejected_not_stored() {
        for body in [
            "<html>502</html>",
            r#"{"access_token":"ab"#,
            r#"{"expires_in":7200}"#,
            r#"{"access_token":"","expires_in":7200}"#,
            r#"{"access_token":"has space","expires_in":7200}"#,
            r#"{"access_token":"T","expires_in":0}"#,
            r#"{"access_token":"T","expires_in":-5}"#,
            r#"{"access_token":"T"}"#,
            r#"{"access_token":"T","expires_in":"soon"}"#,
        ] {
            let e = p(body).unwrap_err();
            assert!(matches!(e, WechatError::Malformed(_)), "{body}: {e:?}");
            assert_eq!(e.class(false), ErrorClass::Retryable);
        }
    }

    #[test]
    fn classification() {
        let api = |errcode| WechatError::Api {
            errcode,
            errmsg: String::new(),
        };
        assert_eq!(api(-1).class(false), ErrorClass::Retryable);
        assert_eq!(api(45011).class(false), ErrorClass::Retryable);
        assert_eq!(api(45009).class(false), ErrorClass::Quota);
        for code in [40001, 40013, 40125, 40164, 61004, 40243] {
            assert_eq!(api(code).class(false), ErrorClass::Config, "{code}");
        }
        assert_eq!(api(40001).class(true), ErrorClass::TokenInvalid);
        assert_eq!(api(42001).class(true), ErrorClass::TokenInvalid);
        assert_eq!(
            WechatError::Status { status: 502 }.class(false),
            ErrorClass::Retryable
        );
    }

    const SECRET: &str = "s3cr3t/+&=% é\"x";

    fn scrubbed(body: &str) -> String {
        let e = parse(
            body.as_bytes(),
            "access_token",
            Instant::now(),
            &Scrub::new(&[SECRET]),
        )
        .unwrap_err();
        Scrub::new(&[SECRET]).error(e).to_string()
    }

    #[test]
    fn an_echoed_secret_is_scrubbed_in_every_encoding() {
        let forms = [
            SECRET.to_owned(),
            // form-urlencoded, as reqwest sends it (space as +), both hex cases
            "s3cr3t%2F%2B%26%3D%25+%C3%A9%22x".to_owned(),
            "s3cr3t%2f%2b%26%3d%25+%c3%a9%22x".to_owned(),
            // percent-encoded with %20
            "s3cr3t%2F%2B%26%3D%25%20%C3%A9%22x".to_owned(),
            // JSON-escaped, as in an echoed stable_token body
            r#"s3cr3t/+&=% é\"x"#.to_owned(),
        ];
        for form in forms {
            let errmsg =
                format!("invalid appid, GET /cgi-bin/token?appid=wx1&secret={form} rid: 1");
            let body = serde_json::json!({"errcode": 40013, "errmsg": errmsg}).to_string();
            let e = scrubbed(&body);
            assert!(e.contains("errcode 40013"), "{e}");
            assert!(e.contains("secret=*** rid: 1"), "{form}: {e}");
            assert!(!e.contains("s3cr3t"), "{form}: {e}");
        }
    }

    #[test]
    fn a_secret_near_the_cut_is_scrubbed_before_truncation() {
        let errmsg = format!("{}{SECRET}", "x".repeat(190));
        let body = serde_json::json!({"errcode": -1, "errmsg": errmsg}).to_string();
        let e = scrubbed(&body);
        assert!(!e.contains("s3cr3"), "{e}");
        assert!(e.ends_with("***"), "{e}");
    }

    #[test]
    fn transport_and_malformed_texts_are_scrubbed() {
        let s = Scrub::new(&[SECRET]);
        let e = s.error(WechatError::Transport(format!("proxy said {SECRET}")));
        assert_eq!(e.to_string(), "cannot reach WeChat: proxy said ***");
        let e = s.error(WechatError::Malformed(
            "got s3cr3t%2F%2B%26%3D%25+%C3%A9%22x".into(),
        ));
        assert_eq!(e.to_string(), "malformed answer from WeChat: got ***");
    }

    #[test]
    fn wrong_typed_fields_are_named_never_quoted() {
        for body in [
            r#"{"errcode":"s3cr3t-value","errmsg":"x"}"#,
            r#"{"access_token":["s3cr3t-value"],"expires_in":7200}"#,
            r#"{"access_token":"T","expires_in":{"s3cr3t-value":1}}"#,
            r#"{"access_token":"T","expires_in":7200,"s3cr3t-value"#,
            r#"["s3cr3t-value"]"#,
            r#"s3cr3t-value"#,
        ] {
            let e = p(body).unwrap_err();
            assert!(matches!(e, WechatError::Malformed(_)), "{body}: {e:?}");
            assert!(!e.to_string().contains("s3cr3t"), "{body}: {e}");
        }
        let e = p(r#"{"errcode":"s3cr3t-value"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed answer from WeChat: errcode is not an integer"
        );
    }

    #[test]
    fn tokens_with_control_characters_or_escapes_are_refused() {
        for token in [
            "abc\ndef",
            "abc\r\n2024-01-01 INFO fake",
            "\u{1b}[31mred",
            "tab\there",
            "tökén",
            "nul\u{0}",
        ] {
            let body = serde_json::json!({"access_token": token, "expires_in": 7200}).to_string();
            let e = p(&body).unwrap_err();
            assert!(
                e.to_string().contains("not printable ASCII"),
                "{token:?}: {e}"
            );
        }
    }

    #[test]
    fn errmsg_control_characters_cannot_forge_log_lines() {
        let body = serde_json::json!({
            "errcode": -1,
            "errmsg": "busy\n2024-01-01T00:00:00Z INFO stored new value\u{1b}[2J",
        })
        .to_string();
        let e = p(&body).unwrap_err().to_string();
        assert!(!e.contains('\n') && !e.contains('\u{1b}'), "{e:?}");
    }

    #[tokio::test]
    async fn a_connect_timeout_is_not_reported_as_a_request_timeout() {
        // A listener whose accept queue is full and never accepted: Linux
        // drops further SYNs, so connecting hangs until the connect timeout.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..4 {
            if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                fillers.push(s);
            }
        }
        let cfg = WechatConfig {
            base_url: format!("http://{addr}"),
            connect_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_secs(20),
            ..WechatConfig::default()
        };
        let wechat = Wechat::new(&cfg).unwrap();
        let started = Instant::now();
        let e = wechat
            .classic_token("wx1", &SecretString::from("s"))
            .await
            .unwrap_err();
        assert!(
            matches!(e, WechatError::ConnectTimeout(d) if d == Duration::from_millis(300)),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "could not connect to WeChat within 300ms");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop((listener, fillers));
    }
}
