//! WeCom third-party suites in Redis: the suite ticket, auth codes and
//! their exactly-once exchange lock, a corp's registration with its durable
//! permanent code, its lease, and its removal — against a real
//! redis-server, in cluster mode where it matters (a script touching two
//! slots fails with CROSSSLOT).

use redis::AsyncCommands;
use std::time::Duration;
use wxtoken_schema::registry;
use wxtoken_schema::suite::{
    auth_code_exchanged, corps, count_corps, lock_exchange, pending_auth_codes, record_auth_code,
    release_exchange, renew_exchange, store_suite_ticket,
};
use wxtoken_schema::{
    claim, parse_member, write_token, Claim, ClaimRules, CredentialKeys, Kind, Subject, SuiteKeys,
    TokenWrite, WriteOutcome, SUITE_TICKET_TTL_MS,
};
use wxtoken_testkit::RedisServer;

mod common;
use common::connect;

type Con = redis::aio::MultiplexedConnection;

const NS: &str = "wxtoken";
const SUITE: &str = "wwsuite1";
const KINDS: [Kind; 3] = [
    Kind::AccessToken,
    Kind::JsapiTicket,
    Kind::AgentConfigTicket,
];

fn corp(corpid: &str) -> CredentialKeys {
    CredentialKeys::corp(NS, SUITE, corpid).unwrap()
}

fn suite() -> SuiteKeys {
    SuiteKeys::new(NS, SUITE).unwrap()
}

/// A single-node Redis Cluster holding every slot: scripts whose keys span
/// two slots fail with CROSSSLOT, as on a real cluster.
async fn cluster() -> (RedisServer, Con) {
    let server = RedisServer::start_with_args(&["--cluster-enabled", "yes"]).unwrap();
    let mut con = connect(&server).await;
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async(&mut con)
        .await
        .unwrap();
    // Wait until the node serves its slots.
    for _ in 0..100 {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut con)
            .await
            .unwrap();
        if info.contains("cluster_state:ok") {
            // The check is real: a script over two slots is refused.
            let crossed: redis::RedisResult<i64> = redis::cmd("EVAL")
                .arg("return 1")
                .arg(2)
                .arg("wxtoken:{suite/a}:x")
                .arg("wxtoken:{corp/a/b}:x")
                .query_async(&mut con)
                .await;
            assert_eq!(crossed.unwrap_err().code(), Some("CROSSSLOT"));
            return (server, con);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("single-node cluster did not come up");
}

#[test]
fn suite_and_corp_ids_name_what_they_are() {
    assert_eq!(Subject::parse("suite/wws1"), Some(Subject::Suite("wws1")));
    assert_eq!(
        Subject::parse("corp/wws1/wwc1"),
        Some(Subject::Corp {
            suite: "wws1",
            corpid: "wwc1"
        })
    );
    for bad in [
        "suite/",
        "suite/a:b",
        "corp/wws1",
        "corp/wws1/",
        "corp/a/b/c",
    ] {
        assert_eq!(Subject::parse(bad), None, "{bad:?}");
    }
    let c = corp("wwc1");
    assert_eq!(
        c.value(Kind::AccessToken),
        "wxtoken:{corp/wwsuite1/wwc1}:access_token"
    );
    assert_eq!(
        c.permanent_code(),
        "wxtoken:{corp/wwsuite1/wwc1}:permanent_code"
    );
    assert_eq!(c.grant(), c.permanent_code());
    assert_eq!(c.input(Kind::AccessToken), Some(c.permanent_code()));
    assert_eq!(
        c.input(Kind::AgentConfigTicket),
        Some(c.value(Kind::AccessToken))
    );
    let s = CredentialKeys::suite(NS, SUITE).unwrap();
    assert_eq!(
        s.value(Kind::SuiteAccessToken),
        "wxtoken:{suite/wwsuite1}:suite_access_token"
    );
    assert_eq!(
        s.input(Kind::SuiteAccessToken),
        Some(suite().suite_ticket())
    );
    assert_eq!(
        suite().suite_ticket(),
        "wxtoken:{suite/wwsuite1}:suite_ticket"
    );
    // Every suite key carries the suite subject's tag.
    for key in [
        suite().suite_ticket_info(),
        suite().corps(),
        suite().auth_codes(),
        suite().exchange_lock(),
    ] {
        assert!(key.starts_with("wxtoken:{suite/wwsuite1}:"), "{key}");
    }
    assert!(parse_member("suite/wws1 suite_access_token").is_some());
    assert!(parse_member("suite/wws1 access_token").is_none());
    assert!(parse_member("corp/wws1/wwc1 agent_config_ticket").is_some());
    assert!(parse_member("corp/wws1/wwc1 wx_card_ticket").is_none());
    assert!(CredentialKeys::new(NS, "suite/wws1").is_err());
    assert_eq!(SUITE_TICKET_TTL_MS, 1_800_000);
}

#[tokio::test]
async fn suite_tickets_newest_wins_for_thirty_minutes() {
    let (_server, mut con) = cluster().await;
    let s = suite();
    assert!(store_suite_ticket(&mut con, &s, "ticket-2", 2000)
        .await
        .unwrap());
    // An older push changes nothing; a newer one replaces.
    assert!(!store_suite_ticket(&mut con, &s, "ticket-1", 1000)
        .await
        .unwrap());
    let t: String = con.get(s.suite_ticket()).await.unwrap();
    assert_eq!(t, "ticket-2");
    assert!(store_suite_ticket(&mut con, &s, "ticket-3", 3000)
        .await
        .unwrap());
    let ttl: i64 = con.pttl(s.suite_ticket()).await.unwrap();
    assert!(ttl > 1_790_000 && ttl <= 1_800_000, "{ttl}");
}

#[tokio::test]
async fn an_auth_code_is_exchanged_once_and_a_replay_changes_nothing() {
    let (_server, mut con) = cluster().await;
    let s = suite();
    assert!(record_auth_code(&mut con, &s, "auth-code-1").await.unwrap());
    // WeCom retrying the push (or a replay): known.
    assert!(!record_auth_code(&mut con, &s, "auth-code-1").await.unwrap());
    let pending = pending_auth_codes(&mut con, &s).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].code, "auth-code-1");
    assert!(!format!("{:?}", pending[0]).contains("auth-code-1"));
    // One exchanger at a time.
    let ttl = Duration::from_secs(8);
    assert!(lock_exchange(&mut con, &s, "r1#a", ttl).await.unwrap());
    assert!(!lock_exchange(&mut con, &s, "r2#b", ttl).await.unwrap());
    assert!(renew_exchange(&mut con, &s, "r1#a", ttl).await.unwrap());
    assert!(!renew_exchange(&mut con, &s, "r2#b", ttl).await.unwrap());
    auth_code_exchanged(&mut con, &s, &pending[0].digest)
        .await
        .unwrap();
    release_exchange(&mut con, &s, "r2#b").await.unwrap();
    assert!(!lock_exchange(&mut con, &s, "r2#b", ttl).await.unwrap());
    release_exchange(&mut con, &s, "r1#a").await.unwrap();
    assert!(lock_exchange(&mut con, &s, "r2#b", ttl).await.unwrap());
    // Exchanged: nothing pending, the code itself is gone, a replay is known.
    assert!(pending_auth_codes(&mut con, &s).await.unwrap().is_empty());
    let stored: Vec<String> = con.hvals(s.auth_codes()).await.unwrap();
    assert!(
        stored.iter().all(|v| !v.contains("auth-code-1")),
        "{stored:?}"
    );
    assert!(!record_auth_code(&mut con, &s, "auth-code-1").await.unwrap());
    assert!(pending_auth_codes(&mut con, &s).await.unwrap().is_empty());
    // A hash of the wrong type is replaced, not an error.
    let _: () = con.del(s.auth_codes()).await.unwrap();
    let _: () = con.set(s.auth_codes(), "garbage").await.unwrap();
    assert!(pending_auth_codes(&mut con, &s).await.unwrap().is_empty());
    assert!(record_auth_code(&mut con, &s, "auth-code-2").await.unwrap());
}

#[tokio::test]
async fn a_corp_is_registered_with_its_durable_permanent_code_and_leased() {
    let (_server, mut con) = cluster().await;
    let s = suite();
    let c = corp("wwcorp1");
    let a = registry::authorize_corp(&mut con, &c, &s, "permanent-1", &KINDS, None)
        .await
        .unwrap();
    assert_eq!(a.queued, 3);
    assert!(a.refresh_token_replaced);
    assert_eq!(count_corps(&mut con, &s).await.unwrap(), 1);
    assert_eq!(corps(&mut con, &s, 0, 10).await.unwrap()[0].0, "wwcorp1");
    let mode: String = con.hget(c.status(), "mode").await.unwrap();
    let parent: String = con.hget(c.status(), "suite").await.unwrap();
    assert_eq!((mode.as_str(), parent.as_str()), ("suite_corp", SUITE));
    assert_eq!(con.pttl::<_, i64>(c.permanent_code()).await.unwrap(), -1);
    assert!(con
        .sismember::<_, _, bool>(c.registry(), c.id())
        .await
        .unwrap());
    let queued: Option<f64> = con
        .zscore(c.due(), c.member(Kind::AccessToken))
        .await
        .unwrap();
    assert!(queued.is_some());

    // The lease hands the permanent code to the holder as its input.
    let (fence, state) = match claim(
        &mut con,
        &c,
        Kind::AccessToken,
        "r1#1",
        &ClaimRules::new(Duration::from_secs(8)),
    )
    .await
    .unwrap()
    {
        Claim::Granted { fence, state } => (fence, state),
        other => panic!("{other:?}"),
    };
    assert_eq!(state.input.as_deref(), Some("permanent-1"));
    let w = TokenWrite {
        kind: Kind::AccessToken,
        owner: "r1#1",
        fence,
        token: "corp-token-1",
        ttl: Duration::from_millis(300),
        expires_in: 7200,
        replica: "r1",
        next_due: Duration::from_secs(50),
        tickets: &[Kind::JsapiTicket, Kind::AgentConfigTicket],
        refresh_token: None,
        code_used: None,
    };
    assert!(matches!(
        write_token(&mut con, &c, &w).await.unwrap(),
        WriteOutcome::Written { .. }
    ));
    // The token expires; the permanent code stays (durable).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        con.get::<_, Option<String>>(c.value(Kind::AccessToken))
            .await
            .unwrap(),
        None
    );
    let code: String = con.get(c.permanent_code()).await.unwrap();
    assert_eq!(code, "permanent-1");
    assert_eq!(con.pttl::<_, i64>(c.permanent_code()).await.unwrap(), -1);

    // A new authorization replaces it and makes the token due at once.
    let again = registry::authorize_corp(&mut con, &c, &s, "permanent-2", &KINDS, None)
        .await
        .unwrap();
    assert_eq!((again.queued, again.refresh_token_replaced), (0, true));
    let code: String = con.get(c.permanent_code()).await.unwrap();
    assert_eq!(code, "permanent-2");
}

#[tokio::test]
async fn cancel_removes_the_corp_and_every_key_unless_it_authorized_since() {
    let (_server, mut con) = cluster().await;
    let s = suite();
    let c = corp("wwcorp2");
    registry::authorize_corp(&mut con, &c, &s, "permanent-x", &KINDS, None)
        .await
        .unwrap();
    let _: () = con
        .set(c.value(Kind::AccessToken), "corp-token")
        .await
        .unwrap();
    // A replayed old cancel_auth (from before this authorization) keeps it.
    let kept = registry::remove_corp(&mut con, &c, &s, Some(1_000))
        .await
        .unwrap();
    assert!(!kept);
    assert_eq!(count_corps(&mut con, &s).await.unwrap(), 1);
    assert!(con
        .sismember::<_, _, bool>(c.registry(), c.id())
        .await
        .unwrap());
    let code: Option<String> = con.get(c.permanent_code()).await.unwrap();
    assert_eq!(code.as_deref(), Some("permanent-x"));

    // A current one removes everything but the one-hour removal mark.
    assert!(registry::remove_corp(&mut con, &c, &s, None).await.unwrap());
    let left: Vec<String> = con.keys("wxtoken:{corp/wwsuite1/wwcorp2}:*").await.unwrap();
    assert_eq!(left, vec![c.removed()]);
    assert_eq!(count_corps(&mut con, &s).await.unwrap(), 0);
    assert!(!con
        .sismember::<_, _, bool>(c.registry(), c.id())
        .await
        .unwrap());
    for kind in KINDS {
        let queued: Option<f64> = con.zscore(c.due(), c.member(kind)).await.unwrap();
        assert_eq!(queued, None, "{kind}");
    }
    // And it can authorize again.
    let a = registry::authorize_corp(&mut con, &c, &s, "permanent-y", &KINDS, None)
        .await
        .unwrap();
    assert_eq!(a.queued, 3);
}

#[tokio::test]
async fn a_corp_scheduled_but_not_indexed_is_found_by_reindexing() {
    let (_server, mut con) = cluster().await;
    let s = suite();
    let c = corp("wwcorp3");
    registry::authorize_corp(&mut con, &c, &s, "permanent-z", &KINDS, None)
        .await
        .unwrap();
    // The index step lost (the caller died between the two steps).
    let _: () = con.del(c.due()).await.unwrap();
    assert_eq!(
        wxtoken_schema::suite::reindex_corps(&mut con, &s, NS, 0, 100)
            .await
            .unwrap(),
        1
    );
    for kind in KINDS {
        let queued: Option<f64> = con.zscore(c.due(), c.member(kind)).await.unwrap();
        assert!(queued.is_some(), "{kind} not re-indexed");
    }
    // Past the end: nothing.
    assert_eq!(
        wxtoken_schema::suite::reindex_corps(&mut con, &s, NS, 1, 100)
            .await
            .unwrap(),
        0
    );
}
