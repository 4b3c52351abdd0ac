//! Scripting and inspection: the in-process [`Admin`] handle and the HTTP admin API under
//! `/_sim/` that mirrors it (JSON in and out).
//!
//! Tests use these to add apps, inject faults, flip the whitelist/frozen flags, exhaust or
//! reset quotas, revoke tokens, and read the evidence. Must not: reveal a secret or a whole
//! token (evidence has 8-character prefixes only), or silently accept malformed requests
//! (bad bodies are 400 naming the problem, unknown apps 404).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::clock::{Advance, ClockState};
use crate::config::AppConfig;
use crate::evidence::{AppEvidence, Endpoint, Evidence, FetchCounts, FetchRecord, SimCounts};
use crate::fault::Fault;
use crate::state::{AppState, Shared};

/// Why an admin operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// No app with this appid exists.
    #[error("unknown appid {0}")]
    UnknownApp(String),
    /// An appid must not be empty.
    #[error("appid must not be empty")]
    EmptyAppid,
    /// A secret must not be empty.
    #[error("secret must not be empty")]
    EmptySecret,
    /// An app with this appid exists already (`POST /_sim/apps` never replaces a secret).
    #[error("appid {0} exists already; its secret is not replaced")]
    AppExists(String),
    /// A fault with `times: Some(0)` would never apply.
    #[error("fault `times` must be at least 1 (None means until cleared)")]
    ZeroTimes,
    /// [`Admin::advance`] would move the clock further than [`crate::MAX_CLOCK_ADVANCE`] in total.
    #[error("the simulator clock can be advanced by at most 100 years in total")]
    ClockTooFar,
}

/// A cheap, cloneable handle onto a running simulator's state: the in-process equivalent of the
/// HTTP admin API.
///
/// The plain methods (`inject`, `set_ip_whitelisted`, ...) ignore unknown appids with a
/// `tracing` warning; the `try_*` variants return [`AdminError`] instead.
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

/// Logs a refused operation of an infallible admin method.
fn warn_refused(op: &str, result: Result<(), AdminError>) {
    if let Err(e) = result {
        tracing::warn!(op, error = %e, "simulator admin operation ignored");
    }
}

impl Admin {
    pub(crate) fn new(shared: Arc<Shared>) -> Admin {
        Admin { shared }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn with_app<R>(
        &self,
        appid: &str,
        f: impl FnOnce(&mut AppState) -> R,
    ) -> Result<R, AdminError> {
        let now = self.shared.now();
        let mut inner = self.shared.lock();
        let app = inner
            .app_mut(appid, &now)
            .ok_or_else(|| AdminError::UnknownApp(appid.to_string()))?;
        Ok(f(app))
    }

    /// Adds an app; for an existing appid, replaces its secret and keeps everything else.
    pub fn add_app(&self, appid: &str, secret: &str) {
        warn_refused("add_app", self.try_add_app(appid, secret).map(|_| ()));
    }

    /// Adds an app; returns `Ok(true)` if it is new, `Ok(false)` if an existing app's secret
    /// was replaced.
    pub fn try_add_app(&self, appid: &str, secret: &str) -> Result<bool, AdminError> {
        if appid.trim().is_empty() {
            return Err(AdminError::EmptyAppid);
        }
        if secret.is_empty() {
            return Err(AdminError::EmptySecret);
        }
        Ok(self.shared.lock().add_app(appid, secret))
    }

    /// Adds an app that does not exist yet; an existing appid is refused with
    /// [`AdminError::AppExists`] and left as it is (what `POST /_sim/apps` does).
    pub fn try_create_app(&self, appid: &str, secret: &str) -> Result<(), AdminError> {
        if appid.trim().is_empty() {
            return Err(AdminError::EmptyAppid);
        }
        if secret.is_empty() {
            return Err(AdminError::EmptySecret);
        }
        if self.shared.lock().add_new_app(appid, secret) {
            Ok(())
        } else {
            Err(AdminError::AppExists(appid.to_string()))
        }
    }

    /// Whether the app exists.
    pub fn has_app(&self, appid: &str) -> bool {
        self.shared.lock().apps.contains_key(appid)
    }

    /// Queues a scripted fault for the app (appended to its FIFO).
    pub fn inject(&self, appid: &str, fault: Fault) {
        warn_refused("inject", self.try_inject(appid, fault));
    }

    /// Queues a scripted fault, or says why not.
    pub fn try_inject(&self, appid: &str, fault: Fault) -> Result<(), AdminError> {
        if fault.times == Some(0) {
            return Err(AdminError::ZeroTimes);
        }
        self.with_app(appid, |app| app.faults.push_back(fault))
    }

    /// The app's pending faults, in order.
    pub fn faults(&self, appid: &str) -> Vec<Fault> {
        self.with_app(appid, |app| app.faults.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Removes all of the app's pending faults.
    pub fn clear_faults(&self, appid: &str) {
        warn_refused("clear_faults", self.try_clear_faults(appid));
    }

    /// Removes all of the app's pending faults, or says why not.
    pub fn try_clear_faults(&self, appid: &str) -> Result<(), AdminError> {
        self.with_app(appid, |app| app.faults.clear())
    }

    /// `false` makes token fetches answer 40164 (caller IP not in whitelist).
    pub fn set_ip_whitelisted(&self, appid: &str, ok: bool) {
        warn_refused("set_ip_whitelisted", self.try_set_ip_whitelisted(appid, ok));
    }

    /// See [`Admin::set_ip_whitelisted`].
    pub fn try_set_ip_whitelisted(&self, appid: &str, ok: bool) -> Result<(), AdminError> {
        self.with_app(appid, |app| app.ip_whitelisted = ok)
    }

    /// `true` makes token fetches answer 40243 (AppSecret frozen).
    pub fn set_secret_frozen(&self, appid: &str, frozen: bool) {
        warn_refused(
            "set_secret_frozen",
            self.try_set_secret_frozen(appid, frozen),
        );
    }

    /// See [`Admin::set_secret_frozen`].
    pub fn try_set_secret_frozen(&self, appid: &str, frozen: bool) -> Result<(), AdminError> {
        self.with_app(appid, |app| app.secret_frozen = frozen)
    }

    /// Sets the quota used today for one endpoint (e.g. to the daily limit, to exhaust it).
    pub fn set_quota_used(&self, appid: &str, endpoint: Endpoint, used: u32) {
        warn_refused(
            "set_quota_used",
            self.try_set_quota_used(appid, endpoint, used),
        );
    }

    /// See [`Admin::set_quota_used`].
    pub fn try_set_quota_used(
        &self,
        appid: &str,
        endpoint: Endpoint,
        used: u32,
    ) -> Result<(), AdminError> {
        self.with_app(appid, |app| app.quota.set(endpoint, used))
    }

    /// Resets all of the app's daily counters, including the force-refresh count (like
    /// WeChat's clear_quota). The force-refresh minimum interval is not a quota and still
    /// applies.
    pub fn reset_quota(&self, appid: &str) {
        warn_refused("reset_quota", self.try_reset_quota(appid));
    }

    /// See [`Admin::reset_quota`].
    pub fn try_reset_quota(&self, appid: &str) -> Result<(), AdminError> {
        self.with_app(appid, |app| app.quota.reset())
    }

    /// Invalidates every access token (classic and stable) of the app right now, as after a
    /// leak; business calls with them then get 40001, and the next stable normal-mode call
    /// issues a new token. Tickets are not affected.
    pub fn revoke_tokens(&self, appid: &str) {
        warn_refused("revoke_tokens", self.try_revoke_tokens(appid));
    }

    /// See [`Admin::revoke_tokens`].
    pub fn try_revoke_tokens(&self, appid: &str) -> Result<(), AdminError> {
        if self.shared.lock().revoke_access_tokens(appid) {
            Ok(())
        } else {
            Err(AdminError::UnknownApp(appid.to_string()))
        }
    }

    /// Evidence for every app. This copies every fetch record of every app while holding the
    /// simulator's lock: with many apps, prefer [`Admin::counts`] (O(1)),
    /// [`Admin::counts_per_app`] or [`Admin::app_evidence`].
    pub fn evidence(&self) -> Evidence {
        let now = self.shared.now();
        let mut inner = self.shared.lock();
        let appids: Vec<Arc<str>> = inner.apps.keys().cloned().collect();
        let apps: BTreeMap<String, AppEvidence> = appids
            .into_iter()
            .filter_map(|appid| {
                let ev = inner.app_evidence(&appid, &now)?;
                Some((appid.to_string(), ev))
            })
            .collect();
        Evidence { apps }
    }

    /// How many apps there are and how many fetches all of them made, by endpoint and
    /// outcome. O(1): kept as counters.
    pub fn counts(&self) -> SimCounts {
        let inner = self.shared.lock();
        SimCounts {
            apps: u64::try_from(inner.apps.len()).unwrap_or(u64::MAX),
            fetches: inner.totals,
            per_app: None,
        }
    }

    /// [`Admin::counts`] plus the counts of every app that made at least one fetch, by appid.
    /// O(apps).
    pub fn counts_per_app(&self) -> SimCounts {
        let inner = self.shared.lock();
        let per_app = inner
            .apps
            .iter()
            .filter(|(_, app)| !app.counts.total().is_zero())
            .map(|(appid, app)| (appid.to_string(), app.counts))
            .collect();
        SimCounts {
            apps: u64::try_from(inner.apps.len()).unwrap_or(u64::MAX),
            fetches: inner.totals,
            per_app: Some(per_app),
        }
    }

    /// One app's fetch counts, `None` if it does not exist. O(1).
    pub fn app_counts(&self, appid: &str) -> Option<FetchCounts> {
        self.shared.lock().apps.get(appid).map(|app| app.counts)
    }

    /// Evidence for one app, `None` if it does not exist.
    pub fn app_evidence(&self, appid: &str) -> Option<AppEvidence> {
        let now = self.shared.now();
        self.shared.lock().app_evidence(appid, &now)
    }

    /// The app's fetches of one endpoint, in order (empty for an unknown app).
    pub fn fetches(&self, appid: &str, endpoint: Endpoint) -> Vec<FetchRecord> {
        let inner = self.shared.lock();
        inner
            .apps
            .get(appid)
            .map(|app| {
                app.fetches
                    .iter()
                    .filter(|f| f.endpoint == endpoint)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The business API's check of an access token, without counting it: `Err(40001)` for
    /// unknown, revoked, ticket, or replaced-and-past-overlap; `Err(42001)` for expired.
    /// Authorizer access tokens of third-party platforms are checked too (see
    /// [`Admin::check_authorizer_token`]).
    pub fn check_token(&self, token: &str) -> Result<(), i64> {
        let now = self.shared.now();
        let (result, known) = {
            let inner = self.shared.lock();
            (
                inner.check_access_token(token, &now),
                inner.owner_of(token).is_some(),
            )
        };
        if known {
            return result;
        }
        self.check_authorizer_token(token).map(|_| ())
    }

    /// Moves the simulator clock forward by `by`, at once: tokens expire, overlaps end, the
    /// force-refresh interval passes, the quota day rolls over and pending `delay`/`hang`
    /// faults finish as if that much time had gone by. Everything else (HTTP, connection
    /// timeouts) keeps real time. Usually combined with [`Admin::pause_clock`], so that
    /// nothing but the advances moves the clock and window edges can be hit exactly. An
    /// advance past [`crate::MAX_CLOCK_ADVANCE`] in total is ignored with a warning.
    pub fn advance(&self, by: Duration) {
        warn_refused("advance", self.try_advance(by).map(|_| ()));
    }

    /// See [`Admin::advance`]; returns the clock's new state, or
    /// [`AdminError::ClockTooFar`] (and changes nothing).
    pub fn try_advance(&self, by: Duration) -> Result<ClockState, AdminError> {
        self.shared
            .clock
            .advance(by)
            .map_err(|_| AdminError::ClockTooFar)?;
        Ok(self.clock())
    }

    /// Freezes the simulator clock: from now on it moves only by [`Admin::advance`], so that
    /// a test's own run time does not count. Idempotent.
    pub fn pause_clock(&self) -> ClockState {
        self.shared.clock.pause();
        self.clock()
    }

    /// Lets a paused clock run with real time again, from where it stands (advances are
    /// kept; time does not jump). Idempotent.
    pub fn resume_clock(&self) -> ClockState {
        self.shared.clock.resume();
        self.clock()
    }

    /// The simulator clock: time since start, how much of it was advanced, paused or not.
    pub fn clock(&self) -> ClockState {
        self.shared.clock.state()
    }

    /// Simulator time since start, exactly (what `since_start_ms` of a fetch made now is
    /// the millisecond floor of). With a paused clock, `day - elapsed()` is exactly how far
    /// the next quota day is.
    pub fn elapsed(&self) -> Duration {
        let clock = &self.shared.clock;
        clock.since_start(clock.now())
    }
}

/// Body of `PUT /_sim/apps/{appid}/flags`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flags {
    /// `false` → token fetches answer 40164.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_whitelisted: Option<bool>,
    /// `true` → token fetches answer 40243.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_frozen: Option<bool>,
}

/// Body of `PUT /_sim/apps/{appid}/quota`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaUsed {
    /// Which endpoint's counter.
    pub endpoint: Endpoint,
    /// The new value.
    pub used: u32,
}

/// The `/_sim` routes (nested by the server).
pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/evidence", get(evidence))
        .route("/counts", get(counts))
        .route("/apps", post(add_app))
        .route("/apps/{appid}/evidence", get(app_evidence))
        .route("/apps/{appid}/counts", get(app_counts))
        .route(
            "/apps/{appid}/faults",
            post(inject).get(list_faults).delete(clear_faults),
        )
        .route("/apps/{appid}/flags", put(set_flags))
        .route("/apps/{appid}/quota", put(set_quota))
        .route("/apps/{appid}/quota/reset", post(reset_quota))
        .route("/apps/{appid}/revoke", post(revoke))
        .route("/clock", get(clock))
        .route("/clock/advance", post(advance))
        .route("/clock/pause", post(pause_clock))
        .route("/clock/resume", post(resume_clock))
        .merge(crate::authorizer::admin_routes())
        .merge(crate::wecom::admin_routes())
}

/// A JSON error answer `{"error": "..."}`.
pub(crate) fn error(status: StatusCode, message: impl fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

fn ok() -> Response {
    Json(json!({ "ok": true })).into_response()
}

fn admin_error(e: AdminError) -> Response {
    match e {
        AdminError::UnknownApp(_) => error(StatusCode::NOT_FOUND, e),
        AdminError::AppExists(_) => error(StatusCode::CONFLICT, e),
        _ => error(StatusCode::BAD_REQUEST, e),
    }
}

/// Parses a JSON body strictly; the error names the problem (answered as 400).
pub(crate) fn parse_body<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!("invalid {what}: {}", e.inner())
        } else {
            format!("invalid {what}: {path}: {}", e.inner())
        }
    })?;
    de.end().map_err(|e| format!("invalid {what}: {e}"))?;
    Ok(value)
}

fn respond(result: Result<(), AdminError>) -> Response {
    match result {
        Ok(()) => ok(),
        Err(e) => admin_error(e),
    }
}

async fn healthz() -> Response {
    ok()
}

async fn evidence(State(shared): State<Arc<Shared>>) -> Response {
    Json(Admin::new(shared).evidence()).into_response()
}

/// `GET /_sim/counts[?per_app=true]`
async fn counts(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let admin = Admin::new(shared);
    match crate::wire::query_param(query.as_deref(), "per_app").as_deref() {
        None | Some("false") => Json(admin.counts()).into_response(),
        Some("true") => Json(admin.counts_per_app()).into_response(),
        Some(other) => error(
            StatusCode::BAD_REQUEST,
            format!("per_app must be true or false, not {other:?}"),
        ),
    }
}

async fn app_counts(State(shared): State<Arc<Shared>>, Path(appid): Path<String>) -> Response {
    match Admin::new(shared).app_counts(&appid) {
        Some(counts) => Json(counts).into_response(),
        None => admin_error(AdminError::UnknownApp(appid)),
    }
}

async fn app_evidence(State(shared): State<Arc<Shared>>, Path(appid): Path<String>) -> Response {
    match Admin::new(shared).app_evidence(&appid) {
        Some(ev) => Json(ev).into_response(),
        None => admin_error(AdminError::UnknownApp(appid)),
    }
}

async fn add_app(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let app: AppConfig = match parse_body("app (expected {\"appid\",\"secret\"})", &body) {
        Ok(app) => app,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    // Never replaces an existing app's secret: this API has no authentication.
    match Admin::new(shared).try_create_app(&app.appid, &app.secret) {
        Ok(()) => (
            StatusCode::CREATED,
            Json(json!({ "appid": app.appid, "created": true })),
        )
            .into_response(),
        Err(e) => admin_error(e),
    }
}

async fn inject(
    State(shared): State<Arc<Shared>>,
    Path(appid): Path<String>,
    body: Bytes,
) -> Response {
    match parse_body::<Fault>("fault", &body) {
        Ok(fault) => respond(Admin::new(shared).try_inject(&appid, fault)),
        Err(msg) => error(StatusCode::BAD_REQUEST, msg),
    }
}

async fn list_faults(State(shared): State<Arc<Shared>>, Path(appid): Path<String>) -> Response {
    let admin = Admin::new(shared);
    if !admin.has_app(&appid) {
        return admin_error(AdminError::UnknownApp(appid));
    }
    Json(admin.faults(&appid)).into_response()
}

async fn clear_faults(State(shared): State<Arc<Shared>>, Path(appid): Path<String>) -> Response {
    respond(Admin::new(shared).try_clear_faults(&appid))
}

async fn set_flags(
    State(shared): State<Arc<Shared>>,
    Path(appid): Path<String>,
    body: Bytes,
) -> Response {
    let flags: Flags = match parse_body("flags", &body) {
        Ok(flags) => flags,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let admin = Admin::new(shared);
    respond(admin.with_app(&appid, |app| {
        if let Some(ok) = flags.ip_whitelisted {
            app.ip_whitelisted = ok;
        }
        if let Some(frozen) = flags.secret_frozen {
            app.secret_frozen = frozen;
        }
    }))
}

async fn set_quota(
    State(shared): State<Arc<Shared>>,
    Path(appid): Path<String>,
    body: Bytes,
) -> Response {
    match parse_body::<QuotaUsed>("quota", &body) {
        Ok(q) => respond(Admin::new(shared).try_set_quota_used(&appid, q.endpoint, q.used)),
        Err(msg) => error(StatusCode::BAD_REQUEST, msg),
    }
}

async fn reset_quota(State(shared): State<Arc<Shared>>, Path(appid): Path<String>) -> Response {
    respond(Admin::new(shared).try_reset_quota(&appid))
}

async fn revoke(State(shared): State<Arc<Shared>>, Path(appid): Path<String>) -> Response {
    respond(Admin::new(shared).try_revoke_tokens(&appid))
}

async fn clock(State(shared): State<Arc<Shared>>) -> Response {
    Json(Admin::new(shared).clock()).into_response()
}

/// `POST /_sim/clock/advance` with `{"by": "30s"}`.
async fn advance(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let advance: Advance = match parse_body("advance (expected {\"by\": \"30s\"})", &body) {
        Ok(advance) => advance,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    match Admin::new(shared).try_advance(advance.by) {
        Ok(state) => Json(state).into_response(),
        Err(e) => admin_error(e),
    }
}

async fn pause_clock(State(shared): State<Arc<Shared>>) -> Response {
    Json(Admin::new(shared).pause_clock()).into_response()
}

async fn resume_clock(State(shared): State<Arc<Shared>>) -> Response {
    Json(Admin::new(shared).resume_clock()).into_response()
}
