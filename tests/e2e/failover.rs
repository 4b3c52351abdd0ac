//! Replica failures: a lock holder killed mid-refresh is replaced once its
//! lock TTL runs out, with no token lapsing; a lock holder cut off from Redis past its
//! lock TTL cannot overwrite the newer token when it comes back (fencing); a
//! SIGTERMed replica releases its locks and exits 0.

use crate::common::{business_call, eventually, fence_of, replica_of, stored, Env, Proxy, Setup};
use std::time::{Duration, Instant};
use wxtoken_schema::Kind;
use wxtoken_sim::{Endpoint, Fault, FaultKind};

async fn lock_owner(
    env: &Env,
    con: &mut redis::aio::MultiplexedConnection,
    i: usize,
) -> Option<String> {
    redis::cmd("GET")
        .arg(env.keys(&env.creds[i].id).lock(Kind::AccessToken))
        .query_async(con)
        .await
        .expect("redis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_lock_holder_is_replaced_within_the_lock_ttl_and_no_token_lapses() {
    let env = Env::start(Setup {
        credentials: 1,
        // The refresh starts with about `margin` (10 s) left, more than the
        // takeover bound below, so a slow but working takeover never lapses.
        lifetime: Duration::from_secs(20),
        overlap: Duration::from_secs(3),
        margin: Duration::from_secs(10),
        max_margin_fraction: 0.5,
        jitter: Duration::from_millis(200),
        lock_ttl: Duration::from_secs(2),
        request_timeout: Duration::from_millis(1500),
        ..Setup::default()
    })
    .await;
    // The dead holder's lease must lapse (lock TTL, 2 s), another replica must
    // notice (one check interval, 1 s) and make the call (at most the request
    // timeout, 1.5 s): 4.5 s on an idle machine. The bound adds generous
    // slack, because the tests share two cores with debug builds and other
    // test binaries; it still fails a takeover that waits for the token to
    // run out, and `lapses` below checks that readers never noticed.
    let takeover_limit = Duration::from_millis(2000 + 1000 + 1500) + Duration::from_millis(3500);
    let mut replicas = env.spawn_replicas(3);
    env.wait_all_stored(Duration::from_secs(10)).await;
    let mut con = env.redis_con().await;
    let first = env.token(&mut con, 0).await.unwrap();

    // The next refresh call hangs for a second, so its caller holds the lock.
    env.admin.inject(
        &env.creds[0].appid,
        Fault::new(FaultKind::Delay {
            delay: Duration::from_secs(1),
        })
        .on(Endpoint::Token)
        .times(1),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let owner = loop {
        if let Some(o) = lock_owner(&env, &mut con, 0).await {
            break o;
        }
        assert!(Instant::now() < deadline, "no replica took the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let holder = owner.split('#').next().unwrap().to_owned();
    let victim = replicas.iter().position(|r| r.name == holder).unwrap();
    replicas[victim].kill();
    let killed_at = Instant::now();

    // Another replica refreshes once the dead holder's lock lapses.
    let http = reqwest::Client::new();
    let mut lapses = Vec::new();
    loop {
        let token = env.token(&mut con, 0).await;
        match &token {
            None => lapses.push(killed_at.elapsed()),
            Some(t) => {
                if let Err(code) = business_call(&http, &env.sim.base_url(), t).await {
                    lapses.push(killed_at.elapsed());
                    eprintln!("business call failed with {code}");
                }
                if *t != first {
                    break;
                }
            }
        }
        assert!(
            killed_at.elapsed() < takeover_limit,
            "no replica took over within {takeover_limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = killed_at.elapsed();
    let keys = env.keys(&env.creds[0].id);
    let by = replica_of(&mut con, &keys, Kind::AccessToken)
        .await
        .unwrap();
    assert_ne!(by, holder);
    assert!(lapses.is_empty(), "token lapsed at {lapses:?}");
    println!("takeover after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_write_of_a_partitioned_lock_holder_is_fenced_off() {
    let env = Env::start(Setup {
        credentials: 1,
        lifetime: Duration::from_secs(30),
        lock_ttl: Duration::from_secs(2),
        request_timeout: Duration::from_millis(1800),
        redis_timeout: Duration::from_millis(500),
        ..Setup::default()
    })
    .await;
    let keys = env.keys(&env.creds[0].id);
    let mut con = env.redis_con().await;
    let proxy = Proxy::start(env.redis.addr()).await;

    // Replica A reaches Redis through the proxy; its first WeChat call is slow.
    env.admin.inject(
        &env.creds[0].appid,
        Fault::new(FaultKind::Delay {
            delay: Duration::from_millis(1000),
        })
        .on(Endpoint::Token)
        .times(1),
    );
    let a = env.spawn_replica("replica-a", Some(&proxy.url()));
    // A holds the lock and its call has reached WeChat (the one-shot fault
    // is used up as the request arrives): only now may Redis go silent, or
    // A could not even confirm its lease.
    eventually(Duration::from_secs(20), "A's call reached WeChat", || {
        let (env, mut con) = (&env, con.clone());
        async move {
            env.admin.faults(&env.creds[0].appid).is_empty()
                && lock_owner(env, &mut con, 0)
                    .await
                    .is_some_and(|o| o.starts_with("replica-a#"))
        }
    })
    .await;
    let fence_a = fence_of(&mut con, &keys, Kind::AccessToken).await;
    assert_eq!(fence_a, None, "nothing stored yet");
    // Partition A while its WeChat call is in flight.
    proxy.pause();
    eventually(
        Duration::from_secs(20),
        "WeChat issued A's token",
        || async {
            env.admin
                .fetches(&env.creds[0].appid, Endpoint::Token)
                .len()
                == 1
        },
    )
    .await;

    // A's lock lapses; B takes over and stores a newer token.
    let _b = env.spawn_replica("replica-b", None);
    eventually(Duration::from_secs(10), "B stores a token", || {
        let (keys, mut con) = (&keys, con.clone());
        async move {
            replica_of(&mut con, keys, Kind::AccessToken)
                .await
                .as_deref()
                == Some("replica-b")
        }
    })
    .await;
    let newest = stored(&mut con, &keys, Kind::AccessToken).await.unwrap();
    let fence_b = fence_of(&mut con, &keys, Kind::AccessToken).await.unwrap();

    // Heal the partition: A's held-back write reaches Redis and must lose.
    proxy.resume();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stored(&mut con, &keys, Kind::AccessToken).await.as_deref(),
        Some(newest.as_str())
    );
    assert_eq!(
        fence_of(&mut con, &keys, Kind::AccessToken).await,
        Some(fence_b)
    );
    assert_eq!(
        replica_of(&mut con, &keys, Kind::AccessToken)
            .await
            .as_deref(),
        Some("replica-b")
    );
    let fetches = env.admin.fetches(&env.creds[0].appid, Endpoint::Token);
    assert_eq!(fetches.len(), 2, "A's and B's calls: {fetches:?}");
    assert_eq!(env.admin.check_token(&newest), Ok(()));
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_locks_and_exits_zero() {
    let env = Env::start(Setup {
        credentials: 2,
        lifetime: Duration::from_secs(30),
        lock_ttl: Duration::from_secs(20),
        request_timeout: Duration::from_secs(5),
        ..Setup::default()
    })
    .await;
    // The first calls are slow, so SIGTERM arrives while locks are held.
    for c in &env.creds {
        env.admin.inject(
            &c.appid,
            Fault::new(FaultKind::Delay {
                delay: Duration::from_millis(1500),
            })
            .on(Endpoint::Token)
            .times(1),
        );
    }
    let mut r = env.spawn_replica("replica-1", None);
    let mut con = env.redis_con().await;
    eventually(Duration::from_secs(10), "locks are held", || {
        let (env, mut con) = (&env, con.clone());
        async move {
            lock_owner(env, &mut con, 0).await.is_some()
                && lock_owner(env, &mut con, 1).await.is_some()
        }
    })
    .await;
    assert_eq!(
        r.terminate(Duration::from_secs(10)),
        Some(0),
        "logs:\n{}",
        r.logs()
    );
    for i in 0..2 {
        assert_eq!(
            lock_owner(&env, &mut con, i).await,
            None,
            "lock {i} left behind"
        );
        // The in-flight call was finished and stored, not thrown away.
        assert!(env.token(&mut con, i).await.is_some());
    }
}
