//! The fanout producer: one scheduled tick → one job message per target, published in batches.
//!
//! # Layout
//! - [`tick`]: the run ID, derived from the schedule's input (or given by hand).
//! - [`ledger`]: the schedule guard and the run record, written before publishing.
//! - `list`: the tick's jobs: literal targets and every source's rows through their templates,
//!   read in one streaming pass (a spool file, never the whole list in memory) before publishing.
//! - [`answer`]: what the Lambda answers: a tick's [`Summary`] or the [`WatchdogAnswer`], in the
//!   JSON that `fanout trigger` reads back into the same types.
//! - [`publish`]: batching under SNS limits, batches in flight at once, retry of failed entries.
//!
//! The Lambda binary (`main.rs`) loads the config, builds the clients and calls [`produce`] for
//! a scheduled tick, or [`watchdog`] for the watchdog's periodic invocation.

#![warn(missing_docs)]

mod answer;
mod ledger;
mod list;
mod publish;
mod tick;

use std::time::Instant;

use fanout_shared::metrics::{Metric, MetricSet};
use fanout_shared::runs::{self, EventBus, Finisher, RunLedger, RunStatus, Sweep};
use fanout_shared::{BackendError, PipelineConfig, Publisher, TickValues};

pub use answer::{Summary, WatchdogAnswer};
pub use fanout_shared::runs::SourceRead;
pub use ledger::{run_start, Started};
pub use list::{message_ids, preview, ListError, ListReaders, Preview};
pub use publish::{PublishError, PublishOptions};
pub use tick::{is_watchdog, tick_from_event, TickError};

/// How many of the latest runs the watchdog looks at.
const WATCHDOG_RUNS: usize = 20;

/// The values of the templates' `{tick.…}` placeholders for `tick` (only read from the ledger
/// when a source needs them).
async fn tick_values(
    config: &PipelineConfig,
    tick: &Tick,
    ledger: &dyn RunLedger,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<TickValues, PublishError> {
    let scheduled = tick
        .scheduled_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or(now);
    let last_success_at = if config.sources.is_empty() {
        config.tick.first_last_success_at.clone()
    } else {
        ledger::last_success_at(
            ledger,
            &tick.run_id,
            scheduled.timestamp_millis(),
            &config.tick.first_last_success_at,
        )
        .await
        .map_err(PublishError::Ledger)?
    };
    Ok(TickValues {
        scheduled_at: scheduled.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        run_id: tick.run_id.clone(),
        last_success_at,
    })
}

/// One tick: its run ID and, for a scheduled one, the schedule's time.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    /// The run's ID, from the schedule's name and time (the same tick gives the same ID, so a
    /// retried invocation finds its run), or the one the event names.
    pub run_id: String,
    /// The schedule's time (RFC 3339), for a scheduled tick.
    pub scheduled_at: Option<String>,
    /// The schedule that started it, for a scheduled tick: its `Ticks` are also counted per
    /// schedule, which the schedule's `ProducerNotRunning` alarm watches.
    pub schedule: Option<String>,
}

/// The producer's metrics for a tick (dimension `Pipeline`): one `Ticks`, and `RunsStarted` or
/// `RunsSkipped`; for a scheduled tick a second set (dimensions `Pipeline` and `Schedule`) with
/// its `Ticks` again, one metric per schedule for each schedule's `ProducerNotRunning` alarm.
pub fn tick_metrics(pipeline: &str, tick: &Tick, summary: &Summary) -> Vec<MetricSet> {
    let pipeline_dimension = ("Pipeline".to_owned(), pipeline.to_owned());
    let mut metrics = MetricSet::new([pipeline_dimension.clone()]);
    metrics.count(Metric::Ticks, 1);
    metrics.count(
        Metric::RunsStarted,
        u64::from(summary.started == Started::New),
    );
    metrics.count(
        Metric::RunsSkipped,
        u64::from(matches!(summary.started, Started::Skipped(_))),
    );
    let per_schedule = tick.schedule.as_ref().map(|schedule| {
        let mut set = MetricSet::new([
            pipeline_dimension,
            ("Schedule".to_owned(), schedule.clone()),
        ]);
        set.count(Metric::Ticks, 1);
        set
    });
    std::iter::once(metrics).chain(per_schedule).collect()
}

/// The watchdog's pass over the latest runs ([`Finisher::sweep`]) and its metrics: `RunsOverdue`
/// (always written, so the alarm sees a 0), and the runs it finished.
pub async fn watchdog(
    ledger: &dyn RunLedger,
    bus: &dyn EventBus,
    pipeline: &str,
) -> Result<(Sweep, MetricSet), BackendError> {
    let sweep = Finisher::new(ledger, bus, pipeline)
        .sweep(WATCHDOG_RUNS, fanout_shared::now_ms())
        .await?;
    for run in &sweep.overdue {
        tracing::warn!(run_id = %run.run_id, settled = run.counts.settled(), expected = run.counts.expected, "run past its deadline");
    }
    let mut metrics = runs::run_metrics(pipeline, &sweep.finished);
    metrics.count(Metric::RunsOverdue, sweep.overdue.len() as u64);
    Ok((sweep, metrics))
}

/// What a tick writes to and reads from.
#[derive(Clone, Copy)]
pub struct Backends<'a> {
    /// Where jobs are published (SNS, or the embedded topic).
    pub publisher: &'a dyn Publisher,
    /// The run ledger.
    pub ledger: &'a dyn RunLedger,
    /// Where a run's completion event goes (a tick that fails on its list has one too).
    pub bus: &'a dyn EventBus,
    /// What remote lists (`s3://` sources) are read with.
    pub readers: &'a ListReaders,
    /// The pipeline's name, in events.
    pub pipeline: &'a str,
}

/// Opaque: the backends are trait objects.
impl std::fmt::Debug for Backends<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

/// Writes the run's record (after the schedule guard), then publishes one job per target of
/// `config` for the tick. Fails loudly, with the message IDs, if any job is still unpublished
/// after retries; the summary is then inside the error. A skipped tick or a run that already
/// ended publishes nothing.
///
/// A list that cannot be read (or holds bad rows) records the run as FAILED with the reason
/// and puts its event, publishing nothing; a re-run of the tick once it is fixed begins the
/// run afresh. A re-run of a tick whose run is RUNNING reads the versions the run first read
/// (`s3://` sources), and fails, publishing nothing, if the list gives other jobs than it did.
pub async fn produce(
    config: &PipelineConfig,
    tick: &Tick,
    backends: Backends<'_>,
    options: &PublishOptions,
) -> Result<Summary, PublishError> {
    let run_id = tick.run_id.as_str();
    tick::check_run_id(run_id).map_err(|e| PublishError::BadRunId(e.to_string()))?;
    let started_at = Instant::now();
    let now = chrono::Utc::now();
    let values = tick_values(config, tick, backends.ledger, now).await?;
    let first = match backends
        .ledger
        .get(run_id)
        .await
        .map_err(PublishError::Ledger)?
    {
        Some(run) if run.status == RunStatus::Running => Some(run.sources),
        _ => None,
    };
    let mut readers = backends.readers.clone();
    for read in first.iter().flatten() {
        readers
            .pinned
            .insert(read.name.clone(), read.objects.clone());
    }
    let collected = {
        let config = config.clone();
        list::off_runtime(move || list::collect(&config, &readers, &values, now)).await
    };
    let jobs = match collected.and_then(|jobs| list::same_as_first(jobs, run_id, first.as_deref()))
    {
        Ok(jobs) => jobs,
        Err(error) => {
            let start = ledger::run_start(config, run_id, tick.scheduled_at.clone(), 0);
            let run = Finisher::new(backends.ledger, backends.bus, backends.pipeline)
                .fail_unpublished(&start, &error.to_string())
                .await
                .map_err(PublishError::Ledger)?;
            tracing::error!(run_id, status = run.status.as_str(), error = %error, "tick failed on its list: nothing published");
            return Err(error.into());
        }
    };
    for source in &jobs.sources {
        tracing::info!(source = %source.name, location = %source.location, rows = source.rows, digest = %source.digest, "source read");
    }
    let mut start = ledger::run_start(config, run_id, tick.scheduled_at.clone(), jobs.count);
    start.sources.clone_from(&jobs.sources);
    let started = ledger::begin(backends.ledger, &start)
        .await
        .map_err(PublishError::Ledger)?;
    let publish = matches!(started, Started::New | Started::Resumed);
    let mut messages = jobs.messages();
    let outcome = if publish {
        publish::publish_all(messages.by_ref(), backends.publisher, options).await
    } else {
        publish::Outcome::default()
    };
    if let Some(error) = messages.error() {
        return Err(PublishError::Spool(error.to_owned()));
    }
    let summary = Summary {
        run_id: run_id.to_owned(),
        started,
        jobs: usize::try_from(jobs.count).unwrap_or(usize::MAX),
        published: outcome.published,
        failed: outcome.failures.len(),
        publish_calls: outcome.calls,
        elapsed: started_at.elapsed(),
        sources: jobs.sources,
    };
    match &summary.started {
        Started::Skipped(why) => tracing::warn!(run_id, reason = %why, "tick skipped"),
        Started::AlreadyEnded(status) => tracing::info!(
            run_id,
            status = status.as_str(),
            "run already ended: nothing published"
        ),
        _ => tracing::info!(
            run_id,
            jobs = summary.jobs,
            published = summary.published,
            failed = summary.failed,
            "tick published"
        ),
    }
    if outcome.failures.is_empty() {
        Ok(summary)
    } else {
        Err(PublishError::Unpublished {
            summary: Box::new(summary),
            failures: outcome.failures,
        })
    }
}
