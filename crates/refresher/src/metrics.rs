//! This replica's counters, gauges and histograms, in Prometheus' model.
//!
//! The schedule and attempt record what happens here; the HTTP surface
//! renders it (`/metrics`) and reads the refresh counts back per stored
//! value (the status page). Labels are credential ids, kinds, outcomes and
//! errcodes only — never tokens or secrets. Nothing here does I/O.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// Labels of one stored value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ValueLabels {
    /// Credential id.
    pub id: String,
    /// `access_token`, `jsapi_ticket`, `wx_card_ticket`,
    /// `agent_config_ticket`, …
    pub kind: String,
}

/// Labels of one refresh attempt's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Credential id.
    pub id: String,
    /// What was refreshed.
    pub kind: String,
    /// `ok`, `same` (WeCom handed back the stored token; its remaining time
    /// was stored), `error`, `fenced` (write rejected) or `still_refused`.
    pub outcome: String,
    /// Why: `missing`, `expiring`, `reported`, `forced`.
    pub reason: String,
    /// WeChat's errcode for `error` outcomes that carry one, else empty.
    pub errcode: String,
}

/// Labels of WeChat calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// `token`, `stable_token`, `ticket`, `wecom_gettoken`, …
    pub endpoint: String,
}

/// `wxtoken_refresh_total`, readable per stored value.
#[derive(Default)]
pub struct RefreshCounter {
    family: Family<OutcomeLabels, Counter>,
    /// Every label set counted so far: the family's series, which it does
    /// not list itself.
    series: Mutex<HashSet<OutcomeLabels>>,
}

/// Refresh attempts of one stored value (or all of them), by what came of
/// them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Refreshes {
    /// Stored a new value (`ok`).
    pub ok: u64,
    /// WeCom handed back the stored value (`same`).
    pub same: u64,
    /// WeChat refused or failed (`error`, `still_refused`).
    pub failed: u64,
    /// Fetched, but a newer fence won (`fenced`).
    pub fenced: u64,
}

impl std::ops::Add for Refreshes {
    type Output = Refreshes;

    fn add(self, other: Refreshes) -> Refreshes {
        Refreshes {
            ok: self.ok + other.ok,
            same: self.same + other.same,
            failed: self.failed + other.failed,
            fenced: self.fenced + other.fenced,
        }
    }
}

impl RefreshCounter {
    /// The counter of one label set, created at 0 on first use.
    pub fn get_or_create(&self, labels: &OutcomeLabels) -> Counter {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        if !series.contains(labels) {
            series.insert(labels.clone());
        }
        self.family.get_or_create_owned(labels)
    }

    /// The attempts of each stored value since this replica started.
    pub fn by_value(&self) -> HashMap<ValueLabels, Refreshes> {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: HashMap<ValueLabels, Refreshes> = HashMap::new();
        for labels in series.iter() {
            let n = self.family.get(labels).map_or(0, |c| c.get());
            let r = out
                .entry(ValueLabels {
                    id: labels.id.clone(),
                    kind: labels.kind.clone(),
                })
                .or_default();
            match labels.outcome.as_str() {
                "ok" => r.ok += n,
                "same" => r.same += n,
                "fenced" => r.fenced += n,
                _ => r.failed += n,
            }
        }
        out
    }
}

/// Every metric of one replica.
pub struct Metrics {
    registry: Registry,
    /// `wxtoken_refresh_total`.
    pub refreshes: RefreshCounter,
    /// `wxtoken_lock_contention_total`: another replica held the lock.
    pub lock_contention: Family<ValueLabels, Counter>,
    /// `wxtoken_fence_rejections_total`: a fetched value lost to a newer fence.
    pub fence_rejections: Family<ValueLabels, Counter>,
    /// `wxtoken_expires_at_seconds`: when the stored value expires (Unix
    /// seconds, Redis clock), from every update event this replica sees.
    pub expires_at: Family<ValueLabels, Gauge<f64, AtomicU64>>,
    /// `wxtoken_credentials`: credentials this replica holds the secret of.
    pub credentials: Gauge,
    /// `wxtoken_due_values`: values found due at this replica's last look
    /// at the due-queue (capped by the scan window).
    pub due_values: Gauge,
    /// `wxtoken_refresh_lateness_seconds`: from when a value was due to
    /// when this replica claimed it for a WeChat call.
    pub lateness: Histogram,
    /// `wxtoken_wechat_call_duration_seconds`.
    pub wechat_latency: Family<EndpointLabels, Histogram>,
    /// `wxtoken_redis_up`: 1 when the last Redis operation succeeded.
    pub redis_up: Gauge,
    /// `wxtoken_component_pushes_total`: pushes to the third-party
    /// platforms' receiver (and the WeCom suites', labelled with the
    /// suite's config id), by component id and what became of them
    /// (`component_verify_ticket`, `authorized`, `updateauthorized`,
    /// `unauthorized`, `ignored`, `rejected`, `failed`).
    pub pushes: Family<PushLabels, Counter>,
    /// `wxtoken_authorizer_reconciliations_total`: reconciliations with
    /// `api_get_authorizer_list` this replica completed.
    pub reconciliations: Counter,
    /// When this replica started.
    pub started_at: SystemTime,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh, registered set.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wxtoken");
        let refreshes = RefreshCounter::default();
        registry.register(
            "refresh",
            "Refresh attempts that reached WeChat or Redis' fence, by outcome",
            refreshes.family.clone(),
        );
        let lock_contention = Family::<ValueLabels, Counter>::default();
        registry.register(
            "lock_contention",
            "Times this replica found another replica holding the refresh lock",
            lock_contention.clone(),
        );
        let fence_rejections = Family::<ValueLabels, Counter>::default();
        registry.register(
            "fence_rejections",
            "Fetched values not stored because the lock was lost or a newer fence wrote",
            fence_rejections.clone(),
        );
        let expires_at = Family::<ValueLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "expires_at_seconds",
            "When the stored value expires, Unix seconds (from update events)",
            expires_at.clone(),
        );
        let credentials = Gauge::default();
        registry.register(
            "credentials",
            "Credentials this replica holds the secret of",
            credentials.clone(),
        );
        let due_values = Gauge::default();
        registry.register(
            "due_values",
            "Values found due at this replica's last look at the due-queue",
            due_values.clone(),
        );
        let lateness = Histogram::new([
            0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
        ]);
        registry.register(
            "refresh_lateness_seconds",
            "From when a value was due to when this replica claimed it for a WeChat call",
            lateness.clone(),
        );
        let wechat_latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        registry.register(
            "wechat_call_duration_seconds",
            "Duration of WeChat API calls",
            wechat_latency.clone(),
        );
        let redis_up = Gauge::default();
        registry.register(
            "redis_up",
            "1 when this replica's last Redis operation succeeded",
            redis_up.clone(),
        );
        let pushes = Family::<PushLabels, Counter>::default();
        registry.register(
            "component_pushes",
            "Pushes to the callback receivers (third-party platforms; WeCom suites under their config id), by receiver and outcome",
            pushes.clone(),
        );
        let reconciliations = Counter::default();
        registry.register(
            "authorizer_reconciliations",
            "Reconciliations of a platform's authorizers with api_get_authorizer_list",
            reconciliations.clone(),
        );
        Metrics {
            registry,
            pushes,
            reconciliations,
            refreshes,
            lock_contention,
            fence_rejections,
            expires_at,
            credentials,
            due_values,
            lateness,
            wechat_latency,
            redis_up,
            started_at: SystemTime::now(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Records a WeChat call's duration.
    pub fn wechat_call(&self, endpoint: &str, took: Duration) {
        self.wechat_latency
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_owned(),
            })
            .observe(took.as_secs_f64());
    }
}

/// Labels of a push to the third-party platform receiver.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    /// The component's id (config).
    pub component: String,
    /// What became of it.
    pub outcome: String,
}

impl Metrics {
    /// Counts one push to component `component`.
    pub fn push(&self, component: &str, outcome: &str) {
        self.pushes
            .get_or_create(&PushLabels {
                component: component.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// Labels for a stored value.
/// Authorizers (up to 100,000 per platform) are counted per platform:
/// `authorizer/<component appid>/*`; a suite's corps per suite:
/// `corp/<suite id>/*`.
pub fn value(id: &str, kind: wxtoken_schema::Kind) -> ValueLabels {
    let id = match wxtoken_schema::Subject::parse(id) {
        Some(wxtoken_schema::Subject::Authorizer { component, .. }) => {
            format!("authorizer/{component}/*")
        }
        Some(wxtoken_schema::Subject::Corp { suite, .. }) => format!("corp/{suite}/*"),
        _ => id.to_owned(),
    };
    ValueLabels {
        id,
        kind: kind.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.refreshes
            .get_or_create(&OutcomeLabels {
                id: "oa".into(),
                kind: "access_token".into(),
                outcome: "error".into(),
                reason: "expiring".into(),
                errcode: "40164".into(),
            })
            .inc();
        m.expires_at
            .get_or_create(&value("oa", wxtoken_schema::Kind::AccessToken))
            .set(1_800_000_000.5);
        m.wechat_call("token", Duration::from_millis(30));
        let text = m.render();
        assert!(text.contains(
            r#"wxtoken_refresh_total{id="oa",kind="access_token",outcome="error",reason="expiring",errcode="40164"} 1"#
        ), "{text}");
        assert!(
            text.contains(
                r#"wxtoken_expires_at_seconds{id="oa",kind="access_token"} 1800000000.5"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"wxtoken_wechat_call_duration_seconds_count{endpoint="token"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn refresh_counts_are_read_back_per_value() {
        let m = Metrics::new();
        let inc = |id: &str, kind: &str, outcome: &str, errcode: &str, n: u64| {
            m.refreshes
                .get_or_create(&OutcomeLabels {
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
        inc("oa", "access_token", "error", "-1", 1);
        inc("oa", "access_token", "still_refused", "", 1);
        inc("oa", "access_token", "ok", "", 1);
        inc("oa", "jsapi_ticket", "fenced", "", 1);
        inc("mini.2", "access_token", "ok", "", 5);
        let runs = m.refreshes.by_value();
        let at = |id: &str, kind| runs[&value(id, kind)];
        use wxtoken_schema::Kind;
        assert_eq!(
            at("oa", Kind::AccessToken),
            Refreshes {
                ok: 4,
                same: 0,
                failed: 4,
                fenced: 0
            }
        );
        assert_eq!(at("oa", Kind::JsapiTicket).fenced, 1);
        assert_eq!(at("mini.2", Kind::AccessToken).ok, 5);
        assert_eq!(runs.len(), 3);
        let total = runs.values().fold(Refreshes::default(), |a, r| a + *r);
        assert_eq!((total.ok, total.failed, total.fenced), (9, 4, 1));
        assert!(m.render().contains(
            r#"wxtoken_refresh_total{id="oa",kind="access_token",outcome="ok",reason="expiring",errcode=""} 4"#
        ));
    }
}
