//! [`Publisher`] over SNS `PublishBatch`.

use async_trait::async_trait;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};

use super::sdk_error;
use crate::error::BackendError;
use crate::job::OutboundMessage;
use crate::publish::{EntryFailure, Publisher};

/// Publishes job messages to one SNS topic.
#[derive(Debug, Clone)]
pub struct SnsPublisher {
    client: aws_sdk_sns::Client,
    topic_arn: String,
}

impl SnsPublisher {
    /// A publisher for `topic_arn`.
    pub fn new(client: aws_sdk_sns::Client, topic_arn: impl Into<String>) -> Self {
        Self {
            client,
            topic_arn: topic_arn.into(),
        }
    }
}

#[async_trait]
impl Publisher for SnsPublisher {
    async fn publish_batch(
        &self,
        batch: &[OutboundMessage],
    ) -> Result<Vec<EntryFailure>, BackendError> {
        let mut entries = Vec::with_capacity(batch.len());
        for message in batch {
            let mut entry = PublishBatchRequestEntry::builder()
                .id(&message.id)
                .message(&message.body);
            for (name, value) in &message.attributes {
                let value = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .map_err(|e| BackendError::permanent("sns:PublishBatch", e.to_string()))?;
                entry = entry.message_attributes(name, value);
            }
            entries.push(
                entry
                    .build()
                    .map_err(|e| BackendError::permanent("sns:PublishBatch", e.to_string()))?,
            );
        }
        let output = self
            .client
            .publish_batch()
            .topic_arn(&self.topic_arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sdk_error("sns:PublishBatch", e))?;
        Ok(output
            .failed()
            .iter()
            .map(|f| EntryFailure {
                id: f.id().to_owned(),
                code: f.code().to_owned(),
                message: f.message().unwrap_or_default().to_owned(),
                sender_fault: f.sender_fault(),
            })
            .collect())
    }
}
