//! The run ledger's trait: DynamoDB (the idempotency table) or the embedded SQLite file.

use async_trait::async_trait;

use super::{Begin, CountState, Counted, Delta, RunRecord, RunStart, RunStatus};
use crate::error::BackendError;

/// A run ledger: DynamoDB (the idempotency table) or the embedded SQLite file.
#[async_trait]
pub trait RunLedger: Send + Sync {
    /// Creates the run as RUNNING with its expected count, unless it exists. A run
    /// that failed before publishing ([`RunLedger::fail_unpublished`]) is begun afresh.
    async fn begin(&self, start: &RunStart) -> Result<Begin, BackendError>;

    /// Records a tick that did not run (SKIPPED) with the reason, unless the run exists.
    async fn skip(&self, start: &RunStart, reason: &str) -> Result<(), BackendError>;

    /// Records a tick that failed before publishing anything (FAILED, no jobs: its list could
    /// not be read or held bad rows) with the reason, unless the run exists.
    async fn fail_unpublished(&self, start: &RunStart, reason: &str) -> Result<(), BackendError>;

    /// One run with its counters, if it exists.
    async fn get(&self, run_id: &str) -> Result<Option<RunRecord>, BackendError>;

    /// The latest `limit` runs, newest first.
    async fn list(&self, limit: usize) -> Result<Vec<RunRecord>, BackendError>;

    /// Adds batch `seq` of consumer `instance` (`delta`, its jobs' sum) to the run's counters,
    /// only on top of the instance's batch `seq - 1` ([`super::count`]). A batch asked again
    /// (its first answer lost) answers [`Counted::Applied`] without adding twice; a batch
    /// another consumer sealed answers [`Counted::Sealed`].
    async fn count(
        &self,
        run_id: &str,
        instance: &str,
        seq: u64,
        delta: &Delta,
    ) -> Result<Counted, BackendError>;

    /// Seals batch `seq` of `instance`, when it is that instance's next one: it can no longer
    /// be applied. The run's count state after (also when the batch was applied or sealed
    /// first, or when it is not the next one: then nothing changed); `None` without a ledger.
    async fn seal(
        &self,
        run_id: &str,
        instance: &str,
        seq: u64,
    ) -> Result<Option<CountState>, BackendError>;

    /// The run's count state, read consistently; `None` without a ledger.
    async fn count_state(&self, run_id: &str) -> Result<Option<CountState>, BackendError>;

    /// RUNNING → `status`, finished at `finished_at_ms` by `finisher` (a random token of the
    /// caller's). True for the one caller that moved it, also when it asks again with its token
    /// (its first try was applied and the answer lost, e.g. the SDK retrying a write whose
    /// response timed out): its event must still go out.
    async fn finish(
        &self,
        run_id: &str,
        status: RunStatus,
        finished_at_ms: i64,
        finisher: i64,
    ) -> Result<bool, BackendError>;

    /// Notes that the completion event went out.
    async fn mark_event_sent(&self, run_id: &str) -> Result<(), BackendError>;
}
