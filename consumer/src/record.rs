//! One record's life: parse → admit → permit → dedupe → call → record the outcome.
//!
//! Every path ends in one of three answers to SQS:
//! - *ack*: the message is done (succeeded, duplicate, or safely in the DLQ);
//! - *reschedule*: a copy of the message was sent back to the queue with a delay, and this one
//!   is acked. Jobs that wait (for a permit, a paused host, an open circuit, another instance's
//!   lock) and transient failures (after their backoff) come back this way, so waiting and
//!   retrying never use up the message's receives: `maxReceiveCount` counts only deliveries that
//!   crashed or timed out. Waiting never touches the idempotency record; a retry's attempt is
//!   counted there, so copies of a job share one retry budget;
//!   A backend fault that outlasts its retries ([`crate::backend`]) reschedules the record the
//!   same way, without counting against the job's retries;
//! - *retry*: a batch item failure (SQS redelivers after the visibility timeout), only when
//!   the record cannot even be rescheduled. When in doubt, retry: a redelivery costs one
//!   idempotency lookup, a wrong ack loses a job.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsMessage;
use tracing::{debug, info, warn, Instrument};

use fanout_shared::runs::{BatchState, CountToken, Delta, JobCount, Tally};
use fanout_shared::{
    decode_body, now_ms, Acquire, BackendError, Claim, Failure, FailureKind, HoldReason, HostEvent,
    JobMessage, Status, Transition, ATTR_DEAD_LETTER_ATTEMPT, ATTR_FAILURE_REASON, ATTR_HOLDER,
    ATTR_NOT_BEFORE, ATTR_STATUS_CODE, ATTR_UNRECORDED_SUCCESS, MAX_DELAY,
};

use crate::backend::{reschedule_delay, Window, BEFORE_CALL_PATIENCE, RESCHEDULE_PATIENCE};
use crate::count::{BatchStatus, Written};
use crate::flow::{Admission, HostChange};
use crate::http::CallOutcome;
use crate::limiter::Deferred;
use crate::Consumer;

/// How long after its invocation's deadline a batch still pending is sealed by a copy of one
/// of its jobs: a count sent just before the deadline has landed by then (and one that lands
/// later is refused by the seal, never double counted).
const SEAL_AFTER_MS: i64 = 2_000;

/// Longest `failure_reason` written to the DLQ.
const MAX_REASON_LEN: usize = 1000;

/// What a job leaves its acquire between its permit and its call's last start: a healthy
/// store answers in milliseconds; one slower than this makes the job skip its call
/// (`too_late_to_call`) rather than cut it short.
const ACQUIRE_ALLOWANCE: Duration = Duration::from_millis(100);

/// What happened to one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The call succeeded and was recorded.
    Succeeded,
    /// The job had already succeeded (or was already dead-lettered): acked without a call.
    Duplicate,
    /// Sent to the DLQ with this reason, then acked.
    DeadLettered(String),
    /// A copy was sent back to the queue to come back after `delay`; this one was acked.
    Rescheduled {
        /// Why it comes back later.
        why: Reschedule,
        /// When, from now.
        delay: Duration,
    },
    /// Reported as a batch item failure, for this reason: SQS keeps the message and delivers it
    /// again after the visibility timeout. Only when a backend failed (metric `Requeued`).
    Kept(String),
}

/// Why a job was rescheduled.
#[derive(Debug, Clone, PartialEq)]
pub enum Reschedule {
    /// Its permit (this instance's share of the budgets) is due after the invocation's deadline,
    /// or the message asked to wait (a delay longer than one SQS message can carry).
    Waiting,
    /// Its host (or the whole pipeline) is held.
    Held(HoldReason),
    /// Another consumer holds its idempotency lock.
    Locked,
    /// Its call failed transiently; the delayed copy is the retry, after the backoff (metric
    /// `Retried`).
    Backoff(String),
    /// A backend (DynamoDB, SQS) failed after every retry the step allows; the copy tries the
    /// step again later (metric `BackendRescheduled`). It never counts as one of the job's
    /// attempts.
    Backend(String),
}

impl Verdict {
    /// Whether SQS should keep the message (batch item failure).
    pub fn is_kept(&self) -> bool {
        matches!(self, Verdict::Kept(_))
    }
}

/// One record's verdict plus what it measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordReport {
    /// The verdict.
    pub verdict: Verdict,
    /// The job's host, once known.
    pub host: Option<String>,
    /// The call's latency, if a call was made.
    pub call_latency: Option<Duration>,
    /// The HTTP status of the call, if one came back.
    pub status: Option<u16>,
    /// Time spent waiting for a rate-limit permit.
    pub rate_wait: Duration,
    /// What the call changed about its host.
    pub host_change: HostChange,
    /// The job's run and the batch of this instance its settlement is counted in (this
    /// record's, or a settled job's whose count it took over): its message may be deleted only
    /// once that batch is applied ([`crate::count`]).
    pub count: Option<(String, u64)>,
}

impl RecordReport {
    fn new(verdict: Verdict) -> Self {
        Self {
            verdict,
            host: None,
            call_latency: None,
            status: None,
            rate_wait: Duration::ZERO,
            host_change: HostChange::default(),
            count: None,
        }
    }

    /// This report, its message to be deleted only once batch `seq` of `run_id` is applied.
    fn counted_in(mut self, run_id: &str, seq: u64) -> Self {
        self.count = Some((run_id.to_owned(), seq));
        self
    }
}

/// A permanent failure on its way to the DLQ: the text it carries there, and the status and
/// class its run counts (fresh from a [`Failure`], or as a REJECTED record kept them).
struct Rejection<'a> {
    text: &'a str,
    status: Option<u16>,
    class: String,
}

/// The idempotency lock a record holds: its fencing token, the job's transient failures so
/// far, the class its run counts it under as dead-lettered (a replayed job), and how long the
/// steps after the call may retry a backend fault (the invocation's working time: the call's
/// outcome is only in memory) and when the lock lapses (a copy rescheduled after a fault is
/// due no sooner: it would only meet the lock).
struct Lock {
    attempt: u32,
    failures: u32,
    dead_letter_class: Option<String>,
    holder: i64,
    window: Window,
    expires_ms: i64,
    /// The invocation's deadline (ms since the epoch): the count token's.
    deadline_ms: i64,
}

impl Lock {
    fn new(
        (attempt, failures): (u32, u32),
        dead_letter_class: Option<String>,
        claim: &Claim<'_>,
        deadline: Deadline,
    ) -> Self {
        Self {
            attempt,
            failures,
            dead_letter_class,
            holder: claim.holder,
            window: deadline.window(),
            expires_ms: claim.lock_until_ms,
            deadline_ms: deadline.epoch_ms,
        }
    }

    /// The delay of a copy rescheduled after a backend fault: past the lock, jittered.
    fn after_lapse(&self) -> Duration {
        ms_until(self.expires_ms) + reschedule_delay()
    }
}

/// The invocation's deadline, as Lambda gives it (ms since the epoch) and as an `Instant`.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// Lambda's deadline, ms since the epoch: the IN_PROGRESS lock expires then.
    pub epoch_ms: i64,
    /// The latest instant work may still start (the deadline minus the safety margin).
    pub work_until: Instant,
    /// The whole working time of the invocation (start to `work_until`).
    pub budget: Duration,
    /// Lambda's deadline as an instant: nothing may run past it.
    pub ends: Instant,
    /// When the record becomes visible to other invocations again, if before [`Self::ends`]
    /// (a batch's record under a visibility timeout shorter than the invocation,
    /// [`crate::Settings::visibility_timeout`]): it waits for its permit no longer than
    /// that, since another invocation receiving it meanwhile would wait for one too, and
    /// each receive brings the message nearer the queue's receive limit and its DLQ.
    pub reappears_at: Option<Instant>,
}

impl Deadline {
    /// From Lambda's deadline in ms since the epoch and a safety margin.
    pub fn new(epoch_ms: i64, margin: Duration) -> Self {
        let remaining = Duration::from_millis(u64::try_from(epoch_ms - now_ms()).unwrap_or(0));
        let now = Instant::now();
        let ends = now + remaining;
        let work_until = ends.checked_sub(margin).unwrap_or(now);
        Self {
            epoch_ms,
            work_until,
            budget: work_until - now,
            ends,
            reappears_at: None,
        }
    }

    /// This deadline for records hidden `visibility` from now (none: past the invocation).
    pub fn hidden_for(self, visibility: Option<Duration>) -> Self {
        let reappears_at = visibility
            .map(|v| Instant::now() + v)
            .filter(|at| *at < self.ends);
        Self {
            reappears_at,
            ..self
        }
    }

    /// The retries of a step that may use the whole working time.
    pub(crate) fn window(&self) -> Window {
        Window {
            retry_until: self.work_until,
            stop: self.ends,
        }
    }

    /// The retries of a step before the call: a few seconds at most.
    fn before_call(&self) -> Window {
        Window {
            retry_until: (Instant::now() + BEFORE_CALL_PATIENCE).min(self.work_until),
            stop: self.ends,
        }
    }

    /// The latest instant a call expected to take `reserve` may start so it ends before
    /// `work_until` ([`crate::latency`] estimates it). A call expected to outlast the whole
    /// invocation may start at once (it runs cut short: config check warns).
    fn call_by(&self, reserve: Duration) -> Instant {
        self.work_until
            .checked_sub(reserve.min(self.budget))
            .unwrap_or(self.work_until)
    }
}

fn ms_until(at_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(at_ms - now_ms()).unwrap_or(0))
}

impl Consumer {
    /// Processes one SQS record to a verdict. Never panics on input. The record's log lines
    /// carry its run and message IDs and attempt (through its own span, attached with
    /// `Instrument`, so concurrent records never borrow each other's).
    pub async fn process_record(&self, record: &SqsMessage, deadline: Deadline) -> RecordReport {
        let body = record.body.as_deref().unwrap_or_default();
        let mut job = match decode_body(body) {
            Ok(job) => job,
            Err(e) => {
                let failure = Failure::new(FailureKind::Poison, format!("poison message: {e}"));
                return self.dead_letter_unparsed(record, &failure).await;
            }
        };
        let span = tracing::info_span!("record", run_id = %job.run_id, message_id = %job.message_id, attempt = tracing::field::Empty);
        // From here on the job is the consumer's own target; the message only named it.
        let mut report = match self.policy.authorize(&job) {
            Ok(own) => {
                job.target = own;
                self.process_job(record, &job, deadline)
                    .instrument(span)
                    .await
            }
            // A job of the config whose message differs from it is still one of its run's
            // jobs: it is refused through its idempotency record, so the run counts it once.
            Err(reason) => match self.policy.refused_target(&job) {
                Some(own) => {
                    job.target = own;
                    self.refuse(record, &job, &reason, deadline)
                        .instrument(span)
                        .await
                }
                None => return self.dead_letter_unparsed(record, &reason).await,
            },
        };
        report.host = job.target.host();
        report
    }

    async fn process_job(
        &self,
        record: &SqsMessage,
        job: &JobMessage,
        deadline: Deadline,
    ) -> RecordReport {
        let host = job.target.host().unwrap_or_default();
        if let Some(success) = string_attribute(record, ATTR_UNRECORDED_SUCCESS) {
            if let Some(report) = self
                .record_unrecorded_success(record, job, &host, success, deadline)
                .await
            {
                return report;
            }
        }
        if let Some(at_ms) =
            string_attribute(record, ATTR_NOT_BEFORE).and_then(|a| a.parse::<i64>().ok())
        {
            if at_ms > now_ms() {
                return self
                    .reschedule(record, ms_until(at_ms), Reschedule::Waiting)
                    .await;
            }
        }
        let _holding = self.flow.holding(&host);
        let admission = self.flow.admit(&host).await;
        if let Admission::Hold { until_ms, reason } = admission {
            return self.hold(record, &host, until_ms, reason).await;
        }
        let timeout = Duration::from_millis(job.target.timeout_ms);
        let reserve = self.latencies.reserve(&host, timeout, deadline.budget);
        let call_by = deadline.call_by(reserve);
        let rate_wait = match self.permit(record, &host, (call_by, deadline)).await {
            Ok(waited) => waited,
            Err(deferred) => {
                return self
                    .reschedule(record, deferred.delay, Reschedule::Waiting)
                    .await
            }
        };
        if admission == Admission::Go && !rate_wait.is_zero() {
            if let Admission::Hold { until_ms, reason } = self.flow.readmit(&host).await {
                return self.hold(record, &host, until_ms, reason).await;
            }
        }
        let claim = self.claim(record, job, deadline);
        let lock = match self.acquire(&claim, deadline).await {
            Ok(Acquire::Acquired {
                attempt,
                failures,
                dead_letter_class,
            }) => Lock::new((attempt, failures), dead_letter_class, &claim, deadline),
            Ok(Acquire::AlreadyCompleted | Acquire::AlreadyDeadLettered) => {
                return self.settled_copy(record, job, deadline).await;
            }
            Ok(Acquire::Locked { until_ms }) => {
                // Come back when the lock lapses: sooner would only meet it again.
                debug!(until_ms, "locked by another consumer");
                return self
                    .reschedule(record, ms_until(until_ms), Reschedule::Locked)
                    .await;
            }
            Ok(Acquire::Rejected {
                attempt,
                reason,
                status_code,
                class,
                dead_letter_class,
            }) => {
                // A holder decided "permanent" and crashed before confirming the DLQ copy.
                let lock = Lock::new((attempt, 0), dead_letter_class, &claim, deadline);
                let rejection = Rejection {
                    text: &reason,
                    status: status_code,
                    class,
                };
                return self
                    .dead_letter_job(record, job, &host, &lock, &rejection)
                    .await;
            }
            Err(e) => return self.after_acquire_fault(record, &claim, &e).await,
        };
        // (A call expected to outlast the whole invocation starts at once, cut short: see
        // `Deadline::call_by`.)
        if Instant::now() > call_by && reserve < deadline.budget {
            return self.too_late_to_call(record, &claim).await;
        }
        tracing::Span::current().record("attempt", lock.failures + 1);
        let timeout = timeout
            .min(
                deadline
                    .work_until
                    .saturating_duration_since(Instant::now()),
            )
            .max(Duration::from_millis(1));
        let started = Instant::now();
        let outcome = self
            .caller
            .call(&job.target, &job.message_id, timeout)
            .await;
        let latency = started.elapsed();
        self.latencies.observe(&host, latency);
        let (mut report, host_change) = self.settle(record, job, &host, &lock, outcome).await;
        report.call_latency = Some(latency);
        report.rate_wait = rate_wait;
        report.host_change = host_change;
        report
    }

    /// Waits for the job's permits (the host's share, the global share) before `call_by`,
    /// leaving the acquire its allowance before it. A record that would reappear meanwhile
    /// (a visibility timeout shorter than the invocation) waits until then, and longer only
    /// once it is kept hidden for the rest of the invocation: else every invocation that
    /// received it again would wait for a permit too, and the receives would add up to the
    /// queue's limit and a DLQ copy of a job that succeeds.
    async fn permit(
        &self,
        record: &SqsMessage,
        host: &str,
        (call_by, deadline): (Instant, Deadline),
    ) -> Result<Duration, Deferred> {
        let before = |at: Instant| at.checked_sub(ACQUIRE_ALLOWANCE).unwrap_or(at);
        let Some(reappears_at) = deadline.reappears_at.filter(|at| *at < call_by) else {
            return self.flow.permit(host, before(call_by)).await;
        };
        let started = Instant::now();
        match self.flow.permit(host, before(reappears_at)).await {
            Err(Deferred { delay })
                if Instant::now() + delay < call_by && self.keep_hidden(record, deadline).await =>
            {
                self.flow.permit(host, before(call_by)).await?;
                Ok(started.elapsed())
            }
            answer => answer,
        }
    }

    /// A copy carrying its job's unrecorded success ([`ATTR_UNRECORDED_SUCCESS`]): records it
    /// without a call while the record is still held by that attempt and holder; `None` (go
    /// on as any delivery, the attribute dropped) when it is not, or the attribute does not
    /// parse: then it was taken over, settled, or the attribute is not ours.
    async fn record_unrecorded_success(
        &self,
        record: &SqsMessage,
        job: &JobMessage,
        host: &str,
        success: &str,
        deadline: Deadline,
    ) -> Option<RecordReport> {
        let mut parts = success.splitn(3, ':');
        let (attempt, holder, status) = (
            parts.next()?.parse::<u32>().ok()?,
            parts.next()?.parse::<i64>().ok()?,
            parts.next()?.parse::<u16>().ok()?,
        );
        let ids = [job.message_id.clone()];
        let found = self
            .with_backend_retries("read record", deadline.before_call(), || {
                self.store.get_many(&ids)
            })
            .await;
        let current = match found {
            Ok(records) => records.into_iter().next(),
            Err(e) => {
                return Some(
                    self.reschedule_with(
                        record,
                        reschedule_delay(),
                        Reschedule::Backend(format!("read record: {e}")),
                        Some((ATTR_UNRECORDED_SUCCESS, success.to_owned())),
                    )
                    .await,
                )
            }
        };
        let held = current.as_ref().is_some_and(|r| {
            r.status == Status::InProgress && r.attempts == attempt && r.holder == Some(holder)
        });
        if !held {
            debug!("the carried success is not the record's holder's; handling the copy afresh");
            return None;
        }
        let lock = Lock {
            attempt,
            failures: 0,
            dead_letter_class: current.and_then(|r| r.dead_letter_class),
            holder,
            window: deadline.window(),
            expires_ms: self.lock_until_ms(deadline),
            deadline_ms: deadline.epoch_ms,
        };
        info!(attempt, status, "recording the success its copy carried");
        Some(self.complete(record, job, host, &lock, status).await)
    }

    /// Holds a job whose host may not be called now: it comes back when the hold ends.
    async fn hold(
        &self,
        record: &SqsMessage,
        host: &str,
        until_ms: i64,
        reason: HoldReason,
    ) -> RecordReport {
        debug!(host, reason = reason.as_str(), "held");
        self.reschedule(record, ms_until(until_ms), Reschedule::Held(reason))
            .await
    }

    /// Refuses a job of the config whose message differs from it: no call, straight to the DLQ,
    /// through its idempotency record (so a copy is refused once and its run counts it once).
    async fn refuse(
        &self,
        record: &SqsMessage,
        job: &JobMessage,
        failure: &Failure,
        deadline: Deadline,
    ) -> RecordReport {
        let claim = self.claim(record, job, deadline);
        let host = job.target.host().unwrap_or_default();
        match self.acquire(&claim, deadline).await {
            Ok(Acquire::Acquired {
                attempt,
                dead_letter_class,
                ..
            }) => {
                let lock = Lock::new((attempt, 0), dead_letter_class, &claim, deadline);
                self.reject(record, job, &host, &lock, failure).await
            }
            Ok(Acquire::Rejected {
                attempt,
                reason,
                status_code,
                class,
                dead_letter_class,
            }) => {
                self.dead_letter_job(
                    record,
                    job,
                    &host,
                    &Lock::new((attempt, 0), dead_letter_class, &claim, deadline),
                    &Rejection {
                        text: &reason,
                        status: status_code,
                        class,
                    },
                )
                .await
            }
            Ok(Acquire::AlreadyCompleted | Acquire::AlreadyDeadLettered) => {
                self.settled_copy(record, job, deadline).await
            }
            Ok(Acquire::Locked { until_ms }) => {
                self.reschedule(record, ms_until(until_ms), Reschedule::Locked)
                    .await
            }
            Err(e) => self.after_acquire_fault(record, &claim, &e).await,
        }
    }

    /// When a lock taken in this invocation lapses: the lock grace past its deadline
    /// ([`crate::Settings::lock_grace`] says why).
    fn lock_until_ms(&self, deadline: Deadline) -> i64 {
        deadline.epoch_ms + ms_i64(self.settings.lock_grace)
    }

    /// The idempotency claim of `job`, locked until the lock grace past the invocation's deadline.
    fn claim<'a>(&self, record: &SqsMessage, job: &'a JobMessage, deadline: Deadline) -> Claim<'a> {
        Claim {
            message_id: &job.message_id,
            run_id: &job.run_id,
            target_id: &job.target.id,
            now_ms: now_ms(),
            lock_until_ms: self.lock_until_ms(deadline),
            expiration_s: self.expiration_s(),
            replay_of: string_attribute(record, ATTR_DEAD_LETTER_ATTEMPT)
                .and_then(|a| a.parse().ok()),
            // A copy rescheduled after its acquire failed claims with that acquire's token.
            holder: string_attribute(record, ATTR_HOLDER)
                .and_then(|h| h.parse().ok())
                .unwrap_or_else(Claim::new_holder),
        }
    }

    /// Takes the job's lock, retrying a backend fault in place for a few seconds. A lock a try
    /// took whose answer was lost is the claim's own: the retries take it again, and so does
    /// the copy [`Self::after_acquire_fault`] reschedules.
    async fn acquire(
        &self,
        claim: &Claim<'_>,
        deadline: Deadline,
    ) -> Result<Acquire, BackendError> {
        self.with_backend_retries("acquire", deadline.before_call(), || {
            self.store.acquire(claim)
        })
        .await
    }

    /// Records the call's outcome: in the host's shared state, then in the job's record.
    async fn settle(
        &self,
        record: &SqsMessage,
        job: &JobMessage,
        host: &str,
        lock: &Lock,
        outcome: CallOutcome,
    ) -> (RecordReport, HostChange) {
        match outcome {
            CallOutcome::Succeeded { status } => {
                let change = self.flow.report(host, HostEvent::Succeeded).await;
                let mut report = self.complete(record, job, host, lock, status).await;
                report.status = Some(status);
                (report, change)
            }
            CallOutcome::Transient {
                reason,
                status,
                retry_after,
            } => {
                let event = match status {
                    Some(429) => HostEvent::Throttled {
                        retry_after_ms: retry_after.map(ms_i64),
                        failure: None,
                    },
                    Some(503) => HostEvent::Throttled {
                        retry_after_ms: retry_after.map(ms_i64),
                        failure: Some(self.flow.failed(host)),
                    },
                    _ => HostEvent::Failed {
                        streak: self.flow.failed(host),
                    },
                };
                let change = self.flow.report(host, event).await;
                let failures = lock.failures + 1;
                let mut report = if self.retry.gives_up(failures) {
                    let failure = Failure::retries_exhausted(failures, status, &reason);
                    self.reject(record, job, host, lock, &failure).await
                } else {
                    self.retry_later(record, job, lock, failures, reason, status, retry_after)
                        .await
                };
                report.status = status;
                (report, change)
            }
            CallOutcome::Permanent(failure) => {
                // An answer, even a 4xx, means the host is up.
                let status = failure.status();
                let change = if status.is_some() {
                    self.flow.report(host, HostEvent::Succeeded).await
                } else {
                    HostChange::default()
                };
                let mut report = self.reject(record, job, host, lock, &failure).await;
                report.status = status;
                (report, change)
            }
        }
    }

    async fn complete(
        &self,
        record: &SqsMessage,
        job: &JobMessage,
        host: &str,
        lock: &Lock,
        status: u16,
    ) -> RecordReport {
        let tally = Tally {
            run_id: &job.run_id,
            host,
            reason: None,
            undo: lock.dead_letter_class.as_deref(),
        };
        let expiration_s = self.expiration_s();
        let joined = self.counter.join(&job.run_id, lock.deadline_ms);
        let completed = self
            .with_backend_retries("complete", lock.window, || {
                self.store.complete(
                    &job.message_id,
                    lock.attempt,
                    status,
                    expiration_s,
                    (&tally, joined.token()),
                )
            })
            .await;
        let seq = joined.written(written(&completed), &tally.delta(true));
        match completed {
            Ok(Transition::Done) => {
                RecordReport::new(Verdict::Succeeded).counted_in(&job.run_id, seq)
            }
            Ok(Transition::Superseded) => {
                // Our lock expired mid-call and another attempt took over; it settles the job.
                warn!("call succeeded after the lock expired; the newer attempt settles the job");
                RecordReport::new(Verdict::Duplicate)
            }
            // The call succeeded but could not be recorded while the invocation lasted: the
            // copy carries the success and records it when it comes back, without a call.
            Err(e) => {
                let success = format!("{}:{}:{status}", lock.attempt, lock.holder);
                warn!(error = %e, "the call's success could not be recorded; its copy will record it");
                self.reschedule_with(
                    record,
                    reschedule_delay(),
                    Reschedule::Backend(format!("complete: {e}")),
                    Some((ATTR_UNRECORDED_SUCCESS, success)),
                )
                .await
            }
        }
    }

    /// Transient failure with attempts left: FAILED (one more failure counted), then a copy
    /// comes back after the backoff.
    #[allow(clippy::too_many_arguments)]
    async fn retry_later(
        &self,
        record: &SqsMessage,
        job: &JobMessage,
        lock: &Lock,
        failures: u32,
        reason: String,
        status: Option<u16>,
        retry_after: Option<Duration>,
    ) -> RecordReport {
        let delay = self.retry.delay(failures, fastrand::f64(), retry_after);
        let failed = self
            .with_backend_retries("fail", lock.window, || {
                self.store
                    .fail(&job.message_id, lock.attempt, &reason, status)
            })
            .await;
        if let Err(e) = failed {
            // The failure goes uncounted and the lock lapses at the deadline: the copy comes
            // back after both.
            let delay = delay.max(lock.after_lapse());
            return self.after_backend_fault(record, "fail", &e, delay).await;
        }
        info!(%reason, failures, max_attempts = self.retry.max_attempts, delay_ms = delay.as_millis() as u64, "transient failure, retry scheduled");
        self.reschedule(record, delay, Reschedule::Backoff(reason))
            .await
    }

    /// Permanent failure: REJECTED before the DLQ copy, so a crash in between neither calls the
    /// target twice nor loses the job.
    async fn reject(
        &self,
        record: &SqsMessage,
        job: &JobMessage,
        host: &str,
        lock: &Lock,
        failure: &Failure,
    ) -> RecordReport {
        let rejected = self
            .with_backend_retries("reject", lock.window, || {
                self.store.reject(&job.message_id, lock.attempt, failure)
            })
            .await;
        match rejected {
            Ok(_) => {
                let text = failure.to_string();
                let rejection = Rejection {
                    text: &text,
                    status: failure.status(),
                    class: failure.class(),
                };
                self.dead_letter_job(record, job, host, lock, &rejection)
                    .await
            }
            // Not recorded: the copy comes back once the lock lapses and decides again.
            Err(e) => {
                self.after_backend_fault(record, "reject", &e, lock.after_lapse())
                    .await
            }
        }
    }

    /// Sends a copy of `record` back to the job queue, to become visible after `delay`, and acks
    /// this one. A delay longer than one SQS message can carry travels as the `not_before`
    /// attribute and the copy is rescheduled again when it comes back early. If the send fails,
    /// the message itself is kept and hidden for the delay instead (a batch item failure).
    async fn reschedule(
        &self,
        record: &SqsMessage,
        delay: Duration,
        why: Reschedule,
    ) -> RecordReport {
        self.reschedule_with(record, delay, why, None).await
    }

    /// [`Self::reschedule`] with one attribute set on the copy (every other one of ours is
    /// the record's, less what only one delivery may carry).
    async fn reschedule_with(
        &self,
        record: &SqsMessage,
        delay: Duration,
        why: Reschedule,
        extra: Option<(&str, String)>,
    ) -> RecordReport {
        let mut attributes = string_attributes(record);
        attributes.remove(ATTR_NOT_BEFORE);
        attributes.remove(ATTR_UNRECORDED_SUCCESS);
        attributes.remove(ATTR_HOLDER);
        if let Some((name, value)) = extra {
            attributes.insert(name.to_owned(), value);
        }
        if delay > MAX_DELAY {
            attributes.insert(
                ATTR_NOT_BEFORE.to_owned(),
                (now_ms() + ms_i64(delay)).to_string(),
            );
        }
        let body = record.body.as_deref().unwrap_or_default();
        let window = Window::from_now(RESCHEDULE_PATIENCE);
        let sent = self
            .with_backend_retries("reschedule", window, || {
                self.source
                    .send_delayed(body, &attributes, delay.min(MAX_DELAY))
            })
            .await;
        match sent {
            Ok(_) => RecordReport::new(Verdict::Rescheduled { why, delay }),
            Err(e) => {
                warn!(error = %e, "could not send the rescheduled copy; keeping the message instead");
                if let Some(receipt) = record.receipt_handle.as_deref() {
                    if let Err(e) = self
                        .source
                        .change_visibility(receipt, delay.min(Duration::from_secs(12 * 60 * 60)))
                        .await
                    {
                        warn!(error = %e, "could not hide the message either");
                    }
                }
                RecordReport::new(Verdict::Kept(format!("reschedule: {e}")))
            }
        }
    }

    /// Permanent failure of a job with an idempotency record: DLQ copy, then confirm (which
    /// counts it in its run).
    async fn dead_letter_job(
        &self,
        record: &SqsMessage,
        job: &JobMessage,
        host: &str,
        lock: &Lock,
        rejection: &Rejection<'_>,
    ) -> RecordReport {
        let attempt = lock.attempt;
        let mut extra = vec![(ATTR_DEAD_LETTER_ATTEMPT, attempt.to_string())];
        if let Some(code) = rejection.status {
            extra.push((ATTR_STATUS_CODE, code.to_string()));
        }
        let report = self
            .send_to_dlq(record, rejection.text, &extra, lock.window)
            .await;
        if matches!(report.verdict, Verdict::DeadLettered(_)) {
            let tally = Tally {
                run_id: &job.run_id,
                host,
                reason: Some(&rejection.class),
                undo: lock.dead_letter_class.as_deref(),
            };
            let joined = self.counter.join(&job.run_id, lock.deadline_ms);
            let confirmed = self
                .with_backend_retries("confirm dead-lettering", lock.window, || {
                    self.store
                        .dead_lettered(&job.message_id, attempt, (&tally, joined.token()))
                })
                .await;
            let written = written(&confirmed);
            let seq = joined.written(written, &tally.delta(false));
            if let Err(e) = &confirmed {
                // Maybe still REJECTED: the message is kept (its batch is sealed, never
                // applied), and a redelivery confirms it, or sends a second DLQ copy.
                warn!(error = %e, "could not confirm the DLQ copy");
            }
            if written != Written::No {
                return report.counted_in(&job.run_id, seq);
            }
        }
        report
    }

    /// Permanent failure of a message that never became a job (poison, refused by the policy).
    async fn dead_letter_unparsed(&self, record: &SqsMessage, failure: &Failure) -> RecordReport {
        let window = Window::from_now(BEFORE_CALL_PATIENCE);
        self.send_to_dlq(record, &failure.to_string(), &[], window)
            .await
    }

    /// Sends `record` to the DLQ with its reason, retrying a backend fault until `until`; then
    /// the record is rescheduled and its copy tries again (a REJECTED job resumes its DLQ send
    /// without a call).
    async fn send_to_dlq(
        &self,
        record: &SqsMessage,
        reason: &str,
        extra: &[(&str, String)],
        window: Window,
    ) -> RecordReport {
        let mut attributes = string_attributes(record);
        let reason: String = reason.chars().take(MAX_REASON_LEN).collect();
        attributes.insert(ATTR_FAILURE_REASON.to_owned(), reason.clone());
        attributes.remove(ATTR_STATUS_CODE);
        attributes.remove(ATTR_NOT_BEFORE);
        attributes.remove(ATTR_UNRECORDED_SUCCESS);
        attributes.remove(ATTR_HOLDER);
        for (k, v) in extra {
            attributes.insert((*k).to_owned(), v.clone());
        }
        let body = record.body.as_deref().unwrap_or_default();
        let sent = self
            .with_backend_retries("send to DLQ", window, || self.dlq.send(body, &attributes))
            .await;
        match sent {
            Ok(_) => {
                info!(%reason, "dead-lettered");
                RecordReport::new(Verdict::DeadLettered(reason))
            }
            Err(e) => {
                self.after_backend_fault(record, "send to DLQ", &e, reschedule_delay())
                    .await
            }
        }
    }

    /// A copy of a job already settled: acked once the settlement is counted. Its record's
    /// count token says where that stands ([`fanout_shared::runs`]'s `count` module): in an
    /// applied batch (ack now); in a batch of this instance still pending (ack once it
    /// applies); in a sealed batch, or one whose invocation ended without applying it (seal it
    /// first): this copy moves the job's count into its own batch; in a batch whose
    /// invocation may still apply it: come back after that invocation's deadline.
    async fn settled_copy(
        &self,
        record: &SqsMessage,
        job: &JobMessage,
        deadline: Deadline,
    ) -> RecordReport {
        let ids = [job.message_id.clone()];
        let found = self
            .with_backend_retries("read record", deadline.before_call(), || {
                self.store.get_many(&ids)
            })
            .await;
        let count = match found {
            Ok(records) => records.into_iter().next().and_then(|r| r.count),
            Err(e) => {
                return self
                    .after_backend_fault(record, "read record", &e, reschedule_delay())
                    .await
            }
        };
        debug!("duplicate: already settled");
        let Some(JobCount { token, delta }) = count else {
            return RecordReport::new(Verdict::Duplicate);
        };
        let run_id = job.run_id.as_str();
        if token.instance == self.counter.instance() {
            match self.counter.status(run_id, token.seq) {
                BatchStatus::Applied => return RecordReport::new(Verdict::Duplicate),
                BatchStatus::Pending => {
                    return RecordReport::new(Verdict::Duplicate).counted_in(run_id, token.seq)
                }
                BatchStatus::Sealed => {
                    return self
                        .take_count(record, job, (&token, &delta), deadline)
                        .await
                }
                // Its batch was applied or sealed long ago: the ledger says which, as for
                // another instance's.
                BatchStatus::Forgotten => {}
            }
        }
        if self
            .counter
            .cached(run_id)
            .is_some_and(|state| state.batch(&token) == BatchState::Applied)
        {
            return RecordReport::new(Verdict::Duplicate);
        }
        let read = self
            .with_backend_retries("read run counters", deadline.before_call(), || {
                self.runs.count_state(run_id)
            })
            .await;
        let mut state = match read {
            Ok(Some(state)) => state,
            Ok(None) => return RecordReport::new(Verdict::Duplicate),
            Err(e) => {
                return self
                    .after_backend_fault(record, "read run counters", &e, reschedule_delay())
                    .await
            }
        };
        let lapses_ms = token.deadline_ms + SEAL_AFTER_MS;
        if state.batch(&token) == (BatchState::Pending { next: true }) && now_ms() > lapses_ms {
            let sealed = self
                .with_backend_retries("seal a batch", deadline.before_call(), || {
                    self.runs.seal(run_id, &token.instance, token.seq)
                })
                .await;
            state = match sealed {
                Ok(Some(state)) => state,
                Ok(None) => return RecordReport::new(Verdict::Duplicate),
                Err(e) => {
                    return self
                        .after_backend_fault(record, "seal a batch", &e, reschedule_delay())
                        .await
                }
            };
        }
        self.counter.remember(run_id, &state);
        match state.batch(&token) {
            BatchState::Applied => RecordReport::new(Verdict::Duplicate),
            BatchState::Sealed => {
                self.take_count(record, job, (&token, &delta), deadline)
                    .await
            }
            // Its instance may still apply it, or an earlier batch of that instance is pending
            // (its own copies seal it first): look again later.
            BatchState::Pending { .. } => {
                let wait = ms_until(lapses_ms).max(reschedule_delay());
                self.reschedule(record, wait, Reschedule::Locked).await
            }
        }
    }

    /// Moves a settled job's count out of a sealed batch into this instance's open batch.
    async fn take_count(
        &self,
        record: &SqsMessage,
        job: &JobMessage,
        (from, delta): (&CountToken, &Delta),
        deadline: Deadline,
    ) -> RecordReport {
        let joined = self.counter.join(&job.run_id, deadline.epoch_ms);
        let moved = self
            .with_backend_retries("recount", deadline.before_call(), || {
                self.store.recount(&job.message_id, from, joined.token())
            })
            .await;
        let written = match &moved {
            Ok(true) => Written::Yes,
            Ok(false) => Written::No,
            Err(_) => Written::Unknown,
        };
        let seq = joined.written(written, delta);
        match moved {
            Ok(true) => {
                info!(sealed = %from, "counting a job of a sealed batch");
                RecordReport::new(Verdict::Duplicate).counted_in(&job.run_id, seq)
            }
            // Another copy moved it first: look again where it went.
            Ok(false) => {
                self.reschedule(record, reschedule_delay(), Reschedule::Locked)
                    .await
            }
            Err(e) => {
                self.after_backend_fault(record, "recount", &e, reschedule_delay())
                    .await
            }
        }
    }

    /// The acquire's fault outlasted its retries: the copy comes back with the claim's holder
    /// token, so a lock one of the tries took (its answer lost) is its own, not another's.
    async fn after_acquire_fault(
        &self,
        record: &SqsMessage,
        claim: &Claim<'_>,
        e: &BackendError,
    ) -> RecordReport {
        warn!(error = %e, "acquire: backend fault outlasted its retries; rescheduling the record with its holder token");
        self.reschedule_with(
            record,
            reschedule_delay(),
            Reschedule::Backend(format!("acquire: {e}")),
            Some((ATTR_HOLDER, claim.holder.to_string())),
        )
        .await
    }

    /// The lock was taken after the call's last start (the store answered slowly, as a
    /// throttled one does): a call now would be cut short by the deadline, and a call cut short
    /// may still reach the target and succeed there while it reads as a timeout here, to be
    /// called again. No call: the copy takes the lock again with its holder token and calls.
    async fn too_late_to_call(&self, record: &SqsMessage, claim: &Claim<'_>) -> RecordReport {
        warn!("the lock came after the call's last start; rescheduling the record with its holder token");
        self.reschedule_with(
            record,
            reschedule_delay(),
            Reschedule::Backend("acquire: answered after the call's last start".into()),
            Some((ATTR_HOLDER, claim.holder.to_string())),
        )
        .await
    }

    /// A step's backend fault outlasted its retries: the record comes back after `delay` as a
    /// delayed copy, which tries the step again. Nothing about the job is counted.
    async fn after_backend_fault(
        &self,
        record: &SqsMessage,
        step: &str,
        e: &BackendError,
        delay: Duration,
    ) -> RecordReport {
        warn!(error = %e, step, delay_ms = delay.as_millis() as u64, "backend fault outlasted its retries; rescheduling the record");
        self.reschedule(record, delay, Reschedule::Backend(format!("{step}: {e}")))
            .await
    }

    fn expiration_s(&self) -> i64 {
        now_ms() / 1000 + self.settings.record_ttl.as_secs() as i64
    }
}

/// How a settlement's record write went, for its batch.
fn written(result: &Result<Transition, BackendError>) -> Written {
    match result {
        Ok(Transition::Done) => Written::Yes,
        Ok(Transition::Superseded) => Written::No,
        Err(_) => Written::Unknown,
    }
}

fn ms_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn string_attribute<'a>(record: &'a SqsMessage, name: &str) -> Option<&'a str> {
    record.message_attributes.get(name)?.string_value.as_deref()
}

fn string_attributes(record: &SqsMessage) -> BTreeMap<String, String> {
    record
        .message_attributes
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.string_value.clone()?)))
        .collect()
}
