//! The registry and due-queue scripts against a real redis-server:
//! registration queues each value once, a credential is deleted only when
//! its last live holder drops it, the heartbeat tells a replica that Redis
//! forgot it, and a scan reads shards in due order.

use redis::AsyncCommands;
use std::time::Duration;
use wxtoken_schema::registry::{self, Registration};
use wxtoken_schema::{registry_key, replicas_key, CredentialKeys, Kind, DUE_SHARDS};
use wxtoken_testkit::RedisServer;

mod common;
use common::connect;

const LIVE: Duration = Duration::from_secs(15);

fn facts(kinds: &[Kind]) -> Registration<'_> {
    Registration {
        appid: "wx1",
        mode: "classic",
        kinds,
        ticket_delay: Duration::from_secs(30),
    }
}

#[tokio::test]
async fn registration_queues_each_value_once_and_records_public_facts() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("ns", "oa").unwrap();
    let kinds = [Kind::AccessToken, Kind::JsapiTicket];
    let (now, _) = registry::heartbeat(&mut con, "ns", "r1").await.unwrap();
    let added = registry::register(&mut con, &[(keys.clone(), facts(&kinds))], "r1", LIVE)
        .await
        .unwrap();
    assert_eq!(added, 2);
    let at: f64 = con
        .zscore(keys.due(), keys.member(Kind::AccessToken))
        .await
        .unwrap();
    assert!((at as u64) >= now && (at as u64) < now + 5_000, "due now");
    let ticket: f64 = con
        .zscore(keys.due(), keys.member(Kind::JsapiTicket))
        .await
        .unwrap();
    assert!(
        ticket as u64 >= now + 30_000,
        "the ticket waits for its token"
    );
    // Again (another replica, a restart): nothing newly queued, due times kept.
    let _: () = con
        .zadd(keys.due(), keys.member(Kind::AccessToken), 12345)
        .await
        .unwrap();
    let added = registry::register(&mut con, &[(keys.clone(), facts(&kinds))], "r2", LIVE)
        .await
        .unwrap();
    assert_eq!(added, 0);
    let at: f64 = con
        .zscore(keys.due(), keys.member(Kind::AccessToken))
        .await
        .unwrap();
    assert_eq!(at as u64, 12345);
    let ids: Vec<String> = con.smembers(registry_key("ns")).await.unwrap();
    assert_eq!(ids, vec!["oa".to_owned()]);
    let appid: String = con.hget(keys.status(), "appid").await.unwrap();
    assert_eq!(appid, "wx1");
    let mut holders: Vec<String> = con.smembers(keys.holders()).await.unwrap();
    holders.sort();
    assert_eq!(holders, vec!["r1".to_owned(), "r2".to_owned()]);
    // r1's heartbeat grows old; r3 registering prunes it, not itself.
    let _: () = con.zadd(replicas_key("ns"), "r1", 1).await.unwrap();
    registry::register(&mut con, &[(keys.clone(), facts(&kinds))], "r3", LIVE)
        .await
        .unwrap();
    let mut holders: Vec<String> = con.smembers(keys.holders()).await.unwrap();
    holders.sort();
    assert_eq!(holders, vec!["r3".to_owned()], "r2 never sent a heartbeat");
}

#[tokio::test]
async fn a_credential_is_deleted_when_its_last_live_holder_drops_it() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("ns", "oa").unwrap();
    let kinds = [Kind::AccessToken];
    for r in ["r1", "r2"] {
        registry::heartbeat(&mut con, "ns", r).await.unwrap();
        registry::register(&mut con, &[(keys.clone(), facts(&kinds))], r, LIVE)
            .await
            .unwrap();
    }
    let _: () = con
        .set(keys.value(Kind::AccessToken), "TOKEN")
        .await
        .unwrap();
    // r1 drops it: r2 still holds it.
    assert!(!registry::unregister(&mut con, &keys, "r1", LIVE)
        .await
        .unwrap());
    let exists: bool = con.exists(keys.value(Kind::AccessToken)).await.unwrap();
    assert!(exists);
    // r2 dies (its heartbeat is old): dropping by r1 again deletes it all.
    let _: () = con.zadd(replicas_key("ns"), "r2", 1).await.unwrap();
    assert!(registry::unregister(&mut con, &keys, "r1", LIVE)
        .await
        .unwrap());
    for key in [keys.value(Kind::AccessToken), keys.status(), keys.holders()] {
        let exists: bool = con.exists(&key).await.unwrap();
        assert!(!exists, "{key} left behind");
    }
    let queued: Option<f64> = con
        .zscore(keys.due(), keys.member(Kind::AccessToken))
        .await
        .unwrap();
    assert_eq!(queued, None);
    let ids: Vec<String> = con.smembers(registry_key("ns")).await.unwrap();
    assert!(ids.is_empty());
}

#[tokio::test]
async fn the_heartbeat_says_when_redis_forgot_the_replica() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let (now, prev) = registry::heartbeat(&mut con, "ns", "r1").await.unwrap();
    assert_eq!(prev, None);
    let (_, prev) = registry::heartbeat(&mut con, "ns", "r1").await.unwrap();
    assert!(prev.is_some_and(|p| p >= now));
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    let (_, prev) = registry::heartbeat(&mut con, "ns", "r1").await.unwrap();
    assert_eq!(prev, None, "after a flush Redis does not know the replica");
    registry::retire(&mut con, "ns", "r1").await.unwrap();
    let (_, prev) = registry::heartbeat(&mut con, "ns", "r1").await.unwrap();
    assert_eq!(prev, None);
}

#[tokio::test]
async fn a_scan_reads_each_shard_in_due_order_with_paging() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    registry::heartbeat(&mut con, "ns", "r1").await.unwrap();
    let creds: Vec<CredentialKeys> = (0..200)
        .map(|i| CredentialKeys::new("ns", &format!("app-{i}")).unwrap())
        .collect();
    let kinds = [Kind::AccessToken];
    let items: Vec<_> = creds.iter().map(|k| (k.clone(), facts(&kinds))).collect();
    assert_eq!(
        registry::register(&mut con, &items, "r1", LIVE)
            .await
            .unwrap(),
        200
    );
    for (i, k) in creds.iter().enumerate() {
        let _: () = con
            .zadd(k.due(), k.member(Kind::AccessToken), 1000 + i)
            .await
            .unwrap();
    }
    let shards: Vec<(u32, usize)> = (0..DUE_SHARDS).map(|s| (s, 0)).collect();
    let (_, pages) = registry::scan(&mut con, "ns", &shards, 1000).await.unwrap();
    assert_eq!(pages.iter().map(Vec::len).sum::<usize>(), 200);
    for page in &pages {
        assert!(page.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    }
    // Paging: two entries at a time, then the next two.
    let busiest = (0..DUE_SHARDS)
        .max_by_key(|s| pages[*s as usize].len())
        .unwrap();
    let all = &pages[busiest as usize];
    let (_, first) = registry::scan(&mut con, "ns", &[(busiest, 0)], 2)
        .await
        .unwrap();
    let (_, second) = registry::scan(&mut con, "ns", &[(busiest, 2)], 2)
        .await
        .unwrap();
    assert_eq!(first[0], all[..2].to_vec());
    assert_eq!(second[0], all[2..4].to_vec());
}
