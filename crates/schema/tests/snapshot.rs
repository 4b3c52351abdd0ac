//! The operator's snapshot against a real redis-server: what the fenced
//! write, the status hash, refresh requests and locks leave behind is read
//! back in one round trip, by the Redis clock, with no whole token in it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wxtoken_schema::snapshot::{self, PendingRequest, ValueStatus};
use wxtoken_schema::{
    registry_shard_key, request_refresh, shard_of, status, testing, CredentialKeys, Kind,
    WriteOutcome, FORCE_REQUEST,
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
    for id in ["oa-main", "zz-elsewhere"] {
        let _: () = redis::cmd("SADD")
            .arg(registry_shard_key(NS, shard_of(id)))
            .arg(id)
            .query_async(&mut con)
            .await
            .unwrap();
    }

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
    for id in ["b", "a", "c"] {
        let _: () = redis::cmd("SADD")
            .arg(registry_shard_key(NS, shard_of(id)))
            .arg(id)
            .query_async(&mut con)
            .await
            .unwrap();
    }
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
        pipe.sadd(keys.registry(), keys.id()).ignore();
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
    // The registry's shards, once.
    assert_eq!(
        calls("smembers"),
        u64::from(wxtoken_schema::DUE_SHARDS),
        "{info}"
    );
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

/// A platform with `n` authorizers `wxa00000…`, by `authorize_many` (as a
/// reconciliation would, with a refresh token each): every fifth has an
/// access token with plenty left, every seventh (not a fifth) one within
/// the margin, every eleventh a standing error, every thirteenth a pause.
mod platform {
    use super::*;
    use wxtoken_schema::registry::{self, Authorization};
    use wxtoken_schema::snapshot::{AuthorizerState, ComponentRead};
    use wxtoken_schema::{info, store_verify_ticket, ComponentKeys};

    pub const C: &str = "wxcomponent0001";
    pub const SECRET_RT: &str = "refreshtoken-SECRET-";

    pub fn appid(i: usize) -> String {
        format!("wxa{i:05}")
    }

    pub fn expected(i: usize) -> AuthorizerState {
        if i % 13 == 0 {
            AuthorizerState::Paused
        } else if i % 11 == 0 {
            AuthorizerState::Failing
        } else if i % 5 == 0 {
            AuthorizerState::Ok
        } else if i % 7 == 0 {
            AuthorizerState::Expiring
        } else {
            AuthorizerState::Missing
        }
    }

    pub async fn seed(con: &mut redis::aio::MultiplexedConnection, n: usize) -> u64 {
        let ck = ComponentKeys::new(NS, C).unwrap();
        let keys: Vec<CredentialKeys> = (0..n)
            .map(|i| CredentialKeys::authorizer(NS, C, &appid(i)).unwrap())
            .collect();
        let tokens: Vec<String> = (0..n).map(|i| format!("{SECRET_RT}{i}")).collect();
        for (ks, ts) in keys.chunks(500).zip(tokens.chunks(500)) {
            let items: Vec<(CredentialKeys, Authorization<'_>)> = ks
                .iter()
                .zip(ts)
                .map(|(k, t)| {
                    (
                        k.clone(),
                        Authorization {
                            code: None,
                            refresh_token: Some(t),
                            kinds: &[Kind::AccessToken, Kind::JsapiTicket],
                            new: false,
                        },
                    )
                })
                .collect();
            registry::authorize_many(con, &ck, &items).await.unwrap();
        }
        let (secs, _): (u64, u64) = redis::cmd("TIME").query_async(con).await.unwrap();
        let now_ms = secs * 1000;
        let mut pipe = redis::pipe();
        for (i, k) in keys.iter().enumerate() {
            let ttl_ms = match expected(i) {
                _ if i % 5 == 0 => Some(7_000_000),
                AuthorizerState::Expiring => Some(60_000),
                _ => None,
            };
            if let Some(ttl_ms) = ttl_ms {
                pipe.cmd("SET")
                    .arg(k.value(Kind::AccessToken))
                    .arg(format!("authorizer-token-{i}"))
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore();
                pipe.hset(k.info(Kind::AccessToken), info::EXPIRES_IN, 7200)
                    .ignore();
                // Stored values are not due now.
                pipe.hset(
                    k.schedule(),
                    (Kind::AccessToken).as_str(),
                    now_ms + 3_600_000,
                )
                .ignore();
            }
            if i % 11 == 0 {
                pipe.hset_multiple(
                    k.status(),
                    &[
                        (
                            status::LAST_ERROR,
                            format!("access_token: errcode 61023 <{i}>"),
                        ),
                        (status::LAST_ERRCODE, "61023".to_owned()),
                        (status::LAST_ERROR_AT_MS, now_ms.to_string()),
                        (status::FAILURES, "3".to_owned()),
                    ],
                )
                .ignore();
            }
            if i % 13 == 0 {
                pipe.hset(k.status(), status::PAUSED_UNTIL_MS, now_ms + 3_600_000)
                    .ignore();
            }
        }
        let () = pipe.query_async(con).await.unwrap();
        now_ms
    }

    pub fn margin(expires_in: Option<u64>) -> u64 {
        expires_in.map_or(300_000, |s| (s * 1000 / 4).min(300_000))
    }

    pub fn opts(chunk: usize, problems: usize) -> ComponentRead<'static> {
        ComponentRead {
            chunk,
            problems,
            margin_ms: &margin,
        }
    }

    pub async fn ticket_and_token(con: &mut redis::aio::MultiplexedConnection) {
        let ck = ComponentKeys::new(NS, C).unwrap();
        store_verify_ticket(
            con,
            &ck,
            "ticket@@@SECRET-VERIFY-TICKET",
            1_700_000_000,
            Duration::from_millis(wxtoken_schema::VERIFY_TICKET_TTL_MS),
        )
        .await
        .unwrap();
        let subject = CredentialKeys::component(NS, C).unwrap();
        let (outcome, _) = testing::store(
            con,
            &subject,
            Kind::ComponentAccessToken,
            "component-token-SECRET-0123456789",
            Duration::from_secs(7200),
            "refresher-1",
        )
        .await
        .unwrap();
        assert!(matches!(outcome, WriteOutcome::Written { .. }));
        let _: () = redis::cmd("SET")
            .arg(subject.value(Kind::AuthorizerList))
            .arg("listed=5000,added=3,updated=1,removed=2")
            .arg("PX")
            .arg(3_600_000)
            .query_async(con)
            .await
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg(subject.info(Kind::AuthorizerList))
            .arg(info::REFRESHED_AT_MS)
            .arg(1_700_000_000_000u64)
            .query_async(con)
            .await
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg(subject.status())
            .arg(&[
                (status::MODE, "component"),
                (status::LAST_ERROR, "component_access_token: errcode 61006"),
                (status::LAST_ERRCODE, "61006"),
                (status::LAST_ERROR_AT_MS, "1"),
            ])
            .query_async(con)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_platform_is_summarized_in_chunks_without_secrets() {
    use wxtoken_schema::snapshot::{read_component, AuthorizerState};
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    // `WXTOKEN_SCALE_AUTHORIZERS` to measure other sizes (timings printed
    // with --nocapture, never asserted).
    let n: usize = std::env::var("WXTOKEN_SCALE_AUTHORIZERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    platform::seed(&mut con, n).await;
    platform::ticket_and_token(&mut con).await;

    let mut want = std::collections::HashMap::<AuthorizerState, u64>::new();
    for i in 0..n {
        *want.entry(platform::expected(i)).or_default() += 1;
    }
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut con)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let v = read_component(&mut con, NS, platform::C, &platform::opts(1_000, 50))
        .await
        .unwrap();
    let took = started.elapsed();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await
        .unwrap();
    println!(
        "{n} authorizers read in {took:?}, {} round trips",
        v.round_trips
    );

    let a = v.authorizers;
    assert_eq!((a.total, a.counted), (n as u64, n as u64));
    for s in [
        AuthorizerState::Ok,
        AuthorizerState::Expiring,
        AuthorizerState::Missing,
        AuthorizerState::Failing,
        AuthorizerState::Paused,
    ] {
        assert_eq!(a.of(s), want[&s], "{s:?}: {a:?}");
    }
    assert_eq!(a.with_problems(), n as u64 - want[&AuthorizerState::Ok]);

    // Problems: bounded, worst first, each state in index order.
    assert_eq!(v.problems.len(), 50);
    assert!(v
        .problems
        .iter()
        .all(|p| p.state == AuthorizerState::Paused));
    assert_eq!(
        v.problems[0].id,
        format!("authorizer/{}/wxa00000", platform::C)
    );
    assert_eq!(v.problems[1].appid, "wxa00013");
    let v2 = read_component(&mut con, NS, platform::C, &platform::opts(700, 100_000))
        .await
        .unwrap();
    assert_eq!(
        v2.authorizers, v.authorizers,
        "the chunk size changes nothing"
    );
    assert_eq!(v2.problems.len() as u64, a.with_problems());
    let failing = v2
        .problems
        .iter()
        .find(|p| p.state == AuthorizerState::Failing)
        .unwrap();
    assert_eq!(failing.appid, "wxa00011");
    assert_eq!(failing.last_errcode, Some(61023));
    assert_eq!(failing.failures, Some(3));
    assert_eq!(
        failing.last_error.as_deref(),
        Some("access_token: errcode 61023 <11>")
    );
    let expiring = v2
        .problems
        .iter()
        .find(|p| p.state == AuthorizerState::Expiring)
        .unwrap();
    assert_eq!(expiring.appid, "wxa00007");
    assert!(expiring.ttl_ms.is_some_and(|t| t <= 60_000));
    assert_eq!(v2.round_trips, 1 + n.div_ceil(700));

    // Round trips stay chunked: 1 + n / chunk transactions, one TIME each.
    let chunks = n.div_ceil(1_000) as u64;
    let stats = |cmd: &str| -> u64 {
        info.lines()
            .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(v.round_trips as u64, 1 + chunks);
    assert_eq!(stats("exec"), 1 + chunks, "{info}");
    assert_eq!(stats("time"), 1 + chunks, "{info}");
    assert_eq!(stats("zrange"), 1 + chunks, "{info}");
    // Per authorizer: its status and its schedule; the platform's schedule.
    assert_eq!(stats("hmget"), 2 * n as u64 + 1, "{info}");
    // Never a value read beyond the reconciliation summary: no GET of a
    // token, refresh token or ticket.
    assert_eq!(stats("get"), 1, "{info}");
    assert_eq!(stats("zmscore"), 0, "{info}");

    // Backlog: every authorizer's access token without a stored value was
    // queued due "now" by authorize_many (its jsapi ticket a minute later);
    // the component token is queued for later, its reconciliation not at all.
    let stored = (0..n)
        .filter(|i| i % 5 == 0 || platform::expected(*i) == AuthorizerState::Expiring)
        .count() as u64;
    assert_eq!(v.backlog.queued, 2 * n as u64 + 1);
    assert_eq!(v.backlog.due_now, n as u64 - stored, "{:?}", v.backlog);
    assert!(v.backlog.oldest_due_at_ms.is_some_and(|t| t <= v.now_ms));

    // The platform itself.
    let t = &v.verify_ticket;
    assert!(t.stored && t.ttl_ms.is_some_and(|t| t > 43_000_000));
    assert_eq!(t.create_time, Some(1_700_000_000));
    assert!(t.age_ms.is_some_and(|a| a < 60_000));
    let ct = &v.component_token;
    assert!(ct.stored && ct.ttl_ms.is_some_and(|t| t > 7_000_000));
    assert_eq!(ct.expires_in, Some(7200));
    assert!(ct.expires_at_ms.is_some() && ct.refreshed_at_ms.is_some());
    assert_eq!(ct.status.last_errcode, Some(61006));
    assert!(!ct.failing, "the token was written after the error");
    let rec = v.reconciliation.as_ref().unwrap();
    assert_eq!(
        (rec.listed, rec.added, rec.updated, rec.removed),
        (Some(5000), Some(3), Some(1), Some(2))
    );
    assert_eq!(rec.at_ms, Some(1_700_000_000_000));
    assert!(rec.ttl_ms.is_some_and(|t| t <= 3_600_000));

    let json = serde_json::to_string(&v2).unwrap();
    for secret in [
        platform::SECRET_RT,
        "SECRET-VERIFY-TICKET",
        "component-token-SECRET",
        "authorizer-token-",
    ] {
        assert!(!json.contains(secret), "{secret} in {json:.300}");
    }
    let j: serde_json::Value = serde_json::from_str(&json).unwrap();
    for field in [
        "appid",
        "id",
        "now_ms",
        "verify_ticket",
        "component_token",
        "reconciliation",
        "authorizers",
        "backlog",
        "problems",
        "round_trips",
    ] {
        assert!(j.get(field).is_some(), "{field}");
    }
    assert_eq!(j["authorizers"]["failing"], want[&AuthorizerState::Failing]);
    assert_eq!(j["problems"][0]["state"], "paused");
}

#[tokio::test]
async fn an_empty_or_broken_platform_reads_as_missing() {
    use wxtoken_schema::snapshot::read_component;
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let v = read_component(&mut con, NS, "wxnothing", &platform::opts(10, 10))
        .await
        .unwrap();
    assert_eq!(v.round_trips, 1);
    assert!(!v.verify_ticket.stored && !v.component_token.stored);
    assert!(v.reconciliation.is_none() && v.problems.is_empty());
    assert_eq!(v.authorizers, Default::default());
    assert_eq!(v.backlog, Default::default());

    // Wrong types everywhere: read as missing, never an error.
    let ck = wxtoken_schema::ComponentKeys::new(NS, "wxbroken").unwrap();
    let subject = CredentialKeys::component(NS, "wxbroken").unwrap();
    let mut pipe = redis::pipe();
    pipe.hset(ck.authorizers(), "a", "b")
        .ignore()
        .hset(subject.value(Kind::AuthorizerList), "a", "b")
        .ignore()
        .set(ck.verify_ticket_info(), "x")
        .ignore()
        .set(subject.status(), "x")
        .ignore();
    let () = pipe.query_async(&mut con).await.unwrap();
    let v = read_component(&mut con, NS, "wxbroken", &platform::opts(10, 10))
        .await
        .unwrap();
    assert_eq!(v.authorizers.total, 0);
    assert!(v.reconciliation.is_none());
    assert!(v.verify_ticket.create_time.is_none());

    // Exactly a multiple of the chunk: the last page comes back empty.
    platform::seed(&mut con, 20).await;
    let v = read_component(&mut con, NS, platform::C, &platform::opts(10, 3))
        .await
        .unwrap();
    assert_eq!(v.authorizers.counted, 20);
    assert_eq!(v.round_trips, 3);
    assert_eq!(v.problems.len(), 3);
}
