//! When to refresh: one loop per stored value (a credential's access token or
//! one of its tickets), driven by what Redis says is left.
//!
//! A replica that just started learns the schedule from Redis (the value's
//! TTL), so it knows at once what is due. The loop sleeps until the value's
//! remaining life drops under the margin (less a random jitter), never longer
//! than `check_interval`, and wakes early on an update event. Failures are
//! classified into backoff, slow retry or pause. It never calls WeChat itself
//! (see `attempt`).

use crate::attempt::{self, Attempt, AttemptError};
use crate::config::{Credential, RefreshConfig};
use crate::store::{self, bounded, Request};
use crate::wechat::ErrorClass;
use crate::{metrics, Shared};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use wxtoken_schema::{CredentialKeys, Kind};

/// Fallback lifetime when Redis holds no announced `expires_in` yet.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(7200);
/// How soon to look again when another replica holds the lock.
const BUSY_RECHECK: Duration = Duration::from_millis(250);

/// Mutable state of one loop.
struct Slot {
    keys: CredentialKeys,
    kind: Kind,
    cred: Arc<Credential>,
    /// Random part of the threshold, redrawn after each refresh.
    jitter: Duration,
    /// Consecutive failures, for backoff.
    failures: u32,
    /// Consecutive Redis failures, for backoff.
    redis_failures: u32,
    /// Last error logged loudly, so repeats are quiet.
    last_loud: Option<String>,
    /// No WeChat call before this instant (guards against values that come
    /// back already due, e.g. a stable token with little time left).
    not_before: Option<Instant>,
}

/// Runs the loop for `kind` of `cred` until shutdown.
pub async fn run(sh: Arc<Shared>, cred: Arc<Credential>, kind: Kind, wake: Arc<Notify>) {
    let keys = match CredentialKeys::new(&sh.namespace, &cred.id) {
        Ok(k) => k,
        Err(e) => {
            // Unreachable: ids and namespace are validated with the config.
            tracing::error!(error = %e, "invalid key names");
            return;
        }
    };
    let mut slot = Slot {
        keys,
        kind,
        cred,
        jitter: Duration::ZERO,
        failures: 0,
        redis_failures: 0,
        last_loud: None,
        not_before: None,
    };
    slot.jitter = draw_jitter(&sh, DEFAULT_LIFETIME);
    loop {
        if sh.shutdown.is_cancelled() {
            break;
        }
        let wait = step(&sh, &mut slot).await;
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
            _ = sh.shutdown.cancelled() => break,
        }
    }
    tracing::debug!(id = slot.keys.id(), kind = %slot.kind, "loop stopped");
}

fn draw_jitter(sh: &Shared, lifetime: Duration) -> Duration {
    let cap = sh.refresh.jitter.min(sh.refresh.margin_for(lifetime) / 2);
    cap.mul_f64(rand::random::<f64>())
}

fn margin(cfg: &RefreshConfig, stored: &store::Stored) -> Duration {
    let lifetime = stored
        .expires_in
        .map_or(DEFAULT_LIFETIME, Duration::from_secs);
    cfg.margin_for(lifetime)
}

/// Why a value is refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Nothing stored (first start, Redis lost its data, or it expired).
    Missing,
    /// Less than the margin left (proactive refresh).
    Expiring,
    /// A business server reported the stored value refused (passive refresh).
    Reported,
    /// An operator asked for a refresh whatever is stored.
    Forced,
}

impl Reason {
    /// Lower-case name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Expiring => "expiring",
            Reason::Reported => "reported",
            Reason::Forced => "forced",
        }
    }
}

/// Whether `stored` needs a refresh now, and why; otherwise how long until it
/// will. `jitter` lowers the proactive threshold (zero under the lock).
fn decide(
    cfg: &RefreshConfig,
    stored: &store::Stored,
    jitter: Duration,
) -> Result<Reason, Duration> {
    if stored.request == Request::Forced {
        return Ok(Reason::Forced);
    }
    let threshold = margin(cfg, stored).saturating_sub(jitter);
    let left = match stored.remaining {
        None => return Ok(Reason::Missing),
        Some(left) if left <= threshold => return Ok(Reason::Expiring),
        Some(left) => left,
    };
    let scheduled = left - threshold;
    if stored.request == Request::Reported {
        // Passive refresh, but never sooner than min_interval after the last
        // refresh: a token refused for another reason must not loop.
        let since = Duration::from_millis(
            stored
                .refreshed_at_ms
                .map_or(u64::MAX, |at| stored.now_ms.saturating_sub(at)),
        );
        return match cfg.min_interval.checked_sub(since) {
            None | Some(Duration::ZERO) => Ok(Reason::Reported),
            Some(wait) => Err(wait.min(scheduled)),
        };
    }
    Err(scheduled)
}

/// One look at Redis and, if due, one attempt. Returns how long to wait.
async fn step(sh: &Shared, slot: &mut Slot) -> Duration {
    let t = sh.redis_timeout;
    // One pooled connection per step: the pool checks each checkout with a
    // round trip, so the read, the attempt and the status write share it.
    let mut con = match bounded(t, sh.pool.get()).await {
        Ok(con) => con,
        Err(e) => return redis_failed(slot, e),
    };
    let stored = match bounded(t, store::read(&mut con, &slot.keys, slot.kind)).await {
        Ok(s) => {
            sh.metrics.redis_up.set(1);
            sh.metrics
                .time_left
                .get_or_create(&metrics::value(slot.keys.id(), slot.kind))
                .set(s.remaining.map_or(0.0, |d| d.as_secs_f64()));
            if slot.redis_failures > 0 {
                tracing::info!(id = slot.keys.id(), kind = %slot.kind, "Redis is reachable again");
            }
            slot.redis_failures = 0;
            s
        }
        Err(e) => return redis_failed(slot, e),
    };

    // Status times use the Redis clock, like every other time in Redis.
    let read_at = Instant::now();
    let redis_now = || stored.now_ms + read_at.elapsed().as_millis() as u64;
    let reason = match decide(&sh.refresh, &stored, slot.jitter) {
        Ok(reason) => reason,
        Err(wait) => return wait.min(sh.refresh.check_interval),
    };
    if let Some(until) = stored.paused_until_ms.filter(|u| *u > stored.now_ms) {
        return Duration::from_millis(until - stored.now_ms).min(sh.refresh.check_interval);
    }
    if let Some(nb) = slot.not_before.filter(|_| reason == Reason::Expiring) {
        let now = Instant::now();
        if nb > now {
            return (nb - now).min(sh.refresh.check_interval);
        }
    }
    tracing::debug!(id = slot.keys.id(), kind = %slot.kind, ?reason, "due");

    let result = attempt::run(sh, &mut con, &slot.cred, &slot.keys, slot.kind, |s| {
        decide(&sh.refresh, s, Duration::ZERO).ok()
    })
    .await;
    count(sh, slot, reason, &result);
    match result {
        Ok(Attempt::Refreshed { remaining, .. }) => {
            slot.failures = 0;
            slot.last_loud = None;
            slot.jitter = draw_jitter(sh, remaining);
            let margin = sh.refresh.margin_for(remaining);
            slot.not_before = (remaining <= margin).then(|| {
                tracing::warn!(id = slot.keys.id(), kind = %slot.kind, ?remaining, "WeChat returned a value that is already within the refresh margin");
                Instant::now() + remaining / 2
            });
            record_ok(sh, &mut con, slot, redis_now()).await;
            Duration::ZERO
        }
        Ok(Attempt::AlreadyFresh) | Ok(Attempt::Rejected(_)) => Duration::ZERO,
        Ok(Attempt::Busy) => BUSY_RECHECK,
        Err(e) => failed(sh, &mut con, slot, e, redis_now()).await,
    }
}

async fn failed(
    sh: &Shared,
    con: &mut deadpool_redis::Connection,
    slot: &mut Slot,
    e: AttemptError,
    now_ms: u64,
) -> Duration {
    if matches!(e, AttemptError::NoAccessToken) {
        // Not a failure: the ticket waits for its access token, whose write
        // also wakes this loop.
        tracing::debug!(id = slot.keys.id(), kind = %slot.kind, "waiting for the access token");
        return sh.refresh.retry_initial;
    }
    slot.failures += 1;
    let (class, errcode) = match &e {
        AttemptError::Wechat(w) => (w.class(slot.kind != Kind::AccessToken), w.errcode()),
        _ => (ErrorClass::Retryable, None),
    };
    let message = e.to_string();
    let id = slot.keys.id().to_owned();
    let kind = slot.kind;
    let (wait, paused_for) = match class {
        ErrorClass::Config => {
            // Loud once per distinct fault (by errcode: WeChat's messages
            // carry a fresh request id each time).
            let fault = errcode.map_or_else(|| message.clone(), |c| c.to_string());
            if slot.last_loud.as_deref() != Some(fault.as_str()) {
                tracing::error!(%id, %kind, appid = %slot.cred.appid, error = %message,
                    "CONFIGURATION FAULT: WeChat refuses this credential; fix the secret, appid or IP whitelist. Retrying every {}",
                    humantime::format_duration(sh.refresh.config_error_retry));
                slot.last_loud = Some(fault);
            } else {
                tracing::debug!(%id, %kind, error = %message, "configuration fault persists");
            }
            (sh.refresh.config_error_retry, None)
        }
        ErrorClass::Quota => {
            tracing::error!(%id, %kind, error = %message, "daily API quota exhausted; pausing this credential for {}",
                humantime::format_duration(sh.refresh.quota_pause));
            (sh.refresh.quota_pause, Some(sh.refresh.quota_pause))
        }
        ErrorClass::Retryable | ErrorClass::TokenInvalid => {
            let wait = backoff(
                sh.refresh.retry_initial,
                sh.refresh.retry_max,
                slot.failures,
            );
            tracing::warn!(%id, %kind, error = %message, attempt = slot.failures, retry_in = ?wait, "refresh failed; backing off");
            (wait, None)
        }
    };
    if !matches!(e, AttemptError::Redis(_)) {
        record_error(sh, con, slot, &message, errcode, paused_for, now_ms).await;
    }
    wait
}

/// Records an attempt's outcome in this replica's metrics.
fn count(sh: &Shared, slot: &Slot, reason: Reason, result: &Result<Attempt, AttemptError>) {
    let m = &sh.metrics;
    let value = metrics::value(slot.keys.id(), slot.kind);
    let (outcome, errcode) = match result {
        Ok(Attempt::Refreshed { .. }) => ("ok", None),
        Ok(Attempt::Rejected(_)) => {
            m.fence_rejections.get_or_create(&value).inc();
            ("fenced", None)
        }
        Ok(Attempt::Busy) => {
            m.lock_contention.get_or_create(&value).inc();
            return;
        }
        Ok(Attempt::AlreadyFresh) | Err(AttemptError::NoAccessToken) => return,
        Err(AttemptError::Redis(_)) => {
            m.redis_up.set(0);
            return;
        }
        Err(AttemptError::StillRefused) => ("still_refused", None),
        Err(AttemptError::Wechat(w)) => ("error", w.errcode()),
        Err(AttemptError::LockLapsed) => ("error", None),
    };
    m.refreshes
        .get_or_create(&metrics::OutcomeLabels {
            id: value.id,
            kind: value.kind,
            outcome: outcome.to_owned(),
            reason: reason.as_str().to_owned(),
            errcode: errcode.map(|c| c.to_string()).unwrap_or_default(),
        })
        .inc();
}

fn redis_failed(slot: &mut Slot, e: store::RedisError) -> Duration {
    slot.redis_failures += 1;
    if slot.redis_failures == 1 {
        tracing::warn!(id = slot.keys.id(), kind = %slot.kind, error = %e, "cannot read Redis; retrying");
    }
    backoff(
        Duration::from_millis(200),
        Duration::from_secs(5),
        slot.redis_failures,
    )
}

/// Capped exponential backoff with full jitter in the upper half:
/// `initial * 2^(n-1)`, capped at `max`, then scaled by a random 0.5–1.0.
pub fn backoff(initial: Duration, max: Duration, n: u32) -> Duration {
    let exp = initial.saturating_mul(1u32 << n.saturating_sub(1).min(20));
    exp.min(max).mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

async fn record_ok(sh: &Shared, con: &mut deadpool_redis::Connection, slot: &Slot, now: u64) {
    let r = async {
        bounded(
            sh.redis_timeout,
            store::record_ok(
                con,
                &slot.keys,
                slot.kind,
                &slot.cred.appid,
                slot.cred.mode.as_str(),
                &sh.replica,
                now,
            ),
        )
        .await
    }
    .await;
    if let Err(e) = r {
        tracing::debug!(id = slot.keys.id(), error = %e, "could not record status");
    }
}

async fn record_error(
    sh: &Shared,
    con: &mut deadpool_redis::Connection,
    slot: &Slot,
    message: &str,
    errcode: Option<i64>,
    paused_for: Option<Duration>,
    now: u64,
) {
    let r = async {
        let paused_until = paused_for.map(|d| now + d.as_millis() as u64);
        let message = format!("{}: {message}", slot.kind);
        bounded(
            sh.redis_timeout,
            store::record_error(
                con,
                &slot.keys,
                &sh.replica,
                &message,
                errcode,
                paused_until,
                now,
            ),
        )
        .await
    }
    .await;
    if let Err(e) = r {
        tracing::debug!(id = slot.keys.id(), error = %e, "could not record status");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RefreshConfig {
        crate::Config::parse(
            "[refresh]\nmargin = \"300s\"\nmin_interval = \"60s\"\n",
            "t",
            &|_| None,
        )
        .unwrap()
        .refresh
    }

    fn stored(left_s: Option<u64>, refreshed_ago_s: u64, request: Request) -> store::Stored {
        let now_ms = 1_000_000_000;
        store::Stored {
            value: left_s.map(|_| "T".into()),
            remaining: left_s.map(Duration::from_secs),
            expires_in: Some(7200),
            refreshed_at_ms: Some(now_ms - refreshed_ago_s * 1000),
            paused_until_ms: None,
            request,
            now_ms,
        }
    }

    #[test]
    fn decide_proactive_passive_and_forced() {
        let c = cfg();
        let j = Duration::from_secs(20);
        assert_eq!(
            decide(&c, &stored(None, 0, Request::None), j),
            Ok(Reason::Missing)
        );
        assert_eq!(
            decide(&c, &stored(Some(250), 0, Request::None), j),
            Ok(Reason::Expiring)
        );
        // 290 s left: within the margin but not below margin − jitter yet.
        assert_eq!(
            decide(&c, &stored(Some(290), 0, Request::None), j),
            Err(Duration::from_secs(10))
        );
        assert_eq!(
            decide(&c, &stored(Some(290), 0, Request::None), Duration::ZERO),
            Ok(Reason::Expiring)
        );
        assert_eq!(
            decide(&c, &stored(Some(3600), 0, Request::None), j),
            Err(Duration::from_secs(3600 - 280))
        );
        // A report is served once min_interval has passed since the last refresh.
        assert_eq!(
            decide(&c, &stored(Some(3600), 61, Request::Reported), j),
            Ok(Reason::Reported)
        );
        assert_eq!(
            decide(&c, &stored(Some(3600), 15, Request::Reported), j),
            Err(Duration::from_secs(45))
        );
        // An operator's force skips the interval.
        assert_eq!(
            decide(&c, &stored(Some(3600), 1, Request::Forced), j),
            Ok(Reason::Forced)
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let i = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        for n in 1..=30 {
            let b = backoff(i, m, n);
            let full = (i * 2u32.pow((n - 1).min(20))).min(m);
            assert!(b >= full / 2 && b <= full, "n={n} b={b:?} full={full:?}");
        }
    }
}
