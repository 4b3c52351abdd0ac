//! The Lua scripts against a real redis-server: lock grants are exclusive and
//! fenced, renew/release are owner-checked, and the fenced write refuses
//! writers that lost their lock or carry an older fence.

use redis::AsyncCommands;
use std::time::Duration;
use wxtoken_schema::{
    acquire_lock, events_channel, info, release_lock, renew_lock, write_token, CredentialKeys,
    Kind, TokenWrite, UpdateEvent, WriteOutcome,
};
use wxtoken_testkit::RedisServer;

mod common;
use common::connect;

fn write<'a>(owner: &'a str, fence: u64, token: &'a str) -> TokenWrite<'a> {
    TokenWrite {
        kind: Kind::AccessToken,
        owner,
        fence,
        token,
        ttl: Duration::from_secs(60),
        expires_in: 7200,
        replica: "r1",
    }
}

#[tokio::test]
async fn lock_is_exclusive_and_each_grant_gets_a_larger_fence() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("wxtoken", "app").unwrap();
    let ttl = Duration::from_secs(5);

    let f1 = acquire_lock(&mut con, &keys, Kind::AccessToken, "a#1", ttl)
        .await
        .unwrap()
        .expect("free lock is granted");
    assert_eq!(
        acquire_lock(&mut con, &keys, Kind::AccessToken, "b#1", ttl)
            .await
            .unwrap(),
        None,
        "held lock is not granted twice"
    );
    // Tickets have their own lock but share the fence counter.
    let ft = acquire_lock(&mut con, &keys, Kind::JsapiTicket, "b#2", ttl)
        .await
        .unwrap()
        .unwrap();
    assert!(ft > f1);

    assert!(!release_lock(&mut con, &keys, Kind::AccessToken, "b#1")
        .await
        .unwrap());
    assert!(!renew_lock(&mut con, &keys, Kind::AccessToken, "b#1", ttl)
        .await
        .unwrap());
    assert!(renew_lock(&mut con, &keys, Kind::AccessToken, "a#1", ttl)
        .await
        .unwrap());
    assert!(release_lock(&mut con, &keys, Kind::AccessToken, "a#1")
        .await
        .unwrap());
    let f2 = acquire_lock(&mut con, &keys, Kind::AccessToken, "b#3", ttl)
        .await
        .unwrap()
        .unwrap();
    assert!(f2 > ft);
}

#[tokio::test]
async fn lock_lapses_after_its_ttl() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("wxtoken", "app").unwrap();
    acquire_lock(
        &mut con,
        &keys,
        Kind::AccessToken,
        "a#1",
        Duration::from_millis(100),
    )
    .await
    .unwrap()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(acquire_lock(
        &mut con,
        &keys,
        Kind::AccessToken,
        "b#1",
        Duration::from_secs(5)
    )
    .await
    .unwrap()
    .is_some());
}

#[tokio::test]
async fn write_stores_plain_value_with_real_ttl_and_info_and_publishes() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("ns", "app").unwrap();

    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(events_channel("ns")).await.unwrap();

    let fence = acquire_lock(
        &mut con,
        &keys,
        Kind::AccessToken,
        "a#1",
        Duration::from_secs(5),
    )
    .await
    .unwrap()
    .unwrap();
    let outcome = write_token(&mut con, &keys, &write("a#1", fence, "TOKEN-1/\"x"))
        .await
        .unwrap();
    let WriteOutcome::Written { expires_at_ms } = outcome else {
        panic!("write rejected: {outcome:?}")
    };

    let value: String = con.get(keys.value(Kind::AccessToken)).await.unwrap();
    assert_eq!(value, "TOKEN-1/\"x", "GET returns the token as is");
    let pttl: i64 = con.pttl(keys.value(Kind::AccessToken)).await.unwrap();
    assert!((55_000..=60_000).contains(&pttl), "pttl {pttl}");
    let info_pttl: i64 = con.pttl(keys.info(Kind::AccessToken)).await.unwrap();
    assert!(
        (55_000..=60_000).contains(&info_pttl),
        "info pttl {info_pttl}"
    );

    let stored_fence: u64 = con
        .hget(keys.info(Kind::AccessToken), info::FENCE)
        .await
        .unwrap();
    assert_eq!(stored_fence, fence);
    let stored_exp: u64 = con
        .hget(keys.info(Kind::AccessToken), info::EXPIRES_AT_MS)
        .await
        .unwrap();
    assert_eq!(stored_exp, expires_at_ms);
    let refreshed: u64 = con
        .hget(keys.info(Kind::AccessToken), info::REFRESHED_AT_MS)
        .await
        .unwrap();
    assert_eq!(expires_at_ms - refreshed, 60_000);
    let replica: String = con
        .hget(keys.info(Kind::AccessToken), info::REPLICA)
        .await
        .unwrap();
    assert_eq!(replica, "r1");
    let expires_in: u64 = con
        .hget(keys.info(Kind::AccessToken), info::EXPIRES_IN)
        .await
        .unwrap();
    assert_eq!(expires_in, 7200);

    use futures_util::StreamExt;
    let msg = tokio::time::timeout(Duration::from_secs(2), pubsub.on_message().next())
        .await
        .unwrap()
        .unwrap();
    let event = UpdateEvent::parse(msg.get_payload_bytes()).unwrap();
    assert_eq!(
        event,
        UpdateEvent {
            v: 1,
            id: "app".into(),
            kind: Kind::AccessToken,
            token: "TOKEN-1/\"x".into(),
            expires_at_ms,
            fence,
            replica: "r1".into(),
        }
    );
}

#[tokio::test]
async fn write_is_refused_after_the_lock_is_lost_or_by_an_older_fence() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("wxtoken", "app").unwrap();
    let kind = Kind::AccessToken;

    // A takes the lock, then stalls past its TTL.
    let fa = acquire_lock(&mut con, &keys, kind, "a#1", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // B takes over and writes the newer token.
    let fb = acquire_lock(&mut con, &keys, kind, "b#1", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let outcome = write_token(&mut con, &keys, &write("b#1", fb, "NEW"))
        .await
        .unwrap();
    assert!(
        matches!(outcome, WriteOutcome::Written { .. }),
        "{outcome:?}"
    );
    // A wakes up: its lock is gone.
    assert_eq!(
        write_token(&mut con, &keys, &write("a#1", fa, "OLD"))
            .await
            .unwrap(),
        WriteOutcome::LockLost
    );
    // Even holding the lock again under its old owner string, the old fence loses.
    release_lock(&mut con, &keys, kind, "b#1").await.unwrap();
    let _: () = con.set(keys.lock(kind), "a#1").await.unwrap();
    assert_eq!(
        write_token(&mut con, &keys, &write("a#1", fa, "OLD"))
            .await
            .unwrap(),
        WriteOutcome::StaleFence
    );
    let value: String = con.get(keys.value(kind)).await.unwrap();
    assert_eq!(value, "NEW");

    // A zero TTL is refused rather than stored without expiry.
    let mut w = write("a#1", fb + 100, "ZERO");
    w.ttl = Duration::ZERO;
    assert_eq!(
        write_token(&mut con, &keys, &w).await.unwrap(),
        WriteOutcome::Expired
    );
    let value: String = con.get(keys.value(kind)).await.unwrap();
    assert_eq!(value, "NEW");
}

#[tokio::test]
async fn refresh_requests_compare_with_the_stored_value_and_are_answered_by_the_write() {
    use wxtoken_schema::{request_refresh, requests_channel, RequestOutcome, FORCE_REQUEST};
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("wxtoken", "app").unwrap();
    let kind = Kind::AccessToken;
    let ttl = Duration::from_secs(60);

    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(requests_channel("wxtoken")).await.unwrap();

    let fence = acquire_lock(&mut con, &keys, kind, "a#1", ttl)
        .await
        .unwrap()
        .unwrap();
    write_token(&mut con, &keys, &write("a#1", fence, "CURRENT"))
        .await
        .unwrap();
    release_lock(&mut con, &keys, kind, "a#1").await.unwrap();

    // A report about an older token changes nothing.
    assert_eq!(
        request_refresh(&mut con, &keys, kind, "OLDER", ttl)
            .await
            .unwrap(),
        RequestOutcome::AlreadyReplaced
    );
    let pending: Option<String> = con.get(keys.refresh_request(kind)).await.unwrap();
    assert_eq!(pending, None);

    // A report about the stored token is recorded, durably, and announced.
    assert_eq!(
        request_refresh(&mut con, &keys, kind, "CURRENT", ttl)
            .await
            .unwrap(),
        RequestOutcome::Requested
    );
    let pending: Option<String> = con.get(keys.refresh_request(kind)).await.unwrap();
    assert_eq!(pending.as_deref(), Some("CURRENT"));
    let pttl: i64 = con.pttl(keys.refresh_request(kind)).await.unwrap();
    assert!(pttl > 0 && pttl <= 60_000);
    use futures_util::StreamExt;
    let msg = tokio::time::timeout(Duration::from_secs(2), pubsub.on_message().next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.get_payload::<String>().unwrap(), "app access_token");

    // The next write answers the request.
    let fence = acquire_lock(&mut con, &keys, kind, "b#1", ttl)
        .await
        .unwrap()
        .unwrap();
    write_token(&mut con, &keys, &write("b#1", fence, "NEWER"))
        .await
        .unwrap();
    let pending: Option<String> = con.get(keys.refresh_request(kind)).await.unwrap();
    assert_eq!(pending, None);

    // The operator's force request is recorded whatever is stored.
    assert_eq!(
        request_refresh(&mut con, &keys, kind, FORCE_REQUEST, ttl)
            .await
            .unwrap(),
        RequestOutcome::Requested
    );
}

#[tokio::test]
async fn a_lost_fence_counter_is_raised_past_the_stored_fence() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("wxtoken", "app").unwrap();
    let kind = Kind::AccessToken;
    let ttl = Duration::from_secs(5);
    let mut last = 0;
    for i in 0..3 {
        let owner = format!("a#{i}");
        last = acquire_lock(&mut con, &keys, kind, &owner, ttl)
            .await
            .unwrap()
            .unwrap();
        let outcome = write_token(&mut con, &keys, &write(&owner, last, "T"))
            .await
            .unwrap();
        assert!(matches!(outcome, WriteOutcome::Written { .. }));
        release_lock(&mut con, &keys, kind, &owner).await.unwrap();
    }
    // The counter is evicted or deleted; the stored value keeps its fence.
    let _: () = con.del(keys.fence()).await.unwrap();
    let fence = acquire_lock(&mut con, &keys, kind, "b#1", ttl)
        .await
        .unwrap()
        .unwrap();
    assert!(fence > last, "fence {fence} must exceed the stored {last}");
    let outcome = write_token(&mut con, &keys, &write("b#1", fence, "NEW"))
        .await
        .unwrap();
    assert!(
        matches!(outcome, WriteOutcome::Written { .. }),
        "{outcome:?}"
    );
}

#[test]
fn debug_output_shows_only_a_token_prefix() {
    let token = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let w = write("a#1", 1, token);
    assert!(!format!("{w:?}").contains(token));
    let ev = UpdateEvent {
        v: 1,
        id: "app".into(),
        kind: Kind::AccessToken,
        token: token.into(),
        expires_at_ms: 0,
        fence: 1,
        replica: "r".into(),
    };
    let shown = format!("{ev:?}");
    assert!(
        !shown.contains(token) && shown.contains("ABCDEFGH…"),
        "{shown}"
    );
}
