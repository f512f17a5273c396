//! `fanout dlq replay`: move DLQ messages back to the job queue.
//!
//! Two ways, and the same result:
//! - **Move task** (SQS, nothing filtered, no `--max`): one `StartMessageMoveTask`; SQS moves
//!   every message server side, attributes included.
//! - **One by one** (a filter or `--max`, the embedded backend, or an endpoint without move
//!   tasks such as moto): receive → send to the job queue → delete from the DLQ. Sending before
//!   deleting means a crash in between leaves the message in both queues, never in neither; the
//!   duplicate carries the same `dead_letter_attempt`, and the idempotency record lets only one
//!   copy run.
//!
//! A move task moves messages as they are. A message SQS redrove while its job's record says
//! REJECTED (rare: the consumer was cut off between deciding "permanent" and sending its own
//! DLQ copy, on every delivery) then comes back to the DLQ once with a proper copy, and the next
//! replay runs it; the one-by-one path fills in the attempt and runs it at once.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use serde::Serialize;

use fanout_shared::{
    BackendError, IdempotencyStore, MessageMover, MoveTaskState, MoveTaskStatus, Queue, Status,
    ATTR_DEAD_LETTER_ATTEMPT,
};

use super::{describe, DlqEntry, DlqFilter};
use crate::scan::{pass_over, Pass};

/// SQS moves at most this many messages a second per task.
const MOVE_TASK_MAX_RATE: f64 = 500.0;

/// How often `--wait` asks for a move task's progress.
const MOVE_TASK_POLL: Duration = Duration::from_secs(2);

/// What to replay, and how.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Only messages matching this.
    pub filter: DlqFilter,
    /// At most this many messages.
    pub max: Option<usize>,
    /// At most this many messages a second.
    pub rate: Option<f64>,
    /// Only say what would move.
    pub dry_run: bool,
    /// For a move task: wait until it finishes.
    pub wait: bool,
    /// How long a message being moved stays hidden in the DLQ: a replay killed half way leaves
    /// its unmoved messages hidden this long.
    pub hold: Duration,
    /// Long-poll wait of each receive.
    pub poll_wait: Duration,
}

/// How a replay moved the messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplayMethod {
    /// SQS's own `StartMessageMoveTask` (the whole DLQ, no filter).
    MoveTask,
    /// Each message received, sent to the job queue and deleted from the DLQ.
    #[default]
    OneByOne,
}

/// What a replay did; `--json` prints exactly this.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplaySummary {
    /// `move-task` or `one-by-one`.
    pub method: ReplayMethod,
    /// Nothing was moved; `moved` counts what would have been.
    pub dry_run: bool,
    /// Messages sent back to the job queue (or that would be, for a dry run).
    pub moved: u64,
    /// Messages left in the DLQ because they did not match the filter.
    pub skipped: u64,
    /// Messages that could not be sent back (they stay in the DLQ).
    pub failed: u64,
    /// Why each failed one failed.
    pub failures: Vec<String>,
    /// Moved messages whose DLQ copy could not be deleted: it reappears in the DLQ, and replaying
    /// it again is harmless.
    pub not_deleted: u64,
    /// Why the move task was not used, if it was tried.
    pub move_task_unavailable: Option<String>,
    /// The move task's handle and last status.
    pub move_task: Option<MoveTask>,
    /// For a dry run: the messages that would move.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_move: Vec<DlqEntry>,
    /// Wall time, seconds.
    pub elapsed_s: f64,
}

/// A started move task.
#[derive(Debug, Clone, Serialize)]
pub struct MoveTask {
    /// Its handle (for `aws sqs cancel-message-move-task`).
    pub handle: String,
    /// Its last known status (absent without `--wait`).
    pub status: Option<MoveTaskStatus>,
}

/// The resources a replay touches.
pub struct ReplayTargets<'a> {
    /// Where messages go back to.
    pub queue: &'a dyn Queue,
    /// Where they are.
    pub dlq: &'a dyn Queue,
    /// The idempotency table (for filters on the record and the dry-run listing).
    pub store: &'a dyn IdempotencyStore,
    /// Server-side moves, if the backend has them.
    pub mover: Option<&'a dyn MessageMover>,
}

/// Opaque: the resources are trait objects.
impl std::fmt::Debug for ReplayTargets<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayTargets").finish_non_exhaustive()
    }
}

/// Replays the DLQ as `options` say; `progress` sees the summary after every message.
pub async fn replay(
    targets: &ReplayTargets<'_>,
    options: &ReplayOptions,
    progress: &(dyn Fn(&ReplaySummary) + Sync),
) -> Result<ReplaySummary, BackendError> {
    let started = Instant::now();
    let mut summary = ReplaySummary {
        dry_run: options.dry_run,
        ..ReplaySummary::default()
    };
    let whole_queue = !options.dry_run && options.filter.is_empty() && options.max.is_none();
    if let (true, Some(mover)) = (whole_queue, targets.mover) {
        let rate = options
            .rate
            .map(|r| r.ceil().clamp(1.0, MOVE_TASK_MAX_RATE) as u32);
        match mover.start(rate).await {
            Ok(handle) => {
                summary.method = ReplayMethod::MoveTask;
                let mut task = MoveTask {
                    handle,
                    status: None,
                };
                if options.wait {
                    task.status =
                        Some(wait_for(mover, &task.handle, &mut summary, progress).await?);
                }
                summary.move_task = Some(task);
                summary.elapsed_s = started.elapsed().as_secs_f64();
                return Ok(summary);
            }
            // The one-by-one path needs nothing the move task has; it is only slower.
            Err(e) => summary.move_task_unavailable = Some(e.to_string()),
        }
    }
    summary.method = ReplayMethod::OneByOne;
    move_one_by_one(targets, options, &mut summary, progress).await?;
    summary.elapsed_s = started.elapsed().as_secs_f64();
    Ok(summary)
}

async fn wait_for(
    mover: &dyn MessageMover,
    handle: &str,
    summary: &mut ReplaySummary,
    progress: &(dyn Fn(&ReplaySummary) + Sync),
) -> Result<MoveTaskStatus, BackendError> {
    loop {
        tokio::time::sleep(MOVE_TASK_POLL).await;
        let status = mover.status(handle).await?;
        summary.moved = status.moved;
        progress(summary);
        if status.is_finished() {
            if status.state != MoveTaskState::Completed {
                summary.failed = status.to_move.unwrap_or(0).saturating_sub(status.moved);
                summary.failures.push(format!(
                    "move task {}: {}",
                    status.state,
                    status.failure_reason.clone().unwrap_or_default()
                ));
            }
            return Ok(status);
        }
    }
}

async fn move_one_by_one(
    targets: &ReplayTargets<'_>,
    options: &ReplayOptions,
    summary: &mut ReplaySummary,
    progress: &(dyn Fn(&ReplaySummary) + Sync),
) -> Result<(), BackendError> {
    let mut pacer = options.rate.map(|rate| {
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    // Skipped, failed and (on error) unmoved messages become visible again at the pass's end.
    pass_over(
        targets.dlq,
        options.hold,
        options.poll_wait,
        async |pass, batch| {
            for entry in describe(batch, targets.store).await? {
                if options
                    .max
                    .is_some_and(|max| summary.moved + summary.failed >= max as u64)
                {
                    return Ok(ControlFlow::Break(()));
                }
                if !options.filter.matches(&entry) {
                    summary.skipped += 1;
                } else if options.dry_run {
                    summary.moved += 1;
                    summary.would_move.push(entry);
                } else {
                    if let Some(pacer) = pacer.as_mut() {
                        pacer.tick().await;
                    }
                    move_message(targets, pass, &entry, summary).await?;
                }
                progress(summary);
            }
            Ok(ControlFlow::Continue(()))
        },
    )
    .await
}

/// The attributes a moved message carries: its own, plus the `dead_letter_attempt` it stands for
/// when SQS redrove it (a redriven copy has none). Without it, a job whose permanent failure was
/// recorded but whose own DLQ copy never got sent (the consumer was cut off, then every
/// redelivery too) would be dead-lettered again by the replay instead of running.
fn replay_attributes(entry: &DlqEntry) -> BTreeMap<String, String> {
    let mut attributes = entry.message.attributes.clone();
    if let (Some(Status::Rejected | Status::DeadLettered), Some(attempt)) =
        (entry.record_status, entry.attempts)
    {
        attributes
            .entry(ATTR_DEAD_LETTER_ATTEMPT.to_owned())
            .or_insert_with(|| attempt.to_string());
    }
    attributes
}

/// Send, then delete: a crash in between duplicates the job message, which dedupe absorbs.
async fn move_message(
    targets: &ReplayTargets<'_>,
    pass: &mut Pass<'_>,
    entry: &DlqEntry,
    summary: &mut ReplaySummary,
) -> Result<(), BackendError> {
    let name = entry
        .message_id
        .as_deref()
        .unwrap_or(&entry.queue_message_id);
    match targets
        .queue
        .send(&entry.message.body, &replay_attributes(entry))
        .await
    {
        Ok(_) => {}
        // A queue that will never take it (gone, access denied) fails every message: stop.
        Err(e) if !e.retryable => return Err(e),
        Err(e) => {
            summary.failed += 1;
            summary.failures.push(format!("{name}: {e}"));
            return Ok(());
        }
    }
    summary.moved += 1;
    if let Err(e) = pass.delete(&entry.message.receipt_handle).await {
        tracing::warn!(message_id = name, error = %e, "sent back but still in the DLQ");
        summary.not_deleted += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use fanout_shared::embedded::{EmbeddedBackend, EmbeddedIdempotency, EmbeddedQueue};

    use super::*;

    /// A mover that records its calls, or fails like an endpoint without move tasks.
    struct FakeMover {
        fail: bool,
        started: Mutex<Vec<Option<u32>>>,
    }

    #[async_trait]
    impl MessageMover for FakeMover {
        async fn start(&self, max_per_second: Option<u32>) -> Result<String, BackendError> {
            if self.fail {
                return Err(BackendError::transient(
                    "sqs:StartMessageMoveTask",
                    "500 Internal Server Error",
                ));
            }
            self.started.lock().unwrap().push(max_per_second);
            Ok("handle-1".into())
        }

        async fn status(&self, _handle: &str) -> Result<MoveTaskStatus, BackendError> {
            Ok(MoveTaskStatus {
                state: MoveTaskState::Completed,
                moved: 3,
                to_move: Some(3),
                failure_reason: None,
            })
        }
    }

    fn queues() -> (EmbeddedQueue, EmbeddedQueue, EmbeddedIdempotency) {
        let backend = EmbeddedBackend::open(std::path::Path::new(":memory:")).unwrap();
        backend
            .ensure_pipeline("jobs", "q", "dlq", Some(5))
            .unwrap();
        (backend.queue("q"), backend.queue("dlq"), backend.store())
    }

    fn options(filter: DlqFilter, max: Option<usize>) -> ReplayOptions {
        ReplayOptions {
            filter,
            max,
            rate: Some(1000.5),
            dry_run: false,
            wait: true,
            hold: Duration::from_secs(30),
            poll_wait: Duration::ZERO,
        }
    }

    async fn fill(dlq: &EmbeddedQueue, n: usize) {
        for i in 0..n {
            let attributes = BTreeMap::from([("failure_reason".to_owned(), format!("reason {i}"))]);
            dlq.send(&format!("not a job {i}"), &attributes)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn unfiltered_replay_uses_the_move_task_and_waits_for_it() {
        let (queue, dlq, store) = queues();
        fill(&dlq, 3).await;
        let mover = FakeMover {
            fail: false,
            started: Mutex::new(Vec::new()),
        };
        let targets = ReplayTargets {
            queue: &queue,
            dlq: &dlq,
            store: &store,
            mover: Some(&mover),
        };
        let summary = replay(&targets, &options(DlqFilter::default(), None), &|_| {})
            .await
            .unwrap();
        assert_eq!(summary.method, ReplayMethod::MoveTask);
        assert_eq!(
            *mover.started.lock().unwrap(),
            vec![Some(500)],
            "rate rounded up and capped at SQS's 500/s"
        );
        assert_eq!(summary.moved, 3, "from the task's status");
        assert_eq!(
            dlq.depth().await.unwrap().visible,
            3,
            "the server moves them, not us"
        );
    }

    #[tokio::test]
    async fn filtered_or_capped_replay_moves_one_by_one_and_an_unavailable_move_task_falls_back() {
        let (queue, dlq, store) = queues();
        fill(&dlq, 5).await;
        let mover = FakeMover {
            fail: false,
            started: Mutex::new(Vec::new()),
        };
        let targets = ReplayTargets {
            queue: &queue,
            dlq: &dlq,
            store: &store,
            mover: Some(&mover),
        };
        let summary = replay(&targets, &options(DlqFilter::default(), Some(2)), &|_| {})
            .await
            .unwrap();
        assert_eq!((summary.method, summary.moved), (ReplayMethod::OneByOne, 2));
        let filter = DlqFilter {
            reason: Some("REASON 4".into()),
            ..DlqFilter::default()
        };
        let summary = replay(&targets, &options(filter, None), &|_| {})
            .await
            .unwrap();
        assert_eq!((summary.moved, summary.skipped), (1, 2));
        assert!(mover.started.lock().unwrap().is_empty());

        let broken = FakeMover {
            fail: true,
            started: Mutex::new(Vec::new()),
        };
        let targets = ReplayTargets {
            mover: Some(&broken),
            ..targets
        };
        let summary = replay(&targets, &options(DlqFilter::default(), None), &|_| {})
            .await
            .unwrap();
        assert_eq!((summary.method, summary.moved), (ReplayMethod::OneByOne, 2));
        assert!(summary.move_task_unavailable.unwrap().contains("500"));
        assert_eq!(dlq.depth().await.unwrap(), Default::default());
        let moved = queue
            .receive(10, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(moved.len(), 5);
        assert!(
            moved
                .iter()
                .all(|m| m.attributes["failure_reason"].starts_with("reason ")),
            "attributes travel with the body"
        );
    }
}
