//! The third-party platform's verify-ticket receiver (`[[component]]`,
//! `POST /wechat/component/{id}`) against a real `wxtoken run`, a real
//! redis-server and the simulator pushing encrypted
//! `component_verify_ticket`s exactly as WeChat does:
//! - a genuine push is stored under the schema's key (`PX` 12 h) before
//!   the replica answers `success`, and the stored ticket is the newest
//!   one and buys a component access token;
//! - forged (bad signature) and undecryptable pushes are refused and
//!   change nothing; a replayed push is harmless;
//! - unknown ids are 404, oversized bodies 413; no bearer token is needed;
//! - no secret, message token, EncodingAESKey or whole ticket reaches the
//!   replica's log.

use crate::common::{Env, Replica, Setup};
use std::time::{Duration, Instant};
use wxtoken_schema::ComponentKeys;
use wxtoken_sim::{ComponentConfig, Tamper};

const ID: &str = "platform";
const APPID: &str = "wxcomponent00000001";

fn random_chars(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

struct Scenario {
    env: Env,
    replica: Replica,
    base: String,
    secret: String,
    token: String,
    aes_key: String,
}

async fn start() -> Scenario {
    let port = wxtoken_testkit::free_port().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let secret = format!("csecret{}", random_chars(25));
    let token = format!("ctoken{}", random_chars(20));
    let aes_key = random_chars(43);
    let setup = Setup {
        credentials: 1,
        lifetime: Duration::from_secs(120),
        overlap: Duration::from_secs(5),
        extra_config: format!(
            "\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [[component]]\nid = \"{ID}\"\nappid = \"{APPID}\"\nsecret_env = \"WXT_C_SECRET\"\n\
             token_env = \"WXT_C_TOKEN\"\nencoding_aes_key_env = \"WXT_C_KEY\"\n"
        ),
        sim_components: vec![ComponentConfig {
            appid: APPID.into(),
            secret: secret.clone(),
            token: token.clone(),
            encoding_aes_key: aes_key.clone(),
            push_url: Some(format!("{base}/wechat/component/{ID}")),
        }],
        ..Setup::default()
    };
    let env = Env::start(setup).await;
    let replica = env.spawn_replica_with(
        "replica-1",
        None,
        &[
            ("WXT_C_SECRET", &secret),
            ("WXT_C_TOKEN", &token),
            ("WXT_C_KEY", &aes_key),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/healthz")).await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the HTTP surface did not come up; log:\n{}",
            replica.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The replica fetches the component token with the first ticket it
    // gets (asking WeChat for a push at start): wait until that is done,
    // so that the pushes below are the only ones.
    let token_keys = wxtoken_schema::CredentialKeys::component("wxtoken", APPID).unwrap();
    crate::common::eventually(Duration::from_secs(20), "the component token", || async {
        crate::common::stored(
            &mut env.redis_con().await,
            &token_keys,
            wxtoken_schema::Kind::ComponentAccessToken,
        )
        .await
        .is_some()
    })
    .await;
    Scenario {
        env,
        replica,
        base,
        secret,
        token,
        aes_key,
    }
}

impl Scenario {
    async fn stored(&self) -> (Option<String>, i64) {
        let key = ComponentKeys::new("wxtoken", APPID)
            .unwrap()
            .verify_ticket();
        let mut con = self.env.redis_con().await;
        let ticket: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        (ticket, pttl)
    }

    /// Trades `ticket` for a component access token at the simulator:
    /// `Ok(())` or WeChat's errcode.
    async fn component_token(&self, ticket: &str) -> Result<(), i64> {
        let v: serde_json::Value = reqwest::Client::new()
            .post(format!(
                "{}/cgi-bin/component/api_component_token",
                self.env.sim.base_url()
            ))
            .json(&serde_json::json!({
                "component_appid": APPID,
                "component_appsecret": self.secret,
                "component_verify_ticket": ticket,
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match v.get("component_access_token") {
            Some(_) => Ok(()),
            None => Err(v["errcode"].as_i64().unwrap_or(0)),
        }
    }
}

/// The 8 characters the simulator's evidence shows of a ticket.
fn evidence_prefix(ticket: &str) -> String {
    ticket
        .trim_start_matches("ticket@@@")
        .chars()
        .take(8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_tickets_are_received_stored_and_tampering_is_refused() {
    let s = start().await;

    // A genuine push: answered `success` after the ticket is in Redis.
    let first = s.env.admin.push_ticket(APPID).await.unwrap();
    assert!(first.success, "{first:?}\nlog:\n{}", s.replica.logs());
    assert_eq!(first.status, Some(200));
    let (ticket, pttl) = s.stored().await;
    let ticket = ticket.expect("the ticket is stored once success was answered");
    assert_eq!(first.ticket_prefix, Some(evidence_prefix(&ticket)));
    assert!(
        (43_100_000..=43_200_000).contains(&pttl),
        "PX 12 h, got {pttl}"
    );
    s.component_token(&ticket).await.unwrap();
    let keys = ComponentKeys::new("wxtoken", APPID).unwrap();
    let created: Option<String> = redis::cmd("HGET")
        .arg(keys.verify_ticket_info())
        .arg("create_time")
        .query_async(&mut s.env.redis_con().await)
        .await
        .unwrap();
    assert!(
        created.is_some_and(|c| c.parse::<u64>().is_ok()),
        "create_time is kept beside the ticket"
    );

    // A newer push replaces it: the stored ticket is always the newest.
    let second = s.env.admin.push_ticket(APPID).await.unwrap();
    assert!(second.success, "{second:?}");
    let (newest, _) = s.stored().await;
    let newest = newest.unwrap();
    assert_ne!(newest, ticket);
    assert_eq!(second.ticket_prefix, Some(evidence_prefix(&newest)));
    s.component_token(&newest).await.unwrap();

    // Forged and undecryptable pushes are refused and change nothing.
    let forged = s
        .env
        .admin
        .push_tampered(APPID, Tamper::BadSignature)
        .await
        .unwrap();
    assert_eq!((forged.status, forged.success), (Some(401), false));
    let garbled = s
        .env
        .admin
        .push_tampered(APPID, Tamper::BadCiphertext)
        .await
        .unwrap();
    assert_eq!((garbled.status, garbled.success), (Some(400), false));
    assert_eq!(s.stored().await.0.as_deref(), Some(newest.as_str()));

    // A replay of the last genuine push is harmless: the stored ticket
    // stays the newest and valid.
    let replay = s
        .env
        .admin
        .push_tampered(APPID, Tamper::Replay)
        .await
        .unwrap();
    assert_eq!(replay.status, Some(200), "{replay:?}");
    assert_eq!(s.stored().await.0.as_deref(), Some(newest.as_str()));
    s.component_token(&newest).await.unwrap();

    let evidence = s.env.admin.component_evidence(APPID).unwrap();
    assert!(evidence.counts.pushes_acknowledged >= 3, "{evidence:?}");

    // Unknown ids are 404; oversized bodies 413; neither needs a token,
    // and neither touches the stored ticket.
    let http = reqwest::Client::new();
    let r = http
        .post(format!(
            "{}/wechat/component/nope?timestamp=1&nonce=2&msg_signature=3",
            s.base
        ))
        .body("<xml/>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .post(format!(
            "{}/wechat/component/{ID}?timestamp=1&nonce=2&msg_signature=3",
            s.base
        ))
        .body(vec![b'x'; 70 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = http
        .post(format!("{}/wechat/component/{ID}", s.base))
        .body("<xml><Encrypt>x</Encrypt></xml>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "missing query parameters");
    assert_eq!(s.stored().await.0.as_deref(), Some(newest.as_str()));

    // The log shows ticket prefixes only, and no secret at all.
    let logs = s.replica.logs();
    assert!(
        logs.contains("component_verify_ticket stored"),
        "log:\n{logs}"
    );
    assert!(logs.contains("refused component push"), "log:\n{logs}");
    for (what, value) in [
        ("component secret", s.secret.as_str()),
        ("message token", s.token.as_str()),
        ("EncodingAESKey", s.aes_key.as_str()),
        ("first ticket", ticket.as_str()),
        ("newest ticket", newest.as_str()),
    ] {
        assert!(!logs.contains(value), "the {what} is in the log:\n{logs}");
    }
}
