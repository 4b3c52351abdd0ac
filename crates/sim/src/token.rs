//! Access tokens: classic `GET /cgi-bin/token` and stable `POST /cgi-bin/stable_token`,
//! with WeChat's check order, error codes, quotas, overlap and force-refresh rules.
//!
//! Classic: every successful fetch issues a new token; the previous one stays valid for
//! `overlap` more. Stable: normal mode returns the current token while it has more than
//! `overlap` left; `force_refresh` issues a new one (rate- and count-limited). The two kinds are
//! fully isolated from each other. Must not: mention a secret in any answer or log line, or
//! let a faulted or rejected call consume quota.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::errcode;
use crate::evidence::{Endpoint, FetchOutcome};
use crate::fault;
use crate::state::{Inner, Now, Previous, Shared, TokenKind};
use crate::wire::{self, query_param, WxReply};

/// The credential parameters common to classic and stable fetches (missing or empty = `None`).
#[derive(Debug, Default)]
struct Credentials {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
}

/// What a token fetch produced, before it is put on the wire.
enum Answer {
    Token {
        token: String,
        expires_in: u64,
        reused: bool,
    },
    Error(WxReply),
}

impl Answer {
    fn code(code: i64) -> Answer {
        Answer::Error(WxReply::err(code))
    }

    fn outcome(&self) -> FetchOutcome {
        match self {
            Answer::Token {
                token,
                expires_in,
                reused,
            } => FetchOutcome::Issued {
                token_prefix: wire::prefix(token),
                reused: *reused,
                expires_in: *expires_in,
            },
            Answer::Error(WxReply::Err { code, .. }) => FetchOutcome::Error { errcode: *code },
            Answer::Error(WxReply::Ok(_)) => FetchOutcome::Error {
                errcode: errcode::OK,
            },
        }
    }

    fn into_reply(self) -> WxReply {
        match self {
            Answer::Token {
                token, expires_in, ..
            } => WxReply::Ok(json!({ "access_token": token, "expires_in": expires_in })),
            Answer::Error(reply) => reply,
        }
    }
}

/// `GET /cgi-bin/token?grant_type=client_credential&appid=..&secret=..`
pub(crate) async fn classic(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
) -> Response {
    let q = query.as_deref();
    let creds = Credentials {
        grant_type: query_param(q, "grant_type"),
        appid: query_param(q, "appid"),
        secret: query_param(q, "secret"),
    };
    if let Some(resp) = fault::intercept(
        &shared,
        creds.appid.as_deref(),
        Endpoint::Token,
        false,
        || format!("GET /cgi-bin/token?{}", q.unwrap_or_default()),
    )
    .await
    {
        return resp;
    }
    let now = shared.now();
    let mut inner = shared.lock();
    let answer = classic_rules(&mut inner, &shared, &now, peer.ip(), &creds);
    if let Some(appid) = creds.appid.as_deref() {
        inner.record(appid, Endpoint::Token, false, answer.outcome(), &now);
    }
    answer.into_reply().into_response()
}

fn classic_rules(
    inner: &mut Inner,
    shared: &Shared,
    now: &Now,
    ip: IpAddr,
    creds: &Credentials,
) -> Answer {
    let appid = match check_credentials(inner, now, ip, creds) {
        Ok(appid) => appid,
        Err(reply) => return Answer::Error(reply),
    };
    let timing = &shared.timing;
    let Some(app) = inner.app_mut(&appid, now) else {
        return Answer::code(errcode::INVALID_APPID);
    };
    if app.quota.used(Endpoint::Token) >= timing.daily_quota {
        return Answer::code(errcode::DAILY_QUOTA);
    }
    app.quota.add(Endpoint::Token);
    match inner.issue(
        &appid,
        TokenKind::AccessToken,
        Previous::DiesAfterOverlap,
        timing,
        now,
    ) {
        Some(issued) => Answer::Token {
            token: issued.token,
            expires_in: issued.expires_in,
            reused: false,
        },
        None => Answer::code(errcode::INVALID_APPID),
    }
}

/// WeChat's credential checks, in WeChat's order. Returns the (known) appid.
fn check_credentials(
    inner: &mut Inner,
    now: &Now,
    ip: IpAddr,
    creds: &Credentials,
) -> Result<String, WxReply> {
    if creds.grant_type.as_deref() != Some("client_credential") {
        return Err(WxReply::err(errcode::INVALID_GRANT_TYPE));
    }
    let Some(appid) = creds.appid.as_deref() else {
        return Err(WxReply::err(errcode::APPID_MISSING));
    };
    let Some(secret) = creds.secret.as_deref() else {
        return Err(WxReply::err(errcode::APPSECRET_MISSING));
    };
    let Some(app) = inner.app_mut(appid, now) else {
        return Err(WxReply::err(errcode::INVALID_APPID));
    };
    if app.secret_frozen {
        return Err(WxReply::err(errcode::SECRET_FROZEN));
    }
    if !app.ip_whitelisted {
        return Err(WxReply::Err {
            code: errcode::INVALID_IP,
            msg: not_whitelisted_msg(ip),
        });
    }
    if secret != app.secret {
        let looks_like_secret = secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_hexdigit());
        return Err(WxReply::err(if looks_like_secret {
            errcode::INVALID_CREDENTIAL
        } else {
            errcode::INVALID_APPSECRET
        }));
    }
    Ok(appid.to_string())
}

/// WeChat's 40164 text, naming the caller's address the way WeChat does.
fn not_whitelisted_msg(ip: IpAddr) -> String {
    let (v4, v6) = match ip {
        IpAddr::V4(v4) => (v4.to_string(), v4.to_ipv6_mapped().to_string()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (v4.to_string(), v6.to_string()),
            None => (v6.to_string(), v6.to_string()),
        },
    };
    format!("invalid ip {v4} ipv6 {v6}, not in whitelist")
}

/// The parsed stable_token body.
#[derive(Debug, Default)]
struct StableParams {
    creds: Credentials,
    force_refresh: bool,
}

/// Parses the stable_token JSON body. An empty body is an empty object; anything that is not
/// a JSON object with string credentials and a boolean `force_refresh` is 47001.
fn parse_stable_body(body: &[u8]) -> Result<StableParams, ()> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(StableParams::default());
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| ())?;
    let obj = value.as_object().ok_or(())?;
    let string = |name: &str| match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    };
    let force_refresh = match obj.get("force_refresh") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(()),
    };
    Ok(StableParams {
        creds: Credentials {
            grant_type: string("grant_type")?,
            appid: string("appid")?,
            secret: string("secret")?,
        },
        force_refresh,
    })
}

/// `POST /cgi-bin/stable_token` with a JSON body.
pub(crate) async fn stable(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let parsed = parse_stable_body(&body);
    let query_appid = query_param(query.as_deref(), "appid");
    // For fault routing, take the appid from wherever the caller put it.
    let (route_appid, force) = match &parsed {
        Ok(p) => (
            p.creds.appid.clone().or_else(|| query_appid.clone()),
            p.force_refresh,
        ),
        Err(()) => (query_appid.clone(), false),
    };
    if let Some(resp) = fault::intercept(
        &shared,
        route_appid.as_deref(),
        Endpoint::StableToken,
        force,
        || {
            let q = query
                .as_deref()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            format!(
                "POST /cgi-bin/stable_token{q} {}",
                String::from_utf8_lossy(&body)
            )
        },
    )
    .await
    {
        return resp;
    }
    let now = shared.now();
    let mut inner = shared.lock();
    let answer = match &parsed {
        Err(()) => Answer::code(errcode::DATA_FORMAT_ERROR),
        // Parameters sent in the query string instead of the JSON body.
        Ok(p) if p.creds.appid.is_none() && query_appid.is_some() => {
            Answer::code(errcode::APPID_MISSING)
        }
        Ok(p) => stable_rules(&mut inner, &shared, &now, peer.ip(), p),
    };
    if let Some(appid) = route_appid.as_deref() {
        inner.record(appid, Endpoint::StableToken, force, answer.outcome(), &now);
    }
    answer.into_reply().into_response()
}

fn stable_rules(
    inner: &mut Inner,
    shared: &Shared,
    now: &Now,
    ip: IpAddr,
    p: &StableParams,
) -> Answer {
    let appid = match check_credentials(inner, now, ip, &p.creds) {
        Ok(appid) => appid,
        Err(reply) => return Answer::Error(reply),
    };
    let timing = &shared.timing;
    let Some(app) = inner.app_mut(&appid, now) else {
        return Answer::code(errcode::INVALID_APPID);
    };
    if app.quota.used(Endpoint::StableToken) >= timing.stable_daily_quota {
        return Answer::code(errcode::DAILY_QUOTA);
    }
    app.quota.add(Endpoint::StableToken);

    let previous = if p.force_refresh {
        let within_interval = app.last_force.is_some_and(|last| {
            now.at.saturating_duration_since(last) < timing.force_refresh_min_interval
        });
        if within_interval {
            // A force refresh too soon after the previous one changes nothing.
            if let Some((token, left)) =
                inner.current_valid(&appid, TokenKind::StableAccessToken, now)
            {
                return Answer::Token {
                    token,
                    expires_in: wire::wire_secs(left),
                    reused: true,
                };
            }
        }
        let Some(app) = inner.app_mut(&appid, now) else {
            return Answer::code(errcode::INVALID_APPID);
        };
        if app.quota.force_refreshes >= timing.force_refresh_daily_limit {
            return Answer::code(errcode::DAILY_QUOTA);
        }
        app.quota.force_refreshes += 1;
        app.last_force = Some(now.at);
        Previous::DiesAfterOverlap
    } else {
        if let Some((token, left)) = inner.current_valid(&appid, TokenKind::StableAccessToken, now)
        {
            if left > timing.overlap {
                return Answer::Token {
                    token,
                    expires_in: wire::wire_secs(left),
                    reused: true,
                };
            }
        }
        Previous::DiesAtOwnExpiry
    };
    match inner.issue(&appid, TokenKind::StableAccessToken, previous, timing, now) {
        Some(issued) => Answer::Token {
            token: issued.token,
            expires_in: issued.expires_in,
            reused: false,
        },
        None => Answer::code(errcode::INVALID_APPID),
    }
}

/// `GET /cgi-bin/stable_token`: WeChat insists on POST.
pub(crate) async fn stable_wrong_method() -> Response {
    WxReply::err(errcode::REQUIRE_POST).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitelist_message_names_caller_both_ways() {
        let msg = not_whitelisted_msg(IpAddr::from([127, 0, 0, 1]));
        assert_eq!(
            msg,
            "invalid ip 127.0.0.1 ipv6 ::ffff:127.0.0.1, not in whitelist"
        );
    }

    #[test]
    fn stable_body_parsing() {
        assert!(parse_stable_body(b"not json").is_err());
        assert!(parse_stable_body(b"[1,2]").is_err());
        assert!(parse_stable_body(br#"{"appid":5}"#).is_err());
        assert!(parse_stable_body(br#"{"force_refresh":"yes"}"#).is_err());
        let empty = parse_stable_body(b"  ").unwrap_or_default();
        assert!(empty.creds.appid.is_none());
        let p = parse_stable_body(
            br#"{"grant_type":"client_credential","appid":"wx1","secret":"s","force_refresh":true}"#,
        )
        .unwrap_or_default();
        assert_eq!(p.creds.appid.as_deref(), Some("wx1"));
        assert!(p.force_refresh);
    }
}
