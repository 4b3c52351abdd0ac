//! `wxtoken authorizers` (list, add, remove, reconcile) and `get`/`refresh`
//! of third-party platform subjects, as real processes against a real
//! redis-server; authorizers and tokens are put there with the schema's own
//! scripts (`registry::authorize_many`, `claim` + `write_token`), as the
//! refreshers would. The authorization code and refresh tokens never reach
//! the command's output.

use futures_util::StreamExt;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use wxtoken_schema::registry::{self, Authorization};
use wxtoken_schema::{
    claim, requests_channel, status, write_token, Claim, ClaimRules, ComponentKeys, CredentialKeys,
    Kind, TokenWrite, WriteOutcome,
};
use wxtoken_testkit::RedisServer;

const NS: &str = "wxtoken";
const COMPONENT: &str = "wxcomponent01";

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary, feeding `stdin` if given.
async fn wxtoken(args: &[&str], stdin: Option<&str>) -> Out {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxtoken"));
    cmd.args(args)
        .env_remove("WXTOKEN_REDIS_URL")
        .env_remove("WXTOKEN_CONFIG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("wxtoken {args:?} did not exit within 60s"))
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn con(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn now_ms(con: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(con).await.unwrap();
    s * 1000 + us / 1000
}

fn authorizer(appid: &str) -> CredentialKeys {
    CredentialKeys::authorizer(NS, COMPONENT, appid).unwrap()
}

fn component() -> ComponentKeys {
    ComponentKeys::new(NS, COMPONENT).unwrap()
}

/// Stores `token` as the authorizer's access token through a claim and a
/// fenced write, as a refresher does after an exchange.
async fn store_token(con: &mut redis::aio::MultiplexedConnection, appid: &str, token: &str) {
    let keys = authorizer(appid);
    let owner = "test-replica#1";
    let fence = match claim(
        con,
        &keys,
        Kind::AccessToken,
        owner,
        &ClaimRules::new(Duration::from_secs(30)),
    )
    .await
    .unwrap()
    {
        Claim::Granted { fence, .. } => fence,
        other => panic!("claim of {appid}: {other:?}"),
    };
    let w = TokenWrite {
        kind: Kind::AccessToken,
        owner,
        fence,
        token,
        ttl: Duration::from_secs(7000),
        expires_in: 7200,
        replica: "test-replica",
        next_due: Duration::from_secs(3600),
        tickets: &[],
        refresh_token: None,
        code_used: None,
    };
    let outcome = write_token(con, &keys, &w).await.unwrap();
    assert!(
        matches!(outcome, WriteOutcome::Written { .. }),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_registers_an_authorizer_due_now_without_ever_showing_the_code() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let mut con = con(&redis).await;
    // Refreshers are woken on the requests channel.
    let mut sub = redis::Client::open(url.as_str())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    sub.subscribe(requests_channel(NS)).await.unwrap();

    const CODE: &str = "queryauthcode@@@Xk3S3cr3tC0de";
    let before = now_ms(&mut con).await;
    let out = wxtoken(
        &[
            "authorizers",
            "add",
            "--component",
            COMPONENT,
            "--authorizer",
            "wxshop01",
            "--code",
            CODE,
            "--code-ttl",
            "90s",
            "--redis-url",
            &url,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("authorizer wxshop01 of component"),
        "{}",
        out.stdout
    );
    for text in [&out.stdout, &out.stderr] {
        assert!(
            !text.contains(CODE) && !text.contains("S3cr3t"),
            "code leaked: {text}"
        );
    }
    // Nobody holds the platform yet: said so.
    assert!(
        out.stderr.contains("no refresher has registered"),
        "{}",
        out.stderr
    );

    let keys = authorizer("wxshop01");
    let code: Option<String> = redis::cmd("GET")
        .arg(keys.authorization_code())
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(code.as_deref(), Some(CODE));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(keys.authorization_code())
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(pttl > 80_000 && pttl <= 90_000, "code PTTL {pttl}");
    let (appid, comp): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(keys.status())
        .arg(status::APPID)
        .arg("component")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(appid.as_deref(), Some("wxshop01"));
    assert_eq!(comp.as_deref(), Some(COMPONENT));
    let due: Option<f64> = redis::cmd("HGET")
        .arg(keys.schedule())
        .arg((Kind::AccessToken).as_str())
        .query_async(&mut con)
        .await
        .unwrap();
    let after = now_ms(&mut con).await;
    let due = due.expect("access token queued") as u64;
    assert!(due >= before && due <= after, "due {due}, not now");
    // No tickets asked for: none queued.
    let jsapi: Option<f64> = redis::cmd("HGET")
        .arg(keys.schedule())
        .arg((Kind::JsapiTicket).as_str())
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(jsapi, None);
    let indexed: Option<f64> = redis::cmd("ZSCORE")
        .arg(component().authorizers())
        .arg("wxshop01")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(indexed.is_some(), "in the platform's index");
    let registered = wxtoken_schema::index::is_registered(&mut con, &keys)
        .await
        .unwrap();
    assert!(registered);
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.on_message().next())
        .await
        .expect("the refreshers were woken")
        .unwrap();
    let payload: String = msg.get_payload().unwrap();
    assert_eq!(payload, keys.member(Kind::AccessToken));

    // `--code -` reads it from stdin; `--tickets jsapi` queues the ticket.
    let out = wxtoken(
        &[
            "authorizers",
            "add",
            "--component",
            COMPONENT,
            "--authorizer",
            "wxshop02",
            "--code",
            "-",
            "--tickets",
            "jsapi",
            "--redis-url",
            &url,
        ],
        Some(&format!("{CODE}-2\n")),
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains(CODE) && !out.stderr.contains(CODE));
    let keys2 = authorizer("wxshop02");
    let code: Option<String> = redis::cmd("GET")
        .arg(keys2.authorization_code())
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(code, Some(format!("{CODE}-2")));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(keys2.authorization_code())
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(pttl > 590_000 && pttl <= 600_000, "default 10m, got {pttl}");
    let jsapi: Option<f64> = redis::cmd("HGET")
        .arg(keys2.schedule())
        .arg((Kind::JsapiTicket).as_str())
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(jsapi.is_some(), "jsapi ticket queued");

    // --config: the tickets come from the component's authorizer_tickets.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ops.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\nurl = \"{url}\"\n\n[[component]]\nid = \"platform\"\nappid = \"{COMPONENT}\"\n\
             secret_env = \"WXT_C_SECRET\"\ntoken_env = \"WXT_C_TOKEN\"\n\
             encoding_aes_key_env = \"WXT_C_KEY\"\nauthorizer_tickets = [\"jsapi\"]\n"
        ),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxtoken"));
    let out = cmd
        .args([
            "authorizers",
            "add",
            "--component",
            COMPONENT,
            "--authorizer",
            "wxshop03",
            "--code",
            CODE,
            "--config",
            config.to_str().unwrap(),
        ])
        .env_remove("WXTOKEN_REDIS_URL")
        .env("WXT_C_SECRET", "component-secret")
        .env("WXT_C_TOKEN", "msgtoken")
        .env("WXT_C_KEY", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains(CODE) && !stderr.contains(CODE));
    assert!(stdout.contains("access_token, jsapi_ticket"), "{stdout}");
    // The config lists the platform: no warning that nobody holds it.
    assert!(!stderr.contains("no refresher has registered"), "{stderr}");
    let keys3 = authorizer("wxshop03");
    let jsapi: Option<f64> = redis::cmd("HGET")
        .arg(keys3.schedule())
        .arg((Kind::JsapiTicket).as_str())
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(jsapi.is_some(), "jsapi ticket from the config queued");

    // A code that is no code is refused without showing it (usage: 2).
    let out = wxtoken(
        &[
            "authorizers",
            "add",
            "--component",
            COMPONENT,
            "--authorizer",
            "wxshop04",
            "--code",
            "bad code\u{1b}[31mS3cr3t",
            "--redis-url",
            &url,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--code"), "{}", out.stderr);
    assert!(!out.stderr.contains("S3cr3t"), "{}", out.stderr);
    let exists: bool = redis::cmd("EXISTS")
        .arg(authorizer("wxshop04").status())
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!exists, "nothing written for a refused add");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_1200_authorizers_in_json_and_as_a_table() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let mut con = con(&redis).await;
    let comp = component();
    let appids: Vec<String> = (0..1200).map(|i| format!("wxauth{i:05}")).collect();
    let keys: Vec<CredentialKeys> = appids.iter().map(|a| authorizer(a)).collect();
    let refresh_tokens: Vec<String> = (0..1200).map(|i| format!("refreshtok@@@{i:05}")).collect();
    let items: Vec<(CredentialKeys, Authorization<'_>)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                k.clone(),
                Authorization {
                    code: None,
                    // Every other one came from a reconciliation with a
                    // refresh token.
                    refresh_token: (i % 2 == 0).then_some(refresh_tokens[i].as_str()),
                    kinds: &[Kind::AccessToken],
                    new: true,
                },
            )
        })
        .collect();
    for chunk in items.chunks(400) {
        registry::authorize_many(&mut con, &comp, chunk)
            .await
            .unwrap();
    }
    assert_eq!(
        registry::count_authorizers(&mut con, &comp).await.unwrap(),
        1200
    );
    // The index order (authorized at, then appid) is the listing order.
    let order: Vec<String> = redis::cmd("ZRANGE")
        .arg(comp.authorizers())
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    let first = order[0].clone();
    let second = order[1].clone();
    store_token(&mut con, &first, "AUTHTOKEN-first").await;
    let () = redis::cmd("HSET")
        .arg(authorizer(&second).status())
        .arg(status::LAST_ERROR)
        .arg("api_authorizer_token: invalid refresh token")
        .arg(status::LAST_ERRCODE)
        .arg(61023)
        .arg(status::LAST_OK_AT_MS)
        .arg(1)
        .query_async(&mut con)
        .await
        .unwrap();

    // JSON: default page of 100; reads only that page's authorizers.
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut con)
        .await
        .unwrap();
    let out = wxtoken(
        &[
            "authorizers",
            "list",
            "--component",
            COMPONENT,
            "--json",
            "--redis-url",
            &url,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await
        .unwrap();
    let pttl_calls = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_pttl:calls="))
        .and_then(|rest| rest.split(',').next())
        .map(|n| n.parse::<u64>().unwrap())
        .unwrap_or(0);
    assert_eq!(pttl_calls, 100, "only the page is read");
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["total"], 1200);
    assert_eq!(doc["component"], COMPONENT);
    let rows = doc["authorizers"].as_array().unwrap();
    assert_eq!(rows.len(), 100);
    let listed: Vec<&str> = rows.iter().map(|r| r["appid"].as_str().unwrap()).collect();
    assert_eq!(
        listed,
        order[..100].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(rows[0]["token"], "stored");
    let ttl = rows[0]["token_ttl_ms"].as_u64().unwrap();
    assert!(ttl > 6_900_000 && ttl <= 7_000_000, "{ttl}");
    assert_eq!(rows[1]["token"], "expired");
    assert_eq!(rows[1]["last_errcode"], 61023);
    assert_eq!(
        rows[1]["last_error"],
        "api_authorizer_token: invalid refresh token"
    );
    assert_eq!(rows[2]["token"], "missing");
    assert!(rows[2]["last_error"].is_null());
    assert!(rows
        .iter()
        .all(|r| r["authorized_at_ms"].as_u64().unwrap() > 0));
    assert!(rows.iter().all(|r| r["code_pending"] == false));
    let with_rt = rows.iter().filter(|r| r["refresh_token"] == true).count();
    assert_eq!(with_rt, 50, "every other one holds a refresh token");
    for secret in ["refreshtok@@@", "AUTHTOKEN-first"] {
        assert!(!out.stdout.contains(secret), "{secret} shown");
    }

    // Every page, through --offset and --limit, adds up to the index.
    let mut all = Vec::new();
    for offset in [0, 500, 1000] {
        let out = wxtoken(
            &[
                "authorizers",
                "list",
                "--component",
                COMPONENT,
                "--json",
                "--offset",
                &offset.to_string(),
                "--limit",
                "500",
                "--redis-url",
                &url,
            ],
            None,
        )
        .await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(doc["offset"], offset);
        for r in doc["authorizers"].as_array().unwrap() {
            all.push(r["appid"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(all, order);
    // --limit 0: all of them, read in chunks.
    let out = wxtoken(
        &[
            "authorizers",
            "list",
            "--component",
            COMPONENT,
            "--json",
            "--limit",
            "0",
            "--redis-url",
            &url,
        ],
        None,
    )
    .await;
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["authorizers"].as_array().unwrap().len(), 1200);

    // The table: a summary, a header, the page, and how to see more.
    let out = wxtoken(
        &[
            "authorizers",
            "list",
            "--component",
            COMPONENT,
            "--offset",
            "1150",
            "--redis-url",
            &url,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].contains("1200 authorizers, showing 1151-1200"),
        "{}",
        out.stdout
    );
    assert!(lines[1].starts_with("APPID"), "{}", out.stdout);
    assert_eq!(lines.len(), 2 + 50, "{}", out.stdout);
    assert!(lines[2].starts_with(order[1150].as_str()), "{}", out.stdout);
    let out = wxtoken(
        &[
            "authorizers",
            "list",
            "--component",
            COMPONENT,
            "--redis-url",
            &url,
        ],
        None,
    )
    .await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2 + 100 + 1, "{}", out.stdout);
    assert!(lines[2].contains("stored, 1h 5"), "{}", lines[2]);
    assert!(lines[3].contains("expired"), "{}", lines[3]);
    assert!(
        lines[3].contains("[61023] api_authorizer_token: invalid refresh token"),
        "{}",
        lines[3]
    );
    assert_eq!(lines[102], "1100 more: --offset 100 (--limit 0 shows all)");
    assert!(!out.stdout.contains("refreshtok@@@") && !out.stdout.contains("AUTHTOKEN"));
    let out = wxtoken(
        &[
            "authorizers",
            "list",
            "--component",
            COMPONENT,
            "--offset",
            "5000",
            "--redis-url",
            &url,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.contains("past the last authorizer"),
        "{}",
        out.stdout
    );

    // A platform with none: an empty page and a hint on stderr.
    let out = wxtoken(
        &[
            "authorizers",
            "list",
            "--component",
            "wxnobody",
            "--json",
            "--redis-url",
            &url,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["total"], 0);
    assert!(out.stderr.contains("has no authorizers"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_deletes_every_key_and_reconcile_files_a_forced_request() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let mut con = con(&redis).await;
    let comp = component();
    let keep = authorizer("wxkeep");
    let gone = authorizer("wxgone");
    for k in [&keep, &gone] {
        registry::authorize(
            &mut con,
            k,
            &comp,
            &Authorization {
                code: None,
                refresh_token: Some("refreshtok@@@durable"),
                kinds: &[Kind::AccessToken, Kind::JsapiTicket],
                new: true,
            },
        )
        .await
        .unwrap();
    }
    store_token(&mut con, "wxgone", "AUTHTOKEN-gone").await;
    let () = redis::cmd("SET")
        .arg(gone.authorization_code())
        .arg("pendingcode")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut con)
        .await
        .unwrap();
    let pattern = "*authorizer/wxcomponent01/wxgone*";
    let before: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(before.contains(&gone.refresh_token()), "{before:?}");
    assert!(
        before.contains(&gone.value(Kind::AccessToken)),
        "{before:?}"
    );

    let out = wxtoken(
        &[
            "authorizers",
            "remove",
            "--component",
            COMPONENT,
            "--authorizer",
            "wxgone",
            "--redis-url",
            &url,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("removed"), "{}", out.stdout);
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains("refreshtok") && !text.contains("pendingcode"));
    }
    let mut after: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut con)
        .await
        .unwrap();
    // Only the removal mark stays (an hour), so that a reconciliation
    // whose listing predates the removal does not bring it back.
    after.retain(|k| *k != gone.removed());
    assert!(after.is_empty(), "left behind: {after:?}");
    let mark: i64 = redis::cmd("PTTL")
        .arg(gone.removed())
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(mark > 0 && mark <= 3_600_000, "{mark}");
    let queued: Vec<String> = redis::cmd("ZRANGE")
        .arg(gone.due())
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!queued.iter().any(|m| m.contains("wxgone")), "{queued:?}");
    assert_eq!(
        registry::authorizers(&mut con, &comp, 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let registered = wxtoken_schema::index::is_registered(&mut con, &gone)
        .await
        .unwrap();
    assert!(!registered);
    // The other authorizer keeps its durable refresh token.
    let kept: Option<String> = redis::cmd("GET")
        .arg(keep.refresh_token())
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(kept.is_some());
    // Removing it again is harmless and said so.
    let out = wxtoken(
        &[
            "authorizers",
            "remove",
            "--component",
            COMPONENT,
            "--authorizer",
            "wxgone",
            "--redis-url",
            &url,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("was not listed"), "{}", out.stdout);

    // reconcile: the force request of the platform's authorizer_list.
    let ckeys = CredentialKeys::component(NS, COMPONENT).unwrap();
    let out = wxtoken(
        &[
            "authorizers",
            "reconcile",
            "--component",
            COMPONENT,
            "--redis-url",
            &url,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("reconciliation of component"),
        "{}",
        out.stdout
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(ckeys.force_request(Kind::AuthorizerList))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 600_000, "force request PTTL {pttl}");
    assert_eq!(
        ckeys.force_request(Kind::AuthorizerList),
        "wxtoken:{component/wxcomponent01}:force_request:authorizer_list"
    );
    // Waiting with no refresher: exit 4, the request stays.
    let out = wxtoken(
        &[
            "authorizers",
            "reconcile",
            "--component",
            COMPONENT,
            "--wait",
            "300ms",
            "--redis-url",
            &url,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("not reconciled within"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_refresh_take_subject_ids_and_bad_appids_are_usage_errors() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let mut con = con(&redis).await;
    registry::authorize(
        &mut con,
        &authorizer("wxshop"),
        &component(),
        &Authorization {
            code: None,
            refresh_token: Some("refreshtok@@@1"),
            kinds: &[Kind::AccessToken],
            new: true,
        },
    )
    .await
    .unwrap();
    store_token(&mut con, "wxshop", "AUTHTOKEN-wxshop-0123456789").await;

    let id = format!("authorizer/{COMPONENT}/wxshop");
    let out = wxtoken(&["get", &id, "--redis-url", &url], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "AUTHTOKEN-wxshop-0123456789\n");
    // The same account under another platform is another subject.
    let out = wxtoken(
        &["get", "authorizer/wxother/wxshop", "--redis-url", &url],
        None,
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("wxtoken:{authorizer/wxother/wxshop}:access_token"),
        "{}",
        out.stderr
    );
    // A platform's value defaults to its component token.
    let out = wxtoken(
        &[
            "get",
            &format!("component/{COMPONENT}"),
            "--redis-url",
            &url,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("wxtoken:{component/wxcomponent01}:component_access_token"),
        "{}",
        out.stderr
    );
    let out = wxtoken(
        &[
            "get",
            &format!("component/{COMPONENT}"),
            "--kind",
            "component_access_token",
            "--redis-url",
            &url,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);

    // refresh of an authorizer's token files the request under its keys.
    let out = wxtoken(&["refresh", &id, "--wait", "0s", "--redis-url", &url], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        !out.stdout.contains("AUTHTOKEN-wxshop-0123456789"),
        "{}",
        out.stdout
    );
    let filed: Option<String> = redis::cmd("GET")
        .arg(authorizer("wxshop").refresh_request(Kind::AccessToken))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(filed.as_deref(), Some("AUTHTOKEN-wxshop-0123456789"));
    // It is registered (by the authorization): no warning.
    assert!(
        !out.stderr.contains("no refresher has registered"),
        "{}",
        out.stderr
    );
    let out = wxtoken(
        &[
            "refresh",
            &format!("component/{COMPONENT}"),
            "--kind",
            "authorizer_list",
            "--force",
            "--wait",
            "0s",
            "--redis-url",
            &url,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let exists: bool = redis::cmd("EXISTS")
        .arg(
            CredentialKeys::component(NS, COMPONENT)
                .unwrap()
                .force_request(Kind::AuthorizerList),
        )
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(exists);

    // Usage errors (exit 2) name what is wrong; nothing touches Redis.
    let cases: &[(&[&str], &str)] = &[
        (
            &["get", "authorizer/wx:c/wxshop"],
            "component appid \"wx:c\"",
        ),
        (
            &["get", "authorizer/wxc/wx shop"],
            "authorizer appid \"wx shop\"",
        ),
        (&["get", "component/"], "component appid \"\""),
        (
            &["get", "vendor/wxc"],
            "invalid credential id \"vendor/wxc\"",
        ),
        (
            &["refresh", "authorizer/wxc/wx{a}"],
            "authorizer appid \"wx{a}\"",
        ),
        (
            &["get", "component/wxc", "--kind", "access_token"],
            "component/wxc has no access_token",
        ),
        (
            &["refresh", "authorizer/wxc/wxa", "--kind", "wx_card_ticket"],
            "has no wx_card_ticket",
        ),
        (
            &["authorizers", "list", "--component", "wx:c"],
            "invalid appid \"wx:c\"",
        ),
        (
            &[
                "authorizers",
                "add",
                "--component",
                "wxc",
                "--authorizer",
                "wx/a",
                "--code",
                "c",
            ],
            "invalid appid \"wx/a\"",
        ),
        (
            &[
                "authorizers",
                "remove",
                "--component",
                "wxc",
                "--authorizer",
                "",
            ],
            "invalid appid \"\"",
        ),
        (
            &["authorizers", "reconcile", "--component", &"x".repeat(65)],
            "invalid appid",
        ),
        (&["authorizers", "list"], "--component"),
    ];
    // Redis at a port nobody listens on: a usage error must come first.
    for (args, expected) in cases {
        let mut argv = args.to_vec();
        argv.extend(["--redis-url", "redis://127.0.0.1:1"]);
        let out = wxtoken(&argv, None).await;
        assert_eq!(out.code, 2, "{argv:?}: {}", out.stderr);
        assert!(out.stderr.contains(expected), "{argv:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{argv:?}");
    }
}
