//! The HTTP surface of a replica cannot starve its refresh work, against
//! real `wxtoken run` processes, a real redis-server and the simulator:
//! - more silent, half-sent connections than the connection cap, under a
//!   64-file-descriptor limit: a refresh request filed in Redis is served
//!   while they are open, every one is closed by the server after the
//!   header-read timeout, and `/healthz` then answers on a fresh connection;
//! - one silent connection is closed (EOF) after the header-read timeout, a
//!   kept-alive connection after the idle timeout (hyper's header-read
//!   timeout, which also runs while a kept-alive connection waits for its
//!   next request);
//! - an oversized POST body gets 413;
//! - a Redis error on a refresh request names the step that failed.
//!
//! The timeouts are the replica's constants (`http::limits`, not
//! configurable); waits are conditions, with limits several times them.

use crate::common::{eventually, Env, Setup};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wxtoken_schema::{Kind, RequestOutcome, FORCE_REQUEST};

/// `http::limits::HEADER_READ_TIMEOUT` of the replica.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// `http::limits::IDLE_TIMEOUT` of the replica: hyper's header-read timer,
/// restarted when a kept-alive connection goes idle after a response.
const IDLE_TIMEOUT: Duration = HEADER_READ_TIMEOUT;
/// The open-file limit of the flooded replica (the review's reproduction).
const NOFILE: u64 = 64;
/// Its connection cap: a quarter of the open-file limit.
const CAP: usize = (NOFILE / 4) as usize;
/// Silent connections opened against it: four times the cap.
const SILENT: usize = 4 * CAP;

const TOKEN: &str = "http-limits-test-token-0b9c5a1e77f2";
const TOKEN_ENV: &str = "WXT_HTTP_TOKEN";
/// Half a request: the head never ends.
const HALF_REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: wxtoken\r\n";

/// Long-lived tokens, so nothing refreshes unless a test asks.
fn setup_with_http() -> (Setup, String, u16) {
    let port = wxtoken_testkit::free_port().unwrap();
    let setup = Setup {
        credentials: 2,
        lifetime: Duration::from_secs(120),
        overlap: Duration::from_secs(5),
        min_interval: Duration::from_millis(500),
        extra_config: format!(
            "\n[http]\nlisten = \"127.0.0.1:{port}\"\ntoken_env = \"{TOKEN_ENV}\"\n"
        ),
        ..Setup::default()
    };
    (setup, format!("http://127.0.0.1:{port}"), port)
}

/// A `wxtoken run` started under `prlimit --nofile`; SIGKILLed on drop.
struct Limited {
    child: Child,
    log: std::path::PathBuf,
}

impl Limited {
    fn spawn(env: &Env, name: &str, nofile: u64) -> Limited {
        let config = env.dir.path().join(format!("{name}.toml"));
        let log = env.dir.path().join(format!("{name}.log"));
        std::fs::write(&config, env.config_text(&env.redis.url())).unwrap();
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_wxtoken"))
            .args(["run", "--config"])
            .arg(&config)
            .args(["--replica-id", name])
            .env("RUST_LOG", "debug")
            .env(TOKEN_ENV, TOKEN)
            .env_remove("WXTOKEN_REDIS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (i, c) in env.creds.iter().enumerate() {
            cmd.env(format!("WXT_SECRET_{i}"), &c.secret);
        }
        let child = cmd
            .spawn()
            .expect("spawning wxtoken run under prlimit (util-linux)");
        Limited { child, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a silent connection ended.
#[derive(Debug)]
struct Ended {
    /// Bytes the server sent before closing.
    bytes: usize,
    /// From before the connect to EOF.
    after: Duration,
}

/// Connects, sends half a request, then reads until the server closes the
/// connection (EOF). `sent` counts connections whose half request is sent,
/// `closed` those that ended.
async fn silent(
    port: u16,
    sent: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
) -> Result<Ended, String> {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(HALF_REQUEST)
        .await
        .map_err(|e| format!("write: {e}"))?;
    sent.fetch_add(1, Ordering::SeqCst);
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got).await;
    closed.fetch_add(1, Ordering::SeqCst);
    r.map_err(|e| format!("read: {e} after {:?}", started.elapsed()))?;
    Ok(Ended {
        bytes: got.len(),
        after: started.elapsed(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_beyond_the_cap_do_not_starve_refreshes() {
    let (setup, base, port) = setup_with_http();
    let env = Env::start(setup).await;
    let replica = Limited::spawn(&env, "replica-1", NOFILE);
    crate::common::wait_healthz(&base, || replica.logs()).await;
    env.wait_all_stored(Duration::from_secs(15)).await;
    assert!(
        replica.logs().contains(&format!("max_connections={CAP}")),
        "the cap follows the open-file limit:\n{}",
        replica.logs()
    );

    // Four times the cap of half-sent requests. Without the cap these
    // alone would take every file descriptor the replica has.
    let sent = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let opened = Instant::now();
    let silents: Vec<_> = (0..SILENT)
        .map(|_| tokio::spawn(silent(port, sent.clone(), closed.clone())))
        .collect();
    eventually(
        Duration::from_secs(10),
        "every half request is sent",
        || {
            let sent = sent.clone();
            async move { sent.load(Ordering::SeqCst) == SILENT }
        },
    )
    .await;
    // The surface is saturated: the first CAP connections hold every slot
    // until their header timeout, so a fresh one waits unanswered. (Checked
    // only if this point came well within that timeout.)
    if opened.elapsed() < HEADER_READ_TIMEOUT / 2 {
        let quick = reqwest::Client::builder()
            .timeout(HEADER_READ_TIMEOUT / 5)
            .build()
            .unwrap();
        assert!(
            quick.get(format!("{base}/healthz")).send().await.is_err(),
            "a connection beyond the cap was served at once"
        );
    }

    // While they are open, a refresh request filed in Redis is served.
    let mut con = env.redis_con().await;
    let keys = env.keys(&env.creds[0].id);
    let before = env.token(&mut con, 0).await.expect("stored");
    let outcome = wxtoken_schema::request_refresh(
        &mut con,
        &keys,
        Kind::AccessToken,
        FORCE_REQUEST,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(outcome, RequestOutcome::Requested);
    eventually(
        Duration::from_secs(20),
        "the token is replaced while the silent connections are open",
        || {
            let mut con = con.clone();
            let env = &env;
            let before = before.clone();
            async move { env.token(&mut con, 0).await.is_some_and(|t| t != before) }
        },
    )
    .await;
    let closed_then = closed.load(Ordering::SeqCst);
    println!(
        "refreshed after {:?} with {closed_then} of {SILENT} silent connections closed",
        opened.elapsed()
    );
    // They are served CAP at a time, each closed after the header timeout:
    // the last can close no earlier than (SILENT / CAP) header timeouts in.
    assert!(
        closed_then < SILENT,
        "the refresh was served while silent connections were open"
    );

    // Every silent connection is closed by the server, without a response,
    // no earlier than the header timeout.
    let rounds = u32::try_from(SILENT.div_ceil(CAP)).unwrap();
    let limit = HEADER_READ_TIMEOUT * rounds * 4 + Duration::from_secs(30);
    let mut ends = Vec::new();
    for s in silents {
        let end = tokio::time::timeout(limit, s)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "a silent connection still open after {limit:?}; log:\n{}",
                    replica.logs()
                )
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(end.bytes, 0, "no response to half a request");
        assert!(end.after >= HEADER_READ_TIMEOUT, "{end:?}");
        ends.push(end.after);
    }
    ends.sort();
    println!(
        "silent connections closed after {:?} (first) … {:?} (last)",
        ends[0],
        ends[ends.len() - 1]
    );
    // Served CAP at a time: the last ones waited for earlier ones.
    assert!(ends[ends.len() - 1] >= HEADER_READ_TIMEOUT * 2, "{ends:?}");

    // A fresh connection is answered; the replica is still ready.
    let res = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(res.status(), 200);
    let res = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(
        res.status(),
        200,
        "{}",
        res.text().await.unwrap_or_default()
    );

    let logs = replica.logs();
    for bad in ["accepting a connection failed", "Too many open files"] {
        assert!(!logs.contains(bad), "{bad:?} in the log:\n{logs}");
    }
    assert!(
        logs.contains(
            "closing an HTTP connection: no complete request head within the header timeout"
        ),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_413_and_labelled_redis_errors() {
    let (setup, base, port) = setup_with_http();
    let env = Env::start(setup).await;
    let replica = env.spawn_replica_with("replica-1", None, &[(TOKEN_ENV, TOKEN)]);
    crate::common::wait_healthz(&base, || replica.logs()).await;
    env.wait_all_stored(Duration::from_secs(15)).await;
    let limit = HEADER_READ_TIMEOUT * 3 + Duration::from_secs(10);

    // One silent connection: closed (EOF) after the header timeout.
    let count = || Arc::new(AtomicUsize::new(0));
    let silent_one = tokio::spawn(silent(port, count(), count()));
    // A kept-alive connection: one request answered, then nothing; closed
    // after the idle timeout.
    let idle = tokio::spawn(async move {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: wxtoken\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"ok\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the response: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
        let answered = Instant::now();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
        answered.elapsed()
    });

    // An oversized body: 413, after authentication.
    let big = serde_json::json!({ "token": "x".repeat(5000) }).to_string();
    let http = reqwest::Client::new();
    let res = http
        .post(format!("{base}/refresh/app-0"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        body["error"], "the body is larger than 4096 bytes",
        "{body}"
    );
    let res = http
        .post(format!("{base}/refresh/app-0"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "authentication comes first");

    // A Redis error names the step that failed.
    let mut con = env.redis_con().await;
    let post = |query: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let res = http
                .post(format!("{base}/refresh/app-0{query}"))
                .header("Authorization", format!("Bearer {TOKEN}"))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().await.unwrap();
            (
                status,
                body["error"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "-evalsha", "-eval"])
        .query_async(&mut con)
        .await
        .unwrap();
    let (status, error) = post("?force=true").await;
    assert_eq!(status, 503, "{error}");
    assert!(
        error.starts_with(
            "filing the refresh request for the access_token of credential \"app-0\" in Redis: "
        ) && error.to_lowercase().contains("noperm"),
        "{error}"
    );
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "-get"])
        .query_async(&mut con)
        .await
        .unwrap();
    let (status, error) = post("").await;
    assert_eq!(status, 503, "{error}");
    assert!(
        error.starts_with("reading the stored access_token of credential \"app-0\" from Redis: ")
            && error.to_lowercase().contains("noperm"),
        "{error}"
    );
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "+@all"])
        .query_async(&mut con)
        .await
        .unwrap();

    let end = tokio::time::timeout(limit, silent_one)
        .await
        .expect("the silent connection is closed")
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(end.bytes, 0);
    assert!(end.after >= HEADER_READ_TIMEOUT, "{end:?}");
    println!("silent connection closed after {:?}", end.after);
    let idle_for = tokio::time::timeout(IDLE_TIMEOUT * 3, idle)
        .await
        .expect("the idle connection is closed")
        .unwrap();
    assert!(idle_for >= IDLE_TIMEOUT, "{idle_for:?}");
    println!("idle connection closed after {idle_for:?}");
}
