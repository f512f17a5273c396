//! Publishing job messages: the producer's one dependency.

use async_trait::async_trait;

use crate::error::BackendError;
use crate::job::OutboundMessage;

/// SNS `PublishBatch` allows at most this many entries per call.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// SNS `PublishBatch` allows at most this many bytes per call, all entries together.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// One entry of a batch that was not published.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryFailure {
    /// The entry's ID (the job's message ID).
    pub id: String,
    /// The service's error code.
    pub code: String,
    /// The service's message.
    pub message: String,
    /// True when the entry itself is at fault (retrying it cannot help).
    pub sender_fault: bool,
}

/// Something that publishes batches of job messages: an SNS topic, or the embedded topic.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes up to [`MAX_BATCH_ENTRIES`] messages totalling at most [`MAX_BATCH_BYTES`].
    /// `Ok` carries the entries that failed; `Err` means the whole call failed.
    async fn publish_batch(
        &self,
        batch: &[OutboundMessage],
    ) -> Result<Vec<EntryFailure>, BackendError>;
}
