//! The lease scripts against a real redis-server: claims are exclusive,
//! fenced and honour the due-queue, holds and the shared rate; renew and
//! finish are owner-checked; the fenced write refuses writers that lost
//! their lock or carry an older fence, and queues the next refresh.

use redis::AsyncCommands;
use std::time::Duration;
use wxtoken_schema::registry::{self, Registration};
use wxtoken_schema::{
    claim, events_channel, finish, info, renew_lock, status, write_token, Claim, ClaimRules,
    CredentialKeys, Failure, Kind, RateLimit, Request, TokenWrite, UpdateEvent, ValueState,
    WriteOutcome,
};
use wxtoken_testkit::RedisServer;

mod common;
use common::connect;

type Con = redis::aio::MultiplexedConnection;

fn write<'a>(owner: &'a str, fence: u64, token: &'a str) -> TokenWrite<'a> {
    TokenWrite {
        kind: Kind::AccessToken,
        owner,
        fence,
        token,
        ttl: Duration::from_secs(60),
        expires_in: 7200,
        replica: "r1",
        next_due: Duration::from_secs(50),
        tickets: &[Kind::JsapiTicket, Kind::WxCardTicket],
        refresh_token: None,
        code_used: None,
    }
}

/// Registers `keys`' credential with `kinds`, all due now.
async fn queue(con: &mut Con, keys: &CredentialKeys, kinds: &[Kind]) {
    let facts = Registration {
        appid: "wx1",
        mode: "classic",
        kinds,
        ticket_delay: Duration::ZERO,
    };
    registry::heartbeat(con, keys.namespace(), "r1")
        .await
        .unwrap();
    registry::register(con, &[(keys.clone(), facts)], "r1", Duration::from_secs(15))
        .await
        .unwrap();
}

/// Claims and expects a grant.
async fn grant(
    con: &mut Con,
    keys: &CredentialKeys,
    kind: Kind,
    owner: &str,
    ttl: Duration,
) -> (u64, ValueState) {
    match claim(con, keys, kind, owner, &ClaimRules::new(ttl))
        .await
        .unwrap()
    {
        Claim::Granted { fence, state } => (fence, state),
        other => panic!("claim of {kind} by {owner} not granted: {other:?}"),
    }
}

async fn due_at(con: &mut Con, keys: &CredentialKeys, kind: Kind) -> Option<u64> {
    let s: Option<f64> = con.hget(keys.schedule(), (kind).as_str()).await.unwrap();
    s.map(|s| s as u64)
}

async fn redis_now(con: &mut Con) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(con).await.unwrap();
    s * 1000 + us / 1000
}

#[tokio::test]
async fn claims_are_exclusive_fenced_and_only_of_queued_due_values() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("wxtoken", "app").unwrap();
    let ttl = Duration::from_secs(5);

    // Not queued: nothing to claim.
    assert_eq!(
        claim(
            &mut con,
            &keys,
            Kind::AccessToken,
            "a#1",
            &ClaimRules::new(ttl)
        )
        .await
        .unwrap(),
        Claim::Unregistered
    );
    queue(&mut con, &keys, &[Kind::AccessToken, Kind::JsapiTicket]).await;

    let (f1, state) = grant(&mut con, &keys, Kind::AccessToken, "a#1", ttl).await;
    assert_eq!(state.value, None);
    assert_eq!(state.remaining, None);
    assert_eq!(state.request, Request::None);
    // While held, the entry sits at the lock's expiry: not due for others.
    let now = redis_now(&mut con).await;
    let at = due_at(&mut con, &keys, Kind::AccessToken).await.unwrap();
    assert!(at > now + 4000 && at <= now + 5000, "due {at}, now {now}");
    match claim(
        &mut con,
        &keys,
        Kind::AccessToken,
        "b#1",
        &ClaimRules::new(ttl),
    )
    .await
    .unwrap()
    {
        Claim::NotDue(until) => assert_eq!(until, at),
        other => panic!("{other:?}"),
    }
    // Moved to now by hand (a request, say), it is still busy, and the
    // claim puts it back at the lock's expiry.
    let _: () = con
        .hset(keys.schedule(), (Kind::AccessToken).as_str(), 0)
        .await
        .unwrap();
    assert!(matches!(
        claim(
            &mut con,
            &keys,
            Kind::AccessToken,
            "b#1",
            &ClaimRules::new(ttl)
        )
        .await
        .unwrap(),
        Claim::Busy(_)
    ));
    assert!(due_at(&mut con, &keys, Kind::AccessToken).await.unwrap() > now);

    // Tickets have their own lock but share the fence counter.
    let (ft, _) = grant(&mut con, &keys, Kind::JsapiTicket, "b#2", ttl).await;
    assert!(ft > f1);
    assert!(!renew_lock(&mut con, &keys, Kind::AccessToken, "b#1", ttl)
        .await
        .unwrap());
    assert!(renew_lock(&mut con, &keys, Kind::AccessToken, "a#1", ttl)
        .await
        .unwrap());
    // Finish is owner-checked, releases and reschedules.
    assert!(!finish(
        &mut con,
        &keys,
        Kind::AccessToken,
        "b#1",
        Duration::ZERO,
        None,
        None
    )
    .await
    .unwrap());
    assert!(finish(
        &mut con,
        &keys,
        Kind::AccessToken,
        "a#1",
        Duration::ZERO,
        None,
        None
    )
    .await
    .unwrap());
    let lock: Option<String> = con.get(keys.lock(Kind::AccessToken)).await.unwrap();
    assert_eq!(lock, None);
    let (f2, _) = grant(&mut con, &keys, Kind::AccessToken, "b#3", ttl).await;
    assert!(f2 > ft);
}

#[tokio::test]
async fn a_lapsed_lease_is_due_again_at_its_expiry() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("wxtoken", "app").unwrap();
    queue(&mut con, &keys, &[Kind::AccessToken]).await;
    grant(
        &mut con,
        &keys,
        Kind::AccessToken,
        "a#1",
        Duration::from_millis(100),
    )
    .await;
    // Poll the condition rather than sleeping a fixed time.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match claim(
            &mut con,
            &keys,
            Kind::AccessToken,
            "b#1",
            &ClaimRules::new(Duration::from_secs(5)),
        )
        .await
        .unwrap()
        {
            Claim::Granted { .. } => break,
            Claim::NotDue(_) | Claim::Busy(_) => {}
            other => panic!("{other:?}"),
        }
        assert!(std::time::Instant::now() < deadline, "lease never lapsed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn write_stores_value_info_status_and_next_due_releases_and_publishes() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("ns", "app").unwrap();
    queue(&mut con, &keys, &[Kind::AccessToken, Kind::JsapiTicket]).await;
    // The ticket waits for its access token.
    let _: () = con
        .hset(keys.schedule(), (Kind::JsapiTicket).as_str(), u64::MAX / 2)
        .await
        .unwrap();

    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(events_channel("ns")).await.unwrap();

    let (fence, _) = grant(
        &mut con,
        &keys,
        Kind::AccessToken,
        "a#1",
        Duration::from_secs(5),
    )
    .await;
    let outcome = write_token(&mut con, &keys, &write("a#1", fence, "TOKEN-1/\"x"))
        .await
        .unwrap();
    let WriteOutcome::Written {
        expires_at_ms,
        tickets_due,
    } = outcome
    else {
        panic!("write rejected: {outcome:?}")
    };
    assert_eq!(tickets_due, vec![Kind::JsapiTicket]);
    let now = redis_now(&mut con).await;
    assert!(due_at(&mut con, &keys, Kind::JsapiTicket).await.unwrap() <= now);

    let value: String = con.get(keys.value(Kind::AccessToken)).await.unwrap();
    assert_eq!(value, "TOKEN-1/\"x", "GET returns the token as is");
    let pttl: i64 = con.pttl(keys.value(Kind::AccessToken)).await.unwrap();
    assert!((55_000..=60_000).contains(&pttl), "pttl {pttl}");
    let info_pttl: i64 = con.pttl(keys.info(Kind::AccessToken)).await.unwrap();
    assert!(
        (55_000..=60_000).contains(&info_pttl),
        "info pttl {info_pttl}"
    );
    let lock: Option<String> = con.get(keys.lock(Kind::AccessToken)).await.unwrap();
    assert_eq!(lock, None, "the write releases the lock");
    let due = due_at(&mut con, &keys, Kind::AccessToken).await.unwrap();
    let refreshed: u64 = con
        .hget(keys.info(Kind::AccessToken), info::REFRESHED_AT_MS)
        .await
        .unwrap();
    assert_eq!(due, refreshed + 50_000, "next due = write time + next_due");

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
    assert_eq!(expires_at_ms - refreshed, 60_000);
    let expires_in: u64 = con
        .hget(keys.info(Kind::AccessToken), info::EXPIRES_IN)
        .await
        .unwrap();
    assert_eq!(expires_in, 7200);
    let last_ok: u64 = con
        .hget(keys.status(), status::LAST_OK_AT_MS)
        .await
        .unwrap();
    assert_eq!(last_ok, refreshed);

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

    // Claimed again now, it is not due: the claim says until when.
    match claim(
        &mut con,
        &keys,
        Kind::AccessToken,
        "b#1",
        &ClaimRules::new(Duration::from_secs(5)),
    )
    .await
    .unwrap()
    {
        Claim::NotDue(at) => assert_eq!(at, due),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn write_is_refused_after_the_lock_is_lost_or_by_an_older_fence() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("wxtoken", "app").unwrap();
    let kind = Kind::AccessToken;
    queue(&mut con, &keys, &[kind]).await;

    // A takes the lock, then stalls past its TTL.
    let (fa, _) = grant(&mut con, &keys, kind, "a#1", Duration::from_millis(100)).await;
    let _: () = con.del(keys.lock(kind)).await.unwrap();
    let _: () = con.hset(keys.schedule(), (kind).as_str(), 0).await.unwrap();
    // B takes over and writes the newer token.
    let (fb, _) = grant(&mut con, &keys, kind, "b#1", Duration::from_secs(5)).await;
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
    let _: () = con.set(keys.lock(kind), "a#1").await.unwrap();
    assert_eq!(
        write_token(&mut con, &keys, &write("a#1", fa, "OLD"))
            .await
            .unwrap(),
        WriteOutcome::StaleFence
    );
    let value: String = con.get(keys.value(kind)).await.unwrap();
    assert_eq!(value, "NEW");
    // A refused write still ends the lease: the lock is released.
    let lock: Option<String> = con.get(keys.lock(kind)).await.unwrap();
    assert_eq!(lock, None);

    // A zero TTL is refused rather than stored without expiry.
    let _: () = con.set(keys.lock(kind), "a#1").await.unwrap();
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
async fn refresh_requests_compare_move_the_value_forward_and_are_answered_by_the_write() {
    use wxtoken_schema::{request_refresh, requests_channel, RequestOutcome, FORCE_REQUEST};
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("wxtoken", "app").unwrap();
    let kind = Kind::AccessToken;
    let ttl = Duration::from_secs(60);
    queue(&mut con, &keys, &[kind]).await;

    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(requests_channel("wxtoken")).await.unwrap();

    let (fence, _) = grant(&mut con, &keys, kind, "a#1", ttl).await;
    write_token(&mut con, &keys, &write("a#1", fence, "CURRENT"))
        .await
        .unwrap();
    let scheduled = due_at(&mut con, &keys, kind).await.unwrap();

    // A report about an older token changes nothing.
    assert_eq!(
        request_refresh(&mut con, &keys, kind, "OLDER", ttl)
            .await
            .unwrap(),
        RequestOutcome::AlreadyReplaced
    );
    let pending: Option<String> = con.get(keys.refresh_request(kind)).await.unwrap();
    assert_eq!(pending, None);
    assert_eq!(due_at(&mut con, &keys, kind).await, Some(scheduled));

    // A report about the stored token is recorded, durably, and announced.
    // (It does not touch the due-queue, which business servers may not
    // write: the claim itself treats a servable request as due.)
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
    assert_eq!(due_at(&mut con, &keys, kind).await, Some(scheduled));
    use futures_util::StreamExt;
    let msg = tokio::time::timeout(Duration::from_secs(2), pubsub.on_message().next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.get_payload::<String>().unwrap(), "app access_token");

    // The claim sees the report; the next write answers it.
    let (fence, state) = grant(&mut con, &keys, kind, "b#1", ttl).await;
    assert_eq!(state.request, Request::Reported);
    assert_eq!(state.value.as_deref(), Some("CURRENT"));
    write_token(&mut con, &keys, &write("b#1", fence, "NEWER"))
        .await
        .unwrap();
    let pending: Option<String> = con.get(keys.refresh_request(kind)).await.unwrap();
    assert_eq!(pending, None);

    // `*` written into the request key by anyone forces nothing while a
    // value is stored…
    let _: () = con
        .set(keys.refresh_request(kind), FORCE_REQUEST)
        .await
        .unwrap();
    assert!(matches!(
        claim(&mut con, &keys, kind, "c#0", &ClaimRules::new(ttl))
            .await
            .unwrap(),
        Claim::NotDue(_)
    ));
    // …the operator's force is recorded in its own key whatever is stored,
    // and moves the value to the front of the queue.
    assert_eq!(
        request_refresh(&mut con, &keys, kind, FORCE_REQUEST, ttl)
            .await
            .unwrap(),
        RequestOutcome::Requested
    );
    let forced: Option<String> = con.get(keys.force_request(kind)).await.unwrap();
    assert!(forced.is_some());
    assert!(due_at(&mut con, &keys, kind).await.unwrap() <= redis_now(&mut con).await);
    let (fence, state) = grant(&mut con, &keys, kind, "c#1", ttl).await;
    assert_eq!(state.request, Request::Forced);
    write_token(&mut con, &keys, &write("c#1", fence, "NEWEST"))
        .await
        .unwrap();
    let forced: Option<String> = con.get(keys.force_request(kind)).await.unwrap();
    assert_eq!(forced, None, "the write answers the force");
}

#[tokio::test]
async fn a_reader_user_can_report_but_not_force_or_overwrite() {
    use wxtoken_schema::{request_refresh, RequestOutcome, FORCE_REQUEST};
    let server = RedisServer::start().unwrap();
    let mut admin = connect(&server).await;
    let keys = CredentialKeys::new("wxtoken", "app").unwrap();
    let kind = Kind::AccessToken;
    let ttl = Duration::from_secs(60);
    queue(&mut admin, &keys, &[kind]).await;
    let (fence, _) = grant(&mut admin, &keys, kind, "a#1", ttl).await;
    write_token(&mut admin, &keys, &write("a#1", fence, "CURRENT"))
        .await
        .unwrap();
    // The business-reader rule the README documents.
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "reader",
            "on",
            ">reader-pw",
            "resetkeys",
            "%R~wxtoken:{*}:access_token",
            "%R~wxtoken:{*}:jsapi_ticket",
            "%R~wxtoken:{*}:wx_card_ticket",
            "%W~wxtoken:{*}:refresh_request:*",
            "resetchannels",
            "&wxtoken:requests",
            "&wxtoken:events",
            "-@all",
            "+get",
            "+set",
            "+publish",
            "+subscribe",
            "+ping",
        ])
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = server
        .url()
        .replacen("redis://", "redis://reader:reader-pw@", 1);
    let mut reader = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    assert_eq!(
        request_refresh(&mut reader, &keys, kind, "CURRENT", ttl)
            .await
            .unwrap(),
        RequestOutcome::Requested
    );
    assert_eq!(
        request_refresh(&mut reader, &keys, kind, "OLDER", ttl)
            .await
            .unwrap(),
        RequestOutcome::AlreadyReplaced
    );
    // Only printable tokens can be reported (no log or key injection).
    for bad in ["a\nb", "\u{1b}[2J", "", "é"] {
        let err = request_refresh(&mut reader, &keys, kind, bad, ttl)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a token"), "{bad:?}: {err}");
    }
    let err = request_refresh(&mut reader, &keys, kind, FORCE_REQUEST, ttl)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
    let err = redis::cmd("SET")
        .arg(keys.value(kind))
        .arg("FORGED")
        .query_async::<()>(&mut reader)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
    let token: String = admin.get(keys.value(kind)).await.unwrap();
    assert_eq!(token, "CURRENT");
}

#[tokio::test]
async fn a_lost_fence_counter_is_raised_past_the_stored_fence() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("wxtoken", "app").unwrap();
    let kind = Kind::AccessToken;
    let ttl = Duration::from_secs(5);
    queue(&mut con, &keys, &[kind]).await;
    let mut last = 0;
    for i in 0..3 {
        let owner = format!("a#{i}");
        let _: () = con.hset(keys.schedule(), (kind).as_str(), 0).await.unwrap();
        last = grant(&mut con, &keys, kind, &owner, ttl).await.0;
        let outcome = write_token(&mut con, &keys, &write(&owner, last, "T"))
            .await
            .unwrap();
        assert!(matches!(outcome, WriteOutcome::Written { .. }));
    }
    // The counter is evicted or deleted; the stored value keeps its fence.
    let _: () = con.del(keys.fence()).await.unwrap();
    let _: () = con.hset(keys.schedule(), (kind).as_str(), 0).await.unwrap();
    let (fence, _) = grant(&mut con, &keys, kind, "b#1", ttl).await;
    assert!(fence > last, "fence {fence} must exceed the stored {last}");
    let outcome = write_token(&mut con, &keys, &write("b#1", fence, "NEW"))
        .await
        .unwrap();
    assert!(
        matches!(outcome, WriteOutcome::Written { .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_recorded_failure_holds_every_claim_until_its_wait_is_over() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("wxtoken", "app").unwrap();
    let kind = Kind::AccessToken;
    let ttl = Duration::from_secs(5);
    queue(&mut con, &keys, &[kind]).await;
    let (_, state) = grant(&mut con, &keys, kind, "a#1", ttl).await;
    assert_eq!(state.failures, 0);
    let failure = Failure {
        message: "access_token: WeChat errcode 45009",
        errcode: Some(45009),
        paused: true,
        replica: "r1",
    };
    assert!(finish(
        &mut con,
        &keys,
        kind,
        "a#1",
        Duration::from_secs(60),
        Some(&failure),
        None
    )
    .await
    .unwrap());
    let h: std::collections::HashMap<String, String> = con.hgetall(keys.status()).await.unwrap();
    assert_eq!(h[status::FAILURES], "1");
    assert_eq!(h[status::LAST_ERRCODE], "45009");
    assert_eq!(h[status::PAUSED_UNTIL_MS], h[status::RETRY_AFTER_MS]);
    let until: u64 = h[status::RETRY_AFTER_MS].parse().unwrap();
    assert_eq!(due_at(&mut con, &keys, kind).await, Some(until));

    // A request moves the value forward, but the claim honours the hold
    // (no lock taken, entry back at the hold's end).
    let _: () = con.hset(keys.schedule(), (kind).as_str(), 0).await.unwrap();
    assert_eq!(
        claim(&mut con, &keys, kind, "b#1", &ClaimRules::new(ttl))
            .await
            .unwrap(),
        Claim::Held(until)
    );
    let lock: Option<String> = con.get(keys.lock(kind)).await.unwrap();
    assert_eq!(lock, None);
    assert_eq!(due_at(&mut con, &keys, kind).await, Some(until));

    // A hold far in the future (corrupt or hostile) is cut to the longest
    // the rules allow.
    let _: () = con
        .hset(keys.status(), status::PAUSED_UNTIL_MS, u64::MAX / 4)
        .await
        .unwrap();
    let _: () = con.hset(keys.schedule(), (kind).as_str(), 0).await.unwrap();
    let rules = ClaimRules {
        max_hold: Duration::from_secs(90),
        ..ClaimRules::new(ttl)
    };
    match claim(&mut con, &keys, kind, "b#1", &rules).await.unwrap() {
        Claim::HoldCut(at) => {
            let now = redis_now(&mut con).await;
            assert!(
                at <= now + 90_000 && at > now + 80_000,
                "held until {at}, now {now}"
            );
        }
        other => panic!("{other:?}"),
    }

    // Once over, a claim returns the shared failure count.
    let _: () = con
        .hset(keys.status(), status::RETRY_AFTER_MS, 1)
        .await
        .unwrap();
    let _: () = con
        .hset(keys.status(), status::PAUSED_UNTIL_MS, 1)
        .await
        .unwrap();
    let _: () = con.hset(keys.schedule(), (kind).as_str(), 0).await.unwrap();
    let (_, state) = grant(&mut con, &keys, kind, "b#1", ttl).await;
    assert_eq!(state.failures, 1);
}

#[tokio::test]
async fn the_shared_rate_refuses_claims_beyond_the_burst_without_taking_locks() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let rate = RateLimit {
        key: wxtoken_schema::rate_key("wxtoken", "api.weixin.qq.com"),
        interval: Duration::from_secs(10),
        burst: 2,
    };
    let ttl = Duration::from_secs(5);
    let mut outcomes = Vec::new();
    for i in 0..3 {
        let keys = CredentialKeys::new("wxtoken", &format!("app-{i}")).unwrap();
        queue(&mut con, &keys, &[Kind::AccessToken]).await;
        let c = claim(
            &mut con,
            &keys,
            Kind::AccessToken,
            "a#1",
            &ClaimRules {
                rate: Some(&rate),
                ..ClaimRules::new(ttl)
            },
        )
        .await
        .unwrap();
        let lock: Option<String> = con.get(keys.lock(Kind::AccessToken)).await.unwrap();
        outcomes.push((c, lock.is_some()));
    }
    assert!(matches!(outcomes[0], (Claim::Granted { .. }, true)));
    assert!(matches!(outcomes[1], (Claim::Granted { .. }, true)));
    match &outcomes[2] {
        (Claim::RateLimited(wait), false) => {
            assert!(
                *wait > Duration::from_secs(9) && *wait <= Duration::from_secs(10),
                "{wait:?}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_refused_claim_gives_its_rate_permit_back() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let rate = RateLimit {
        key: wxtoken_schema::rate_key("wxtoken", "api.weixin.qq.com"),
        interval: Duration::from_secs(10),
        burst: 2,
    };
    let rules = ClaimRules {
        rate: Some(&rate),
        ..ClaimRules::new(Duration::from_secs(5))
    };
    let keys: Vec<CredentialKeys> = (0..3)
        .map(|i| CredentialKeys::new("wxtoken", &format!("app-{i}")).unwrap())
        .collect();
    for k in &keys {
        queue(&mut con, k, &[Kind::AccessToken]).await;
    }
    let c = claim(&mut con, &keys[0], Kind::AccessToken, "a#1", &rules).await;
    assert!(matches!(c, Ok(Claim::Granted { .. })), "{c:?}");
    // Another replica races for the same value: refused (not due while
    // held), and the permit it took goes back.
    let c = claim(&mut con, &keys[0], Kind::AccessToken, "b#1", &rules).await;
    assert!(matches!(c, Ok(Claim::NotDue(_))), "{c:?}");
    let c = claim(&mut con, &keys[1], Kind::AccessToken, "b#1", &rules).await;
    assert!(
        matches!(c, Ok(Claim::Granted { .. })),
        "the refund left a permit: {c:?}"
    );
    let c = claim(&mut con, &keys[2], Kind::AccessToken, "b#1", &rules).await;
    assert!(
        matches!(c, Ok(Claim::RateLimited(_))),
        "burst of 2 used: {c:?}"
    );
}

#[tokio::test]
async fn a_credential_removed_during_a_lease_is_not_brought_back_by_its_write() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("wxtoken", "app").unwrap();
    queue(&mut con, &keys, &[Kind::AccessToken]).await;
    let (fence, _) = grant(
        &mut con,
        &keys,
        Kind::AccessToken,
        "a#1",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        registry::unregister(&mut con, &keys, "r1", Duration::from_secs(15))
            .await
            .unwrap(),
        "the last holder removed it"
    );
    // An index update that crosses the removal (a claim's, sent just
    // after its script) does not bring the entry back: nobody would ever
    // claim it again.
    wxtoken_schema::index::follow(&mut con, &keys, Kind::AccessToken, 123)
        .await
        .unwrap();
    let outcome = write_token(&mut con, &keys, &write("a#1", fence, "TOKEN-1"))
        .await
        .unwrap();
    assert_eq!(outcome, WriteOutcome::Unregistered);
    let stored: Option<String> = con.get(keys.value(Kind::AccessToken)).await.unwrap();
    assert_eq!(stored, None);
    assert_eq!(due_at(&mut con, &keys, Kind::AccessToken).await, None);
    let indexed: Option<f64> = con
        .zscore(keys.due(), keys.member(Kind::AccessToken))
        .await
        .unwrap();
    assert_eq!(indexed, None, "no index entry comes back");
    let lock: Option<String> = con.get(keys.lock(Kind::AccessToken)).await.unwrap();
    assert_eq!(lock, None, "the write released the lock");
}

#[tokio::test]
async fn hostile_values_do_not_stop_a_claim() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("wxtoken", "app").unwrap();
    let kind = Kind::AccessToken;
    queue(&mut con, &keys, &[kind]).await;
    // A list where the token belongs, garbage in the info hash's place, a
    // lock without expiry.
    let _: () = con.rpush(keys.value(kind), "x").await.unwrap();
    let _: () = con.set(keys.info(kind), "not a hash").await.unwrap();
    let _: () = con.set(keys.lock(kind), "stuck").await.unwrap();
    let c = claim(
        &mut con,
        &keys,
        kind,
        "a#1",
        &ClaimRules::new(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert!(matches!(c, Claim::Busy(_)), "{c:?}");
    let pttl: i64 = con.pttl(keys.lock(kind)).await.unwrap();
    assert!(pttl > 0, "a lock without expiry is given one");
    let _: () = con.del(keys.lock(kind)).await.unwrap();
    let _: () = con.hset(keys.schedule(), (kind).as_str(), 0).await.unwrap();
    let (_, state) = grant(&mut con, &keys, kind, "a#1", Duration::from_secs(5)).await;
    assert_eq!(state.value, None);
    // Non-UTF-8 bytes are not a token either.
    let _: () = con.del(keys.value(kind)).await.unwrap();
    let _: () = con
        .set(keys.value(kind), &[0xffu8, 0xfe, 0x00][..])
        .await
        .unwrap();
    let _: () = con.del(keys.lock(kind)).await.unwrap();
    let _: () = con.hset(keys.schedule(), (kind).as_str(), 0).await.unwrap();
    let (_, state) = grant(&mut con, &keys, kind, "b#1", Duration::from_secs(5)).await;
    assert_eq!(state.value, None);
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

#[tokio::test]
async fn a_ticket_failure_holds_only_the_ticket_and_a_token_failure_holds_both() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = CredentialKeys::new("wxtoken", "app").unwrap();
    let ttl = Duration::from_secs(5);
    let (at, ticket) = (Kind::AccessToken, Kind::WxCardTicket);
    queue(&mut con, &keys, &[at, ticket]).await;
    let failure = Failure {
        message: "wx_card_ticket: WeChat errcode 48001",
        errcode: Some(48001),
        paused: false,
        replica: "r1",
    };
    grant(&mut con, &keys, ticket, "a#1", ttl).await;
    assert!(finish(
        &mut con,
        &keys,
        ticket,
        "a#1",
        Duration::from_secs(300),
        Some(&failure),
        None
    )
    .await
    .unwrap());
    // The ticket is held; the access token is not.
    let _: () = con
        .hset(keys.schedule(), (ticket).as_str(), 0)
        .await
        .unwrap();
    assert!(matches!(
        claim(&mut con, &keys, ticket, "b#1", &ClaimRules::new(ttl))
            .await
            .unwrap(),
        Claim::Held(_)
    ));
    let (_, state) = grant(&mut con, &keys, at, "b#2", ttl).await;
    assert_eq!(state.failures, 0, "the token's own count");
    // The access token fails: both are held.
    let failure = Failure {
        message: "access_token: WeChat errcode -1",
        errcode: Some(-1),
        paused: false,
        replica: "r1",
    };
    assert!(finish(
        &mut con,
        &keys,
        at,
        "b#2",
        Duration::from_secs(60),
        Some(&failure),
        None
    )
    .await
    .unwrap());
    for kind in [at, ticket] {
        let _: () = con.hset(keys.schedule(), (kind).as_str(), 0).await.unwrap();
        assert!(
            matches!(
                claim(&mut con, &keys, kind, "c#1", &ClaimRules::new(ttl))
                    .await
                    .unwrap(),
                Claim::Held(_)
            ),
            "{kind}"
        );
    }
}

#[tokio::test]
async fn verify_tickets_are_stored_newest_push_first() {
    use wxtoken_schema::{store_verify_ticket, ComponentKeys};
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = ComponentKeys::new("wxtoken", "wxc1").unwrap();
    let ttl = Duration::from_secs(43_200);
    let get = |con: &mut Con| {
        let key = keys.verify_ticket();
        let mut con = con.clone();
        async move { con.get::<_, Option<String>>(key).await.unwrap() }
    };

    assert!(store_verify_ticket(&mut con, &keys, "t-200", 200, ttl)
        .await
        .unwrap());
    assert_eq!(get(&mut con).await.as_deref(), Some("t-200"));
    let pttl: i64 = con.pttl(keys.verify_ticket()).await.unwrap();
    assert!((43_100_000..=43_200_000).contains(&pttl), "{pttl}");
    let info_ttl: i64 = con.pttl(keys.verify_ticket_info()).await.unwrap();
    assert!(info_ttl > 43_100_000, "{info_ttl}");
    let created: String = con
        .hget(keys.verify_ticket_info(), "create_time")
        .await
        .unwrap();
    assert_eq!(created, "200");

    // An older push (late, or replayed) never brings back an older ticket.
    assert!(!store_verify_ticket(&mut con, &keys, "t-100", 100, ttl)
        .await
        .unwrap());
    assert_eq!(get(&mut con).await.as_deref(), Some("t-200"));
    // The same push again, or a newer one, is stored.
    assert!(store_verify_ticket(&mut con, &keys, "t-200", 200, ttl)
        .await
        .unwrap());
    assert!(store_verify_ticket(&mut con, &keys, "t-300", 300, ttl)
        .await
        .unwrap());
    assert_eq!(get(&mut con).await.as_deref(), Some("t-300"));

    // Once the ticket is gone, any push is stored; wrong types are replaced.
    let _: () = con.del(keys.verify_ticket()).await.unwrap();
    assert!(store_verify_ticket(&mut con, &keys, "t-050", 50, ttl)
        .await
        .unwrap());
    assert_eq!(get(&mut con).await.as_deref(), Some("t-050"));
    let _: () = con.del(keys.verify_ticket_info()).await.unwrap();
    let _: () = con.sadd(keys.verify_ticket_info(), "x").await.unwrap();
    let _: () = con.del(keys.verify_ticket()).await.unwrap();
    let _: () = con.rpush(keys.verify_ticket(), "x").await.unwrap();
    assert!(store_verify_ticket(&mut con, &keys, "t-060", 60, ttl)
        .await
        .unwrap());
    assert_eq!(get(&mut con).await.as_deref(), Some("t-060"));
}

/// A claim refused while another replica held the lease must not move the
/// due-queue entry past the next due time the holder's write put there
/// (it would delay the value until the lock's expiry); an earlier time is
/// always taken.
#[tokio::test]
async fn a_refused_claim_never_moves_a_future_entry_later() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let k = CredentialKeys::new("wxtoken", "app").unwrap();
    let member = k.member(Kind::AccessToken);
    let now = {
        let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut con).await.unwrap();
        s * 1000 + us / 1000
    };
    let score = |con: &mut Con| {
        let (key, member) = (k.due(), member.clone());
        let mut con = con.clone();
        async move {
            let s: Option<f64> = con.zscore(key, member).await.unwrap();
            s.map(|s| s as u64)
        }
    };
    // Missing (a removal took it out): not brought back.
    wxtoken_schema::index::follow_if_due(&mut con, &k, Kind::AccessToken, now + 30_000)
        .await
        .unwrap();
    assert_eq!(score(&mut con).await, None);
    let _: () = con.zadd(k.due(), &member, now + 30_000).await.unwrap();
    // In the future: a later time is refused, an earlier one taken.
    wxtoken_schema::index::follow_if_due(&mut con, &k, Kind::AccessToken, now + 60_000)
        .await
        .unwrap();
    assert_eq!(score(&mut con).await, Some(now + 30_000));
    wxtoken_schema::index::follow_if_due(&mut con, &k, Kind::AccessToken, now + 10_000)
        .await
        .unwrap();
    assert_eq!(score(&mut con).await, Some(now + 10_000));
    // Due already: moved wherever the schedule says.
    let _: () = con.zadd(k.due(), &member, now - 1_000).await.unwrap();
    wxtoken_schema::index::follow_if_due(&mut con, &k, Kind::AccessToken, now + 60_000)
        .await
        .unwrap();
    assert_eq!(score(&mut con).await, Some(now + 60_000));
}
