//! `wxtoken status` for a third-party platform with 2,000 authorizers: one
//! section with the platform's facts and its authorizers counted by state,
//! never one row per authorizer unless asked for (`--id`, `--prefix
//! authorizer/…`); `--json` carries the same as the `platform` object of
//! the `component/…` credential; no refresh token, authorization code,
//! verify ticket or token ever appears.

use std::time::Duration;
use wxtoken_schema::registry::{self, Authorization};
use wxtoken_schema::{info, status, store_verify_ticket, ComponentKeys, CredentialKeys, Kind};
use wxtoken_testkit::RedisServer;

const C: &str = "wxcomp000000001";
const N: usize = 2_000;
const REFRESH_TOKEN: &str = "refreshtoken@@SECRET-";
const CODE: &str = "queryauthcode@@SECRET-";
const VERIFY_TICKET: &str = "ticket@@@VERIFY-SECRET-0123";
const COMPONENT_TOKEN: &str = "componenttoken-SECRET-0123456789";
const AUTHORIZER_TOKEN: &str = "authorizertoken-SECRET-";

fn appid(i: usize) -> String {
    format!("wxa{i:05}")
}

fn id(i: usize) -> String {
    format!("authorizer/{C}/{}", appid(i))
}

/// Authorizer `i`'s state: every 17th paused, every 9th failing (with an
/// error text that tries to forge a line and hold markup), every 2nd with
/// a token (every 10th of those within the refresh margin), the rest
/// missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Ok,
    Expiring,
    Missing,
    Failing,
    Paused,
}

fn want(i: usize) -> Want {
    if i % 17 == 0 {
        Want::Paused
    } else if i % 9 == 0 {
        Want::Failing
    } else if i % 2 == 0 {
        if i % 10 == 4 {
            Want::Expiring
        } else {
            Want::Ok
        }
    } else {
        Want::Missing
    }
}

fn count(w: Want) -> u64 {
    (0..N).filter(|i| want(*i) == w).count() as u64
}

async fn seed(con: &mut redis::aio::MultiplexedConnection) {
    let ck = ComponentKeys::new("wxtoken", C).unwrap();
    let keys: Vec<CredentialKeys> = (0..N)
        .map(|i| CredentialKeys::authorizer("wxtoken", C, &appid(i)).unwrap())
        .collect();
    let tokens: Vec<String> = (0..N).map(|i| format!("{REFRESH_TOKEN}{i}")).collect();
    let codes: Vec<String> = (0..N).map(|i| format!("{CODE}{i}")).collect();
    for ((ks, ts), cs) in keys
        .chunks(500)
        .zip(tokens.chunks(500))
        .zip(codes.chunks(500))
    {
        let items: Vec<_> = ks
            .iter()
            .zip(ts)
            .zip(cs)
            .enumerate()
            .map(|(n, ((k, t), c))| {
                // Some by a push (a pending code), the rest by a
                // reconciliation (a refresh token).
                let by_push = n % 50 == 1;
                (
                    k.clone(),
                    Authorization {
                        code: by_push.then_some((c.as_str(), Duration::from_secs(3600))),
                        refresh_token: (!by_push).then_some(t.as_str()),
                        kinds: &[Kind::AccessToken, Kind::JsapiTicket],
                        new: by_push,
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
        let ttl_ms = match want(i) {
            Want::Ok => Some(7_000_000),
            Want::Expiring => Some(60_000),
            // Paused and failing ones may still hold a token.
            Want::Paused | Want::Failing if i % 2 == 0 => Some(5_000_000),
            _ => None,
        };
        if let Some(ttl_ms) = ttl_ms {
            pipe.cmd("SET")
                .arg(k.value(Kind::AccessToken))
                .arg(format!("{AUTHORIZER_TOKEN}{i}"))
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
            pipe.hset_multiple(
                k.info(Kind::AccessToken),
                &[
                    (info::EXPIRES_IN, "7200".to_owned()),
                    (info::REFRESHED_AT_MS, now_ms.to_string()),
                ],
            )
            .ignore();
        }
        if want(i) == Want::Failing {
            pipe.hset_multiple(
                k.status(),
                &[
                    (
                        status::LAST_ERROR,
                        format!("access_token: errcode 61023 <b>{i}</b>\nFORGED LINE"),
                    ),
                    (status::LAST_ERRCODE, "61023".to_owned()),
                    (status::LAST_ERROR_AT_MS, now_ms.to_string()),
                    (status::FAILURES, "4".to_owned()),
                ],
            )
            .ignore();
        }
        if want(i) == Want::Paused {
            pipe.hset(k.status(), status::PAUSED_UNTIL_MS, now_ms + 3_600_000)
                .ignore();
        }
    }
    // The platform: a verify ticket, a component token, a reconciliation.
    let subject = CredentialKeys::component("wxtoken", C).unwrap();
    pipe.sadd(subject.registry(), subject.id()).ignore();
    pipe.hset_multiple(
        subject.status(),
        &[(status::APPID, C), (status::MODE, "component")],
    )
    .ignore();
    pipe.cmd("SET")
        .arg(subject.value(Kind::ComponentAccessToken))
        .arg(COMPONENT_TOKEN)
        .arg("PX")
        .arg(7_000_000)
        .ignore();
    pipe.hset_multiple(
        subject.info(Kind::ComponentAccessToken),
        &[
            (info::EXPIRES_IN, "7200".to_owned()),
            (info::REFRESHED_AT_MS, now_ms.to_string()),
            (info::EXPIRES_AT_MS, (now_ms + 7_000_000).to_string()),
        ],
    )
    .ignore();
    pipe.cmd("SET")
        .arg(subject.value(Kind::AuthorizerList))
        .arg(format!("listed={N},added=5,updated=2,removed=1"))
        .arg("PX")
        .arg(3_600_000)
        .ignore();
    pipe.hset(
        subject.info(Kind::AuthorizerList),
        info::REFRESHED_AT_MS,
        now_ms - 60_000,
    )
    .ignore();
    // And one ordinary credential.
    let oa = CredentialKeys::new("wxtoken", "oa-main").unwrap();
    pipe.sadd(oa.registry(), oa.id()).ignore();
    pipe.cmd("SET")
        .arg(oa.value(Kind::AccessToken))
        .arg("oa-token-SECRET-0123456789")
        .arg("PX")
        .arg(7_000_000)
        .ignore();
    let () = pipe.query_async(con).await.unwrap();
    assert!(store_verify_ticket(
        con,
        &ck,
        VERIFY_TICKET,
        1_700_000_000,
        Duration::from_secs(43_200)
    )
    .await
    .unwrap());
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn wxtoken(args: &[&str]) -> Out {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_wxtoken"))
            .args(args)
            .env_remove("WXTOKEN_REDIS_URL")
            .env_remove("WXTOKEN_CONFIG")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("wxtoken {args:?} did not exit within 60s"))
    .unwrap();
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    for secret in [
        REFRESH_TOKEN,
        CODE,
        VERIFY_TICKET,
        "VERIFY-SECRET",
        COMPONENT_TOKEN,
        "componen…",
        AUTHORIZER_TOKEN,
        "authoriz…",
        "oa-token",
    ] {
        for text in [&out.stdout, &out.stderr] {
            assert!(!text.contains(secret), "{secret} shown by {args:?}");
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_is_one_section_and_authorizers_are_drilled_into() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    seed(&mut con).await;
    let (ok, expiring, missing, failing, paused) = (
        count(Want::Ok),
        count(Want::Expiring),
        count(Want::Missing),
        count(Want::Failing),
        count(Want::Paused),
    );
    assert_eq!(ok + expiring + missing + failing + paused, N as u64);

    // The default table: a section for the platform, no row per authorizer.
    let started = std::time::Instant::now();
    let out = wxtoken(&["status", "--redis-url", &url]).await;
    println!("status with {N} authorizers: {:?}", started.elapsed());
    if std::env::var_os("WXTOKEN_SHOW_STATUS").is_some() {
        println!(
            "{}",
            out.stdout.lines().take(24).collect::<Vec<_>>().join("\n")
        );
    }
    assert_eq!(
        out.code, 3,
        "authorizers without a token: unhealthy\n{}",
        out.stderr
    );
    let text = &out.stdout;
    let header = format!(
        "platform {C} (component/{C}): {N} authorizers: {ok} ok, {expiring} expiring, \
         {missing} missing, {failing} failing, {paused} paused"
    );
    assert!(text.contains(&header), "{header}\n{text}");
    assert!(
        text.contains("CreateTime 2023-11-14 22:13:20 UTC"),
        "{text}"
    );
    assert!(
        // "1m 0s ago", or a second more on a loaded machine.
        text.contains("listed 2000, added 5, updated 2, removed 1, 1m "),
        "{text}"
    );
    assert!(text.contains("due now"), "{text}");
    let rows = text.lines().filter(|l| l.contains("authorizer/")).count();
    assert!(rows <= 200 + 2, "{rows} authorizer lines by default");
    let not_ok = N as u64 - ok;
    assert!(
        text.contains(&format!(
            "… {} more authorizers not ok (--limit 200",
            not_ok - 200
        )),
        "{text}"
    );
    // Problems first: the paused, then the failing, in index order.
    let first = text.lines().position(|l| l.contains(&id(0))).unwrap();
    let failing_line = text.lines().position(|l| l.contains(&id(9))).unwrap();
    assert!(first < failing_line);
    assert!(text.contains("<b>9</b> FORGED LINE"), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("FORGED")),
        "one line each"
    );
    assert!(text.contains("oa-main"), "{text}");
    assert!(text.contains(&format!("component/{C}")), "{text}");

    // --limit bounds the problem list too.
    let out = wxtoken(&["status", "--redis-url", &url, "--limit", "5"]).await;
    let rows = out
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("authorizer/"))
        .count();
    assert_eq!(rows, 5, "{}", out.stdout);
    assert!(out.stdout.contains(&format!(
        "… {} more authorizers not ok (--limit 5",
        not_ok - 5
    )));

    // JSON: the same as the component credential's `platform`; no
    // authorizer objects, at most --limit problems.
    let out = wxtoken(&["status", "--redis-url", &url, "--json"]).await;
    assert_eq!(out.code, 3);
    let all: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 2, "oa-main and the platform only");
    let comp = all
        .iter()
        .find(|c| c["id"] == format!("component/{C}"))
        .unwrap();
    assert_eq!(comp["healthy"], false);
    assert_eq!(comp["kinds"][0]["kind"], "component_access_token");
    assert_eq!(comp["kinds"][0]["stored"], true);
    let p = &comp["platform"];
    let a = &p["authorizers"];
    assert_eq!(a["total"], N as u64);
    assert_eq!(a["counted"], N as u64);
    for (name, n) in [
        ("ok", ok),
        ("expiring", expiring),
        ("missing", missing),
        ("failing", failing),
        ("paused", paused),
    ] {
        assert_eq!(a[name], n, "{name}: {a}");
    }
    assert_eq!(p["verify_ticket"]["stored"], true);
    assert_eq!(p["verify_ticket"]["create_time"], 1_700_000_000u64);
    assert_eq!(p["component_token"]["stored"], true);
    assert_eq!(p["reconciliation"]["listed"], N as u64);
    assert_eq!(p["reconciliation"]["removed"], 1);
    assert_eq!(p["problems"].as_array().unwrap().len(), 200);
    assert_eq!(p["problems"][0]["id"], id(0));
    assert_eq!(p["problems"][0]["state"], "paused");
    assert_eq!(p["round_trips"], 1 + N.div_ceil(1_000) as u64);
    // Every authorizer whose access token is missing was queued due at
    // once by the authorizations (its ticket a minute later).
    let backlog = &p["backlog"];
    assert!(backlog["due_now"].as_u64().unwrap() >= missing, "{backlog}");
    assert_eq!(backlog["queued"], 2 * N as u64, "{backlog}");
    assert!(comp["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == &format!("{failing} authorizers failing")));

    // Drill down by id: one authorizer as a row, with its error.
    let out = wxtoken(&["status", "--redis-url", &url, "--id", &id(9)]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("{}: last error", id(9))),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("errcode 61023"), "{}", out.stdout);
    assert!(!out.stdout.contains("platform "), "no platform section");
    let out = wxtoken(&["status", "--redis-url", &url, "--id", &id(4), "--json"]).await;
    assert_eq!(out.code, 0, "an expiring one is healthy (due)");
    let one: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["id"], id(4));
    assert_eq!(one[0]["mode"], "authorizer");
    assert_eq!(one[0]["appid"], appid(4));
    assert_eq!(one[0]["registered"], true);
    assert_eq!(one[0]["kinds"][0]["stored"], true);

    // Drill down by prefix: every authorizer of the platform with a
    // problem (missing, failing, paused: expiring ones are due, healthy).
    let prefix = format!("authorizer/{C}/");
    let out = wxtoken(&[
        "status",
        "--redis-url",
        &url,
        "--prefix",
        &prefix,
        "--problems",
        "--json",
    ])
    .await;
    let rows: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len() as u64, missing + failing + paused);
    assert!(rows
        .iter()
        .all(|r| r["id"].as_str().unwrap().starts_with(&prefix)));
    let out = wxtoken(&["status", "--redis-url", &url, "--prefix", &prefix]).await;
    assert!(
        out.stdout.starts_with(&format!(
            "{N} credentials selected (of {}): {} healthy, {} unhealthy",
            N + 2,
            ok + expiring,
            missing + failing + paused
        )),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("… "), "the table stops at --limit");

    // A prefix that is no authorizer prefix does not list authorizers.
    let out = wxtoken(&["status", "--redis-url", &url, "--prefix", "a", "--json"]).await;
    let rows: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(rows.as_array().unwrap().is_empty(), "{}", out.stdout);
    assert!(
        out.stderr.contains("no credentials match"),
        "{}",
        out.stderr
    );
}

/// The status page and `/status.json` of a replica holding the platform:
/// one `platforms` entry counting every authorizer, no authorizer among the
/// credentials or "other credentials" by default, drill-down by id and
/// prefix through the same paging, and no secret anywhere. (The replica
/// works meanwhile: no verify ticket is pushed, so states may move between
/// requests, but the index stays whole.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_summarizes_a_held_platform() {
    use crate::common::{Env, Setup};
    let port = wxtoken_testkit::free_port().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let (secret, token, aes_key) = (
        "csecretSECRET0123456789abcdefgh",
        "ctokenSECRET0123456789",
        "abcdefghijABCDEFGHIJ0123456789abcdefghijABC",
    );
    let env = Env::start(Setup {
        credentials: 1,
        lifetime: Duration::from_secs(120),
        overlap: Duration::from_secs(5),
        extra_config: format!(
            "\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [[component]]\nid = \"platform\"\nappid = \"{C}\"\nsecret_env = \"WXT_C_SECRET\"\n\
             token_env = \"WXT_C_TOKEN\"\nencoding_aes_key_env = \"WXT_C_KEY\"\n"
        ),
        ..Setup::default()
    })
    .await;
    let mut con = env.redis_con().await;
    seed(&mut con).await;
    let replica = env.spawn_replica_with(
        "replica-1",
        None,
        &[
            ("WXT_C_SECRET", secret),
            ("WXT_C_TOKEN", token),
            ("WXT_C_KEY", aes_key),
        ],
    );
    crate::common::wait_healthz(&base, || replica.logs()).await;
    let get = |path: String| {
        let base = base.clone();
        async move {
            let started = std::time::Instant::now();
            let res = reqwest::get(format!("{base}{path}")).await.unwrap();
            let status = res.status().as_u16();
            let text = res.text().await.unwrap();
            println!("GET {path}: {:?}, {} bytes", started.elapsed(), text.len());
            assert_eq!(status, 200, "{path}: {text}");
            for s in [
                REFRESH_TOKEN,
                CODE,
                VERIFY_TICKET,
                COMPONENT_TOKEN,
                secret,
                token,
                aes_key,
            ] {
                assert!(!text.contains(s), "{s} in {path}");
            }
            text
        }
    };
    let json = |path: &str| {
        let path = path.to_owned();
        async move { serde_json::from_str::<serde_json::Value>(&get(path).await).unwrap() }
    };

    let s = json("/status.json").await;
    let platforms = s["platforms"].as_array().unwrap();
    assert_eq!(platforms.len(), 1, "{}", s["platforms"]);
    let p = &platforms[0];
    assert_eq!(p["appid"], C);
    let a = &p["authorizers"];
    assert_eq!(a["total"], N as u64);
    assert_eq!(a["counted"], N as u64);
    let sum: u64 = ["ok", "expiring", "missing", "failing", "paused"]
        .iter()
        .map(|k| a[*k].as_u64().unwrap())
        .sum();
    assert_eq!(sum, N as u64, "{a}");
    assert_eq!(a["paused"], count(Want::Paused), "pauses hold");
    assert!(p["problems"].as_array().unwrap().len() <= 50);
    assert_eq!(p["round_trips"], 1 + N.div_ceil(1_000) as u64);
    let ids: Vec<&str> = s["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&format!("component/{C}").as_str()), "{ids:?}");
    assert!(
        !ids.iter().any(|id| id.starts_with("authorizer/")),
        "{ids:?}"
    );
    // oa-main of the seed is registered here but held by nobody: the only
    // "other credential"; the 2,000 authorizers are held through the platform.
    assert_eq!(s["other_credentials"], serde_json::json!(["oa-main"]));
    assert_eq!(s["other_credentials_total"], 1);

    // Drill down: by prefix through the same paging, problems first.
    let prefix = format!("authorizer/{C}/");
    let s = json(&format!("/status.json?prefix={prefix}&limit=10")).await;
    assert_eq!(s["page"]["total_matching"], N as u64);
    let page = s["credentials"].as_array().unwrap();
    assert_eq!(page.len(), 10);
    assert!(page
        .iter()
        .all(|c| c["id"].as_str().unwrap().starts_with(&prefix) && c["problem"] == true));
    assert_eq!(page[0]["mode"], "authorizer");
    let s = json(&format!("/status.json?id={}", id(4))).await;
    assert_eq!(s["page"]["total_matching"], 1);
    assert_eq!(s["credentials"][0]["id"], id(4));
    assert_eq!(s["credentials"][0]["kinds"][0]["kind"], "access_token");

    // The page: the platform block, a bounded table, escaped errors.
    let html = get("/".to_owned()).await;
    assert!(html.contains(&format!("id=\"platform-{C}\"")), "{html}");
    assert!(html.contains(&format!("{} authorizers", "2,000")), "{html}");
    assert!(html.matches("?id=authorizer/").count() <= 10);
    assert!(!html.contains("<b>9</b>"), "error texts are escaped");
    let html = get(format!("/?prefix={prefix}&problems=true")).await;
    assert!(html.matches("class=\"cred\" id=\"cred-authorizer/").count() <= 500);
    assert!(html.contains("more</b>"), "pages through the rest");
}
