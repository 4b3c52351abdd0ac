//! Third-party platform scale: 3 refresher replicas (the release `wxtoken
//! run`), one local redis-server and the simulator with one platform and N
//! authorizers bulk-created there (authorized before wxtoken ever ran: only
//! WeChat's `api_get_authorizer_list` knows them), for each N given.
//!
//! ```sh
//! cargo bench --bench authorizers -- 10000 100000   # default: 10000
//! WXTOKEN_BENCH_RATE=2000 cargo bench --bench authorizers -- 10000
//! ```
//!
//! Phases, for each N:
//! 1. **cold start** at WeChat's 7200 s lifetime: the verify ticket is
//!    pushed, the component token fetched, the reconciliation finds N
//!    authorizers, each gets its token: time to fill, `api_authorizer_token`
//!    calls per authorizer (must be exactly 1 each);
//! 2. **steady state, nothing due** (30 s): Redis commands per second for
//!    all replicas, each replica's RSS and CPU;
//! 3. **Redis loss** (`FLUSHALL`: tickets, tokens and refresh tokens gone):
//!    time until every authorizer is back, calls per authorizer (exactly 2
//!    each by then);
//! 4. **refresh cycle** (N ≤ 10,000; lifetime 120 s, a 240 s window):
//!    `api_authorizer_token` calls per stored refresh (goal 1.00).
//!
//! The platform's shared call rate is `WXTOKEN_BENCH_RATE` (default 1000/s).

mod common;

use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wxtoken_schema::{CredentialKeys, Kind, Subject, UpdateEvent};
use wxtoken_sim::{ComponentConfig, SimConfig, Simulator, Timing};
use wxtoken_testkit::{free_port, RedisServer};

const REPLICAS: usize = 3;
const COMPONENT: &str = "wxbenchcomponent01";
const SECRET: &str = "bench-component-secret-0123456789";
const TOKEN: &str = "benchmessagetoken";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

struct Run {
    redis: RedisServer,
    sim: Simulator,
    replicas: Vec<Child>,
    appids: Vec<String>,
    _dir: tempfile::TempDir,
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
    let redis = RedisServer::start().expect("redis-server is needed for this benchmark");
    let ports: Vec<u16> = (0..REPLICAS).map(|_| free_port().expect("port")).collect();
    let sim = Simulator::start(
        SimConfig::default()
            .with_component(ComponentConfig {
                appid: COMPONENT.into(),
                secret: SECRET.into(),
                token: TOKEN.into(),
                encoding_aes_key: AES_KEY.into(),
                push_url: Some(format!(
                    "http://127.0.0.1:{}/wechat/component/platform",
                    ports[0]
                )),
            })
            .with_timing(Timing {
                expires_in: lifetime,
                authorizer_token_daily_quota: u32::MAX,
                ..Timing::default()
            }),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("simulator");
    // Authorized before wxtoken ever ran: only WeChat's list knows them.
    let appids = sim
        .admin()
        .bulk_authorize(COMPONENT, n)
        .expect("bulk authorize");
    assert_eq!(appids.len(), n as usize);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut replicas = Vec::new();
    for (r, port) in ports.iter().enumerate() {
        let config = dir.path().join(format!("replica-{}.toml", r + 1));
        std::fs::write(
            &config,
            format!(
                "[redis]\nurl = \"{}\"\n[wechat]\nbase_url = \"{}\"\n\
                 [http]\nlisten = \"127.0.0.1:{port}\"\n\
                 [[component]]\nid = \"platform\"\nappid = \"{COMPONENT}\"\nsecret_env = \"C_SECRET\"\n\
                 token_env = \"C_TOKEN\"\nencoding_aes_key_env = \"C_KEY\"\ncalls_per_second = {}\nburst = 50\n",
                redis.url(),
                sim.base_url(),
                rate()
            ),
        )
        .expect("config");
        let log =
            std::fs::File::create(dir.path().join(format!("replica-{}.log", r + 1))).expect("log");
        replicas.push(
            Command::new(env!("CARGO_BIN_EXE_wxtoken"))
                .args(["run", "--config"])
                .arg(&config)
                .args(["--replica-id", &format!("replica-{}", r + 1)])
                .env("RUST_LOG", "warn")
                .env("C_SECRET", SECRET)
                .env("C_TOKEN", TOKEN)
                .env("C_KEY", AES_KEY)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("wxtoken run"),
        );
    }
    Run {
        redis,
        sim,
        replicas,
        appids,
        _dir: dir,
    }
}

async fn con(run: &Run) -> redis::aio::MultiplexedConnection {
    redis::Client::open(run.redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// Authorizer access tokens stored right now.
async fn stored(run: &Run) -> usize {
    let mut con = con(run).await;
    let mut n = 0;
    for chunk in run.appids.chunks(5000) {
        let mut pipe = redis::pipe();
        for a in chunk {
            let keys = CredentialKeys::authorizer("wxtoken", COMPONENT, a).expect("keys");
            pipe.exists(keys.value(Kind::AccessToken));
        }
        let found: Vec<bool> = pipe.query_async(&mut con).await.expect("exists");
        n += found.iter().filter(|b| **b).count();
    }
    n
}

/// How many authorizers made how many successful `api_authorizer_token` calls.
fn histogram(run: &Run) -> BTreeMap<u64, u64> {
    run.sim
        .admin()
        .authorizer_evidence(COMPONENT)
        .expect("component")
        .authorizer_token_issued_histogram
}

fn issued(run: &Run) -> u64 {
    histogram(run).iter().map(|(calls, n)| calls * n).sum()
}

async fn wait_all(run: &Run, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if stored(run).await == run.appids.len() {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "not filled within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn verdict(h: &BTreeMap<u64, u64>, each: u64, n: usize) -> &'static str {
    if h.len() == 1 && h.get(&each) == Some(&(n as u64)) {
        " (exactly as many as authorizers)"
    } else {
        "  <-- NOT one per authorizer"
    }
}

async fn scale(n: u32) {
    println!(
        "\n== N = {n} authorizers of one platform, {REPLICAS} replicas, platform rate {}/s",
        rate()
    );
    let limit = Duration::from_secs(u64::from(n) * 3 / rate().max(1.0) as u64 + 180);
    let run = start(n, Duration::from_secs(7200)).await;
    let fill = wait_all(&run, limit).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let h = histogram(&run);
    println!(
        "cold start (ticket push, component token, reconciliation, N tokens): all stored in {:.1} s ({:.0}/s); api_authorizer_token per authorizer {h:?}{}",
        fill.as_secs_f64(),
        f64::from(n) / fill.as_secs_f64(),
        verdict(&h, 1, run.appids.len())
    );

    let window = Duration::from_secs(30);
    let c0 = common::redis_calls(&mut con(&run).await).await;
    let u0: Vec<(f64, f64)> = run
        .replicas
        .iter()
        .map(|r| common::proc_usage(r.id()))
        .collect();
    tokio::time::sleep(window).await;
    let c1 = common::redis_calls(&mut con(&run).await).await;
    let u1: Vec<(f64, f64)> = run
        .replicas
        .iter()
        .map(|r| common::proc_usage(r.id()))
        .collect();
    println!(
        "steady, nothing due: {:.1} Redis commands/s executed ({:.1}/s sent; all replicas together)",
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

    let mut con = con(&run).await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut con)
        .await
        .expect("flushall");
    let back = wait_all(&run, limit).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let h = histogram(&run);
    println!(
        "Redis loss (FLUSHALL): every authorizer back in {:.1} s, refresh tokens from api_get_authorizer_list; api_authorizer_token per authorizer {h:?}{}",
        back.as_secs_f64(),
        verdict(&h, 2, run.appids.len())
    );
    drop(run);

    if n <= 10_000 {
        let run = start(n, Duration::from_secs(120)).await;
        wait_all(&run, limit).await;
        // Count the fenced writes of authorizer tokens from update events.
        let client = redis::Client::open(run.redis.url()).expect("url");
        let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
        pubsub.subscribe("wxtoken:events").await.expect("subscribe");
        let writes = Arc::new(AtomicU64::new(0));
        let counter = {
            let writes = writes.clone();
            tokio::spawn(async move {
                let mut stream = pubsub.into_on_message();
                while let Some(msg) = stream.next().await {
                    let payload: Vec<u8> = msg.get_payload().unwrap_or_default();
                    if let Ok(ev) = UpdateEvent::parse(&payload) {
                        if ev.kind == Kind::AccessToken
                            && matches!(Subject::parse(&ev.id), Some(Subject::Authorizer { .. }))
                        {
                            writes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        let (i0, w0) = (issued(&run), writes.load(Ordering::Relaxed));
        let window = Duration::from_secs(240);
        tokio::time::sleep(window).await;
        let (i1, w1) = (issued(&run), writes.load(Ordering::Relaxed));
        counter.abort();
        println!(
            "refresh cycle (lifetime 120 s, {:.0} s window): {} refreshes stored, {} api_authorizer_token calls issued: {:.3} calls per refresh",
            window.as_secs_f64(),
            w1 - w0,
            i1 - i0,
            (i1 - i0) as f64 / (w1 - w0).max(1) as f64
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with this
    }
    let ns: Vec<u32> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let ns = if ns.is_empty() { vec![10_000] } else { ns };
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for n in ns {
        scale(n).await;
    }
}
