//! A business API that checks access tokens: `GET|POST /cgi-bin/get_api_domain_ip`.
//!
//! It stands in for every WeChat API a token is used with: it accepts any currently valid
//! access token (classic or stable, or a third-party platform's authorizer access token) and
//! counts accepted and rejected calls per app (authorizer calls per authorizer), so tests
//! can prove that consumers never saw an invalid token. Must not: accept tickets, revoked
//! tokens or tokens past their overlap; must not attribute a call to an app it cannot identify.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::errcode;
use crate::evidence::Endpoint;
use crate::fault;
use crate::state::Shared;
use crate::wire::{query_param, WxReply};

/// What `get_api_domain_ip` answers on success (a sample of WeChat's real ranges).
const IP_LIST: [&str; 4] = [
    "101.226.103.0/25",
    "101.226.233.128/25",
    "58.247.206.128/25",
    "182.254.86.128/25",
];

/// `GET|POST /cgi-bin/get_api_domain_ip?access_token=..` (the token is always in the query,
/// as with every WeChat API; a POST body is ignored).
pub(crate) async fn get_api_domain_ip(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> Response {
    let token = query_param(query.as_deref(), "access_token");
    let owner = token.as_deref().and_then(|t| shared.lock().owner_of(t));
    if let Some(resp) =
        fault::intercept(&shared, owner.as_deref(), Endpoint::Business, false, || {
            format!(
                "/cgi-bin/get_api_domain_ip?{}",
                query.as_deref().unwrap_or_default()
            )
        })
        .await
    {
        return resp;
    }
    let Some(token) = token else {
        return WxReply::err(errcode::ACCESS_TOKEN_MISSING).into_response();
    };
    let now = shared.now();
    if owner.is_none() {
        // Not an app's token: perhaps an authorizer's (their own lock, taken alone).
        if let Some(result) = shared.authorizers.business_call(&token, now.at) {
            return match result {
                Ok(()) => WxReply::Ok(json!({ "ip_list": IP_LIST })).into_response(),
                Err(code) => WxReply::err(code).into_response(),
            };
        }
    }
    let mut inner = shared.lock();
    let result = inner.check_access_token(&token, &now);
    if let Some(app) = owner.as_deref().and_then(|a| inner.app_mut(a, &now)) {
        match result {
            Ok(()) => {
                app.business_ok += 1;
                app.quota.add(Endpoint::Business);
            }
            Err(code) => *app.rejected_business_calls.entry(code).or_insert(0) += 1,
        }
    }
    match result {
        Ok(()) => WxReply::Ok(json!({ "ip_list": IP_LIST })).into_response(),
        Err(code) => WxReply::err(code).into_response(),
    }
}
