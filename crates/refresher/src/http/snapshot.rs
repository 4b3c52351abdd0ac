//! What the status page and `/status.json` show: one [`Snapshot`] of this
//! replica (id, uptime, its refresh counts from the metrics) and of every
//! credential it refreshes, as Redis holds it right now.
//!
//! Reads Redis in one pipeline through the `wxtoken_schema` key builders,
//! bounded by the Redis timeout; when Redis does not answer, the snapshot
//! says so and still describes the configuration. Field names follow
//! `wxtoken status --json` where the facts are the same. It must not write
//! to Redis, render HTML, or carry a secret or a whole token: stored values
//! are reduced to 8-character prefixes here, and a pending request's
//! reported token is never read out.

use super::Managed;
use crate::store::{self, RedisError};
use crate::Shared;
use redis::Value;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, UNIX_EPOCH};
use wxtoken_schema::{info, registry_key, status, Kind, FORCE_REQUEST};

/// Lifetime assumed when Redis holds no announced `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(7200);
/// Characters of a stored value shown.
const PREFIX_CHARS: usize = 8;

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
    pub refreshes: Runs,
    /// The credentials this replica refreshes, in config order.
    pub credentials: Vec<CredentialStatus>,
    /// Credentials registered in the namespace but not configured here
    /// (refreshed by other replicas).
    pub other_credentials: Vec<String>,
}

/// Redis, as this snapshot saw it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RedisHealth {
    /// It answered.
    pub up: bool,
    /// Round-trip of the snapshot's reads, ms.
    pub latency_ms: Option<f64>,
    /// Why not (the Redis client's words: no URL, no password).
    pub error: Option<String>,
}

/// Refresh attempts that reached WeChat or the fence, from the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Runs {
    /// Stored a new value.
    pub ok: u64,
    /// WeChat refused or failed (`error`, `still_refused`).
    pub failed: u64,
    /// Fetched, but a newer fence won (`fenced`).
    pub fenced: u64,
}

/// One credential.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CredentialStatus {
    /// Credential id.
    pub id: String,
    /// WeChat appid (public), as configured here.
    pub appid: String,
    /// `classic` or `stable`, as configured here.
    pub mode: String,
    /// Last successful WeChat fetch, Unix ms.
    pub last_ok_at_ms: Option<u64>,
    /// The last failure, in words (never holds a secret).
    pub last_error: Option<String>,
    /// WeChat's errcode of the last failure.
    pub last_errcode: Option<i64>,
    /// When the last failure happened, Unix ms.
    pub last_error_at_ms: Option<u64>,
    /// Refreshes are paused until then (daily quota exhausted), Unix ms.
    pub paused_until_ms: Option<u64>,
    /// `paused_until_ms` is in the future.
    pub paused: bool,
    /// Replica that last wrote the status hash.
    pub status_replica: Option<String>,
    /// The access token, then each configured ticket.
    pub kinds: Vec<KindStatus>,
}

/// One stored value.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct KindStatus {
    /// `access_token`, `jsapi_ticket` or `wx_card_ticket`.
    pub kind: Kind,
    /// A value is stored.
    pub stored: bool,
    /// How it is doing (the colour of its bar).
    pub health: Health,
    /// The first 8 characters of the value.
    pub token_prefix: Option<String>,
    /// Time left, ms.
    pub ttl_ms: Option<u64>,
    /// Absolute expiry, Unix ms.
    pub expires_at_ms: Option<u64>,
    /// Lifetime WeChat announced, seconds.
    pub expires_in: Option<u64>,
    /// Refreshers replace the value when less than this is left, ms.
    pub refresh_margin_ms: u64,
    /// When the value was written, Unix ms.
    pub refreshed_at_ms: Option<u64>,
    /// Replica that fetched it.
    pub replica: Option<String>,
    /// Fence number of the write.
    pub fence: Option<u64>,
    /// Replica holding the refresh lock right now (a refresh in flight).
    pub locked_by: Option<String>,
    /// A refresh request waiting for a refresher.
    pub refresh_request: Option<RequestStatus>,
    /// This replica's attempts for this value since it started.
    pub refreshes: Runs,
}

/// A pending refresh request that the refreshers will serve.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RequestStatus {
    /// Replace whatever is stored (operator's force), rather than a reported
    /// refused value.
    pub force: bool,
    /// Time until the request lapses, ms.
    pub ttl_ms: Option<u64>,
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

/// Takes a snapshot. Never fails: a Redis failure is part of the result.
pub(crate) async fn take(sh: &Shared, creds: &[Managed]) -> Snapshot {
    let started = Instant::now();
    let read = store::bounded(sh.redis_timeout, read(sh, creds)).await;
    let latency = started.elapsed();
    let runs = runs_by_value(&sh.metrics.render());
    let local_now = crate::unix_ms();
    let started_at_ms = sh
        .metrics
        .started_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let margin_ms = |expires_in: Option<u64>| {
        let lifetime = expires_in.map_or(DEFAULT_LIFETIME, Duration::from_secs);
        sh.refresh.margin_for(lifetime).as_millis() as u64
    };
    let (now_ms, redis, raw) = match read {
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
    let credentials = creds
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let raw = raw.as_ref().and_then(|r| r.creds.get(i));
            credential(c, raw, now_ms, &runs, &margin_ms)
        })
        .collect();
    let configured: BTreeSet<&str> = creds.iter().map(|c| c.keys.id()).collect();
    let other_credentials = raw
        .as_ref()
        .map(|r| {
            r.registered
                .iter()
                .filter(|id| !configured.contains(id.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    Snapshot {
        replica: sh.replica.clone(),
        namespace: sh.namespace.clone(),
        started_at_ms,
        uptime_ms: local_now.saturating_sub(started_at_ms),
        now_ms,
        redis,
        refreshes: runs.values().fold(Runs::default(), |a, r| Runs {
            ok: a.ok + r.ok,
            failed: a.failed + r.failed,
            fenced: a.fenced + r.fenced,
        }),
        credentials,
        other_credentials,
    }
}

fn credential(
    c: &Managed,
    raw: Option<&RawCredential>,
    now_ms: u64,
    runs: &HashMap<(String, String), Runs>,
    margin_ms: &dyn Fn(Option<u64>) -> u64,
) -> CredentialStatus {
    let st = raw.map(|r| &r.status);
    let field = |name: &str| st.and_then(|h| h.get(name)).cloned();
    let num = |name: &str| field(name).and_then(|v| v.trim().parse::<u64>().ok());
    let paused_until_ms = num(status::PAUSED_UNTIL_MS);
    let kinds = c
        .kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            let runs = runs
                .get(&(c.keys.id().to_owned(), kind.as_str().to_owned()))
                .copied()
                .unwrap_or_default();
            match raw.and_then(|r| r.values.get(i)) {
                Some(v) => value(*kind, v, runs, margin_ms),
                None => KindStatus {
                    kind: *kind,
                    stored: false,
                    health: Health::Unknown,
                    token_prefix: None,
                    ttl_ms: None,
                    expires_at_ms: None,
                    expires_in: None,
                    refresh_margin_ms: margin_ms(None),
                    refreshed_at_ms: None,
                    replica: None,
                    fence: None,
                    locked_by: None,
                    refresh_request: None,
                    refreshes: runs,
                },
            }
        })
        .collect();
    CredentialStatus {
        id: c.keys.id().to_owned(),
        appid: c.appid.clone(),
        mode: c.mode.to_owned(),
        last_ok_at_ms: num(status::LAST_OK_AT_MS),
        last_error: field(status::LAST_ERROR),
        last_errcode: field(status::LAST_ERRCODE).and_then(|v| v.trim().parse().ok()),
        last_error_at_ms: num(status::LAST_ERROR_AT_MS),
        paused_until_ms,
        paused: paused_until_ms.is_some_and(|u| u > now_ms),
        status_replica: field(status::REPLICA),
        kinds,
    }
}

fn value(
    kind: Kind,
    v: &RawValue,
    runs: Runs,
    margin_ms: &dyn Fn(Option<u64>) -> u64,
) -> KindStatus {
    let num = |name: &str| v.info.get(name).and_then(|x| x.trim().parse::<u64>().ok());
    let expires_in = num(info::EXPIRES_IN);
    let ttl_ms = v.value.as_ref().and(ttl(v.pttl));
    let margin = margin_ms(expires_in);
    // Served by the refreshers: a force, or a report about what is stored
    // (or about anything, while nothing is stored).
    let refresh_request = v.request.as_deref().and_then(|r| {
        let force = r == FORCE_REQUEST;
        (force || v.value.as_deref().is_none_or(|cur| cur == r)).then(|| RequestStatus {
            force,
            ttl_ms: ttl(v.request_pttl),
        })
    });
    KindStatus {
        kind,
        stored: v.value.is_some(),
        health: Health::of(ttl_ms, margin),
        token_prefix: v
            .value
            .as_deref()
            .map(|t| t.chars().take(PREFIX_CHARS).collect()),
        ttl_ms,
        expires_at_ms: num(info::EXPIRES_AT_MS),
        expires_in,
        refresh_margin_ms: margin,
        refreshed_at_ms: num(info::REFRESHED_AT_MS),
        replica: v.info.get(info::REPLICA).cloned(),
        fence: num(info::FENCE),
        // The lock owner is `replica#nonce`; the nonce means nothing to people.
        locked_by: v
            .lock
            .as_deref()
            .map(|o| o.split_once('#').map_or(o, |(r, _)| r).to_owned()),
        refresh_request,
        refreshes: runs,
    }
}

/// A PTTL reply as time left: `None` for a missing key or one without TTL.
fn ttl(pttl: i64) -> Option<u64> {
    u64::try_from(pttl).ok().filter(|ms| *ms > 0)
}

// ---- Redis ----------------------------------------------------------------

struct RawRead {
    now_ms: u64,
    registered: Vec<String>,
    creds: Vec<RawCredential>,
}

struct RawCredential {
    status: HashMap<String, String>,
    values: Vec<RawValue>,
}

struct RawValue {
    value: Option<String>,
    pttl: i64,
    info: HashMap<String, String>,
    request: Option<String>,
    request_pttl: i64,
    lock: Option<String>,
}

/// Everything in one pipeline (one round trip), read-only.
async fn read(sh: &Shared, creds: &[Managed]) -> Result<RawRead, RedisError> {
    let mut con = sh.pool.get().await?;
    let mut pipe = redis::pipe();
    pipe.cmd("TIME").smembers(registry_key(&sh.namespace));
    for c in creds {
        pipe.hgetall(c.keys.status());
        for kind in &c.kinds {
            pipe.get(c.keys.value(*kind))
                .pttl(c.keys.value(*kind))
                .hgetall(c.keys.info(*kind))
                .get(c.keys.refresh_request(*kind))
                .pttl(c.keys.refresh_request(*kind))
                .get(c.keys.lock(*kind));
        }
    }
    let replies: Vec<Value> = pipe.query_async(&mut con).await?;
    let mut replies = replies.into_iter();
    let mut next = || -> Result<Value, RedisError> {
        replies
            .next()
            .ok_or_else(|| RedisError("short pipeline reply".into()))
    };
    fn conv<T: redis::FromRedisValue>(v: Value) -> Result<T, RedisError> {
        redis::from_redis_value(v).map_err(|e| RedisError(format!("unexpected reply: {e}")))
    }
    let (secs, micros): (u64, u64) = conv(next()?)?;
    let mut registered: Vec<String> = conv(next()?)?;
    registered.sort();
    let mut out = Vec::with_capacity(creds.len());
    for c in creds {
        let status = conv(next()?)?;
        let mut values = Vec::with_capacity(c.kinds.len());
        for _ in &c.kinds {
            values.push(RawValue {
                value: conv(next()?)?,
                pttl: conv(next()?)?,
                info: conv(next()?)?,
                request: conv(next()?)?,
                request_pttl: conv(next()?)?,
                lock: conv(next()?)?,
            });
        }
        out.push(RawCredential { status, values });
    }
    Ok(RawRead {
        now_ms: secs * 1000 + micros / 1000,
        registered,
        creds: out,
    })
}

// ---- metrics ---------------------------------------------------------------

/// Sums `wxtoken_refresh_total` of the rendered metrics by (id, kind).
/// Label values are ids, kinds, outcomes, reasons and errcodes: none holds a
/// quote, so a plain scan is exact.
fn runs_by_value(text: &str) -> HashMap<(String, String), Runs> {
    let mut out: HashMap<(String, String), Runs> = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("wxtoken_refresh_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(n) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |name: &str| {
            labels.split("\",").find_map(|kv| {
                kv.strip_prefix(name)
                    .and_then(|v| v.strip_prefix("=\""))
                    .map(|v| v.trim_end_matches('"').to_owned())
            })
        };
        let (Some(id), Some(kind), Some(outcome)) = (label("id"), label("kind"), label("outcome"))
        else {
            continue;
        };
        let r = out.entry((id, kind)).or_default();
        let n = n as u64;
        match outcome.as_str() {
            "ok" => r.ok += n,
            "fenced" => r.fenced += n,
            _ => r.failed += n,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_runs_are_read_from_the_metrics_text() {
        let m = crate::metrics::Metrics::new();
        let inc = |id: &str, kind: &str, outcome: &str, errcode: &str, n: u64| {
            m.refreshes
                .get_or_create(&crate::metrics::OutcomeLabels {
                    id: id.into(),
                    kind: kind.into(),
                    outcome: outcome.into(),
                    reason: "expiring".into(),
                    errcode: errcode.into(),
                })
                .inc_by(n);
        };
        inc("oa", "access_token", "ok", "", 3);
        inc("oa", "access_token", "error", "40164", 2);
        inc("oa", "access_token", "still_refused", "", 1);
        inc("oa", "jsapi_ticket", "fenced", "", 1);
        inc("mini.2", "access_token", "ok", "", 5);
        let runs = runs_by_value(&m.render());
        assert_eq!(
            runs[&("oa".into(), "access_token".into())],
            Runs {
                ok: 3,
                failed: 3,
                fenced: 0
            }
        );
        assert_eq!(runs[&("oa".into(), "jsapi_ticket".into())].fenced, 1);
        assert_eq!(runs[&("mini.2".into(), "access_token".into())].ok, 5);
        assert_eq!(runs.len(), 3);
    }

    #[test]
    fn health_follows_the_margin() {
        assert_eq!(Health::of(None, 300_000), Health::Missing);
        assert_eq!(Health::of(Some(7_000_000), 300_000), Health::Fresh);
        assert_eq!(Health::of(Some(300_000), 300_000), Health::Due);
        assert_eq!(Health::of(Some(75_001), 300_000), Health::Due);
        assert_eq!(Health::of(Some(75_000), 300_000), Health::Critical);
    }

    fn raw(value: Option<&str>, request: Option<&str>) -> RawValue {
        RawValue {
            value: value.map(str::to_owned),
            pttl: if value.is_some() { 3_600_000 } else { -2 },
            info: [
                (info::EXPIRES_IN, "7200"),
                (info::FENCE, "17"),
                (info::REPLICA, "refresher-2"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            request: request.map(str::to_owned),
            request_pttl: 500_000,
            lock: Some("refresher-3#00000000deadbeef".into()),
        }
    }

    #[test]
    fn values_show_prefixes_and_effective_requests_only() {
        let margin = |_: Option<u64>| 300_000;
        let token = "86_abcdefghijklmnopqrstuvwxyz";
        let v = value(
            Kind::AccessToken,
            &raw(Some(token), Some(token)),
            Runs::default(),
            &margin,
        );
        assert_eq!(v.token_prefix.as_deref(), Some("86_abcde"));
        assert_eq!(v.health, Health::Fresh);
        assert_eq!(v.fence, Some(17));
        assert_eq!(v.locked_by.as_deref(), Some("refresher-3"));
        assert!(v.refresh_request.as_ref().is_some_and(|r| !r.force));
        let json = serde_json::to_string(&v).unwrap();
        assert!(!json.contains(token), "{json}");

        // A report about a value that was already replaced is not pending.
        let v = value(
            Kind::AccessToken,
            &raw(Some(token), Some("old")),
            Runs::default(),
            &margin,
        );
        assert!(v.refresh_request.is_none());
        let v = value(
            Kind::AccessToken,
            &raw(Some(token), Some(FORCE_REQUEST)),
            Runs::default(),
            &margin,
        );
        assert!(v.refresh_request.is_some_and(|r| r.force));
        let v = value(
            Kind::JsapiTicket,
            &raw(None, None),
            Runs::default(),
            &margin,
        );
        assert_eq!(v.health, Health::Missing);
        assert!(!v.stored && v.token_prefix.is_none() && v.ttl_ms.is_none());
    }
}
