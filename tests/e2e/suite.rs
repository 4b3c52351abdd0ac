//! A WeCom third-party suite (服务商) end to end: three real replicas, the
//! simulator's WeCom over HTTP pushing encrypted callbacks to replica-1's
//! receiver as WeCom does.
//!
//! - URL verification by `GET` with an encrypted `echostr` is answered;
//! - no `suite_ticket` pushed: no `get_suite_token` call (waiting, no loop);
//! - after the push, the suite token is fetched exactly once per refresh
//!   (every token WeCom issued was logged as stored once) and valid;
//! - `create_auth` → the auth code exchanged exactly once
//!   (`get_permanent_code`), the permanent code stored durably, the corp's
//!   token (`get_corp_token`) and both tickets valid at WeCom whenever
//!   sampled;
//! - one `create_auth` push retried at all three replicas at once: one
//!   exchange;
//! - `cancel_auth` removes the corp and all its keys;
//! - replayed or old pushes (a spent auth code, an older ticket, an old
//!   cancel) change nothing; a forged push is refused;
//! - no secret (suite secret, callback token, EncodingAESKey, permanent
//!   code, auth code) and no whole ticket or token in any log;
//! - a revoked suite token is replaced through a corp's refused call, a
//!   changed permanent code is a recorded configuration fault;
//! - on a three-primary Redis Cluster: the same flow, each script in one
//!   slot, a cancelled corp's keys gone on whichever node they live.

use crate::common::{eventually, wait_healthz, Env, Events, Replica, Setup};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use wxtoken_crypto::{EncodingAesKey, MsgCrypt, Recipient};
use wxtoken_schema::suite::count_corps;
use wxtoken_schema::{CredentialKeys, Kind, SuiteKeys};
use wxtoken_sim::{WecomFetchCounts, WecomSuiteConfig};

const SUITE: &str = "wwsuite0000000001";
const CORP_KINDS: [Kind; 3] = [
    Kind::AccessToken,
    Kind::JsapiTicket,
    Kind::AgentConfigTicket,
];

struct Suite {
    id: &'static str,
    secret: String,
    token: String,
    aes_key: String,
}

impl Suite {
    fn new() -> Suite {
        let chars = |len: usize| -> String {
            const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
            (0..len)
                .map(|_| A[rand::random_range(0..A.len())] as char)
                .collect()
        };
        Suite {
            id: "crm",
            secret: format!("ssecret{}", chars(36)),
            token: format!("stoken{}", chars(20)),
            aes_key: chars(43),
        }
    }

    fn sim(&self, port: u16) -> WecomSuiteConfig {
        WecomSuiteConfig {
            suite_id: SUITE.into(),
            secret: self.secret.clone(),
            token: self.token.clone(),
            encoding_aes_key: self.aes_key.clone(),
            push_url: Some(self.url(port)),
        }
    }

    fn url(&self, port: u16) -> String {
        format!("http://127.0.0.1:{port}/wecom/suite/{}", self.id)
    }

    fn config(&self) -> String {
        format!(
            "\n[[wecom_suite]]\nid = \"{}\"\nsuite_id = \"{SUITE}\"\nsecret_env = \"WXT_SUITE_SECRET\"\n\
             token_env = \"WXT_SUITE_TOKEN\"\nencoding_aes_key_env = \"WXT_SUITE_KEY\"\n\
             corp_tickets = [\"jsapi\", \"agent_config\"]\n",
            self.id
        )
    }

    fn crypt(&self) -> MsgCrypt {
        MsgCrypt::new(
            secrecy::SecretString::from(self.token.clone()),
            EncodingAesKey::parse(&self.aes_key).unwrap(),
            None,
            SUITE,
        )
    }

    /// POSTs `msg` to `url` as WeCom would (signed and encrypted); the status.
    async fn push(&self, url: &str, msg: &str, sign: bool) -> u16 {
        let ts = (wxtoken_testkit_now_s()).to_string();
        let nonce = format!("{}", rand::random::<u32>());
        let push = self
            .crypt()
            .push(msg, Recipient::ToUserName(SUITE), &ts, &nonce)
            .unwrap();
        let signature = if sign {
            push.msg_signature
        } else {
            "0".repeat(40)
        };
        reqwest::Client::new()
            .post(url)
            .query(&[
                ("msg_signature", signature.as_str()),
                ("timestamp", ts.as_str()),
                ("nonce", nonce.as_str()),
            ])
            .body(push.body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

fn wxtoken_testkit_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn corp_keys(corpid: &str) -> CredentialKeys {
    CredentialKeys::corp("wxtoken", SUITE, corpid).unwrap()
}

fn suite_token_keys() -> CredentialKeys {
    CredentialKeys::suite("wxtoken", SUITE).unwrap()
}

async fn get(env: &Env, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut env.redis_con().await)
        .await
        .unwrap()
}

async fn value(env: &Env, keys: &CredentialKeys, kind: Kind) -> Option<String> {
    get(env, &keys.value(kind)).await
}

/// Whether `value` (of `kind`) is valid at WeCom now.
fn valid(env: &Env, kind: Kind, value: &str) -> Result<(), i64> {
    match kind {
        Kind::SuiteAccessToken => env.admin.check_wecom_suite_token(value),
        Kind::AccessToken => env.admin.check_wecom_token(value),
        _ => env.admin.check_wecom_ticket(value),
    }
}

fn count_lines(logs: &str, all: &[&str]) -> u64 {
    logs.lines()
        .filter(|l| all.iter().all(|p| l.contains(p)))
        .count() as u64
}

async fn spawn(env: &Env, suite: &Suite, ports: &[u16]) -> Vec<Replica> {
    spawn_on(env, &env.redis.url(), suite, ports).await
}

/// [`spawn`] against the Redis at `redis_url` (e.g. a cluster).
async fn spawn_on(env: &Env, redis_url: &str, suite: &Suite, ports: &[u16]) -> Vec<Replica> {
    let vars = [
        ("WXT_SUITE_SECRET", suite.secret.as_str()),
        ("WXT_SUITE_TOKEN", suite.token.as_str()),
        ("WXT_SUITE_KEY", suite.aes_key.as_str()),
    ];
    let mut replicas = Vec::new();
    for (r, port) in ports.iter().enumerate() {
        let mut config = env.config_text(redis_url);
        config.push_str(&format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n"));
        config.push_str(&suite.config());
        let replica = env.spawn_replica_config(&format!("replica-{}", r + 1), &config, &vars);
        wait_healthz(&format!("http://127.0.0.1:{port}"), || replica.logs()).await;
        replicas.push(replica);
    }
    replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_flow_end_to_end_with_three_replicas() {
    let suite = Suite::new();
    let ports: Vec<u16> = (0..3)
        .map(|_| wxtoken_testkit::free_port().unwrap())
        .collect();
    let lifetime = Duration::from_secs(8);
    let env = Env::start(Setup {
        credentials: 0,
        lifetime,
        sim_suites: vec![suite.sim(ports[0])],
        // Leases that outlast a loaded 2-core machine's stalls.
        lock_ttl: Duration::from_secs(8),
        request_timeout: Duration::from_secs(4),
        ..Setup::default()
    })
    .await;
    let events = Events::record(&env).await;
    let mut replicas = spawn(&env, &suite, &ports).await;
    let push_url = suite.url(ports[0]);

    // URL verification: the decrypted echostr, in plain text.
    let v = env.admin.verify_wecom_suite_url(SUITE).await.unwrap();
    assert!(v.echoed, "URL verification not answered: {v:?}");

    // No ticket yet: the suite token waits, no WeCom call.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ev = env.admin.wecom_suite_evidence(SUITE).unwrap();
    assert_eq!(ev.get_suite_token.calls, 0, "called without a ticket");

    let pushed = env.admin.wecom_push_suite_ticket(SUITE).await.unwrap();
    assert!(
        pushed.success,
        "suite_ticket push not acknowledged: {pushed:?}"
    );
    let st = suite_token_keys();
    eventually(
        Duration::from_secs(15),
        "a suite token is stored",
        || async { value(&env, &st, Kind::SuiteAccessToken).await.is_some() },
    )
    .await;

    // Two corps install the suite's app.
    let corps = ["wwcorpa000000001", "wwcorpb000000002"];
    let mut codes = HashMap::new();
    for corp in corps {
        let r = env.admin.wecom_create_auth(SUITE, corp).await.unwrap();
        let push = r.push.as_ref().unwrap();
        assert!(push.success, "create_auth not acknowledged: {push:?}");
        codes.insert(corp, r.auth_code.clone().unwrap());
    }
    eventually(
        Duration::from_secs(25),
        "both corps' token and tickets are stored",
        || async {
            for corp in corps {
                for kind in CORP_KINDS {
                    if value(&env, &corp_keys(corp), kind).await.is_none() {
                        return false;
                    }
                }
            }
            true
        },
    )
    .await;
    let ev = env.admin.wecom_suite_evidence(SUITE).unwrap();
    assert_eq!(
        (ev.get_permanent_code.calls, ev.get_permanent_code.new),
        (2, 2),
        "each auth code exchanged exactly once: {:?}",
        ev.get_permanent_code
    );
    let mut permanent = HashMap::new();
    for corp in corps {
        let code = get(&env, &corp_keys(corp).permanent_code()).await.unwrap();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(corp_keys(corp).permanent_code())
            .query_async(&mut env.redis_con().await)
            .await
            .unwrap();
        assert_eq!(ttl, -1, "the permanent code is durable");
        permanent.insert(corp, code);
    }

    // The CLI sees the suite and its corps.
    let url = env.redis.url();
    let out = crate::common::wxtoken_cli(
        &["status", "--json", "--redis-url", &url, "--prefix", "corp/"],
        &[],
    )
    .await;
    for corp in corps {
        assert!(
            out.stdout.contains(&format!("corp/{SUITE}/{corp}")),
            "status does not list {corp}: {} {}",
            out.stdout,
            out.stderr
        );
    }
    assert!(out.stdout.contains("suite_corp"), "{}", out.stdout);
    for (what, secret) in [
        ("permanent code", &permanent[corps[0]]),
        ("aes key", &suite.aes_key),
    ] {
        assert!(
            !out.stdout.contains(secret.as_str()),
            "the {what} is in status"
        );
    }
    let out =
        crate::common::wxtoken_cli(&["status", "--redis-url", &url, "--id", st.id()], &[]).await;
    assert!(
        out.stdout.contains("suite_access_token"),
        "{} {}",
        out.stdout,
        out.stderr
    );
    // A summary of the suite like a platform's: its corps by state.
    let summary = format!(
        "WeCom suite {SUITE} (suite/{SUITE}): {} corps: {} ok",
        corps.len(),
        corps.len()
    );
    assert!(
        out.stdout.contains(&summary),
        "{summary:?} in {}",
        out.stdout
    );
    assert!(out.stdout.contains("suite ticket"), "{}", out.stdout);
    // And on the status page.
    let page = reqwest::get(format!("http://127.0.0.1:{}/", ports[0]))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for want in ["WeCom suite", "Suite ticket", "Suite token", "Corps ok"] {
        assert!(page.contains(want), "{want:?} not on the status page");
    }
    // Its corps as rows, through the block's link.
    let rows = reqwest::get(format!(
        "http://127.0.0.1:{}/status.json?prefix=corp/{SUITE}/",
        ports[0]
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    for corp in corps {
        assert!(
            rows.contains(&format!("\"corp/{SUITE}/{corp}\"")),
            "{corp} not listed: {rows}"
        );
    }

    // Three lifetimes: whatever is stored is valid at WeCom; gaps (WeCom
    // issues the next value only once the last expired) stay short.
    let mut watched: Vec<(String, CredentialKeys, Kind)> =
        vec![("suite".into(), st.clone(), Kind::SuiteAccessToken)];
    for corp in corps {
        for kind in CORP_KINDS {
            watched.push((corp.to_string(), corp_keys(corp), kind));
        }
    }
    let started = Instant::now();
    let mut samples = 0u64;
    let mut misses: HashMap<usize, (u64, Duration, Option<Instant>)> = HashMap::new();
    while started.elapsed() < lifetime * 3 {
        samples += 1;
        for (i, (who, keys, kind)) in watched.iter().enumerate() {
            let gap = misses.entry(i).or_default();
            match value(&env, keys, *kind).await {
                Some(v) => {
                    if let Err(code) = valid(&env, *kind, &v) {
                        panic!("{who} {kind} stored but refused by WeCom ({code})");
                    }
                    if let Some(since) = gap.2.take() {
                        gap.1 = gap.1.max(since.elapsed());
                    }
                }
                None => {
                    gap.0 += 1;
                    gap.2.get_or_insert_with(Instant::now);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for (i, (missed, longest, _)) in &misses {
        let (who, _, kind) = &watched[*i];
        eprintln!(
            "{who} {kind}: missing in {missed} of {samples} samples, longest gap {longest:?}"
        );
        assert!(
            missed * 4 <= samples,
            "{who} {kind}: missing in {missed} of {samples}"
        );
        assert!(
            *longest <= Duration::from_secs(4),
            "{who} {kind}: nothing stored for {longest:?}"
        );
    }

    // Replays and old pushes change nothing; a forged one is refused.
    let a = corps[0];
    let replay = format!(
        "<xml><SuiteId><![CDATA[{SUITE}]]></SuiteId><AuthCode><![CDATA[{}]]></AuthCode>\
         <InfoType><![CDATA[create_auth]]></InfoType><TimeStamp>{}</TimeStamp></xml>",
        codes[a],
        wxtoken_testkit_now_s()
    );
    assert_eq!(suite.push(&push_url, &replay, true).await, 200);
    let ticket_before = get(
        &env,
        &SuiteKeys::new("wxtoken", SUITE).unwrap().suite_ticket(),
    )
    .await
    .unwrap();
    let old_ticket = format!(
        "<xml><SuiteId><![CDATA[{SUITE}]]></SuiteId><InfoType><![CDATA[suite_ticket]]></InfoType>\
         <TimeStamp>{}</TimeStamp><SuiteTicket><![CDATA[an-older-ticket]]></SuiteTicket></xml>",
        wxtoken_testkit_now_s() - 300
    );
    assert_eq!(suite.push(&push_url, &old_ticket, true).await, 200);
    let old_cancel = format!(
        "<xml><SuiteId><![CDATA[{SUITE}]]></SuiteId><InfoType><![CDATA[cancel_auth]]></InfoType>\
         <TimeStamp>{}</TimeStamp><AuthCorpId><![CDATA[{a}]]></AuthCorpId></xml>",
        wxtoken_testkit_now_s() - 3600
    );
    assert_eq!(suite.push(&push_url, &old_cancel, true).await, 200);
    assert_eq!(suite.push(&push_url, &old_cancel, false).await, 401);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ev = env.admin.wecom_suite_evidence(SUITE).unwrap();
    assert_eq!(
        ev.get_permanent_code.calls, 2,
        "a replayed code was exchanged"
    );
    assert_eq!(
        get(
            &env,
            &SuiteKeys::new("wxtoken", SUITE).unwrap().suite_ticket()
        )
        .await,
        Some(ticket_before),
        "an older ticket replaced the newer one"
    );
    // (Its token may be between two values right now: WeCom issues the
    // next only once the last expired. Its registration and code tell.)
    let due =
        wxtoken_schema::index::due_at(&mut env.redis_con().await, &corp_keys(a), Kind::AccessToken)
            .await
            .unwrap();
    assert!(
        due.is_some() && get(&env, &corp_keys(a).permanent_code()).await.is_some(),
        "an old cancel_auth removed a newer authorization"
    );

    // WeCom retrying one create_auth push at every replica at once: the
    // code is exchanged exactly once.
    let c = "wwcorpc000000003";
    let r = env
        .admin
        .wecom_auth_event(SUITE, c, wxtoken_sim::WecomAuthEvent::CreateAuth, false)
        .await
        .unwrap();
    let code_c = r.auth_code.unwrap();
    let create = format!(
        "<xml><SuiteId><![CDATA[{SUITE}]]></SuiteId><AuthCode><![CDATA[{code_c}]]></AuthCode>\
         <InfoType><![CDATA[create_auth]]></InfoType><TimeStamp>{}</TimeStamp></xml>",
        wxtoken_testkit_now_s()
    );
    let urls: Vec<String> = ports.iter().map(|p| suite.url(*p)).collect();
    let statuses =
        futures_util::future::join_all(urls.iter().map(|u| suite.push(u, &create, true))).await;
    assert_eq!(statuses, vec![200, 200, 200]);
    eventually(
        Duration::from_secs(20),
        "corp C's token is stored",
        || async {
            value(&env, &corp_keys(c), Kind::AccessToken)
                .await
                .is_some()
        },
    )
    .await;
    // Long enough for every replica's sweeper to have looked (10 s).
    tokio::time::sleep(Duration::from_secs(11)).await;
    let ev = env.admin.wecom_suite_evidence(SUITE).unwrap();
    assert_eq!(
        (ev.get_permanent_code.calls, ev.get_permanent_code.new),
        (3, 3),
        "one exchange per code: {:?}",
        ev.get_permanent_code
    );
    codes.insert(c, code_c);
    permanent.insert(c, get(&env, &corp_keys(c).permanent_code()).await.unwrap());

    // cancel_auth removes the corp and every key it has.
    let b = corps[1];
    let r = env.admin.wecom_cancel_auth(SUITE, b).await.unwrap();
    assert!(r.push.as_ref().unwrap().success, "{r:?}");
    let bk = corp_keys(b);
    let pattern = format!("wxtoken:{{{}}}:*", bk.id());
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut env.redis_con().await)
        .await
        .unwrap();
    assert_eq!(left, vec![bk.removed()], "keys left after cancel_auth");
    let sk = SuiteKeys::new("wxtoken", SUITE).unwrap();
    assert_eq!(
        count_corps(&mut env.redis_con().await, &sk).await.unwrap(),
        2
    );
    // It stays removed (no replica brings it back).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(value(&env, &bk, Kind::AccessToken).await, None);

    // Stop, then compare WeCom's count of suite tokens with what was logged.
    let ticket = get(&env, &sk.suite_ticket()).await.unwrap();
    for r in &mut replicas {
        assert_eq!(r.terminate(Duration::from_secs(10)), Some(0));
    }
    let logs: String = replicas.iter().map(|r| r.logs()).collect();
    let ev = env.admin.wecom_suite_evidence(SUITE).unwrap();
    eprintln!(
        "get_suite_token {:?}; get_corp_token {:?}",
        ev.get_suite_token, ev.get_corp_token
    );
    let c: &WecomFetchCounts = &ev.get_suite_token;
    assert!(c.errcodes.is_empty(), "{c:?}");
    assert_eq!(c.calls, c.new + c.same, "{c:?}");
    assert!(c.same <= c.new + 1, "early looks spin: {c:?}");
    let new_logged = count_lines(
        &logs,
        &["stored new value", st.id(), "kind=suite_access_token"],
    );
    assert_eq!(
        new_logged, c.new,
        "exactly one get_suite_token per refresh: logged vs issued"
    );
    let written: Vec<String> = events
        .of(Kind::SuiteAccessToken)
        .into_iter()
        .map(|e| e.token)
        .collect();
    let mut distinct = written.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len() as u64,
        c.new,
        "every issued suite token stored"
    );
    assert!(
        ev.get_corp_token.errcodes.is_empty(),
        "{:?}",
        ev.get_corp_token
    );

    // No secret, code or whole token in any log.
    let mut secrets: Vec<(&str, String)> = vec![
        ("suite secret", suite.secret.clone()),
        ("callback token", suite.token.clone()),
        ("aes key", suite.aes_key.clone()),
        ("suite ticket", ticket),
    ];
    for (corp, code) in &permanent {
        secrets.push(("permanent code", code.clone()));
        secrets.push(("auth code", codes[corp].clone()));
    }
    for token in &written {
        secrets.push(("suite token", token.clone()));
    }
    for r in &replicas {
        let logs = r.logs();
        for (what, value) in &secrets {
            assert!(
                !logs.contains(value.as_str()),
                "the {what} is in {}'s log",
                r.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_suite_token_is_replaced_and_a_changed_permanent_code_is_a_config_fault() {
    let suite = Suite::new();
    let ports: Vec<u16> = (0..2)
        .map(|_| wxtoken_testkit::free_port().unwrap())
        .collect();
    let env = Env::start(Setup {
        credentials: 0,
        lifetime: Duration::from_secs(8),
        sim_suites: vec![suite.sim(ports[0])],
        lock_ttl: Duration::from_secs(8),
        request_timeout: Duration::from_secs(4),
        ..Setup::default()
    })
    .await;
    let replicas = spawn(&env, &suite, &ports).await;
    assert!(
        env.admin
            .wecom_push_suite_ticket(SUITE)
            .await
            .unwrap()
            .success
    );
    let corp = "wwcorpd000000004";
    let r = env.admin.wecom_create_auth(SUITE, corp).await.unwrap();
    assert!(r.push.unwrap().success);
    let ck = corp_keys(corp);
    eventually(
        Duration::from_secs(20),
        "the corp's token is stored",
        || async { value(&env, &ck, Kind::AccessToken).await.is_some() },
    )
    .await;
    let st = suite_token_keys();
    let revoked = value(&env, &st, Kind::SuiteAccessToken).await.unwrap();

    // WeCom invalidates the suite token early: the corp's next refresh is
    // refused (40082), which reports the suite token; a new one is fetched
    // and the corp's token comes back.
    env.admin.revoke_wecom_suite_token(SUITE).unwrap();
    eventually(
        Duration::from_secs(30),
        "a new suite token replaces the revoked one",
        || async {
            match value(&env, &st, Kind::SuiteAccessToken).await {
                Some(t) => t != revoked && env.admin.check_wecom_suite_token(&t).is_ok(),
                None => false,
            }
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the corp's token is valid again",
        || async {
            match value(&env, &ck, Kind::AccessToken).await {
                Some(t) => env.admin.check_wecom_token(&t).is_ok(),
                None => false,
            }
        },
    )
    .await;

    // The corp's permanent code changes at WeCom (say, a new authorization
    // whose push was lost): 40084, a configuration fault in its status.
    env.admin.rotate_wecom_permanent_code(SUITE, corp).unwrap();
    eventually(
        Duration::from_secs(30),
        "40084 is recorded in the corp's status",
        || async {
            let code: Option<String> = redis::cmd("HGET")
                .arg(ck.status())
                .arg("last_errcode")
                .query_async(&mut env.redis_con().await)
                .await
                .unwrap();
            code.as_deref() == Some("40084")
        },
    )
    .await;
    let ev = env.admin.wecom_suite_evidence(SUITE).unwrap();
    let refused = ev.get_corp_token.errcodes.get(&40084).copied().unwrap_or(0);
    // Retried every config_error_retry (2 s here), not in a loop.
    assert!(refused <= 10, "get_corp_token refused {refused} times");
    let code = get(&env, &ck.permanent_code()).await.unwrap();
    for r in &replicas {
        assert!(
            !r.logs().contains(&code),
            "the permanent code is in {}'s log",
            r.name
        );
    }
}

/// The suite on a three-primary Redis Cluster: every script touches one
/// slot (a suite's and each corp's keys live on different primaries), the
/// codes are exchanged once each, the corps' tokens are valid, and a
/// cancelled corp loses its keys on whichever node they live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suite_and_its_corps_on_a_redis_cluster() {
    const CORPS: usize = 6;
    let cluster = wxtoken_testkit::ClusterSet::start(3, 0)
        .expect("redis-server and redis-cli are needed (apt-get install redis-server redis-tools)");
    let suite = Suite::new();
    let ports: Vec<u16> = (0..2)
        .map(|_| wxtoken_testkit::free_port().unwrap())
        .collect();
    let env = Env::start(Setup {
        credentials: 0,
        lifetime: Duration::from_secs(600),
        sim_suites: vec![suite.sim(ports[0])],
        lock_ttl: Duration::from_secs(8),
        request_timeout: Duration::from_secs(4),
        ..Setup::default()
    })
    .await;
    let replicas = spawn_on(&env, &cluster.url(), &suite, &ports).await;
    let nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|a| format!("redis://{a}"))
        .collect();
    let mut con = redis::cluster::ClusterClientBuilder::new(nodes)
        .build()
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    let get = |key: String| {
        let mut con = con.clone();
        async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut con)
                .await
                .unwrap()
        }
    };

    let v = env.admin.verify_wecom_suite_url(SUITE).await.unwrap();
    assert!(v.echoed, "{v:?}");
    assert!(
        env.admin
            .wecom_push_suite_ticket(SUITE)
            .await
            .unwrap()
            .success
    );
    let corps: Vec<String> = (0..CORPS).map(|i| format!("wwclustercorp{i:03}")).collect();
    for corp in &corps {
        let r = env.admin.wecom_create_auth(SUITE, corp).await.unwrap();
        assert!(r.push.is_some_and(|p| p.success), "create_auth not taken");
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut stored = 0;
        for corp in &corps {
            if let Some(t) = get(corp_keys(corp).value(Kind::AccessToken)).await {
                assert_eq!(env.admin.check_wecom_token(&t), Ok(()), "{corp}");
                stored += 1;
            }
        }
        if stored == CORPS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} of {CORPS} corps stored on the cluster:\n{}",
            replicas[0].logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ev = env.admin.wecom_suite_evidence(SUITE).unwrap();
    assert_eq!(
        (ev.get_permanent_code.calls, ev.get_permanent_code.new),
        (CORPS as u64, CORPS as u64),
        "one exchange per code"
    );
    // The suite's keys and the corps' live on several primaries.
    let sk = SuiteKeys::new("wxtoken", SUITE).unwrap();
    let mut homes: std::collections::BTreeSet<std::net::SocketAddr> = corps
        .iter()
        .map(|c| {
            cluster
                .primary_for_key(&corp_keys(c).permanent_code())
                .unwrap()
        })
        .collect();
    homes.insert(cluster.primary_for_key(&sk.suite_ticket()).unwrap());
    assert!(homes.len() >= 2, "everything on one primary: {homes:?}");

    // cancel_auth: the corp's keys go, on whichever node they live.
    let gone = &corps[0];
    let r = env.admin.wecom_cancel_auth(SUITE, gone).await.unwrap();
    assert!(r.push.is_some_and(|p| p.success));
    let k = corp_keys(gone);
    for key in [
        k.value(Kind::AccessToken),
        k.permanent_code(),
        k.status(),
        k.schedule(),
    ] {
        let n: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, 0, "{key} left after cancel_auth");
    }
    let left: i64 = redis::cmd("ZCARD")
        .arg(sk.corps())
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(left, CORPS as i64 - 1);
    let queued: Option<f64> = redis::cmd("ZSCORE")
        .arg(k.due())
        .arg(k.member(Kind::AccessToken))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(queued, None, "its due-queue entry is gone");
    for r in &replicas {
        assert!(
            !r.logs().contains("CROSSSLOT"),
            "a script crossed slots:\n{}",
            r.logs()
        );
    }
}
