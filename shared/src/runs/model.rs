//! A run as the ledger holds it: its status, counters, and what the producer writes first.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::RunPolicy;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    /// Jobs are published or in flight.
    Running,
    /// Every job settled and the dead-lettered ones stayed within the tolerated failures.
    Succeeded,
    /// Every job settled and more were dead-lettered than tolerated.
    Failed,
    /// The tick did not run: the previous run was still in flight (`on_overlap: skip`).
    Skipped,
}

impl RunStatus {
    /// The stored name: `RUNNING`, `SUCCEEDED`, `FAILED`, `SKIPPED`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Succeeded => "SUCCEEDED",
            RunStatus::Failed => "FAILED",
            RunStatus::Skipped => "SKIPPED",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RUNNING" => Some(RunStatus::Running),
            "SUCCEEDED" => Some(RunStatus::Succeeded),
            "FAILED" => Some(RunStatus::Failed),
            "SKIPPED" => Some(RunStatus::Skipped),
            _ => None,
        }
    }
}

/// A run's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    /// Jobs published for the run.
    pub expected: u64,
    /// Jobs that succeeded.
    pub succeeded: u64,
    /// Jobs in the DLQ.
    pub dead_lettered: u64,
    /// Dead-lettered jobs by class ([`crate::FailureKind::class`]).
    pub failures_by_reason: BTreeMap<String, u64>,
    /// Dead-lettered jobs by host.
    pub failures_by_host: BTreeMap<String, u64>,
}

impl RunCounts {
    /// Jobs that reached an end (succeeded or dead-lettered).
    pub fn settled(&self) -> u64 {
        self.succeeded + self.dead_lettered
    }

    /// Jobs not settled yet.
    pub fn in_flight(&self) -> u64 {
        self.expected.saturating_sub(self.settled())
    }
}

/// What one source of a run's list gave: kept in the run record, so `runs show` says what a run
/// called, and a re-run of the tick reads the same versions or says the list changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRead {
    /// The source's name.
    pub name: String,
    /// Where its rows came from.
    pub location: String,
    /// The objects read, with their versions (`s3://` sources).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<crate::ObjectVersion>,
    /// Rows read (one job each).
    pub rows: u64,
    /// SHA-256 of the jobs' IDs and values in order, first 16 hex digits: two reads with the
    /// same digest gave the same jobs.
    pub digest: String,
}

/// One run as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// The run's ID: the pipeline and the tick's scheduled time (one tick, one ID), or the
    /// operator's `--run-id`; the key of its ledger item.
    pub run_id: String,
    /// Its state.
    pub status: RunStatus,
    /// The schedule's time for the tick, if it came from a schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
    /// SHA-256 of the config the producer published from (first 16 hex digits).
    pub config_digest: String,
    /// When the producer began the run, ms since the epoch.
    pub started_at_ms: i64,
    /// When it was finished, ms since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    /// When it becomes overdue, ms since the epoch (`runs.deadline_seconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_at_ms: Option<i64>,
    /// The failure budget it is judged by.
    pub policy: RunPolicy,
    /// Its counters.
    #[serde(flatten)]
    pub counts: RunCounts,
    /// Whether its completion event went out.
    pub event_sent: bool,
    /// Why it was skipped, for a SKIPPED run; why its list could not be read, for a run that
    /// failed before publishing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// What each source of its list gave.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceRead>,
}

impl RunRecord {
    /// Finished minus started, once finished.
    pub fn duration_ms(&self) -> Option<i64> {
        self.finished_at_ms.map(|f| f - self.started_at_ms)
    }

    /// Whether it is RUNNING past its deadline at `now_ms`.
    pub fn is_overdue(&self, now_ms: i64) -> bool {
        self.status == RunStatus::Running && self.deadline_at_ms.is_some_and(|d| now_ms > d)
    }
}

/// What the producer writes before it publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStart {
    /// The run's ID: the pipeline and the tick's scheduled time (one tick, one ID), or the
    /// operator's `--run-id`; the key of its ledger item.
    pub run_id: String,
    /// The schedule's time, if the tick came from a schedule.
    pub scheduled_at: Option<String>,
    /// See [`RunRecord::config_digest`].
    pub config_digest: String,
    /// Now, ms since the epoch.
    pub started_at_ms: i64,
    /// Jobs in the run.
    pub expected: u64,
    /// The config's `runs` section.
    pub policy: RunPolicy,
    /// What each source of the list gave.
    pub sources: Vec<SourceRead>,
}

impl RunStart {
    /// When the run becomes overdue.
    pub fn deadline_at_ms(&self) -> Option<i64> {
        self.policy.deadline_seconds.map(|s| {
            self.started_at_ms.saturating_add(
                i64::try_from(s)
                    .unwrap_or(i64::MAX / 2000)
                    .saturating_mul(1000),
            )
        })
    }
}

/// The answer to [`RunLedger::begin`](super::RunLedger::begin).
#[derive(Debug, Clone, PartialEq)]
pub enum Begin {
    /// The run was created.
    Started,
    /// The run already existed (a second producer of the same tick); nothing was changed.
    Existing(Box<RunRecord>),
}

/// A timestamp in ms since the epoch as RFC 3339 (UTC, ms).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_say_what_is_settled_and_in_flight() {
        let counts = RunCounts {
            expected: 8,
            succeeded: 5,
            dead_lettered: 1,
            ..RunCounts::default()
        };
        assert_eq!((counts.settled(), counts.in_flight()), (6, 2));
    }
}
