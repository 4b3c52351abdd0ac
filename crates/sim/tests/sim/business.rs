//! The token-checking business API `/cgi-bin/get_api_domain_ip` (GET and POST), its
//! counters, and revocation.

use crate::common::*;

#[tokio::test]
async fn business_api_codes_and_counters() {
    let h = Harness::start(fast()).await;
    let admin = h.sim.admin();
    let token = h.classic_token().await;

    let v = h.business(&token).await;
    let ips = v["ip_list"].as_array().unwrap();
    assert!(!ips.is_empty());
    assert!(ips.iter().all(|ip| ip.as_str().unwrap().contains('/')));
    assert!(v.get("errcode").is_none());

    // POST is accepted too (token in the query string, body ignored).
    let resp = h
        .http
        .post(h.url(&format!("/cgi-bin/get_api_domain_ip?access_token={token}")))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(wechat_json(resp).await["ip_list"].is_array());

    let msg = assert_err(&h.get_json("/cgi-bin/get_api_domain_ip").await, 41001);
    assert!(msg.starts_with("access_token missing rid: "), "{msg}");
    assert_err(
        &h.get_json("/cgi-bin/get_api_domain_ip?access_token=").await,
        41001,
    );
    let msg = assert_err(&h.business("forged-token").await, 40001);
    assert!(msg.starts_with("invalid credential"), "{msg}");

    let ev = admin.app_evidence(APPID).unwrap();
    assert_eq!(ev.business_ok, 2);
    assert_eq!(ev.quota_used["business"], 2);
    // Unattributable rejections (no token, unknown token) are not charged to the app.
    assert!(ev.rejected_business_calls.is_empty());
}

#[tokio::test]
async fn revoke_invalidates_all_access_tokens_now() {
    let h = Harness::start(fast()).await;
    let admin = h.sim.admin();
    let classic = h.classic_token().await;
    let (stable, _) = h.stable_token(false).await;
    let ticket = token_of(&h.ticket(&classic, "jsapi").await, "ticket");
    let other = token_of(&h.classic(OTHER_APPID, OTHER_SECRET).await, "access_token");

    admin.revoke_tokens(APPID);
    assert_err(&h.business(&classic).await, 40001);
    assert_err(&h.business(&stable).await, 40001);
    assert_eq!(admin.check_token(&stable), Err(40001));
    assert_err(&h.ticket(&stable, "jsapi").await, 40001);
    // Other apps are untouched.
    assert!(h.business(&other).await["ip_list"].is_array());

    // Stable normal mode issues a fresh token instead of returning the revoked one.
    let (fresh, expires_in) = h.stable_token(false).await;
    assert_ne!(fresh, stable);
    assert_eq!(expires_in, 10);
    assert!(h.business(&fresh).await["ip_list"].is_array());

    let ev = admin.app_evidence(APPID).unwrap();
    let live: Vec<(&str, &str)> = ev
        .live_tokens
        .iter()
        .map(|t| (t.kind.as_str(), t.token_prefix.as_str()))
        .collect();
    // The ticket survives (revocation is about access tokens).
    assert_eq!(
        live,
        [
            ("jsapi_ticket", &ticket[..8]),
            ("stable_access_token", &fresh[..8])
        ]
    );
    assert_eq!(ev.rejected_business_calls.get(&40001), Some(&2));
}
