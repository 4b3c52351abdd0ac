//! Propagation delay: from the start of a refresher's fenced write to the
//! moment each of 100 connected clients serves the new token from its cache.
//! Reports p50, p99 and max over 100 clients × ROUNDS writes.
//! Goal: p99 under 20 ms on loopback.
//!
//! Run: `cargo bench -p wxtoken-client --bench propagation`.

use std::time::{Duration, Instant};
use wxtoken_client::{Client, Kind, Options};
use wxtoken_schema::CredentialKeys;
use wxtoken_testkit::RedisServer;

const CLIENTS: usize = 100;
const ROUNDS: usize = 50;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with this
    }
    let server = RedisServer::start().expect("redis-server is needed for this benchmark");
    let mut con = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys = CredentialKeys::new("wxtoken", "bench").expect("keys");
    let write = |token: String| {
        let (mut con, keys) = (con.clone(), keys.clone());
        async move {
            // Timed from before the claim: two more loopback round trips than
            // the write alone, a bound from above.
            let started = Instant::now();
            wxtoken_schema::testing::store(
                &mut con,
                &keys,
                Kind::AccessToken,
                &token,
                Duration::from_secs(7200),
                "bench",
            )
            .await
            .expect("write");
            started
        }
    };
    write("T-0".into()).await;
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let c = Client::connect(&server.url(), Options::default())
            .await
            .expect("client");
        assert_eq!(c.access_token("bench").await.expect("read"), "T-0");
        clients.push(c);
    }

    let mut delays = Vec::with_capacity(CLIENTS * ROUNDS);
    for round in 1..=ROUNDS {
        let old = format!("T-{}", round - 1);
        let new = format!("T-{round}");
        let mut waiters = Vec::with_capacity(CLIENTS);
        for c in &clients {
            let (c, old) = (c.clone(), old.clone());
            waiters.push(tokio::spawn(async move {
                let t = c
                    .replaced("bench", Kind::AccessToken, &old, Duration::from_secs(5))
                    .await
                    .expect("replaced");
                (t.value, Instant::now())
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // all waiting
        let started = write(new.clone()).await;
        for w in waiters {
            let (value, at) = w.await.expect("join");
            assert_eq!(value, new);
            delays.push(at.saturating_duration_since(started));
        }
    }
    delays.sort();
    let pct = |p: f64| delays[((delays.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    println!(
        "propagation: {CLIENTS} clients × {ROUNDS} writes: p50 {:?}, p99 {:?}, max {:?}",
        pct(0.50),
        pct(0.99),
        delays[delays.len() - 1]
    );
    let _: () = redis::cmd("PING")
        .query_async(&mut con)
        .await
        .expect("ping");
}
