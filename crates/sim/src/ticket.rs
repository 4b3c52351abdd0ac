//! JS-SDK tickets: `GET /cgi-bin/ticket/getticket?access_token=..&type=jsapi|wx_card`.
//!
//! Requires a currently valid access token (classic or stable; an authorizer access token gets
//! the authorizer account's tickets, see `authorizer.rs`). Each successful fetch issues
//! a new ticket of that type for the token's app; the previous ticket of that type stays valid
//! for `overlap` more (the classic-token model). Must not: issue a ticket on an invalid token,
//! or attribute a call to an app other than the one owning the access token.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::errcode;
use crate::evidence::{Endpoint, FetchOutcome};
use crate::fault;
use crate::state::{Inner, Issued, Now, Previous, Shared, TokenKind};
use crate::wire::{self, query_param, WxReply};

/// `GET /cgi-bin/ticket/getticket`
pub(crate) async fn get_ticket(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> Response {
    let q = query.as_deref();
    let access_token = query_param(q, "access_token");
    let ticket_type = query_param(q, "type");
    let owner = access_token
        .as_deref()
        .and_then(|t| shared.lock().owner_of(t));
    if let Some(resp) = fault::intercept(&shared, owner.as_deref(), Endpoint::Ticket, false, || {
        format!("GET /cgi-bin/ticket/getticket?{}", q.unwrap_or_default())
    })
    .await
    {
        return resp;
    }

    let now = shared.now();
    let Some(access_token) = access_token else {
        return WxReply::err(errcode::ACCESS_TOKEN_MISSING).into_response();
    };
    if owner.is_none() {
        // Not an app's token: perhaps an authorizer's (their own lock, taken alone).
        if let Some(reply) =
            shared
                .authorizers
                .ticket(&access_token, ticket_type.as_deref(), &shared.timing, &now)
        {
            return reply.into_response();
        }
    }
    let mut inner = shared.lock();
    let reply = ticket_rules(
        &mut inner,
        &shared,
        &now,
        &access_token,
        ticket_type.as_deref(),
        owner.as_deref(),
    );

    let (outcome, reply) = match reply {
        Ok(issued) => (
            FetchOutcome::Issued {
                token_prefix: wire::prefix(&issued.token),
                reused: false,
                expires_in: issued.expires_in,
            },
            WxReply::Ok(json!({
                "errcode": 0,
                "errmsg": "ok",
                "ticket": issued.token,
                "expires_in": issued.expires_in,
            })),
        ),
        Err(reply) => {
            let errcode = match &reply {
                WxReply::Err { code, .. } => *code,
                WxReply::Ok(_) => errcode::OK,
            };
            (FetchOutcome::Error { errcode }, reply)
        }
    };
    if let Some(appid) = owner.as_deref() {
        inner.record(appid, Endpoint::Ticket, false, outcome, &now);
    }
    reply.into_response()
}

/// WeChat's ticket rules, in order: token validity, ticket type, quota; then issue.
fn ticket_rules(
    inner: &mut Inner,
    shared: &Shared,
    now: &Now,
    access_token: &str,
    ticket_type: Option<&str>,
    owner: Option<&str>,
) -> Result<Issued, WxReply> {
    inner
        .check_access_token(access_token, now)
        .map_err(WxReply::err)?;
    let kind = match ticket_type {
        Some("jsapi") => TokenKind::JsapiTicket,
        Some("wx_card") => TokenKind::WxCardTicket,
        _ => return Err(WxReply::err(errcode::INVALID_ARGS)),
    };
    // A valid token always has a known owner.
    let appid = owner.ok_or(WxReply::err(errcode::INVALID_CREDENTIAL))?;
    let app = inner
        .app_mut(appid, now)
        .ok_or(WxReply::err(errcode::INVALID_CREDENTIAL))?;
    if app.quota.used(Endpoint::Ticket) >= shared.timing.ticket_daily_quota {
        return Err(WxReply::err(errcode::DAILY_QUOTA));
    }
    app.quota.add(Endpoint::Ticket);
    inner
        .issue(appid, kind, Previous::DiesAfterOverlap, &shared.timing, now)
        .ok_or(WxReply::err(errcode::INVALID_CREDENTIAL))
}
