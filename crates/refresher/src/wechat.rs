//! Calls to WeChat's credential APIs and the classification of what comes back.
//!
//! One function per endpoint (classic token, stable token, tickets); each
//! returns a [`Fetched`] value or a [`WechatError`] whose [`ErrorClass`] tells
//! the scheduler what to do next. Nothing here touches Redis, and nothing here
//! may print a secret: the classic API carries the AppSecret in its query
//! string, so transport errors are stripped of their URL.

use crate::config::WechatConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::time::{Duration, Instant};

/// Largest response body read from WeChat; anything longer is malformed.
const MAX_BODY: usize = 64 * 1024;
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
    /// A non-200 HTTP status.
    #[error("HTTP {status} from WeChat")]
    Status {
        /// The status code.
        status: u16,
    },
    /// No answer within the request timeout.
    #[error("WeChat did not answer within {0:?}")]
    Timeout(Duration),
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
            WechatError::Api { errcode, .. } => Some(*errcode),
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
            _ => ErrorClass::Retryable,
        }
    }
}

/// An HTTP client for WeChat's credential APIs.
#[derive(Debug, Clone)]
pub struct Wechat {
    http: reqwest::Client,
    base_url: String,
    timeout: Duration,
}

#[derive(Deserialize)]
struct Reply {
    errcode: Option<i64>,
    errmsg: Option<String>,
    access_token: Option<String>,
    ticket: Option<String>,
    expires_in: Option<serde_json::Value>,
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
            timeout: cfg.request_timeout,
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
        self.send(req, "access_token").await
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
        self.send(req, "access_token").await
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
        self.send(req, "ticket").await
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        field: &'static str,
    ) -> Result<Fetched, WechatError> {
        let sent_at = Instant::now();
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(WechatError::Status {
                status: status.as_u16(),
            });
        }
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(WechatError::Malformed("body too large".into()));
        }
        // Read at most MAX_BODY bytes, whatever Content-Length said.
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(e))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(WechatError::Malformed("body too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        parse(&body, field, sent_at)
    }

    fn transport(&self, e: reqwest::Error) -> WechatError {
        if e.is_timeout() {
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
fn parse(body: &[u8], field: &str, sent_at: Instant) -> Result<Fetched, WechatError> {
    let reply: Reply = serde_json::from_slice(body)
        .map_err(|e| WechatError::Malformed(format!("not the JSON WeChat sends ({e})")))?;
    if let Some(errcode) = reply.errcode.filter(|c| *c != 0) {
        let mut errmsg = reply.errmsg.unwrap_or_default();
        if errmsg.len() > 200 {
            let cut = (0..=200)
                .rev()
                .find(|i| errmsg.is_char_boundary(*i))
                .unwrap_or(0);
            errmsg.truncate(cut);
        }
        return Err(WechatError::Api { errcode, errmsg });
    }
    let token = match field {
        "ticket" => reply.ticket,
        _ => reply.access_token,
    }
    .ok_or_else(|| WechatError::Malformed(format!("no {field} in the reply")))?;
    if token.is_empty()
        || token.len() > MAX_TOKEN_LEN
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(WechatError::Malformed(format!(
            "{field} is empty, too long or not printable ASCII"
        )));
    }
    // expires_in is a number; accept a numeric string too, reject anything else.
    let expires_in = match reply.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn p(body: &str) -> Result<Fetched, WechatError> {
        parse(body.as_bytes(), "access_token", Instant::now())
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
}
