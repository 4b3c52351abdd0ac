//! `GET`/`POST /wecom/suite/{id}`: the command callback URL (指令回调URL)
//! of a WeCom third-party suite (`[[wecom_suite]]`, as held now).
//!
//! - `GET ?msg_signature&timestamp&nonce&echostr`: WeCom's URL
//!   verification. The signature is over the token, timestamp, nonce and
//!   `echostr`; the decrypted `echostr` is answered as plain text (no Redis
//!   involved, well within WeCom's 1 s).
//! - `POST ?msg_signature&timestamp&nonce` with an encrypted envelope:
//!   `suite_ticket` (stored, newest wins), `create_auth` (its auth code is
//!   recorded for exchange), `change_auth`, `cancel_auth` (the corp and all
//!   its keys removed). `success` is answered only after Redis confirmed
//!   what the push asks for (WeCom pushes again otherwise).
//!
//! Same crypto as WeChat's; the receive id inside every ciphertext is the
//! suite id. What authenticates a request is its `msg_signature` (over the
//! callback token) and that id. Refused requests are logged at debug only
//! (anyone who can reach the port can send them), never with a secret, a
//! ticket or a code; tickets appear as 8-character prefixes.

use super::component::{parse_message, PushError};
use super::limits::Peer;
use super::App;
use crate::token_prefix;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Arc;
use wxtoken_crypto::{CryptoError, SignedQuery};
use wxtoken_schema::{is_printable_token, validate_name, MAX_TOKEN_LEN};

/// A `create_auth` push older than this is not acted on: its code expired
/// long ago (WeCom's live 10 minutes), and its record may be forgotten.
const CREATE_AUTH_MAX_AGE_SECS: u64 = 50 * 60;

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, PushError> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| PushError::BadRequest(format!("missing query parameter {name}")))
}

fn suite_of(
    app: &super::AppState,
    id: Result<Path<String>, PathRejection>,
) -> Result<Arc<crate::config::WecomSuite>, PushError> {
    let Path(id) = id.map_err(|e| PushError::BadRequest(e.body_text()))?;
    app.sh.registry.suite_by_id(&id).ok_or(PushError::Unknown)
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// `GET /wecom/suite/{id}?msg_signature&timestamp&nonce&echostr`.
pub(super) async fn verify(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    id: Result<Path<String>, PathRejection>,
    query: Params,
) -> Response {
    let result = (|| {
        let suite = suite_of(&app, id)?;
        let Query(params) = query.map_err(|e| PushError::BadRequest(e.body_text()))?;
        let signed = SignedQuery {
            timestamp: param(&params, "timestamp")?,
            nonce: param(&params, "nonce")?,
            msg_signature: param(&params, "msg_signature")?,
        };
        let echostr = param(&params, "echostr")?;
        let plain = suite
            .crypt()
            .verify_and_decrypt_value(signed, echostr)
            .map_err(crypto)?;
        Ok::<_, PushError>((suite.id.clone(), plain.message))
    })();
    match result {
        Ok((id, echo)) => {
            tracing::info!(suite = %id, "WeCom verified the suite's callback URL");
            app.sh.metrics.push(&id, "url_verification");
            text(StatusCode::OK, echo)
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "refused suite URL verification");
            e.into_response()
        }
    }
}

fn crypto(e: CryptoError) -> PushError {
    match e {
        CryptoError::BadSignature => PushError::BadSignature,
        other => PushError::Crypto(other),
    }
}

/// `POST /wecom/suite/{id}?msg_signature&timestamp&nonce`.
pub(super) async fn push(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    id: Result<Path<String>, PathRejection>,
    query: Params,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let suite = suite_of(&app, id);
    let result = match &suite {
        Ok(suite) => receive(&app, suite, query, body).await,
        Err(PushError::Unknown) => Err(PushError::Unknown),
        Err(e) => Err(PushError::BadRequest(e.to_string())),
    };
    if let Ok(suite) = &suite {
        let outcome = match &result {
            Ok(handled) => *handled,
            Err(PushError::Redis(_)) => "failed",
            Err(_) => "rejected",
        };
        app.sh.metrics.push(&suite.id, outcome);
    }
    match result {
        Ok(_) => text(StatusCode::OK, "success".into()),
        Err(e) => {
            if matches!(e, PushError::Redis(_)) {
                tracing::warn!(%peer, error = %e, "suite push not stored");
            } else {
                tracing::debug!(%peer, error = %e, "refused suite push");
            }
            e.into_response()
        }
    }
}

/// Verifies, decrypts and acts on one push; says what it was.
async fn receive(
    app: &super::AppState,
    suite: &Arc<crate::config::WecomSuite>,
    query: Params,
    body: Result<Bytes, BytesRejection>,
) -> Result<&'static str, PushError> {
    let Query(params) = query.map_err(|e| PushError::BadRequest(e.body_text()))?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => PushError::TooLarge,
        _ => PushError::BadRequest(e.body_text()),
    })?;
    let signed = SignedQuery {
        timestamp: param(&params, "timestamp")?,
        nonce: param(&params, "nonce")?,
        msg_signature: param(&params, "msg_signature")?,
    };
    let decrypted = suite
        .crypt()
        .verify_and_decrypt(signed, &body)
        .map_err(crypto)?;
    let msg = parse_message(&decrypted.message)
        .map_err(|why| PushError::BadRequest(format!("decrypted message: {why}")))?;
    // The suite id inside the ciphertext was checked by MsgCrypt; the one
    // in the message must agree.
    if msg.get("SuiteId").is_some_and(|s| *s != suite.suite_id) {
        return Err(PushError::BadRequest(
            "decrypted message: wrong SuiteId".into(),
        ));
    }
    let timestamp: u64 = msg
        .get("TimeStamp")
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| PushError::BadRequest("decrypted message: no usable TimeStamp".into()))?;
    let redis = |e: crate::suite::SuiteError| PushError::Redis(e.to_string());
    let sh = &app.sh;
    match msg.get("InfoType").map(String::as_str).unwrap_or("") {
        "suite_ticket" => {
            let ticket = msg
                .get("SuiteTicket")
                .map(|t| t.trim())
                .filter(|t| is_printable_token(t) && t.len() <= MAX_TOKEN_LEN)
                .ok_or_else(|| {
                    PushError::BadRequest("decrypted message: no usable SuiteTicket".into())
                })?;
            let stored = crate::suite::suite_ticket(sh, suite, ticket, timestamp)
                .await
                .map_err(redis)?;
            tracing::info!(suite = %suite.id, ticket = %token_prefix(ticket), timestamp, stored,
                "{}", if stored { "suite_ticket stored" } else { "suite_ticket older than the stored one; kept the stored one" });
            Ok("suite_ticket")
        }
        "create_auth" => {
            let code = msg
                .get("AuthCode")
                .map(|c| c.trim())
                .filter(|c| is_printable_token(c))
                .ok_or_else(|| {
                    PushError::BadRequest("decrypted message: no usable AuthCode".into())
                })?;
            if crate::unix_ms() / 1000 > timestamp.saturating_add(CREATE_AUTH_MAX_AGE_SECS) {
                tracing::info!(suite = %suite.id, timestamp, "create_auth push too old to act on (a replay?); ignored");
                return Ok("create_auth");
            }
            let new = crate::suite::create_auth(sh, suite, code)
                .await
                .map_err(redis)?;
            if new {
                tracing::info!(suite = %suite.id, "create_auth received; exchanging its auth code");
            } else {
                tracing::info!(suite = %suite.id, "create_auth for a known auth code (a retried or replayed push); nothing to do");
            }
            Ok("create_auth")
        }
        event @ ("change_auth" | "cancel_auth") => {
            let corpid = msg
                .get("AuthCorpId")
                .map(|c| c.trim())
                .filter(|c| validate_name("corpid", c).is_ok())
                .ok_or_else(|| {
                    PushError::BadRequest("decrypted message: no usable AuthCorpId".into())
                })?;
            if event == "change_auth" {
                let known = crate::suite::change_auth(sh, suite, corpid)
                    .await
                    .map_err(redis)?;
                tracing::info!(suite = %suite.id, corpid, known, "corp changed its authorization of the suite");
                return Ok("change_auth");
            }
            // In the same second as a registration counts as newer.
            let pushed_at = timestamp.checked_add(1).and_then(|s| s.checked_mul(1000));
            let removed = crate::suite::cancel_auth(sh, suite, corpid, pushed_at)
                .await
                .map_err(redis)?;
            tracing::info!(suite = %suite.id, corpid, removed,
                "corp cancelled its authorization of the suite; its keys were removed");
            Ok("cancel_auth")
        }
        other => {
            // Whatever else WeCom sends here: acknowledged so WeCom does
            // not retry, and logged for the operator.
            tracing::info!(
                suite = %suite.id,
                info_type = %other.chars().take(64).collect::<String>().escape_debug(),
                "suite push acknowledged but not handled"
            );
            Ok("ignored")
        }
    }
}
