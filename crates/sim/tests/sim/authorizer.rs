//! Third-party platform authorizers over HTTP: `api_query_auth`, `api_authorizer_token`,
//! `api_get_authorizer_list`, the `authorized` / `updateauthorized` / `unauthorized` pushes
//! (decrypted at a real receiver), authorizer tokens at the business API and `getticket`,
//! bulk creation, and the `/_sim/components/{appid}/authorizers/...` admin routes.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use wxtoken_sim::{
    Admin, AuthEvent, AuthorizerEndpoint, AuthorizerError, SimConfig, Simulator, Timing,
};

use crate::common::{APPID, NS, SECRET};
use crate::component::{between, component, crypt, ticket_of, Pushed, Receiver, CAPPID, CSECRET};

const AUTH_A: &str = "wxauthorizer00000a";
const AUTH_B: &str = "wxauthorizer00000b";

struct H {
    sim: Simulator,
    http: Client,
    rx: Receiver,
    /// A valid component access token.
    ctoken: String,
}

/// A decrypted authorization event.
struct Event {
    info_type: String,
    authorizer: String,
    code: Option<String>,
    code_expires: Option<u64>,
    create_time: u64,
    pre_auth: Option<String>,
}

fn tag(m: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    if !m.contains(&open) {
        return None;
    }
    let raw = between(m, &open, &close);
    Some(
        raw.strip_prefix("<![CDATA[")
            .and_then(|r| r.strip_suffix("]]>"))
            .unwrap_or(raw)
            .to_string(),
    )
}

/// Verifies and decrypts a push like a real receiver.
fn decrypt(p: &Pushed) -> String {
    let c = crypt();
    assert_eq!(
        c.verify_signature(p.q("timestamp"), p.q("nonce"), p.q("signature")),
        Ok(())
    );
    assert_eq!(p.q("encrypt_type"), "aes");
    let d = c.verify_and_decrypt(p.signed(), &p.body).unwrap();
    assert_eq!(d.appid, CAPPID);
    d.message
}

impl H {
    async fn start(timing: Timing) -> H {
        H::start_with(SimConfig::default().with_timing(timing)).await
    }

    /// A simulator with one pushing component (plus `config`), a paused clock and a
    /// component token bought with the first pushed ticket.
    async fn start_with(config: SimConfig) -> H {
        let mut rx = Receiver::start().await;
        let config = config
            .with_app(APPID, SECRET)
            .with_component(component(Some(rx.url.clone())));
        let sim = Simulator::start(config, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        sim.admin().pause_clock();
        let ticket = ticket_of(&rx.next().await);
        let http = Client::builder().no_proxy().build().unwrap();
        let mut h = H {
            sim,
            http,
            rx,
            ctoken: String::new(),
        };
        let answer = h
            .post(
                "/cgi-bin/component/api_component_token",
                json!({
                    "component_appid": CAPPID,
                    "component_appsecret": CSECRET,
                    "component_verify_ticket": ticket,
                }),
            )
            .await;
        h.ctoken = answer["component_access_token"]
            .as_str()
            .unwrap()
            .to_string();
        h
    }

    /// A new component token from a fresh ticket (after the clock moved past the old one).
    /// For tests without authorization pushes: every queued push must be a ticket push.
    async fn renew(&mut self) {
        self.admin().push_ticket(CAPPID).await.unwrap();
        let mut last = None;
        while let Ok(p) = self.rx.pushes.try_recv() {
            last = Some(p);
        }
        let ticket = ticket_of(&last.unwrap());
        let answer = self
            .post(
                "/cgi-bin/component/api_component_token",
                json!({
                    "component_appid": CAPPID,
                    "component_appsecret": CSECRET,
                    "component_verify_ticket": ticket,
                }),
            )
            .await;
        self.ctoken = answer["component_access_token"]
            .as_str()
            .unwrap()
            .to_string();
    }

    fn admin(&self) -> Admin {
        self.sim.admin()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A component API with the component token as `component_access_token=`.
    async fn api(&self, name: &str, body: Value) -> Value {
        let path = format!(
            "/cgi-bin/component/{name}?component_access_token={}",
            self.ctoken
        );
        self.post(&path, body).await
    }

    async fn query_auth(&self, code: &str) -> Value {
        self.api(
            "api_query_auth",
            json!({ "component_appid": CAPPID, "authorization_code": code }),
        )
        .await
    }

    async fn refresh(&self, authorizer: &str, refresh_token: &str) -> Value {
        self.api(
            "api_authorizer_token",
            json!({
                "component_appid": CAPPID,
                "authorizer_appid": authorizer,
                "authorizer_refresh_token": refresh_token,
            }),
        )
        .await
    }

    async fn list(&self, offset: u64, count: i64) -> Value {
        self.api(
            "api_get_authorizer_list",
            json!({ "component_appid": CAPPID, "offset": offset, "count": count }),
        )
        .await
    }

    /// Authorizes without a push and exchanges the code: (access token, refresh token).
    async fn authorized(&self, authorizer: &str) -> (String, String) {
        let record = self
            .admin()
            .authorize_without_push(CAPPID, authorizer)
            .unwrap();
        let v = self
            .query_auth(record.authorization_code.as_deref().unwrap())
            .await;
        let info = &v["authorization_info"];
        (
            info["authorizer_access_token"]
                .as_str()
                .unwrap()
                .to_string(),
            info["authorizer_refresh_token"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    }

    /// The next authorization event at the receiver (verify-ticket pushes are skipped).
    async fn next_event(&mut self) -> Event {
        loop {
            let p = self.rx.next().await;
            let m = decrypt(&p);
            assert_eq!(tag(&m, "AppId").as_deref(), Some(CAPPID));
            let info_type = tag(&m, "InfoType").unwrap();
            if info_type == "component_verify_ticket" {
                continue;
            }
            let create_time: u64 = tag(&m, "CreateTime").unwrap().parse().unwrap();
            assert_eq!(create_time.to_string(), p.q("timestamp"));
            return Event {
                info_type,
                authorizer: tag(&m, "AuthorizerAppid").unwrap(),
                code: tag(&m, "AuthorizationCode"),
                code_expires: tag(&m, "AuthorizationCodeExpiredTime").map(|t| t.parse().unwrap()),
                create_time,
                pre_auth: tag(&m, "PreAuthCode"),
            };
        }
    }
}

fn errcode(v: &Value) -> i64 {
    v["errcode"].as_i64().unwrap_or(0)
}

fn fast() -> Timing {
    Timing::default()
}

#[tokio::test]
async fn authorized_push_carries_a_single_use_code() {
    let mut h = H::start(fast()).await;
    let admin = h.admin();
    let record = admin.authorize(CAPPID, AUTH_A).await.unwrap();
    assert_eq!(record.event, AuthEvent::Authorized);
    let push = record.push.clone().unwrap();
    assert!(push.success, "{push:?}");
    let code = record.authorization_code.clone().unwrap();
    assert!(code.starts_with("queryauthcode@@@"));

    let ev = h.next_event().await;
    assert_eq!(ev.info_type, "authorized");
    assert_eq!(ev.authorizer, AUTH_A);
    assert_eq!(ev.code.as_deref(), Some(code.as_str()));
    assert_eq!(ev.code_expires, record.code_expires_at);
    assert_eq!(ev.code_expires, Some(ev.create_time + 600));
    assert!(ev.pre_auth.unwrap().starts_with("preauthcode@@@"));
    assert_eq!(push.code_prefix.as_deref(), Some(&code[16..24]));

    let v = h.query_auth(&code).await;
    let info = &v["authorization_info"];
    assert_eq!(info["authorizer_appid"], AUTH_A, "{v}");
    assert_eq!(info["expires_in"], 7200);
    assert_eq!(info["func_info"][0]["funcscope_category"]["id"], 1);
    let token = info["authorizer_access_token"].as_str().unwrap();
    let refresh = info["authorizer_refresh_token"].as_str().unwrap();
    assert!(refresh.starts_with("refreshtoken@@@"));
    assert_eq!(admin.check_authorizer_token(token), Ok(AUTH_A.to_string()));
    assert_eq!(admin.check_token(token), Ok(()));

    // Single use; unknown and missing codes are invalid too.
    assert_eq!(errcode(&h.query_auth(&code).await), 61009);
    assert_eq!(errcode(&h.query_auth("queryauthcode@@@nope").await), 61009);
    let missing = h
        .api("api_query_auth", json!({ "component_appid": CAPPID }))
        .await;
    assert_eq!(errcode(&missing), 61009);

    // A code lives 600 s, to the nanosecond.
    let b = admin.authorize_without_push(CAPPID, AUTH_B).unwrap();
    let b_code = b.authorization_code.unwrap();
    let c = admin
        .authorize_without_push(CAPPID, "wxauthorizer00000c")
        .unwrap();
    admin.advance(Duration::from_secs(600) - NS);
    assert!(h.query_auth(&b_code).await["authorization_info"].is_object());
    admin.advance(NS);
    let expired = h.query_auth(&c.authorization_code.unwrap()).await;
    assert_eq!(errcode(&expired), 61010, "{expired}");

    let ev = admin.authorizer_evidence(CAPPID).unwrap();
    assert_eq!(ev.events.authorized, 1);
    assert_eq!(ev.events.acknowledged, 1);
    assert_eq!(ev.endpoints.query_auth.calls, 6);
    assert_eq!(ev.endpoints.query_auth.ok, 2);
    assert_eq!(ev.endpoints.query_auth.errcodes[&61009], 3);
    assert_eq!(ev.endpoints.query_auth.errcodes[&61010], 1);
    assert_eq!(ev.tokens_issued, 2);
    assert_eq!(
        admin.authorizer_counts(CAPPID, AUTH_A).unwrap().query_auth,
        1
    );
    // Evidence holds no whole code, token or refresh token.
    let text = serde_json::to_string(&ev).unwrap();
    assert!(!text.contains(&code) && !text.contains(token) && !text.contains(refresh));
}

#[tokio::test]
async fn authorizer_token_overlap_expiry_and_errors() {
    let mut h = H::start(Timing {
        authorizer_token_daily_quota: 3,
        ..fast()
    })
    .await;
    let admin = h.admin();
    let (a, refresh) = h.authorized(AUTH_A).await;

    admin.advance(Duration::from_secs(100));
    let v = h.refresh(AUTH_A, &refresh).await;
    assert_eq!(v.as_object().unwrap().len(), 3, "{v}");
    assert_eq!(v["expires_in"], 7200);
    assert_eq!(v["authorizer_refresh_token"], refresh.as_str());
    let b = v["authorizer_access_token"].as_str().unwrap().to_string();
    assert_ne!(a, b);

    // The replaced token lives 300 s more, then is 40001; the new one expires at 7200 s.
    admin.advance(Duration::from_secs(300) - NS);
    assert!(admin.check_authorizer_token(&a).is_ok());
    admin.advance(NS);
    assert_eq!(admin.check_authorizer_token(&a), Err(40001));
    assert_eq!(admin.check_authorizer_token(&b), Ok(AUTH_A.to_string()));
    admin.advance(Duration::from_secs(7200 - 300) - NS);
    assert!(admin.check_authorizer_token(&b).is_ok());
    admin.advance(NS);
    assert_eq!(admin.check_authorizer_token(&b), Err(42001));
    h.renew().await;

    // Errors: wrong refresh token, unknown authorizer, missing appid, quota.
    assert_eq!(errcode(&h.refresh(AUTH_A, "refreshtoken@@@x").await), 61023);
    let no_refresh = h
        .api(
            "api_authorizer_token",
            json!({ "component_appid": CAPPID, "authorizer_appid": AUTH_A }),
        )
        .await;
    assert_eq!(errcode(&no_refresh), 61023);
    assert_eq!(
        errcode(&h.refresh("wxnotauthorized00", &refresh).await),
        61003
    );
    let no_appid = h
        .api("api_authorizer_token", json!({ "component_appid": CAPPID }))
        .await;
    assert_eq!(errcode(&no_appid), 41002);
    assert!(h.refresh(AUTH_A, &refresh).await["authorizer_access_token"].is_string());
    assert!(h.refresh(AUTH_A, &refresh).await["authorizer_access_token"].is_string());
    let quota = h.refresh(AUTH_A, &refresh).await;
    assert_eq!(errcode(&quota), 45009, "{quota}");
    // Another authorizer has its own quota; the day rolls over.
    let (_, b_refresh) = h.authorized(AUTH_B).await;
    assert!(h.refresh(AUTH_B, &b_refresh).await["authorizer_access_token"].is_string());
    admin.advance(Duration::from_secs(86400));
    h.renew().await;
    assert!(h.refresh(AUTH_A, &refresh).await["authorizer_access_token"].is_string());

    // Scripted failures come before every check and charge nothing.
    admin
        .fail_authorizer_endpoint(CAPPID, AuthorizerEndpoint::AuthorizerToken, -1, 2)
        .unwrap();
    assert_eq!(errcode(&h.refresh(AUTH_A, "whatever").await), -1);
    assert_eq!(errcode(&h.refresh(AUTH_A, &refresh).await), -1);
    assert!(h.refresh(AUTH_A, &refresh).await["authorizer_access_token"].is_string());
    assert_eq!(
        admin.fail_authorizer_endpoint(CAPPID, AuthorizerEndpoint::QueryAuth, -1, 0),
        Err(AuthorizerError::ZeroTimes)
    );

    let counts = admin.authorizer_counts(CAPPID, AUTH_A).unwrap();
    assert_eq!(counts.authorizer_token_issued, 5);
    // 5 issued, 61023 twice, 45009 once (scripted calls never reach the authorizer).
    assert_eq!(counts.authorizer_token_calls, 8);
    let ev = admin.authorizer_evidence(CAPPID).unwrap();
    let e = &ev.endpoints.authorizer_token;
    assert_eq!(e.ok, 6);
    assert_eq!(e.scripted, 2);
    assert_eq!(e.errcodes[&-1], 2);
    assert_eq!(e.errcodes[&61023], 2);
    assert_eq!(e.errcodes[&61003], 1);
    assert_eq!(e.errcodes[&41002], 1);
    assert_eq!(e.errcodes[&45009], 1);
    let issued = admin.authorizer_issue_counts(CAPPID).unwrap();
    assert_eq!(issued.len(), 2);
    assert_eq!(issued[AUTH_A], 5);
    assert_eq!(issued[AUTH_B], 1);
}

#[tokio::test]
async fn component_token_and_body_are_checked_first() {
    let h = H::start(fast()).await;
    let (authorizer_token, refresh) = h.authorized(AUTH_A).await;
    let body = json!({
        "component_appid": CAPPID,
        "authorizer_appid": AUTH_A,
        "authorizer_refresh_token": refresh,
    });
    let call = |query: String, body: Value| {
        let h = &h;
        async move {
            h.post(
                &format!("/cgi-bin/component/api_authorizer_token{query}"),
                body,
            )
            .await
        }
    };
    // `access_token=` works as well as `component_access_token=`.
    let ok = call(format!("?access_token={}", h.ctoken), body.clone()).await;
    assert!(ok["authorizer_access_token"].is_string(), "{ok}");
    assert_eq!(errcode(&call(String::new(), body.clone()).await), 41001);
    assert_eq!(
        errcode(&call("?component_access_token=nope".into(), body.clone()).await),
        40001
    );
    // An app's or an authorizer's access token is not a component token.
    let app_token = h
        .get(&format!(
            "/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}"
        ))
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        errcode(&call(format!("?component_access_token={app_token}"), body.clone()).await),
        61014
    );
    let new_token = ok["authorizer_access_token"].as_str().unwrap();
    assert_eq!(
        errcode(&call(format!("?component_access_token={new_token}"), body.clone()).await),
        61014
    );
    let q = format!("?component_access_token={}", h.ctoken);
    let resp = h
        .http
        .post(h.url(&format!("/cgi-bin/component/api_authorizer_token{q}")))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(errcode(&resp.json().await.unwrap()), 47001);
    let no_component = json!({ "authorizer_appid": AUTH_A, "authorizer_refresh_token": refresh });
    assert_eq!(errcode(&call(q.clone(), no_component).await), 41018);
    let mut other = body.clone();
    other["component_appid"] = json!("wxothercomponent01");
    assert_eq!(errcode(&call(q.clone(), other).await), 61011);

    // An expired component token is 42001.
    h.admin().advance(Duration::from_secs(7200));
    assert_eq!(errcode(&call(q, body).await), 42001);
    assert_eq!(
        h.admin().check_authorizer_token(&authorizer_token),
        Err(40001),
        "replaced at once by the refresh above, overlap long over"
    );
}

#[tokio::test]
async fn list_pages_in_authorization_order() {
    let h = H::start(fast()).await;
    let admin = h.admin();
    let bulk = admin.bulk_authorize(CAPPID, 1200).unwrap();
    assert_eq!(bulk.len(), 1200);
    assert_eq!(bulk[0], "wxa000000000000000");
    assert_eq!(bulk[1199], "wxa000000000001199");
    let (_, refresh_a) = h.authorized(AUTH_A).await;

    let first = h.list(0, 500).await;
    assert_eq!(first["total_count"], 1201, "{}", first["errcode"]);
    let list = first["list"].as_array().unwrap();
    assert_eq!(list.len(), 500);
    assert_eq!(list[0]["authorizer_appid"], "wxa000000000000000");
    assert!(list[0]["refresh_token"]
        .as_str()
        .unwrap()
        .starts_with("refreshtoken@@@"));
    assert!(list[0]["auth_time"].as_u64().unwrap() > 1_600_000_000);
    let last = h.list(1000, 500).await;
    let last = last["list"].as_array().unwrap();
    assert_eq!(last.len(), 201);
    assert_eq!(last[200]["authorizer_appid"], AUTH_A);
    assert_eq!(last[200]["refresh_token"], refresh_a.as_str());
    assert_eq!(h.list(5000, 10).await["list"], json!([]));

    // Limits.
    assert_eq!(errcode(&h.list(0, 501).await), 40170);
    assert_eq!(errcode(&h.list(0, 0).await), 40097);
    assert_eq!(errcode(&h.list(0, -1).await), 40097);
    let no_offset = h
        .api(
            "api_get_authorizer_list",
            json!({ "component_appid": CAPPID, "count": 10 }),
        )
        .await;
    assert_eq!(errcode(&no_offset), 40097);

    // A bulk authorizer's refresh token from the list works.
    let listed_refresh = list[1]["refresh_token"].as_str().unwrap().to_string();
    assert!(h.refresh(&bulk[1], &listed_refresh).await["authorizer_access_token"].is_string());

    // A silent rotation: the stored refresh token is 61023, the list has the new one.
    admin.rotate_refresh_token(CAPPID, &bulk[1]).unwrap();
    assert_eq!(errcode(&h.refresh(&bulk[1], &listed_refresh).await), 61023);
    let rotated = h.list(1, 1).await["list"][0]["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(rotated, listed_refresh);
    assert!(h.refresh(&bulk[1], &rotated).await["authorizer_access_token"].is_string());

    // Unauthorized ones leave the list; the order of the others is kept.
    admin.unauthorize_without_push(CAPPID, &bulk[0]).unwrap();
    let after = h.list(0, 2).await;
    assert_eq!(after["total_count"], 1200);
    assert_eq!(after["list"][0]["authorizer_appid"], bulk[1].as_str());

    // Scripted list failures.
    admin
        .fail_authorizer_endpoint(CAPPID, AuthorizerEndpoint::GetAuthorizerList, 45009, 1)
        .unwrap();
    assert_eq!(errcode(&h.list(0, 1).await), 45009);
    assert_eq!(h.list(0, 1).await["total_count"], 1200);
    let ev = admin.authorizer_evidence(CAPPID).unwrap();
    assert_eq!(ev.endpoints.get_authorizer_list.calls, 11);
    assert_eq!(ev.authorized, 1200);
    assert_eq!(ev.created, 1201);
}

#[tokio::test]
async fn reauthorize_and_unauthorize_push_and_invalidate_at_once() {
    let mut h = H::start(fast()).await;
    let admin = h.admin();
    admin.authorize(CAPPID, AUTH_A).await.unwrap();
    let code = h.next_event().await.code.unwrap();
    let v = h.query_auth(&code).await;
    let old_token = v["authorization_info"]["authorizer_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let old_refresh = v["authorization_info"]["authorizer_refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        admin.authorize(CAPPID, AUTH_A).await,
        Err(AuthorizerError::AlreadyAuthorized {
            component: CAPPID.into(),
            authorizer: AUTH_A.into()
        })
    );

    // Re-authorization: new code and refresh token; the current token is invalid at once.
    let pending = admin
        .authorize_without_push(CAPPID, AUTH_B)
        .unwrap()
        .authorization_code
        .unwrap();
    let re = admin.reauthorize(CAPPID, AUTH_A).await.unwrap();
    assert_eq!(re.event, AuthEvent::UpdateAuthorized);
    let ev = h.next_event().await;
    assert_eq!(ev.info_type, "updateauthorized");
    assert_eq!(ev.authorizer, AUTH_A);
    let new_code = ev.code.unwrap();
    assert_eq!(Some(&new_code), re.authorization_code.as_ref());
    assert_ne!(new_code, code);
    assert_eq!(admin.check_authorizer_token(&old_token), Err(40001));
    assert_eq!(
        errcode(
            &h.get(&format!(
                "/cgi-bin/get_api_domain_ip?access_token={old_token}"
            ))
            .await
        ),
        40001
    );
    assert_eq!(errcode(&h.refresh(AUTH_A, &old_refresh).await), 61023);
    let v = h.query_auth(&new_code).await;
    let new_refresh = v["authorization_info"]["authorizer_refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_refresh, old_refresh);
    let new_token = h.refresh(AUTH_A, &new_refresh).await["authorizer_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    // Another authorizer's pending code is untouched.
    assert!(h.query_auth(&pending).await["authorization_info"].is_object());

    // Unauthorization: everything invalid at once, 61003, not listed.
    let un = admin.unauthorize(CAPPID, AUTH_A).await.unwrap();
    assert_eq!(un.authorization_code, None);
    let ev = h.next_event().await;
    assert_eq!(ev.info_type, "unauthorized");
    assert_eq!(ev.authorizer, AUTH_A);
    assert_eq!(ev.code, None);
    assert_eq!(ev.pre_auth, None);
    assert_eq!(admin.check_authorizer_token(&new_token), Err(40001));
    assert_eq!(errcode(&h.refresh(AUTH_A, &new_refresh).await), 61003);
    let list = h.list(0, 10).await;
    assert_eq!(list["total_count"], 1);
    assert_eq!(list["list"][0]["authorizer_appid"], AUTH_B);
    assert_eq!(
        admin.unauthorize(CAPPID, AUTH_A).await,
        Err(AuthorizerError::NotAuthorized {
            component: CAPPID.into(),
            authorizer: AUTH_A.into()
        })
    );
    assert_eq!(
        admin.reauthorize_without_push(CAPPID, "wxnever"),
        Err(AuthorizerError::UnknownAuthorizer {
            component: CAPPID.into(),
            authorizer: "wxnever".into()
        })
    );

    // Authorizing again works, with a fresh refresh token, at the end of the list.
    admin.authorize(CAPPID, AUTH_A).await.unwrap();
    let again = h.next_event().await;
    assert_eq!(again.info_type, "authorized");
    let v = h.query_auth(&again.code.unwrap()).await;
    let info = &v["authorization_info"];
    assert_ne!(info["authorizer_refresh_token"], new_refresh.as_str());
    assert_eq!(h.list(0, 10).await["list"][1]["authorizer_appid"], AUTH_A);

    let ev = admin.authorizer_evidence(CAPPID).unwrap();
    assert_eq!(
        (
            ev.events.authorized,
            ev.events.update_authorized,
            ev.events.unauthorized
        ),
        (2, 1, 1)
    );
    assert_eq!(ev.pushes.len(), 4);
    assert!(ev.pushes.iter().all(|p| p.success));
    assert_eq!(ev.pushes[2].event, AuthEvent::Unauthorized);
    assert_eq!(ev.pushes[2].code_prefix, None);
    assert_eq!(ev.rejected_business_calls[&40001], 1);
}

#[tokio::test]
async fn authorizer_tokens_work_at_the_business_api_and_getticket() {
    let h = H::start(Timing {
        ticket_daily_quota: 2,
        ..fast()
    })
    .await;
    let admin = h.admin();
    let (token, refresh) = h.authorized(AUTH_A).await;
    let business = |t: String| {
        let h = &h;
        async move {
            h.get(&format!("/cgi-bin/get_api_domain_ip?access_token={t}"))
                .await
        }
    };
    assert!(business(token.clone()).await["ip_list"].is_array());
    let ticket = |t: String, kind: &'static str| {
        let h = &h;
        async move {
            h.get(&format!(
                "/cgi-bin/ticket/getticket?access_token={t}&type={kind}"
            ))
            .await
        }
    };
    let v = ticket(token.clone(), "jsapi").await;
    assert_eq!(v["errcode"], 0, "{v}");
    assert_eq!(v["errmsg"], "ok");
    assert_eq!(v["expires_in"], 7200);
    assert!(v["ticket"].as_str().unwrap().len() >= 80);
    assert_eq!(errcode(&ticket(token.clone(), "nope").await), 40097);
    assert_eq!(ticket(token.clone(), "wx_card").await["errcode"], 0);
    assert_eq!(errcode(&ticket(token.clone(), "jsapi").await), 45009);

    // Revoked: 40001 everywhere until the next refresh.
    admin.revoke_authorizer_token(CAPPID, AUTH_A).unwrap();
    assert_eq!(errcode(&business(token.clone()).await), 40001);
    assert_eq!(errcode(&ticket(token.clone(), "jsapi").await), 40001);
    let fresh = h.refresh(AUTH_A, &refresh).await["authorizer_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(business(fresh.clone()).await["ip_list"].is_array());
    // Expired: 42001.
    admin.advance(Duration::from_secs(7200));
    assert_eq!(errcode(&business(fresh.clone()).await), 42001);

    let counts = admin.authorizer_counts(CAPPID, AUTH_A).unwrap();
    assert_eq!(counts.business_ok, 2);
    assert_eq!(counts.business_rejected, 2);
    assert_eq!(counts.tickets_issued, 2);
    let ev = admin.authorizer_evidence(CAPPID).unwrap();
    assert_eq!(ev.business_ok, 2);
    assert_eq!(ev.rejected_business_calls[&40001], 1);
    assert_eq!(ev.rejected_business_calls[&42001], 1);
    // App tokens are unaffected and not counted here.
    let app = h
        .get(&format!(
            "/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}"
        ))
        .await;
    let app_token = app["access_token"].as_str().unwrap().to_string();
    assert!(business(app_token).await["ip_list"].is_array());
    assert_eq!(admin.authorizer_evidence(CAPPID).unwrap().business_ok, 2);
}

#[tokio::test]
async fn a_hundred_thousand_authorizers_page_through() {
    let h = H::start(fast()).await;
    let admin = h.admin();
    let appids = admin.bulk_authorize(CAPPID, 100_000).unwrap();
    assert_eq!(appids.len(), 100_000);
    assert_eq!(appids.iter().collect::<HashSet<_>>().len(), 100_000);

    let mut seen = Vec::with_capacity(100_000);
    let mut refresh = Vec::new();
    let mut offset = 0;
    loop {
        let page = h.list(offset, 500).await;
        assert_eq!(page["total_count"], 100_000);
        let list = page["list"].as_array().unwrap();
        if list.is_empty() {
            break;
        }
        for item in list {
            seen.push(item["authorizer_appid"].as_str().unwrap().to_string());
            if refresh.len() < 50 {
                refresh.push(item["refresh_token"].as_str().unwrap().to_string());
            }
        }
        offset += 500;
    }
    assert_eq!(seen, appids);

    // Refresh the first 50 once each: the histogram and the map show exactly that.
    for (appid, rt) in appids.iter().zip(&refresh) {
        assert!(h.refresh(appid, rt).await["authorizer_access_token"].is_string());
    }
    let ev = admin.authorizer_evidence(CAPPID).unwrap();
    assert_eq!(ev.created, 100_000);
    assert_eq!(ev.authorized, 100_000);
    assert_eq!(
        ev.authorizer_token_issued_histogram
            .into_iter()
            .collect::<Vec<_>>(),
        [(0, 99_950), (1, 50)]
    );
    let issued = admin.authorizer_issue_counts(CAPPID).unwrap();
    assert_eq!(issued.len(), 50);
    assert!(issued.values().all(|&n| n == 1));

    // A second bulk continues the numbering.
    let more = admin.bulk_authorize(CAPPID, 2).unwrap();
    assert_eq!(more, ["wxa000000000100000", "wxa000000000100001"]);
}

#[tokio::test]
async fn authorizers_from_the_config_and_the_http_admin_api() {
    let h = H::start_with(
        SimConfig::default()
            .with_timing(fast())
            .with_authorizers(CAPPID, 3),
    )
    .await;
    let base = format!("/_sim/components/{CAPPID}/authorizers");
    let list = h.list(0, 10).await;
    assert_eq!(list["total_count"], 3);
    assert_eq!(list["list"][2]["authorizer_appid"], "wxa000000000000002");

    let send = |method: reqwest::Method, path: String, body: Option<Value>| {
        let h = &h;
        async move {
            let mut req = h.http.request(method, h.url(&path));
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    use reqwest::Method;

    // Authorize without a push, exchange the code.
    let (status, rec) = send(
        Method::POST,
        format!("{base}/{AUTH_A}/authorize?push=false"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rec}");
    assert_eq!(rec["event"], "authorized");
    assert_eq!(rec["push"], Value::Null);
    let code = rec["authorization_code"].as_str().unwrap();
    let v = h.query_auth(code).await;
    let refresh = v["authorization_info"]["authorizer_refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = send(
        Method::POST,
        format!("{base}/{AUTH_A}/authorize?push=false"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = send(
        Method::POST,
        format!("{base}/{AUTH_A}/authorize?push=maybe"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // With a push (the default).
    let (status, rec) = send(Method::POST, format!("{base}/{AUTH_B}/authorize"), None).await;
    assert_eq!(status, StatusCode::OK, "{rec}");
    assert_eq!(rec["push"]["success"], true);

    // Scripted failure, bulk, rotate, revoke, counts, evidence.
    let (status, _) = send(
        Method::POST,
        format!("{base}/fail"),
        Some(json!({ "endpoint": "authorizer_token", "errcode": -1, "times": 1 })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(errcode(&h.refresh(AUTH_A, &refresh).await), -1);
    assert!(h.refresh(AUTH_A, &refresh).await["authorizer_access_token"].is_string());
    let (status, bulk) = send(
        Method::POST,
        format!("{base}/bulk"),
        Some(json!({ "count": 2 })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        bulk["appids"],
        json!(["wxa000000000000003", "wxa000000000000004"])
    );
    let (status, _) = send(
        Method::POST,
        format!("{base}/{AUTH_A}/rotate_refresh_token"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(errcode(&h.refresh(AUTH_A, &refresh).await), 61023);
    let (status, _) = send(Method::POST, format!("{base}/{AUTH_A}/revoke"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, counts) = send(Method::GET, format!("{base}/{AUTH_A}/counts"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(counts["authorizer_token_issued"], 1);
    assert_eq!(counts["authorized"], true);
    let (status, issued) = send(Method::GET, format!("{base}/issue_counts"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(issued, json!({ AUTH_A: 1 }));
    let (status, ev) = send(Method::GET, format!("{base}/evidence"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ev["authorized"], 7);
    assert_eq!(ev["events"]["authorized"], 1);
    assert_eq!(ev["endpoints"]["authorizer_token"]["errcodes"]["-1"], 1);
    let (status, _) = send(
        Method::POST,
        format!("{base}/{AUTH_B}/unauthorize?push=false"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(Method::POST, format!("{base}/{AUTH_B}/reauthorize"), None).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Unknown component / authorizer, bad bodies.
    let (status, _) = send(
        Method::GET,
        "/_sim/components/wxnope/authorizers/evidence".into(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(Method::GET, format!("{base}/wxnever/counts"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, err) = send(
        Method::POST,
        format!("{base}/bulk"),
        Some(json!({ "cuont": 2 })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err["error"].as_str().unwrap().contains("cuont"), "{err}");
    let (status, _) = send(Method::POST, format!("{base}/wx]]x/authorize"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, err) = send(Method::POST, format!("{base}/{AUTH_A}/delete"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(err["error"]
        .as_str()
        .unwrap()
        .contains("unknown authorizer action"));
}

#[test]
fn authorizers_parse_from_toml_and_are_validated() {
    let text = format!(
        "[[component]]\nappid = \"{CAPPID}\"\nsecret = \"{CSECRET}\"\ntoken = \"t\"\n\
         encoding_aes_key = \"{}\"\n\n[[authorizers]]\ncomponent = \"{CAPPID}\"\ncount = 5\n\
         [timing]\nauthorization_code_lifetime = \"5m\"\nauthorizer_token_daily_quota = 7\n",
        crate::component::CKEY
    );
    let config = SimConfig::from_toml_str(&text).unwrap();
    assert_eq!(config.authorizers.len(), 1);
    assert_eq!(config.authorizers[0].count, 5);
    assert_eq!(
        config.timing.authorization_code_lifetime,
        Duration::from_secs(300)
    );
    assert_eq!(config.timing.authorizer_token_daily_quota, 7);
    let defaults = Timing::default();
    assert_eq!(
        defaults.authorization_code_lifetime,
        Duration::from_secs(600)
    );
    assert_eq!(defaults.authorizer_token_daily_quota, 2000);

    let unknown = text.replace("component = \"wx", "component = \"wy");
    let err = SimConfig::from_toml_str(&unknown).unwrap_err().to_string();
    assert!(err.contains("authorizers[0].component"), "{err}");
    let typo = text.replace("count = 5", "cnt = 5");
    let err = SimConfig::from_toml_str(&typo).unwrap_err().to_string();
    assert!(err.contains("cnt"), "{err}");
    let huge = text.replace("count = 5", "count = 1000001");
    let err = SimConfig::from_toml_str(&huge).unwrap_err().to_string();
    assert!(err.contains("authorizers[0].count"), "{err}");
}
