//! Third-party platforms (第三方平台, "components"): the `component_verify_ticket` push and
//! the component access token.
//!
//! - Every component with a `push_url` gets a background pusher: at start and then every
//!   [`crate::Timing::ticket_push_interval`] of simulator time (it wakes at once when the clock
//!   is advanced past the next push), it POSTs an encrypted `component_verify_ticket` there,
//!   exactly as WeChat does: query `timestamp, nonce, encrypt_type=aes, msg_signature,
//!   signature`, body `<xml><AppId/><Encrypt/></xml>`. Each genuine push carries a new ticket,
//!   valid for [`crate::Timing::verify_ticket_lifetime`] (12 h). The receiver must answer the
//!   bare body `success`; the simulator records what it answered (no retries).
//! - `POST /cgi-bin/component/api_start_push_ticket` pushes at once (in a background task).
//! - `POST /cgi-bin/component/api_component_token` trades a valid ticket for a component
//!   access token. Every fetch issues a new token; the previous one stays valid for
//!   [`crate::Timing::overlap`] (like classic tokens).
//! - [`Admin::push_ticket`] pushes on demand; [`Admin::push_tampered`] sends a [`Tamper`]ed
//!   push (bad signature, garbled ciphertext, or a replay of the last genuine push). Tampered
//!   pushes never register a ticket.
//!
//! Counters and records are separate from [`crate::Endpoint`] / [`crate::Evidence`] (whose
//! enums are matched exhaustively elsewhere): see [`Admin::component_evidence`].
//!
//! Must not: put secrets, whole tickets or whole tokens into evidence or logs (8-character
//! prefixes only), or hold the state lock across network I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use wxtoken_crypto::{EncodingAesKey, MsgCrypt, Recipient};

use crate::admin::Admin;
use crate::config::{ComponentConfig, SimConfig};
use crate::errcode;
use crate::evidence::FetchOutcome;
use crate::state::{Now, Shared};
use crate::wire::{self, WxReply};

/// How long a push waits for the receiver's answer (real time).
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Every ticket starts with this (like WeChat's); evidence shows the 8 characters after it.
const TICKET_PREFIX: &str = "ticket@@@";

/// Largest receiver answer the simulator reads.
const MAX_ANSWER: usize = 4096;

/// A deliberately broken push, sent by [`Admin::push_tampered`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tamper {
    /// A fresh push whose `msg_signature` query parameter is wrong (one hex digit changed).
    BadSignature,
    /// A fresh push whose `<Encrypt>` is cut short (not a whole number of AES blocks) but
    /// correctly signed: signature checks pass, decryption fails.
    BadCiphertext,
    /// The last genuine push again, byte for byte (same timestamp, nonce, signature, body).
    Replay,
}

/// What caused a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushTrigger {
    /// The periodic schedule (including the first push at start).
    Schedule,
    /// `POST /cgi-bin/component/api_start_push_ticket`.
    StartPushTicket,
    /// [`Admin::push_ticket`] or [`Admin::push_tampered`].
    Admin,
}

/// One push and what the receiver answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRecord {
    /// Simulator time since start when the push was built, in ms.
    pub since_start_ms: u64,
    /// What caused it.
    pub trigger: PushTrigger,
    /// `None` for a genuine push.
    pub tamper: Option<Tamper>,
    /// 8 characters of the ticket it carried, after its constant `ticket@@@` start (`None` for tampered pushes, whose ticket
    /// is never valid, and replays).
    pub ticket_prefix: Option<String>,
    /// The receiver's HTTP status, if it answered at all.
    pub status: Option<u16>,
    /// Whether it answered HTTP 200 with the bare body `success`.
    pub success: bool,
    /// Why there was no answer (connection refused, timeout, ...).
    pub error: Option<String>,
}

/// Which component endpoint a [`ComponentFetchRecord`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentEndpoint {
    /// `POST /cgi-bin/component/api_component_token`.
    ComponentToken,
    /// `POST /cgi-bin/component/api_start_push_ticket`.
    StartPushTicket,
}

/// One call of a component endpoint by a known component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentFetchRecord {
    /// Simulator time since start, in ms.
    pub since_start_ms: u64,
    /// Which endpoint.
    pub endpoint: ComponentEndpoint,
    /// What it answered (`Issued` with `expires_in: 0` for an `ok` of start-push-ticket).
    pub outcome: FetchOutcome,
}

/// Counters of one component.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentCounts {
    /// `api_component_token` calls attributed to the component (answered with anything).
    pub component_token: u64,
    /// Of those, the ones that issued a token.
    pub component_token_issued: u64,
    /// `api_start_push_ticket` calls attributed to the component.
    pub start_push_ticket: u64,
    /// Pushes sent (genuine and tampered).
    pub pushes: u64,
    /// Pushes the receiver answered with `success`.
    pub pushes_acknowledged: u64,
}

/// What happened to one component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentEvidence {
    /// The component appid.
    pub appid: String,
    /// Every push, in order.
    pub pushes: Vec<PushRecord>,
    /// Every endpoint call, in order.
    pub fetches: Vec<ComponentFetchRecord>,
    /// Counters.
    pub counts: ComponentCounts,
}

/// Why a component admin operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComponentError {
    /// No component with this appid exists.
    #[error("unknown component appid {0}")]
    UnknownComponent(String),
    /// The component has no `push_url`.
    #[error("component {0} has no push_url")]
    NoPushUrl(String),
    /// [`Tamper::Replay`] before any genuine push.
    #[error("component {0} has no genuine push to replay yet")]
    NothingToReplay(String),
    /// A scripted failure with `times == 0` would never apply.
    #[error("times must be at least 1")]
    ZeroTimes,
    /// The push could not be built (should not happen with a validated config).
    #[error("cannot build the push: {0}")]
    Crypto(String),
}

struct TokenLife {
    expires_at: Instant,
    replaced_at: Option<Instant>,
}

struct ComponentState {
    secret: String,
    push_url: Option<String>,
    crypt: Arc<MsgCrypt>,
    /// Ticket → when it was pushed.
    tickets: HashMap<String, Instant>,
    current_token: Option<Arc<str>>,
    tokens: HashMap<Arc<str>, TokenLife>,
    quota_day: u64,
    quota_used: u32,
    /// The last genuine push: (query string, body), for [`Tamper::Replay`].
    last_push: Option<(String, String)>,
    next_push_at: Instant,
    pushes: Vec<PushRecord>,
    fetches: Vec<ComponentFetchRecord>,
    counts: ComponentCounts,
    /// Scripted errcodes for the next `api_component_token` calls.
    scripted: VecDeque<i64>,
}

/// All components of a simulator.
pub(crate) struct Components {
    map: Mutex<HashMap<String, ComponentState>>,
    http: reqwest::Client,
}

impl Components {
    pub(crate) fn new(config: &SimConfig, start: Instant) -> Components {
        let mut map = HashMap::new();
        for c in &config.components {
            match state_of(c, start) {
                Some(state) => {
                    map.insert(c.appid.clone(), state);
                }
                None => tracing::warn!(appid = %c.appid, "invalid component config ignored"),
            }
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(PUSH_TIMEOUT)
            .build()
            .unwrap_or_default();
        Components {
            map: Mutex::new(map),
            http,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, ComponentState>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where and how a component's pushes go: its `push_url` and message crypto.
    pub(crate) fn push_target(
        &self,
        appid: &str,
    ) -> Result<(String, Arc<MsgCrypt>), ComponentError> {
        let map = self.lock();
        let state = map
            .get(appid)
            .ok_or_else(|| ComponentError::UnknownComponent(appid.to_string()))?;
        let url = state
            .push_url
            .clone()
            .ok_or_else(|| ComponentError::NoPushUrl(appid.to_string()))?;
        Ok((url, Arc::clone(&state.crypt)))
    }

    /// The client pushes are sent with.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The component a component access token was issued to, and whether it is valid at
    /// `at`: `Ok(())`, or 40001 (replaced past its overlap) / 42001 (expired). `None` for a
    /// string that is no component token.
    pub(crate) fn check_token(
        &self,
        token: &str,
        at: Instant,
        overlap: Duration,
    ) -> Option<(String, Result<(), i64>)> {
        let map = self.lock();
        map.iter().find_map(|(appid, s)| {
            let life = s.tokens.get(token)?;
            let overlap_end = life
                .replaced_at
                .map(|r| r.checked_add(overlap).unwrap_or(r));
            let result = match overlap_end {
                Some(end) if end < life.expires_at && at >= end => Err(errcode::INVALID_CREDENTIAL),
                _ if at >= life.expires_at => Err(errcode::ACCESS_TOKEN_EXPIRED),
                _ => Ok(()),
            };
            Some((appid.clone(), result))
        })
    }

    fn push_appids(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, s)| s.push_url.is_some())
            .map(|(a, _)| a.clone())
            .collect()
    }
}

fn state_of(c: &ComponentConfig, start: Instant) -> Option<ComponentState> {
    let key = EncodingAesKey::parse(&c.encoding_aes_key).ok()?;
    let crypt = MsgCrypt::new(
        SecretString::from(c.token.clone()),
        key,
        None,
        c.appid.clone(),
    );
    Some(ComponentState {
        secret: c.secret.clone(),
        push_url: c.push_url.clone(),
        crypt: Arc::new(crypt),
        tickets: HashMap::new(),
        current_token: None,
        tokens: HashMap::new(),
        quota_day: 0,
        quota_used: 0,
        last_push: None,
        next_push_at: start,
        pushes: Vec::new(),
        fetches: Vec::new(),
        counts: ComponentCounts::default(),
        scripted: VecDeque::new(),
    })
}

/// Starts one pusher per component with a `push_url`; dropping the set stops them.
pub(crate) fn spawn_pushers(shared: &Arc<Shared>) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for appid in shared.components.push_appids() {
        set.spawn(pusher(Arc::clone(shared), appid));
    }
    set
}

async fn pusher(shared: Arc<Shared>, appid: String) {
    loop {
        let next = match shared.components.lock().get(&appid) {
            Some(s) => s.next_push_at,
            None => return,
        };
        shared.clock.sleep_until(Some(next)).await;
        let now = shared.clock.now();
        let interval = shared.timing.ticket_push_interval;
        if let Some(s) = shared.components.lock().get_mut(&appid) {
            // One push however far the clock jumped (WeChat does not catch up).
            s.next_push_at = now.checked_add(interval).unwrap_or(now);
        }
        if let Err(e) = push(&shared, &appid, PushTrigger::Schedule, None).await {
            tracing::warn!(%appid, error = %e, "scheduled ticket push not sent");
        }
    }
}

/// Builds and sends one push and records the receiver's answer.
pub(crate) async fn push(
    shared: &Shared,
    appid: &str,
    trigger: PushTrigger,
    tamper: Option<Tamper>,
) -> Result<PushRecord, ComponentError> {
    let now = shared.now();
    let (url, query, body, ticket_prefix) = {
        let mut map = shared.components.lock();
        let state = map
            .get_mut(appid)
            .ok_or_else(|| ComponentError::UnknownComponent(appid.to_string()))?;
        let url = state
            .push_url
            .clone()
            .ok_or_else(|| ComponentError::NoPushUrl(appid.to_string()))?;
        if tamper == Some(Tamper::Replay) {
            let (query, body) = state
                .last_push
                .clone()
                .ok_or_else(|| ComponentError::NothingToReplay(appid.to_string()))?;
            (url, query, body, None)
        } else {
            let (query, body, ticket) = build_push(&state.crypt, appid, &now, tamper)?;
            let prefix = wire::prefix(ticket.trim_start_matches(TICKET_PREFIX));
            if tamper.is_none() {
                state.tickets.insert(ticket, now.at);
                state.last_push = Some((query.clone(), body.clone()));
                (url, query, body, Some(prefix))
            } else {
                (url, query, body, None)
            }
        }
    };

    let (status, success, error) = send(&shared.components.http, &url, &query, body).await;
    let record = PushRecord {
        since_start_ms: now.since_start_ms,
        trigger,
        tamper,
        ticket_prefix,
        status,
        success,
        error,
    };
    if let Some(state) = shared.components.lock().get_mut(appid) {
        state.counts.pushes += 1;
        if success {
            state.counts.pushes_acknowledged += 1;
        }
        state.pushes.push(record.clone());
    }
    tracing::debug!(%appid, ?trigger, ?tamper, success, "component_verify_ticket pushed");
    Ok(record)
}

/// (query string, body, ticket) of a push; the ticket is only valid if `tamper` is `None`.
fn build_push(
    crypt: &MsgCrypt,
    appid: &str,
    now: &Now,
    tamper: Option<Tamper>,
) -> Result<(String, String, String), ComponentError> {
    let crypto_err = |e: wxtoken_crypto::CryptoError| ComponentError::Crypto(e.to_string());
    let ticket = format!("{TICKET_PREFIX}{}", wire::random_token(wire::TICKET_LEN));
    let create_time = now.unix_ms / 1000;
    let msg = format!(
        "<xml><AppId><![CDATA[{appid}]]></AppId><CreateTime>{create_time}</CreateTime>\
         <InfoType><![CDATA[component_verify_ticket]]></InfoType>\
         <ComponentVerifyTicket><![CDATA[{ticket}]]></ComponentVerifyTicket></xml>"
    );
    let timestamp = create_time.to_string();
    let nonce = format!("{}", rand::random::<u32>());
    let (body, mut msg_signature) = if tamper == Some(Tamper::BadCiphertext) {
        let mut encrypt = crypt.encrypt(&msg).map_err(crypto_err)?;
        // Drop the padding and the last base64 quantum: 1–3 bytes fewer than a whole number
        // of AES blocks, so decryption must fail whatever the receiver does.
        let trimmed = encrypt.trim_end_matches('=').len();
        encrypt.truncate(trimmed.saturating_sub(4));
        let sig = crypt.msg_signature(&timestamp, &nonce, &encrypt);
        (
            format!(
                "<xml><AppId><![CDATA[{appid}]]></AppId><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
            ),
            sig,
        )
    } else {
        let push = crypt
            .push(&msg, Recipient::AppId(appid), &timestamp, &nonce)
            .map_err(crypto_err)?;
        (push.body, push.msg_signature)
    };
    if tamper == Some(Tamper::BadSignature) {
        msg_signature = flip_hex(&msg_signature);
    }
    let query = push_query(crypt, &timestamp, &nonce, &msg_signature);
    Ok((query, body, ticket))
}

/// A genuine encrypted push of `msg` to a component, as WeChat sends every event to the
/// authorization event URL: (query string, body).
pub(crate) fn seal(
    crypt: &MsgCrypt,
    appid: &str,
    msg: &str,
    create_time: u64,
) -> Result<(String, String), ComponentError> {
    let timestamp = create_time.to_string();
    let nonce = format!("{}", rand::random::<u32>());
    let push = crypt
        .push(msg, Recipient::AppId(appid), &timestamp, &nonce)
        .map_err(|e| ComponentError::Crypto(e.to_string()))?;
    let query = push_query(crypt, &timestamp, &nonce, &push.msg_signature);
    Ok((query, push.body))
}

/// `signature, timestamp, nonce, encrypt_type=aes, msg_signature`.
fn push_query(crypt: &MsgCrypt, timestamp: &str, nonce: &str, msg_signature: &str) -> String {
    let signature = crypt.signature(timestamp, nonce);
    form_urlencoded::Serializer::new(String::new())
        .append_pair("signature", &signature)
        .append_pair("timestamp", timestamp)
        .append_pair("nonce", nonce)
        .append_pair("encrypt_type", "aes")
        .append_pair("msg_signature", msg_signature)
        .finish()
}

/// The same hex string with its first digit changed.
fn flip_hex(s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    if let Some(c) = chars.first_mut() {
        *c = if *c == '0' { '1' } else { '0' };
    }
    chars.into_iter().collect()
}

/// POSTs a push; (status, answered `success`, transport error).
pub(crate) async fn send(
    http: &reqwest::Client,
    url: &str,
    query: &str,
    body: String,
) -> (Option<u16>, bool, Option<String>) {
    let mut url = match reqwest::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return (None, false, Some(format!("bad push_url: {e}"))),
    };
    let joined = match url.query() {
        Some(q) if !q.is_empty() => format!("{q}&{query}"),
        _ => query.to_string(),
    };
    url.set_query(Some(&joined));
    let sent = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "text/xml")
        .body(body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => return (None, false, Some(e.without_url().to_string())),
    };
    let status = resp.status();
    match resp.bytes().await {
        Ok(bytes) => {
            let answer = bytes.get(..MAX_ANSWER.min(bytes.len())).unwrap_or(&[]);
            (
                Some(status.as_u16()),
                status.is_success() && answer == b"success",
                None,
            )
        }
        Err(e) => (
            Some(status.as_u16()),
            false,
            Some(e.without_url().to_string()),
        ),
    }
}

/// A non-empty string field of a JSON body.
pub(crate) fn str_field(v: &Value, name: &str) -> Option<String> {
    v.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Checks appid and secret; Ok(appid) or the errcode, with the appid if known (for evidence).
fn check_credentials(
    map: &HashMap<String, ComponentState>,
    appid: Option<&str>,
    secret: Option<&str>,
) -> Result<(), i64> {
    let appid = appid.ok_or(errcode::APPID_MISSING)?;
    let state = map.get(appid).ok_or(errcode::INVALID_APPID)?;
    let secret = secret.ok_or(errcode::APPSECRET_MISSING)?;
    if secret != state.secret {
        let looks_like_secret = secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_hexdigit());
        return Err(if looks_like_secret {
            errcode::INVALID_CREDENTIAL
        } else {
            errcode::INVALID_APPSECRET
        });
    }
    Ok(())
}

fn record(
    state: Option<&mut ComponentState>,
    endpoint: ComponentEndpoint,
    outcome: FetchOutcome,
    now: &Now,
) {
    let Some(state) = state else { return };
    match endpoint {
        ComponentEndpoint::ComponentToken => {
            state.counts.component_token += 1;
            if matches!(outcome, FetchOutcome::Issued { .. }) {
                state.counts.component_token_issued += 1;
            }
        }
        ComponentEndpoint::StartPushTicket => state.counts.start_push_ticket += 1,
    }
    state.fetches.push(ComponentFetchRecord {
        since_start_ms: now.since_start_ms,
        endpoint,
        outcome,
    });
}

/// `POST /cgi-bin/component/api_start_push_ticket` `{component_appid, component_secret}`.
pub(crate) async fn start_push_ticket(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let now = shared.now();
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return WxReply::err(errcode::DATA_FORMAT_ERROR).into_response();
    };
    let appid = str_field(&v, "component_appid");
    let secret = str_field(&v, "component_secret");
    let reply = {
        let mut map = shared.components.lock();
        let checked = check_credentials(&map, appid.as_deref(), secret.as_deref());
        let outcome = match checked {
            Ok(()) => FetchOutcome::Issued {
                token_prefix: String::new(),
                reused: false,
                expires_in: 0,
            },
            Err(errcode) => FetchOutcome::Error { errcode },
        };
        let state = appid.as_deref().and_then(|a| map.get_mut(a));
        record(state, ComponentEndpoint::StartPushTicket, outcome, &now);
        checked
    };
    match (reply, appid) {
        (Ok(()), Some(appid)) => {
            let task_shared = Arc::clone(&shared);
            tokio::spawn(async move {
                if let Err(e) = push(&task_shared, &appid, PushTrigger::StartPushTicket, None).await
                {
                    tracing::info!(%appid, error = %e, "api_start_push_ticket: no push sent");
                }
            });
            WxReply::Ok(json!({ "errcode": 0, "errmsg": "ok" })).into_response()
        }
        (Err(code), _) => WxReply::err(code).into_response(),
        (Ok(()), None) => WxReply::err(errcode::APPID_MISSING).into_response(),
    }
}

/// `POST /cgi-bin/component/api_component_token`
/// `{component_appid, component_appsecret, component_verify_ticket}`.
pub(crate) async fn component_token(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let now = shared.now();
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return WxReply::err(errcode::DATA_FORMAT_ERROR).into_response();
    };
    let appid = str_field(&v, "component_appid");
    let secret = str_field(&v, "component_appsecret");
    let ticket = str_field(&v, "component_verify_ticket");
    let mut map = shared.components.lock();
    let result = component_token_rules(
        &mut map,
        &shared,
        &now,
        appid.as_deref(),
        secret.as_deref(),
        ticket.as_deref(),
    );
    let (outcome, reply) = match result {
        Ok((token, expires_in)) => (
            FetchOutcome::Issued {
                token_prefix: wire::prefix(&token),
                reused: false,
                expires_in,
            },
            WxReply::Ok(json!({
                "component_access_token": &*token,
                "expires_in": expires_in,
            })),
        ),
        Err(errcode) => (FetchOutcome::Error { errcode }, WxReply::err(errcode)),
    };
    let state = appid.as_deref().and_then(|a| map.get_mut(a));
    record(state, ComponentEndpoint::ComponentToken, outcome, &now);
    reply.into_response()
}

/// The rules in order: scripted errcode, credentials, ticket (61006 unknown, 61005 expired),
/// daily quota; then a new token replaces the current one.
fn component_token_rules(
    map: &mut HashMap<String, ComponentState>,
    shared: &Shared,
    now: &Now,
    appid: Option<&str>,
    secret: Option<&str>,
    ticket: Option<&str>,
) -> Result<(Arc<str>, u64), i64> {
    if let Some(state) = appid.and_then(|a| map.get_mut(a)) {
        if let Some(code) = state.scripted.pop_front() {
            return Err(code);
        }
    }
    check_credentials(map, appid, secret)?;
    let state = appid
        .and_then(|a| map.get_mut(a))
        .ok_or(errcode::INVALID_APPID)?;
    let pushed_at = ticket
        .and_then(|t| state.tickets.get(t))
        .copied()
        .ok_or(errcode::COMPONENT_TICKET_INVALID)?;
    let expires = pushed_at
        .checked_add(shared.timing.verify_ticket_lifetime)
        .unwrap_or(pushed_at);
    if now.at >= expires {
        return Err(errcode::COMPONENT_TICKET_EXPIRED);
    }
    if state.quota_day != now.day {
        state.quota_day = now.day;
        state.quota_used = 0;
    }
    if state.quota_used >= shared.timing.component_token_daily_quota {
        return Err(errcode::DAILY_QUOTA);
    }
    state.quota_used += 1;
    let token: Arc<str> = Arc::from(wire::random_token(wire::ACCESS_TOKEN_LEN));
    if let Some(old) = state.current_token.take() {
        if let Some(life) = state.tokens.get_mut(&old) {
            life.replaced_at.get_or_insert(now.at);
        }
    }
    let lifetime = shared.timing.expires_in;
    state.tokens.insert(
        Arc::clone(&token),
        TokenLife {
            expires_at: now.at.checked_add(lifetime).unwrap_or(now.at),
            replaced_at: None,
        },
    );
    state.current_token = Some(Arc::clone(&token));
    Ok((token, wire::wire_secs(lifetime)))
}

impl Admin {
    /// Pushes a fresh `component_verify_ticket` to the component's `push_url` now and returns
    /// what the receiver answered (also recorded in [`Admin::component_evidence`]).
    pub async fn push_ticket(&self, component_appid: &str) -> Result<PushRecord, ComponentError> {
        push(self.shared(), component_appid, PushTrigger::Admin, None).await
    }

    /// Sends a [`Tamper`]ed push now (no ticket becomes valid through it).
    pub async fn push_tampered(
        &self,
        component_appid: &str,
        tamper: Tamper,
    ) -> Result<PushRecord, ComponentError> {
        push(
            self.shared(),
            component_appid,
            PushTrigger::Admin,
            Some(tamper),
        )
        .await
    }

    /// Pushes, endpoint calls and counters of a component; `None` for an unknown appid.
    pub fn component_evidence(&self, component_appid: &str) -> Option<ComponentEvidence> {
        let map = self.shared().components.lock();
        let state = map.get(component_appid)?;
        Some(ComponentEvidence {
            appid: component_appid.to_string(),
            pushes: state.pushes.clone(),
            fetches: state.fetches.clone(),
            counts: state.counts,
        })
    }

    /// Whether a component access token is valid now: `Ok(())`, or the errcode WeChat would
    /// answer (40001 unknown or replaced past its overlap, 42001 expired).
    pub fn check_component_token(&self, token: &str) -> Result<(), i64> {
        let shared = self.shared();
        shared
            .components
            .check_token(token, shared.clock.now(), shared.timing.overlap)
            .map_or(Err(errcode::INVALID_CREDENTIAL), |(_, result)| result)
    }

    /// Makes the next `times` `api_component_token` calls of the component answer `errcode`
    /// (e.g. -1) before any check; they do not charge quota.
    pub fn fail_component_token(
        &self,
        component_appid: &str,
        errcode: i64,
        times: u32,
    ) -> Result<(), ComponentError> {
        if times == 0 {
            return Err(ComponentError::ZeroTimes);
        }
        let mut map = self.shared().components.lock();
        let state = map
            .get_mut(component_appid)
            .ok_or_else(|| ComponentError::UnknownComponent(component_appid.to_string()))?;
        state
            .scripted
            .extend(std::iter::repeat_n(errcode, times as usize));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_hex_changes_first_digit_only() {
        assert_eq!(flip_hex("0abc"), "1abc");
        assert_eq!(flip_hex("fabc"), "0abc");
        assert_eq!(flip_hex(""), "");
    }
}
