//! The idempotency record: one per job message ID, so a job's call succeeds at most once.
//!
//! # The state machine
//! ```text
//!   (none) ──acquire──▶ IN_PROGRESS ──complete──▶ COMPLETED     later copies: skip and ack
//!                         │    ▲
//!                    fail │    │ acquire (the record FAILED, or its lock expired
//!                         ▼    │          because the holder crashed or timed out)
//!                        FAILED
//! ```
//! - [`IdempotencyStore::acquire`] takes the lock: a conditional write that succeeds when there
//!   is no record, when it is FAILED, or when it is IN_PROGRESS with an expired lock. The lock
//!   expires at the invocation's deadline (Powertools semantics): a crashed consumer never holds
//!   a job for longer than one function timeout. Each acquire bumps `attempts`, which is the
//!   fencing token of the holder.
//! - [`IdempotencyStore::complete`] and [`IdempotencyStore::fail`] are conditional on
//!   IN_PROGRESS *and* the holder's `attempts`, so a holder whose lock expired and was taken over
//!   cannot overwrite the new holder's outcome ([`Transition::Superseded`]).
//! - A COMPLETED record lives until `expiration` (the table's TTL), default 24 h: within that
//!   window a duplicate message or a DLQ replay never calls the target twice.
//!
//! [`decide_acquire`] is the one statement of the acquire rule; the SQLite store runs it inside
//! a transaction and the DynamoDB store writes it as a condition expression.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::BackendError;

/// Where a record is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// A consumer holds the lock until `in_progress_expiry`.
    InProgress,
    /// The call succeeded; later copies are skipped.
    Completed,
    /// The last attempt failed; the next copy (retry or replay) may acquire.
    Failed,
}

impl Status {
    /// The stored name: `IN_PROGRESS`, `COMPLETED`, `FAILED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "IN_PROGRESS",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "IN_PROGRESS" => Some(Status::InProgress),
            "COMPLETED" => Some(Status::Completed),
            "FAILED" => Some(Status::Failed),
            _ => None,
        }
    }
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdempotencyRecord {
    /// The job's message ID (the key).
    pub message_id: String,
    /// Current state.
    pub status: Status,
    /// When an IN_PROGRESS lock expires, ms since the epoch.
    pub in_progress_expiry_ms: i64,
    /// When the record may be deleted (TTL), s since the epoch.
    pub expiration_s: i64,
    /// How many times the lock was taken; the holder's fencing token.
    pub attempts: u32,
    /// The last failure's reason.
    pub last_error: Option<String>,
    /// The target's last HTTP status.
    pub status_code: Option<u16>,
    /// The job's run.
    pub run_id: String,
    /// The job's target.
    pub target_id: String,
}

/// What a consumer asks for when it takes a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim<'a> {
    /// The job's message ID.
    pub message_id: &'a str,
    /// The job's run (stored for operators).
    pub run_id: &'a str,
    /// The job's target (stored for operators).
    pub target_id: &'a str,
    /// Now, ms since the epoch: locks that expired before this are free.
    pub now_ms: i64,
    /// The new lock's expiry: the invocation's deadline, ms since the epoch.
    pub lock_until_ms: i64,
    /// The record's TTL, s since the epoch.
    pub expiration_s: i64,
}

/// The answer to [`IdempotencyStore::acquire`].
#[derive(Debug, Clone, PartialEq)]
pub enum Acquire {
    /// The caller holds the lock; `attempt` is its fencing token.
    Acquired {
        /// The record's `attempts` after this acquire.
        attempt: u32,
    },
    /// The job already succeeded: skip it and ack the message.
    AlreadyCompleted,
    /// Another consumer holds a live lock: leave the message for later.
    Locked {
        /// When that lock expires, ms since the epoch.
        until_ms: i64,
    },
}

/// The answer to [`IdempotencyStore::complete`] and [`IdempotencyStore::fail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The record moved.
    Done,
    /// The lock had expired and another attempt took it over; nothing was written.
    Superseded,
}

/// The decision [`IdempotencyStore::acquire`] makes about an existing record.
pub fn decide_acquire(existing: Option<&IdempotencyRecord>, now_ms: i64) -> Acquire {
    match existing {
        None => Acquire::Acquired { attempt: 1 },
        Some(r) => match r.status {
            Status::Completed => Acquire::AlreadyCompleted,
            Status::InProgress if r.in_progress_expiry_ms > now_ms => Acquire::Locked { until_ms: r.in_progress_expiry_ms },
            Status::InProgress | Status::Failed => Acquire::Acquired { attempt: r.attempts + 1 },
        },
    }
}

/// A store of idempotency records with conditional writes (DynamoDB, or the embedded SQLite file).
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Takes the lock for a job if [`decide_acquire`] allows it, atomically.
    async fn acquire(&self, claim: &Claim<'_>) -> Result<Acquire, BackendError>;

    /// IN_PROGRESS (held by `attempt`) → COMPLETED, with the target's status code.
    async fn complete(&self, message_id: &str, attempt: u32, status_code: u16, expiration_s: i64) -> Result<Transition, BackendError>;

    /// IN_PROGRESS (held by `attempt`) → FAILED, with the reason and status code if any.
    async fn fail(&self, message_id: &str, attempt: u32, error: &str, status_code: Option<u16>) -> Result<Transition, BackendError>;

    /// Reads records by message ID (missing ones are left out).
    async fn get_many(&self, message_ids: &[String]) -> Result<Vec<IdempotencyRecord>, BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: Status, expiry: i64) -> IdempotencyRecord {
        IdempotencyRecord {
            message_id: "m".into(),
            status,
            in_progress_expiry_ms: expiry,
            expiration_s: 0,
            attempts: 2,
            last_error: None,
            status_code: None,
            run_id: "r".into(),
            target_id: "t".into(),
        }
    }

    #[test]
    fn acquire_rule() {
        assert_eq!(decide_acquire(None, 100), Acquire::Acquired { attempt: 1 });
        assert_eq!(decide_acquire(Some(&record(Status::Completed, 0)), 100), Acquire::AlreadyCompleted);
        assert_eq!(decide_acquire(Some(&record(Status::InProgress, 200)), 100), Acquire::Locked { until_ms: 200 });
        assert_eq!(decide_acquire(Some(&record(Status::InProgress, 50)), 100), Acquire::Acquired { attempt: 3 });
        assert_eq!(decide_acquire(Some(&record(Status::Failed, 500)), 100), Acquire::Acquired { attempt: 3 });
    }
}
