//! The due-queue loop: one per replica, whatever the number of credentials.
//!
//! Redis keeps every value's due time in the due-queue (see
//! `wxtoken_schema::registry`). The scheduler keeps a local *agenda*: the
//! earliest entries of every shard that this replica holds the secret of,
//! as of its last scan, corrected by what each claim answers. It sleeps
//! until the earliest entry is due (or a wake-up arrives: a refresh
//! request, a re-registration), then claims due entries — each only when a
//! WeChat call could start: a permit of the per-replica concurrency limit
//! is taken first, and the claim itself checks the shared call rate. Each
//! claim runs as its own task (`lease`); its outcome tells the agenda when
//! the entry is due next.
//!
//! Work is proportional to what is due: a value that is not due costs
//! nothing until the periodic rescan (every `check_interval`), which reads
//! a fixed window per shard, not every value.

use crate::conn::RedisError;
use crate::lease::{Claimed, Lease, LeaseError, Outcome};
use crate::metrics;
use crate::policy::{self, Reason};
use crate::registry::Held;
use crate::wechat::ErrorClass;
use crate::Shared;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use wxtoken_schema::registry::{scan, Due};
use wxtoken_schema::{parse_member, Claim, Kind, DUE_SHARDS};

/// Entries read per shard and page in a scan.
const SCAN_LIMIT: usize = 256;

/// Pages read per shard in one scan when a page holds only values this
/// replica cannot refresh (another replica's credentials).
const MAX_PAGES: usize = 16;

/// Wake-ups waiting for the scheduler; beyond this, one rescan replaces
/// them (a publish storm cannot grow memory).
const INBOX_LIMIT: usize = 10_000;

/// Shortest time between two scans that were not asked for (the agenda ran
/// past its horizon).
const MIN_RESCAN: Duration = Duration::from_millis(200);

/// Due entries among which the next claim is picked at random, so that
/// replicas working the same queue rarely claim the same entry at once.
const PICK_AMONG: usize = 32;

/// Wake-ups for the scheduler from other tasks (events, heartbeat, reload).
#[derive(Default)]
pub struct Inbox {
    due: Mutex<VecDeque<String>>,
    rescan: AtomicBool,
    notify: Notify,
}

impl Inbox {
    /// `member` may be due now (a refresh request was filed).
    pub fn due_now(&self, member: String) {
        let overflow = match self.due.lock() {
            Ok(mut q) if q.len() < INBOX_LIMIT => {
                q.push_back(member);
                false
            }
            _ => true,
        };
        if overflow {
            self.rescan.store(true, Ordering::Relaxed);
        }
        self.notify.notify_one();
    }

    /// The queue may have changed anywhere (registration, reconnect).
    pub fn rescan(&self) {
        self.rescan.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    fn take(&self) -> (Vec<String>, bool) {
        let due = match self.due.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        (due, self.rescan.swap(false, Ordering::Relaxed))
    }
}

/// The Redis clock, estimated locally from the last time Redis told it.
#[derive(Clone, Copy)]
struct Clock {
    redis_ms: u64,
    at: Instant,
}

impl Clock {
    fn now_ms(&self) -> u64 {
        self.redis_ms + self.at.elapsed().as_millis() as u64
    }

    fn instant(&self, at_ms: u64) -> Instant {
        self.at + Duration::from_millis(at_ms.saturating_sub(self.redis_ms))
    }
}

/// The entries this replica knows of and may claim, by due time.
#[derive(Default)]
struct Agenda {
    by_time: BTreeSet<(u64, String)>,
    by_member: HashMap<String, u64>,
    /// Entries being worked on: not picked again until their task ends.
    in_flight: HashSet<String>,
    /// Past this due time the agenda may miss entries (a shard had more
    /// than the scan window); `u64::MAX` when it holds them all.
    horizon_ms: u64,
}

impl Agenda {
    fn set(&mut self, member: String, at_ms: u64) {
        if self.in_flight.contains(&member) {
            return;
        }
        if let Some(old) = self.by_member.insert(member.clone(), at_ms) {
            self.by_time.remove(&(old, member.clone()));
        }
        self.by_time.insert((at_ms, member));
    }

    fn remove(&mut self, member: &str) {
        if let Some(old) = self.by_member.remove(member) {
            self.by_time.remove(&(old, member.to_owned()));
        }
    }

    /// Takes a due entry (at random among the first few) and marks it in
    /// flight.
    fn take_due(&mut self, now_ms: u64) -> Option<String> {
        let due: Vec<&(u64, String)> = self
            .by_time
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(PICK_AMONG)
            .collect();
        if due.is_empty() {
            return None;
        }
        let (at, member) = due[rand::random_range(0..due.len())].clone();
        self.by_time.remove(&(at, member.clone()));
        self.by_member.remove(&member);
        self.in_flight.insert(member.clone());
        Some(member)
    }

    fn next_at(&self) -> Option<u64> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Whether an entry is due at `now_ms` (O(1): the earliest one).
    fn has_due(&self, now_ms: u64) -> bool {
        self.next_at().is_some_and(|at| at <= now_ms)
    }
}

/// What one claim task reports back.
struct Done {
    member: String,
    id: String,
    kind: Kind,
    result: Result<Result<(Option<Reason>, Outcome), Claim>, RedisError>,
}

/// Runs the due-queue loop until shutdown, then waits for the leases in
/// flight to end.
pub async fn run(sh: Arc<Shared>, inbox: Arc<Inbox>) {
    let permits = Arc::new(Semaphore::new(sh.max_concurrent_calls));
    let mut agenda = Agenda::default();
    let mut clock = Clock {
        redis_ms: crate::unix_ms(),
        at: Instant::now(),
    };
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut next_scan = Instant::now();
    let mut last_scan = Instant::now();
    let mut rate_gate = Instant::now();
    // The shared rate refused the last claim: claim one at a time (a
    // probe) until one is granted, so that a saturated rate costs one
    // refused claim per replica and slot, not one per permit.
    let mut probing = false;
    let mut probe_out = false;
    let mut redis_failures = 0u32;
    let mut loud: HashMap<String, String> = HashMap::new();

    while !sh.shutdown.is_cancelled() {
        let (requested, rescan) = inbox.take();
        if rescan {
            next_scan = Instant::now();
        }
        let now = Instant::now();
        let past_horizon = agenda.horizon_ms <= clock.now_ms()
            && !agenda.has_due(clock.now_ms())
            && last_scan.elapsed() >= MIN_RESCAN;
        if now >= next_scan || past_horizon {
            last_scan = now;
            match rescan_all(&sh, &mut agenda).await {
                Ok(c) => {
                    clock = c;
                    if redis_failures > 0 {
                        tracing::info!("Redis is reachable again");
                    }
                    redis_failures = 0;
                    sh.metrics.redis_up.set(1);
                    next_scan = Instant::now() + sh.refresh.check_interval;
                }
                Err(e) => {
                    redis_failures += 1;
                    sh.metrics.redis_up.set(0);
                    if redis_failures == 1 {
                        tracing::warn!(error = %e, "cannot read the due-queue; retrying");
                    }
                    // Never longer than check_interval, the longest time
                    // between two looks at the queue.
                    next_scan = Instant::now()
                        + policy::backoff(
                            Duration::from_millis(200),
                            Duration::from_secs(5).min(sh.refresh.check_interval),
                            redis_failures,
                            rand::random::<f64>(),
                        );
                }
            }
        }

        // After any scan (which replaces the agenda): values someone asked
        // for may be due now; the claim checks.
        for member in requested {
            let held = parse_member(&member).is_some_and(|(id, _)| sh.registry.holds(id));
            if held {
                agenda.set(member, clock.now_ms());
            }
        }

        // Claim what is due, as far as permits and the shared rate allow.
        while Instant::now() >= rate_gate && !(probing && probe_out) {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                break;
            };
            let Some(member) = agenda.take_due(clock.now_ms()) else {
                break;
            };
            let Some((id, kind)) = parse_member(&member).map(|(i, k)| (i.to_owned(), k)) else {
                agenda.in_flight.remove(&member);
                continue;
            };
            // Only credentials, and kinds of them, this replica holds now
            // (a ticket dropped from the config is not refreshed here).
            let Some(held) = sh.registry.get(&id).filter(|h| h.kinds().contains(&kind)) else {
                agenda.in_flight.remove(&member);
                continue;
            };
            probe_out = probing;
            let sh = sh.clone();
            tasks.spawn(async move {
                let result = attempt(&sh, &held, kind).await;
                drop(permit);
                Done {
                    member,
                    id,
                    kind,
                    result,
                }
            });
        }

        // Wake for the next due entry only if it could be claimed then (a
        // finished task wakes the loop when permits are all taken).
        let can_claim = permits.available_permits() > 0 && !(probing && probe_out);
        let idle = !agenda.has_due(clock.now_ms());
        let wake = [
            Some(next_scan),
            agenda
                .next_at()
                .filter(|_| can_claim)
                .map(|at| clock.instant(at).max(rate_gate)),
            (agenda.horizon_ms != u64::MAX && idle)
                .then(|| clock.instant(agenda.horizon_ms).max(last_scan + MIN_RESCAN)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(next_scan);
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = inbox.notify.notified() => {}
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                match done {
                    Ok(done) => {
                        probe_out = false;
                        match settle(&sh, &mut agenda, &mut clock, &mut loud, done) {
                            Rate::Refused(gate) => {
                                probing = true;
                                rate_gate = rate_gate.max(gate);
                            }
                            Rate::Passed => probing = false,
                            Rate::Unknown => {}
                        }
                    }
                    Err(e) if e.is_panic() => tracing::error!(error = %e, "a refresh task panicked"),
                    Err(_) => {}
                }
            }
            _ = sh.shutdown.cancelled() => {}
        }
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(done) = done {
            let _ = settle(&sh, &mut agenda, &mut clock, &mut loud, done);
        }
    }
}

/// One claim and, if granted, the lease's protocol.
async fn attempt(
    sh: &Shared,
    held: &Held,
    kind: Kind,
) -> Result<Result<(Option<Reason>, Outcome), Claim>, RedisError> {
    match Lease::claim(sh, held, kind).await? {
        Claimed::Granted(lease) => Ok(Ok(lease.run().await)),
        Claimed::Refused(claim) => Ok(Err(claim)),
    }
}

/// Reads every shard's window and replaces the agenda with the entries
/// this replica holds. Returns the Redis clock.
async fn rescan_all(sh: &Shared, agenda: &mut Agenda) -> Result<Clock, RedisError> {
    let mut pending: Vec<(u32, usize)> = (0..DUE_SHARDS).map(|s| (s, 0)).collect();
    let mut found: Vec<Due> = Vec::new();
    let mut horizon = u64::MAX;
    let mut clock = None;
    let mut due_total = 0usize;
    for _page in 0..MAX_PAGES {
        if pending.is_empty() {
            break;
        }
        let mut con = sh.redis.con();
        let sent = Instant::now();
        let (now_ms, pages) = sh
            .redis
            .step(scan(&mut con, &sh.namespace, &pending, SCAN_LIMIT))
            .await?;
        let c = *clock.get_or_insert(Clock {
            redis_ms: now_ms,
            at: sent,
        });
        let mut next = Vec::new();
        for ((shard, offset), page) in pending.iter().zip(pages) {
            let full = page.len() >= SCAN_LIMIT;
            let last = page.last().map(|d| d.at_ms);
            let mut mine = 0;
            for d in page {
                if d.at_ms <= c.now_ms() {
                    due_total += 1;
                }
                let held = parse_member(&d.member).is_some_and(|(id, _)| sh.registry.holds(id));
                if held {
                    mine += 1;
                    found.push(d);
                }
            }
            if full {
                if mine == 0 {
                    // Only other replicas' values so far: look further.
                    next.push((*shard, offset + SCAN_LIMIT));
                } else if let Some(last) = last {
                    horizon = horizon.min(last);
                }
            }
        }
        pending = next;
    }
    if !pending.is_empty() {
        tracing::warn!(
            shards = pending.len(),
            "the due-queue holds more than {} values this replica cannot refresh ahead of its own; is the replica holding their secrets down?",
            SCAN_LIMIT * MAX_PAGES
        );
        horizon = horizon.min(clock.map_or(0, |c| c.now_ms()) + 1000);
    }
    // Entries already due locally (a request, a rate-limited claim) stay:
    // the queue may not show them due, and the claim decides.
    let now_ms = clock.map_or(0, |c| c.now_ms());
    let carried: Vec<(u64, String)> = agenda
        .by_time
        .iter()
        .take_while(|(at, _)| *at <= now_ms)
        .cloned()
        .collect();
    let in_flight = std::mem::take(&mut agenda.in_flight);
    *agenda = Agenda {
        in_flight,
        horizon_ms: horizon,
        ..Agenda::default()
    };
    for d in found {
        agenda.set(d.member, d.at_ms);
    }
    for (at, member) in carried {
        if agenda.by_member.get(&member).is_none_or(|t| *t > at) {
            agenda.set(member, at);
        }
    }
    sh.metrics.due_values.set(due_total as i64);
    Ok(clock.unwrap_or(Clock {
        redis_ms: crate::unix_ms(),
        at: Instant::now(),
    }))
}

/// What a finished claim says about the shared call rate.
enum Rate {
    /// It refused the claim: no claim before this instant.
    Refused(Instant),
    /// It let the claim through.
    Passed,
    /// The claim ended before the rate was checked.
    Unknown,
}

/// Applies a finished task to the agenda, metrics and logs.
fn settle(
    sh: &Shared,
    agenda: &mut Agenda,
    clock: &mut Clock,
    loud: &mut HashMap<String, String>,
    done: Done,
) -> Rate {
    let Done {
        member,
        id,
        kind,
        result,
    } = done;
    agenda.in_flight.remove(&member);
    let now_ms = clock.now_ms();
    let after = |d: Duration| now_ms.saturating_add(d.as_millis() as u64);
    let labels = metrics::value(&id, kind);
    match result {
        Err(e) => {
            sh.metrics.redis_up.set(0);
            tracing::warn!(%id, %kind, error = %e, "Redis failed during a claim; retrying");
            agenda.set(member, after(sh.refresh.retry_initial));
        }
        Ok(Err(claim)) => match claim {
            Claim::Unregistered => agenda.remove(&member),
            Claim::NotDue(at) | Claim::Held(at) => {
                // Redis says it is not due until `at`: if that is not after
                // our estimate of the Redis clock, the estimate runs ahead
                // (latency counted as time): pull it back so the entry is not
                // claimed again and again until real time catches up.
                if at <= now_ms {
                    clock.redis_ms = clock.redis_ms.saturating_sub(now_ms - at + 1);
                }
                agenda.set(member, at);
            }
            Claim::HoldCut(at) => {
                tracing::warn!(%id, %kind, hold_s = at.saturating_sub(now_ms) / 1000,
                    "the pause or backoff stored in Redis reached further ahead than any this refresher sets; cut to the configured maximum");
                agenda.set(member, at);
            }
            Claim::Busy(_) => {
                // Another replica is refreshing it and will queue its next
                // due time; the next scan brings it back (also if that
                // replica dies: the entry is then due at the lock's expiry).
                sh.metrics.lock_contention.get_or_create(&labels).inc();
                agenda.remove(&member);
            }
            Claim::RateLimited(wait) => {
                agenda.set(member, now_ms);
                let spread = sh.rate.as_ref().map_or(Duration::ZERO, |r| r.interval);
                return Rate::Refused(
                    Instant::now() + wait + spread.mul_f64(rand::random::<f64>()),
                );
            }
            Claim::Granted { .. } => {}
        },
        Ok(Ok((reason, outcome))) => {
            sh.metrics.redis_up.set(1);
            let next = match &outcome {
                Outcome::Refreshed {
                    next_due,
                    tickets_due,
                    ..
                } => {
                    loud.remove(&member);
                    if let Some(h) = sh.registry.get(&id) {
                        for t in tickets_due {
                            agenda.set(h.keys.member(*t), now_ms);
                        }
                    }
                    *next_due
                }
                Outcome::NotNeeded { next } => *next,
                Outcome::Rejected => sh.refresh.retry_initial,
                Outcome::Failed { retry_in, .. } => *retry_in,
            };
            if let Some(reason) = reason {
                count(sh, &labels, reason, &outcome);
            }
            if let Outcome::Failed { error, retry_in } = &outcome {
                log_failure(sh, loud, &member, &id, kind, error, *retry_in);
            }
            agenda.set(member, after(next));
            return Rate::Passed;
        }
    }
    Rate::Unknown
}

/// Logs a failed lease (configuration faults loudly, once per fault).
fn log_failure(
    sh: &Shared,
    loud: &mut HashMap<String, String>,
    member: &str,
    id: &str,
    kind: Kind,
    error: &LeaseError,
    retry_in: Duration,
) {
    let message = error.to_string();
    match error {
        LeaseError::NoAccessToken | LeaseError::NoComponentToken | LeaseError::NoSuiteToken => {
            // Not a failure: the ticket waits for its access token, whose
            // write brings it forward.
            tracing::debug!(%id, %kind, error = %error, "waiting for the value it is fetched with");
            return;
        }
        LeaseError::NoVerifyTicket => {
            // Normal at a platform's first start: WeChat pushes a ticket
            // every 10 minutes, and one was asked for.
            tracing::info!(%id, %kind, retry_in = ?retry_in, "waiting for WeChat to push a component_verify_ticket (asked for one)");
            return;
        }
        LeaseError::NoSuiteTicket => {
            // Normal at a suite's first start: WeCom pushes a ticket every
            // 10 minutes, and its push wakes the suite token.
            tracing::info!(%id, %kind, retry_in = ?retry_in, "waiting for WeCom to push a suite_ticket");
            return;
        }
        LeaseError::LockLapsed => {
            tracing::warn!(%id, %kind, "refresh lock lapsed before the WeChat call (stalled?); not calling");
            return;
        }
        LeaseError::Redis(e) => {
            tracing::warn!(%id, %kind, error = %e, "Redis failed during a refresh; retrying");
            return;
        }
        LeaseError::Wechat(_)
        | LeaseError::StillRefused { .. }
        | LeaseError::ForceBudget(_)
        | LeaseError::NoRefreshToken
        | LeaseError::NoPermanentCode
        | LeaseError::WrongAuthorizer(_) => {}
    }
    let errcode = match error {
        LeaseError::Wechat(w) => w.errcode(),
        _ => None,
    };
    match error.class(kind) {
        ErrorClass::Config
            if matches!(errcode, Some(61023 | 61003))
                || matches!(error, LeaseError::NoRefreshToken) =>
        {
            tracing::warn!(%id, %kind, error = %message,
                "WeChat refuses this authorizer's refresh token or authorization; a reconciliation with api_get_authorizer_list repairs or removes it. Retrying every {}",
                humantime::format_duration(sh.refresh.config_error_retry));
        }
        ErrorClass::Config => {
            // Loud once per distinct fault (by errcode: WeChat's messages
            // carry a fresh request id each time).
            let fault = errcode.map_or_else(|| message.clone(), |c| c.to_string());
            if loud.get(member) != Some(&fault) {
                let appid = sh
                    .registry
                    .get(id)
                    .map(|h| h.appid().to_owned())
                    .unwrap_or_default();
                tracing::error!(%id, %kind, %appid, error = %message,
                    "CONFIGURATION FAULT: WeChat refuses this credential; fix the secret, appid or IP whitelist. Retrying every {}",
                    humantime::format_duration(sh.refresh.config_error_retry));
                loud.insert(member.to_owned(), fault);
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
}

/// Records a lease's outcome in this replica's metrics.
fn count(sh: &Shared, value: &metrics::ValueLabels, reason: Reason, outcome: &Outcome) {
    let m = &sh.metrics;
    let (outcome, errcode) = match outcome {
        Outcome::Refreshed {
            expires_at_ms,
            same,
            ..
        } => {
            // Authorizers are counted per platform: one expiry means nothing.
            if !value.id.ends_with("/*") {
                m.expires_at
                    .get_or_create(value)
                    .set(*expires_at_ms as f64 / 1000.0);
            }
            // WeCom handed back the stored token: not a new one.
            (if *same { "same" } else { "ok" }, None)
        }
        Outcome::Rejected => {
            m.fence_rejections.get_or_create(value).inc();
            ("fenced", None)
        }
        Outcome::NotNeeded { .. } => return,
        Outcome::Failed { error, .. } => match error {
            LeaseError::NoAccessToken
            | LeaseError::NoComponentToken
            | LeaseError::NoSuiteToken
            | LeaseError::LockLapsed => return,
            LeaseError::NoSuiteTicket => ("no_suite_ticket", None),
            LeaseError::NoPermanentCode => ("no_permanent_code", None),
            LeaseError::NoVerifyTicket => ("no_verify_ticket", None),
            LeaseError::NoRefreshToken => ("no_refresh_token", None),
            LeaseError::WrongAuthorizer(_) => ("wrong_authorizer", None),
            LeaseError::Redis(_) => {
                m.redis_up.set(0);
                return;
            }
            LeaseError::StillRefused { .. } => ("still_refused", None),
            LeaseError::ForceBudget(_) => ("force_budget", None),
            LeaseError::Wechat(w) => ("error", w.errcode()),
        },
    };
    m.refreshes
        .get_or_create(&metrics::OutcomeLabels {
            id: value.id.clone(),
            kind: value.kind.clone(),
            outcome: outcome.to_owned(),
            reason: reason.as_str().to_owned(),
            errcode: errcode.map(|c| c.to_string()).unwrap_or_default(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agenda_orders_updates_and_skips_work_in_flight() {
        let mut a = Agenda {
            horizon_ms: u64::MAX,
            ..Agenda::default()
        };
        a.set("a access_token".into(), 300);
        a.set("b access_token".into(), 100);
        a.set("a access_token".into(), 50);
        assert_eq!(a.next_at(), Some(50));
        assert!(a.has_due(100));
        assert!(!a.has_due(49));
        assert_eq!(a.take_due(49), None);
        let first = a.take_due(60).unwrap();
        assert_eq!(first, "a access_token");
        // In flight: a scan or request does not bring it back.
        a.set(first.clone(), 10);
        assert_eq!(a.next_at(), Some(100));
        a.in_flight.remove(&first);
        a.remove("b access_token");
        assert_eq!(a.next_at(), None);
        assert_eq!(a.by_member.len(), 0);
    }

    #[test]
    fn inbox_overflow_turns_into_a_rescan() {
        let inbox = Inbox::default();
        for i in 0..INBOX_LIMIT + 5 {
            inbox.due_now(format!("app-{i} access_token"));
        }
        let (due, rescan) = inbox.take();
        assert_eq!(due.len(), INBOX_LIMIT);
        assert!(rescan);
        let (due, rescan) = inbox.take();
        assert!(due.is_empty() && !rescan);
    }
}
