//! Redis over TLS (`rediss://`), with a CA and certificates the test makes
//! (`wxtoken_testkit::TestPki`) and a real `redis-server --tls-port`:
//! - three replicas refresh through TLS exactly once per cycle, the client
//!   crate reads and follows events through TLS, `wxtoken status` / `get`
//!   work through TLS (flags, and the replica's `--config`);
//! - mutual TLS: everything works with the client certificate, and fails
//!   clearly without one;
//! - a wrong CA: the replica does not start, the CLI and the client crate
//!   fail, and every error names the CA file;
//! - no key material and no password in any log or output.
//!
//! The server also listens in plain text on loopback: the test itself
//! inspects Redis there; the code under test is only given the TLS URL.

use crate::common::{wxtoken_cli, Env, Replica, Setup};
use futures_util::StreamExt;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use wxtoken_client::{Client, Error, Options};
use wxtoken_schema::{events_channel, Kind, UpdateEvent};
use wxtoken_sim::{Endpoint, FetchOutcome};
use wxtoken_testkit::{RedisServer, TestPki};

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// `[redis]` lines naming the CA and, if `client_cert`, the client
/// certificate and key.
fn tls_lines(ca: &Path, pki: &TestPki, client_cert: bool) -> String {
    let mut lines = format!("tls_ca_file = \"{}\"\n", p(ca));
    if client_cert {
        lines.push_str(&format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            p(&pki.client_cert),
            p(&pki.client_key)
        ));
    }
    lines
}

fn spawn(env: &Env, name: &str, redis_extra: &str) -> Replica {
    let config = env.config_text_with(&env.redis.tls_url(), redis_extra);
    env.spawn_replica_config(name, &config, &[])
}

/// Key material that must never be printed: the body lines of the key files.
fn key_lines(pki: &TestPki) -> Vec<String> {
    [&pki.client_key, &pki.server_key]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn assert_no_key_material(pki: &TestPki, what: &str, text: &str) {
    assert!(!text.contains("PRIVATE KEY"), "{what}: {text}");
    for line in key_lines(pki) {
        assert!(!text.contains(&line), "key material in {what}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_client_and_cli_work_through_tls_exactly_once() {
    let pki = TestPki::generate().unwrap();
    let server = RedisServer::start_tls(&pki.server(false), &[])
        .expect("redis-server (with TLS support) is needed for the tests");
    let env = Env::start_with_redis(
        Setup {
            credentials: 10,
            lifetime: Duration::from_secs(5),
            overlap: Duration::from_secs(1),
            margin: Duration::from_secs(2),
            max_margin_fraction: 0.4,
            jitter: Duration::from_millis(500),
            ..Setup::default()
        },
        server,
    )
    .await;
    let tls_url = env.redis.tls_url();

    // Record every write as it is published (over the plain test port).
    let recorder = redis::Client::open(env.redis.url()).unwrap();
    let mut pubsub = recorder.get_async_pubsub().await.unwrap();
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

    let started = Instant::now();
    let extra = tls_lines(&pki.ca, &pki, false);
    let replicas: Vec<Replica> = (1..=3)
        .map(|r| spawn(&env, &format!("replica-{r}"), &extra))
        .collect();
    env.wait_all_stored(Duration::from_secs(15)).await;

    // The client crate, through TLS: reads the stored token, follows events.
    let client = Client::connect(&tls_url, Options::default().tls_ca_file(&pki.ca))
        .await
        .expect("the client connects through TLS");
    assert!(client.subscribed());
    let mut con = env.redis_con().await;
    // Checked against the announced tokens at the end (a refresh may land
    // between a read and a look at Redis).
    let client_token = client.access_token("app-0").await.unwrap().to_string();
    crate::common::eventually(
        Duration::from_secs(10),
        "the client receives update events through TLS",
        || async { client.debug_stats().events > 0 },
    )
    .await;

    // The CLI, through TLS: flags, and the replica's own config file.
    let ca = p(&pki.ca);
    let out = wxtoken_cli(
        &["status", "--redis-url", &tls_url, "--tls-ca-file", &ca],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(out.stdout.contains("app-9"), "{}", out.stdout);
    let config = p(&env.dir.path().join("replica-1.toml"));
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
    let out = wxtoken_cli(&["get", "app-1", "--config", &config], &secrets).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let cli_token = out.stdout.trim_end().to_owned();

    // Let the replicas run for a few cycles.
    let run_for = Duration::from_secs(16);
    tokio::time::sleep(run_for.saturating_sub(started.elapsed())).await;
    let _: () = redis::cmd("PUBLISH")
        .arg(events_channel("wxtoken"))
        .arg(r#"{"v":1,"id":"STOP","kind":"access_token","token":"x","expires_at_ms":0,"fence":0,"replica":"test"}"#)
        .query_async(&mut con)
        .await
        .unwrap();
    let events = events.await.unwrap();
    let logs: Vec<String> = replicas.iter().map(Replica::logs).collect();
    drop(replicas);

    // Exactly once: every fetch issued a token, fetches are a cycle apart,
    // and every issued token is the one stored and announced.
    let evidence = env.admin.evidence();
    let mut fetchers = BTreeSet::new();
    let shortest = env.setup.lifetime - env.setup.margin - env.setup.jitter;
    let min_gap = (shortest - Duration::from_millis(500)).as_millis() as u64;
    for c in &env.creds {
        let fetches = evidence.apps[&c.appid].fetches_of(Endpoint::Token);
        let issued: Vec<(u64, String)> = fetches
            .iter()
            .filter_map(|f| match &f.outcome {
                FetchOutcome::Issued { token_prefix, .. } => {
                    Some((f.since_start_ms, token_prefix.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(issued.len(), fetches.len(), "{}: {fetches:?}", c.id);
        assert!(issued.len() >= 3, "{}: only {} fetches", c.id, issued.len());
        for pair in issued.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            assert!(gap >= min_gap, "{}: fetches {gap} ms apart", c.id);
        }
        let written: Vec<String> = events
            .iter()
            .filter(|e| e.id == c.id && e.kind == Kind::AccessToken)
            .map(|e| e.token.chars().take(8).collect())
            .collect();
        let issued: Vec<String> = issued.into_iter().map(|(_, p)| p).collect();
        assert_eq!(written, issued, "{}: fetched vs stored", c.id);
        fetchers.extend(
            events
                .iter()
                .filter(|e| e.id == c.id)
                .map(|e| e.replica.clone()),
        );
    }
    assert!(fetchers.len() >= 2, "only {fetchers:?} fetched");
    for (what, token) in [("client", &client_token), ("wxtoken get", &cli_token)] {
        assert!(
            events.iter().any(|e| &e.token == token),
            "{what} read a token never stored: {token:?}"
        );
    }
    for (i, log) in logs.iter().enumerate() {
        assert!(log.contains("tls=true"), "replica {i}: {log}");
        assert!(!log.contains("could not check"), "replica {i}: {log}");
        assert_no_key_material(&pki, "replica log", log);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_works_with_the_client_certificate_and_fails_clearly_without() {
    let pki = TestPki::generate().unwrap();
    let server = RedisServer::start_tls(&pki.server(true), &[])
        .expect("redis-server (with TLS support) is needed for the tests");
    let env = Env::start_with_redis(
        Setup {
            credentials: 2,
            lifetime: Duration::from_secs(60),
            ..Setup::default()
        },
        server,
    )
    .await;
    let tls_url = env.redis.tls_url();
    let (ca, cert, key) = (p(&pki.ca), p(&pki.client_cert), p(&pki.client_key));

    // With the certificate: replicas, client and CLI work.
    let replica = spawn(&env, "replica-1", &tls_lines(&pki.ca, &pki, true));
    env.wait_all_stored(Duration::from_secs(15)).await;
    let client = Client::connect(
        &tls_url,
        Options::default()
            .tls_ca_file(&pki.ca)
            .tls_client_cert(&pki.client_cert, &pki.client_key),
    )
    .await
    .expect("connects with the client certificate");
    let mut con = env.redis_con().await;
    assert_eq!(
        *client.access_token("app-0").await.unwrap(),
        env.token(&mut con, 0).await.unwrap()
    );
    let out = wxtoken_cli(
        &[
            "get",
            "app-0",
            "--redis-url",
            &tls_url,
            "--tls-ca-file",
            &ca,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim_end(), env.token(&mut con, 0).await.unwrap());
    // The same through the environment.
    let out = wxtoken_cli(
        &["status", "--redis-url", &tls_url],
        &[
            ("WXTOKEN_REDIS_TLS_CA_FILE", &ca),
            ("WXTOKEN_REDIS_TLS_CERT_FILE", &cert),
            ("WXTOKEN_REDIS_TLS_KEY_FILE", &key),
        ],
    )
    .await;
    assert!(
        out.stdout.contains("app-1"),
        "{} {}",
        out.stdout,
        out.stderr
    );

    // Without it: each fails, saying a client certificate is required.
    let out = wxtoken_cli(
        &["status", "--redis-url", &tls_url, "--tls-ca-file", &ca],
        &[],
    )
    .await;
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("requires a client certificate"),
        "{}",
        out.stderr
    );
    let err = Client::connect(&tls_url, Options::default().tls_ca_file(&pki.ca))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Tls { hint, .. } if hint.contains("requires a client certificate")),
        "{err}"
    );
    let mut without = spawn(&env, "replica-2", &tls_lines(&pki.ca, &pki, false));
    let code = without.wait_exit(Duration::from_secs(15));
    let log = without.logs();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("requires a client certificate"), "{log}");
    assert_no_key_material(&pki, "replica log", &replica.logs());
    assert_no_key_material(&pki, "replica log", &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_fails_naming_the_ca_file() {
    let pki = TestPki::generate().unwrap();
    let server = RedisServer::start_tls(&pki.server(false), &[])
        .expect("redis-server (with TLS support) is needed for the tests");
    let env = Env::start_with_redis(
        Setup {
            credentials: 1,
            lifetime: Duration::from_secs(60),
            ..Setup::default()
        },
        server,
    )
    .await;
    let tls_url = env.redis.tls_url();
    let wrong = p(&pki.other_ca);

    let mut replica = spawn(&env, "replica-1", &tls_lines(&pki.other_ca, &pki, false));
    let code = replica.wait_exit(Duration::from_secs(15));
    let log = replica.logs();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("not signed by"), "{log}");
    assert!(log.contains(&wrong), "{log}");

    let out = wxtoken_cli(
        &["status", "--redis-url", &tls_url, "--tls-ca-file", &wrong],
        &[],
    )
    .await;
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    assert!(out.stderr.contains(&wrong), "{}", out.stderr);
    assert!(out.stderr.contains("not signed by"), "{}", out.stderr);

    let err = Client::connect(&tls_url, Options::default().tls_ca_file(&pki.other_ca))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Tls { hint, .. } if hint.contains(&wrong)),
        "{err}"
    );

    // The system roots do not know the test CA either; the error says so.
    let out = wxtoken_cli(&["status", "--redis-url", &tls_url], &[]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("system's root certificates"),
        "{}",
        out.stderr
    );
    // TLS files with a plain-text URL are refused, naming the flag.
    let out = wxtoken_cli(
        &[
            "status",
            "--redis-url",
            &env.redis.url(),
            "--tls-ca-file",
            &p(&pki.ca),
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("--tls-ca-file: TLS files are given"),
        "{}",
        out.stderr
    );
}
