//! Passive refresh: business servers report a token WeChat refused, and the
//! refreshers replace it only if it is still the stored one.
//! - a storm of reports about one bad token costs exactly one WeChat call;
//! - a report about an already replaced token costs none;
//! - a report made while no replica runs is served when one starts;
//! - stable mode tries normal mode first and force_refresh only when WeChat
//!   hands back the refused token;
//! - the minimum interval keeps a token WeChat keeps refusing from looping.

use crate::common::{business_call, eventually, Env, Setup};
use std::time::{Duration, Instant};
use wxtoken_schema::{request_refresh, Kind, RequestOutcome, REQUEST_TTL_SECS};
use wxtoken_sim::{Endpoint, FetchRecord};

fn setup() -> Setup {
    Setup {
        credentials: 1,
        lifetime: Duration::from_secs(120),
        overlap: Duration::from_secs(5),
        min_interval: Duration::from_millis(500),
        ..Setup::default()
    }
}

fn issued(fetches: &[FetchRecord]) -> usize {
    fetches
        .iter()
        .filter(|f| matches!(f.outcome, wxtoken_sim::FetchOutcome::Issued { .. }))
        .count()
}

async fn report(env: &Env, token: &str) -> RequestOutcome {
    let mut con = env.redis_con().await;
    request_refresh(
        &mut con,
        &env.keys(&env.creds[0].id),
        Kind::AccessToken,
        token,
        Duration::from_secs(REQUEST_TTL_SECS),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_reports_about_one_bad_token_costs_one_call() {
    let env = Env::start(Setup {
        // Long enough that the storm (1000 reports) outlasts the refresh it
        // causes; the reports that follow the refresh must change nothing.
        min_interval: Duration::from_millis(200),
        ..setup()
    })
    .await;
    let appid = env.creds[0].appid.clone();
    let _replicas = env.spawn_replicas(3);
    env.wait_all_stored(Duration::from_secs(10)).await;
    let mut con = env.redis_con().await;
    let bad = env.token(&mut con, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // past min_interval

    // WeChat invalidates the token early (a leak, a fetch elsewhere...).
    env.admin.revoke_tokens(&appid);
    let http = reqwest::Client::new();
    assert_eq!(
        business_call(&http, &env.sim.base_url(), &bad).await,
        Err(40001)
    );
    let calls_before = issued(&env.admin.fetches(&appid, Endpoint::Token));

    // 100 business servers each see 40001 and report it 10 times.
    let mut servers = Vec::new();
    for _ in 0..100 {
        let (env_url, bad) = (env.redis.url(), bad.clone());
        let keys = env.keys(&env.creds[0].id);
        servers.push(tokio::spawn(async move {
            let mut con = redis::Client::open(env_url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            for _ in 0..10 {
                request_refresh(
                    &mut con,
                    &keys,
                    Kind::AccessToken,
                    &bad,
                    Duration::from_secs(600),
                )
                .await
                .unwrap();
            }
        }));
    }
    for s in servers {
        s.await.unwrap();
    }
    eventually(Duration::from_secs(5), "the bad token is replaced", || {
        let (env, mut con, bad) = (&env, con.clone(), bad.clone());
        async move { env.token(&mut con, 0).await.is_some_and(|t| t != bad) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await; // any late duplicate would show now
    let calls = issued(&env.admin.fetches(&appid, Endpoint::Token)) - calls_before;
    assert_eq!(
        calls, 1,
        "a storm of 1000 reports caused {calls} WeChat calls"
    );
    let new = env.token(&mut con, 0).await.unwrap();
    assert_eq!(
        business_call(&http, &env.sim.base_url(), &new).await,
        Ok(())
    );
    assert_eq!(env.token(&mut con, 0).await.as_deref(), Some(new.as_str()));

    // A report about the replaced token is refused and costs nothing.
    assert_eq!(report(&env, &bad).await, RequestOutcome::AlreadyReplaced);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        issued(&env.admin.fetches(&appid, Endpoint::Token)) - calls_before,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_made_while_no_replica_runs_is_served_when_one_starts() {
    let env = Env::start(setup()).await;
    let appid = env.creds[0].appid.clone();
    let mut first = env.spawn_replica("replica-1", None);
    env.wait_all_stored(Duration::from_secs(10)).await;
    assert_eq!(first.terminate(Duration::from_secs(10)), Some(0));
    let mut con = env.redis_con().await;
    let bad = env.token(&mut con, 0).await.unwrap();
    env.admin.revoke_tokens(&appid);

    assert_eq!(report(&env, &bad).await, RequestOutcome::Requested);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        env.token(&mut con, 0).await.as_deref(),
        Some(bad.as_str()),
        "nobody runs"
    );

    let started = Instant::now();
    let _second = env.spawn_replica("replica-2", None);
    eventually(
        Duration::from_secs(5),
        "the pending report is served",
        || {
            let (env, mut con, bad) = (&env, con.clone(), bad.clone());
            async move { env.token(&mut con, 0).await.is_some_and(|t| t != bad) }
        },
    )
    .await;
    println!("served {:?} after the replica started", started.elapsed());
    let pending: Option<String> = redis::cmd("GET")
        .arg(
            env.keys(&env.creds[0].id)
                .refresh_request(Kind::AccessToken),
        )
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(pending, None, "the served request is removed");
    assert_eq!(issued(&env.admin.fetches(&appid, Endpoint::Token)), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_mode_uses_force_refresh_only_when_normal_mode_returns_the_refused_token() {
    let env = Env::start(Setup {
        stable: true,
        ..setup()
    })
    .await;
    let appid = env.creds[0].appid.clone();
    let _r = env.spawn_replica("replica-1", None);
    env.wait_all_stored(Duration::from_secs(10)).await;
    let mut con = env.redis_con().await;
    let watcher = con.clone();
    let replaced = |bad: String| {
        let (env, con) = (&env, watcher.clone());
        move || {
            let (mut con, bad) = (con.clone(), bad.clone());
            async move { env.token(&mut con, 0).await.is_some_and(|t| t != bad) }
        }
    };

    // 1. WeChat already moved on (the stored token was invalidated): normal
    //    mode hands out the new current token; no force_refresh is spent.
    let bad = env.token(&mut con, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await; // past min_interval
    env.admin.revoke_tokens(&appid);
    assert_eq!(report(&env, &bad).await, RequestOutcome::Requested);
    eventually(
        Duration::from_secs(5),
        "replaced by normal mode",
        replaced(bad),
    )
    .await;
    let calls = env.admin.fetches(&appid, Endpoint::StableToken);
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert!(!calls[1].force_refresh);

    // 2. WeChat still hands out the reported token in normal mode: only then
    //    is force_refresh used.
    let bad = env.token(&mut con, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(report(&env, &bad).await, RequestOutcome::Requested);
    eventually(
        Duration::from_secs(5),
        "replaced by force_refresh",
        replaced(bad.clone()),
    )
    .await;
    let calls = env.admin.fetches(&appid, Endpoint::StableToken);
    assert_eq!(calls.len(), 4, "{calls:#?}");
    assert!(
        matches!(
            calls[2].outcome,
            wxtoken_sim::FetchOutcome::Issued { reused: true, .. }
        ),
        "normal mode first: {:?}",
        calls[2]
    );
    assert!(calls[3].force_refresh, "then force_refresh");
    let new = env.token(&mut con, 0).await.unwrap();
    assert_ne!(new, bad);
    assert_eq!(env.admin.check_token(&new), Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_wait_for_the_minimum_interval_after_a_refresh() {
    let env = Env::start(Setup {
        min_interval: Duration::from_secs(3),
        ..setup()
    })
    .await;
    let appid = env.creds[0].appid.clone();
    let _r = env.spawn_replica("replica-1", None);
    env.wait_all_stored(Duration::from_secs(10)).await;
    let mut con = env.redis_con().await;
    let bad = env.token(&mut con, 0).await.unwrap();
    let keys = env.keys(&env.creds[0].id);
    let refreshed_at = |con: redis::aio::MultiplexedConnection| {
        let keys = keys.clone();
        async move {
            let mut con = con;
            redis::cmd("HGET")
                .arg(keys.info(Kind::AccessToken))
                .arg(wxtoken_schema::info::REFRESHED_AT_MS)
                .query_async::<u64>(&mut con)
                .await
                .unwrap()
        }
    };
    let first_at = refreshed_at(con.clone()).await;

    assert_eq!(report(&env, &bad).await, RequestOutcome::Requested);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        issued(&env.admin.fetches(&appid, Endpoint::Token)),
        1,
        "refreshed inside min_interval"
    );
    eventually(Duration::from_secs(5), "served after min_interval", || {
        let (env, mut con, bad) = (&env, con.clone(), bad.clone());
        async move { env.token(&mut con, 0).await.is_some_and(|t| t != bad) }
    })
    .await;
    // By the Redis clock, which both writes used: no margin needed.
    let second_at = refreshed_at(con.clone()).await;
    assert!(
        second_at - first_at >= 3000,
        "refreshed {} ms after the last refresh",
        second_at - first_at
    );
    assert_eq!(issued(&env.admin.fetches(&appid, Endpoint::Token)), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_set_and_publish_from_any_language_is_served_once() {
    let env = Env::start(setup()).await;
    let appid = env.creds[0].appid.clone();
    let _replicas = env.spawn_replicas(3);
    env.wait_all_stored(Duration::from_secs(10)).await;
    let mut con = env.redis_con().await;
    let bad = env.token(&mut con, 0).await.unwrap();
    env.admin.revoke_tokens(&appid);
    // Past min_interval since the first fetch.
    tokio::time::sleep(Duration::from_millis(600)).await;

    // The README's two commands, as a PHP or Python server would send them.
    let keys = env.keys(&env.creds[0].id);
    let _: () = redis::cmd("SET")
        .arg(keys.refresh_request(Kind::AccessToken))
        .arg(&bad)
        .arg("PX")
        .arg(600_000)
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("PUBLISH")
        .arg(wxtoken_schema::requests_channel("wxtoken"))
        .arg(keys.member(Kind::AccessToken))
        .query_async(&mut con)
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the token is replaced", || {
        let (env, mut con, bad) = (&env, con.clone(), bad.clone());
        async move { env.token(&mut con, 0).await.is_some_and(|t| t != bad) }
    })
    .await;
    let fresh = env.token(&mut con, 0).await.unwrap();
    let http = reqwest::Client::new();
    assert_eq!(
        business_call(&http, &env.sim.base_url(), &fresh).await,
        Ok(())
    );
    assert_eq!(issued(&env.admin.fetches(&appid, Endpoint::Token)), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_cannot_force_and_operator_forces_are_spaced() {
    let force_gap = Duration::from_millis(1500);
    let env = Env::start(Setup {
        force_min_interval: Some(force_gap),
        ..setup()
    })
    .await;
    let appid = env.creds[0].appid.clone();
    let _replicas = env.spawn_replicas(3);
    env.wait_all_stored(Duration::from_secs(10)).await;
    let mut con = env.redis_con().await;
    let keys = env.keys(&env.creds[0].id);

    // A business server writes `*` into the request key and publishes, in a
    // loop, as the old README allowed: no WeChat call, the token stays.
    let before = env.token(&mut con, 0).await.unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let _: () = redis::pipe()
            .cmd("SET")
            .arg(keys.refresh_request(Kind::AccessToken))
            .arg(wxtoken_schema::FORCE_REQUEST)
            .arg("PX")
            .arg(600_000)
            .ignore()
            .cmd("PUBLISH")
            .arg(wxtoken_schema::requests_channel("wxtoken"))
            .arg(keys.member(Kind::AccessToken))
            .ignore()
            .query_async(&mut con)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(issued(&env.admin.fetches(&appid, Endpoint::Token)), 1);
    assert_eq!(env.token(&mut con, 0).await, Some(before));

    // An operator forces twice in a row: two refreshes, at least
    // force_min_interval apart.
    for _ in 0..2 {
        assert_eq!(
            report(&env, wxtoken_schema::FORCE_REQUEST).await,
            RequestOutcome::Requested
        );
        let n = issued(&env.admin.fetches(&appid, Endpoint::Token));
        eventually(Duration::from_secs(10), "the force is served", || async {
            issued(&env.admin.fetches(&appid, Endpoint::Token)) > n
        })
        .await;
    }
    let times: Vec<u64> = env
        .admin
        .fetches(&appid, Endpoint::Token)
        .iter()
        .map(|f| f.since_start_ms)
        .collect();
    assert_eq!(times.len(), 3, "{times:?}");
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= force_gap.as_millis() as u64 - 50,
            "forced refreshes {} ms apart: {times:?}",
            pair[1] - pair[0]
        );
    }
}
