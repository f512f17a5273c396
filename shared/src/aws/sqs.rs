//! [`Queue`] over SQS.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName,
};

use super::sdk_error;
use crate::error::BackendError;
use crate::queue::{Queue, QueueDepth, QueueMessage};

/// One SQS queue, by URL.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    /// The queue at `url`.
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    /// The SDK client (for operations beyond the trait, such as message move tasks).
    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.client
    }
}

/// The ARN of the queue at `url` (policies, redrive and move tasks name queues by ARN).
pub async fn queue_arn(client: &aws_sdk_sqs::Client, url: &str) -> Result<String, BackendError> {
    let output = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| sdk_error("sqs:GetQueueAttributes", e))?;
    output
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .ok_or_else(|| {
            BackendError::permanent("sqs:GetQueueAttributes", format!("no QueueArn for {url}"))
        })
}

/// SQS takes whole seconds; round up so a timeout is never shorter than asked.
fn whole_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_millis().div_ceil(1000)).unwrap_or(i32::MAX)
}

#[async_trait]
impl Queue for SqsQueue {
    fn name(&self) -> &str {
        &self.url
    }

    async fn send_delayed(
        &self,
        body: &str,
        attributes: &BTreeMap<String, String>,
        delay: Duration,
    ) -> Result<String, BackendError> {
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body);
        if !delay.is_zero() {
            request = request.delay_seconds(whole_seconds(delay.min(crate::queue::MAX_DELAY)));
        }
        for (name, value) in attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| BackendError::permanent("sqs:SendMessage", e.to_string()))?;
            request = request.message_attributes(name, value);
        }
        let output = request
            .send()
            .await
            .map_err(|e| sdk_error("sqs:SendMessage", e))?;
        Ok(output.message_id().unwrap_or_default().to_owned())
    }

    async fn receive(
        &self,
        max: u32,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<QueueMessage>, BackendError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .visibility_timeout(whole_seconds(visibility))
            .wait_time_seconds(whole_seconds(wait).min(20))
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| sdk_error("sqs:ReceiveMessage", e))?;
        Ok(output
            .messages()
            .iter()
            .map(|m| {
                let system = m.attributes();
                let number = |name: MessageSystemAttributeName| {
                    system
                        .and_then(|a| a.get(&name))
                        .and_then(|v| v.parse::<i64>().ok())
                };
                QueueMessage {
                    message_id: m.message_id().unwrap_or_default().to_owned(),
                    receipt_handle: m.receipt_handle().unwrap_or_default().to_owned(),
                    body: m.body().unwrap_or_default().to_owned(),
                    attributes: m
                        .message_attributes()
                        .map(|attrs| {
                            attrs
                                .iter()
                                .filter_map(|(k, v)| {
                                    Some((k.clone(), v.string_value()?.to_owned()))
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    receive_count: number(MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|c| u32::try_from(c).ok())
                        .unwrap_or(1),
                    sent_at_ms: number(MessageSystemAttributeName::SentTimestamp).unwrap_or(0),
                }
            })
            .collect())
    }

    async fn delete(&self, receipt_handles: &[String]) -> Result<(), BackendError> {
        for chunk in receipt_handles.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, handle)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(handle)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| BackendError::permanent("sqs:DeleteMessageBatch", e.to_string()))?;
            let output = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_error("sqs:DeleteMessageBatch", e))?;
            // An invalid (stale) receipt handle means the message was received again since:
            // the newer receiver owns it now, as on any SQS delete.
            let failed: Vec<String> = output
                .failed()
                .iter()
                .filter(|f| f.code() != "ReceiptHandleIsInvalid")
                .map(|f| format!("{}: {}", f.code(), f.message().unwrap_or_default()))
                .collect();
            if !failed.is_empty() {
                return Err(BackendError::transient(
                    "sqs:DeleteMessageBatch",
                    failed.join("; "),
                ));
            }
        }
        Ok(())
    }

    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(whole_seconds(timeout).min(43_200))
            .send()
            .await
            .map_err(|e| sdk_error("sqs:ChangeMessageVisibility", e))?;
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| sdk_error("sqs:GetQueueAttributes", e))?;
        let get = |name: QueueAttributeName| {
            output
                .attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(QueueDepth {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }
}
