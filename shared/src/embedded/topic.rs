//! The embedded SNS topic: fans a message out to every subscribed queue, with raw delivery and
//! the same message attributes, optionally more than once (see [`super::Duplicates`]).

use async_trait::async_trait;

use super::{sql_error, EmbeddedBackend};
use crate::error::BackendError;
use crate::job::OutboundMessage;
use crate::publish::{EntryFailure, Publisher, MAX_BATCH_ENTRIES};

/// A topic in the state file.
#[derive(Debug, Clone)]
pub struct EmbeddedTopic {
    backend: EmbeddedBackend,
    name: String,
}

impl EmbeddedTopic {
    pub(super) fn new(backend: EmbeddedBackend, name: &str) -> Self {
        Self {
            backend,
            name: name.to_owned(),
        }
    }
}

#[async_trait]
impl Publisher for EmbeddedTopic {
    async fn publish_batch(
        &self,
        batch: &[OutboundMessage],
    ) -> Result<Vec<EntryFailure>, BackendError> {
        if batch.len() > MAX_BATCH_ENTRIES {
            return Err(BackendError::permanent(
                "embedded:PublishBatch",
                "TooManyEntriesInBatchRequest",
            ));
        }
        let mut inner = self.backend.lock()?;
        let queues: Vec<String> = {
            let mut stmt = inner
                .conn
                .prepare_cached("SELECT queue FROM subscriptions WHERE topic = ?1")
                .map_err(sql_error)?;
            let rows = stmt
                .query_map([&self.name], |r| r.get(0))
                .map_err(sql_error)?;
            rows.collect::<Result<_, _>>().map_err(sql_error)?
        };
        let now = crate::now_ms();
        let duplicates = inner.duplicates;
        let mut copies = Vec::with_capacity(batch.len() * queues.len());
        for message in batch {
            let attributes = serde_json::to_string(&message.attributes).unwrap_or_default();
            for queue in &queues {
                let draw = inner.draws.f64();
                let n = if draw < duplicates.thrice {
                    3
                } else if draw < duplicates.thrice + duplicates.twice {
                    2
                } else {
                    1
                };
                for _ in 0..n {
                    copies.push((
                        EmbeddedBackend::new_id(&mut inner),
                        queue.clone(),
                        &message.body,
                        attributes.clone(),
                    ));
                }
            }
        }
        let tx = inner.conn.transaction().map_err(sql_error)?;
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO messages (id, queue, body, attributes, sent_at, visible_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)")
                .map_err(sql_error)?;
            for (id, queue, body, attributes) in &copies {
                insert
                    .execute(rusqlite::params![id, queue, body, attributes, now])
                    .map_err(sql_error)?;
            }
        }
        tx.commit().map_err(sql_error)?;
        Ok(Vec::new())
    }
}
