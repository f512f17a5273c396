//! The retry schedule of transient failures: exponential backoff with full jitter.
//!
//! The `n`-th transient failure of a job waits a uniformly drawn delay in
//! `[0, min(cap, base × 2^(n-1))]` (AWS's "full jitter": copies of many failing jobs spread out
//! instead of coming back together), never less than the target's `Retry-After`. After
//! `max_attempts` calls that all failed transiently, the job goes to the DLQ with its last
//! reason.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::target_rules::FieldError;

/// The config file's `retry` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// The first retry's upper bound, ms.
    pub base_ms: u64,
    /// The longest delay, ms.
    pub cap_ms: u64,
    /// Calls a job gets before a transient failure sends it to the DLQ.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_ms: 200,
            cap_ms: 60_000,
            max_attempts: 8,
        }
    }
}

/// The longest `cap_ms`: SQS's visibility ceiling, 12 hours.
pub(crate) const MAX_CAP_MS: u64 = 12 * 60 * 60 * 1000;

impl RetryPolicy {
    /// Every rule the policy breaks.
    pub fn problems(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        if self.base_ms == 0 {
            problems.push(FieldError::new("base_ms", "must be at least 1"));
        }
        if self.cap_ms < self.base_ms || self.cap_ms > MAX_CAP_MS {
            problems.push(FieldError::new(
                "cap_ms",
                format!(
                    "must be base_ms ({})..={MAX_CAP_MS}, got {}",
                    self.base_ms, self.cap_ms
                ),
            ));
        }
        if !(1..=100).contains(&self.max_attempts) {
            problems.push(FieldError::new(
                "max_attempts",
                format!("must be 1..=100, got {}", self.max_attempts),
            ));
        }
        problems
    }

    /// Whether a job whose `failures`-th call just failed transiently gets another call.
    pub fn gives_up(&self, failures: u32) -> bool {
        failures >= self.max_attempts
    }

    /// The delay before the retry after the `failures`-th transient failure (1-based), drawn
    /// with `unit`, a uniform number in `[0, 1)`, and floored by the target's `Retry-After`.
    pub fn delay(&self, failures: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        let exponent = failures.saturating_sub(1).min(32);
        let ceiling = self
            .base_ms
            .saturating_mul(1u64 << exponent)
            .min(self.cap_ms);
        let drawn = Duration::from_millis((ceiling as f64 * unit.clamp(0.0, 1.0)) as u64);
        drawn.max(retry_after.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_full_jitter_and_retry_after_as_floor() {
        let p = RetryPolicy {
            base_ms: 100,
            cap_ms: 1000,
            max_attempts: 5,
        };
        assert_eq!(p.delay(1, 0.999_999, None), Duration::from_millis(99));
        assert_eq!(p.delay(2, 0.5, None), Duration::from_millis(100));
        assert_eq!(p.delay(3, 0.999_999, None), Duration::from_millis(399));
        assert_eq!(
            p.delay(30, 0.999_999, None),
            Duration::from_millis(999),
            "capped"
        );
        assert_eq!(
            p.delay(1, 0.0, None),
            Duration::ZERO,
            "full jitter reaches zero"
        );
        assert_eq!(
            p.delay(1, 0.5, Some(Duration::from_secs(3))),
            Duration::from_secs(3),
            "Retry-After is the floor"
        );
        assert!(!p.gives_up(4) && p.gives_up(5));
    }

    #[test]
    fn rules_name_their_field() {
        let bad = RetryPolicy {
            base_ms: 0,
            cap_ms: MAX_CAP_MS + 1,
            max_attempts: 0,
        };
        let fields: Vec<&str> = bad.problems().iter().map(|e| e.field).collect();
        assert_eq!(fields, ["base_ms", "cap_ms", "max_attempts"]);
        assert!(RetryPolicy::default().problems().is_empty());
    }
}
