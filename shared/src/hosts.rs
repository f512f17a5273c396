//! Host protection shared by the fleet: each target host's state, as one explicit state machine.
//!
//! Every consumer instance reads a host's state (cached for about a second) before it calls the
//! host, and reports what the call taught it. The state lives where every instance sees it (a
//! DynamoDB item per host, or a row of the embedded state file), so a 429 seen by one instance
//! slows the whole fleet down and an outage seen by five calls stops everyone calling.
//!
//! # The state machine
//! ```text
//!  rate:     factor 1.0 ──429/503──▶ factor × decrease (at most once per decrease_interval)
//!            factor recovers by increase_per_second (additively, with time) up to 1.0
//!  pause:    Retry-After on 429/503 ──▶ paused until then (every instance holds its jobs)
//!  circuit:  CLOSED ──an instance's failure_threshold-th transient failure in a row──▶ OPEN(until)
//!            OPEN ──cool-down over, one instance claims the probe──▶ HALF_OPEN(probe lease)
//!            HALF_OPEN ──probe succeeds──▶ CLOSED     HALF_OPEN ──probe fails──▶ OPEN (longer)
//!  operator: paused by `fanout hosts pause`, resumed by `resume`; rate set by `hosts set`
//! ```
//! [`HostState::apply`] is the one statement of every transition and [`HostState::gate`] of
//! what an instance may do now.
//!
//! Failures in a row are counted by each instance, which reports its streak with the failure
//! ([`HostEvent::Failed`]); the shared count is the longest streak reported since the last
//! success. The fleet's failures are not added up: an instance that sees the host healthy writes
//! nothing for a success (no write per call), so five instances failing once each between
//! hundreds of unreported successes would read as five in a row. On the deployed stack a host
//! answering 10% of its calls with a 500 had its circuit opened so, and the fleet stopped for
//! its cool-down. The cost: a host that goes down is recognised after `failure_threshold` calls
//! of one instance (about that many per instance, all failing at once) instead of of the fleet;
//! the stores apply transitions atomically the stores apply transitions atomically (a SQLite transaction,
//! a DynamoDB conditional write on `version`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::target_rules::FieldError;

/// The host key whose state applies to every host: `fanout hosts pause --all` pauses it.
pub const ALL_HOSTS: &str = "*";

/// How long a job held behind a half-open probe waits before it looks again.
const PROBE_RECHECK_MS: i64 = 1000;

/// How hosts are protected. Set in the config file's `host_protection` section.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostPolicy {
    /// Consecutive transient failures (connection errors, timeouts, 5xx) that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open the first time; doubles with each consecutive opening.
    pub cooldown_ms: u64,
    /// The longest cool-down.
    pub max_cooldown_ms: u64,
    /// Multiplicative decrease of a host's rate on 429 or 503 (0 < decrease < 1).
    pub decrease: f64,
    /// At most one decrease per this interval: a burst of 429s from calls already in flight is
    /// one signal, not many.
    pub decrease_interval_ms: u64,
    /// Additive increase back towards the budget: this fraction of the budget per second
    /// without a 429 or 503.
    pub increase_per_second: f64,
    /// The rate never drops below this fraction of the budget.
    pub min_factor: f64,
    /// How long a half-open probe may take before another instance may probe instead.
    pub probe_lease_ms: u64,
    /// How long a job held by an operator's pause waits before it looks again.
    pub hold_recheck_ms: u64,
}

impl Default for HostPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cooldown_ms: 2_000,
            max_cooldown_ms: 60_000,
            decrease: 0.5,
            decrease_interval_ms: 1_000,
            increase_per_second: 0.05,
            min_factor: 0.02,
            probe_lease_ms: 10_000,
            hold_recheck_ms: 10_000,
        }
    }
}

impl HostPolicy {
    /// Every rule the policy breaks.
    pub fn problems(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        if self.failure_threshold == 0 {
            problems.push(FieldError::new("failure_threshold", "must be at least 1"));
        }
        if self.cooldown_ms == 0 || self.cooldown_ms > self.max_cooldown_ms {
            problems.push(FieldError::new(
                "cooldown_ms",
                format!(
                    "must be 1..=max_cooldown_ms ({}), got {}",
                    self.max_cooldown_ms, self.cooldown_ms
                ),
            ));
        }
        if !(self.decrease > 0.0 && self.decrease < 1.0) {
            problems.push(FieldError::new(
                "decrease",
                format!("must be between 0 and 1 (exclusive), got {}", self.decrease),
            ));
        }
        if !(self.increase_per_second.is_finite() && self.increase_per_second > 0.0) {
            problems.push(FieldError::new(
                "increase_per_second",
                format!(
                    "must be a positive number, got {}",
                    self.increase_per_second
                ),
            ));
        }
        if !(self.min_factor > 0.0 && self.min_factor <= 1.0) {
            problems.push(FieldError::new(
                "min_factor",
                format!("must be in (0, 1], got {}", self.min_factor),
            ));
        }
        if self.probe_lease_ms == 0 {
            problems.push(FieldError::new("probe_lease_ms", "must be at least 1"));
        }
        if self.hold_recheck_ms == 0
            || Duration::from_millis(self.hold_recheck_ms) > crate::queue::MAX_DELAY
        {
            problems.push(FieldError::new(
                "hold_recheck_ms",
                format!(
                    "must be 1..=900000 (SQS's longest delay), got {}",
                    self.hold_recheck_ms
                ),
            ));
        }
        problems
    }

    fn cooldown(&self, opens: u32) -> i64 {
        let ms = self
            .cooldown_ms
            .saturating_mul(1u64 << opens.min(16))
            .min(self.max_cooldown_ms);
        i64::try_from(ms).unwrap_or(i64::MAX)
    }
}

/// The circuit breaker of one host.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "state", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Circuit {
    /// Calls flow.
    #[default]
    Closed,
    /// No calls until `until_ms`; then one probe.
    Open {
        /// End of the cool-down, ms since the epoch.
        until_ms: i64,
    },
    /// One instance is probing; the others hold their jobs until the probe's lease ends.
    HalfOpen {
        /// End of the probe's lease, ms since the epoch.
        probe_until_ms: i64,
    },
}

/// One host's shared state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostState {
    /// The rate multiplier set by the last decrease (0 < factor ≤ 1).
    pub factor: f64,
    /// When the last decrease happened, ms since the epoch: the increase counts from here.
    pub factor_at_ms: i64,
    /// `Retry-After` pause: no calls before this, ms since the epoch.
    pub paused_until_ms: i64,
    /// Paused by an operator until resumed.
    pub operator_paused: bool,
    /// A budget an operator set at runtime (requests/s, for the whole fleet).
    pub operator_rate: Option<f64>,
    /// Transient failures in a row: the longest streak an instance reported since the last
    /// success ([`HostEvent::Failed`]).
    pub consecutive_failures: u32,
    /// The circuit breaker.
    pub circuit: Circuit,
    /// Openings in a row without a successful call between them (the cool-down doubles).
    pub opens: u32,
}

impl Default for HostState {
    fn default() -> Self {
        Self {
            factor: 1.0,
            factor_at_ms: 0,
            paused_until_ms: 0,
            operator_paused: false,
            operator_rate: None,
            consecutive_failures: 0,
            circuit: Circuit::Closed,
            opens: 0,
        }
    }
}

/// Something an instance learnt about a host, or an operator's command.
#[derive(Debug, Clone, PartialEq)]
pub enum HostEvent {
    /// A call succeeded (2xx, or any answer that is not a transient failure).
    Succeeded,
    /// A call failed transiently without asking us to slow down: connection error, timeout, 5xx.
    Failed {
        /// The reporting instance's transient failures in a row for this host, this one
        /// included (any other answer ends a streak).
        streak: u32,
    },
    /// The host asked us to slow down: 429, or 503 (`failure` also counts it for the circuit).
    Throttled {
        /// The `Retry-After` it sent, if any.
        retry_after_ms: Option<i64>,
        /// For 503, the reporting instance's streak ([`HostEvent::Failed`]): the host may be
        /// down, not only busy. `None` for 429.
        failure: Option<u32>,
    },
    /// An instance wants to send the half-open probe.
    ProbeClaimed,
    /// `fanout hosts pause`.
    Paused,
    /// `fanout hosts resume`.
    Resumed,
    /// `fanout hosts set --rate` (`None`: back to the config's budget).
    RateSet(Option<f64>),
}

/// What an instance may do with a job for a host right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gate {
    /// Call it (at the host's current rate).
    Open,
    /// The circuit's cool-down is over: claim the probe ([`HostEvent::ProbeClaimed`]); whoever
    /// wins calls, the others hold.
    Probe,
    /// Do not call before `until_ms`; the job waits (never failed for it).
    Hold {
        /// When to look again, ms since the epoch.
        until_ms: i64,
        /// Why.
        reason: HoldReason,
    },
}

/// Why jobs for a host are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// `fanout hosts pause`.
    OperatorPaused,
    /// The host's `Retry-After`.
    RetryAfter,
    /// The circuit is open.
    CircuitOpen,
    /// Another instance is probing the host.
    ProbeInFlight,
}

impl HoldReason {
    /// For logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::OperatorPaused => "paused by an operator",
            HoldReason::RetryAfter => "host asked to wait (Retry-After)",
            HoldReason::CircuitOpen => "circuit open",
            HoldReason::ProbeInFlight => "circuit half-open, probe in flight",
        }
    }
}

impl HostState {
    /// The rate multiplier at `now_ms`: the last decrease plus the additive recovery since.
    pub fn factor_at(&self, now_ms: i64, policy: &HostPolicy) -> f64 {
        let seconds = (now_ms - self.factor_at_ms).max(0) as f64 / 1000.0;
        (self.factor + policy.increase_per_second * seconds).clamp(policy.min_factor, 1.0)
    }

    /// The fleet's rate for this host at `now_ms`, given the config's budget `ceiling`
    /// (requests/s): the operator's rate if set (never above `operator_max`), times the factor.
    pub fn rate(&self, ceiling: f64, operator_max: f64, now_ms: i64, policy: &HostPolicy) -> f64 {
        let base = self.operator_rate.map_or(ceiling, |r| r.min(operator_max));
        base * self.factor_at(now_ms, policy)
    }

    /// What an instance may do now.
    pub fn gate(&self, now_ms: i64, policy: &HostPolicy) -> Gate {
        let hold = |until_ms, reason| Gate::Hold { until_ms, reason };
        if self.operator_paused {
            return hold(
                now_ms + i64::try_from(policy.hold_recheck_ms).unwrap_or(i64::MAX),
                HoldReason::OperatorPaused,
            );
        }
        if self.paused_until_ms > now_ms {
            return hold(self.paused_until_ms, HoldReason::RetryAfter);
        }
        match self.circuit {
            Circuit::Closed => Gate::Open,
            Circuit::Open { until_ms } if until_ms > now_ms => {
                hold(until_ms, HoldReason::CircuitOpen)
            }
            // A probe usually answers long before its lease ends: look again soon.
            Circuit::HalfOpen { probe_until_ms } if probe_until_ms > now_ms => hold(
                probe_until_ms.min(now_ms + PROBE_RECHECK_MS),
                HoldReason::ProbeInFlight,
            ),
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => Gate::Probe,
        }
    }

    /// The state after `event` at `now_ms`, or `None` when the event changes nothing (no write
    /// is needed; for [`HostEvent::ProbeClaimed`]: the claim is refused).
    pub fn apply(&self, event: &HostEvent, now_ms: i64, policy: &HostPolicy) -> Option<HostState> {
        let mut next = self.clone();
        match event {
            HostEvent::Succeeded => {
                if self.consecutive_failures == 0
                    && self.circuit == Circuit::Closed
                    && self.opens == 0
                {
                    return None;
                }
                next.consecutive_failures = 0;
                next.circuit = Circuit::Closed;
                next.opens = 0;
            }
            HostEvent::Failed { streak } => next.count_failure(*streak, now_ms, policy),
            HostEvent::Throttled {
                retry_after_ms,
                failure,
            } => {
                let interval = i64::try_from(policy.decrease_interval_ms).unwrap_or(i64::MAX);
                if now_ms - self.factor_at_ms >= interval {
                    next.factor =
                        (self.factor_at(now_ms, policy) * policy.decrease).max(policy.min_factor);
                    next.factor_at_ms = now_ms;
                }
                if let Some(delay) = retry_after_ms {
                    next.paused_until_ms = self.paused_until_ms.max(now_ms + delay);
                }
                if let Some(streak) = failure {
                    next.count_failure(*streak, now_ms, policy);
                }
            }
            HostEvent::ProbeClaimed => {
                if self.gate(now_ms, policy) != Gate::Probe {
                    return None;
                }
                next.circuit = Circuit::HalfOpen {
                    probe_until_ms: now_ms
                        + i64::try_from(policy.probe_lease_ms).unwrap_or(i64::MAX),
                };
            }
            HostEvent::Paused => next.operator_paused = true,
            HostEvent::Resumed => next.operator_paused = false,
            HostEvent::RateSet(rate) => next.operator_rate = *rate,
        }
        (next != *self).then_some(next)
    }

    fn count_failure(&mut self, streak: u32, now_ms: i64, policy: &HostPolicy) {
        self.consecutive_failures = self.consecutive_failures.max(streak.max(1));
        let open = |state: &mut Self| {
            state.circuit = Circuit::Open {
                until_ms: now_ms + policy.cooldown(state.opens),
            };
            state.opens = state.opens.saturating_add(1);
        };
        match self.circuit {
            Circuit::Closed if self.consecutive_failures >= policy.failure_threshold => open(self),
            // The probe failed: open again, for longer.
            Circuit::HalfOpen { .. } => open(self),
            // A call that was already in flight when the circuit opened, or a closed circuit
            // below the threshold.
            Circuit::Closed | Circuit::Open { .. } => {}
        }
    }

    /// A one-line description for `fanout hosts`: circuit and pause.
    pub fn describe(&self, now_ms: i64) -> String {
        let mut parts = Vec::new();
        if self.operator_paused {
            parts.push("paused by operator".to_owned());
        }
        if self.paused_until_ms > now_ms {
            parts.push(format!(
                "Retry-After for {:.1} s",
                (self.paused_until_ms - now_ms) as f64 / 1000.0
            ));
        }
        match self.circuit {
            Circuit::Closed => {}
            Circuit::Open { until_ms } => parts.push(format!(
                "circuit open for {:.1} s",
                (until_ms - now_ms).max(0) as f64 / 1000.0
            )),
            Circuit::HalfOpen { .. } => parts.push("circuit half-open (probing)".to_owned()),
        }
        if parts.is_empty() {
            "ok".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HostPolicy {
        HostPolicy {
            failure_threshold: 3,
            cooldown_ms: 1000,
            max_cooldown_ms: 4000,
            ..HostPolicy::default()
        }
    }

    #[test]
    fn failures_of_different_instances_do_not_add_up() {
        // Three instances each fail once between successes none of them wrote: no streak.
        let p = policy();
        let mut s = HostState::default();
        for now in [10, 20, 30] {
            s = s
                .apply(&HostEvent::Failed { streak: 1 }, now, &p)
                .unwrap_or(s);
        }
        assert_eq!((s.consecutive_failures, s.circuit), (1, Circuit::Closed));
        // One instance's third failure in a row opens it.
        s = s.apply(&HostEvent::Failed { streak: 3 }, 40, &p).unwrap();
        assert_eq!(s.circuit, Circuit::Open { until_ms: 1040 });
    }

    #[test]
    fn consecutive_failures_open_the_circuit_and_one_probe_closes_it() {
        let p = policy();
        let mut s = HostState::default();
        for (streak, now) in [(1, 10), (2, 20)] {
            s = s.apply(&HostEvent::Failed { streak }, now, &p).unwrap();
            assert_eq!(s.gate(now, &p), Gate::Open);
        }
        s = s.apply(&HostEvent::Failed { streak: 3 }, 30, &p).unwrap();
        assert_eq!(s.circuit, Circuit::Open { until_ms: 1030 });
        assert_eq!(
            s.gate(500, &p),
            Gate::Hold {
                until_ms: 1030,
                reason: HoldReason::CircuitOpen
            }
        );
        assert_eq!(s.gate(1030, &p), Gate::Probe);
        assert!(
            s.apply(&HostEvent::ProbeClaimed, 500, &p).is_none(),
            "no probe during the cool-down"
        );
        let probing = s.apply(&HostEvent::ProbeClaimed, 1030, &p).unwrap();
        assert!(
            probing.apply(&HostEvent::ProbeClaimed, 1031, &p).is_none(),
            "one probe at a time"
        );
        assert_eq!(
            probing.gate(1031, &p),
            Gate::Hold {
                until_ms: 2031,
                reason: HoldReason::ProbeInFlight
            },
            "looks again within a second"
        );
        // The probe fails: open again for twice as long.
        let reopened = probing
            .apply(&HostEvent::Failed { streak: 1 }, 1100, &p)
            .unwrap();
        assert_eq!(reopened.circuit, Circuit::Open { until_ms: 3100 });
        // A probe that succeeds closes it and resets everything.
        let closed = reopened
            .apply(&HostEvent::ProbeClaimed, 3100, &p)
            .unwrap()
            .apply(&HostEvent::Succeeded, 3150, &p)
            .unwrap();
        assert_eq!(
            (closed.circuit, closed.consecutive_failures, closed.opens),
            (Circuit::Closed, 0, 0)
        );
        assert!(
            closed.apply(&HostEvent::Succeeded, 3200, &p).is_none(),
            "a success on a healthy host writes nothing"
        );
    }

    #[test]
    fn a_probe_whose_holder_died_can_be_taken_over() {
        let p = policy();
        let s = HostState {
            circuit: Circuit::HalfOpen {
                probe_until_ms: 100,
            },
            ..HostState::default()
        };
        assert_eq!(s.gate(100, &p), Gate::Probe);
        assert!(s.apply(&HostEvent::ProbeClaimed, 100, &p).is_some());
    }

    #[test]
    fn throttling_decreases_once_per_interval_pauses_and_recovers_additively() {
        let p = HostPolicy {
            decrease: 0.5,
            decrease_interval_ms: 1000,
            increase_per_second: 0.1,
            min_factor: 0.1,
            ..policy()
        };
        let s = HostState::default();
        let once = s
            .apply(
                &HostEvent::Throttled {
                    retry_after_ms: Some(2000),
                    failure: None,
                },
                5000,
                &p,
            )
            .unwrap();
        assert_eq!((once.factor, once.paused_until_ms), (0.5, 7000));
        assert_eq!(
            once.gate(6000, &p),
            Gate::Hold {
                until_ms: 7000,
                reason: HoldReason::RetryAfter
            }
        );
        // 429s of calls already in flight: no further decrease within the interval.
        let burst = once.apply(
            &HostEvent::Throttled {
                retry_after_ms: Some(1000),
                failure: None,
            },
            5100,
            &p,
        );
        assert!(
            burst.is_none(),
            "the pause already runs longer and the factor is not lowered again"
        );
        assert!(
            (once.factor_at(7000, &p) - 0.7).abs() < 1e-9,
            "+0.1 per second"
        );
        assert_eq!(once.factor_at(60_000, &p), 1.0, "never above the budget");
        let twice = once
            .apply(
                &HostEvent::Throttled {
                    retry_after_ms: None,
                    failure: None,
                },
                6000,
                &p,
            )
            .unwrap();
        assert!((twice.factor - 0.3).abs() < 1e-9, "0.6 × 0.5");
        let mut floor = twice;
        for t in 0..20 {
            floor = floor
                .apply(
                    &HostEvent::Throttled {
                        retry_after_ms: None,
                        failure: None,
                    },
                    7000 + t * 1000,
                    &p,
                )
                .unwrap_or(floor);
        }
        assert!(
            floor.factor_at(floor.factor_at_ms, &p) >= 0.1,
            "never below min_factor"
        );
        assert_eq!(HostState::default().rate(100.0, 100.0, 0, &p), 100.0);
        assert!((once.rate(100.0, 100.0, 5000, &p) - 50.0).abs() < 1e-9);
    }

    #[test]
    fn a_503_also_counts_for_the_circuit_but_a_429_does_not() {
        let p = policy();
        let mut s = HostState::default();
        for t in 1..6 {
            s = s
                .apply(
                    &HostEvent::Throttled {
                        retry_after_ms: None,
                        failure: None,
                    },
                    t * 2000,
                    &p,
                )
                .unwrap();
        }
        assert_eq!(s.circuit, Circuit::Closed);
        for streak in 1..=3 {
            s = s
                .apply(
                    &HostEvent::Throttled {
                        retry_after_ms: None,
                        failure: Some(streak),
                    },
                    20_000 + i64::from(streak),
                    &p,
                )
                .unwrap();
        }
        assert!(matches!(s.circuit, Circuit::Open { .. }));
    }

    #[test]
    fn operator_pause_holds_until_resumed_and_rate_is_capped() {
        let p = policy();
        let paused = HostState::default()
            .apply(&HostEvent::Paused, 0, &p)
            .unwrap();
        assert!(matches!(
            paused.gate(1_000_000, &p),
            Gate::Hold {
                reason: HoldReason::OperatorPaused,
                ..
            }
        ));
        let resumed = paused.apply(&HostEvent::Resumed, 10, &p).unwrap();
        assert_eq!(resumed.gate(10, &p), Gate::Open);
        let set = resumed
            .apply(&HostEvent::RateSet(Some(500.0)), 10, &p)
            .unwrap();
        assert_eq!(
            set.rate(100.0, 200.0, 10, &p),
            200.0,
            "never above what the config allows"
        );
        assert_eq!(set.rate(100.0, 1000.0, 10, &p), 500.0);
    }

    #[test]
    fn policy_rules_name_their_field() {
        let bad = HostPolicy {
            failure_threshold: 0,
            decrease: 1.0,
            min_factor: 0.0,
            hold_recheck_ms: 1_000_000,
            ..HostPolicy::default()
        };
        let fields: Vec<&str> = bad.problems().iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "failure_threshold",
                "decrease",
                "min_factor",
                "hold_recheck_ms"
            ]
        );
        assert!(HostPolicy::default().problems().is_empty());
    }
}
