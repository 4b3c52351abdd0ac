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
    // WeChat's numbers: tokens live 7200 s; a new one is issued once 300 s or less are left.
    let h = Harness::start(Timing::default()).await;
    let secs = Duration::from_secs;
    let (a, e1) = h.stable_token(false).await;
    assert_eq!(e1, 7200);
    let (a2, e2) = h.stable_token(false).await;
    assert_eq!(a2, a);
    assert_eq!(e2, 7200, "no time passed");

    h.advance(secs(1000) + Duration::from_millis(500));
    let (a3, e3) = h.stable_token(false).await;
    assert_eq!(a3, a);
    assert_eq!(e3, 6199, "remaining whole seconds, floored");

    // 300 s + 1 ns left: more than the overlap, reused.
    h.advance(secs(7200 - 300) - secs(1000) - Duration::from_millis(500) - NS);
    let (a4, e4) = h.stable_token(false).await;
    assert_eq!(a4, a);
    assert_eq!(e4, 300);

    // Exactly 300 s left: renewed.
    h.advance(NS);
    let (b, e5) = h.stable_token(false).await;
    assert_ne!(b, a);
    assert_eq!(e5, 7200);
    // The previous one stays valid until its own expiry...
    assert!(h.business(&a).await["ip_list"].is_array());
    let ev = h.sim.admin().app_evidence(APPID).unwrap();
    assert_eq!(ev.live_tokens.len(), 2);
    assert!(ev.live_tokens[0].replaced && !ev.live_tokens[1].replaced);
    assert_eq!(ev.live_tokens[0].expires_in_ms, 300_000);
    h.advance(secs(300) - NS);
    assert!(h.business(&a).await["ip_list"].is_array());
    // ...and then expires (42001: it lived its full life).
    h.advance(NS);
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
    assert_eq!(reused, [false, true, true, true, false]);
}

#[tokio::test]
async fn force_refresh_overlap_interval_and_daily_limit() {
    // WeChat's numbers (7200 s tokens, 300 s overlap, 30 s between force refreshes), but
    // only 2 force refreshes a day.
    let h = Harness::start(Timing {
        force_refresh_daily_limit: 2,
        ..Timing::default()
    })
    .await;
    let admin = h.sim.admin();
    let secs = Duration::from_secs;
    let (a, _) = h.stable_token(false).await;

    // t = 0: a force refresh replaces a (which dies at 300 s).
    let (b, eb) = h.stable_token(true).await;
    assert_ne!(b, a);
    assert_eq!(eb, 7200);
    assert!(
        h.business(&a).await["ip_list"].is_array(),
        "old valid in overlap"
    );

    // A force refresh inside the minimum interval changes nothing, up to its last instant.
    let (b2, eb2) = h.stable_token(true).await;
    assert_eq!(b2, b);
    assert_eq!(eb2, 7200);
    h.advance(secs(30) - NS);
    let (b3, eb3) = h.stable_token(true).await;
    assert_eq!(b3, b);
    assert_eq!(eb3, 7170);
    assert_eq!(admin.app_evidence(APPID).unwrap().force_refreshes_today, 1);

    // t = 30 s: the interval has passed; c replaces b (which dies at 330 s).
    h.advance(NS);
    let (c, _) = h.stable_token(true).await;
    assert_ne!(c, b);
    assert!(h.business(&a).await["ip_list"].is_array());
    assert!(h.business(&b).await["ip_list"].is_array());
    assert_eq!(admin.app_evidence(APPID).unwrap().force_refreshes_today, 2);

    // t = 60 s: the daily limit (2) is reached.
    h.advance(secs(30));
    let msg = assert_err(&h.stable(APPID, SECRET, true).await, 45009);
    assert!(msg.starts_with("reach max api daily quota limit"), "{msg}");
    // Normal mode still works and returns the current token.
    let (c2, _) = h.stable_token(false).await;
    assert_eq!(c2, c);

    // Each replaced token dies exactly 300 s after its replacement.
    h.advance(secs(240) - NS); // t = 300 s - 1 ns
    assert!(h.business(&a).await["ip_list"].is_array());
    h.advance(NS);
    assert_err(&h.business(&a).await, 40001);
    h.advance(secs(30) - NS); // t = 330 s - 1 ns
    assert!(h.business(&b).await["ip_list"].is_array());
    h.advance(NS);
    assert_err(&h.business(&b).await, 40001);
    assert!(h.business(&c).await["ip_list"].is_array());

    let forces: Vec<bool> = admin
        .fetches(APPID, Endpoint::StableToken)
        .iter()
        .map(|f| f.force_refresh)
        .collect();
    assert_eq!(forces, [false, true, true, true, true, true, false]);

    admin.reset_quota(APPID);
    let (d, _) = h.stable_token(true).await;
    assert_ne!(d, c);
}

#[tokio::test]
async fn force_refresh_limit_resets_with_the_day() {
    let h = Harness::start(Timing {
        force_refresh_daily_limit: 1,
        ..Timing::default()
    })
    .await;
    let admin = h.sim.admin();
    let (a, _) = h.stable_token(true).await;
    h.advance(Duration::from_secs(60));
    assert_err(&h.stable(APPID, SECRET, true).await, 45009);

    // The last instant of day 0: still refused.
    h.advance(Timing::default().day - admin.elapsed() - NS);
    assert_err(&h.stable(APPID, SECRET, true).await, 45009);
    assert_eq!(admin.app_evidence(APPID).unwrap().force_refreshes_today, 1);
    // Day 1: allowed again (a has long expired by now).
    h.advance(NS);
    assert_eq!(admin.app_evidence(APPID).unwrap().force_refreshes_today, 0);
    let (b, eb) = h.stable_token(true).await;
    assert_ne!(b, a);
    assert_eq!(eb, 7200);
    assert_eq!(admin.app_evidence(APPID).unwrap().force_refreshes_today, 1);
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

    h.advance(fast().overlap);
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
