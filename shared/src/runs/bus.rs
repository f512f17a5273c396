//! Where completion events go, and what they say.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{rfc3339, RunRecord, RunStatus};
use crate::error::BackendError;

/// `source` of every fanout event.
pub(crate) const EVENT_SOURCE: &str = "fanout";

/// Where completion events go: EventBridge, or the embedded state file.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Puts one event with source `EVENT_SOURCE`, `detail_type` and `detail`.
    async fn put(&self, detail_type: &str, detail: &Value) -> Result<(), BackendError>;
}

/// The completion event of a finished run: its detail-type and detail.
pub(crate) fn completion_event(run: &RunRecord, pipeline: &str) -> (&'static str, Value) {
    let detail_type = if run.status == RunStatus::Failed {
        "Run Failed"
    } else {
        "Run Succeeded"
    };
    let mut detail = json!({
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
    // Why a run failed before publishing; what its list was.
    if let Some(note) = &run.note {
        detail["reason"] = json!(note);
    }
    if !run.sources.is_empty() {
        detail["sources"] = json!(run.sources);
    }
    (detail_type, detail)
}
