//! The registry and due-queue scripts against a real redis-server:
//! registration queues each value once, a credential is deleted only when
//! its last live holder drops it, the heartbeat tells a replica that Redis
//! forgot it, and a scan reads shards in due order.

use redis::AsyncCommands;
use std::time::Duration;
use wxtoken_schema::registry::{self, Registration};
use wxtoken_schema::{index, replicas_key, CredentialKeys, Kind, DUE_SHARDS};
use wxtoken_testkit::RedisServer;

mod common;
use common::connect;

const LIVE: Duration = Duration::from_secs(15);

/// The value's due time by its schedule (the truth) and by the due-queue
/// index.
async fn due(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &CredentialKeys,
    kind: Kind,
) -> (Option<u64>, Option<u64>) {
    let truth = index::due_at(con, keys, kind).await.unwrap();
    let indexed: Option<f64> = con.zscore(keys.due(), keys.member(kind)).await.unwrap();
    (truth, indexed.map(|f| f as u64))
}

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
    let (at, indexed) = due(&mut con, &keys, Kind::AccessToken).await;
    let at = at.expect("scheduled");
    assert!(at >= now && at < now + 5_000, "due now");
    assert_eq!(indexed, Some(at), "the index follows the schedule");
    let (ticket, indexed) = due(&mut con, &keys, Kind::JsapiTicket).await;
    assert!(
        ticket.is_some_and(|t| t >= now + 30_000),
        "the ticket waits for its token"
    );
    assert_eq!(indexed, ticket);
    // Again (another replica, a restart): nothing newly scheduled, due
    // times kept; an index entry that was lost is put back.
    let _: () = con
        .hset(keys.schedule(), Kind::AccessToken.as_str(), 12345)
        .await
        .unwrap();
    let _: () = con
        .zrem(keys.due(), keys.member(Kind::AccessToken))
        .await
        .unwrap();
    let added = registry::register(&mut con, &[(keys.clone(), facts(&kinds))], "r2", LIVE)
        .await
        .unwrap();
    assert_eq!(added, 0);
    assert_eq!(
        due(&mut con, &keys, Kind::AccessToken).await,
        (Some(12345), Some(12345))
    );
    let ids = index::registered(&mut con, "ns").await.unwrap();
    assert_eq!(ids, vec!["oa".to_owned()]);
    assert!(index::is_registered(&mut con, &keys).await.unwrap());
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
    let before = due(&mut con, &keys, Kind::AccessToken).await;
    // r1 drops it: r2 still holds it (its index entries, taken out first,
    // are put back).
    assert!(!registry::unregister(&mut con, &keys, "r1", LIVE)
        .await
        .unwrap());
    let exists: bool = con.exists(keys.value(Kind::AccessToken)).await.unwrap();
    assert!(exists);
    assert_eq!(due(&mut con, &keys, Kind::AccessToken).await, before);
    assert!(index::is_registered(&mut con, &keys).await.unwrap());
    // r2 dies (its heartbeat is old): dropping by r1 again deletes it all.
    let _: () = con.zadd(replicas_key("ns"), "r2", 1).await.unwrap();
    assert!(registry::unregister(&mut con, &keys, "r1", LIVE)
        .await
        .unwrap());
    for key in [
        keys.value(Kind::AccessToken),
        keys.status(),
        keys.holders(),
        keys.schedule(),
    ] {
        let exists: bool = con.exists(&key).await.unwrap();
        assert!(!exists, "{key} left behind");
    }
    let queued: Option<f64> = con
        .zscore(keys.due(), keys.member(Kind::AccessToken))
        .await
        .unwrap();
    assert_eq!(queued, None);
    let ids = index::registered(&mut con, "ns").await.unwrap();
    assert!(ids.is_empty());
}

#[tokio::test]
async fn an_index_entry_without_a_schedule_is_dropped_unless_a_registration_raced_it() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("ns", "oa").unwrap();
    // An orphan (its subject's schedule gone, e.g. hostile or old data).
    let _: () = con
        .zadd(keys.due(), keys.member(Kind::AccessToken), 5)
        .await
        .unwrap();
    assert_eq!(
        index::drop_orphan(&mut con, &keys, Kind::AccessToken)
            .await
            .unwrap(),
        None
    );
    assert_eq!(due(&mut con, &keys, Kind::AccessToken).await, (None, None));
    // A registration wrote its schedule after the claim looked and its
    // entry before the removal: the entry is put back at the schedule.
    let _: () = con
        .hset(keys.schedule(), Kind::AccessToken.as_str(), 777)
        .await
        .unwrap();
    let _: () = con
        .zadd(keys.due(), keys.member(Kind::AccessToken), 5)
        .await
        .unwrap();
    assert_eq!(
        index::drop_orphan(&mut con, &keys, Kind::AccessToken)
            .await
            .unwrap(),
        Some(777)
    );
    assert_eq!(
        due(&mut con, &keys, Kind::AccessToken).await,
        (Some(777), Some(777))
    );
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
        index::follow(&mut con, k, Kind::AccessToken, 1000 + i as u64)
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

#[tokio::test]
async fn data_of_key_schema_1_is_upgraded_once() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    // What wxtoken 1 left: one registry set, due times only in the queue,
    // authorization times only in the platform's index.
    let oa = CredentialKeys::new("ns", "oa").unwrap();
    let platform = CredentialKeys::component("ns", "wxcomp").unwrap();
    let shop = CredentialKeys::authorizer("ns", "wxcomp", "wxshop").unwrap();
    let component = wxtoken_schema::ComponentKeys::new("ns", "wxcomp").unwrap();
    let _: () = redis::cmd("SADD")
        .arg("ns:credentials")
        .arg(&[oa.id(), platform.id(), shop.id()])
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = con
        .zadd(oa.due(), oa.member(Kind::AccessToken), 111)
        .await
        .unwrap();
    let _: () = con
        .zadd(oa.due(), oa.member(Kind::JsapiTicket), 222)
        .await
        .unwrap();
    let _: () = con
        .zadd(shop.due(), shop.member(Kind::AccessToken), 333)
        .await
        .unwrap();
    let _: () = con.zadd(oa.due(), "not a member", 1).await.unwrap();
    let _: () = con
        .zadd(component.authorizers(), "wxshop", 4444)
        .await
        .unwrap();

    let set = index::migrate_v1(&mut con, "ns").await.unwrap();
    assert_eq!(set, 3);
    assert_eq!(
        due(&mut con, &oa, Kind::AccessToken).await,
        (Some(111), Some(111))
    );
    assert_eq!(
        due(&mut con, &oa, Kind::JsapiTicket).await,
        (Some(222), Some(222))
    );
    assert_eq!(
        due(&mut con, &shop, Kind::AccessToken).await,
        (Some(333), Some(333))
    );
    let at: Option<u64> = con.hget(shop.schedule(), "authorized_at").await.unwrap();
    assert_eq!(at, Some(4444));
    let mut ids = index::registered(&mut con, "ns").await.unwrap();
    ids.sort();
    let mut want = vec![
        oa.id().to_owned(),
        platform.id().to_owned(),
        shop.id().to_owned(),
    ];
    want.sort();
    assert_eq!(ids, want);
    let old: bool = con.exists("ns:credentials").await.unwrap();
    assert!(!old, "the old registry is gone");
    // Once done, nothing changes: a moved schedule stays where it is.
    let _: () = con
        .hset(oa.schedule(), Kind::AccessToken.as_str(), 999)
        .await
        .unwrap();
    assert_eq!(index::migrate_v1(&mut con, "ns").await.unwrap(), 0);
    assert_eq!(
        index::due_at(&mut con, &oa, Kind::AccessToken)
            .await
            .unwrap(),
        Some(999)
    );
}
