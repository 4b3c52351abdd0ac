//! The operator view at scale: one replica holding 20,000 credentials
//! (`WXTOKEN_SCALE_CREDENTIALS` to change the number) whose WeChat is
//! unreachable, so nothing is ever stored. `/status.json` and the status
//! page must summarize all of them, page through them and filter them.
//!
//! Timings are printed (run with `--nocapture`), never asserted: the
//! machine is shared.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wxtoken_testkit::RedisServer;

/// Credentials held by the replica (overridable for measurements).
fn count() -> usize {
    std::env::var("WXTOKEN_SCALE_CREDENTIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Credentials `c00000` … that also keep a JS-SDK ticket.
const WITH_TICKET: usize = 1_000;
/// Ids registered in the namespace by "other replicas".
const OTHERS: usize = 1_500;

fn secret(i: usize) -> String {
    format!("s3cr3t-{i:025}")
}

fn id(i: usize) -> String {
    format!("c{i:05}")
}

/// A `wxtoken run` child, killed when dropped.
struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(redis_url: &str, port: u16, n: usize) -> String {
    // WeChat at a port nobody listens on: every call fails at once. A low
    // shared rate keeps the failing refreshes from loading the machine.
    let mut text = format!(
        "[redis]\nurl = \"{redis_url}\"\ntimeout = \"5s\"\n\n\
         [wechat]\nbase_url = \"http://127.0.0.1:1\"\ncalls_per_second = 2\nburst = 1\n\
         connect_timeout = \"1s\"\n\n\
         [http]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    for i in 0..n {
        text.push_str(&format!(
            "\n[[credential]]\nid = \"{}\"\nappid = \"wx{i:016}\"\nsecret = \"{}\"\n",
            id(i),
            secret(i)
        ));
        if i < WITH_TICKET {
            text.push_str("tickets = [\"jsapi\"]\n");
        }
    }
    text
}

async fn get(base: &str, path: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let res = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, text, started.elapsed())
}

async fn json(base: &str, path: &str) -> serde_json::Value {
    let (status, text, took) = get(base, path).await;
    assert_eq!(status, 200, "{path}: {text}");
    println!("GET {path}: {took:?}, {} bytes", text.len());
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    v["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

fn wait_http(base: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(base.trim_start_matches("http://")) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the HTTP surface did not come up; log:\n{}",
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_summarizes_pages_and_filters_many_credentials() {
    let n = count();
    assert!(n >= 2_000, "at least 2,000 credentials");
    let redis = RedisServer::start().expect("redis-server is needed for the tests");
    let dir = tempfile::tempdir().unwrap();
    let port = wxtoken_testkit::free_port().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let config_path = dir.path().join("scale.toml");
    std::fs::write(&config_path, config(&redis.url(), port, n)).unwrap();

    // Other replicas' credentials, registered beside ours.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let others: Vec<String> = (0..OTHERS).map(|i| format!("other-{i:05}")).collect();
    let mut pipe = redis::pipe();
    for id in &others {
        let keys = wxtoken_schema::CredentialKeys::new("wxtoken", id).unwrap();
        pipe.sadd(keys.registry(), id).ignore();
    }
    let _: () = pipe.query_async(&mut con).await.unwrap();

    let log = dir.path().join("replica.log");
    let started = Instant::now();
    let _replica = Replica(
        Command::new(env!("CARGO_BIN_EXE_wxtoken"))
            .args(["run", "--config"])
            .arg(&config_path)
            .args(["--replica-id", "scale-1"])
            .env("RUST_LOG", "warn")
            .env_remove("WXTOKEN_REDIS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning wxtoken run"),
    );
    wait_http(&base, &log);
    println!("{n} credentials: HTTP up after {:?}", started.elapsed());

    // The summary covers every credential, whatever the page.
    let v = json(&base, "/status.json").await;
    let s = &v["summary"];
    assert_eq!(s["credentials"]["total"], n);
    assert_eq!(s["credentials"]["with_problems"], n, "nothing is stored");
    assert_eq!(s["values"]["total"], n + WITH_TICKET);
    assert_eq!(s["values"]["missing"], n + WITH_TICKET);
    assert_eq!(s["values"]["fresh"], 0);
    let by_kind = s["by_kind"].as_array().unwrap();
    assert_eq!(by_kind.len(), 2, "{s}");
    assert_eq!(by_kind[0]["kind"], "access_token");
    assert_eq!(by_kind[0]["missing"], n);
    assert_eq!(by_kind[0]["total"], n);
    assert_eq!(by_kind[1]["kind"], "jsapi_ticket");
    assert_eq!(by_kind[1]["missing"], WITH_TICKET);
    assert_eq!(v["redis"]["up"], true);
    assert_eq!(
        v["page"],
        serde_json::json!({"offset": 0, "limit": 500, "total_matching": n})
    );
    let first = ids(&v);
    assert_eq!(first.len(), 500);
    assert_eq!(first[0], "c00000");
    assert_eq!(first[499], "c00499", "all have problems, so by id");
    let c0 = &v["credentials"][0];
    assert_eq!(c0["problem"], true);
    assert_eq!(c0["kinds"][0]["health"], "missing");
    assert_eq!(c0["kinds"][1]["kind"], "jsapi_ticket");
    assert_eq!(v["other_credentials"].as_array().unwrap().len(), 1_000);
    assert_eq!(v["other_credentials"][0], "other-00000");
    assert_eq!(v["other_credentials_total"], OTHERS);

    // Paging: the last page, a page past the end, the largest page.
    let v = json(&base, &format!("/status.json?offset={}&limit=100", n - 10)).await;
    assert_eq!(ids(&v), (n - 10..n).map(id).collect::<Vec<_>>());
    assert_eq!(v["page"]["total_matching"], n);
    assert_eq!(v["summary"]["credentials"]["total"], n);
    let v = json(&base, &format!("/status.json?offset={n}")).await;
    assert!(ids(&v).is_empty());
    let v = json(&base, "/status.json?offset=1000&limit=5000").await;
    let page = ids(&v);
    assert_eq!(page.len(), 5_000);
    assert_eq!(page[0], id(1_000));
    assert_eq!(page[4_999], id(5_999));
    let v = json(&base, "/status.json?limit=0").await;
    assert!(ids(&v).is_empty());
    assert_eq!(v["summary"]["credentials"]["total"], n, "summary only");

    // Filters.
    let v = json(&base, "/status.json?prefix=c001").await;
    assert_eq!(ids(&v), (100..200).map(id).collect::<Vec<_>>());
    assert_eq!(v["page"]["total_matching"], 100);
    assert_eq!(v["summary"]["credentials"]["total"], n, "summary of all");
    let v = json(&base, "/status.json?id=c00007,c00003&id=c00005&id=nope").await;
    assert_eq!(ids(&v), ["c00003", "c00005", "c00007"]);
    let v = json(&base, "/status.json?problems=true&limit=10&offset=5").await;
    assert_eq!(v["page"]["total_matching"], n);
    assert_eq!(ids(&v), (5..15).map(id).collect::<Vec<_>>());
    let v = json(&base, "/status.json?problems=true&prefix=other").await;
    assert!(ids(&v).is_empty(), "others' credentials are not held here");

    // Bad parameters: 400, naming the parameter.
    for (query, name) in [
        ("limit=5001", "limit"),
        ("offset=-1", "offset"),
        ("problems=maybe", "problems"),
        ("id=a%20b", "id"),
        ("prefix=%3Cscript%3E", "prefix"),
        ("order=id", "unknown parameter"),
    ] {
        let (status, text, _) = get(&base, &format!("/status.json?{query}")).await;
        assert_eq!(status, 400, "{query}: {text}");
        let e: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            e["error"].as_str().unwrap().starts_with(name),
            "{query}: {text}"
        );
    }
    let (status, text, _) = get(&base, "/?limit=501").await;
    assert_eq!(status, 400, "the page shows at most 500: {text}");
    assert!(text.starts_with("limit"), "{text}");
    let res = reqwest::get(format!("{base}/?prefix=%3Cscript%3E"))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "text/plain; charset=utf-8"
    );
    assert!(res.text().await.unwrap().starts_with("prefix"));

    // The page: summary first, then 500 rows, then a line about the rest.
    let (status, html, took) = get(&base, "/").await;
    println!("GET /: {took:?}, {} bytes", html.len());
    assert_eq!(status, 200);
    let summary = html.find("<section class=\"summary\">").expect("summary");
    let table = html.find("<table class=\"creds\">").expect("table");
    assert!(summary < table);
    assert_eq!(html.matches("<tbody class=\"cred\"").count(), 500);
    let missing = format!("{} missing", thousands(n + WITH_TICKET));
    assert!(html.contains(&missing), "{missing}");
    let more = format!("<b>{} more</b>", thousands(n - 500));
    assert!(html.contains(&more), "{more}");
    assert!(html.contains("status.json?offset=500&amp;limit=5000"));
    assert!(
        html.contains("and 1,400 more"),
        "others beyond the 100 listed"
    );
    let (status, html, took) = get(&base, "/?prefix=c001").await;
    println!("GET /?prefix=c001: {took:?}");
    assert_eq!(status, 200);
    assert_eq!(html.matches("<tbody class=\"cred\"").count(), 100);
    assert!(!html.contains("more</b>"));
    let (_, html, _) = get(&base, &format!("/?problems=true&offset={}", n - 3)).await;
    assert_eq!(html.matches("<tbody class=\"cred\"").count(), 3);
    assert!(html.contains("previous page"));

    // Timings, warm: a few requests of each.
    for path in [
        "/",
        "/status.json",
        "/status.json?limit=5000",
        "/?prefix=c001",
    ] {
        let mut took = Vec::new();
        for _ in 0..3 {
            let (status, _, t) = get(&base, path).await;
            assert_eq!(status, 200);
            took.push(t);
        }
        took.sort();
        println!("{n} credentials: GET {path}: median {:?} of 3", took[1]);
    }
    let (_, html, _) = get(&base, "/").await;
    let (_, text, _) = get(&base, "/status.json?limit=5000").await;
    for i in [0, 1, 499, 4_999] {
        assert!(!html.contains(&secret(i)) && !text.contains(&secret(i)));
    }
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
