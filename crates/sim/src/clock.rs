//! The simulator's clock: every rule that depends on "now" (token issue and expiry, overlap,
//! the stable force-refresh interval, quota days, evidence times, `delay` and `hang` faults)
//! reads this one clock.
//!
//! By default it is the real monotonic clock. Tests can move it forward instantly with
//! [`crate::Admin::advance`] and freeze it with [`crate::Admin::pause_clock`], so that time-based
//! rules are checked exactly and without sleeping, while HTTP stays real (the HTTP server, its
//! connection timeouts and the clients' timeouts keep using real time). Must not: ever go
//! backwards, or change anything while nobody scripts it (an unscripted simulator runs on real
//! time exactly as before).

use std::future::Future;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How far [`crate::Admin::advance`] may move the clock in total (100 years): far beyond any
/// WeChat rule, and far from overflowing `Instant`.
pub const MAX_CLOCK_ADVANCE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The simulator clock's state, as [`crate::Admin::clock`] and `GET /_sim/clock` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockState {
    /// Simulator time since start, in ms (the `since_start_ms` of a fetch made now).
    pub elapsed_ms: u64,
    /// How much of that was added by [`crate::Admin::advance`], in ms.
    pub advanced_ms: u64,
    /// Whether the clock is paused (moves only when advanced).
    pub paused: bool,
}

/// Body of `POST /_sim/clock/advance`: `{"by": "30s"}` (a humantime duration).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Advance {
    /// How far to move the clock forward.
    #[serde(with = "humantime_serde")]
    pub by: Duration,
}

/// An advance that would take the clock past [`MAX_CLOCK_ADVANCE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooFar;

#[derive(Clone, Copy, Debug)]
struct Anchor {
    /// A real instant...
    real: Instant,
    /// ...and the simulator time at that instant. While running, simulator time moves with
    /// real time from here; while paused, it stays here.
    sim: Instant,
    paused: bool,
    /// Total of all advances.
    advanced: Duration,
}

impl Anchor {
    fn now(&self, real_now: Instant) -> Instant {
        if self.paused {
            return self.sim;
        }
        let ran = real_now.saturating_duration_since(self.real);
        // Cannot overflow in practice (advances are capped far below `Instant`'s range);
        // if it did, time stands still rather than panicking.
        self.sim.checked_add(ran).unwrap_or(self.sim)
    }
}

/// Real time plus scripted advances, optionally paused. Cheap to read; waiters
/// ([`SimClock::sleep_until`]) wake when it is advanced.
pub(crate) struct SimClock {
    started: Instant,
    anchor: watch::Sender<Anchor>,
}

impl SimClock {
    /// A running clock that starts now, at real time.
    pub(crate) fn new() -> SimClock {
        let real = Instant::now();
        SimClock {
            started: real,
            anchor: watch::Sender::new(Anchor {
                real,
                sim: real,
                paused: false,
                advanced: Duration::ZERO,
            }),
        }
    }

    /// The simulator's "now".
    pub(crate) fn now(&self) -> Instant {
        self.anchor.borrow().now(Instant::now())
    }

    /// Simulator time from start to `at` (a reading of [`SimClock::now`]).
    pub(crate) fn since_start(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.started)
    }

    /// Moves the clock forward by `by` (paused or not) and wakes every [`SimClock::sleep_until`].
    pub(crate) fn advance(&self, by: Duration) -> Result<(), TooFar> {
        let mut result = Ok(());
        self.anchor.send_if_modified(|a| {
            let advanced = match a.advanced.checked_add(by) {
                Some(total) if total <= MAX_CLOCK_ADVANCE => total,
                _ => {
                    result = Err(TooFar);
                    return false;
                }
            };
            let Some(sim) = a.sim.checked_add(by) else {
                result = Err(TooFar);
                return false;
            };
            a.sim = sim;
            a.advanced = advanced;
            true
        });
        if result.is_ok() {
            tracing::debug!(by_ms = by.as_millis(), "simulator clock advanced");
        }
        result
    }

    /// Freezes the clock at its current time; from now on it moves only when advanced.
    pub(crate) fn pause(&self) {
        self.anchor.send_modify(|a| {
            let real = Instant::now();
            a.sim = a.now(real);
            a.real = real;
            a.paused = true;
        });
    }

    /// Lets the clock run with real time again, from where it stands (no jump).
    pub(crate) fn resume(&self) {
        self.anchor.send_modify(|a| {
            if a.paused {
                a.real = Instant::now();
                a.paused = false;
            }
        });
    }

    pub(crate) fn state(&self) -> ClockState {
        let a = *self.anchor.borrow();
        let elapsed = a
            .now(Instant::now())
            .saturating_duration_since(self.started);
        ClockState {
            elapsed_ms: ms(elapsed),
            advanced_ms: ms(a.advanced),
            paused: a.paused,
        }
    }

    /// Waits until simulator time reaches `deadline` (`None`: never): in real time if nobody
    /// touches the clock, as soon as it is advanced far enough, never while it is paused short
    /// of the deadline.
    pub(crate) fn sleep_until(
        &self,
        deadline: Option<Instant>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let mut changes = self.anchor.subscribe();
        async move {
            let Some(deadline) = deadline else {
                // Beyond the end of time: wait for ever (until the request is dropped).
                return std::future::pending().await;
            };
            loop {
                // Read (and mark seen) before waiting, so that no advance is missed.
                let anchor = *changes.borrow_and_update();
                let now = anchor.now(Instant::now());
                if now >= deadline {
                    return;
                }
                let left = deadline.saturating_duration_since(now);
                if anchor.paused {
                    if changes.changed().await.is_err() {
                        // The simulator is gone and its clock stays paused for ever.
                        return std::future::pending().await;
                    }
                } else {
                    tokio::select! {
                        () = tokio::time::sleep(left) => {}
                        changed = changes.changed() => {
                            if changed.is_err() {
                                // The simulator is gone: plain real time from here.
                                return tokio::time::sleep(left).await;
                            }
                        }
                    }
                }
            }
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_now_and_pause_freezes_it() {
        let clock = SimClock::new();
        clock.pause();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        assert_eq!(clock.advance(Duration::from_secs(5)), Ok(()));
        assert_eq!(clock.now(), t0 + Duration::from_secs(5));
        let s = clock.state();
        assert!(s.paused);
        assert_eq!(s.advanced_ms, 5000);
        assert!(s.elapsed_ms >= 5000);

        // Resuming does not jump: time continues from where it stood.
        clock.resume();
        let after = clock.now();
        assert!(after >= t0 + Duration::from_secs(5));
        assert!(after < t0 + Duration::from_secs(65));
        assert!(!clock.state().paused);
    }

    #[test]
    fn advance_is_capped() {
        let clock = SimClock::new();
        assert_eq!(clock.advance(MAX_CLOCK_ADVANCE), Ok(()));
        assert_eq!(clock.advance(Duration::from_nanos(1)), Err(TooFar));
        assert_eq!(clock.advance(Duration::MAX), Err(TooFar));
        assert_eq!(
            clock.state().advanced_ms,
            u64::try_from(MAX_CLOCK_ADVANCE.as_millis()).unwrap_or(0)
        );
    }

    #[tokio::test]
    async fn sleep_ends_when_the_clock_is_advanced() {
        let clock = SimClock::new();
        clock.pause();
        let sleep = clock.sleep_until(clock.now().checked_add(Duration::from_secs(3600)));
        tokio::pin!(sleep);
        assert_eq!(clock.advance(Duration::from_secs(1800)), Ok(()));
        // `timeout(ZERO, ..)` polls the sleep once.
        assert!(tokio::time::timeout(Duration::ZERO, &mut sleep)
            .await
            .is_err());
        assert_eq!(clock.advance(Duration::from_secs(1800)), Ok(()));
        assert!(tokio::time::timeout(Duration::from_secs(10), &mut sleep)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn sleep_runs_on_real_time_when_nobody_advances() {
        let clock = SimClock::new();
        let started = Instant::now();
        let deadline = clock.now().checked_add(Duration::from_millis(50));
        clock.sleep_until(deadline).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
