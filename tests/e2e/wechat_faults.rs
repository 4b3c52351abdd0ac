//! WeChat misbehaving: bursts of -1, HTTP 5xx, garbage, truncated bodies and
//! hangs never replace the good token, are retried with growing backoff, and
//! refresh resumes when they clear; 45009 pauses the credential; 40164 is a
//! configuration fault: logged loudly once, shown in status, retried slowly.

use crate::common::{eventually, Env, Setup};
use std::time::{Duration, Instant};
use wxtoken_schema::status;
use wxtoken_sim::{Endpoint, Fault, FaultKind, FetchOutcome};

fn setup() -> Setup {
    Setup {
        credentials: 1,
        lifetime: Duration::from_secs(10),
        overlap: Duration::from_secs(5),
        margin: Duration::from_secs(8),
        max_margin_fraction: 0.8,
        jitter: Duration::ZERO,
        lock_ttl: Duration::from_secs(2),
        request_timeout: Duration::from_millis(700),
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(800),
        ..Setup::default()
    }
}

async fn status_field(
    env: &Env,
    con: &mut redis::aio::MultiplexedConnection,
    field: &str,
) -> Option<String> {
    redis::cmd("HGET")
        .arg(env.keys(&env.creds[0].id).status())
        .arg(field)
        .query_async(con)
        .await
        .expect("redis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_keep_the_good_token_back_off_and_recover() {
    let env = Env::start(setup()).await;
    let appid = env.creds[0].appid.clone();
    // Three replicas: the backoff is shared through Redis, so the retries
    // below are spaced as if one replica made them all.
    let _replicas = env.spawn_replicas(3);
    env.wait_all_stored(Duration::from_secs(10)).await;
    let mut con = env.redis_con().await;
    let good = env.token(&mut con, 0).await.unwrap();

    // Due again 2 s after the first fetch; then WeChat misbehaves 8 times.
    let faults = [
        FaultKind::Errcode { errcode: -1 },
        FaultKind::Errcode { errcode: -1 },
        FaultKind::Errcode { errcode: -1 },
        FaultKind::HttpStatus { status: 502 },
        FaultKind::HttpStatus { status: 503 },
        FaultKind::Garbage,
        FaultKind::Truncated,
        FaultKind::Hang,
    ];
    for kind in &faults {
        env.admin.inject(
            &appid,
            Fault::new(kind.clone()).on(Endpoint::Token).times(1),
        );
    }

    // The good token stays until a good reply replaces it.
    let deadline = Instant::now() + Duration::from_secs(9);
    let replacement = loop {
        let now = env
            .token(&mut con, 0)
            .await
            .expect("token lapsed during faults");
        if now != good {
            break now;
        }
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(env.admin.check_token(&replacement), Ok(()));

    let fetches = env.admin.fetches(&appid, Endpoint::Token);
    assert_eq!(fetches.len(), 1 + faults.len() + 1, "{fetches:#?}");
    assert!(matches!(
        fetches.last().unwrap().outcome,
        FetchOutcome::Issued { .. }
    ));
    // Backoff: the pause after the k-th failure is ≥ half of 100 ms·2^(k−1), capped at 800 ms.
    let attempts: Vec<u64> = fetches[1..].iter().map(|f| f.since_start_ms).collect();
    for (k, pair) in attempts.windows(2).enumerate().take(5) {
        let floor = (100u64 << k).min(800) / 2;
        let gap = pair[1] - pair[0];
        assert!(
            gap >= floor,
            "retry {} after {gap} ms, backoff floor {floor} ms: {attempts:?}",
            k + 1
        );
    }
    // ...and it grows: the later retries wait longer than the first.
    assert!(
        attempts[4] - attempts[3] > attempts[1] - attempts[0],
        "{attempts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_exhaustion_pauses_the_credential() {
    let env = Env::start(Setup {
        quota_pause: Duration::from_secs(3),
        ..setup()
    })
    .await;
    let appid = env.creds[0].appid.clone();
    // Three replicas: the pause is recorded in Redis and every one honours it.
    let replicas = env.spawn_replicas(3);
    env.wait_all_stored(Duration::from_secs(10)).await;
    let mut con = env.redis_con().await;
    let good = env.token(&mut con, 0).await.unwrap();
    env.admin.set_quota_used(&appid, Endpoint::Token, 2000);

    eventually(Duration::from_secs(6), "45009 recorded in status", || {
        let (env, mut con) = (&env, con.clone());
        async move {
            status_field(env, &mut con, status::LAST_ERRCODE)
                .await
                .as_deref()
                == Some("45009")
        }
    })
    .await;
    assert!(status_field(&env, &mut con, status::PAUSED_UNTIL_MS)
        .await
        .is_some());
    let calls_at_pause = env.admin.fetches(&appid, Endpoint::Token).len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.admin.fetches(&appid, Endpoint::Token).len(),
        calls_at_pause,
        "called WeChat during the pause"
    );
    assert_eq!(env.token(&mut con, 0).await.as_deref(), Some(good.as_str()));

    env.admin.reset_quota(&appid);
    eventually(
        Duration::from_secs(6),
        "refresh resumes after the pause",
        || {
            let (env, mut con, good) = (&env, con.clone(), good.clone());
            async move { env.token(&mut con, 0).await.is_some_and(|t| t != good) }
        },
    )
    .await;
    assert_eq!(
        status_field(&env, &mut con, status::PAUSED_UNTIL_MS).await,
        None
    );
    // One 45009 for three replicas: the pause was shared, not rediscovered.
    let refusals = env
        .admin
        .fetches(&appid, Endpoint::Token)
        .iter()
        .filter(|f| matches!(f.outcome, FetchOutcome::Error { errcode: 45009 }))
        .count();
    assert_eq!(
        refusals, 1,
        "each replica hit the exhausted quota on its own"
    );
    assert!(replicas
        .iter()
        .any(|r| r.logs().contains("daily API quota exhausted")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_whitelist_refusal_is_a_loud_slow_retried_configuration_fault() {
    let env = Env::start(Setup {
        config_error_retry: Duration::from_secs(2),
        ..setup()
    })
    .await;
    let appid = env.creds[0].appid.clone();
    env.admin.set_ip_whitelisted(&appid, false);
    let r = env.spawn_replica("replica-1", None);
    let con = env.redis_con().await;
    eventually(Duration::from_secs(6), "40164 recorded in status", || {
        let (env, mut con) = (&env, con.clone());
        async move {
            status_field(env, &mut con, status::LAST_ERRCODE)
                .await
                .as_deref()
                == Some("40164")
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    // Slow retry: about every 2 s, not a tight loop. The first call, then
    // two or three retries in the 4.5 s (more if the 40164 was noticed
    // late); transient-fault backoff (≤ 800 ms) would make 7 or more, a
    // tight loop dozens.
    let calls = env.admin.fetches(&appid, Endpoint::Token).len();
    assert!((2..=5).contains(&calls), "{calls} calls in ~5 s");
    let logs = r.logs();
    assert_eq!(logs.matches("CONFIGURATION FAULT").count(), 1, "{logs}");
    assert!(!logs.contains(&env.creds[0].secret));

    env.admin.set_ip_whitelisted(&appid, true);
    env.wait_all_stored(Duration::from_secs(5)).await;
    eventually(Duration::from_secs(3), "error cleared from status", || {
        let (env, mut con) = (&env, con.clone());
        async move {
            status_field(env, &mut con, status::LAST_ERROR)
                .await
                .is_none()
        }
    })
    .await;
}

/// `wxtoken status` against the test Redis: (stdout, stderr), table and JSON.
fn status_outputs(env: &Env) -> String {
    let mut all = String::new();
    for extra in [&[][..], &["--json"][..]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wxtoken"))
            .args(["status", "--redis-url", &env.redis.url()])
            .args(extra)
            .env_remove("WXTOKEN_REDIS_URL")
            .output()
            .expect("running wxtoken status");
        all.push_str(&String::from_utf8_lossy(&out.stdout));
        all.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_echoing_the_secret_is_recorded_scrubbed() {
    let env = Env::start(setup()).await;
    let appid = env.creds[0].appid.clone();
    let secret = env.creds[0].secret.clone();
    // A careless proxy: every token call is answered with errcode -1 and the
    // request URL, AppSecret included, in errmsg.
    env.admin
        .inject(&appid, Fault::new(FaultKind::EchoUrl).on(Endpoint::Token));
    let r = env.spawn_replica("replica-1", None);
    let mut con = env.redis_con().await;
    eventually(
        Duration::from_secs(6),
        "the echoing answer recorded in status",
        || {
            let (env, mut con) = (&env, con.clone());
            async move {
                status_field(env, &mut con, status::LAST_ERROR)
                    .await
                    .is_some_and(|e| e.contains("request: GET /cgi-bin/token"))
            }
        },
    )
    .await;
    // Several attempts, so the text went through every path that records it.
    eventually(Duration::from_secs(6), "three echoing answers", || {
        let n = env.admin.fetches(&appid, Endpoint::Token).len();
        async move { n >= 3 }
    })
    .await;
    let last_error = status_field(&env, &mut con, status::LAST_ERROR)
        .await
        .unwrap();
    assert!(
        last_error.contains("errcode -1") && last_error.contains("secret=***"),
        "{last_error}"
    );
    let hash: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(env.keys(&env.creds[0].id).status())
        .query_async(&mut con)
        .await
        .unwrap();
    for (field, value) in &hash {
        assert!(!value.contains(&secret), "status field {field}: {value}");
    }
    let status = status_outputs(&env);
    assert!(status.contains("secret=***"), "{status}");
    assert!(!status.contains(&secret), "{status}");
    let logs = r.logs();
    assert!(logs.contains("secret=***"), "{logs}");
    assert!(!logs.contains(&secret), "the secret was logged: {logs}");

    // The error is real and recorded; once WeChat answers properly, refresh works.
    env.admin.clear_faults(&appid);
    env.wait_all_stored(Duration::from_secs(5)).await;
}
