//! WeCom third-party suites (服务商套件): what their callback pushes do, and
//! the exchange of `create_auth` codes for permanent codes.
//!
//! - [`suite_ticket`]: the newest ticket is stored (an older push never
//!   replaces a newer one) and a suite token that is not stored is due at
//!   once (it was waiting for a ticket).
//! - [`create_auth`]: the push carries a temporary auth code but not the
//!   corp (only `get_permanent_code` names it), so the code is recorded with
//!   the suite (`wxtoken_schema::suite`), and exchanged by [`exchange`]:
//!   under the suite's exchange lock (one replica at a time, confirmed right
//!   before the call and renewed during it), so each code is spent exactly
//!   once. The corp is then registered in its own slot with its permanent
//!   code (durable), due at once; its access token comes from
//!   `get_corp_token` through the usual lease. A code is marked exchanged
//!   once WeCom answered for it (or refused it for good); a replayed push
//!   of it changes nothing.
//! - [`cancel_auth`]: the corp and every key it has are removed (unless it
//!   authorized again after the push).
//!
//! Every replica runs [`sweeper`], which exchanges codes left pending (the
//! receiving replica died, no suite token was stored yet, WeCom failed).
//! Codes, permanent codes and tickets never appear in logs or metrics;
//! tokens only as prefixes.

use crate::config::WecomSuite;
use crate::conn::RedisError;
use crate::wechat::{ErrorClass, PermanentGrant, WechatError};
use crate::Shared;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wxtoken_schema::registry::{self, Authorized};
use wxtoken_schema::suite::{self as keys_suite, PendingCode};
use wxtoken_schema::{read_value, wake_if_missing, CredentialKeys, Kind, SuiteKeys};

/// How often every replica looks for codes left pending.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Why a push's action did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SuiteError {
    /// Redis was unreachable or failed.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// A suite id or corpid that cannot be used in key names.
    #[error("{0}")]
    Name(#[from] wxtoken_schema::InvalidName),
}

fn suite_keys(sh: &Shared, suite: &WecomSuite) -> Result<SuiteKeys, SuiteError> {
    Ok(SuiteKeys::new(&sh.namespace, &suite.suite_id)?)
}

/// Stores a pushed `suite_ticket` (`create_time`: the push's `TimeStamp`,
/// Unix s) unless a later push's is stored; `true` when stored. A suite
/// token that is not stored is then due at once.
pub async fn suite_ticket(
    sh: &Shared,
    suite: &WecomSuite,
    ticket: &str,
    create_time: u64,
) -> Result<bool, SuiteError> {
    let keys = suite_keys(sh, suite)?;
    let mut con = sh.redis.con();
    let stored = sh
        .redis
        .step(keys_suite::store_suite_ticket(
            &mut con,
            &keys,
            ticket,
            create_time,
        ))
        .await?;
    if stored {
        let token_keys = CredentialKeys::suite(&sh.namespace, &suite.suite_id)?;
        let mut con = sh.redis.con();
        match sh
            .redis
            .step(wake_if_missing(
                &mut con,
                &token_keys,
                Kind::SuiteAccessToken,
            ))
            .await
        {
            Ok(true) => sh.inbox.due_now(token_keys.member(Kind::SuiteAccessToken)),
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "could not wake the suite token"),
        }
    }
    Ok(stored)
}

/// Records the auth code of a `create_auth` push; `true` when it is new
/// (then exchanged at once, in the background), `false` for a replay.
pub async fn create_auth(
    sh: &Arc<Shared>,
    suite: &Arc<WecomSuite>,
    code: &str,
) -> Result<bool, SuiteError> {
    let keys = suite_keys(sh, suite)?;
    let mut con = sh.redis.con();
    let new = sh
        .redis
        .step(keys_suite::record_auth_code(&mut con, &keys, code))
        .await?;
    if new {
        let (sh, suite) = (Arc::clone(sh), Arc::clone(suite));
        tokio::spawn(async move { exchange(&sh, &suite).await });
    }
    Ok(new)
}

/// Removes the corp `corpid` of `suite` and every key it has (its
/// permanent code included), if it was registered before `pushed_at`
/// (Unix ms; a replayed old `cancel_auth` never removes a newer
/// authorization). `true` when it was registered and removed.
pub async fn cancel_auth(
    sh: &Shared,
    suite: &WecomSuite,
    corpid: &str,
    pushed_at: Option<u64>,
) -> Result<bool, SuiteError> {
    let keys = suite_keys(sh, suite)?;
    let corp = CredentialKeys::corp(&sh.namespace, &suite.suite_id, corpid)?;
    let mut con = sh.redis.con();
    Ok(sh
        .redis
        .step(registry::remove_corp(&mut con, &corp, &keys, pushed_at))
        .await?)
}

/// `change_auth`: the corp changed what the suite's app may do. Its
/// permanent code stays; its access token is brought forward if it is not
/// stored. `true` when the corp is registered here.
pub async fn change_auth(
    sh: &Shared,
    suite: &WecomSuite,
    corpid: &str,
) -> Result<bool, SuiteError> {
    let corp = CredentialKeys::corp(&sh.namespace, &suite.suite_id, corpid)?;
    let mut con = sh.redis.con();
    let known = sh
        .redis
        .step(wxtoken_schema::index::due_at(
            &mut con,
            &corp,
            Kind::AccessToken,
        ))
        .await?
        .is_some();
    if known {
        let mut con = sh.redis.con();
        if sh
            .redis
            .step(wake_if_missing(&mut con, &corp, Kind::AccessToken))
            .await?
        {
            sh.inbox.due_now(corp.member(Kind::AccessToken));
        }
    }
    Ok(known)
}

/// How often every replica repairs its suites' corps' due-queue entries.
pub const REINDEX_EVERY: Duration = Duration::from_secs(600);

/// Corps re-indexed per round trip.
const REINDEX_PAGE: usize = 500;

/// Looks for pending codes of every held suite, every [`SWEEP_EVERY`], and
/// repairs their corps' due-queue entries every [`REINDEX_EVERY`] (the
/// config's credentials are registered again as often; corps, registered
/// at run time, are not).
pub async fn sweeper(sh: Arc<Shared>) {
    let mut reindexed = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = sh.shutdown.cancelled() => return,
        }
        for suite in sh.registry.suites() {
            exchange(&sh, &suite).await;
        }
        if reindexed.elapsed() >= REINDEX_EVERY {
            reindexed = Instant::now();
            for suite in sh.registry.suites() {
                if let Err(e) = reindex(&sh, &suite).await {
                    tracing::debug!(suite = %suite.id, error = %e, "could not re-index the suite's corps");
                }
            }
        }
    }
}

/// Adds missing due-queue entries of every corp of `suite`, a page at a
/// time.
async fn reindex(sh: &Shared, suite: &WecomSuite) -> Result<(), SuiteError> {
    let keys = suite_keys(sh, suite)?;
    let mut offset = 0;
    loop {
        let mut con = sh.redis.con();
        let n = sh
            .redis
            .step(keys_suite::reindex_corps(
                &mut con,
                &keys,
                &sh.namespace,
                offset,
                REINDEX_PAGE,
            ))
            .await?;
        offset += n;
        if n < REINDEX_PAGE || sh.shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

/// Exchanges the suite's pending codes, if this replica gets the exchange
/// lock (another replica holding it is exchanging them). Best effort:
/// what is left pending is tried again by the [`sweeper`].
pub async fn exchange(sh: &Shared, suite: &WecomSuite) {
    let Ok(keys) = suite_keys(sh, suite) else {
        return;
    };
    let pending = {
        let mut con = sh.redis.con();
        match sh
            .redis
            .step(keys_suite::pending_auth_codes(&mut con, &keys))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(suite = %suite.id, error = %e, "could not read pending auth codes");
                return;
            }
        }
    };
    if pending.is_empty() {
        return;
    }
    let owner = format!("{}#{:016x}", sh.replica, rand::random::<u64>());
    let ttl = sh.refresh.lock_ttl;
    let mut con = sh.redis.con();
    match sh
        .redis
        .step(keys_suite::lock_exchange(&mut con, &keys, &owner, ttl))
        .await
    {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::debug!(suite = %suite.id, error = %e, "could not take the exchange lock");
            return;
        }
    }
    let mut lock = ExchangeLock {
        sh,
        keys: &keys,
        owner: &owner,
        ttl,
    };
    // The pending list was read before the lock: read it again under it
    // (another replica may have exchanged some meanwhile).
    let pending = {
        let mut con = sh.redis.con();
        sh.redis
            .step(keys_suite::pending_auth_codes(&mut con, &keys))
            .await
            .unwrap_or_default()
    };
    for code in &pending {
        match exchange_one(&mut lock, suite, code).await {
            Ok(()) => {}
            Err(why) => {
                tracing::warn!(suite = %suite.id, error = %why, "auth code exchange stopped; retried within {SWEEP_EVERY:?}");
                break;
            }
        }
    }
    let mut con = sh.redis.con();
    if let Err(e) = sh
        .redis
        .step(keys_suite::release_exchange(&mut con, &keys, &owner))
        .await
    {
        tracing::debug!(suite = %suite.id, error = %e, "could not release the exchange lock; it lapses");
    }
}

/// The suite's exchange lock, held by this replica.
struct ExchangeLock<'a> {
    sh: &'a Shared,
    keys: &'a SuiteKeys,
    owner: &'a str,
    ttl: Duration,
}

impl ExchangeLock<'_> {
    /// Extends the lock; `false` when it is no longer ours.
    async fn renew(&self) -> bool {
        let mut con = self.sh.redis.con();
        self.sh
            .redis
            .step(keys_suite::renew_exchange(
                &mut con, self.keys, self.owner, self.ttl,
            ))
            .await
            .unwrap_or(false)
    }

    /// Runs `call`, renewing the lock every third of its TTL.
    async fn renewing<T>(&self, call: impl Future<Output = T>) -> T {
        tokio::pin!(call);
        loop {
            tokio::select! {
                r = &mut call => return r,
                _ = tokio::time::sleep(self.ttl / 3) => {
                    if !self.renew().await {
                        tracing::warn!(suite = self.keys.suite_id(), "lost the exchange lock during get_permanent_code");
                    }
                }
            }
        }
    }
}

/// Why one exchange did not complete (the code stays pending).
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("no suite token stored yet")]
    NoSuiteToken,
    #[error("the exchange lock lapsed before calling WeCom")]
    LockLapsed,
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Wecom(WechatError),
}

/// Exchanges one code on a confirmed lock, registers the corp and marks
/// the code exchanged.
async fn exchange_one(
    lock: &mut ExchangeLock<'_>,
    suite: &WecomSuite,
    code: &PendingCode,
) -> Result<(), ExchangeError> {
    let sh = lock.sh;
    let token_keys = CredentialKeys::suite(&sh.namespace, &suite.suite_id)
        .map_err(|e| RedisError(e.to_string()))?;
    let suite_token = {
        let mut con = sh.redis.con();
        sh.redis
            .step(read_value(&mut con, &token_keys, Kind::SuiteAccessToken))
            .await?
            .ok_or(ExchangeError::NoSuiteToken)?
    };
    if !lock.renew().await {
        return Err(ExchangeError::LockLapsed);
    }
    let started = Instant::now();
    let r = lock
        .renewing(sh.wechat.permanent_code(&suite_token, &code.code))
        .await;
    sh.metrics
        .wechat_call("get_permanent_code", started.elapsed());
    let grant = match r {
        Ok(grant) => grant,
        Err(e) if matches!(e.errcode(), Some(40082 | 42009)) => {
            // The suite token is no longer good: replace it, then retry.
            let mut con = sh.redis.con();
            let _ = sh
                .redis
                .step(wxtoken_schema::request_refresh(
                    &mut con,
                    &token_keys,
                    Kind::SuiteAccessToken,
                    &suite_token,
                    Duration::from_secs(wxtoken_schema::REQUEST_TTL_SECS),
                ))
                .await;
            return Err(ExchangeError::Wecom(e));
        }
        Err(e) if e.errcode().is_some() && e.class(false) != ErrorClass::Quota => {
            // WeCom refused this code (40078: unknown, used or expired): it
            // never works. Spent.
            tracing::warn!(suite = %suite.id, errcode = e.errcode(), error = %e,
                "WeCom refused a create_auth auth code; dropped");
            mark_exchanged(sh, lock.keys, code).await?;
            return Ok(());
        }
        Err(e) => return Err(ExchangeError::Wecom(e)),
    };
    register(sh, suite, lock.keys, &grant).await?;
    mark_exchanged(sh, lock.keys, code).await?;
    Ok(())
}

/// Registers the corp of `grant` with its permanent code, due at once;
/// retried a few times (the code is spent: losing the permanent code
/// loses the corp until it authorizes again).
async fn register(
    sh: &Shared,
    suite: &WecomSuite,
    keys: &SuiteKeys,
    grant: &PermanentGrant,
) -> Result<Authorized, RedisError> {
    let corp = CredentialKeys::corp(&sh.namespace, &suite.suite_id, &grant.corpid)
        .map_err(|e| RedisError(e.to_string()))?;
    let kinds = suite.corp_kinds();
    let mut tries = 0u32;
    loop {
        tries += 1;
        let mut con = sh.redis.con();
        let r = sh
            .redis
            .step(registry::authorize_corp(
                &mut con,
                &corp,
                keys,
                &grant.permanent_code,
                &kinds,
                None,
            ))
            .await;
        match r {
            Ok(done) => {
                tracing::info!(suite = %suite.id, corpid = %grant.corpid, new = done.queued > 0,
                    "corp authorized the suite: permanent code stored, its access token is due");
                sh.inbox.due_now(corp.member(Kind::AccessToken));
                return Ok(done);
            }
            Err(e) if tries < 10 => {
                tracing::warn!(suite = %suite.id, corpid = %grant.corpid, error = %e,
                    "could not store the corp's permanent code; retrying");
                tokio::time::sleep(Duration::from_millis(200) * tries).await;
            }
            Err(e) => {
                tracing::error!(suite = %suite.id, corpid = %grant.corpid, error = %e,
                    "could not store the corp's permanent code; it is lost until the corp authorizes the suite again");
                return Err(e);
            }
        }
    }
}

async fn mark_exchanged(
    sh: &Shared,
    keys: &SuiteKeys,
    code: &PendingCode,
) -> Result<(), RedisError> {
    let mut con = sh.redis.con();
    sh.redis
        .step(keys_suite::auth_code_exchanged(
            &mut con,
            keys,
            &code.digest,
        ))
        .await
}
