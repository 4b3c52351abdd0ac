//! Least privilege with Redis ACL users, as the README's "Security" section
//! documents them: a refresher runs under the refresher rule; a business
//! server reads tokens, files reports and follows events under the reader
//! rule and is refused everything else (overwriting a token, forcing,
//! reading other state, flushing); `wxtoken status` runs under the
//! read-only monitor rule.

use crate::common::{eventually, Env, Setup};
use std::time::Duration;
use wxtoken_client::{Client, Options};
use wxtoken_schema::{Kind, RequestOutcome};

/// The ACL rule the README's "Security" section gives for `user`, word for
/// word (read from the README, so the two cannot drift), with the password
/// `<user>-pw` in place of `>…`.
pub fn readme_rule(user: &str) -> String {
    let readme = include_str!("../../README.md");
    let prefix = format!("ACL SETUSER {user} ");
    let line = readme
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("the README has no `{prefix}…` line"));
    let rule = line[prefix.len()..].trim_start();
    assert!(rule.contains(" >… "), "{rule}");
    rule.replacen(" >… ", &format!(" >{user}-pw "), 1)
}

async fn set_user(env: &Env, name: &str, rule: &str) {
    let mut con = env.redis_con().await;
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg(name);
    for word in rule.split_whitespace() {
        cmd.arg(word);
    }
    let () = cmd.query_async(&mut con).await.expect("ACL SETUSER");
}

fn url_as(env: &Env, user: &str, password: &str) -> String {
    env.redis
        .url()
        .replacen("redis://", &format!("redis://{user}:{password}@"), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresher_reader_and_monitor_work_under_their_rules_and_no_more() {
    let env = Env::start(Setup {
        credentials: 2,
        tickets: true,
        lifetime: Duration::from_secs(60),
        min_interval: Duration::from_millis(200),
        ..Setup::default()
    })
    .await;
    set_user(&env, "refresher", &readme_rule("refresher")).await;
    set_user(&env, "reader", &readme_rule("reader")).await;
    set_user(&env, "monitor", &readme_rule("monitor")).await;
    let refresher_url = url_as(&env, "refresher", "refresher-pw");
    let mut r1 = env.spawn_replica("replica-1", Some(&refresher_url));
    let _r2 = env.spawn_replica("replica-2", Some(&refresher_url));
    env.wait_all_stored(Duration::from_secs(20)).await;
    assert!(!r1.logs().contains("NOPERM"), "{}", r1.logs());

    // A business server under the reader rule: reads, reports, follows.
    let reader_url = url_as(&env, "reader", "reader-pw");
    let client = Client::connect(&reader_url, Options::default())
        .await
        .expect("the reader may connect");
    let id = env.creds[0].id.clone();
    let token = client.access_token(&id).await.expect("read");
    tokio::time::sleep(Duration::from_millis(250)).await; // past min_interval
    assert_eq!(
        client.report_invalid(&id, &token).await.expect("report"),
        RequestOutcome::Requested
    );
    eventually(
        Duration::from_secs(10),
        "the reported token is replaced",
        || {
            let (client, id, token) = (client.clone(), id.clone(), token.clone());
            async move { client.access_token(&id).await.is_ok_and(|t| t != token) }
        },
    )
    .await;

    // …and nothing else.
    let mut reader = redis::Client::open(reader_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = env.keys(&id);
    let refused = [
        redis::cmd("SET")
            .arg(keys.value(Kind::AccessToken))
            .arg("FORGED")
            .clone(),
        redis::cmd("SET")
            .arg(keys.force_request(Kind::AccessToken))
            .arg("1")
            .clone(),
        redis::cmd("HGETALL").arg(keys.status()).clone(),
        redis::cmd("HGET").arg(keys.holders()).arg("x").clone(),
        redis::cmd("ZADD").arg(keys.due()).arg(0).arg("x").clone(),
        redis::cmd("HSET")
            .arg(keys.schedule())
            .arg(Kind::AccessToken.as_str())
            .arg(0)
            .clone(),
        redis::cmd("PUBLISH").arg("wxtoken:other").arg("x").clone(),
        redis::cmd("KEYS").arg("*").clone(),
        redis::cmd("FLUSHALL").clone(),
    ];
    for cmd in refused {
        let err = cmd
            .query_async::<redis::Value>(&mut reader)
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Some("NOPERM"), "{err}");
    }
    let refused_force = wxtoken_schema::request_refresh(
        &mut reader,
        &keys,
        Kind::AccessToken,
        wxtoken_schema::FORCE_REQUEST,
        Duration::from_secs(60),
    )
    .await
    .expect_err("a reader may not force");
    assert_eq!(refused_force.code(), Some("NOPERM"));

    // Third-party platform values: tokens readable, durable secrets not.
    let component = wxtoken_schema::CredentialKeys::component("wxtoken", "wxcomp").unwrap();
    let authorizer =
        wxtoken_schema::CredentialKeys::authorizer("wxtoken", "wxcomp", "wxauth").unwrap();
    let ticket = wxtoken_schema::ComponentKeys::new("wxtoken", "wxcomp")
        .unwrap()
        .verify_ticket();
    let mut admin = env.redis_con().await;
    for (key, value) in [
        (component.value(Kind::ComponentAccessToken), "ctoken"),
        (authorizer.value(Kind::AccessToken), "atoken"),
        (authorizer.refresh_token(), "refreshtoken@@@secret"),
        (authorizer.authorization_code(), "queryauthcode@@@secret"),
        (ticket.clone(), "ticket@@@secret"),
    ] {
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(value)
            .query_async(&mut admin)
            .await
            .unwrap();
    }
    let secrets = [
        authorizer.refresh_token(),
        authorizer.authorization_code(),
        ticket,
    ];
    for (user, password) in [("reader", "reader-pw"), ("monitor", "monitor-pw")] {
        let mut con = redis::Client::open(url_as(&env, user, password).as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for key in [
            component.value(Kind::ComponentAccessToken),
            authorizer.value(Kind::AccessToken),
        ] {
            let v: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut con)
                .await
                .unwrap_or_else(|e| panic!("{user} may read {key}: {e}"));
            assert!(v.is_some());
        }
        for key in &secrets {
            let err = redis::cmd("GET")
                .arg(key)
                .query_async::<redis::Value>(&mut con)
                .await
                .expect_err("a durable secret");
            assert_eq!(err.code(), Some("NOPERM"), "{user} read {key}");
        }
    }

    // A reader whose user may not file requests gets an error that says so.
    let no_requests = readme_rule("reader").replace(" %W~wxtoken:{*}:refresh_request:*", "");
    set_user(
        &env,
        "no-requests",
        &no_requests.replace("reader-pw", "nr-pw"),
    )
    .await;
    let limited = Client::connect(&url_as(&env, "no-requests", "nr-pw"), Options::default())
        .await
        .expect("connect");
    let current = limited.access_token(&id).await.expect("read");
    let err = limited
        .report_invalid(&id, &current)
        .await
        .expect_err("NOPERM");
    let text = err.to_string();
    assert!(
        text.starts_with("filing a refresh request") && text.to_lowercase().contains("noperm"),
        "{text}"
    );

    // The operator's view under the read-only monitor rule.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxtoken"))
        .args(["status", "--json", "--redis-url"])
        .arg(url_as(&env, "monitor", "monitor-pw"))
        .env_remove("WXTOKEN_REDIS_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status.as_array().map(Vec::len), Some(2), "{status}");
    assert_eq!(r1.terminate(Duration::from_secs(10)), Some(0));
    assert!(!r1.logs().contains("NOPERM"), "{}", r1.logs());
}
