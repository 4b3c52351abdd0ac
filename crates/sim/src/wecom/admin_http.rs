//! The WeCom routes of the HTTP admin API, under `/_sim/wecom/` (JSON in and out), mirroring
//! the WeCom methods of [`Admin`]. Unknown corps, apps and suites are 404, authorization
//! changes that do not fit the state 409, malformed bodies 400; all answer `{"error": "..."}`.
//! Must not: reveal secrets or whole tokens (the only whole codes are the ones the caller
//! creates: `create_auth`'s auth code, bulk and rotated permanent codes).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{WecomAuthEvent, WecomEndpoint, WecomError};
use crate::admin::{self, Admin};
use crate::state::Shared;
use crate::wire::query_param;

/// Body of `PUT /_sim/wecom/corps/{corpid}/flags`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WecomCorpFlags {
    /// `false` → 60020 ([`Admin::set_wecom_ip_trusted`]).
    pub ip_trusted: bool,
}

/// Body of `PUT /_sim/wecom/corps/{corpid}/apps/{agentid}/flags`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WecomAppFlags {
    /// `true` → `gettoken` answers 45009 ([`Admin::set_wecom_rate_limited`]).
    pub rate_limited: bool,
}

/// Body of `POST /_sim/wecom/corps/{corpid}/fail` and `POST /_sim/wecom/suites/{id}/fail`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailWecomEndpoint {
    /// Which endpoint.
    pub endpoint: WecomEndpoint,
    /// The errcode to answer.
    pub errcode: i64,
    /// How many calls (at least 1).
    pub times: u32,
}

/// The `/wecom/...` routes (nested under `/_sim` with the other admin routes).
pub(crate) fn admin_routes() -> Router<Arc<Shared>> {
    const CORP: &str = "/wecom/corps/{corpid}";
    const SUITE: &str = "/wecom/suites/{suite_id}";
    Router::new()
        .route("/wecom/summary", get(summary))
        .route("/wecom/ip_blocks/clear", post(clear_blocks))
        .route("/wecom/check", get(check))
        .route(&format!("{CORP}/evidence"), get(corp_evidence))
        .route(&format!("{CORP}/flags"), put(corp_flags))
        .route(&format!("{CORP}/fail"), post(corp_fail))
        .route(&format!("{CORP}/revoke"), post(corp_revoke))
        .route(&format!("{CORP}/apps/{{agentid}}/flags"), put(app_flags))
        .route(&format!("{CORP}/apps/{{agentid}}/revoke"), post(app_revoke))
        .route(&format!("{SUITE}/evidence"), get(suite_evidence))
        .route(&format!("{SUITE}/push_ticket"), post(push_ticket))
        .route(&format!("{SUITE}/verify_url"), post(verify_url))
        .route(&format!("{SUITE}/fail"), post(suite_fail))
        .route(&format!("{SUITE}/revoke"), post(suite_revoke))
        .route(&format!("{SUITE}/bulk"), post(bulk))
        .route(
            &format!("{SUITE}/corps/{{corpid}}/{{action}}"),
            post(auth_action),
        )
}

fn http_error(e: WecomError) -> Response {
    let status = match e {
        WecomError::UnknownCorp(_)
        | WecomError::UnknownApp { .. }
        | WecomError::UnknownSuite(_) => StatusCode::NOT_FOUND,
        WecomError::AlreadyAuthorized { .. } | WecomError::NotAuthorized { .. } => {
            StatusCode::CONFLICT
        }
        WecomError::Crypto(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    admin::error(status, e)
}

fn respond<T: Serialize>(result: Result<T, WecomError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => http_error(e),
    }
}

fn done(result: Result<(), WecomError>) -> Response {
    respond(result.map(|()| json!({ "ok": true })))
}

async fn summary(State(shared): State<Arc<Shared>>) -> Response {
    Json(Admin::new(shared).wecom_summary()).into_response()
}

/// `GET /wecom/check?access_token=..` (or `ticket=..`, `suite_access_token=..`): whether it is
/// valid now, without counting: `{"errcode": 0}` or the errcode WeCom would answer.
async fn check(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let q = query.as_deref();
    let admin = Admin::new(shared);
    let result = if let Some(t) = query_param(q, "access_token") {
        admin.check_wecom_token(&t)
    } else if let Some(t) = query_param(q, "ticket") {
        admin.check_wecom_ticket(&t)
    } else if let Some(t) = query_param(q, "suite_access_token") {
        admin.check_wecom_suite_token(&t)
    } else {
        return admin::error(
            StatusCode::BAD_REQUEST,
            "expected access_token=, ticket= or suite_access_token=",
        );
    };
    Json(json!({ "errcode": result.err().unwrap_or(0) })).into_response()
}

async fn clear_blocks(State(shared): State<Arc<Shared>>) -> Response {
    Admin::new(shared).clear_wecom_ip_blocks();
    done(Ok(()))
}

async fn corp_evidence(State(shared): State<Arc<Shared>>, Path(corpid): Path<String>) -> Response {
    match Admin::new(shared).wecom_corp_evidence(&corpid) {
        Some(ev) => Json(ev).into_response(),
        None => http_error(WecomError::UnknownCorp(corpid)),
    }
}

async fn corp_flags(
    State(shared): State<Arc<Shared>>,
    Path(corpid): Path<String>,
    body: Bytes,
) -> Response {
    match admin::parse_body::<WecomCorpFlags>("flags (expected {\"ip_trusted\": bool})", &body) {
        Ok(f) => done(Admin::new(shared).set_wecom_ip_trusted(&corpid, f.ip_trusted)),
        Err(msg) => admin::error(StatusCode::BAD_REQUEST, msg),
    }
}

async fn corp_fail(
    State(shared): State<Arc<Shared>>,
    Path(corpid): Path<String>,
    body: Bytes,
) -> Response {
    match admin::parse_body::<FailWecomEndpoint>("fail", &body) {
        Ok(f) => done(
            Admin::new(shared).fail_wecom_corp_endpoint(&corpid, f.endpoint, f.errcode, f.times),
        ),
        Err(msg) => admin::error(StatusCode::BAD_REQUEST, msg),
    }
}

async fn corp_revoke(State(shared): State<Arc<Shared>>, Path(corpid): Path<String>) -> Response {
    done(Admin::new(shared).revoke_wecom_corp_tokens(&corpid))
}

async fn app_flags(
    State(shared): State<Arc<Shared>>,
    Path((corpid, agentid)): Path<(String, u32)>,
    body: Bytes,
) -> Response {
    match admin::parse_body::<WecomAppFlags>("flags (expected {\"rate_limited\": bool})", &body) {
        Ok(f) => done(Admin::new(shared).set_wecom_rate_limited(&corpid, agentid, f.rate_limited)),
        Err(msg) => admin::error(StatusCode::BAD_REQUEST, msg),
    }
}

async fn app_revoke(
    State(shared): State<Arc<Shared>>,
    Path((corpid, agentid)): Path<(String, u32)>,
) -> Response {
    done(Admin::new(shared).revoke_wecom_token(&corpid, agentid))
}

async fn suite_evidence(
    State(shared): State<Arc<Shared>>,
    Path(suite_id): Path<String>,
) -> Response {
    match Admin::new(shared).wecom_suite_evidence(&suite_id) {
        Some(ev) => Json(ev).into_response(),
        None => http_error(WecomError::UnknownSuite(suite_id)),
    }
}

async fn push_ticket(State(shared): State<Arc<Shared>>, Path(suite_id): Path<String>) -> Response {
    respond(Admin::new(shared).wecom_push_suite_ticket(&suite_id).await)
}

async fn verify_url(State(shared): State<Arc<Shared>>, Path(suite_id): Path<String>) -> Response {
    respond(Admin::new(shared).verify_wecom_suite_url(&suite_id).await)
}

async fn suite_fail(
    State(shared): State<Arc<Shared>>,
    Path(suite_id): Path<String>,
    body: Bytes,
) -> Response {
    match admin::parse_body::<FailWecomEndpoint>("fail", &body) {
        Ok(f) => done(
            Admin::new(shared).fail_wecom_suite_endpoint(&suite_id, f.endpoint, f.errcode, f.times),
        ),
        Err(msg) => admin::error(StatusCode::BAD_REQUEST, msg),
    }
}

async fn suite_revoke(State(shared): State<Arc<Shared>>, Path(suite_id): Path<String>) -> Response {
    done(Admin::new(shared).revoke_wecom_suite_token(&suite_id))
}

/// Body of `POST /_sim/wecom/suites/{suite_id}/bulk`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Bulk {
    count: u32,
}

async fn bulk(
    State(shared): State<Arc<Shared>>,
    Path(suite_id): Path<String>,
    body: Bytes,
) -> Response {
    match admin::parse_body::<Bulk>("bulk (expected {\"count\": N})", &body) {
        Ok(b) => respond(
            Admin::new(shared)
                .wecom_bulk_authorize(&suite_id, b.count)
                .map(|corps| json!({ "corps": corps })),
        ),
        Err(msg) => admin::error(StatusCode::BAD_REQUEST, msg),
    }
}

/// `POST .../corps/{corpid}/{action}`: `create_auth`, `change_auth`, `cancel_auth` (each with
/// `?push=false` to change without pushing), `rotate_permanent_code`.
async fn auth_action(
    State(shared): State<Arc<Shared>>,
    Path((suite_id, corpid, action)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let admin = Admin::new(shared);
    let event = match action.as_str() {
        "create_auth" => WecomAuthEvent::CreateAuth,
        "change_auth" => WecomAuthEvent::ChangeAuth,
        "cancel_auth" => WecomAuthEvent::CancelAuth,
        "rotate_permanent_code" => {
            return respond(
                admin
                    .rotate_wecom_permanent_code(&suite_id, &corpid)
                    .map(|code| json!({ "permanent_code": code })),
            )
        }
        other => {
            return admin::error(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown wecom action {other:?}: expected create_auth, change_auth, \
                     cancel_auth or rotate_permanent_code"
                ),
            )
        }
    };
    let push = match query_param(query.as_deref(), "push").as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return admin::error(
                StatusCode::BAD_REQUEST,
                format!("push must be true or false, not {other:?}"),
            )
        }
    };
    respond(
        admin
            .wecom_auth_event(&suite_id, &corpid, event, push)
            .await,
    )
}
