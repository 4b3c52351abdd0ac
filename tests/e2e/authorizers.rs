//! A third-party platform's authorizers end to end: three real replicas,
//! the simulator pushing `authorized` / `updateauthorized` /
//! `unauthorized` events and verify tickets to one replica's receiver, as
//! WeChat does.
//! - each authorization code is exchanged once (`api_query_auth`), the
//!   tokens are valid at WeChat at every sampled instant over several
//!   lifetimes, and every refresh is exactly one `api_authorizer_token`;
//! - re-authorization and unauthorization mid-run;
//! - Redis restarted empty with 1,000 authorizers: every one back, its
//!   refresh token recovered from `api_get_authorizer_list`, one fetch
//!   each, no human action.

use crate::common::{eventually, stored, Env, Events, Replica, Setup};
use crate::platform::{ports, push_url, spawn, Platform};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use wxtoken_schema::{authorizer_id, CredentialKeys, Kind};

const NS: &str = "wxtoken";

fn keys(p: &Platform, appid: &str) -> CredentialKeys {
    CredentialKeys::authorizer(NS, &p.appid, appid).unwrap()
}

fn assert_no_secrets(replicas: &[Replica], secrets: &[(&str, String)]) {
    for r in replicas {
        let logs = r.logs();
        for (what, value) in secrets {
            assert!(
                !logs.contains(value.as_str()),
                "the {what} is in {}'s log",
                r.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizers_are_exchanged_once_refreshed_once_per_cycle_and_follow_events() {
    let platform = Platform::new(11);
    let ports = ports(3);
    let env = Env::start(Setup {
        credentials: 0,
        lifetime: Duration::from_secs(8),
        overlap: Duration::from_secs(2),
        margin: Duration::from_secs(3),
        sim_components: vec![platform.sim(push_url(ports[0], &platform))],
        // Leases that outlast a loaded 2-core machine's stalls.
        lock_ttl: Duration::from_secs(8),
        request_timeout: Duration::from_secs(4),
        ..Setup::default()
    })
    .await;
    let events = Events::record(&env).await;
    let replicas = spawn(
        &env,
        std::slice::from_ref(&platform),
        &ports,
        "authorizer_tickets = [\"jsapi\"]\n",
    )
    .await;
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

    // Five accounts authorize the platform.
    let appids: Vec<String> = (1..=5).map(|i| format!("wxauthorizer{i:06}")).collect();
    let mut codes = Vec::new();
    for a in &appids {
        let record = env.admin.authorize(&platform.appid, a).await.unwrap();
        let push = record.push.expect("pushed");
        assert!(push.success, "{push:?}\n{}", replicas[0].logs());
        codes.push(record.authorization_code.unwrap());
    }
    eventually(
        Duration::from_secs(20),
        "every authorizer's token and ticket",
        || async {
            let mut con = env.redis_con().await;
            for a in &appids {
                let k = keys(&platform, a);
                if stored(&mut con, &k, Kind::AccessToken).await.is_none()
                    || stored(&mut con, &k, Kind::JsapiTicket).await.is_none()
                {
                    return false;
                }
            }
            true
        },
    )
    .await;

    // Sampled over three lifetimes; one re-authorizes and one leaves midway.
    let (again, gone) = (&appids[0], &appids[1]);
    let started = Instant::now();
    let mut reauthorized: Option<String> = None;
    let mut old_token = None;
    let mut unauthorized = false;
    while started.elapsed() < Duration::from_secs(24) {
        let mut con = env.redis_con().await;
        if reauthorized.is_none() && started.elapsed() > Duration::from_secs(8) {
            old_token = stored(&mut con, &keys(&platform, again), Kind::AccessToken).await;
            let r = env.admin.reauthorize(&platform.appid, again).await.unwrap();
            assert!(r.push.unwrap().success);
            codes.push(r.authorization_code.unwrap());
            reauthorized = Some(again.clone());
        }
        if !unauthorized && started.elapsed() > Duration::from_secs(10) {
            let r = env.admin.unauthorize(&platform.appid, gone).await.unwrap();
            assert!(r.push.unwrap().success);
            unauthorized = true;
        }
        for a in &appids {
            if unauthorized && a == gone {
                continue;
            }
            let token = stored(&mut con, &keys(&platform, a), Kind::AccessToken)
                .await
                .unwrap_or_else(|| panic!("{a}'s token lapsed; log:\n{}", replicas[0].logs()));
            if reauthorized.as_ref() == Some(a) && Some(&token) == old_token.as_ref() {
                // Re-authorization invalidated it; the new code is on its way.
                continue;
            }
            assert_eq!(
                env.admin.check_authorizer_token(&token),
                Ok(a.clone()),
                "{a}'s stored token is refused by WeChat"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The unauthorized account is gone from Redis, durable state included.
    let mut con = env.redis_con().await;
    let k = keys(&platform, gone);
    for key in [
        k.value(Kind::AccessToken),
        k.value(Kind::JsapiTicket),
        k.refresh_token(),
        k.status(),
    ] {
        let n: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, 0, "{key} left after unauthorized");
    }
    let gone_counts = env.admin.authorizer_counts(&platform.appid, gone).unwrap();

    // Exactly one exchange per code, one call per refresh.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut written: HashMap<String, u64> = HashMap::new();
    for ev in events.of(Kind::AccessToken) {
        *written.entry(ev.id).or_insert(0) += 1;
    }
    for a in &appids {
        let c = env.admin.authorizer_counts(&platform.appid, a).unwrap();
        let expect_exchanges = if a == again { 2 } else { 1 };
        assert_eq!(c.query_auth, expect_exchanges, "{a}: {c:?}");
        let w = written
            .get(&authorizer_id(&platform.appid, a))
            .copied()
            .unwrap_or(0);
        let fetched = c.query_auth + c.authorizer_token_issued;
        assert!(
            fetched == w || fetched == w + 1,
            "{a}: {fetched} tokens fetched from WeChat, {w} written"
        );
        if a == gone {
            assert_eq!(
                c.authorizer_token_calls, gone_counts.authorizer_token_calls,
                "no call after it left"
            );
            continue;
        }
        assert!(c.authorizer_token_issued >= 2, "{a} refreshed: {c:?}");
        assert_eq!(
            c.authorizer_token_calls, c.authorizer_token_issued,
            "{a}: no refused api_authorizer_token"
        );
        // The durable refresh token is WeChat's current one.
        let rt: String = redis::cmd("GET")
            .arg(keys(&platform, a).refresh_token())
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(
            c.refresh_token_prefix.as_deref(),
            Some(&rt.trim_start_matches("refreshtoken@@@")[..8]),
            "{a}"
        );
        let ttl: i64 = redis::cmd("PTTL")
            .arg(keys(&platform, a).refresh_token())
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(ttl, -1, "refresh tokens are kept without a TTL");
    }
    drop(events);
    let mut secrets: Vec<(&str, String)> = codes
        .iter()
        .map(|c| ("authorization code", c.clone()))
        .collect();
    for a in &appids[2..] {
        let rt: String = redis::cmd("GET")
            .arg(keys(&platform, a).refresh_token())
            .query_async(&mut con)
            .await
            .unwrap();
        secrets.push(("refresh token", rt));
    }
    assert_no_secrets(&replicas, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_heals_a_thousand_authorizers_from_the_authorizer_list() {
    const N: usize = 1000;
    let platform = Platform::new(12);
    let ports = ports(3);
    let mut env = Env::start(Setup {
        credentials: 0,
        lifetime: Duration::from_secs(600),
        sim_components: vec![platform.sim(push_url(ports[0], &platform))],
        // Leases that outlast a loaded 2-core machine's stalls.
        lock_ttl: Duration::from_secs(8),
        request_timeout: Duration::from_secs(4),
        ..Setup::default()
    })
    .await;
    // Authorized before wxtoken ever ran: only WeChat's list knows them.
    let appids = env.admin.bulk_authorize(&platform.appid, N as u32).unwrap();
    let started = Instant::now();
    let replicas = spawn(
        &env,
        std::slice::from_ref(&platform),
        &ports,
        "calls_per_second = 500\nburst = 20\n",
    )
    .await;
    let all_stored = |env: &Env| {
        let keys: Vec<String> = appids
            .iter()
            .map(|a| keys(&platform, a).value(Kind::AccessToken))
            .collect();
        let url = env.redis.url();
        async move {
            let Ok(client) = redis::Client::open(url) else {
                return 0;
            };
            let Ok(mut con) = client.get_multiplexed_async_connection().await else {
                return 0;
            };
            let mut n = 0;
            for chunk in keys.chunks(500) {
                let values: Vec<Option<String>> =
                    match redis::cmd("MGET").arg(chunk).query_async(&mut con).await {
                        Ok(v) => v,
                        Err(_) => return 0,
                    };
                n += values.iter().filter(|v| v.is_some()).count();
            }
            n
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while all_stored(&env).await != N {
        if Instant::now() > deadline {
            let logs = replicas[0].logs();
            let tail: Vec<&str> = logs.lines().rev().take(60).collect();
            panic!(
                "not all fetched: {} of {N}; {:?}\nreplica-1 log tail:\n{}",
                all_stored(&env).await,
                env.admin
                    .authorizer_evidence(&platform.appid)
                    .map(|e| e.endpoints),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The shared rate (500/s, burst 20) spreads the 1,000 fetches out:
    // never faster than the rate allows (a lower bound: a slow machine
    // only makes it longer).
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs_f64((N - 20) as f64 / 500.0),
        "1,000 fetches in {took:?}: faster than 500/s"
    );
    let first = env.admin.authorizer_evidence(&platform.appid).unwrap();
    assert_eq!(
        first.authorizer_token_issued_histogram,
        [(1, N as u64)].into_iter().collect(),
        "one api_authorizer_token per authorizer"
    );

    // Redis comes back empty: tickets, tokens, refresh tokens all gone.
    env.redis.restart().unwrap();
    eventually(
        Duration::from_secs(90),
        "all 1,000 authorizers back after Redis lost everything",
        || async { all_stored(&env).await == N },
    )
    .await;
    let healed = env.admin.authorizer_evidence(&platform.appid).unwrap();
    assert_eq!(
        healed.authorizer_token_issued_histogram,
        [(2, N as u64)].into_iter().collect(),
        "exactly one more fetch per authorizer, no duplicate; log:\n{}",
        replicas[0].logs()
    );
    assert_eq!(
        healed.endpoints.authorizer_token.calls,
        healed.endpoints.authorizer_token.ok
    );
    // The refresh tokens came back from WeChat's list, durable.
    let mut con = env.redis_con().await;
    for a in appids.iter().step_by(97) {
        let rt: String = redis::cmd("GET")
            .arg(keys(&platform, a).refresh_token())
            .query_async(&mut con)
            .await
            .unwrap();
        let c = env.admin.authorizer_counts(&platform.appid, a).unwrap();
        assert_eq!(
            c.refresh_token_prefix.as_deref(),
            Some(&rt.trim_start_matches("refreshtoken@@@")[..8])
        );
    }
    // Pages of at most 500: two per reconciliation.
    assert!(
        healed.endpoints.get_authorizer_list.ok >= 4,
        "{:?}",
        healed.endpoints
    );
    let _ = &mut env;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_token_is_recovered_from_the_authorizer_list() {
    let platform = Platform::new(13);
    let ports = ports(1);
    let env = Env::start(Setup {
        credentials: 0,
        lifetime: Duration::from_secs(600),
        sim_components: vec![platform.sim(push_url(ports[0], &platform))],
        // Leases that outlast a loaded 2-core machine's stalls.
        lock_ttl: Duration::from_secs(8),
        request_timeout: Duration::from_secs(4),
        ..Setup::default()
    })
    .await;
    let replicas = spawn(&env, std::slice::from_ref(&platform), &ports, "").await;
    let appid = "wxauthorizer000777";
    let r = env.admin.authorize(&platform.appid, appid).await.unwrap();
    assert!(r.push.unwrap().success, "{}", replicas[0].logs());
    let k = keys(&platform, appid);
    eventually(
        Duration::from_secs(20),
        "the authorizer's token",
        || async {
            stored(&mut env.redis_con().await, &k, Kind::AccessToken)
                .await
                .is_some()
        },
    )
    .await;
    let mut con = env.redis_con().await;
    let before = stored(&mut con, &k, Kind::AccessToken).await.unwrap();
    let lists_before = env
        .admin
        .authorizer_evidence(&platform.appid)
        .unwrap()
        .endpoints
        .get_authorizer_list
        .ok;

    // WeChat changed the refresh token behind our back and the token is
    // revoked: a business server reports it (passive refresh).
    env.admin
        .rotate_refresh_token(&platform.appid, appid)
        .unwrap();
    env.admin
        .revoke_authorizer_token(&platform.appid, appid)
        .unwrap();
    wxtoken_schema::request_refresh(
        &mut con,
        &k,
        Kind::AccessToken,
        &before,
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(20),
        "a new, valid token after 61023",
        || async {
            let now = stored(&mut env.redis_con().await, &k, Kind::AccessToken).await;
            now.is_some_and(|t| t != before && env.admin.check_authorizer_token(&t).is_ok())
        },
    )
    .await;
    let evidence = env.admin.authorizer_evidence(&platform.appid).unwrap();
    // Refused until a reconciliation may run again (ten min_intervals
    // after the one at start), retried at config_error_retry meanwhile.
    let refusals = evidence
        .endpoints
        .authorizer_token
        .errcodes
        .get(&61023)
        .copied()
        .unwrap_or(0);
    assert!(
        (1..=4).contains(&refusals),
        "a few refusals, then recovered: {:?}",
        evidence.endpoints
    );
    assert!(
        evidence.endpoints.get_authorizer_list.ok > lists_before,
        "reconciled"
    );
    let rt: String = redis::cmd("GET")
        .arg(k.refresh_token())
        .query_async(&mut con)
        .await
        .unwrap();
    let c = env.admin.authorizer_counts(&platform.appid, appid).unwrap();
    assert_eq!(
        c.refresh_token_prefix.as_deref(),
        Some(&rt.trim_start_matches("refreshtoken@@@")[..8])
    );
}

/// Runs the `wxtoken` binary with `stdin`; (exit code, stdout + stderr).
async fn wxtoken(args: &[&str], stdin: &str) -> (Option<i32>, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxtoken"))
        .args(args)
        .env_remove("WXTOKEN_REDIS_URL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_add_by_code_and_a_reconciliation_removes_who_left_unannounced() {
    let platform = Platform::new(14);
    let ports = ports(1);
    let env = Env::start(Setup {
        credentials: 0,
        lifetime: Duration::from_secs(600),
        sim_components: vec![platform.sim(push_url(ports[0], &platform))],
        // Leases that outlast a loaded 2-core machine's stalls.
        lock_ttl: Duration::from_secs(8),
        request_timeout: Duration::from_secs(4),
        ..Setup::default()
    })
    .await;
    let replicas = spawn(&env, std::slice::from_ref(&platform), &ports, "").await;
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
    let url = env.redis.url();

    // An operator adds an account by the code the authorization page gave.
    let added = "wxauthorizer000100";
    let code = env
        .admin
        .authorize_without_push(&platform.appid, added)
        .unwrap()
        .authorization_code
        .unwrap();
    let (status, out) = wxtoken(
        &[
            "authorizers",
            "add",
            "--redis-url",
            &url,
            "--component",
            &platform.appid,
            "--authorizer",
            added,
            "--code",
            "-",
        ],
        &code,
    )
    .await;
    assert_eq!(status, Some(0), "{out}");
    assert!(!out.contains(&code), "the code was echoed: {out}");
    let k = keys(&platform, added);
    eventually(
        Duration::from_secs(20),
        "the added account's token",
        || async {
            stored(&mut env.redis_con().await, &k, Kind::AccessToken)
                .await
                .is_some_and(|t| env.admin.check_authorizer_token(&t).is_ok())
        },
    )
    .await;
    assert_eq!(
        env.admin
            .authorizer_counts(&platform.appid, added)
            .unwrap()
            .query_auth,
        1
    );

    // Two more by push; one of them leaves without WeChat telling us.
    let (stays, leaves) = ("wxauthorizer000101", "wxauthorizer000102");
    for a in [stays, leaves] {
        assert!(
            env.admin
                .authorize(&platform.appid, a)
                .await
                .unwrap()
                .push
                .unwrap()
                .success
        );
    }
    eventually(Duration::from_secs(20), "both tokens", || async {
        let mut con = env.redis_con().await;
        stored(&mut con, &keys(&platform, stays), Kind::AccessToken)
            .await
            .is_some()
            && stored(&mut con, &keys(&platform, leaves), Kind::AccessToken)
                .await
                .is_some()
    })
    .await;
    env.admin
        .unauthorize_without_push(&platform.appid, leaves)
        .unwrap();
    let (status, out) = wxtoken(
        &[
            "authorizers",
            "reconcile",
            "--redis-url",
            &url,
            "--component",
            &platform.appid,
            "--wait",
            "20s",
        ],
        "",
    )
    .await;
    assert_eq!(status, Some(0), "{out}\n{}", replicas[0].logs());
    let mut con = env.redis_con().await;
    let gone = keys(&platform, leaves);
    for key in [
        gone.value(Kind::AccessToken),
        gone.refresh_token(),
        gone.status(),
    ] {
        let n: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, 0, "{key} left after the reconciliation");
    }
    for a in [added, stays] {
        assert!(
            stored(&mut con, &keys(&platform, a), Kind::AccessToken)
                .await
                .is_some(),
            "{a} was removed"
        );
    }
    let summary: String = redis::cmd("GET")
        .arg(component.value(Kind::AuthorizerList))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(summary.ends_with("removed=1"), "{summary}");
    let (status, out) = wxtoken(
        &[
            "authorizers",
            "list",
            "--redis-url",
            &url,
            "--component",
            &platform.appid,
            "--json",
        ],
        "",
    )
    .await;
    assert_eq!(status, Some(0), "{out}");
    assert!(
        out.contains(added) && out.contains(stays) && !out.contains(leaves),
        "{out}"
    );
}
