//! The embedded idempotency table: the same conditional transitions as the DynamoDB store,
//! each one SQLite transaction.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row};

use super::{sql_error, EmbeddedBackend};
use crate::error::BackendError;
use crate::failure::Failure;
use crate::idempotency::{
    already_moved, decide_acquire, Acquire, Claim, IdempotencyRecord, IdempotencyStore, Status,
    Transition,
};
use crate::runs::{CountToken, JobCount, Tally};

const COLUMNS: &str = "message_id, status, in_progress_expiry, expiration, attempts, last_error, status_code, run_id, target_id, failures, dead_letter_class, failure_class, holder, count_token, count_delta";

/// The idempotency table in the state file.
#[derive(Debug, Clone)]
pub struct EmbeddedIdempotency {
    backend: EmbeddedBackend,
}

fn record(row: &Row<'_>) -> rusqlite::Result<IdempotencyRecord> {
    let status: String = row.get(1)?;
    Ok(IdempotencyRecord {
        message_id: row.get(0)?,
        // An unknown status can only come from hand-editing; treat it as a failed attempt.
        status: Status::parse(&status).unwrap_or(Status::Failed),
        in_progress_expiry_ms: row.get(2)?,
        expiration_s: row.get(3)?,
        attempts: row.get(4)?,
        last_error: row.get(5)?,
        status_code: row.get(6)?,
        run_id: row.get(7)?,
        target_id: row.get(8)?,
        failures: row.get(9)?,
        dead_letter_class: row.get(10)?,
        failure_class: row.get(11)?,
        holder: row.get(12)?,
        count: row
            .get::<_, Option<String>>(13)?
            .and_then(|t| CountToken::parse(&t))
            .map(|token| -> rusqlite::Result<JobCount> {
                // Only this module writes the column: JSON of the job's `Delta`.
                let delta = row
                    .get::<_, Option<String>>(14)?
                    .and_then(|d| serde_json::from_str(&d).ok())
                    .unwrap_or_default();
                Ok(JobCount { token, delta })
            })
            .transpose()?,
    })
}

impl EmbeddedIdempotency {
    pub(super) fn new(backend: EmbeddedBackend) -> Self {
        Self { backend }
    }

    /// One conditional transition: `from` held by `attempt` → `change.to`, storing a terminal
    /// one's count, in one SQLite transaction.
    fn transition(
        &self,
        message_id: &str,
        from: Status,
        attempt: u32,
        change: Change<'_>,
    ) -> Result<Transition, BackendError> {
        let Change {
            to,
            error,
            code,
            expiration,
            count,
            failure_class,
        } = change;
        let mut inner = self.backend.lock()?;
        let tx = inner
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql_error)?;
        // A dead-lettering without a class is counted as `unknown` (`Tally::delta`): remember
        // it so, and a replay's success takes back what was counted (as DynamoDB does).
        let class = match to {
            Status::DeadLettered => Some(
                count
                    .as_ref()
                    .and_then(|(t, _)| t.reason)
                    .unwrap_or("unknown"),
            ),
            _ => None,
        };
        let (token, delta) = match &count {
            Some((tally, token)) => {
                let delta = serde_json::to_string(&tally.delta(to == Status::Completed))
                    .map_err(|e| BackendError::permanent("sqlite", e.to_string()))?;
                (Some(token.to_string()), Some(delta))
            }
            None => (None, None),
        };
        let changed = tx
            .prepare_cached(
                "UPDATE idempotency SET status = ?4,
                     last_error = CASE WHEN ?4 = 'COMPLETED' THEN NULL WHEN ?5 IS NULL THEN last_error ELSE ?5 END,
                     status_code = COALESCE(?6, CASE WHEN ?4 = 'DEAD_LETTERED' THEN status_code END),
                     expiration = COALESCE(?7, expiration),
                     failures = failures + (?4 = 'FAILED'),
                     dead_letter_class = CASE ?4 WHEN 'COMPLETED' THEN NULL WHEN 'DEAD_LETTERED' THEN ?8 ELSE dead_letter_class END,
                     failure_class = CASE ?4 WHEN 'REJECTED' THEN ?9 ELSE failure_class END,
                     count_token = COALESCE(?10, count_token),
                     count_delta = COALESCE(?11, count_delta)
                 WHERE message_id = ?1 AND status = ?2 AND attempts = ?3",
            )
            .and_then(|mut s| s.execute(rusqlite::params![message_id, from.as_str(), attempt, to.as_str(), error, code, expiration, class, failure_class, token, delta]))
            .map_err(sql_error)?;
        if changed != 1 {
            let current = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM idempotency WHERE message_id = ?1"
                ))
                .and_then(|mut s| s.query_row([message_id], record).optional())
                .map_err(sql_error)?;
            return Ok(if already_moved(current.as_ref(), to, attempt) {
                Transition::Done
            } else {
                Transition::Superseded
            });
        }
        tx.commit().map_err(sql_error)?;
        Ok(Transition::Done)
    }
}

/// What a transition writes: the new status, and the error, status code and expiry it sets
/// (`None` keeps the stored one), and a terminal one's count and batch.
struct Change<'a> {
    to: Status,
    error: Option<&'a str>,
    code: Option<u16>,
    expiration: Option<i64>,
    count: Option<(&'a Tally<'a>, &'a CountToken)>,
    /// The class of a permanent failure (REJECTED), kept for the DEAD_LETTERED count.
    failure_class: Option<&'a str>,
}

#[async_trait]
impl IdempotencyStore for EmbeddedIdempotency {
    async fn acquire(&self, claim: &Claim<'_>) -> Result<Acquire, BackendError> {
        let mut inner = self.backend.lock()?;
        let tx = inner
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql_error)?;
        let existing = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM idempotency WHERE message_id = ?1"
            ))
            .and_then(|mut s| s.query_row([claim.message_id], record).optional())
            .map_err(sql_error)?;
        let decision = decide_acquire(
            existing.as_ref(),
            claim.now_ms,
            claim.replay_of,
            claim.holder,
        );
        if let Acquire::Acquired {
            attempt, failures, ..
        } = decision
        {
            tx.prepare_cached(
                "INSERT INTO idempotency (message_id, status, in_progress_expiry, expiration, attempts, last_error, status_code, run_id, target_id, failures, holder)
                 VALUES (?1, 'IN_PROGRESS', ?2, ?3, ?4, NULL, NULL, ?5, ?6, ?7, ?8)
                 ON CONFLICT (message_id) DO UPDATE SET status = 'IN_PROGRESS', in_progress_expiry = ?2,
                     expiration = ?3, attempts = ?4, run_id = ?5, target_id = ?6, failures = ?7, holder = ?8",
            )
            .and_then(|mut s| {
                s.execute(rusqlite::params![claim.message_id, claim.lock_until_ms, claim.expiration_s, attempt, claim.run_id, claim.target_id, failures, claim.holder])
            })
            .map_err(sql_error)?;
        }
        tx.commit().map_err(sql_error)?;
        Ok(decision)
    }

    async fn complete(
        &self,
        message_id: &str,
        attempt: u32,
        status_code: u16,
        expiration_s: i64,
        count: (&Tally<'_>, &CountToken),
    ) -> Result<Transition, BackendError> {
        self.transition(
            message_id,
            Status::InProgress,
            attempt,
            Change {
                to: Status::Completed,
                error: None,
                code: Some(status_code),
                expiration: Some(expiration_s),
                count: Some(count),
                failure_class: None,
            },
        )
    }

    async fn fail(
        &self,
        message_id: &str,
        attempt: u32,
        error: &str,
        status_code: Option<u16>,
    ) -> Result<Transition, BackendError> {
        self.transition(
            message_id,
            Status::InProgress,
            attempt,
            Change {
                to: Status::Failed,
                error: Some(error),
                code: status_code,
                expiration: None,
                count: None,
                failure_class: None,
            },
        )
    }

    async fn reject(
        &self,
        message_id: &str,
        attempt: u32,
        failure: &Failure,
    ) -> Result<Transition, BackendError> {
        let text = failure.to_string();
        let class = failure.class();
        self.transition(
            message_id,
            Status::InProgress,
            attempt,
            Change {
                to: Status::Rejected,
                error: Some(&text),
                code: failure.status(),
                expiration: None,
                count: None,
                failure_class: Some(&class),
            },
        )
    }

    async fn dead_lettered(
        &self,
        message_id: &str,
        attempt: u32,
        count: (&Tally<'_>, &CountToken),
    ) -> Result<Transition, BackendError> {
        let change = Change {
            to: Status::DeadLettered,
            error: None,
            code: None,
            expiration: None,
            count: Some(count),
            failure_class: None,
        };
        self.transition(message_id, Status::Rejected, attempt, change)
    }

    async fn recount(
        &self,
        message_id: &str,
        from: &CountToken,
        to: &CountToken,
    ) -> Result<bool, BackendError> {
        let inner = self.backend.lock()?;
        let (from, to) = (from.to_string(), to.to_string());
        inner
            .conn
            .execute(
                "UPDATE idempotency SET count_token = ?3 WHERE message_id = ?1 AND count_token = ?2",
                [message_id, &from, &to],
            )
            .map_err(sql_error)?;
        // Moved now, or by this caller before: the record is counted in `to` either way.
        let current: Option<Option<String>> = inner
            .conn
            .query_row(
                "SELECT count_token FROM idempotency WHERE message_id = ?1",
                [message_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql_error)?;
        Ok(current.flatten().as_deref() == Some(to.as_str()))
    }

    async fn get_many(
        &self,
        message_ids: &[String],
    ) -> Result<Vec<IdempotencyRecord>, BackendError> {
        let inner = self.backend.lock()?;
        let mut stmt = inner
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM idempotency WHERE message_id = ?1"
            ))
            .map_err(sql_error)?;
        let mut records = Vec::with_capacity(message_ids.len());
        let mut seen = std::collections::HashSet::new();
        // Each record once, however often it is asked for (as DynamoDB answers).
        for id in message_ids.iter().filter(|id| seen.insert(id.as_str())) {
            if let Some(r) = stmt.query_row([id], record).optional().map_err(sql_error)? {
                records.push(r);
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::publish::Publisher;
    use crate::queue::Queue;
    use crate::OutboundMessage;

    // The state machine's transitions are held to one contract on every backend:
    // `tests/src/contract/idempotency.rs`, run by `tests/tests/contract_*.rs`.

    #[tokio::test]
    async fn queue_visibility_receive_count_and_redrive() {
        let backend = EmbeddedBackend::open(":memory:".as_ref()).unwrap();
        backend
            .ensure_pipeline("jobs", "q", "dlq", Some(2))
            .unwrap();
        let message = OutboundMessage {
            id: "a".into(),
            body: "{}".into(),
            attributes: BTreeMap::from([("k".into(), "v".into())]),
        };
        backend
            .topic("jobs")
            .publish_batch(&[message])
            .await
            .unwrap();
        let (queue, dlq) = (backend.queue("q"), backend.queue("dlq"));
        let vis = Duration::from_millis(50);
        let first = queue.receive(10, vis, Duration::ZERO).await.unwrap();
        assert_eq!(
            (
                first.len(),
                first[0].receive_count,
                first[0].attributes["k"].as_str()
            ),
            (1, 1, "v")
        );
        assert!(
            queue
                .receive(10, vis, Duration::ZERO)
                .await
                .unwrap()
                .is_empty(),
            "hidden while in flight"
        );
        assert_eq!(queue.depth().await.unwrap().in_flight, 1);
        let second = queue
            .receive(10, vis, Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(
            second[0].receive_count, 2,
            "visible again after the timeout"
        );
        queue
            .delete(&[first[0].receipt_handle.clone()])
            .await
            .unwrap();
        assert_eq!(
            queue.depth().await.unwrap().in_flight,
            1,
            "a stale receipt deletes nothing"
        );
        tokio::time::sleep(vis * 2).await;
        assert!(
            queue
                .receive(10, vis, Duration::ZERO)
                .await
                .unwrap()
                .is_empty(),
            "third receive exceeds 2: redriven"
        );
        assert_eq!(
            dlq.receive(10, vis, Duration::ZERO).await.unwrap()[0].body,
            "{}"
        );
        assert!(queue.depth().await.unwrap().is_drained());
    }

    #[tokio::test]
    async fn duplicates_are_injected_at_the_configured_rate() {
        let backend = EmbeddedBackend::open(":memory:".as_ref()).unwrap();
        backend
            .ensure_pipeline("jobs", "q", "dlq", Some(5))
            .unwrap();
        backend
            .set_duplicates(super::super::Duplicates {
                twice: 0.3,
                thrice: 0.0,
                seed: 7,
            })
            .unwrap();
        let topic = backend.topic("jobs");
        for chunk in 0..100 {
            let batch: Vec<_> = (0..10)
                .map(|i| OutboundMessage {
                    id: format!("{chunk}-{i}"),
                    body: "{}".into(),
                    attributes: BTreeMap::new(),
                })
                .collect();
            topic.publish_batch(&batch).await.unwrap();
        }
        let visible = backend.queue("q").depth().await.unwrap().visible;
        assert!(
            (1250..=1350).contains(&visible),
            "{visible} copies of 1000 messages at 30% duplicates"
        );
    }
}
