//! Redis behind Sentinel: three replicas and a client find the primary
//! through three sentinels (`redis+sentinel://…/wxmaster`), and follow a
//! failover: the primary is killed, the sentinels promote its replica, and
//! the replicas' connections (and event subscriptions) move to it.
//!
//! Measured, not just asserted: the lapse a plain `GET` reader sees (about
//! the failover time), the WeChat calls per credential over the run (one
//! per refresh, plus at most one for a lease the failover cut short: the
//! replication is asynchronous, see ARCHITECTURE.md).

use crate::common::{Env, Setup};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use wxtoken_client::{Client, Options};
use wxtoken_schema::{CredentialKeys, Kind};
use wxtoken_sim::Endpoint;
use wxtoken_testkit::SentinelSet;

const N: usize = 20;

async fn primary_con(set: &SentinelSet) -> Option<redis::aio::MultiplexedConnection> {
    let addr = set.primary().ok()?;
    redis::Client::open(format!("redis://{addr}"))
        .ok()?
        .get_multiplexed_async_connection()
        .await
        .ok()
}

/// Every credential's stored access token on the current primary (`None`
/// while it cannot be read).
async fn tokens(set: &SentinelSet, env: &Env) -> Option<Vec<Option<String>>> {
    let mut con = primary_con(set).await?;
    let keys: Vec<String> = env
        .creds
        .iter()
        .map(|c| {
            CredentialKeys::new("wxtoken", &c.id)
                .unwrap()
                .value(Kind::AccessToken)
        })
        .collect();
    redis::cmd("MGET")
        .arg(&keys)
        .query_async(&mut con)
        .await
        .ok()
}

fn calls(env: &Env) -> HashMap<String, u64> {
    env.creds
        .iter()
        .map(|c| {
            let n = env
                .admin
                .app_counts(&c.appid)
                .and_then(|f| f.of(Endpoint::Token).map(|c| c.issued))
                .unwrap_or(0);
            (c.id.clone(), n)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_and_clients_follow_a_sentinel_failover() {
    let mut set = SentinelSet::start("wxmaster").expect("redis-server is needed (with --sentinel)");
    let env = Env::start(Setup {
        credentials: N,
        lifetime: Duration::from_secs(10),
        overlap: Duration::from_secs(3),
        margin: Duration::from_secs(3),
        ..Setup::default()
    })
    .await;
    let url = format!("redis+sentinel://{}/wxmaster", set.sentinel_list());
    let replicas: Vec<_> = (1..=3)
        .map(|r| env.spawn_replica(&format!("replica-{r}"), Some(&url)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokens(&set, &env)
            .await
            .is_some_and(|t| t.iter().all(Option::is_some))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not filled through Sentinel:\n{}",
            replicas[0].logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = Client::connect(&url, Options::default())
        .await
        .expect("the client connects through the sentinels");
    let id = env.creds[0].id.clone();
    assert!(client.access_token(&id).await.is_ok());

    // Kill the primary; the sentinels promote the replica.
    let killed_at = Instant::now();
    let old = set.kill_primary().unwrap();
    let new = set
        .wait_failover(old, Duration::from_secs(30))
        .expect("failover");
    println!("failover: {old} -> {new} in {:?}", killed_at.elapsed());

    // Three lifetimes after the failover: every token is stored and valid at
    // WeChat whenever we look, once the replicas have moved.
    let mut lapse = Duration::ZERO;
    let mut last_ok = Instant::now();
    let until = Instant::now() + Duration::from_secs(30);
    let mut client_errors = 0;
    while Instant::now() < until {
        let ok = match tokens(&set, &env).await {
            Some(t) => t.iter().all(|t| {
                t.as_deref()
                    .is_some_and(|t| env.admin.check_token(t).is_ok())
            }),
            None => false,
        };
        if ok {
            last_ok = Instant::now();
        } else {
            lapse = lapse.max(last_ok.elapsed());
        }
        if client.access_token(&id).await.is_err() {
            client_errors += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "plain GET reader lapse after the failover: {lapse:?}; client read errors: {client_errors}"
    );
    let final_tokens = tokens(&set, &env).await.expect("the new primary answers");
    for (c, t) in env.creds.iter().zip(&final_tokens) {
        let t = t.as_ref().unwrap_or_else(|| {
            panic!(
                "{} has no token after the failover:\n{}",
                c.id,
                replicas[0].logs()
            )
        });
        assert_eq!(env.admin.check_token(t), Ok(()), "{}", c.id);
    }
    assert!(
        lapse < Duration::from_secs(20),
        "tokens missing or invalid for {lapse:?}"
    );
    // The operator's commands find the new primary through the sentinels.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxtoken"))
        .args(["get", &id, "--redis-url", &url])
        .env_remove("WXTOKEN_REDIS_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        env.admin.check_token(&printed),
        Ok(()),
        "wxtoken get through Sentinel"
    );
    // The replicas said they followed the primary.
    assert!(
        replicas
            .iter()
            .any(|r| r.logs().contains("Redis Sentinel names a new primary")),
        "{}",
        replicas[0].logs()
    );
    assert_eq!(
        client_errors, 0,
        "the client serves its cache through the failover"
    );
    // One call per refresh: over ~6 lifetimes each credential was fetched
    // about 6-9 times; a failover cuts short at most one lease each.
    let per_cred = calls(&env);
    let total: u64 = per_cred.values().sum();
    println!("WeChat token calls: {total} for {N} credentials");
    for (id, n) in &per_cred {
        assert!(*n <= 14, "{id}: {n} calls in ~60 s at a 10 s lifetime");
    }
}
