//! WeCom (企业微信): app access tokens, the corp and agent JS-SDK tickets, a business API, and
//! third-party suites (服务商) with their `suite_ticket` pushes, suite tokens, permanent codes
//! and corp tokens.
//!
//! WeCom's real host is `qyapi.weixin.qq.com`. Its paths overlap WeChat's (`/cgi-bin/user/get`
//! is an Official Account API too, and so are many more), so the simulator serves WeCom under
//! the prefix **`/qyapi`** on the same listener: a client's WeCom base URL is
//! `<sim>/qyapi` ([`crate::Simulator::wecom_base_url`]), e.g.
//! `http://127.0.0.1:PORT/qyapi/cgi-bin/gettoken?corpid=..&corpsecret=..`.
//!
//! | path (under `/qyapi`) | what |
//! | --- | --- |
//! | `GET /cgi-bin/gettoken?corpid=&corpsecret=` | an app's access token |
//! | `GET /cgi-bin/get_jsapi_ticket?access_token=` | the corp's JS-SDK ticket (`wx.config`) |
//! | `GET /cgi-bin/ticket/get?access_token=&type=agent_config` | the app's ticket (`wx.agentConfig`) |
//! | `GET /cgi-bin/user/get?access_token=&userid=` | a business API that checks the token |
//! | `POST /cgi-bin/service/get_suite_token` | a suite access token for a pushed `suite_ticket` |
//! | `POST /cgi-bin/service/get_permanent_code?suite_access_token=` | a corp's permanent code for a temporary auth code |
//! | `POST /cgi-bin/service/get_corp_token?suite_access_token=` | an authorized corp's access token |
//!
//! Rules (WeCom's, as documented on developer.work.weixin.qq.com):
//!
//! - Every answer is HTTP 200 `application/json; charset=UTF-8`; errors are
//!   `{"errcode":N,"errmsg":"<text>, hint: [...], from ip: <ip>, more info at ..."}`.
//!   `gettoken`, the tickets, `get_permanent_code` and `user/get` carry `"errcode":0,"errmsg":"ok"`
//!   on success; `get_suite_token` and `get_corp_token` answer success *without* an errcode
//!   (WeCom: "因历史原因,该接口在调用失败时才返回errcode").
//! - **Same token while valid.** Each app (corp + secret) has one access token; `gettoken`
//!   returns it again, with the *remaining* `expires_in` (whole seconds, at least 1), until it
//!   expires after [`crate::Timing::expires_in`] or is invalidated early
//!   ([`Admin::revoke_wecom_token`], `cancel_auth`); then the next call issues a new one. There
//!   is no overlap: an invalidated token is refused at once (40014), an expired one 42001.
//!   The corp ticket (per corp), the agent ticket (per app), the suite access token (per
//!   suite) and corp tokens from `get_corp_token` (the same token as the corp app's) follow the
//!   same rule.
//! - `gettoken` checks, in order: a scripted errcode ([`Admin::fail_wecom_corp_endpoint`];
//!   never counted as a failure); an IP block (45009); 41002 / 41004 missing; 40013 unknown
//!   corpid; 40001 wrong secret of WeCom's shape (43 characters of `A-Z a-z 0-9 _ -`), else
//!   40091; 60020 the corp's trusted-IP switch is off ([`Admin::set_wecom_ip_trusted`]);
//!   45009 the app is set rate limited ([`Admin::set_wecom_rate_limited`]).
//! - **IP block**: [`crate::Timing::wecom_gettoken_failure_limit`] (2000) `gettoken` calls
//!   answered with an errcode by the rules (not scripted, not the block's own 45009) from one
//!   IP within any hour block that IP's `gettoken` calls for [`crate::Timing::wecom_ip_block`]
//!   (1 h), whatever the corp, answering 45009. Counted on the simulator clock.
//! - Tickets need a valid access token (41001 missing, 40014 unknown/revoked, 42001 expired),
//!   then 60020 (trusted-IP switch), then the hourly limits, counted over any hour of
//!   successful calls (a same-ticket answer counts too): `get_jsapi_ticket` at most
//!   [`crate::Timing::wecom_corp_ticket_hourly_limit`] (400) per corp and
//!   [`crate::Timing::wecom_agent_ticket_hourly_limit`] (100) per app, `ticket/get` at most
//!   100 per app; 45009 beyond. `ticket/get` without `type=agent_config` is 40058.
//! - `user/get` accepts any `userid` with a valid access token (41001, 40014, 42001, 60020,
//!   41009 missing userid) and counts accepted and refused calls per app.
//! - Suites: with a `push_url` (the command callback URL), a `suite_ticket` is POSTed there at
//!   start and every [`crate::Timing::suite_ticket_push_interval`] (10 min), encrypted with
//!   WXBizMsgCrypt whose receiver id is the **suite id**, query `msg_signature, timestamp,
//!   nonce`, body `<xml><ToUserName>suite id</ToUserName><Encrypt/><AgentID/></xml>`, plaintext
//!   `<xml><SuiteId/><InfoType>suite_ticket</InfoType><TimeStamp/><SuiteTicket/></xml>`. A
//!   ticket is accepted for [`crate::Timing::suite_ticket_lifetime`] (30 min). Receivers
//!   must answer `success` within 1 s (real time); what they answered is recorded.
//!   [`Admin::verify_wecom_suite_url`] performs WeCom's URL verification
//!   (`GET url?msg_signature&timestamp&nonce&echostr=<encrypted>`) and records whether the
//!   receiver answered the decrypted plaintext within 1 s.
//! - `get_suite_token {suite_id, suite_secret, suite_ticket}`: scripted errcode; 47001 body;
//!   41021 / 40083 suite id; 41024 / 40001 secret; 41023 / 40085 ticket.
//!   `get_permanent_code {auth_code}` and `get_corp_token {auth_corpid, permanent_code}`:
//!   scripted errcode; 41022 / 40082 / 42009 suite token; 47001 body; then 41008 / 40078
//!   (auth code unknown, used, or older than [`crate::Timing::wecom_auth_code_lifetime`]:
//!   codes are single use) or 41002 / 41025 / 40084 (permanent code not the corp's current
//!   one for this suite).
//! - Authorization events ([`Admin::wecom_create_auth`], [`Admin::wecom_change_auth`],
//!   [`Admin::wecom_cancel_auth`]) are pushed like the ticket: `create_auth` with `<AuthCode>`,
//!   `change_auth` and `cancel_auth` with `<AuthCorpId>`. `cancel_auth` invalidates the
//!   permanent code (40084) and the corp's tokens of the suite's app (40014) at once.
//!   [`Admin::wecom_bulk_authorize`] creates many authorized corps at once, without pushes.
//!
//! Evidence ([`Admin::wecom_corp_evidence`], [`Admin::wecom_suite_evidence`],
//! [`Admin::wecom_summary`]; HTTP under `/_sim/wecom/`) counts, per app, `gettoken` calls
//! answered / new token issued / same token returned / errcodes, ticket calls and business
//! calls; per suite, endpoint calls, pushes and what the receiver answered.
//!
//! HTTP admin routes (JSON; unknown corps, apps and suites 404, authorization changes that do
//! not fit 409, bad bodies 400):
//!
//! | route under `/_sim` | [`Admin`] equivalent |
//! | --- | --- |
//! | `GET /wecom/summary` | [`Admin::wecom_summary`] |
//! | `POST /wecom/ip_blocks/clear` | [`Admin::clear_wecom_ip_blocks`] |
//! | `GET /wecom/check?access_token=` (or `ticket=`, `suite_access_token=`) → `{"errcode": N}` | [`Admin::check_wecom_token`], [`Admin::check_wecom_ticket`], [`Admin::check_wecom_suite_token`] |
//! | `GET /wecom/corps/{corpid}/evidence` | [`Admin::wecom_corp_evidence`] |
//! | `PUT /wecom/corps/{corpid}/flags` `{"ip_trusted": bool}` | [`Admin::set_wecom_ip_trusted`] |
//! | `POST /wecom/corps/{corpid}/fail` ([`FailWecomEndpoint`]) | [`Admin::fail_wecom_corp_endpoint`] |
//! | `POST /wecom/corps/{corpid}/revoke` | [`Admin::revoke_wecom_corp_tokens`] |
//! | `PUT /wecom/corps/{corpid}/apps/{agentid}/flags` `{"rate_limited": bool}` | [`Admin::set_wecom_rate_limited`] |
//! | `POST /wecom/corps/{corpid}/apps/{agentid}/revoke` | [`Admin::revoke_wecom_token`] |
//! | `GET /wecom/suites/{suite_id}/evidence` | [`Admin::wecom_suite_evidence`] |
//! | `POST /wecom/suites/{suite_id}/push_ticket` | [`Admin::wecom_push_suite_ticket`] |
//! | `POST /wecom/suites/{suite_id}/verify_url` | [`Admin::verify_wecom_suite_url`] |
//! | `POST /wecom/suites/{suite_id}/fail` ([`FailWecomEndpoint`]) | [`Admin::fail_wecom_suite_endpoint`] |
//! | `POST /wecom/suites/{suite_id}/revoke` | [`Admin::revoke_wecom_suite_token`] |
//! | `POST /wecom/suites/{suite_id}/bulk` `{"count": N}` → `{"corps": [...]}` | [`Admin::wecom_bulk_authorize`] |
//! | `POST /wecom/suites/{suite_id}/corps/{corpid}/{create_auth,change_auth,cancel_auth}[?push=false]` | [`Admin::wecom_auth_event`] |
//! | `POST /wecom/suites/{suite_id}/corps/{corpid}/rotate_permanent_code` | [`Admin::rotate_wecom_permanent_code`] |
//!
//! Choices where WeCom's documentation leaves room: the IP block is per caller IP (all
//! corps); the trusted-IP switch is per corp and is checked after the secret; the ticket
//! limits count every successful call (a same-ticket answer too); `user/get` accepts any
//! userid; the `change_auth` event changes nothing the simulator models; the suite's app in an
//! authorizing corp gets agentid 2000000 + its index; WeCom's exact errmsg texts for 40058,
//! 40091 and the 41xxx codes are not documented and are the simulator's.
//!
//! Must not: put secrets, whole tokens, tickets or codes into evidence or logs (8-character
//! prefixes only; whole auth and permanent codes only in the return values of the admin calls
//! that create them, as a test's credentials), hold this module's lock together with another
//! lock of the simulator or across network I/O, or accept what WeCom refuses.

mod admin_http;
mod api;
pub mod errcode;
mod suite;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use wxtoken_crypto::{EncodingAesKey, MsgCrypt};

use crate::admin::Admin;
use crate::config::{SimConfig, WecomSuiteConfig};
use crate::state::Shared;
use crate::wire;

pub(crate) use admin_http::admin_routes;
pub use admin_http::{FailWecomEndpoint, WecomAppFlags, WecomCorpFlags};
pub(crate) use suite::spawn_pushers;

/// Where the simulator serves WeCom's API: a client's WeCom base URL is `<sim>/qyapi`.
pub const BASE_PATH: &str = "/qyapi";

/// The window of WeCom's hourly limits.
const HOUR: Duration = Duration::from_secs(3600);
/// Longest corpid / suite id the simulator accepts.
const MAX_ID_LEN: usize = 64;
/// Corpids of [`Admin::wecom_bulk_authorize`]: this and 15 decimal digits.
const BULK_PREFIX: &str = "wwa";
/// The most corps [`Admin::wecom_bulk_authorize`] may create per suite in total.
pub const MAX_WECOM_BULK_CORPS: u32 = 1_000_000;
/// Agent ids given to a suite's app in the corps that authorize it.
const SUITE_AGENTID_BASE: u32 = 2_000_000;

/// Whether `id` can be a corpid or suite id: 1–64 characters of `A-Z a-z 0-9 _ -`.
pub(crate) fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A WeCom endpoint, for scripted errcodes and evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WecomEndpoint {
    /// `GET /cgi-bin/gettoken` (scripted per corp, by `corpid`).
    GetToken,
    /// `GET /cgi-bin/get_jsapi_ticket` (per corp, by the token's corp).
    GetJsapiTicket,
    /// `GET /cgi-bin/ticket/get?type=agent_config` (per corp).
    AgentConfigTicket,
    /// `GET /cgi-bin/user/get` (per corp).
    UserGet,
    /// `POST /cgi-bin/service/get_suite_token` (scripted per suite, by `suite_id`).
    GetSuiteToken,
    /// `POST /cgi-bin/service/get_permanent_code` (per suite, by the suite token's suite).
    GetPermanentCode,
    /// `POST /cgi-bin/service/get_corp_token` (per suite).
    GetCorpToken,
}

impl WecomEndpoint {
    /// Whether errcodes for it are scripted on a corp (else on a suite).
    pub fn is_corp_endpoint(self) -> bool {
        matches!(
            self,
            WecomEndpoint::GetToken
                | WecomEndpoint::GetJsapiTicket
                | WecomEndpoint::AgentConfigTicket
                | WecomEndpoint::UserGet
        )
    }
}

/// How a kind of call was answered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WecomFetchCounts {
    /// Calls answered (with anything).
    pub calls: u64,
    /// Answered with a newly issued token / ticket.
    pub new: u64,
    /// Answered with the current, still valid token / ticket again.
    pub same: u64,
    /// Of the errcode answers, the scripted ones.
    pub scripted: u64,
    /// Errcode answers (scripted ones included), errcode → count.
    pub errcodes: BTreeMap<i64, u64>,
}

/// What one call produced, for [`WecomFetchCounts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    New,
    Same,
    Err(i64),
    Scripted(i64),
}

impl WecomFetchCounts {
    pub(crate) fn add(&mut self, outcome: Outcome) {
        self.calls += 1;
        match outcome {
            Outcome::New => self.new += 1,
            Outcome::Same => self.same += 1,
            Outcome::Err(code) => *self.errcodes.entry(code).or_insert(0) += 1,
            Outcome::Scripted(code) => {
                self.scripted += 1;
                *self.errcodes.entry(code).or_insert(0) += 1;
            }
        }
    }
}

/// One app of a corp ([`WecomCorpEvidence::apps`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WecomAppEvidence {
    /// Its AgentId.
    pub agentid: u32,
    /// The suite whose app this is, for apps installed by an authorization (they have no
    /// secret: their token comes from `get_corp_token` / `get_permanent_code`).
    pub suite_id: Option<String>,
    /// Whether `gettoken` answers it 45009 ([`Admin::set_wecom_rate_limited`]).
    pub rate_limited: bool,
    /// `gettoken` calls attributed to it (its secret was right).
    pub gettoken: WecomFetchCounts,
    /// Its token as handed out by `get_corp_token` / `get_permanent_code` (suite apps).
    pub corp_token: WecomFetchCounts,
    /// `get_jsapi_ticket` calls with its tokens.
    pub corp_ticket: WecomFetchCounts,
    /// `ticket/get?type=agent_config` calls with its tokens.
    pub agent_ticket: WecomFetchCounts,
    /// Business calls accepted with its tokens.
    pub business_ok: u64,
    /// Business calls refused with its tokens, errcode → count.
    pub business_rejected: BTreeMap<i64, u64>,
    /// Tokens issued to it so far.
    pub tokens_issued: u64,
    /// 8-character prefix of its current token, if valid now.
    pub token_prefix: Option<String>,
    /// Its current token's remaining life in ms, if valid now.
    pub token_expires_in_ms: Option<u64>,
}

/// What happened to one corp ([`Admin::wecom_corp_evidence`],
/// `GET /_sim/wecom/corps/{corpid}/evidence`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WecomCorpEvidence {
    /// The corp.
    pub corpid: String,
    /// Whether its trusted-IP switch lets callers in (false: 60020).
    pub ip_trusted: bool,
    /// `gettoken` calls naming the corp but no app of it (wrong or missing secret) or
    /// scripted before the app was known.
    pub gettoken_unattributed: WecomFetchCounts,
    /// Its apps, configured ones first, then suite apps in authorization order.
    pub apps: Vec<WecomAppEvidence>,
    /// 8-character prefix of the corp's current `get_jsapi_ticket` ticket, if valid now.
    pub corp_ticket_prefix: Option<String>,
    /// Suites the corp authorizes now.
    pub authorized_suites: Vec<String>,
    /// Scripted errcodes still pending.
    pub pending_scripted: usize,
}

/// One push to a suite's command callback URL and what the receiver answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WecomPush {
    /// Simulator time since start when the push was built, in ms.
    pub since_start_ms: u64,
    /// `suite_ticket`, `create_auth`, `change_auth` or `cancel_auth`.
    pub info_type: String,
    /// The corp an authorization event is about.
    pub auth_corpid: Option<String>,
    /// 8 characters of the pushed ticket or auth code.
    pub prefix: Option<String>,
    /// The receiver's HTTP status, if it answered at all (within 1 s).
    pub status: Option<u16>,
    /// Whether it answered HTTP 200 with the bare body `success`.
    pub success: bool,
    /// Why there was no answer (connection refused, timeout, ...).
    pub error: Option<String>,
}

/// One URL verification (`GET` with an encrypted `echostr`) and what the receiver answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WecomUrlVerification {
    /// Simulator time since start, in ms.
    pub since_start_ms: u64,
    /// The receiver's HTTP status, if it answered at all (within 1 s).
    pub status: Option<u16>,
    /// Whether it answered HTTP 200 with exactly the decrypted `echostr`.
    pub echoed: bool,
    /// Why there was no answer.
    pub error: Option<String>,
}

/// What happened to one suite ([`Admin::wecom_suite_evidence`],
/// `GET /_sim/wecom/suites/{suite_id}/evidence`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WecomSuiteEvidence {
    /// The suite.
    pub suite_id: String,
    /// `get_suite_token` calls attributed to it.
    pub get_suite_token: WecomFetchCounts,
    /// `get_permanent_code` calls with its tokens (`new` = codes exchanged).
    pub get_permanent_code: WecomFetchCounts,
    /// `get_corp_token` calls with its tokens.
    pub get_corp_token: WecomFetchCounts,
    /// Every push, in order.
    pub pushes: Vec<WecomPush>,
    /// Pushes answered `success`.
    pub pushes_acknowledged: u64,
    /// Every URL verification, in order.
    pub verifications: Vec<WecomUrlVerification>,
    /// Corps authorizing it now.
    pub authorized_corps: u64,
    /// 8-character prefix of the current suite access token, if valid now.
    pub suite_token_prefix: Option<String>,
}

/// Counters over all of WeCom ([`Admin::wecom_summary`], `GET /_sim/wecom/summary`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WecomSummary {
    /// Corps (configured and created by authorizations).
    pub corps: u64,
    /// Suites.
    pub suites: u64,
    /// Every `gettoken` call, whatever it named.
    pub gettoken: WecomFetchCounts,
    /// IPs whose `gettoken` calls are blocked now.
    pub blocked_ips: Vec<String>,
    /// Per IP, failed `gettoken` calls within the last hour (the block's counter).
    pub gettoken_failures_last_hour: BTreeMap<String, u64>,
}

/// An authorization event, named as in the push's `<InfoType>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WecomAuthEvent {
    /// `create_auth`: the corp installs the suite's app; carries a temporary auth code.
    CreateAuth,
    /// `change_auth`: the authorization changed (nothing changes for tokens).
    ChangeAuth,
    /// `cancel_auth`: the corp uninstalled the app; permanent code and tokens are invalid.
    CancelAuth,
}

impl WecomAuthEvent {
    /// The push's `<InfoType>`.
    pub fn info_type(self) -> &'static str {
        match self {
            WecomAuthEvent::CreateAuth => "create_auth",
            WecomAuthEvent::ChangeAuth => "change_auth",
            WecomAuthEvent::CancelAuth => "cancel_auth",
        }
    }
}

/// What an authorization change did ([`Admin::wecom_create_auth`] and its siblings).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WecomAuthRecord {
    /// The suite.
    pub suite_id: String,
    /// The corp.
    pub corpid: String,
    /// Which event.
    pub event: WecomAuthEvent,
    /// The temporary auth code of a `create_auth`, whole (what a test hands to
    /// `get_permanent_code`); never in evidence.
    pub auth_code: Option<String>,
    /// The push and what the receiver answered; `None` when pushed without (`push=false`).
    pub push: Option<WecomPush>,
}

/// A corp created by [`Admin::wecom_bulk_authorize`], with its permanent code (whole: it is
/// the test's credential, as a stored permanent code would be).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WecomBulkCorp {
    /// The corp id: `wwa` + 15 decimal digits.
    pub corpid: String,
    /// Its permanent code for the suite.
    pub permanent_code: String,
}

/// Why a WeCom admin operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WecomError {
    /// No corp with this corpid exists.
    #[error("unknown wecom corpid {0}")]
    UnknownCorp(String),
    /// The corp has no app with this agentid.
    #[error("wecom corp {corpid} has no app {agentid}")]
    UnknownApp {
        /// The corp.
        corpid: String,
        /// The agentid.
        agentid: u32,
    },
    /// No suite with this id exists.
    #[error("unknown wecom suite_id {0}")]
    UnknownSuite(String),
    /// The suite has no `push_url`.
    #[error("wecom suite {0} has no push_url")]
    NoPushUrl(String),
    /// The corp authorizes the suite already.
    #[error("{corpid} authorizes suite {suite_id} already")]
    AlreadyAuthorized {
        /// The suite.
        suite_id: String,
        /// The corp.
        corpid: String,
    },
    /// The corp does not authorize the suite now.
    #[error("{corpid} does not authorize suite {suite_id} now")]
    NotAuthorized {
        /// The suite.
        suite_id: String,
        /// The corp.
        corpid: String,
    },
    /// A corpid must be 1–64 characters of `A-Z a-z 0-9 _ -`.
    #[error("invalid corpid {0:?}: expected 1-64 characters of A-Z a-z 0-9 _ -")]
    InvalidCorpid(String),
    /// More than [`MAX_WECOM_BULK_CORPS`] bulk-created corps for one suite.
    #[error("a suite can have at most {MAX_WECOM_BULK_CORPS} bulk-created corps")]
    TooMany,
    /// A scripted errcode with `times == 0` would never apply.
    #[error("times must be at least 1")]
    ZeroTimes,
    /// A suite endpoint scripted on a corp, or a corp endpoint on a suite.
    #[error(
        "endpoint {0:?} is not scripted here (corp endpoints on corps, suite endpoints on suites)"
    )]
    WrongEndpoint(WecomEndpoint),
    /// A push could not be built (should not happen with a validated config).
    #[error("cannot build the push: {0}")]
    Crypto(String),
}

/// What a string handed out to a corp is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    AccessToken,
    CorpTicket,
    AgentTicket,
}

/// One issued corp access token or ticket. Never forgotten, so an old one keeps answering
/// 42001 / 40014 rather than becoming unknown.
pub(crate) struct Issued {
    corpid: Arc<str>,
    /// Index into the corp's `apps` (for the corp ticket: the app whose token fetched it).
    app: usize,
    kind: Kind,
    expires_at: Instant,
    revoked: bool,
}

impl Issued {
    /// `Ok(())` while valid; 40014 when revoked; 42001 once expired.
    fn check(&self, at: Instant) -> Result<(), i64> {
        if self.revoked {
            Err(errcode::INVALID_ACCESS_TOKEN)
        } else if at >= self.expires_at {
            Err(errcode::ACCESS_TOKEN_EXPIRED)
        } else {
            Ok(())
        }
    }
}

pub(crate) struct App {
    agentid: u32,
    /// `None` for a suite's app (no `gettoken`).
    secret: Option<String>,
    suite: Option<Arc<str>>,
    rate_limited: bool,
    token: Option<Arc<str>>,
    agent_ticket: Option<Arc<str>>,
    /// Successful `get_jsapi_ticket` calls with this app's tokens, last hour.
    corp_ticket_calls: VecDeque<Instant>,
    /// Successful `ticket/get` calls, last hour.
    agent_ticket_calls: VecDeque<Instant>,
    ev: AppCounters,
}

#[derive(Default)]
struct AppCounters {
    gettoken: WecomFetchCounts,
    corp_token: WecomFetchCounts,
    corp_ticket: WecomFetchCounts,
    agent_ticket: WecomFetchCounts,
    business_ok: u64,
    business_rejected: BTreeMap<i64, u64>,
    tokens_issued: u64,
}

impl App {
    fn new(agentid: u32, secret: Option<String>, suite: Option<Arc<str>>) -> App {
        App {
            agentid,
            secret,
            suite,
            rate_limited: false,
            token: None,
            agent_ticket: None,
            corp_ticket_calls: VecDeque::new(),
            agent_ticket_calls: VecDeque::new(),
            ev: AppCounters::default(),
        }
    }
}

pub(crate) struct Corp {
    corpid: Arc<str>,
    ip_trusted: bool,
    apps: Vec<App>,
    corp_ticket: Option<Arc<str>>,
    /// Successful `get_jsapi_ticket` calls of the whole corp, last hour.
    corp_ticket_calls: VecDeque<Instant>,
    scripted: VecDeque<(WecomEndpoint, i64)>,
    gettoken_unattributed: WecomFetchCounts,
}

impl Corp {
    fn new(corpid: &str) -> Corp {
        Corp {
            corpid: Arc::from(corpid),
            ip_trusted: true,
            apps: Vec::new(),
            corp_ticket: None,
            corp_ticket_calls: VecDeque::new(),
            scripted: VecDeque::new(),
            gettoken_unattributed: WecomFetchCounts::default(),
        }
    }

    fn app_index(&self, agentid: u32) -> Option<usize> {
        self.apps.iter().position(|a| a.agentid == agentid)
    }

    fn suite_app(&self, suite_id: &str) -> Option<usize> {
        self.apps
            .iter()
            .position(|a| a.suite.as_deref() == Some(suite_id))
    }
}

/// A corp's authorization of a suite.
pub(crate) struct Auth {
    authorized: bool,
    permanent_code: String,
}

/// A temporary auth code of a `create_auth`.
pub(crate) struct AuthCode {
    corpid: String,
    expires_at: Instant,
    used: bool,
}

pub(crate) struct Suite {
    suite_id: Arc<str>,
    secret: String,
    push_url: Option<String>,
    crypt: Arc<MsgCrypt>,
    /// Ticket → when it was pushed.
    tickets: HashMap<String, Instant>,
    token: Option<Arc<str>>,
    next_push_at: Instant,
    auths: HashMap<String, Auth>,
    /// Corps in first-authorization order.
    order: Vec<String>,
    codes: HashMap<String, AuthCode>,
    scripted: VecDeque<(WecomEndpoint, i64)>,
    bulk_next: u64,
    bulk_created: u32,
    ev: SuiteCounters,
}

#[derive(Default)]
struct SuiteCounters {
    get_suite_token: WecomFetchCounts,
    get_permanent_code: WecomFetchCounts,
    get_corp_token: WecomFetchCounts,
    pushes: Vec<WecomPush>,
    pushes_acknowledged: u64,
    verifications: Vec<WecomUrlVerification>,
}

/// One issued suite access token.
pub(crate) struct SuiteToken {
    suite_id: Arc<str>,
    expires_at: Instant,
    revoked: bool,
}

impl SuiteToken {
    /// `Ok(())` while valid; 40082 when revoked; 42009 once expired.
    fn check(&self, at: Instant) -> Result<(), i64> {
        if self.revoked {
            Err(errcode::INVALID_SUITE_TOKEN)
        } else if at >= self.expires_at {
            Err(errcode::SUITE_TOKEN_EXPIRED)
        } else {
            Ok(())
        }
    }
}

/// Failed `gettoken` calls of one IP.
#[derive(Default)]
pub(crate) struct Failures {
    at: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

pub(crate) struct Inner {
    corps: HashMap<String, Corp>,
    issued: HashMap<Arc<str>, Issued>,
    suites: HashMap<String, Suite>,
    suite_tokens: HashMap<Arc<str>, SuiteToken>,
    failures: HashMap<IpAddr, Failures>,
    gettoken_total: WecomFetchCounts,
}

/// All of WeCom (its own lock; never held with another lock of the simulator).
pub(crate) struct WeCom {
    inner: Mutex<Inner>,
    http: reqwest::Client,
}

/// How long a receiver may take to answer a push or a URL verification (real time).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

impl WeCom {
    pub(crate) fn new(config: &SimConfig, start: Instant) -> WeCom {
        let mut corps = HashMap::new();
        for c in &config.wecom_corps {
            let mut corp = Corp::new(&c.corpid);
            for app in &c.apps {
                corp.apps
                    .push(App::new(app.agentid, Some(app.secret.clone()), None));
            }
            corps.insert(c.corpid.clone(), corp);
        }
        let mut suites = HashMap::new();
        for s in &config.wecom_suites {
            match suite_state(s, start) {
                Some(state) => {
                    suites.insert(s.suite_id.clone(), state);
                }
                None => tracing::warn!(suite_id = %s.suite_id, "invalid wecom suite ignored"),
            }
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(ANSWER_TIMEOUT)
            .build()
            .unwrap_or_default();
        WeCom {
            inner: Mutex::new(Inner {
                corps,
                issued: HashMap::new(),
                suites,
                suite_tokens: HashMap::new(),
                failures: HashMap::new(),
                gettoken_total: WecomFetchCounts::default(),
            }),
            http,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn suite_state(s: &WecomSuiteConfig, start: Instant) -> Option<Suite> {
    let key = EncodingAesKey::parse(&s.encoding_aes_key).ok()?;
    let crypt = MsgCrypt::new(
        SecretString::from(s.token.clone()),
        key,
        None,
        s.suite_id.clone(),
    );
    Some(Suite {
        suite_id: Arc::from(s.suite_id.as_str()),
        secret: s.secret.clone(),
        push_url: s.push_url.clone(),
        crypt: Arc::new(crypt),
        tickets: HashMap::new(),
        token: None,
        next_push_at: start,
        auths: HashMap::new(),
        order: Vec::new(),
        codes: HashMap::new(),
        scripted: VecDeque::new(),
        bulk_next: 0,
        bulk_created: 0,
        ev: SuiteCounters::default(),
    })
}

/// Drops instants older than an hour before `now`; returns how many are left.
fn in_last_hour(q: &mut VecDeque<Instant>, now: Instant) -> usize {
    if let Some(start) = now.checked_sub(HOUR) {
        while q.front().is_some_and(|&t| t <= start) {
            q.pop_front();
        }
    }
    q.len()
}

/// Takes the first scripted errcode for `endpoint`, if any.
fn take_scripted(q: &mut VecDeque<(WecomEndpoint, i64)>, endpoint: WecomEndpoint) -> Option<i64> {
    let i = q.iter().position(|(e, _)| *e == endpoint)?;
    q.remove(i).map(|(_, code)| code)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Inner {
    /// A fresh random string not yet handed out.
    fn fresh(&self, len: usize) -> Arc<str> {
        loop {
            let t = wire::random_token(len);
            if !self.issued.contains_key(t.as_str()) && !self.suite_tokens.contains_key(t.as_str())
            {
                return Arc::from(t);
            }
        }
    }

    /// The app's current token if valid at `at`, else a new one: (token, remaining, new?).
    fn app_token(
        &mut self,
        corpid: &str,
        app: usize,
        lifetime: Duration,
        at: Instant,
    ) -> Option<(String, Duration, bool)> {
        self.current_or_new(corpid, app, Kind::AccessToken, lifetime, at)
    }

    fn current_or_new(
        &mut self,
        corpid: &str,
        app: usize,
        kind: Kind,
        lifetime: Duration,
        at: Instant,
    ) -> Option<(String, Duration, bool)> {
        let corp = self.corps.get(corpid)?;
        let current = match kind {
            Kind::AccessToken => corp.apps.get(app)?.token.clone(),
            Kind::AgentTicket => corp.apps.get(app)?.agent_ticket.clone(),
            Kind::CorpTicket => corp.corp_ticket.clone(),
        };
        if let Some(t) = current {
            if let Some(entry) = self.issued.get(&t) {
                if entry.check(at).is_ok() {
                    let left = entry.expires_at.saturating_duration_since(at);
                    return Some((t.to_string(), left, false));
                }
            }
        }
        let len = if kind == Kind::AccessToken {
            wire::ACCESS_TOKEN_LEN
        } else {
            wire::TICKET_LEN
        };
        let token = self.fresh(len);
        let owner = Arc::clone(&corp.corpid);
        self.issued.insert(
            Arc::clone(&token),
            Issued {
                corpid: owner,
                app,
                kind,
                expires_at: at + lifetime,
                revoked: false,
            },
        );
        let corp = self.corps.get_mut(corpid)?;
        match kind {
            Kind::AccessToken => {
                let a = corp.apps.get_mut(app)?;
                a.token = Some(Arc::clone(&token));
                a.ev.tokens_issued += 1;
            }
            Kind::AgentTicket => corp.apps.get_mut(app)?.agent_ticket = Some(Arc::clone(&token)),
            Kind::CorpTicket => corp.corp_ticket = Some(Arc::clone(&token)),
        }
        tracing::debug!(corpid, ?kind, prefix = %wire::prefix(&token), "wecom issued");
        Some((token.to_string(), lifetime, true))
    }

    /// The business check of an access token: `Ok((corpid, app index))`, or 40014 / 42001.
    fn check_access_token(&self, token: &str, at: Instant) -> Result<(Arc<str>, usize), i64> {
        match self.issued.get(token) {
            Some(e) if e.kind == Kind::AccessToken => {
                e.check(at)?;
                Ok((Arc::clone(&e.corpid), e.app))
            }
            _ => Err(errcode::INVALID_ACCESS_TOKEN),
        }
    }

    /// The corp and app an issued access token belongs to (valid or not).
    fn token_owner(&self, token: &str) -> Option<(Arc<str>, usize)> {
        match self.issued.get(token) {
            Some(e) if e.kind == Kind::AccessToken => Some((Arc::clone(&e.corpid), e.app)),
            _ => None,
        }
    }

    /// Invalidates the app's current access token (early invalidation).
    fn revoke_app_token(&mut self, corpid: &str, app: usize) {
        let Some(a) = self.corps.get_mut(corpid).and_then(|c| c.apps.get_mut(app)) else {
            return;
        };
        if let Some(t) = a.token.take() {
            if let Some(e) = self.issued.get_mut(&t) {
                e.revoked = true;
            }
        }
    }

    /// The suite owning a suite token (valid or not) and whether it is valid.
    fn suite_token_owner(&self, token: &str, at: Instant) -> Option<(Arc<str>, Result<(), i64>)> {
        self.suite_tokens
            .get(token)
            .map(|e| (Arc::clone(&e.suite_id), e.check(at)))
    }

    fn app_evidence(&self, app: &App, at: Instant) -> WecomAppEvidence {
        let live = app
            .token
            .as_ref()
            .and_then(|t| self.issued.get(t).map(|e| (t, e)))
            .filter(|(_, e)| e.check(at).is_ok());
        WecomAppEvidence {
            agentid: app.agentid,
            suite_id: app.suite.as_deref().map(str::to_string),
            rate_limited: app.rate_limited,
            gettoken: app.ev.gettoken.clone(),
            corp_token: app.ev.corp_token.clone(),
            corp_ticket: app.ev.corp_ticket.clone(),
            agent_ticket: app.ev.agent_ticket.clone(),
            business_ok: app.ev.business_ok,
            business_rejected: app.ev.business_rejected.clone(),
            tokens_issued: app.ev.tokens_issued,
            token_prefix: live.map(|(t, _)| wire::prefix(t)),
            token_expires_in_ms: live.map(|(_, e)| ms(e.expires_at.saturating_duration_since(at))),
        }
    }

    /// Creates the corp if needed and gives it an app of the suite; returns the app index.
    fn ensure_suite_app(&mut self, corpid: &str, suite_id: &Arc<str>) -> usize {
        let corp = self
            .corps
            .entry(corpid.to_string())
            .or_insert_with(|| Corp::new(corpid));
        if let Some(i) = corp.suite_app(suite_id) {
            return i;
        }
        let n = u32::try_from(corp.apps.len()).unwrap_or(u32::MAX);
        corp.apps.push(App::new(
            SUITE_AGENTID_BASE.saturating_add(n),
            None,
            Some(Arc::clone(suite_id)),
        ));
        corp.apps.len() - 1
    }
}

impl Admin {
    fn wecom(&self) -> MutexGuard<'_, Inner> {
        self.shared().wecom.lock()
    }

    fn with_corp<R>(&self, corpid: &str, f: impl FnOnce(&mut Corp) -> R) -> Result<R, WecomError> {
        let mut inner = self.wecom();
        let corp = inner
            .corps
            .get_mut(corpid)
            .ok_or_else(|| WecomError::UnknownCorp(corpid.to_string()))?;
        Ok(f(corp))
    }

    fn app_of(&self, inner: &Inner, corpid: &str, agentid: u32) -> Result<usize, WecomError> {
        let corp = inner
            .corps
            .get(corpid)
            .ok_or_else(|| WecomError::UnknownCorp(corpid.to_string()))?;
        corp.app_index(agentid).ok_or(WecomError::UnknownApp {
            corpid: corpid.to_string(),
            agentid,
        })
    }

    /// `false` makes the corp's `gettoken`, tickets and business calls answer 60020 (the
    /// caller's IP is not a trusted IP of the corp); `true` (the default) lets them in.
    pub fn set_wecom_ip_trusted(&self, corpid: &str, trusted: bool) -> Result<(), WecomError> {
        self.with_corp(corpid, |c| c.ip_trusted = trusted)
    }

    /// `true` makes `gettoken` for the app answer 45009 (frequency limit) until set back.
    pub fn set_wecom_rate_limited(
        &self,
        corpid: &str,
        agentid: u32,
        limited: bool,
    ) -> Result<(), WecomError> {
        let mut inner = self.wecom();
        let i = self.app_of(&inner, corpid, agentid)?;
        if let Some(app) = inner.corps.get_mut(corpid).and_then(|c| c.apps.get_mut(i)) {
            app.rate_limited = limited;
        }
        Ok(())
    }

    /// Early invalidation, as WeCom may do "出于运营需要": the app's current access token
    /// answers 40014 from now on, and the next `gettoken` (or `get_corp_token`) issues a new
    /// one. Tickets are not affected.
    pub fn revoke_wecom_token(&self, corpid: &str, agentid: u32) -> Result<(), WecomError> {
        let mut inner = self.wecom();
        let i = self.app_of(&inner, corpid, agentid)?;
        inner.revoke_app_token(corpid, i);
        Ok(())
    }

    /// [`Admin::revoke_wecom_token`] for every app of the corp (suite apps included).
    pub fn revoke_wecom_corp_tokens(&self, corpid: &str) -> Result<(), WecomError> {
        let mut inner = self.wecom();
        let n = inner
            .corps
            .get(corpid)
            .ok_or_else(|| WecomError::UnknownCorp(corpid.to_string()))?
            .apps
            .len();
        for i in 0..n {
            inner.revoke_app_token(corpid, i);
        }
        Ok(())
    }

    /// Makes the next `times` calls of a corp endpoint ([`WecomEndpoint::is_corp_endpoint`])
    /// naming the corp answer `errcode` (e.g. -1 or 45033) before any check.
    pub fn fail_wecom_corp_endpoint(
        &self,
        corpid: &str,
        endpoint: WecomEndpoint,
        errcode: i64,
        times: u32,
    ) -> Result<(), WecomError> {
        if times == 0 {
            return Err(WecomError::ZeroTimes);
        }
        if !endpoint.is_corp_endpoint() {
            return Err(WecomError::WrongEndpoint(endpoint));
        }
        self.with_corp(corpid, |c| {
            c.scripted
                .extend(std::iter::repeat_n((endpoint, errcode), times as usize));
        })
    }

    /// Whether a WeCom access token is valid now, without counting: `Ok(())`, 40014
    /// (unknown, revoked, a ticket) or 42001 (expired).
    pub fn check_wecom_token(&self, token: &str) -> Result<(), i64> {
        let at = self.shared().clock.now();
        self.wecom().check_access_token(token, at).map(|_| ())
    }

    /// Whether a WeCom JS-SDK ticket (corp or agent) is valid now: `Ok(())`, 40014 (unknown,
    /// or not a ticket) or 42001 (expired).
    pub fn check_wecom_ticket(&self, ticket: &str) -> Result<(), i64> {
        let at = self.shared().clock.now();
        match self.wecom().issued.get(ticket) {
            Some(e) if e.kind != Kind::AccessToken => e.check(at),
            _ => Err(errcode::INVALID_ACCESS_TOKEN),
        }
    }

    /// Whether a suite access token is valid now: `Ok(())`, 40082 (unknown or revoked) or
    /// 42009 (expired).
    pub fn check_wecom_suite_token(&self, token: &str) -> Result<(), i64> {
        let at = self.shared().clock.now();
        self.wecom()
            .suite_token_owner(token, at)
            .map_or(Err(errcode::INVALID_SUITE_TOKEN), |(_, r)| r)
    }

    /// What happened to a corp; `None` for an unknown corp.
    pub fn wecom_corp_evidence(&self, corpid: &str) -> Option<WecomCorpEvidence> {
        let at = self.shared().clock.now();
        let inner = self.wecom();
        let corp = inner.corps.get(corpid)?;
        let corp_ticket_prefix = corp
            .corp_ticket
            .as_ref()
            .filter(|t| inner.issued.get(*t).is_some_and(|e| e.check(at).is_ok()))
            .map(|t| wire::prefix(t));
        let mut authorized_suites: Vec<String> = inner
            .suites
            .values()
            .filter(|s| s.auths.get(corpid).is_some_and(|a| a.authorized))
            .map(|s| s.suite_id.to_string())
            .collect();
        authorized_suites.sort();
        Some(WecomCorpEvidence {
            corpid: corpid.to_string(),
            ip_trusted: corp.ip_trusted,
            gettoken_unattributed: corp.gettoken_unattributed.clone(),
            apps: corp
                .apps
                .iter()
                .map(|a| inner.app_evidence(a, at))
                .collect(),
            corp_ticket_prefix,
            authorized_suites,
            pending_scripted: corp.scripted.len(),
        })
    }

    /// What happened to a suite; `None` for an unknown suite.
    pub fn wecom_suite_evidence(&self, suite_id: &str) -> Option<WecomSuiteEvidence> {
        let at = self.shared().clock.now();
        let inner = self.wecom();
        let s = inner.suites.get(suite_id)?;
        let suite_token_prefix = s
            .token
            .as_ref()
            .filter(|t| {
                inner
                    .suite_tokens
                    .get(*t)
                    .is_some_and(|e| e.check(at).is_ok())
            })
            .map(|t| wire::prefix(t));
        Some(WecomSuiteEvidence {
            suite_id: suite_id.to_string(),
            get_suite_token: s.ev.get_suite_token.clone(),
            get_permanent_code: s.ev.get_permanent_code.clone(),
            get_corp_token: s.ev.get_corp_token.clone(),
            pushes: s.ev.pushes.clone(),
            pushes_acknowledged: s.ev.pushes_acknowledged,
            verifications: s.ev.verifications.clone(),
            authorized_corps: u64::try_from(s.auths.values().filter(|a| a.authorized).count())
                .unwrap_or(u64::MAX),
            suite_token_prefix,
        })
    }

    /// Counters over all of WeCom, and the `gettoken` IP blocks.
    pub fn wecom_summary(&self) -> WecomSummary {
        let at = self.shared().clock.now();
        let mut inner = self.wecom();
        let mut blocked_ips = Vec::new();
        let mut failures = BTreeMap::new();
        for (ip, f) in &mut inner.failures {
            if f.blocked_until.is_some_and(|u| at < u) {
                blocked_ips.push(ip.to_string());
            }
            let n = in_last_hour(&mut f.at, at);
            failures.insert(ip.to_string(), u64::try_from(n).unwrap_or(u64::MAX));
        }
        blocked_ips.sort();
        WecomSummary {
            corps: u64::try_from(inner.corps.len()).unwrap_or(u64::MAX),
            suites: u64::try_from(inner.suites.len()).unwrap_or(u64::MAX),
            gettoken: inner.gettoken_total.clone(),
            blocked_ips,
            gettoken_failures_last_hour: failures,
        }
    }

    /// Lifts every `gettoken` IP block and forgets the failures counted towards one.
    pub fn clear_wecom_ip_blocks(&self) {
        self.wecom().failures.clear();
    }
}

/// The WeCom API routes (nested under `/qyapi` by the server).
pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/cgi-bin/gettoken", get(api::gettoken))
        .route("/cgi-bin/get_jsapi_ticket", get(api::corp_ticket))
        .route("/cgi-bin/ticket/get", get(api::agent_ticket))
        .route("/cgi-bin/user/get", get(api::user_get))
        .route(
            "/cgi-bin/service/get_suite_token",
            post(suite::get_suite_token),
        )
        .route(
            "/cgi-bin/service/get_permanent_code",
            post(suite::get_permanent_code),
        )
        .route(
            "/cgi-bin/service/get_corp_token",
            post(suite::get_corp_token),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hourly_window_slides() {
        let t0 = Instant::now();
        let mut q = VecDeque::from([t0, t0 + Duration::from_secs(10)]);
        assert_eq!(in_last_hour(&mut q, t0 + HOUR - Duration::from_nanos(1)), 2);
        assert_eq!(in_last_hour(&mut q, t0 + HOUR), 1);
        assert_eq!(in_last_hour(&mut q, t0 + HOUR + Duration::from_secs(10)), 0);
    }

    #[test]
    fn ids_are_checked() {
        assert!(is_valid_id("ww0123456789abcdef"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("ww]]>"));
        assert!(!is_valid_id(&"a".repeat(65)));
    }

    #[test]
    fn scripted_errcodes_are_taken_per_endpoint_in_order() {
        let mut q = VecDeque::from([
            (WecomEndpoint::GetToken, -1),
            (WecomEndpoint::UserGet, 45033),
            (WecomEndpoint::GetToken, 45033),
        ]);
        assert_eq!(take_scripted(&mut q, WecomEndpoint::UserGet), Some(45033));
        assert_eq!(take_scripted(&mut q, WecomEndpoint::GetToken), Some(-1));
        assert_eq!(take_scripted(&mut q, WecomEndpoint::GetToken), Some(45033));
        assert_eq!(take_scripted(&mut q, WecomEndpoint::GetToken), None);
    }
}
