//! Stable `POST /cgi-bin/stable_token`: normal-mode reuse and renewal, force_refresh
//! (overlap, minimum interval, daily limit), isolation from classic tokens, parameter
//! placement and body format errors, quota.

use std::time::Duration;

use serde_json::json;
use wxtoken_sim::{Endpoint, FetchOutcome, Timing};

use crate::common::*;

#[tokio::test]
async fn success_shape_and_error_codes() {
    let h = Harness::start(fast()).await;
    let admin = h.sim.admin();
    let v = h.stable(APPID, SECRET, false).await;
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    assert!(v.get("errcode").is_none());
    assert_eq!(token_of(&v, "access_token").len(), 136);
    assert_eq!(v["expires_in"], 10);

    let post = |body: serde_json::Value| h.post_json("/cgi-bin/stable_token", body.to_string());
    assert_err(
        &post(json!({"appid": APPID, "secret": SECRET})).await,
        40002,
    );
    assert_err(
        &post(json!({"grant_type": "client_credential", "secret": SECRET})).await,
        41002,
    );
    assert_err(
        &post(json!({"grant_type": "client_credential", "appid": APPID})).await,
        41004,
    );
    assert_err(&h.stable("wx_unknown", "x", false).await, 40013);
    admin.set_secret_frozen(APPID, true);
    assert_err(&h.stable(APPID, SECRET, false).await, 40243);
    admin.set_secret_frozen(APPID, false);
    admin.set_ip_whitelisted(APPID, false);
    let msg = assert_err(&h.stable(APPID, SECRET, true).await, 40164);
    assert!(msg.contains("127.0.0.1"), "{msg}");
    admin.set_ip_whitelisted(APPID, true);
    assert_err(&h.stable(APPID, "short", false).await, 40125);
    assert_err(&h.stable(APPID, OTHER_SECRET, false).await, 40001);

    // WeChat insists on POST.
    let msg = assert_err(&h.get_json("/cgi-bin/stable_token").await, 43002);
    assert!(msg.starts_with("require POST method"), "{msg}");
}

#[tokio::test]
async fn params_in_query_string_are_41002() {
    let h = Harness::start(fast()).await;
    let query =
        format!("/cgi-bin/stable_token?grant_type=client_credential&appid={APPID}&secret={SECRET}");
    let msg = assert_err(&h.post_json(&query, "").await, 41002);
    assert!(msg.starts_with("appid missing"), "{msg}");
    assert_err(&h.post_json(&query, "{}").await, 41002);
    assert_err(
        &h.post_json(
            &query,
            json!({"grant_type": "client_credential"}).to_string(),
        )
        .await,
        41002,
    );
    assert!(h
        .sim
        .admin()
        .app_evidence(APPID)
        .unwrap()
        .live_tokens
        .is_empty());
}

#[tokio::test]
async fn body_that_is_not_json_is_47001() {
    let h = Harness::start(fast()).await;
    let form = format!("grant_type=client_credential&appid={APPID}&secret={SECRET}");
    for body in [
        form.as_str(),
        r#"{"grant_type":"client_credential","appid":"#,
        "[1,2,3]",
        r#"{"grant_type":"client_credential","appid":"wx0000000000000001","secret":"0123456789abcdef0123456789abcdef","force_refresh":"true"}"#,
    ] {
        let msg = assert_err(
            &h.post_json("/cgi-bin/stable_token", body.to_string()).await,
            47001,
        );
        assert!(msg.starts_with("data format error"), "{msg}");
    }
}

#[tokio::test]
async fn normal_mode_reuses_until_overlap_then_renews() {
    // Tokens live 4 s; a new one is issued once 2 s or less are left.
    let h = Harness::start(Timing {
        expires_in: Duration::from_secs(4),
        overlap: Duration::from_secs(2),
        ..fast()
    })
    .await;
    let (a, e1) = h.stable_token(false).await;
    assert_eq!(e1, 4);
    let (a2, e2) = h.stable_token(false).await;
    assert_eq!(a2, a);
    assert!(e2 <= 3, "remaining whole seconds, floored: {e2}");

    sleep_ms(1200).await; // ~2.8 s left, more than the overlap
    let (a3, e3) = h.stable_token(false).await;
    assert_eq!(a3, a);
    assert_eq!(e3, 2);

    sleep_ms(1000).await; // ~1.8 s left: renewed
    let (b, e4) = h.stable_token(false).await;
    assert_ne!(b, a);
    assert_eq!(e4, 4);
    // The previous one stays valid until its own expiry...
    assert!(h.business(&a).await["ip_list"].is_array());
    let ev = h.sim.admin().app_evidence(APPID).unwrap();
    assert_eq!(ev.live_tokens.len(), 2);
    assert!(ev.live_tokens[0].replaced && !ev.live_tokens[1].replaced);
    // ...and then expires (42001: it lived its full life).
    sleep_ms(2300).await;
    assert_err(&h.business(&a).await, 42001);
    assert!(h.business(&b).await["ip_list"].is_array());

    let reused: Vec<bool> = h
        .sim
        .admin()
        .fetches(APPID, Endpoint::StableToken)
        .iter()
        .map(|f| match f.outcome {
            FetchOutcome::Issued { reused, .. } => reused,
            ref other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(reused, [false, true, true, false]);
}

#[tokio::test]
async fn force_refresh_overlap_interval_and_daily_limit() {
    let h = Harness::start(Timing {
        force_refresh_daily_limit: 2,
        ..fast() // 10 s tokens, 1 s overlap, 1 s minimum force interval
    })
    .await;
    let admin = h.sim.admin();
    let (a, _) = h.stable_token(false).await;

    let (b, eb) = h.stable_token(true).await;
    assert_ne!(b, a);
    assert_eq!(eb, 10);
    assert!(
        h.business(&a).await["ip_list"].is_array(),
        "old valid in overlap"
    );

    // A force refresh inside the minimum interval changes nothing.
    let (b2, eb2) = h.stable_token(true).await;
    assert_eq!(b2, b);
    assert!(eb2 <= 9);
    assert_eq!(admin.app_evidence(APPID).unwrap().force_refreshes_today, 1);

    sleep_ms(1300).await;
    assert_err(&h.business(&a).await, 40001);
    let (c, _) = h.stable_token(true).await;
    assert_ne!(c, b);
    assert!(h.business(&b).await["ip_list"].is_array());
    assert_eq!(admin.app_evidence(APPID).unwrap().force_refreshes_today, 2);

    sleep_ms(1300).await;
    let msg = assert_err(&h.stable(APPID, SECRET, true).await, 45009);
    assert!(msg.starts_with("reach max api daily quota limit"), "{msg}");
    assert_err(&h.business(&b).await, 40001);
    // Normal mode still works and returns the current token.
    let (c2, _) = h.stable_token(false).await;
    assert_eq!(c2, c);

    let forces: Vec<bool> = admin
        .fetches(APPID, Endpoint::StableToken)
        .iter()
        .map(|f| f.force_refresh)
        .collect();
    assert_eq!(forces, [false, true, true, true, true, false]);

    admin.reset_quota(APPID);
    let (d, _) = h.stable_token(true).await;
    assert_ne!(d, c);
}

#[tokio::test]
async fn stable_and_classic_tokens_are_isolated() {
    let h = Harness::start(fast()).await;
    let admin = h.sim.admin();
    let c1 = h.classic_token().await;
    let (s1, _) = h.stable_token(false).await;
    let c2 = h.classic_token().await;
    // A classic fetch does not renew or invalidate the stable token.
    let (s1b, _) = h.stable_token(false).await;
    assert_eq!(s1b, s1);
    let (s2, _) = h.stable_token(true).await;
    assert_ne!(s2, s1);

    sleep_ms(1300).await;
    // Each kind only ever replaced its own kind.
    assert_err(&h.business(&c1).await, 40001);
    assert_err(&h.business(&s1).await, 40001);
    assert!(h.business(&c2).await["ip_list"].is_array());
    assert!(h.business(&s2).await["ip_list"].is_array());
    let ev = admin.app_evidence(APPID).unwrap();
    let kinds: Vec<&str> = ev.live_tokens.iter().map(|t| t.kind.as_str()).collect();
    assert_eq!(kinds, ["access_token", "stable_access_token"]);
    assert_eq!(ev.quota_used["token"], 2);
    assert_eq!(ev.quota_used["stable_token"], 3);
}

#[tokio::test]
async fn stable_daily_quota_counts_every_call() {
    let h = Harness::start(Timing {
        stable_daily_quota: 2,
        ..fast()
    })
    .await;
    h.stable_token(false).await;
    h.stable_token(false).await; // reused, still counted
    assert_err(&h.stable(APPID, SECRET, false).await, 45009);
    assert_err(&h.stable(APPID, SECRET, true).await, 45009);
    // Classic quota is separate.
    h.classic_token().await;
    h.sim.admin().reset_quota(APPID);
    h.stable_token(false).await;
}
