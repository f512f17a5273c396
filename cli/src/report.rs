//! The end-of-run summary (table or JSON) and the progress display.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde::Serialize;

use fanout_shared::metrics::{Metric, MetricSet};
use fanout_shared::runs::{RunRecord, RunStatus};

use crate::dlq::ReplaySummary;
use crate::event_source::DrainOutcome;
use crate::settle::Settlement;

/// Call latency percentiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median, ms.
    pub p50: f64,
    /// 95th percentile, ms.
    pub p95: f64,
    /// 99th percentile, ms.
    pub p99: f64,
}

/// What `fanout run` prints at the end; `--json` prints exactly these keys. The outcome counts
/// are the run ledger's (what `fanout runs show` and the completion event say); `lost` checks
/// them against where the jobs are (idempotency records and the DLQ).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    /// The run this summary counts (the tick `fanout run` produced).
    pub run_id: String,
    /// The ledger's verdict: `SUCCEEDED`, `FAILED` (more dead-lettered jobs than the config's
    /// `runs` tolerates), or `RUNNING` when the run did not finish.
    pub status: RunStatus,
    /// Jobs in the run.
    pub jobs: usize,
    /// Jobs whose call succeeded.
    pub succeeded: u64,
    /// Jobs in the DLQ.
    pub dead_lettered: u64,
    /// Jobs in the DLQ by reason class.
    pub dead_lettered_by_reason: BTreeMap<String, u64>,
    /// Jobs in the DLQ by host.
    pub dead_lettered_by_host: BTreeMap<String, u64>,
    /// Deliveries skipped because the job had already settled.
    pub duplicates_skipped: u64,
    /// Transient failures retried after their backoff.
    pub retries: u64,
    /// Jobs rescheduled to wait for their permit (the budget decides when, never whether).
    pub deferred: u64,
    /// Jobs held because their host was paused or its circuit open.
    pub held: u64,
    /// Invocations that only put work back (no call made): the cost of waiting.
    pub defer_only_invocations: u64,
    /// HTTP calls made.
    pub outbound_calls: u64,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// The global budget, requests per second (absent: unlimited).
    pub rate_budget: Option<f64>,
    /// Outbound calls per second over the consume phase.
    pub achieved_rate: f64,
    /// Call latency percentiles.
    pub latency_ms: Latency,
    /// Jobs neither succeeded nor in the DLQ.
    pub lost: usize,
}

/// What `fanout consume` prints at the end; `--json` prints exactly these keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ConsumeSummary {
    /// Consumer invocations.
    pub invocations: u64,
    /// Invocations cut off at the function timeout.
    pub timed_out: u64,
    /// Whether the queue was drained (false: the timeout came first).
    pub drained: bool,
    /// Jobs whose call succeeded.
    pub succeeded: u64,
    /// Jobs sent to the DLQ.
    pub dead_lettered: u64,
    /// Deliveries skipped because the job had already settled.
    pub duplicates_skipped: u64,
    /// Transient failures retried after their backoff.
    pub retries: u64,
    /// Jobs rescheduled to wait for their permit.
    pub deferred: u64,
    /// Jobs held because their host was paused or its circuit open.
    pub held: u64,
    /// HTTP calls made.
    pub outbound_calls: u64,
    /// Wall time, seconds.
    pub elapsed_s: f64,
}

impl ConsumeSummary {
    /// The summary of one drain.
    pub(crate) fn new(outcome: &DrainOutcome) -> Self {
        // Metric totals are f64 (EMF values); these are counts.
        let count = |metric: Metric| outcome.metrics.total(metric) as u64;
        Self {
            invocations: outcome.invocations,
            timed_out: outcome.timed_out,
            drained: outcome.drained,
            succeeded: count(Metric::Succeeded),
            dead_lettered: count(Metric::DeadLettered),
            duplicates_skipped: count(Metric::DuplicatesSkipped),
            retries: count(Metric::Retried),
            deferred: count(Metric::Deferred),
            held: count(Metric::Held),
            outbound_calls: count(Metric::OutboundCalls),
            elapsed_s: outcome.elapsed.as_secs_f64(),
        }
    }
}

impl RunSummary {
    /// Builds the summary from the run's ledger record, the settlement (for `lost`) and the
    /// merged consumer metrics. Without a ledger record, the counts are the settlement's.
    pub fn new(
        run_id: &str,
        settlement: &Settlement,
        ledger: Option<&RunRecord>,
        metrics: &MetricSet,
        rate_budget: Option<f64>,
        elapsed: Duration,
        consume_time: Duration,
    ) -> Self {
        let calls = metrics.total(Metric::OutboundCalls) as u64;
        let counts =
            ledger
                .map(|r| r.counts.clone())
                .unwrap_or_else(|| fanout_shared::runs::RunCounts {
                    expected: settlement.jobs as u64,
                    succeeded: settlement.succeeded as u64,
                    dead_lettered: settlement.dead_lettered_total() as u64,
                    failures_by_reason: settlement
                        .dead_lettered
                        .iter()
                        .map(|(k, v)| (k.clone(), *v as u64))
                        .collect(),
                    failures_by_host: BTreeMap::new(),
                });
        Self {
            run_id: run_id.to_owned(),
            status: ledger.map_or(RunStatus::Running, |r| r.status),
            jobs: settlement.jobs,
            succeeded: counts.succeeded,
            dead_lettered: counts.dead_lettered,
            dead_lettered_by_reason: counts.failures_by_reason,
            dead_lettered_by_host: counts.failures_by_host,
            duplicates_skipped: metrics.total(Metric::DuplicatesSkipped) as u64,
            retries: metrics.total(Metric::Retried) as u64,
            deferred: metrics.total(Metric::Deferred) as u64,
            held: metrics.total(Metric::Held) as u64,
            defer_only_invocations: metrics.total(Metric::DeferOnlyInvocations) as u64,
            outbound_calls: calls,
            elapsed_s: round(elapsed.as_secs_f64(), 3),
            rate_budget,
            achieved_rate: round(calls as f64 / consume_time.as_secs_f64().max(1e-9), 1),
            latency_ms: latency(metrics.samples(Metric::CallLatency)),
            lost: settlement.lost.len(),
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("run".into(), self.run_id.clone()),
            ("status".into(), self.status.as_str().to_owned()),
            ("jobs".into(), self.jobs.to_string()),
            ("succeeded".into(), self.succeeded.to_string()),
            ("dead-lettered".into(), self.dead_lettered.to_string()),
        ];
        for (reason, n) in &self.dead_lettered_by_reason {
            rows.push((format!("  {reason}"), n.to_string()));
        }
        rows.extend([
            (
                "duplicates skipped".into(),
                self.duplicates_skipped.to_string(),
            ),
            ("retries".into(), self.retries.to_string()),
            (
                "deferred (waiting for budget)".into(),
                self.deferred.to_string(),
            ),
            ("held (host paused or down)".into(), self.held.to_string()),
            ("outbound calls".into(), self.outbound_calls.to_string()),
            ("elapsed".into(), format!("{:.2} s", self.elapsed_s)),
            (
                "outbound rate".into(),
                match self.rate_budget {
                    Some(budget) => format!("{:.1}/s (budget {budget}/s)", self.achieved_rate),
                    None => format!("{:.1}/s (no budget)", self.achieved_rate),
                },
            ),
            (
                "latency p50/p95/p99".into(),
                format!(
                    "{:.1} / {:.1} / {:.1} ms",
                    self.latency_ms.p50, self.latency_ms.p95, self.latency_ms.p99
                ),
            ),
            ("lost".into(), self.lost.to_string()),
        ]);
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<width$}  {v}\n"))
            .collect()
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn latency(samples: &[f64]) -> Latency {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        if sorted.is_empty() {
            return 0.0;
        }
        let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        round(sorted[index], 1)
    };
    Latency {
        p50: pick(0.50),
        p95: pick(0.95),
        p99: pick(0.99),
    }
}

/// Progress: a bar on a terminal, a plain line every few seconds otherwise, nothing if quiet.
pub(crate) struct ProgressView {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    noun: &'static str,
    started: Instant,
    last_line: std::sync::Mutex<Instant>,
    quiet: bool,
}

impl ProgressView {
    /// A view for `total` jobs on stderr.
    pub(crate) fn new(total: u64, quiet: bool) -> Self {
        Self::counting(total, "settled", quiet)
    }

    /// A view of `total` things, each counted as `noun` ("settled", "moved").
    pub(crate) fn counting(total: u64, noun: &'static str, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            let style = indicatif::ProgressStyle::with_template(&format!(
                "{{bar:40}} {{pos}}/{{len}} {noun}  {{per_sec}}  eta {{eta}}"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Self {
            bar,
            total,
            noun,
            started: Instant::now(),
            last_line: std::sync::Mutex::new(Instant::now()),
            quiet,
        }
    }

    /// Updates from the merged metrics so far.
    pub(crate) fn update(&self, metrics: &MetricSet) {
        let settled =
            (metrics.total(Metric::Succeeded) + metrics.total(Metric::DeadLettered)) as u64;
        self.set(settled, metrics.total(Metric::OutboundCalls), "calls");
    }

    /// Updates from a replay's summary so far.
    pub(crate) fn update_replay(&self, summary: &ReplaySummary) {
        self.set(
            summary.moved + summary.failed,
            summary.moved as f64,
            "messages",
        );
    }

    /// Shows `done` of the total; a plain line also gives the rate of `work` (`unit` per second).
    fn set(&self, done: u64, work: f64, unit: &str) {
        // Totals are approximate (SQS depth, duplicate deliveries): grow rather than overflow.
        let total = self.total.max(done);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
            return;
        }
        let Ok(mut last) = self.last_line.lock() else {
            return;
        };
        if !self.quiet && last.elapsed() >= Duration::from_secs(2) {
            *last = Instant::now();
            let rate = work / self.started.elapsed().as_secs_f64().max(1e-9);
            eprintln!("{} {done}/{total} ({rate:.0} {unit}/s)", self.noun);
        }
    }

    /// Removes the bar.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The human-readable summary of a replay.
pub(crate) fn replay_table(summary: &ReplaySummary) -> String {
    let mut lines = Vec::new();
    if let Some(why) = &summary.move_task_unavailable {
        lines.push(format!("move task unavailable ({why}); moved one by one"));
    }
    match (&summary.move_task, summary.dry_run) {
        (Some(task), _) => {
            lines.push(format!("started SQS move task {}", task.handle));
            match &task.status {
                Some(status) => lines.push(format!(
                    "move task {}: {} moved",
                    status.state, status.moved
                )),
                None => lines.push(
                    "not waiting for it: pass --wait, or watch `aws sqs list-message-move-tasks`"
                        .into(),
                ),
            }
        }
        (None, true) => lines.push(format!(
            "dry run: {} would move, {} skipped (not matching), nothing moved",
            summary.moved, summary.skipped
        )),
        (None, false) => {
            lines.push(format!(
                "moved {}, skipped {} (not matching), failed {} in {:.1} s",
                summary.moved, summary.skipped, summary.failed, summary.elapsed_s
            ));
            if summary.not_deleted > 0 {
                lines.push(format!("{} moved messages are still in the DLQ too (delete failed); replaying them again is harmless", summary.not_deleted));
            }
        }
    }
    lines.extend(summary.failures.iter().map(|f| format!("  failed: {f}")));
    lines.iter().map(|l| format!("{l}\n")).collect()
}
