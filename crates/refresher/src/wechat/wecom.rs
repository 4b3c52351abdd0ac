//! WeCom's (企业微信) app endpoints, on `wechat.wecom_base_url`
//! (`https://qyapi.weixin.qq.com`):
//!
//! - `GET /cgi-bin/gettoken?corpid=..&corpsecret=..`: an app's access token;
//! - `GET /cgi-bin/get_jsapi_ticket?access_token=..`: the corp's JS-SDK
//!   ticket (for `wx.config`), stored as the credential's `jsapi_ticket`;
//! - `GET /cgi-bin/ticket/get?access_token=..&type=agent_config`: the app's
//!   ticket (for `wx.agentConfig`), stored as `agent_config_ticket`.
//!
//! All three answer `errcode: 0` on success and hand back the **same**
//! value, with its remaining `expires_in`, until it expires (or WeCom
//! invalidates it early); `lease` and `policy` deal with that. WeCom's
//! errcodes mean other things than WeChat's, so its refusals are
//! [`WechatError::Wecom`] and classified by [`class`]. Scrubbing is the
//! parent module's: the `corpsecret` (in the query string) and a ticket
//! call's access token never appear in an error.

use super::{ErrorClass, Fetched, Scrub, Wechat, WechatError};
use secrecy::{ExposeSecret, SecretString};

/// How to react to WeCom's `errcode` (on a ticket call if `for_ticket`).
///
/// - 45009: WeCom's frequency limit (an app asking too often, a ticket's
///   hourly limit of 400 per corp and 100 per app, or the IP block after
///   2,000 failed `gettoken` calls in an hour): pause.
/// - 40014 (invalid) and 42001 (expired) on a ticket call: the access token
///   it was made with is no longer good; it is reported for a refresh.
/// - 40013 (corpid), 40001/40091 (secret), 41002/41004 (missing corpid,
///   secret), 60020 (the caller's IP is not in the app's trusted IPs), 48002
///   (API forbidden for the app), 40056/40058 (agentid, parameters):
///   configuration, retried slowly.
/// - Suites: 40083 (suite id), 40084 (permanent code: the corp's
///   authorization was cancelled or its code changed), 40085 (a
///   `suite_ticket` WeCom does not know: only a new push helps), 41021 to
///   41025 (missing fields): configuration, retried slowly; 40082 / 42009
///   (the suite token is invalid or expired) on a corp's call: the suite
///   token is reported for a refresh.
/// - 45033 (too many concurrent calls), -1 (busy) and anything else:
///   retried with backoff.
pub fn class(errcode: i64, for_ticket: bool) -> ErrorClass {
    match errcode {
        45009 => ErrorClass::Quota,
        40014 | 42001 if for_ticket => ErrorClass::TokenInvalid,
        40013 | 40001 | 40091 | 41002 | 41004 | 60020 | 48002 | 40056 | 40058 => ErrorClass::Config,
        40083 | 40084 | 40085 | 41021..=41025 => ErrorClass::Config,
        _ => ErrorClass::Retryable,
    }
}

impl Wechat {
    /// `GET /cgi-bin/gettoken?corpid=..&corpsecret=..`.
    pub async fn wecom_token(
        &self,
        corpid: &str,
        secret: &SecretString,
    ) -> Result<Fetched, WechatError> {
        let req = self
            .http
            .get(format!("{}/cgi-bin/gettoken", self.wecom_base_url))
            .query(&[("corpid", corpid), ("corpsecret", secret.expose_secret())]);
        self.send_wecom(req, "access_token", &Scrub::new(&[secret.expose_secret()]))
            .await
    }

    /// `GET /cgi-bin/get_jsapi_ticket?access_token=..`: the corp ticket.
    pub async fn wecom_corp_ticket(&self, access_token: &str) -> Result<Fetched, WechatError> {
        let req = self
            .http
            .get(format!("{}/cgi-bin/get_jsapi_ticket", self.wecom_base_url))
            .query(&[("access_token", access_token)]);
        self.send_wecom(req, "ticket", &Scrub::new(&[access_token]))
            .await
    }

    /// `GET /cgi-bin/ticket/get?access_token=..&type=agent_config`: the
    /// app's ticket.
    pub async fn wecom_agent_ticket(&self, access_token: &str) -> Result<Fetched, WechatError> {
        let req = self
            .http
            .get(format!("{}/cgi-bin/ticket/get", self.wecom_base_url))
            .query(&[("access_token", access_token), ("type", "agent_config")]);
        self.send_wecom(req, "ticket", &Scrub::new(&[access_token]))
            .await
    }

    async fn send_wecom(
        &self,
        req: reqwest::RequestBuilder,
        field: &'static str,
        scrub: &Scrub,
    ) -> Result<Fetched, WechatError> {
        self.send(req, field, scrub).await.map_err(wecom_error)
    }
}

/// WeCom's refusals as [`WechatError::Wecom`] (classified by [`class`]).
fn wecom_error(e: WechatError) -> WechatError {
    match e {
        WechatError::Api { errcode, errmsg } => WechatError::Wecom { errcode, errmsg },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WechatConfig;
    use wxtoken_sim::{SimConfig, Simulator, WecomAppConfig, WecomCorpConfig};

    const CORP: &str = "ww00000000000000a1";
    const SECRET: &str = "S3cretS3cretS3cretS3cretS3cretS3cretS3cret1";

    #[test]
    fn classification() {
        for code in [40013, 40001, 40091, 41002, 41004, 60020] {
            assert_eq!(class(code, false), ErrorClass::Config, "{code}");
            assert_eq!(class(code, true), ErrorClass::Config, "{code}");
        }
        assert_eq!(class(45009, false), ErrorClass::Quota);
        assert_eq!(class(45009, true), ErrorClass::Quota);
        for code in [45033, -1, 50001] {
            assert_eq!(class(code, false), ErrorClass::Retryable, "{code}");
        }
        for code in [40014, 42001] {
            assert_eq!(class(code, true), ErrorClass::TokenInvalid, "{code}");
            assert_eq!(class(code, false), ErrorClass::Retryable, "{code}");
        }
        let e = WechatError::Wecom {
            errcode: 60020,
            errmsg: "not allow to access from your ip".into(),
        };
        assert_eq!(e.class(false), ErrorClass::Config);
        assert_eq!(e.errcode(), Some(60020));
        assert!(e.to_string().starts_with("WeCom errcode 60020"), "{e}");
    }

    async fn sim() -> (Simulator, Wechat) {
        let config = SimConfig::default().with_wecom_corp(WecomCorpConfig {
            corpid: CORP.into(),
            apps: vec![WecomAppConfig {
                agentid: 1000002,
                secret: SECRET.into(),
            }],
        });
        let sim = Simulator::start(config, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let wechat = Wechat::new(&WechatConfig {
            base_url: sim.base_url(),
            wecom_base_url: sim.wecom_base_url(),
            ..WechatConfig::default()
        })
        .unwrap();
        (sim, wechat)
    }

    #[tokio::test]
    async fn token_and_both_tickets_from_the_simulator() {
        let (sim, wechat) = sim().await;
        let secret = SecretString::from(SECRET);
        let a = wechat.wecom_token(CORP, &secret).await.unwrap();
        assert!(a.expires_in > 7000, "{a:?}");
        // The same token while it is valid.
        let b = wechat.wecom_token(CORP, &secret).await.unwrap();
        assert_eq!(a.token, b.token);
        let corp = wechat.wecom_corp_ticket(&a.token).await.unwrap();
        let agent = wechat.wecom_agent_ticket(&a.token).await.unwrap();
        assert_ne!(corp.token, agent.token);
        let admin = sim.admin();
        assert_eq!(admin.check_wecom_token(&a.token), Ok(()));
        assert_eq!(admin.check_wecom_ticket(&corp.token), Ok(()));
        assert_eq!(admin.check_wecom_ticket(&agent.token), Ok(()));
        let ev = admin.wecom_corp_evidence(CORP).unwrap();
        assert_eq!((ev.apps[0].gettoken.new, ev.apps[0].gettoken.same), (1, 1));
        drop(sim);
    }

    #[tokio::test]
    async fn refusals_are_wecom_errors_without_the_secret_or_token() {
        let (sim, wechat) = sim().await;
        let wrong = SecretString::from("W0rongW0rongW0rongW0rongW0rongW0rongW0rong1");
        let e = wechat.wecom_token(CORP, &wrong).await.unwrap_err();
        assert_eq!(e.errcode(), Some(40001));
        assert_eq!(e.class(false), ErrorClass::Config);
        assert!(!e.to_string().contains("W0rong"), "{e}");
        let e = wechat
            .wecom_corp_ticket("not-a-token-at-all")
            .await
            .unwrap_err();
        assert_eq!(e.errcode(), Some(40014));
        assert_eq!(e.class(true), ErrorClass::TokenInvalid);
        assert!(!e.to_string().contains("not-a-token"), "{e}");
        sim.admin().set_wecom_ip_trusted(CORP, false).unwrap();
        let e = wechat
            .wecom_token(CORP, &SecretString::from(SECRET))
            .await
            .unwrap_err();
        assert_eq!(e.errcode(), Some(60020));
        assert_eq!(e.class(false), ErrorClass::Config);
    }
}
