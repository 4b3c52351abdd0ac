//! The client crate against real refreshers: a storm of reports from 100
//! clients costs one WeChat call and every client gets the new token; a
//! refresh reaches 100 clients' caches through the update event; with the
//! event subscription cut every 50 ms, polling and the re-read after each
//! resubscription keep them correct.

use crate::common::{eventually, Env, Setup};
use std::time::Duration;
use wxtoken_client::{Client, Kind, Options, RequestOutcome};
use wxtoken_sim::{Endpoint, FetchOutcome};

fn setup() -> Setup {
    Setup {
        credentials: 1,
        lifetime: Duration::from_secs(120),
        overlap: Duration::from_secs(5),
        min_interval: Duration::from_millis(300),
        ..Setup::default()
    }
}

async fn clients(env: &Env, n: usize, poll: Duration) -> Vec<Client> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            Client::connect(
                &env.redis.url(),
                Options::default()
                    .poll_interval(poll)
                    .wait_for_token(Duration::from_secs(5)),
            )
            .await
            .unwrap(),
        );
    }
    out
}

fn issued(env: &Env) -> usize {
    env.admin
        .fetches(&env.creds[0].appid, Endpoint::Token)
        .iter()
        .filter(|f| matches!(f.outcome, FetchOutcome::Issued { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_reports_from_100_clients_costs_one_call_and_all_get_the_new_token() {
    let env = Env::start(setup()).await;
    let id = env.creds[0].id.clone();
    let _replicas = env.spawn_replicas(3);
    let clients = clients(&env, 100, Duration::from_secs(30)).await;
    let bad = clients[0].access_token(&id).await.unwrap();
    for c in &clients {
        assert_eq!(c.access_token(&id).await.unwrap(), bad);
    }
    tokio::time::sleep(Duration::from_millis(400)).await; // past min_interval
    env.admin.revoke_tokens(&env.creds[0].appid);
    let before = issued(&env);

    // Every client sees 40001 and reports the token 10 times, then waits.
    let mut tasks = Vec::new();
    for c in &clients {
        let (c, id, bad) = (c.clone(), id.clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..10 {
                outcomes.push(c.report_invalid(&id, &bad).await.unwrap());
            }
            let new = c
                .replaced(&id, Kind::AccessToken, &bad, Duration::from_secs(10))
                .await
                .unwrap();
            (outcomes, new.value)
        }));
    }
    let mut news = std::collections::BTreeSet::new();
    let mut requested = 0;
    for t in tasks {
        let (outcomes, new) = t.await.unwrap();
        requested += outcomes
            .iter()
            .filter(|o| **o == RequestOutcome::Requested)
            .count();
        news.insert(new);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        issued(&env) - before,
        1,
        "1000 reports must cost exactly one WeChat call"
    );
    assert_eq!(news.len(), 1, "all clients got the same new token");
    let new = news.into_iter().next().unwrap();
    assert_ne!(new, bad);
    assert_eq!(env.admin.check_token(&new), Ok(()));
    assert!(requested >= 1);
    // Later reads serve the new token.
    for c in &clients {
        assert_eq!(c.access_token(&id).await.unwrap(), new);
    }
    // A late report about the replaced token changes nothing.
    assert_eq!(
        clients[7].report_invalid(&id, &bad).await.unwrap(),
        RequestOutcome::AlreadyReplaced
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_reaches_100_client_caches_even_with_the_subscription_cut_again_and_again() {
    let env = Env::start(setup()).await;
    let id = env.creds[0].id.clone();
    let _replica = env.spawn_replica("replica-1", None);
    let clients = clients(&env, 100, Duration::from_millis(300)).await;
    let first = clients[0].access_token(&id).await.unwrap();
    for c in &clients {
        assert_eq!(c.access_token(&id).await.unwrap(), first);
    }

    // 1. Through the update event.
    tokio::time::sleep(Duration::from_millis(400)).await;
    clients[0].report_invalid(&id, &first).await.unwrap();
    let second = clients[0]
        .replaced(&id, Kind::AccessToken, &first, Duration::from_secs(5))
        .await
        .unwrap()
        .value;
    eventually(Duration::from_secs(3), "all 100 caches switch", || {
        let (clients, id, second) = (&clients, &id, &second);
        async move {
            for c in clients {
                if c.access_token(id).await.unwrap() != *second {
                    return false;
                }
            }
            true
        }
    })
    .await;

    // 2. With the subscription cut every 50 ms, a refresh still reaches all of them.
    let mut con = env.redis_con().await;
    let killer = {
        let mut con = con.clone();
        tokio::spawn(async move {
            loop {
                let _: Result<i64, _> = redis::cmd("CLIENT")
                    .arg(&["KILL", "TYPE", "pubsub"])
                    .query_async(&mut con)
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = env.token(&mut con, 0).await.unwrap();
    assert_eq!(before, second);
    wxtoken_schema::request_refresh(
        &mut con,
        &env.keys(&id),
        Kind::AccessToken,
        wxtoken_schema::FORCE_REQUEST,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let mut third = None;
    for _ in 0..200 {
        match env.token(&mut con, 0).await {
            Some(t) if t != second => {
                third = Some(t);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    let third = third.expect("the forced refresh happened");
    eventually(
        Duration::from_secs(5),
        "all 100 caches switch without events",
        || {
            let (clients, id, third) = (&clients, &id, &third);
            async move {
                for c in clients {
                    if c.access_token(id).await.unwrap() != *third {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    killer.abort();
}
