//! What the status page and `/status.json` show: one [`Snapshot`] of this
//! replica (id, uptime, its refresh counts from the metrics) and of every
//! credential it refreshes, as Redis holds it right now.
//!
//! Redis is read by [`wxtoken_schema::snapshot::read`] (the same reader as
//! `wxtoken status`, so field names and meanings are shared), bounded by the
//! Redis timeout; when Redis does not answer, the snapshot says so and still
//! describes the configuration. What is added here is this replica's own:
//! health against its refresh margin, its refresh counts, Redis latency and
//! uptime. It must not write to Redis, render HTML, or carry a secret or a
//! whole token: stored values appear as 8-character prefixes only.

use super::Managed;
use crate::config::RefreshConfig;
use crate::conn::RedisError;
use crate::metrics::{self, Refreshes, ValueLabels};
use crate::Shared;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::time::{Instant, UNIX_EPOCH};
use wxtoken_schema::snapshot::{self as redis_view, Status, ValueStatus};

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

/// One credential: its status hash (appid and mode as configured here) and
/// its configured kinds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CredentialStatus {
    /// Credential id.
    pub id: String,
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
    let read = read(sh, creds).await;
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
    let credentials = creds
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let read = read.as_ref().and_then(|r| r.credentials.get(i));
            credential(c, read, &refreshes, |expires_in| {
                margin_ms(&sh.refresh, expires_in)
            })
        })
        .collect();
    let configured: BTreeSet<&str> = creds.iter().map(|c| c.keys.id()).collect();
    let other_credentials = read
        .map(|r| {
            r.registered
                .into_iter()
                .filter(|id| !configured.contains(id.as_str()))
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
        refreshes: refreshes
            .values()
            .fold(Refreshes::default(), |sum, r| sum + *r),
        credentials,
        other_credentials,
    }
}

/// Everything, read-only (one round trip per 500 credentials).
async fn read(sh: &Shared, creds: &[Managed]) -> Result<redis_view::Snapshot, RedisError> {
    let mut con = sh.redis.con();
    sh.redis
        .step(redis_view::read(
            &mut con,
            &sh.namespace,
            creds.iter().map(|c| &c.keys),
        ))
        .await
}

/// `c` as configured here, with what Redis holds (`None`: Redis down).
fn credential(
    c: &Managed,
    read: Option<&redis_view::Credential>,
    refreshes: &HashMap<ValueLabels, Refreshes>,
    margin_ms: impl Fn(Option<u64>) -> u64,
) -> CredentialStatus {
    let mut status = read.map(|r| r.status.clone()).unwrap_or_default();
    status.appid = Some(c.appid.clone());
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

    fn managed() -> Managed {
        Managed {
            keys: wxtoken_schema::CredentialKeys::new("wxtoken", "oa").unwrap(),
            appid: "wx1".into(),
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
                failed: 1,
                fenced: 0,
            },
        )]);
        let margin = |expires_in: Option<u64>| expires_in.map_or(1, |_| 300_000);
        let c = credential(&managed(), Some(&read), &counts, margin);
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
        assert_eq!(json["kinds"][0]["kind"], "access_token");
        assert_eq!(json["kinds"][0]["token_prefix"], "86_abcde");
        assert_eq!(json["kinds"][0]["health"], "critical");
        assert_eq!(json["kinds"][0]["ttl_ms"], 60_000);
        assert!(json["kinds"][1]["token_prefix"].is_null());

        // Redis down: the configuration, health unknown.
        let c = credential(&managed(), None, &counts, margin);
        assert_eq!(c.status.mode.as_deref(), Some("classic"));
        assert!(c.kinds.iter().all(|k| k.health == Health::Unknown));
        assert!(!c.kinds[0].value.stored);
    }
}
