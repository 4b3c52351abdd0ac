//! The HTTP admin API under `/_sim/`: every endpoint, 404 for unknown apps, 400 naming the
//! problem for bad bodies.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

impl Harness {
    async fn admin_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(body) = body {
            req = req.body(body.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, value)
    }

    async fn admin_raw(&self, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .request(method, self.url(path))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }
}

#[tokio::test]
async fn healthz_and_apps() {
    let h = Harness::start(fast()).await;
    let (s, v) = h.admin_call(Method::GET, "/_sim/healthz", None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"ok": true})));

    let new_secret = "00000000000000000000000000000003";
    let (s, v) = h
        .admin_call(
            Method::POST,
            "/_sim/apps",
            Some(json!({"appid": "wx3", "secret": new_secret})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v, json!({"appid": "wx3", "created": true}));
    token_of(&h.classic("wx3", new_secret).await, "access_token");

    // Adding again is a conflict: the unauthenticated admin API never replaces a secret.
    let (s, v) = h
        .admin_call(
            Method::POST,
            "/_sim/apps",
            Some(json!({"appid": "wx3", "secret": OTHER_SECRET})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(
        v["error"].as_str().unwrap().contains("wx3 exists already"),
        "{v}"
    );
    assert!(!v.to_string().contains(OTHER_SECRET), "{v}");
    token_of(&h.classic("wx3", new_secret).await, "access_token");
    assert_err(&h.classic("wx3", OTHER_SECRET).await, 40001);
    // So is an app from the config.
    let (s, _) = h
        .admin_call(
            Method::POST,
            "/_sim/apps",
            Some(json!({"appid": APPID, "secret": OTHER_SECRET})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    token_of(&h.classic(APPID, SECRET).await, "access_token");

    let (s, v) = h
        .admin_call(Method::POST, "/_sim/apps", Some(json!({"appid": "wx4"})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("missing field `secret`"),
        "{v}"
    );
    let (s, v) = h
        .admin_call(
            Method::POST,
            "/_sim/apps",
            Some(json!({"appid": "", "secret": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("appid"), "{v}");
    let (s, _) = h.admin_raw(Method::POST, "/_sim/apps", "not json").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn faults_over_http() {
    let h = Harness::start(fast()).await;
    let path = format!("/_sim/apps/{APPID}/faults");
    let (s, _) = h
        .admin_call(
            Method::POST,
            &path,
            Some(json!({"endpoint": "token", "kind": "errcode", "errcode": -1, "times": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = h
        .admin_call(
            Method::POST,
            &path,
            Some(json!({"endpoint": "business", "kind": "delay", "delay": "10ms"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = h.admin_call(Method::GET, &path, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!([
            {"endpoint": "token", "kind": "errcode", "errcode": -1, "times": 1},
            {"endpoint": "business", "kind": "delay", "delay": "10ms"},
        ])
    );
    assert_err(&h.classic(APPID, SECRET).await, -1);
    let (s, _) = h.admin_call(Method::DELETE, &path, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h.admin_call(Method::GET, &path, None).await.1, json!([]));

    for (body, expect) in [
        (
            json!({"kind": "errcode", "errcode": -1, "time": 2}),
            "unknown field `time`",
        ),
        (json!({"kind": "explode"}), "unknown fault kind `explode`"),
        (json!({"kind": "http_status"}), "needs field `status`"),
        (
            json!({"kind": "delay", "delay": "soon"}),
            "delay: invalid value",
        ),
        (
            json!({"kind": "hang", "endpoint": "tokens"}),
            "unknown variant `tokens`",
        ),
    ] {
        let (s, v) = h.admin_call(Method::POST, &path, Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        let err = v["error"].as_str().unwrap();
        assert!(
            err.contains("invalid fault") && err.contains(expect),
            "{body}: {err}"
        );
    }
    assert_eq!(h.admin_call(Method::GET, &path, None).await.1, json!([]));
}

#[tokio::test]
async fn flags_quota_revoke_and_evidence_over_http() {
    let h = Harness::start(fast()).await;
    let app = format!("/_sim/apps/{APPID}");
    let token = h.classic_token().await;

    let (s, _) = h
        .admin_call(
            Method::PUT,
            &format!("{app}/flags"),
            Some(json!({"ip_whitelisted": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_err(&h.classic(APPID, SECRET).await, 40164);
    let (s, _) = h
        .admin_call(
            Method::PUT,
            &format!("{app}/flags"),
            Some(json!({"ip_whitelisted": true, "secret_frozen": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_err(&h.classic(APPID, SECRET).await, 40243);
    h.admin_call(
        Method::PUT,
        &format!("{app}/flags"),
        Some(json!({"secret_frozen": false})),
    )
    .await;
    let (s, v) = h
        .admin_call(
            Method::PUT,
            &format!("{app}/flags"),
            Some(json!({"frozen": true})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `frozen`"),
        "{v}"
    );

    let (s, _) = h
        .admin_call(
            Method::PUT,
            &format!("{app}/quota"),
            Some(json!({"endpoint": "token", "used": 2000})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_err(&h.classic(APPID, SECRET).await, 45009);
    let (s, v) = h
        .admin_call(
            Method::PUT,
            &format!("{app}/quota"),
            Some(json!({"endpoint": "tokens", "used": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("tokens"), "{v}");
    let (s, _) = h
        .admin_call(Method::POST, &format!("{app}/quota/reset"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let fresh = h.classic_token().await;

    let (s, _) = h
        .admin_call(Method::POST, &format!("{app}/revoke"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_err(&h.business(&token).await, 40001);
    assert_err(&h.business(&fresh).await, 40001);

    let (s, v) = h
        .admin_call(Method::GET, &format!("{app}/evidence"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["rejected_business_calls"]["40001"], 2);
    assert_eq!(v["quota_used"]["token"], 1, "reset, then one fetch");
    assert_eq!(v["fetches"].as_array().unwrap().len(), 5);
    assert_eq!(v["live_tokens"], json!([]));

    let (s, v) = h.admin_call(Method::GET, "/_sim/evidence", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["apps"][APPID].is_object() && v["apps"][OTHER_APPID].is_object());
}

#[tokio::test]
async fn unknown_app_is_404_everywhere() {
    let h = Harness::start(fast()).await;
    let app = "/_sim/apps/wx_nope";
    for (method, path, body) in [
        (Method::GET, format!("{app}/evidence"), None),
        (Method::GET, format!("{app}/faults"), None),
        (
            Method::POST,
            format!("{app}/faults"),
            Some(json!({"kind": "hang"})),
        ),
        (Method::DELETE, format!("{app}/faults"), None),
        (
            Method::PUT,
            format!("{app}/flags"),
            Some(json!({"secret_frozen": true})),
        ),
        (
            Method::PUT,
            format!("{app}/quota"),
            Some(json!({"endpoint": "ticket", "used": 1})),
        ),
        (Method::POST, format!("{app}/quota/reset"), None),
        (Method::POST, format!("{app}/revoke"), None),
    ] {
        let (s, v) = h.admin_call(method.clone(), &path, body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}");
        assert!(v["error"].as_str().unwrap().contains("wx_nope"), "{v}");
    }
    let (s, v) = h.admin_call(Method::GET, "/_sim/nothing", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].is_string());
}

#[tokio::test]
async fn clock_over_http() {
    let h = Harness::start_real_time(wxtoken_sim::Timing::default()).await;
    let token = h.classic_token().await;

    let (s, v) = h.admin_call(Method::GET, "/_sim/clock", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["paused"], false);
    assert_eq!(v["advanced_ms"], 0);
    assert!(v["elapsed_ms"].is_u64(), "{v}");

    let (s, v) = h.admin_call(Method::POST, "/_sim/clock/pause", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["paused"], true);
    let paused_at = v["elapsed_ms"].as_u64().unwrap();

    let (s, v) = h
        .admin_call(
            Method::POST,
            "/_sim/clock/advance",
            Some(json!({"by": "2h"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!({"elapsed_ms": paused_at + 7_200_000, "advanced_ms": 7_200_000, "paused": true})
    );
    // Two hours later the token has expired.
    assert_err(&h.business(&token).await, 42001);
    // The same state in process.
    let clock = h.sim.admin().clock();
    assert_eq!(clock.elapsed_ms, paused_at + 7_200_000);
    assert!(clock.paused);

    for (body, expect) in [
        (json!({"by": "soon"}), "by: invalid value"),
        (json!({"by": "1s", "to": "2s"}), "unknown field `to`"),
        (json!({}), "missing field `by`"),
        (json!({"by": "200years"}), "at most 100 years"),
    ] {
        let (s, v) = h
            .admin_call(Method::POST, "/_sim/clock/advance", Some(body.clone()))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        let err = v["error"].as_str().unwrap();
        assert!(err.contains(expect), "{body}: {err}");
    }
    // Refused advances changed nothing.
    assert_eq!(h.sim.admin().clock().advanced_ms, 7_200_000);

    let (s, v) = h.admin_call(Method::POST, "/_sim/clock/resume", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["paused"], false);
    assert!(v["elapsed_ms"].as_u64().unwrap() >= paused_at + 7_200_000);
}
