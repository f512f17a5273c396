//! Finishing runs: the consumer that settles a run's last jobs, and the watchdog that covers a
//! finisher which died, share one [`Finisher`].

use super::bus::completion_event;
use super::{EventBus, RunLedger, RunRecord, RunStart, RunStatus};
use crate::error::BackendError;
use crate::metrics::{Metric, MetricSet};

/// Pauses between the tries of a completion event's put (and of its mark as sent) beyond the
/// SDK's own retries.
const EVENT_RETRY_PAUSES_MS: [u64; 3] = [200, 600, 1_500];

/// Runs `op`, and again after each of [`EVENT_RETRY_PAUSES_MS`] while it fails retryably.
async fn with_pauses<F, Fut>(mut op: F) -> Result<(), BackendError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BackendError>>,
{
    let mut result = op().await;
    for pause_ms in EVENT_RETRY_PAUSES_MS {
        match &result {
            Err(e) if e.retryable => {
                tracing::warn!(error = %e, pause_ms, "trying again");
                tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
                result = op().await;
            }
            _ => break,
        }
    }
    result
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

/// What one sweep found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sweep {
    /// Runs this sweep finished (their last settlement's finish was missed).
    pub finished: Vec<RunRecord>,
    /// Finished runs whose missing completion event this sweep put.
    pub events_sent: usize,
    /// Runs RUNNING past their deadline.
    pub overdue: Vec<RunRecord>,
}

/// The one place a run is finished: its verdict, the conditional RUNNING → verdict move (of
/// several callers at once, exactly one wins), and the completion event, put only by the winner.
/// The clock is the caller's, so every rule here can be tested at any time.
#[derive(Clone, Copy)]
pub struct Finisher<'a> {
    ledger: &'a dyn RunLedger,
    bus: &'a dyn EventBus,
    pipeline: &'a str,
}

impl std::fmt::Debug for Finisher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finisher")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl<'a> Finisher<'a> {
    /// Finishes runs of `ledger`, putting events on `bus` for `pipeline` (`detail.pipeline`).
    pub fn new(ledger: &'a dyn RunLedger, bus: &'a dyn EventBus, pipeline: &'a str) -> Self {
        Self {
            ledger,
            bus,
            pipeline,
        }
    }

    /// Finishes `run_id` if `counts` (its counters after a batch was counted) show every job
    /// settled. `None` when the run is not settled, has no ledger, or another caller finished
    /// it.
    pub async fn finish_if_settled(
        &self,
        run_id: &str,
        counts: &super::RunCounts,
        now_ms: i64,
    ) -> Result<Option<Finished>, BackendError> {
        if counts.settled() < counts.expected {
            return Ok(None);
        }
        match self.ledger.get(run_id).await? {
            Some(run) if run.status == RunStatus::Running => self.finish(run, now_ms).await,
            _ => Ok(None),
        }
    }

    /// The watchdog: over the latest `limit` runs, finishes the settled ones still RUNNING (a
    /// consumer crashed between the last count and the finish), puts completion events that
    /// were missed, and reports the overdue ones.
    pub async fn sweep(&self, limit: usize, now_ms: i64) -> Result<Sweep, BackendError> {
        let mut found = Sweep::default();
        for run in self.ledger.list(limit).await? {
            self.tend(run, now_ms, &mut found).await?;
        }
        Ok(found)
    }

    /// [`Finisher::sweep`] of one run: what a caller that drove the run itself (`fanout run`)
    /// does at the end.
    pub async fn sweep_run(&self, run_id: &str, now_ms: i64) -> Result<Sweep, BackendError> {
        let mut found = Sweep::default();
        if let Some(run) = self.ledger.get(run_id).await? {
            self.tend(run, now_ms, &mut found).await?;
        }
        Ok(found)
    }

    /// Finishes a settled RUNNING run: verdict, conditional finish, event for the winner.
    async fn finish(
        &self,
        mut run: RunRecord,
        now_ms: i64,
    ) -> Result<Option<Finished>, BackendError> {
        let status = run
            .policy
            .verdict(run.counts.expected, run.counts.dead_lettered);
        let finisher = crate::random_token();
        if !self
            .ledger
            .finish(&run.run_id, status, now_ms, finisher)
            .await?
        {
            return Ok(None);
        }
        run.status = status;
        run.finished_at_ms = Some(now_ms);
        let event_sent = self.send_event(&run).await;
        run.event_sent = event_sent;
        Ok(Some(Finished { run, event_sent }))
    }

    /// Records a tick that failed before publishing (its list could not be read, or held bad
    /// rows) as a FAILED run with `reason`, and puts its completion event, so the failure shows
    /// in `runs show` and reaches whoever listens for runs. Answers the run as recorded.
    pub async fn fail_unpublished(
        &self,
        start: &RunStart,
        reason: &str,
    ) -> Result<RunRecord, BackendError> {
        self.ledger.fail_unpublished(start, reason).await?;
        let run = self.ledger.get(&start.run_id).await?.ok_or_else(|| {
            BackendError::permanent("run ledger", format!("run {} vanished", start.run_id))
        })?;
        if run.status == RunStatus::Failed && run.counts.expected == 0 && !run.event_sent {
            let event_sent = self.send_event(&run).await;
            return Ok(RunRecord { event_sent, ..run });
        }
        Ok(run)
    }

    async fn send_event(&self, run: &RunRecord) -> bool {
        let (detail_type, detail) = completion_event(run, self.pipeline);
        // The SDK retried already; a few more tries with a pause keep the watchdog the last
        // resort, not the path a brief EventBridge error takes.
        match with_pauses(|| self.bus.put(detail_type, &detail)).await {
            Ok(()) => {
                // Unmarked, the watchdog would put the event a second time: the mark gets the
                // same tries as the put.
                if let Err(e) = with_pauses(|| self.ledger.mark_event_sent(&run.run_id)).await {
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

    /// The watchdog's rule for one run: finish it if settled, put its missed event, or note it
    /// overdue.
    async fn tend(
        &self,
        run: RunRecord,
        now_ms: i64,
        found: &mut Sweep,
    ) -> Result<(), BackendError> {
        match run.status {
            RunStatus::Running if run.counts.expected > 0 && run.counts.in_flight() == 0 => {
                if let Some(done) = self.finish(run, now_ms).await? {
                    found.events_sent += usize::from(done.event_sent);
                    found.finished.push(done.run);
                }
            }
            RunStatus::Running if run.is_overdue(now_ms) => found.overdue.push(run),
            RunStatus::Succeeded | RunStatus::Failed if !run.event_sent => {
                found.events_sent += usize::from(self.send_event(&run).await);
            }
            _ => {}
        }
        Ok(())
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
