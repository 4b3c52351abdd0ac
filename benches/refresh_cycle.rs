//! Bench binary: what one refresh cycle costs with three replicas.
//!
//! Starts a redis-server, the simulator and three `wxtoken run` processes, lets
//! every credential get its first token, resets Redis' command statistics, and
//! then runs several refresh cycles. Reports WeChat calls per credential per
//! cycle (the goal is exactly 1.00), calls per token lifetime, and Redis
//! commands per refresh, by command.
//!
//! Run: `cargo bench --bench refresh_cycle` (about 40 s).

#[path = "../tests/e2e/common/mod.rs"]
mod common;

use common::{Env, Setup};
use futures_util::StreamExt;
use std::time::{Duration, Instant};
use wxtoken_schema::events_channel;
use wxtoken_sim::{Endpoint, FetchOutcome};

const CREDENTIALS: usize = 20;
const LIFETIME: Duration = Duration::from_secs(6);
const MEASURE: Duration = Duration::from_secs(30);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches` probe with this
    }
    let env = Env::start(Setup {
        credentials: CREDENTIALS,
        lifetime: LIFETIME,
        overlap: Duration::from_secs(2),
        margin: Duration::from_secs(2),
        max_margin_fraction: 0.4,
        jitter: Duration::from_millis(500),
        // Long enough that only due times and events wake the loops, as in
        // production where lifetimes are 7200 s and check_interval is 30 s.
        check_interval: Duration::from_secs(30),
        ..Setup::default()
    })
    .await;
    let _replicas = env.spawn_replicas(3);
    env.wait_all_stored(Duration::from_secs(20)).await;

    let mut con = env.redis_con().await;
    let before: usize = env
        .creds
        .iter()
        .map(|c| env.admin.fetches(&c.appid, Endpoint::Token).len())
        .sum();
    // Count the tokens stored during the window from the update events.
    let client = redis::Client::open(env.redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(events_channel("wxtoken")).await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut con)
        .await
        .unwrap();
    let started = Instant::now();
    let mut stored = 0usize;
    {
        let mut messages = pubsub.on_message();
        let window = tokio::time::sleep(MEASURE);
        tokio::pin!(window);
        loop {
            tokio::select! {
                Some(_) = messages.next() => stored += 1,
                _ = &mut window => break,
            }
        }
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await
        .unwrap();
    let elapsed = started.elapsed();

    let mut refreshes = 0usize;
    let mut failed = 0usize;
    for c in &env.creds {
        for f in env.admin.fetches(&c.appid, Endpoint::Token).iter() {
            match f.outcome {
                FetchOutcome::Issued { .. } => refreshes += 1,
                _ => failed += 1,
            }
        }
    }
    refreshes -= before;
    let mut stats = common::commandstats(&stats);
    stats.remove("info");
    stats.remove("config|resetstat");
    let total: u64 = stats.values().sum();

    println!("refresh_cycle: 3 replicas, {CREDENTIALS} credentials, lifetime {LIFETIME:?}, margin 2 s, measured {elapsed:.1?}");
    println!("  WeChat calls:                 {refreshes} ({failed} failed)");
    println!("  tokens stored:                {stored}");
    println!(
        "  WeChat calls per refresh cycle (calls / tokens stored): {:.2}",
        refreshes as f64 / stored as f64
    );
    println!(
        "  calls per credential per token lifetime: {:.2}  (= lifetime / (lifetime - margin))",
        refreshes as f64 / CREDENTIALS as f64 / (elapsed.as_secs_f64() / LIFETIME.as_secs_f64())
    );
    println!(
        "  Redis commands per refresh:   {:.1}",
        total as f64 / refreshes as f64
    );
    for (name, calls) in &stats {
        println!("    {name:<16} {:>6.2}", *calls as f64 / refreshes as f64);
    }
}
