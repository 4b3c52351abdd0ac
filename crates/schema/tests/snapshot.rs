//! The operator's snapshot against a real redis-server: what the fenced
//! write, the status hash, refresh requests and locks leave behind is read
//! back in one round trip, by the Redis clock, with no whole token in it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wxtoken_schema::snapshot::{self, PendingRequest, ValueStatus};
use wxtoken_schema::{
    registry_key, request_refresh, status, testing, CredentialKeys, Kind, WriteOutcome,
    FORCE_REQUEST,
};
use wxtoken_testkit::RedisServer;

mod common;
use common::connect;

const NS: &str = "wxtoken";
const TOKEN: &str = "86_abcdefghijklmnopqrstuvwxyz0123456789";

/// Writes `token` as a refresher would and takes the lock again (a refresh
/// in progress).
async fn store(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &CredentialKeys,
    kind: Kind,
    token: &str,
) -> u64 {
    let (outcome, fence) = testing::store(
        con,
        keys,
        kind,
        token,
        Duration::from_secs(7000),
        "refresher-1",
    )
    .await
    .unwrap();
    assert!(matches!(outcome, WriteOutcome::Written { .. }));
    let _: () = redis::cmd("SET")
        .arg(keys.lock(kind))
        .arg("refresher-1#0011223344556677")
        .arg("PX")
        .arg(30_000)
        .query_async(con)
        .await
        .unwrap();
    fence
}

fn kind(c: &snapshot::Credential, kind: Kind) -> &ValueStatus {
    c.kinds.iter().find(|v| v.kind == kind).unwrap()
}

#[tokio::test]
async fn one_read_shows_values_status_requests_and_locks() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let main = CredentialKeys::new(NS, "oa-main").unwrap();
    let idle = CredentialKeys::new(NS, "idle").unwrap();
    let _: () = redis::cmd("SADD")
        .arg(registry_key(NS))
        .arg(&["oa-main", "zz-elsewhere"])
        .query_async(&mut con)
        .await
        .unwrap();

    let fence = store(&mut con, &main, Kind::AccessToken, TOKEN).await;
    // A report about the stored token is pending; a force for the ticket too.
    request_refresh(
        &mut con,
        &main,
        Kind::AccessToken,
        TOKEN,
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    request_refresh(
        &mut con,
        &main,
        Kind::JsapiTicket,
        FORCE_REQUEST,
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    let (secs, _): (u64, u64) = redis::cmd("TIME").query_async(&mut con).await.unwrap();
    let paused_until = secs * 1000 + 60_000;
    let _: () = redis::cmd("HSET")
        .arg(main.status())
        .arg(&[
            (status::APPID, "wx0000000000000001".to_owned()),
            (status::MODE, "classic".to_owned()),
            (status::LAST_OK_AT_MS, "100".to_owned()),
            (status::LAST_ERROR, "access_token: errcode 45009".to_owned()),
            (status::LAST_ERRCODE, "45009".to_owned()),
            (status::LAST_ERROR_AT_MS, "200".to_owned()),
            (status::PAUSED_UNTIL_MS, paused_until.to_string()),
            (status::REPLICA, "refresher-2".to_owned()),
        ])
        .query_async(&mut con)
        .await
        .unwrap();

    let local_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let snap = snapshot::read(&mut con, NS, [&main, &idle]).await.unwrap();
    assert!(snap.now_ms.abs_diff(local_ms) < 5_000, "Redis clock");
    assert_eq!(snap.registered, ["oa-main", "zz-elsewhere"]);
    assert_eq!(snap.credentials.len(), 2);

    let c = &snap.credentials[0];
    assert_eq!(c.id, "oa-main");
    assert_eq!(c.status.appid.as_deref(), Some("wx0000000000000001"));
    assert_eq!(c.status.last_errcode, Some(45009));
    assert_eq!(c.status.paused_until_ms, Some(paused_until));
    assert!(c.status.paused && c.status.failing());
    assert_eq!(c.status.replica.as_deref(), Some("refresher-2"));
    assert_eq!(
        c.kinds.iter().map(|v| v.kind).collect::<Vec<_>>(),
        main.kinds().to_vec()
    );

    let at = kind(c, Kind::AccessToken);
    assert!(at.stored);
    assert!(at.ttl_ms.is_some_and(|t| t > 6_900_000 && t <= 7_000_000));
    assert_eq!(at.expires_in, Some(7000));
    assert_eq!(at.fence, Some(fence));
    assert_eq!(at.replica.as_deref(), Some("refresher-1"));
    let refreshed = at.refreshed_at_ms.unwrap();
    assert!(refreshed <= snap.now_ms && snap.now_ms - refreshed < 5_000);
    assert_eq!(at.expires_at_ms, Some(refreshed + 7_000_000));
    assert_eq!(at.locked_by.as_deref(), Some("refresher-1"));
    assert_eq!(at.token_prefix.as_deref(), Some("86_abcde"));
    let request = at.refresh_request.unwrap();
    assert!(!request.force);
    assert!(request.ttl_ms.is_some_and(|t| t > 590_000 && t <= 600_000));

    let ticket = kind(c, Kind::JsapiTicket);
    assert!(!ticket.stored && ticket.ttl_ms.is_none() && ticket.token_prefix.is_none());
    assert!(ticket.refresh_request.is_some_and(|r| r.force));
    assert_eq!(
        kind(c, Kind::WxCardTicket),
        &ValueStatus::unknown(Kind::WxCardTicket)
    );

    // Asked about, never seen: all absent.
    let c = &snap.credentials[1];
    assert_eq!(c.id, "idle");
    assert_eq!(c.status, Default::default());
    for v in &c.kinds {
        assert_eq!(v, &ValueStatus::unknown(v.kind));
    }

    // The JSON carries the documented names and no token.
    let json = serde_json::to_value(&snap).unwrap();
    let text = json.to_string();
    assert!(!text.contains("86_abcde"), "{text}");
    let c = &json["credentials"][0];
    for field in [
        "id",
        "appid",
        "mode",
        "last_ok_at_ms",
        "last_error",
        "last_errcode",
        "last_error_at_ms",
        "paused_until_ms",
        "paused",
        "status_replica",
        "kinds",
    ] {
        assert!(c.get(field).is_some(), "{field} missing: {c}");
    }
    let k = &c["kinds"][0];
    let fields: Vec<&str> = k.as_object().unwrap().keys().map(String::as_str).collect();
    for field in [
        "kind",
        "stored",
        "ttl_ms",
        "expires_at_ms",
        "expires_in",
        "refreshed_at_ms",
        "replica",
        "fence",
        "refresh_request",
        "locked_by",
    ] {
        assert!(fields.contains(&field), "{field} missing: {k}");
    }
    assert_eq!(fields.len(), 10, "{k}");
    assert_eq!(k["refresh_request"]["force"], false);
}

#[tokio::test]
async fn a_replaced_token_makes_an_old_report_moot() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new(NS, "app").unwrap();
    store(&mut con, &keys, Kind::AccessToken, "first-token").await;
    // The report lands as a plain SET (another language), then the token is
    // replaced without the request being answered.
    let _: () = redis::cmd("SET")
        .arg(keys.refresh_request(Kind::AccessToken))
        .arg("first-token")
        .arg("PX")
        .arg(600_000)
        .query_async(&mut con)
        .await
        .unwrap();
    let read = |con: &mut redis::aio::MultiplexedConnection| {
        let mut con = con.clone();
        let keys = keys.clone();
        async move {
            let snap = snapshot::read(&mut con, NS, [&keys]).await.unwrap();
            snap.credentials[0].kinds[0].refresh_request
        }
    };
    assert!(matches!(
        read(&mut con).await,
        Some(PendingRequest { force: false, .. })
    ));
    let _: () = redis::cmd("SET")
        .arg(keys.value(Kind::AccessToken))
        .arg("second-token")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(read(&mut con).await, None);
}

#[tokio::test]
async fn the_registry_lists_sorted_ids_and_an_empty_read_still_has_the_clock() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    assert!(snapshot::registered(&mut con, NS).await.unwrap().is_empty());
    let _: () = redis::cmd("SADD")
        .arg(registry_key(NS))
        .arg(&["b", "a", "c"])
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        snapshot::registered(&mut con, NS).await.unwrap(),
        ["a", "b", "c"]
    );
    assert!(snapshot::registered(&mut con, "other")
        .await
        .unwrap()
        .is_empty());
    let snap = snapshot::read(&mut con, NS, []).await.unwrap();
    assert!(snap.now_ms > 1_600_000_000_000);
    assert_eq!(snap.registered, ["a", "b", "c"]);
    assert!(snap.credentials.is_empty());

    // A key of the wrong type reads as missing (issue 8: one hostile key
    // must not hide every credential's status).
    let keys = CredentialKeys::new(NS, "broken").unwrap();
    let _: () = redis::cmd("SET")
        .arg(keys.status())
        .arg("not a hash")
        .query_async(&mut con)
        .await
        .unwrap();
    let snap = snapshot::read(&mut con, NS, [&keys]).await.unwrap();
    assert_eq!(snap.credentials[0].status, snapshot::Status::default());
}

/// Credential `i` of the chunking test: stored access token (fence `100 + i`)
/// for even `i`, nothing for odd ones; a paused status for every third.
async fn seed_numbered(con: &mut redis::aio::MultiplexedConnection, n: usize, now_ms: u64) {
    let mut pipe = redis::pipe();
    for i in 0..n {
        let keys = CredentialKeys::new(NS, &format!("c-{i:03}")).unwrap();
        pipe.sadd(registry_key(NS), keys.id()).ignore();
        pipe.hset(keys.status(), status::APPID, format!("wx{i}"))
            .ignore();
        if i % 3 == 0 {
            pipe.hset(keys.status(), status::PAUSED_UNTIL_MS, now_ms + 3_600_000)
                .ignore();
        }
        if i % 2 == 0 {
            let value = keys.value(Kind::AccessToken);
            pipe.cmd("SET")
                .arg(&value)
                .arg(format!("token-{i:03}-abcdefgh"))
                .arg("PX")
                .arg(7_000_000)
                .ignore();
            pipe.hset(keys.info(Kind::AccessToken), "fence", 100 + i)
                .ignore();
        }
    }
    let () = pipe.query_async(con).await.unwrap();
}

#[tokio::test]
async fn chunked_reads_keep_order_and_every_answer_with_its_credential() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    const N: usize = 23;
    seed_numbered(&mut con, N, now_ms).await;
    // Asked in reverse order, so the order given (not the registry's) must come back.
    let keys: Vec<CredentialKeys> = (0..N)
        .rev()
        .map(|i| CredentialKeys::new(NS, &format!("c-{i:03}")).unwrap())
        .collect();

    // Chunks of 1, a size that does not divide N, exactly N, more than N, and the default.
    for chunk in [1, 5, N, 1000, snapshot::READ_CHUNK] {
        let snap = snapshot::read_chunked(&mut con, NS, &keys, chunk)
            .await
            .unwrap();
        assert_eq!(snap.registered.len(), N, "chunk {chunk}");
        assert_eq!(snap.credentials.len(), N, "chunk {chunk}");
        for (c, i) in snap.credentials.iter().zip((0..N).rev()) {
            assert_eq!(c.id, format!("c-{i:03}"), "chunk {chunk}");
            assert_eq!(c.status.appid, Some(format!("wx{i}")), "chunk {chunk}");
            assert_eq!(c.status.paused, i % 3 == 0, "chunk {chunk}: {}", c.id);
            let at = kind(c, Kind::AccessToken);
            assert_eq!(at.stored, i % 2 == 0, "chunk {chunk}: {}", c.id);
            assert_eq!(at.fence, (i % 2 == 0).then_some(100 + i as u64));
            let want_prefix = format!("token-{i:03}")[..8].to_owned();
            assert_eq!(
                at.token_prefix,
                (i % 2 == 0).then_some(want_prefix),
                "chunk {chunk}"
            );
        }
    }
    // `read` is the default chunking.
    let snap = snapshot::read(&mut con, NS, &keys).await.unwrap();
    assert_eq!(snap.credentials.len(), N);
    assert_eq!(snap.credentials[0].id, "c-022");
}

#[tokio::test]
async fn a_large_read_is_split_into_moderate_transactions() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    const N: usize = 1_234;
    seed_numbered(&mut con, N, now_ms).await;
    let keys: Vec<CredentialKeys> = (0..N)
        .map(|i| CredentialKeys::new(NS, &format!("c-{i:03}")).unwrap())
        .collect();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut con)
        .await
        .unwrap();
    let snap = snapshot::read(&mut con, NS, &keys).await.unwrap();
    assert_eq!(snap.credentials.len(), N);
    assert_eq!(
        snap.credentials.iter().filter(|c| c.status.paused).count(),
        N.div_ceil(3)
    );
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await
        .unwrap();
    let calls = |cmd: &str| -> u64 {
        info.lines()
            .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let chunks = N.div_ceil(snapshot::READ_CHUNK) as u64;
    assert_eq!(calls("exec"), chunks, "{info}");
    assert_eq!(calls("time"), chunks, "{info}");
    assert_eq!(calls("smembers"), 1, "{info}");
    assert_eq!(
        calls("hgetall"),
        (N * (1 + CredentialKeys::new(NS, "x").unwrap().kinds().len())) as u64,
        "{info}"
    );
}

#[tokio::test]
async fn hostile_values_read_as_missing_and_hide_nothing_else() {
    use redis::AsyncCommands;
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let good = CredentialKeys::new(NS, "good").unwrap();
    let bad = CredentialKeys::new(NS, "bad").unwrap();
    store(&mut con, &good, Kind::AccessToken, TOKEN).await;
    let _: () = con.rpush(bad.value(Kind::AccessToken), "x").await.unwrap();
    let _: () = con
        .set(bad.info(Kind::AccessToken), "not a hash")
        .await
        .unwrap();
    let _: () = con.set(bad.status(), "not a hash").await.unwrap();
    let _: () = con
        .set(bad.value(Kind::JsapiTicket), &[0xffu8, 0xfe][..])
        .await
        .unwrap();
    let _: () = con
        .hset(bad.refresh_request(Kind::AccessToken), "f", "v")
        .await
        .unwrap();
    let snap = snapshot::read(&mut con, NS, [&bad, &good]).await.unwrap();
    let b = &snap.credentials[0];
    assert_eq!(b.id, "bad");
    assert!(b.kinds.iter().all(|v| !v.stored), "{:?}", b.kinds);
    assert_eq!(b.status.appid, None);
    let g = &snap.credentials[1];
    assert!(kind(g, Kind::AccessToken).stored);
    assert_eq!(
        kind(g, Kind::AccessToken).token_prefix.as_deref(),
        Some("86_abcde")
    );
}
