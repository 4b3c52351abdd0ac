//! The refresh protocol for one value, top to bottom:
//!
//! 1. **claim** (one script): the value must be queued and due, its lock
//!    free, the credential not paused or backing off, and the shared call
//!    rate must allow a call; then the lock is taken with a new fence and
//!    what Redis holds is read — atomically, so the re-check under the lock
//!    cannot race a write.
//! 2. **decide** (`policy`): is a WeChat call still needed, and why?
//! 3. **confirm** the lease right before the call, then **call** WeChat
//!    while renewing the lease every third of its TTL.
//! 4. **write** under the fence (which also releases the lock, queues the
//!    next refresh and publishes the update event), or **finish** without a
//!    write (release, queue the next look, record a failure).
//!
//! Once WeChat has answered, storing the answer is the most important thing
//! this replica does: a write that fails because Redis is slow or briefly
//! gone is retried for as long as the lease is valid (the fence keeps a late
//! write harmless). Ending a lease is retried the same way, so a lock is not
//! left to lapse by its TTL because one release timed out. No Redis
//! connection is held while WeChat is called. A lease decides nothing about
//! *when* to refresh: that is `policy`, and `scheduler` picks what to claim.

use crate::config::{Credential, Mode, Ticket};
use crate::conn::RedisError;
use crate::policy::{self, Reason};
use crate::wechat::{ErrorClass, Fetched, WechatError};
use crate::Shared;
use std::future::Future;
use std::time::{Duration, Instant};
use wxtoken_schema::{
    claim, finish, renew_lock, request_refresh, take_force_budget, token_prefix, write_token,
    Claim, CredentialKeys, Failure, Kind, TokenWrite, ValueState, WriteOutcome, REQUEST_TTL_SECS,
};

/// Why a lease ended without storing a value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaseError {
    /// Redis was unreachable or failed.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// WeChat refused or failed.
    #[error(transparent)]
    Wechat(#[from] WechatError),
    /// A ticket needs the access token, which is not in Redis yet.
    #[error("no access token stored yet to fetch the ticket with")]
    NoAccessToken,
    /// Today's stable `force_refresh`es of the credential are used up.
    #[error("today's {0} stable force_refresh calls are used up (refresh.force_refresh_per_day)")]
    ForceBudget(u32),
    /// WeChat handed back the very value that was reported refused.
    #[error("WeChat returned the reported value again (stable force_refresh is limited to 20 a day, 30 s apart)")]
    StillRefused,
    /// The lease lapsed before a WeChat call could be made.
    #[error("refresh lock lapsed before calling WeChat")]
    LockLapsed,
}

impl LeaseError {
    /// How the failure is treated.
    pub fn class(&self, kind: Kind) -> ErrorClass {
        match self {
            LeaseError::Wechat(w) => w.class(kind != Kind::AccessToken),
            _ => ErrorClass::Retryable,
        }
    }

    /// A refusal or failure of WeChat's: recorded in the status hash and
    /// subject to the shared backoff (Redis trouble, a missing access token
    /// and a lapsed lease are not).
    pub fn is_wechat_failure(&self) -> bool {
        matches!(
            self,
            LeaseError::Wechat(_) | LeaseError::StillRefused | LeaseError::ForceBudget(_)
        )
    }
}

/// How a lease ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A new value was fetched and stored.
    Refreshed {
        /// When it is due again, from now.
        next_due: Duration,
        /// The credential's tickets that were waiting for this access token.
        tickets_due: Vec<Kind>,
        /// When the stored value expires, Unix ms (Redis clock).
        expires_at_ms: u64,
    },
    /// Under the lock, no call was needed; looked at again after `next`.
    NotNeeded {
        /// When the value is due, from now.
        next: Duration,
    },
    /// The fetched value was not stored: the lock was lost or a newer fence
    /// wrote first. Redis keeps the newer value.
    Rejected,
    /// No value was stored; every replica waits `retry_in` (for WeChat
    /// failures, shared through Redis).
    Failed {
        /// What went wrong.
        error: LeaseError,
        /// When the value is looked at again, from now.
        retry_in: Duration,
    },
}

/// What a claim found.
pub enum Claimed<'a> {
    /// The lease is ours.
    Granted(Lease<'a>),
    /// Not granted: the queue's answer (not due, busy, held, rate-limited,
    /// unregistered).
    Refused(Claim),
}

/// A granted lease on one value: the lock, its fence and what Redis held
/// when it was granted.
pub struct Lease<'a> {
    sh: &'a Shared,
    cred: &'a Credential,
    keys: CredentialKeys,
    kind: Kind,
    owner: String,
    fence: u64,
    state: ValueState,
    /// The latest instant the lease can still be ours (local clock: the
    /// TTL counted from before the claim or last renewal was sent).
    valid_until: Instant,
    /// The claim's round trip: a write's TTL leaves it out, so the stored
    /// TTL never outlasts the real expiry.
    rtt: Duration,
}

impl<'a> Lease<'a> {
    /// Step 1: claims `kind` of `cred` if it is due.
    pub async fn claim(
        sh: &'a Shared,
        cred: &'a Credential,
        keys: CredentialKeys,
        kind: Kind,
    ) -> Result<Claimed<'a>, RedisError> {
        let owner = format!("{}#{:016x}", sh.replica, rand::random::<u64>());
        let sent = Instant::now();
        let mut con = sh.redis.con();
        let answer = sh
            .redis
            .step(claim(&mut con, &keys, kind, &owner, &sh.claim_rules()))
            .await?;
        Ok(match answer {
            Claim::Granted { fence, state } => Claimed::Granted(Lease {
                sh,
                cred,
                keys,
                kind,
                owner,
                fence,
                state,
                valid_until: sent + sh.refresh.lock_ttl,
                rtt: sent.elapsed(),
            }),
            other => Claimed::Refused(other),
        })
    }

    /// Steps 2–4: decides, calls WeChat if needed, and ends the lease by a
    /// fenced write or a finish. Returns the reason (`None` when no call
    /// was needed) and the outcome.
    pub async fn run(mut self) -> (Option<Reason>, Outcome) {
        let reason = match policy::decide(&self.sh.refresh, &self.state) {
            Ok(reason) => reason,
            Err(next) => {
                self.finish(next, None).await;
                return (None, Outcome::NotNeeded { next });
            }
        };
        let late = self.state.now_ms.saturating_sub(self.state.due_at_ms);
        self.sh.metrics.lateness.observe(late as f64 / 1000.0);
        tracing::debug!(id = self.keys.id(), kind = %self.kind, reason = reason.as_str(), late_ms = late, "claimed");
        let outcome = match self.fetch(reason).await {
            Ok(fetched) => self.store(reason, fetched).await,
            Err(error) => self.failed(error).await,
        };
        (Some(reason), outcome)
    }

    /// Step 3: one WeChat call (two for a stable token WeChat hands back
    /// after it was reported refused), on a confirmed, renewed lease.
    async fn fetch(&mut self, reason: Reason) -> Result<Fetched, LeaseError> {
        let access_token = match self.kind {
            Kind::AccessToken => None,
            _ => Some(
                self.state
                    .access_token
                    .clone()
                    .ok_or(LeaseError::NoAccessToken)?,
            ),
        };
        self.confirm().await?;
        let refused = self.state.value.clone().filter(|_| reason.is_passive());
        let mut fetched = self
            .renewing(self.call(access_token.as_deref(), false))
            .await;
        if let (Err(e), Some(token)) = (&fetched, &access_token) {
            if e.class(self.kind) == ErrorClass::TokenInvalid {
                self.report_access_token(token).await;
            }
        }
        let handed_back = fetched
            .as_ref()
            .is_ok_and(|f| Some(&f.token) == refused.as_ref());
        if handed_back && self.kind == Kind::AccessToken && self.cred.mode == Mode::Stable {
            // Normal mode handed back the refused token: only now is a
            // force_refresh (20 a day) spent, and only on a lease still ours.
            self.take_force_budget().await?;
            tracing::info!(id = %self.cred.id, "WeChat still hands out the refused stable token; using force_refresh");
            self.confirm().await?;
            fetched = self.renewing(self.call(None, true)).await;
        }
        let fetched = fetched?;
        if Some(&fetched.token) == refused.as_ref() {
            return Err(LeaseError::StillRefused);
        }
        Ok(fetched)
    }

    /// Step 4a: the fenced write, retried while the lease is valid.
    async fn store(self, reason: Reason, fetched: Fetched) -> Outcome {
        let remaining = fetched.remaining();
        let next_due = policy::next_due(
            &self.sh.refresh,
            remaining,
            fetched.expires_in,
            rand::random::<f64>(),
        );
        if remaining
            <= self
                .sh
                .refresh
                .margin_for(Duration::from_secs(fetched.expires_in))
        {
            tracing::warn!(id = self.keys.id(), kind = %self.kind, ?remaining, "WeChat returned a value that is already within the refresh margin");
        }
        let keys = &self.keys;
        let tickets: Vec<Kind> = self.cred.tickets.iter().map(|t| t.kind()).collect();
        let written = self
            .retrying("store the fetched value", |mut con| {
                // Time left as the write is sent (a retry stores less), less
                // one round trip: the TTL counts from when Redis runs it.
                let write = TokenWrite {
                    kind: self.kind,
                    owner: &self.owner,
                    fence: self.fence,
                    token: &fetched.token,
                    ttl: fetched.remaining().saturating_sub(self.rtt),
                    expires_in: fetched.expires_in,
                    replica: &self.sh.replica,
                    next_due,
                    tickets: &tickets,
                };
                async move { write_token(&mut con, keys, &write).await }
            })
            .await;
        match written {
            Ok(WriteOutcome::Written {
                tickets_due,
                expires_at_ms,
            }) => {
                tracing::info!(
                    id = self.keys.id(),
                    kind = %self.kind,
                    token = %token_prefix(&fetched.token),
                    expires_in = fetched.expires_in,
                    fence = self.fence,
                    reason = reason.as_str(),
                    "stored new value"
                );
                Outcome::Refreshed {
                    next_due,
                    tickets_due,
                    expires_at_ms,
                }
            }
            Ok(rejected) => {
                tracing::warn!(
                    id = self.keys.id(),
                    kind = %self.kind,
                    token = %token_prefix(&fetched.token),
                    fence = self.fence,
                    outcome = ?rejected,
                    "fenced write rejected; Redis keeps the newer value"
                );
                Outcome::Rejected
            }
            Err(e) => {
                tracing::error!(
                    id = self.keys.id(),
                    kind = %self.kind,
                    token = %token_prefix(&fetched.token),
                    error = %e,
                    "could not store the fetched value while the lease lasted; it is lost"
                );
                Outcome::Failed {
                    error: e.into(),
                    retry_in: self.sh.refresh.retry_initial,
                }
            }
        }
    }

    /// Step 4b: a failure. WeChat's are recorded for every replica (one
    /// more consecutive failure, the shared wait) as the lease ends.
    async fn failed(self, error: LeaseError) -> Outcome {
        let class = error.class(self.kind);
        let retry_in = match &error {
            e if e.is_wechat_failure() => policy::retry_after(
                &self.sh.refresh,
                class,
                self.state.failures.saturating_add(1),
                rand::random::<f64>(),
            ),
            // Writing the access token brings the ticket forward; this is
            // only the fallback should that write be missed.
            LeaseError::NoAccessToken => self.sh.refresh.retry_max,
            _ => self.sh.refresh.retry_initial,
        };
        if matches!(error, LeaseError::LockLapsed) {
            // The lease is gone: the queue entry sits at its expiry.
            return Outcome::Failed { error, retry_in };
        }
        let message = format!("{}: {error}", self.kind);
        let errcode = match &error {
            LeaseError::Wechat(w) => w.errcode(),
            _ => None,
        };
        let failure = Failure {
            message: &message,
            errcode,
            paused: class == ErrorClass::Quota,
            replica: &self.sh.replica,
        };
        self.finish(retry_in, error.is_wechat_failure().then_some(&failure))
            .await;
        Outcome::Failed { error, retry_in }
    }

    /// Ends the lease without a write: next look after `delay`.
    async fn finish(&self, delay: Duration, failure: Option<&Failure<'_>>) {
        let (keys, kind, owner) = (&self.keys, self.kind, self.owner.as_str());
        let r = self
            .retrying("release the lock", |mut con| async move {
                finish(&mut con, keys, kind, owner, delay, failure).await
            })
            .await;
        match r {
            Ok(true) => {}
            Ok(false) => tracing::debug!(id = keys.id(), %kind, "lease had lapsed before it ended"),
            Err(e) => {
                tracing::warn!(id = keys.id(), %kind, error = %e, "could not end the lease; the lock lapses by its TTL")
            }
        }
    }

    /// Runs one Redis step, retrying failures with a short backoff for as
    /// long as the lease is valid.
    async fn retrying<T, F, Fut>(&self, what: &str, step: F) -> Result<T, RedisError>
    where
        F: Fn(redis::aio::ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let mut tries = 0u32;
        loop {
            tries += 1;
            match self.sh.redis.step(step(self.sh.redis.con())).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let wait = policy::backoff(
                        Duration::from_millis(50),
                        Duration::from_millis(500),
                        tries,
                        rand::random::<f64>(),
                    );
                    if Instant::now() + wait >= self.valid_until {
                        return Err(e);
                    }
                    tracing::debug!(id = self.keys.id(), kind = %self.kind, error = %e, "could not {what}; retrying while the lease lasts");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Takes one of today's stable `force_refresh`es (shared by all
    /// replicas through the status hash).
    async fn take_force_budget(&self) -> Result<(), LeaseError> {
        let per_day = self.sh.refresh.force_refresh_per_day;
        let mut con = self.sh.redis.con();
        let left = self
            .sh
            .redis
            .step(take_force_budget(&mut con, &self.keys, per_day))
            .await?;
        if left {
            Ok(())
        } else {
            Err(LeaseError::ForceBudget(per_day))
        }
    }

    /// Extends the lease; `LockLapsed` if it is no longer ours. Called right
    /// before each WeChat call, so a replica that stalled after its claim
    /// does not call WeChat on a lock another replica may hold by now.
    async fn confirm(&mut self) -> Result<(), LeaseError> {
        if self.renew().await? {
            Ok(())
        } else {
            Err(LeaseError::LockLapsed)
        }
    }

    async fn renew(&mut self) -> Result<bool, RedisError> {
        let sent = Instant::now();
        let mut con = self.sh.redis.con();
        let held = self
            .sh
            .redis
            .step(renew_lock(
                &mut con,
                &self.keys,
                self.kind,
                &self.owner,
                self.sh.refresh.lock_ttl,
            ))
            .await?;
        if held {
            self.valid_until = sent + self.sh.refresh.lock_ttl;
        }
        Ok(held)
    }

    /// Runs `call`, renewing the lease every third of its TTL.
    async fn renewing(
        &mut self,
        call: impl Future<Output = Result<Fetched, WechatError>>,
    ) -> Result<Fetched, LeaseError> {
        tokio::pin!(call);
        loop {
            tokio::select! {
                r = &mut call => return Ok(r?),
                _ = tokio::time::sleep(self.sh.refresh.lock_ttl / 3) => {
                    match self.renew().await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(id = self.keys.id(), kind = %self.kind, "lost the refresh lock during the WeChat call; the write will be fenced off"),
                        Err(e) => tracing::warn!(id = self.keys.id(), kind = %self.kind, error = %e, "could not renew the refresh lock"),
                    }
                }
            }
        }
    }

    /// One WeChat call for the value (`force` only for stable tokens).
    fn call(
        &self,
        access_token: Option<&str>,
        force: bool,
    ) -> impl Future<Output = Result<Fetched, WechatError>> + 'a {
        let (sh, cred, kind) = (self.sh, self.cred, self.kind);
        let access_token = access_token.map(str::to_owned);
        async move {
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
                            .ticket(access_token.as_deref().unwrap_or(""), ticket.wechat_type())
                            .await,
                    )
                }
            };
            sh.metrics.wechat_call(endpoint, started.elapsed());
            result
        }
    }

    /// A ticket call said the access token is invalid: ask for it to be
    /// replaced (compare-and-request, so concurrent reports cost one refresh).
    async fn report_access_token(&self, token: &str) {
        let mut con = self.sh.redis.con();
        let r = self
            .sh
            .redis
            .step(request_refresh(
                &mut con,
                &self.keys,
                Kind::AccessToken,
                token,
                Duration::from_secs(REQUEST_TTL_SECS),
            ))
            .await;
        match r {
            Ok(outcome) => {
                tracing::warn!(id = self.keys.id(), token = %token_prefix(token), ?outcome,
                "WeChat refused the access token for a ticket call; requested its refresh")
            }
            Err(e) => {
                tracing::warn!(id = self.keys.id(), error = %e, "could not request an access token refresh")
            }
        }
    }
}
