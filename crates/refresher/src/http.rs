//! The HTTP surface of one replica: liveness and readiness probes, Prometheus
//! metrics, the status page (`GET /`, `GET /status.json`) and refresh
//! requests (`POST /refresh/{id}`, protected by a bearer token), and the
//! third-party platforms' push receiver (`POST /wechat/component/{id}`,
//! authenticated by WeChat's `msg_signature`; see `component`) and WeCom
//! suites' command callback (`GET`/`POST /wecom/suite/{id}`; see `suite`).
//!
//! This module owns the routes, the bearer-token check and the server's
//! lifecycle (bound at start-up, stopped with the refresher's shutdown
//! token). Handlers stay thin: what the status page shows is gathered by
//! `snapshot`, and turned into HTML by `page`. Connections are served by
//! hyper directly (not `axum::serve`, which hides hyper's timeouts);
//! `limits` keeps the surface from starving the refresh work: a cap on open
//! connections (the rest wait unaccepted, costing no file descriptor),
//! hyper's header-read timeout (which also closes idle kept-alive
//! connections), a request timeout and a bound on each connection's life.
//!
//! It must not refresh anything itself — a POST only records a request for
//! the refreshers through [`wxtoken_schema::request_refresh`] — nor build key
//! names by hand. No secret (AppSecret, bearer token, Redis URL or password)
//! and no whole token may reach a response or a log line; tokens appear as
//! 8-character prefixes only.

mod component;
mod limits;
mod page;
mod snapshot;
mod suite;

use crate::config::HttpConfig;
use crate::conn::RedisError;
use crate::{token_prefix, Shared, StartError};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, WWW_AUTHENTICATE,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use limits::Peer;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wxtoken_schema::{
    request_refresh, CredentialKeys, Kind, RequestOutcome, FORCE_REQUEST, KINDS, REQUEST_TTL_SECS,
};

/// Content type of `GET /metrics` (the encoder writes OpenMetrics text).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Largest accepted request body (`{"token":"…"}` is far smaller).
const BODY_LIMIT: usize = 4096;
/// How long open connections may finish after shutdown before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// The status page: inline styles only, no scripts, no external assets.
const PAGE_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A credential this replica refreshes, as the HTTP surface sees it
/// (borrowed from the registry for one request).
pub(crate) struct Managed<'a> {
    /// Key names of the credential.
    pub keys: &'a CredentialKeys,
    /// WeChat appid (public).
    pub appid: &'a str,
    /// `classic` or `stable`.
    pub mode: &'static str,
    /// The access token, then the configured tickets.
    pub kinds: Vec<Kind>,
}

/// What every handler shares.
struct AppState {
    sh: Arc<Shared>,
    token: Option<SecretString>,
    /// The platforms' summaries, read at most every few seconds.
    platforms: snapshot::PlatformCache,
}

/// The credentials held at one instant (they change on reload).
type HeldSet = Arc<HashMap<String, Arc<crate::registry::Held>>>;

/// The credentials of `held`, by id. Borrows: no key names are copied.
fn managed(held: &HeldSet) -> Vec<Managed<'_>> {
    let mut managed: Vec<Managed<'_>> = held
        .values()
        .map(|h| Managed {
            keys: &h.keys,
            appid: h.appid(),
            mode: h.mode(),
            kinds: h.kinds(),
        })
        .collect();
    managed.sort_unstable_by(|a, b| a.keys.id().cmp(b.keys.id()));
    managed
}

type App = Arc<AppState>;

/// The bound, not yet serving, HTTP surface.
pub(crate) struct Server {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    app: App,
    cap: usize,
}

impl Server {
    /// Binds `cfg.listen`. Failing to bind is a start-up error.
    pub(crate) async fn bind(cfg: &HttpConfig, sh: Arc<Shared>) -> Result<Server, StartError> {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| StartError::Http {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().unwrap_or(cfg.listen);
        Ok(Server {
            listener,
            addr,
            app: Arc::new(AppState {
                sh,
                token: cfg.token.clone(),
                platforms: snapshot::PlatformCache::default(),
            }),
            cap: limits::connection_cap(),
        })
    }

    /// Serves until the refresher's shutdown token is cancelled, then lets
    /// open requests finish for a short grace period.
    ///
    /// Each connection is served by hyper in its own task (see `limits`),
    /// which holds one slot of the connection cap until it ends.
    pub(crate) async fn serve(self) {
        let shutdown: CancellationToken = self.app.sh.shutdown.clone();
        tracing::info!(
            addr = %self.addr,
            refresh_requests = if self.app.token.is_some() { "bearer token" } else { "disabled (no token configured)" },
            components = self.app.sh.registry.components().len(),
            max_connections = self.cap,
            header_read_timeout = ?limits::HEADER_READ_TIMEOUT,
            request_timeout = ?limits::REQUEST_TIMEOUT,
            idle_timeout = ?limits::IDLE_TIMEOUT,
            "HTTP surface listening"
        );
        let router = router(self.app);
        let serving = Arc::new(limits::Connections::new());
        let slots = Arc::new(Semaphore::new(self.cap));
        let mut tasks = JoinSet::new();
        loop {
            let (stream, peer, slot) = tokio::select! {
                accepted = limits::accept(&self.listener, &slots) => accepted,
                _ = shutdown.cancelled() => break,
            };
            // Finished connections are reaped here; at most `cap` run.
            while tasks.try_join_next().is_some() {}
            let (served, router, shutdown) = (serving.clone(), router.clone(), shutdown.clone());
            tasks.spawn(async move {
                served.serve(stream, peer, router, shutdown).await;
                drop(slot);
            });
        }
        // Refuse new connections; the open ones finish their requests.
        drop(self.listener);
        let finished = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::debug!("HTTP connections still open after the grace period; closing them");
            tasks.shutdown().await;
        }
        tracing::debug!("HTTP surface stopped");
    }
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/status.json", get(status_json))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/refresh/{id}", post(refresh))
        // WeChat's pushes: no bearer token, a larger body limit.
        .route(
            "/wechat/component/{id}",
            post(component::push).layer(DefaultBodyLimit::max(component::BODY_LIMIT)),
        )
        // WeCom suites' command callbacks: URL verification and pushes.
        .route(
            "/wecom/suite/{id}",
            get(suite::verify)
                .post(suite::push)
                .layer(DefaultBodyLimit::max(component::BODY_LIMIT)),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(limits::request_timeout))
        .with_state(app)
}

// ---- probes and metrics -------------------------------------------------

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<App>) -> Response {
    match ping(&app.sh).await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}

/// PINGs Redis, bounded by the Redis timeout. The error text comes from
/// the Redis client and holds no URL.
async fn ping(sh: &Shared) -> Result<Duration, RedisError> {
    let started = Instant::now();
    let mut con = sh.redis.con();
    sh.redis
        .step(redis::cmd("PING").query_async::<String>(&mut con))
        .await?;
    Ok(started.elapsed())
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(CONTENT_TYPE, OPENMETRICS), (CACHE_CONTROL, "no-store")],
        app.sh.metrics.render(),
    )
        .into_response()
}

// ---- status page ----------------------------------------------------------

/// `GET /`: the summary, then one page of credentials (at most
/// [`PAGE_MAX_LIMIT`]), problems first.
async fn status_page(
    State(app): State<App>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let view = match parse_view(query, PAGE_MAX_LIMIT) {
        Ok(v) => v,
        Err(msg) => {
            return (
                StatusCode::BAD_REQUEST,
                [
                    (CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    (CACHE_CONTROL, "no-store"),
                ],
                format!("{msg}\n"),
            )
                .into_response()
        }
    };
    let held = app.sh.registry.all();
    let snap = snapshot::take(&app.sh, &app.platforms, &managed(&held), &view, |id| {
        held.contains_key(id)
    })
    .await;
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
            (CONTENT_SECURITY_POLICY, PAGE_CSP),
        ],
        page::render(&snap, &view),
    )
        .into_response()
}

/// `GET /status.json`: the summary, then one page of credentials (at most
/// [`snapshot::MAX_LIMIT`]), problems first.
async fn status_json(
    State(app): State<App>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let view = match parse_view(query, snapshot::MAX_LIMIT) {
        Ok(v) => v,
        Err(msg) => return ApiError::BadRequest(msg).into_response(),
    };
    let held = app.sh.registry.all();
    let snap = snapshot::take(&app.sh, &app.platforms, &managed(&held), &view, |id| {
        held.contains_key(id)
    })
    .await;
    ([(CACHE_CONTROL, "no-store")], Json(snap)).into_response()
}

/// The most credentials the HTML page lists at once.
const PAGE_MAX_LIMIT: usize = snapshot::DEFAULT_LIMIT;
/// The most ids one request may name.
const MAX_IDS: usize = snapshot::MAX_LIMIT;

/// Parses `?offset=N&limit=M&problems=true&id=A,B&id=C&prefix=P` strictly.
/// The message of an error names the parameter (and quotes at most 64
/// characters of what was given; it is shown as text or JSON, never HTML).
fn parse_view(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    max_limit: usize,
) -> Result<snapshot::View, String> {
    let Query(pairs) = query.map_err(|e| format!("bad query string: {}", e.body_text()))?;
    let quoted = |v: &str| format!("{:?}", v.chars().take(64).collect::<String>());
    let mut view = snapshot::View {
        limit: snapshot::DEFAULT_LIMIT.min(max_limit),
        ..snapshot::View::default()
    };
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for (name, value) in &pairs {
        let once = |seen: &mut BTreeSet<&str>, name: &'static str| {
            if seen.insert(name) {
                Ok(())
            } else {
                Err(format!("{name}: given more than once"))
            }
        };
        match name.as_str() {
            "offset" => {
                once(&mut seen, "offset")?;
                view.offset = value.parse().map_err(|_| {
                    format!("offset: expected a whole number ≥ 0, got {}", quoted(value))
                })?;
            }
            "limit" => {
                once(&mut seen, "limit")?;
                view.limit = value
                    .parse()
                    .ok()
                    .filter(|l| *l <= max_limit)
                    .ok_or_else(|| {
                        format!(
                            "limit: expected a whole number from 0 to {max_limit}, got {}",
                            quoted(value)
                        )
                    })?;
            }
            "problems" => {
                once(&mut seen, "problems")?;
                view.problems = match value.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(format!(
                            "problems: expected true or false, got {}",
                            quoted(value)
                        ))
                    }
                };
            }
            "prefix" => {
                once(&mut seen, "prefix")?;
                if !value.is_empty() {
                    if !snapshot::View::valid_prefix(value) {
                        return Err(format!(
                            "prefix: expected up to 140 characters of A-Z a-z 0-9 _ . - /, got {}",
                            quoted(value)
                        ));
                    }
                    view.prefix = Some(value.clone());
                }
            }
            "id" => {
                let ids = view.ids.get_or_insert_with(BTreeSet::new);
                if value.split(',').all(str::is_empty) {
                    return Err("id: empty; give one or more credential ids".into());
                }
                for id in value.split(',').filter(|id| !id.is_empty()) {
                    if !snapshot::View::valid_id(id) {
                        return Err(format!(
                            "id: expected credential ids (1-64 characters of A-Z a-z 0-9 _ . -, or component/APPID, authorizer/COMPONENT/APPID), got {}",
                            quoted(id)
                        ));
                    }
                    ids.insert(id.to_owned());
                }
                if ids.len() > MAX_IDS {
                    return Err(format!("id: at most {MAX_IDS} ids per request"));
                }
            }
            other => {
                return Err(format!(
                    "unknown parameter {}: use offset, limit, problems, id or prefix",
                    quoted(other)
                ))
            }
        }
    }
    Ok(view)
}

// ---- refresh requests -----------------------------------------------------

/// Why a refresh request was not recorded. Messages are safe to return: no
/// secret and no token is ever part of them.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("refresh requests over HTTP are disabled on this replica: no http.token_env or http.token_file is configured")]
    Disabled,
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("the body is larger than {BODY_LIMIT} bytes")]
    TooLarge,
    #[error("credential {0:?} is not configured on this replica")]
    UnknownCredential(String),
    #[error("credential {id:?} keeps no {kind} on this replica")]
    UnknownKind { id: String, kind: Kind },
    #[error("{what}: {}", source.0)]
    Redis {
        /// What failed, e.g. "filing the refresh request in Redis".
        what: String,
        source: RedisError,
    },
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Disabled => StatusCode::FORBIDDEN,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnknownCredential(_) | ApiError::UnknownKind { .. } => StatusCode::NOT_FOUND,
            ApiError::Redis { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status(),
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if matches!(self, ApiError::Unauthorized) {
            res.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wxtoken\""),
            );
        }
        res
    }
}

/// `?kind=…&force=…`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshParams {
    kind: Option<String>,
    #[serde(default)]
    force: bool,
}

/// The optional JSON body: the token WeChat refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    token: String,
}

/// What the request asks the refreshers to replace.
enum Report {
    /// The token the caller saw refused (passive refresh).
    Refused(String),
    /// Whatever is stored (operators).
    Force,
    /// The value stored right now, or whatever comes next when nothing is
    /// stored.
    Stored,
}

async fn refresh(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<RefreshParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match accept(&app, peer, &headers, id, query, body).await {
        Ok((id, kind, outcome)) => {
            let (status, name) = match outcome {
                RequestOutcome::Requested => (StatusCode::ACCEPTED, "requested"),
                RequestOutcome::AlreadyReplaced => (StatusCode::OK, "already_replaced"),
            };
            let body = serde_json::json!({ "outcome": name, "id": id, "kind": kind });
            (status, Json(body)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Authenticates, then validates, then records a refresh request. The
/// bearer token is checked before anything else is looked at, so an
/// unauthenticated caller learns nothing (not even which ids exist).
async fn accept(
    app: &AppState,
    peer: Peer,
    headers: &HeaderMap,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<RefreshParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(String, Kind, RequestOutcome), ApiError> {
    // Debug, not warn: anyone who can reach the port can send failed
    // attempts, and must not be able to flood the logs with them.
    authorize(app.token.as_ref(), headers).inspect_err(|e| {
        tracing::debug!(%peer, error = %e, "refused POST /refresh");
    })?;
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Query(params) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
        _ => ApiError::BadRequest(e.body_text()),
    })?;
    let kind = parse_kind(params.kind.as_deref())?;
    let report = parse_report(&body, params.force)?;
    let cred = app
        .sh
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::UnknownCredential(id.chars().take(64).collect()))?;
    if !cred.kinds().contains(&kind) {
        return Err(ApiError::UnknownKind { id, kind });
    }
    let (outcome, reported) = request(&app.sh, &cred.keys, kind, report).await?;
    tracing::info!(%peer, id = cred.keys.id(), %kind, %reported, ?outcome, "refresh request over HTTP");
    Ok((id, kind, outcome))
}

/// Checks `Authorization: Bearer <token>` in constant time.
fn authorize(expected: Option<&SecretString>, headers: &HeaderMap) -> Result<(), ApiError> {
    let expected = expected.ok_or(ApiError::Disabled)?;
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .ok_or(ApiError::Unauthorized)?;
    if bool::from(
        presented
            .as_bytes()
            .ct_eq(expected.expose_secret().as_bytes()),
    ) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// The credentials of a `Bearer` authorization header value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn parse_kind(kind: Option<&str>) -> Result<Kind, ApiError> {
    match kind {
        None => Ok(Kind::AccessToken),
        Some(name) => KINDS
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = KINDS.iter().map(|k| k.as_str()).collect();
                ApiError::BadRequest(format!(
                    "unknown kind {:?}: use one of {}",
                    name.chars().take(32).collect::<String>(),
                    known.join(", ")
                ))
            }),
    }
}

fn parse_report(body: &[u8], force: bool) -> Result<Report, ApiError> {
    let token = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let b: RefreshBody = serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!(
                "the body must be empty or JSON like {{\"token\":\"<the token WeChat refused>\"}} ({e})"
            ))
        })?;
        Some(b.token)
    };
    match (token, force) {
        (Some(_), true) => Err(ApiError::BadRequest(
            "give either a body token or force=true, not both".into(),
        )),
        (Some(t), false) if t.trim().is_empty() => {
            Err(ApiError::BadRequest("the body token is empty".into()))
        }
        (Some(t), false) if t == FORCE_REQUEST => Err(ApiError::BadRequest(
            "to replace whatever is stored, use ?force=true".into(),
        )),
        (Some(t), false) => Ok(Report::Refused(t)),
        (None, true) => Ok(Report::Force),
        (None, false) => Ok(Report::Stored),
    }
}

/// Records the request; returns its outcome and, for the log, what was
/// reported (a token prefix, or `*` for force and when nothing is stored).
/// A Redis error is labelled with the step that failed.
async fn request(
    sh: &Shared,
    keys: &CredentialKeys,
    kind: Kind,
    report: Report,
) -> Result<(RequestOutcome, String), ApiError> {
    let mut con = sh.redis.con();
    let failed = |what: String| move |source| ApiError::Redis { what, source };
    let reported = match report {
        Report::Refused(t) => t,
        Report::Force => FORCE_REQUEST.to_owned(),
        // Nothing stored: ask for whatever comes next, as `wxtoken
        // refresh` does (the refreshers are fetching it anyway).
        Report::Stored => sh
            .redis
            .step(
                redis::cmd("GET")
                    .arg(keys.value(kind))
                    .query_async::<Option<String>>(&mut con),
            )
            .await
            .map_err(failed(format!(
                "reading the stored {kind} of credential {:?} from Redis",
                keys.id()
            )))?
            .unwrap_or_else(|| FORCE_REQUEST.to_owned()),
    };
    let outcome = sh
        .redis
        .step(request_refresh(
            &mut con,
            keys,
            kind,
            &reported,
            Duration::from_secs(REQUEST_TTL_SECS),
        ))
        .await
        .map_err(failed(format!(
            "filing the refresh request for the {kind} of credential {:?} in Redis",
            keys.id()
        )))?;
    let shown = match reported.as_str() {
        FORCE_REQUEST => FORCE_REQUEST.to_owned(),
        t => token_prefix(t),
    };
    Ok((outcome, shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn bearer_token_is_checked() {
        let token = SecretString::from("s3cr3t-0123456789abcdef");
        let t = Some(&token);
        assert!(authorize(t, &headers("Bearer s3cr3t-0123456789abcdef")).is_ok());
        assert!(authorize(t, &headers("bearer  s3cr3t-0123456789abcdef ")).is_ok());
        for wrong in [
            "Bearer s3cr3t-0123456789abcde",
            "Bearer s3cr3t-0123456789abcdefg",
            "Bearer ",
            "Basic s3cr3t-0123456789abcdef",
            "s3cr3t-0123456789abcdef",
        ] {
            assert!(
                matches!(authorize(t, &headers(wrong)), Err(ApiError::Unauthorized)),
                "{wrong:?} accepted"
            );
        }
        assert!(matches!(
            authorize(t, &HeaderMap::new()),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            authorize(None, &headers("Bearer anything")),
            Err(ApiError::Disabled)
        ));
    }

    #[test]
    fn errors_map_to_statuses_and_never_carry_the_token() {
        let e = ApiError::Unauthorized.into_response();
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert!(e.headers().get(WWW_AUTHENTICATE).is_some());
        assert_eq!(
            ApiError::Disabled.into_response().status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            ApiError::UnknownCredential("x".into())
                .into_response()
                .status(),
            StatusCode::NOT_FOUND
        );
        let e = ApiError::Redis {
            what: "filing the refresh request in Redis".into(),
            source: RedisError("NOPERM no permissions".into()),
        };
        assert_eq!(
            e.to_string(),
            "filing the refresh request in Redis: NOPERM no permissions"
        );
        assert_eq!(e.into_response().status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            ApiError::TooLarge.into_response().status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn kinds_and_bodies_are_parsed_strictly() {
        assert_eq!(parse_kind(None).unwrap(), Kind::AccessToken);
        assert_eq!(parse_kind(Some("jsapi_ticket")).unwrap(), Kind::JsapiTicket);
        assert!(matches!(
            parse_kind(Some("jsapi")),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(parse_report(b"", false), Ok(Report::Stored)));
        assert!(matches!(parse_report(b" \n", true), Ok(Report::Force)));
        assert!(
            matches!(parse_report(br#"{"token":"abc"}"#, false), Ok(Report::Refused(t)) if t == "abc")
        );
        for (body, force) in [
            (&br#"{"token":"abc"}"#[..], true),
            (br#"{"token":""}"#, false),
            (br#"{"token":"*"}"#, false),
            (br#"{"tokn":"abc"}"#, false),
            (b"token=abc", false),
        ] {
            assert!(
                matches!(parse_report(body, force), Err(ApiError::BadRequest(_))),
                "{:?} accepted",
                String::from_utf8_lossy(body)
            );
        }
    }

    fn view(query: &str, max: usize) -> Result<snapshot::View, String> {
        let uri: axum::http::Uri = format!("http://x/status.json?{query}").parse().unwrap();
        parse_view(Query::try_from_uri(&uri), max)
    }

    #[test]
    fn view_parameters_are_parsed_strictly() {
        let v = view("", 5000).unwrap();
        assert_eq!((v.offset, v.limit, v.problems), (0, 500, false));
        assert!(v.ids.is_none() && v.prefix.is_none());
        let v = view(
            "offset=10&limit=5000&problems=true&id=b,a&id=c&prefix=app-",
            5000,
        )
        .unwrap();
        assert_eq!((v.offset, v.limit, v.problems), (10, 5000, true));
        let ids: Vec<&str> = v.ids.as_ref().unwrap().iter().map(String::as_str).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(v.prefix.as_deref(), Some("app-"));
        assert_eq!(view("limit=0&prefix=", 500).unwrap().limit, 0);
        for (query, names) in [
            ("limit=5001", "limit"),
            ("limit=501", "limit"),
            ("limit=-1", "limit"),
            ("offset=-1", "offset"),
            ("offset=x", "offset"),
            ("offset=1&offset=2", "offset"),
            ("problems=yes", "problems"),
            ("id=a%20b", "id"),
            ("id=", "id"),
            ("id=a,,%3Cscript%3E", "id"),
            ("prefix=%3Cb%3E", "prefix"),
            ("colour=red", "unknown parameter \"colour\""),
        ] {
            let max = if query == "limit=501" { 500 } else { 5000 };
            let e = view(query, max).expect_err(query);
            assert!(e.starts_with(names), "{query}: {e}");
        }
        let long = "x".repeat(300);
        let e = view(&format!("offset={long}"), 5000).unwrap_err();
        assert!(e.len() < 150, "the echo is cut: {e}");
    }
}
