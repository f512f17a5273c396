//! [`MessageMover`] over SQS `StartMessageMoveTask` / `ListMessageMoveTasks`.

use async_trait::async_trait;

use super::{queue_arn, sdk_error};
use crate::error::BackendError;
use crate::queue::{MessageMover, MoveTaskState, MoveTaskStatus};

/// Moves a DLQ's messages back to the job queue, server side.
#[derive(Debug, Clone)]
pub struct SqsMessageMover {
    client: aws_sdk_sqs::Client,
    dlq_url: String,
    queue_url: String,
}

impl SqsMessageMover {
    /// The mover from `dlq_url` back to `queue_url`.
    pub fn new(
        client: aws_sdk_sqs::Client,
        dlq_url: impl Into<String>,
        queue_url: impl Into<String>,
    ) -> Self {
        Self {
            client,
            dlq_url: dlq_url.into(),
            queue_url: queue_url.into(),
        }
    }
}

#[async_trait]
impl MessageMover for SqsMessageMover {
    async fn start(&self, max_per_second: Option<u32>) -> Result<String, BackendError> {
        let source = queue_arn(&self.client, &self.dlq_url).await?;
        let destination = queue_arn(&self.client, &self.queue_url).await?;
        let output = self
            .client
            .start_message_move_task()
            .source_arn(source)
            .destination_arn(destination)
            .set_max_number_of_messages_per_second(
                max_per_second.map(|r| i32::try_from(r).unwrap_or(i32::MAX)),
            )
            .send()
            .await
            .map_err(|e| sdk_error("sqs:StartMessageMoveTask", e))?;
        Ok(output.task_handle().unwrap_or_default().to_owned())
    }

    async fn status(&self, handle: &str) -> Result<MoveTaskStatus, BackendError> {
        let source = queue_arn(&self.client, &self.dlq_url).await?;
        let output = self
            .client
            .list_message_move_tasks()
            .source_arn(source)
            .max_results(10)
            .send()
            .await
            .map_err(|e| sdk_error("sqs:ListMessageMoveTasks", e))?;
        // Only a running task lists its handle; once finished, ours is the most recent one.
        let results = output.results();
        let entry = results
            .iter()
            .find(|t| t.task_handle() == Some(handle))
            .or_else(|| results.iter().max_by_key(|t| t.started_timestamp()))
            .ok_or_else(|| {
                BackendError::transient("sqs:ListMessageMoveTasks", "no move task listed yet")
            })?;
        Ok(MoveTaskStatus {
            state: MoveTaskState::parse(entry.status().unwrap_or_default()),
            moved: entry.approximate_number_of_messages_moved().unsigned_abs(),
            to_move: entry
                .approximate_number_of_messages_to_move()
                .map(i64::unsigned_abs),
            failure_reason: entry.failure_reason().map(str::to_owned),
        })
    }
}
