//! This instance's pacing: `governor` limiters whose rates follow the fleet.
//!
//! A budget in the config is the whole fleet's. An instance's share is that budget (times the
//! host's current rate factor) divided by the instances at work ([`fanout_shared::fleet`]), so
//! it changes at runtime: a limiter is replaced when its share moves by more than 1%. A
//! replacement has no more permits to give than the old one had (and never the waiters' spare
//! cell), so a rate change never lets an extra call through.
//!
//! Waiting is deadline-aware: a permit due after the invocation can use it is not waited for;
//! the caller reschedules the job for when the permit is due ([`Deferred`]), and a horizon per
//! key spaces such jobs out one share-period apart, so they come back when they can be spent.
//!
//! Waiting is also short when it would block others: while the instance holds jobs of other
//! hosts, a job waits in place only for a permit due within [`HOLD_IN_PLACE`], counting the
//! jobs already waiting for the same key ahead of it. A job of a slow host that waited longer
//! would hold its slot (and, on Lambda, its invocation) while jobs of faster hosts queue behind
//! it: head-of-line blocking. Leaving at once costs one delayed copy, and the budget still
//! decides when the job is called. With only its own host's jobs around, leaving would free a
//! slot nobody needs and bring the job back in whole seconds (SQS's delay unit): it waits.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A waiter sleeps until its permit is due, but the timer wakes it up to a millisecond late. A
/// GCRA limiter checked after its theoretical arrival time restarts its schedule from the late
/// instant, so at 200/s (5 ms apart) every permit would lose a tenth of its period. A limiter
/// with a burst of two releases waiters one period early and so absorbs the lateness, but would
/// let two calls through at once after an idle spell. So a fast share of burst 1 gets a limiter
/// of burst 2 whose spare cell is only for waiters: a job that finds the limiter idle takes both
/// cells ([`Limiters::acquire`]), and a replacement never has it to give ([`Limiters::current`]).
/// The long-run rate stays the share. A slow share (periods of 50 ms and more, where the
/// lateness costs at most 2%) has none, so a fleet of many slow instances keeps its peak to the
/// budget and the burst.
fn cells(share: Share) -> u32 {
    if share.burst <= 1 && share.per_second > SPARE_CELL_ABOVE {
        2
    } else {
        share.burst.max(1)
    }
}

/// Shares faster than this (requests/s) get the waiters' spare cell ([`cells`]).
const SPARE_CELL_ABOVE: f64 = 20.0;

/// A permit and the spare cell, taken together by a newcomer to an idle limiter.
const TWO: NonZeroU32 = NonZeroU32::MIN.saturating_add(1);

/// The longest a job waits in place for its permit, its queue included: no shorter than an SQS
/// delay's granularity (a copy cannot come back sooner than a second), so leaving never makes a
/// job later than waiting would.
pub(crate) const HOLD_IN_PLACE: Duration = Duration::from_secs(1);

/// Longest single sleep while waiting for a permit: the share is looked at again after it, since
/// rates change while a job waits.
const RECHECK: Duration = Duration::from_millis(250);

/// A permit could not be had in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deferred {
    /// How long from now the job should come back.
    pub delay: Duration,
}

/// What a limiter paces: the global budget or one host's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Global,
    Host(String),
}

/// A rate share: requests per second and burst, for this instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Share {
    pub per_second: f64,
    pub burst: u32,
}

struct Slot {
    share: Share,
    limiter: Arc<DefaultDirectRateLimiter>,
    /// When the next rescheduled job for this key should come back.
    horizon: Instant,
    /// Jobs waiting in place for this key now: a newcomer's permit comes after theirs.
    waiting: usize,
}

/// This instance's limiters, by key.
pub(crate) struct Limiters {
    slots: Mutex<HashMap<Key, Slot>>,
    clock: DefaultClock,
}

fn limiter(share: Share) -> DefaultDirectRateLimiter {
    // Validation refuses zero or absurd rates; the clamp keeps governor's quota non-zero anyway.
    let period = Duration::from_secs_f64((1.0 / share.per_second).clamp(1e-9, 86_400.0));
    let burst = NonZeroU32::new(cells(share)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
    RateLimiter::direct(quota.allow_burst(burst))
}

fn period(share: Share) -> Duration {
    Duration::from_secs_f64((1.0 / share.per_second).clamp(1e-9, 86_400.0))
}

impl Limiters {
    pub(crate) fn new() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    /// The limiter for `key` at `share`, replaced if the share moved by more than 1%.
    fn current(&self, key: &Key, share: Share) -> Arc<DefaultDirectRateLimiter> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(key) {
            let moved =
                (slot.share.per_second - share.per_second).abs() > slot.share.per_second * 0.01;
            if !moved && slot.share.burst == share.burst {
                return slot.limiter.clone();
            }
        }
        let fresh = Arc::new(limiter(share));
        let horizon = match slots.get(key) {
            Some(old) => {
                if old.limiter.check().is_err() {
                    // The old limiter was spent: so is the new one.
                    while fresh.check().is_ok() {}
                } else {
                    // It had a permit to give: the new one has the share's burst, never the
                    // waiters' spare cell too.
                    for _ in share.burst.max(1)..cells(share) {
                        let _ = fresh.check();
                    }
                }
                old.horizon
            }
            None => Instant::now(),
        };
        let waiting = slots.get(key).map_or(0, |old| old.waiting);
        slots.insert(
            key.clone(),
            Slot {
                share,
                limiter: fresh.clone(),
                horizon,
                waiting,
            },
        );
        fresh
    }

    /// Waits for a permit of `key`, whose share `share()` may change while waiting, unless it is
    /// due after `until` or, counting the jobs already waiting for `key`, later than `hold` from
    /// now. Returns how long it waited.
    pub(crate) async fn acquire(
        &self,
        key: &Key,
        share: impl Fn() -> Share,
        until: Instant,
        hold: Duration,
    ) -> Result<Duration, Deferred> {
        let started = Instant::now();
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            let current = share();
            let limiter = self.current(key, current);
            // A newcomer to an idle burst-1 limiter spends its spare cell too (see `cells`).
            let idle = waiting.is_none()
                && cells(current) > current.burst
                && limiter.check_n(TWO).is_ok_and(|c| c.is_ok());
            match if idle { Ok(()) } else { limiter.check() } {
                Ok(()) => return Ok(started.elapsed()),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    if waiting.is_none() {
                        // Behind the jobs already waiting: each takes one period of the share.
                        let ahead = self.waiting(key);
                        let due = wait + period(current).mul_f64(ahead as f64);
                        if Instant::now() + due > until || due > hold {
                            return Err(self.defer(key, current, due));
                        }
                        waiting = Some(Waiting::join(self, key));
                    } else if Instant::now() + wait > until {
                        return Err(self.defer(key, current, wait));
                    }
                    // Another task may take the permit first; then we go round again.
                    tokio::time::sleep(wait.min(RECHECK)).await;
                }
            }
        }
    }

    /// How many jobs wait in place for `key` now.
    fn waiting(&self, key: &Key) -> usize {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.get(key).map_or(0, |slot| slot.waiting)
    }

    /// Books a comeback slot for a job that cannot be called in time: `wait` from now at the
    /// earliest, and one share-period after the previous job rescheduled for this key.
    fn defer(&self, key: &Key, share: Share, wait: Duration) -> Deferred {
        let now = Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = slots.get_mut(key) else {
            return Deferred { delay: wait };
        };
        let at = slot.horizon.max(now + wait);
        slot.horizon = at + period(share);
        Deferred { delay: at - now }
    }
}

/// A job counted among its key's waiters while it waits, and no longer once it stops (permit,
/// deferral or a dropped future alike).
struct Waiting<'a> {
    limiters: &'a Limiters,
    key: Key,
}

impl<'a> Waiting<'a> {
    fn join(limiters: &'a Limiters, key: &Key) -> Self {
        let mut slots = limiters
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get_mut(key) {
            slot.waiting += 1;
        }
        Self {
            limiters,
            key: key.clone(),
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut slots = self
            .limiters
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get_mut(&self.key) {
            slot.waiting = slot.waiting.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(per_second: f64) -> impl Fn() -> Share {
        move || Share {
            per_second,
            burst: 1,
        }
    }

    #[tokio::test]
    async fn paces_at_the_share() {
        // 10/s: 6 permits take about 0.5 s (the first is free).
        let limiters = Limiters::new();
        let until = Instant::now() + Duration::from_secs(10);
        let started = Instant::now();
        for _ in 0..6 {
            limiters
                .acquire(&Key::Global, share(10.0), until, HOLD_IN_PLACE)
                .await
                .unwrap();
        }
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_permit_past_the_deadline_is_deferred_and_deferrals_are_spaced() {
        let limiters = Limiters::new();
        let until = Instant::now() + Duration::from_millis(200);
        let key = Key::Host("a".into());
        limiters
            .acquire(&key, share(1.0), until, HOLD_IN_PLACE)
            .await
            .unwrap();
        let started = Instant::now();
        let first = limiters
            .acquire(&key, share(1.0), until, HOLD_IN_PLACE)
            .await
            .unwrap_err();
        let second = limiters
            .acquire(&key, share(1.0), until, HOLD_IN_PLACE)
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "no waiting for a permit that comes too late"
        );
        assert!(
            first.delay > Duration::from_millis(800) && first.delay <= Duration::from_secs(1),
            "{first:?}"
        );
        assert!(
            second.delay >= first.delay + Duration::from_millis(990),
            "one period apart: {first:?} {second:?}"
        );
    }

    #[tokio::test]
    async fn a_job_whose_queue_is_longer_than_the_hold_leaves_at_once() {
        // 2/s: the first job calls at once, the next two wait 0.5 s and 1 s in place (the hold),
        // the fourth would wait 1.5 s behind them: it leaves at once, booked for then.
        let limiters = Limiters::new();
        let until = Instant::now() + Duration::from_secs(10);
        let key = Key::Host("slow".into());
        let started = Instant::now();
        let jobs = (0..4).map(|_| async {
            let result = limiters
                .acquire(&key, share(2.0), until, HOLD_IN_PLACE)
                .await;
            (result, started.elapsed())
        });
        let outcomes = futures_util::future::join_all(jobs).await;
        let deferred: Vec<_> = outcomes
            .iter()
            .filter_map(|(r, at)| r.err().map(|d| (d, *at)))
            .collect();
        assert_eq!(deferred.len(), 1, "{outcomes:?}");
        let (d, left_at) = deferred[0];
        assert!(left_at < Duration::from_millis(100), "left at {left_at:?}");
        assert!(
            d.delay >= Duration::from_millis(1400) && d.delay <= Duration::from_millis(1500),
            "booked behind the two waiting: {d:?}"
        );
        // Once they are served, nobody counts as waiting: the next job waits in place again.
        assert_eq!(limiters.waiting(&key), 0);
        assert!(limiters
            .acquire(&key, share(2.0), until, HOLD_IN_PLACE)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn with_no_hold_a_job_waits_for_its_turn_until_the_deadline() {
        // The same queue as above with no hold (the instance holds only this host's jobs).
        let limiters = Limiters::new();
        let until = Instant::now() + Duration::from_secs(10);
        let key = Key::Host("only".into());
        let jobs = (0..4).map(|_| limiters.acquire(&key, share(2.0), until, Duration::MAX));
        let outcomes = futures_util::future::join_all(jobs).await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    }

    #[tokio::test]
    async fn an_idle_limiter_lets_exactly_its_burst_through() {
        let until = Instant::now();
        for burst in [1, 3] {
            let limiters = Limiters::new();
            // Fast enough for a burst-1 limiter to hold the waiters' spare cell.
            let share = move || Share {
                per_second: 100.0,
                burst,
            };
            for _ in 0..burst {
                limiters
                    .acquire(&Key::Global, share, until, HOLD_IN_PLACE)
                    .await
                    .unwrap();
            }
            // The spare cell of a burst-1 limiter is not handed to a newcomer.
            assert!(
                limiters
                    .acquire(&Key::Global, share, until, HOLD_IN_PLACE)
                    .await
                    .is_err(),
                "burst {burst}: one call too many"
            );
        }
    }

    #[tokio::test]
    async fn a_rate_change_does_not_hand_out_a_second_burst() {
        let limiters = Limiters::new();
        let until = Instant::now() + Duration::from_millis(50);
        limiters
            .acquire(&Key::Global, share(1.0), until, HOLD_IN_PLACE)
            .await
            .unwrap();
        // The share doubles: still no permit for about half a second.
        assert!(limiters
            .acquire(&Key::Global, share(2.0), until, HOLD_IN_PLACE)
            .await
            .is_err());
        // Keys are independent.
        limiters
            .acquire(&Key::Host("b".into()), share(1.0), until, HOLD_IN_PLACE)
            .await
            .unwrap();
    }
}
