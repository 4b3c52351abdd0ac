//! The refresher's start-up checks of the Redis settings, against real
//! redis-servers started with the risky settings:
//! - `--maxmemory-policy allkeys-lru`: a warning, and the replica runs; with
//!   `redis.checks = "refuse"` it does not start;
//! - persistence off (`--appendonly no --save ""`, the testkit default)
//!   while `[[component]]` keeps durable state: a warning, or a refusal;
//!   `--appendonly yes` is fine;
//! - a least-privilege ACL user (refused `CONFIG` and `INFO`): one line says
//!   the settings could not be checked, and the replica runs.

use crate::common::{Env, Replica, Setup};
use std::time::Duration;
use wxtoken_testkit::RedisServer;

fn setup() -> Setup {
    Setup {
        credentials: 1,
        lifetime: Duration::from_secs(60),
        ..Setup::default()
    }
}

const COMPONENT: &str = "\n[[component]]\nid = \"platform\"\nappid = \"wxcomponent00000001\"\n\
    secret_env = \"WXT_C_SECRET\"\ntoken_env = \"WXT_C_TOKEN\"\nencoding_aes_key_env = \"WXT_C_KEY\"\n";

fn spawn(env: &Env, name: &str, redis_extra: &str, component: bool) -> Replica {
    let mut config = env.config_text_with(&env.redis.url(), redis_extra);
    if component {
        config.push_str(COMPONENT);
    }
    env.spawn_replica_config(
        name,
        &config,
        &[
            ("WXT_C_SECRET", "csecret0123456789abcdef0123456789"),
            ("WXT_C_TOKEN", "ctoken0123456789"),
            ("WXT_C_KEY", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"),
        ],
    )
}

/// Waits until the replica logged `what` (or fails with its log).
async fn logged(replica: &Replica, what: &str) {
    crate::common::eventually(Duration::from_secs(10), what, || async {
        replica.logs().contains(what)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_policy_warns_or_refuses() {
    let server = RedisServer::start_with_args(&["--maxmemory-policy", "allkeys-lru"])
        .expect("redis-server is needed for the tests");
    let env = Env::start_with_redis(setup(), server).await;

    let warned = spawn(&env, "replica-1", "", false);
    env.wait_all_stored(Duration::from_secs(15)).await;
    logged(&warned, "maxmemory-policy is allkeys-lru").await;
    assert!(
        warned.logs().contains("set maxmemory-policy noeviction"),
        "{}",
        warned.logs()
    );

    let mut refused = spawn(&env, "replica-2", "checks = \"refuse\"\n", false);
    let code = refused.wait_exit(Duration::from_secs(15));
    let log = refused.logs();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(
            "refusing to start (redis.checks = \"refuse\"): maxmemory-policy is allkeys-lru"
        ),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistence_off_with_durable_state_warns_or_refuses() {
    // The testkit default: --appendonly no --save "".
    let env = Env::start(setup()).await;
    let plain = spawn(&env, "replica-1", "", false);
    env.wait_all_stored(Duration::from_secs(15)).await;
    let warned = spawn(&env, "replica-2", "", true);
    logged(&warned, "Redis persistence is off").await;
    // Tokens alone can be fetched again: no warning without [[component]].
    assert!(
        !plain.logs().contains("persistence is off"),
        "{}",
        plain.logs()
    );
    let mut refused = spawn(&env, "replica-3", "checks = \"refuse\"\n", true);
    let code = refused.wait_exit(Duration::from_secs(15));
    let log = refused.logs();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("refusing to start"), "{log}");
    assert!(log.contains("persistence is off"), "{log}");

    // With AOF on, the same replica starts without a finding.
    let server = RedisServer::start_with_args(&["--appendonly", "yes"]).unwrap();
    let env = Env::start_with_redis(setup(), server).await;
    let ok = spawn(&env, "replica-1", "checks = \"refuse\"\n", true);
    env.wait_all_stored(Duration::from_secs(15)).await;
    logged(&ok, "Redis settings checked").await;
    assert!(!ok.logs().contains("persistence is off"), "{}", ok.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_refused_config_and_info_gets_one_line_and_runs() {
    let server = RedisServer::start_with_args(&["--maxmemory-policy", "allkeys-lru"])
        .expect("redis-server is needed for the tests");
    let env = Env::start_with_redis(setup(), server).await;
    let mut con = env.redis_con().await;
    // The README's refresher rule (no @dangerous: no CONFIG, no INFO).
    let rule = "on >refresher-pw resetkeys ~wxtoken:* resetchannels &wxtoken:events &wxtoken:requests -@all +@read +@write +@scripting +@pubsub +@connection +@transaction +time +scan -@dangerous";
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg("refresher");
    for word in rule.split_whitespace() {
        cmd.arg(word);
    }
    let () = cmd.query_async(&mut con).await.unwrap();
    let url = env
        .redis
        .url()
        .replacen("redis://", "redis://refresher:refresher-pw@", 1);
    let config = env.config_text_with(&url, "checks = \"refuse\"\n");
    let replica = env.spawn_replica_config("replica-1", &config, &[]);
    env.wait_all_stored(Duration::from_secs(15)).await;
    logged(&replica, "could not check the Redis settings").await;
    let log = replica.logs();
    assert_eq!(
        log.matches("could not check the Redis settings").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("refresher-pw"), "{log}");
}
