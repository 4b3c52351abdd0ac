//! The HTTP surface of a replica (`[http]`), against real `wxtoken run`
//! processes, a real redis-server and the simulator:
//! - `/healthz` answers while the process runs; `/readyz` follows Redis;
//! - `/metrics` is Prometheus text with refresh outcomes and time left;
//! - `POST /refresh/{id}` needs the bearer token, knows only configured ids,
//!   and costs exactly one WeChat call per accepted request;
//! - the status page and `/status.json` summarize every credential, list
//!   them problems first, page and filter them, and never show a secret or
//!   a whole token; headless Chromium renders the page. (Thousands of
//!   credentials: `tests/status_scale.rs`.)

use crate::common::{eventually, Env, Setup};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wxtoken_schema::{status, Kind};
use wxtoken_sim::{Endpoint, Fault, FaultKind, FetchOutcome};

/// The bearer token of the tests' replicas.
const TOKEN: &str = "http-surface-test-token-5f0c2b7e91d4";
const TOKEN_ENV: &str = "WXT_HTTP_TOKEN";
const METRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Long-lived tokens, so nothing refreshes unless a test asks.
fn long_lived(credentials: usize, tickets: bool) -> Setup {
    Setup {
        credentials,
        tickets,
        lifetime: Duration::from_secs(120),
        overlap: Duration::from_secs(5),
        min_interval: Duration::from_millis(500),
        ..Setup::default()
    }
}

/// An `[http]` section on a free loopback port; returns it and the base URL.
fn http_section(with_token: bool) -> (String, String) {
    let port = wxtoken_testkit::free_port().unwrap();
    let mut text = format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n");
    if with_token {
        text.push_str(&format!("token_env = \"{TOKEN_ENV}\"\n"));
    }
    (text, format!("http://127.0.0.1:{port}"))
}

/// Starts a scenario with one HTTP-enabled replica `replica-1`.
async fn start(mut setup: Setup, with_token: bool) -> (Env, crate::common::Replica, String) {
    let (section, base) = http_section(with_token);
    setup.extra_config.push_str(&section);
    let env = Env::start(setup).await;
    let replica = env.spawn_replica_with("replica-1", None, &[(TOKEN_ENV, TOKEN)]);
    crate::common::wait_healthz(&base, || replica.logs()).await;
    (env, replica, base)
}

fn issued(env: &Env, i: usize) -> usize {
    env.admin
        .fetches(&env.creds[i].appid, Endpoint::Token)
        .iter()
        .filter(|f| matches!(f.outcome, FetchOutcome::Issued { .. }))
        .count()
}

async fn get(base: &str, path: &str) -> reqwest::Response {
    reqwest::get(format!("{base}{path}")).await.unwrap()
}

async fn post(
    base: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().post(format!("{base}{path}"));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {text:?}"));
    (status, json)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// Secrets and whole tokens that must never show.
async fn forbidden(env: &Env) -> (Vec<String>, Vec<String>) {
    let mut con = env.redis_con().await;
    let mut secrets: Vec<String> = env.creds.iter().map(|c| c.secret.clone()).collect();
    secrets.push(TOKEN.to_owned());
    let mut tokens = Vec::new();
    for c in &env.creds {
        for kind in [Kind::AccessToken, Kind::JsapiTicket] {
            if let Some(t) = crate::common::stored(&mut con, &env.keys(&c.id), kind).await {
                tokens.push(t);
            }
        }
    }
    (secrets, tokens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics() {
    let (mut env, mut replica, base) = start(long_lived(2, false), true).await;
    let res = get(&base, "/healthz").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap().trim(), "ok");
    let res = get(&base, "/readyz").await;
    assert_eq!(res.status(), 200);

    env.wait_all_stored(Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let res = get(&base, "/metrics").await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()["content-type"].to_str().unwrap(),
            METRICS_TYPE
        );
        let text = res.text().await.unwrap();
        if text.contains(r#"wxtoken_refresh_total{id="app-1",kind="access_token",outcome="ok""#) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no refresh outcome in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        text.contains(r#"wxtoken_refresh_total{id="app-0",kind="access_token",outcome="ok""#),
        "{text}"
    );
    assert!(
        text.contains(r#"wxtoken_expires_at_seconds{id="app-0",kind="access_token"}"#),
        "{text}"
    );
    assert!(text.contains("wxtoken_credentials 2\n"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");

    // Redis goes away: not ready (bounded by the Redis timeout), still alive.
    let redis_url = env.redis.url();
    env.redis.stop();
    let started = Instant::now();
    let body = loop {
        let res = get(&base, "/readyz").await;
        let code = res.status();
        let body = res.text().await.unwrap();
        if code == 503 {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "/readyz still {code} without Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("/readyz said 503 after {:?}: {body}", started.elapsed());
    assert!(body.starts_with("not ready: redis"), "{body}");
    assert!(
        !body.contains(&redis_url) && !body.contains("redis://"),
        "{body}"
    );
    let res = get(&base, "/healthz").await;
    assert_eq!(res.status(), 200, "alive without Redis");
    let page = get(&base, "/").await;
    assert_eq!(page.status(), 200, "the status page works without Redis");
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("Redis is not answering"));

    env.redis.restart().unwrap();
    eventually(Duration::from_secs(10), "/readyz recovers", || async {
        get(&base, "/readyz").await.status() == 200
    })
    .await;
    assert!(!replica.logs().contains(TOKEN));

    // SIGTERM stops the HTTP surface with the refresher.
    let started = Instant::now();
    assert_eq!(replica.terminate(Duration::from_secs(10)), Some(0));
    println!("exited {:?} after SIGTERM", started.elapsed());
    assert!(reqwest::get(format!("{base}/healthz")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_refresh_needs_the_token_and_costs_one_call() {
    let (env, replica, base) = start(long_lived(2, false), true).await;
    env.wait_all_stored(Duration::from_secs(10)).await;
    let mut con = env.redis_con().await;

    // Authentication comes first.
    let res = reqwest::Client::new()
        .post(format!("{base}/refresh/app-0"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let (code, body) = post(&base, "/refresh/app-0", Some("Bearer wrong-token"), None).await;
    assert_eq!(code, 401, "{body}");
    let (code, _) = post(&base, "/refresh/nope", Some(TOKEN), None).await;
    assert_eq!(code, 401, "the scheme is required");
    let (code, body) = post(&base, "/refresh/nope", None, None).await;
    assert_eq!(
        code, 401,
        "unknown ids are not revealed before auth: {body}"
    );

    // Then the id and the kind.
    let (code, body) = post(&base, "/refresh/nope", Some(&bearer()), None).await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nope"), "{body}");
    let (code, body) = post(
        &base,
        "/refresh/app-0?kind=jsapi_ticket",
        Some(&bearer()),
        None,
    )
    .await;
    assert_eq!(code, 404, "no tickets configured: {body}");
    let (code, body) = post(&base, "/refresh/app-0?kind=bogus", Some(&bearer()), None).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = post(
        &base,
        "/refresh/app-0?force=true",
        Some(&bearer()),
        Some(serde_json::json!({"token": "x"})),
    )
    .await;
    assert_eq!(code, 400, "body token and force together: {body}");
    assert_eq!(issued(&env, 0), 1, "refused requests cost nothing");

    // No body: report the stored token. One more WeChat call, exactly.
    tokio::time::sleep(Duration::from_millis(600)).await; // past min_interval
    let old = env.token(&mut con, 0).await.unwrap();
    let (code, body) = post(&base, "/refresh/app-0", Some(&bearer()), None).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["outcome"], "requested");
    assert_eq!(body["id"], "app-0");
    assert_eq!(body["kind"], "access_token");
    replaced(&env, &old).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // a late duplicate would show now
    assert_eq!(issued(&env, 0), 2, "exactly one more fetch");
    assert_eq!(issued(&env, 1), 1, "other credentials untouched");
    let new = env.token(&mut con, 0).await.unwrap();
    assert_eq!(env.admin.check_token(&new), Ok(()));

    // A report about the replaced token changes nothing.
    let (code, body) = post(
        &base,
        "/refresh/app-0",
        Some(&bearer()),
        Some(serde_json::json!({ "token": old })),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["outcome"], "already_replaced");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(issued(&env, 0), 2);
    assert_eq!(env.token(&mut con, 0).await.as_deref(), Some(new.as_str()));

    // A report about the current token (a business server in another
    // language saw it refused) is served once.
    let (code, body) = post(
        &base,
        "/refresh/app-0",
        Some(&bearer()),
        Some(serde_json::json!({ "token": new })),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    replaced(&env, &new).await;

    // force=true replaces whatever is stored, once force_min_interval
    // (500 ms here) has passed since the last refresh.
    let current = env.token(&mut con, 0).await.unwrap();
    let (code, body) = post(&base, "/refresh/app-0?force=true", Some(&bearer()), None).await;
    assert_eq!(code, 202, "{body}");
    replaced(&env, &current).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(issued(&env, 0), 4, "one fetch per accepted request");

    let logs = replica.logs();
    assert!(!logs.contains(TOKEN), "the bearer token is logged");
    assert!(
        logs.contains("refresh request over HTTP"),
        "requests are logged"
    );
    assert!(
        logs.contains("refused POST /refresh"),
        "refusals are logged"
    );
}

async fn replaced(env: &Env, old: &str) {
    let con = env.redis_con().await;
    eventually(Duration::from_secs(5), "the token is replaced", || {
        let mut con = con.clone();
        async move { env.token(&mut con, 0).await.is_some_and(|t| t != old) }
    })
    .await;
}

/// A bodiless POST while nothing is stored asks for whatever comes next
/// (the `*` request `wxtoken refresh` files), not for the value `""`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_refresh_with_nothing_stored_files_a_force_request() {
    let (section, base) = http_section(true);
    let mut setup = long_lived(1, false);
    setup.extra_config.push_str(&section);
    let env = Env::start(setup).await;
    let appid = env.creds[0].appid.clone();
    env.admin.set_ip_whitelisted(&appid, false);
    let replica = env.spawn_replica_with("replica-1", None, &[(TOKEN_ENV, TOKEN)]);
    crate::common::wait_healthz(&base, || replica.logs()).await;
    let keys = env.keys("app-0");
    let con = env.redis_con().await;
    eventually(Duration::from_secs(10), "40164 recorded", || {
        let (mut con, key) = (con.clone(), keys.status());
        async move {
            redis::cmd("HGET")
                .arg(key)
                .arg(status::LAST_ERRCODE)
                .query_async::<Option<i64>>(&mut con)
                .await
                .expect("redis")
                == Some(40164)
        }
    })
    .await;
    let mut con = con;
    assert_eq!(
        crate::common::stored(&mut con, &keys, Kind::AccessToken).await,
        None
    );

    let (code, body) = post(&base, "/refresh/app-0", Some(&bearer()), None).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["outcome"], "requested");
    let forced: bool = redis::cmd("EXISTS")
        .arg(keys.force_request(Kind::AccessToken))
        .query_async(&mut con)
        .await
        .expect("redis");
    assert!(forced, "nothing stored: a force request is filed");

    // Once WeChat answers, the stored value answers the request too.
    env.admin.set_ip_whitelisted(&appid, true);
    env.wait_all_stored(Duration::from_secs(10)).await;
    eventually(Duration::from_secs(5), "the request is served", || {
        let (mut con, key) = (con.clone(), keys.refresh_request(Kind::AccessToken));
        async move {
            redis::cmd("EXISTS")
                .arg(key)
                .query_async::<i64>(&mut con)
                .await
                .expect("redis")
                == 0
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_post_refresh_is_forbidden() {
    let (env, _replica, base) = start(long_lived(1, false), false).await;
    env.wait_all_stored(Duration::from_secs(10)).await;
    for auth in [None, Some(bearer())] {
        let (code, body) = post(&base, "/refresh/app-0", auth.as_deref(), None).await;
        assert_eq!(code, 403, "{body}");
        assert!(body["error"].as_str().unwrap().contains("disabled"));
    }
    assert_eq!(get(&base, "/").await.status(), 200);
    assert_eq!(issued(&env, 0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_a_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut setup = long_lived(1, false);
    setup.extra_config = format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n");
    let env = Env::start(setup).await;
    let config = env.dir.path().join("taken.toml");
    std::fs::write(&config, env.config_text(&env.redis.url())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wxtoken"))
        .args(["run", "--config"])
        .arg(&config)
        .args(["--replica-id", "replica-x"])
        .env("WXT_SECRET_0", &env.creds[0].secret)
        .env_remove("WXTOKEN_REDIS_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port} (http.listen)")),
        "{err}"
    );
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_and_json_show_every_credential_and_no_secret() {
    let (env, _replica, base) = start(long_lived(3, true), true).await;
    env.wait_all_stored(Duration::from_secs(10)).await;

    // Whatever Redis holds is escaped, even a hostile error message.
    let mut con = env.redis_con().await;
    let _: () = redis::cmd("HSET")
        .arg(env.keys("app-1").status())
        .arg(status::LAST_ERROR)
        .arg("access_token: <script>alert('pwned')</script>")
        .arg(status::LAST_ERRCODE)
        .arg("40164")
        .arg(status::LAST_ERROR_AT_MS)
        .arg(u64::MAX / 2)
        .query_async(&mut con)
        .await
        .unwrap();

    let (secrets, tokens) = forbidden(&env).await;
    assert_eq!(tokens.len(), 6);
    let res = get(&base, "/").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "text/html; charset=utf-8"
    );
    assert!(res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    let html = res.text().await.unwrap();
    for c in &env.creds {
        assert!(html.contains(&format!("id=\"cred-{}\"", c.id)), "{html}");
        assert!(html.contains(&c.appid));
    }
    assert!(html.contains("replica-1"));
    assert!(html.contains("jsapi_ticket"));
    assert!(html.contains("errcode 40164"));
    // `'` stays as is: every attribute value is double-quoted.
    assert!(
        html.contains("&lt;script&gt;alert('pwned')&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script"), "unescaped script tag");
    for s in &secrets {
        assert!(!html.contains(s.as_str()), "a secret on the status page");
    }
    for t in &tokens {
        assert!(
            !html.contains(t.as_str()),
            "a whole token on the status page"
        );
        let prefix: String = t.chars().take(8).collect();
        assert!(html.contains(&prefix), "prefix {prefix} missing");
        let nine: String = t.chars().take(9).collect();
        assert!(!html.contains(&nine), "more than 8 characters of a token");
    }

    let res = get(&base, "/status.json").await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    for s in secrets.iter().chain(&tokens) {
        assert!(
            !text.contains(s.as_str()),
            "a secret or token in status.json"
        );
    }
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["replica"], "replica-1");
    assert_eq!(v["namespace"], "wxtoken");
    assert_eq!(v["redis"]["up"], true);
    assert!(v["refreshes"]["ok"].as_u64().unwrap() >= 6, "{v}");
    let creds = v["credentials"].as_array().unwrap();
    assert_eq!(creds.len(), 3);
    // Problems first (app-1's error is newer than its last success), then
    // the others by id.
    let ids: Vec<&str> = creds.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["app-1", "app-0", "app-2"]);
    assert_eq!(creds[0]["last_errcode"], 40164);
    assert_eq!(creds[0]["problem"], true);
    assert_eq!(creds[1]["problem"], false);
    let summary = &v["summary"];
    assert_eq!(
        summary["credentials"],
        serde_json::json!({"total": 3, "with_problems": 1, "failing": 1, "paused": 0}),
        "{summary}"
    );
    assert_eq!(summary["values"]["total"], 6);
    assert_eq!(summary["values"]["fresh"], 6);
    assert_eq!(summary["by_kind"][1]["kind"], "jsapi_ticket");
    assert_eq!(summary["by_kind"][1]["fresh"], 3);
    assert_eq!(
        v["page"],
        serde_json::json!({"offset": 0, "limit": 500, "total_matching": 3})
    );
    assert_eq!(v["other_credentials_total"], 0);
    for c in creds {
        let want = env.creds.iter().find(|w| c["id"] == w.id.as_str()).unwrap();
        assert_eq!(c["appid"], want.appid.as_str());
        assert_eq!(c["mode"], "classic");
        let kinds = c["kinds"].as_array().unwrap();
        assert_eq!(kinds.len(), 2, "{c}");
        assert_eq!(kinds[0]["kind"], "access_token");
        assert_eq!(kinds[1]["kind"], "jsapi_ticket");
        for k in kinds {
            assert_eq!(k["stored"], true, "{k}");
            assert_eq!(k["health"], "fresh", "{k}");
            assert_eq!(k["token_prefix"].as_str().unwrap().chars().count(), 8);
            assert_eq!(k["replica"], "replica-1");
            assert_eq!(k["expires_in"], 120);
            assert!(k["ttl_ms"].as_u64().unwrap() > 100_000, "{k}");
            assert!(k["fence"].as_u64().unwrap() >= 1);
        }
    }

    // Filters and pages.
    let filtered = |query: &'static str| {
        let base = base.clone();
        async move {
            let res = get(&base, &format!("/status.json?{query}")).await;
            assert_eq!(res.status(), 200, "{query}");
            let v: serde_json::Value = res.json().await.unwrap();
            let ids: Vec<String> = v["credentials"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned())
                .collect();
            (ids, v["page"]["total_matching"].as_u64().unwrap())
        }
    };
    assert_eq!(filtered("problems=true").await, (vec!["app-1".into()], 1));
    assert_eq!(
        filtered("offset=1&limit=1").await,
        (vec!["app-0".into()], 3)
    );
    assert_eq!(
        filtered("id=app-2,app-0").await,
        (vec!["app-0".into(), "app-2".into()], 2)
    );
    assert_eq!(filtered("prefix=app-2").await, (vec!["app-2".into()], 1));
    let res = get(&base, "/status.json?limit=lots").await;
    assert_eq!(res.status(), 400);
    let e: serde_json::Value = res.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().starts_with("limit"), "{e}");
    let html = get(&base, "/?problems=true").await.text().await.unwrap();
    assert!(html.contains("id=\"cred-app-1\""));
    assert!(!html.contains("id=\"cred-app-0\""), "filtered out");
    assert!(html.contains("with problems"));
}

/// Where Chromium is, or a failure that says how to install it.
fn chromium() -> PathBuf {
    let candidates = ["chromium", "chromium-browser", "google-chrome"];
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .flat_map(|dir| candidates.map(|c| dir.join(c)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "headless Chromium is needed to render the status page: \
                 `apt-get install -y chromium` (Debian/Ubuntu), or set $CHROMIUM"
            )
        })
}

/// Runs headless Chromium with `extra` arguments on `url`; returns stdout.
fn run_chromium(bin: &Path, profile: &Path, extra: &[String], url: &str) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.len() > 24, "not a PNG");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

/// Renders the status page with headless Chromium in a scenario that shows
/// every state: fresh values, a refused credential (40164, nothing stored),
/// a quota-paused credential whose tokens drain into the refresh margin, a
/// pending refresh request, and two replicas sharing the work. The
/// screenshot and the rendered DOM are kept in the target's temporary
/// directory (`target/tmp/http_surface/`); with
/// `WXTOKEN_UPDATE_SCREENSHOT=1` the screenshot also replaces the README's,
/// `docs/status-page.png`, once every check below has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_status_page() {
    let bin = chromium();
    let (section, base) = http_section(true);
    let mut env = Env::start(Setup {
        credentials: 4,
        tickets: true,
        lifetime: Duration::from_secs(20),
        overlap: Duration::from_secs(5),
        margin: Duration::from_secs(8),
        max_margin_fraction: 0.5,
        config_error_retry: Duration::from_secs(60),
        quota_pause: Duration::from_secs(120),
        min_interval: Duration::from_secs(60),
        extra_config: section,
        ..Setup::default()
    })
    .await;
    let app = |i: usize| env.creds[i].appid.clone();
    env.admin.set_ip_whitelisted(&app(1), false);
    let r1 = env.spawn_replica_with("replica-1", None, &[(TOKEN_ENV, TOKEN)]);
    crate::common::wait_healthz(&base, || r1.logs()).await;
    env.setup.extra_config = String::new();
    let _r2 = env.spawn_replica("replica-2", None);

    // Everything but app-1 is stored; then app-3 runs out of daily quota
    // at its next refresh and pauses while its tokens drain.
    let mut con = env.redis_con().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in [0, 2, 3] {
        while env.token(&mut con, i).await.is_none() {
            assert!(Instant::now() < deadline, "app-{i} not stored");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    env.admin.inject(
        &app(3),
        Fault::new(FaultKind::Errcode { errcode: 45009 }).on(Endpoint::Token),
    );
    let status_key = env.keys("app-3").status();
    eventually(Duration::from_secs(25), "app-3 is paused", || {
        let (mut con, key) = (con.clone(), status_key.clone());
        async move {
            redis::cmd("HGET")
                .arg(key)
                .arg(status::PAUSED_UNTIL_MS)
                .query_async::<Option<u64>>(&mut con)
                .await
                .unwrap()
                .is_some()
        }
    })
    .await;
    // A business server reports app-2's token refused; min_interval keeps
    // the request pending.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let current = env.token(&mut con, 2).await.unwrap();
    let (code, body) = post(
        &base,
        "/refresh/app-2",
        Some(&bearer()),
        Some(serde_json::json!({ "token": current })),
    )
    .await;
    assert_eq!(code, 202, "{body}");

    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("http_surface");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot = out_dir.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let url = format!("{base}/");
    let started = Instant::now();
    run_chromium(
        &bin,
        profile.path(),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,900".into(),
        ],
        &url,
    );
    println!("screenshot in {:?}: {}", started.elapsed(), shot.display());
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert_eq!(png_size(&png), (1280, 900));
    assert!(
        png.len() > 20_000,
        "suspiciously small: {} bytes",
        png.len()
    );

    let dom = run_chromium(&bin, profile.path(), &["--dump-dom".into()], &url);
    std::fs::write(out_dir.join("status-page.html"), &dom).unwrap();
    for c in &env.creds {
        assert!(dom.contains(&format!("id=\"cred-{}\"", c.id)), "{dom}");
    }
    let bars = dom.matches("class=\"bar ").count();
    assert_eq!(bars, 8, "one bar per credential and kind:\n{dom}");
    assert!(dom.contains("class=\"bar fresh\""), "{dom}");
    assert!(
        dom.contains("class=\"bar missing\""),
        "app-1 has nothing stored"
    );
    assert!(dom.contains("errcode 40164"), "{dom}");
    assert!(dom.contains("badge warn\">paused until "), "{dom}");
    assert!(dom.contains("refresh requested"), "{dom}");
    // The "fetched by" column names the replica Redis records for each value
    // (which replica wins each lock is chance, so ask Redis, not a guess).
    for i in [0, 2, 3] {
        let keys = env.keys(&env.creds[i].id);
        let by = crate::common::replica_of(&mut con, &keys, Kind::AccessToken)
            .await
            .expect("stored");
        assert!(
            dom.contains(&format!("<td>{by}</td>")),
            "{by} for app-{i}:\n{dom}"
        );
    }
    let (secrets, tokens) = forbidden(&env).await;
    for s in secrets.iter().chain(&tokens) {
        assert!(
            !dom.contains(s.as_str()),
            "a secret or whole token rendered"
        );
    }
    if update_screenshot() {
        let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join(README_SCREENSHOT);
        std::fs::copy(&shot, &readme)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", readme.display()));
        println!("README screenshot updated: {}", readme.display());
    }
}

/// The README's screenshot of the status page, from the repository root.
const README_SCREENSHOT: &str = "docs/status-page.png";

/// Whether `$WXTOKEN_UPDATE_SCREENSHOT` asks to replace the README's
/// screenshot (set, and neither empty nor `0`).
fn update_screenshot() -> bool {
    std::env::var_os("WXTOKEN_UPDATE_SCREENSHOT").is_some_and(|v| !v.is_empty() && v != "0")
}
