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

use crate::config::{Mode, Ticket};
use crate::conn::RedisError;
use crate::policy::{self, Reason, Reissue};
use crate::registry::{Held, Target};
use crate::wechat::{ErrorClass, Fetched, WechatError};
use crate::Shared;
use std::future::Future;
use std::time::{Duration, Instant};
use wxtoken_schema::{
    claim, finish, renew_lock, request_refresh, take_force_budget, token_prefix, write_token,
    Claim, ClaimRules, CredentialKeys, Exchanged, Failure, Kind, TokenWrite, ValueState,
    WriteOutcome, REQUEST_TTL_SECS,
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
    /// A ticket needs the access token (a reconciliation the component
    /// token), which is not in Redis yet.
    #[error("no access token stored yet to fetch it with")]
    NoAccessToken,
    /// A component token needs a `component_verify_ticket`, and none is
    /// stored (never pushed, or more than 12 hours ago).
    #[error("no component_verify_ticket stored (none pushed in the last 12 hours); asked WeChat to push one")]
    NoVerifyTicket,
    /// An authorizer's token needs its platform's component token, which
    /// is not in Redis yet.
    #[error("no component token stored yet")]
    NoComponentToken,
    /// An authorizer has neither a refresh token nor an authorization code
    /// (a reconciliation has been asked for).
    #[error("no authorizer_refresh_token stored; reconciling with api_get_authorizer_list")]
    NoRefreshToken,
    /// A suite token needs a pushed `suite_ticket`, and none is stored
    /// (WeCom pushes one every 10 minutes; each lives 30).
    #[error("no suite_ticket stored (WeCom pushes one every 10 minutes to the suite's callback URL); waiting for a push")]
    NoSuiteTicket,
    /// A suite corp's token needs its suite's token, which is not in
    /// Redis yet.
    #[error("no suite token stored yet")]
    NoSuiteToken,
    /// A suite corp has no permanent code stored (lost: only a new
    /// authorization brings one).
    #[error("no permanent_code stored for this corp; it comes only with a new authorization (create_auth)")]
    NoPermanentCode,
    /// `api_query_auth` answered for another authorizer than asked.
    #[error("api_query_auth answered for another authorizer ({0})")]
    WrongAuthorizer(String),
    /// Today's stable `force_refresh`es of the credential are used up.
    #[error("today's {0} stable force_refresh calls are used up (refresh.force_refresh_per_day)")]
    ForceBudget(u32),
    /// WeChat (or WeCom) handed back the very value that was reported
    /// refused.
    #[error("{}", still_refused(*.wecom))]
    StillRefused {
        /// WeCom, which hands back a token until it expires unless it has
        /// invalidated it.
        wecom: bool,
    },
    /// The lease lapsed before a WeChat call could be made.
    #[error("refresh lock lapsed before calling WeChat")]
    LockLapsed,
}

impl LeaseError {
    /// How the failure is treated.
    pub fn class(&self, kind: Kind) -> ErrorClass {
        match self {
            // A refused refresh token or authorization is fixed by a
            // reconciliation (asked for at once), not by asking again soon.
            LeaseError::Wechat(w) if matches!(w.errcode(), Some(61023 | 61003)) => {
                ErrorClass::Config
            }
            LeaseError::Wechat(w) => w.class(kind.is_ticket()),
            LeaseError::NoRefreshToken
            | LeaseError::WrongAuthorizer(_)
            | LeaseError::NoPermanentCode => ErrorClass::Config,
            _ => ErrorClass::Retryable,
        }
    }

    /// A refusal or failure of WeChat's (or a missing verify ticket or
    /// refresh token, which only WeChat can fix): recorded in the status
    /// hash and subject to the shared backoff (Redis trouble, a missing
    /// access or component token and a lapsed lease are not).
    pub fn is_wechat_failure(&self) -> bool {
        matches!(
            self,
            LeaseError::Wechat(_)
                | LeaseError::StillRefused { .. }
                | LeaseError::ForceBudget(_)
                | LeaseError::NoVerifyTicket
                | LeaseError::NoRefreshToken
                | LeaseError::NoPermanentCode
                | LeaseError::WrongAuthorizer(_)
        )
    }

    /// Waiting for another value to be stored first (not a failure).
    pub fn is_waiting(&self) -> bool {
        matches!(
            self,
            LeaseError::NoAccessToken
                | LeaseError::NoComponentToken
                | LeaseError::NoSuiteTicket
                | LeaseError::NoSuiteToken
        )
    }
}

fn still_refused(wecom: bool) -> &'static str {
    if wecom {
        "WeCom returned the reported value again: it is still valid on WeCom's side (WeCom issues a new one only once it expired or was invalidated)"
    } else {
        "WeChat returned the reported value again (stable force_refresh is limited to 20 a day, 30 s apart)"
    }
}

/// How a lease ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A value was fetched and stored.
    Refreshed {
        /// WeCom handed back the value already stored (its shorter TTL
        /// was stored; not a new value).
        same: bool,
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
    held: &'a Held,
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
    /// The authorization code this lease is exchanging, if any.
    code: Option<String>,
    /// WeChat said the code is used up or expired.
    code_spent: bool,
    /// A refresh token to store with the value (an exchange's, or a
    /// changed one).
    new_refresh_token: Option<String>,
}

impl<'a> Lease<'a> {
    /// Step 1: claims `kind` of `held` if it is due.
    pub async fn claim(
        sh: &'a Shared,
        held: &'a Held,
        kind: Kind,
    ) -> Result<Claimed<'a>, RedisError> {
        let owner = format!("{}#{:016x}", sh.replica, rand::random::<u64>());
        let keys = held.keys.clone();
        let rate = sh.rate_for(held);
        let rules = ClaimRules {
            rate: rate.as_ref(),
            ..sh.claim_rules()
        };
        let sent = Instant::now();
        let mut con = sh.redis.con();
        let answer = sh
            .redis
            .step(claim(&mut con, &keys, kind, &owner, &rules))
            .await?;
        Ok(match answer {
            Claim::Granted { fence, state } => Claimed::Granted(Lease {
                sh,
                held,
                keys,
                kind,
                owner,
                fence,
                state,
                valid_until: sent + sh.refresh.lock_ttl,
                rtt: sent.elapsed(),
                code: None,
                code_spent: false,
                new_refresh_token: None,
            }),
            other => Claimed::Refused(other),
        })
    }

    /// Steps 2–4: decides, calls WeChat if needed, and ends the lease by a
    /// fenced write or a finish. Returns the reason (`None` when no call
    /// was needed) and the outcome.
    pub async fn run(mut self) -> (Option<Reason>, Outcome) {
        let exchange = self.kind == Kind::AccessToken
            && matches!(self.held.target, Target::Authorizer { .. })
            && self.state.authorization_code.is_some();
        let decided = if exchange {
            // A new authorization: its code is single use and its old token
            // is already invalid.
            Ok(Reason::Authorized)
        } else {
            policy::decide(&self.sh.refresh, &self.state)
        };
        let reason = match decided {
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
            Ok(fetched) if self.held.is_wecom() && fetched.expires_in <= 1 => {
                // WeCom announces whole seconds, at least 1: a value it
                // says lives 1 s may live less, and must not be stored for
                // longer than it lives. It expires within moments; the next
                // look, once it has, gets the new one.
                let next = policy::EXPIRY_GRACE * 2;
                tracing::info!(id = self.keys.id(), kind = %self.kind, token = %token_prefix(&fetched.token),
                    "WeCom's value expires within a second; not stored, fetched again once it has expired");
                self.finish(next, None).await;
                Outcome::NotNeeded { next }
            }
            Ok(fetched) => self.store(reason, fetched).await,
            Err(error) => self.failed(error).await,
        };
        (Some(reason), outcome)
    }

    /// Step 3: one WeChat call (two for a stable token WeChat hands back
    /// after it was reported refused; for a reconciliation, one per page),
    /// on a confirmed, renewed lease.
    async fn fetch(&mut self, reason: Reason) -> Result<Fetched, LeaseError> {
        match (&self.held.target, self.kind) {
            (Target::Component(_), Kind::AuthorizerList) => {
                let token = self.state.input.clone().ok_or(LeaseError::NoAccessToken)?;
                self.confirm().await?;
                let sh = self.sh;
                let held = self.held;
                let started_ms = self.state.now_ms;
                self.renewing(crate::authorizer::reconcile(sh, held, token, started_ms))
                    .await
            }
            (Target::Authorizer { .. }, Kind::AccessToken) => self.fetch_authorizer().await,
            (Target::Corp { .. }, Kind::AccessToken) => self.fetch_corp(reason).await,
            _ => self.fetch_value(reason).await,
        }
    }

    /// A credential's access token or ticket, an authorizer's ticket, a
    /// component token.
    async fn fetch_value(&mut self, reason: Reason) -> Result<Fetched, LeaseError> {
        let input = match self.kind {
            Kind::AccessToken => None,
            Kind::ComponentAccessToken => match self.state.input.clone() {
                Some(ticket) => Some(ticket),
                None => {
                    self.confirm().await?;
                    self.ask_for_push().await;
                    return Err(LeaseError::NoVerifyTicket);
                }
            },
            // No pull API: the next push (every 10 minutes) wakes it.
            Kind::SuiteAccessToken => {
                Some(self.state.input.clone().ok_or(LeaseError::NoSuiteTicket)?)
            }
            _ => Some(self.state.input.clone().ok_or(LeaseError::NoAccessToken)?),
        };
        self.confirm().await?;
        let refused = self.state.value.clone().filter(|_| reason.is_passive());
        let mut fetched = self.renewing(self.call(input.as_deref(), false)).await;
        if let (Err(e), Some(token)) = (&fetched, &input) {
            if self.kind.is_ticket() && e.class(self.kind) == ErrorClass::TokenInvalid {
                let (keys, primary) = (self.keys.clone(), Kind::AccessToken);
                self.report(&keys, primary, token).await;
            }
        }
        if let Err(LeaseError::Wechat(e)) = &fetched {
            if self.kind == Kind::ComponentAccessToken && matches!(e.errcode(), Some(61005 | 61006))
            {
                // The ticket expired or is not WeChat's: only a new push helps.
                self.ask_for_push().await;
            }
        }
        let stable = matches!(&self.held.target, Target::App(c) if c.mode == Mode::Stable);
        let handed_back = fetched
            .as_ref()
            .is_ok_and(|f| Some(&f.token) == refused.as_ref());
        if handed_back && self.kind == Kind::AccessToken && stable {
            // Normal mode handed back the refused token: only now is a
            // force_refresh (20 a day) spent, and only on a lease still ours.
            self.take_force_budget().await?;
            tracing::info!(
                id = self.keys.id(),
                "WeChat still hands out the refused stable token; using force_refresh"
            );
            self.confirm().await?;
            fetched = self.renewing(self.call(None, true)).await;
        }
        let fetched = fetched?;
        if Some(&fetched.token) == refused.as_ref() {
            return Err(LeaseError::StillRefused {
                wecom: self.held.is_wecom(),
            });
        }
        Ok(fetched)
    }

    /// The token of the platform or suite this value is fetched under (a
    /// component token, a suite token), as stored now.
    async fn parent_token(
        &self,
        keys: &CredentialKeys,
        kind: Kind,
    ) -> Result<Option<String>, RedisError> {
        let mut con = self.sh.redis.con();
        self.sh
            .redis
            .step(wxtoken_schema::read_value(&mut con, keys, kind))
            .await
    }

    /// An authorizer's access token: the pending authorization code is
    /// exchanged (`api_query_auth`), else the refresh token is used
    /// (`api_authorizer_token`). A refused refresh token (61023) or a lost
    /// authorization (61003) asks for a reconciliation of the platform.
    async fn fetch_authorizer(&mut self) -> Result<Fetched, LeaseError> {
        let Target::Authorizer { component, appid } = &self.held.target else {
            return Err(LeaseError::NoAccessToken);
        };
        let component_keys = CredentialKeys::component(&self.sh.namespace, &component.appid)
            .map_err(|e| RedisError(e.to_string()))?;
        let component_token = self
            .parent_token(&component_keys, Kind::ComponentAccessToken)
            .await?
            .ok_or(LeaseError::NoComponentToken)?;
        let code = self.state.authorization_code.clone();
        let refresh_token = self.state.input.clone();
        if code.is_none() && refresh_token.is_none() {
            crate::authorizer::request_reconcile(self.sh, component).await;
            return Err(LeaseError::NoRefreshToken);
        }
        self.confirm().await?;
        let started = Instant::now();
        let result = match &code {
            Some(code) => {
                self.code = Some(code.clone());
                let r = self
                    .renewing_any(self.sh.wechat.query_auth(
                        &component_token,
                        &component.appid,
                        code,
                    ))
                    .await;
                self.sh
                    .metrics
                    .wechat_call("api_query_auth", started.elapsed());
                match r {
                    Ok(grant) if grant.appid != *appid => {
                        self.code_spent = true;
                        Err(LeaseError::WrongAuthorizer(grant.appid))
                    }
                    Ok(grant) => {
                        self.new_refresh_token = Some(grant.refresh_token);
                        Ok(grant.token)
                    }
                    Err(e) => {
                        // 61009 code invalid or used, 61010 expired: it
                        // will never work.
                        self.code_spent = matches!(e.errcode(), Some(61009 | 61010));
                        Err(LeaseError::Wechat(e))
                    }
                }
            }
            None => {
                let refresh_token = refresh_token.unwrap_or_default();
                let r = self
                    .renewing_any(self.sh.wechat.authorizer_token(
                        &component_token,
                        &component.appid,
                        appid,
                        &refresh_token,
                    ))
                    .await;
                self.sh
                    .metrics
                    .wechat_call("api_authorizer_token", started.elapsed());
                match r {
                    Ok((token, returned)) => {
                        self.new_refresh_token = returned.filter(|r| *r != refresh_token);
                        Ok(token)
                    }
                    Err(e) => Err(LeaseError::Wechat(e)),
                }
            }
        };
        if let Err(LeaseError::Wechat(e)) = &result {
            match e.errcode() {
                Some(61023 | 61003) => {
                    tracing::warn!(id = self.keys.id(), errcode = e.errcode(), "WeChat refused the authorizer's refresh token or authorization; reconciling the platform's authorizers");
                    crate::authorizer::request_reconcile(self.sh, component).await;
                }
                Some(40001 | 40014 | 42001) => {
                    self.report(
                        &component_keys,
                        Kind::ComponentAccessToken,
                        &component_token,
                    )
                    .await;
                }
                _ => {}
            }
        }
        result
    }

    /// A suite corp's access token: `get_corp_token` with the suite token
    /// and the corp's permanent code. A refused suite token (40082, 42009)
    /// is reported for a refresh; a reported token WeCom hands back again
    /// is still valid at WeCom (`StillRefused`, as for WeCom apps).
    async fn fetch_corp(&mut self, reason: Reason) -> Result<Fetched, LeaseError> {
        let Target::Corp { suite, corpid } = &self.held.target else {
            return Err(LeaseError::NoAccessToken);
        };
        let suite_keys = CredentialKeys::suite(&self.sh.namespace, &suite.suite_id)
            .map_err(|e| RedisError(e.to_string()))?;
        let suite_token = self
            .parent_token(&suite_keys, Kind::SuiteAccessToken)
            .await?
            .ok_or(LeaseError::NoSuiteToken)?;
        let permanent_code = self
            .state
            .input
            .clone()
            .ok_or(LeaseError::NoPermanentCode)?;
        self.confirm().await?;
        let started = Instant::now();
        let r = self
            .renewing_any(
                self.sh
                    .wechat
                    .corp_token(&suite_token, corpid, &permanent_code),
            )
            .await;
        self.sh
            .metrics
            .wechat_call("get_corp_token", started.elapsed());
        if let Err(e) = &r {
            if matches!(e.errcode(), Some(40082 | 42009)) {
                self.report(&suite_keys, Kind::SuiteAccessToken, &suite_token)
                    .await;
            }
        }
        let fetched = r?;
        if reason.is_passive() && self.state.value.as_deref() == Some(fetched.token.as_str()) {
            return Err(LeaseError::StillRefused { wecom: true });
        }
        Ok(fetched)
    }

    /// Asks WeChat to push a verify ticket again (once per lease; the
    /// lease's backoff spaces these out).
    async fn ask_for_push(&self) {
        let Target::Component(c) = &self.held.target else {
            return;
        };
        let started = Instant::now();
        let r = self.sh.wechat.start_push_ticket(&c.appid, &c.secret).await;
        self.sh
            .metrics
            .wechat_call("api_start_push_ticket", started.elapsed());
        match r {
            Ok(()) => {
                tracing::info!(component = %c.id, "asked WeChat to push a component_verify_ticket (api_start_push_ticket)")
            }
            Err(e) => tracing::warn!(component = %c.id, error = %e, "api_start_push_ticket failed"),
        }
    }

    /// Step 4a: the fenced write, retried while the lease is valid.
    async fn store(self, reason: Reason, fetched: Fetched) -> Outcome {
        let remaining = fetched.remaining();
        let wecom = self.held.is_wecom();
        // WeCom hands back the value it issued until it expires, with what
        // is left of it: stored again (with that shorter TTL), but not a
        // new value, and its lifetime stays the one announced at issue.
        let same = wecom && self.state.value.as_deref() == Some(fetched.token.as_str());
        let expires_in = match self.state.expires_in {
            Some(lifetime) if same => lifetime.max(fetched.expires_in),
            _ => fetched.expires_in,
        };
        let reissue = if wecom {
            Reissue::SameUntilExpiry
        } else {
            Reissue::New
        };
        let next_due = policy::next_due(
            &self.sh.refresh,
            remaining,
            expires_in,
            rand::random::<f64>(),
            reissue,
        );
        if !wecom
            && remaining
                <= self
                    .sh
                    .refresh
                    .margin_for(Duration::from_secs(fetched.expires_in))
        {
            tracing::warn!(id = self.keys.id(), kind = %self.kind, ?remaining, "WeChat returned a value that is already within the refresh margin");
        }
        let keys = &self.keys;
        let tickets: Vec<Kind> = self.held.kinds().into_iter().skip(1).collect();
        let refresh_token = self.new_refresh_token.as_deref();
        let code_used = self.code.as_deref();
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
                    expires_in,
                    replica: &self.sh.replica,
                    next_due,
                    tickets: &tickets,
                    refresh_token,
                    code_used,
                };
                async move { write_token(&mut con, keys, &write).await }
            })
            .await;
        match written {
            Ok(WriteOutcome::Written {
                tickets_due,
                expires_at_ms,
            }) => {
                if same {
                    tracing::info!(
                        id = self.keys.id(),
                        kind = %self.kind,
                        token = %token_prefix(&fetched.token),
                        expires_in = fetched.expires_in,
                        fence = self.fence,
                        reason = reason.as_str(),
                        next_due_s = next_due.as_secs(),
                        "WeCom returned the same token; stored its remaining time, next look just after it expires"
                    );
                } else {
                    tracing::info!(
                        id = self.keys.id(),
                        kind = %self.kind,
                        token = %token_prefix(&fetched.token),
                        expires_in = fetched.expires_in,
                        fence = self.fence,
                        reason = reason.as_str(),
                        "stored new value"
                    );
                }
                Outcome::Refreshed {
                    same,
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
            e if e.is_waiting() => self.sh.refresh.retry_max,
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
        let exchanged = self.code.as_deref().map(|code| Exchanged {
            code,
            spent: self.code_spent,
        });
        let r = self
            .retrying("release the lock", |mut con| async move {
                finish(&mut con, keys, kind, owner, delay, failure, exchanged).await
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
        F: Fn(wxtoken_connect::Con) -> Fut,
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
    async fn renewing<E: Into<LeaseError>>(
        &mut self,
        call: impl Future<Output = Result<Fetched, E>>,
    ) -> Result<Fetched, LeaseError> {
        self.renewing_any(call).await.map_err(Into::into)
    }

    /// [`Lease::renewing`] for any answer.
    async fn renewing_any<T>(&mut self, call: impl Future<Output = T>) -> T {
        tokio::pin!(call);
        loop {
            tokio::select! {
                r = &mut call => return r,
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

    /// One WeChat call for the value, with `input` (the access token of a
    /// ticket, the verify ticket of a component token); `force` only for
    /// stable tokens.
    fn call(
        &self,
        input: Option<&str>,
        force: bool,
    ) -> impl Future<Output = Result<Fetched, WechatError>> + 'a {
        let (sh, held, kind) = (self.sh, self.held, self.kind);
        let input = input.map(str::to_owned).unwrap_or_default();
        async move {
            let started = Instant::now();
            let (endpoint, result) = match (&held.target, kind) {
                (Target::App(cred), Kind::AccessToken) if cred.is_wecom() => (
                    "wecom_gettoken",
                    sh.wechat.wecom_token(&cred.appid, &cred.secret).await,
                ),
                (Target::App(cred), Kind::JsapiTicket) if cred.is_wecom() => (
                    "wecom_get_jsapi_ticket",
                    sh.wechat.wecom_corp_ticket(&input).await,
                ),
                (Target::App(cred), Kind::AgentConfigTicket) if cred.is_wecom() => (
                    "wecom_agent_config_ticket",
                    sh.wechat.wecom_agent_ticket(&input).await,
                ),
                (Target::App(cred), Kind::AccessToken) => match cred.mode {
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
                (Target::Suite(s), _) => (
                    "get_suite_token",
                    sh.wechat.suite_token(&s.suite_id, &s.secret, &input).await,
                ),
                (Target::Corp { .. }, Kind::AgentConfigTicket) => (
                    "wecom_agent_config_ticket",
                    sh.wechat.wecom_agent_ticket(&input).await,
                ),
                (Target::Corp { .. }, _) => (
                    "wecom_get_jsapi_ticket",
                    sh.wechat.wecom_corp_ticket(&input).await,
                ),
                (Target::Component(c), _) => (
                    "api_component_token",
                    sh.wechat.component_token(&c.appid, &c.secret, &input).await,
                ),
                (_, kind) => {
                    let ticket = if kind == Kind::WxCardTicket {
                        Ticket::WxCard
                    } else {
                        Ticket::Jsapi
                    };
                    (
                        "ticket",
                        sh.wechat.ticket(&input, ticket.wechat_type()).await,
                    )
                }
            };
            sh.metrics.wechat_call(endpoint, started.elapsed());
            result
        }
    }

    /// WeChat refused the token a call was made with (`kind` of `keys`):
    /// ask for it to be replaced (compare-and-request, so concurrent reports
    /// cost one refresh).
    async fn report(&self, keys: &CredentialKeys, kind: Kind, token: &str) {
        let mut con = self.sh.redis.con();
        let r = self
            .sh
            .redis
            .step(request_refresh(
                &mut con,
                keys,
                kind,
                token,
                Duration::from_secs(REQUEST_TTL_SECS),
            ))
            .await;
        match r {
            Ok(outcome) => {
                tracing::warn!(id = keys.id(), %kind, token = %token_prefix(token), ?outcome,
                "WeChat refused the token a call was made with; requested its refresh")
            }
            Err(e) => {
                tracing::warn!(id = self.keys.id(), error = %e, "could not request an access token refresh")
            }
        }
    }
}
