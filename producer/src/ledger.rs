//! The run's ledger entry before publishing: the schedule guard, then the run record.
//!
//! [`decide_tick`] is the one statement of the guard: a tick whose previous run is still in
//! flight follows the config's `runs.on_overlap`; a tick whose own run already finished (a
//! re-delivered schedule event after the run ended) publishes nothing, because the idempotency
//! records that absorbed the first copies may have expired.

use fanout_shared::runs::{Begin, Overlap, RunLedger, RunRecord, RunStart, RunStatus};
use fanout_shared::{BackendError, PipelineConfig};

/// What a tick does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TickDecision {
    /// Begin the run (or find it begun) and publish.
    Publish,
    /// Record the run as SKIPPED, for this reason, and publish nothing.
    Skip(String),
}

/// What [`begin`] found: publish (the run is new or still running), or not.
#[derive(Debug, Clone, PartialEq)]
pub enum Started {
    /// The run was created.
    New,
    /// The run existed and is still running (a second producer of the same tick): publish
    /// again, the message IDs are the same.
    Resumed,
    /// The run existed and is finished (or skipped): nothing to publish.
    AlreadyEnded(RunStatus),
    /// The tick was skipped: the previous run is in flight.
    Skipped(String),
}

/// The guard: whether a tick for `run_id` may start while `previous` (the latest other run) is
/// in its state at `now_ms`.
pub(crate) fn decide_tick(
    previous: Option<&RunRecord>,
    run_id: &str,
    on_overlap: Overlap,
    now_ms: i64,
) -> TickDecision {
    match previous {
        Some(p)
            if on_overlap == Overlap::Skip
                && p.run_id != run_id
                && p.status == RunStatus::Running
                && !p.is_overdue(now_ms) =>
        {
            TickDecision::Skip(format!(
                "the previous run {} is still in flight ({} of {} jobs settled)",
                p.run_id,
                p.counts.settled(),
                p.counts.expected
            ))
        }
        _ => TickDecision::Publish,
    }
}

/// The run record of a tick of `expected` jobs.
pub fn run_start(
    config: &PipelineConfig,
    run_id: &str,
    scheduled_at: Option<String>,
    expected: u64,
) -> RunStart {
    RunStart {
        run_id: run_id.to_owned(),
        scheduled_at,
        config_digest: config.digest(),
        started_at_ms: fanout_shared::now_ms(),
        expected,
        policy: config.runs,
        sources: Vec::new(),
    }
}

/// `{tick.last_success_at}` for a tick scheduled at `scheduled_at_ms`: the scheduled time (else
/// the start) of the latest SUCCEEDED run scheduled before it, among the latest
/// [`LAST_SUCCESS_RUNS`]; `default` before the first. Runs after the tick are left out, so a
/// re-run of an old tick renders what it rendered the first time.
pub(crate) async fn last_success_at(
    ledger: &dyn RunLedger,
    run_id: &str,
    scheduled_at_ms: i64,
    default: &str,
) -> Result<String, BackendError> {
    let runs = ledger.list(LAST_SUCCESS_RUNS).await?;
    let time = |r: &RunRecord| {
        r.scheduled_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
            .unwrap_or(r.started_at_ms)
    };
    Ok(runs
        .iter()
        .filter(|r| r.status == RunStatus::Succeeded && r.run_id != run_id)
        .filter(|r| time(r) < scheduled_at_ms)
        .max_by_key(|r| time(r))
        .map(|r| fanout_shared::runs::rfc3339(time(r)))
        .unwrap_or_else(|| default.to_owned()))
}

/// How far back [`last_success_at`] looks.
const LAST_SUCCESS_RUNS: usize = 100;

/// Applies the guard and writes the run record.
pub(crate) async fn begin(
    ledger: &dyn RunLedger,
    start: &RunStart,
) -> Result<Started, BackendError> {
    if start.policy.on_overlap == Overlap::Skip {
        // The latest run that is not this one (a re-delivered tick is not an overlap).
        let latest = ledger.list(2).await?;
        let previous = latest
            .iter()
            .find(|r| r.run_id != start.run_id && r.status != RunStatus::Skipped);
        if let TickDecision::Skip(reason) = decide_tick(
            previous,
            &start.run_id,
            start.policy.on_overlap,
            start.started_at_ms,
        ) {
            ledger.skip(start, &reason).await?;
            return Ok(Started::Skipped(reason));
        }
    }
    Ok(match ledger.begin(start).await? {
        Begin::Started => Started::New,
        Begin::Existing(run) if run.status == RunStatus::Running => Started::Resumed,
        Begin::Existing(run) => Started::AlreadyEnded(run.status),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_shared::runs::{RunCounts, RunPolicy};

    fn run(id: &str, status: RunStatus, deadline_at_ms: Option<i64>) -> RunRecord {
        RunRecord {
            run_id: id.into(),
            status,
            scheduled_at: None,
            config_digest: String::new(),
            started_at_ms: 0,
            finished_at_ms: None,
            deadline_at_ms,
            policy: RunPolicy::default(),
            counts: RunCounts {
                expected: 10,
                succeeded: 4,
                ..RunCounts::default()
            },
            event_sent: false,
            note: None,
            sources: Vec::new(),
        }
    }

    #[test]
    fn the_guard_skips_only_a_live_overlap() {
        let running = run("r1", RunStatus::Running, Some(1000));
        let skip = decide_tick(Some(&running), "r2", Overlap::Skip, 500);
        assert!(
            matches!(&skip, TickDecision::Skip(why) if why.contains("r1") && why.contains("4 of 10")),
            "{skip:?}"
        );
        assert_eq!(
            decide_tick(Some(&running), "r2", Overlap::Allow, 500),
            TickDecision::Publish,
            "allow"
        );
        assert_eq!(
            decide_tick(Some(&running), "r1", Overlap::Skip, 500),
            TickDecision::Publish,
            "the same tick again"
        );
        assert_eq!(
            decide_tick(Some(&running), "r2", Overlap::Skip, 1001),
            TickDecision::Publish,
            "a run past its deadline blocks nothing"
        );
        assert_eq!(
            decide_tick(
                Some(&run("r1", RunStatus::Succeeded, None)),
                "r2",
                Overlap::Skip,
                500
            ),
            TickDecision::Publish
        );
        assert_eq!(
            decide_tick(None, "r2", Overlap::Skip, 500),
            TickDecision::Publish
        );
    }
}
