//! A third-party platform against hostile input: Redis values nobody
//! wrote (or an attacker did), authorization pushes that are authentic but
//! malformed. Whatever they hold, no WeChat call loops, other authorizers
//! keep working, nothing wrong is stored and no secret reaches a log.

use crate::common::{eventually, stored, Env, Replica, Setup};
use crate::platform::{ports, push_url, spawn, Platform};
use redis::AsyncCommands;
use secrecy::SecretString;
use std::time::Duration;
use wxtoken_crypto::{EncodingAesKey, MsgCrypt, Recipient};
use wxtoken_schema::{ComponentKeys, CredentialKeys, Kind};

fn keys(p: &Platform, appid: &str) -> CredentialKeys {
    CredentialKeys::authorizer("wxtoken", &p.appid, appid).unwrap()
}

/// One platform, one replica (receiving the pushes), the component token
/// stored.
async fn start(n: usize, extra: &str) -> (Platform, Env, Vec<Replica>, u16) {
    start_with(n, extra, Setup::default()).await
}

async fn start_with(n: usize, extra: &str, setup: Setup) -> (Platform, Env, Vec<Replica>, u16) {
    let platform = Platform::new(n);
    let ports = ports(1);
    let env = Env::start(Setup {
        credentials: 0,
        lifetime: Duration::from_secs(600),
        sim_components: vec![platform.sim(push_url(ports[0], &platform))],
        ..setup
    })
    .await;
    let replicas = spawn(&env, std::slice::from_ref(&platform), &ports, extra).await;
    let component = platform.keys();
    eventually(Duration::from_secs(20), "the component token", || async {
        stored(
            &mut env.redis_con().await,
            &component,
            Kind::ComponentAccessToken,
        )
        .await
        .is_some()
    })
    .await;
    (platform, env, replicas, ports[0])
}

/// Authorizes `appids` by push and waits for their tokens.
async fn authorize(env: &Env, platform: &Platform, appids: &[&str], replica: &Replica) {
    for a in appids {
        let r = env.admin.authorize(&platform.appid, a).await.unwrap();
        assert!(r.push.unwrap().success, "{}", replica.logs());
    }
    eventually(
        Duration::from_secs(20),
        "every authorizer's token",
        || async {
            let mut con = env.redis_con().await;
            for a in appids {
                if stored(&mut con, &keys(platform, a), Kind::AccessToken)
                    .await
                    .is_none()
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

/// `api_authorizer_token` calls of the platform (scripted failures
/// included: they are not counted per authorizer).
fn token_calls(env: &Env, platform: &Platform) -> u64 {
    env.admin
        .authorizer_evidence(&platform.appid)
        .unwrap()
        .endpoints
        .authorizer_token
        .calls
}

/// An authorization code nobody can use (not UTF-8: the claim cannot hand
/// it out, so no lease exchanges it) made every lease's end queue the
/// value due at once, with no backoff: failing refreshes looped
/// `api_authorizer_token` calls at the platform's call rate, and after a
/// success the claims spun on a value that needed nothing, forever (the
/// code has no TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_authorization_code_does_not_loop_refreshes() {
    let (platform, env, replicas, _) = start(31, "").await;
    let (bad, good) = ("wxauthorizer003101", "wxauthorizer003102");
    authorize(&env, &platform, &[bad, good], &replicas[0]).await;
    let k = keys(&platform, bad);
    let mut con = env.redis_con().await;
    let _: () = con
        .set(
            k.authorization_code(),
            b"\xff\xfe\x00queryauthcode".as_slice(),
        )
        .await
        .unwrap();
    let old = stored(&mut con, &k, Kind::AccessToken).await.unwrap();
    let before = token_calls(&env, &platform);
    // WeChat is busy for the next three calls, then answers.
    env.admin
        .fail_authorizer_endpoint(
            &platform.appid,
            wxtoken_sim::AuthorizerEndpoint::AuthorizerToken,
            -1,
            3,
        )
        .unwrap();
    wxtoken_schema::force_refresh(&mut con, &k, Kind::AccessToken, Duration::from_secs(60))
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the refresh", || async {
        stored(&mut env.redis_con().await, &k, Kind::AccessToken)
            .await
            .is_some_and(|t| t != old)
    })
    .await;
    // Several check intervals later: three refused calls (backing off),
    // one that succeeded, no more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = token_calls(&env, &platform) - before;
    assert!(
        calls <= 5,
        "{calls} api_authorizer_token calls for one refresh; log:\n{}",
        replicas[0].logs()
    );
    // The next refresh is queued for later, not spinning now.
    let (s, _): (u64, u64) = redis::cmd("TIME").query_async(&mut con).await.unwrap();
    let due: f64 = con
        .hget(k.schedule(), Kind::AccessToken.as_str())
        .await
        .unwrap();
    assert!(
        due as u64 > s * 1000 + 60_000,
        "the refreshed value is due again in {} ms",
        due as i64 - (s * 1000) as i64
    );
    assert_eq!(
        env.admin
            .authorizer_counts(&platform.appid, good)
            .unwrap()
            .authorizer_token_calls,
        0,
        "the other one refreshed"
    );
    let token = stored(&mut con, &k, Kind::AccessToken).await.unwrap();
    assert!(env.admin.check_authorizer_token(&token).is_ok());
}

/// The same code while WeChat keeps failing: the failures back off (a
/// shared retry time), instead of each lease's end making the value due
/// at once and calling again at the platform's call rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_authorization_code_does_not_cancel_the_backoff() {
    let setup = Setup {
        retry_initial: Duration::from_secs(2),
        retry_max: Duration::from_secs(20),
        ..Setup::default()
    };
    let (platform, env, replicas, _) = start_with(34, "", setup).await;
    let bad = "wxauthorizer003401";
    authorize(&env, &platform, &[bad], &replicas[0]).await;
    let k = keys(&platform, bad);
    let mut con = env.redis_con().await;
    let _: () = con
        .set(
            k.authorization_code(),
            b"\xff\xfe\x00queryauthcode".as_slice(),
        )
        .await
        .unwrap();
    let before = token_calls(&env, &platform);
    env.admin
        .fail_authorizer_endpoint(
            &platform.appid,
            wxtoken_sim::AuthorizerEndpoint::AuthorizerToken,
            -1,
            10_000,
        )
        .unwrap();
    wxtoken_schema::force_refresh(&mut con, &k, Kind::AccessToken, Duration::from_secs(60))
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "a refresh attempt", || async {
        token_calls(&env, &platform) > before
    })
    .await;
    // Backing off from 2 s (jittered): at most three calls in 4 s, though
    // the replica looks at its queue every second.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let calls = token_calls(&env, &platform) - before;
    assert!(
        calls <= 3,
        "{calls} api_authorizer_token calls in 4 s; log:\n{}",
        replicas[0].logs()
    );
    // Shared with every replica through the status hash.
    let retry: Option<u64> = con.hget(k.status(), "retry_after_ms").await.unwrap();
    assert!(retry.is_some(), "no shared backoff recorded");
}

/// Members of the authorizer index that are not appids (hostile or
/// corrupt) were counted as the end of the index: a reconciliation stopped
/// reading it at the first page that held one and never removed the
/// authorizers after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_in_the_authorizer_index_does_not_stop_a_reconciliation_removing() {
    let (platform, env, replicas, _) = start(32, "").await;
    let (stays, leaves) = ("wxauthorizer003201", "wxauthorizer003202");
    authorize(&env, &platform, &[stays, leaves], &replicas[0]).await;
    let index = ComponentKeys::new("wxtoken", &platform.appid).unwrap();
    let mut con = env.redis_con().await;
    // A page and a half of junk, sorted before the real authorizers.
    let mut pipe = redis::pipe();
    for i in 0..1500 {
        pipe.zadd(index.authorizers(), format!("not:an appid {i}"), 1)
            .ignore();
    }
    pipe.zadd(index.authorizers(), b"\xff\xfe".as_slice(), 1)
        .ignore();
    let _: () = pipe.query_async(&mut con).await.unwrap();

    env.admin
        .unauthorize_without_push(&platform.appid, leaves)
        .unwrap();
    let component = platform.keys();
    let _: () = con
        .del(component.value(Kind::AuthorizerList))
        .await
        .unwrap();
    wxtoken_schema::force_refresh(
        &mut con,
        &component,
        Kind::AuthorizerList,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(20), "a reconciliation", || async {
        stored(&mut env.redis_con().await, &component, Kind::AuthorizerList)
            .await
            .is_some()
    })
    .await;
    let summary = stored(&mut con, &component, Kind::AuthorizerList)
        .await
        .unwrap();
    assert!(
        summary.ends_with("removed=1"),
        "{summary}; log:\n{}",
        replicas[0].logs()
    );
    let gone = keys(&platform, leaves);
    assert!(!con.exists::<_, bool>(gone.refresh_token()).await.unwrap());
    assert!(stored(&mut con, &keys(&platform, stays), Kind::AccessToken)
        .await
        .is_some());
}

/// Sends an authentic (signed, encrypted) push of `msg` to the receiver.
async fn push(platform: &Platform, port: u16, msg: &str) -> (u16, String) {
    let crypt = MsgCrypt::new(
        SecretString::from(platform.token.clone()),
        EncodingAesKey::parse(&platform.aes_key).unwrap(),
        None,
        platform.appid.clone(),
    );
    let (ts, nonce) = ("1700000000", "nonce123");
    let p = crypt
        .push(msg, Recipient::AppId(&platform.appid), ts, nonce)
        .unwrap();
    let r = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/wechat/component/{}?timestamp={ts}&nonce={nonce}&encrypt_type=aes&msg_signature={}",
            platform.id, p.msg_signature
        ))
        .body(p.body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn event(
    component: &str,
    info_type: &str,
    authorizer: Option<&str>,
    code: Option<&str>,
    expires: Option<&str>,
) -> String {
    let mut m = format!(
        "<xml><AppId><![CDATA[{component}]]></AppId><CreateTime>1700000000</CreateTime>\
         <InfoType><![CDATA[{info_type}]]></InfoType>"
    );
    if let Some(a) = authorizer {
        m.push_str(&format!(
            "<AuthorizerAppid><![CDATA[{a}]]></AuthorizerAppid>"
        ));
    }
    if let Some(c) = code {
        m.push_str(&format!(
            "<AuthorizationCode><![CDATA[{c}]]></AuthorizationCode>"
        ));
    }
    if let Some(e) = expires {
        m.push_str(&format!(
            "<AuthorizationCodeExpiredTime>{e}</AuthorizationCodeExpiredTime>"
        ));
    }
    m.push_str("</xml>");
    m
}

async fn registered(con: &mut redis::aio::MultiplexedConnection, index: &ComponentKeys) -> u64 {
    con.zcard(index.authorizers()).await.unwrap_or(0)
}

/// Authentic pushes with bad fields are refused and store nothing; the
/// code's lifetime is bounded whatever the push says; an `unauthorized`
/// for an unknown account creates nothing; codes never reach the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_authorization_pushes_store_nothing_wrong() {
    let (platform, env, replicas, port) = start(33, "").await;
    let index = ComponentKeys::new("wxtoken", &platform.appid).unwrap();
    let mut con = env.redis_con().await;
    let c = platform.appid.as_str();
    let code = "queryauthcode@@@hostilecode0123456789";
    let long_appid = "w".repeat(65);
    let long_code = "c".repeat(3000);
    for (what, msg) in [
        ("no appid", event(c, "authorized", None, Some(code), None)),
        (
            "long appid",
            event(c, "authorized", Some(&long_appid), Some(code), None),
        ),
        (
            "appid with a colon",
            event(c, "authorized", Some("wx:a"), Some(code), None),
        ),
        (
            "appid with a brace",
            event(c, "authorized", Some("wx{a}"), Some(code), None),
        ),
        (
            "no code",
            event(c, "authorized", Some("wxauthorizer003301"), None, None),
        ),
        (
            "empty code",
            event(c, "authorized", Some("wxauthorizer003301"), Some(""), None),
        ),
        (
            "code with a space",
            event(
                c,
                "updateauthorized",
                Some("wxauthorizer003301"),
                Some("a b"),
                None,
            ),
        ),
        (
            "long code",
            event(
                c,
                "authorized",
                Some("wxauthorizer003301"),
                Some(&long_code),
                None,
            ),
        ),
        (
            "another platform",
            event(
                "wxcomponent99999999",
                "authorized",
                Some("wxauthorizer003301"),
                Some(code),
                None,
            ),
        ),
    ] {
        let (status, body) = push(&platform, port, &msg).await;
        assert!(
            (400..500).contains(&status),
            "{what}: {status} {body}; log:\n{}",
            replicas[0].logs()
        );
        assert_eq!(registered(&mut con, &index).await, 0, "{what}: registered");
    }

    // An unauthorized for an account never seen: acknowledged, nothing made.
    let (status, body) = push(
        &platform,
        port,
        &event(c, "unauthorized", Some("wxauthorizer003399"), None, None),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "success"));
    let ghost = keys(&platform, "wxauthorizer003399");
    let mut found: Vec<String> = con
        .keys(format!("wxtoken:{{{}}}*", ghost.id()))
        .await
        .unwrap();
    found.sort();
    // Only the (expiring) removal mark.
    found.retain(|k| *k != ghost.removed());
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(registered(&mut con, &index).await, 0);

    // The code's lifetime is bounded, whatever its expiry says.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (i, (expires, lo, hi)) in [
        (Some(format!("{}", now - 3600)), 1, 60_000),
        (
            Some(format!("{}", now + 86_400 * 365)),
            3_000_000,
            3_600_000,
        ),
        (Some("soon".to_owned()), 500_000, 600_000),
        (Some(u64::MAX.to_string() + "0"), 500_000, 600_000),
        (None, 500_000, 600_000),
    ]
    .into_iter()
    .enumerate()
    {
        let appid = format!("wxauthorizer0034{i:02}");
        // The sim knows nothing of these codes: their exchange fails, and
        // the authorizer waits for a reconciliation. Only the stored TTL
        // matters here, read before any lease could spend the code.
        let (status, body) = push(
            &platform,
            port,
            &event(
                c,
                "authorized",
                Some(&appid),
                Some(code),
                expires.as_deref(),
            ),
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "success"), "{expires:?}");
        let k = keys(&platform, &appid);
        let ttl: i64 = con.pttl(k.authorization_code()).await.unwrap();
        // -2: already exchanged (and refused) by the replica.
        assert!(
            ttl == -2 || (lo..=hi).contains(&ttl),
            "{expires:?}: code TTL {ttl} ms"
        );
    }
    for r in &replicas {
        let logs = r.logs();
        assert!(!logs.contains(code), "the code is in the log");
        assert!(!logs.contains(&platform.secret), "the secret is in the log");
        assert!(!logs.contains(&platform.aes_key), "the key is in the log");
    }
}
