//! `wxtoken_connect` against a real Redis Cluster (testkit's `ClusterSet`:
//! `redis-server` processes on free ports, joined with `redis-cli`): pipelines
//! across slots answer exactly as on a single server, atomic pipelines work
//! per slot, `Managed::nodes` lets a `SCAN` visit every primary, pub/sub
//! crosses nodes, and the connection follows a failover.

use futures_util::StreamExt;
use redis::aio::ConnectionManagerConfig;
use redis::{Pipeline, Script, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wxtoken_connect::{Con, Managed, Target, TlsFiles};
use wxtoken_testkit::{ClusterSet, RedisServer};

/// Generous: the machine may be loaded.
const TIMEOUT: Duration = Duration::from_secs(5);

async fn managed(url: &str) -> Managed {
    let tls = TlsFiles::default();
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    Managed::new(Target::parse(url, &tls).unwrap(), &tls, config, TIMEOUT)
        .await
        .unwrap()
}

async fn cluster(primaries: usize, replicas: usize) -> ClusterSet {
    tokio::task::spawn_blocking(move || ClusterSet::start(primaries, replicas))
        .await
        .unwrap()
        .expect("redis-server and redis-cli must be installed")
}

/// One hash tag per primary: `{t<n>}` tags whose slots are owned by
/// different primaries, in the order of `set.primaries()`.
fn tags_on_every_primary(set: &ClusterSet) -> Vec<String> {
    let primaries = set.primaries();
    let mut tags = vec![String::new(); primaries.len()];
    for n in 0.. {
        let tag = format!("{{t{n}}}");
        let owner = set.primary_for_key(&tag).unwrap();
        let i = primaries.iter().position(|p| *p == owner).unwrap();
        if tags[i].is_empty() {
            tags[i] = tag;
        }
        if tags.iter().all(|t| !t.is_empty()) {
            return tags;
        }
    }
    unreachable!()
}

/// The replies with `TIME`'s answers (two numbers) replaced by a marker,
/// and a sanity check that they are times.
fn without_times(replies: Vec<Value>) -> Vec<Value> {
    replies
        .into_iter()
        .map(|v| match &v {
            Value::Array(parts) if parts.len() == 2 => {
                let secs: u64 = redis::from_redis_value_ref(&parts[0]).unwrap();
                assert!(secs > 1_600_000_000, "{v:?}");
                Value::SimpleString("TIME".into())
            }
            _ => v,
        })
        .collect()
}

async fn run(con: &mut Con, pipe: &Pipeline) -> Result<Vec<Value>, String> {
    match tokio::time::timeout(TIMEOUT * 2, pipe.query_async::<Vec<Value>>(con)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{:?} {:?}", e.kind(), e.code())),
        Err(_) => panic!("the pipeline did not answer"),
    }
}

/// The pipelines of one credential-like workload over keys under `tags`
/// (one per primary), with scripts loaded in the pipeline, `TIME`, ignored
/// commands and a failing command.
fn workload(tags: &[String], script: &Script) -> (Pipeline, Pipeline, Pipeline) {
    let mut plain = redis::pipe();
    plain.cmd("TIME");
    for (i, t) in tags.iter().enumerate() {
        plain.set(format!("{t}:v"), format!("value-{i}")).ignore();
    }
    plain.load_script(script).ignore();
    for (i, t) in tags.iter().enumerate() {
        let mut inv = script.key(format!("{t}:v"));
        inv.key(format!("{t}:n")).arg(i + 1);
        plain.invoke_script(&inv);
    }
    for t in tags {
        plain.get(format!("{t}:v")).pttl(format!("{t}:v"));
    }
    // WRONGTYPE on the second primary's key.
    plain.hset(format!("{}:v", tags[1]), "f", "x");
    plain.incr(format!("{}:n", tags[2]), 10).cmd("TIME");
    plain.ignore_errors();

    // The same reads, atomic: one MULTI/EXEC per slot on a cluster.
    let mut atomic = redis::pipe();
    atomic.atomic().ignore_errors().cmd("TIME");
    for t in tags {
        atomic
            .get(format!("{t}:v"))
            .get(format!("{t}:n"))
            .hgetall(format!("{t}:h"));
    }
    atomic.hset(format!("{}:v", tags[0]), "f", "x");
    atomic.expire(format!("{}:n", tags[2]), 100).ignore();
    atomic.ttl(format!("{}:n", tags[2]));

    // Without ignore_errors, the failing command fails the pipeline.
    let mut failing = redis::pipe();
    failing
        .get(format!("{}:v", tags[0]))
        .hset(format!("{}:v", tags[1]), "f", "x")
        .get(format!("{}:v", tags[2]));
    (plain, atomic, failing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_slot_pipelines_answer_exactly_like_a_single_server() {
    let set = cluster(3, 0).await;
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    let tags = tags_on_every_primary(&set);
    assert_eq!(tags.len(), 3);
    let script = Script::new(
        "redis.call('SET', KEYS[1], redis.call('GET', KEYS[1]) .. '+') \
         return redis.call('INCRBY', KEYS[2], ARGV[1])",
    );
    let (plain, atomic, failing) = workload(&tags, &script);

    let single = managed(&server.url()).await;
    let clustered = managed(&set.url()).await;
    let (mut s, mut c) = (single.con(), clustered.con());
    assert!(matches!(c, Con::Cluster(_)), "{c:?}");

    // Twice: the second run finds the script loaded and the keys set.
    for round in 0..2 {
        let on_server = run(&mut s, &plain).await.map(without_times);
        let on_cluster = run(&mut c, &plain).await.map(without_times);
        assert_eq!(on_cluster, on_server, "round {round}");
        let replies = on_cluster.unwrap();
        // TIME, 3 scripts, 3 × (GET, PTTL), HSET, INCRBY, TIME.
        assert_eq!(replies.len(), 1 + 3 + 6 + 1 + 1 + 1, "{replies:?}");
        assert!(
            matches!(&replies[10], Value::ServerError(e) if e.code() == "WRONGTYPE"),
            "{replies:?}"
        );

        let on_server = run(&mut s, &atomic).await;
        let on_cluster = run(&mut c, &atomic).await;
        assert_eq!(
            on_cluster.clone().map(without_times),
            on_server.map(without_times),
            "round {round}"
        );
        assert_eq!(on_cluster.unwrap().len(), 1 + 9 + 1 + 1);

        let on_server = run(&mut s, &failing).await;
        let on_cluster = run(&mut c, &failing).await;
        assert!(on_server.is_err(), "{on_server:?}");
        assert_eq!(on_cluster, on_server, "round {round}");
    }

    // Typed answers, as wxtoken's schema code reads them.
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("TIME")
        .get(format!("{}:v", tags[0]))
        .get(format!("{}:v", tags[2]));
    let (time, a, b): ((u64, u64), String, String) = pipe.query_async(&mut c).await.unwrap();
    assert!(time.0 > 1_600_000_000);
    assert_eq!((a.as_str(), b.as_str()), ("value-0+", "value-2+"));
    // Scripts invoked on their own (EVALSHA, loaded on NOSCRIPT).
    let fresh = Script::new("return redis.call('GET', KEYS[1])");
    for t in &tags {
        let v: String = fresh
            .key(format!("{t}:v"))
            .invoke_async(&mut c)
            .await
            .unwrap();
        assert!(v.starts_with("value-"), "{v}");
    }
    // A keyless pipeline and one with commands redis-rs fans out (PING,
    // a DEL across slots) run in order.
    let mut pipe = redis::pipe();
    pipe.cmd("TIME")
        .set(format!("{}:x", tags[0]), 1)
        .set(format!("{}:x", tags[1]), 1)
        .cmd("PING")
        .del(&[format!("{}:x", tags[0]), format!("{}:x", tags[1])])
        .exists(format!("{}:x", tags[0]))
        .exists(format!("{}:x", tags[1]));
    let on_server = run(&mut s, &pipe).await.map(without_times);
    let on_cluster = run(&mut c, &pipe).await.map(without_times);
    assert_eq!(on_cluster, on_server);
    assert_eq!(
        on_cluster.unwrap()[3..],
        [
            Value::SimpleString("PONG".into()),
            Value::Int(2),
            Value::Int(0),
            Value::Int(0)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_let_a_scan_find_the_keys_of_every_primary() {
    let set = cluster(3, 0).await;
    let m = managed(&set.url()).await;
    let mut con = m.con();
    let keys: BTreeSet<String> = (0..90).map(|i| format!("scan:{i}")).collect();
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.set(k, 1).ignore();
    }
    pipe.query_async::<()>(&mut con).await.unwrap();

    let nodes = m.nodes().await.unwrap();
    let mut addrs: Vec<String> = nodes.iter().map(|n| n.node().unwrap()).collect();
    addrs.sort();
    let mut primaries: Vec<String> = set.primaries().iter().map(|a| a.to_string()).collect();
    primaries.sort();
    assert_eq!(addrs, primaries);

    let mut found = BTreeSet::new();
    for mut node in nodes {
        let addr: SocketAddr = node.node().unwrap().parse().unwrap();
        let mut cursor = 0u64;
        let mut here = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("scan:*")
                .arg("COUNT")
                .arg(50)
                .query_async(&mut node)
                .await
                .unwrap();
            for k in batch {
                assert_eq!(set.primary_for_key(&k).unwrap(), addr, "{k} on {addr}");
                here += 1;
                found.insert(k);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert!(here > 0, "{addr} holds none of the 90 keys");
        // A pipeline on a node goes to that node whatever its keys.
        let (dbsize,): (u64,) = redis::pipe()
            .cmd("DBSIZE")
            .query_async(&mut node)
            .await
            .unwrap();
        assert_eq!(dbsize, here);
    }
    assert_eq!(found, keys);

    // resolve() (the operator's tools): a client for a seed that answers.
    let node = Target::parse(&set.url(), &TlsFiles::default())
        .unwrap()
        .resolve(TIMEOUT)
        .await
        .unwrap();
    assert!(set.nodes().contains(&client_addr(&node)));
    let mut one = node.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("PING").query_async(&mut one).await.unwrap();

    // A single server: the one connection.
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    let single = managed(&server.url()).await;
    let nodes = single.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert!(matches!(nodes[0], Con::Server(_)));
}

fn client_addr(c: &redis::Client) -> SocketAddr {
    match c.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(h, p) => format!("{h}:{p}").parse().unwrap(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_from_a_script_reaches_a_subscriber_on_another_node() {
    let set = cluster(3, 0).await;
    let m = managed(&set.url()).await;
    let key = "{events}:x";
    let owner = set.primary_for_key(key).unwrap();

    // client() rotates through the nodes.
    let seen: BTreeSet<SocketAddr> = (0..6).map(|_| client_addr(&m.client())).collect();
    assert!(seen.len() >= 2, "{seen:?}");
    let subscriber = (0..10)
        .map(|_| m.client())
        .find(|c| client_addr(c) != owner)
        .expect("a node other than the key's owner");

    let mut pubsub = subscriber.get_async_pubsub().await.unwrap();
    pubsub.subscribe("wx:events").await.unwrap();
    let mut messages = pubsub.on_message();

    let publish = Script::new("return redis.call('PUBLISH', ARGV[1], ARGV[2])");
    let mut con = m.con();
    publish
        .key(key)
        .arg("wx:events")
        .arg("from-a-script")
        .invoke_async::<i64>(&mut con)
        .await
        .unwrap();
    let msg = tokio::time::timeout(TIMEOUT * 2, messages.next())
        .await
        .expect("the event crossed the cluster bus")
        .unwrap();
    assert_eq!(msg.get_channel_name(), "wx:events");
    assert_eq!(msg.get_payload::<String>().unwrap(), "from-a-script");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_follows_a_failover() {
    let mut set = cluster(3, 1).await;
    let m = managed(&set.url()).await;
    let tags = tags_on_every_primary(&set);
    let victim = set.primary_for_key(&tags[0]).unwrap();
    let mut con = m.con();
    let mut pipe = redis::pipe();
    for t in &tags {
        pipe.set(format!("{t}:before"), 1).ignore();
    }
    pipe.query_async::<()>(&mut con).await.unwrap();

    set.kill_primary(victim).unwrap();
    let killed_at = Instant::now();
    let (set, promoted) = tokio::task::spawn_blocking(move || {
        let promoted = set.wait_failover(victim, Duration::from_secs(60));
        (set, promoted)
    })
    .await
    .unwrap();
    let promoted = promoted.expect("a replica is promoted");
    let failed_over = killed_at.elapsed();

    // The caller retries its step, as the refresher and the client do; the
    // same connection (no new Managed, no saw_error) gets there.
    let start = Instant::now();
    let mut attempts = 0;
    let key = format!("{}:after", tags[0]);
    loop {
        attempts += 1;
        let mut con = m.con();
        // Atomic snapshot-like reads first — of the failed-over slot alone
        // (one MULTI/EXEC, the pipeline as it is), then of every slot (one
        // per slot) — then a plain pipeline that writes.
        let mut one = redis::pipe();
        one.atomic()
            .cmd("TIME")
            .get(format!("{}:before", tags[0]))
            .pttl(format!("{}:before", tags[0]));
        let mut read = redis::pipe();
        read.atomic().cmd("TIME");
        for t in &tags {
            read.get(format!("{t}:before"));
        }
        let mut write = redis::pipe();
        write.set(&key, "v").ignore().get(&key);
        for t in &tags[1..] {
            write.get(format!("{t}:before"));
        }
        let both = async {
            let one = one.query_async::<Vec<Value>>(&mut con).await?;
            assert_eq!(one.len(), 3, "{one:?}");
            let read = read.query_async::<Vec<Value>>(&mut con).await?;
            let write = write.query_async::<Vec<Value>>(&mut con).await?;
            Ok::<_, redis::RedisError>((read, write))
        };
        match tokio::time::timeout(TIMEOUT, both).await {
            Ok(Ok((read, write))) => {
                assert_eq!(read.len(), 1 + tags.len(), "{read:?}");
                assert_eq!(write[0], Value::BulkString(b"v".to_vec()), "{write:?}");
                break;
            }
            other => assert!(
                start.elapsed() < Duration::from_secs(30),
                "still failing after {:?} ({attempts} attempts): {other:?}",
                start.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "failover took {failed_over:?}; the connection worked again {:?} later ({attempts} attempts)",
        start.elapsed()
    );
    assert_eq!(set.primary_for_key(&key).unwrap(), promoted);

    // nodes() names the promoted primary (once the cluster says so).
    let start = Instant::now();
    loop {
        let nodes = m.nodes().await.unwrap();
        let addrs: Vec<String> = nodes.iter().filter_map(Con::node).collect();
        if addrs.contains(&promoted.to_string()) && !addrs.contains(&victim.to_string()) {
            assert_eq!(addrs.len(), 3, "{addrs:?}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{addrs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // client() hands out live nodes: within a round of the rotation one
    // answers.
    let mut answered = false;
    for _ in 0..set.nodes().len() {
        let c = m.client();
        let ping = async {
            let mut con = c.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut con).await
        };
        if let Ok(Ok(_)) = tokio::time::timeout(TIMEOUT, ping).await {
            answered = true;
            break;
        }
    }
    assert!(answered);
}

#[tokio::test]
async fn an_unreachable_cluster_is_not_an_error_at_start_and_errors_show_no_password() {
    let port = wxtoken_testkit::free_port().unwrap();
    let url = format!("redis+cluster://u:s3cret@127.0.0.1:{port}");
    let tls = TlsFiles::default();
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(300)))
        .set_response_timeout(Some(Duration::from_millis(300)));
    let m = Managed::new(
        Target::parse(&url, &tls).unwrap(),
        &tls,
        config,
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        redis::cmd("GET")
            .arg("k")
            .query_async::<Option<String>>(&mut m.con()),
    )
    .await
    .expect("bounded")
    .unwrap_err();
    let text = wxtoken_connect::describe(&e, &tls);
    eprintln!("{text}");
    assert!(!text.contains("s3cret"), "{text}");
    // Why no node was reached: the seed's own answer.
    assert!(text.contains(&format!("seed 127.0.0.1:{port}")), "{text}");
    let e = m.nodes().await.unwrap_err().to_string();
    assert!(!e.contains("s3cret"), "{e}");
    // A client for a node is still handed out (it fails when used).
    assert_eq!(client_addr(&m.client()).port(), port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_is_reached_with_the_tls_files_and_failures_name_the_file() {
    let pki = wxtoken_testkit::TestPki::generate().unwrap();
    let set = {
        let (server, client_cert, client_key) = (
            pki.server(true),
            pki.client_cert.clone(),
            pki.client_key.clone(),
        );
        tokio::task::spawn_blocking(move || {
            ClusterSet::start_tls(3, 0, &server, Some((&client_cert, &client_key)))
        })
        .await
        .unwrap()
        .expect("redis-server and redis-cli with TLS")
    };
    let url = set.url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    let tls = TlsFiles {
        ca_file: Some(pki.ca.clone()),
        cert_file: Some(pki.client_cert.clone()),
        key_file: Some(pki.client_key.clone()),
    };
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    let m = Managed::new(
        Target::parse(&url, &tls).unwrap(),
        &tls,
        config.clone(),
        TIMEOUT,
    )
    .await
    .unwrap();
    let mut con = m.con();
    let tags = tags_on_every_primary(&set);
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("TIME");
    for t in &tags {
        pipe.set(format!("{t}:k"), t).ignore().get(format!("{t}:k"));
    }
    let replies: Vec<Value> = pipe.query_async(&mut con).await.unwrap();
    assert_eq!(replies.len(), 1 + tags.len(), "{replies:?}");
    // nodes() and client() name the TLS ports.
    let nodes = m.nodes().await.unwrap();
    assert_eq!(nodes.len(), 3);
    for mut n in nodes {
        let _: String = redis::cmd("PING").query_async(&mut n).await.unwrap();
    }
    let node = m.client();
    assert!(matches!(
        node.get_connection_info().addr(),
        redis::ConnectionAddr::TcpTls { .. }
    ));
    let mut sub = node.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("PING").query_async(&mut sub).await.unwrap();

    // The wrong CA: the error, described, names the CA file.
    let wrong = TlsFiles {
        ca_file: Some(pki.other_ca.clone()),
        ..tls.clone()
    };
    let short = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let m = Managed::new(
        Target::parse(&url, &wrong).unwrap(),
        &wrong,
        short.clone(),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let e = tokio::time::timeout(
        Duration::from_secs(20),
        redis::cmd("GET")
            .arg("k")
            .query_async::<Option<String>>(&mut m.con()),
    )
    .await
    .expect("bounded")
    .unwrap_err();
    let text = wxtoken_connect::describe(&e, &wrong);
    eprintln!("{text}");
    assert!(
        text.contains(&pki.other_ca.display().to_string()),
        "the CA file is named: {text}"
    );

    // No client certificate where the nodes require one.
    let anonymous = TlsFiles {
        ca_file: Some(pki.ca.clone()),
        ..TlsFiles::default()
    };
    let m = Managed::new(
        Target::parse(&url, &anonymous).unwrap(),
        &anonymous,
        short,
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let e = tokio::time::timeout(
        Duration::from_secs(20),
        redis::cmd("GET")
            .arg("k")
            .query_async::<Option<String>>(&mut m.con()),
    )
    .await
    .expect("bounded")
    .unwrap_err();
    let text = wxtoken_connect::describe(&e, &anonymous);
    eprintln!("{text}");
    assert!(
        wxtoken_connect::explain(&e, &anonymous).is_some(),
        "explained: {text}"
    );
}
