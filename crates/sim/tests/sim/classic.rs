//! Classic `GET /cgi-bin/token`: success shape, every error code in WeChat's check order,
//! overlap after replacement, expiry, daily quota and its reset.

use std::time::Duration;

use wxtoken_sim::{Endpoint, FetchOutcome, Timing};

use crate::common::*;

#[tokio::test]
async fn success_shape_has_no_errcode_and_a_136_char_token() {
    let h = Harness::start(fast()).await;
    let v = h.classic(APPID, SECRET).await;
    let obj = v.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["access_token", "expires_in"], "{v}");
    assert_eq!(v["expires_in"], 10);
    let token = token_of(&v, "access_token");
    assert_eq!(token.len(), 136);
    assert!(token
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));

    // Every fetch issues a new token, distinct from the first character on.
    let second = h.classic_token().await;
    assert_ne!(token[..8], second[..8]);
    assert_err(&h.business("").await, 41001);
    assert!(h.business(&second).await["ip_list"].is_array());
}

#[tokio::test]
async fn error_codes_follow_wechat_check_order() {
    let h = Harness::start(fast()).await;
    let admin = h.sim.admin();
    let q = |query: &str| format!("/cgi-bin/token?{query}");

    // grant_type is checked first, even when everything else is missing.
    assert_err(&h.get_json(&q("")).await, 40002);
    let msg = assert_err(
        &h.get_json(&q(&format!(
            "grant_type=password&appid={APPID}&secret={SECRET}"
        )))
        .await,
        40002,
    );
    assert!(msg.starts_with("invalid grant_type rid: "), "{msg}");
    // Then appid (an empty value counts as missing), then secret.
    let msg = assert_err(&h.get_json(&q("grant_type=client_credential")).await, 41002);
    assert!(msg.starts_with("appid missing"), "{msg}");
    assert_err(
        &h.get_json(&q("grant_type=client_credential&appid=&secret=x"))
            .await,
        41002,
    );
    let msg = assert_err(
        &h.get_json(&q(&format!("grant_type=client_credential&appid={APPID}")))
            .await,
        41004,
    );
    assert!(msg.starts_with("appsecret missing"), "{msg}");
    // Unknown appid beats a wrong secret.
    let msg = assert_err(&h.classic("wx_unknown", "nope").await, 40013);
    assert!(msg.starts_with("invalid appid"), "{msg}");

    // Frozen secret beats the whitelist and a wrong secret.
    admin.set_secret_frozen(APPID, true);
    admin.set_ip_whitelisted(APPID, false);
    assert_err(&h.classic(APPID, "wrong").await, 40243);
    assert_err(&h.classic(APPID, SECRET).await, 40243);
    admin.set_secret_frozen(APPID, false);

    // Whitelist beats a wrong secret, and names the caller's address.
    let msg = assert_err(&h.classic(APPID, "wrong").await, 40164);
    assert!(
        msg.starts_with("invalid ip 127.0.0.1 ipv6 ::ffff:127.0.0.1, not in whitelist rid: "),
        "{msg}"
    );
    assert_err(&h.classic(APPID, SECRET).await, 40164);
    admin.set_ip_whitelisted(APPID, true);

    // Wrong secret: 40125 if it does not look like a secret, 40001 if it does.
    let msg = assert_err(&h.classic(APPID, "not-a-secret").await, 40125);
    assert!(msg.starts_with("invalid appsecret"), "{msg}");
    let msg = assert_err(&h.classic(APPID, OTHER_SECRET).await, 40001);
    assert!(
        msg.starts_with("invalid credential, access_token is invalid or not latest"),
        "{msg}"
    );

    // The secret is checked before the quota.
    admin.set_quota_used(APPID, Endpoint::Token, 2000);
    assert_err(&h.classic(APPID, OTHER_SECRET).await, 40001);
    let msg = assert_err(&h.classic(APPID, SECRET).await, 45009);
    assert!(msg.starts_with("reach max api daily quota limit"), "{msg}");

    // None of the failures issued a token or used quota, and each was recorded.
    let ev = admin.app_evidence(APPID).unwrap();
    assert!(ev.live_tokens.is_empty());
    assert_eq!(ev.quota_used["token"], 2000);
    let codes: Vec<i64> = ev
        .fetches_of(Endpoint::Token)
        .iter()
        .map(|f| match f.outcome {
            FetchOutcome::Error { errcode } => errcode,
            ref other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        [40002, 41004, 40243, 40243, 40164, 40164, 40125, 40001, 40001, 45009]
    );
}

#[tokio::test]
async fn new_token_invalidates_previous_only_after_overlap() {
    // WeChat's own numbers: tokens live 7200 s, a replaced one 300 s more.
    let h = Harness::start(Timing::default()).await;
    let overlap = Timing::default().overlap;
    let a = h.classic_token().await;
    h.advance(Duration::from_secs(60));
    let b = h.classic_token().await; // a now dies at b + 300 s
    assert!(h.business(&a).await["ip_list"].is_array());
    assert!(h.business(&b).await["ip_list"].is_array());
    // Another app's fetch does not touch this app's tokens.
    token_of(&h.classic(OTHER_APPID, OTHER_SECRET).await, "access_token");

    // The last instant of the overlap: both still work.
    h.advance(overlap - NS);
    assert!(h.business(&a).await["ip_list"].is_array());
    let ev = h.sim.admin().app_evidence(APPID).unwrap();
    assert_eq!(ev.live_tokens.len(), 2);
    assert!(ev.live_tokens[0].replaced);
    assert_eq!(ev.live_tokens[0].expires_in_ms, 0, "1 ns left");

    // The overlap's end: a is invalid (40001, it was cut short), b unaffected.
    h.advance(NS);
    assert_err(&h.business(&a).await, 40001);
    assert!(h.business(&b).await["ip_list"].is_array());
    assert_eq!(h.sim.admin().check_token(&a), Err(40001));
    assert_eq!(h.sim.admin().check_token(&b), Ok(()));

    let ev = h.sim.admin().app_evidence(APPID).unwrap();
    assert_eq!(ev.live_tokens.len(), 1);
    assert_eq!(ev.live_tokens[0].token_prefix, b[..8]);
    assert!(!ev.live_tokens[0].replaced);
    assert_eq!(
        ev.live_tokens[0].expires_in_ms, 6_900_000,
        "b: 7200 s - 300 s left"
    );
    assert_eq!(ev.business_ok, 4);
    assert_eq!(ev.rejected_business_calls.get(&40001), Some(&1));
}

#[tokio::test]
async fn token_expires_exactly_after_expires_in() {
    let h = Harness::start(Timing::default()).await;
    let v = h.classic(APPID, SECRET).await;
    assert_eq!(v["expires_in"], 7200);
    let a = token_of(&v, "access_token");
    h.advance(Duration::from_secs(7200) - NS);
    assert!(h.business(&a).await["ip_list"].is_array());
    h.advance(NS);
    let msg = assert_err(&h.business(&a).await, 42001);
    assert!(msg.starts_with("access_token expired rid: "), "{msg}");
    assert_eq!(h.sim.admin().check_token(&a), Err(42001));
}

#[tokio::test]
async fn expiry_is_42001_but_a_token_cut_short_by_replacement_stays_40001() {
    let h = Harness::start(Timing {
        expires_in: Duration::from_secs(2),
        overlap: Duration::from_secs(1),
        ..fast()
    })
    .await;
    let ms = Duration::from_millis;
    let a = h.classic_token().await; // t = 0: expires at 2 s
    h.advance(ms(300));
    let b = h.classic_token().await; // t = 0.3 s: a dies at 1.3 s, b expires at 2.3 s
    h.advance(ms(1000) - NS);
    assert!(h.business(&a).await["ip_list"].is_array());
    h.advance(NS); // t = 1.3 s
    assert_err(&h.business(&a).await, 40001);
    h.advance(ms(1000) - NS);
    assert!(h.business(&b).await["ip_list"].is_array());
    h.advance(NS); // t = 2.3 s
    let msg = assert_err(&h.business(&b).await, 42001);
    assert!(msg.starts_with("access_token expired rid: "), "{msg}");
    // a is past its natural expiry now, but stays 40001.
    assert_err(&h.business(&a).await, 40001);
    assert_eq!(h.sim.admin().check_token(&b), Err(42001));
    assert!(h
        .sim
        .admin()
        .app_evidence(APPID)
        .unwrap()
        .live_tokens
        .is_empty());
}

#[tokio::test]
async fn daily_quota_45009_until_reset() {
    let h = Harness::start(Timing {
        daily_quota: 2,
        ..fast()
    })
    .await;
    let admin = h.sim.admin();
    h.classic_token().await;
    h.classic_token().await;
    assert_err(&h.classic(APPID, SECRET).await, 45009);
    // Quotas are per app.
    token_of(&h.classic(OTHER_APPID, OTHER_SECRET).await, "access_token");
    assert_eq!(admin.app_evidence(APPID).unwrap().quota_used["token"], 2);

    admin.reset_quota(APPID);
    assert_eq!(admin.app_evidence(APPID).unwrap().quota_used["token"], 0);
    h.classic_token().await;
}

#[tokio::test]
async fn quota_resets_when_the_day_rolls_over() {
    // WeChat's day (86400 s, counted from simulator start).
    let h = Harness::start(Timing {
        daily_quota: 1,
        ..Timing::default()
    })
    .await;
    let admin = h.sim.admin();
    h.classic_token().await;
    assert_err(&h.classic(APPID, SECRET).await, 45009);
    // The last instant of day 0: still exhausted.
    h.advance(Timing::default().day - admin.elapsed() - NS);
    assert_err(&h.classic(APPID, SECRET).await, 45009);
    assert_eq!(admin.app_evidence(APPID).unwrap().quota_used["token"], 1);
    // Day 1.
    h.advance(NS);
    assert_eq!(admin.elapsed(), Timing::default().day);
    assert_eq!(admin.app_evidence(APPID).unwrap().quota_used["token"], 0);
    h.classic_token().await;
    assert_err(&h.classic(APPID, SECRET).await, 45009);
    // And again a day later.
    h.advance(Timing::default().day);
    h.classic_token().await;
}
