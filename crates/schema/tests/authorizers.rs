//! A third-party platform's authorizers in Redis: registration by code and
//! by reconciliation, the durable refresh token, the single-use code, and
//! removal — against a real redis-server.

use redis::AsyncCommands;
use std::time::Duration;
use wxtoken_schema::registry::{self, Authorization};
use wxtoken_schema::{
    claim, finish, parse_member, write_token, Claim, ClaimRules, ComponentKeys, CredentialKeys,
    Exchanged, Failure, Kind, Subject, TokenWrite, WriteOutcome,
};
use wxtoken_testkit::RedisServer;

mod common;
use common::connect;

type Con = redis::aio::MultiplexedConnection;

const NS: &str = "wxtoken";
const KINDS: [Kind; 2] = [Kind::AccessToken, Kind::JsapiTicket];

fn keys(appid: &str) -> (CredentialKeys, ComponentKeys) {
    (
        CredentialKeys::authorizer(NS, "wxcomp", appid).unwrap(),
        ComponentKeys::new(NS, "wxcomp").unwrap(),
    )
}

async fn redis_now(con: &mut Con) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(con).await.unwrap();
    s * 1000 + us / 1000
}

fn by_code(code: &str) -> Authorization<'_> {
    Authorization {
        code: Some((code, Duration::from_secs(600))),
        refresh_token: None,
        kinds: &KINDS,
        new: true,
    }
}

fn found(refresh_token: &str) -> Authorization<'_> {
    Authorization {
        code: None,
        refresh_token: Some(refresh_token),
        kinds: &KINDS,
        new: false,
    }
}

fn write<'a>(
    owner: &'a str,
    fence: u64,
    refresh: Option<&'a str>,
    code: Option<&'a str>,
) -> TokenWrite<'a> {
    TokenWrite {
        kind: Kind::AccessToken,
        owner,
        fence,
        token: "authorizer-token-1",
        ttl: Duration::from_secs(60),
        expires_in: 7200,
        replica: "r1",
        next_due: Duration::from_secs(50),
        tickets: &[Kind::JsapiTicket],
        refresh_token: refresh,
        code_used: code,
    }
}

#[test]
fn subject_ids_name_what_they_are() {
    assert_eq!(
        Subject::parse("oa-main"),
        Some(Subject::Credential("oa-main"))
    );
    assert_eq!(
        Subject::parse("component/wxc"),
        Some(Subject::Component("wxc"))
    );
    assert_eq!(
        Subject::parse("authorizer/wxc/wxa"),
        Some(Subject::Authorizer {
            component: "wxc",
            appid: "wxa"
        })
    );
    for bad in [
        "component/",
        "authorizer/wxc",
        "authorizer/wxc/wxa/x",
        "other/wxc",
        "a/b",
        "component/w:x",
    ] {
        assert_eq!(Subject::parse(bad), None, "{bad:?}");
        assert!(CredentialKeys::for_id(NS, bad).is_err(), "{bad:?}");
    }
    // Config names can never be platform ids.
    assert!(CredentialKeys::new(NS, "component/wxc").is_err());
    let (k, _) = keys("wxa");
    assert_eq!(
        k.value(Kind::AccessToken),
        "wxtoken:{authorizer/wxcomp/wxa}:access_token"
    );
    assert_eq!(
        k.refresh_token(),
        "wxtoken:{authorizer/wxcomp/wxa}:refresh_token"
    );
    assert_eq!(k.input(Kind::AccessToken), Some(k.refresh_token()));
    assert_eq!(k.input(Kind::JsapiTicket), Some(k.value(Kind::AccessToken)));
    let c = CredentialKeys::component(NS, "wxcomp").unwrap();
    assert_eq!(
        c.value(Kind::ComponentAccessToken),
        "wxtoken:{component/wxcomp}:component_access_token"
    );
    assert_eq!(
        c.input(Kind::ComponentAccessToken).as_deref(),
        Some(
            ComponentKeys::new(NS, "wxcomp")
                .unwrap()
                .verify_ticket()
                .as_str()
        )
    );
    // Queue members of each subject parse only with that subject's kinds.
    assert!(parse_member("authorizer/wxc/wxa access_token").is_some());
    assert!(parse_member("authorizer/wxc/wxa wx_card_ticket").is_none());
    assert!(parse_member("component/wxc component_access_token").is_some());
    assert!(parse_member("component/wxc access_token").is_none());
    assert!(parse_member("oa-main component_access_token").is_none());
}

#[tokio::test]
async fn a_code_registers_the_authorizer_due_now_and_is_spent_by_the_write() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let (k, index) = keys("wxa1");
    let a = registry::authorize(&mut con, &k, &index, &by_code("code-1"))
        .await
        .unwrap();
    assert_eq!(a.queued, 2);
    let now = redis_now(&mut con).await;
    let due: f64 = con
        .hget(k.schedule(), (Kind::AccessToken).as_str())
        .await
        .unwrap();
    assert!(due as u64 <= now);
    assert!(con
        .sismember::<_, _, bool>(k.registry(), k.id())
        .await
        .unwrap());
    assert_eq!(
        registry::count_authorizers(&mut con, &index).await.unwrap(),
        1
    );
    let code_ttl: i64 = con.pttl(k.authorization_code()).await.unwrap();
    assert!(code_ttl > 590_000 && code_ttl <= 600_000, "{code_ttl}");
    let mode: String = con.hget(k.status(), "mode").await.unwrap();
    assert_eq!(mode, "authorizer");

    // The claim hands the code to the lease; no refresh token yet.
    let (fence, state) = match claim(
        &mut con,
        &k,
        Kind::AccessToken,
        "r1#1",
        &ClaimRules::new(Duration::from_secs(30)),
    )
    .await
    .unwrap()
    {
        Claim::Granted { fence, state } => (fence, state),
        other => panic!("{other:?}"),
    };
    assert_eq!(state.authorization_code.as_deref(), Some("code-1"));
    assert_eq!(state.input, None);

    // The write stores the durable refresh token and deletes the code.
    let out = write_token(
        &mut con,
        &k,
        &write("r1#1", fence, Some("refresh-1"), Some("code-1")),
    )
    .await
    .unwrap();
    assert!(
        matches!(out, WriteOutcome::Written { ref tickets_due, .. } if tickets_due == &[Kind::JsapiTicket])
    );
    let rt: String = con.get(k.refresh_token()).await.unwrap();
    assert_eq!(rt, "refresh-1");
    assert_eq!(
        con.pttl::<_, i64>(k.refresh_token()).await.unwrap(),
        -1,
        "durable: no TTL"
    );
    assert!(!con.exists::<_, bool>(k.authorization_code()).await.unwrap());
    let due: f64 = con
        .hget(k.schedule(), (Kind::AccessToken).as_str())
        .await
        .unwrap();
    assert!(due as u64 >= now + 40_000, "next refresh queued, not now");

    // The next claim refreshes with the refresh token.
    let _: () = con
        .hset(k.schedule(), (Kind::AccessToken).as_str(), 0)
        .await
        .unwrap();
    match claim(
        &mut con,
        &k,
        Kind::AccessToken,
        "r1#2",
        &ClaimRules::new(Duration::from_secs(30)),
    )
    .await
    .unwrap()
    {
        Claim::Granted { state, .. } => {
            assert_eq!(state.input.as_deref(), Some("refresh-1"));
            assert_eq!(state.authorization_code, None);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_code_arriving_during_a_lease_survives_it_and_is_due_at_once() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let (k, index) = keys("wxa2");
    registry::authorize(&mut con, &k, &index, &found("refresh-old"))
        .await
        .unwrap();
    let fence = match claim(
        &mut con,
        &k,
        Kind::AccessToken,
        "r1#1",
        &ClaimRules::new(Duration::from_secs(30)),
    )
    .await
    .unwrap()
    {
        Claim::Granted { fence, .. } => fence,
        other => panic!("{other:?}"),
    };
    // Re-authorized while the refresh with the old token runs.
    registry::authorize(&mut con, &k, &index, &by_code("code-new"))
        .await
        .unwrap();
    let out = write_token(&mut con, &k, &write("r1#1", fence, None, None))
        .await
        .unwrap();
    assert!(matches!(out, WriteOutcome::Written { .. }));
    let code: String = con.get(k.authorization_code()).await.unwrap();
    assert_eq!(code, "code-new", "a code the lease did not use is kept");
    let now = redis_now(&mut con).await;
    let due: f64 = con
        .hget(k.schedule(), (Kind::AccessToken).as_str())
        .await
        .unwrap();
    assert!(due as u64 <= now, "due at once to exchange the new code");

    // A failed lease that did not use it records the failure but no hold.
    let _: () = con
        .hset(k.schedule(), (Kind::AccessToken).as_str(), 0)
        .await
        .unwrap();
    match claim(
        &mut con,
        &k,
        Kind::AccessToken,
        "r1#2",
        &ClaimRules::new(Duration::from_secs(30)),
    )
    .await
    .unwrap()
    {
        Claim::Granted { state, .. } => {
            assert_eq!(state.authorization_code.as_deref(), Some("code-new"))
        }
        other => panic!("{other:?}"),
    }
    let failure = Failure {
        message: "access_token: errcode -1",
        errcode: Some(-1),
        paused: false,
        replica: "r1",
    };
    // Exchanged and refused as spent (61009): deleted.
    assert!(finish(
        &mut con,
        &k,
        Kind::AccessToken,
        "r1#2",
        Duration::from_secs(60),
        Some(&failure),
        Some(Exchanged {
            code: "code-new",
            spent: true
        }),
    )
    .await
    .unwrap());
    assert!(!con.exists::<_, bool>(k.authorization_code()).await.unwrap());

    // A fresh code that arrives during a failing lease: due now, no hold.
    registry::authorize(&mut con, &k, &index, &found("refresh-old"))
        .await
        .unwrap();
    let _: () = con
        .hset(k.schedule(), (Kind::AccessToken).as_str(), 0)
        .await
        .unwrap();
    let _: () = con.hdel(k.status(), "retry_after_ms").await.unwrap();
    assert!(matches!(
        claim(
            &mut con,
            &k,
            Kind::AccessToken,
            "r1#3",
            &ClaimRules::new(Duration::from_secs(30))
        )
        .await
        .unwrap(),
        Claim::Granted { .. }
    ));
    registry::authorize(&mut con, &k, &index, &by_code("code-3"))
        .await
        .unwrap();
    assert!(finish(
        &mut con,
        &k,
        Kind::AccessToken,
        "r1#3",
        Duration::from_secs(300),
        Some(&failure),
        None
    )
    .await
    .unwrap());
    let hold: Option<String> = con.hget(k.status(), "retry_after_ms").await.unwrap();
    assert_eq!(hold, None);
    let now = redis_now(&mut con).await;
    let due: f64 = con
        .hget(k.schedule(), (Kind::AccessToken).as_str())
        .await
        .unwrap();
    assert!(due as u64 <= now);
    assert!(con.exists::<_, bool>(k.authorization_code()).await.unwrap());
}

#[tokio::test]
async fn reconciliation_registers_replaces_stale_tokens_and_removes_only_older_authorizers() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let index = ComponentKeys::new(NS, "wxcomp").unwrap();
    let items: Vec<_> = (0..1200)
        .map(|i| (keys(&format!("wxa{i:04}")).0, found("rt")))
        .collect();
    let answers = registry::authorize_many(&mut con, &index, &items)
        .await
        .unwrap();
    assert_eq!(answers.len(), 1200);
    assert!(answers
        .iter()
        .all(|a| a.queued == 2 && a.refresh_token_replaced));
    // Found again with the same token: nothing changes.
    let again = registry::authorize_many(&mut con, &index, &items[..10])
        .await
        .unwrap();
    assert!(again
        .iter()
        .all(|a| a.queued == 0 && !a.refresh_token_replaced));
    // A stale token is replaced, its holds cleared and it is due now.
    let (k5, _) = keys("wxa0005");
    let _: () = con
        .hset(k5.status(), "retry_after_ms", u64::MAX / 4)
        .await
        .unwrap();
    let _: () = con
        .hset(k5.schedule(), (Kind::AccessToken).as_str(), u64::MAX / 4)
        .await
        .unwrap();
    let r = registry::authorize(&mut con, &k5, &index, &found("rt-new"))
        .await
        .unwrap();
    assert!(r.refresh_token_replaced && r.queued == 0);
    let now = redis_now(&mut con).await;
    let due: f64 = con
        .hget(k5.schedule(), (Kind::AccessToken).as_str())
        .await
        .unwrap();
    assert!(due as u64 <= now);
    assert!(!con
        .hexists::<_, _, bool>(k5.status(), "retry_after_ms")
        .await
        .unwrap());

    // Paging the index.
    let page = registry::authorizers(&mut con, &index, 1000, 1000)
        .await
        .unwrap();
    assert_eq!(page.len(), 200);

    // Removal, conditional on when it was authorized.
    let (k7, _) = keys("wxa0007");
    assert!(
        !registry::remove_authorizer(&mut con, &k7, &index, Some(0))
            .await
            .unwrap(),
        "authorized after 0: kept"
    );
    let _: () = con.set(k7.value(Kind::AccessToken), "t").await.unwrap();
    let _: () = con
        .set(k7.lock(Kind::AccessToken), "someone")
        .await
        .unwrap();
    assert!(
        registry::remove_authorizer(&mut con, &k7, &index, Some(now + 1))
            .await
            .unwrap()
    );
    for key in [
        k7.value(Kind::AccessToken),
        k7.refresh_token(),
        k7.status(),
        k7.lock(Kind::AccessToken),
    ] {
        assert!(
            !con.exists::<_, bool>(&key).await.unwrap(),
            "{key} left behind"
        );
    }
    assert!(con
        .hget::<_, _, Option<f64>>(k7.schedule(), Kind::AccessToken.as_str())
        .await
        .unwrap()
        .is_none());
    assert!(!con
        .sismember::<_, _, bool>(k7.registry(), k7.id())
        .await
        .unwrap());
    assert_eq!(
        registry::count_authorizers(&mut con, &index).await.unwrap(),
        1199
    );
    // Its claim is refused from now on.
    assert_eq!(
        claim(
            &mut con,
            &k7,
            Kind::AccessToken,
            "r#1",
            &ClaimRules::new(Duration::from_secs(5))
        )
        .await
        .unwrap(),
        Claim::Unregistered
    );
}

#[tokio::test]
async fn replayed_or_late_authorization_events_change_nothing() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let (k, index) = keys("wxa9");
    let now = redis_now(&mut con).await;
    // Registered (by a push exchanged, or found by a reconciliation) with a
    // refresh token.
    registry::authorize(&mut con, &k, &index, &found("rt-1"))
        .await
        .unwrap();
    // An `authorized` push WeChat made before that: a replay; nothing changes.
    let old = registry::authorize_pushed(
        &mut con,
        &k,
        &index,
        &by_code("old-code"),
        Some(now - 60_000),
    )
    .await
    .unwrap();
    assert!(old.stale);
    assert!(!con.exists::<_, bool>(k.authorization_code()).await.unwrap());
    // A newer one (re-authorization) is taken.
    let newer = registry::authorize_pushed(
        &mut con,
        &k,
        &index,
        &by_code("new-code"),
        Some(now + 60_000),
    )
    .await
    .unwrap();
    assert!(!newer.stale);
    let code: String = con.get(k.authorization_code()).await.unwrap();
    assert_eq!(code, "new-code");
    // An `unauthorized` from before the re-authorization keeps it…
    assert!(
        !registry::remove_authorizer(&mut con, &k, &index, Some(now))
            .await
            .unwrap()
    );
    assert!(con.exists::<_, bool>(k.refresh_token()).await.unwrap());
    // …a later one removes it; removing an unknown authorizer says so.
    let later = redis_now(&mut con).await + 1;
    assert!(
        registry::remove_authorizer(&mut con, &k, &index, Some(later))
            .await
            .unwrap()
    );
    assert!(!registry::remove_authorizer(&mut con, &k, &index, None)
        .await
        .unwrap());
}

#[tokio::test]
async fn a_reconciliation_does_not_bring_back_an_authorizer_just_removed() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let (k, index) = keys("wxa10");
    registry::authorize(&mut con, &k, &index, &found("rt-1"))
        .await
        .unwrap();
    // `unauthorized` arrives while a reconciliation holds a listing that
    // still has the account.
    assert!(registry::remove_authorizer(&mut con, &k, &index, None)
        .await
        .unwrap());
    let late = registry::authorize(&mut con, &k, &index, &found("rt-1"))
        .await
        .unwrap();
    assert!(late.stale, "found again by an old listing: ignored");
    assert!(!con.exists::<_, bool>(k.refresh_token()).await.unwrap());
    assert_eq!(
        registry::count_authorizers(&mut con, &index).await.unwrap(),
        0
    );
    let mark: i64 = con.pttl(k.removed()).await.unwrap();
    assert!(mark > 3_500_000 && mark <= 3_600_000, "{mark}");
    // A new authorization is taken at once, and clears the mark.
    let again = registry::authorize(&mut con, &k, &index, &by_code("code-2"))
        .await
        .unwrap();
    assert!(!again.stale && again.queued > 0);
    assert!(!con.exists::<_, bool>(k.removed()).await.unwrap());
}
