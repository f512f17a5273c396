//! The run ledger's trait: DynamoDB (the idempotency table) or the embedded SQLite file.

use async_trait::async_trait;

use super::{Begin, RunRecord, RunStart, RunStatus};
use crate::error::BackendError;

/// A run ledger: DynamoDB (the idempotency table) or the embedded SQLite file.
#[async_trait]
pub trait RunLedger: Send + Sync {
    /// Creates the run as RUNNING with its per-shard expected counts, unless it exists. A run
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

    /// Whether the run is settled after jobs of `shards` settled: registers each of those
    /// shards that is now done, and answers the run (with its counters) when every shard is
    /// done and the run is still RUNNING; `None` otherwise (or if the run has no ledger).
    async fn record_settled(
        &self,
        run_id: &str,
        shards: &[u32],
    ) -> Result<Option<RunRecord>, BackendError>;

    /// RUNNING → `status`, finished at `finished_at_ms` by `finisher` (a
    /// [`crate::random_token`] of the caller's). True for the one caller that moved it, also
    /// when it asks again with its token (its first try was applied and the answer lost, e.g.
    /// the SDK retrying a write whose response timed out): its event must still go out.
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
