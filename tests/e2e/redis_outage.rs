//! Redis trouble: restarted empty, or down for a while. Replicas keep running
//! and every token is back within seconds of Redis returning.

use crate::common::{Env, Replica, Setup};
use std::time::{Duration, Instant};
use wxtoken_sim::{Endpoint, FetchOutcome};

async fn three_replicas_with_tokens() -> (Env, Vec<Replica>) {
    let env = Env::start(Setup {
        credentials: 5,
        tickets: true,
        lifetime: Duration::from_secs(30),
        ..Setup::default()
    })
    .await;
    let replicas = env.spawn_replicas(3);
    env.wait_all_stored(Duration::from_secs(10)).await;
    (env, replicas)
}

/// WeChat calls so far that issued a token or ticket, per app.
fn issued(env: &Env) -> Vec<usize> {
    env.creds
        .iter()
        .map(|c| {
            [Endpoint::Token, Endpoint::Ticket]
                .into_iter()
                .flat_map(|e| env.admin.fetches(&c.appid, e))
                .filter(|f| matches!(f.outcome, FetchOutcome::Issued { .. }))
                .count()
        })
        .collect()
}

/// Every token is back and valid within `limit`, each value was fetched
/// exactly once more (three replicas, one caller), and every replica is
/// still alive (exits 0 on SIGTERM).
async fn all_back(
    env: &Env,
    replicas: &mut [Replica],
    before: &[usize],
    limit: Duration,
    what: &str,
) {
    let back = Instant::now();
    env.wait_all_stored(limit).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // a duplicate call would show by now
    let after = issued(env);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(
            a - b,
            2,
            "{}: token and ticket must be fetched once each, not {}",
            env.creds[i].id,
            a - b
        );
    }
    println!("refilled {:?} after {what}", back.elapsed());
    let mut con = env.redis_con().await;
    for i in 0..env.creds.len() {
        let t = env.token(&mut con, i).await.unwrap();
        assert_eq!(env.admin.check_token(&t), Ok(()));
    }
    for r in replicas {
        assert_eq!(
            r.terminate(Duration::from_secs(10)),
            Some(0),
            "{} died",
            r.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_is_refilled_within_seconds() {
    let (mut env, mut replicas) = three_replicas_with_tokens().await;
    let before = issued(&env);
    env.redis.restart().unwrap();
    all_back(
        &env,
        &mut replicas,
        &before,
        Duration::from_secs(8),
        "an empty restart",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_for_a_while_then_back() {
    let (mut env, mut replicas) = three_replicas_with_tokens().await;
    let before = issued(&env);
    env.redis.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    env.redis.restart().unwrap();
    all_back(
        &env,
        &mut replicas,
        &before,
        Duration::from_secs(10),
        "a 4 s outage",
    )
    .await;
}
