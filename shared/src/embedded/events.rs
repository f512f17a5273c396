//! The embedded event bus: completion events land in the `events` table, where `fanout run`
//! and tests read them.

use async_trait::async_trait;
use serde_json::Value;

use super::{sql_error, EmbeddedBackend};
use crate::error::BackendError;
use crate::runs::{EventBus, EVENT_SOURCE};

/// One stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// `Run Succeeded` or `Run Failed`.
    pub detail_type: String,
    /// The event's detail.
    pub detail: Value,
}

/// The `events` table of the state file.
#[derive(Debug, Clone)]
pub struct EmbeddedEvents {
    backend: EmbeddedBackend,
}

impl EmbeddedEvents {
    pub(super) fn new(backend: EmbeddedBackend) -> Self {
        Self { backend }
    }

    /// Every event put so far, oldest first.
    pub fn all(&self) -> Result<Vec<StoredEvent>, BackendError> {
        let inner = self.backend.lock()?;
        let mut stmt = inner
            .conn
            .prepare_cached("SELECT detail_type, detail FROM events ORDER BY seq")
            .map_err(sql_error)?;
        let rows = stmt
            .query_map([], |row| {
                let detail: String = row.get(1)?;
                Ok(StoredEvent {
                    detail_type: row.get(0)?,
                    detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
                })
            })
            .map_err(sql_error)?;
        rows.collect::<Result<_, _>>().map_err(sql_error)
    }
}

#[async_trait]
impl EventBus for EmbeddedEvents {
    async fn put(&self, detail_type: &str, detail: &Value) -> Result<(), BackendError> {
        let inner = self.backend.lock()?;
        inner
            .conn
            .execute(
                "INSERT INTO events (source, detail_type, detail, time) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    EVENT_SOURCE,
                    detail_type,
                    detail.to_string(),
                    crate::now_ms()
                ],
            )
            .map_err(sql_error)?;
        Ok(())
    }
}
