//! The in-process cache: values by (credential id, kind), the rule deciding
//! whether one may be served without asking Redis, and how Redis reads and
//! update events are merged into it.
//!
//! Pure state and arithmetic. It must not do I/O or await, and it holds no
//! lock a reader could wait on: readers load a snapshot of the map
//! ([`ArcSwap`]); the rare writers (update events, Redis reads) replace it.
//!
//! Freshness works with two counters:
//! - the *epoch* is bumped whenever events may have been missed (the
//!   subscription came back, or an event could not be understood). An entry
//!   is trusted while subscribed only if it was confirmed in the current
//!   epoch; [`STALE`] marks a single entry to be read again (every time,
//!   until Redis or an event replaces it);
//! - the *sequence* orders cache updates, so that a Redis read never replaces
//!   a value an event stored while the read was in flight.

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use wxtoken_schema::{Kind, UpdateEvent};

/// Epoch of an entry that must be read again whatever the subscription says.
const STALE: u64 = 0;

/// Maps the Redis clock (Unix ms, as in `expires_at_ms`) to local
/// [`Instant`]s, from one `TIME` reply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    local: Instant,
    redis_ms: u64,
}

impl Clock {
    /// From a `TIME` reply (`secs`, `micros`) to a command sent at `sent` and
    /// answered at `received`: Redis is taken to have read its clock halfway.
    pub(crate) fn from_time(sent: Instant, received: Instant, secs: u64, micros: u64) -> Clock {
        Clock {
            local: sent + received.saturating_duration_since(sent) / 2,
            redis_ms: secs.saturating_mul(1000).saturating_add(micros / 1000),
        }
    }

    /// The local instant at which the Redis clock reads `ms`; `None` when
    /// that is too far ahead to represent (treated as "no known expiry").
    pub(crate) fn instant_of(&self, ms: u64) -> Option<Instant> {
        if ms >= self.redis_ms {
            self.local
                .checked_add(Duration::from_millis(ms - self.redis_ms))
        } else {
            // In the past; if even that cannot be represented, the anchor
            // itself is in the past too, which is all that matters.
            Some(
                self.local
                    .checked_sub(Duration::from_millis(self.redis_ms - ms))
                    .unwrap_or(self.local),
            )
        }
    }
}

/// One cached value. Deliberately not `Debug`: it holds a whole token.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) value: Arc<str>,
    pub(crate) fence: u64,
    /// When the value expires; `None` when its key has no TTL.
    pub(crate) deadline: Option<Instant>,
    /// When Redis (or an event) last vouched for the value.
    confirmed_at: Instant,
    epoch: u64,
    seq: u64,
}

impl Entry {
    /// Time left until expiry; [`Duration::MAX`] when there is no TTL.
    pub(crate) fn expires_in(&self, now: Instant) -> Duration {
        self.deadline
            .map_or(Duration::MAX, |d| d.saturating_duration_since(now))
    }
}

/// What one Redis read found.
pub(crate) struct Stored {
    pub(crate) value: String,
    pub(crate) fence: u64,
    /// PTTL; `None` when the key has no TTL.
    pub(crate) ttl: Option<Duration>,
}

/// Taken just before a Redis read is sent; see [`Cache::apply_read`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadStart {
    epoch: u64,
    seq: u64,
    pub(crate) sent: Instant,
}

/// What [`Cache::apply_event`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventOutcome {
    /// The event's value is now cached.
    Applied,
    /// The cache holds a newer fence; it was kept and marked for one re-read.
    Older,
}

type Slots = [Option<Arc<Entry>>; 3];
type Map = HashMap<Arc<str>, Slots>;

fn slot(kind: Kind) -> usize {
    match kind {
        Kind::AccessToken => 0,
        Kind::JsapiTicket => 1,
        Kind::WxCardTicket => 2,
    }
}

/// State shared by every clone of a client and its subscriber task.
pub(crate) struct Cache {
    entries: ArcSwap<Map>,
    epoch: AtomicU64,
    seq: AtomicU64,
    subscribed: AtomicBool,
    clock: ArcSwap<Clock>,
    /// Bumped on every applied event, to wake reads waiting for a value.
    changes: watch::Sender<u64>,
    poll_interval: Duration,
    expiry_margin: Duration,
}

impl Cache {
    pub(crate) fn new(poll_interval: Duration, expiry_margin: Duration, clock: Clock) -> Cache {
        Cache {
            entries: ArcSwap::from_pointee(Map::new()),
            epoch: AtomicU64::new(STALE + 1),
            seq: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            clock: ArcSwap::from_pointee(clock),
            changes: watch::Sender::new(0),
            poll_interval,
            expiry_margin,
        }
    }

    /// The cached value, if it may be served without asking Redis: it is more
    /// than the expiry margin from expiry, and either the subscription is live
    /// and nothing may have been missed since it was confirmed, or it was
    /// confirmed less than the poll interval ago.
    pub(crate) fn fresh(&self, id: &str, kind: Kind, now: Instant) -> Option<Arc<Entry>> {
        let map = self.entries.load();
        let entry = map.get(id)?[slot(kind)].as_ref()?;
        if entry.epoch == STALE {
            return None;
        }
        if let Some(deadline) = entry.deadline {
            if deadline.saturating_duration_since(now) <= self.expiry_margin {
                return None;
            }
        }
        let trusted = if self.subscribed.load(Ordering::Acquire) {
            entry.epoch == self.epoch.load(Ordering::Acquire)
        } else {
            now.saturating_duration_since(entry.confirmed_at) < self.poll_interval
        };
        trusted.then(|| Arc::clone(entry))
    }

    /// The cached value if it has not expired yet, fresh or not: what to serve
    /// when Redis cannot be asked, or answers that it has nothing (it may have
    /// lost its data). Never an expired value.
    pub(crate) fn unexpired(&self, id: &str, kind: Kind, now: Instant) -> Option<Arc<Entry>> {
        let map = self.entries.load();
        let entry = map.get(id)?[slot(kind)].as_ref()?;
        entry
            .deadline
            .is_none_or(|d| d > now)
            .then(|| Arc::clone(entry))
    }

    /// Call right before sending a Redis read.
    pub(crate) fn start_read(&self) -> ReadStart {
        ReadStart {
            epoch: self.epoch.load(Ordering::Acquire),
            seq: self.next_seq(),
            sent: Instant::now(),
        }
    }

    /// Merges what a Redis read found and returns the entry now in effect.
    ///
    /// Redis is the authority for the values it returns: its answer replaces
    /// the cached value even when the fence is lower (Redis lost its data and
    /// the fence counter started over) — unless an event stored a value at
    /// least as new while the read was in flight.
    ///
    /// When the read found nothing, an expired cached value is dropped, but
    /// one that has not expired is kept, marked [`STALE`]: Redis may have
    /// lost its data (a restart) while the value is still valid at WeChat, so
    /// it stays available to [`Cache::unexpired`] — and is read again every
    /// time, never trusted as fresh. `None` is returned then, as Redis had
    /// nothing.
    pub(crate) fn apply_read(
        &self,
        id: &str,
        kind: Kind,
        start: &ReadStart,
        stored: Option<Stored>,
    ) -> Option<Arc<Entry>> {
        let i = slot(kind);
        let new = stored.map(|s| {
            Arc::new(Entry {
                value: s.value.into(),
                fence: s.fence,
                deadline: s.ttl.and_then(|ttl| start.sent.checked_add(ttl)),
                confirmed_at: start.sent,
                epoch: start.epoch,
                seq: start.seq,
            })
        });
        let now = Instant::now();
        let mut in_effect = None;
        self.entries.rcu(|map| {
            let current = map.get(id).and_then(|slots| slots[i].clone());
            if let Some(current) = &current {
                let newer_event = current.seq > start.seq
                    && new.as_ref().is_none_or(|n| current.fence >= n.fence);
                if newer_event {
                    in_effect = Some(Arc::clone(current));
                    return Arc::clone(map);
                }
            }
            in_effect = new.clone();
            let replacement = match (&new, current) {
                (Some(entry), _) => Some(Arc::clone(entry)),
                (None, None) => return Arc::clone(map),
                // Nothing in Redis, but the cached value is still valid:
                // keep it for when Redis cannot vouch for anything, and ask
                // again every time.
                (None, Some(current)) if current.deadline.is_none_or(|d| d > now) => {
                    if current.epoch == STALE {
                        return Arc::clone(map);
                    }
                    let mut stale = Entry::clone(&current);
                    stale.epoch = STALE;
                    Some(Arc::new(stale))
                }
                (None, Some(_)) => None,
            };
            let mut map = Map::clone(map);
            match replacement {
                Some(entry) => slots_mut(&mut map, id)[i] = Some(entry),
                None => {
                    if let Some(slots) = map.get_mut(id) {
                        slots[i] = None;
                        if slots.iter().all(Option::is_none) {
                            map.remove(id);
                        }
                    }
                }
            }
            Arc::new(map)
        });
        in_effect
    }

    /// Applies an update event: its value replaces the cached one unless the
    /// cache holds a newer fence (an out-of-order event). In that case the
    /// cached value is kept but read again once, since a lower fence can also
    /// mean that Redis lost its data.
    pub(crate) fn apply_event(&self, event: UpdateEvent) -> EventOutcome {
        let i = slot(event.kind);
        let entry = Arc::new(Entry {
            value: event.token.into(),
            fence: event.fence,
            deadline: self.clock.load().instant_of(event.expires_at_ms),
            confirmed_at: Instant::now(),
            epoch: self.epoch.load(Ordering::Acquire),
            seq: self.next_seq(),
        });
        let mut outcome = EventOutcome::Applied;
        self.entries.rcu(|map| {
            let mut map = Map::clone(map);
            let slots = slots_mut(&mut map, &event.id);
            match &slots[i] {
                Some(current) if current.fence > entry.fence => {
                    outcome = EventOutcome::Older;
                    if current.epoch != STALE {
                        let mut stale = Entry::clone(current);
                        stale.epoch = STALE;
                        slots[i] = Some(Arc::new(stale));
                    }
                }
                _ => {
                    outcome = EventOutcome::Applied;
                    slots[i] = Some(Arc::clone(&entry));
                }
            }
            Arc::new(map)
        });
        if outcome == EventOutcome::Applied {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        outcome
    }

    /// Stops serving the cached value of `kind` for `id` if it is `value`
    /// (reported refused by WeChat): the next read asks Redis.
    pub(crate) fn distrust(&self, id: &str, kind: Kind, value: &str) {
        let i = slot(kind);
        self.entries.rcu(|map| {
            let Some(current) = map.get(id).and_then(|slots| slots[i].as_ref()) else {
                return Arc::clone(map);
            };
            if &*current.value != value || current.epoch == STALE {
                return Arc::clone(map);
            }
            let mut stale = Entry::clone(current);
            stale.epoch = STALE;
            let mut map = Map::clone(map);
            slots_mut(&mut map, id)[i] = Some(Arc::new(stale));
            Arc::new(map)
        });
    }

    /// Every cached value must be read again once (events may have been
    /// missed).
    pub(crate) fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Records whether the event subscription is live. Coming up invalidates
    /// everything first, so no reader trusts a value confirmed during the gap.
    pub(crate) fn set_subscribed(&self, up: bool) {
        if up {
            self.invalidate_all();
        }
        self.subscribed.store(up, Ordering::Release);
    }

    pub(crate) fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// A receiver that changes whenever an event is applied.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn set_clock(&self, clock: Clock) {
        self.clock.store(Arc::new(clock));
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::AcqRel) + 1
    }
}

fn slots_mut<'m>(map: &'m mut Map, id: &str) -> &'m mut Slots {
    map.entry(Arc::from(id)).or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn cache() -> Cache {
        let now = Instant::now();
        let c = Cache::new(
            Duration::from_secs(30),
            Duration::from_secs(5),
            Clock::from_time(now, now, 1_000_000, 0),
        );
        c.set_subscribed(true);
        c
    }

    fn event(token: &str, fence: u64, expires_at_ms: u64) -> UpdateEvent {
        UpdateEvent {
            v: 1,
            id: "app".into(),
            kind: Kind::AccessToken,
            token: token.into(),
            expires_at_ms,
            fence,
            replica: "r".into(),
        }
    }

    fn stored(value: &str, fence: u64, ttl: Duration) -> Option<Stored> {
        Some(Stored {
            value: value.into(),
            fence,
            ttl: Some(ttl),
        })
    }

    fn fresh_value(c: &Cache) -> Option<String> {
        c.fresh("app", Kind::AccessToken, Instant::now())
            .map(|e| e.value.to_string())
    }

    /// Redis clock at the cache's anchor, in ms.
    const T0: u64 = 1_000_000_000;

    #[test]
    fn clock_maps_redis_ms_to_instants() {
        let sent = Instant::now();
        let received = sent + Duration::from_millis(10);
        let clock = Clock::from_time(sent, received, 1_000, 500_000);
        let at = clock.instant_of(1_000_500 + 60_000).unwrap();
        assert_eq!(at - sent, Duration::from_millis(60_005));
        assert!(clock.instant_of(0).unwrap() <= sent + Duration::from_millis(5));
        // Far-future expiries must not panic (None or a far instant).
        let _ = clock.instant_of(u64::MAX);
    }

    #[test]
    fn read_value_is_served_until_the_margin() {
        let c = cache();
        let start = c.start_read();
        let e = c
            .apply_read("app", Kind::AccessToken, &start, stored("A", 1, 60 * SEC))
            .unwrap();
        assert_eq!(&*e.value, "A");
        assert_eq!(fresh_value(&c).as_deref(), Some("A"));
        assert!(c.fresh("app", Kind::JsapiTicket, Instant::now()).is_none());
        assert!(c
            .fresh("other", Kind::AccessToken, Instant::now())
            .is_none());
        // 56 s later the value is within the 5 s margin.
        let later = start.sent + 56 * SEC;
        assert!(c.fresh("app", Kind::AccessToken, later).is_none());
        assert!(c.unexpired("app", Kind::AccessToken, later).is_some());
        assert!(c
            .unexpired("app", Kind::AccessToken, start.sent + 61 * SEC)
            .is_none());
    }

    #[test]
    fn events_replace_older_fences_and_keep_newer_ones_for_a_reread() {
        let c = cache();
        let exp = T0 + 7_200_000;
        assert_eq!(c.apply_event(event("A", 5, exp)), EventOutcome::Applied);
        assert_eq!(fresh_value(&c).as_deref(), Some("A"));
        assert_eq!(c.apply_event(event("B", 7, exp)), EventOutcome::Applied);
        assert_eq!(fresh_value(&c).as_deref(), Some("B"));
        assert_eq!(c.apply_event(event("OLD", 6, exp)), EventOutcome::Older);
        assert!(fresh_value(&c).is_none(), "marked for one re-read");
        assert_eq!(
            &*c.unexpired("app", Kind::AccessToken, Instant::now())
                .unwrap()
                .value,
            "B"
        );
        // An equal fence is the same write: applied.
        assert_eq!(c.apply_event(event("B", 7, exp)), EventOutcome::Applied);
        assert_eq!(fresh_value(&c).as_deref(), Some("B"));
    }

    #[test]
    fn event_expiry_uses_the_redis_clock() {
        let c = cache();
        c.apply_event(event("A", 1, T0 + 4_000));
        assert!(fresh_value(&c).is_none(), "4 s left is inside the margin");
        c.apply_event(event("B", 2, T0 + 60_000));
        let e = c
            .fresh("app", Kind::AccessToken, Instant::now())
            .expect("60 s left");
        assert!(e.expires_in(Instant::now()) <= 60 * SEC);
        assert!(e.expires_in(Instant::now()) > 50 * SEC);
    }

    #[test]
    fn a_read_does_not_undo_an_event_that_landed_while_it_was_in_flight() {
        let c = cache();
        let start = c.start_read();
        c.apply_event(event("NEW", 8, T0 + 60_000));
        let e = c
            .apply_read("app", Kind::AccessToken, &start, stored("OLD", 7, 60 * SEC))
            .unwrap();
        assert_eq!(&*e.value, "NEW");
        assert_eq!(fresh_value(&c).as_deref(), Some("NEW"));
        // Nor does a read that found nothing.
        let start = c.start_read();
        c.apply_event(event("NEWER", 9, T0 + 60_000));
        let e = c
            .apply_read("app", Kind::AccessToken, &start, None)
            .unwrap();
        assert_eq!(&*e.value, "NEWER");
    }

    #[test]
    fn a_later_read_is_authoritative_even_with_a_lower_fence() {
        // Redis restarted empty: the fence counter starts over.
        let c = cache();
        c.apply_event(event("BEFORE", 9, T0 + 60_000));
        let start = c.start_read();
        let e = c
            .apply_read(
                "app",
                Kind::AccessToken,
                &start,
                stored("AFTER", 1, 60 * SEC),
            )
            .unwrap();
        assert_eq!(&*e.value, "AFTER");
        assert_eq!(fresh_value(&c).as_deref(), Some("AFTER"));
    }

    #[test]
    fn a_read_that_finds_nothing_keeps_an_unexpired_value_stale() {
        // Redis restarted empty while the cached value is still valid.
        let c = cache();
        let start = c.start_read();
        c.apply_read("app", Kind::AccessToken, &start, stored("A", 9, 3600 * SEC));
        c.apply_read("app", Kind::JsapiTicket, &start, stored("J", 9, 3600 * SEC));
        let start = c.start_read();
        assert!(
            c.apply_read("app", Kind::AccessToken, &start, None)
                .is_none(),
            "Redis had nothing"
        );
        assert!(fresh_value(&c).is_none(), "never trusted as fresh");
        let kept = c
            .unexpired("app", Kind::AccessToken, Instant::now())
            .expect("kept while unexpired");
        assert_eq!((&*kept.value, kept.fence), ("A", 9));
        // Other kinds are untouched.
        assert!(c.fresh("app", Kind::JsapiTicket, Instant::now()).is_some());

        // Every read asks again; it stays stale while Redis has nothing, even
        // once subscribed in a new epoch (STALE is not an epoch).
        c.invalidate_all();
        let start = c.start_read();
        assert!(c
            .apply_read("app", Kind::AccessToken, &start, None)
            .is_none());
        assert!(fresh_value(&c).is_none());
        assert!(c
            .unexpired("app", Kind::AccessToken, Instant::now())
            .is_some());
        // But never past its expiry.
        assert!(c
            .unexpired("app", Kind::AccessToken, start.sent + 3601 * SEC)
            .is_none());

        // An event with a lower fence (the counter started over) does not
        // replace it, but leaves it stale for the next read…
        assert_eq!(
            c.apply_event(event("NEW", 1, T0 + 60_000)),
            EventOutcome::Older
        );
        assert!(fresh_value(&c).is_none());
        // …whose value, from Redis, replaces it despite the lower fence.
        let start = c.start_read();
        let e = c
            .apply_read("app", Kind::AccessToken, &start, stored("NEW", 1, 60 * SEC))
            .unwrap();
        assert_eq!((&*e.value, e.fence), ("NEW", 1));
        assert_eq!(fresh_value(&c).as_deref(), Some("NEW"));
    }

    #[test]
    fn a_stale_value_is_replaced_by_an_event_at_least_as_new() {
        let c = cache();
        c.apply_event(event("A", 3, T0 + 60_000));
        let start = c.start_read();
        c.apply_read("app", Kind::AccessToken, &start, None);
        assert!(fresh_value(&c).is_none());
        assert_eq!(
            c.apply_event(event("B", 3, T0 + 60_000)),
            EventOutcome::Applied
        );
        assert_eq!(fresh_value(&c).as_deref(), Some("B"));
    }

    #[test]
    fn a_read_that_finds_nothing_drops_an_expired_value() {
        let c = cache();
        // Expired a second ago by the Redis clock.
        c.apply_event(event("OLD", 4, T0 - 1_000));
        assert!(c
            .unexpired("app", Kind::AccessToken, Instant::now())
            .is_none());
        let start = c.start_read();
        assert!(c
            .apply_read("app", Kind::AccessToken, &start, None)
            .is_none());
        assert!(fresh_value(&c).is_none());
        assert!(c
            .unexpired("app", Kind::AccessToken, Instant::now())
            .is_none());
        assert!(
            c.entries.load().get("app").is_none(),
            "the expired entry is gone"
        );
        // Nothing cached, nothing found: nothing changes.
        let start = c.start_read();
        assert!(c
            .apply_read("app", Kind::AccessToken, &start, None)
            .is_none());
        assert!(c.entries.load().is_empty());
    }

    #[test]
    fn resubscribing_invalidates_everything_once() {
        let c = cache();
        c.apply_event(event("A", 1, T0 + 60_000));
        c.set_subscribed(false);
        assert_eq!(
            fresh_value(&c).as_deref(),
            Some("A"),
            "within poll interval"
        );
        c.set_subscribed(true);
        assert!(fresh_value(&c).is_none(), "events may have been missed");
        let start = c.start_read();
        c.apply_read("app", Kind::AccessToken, &start, stored("A", 1, 60 * SEC));
        assert_eq!(fresh_value(&c).as_deref(), Some("A"));
        // A read that started before an invalidation is not trusted after it.
        let start = c.start_read();
        c.invalidate_all();
        c.apply_read("app", Kind::AccessToken, &start, stored("A", 1, 60 * SEC));
        assert!(fresh_value(&c).is_none());
    }

    #[test]
    fn while_unsubscribed_values_age_out_after_the_poll_interval() {
        let c = cache();
        let start = c.start_read();
        c.apply_read("app", Kind::AccessToken, &start, stored("A", 1, 3600 * SEC));
        c.set_subscribed(false);
        assert!(c
            .fresh("app", Kind::AccessToken, start.sent + 29 * SEC)
            .is_some());
        assert!(c
            .fresh("app", Kind::AccessToken, start.sent + 31 * SEC)
            .is_none());
        c.set_subscribed(true);
        let start = c.start_read();
        c.apply_read("app", Kind::AccessToken, &start, stored("A", 1, 3600 * SEC));
        assert!(
            c.fresh("app", Kind::AccessToken, start.sent + 600 * SEC)
                .is_some(),
            "while subscribed, age does not matter"
        );
    }

    #[test]
    fn values_without_ttl_never_expire_by_time() {
        let c = cache();
        let start = c.start_read();
        let stored = Some(Stored {
            value: "A".into(),
            fence: 0,
            ttl: None,
        });
        let e = c
            .apply_read("app", Kind::AccessToken, &start, stored)
            .unwrap();
        assert_eq!(e.expires_in(Instant::now()), Duration::MAX);
        assert_eq!(fresh_value(&c).as_deref(), Some("A"));
    }

    #[test]
    fn applied_events_wake_waiters() {
        let c = cache();
        let mut rx = c.changes();
        rx.borrow_and_update();
        c.apply_event(event("A", 3, T0 + 60_000));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        c.apply_event(event("OLD", 2, T0 + 60_000));
        assert!(!rx.has_changed().unwrap());
    }
}
