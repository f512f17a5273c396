//! The embedded SQS queue: visibility timeout, receive count, batch receive, delete, change
//! visibility, and redrive to the DLQ on the receive that exceeds `max_receive_count`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::OptionalExtension;

use super::{sql_error, EmbeddedBackend};
use crate::error::BackendError;
use crate::queue::{Queue, QueueDepth, QueueMessage};

/// How often a long poll looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A queue in the state file.
#[derive(Debug, Clone)]
pub struct EmbeddedQueue {
    backend: EmbeddedBackend,
    name: String,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl EmbeddedQueue {
    pub(super) fn new(backend: EmbeddedBackend, name: &str) -> Self {
        Self {
            backend,
            name: name.to_owned(),
        }
    }

    fn receive_now(
        &self,
        max: u32,
        visibility: Duration,
    ) -> Result<Vec<QueueMessage>, BackendError> {
        let mut inner = self.backend.lock()?;
        let now = crate::now_ms();
        let redrive: Option<(Option<String>, Option<u32>)> = inner
            .conn
            .query_row(
                "SELECT dlq, max_receive_count FROM queues WHERE name = ?1",
                [&self.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql_error)?;
        let (dlq, max_receives) = redrive.unwrap_or((None, None));
        let mut receipts = Vec::new();
        for _ in 0..max {
            receipts.push(EmbeddedBackend::new_id(&mut inner));
        }
        let tx = inner.conn.transaction().map_err(sql_error)?;
        let mut received = Vec::new();
        {
            let mut next = tx
                .prepare_cached(
                    "SELECT seq, id, body, attributes, sent_at, receive_count FROM messages
                     WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at, seq LIMIT 1",
                )
                .map_err(sql_error)?;
            let mut take =
                tx.prepare_cached("UPDATE messages SET receive_count = receive_count + 1, visible_at = ?2, receipt = ?3 WHERE seq = ?1").map_err(sql_error)?;
            let mut redrive =
                tx.prepare_cached("UPDATE messages SET queue = ?2, visible_at = ?3, receive_count = 0, receipt = NULL WHERE seq = ?1").map_err(sql_error)?;
            while received.len() < max as usize {
                let row = next
                    .query_row(rusqlite::params![self.name, now], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, u32>(5)?,
                        ))
                    })
                    .optional()
                    .map_err(sql_error)?;
                let Some((seq, id, body, attributes, sent_at, count)) = row else {
                    break;
                };
                if let (Some(dlq), Some(limit)) = (&dlq, max_receives) {
                    // SQS moves a message on the receive that would exceed maxReceiveCount.
                    if count >= limit {
                        redrive
                            .execute(rusqlite::params![seq, dlq, now])
                            .map_err(sql_error)?;
                        continue;
                    }
                }
                let receipt = receipts.pop().unwrap_or_default();
                take.execute(rusqlite::params![seq, now + ms(visibility), receipt])
                    .map_err(sql_error)?;
                received.push(QueueMessage {
                    message_id: id,
                    receipt_handle: receipt,
                    body,
                    attributes: serde_json::from_str(&attributes).unwrap_or_default(),
                    receive_count: count + 1,
                    sent_at_ms: sent_at,
                });
            }
        }
        tx.commit().map_err(sql_error)?;
        Ok(received)
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send_delayed(
        &self,
        body: &str,
        attributes: &BTreeMap<String, String>,
        delay: Duration,
    ) -> Result<String, BackendError> {
        let mut inner = self.backend.lock()?;
        let id = EmbeddedBackend::new_id(&mut inner);
        let attributes = serde_json::to_string(attributes).unwrap_or_default();
        let now = crate::now_ms();
        inner
            .conn
            .prepare_cached("INSERT INTO messages (id, queue, body, attributes, sent_at, visible_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
            .and_then(|mut s| s.execute(rusqlite::params![id, self.name, body, attributes, now, now + ms(delay.min(crate::queue::MAX_DELAY))]))
            .map_err(sql_error)?;
        Ok(id)
    }

    async fn receive(
        &self,
        max: u32,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<QueueMessage>, BackendError> {
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            let received = self.receive_now(max.clamp(1, 10), visibility)?;
            // A queue that holds nothing, not even in flight, answers at once: whoever waits on
            // it (a drain, a peek of the DLQ) learns that it is empty without sitting out the
            // wait, and a message sent meanwhile is found by the next receive all the same.
            if !received.is_empty()
                || tokio::time::Instant::now() >= give_up
                || self.depth().await?.is_drained()
            {
                return Ok(received);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn delete(&self, receipt_handles: &[String]) -> Result<(), BackendError> {
        let mut inner = self.backend.lock()?;
        let tx = inner.conn.transaction().map_err(sql_error)?;
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM messages WHERE receipt = ?1")
                .map_err(sql_error)?;
            for receipt in receipt_handles {
                delete.execute([receipt]).map_err(sql_error)?;
            }
        }
        tx.commit().map_err(sql_error)
    }

    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        let inner = self.backend.lock()?;
        inner
            .conn
            .prepare_cached("UPDATE messages SET visible_at = ?2 WHERE receipt = ?1")
            .and_then(|mut s| {
                s.execute(rusqlite::params![
                    receipt_handle,
                    crate::now_ms() + ms(timeout)
                ])
            })
            .map_err(sql_error)?;
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        let inner = self.backend.lock()?;
        inner
            .conn
            .query_row(
                "SELECT COALESCE(SUM(visible_at <= ?2), 0),
                        COALESCE(SUM(visible_at > ?2 AND receive_count > 0), 0),
                        COALESCE(SUM(visible_at > ?2 AND receive_count = 0), 0)
                 FROM messages WHERE queue = ?1",
                rusqlite::params![self.name, crate::now_ms()],
                |r| {
                    let count = |i: usize| r.get::<_, i64>(i).map(|n| n.unsigned_abs());
                    Ok(QueueDepth {
                        visible: count(0)?,
                        in_flight: count(1)?,
                        delayed: count(2)?,
                    })
                },
            )
            .map_err(sql_error)
    }
}
