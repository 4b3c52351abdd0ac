//! One refresh attempt of one stored value: take the lock, re-check, call
//! WeChat while renewing the lock, write under the fence, release the lock.
//!
//! This is where "exactly one node calls WeChat" is enforced: a replica calls
//! only while holding the lock *and* after re-reading Redis under it, and its
//! write lands only if the lock is still its own and no newer fence has
//! written. It decides nothing about *when* to refresh (see `schedule`).

use crate::config::{Credential, Mode, Ticket};
use crate::schedule::Reason;
use crate::store::{self, bounded, RedisError};
use crate::wechat::{Fetched, WechatError};
use crate::{token_prefix, Shared};
use std::time::Duration;
use wxtoken_schema::{
    acquire_lock, release_lock, renew_lock, write_token, CredentialKeys, Kind, TokenWrite,
    WriteOutcome,
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
    /// The lock lapsed before the WeChat call could be made.
    #[error("refresh lock lapsed before calling WeChat")]
    LockLapsed,
}

/// Runs one attempt for `kind` of `cred`. `due` decides, from what Redis
/// holds under the lock, whether a WeChat call is still needed, and why.
pub async fn run(
    sh: &Shared,
    con: &mut deadpool_redis::Connection,
    cred: &Credential,
    keys: &CredentialKeys,
    kind: Kind,
    due: impl FnOnce(&store::Stored) -> Option<Reason>,
) -> Result<Attempt, AttemptError> {
    let t = sh.redis_timeout;
    let owner = format!("{}#{:016x}", sh.replica, rand::random::<u64>());
    let Some(fence) = bounded(
        t,
        acquire_lock(con, keys, kind, &owner, sh.refresh.lock_ttl),
    )
    .await?
    else {
        return Ok(Attempt::Busy);
    };
    let result = locked(sh, cred, keys, kind, &owner, fence, con, due).await;
    // Release whatever happened; if it already lapsed, nothing is lost.
    match bounded(t, release_lock(con, keys, kind, &owner)).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!(id = keys.id(), %kind, "lock had lapsed before release"),
        Err(e) => {
            tracing::warn!(id = keys.id(), %kind, error = %e, "could not release lock; it lapses by its TTL")
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn locked(
    sh: &Shared,
    cred: &Credential,
    keys: &CredentialKeys,
    kind: Kind,
    owner: &str,
    fence: u64,
    con: &mut deadpool_redis::Connection,
    due: impl FnOnce(&store::Stored) -> Option<Reason>,
) -> Result<Attempt, AttemptError> {
    let t = sh.redis_timeout;
    // Double-check under the lock: another replica may have just refreshed.
    let stored = bounded(t, store::read(con, keys, kind)).await?;
    let Some(reason) = due(&stored) else {
        return Ok(Attempt::AlreadyFresh);
    };
    let access_token = match kind {
        Kind::AccessToken => None,
        _ => Some(
            bounded(t, store::access_token(con, keys))
                .await?
                .ok_or(AttemptError::NoAccessToken)?,
        ),
    };
    // Confirm the lease right before the call, so a replica that stalled
    // after acquiring does not call WeChat on a lock it no longer holds.
    if !bounded(t, renew_lock(con, keys, kind, owner, sh.refresh.lock_ttl)).await? {
        return Err(AttemptError::LockLapsed);
    }

    let passive = matches!(reason, Reason::Reported | Reason::Forced);
    let refused = stored.value.as_deref().filter(|_| passive);
    let call = fetch(sh, cred, kind, access_token.as_deref(), refused);
    tokio::pin!(call);
    let fetched = loop {
        tokio::select! {
            r = &mut call => break r?,
            _ = tokio::time::sleep(sh.refresh.lock_ttl / 3) => {
                match bounded(t, renew_lock(con, keys, kind, owner, sh.refresh.lock_ttl)).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(id = keys.id(), %kind, "lost the refresh lock during the WeChat call; the write will be fenced off"),
                    Err(e) => tracing::warn!(id = keys.id(), %kind, error = %e, "could not renew the refresh lock"),
                }
            }
        }
    };

    let write = TokenWrite {
        kind,
        owner,
        fence,
        token: &fetched.token,
        ttl: fetched.remaining(),
        expires_in: fetched.expires_in,
        replica: &sh.replica,
    };
    let outcome = bounded(t, write_token(con, keys, &write)).await?;
    match outcome {
        WriteOutcome::Written { .. } => {
            tracing::info!(
                id = keys.id(),
                %kind,
                token = %token_prefix(&fetched.token),
                expires_in = fetched.expires_in,
                fence,
                ?reason,
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

/// Calls WeChat for `kind`. `refused` is the stored value a passive refresh
/// must replace: for stable tokens, normal mode may hand the same token back,
/// and only then is `force_refresh` used (WeChat allows 20 a day, 30 s apart).
async fn fetch(
    sh: &Shared,
    cred: &Credential,
    kind: Kind,
    access_token: Option<&str>,
    refused: Option<&str>,
) -> Result<Fetched, AttemptError> {
    let ticket = |t: Ticket| {
        timed(
            sh,
            "ticket",
            sh.wechat
                .ticket(access_token.unwrap_or(""), t.wechat_type()),
        )
    };
    let stable = |force| {
        timed(
            sh,
            "stable_token",
            sh.wechat.stable_token(&cred.appid, &cred.secret, force),
        )
    };
    let fetched = match kind {
        Kind::AccessToken => match cred.mode {
            Mode::Classic => {
                timed(
                    sh,
                    "token",
                    sh.wechat.classic_token(&cred.appid, &cred.secret),
                )
                .await?
            }
            Mode::Stable => {
                let normal = stable(false).await?;
                if refused != Some(normal.token.as_str()) {
                    return Ok(normal);
                }
                tracing::info!(id = %cred.id, "WeChat still hands out the refused stable token; using force_refresh");
                stable(true).await?
            }
        },
        Kind::JsapiTicket => ticket(Ticket::Jsapi).await?,
        Kind::WxCardTicket => ticket(Ticket::WxCard).await?,
    };
    if refused == Some(fetched.token.as_str()) {
        return Err(AttemptError::StillRefused);
    }
    Ok(fetched)
}

/// Runs a WeChat call, recording its duration.
async fn timed(
    sh: &Shared,
    endpoint: &str,
    call: impl std::future::Future<Output = Result<Fetched, WechatError>>,
) -> Result<Fetched, WechatError> {
    let started = std::time::Instant::now();
    let r = call.await;
    sh.metrics.wechat_call(endpoint, started.elapsed());
    r
}
