//! Third-party platform authorizers (授权方): the Official Accounts and Mini Programs that
//! authorized a component, their authorization codes, refresh tokens and authorizer access
//! tokens.
//!
//! WeChat endpoints (POST, JSON body, the component access token in the query string as
//! `component_access_token=` or, as in WeChat's newer docs, `access_token=`):
//!
//! - `POST /cgi-bin/component/api_query_auth` `{component_appid, authorization_code}` →
//!   `{"authorization_info": {authorizer_appid, authorizer_access_token, expires_in,
//!   authorizer_refresh_token, func_info}}`. A code is single use (61009 when used again,
//!   unknown, or superseded by a later authorization) and lives
//!   [`crate::Timing::authorization_code_lifetime`] (61010 after). Issues a new authorizer
//!   access token.
//! - `POST /cgi-bin/component/api_authorizer_token` `{component_appid, authorizer_appid,
//!   authorizer_refresh_token}` → `{authorizer_access_token, expires_in,
//!   authorizer_refresh_token}`. Every successful call issues a new token; the previous one
//!   stays valid for [`crate::Timing::overlap`]. The refresh token never changes on refresh and
//!   never expires. 61003: the authorizer never authorized the component or no longer does;
//!   61023: refresh token missing or not the current one; 45009: more than
//!   [`crate::Timing::authorizer_token_daily_quota`] successful calls for the authorizer today;
//!   41002: `authorizer_appid` missing.
//! - `POST /cgi-bin/component/api_get_authorizer_list` `{component_appid, offset, count}` →
//!   `{total_count, list: [{authorizer_appid, refresh_token, auth_time}]}`: the authorizers
//!   authorized now, in the order they first authorized (a re-authorization keeps its place
//!   and updates `auth_time`), with their current refresh tokens. `count` above 500 is 40170;
//!   `count` below 1, or `offset`/`count` missing or not a non-negative integer, is 40097.
//!
//! Checks common to the three, in order: a scripted errcode
//! ([`Admin::fail_authorizer_endpoint`]; never charges quota); the component access token
//! (41001 missing; 61014 an app's or an authorizer's access token instead; 40001 unknown or
//! replaced past its overlap; 42001 expired); the body (47001 not a JSON object);
//! `component_appid` (41018 missing; 61011 not the component the token belongs to).
//!
//! Authorizer access tokens work wherever an app's access token does: the business API
//! (`get_api_domain_ip`) and `getticket`, where they get the authorizer account's JS-SDK
//! tickets (quota [`crate::Timing::ticket_daily_quota`] per authorizer appid and day). A token
//! is valid until it expires or is replaced past its overlap (the rule of every other token),
//! and is invalid at once (40001) when the authorizer re-authorizes, unauthorizes, or
//! [`Admin::revoke_authorizer_token`] is called.
//!
//! Authorization flows are driven by [`Admin`]: [`Admin::authorize`],
//! [`Admin::reauthorize`] and [`Admin::unauthorize`] change the authorization and push the
//! encrypted `authorized` / `updateauthorized` / `unauthorized` event to the component's
//! `push_url` (the envelope and crypto of the verify-ticket pushes); their `_without_push`
//! variants change it silently. [`Admin::bulk_authorize`] creates many authorizers at once,
//! without pushes. The pushes are recorded here ([`Admin::authorizer_evidence`]), not among
//! the component's ticket pushes.
//!
//! Scale: per-request work is hash lookups; an authorizer costs about 300 bytes, an issued
//! authorizer token about 300 more (kept for the simulator's lifetime, like every token, so an
//! old one keeps answering 42001/40001). Listing pages cost O(offset + count); unauthorizing is
//! O(authorizers); evidence histograms are O(authorizers).
//!
//! Must not: put whole tokens, refresh tokens or codes into evidence or logs (8 characters
//! after their constant start at most), hold this module's lock together with the state's
//! or the components' lock, or across network I/O.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::admin::{self, Admin};
use crate::component::{self, str_field, ComponentError};
use crate::config::{SimConfig, Timing, MAX_BULK_AUTHORIZERS};
use crate::errcode;
use crate::state::{Now, Shared, TokenEntry, TokenKind};
use crate::wire::{self, query_param, WxReply};

/// Every refresh token starts with this (like WeChat's); evidence shows the 8 characters after.
const REFRESH_PREFIX: &str = "refreshtoken@@@";
/// Random characters of a refresh token after its prefix.
const REFRESH_LEN: usize = 43;
/// Every authorization code starts with this (like WeChat's).
const CODE_PREFIX: &str = "queryauthcode@@@";
/// Random characters of an authorization code after its prefix.
const CODE_LEN: usize = 64;
/// The `PreAuthCode` of an authorization event starts with this.
const PRE_AUTH_PREFIX: &str = "preauthcode@@@";
/// Appids of [`Admin::bulk_authorize`]: this and 15 decimal digits.
const BULK_PREFIX: &str = "wxa";
/// Largest `count` of `api_get_authorizer_list`.
const MAX_LIST_COUNT: i64 = 500;
/// Longest authorizer appid the admin API accepts.
const MAX_APPID_LEN: usize = 64;

/// One of the three authorizer endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizerEndpoint {
    /// `POST /cgi-bin/component/api_query_auth`.
    QueryAuth,
    /// `POST /cgi-bin/component/api_authorizer_token`.
    AuthorizerToken,
    /// `POST /cgi-bin/component/api_get_authorizer_list`.
    GetAuthorizerList,
}

impl AuthorizerEndpoint {
    fn index(self) -> usize {
        match self {
            AuthorizerEndpoint::QueryAuth => 0,
            AuthorizerEndpoint::AuthorizerToken => 1,
            AuthorizerEndpoint::GetAuthorizerList => 2,
        }
    }
}

/// An authorization event, named as in the push's `<InfoType>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuthEvent {
    /// `authorized`: a new authorization (or one after an `unauthorized`).
    #[serde(rename = "authorized")]
    Authorized,
    /// `updateauthorized`: a re-authorization (new code, new refresh token, the current
    /// access token invalid at once).
    #[serde(rename = "updateauthorized")]
    UpdateAuthorized,
    /// `unauthorized`: the authorization is withdrawn.
    #[serde(rename = "unauthorized")]
    Unauthorized,
}

impl AuthEvent {
    /// The `<InfoType>` of the push.
    pub fn info_type(self) -> &'static str {
        match self {
            AuthEvent::Authorized => "authorized",
            AuthEvent::UpdateAuthorized => "updateauthorized",
            AuthEvent::Unauthorized => "unauthorized",
        }
    }
}

/// What an authorization change did, as [`Admin::authorize`] and its siblings return it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeRecord {
    /// The component.
    pub component_appid: String,
    /// The authorizer.
    pub authorizer_appid: String,
    /// Which event it was.
    pub event: AuthEvent,
    /// The new authorization code, whole (it is what a test hands to `api_query_auth`, like
    /// an operator adding an authorizer by code); `None` for `unauthorized`. Never in evidence.
    pub authorization_code: Option<String>,
    /// When the code expires, Unix seconds (`AuthorizationCodeExpiredTime`).
    pub code_expires_at: Option<u64>,
    /// The push and what the receiver answered; `None` for the `_without_push` variants.
    pub push: Option<EventPush>,
}

/// One pushed authorization event and what the receiver answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPush {
    /// Simulator time since start when the push was built, in ms.
    pub since_start_ms: u64,
    /// Which event.
    pub event: AuthEvent,
    /// The authorizer it is about.
    pub authorizer_appid: String,
    /// 8 characters of the authorization code after its constant `queryauthcode@@@` start
    /// (`None` for `unauthorized`).
    pub code_prefix: Option<String>,
    /// The receiver's HTTP status, if it answered at all.
    pub status: Option<u16>,
    /// Whether it answered HTTP 200 with the bare body `success`.
    pub success: bool,
    /// Why there was no answer (connection refused, timeout, ...).
    pub error: Option<String>,
}

/// How one authorizer endpoint's calls by a component were answered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointCounts {
    /// Calls attributed to the component (by its token, or its `component_appid`).
    pub calls: u64,
    /// Calls answered with success.
    pub ok: u64,
    /// Of the calls answered with an errcode, those that were scripted.
    pub scripted: u64,
    /// Calls answered with an errcode (scripted ones included), errcode → count.
    pub errcodes: BTreeMap<i64, u64>,
}

impl EndpointCounts {
    fn add(&mut self, result: Result<(), i64>, scripted: bool) {
        self.calls += 1;
        match result {
            Ok(()) => self.ok += 1,
            Err(code) => {
                *self.errcodes.entry(code).or_insert(0) += 1;
                if scripted {
                    self.scripted += 1;
                }
            }
        }
    }
}

/// The three endpoints' counts of one component.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizerEndpointCounts {
    /// `api_query_auth`.
    pub query_auth: EndpointCounts,
    /// `api_authorizer_token` (`ok` = tokens issued).
    pub authorizer_token: EndpointCounts,
    /// `api_get_authorizer_list`.
    pub get_authorizer_list: EndpointCounts,
}

impl AuthorizerEndpointCounts {
    fn of(&mut self, endpoint: AuthorizerEndpoint) -> &mut EndpointCounts {
        match endpoint {
            AuthorizerEndpoint::QueryAuth => &mut self.query_auth,
            AuthorizerEndpoint::AuthorizerToken => &mut self.authorizer_token,
            AuthorizerEndpoint::GetAuthorizerList => &mut self.get_authorizer_list,
        }
    }
}

/// Authorization events of one component: how many were pushed, by type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    /// `authorized` pushes.
    pub authorized: u64,
    /// `updateauthorized` pushes.
    #[serde(rename = "updateauthorized")]
    pub update_authorized: u64,
    /// `unauthorized` pushes.
    pub unauthorized: u64,
    /// Pushes (of any type) the receiver answered with `success`.
    pub acknowledged: u64,
}

/// What happened to one component's authorizers ([`Admin::authorizer_evidence`],
/// `GET /_sim/components/{appid}/authorizers/evidence`). Its size does not grow with the
/// number of authorizers, except `pushes` (one per pushed event).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizerEvidence {
    /// The component.
    pub component_appid: String,
    /// Authorizers authorized now (what `total_count` of the list says).
    pub authorized: u64,
    /// Authorizers ever created (authorized now or not).
    pub created: u64,
    /// Calls of the three endpoints.
    pub endpoints: AuthorizerEndpointCounts,
    /// Authorizer access tokens issued, by `api_query_auth` and `api_authorizer_token`.
    pub tokens_issued: u64,
    /// Pushed authorization events, by type.
    pub events: EventCounts,
    /// Every pushed authorization event, in order.
    pub pushes: Vec<EventPush>,
    /// Business calls accepted with an authorizer token of this component.
    pub business_ok: u64,
    /// Business calls rejected with one, errcode → count.
    pub rejected_business_calls: BTreeMap<i64, u64>,
    /// JS-SDK tickets fetched with one.
    pub tickets_issued: u64,
    /// Number of successful `api_authorizer_token` calls → how many authorizers (ever
    /// created) made exactly that many: `{1: 100000}` means every one of 100,000 authorizers
    /// refreshed exactly once.
    pub authorizer_token_issued_histogram: BTreeMap<u64, u64>,
}

/// Counters and state of one authorizer of one component ([`Admin::authorizer_counts`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizerCounts {
    /// Whether it is authorized now.
    pub authorized: bool,
    /// Its latest authorization, Unix seconds.
    pub auth_time: u64,
    /// 8 characters of its refresh token after `refreshtoken@@@` (`None` when unauthorized).
    pub refresh_token_prefix: Option<String>,
    /// Successful `api_query_auth` exchanges of its codes.
    pub query_auth: u64,
    /// `api_authorizer_token` calls naming it (after the common checks), answered with anything.
    pub authorizer_token_calls: u64,
    /// Of those, the ones that issued a token.
    pub authorizer_token_issued: u64,
    /// Business calls accepted with its tokens.
    pub business_ok: u64,
    /// Business calls rejected with its tokens.
    pub business_rejected: u64,
    /// JS-SDK tickets fetched with its tokens.
    pub tickets_issued: u64,
}

/// Why an authorizer admin operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizerError {
    /// No component with this appid exists.
    #[error("unknown component appid {0}")]
    UnknownComponent(String),
    /// The component has no `push_url` (use a `_without_push` variant).
    #[error("component {0} has no push_url")]
    NoPushUrl(String),
    /// The authorizer never authorized the component.
    #[error("{authorizer} never authorized component {component}")]
    UnknownAuthorizer {
        /// The component.
        component: String,
        /// The authorizer.
        authorizer: String,
    },
    /// The authorizer does not authorize the component now.
    #[error("{authorizer} does not authorize component {component} now")]
    NotAuthorized {
        /// The component.
        component: String,
        /// The authorizer.
        authorizer: String,
    },
    /// The authorizer authorizes the component already (use reauthorize).
    #[error("{authorizer} authorizes component {component} already")]
    AlreadyAuthorized {
        /// The component.
        component: String,
        /// The authorizer.
        authorizer: String,
    },
    /// An authorizer appid must be 1–64 characters of `A-Z a-z 0-9 _ -`.
    #[error("invalid authorizer appid {0:?}: expected 1-64 characters of A-Z a-z 0-9 _ -")]
    InvalidAppid(String),
    /// A bulk creation beyond [`MAX_BULK_AUTHORIZERS`] authorizers per component.
    #[error("a component can have at most {MAX_BULK_AUTHORIZERS} bulk-created authorizers")]
    TooMany,
    /// A scripted failure with `times == 0` would never apply.
    #[error("times must be at least 1")]
    ZeroTimes,
    /// The push could not be built (should not happen with a validated config).
    #[error("cannot build the push: {0}")]
    Crypto(String),
}

impl From<ComponentError> for AuthorizerError {
    fn from(e: ComponentError) -> AuthorizerError {
        match e {
            ComponentError::UnknownComponent(a) => AuthorizerError::UnknownComponent(a),
            ComponentError::NoPushUrl(a) => AuthorizerError::NoPushUrl(a),
            other => AuthorizerError::Crypto(other.to_string()),
        }
    }
}

/// One authorizer of one component (kept after an unauthorization, for its counters and so
/// that its old tokens keep answering 40001).
struct Slot {
    appid: Arc<str>,
    authorized: bool,
    /// Empty while not authorized.
    refresh_token: Box<str>,
    auth_time: u64,
    /// Codes of an older authorization are 61009.
    auth_epoch: u64,
    /// Tokens issued under an older epoch are 40001.
    token_epoch: u64,
    current: Option<Arc<str>>,
    quota_day: u64,
    quota_used: u32,
    query_auth: u64,
    token_calls: u64,
    token_issued: u64,
    business_ok: u64,
    business_rejected: u64,
    tickets_issued: u64,
}

/// An authorization code not exchanged yet.
struct PendingCode {
    slot: u32,
    auth_epoch: u64,
    expires_at: Instant,
}

/// One component's authorizers.
struct Table {
    appid: String,
    /// Every authorizer ever created; indexes never change.
    slots: Vec<Slot>,
    by_appid: HashMap<Arc<str>, u32>,
    /// The authorized ones, in order of first authorization.
    order: Vec<u32>,
    codes: HashMap<Box<str>, PendingCode>,
    /// Next number for [`Admin::bulk_authorize`].
    bulk_next: u64,
    bulk_created: u64,
    /// Scripted errcodes by [`AuthorizerEndpoint::index`].
    scripted: [VecDeque<i64>; 3],
    endpoints: AuthorizerEndpointCounts,
    events: EventCounts,
    pushes: Vec<EventPush>,
    tokens_issued: u64,
    business_ok: u64,
    rejected_business_calls: BTreeMap<i64, u64>,
    tickets_issued: u64,
}

/// An authorizer access token ever issued.
struct IssuedToken {
    table: u32,
    slot: u32,
    epoch: u64,
    entry: TokenEntry,
}

struct Inner {
    tables: Vec<Table>,
    by_component: HashMap<String, usize>,
    tokens: HashMap<Arc<str>, IssuedToken>,
    /// Authorizer appid → (quota day, tickets fetched that day).
    ticket_quota: HashMap<Arc<str>, (u64, u32)>,
    next_epoch: u64,
}

/// The authorizers of every component, behind their own lock.
pub(crate) struct Authorizers {
    inner: Mutex<Inner>,
}

impl Authorizers {
    /// One (empty) table per configured component, then the `[[authorizers]]` bulk creations.
    pub(crate) fn new(config: &SimConfig, unix_s: u64) -> Authorizers {
        let mut inner = Inner {
            tables: Vec::new(),
            by_component: HashMap::new(),
            tokens: HashMap::new(),
            ticket_quota: HashMap::new(),
            next_epoch: 1,
        };
        for c in &config.components {
            if inner.by_component.contains_key(&c.appid) {
                continue;
            }
            inner
                .by_component
                .insert(c.appid.clone(), inner.tables.len());
            inner.tables.push(Table::new(&c.appid));
        }
        for b in &config.authorizers {
            if let Err(e) = inner.bulk(&b.component, b.count, unix_s) {
                tracing::warn!(component = %b.component, error = %e, "[[authorizers]] ignored");
            }
        }
        Authorizers {
            inner: Mutex::new(inner),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The business API's use of an authorizer token: `None` if the token is no authorizer
    /// token, else its check (counted for the authorizer and its component).
    pub(crate) fn business_call(&self, token: &str, at: Instant) -> Option<Result<(), i64>> {
        let mut inner = self.lock();
        let (t, s, result) = inner.check(token, at)?;
        let table = inner.tables.get_mut(t)?;
        match result {
            Ok(()) => table.business_ok += 1,
            Err(code) => *table.rejected_business_calls.entry(code).or_insert(0) += 1,
        }
        if let Some(slot) = table.slots.get_mut(s) {
            match result {
                Ok(()) => slot.business_ok += 1,
                Err(_) => slot.business_rejected += 1,
            }
        }
        Some(result)
    }

    /// `getticket` with an authorizer token: `None` if the token is no authorizer token, else
    /// WeChat's answer (token validity, ticket type, the authorizer's daily ticket quota).
    pub(crate) fn ticket(
        &self,
        token: &str,
        ticket_type: Option<&str>,
        timing: &Timing,
        now: &Now,
    ) -> Option<WxReply> {
        let mut inner = self.lock();
        let (t, s, result) = inner.check(token, now.at)?;
        if let Err(code) = result {
            return Some(WxReply::err(code));
        }
        if !matches!(ticket_type, Some("jsapi" | "wx_card")) {
            return Some(WxReply::err(errcode::INVALID_ARGS));
        }
        let appid = Arc::clone(&inner.tables.get(t)?.slots.get(s)?.appid);
        let (day, used) = inner.ticket_quota.entry(appid).or_insert((now.day, 0));
        if *day != now.day {
            *day = now.day;
            *used = 0;
        }
        if *used >= timing.ticket_daily_quota {
            return Some(WxReply::err(errcode::DAILY_QUOTA));
        }
        *used += 1;
        let table = inner.tables.get_mut(t)?;
        table.tickets_issued += 1;
        if let Some(slot) = table.slots.get_mut(s) {
            slot.tickets_issued += 1;
        }
        Some(WxReply::Ok(json!({
            "errcode": 0,
            "errmsg": "ok",
            "ticket": wire::random_token(wire::TICKET_LEN),
            "expires_in": wire::wire_secs(timing.expires_in),
        })))
    }
}

impl Table {
    fn new(appid: &str) -> Table {
        Table {
            appid: appid.to_string(),
            slots: Vec::new(),
            by_appid: HashMap::new(),
            order: Vec::new(),
            codes: HashMap::new(),
            bulk_next: 0,
            bulk_created: 0,
            scripted: Default::default(),
            endpoints: AuthorizerEndpointCounts::default(),
            events: EventCounts::default(),
            pushes: Vec::new(),
            tokens_issued: 0,
            business_ok: 0,
            rejected_business_calls: BTreeMap::new(),
            tickets_issued: 0,
        }
    }

    /// The slot of an authorizer that authorizes the component now.
    fn authorized_slot(&self, authorizer: &str) -> Result<usize, AuthorizerError> {
        let slot = self.by_appid.get(authorizer).copied().ok_or_else(|| {
            AuthorizerError::UnknownAuthorizer {
                component: self.appid.clone(),
                authorizer: authorizer.to_string(),
            }
        })? as usize;
        match self.slots.get(slot) {
            Some(s) if s.authorized => Ok(slot),
            _ => Err(AuthorizerError::NotAuthorized {
                component: self.appid.clone(),
                authorizer: authorizer.to_string(),
            }),
        }
    }

    /// Adds (or re-activates) an authorized slot at the end of the list order.
    fn activate(
        &mut self,
        authorizer: &str,
        epoch: u64,
        unix_s: u64,
    ) -> Result<usize, AuthorizerError> {
        let refresh_token = new_refresh_token();
        if let Some(&i) = self.by_appid.get(authorizer) {
            let slot = self
                .slots
                .get_mut(i as usize)
                .ok_or(AuthorizerError::TooMany)?;
            if slot.authorized {
                return Err(AuthorizerError::AlreadyAuthorized {
                    component: self.appid.clone(),
                    authorizer: authorizer.to_string(),
                });
            }
            slot.authorized = true;
            slot.refresh_token = refresh_token;
            slot.auth_time = unix_s;
            slot.auth_epoch = epoch;
            slot.token_epoch = epoch;
            slot.current = None;
            self.order.push(i);
            return Ok(i as usize);
        }
        let i = u32::try_from(self.slots.len()).map_err(|_| AuthorizerError::TooMany)?;
        let appid: Arc<str> = Arc::from(authorizer);
        self.slots.push(Slot {
            appid: Arc::clone(&appid),
            authorized: true,
            refresh_token,
            auth_time: unix_s,
            auth_epoch: epoch,
            token_epoch: epoch,
            current: None,
            quota_day: 0,
            quota_used: 0,
            query_auth: 0,
            token_calls: 0,
            token_issued: 0,
            business_ok: 0,
            business_rejected: 0,
            tickets_issued: 0,
        });
        self.by_appid.insert(appid, i);
        self.order.push(i);
        Ok(i as usize)
    }

    fn record(&mut self, endpoint: AuthorizerEndpoint, result: Result<(), i64>, scripted: bool) {
        self.endpoints.of(endpoint).add(result, scripted);
    }

    fn evidence(&self) -> AuthorizerEvidence {
        let mut histogram = BTreeMap::new();
        for slot in &self.slots {
            *histogram.entry(slot.token_issued).or_insert(0) += 1;
        }
        AuthorizerEvidence {
            component_appid: self.appid.clone(),
            authorized: count(self.order.len()),
            created: count(self.slots.len()),
            endpoints: self.endpoints.clone(),
            tokens_issued: self.tokens_issued,
            events: self.events,
            pushes: self.pushes.clone(),
            business_ok: self.business_ok,
            rejected_business_calls: self.rejected_business_calls.clone(),
            tickets_issued: self.tickets_issued,
            authorizer_token_issued_histogram: histogram,
        }
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn new_refresh_token() -> Box<str> {
    format!("{REFRESH_PREFIX}{}", wire::random_token(REFRESH_LEN)).into_boxed_str()
}

/// 8 characters after a constant start such as `refreshtoken@@@`.
fn prefix_after(s: &str, start: &str) -> String {
    wire::prefix(s.strip_prefix(start).unwrap_or(s))
}

impl Inner {
    fn epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    fn table(&self, component: &str) -> Result<usize, AuthorizerError> {
        self.by_component
            .get(component)
            .copied()
            .ok_or_else(|| AuthorizerError::UnknownComponent(component.to_string()))
    }

    /// (table, slot, validity) of an authorizer token; `None` if it is none.
    fn check(&self, token: &str, at: Instant) -> Option<(usize, usize, Result<(), i64>)> {
        let issued = self.tokens.get(token)?;
        let (t, s) = (issued.table as usize, issued.slot as usize);
        let slot = self.tables.get(t)?.slots.get(s)?;
        let result = if !slot.authorized || slot.token_epoch != issued.epoch {
            Err(errcode::INVALID_CREDENTIAL)
        } else {
            issued.entry.check(at)
        };
        Some((t, s, result))
    }

    /// Issues a new access token for the slot; the previous one lives `overlap` more.
    fn issue(&mut self, t: usize, s: usize, timing: &Timing, now: &Now) -> Option<(String, u64)> {
        let token: Arc<str> = loop {
            let candidate = wire::random_token(wire::ACCESS_TOKEN_LEN);
            if !self.tokens.contains_key(candidate.as_str()) {
                break Arc::from(candidate);
            }
        };
        let table = self.tables.get_mut(t)?;
        let slot = table.slots.get_mut(s)?;
        if let Some(old) = slot.current.take() {
            if let Some(old) = self.tokens.get_mut(&old) {
                old.entry.replace(now.at + timing.overlap);
            }
        }
        let entry = TokenEntry::new(
            Arc::clone(&slot.appid),
            TokenKind::AccessToken,
            now.at + timing.expires_in,
        );
        self.tokens.insert(
            Arc::clone(&token),
            IssuedToken {
                table: u32::try_from(t).ok()?,
                slot: u32::try_from(s).ok()?,
                epoch: slot.token_epoch,
                entry,
            },
        );
        slot.current = Some(Arc::clone(&token));
        table.tokens_issued += 1;
        tracing::debug!(
            component = %table.appid,
            authorizer = %slot.appid,
            token_prefix = %wire::prefix(&token),
            "authorizer token issued"
        );
        Some((token.to_string(), wire::wire_secs(timing.expires_in)))
    }

    /// Creates `n` authorized authorizers without pushes; returns their appids.
    fn bulk(
        &mut self,
        component: &str,
        n: u32,
        unix_s: u64,
    ) -> Result<Vec<String>, AuthorizerError> {
        let t = self.table(component)?;
        let first_epoch = self.next_epoch + 1;
        let table = self.tables.get_mut(t).ok_or(AuthorizerError::TooMany)?;
        if table.bulk_created + u64::from(n) > u64::from(MAX_BULK_AUTHORIZERS) {
            return Err(AuthorizerError::TooMany);
        }
        // Reserved before any is used, so that no epoch is handed out twice.
        self.next_epoch = first_epoch + u64::from(n);
        let n = n as usize;
        table.slots.reserve(n);
        table.order.reserve(n);
        table.by_appid.reserve(n);
        let mut appids = Vec::with_capacity(n);
        for k in 0..n {
            let appid = loop {
                let candidate = format!("{BULK_PREFIX}{:015}", table.bulk_next);
                table.bulk_next += 1;
                if !table.by_appid.contains_key(candidate.as_str()) {
                    break candidate;
                }
            };
            table.activate(&appid, first_epoch + count(k), unix_s)?;
            table.bulk_created += 1;
            appids.push(appid);
        }
        tracing::debug!(%component, n, "authorizers created in bulk");
        Ok(appids)
    }
}

/// Checks an authorizer appid given to the admin API (it ends up inside XML CDATA).
fn check_appid(appid: &str) -> Result<(), AuthorizerError> {
    let ok = (1..=MAX_APPID_LEN).contains(&appid.len())
        && appid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(AuthorizerError::InvalidAppid(appid.to_string()))
    }
}

/// The decrypted XML of an authorization event.
fn event_xml(
    component: &str,
    authorizer: &str,
    event: AuthEvent,
    code: Option<(&str, u64)>,
    create_time: u64,
) -> String {
    let mut xml = format!(
        "<xml><AppId><![CDATA[{component}]]></AppId><CreateTime>{create_time}</CreateTime>\
         <InfoType><![CDATA[{}]]></InfoType>\
         <AuthorizerAppid><![CDATA[{authorizer}]]></AuthorizerAppid>",
        event.info_type()
    );
    if let Some((code, expires)) = code {
        let pre_auth = format!("{PRE_AUTH_PREFIX}{}", wire::random_token(REFRESH_LEN));
        xml.push_str(&format!(
            "<AuthorizationCode><![CDATA[{code}]]></AuthorizationCode>\
             <AuthorizationCodeExpiredTime>{expires}</AuthorizationCodeExpiredTime>\
             <PreAuthCode><![CDATA[{pre_auth}]]></PreAuthCode>"
        ));
    }
    xml.push_str("</xml>");
    xml
}

/// A push ready to send: (url, query string, body).
type Sealed = (String, String, String);

/// Applies an authorization change and, when `push`, seals its event (sending is the
/// caller's, outside every lock). Nothing changes if the push cannot be built.
fn change(
    shared: &Shared,
    component: &str,
    authorizer: &str,
    event: AuthEvent,
    push: bool,
) -> Result<(AuthorizeRecord, Option<Sealed>), AuthorizerError> {
    check_appid(authorizer)?;
    let now = shared.now();
    let target = if push {
        Some(shared.components.push_target(component)?)
    } else {
        None
    };
    let lifetime = shared.timing.authorization_code_lifetime;
    let code = match event {
        AuthEvent::Unauthorized => None,
        _ => Some(format!("{CODE_PREFIX}{}", wire::random_token(CODE_LEN))),
    };
    let lifetime_ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
    let code_expires_at = code
        .as_ref()
        .map(|_| now.unix_ms.saturating_add(lifetime_ms) / 1000);
    let create_time = now.unix_ms / 1000;
    let sealed = match target {
        Some((url, crypt)) => {
            let msg = event_xml(
                component,
                authorizer,
                event,
                code.as_deref().zip(code_expires_at),
                create_time,
            );
            let (query, body) = component::seal(&crypt, component, &msg, create_time)?;
            Some((url, query, body))
        }
        None => None,
    };

    let mut inner = shared.authorizers.lock();
    let t = inner.table(component)?;
    let epoch = inner.epoch();
    let table = inner
        .tables
        .get_mut(t)
        .ok_or_else(|| AuthorizerError::UnknownComponent(component.to_string()))?;
    let slot = match event {
        AuthEvent::Authorized => table.activate(authorizer, epoch, create_time)?,
        AuthEvent::UpdateAuthorized | AuthEvent::Unauthorized => {
            let i = table.authorized_slot(authorizer)?;
            let slot = table.slots.get_mut(i).ok_or(AuthorizerError::TooMany)?;
            slot.auth_epoch = epoch;
            slot.token_epoch = epoch;
            slot.current = None;
            if event == AuthEvent::Unauthorized {
                slot.authorized = false;
                slot.refresh_token = Box::from("");
                let k = u32::try_from(i).unwrap_or(u32::MAX);
                table.order.retain(|&o| o != k);
            } else {
                slot.refresh_token = new_refresh_token();
                slot.auth_time = create_time;
            }
            i
        }
    };
    if let (Some(code), Ok(slot)) = (&code, u32::try_from(slot)) {
        table.codes.insert(
            code.clone().into_boxed_str(),
            PendingCode {
                slot,
                auth_epoch: epoch,
                expires_at: now.at + lifetime,
            },
        );
    }
    drop(inner);
    tracing::debug!(%component, %authorizer, event = event.info_type(), push, "authorization changed");
    let record = AuthorizeRecord {
        component_appid: component.to_string(),
        authorizer_appid: authorizer.to_string(),
        event,
        authorization_code: code,
        code_expires_at,
        push: None,
    };
    Ok((record, sealed))
}

/// [`change`] with its push sent and recorded.
async fn change_and_push(
    shared: &Shared,
    component: &str,
    authorizer: &str,
    event: AuthEvent,
) -> Result<AuthorizeRecord, AuthorizerError> {
    let now = shared.now();
    let (mut record, sealed) = change(shared, component, authorizer, event, true)?;
    let Some((url, query, body)) = sealed else {
        return Ok(record);
    };
    let (status, success, error) =
        component::send(shared.components.http(), &url, &query, body).await;
    let push = EventPush {
        since_start_ms: now.since_start_ms,
        event,
        authorizer_appid: authorizer.to_string(),
        code_prefix: record
            .authorization_code
            .as_deref()
            .map(|c| prefix_after(c, CODE_PREFIX)),
        status,
        success,
        error,
    };
    let mut inner = shared.authorizers.lock();
    if let Some(table) = inner
        .by_component
        .get(component)
        .copied()
        .and_then(|t| inner.tables.get_mut(t))
    {
        match event {
            AuthEvent::Authorized => table.events.authorized += 1,
            AuthEvent::UpdateAuthorized => table.events.update_authorized += 1,
            AuthEvent::Unauthorized => table.events.unauthorized += 1,
        }
        if success {
            table.events.acknowledged += 1;
        }
        table.pushes.push(push.clone());
    }
    drop(inner);
    record.push = Some(push);
    Ok(record)
}

/// What a component API call is, before its endpoint's own rules.
struct Call {
    body: Value,
    /// The component the call is attributed to (its token's, else its `component_appid`).
    component: Option<String>,
    /// The component whose valid token was presented, or the errcode for the token.
    token: Result<String, i64>,
    /// The token as presented.
    presented: Option<String>,
    /// The token is an app's access token (61014).
    token_is_app_token: bool,
}

impl Call {
    /// Reads the token and body; checks the token against the components and the apps (each
    /// under its own lock, one after the other).
    fn read(shared: &Shared, query: Option<&str>, body: &[u8], now: &Now) -> Call {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let token = query_param(query, "component_access_token")
            .or_else(|| query_param(query, "access_token"));
        let checked = token.as_deref().and_then(|t| {
            shared
                .components
                .check_token(t, now.at, shared.timing.overlap)
        });
        let token_is_app_token = checked.is_none()
            && token
                .as_deref()
                .is_some_and(|t| shared.lock().is_access_token(t));
        let body_component = str_field(&body, "component_appid");
        let presented = token.clone();
        let (component, token) = match (token, checked) {
            (None, _) => (body_component, Err(errcode::ACCESS_TOKEN_MISSING)),
            (Some(_), Some((owner, result))) => (Some(owner.clone()), result.map(|()| owner)),
            (Some(_), None) => (body_component, Err(errcode::INVALID_CREDENTIAL)),
        };
        Call {
            body,
            component,
            token,
            presented,
            token_is_app_token,
        }
    }
}

/// The common checks and the endpoint's rules under the authorizers' lock; records the
/// outcome for the component the call is attributed to.
fn answer(
    shared: &Shared,
    call: Call,
    endpoint: AuthorizerEndpoint,
    now: &Now,
    rules: impl FnOnce(&mut Inner, usize, &Value, &Timing, &Now) -> Result<Value, i64>,
) -> Response {
    let mut inner = shared.authorizers.lock();
    let attributed = call
        .component
        .as_deref()
        .and_then(|c| inner.by_component.get(c).copied());
    let scripted = attributed
        .and_then(|t| inner.tables.get_mut(t))
        .and_then(|table| table.scripted[endpoint.index()].pop_front());
    let result = match scripted {
        Some(code) => Err(code),
        None => common_checks(&inner, &call)
            .and_then(|t| rules(&mut inner, t, &call.body, &shared.timing, now)),
    };
    if let Some(table) = attributed.and_then(|t| inner.tables.get_mut(t)) {
        table.record(
            endpoint,
            result.as_ref().map(|_| ()).map_err(|&c| c),
            scripted.is_some(),
        );
    }
    drop(inner);
    match result {
        Ok(body) => WxReply::Ok(body).into_response(),
        Err(code) => WxReply::err(code).into_response(),
    }
}

/// Token, body and `component_appid`; Ok(the component's table).
fn common_checks(inner: &Inner, call: &Call) -> Result<usize, i64> {
    let owner = match &call.token {
        Ok(owner) => owner,
        Err(errcode::INVALID_CREDENTIAL)
            if call.token_is_app_token
                || call
                    .presented
                    .as_deref()
                    .is_some_and(|t| inner.tokens.contains_key(t)) =>
        {
            return Err(errcode::COMPONENT_TOKEN_REQUIRED)
        }
        Err(code) => return Err(*code),
    };
    if !call.body.is_object() {
        return Err(errcode::DATA_FORMAT_ERROR);
    }
    let component =
        str_field(&call.body, "component_appid").ok_or(errcode::COMPONENT_APPID_MISSING)?;
    if &component != owner {
        return Err(errcode::INVALID_COMPONENT);
    }
    inner
        .by_component
        .get(&component)
        .copied()
        .ok_or(errcode::INVALID_COMPONENT)
}

/// `api_query_auth`: the code (61009 unknown/used/superseded, 61010 expired), then a new token.
fn query_auth_rules(
    inner: &mut Inner,
    t: usize,
    body: &Value,
    timing: &Timing,
    now: &Now,
) -> Result<Value, i64> {
    let code = str_field(body, "authorization_code").ok_or(errcode::AUTHORIZATION_CODE_INVALID)?;
    let table = inner.tables.get_mut(t).ok_or(errcode::INVALID_COMPONENT)?;
    let pending = table
        .codes
        .get(code.as_str())
        .ok_or(errcode::AUTHORIZATION_CODE_INVALID)?;
    if now.at >= pending.expires_at {
        return Err(errcode::AUTHORIZATION_CODE_EXPIRED);
    }
    let s = pending.slot as usize;
    let current = table
        .slots
        .get(s)
        .is_some_and(|slot| slot.authorized && slot.auth_epoch == pending.auth_epoch);
    table.codes.remove(code.as_str());
    if !current {
        return Err(errcode::AUTHORIZATION_CODE_INVALID);
    }
    let (token, expires_in) = inner
        .issue(t, s, timing, now)
        .ok_or(errcode::AUTHORIZATION_CODE_INVALID)?;
    let slot = inner
        .tables
        .get_mut(t)
        .and_then(|table| table.slots.get_mut(s))
        .ok_or(errcode::AUTHORIZATION_CODE_INVALID)?;
    slot.query_auth += 1;
    Ok(json!({
        "authorization_info": {
            "authorizer_appid": &*slot.appid,
            "authorizer_access_token": token,
            "expires_in": expires_in,
            "authorizer_refresh_token": &*slot.refresh_token,
            "func_info": [
                { "funcscope_category": { "id": 1 } },
            ],
        }
    }))
}

/// `api_authorizer_token`: 41002, 61003, 61023, 45009 in that order, then a new token.
fn authorizer_token_rules(
    inner: &mut Inner,
    t: usize,
    body: &Value,
    timing: &Timing,
    now: &Now,
) -> Result<Value, i64> {
    let appid = str_field(body, "authorizer_appid").ok_or(errcode::APPID_MISSING)?;
    let refresh_token = str_field(body, "authorizer_refresh_token");
    let table = inner.tables.get_mut(t).ok_or(errcode::INVALID_COMPONENT)?;
    let s = table
        .by_appid
        .get(appid.as_str())
        .copied()
        .ok_or(errcode::COMPONENT_NOT_AUTHORIZED)? as usize;
    let slot = table
        .slots
        .get_mut(s)
        .ok_or(errcode::COMPONENT_NOT_AUTHORIZED)?;
    slot.token_calls += 1;
    if !slot.authorized {
        return Err(errcode::COMPONENT_NOT_AUTHORIZED);
    }
    if refresh_token.as_deref() != Some(&*slot.refresh_token) {
        return Err(errcode::REFRESH_TOKEN_INVALID);
    }
    if slot.quota_day != now.day {
        slot.quota_day = now.day;
        slot.quota_used = 0;
    }
    if slot.quota_used >= timing.authorizer_token_daily_quota {
        return Err(errcode::DAILY_QUOTA);
    }
    slot.quota_used += 1;
    slot.token_issued += 1;
    let refresh_token = slot.refresh_token.to_string();
    let (token, expires_in) = inner
        .issue(t, s, timing, now)
        .ok_or(errcode::COMPONENT_NOT_AUTHORIZED)?;
    Ok(json!({
        "authorizer_access_token": token,
        "expires_in": expires_in,
        "authorizer_refresh_token": refresh_token,
    }))
}

/// `api_get_authorizer_list`: `offset` ≥ 0 and 1 ≤ `count` ≤ 500 (40170 above, 40097 else).
fn list_rules(
    inner: &mut Inner,
    t: usize,
    body: &Value,
    _timing: &Timing,
    _now: &Now,
) -> Result<Value, i64> {
    let offset = body
        .get("offset")
        .and_then(Value::as_u64)
        .ok_or(errcode::INVALID_ARGS)?;
    let count = body
        .get("count")
        .and_then(Value::as_i64)
        .ok_or(errcode::INVALID_ARGS)?;
    if count > MAX_LIST_COUNT {
        return Err(errcode::ARGS_COUNT_EXCEEDED);
    }
    let count = usize::try_from(count)
        .ok()
        .filter(|&c| c >= 1)
        .ok_or(errcode::INVALID_ARGS)?;
    let table = inner.tables.get(t).ok_or(errcode::INVALID_COMPONENT)?;
    let offset = usize::try_from(offset).unwrap_or(usize::MAX);
    let list: Vec<Value> = table
        .order
        .iter()
        .skip(offset)
        .take(count)
        .filter_map(|&i| table.slots.get(i as usize))
        .map(|slot| {
            json!({
                "authorizer_appid": &*slot.appid,
                "refresh_token": &*slot.refresh_token,
                "auth_time": slot.auth_time,
            })
        })
        .collect();
    Ok(json!({ "total_count": table.order.len(), "list": list }))
}

/// `POST /cgi-bin/component/api_query_auth`.
pub(crate) async fn query_auth(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let now = shared.now();
    let call = Call::read(&shared, query.as_deref(), &body, &now);
    answer(
        &shared,
        call,
        AuthorizerEndpoint::QueryAuth,
        &now,
        query_auth_rules,
    )
}

/// `POST /cgi-bin/component/api_authorizer_token`.
pub(crate) async fn authorizer_token(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let now = shared.now();
    let call = Call::read(&shared, query.as_deref(), &body, &now);
    answer(
        &shared,
        call,
        AuthorizerEndpoint::AuthorizerToken,
        &now,
        authorizer_token_rules,
    )
}

/// `POST /cgi-bin/component/api_get_authorizer_list`.
pub(crate) async fn get_authorizer_list(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let now = shared.now();
    let call = Call::read(&shared, query.as_deref(), &body, &now);
    answer(
        &shared,
        call,
        AuthorizerEndpoint::GetAuthorizerList,
        &now,
        list_rules,
    )
}

impl Admin {
    /// Authorizes `authorizer_appid` for the component (a new authorizer, or one that
    /// unauthorized before): a new refresh token and a new single-use authorization code,
    /// then an encrypted `authorized` event pushed to the component's `push_url` (the
    /// receiver's answer is in the record and in [`Admin::authorizer_evidence`]).
    /// [`AuthorizerError::AlreadyAuthorized`] if it authorizes the component already.
    pub async fn authorize(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Result<AuthorizeRecord, AuthorizerError> {
        change_and_push(
            self.shared(),
            component_appid,
            authorizer_appid,
            AuthEvent::Authorized,
        )
        .await
    }

    /// [`Admin::authorize`] without a push (and without needing a `push_url`): the returned
    /// code is what an operator would type in to add the authorizer by code.
    pub fn authorize_without_push(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Result<AuthorizeRecord, AuthorizerError> {
        let shared = self.shared();
        change(
            shared,
            component_appid,
            authorizer_appid,
            AuthEvent::Authorized,
            false,
        )
        .map(|(record, _)| record)
    }

    /// Re-authorizes: a new authorization code and a NEW refresh token (the old one answers
    /// 61023), the current access token invalid at once; pushes `updateauthorized`.
    pub async fn reauthorize(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Result<AuthorizeRecord, AuthorizerError> {
        change_and_push(
            self.shared(),
            component_appid,
            authorizer_appid,
            AuthEvent::UpdateAuthorized,
        )
        .await
    }

    /// [`Admin::reauthorize`] without a push.
    pub fn reauthorize_without_push(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Result<AuthorizeRecord, AuthorizerError> {
        let shared = self.shared();
        change(
            shared,
            component_appid,
            authorizer_appid,
            AuthEvent::UpdateAuthorized,
            false,
        )
        .map(|(record, _)| record)
    }

    /// Withdraws the authorization: its tokens, refresh token and pending codes are invalid at
    /// once, `api_authorizer_token` answers 61003, the list leaves it out; pushes
    /// `unauthorized`.
    pub async fn unauthorize(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Result<AuthorizeRecord, AuthorizerError> {
        change_and_push(
            self.shared(),
            component_appid,
            authorizer_appid,
            AuthEvent::Unauthorized,
        )
        .await
    }

    /// [`Admin::unauthorize`] without a push.
    pub fn unauthorize_without_push(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Result<AuthorizeRecord, AuthorizerError> {
        let shared = self.shared();
        change(
            shared,
            component_appid,
            authorizer_appid,
            AuthEvent::Unauthorized,
            false,
        )
        .map(|(record, _)| record)
    }

    /// Creates `n` authorized authorizers at once, without pushes or codes (their refresh
    /// tokens are in `api_get_authorizer_list`), and returns their appids in list order:
    /// `wxa` + 15 decimal digits, counting on from the component's previous bulk creation
    /// (skipping appids taken already). At most [`MAX_BULK_AUTHORIZERS`] per component in
    /// total; 100,000 take well under a second.
    pub fn bulk_authorize(
        &self,
        component_appid: &str,
        n: u32,
    ) -> Result<Vec<String>, AuthorizerError> {
        let now = self.shared().now();
        self.shared()
            .authorizers
            .lock()
            .bulk(component_appid, n, now.unix_ms / 1000)
    }

    /// Test fault: WeChat changes the authorizer's refresh token silently (no push), so a
    /// stored one answers 61023 and the list shows the new one. Access tokens stay valid.
    pub fn rotate_refresh_token(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Result<(), AuthorizerError> {
        self.with_authorizer(component_appid, authorizer_appid, |slot, _| {
            slot.refresh_token = new_refresh_token();
        })
    }

    /// Test fault: every access token of the authorizer is invalid now (40001), as after a
    /// leak; the refresh token stays valid, so the next `api_authorizer_token` works.
    pub fn revoke_authorizer_token(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Result<(), AuthorizerError> {
        self.with_authorizer(component_appid, authorizer_appid, |slot, epoch| {
            slot.token_epoch = epoch;
            slot.current = None;
        })
    }

    fn with_authorizer(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
        f: impl FnOnce(&mut Slot, u64),
    ) -> Result<(), AuthorizerError> {
        let mut inner = self.shared().authorizers.lock();
        let t = inner.table(component_appid)?;
        let epoch = inner.epoch();
        let table = inner
            .tables
            .get_mut(t)
            .ok_or_else(|| AuthorizerError::UnknownComponent(component_appid.to_string()))?;
        let s = table.authorized_slot(authorizer_appid)?;
        if let Some(slot) = table.slots.get_mut(s) {
            f(slot, epoch);
        }
        Ok(())
    }

    /// Makes the next `times` calls of `endpoint` by the component answer `errcode` (e.g. -1)
    /// before any check; they charge no quota and change nothing.
    pub fn fail_authorizer_endpoint(
        &self,
        component_appid: &str,
        endpoint: AuthorizerEndpoint,
        errcode: i64,
        times: u32,
    ) -> Result<(), AuthorizerError> {
        if times == 0 {
            return Err(AuthorizerError::ZeroTimes);
        }
        let mut inner = self.shared().authorizers.lock();
        let t = inner.table(component_appid)?;
        if let Some(table) = inner.tables.get_mut(t) {
            table.scripted[endpoint.index()].extend(std::iter::repeat_n(errcode, times as usize));
        }
        Ok(())
    }

    /// Whether an authorizer access token is valid now: `Ok(authorizer appid)`, or the
    /// errcode a business API would answer (40001 unknown, revoked, invalidated by a
    /// re-/unauthorization, or replaced past its overlap; 42001 expired).
    pub fn check_authorizer_token(&self, token: &str) -> Result<String, i64> {
        let at = self.shared().clock.now();
        let inner = self.shared().authorizers.lock();
        let (t, s, result) = inner.check(token, at).ok_or(errcode::INVALID_CREDENTIAL)?;
        result?;
        inner
            .tables
            .get(t)
            .and_then(|table| table.slots.get(s))
            .map(|slot| slot.appid.to_string())
            .ok_or(errcode::INVALID_CREDENTIAL)
    }

    /// Counters of a component's authorizers (O(authorizers) for the histogram); `None` for an
    /// unknown component.
    pub fn authorizer_evidence(&self, component_appid: &str) -> Option<AuthorizerEvidence> {
        let inner = self.shared().authorizers.lock();
        let t = inner.by_component.get(component_appid).copied()?;
        inner.tables.get(t).map(Table::evidence)
    }

    /// One authorizer's counters; `None` if it never authorized the component.
    pub fn authorizer_counts(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Option<AuthorizerCounts> {
        let inner = self.shared().authorizers.lock();
        let table = inner
            .by_component
            .get(component_appid)
            .and_then(|&t| inner.tables.get(t))?;
        let s = table.by_appid.get(authorizer_appid).copied()?;
        let slot = table.slots.get(s as usize)?;
        Some(AuthorizerCounts {
            authorized: slot.authorized,
            auth_time: slot.auth_time,
            refresh_token_prefix: slot
                .authorized
                .then(|| prefix_after(&slot.refresh_token, REFRESH_PREFIX)),
            query_auth: slot.query_auth,
            authorizer_token_calls: slot.token_calls,
            authorizer_token_issued: slot.token_issued,
            business_ok: slot.business_ok,
            business_rejected: slot.business_rejected,
            tickets_issued: slot.tickets_issued,
        })
    }

    /// Authorizer appid → successful `api_authorizer_token` calls, for every authorizer of the
    /// component with at least one (O(authorizers)); `None` for an unknown component.
    pub fn authorizer_issue_counts(&self, component_appid: &str) -> Option<HashMap<String, u64>> {
        let inner = self.shared().authorizers.lock();
        let table = inner
            .by_component
            .get(component_appid)
            .and_then(|&t| inner.tables.get(t))?;
        Some(
            table
                .slots
                .iter()
                .filter(|slot| slot.token_issued > 0)
                .map(|slot| (slot.appid.to_string(), slot.token_issued))
                .collect(),
        )
    }
}

/// Body of `POST /_sim/components/{appid}/authorizers/bulk`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkAuthorize {
    /// How many authorizers to create.
    pub count: u32,
}

/// Body of `POST /_sim/components/{appid}/authorizers/fail`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailAuthorizerEndpoint {
    /// Which endpoint.
    pub endpoint: AuthorizerEndpoint,
    /// The errcode to answer.
    pub errcode: i64,
    /// How many calls (at least 1).
    pub times: u32,
}

/// The authorizer routes of the admin API (nested under `/_sim` with the others).
pub(crate) fn admin_routes() -> Router<Arc<Shared>> {
    const BASE: &str = "/components/{component}/authorizers";
    Router::new()
        .route(&format!("{BASE}/evidence"), get(http_evidence))
        .route(&format!("{BASE}/issue_counts"), get(http_issue_counts))
        .route(&format!("{BASE}/bulk"), post(http_bulk))
        .route(&format!("{BASE}/fail"), post(http_fail))
        .route(&format!("{BASE}/{{authorizer}}/counts"), get(http_counts))
        .route(
            &format!("{BASE}/{{authorizer}}/{{action}}"),
            post(http_action),
        )
}

fn http_error(e: AuthorizerError) -> Response {
    let status = match e {
        AuthorizerError::UnknownComponent(_) | AuthorizerError::UnknownAuthorizer { .. } => {
            StatusCode::NOT_FOUND
        }
        AuthorizerError::NotAuthorized { .. } | AuthorizerError::AlreadyAuthorized { .. } => {
            StatusCode::CONFLICT
        }
        AuthorizerError::Crypto(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    admin::error(status, e)
}

fn respond<T: Serialize>(result: Result<T, AuthorizerError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => http_error(e),
    }
}

fn unknown_component(component: String) -> Response {
    http_error(AuthorizerError::UnknownComponent(component))
}

/// `?push=false` → no push; absent or `true` → push; anything else: the error message.
fn wants_push(query: Option<&str>) -> Result<bool, String> {
    match query_param(query, "push").as_deref() {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(format!("push must be true or false, not {other:?}")),
    }
}

async fn http_evidence(
    State(shared): State<Arc<Shared>>,
    Path(component): Path<String>,
) -> Response {
    match Admin::new(shared).authorizer_evidence(&component) {
        Some(ev) => Json(ev).into_response(),
        None => unknown_component(component),
    }
}

async fn http_issue_counts(
    State(shared): State<Arc<Shared>>,
    Path(component): Path<String>,
) -> Response {
    match Admin::new(shared).authorizer_issue_counts(&component) {
        Some(counts) => Json(counts).into_response(),
        None => unknown_component(component),
    }
}

async fn http_counts(
    State(shared): State<Arc<Shared>>,
    Path((component, authorizer)): Path<(String, String)>,
) -> Response {
    let admin = Admin::new(shared);
    match admin.authorizer_counts(&component, &authorizer) {
        Some(counts) => Json(counts).into_response(),
        None if admin.authorizer_evidence(&component).is_none() => unknown_component(component),
        None => http_error(AuthorizerError::UnknownAuthorizer {
            component,
            authorizer,
        }),
    }
}

async fn http_bulk(
    State(shared): State<Arc<Shared>>,
    Path(component): Path<String>,
    body: Bytes,
) -> Response {
    match admin::parse_body::<BulkAuthorize>("bulk (expected {\"count\": N})", &body) {
        Ok(b) => respond(
            Admin::new(shared)
                .bulk_authorize(&component, b.count)
                .map(|appids| json!({ "appids": appids })),
        ),
        Err(msg) => admin::error(StatusCode::BAD_REQUEST, msg),
    }
}

async fn http_fail(
    State(shared): State<Arc<Shared>>,
    Path(component): Path<String>,
    body: Bytes,
) -> Response {
    match admin::parse_body::<FailAuthorizerEndpoint>("fail", &body) {
        Ok(f) => respond(
            Admin::new(shared)
                .fail_authorizer_endpoint(&component, f.endpoint, f.errcode, f.times)
                .map(|()| json!({ "ok": true })),
        ),
        Err(msg) => admin::error(StatusCode::BAD_REQUEST, msg),
    }
}

/// `POST .../{authorizer}/{action}`: `authorize`, `reauthorize`, `unauthorize` (each with
/// `?push=false` for the `_without_push` variant), `rotate_refresh_token`, `revoke`.
async fn http_action(
    State(shared): State<Arc<Shared>>,
    Path((component, authorizer, action)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let event = match action.as_str() {
        "authorize" => AuthEvent::Authorized,
        "reauthorize" => AuthEvent::UpdateAuthorized,
        "unauthorize" => AuthEvent::Unauthorized,
        "rotate_refresh_token" | "revoke" => {
            let admin = Admin::new(shared);
            let done = if action == "revoke" {
                admin.revoke_authorizer_token(&component, &authorizer)
            } else {
                admin.rotate_refresh_token(&component, &authorizer)
            };
            return respond(done.map(|()| json!({ "ok": true })));
        }
        other => {
            return admin::error(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown authorizer action {other:?}: expected authorize, reauthorize, \
                     unauthorize, rotate_refresh_token or revoke"
                ),
            )
        }
    };
    match wants_push(query.as_deref()) {
        Ok(true) => respond(change_and_push(&shared, &component, &authorizer, event).await),
        Ok(false) => respond(
            change(&shared, &component, &authorizer, event, false).map(|(record, _)| record),
        ),
        Err(msg) => admin::error(StatusCode::BAD_REQUEST, msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appids_are_checked() {
        assert_eq!(check_appid("wx1234567890abcdef"), Ok(()));
        assert!(check_appid("").is_err());
        assert!(check_appid("wx]]>").is_err());
        assert!(check_appid(&"a".repeat(65)).is_err());
    }

    #[test]
    fn event_xml_has_wechat_fields() {
        let xml = event_xml("wxc", "wxa", AuthEvent::Authorized, Some(("code", 99)), 42);
        assert!(xml.starts_with("<xml><AppId><![CDATA[wxc]]></AppId><CreateTime>42</CreateTime>"));
        assert!(xml.contains("<InfoType><![CDATA[authorized]]></InfoType>"));
        assert!(xml.contains("<AuthorizationCode><![CDATA[code]]></AuthorizationCode>"));
        assert!(xml.contains("<AuthorizationCodeExpiredTime>99</AuthorizationCodeExpiredTime>"));
        assert!(xml.contains("<PreAuthCode><![CDATA[preauthcode@@@"));
        let gone = event_xml("wxc", "wxa", AuthEvent::Unauthorized, None, 42);
        assert!(!gone.contains("AuthorizationCode"));
        assert!(gone.ends_with("<AuthorizerAppid><![CDATA[wxa]]></AuthorizerAppid></xml>"));
    }

    #[test]
    fn bulk_appids_are_unique_and_ordered() {
        let config = SimConfig::default();
        let auth = Authorizers::new(&config, 0);
        let mut inner = auth.lock();
        inner.tables.push(Table::new("wxc"));
        inner.by_component.insert("wxc".into(), 0);
        let a = inner.bulk("wxc", 3, 1).unwrap_or_default();
        assert_eq!(
            a,
            [
                "wxa000000000000000",
                "wxa000000000000001",
                "wxa000000000000002"
            ]
        );
        let b = inner.bulk("wxc", 1, 1).unwrap_or_default();
        assert_eq!(b, ["wxa000000000000003"]);
        assert_eq!(inner.tables[0].order, [0, 1, 2, 3]);
        assert_eq!(
            inner.bulk("nope", 1, 1),
            Err(AuthorizerError::UnknownComponent("nope".into()))
        );
    }
}
