//! One refresh attempt of one stored value: take the lock, re-check, call
//! WeChat while renewing the lock, write under the fence, record the outcome,
//! release the lock.
//!
//! This is where "exactly one node calls WeChat" is enforced: a replica calls
//! only while holding the lock *and* after re-reading Redis under it, and its
//! write lands only if the lock is still its own and no newer fence has
//! written. Outcomes (status, shared backoff, pauses) are recorded before the
//! lock is released, so the next replica to take it sees them. It decides
//! nothing about *when* to refresh (see `schedule`), and it holds no Redis
//! connection while WeChat is being called.

use crate::config::{Credential, Mode, Ticket};
use crate::schedule::{self, Reason};
use crate::store::{self, bounded, RedisError};
use crate::wechat::{ErrorClass, Fetched, WechatError};
use crate::Shared;
use std::future::Future;
use std::time::{Duration, Instant};
use wxtoken_schema::{
    acquire_lock, release_lock, renew_lock, request_refresh, token_prefix, write_token,
    CredentialKeys, Kind, TokenWrite, WriteOutcome, REQUEST_TTL_SECS,
};

/// How an attempt ended without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// This replica fetched and stored a new value.
    Refreshed {
        /// Fence of the write.
        fence: u64,
        /// Time left on the stored value right after the write.
        remaining: Duration,
    },
    /// Under the lock, Redis already held a fresh value: no WeChat call.
    AlreadyFresh,
    /// Another replica holds the lock.
    Busy,
    /// The fetched value was not stored: the lock was lost or a newer fence
    /// wrote first. Redis keeps the newer value.
    Rejected(WriteOutcome),
}

/// Why an attempt failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AttemptError {
    /// Redis was unreachable or failed.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// WeChat refused or failed.
    #[error(transparent)]
    Wechat(#[from] WechatError),
    /// A ticket needs the access token, which is not in Redis yet.
    #[error("no access token stored yet to fetch the ticket with")]
    NoAccessToken,
    /// WeChat handed back the very value that was reported refused.
    #[error("WeChat returned the reported value again (stable force_refresh is limited to 20 a day, 30 s apart)")]
    StillRefused,
    /// The lock lapsed before a WeChat call could be made.
    #[error("refresh lock lapsed before calling WeChat")]
    LockLapsed,
}

impl AttemptError {
    /// How the schedule should react.
    pub fn class(&self, kind: Kind) -> ErrorClass {
        match self {
            AttemptError::Wechat(w) => w.class(kind != Kind::AccessToken),
            _ => ErrorClass::Retryable,
        }
    }

    /// Whether this is a refusal or failure of WeChat's, recorded in the
    /// status hash and subject to the shared backoff (Redis trouble, a missing
    /// access token and a lapsed lease are not).
    fn is_wechat_failure(&self) -> bool {
        matches!(self, AttemptError::Wechat(_) | AttemptError::StillRefused)
    }
}

/// A failed attempt and how long every replica should wait before the next.
#[derive(Debug, Clone)]
pub struct Failed {
    /// What went wrong.
    pub error: AttemptError,
    /// The agreed wait (shared through Redis for WeChat failures).
    pub retry_in: Duration,
}

/// Runs one attempt for `kind` of `cred`. `due` decides, from what Redis
/// holds under the lock, whether a WeChat call is still needed, and why.
pub async fn run(
    sh: &Shared,
    cred: &Credential,
    keys: &CredentialKeys,
    kind: Kind,
    due: impl FnOnce(&store::Stored) -> Option<Reason>,
) -> Result<Attempt, Failed> {
    let t = sh.redis_timeout;
    let redis_failed = |e: RedisError| Failed {
        error: e.into(),
        retry_in: sh.refresh.retry_initial,
    };
    let owner = format!("{}#{:016x}", sh.replica, rand::random::<u64>());
    let fence = async {
        let mut con = bounded(t, sh.pool.get()).await?;
        bounded(
            t,
            acquire_lock(&mut con, keys, kind, &owner, sh.refresh.lock_ttl),
        )
        .await
    }
    .await
    .map_err(redis_failed)?;
    let Some(fence) = fence else {
        return Ok(Attempt::Busy);
    };

    let result = locked(sh, cred, keys, kind, &owner, fence, due).await;
    // Record the outcome while the lock is still ours, so the next holder
    // sees it (pause, shared backoff), then release whatever happened.
    let outcome = match result {
        Ok(attempt) => {
            if matches!(attempt, Attempt::Refreshed { .. }) {
                record_ok(sh, cred, keys, kind).await;
            }
            Ok(attempt)
        }
        Err(error) if error.is_wechat_failure() => {
            let retry_in = record_failure(sh, keys, kind, &error).await;
            Err(Failed { error, retry_in })
        }
        Err(error) => Err(Failed {
            error,
            retry_in: sh.refresh.retry_initial,
        }),
    };
    let released = async {
        let mut con = bounded(t, sh.pool.get()).await?;
        bounded(t, release_lock(&mut con, keys, kind, &owner)).await
    }
    .await;
    match released {
        Ok(true) => {}
        Ok(false) => tracing::debug!(id = keys.id(), %kind, "lock had lapsed before release"),
        Err(e) => {
            tracing::warn!(id = keys.id(), %kind, error = %e, "could not release lock; it lapses by its TTL")
        }
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn locked(
    sh: &Shared,
    cred: &Credential,
    keys: &CredentialKeys,
    kind: Kind,
    owner: &str,
    fence: u64,
    due: impl FnOnce(&store::Stored) -> Option<Reason>,
) -> Result<Attempt, AttemptError> {
    let t = sh.redis_timeout;
    // Double-check under the lock: another replica may have just refreshed.
    let (stored, reason, access_token, rtt) = {
        let mut con = bounded(t, sh.pool.get()).await?;
        let started = Instant::now();
        let stored = bounded(t, store::read(&mut con, keys, kind)).await?;
        let rtt = started.elapsed();
        let Some(reason) = due(&stored) else {
            return Ok(Attempt::AlreadyFresh);
        };
        let access_token = match kind {
            Kind::AccessToken => None,
            _ => Some(
                bounded(t, store::access_token(&mut con, keys))
                    .await?
                    .ok_or(AttemptError::NoAccessToken)?,
            ),
        };
        confirm_lease(sh, &mut con, keys, kind, owner).await?;
        (stored, reason, access_token, rtt)
    };

    let passive = matches!(reason, Reason::Reported | Reason::Forced);
    let refused = stored.value.as_deref().filter(|_| passive);
    let mut fetched = with_renewal(
        sh,
        keys,
        kind,
        owner,
        call(sh, cred, kind, access_token.as_deref(), false),
    )
    .await;
    if let (Err(e), Some(token)) = (&fetched, &access_token) {
        if e.class(kind) == ErrorClass::TokenInvalid {
            report_access_token(sh, keys, token).await;
        }
    }
    if kind == Kind::AccessToken
        && cred.mode == Mode::Stable
        && fetched
            .as_ref()
            .is_ok_and(|f| Some(f.token.as_str()) == refused)
    {
        // Normal mode handed back the refused token: only now is a
        // force_refresh (20 a day) spent, and only on a lease still ours.
        tracing::info!(id = %cred.id, "WeChat still hands out the refused stable token; using force_refresh");
        let mut con = bounded(t, sh.pool.get()).await?;
        confirm_lease(sh, &mut con, keys, kind, owner).await?;
        drop(con);
        fetched = with_renewal(sh, keys, kind, owner, call(sh, cred, kind, None, true)).await;
    }
    let fetched = fetched?;
    if refused == Some(fetched.token.as_str()) {
        return Err(AttemptError::StillRefused);
    }

    // The TTL counts from when Redis runs the script: leave out one round
    // trip so the stored TTL never outlasts the real expiry.
    let write = TokenWrite {
        kind,
        owner,
        fence,
        token: &fetched.token,
        ttl: fetched.remaining().saturating_sub(rtt),
        expires_in: fetched.expires_in,
        replica: &sh.replica,
    };
    let mut con = bounded(t, sh.pool.get()).await?;
    let outcome = bounded(t, write_token(&mut con, keys, &write)).await?;
    match outcome {
        WriteOutcome::Written { .. } => {
            tracing::info!(
                id = keys.id(),
                %kind,
                token = %token_prefix(&fetched.token),
                expires_in = fetched.expires_in,
                fence,
                reason = reason.as_str(),
                "stored new value"
            );
            Ok(Attempt::Refreshed {
                fence,
                remaining: fetched.remaining(),
            })
        }
        rejected => {
            tracing::warn!(
                id = keys.id(),
                %kind,
                token = %token_prefix(&fetched.token),
                fence,
                outcome = ?rejected,
                "fenced write rejected; Redis keeps the newer value"
            );
            Ok(Attempt::Rejected(rejected))
        }
    }
}

/// Extends the lease; `LockLapsed` if it is no longer ours. Called right
/// before each WeChat call, so a replica that stalled after acquiring does
/// not call WeChat on a lock another replica may hold by now.
async fn confirm_lease(
    sh: &Shared,
    con: &mut deadpool_redis::Connection,
    keys: &CredentialKeys,
    kind: Kind,
    owner: &str,
) -> Result<(), AttemptError> {
    let held = bounded(
        sh.redis_timeout,
        renew_lock(con, keys, kind, owner, sh.refresh.lock_ttl),
    )
    .await?;
    if held {
        Ok(())
    } else {
        Err(AttemptError::LockLapsed)
    }
}

/// Runs `call`, renewing the lease every third of its TTL (with a pooled
/// connection checked out only for each renewal).
async fn with_renewal(
    sh: &Shared,
    keys: &CredentialKeys,
    kind: Kind,
    owner: &str,
    call: impl Future<Output = Result<Fetched, WechatError>>,
) -> Result<Fetched, AttemptError> {
    let t = sh.redis_timeout;
    tokio::pin!(call);
    loop {
        tokio::select! {
            r = &mut call => return Ok(r?),
            _ = tokio::time::sleep(sh.refresh.lock_ttl / 3) => {
                let renewed = async {
                    let mut con = bounded(t, sh.pool.get()).await?;
                    bounded(t, renew_lock(&mut con, keys, kind, owner, sh.refresh.lock_ttl)).await
                }
                .await;
                match renewed {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(id = keys.id(), %kind, "lost the refresh lock during the WeChat call; the write will be fenced off"),
                    Err(e) => tracing::warn!(id = keys.id(), %kind, error = %e, "could not renew the refresh lock"),
                }
            }
        }
    }
}

/// One WeChat call for `kind` (`force` only for stable tokens).
async fn call(
    sh: &Shared,
    cred: &Credential,
    kind: Kind,
    access_token: Option<&str>,
    force: bool,
) -> Result<Fetched, WechatError> {
    let started = Instant::now();
    let (endpoint, result) = match kind {
        Kind::AccessToken => match cred.mode {
            Mode::Classic => (
                "token",
                sh.wechat.classic_token(&cred.appid, &cred.secret).await,
            ),
            Mode::Stable => (
                "stable_token",
                sh.wechat
                    .stable_token(&cred.appid, &cred.secret, force)
                    .await,
            ),
        },
        Kind::JsapiTicket | Kind::WxCardTicket => {
            let ticket = if kind == Kind::JsapiTicket {
                Ticket::Jsapi
            } else {
                Ticket::WxCard
            };
            (
                "ticket",
                sh.wechat
                    .ticket(access_token.unwrap_or(""), ticket.wechat_type())
                    .await,
            )
        }
    };
    sh.metrics.wechat_call(endpoint, started.elapsed());
    result
}

/// A ticket call said the access token is invalid: ask for it to be replaced
/// (compare-and-request, so concurrent reports cost one refresh).
async fn report_access_token(sh: &Shared, keys: &CredentialKeys, token: &str) {
    let t = sh.redis_timeout;
    let r = async {
        let mut con = bounded(t, sh.pool.get()).await?;
        bounded(
            t,
            request_refresh(
                &mut con,
                keys,
                Kind::AccessToken,
                token,
                Duration::from_secs(REQUEST_TTL_SECS),
            ),
        )
        .await
    }
    .await;
    match r {
        Ok(outcome) => tracing::warn!(id = keys.id(), token = %token_prefix(token), ?outcome,
            "WeChat refused the access token for a ticket call; requested its refresh"),
        Err(e) => {
            tracing::warn!(id = keys.id(), error = %e, "could not request an access token refresh")
        }
    }
}

/// Records a successful refresh in the status hash (best effort).
async fn record_ok(sh: &Shared, cred: &Credential, keys: &CredentialKeys, kind: Kind) {
    let t = sh.redis_timeout;
    let r = async {
        let mut con = bounded(t, sh.pool.get()).await?;
        bounded(
            t,
            store::record_ok(
                &mut con,
                keys,
                kind,
                &cred.appid,
                cred.mode.as_str(),
                &sh.replica,
            ),
        )
        .await
    }
    .await;
    if let Err(e) = r {
        tracing::debug!(id = keys.id(), error = %e, "could not record status");
    }
}

/// Records a WeChat failure and the wait every replica must honour before
/// the next call (shared backoff, or the quota pause). Returns the wait.
async fn record_failure(
    sh: &Shared,
    keys: &CredentialKeys,
    kind: Kind,
    error: &AttemptError,
) -> Duration {
    let t = sh.redis_timeout;
    let class = error.class(kind);
    let errcode = match error {
        AttemptError::Wechat(w) => w.errcode(),
        _ => None,
    };
    let message = format!("{kind}: {error}");
    let r = async {
        let mut con = bounded(t, sh.pool.get()).await?;
        let failures = bounded(t, store::count_failure(&mut con, keys)).await?;
        let wait = schedule::retry_after(&sh.refresh, class, failures);
        let paused = class == ErrorClass::Quota;
        bounded(
            t,
            store::record_error(&mut con, keys, &sh.replica, &message, errcode, wait, paused),
        )
        .await?;
        Ok::<_, RedisError>(wait)
    }
    .await;
    match r {
        Ok(wait) => wait,
        Err(e) => {
            tracing::debug!(id = keys.id(), error = %e, "could not record status");
            schedule::retry_after(&sh.refresh, class, 1)
        }
    }
}
