//! Scale: 3 refresher replicas (the release `wxtoken run`), one local
//! redis-server and the simulator with N generated apps, for each N given.
//!
//! ```sh
//! cargo bench --bench scale -- 1000 10000 100000   # default: 1000 10000
//! WXTOKEN_BENCH_RATE=1000 cargo bench --bench scale -- 10000
//! ```
//!
//! Phases, for each N:
//! 1. **cold start** at WeChat's 7200 s lifetime: time to fill, WeChat calls
//!    (must be exactly N, counted again after a quiet spell);
//! 2. **steady state, nothing due** (30 s): Redis commands per second for
//!    all replicas, each replica's RSS and CPU;
//! 3. **FLUSHALL**: time to refill, WeChat calls for it (must be exactly N);
//! 4. **refresh cost** (N ≤ 10,000; sim lifetime 120 s so values come due
//!    every ~90 s): Redis commands per refresh for all replicas together,
//!    refresh lateness (claim − due) p50/p99 from the replicas' histograms.
//!
//! The shared WeChat call rate is `WXTOKEN_BENCH_RATE` (default 1000/s).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wxtoken_schema::{CredentialKeys, Kind};
use wxtoken_sim::{Endpoint, GeneratedApps, SimConfig, Simulator, Timing};
use wxtoken_testkit::{free_port, ClusterSet, RedisServer};

const REPLICAS: usize = 3;
const SEED: u64 = 0x5eed;

/// Where the bench's Redis runs: one server, or (with
/// `WXTOKEN_BENCH_CLUSTER=<primaries>`) a Redis Cluster.
enum Store {
    Single(RedisServer),
    Cluster(ClusterSet),
}

impl Store {
    fn start() -> Store {
        match std::env::var("WXTOKEN_BENCH_CLUSTER")
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(primaries) if primaries > 0 => Store::Cluster(
                ClusterSet::start(primaries, 0)
                    .expect("redis-server and redis-cli are needed for this benchmark"),
            ),
            _ => Store::Single(
                RedisServer::start().expect("redis-server is needed for this benchmark"),
            ),
        }
    }

    fn url(&self) -> String {
        match self {
            Store::Single(r) => r.url(),
            Store::Cluster(c) => c.url(),
        }
    }

    /// One URL per primary (the node to count commands on, to flush).
    fn primaries(&self) -> Vec<String> {
        match self {
            Store::Single(r) => vec![r.url()],
            Store::Cluster(c) => c
                .primaries()
                .iter()
                .map(|a| format!("redis://{a}"))
                .collect(),
        }
    }
}

struct Run {
    redis: Store,
    sim: Simulator,
    replicas: Vec<Child>,
    http_ports: Vec<u16>,
    dir: tempfile::TempDir,
    n: u32,
}

impl Drop for Run {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            let _ = r.kill();
            let _ = r.wait();
        }
    }
}

fn rate() -> f64 {
    std::env::var("WXTOKEN_BENCH_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1000.0)
}

async fn start(n: u32, lifetime: Duration) -> Run {
    let redis = Store::start();
    let apps = GeneratedApps::new(n, SEED);
    let sim = Simulator::start(
        SimConfig::default()
            .with_generated(apps.clone())
            .with_timing(Timing {
                expires_in: lifetime,
                ..Timing::default()
            }),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut creds = String::with_capacity(n as usize * 120);
    for i in 0..n {
        creds.push_str(&format!(
            "[[credential]]\nid = \"app-{i}\"\nappid = \"{}\"\nsecret = \"{}\"\n",
            apps.appid(i),
            apps.secret(i)
        ));
    }
    let mut replicas = Vec::new();
    let mut http_ports = Vec::new();
    for r in 1..=REPLICAS {
        let port = free_port().expect("port");
        let config = dir.path().join(format!("replica-{r}.toml"));
        std::fs::write(
            &config,
            format!(
                "[redis]\nurl = \"{}\"\n[wechat]\nbase_url = \"{}\"\ncalls_per_second = {}\n\
                 [http]\nlisten = \"127.0.0.1:{port}\"\n{creds}",
                redis.url(),
                sim.base_url(),
                rate()
            ),
        )
        .expect("config");
        let log = std::fs::File::create(dir.path().join(format!("replica-{r}.log"))).expect("log");
        replicas.push(
            Command::new(env!("CARGO_BIN_EXE_wxtoken"))
                .args(["run", "--config"])
                .arg(&config)
                .args(["--replica-id", &format!("replica-{r}")])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("wxtoken run"),
        );
        http_ports.push(port);
    }
    Run {
        redis,
        sim,
        replicas,
        http_ports,
        dir,
        n,
    }
}

/// A connection to the bench's Redis (on a cluster, pipelines are split by
/// slot).
async fn con(run: &Run) -> wxtoken_connect::Con {
    let tls = wxtoken_connect::TlsFiles::default();
    let target = wxtoken_connect::Target::parse(&run.redis.url(), &tls).expect("url");
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    wxtoken_connect::Managed::new(target, &tls, config, Duration::from_secs(30))
        .await
        .expect("connect")
        .con()
}

/// A connection to one node, patient enough for a `FLUSHALL` of 100,000
/// credentials.
async fn node_con(url: &str) -> redis::aio::MultiplexedConnection {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(120)));
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect")
}

/// Redis commands so far, over every primary: (executed, sent).
async fn redis_calls(run: &Run) -> (u64, u64) {
    let mut total = (0, 0);
    for url in run.redis.primaries() {
        let mut con = node_con(&url).await;
        let (all, sent) = common::redis_calls(&mut con).await;
        total = (total.0 + all, total.1 + sent);
    }
    total
}

/// Access tokens stored right now.
async fn stored(run: &Run) -> u32 {
    let mut con = con(run).await;
    let mut n = 0;
    for chunk in (0..run.n).collect::<Vec<_>>().chunks(5000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let keys = CredentialKeys::new("wxtoken", &format!("app-{i}")).expect("keys");
            pipe.exists(keys.value(Kind::AccessToken));
        }
        let found: Vec<bool> = pipe.query_async(&mut con).await.expect("exists");
        n += found.iter().filter(|b| **b).count() as u32;
    }
    n
}

fn token_calls(run: &Run) -> u64 {
    run.sim
        .admin()
        .counts()
        .fetches
        .of(Endpoint::Token)
        .map_or(0, |c| c.calls)
}

async fn wait_filled(run: &Run, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if token_calls(run) >= u64::from(run.n) && stored(run).await == run.n {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "not filled within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Lateness buckets (upper bound s, cumulative count) summed over replicas.
async fn lateness(run: &Run) -> Vec<(f64, u64)> {
    let http = reqwest::Client::new();
    let mut sum: Vec<(f64, u64)> = Vec::new();
    for port in &run.http_ports {
        let Ok(res) = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
        else {
            continue;
        };
        let text = res.text().await.unwrap_or_default();
        for l in text.lines() {
            let Some(rest) = l.strip_prefix("wxtoken_refresh_lateness_seconds_bucket{le=\"") else {
                continue;
            };
            let Some((le, count)) = rest.split_once("\"} ") else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let count: u64 = count.trim().parse().unwrap_or(0);
            match sum.iter_mut().find(|(b, _)| *b == le) {
                Some(e) => e.1 += count,
                None => sum.push((le, count)),
            }
        }
    }
    sum.sort_by(|a, b| a.0.total_cmp(&b.0));
    sum
}

fn quantile(buckets: &[(f64, u64)], before: &[(f64, u64)], q: f64) -> String {
    let delta: Vec<(f64, u64)> = buckets
        .iter()
        .map(|(le, c)| {
            let b = before.iter().find(|(l, _)| l == le).map_or(0, |x| x.1);
            (*le, c.saturating_sub(b))
        })
        .collect();
    let total = delta.last().map_or(0, |x| x.1);
    if total == 0 {
        return "n/a".into();
    }
    let want = (total as f64 * q).ceil() as u64;
    delta
        .iter()
        .find(|(_, c)| *c >= want)
        .map_or("n/a".into(), |(le, _)| format!("≤ {le} s"))
}

async fn scale(n: u32) {
    println!(
        "\n== N = {n} access tokens, {REPLICAS} replicas, rate {}/s, Redis {}",
        rate(),
        match std::env::var("WXTOKEN_BENCH_CLUSTER") {
            Ok(p) => format!("Cluster of {p} primaries"),
            Err(_) => "single server".into(),
        }
    );
    let run = start(n, Duration::from_secs(7200)).await;
    let fill = wait_filled(&run, Duration::from_secs(u64::from(n) / 50 + 120)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let calls = token_calls(&run);
    println!(
        "cold start: filled in {:.1} s ({:.0}/s); WeChat calls {calls} for {n} values{}",
        fill.as_secs_f64(),
        f64::from(n) / fill.as_secs_f64(),
        if calls == u64::from(n) {
            " (exactly N)"
        } else {
            "  <-- NOT N"
        }
    );

    let window = Duration::from_secs(30);
    let c0 = redis_calls(&run).await;
    let u0: Vec<(f64, f64)> = run
        .replicas
        .iter()
        .map(|r| common::proc_usage(r.id()))
        .collect();
    tokio::time::sleep(window).await;
    let c1 = redis_calls(&run).await;
    let u1: Vec<(f64, f64)> = run
        .replicas
        .iter()
        .map(|r| common::proc_usage(r.id()))
        .collect();
    println!(
        "steady, nothing due: {:.1} Redis commands/s executed ({:.1}/s sent by the replicas; all replicas together)",
        (c1.0 - c0.0) as f64 / window.as_secs_f64(),
        (c1.1 - c0.1) as f64 / window.as_secs_f64()
    );
    for (i, (a, b)) in u0.iter().zip(&u1).enumerate() {
        println!(
            "  replica-{}: RSS {:.0} MB, CPU {:.2} % of a core",
            i + 1,
            b.0,
            (b.1 - a.1) / window.as_secs_f64() * 100.0
        );
    }

    let before = token_calls(&run);
    for url in run.redis.primaries() {
        let mut flush = node_con(&url).await;
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut flush)
            .await
            .expect("flushall");
    }
    let refill = wait_filled_after(&run, before).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let calls = token_calls(&run) - before;
    println!(
        "FLUSHALL: all back in {:.1} s; WeChat calls {calls} for {n} values{}",
        refill.as_secs_f64(),
        if calls == u64::from(n) {
            " (exactly N)"
        } else {
            "  <-- NOT N"
        }
    );
    drop(run);

    if n <= 10_000 {
        let run = start(n, Duration::from_secs(120)).await;
        wait_filled(&run, Duration::from_secs(u64::from(n) / 50 + 120)).await;
        let window = Duration::from_secs(120);
        let (c0, f0, l0) = (
            redis_calls(&run).await,
            token_calls(&run),
            lateness(&run).await,
        );
        tokio::time::sleep(window).await;
        let (c1, f1, l1) = (
            redis_calls(&run).await,
            token_calls(&run),
            lateness(&run).await,
        );
        let refreshes = f1 - f0;
        println!(
            "refresh cost (lifetime 120 s, {:.0} s window): {refreshes} refreshes; Redis commands per refresh, all replicas, scans and heartbeats included: {:.1} sent, {:.1} executed (with those inside scripts); lateness p50 {}, p99 {}",
            window.as_secs_f64(),
            (c1.1 - c0.1) as f64 / refreshes.max(1) as f64,
            (c1.0 - c0.0) as f64 / refreshes.max(1) as f64,
            quantile(&l1, &l0, 0.5),
            quantile(&l1, &l0, 0.99),
        );
        let _ = &run.dir;
    }
}

async fn wait_filled_after(run: &Run, before: u64) -> Duration {
    let started = Instant::now();
    loop {
        if token_calls(run) >= before + u64::from(run.n) && stored(run).await == run.n {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(u64::from(run.n) / 50 + 120),
            "not refilled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with this
    }
    let ns: Vec<u32> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let ns = if ns.is_empty() {
        vec![1000, 10_000]
    } else {
        ns
    };
    println!(
        "machine: {} cores; {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |s| s.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned())
            )
            .unwrap_or_default()
    );
    for n in ns {
        scale(n).await;
    }
}
