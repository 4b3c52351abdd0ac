//! Shared helpers: start a simulator with short timing, call its endpoints, read JSON.

use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use wxtoken_sim::{SimConfig, Simulator, Timing};

pub const APPID: &str = "wx0000000000000001";
pub const SECRET: &str = "0123456789abcdef0123456789abcdef";
pub const OTHER_APPID: &str = "wx0000000000000002";
pub const OTHER_SECRET: &str = "fedcba9876543210fedcba9876543210";

/// Timing shortened for tests: tokens live 10 s, overlap 1 s, force-refresh interval 1 s.
pub fn fast() -> Timing {
    Timing {
        expires_in: Duration::from_secs(10),
        overlap: Duration::from_secs(1),
        force_refresh_min_interval: Duration::from_secs(1),
        hang: Duration::from_secs(30),
        ..Timing::default()
    }
}

pub struct Harness {
    pub sim: Simulator,
    pub http: Client,
}

impl Harness {
    /// Starts a simulator whose clock is paused at once: simulator time then moves only by
    /// [`Harness::advance`], so no token expires behind a test's back however slow the machine
    /// is, and window edges can be hit exactly (to the nanosecond). `delay` and `hang` faults
    /// hold their request until the clock is advanced past them.
    pub async fn start(timing: Timing) -> Harness {
        let h = Harness::start_real_time(timing).await;
        h.sim.admin().pause_clock();
        h
    }

    /// Starts a simulator whose clock runs with real time (nobody pauses it), as in other
    /// crates' end-to-end tests.
    pub async fn start_real_time(timing: Timing) -> Harness {
        let config = SimConfig::default()
            .with_app(APPID, SECRET)
            .with_app(OTHER_APPID, OTHER_SECRET)
            .with_timing(timing);
        let sim = Simulator::start(config, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("simulator starts");
        let http = Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Harness { sim, http }
    }

    /// Moves the simulator clock forward (no sleeping).
    pub fn advance(&self, by: Duration) {
        self.sim.admin().try_advance(by).expect("clock advances");
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.sim.base_url(), path_and_query)
    }

    /// GET, asserting HTTP 200 and WeChat's JSON content type; returns the body.
    pub async fn get_json(&self, path_and_query: &str) -> Value {
        let resp = self
            .http
            .get(self.url(path_and_query))
            .send()
            .await
            .unwrap();
        wechat_json(resp).await
    }

    /// POST a raw body, asserting HTTP 200 and WeChat's JSON content type.
    pub async fn post_json(&self, path_and_query: &str, body: impl Into<reqwest::Body>) -> Value {
        let resp = self
            .http
            .post(self.url(path_and_query))
            .body(body)
            .send()
            .await
            .unwrap();
        wechat_json(resp).await
    }

    pub async fn classic(&self, appid: &str, secret: &str) -> Value {
        self.get_json(&format!(
            "/cgi-bin/token?grant_type=client_credential&appid={appid}&secret={secret}"
        ))
        .await
    }

    /// A classic token for APPID (asserting success).
    pub async fn classic_token(&self) -> String {
        let v = self.classic(APPID, SECRET).await;
        token_of(&v, "access_token")
    }

    pub async fn stable(&self, appid: &str, secret: &str, force_refresh: bool) -> Value {
        let body = json!({
            "grant_type": "client_credential",
            "appid": appid,
            "secret": secret,
            "force_refresh": force_refresh,
        });
        self.post_json("/cgi-bin/stable_token", body.to_string())
            .await
    }

    /// A stable token for APPID: (token, expires_in), asserting success.
    pub async fn stable_token(&self, force_refresh: bool) -> (String, u64) {
        let v = self.stable(APPID, SECRET, force_refresh).await;
        let token = token_of(&v, "access_token");
        (token, v["expires_in"].as_u64().unwrap())
    }

    pub async fn business(&self, token: &str) -> Value {
        self.get_json(&format!("/cgi-bin/get_api_domain_ip?access_token={token}"))
            .await
    }

    pub async fn ticket(&self, token: &str, kind: &str) -> Value {
        self.get_json(&format!(
            "/cgi-bin/ticket/getticket?access_token={token}&type={kind}"
        ))
        .await
    }
}

/// Asserts a WeChat-style answer (HTTP 200, `application/json; encoding=utf-8`) and parses it.
pub async fn wechat_json(resp: reqwest::Response) -> Value {
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/json; encoding=utf-8")
    );
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The errcode of an answer (0 when there is none, as in a token success body).
pub fn errcode(v: &Value) -> i64 {
    v.get("errcode").map_or(0, |c| c.as_i64().unwrap())
}

/// Asserts an error answer with this code and WeChat's `... rid: <hex>` errmsg; returns errmsg.
#[track_caller]
pub fn assert_err(v: &Value, code: i64) -> String {
    assert_eq!(errcode(v), code, "answer: {v}");
    let msg = v["errmsg"].as_str().unwrap().to_string();
    let (_, rid) = msg
        .rsplit_once(" rid: ")
        .unwrap_or_else(|| panic!("no rid in {msg:?}"));
    assert!(
        !rid.is_empty() && rid.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
        "bad rid in {msg:?}"
    );
    assert_eq!(
        v.as_object().unwrap().len(),
        2,
        "error body has exactly errcode+errmsg: {v}"
    );
    msg
}

/// The token/ticket in a success answer.
#[track_caller]
pub fn token_of(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
        .to_string()
}

/// One nanosecond: the step across a window edge.
pub const NS: Duration = Duration::from_nanos(1);

/// Waits (real time, polling) until `cond` holds, e.g. until a request has reached the
/// simulator. For real I/O only: simulator time is moved with [`Harness::advance`], never
/// waited for.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (real time) for the server to answer at all; for `serve`, which binds in a task.
pub async fn io_retry_backoff() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}
