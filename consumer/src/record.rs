//! One record's life: parse → dedupe → rate-limit → call → record the outcome.
//!
//! Every path ends in one of two answers to SQS: *ack* (the message is done: succeeded,
//! duplicate, or safely in the DLQ) or *retry* (report a batch item failure; SQS redelivers it
//! after the visibility timeout, and redrives it to the DLQ after `maxReceiveCount`). When in
//! doubt, retry: a redelivery costs one idempotency lookup, a wrong ack loses a job.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsMessage;
use tracing::{debug, info, warn};

use fanout_shared::idempotency::{Acquire, Claim, Transition};
use fanout_shared::job::{decode_body, JobMessage, ATTR_DEAD_LETTER_ATTEMPT, ATTR_FAILURE_REASON, ATTR_STATUS_CODE};
use fanout_shared::BackendError;

use crate::http::CallOutcome;
use crate::Consumer;

/// Longest `failure_reason` written to the DLQ.
const MAX_REASON_LEN: usize = 1000;

/// What happened to one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The call succeeded and was recorded.
    Succeeded,
    /// The job had already succeeded (or was already dead-lettered): acked without a call.
    Duplicate,
    /// Sent to the DLQ with this reason, then acked.
    DeadLettered(String),
    /// Reported as a batch item failure, for this reason.
    Retry(String),
}

impl Verdict {
    /// Whether SQS should keep the message (batch item failure).
    pub fn is_retry(&self) -> bool {
        matches!(self, Verdict::Retry(_))
    }
}

/// One record's verdict plus what it measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordReport {
    /// The verdict.
    pub verdict: Verdict,
    /// The call's latency, if a call was made.
    pub call_latency: Option<Duration>,
    /// Time spent waiting for a rate-limit permit.
    pub rate_wait: Duration,
    /// A live lock held elsewhere sent it back.
    pub locked: bool,
}

impl RecordReport {
    fn new(verdict: Verdict) -> Self {
        Self { verdict, call_latency: None, rate_wait: Duration::ZERO, locked: false }
    }
}

/// The invocation's deadline, as Lambda gives it (ms since the epoch) and as an `Instant`.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// Lambda's deadline, ms since the epoch: the IN_PROGRESS lock expires then.
    pub epoch_ms: i64,
    /// The latest instant work may still start (the deadline minus the safety margin).
    pub work_until: Instant,
}

impl Deadline {
    /// From Lambda's deadline in ms since the epoch and a safety margin.
    pub fn new(epoch_ms: i64, margin: Duration) -> Self {
        let remaining = Duration::from_millis(u64::try_from(epoch_ms - fanout_shared::now_ms()).unwrap_or(0));
        let now = Instant::now();
        Self { epoch_ms, work_until: (now + remaining).checked_sub(margin).unwrap_or(now) }
    }
}

impl Consumer {
    /// Processes one SQS record to a verdict. Never panics on input.
    pub async fn process_record(&self, record: &SqsMessage, deadline: Deadline) -> RecordReport {
        let body = record.body.as_deref().unwrap_or_default();
        let mut job = match decode_body(body) {
            Ok(job) => job,
            Err(e) => return self.dead_letter_unparsed(record, &format!("poison message: {e}")).await,
        };
        let span = tracing::info_span!("record", run_id = %job.run_id, message_id = %job.message_id);
        let _entered = span.enter();
        // From here on the job is the consumer's own target; the message only named it.
        match self.policy.authorize(&job) {
            Ok(own) => job.target = own.clone(),
            Err(reason) => return self.dead_letter_unparsed(record, &reason).await,
        }
        let host = job.target.host().unwrap_or_default();
        let claim = Claim {
            message_id: &job.message_id,
            run_id: &job.run_id,
            target_id: &job.target.id,
            now_ms: fanout_shared::now_ms(),
            lock_until_ms: deadline.epoch_ms,
            expiration_s: self.expiration_s(),
            replay_of: string_attribute(record, ATTR_DEAD_LETTER_ATTEMPT).and_then(|a| a.parse().ok()),
        };
        let attempt = match self.store.acquire(&claim).await {
            Ok(Acquire::Acquired { attempt }) => attempt,
            Ok(Acquire::AlreadyCompleted | Acquire::AlreadyDeadLettered) => {
                debug!("duplicate: already settled");
                return RecordReport::new(Verdict::Duplicate);
            }
            Ok(Acquire::Locked { until_ms }) => {
                debug!(until_ms, "locked by another consumer");
                // Hide this copy until the lock lapses: sooner it would only meet the lock again,
                // and every receive counts towards maxReceiveCount, so a few early returns would
                // dead-letter a job whose holder is still running it.
                let remaining = u64::try_from(until_ms - fanout_shared::now_ms()).unwrap_or(0);
                self.delay_redelivery(record, Duration::from_millis(remaining)).await;
                let mut report = RecordReport::new(Verdict::Retry("in progress elsewhere".into()));
                report.locked = true;
                return report;
            }
            Ok(Acquire::Rejected { attempt, reason, status_code }) => {
                // A holder decided "permanent" and crashed before confirming the DLQ copy.
                return self.dead_letter_job(record, &job, attempt, &reason, status_code).await;
            }
            Err(e) => return retry_on_backend("acquire", &e),
        };
        self.run_acquired(record, &job, &host, attempt, deadline).await
    }

    async fn run_acquired(&self, record: &SqsMessage, job: &JobMessage, host: &str, attempt: u32, deadline: Deadline) -> RecordReport {
        let rate_wait = match self.budget.acquire(host, deadline.work_until).await {
            Ok(waited) => waited,
            Err(deferred) => {
                let reason = format!("rate limit: next permit in {} ms is past the deadline", deferred.wait.as_millis());
                return self.release(job, attempt, reason, None).await;
            }
        };
        let remaining = deadline.work_until.saturating_duration_since(Instant::now());
        let timeout = Duration::from_millis(job.target.timeout_ms).min(remaining);
        if timeout < Duration::from_millis(10) {
            return self.release(job, attempt, "no time left before the deadline".into(), None).await;
        }
        let started = Instant::now();
        let outcome = self.caller.call(&job.target, &job.message_id, timeout).await;
        let latency = started.elapsed();
        let mut report = match outcome {
            CallOutcome::Succeeded { status } => self.complete(job, attempt, status).await,
            CallOutcome::Transient { reason, status, retry_after } => {
                if let Some(delay) = retry_after {
                    self.delay_redelivery(record, delay).await;
                }
                self.release(job, attempt, reason, status).await
            }
            CallOutcome::Permanent { reason, status } => match self.store.reject(&job.message_id, attempt, &reason, status).await {
                Ok(_) => self.dead_letter_job(record, job, attempt, &reason, status).await,
                Err(e) => retry_on_backend("reject", &e),
            },
        };
        report.call_latency = Some(latency);
        report.rate_wait = rate_wait;
        report
    }

    async fn complete(&self, job: &JobMessage, attempt: u32, status: u16) -> RecordReport {
        match self.store.complete(&job.message_id, attempt, status, self.expiration_s()).await {
            Ok(Transition::Done) => RecordReport::new(Verdict::Succeeded),
            Ok(Transition::Superseded) => {
                // Our lock expired mid-call and another attempt took over; it settles the job.
                warn!("call succeeded after the lock expired; the newer attempt settles the job");
                RecordReport::new(Verdict::Duplicate)
            }
            // The call succeeded but is not recorded: keep the message, so the job is not
            // reported lost; the retry's call carries the same Idempotency-Key.
            Err(e) => retry_on_backend("complete", &e),
        }
    }

    /// Transient failure: FAILED, so the next delivery may acquire at once; keep the message.
    async fn release(&self, job: &JobMessage, attempt: u32, reason: String, status: Option<u16>) -> RecordReport {
        if let Err(e) = self.store.fail(&job.message_id, attempt, &reason, status).await {
            // The lock then lapses at the deadline instead; the message is kept either way.
            warn!(error = %e, "could not record a transient failure");
        }
        info!(%reason, "transient failure, left for retry");
        RecordReport::new(Verdict::Retry(reason))
    }

    async fn delay_redelivery(&self, record: &SqsMessage, delay: Duration) {
        let Some(receipt) = record.receipt_handle.as_deref() else { return };
        if let Err(e) = self.source.change_visibility(receipt, delay).await {
            warn!(error = %e, "could not honour Retry-After");
        }
    }

    /// Permanent failure of a job with an idempotency record: DLQ copy, then confirm.
    async fn dead_letter_job(&self, record: &SqsMessage, job: &JobMessage, attempt: u32, reason: &str, status: Option<u16>) -> RecordReport {
        let mut extra = vec![(ATTR_DEAD_LETTER_ATTEMPT, attempt.to_string())];
        if let Some(code) = status {
            extra.push((ATTR_STATUS_CODE, code.to_string()));
        }
        let report = self.send_to_dlq(record, reason, &extra).await;
        if !report.verdict.is_retry() {
            if let Err(e) = self.store.dead_lettered(&job.message_id, attempt).await {
                // Still REJECTED: a redelivery would send a second DLQ copy; the job is safe.
                warn!(error = %e, "could not confirm the DLQ copy");
            }
        }
        report
    }

    /// Permanent failure of a message that never became a job (poison, refused by the policy).
    async fn dead_letter_unparsed(&self, record: &SqsMessage, reason: &str) -> RecordReport {
        self.send_to_dlq(record, reason, &[]).await
    }

    async fn send_to_dlq(&self, record: &SqsMessage, reason: &str, extra: &[(&str, String)]) -> RecordReport {
        let mut attributes: BTreeMap<String, String> = record
            .message_attributes
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.string_value.clone()?)))
            .collect();
        let reason: String = reason.chars().take(MAX_REASON_LEN).collect();
        attributes.insert(ATTR_FAILURE_REASON.to_owned(), reason.clone());
        attributes.remove(ATTR_STATUS_CODE);
        for (k, v) in extra {
            attributes.insert((*k).to_owned(), v.clone());
        }
        let body = record.body.as_deref().unwrap_or_default();
        match self.dlq.send(body, &attributes).await {
            Ok(_) => {
                info!(%reason, "dead-lettered");
                RecordReport::new(Verdict::DeadLettered(reason))
            }
            Err(e) => retry_on_backend("send to DLQ", &e),
        }
    }

    fn expiration_s(&self) -> i64 {
        fanout_shared::now_ms() / 1000 + self.settings.record_ttl.as_secs() as i64
    }
}

fn string_attribute<'a>(record: &'a SqsMessage, name: &str) -> Option<&'a str> {
    record.message_attributes.get(name)?.string_value.as_deref()
}

fn retry_on_backend(step: &str, e: &BackendError) -> RecordReport {
    warn!(error = %e, step, "backend error, message kept for retry");
    RecordReport::new(Verdict::Retry(format!("{step}: {e}")))
}
