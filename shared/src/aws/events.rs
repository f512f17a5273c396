//! [`EventBus`] over EventBridge `PutEvents`.

use async_trait::async_trait;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use serde_json::Value;

use super::sdk_error;
use crate::error::BackendError;
use crate::runs::{EventBus, EVENT_SOURCE};

/// Completion events on an EventBridge bus.
#[derive(Debug, Clone)]
pub struct EventBridgeBus {
    client: aws_sdk_eventbridge::Client,
    bus: String,
}

impl EventBridgeBus {
    /// Events go to `bus` (a name or ARN; `default` is the account's default bus).
    pub fn new(client: aws_sdk_eventbridge::Client, bus: impl Into<String>) -> Self {
        Self {
            client,
            bus: bus.into(),
        }
    }
}

#[async_trait]
impl EventBus for EventBridgeBus {
    async fn put(&self, detail_type: &str, detail: &Value) -> Result<(), BackendError> {
        let entry = PutEventsRequestEntry::builder()
            .source(EVENT_SOURCE)
            .detail_type(detail_type)
            .detail(detail.to_string())
            .event_bus_name(&self.bus)
            .build();
        let output = self
            .client
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(|e| sdk_error("events:PutEvents", e))?;
        match output.entries().first() {
            Some(failed) if failed.error_code().is_some() => Err(BackendError::transient(
                "events:PutEvents",
                format!(
                    "{}: {}",
                    failed.error_code().unwrap_or_default(),
                    failed.error_message().unwrap_or_default()
                ),
            )),
            _ => Ok(()),
        }
    }
}
