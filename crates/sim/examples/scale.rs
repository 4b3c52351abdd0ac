//! How the simulator copes with many apps: start time, fetch throughput and resident memory.
//!
//! ```sh
//! cargo run --release -p wxtoken-sim --example scale -- 100000 3
//! ```
//!
//! Starts a simulator with N generated apps (default 100,000) at WeChat's real timing, fetches
//! a classic token for every app ROUNDS times (default 1) over HTTP from 16 concurrent
//! clients, and prints the start time, the fetch rate and the process's resident memory
//! (Linux `/proc/self/status`) before and after.

use std::sync::Arc;
use std::time::Instant;

use wxtoken_sim::{GeneratedApps, SimConfig, Simulator};

fn rss_mib() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or_else(|| "?".to_string(), |kb| format!("{:.1} MiB", kb / 1024.0))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let rounds: u32 = args.next().map_or(Ok(1), |a| a.parse())?;
    let generated = GeneratedApps::new(n, 0x5eed);

    println!("rss before start: {}", rss_mib());
    let started = Instant::now();
    let config = SimConfig::default().with_generated(generated.clone());
    config.validate()?;
    let validated = started.elapsed();
    let sim = Simulator::start(config, "127.0.0.1:0".parse()?).await?;
    println!(
        "start with {n} generated apps: {:?} (validate {validated:?}); rss {}",
        started.elapsed(),
        rss_mib()
    );

    let http = reqwest::Client::builder().no_proxy().build()?;
    let base = Arc::new(sim.base_url());
    let generated = Arc::new(generated);
    let fetching = Instant::now();
    const WORKERS: u32 = 16;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (http, base, generated) = (http.clone(), Arc::clone(&base), Arc::clone(&generated));
        tasks.push(tokio::spawn(async move {
            let mut failed = 0u64;
            for _ in 0..rounds {
                let mut i = w;
                while i < n {
                    let url = format!(
                        "{base}/cgi-bin/token?grant_type=client_credential&appid={}&secret={}",
                        generated.appid(i),
                        generated.secret(i)
                    );
                    let ok = match http.get(url).send().await {
                        Ok(resp) => resp.text().await.is_ok_and(|t| t.contains("access_token")),
                        Err(_) => false,
                    };
                    failed += u64::from(!ok);
                    i += WORKERS;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await?;
    }
    let took = fetching.elapsed();
    let counts = sim.admin().counts();
    println!(
        "{} fetches ({failed} failed) in {took:?}: {:.0}/s; counts: {} issued; rss {}",
        u64::from(n) * u64::from(rounds),
        (f64::from(n) * f64::from(rounds)) / took.as_secs_f64(),
        counts.fetches.token.issued,
        rss_mib()
    );
    let counting = Instant::now();
    let per_app = sim.admin().counts_per_app();
    println!(
        "counts_per_app over {} apps: {:?}",
        per_app.per_app.map_or(0, |m| m.len()),
        counting.elapsed()
    );
    sim.shutdown().await;
    Ok(())
}
