//! Settlement: where each job of a run ended up — succeeded, dead-lettered (and why), or lost.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fanout_shared::{
    decode_body, BackendError, IdempotencyStore, Queue, QueueMessage, Status, ATTR_FAILURE_REASON,
};

use crate::scan::peek_all;

/// The DLQ reason of a message SQS redrove (it has no `failure_reason` of ours).
pub(crate) const MAX_RECEIVES_EXCEEDED: &str = "max receives exceeded";

/// Where a run's jobs are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settlement {
    /// Jobs in the run.
    pub jobs: usize,
    /// Jobs whose call succeeded.
    pub succeeded: usize,
    /// Jobs in the DLQ, by reason.
    pub dead_lettered: BTreeMap<String, usize>,
    /// Jobs neither succeeded nor in the DLQ.
    pub lost: Vec<String>,
}

impl Settlement {
    /// Jobs in the DLQ, all reasons.
    pub(crate) fn dead_lettered_total(&self) -> usize {
        self.dead_lettered.values().sum()
    }
}

/// The DLQ reason of a message: our `failure_reason`, or SQS's redrive.
pub fn dlq_reason(message: &QueueMessage) -> String {
    message
        .attributes
        .get(ATTR_FAILURE_REASON)
        .cloned()
        .unwrap_or_else(|| MAX_RECEIVES_EXCEEDED.to_owned())
}

/// Settles the jobs `job_ids` from the idempotency records and the DLQ contents (read with
/// long polls of `wait`).
pub async fn settle(
    job_ids: &[String],
    store: &dyn IdempotencyStore,
    dlq: &dyn Queue,
    wait: Duration,
) -> Result<Settlement, BackendError> {
    let records = store.get_many(job_ids).await?;
    let status: HashMap<&str, Status> = records
        .iter()
        .map(|r| (r.message_id.as_str(), r.status))
        .collect();
    let mut in_dlq: HashMap<String, String> = HashMap::new();
    for message in peek_all(dlq, usize::MAX, wait).await? {
        if let Ok(job) = decode_body(&message.body) {
            in_dlq
                .entry(job.message_id)
                .or_insert_with(|| dlq_reason(&message));
        }
    }
    let mut settlement = Settlement {
        jobs: job_ids.len(),
        ..Settlement::default()
    };
    for id in job_ids {
        if status.get(id.as_str()) == Some(&Status::Completed) {
            settlement.succeeded += 1;
        } else if let Some(reason) = in_dlq.get(id) {
            *settlement.dead_lettered.entry(reason.clone()).or_insert(0) += 1;
        } else {
            settlement.lost.push(id.clone());
        }
    }
    Ok(settlement)
}
