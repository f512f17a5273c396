//! Batch plumbing: run a batch's records concurrently and answer SQS with the failures.
//!
//! Relies on the event source mapping's `FunctionResponseTypes: ["ReportBatchItemFailures"]`:
//! without it, Lambda ignores the response and one failed record retries the whole batch.

use std::collections::HashMap;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures_util::stream::{self, StreamExt};

use fanout_shared::job::ATTR_MESSAGE_ID;
use fanout_shared::metrics::{MetricSet, Unit};

use crate::record::{Deadline, Verdict};
use crate::Consumer;

/// The answer to one invocation, and what it measured.
#[derive(Debug)]
pub struct BatchReport {
    /// The partial batch response for Lambda.
    pub response: SqsBatchResponse,
    /// The invocation's metrics (flush them as EMF, or aggregate them).
    pub metrics: MetricSet,
}

impl Consumer {
    /// Processes one SQS event whose invocation must end by `deadline_ms` (ms since the epoch,
    /// Lambda's `context.deadline`). Records run concurrently, at most
    /// `settings.batch_concurrency` at once, except copies of one job, which run one after
    /// another (`copies_together` says why); every record that is not settled is listed as a batch
    /// item failure.
    pub async fn handle_batch(&self, event: SqsEvent, deadline_ms: i64) -> BatchReport {
        let deadline = Deadline::new(deadline_ms, self.settings.deadline_margin);
        // Records are moved into their futures: borrowed ones trip the compiler's higher-ranked
        // lifetime check when this future is spawned.
        let reports: Vec<_> = stream::iter(copies_together(event.records))
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
            .collect()
            .await;

        let mut response = SqsBatchResponse::default();
        let mut metrics = MetricSet::new([("Function".to_owned(), self.settings.function_name.clone())]);
        metrics.count("Records", reports.len() as u64);
        for (message_id, report) in reports {
            let name = match &report.verdict {
                Verdict::Succeeded => "Succeeded",
                Verdict::Duplicate => "DuplicatesSkipped",
                Verdict::DeadLettered(_) => "DeadLettered",
                Verdict::Retry(_) if report.locked => "LockedElsewhere",
                Verdict::Retry(_) => "Retried",
            };
            metrics.count(name, 1);
            if report.verdict.is_retry() {
                // A record without an ID cannot be reported; SQS then retries the whole batch,
                // which the idempotency store absorbs.
                response.add_failure(message_id.unwrap_or_default());
            }
            if let Some(latency) = report.call_latency {
                metrics.count("OutboundCalls", 1);
                metrics.sample("CallLatency", Unit::Milliseconds, ms(latency));
            }
            if report.rate_wait > Duration::ZERO {
                metrics.sample("RateLimitWait", Unit::Milliseconds, ms(report.rate_wait));
            }
        }
        BatchReport { response, metrics }
    }
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
