//! When to refresh: one loop per stored value (a credential's access token or
//! one of its tickets), driven by what Redis says is left.
//!
//! A replica that just started learns the schedule from Redis (the value's
//! TTL), so it knows at once what is due. The loop sleeps until the value's
//! remaining life drops under the margin (less a random jitter), never longer
//! than `check_interval`, and wakes early on an update event. It honours the
//! pause and shared backoff recorded in Redis, and classifies failures into
//! backoff, slow retry or pause. It never calls WeChat itself (see `attempt`).

use crate::attempt::{self, Attempt, AttemptError, Failed};
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
    /// Consecutive fenced-off writes, for backoff.
    rejections: u32,
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
        rejections: 0,
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
    // A pause (quota) or the shared backoff after a failure holds everything,
    // forced requests included: every replica honours it, under the lock too.
    let hold = [stored.paused_until_ms, stored.retry_after_ms]
        .into_iter()
        .flatten()
        .filter(|until| *until > stored.now_ms)
        .max();
    if let Some(until) = hold {
        return Err(Duration::from_millis(until - stored.now_ms));
    }
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
    let read = async {
        let mut con = bounded(t, sh.pool.get()).await?;
        bounded(t, store::read(&mut con, &slot.keys, slot.kind)).await
    };
    let stored = match read.await {
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
        Err(e) => return redis_failed(sh, slot, e),
    };

    let reason = match decide(&sh.refresh, &stored, slot.jitter) {
        Ok(reason) => reason,
        Err(wait) => return wait.min(sh.refresh.check_interval),
    };
    if let Some(nb) = slot.not_before.filter(|_| reason == Reason::Expiring) {
        let now = Instant::now();
        if nb > now {
            return (nb - now).min(sh.refresh.check_interval);
        }
    }
    tracing::debug!(id = slot.keys.id(), kind = %slot.kind, reason = reason.as_str(), "due");

    let result = attempt::run(sh, &slot.cred, &slot.keys, slot.kind, |s| {
        decide(&sh.refresh, s, Duration::ZERO).ok()
    })
    .await;
    count(sh, slot, reason, &result);
    match result {
        Ok(Attempt::Refreshed { remaining, .. }) => {
            slot.rejections = 0;
            slot.last_loud = None;
            slot.jitter = draw_jitter(sh, remaining);
            let margin = sh.refresh.margin_for(remaining);
            slot.not_before = (remaining <= margin).then(|| {
                tracing::warn!(id = slot.keys.id(), kind = %slot.kind, ?remaining, "WeChat returned a value that is already within the refresh margin");
                Instant::now() + remaining / 2
            });
            Duration::ZERO
        }
        Ok(Attempt::AlreadyFresh) => Duration::ZERO,
        Ok(Attempt::Rejected(_)) => {
            // Another replica's newer write won; never retry in a tight loop.
            slot.rejections += 1;
            backoff(
                sh.refresh.retry_initial,
                sh.refresh.retry_max,
                slot.rejections,
            )
        }
        Ok(Attempt::Busy) => BUSY_RECHECK,
        Err(failed) => log_failure(sh, slot, failed),
    }
}

/// The wait every replica honours after a WeChat failure, by its class and
/// the credential's shared count of consecutive failures.
pub fn retry_after(cfg: &RefreshConfig, class: ErrorClass, failures: u32) -> Duration {
    match class {
        ErrorClass::Config => cfg.config_error_retry,
        ErrorClass::Quota => cfg.quota_pause,
        ErrorClass::Retryable | ErrorClass::TokenInvalid => {
            backoff(cfg.retry_initial, cfg.retry_max, failures)
        }
    }
}

/// Logs a failed attempt (configuration faults loudly, once) and returns
/// the wait it was given.
fn log_failure(sh: &Shared, slot: &mut Slot, failed: Failed) -> Duration {
    let Failed { error, retry_in } = failed;
    let id = slot.keys.id().to_owned();
    let kind = slot.kind;
    let message = error.to_string();
    match &error {
        AttemptError::NoAccessToken => {
            // Not a failure: the ticket waits for its access token, whose
            // write also wakes this loop.
            tracing::debug!(%id, %kind, "waiting for the access token");
            return retry_in;
        }
        AttemptError::LockLapsed => {
            tracing::warn!(%id, %kind, "refresh lock lapsed before the WeChat call (stalled?); not calling");
            return retry_in;
        }
        AttemptError::Redis(e) => {
            tracing::warn!(%id, %kind, error = %e, "Redis failed during a refresh; retrying");
            return retry_in;
        }
        AttemptError::Wechat(_) | AttemptError::StillRefused => {}
    }
    let errcode = match &error {
        AttemptError::Wechat(w) => w.errcode(),
        _ => None,
    };
    match error.class(kind) {
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
        }
        ErrorClass::Quota => {
            tracing::error!(%id, %kind, error = %message, "daily API quota exhausted; pausing this credential for {}",
                humantime::format_duration(retry_in));
        }
        ErrorClass::Retryable | ErrorClass::TokenInvalid => {
            tracing::warn!(%id, %kind, error = %message, retry_in = ?retry_in, "refresh failed; backing off (shared by all replicas)");
        }
    }
    retry_in
}

/// Records an attempt's outcome in this replica's metrics.
fn count(sh: &Shared, slot: &Slot, reason: Reason, result: &Result<Attempt, Failed>) {
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
        Ok(Attempt::AlreadyFresh) => return,
        Err(failed) => match &failed.error {
            AttemptError::NoAccessToken | AttemptError::LockLapsed => return,
            AttemptError::Redis(_) => {
                m.redis_up.set(0);
                return;
            }
            AttemptError::StillRefused => ("still_refused", None),
            AttemptError::Wechat(w) => ("error", w.errcode()),
        },
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

fn redis_failed(sh: &Shared, slot: &mut Slot, e: store::RedisError) -> Duration {
    sh.metrics.redis_up.set(0);
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
            retry_after_ms: None,
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
        // A pause or the shared backoff holds everything, forced requests too.
        let mut held = stored(None, 1, Request::Forced);
        held.retry_after_ms = Some(held.now_ms + 1500);
        assert_eq!(decide(&c, &held, j), Err(Duration::from_millis(1500)));
        held.paused_until_ms = Some(held.now_ms + 9000);
        assert_eq!(decide(&c, &held, j), Err(Duration::from_millis(9000)));
        held.retry_after_ms = Some(held.now_ms - 1);
        held.paused_until_ms = Some(held.now_ms - 1);
        assert_eq!(decide(&c, &held, j), Ok(Reason::Forced));
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
