//! Evidence content: every fetch in order with time and 8-character prefix, live tokens,
//! rejected business calls, quota counters; never a secret or a whole token.

use std::time::{SystemTime, UNIX_EPOCH};

use wxtoken_sim::{Endpoint, Evidence, FetchOutcome};

use crate::common::*;

#[tokio::test]
async fn evidence_records_everything_with_prefixes_only() {
    // The clock is paused: two snapshots of the evidence taken at different real instants
    // agree (with a running clock, `expires_in_ms` could differ by a millisecond).
    let h = Harness::start(fast()).await;
    let admin = h.sim.admin();
    let classic = h.classic_token().await;
    assert_err(&h.classic(APPID, "bad").await, 40125);
    let (stable, _) = h.stable_token(false).await;
    let (stable_again, _) = h.stable_token(false).await;
    assert_eq!(stable_again, stable);
    let ticket = token_of(&h.ticket(&classic, "jsapi").await, "ticket");
    h.business(&classic).await;
    assert_err(&h.business(&ticket).await, 40001);

    let ev = admin.app_evidence(APPID).unwrap();
    let summary: Vec<(Endpoint, String)> = ev
        .fetches
        .iter()
        .map(|f| {
            let o = match &f.outcome {
                FetchOutcome::Issued {
                    token_prefix,
                    reused,
                    expires_in,
                } => {
                    assert_eq!(token_prefix.len(), 8);
                    assert_eq!(*expires_in, 10, "no simulator time passed");
                    format!("{token_prefix}{}", if *reused { "+reused" } else { "" })
                }
                FetchOutcome::Error { errcode } => errcode.to_string(),
                FetchOutcome::Fault { kind } => kind.clone(),
            };
            (f.endpoint, o)
        })
        .collect();
    assert_eq!(
        summary,
        [
            (Endpoint::Token, classic[..8].to_string()),
            (Endpoint::Token, "40125".to_string()),
            (Endpoint::StableToken, stable[..8].to_string()),
            (Endpoint::StableToken, format!("{}+reused", &stable[..8])),
            (Endpoint::Ticket, ticket[..8].to_string()),
        ]
    );

    // Times: in order, and real wall-clock time (the clock was paused right after start).
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(ev
        .fetches
        .windows(2)
        .all(|w| w[0].since_start_ms <= w[1].since_start_ms && w[0].at_unix_ms <= w[1].at_unix_ms));
    assert!(ev
        .fetches
        .iter()
        .all(|f| f.at_unix_ms <= now_ms + 1000 && f.at_unix_ms + 60_000 >= now_ms));

    assert_eq!(ev.live_tokens.len(), 3);
    assert!(ev
        .live_tokens
        .iter()
        .all(|t| t.token_prefix.len() == 8 && t.expires_in_ms == 10_000 && !t.replaced));
    assert_eq!(ev.business_ok, 1);
    assert_eq!(ev.rejected_business_calls.get(&40001), Some(&1));
    assert_eq!(ev.quota_used["token"], 1);
    assert_eq!(ev.quota_used["stable_token"], 2);
    assert_eq!(ev.quota_used["ticket"], 1);
    assert_eq!(ev.force_refreshes_today, 0);
    assert_eq!(admin.fetches(APPID, Endpoint::StableToken).len(), 2);
    assert!(admin.fetches("wx_unknown", Endpoint::Token).is_empty());
    assert!(admin.app_evidence("wx_unknown").is_none());

    // Neither the in-process nor the HTTP evidence contains a secret or a whole token.
    let all = admin.evidence();
    assert_eq!(all.apps.len(), 2);
    assert_eq!(all.apps[APPID], ev);
    let json = serde_json::to_string(&all).unwrap();
    let http_json = h
        .http
        .get(h.url("/_sim/evidence"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for text in [&json, &http_json] {
        for secret in [SECRET, OTHER_SECRET] {
            assert!(!text.contains(secret), "secret in evidence");
        }
        for whole in [&classic, &stable, &ticket] {
            assert!(
                !text.contains(&whole[..9]),
                "more than a prefix in evidence"
            );
        }
    }
    // The HTTP form deserializes into the same structure.
    let from_http: Evidence = serde_json::from_str(&http_json).unwrap();
    assert_eq!(from_http.apps[APPID].fetches, ev.fetches);
}
