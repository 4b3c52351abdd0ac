//! The operator's commands as real processes against a real Redis, the
//! simulator and real `wxtoken run` replicas: `status` (table, JSON, exit
//! codes, faults), `refresh` (exactly one more fetch, durable pending
//! requests, timeout) and `get`; none of them ever prints a Redis password.

mod common;

use common::{eventually, Env, Setup};
use std::time::Duration;
use wxtoken_schema::{status, Kind};
use wxtoken_sim::Endpoint;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary (without a runtime-blocking wait: the simulator serves
/// replicas from this test's runtime meanwhile).
async fn wxtoken(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxtoken"));
    cmd.args(args)
        .env_remove("WXTOKEN_REDIS_URL")
        .env_remove("WXTOKEN_CONFIG")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("wxtoken {args:?} did not exit within 60s"))
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Long-lived tokens: nothing is refreshed during a test unless asked for.
fn long_lived(credentials: usize) -> Setup {
    Setup {
        credentials,
        lifetime: Duration::from_secs(120),
        overlap: Duration::from_secs(5),
        ..Setup::default()
    }
}

fn token_fetches(env: &Env, i: usize) -> usize {
    env.admin
        .fetches(&env.creds[i].appid, Endpoint::Token)
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_credentials_and_reports_faults() {
    let env = Env::start(Setup {
        credentials: 2,
        tickets: true,
        ..Setup::default()
    })
    .await;
    let url = env.redis.url();

    // Nothing registered yet: unhealthy, and an empty JSON array.
    let out = wxtoken(&["status", "--redis-url", &url], &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("no credentials"), "{}", out.stderr);
    let out = wxtoken(&["status", "--json", "--redis-url", &url], &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "[]");

    // --config supplies the URL and the expected credentials; it needs the
    // secrets like `run` does.
    let config = env.dir.path().join("ops.toml");
    std::fs::write(&config, env.config_text(&url)).unwrap();
    let config = config.to_str().unwrap();
    let secrets: Vec<(String, String)> = env
        .creds
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("WXT_SECRET_{i}"), c.secret.clone()))
        .collect();
    let secrets: Vec<(&str, &str)> = secrets
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let out = wxtoken(&["status", "--json", "--config", config], &secrets).await;
    assert_eq!(
        out.code, 3,
        "configured but never refreshed: {}",
        out.stderr
    );
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc.as_array().unwrap().len(), 2, "{doc}");
    assert_eq!(doc[0]["configured"], true);
    assert_eq!(doc[0]["registered"], false);
    assert_eq!(doc[0]["kinds"][1]["kind"], "jsapi_ticket", "{doc}");
    assert!(doc[0]["problems"][0]
        .as_str()
        .unwrap()
        .contains("no access_token stored"));
    let out = wxtoken(&["status", "--config", config], &[]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("WXT_SECRET_0 is not set") && out.stderr.contains(config),
        "{}",
        out.stderr
    );

    let _r = env.spawn_replica("replica-1", None);
    env.wait_all_stored(Duration::from_secs(10)).await;

    let out = wxtoken(&["status", "--redis-url", &url], &[]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for c in &env.creds {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{} ", c.id)))
            .unwrap_or_else(|| panic!("{} not listed:\n{}", c.id, out.stdout));
        for want in [
            "access_token",
            "classic",
            &c.appid,
            "left",
            "replica-1",
            "ok",
        ] {
            assert!(line.contains(want), "{want:?} missing from {line:?}");
        }
    }
    assert_eq!(
        out.stdout.matches("jsapi_ticket").count(),
        2,
        "{}",
        out.stdout
    );
    assert!(out.stdout.lines().next().unwrap().starts_with("CREDENTIAL"));

    let out = wxtoken(&["status", "--json", "--config", config], &secrets).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let creds = doc.as_array().unwrap();
    assert_eq!(creds.len(), 2);
    for (c, want) in creds.iter().zip(&env.creds) {
        assert_eq!(c["id"], want.id.as_str());
        assert_eq!(c["appid"], want.appid.as_str());
        assert_eq!(c["mode"], "classic");
        assert_eq!(c["healthy"], true, "{c}");
        assert_eq!(c["registered"], true);
        assert_eq!(c["configured"], true);
        assert!(c["problems"].as_array().unwrap().is_empty());
        assert!(c["last_ok_at_ms"].as_u64().is_some());
        for field in [
            "last_error",
            "last_errcode",
            "last_error_at_ms",
            "paused_until_ms",
        ] {
            assert!(c[field].is_null(), "{field}: {c}");
        }
        assert_eq!(c["paused"], false);
        assert_eq!(c["status_replica"], "replica-1");
        let kinds = c["kinds"].as_array().unwrap();
        assert_eq!(kinds.len(), 2);
        for (k, name) in kinds.iter().zip(["access_token", "jsapi_ticket"]) {
            assert_eq!(k["kind"], name);
            assert_eq!(k["stored"], true);
            assert!(k["ttl_ms"].as_u64().is_some_and(|t| t > 0), "{k}");
            for field in ["expires_at_ms", "expires_in", "refreshed_at_ms", "fence"] {
                assert!(k[field].as_u64().is_some(), "{field}: {k}");
            }
            assert_eq!(k["replica"], "replica-1");
            assert!(k["refresh_request"].is_null());
        }
    }

    // WeChat refuses app-0's server IP: the next refresh records 40164.
    env.admin.set_ip_whitelisted(&env.creds[0].appid, false);
    let con = env.redis_con().await;
    let status_key = env.keys(&env.creds[0].id).status();
    eventually(Duration::from_secs(15), "errcode 40164 recorded", || {
        let mut con = con.clone();
        let key = status_key.clone();
        async move {
            let code: Option<String> = redis::cmd("HGET")
                .arg(key)
                .arg(status::LAST_ERRCODE)
                .query_async(&mut con)
                .await
                .expect("redis");
            code.as_deref() == Some("40164")
        }
    })
    .await;
    let out = wxtoken(&["status", "--redis-url", &url], &[]).await;
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("app-0 "))
        .unwrap();
    assert!(line.contains("error 40164"), "{}", out.stdout);
    assert!(
        out.stdout.contains("app-0: last error") && out.stdout.contains("errcode 40164"),
        "{}",
        out.stdout
    );
    let out = wxtoken(&["status", "--json", "--redis-url", &url], &[]).await;
    assert_eq!(out.code, 3);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc[0]["healthy"], false);
    assert_eq!(doc[0]["last_errcode"], 40164);
    assert!(doc[0]["last_error"].as_str().is_some());
    assert_eq!(doc[1]["healthy"], true, "{}", doc[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_is_named_without_its_password() {
    let url = "redis://:hunter2@127.0.0.1:1";
    let cases: [&[&str]; 4] = [
        &["status"],
        &["status", "--json"],
        &["refresh", "app-0", "--wait", "0"],
        &["get", "app-0"],
    ];
    for args in cases {
        for via_env in [false, true] {
            let mut argv = args.to_vec();
            let mut envs = Vec::new();
            if via_env {
                envs.push(("WXTOKEN_REDIS_URL", url));
            } else {
                argv.extend(["--redis-url", url]);
            }
            let out = wxtoken(&argv, &envs).await;
            assert_eq!(out.code, 1, "{argv:?}: {}", out.stderr);
            assert!(
                out.stderr.contains("redis://:***@127.0.0.1:1"),
                "{argv:?}: {}",
                out.stderr
            );
            assert!(
                !out.stderr.contains("hunter2") && !out.stdout.contains("hunter2"),
                "{argv:?} leaked the password"
            );
        }
    }
    let out = wxtoken(&["status", "--help"], &[("WXTOKEN_REDIS_URL", url)]).await;
    assert_eq!(out.code, 0);
    assert!(!out.stdout.contains("hunter2"), "{}", out.stdout);
    // Usage errors are clap's.
    assert_eq!(wxtoken(&["refresh"], &[]).await.code, 2);
    assert_eq!(
        wxtoken(&["refresh", "app-0", "--kind", "nope"], &[])
            .await
            .code,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_replaces_the_token_with_exactly_one_fetch() {
    let env = Env::start(long_lived(1)).await;
    let url = env.redis.url();
    let _r1 = env.spawn_replica("replica-1", None);
    let _r2 = env.spawn_replica("replica-2", None);
    env.wait_all_stored(Duration::from_secs(10)).await;
    let mut con = env.redis_con().await;
    let before = env.token(&mut con, 0).await.unwrap();
    let fetches = token_fetches(&env, 0);

    let out = wxtoken(
        &[
            "refresh",
            "app-0",
            "--force",
            "--wait",
            "15s",
            "--redis-url",
            &url,
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let after = env.token(&mut con, 0).await.unwrap();
    assert_ne!(after, before);
    let prefix: String = after.chars().take(8).collect();
    assert!(
        out.stdout.contains(&prefix) && out.stdout.contains("fence"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(&after) && !out.stderr.contains(&after));
    assert!(!out.stdout.contains(&before) && !out.stderr.contains(&before));
    // Both replicas saw the request; one of them served it, once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(token_fetches(&env, 0), fetches + 1);
    let pending: bool = redis::cmd("EXISTS")
        .arg(env.keys("app-0").refresh_request(Kind::AccessToken))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!pending, "the write answers the request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_a_refresher_and_is_served_when_one_starts() {
    let env = Env::start(long_lived(1)).await;
    let url = env.redis.url();
    let mut r1 = env.spawn_replica("replica-1", None);
    env.wait_all_stored(Duration::from_secs(10)).await;
    r1.terminate(Duration::from_secs(10));
    let mut con = env.redis_con().await;
    let before = env.token(&mut con, 0).await.unwrap();
    let request_key = env.keys("app-0").refresh_request(Kind::AccessToken);

    let out = wxtoken(
        &["refresh", "app-0", "--wait", "0", "--redis-url", &url],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("10 minutes"), "{}", out.stdout);
    // Not forced: the request names the token it wants replaced.
    let (request, ttl): (Option<String>, i64) = redis::pipe()
        .get(&request_key)
        .pttl(&request_key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(request.as_deref(), Some(before.as_str()));
    assert!(ttl > 0 && ttl <= 600_000, "{ttl}");

    // Nobody serves it within the wait: exit 4, still pending.
    let out = wxtoken(
        &["refresh", "app-0", "--wait", "1s", "--redis-url", &url],
        &[],
    )
    .await;
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("pending for 10 minutes") && out.stderr.contains("refresher"),
        "{}",
        out.stderr
    );
    let out = wxtoken(&["status", "--json", "--redis-url", &url], &[]).await;
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        doc[0]["kinds"][0]["refresh_request"]["force"], false,
        "{doc}"
    );
    assert_eq!(token_fetches(&env, 0), 1);

    // A replica starting later serves it.
    let _r2 = env.spawn_replica("replica-2", None);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if env.token(&mut con, 0).await.is_some_and(|t| t != before) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pending request was not served within 30s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(token_fetches(&env, 0), 2);
    let pending: bool = redis::cmd("EXISTS")
        .arg(&request_key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prints_exactly_the_stored_token() {
    let env = Env::start(long_lived(1)).await;
    let url = env.redis.url();
    let _r = env.spawn_replica("replica-1", None);
    env.wait_all_stored(Duration::from_secs(10)).await;
    let mut con = env.redis_con().await;
    let token = env.token(&mut con, 0).await.unwrap();

    let out = wxtoken(&["get", "app-0", "--redis-url", &url], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, format!("{token}\n"));
    let out = wxtoken(&["get", "app-0"], &[("WXTOKEN_REDIS_URL", &url)]).await;
    assert_eq!(out.stdout, format!("{token}\n"));

    let out = wxtoken(&["get", "nope", "--redis-url", &url], &[]).await;
    assert_eq!(out.code, 1);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("wxtoken:{nope}:access_token"),
        "{}",
        out.stderr
    );
    let out = wxtoken(
        &[
            "get",
            "app-0",
            "--kind",
            "jsapi_ticket",
            "--redis-url",
            &url,
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("wxtoken:{app-0}:jsapi_ticket"),
        "{}",
        out.stderr
    );
    let out = wxtoken(
        &["get", "app-0", "--namespace", "other", "--redis-url", &url],
        &[],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("other:{app-0}:access_token"));
}
