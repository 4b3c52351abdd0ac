//! WeCom (企业微信) over HTTP at `Simulator::wecom_base_url()` (`<sim>/qyapi`): `gettoken`'s
//! same-token-while-valid rule and errcodes, the failed-`gettoken` IP block on the simulator
//! clock, both JS-SDK tickets and their hourly limits, the business API, and the suite flow
//! with a real receiver (ticket push decrypted with the suite id, URL verification, suite
//! token, single-use auth code, permanent code, corp token, cancel_auth).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::routing::get;
use axum::Router;
use reqwest::{Client, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use wxtoken_crypto::{EncodingAesKey, MsgCrypt, SignedQuery};
use wxtoken_sim::{
    Admin, SimConfig, Simulator, Timing, WecomCorpConfig, WecomEndpoint, WecomError,
    WecomSuiteConfig,
};

use crate::common::NS;
use crate::component::{between, Pushed};

const CORP: &str = "ww0000000000000001";
const AGENT: u32 = 1_000_002;
const SECRET: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
const AGENT2: u32 = 1_000_003;
const SECRET2: &str = "GFEDCBAzyxwvutsrqponmlkjihgfedcba9876543210";
const SUITE: &str = "wwsuite0000000001";
const SUITE_SECRET: &str = "suitesecret0123456789suitesecret0123456789a";
const STOKEN: &str = "suitecallbacktoken";
const SKEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const HOUR: Duration = Duration::from_secs(3600);
const LIFE: Duration = Duration::from_secs(7200);

fn corp() -> WecomCorpConfig {
    WecomCorpConfig::new(CORP)
        .with_app(AGENT, SECRET)
        .with_app(AGENT2, SECRET2)
}

fn suite(push_url: Option<String>) -> WecomSuiteConfig {
    WecomSuiteConfig {
        suite_id: SUITE.into(),
        secret: SUITE_SECRET.into(),
        token: STOKEN.into(),
        encoding_aes_key: SKEY.into(),
        push_url,
    }
}

fn crypt() -> MsgCrypt {
    MsgCrypt::new(
        SecretString::from(STOKEN.to_string()),
        EncodingAesKey::parse(SKEY).unwrap(),
        None,
        SUITE,
    )
}

struct W {
    sim: Simulator,
    http: Client,
}

impl W {
    async fn start(timing: Timing) -> W {
        W::start_with(SimConfig::default().with_timing(timing)).await
    }

    /// A simulator with the corp (plus `config`) and a paused clock.
    async fn start_with(config: SimConfig) -> W {
        let sim = Simulator::start(
            config.with_wecom_corp(corp()),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        sim.admin().pause_clock();
        let http = Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        W { sim, http }
    }

    fn admin(&self) -> Admin {
        self.sim.admin()
    }

    fn advance(&self, by: Duration) {
        self.admin().try_advance(by).unwrap();
    }

    /// GET under the WeCom base URL, asserting HTTP 200 and WeCom's content type.
    async fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.sim.wecom_base_url()))
            .send()
            .await
            .unwrap();
        wecom_json(resp).await
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.sim.wecom_base_url()))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        wecom_json(resp).await
    }

    async fn gettoken(&self, corpid: &str, secret: &str) -> Value {
        self.get(&format!(
            "/cgi-bin/gettoken?corpid={corpid}&corpsecret={secret}"
        ))
        .await
    }

    /// APPs token: (token, expires_in), asserting success.
    async fn token(&self, secret: &str) -> (String, u64) {
        let v = self.gettoken(CORP, secret).await;
        assert_eq!(v["errcode"], 0, "{v}");
        assert_eq!(v["errmsg"], "ok");
        (s(&v, "access_token"), v["expires_in"].as_u64().unwrap())
    }

    async fn user(&self, token: &str) -> Value {
        self.get(&format!(
            "/cgi-bin/user/get?access_token={token}&userid=zhangsan"
        ))
        .await
    }

    async fn corp_ticket(&self, token: &str) -> Value {
        self.get(&format!("/cgi-bin/get_jsapi_ticket?access_token={token}"))
            .await
    }

    async fn agent_ticket(&self, token: &str) -> Value {
        self.get(&format!(
            "/cgi-bin/ticket/get?access_token={token}&type=agent_config"
        ))
        .await
    }
}

async fn wecom_json(resp: reqwest::Response) -> Value {
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/json; charset=UTF-8")
    );
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn s(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
        .to_string()
}

/// Asserts a WeCom error answer: the code, and an errmsg with WeCom's hint suffix.
#[track_caller]
fn assert_err(v: &Value, code: i64) {
    assert_eq!(v["errcode"].as_i64(), Some(code), "answer: {v}");
    let msg = v["errmsg"].as_str().unwrap();
    assert!(msg.contains(", hint: ["), "{msg}");
    assert!(
        msg.ends_with(&format!(
            "more info at https://open.work.weixin.qq.com/devtool/query?e={code}"
        )),
        "{msg}"
    );
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
}

#[tokio::test]
async fn same_token_while_valid_then_new_after_expiry_or_revoke() {
    let w = W::start(Timing::default()).await;
    let (t1, e1) = w.token(SECRET).await;
    assert_eq!(e1, 7200);
    assert_eq!(w.admin().check_wecom_token(&t1), Ok(()));

    w.advance(Duration::from_secs(100));
    let (again, e2) = w.token(SECRET).await;
    assert_eq!((again.as_str(), e2), (t1.as_str(), 7100));

    // Each app has its own token.
    let (other, _) = w.token(SECRET2).await;
    assert_ne!(other, t1);

    w.advance(LIFE - Duration::from_secs(100) - NS);
    let (last, e3) = w.token(SECRET).await;
    assert_eq!((last.as_str(), e3), (t1.as_str(), 1));
    assert_eq!(w.user(&t1).await["errcode"], 0);

    w.advance(NS);
    assert_eq!(w.admin().check_wecom_token(&t1), Err(42001));
    assert_err(&w.user(&t1).await, 42001);
    let (t2, e4) = w.token(SECRET).await;
    assert_ne!(t2, t1);
    assert_eq!(e4, 7200);

    // Early invalidation: refused at once (no overlap), a new one on the next gettoken.
    w.admin().revoke_wecom_token(CORP, AGENT).unwrap();
    assert_eq!(w.admin().check_wecom_token(&t2), Err(40014));
    assert_err(&w.user(&t2).await, 40014);
    let (t3, e5) = w.token(SECRET).await;
    assert_ne!(t3, t2);
    assert_eq!(e5, 7200);
    assert_eq!(w.user(&t3).await["errcode"], 0);

    let ev = w.admin().wecom_corp_evidence(CORP).unwrap();
    let app = &ev.apps[0];
    assert_eq!(app.agentid, AGENT);
    assert_eq!(
        (app.gettoken.calls, app.gettoken.new, app.gettoken.same),
        (5, 3, 2)
    );
    assert_eq!(app.tokens_issued, 3);
    assert_eq!(app.business_ok, 2);
    assert_eq!(app.business_rejected, [(40014, 1), (42001, 1)].into());
    assert_eq!(app.token_prefix.as_deref(), Some(&t3[..8]));
    assert_eq!(ev.apps[1].gettoken.new, 1);
}

#[tokio::test]
async fn gettoken_errcodes() {
    let w = W::start(Timing::default()).await;
    assert_err(&w.get("/cgi-bin/gettoken?corpsecret=x").await, 41002);
    assert_err(
        &w.get(&format!("/cgi-bin/gettoken?corpid={CORP}")).await,
        41004,
    );
    assert_err(&w.gettoken("ww_unknown", SECRET).await, 40013);
    // A wrong secret of WeCom's shape is 40001, anything else 40091.
    assert_err(&w.gettoken(CORP, &"x".repeat(43)).await, 40001);
    assert_err(&w.gettoken(CORP, "short").await, 40091);

    w.admin().set_wecom_ip_trusted(CORP, false).unwrap();
    assert_err(&w.gettoken(CORP, SECRET).await, 60020);
    w.admin().set_wecom_ip_trusted(CORP, true).unwrap();

    w.admin().set_wecom_rate_limited(CORP, AGENT, true).unwrap();
    assert_err(&w.gettoken(CORP, SECRET).await, 45009);
    w.token(SECRET2).await;
    w.admin()
        .set_wecom_rate_limited(CORP, AGENT, false)
        .unwrap();

    w.admin()
        .fail_wecom_corp_endpoint(CORP, WecomEndpoint::GetToken, 45033, 1)
        .unwrap();
    w.admin()
        .fail_wecom_corp_endpoint(CORP, WecomEndpoint::GetToken, -1, 1)
        .unwrap();
    assert_err(&w.gettoken(CORP, SECRET).await, 45033);
    assert_err(&w.gettoken(CORP, SECRET).await, -1);
    let (token, _) = w.token(SECRET).await;
    assert_eq!(w.admin().check_wecom_token(&token), Ok(()));
    assert_eq!(
        w.admin()
            .fail_wecom_corp_endpoint(CORP, WecomEndpoint::GetSuiteToken, -1, 1),
        Err(WecomError::WrongEndpoint(WecomEndpoint::GetSuiteToken))
    );

    let ev = w.admin().wecom_corp_evidence(CORP).unwrap();
    assert_eq!(ev.gettoken_unattributed.scripted, 2);
    assert_eq!(
        ev.gettoken_unattributed.errcodes,
        [(-1, 1), (40001, 1), (40091, 1), (41004, 1), (45033, 1)].into()
    );
    assert_eq!(
        ev.apps[0].gettoken.errcodes,
        [(45009, 1), (60020, 1)].into()
    );
    let summary = w.admin().wecom_summary();
    // Unknown corp and missing corpid are counted only here; scripted answers are not failures.
    assert_eq!(summary.gettoken.calls, 11);
    assert_eq!(summary.gettoken_failures_last_hour["127.0.0.1"], 7);
}

#[tokio::test]
async fn two_thousand_failures_in_an_hour_block_the_ip_for_an_hour() {
    let w = W::start(Timing::default()).await;
    let wrong = "y".repeat(43);
    for _ in 0..1000 {
        assert_eq!(w.gettoken(CORP, &wrong).await["errcode"], 40001);
    }
    // Those fall out of the hour window exactly an hour later.
    w.advance(HOUR);
    for _ in 0..1999 {
        assert_eq!(w.gettoken("ww_nobody", &wrong).await["errcode"], 40013);
    }
    let (token, _) = w.token(SECRET).await;
    assert!(w.admin().wecom_summary().blocked_ips.is_empty());

    // The 2000th failure within the hour blocks the IP, whatever corp or app it asks for.
    assert_err(&w.gettoken(CORP, "bad").await, 40091);
    assert_eq!(w.admin().wecom_summary().blocked_ips, ["127.0.0.1"]);
    assert_err(&w.gettoken(CORP, SECRET).await, 45009);
    assert_err(&w.gettoken(CORP, SECRET2).await, 45009);
    // Tokens already issued keep working.
    assert_eq!(w.user(&token).await["errcode"], 0);

    w.advance(HOUR - NS);
    assert_err(&w.gettoken(CORP, SECRET).await, 45009);
    w.advance(NS);
    let (again, _) = w.token(SECRET).await;
    assert_eq!(again, token);
    assert!(w.admin().wecom_summary().blocked_ips.is_empty());
}

#[tokio::test]
async fn tickets_are_the_same_while_valid_and_need_a_valid_token() {
    let w = W::start(Timing::default()).await;
    let (t1, _) = w.token(SECRET).await;
    let (t2, _) = w.token(SECRET2).await;

    let c1 = w.corp_ticket(&t1).await;
    assert_eq!(
        (c1["errcode"].as_i64(), c1["errmsg"].as_str()),
        (Some(0), Some("ok"))
    );
    assert_eq!(c1["expires_in"], 7200);
    let corp_ticket = s(&c1, "ticket");
    w.advance(Duration::from_secs(60));
    // The corp ticket is the corp's: the other app's token gets the same one.
    let c2 = w.corp_ticket(&t2).await;
    assert_eq!(
        (s(&c2, "ticket"), c2["expires_in"].as_u64()),
        (corp_ticket.clone(), Some(7140))
    );

    let a1 = s(&w.agent_ticket(&t1).await, "ticket");
    let a2 = s(&w.agent_ticket(&t2).await, "ticket");
    assert_ne!(a1, a2);
    assert_ne!(a1, corp_ticket);
    let again = w.agent_ticket(&t1).await;
    assert_eq!(
        (s(&again, "ticket"), again["expires_in"].as_u64()),
        (a1.clone(), Some(7200))
    );
    for t in [&corp_ticket, &a1, &a2] {
        assert_eq!(w.admin().check_wecom_ticket(t), Ok(()));
    }
    // A ticket is no token, a token no ticket.
    assert_err(&w.user(&a1).await, 40014);
    assert_eq!(w.admin().check_wecom_ticket(&t1), Err(40014));

    assert_err(&w.get("/cgi-bin/get_jsapi_ticket").await, 41001);
    assert_err(&w.corp_ticket("nonsense").await, 40014);
    assert_err(
        &w.get(&format!("/cgi-bin/ticket/get?access_token={t1}&type=jsapi"))
            .await,
        40058,
    );
    w.admin().set_wecom_ip_trusted(CORP, false).unwrap();
    assert_err(&w.agent_ticket(&t1).await, 60020);
    w.admin().set_wecom_ip_trusted(CORP, true).unwrap();

    w.advance(LIFE - Duration::from_secs(60));
    assert_eq!(w.admin().check_wecom_ticket(&corp_ticket), Err(42001));
    assert_err(&w.corp_ticket(&t1).await, 42001);
    let (fresh, _) = w.token(SECRET).await;
    let c3 = s(&w.corp_ticket(&fresh).await, "ticket");
    assert_ne!(c3, corp_ticket);
    assert_eq!(w.admin().check_wecom_ticket(&c3), Ok(()));

    let ev = w.admin().wecom_corp_evidence(CORP).unwrap();
    assert_eq!(
        (ev.apps[0].corp_ticket.new, ev.apps[0].corp_ticket.same),
        (2, 0)
    );
    assert_eq!(
        (ev.apps[1].corp_ticket.new, ev.apps[1].corp_ticket.same),
        (0, 1)
    );
    assert_eq!(
        (ev.apps[0].agent_ticket.new, ev.apps[0].agent_ticket.same),
        (1, 1)
    );
    assert_eq!(ev.corp_ticket_prefix.as_deref(), Some(&c3[..8]));
}

#[tokio::test]
async fn agent_ticket_limit_is_100_an_hour_per_app() {
    let w = W::start(Timing::default()).await;
    let (t1, _) = w.token(SECRET).await;
    let (t2, _) = w.token(SECRET2).await;
    for _ in 0..100 {
        assert_eq!(w.agent_ticket(&t1).await["errcode"], 0);
    }
    assert_err(&w.agent_ticket(&t1).await, 45009);
    // Per app: the other app is not limited.
    assert_eq!(w.agent_ticket(&t2).await["errcode"], 0);
    w.advance(HOUR - NS);
    assert_err(&w.agent_ticket(&t1).await, 45009);
    w.advance(NS);
    assert_eq!(w.agent_ticket(&t1).await["errcode"], 0);
}

#[tokio::test]
async fn corp_ticket_limit_is_per_corp_and_per_app() {
    let w = W::start(Timing {
        wecom_corp_ticket_hourly_limit: 5,
        wecom_agent_ticket_hourly_limit: 3,
        ..Timing::default()
    })
    .await;
    let (t1, _) = w.token(SECRET).await;
    let (t2, _) = w.token(SECRET2).await;
    for _ in 0..3 {
        assert_eq!(w.corp_ticket(&t1).await["errcode"], 0);
    }
    assert_err(&w.corp_ticket(&t1).await, 45009);
    for _ in 0..2 {
        assert_eq!(w.corp_ticket(&t2).await["errcode"], 0);
    }
    // Five for the corp: the second app is refused before its own limit.
    assert_err(&w.corp_ticket(&t2).await, 45009);
    w.advance(HOUR);
    assert_eq!(w.corp_ticket(&t2).await["errcode"], 0);
}

#[tokio::test]
async fn corp_ticket_default_limit_is_400_an_hour() {
    let w = W::start_with(
        SimConfig::default().with_wecom_corp(
            WecomCorpConfig::new("ww0000000000000002")
                .with_app(1, "a".repeat(43))
                .with_app(2, "b".repeat(43))
                .with_app(3, "c".repeat(43))
                .with_app(4, "d".repeat(43))
                .with_app(5, "e".repeat(43)),
        ),
    )
    .await;
    let mut tokens = Vec::new();
    for c in ['a', 'b', 'c', 'd', 'e'] {
        let v = w
            .gettoken("ww0000000000000002", &c.to_string().repeat(43))
            .await;
        tokens.push(s(&v, "access_token"));
    }
    for token in &tokens[..4] {
        for _ in 0..100 {
            assert_eq!(w.corp_ticket(token).await["errcode"], 0);
        }
    }
    assert_err(&w.corp_ticket(&tokens[4]).await, 45009);
}

#[tokio::test]
async fn business_api_accepts_valid_tokens_only() {
    let w = W::start(Timing::default()).await;
    let (token, _) = w.token(SECRET).await;
    let v = w.user(&token).await;
    assert_eq!(
        (v["errcode"].as_i64(), v["userid"].as_str()),
        (Some(0), Some("zhangsan"))
    );
    assert_err(&w.get("/cgi-bin/user/get?userid=zhangsan").await, 41001);
    assert_err(
        &w.get(&format!("/cgi-bin/user/get?access_token={token}"))
            .await,
        41009,
    );
    assert_err(&w.user("nonsense").await, 40014);
    w.admin()
        .fail_wecom_corp_endpoint(CORP, WecomEndpoint::UserGet, -1, 1)
        .unwrap();
    assert_err(&w.user(&token).await, -1);
    w.admin().set_wecom_ip_trusted(CORP, false).unwrap();
    assert_err(&w.user(&token).await, 60020);
    let ev = w.admin().wecom_corp_evidence(CORP).unwrap();
    assert_eq!(ev.apps[0].business_ok, 1);
    assert_eq!(
        ev.apps[0].business_rejected,
        [(-1, 1), (41009, 1), (60020, 1)].into()
    );
}

/// A command callback receiver: answers pushes `success` and URL verifications with the
/// decrypted `echostr` (or something wrong when told to).
struct Rx {
    url: String,
    pushes: mpsc::UnboundedReceiver<Pushed>,
    wrong_echo: Arc<AtomicBool>,
}

type RxState = (mpsc::UnboundedSender<Pushed>, Arc<AtomicBool>);

impl Rx {
    async fn start() -> Rx {
        let (tx, rx) = mpsc::unbounded_channel();
        let wrong_echo = Arc::new(AtomicBool::new(false));
        let app = Router::new()
            .route("/wecom/cmd", get(rx_verify).post(rx_push))
            .with_state((tx, Arc::clone(&wrong_echo)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Rx {
            url: format!("http://{addr}/wecom/cmd"),
            pushes: rx,
            wrong_echo,
        }
    }

    async fn next(&mut self) -> Pushed {
        tokio::time::timeout(Duration::from_secs(10), self.pushes.recv())
            .await
            .expect("a push arrives")
            .expect("receiver alive")
    }
}

fn query_map(raw: &str) -> HashMap<String, String> {
    form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect()
}

async fn rx_verify(State((_, wrong)): State<RxState>, RawQuery(q): RawQuery) -> String {
    let q = query_map(&q.unwrap_or_default());
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    let signed = SignedQuery {
        timestamp: get("timestamp"),
        nonce: get("nonce"),
        msg_signature: get("msg_signature"),
    };
    match crypt().verify_and_decrypt_value(signed, get("echostr")) {
        Ok(d) if !wrong.load(Ordering::SeqCst) => d.message,
        _ => "nope".to_string(),
    }
}

async fn rx_push(State((tx, _)): State<RxState>, RawQuery(q): RawQuery, body: Bytes) -> String {
    let raw_query = q.unwrap_or_default();
    let _ = tx.send(Pushed {
        query: query_map(&raw_query),
        raw_query,
        body: body.to_vec(),
    });
    "success".to_string()
}

/// Verifies and decrypts a push like a real receiver (receiver id = suite id).
fn open(p: &Pushed) -> String {
    assert!(p.query.contains_key("msg_signature"));
    assert!(!p.query.contains_key("encrypt_type"));
    let outer = String::from_utf8(p.body.clone()).unwrap();
    assert_eq!(between(&outer, "<ToUserName><![CDATA[", "]]>"), SUITE);
    let d = crypt().verify_and_decrypt(p.signed(), &p.body).unwrap();
    assert_eq!(d.appid, SUITE);
    d.message
}

fn tag(m: &str, name: &str) -> String {
    let raw = between(m, &format!("<{name}>"), &format!("</{name}>"));
    raw.strip_prefix("<![CDATA[")
        .and_then(|r| r.strip_suffix("]]>"))
        .unwrap_or(raw)
        .to_string()
}

struct S {
    w: W,
    rx: Rx,
}

impl S {
    /// A simulator with a pushing suite; returns it with the ticket of the first push.
    async fn start() -> (S, String) {
        let mut rx = Rx::start().await;
        let w =
            W::start_with(SimConfig::default().with_wecom_suite(suite(Some(rx.url.clone())))).await;
        let m = open(&rx.next().await);
        assert_eq!(tag(&m, "SuiteId"), SUITE);
        assert_eq!(tag(&m, "InfoType"), "suite_ticket");
        assert!(tag(&m, "TimeStamp").parse::<u64>().is_ok());
        let ticket = tag(&m, "SuiteTicket");
        (S { w, rx }, ticket)
    }

    async fn suite_token(&self, ticket: &str) -> Value {
        self.w
            .post(
                "/cgi-bin/service/get_suite_token",
                json!({ "suite_id": SUITE, "suite_secret": SUITE_SECRET, "suite_ticket": ticket }),
            )
            .await
    }

    async fn permanent(&self, stoken: &str, code: &str) -> Value {
        self.w
            .post(
                &format!("/cgi-bin/service/get_permanent_code?suite_access_token={stoken}"),
                json!({ "auth_code": code }),
            )
            .await
    }

    async fn corp_token(&self, stoken: &str, corpid: &str, permanent: &str) -> Value {
        self.w
            .post(
                &format!("/cgi-bin/service/get_corp_token?suite_access_token={stoken}"),
                json!({ "auth_corpid": corpid, "permanent_code": permanent }),
            )
            .await
    }
}

#[tokio::test]
async fn suite_flow_end_to_end() {
    let (mut h, ticket) = S::start().await;
    let admin = h.w.admin();

    // URL verification: the receiver answers the decrypted echostr.
    let ok = admin.verify_wecom_suite_url(SUITE).await.unwrap();
    assert_eq!((ok.status, ok.echoed, ok.error), (Some(200), true, None));
    h.rx.wrong_echo.store(true, Ordering::SeqCst);
    assert!(!admin.verify_wecom_suite_url(SUITE).await.unwrap().echoed);
    h.rx.wrong_echo.store(false, Ordering::SeqCst);

    // Suite token: no errcode on success, the same one while valid.
    let v = h.suite_token(&ticket).await;
    assert!(v.get("errcode").is_none(), "{v}");
    assert_eq!(v["expires_in"], 7200);
    let stoken = s(&v, "suite_access_token");
    h.w.advance(Duration::from_secs(10));
    let again = h.suite_token(&ticket).await;
    assert_eq!(
        (
            s(&again, "suite_access_token"),
            again["expires_in"].as_u64()
        ),
        (stoken.clone(), Some(7190))
    );
    assert_eq!(admin.check_wecom_suite_token(&stoken), Ok(()));

    // create_auth: pushed with the auth code, exchanged once for the permanent code.
    const AUTH_CORP: &str = "wwauthcorp000001";
    let rec = admin.wecom_create_auth(SUITE, AUTH_CORP).await.unwrap();
    assert!(rec.push.as_ref().unwrap().success);
    let m = open(&h.rx.next().await);
    assert_eq!(tag(&m, "InfoType"), "create_auth");
    let code = tag(&m, "AuthCode");
    assert_eq!(Some(code.clone()), rec.auth_code);
    let p = h.permanent(&stoken, &code).await;
    assert_eq!(p["errcode"], 0, "{p}");
    assert_eq!(p["auth_corp_info"]["corpid"], AUTH_CORP);
    let permanent = s(&p, "permanent_code");
    let first_token = s(&p, "access_token");
    assert_err(&h.permanent(&stoken, &code).await, 40078);

    // Corp token: the same as the one handed out with the permanent code, valid at the API.
    let c = h.corp_token(&stoken, AUTH_CORP, &permanent).await;
    assert!(c.get("errcode").is_none(), "{c}");
    let corp_token = s(&c, "access_token");
    assert_eq!(corp_token, first_token);
    assert_eq!(h.w.user(&corp_token).await["errcode"], 0);
    assert_eq!(s(&h.w.agent_ticket(&corp_token).await, "ticket").len(), 86);
    assert_err(&h.corp_token(&stoken, AUTH_CORP, "wrong").await, 40084);
    assert_err(&h.corp_token(&stoken, CORP, &permanent).await, 40084);

    // change_auth changes nothing for tokens.
    admin.wecom_change_auth(SUITE, AUTH_CORP).await.unwrap();
    let m = open(&h.rx.next().await);
    assert_eq!(
        (tag(&m, "InfoType"), tag(&m, "AuthCorpId")),
        ("change_auth".into(), AUTH_CORP.into())
    );
    assert_eq!(admin.check_wecom_token(&corp_token), Ok(()));

    // cancel_auth: the token and the permanent code are refused at once.
    admin.wecom_cancel_auth(SUITE, AUTH_CORP).await.unwrap();
    let m = open(&h.rx.next().await);
    assert_eq!(
        (tag(&m, "InfoType"), tag(&m, "AuthCorpId")),
        ("cancel_auth".into(), AUTH_CORP.into())
    );
    assert_err(&h.w.user(&corp_token).await, 40014);
    assert_err(&h.corp_token(&stoken, AUTH_CORP, &permanent).await, 40084);
    assert!(matches!(
        admin.wecom_cancel_auth(SUITE, AUTH_CORP).await,
        Err(WecomError::NotAuthorized { .. })
    ));

    let ev = admin.wecom_suite_evidence(SUITE).unwrap();
    assert_eq!((ev.get_suite_token.new, ev.get_suite_token.same), (1, 1));
    assert_eq!(ev.get_permanent_code.new, 1);
    assert_eq!(ev.get_permanent_code.errcodes, [(40078, 1)].into());
    assert_eq!(ev.get_corp_token.same, 1);
    assert_eq!(ev.get_corp_token.errcodes, [(40084, 3)].into());
    let kinds: Vec<&str> = ev.pushes.iter().map(|p| p.info_type.as_str()).collect();
    assert_eq!(
        kinds,
        ["suite_ticket", "create_auth", "change_auth", "cancel_auth"]
    );
    assert_eq!(ev.pushes_acknowledged, 4);
    assert_eq!(ev.verifications.len(), 2);
    assert_eq!(ev.authorized_corps, 0);
    assert_eq!(ev.suite_token_prefix.as_deref(), Some(&stoken[..8]));
}

#[tokio::test]
async fn suite_ticket_pushes_every_ten_minutes_and_lives_thirty() {
    let (mut h, first) = S::start().await;
    h.w.advance(Duration::from_secs(600));
    let second = tag(&open(&h.rx.next().await), "SuiteTicket");
    assert_ne!(second, first);
    // The first ticket is accepted until 30 minutes after its push.
    h.w.advance(Duration::from_secs(1200) - NS);
    let _third = h.rx.next().await;
    assert_eq!(h.suite_token(&first).await["expires_in"], 7200);
    h.w.advance(NS);
    assert_err(&h.suite_token(&first).await, 40085);
    assert_eq!(
        s(&h.suite_token(&second).await, "suite_access_token").len(),
        136
    );
}

#[tokio::test]
async fn suite_errcodes() {
    let (mut h, ticket) = S::start().await;
    let w = &h.w;
    let path = "/cgi-bin/service/get_suite_token";
    assert_err(&w.post(path, json!("x")).await, 47001);
    assert_err(&w.post(path, json!({ "suite_secret": "x" })).await, 41021);
    assert_err(&w.post(path, json!({ "suite_id": "wwnope" })).await, 40083);
    assert_err(&w.post(path, json!({ "suite_id": SUITE })).await, 41024);
    let wrong = json!({ "suite_id": SUITE, "suite_secret": "bad", "suite_ticket": ticket });
    assert_err(&w.post(path, wrong).await, 40001);
    let no_ticket = json!({ "suite_id": SUITE, "suite_secret": SUITE_SECRET });
    assert_err(&w.post(path, no_ticket).await, 41023);
    assert_err(&h.suite_token("made-up").await, 40085);
    w.admin()
        .fail_wecom_suite_endpoint(SUITE, WecomEndpoint::GetSuiteToken, -1, 1)
        .unwrap();
    assert_err(&h.suite_token(&ticket).await, -1);
    let stoken = s(&h.suite_token(&ticket).await, "suite_access_token");

    let pc = "/cgi-bin/service/get_permanent_code";
    assert_err(&w.post(pc, json!({ "auth_code": "x" })).await, 41022);
    assert_err(&h.permanent("nonsense", "x").await, 40082);
    assert_err(
        &w.post(&format!("{pc}?suite_access_token={stoken}"), json!({}))
            .await,
        41008,
    );
    assert_err(&h.permanent(&stoken, "made-up").await, 40078);
    assert_err(&h.corp_token(&stoken, CORP, "x").await, 40084);
    let ct = format!("/cgi-bin/service/get_corp_token?suite_access_token={stoken}");
    assert_err(&w.post(&ct, json!({ "permanent_code": "x" })).await, 41002);
    assert_err(&w.post(&ct, json!({ "auth_corpid": CORP })).await, 41025);

    // An auth code expires after ten minutes.
    let rec = w
        .admin()
        .wecom_auth_event(
            SUITE,
            "wwlate",
            wxtoken_sim::WecomAuthEvent::CreateAuth,
            false,
        )
        .await
        .unwrap();
    assert!(rec.push.is_none());
    w.advance(Duration::from_secs(600));
    // (The clock moved: the suite token is still valid, the code is not.)
    assert_err(
        &h.permanent(&stoken, rec.auth_code.as_deref().unwrap())
            .await,
        40078,
    );

    // Early invalidation and expiry of the suite token.
    w.admin().revoke_wecom_suite_token(SUITE).unwrap();
    assert_err(&h.corp_token(&stoken, CORP, "x").await, 40082);
    // The push of the ten-minute advance above.
    let fresh_ticket = tag(&open(&h.rx.next().await), "SuiteTicket");
    let v = w
        .post(
            path,
            json!({ "suite_id": SUITE, "suite_secret": SUITE_SECRET, "suite_ticket": fresh_ticket }),
        )
        .await;
    let s2 = s(&v, "suite_access_token");
    assert_ne!(s2, stoken);
    w.advance(LIFE);
    assert_eq!(w.admin().check_wecom_suite_token(&s2), Err(42009));
    assert_err(&h.corp_token(&s2, CORP, "x").await, 42009);
}

#[tokio::test]
async fn bulk_authorized_corps_get_corp_tokens() {
    let (h, ticket) = S::start().await;
    let corps = h.w.admin().wecom_bulk_authorize(SUITE, 3).unwrap();
    assert_eq!(corps[0].corpid, "wwa000000000000000");
    assert_eq!(corps[2].corpid, "wwa000000000000002");
    let stoken = s(&h.suite_token(&ticket).await, "suite_access_token");
    for c in &corps {
        let v = h.corp_token(&stoken, &c.corpid, &c.permanent_code).await;
        let token = s(&v, "access_token");
        assert_eq!(h.w.admin().check_wecom_token(&token), Ok(()));
    }
    let rotated =
        h.w.admin()
            .rotate_wecom_permanent_code(SUITE, &corps[0].corpid)
            .unwrap();
    assert_err(
        &h.corp_token(&stoken, &corps[0].corpid, &corps[0].permanent_code)
            .await,
        40084,
    );
    assert_eq!(
        h.corp_token(&stoken, &corps[0].corpid, &rotated).await["expires_in"],
        7200
    );
    assert_eq!(
        h.w.admin()
            .wecom_suite_evidence(SUITE)
            .unwrap()
            .authorized_corps,
        3
    );
}

#[tokio::test]
async fn admin_http_routes() {
    let (h, _) = S::start().await;
    let base = h.w.sim.base_url();
    let http = &h.w.http;
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = http.request(method, format!("{base}/_sim/wecom{path}"));
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    use reqwest::Method;
    let (st, v) = call(Method::GET, &format!("/corps/{CORP}/evidence"), None).await;
    assert_eq!((st, v["corpid"].as_str()), (StatusCode::OK, Some(CORP)));
    let (st, _) = call(Method::GET, "/corps/wwnope/evidence", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let (st, _) = call(
        Method::PUT,
        &format!("/corps/{CORP}/flags"),
        Some(json!({"ip_trusted": false})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_err(&h.w.gettoken(CORP, SECRET).await, 60020);
    call(
        Method::PUT,
        &format!("/corps/{CORP}/flags"),
        Some(json!({"ip_trusted": true})),
    )
    .await;
    let (st, v) = call(
        Method::PUT,
        &format!("/corps/{CORP}/flags"),
        Some(json!({"trusted": true})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");

    let fail = json!({"endpoint": "get_token", "errcode": 45033, "times": 1});
    let (st, _) = call(Method::POST, &format!("/corps/{CORP}/fail"), Some(fail)).await;
    assert_eq!(st, StatusCode::OK);
    assert_err(&h.w.gettoken(CORP, SECRET).await, 45033);

    let (token, _) = h.w.token(SECRET).await;
    let (st, v) = call(Method::GET, &format!("/check?access_token={token}"), None).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"errcode": 0})));
    let (st, _) = call(
        Method::POST,
        &format!("/corps/{CORP}/apps/{AGENT}/revoke"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(h.w.admin().check_wecom_token(&token), Err(40014));
    let (_, v) = call(Method::GET, &format!("/check?access_token={token}"), None).await;
    assert_eq!(v, json!({"errcode": 40014}));
    let (st, _) = call(Method::GET, "/check", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = call(Method::POST, &format!("/corps/{CORP}/apps/1/revoke"), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let (st, v) = call(Method::POST, &format!("/suites/{SUITE}/verify_url"), None).await;
    assert_eq!((st, v["echoed"].as_bool()), (StatusCode::OK, Some(true)));
    let (st, v) = call(
        Method::POST,
        &format!("/suites/{SUITE}/corps/wwhttp/create_auth?push=false"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["auth_code"].as_str().unwrap().len(), 64);
    let (st, _) = call(
        Method::POST,
        &format!("/suites/{SUITE}/corps/wwhttp/create_auth?push=false"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, v) = call(
        Method::POST,
        &format!("/suites/{SUITE}/bulk"),
        Some(json!({"count": 2})),
    )
    .await;
    assert_eq!(
        (st, v["corps"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(2))
    );
    let (st, v) = call(Method::GET, &format!("/suites/{SUITE}/evidence"), None).await;
    assert_eq!(
        (st, v["authorized_corps"].as_u64()),
        (StatusCode::OK, Some(3))
    );
    let (st, v) = call(Method::GET, "/summary", None).await;
    assert_eq!((st, v["suites"].as_u64()), (StatusCode::OK, Some(1)));
}

#[test]
fn config_tables_parse_and_validate() {
    let toml = format!(
        "[[wecom_corp]]\ncorpid = \"{CORP}\"\napps = [{{ agentid = {AGENT}, secret = \"{SECRET}\" }}]\n\n\
         [[wecom_suite]]\nsuite_id = \"{SUITE}\"\nsecret = \"s\"\ntoken = \"t\"\n\
         encoding_aes_key = \"{SKEY}\"\npush_url = \"http://127.0.0.1:1/cb\"\n"
    );
    let config = SimConfig::from_toml_str(&toml).unwrap();
    assert_eq!(
        config.wecom_corps,
        vec![WecomCorpConfig::new(CORP).with_app(AGENT, SECRET)]
    );
    assert_eq!(config.wecom_suites[0].suite_id, SUITE);
    assert!(!format!("{config:?}").contains(SECRET));

    let dup = format!(
        "{toml}\n[[wecom_corp]]\ncorpid = \"{CORP}\"\napps = [{{ agentid = 1, secret = \"x\" }}]\n"
    );
    let msg = SimConfig::from_toml_str(&dup).unwrap_err().to_string();
    assert!(
        msg.contains("wecom_corp[1].corpid") && msg.contains("duplicate"),
        "{msg}"
    );
    let bad_key = toml.replace(SKEY, "short");
    let msg = SimConfig::from_toml_str(&bad_key).unwrap_err().to_string();
    assert!(msg.contains("wecom_suite[0].encoding_aes_key"), "{msg}");
    let no_apps = format!("[[wecom_corp]]\ncorpid = \"{CORP}\"\napps = []\n");
    let msg = SimConfig::from_toml_str(&no_apps).unwrap_err().to_string();
    assert!(msg.contains("wecom_corp[0].apps"), "{msg}");
    let same_secret = SimConfig::default().with_wecom_corp(
        WecomCorpConfig::new(CORP)
            .with_app(1, SECRET)
            .with_app(2, SECRET),
    );
    let msg = same_secret.validate().unwrap_err().to_string();
    assert!(
        msg.contains("apps[1].secret") && !msg.contains(SECRET),
        "{msg}"
    );
}
