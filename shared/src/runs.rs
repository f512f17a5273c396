//! The run ledger: one record per tick, so a run can be seen (counts, failures, duration) and
//! ends exactly once, with one completion event.
//!
//! # A run's life
//! ```text
//!   (none) ──begin (producer, before it publishes)──▶ RUNNING ──finish (settled = expected)──▶ SUCCEEDED | FAILED
//!   (none) ──skip (previous run in flight, `on_overlap: skip`)──▶ SKIPPED
//! ```
//! - [`RunLedger::begin`] is a conditional create: a second producer of the same tick (a
//!   re-delivered schedule event, a manual re-run) finds the run and changes nothing.
//! - Counting: a job's terminal transitions in the idempotency state machine
//!   ([`crate::idempotency`]) add to its run's counters *in the same atomic write* (one SQLite
//!   transaction; one DynamoDB `TransactWriteItems`), so a duplicate, a crash or a replay can
//!   never count a job twice or not at all. IN_PROGRESS → COMPLETED counts a success;
//!   REJECTED → DEAD_LETTERED counts a dead-lettering under its [`reason_class`]; a replayed job
//!   that then succeeds moves from dead-lettered to succeeded ([`Tally::undo`]).
//! - Counters are split over up to [`SHARDS`] shards by message ID, each with its own expected
//!   count, so no single item takes every write of a large run. A shard is *done* when its
//!   settled count reaches its expected count; the run is settled when every shard is done.
//! - [`RunLedger::finish`] moves RUNNING to its verdict ([`RunPolicy::verdict`]) conditionally:
//!   of the consumers that settle a run's last jobs at once, exactly one wins, and only the
//!   winner puts the completion event ([`completion_event`]), then marks it sent. A finisher
//!   that crashed before the event is covered by the producer's watchdog ([`sweep`]).

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::BackendError;
use crate::metrics::{Metric, MetricSet};
use crate::target_rules::FieldError;

/// Counter shards per run (at most): each takes about 1/16 of a large run's writes.
pub(crate) const SHARDS: u32 = 16;

/// `source` of every fanout event.
pub(crate) const EVENT_SOURCE: &str = "fanout";

/// The shard counting the job `message_id` (FNV-1a of the ID, so every writer agrees).
pub fn shard_of(message_id: &str) -> u32 {
    let hash = message_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % u64::from(SHARDS)) as u32
}

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

/// A run's counters, summed over its shards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    /// Jobs published for the run.
    pub expected: u64,
    /// Jobs that succeeded.
    pub succeeded: u64,
    /// Jobs in the DLQ.
    pub dead_lettered: u64,
    /// Dead-lettered jobs by [`reason_class`].
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

    /// Adds another shard's counters.
    pub(crate) fn add(&mut self, other: &RunCounts) {
        self.expected += other.expected;
        self.succeeded += other.succeeded;
        self.dead_lettered += other.dead_lettered;
        for (into, from) in [
            (&mut self.failures_by_reason, &other.failures_by_reason),
            (&mut self.failures_by_host, &other.failures_by_host),
        ] {
            for (k, v) in from {
                *into.entry(k.clone()).or_default() += v;
            }
        }
        self.failures_by_reason.retain(|_, v| *v > 0);
        self.failures_by_host.retain(|_, v| *v > 0);
    }
}

/// One run as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// The run's ID.
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
    /// Why it was skipped, for a SKIPPED run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
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
    /// The run's ID.
    pub run_id: String,
    /// The schedule's time, if the tick came from a schedule.
    pub scheduled_at: Option<String>,
    /// See [`RunRecord::config_digest`].
    pub config_digest: String,
    /// Now, ms since the epoch.
    pub started_at_ms: i64,
    /// Jobs per shard ([`shard_of`] of each job's message ID); shards without jobs are left out.
    pub expected_per_shard: BTreeMap<u32, u64>,
    /// The config's `runs` section.
    pub policy: RunPolicy,
}

impl RunStart {
    /// Jobs in the run.
    pub fn expected(&self) -> u64 {
        self.expected_per_shard.values().sum()
    }

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

/// The answer to [`RunLedger::begin`].
#[derive(Debug, Clone, PartialEq)]
pub enum Begin {
    /// The run was created.
    Started,
    /// The run already existed (a second producer of the same tick); nothing was changed.
    Existing(Box<RunRecord>),
}

/// What one terminal transition of a job adds to its run: written by the idempotency store in
/// the same atomic write as the transition.
#[derive(Debug, Clone, PartialEq)]
pub struct Tally<'a> {
    /// The job's run.
    pub run_id: &'a str,
    /// The job's host (failures by host).
    pub host: &'a str,
    /// For a dead-lettering: its [`reason_class`].
    pub reason: Option<&'a str>,
    /// The class the job is already counted under as dead-lettered (a replayed job), taken
    /// back by this transition.
    pub undo: Option<&'a str>,
}

/// What a [`Tally`] changes in its run's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Added to `succeeded`.
    pub succeeded: i64,
    /// Added to `dead_lettered`.
    pub dead_lettered: i64,
    /// Added to failures by reason (no zero entries).
    pub reasons: Vec<(String, i64)>,
    /// Added to failures by host (no zero entries).
    pub hosts: Vec<(String, i64)>,
}

impl Tally<'_> {
    /// The change to the run's counters when the job completes (`succeeded`) or is
    /// dead-lettered: the new outcome, minus the dead-lettering it replaces (`undo`).
    pub(crate) fn delta(&self, succeeded: bool) -> Delta {
        let mut reasons: BTreeMap<&str, i64> = BTreeMap::new();
        let mut hosts = 0;
        let mut delta = Delta::default();
        if let Some(old) = self.undo {
            delta.dead_lettered -= 1;
            *reasons.entry(old).or_default() -= 1;
            hosts -= 1;
        }
        if succeeded {
            delta.succeeded += 1;
        } else {
            delta.dead_lettered += 1;
            *reasons.entry(self.reason.unwrap_or("unknown")).or_default() += 1;
            hosts += 1;
        }
        delta.reasons = reasons
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .map(|(k, n)| (k.to_owned(), n))
            .collect();
        if hosts != 0 {
            delta.hosts.push((self.host.to_owned(), hosts));
        }
        delta
    }
}

/// A run ledger: DynamoDB (the idempotency table) or the embedded SQLite file.
#[async_trait]
pub trait RunLedger: Send + Sync {
    /// Creates the run as RUNNING with its per-shard expected counts, unless it exists.
    async fn begin(&self, start: &RunStart) -> Result<Begin, BackendError>;

    /// Records a tick that did not run (SKIPPED) with the reason, unless the run exists.
    async fn skip(&self, start: &RunStart, reason: &str) -> Result<(), BackendError>;

    /// One run with its counters, if it exists.
    async fn get(&self, run_id: &str) -> Result<Option<RunRecord>, BackendError>;

    /// The latest `limit` runs, newest first.
    async fn list(&self, limit: usize) -> Result<Vec<RunRecord>, BackendError>;

    /// Whether the run is settled after jobs of `shards` settled: registers each of those
    /// shards that is now done, and answers the run (with its counters) when every shard is
    /// done and the run is still RUNNING; `None` otherwise (or if the run has no ledger).
    async fn settled(
        &self,
        run_id: &str,
        shards: &[u32],
    ) -> Result<Option<RunRecord>, BackendError>;

    /// RUNNING → `status`, finished at `finished_at_ms`. True for the one caller that moved it.
    async fn finish(
        &self,
        run_id: &str,
        status: RunStatus,
        finished_at_ms: i64,
    ) -> Result<bool, BackendError>;

    /// Notes that the completion event went out.
    async fn event_sent(&self, run_id: &str) -> Result<(), BackendError>;
}

/// Where completion events go: EventBridge, or the embedded state file.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Puts one event with [`EVENT_SOURCE`], `detail_type` and `detail`.
    async fn put(&self, detail_type: &str, detail: &Value) -> Result<(), BackendError>;
}

/// A low-cardinality class of a dead-lettering reason, the key of "failures by reason": the
/// HTTP status where there is one (`HTTP 404`; `retries exhausted (HTTP 503)`), else the
/// reason up to its first `:` (at most 60 characters).
pub fn reason_class(reason: &str, status: Option<u16>) -> String {
    let exhausted = reason.starts_with("transient failure on all");
    match (exhausted, status) {
        (true, Some(code)) => format!("retries exhausted (HTTP {code})"),
        (true, None) => "retries exhausted".to_owned(),
        (false, Some(code)) => format!("HTTP {code}"),
        (false, None)
            if reason.contains("the consumer's config") || reason.contains("allowed hosts") =>
        {
            "refused by the consumer's config".to_owned()
        }
        (false, None) => reason
            .split(':')
            .next()
            .unwrap_or(reason)
            .chars()
            .take(60)
            .collect::<String>()
            .trim()
            .to_owned(),
    }
}

/// The completion event of a finished run: its detail-type and detail.
pub(crate) fn completion_event(run: &RunRecord, pipeline: &str) -> (&'static str, Value) {
    let detail_type = if run.status == RunStatus::Failed {
        "Run Failed"
    } else {
        "Run Succeeded"
    };
    let detail = json!({
        "pipeline": pipeline,
        "run_id": run.run_id,
        "status": run.status,
        "expected": run.counts.expected,
        "succeeded": run.counts.succeeded,
        "dead_lettered": run.counts.dead_lettered,
        "failures_by_reason": run.counts.failures_by_reason,
        "failures_by_host": run.counts.failures_by_host,
        "scheduled_at": run.scheduled_at,
        "started_at": rfc3339(run.started_at_ms),
        "finished_at": run.finished_at_ms.map(rfc3339),
        "duration_ms": run.duration_ms(),
        "policy": run.policy,
    });
    (detail_type, detail)
}

/// A timestamp in ms since the epoch as RFC 3339 (UTC, ms).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A run that one call finished (or found finished with its event missing), and whether its
/// event went out.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The run, as finished.
    pub run: RunRecord,
    /// False when the event could not be put (the watchdog puts it later).
    pub event_sent: bool,
}

/// Finishes `run_id` if the jobs just settled in `shards` were its last: the verdict, the
/// conditional finish, and (for the one winner) the completion event. `None` when the run is
/// not settled, has no ledger, or another caller finished it.
pub async fn finish_if_settled(
    ledger: &dyn RunLedger,
    bus: &dyn EventBus,
    pipeline: &str,
    run_id: &str,
    shards: &[u32],
) -> Result<Option<Finished>, BackendError> {
    let Some(run) = ledger.settled(run_id, shards).await? else {
        return Ok(None);
    };
    finish(ledger, bus, pipeline, run).await
}

/// Finishes a settled RUNNING run: verdict, conditional finish, event for the winner.
async fn finish(
    ledger: &dyn RunLedger,
    bus: &dyn EventBus,
    pipeline: &str,
    mut run: RunRecord,
) -> Result<Option<Finished>, BackendError> {
    let status = run
        .policy
        .verdict(run.counts.expected, run.counts.dead_lettered);
    let now = crate::now_ms();
    if !ledger.finish(&run.run_id, status, now).await? {
        return Ok(None);
    }
    run.status = status;
    run.finished_at_ms = Some(now);
    let event_sent = send_event(ledger, bus, pipeline, &run).await;
    run.event_sent = event_sent;
    Ok(Some(Finished { run, event_sent }))
}

async fn send_event(
    ledger: &dyn RunLedger,
    bus: &dyn EventBus,
    pipeline: &str,
    run: &RunRecord,
) -> bool {
    let (detail_type, detail) = completion_event(run, pipeline);
    match bus.put(detail_type, &detail).await {
        Ok(()) => {
            if let Err(e) = ledger.event_sent(&run.run_id).await {
                tracing::warn!(run_id = %run.run_id, error = %e, "completion event put, but not marked sent: the watchdog may put it again");
            }
            tracing::info!(run_id = %run.run_id, status = run.status.as_str(), "run finished, completion event put");
            true
        }
        Err(e) => {
            tracing::warn!(run_id = %run.run_id, error = %e, "run finished, completion event not put: the watchdog retries it");
            false
        }
    }
}

/// Run metrics of finished runs, with the `Pipeline` dimension: `RunsSucceeded`,
/// `RunsFailed`, `RunDuration`.
pub fn run_metrics(pipeline: &str, finished: &[RunRecord]) -> MetricSet {
    let mut metrics = MetricSet::new([("Pipeline".to_owned(), pipeline.to_owned())]);
    for run in finished {
        metrics.count(
            if run.status == RunStatus::Failed {
                Metric::RunsFailed
            } else {
                Metric::RunsSucceeded
            },
            1,
        );
        if let Some(ms) = run.duration_ms() {
            metrics.sample(Metric::RunDuration, ms as f64);
        }
    }
    metrics
}

/// What one [`sweep`] found among the latest runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sweep {
    /// Runs this sweep finished (their last settlement's finish was missed).
    pub finished: Vec<RunRecord>,
    /// Finished runs whose missing completion event this sweep put.
    pub events_sent: usize,
    /// Runs RUNNING past their deadline.
    pub overdue: Vec<RunRecord>,
}

/// The watchdog: over the latest `limit` runs, finishes the settled ones still RUNNING (a
/// consumer crashed between the last count and the finish), puts completion events that were
/// missed, and reports the overdue ones.
pub async fn sweep(
    ledger: &dyn RunLedger,
    bus: &dyn EventBus,
    pipeline: &str,
    limit: usize,
    now_ms: i64,
) -> Result<Sweep, BackendError> {
    let mut found = Sweep::default();
    for run in ledger.list(limit).await? {
        tend(ledger, bus, pipeline, run, now_ms, &mut found).await?;
    }
    Ok(found)
}

/// [`sweep`] of one run: what a caller that drove the run itself (`fanout run`) does at the end.
pub async fn sweep_run(
    ledger: &dyn RunLedger,
    bus: &dyn EventBus,
    pipeline: &str,
    run_id: &str,
    now_ms: i64,
) -> Result<Sweep, BackendError> {
    let mut found = Sweep::default();
    if let Some(run) = ledger.get(run_id).await? {
        tend(ledger, bus, pipeline, run, now_ms, &mut found).await?;
    }
    Ok(found)
}

/// The watchdog's rule for one run: finish it if settled, put its missed event, or note it
/// overdue.
async fn tend(
    ledger: &dyn RunLedger,
    bus: &dyn EventBus,
    pipeline: &str,
    run: RunRecord,
    now_ms: i64,
    found: &mut Sweep,
) -> Result<(), BackendError> {
    match run.status {
        RunStatus::Running if run.counts.expected > 0 && run.counts.in_flight() == 0 => {
            if let Some(done) = finish(ledger, bus, pipeline, run).await? {
                found.events_sent += usize::from(done.event_sent);
                found.finished.push(done.run);
            }
        }
        RunStatus::Running if run.is_overdue(now_ms) => found.overdue.push(run),
        RunStatus::Succeeded | RunStatus::Failed if !run.event_sent => {
            found.events_sent += usize::from(send_event(ledger, bus, pipeline, &run).await);
        }
        _ => {}
    }
    Ok(())
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

    #[test]
    fn shards_spread_and_agree() {
        let mut seen = [0u32; SHARDS as usize];
        for i in 0..1600 {
            let id = crate::job::message_id("run", &format!("t{i}"));
            assert_eq!(shard_of(&id), shard_of(&id));
            seen[shard_of(&id) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (60..=140).contains(&n)), "{seen:?}");
    }

    #[test]
    fn reason_classes_are_few() {
        assert_eq!(reason_class("HTTP 400 Bad Request", Some(400)), "HTTP 400");
        assert_eq!(
            reason_class(
                "transient failure on all 8 attempts, the last: HTTP 503",
                Some(503)
            ),
            "retries exhausted (HTTP 503)"
        );
        assert_eq!(
            reason_class(
                "transient failure on all 3 attempts, the last: timeout",
                None
            ),
            "retries exhausted"
        );
        assert_eq!(
            reason_class("target id \"x\" is not in the consumer's config", None),
            "refused by the consumer's config"
        );
        assert_eq!(
            reason_class("refused address: 10.0.0.1 is private", None),
            "refused address"
        );
    }

    #[test]
    fn a_replay_moves_a_job_between_outcomes() {
        let tally = |reason, undo| Tally {
            run_id: "r",
            host: "h",
            reason,
            undo,
        };
        let fresh = tally(None, None).delta(true);
        assert_eq!(
            (
                fresh.succeeded,
                fresh.dead_lettered,
                fresh.reasons.len(),
                fresh.hosts.len()
            ),
            (1, 0, 0, 0)
        );
        let dead = tally(Some("HTTP 400"), None).delta(false);
        assert_eq!(
            (dead.dead_lettered, dead.reasons, dead.hosts),
            (1, vec![("HTTP 400".into(), 1)], vec![("h".into(), 1)])
        );
        let revived = tally(None, Some("HTTP 400")).delta(true);
        assert_eq!(
            (
                revived.succeeded,
                revived.dead_lettered,
                revived.reasons,
                revived.hosts
            ),
            (1, -1, vec![("HTTP 400".into(), -1)], vec![("h".into(), -1)])
        );
        let again = tally(Some("HTTP 400"), Some("HTTP 400")).delta(false);
        assert_eq!(
            again,
            Delta::default(),
            "a replay that fails the same way changes nothing"
        );
    }

    #[test]
    fn counts_add_over_shards() {
        let mut total = RunCounts::default();
        let a = RunCounts {
            expected: 5,
            succeeded: 4,
            dead_lettered: 1,
            failures_by_reason: [("HTTP 400".into(), 1)].into(),
            failures_by_host: [("h".into(), 1)].into(),
        };
        let b = RunCounts {
            expected: 3,
            succeeded: 1,
            failures_by_reason: [("HTTP 400".into(), 0)].into(),
            ..RunCounts::default()
        };
        total.add(&a);
        total.add(&b);
        assert_eq!(
            (
                total.expected,
                total.settled(),
                total.in_flight(),
                total.failures_by_reason.len()
            ),
            (8, 6, 2, 1)
        );
    }
}
