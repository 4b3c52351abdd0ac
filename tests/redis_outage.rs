//! Redis trouble: restarted empty, or down for a while. Replicas keep running
//! and every token is back within seconds of Redis returning.

mod common;

use common::{Env, Setup};
use std::time::{Duration, Instant};

fn setup() -> Setup {
    Setup {
        credentials: 5,
        tickets: true,
        lifetime: Duration::from_secs(30),
        ..Setup::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_is_refilled_within_seconds() {
    let mut env = Env::start(setup()).await;
    let mut replicas: Vec<_> = (1..=3)
        .map(|r| env.spawn_replica(&format!("replica-{r}"), None))
        .collect();
    env.wait_all_stored(Duration::from_secs(10)).await;

    env.redis.restart().unwrap();
    let back = Instant::now();
    env.wait_all_stored(Duration::from_secs(8)).await;
    println!("refilled {:?} after an empty restart", back.elapsed());
    let mut con = env.redis_con().await;
    for i in 0..env.creds.len() {
        let t = env.token(&mut con, i).await.unwrap();
        assert_eq!(env.admin.check_token(&t), Ok(()));
    }
    for r in &mut replicas {
        assert_eq!(
            r.terminate(Duration::from_secs(10)),
            Some(0),
            "{} died",
            r.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_for_a_while_then_back() {
    let mut env = Env::start(setup()).await;
    let mut replicas: Vec<_> = (1..=3)
        .map(|r| env.spawn_replica(&format!("replica-{r}"), None))
        .collect();
    env.wait_all_stored(Duration::from_secs(10)).await;

    env.redis.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    env.redis.restart().unwrap();
    let back = Instant::now();
    env.wait_all_stored(Duration::from_secs(10)).await;
    println!("refilled {:?} after a 4 s outage", back.elapsed());
    let mut con = env.redis_con().await;
    for i in 0..env.creds.len() {
        let t = env.token(&mut con, i).await.unwrap();
        assert_eq!(env.admin.check_token(&t), Ok(()));
    }
    for r in &mut replicas {
        assert_eq!(
            r.terminate(Duration::from_secs(10)),
            Some(0),
            "{} died",
            r.name
        );
    }
}
