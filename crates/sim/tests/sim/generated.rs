//! Generated apps (`[generate]`, `SimConfig::with_generated_apps`): credentials follow the
//! documented formula, wrong secrets are refused, duplicates with listed apps are named, a
//! simulator with 100,000 of them serves the first and the last, and the fetch counters agree
//! with the evidence.

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::Value;
use wxtoken_sim::{
    ConfigError, Endpoint, Fault, FaultKind, GeneratedApps, SimConfig, SimCounts, Simulator,
};

use crate::common::*;

const SEED: u64 = 0x5eed;

fn http() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn classic(http: &Client, base: &str, appid: &str, secret: &str) -> Value {
    let url =
        format!("{base}/cgi-bin/token?grant_type=client_credential&appid={appid}&secret={secret}");
    wechat_json(http.get(url).send().await.unwrap()).await
}

async fn admin_get(http: &Client, base: &str, path: &str) -> (StatusCode, Value) {
    let resp = http.get(format!("{base}{path}")).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

#[test]
fn formula_is_the_documented_one() {
    let g = GeneratedApps::new(3, SEED);
    assert_eq!(g.appid(0), "wx0000000000000000");
    assert_eq!(g.appid(99_999), "wx0000000000099999");
    assert_eq!(g.secret(0), "0000000000005eed0000000000000000");
    assert_eq!(g.secret(255), "0000000000005eed00000000000000ff");
    let g = g.with_appid_prefix("wxbench");
    assert_eq!(g.appid(7), "wxbench0000000000000007");
    let apps: Vec<_> = g.apps().collect();
    assert_eq!(apps.len(), 3);
    assert_eq!(apps[2].appid, "wxbench0000000000000002");
    assert_eq!(apps[2].secret, g.secret(2));
    // The seed yields every secret: Debug does not show it.
    let dbg = format!("{:?}", SimConfig::default().with_generated(g));
    assert!(dbg.contains("wxbench") && !dbg.contains("24301"), "{dbg}");
}

#[test]
fn generate_table_parses_and_is_checked() {
    let config = SimConfig::from_toml_str(
        "[generate]\ncount = 5\nappid_prefix = \"wxb\"\nsecret_seed = 24301\n",
    )
    .unwrap();
    assert_eq!(
        config.generate,
        Some(GeneratedApps::new(5, SEED).with_appid_prefix("wxb"))
    );
    assert_eq!(config.app_count(), 5);
    let appids: Vec<String> = config.all_apps().map(|a| a.appid).collect();
    assert_eq!(appids[4], "wxb0000000000000004");

    // The prefix defaults to `wx`; the seed must be given.
    let config = SimConfig::from_toml_str("[generate]\ncount = 1\nsecret_seed = 1\n").unwrap();
    assert_eq!(
        config.all_apps().next().unwrap().appid,
        "wx0000000000000000"
    );
    let msg = SimConfig::from_toml_str("[generate]\ncount = 1\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("secret_seed"), "{msg}");
    let msg = SimConfig::from_toml_str("[generate]\ncount = 1\nsecret_seed = 1\nseed = 2\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("seed") && msg.contains("line 4"), "{msg}");

    let msg = SimConfig::from_toml_str("[generate]\ncount = 20000000\nsecret_seed = 1\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("generate.count"), "{msg}");
    let msg = SimConfig::from_toml_str(
        "[generate]\ncount = 1\nappid_prefix = \"wx bad\"\nsecret_seed = 1\n",
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("generate.appid_prefix"), "{msg}");
}

#[test]
fn duplicates_are_named_listed_or_generated() {
    // Two listed apps with one appid: the later one is named, as before.
    let err = SimConfig::default()
        .with_app("wx1", SECRET)
        .with_app("wx2", SECRET)
        .with_app("wx1", OTHER_SECRET)
        .validate()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, ConfigError::Invalid { field, .. } if field == "app[2].appid"),
        "{err:?}"
    );
    assert!(msg.contains("duplicate appid wx1"), "{msg}");
    assert!(
        !msg.contains(SECRET) && !msg.contains(OTHER_SECRET),
        "{msg}"
    );

    // A listed app that a generated one collides with.
    let err = SimConfig::default()
        .with_app("wx-listed", SECRET)
        .with_app("wx0000000000000041", SECRET)
        .with_generated_apps(100, SEED)
        .validate()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, ConfigError::Invalid { field, .. } if field == "app[1].appid"),
        "{err:?}"
    );
    assert!(
        msg.contains("duplicate appid wx0000000000000041") && msg.contains("generated app 41"),
        "{msg}"
    );
    assert!(!msg.contains(SECRET), "{msg}");

    // Same from a file: the path and field are named.
    let toml = format!(
        "[[app]]\nappid = \"wx0000000000000002\"\nsecret = \"{SECRET}\"\n\
         [generate]\ncount = 3\nsecret_seed = 1\n"
    );
    let msg = SimConfig::from_toml_str(&toml).unwrap_err().to_string();
    assert!(
        msg.contains("app[0].appid") && msg.contains("duplicate"),
        "{msg}"
    );

    // No collision once the prefixes differ.
    SimConfig::default()
        .with_app("wx0000000000000041", SECRET)
        .with_generated(GeneratedApps::new(100, SEED).with_appid_prefix("wxg"))
        .validate()
        .unwrap();
}

#[tokio::test]
async fn generated_apps_fetch_with_derived_secrets_and_wrong_secrets_are_refused() {
    let g = GeneratedApps::new(50, SEED);
    let config = SimConfig::default()
        .with_app(APPID, SECRET)
        .with_generated(g.clone().with_appid_prefix("wxg"))
        .with_timing(fast());
    let g = g.with_appid_prefix("wxg");
    let sim = Simulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = sim.base_url();
    let http = http();
    let admin = sim.admin();
    admin.pause_clock();

    for i in [0, 17, 49] {
        let v = classic(&http, &base, &g.appid(i), &g.secret(i)).await;
        let token = token_of(&v, "access_token");
        assert_eq!(admin.check_token(&token), Ok(()));
    }
    // The listed app still works.
    token_of(&classic(&http, &base, APPID, SECRET).await, "access_token");
    // Another generated app's secret (32 hex: 40001), a non-secret (40125), an index past the
    // end (40013).
    assert_err(
        &classic(&http, &base, &g.appid(0), &g.secret(1)).await,
        40001,
    );
    assert_err(&classic(&http, &base, &g.appid(0), "wrong").await, 40125);
    assert_err(
        &classic(&http, &base, &g.appid(50), &g.secret(50)).await,
        40013,
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_generated_apps_serve_first_and_last() {
    const N: u32 = 100_000;
    let g = GeneratedApps::new(N, SEED);
    let config = SimConfig::default()
        .with_generated(g.clone())
        .with_timing(fast());
    let started = Instant::now();
    let sim = Simulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // For the record only (no timing assertion): debug build, shared machine.
    eprintln!("started with {N} generated apps in {:?}", started.elapsed());
    let base = sim.base_url();
    let http = http();
    let admin = sim.admin();
    admin.pause_clock();
    assert_eq!(admin.counts().apps, u64::from(N));

    let first = token_of(
        &classic(&http, &base, &g.appid(0), &g.secret(0)).await,
        "access_token",
    );
    let last_appid = g.appid(N - 1);
    assert_eq!(last_appid, "wx0000000000099999");
    let last = token_of(
        &classic(&http, &base, &last_appid, &g.secret(N - 1)).await,
        "access_token",
    );
    assert_err(
        &classic(&http, &base, &last_appid, &g.secret(0)).await,
        40001,
    );
    assert_eq!(admin.check_token(&first), Ok(()));
    assert_eq!(admin.check_token(&last), Ok(()));
    let v = wechat_json(
        http.get(format!(
            "{base}/cgi-bin/get_api_domain_ip?access_token={last}"
        ))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(errcode(&v), 0, "{v}");

    // Counters: O(1) totals, per app, and per app for all apps; in-process and over HTTP.
    let counts = admin.counts();
    assert_eq!(counts.fetches.token.calls, 3);
    assert_eq!(counts.fetches.token.issued, 2);
    assert_eq!(counts.fetches.token.errors, 1);
    assert_eq!(counts.fetches.total().calls, 3);
    let last_counts = admin.app_counts(&last_appid).unwrap();
    assert_eq!((last_counts.token.calls, last_counts.token.issued), (2, 1));
    assert_eq!(admin.app_counts(&g.appid(5)).unwrap().total().calls, 0);
    assert!(admin.app_counts("wx-unknown").is_none());
    let per_app = admin.counts_per_app().per_app.unwrap();
    assert_eq!(
        per_app.keys().collect::<Vec<_>>(),
        [&g.appid(0), &last_appid]
    );

    let (status, body) = admin_get(&http, &base, "/_sim/counts").await;
    assert_eq!(status, StatusCode::OK);
    let over_http: SimCounts = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(over_http, counts, "{body}");
    assert!(body.get("per_app").is_none(), "{body}");
    assert!(
        body["fetches"].get("ticket").is_none(),
        "never-called endpoints are left out: {body}"
    );
    let (status, body) = admin_get(&http, &base, "/_sim/counts?per_app=true").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["per_app"].as_object().unwrap().len(), 2, "{body}");
    assert_eq!(body["per_app"][&last_appid]["token"]["errors"], 1, "{body}");
    let (status, body) = admin_get(&http, &base, &format!("/_sim/apps/{last_appid}/counts")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["token"]["calls"], 2, "{body}");
    let (status, _) = admin_get(&http, &base, "/_sim/apps/wx-unknown/counts").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = admin_get(&http, &base, "/_sim/counts?per_app=yes").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    sim.shutdown().await;
}

#[tokio::test]
async fn counters_agree_with_the_evidence() {
    let h = Harness::start(fast()).await;
    let admin = h.sim.admin();
    admin.inject(
        APPID,
        Fault::new(FaultKind::Errcode { errcode: -1 })
            .on(Endpoint::Token)
            .times(1),
    );
    assert_err(&h.classic(APPID, SECRET).await, -1);
    let classic = h.classic_token().await;
    assert_err(&h.classic(APPID, "bad").await, 40125);
    h.stable_token(false).await;
    h.stable_token(false).await;
    token_of(&h.ticket(&classic, "jsapi").await, "ticket");
    h.classic(OTHER_APPID, OTHER_SECRET).await;

    let ev = admin.app_evidence(APPID).unwrap();
    let counts = admin.app_counts(APPID).unwrap();
    for endpoint in [Endpoint::Token, Endpoint::StableToken, Endpoint::Ticket] {
        let c = counts.of(endpoint).unwrap();
        assert_eq!(
            c.calls as usize,
            ev.fetches_of(endpoint).len(),
            "{endpoint}"
        );
        assert_eq!(c.issued as usize, ev.issued_count(endpoint), "{endpoint}");
    }
    assert_eq!(counts.token.faults, 1);
    assert_eq!(counts.token.errors, 1);
    assert_eq!(counts.stable_token.reused, 1);
    assert!(counts.of(Endpoint::Business).is_none());
    let total = admin.counts();
    assert_eq!(total.apps, 2);
    assert_eq!(total.fetches.total().calls, counts.total().calls + 1);
}
