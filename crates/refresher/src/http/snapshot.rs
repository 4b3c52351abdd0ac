//! What the status page and `/status.json` show: one [`Snapshot`] of this
//! replica (id, uptime, its refresh counts from the metrics), a [`Summary`]
//! of every credential it holds, and one page of those credentials as
//! Redis holds them right now.
//!
//! A replica may hold 100,000 credentials, so Redis is read twice:
//! - [`triage`] reads, for every held credential, only what the summary and
//!   the `problems` filter need (four status fields, then the time left and
//!   the announced lifetime of each configured kind), [`TRIAGE_CHUNK`]
//!   credentials per pipelined round trip, each round trip bounded by the
//!   Redis timeout;
//! - [`wxtoken_schema::snapshot::read`] (the same reader as `wxtoken
//!   status`, so field names and meanings are shared) reads everything about
//!   the credentials of the requested page only (at most [`MAX_LIMIT`]).
//!
//! Third-party platforms held here get a [`ComponentView`] each
//! ([`wxtoken_schema::snapshot::read_component`]): their authorizers (up to
//! 100,000 each, held through the platform) are counted by state in chunks
//! and never listed whole; they are credentials of the table only when the
//! view asks for them (`id=authorizer/C/A`, `prefix=authorizer/…`), and
//! never "other credentials".
//!
//! When Redis does not answer, the snapshot says so and still describes the
//! configuration. What is added here is this replica's own: health against
//! its refresh margin, its refresh counts, Redis latency and uptime. It must
//! not write to Redis, render HTML, or carry a secret or a whole token:
//! stored values appear as 8-character prefixes only.

use super::Managed;
use crate::config::RefreshConfig;
use crate::conn::RedisError;
use crate::metrics::{self, Refreshes, ValueLabels};
use crate::Shared;
use redis::{ErrorKind, FromRedisValue, RedisResult, Value};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::time::{Instant, UNIX_EPOCH};
use wxtoken_schema::snapshot::{
    self as redis_view, ComponentRead, ComponentView, Status, ValueStatus,
};
use wxtoken_schema::{info, status, ComponentKeys, CredentialKeys, Kind, Subject, KINDS};

/// Credentials per request unless `limit` says otherwise.
pub(crate) const DEFAULT_LIMIT: usize = 500;
/// The largest `limit` `/status.json` accepts.
pub(crate) const MAX_LIMIT: usize = 5_000;
/// Ids of `other_credentials` listed (the rest are only counted).
pub(crate) const OTHERS_SHOWN: usize = 1_000;
/// Credentials [`triage`] asks about per round trip (1 + 2 per kind
/// commands each).
const TRIAGE_CHUNK: usize = 1_000;
/// Authorizers with a problem listed per platform (the rest are counted).
pub(crate) const PLATFORM_PROBLEMS: usize = 50;
/// Longest `prefix` or `id` accepted: `authorizer/<64>/<64>`.
const MAX_ID_LEN: usize = 140;

/// What one request asks to see: the filters, then the page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct View {
    /// Matching credentials skipped.
    pub offset: usize,
    /// Matching credentials shown at most.
    pub limit: usize,
    /// Only credentials with a problem.
    pub problems: bool,
    /// Only these ids (exact), if given.
    pub ids: Option<BTreeSet<String>>,
    /// Only ids that start with this.
    pub prefix: Option<String>,
}

impl View {
    /// Whether credential `id` (with or without a problem) passes the filters.
    pub fn matches(&self, id: &str, problem: bool) -> bool {
        (!self.problems || problem)
            && self.ids.as_ref().is_none_or(|ids| ids.contains(id))
            && self.prefix.as_deref().is_none_or(|p| id.starts_with(p))
    }

    /// Whether any filter is set.
    pub fn filtered(&self) -> bool {
        self.problems || self.ids.is_some() || self.prefix.is_some()
    }

    /// Whether `id` can be asked for: a credential id, `component/<appid>`
    /// or `authorizer/<component appid>/<appid>`.
    pub fn valid_id(id: &str) -> bool {
        Subject::parse(id).is_some()
    }

    /// Whether `prefix` can be a prefix filter: up to 140 characters of
    /// `A-Z a-z 0-9 _ . -` and `/` (which needs no percent-encoding in a
    /// query string).
    pub fn valid_prefix(prefix: &str) -> bool {
        prefix.len() <= MAX_ID_LEN
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'))
    }

    /// Whether the view asks for authorizers of platform `component` as
    /// credentials of the table: by id, or by a prefix starting with
    /// `authorizer/` that some of them match.
    fn asks_for_authorizers_of(&self, component: &str) -> bool {
        self.asks_for_children(&format!("authorizer/{component}/"))
    }

    /// Whether the view asks for rows of the children whose ids start
    /// with `base` (`authorizer/C/`, `corp/S/`).
    fn asks_for_children(&self, base: &str) -> bool {
        let root = base.split('/').next().unwrap_or("");
        self.prefix.as_deref().is_some_and(|p| {
            p.starts_with(&format!("{root}/")) && (p.starts_with(base) || base.starts_with(p))
        }) || self
            .ids
            .as_ref()
            .is_some_and(|ids| ids.iter().any(|id| id.starts_with(base)))
    }
}

/// This replica and its credentials, at one instant.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Snapshot {
    /// This replica's id.
    pub replica: String,
    /// The key namespace.
    pub namespace: String,
    /// When this replica started, Unix ms.
    pub started_at_ms: u64,
    /// How long it has been running, ms.
    pub uptime_ms: u64,
    /// "Now", Unix ms: the Redis clock (which every stored time uses), or
    /// this host's clock when Redis did not answer.
    pub now_ms: u64,
    /// Whether Redis answered.
    pub redis: RedisHealth,
    /// Refresh attempts of this replica since it started.
    pub refreshes: Refreshes,
    /// Counts over every credential this replica holds (not only the page).
    pub summary: Summary,
    /// Which part of the matching credentials `credentials` is.
    pub page: Page,
    /// One page of the credentials that match the request's filters:
    /// credentials with a problem first, then the others, each by id.
    pub credentials: Vec<CredentialStatus>,
    /// Credentials registered in the namespace but not configured here
    /// (refreshed by other replicas), by id: the first [`OTHERS_SHOWN`].
    pub other_credentials: Vec<String>,
    /// How many there are in all.
    pub other_credentials_total: usize,
    /// The third-party platforms held here, by component appid: each with
    /// its authorizers counted by state and the first
    /// [`PLATFORM_PROBLEMS`] with a problem (empty when Redis did not
    /// answer).
    pub platforms: Vec<ComponentView>,
}

/// The requested page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Page {
    /// Matching credentials skipped.
    pub offset: usize,
    /// Most credentials shown.
    pub limit: usize,
    /// Credentials that pass the filters, on all pages.
    pub total_matching: usize,
}

/// Counts over every credential this replica holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Summary {
    /// Credentials.
    pub credentials: CredentialCounts,
    /// Stored values of every configured kind, by health.
    pub values: HealthCounts,
    /// The same, per kind (only kinds some credential keeps).
    pub by_kind: Vec<KindCounts>,
}

/// Credentials, and how many of them have a problem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct CredentialCounts {
    /// Held by this replica.
    pub total: usize,
    /// With a problem: a configured value missing, due or critical, a
    /// standing error, or a pause.
    pub with_problems: usize,
    /// Whose last error is newer than their last success.
    pub failing: usize,
    /// Paused (daily quota exhausted).
    pub paused: usize,
}

/// Values by health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct HealthCounts {
    /// All of them.
    pub total: usize,
    pub fresh: usize,
    pub due: usize,
    pub critical: usize,
    pub missing: usize,
    pub unknown: usize,
}

impl HealthCounts {
    fn add(&mut self, h: Health) {
        self.total += 1;
        match h {
            Health::Fresh => self.fresh += 1,
            Health::Due => self.due += 1,
            Health::Critical => self.critical += 1,
            Health::Missing => self.missing += 1,
            Health::Unknown => self.unknown += 1,
        }
    }

    /// How many have `h`.
    pub fn of(&self, h: Health) -> usize {
        match h {
            Health::Fresh => self.fresh,
            Health::Due => self.due,
            Health::Critical => self.critical,
            Health::Missing => self.missing,
            Health::Unknown => self.unknown,
        }
    }
}

/// Values of one kind by health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct KindCounts {
    /// `access_token`, `jsapi_ticket` or `wx_card_ticket`.
    pub kind: Kind,
    #[serde(flatten)]
    pub counts: HealthCounts,
}

impl Summary {
    fn count_value(&mut self, kind: Kind, h: Health) {
        self.values.add(h);
        match self.by_kind.iter_mut().find(|k| k.kind == kind) {
            Some(k) => k.counts.add(h),
            None => {
                let mut counts = HealthCounts::default();
                counts.add(h);
                self.by_kind.push(KindCounts { kind, counts });
                self.by_kind
                    .sort_by_key(|k| KINDS.iter().position(|x| *x == k.kind));
            }
        }
    }
}

/// Redis, as this snapshot saw it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RedisHealth {
    /// It answered.
    pub up: bool,
    /// Time the snapshot's reads took (all of them), ms.
    pub latency_ms: Option<f64>,
    /// Why not (the Redis client's words: no URL, no password).
    pub error: Option<String>,
}

/// One credential: its status hash (appid and mode as configured here) and
/// its configured kinds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CredentialStatus {
    /// Credential id.
    pub id: String,
    /// It has a problem (as the summary judged it): a configured value
    /// missing, due or critical, a standing error, or a pause.
    pub problem: bool,
    /// The status hash.
    #[serde(flatten)]
    pub status: Status,
    /// The access token, then each configured ticket.
    pub kinds: Vec<KindStatus>,
}

/// One stored value, as Redis holds it and as this replica judges it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct KindStatus {
    /// What Redis holds.
    #[serde(flatten)]
    pub value: ValueStatus,
    /// How it is doing (the colour of its bar).
    pub health: Health,
    /// The first 8 characters of the value.
    pub token_prefix: Option<String>,
    /// Refreshers replace the value when less than this is left, ms.
    pub refresh_margin_ms: u64,
    /// This replica's attempts for this value since it started.
    pub refreshes: Refreshes,
}

/// How a stored value is doing, judged against the refresh margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Health {
    /// More than the margin left: nothing to do.
    Fresh,
    /// Within the margin: a refresh is due now.
    Due,
    /// Less than a quarter of the margin left: readers are about to lose it.
    Critical,
    /// Nothing stored: readers get nil.
    Missing,
    /// Redis did not answer.
    Unknown,
}

impl Health {
    /// Judges `ttl_ms` against `margin_ms`.
    pub fn of(ttl_ms: Option<u64>, margin_ms: u64) -> Health {
        match ttl_ms {
            None => Health::Missing,
            Some(left) if left <= margin_ms / 4 => Health::Critical,
            Some(left) if left <= margin_ms => Health::Due,
            Some(_) => Health::Fresh,
        }
    }

    /// Whether the value needs attention: nothing stored, or within the
    /// refresh margin. (Unknown is not judged.)
    pub fn is_problem(self) -> bool {
        matches!(self, Health::Missing | Health::Due | Health::Critical)
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Fresh => "fresh",
            Health::Due => "due",
            Health::Critical => "critical",
            Health::Missing => "missing",
            Health::Unknown => "unknown",
        }
    }
}

/// Takes a snapshot of `creds` (every credential this replica holds, by
/// id) as `view` asks. Never fails: a Redis failure is part of the result.
/// `is_held` tells the registered ids held here from the others.
pub(crate) async fn take(
    sh: &Shared,
    cache: &PlatformCache,
    creds: &[Managed<'_>],
    view: &View,
    is_held: impl Fn(&str) -> bool,
) -> Snapshot {
    let started = Instant::now();
    let margin = |expires_in: Option<u64>| margin_ms(&sh.refresh, expires_in);
    // The platforms held here (their authorizers are held through them).
    let platforms: Vec<&str> = creds
        .iter()
        .filter_map(|c| match c.keys.subject() {
            Subject::Component(appid) => Some(appid),
            _ => None,
        })
        .collect();
    // The WeCom suites held here (their corps are held through them).
    let suites: Vec<&str> = creds
        .iter()
        .filter_map(|c| match c.keys.subject() {
            Subject::Suite(id) => Some(id),
            _ => None,
        })
        .collect();
    let is_held = |id: &str| {
        is_held(id)
            || matches!(Subject::parse(id), Some(Subject::Authorizer { component, .. })
                if platforms.contains(&component))
            || matches!(Subject::parse(id), Some(Subject::Corp { suite, .. })
                if suites.contains(&suite))
    };
    let triaged = triage(sh, creds, margin).await;
    // Authorizers and corps asked for by the view, triaged too (not in the
    // summary).
    let asked = match &triaged {
        Ok(_) => match asked_authorizers(sh, &platforms, view).await {
            Ok(mut asked) => asked_corps(sh, &suites, view).await.map(|corps| {
                asked.extend(corps);
                asked
            }),
            Err(e) => Err(e),
        },
        Err(e) => Err(e.clone()),
    };
    let asked = asked.unwrap_or_default();
    let extra: Vec<Managed<'_>> = asked
        .iter()
        .map(|(keys, appid, kinds)| Managed {
            keys,
            appid,
            // As the registration writes it in the status hash.
            mode: match keys.subject() {
                Subject::Corp { .. } => "suite_corp",
                _ => "authorizer",
            },
            kinds: kinds.clone(),
        })
        .collect();
    let extra_triaged = match &triaged {
        Ok(_) if !extra.is_empty() => triage(sh, &extra, margin).await.ok(),
        _ => None,
    };
    let (summary, mut problems) = match &triaged {
        Ok(t) => (t.summary.clone(), t.problems.clone()),
        Err(_) => (unknown_summary(creds), vec![false; creds.len()]),
    };
    problems.extend(match extra_triaged {
        Some(t) => t.problems,
        None => vec![false; extra.len()],
    });
    let all: Vec<Managed<'_>> = creds
        .iter()
        .map(|c| Managed {
            keys: c.keys,
            appid: c.appid,
            mode: c.mode,
            kinds: c.kinds.clone(),
        })
        .chain(extra)
        .collect();
    let creds = &all[..];
    let shown = select(creds, &problems, view);
    let page = Page {
        offset: view.offset,
        limit: view.limit,
        total_matching: shown.total_matching,
    };
    // Everything about the page's credentials (and the registry), unless
    // Redis already failed to answer the triage.
    let read = match &triaged {
        Ok(_) => read(sh, shown.indices.iter().map(|&i| &creds[i])).await,
        Err(e) => Err(e.clone()),
    };
    let platform_views = match &read {
        Ok(_) => cache.get(sh, &platforms, &suites, margin).await,
        Err(_) => Vec::new(),
    };
    let latency = started.elapsed();
    let refreshes = sh.metrics.refreshes.by_value();
    let local_now = crate::unix_ms();
    let started_at_ms = sh
        .metrics
        .started_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (now_ms, redis, read) = match read {
        Ok(r) => (
            r.now_ms,
            RedisHealth {
                up: true,
                latency_ms: Some(latency.as_secs_f64() * 1000.0),
                error: None,
            },
            Some(r),
        ),
        Err(e) => (
            local_now,
            RedisHealth {
                up: false,
                latency_ms: None,
                error: Some(e.to_string()),
            },
            None,
        ),
    };
    let credentials = shown
        .indices
        .iter()
        .enumerate()
        .map(|(n, &i)| {
            let r = read.as_ref().and_then(|r| r.credentials.get(n));
            credential(&creds[i], problems[i], r, &refreshes, margin)
        })
        .collect();
    let (other_credentials, other_credentials_total) = match read {
        Some(r) => {
            let mut others = r.registered.into_iter().filter(|id| !is_held(id));
            let shown: Vec<String> = others.by_ref().take(OTHERS_SHOWN).collect();
            let total = shown.len() + others.count();
            (shown, total)
        }
        None => (Vec::new(), 0),
    };
    Snapshot {
        replica: sh.replica.clone(),
        namespace: sh.namespace.clone(),
        started_at_ms,
        uptime_ms: local_now.saturating_sub(started_at_ms),
        now_ms,
        redis,
        refreshes: refreshes
            .values()
            .fold(Refreshes::default(), |sum, r| sum + *r),
        summary,
        page,
        credentials,
        other_credentials,
        other_credentials_total,
        platforms: platform_views,
    }
}

/// An authorizer asked for by the view: its keys, appid and kinds.
type Asked = (CredentialKeys, String, Vec<Kind>);

/// The authorizers of held `platforms` that `view` asks for as credentials
/// of the table (none unless it names them or filters by an
/// `authorizer/…` prefix), from the platforms' indexes.
async fn asked_authorizers(
    sh: &Shared,
    platforms: &[&str],
    view: &View,
) -> Result<Vec<Asked>, RedisError> {
    let mut out = Vec::new();
    for &component in platforms {
        if !view.asks_for_authorizers_of(component) {
            continue;
        }
        let Some(config) = sh.registry.component(component) else {
            continue;
        };
        let kinds = config.authorizer_kinds();
        let Ok(ck) = ComponentKeys::new(&sh.namespace, component) else {
            continue;
        };
        // By id: exactly those (if in the index); by prefix: the index.
        let appids: Vec<String> = match (&view.prefix, &view.ids) {
            (None, Some(ids)) => ids
                .iter()
                .filter_map(|id| match Subject::parse(id) {
                    Some(Subject::Authorizer {
                        component: c,
                        appid,
                    }) if c == component => Some(appid.to_owned()),
                    _ => None,
                })
                .collect(),
            _ => {
                let mut con = sh.redis.con();
                sh.redis
                    .step(wxtoken_schema::registry::authorizers(
                        &mut con,
                        &ck,
                        0,
                        1 << 40,
                    ))
                    .await?
                    .into_iter()
                    .map(|(appid, _)| appid)
                    .collect()
            }
        };
        for appid in appids {
            if let Ok(keys) = CredentialKeys::authorizer(&sh.namespace, component, &appid) {
                let id = keys.id();
                if view.ids.as_ref().is_none_or(|ids| ids.contains(id))
                    && view.prefix.as_deref().is_none_or(|p| id.starts_with(p))
                {
                    out.push((keys, appid, kinds.clone()));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.id().cmp(b.0.id()));
    Ok(out)
}

/// The corps of held `suites` that `view` asks for as rows (a `corp/…`
/// prefix or ids), from the suites' indexes: as [`asked_authorizers`].
async fn asked_corps(sh: &Shared, suites: &[&str], view: &View) -> Result<Vec<Asked>, RedisError> {
    let mut out = Vec::new();
    for &suite in suites {
        if !view.asks_for_children(&format!("corp/{suite}/")) {
            continue;
        }
        let Some(config) = sh.registry.suite(suite) else {
            continue;
        };
        let kinds = config.corp_kinds();
        let Ok(sk) = wxtoken_schema::SuiteKeys::new(&sh.namespace, suite) else {
            continue;
        };
        let mut con = sh.redis.con();
        let corpids = sh
            .redis
            .step(wxtoken_schema::suite::corps(&mut con, &sk, 0, 1 << 40))
            .await?;
        for (corpid, _) in corpids {
            if let Ok(keys) = CredentialKeys::corp(&sh.namespace, suite, &corpid) {
                let id = keys.id();
                if view.ids.as_ref().is_none_or(|ids| ids.contains(id))
                    && view.prefix.as_deref().is_none_or(|p| id.starts_with(p))
                {
                    out.push((keys, corpid, kinds.clone()));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.id().cmp(b.0.id()));
    Ok(out)
}

/// How long a platform summary is served before it is read again. Reading
/// one platform costs one round trip per 1,000 authorizers (100,000: about
/// 3 s of reads), so page loads (every 5 s per open page) and scrapers
/// must not each cause one.
const PLATFORM_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// The held platforms' summaries, shared by every request: read at most
/// once per [`PLATFORM_CACHE_TTL`], by one request at a time (the others
/// wait for it and take its result).
#[derive(Default)]
pub(crate) struct PlatformCache {
    last: tokio::sync::Mutex<Option<CachedPlatforms>>,
}

/// When the views were read, of which platforms (sorted), and the views.
type CachedPlatforms = (Instant, Vec<String>, Vec<ComponentView>);

impl PlatformCache {
    /// The views of `platforms`, from the cache if it is fresh and about
    /// the same platforms, else read now.
    async fn get(
        &self,
        sh: &Shared,
        platforms: &[&str],
        suites: &[&str],
        margin_ms: impl Fn(Option<u64>) -> u64 + Sync,
    ) -> Vec<ComponentView> {
        if platforms.is_empty() && suites.is_empty() {
            return Vec::new();
        }
        let mut wanted: Vec<String> = platforms
            .iter()
            .map(|p| wxtoken_schema::component_id(p))
            .chain(suites.iter().map(|s| format!("suite/{s}")))
            .collect();
        wanted.sort_unstable();
        let mut last = self.last.lock().await;
        if let Some((at, which, views)) = last.as_ref() {
            if at.elapsed() < PLATFORM_CACHE_TTL && *which == wanted {
                return views.clone();
            }
        }
        let views = read_platforms(sh, platforms, suites, margin_ms).await;
        *last = Some((Instant::now(), wanted, views.clone()));
        views
    }
}

/// Each held platform's view, by component appid, then each held WeCom
/// suite's; one Redis did not answer about is left out (logged). Each
/// round trip is bounded by the connection's response timeout.
async fn read_platforms(
    sh: &Shared,
    platforms: &[&str],
    suites: &[&str],
    margin_ms: impl Fn(Option<u64>) -> u64 + Sync,
) -> Vec<ComponentView> {
    let mut sorted = platforms.to_vec();
    sorted.sort_unstable();
    let opts = ComponentRead {
        chunk: redis_view::AUTHORIZER_CHUNK,
        problems: PLATFORM_PROBLEMS,
        margin_ms: &margin_ms,
    };
    let mut out = Vec::with_capacity(sorted.len());
    for appid in sorted {
        let mut con = sh.redis.con();
        match redis_view::read_component(&mut con, &sh.namespace, appid, &opts).await {
            Ok(v) => out.push(v),
            Err(e) => {
                tracing::warn!(component = appid, error = %e, "could not read the platform for the status page")
            }
        }
    }
    let mut sorted = suites.to_vec();
    sorted.sort_unstable();
    for suite in sorted {
        let mut con = sh.redis.con();
        match redis_view::read_suite(&mut con, &sh.namespace, suite, &opts).await {
            Ok(v) => out.push(v),
            Err(e) => {
                tracing::warn!(suite, error = %e, "could not read the WeCom suite for the status page")
            }
        }
    }
    out
}

/// The credentials a view shows.
struct Selection {
    /// Indices into the held credentials, in display order.
    indices: Vec<usize>,
    /// How many match the filters (on every page).
    total_matching: usize,
}

/// The credentials of `creds` (by id) that pass `view`'s filters, those
/// with a problem first, then `view`'s page of them. One pass and one
/// stable sort: O(n log n).
fn select(creds: &[Managed<'_>], problems: &[bool], view: &View) -> Selection {
    let mut matching: Vec<usize> = (0..creds.len())
        .filter(|&i| view.matches(creds[i].keys.id(), problems[i]))
        .collect();
    // Stable: each group stays by id.
    matching.sort_by_key(|&i| !problems[i]);
    let total_matching = matching.len();
    let indices = matching
        .into_iter()
        .skip(view.offset)
        .take(view.limit)
        .collect();
    Selection {
        indices,
        total_matching,
    }
}

/// The summary when Redis did not answer: every value unknown.
fn unknown_summary(creds: &[Managed<'_>]) -> Summary {
    let mut s = Summary::default();
    s.credentials.total = creds.len();
    for c in creds {
        for &kind in &c.kinds {
            s.count_value(kind, Health::Unknown);
        }
    }
    s
}

/// What [`triage`] found.
struct Triage {
    summary: Summary,
    /// Per held credential, in the order given: it has a problem.
    problems: Vec<bool>,
}

/// Reads what the summary needs about every credential in `creds`: the
/// status fields that say "failing" and "paused", and the time left and
/// announced lifetime of each configured kind (1 + 2 per kind commands per
/// credential), [`TRIAGE_CHUNK`] credentials per pipelined round trip,
/// each bounded by the Redis timeout. Linear in `creds`. Read-only.
async fn triage(
    sh: &Shared,
    creds: &[Managed<'_>],
    margin_ms: impl Fn(Option<u64>) -> u64,
) -> Result<Triage, RedisError> {
    let mut t = Triage {
        summary: Summary::default(),
        problems: Vec::with_capacity(creds.len()),
    };
    t.summary.credentials.total = creds.len();
    for chunk in creds.chunks(TRIAGE_CHUNK) {
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        for c in chunk {
            pipe.cmd("HMGET").arg(c.keys.status()).arg(&STATUS_FIELDS);
            for &kind in &c.kinds {
                pipe.pttl(c.keys.value(kind))
                    .hget(c.keys.info(kind), info::EXPIRES_IN);
            }
        }
        let mut con = sh.redis.con();
        let replies: Vec<Value> = sh.redis.step(pipe.query_async(&mut con)).await?;
        judge(&mut t, chunk, replies, &margin_ms).map_err(RedisError::from)?;
    }
    Ok(t)
}

/// The status fields [`triage`] reads, in the order [`judge`] expects.
const STATUS_FIELDS: [&str; 4] = [
    status::LAST_OK_AT_MS,
    status::LAST_ERROR,
    status::LAST_ERROR_AT_MS,
    status::PAUSED_UNTIL_MS,
];

/// Interprets one chunk of [`triage`]'s replies into `t`.
fn judge(
    t: &mut Triage,
    chunk: &[Managed<'_>],
    replies: Vec<Value>,
    margin_ms: impl Fn(Option<u64>) -> u64,
) -> RedisResult<()> {
    let mut r = replies.into_iter();
    let (secs, micros): (u64, u64) = next(&mut r)?;
    let now_ms = secs.saturating_mul(1000).saturating_add(micros / 1000);
    for c in chunk {
        let (ok_at, error, error_at, paused_until): (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        ) = next(&mut r)?;
        let paused_until_ms = num(paused_until);
        let status = Status {
            last_ok_at_ms: num(ok_at),
            last_error: error,
            last_error_at_ms: num(error_at),
            paused_until_ms,
            paused: paused_until_ms.is_some_and(|until| until > now_ms),
            ..Status::default()
        };
        let failing = status.failing();
        let mut problem = failing || status.paused;
        t.summary.credentials.failing += usize::from(failing);
        t.summary.credentials.paused += usize::from(status.paused);
        for &kind in &c.kinds {
            let pttl: i64 = next(&mut r)?;
            let expires_in: Option<String> = next(&mut r)?;
            let health = Health::of(u64::try_from(pttl).ok(), margin_ms(num(expires_in)));
            problem |= health.is_problem();
            t.summary.count_value(kind, health);
        }
        t.summary.credentials.with_problems += usize::from(problem);
        t.problems.push(problem);
    }
    Ok(())
}

/// The next reply, typed.
fn next<T: FromRedisValue>(r: &mut std::vec::IntoIter<Value>) -> RedisResult<T> {
    let v = r.next().ok_or((
        ErrorKind::UnexpectedReturnType,
        "Redis answered fewer replies than asked",
    ))?;
    Ok(redis::from_redis_value(v)?)
}

/// A stored number, as `wxtoken status` parses it.
fn num(v: Option<String>) -> Option<u64> {
    v.and_then(|v| v.trim().parse().ok())
}

/// Everything about `creds` (one page), and the registry, read-only (one
/// round trip per 500 credentials).
async fn read<'a>(
    sh: &Shared,
    creds: impl Iterator<Item = &'a Managed<'a>>,
) -> Result<redis_view::Snapshot, RedisError> {
    let mut con = sh.redis.con();
    sh.redis
        .step(redis_view::read(
            &mut con,
            &sh.namespace,
            creds.map(|c| c.keys),
        ))
        .await
}

/// `c` as configured here, with what Redis holds (`None`: Redis down).
fn credential(
    c: &Managed<'_>,
    problem: bool,
    read: Option<&redis_view::Credential>,
    refreshes: &HashMap<ValueLabels, Refreshes>,
    margin_ms: impl Fn(Option<u64>) -> u64,
) -> CredentialStatus {
    let mut status = read.map(|r| r.status.clone()).unwrap_or_default();
    status.appid = Some(c.appid.to_owned());
    status.mode = Some(c.mode.to_owned());
    let kinds = c
        .kinds
        .iter()
        .map(|&kind| {
            let value = read.and_then(|r| r.kinds.iter().find(|v| v.kind == kind));
            let margin = margin_ms(value.and_then(|v| v.expires_in));
            KindStatus {
                health: value.map_or(Health::Unknown, |v| Health::of(v.ttl_ms, margin)),
                token_prefix: value.and_then(|v| v.token_prefix.clone()),
                refresh_margin_ms: margin,
                refreshes: refreshes
                    .get(&metrics::value(c.keys.id(), kind))
                    .copied()
                    .unwrap_or_default(),
                value: value.cloned().unwrap_or_else(|| ValueStatus::unknown(kind)),
            }
        })
        .collect();
    CredentialStatus {
        id: c.keys.id().to_owned(),
        problem,
        status,
        kinds,
    }
}

/// The refresh margin for a value announced to live `expires_in` seconds.
fn margin_ms(refresh: &RefreshConfig, expires_in: Option<u64>) -> u64 {
    crate::policy::margin(refresh, expires_in).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use wxtoken_schema::Kind;

    #[test]
    fn health_follows_the_margin() {
        assert_eq!(Health::of(None, 300_000), Health::Missing);
        assert_eq!(Health::of(Some(7_000_000), 300_000), Health::Fresh);
        assert_eq!(Health::of(Some(300_000), 300_000), Health::Due);
        assert_eq!(Health::of(Some(75_001), 300_000), Health::Due);
        assert_eq!(Health::of(Some(75_000), 300_000), Health::Critical);
    }

    fn keys(id: &str) -> wxtoken_schema::CredentialKeys {
        wxtoken_schema::CredentialKeys::new("wxtoken", id).unwrap()
    }

    fn managed(keys: &wxtoken_schema::CredentialKeys) -> Managed<'_> {
        Managed {
            keys,
            appid: "wx1",
            mode: "classic",
            kinds: vec![Kind::AccessToken, Kind::JsapiTicket],
        }
    }

    #[test]
    fn configured_kinds_are_judged_and_counted() {
        let mut at = ValueStatus::unknown(Kind::AccessToken);
        at.stored = true;
        at.ttl_ms = Some(60_000);
        at.expires_in = Some(7200);
        at.token_prefix = Some("86_abcde".into());
        let read = redis_view::Credential {
            id: "oa".into(),
            status: Status {
                appid: Some("from-redis".into()),
                last_errcode: Some(40164),
                ..Status::default()
            },
            kinds: vec![
                at,
                ValueStatus::unknown(Kind::JsapiTicket),
                ValueStatus::unknown(Kind::WxCardTicket),
            ],
        };
        let counts = HashMap::from([(
            metrics::value("oa", Kind::AccessToken),
            Refreshes {
                ok: 2,
                same: 0,
                failed: 1,
                fenced: 0,
            },
        )]);
        let margin = |expires_in: Option<u64>| expires_in.map_or(1, |_| 300_000);
        let oa = keys("oa");
        let c = credential(&managed(&oa), true, Some(&read), &counts, margin);
        assert!(c.problem);
        assert_eq!(c.status.appid.as_deref(), Some("wx1"), "as configured");
        assert_eq!(c.status.last_errcode, Some(40164));
        assert_eq!(c.kinds.len(), 2, "configured kinds only");
        assert_eq!(c.kinds[0].health, Health::Critical);
        assert_eq!(c.kinds[0].refresh_margin_ms, 300_000);
        assert_eq!(c.kinds[0].refreshes.ok, 2);
        assert_eq!(c.kinds[1].health, Health::Missing);
        assert_eq!(c.kinds[1].refreshes, Refreshes::default());
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["appid"], "wx1");
        assert_eq!(json["last_errcode"], 40164);
        assert_eq!(json["problem"], true);
        assert_eq!(json["kinds"][0]["kind"], "access_token");
        assert_eq!(json["kinds"][0]["token_prefix"], "86_abcde");
        assert_eq!(json["kinds"][0]["health"], "critical");
        assert_eq!(json["kinds"][0]["ttl_ms"], 60_000);
        assert!(json["kinds"][1]["token_prefix"].is_null());

        // Redis down: the configuration, health unknown.
        let c = credential(&managed(&oa), false, None, &counts, margin);
        assert_eq!(c.status.mode.as_deref(), Some("classic"));
        assert!(c.kinds.iter().all(|k| k.health == Health::Unknown));
        assert!(!c.kinds[0].value.stored);
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    /// The replies `triage` gets for one credential with `kinds` values:
    /// `(pttl, expires_in)` each.
    fn replies_for(status: [Option<&str>; 4], values: &[(i64, Option<&str>)]) -> Vec<Value> {
        let mut out = vec![Value::Array(
            status.iter().map(|f| f.map_or(Value::Nil, bulk)).collect(),
        )];
        for (pttl, expires_in) in values {
            out.push(Value::Int(*pttl));
            out.push(expires_in.map_or(Value::Nil, bulk));
        }
        out
    }

    #[test]
    fn triage_counts_every_value_and_flags_problems() {
        let ids = ["a", "b", "c", "d", "e"];
        let k: Vec<_> = ids.iter().map(|id| keys(id)).collect();
        let creds: Vec<Managed<'_>> = k.iter().map(managed).collect();
        // Redis clock 1,000,000 ms; margin 300 s for a 7200 s lifetime.
        let mut replies = vec![Value::Array(vec![bulk("1000"), bulk("0")])];
        let fresh = (3_600_000, Some("7200"));
        // a: both fresh, an old error (recovered).
        replies.extend(replies_for(
            [Some("500"), Some("access_token: x"), Some("400"), None],
            &[fresh, fresh],
        ));
        // b: access token due, ticket missing.
        replies.extend(replies_for(
            [None; 4],
            &[(200_000, Some("7200")), (-2, None)],
        ));
        // c: fresh but failing (error newer than the last success).
        replies.extend(replies_for(
            [Some("400"), Some("x"), Some("500"), None],
            &[fresh, fresh],
        ));
        // d: fresh but paused until after now; e: critical, stored without TTL.
        replies.extend(replies_for(
            [None, None, None, Some("2000000")],
            &[fresh, fresh],
        ));
        replies.extend(replies_for(
            [None; 4],
            &[(50_000, Some("7200")), (-1, Some("7200"))],
        ));
        let mut t = Triage {
            summary: Summary::default(),
            problems: Vec::new(),
        };
        let margin = |e: Option<u64>| e.map_or(300_000, |_| 300_000);
        judge(&mut t, &creds, replies, margin).unwrap();
        assert_eq!(t.problems, [false, true, true, true, true]);
        let c = t.summary.credentials;
        assert_eq!((c.with_problems, c.failing, c.paused), (4, 1, 1));
        let v = t.summary.values;
        assert_eq!(
            (v.total, v.fresh, v.due, v.critical, v.missing, v.unknown),
            (10, 6, 1, 1, 2, 0)
        );
        let by_kind: Vec<_> = t.summary.by_kind.iter().map(|k| k.kind).collect();
        assert_eq!(by_kind, [Kind::AccessToken, Kind::JsapiTicket]);
        assert_eq!(t.summary.by_kind[1].counts.missing, 2);

        // Too few replies is an error, not a panic.
        let mut t = Triage {
            summary: Summary::default(),
            problems: Vec::new(),
        };
        let short = vec![Value::Array(vec![bulk("1000"), bulk("0")])];
        assert!(judge(&mut t, &creds, short, margin).is_err());
    }

    #[test]
    fn selection_filters_puts_problems_first_and_pages() {
        let ids = ["a1", "a2", "b1", "b2", "c1"];
        let k: Vec<_> = ids.iter().map(|id| keys(id)).collect();
        let creds: Vec<Managed<'_>> = k.iter().map(managed).collect();
        let problems = [false, true, false, true, false];
        let shown = |view: View| {
            let s = select(&creds, &problems, &view);
            let ids: Vec<&str> = s.indices.iter().map(|&i| ids[i]).collect();
            (ids, s.total_matching)
        };
        let all = View {
            limit: 500,
            ..View::default()
        };
        assert_eq!(shown(all.clone()), (vec!["a2", "b2", "a1", "b1", "c1"], 5));
        assert_eq!(
            shown(View {
                offset: 1,
                limit: 2,
                ..all.clone()
            }),
            (vec!["b2", "a1"], 5)
        );
        assert_eq!(
            shown(View {
                offset: 9,
                ..all.clone()
            }),
            (vec![], 5)
        );
        assert_eq!(
            shown(View {
                problems: true,
                ..all.clone()
            }),
            (vec!["a2", "b2"], 2)
        );
        let prefix = View {
            prefix: Some("b".into()),
            ..all.clone()
        };
        assert_eq!(shown(prefix.clone()), (vec!["b2", "b1"], 2));
        let by_id = View {
            ids: Some(["c1".to_owned(), "a1".to_owned(), "zz".to_owned()].into()),
            problems: true,
            ..all.clone()
        };
        assert_eq!(shown(by_id.clone()), (vec![], 0));
        assert_eq!(
            shown(View {
                problems: false,
                ..by_id
            }),
            (vec!["a1", "c1"], 2)
        );
        assert_eq!(shown(View { limit: 0, ..all }), (vec![], 5));
    }

    #[test]
    fn authorizers_are_asked_for_by_id_or_authorizer_prefix_only() {
        assert!(View::valid_id("authorizer/wxc/wxa1"));
        assert!(View::valid_id("component/wxc") && View::valid_id("oa-main"));
        for bad in ["authorizer/wxc", "a/b", "<b>", "authorizer/wxc/wxa1/x", ""] {
            assert!(!View::valid_id(bad), "{bad:?}");
        }
        assert!(View::valid_prefix("authorizer/wxc/") && View::valid_prefix("oa-"));
        assert!(!View::valid_prefix("a b") && !View::valid_prefix(&"x".repeat(141)));
        let prefix = |p: &str| View {
            prefix: Some(p.into()),
            ..View::default()
        };
        assert!(prefix("authorizer/wxc/").asks_for_authorizers_of("wxc"));
        assert!(prefix("authorizer/wxc/wxa1").asks_for_authorizers_of("wxc"));
        assert!(prefix("authorizer/").asks_for_authorizers_of("wxc"));
        assert!(prefix("authorizer/wx").asks_for_authorizers_of("wxc"));
        assert!(!prefix("authorizer/wxd/").asks_for_authorizers_of("wxc"));
        assert!(
            !prefix("a").asks_for_authorizers_of("wxc"),
            "not by default"
        );
        assert!(!View::default().asks_for_authorizers_of("wxc"));
        let ids = View {
            ids: Some(["authorizer/wxc/wxa1".to_owned(), "oa".to_owned()].into()),
            ..View::default()
        };
        assert!(ids.asks_for_authorizers_of("wxc"));
        assert!(!ids.asks_for_authorizers_of("wxcc"));
    }

    #[test]
    fn without_redis_every_value_is_unknown() {
        let k = [keys("a"), keys("b")];
        let creds: Vec<Managed<'_>> = k.iter().map(managed).collect();
        let s = unknown_summary(&creds);
        assert_eq!(s.credentials.total, 2);
        assert_eq!(s.credentials.with_problems, 0);
        assert_eq!((s.values.total, s.values.unknown), (4, 4));
    }
}
