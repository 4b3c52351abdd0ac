//! A platform's authorizers against hostile or corrupt Redis values: a
//! value nobody can use must never make a lease's end queue the next
//! refresh at once (a loop of WeChat calls), and must not stop the other
//! authorizers.

use redis::AsyncCommands;
use std::time::Duration;
use wxtoken_schema::registry::{self, Authorization};
use wxtoken_schema::{
    claim, finish, write_token, Claim, ClaimRules, ComponentKeys, CredentialKeys, Failure, Kind,
    TokenWrite, WriteOutcome,
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

fn found(refresh_token: &str) -> Authorization<'_> {
    Authorization {
        code: None,
        refresh_token: Some(refresh_token),
        kinds: &KINDS,
        new: false,
    }
}

async fn granted(
    con: &mut Con,
    k: &CredentialKeys,
    owner: &str,
) -> (u64, wxtoken_schema::ValueState) {
    match claim(
        con,
        k,
        Kind::AccessToken,
        owner,
        &ClaimRules::new(Duration::from_secs(30)),
    )
    .await
    .unwrap()
    {
        Claim::Granted { fence, state } => (fence, state),
        other => panic!("{other:?}"),
    }
}

async fn due_at(con: &mut Con, k: &CredentialKeys) -> u64 {
    let due: f64 = con
        .hget(k.schedule(), (Kind::AccessToken).as_str())
        .await
        .unwrap();
    due as u64
}

/// Codes no exchange can use: not UTF-8, not printable, too long, of the
/// wrong type. Stored without a TTL (nothing wxtoken writes).
async fn plant_codes(con: &mut Con, ks: &[CredentialKeys]) {
    let junk: [Vec<u8>; 3] = [
        b"\xff\xfe\x00code".to_vec(),
        b"code with spaces\n".to_vec(),
        vec![b'c'; 5000],
    ];
    for (k, j) in ks.iter().zip(junk.iter()) {
        let _: () = con.set(k.authorization_code(), j).await.unwrap();
    }
    if let Some(k) = ks.get(3) {
        let _: () = con.hset(k.authorization_code(), "code", "x").await.unwrap();
    }
}

#[tokio::test]
async fn an_unusable_code_does_not_make_a_refresh_due_again_at_once() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let ks: Vec<CredentialKeys> = (1..=4).map(|i| keys(&format!("wxa{i}")).0).collect();
    let (_, index) = keys("wxa1");
    for k in &ks {
        registry::authorize(&mut con, k, &index, &found("refresh-1"))
            .await
            .unwrap();
    }
    plant_codes(&mut con, &ks).await;
    for (i, k) in ks.iter().enumerate() {
        let (fence, state) = granted(&mut con, k, "r1#1").await;
        // Nothing to exchange: the refresh token is used.
        assert_eq!(state.input.as_deref(), Some("refresh-1"), "#{i}");
        assert_eq!(state.authorization_code, None, "#{i}: {state:?}");
        let w = TokenWrite {
            kind: Kind::AccessToken,
            owner: "r1#1",
            fence,
            token: "authorizer-token-1",
            ttl: Duration::from_secs(60),
            expires_in: 7200,
            replica: "r1",
            next_due: Duration::from_secs(50),
            tickets: &[Kind::JsapiTicket],
            refresh_token: None,
            code_used: None,
        };
        let now = redis_now(&mut con).await;
        let out = write_token(&mut con, k, &w).await.unwrap();
        assert!(matches!(out, WriteOutcome::Written { .. }), "#{i}: {out:?}");
        let due = due_at(&mut con, k).await;
        assert!(
            due >= now + 40_000,
            "#{i}: an unusable code queued the next refresh at once ({} ms from now)",
            due as i64 - now as i64
        );

        // A refused refresh token: the failure holds, not due at once.
        let _: () = con
            .hset(k.schedule(), (Kind::AccessToken).as_str(), 0)
            .await
            .unwrap();
        let (_, _) = granted(&mut con, k, "r1#2").await;
        let failure = Failure {
            message: "access_token: 61023",
            errcode: Some(61023),
            paused: false,
            replica: "r1",
        };
        let now = redis_now(&mut con).await;
        assert!(finish(
            &mut con,
            k,
            Kind::AccessToken,
            "r1#2",
            Duration::from_secs(30),
            Some(&failure),
            None,
        )
        .await
        .unwrap());
        let due = due_at(&mut con, k).await;
        assert!(
            due >= now + 20_000,
            "#{i}: an unusable code cancelled the backoff ({} ms from now)",
            due as i64 - now as i64
        );
        let retry: Option<String> = con.hget(k.status(), "retry_after_ms").await.unwrap();
        assert!(retry.is_some(), "#{i}: no shared backoff recorded");
    }
}

/// A stored verify ticket whose `create_time` lies far in the future
/// (corrupt or hostile: WeChat's pushes carry the current time) or that is
/// no ticket at all kept every genuine push out: the platform could never
/// get a component token again.
#[tokio::test]
async fn a_stored_ticket_from_the_future_does_not_keep_pushes_out() {
    use wxtoken_schema::store_verify_ticket;
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server).await;
    let keys = ComponentKeys::new(NS, "wxcomp").unwrap();
    let ttl = Duration::from_secs(43_200);
    let now_s = redis_now(&mut con).await / 1000;
    for (stored, create_time) in [
        (b"ticket@@@planted".to_vec(), "99999999999"),
        (b"\xff\xfe".to_vec(), "99999999999"),
        (b"ticket@@@planted".to_vec(), "1e300"),
    ] {
        let _: () = con.set(keys.verify_ticket(), stored).await.unwrap();
        let _: () = con
            .hset(keys.verify_ticket_info(), "create_time", create_time)
            .await
            .unwrap();
        assert!(
            store_verify_ticket(&mut con, &keys, "ticket@@@genuine", now_s, ttl)
                .await
                .unwrap(),
            "a push was kept out by create_time {create_time}"
        );
        let t: String = con.get(keys.verify_ticket()).await.unwrap();
        assert_eq!(t, "ticket@@@genuine");
    }
    // A replayed older push still cannot bring back an older ticket.
    assert!(
        !store_verify_ticket(&mut con, &keys, "ticket@@@older", now_s - 600, ttl)
            .await
            .unwrap()
    );
}
