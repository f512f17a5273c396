//! Queues: the job queue the consumer drains and the dead-letter queue it writes to.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::BackendError;

/// The longest delay one SQS message can carry (`DelaySeconds` ≤ 900).
pub const MAX_DELAY: Duration = Duration::from_secs(900);

/// A message as received from a queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueMessage {
    /// The queue's own message ID (not the job's message ID).
    pub message_id: String,
    /// Handle for delete and change-visibility; new on every receive.
    pub receipt_handle: String,
    /// The body as sent.
    pub body: String,
    /// String message attributes.
    pub attributes: BTreeMap<String, String>,
    /// How many times the message has been received, this time included.
    pub receive_count: u32,
    /// When the message was first sent to this queue, in ms since the epoch.
    pub sent_at_ms: i64,
}

/// Approximate message counts, as SQS reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages a receive could return now.
    pub visible: u64,
    /// Messages received and not yet deleted or visible again.
    pub in_flight: u64,
    /// Messages not yet visible for the first time.
    pub delayed: u64,
}

impl QueueDepth {
    /// True when nothing is left to receive, now or later.
    pub fn is_drained(&self) -> bool {
        self.visible == 0 && self.in_flight == 0 && self.delayed == 0
    }
}

/// An SQS-like queue with visibility timeouts and at-least-once delivery.
#[async_trait]
pub trait Queue: Send + Sync {
    /// A name for logs and errors (the queue URL on AWS).
    fn name(&self) -> &str;

    /// Sends one message; returns the queue's message ID.
    async fn send(
        &self,
        body: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<String, BackendError> {
        self.send_delayed(body, attributes, Duration::ZERO).await
    }

    /// Sends one message that becomes visible only after `delay` (SQS `DelaySeconds`, at most
    /// [`MAX_DELAY`]; SQS rounds up to whole seconds); returns the queue's message ID.
    async fn send_delayed(
        &self,
        body: &str,
        attributes: &BTreeMap<String, String>,
        delay: Duration,
    ) -> Result<String, BackendError>;

    /// Receives up to `max` (≤ 10) messages, hiding them for `visibility`. Waits up to `wait`
    /// for at least one (long polling); returns an empty list if none came.
    async fn receive(
        &self,
        max: u32,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<QueueMessage>, BackendError>;

    /// Deletes received messages by receipt handle. A stale handle (the message was received
    /// again since) deletes nothing, as on SQS.
    async fn delete(&self, receipt_handles: &[String]) -> Result<(), BackendError>;

    /// Makes a received message visible again after `timeout` from now.
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), BackendError>;

    /// Approximate counts of visible, in-flight and delayed messages.
    async fn depth(&self) -> Result<QueueDepth, BackendError>;
}

/// A server-side move of every message in a dead-letter queue back to its source queue (SQS
/// `StartMessageMoveTask`): one call instead of a receive/send/delete per message.
#[async_trait]
pub trait MessageMover: Send + Sync {
    /// Starts moving everything, at most `max_per_second` messages a second (`None`: as fast as
    /// the service goes). Returns the task's handle.
    async fn start(&self, max_per_second: Option<u32>) -> Result<String, BackendError>;

    /// The latest state of the task started as `handle`.
    async fn status(&self, handle: &str) -> Result<MoveTaskStatus, BackendError>;
}

/// A move task's state, as `ListMessageMoveTasks` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MoveTaskState {
    /// Moving the DLQ's messages back: `fanout dlq replay` keeps polling it.
    Running,
    /// Every message the DLQ held when the task started is back in its source queue.
    Completed,
    /// A cancel was asked for; messages already moved stay moved.
    Cancelling,
    /// Stopped before the end: what was not moved is still in the DLQ, to replay again.
    Cancelled,
    /// Failed (`failure_reason` says why).
    Failed,
    /// A state this version does not know; treated as finished.
    Unknown,
}

impl MoveTaskState {
    /// From SQS's spelling.
    pub fn parse(state: &str) -> Self {
        match state {
            "RUNNING" => Self::Running,
            "COMPLETED" => Self::Completed,
            "CANCELLING" => Self::Cancelling,
            "CANCELLED" => Self::Cancelled,
            "FAILED" => Self::Failed,
            _ => Self::Unknown,
        }
    }

    /// SQS's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Completed => "COMPLETED",
            Self::Cancelling => "CANCELLING",
            Self::Cancelled => "CANCELLED",
            Self::Failed => "FAILED",
            Self::Unknown => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for MoveTaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A move task's progress, as `ListMessageMoveTasks` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MoveTaskStatus {
    /// Where the task is.
    pub state: MoveTaskState,
    /// Messages moved so far.
    pub moved: u64,
    /// Messages the task set out to move, when known.
    pub to_move: Option<u64>,
    /// Why a `FAILED` task failed.
    pub failure_reason: Option<String>,
}

impl MoveTaskStatus {
    /// Whether the task has stopped (completed, cancelled or failed).
    pub fn is_finished(&self) -> bool {
        !matches!(
            self.state,
            MoveTaskState::Running | MoveTaskState::Cancelling
        )
    }
}
