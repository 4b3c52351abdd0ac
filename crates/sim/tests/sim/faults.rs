//! Scripted faults through real HTTP: errcode for N calls then normal, endpoint scoping and
//! persistence, 5xx, garbage, truncated JSON, delay, hang (client timeout and eventual -1),
//! faults on ticket/business calls routed by token owner, and the whitelist/frozen flags.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use wxtoken_sim::{Endpoint, Fault, FaultKind, FetchOutcome, Timing};

use crate::common::*;

#[tokio::test]
async fn errcode_fault_for_n_calls_then_normal() {
    let h = Harness::start(fast()).await;
    let admin = h.sim.admin();
    admin.inject(
        APPID,
        Fault::new(FaultKind::Errcode { errcode: -1 })
            .on(Endpoint::Token)
            .times(2),
    );
    // Faults come before every check, even a wrong secret.
    let msg = assert_err(&h.classic(APPID, "wrong").await, -1);
    assert!(msg.starts_with("system error rid: "), "{msg}");
    assert_err(&h.classic(APPID, SECRET).await, -1);
    h.classic_token().await;
    assert!(admin.faults(APPID).is_empty());

    let ev = admin.app_evidence(APPID).unwrap();
    let outcomes: Vec<FetchOutcome> = ev.fetches.iter().map(|f| f.outcome.clone()).collect();
    assert_eq!(
        outcomes[..2],
        [
            FetchOutcome::Fault {
                kind: "errcode:-1".into()
            },
            FetchOutcome::Fault {
                kind: "errcode:-1".into()
            }
        ]
    );
    assert!(matches!(outcomes[2], FetchOutcome::Issued { .. }));
    // Faulted calls never reached WeChat's logic: no quota charged.
    assert_eq!(ev.quota_used["token"], 1);
}

#[tokio::test]
async fn faults_are_scoped_by_endpoint_and_app_and_persist_until_cleared() {
    let h = Harness::start(fast()).await;
    let admin = h.sim.admin();
    admin.inject(
        APPID,
        Fault::new(FaultKind::Errcode { errcode: 45011 }).on(Endpoint::StableToken),
    );
    for _ in 0..3 {
        assert_err(&h.stable(APPID, SECRET, false).await, 45011);
    }
    // Other endpoints and other apps are unaffected.
    h.classic_token().await;
    token_of(
        &h.stable(OTHER_APPID, OTHER_SECRET, false).await,
        "access_token",
    );
    admin.clear_faults(APPID);
    h.stable_token(false).await;

    // FIFO: the first matching fault is consumed first; `None` endpoint matches anything.
    admin.inject(
        APPID,
        Fault::new(FaultKind::Errcode { errcode: -1 }).times(1),
    );
    admin.inject(
        APPID,
        Fault::new(FaultKind::Errcode { errcode: 45009 })
            .on(Endpoint::Token)
            .times(1),
    );
    assert_err(&h.classic(APPID, SECRET).await, -1);
    assert_err(&h.classic(APPID, SECRET).await, 45009);
    h.classic_token().await;
}

#[tokio::test]
async fn http_status_fault_answers_with_an_html_error_page() {
    let h = Harness::start(fast()).await;
    h.sim.admin().inject(
        APPID,
        Fault::new(FaultKind::HttpStatus { status: 502 }).times(1),
    );
    let resp = h
        .http
        .get(h.url(&format!(
            "/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body = resp.text().await.unwrap();
    assert!(body.contains("502 Bad Gateway"), "{body}");
    assert!(serde_json::from_str::<serde_json::Value>(&body).is_err());
    h.classic_token().await;
    let fetches = h.sim.admin().fetches(APPID, Endpoint::Token);
    assert_eq!(
        fetches[0].outcome,
        FetchOutcome::Fault {
            kind: "http_status:502".into()
        }
    );
}

#[tokio::test]
async fn garbage_and_truncated_faults_are_unparseable_200s() {
    let h = Harness::start(fast()).await;
    let admin = h.sim.admin();
    admin.inject(APPID, Fault::new(FaultKind::Garbage).times(1));
    admin.inject(APPID, Fault::new(FaultKind::Truncated).times(1));
    let url = h.url(&format!(
        "/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}"
    ));

    let resp = h.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.text().await.unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(&body).is_err(),
        "{body}"
    );

    let resp = h.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[reqwest::header::CONTENT_TYPE],
        "application/json; encoding=utf-8"
    );
    let body = resp.text().await.unwrap();
    assert!(body.starts_with("{\"access_token\":\""), "{body}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&body).is_err(),
        "{body}"
    );

    h.classic_token().await;
    let kinds: Vec<String> = admin
        .fetches(APPID, Endpoint::Token)
        .into_iter()
        .filter_map(|f| match f.outcome {
            FetchOutcome::Fault { kind } => Some(kind),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["garbage", "truncated"]);
}

/// Sends a stable-token fetch for APPID in its own task (so that the test can move the clock
/// while it is in flight); the task yields the answer.
fn spawn_stable_fetch(h: &Harness) -> tokio::task::JoinHandle<serde_json::Value> {
    let request = h.http.post(h.url("/cgi-bin/stable_token")).body(
        serde_json::json!({
            "grant_type": "client_credential",
            "appid": APPID,
            "secret": SECRET,
        })
        .to_string(),
    );
    tokio::spawn(async move { wechat_json(request.send().await.unwrap()).await })
}

/// Asserts that the spawned request is still waiting (given a moment of real time to finish
/// if it wrongly could).
async fn assert_still_waiting(request: &mut tokio::task::JoinHandle<serde_json::Value>) {
    let waited = tokio::time::timeout(Duration::from_millis(100), &mut *request).await;
    assert!(waited.is_err(), "answered too early: {waited:?}");
}

#[tokio::test]
async fn delay_fault_answers_normally_once_the_clock_has_moved_on() {
    let h = Harness::start(fast()).await;
    let admin = h.sim.admin();
    let delay = Duration::from_secs(600);
    admin.inject(
        APPID,
        Fault::new(FaultKind::Delay { delay })
            .on(Endpoint::StableToken)
            .times(1),
    );
    let mut request = spawn_stable_fetch(&h);
    wait_until("the delay fault is taken", || {
        admin.faults(APPID).is_empty()
    })
    .await;
    h.advance(delay - NS);
    assert_still_waiting(&mut request).await;
    h.advance(NS);
    let answer = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("answered once the delay has passed")
        .unwrap();
    let token = token_of(&answer, "access_token");
    assert!(h.business(&token).await["ip_list"].is_array());
    let fetches = admin.fetches(APPID, Endpoint::StableToken);
    assert!(matches!(
        fetches[..],
        [wxtoken_sim::FetchRecord {
            outcome: FetchOutcome::Issued { reused: false, .. },
            since_start_ms,
            ..
        }] if since_start_ms >= 600_000
    ));
}

#[tokio::test]
async fn hang_fault_times_the_client_out_and_shutdown_does_not_wait() {
    let h = Harness::start(fast()).await; // hang = 30 s, and the paused clock never moves
    let admin = h.sim.admin();
    admin.inject(
        APPID,
        Fault::new(FaultKind::Hang).on(Endpoint::Token).times(1),
    );
    let err = h
        .http
        .get(h.url(&format!(
            "/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}"
        )))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(
        admin.fetches(APPID, Endpoint::Token)[0].outcome,
        FetchOutcome::Fault {
            kind: "hang".into()
        }
    );

    // A second hung request is still in flight while we shut down.
    let token = h.classic_token().await;
    admin.inject(
        APPID,
        Fault::new(FaultKind::Hang).on(Endpoint::Business).times(1),
    );
    let url = h.url("/cgi-bin/get_api_domain_ip?access_token=x");
    let base = h.sim.base_url();
    let hung = tokio::spawn({
        let http = h.http.clone();
        let url = format!("{base}/cgi-bin/get_api_domain_ip?access_token={token}");
        async move { http.get(url).send().await }
    });
    wait_until("the hang fault is taken", || admin.faults(APPID).is_empty()).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), h.sim.shutdown())
        .await
        .expect("shutdown does not wait for hung requests");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The hung client sees its connection closed, not an answer.
    let result = tokio::time::timeout(Duration::from_secs(10), hung)
        .await
        .expect("hung request ends with the server")
        .unwrap();
    assert!(result.is_err(), "{result:?}");
    // And nothing is served any more.
    assert!(h.http.get(url).send().await.is_err());
}

#[tokio::test]
async fn hang_fault_answers_system_error_once_the_hang_has_passed() {
    let h = Harness::start(Timing::default()).await; // hang = 3600 s
    let admin = h.sim.admin();
    admin.inject(APPID, Fault::new(FaultKind::Hang).times(1));
    let mut request = spawn_stable_fetch(&h);
    wait_until("the hang fault is taken", || admin.faults(APPID).is_empty()).await;
    h.advance(Duration::from_secs(3599));
    assert_still_waiting(&mut request).await;
    h.advance(Duration::from_secs(1) - NS);
    assert_still_waiting(&mut request).await;
    h.advance(NS);
    let answer = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("answered once the hang has passed")
        .unwrap();
    assert_err(&answer, -1);
}

#[tokio::test]
async fn without_advances_the_clock_is_real_time() {
    // Nobody pauses or advances the clock: tokens expire and delays end in real time, as
    // other crates' end-to-end tests (real refresher processes) rely on.
    let h = Harness::start_real_time(Timing {
        expires_in: Duration::from_millis(250),
        ..fast()
    })
    .await;
    let admin = h.sim.admin();
    let token = h.classic_token().await;
    admin.inject(
        APPID,
        Fault::new(FaultKind::Delay {
            delay: Duration::from_millis(250),
        })
        .on(Endpoint::Business)
        .times(1),
    );
    let started = Instant::now();
    // Checked after the delay, by which time the token has expired.
    assert_err(&h.business(&token).await, 42001);
    assert!(started.elapsed() >= Duration::from_millis(250));
    let clock = admin.clock();
    assert!(!clock.paused && clock.advanced_ms == 0, "{clock:?}");
    assert!(clock.elapsed_ms >= 250, "{clock:?}");
}

#[tokio::test]
async fn ticket_and_business_faults_follow_the_token_owner() {
    let h = Harness::start(fast()).await;
    let admin = h.sim.admin();
    let token = h.classic_token().await;
    admin.inject(
        APPID,
        Fault::new(FaultKind::Errcode { errcode: -1 })
            .on(Endpoint::Business)
            .times(1),
    );
    // A call that cannot be attributed to the app does not consume its fault...
    assert_err(&h.business("unknown-token").await, 40001);
    assert_eq!(admin.faults(APPID).len(), 1);
    // ...nor does another app's call.
    let other = token_of(&h.classic(OTHER_APPID, OTHER_SECRET).await, "access_token");
    assert!(h.business(&other).await["ip_list"].is_array());
    assert_err(&h.business(&token).await, -1);
    assert!(h.business(&token).await["ip_list"].is_array());
    let ev = admin.app_evidence(APPID).unwrap();
    assert_eq!(ev.rejected_business_calls.get(&-1), Some(&1));
    assert_eq!(ev.business_ok, 1);

    admin.inject(
        APPID,
        Fault::new(FaultKind::Truncated)
            .on(Endpoint::Ticket)
            .times(1),
    );
    let resp = h
        .http
        .get(h.url(&format!(
            "/cgi-bin/ticket/getticket?access_token={token}&type=jsapi"
        )))
        .send()
        .await
        .unwrap();
    let body = resp.text().await.unwrap();
    assert!(
        body.starts_with("{\"errcode\":0,\"errmsg\":\"ok\",\"ticket\":\""),
        "{body}"
    );
    assert!(serde_json::from_str::<serde_json::Value>(&body).is_err());
    token_of(&h.ticket(&token, "jsapi").await, "ticket");
}

#[tokio::test]
async fn whitelist_and_frozen_flags_block_fetches_not_existing_tokens() {
    let h = Harness::start(fast()).await;
    let admin = h.sim.admin();
    let token = h.classic_token().await;

    admin.set_ip_whitelisted(APPID, false);
    assert_err(&h.classic(APPID, SECRET).await, 40164);
    assert_err(&h.stable(APPID, SECRET, false).await, 40164);
    assert!(h.business(&token).await["ip_list"].is_array());
    admin.set_ip_whitelisted(APPID, true);

    admin.set_secret_frozen(APPID, true);
    let msg = assert_err(&h.classic(APPID, SECRET).await, 40243);
    assert!(!msg.contains(SECRET));
    assert_err(&h.stable(APPID, SECRET, true).await, 40243);
    assert!(h.business(&token).await["ip_list"].is_array());
    // Other apps are unaffected.
    token_of(&h.classic(OTHER_APPID, OTHER_SECRET).await, "access_token");
    admin.set_secret_frozen(APPID, false);

    h.classic_token().await;
    h.stable_token(false).await;
}

#[tokio::test]
async fn echo_url_fault_echoes_the_request_secrets_included() {
    let h = Harness::start(fast()).await;
    let admin = h.sim.admin();
    admin.inject(APPID, Fault::new(FaultKind::EchoUrl).times(2));
    let msg = assert_err(&h.classic(APPID, SECRET).await, -1);
    assert!(
        msg.starts_with("system error, request: GET /cgi-bin/token?")
            && msg.contains(&format!("secret={SECRET}")),
        "{msg}"
    );
    let msg = assert_err(&h.stable(APPID, SECRET, false).await, -1);
    assert!(
        msg.starts_with("system error, request: POST /cgi-bin/stable_token")
            && msg.contains(SECRET),
        "{msg}"
    );
    h.classic_token().await;
    let ev = admin.app_evidence(APPID).unwrap();
    assert_eq!(
        ev.fetches[0].outcome,
        FetchOutcome::Fault {
            kind: "echo_url".into()
        }
    );
}
