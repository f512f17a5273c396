//! How many records an invocation runs at once: enough to spend its share of the budgets.
//!
//! By Little's law, an instance that may call R times a second, each job occupying its slot
//! for T (claim, call, settle: its wait for a permit left out, since that wait is what the
//! budget sets), needs R × T jobs in flight. A fixed `batch_concurrency` of 10 caps it at
//! 10 ÷ T whatever the budget: at T = 200 ms, 50 calls a second, so a 400/s budget over 4
//! instances of an API that answers in 200 ms would be half used. So an invocation runs
//! ⌈R × T × [`HEADROOM`]⌉ records at once, and [`RECEIVE`] more, never fewer than `batch_concurrency` and never more
//! than `max_in_flight`, where R is the instance's share now ([`crate::flow`]) and T its
//! smoothed service time. With no budget there is no R: `batch_concurrency` decides.
//!
//! Running more than needed costs little with a global budget (a job waits for its permit in
//! place), but with per-host budgets a job that cannot get its permit within a second leaves
//! for a delayed copy: the headroom is kept small for that reason.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Slots beyond R × T: the service time varies, and a slot freed is refilled only on the
/// invocation's next turn.
const HEADROOM: f64 = 1.25;

/// And one receive more: an invocation refills by receiving up to ten records once that many
/// fit (`crate::pull`), so it holds up to ten fewer than it may run.
const RECEIVE: usize = 10;

/// The least time [`InFlight::to_call`] gives a call.
const LEAST_CALL: Duration = Duration::from_millis(100);

/// The smoothed time a job occupies its slot, beyond its wait for a permit.
#[derive(Default)]
pub(crate) struct InFlight {
    served_s: Mutex<Option<f64>>,
}

impl InFlight {
    /// Counts a job that occupied its slot for `served` (its permit wait left out).
    pub(crate) fn observe(&self, served: Duration) {
        let sample = served.as_secs_f64();
        let mut served_s = self.served_s.lock().unwrap_or_else(PoisonError::into_inner);
        // The mean's gain of RFC 6298 (1/8), as `crate::latency` uses for calls.
        *served_s = Some(served_s.map_or(sample, |s| 0.875 * s + 0.125 * sample));
    }

    /// Records to run at once at `rate` calls a second (none: no budget), between `floor` and
    /// `ceiling`.
    pub(crate) fn capacity(&self, rate: Option<f64>, floor: usize, ceiling: usize) -> usize {
        let served_s = *self.served_s.lock().unwrap_or_else(PoisonError::into_inner);
        let (Some(rate), Some(served_s)) = (rate, served_s) else {
            return floor;
        };
        let wanted = (rate * served_s * HEADROOM).ceil() + RECEIVE as f64;
        // Saturating: an unpaced share is f64::MAX.
        let wanted = if wanted.is_finite() && wanted < ceiling as f64 {
            wanted as usize
        } else {
            ceiling
        };
        wanted.clamp(floor, ceiling.max(floor))
    }

    /// How long `records` would take to be called from now at `rate` (none: no pace known),
    /// the last one's service included, twice the smoothed time at least [`LEAST_CALL`] and
    /// at most [`crate::pull`]'s allowance for a call.
    pub(crate) fn to_call(
        &self,
        rate: Option<f64>,
        records: usize,
        call_at_most: Duration,
    ) -> Option<Duration> {
        let served_s = (*self.served_s.lock().unwrap_or_else(PoisonError::into_inner))?;
        let rate = rate.filter(|r| *r > 0.0 && r.is_finite())?;
        let call = Duration::from_secs_f64(2.0 * served_s).clamp(LEAST_CALL, call_at_most);
        Some(Duration::from_secs_f64(records as f64 / rate) + call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_any_job_and_without_a_budget_the_floor_decides() {
        let in_flight = InFlight::default();
        assert_eq!(in_flight.capacity(Some(400.0), 10, 100), 10);
        in_flight.observe(Duration::from_millis(200));
        assert_eq!(in_flight.capacity(None, 10, 100), 10);
    }

    #[test]
    fn the_share_times_the_service_time_with_headroom_within_floor_and_ceiling() {
        let in_flight = InFlight::default();
        in_flight.observe(Duration::from_millis(200));
        // 100/s × 0.2 s × 1.25, and a receive.
        assert_eq!(in_flight.capacity(Some(100.0), 10, 100), 35);
        assert_eq!(in_flight.capacity(Some(2.0), 10, 100), 11);
        assert_eq!(in_flight.capacity(Some(1.0), 12, 100), 12);
        assert_eq!(in_flight.capacity(Some(1000.0), 10, 100), 100);
        assert_eq!(in_flight.capacity(Some(f64::MAX), 10, 100), 100);
        // A ceiling below the floor leaves the floor.
        assert_eq!(in_flight.capacity(Some(1000.0), 10, 5), 10);
    }

    #[test]
    fn the_service_time_is_smoothed() {
        let in_flight = InFlight::default();
        in_flight.observe(Duration::from_millis(200));
        in_flight.observe(Duration::from_millis(1000));
        // 0.875 × 0.2 + 0.125 × 1.0 = 0.3 s: 100/s × 0.3 s × 1.25 = 37.5, and a receive.
        assert_eq!(in_flight.capacity(Some(100.0), 1, 1000), 48);
    }
}
