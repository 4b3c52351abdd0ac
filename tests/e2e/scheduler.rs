//! The due-queue scheduler with real replicas: credentials added and removed
//! at run time (SIGHUP), replicas holding different credentials, a cold
//! start of 2,000 values under a low shared rate on a loaded machine, and a
//! flushed Redis refilled at once with one call per value.

use crate::common::{eventually, stored, Env, Setup};
use nix::sys::signal::Signal;
use redis::AsyncCommands;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wxtoken_schema::{events_channel, Kind, UpdateEvent};
use wxtoken_sim::Endpoint;

/// Token fetches WeChat answered with a token, per credential index.
fn token_fetches(env: &Env) -> Vec<u64> {
    env.creds
        .iter()
        .map(|c| {
            env.admin
                .app_counts(&c.appid)
                .and_then(|n| n.of(Endpoint::Token).map(|c| c.issued))
                .unwrap_or(0)
        })
        .collect()
}

/// Records every update event until dropped.
struct Recorder {
    events: Arc<std::sync::Mutex<Vec<UpdateEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start(env: &Env) -> Recorder {
        let client = redis::Client::open(env.redis.url()).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe(events_channel("wxtoken")).await.unwrap();
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut stream = pubsub.into_on_message();
            while let Some(msg) = stream.next().await {
                if let Ok(ev) = UpdateEvent::parse(msg.get_payload_bytes()) {
                    sink.lock().unwrap().push(ev);
                }
            }
        });
        Recorder { events, task }
    }

    fn events(&self) -> Vec<UpdateEvent> {
        self.events.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_added_and_removed_at_run_time_on_three_replicas() {
    let env = Env::start(Setup {
        credentials: 4,
        lifetime: Duration::from_secs(6),
        margin: Duration::from_secs(2),
        ..Setup::default()
    })
    .await;
    let names = ["replica-1", "replica-2", "replica-3"];
    let mut replicas: Vec<_> = names
        .iter()
        .map(|n| env.spawn_replica_holding(n, &[0, 1]))
        .collect();
    let mut con = env.redis_con().await;
    eventually(Duration::from_secs(10), "app-0 and app-1 stored", || {
        let mut con = con.clone();
        let env = &env;
        async move { env.token(&mut con, 0).await.is_some() && env.token(&mut con, 1).await.is_some() }
    })
    .await;
    let registered: BTreeSet<String> = wxtoken_schema::index::registered(&mut con, "wxtoken")
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(registered, BTreeSet::from(["app-0".into(), "app-1".into()]));
    assert_eq!(token_fetches(&env)[2..], [0, 0]);

    // Added at run time: every replica reloads; each new value is fetched once.
    for n in names {
        env.write_config(n, &[0, 1, 2, 3]);
    }
    for r in &replicas {
        r.signal(Signal::SIGHUP);
    }
    eventually(Duration::from_secs(10), "app-2 and app-3 stored", || {
        let mut con = con.clone();
        let env = &env;
        async move { env.token(&mut con, 2).await.is_some() && env.token(&mut con, 3).await.is_some() }
    })
    .await;
    let fetches = token_fetches(&env);
    assert_eq!(fetches[2..], [1, 1], "one call per new value: {fetches:?}");

    // Dropped by one replica: the others still hold it, it stays.
    env.write_config("replica-1", &[1, 2, 3]);
    replicas[0].signal(Signal::SIGHUP);
    eventually(Duration::from_secs(10), "replica-1 reloaded", || async {
        replicas[0].logs().contains("config reloaded credentials=3")
    })
    .await;
    assert!(env.token(&mut con, 0).await.is_some());
    // Dropped by all: removed from every replica and its keys deleted.
    for (i, n) in names.iter().enumerate().skip(1) {
        env.write_config(n, &[1, 2, 3]);
        replicas[i].signal(Signal::SIGHUP);
    }
    let keys = env.keys("app-0");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = con.keys("wxtoken:{app-0}:*").await.unwrap();
        let queued: Option<f64> = con
            .zscore(keys.due(), keys.member(Kind::AccessToken))
            .await
            .unwrap();
        if left.is_empty() && queued.is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "app-0 not deleted: keys left {left:?}, queued at {queued:?}\n{}",
            replicas[1].logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let registered: BTreeSet<String> = wxtoken_schema::index::registered(&mut con, "wxtoken")
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(!registered.contains("app-0"), "{registered:?}");

    // Two more refresh cycles of the others pass; app-0 is not fetched again.
    let removed_at = token_fetches(&env)[0];
    let cycles_from = token_fetches(&env)[1];
    eventually(
        Duration::from_secs(20),
        "app-1 refreshed twice more",
        || async { token_fetches(&env)[1] >= cycles_from + 2 },
    )
    .await;
    assert_eq!(
        token_fetches(&env)[0],
        removed_at,
        "app-0 was fetched after its removal"
    );
    assert!(stored(&mut con, &keys, Kind::AccessToken).await.is_none());
    for r in &mut replicas {
        assert_eq!(r.terminate(Duration::from_secs(10)), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_different_credentials_refresh_each_value_once_by_a_holder() {
    let env = Env::start(Setup {
        credentials: 3,
        lifetime: Duration::from_secs(6),
        margin: Duration::from_secs(2),
        ..Setup::default()
    })
    .await;
    let recorder = Recorder::start(&env).await;
    let holds: BTreeMap<&str, [usize; 2]> = BTreeMap::from([
        ("replica-a", [0, 1]),
        ("replica-b", [1, 2]),
        ("replica-c", [2, 0]),
    ]);
    let replicas: Vec<_> = holds
        .iter()
        .map(|(n, h)| env.spawn_replica_holding(n, h))
        .collect();
    eventually(
        Duration::from_secs(40),
        "four refreshes of every value",
        || async { token_fetches(&env).iter().all(|n| *n >= 4) },
    )
    .await;
    drop(replicas);
    let events = recorder.events();
    for (i, c) in env.creds.iter().enumerate() {
        let mine: Vec<&UpdateEvent> = events.iter().filter(|e| e.id == c.id).collect();
        for e in &mine {
            assert!(
                holds[e.replica.as_str()].contains(&i),
                "{} was fetched by {}, which does not hold its secret",
                c.id,
                e.replica
            );
        }
        // Never two fetches in one cycle: consecutive writes are at least
        // most of the shortest refresh period (lifetime − margin − jitter,
        // 3.7 s here) apart.
        let shortest = env.setup.lifetime - env.setup.margin - env.setup.jitter;
        let min_gap = (shortest - Duration::from_millis(500)).as_millis() as u64;
        let times: Vec<u64> = env
            .admin
            .fetches(&c.appid, Endpoint::Token)
            .iter()
            .map(|f| f.since_start_ms)
            .collect();
        for pair in times.windows(2) {
            assert!(
                pair[1] - pair[0] >= min_gap,
                "{}: two fetches {} ms apart: {times:?}",
                c.id,
                pair[1] - pair[0]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_of_2000_values_under_a_low_rate_on_a_loaded_machine() {
    const N: usize = 2000;
    const RATE: f64 = 250.0;
    const BURST: u32 = 10;
    let env = Env::start(Setup {
        credentials: N,
        lifetime: Duration::from_secs(3600),
        overlap: Duration::from_secs(300),
        margin: Duration::from_secs(60),
        lock_ttl: Duration::from_secs(5),
        request_timeout: Duration::from_secs(4),
        calls_per_second: Some(RATE),
        burst: Some(BURST),
        ..Setup::default()
    })
    .await;
    // Load: two threads spinning for the whole fill.
    let stop = Arc::new(AtomicBool::new(false));
    let burners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut replicas = env.spawn_replicas(3);
    env.wait_all_stored(Duration::from_secs(180)).await;
    let filled = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for b in burners {
        b.join().unwrap();
    }
    let counts = env.admin.counts_per_app();
    let total = counts.fetches.of(Endpoint::Token).map_or(0, |c| c.calls);
    let per_app = token_fetches(&env);
    let twice: Vec<_> = per_app
        .iter()
        .enumerate()
        .filter(|(_, n)| **n != 1)
        .map(|(i, n)| (env.creds[i].id.clone(), *n))
        .collect();
    assert!(
        twice.is_empty(),
        "values not fetched exactly once: {twice:?}"
    );
    assert_eq!(total, N as u64, "WeChat token calls for {N} values");
    // The shared rate held: N calls took at least (N − burst) / rate.
    let times: Vec<u64> = env
        .creds
        .iter()
        .flat_map(|c| env.admin.fetches(&c.appid, Endpoint::Token))
        .map(|f| f.since_start_ms)
        .collect();
    let span = times.iter().max().unwrap() - times.iter().min().unwrap();
    let floor = ((N as f64 - f64::from(BURST)) / RATE * 1000.0) as u64;
    assert!(
        span >= floor * 95 / 100,
        "{N} calls in {span} ms: faster than {RATE}/s"
    );
    for r in &mut replicas {
        let logs = r.logs();
        for bad in [
            "lapsed",
            "fenced write rejected",
            "could not store",
            "could not end the lease",
        ] {
            assert!(!logs.contains(bad), "{}: {bad}", r.name);
        }
    }
    println!(
        "filled {N} values in {filled:?} ({:.0}/s, calls spanning {span} ms)",
        N as f64 / filled.as_secs_f64()
    );
    for r in &mut replicas {
        assert_eq!(r.terminate(Duration::from_secs(10)), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_is_refilled_at_once_with_one_call_per_value() {
    let env = Env::start(Setup {
        credentials: 200,
        lifetime: Duration::from_secs(3600),
        margin: Duration::from_secs(60),
        check_interval: Duration::from_secs(30),
        ..Setup::default()
    })
    .await;
    let mut replicas = env.spawn_replicas(3);
    env.wait_all_stored(Duration::from_secs(30)).await;
    let before: u64 = token_fetches(&env).iter().sum();
    assert_eq!(before, 200);

    let mut con = env.redis_con().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    let flushed = Instant::now();
    // check_interval is 30 s: a refill within 15 s comes from noticing the
    // loss (the heartbeat), not from the periodic rescan.
    env.wait_all_stored(Duration::from_secs(15)).await;
    let refilled = flushed.elapsed();
    let after = token_fetches(&env);
    assert!(
        after.iter().all(|n| *n == 2),
        "one more call per value after the flush: {after:?}"
    );
    println!("200 values refilled {refilled:?} after FLUSHALL");
    for r in &mut replicas {
        assert_eq!(r.terminate(Duration::from_secs(10)), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_token_survives_redis_going_silent_at_write_time() {
    use crate::common::Proxy;
    use wxtoken_sim::{Fault, FaultKind};
    let env = Env::start(Setup {
        credentials: 1,
        lifetime: Duration::from_secs(60),
        lock_ttl: Duration::from_secs(8),
        request_timeout: Duration::from_secs(4),
        redis_timeout: Duration::from_millis(400),
        ..Setup::default()
    })
    .await;
    let proxy = Proxy::start(env.redis.addr()).await;
    let appid = env.creds[0].appid.clone();
    env.admin.inject(
        &appid,
        Fault::new(FaultKind::Delay {
            delay: Duration::from_millis(1500),
        })
        .on(Endpoint::Token)
        .times(1),
    );
    let mut replica = env.spawn_replica("replica-1", Some(&proxy.url()));
    // The WeChat call is in flight: Redis goes silent before it returns.
    // (The one-shot fault is used up as the request reaches the simulator.)
    eventually(
        Duration::from_secs(10),
        "the call reached WeChat",
        || async { env.admin.faults(&appid).is_empty() },
    )
    .await;
    proxy.pause();
    eventually(Duration::from_secs(15), "the write failed once", || async {
        replica.logs().contains("retrying while the lease lasts")
    })
    .await;
    proxy.resume();
    let mut con = env.redis_con().await;
    eventually(Duration::from_secs(10), "the token is stored", || {
        let (env, mut con) = (&env, con.clone());
        async move { env.token(&mut con, 0).await.is_some() }
    })
    .await;
    let token = env.token(&mut con, 0).await.unwrap();
    assert_eq!(
        token_fetches(&env)[0],
        1,
        "the fetched token was stored, not fetched again"
    );
    let issued: Vec<String> = env
        .admin
        .fetches(&appid, Endpoint::Token)
        .iter()
        .filter_map(|f| match &f.outcome {
            wxtoken_sim::FetchOutcome::Issued { token_prefix, .. } => Some(token_prefix.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(issued, vec![token.chars().take(8).collect::<String>()]);
    assert_eq!(replica.terminate(Duration::from_secs(10)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_value_is_asked_for_by_the_first_reader_and_refilled_at_once() {
    let env = Env::start(Setup {
        credentials: 1,
        lifetime: Duration::from_secs(3600),
        margin: Duration::from_secs(60),
        check_interval: Duration::from_secs(30),
        ..Setup::default()
    })
    .await;
    let _replicas = env.spawn_replicas(2);
    env.wait_all_stored(Duration::from_secs(10)).await;
    let mut con = env.redis_con().await;
    let keys = env.keys(&env.creds[0].id);
    let old = env.token(&mut con, 0).await.unwrap();
    // The value is lost (evicted, deleted by hand): its queue entry still
    // says "due in an hour".
    let _: () = con
        .del(&[keys.value(Kind::AccessToken), keys.info(Kind::AccessToken)])
        .await
        .unwrap();
    let client = wxtoken_client::Client::connect(
        &env.redis.url(),
        wxtoken_client::Options::default().wait_for_token(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    let fresh = client.access_token(&env.creds[0].id).await.unwrap();
    assert_ne!(fresh, old);
    assert_eq!(token_fetches(&env)[0], 2, "one more WeChat call, exactly");
}
