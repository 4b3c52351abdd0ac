//! The operator's commands as real processes against a real Redis, the
//! simulator and real `wxtoken run` replicas: `status` (table, JSON, exit
//! codes, faults), `refresh` (exactly one more fetch, durable pending
//! requests, timeout) and `get`; none of them ever prints a Redis password.

use crate::common::{eventually, Env, Setup};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wxtoken_schema::{info, status, CredentialKeys, Kind};
use wxtoken_sim::Endpoint;
use wxtoken_testkit::RedisServer;

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
    // The summary comes first, then the table.
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0], "2 credentials: 2 healthy, 0 unhealthy",
        "{}",
        out.stdout
    );
    let header = lines
        .iter()
        .position(|l| l.starts_with("CREDENTIAL"))
        .unwrap_or_else(|| panic!("no table header:\n{}", out.stdout));
    assert_eq!(
        lines[header..]
            .iter()
            .filter(|l| l.contains("jsapi_ticket"))
            .count(),
        2,
        "{}",
        out.stdout
    );

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

/// What a directly written credential looks like to `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seeded {
    /// Token stored with most of its life left.
    Ok,
    /// Token stored with 60 s left of 7200 s: within the default margin.
    Due,
    /// Registered, status hash written, no token.
    Missing,
    /// Token stored, last error newer than the last success.
    Failing,
    /// Token stored, refreshes paused for an hour.
    Paused,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Writes credentials straight into Redis under the schema's key names, as
/// refreshers would have left them, one pipeline per thousand.
async fn seed(con: &mut redis::aio::MultiplexedConnection, ns: &str, creds: &[(String, Seeded)]) {
    let now = unix_ms();
    for (b, batch) in creds.chunks(1000).enumerate() {
        let mut pipe = redis::pipe();
        for (j, (id, state)) in batch.iter().enumerate() {
            let i = b * 1000 + j;
            let keys = CredentialKeys::new(ns, id).unwrap();
            pipe.sadd(keys.registry(), id).ignore();
            let mut fields = vec![
                (status::APPID, format!("wx{:016}", i)),
                (status::MODE, "classic".to_owned()),
                (status::REPLICA, "replica-1".to_owned()),
                (status::LAST_OK_AT_MS, (now - 60_000).to_string()),
            ];
            match state {
                Seeded::Failing => {
                    fields.push((
                        status::LAST_ERROR,
                        "access_token: WeChat errcode 40164".into(),
                    ));
                    fields.push((status::LAST_ERRCODE, "40164".into()));
                    fields.push((status::LAST_ERROR_AT_MS, (now - 1_000).to_string()));
                }
                Seeded::Paused => {
                    fields.push((status::PAUSED_UNTIL_MS, (now + 3_600_000).to_string()));
                }
                _ => {}
            }
            pipe.hset_multiple(keys.status(), &fields).ignore();
            if *state == Seeded::Missing {
                continue;
            }
            let ttl_ms: u64 = if *state == Seeded::Due {
                60_000
            } else {
                7_000_000
            };
            let value = keys.value(Kind::AccessToken);
            let info_key = keys.info(Kind::AccessToken);
            pipe.cmd("SET")
                .arg(&value)
                .arg(format!("86_{id}_token"))
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
            pipe.hset_multiple(
                &info_key,
                &[
                    (info::EXPIRES_AT_MS, (now + ttl_ms).to_string()),
                    (
                        info::REFRESHED_AT_MS,
                        (now + ttl_ms - 7_200_000).to_string(),
                    ),
                    (info::EXPIRES_IN, "7200".to_owned()),
                    (info::FENCE, (i + 1).to_string()),
                    (info::REPLICA, "replica-1".to_owned()),
                ],
            )
            .ignore();
            pipe.cmd("PEXPIRE").arg(&info_key).arg(ttl_ms).ignore();
        }
        let () = pipe.query_async(con).await.unwrap();
    }
}

async fn redis_con(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The summary's counts for a kind: TOTAL, OK, DUE, MISSING, FAILING, PAUSED.
fn summary_row(stdout: &str, kind: &str) -> Vec<usize> {
    let line = stdout
        .lines()
        .take_while(|l| !l.starts_with("CREDENTIAL"))
        .find(|l| l.starts_with(&format!("{kind} ")))
        .unwrap_or_else(|| panic!("no summary row for {kind}:\n{stdout}"));
    line.split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect()
}

/// The credential ids of the table's rows, in order (the table ends at a
/// blank line or the "… more not shown" line).
fn table_ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("CREDENTIAL"))
        .skip(1)
        .take_while(|l| !l.is_empty() && !l.starts_with('…'))
        .filter(|l| !l.starts_with(' '))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_summarizes_puts_problems_first_filters_and_limits() {
    let server = RedisServer::start().unwrap();
    let mut con = redis_con(&server).await;
    let url = server.url();
    let mut creds: Vec<(String, Seeded)> = Vec::new();
    for i in 0..20 {
        let state = match i {
            3 => Seeded::Missing,
            7 => Seeded::Failing,
            11 => Seeded::Paused,
            15 => Seeded::Due,
            _ => Seeded::Ok,
        };
        creds.push((format!("shop-{i:03}"), state));
    }
    for i in 0..10 {
        let state = match i {
            2 => Seeded::Failing,
            5 => Seeded::Due,
            _ => Seeded::Ok,
        };
        creds.push((format!("oa-{i:03}"), state));
    }
    seed(&mut con, "wxtoken", &creds).await;

    let out = wxtoken(&["status", "--redis-url", &url], &[]).await;
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout.lines().next(),
        Some("30 credentials: 26 healthy, 4 unhealthy"),
        "{}",
        out.stdout
    );
    //                                          TOTAL OK DUE MISSING FAILING PAUSED
    assert_eq!(
        summary_row(&out.stdout, "access_token"),
        [30, 24, 2, 1, 2, 1]
    );
    // Problems first (by id), then the rest (by id); no limit line at 30.
    let ids = table_ids(&out.stdout);
    assert_eq!(ids.len(), 30, "{}", out.stdout);
    assert_eq!(ids[..4], ["oa-002", "shop-003", "shop-007", "shop-011"]);
    assert_eq!(ids[4..7], ["oa-000", "oa-001", "oa-003"]);
    assert_eq!(ids[29], "shop-019");
    assert!(!out.stdout.contains("not shown"), "{}", out.stdout);
    assert!(out.stdout.contains("oa-002: last error"), "{}", out.stdout);

    // --limit: the unhealthy still come first; the rest is counted.
    let out = wxtoken(&["status", "--redis-url", &url, "--limit", "5"], &[]).await;
    assert_eq!(out.code, 3);
    let ids = table_ids(&out.stdout);
    assert_eq!(
        ids,
        ["oa-002", "shop-003", "shop-007", "shop-011", "oa-000"]
    );
    assert!(
        out.stdout
            .contains("… 25 more healthy credentials not shown (--limit 5;"),
        "{}",
        out.stdout
    );
    // The summary still counts everything.
    assert_eq!(summary_row(&out.stdout, "access_token")[0], 30);
    let out = wxtoken(&["status", "--redis-url", &url, "--limit", "2"], &[]).await;
    assert!(
        out.stdout
            .contains("… 28 more credentials not shown (--limit 2;"),
        "{}",
        out.stdout
    );
    let out = wxtoken(&["status", "--redis-url", &url, "--limit", "0"], &[]).await;
    assert_eq!(table_ids(&out.stdout).len(), 30);

    // --problems: only the unhealthy; the summary still covers all 30.
    let out = wxtoken(&["status", "--redis-url", &url, "--problems"], &[]).await;
    assert_eq!(out.code, 3);
    assert_eq!(
        table_ids(&out.stdout),
        ["oa-002", "shop-003", "shop-007", "shop-011"]
    );
    assert!(out.stdout.starts_with("30 credentials:"), "{}", out.stdout);

    // --prefix selects; the summary says of how many.
    let out = wxtoken(&["status", "--redis-url", &url, "--prefix", "oa-"], &[]).await;
    assert_eq!(out.code, 3);
    assert!(
        out.stdout
            .starts_with("10 credentials selected (of 30): 9 healthy, 1 unhealthy\n"),
        "{}",
        out.stdout
    );
    assert_eq!(
        summary_row(&out.stdout, "access_token"),
        [10, 8, 1, 0, 1, 0]
    );
    assert!(table_ids(&out.stdout)
        .iter()
        .all(|id| id.starts_with("oa-")));
    let out = wxtoken(
        &[
            "status",
            "--redis-url",
            &url,
            "--prefix",
            "oa-",
            "--problems",
            "--json",
        ],
        &[],
    )
    .await;
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let ids: Vec<&str> = doc
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["oa-002"]);

    // --id (repeatable), alone or with --prefix (either matches). Two due
    // tokens are healthy: exit 0.
    let out = wxtoken(
        &[
            "status",
            "--redis-url",
            &url,
            "--id",
            "shop-015",
            "--id",
            "oa-005",
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(table_ids(&out.stdout), ["oa-005", "shop-015"]);
    assert_eq!(summary_row(&out.stdout, "access_token"), [2, 0, 2, 0, 0, 0]);
    let out = wxtoken(
        &[
            "status",
            "--redis-url",
            &url,
            "--id",
            "shop-015",
            "--prefix",
            "oa-",
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        11
    );
    // --problems with no problems among the selected: exit 0, said so.
    let out = wxtoken(
        &[
            "status",
            "--redis-url",
            &url,
            "--id",
            "oa-005",
            "--problems",
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.contains("no unhealthy credentials"),
        "{}",
        out.stdout
    );

    // An id nothing knows is shown as such; one no credential can have is an error.
    let out = wxtoken(
        &["status", "--redis-url", &url, "--id", "nope", "--json"],
        &[],
    )
    .await;
    assert_eq!(out.code, 3);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc[0]["registered"], false, "{doc}");
    assert_eq!(doc[0]["problems"][0], "no access_token stored", "{doc}");
    let out = wxtoken(&["status", "--redis-url", &url, "--id", "no spaces"], &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("--id"), "{}", out.stderr);
    let out = wxtoken(&["status", "--redis-url", &url, "--prefix", "zz"], &[]).await;
    assert_eq!(out.code, 3);
    assert!(
        out.stderr
            .contains("no credentials match --id/--prefix among the 30"),
        "{}",
        out.stderr
    );

    // --json ignores the limit: every selected credential, sorted by id.
    let out = wxtoken(
        &["status", "--redis-url", &url, "--json", "--limit", "5"],
        &[],
    )
    .await;
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let doc = doc.as_array().unwrap();
    assert_eq!(doc.len(), 30);
    assert_eq!(doc[0]["id"], "oa-000");
    assert_eq!(doc.iter().filter(|c| c["healthy"] == false).count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_twenty_thousand_credentials() {
    const N: usize = 20_000;
    let server = RedisServer::start().unwrap();
    let mut con = redis_con(&server).await;
    let url = server.url();
    let creds: Vec<(String, Seeded)> = (0..N)
        .map(|i| {
            let state = match i % 100 {
                0 => Seeded::Missing,
                1 => Seeded::Failing,
                2 => Seeded::Paused,
                3 | 4 => Seeded::Due,
                _ => Seeded::Ok,
            };
            (format!("cred-{i:05}"), state)
        })
        .collect();
    seed(&mut con, "bench", &creds).await;

    let started = std::time::Instant::now();
    let out = wxtoken(
        &["status", "--redis-url", &url, "--namespace", "bench"],
        &[],
    )
    .await;
    eprintln!("status over {N} credentials: {:?}", started.elapsed());
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(
        out.stdout.lines().next(),
        Some("20000 credentials: 19400 healthy, 600 unhealthy"),
        "{}",
        &out.stdout[..out.stdout.len().min(2000)]
    );
    assert_eq!(
        summary_row(&out.stdout, "access_token"),
        [N, 19_000, 400, 200, 200, 200]
    );
    // The default limit: 200 rows, all of them unhealthy, the rest counted.
    let ids = table_ids(&out.stdout);
    assert_eq!(ids.len(), 200);
    assert_eq!(ids[0], "cred-00000");
    assert_eq!(ids[1], "cred-00001");
    assert!(
        out.stdout
            .contains("… 19800 more credentials not shown (--limit 200;"),
        "{}",
        &out.stdout[out.stdout.len().saturating_sub(2000)..]
    );

    let out = wxtoken(
        &[
            "status",
            "--redis-url",
            &url,
            "--namespace",
            "bench",
            "--problems",
            "--json",
        ],
        &[],
    )
    .await;
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let doc = doc.as_array().unwrap();
    assert_eq!(doc.len(), 600);
    assert!(doc.iter().all(|c| c["healthy"] == false));
}
