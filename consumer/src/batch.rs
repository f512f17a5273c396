//! Batch plumbing: run a batch's records concurrently and answer SQS with the failures.
//!
//! Relies on the event source mapping's `FunctionResponseTypes: ["ReportBatchItemFailures"]`:
//! without it, Lambda ignores the response and one failed record retries the whole batch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::pin;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use fanout_shared::job::{decode_body, ATTR_MESSAGE_ID};
use fanout_shared::metrics::{Metric, MetricSet};
use fanout_shared::runs::{run_metrics, shard_of, Finisher};
use fanout_shared::RunRecord;
use futures_util::future::{self, Either};
use futures_util::stream::{self, StreamExt};
use tracing::warn;

use crate::flow::RENEW_CHECK;
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
    /// another (`copies_together` says why); every record that is not settled or rescheduled is
    /// listed as a batch item failure. While the batch runs, the instance's lease is renewed,
    /// so the fleet keeps counting it in the budget split. Several batches may run on one
    /// instance at once (`fanout run`'s invocation slots): they share its limiters and its lease.
    pub async fn handle_batch(&self, event: SqsEvent, deadline_ms: i64) -> BatchReport {
        let started = std::time::Instant::now();
        let deadline = Deadline::new(deadline_ms, self.settings.deadline_margin);
        // Two store round trips, neither waiting for the other: every one before the first
        // call is time the instance's share goes unused.
        let hosts = hosts_of(&event.records);
        let (in_flight, unreadable) =
            future::join(self.flow.start_batch(), self.flow.refresh(&hosts)).await;
        // Records are moved into their futures: borrowed ones trip the compiler's higher-ranked
        // lifetime check when this future is spawned.
        let work = stream::iter(copies_together(event.records))
            .map(|copies| async move {
                let mut reports = Vec::with_capacity(copies.len());
                for record in copies {
                    let report = self.process_record(&record, deadline).await;
                    reports.push((record.message_id, report));
                }
                reports
            })
            .buffer_unordered(self.settings.batch_concurrency.max(1))
            .flat_map(stream::iter)
            .collect::<Vec<_>>();
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
        let reports = match future::select(pin!(work), pin!(renewals)).await {
            Either::Left((reports, _)) => reports,
            Either::Right(((), work)) => work.await,
        };
        let ((), finished_runs) = future::join(
            self.flow.end_batch(in_flight),
            self.finish_runs(&reports, deadline),
        )
        .await;
        let mut report = self.report(reports);
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

    /// Finishes each run whose jobs this batch settled, if they were its last: the verdict and
    /// the completion event (see [`fanout_shared::runs`]). A backend fault is retried while the
    /// invocation lasts, with one clock reading for all tries, so a retried
    /// finish whose first answer was lost is recognised as this one. What still fails loses
    /// nothing: the counts are written, the instance tries again with its next batch (a shard
    /// whose completion was never registered would otherwise keep every later batch from
    /// seeing the run settled), and the producer's watchdog is the last resort.
    async fn finish_runs(
        &self,
        reports: &[(Option<String>, RecordReport)],
        deadline: Deadline,
    ) -> Vec<RunRecord> {
        let mut shards: BTreeMap<String, BTreeSet<u32>> = std::mem::take(
            &mut *self
                .unfinished
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (run_id, message_id) in reports.iter().filter_map(|(_, r)| r.settled.as_ref()) {
            shards
                .entry(run_id.clone())
                .or_default()
                .insert(shard_of(message_id));
        }
        let finisher = Finisher::new(
            self.runs.as_ref(),
            self.events.as_ref(),
            &self.settings.pipeline,
        );
        let mut finished = Vec::new();
        // Half the deadline's safety margin is the finish's: past the working time, never past
        // the invocation.
        let window = crate::backend::Window {
            retry_until: deadline.work_until + self.settings.deadline_margin / 2,
            stop: deadline.ends,
        };
        let now_ms = fanout_shared::now_ms();
        for (run_id, shards) in shards {
            let list: Vec<u32> = shards.iter().copied().collect();
            let outcome = self
                .with_backend_retries("finish run", window, || {
                    finisher.finish_if_settled(&run_id, &list, now_ms)
                })
                .await;
            match outcome {
                Ok(Some(done)) => finished.push(done.run),
                Ok(None) => {}
                Err(e) => {
                    warn!(run_id, error = %e, "could not check whether the run is finished; trying again with the next batch");
                    self.unfinished
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .entry(run_id)
                        .or_default()
                        .extend(shards);
                }
            }
        }
        finished
    }

    fn report(&self, reports: Vec<(Option<String>, RecordReport)>) -> BatchReport {
        let function = &self.settings.function_name;
        let mut response = SqsBatchResponse::default();
        let mut metrics = MetricSet::new([("Function".to_owned(), function.clone())]);
        let mut host_metrics: BTreeMap<String, MetricSet> = BTreeMap::new();
        metrics.count(Metric::Records, reports.len() as u64);
        let (mut called, mut waited) = (false, false);
        for (message_id, report) in reports {
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
            if report.verdict.is_kept() {
                // A record without an ID cannot be reported; SQS then retries the whole batch,
                // which the idempotency store absorbs.
                response.add_failure(message_id.unwrap_or_default());
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
        let key = record
            .message_attributes
            .get(ATTR_MESSAGE_ID)
            .and_then(|a| a.string_value.clone())
            .or_else(|| record.body.clone())
            .unwrap_or_default();
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
