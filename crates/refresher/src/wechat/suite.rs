//! A WeCom third-party suite's (服务商套件) endpoints, on
//! `wechat.wecom_base_url`:
//!
//! - `POST /cgi-bin/service/get_suite_token {suite_id, suite_secret,
//!   suite_ticket}`: the suite token (handed back the same while valid);
//! - `POST /cgi-bin/service/get_permanent_code?suite_access_token=
//!   {auth_code}`: exchanges a `create_auth` push's temporary code (single
//!   use) for the corp's permanent code;
//! - `POST /cgi-bin/service/get_corp_token?suite_access_token=
//!   {auth_corpid, permanent_code}`: an authorized corp's access token.
//!
//! Refusals are [`WechatError::Wecom`] (classified by
//! [`super::wecom::class`]), and every upstream text is scrubbed of what
//! the call carried (suite secret, ticket, suite token, codes).

use super::{text_field, token_of, Fetched, Scrub, Wechat, WechatError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

/// What `get_permanent_code` handed out. Its `Debug` hides the code.
pub struct PermanentGrant {
    /// The corp that authorized the suite, as WeCom names it.
    pub corpid: String,
    /// Its permanent code (durable; a secret).
    pub permanent_code: String,
}

impl std::fmt::Debug for PermanentGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PermanentGrant")
            .field("corpid", &self.corpid)
            .field("permanent_code", &"***")
            .finish()
    }
}

impl Wechat {
    async fn service_post(
        &self,
        api: &str,
        suite_token: Option<&str>,
        body: &Value,
        scrub: &Scrub,
    ) -> Result<(serde_json::Map<String, Value>, std::time::Instant), WechatError> {
        let mut req = self
            .http
            .post(format!("{}/cgi-bin/service/{api}", self.wecom_base_url))
            .json(body);
        if let Some(t) = suite_token {
            req = req.query(&[("suite_access_token", t)]);
        }
        self.send_object(req, scrub).await.map_err(wecom_error)
    }

    /// `POST /cgi-bin/service/get_suite_token` with the newest ticket.
    pub async fn suite_token(
        &self,
        suite_id: &str,
        secret: &SecretString,
        suite_ticket: &str,
    ) -> Result<Fetched, WechatError> {
        let scrub = Scrub::new(&[secret.expose_secret(), suite_ticket]);
        let body = json!({
            "suite_id": suite_id,
            "suite_secret": secret.expose_secret(),
            "suite_ticket": suite_ticket,
        });
        let (reply, sent_at) = self
            .service_post("get_suite_token", None, &body, &scrub)
            .await?;
        token_of(&reply, "suite_access_token", sent_at).map_err(|e| scrub.error(e))
    }

    /// `POST /cgi-bin/service/get_permanent_code`: exchanges a temporary
    /// auth code (single use) for the corp's permanent code.
    pub async fn permanent_code(
        &self,
        suite_token: &str,
        auth_code: &str,
    ) -> Result<PermanentGrant, WechatError> {
        let scrub = Scrub::new(&[suite_token, auth_code]);
        let body = json!({ "auth_code": auth_code });
        let (reply, _) = self
            .service_post("get_permanent_code", Some(suite_token), &body, &scrub)
            .await?;
        let grant = (|| {
            let corpid = match reply.get("auth_corp_info") {
                Some(Value::Object(o)) => text_field(o, "corpid")?,
                _ => {
                    return Err(WechatError::Malformed(
                        "no auth_corp_info in the reply".into(),
                    ))
                }
            };
            wxtoken_schema::validate_name("corpid", &corpid)
                .map_err(|_| WechatError::Malformed("corpid is not a corpid".into()))?;
            Ok(PermanentGrant {
                corpid,
                permanent_code: text_field(&reply, "permanent_code")?,
            })
        })();
        grant.map_err(|e| scrub.error(e))
    }

    /// `POST /cgi-bin/service/get_corp_token`: an authorized corp's access
    /// token.
    pub async fn corp_token(
        &self,
        suite_token: &str,
        corpid: &str,
        permanent_code: &str,
    ) -> Result<Fetched, WechatError> {
        let scrub = Scrub::new(&[suite_token, permanent_code]);
        let body = json!({ "auth_corpid": corpid, "permanent_code": permanent_code });
        let (reply, sent_at) = self
            .service_post("get_corp_token", Some(suite_token), &body, &scrub)
            .await?;
        token_of(&reply, "access_token", sent_at).map_err(|e| scrub.error(e))
    }
}

fn wecom_error(e: WechatError) -> WechatError {
    match e {
        WechatError::Api { errcode, errmsg } => WechatError::Wecom { errcode, errmsg },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_never_shows_its_code() {
        let g = PermanentGrant {
            corpid: "wwcorp".into(),
            permanent_code: "the-permanent-code".into(),
        };
        let shown = format!("{g:?}");
        assert!(shown.contains("wwcorp") && !shown.contains("the-permanent-code"));
        let e = wecom_error(WechatError::Api {
            errcode: 40084,
            errmsg: "invalid permanent_code".into(),
        });
        assert_eq!(e.class(false), super::super::ErrorClass::Config);
    }
}
