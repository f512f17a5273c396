//! Batch plumbing: run a batch's records concurrently and answer SQS with the failures.
//!
//! Relies on the event source mapping's `FunctionResponseTypes: ["ReportBatchItemFailures"]`:
//! without it, Lambda ignores the response and one failed record retries the whole batch.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::{pin, Pin};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use fanout_shared::metrics::{Metric, MetricSet};
use fanout_shared::runs::{run_metrics, Finisher, RunCounts, RunRecord};
use fanout_shared::{decode_body, BackendError, ATTR_MESSAGE_ID};
use futures_util::future::{self, Either};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tracing::warn;

use crate::count::BatchStatus;
use crate::flow::RENEW_CHECK;
use crate::pull::Pull;
use crate::record::{Deadline, RecordReport, Reschedule, Verdict};
use crate::Consumer;

/// The answer to one invocation, and what it measured.
#[derive(Debug)]
pub struct BatchReport {
    /// The partial batch response for Lambda.
    pub response: SqsBatchResponse,
    /// The invocation's metrics (flush them as EMF, or aggregate them).
    pub metrics: MetricSet,
    /// Per-host metrics (dimensions `Function` and `Host`), for hosts that were called or held.
    pub host_metrics: BTreeMap<String, MetricSet>,
    /// Backend faults per operation (dimensions `Function` and `Operation`): `BackendThrottled`
    /// and `BackendFailed`, counted after the SDK's own retries.
    pub backend_metrics: Vec<MetricSet>,
    /// Runs this invocation finished (it settled their last jobs), with their verdicts.
    pub finished_runs: Vec<RunRecord>,
    /// Run metrics (dimension `Pipeline`): runs succeeded or failed, their durations.
    pub run_metrics: MetricSet,
}

impl BatchReport {
    /// Prints every EMF line (the function's, then each host's) to stdout.
    pub fn flush_stdout(&self) {
        self.metrics.flush_stdout();
        for metrics in self.host_metrics.values().chain(&self.backend_metrics) {
            metrics.flush_stdout();
        }
        self.run_metrics.flush_stdout();
    }
}

impl Consumer {
    /// Processes one SQS event whose invocation must end by `deadline_ms` (ms since the epoch,
    /// Lambda's `context.deadline`). Records run concurrently, at most
    /// `settings.batch_concurrency` at once, except copies of one job, which run one after
    /// another (`copies_together` says why); while there is room and time the invocation
    /// receives more records itself and runs them too ([`crate::pull`]). Every record of the
    /// event that is not settled or rescheduled is listed as a batch item failure. While the
    /// records run, the instance's lease is renewed, so the fleet keeps counting it in the
    /// budget split. Several batches may run on one instance at once (`fanout run`'s
    /// invocation slots): they share its limiters and its lease.
    pub async fn handle_batch(&self, event: SqsEvent, deadline_ms: i64) -> BatchReport {
        let started = std::time::Instant::now();
        let deadline = Deadline::new(deadline_ms, self.settings.deadline_margin);
        self.counter.forget_idle_runs();
        // Two store round trips, neither waiting for the other: every one before the first
        // call is time the instance's share goes unused.
        let hosts = hosts_of(&event.records);
        let (in_flight, unreadable) =
            future::join(self.flow.start_batch(), self.flow.refresh(&hosts)).await;
        // The renewals run beside the records (never in their way: a store round trip does not
        // pause them) and end with them.
        let renewals = async {
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + RENEW_CHECK, RENEW_CHECK);
            loop {
                ticker.tick().await;
                self.flow.renew_lease().await;
            }
        };
        let work = self.work(event.records, deadline);
        let worked = match future::select(pin!(work), pin!(renewals)).await {
            Either::Left((done, _)) => done,
            Either::Right(((), work)) => work.await,
        };
        let ((), finished_runs) = future::join(
            self.flow.end_batch(in_flight),
            self.finish_runs(worked.counted, deadline),
        )
        .await;
        let mut report = self.report(worked.reports, worked.uncounted);
        report.metrics.count(Metric::Pulled, worked.pulled);
        if unreadable > 0 {
            report
                .metrics
                .count(Metric::HostStateUnreadable, unreadable);
        }
        report.run_metrics = run_metrics(&self.settings.pipeline, &finished_runs);
        report.finished_runs = finished_runs;
        report.backend_metrics = self.faults.take(&self.settings.function_name);
        // What Lambda bills, near enough; the benchmark's cost figures add it up from the logs.
        report.metrics.property(
            "DurationMs",
            (started.elapsed().as_secs_f64() * 1000.0).round(),
        );
        report
    }

    /// Runs the batch's records, as many at once as [`Consumer::capacity`] allows and copies of
    /// one job one after another ([`copies_together`]), and what the invocation pulls beside them
    /// ([`crate::pull`]), to their reports. A settled record waits for its count: the
    /// instance applies its batches ([`crate::count`]) within [`DELETE_LINGER`] (or at ten
    /// records, or when nothing else runs), and only a record whose batch applied is done. A
    /// pulled record done is deleted within [`DELETE_LINGER`] (ten at a time when they come
    /// fast); so are the batch's own once the invocation has pulled (it may run on for
    /// seconds, and a done record must not come back meanwhile), or from the start when the
    /// queue's visibility timeout is shorter than the invocation. An invocation that does
    /// neither leaves its batch to the mapping's delete. A record whose count did not apply is
    /// kept: a batch record is listed as a failure, a pulled one is not deleted.
    async fn work(&self, records: Vec<SqsMessage>, deadline: Deadline) -> Worked {
        let mut pull = Pull::new(self.settings.pull, deadline);
        // The batch's records, under a visibility timeout shorter than the invocation, come
        // back before its end: each is deleted as soon as it is done, as after a pull.
        let batch_deadline = deadline.hidden_for(self.settings.visibility_timeout);
        let mut delete_as_done = batch_deadline.reappears_at.is_some();
        // And then a done record's count and its delete each wait a quarter of it at most.
        let linger_for = match self.settings.visibility_timeout {
            Some(visibility) if delete_as_done => DELETE_LINGER.min(visibility / 4),
            _ => DELETE_LINGER,
        };
        let mut queued: VecDeque<Group> = copies_together(records)
            .into_iter()
            .map(|records| Group {
                records,
                pulled: false,
            })
            .collect();
        // The jobs running now, with the pulled copies that wait for them to end.
        let mut running_jobs: HashMap<String, Vec<SqsMessage>> = HashMap::new();
        let mut running = FuturesUnordered::new();
        let mut receiving: Option<Pin<Box<Pulling<'_>>>> = None;
        let mut deleting = FuturesUnordered::new();
        let mut done_receipts: Vec<String> = Vec::new();
        // The batch's done records, deleted by the mapping unless the invocation pulls.
        let mut batch_done: Vec<String> = Vec::new();
        // Settled records whose batch is not applied yet, and the flush applying them.
        let mut awaiting: Vec<Awaiting> = Vec::new();
        let mut flushing: Option<Pin<Box<Flushing<'_>>>> = None;
        let mut flushed_idle = false;
        let mut count_linger = tokio::time::Instant::now();
        let mut linger = tokio::time::Instant::now();
        let mut worked = Worked::default();
        let window = self.finish_window(deadline);
        let flush_until = tokio::time::Instant::from_std(window.retry_until);
        let delete =
            move |receipts: Vec<String>| async move { self.delete_done(&receipts, window).await };
        loop {
            let rate = self.flow.call_rate();
            let capacity = self.capacity(rate);
            while running.len() < capacity {
                let Some(group) = queued.pop_front() else {
                    break;
                };
                running_jobs.entry(job_key(&group.records[0])).or_default();
                let deadline = if group.pulled {
                    deadline
                } else {
                    batch_deadline
                };
                running.push(self.run_group(group, deadline));
            }
            if receiving.is_none() {
                if let Some(max) = pull.room(
                    running.len() + queued.len(),
                    capacity,
                    (&self.in_flight, rate),
                ) {
                    receiving = Some(Box::pin(self.pull(max, deadline)));
                }
            }
            // Ten make a request; with nothing left to run, so do the last few.
            let idle = running.is_empty() && receiving.is_none();
            // Ten settled records make a flush; so does the end of the work, also for batches
            // left pending by an earlier invocation (or one to be sealed).
            if flushing.is_none()
                && ((!awaiting.is_empty() && awaiting.len() >= 10)
                    || (idle
                        && !flushed_idle
                        && (!awaiting.is_empty() || self.counter.has_pending())))
            {
                flushed_idle = idle;
                flushing = Some(Box::pin(
                    self.counter.flush(self.runs.as_ref(), flush_until),
                ));
            }
            if done_receipts.len() >= 10
                || (idle && flushing.is_none() && !done_receipts.is_empty())
            {
                deleting.push(delete(std::mem::take(&mut done_receipts)));
            }
            tokio::select! {
                Some((key, done)) = running.next() => {
                    if done_receipts.is_empty() && awaiting.is_empty() {
                        linger = tokio::time::Instant::now() + linger_for;
                    }
                    for handled in done {
                        if let (Some(receipt), false) = (&handled.receipt, handled.report.verdict.is_kept()) {
                            let entry = Awaiting {
                                id: handled.id.clone(),
                                receipt: receipt.clone(),
                                pulled: handled.pulled,
                                count: handled.report.count.clone(),
                            };
                            if entry.count.is_some() {
                                if awaiting.is_empty() {
                                    count_linger = tokio::time::Instant::now() + linger_for;
                                }
                                flushed_idle = false;
                                awaiting.push(entry);
                            } else if handled.pulled || delete_as_done {
                                done_receipts.push(entry.receipt);
                            } else {
                                batch_done.push(entry.receipt);
                            }
                        }
                        worked.reports.push(handled);
                    }
                    if let Some(copies) = running_jobs.remove(&key).filter(|c| !c.is_empty()) {
                        queued.push_front(Group { records: copies, pulled: true });
                    }
                }
                got = async {
                    match receiving.as_mut() {
                        Some(receive) => receive.await,
                        None => future::pending().await,
                    }
                }, if receiving.is_some() => {
                    receiving = None;
                    match got {
                        Ok(records) if !records.is_empty() => {
                            if !delete_as_done && done_receipts.is_empty() {
                                linger = tokio::time::Instant::now() + linger_for;
                            }
                            delete_as_done = true;
                            worked.pulled += records.len() as u64;
                            done_receipts.append(&mut batch_done);
                            for copies in copies_together(records) {
                                match running_jobs.get_mut(&job_key(&copies[0])) {
                                    Some(waiting) => waiting.extend(copies),
                                    None => queued.push_back(Group { records: copies, pulled: true }),
                                }
                            }
                        }
                        Ok(_) => pull.stop(),
                        Err(e) => {
                            warn!(error = %e, "could not pull more records; this invocation works on what it has");
                            pull.stop();
                        }
                    }
                }
                counted = async {
                    match flushing.as_mut() {
                        Some(flush) => flush.await,
                        None => future::pending().await,
                    }
                }, if flushing.is_some() => {
                    flushing = None;
                    for (run_id, counts) in counted {
                        worked.counted.insert(run_id, counts);
                    }
                    if done_receipts.is_empty() {
                        linger = tokio::time::Instant::now() + linger_for;
                    }
                    let gave_up = flushed_idle && running.is_empty() && receiving.is_none();
                    for entry in std::mem::take(&mut awaiting) {
                        let status = entry
                            .count
                            .as_ref()
                            .map_or(BatchStatus::Applied, |(run, seq)| self.counter.status(run, *seq));
                        match status {
                            BatchStatus::Applied if entry.pulled || delete_as_done => {
                                done_receipts.push(entry.receipt);
                            }
                            BatchStatus::Applied => batch_done.push(entry.receipt),
                            BatchStatus::Pending if !gave_up => awaiting.push(entry),
                            // Sealed, or still pending at the end: the message comes back.
                            _ => {
                                if let (false, Some(id)) = (entry.pulled, entry.id) {
                                    worked.uncounted.push(id);
                                }
                            }
                        }
                    }
                    count_linger = tokio::time::Instant::now() + linger_for;
                }
                () = tokio::time::sleep_until(count_linger), if flushing.is_none() && !awaiting.is_empty() => {
                    flushing = Some(Box::pin(self.counter.flush(self.runs.as_ref(), flush_until)));
                }
                () = tokio::time::sleep_until(linger), if !done_receipts.is_empty() => {
                    deleting.push(delete(std::mem::take(&mut done_receipts)));
                }
                Some(()) = deleting.next() => {}
                else => break,
            }
        }
        worked
    }

    /// Runs copies of one job one after another. Returns the job's key and each record's
    /// outcome.
    async fn run_group(&self, group: Group, deadline: Deadline) -> (String, Vec<Handled>) {
        let key = job_key(&group.records[0]);
        let mut handled = Vec::with_capacity(group.records.len());
        for record in group.records {
            let started = std::time::Instant::now();
            let report = self.process_record(&record, deadline).await;
            if report.call_latency.is_some() {
                self.in_flight
                    .observe(started.elapsed().saturating_sub(report.rate_wait));
            }
            handled.push(Handled {
                id: record.message_id,
                receipt: record.receipt_handle,
                pulled: group.pulled,
                report,
            });
        }
        (key, handled)
    }

    /// How many records the invocation runs at once now ([`crate::in_flight`]): enough for its
    /// `rate` ([`crate::flow::Flow::call_rate`]), at least `batch_concurrency`, at most
    /// `max_in_flight`.
    fn capacity(&self, rate: Option<f64>) -> usize {
        let floor = self.settings.batch_concurrency.max(1);
        self.in_flight
            .capacity(rate, floor, self.settings.max_in_flight)
    }

    /// How long the steps at an invocation's end may retry a backend fault: half the deadline's
    /// safety margin past the working time, never past the invocation.
    fn finish_window(&self, deadline: Deadline) -> crate::backend::Window {
        crate::backend::Window {
            retry_until: deadline.work_until + self.settings.deadline_margin / 2,
            stop: deadline.ends,
        }
    }

    /// Finishes each run whose counters this invocation's counts brought to settled: the
    /// verdict and the completion event (see [`fanout_shared::runs`]). A backend fault is
    /// retried while the invocation lasts, with one clock reading for all tries, so a retried
    /// finish whose first answer was lost is recognised as this one. What still fails loses
    /// nothing: the counts are written, the instance tries again with its next batch, and the
    /// producer's watchdog is the last resort.
    async fn finish_runs(
        &self,
        counted: BTreeMap<String, RunCounts>,
        deadline: Deadline,
    ) -> Vec<RunRecord> {
        let mut settled = std::mem::take(
            &mut *self
                .unfinished
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        settled.extend(
            counted
                .into_iter()
                .filter(|(_, counts)| counts.in_flight() == 0),
        );
        let finisher = Finisher::new(
            self.runs.as_ref(),
            self.events.as_ref(),
            &self.settings.pipeline,
        );
        let mut finished = Vec::new();
        let window = self.finish_window(deadline);
        let now_ms = fanout_shared::now_ms();
        for (run_id, counts) in settled {
            let outcome = self
                .with_backend_retries("finish run", window, || {
                    finisher.finish_if_settled(&run_id, &counts, now_ms)
                })
                .await;
            match outcome {
                Ok(Some(done)) => finished.push(done.run),
                Ok(None) => {}
                Err(e) => {
                    warn!(run_id, error = %e, "could not finish the run; trying again with the next batch");
                    self.unfinished
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(run_id, counts);
                }
            }
        }
        finished
    }

    fn report(&self, reports: Vec<Handled>, uncounted: Vec<String>) -> BatchReport {
        let function = &self.settings.function_name;
        let mut response = SqsBatchResponse::default();
        let mut metrics = MetricSet::new([("Function".to_owned(), function.clone())]);
        let mut host_metrics: BTreeMap<String, MetricSet> = BTreeMap::new();
        metrics.count(Metric::Records, reports.len() as u64);
        let (mut called, mut waited) = (false, false);
        for Handled {
            id, pulled, report, ..
        } in reports
        {
            let verdict = match &report.verdict {
                Verdict::Succeeded => Metric::Succeeded,
                Verdict::Duplicate => Metric::DuplicatesSkipped,
                Verdict::DeadLettered(_) => Metric::DeadLettered,
                Verdict::Rescheduled {
                    why: Reschedule::Backoff(_),
                    ..
                } => Metric::Retried,
                Verdict::Rescheduled {
                    why: Reschedule::Waiting,
                    ..
                } => Metric::Deferred,
                Verdict::Rescheduled {
                    why: Reschedule::Held(_),
                    ..
                } => Metric::Held,
                Verdict::Rescheduled {
                    why: Reschedule::Locked,
                    ..
                } => Metric::LockedElsewhere,
                Verdict::Rescheduled {
                    why: Reschedule::Backend(_),
                    ..
                } => Metric::BackendRescheduled,
                Verdict::Kept(_) => Metric::Requeued,
            };
            metrics.count(verdict, 1);
            if report.verdict.is_kept() && !pulled {
                // A record without an ID cannot be reported; SQS then retries the whole batch,
                // which the idempotency store absorbs. A pulled one is not the event's: it
                // comes back when its hiding ends.
                response.add_failure(id.unwrap_or_default());
            }
            waited |= matches!(
                report.verdict,
                Verdict::Rescheduled {
                    why: Reschedule::Waiting | Reschedule::Held(_),
                    ..
                }
            );
            if let Some(latency) = report.call_latency {
                called = true;
                metrics.count(Metric::OutboundCalls, 1);
                metrics.sample(Metric::CallLatency, ms(latency));
            }
            if report.rate_wait > Duration::ZERO {
                metrics.sample(Metric::RateLimitWait, ms(report.rate_wait));
            }
            let held = matches!(
                report.verdict,
                Verdict::Rescheduled {
                    why: Reschedule::Held(_),
                    ..
                }
            );
            if let (Some(host), true) = (&report.host, report.call_latency.is_some() || held) {
                let m = host_metrics.entry(host.clone()).or_insert_with(|| {
                    MetricSet::new([
                        ("Function".to_owned(), function.clone()),
                        ("Host".to_owned(), host.clone()),
                    ])
                });
                let change = report.host_change;
                for (metric, happened) in [
                    (Metric::HostCalls, report.call_latency.is_some()),
                    (Metric::HostThrottled, report.status == Some(429)),
                    (Metric::HostRateDecreased, change.slowed),
                    (Metric::CircuitOpened, change.opened),
                    (Metric::CircuitClosed, change.closed),
                    (Metric::JobsHeld, held),
                ] {
                    m.count(metric, u64::from(happened));
                }
            }
        }
        // Settled, but the batch counting it did not apply: the message must come back.
        for id in uncounted {
            response.add_failure(id);
        }
        // An invocation that only put work back: the budget or a hold gave it nothing to do.
        metrics.count(Metric::DeferOnlyInvocations, u64::from(waited && !called));
        BatchReport {
            response,
            metrics,
            host_metrics,
            backend_metrics: Vec::new(),
            finished_runs: Vec::new(),
            run_metrics: MetricSet::default(),
        }
    }
}

/// The hosts of a batch's jobs (undecodable bodies have none), to read their states at once.
fn hosts_of(records: &[SqsMessage]) -> BTreeSet<String> {
    records
        .iter()
        .filter_map(|r| decode_body(r.body.as_deref()?).ok()?.target.host())
        .collect()
}

/// Groups the records of a batch by job, in order of first appearance. Copies of one job (SNS
/// and SQS deliver at least once, and copies often arrive side by side) then run one after
/// another: the later copy finds the job settled and is acked, instead of meeting the first
/// copy's live lock and waiting out a visibility timeout. The key is the producer's
/// `message_id` attribute, or the body itself when a message lacks it (envelope delivery).
fn copies_together(records: Vec<SqsMessage>) -> Vec<Vec<SqsMessage>> {
    let mut groups: Vec<Vec<SqsMessage>> = Vec::with_capacity(records.len());
    let mut index: HashMap<String, usize> = HashMap::with_capacity(records.len());
    for record in records {
        let key = job_key(&record);
        match index.get(&key) {
            Some(&i) => groups[i].push(record),
            None => {
                index.insert(key, groups.len());
                groups.push(vec![record]);
            }
        }
    }
    groups
}

/// The job a record carries, as [`copies_together`] groups them.
fn job_key(record: &SqsMessage) -> String {
    record
        .message_attributes
        .get(ATTR_MESSAGE_ID)
        .and_then(|a| a.string_value.clone())
        .or_else(|| record.body.clone())
        .unwrap_or_default()
}

/// How long a settled record may wait to be deleted with others: one request deletes up to
/// ten, and a record is not received again meanwhile unless the queue's visibility timeout is
/// shorter than this.
const DELETE_LINGER: Duration = Duration::from_millis(250);

/// What an invocation's records came to.
#[derive(Default)]
struct Worked {
    reports: Vec<Handled>,
    /// Records pulled.
    pulled: u64,
    /// The runs' counters after this invocation's counts.
    counted: BTreeMap<String, RunCounts>,
    /// Batch records settled whose count did not apply: kept (batch item failures).
    uncounted: Vec<String>,
}

/// A settled record waiting for its batch to apply before its message is deleted.
struct Awaiting {
    id: Option<String>,
    receipt: String,
    pulled: bool,
    count: Option<(String, u64)>,
}

/// A flush of the instance's batches in flight: the counters of the runs it applied to.
type Flushing<'a> = dyn Future<Output = Vec<(String, RunCounts)>> + Send + 'a;

/// One record's outcome in an invocation.
struct Handled {
    id: Option<String>,
    receipt: Option<String>,
    /// Received by the invocation itself: not the event's, so never in its batch response.
    pulled: bool,
    report: RecordReport,
}

/// Copies of one job, and whether the invocation pulled them.
struct Group {
    records: Vec<SqsMessage>,
    pulled: bool,
}

/// A receive of more records in flight.
type Pulling<'a> = dyn Future<Output = Result<Vec<SqsMessage>, BackendError>> + Send + 'a;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
