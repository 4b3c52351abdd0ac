//! WeCom's corp endpoints: `gettoken`, the two JS-SDK tickets and the business API
//! `user/get` (rules in the module docs of `wecom`). Must not: count a scripted answer as a
//! failed `gettoken`, issue anything on an invalid token, or hold the lock across an await.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{errcode, in_last_hour, take_scripted, Inner, Kind, Outcome, WecomEndpoint};
use crate::config::Timing;
use crate::state::Shared;
use crate::wire::{self, query_param};

/// WeCom's JSON content type.
pub(crate) const WECOM_CONTENT_TYPE: &str = "application/json; charset=UTF-8";

/// HTTP 200 with this JSON body and WeCom's content type.
pub(super) fn ok(body: Value) -> Response {
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(WECOM_CONTENT_TYPE),
    );
    resp
}

/// HTTP 200 with `{"errcode":code,"errmsg":"<text>, hint: ..."}`.
pub(super) fn err(code: i64, ip: IpAddr) -> Response {
    ok(json!({ "errcode": code, "errmsg": errcode::errmsg_with_hint(code, ip) }))
}

/// `GET /cgi-bin/gettoken?corpid=..&corpsecret=..`
pub(super) async fn gettoken(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
) -> Response {
    let q = query.as_deref();
    let corpid = query_param(q, "corpid");
    let secret = query_param(q, "corpsecret");
    let ip = peer.ip();
    let at = shared.clock.now();
    let result = {
        let mut inner = shared.wecom.lock();
        gettoken_rules(
            &mut inner,
            &shared.timing,
            at,
            ip,
            corpid.as_deref(),
            secret.as_deref(),
        )
    };
    match result {
        Ok((token, left)) => ok(json!({
            "errcode": 0,
            "errmsg": "ok",
            "access_token": token,
            "expires_in": wire::wire_secs(left),
        })),
        Err(code) => err(code, ip),
    }
}

fn gettoken_rules(
    inner: &mut Inner,
    timing: &Timing,
    at: Instant,
    ip: IpAddr,
    corpid: Option<&str>,
    secret: Option<&str>,
) -> Result<(String, Duration), i64> {
    if let Some(corp) = corpid.and_then(|c| inner.corps.get_mut(c)) {
        if let Some(code) = take_scripted(&mut corp.scripted, WecomEndpoint::GetToken) {
            corp.gettoken_unattributed.add(Outcome::Scripted(code));
            inner.gettoken_total.add(Outcome::Scripted(code));
            return Err(code);
        }
    }
    let blocked = inner
        .failures
        .get(&ip)
        .and_then(|f| f.blocked_until)
        .is_some_and(|until| at < until);
    if blocked {
        if let Some(corp) = corpid.and_then(|c| inner.corps.get_mut(c)) {
            corp.gettoken_unattributed
                .add(Outcome::Err(errcode::FREQ_LIMIT));
        }
        inner.gettoken_total.add(Outcome::Err(errcode::FREQ_LIMIT));
        return Err(errcode::FREQ_LIMIT);
    }
    let result = gettoken_checks(inner, timing.expires_in, at, corpid, secret);
    match &result {
        Ok((_, _, true)) => inner.gettoken_total.add(Outcome::New),
        Ok((_, _, false)) => inner.gettoken_total.add(Outcome::Same),
        Err(code) => {
            inner.gettoken_total.add(Outcome::Err(*code));
            let limit = usize::try_from(timing.wecom_gettoken_failure_limit).unwrap_or(usize::MAX);
            let f = inner.failures.entry(ip).or_default();
            f.at.push_back(at);
            if limit > 0 && in_last_hour(&mut f.at, at) >= limit {
                f.blocked_until = at.checked_add(timing.wecom_ip_block);
                f.at.clear();
                tracing::debug!(%ip, "wecom gettoken blocked for failures");
            }
        }
    }
    result.map(|(token, left, _)| (token, left))
}

/// The credential checks and the answer, recorded on the app (or the corp when no app is
/// identified). `Ok((token, remaining, new))`.
fn gettoken_checks(
    inner: &mut Inner,
    lifetime: Duration,
    at: Instant,
    corpid: Option<&str>,
    secret: Option<&str>,
) -> Result<(String, Duration, bool), i64> {
    let corpid = corpid.ok_or(errcode::CORPID_MISSING)?;
    let corp = inner.corps.get_mut(corpid).ok_or(errcode::INVALID_CORPID)?;
    let Some(secret) = secret else {
        corp.gettoken_unattributed
            .add(Outcome::Err(errcode::CORPSECRET_MISSING));
        return Err(errcode::CORPSECRET_MISSING);
    };
    let Some(app) = corp
        .apps
        .iter()
        .position(|a| a.secret.as_deref() == Some(secret))
    else {
        let well_formed = secret.len() == 43
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let code = if well_formed {
            errcode::INVALID_SECRET
        } else {
            errcode::SECRET_MALFORMED
        };
        corp.gettoken_unattributed.add(Outcome::Err(code));
        return Err(code);
    };
    let ip_trusted = corp.ip_trusted;
    let Some(a) = corp.apps.get_mut(app) else {
        return Err(errcode::INVALID_SECRET);
    };
    let refused = if !ip_trusted {
        Some(errcode::IP_NOT_TRUSTED)
    } else if a.rate_limited {
        Some(errcode::FREQ_LIMIT)
    } else {
        None
    };
    if let Some(code) = refused {
        a.ev.gettoken.add(Outcome::Err(code));
        return Err(code);
    }
    let (token, left, new) = inner
        .app_token(corpid, app, lifetime, at)
        .ok_or(errcode::INVALID_CORPID)?;
    if let Some(a) = inner
        .corps
        .get_mut(corpid)
        .and_then(|c| c.apps.get_mut(app))
    {
        a.ev.gettoken
            .add(if new { Outcome::New } else { Outcome::Same });
    }
    Ok((token, left, new))
}

/// Which ticket a ticket call is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ticket {
    Corp,
    Agent,
}

/// `GET /cgi-bin/get_jsapi_ticket?access_token=..`
pub(super) async fn corp_ticket(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
) -> Response {
    let token = query_param(query.as_deref(), "access_token");
    ticket(&shared, peer.ip(), token.as_deref(), Ticket::Corp, true)
}

/// `GET /cgi-bin/ticket/get?access_token=..&type=agent_config`
pub(super) async fn agent_ticket(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
) -> Response {
    let q = query.as_deref();
    let token = query_param(q, "access_token");
    let type_ok = query_param(q, "type").as_deref() == Some("agent_config");
    ticket(&shared, peer.ip(), token.as_deref(), Ticket::Agent, type_ok)
}

fn ticket(
    shared: &Shared,
    ip: IpAddr,
    token: Option<&str>,
    which: Ticket,
    type_ok: bool,
) -> Response {
    let at = shared.clock.now();
    let timing = &shared.timing;
    let mut inner = shared.wecom.lock();
    let owner = token.and_then(|t| inner.token_owner(t));
    let endpoint = match which {
        Ticket::Corp => WecomEndpoint::GetJsapiTicket,
        Ticket::Agent => WecomEndpoint::AgentConfigTicket,
    };
    let record = |inner: &mut Inner, outcome: Outcome| {
        if let Some((corpid, app)) = &owner {
            if let Some(a) = inner
                .corps
                .get_mut(corpid.as_ref())
                .and_then(|c| c.apps.get_mut(*app))
            {
                match which {
                    Ticket::Corp => a.ev.corp_ticket.add(outcome),
                    Ticket::Agent => a.ev.agent_ticket.add(outcome),
                }
            }
        }
    };
    if let Some((corpid, _)) = &owner {
        let scripted = inner
            .corps
            .get_mut(corpid.as_ref())
            .and_then(|c| take_scripted(&mut c.scripted, endpoint));
        if let Some(code) = scripted {
            record(&mut inner, Outcome::Scripted(code));
            return err(code, ip);
        }
    }
    let result = ticket_rules(&mut inner, timing, at, token, which, type_ok);
    match result {
        Ok((ticket, left, new)) => {
            record(&mut inner, if new { Outcome::New } else { Outcome::Same });
            drop(inner);
            ok(json!({
                "errcode": 0,
                "errmsg": "ok",
                "ticket": ticket,
                "expires_in": wire::wire_secs(left),
            }))
        }
        Err(code) => {
            record(&mut inner, Outcome::Err(code));
            drop(inner);
            err(code, ip)
        }
    }
}

/// Token, type, trusted IP, hourly limits; then the current ticket or a new one.
fn ticket_rules(
    inner: &mut Inner,
    timing: &Timing,
    at: Instant,
    token: Option<&str>,
    which: Ticket,
    type_ok: bool,
) -> Result<(String, Duration, bool), i64> {
    let token = token.ok_or(errcode::ACCESS_TOKEN_MISSING)?;
    let (corpid, app) = inner.check_access_token(token, at)?;
    if !type_ok {
        return Err(errcode::INVALID_PARAMETER);
    }
    let corp = inner
        .corps
        .get_mut(corpid.as_ref())
        .ok_or(errcode::INVALID_ACCESS_TOKEN)?;
    if !corp.ip_trusted {
        return Err(errcode::IP_NOT_TRUSTED);
    }
    let app_limit = usize::try_from(timing.wecom_agent_ticket_hourly_limit).unwrap_or(usize::MAX);
    let corp_limit = usize::try_from(timing.wecom_corp_ticket_hourly_limit).unwrap_or(usize::MAX);
    let corp_used = in_last_hour(&mut corp.corp_ticket_calls, at);
    let a = corp
        .apps
        .get_mut(app)
        .ok_or(errcode::INVALID_ACCESS_TOKEN)?;
    match which {
        Ticket::Corp => {
            if corp_used >= corp_limit || in_last_hour(&mut a.corp_ticket_calls, at) >= app_limit {
                return Err(errcode::FREQ_LIMIT);
            }
            a.corp_ticket_calls.push_back(at);
            corp.corp_ticket_calls.push_back(at);
        }
        Ticket::Agent => {
            if in_last_hour(&mut a.agent_ticket_calls, at) >= app_limit {
                return Err(errcode::FREQ_LIMIT);
            }
            a.agent_ticket_calls.push_back(at);
        }
    }
    let kind = match which {
        Ticket::Corp => Kind::CorpTicket,
        Ticket::Agent => Kind::AgentTicket,
    };
    inner
        .current_or_new(corpid.as_ref(), app, kind, timing.expires_in, at)
        .ok_or(errcode::INVALID_ACCESS_TOKEN)
}

/// `GET /cgi-bin/user/get?access_token=..&userid=..`: a business API that checks the token.
pub(super) async fn user_get(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
) -> Response {
    let q = query.as_deref();
    let token = query_param(q, "access_token");
    let userid = query_param(q, "userid");
    let ip = peer.ip();
    let at = shared.clock.now();
    let result = {
        let mut inner = shared.wecom.lock();
        let owner = token.as_deref().and_then(|t| inner.token_owner(t));
        let scripted = owner.as_ref().and_then(|(corpid, _)| {
            inner
                .corps
                .get_mut(corpid.as_ref())
                .and_then(|c| take_scripted(&mut c.scripted, WecomEndpoint::UserGet))
        });
        let result = match scripted {
            Some(code) => Err(code),
            None => user_rules(&inner, at, token.as_deref(), userid.is_some()),
        };
        if let Some((corpid, app)) = owner {
            if let Some(a) = inner
                .corps
                .get_mut(corpid.as_ref())
                .and_then(|c| c.apps.get_mut(app))
            {
                match result {
                    Ok(()) => a.ev.business_ok += 1,
                    Err(code) => *a.ev.business_rejected.entry(code).or_insert(0) += 1,
                }
            }
        }
        result
    };
    match (result, userid) {
        (Ok(()), Some(userid)) => ok(json!({
            "errcode": 0,
            "errmsg": "ok",
            "userid": userid,
            "name": userid,
            "department": [1],
            "status": 1,
        })),
        (Err(code), _) => err(code, ip),
        (Ok(()), None) => err(errcode::USERID_MISSING, ip),
    }
}

fn user_rules(
    inner: &Inner,
    at: Instant,
    token: Option<&str>,
    has_userid: bool,
) -> Result<(), i64> {
    let token = token.ok_or(errcode::ACCESS_TOKEN_MISSING)?;
    let (corpid, _) = inner.check_access_token(token, at)?;
    if !inner
        .corps
        .get(corpid.as_ref())
        .is_some_and(|c| c.ip_trusted)
    {
        return Err(errcode::IP_NOT_TRUSTED);
    }
    if !has_userid {
        return Err(errcode::USERID_MISSING);
    }
    Ok(())
}
