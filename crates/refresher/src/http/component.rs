//! `POST /wechat/component/{id}`: the authorization event URL (授权事件接收URL)
//! of a third-party platform (`[[component]]`, as held now: SIGHUP adds and
//! removes platforms). WeChat POSTs encrypted pushes here, and `success` is
//! answered only after Redis confirmed what the push asks for (WeChat
//! pushes again otherwise):
//!
//! - `component_verify_ticket`: stored under [`ComponentKeys::verify_ticket`]
//!   (unless a later push's ticket is stored: [`store_verify_ticket`]
//!   compares `CreateTime`s); a component token that is missing is due at
//!   once;
//! - `authorized` / `updateauthorized`: the authorization code is stored
//!   with the authorizer, registered and due at once (`authorizer`);
//! - `unauthorized`: the authorizer and all its keys are removed.
//!
//! No bearer token: WeChat cannot send one. What authenticates a push is
//! its `msg_signature` (over the message token) and the appid inside the
//! ciphertext. Refused pushes are logged at debug only (anyone who can
//! reach the port can send them) and never with a secret or a ticket;
//! tickets appear as 8-character prefixes.

use super::App;
use crate::token_prefix;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use quick_xml::events::Event;
use quick_xml::Reader;
use std::collections::HashMap;
use std::time::Duration;
use wxtoken_crypto::{CryptoError, MsgCrypt, SignedQuery};
use wxtoken_schema::{
    is_printable_token, store_verify_ticket, validate_name, wake_if_missing, ComponentKeys,
    CredentialKeys, Kind, MAX_TOKEN_LEN, VERIFY_TICKET_TTL_MS,
};

use super::limits::Peer;

/// Largest accepted push body (WeChat's are a few KiB).
pub(super) const BODY_LIMIT: usize = wxtoken_crypto::MAX_BODY_LEN;

/// How long an authorization code is kept when its push does not say
/// (WeChat's codes live about 10 minutes), and the longest it is kept.
const CODE_TTL: Duration = Duration::from_secs(600);
const CODE_TTL_MAX: Duration = Duration::from_secs(3600);

/// Why a push was refused. Messages hold no secret and no ticket.
#[derive(Debug, thiserror::Error)]
pub(super) enum PushError {
    #[error("unknown component")]
    Unknown,
    #[error("{0}")]
    BadRequest(String),
    #[error("the body is larger than {BODY_LIMIT} bytes")]
    TooLarge,
    #[error("signature mismatch")]
    BadSignature,
    #[error("cannot decrypt: {0}")]
    Crypto(CryptoError),
    #[error("storing the push in Redis: {0}")]
    Redis(String),
}

impl PushError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            PushError::Unknown => StatusCode::NOT_FOUND,
            PushError::BadRequest(_) | PushError::Crypto(_) => StatusCode::BAD_REQUEST,
            PushError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            PushError::BadSignature => StatusCode::UNAUTHORIZED,
            PushError::Redis(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for PushError {
    fn into_response(self) -> Response {
        (
            self.status(),
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response()
    }
}

/// `POST /wechat/component/{id}?timestamp&nonce&encrypt_type&msg_signature&signature`.
pub(super) async fn push(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let component = id
        .as_ref()
        .ok()
        .map(|Path(c)| c.chars().take(64).collect::<String>());
    let result = receive(&app, id, query, body).await;
    if let Some(component) = component.filter(|c| app.sh.registry.component_by_id(c).is_some()) {
        let outcome = match &result {
            Ok(handled) => *handled,
            Err(PushError::Redis(_)) => "failed",
            Err(_) => "rejected",
        };
        app.sh.metrics.push(&component, outcome);
    }
    match result {
        Ok(_) => (
            StatusCode::OK,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            "success",
        )
            .into_response(),
        Err(e) => {
            if matches!(e, PushError::Redis(_)) {
                tracing::warn!(%peer, error = %e, "component push not stored");
            } else {
                tracing::debug!(%peer, error = %e, "refused component push");
            }
            e.into_response()
        }
    }
}

/// Verifies, decrypts and acts on one push; says what it was.
async fn receive(
    app: &super::AppState,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<&'static str, PushError> {
    let Path(id) = id.map_err(|e| PushError::BadRequest(e.body_text()))?;
    let component = app
        .sh
        .registry
        .component_by_id(&id)
        .ok_or(PushError::Unknown)?;
    let keys =
        ComponentKeys::new(&app.sh.namespace, &component.appid).map_err(|_| PushError::Unknown)?;
    let crypt = MsgCrypt::new(
        component.token.clone(),
        component.encoding_aes_key.clone(),
        component.previous_encoding_aes_key.clone(),
        component.appid.clone(),
    );
    let Query(params) = query.map_err(|e| PushError::BadRequest(e.body_text()))?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => PushError::TooLarge,
        _ => PushError::BadRequest(e.body_text()),
    })?;
    let param = |name: &'static str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| PushError::BadRequest(format!("missing query parameter {name}")))
    };
    match params.get("encrypt_type").map(String::as_str) {
        None | Some("aes") => {}
        Some(_) => return Err(PushError::BadRequest("encrypt_type must be aes".into())),
    }
    let signed = SignedQuery {
        timestamp: param("timestamp")?,
        nonce: param("nonce")?,
        msg_signature: param("msg_signature")?,
    };
    let decrypted = crypt
        .verify_and_decrypt(signed, &body)
        .map_err(|e| match e {
            CryptoError::BadSignature => PushError::BadSignature,
            other => PushError::Crypto(other),
        })?;
    let msg = parse_message(&decrypted.message)
        .map_err(|why| PushError::BadRequest(format!("decrypted message: {why}")))?;
    // The appid inside the ciphertext was checked by MsgCrypt; the one in
    // the message must agree.
    if msg.get("AppId").is_some_and(|a| a != keys.appid()) {
        return Err(PushError::BadRequest(
            "decrypted message: wrong AppId".into(),
        ));
    }
    let info_type = msg.get("InfoType").map(String::as_str).unwrap_or("");
    match info_type {
        "component_verify_ticket" => {}
        "authorized" => return authorization(app, &component, &msg, "authorized").await,
        "updateauthorized" => {
            return authorization(app, &component, &msg, "updateauthorized").await
        }
        "unauthorized" => {
            let appid = authorizer_of(&msg)?;
            let removed =
                crate::authorizer::unauthorized(&app.sh, &component.appid, appid, pushed_at(&msg))
                    .await
                    .map_err(|e| PushError::Redis(e.to_string()))?;
            tracing::info!(id = %id, authorizer = appid, removed, "authorizer unauthorized the platform; its keys were removed");
            return Ok("unauthorized");
        }
        _ => {
            // Whatever else WeChat sends here: acknowledged so WeChat does
            // not retry, and logged for the operator.
            tracing::info!(
                id = %id,
                info_type = %info_type.chars().take(64).collect::<String>().escape_debug(),
                "component push acknowledged but not handled"
            );
            return Ok("ignored");
        }
    }
    let ticket = msg
        .get("ComponentVerifyTicket")
        .map(|t| t.trim())
        .filter(|t| is_printable_token(t) && t.len() <= MAX_TOKEN_LEN)
        .ok_or_else(|| {
            PushError::BadRequest("decrypted message: no usable ComponentVerifyTicket".into())
        })?;
    let create_time: u64 = msg
        .get("CreateTime")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| PushError::BadRequest("decrypted message: no usable CreateTime".into()))?;
    if store(app, &keys, ticket, create_time).await? {
        tracing::info!(
            id = %id,
            appid = keys.appid(),
            ticket = %token_prefix(ticket),
            create_time,
            "component_verify_ticket stored"
        );
    } else {
        // Authentic but older than the stored ticket (a late or replayed
        // push): acknowledged, the newer ticket kept.
        tracing::info!(
            id = %id,
            appid = keys.appid(),
            ticket = %token_prefix(ticket),
            create_time,
            "component_verify_ticket older than the stored one; kept the stored one"
        );
    }
    Ok("component_verify_ticket")
}

/// When WeChat says the event happened: the push's `CreateTime` (Unix s),
/// rounded up to the next second, in ms — an event in the same second as
/// a registration counts as newer.
fn pushed_at(msg: &HashMap<String, String>) -> Option<u64> {
    let secs: u64 = msg.get("CreateTime")?.trim().parse().ok()?;
    secs.checked_add(1)?.checked_mul(1000)
}

/// The `AuthorizerAppid` of an authorization push.
fn authorizer_of(msg: &HashMap<String, String>) -> Result<&str, PushError> {
    msg.get("AuthorizerAppid")
        .map(|a| a.trim())
        .filter(|a| validate_name("authorizer appid", a).is_ok())
        .ok_or_else(|| PushError::BadRequest("decrypted message: no usable AuthorizerAppid".into()))
}

/// `authorized` / `updateauthorized`: the code is stored with the
/// authorizer, which is registered and due at once; the refresher that
/// claims it exchanges the code.
async fn authorization(
    app: &super::AppState,
    component: &crate::config::Component,
    msg: &HashMap<String, String>,
    info_type: &'static str,
) -> Result<&'static str, PushError> {
    let appid = authorizer_of(msg)?;
    let code = msg
        .get("AuthorizationCode")
        .map(|c| c.trim())
        .filter(|c| is_printable_token(c))
        .ok_or_else(|| {
            PushError::BadRequest("decrypted message: no usable AuthorizationCode".into())
        })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ttl = msg
        .get("AuthorizationCodeExpiredTime")
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map_or(CODE_TTL, |at| Duration::from_secs(at.saturating_sub(now)))
        .clamp(Duration::from_secs(60), CODE_TTL_MAX);
    let r = crate::authorizer::authorized(&app.sh, component, appid, code, ttl, pushed_at(msg))
        .await
        .map_err(|e| PushError::Redis(e.to_string()))?;
    if r.stale {
        tracing::info!(component = %component.id, authorizer = appid, event = info_type,
            "authorization older than the registered one (a replayed or late push); ignored");
        return Ok(info_type);
    }
    tracing::info!(component = %component.id, authorizer = appid, event = info_type, new = r.queued > 0,
        "authorization received; exchanging its code");
    Ok(info_type)
}

/// Stores the ticket unless a later push's is stored (`SET … PX 12h`
/// through [`store_verify_ticket`]), bounded by the Redis timeout; `true`
/// when stored. A component token that is not stored is then due at once
/// (it was waiting for a ticket).
async fn store(
    app: &super::AppState,
    keys: &ComponentKeys,
    ticket: &str,
    create_time: u64,
) -> Result<bool, PushError> {
    let sh = &app.sh;
    let mut con = sh.redis.con();
    let stored = sh
        .redis
        .step(store_verify_ticket(
            &mut con,
            keys,
            ticket,
            create_time,
            Duration::from_millis(VERIFY_TICKET_TTL_MS),
        ))
        .await
        .map_err(|e| PushError::Redis(e.to_string()))?;
    if stored {
        if let Ok(token_keys) = CredentialKeys::component(&sh.namespace, keys.appid()) {
            let mut con = sh.redis.con();
            if let Err(e) = sh
                .redis
                .step(wake_if_missing(
                    &mut con,
                    &token_keys,
                    Kind::ComponentAccessToken,
                ))
                .await
            {
                tracing::debug!(error = %e, "could not wake the component token");
            }
        }
    }
    Ok(stored)
}

/// The direct children of the root `<xml>` of a decrypted message, by name
/// (text and CDATA joined, trimmed). DTDs and non-predefined entities are
/// refused; nested elements are ignored.
pub(super) fn parse_message(xml: &str) -> Result<HashMap<String, String>, &'static str> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut depth = 0usize;
    let mut seen_root = false;
    let mut name: Option<String> = None;
    let mut value = String::new();
    let mut fields = HashMap::new();
    loop {
        match reader.read_event().map_err(|_| "malformed XML")? {
            Event::DocType(_) => return Err("DTDs are not accepted"),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Start(e) => {
                if depth == 0 {
                    if seen_root || e.name().as_ref() != b"xml" {
                        return Err("root element is not a single <xml>");
                    }
                    seen_root = true;
                } else if depth == 1 {
                    name = Some(
                        std::str::from_utf8(e.name().as_ref())
                            .map_err(|_| "bad element name")?
                            .to_owned(),
                    );
                    value.clear();
                }
                depth += 1;
            }
            Event::Empty(e) => {
                if depth == 0 {
                    return Err("root element is empty");
                }
                if depth == 1 {
                    let n = std::str::from_utf8(e.name().as_ref())
                        .map_err(|_| "bad element name")?
                        .to_owned();
                    fields.insert(n, String::new());
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth == 1 {
                    if let Some(n) = name.take() {
                        if fields.insert(n, value.trim().to_owned()).is_some() {
                            return Err("duplicate element");
                        }
                    }
                }
            }
            Event::Text(t) => {
                if depth == 2 && name.is_some() {
                    value.push_str(&t.decode().map_err(|_| "bad text")?);
                }
            }
            Event::CData(c) => {
                if depth == 2 && name.is_some() {
                    value.push_str(&c.decode().map_err(|_| "bad CDATA")?);
                }
            }
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref().ok().flatten().map(|c| c.to_string())
                } else {
                    std::str::from_utf8(&r)
                        .ok()
                        .and_then(quick_xml::escape::resolve_predefined_entity)
                        .map(str::to_owned)
                };
                let resolved = resolved.ok_or("entity references are not accepted")?;
                if depth == 2 && name.is_some() {
                    value.push_str(&resolved);
                }
            }
            Event::Eof => break,
        }
    }
    if !seen_root || depth != 0 {
        return Err("unterminated document");
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_parsed_strictly() {
        let m = parse_message(
            "<xml><AppId><![CDATA[wx1]]></AppId><CreateTime>1413192605</CreateTime>\
             <InfoType><![CDATA[component_verify_ticket]]></InfoType>\
             <ComponentVerifyTicket><![CDATA[ticket@@@abc]]></ComponentVerifyTicket></xml>",
        )
        .unwrap();
        assert_eq!(m["AppId"], "wx1");
        assert_eq!(m["CreateTime"], "1413192605");
        assert_eq!(m["InfoType"], "component_verify_ticket");
        assert_eq!(m["ComponentVerifyTicket"], "ticket@@@abc");
        assert_eq!(
            parse_message("<xml><A>x &amp; y</A><B/></xml>").unwrap()["A"],
            "x & y"
        );
        for bad in [
            "",
            "<root><A>1</A></root>",
            "<xml><A>1</A><A>2</A></xml>",
            "<!DOCTYPE x [<!ENTITY e \"boom\">]><xml><A>&e;</A></xml>",
            "<xml><A>&e;</A></xml>",
            "<xml><A>1</B></xml>",
            "<xml><A>1</A>",
            "<xml/>",
        ] {
            assert!(parse_message(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn refusals_map_to_statuses() {
        assert_eq!(PushError::Unknown.status(), StatusCode::NOT_FOUND);
        assert_eq!(PushError::BadSignature.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            PushError::Crypto(CryptoError::BadBase64).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(PushError::TooLarge.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            PushError::Redis("x".into()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
