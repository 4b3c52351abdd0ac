//! Tickets `GET /cgi-bin/ticket/getticket`: success shape, a valid access token is required
//! (each error code), replacement overlap, per-type independence, quota.

use std::time::Duration;

use wxtoken_sim::{Endpoint, FetchOutcome, Timing};

use crate::common::*;

#[tokio::test]
async fn tickets_need_a_valid_token_and_have_wechat_shape() {
    let h = Harness::start(fast()).await;
    let token = h.classic_token().await;
    let v = h.ticket(&token, "jsapi").await;
    assert_eq!(v["errcode"], 0, "{v}");
    assert_eq!(v["errmsg"], "ok");
    assert_eq!(v["expires_in"], 10);
    assert_eq!(v.as_object().unwrap().len(), 4);
    let jsapi = token_of(&v, "ticket");
    assert!(jsapi.len() >= 80);

    // wx_card works too, and a stable token is as good as a classic one.
    let (stable, _) = h.stable_token(false).await;
    let card = token_of(&h.ticket(&stable, "wx_card").await, "ticket");
    assert_ne!(card, jsapi);

    // A ticket is not an access token.
    assert_err(&h.business(&jsapi).await, 40001);
    assert_err(&h.ticket(&jsapi, "jsapi").await, 40001);

    let msg = assert_err(
        &h.get_json("/cgi-bin/ticket/getticket?type=jsapi").await,
        41001,
    );
    assert!(msg.starts_with("access_token missing"), "{msg}");
    assert_err(&h.ticket("not-a-token", "jsapi").await, 40001);
    let msg = assert_err(&h.ticket(&token, "wx_cards").await, 40097);
    assert!(msg.starts_with("invalid args"), "{msg}");
    assert_err(
        &h.get_json(&format!("/cgi-bin/ticket/getticket?access_token={token}"))
            .await,
        40097,
    );

    let ev = h.sim.admin().app_evidence(APPID).unwrap();
    let kinds: Vec<&str> = ev.live_tokens.iter().map(|t| t.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "access_token",
            "jsapi_ticket",
            "stable_access_token",
            "wx_card_ticket"
        ]
    );
    // Attributed to the token's app: 2 issued, then 40001 (ticket as token), 40097 twice.
    let outcomes: Vec<String> = ev
        .fetches_of(Endpoint::Ticket)
        .iter()
        .map(|f| match &f.outcome {
            FetchOutcome::Issued { .. } => "issued".to_string(),
            FetchOutcome::Error { errcode } => errcode.to_string(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(outcomes, ["issued", "issued", "40001", "40097", "40097"]);
    assert_eq!(ev.quota_used["ticket"], 2);
}

#[tokio::test]
async fn replaced_and_expired_tokens_get_no_ticket() {
    let h = Harness::start(Timing {
        expires_in: Duration::from_secs(2),
        overlap: Duration::from_millis(500),
        ..fast()
    })
    .await;
    let a = h.classic_token().await;
    let b = h.classic_token().await; // a dies at 0.5 s, b expires at 2 s
    h.advance(Duration::from_millis(500) - NS);
    token_of(&h.ticket(&a, "jsapi").await, "ticket"); // inside a's overlap
    h.advance(NS);
    assert_err(&h.ticket(&a, "jsapi").await, 40001);
    token_of(&h.ticket(&b, "jsapi").await, "ticket");
    h.advance(Duration::from_millis(1500) - NS);
    token_of(&h.ticket(&b, "jsapi").await, "ticket");
    h.advance(NS);
    let msg = assert_err(&h.ticket(&b, "jsapi").await, 42001);
    assert!(msg.starts_with("access_token expired"), "{msg}");
}

#[tokio::test]
async fn new_ticket_replaces_previous_of_same_type_after_overlap() {
    let h = Harness::start(Timing {
        ticket_daily_quota: 3,
        ..fast()
    })
    .await;
    let admin = h.sim.admin();
    let token = h.classic_token().await;
    let t1 = token_of(&h.ticket(&token, "jsapi").await, "ticket");
    let card = token_of(&h.ticket(&token, "wx_card").await, "ticket");
    let t2 = token_of(&h.ticket(&token, "jsapi").await, "ticket");
    assert_ne!(t1, t2);

    let live = |prefix: &str| {
        admin
            .app_evidence(APPID)
            .unwrap()
            .live_tokens
            .into_iter()
            .find(|t| t.token_prefix == prefix)
    };
    let old = live(&t1[..8]).expect("old ticket live inside overlap");
    assert!(old.replaced);
    assert_eq!(old.expires_in_ms, 1000, "the overlap (1 s) is left");
    assert!(!live(&t2[..8]).unwrap().replaced);
    // Another type is independent.
    assert!(!live(&card[..8]).unwrap().replaced);

    h.advance(Duration::from_secs(1) - NS);
    assert!(live(&t1[..8]).is_some());
    h.advance(NS);
    assert!(live(&t1[..8]).is_none());
    assert!(live(&t2[..8]).is_some());
    assert!(live(&card[..8]).is_some());

    // Quota: 3 per day.
    let msg = assert_err(&h.ticket(&token, "jsapi").await, 45009);
    assert!(msg.starts_with("reach max api daily quota limit"), "{msg}");
    admin.reset_quota(APPID);
    token_of(&h.ticket(&token, "jsapi").await, "ticket");
}
