//! Three replicas, fifty credentials, short lifetimes, five or more refresh
//! cycles: every credential is fetched exactly once per cycle, every fetched
//! token is the one stored, and a business call made with the token read from
//! Redis succeeds at every sampled instant.

use crate::common::{business_call, Env, Setup};
use futures_util::StreamExt;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use wxtoken_schema::{events_channel, Kind, UpdateEvent};
use wxtoken_sim::{Endpoint, FetchOutcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_fetch_each_credential_once_per_cycle() {
    let env = Env::start(Setup {
        credentials: 50,
        lifetime: Duration::from_secs(5),
        overlap: Duration::from_secs(1),
        margin: Duration::from_secs(2),
        max_margin_fraction: 0.4,
        jitter: Duration::from_millis(500),
        ..Setup::default()
    })
    .await;

    // Record every write as it is published.
    let client = redis::Client::open(env.redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(events_channel("wxtoken")).await.unwrap();
    let events = tokio::spawn(async move {
        let mut seen: Vec<UpdateEvent> = Vec::new();
        let mut stream = pubsub.on_message();
        while let Some(msg) = stream.next().await {
            let ev = UpdateEvent::parse(msg.get_payload_bytes()).unwrap();
            let done = ev.id == "STOP";
            seen.push(ev);
            if done {
                break;
            }
        }
        seen
    });

    let replicas = env.spawn_replicas(3);
    env.wait_all_stored(Duration::from_secs(15)).await;

    // Sample: read a token from Redis, use it at once.
    let http = reqwest::Client::new();
    let mut con = env.redis_con().await;
    let run_for = Duration::from_secs(21);
    let started = Instant::now();
    let (mut samples, mut failures) = (0u32, Vec::new());
    while started.elapsed() < run_for {
        let i = rand::random_range(0..env.creds.len());
        match env.token(&mut con, i).await {
            Some(token) => {
                samples += 1;
                if let Err(code) = business_call(&http, &env.sim.base_url(), &token).await {
                    failures.push(format!(
                        "{} errcode {code} at {:?}",
                        env.creds[i].id,
                        started.elapsed()
                    ));
                }
            }
            None => failures.push(format!(
                "{} had no token at {:?}",
                env.creds[i].id,
                started.elapsed()
            )),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(samples > 500, "only {samples} samples");
    assert!(
        failures.is_empty(),
        "{} of {samples} samples failed: {failures:?}",
        failures.len()
    );

    // Stop the event recorder with a marker event.
    let _: () = redis::cmd("PUBLISH")
        .arg(events_channel("wxtoken"))
        .arg(r#"{"v":1,"id":"STOP","kind":"access_token","token":"x","expires_at_ms":0,"fence":0,"replica":"test"}"#)
        .query_async(&mut con)
        .await
        .unwrap();
    let events = events.await.unwrap();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await
        .unwrap();
    drop(replicas);

    let evidence = env.admin.evidence();
    let mut total_fetches = 0usize;
    let mut fetchers = BTreeSet::new();
    for c in &env.creds {
        let fetches: Vec<_> = evidence.apps[&c.appid].fetches_of(Endpoint::Token);
        let issued: Vec<(u64, String)> = fetches
            .iter()
            .filter_map(|f| match &f.outcome {
                FetchOutcome::Issued { token_prefix, .. } => {
                    Some((f.since_start_ms, token_prefix.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            issued.len(),
            fetches.len(),
            "{}: a fetch failed: {fetches:?}",
            c.id
        );
        // The first fetch and at least five refresh cycles (21 s at a period
        // of lifetime − margin − jitter, 2.5–3 s, makes seven or eight; the
        // rest is room for a loaded machine), and never two fetches in one
        // cycle: consecutive fetches are at least most of a period apart
        // (the shortest period less a generous allowance for latency).
        let shortest = env.setup.lifetime - env.setup.margin - env.setup.jitter;
        let min_gap = (shortest - Duration::from_millis(500)).as_millis() as u64;
        assert!(issued.len() >= 6, "{}: only {} fetches", c.id, issued.len());
        for pair in issued.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            assert!(
                gap >= min_gap,
                "{}: two fetches {gap} ms apart: {issued:?}",
                c.id
            );
        }
        // Every token WeChat issued is the one that was stored and announced.
        let written: Vec<String> = events
            .iter()
            .filter(|e| e.id == c.id && e.kind == Kind::AccessToken)
            .map(|e| e.token.chars().take(8).collect())
            .collect();
        let issued_prefixes: Vec<String> = issued.iter().map(|(_, p)| p.clone()).collect();
        assert_eq!(
            written, issued_prefixes,
            "{}: fetched vs stored tokens differ",
            c.id
        );
        fetchers.extend(
            events
                .iter()
                .filter(|e| e.id == c.id)
                .map(|e| e.replica.clone()),
        );
        total_fetches += issued.len();
    }
    assert!(
        fetchers.len() >= 2,
        "only {fetchers:?} ever fetched; replicas do not share work"
    );

    // Numbers for BENCHMARKS.md.
    let cmd_calls = crate::common::commandstats(&stats);
    println!(
        "fetches: {total_fetches} for {} credentials, {:.3} WeChat calls per stored token; \
         {} samples, 0 failed; redis commands: {cmd_calls:?}",
        env.creds.len(),
        total_fetches as f64 / events.iter().filter(|e| e.id != "STOP").count() as f64,
        samples
    );
}
