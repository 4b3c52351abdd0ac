//! Refresh policy: pure functions of the configuration and of what Redis
//! held, no I/O. Whether a claimed value needs a WeChat call and why, when
//! a value is due next, how long to back off after a failure.
//!
//! Everything that decides *when* lives here; `lease` (the protocol) and
//! `scheduler` (the due-queue loop) only carry the decisions out.

use crate::config::RefreshConfig;
use crate::wechat::ErrorClass;
use std::time::Duration;
use wxtoken_schema::{Request, ValueState};

/// Lifetime assumed when Redis holds no announced `expires_in`.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(7200);

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
    /// An authorizer (re-)authorized the platform: its authorization code
    /// is exchanged at once (it is single use and short-lived, and a
    /// re-authorization invalidates the old token).
    Authorized,
}

impl Reason {
    /// Lower-case name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Expiring => "expiring",
            Reason::Reported => "reported",
            Reason::Forced => "forced",
            Reason::Authorized => "authorized",
        }
    }

    /// A business server or an operator asked for it (the stored value is
    /// suspect, so WeChat handing it back is not good enough).
    pub fn is_passive(self) -> bool {
        matches!(self, Reason::Reported | Reason::Forced)
    }
}

/// How an issuer answers a fetch while the value it issued last is still
/// valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reissue {
    /// WeChat: a fetch issues a new value (classic tokens, tickets), or a
    /// stable token near its end may be handed back.
    New,
    /// WeCom: the same value again, with its remaining `expires_in`, until
    /// it expires (or WeCom invalidates it early); only then a new one.
    SameUntilExpiry,
}

/// How long after a WeCom value's computed expiry it is fetched again.
/// WeCom announces whole seconds (cut down), so its real expiry can be up to
/// a second after `sent + expires_in`; asked before that, it only hands the
/// value back once more.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(1);

/// The refresh margin for a value announced to live `expires_in` seconds.
pub fn margin(cfg: &RefreshConfig, expires_in: Option<u64>) -> Duration {
    cfg.margin_for(expires_in.map_or(DEFAULT_LIFETIME, Duration::from_secs))
}

/// The most a value's due time is brought forward at random (see
/// [`next_due`]): the configured jitter, at most half the margin.
fn jitter_cap(cfg: &RefreshConfig, margin: Duration) -> Duration {
    cfg.jitter.min(margin / 2)
}

/// Whether the claimed value needs a WeChat call now, and why; otherwise
/// how long until it will. Pauses and the shared backoff were honoured by
/// the claim already. A value is expiring within its margin plus the
/// largest jitter, so that one claimed at the due time [`next_due`] chose
/// (margin and some jitter before expiry) is refreshed, not put back.
pub fn decide(cfg: &RefreshConfig, state: &ValueState) -> Result<Reason, Duration> {
    let since_refresh = Duration::from_millis(
        state
            .refreshed_at_ms
            .map_or(u64::MAX, |at| state.now_ms.saturating_sub(at)),
    );
    if state.request == Request::Forced {
        // Each forced refresh costs a WeChat call: never more often than
        // force_min_interval, whoever asks.
        return match cfg.force_min_interval.checked_sub(since_refresh) {
            None | Some(Duration::ZERO) => Ok(Reason::Forced),
            Some(wait) => Err(wait),
        };
    }
    let margin = margin(cfg, state.expires_in);
    let threshold = margin + jitter_cap(cfg, margin);
    let left = match state.remaining {
        None => return Ok(Reason::Missing),
        Some(left) if left <= threshold => return Ok(Reason::Expiring),
        Some(left) => left,
    };
    let scheduled = left - threshold;
    if state.request == Request::Reported {
        // Passive refresh, but never sooner than min_interval after the last
        // refresh: a token refused for another reason must not loop.
        return match cfg.min_interval.checked_sub(since_refresh) {
            None | Some(Duration::ZERO) => Ok(Reason::Reported),
            Some(wait) => Err(wait.min(scheduled)),
        };
    }
    Err(scheduled)
}

/// When a value just written with `remaining` time to live is due again:
/// `remaining − margin − jitter`, where `jitter` is `spread` (0..1) of the
/// configured jitter, at most half the margin, and the margin is that of
/// its lifetime `expires_in` (for a value handed back again, the lifetime
/// announced when it was issued, not what is left of it: a margin computed
/// from a shrinking remainder would shrink with it, a tightening loop).
///
/// A value that came back already inside that window:
/// - from WeChat (a stable token near its end, which WeChat hands out
///   again) is looked at again after half its time but no sooner than
///   `min_interval` (at its expiry if that comes first);
/// - from WeCom ([`Reissue::SameUntilExpiry`]), which hands it back until it
///   expires, just after its expiry ([`EXPIRY_GRACE`]), once: asking sooner
///   only gets it back.
///
/// Either way never at once, and never in a tightening loop.
pub fn next_due(
    cfg: &RefreshConfig,
    remaining: Duration,
    expires_in: u64,
    spread: f64,
    reissue: Reissue,
) -> Duration {
    let margin = cfg.margin_for(Duration::from_secs(expires_in).max(remaining));
    if remaining <= margin + jitter_cap(cfg, margin) {
        return match reissue {
            Reissue::New => (remaining / 2).max(cfg.min_interval).min(remaining),
            Reissue::SameUntilExpiry => remaining + EXPIRY_GRACE,
        };
    }
    let jitter = jitter_cap(cfg, margin).mul_f64(spread.clamp(0.0, 1.0));
    remaining - margin - jitter
}

/// The wait every replica honours after a WeChat failure, by its class and
/// the credential's shared count of consecutive failures (this one
/// included).
pub fn retry_after(cfg: &RefreshConfig, class: ErrorClass, failures: u32, spread: f64) -> Duration {
    match class {
        ErrorClass::Config => cfg.config_error_retry,
        ErrorClass::Quota => cfg.quota_pause,
        ErrorClass::Retryable | ErrorClass::TokenInvalid => {
            backoff(cfg.retry_initial, cfg.retry_max, failures, spread)
        }
    }
}

/// Capped exponential backoff with jitter in the upper half:
/// `initial * 2^(n-1)`, capped at `max`, then scaled by `0.5 + spread/2`
/// (`spread` in 0..1, drawn at random by the caller).
pub fn backoff(initial: Duration, max: Duration, n: u32, spread: f64) -> Duration {
    let exp = initial.saturating_mul(1u32 << n.saturating_sub(1).min(20));
    exp.min(max).mul_f64(0.5 + spread.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RefreshConfig {
        crate::Config::parse(
            "[refresh]\nmargin = \"300s\"\nmin_interval = \"60s\"\njitter = \"30s\"\n",
            "t",
            &|_| None,
        )
        .unwrap()
        .refresh
    }

    fn state(left_s: Option<u64>, refreshed_ago_s: u64, request: Request) -> ValueState {
        let now_ms = 1_000_000_000;
        ValueState {
            value: left_s.map(|_| "T".into()),
            remaining: left_s.map(Duration::from_secs),
            expires_in: Some(7200),
            refreshed_at_ms: Some(now_ms - refreshed_ago_s * 1000),
            request,
            failures: 0,
            input: None,
            authorization_code: None,
            now_ms,
            due_at_ms: now_ms,
        }
    }

    #[test]
    fn decide_proactive_passive_and_forced() {
        let c = cfg();
        assert_eq!(
            decide(&c, &state(None, 0, Request::None)),
            Ok(Reason::Missing)
        );
        assert_eq!(
            decide(&c, &state(Some(250), 0, Request::None)),
            Ok(Reason::Expiring)
        );
        // Margin 300 s plus the largest jitter, 30 s: a value claimed at any
        // due time next_due can choose is refreshed.
        assert_eq!(
            decide(&c, &state(Some(330), 0, Request::None)),
            Ok(Reason::Expiring)
        );
        let written = Duration::from_secs(7200);
        for spread in [0.0, 0.5, 1.0] {
            let left = written - next_due(&c, written, 7200, spread, Reissue::New);
            assert_eq!(
                decide(&c, &state(Some(left.as_secs()), 0, Request::None)),
                Ok(Reason::Expiring),
                "claimed at its due time with spread {spread}"
            );
        }
        assert_eq!(
            decide(&c, &state(Some(3600), 0, Request::None)),
            Err(Duration::from_secs(3270))
        );
        // A report is served once min_interval has passed since the last refresh.
        assert_eq!(
            decide(&c, &state(Some(3600), 61, Request::Reported)),
            Ok(Reason::Reported)
        );
        assert_eq!(
            decide(&c, &state(Some(3600), 15, Request::Reported)),
            Err(Duration::from_secs(45))
        );
        // An operator's force skips min_interval, but not force_min_interval
        // (30 s): forcing in a loop costs one call per 30 s at most.
        assert_eq!(
            decide(&c, &state(Some(3600), 31, Request::Forced)),
            Ok(Reason::Forced)
        );
        assert_eq!(
            decide(&c, &state(Some(3600), 10, Request::Forced)),
            Err(Duration::from_secs(20))
        );
    }

    #[test]
    fn next_due_leaves_the_margin_and_spreads_by_jitter() {
        let c = cfg();
        let two_h = Duration::from_secs(7200);
        assert_eq!(
            next_due(&c, two_h, 7200, 0.0, Reissue::New),
            Duration::from_secs(6900)
        );
        assert_eq!(
            next_due(&c, two_h, 7200, 1.0, Reissue::New),
            Duration::from_secs(6870)
        );
        // The margin is clamped to a fraction of a short lifetime.
        let short = Duration::from_secs(60);
        assert_eq!(
            next_due(&c, short, 60, 0.0, Reissue::New),
            Duration::from_secs(45)
        );
        // A value handed back inside its margin is looked at after half its
        // life, but no sooner than min_interval (60 s), and at the latest
        // when it expires.
        assert_eq!(
            next_due(&c, Duration::from_secs(200), 7200, 0.5, Reissue::New),
            Duration::from_secs(100)
        );
        assert_eq!(
            next_due(&c, Duration::from_secs(100), 7200, 0.5, Reissue::New),
            Duration::from_secs(60)
        );
        assert_eq!(
            next_due(&c, Duration::from_secs(40), 7200, 0.5, Reissue::New),
            Duration::from_secs(40)
        );
    }

    #[test]
    fn a_wecom_value_handed_back_is_looked_at_once_after_its_expiry() {
        let c = cfg();
        let w = Reissue::SameUntilExpiry;
        // A new WeCom token: the usual schedule (an early look, which
        // catches a token WeCom invalidated early and configuration faults
        // while the token still works).
        let two_h = Duration::from_secs(7200);
        assert_eq!(next_due(&c, two_h, 7200, 0.0, w), Duration::from_secs(6900));
        // That look hands the same token back with little left: due just
        // after it expires, whatever is left, never at once.
        for left_ms in [330_000, 300_000, 100_000, 60_000, 1_000, 10, 0] {
            let left = Duration::from_millis(left_ms);
            for spread in [0.0, 0.5, 1.0] {
                assert_eq!(
                    next_due(&c, left, 7200, spread, w),
                    left + EXPIRY_GRACE,
                    "{left_ms} ms left"
                );
            }
        }
        // No tightening loop: follow the looks WeCom's answers cause. Each
        // hands back the same token with what is left of it (whole seconds,
        // cut down, at least 1) until it has expired; the lifetime is the
        // one announced when it was issued.
        for lifetime in [7200u64, 600, 60, 20, 4] {
            let mut now = Duration::ZERO;
            let expiry = Duration::from_secs(lifetime);
            let mut looks = 0;
            let mut remaining = expiry;
            loop {
                let due = next_due(&c, remaining, lifetime, 0.5, w);
                assert!(
                    due >= Duration::from_millis(500).min(remaining),
                    "due at once"
                );
                now += due;
                looks += 1;
                if now >= expiry {
                    break;
                }
                let announced = (expiry - now).as_secs().max(1);
                remaining = Duration::from_secs(announced);
            }
            assert_eq!(
                looks, 2,
                "lifetime {lifetime}: one early look, one after expiry"
            );
            assert!(now - expiry <= EXPIRY_GRACE, "lifetime {lifetime}");
        }
        // The margin comes from the lifetime, not from what is left: the
        // old rule, fed the remainder as the lifetime, shrank the margin
        // with it and looked again and again.
        assert_eq!(
            next_due(&c, Duration::from_secs(200), 7200, 0.5, w),
            Duration::from_secs(201)
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let i = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        for n in 1..=30 {
            let full = (i * 2u32.pow((n - 1).min(20))).min(m);
            assert_eq!(backoff(i, m, n, 0.0), full / 2);
            assert_eq!(backoff(i, m, n, 1.0), full);
        }
        let c = cfg();
        assert_eq!(retry_after(&c, ErrorClass::Quota, 1, 0.0), c.quota_pause);
        assert_eq!(
            retry_after(&c, ErrorClass::Config, 9, 0.0),
            c.config_error_retry
        );
    }
}
