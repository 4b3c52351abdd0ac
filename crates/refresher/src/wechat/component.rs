//! The third-party platform's (第三方平台) endpoints: the component token,
//! asking WeChat to push a verify ticket again, and the authorizers'
//! tokens and list. Same rules as the rest of `wechat`: nothing here
//! touches Redis, and every upstream text is scrubbed of the secrets the
//! call carried (component secret, verify ticket, component token,
//! authorization code, refresh tokens) before it is put into an error.

use super::{text_field, token_of, Fetched, Scrub, Wechat, WechatError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

/// Longest page `api_get_authorizer_list` serves.
pub const LIST_PAGE: u32 = 500;

/// One page of `api_get_authorizer_list`.
#[derive(Debug)]
pub struct ListPage {
    /// WeChat's `total_count`.
    pub total: u64,
    /// How many entries the page held (malformed ones included, which
    /// `entries` leaves out): the next page starts this much further.
    pub covered: u64,
    /// The well-formed entries.
    pub entries: Vec<ListedAuthorizer>,
}

/// What `api_query_auth` handed out for an authorization code.
pub struct AuthorizerGrant {
    /// The authorizer's appid, as WeChat names it.
    pub appid: String,
    /// Its access token.
    pub token: Fetched,
    /// Its refresh token (durable; a secret).
    pub refresh_token: String,
}

/// One entry of `api_get_authorizer_list`. Its `Debug` hides the token.
pub struct ListedAuthorizer {
    /// The authorizer's appid.
    pub appid: String,
    /// Its current refresh token (a secret).
    pub refresh_token: String,
}

impl std::fmt::Debug for ListedAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListedAuthorizer")
            .field("appid", &self.appid)
            .field("refresh_token", &"***")
            .finish()
    }
}

impl Wechat {
    async fn component_post(
        &self,
        api: &str,
        component_token: Option<&str>,
        body: &Value,
        scrub: &Scrub,
    ) -> Result<(serde_json::Map<String, Value>, std::time::Instant), WechatError> {
        let mut req = self
            .http
            .post(format!("{}/cgi-bin/component/{api}", self.base_url))
            .json(body);
        if let Some(t) = component_token {
            req = req.query(&[("component_access_token", t)]);
        }
        self.send_object(req, scrub).await
    }

    /// `POST /cgi-bin/component/api_component_token` with the newest
    /// verify ticket.
    pub async fn component_token(
        &self,
        component_appid: &str,
        secret: &SecretString,
        verify_ticket: &str,
    ) -> Result<Fetched, WechatError> {
        let scrub = Scrub::new(&[secret.expose_secret(), verify_ticket]);
        let body = json!({
            "component_appid": component_appid,
            "component_appsecret": secret.expose_secret(),
            "component_verify_ticket": verify_ticket,
        });
        let (reply, sent_at) = self
            .component_post("api_component_token", None, &body, &scrub)
            .await?;
        token_of(&reply, "component_access_token", sent_at).map_err(|e| scrub.error(e))
    }

    /// `POST /cgi-bin/component/api_start_push_ticket`: WeChat pushes a
    /// verify ticket again (there is no pull API).
    pub async fn start_push_ticket(
        &self,
        component_appid: &str,
        secret: &SecretString,
    ) -> Result<(), WechatError> {
        let scrub = Scrub::new(&[secret.expose_secret()]);
        let body = json!({
            "component_appid": component_appid,
            "component_secret": secret.expose_secret(),
        });
        self.component_post("api_start_push_ticket", None, &body, &scrub)
            .await
            .map(|_| ())
    }

    /// `POST /cgi-bin/component/api_query_auth`: exchanges a (single-use)
    /// authorization code for the authorizer's tokens.
    pub async fn query_auth(
        &self,
        component_token: &str,
        component_appid: &str,
        code: &str,
    ) -> Result<AuthorizerGrant, WechatError> {
        let scrub = Scrub::new(&[component_token, code]);
        let body = json!({
            "component_appid": component_appid,
            "authorization_code": code,
        });
        let (reply, sent_at) = self
            .component_post("api_query_auth", Some(component_token), &body, &scrub)
            .await?;
        let grant = (|| {
            let info = match reply.get("authorization_info") {
                Some(Value::Object(o)) => o,
                _ => {
                    return Err(WechatError::Malformed(
                        "no authorization_info in the reply".into(),
                    ))
                }
            };
            let appid = text_field(info, "authorizer_appid")?;
            wxtoken_schema::validate_name("authorizer appid", &appid)
                .map_err(|_| WechatError::Malformed("authorizer_appid is not an appid".into()))?;
            Ok(AuthorizerGrant {
                appid,
                token: token_of(info, "authorizer_access_token", sent_at)?,
                refresh_token: text_field(info, "authorizer_refresh_token")?,
            })
        })();
        grant.map_err(|e| scrub.error(e))
    }

    /// `POST /cgi-bin/component/api_authorizer_token`: a new access token
    /// for an authorizer, and the refresh token WeChat now holds (the same
    /// one, unless WeChat says otherwise).
    pub async fn authorizer_token(
        &self,
        component_token: &str,
        component_appid: &str,
        authorizer_appid: &str,
        refresh_token: &str,
    ) -> Result<(Fetched, Option<String>), WechatError> {
        let scrub = Scrub::new(&[component_token, refresh_token]);
        let body = json!({
            "component_appid": component_appid,
            "authorizer_appid": authorizer_appid,
            "authorizer_refresh_token": refresh_token,
        });
        let (reply, sent_at) = self
            .component_post("api_authorizer_token", Some(component_token), &body, &scrub)
            .await?;
        let token =
            token_of(&reply, "authorizer_access_token", sent_at).map_err(|e| scrub.error(e))?;
        let refresh = text_field(&reply, "authorizer_refresh_token").ok();
        Ok((token, refresh))
    }

    /// `POST /cgi-bin/component/api_get_authorizer_list`: one page (at most
    /// [`LIST_PAGE`]) of the platform's authorizers with their current
    /// refresh tokens, and the total. Malformed entries are skipped.
    pub async fn authorizer_list(
        &self,
        component_token: &str,
        component_appid: &str,
        offset: u64,
        count: u32,
    ) -> Result<ListPage, WechatError> {
        let scrub = Scrub::new(&[component_token]);
        let body = json!({
            "component_appid": component_appid,
            "offset": offset,
            "count": count.clamp(1, LIST_PAGE),
        });
        let req = self
            .http
            .post(format!(
                "{}/cgi-bin/component/api_get_authorizer_list",
                self.base_url
            ))
            .query(&[("component_access_token", component_token)])
            .json(&body);
        let reply = self.send_list(req, &scrub).await?;
        let total = reply
            .get("total_count")
            .and_then(Value::as_u64)
            .ok_or_else(|| WechatError::Malformed("total_count missing or not a number".into()))?;
        let list = match reply.get("list") {
            Some(Value::Array(a)) => a,
            None | Some(Value::Null) => {
                return Ok(ListPage {
                    total,
                    covered: 0,
                    entries: Vec::new(),
                })
            }
            Some(_) => return Err(WechatError::Malformed("list is not an array".into())),
        };
        let entries = list
            .iter()
            .take(LIST_PAGE as usize)
            .filter_map(|e| {
                let o = e.as_object()?;
                let appid = text_field(o, "authorizer_appid").ok()?;
                wxtoken_schema::validate_name("authorizer appid", &appid).ok()?;
                Some(ListedAuthorizer {
                    appid,
                    refresh_token: text_field(o, "refresh_token").ok()?,
                })
            })
            .collect();
        Ok(ListPage {
            total,
            covered: list.len().min(LIST_PAGE as usize) as u64,
            entries,
        })
    }
}
