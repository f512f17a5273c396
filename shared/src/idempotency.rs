//! The idempotency record: one per job message ID, so a job's call succeeds at most once.
//!
//! # The state machine
//! ```text
//!   (none) ──acquire──▶ IN_PROGRESS ──complete──▶ COMPLETED        later copies: skip, ack
//!                       │  ▲  │  ▲
//!    fail (transient)   │  │  │  │ acquire (lock expired: the holder crashed or timed out)
//!                       ▼  │  │  └──────────┐
//!                     FAILED │  └─reject──▶ REJECTED ──dead_lettered──▶ DEAD_LETTERED
//!                            │   (permanent)  (DLQ copy pending)          (DLQ copy sent)
//!                            └──────── acquire by a replay of that dead-lettering ───┘
//! ```
//! - [`IdempotencyStore::acquire`] takes the lock: a conditional write that succeeds when there
//!   is no record, when it is FAILED, or when it is IN_PROGRESS with an expired lock or one
//!   taken under the claim's own holder token (a try whose answer was lost: see
//!   [`Claim::holder`]). The lock expires a grace after the invocation's deadline (the
//!   consumer's `FANOUT_LOCK_GRACE_SECS`): Powertools frees it at the deadline, but a success
//!   the store would not take until then travels with the job's rescheduled copy, and no other
//!   copy may take the job over and call it again before that copy is back. Each acquire
//!   bumps `attempts`, which is the fencing token of the holder; a transition asked again by
//!   the attempt that made it answers [`Transition::Done`] and counts nothing more.
//! - A permanent failure is recorded *before* the DLQ send (REJECTED) and confirmed after it
//!   (DEAD_LETTERED). A copy that arrives in between finds the holder's lock (it is still
//!   sending) or, once the lock lapsed (the holder crashed), resumes the DLQ send without
//!   calling the target again; a copy that arrives after is acked. So a permanent
//!   failure calls the target once and is never lost; the only duplicate left is a second DLQ
//!   copy when a crash falls between the send and the confirmation.
//! - A DLQ replay carries the attempt number it replays ([`Claim::replay_of`]): it may take a
//!   DEAD_LETTERED (or still REJECTED: the holder crashed before confirming) record of that
//!   attempt, and a second copy of the same replay may not.
//! - [`IdempotencyStore::complete`], [`IdempotencyStore::fail`] and the others are conditional on
//!   IN_PROGRESS *and* the holder's `attempts`, so a holder whose lock expired and was taken over
//!   cannot overwrite the new holder's outcome ([`Transition::Superseded`]).
//! - `failures` counts the transient failures of the job since it was first taken (or last
//!   replayed): [`IdempotencyStore::fail`] adds one, an acquire by a DLQ replay resets it. The
//!   consumer gives up (dead-letters the job) when it reaches the config's `retry.max_attempts`,
//!   however many copies of the job SQS and SNS delivered, so a target sees at most that many
//!   failed calls per job.
//! - A COMPLETED record lives until `expiration` (the table's TTL), default 24 h: within that
//!   window a duplicate message or a DLQ replay never calls the target twice.
//!
//! [`decide_acquire`] is the one statement of the acquire rule; the SQLite store runs it inside
//! a transaction and the DynamoDB store writes it as a condition expression.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::BackendError;
use crate::failure::Failure;
use crate::runs::{CountToken, JobCount, Tally};

/// Where a record is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// A consumer holds the lock until `in_progress_expiry`.
    InProgress,
    /// The call succeeded; later copies are skipped.
    Completed,
    /// The last attempt failed transiently; the next copy (retry or replay) may acquire.
    Failed,
    /// The last attempt failed permanently; its DLQ copy may not exist yet.
    Rejected,
    /// The last attempt failed permanently and its DLQ copy was sent.
    DeadLettered,
}

impl Status {
    /// The stored name: `IN_PROGRESS`, `COMPLETED`, `FAILED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "IN_PROGRESS",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::Rejected => "REJECTED",
            Status::DeadLettered => "DEAD_LETTERED",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "IN_PROGRESS" => Some(Status::InProgress),
            "COMPLETED" => Some(Status::Completed),
            "FAILED" => Some(Status::Failed),
            "REJECTED" => Some(Status::Rejected),
            "DEAD_LETTERED" => Some(Status::DeadLettered),
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
    /// Transient failures since the job was first taken or last replayed.
    pub failures: u32,
    /// The last failure's reason.
    pub last_error: Option<String>,
    /// The target's last HTTP status.
    pub status_code: Option<u16>,
    /// The job's run.
    pub run_id: String,
    /// The job's target.
    pub target_id: String,
    /// The class ([`crate::FailureKind::class`]) the job is counted under as
    /// dead-lettered in its run's ledger, from DEAD_LETTERED until a replay completes it.
    pub dead_letter_class: Option<String>,
    /// The class of the permanent failure a REJECTED record holds: what the DEAD_LETTERED
    /// transition counts, also when a redelivery (the holder crashed) completes it.
    pub failure_class: Option<String>,
    /// The token of the claim that took the current lock ([`Claim::holder`]).
    pub holder: Option<i64>,
    /// A settled record's count: the batch it is counted in and what it adds
    /// ([`crate::runs`]'s `count` module). `None` on records settled before batch counting.
    pub count: Option<JobCount>,
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
    /// The new lock's expiry, ms since the epoch: the invocation's deadline plus the lock's grace.
    pub lock_until_ms: i64,
    /// The record's TTL, s since the epoch.
    pub expiration_s: i64,
    /// For a DLQ replay: the `attempts` of the dead-lettering it replays.
    pub replay_of: Option<u32>,
    /// This claim's own token ([`Claim::new_holder`]), stored with the lock it takes: a retry
    /// of the acquire whose first answer was lost finds the lock its first try took and takes
    /// it again, instead of meeting "locked by another".
    pub holder: i64,
}

impl Claim<'_> {
    /// A fresh holder token: random, so no two claims share one.
    pub fn new_holder() -> i64 {
        crate::random_token()
    }
}

/// The answer to [`IdempotencyStore::acquire`].
#[derive(Debug, Clone, PartialEq)]
pub enum Acquire {
    /// The caller holds the lock; `attempt` is its fencing token.
    Acquired {
        /// The record's `attempts` after this acquire.
        attempt: u32,
        /// Transient failures of the job so far (0 for a new job or a replay).
        failures: u32,
        /// See [`IdempotencyRecord::dead_letter_class`]: a replayed job's outcome takes it back.
        dead_letter_class: Option<String>,
    },
    /// The job already succeeded: skip it and ack the message.
    AlreadyCompleted,
    /// Another consumer holds a live lock: leave the message for later.
    Locked {
        /// When that lock expires, ms since the epoch.
        until_ms: i64,
    },
    /// A permanent failure whose DLQ copy may be missing: send it (without calling), then
    /// confirm with [`IdempotencyStore::dead_lettered`].
    Rejected {
        /// The attempt that failed (the fencing token for the confirmation).
        attempt: u32,
        /// Its reason.
        reason: String,
        /// Its status code.
        status_code: Option<u16>,
        /// See [`IdempotencyRecord::failure_class`].
        class: String,
        /// See [`IdempotencyRecord::dead_letter_class`].
        dead_letter_class: Option<String>,
    },
    /// Already in the DLQ: ack.
    AlreadyDeadLettered,
}

/// The answer to [`IdempotencyStore::complete`] and [`IdempotencyStore::fail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The record moved.
    Done,
    /// The lock had expired and another attempt took it over; nothing was written.
    Superseded,
}

/// A transition to `to` by `attempt` that found the record not in its expected state finds it
/// already moved there by that attempt: an earlier try of the same write was applied and its
/// answer lost (or another copy of the job confirmed the same dead-lettering). The caller
/// carries on as if its write succeeded: [`Transition::Done`], counted once. Only the holder of
/// `attempt` moves a record out of IN_PROGRESS at that attempt, so the write was its own.
pub(crate) fn already_moved(
    existing: Option<&IdempotencyRecord>,
    to: Status,
    attempt: u32,
) -> bool {
    existing.is_some_and(|r| r.status == to && r.attempts == attempt)
}

/// The decision [`IdempotencyStore::acquire`] makes about an existing record, for a claim
/// with token `holder`. A live lock taken under that same token is the claim's own (an earlier
/// try whose answer was lost, or the copy a backend fault rescheduled with its token): it is
/// taken again, with a new attempt and the new lock's expiry, never "locked by another".
pub(crate) fn decide_acquire(
    existing: Option<&IdempotencyRecord>,
    now_ms: i64,
    replay_of: Option<u32>,
    holder: i64,
) -> Acquire {
    let Some(r) = existing else {
        return Acquire::Acquired {
            attempt: 1,
            failures: 0,
            dead_letter_class: None,
        };
    };
    match r.status {
        Status::Completed => Acquire::AlreadyCompleted,
        Status::InProgress if r.in_progress_expiry_ms > now_ms && r.holder != Some(holder) => {
            Acquire::Locked {
                until_ms: r.in_progress_expiry_ms,
            }
        }
        Status::InProgress | Status::Failed => Acquire::Acquired {
            attempt: r.attempts + 1,
            failures: r.failures,
            dead_letter_class: r.dead_letter_class.clone(),
        },
        // The replay holds the DLQ copy, so the rejection was delivered: run the job again, with
        // a fresh retry budget (the operator fixed what made it fail).
        Status::Rejected | Status::DeadLettered if replay_of == Some(r.attempts) => {
            Acquire::Acquired {
                attempt: r.attempts + 1,
                failures: 0,
                dead_letter_class: r.dead_letter_class.clone(),
            }
        }
        // Its holder is still sending the DLQ copy (or confirming it): a second sender would
        // only make a second copy. Come back when the lock lapses.
        Status::Rejected if r.in_progress_expiry_ms > now_ms => Acquire::Locked {
            until_ms: r.in_progress_expiry_ms,
        },
        Status::Rejected => Acquire::Rejected {
            attempt: r.attempts,
            reason: r.last_error.clone().unwrap_or_default(),
            status_code: r.status_code,
            // Only a record rejected by a build older than the class is without one.
            class: r
                .failure_class
                .clone()
                .unwrap_or_else(|| "unknown".to_owned()),
            dead_letter_class: r.dead_letter_class.clone(),
        },
        Status::DeadLettered => Acquire::AlreadyDeadLettered,
    }
}

/// A store of idempotency records with conditional writes (DynamoDB, or the embedded SQLite file).
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Takes the lock for a job if the acquire rule (`decide_acquire`) allows it, atomically.
    async fn acquire(&self, claim: &Claim<'_>) -> Result<Acquire, BackendError>;

    /// IN_PROGRESS (held by `attempt`) → COMPLETED, with the target's status code; stores the
    /// success's count (`tally`'s delta, taking back `tally.undo`) for batch `token`, which
    /// its consumer then applies to the run ([`crate::runs::RunLedger::count`]).
    async fn complete(
        &self,
        message_id: &str,
        attempt: u32,
        status_code: u16,
        expiration_s: i64,
        count: (&Tally<'_>, &CountToken),
    ) -> Result<Transition, BackendError>;

    /// IN_PROGRESS (held by `attempt`) → FAILED (transient), with the reason and status code;
    /// adds one to `failures`.
    async fn fail(
        &self,
        message_id: &str,
        attempt: u32,
        error: &str,
        status_code: Option<u16>,
    ) -> Result<Transition, BackendError>;

    /// IN_PROGRESS (held by `attempt`) → REJECTED (permanent), before the DLQ send: keeps the
    /// failure's text, status and class.
    async fn reject(
        &self,
        message_id: &str,
        attempt: u32,
        failure: &Failure,
    ) -> Result<Transition, BackendError>;

    /// REJECTED (by `attempt`) → DEAD_LETTERED, after the DLQ send; stores the dead-lettering's
    /// count (under `tally.reason`, taking back `tally.undo`) for batch `token`, as
    /// [`IdempotencyStore::complete`] does.
    async fn dead_lettered(
        &self,
        message_id: &str,
        attempt: u32,
        count: (&Tally<'_>, &CountToken),
    ) -> Result<Transition, BackendError>;

    /// Moves a settled record's count from batch `from` (sealed: it will never apply) to batch
    /// `to` of the caller, which then counts it. False when the record is not counted in
    /// `from` (another consumer moved it first); true also when asked again after the move
    /// applied and its answer was lost.
    async fn recount(
        &self,
        message_id: &str,
        from: &CountToken,
        to: &CountToken,
    ) -> Result<bool, BackendError>;

    /// Reads records by message ID (missing ones are left out).
    async fn get_many(
        &self,
        message_ids: &[String],
    ) -> Result<Vec<IdempotencyRecord>, BackendError>;
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
            failures: 1,
            last_error: None,
            status_code: None,
            run_id: "r".into(),
            target_id: "t".into(),
            dead_letter_class: None,
            failure_class: None,
            holder: Some(7),
            count: None,
        }
    }

    #[test]
    fn a_live_lock_of_the_claim_s_own_token_is_taken_again() {
        let held = record(Status::InProgress, 200);
        assert_eq!(
            decide_acquire(Some(&held), 100, None, 7),
            Acquire::Acquired {
                attempt: 3,
                failures: 1,
                dead_letter_class: None
            }
        );
        assert_eq!(
            decide_acquire(Some(&held), 100, None, 8),
            Acquire::Locked { until_ms: 200 }
        );
        assert_eq!(
            decide_acquire(Some(&record(Status::Completed, 0)), 100, None, 7),
            Acquire::AlreadyCompleted
        );
        assert_ne!(Claim::new_holder(), Claim::new_holder());
    }

    #[test]
    fn acquire_rule() {
        use Status::*;
        assert_eq!(
            decide_acquire(None, 100, None, 0),
            Acquire::Acquired {
                attempt: 1,
                failures: 0,
                dead_letter_class: None
            }
        );
        assert_eq!(
            decide_acquire(Some(&record(Completed, 0)), 100, None, 0),
            Acquire::AlreadyCompleted
        );
        assert_eq!(
            decide_acquire(Some(&record(Completed, 0)), 100, Some(2), 0),
            Acquire::AlreadyCompleted
        );
        assert_eq!(
            decide_acquire(Some(&record(InProgress, 200)), 100, None, 0),
            Acquire::Locked { until_ms: 200 }
        );
        assert_eq!(
            decide_acquire(Some(&record(InProgress, 50)), 100, None, 0),
            Acquire::Acquired {
                attempt: 3,
                failures: 1,
                dead_letter_class: None
            }
        );
        assert_eq!(
            decide_acquire(Some(&record(Failed, 500)), 100, None, 0),
            Acquire::Acquired {
                attempt: 3,
                failures: 1,
                dead_letter_class: None
            }
        );
        assert!(matches!(
            decide_acquire(Some(&record(Rejected, 0)), 100, None, 0),
            Acquire::Rejected { attempt: 2, .. }
        ));
        assert!(matches!(
            decide_acquire(Some(&record(Rejected, 0)), 100, Some(1), 0),
            Acquire::Rejected { attempt: 2, .. }
        ));
        assert_eq!(
            decide_acquire(Some(&record(Rejected, 0)), 100, Some(2), 0),
            Acquire::Acquired {
                attempt: 3,
                failures: 0,
                dead_letter_class: None
            }
        );
        assert_eq!(
            decide_acquire(Some(&record(DeadLettered, 0)), 100, None, 0),
            Acquire::AlreadyDeadLettered
        );
        assert_eq!(
            decide_acquire(Some(&record(DeadLettered, 0)), 100, Some(1), 0),
            Acquire::AlreadyDeadLettered
        );
        assert_eq!(
            decide_acquire(Some(&record(DeadLettered, 0)), 100, Some(2), 0),
            Acquire::Acquired {
                attempt: 3,
                failures: 0,
                dead_letter_class: None
            }
        );
    }
}
