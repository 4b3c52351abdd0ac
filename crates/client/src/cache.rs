//! The in-process cache: values by (credential id, kind), the rule deciding
//! whether one may be served without asking Redis, how Redis reads are merged
//! into it, and how update events are turned into *hints*.
//!
//! Pure state and arithmetic. It must not do I/O or await, and it holds no
//! lock a reader could wait on: readers load a snapshot of the id map
//! ([`ArcSwap`]) and then the value's own slot ([`ArcSwapOption`]). The map
//! itself is copied only when a credential id gets its first value (a read
//! the application asked for); every later change — a Redis read, a
//! distrusted value, a coalesced re-read — touches one slot, O(1) in the
//! number of cached values.
//!
//! **Events are hints, never values.** Anyone allowed to `PUBLISH` on the
//! events channel could otherwise make every client serve a forged token, so
//! nothing an event claims (token, fence, expiry) is stored: [`Cache::hint`]
//! only says whether the value it names is cached (then it must be read
//! again from Redis, at most one such read in flight per value, bursts
//! coalesced into one more read) or waited for by a read (then that read is
//! woken to ask Redis at once). An event for anything else changes nothing
//! and creates nothing.
//!
//! Freshness works with two counters:
//! - the *epoch* is bumped whenever events may have been missed (the
//!   subscription came back). An entry is trusted while subscribed only if it
//!   was confirmed in the current epoch; [`STALE`] marks a single entry to be
//!   read again (every time, until Redis replaces it);
//! - the *sequence* orders cache updates, so that a Redis read never replaces
//!   a value a later-started read stored while it was in flight.

use arc_swap::{ArcSwap, ArcSwapOption};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use wxtoken_schema::Kind;

use crate::DebugStats;

/// Epoch of an entry that must be read again whatever the subscription says.
const STALE: u64 = 0;

/// Re-read state of one cached value (see [`Cache::hint`]).
const IDLE: u8 = 0;
/// One re-read is in flight.
const READING: u8 = 1;
/// One re-read is in flight and an event arrived since it was sent: read
/// once more when it is done.
const AGAIN: u8 = 2;

/// One cached value. Deliberately not `Debug`: it holds a whole token.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) value: Arc<str>,
    pub(crate) fence: u64,
    /// When the value expires; `None` when its key has no TTL.
    pub(crate) deadline: Option<Instant>,
    /// When Redis last vouched for the value.
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

/// The values of one credential id, one slot per kind, and the re-read
/// state of each. Created by the first Redis read that finds a value for the
/// id; kept (with empty slots once its values are gone) for as long as the
/// cache lives — a few dozen bytes per id the application has read.
#[derive(Default)]
pub(crate) struct Cell {
    slots: [ArcSwapOption<Entry>; SLOTS],
    rereads: [AtomicU8; SLOTS],
}

/// What [`Cache::hint`] made of an update event.
pub(crate) enum Hint {
    /// The value is neither cached nor waited for: nothing to do.
    Ignored,
    /// The value is cached and no re-read of it was in flight: the caller
    /// must read it from Redis now, then call [`Cache::reread_done`] (and
    /// read again while that says so).
    Reread(Arc<Cell>),
    /// The value is cached and a re-read is in flight: it will read once more
    /// when it is done.
    Coalesced,
    /// The value is not cached but a read is waiting for it: woken, it asks
    /// Redis at once.
    Woke,
}

/// Counters for tests and benchmarks.
#[derive(Default)]
struct Counters {
    hints: AtomicU64,
    ignored: AtomicU64,
    rereads: AtomicU64,
    coalesced: AtomicU64,
    woke: AtomicU64,
    dropped: AtomicU64,
}

/// Reads waiting for one value that is not cached.
struct Waiting {
    wake: watch::Sender<u64>,
    count: usize,
}

type Map = HashMap<Arc<str>, Arc<Cell>>;
type Wanted = HashMap<Arc<str>, [Option<Waiting>; SLOTS]>;

/// Cached values per id: one per [`Kind`].
const SLOTS: usize = wxtoken_schema::KINDS.len();

fn slot(kind: Kind) -> usize {
    match kind {
        Kind::AccessToken => 0,
        Kind::JsapiTicket => 1,
        Kind::WxCardTicket => 2,
        Kind::ComponentAccessToken => 3,
        Kind::AuthorizerList => 4,
        Kind::AgentConfigTicket => 5,
        Kind::SuiteAccessToken => 6,
    }
}

/// State shared by every clone of a client and its subscriber task.
pub(crate) struct Cache {
    cells: ArcSwap<Map>,
    /// Values a read is waiting for and that are not cached yet; an entry
    /// lives only while such a read does ([`Interest`]).
    wanted: Mutex<Wanted>,
    epoch: AtomicU64,
    seq: AtomicU64,
    subscribed: AtomicBool,
    /// Bumped whenever a read stores a value, to wake reads waiting for one.
    changes: watch::Sender<u64>,
    counters: Counters,
    poll_interval: Duration,
    expiry_margin: Duration,
}

impl Cache {
    pub(crate) fn new(poll_interval: Duration, expiry_margin: Duration) -> Cache {
        Cache {
            cells: ArcSwap::from_pointee(Map::new()),
            wanted: Mutex::new(Wanted::new()),
            epoch: AtomicU64::new(STALE + 1),
            seq: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            changes: watch::Sender::new(0),
            counters: Counters::default(),
            poll_interval,
            expiry_margin,
        }
    }

    fn cell(&self, id: &str) -> Option<Arc<Cell>> {
        self.cells.load().get(id).cloned()
    }

    /// The cell of `id`, created if there is none: only for a value a Redis
    /// read found, never for an event.
    fn cell_or_insert(&self, id: &str) -> Arc<Cell> {
        if let Some(cell) = self.cell(id) {
            return cell;
        }
        let created = Arc::new(Cell::default());
        let mut in_map = Arc::clone(&created);
        self.cells.rcu(|map| {
            if let Some(cell) = map.get(id) {
                in_map = Arc::clone(cell);
                return Arc::clone(map);
            }
            in_map = Arc::clone(&created);
            let mut map = Map::clone(map);
            map.insert(Arc::from(id), Arc::clone(&created));
            Arc::new(map)
        });
        in_map
    }

    fn entry(&self, id: &str, kind: Kind) -> Option<Arc<Entry>> {
        self.cells.load().get(id)?.slots[slot(kind)].load_full()
    }

    /// The cached value, if it may be served without asking Redis: it is more
    /// than the expiry margin from expiry, and either the subscription is live
    /// and nothing may have been missed since it was confirmed, or it was
    /// confirmed less than the poll interval ago.
    pub(crate) fn fresh(&self, id: &str, kind: Kind, now: Instant) -> Option<Arc<Entry>> {
        let entry = self.entry(id, kind)?;
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
        trusted.then_some(entry)
    }

    /// The cached value if it has not expired yet, fresh or not: what to serve
    /// when Redis cannot be asked, or answers that it has nothing (it may have
    /// lost its data). Never an expired value.
    pub(crate) fn unexpired(&self, id: &str, kind: Kind, now: Instant) -> Option<Arc<Entry>> {
        self.entry(id, kind)
            .filter(|entry| entry.deadline.is_none_or(|d| d > now))
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
    /// the fence counter started over) — unless a read sent later stored a
    /// value at least as new while this one was in flight.
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
        let cell = match &new {
            Some(_) => self.cell_or_insert(id),
            // Nothing found and nothing cached: nothing to record.
            None => self.cell(id)?,
        };
        let now = Instant::now();
        let mut in_effect = None;
        let mut stored_new = false;
        cell.slots[slot(kind)].rcu(|current| {
            stored_new = false;
            if let Some(current) = current {
                let newer_read = current.seq > start.seq
                    && new.as_ref().is_none_or(|n| current.fence >= n.fence);
                if newer_read {
                    in_effect = Some(Arc::clone(current));
                    return Some(Arc::clone(current));
                }
            }
            in_effect = new.clone();
            match (&new, current) {
                (Some(entry), _) => {
                    stored_new = true;
                    Some(Arc::clone(entry))
                }
                (None, None) => None,
                // Nothing in Redis, but the cached value is still valid:
                // keep it for when Redis cannot vouch for anything, and ask
                // again every time.
                (None, Some(current)) if current.deadline.is_none_or(|d| d > now) => {
                    if current.epoch == STALE {
                        return Some(Arc::clone(current));
                    }
                    let mut stale = Entry::clone(current);
                    stale.epoch = STALE;
                    Some(Arc::new(stale))
                }
                (None, Some(_)) => None,
            }
        });
        if stored_new {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        in_effect
    }

    /// What an update event for `kind` of `id` calls for. O(1): one map
    /// lookup in the current snapshot, one atomic update, and — only for a
    /// value that is not cached — one short lock of the waiting reads. Never
    /// creates an entry, and stores nothing the event claims.
    pub(crate) fn hint(&self, id: &str, kind: Kind) -> Hint {
        self.counters.hints.fetch_add(1, Ordering::Relaxed);
        let i = slot(kind);
        if let Some(cell) = self.cells.load().get(id) {
            if cell.slots[i].load().is_some() {
                let before = cell.rereads[i].fetch_update(
                    Ordering::AcqRel,
                    Ordering::Acquire,
                    |s| match s {
                        IDLE => Some(READING),
                        READING => Some(AGAIN),
                        _ => None,
                    },
                );
                return if before == Ok(IDLE) {
                    self.counters.rereads.fetch_add(1, Ordering::Relaxed);
                    Hint::Reread(Arc::clone(cell))
                } else {
                    self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                    Hint::Coalesced
                };
            }
        }
        if let Some(waiting) = self.wanted().get(id).and_then(|w| w[i].as_ref()) {
            waiting.wake.send_modify(|n| *n = n.wrapping_add(1));
            self.counters.woke.fetch_add(1, Ordering::Relaxed);
            return Hint::Woke;
        }
        self.counters.ignored.fetch_add(1, Ordering::Relaxed);
        Hint::Ignored
    }

    /// Ends one re-read started for [`Hint::Reread`]. `true`: done. `false`:
    /// an event arrived while it was in flight (its write may have landed
    /// after the read), so read once more — the state is "in flight" again.
    pub(crate) fn reread_done(&self, cell: &Cell, kind: Kind) -> bool {
        let state = &cell.rereads[slot(kind)];
        match state.compare_exchange(READING, IDLE, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,
            Err(_) => {
                // AGAIN: only the re-reading task leaves READING or AGAIN.
                state.store(READING, Ordering::Release);
                self.counters.rereads.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Ends a re-read started for [`Hint::Reread`] that could not be sent.
    pub(crate) fn reread_abandoned(&self, cell: &Cell, kind: Kind) {
        cell.rereads[slot(kind)].store(IDLE, Ordering::Release);
    }

    /// Registers a read waiting for `kind` of `id`: while the returned
    /// [`Interest`] lives, an event for that value (if it is not cached)
    /// wakes it.
    pub(crate) fn want(&self, id: &str, kind: Kind) -> Interest<'_> {
        let id: Arc<str> = Arc::from(id);
        let mut wanted = self.wanted();
        let waiting =
            wanted.entry(Arc::clone(&id)).or_default()[slot(kind)].get_or_insert_with(|| Waiting {
                wake: watch::Sender::new(0),
                count: 0,
            });
        waiting.count += 1;
        let wake = waiting.wake.subscribe();
        drop(wanted);
        Interest {
            cache: self,
            id,
            kind,
            wake,
        }
    }

    fn wanted(&self) -> MutexGuard<'_, Wanted> {
        // Nothing panics while holding it; if something did, the map is
        // still consistent enough for wake-ups.
        self.wanted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops serving the cached value of `kind` for `id` if it is `value`
    /// (reported refused by WeChat): the next read asks Redis.
    pub(crate) fn distrust(&self, id: &str, kind: Kind, value: &str) {
        self.mark_stale(id, kind, |current| &*current.value == value);
    }

    /// Stops trusting the cached value of `kind` for `id` whatever it is (an
    /// event named it and the re-read failed): the next read asks Redis.
    pub(crate) fn unconfirmed(&self, id: &str, kind: Kind) {
        self.mark_stale(id, kind, |_| true);
    }

    fn mark_stale(&self, id: &str, kind: Kind, mut which: impl FnMut(&Entry) -> bool) {
        let Some(cell) = self.cell(id) else {
            return;
        };
        cell.slots[slot(kind)].rcu(|current| match current {
            Some(current) if current.epoch != STALE && which(current) => {
                let mut stale = Entry::clone(current);
                stale.epoch = STALE;
                Some(Arc::new(stale))
            }
            other => other.clone(),
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

    /// A receiver that changes whenever a read stores a value.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Counts an event that was dropped unread (malformed or oversized).
    pub(crate) fn count_dropped(&self) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Sizes and counters, for tests and benchmarks. O(number of cached
    /// ids): not for hot paths.
    pub(crate) fn stats(&self) -> DebugStats {
        let cells = self.cells.load();
        let c = &self.counters;
        DebugStats {
            cached_values: cells
                .values()
                .flat_map(|cell| cell.slots.iter())
                .filter(|slot| slot.load().is_some())
                .count(),
            cached_ids: cells.len(),
            waited_for: self
                .wanted()
                .values()
                .flat_map(|w| w.iter())
                .filter(|w| w.is_some())
                .count(),
            events: c.hints.load(Ordering::Relaxed) + c.dropped.load(Ordering::Relaxed),
            ignored: c.ignored.load(Ordering::Relaxed),
            rereads: c.rereads.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            woke: c.woke.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// A read waiting for a value that may not be cached: see [`Cache::want`].
/// Dropping it unregisters the read.
pub(crate) struct Interest<'c> {
    cache: &'c Cache,
    id: Arc<str>,
    kind: Kind,
    /// Changes when an event names the value.
    pub(crate) wake: watch::Receiver<u64>,
}

impl Drop for Interest<'_> {
    fn drop(&mut self) {
        let mut wanted = self.cache.wanted();
        let Some(slots) = wanted.get_mut(&*self.id) else {
            return;
        };
        let i = slot(self.kind);
        if let Some(waiting) = &mut slots[i] {
            waiting.count = waiting.count.saturating_sub(1);
            if waiting.count == 0 {
                slots[i] = None;
            }
        }
        if slots.iter().all(Option::is_none) {
            wanted.remove(&*self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn cache() -> Cache {
        let c = Cache::new(Duration::from_secs(30), Duration::from_secs(5));
        c.set_subscribed(true);
        c
    }

    fn stored(value: &str, fence: u64, ttl: Duration) -> Option<Stored> {
        Some(Stored {
            value: value.into(),
            fence,
            ttl: Some(ttl),
        })
    }

    fn read(c: &Cache, kind: Kind, value: &str, fence: u64) {
        let start = c.start_read();
        c.apply_read("app", kind, &start, stored(value, fence, 3600 * SEC));
    }

    fn fresh_value(c: &Cache) -> Option<String> {
        c.fresh("app", Kind::AccessToken, Instant::now())
            .map(|e| e.value.to_string())
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
    fn a_read_does_not_undo_a_later_read_that_landed_while_it_was_in_flight() {
        let c = cache();
        let early = c.start_read();
        let late = c.start_read();
        c.apply_read("app", Kind::AccessToken, &late, stored("NEW", 8, 60 * SEC));
        let e = c
            .apply_read("app", Kind::AccessToken, &early, stored("OLD", 7, 60 * SEC))
            .unwrap();
        assert_eq!(&*e.value, "NEW");
        assert_eq!(fresh_value(&c).as_deref(), Some("NEW"));
        // Nor does an earlier read that found nothing.
        let early = c.start_read();
        read(&c, Kind::AccessToken, "NEWER", 9);
        let e = c
            .apply_read("app", Kind::AccessToken, &early, None)
            .unwrap();
        assert_eq!(&*e.value, "NEWER");
        assert_eq!(fresh_value(&c).as_deref(), Some("NEWER"));
    }

    #[test]
    fn a_later_read_is_authoritative_even_with_a_lower_fence() {
        // Redis restarted empty: the fence counter starts over.
        let c = cache();
        read(&c, Kind::AccessToken, "BEFORE", 9);
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
        read(&c, Kind::AccessToken, "A", 9);
        read(&c, Kind::JsapiTicket, "J", 9);
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

        // A value from Redis replaces it despite a lower fence.
        let start = c.start_read();
        let e = c
            .apply_read("app", Kind::AccessToken, &start, stored("NEW", 1, 60 * SEC))
            .unwrap();
        assert_eq!((&*e.value, e.fence), ("NEW", 1));
        assert_eq!(fresh_value(&c).as_deref(), Some("NEW"));
    }

    #[test]
    fn a_read_that_finds_nothing_drops_an_expired_value() {
        let c = cache();
        // Read 2 s ago with 1 s left: expired a second ago.
        let mut start = c.start_read();
        start.sent -= 2 * SEC;
        c.apply_read("app", Kind::AccessToken, &start, stored("OLD", 4, SEC));
        assert!(c
            .unexpired("app", Kind::AccessToken, Instant::now())
            .is_none());
        assert_eq!(c.stats().cached_values, 1);
        let start = c.start_read();
        assert!(c
            .apply_read("app", Kind::AccessToken, &start, None)
            .is_none());
        assert!(fresh_value(&c).is_none());
        assert_eq!(c.stats().cached_values, 0, "the expired entry is gone");
        // Nothing cached, nothing found: nothing is created.
        let start = c.start_read();
        assert!(c
            .apply_read("other", Kind::AccessToken, &start, None)
            .is_none());
        assert_eq!(c.stats().cached_ids, 1, "only the id that had a value");
    }

    #[test]
    fn resubscribing_invalidates_everything_once() {
        let c = cache();
        read(&c, Kind::AccessToken, "A", 1);
        c.set_subscribed(false);
        assert_eq!(
            fresh_value(&c).as_deref(),
            Some("A"),
            "within poll interval"
        );
        c.set_subscribed(true);
        assert!(fresh_value(&c).is_none(), "events may have been missed");
        read(&c, Kind::AccessToken, "A", 1);
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
    fn reads_that_store_a_value_wake_waiters() {
        let c = cache();
        let mut rx = c.changes();
        rx.borrow_and_update();
        read(&c, Kind::AccessToken, "A", 3);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        let start = c.start_read();
        c.apply_read("nothing", Kind::AccessToken, &start, None);
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn distrusted_and_unconfirmed_values_are_read_again() {
        let c = cache();
        read(&c, Kind::AccessToken, "A", 3);
        c.distrust("app", Kind::AccessToken, "OTHER");
        assert_eq!(fresh_value(&c).as_deref(), Some("A"));
        c.distrust("app", Kind::AccessToken, "A");
        assert!(fresh_value(&c).is_none());
        read(&c, Kind::AccessToken, "A", 3);
        c.unconfirmed("app", Kind::AccessToken);
        assert!(fresh_value(&c).is_none());
        assert!(c
            .unexpired("app", Kind::AccessToken, Instant::now())
            .is_some());
        // Neither creates anything.
        c.unconfirmed("ghost", Kind::AccessToken);
        c.distrust("ghost", Kind::AccessToken, "A");
        assert_eq!(c.stats().cached_ids, 1);
    }

    #[test]
    fn events_for_values_not_cached_nor_waited_for_are_ignored_and_create_nothing() {
        let c = cache();
        for n in 0..20_000 {
            let id = format!("ghost-{n}");
            assert!(matches!(c.hint(&id, Kind::AccessToken), Hint::Ignored));
        }
        // A cached id, but another kind.
        read(&c, Kind::AccessToken, "A", 3);
        assert!(matches!(c.hint("app", Kind::JsapiTicket), Hint::Ignored));
        let stats = c.stats();
        assert_eq!((stats.cached_ids, stats.cached_values), (1, 1));
        assert_eq!((stats.events, stats.ignored), (20_001, 20_001));
        assert_eq!(fresh_value(&c).as_deref(), Some("A"), "untouched");
    }

    #[test]
    fn events_for_a_cached_value_start_one_reread_and_bursts_one_more() {
        let c = cache();
        read(&c, Kind::AccessToken, "A", 3);
        let Hint::Reread(cell) = c.hint("app", Kind::AccessToken) else {
            panic!("the first event starts a re-read");
        };
        // The value is not touched by the event: still served.
        assert_eq!(fresh_value(&c).as_deref(), Some("A"));
        for _ in 0..1000 {
            assert!(matches!(c.hint("app", Kind::AccessToken), Hint::Coalesced));
        }
        // The burst arrived while the read was in flight: one more read.
        assert!(!c.reread_done(&cell, Kind::AccessToken));
        assert!(c.reread_done(&cell, Kind::AccessToken));
        // Idle again: the next event starts a new re-read.
        assert!(matches!(c.hint("app", Kind::AccessToken), Hint::Reread(_)));
        assert!(c.reread_done(&cell, Kind::AccessToken));
        let stats = c.stats();
        assert_eq!((stats.rereads, stats.coalesced), (3, 1000));
        // Other kinds of the same id have their own state.
        read(&c, Kind::JsapiTicket, "J", 3);
        assert!(matches!(c.hint("app", Kind::JsapiTicket), Hint::Reread(_)));
        assert!(matches!(c.hint("app", Kind::AccessToken), Hint::Reread(_)));
    }

    #[test]
    fn an_event_for_a_value_a_read_waits_for_wakes_it() {
        let c = cache();
        {
            let mut first = c.want("late", Kind::JsapiTicket);
            let second = c.want("late", Kind::JsapiTicket);
            first.wake.borrow_and_update();
            assert_eq!(c.stats().waited_for, 1);
            assert!(matches!(c.hint("late", Kind::AccessToken), Hint::Ignored));
            assert!(matches!(c.hint("late", Kind::JsapiTicket), Hint::Woke));
            assert!(first.wake.has_changed().unwrap());
            drop(second);
            assert!(matches!(c.hint("late", Kind::JsapiTicket), Hint::Woke));
        }
        assert_eq!(c.stats().waited_for, 0, "unregistered with the last read");
        assert!(matches!(c.hint("late", Kind::JsapiTicket), Hint::Ignored));
        assert_eq!(c.stats().cached_ids, 0, "waiting created no entry");
    }
}
