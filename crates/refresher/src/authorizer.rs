//! A third-party platform's authorizers (授权方): accounts that authorized
//! the platform, refreshed like every other value but registered at run
//! time, not from the config.
//!
//! - [`authorized`]: an `authorized`/`updateauthorized` push (or an
//!   operator) brings an authorization code. It is stored in Redis, under
//!   the authorizer, with the authorizer registered and due at once; the
//!   replica that claims the authorizer's access token exchanges the code
//!   (`api_query_auth`, single use) under the lease, so exactly one replica
//!   ever spends it, and the refresh token it returns is stored durably
//!   with the token.
//! - [`unauthorized`]: an `unauthorized` push removes the authorizer and
//!   every key it has.
//! - [`reconcile`]: the platform's `authorizer_list` value. Under its lease,
//!   pages through `api_get_authorizer_list` (WeChat holds every refresh
//!   token): missing authorizers are registered, stale refresh tokens
//!   replaced, and authorizers WeChat no longer lists removed (only those
//!   authorized before the reconciliation began). Runs when the platform is
//!   first registered (first start, Redis lost its data), every
//!   `reconcile_interval`, and when an authorizer's refresh token is
//!   refused (61023) or missing ([`request_reconcile`]).
//!
//! Refresh tokens and codes never appear in logs, metrics or key names.

use crate::config::Component;
use crate::conn::RedisError;
use crate::lease::LeaseError;
use crate::registry::{Held, Target};
use crate::wechat::{Fetched, ListPage, LIST_PAGE};
use crate::Shared;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use wxtoken_schema::registry::{self, Authorization, Authorized};
use wxtoken_schema::{force_refresh, ComponentKeys, CredentialKeys, Kind, REQUEST_TTL_SECS};

/// Authorizers read from the index per round trip while reconciling.
const INDEX_PAGE: usize = 1000;

/// Most authorizers a reconciliation lists (WeChat's answer is untrusted:
/// a `total_count` that never ends, or pages that repeat, stop here).
const MAX_LISTED: u64 = 1_000_000;

/// Records an authorization code for `appid` of `component` (from a push
/// that WeChat says happened at `pushed_at`, Unix ms) and registers the
/// authorizer, due at once — unless the authorizer was registered after
/// `pushed_at` and has a refresh token (a replayed or late push: `stale`).
pub async fn authorized(
    sh: &Shared,
    component: &Component,
    appid: &str,
    code: &str,
    code_ttl: Duration,
    pushed_at: Option<u64>,
) -> Result<Authorized, RedisError> {
    let (keys, index) = keys_of(sh, &component.appid, appid)?;
    let kinds = component.authorizer_kinds();
    let a = Authorization {
        code: Some((code, code_ttl)),
        refresh_token: None,
        kinds: &kinds,
        new: true,
    };
    let mut con = sh.redis.con();
    let r = sh
        .redis
        .step(registry::authorize_pushed(
            &mut con, &keys, &index, &a, pushed_at,
        ))
        .await?;
    if !r.stale {
        sh.inbox.due_now(keys.member(Kind::AccessToken));
    }
    Ok(r)
}

/// Removes `appid` of `component` and every key it has, if it was
/// authorized before `pushed_at` (Unix ms, when WeChat says it left; a
/// replayed old `unauthorized` must not remove a newer authorization).
/// `true` if it was registered and removed.
pub async fn unauthorized(
    sh: &Shared,
    component_appid: &str,
    appid: &str,
    pushed_at: Option<u64>,
) -> Result<bool, RedisError> {
    let (keys, index) = keys_of(sh, component_appid, appid)?;
    let mut con = sh.redis.con();
    sh.redis
        .step(registry::remove_authorizer(
            &mut con, &keys, &index, pushed_at,
        ))
        .await
}

/// Asks for a reconciliation of `component` now, unless one completed
/// within the last ten `refresh.min_interval`s (10 minutes by default): a
/// refresh token WeChat keeps refusing must not turn into a full listing
/// (200 calls for 100,000 authorizers) every few seconds. At most one runs
/// at a time (it is a locked value), and asks while one runs cost nothing
/// more. Best effort: logged on failure.
pub async fn request_reconcile(sh: &Shared, component: &Component) {
    let Ok(keys) = CredentialKeys::component(&sh.namespace, &component.appid) else {
        return;
    };
    let floor = sh.refresh.min_interval.saturating_mul(10);
    let mut con = sh.redis.con();
    let left = sh
        .redis
        .step(
            redis::cmd("PTTL")
                .arg(keys.value(Kind::AuthorizerList))
                .query_async::<i64>(&mut con),
        )
        .await;
    if let Ok(left) = left {
        let since = u64::try_from(left).ok().map(|left| {
            component
                .reconcile_interval
                .saturating_sub(Duration::from_millis(left))
        });
        if since.is_some_and(|since| since < floor) {
            tracing::debug!(component = %component.id, "reconciled recently; not again yet");
            return;
        }
    }
    let mut con = sh.redis.con();
    let r = sh
        .redis
        .step(force_refresh(
            &mut con,
            &keys,
            Kind::AuthorizerList,
            Duration::from_secs(REQUEST_TTL_SECS),
        ))
        .await;
    if let Err(e) = r {
        tracing::warn!(component = %component.id, error = %e, "could not ask for a reconciliation of the authorizers");
    }
}

fn keys_of(
    sh: &Shared,
    component_appid: &str,
    appid: &str,
) -> Result<(CredentialKeys, ComponentKeys), RedisError> {
    let keys = CredentialKeys::authorizer(&sh.namespace, component_appid, appid)
        .map_err(|e| RedisError(e.to_string()))?;
    let index = ComponentKeys::new(&sh.namespace, component_appid)
        .map_err(|e| RedisError(e.to_string()))?;
    Ok((keys, index))
}

/// What a reconciliation found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Authorizers WeChat listed.
    pub listed: u64,
    /// Of those, newly registered here.
    pub added: u64,
    /// Of those, whose stored refresh token was missing or stale.
    pub updated: u64,
    /// Registered authorizers WeChat no longer lists, removed.
    pub removed: u64,
}

impl Summary {
    /// The stored value: `listed=…,added=…,updated=…,removed=…`.
    pub fn text(&self) -> String {
        format!(
            "listed={},added={},updated={},removed={}",
            self.listed, self.added, self.updated, self.removed
        )
    }
}

/// The reconciliation of `held` (a platform), run under its lease with the
/// component token: see the module docs. Pages are paced at the platform's
/// call rate. An incomplete listing (fewer entries than WeChat's total)
/// removes nothing. The returned value is the summary, living
/// `reconcile_interval`.
pub async fn reconcile(
    sh: &Shared,
    held: &Held,
    component_token: String,
    started_ms: u64,
) -> Result<Fetched, LeaseError> {
    let Target::Component(component) = &held.target else {
        return Err(LeaseError::NoAccessToken);
    };
    let index = ComponentKeys::new(&sh.namespace, &component.appid)
        .map_err(|e| RedisError(e.to_string()))?;
    let kinds = component.authorizer_kinds();
    let pace = (component.calls_per_second > 0.0)
        .then(|| Duration::from_secs_f64(1.0 / component.calls_per_second));
    let mut summary = Summary::default();
    let mut listed: HashSet<String> = HashSet::new();
    let mut offset = 0u64;
    let mut total;
    loop {
        let started = Instant::now();
        let ListPage {
            total: t,
            covered,
            entries: page,
        } = sh
            .wechat
            .authorizer_list(&component_token, &component.appid, offset, LIST_PAGE)
            .await?;
        sh.metrics
            .wechat_call("api_get_authorizer_list", started.elapsed());
        total = t;
        if covered == 0 {
            break;
        }
        // Malformed entries are skipped, but the next page starts after them.
        offset += covered;
        let before = listed.len();
        let mut items = Vec::with_capacity(page.len());
        for entry in &page {
            if !listed.insert(entry.appid.clone()) {
                continue;
            }
            let Ok(keys) =
                CredentialKeys::authorizer(&sh.namespace, &component.appid, &entry.appid)
            else {
                continue;
            };
            items.push((
                keys,
                Authorization {
                    code: None,
                    refresh_token: Some(&entry.refresh_token),
                    kinds: &kinds,
                    new: false,
                },
            ));
        }
        let mut con = sh.redis.con();
        let answers = sh
            .redis
            .step(registry::authorize_many(&mut con, &index, &items))
            .await?;
        for a in answers {
            if a.queued > 0 {
                summary.added += 1;
            } else if a.refresh_token_replaced {
                summary.updated += 1;
            }
        }
        if offset >= total {
            break;
        }
        if listed.len() == before || offset >= MAX_LISTED {
            // A page with nothing new, or more than any platform has: the
            // listing cannot be trusted to be complete, so it removes nothing.
            tracing::warn!(component = %component.id, offset, total,
                "api_get_authorizer_list repeats itself or never ends; stopped listing");
            total = u64::MAX;
            break;
        }
        if let Some(pace) = pace {
            tokio::time::sleep(pace.saturating_sub(started.elapsed())).await;
        }
    }
    summary.listed = listed.len() as u64;
    if summary.listed >= total {
        summary.removed = remove_unlisted(sh, &index, &listed, started_ms).await?;
    } else {
        tracing::warn!(component = %component.id, listed = summary.listed, total,
            "WeChat listed fewer authorizers than its total; none removed this time");
    }
    if summary.added > 0 || summary.updated > 0 {
        sh.inbox.rescan();
    }
    tracing::info!(component = %component.id, listed = summary.listed, added = summary.added,
        updated = summary.updated, removed = summary.removed, "reconciled the authorizers with api_get_authorizer_list");
    sh.metrics.reconciliations.inc();
    Ok(Fetched {
        token: summary.text(),
        expires_in: component.reconcile_interval.as_secs().max(60),
        sent_at: Instant::now(),
    })
}

/// Whether removing `unlisted` of `registered` authorizers at once is more
/// than a reconciliation may do by itself: more than 10 and more than a
/// tenth of them.
fn too_many_to_remove(unlisted: u64, registered: u64) -> bool {
    unlisted > 10 && unlisted * 10 > registered
}

/// Removes the platform's registered authorizers that are not in `listed`
/// and were authorized before `started_ms`. Returns how many.
async fn remove_unlisted(
    sh: &Shared,
    index: &ComponentKeys,
    listed: &HashSet<String>,
    started_ms: u64,
) -> Result<u64, RedisError> {
    let mut gone = Vec::new();
    let mut offset = 0;
    let mut registered = 0u64;
    loop {
        let mut con = sh.redis.con();
        let (covered, page) = sh
            .redis
            .step(registry::authorizers_page(
                &mut con, index, offset, INDEX_PAGE,
            ))
            .await?;
        offset += INDEX_PAGE;
        registered += page.len() as u64;
        // Members that are not appids were left out of the page: only a
        // short read of the index is its end.
        let last = covered < INDEX_PAGE;
        gone.extend(
            page.into_iter()
                .filter(|(appid, at)| *at < started_ms && !listed.contains(appid))
                .map(|(appid, _)| appid),
        );
        if last {
            break;
        }
    }
    // WeChat's list is the truth, but a wrong one (an outage answering an
    // empty or short list) must not wipe the durable state of many
    // accounts: a large removal waits for an operator.
    if too_many_to_remove(gone.len() as u64, registered) {
        tracing::error!(component = index.appid(), unlisted = gone.len(), registered,
            "WeChat's authorizer list leaves out more than a tenth of the registered authorizers; none removed. If they really left, remove them with `wxtoken authorizers remove`");
        return Ok(0);
    }
    let mut removed = 0;
    for appid in gone {
        let Ok(keys) = CredentialKeys::authorizer(&sh.namespace, index.appid(), &appid) else {
            continue;
        };
        let mut con = sh.redis.con();
        if sh
            .redis
            .step(registry::remove_authorizer(
                &mut con,
                &keys,
                index,
                Some(started_ms),
            ))
            .await?
        {
            tracing::info!(component = index.appid(), authorizer = %appid, "authorizer no longer listed by WeChat; removed");
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconciliation_removes_only_a_few_at_once() {
        assert!(!too_many_to_remove(0, 0));
        assert!(!too_many_to_remove(10, 10), "a small platform may lose all");
        assert!(too_many_to_remove(11, 100));
        assert!(!too_many_to_remove(11, 111));
        assert!(
            too_many_to_remove(100_000, 100_000),
            "an empty list wipes nothing"
        );
    }

    #[test]
    fn the_summary_is_a_printable_token() {
        let s = Summary {
            listed: 3,
            added: 1,
            updated: 0,
            removed: 2,
        };
        assert_eq!(s.text(), "listed=3,added=1,updated=0,removed=2");
        assert!(wxtoken_schema::is_printable_token(&s.text()));
    }
}
