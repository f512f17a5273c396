//! The config's `runs` section: when a run counts as failed, when it is late, and what a tick
//! does while the previous run is in flight.

use serde::{Deserialize, Serialize};

use super::RunStatus;
use crate::target_rules::FieldError;

/// What a tick does when the previous run is still in flight (config `runs.on_overlap`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Start the new run anyway (both runs share the budgets).
    #[default]
    Allow,
    /// Record the tick as SKIPPED and publish nothing, unless the previous run is past its
    /// deadline (a stuck run must not stop the schedule for good).
    Skip,
}

/// The config's `runs` section: when a run counts as failed, when it is late, and what a tick
/// does while the previous run is in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunPolicy {
    /// The run FAILS when more jobs than this are dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerated_failure_count: Option<u64>,
    /// The run FAILS when more than this percentage of its jobs are dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerated_failure_percentage: Option<f64>,
    /// A run not finished this long after it started is overdue (the `RunOverdue` alarm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_seconds: Option<u64>,
    /// A tick while the previous run is in flight: `allow` (default) or `skip`.
    #[serde(default)]
    pub on_overlap: Overlap,
}

impl RunPolicy {
    /// Every rule the policy breaks.
    pub fn problems(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        if let Some(p) = self.tolerated_failure_percentage {
            if !(0.0..=100.0).contains(&p) {
                problems.push(FieldError::new(
                    "tolerated_failure_percentage",
                    format!("must be 0..=100, got {p}"),
                ));
            }
        }
        if self.deadline_seconds == Some(0) {
            problems.push(FieldError::new("deadline_seconds", "must be at least 1"));
        }
        problems
    }

    /// The verdict on a settled run, as Step Functions' Distributed Map judges one: FAILED when
    /// the dead-lettered jobs exceed either threshold; with neither set, any dead-lettered job
    /// fails the run.
    pub fn verdict(&self, expected: u64, dead_lettered: u64) -> RunStatus {
        let over_count = self.tolerated_failure_count.map(|n| dead_lettered > n);
        let over_percent = self
            .tolerated_failure_percentage
            .map(|p| expected > 0 && dead_lettered as f64 * 100.0 > p * expected as f64);
        let failed = match (over_count, over_percent) {
            (None, None) => dead_lettered > 0,
            (count, percent) => count.unwrap_or(false) || percent.unwrap_or(false),
        };
        if failed {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_follows_distributed_map() {
        let none = RunPolicy::default();
        assert_eq!(none.verdict(100, 0), RunStatus::Succeeded);
        assert_eq!(none.verdict(100, 1), RunStatus::Failed);
        let count = RunPolicy {
            tolerated_failure_count: Some(3),
            ..none
        };
        assert_eq!(count.verdict(100, 3), RunStatus::Succeeded);
        assert_eq!(count.verdict(100, 4), RunStatus::Failed);
        let percent = RunPolicy {
            tolerated_failure_percentage: Some(5.0),
            ..none
        };
        assert_eq!(percent.verdict(100, 5), RunStatus::Succeeded);
        assert_eq!(percent.verdict(100, 6), RunStatus::Failed);
        let both = RunPolicy {
            tolerated_failure_count: Some(10),
            tolerated_failure_percentage: Some(1.0),
            ..none
        };
        assert_eq!(
            both.verdict(100, 2),
            RunStatus::Failed,
            "either threshold fails the run"
        );
        assert!(
            RunPolicy {
                tolerated_failure_percentage: Some(101.0),
                ..none
            }
            .problems()[0]
                .field
                == "tolerated_failure_percentage"
        );
    }
}
