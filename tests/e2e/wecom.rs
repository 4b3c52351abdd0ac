//! WeCom (企业微信) apps end to end: three replicas, the simulator's WeCom
//! over HTTP (`/qyapi`), app tokens with the corp ticket (`jsapi_ticket`)
//! and the app ticket (`agent_config_ticket`).
//!
//! WeCom hands back the same token until it expires, so a refresh before
//! expiry (the margin) gets the same token, and the new one comes just
//! after expiry. What is checked: every stored token and ticket is valid
//! at WeCom whenever it is sampled; WeCom's evidence (calls, new, same)
//! matches what the replicas logged as stored (each new token stored
//! once, each same answer logged as same, never as new); calls stay at
//! about two per lifetime (no spin); 60020, 45009 and 40001 are handled;
//! a revoked token that a reader reports is replaced once.

use crate::common::{eventually, stored, wecom_apps, Env, Setup, WecomApp};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use wxtoken_schema::{status, Kind};
use wxtoken_sim::{WecomAppEvidence, WecomFetchCounts};

const KINDS: [Kind; 3] = [
    Kind::AccessToken,
    Kind::JsapiTicket,
    Kind::AgentConfigTicket,
];

fn setup(apps: Vec<WecomApp>, lifetime: Duration) -> Setup {
    Setup {
        credentials: 0,
        lifetime,
        wecom: apps,
        wecom_tickets: vec!["jsapi", "agent_config"],
        ..Setup::default()
    }
}

fn app_evidence(env: &Env, app: &WecomApp) -> WecomAppEvidence {
    env.admin
        .wecom_corp_evidence(&app.corpid)
        .unwrap()
        .apps
        .into_iter()
        .find(|a| a.agentid == app.agentid)
        .unwrap()
}

/// Whether `value` (of `kind`) is valid at WeCom now.
fn valid(env: &Env, kind: Kind, value: &str) -> Result<(), i64> {
    match kind {
        Kind::AccessToken => env.admin.check_wecom_token(value),
        _ => env.admin.check_wecom_ticket(value),
    }
}

async fn status_field(env: &Env, id: &str, field: &str) -> Option<String> {
    let mut con = env.redis_con().await;
    redis::cmd("HGET")
        .arg(env.keys(id).status())
        .arg(field)
        .query_async(&mut con)
        .await
        .unwrap()
}

/// Log lines of all replicas that contain every one of `parts`.
fn count_lines(logs: &str, parts: &[&str]) -> u64 {
    logs.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_keep_wecom_apps_and_both_tickets_valid_with_one_gettoken_per_token() {
    // 2 corps × 2 apps, both tickets; lifetime 8 s, margin 2 s: each token
    // gets one early look (WeCom hands it back: `same`) and is replaced
    // just after it expires.
    let lifetime = Duration::from_secs(8);
    let apps = wecom_apps(2, 2);
    let env = Env::start(setup(apps.clone(), lifetime)).await;
    let mut replicas = env.spawn_replicas(3);
    let mut con = env.redis_con().await;
    eventually(Duration::from_secs(15), "every WeCom value stored", || {
        let mut con = con.clone();
        let env = &env;
        async move {
            for app in &env.setup.wecom {
                for kind in KINDS {
                    if stored(&mut con, &env.keys(&app.id), kind).await.is_none() {
                        return false;
                    }
                }
            }
            true
        }
    })
    .await;

    // Sample every value every 100 ms over four lifetimes: anything stored
    // is valid at WeCom. WeCom issues the next token only once the last
    // one expired, so around each expiry nothing is stored for a moment
    // (the key's TTL ends with the token; the next one comes about a second
    // later): those gaps are measured, and must stay short.
    let started = Instant::now();
    let run = lifetime * 4;
    let mut samples = 0u64;
    let mut empty: HashMap<(String, Kind), (u64, Duration, Option<Instant>)> = HashMap::new();
    let mut seen: HashMap<(String, Kind), Vec<String>> = HashMap::new();
    while started.elapsed() < run {
        samples += 1;
        for app in &apps {
            let keys = env.keys(&app.id);
            for kind in KINDS {
                let key = (app.id.clone(), kind);
                let gap = empty.entry(key.clone()).or_default();
                match stored(&mut con, &keys, kind).await {
                    Some(value) => {
                        if let Err(code) = valid(&env, kind, &value) {
                            panic!(
                                "{} {kind} stored but refused by WeCom ({code}) at {:?}",
                                app.id,
                                started.elapsed()
                            );
                        }
                        if let Some(since) = gap.2.take() {
                            gap.1 = gap.1.max(since.elapsed());
                        }
                        let values = seen.entry(key).or_default();
                        if values.last() != Some(&value) {
                            values.push(value);
                        }
                    }
                    None => {
                        gap.0 += 1;
                        gap.2.get_or_insert_with(Instant::now);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for ((id, kind), (misses, longest, _)) in &empty {
        eprintln!("{id} {kind}: missing in {misses} of {samples} samples, longest gap {longest:?}, {} distinct values", seen.get(&(id.clone(), *kind)).map_or(0, Vec::len));
        assert!(
            *misses * 5 <= samples,
            "{id} {kind}: missing in {misses} of {samples} samples"
        );
        assert!(
            *longest <= Duration::from_secs(4),
            "{id} {kind}: nothing stored for {longest:?}"
        );
    }
    for ((id, kind), values) in &seen {
        // A new value each lifetime, no churn in between.
        let n = values.len();
        assert!((3..=6).contains(&n), "{id} {kind}: {n} distinct values");
    }

    // Stop (a SIGTERMed replica stores what it fetched), then compare what
    // WeCom did with what the replicas logged.
    for r in &mut replicas {
        assert_eq!(r.terminate(Duration::from_secs(10)), Some(0));
    }
    let logs: String = replicas.iter().map(|r| r.logs()).collect();
    let lifetimes = (started.elapsed().as_secs_f64() / lifetime.as_secs_f64()).ceil() as u64 + 2;
    for app in &apps {
        let ev = app_evidence(&env, app);
        let check = |what: &str, kind: &str, c: &WecomFetchCounts| {
            assert!(c.errcodes.is_empty(), "{} {what}: {c:?}", app.id);
            assert_eq!(c.calls, c.new + c.same, "{} {what}: {c:?}", app.id);
            assert!(
                (4..=lifetimes).contains(&c.new),
                "{} {what}: {} new values in about {lifetimes} lifetimes: {c:?}",
                app.id,
                c.new
            );
            // No spin: one early look per value at most (plus the first
            // start, when replicas may find WeCom's value of a sibling).
            assert!(c.same <= c.new + 1, "{} {what}: {c:?}", app.id);
            let kind = format!("kind={kind}");
            let new_logged = count_lines(&logs, &["stored new value", &app.id, &kind]);
            // A same answer is stored again with its remaining time, or,
            // with a second or less left, not stored (fetched again once it
            // has expired): both are logged as such.
            let same_logged =
                count_lines(&logs, &["WeCom returned the same token", &app.id, &kind])
                    + count_lines(
                        &logs,
                        &["WeCom's value expires within a second", &app.id, &kind],
                    );
            // Exactly one gettoken per refresh: every new value WeCom
            // issued was stored once, every same answer logged as same.
            assert_eq!(new_logged, c.new, "{} {what}: logged new vs WeCom", app.id);
            assert_eq!(
                same_logged,
                c.same,
                "{} {what}: logged same vs WeCom; its log lines:\n{}",
                app.id,
                logs.lines()
                    .filter(|l| l.contains(app.id.as_str()) && l.contains(&kind))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        };
        eprintln!(
            "{}: gettoken {:?}; agent ticket {:?}; corp ticket {:?}",
            app.id, ev.gettoken, ev.agent_ticket, ev.corp_ticket
        );
        check("gettoken", "access_token", &ev.gettoken);
        check("agent ticket", "agent_config_ticket", &ev.agent_ticket);
        assert_eq!(ev.tokens_issued, ev.gettoken.new);
        // The corp ticket is one per corp, fetched by both apps: bounded.
        let corp = &ev.corp_ticket;
        assert!(corp.errcodes.is_empty(), "{}: {corp:?}", app.id);
        assert!(corp.calls <= 2 * lifetimes + 2, "{}: {corp:?}", app.id);
        assert_eq!(
            status_field(&env, &app.id, status::MODE).await.as_deref(),
            Some("wecom")
        );
        assert_eq!(
            status_field(&env, &app.id, status::APPID).await.as_deref(),
            Some(app.corpid.as_str())
        );
    }
    let summary = env.admin.wecom_summary();
    assert!(summary.gettoken.errcodes.is_empty(), "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_token_is_not_new_a_revoked_token_reported_is_replaced_once_and_nothing_spins() {
    // One app, long lifetime: nothing is due on its own during the test.
    let apps = wecom_apps(1, 1);
    let app = apps[0].clone();
    let mut setup = setup(apps, Duration::from_secs(120));
    setup.extra_config = "\n[http]\nlisten = \"127.0.0.1:HTTP_PORT\"\n".into();
    let env = Env::start(setup).await;
    // Three replicas, each with its own HTTP port (for its metrics).
    let text = env.config_text(&env.redis.url());
    let mut replicas = Vec::new();
    let mut bases = Vec::new();
    for r in 1..=3 {
        let port = wxtoken_testkit::free_port().unwrap();
        let config = text.replace("HTTP_PORT", &port.to_string());
        replicas.push(env.spawn_replica_config(&format!("replica-{r}"), &config, &[]));
        bases.push(format!("http://127.0.0.1:{port}"));
    }
    for (base, r) in bases.iter().zip(&replicas) {
        crate::common::wait_healthz(base, || r.logs()).await;
    }
    let mut con = env.redis_con().await;
    let shared = con.clone();
    let keys = env.keys(&app.id);
    let stored_now = || {
        let mut con = shared.clone();
        let keys = keys.clone();
        async move { stored(&mut con, &keys, Kind::AccessToken).await }
    };
    eventually(Duration::from_secs(15), "token stored", || async {
        stored_now().await.is_some()
    })
    .await;
    let first = stored_now().await.unwrap();
    assert_eq!(app_evidence(&env, &app).gettoken.new, 1);
    let logs = |replicas: &[crate::common::Replica]| -> String {
        replicas.iter().map(|r| r.logs()).collect()
    };

    // 1. An early refresh: the stored token is made to look nearly expired
    // (1.5 s left, inside the 2 s margin) and due now. WeCom hands the same
    // token back: stored again with its real remaining time, logged and
    // counted as `same`, never as a new token, and not looked at again
    // before it is due.
    let pexpire = |key: String| {
        let mut con = shared.clone();
        async move {
            let _: () = redis::cmd("PEXPIRE")
                .arg(key)
                .arg(1500)
                .query_async(&mut con)
                .await
                .unwrap();
        }
    };
    pexpire(keys.value(Kind::AccessToken)).await;
    pexpire(keys.info(Kind::AccessToken)).await;
    let _: () = redis::cmd("HSET")
        .arg(keys.schedule())
        .arg(Kind::AccessToken.as_str())
        .arg(0)
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("PUBLISH")
        .arg("wxtoken:requests")
        .arg(keys.member(Kind::AccessToken))
        .query_async(&mut con)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "same token stored again",
        || async { app_evidence(&env, &app).gettoken.same == 1 },
    )
    .await;
    let pttl = || {
        let mut con = shared.clone();
        let key = keys.value(Kind::AccessToken);
        async move {
            redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut con)
                .await
                .unwrap()
        }
    };
    eventually(Duration::from_secs(5), "remaining TTL stored", || async {
        pttl().await > 60_000
    })
    .await;
    assert!(pttl().await <= 120_000);
    assert_eq!(stored_now().await.as_deref(), Some(first.as_str()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ev = app_evidence(&env, &app).gettoken;
    assert_eq!((ev.calls, ev.new, ev.same), (2, 1, 1), "no spin: {ev:?}");
    let all = logs(&replicas);
    assert_eq!(
        count_lines(
            &all,
            &[
                "WeCom returned the same token",
                &app.id,
                "kind=access_token"
            ]
        ),
        1
    );
    assert_eq!(
        count_lines(&all, &["stored new value", &app.id, "kind=access_token"]),
        1
    );
    let mut same_metric = 0.0;
    let mut ok_metric = 0.0;
    for base in &bases {
        let metrics = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in metrics.lines().filter(|l| {
            l.starts_with("wxtoken_refresh_total")
                && l.contains(&format!("id=\"{}\"", app.id))
                && l.contains("kind=\"access_token\"")
        }) {
            let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            if line.contains("outcome=\"same\"") {
                same_metric += n;
            } else if line.contains("outcome=\"ok\"") {
                ok_metric += n;
            }
        }
    }
    assert_eq!((ok_metric, same_metric), (1.0, 1.0));

    // 2. A reader reports the token, which WeCom still holds valid: WeCom
    // hands it back, the lease ends StillRefused with the shared backoff
    // (retry 100 ms … 1 s here), and the stored token stays; calls stay
    // bounded by the backoff, not a loop.
    let report = |value: String| {
        let keys = keys.clone();
        let mut con = shared.clone();
        async move {
            let _: () = redis::cmd("SET")
                .arg(keys.refresh_request(Kind::AccessToken))
                .arg(value)
                .arg("PX")
                .arg(600_000)
                .query_async(&mut con)
                .await
                .unwrap();
            let _: () = redis::cmd("PUBLISH")
                .arg("wxtoken:requests")
                .arg(keys.member(Kind::AccessToken))
                .query_async(&mut con)
                .await
                .unwrap();
        }
    };
    let before = app_evidence(&env, &app).gettoken.calls;
    report(first.clone()).await;
    eventually(
        Duration::from_secs(10),
        "still_refused recorded",
        || async {
            status_field(&env, &app.id, status::LAST_ERROR)
                .await
                .is_some_and(|e| e.contains("WeCom returned the reported value again"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ev = app_evidence(&env, &app).gettoken;
    assert_eq!(ev.new, 1, "{ev:?}");
    let calls = ev.calls - before;
    // Backoff 100, 200, 400, 800 ms, then 1 s (× 0.5–1): about ten in 4–5 s.
    assert!(
        (1..=14).contains(&calls),
        "{calls} calls for one report: {ev:?}"
    );
    assert_eq!(stored_now().await.as_deref(), Some(first.as_str()));

    // 3. WeCom invalidates the token early; a reader reports it: exactly
    // one new token.
    env.admin
        .revoke_wecom_token(&app.corpid, app.agentid)
        .unwrap();
    assert_eq!(valid(&env, Kind::AccessToken, &first), Err(40014));
    report(first.clone()).await;
    eventually(
        Duration::from_secs(10),
        "revoked token replaced",
        || async { stored_now().await.is_some_and(|t| t != first) },
    )
    .await;
    let second = stored_now().await.unwrap();
    assert_eq!(valid(&env, Kind::AccessToken, &second), Ok(()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ev = app_evidence(&env, &app);
    assert_eq!(ev.gettoken.new, 2, "{ev:?}");
    assert_eq!(ev.tokens_issued, 2);
    assert_eq!(stored_now().await.as_deref(), Some(second.as_str()));
    for kind in [Kind::JsapiTicket, Kind::AgentConfigTicket] {
        let t = stored(&mut con, &keys, kind).await.unwrap();
        assert_eq!(valid(&env, kind, &t), Ok(()), "{kind}");
    }

    // 4. Redis loses the value: the refill (a reader's `-`) gets WeCom's
    // same token with what is left of it (nothing stored to compare with,
    // so it is stored as a value), and no further calls follow.
    let _: () = redis::cmd("DEL")
        .arg(keys.value(Kind::AccessToken))
        .arg(keys.info(Kind::AccessToken))
        .query_async(&mut con)
        .await
        .unwrap();
    report("-".into()).await;
    eventually(Duration::from_secs(10), "value refilled", || async {
        stored_now().await.is_some()
    })
    .await;
    assert_eq!(stored_now().await.as_deref(), Some(second.as_str()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ev = app_evidence(&env, &app).gettoken;
    assert_eq!(ev.new, 2, "{ev:?}");

    // `wxtoken get` reads the app ticket by kind; `status` shows the corp.
    let url = env.redis.url();
    let out = crate::common::wxtoken_cli(
        &[
            "get",
            &app.id,
            "--kind",
            "agent_config_ticket",
            "--redis-url",
            &url,
        ],
        &[],
    )
    .await;
    let ticket = stored(&mut con, &keys, Kind::AgentConfigTicket)
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), ticket, "{}", out.stderr);
    let out = crate::common::wxtoken_cli(&["status", "--json", "--redis-url", &url], &[]).await;
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json");
    let c = &json[0];
    assert_eq!(c["id"], app.id.as_str(), "{json}");
    assert_eq!(c["mode"], "wecom", "{json}");
    assert_eq!(c["appid"], app.corpid.as_str(), "{json}");
    let kinds: Vec<&str> = c["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"agent_config_ticket"), "{kinds:?}");
    for r in &mut replicas {
        assert_eq!(r.terminate(Duration::from_secs(10)), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_ip_rate_limit_and_wrong_secret_back_off_far_below_the_ip_block() {
    // Corp 1: IP not trusted (60020). Corp 2, app 0: rate limited (45009);
    // app 1: the replicas have a wrong secret (40001).
    let mut apps = wecom_apps(2, 2);
    let mut s = setup(apps.clone(), Duration::from_secs(60));
    s.wecom_tickets = vec!["jsapi"];
    let wrong = {
        let a = &mut apps[3];
        a.secret = format!("X{}", &a.secret[1..]);
        a.clone()
    };
    let env = Env::start(s).await;
    // The replicas' config holds the wrong secret for apps[3].
    env.admin
        .set_wecom_ip_trusted(&apps[0].corpid, false)
        .unwrap();
    env.admin
        .set_wecom_rate_limited(&apps[2].corpid, apps[2].agentid, true)
        .unwrap();
    let mut text = env.config_text(&env.redis.url());
    let right = &env.setup.wecom[3].secret;
    text = text.replace(right.as_str(), &wrong.secret);
    let replicas: Vec<_> = (1..=3)
        .map(|r| env.spawn_replica_config(&format!("replica-{r}"), &text, &[]))
        .collect();
    let expect = [
        (&apps[0], "60020", None),
        (&apps[1], "60020", None),
        (&apps[2], "45009", Some(status::PAUSED_UNTIL_MS)),
        (&apps[3], "40001", None),
    ];
    for (app, code, extra) in expect {
        eventually(Duration::from_secs(15), "errcode recorded", || {
            let env = &env;
            let id = app.id.clone();
            async move {
                status_field(env, &id, status::LAST_ERRCODE)
                    .await
                    .as_deref()
                    == Some(code)
            }
        })
        .await;
        if let Some(field) = extra {
            assert!(
                status_field(&env, &app.id, field).await.is_some(),
                "{}",
                app.id
            );
        }
    }
    // Config faults retry every config_error_retry (2 s), the pause lasts
    // quota_pause (2 s), shared by all replicas: over 6 s a handful of calls.
    let before: Vec<u64> = apps
        .iter()
        .map(|a| {
            env.admin
                .wecom_corp_evidence(&a.corpid)
                .unwrap()
                .apps
                .iter()
                .map(|x| x.gettoken.calls)
                .sum::<u64>()
                + env
                    .admin
                    .wecom_corp_evidence(&a.corpid)
                    .unwrap()
                    .gettoken_unattributed
                    .calls
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(6)).await;
    for (i, a) in apps.iter().enumerate() {
        let ev = env.admin.wecom_corp_evidence(&a.corpid).unwrap();
        let now =
            ev.apps.iter().map(|x| x.gettoken.calls).sum::<u64>() + ev.gettoken_unattributed.calls;
        // Per corp (two apps): at most ~2 × (6 s / 2 s + 1) plus jitter.
        assert!(
            now - before[i] <= 12,
            "{}: {} calls in 6 s",
            a.corpid,
            now - before[i]
        );
    }
    let summary = env.admin.wecom_summary();
    let failures: u64 = summary.gettoken_failures_last_hour.values().sum();
    assert!(summary.blocked_ips.is_empty(), "{summary:?}");
    assert!(
        failures < 60,
        "{failures} failed gettoken calls: far below WeCom's 2,000 an hour"
    );
    let logs: String = replicas.iter().map(|r| r.logs()).collect();
    assert!(
        logs.contains("CONFIGURATION FAULT"),
        "config faults logged loudly"
    );
    assert!(
        !logs.contains(&wrong.secret) && !logs.contains(&apps[2].secret),
        "secrets in logs"
    );

    // Fixed at WeCom: tokens arrive within a retry.
    env.admin
        .set_wecom_ip_trusted(&apps[0].corpid, true)
        .unwrap();
    env.admin
        .set_wecom_rate_limited(&apps[2].corpid, apps[2].agentid, false)
        .unwrap();
    let mut con = env.redis_con().await;
    for app in &apps[..3] {
        eventually(Duration::from_secs(10), "token after the fix", || {
            let mut con = con.clone();
            let keys = env.keys(&app.id);
            async move { stored(&mut con, &keys, Kind::AccessToken).await.is_some() }
        })
        .await;
        let t = stored(&mut con, &env.keys(&app.id), Kind::AccessToken)
            .await
            .unwrap();
        assert_eq!(valid(&env, Kind::AccessToken, &t), Ok(()));
    }
    assert!(stored(&mut con, &env.keys(&apps[3].id), Kind::AccessToken)
        .await
        .is_none());
    drop(replicas);
}
