//! WeCom third-party suites (服务商): `suite_ticket` pushes, URL verification, authorization
//! events, and `get_suite_token` / `get_permanent_code` / `get_corp_token` (rules in the
//! module docs of `wecom`). Must not: hold the WeCom lock across a push or a verification
//! (network I/O), register a ticket or code whose push could not be built, or put whole
//! tickets, codes or tokens into evidence or logs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use wxtoken_crypto::{MsgCrypt, Recipient};

use super::api::{err, ok};
use super::{
    errcode, is_valid_id, take_scripted, Auth, AuthCode, Inner, Outcome, SuiteToken,
    WecomAuthEvent, WecomAuthRecord, WecomBulkCorp, WecomEndpoint, WecomError, WecomPush,
    WecomUrlVerification, BULK_PREFIX, MAX_WECOM_BULK_CORPS,
};
use crate::admin::Admin;
use crate::component::{self, str_field};
use crate::state::Shared;
use crate::wire::{self, query_param};

/// Random characters of a pushed `suite_ticket`.
const TICKET_LEN: usize = 64;
/// Random characters of a temporary auth code (WeCom: 64 to 512 bytes).
const AUTH_CODE_LEN: usize = 64;
/// Random characters of a permanent code.
const PERMANENT_CODE_LEN: usize = 43;

/// Starts one `suite_ticket` pusher per suite with a `push_url`, in `set`.
pub(crate) fn spawn_pushers(shared: &Arc<Shared>, set: &mut JoinSet<()>) {
    let ids: Vec<String> = shared
        .wecom
        .lock()
        .suites
        .iter()
        .filter(|(_, s)| s.push_url.is_some())
        .map(|(id, _)| id.clone())
        .collect();
    for id in ids {
        set.spawn(pusher(Arc::clone(shared), id));
    }
}

async fn pusher(shared: Arc<Shared>, suite_id: String) {
    loop {
        let next = match shared.wecom.lock().suites.get(&suite_id) {
            Some(s) => s.next_push_at,
            None => return,
        };
        shared.clock.sleep_until(Some(next)).await;
        let now = shared.clock.now();
        let interval = shared.timing.suite_ticket_push_interval;
        if let Some(s) = shared.wecom.lock().suites.get_mut(&suite_id) {
            // One push however far the clock jumped.
            s.next_push_at = now.checked_add(interval).unwrap_or(now);
        }
        if let Err(e) = push_ticket(&shared, &suite_id).await {
            tracing::warn!(%suite_id, error = %e, "scheduled suite_ticket push not sent");
        }
    }
}

/// Where a suite's pushes go and how they are encrypted.
fn target(inner: &Inner, suite_id: &str) -> Result<(String, Arc<MsgCrypt>), WecomError> {
    let s = inner
        .suites
        .get(suite_id)
        .ok_or_else(|| WecomError::UnknownSuite(suite_id.to_string()))?;
    let url = s
        .push_url
        .clone()
        .ok_or_else(|| WecomError::NoPushUrl(suite_id.to_string()))?;
    Ok((url, Arc::clone(&s.crypt)))
}

/// (query, body) of an encrypted push of `msg` to a suite, as WeCom sends it.
fn seal(
    crypt: &MsgCrypt,
    suite_id: &str,
    msg: &str,
    timestamp: u64,
) -> Result<(String, String), WecomError> {
    let timestamp = timestamp.to_string();
    let nonce = format!("{}", rand::random::<u32>());
    let push = crypt
        .push(msg, Recipient::ToUserName(suite_id), &timestamp, &nonce)
        .map_err(|e| WecomError::Crypto(e.to_string()))?;
    let body = match push.body.strip_suffix("</xml>") {
        Some(head) => format!("{head}<AgentID><![CDATA[]]></AgentID></xml>"),
        None => push.body,
    };
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("msg_signature", &push.msg_signature)
        .append_pair("timestamp", &timestamp)
        .append_pair("nonce", &nonce)
        .finish();
    Ok((query, body))
}

/// Sends a sealed push (no lock held) and records it on the suite.
async fn send_and_record(
    shared: &Shared,
    suite_id: &str,
    url: &str,
    query: &str,
    body: String,
    mut record: WecomPush,
) -> WecomPush {
    let (status, success, error) = component::send(&shared.wecom.http, url, query, body).await;
    record.status = status;
    record.success = success;
    record.error = error;
    if let Some(s) = shared.wecom.lock().suites.get_mut(suite_id) {
        if success {
            s.ev.pushes_acknowledged += 1;
        }
        s.ev.pushes.push(record.clone());
    }
    tracing::debug!(%suite_id, info_type = %record.info_type, success, "wecom push sent");
    record
}

/// Pushes a new `suite_ticket` (registered before it is sent) and records the answer.
pub(crate) async fn push_ticket(shared: &Shared, suite_id: &str) -> Result<WecomPush, WecomError> {
    let now = shared.now();
    let ticket = wire::random_token(TICKET_LEN);
    let msg = format!(
        "<xml><SuiteId><![CDATA[{suite_id}]]></SuiteId><InfoType><![CDATA[suite_ticket]]></InfoType>\
         <TimeStamp>{}</TimeStamp><SuiteTicket><![CDATA[{ticket}]]></SuiteTicket></xml>",
        now.unix_ms / 1000
    );
    let (url, query, body) = {
        let mut inner = shared.wecom.lock();
        let (url, crypt) = target(&inner, suite_id)?;
        let (query, body) = seal(&crypt, suite_id, &msg, now.unix_ms / 1000)?;
        if let Some(s) = inner.suites.get_mut(suite_id) {
            s.tickets.insert(ticket.clone(), now.at);
        }
        (url, query, body)
    };
    let record = WecomPush {
        since_start_ms: now.since_start_ms,
        info_type: "suite_ticket".to_string(),
        auth_corpid: None,
        prefix: Some(wire::prefix(&ticket)),
        status: None,
        success: false,
        error: None,
    };
    Ok(send_and_record(shared, suite_id, &url, &query, body, record).await)
}

/// WeCom's URL verification: GET with an encrypted `echostr`; the receiver must answer its
/// plaintext.
async fn verify_url(shared: &Shared, suite_id: &str) -> Result<WecomUrlVerification, WecomError> {
    let now = shared.now();
    let (url, crypt) = target(&shared.wecom.lock(), suite_id)?;
    let echo = format!("{}", rand::random::<u64>());
    let encrypt = crypt
        .encrypt(&echo)
        .map_err(|e| WecomError::Crypto(e.to_string()))?;
    let timestamp = (now.unix_ms / 1000).to_string();
    let nonce = format!("{}", rand::random::<u32>());
    let signature = crypt.msg_signature(&timestamp, &nonce, &encrypt);
    let mut record = WecomUrlVerification {
        since_start_ms: now.since_start_ms,
        status: None,
        echoed: false,
        error: None,
    };
    match reqwest::Url::parse(&url) {
        Err(e) => record.error = Some(format!("bad push_url: {e}")),
        Ok(mut url) => {
            url.query_pairs_mut()
                .append_pair("msg_signature", &signature)
                .append_pair("timestamp", &timestamp)
                .append_pair("nonce", &nonce)
                .append_pair("echostr", &encrypt);
            match shared.wecom.http.get(url).send().await {
                Err(e) => record.error = Some(e.without_url().to_string()),
                Ok(resp) => {
                    let status = resp.status();
                    record.status = Some(status.as_u16());
                    match resp.bytes().await {
                        Ok(body) => record.echoed = status.is_success() && body == echo.as_bytes(),
                        Err(e) => record.error = Some(e.without_url().to_string()),
                    }
                }
            }
        }
    }
    if let Some(s) = shared.wecom.lock().suites.get_mut(suite_id) {
        s.ev.verifications.push(record.clone());
    }
    Ok(record)
}

fn event_xml(
    suite_id: &str,
    corpid: &str,
    event: WecomAuthEvent,
    code: Option<&str>,
    ts: u64,
) -> String {
    let info = event.info_type();
    match (event, code) {
        (WecomAuthEvent::CreateAuth, Some(code)) => format!(
            "<xml><SuiteId><![CDATA[{suite_id}]]></SuiteId><AuthCode><![CDATA[{code}]]></AuthCode>\
             <InfoType><![CDATA[{info}]]></InfoType><TimeStamp>{ts}</TimeStamp>\
             <State><![CDATA[]]></State></xml>"
        ),
        _ => format!(
            "<xml><SuiteId><![CDATA[{suite_id}]]></SuiteId><InfoType><![CDATA[{info}]]></InfoType>\
             <TimeStamp>{ts}</TimeStamp><AuthCorpId><![CDATA[{corpid}]]></AuthCorpId></xml>"
        ),
    }
}

/// Changes a corp's authorization of a suite (under the lock) and, if `push`, pushes the
/// event (without it).
async fn auth_event(
    shared: &Shared,
    suite_id: &str,
    corpid: &str,
    event: WecomAuthEvent,
    push: bool,
) -> Result<WecomAuthRecord, WecomError> {
    if !is_valid_id(corpid) {
        return Err(WecomError::InvalidCorpid(corpid.to_string()));
    }
    let now = shared.now();
    let lifetime = shared.timing.wecom_auth_code_lifetime;
    let (sealed, code) = {
        let mut inner = shared.wecom.lock();
        let target = if push {
            Some(target(&inner, suite_id)?)
        } else {
            None
        };
        let suite = inner
            .suites
            .get_mut(suite_id)
            .ok_or_else(|| WecomError::UnknownSuite(suite_id.to_string()))?;
        let authorized = suite.auths.get(corpid).is_some_and(|a| a.authorized);
        match (event, authorized) {
            (WecomAuthEvent::CreateAuth, true) => {
                return Err(WecomError::AlreadyAuthorized {
                    suite_id: suite_id.to_string(),
                    corpid: corpid.to_string(),
                })
            }
            (WecomAuthEvent::ChangeAuth | WecomAuthEvent::CancelAuth, false) => {
                return Err(WecomError::NotAuthorized {
                    suite_id: suite_id.to_string(),
                    corpid: corpid.to_string(),
                })
            }
            _ => {}
        }
        let code = (event == WecomAuthEvent::CreateAuth).then(|| wire::random_token(AUTH_CODE_LEN));
        let msg = event_xml(suite_id, corpid, event, code.as_deref(), now.unix_ms / 1000);
        let sealed = match &target {
            Some((url, crypt)) => Some((
                url.clone(),
                seal(crypt, suite_id, &msg, now.unix_ms / 1000)?,
            )),
            None => None,
        };
        let suite_arc = Arc::clone(&suite.suite_id);
        match event {
            WecomAuthEvent::CreateAuth => {
                if !suite.auths.contains_key(corpid) {
                    suite.order.push(corpid.to_string());
                }
                suite.auths.insert(
                    corpid.to_string(),
                    Auth {
                        authorized: true,
                        permanent_code: wire::random_token(PERMANENT_CODE_LEN),
                    },
                );
                if let Some(code) = &code {
                    suite.codes.insert(
                        code.clone(),
                        AuthCode {
                            corpid: corpid.to_string(),
                            expires_at: now.at.checked_add(lifetime).unwrap_or(now.at),
                            used: false,
                        },
                    );
                }
                inner.ensure_suite_app(corpid, &suite_arc);
            }
            WecomAuthEvent::ChangeAuth => {}
            WecomAuthEvent::CancelAuth => {
                if let Some(a) = suite.auths.get_mut(corpid) {
                    a.authorized = false;
                }
                for c in suite.codes.values_mut() {
                    if c.corpid == corpid {
                        c.used = true;
                    }
                }
                let app = inner.corps.get(corpid).and_then(|c| c.suite_app(suite_id));
                if let Some(app) = app {
                    inner.revoke_app_token(corpid, app);
                }
            }
        }
        (sealed, code)
    };
    tracing::debug!(%suite_id, %corpid, event = event.info_type(), "wecom authorization changed");
    let push = match sealed {
        Some((url, (query, body))) => {
            let record = WecomPush {
                since_start_ms: now.since_start_ms,
                info_type: event.info_type().to_string(),
                auth_corpid: Some(corpid.to_string()),
                prefix: code.as_deref().map(wire::prefix),
                status: None,
                success: false,
                error: None,
            };
            Some(send_and_record(shared, suite_id, &url, &query, body, record).await)
        }
        None => None,
    };
    Ok(WecomAuthRecord {
        suite_id: suite_id.to_string(),
        corpid: corpid.to_string(),
        event,
        auth_code: code,
        push,
    })
}

impl Admin {
    /// Pushes a new `suite_ticket` to the suite's command callback URL now (as the
    /// "刷新ticket" button does) and returns what the receiver answered.
    pub async fn wecom_push_suite_ticket(&self, suite_id: &str) -> Result<WecomPush, WecomError> {
        push_ticket(self.shared(), suite_id).await
    }

    /// Performs WeCom's URL verification of the suite's command callback URL and returns
    /// (and records) whether the receiver answered the decrypted `echostr`.
    pub async fn verify_wecom_suite_url(
        &self,
        suite_id: &str,
    ) -> Result<WecomUrlVerification, WecomError> {
        verify_url(self.shared(), suite_id).await
    }

    /// The corp installs the suite's app: a new permanent code, a single-use temporary auth
    /// code (in the returned record, for `get_permanent_code`), and a `create_auth` push.
    pub async fn wecom_create_auth(
        &self,
        suite_id: &str,
        corpid: &str,
    ) -> Result<WecomAuthRecord, WecomError> {
        auth_event(
            self.shared(),
            suite_id,
            corpid,
            WecomAuthEvent::CreateAuth,
            true,
        )
        .await
    }

    /// The corp changes its authorization: a `change_auth` push; tokens and codes stay.
    pub async fn wecom_change_auth(
        &self,
        suite_id: &str,
        corpid: &str,
    ) -> Result<WecomAuthRecord, WecomError> {
        auth_event(
            self.shared(),
            suite_id,
            corpid,
            WecomAuthEvent::ChangeAuth,
            true,
        )
        .await
    }

    /// The corp uninstalls the suite's app: its permanent code answers 40084 and its tokens
    /// of the app 40014 at once; a `cancel_auth` push.
    pub async fn wecom_cancel_auth(
        &self,
        suite_id: &str,
        corpid: &str,
    ) -> Result<WecomAuthRecord, WecomError> {
        auth_event(
            self.shared(),
            suite_id,
            corpid,
            WecomAuthEvent::CancelAuth,
            true,
        )
        .await
    }

    /// Any of the three changes, with or without its push (`push: false` works for a suite
    /// without `push_url`).
    pub async fn wecom_auth_event(
        &self,
        suite_id: &str,
        corpid: &str,
        event: WecomAuthEvent,
        push: bool,
    ) -> Result<WecomAuthRecord, WecomError> {
        auth_event(self.shared(), suite_id, corpid, event, push).await
    }

    /// Creates `n` corps authorizing the suite at once, without pushes or auth codes, and
    /// returns them with their permanent codes: corpids `wwa` + 15 decimal digits, counting
    /// on from the suite's previous bulk creation (skipping corpids taken already). At most
    /// [`MAX_WECOM_BULK_CORPS`] per suite in total.
    pub fn wecom_bulk_authorize(
        &self,
        suite_id: &str,
        n: u32,
    ) -> Result<Vec<WecomBulkCorp>, WecomError> {
        let mut inner = self.shared().wecom.lock();
        let Inner { suites, corps, .. } = &mut *inner;
        let suite = suites
            .get_mut(suite_id)
            .ok_or_else(|| WecomError::UnknownSuite(suite_id.to_string()))?;
        if suite.bulk_created.saturating_add(n) > MAX_WECOM_BULK_CORPS {
            return Err(WecomError::TooMany);
        }
        suite.bulk_created += n;
        let suite_arc = Arc::clone(&suite.suite_id);
        let mut out = Vec::with_capacity(n as usize);
        while out.len() < n as usize {
            let corpid = format!("{BULK_PREFIX}{:015}", suite.bulk_next);
            suite.bulk_next += 1;
            if suite.auths.contains_key(&corpid) || corps.contains_key(&corpid) {
                continue;
            }
            let permanent_code = wire::random_token(PERMANENT_CODE_LEN);
            suite.order.push(corpid.clone());
            suite.auths.insert(
                corpid.clone(),
                Auth {
                    authorized: true,
                    permanent_code: permanent_code.clone(),
                },
            );
            out.push(WecomBulkCorp {
                corpid,
                permanent_code,
            });
        }
        for c in &out {
            inner.ensure_suite_app(&c.corpid, &suite_arc);
        }
        Ok(out)
    }

    /// Test fault: the corp's permanent code for the suite changes silently (a stored one
    /// answers 40084); returns the new one. Tokens stay valid.
    pub fn rotate_wecom_permanent_code(
        &self,
        suite_id: &str,
        corpid: &str,
    ) -> Result<String, WecomError> {
        let mut inner = self.shared().wecom.lock();
        let suite = inner
            .suites
            .get_mut(suite_id)
            .ok_or_else(|| WecomError::UnknownSuite(suite_id.to_string()))?;
        match suite.auths.get_mut(corpid) {
            Some(a) if a.authorized => {
                a.permanent_code = wire::random_token(PERMANENT_CODE_LEN);
                Ok(a.permanent_code.clone())
            }
            _ => Err(WecomError::NotAuthorized {
                suite_id: suite_id.to_string(),
                corpid: corpid.to_string(),
            }),
        }
    }

    /// Early invalidation of the suite access token: it answers 40082 from now on and the
    /// next `get_suite_token` issues a new one.
    pub fn revoke_wecom_suite_token(&self, suite_id: &str) -> Result<(), WecomError> {
        let mut inner = self.shared().wecom.lock();
        let suite = inner
            .suites
            .get_mut(suite_id)
            .ok_or_else(|| WecomError::UnknownSuite(suite_id.to_string()))?;
        if let Some(t) = suite.token.take() {
            if let Some(e) = inner.suite_tokens.get_mut(&t) {
                e.revoked = true;
            }
        }
        Ok(())
    }

    /// Makes the next `times` calls of a suite endpoint attributed to the suite answer
    /// `errcode` (e.g. -1) before any check.
    pub fn fail_wecom_suite_endpoint(
        &self,
        suite_id: &str,
        endpoint: WecomEndpoint,
        errcode: i64,
        times: u32,
    ) -> Result<(), WecomError> {
        if times == 0 {
            return Err(WecomError::ZeroTimes);
        }
        if endpoint.is_corp_endpoint() {
            return Err(WecomError::WrongEndpoint(endpoint));
        }
        let mut inner = self.shared().wecom.lock();
        let suite = inner
            .suites
            .get_mut(suite_id)
            .ok_or_else(|| WecomError::UnknownSuite(suite_id.to_string()))?;
        suite
            .scripted
            .extend(std::iter::repeat_n((endpoint, errcode), times as usize));
        Ok(())
    }
}

/// A JSON object body, or `None`.
fn object(body: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
}

/// `POST /cgi-bin/service/get_suite_token {suite_id, suite_secret, suite_ticket}`
pub(super) async fn get_suite_token(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let ip = peer.ip();
    let at = shared.clock.now();
    let body = object(&body);
    let suite_id = body.as_ref().and_then(|b| str_field(b, "suite_id"));
    let result = {
        let mut inner = shared.wecom.lock();
        let result = suite_token_rules(&mut inner, &shared, at, body.as_ref(), suite_id.as_deref());
        if let Some(s) = suite_id.as_deref().and_then(|id| inner.suites.get_mut(id)) {
            s.ev.get_suite_token.add(result_outcome(&result));
        }
        result
    };
    match result {
        Ok((token, left, _)) => ok(json!({
            "suite_access_token": token,
            "expires_in": wire::wire_secs(left),
        })),
        Err((code, _)) => err(code, ip),
    }
}

/// An answer: `Ok((token, remaining, new))` or `Err((errcode, scripted))`.
type Answer = Result<(String, std::time::Duration, bool), (i64, bool)>;

fn result_outcome(result: &Answer) -> Outcome {
    match result {
        Ok((_, _, true)) => Outcome::New,
        Ok((_, _, false)) => Outcome::Same,
        Err((code, true)) => Outcome::Scripted(*code),
        Err((code, false)) => Outcome::Err(*code),
    }
}

fn suite_token_rules(
    inner: &mut Inner,
    shared: &Shared,
    at: Instant,
    body: Option<&Value>,
    suite_id: Option<&str>,
) -> Answer {
    if let Some(s) = suite_id.and_then(|id| inner.suites.get_mut(id)) {
        if let Some(code) = take_scripted(&mut s.scripted, WecomEndpoint::GetSuiteToken) {
            return Err((code, true));
        }
    }
    let rule = |code| Err((code, false));
    let Some(body) = body else {
        return rule(errcode::DATA_FORMAT_ERROR);
    };
    let Some(suite_id) = suite_id else {
        return rule(errcode::SUITE_ID_MISSING);
    };
    let Some(suite) = inner.suites.get_mut(suite_id) else {
        return rule(errcode::INVALID_SUITE_ID);
    };
    let Some(secret) = str_field(body, "suite_secret") else {
        return rule(errcode::SUITE_SECRET_MISSING);
    };
    if secret != suite.secret {
        return rule(errcode::INVALID_SECRET);
    }
    let Some(ticket) = str_field(body, "suite_ticket") else {
        return rule(errcode::SUITE_TICKET_MISSING);
    };
    let lifetime = shared.timing.suite_ticket_lifetime;
    let fresh = suite
        .tickets
        .get(&ticket)
        .is_some_and(|&pushed| pushed.checked_add(lifetime).is_some_and(|end| at < end));
    if !fresh {
        return rule(errcode::INVALID_SUITE_TICKET);
    }
    if let Some(current) = suite.token.clone() {
        if let Some(e) = inner.suite_tokens.get(&current) {
            if e.check(at).is_ok() {
                return Ok((
                    current.to_string(),
                    e.expires_at.saturating_duration_since(at),
                    false,
                ));
            }
        }
    }
    let token = inner.fresh(wire::ACCESS_TOKEN_LEN);
    let Some(suite) = inner.suites.get_mut(suite_id) else {
        return rule(errcode::INVALID_SUITE_ID);
    };
    suite.token = Some(Arc::clone(&token));
    let lifetime = shared.timing.expires_in;
    inner.suite_tokens.insert(
        Arc::clone(&token),
        SuiteToken {
            suite_id: Arc::clone(&suite.suite_id),
            expires_at: at + lifetime,
            revoked: false,
        },
    );
    tracing::debug!(%suite_id, prefix = %wire::prefix(&token), "wecom suite token issued");
    Ok((token.to_string(), lifetime, true))
}

/// `Ok(())` or `Err((errcode, scripted))`.
type Checked = Result<(), (i64, bool)>;

/// The suite of a call's `suite_access_token` after the checks every suite API makes
/// (scripted errcode, 41022, 40082, 42009, 47001).
fn suite_of_token(
    inner: &mut Inner,
    at: Instant,
    token: Option<&str>,
    body: Option<&Value>,
    endpoint: WecomEndpoint,
) -> (Option<Arc<str>>, Checked) {
    let Some(token) = token else {
        return (None, Err((errcode::SUITE_TOKEN_MISSING, false)));
    };
    let Some((suite_id, valid)) = inner.suite_token_owner(token, at) else {
        return (None, Err((errcode::INVALID_SUITE_TOKEN, false)));
    };
    if let Some(s) = inner.suites.get_mut(suite_id.as_ref()) {
        if let Some(code) = take_scripted(&mut s.scripted, endpoint) {
            return (Some(suite_id), Err((code, true)));
        }
    }
    if let Err(code) = valid {
        return (Some(suite_id), Err((code, false)));
    }
    if body.is_none() {
        return (Some(suite_id), Err((errcode::DATA_FORMAT_ERROR, false)));
    }
    (Some(suite_id), Ok(()))
}

/// Records a suite endpoint's outcome on the suite and, for a token answer, on the corp's app.
fn record_suite_call(
    inner: &mut Inner,
    suite_id: Option<&str>,
    endpoint: WecomEndpoint,
    result: &Answer,
    app: Option<(&str, usize)>,
) {
    let outcome = result_outcome(result);
    if let Some(s) = suite_id.and_then(|id| inner.suites.get_mut(id)) {
        match endpoint {
            WecomEndpoint::GetPermanentCode => s.ev.get_permanent_code.add(outcome),
            _ => s.ev.get_corp_token.add(outcome),
        }
    }
    if let (Ok(_), Some((corpid, app))) = (result, app) {
        if let Some(a) = inner
            .corps
            .get_mut(corpid)
            .and_then(|c| c.apps.get_mut(app))
        {
            a.ev.corp_token.add(outcome);
        }
    }
}

/// `POST /cgi-bin/service/get_permanent_code?suite_access_token=.. {auth_code}`
pub(super) async fn get_permanent_code(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let ip: IpAddr = peer.ip();
    let at = shared.clock.now();
    let token = query_param(query.as_deref(), "suite_access_token");
    let body = object(&body);
    let mut inner = shared.wecom.lock();
    let endpoint = WecomEndpoint::GetPermanentCode;
    let (suite_id, checked) =
        suite_of_token(&mut inner, at, token.as_deref(), body.as_ref(), endpoint);
    let mut exchanged: Option<(String, String, usize)> = None;
    let result: Answer = checked.and_then(|()| {
        let suite_id = suite_id
            .as_deref()
            .ok_or((errcode::INVALID_SUITE_TOKEN, false))?;
        let code = body
            .as_ref()
            .and_then(|b| str_field(b, "auth_code"))
            .ok_or((errcode::AUTH_CODE_MISSING, false))?;
        let suite = inner
            .suites
            .get_mut(suite_id)
            .ok_or((errcode::INVALID_SUITE_TOKEN, false))?;
        let invalid = (errcode::INVALID_AUTH_CODE, false);
        let entry = suite.codes.get_mut(&code).ok_or(invalid)?;
        if entry.used || at >= entry.expires_at {
            return Err(invalid);
        }
        entry.used = true;
        let corpid = entry.corpid.clone();
        let auth = suite
            .auths
            .get(&corpid)
            .filter(|a| a.authorized)
            .ok_or(invalid)?;
        let permanent_code = auth.permanent_code.clone();
        let suite_arc = Arc::clone(&suite.suite_id);
        let app = inner.ensure_suite_app(&corpid, &suite_arc);
        let (token, left, new) = inner
            .app_token(&corpid, app, shared.timing.expires_in, at)
            .ok_or(invalid)?;
        exchanged = Some((corpid, permanent_code, app));
        Ok((token, left, new))
    });
    let app = exchanged.as_ref().map(|(c, _, a)| (c.as_str(), *a));
    // The exchange itself is what `new` counts on the suite.
    let suite_result: Answer = match &result {
        Ok((t, l, _)) => Ok((t.clone(), *l, true)),
        Err(e) => Err(*e),
    };
    if let Some(s) = suite_id.as_deref().and_then(|id| inner.suites.get_mut(id)) {
        s.ev.get_permanent_code.add(result_outcome(&suite_result));
    }
    record_suite_call(&mut inner, None, endpoint, &result, app);
    let agentid = app
        .and_then(|(c, a)| inner.corps.get(c).and_then(|c| c.apps.get(a)))
        .map(|a| a.agentid);
    drop(inner);
    match (result, exchanged) {
        (Ok((token, left, _)), Some((corpid, permanent_code, _))) => ok(json!({
            "errcode": 0,
            "errmsg": "ok",
            "access_token": token,
            "expires_in": wire::wire_secs(left),
            "permanent_code": permanent_code,
            "auth_corp_info": {
                "corpid": corpid,
                "corp_name": corpid,
                "corp_type": "verified",
                "corp_user_max": 200,
            },
            "auth_info": { "agent": [{ "agentid": agentid, "name": "simulated app", "auth_mode": 0 }] },
            "auth_user_info": { "userid": "admin" },
        })),
        (Err((code, _)), _) => err(code, ip),
        (Ok(_), None) => err(errcode::INVALID_AUTH_CODE, ip),
    }
}

/// `POST /cgi-bin/service/get_corp_token?suite_access_token=.. {auth_corpid, permanent_code}`
pub(super) async fn get_corp_token(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let ip = peer.ip();
    let at = shared.clock.now();
    let token = query_param(query.as_deref(), "suite_access_token");
    let body = object(&body);
    let mut inner = shared.wecom.lock();
    let endpoint = WecomEndpoint::GetCorpToken;
    let (suite_id, checked) =
        suite_of_token(&mut inner, at, token.as_deref(), body.as_ref(), endpoint);
    let mut app = None;
    let result: Answer = checked.and_then(|()| {
        let suite_id = suite_id
            .as_deref()
            .ok_or((errcode::INVALID_SUITE_TOKEN, false))?;
        let field = |name| body.as_ref().and_then(|b| str_field(b, name));
        let corpid = field("auth_corpid").ok_or((errcode::CORPID_MISSING, false))?;
        let code = field("permanent_code").ok_or((errcode::PERMANENT_CODE_MISSING, false))?;
        let invalid = (errcode::INVALID_PERMANENT_CODE, false);
        let suite = inner.suites.get(suite_id).ok_or(invalid)?;
        let auth = suite
            .auths
            .get(&corpid)
            .filter(|a| a.authorized)
            .ok_or(invalid)?;
        if auth.permanent_code != code {
            return Err(invalid);
        }
        let suite_arc = Arc::clone(&suite.suite_id);
        let i = inner.ensure_suite_app(&corpid, &suite_arc);
        let answer = inner
            .app_token(&corpid, i, shared.timing.expires_in, at)
            .ok_or(invalid)?;
        app = Some((corpid, i));
        Ok(answer)
    });
    record_suite_call(
        &mut inner,
        suite_id.as_deref(),
        endpoint,
        &result,
        app.as_ref().map(|(c, i)| (c.as_str(), *i)),
    );
    drop(inner);
    match result {
        Ok((token, left, _)) => ok(json!({
            "access_token": token,
            "expires_in": wire::wire_secs(left),
        })),
        Err((code, _)) => err(code, ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_xml_has_wecom_fields() {
        let x = event_xml("wws", "wwc", WecomAuthEvent::CreateAuth, Some("code"), 42);
        assert!(
            x.contains("<SuiteId><![CDATA[wws]]></SuiteId><AuthCode><![CDATA[code]]></AuthCode>")
        );
        assert!(x.contains("<InfoType><![CDATA[create_auth]]></InfoType><TimeStamp>42</TimeStamp>"));
        let c = event_xml("wws", "wwc", WecomAuthEvent::CancelAuth, None, 42);
        assert!(c.contains("<InfoType><![CDATA[cancel_auth]]></InfoType>"));
        assert!(c.ends_with("<AuthCorpId><![CDATA[wwc]]></AuthCorpId></xml>"));
    }
}
