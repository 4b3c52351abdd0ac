//! Redis Cluster: three primaries (a replica each), three refresher replicas
//! and a client on `redis+cluster://…`, fifty credentials spread over every
//! primary's slots. The replicas and the client run as the README's
//! least-privilege ACL users (refresher, reader), with the `+cluster|slots`
//! the README says a cluster needs.
//!
//! Asserted: each credential is fetched exactly once per refresh cycle and
//! every fetched token is the one stored and announced (update events are
//! published from scripts on every primary and heard on one node); tokens
//! read from the cluster are valid at WeChat at every sample; a business
//! server's report replaces a refused token; the due-queue and registry
//! shards live on several primaries. Then a primary is killed and its
//! replica promoted: the replicas and the client carry on, every token is
//! valid again and stays so, and no credential is fetched more than once
//! beyond its refresh cycles (a lease cut short by the failover may be
//! repeated once: replication is asynchronous). The operator's `get` and
//! `status` work on the cluster too.
//!
//! A third-party platform on a cluster: 300 authorizers found by a
//! reconciliation (authorizer index, schedules and due-queue index in
//! different slots) are each fetched exactly once; a pushed authorization
//! is exchanged and stored; an account that leaves loses every key, its
//! schedule and its index entries on whichever nodes they live.

use crate::common::{business_call, Env, Setup};
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wxtoken_client::{Client, Options};
use wxtoken_schema::{events_channel, CredentialKeys, Kind, UpdateEvent, DUE_SHARDS};
use wxtoken_sim::{Endpoint, FetchOutcome};
use wxtoken_testkit::ClusterSet;

const N: usize = 50;

/// A plain cluster connection of the test's own (redis-rs, not wxtoken's).
async fn cluster_con(cluster: &ClusterSet) -> redis::cluster_async::ClusterConnection {
    let nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|a| format!("redis://{a}"))
        .collect();
    redis::cluster::ClusterClientBuilder::new(nodes)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
        .get_async_connection()
        .await
        .unwrap()
}

/// Every credential's stored access token (`None` for one that could not
/// be read, e.g. while its primary is down).
async fn tokens(
    con: &mut redis::cluster_async::ClusterConnection,
    env: &Env,
) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(env.creds.len());
    for c in &env.creds {
        let key = CredentialKeys::new("wxtoken", &c.id)
            .unwrap()
            .value(Kind::AccessToken);
        let v: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(con)
            .await
            .ok()
            .flatten();
        out.push(v);
    }
    out
}

/// Token fetches WeChat answered with a token, per credential: (sim ms,
/// token prefix).
fn issued(env: &Env) -> BTreeMap<String, Vec<(u64, String)>> {
    let evidence = env.admin.evidence();
    env.creds
        .iter()
        .map(|c| {
            let fetches = evidence.apps[&c.appid].fetches_of(Endpoint::Token);
            let issued = fetches
                .iter()
                .filter_map(|f| match &f.outcome {
                    FetchOutcome::Issued { token_prefix, .. } => {
                        Some((f.since_start_ms, token_prefix.clone()))
                    }
                    _ => None,
                })
                .collect();
            (c.id.clone(), issued)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_a_cluster_refresh_once_per_cycle_and_follow_a_failover() {
    let mut cluster = ClusterSet::start(3, 1)
        .expect("redis-server and redis-cli are needed (apt-get install redis-server redis-tools)");
    let env = Env::start(Setup {
        credentials: N,
        lifetime: Duration::from_secs(10),
        overlap: Duration::from_secs(3),
        margin: Duration::from_secs(3),
        max_margin_fraction: 0.4,
        jitter: Duration::from_millis(500),
        lock_ttl: Duration::from_secs(8),
        ..Setup::default()
    })
    .await;
    let url = cluster.url();
    // The README's ACL users, on every node (ACL users are per node).
    for node in cluster.nodes() {
        let mut admin = redis::Client::open(format!("redis://{node}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for user in ["refresher", "reader"] {
            let rule = format!("{} +cluster|slots", crate::acl::readme_rule(user));
            let mut cmd = redis::cmd("ACL");
            cmd.arg("SETUSER").arg(user);
            for word in rule.split_whitespace() {
                cmd.arg(word);
            }
            let () = cmd.query_async(&mut admin).await.expect("ACL SETUSER");
        }
    }
    let as_user =
        |user: &str| url.replacen("+cluster://", &format!("+cluster://{user}:{user}-pw@"), 1);

    // The credentials, the due-queue shards and the registry shards are
    // spread over every primary: nothing needs one slot for all.
    let primaries: BTreeSet<SocketAddr> = cluster.primaries().into_iter().collect();
    assert_eq!(primaries.len(), 3);
    let mut creds_on: HashMap<SocketAddr, Vec<usize>> = HashMap::new();
    for (i, c) in env.creds.iter().enumerate() {
        let keys = CredentialKeys::new("wxtoken", &c.id).unwrap();
        let at = cluster
            .primary_for_key(&keys.value(Kind::AccessToken))
            .unwrap();
        creds_on.entry(at).or_default().push(i);
    }
    assert_eq!(
        creds_on.len(),
        3,
        "credentials on every primary: {creds_on:?}"
    );
    let shard_homes: BTreeSet<SocketAddr> = (0..DUE_SHARDS)
        .map(|s| {
            cluster
                .primary_for_key(&wxtoken_schema::due_key("wxtoken", s))
                .unwrap()
        })
        .collect();
    assert!(shard_homes.len() >= 2, "queue shards on {shard_homes:?}");

    // Record update events on one node; publishes from scripts on every
    // primary reach it (classic pub/sub is broadcast over the cluster bus).
    // The node is a primary that will not be killed.
    let victim = *creds_on
        .iter()
        .max_by_key(|(_, v)| v.len())
        .map(|(a, _)| a)
        .unwrap();
    let listen = *primaries.iter().find(|a| **a != victim).unwrap();
    let client = redis::Client::open(format!("redis://{listen}")).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(events_channel("wxtoken")).await.unwrap();
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel::<UpdateEvent>();
    tokio::spawn(async move {
        let mut stream = pubsub.on_message();
        while let Some(msg) = stream.next().await {
            if let Ok(ev) = UpdateEvent::parse(msg.get_payload_bytes()) {
                if events_tx.send(ev).is_err() {
                    break;
                }
            }
        }
    });

    let replicas: Vec<_> = (1..=3)
        .map(|r| env.spawn_replica(&format!("replica-{r}"), Some(&as_user("refresher"))))
        .collect();
    let mut con = cluster_con(&cluster).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tokens(&mut con, &env).await.iter().all(Option::is_some) {
        assert!(
            Instant::now() < deadline,
            "not filled on the cluster:\n{}",
            replicas[0].logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reader = Client::connect(&as_user("reader"), Options::default())
        .await
        .expect("the client connects to the cluster as the reader user");

    // Passive refresh: WeChat refuses app-0's token; a business server
    // reports it; it is replaced with a valid one.
    let http = reqwest::Client::new();
    let refused = reader.access_token("app-0").await.unwrap();
    env.admin.revoke_tokens(&env.creds[0].appid);
    assert!(business_call(&http, &env.sim.base_url(), &refused)
        .await
        .is_err());
    reader.report_invalid("app-0", &refused).await.unwrap();
    let replaced = reader
        .replaced(
            "app-0",
            Kind::AccessToken,
            &refused,
            Duration::from_secs(20),
        )
        .await
        .expect("the reported token is replaced");
    assert_eq!(env.admin.check_token(&replaced.value), Ok(()));

    // Three refresh cycles: every token valid at every sample.
    let sampler = con.clone();
    let sample = |until: Instant| {
        let env = &env;
        let mut con = sampler.clone();
        async move {
            let (mut samples, mut failures) = (0usize, Vec::new());
            while Instant::now() < until {
                for (c, t) in env.creds.iter().zip(tokens(&mut con, env).await) {
                    samples += 1;
                    match t {
                        Some(t) => {
                            if let Err(code) = env.admin.check_token(&t) {
                                failures.push(format!("{} errcode {code}", c.id));
                            }
                        }
                        None => failures.push(format!("{} missing", c.id)),
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (samples, failures)
        }
    };
    let (samples, failures) = sample(Instant::now() + Duration::from_secs(25)).await;
    assert!(
        failures.is_empty(),
        "{} of {samples} samples failed before the failover: {failures:?}",
        failures.len()
    );

    // Exactly once per cycle so far: consecutive fetches of a credential
    // are most of a period apart, and every fetched token was stored and
    // announced (app-0 was revoked: one early fetch, by design).
    let before = issued(&env);
    let killed_at_ms = env.admin.elapsed().as_millis() as u64;
    let mut events: Vec<UpdateEvent> = Vec::new();
    while let Ok(ev) = events_rx.try_recv() {
        events.push(ev);
    }
    let shortest = env.setup.lifetime - env.setup.margin - env.setup.jitter;
    let min_gap = (shortest - Duration::from_millis(1500)).as_millis() as u64;
    let mut fetchers = BTreeSet::new();
    for c in &env.creds {
        let got = &before[&c.id];
        assert!(
            got.len() >= 3,
            "{}: only {} fetches: {got:?}",
            c.id,
            got.len()
        );
        if c.id != "app-0" {
            for pair in got.windows(2) {
                let gap = pair[1].0 - pair[0].0;
                assert!(
                    gap >= min_gap,
                    "{}: two fetches {gap} ms apart: {got:?}",
                    c.id
                );
            }
        }
        let written: Vec<String> = events
            .iter()
            .filter(|e| e.id == c.id && e.kind == Kind::AccessToken)
            .map(|e| e.token.chars().take(8).collect())
            .collect();
        let prefixes: Vec<String> = got.iter().map(|(_, p)| p.clone()).collect();
        // The subscription may have missed writes made before it was
        // confirmed; every later one was heard, in order.
        assert!(
            prefixes.ends_with(&written) && written.len() + 1 >= prefixes.len(),
            "{}: fetched {prefixes:?}, announced {written:?}",
            c.id
        );
        fetchers.extend(
            events
                .iter()
                .filter(|e| e.id == c.id)
                .map(|e| e.replica.clone()),
        );
    }
    assert!(fetchers.len() >= 2, "only {fetchers:?} ever fetched");

    // Kill the primary holding the most credentials; its replica takes over.
    let killed = Instant::now();
    cluster.kill_primary(victim).unwrap();
    let promoted = cluster
        .wait_failover(victim, Duration::from_secs(30))
        .expect("a replica is promoted");
    println!(
        "failover: {victim} -> {promoted} in {:?} ({} credentials there)",
        killed.elapsed(),
        creds_on[&victim].len()
    );

    // Every token valid again, then at every sample for two more cycles.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all_ok = tokens(&mut con, &env).await.iter().all(|t| {
            t.as_deref()
                .is_some_and(|t| env.admin.check_token(t).is_ok())
        });
        if all_ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tokens not all valid after the failover:\n{}",
            replicas[0].logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "plain GET readers saw every token again {:?} after the kill",
        killed.elapsed()
    );
    let (samples, failures) = sample(Instant::now() + Duration::from_secs(20)).await;
    assert!(
        failures.is_empty(),
        "{} of {samples} samples failed after the failover: {failures:?}",
        failures.len()
    );
    assert!(
        reader.access_token("app-1").await.is_ok(),
        "the client reads on"
    );

    // No spin and no double fetching: after the kill, a credential is
    // fetched about once per period, at most once more (a lease the
    // failover cut short).
    let after = issued(&env);
    let since_kill_ms = env.admin.elapsed().as_millis() as u64 - killed_at_ms;
    let cycles = since_kill_ms / shortest.as_millis() as u64 + 1;
    for c in &env.creds {
        let n = after[&c.id]
            .iter()
            .filter(|(at, _)| *at >= killed_at_ms)
            .count() as u64;
        assert!(
            n <= cycles + 1,
            "{}: {n} fetches in {since_kill_ms} ms (~{cycles} cycles): {:?}",
            c.id,
            after[&c.id]
        );
    }

    // The operator's commands on the cluster.
    for args in [
        vec!["get", "app-2", "--redis-url", url.as_str()],
        vec!["status", "--redis-url", url.as_str()],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxtoken"))
            .args(&args)
            .env_remove("WXTOKEN_REDIS_URL")
            .output()
            .await
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "wxtoken {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if args[0] == "get" {
            let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            assert_eq!(env.admin.check_token(&printed), Ok(()));
        }
    }
    drop(replicas);
}

/// An authorizer's stored access token on the cluster.
async fn authorizer_token(
    con: &mut redis::cluster_async::ClusterConnection,
    component: &str,
    appid: &str,
) -> Option<String> {
    let keys = CredentialKeys::authorizer("wxtoken", component, appid).unwrap();
    redis::cmd("GET")
        .arg(keys.value(Kind::AccessToken))
        .query_async(con)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_with_three_hundred_authorizers_on_a_cluster() {
    use crate::platform::{ports, push_url, spawn_on, Platform};
    const N: usize = 300;
    let cluster = ClusterSet::start(3, 0)
        .expect("redis-server and redis-cli are needed (apt-get install redis-server redis-tools)");
    let platform = Platform::new(31);
    let ports = ports(3);
    let env = Env::start(Setup {
        credentials: 0,
        lifetime: Duration::from_secs(600),
        sim_components: vec![platform.sim(push_url(ports[0], &platform))],
        lock_ttl: Duration::from_secs(8),
        request_timeout: Duration::from_secs(4),
        ..Setup::default()
    })
    .await;
    // Authorized before wxtoken ran: a reconciliation finds them.
    let appids = env.admin.bulk_authorize(&platform.appid, N as u32).unwrap();
    let replicas = spawn_on(
        &env,
        &cluster.url(),
        std::slice::from_ref(&platform),
        &ports,
        "calls_per_second = 500\nburst = 20\n",
    )
    .await;
    let mut con = cluster_con(&cluster).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut n = 0;
        for a in &appids {
            n += usize::from(
                authorizer_token(&mut con, &platform.appid, a)
                    .await
                    .is_some(),
            );
        }
        if n == N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {N} authorizers stored on the cluster:\n{}",
            replicas[0].logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let evidence = env.admin.authorizer_evidence(&platform.appid).unwrap();
    assert_eq!(
        evidence.authorizer_token_issued_histogram,
        [(1, N as u64)].into_iter().collect(),
        "one api_authorizer_token per authorizer"
    );
    // Their keys live on every primary.
    let homes: BTreeSet<SocketAddr> = appids
        .iter()
        .map(|a| {
            let k = CredentialKeys::authorizer("wxtoken", &platform.appid, a).unwrap();
            cluster
                .primary_for_key(&k.value(Kind::AccessToken))
                .unwrap()
        })
        .collect();
    assert_eq!(homes.len(), 3);

    // A new authorization, pushed: its code exchanged once, its token valid.
    let fresh = "wxclusternew0001";
    let record = env.admin.authorize(&platform.appid, fresh).await.unwrap();
    assert!(record.push.is_some_and(|p| p.success), "the push was taken");
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        if let Some(t) = authorizer_token(&mut con, &platform.appid, fresh).await {
            break t;
        }
        assert!(Instant::now() < deadline, "{}", replicas[0].logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        env.admin.check_authorizer_token(&token),
        Ok(fresh.to_owned())
    );

    // One leaves: its keys, its schedule and its index entries go, on
    // whichever nodes they live.
    let gone = &appids[0];
    env.admin.unauthorize(&platform.appid, gone).await.unwrap();
    let k = CredentialKeys::authorizer("wxtoken", &platform.appid, gone).unwrap();
    let component = wxtoken_schema::ComponentKeys::new("wxtoken", &platform.appid).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value: Option<String> = redis::cmd("GET")
            .arg(k.value(Kind::AccessToken))
            .query_async(&mut con)
            .await
            .unwrap();
        let schedule: bool = redis::cmd("EXISTS")
            .arg(k.schedule())
            .query_async(&mut con)
            .await
            .unwrap();
        let queued: Option<f64> = redis::cmd("ZSCORE")
            .arg(k.due())
            .arg(k.member(Kind::AccessToken))
            .query_async(&mut con)
            .await
            .unwrap();
        let indexed: Option<f64> = redis::cmd("ZSCORE")
            .arg(component.authorizers())
            .arg(gone)
            .query_async(&mut con)
            .await
            .unwrap();
        let listed: bool = redis::cmd("SISMEMBER")
            .arg(k.registry())
            .arg(k.id())
            .query_async(&mut con)
            .await
            .unwrap();
        if value.is_none() && !schedule && queued.is_none() && indexed.is_none() && !listed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: value {value:?} schedule {schedule} queued {queued:?} indexed {indexed:?} listed {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(replicas);
}
