//! How long a call to a host is expected to take, so a job may wait for its permit until just
//! before the invocation's end instead of giving up a whole target timeout early.
//!
//! Reserving the target's full timeout before the deadline is safe but wasteful: with a 10 s
//! timeout and a 3 s function, no job could wait at all, and every job that needs a permit
//! later would be rescheduled. Instead each host gets a retransmission-timeout style estimate
//! (RFC 6298: smoothed latency + 4 × its mean deviation) from this instance's own calls; a host
//! never called yet reserves its full timeout (capped at half the invocation). A call that
//! still runs at the end is cut short there ([`crate::record`] clamps its timeout).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The least time reserved for a call: connection set-up and a round trip on a good day.
const FLOOR: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
struct Estimate {
    smoothed: f64,
    deviation: f64,
}

/// Per-host latency estimates of this instance.
#[derive(Default)]
pub(crate) struct Latencies {
    hosts: Mutex<HashMap<String, Estimate>>,
}

impl Latencies {
    /// Counts a call to `host` that took `took`.
    pub(crate) fn observe(&self, host: &str, took: Duration) {
        let sample = took.as_secs_f64();
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(estimate) = hosts.get_mut(host) else {
            // RFC 6298's first measurement: the mean is the sample, the deviation half of it.
            hosts.insert(
                host.to_owned(),
                Estimate {
                    smoothed: sample,
                    deviation: sample / 2.0,
                },
            );
            return;
        };
        // RFC 6298's gains: 1/4 for the deviation, 1/8 for the mean.
        estimate.deviation = 0.75 * estimate.deviation + 0.25 * (estimate.smoothed - sample).abs();
        estimate.smoothed = 0.875 * estimate.smoothed + 0.125 * sample;
    }

    /// The time to keep free for a call to `host` whose timeout is `timeout`, in an invocation
    /// that can work for `budget` in all.
    pub(crate) fn reserve(&self, host: &str, timeout: Duration, budget: Duration) -> Duration {
        let hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        let expected = match hosts.get(host) {
            Some(e) => Duration::from_secs_f64(e.smoothed + 4.0 * e.deviation).max(FLOOR),
            None => budget / 2,
        };
        expected.min(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);
    const BUDGET: Duration = Duration::from_secs(2);

    #[test]
    fn an_unknown_host_reserves_half_the_invocation_at_most_its_timeout() {
        let latencies = Latencies::default();
        assert_eq!(
            latencies.reserve("a", TIMEOUT, BUDGET),
            Duration::from_secs(1)
        );
        assert_eq!(
            latencies.reserve("a", Duration::from_millis(300), BUDGET),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn a_steady_host_reserves_a_little_over_its_latency_and_a_jittery_one_more() {
        let latencies = Latencies::default();
        for _ in 0..50 {
            latencies.observe("steady", Duration::from_millis(200));
        }
        let steady = latencies.reserve("steady", TIMEOUT, BUDGET);
        assert!(
            steady >= Duration::from_millis(200) && steady < Duration::from_millis(260),
            "{steady:?}"
        );
        for i in 0..50 {
            latencies.observe(
                "jittery",
                Duration::from_millis(if i % 2 == 0 { 50 } else { 350 }),
            );
        }
        let jittery = latencies.reserve("jittery", TIMEOUT, BUDGET);
        assert!(
            jittery > Duration::from_millis(600),
            "mean 200 ms, deviation 150 ms: {jittery:?}"
        );
        assert_eq!(
            latencies.reserve("other", TIMEOUT, BUDGET),
            BUDGET / 2,
            "hosts are apart"
        );
    }

    #[test]
    fn never_below_the_floor_nor_above_the_timeout() {
        let latencies = Latencies::default();
        for _ in 0..20 {
            latencies.observe("fast", Duration::from_micros(300));
            latencies.observe("slow", Duration::from_secs(30));
        }
        assert_eq!(latencies.reserve("fast", TIMEOUT, BUDGET), FLOOR);
        assert_eq!(latencies.reserve("slow", TIMEOUT, BUDGET), TIMEOUT);
    }
}
