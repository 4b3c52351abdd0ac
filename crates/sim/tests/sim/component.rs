//! Third-party platform: verify-ticket pushes to a real HTTP receiver, `api_component_token`,
//! `api_start_push_ticket`, tampered pushes. The receiver is a small axum server in the test;
//! pushes are checked with `wxtoken_crypto::MsgCrypt`. The receiver and crypto helpers are
//! shared with `authorizer.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::routing::post;
use axum::Router;
use reqwest::Client;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use wxtoken_crypto::{CryptoError, EncodingAesKey, MsgCrypt, SignedQuery};
use wxtoken_sim::{
    ComponentConfig, ComponentError, PushTrigger, SimConfig, Simulator, Tamper, Timing,
};

pub const CAPPID: &str = "wxcomponent0000001";
pub const CSECRET: &str = "00112233445566778899aabbccddeeff";
pub const CTOKEN: &str = "componenttoken";
pub const CKEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

pub struct Pushed {
    pub query: HashMap<String, String>,
    pub raw_query: String,
    pub body: Vec<u8>,
}

impl Pushed {
    pub fn q(&self, name: &str) -> &str {
        self.query.get(name).map(String::as_str).unwrap_or_default()
    }

    pub fn signed(&self) -> SignedQuery<'_> {
        SignedQuery {
            timestamp: self.q("timestamp"),
            nonce: self.q("nonce"),
            msg_signature: self.q("msg_signature"),
        }
    }
}

type Shared = (mpsc::UnboundedSender<Pushed>, Arc<Mutex<String>>);

/// A push receiver answering `answer` (initially `success`) and handing every push to the test.
pub struct Receiver {
    pub url: String,
    pub pushes: mpsc::UnboundedReceiver<Pushed>,
    pub answer: Arc<Mutex<String>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let answer = Arc::new(Mutex::new("success".to_string()));
        let app = Router::new()
            .route("/wx/auth", post(receive))
            .with_state((tx, Arc::clone(&answer)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}/wx/auth"),
            pushes: rx,
            answer,
        }
    }

    pub async fn next(&mut self) -> Pushed {
        tokio::time::timeout(Duration::from_secs(10), self.pushes.recv())
            .await
            .expect("a push arrives")
            .expect("receiver alive")
    }

    /// No push arrives within 200 ms of real time.
    pub async fn none(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(200), self.pushes.recv()).await;
        assert!(got.is_err(), "unexpected push");
    }
}

async fn receive(
    State((tx, answer)): State<Shared>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> String {
    let raw_query = query.unwrap_or_default();
    let query = form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let _ = tx.send(Pushed {
        query,
        raw_query,
        body: body.to_vec(),
    });
    answer.lock().unwrap().clone()
}

pub fn crypt() -> MsgCrypt {
    MsgCrypt::new(
        SecretString::from(CTOKEN.to_string()),
        EncodingAesKey::parse(CKEY).unwrap(),
        None,
        CAPPID,
    )
}

pub fn component(push_url: Option<String>) -> ComponentConfig {
    ComponentConfig {
        appid: CAPPID.into(),
        secret: CSECRET.into(),
        token: CTOKEN.into(),
        encoding_aes_key: CKEY.into(),
        push_url,
    }
}

pub fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let from = s.find(start).expect("start tag") + start.len();
    let len = s[from..].find(end).expect("end tag");
    &s[from..from + len]
}

/// Verifies and decrypts a push like a real receiver and returns its ticket.
pub fn ticket_of(p: &Pushed) -> String {
    assert_eq!(p.q("encrypt_type"), "aes");
    let c = crypt();
    assert_eq!(
        c.verify_signature(p.q("timestamp"), p.q("nonce"), p.q("signature")),
        Ok(())
    );
    let outer = String::from_utf8(p.body.clone()).unwrap();
    assert_eq!(
        between(&outer, "<AppId><![CDATA[", "]]></AppId>"),
        CAPPID,
        "{outer}"
    );
    let d = c.verify_and_decrypt(p.signed(), &p.body).unwrap();
    assert_eq!(d.appid, CAPPID);
    let m = &d.message;
    assert_eq!(between(m, "<AppId><![CDATA[", "]]>"), CAPPID);
    assert_eq!(
        between(m, "<InfoType><![CDATA[", "]]>"),
        "component_verify_ticket"
    );
    let create: u64 = between(m, "<CreateTime>", "</CreateTime>").parse().unwrap();
    assert_eq!(create.to_string(), p.q("timestamp"));
    between(m, "<ComponentVerifyTicket><![CDATA[", "]]>").to_string()
}

struct H {
    sim: Simulator,
    http: Client,
    rx: Receiver,
}

impl H {
    /// A simulator with one pushing component and a paused clock; the start push is consumed.
    async fn start(timing: Timing) -> (H, String) {
        let mut rx = Receiver::start().await;
        let config = SimConfig::default()
            .with_component(component(Some(rx.url.clone())))
            .with_timing(timing);
        let sim = Simulator::start(config, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        sim.admin().pause_clock();
        let first = rx.next().await;
        let ticket = ticket_of(&first);
        let http = Client::builder().no_proxy().build().unwrap();
        (H { sim, http, rx }, ticket)
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.http
            .post(format!("{}{path}", self.sim.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn token(&self, ticket: &str) -> Value {
        self.post(
            "/cgi-bin/component/api_component_token",
            json!({
                "component_appid": CAPPID,
                "component_appsecret": CSECRET,
                "component_verify_ticket": ticket,
            }),
        )
        .await
    }

    async fn start_push(&self, secret: Option<&str>) -> Value {
        let mut body = json!({ "component_appid": CAPPID });
        if let Some(s) = secret {
            body["component_secret"] = json!(s);
        }
        self.post("/cgi-bin/component/api_start_push_ticket", body)
            .await
    }
}

fn fast() -> Timing {
    Timing {
        expires_in: Duration::from_secs(7200),
        overlap: Duration::from_secs(300),
        ..Timing::default()
    }
}

#[tokio::test]
async fn pushed_ticket_verifies_and_buys_a_component_token() {
    let (h, ticket) = H::start(fast()).await;
    assert!(ticket.starts_with("ticket@@@"));
    let answer = h.token(&ticket).await;
    let token = answer["component_access_token"].as_str().unwrap();
    assert_eq!(answer["expires_in"], 7200);
    let admin = h.sim.admin();
    assert_eq!(admin.check_component_token(token), Ok(()));

    let ev = admin.component_evidence(CAPPID).unwrap();
    assert_eq!(ev.pushes.len(), 1);
    assert_eq!(ev.pushes[0].trigger, PushTrigger::Schedule);
    assert!(ev.pushes[0].success);
    assert_eq!(ev.pushes[0].status, Some(200));
    assert_eq!(ev.pushes[0].ticket_prefix.as_deref(), Some(&ticket[9..17]));
    assert_eq!(ev.counts.component_token_issued, 1);
    // Evidence never holds whole tickets or tokens.
    let text = serde_json::to_string(&ev).unwrap();
    assert!(!text.contains(&ticket) && !text.contains(token));
}

#[tokio::test]
async fn unknown_ticket_is_61006_and_an_old_one_61005() {
    let (h, ticket) = H::start(fast()).await;
    assert_eq!(h.token("ticket@@@nope").await["errcode"], 61006);
    let missing = h
        .post(
            "/cgi-bin/component/api_component_token",
            json!({ "component_appid": CAPPID, "component_appsecret": CSECRET }),
        )
        .await;
    assert_eq!(missing["errcode"], 61006);

    let admin = h.sim.admin();
    admin.advance(Duration::from_secs(12 * 3600 - 1));
    assert!(h.token(&ticket).await["component_access_token"].is_string());
    admin.advance(Duration::from_secs(2));
    let old = h.token(&ticket).await;
    assert_eq!(old["errcode"], 61005, "{old}");
}

#[tokio::test]
async fn credentials_are_checked() {
    let (h, ticket) = H::start(fast()).await;
    let wrong = h
        .post(
            "/cgi-bin/component/api_component_token",
            json!({
                "component_appid": CAPPID,
                "component_appsecret": "wrong",
                "component_verify_ticket": ticket,
            }),
        )
        .await;
    assert_eq!(wrong["errcode"], 40125);
    let no_secret = h
        .post(
            "/cgi-bin/component/api_component_token",
            json!({ "component_appid": CAPPID, "component_verify_ticket": ticket }),
        )
        .await;
    assert_eq!(no_secret["errcode"], 41004);
    let unknown = h
        .post(
            "/cgi-bin/component/api_component_token",
            json!({ "component_appid": "wxnope", "component_appsecret": CSECRET }),
        )
        .await;
    assert_eq!(unknown["errcode"], 40013);

    // Scripted system error, then normal again.
    let admin = h.sim.admin();
    assert_eq!(admin.fail_component_token(CAPPID, -1, 1), Ok(()));
    assert_eq!(h.token(&ticket).await["errcode"], -1);
    assert!(h.token(&ticket).await["component_access_token"].is_string());
    assert_eq!(
        admin.fail_component_token(CAPPID, -1, 0),
        Err(ComponentError::ZeroTimes)
    );
}

#[tokio::test]
async fn daily_quota_is_45009() {
    let (h, ticket) = H::start(Timing {
        component_token_daily_quota: 2,
        ..fast()
    })
    .await;
    assert!(h.token(&ticket).await["component_access_token"].is_string());
    assert!(h.token(&ticket).await["component_access_token"].is_string());
    assert_eq!(h.token(&ticket).await["errcode"], 45009);
}

#[tokio::test]
async fn every_fetch_replaces_the_token_and_the_old_one_lives_for_the_overlap() {
    let (h, ticket) = H::start(fast()).await;
    let admin = h.sim.admin();
    let a = h.token(&ticket).await["component_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    admin.advance(Duration::from_secs(100));
    let b = h.token(&ticket).await["component_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(a, b);
    assert_eq!(admin.check_component_token(&a), Ok(()));
    admin.advance(Duration::from_secs(300) - Duration::from_nanos(1));
    assert_eq!(admin.check_component_token(&a), Ok(()));
    admin.advance(Duration::from_nanos(1));
    assert_eq!(admin.check_component_token(&a), Err(40001));
    assert_eq!(admin.check_component_token(&b), Ok(()));
    admin.advance(Duration::from_secs(7200));
    assert_eq!(admin.check_component_token(&b), Err(42001));
    assert_eq!(admin.check_component_token("nope"), Err(40001));
}

#[tokio::test]
async fn start_push_ticket_pushes_a_new_ticket_at_once() {
    let (mut h, first) = H::start(fast()).await;
    let ok = h.start_push(Some(CSECRET)).await;
    assert_eq!(ok, json!({ "errcode": 0, "errmsg": "ok" }));
    let second = ticket_of(&h.rx.next().await);
    assert_ne!(first, second);
    // Both tickets are valid.
    assert!(h.token(&first).await["component_access_token"].is_string());
    assert!(h.token(&second).await["component_access_token"].is_string());

    assert_eq!(h.start_push(None).await["errcode"], 41004);
    assert_eq!(h.start_push(Some("bad")).await["errcode"], 40125);
    h.rx.none().await;
    let ev = h.sim.admin().component_evidence(CAPPID).unwrap();
    assert_eq!(ev.counts.start_push_ticket, 3);
    assert_eq!(ev.pushes[1].trigger, PushTrigger::StartPushTicket);
}

#[tokio::test]
async fn pushes_follow_the_simulator_clock() {
    let (mut h, _) = H::start(fast()).await;
    let admin = h.sim.admin();
    admin.advance(Duration::from_secs(599));
    h.rx.none().await;
    admin.advance(Duration::from_secs(1));
    let ticket = ticket_of(&h.rx.next().await);
    assert!(h.token(&ticket).await["component_access_token"].is_string());
    // A jump over several intervals gives one push, not a burst.
    admin.advance(Duration::from_secs(3 * 600));
    ticket_of(&h.rx.next().await);
    h.rx.none().await;
}

#[tokio::test]
async fn receiver_answers_are_recorded() {
    let (mut h, _) = H::start(fast()).await;
    *h.rx.answer.lock().unwrap() = "fail".to_string();
    let admin = h.sim.admin();
    let rec = admin.push_ticket(CAPPID).await.unwrap();
    assert_eq!(rec.trigger, PushTrigger::Admin);
    assert_eq!(rec.status, Some(200));
    assert!(!rec.success);
    ticket_of(&h.rx.next().await);
    let ev = admin.component_evidence(CAPPID).unwrap();
    assert_eq!(ev.counts.pushes, 2);
    assert_eq!(ev.counts.pushes_acknowledged, 1);

    assert_eq!(
        admin.push_ticket("wxnope").await,
        Err(ComponentError::UnknownComponent("wxnope".into()))
    );
}

#[tokio::test]
async fn tampered_pushes_fail_where_they_should() {
    let (mut h, genuine) = H::start(fast()).await;
    let admin = h.sim.admin();
    let c = crypt();

    // Bad signature: rejected before decryption; its ticket was never valid.
    let rec = admin
        .push_tampered(CAPPID, Tamper::BadSignature)
        .await
        .unwrap();
    assert_eq!(rec.tamper, Some(Tamper::BadSignature));
    assert_eq!(rec.ticket_prefix, None);
    let p = h.rx.next().await;
    assert_eq!(
        c.verify_and_decrypt(p.signed(), &p.body),
        Err(CryptoError::BadSignature)
    );
    let env = wxtoken_crypto::parse_envelope(&p.body).unwrap();
    let forged = c.decrypt(&env.encrypt).unwrap().message;
    let forged = between(&forged, "<ComponentVerifyTicket><![CDATA[", "]]>");
    assert_eq!(h.token(forged).await["errcode"], 61006);

    // Bad ciphertext: correctly signed, but does not decrypt.
    admin
        .push_tampered(CAPPID, Tamper::BadCiphertext)
        .await
        .unwrap();
    let p = h.rx.next().await;
    let env = wxtoken_crypto::parse_envelope(&p.body).unwrap();
    assert_eq!(
        c.verify_msg_signature(
            p.q("timestamp"),
            p.q("nonce"),
            &env.encrypt,
            p.q("msg_signature")
        ),
        Ok(())
    );
    assert!(c.verify_and_decrypt(p.signed(), &p.body).is_err());

    // Replay: the last genuine push, byte for byte.
    let fresh = admin.push_ticket(CAPPID).await.unwrap();
    let original = h.rx.next().await;
    assert_ne!(fresh.ticket_prefix.as_deref(), Some(&genuine[9..17]));
    admin.push_tampered(CAPPID, Tamper::Replay).await.unwrap();
    let replay = h.rx.next().await;
    assert_eq!(replay.raw_query, original.raw_query);
    assert_eq!(replay.body, original.body);
    assert_eq!(ticket_of(&replay), ticket_of(&original));
}

#[tokio::test]
async fn replay_needs_a_genuine_push_and_pushes_need_a_url() {
    let config = SimConfig::default().with_component(component(None));
    let sim = Simulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let admin = sim.admin();
    assert_eq!(
        admin.push_tampered(CAPPID, Tamper::Replay).await,
        Err(ComponentError::NoPushUrl(CAPPID.into()))
    );
    assert!(admin.component_evidence(CAPPID).unwrap().pushes.is_empty());
    sim.shutdown().await;
}

#[test]
fn components_parse_from_toml_and_are_validated() {
    let text = format!(
        "[[component]]\nappid = \"{CAPPID}\"\nsecret = \"{CSECRET}\"\ntoken = \"{CTOKEN}\"\n\
         encoding_aes_key = \"{CKEY}\"\npush_url = \"http://127.0.0.1:9/wx\"\n\
         [timing]\nticket_push_interval = \"1m\"\n"
    );
    let config = SimConfig::from_toml_str(&text).unwrap();
    assert_eq!(
        config.components,
        vec![component(Some("http://127.0.0.1:9/wx".into()))]
    );
    assert_eq!(config.timing.ticket_push_interval, Duration::from_secs(60));
    let dbg = format!("{config:?}");
    assert!(!dbg.contains(CSECRET) && !dbg.contains(CKEY) && !dbg.contains(CTOKEN));

    let short_key = text.replace(CKEY, "abc");
    let err = SimConfig::from_toml_str(&short_key)
        .unwrap_err()
        .to_string();
    assert!(err.contains("component[0].encoding_aes_key"), "{err}");
    let twice = SimConfig::default()
        .with_component(component(None))
        .with_component(component(None));
    let err = twice.validate().unwrap_err().to_string();
    assert!(err.contains("duplicate component appid"), "{err}");
}
