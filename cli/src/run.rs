//! The pipeline on one machine: produce a tick, drain the queue through local invocations of
//! the consumer, settle every job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_consumer::{Consumer, Settings};
use fanout_producer::{produce, Backends, ListReaders, PublishOptions, Summary, Tick};
use fanout_shared::{BackendError, PipelineConfig};

use crate::backend::Pipeline;
use crate::event_source::{drain, DrainOutcome, EventSourceOptions};
use crate::report::{ProgressView, RunSummary};
use crate::settle::settle;

/// Everything `fanout run` and `fanout consume` need besides the config and the backend.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The event source's behaviour (concurrency, batch size, timeouts).
    pub event_source: EventSourceOptions,
    /// Overrides the config's global budget.
    pub rate_override: Option<f64>,
    /// No progress output.
    pub quiet: bool,
    /// The pipeline's name in run metrics and completion events.
    pub pipeline_name: String,
    /// Each invocation slot its own consumer instance, with its own lease and share of the
    /// budgets, as Lambda runs them; `false` (the command's way): one instance behind every
    /// slot ([`consumers`]).
    pub separate_instances: bool,
}

/// A failure that is not a job's: bad backend, bad consumer setup.
pub type RunError = Box<dyn std::error::Error + Send + Sync>;

fn settings(options: &RunOptions) -> Settings {
    let function_timeout = options.event_source.function_timeout;
    Settings {
        rate_per_second: options.rate_override,
        // Locally functions run for seconds, not minutes: keep the margin in proportion.
        deadline_margin: (function_timeout / 10).min(Duration::from_secs(1)),
        // And the lock's grace: ten invocations, at most Lambda's default minute.
        lock_grace: (function_timeout * 10).min(Settings::default().lock_grace),
        batch_concurrency: options.event_source.batch_size as usize,
        function_name: "fanout-consumer-local".into(),
        pipeline: options.pipeline_name.clone(),
        visibility_timeout: Some(options.event_source.visibility_timeout),
        ..Settings::default()
    }
}

/// The consumer behind each concurrent invocation slot. By default one instance behind every
/// slot, as `fanout run` drains: the process is one member of the fleet, so its slots share one
/// lease and one limiter per budget (no split among slots that finish at different times, and a
/// slot without work leaves nothing unused). With `options.separate_instances`, each slot its
/// own instance with its own share, as Lambda runs them (the fault-injection harness's shape).
pub fn consumers(
    config: &PipelineConfig,
    pipeline: &Pipeline,
    options: &RunOptions,
) -> Result<Vec<Arc<Consumer>>, RunError> {
    let slots = options.event_source.concurrency.max(1);
    let instance =
        || Consumer::new(config, pipeline.consumer_backends(), settings(options)).map(Arc::new);
    if options.separate_instances {
        return (0..slots).map(|_| Ok(instance()?)).collect();
    }
    Ok(vec![instance()?; slots])
}

/// What a tick of `pipeline` reads lists with: its bucket and list home, else (the embedded
/// backend) S3 from the standard AWS configuration for `s3://` sources, so a local run reads
/// the same lists a deployed one does.
async fn list_readers(config: &PipelineConfig, pipeline: &Pipeline) -> ListReaders {
    let objects = match &pipeline.objects {
        Some(objects) => Some(objects.clone()),
        None => crate::targets::objects_for(config).await,
    };
    ListReaders {
        lists: pipeline.lists.clone(),
        ..ListReaders::new(objects)
    }
}

/// Writes the run's record and publishes one tick of `config` as `run_id`, for the pipeline
/// named `name` (in events).
pub async fn produce_tick(
    config: &PipelineConfig,
    pipeline: &Pipeline,
    run_id: &str,
    name: &str,
) -> Result<Summary, RunError> {
    let tick = Tick {
        run_id: run_id.to_owned(),
        scheduled_at: None,
        schedule: None,
    };
    let readers = list_readers(config, pipeline).await;
    let backends = Backends {
        publisher: pipeline.publisher.as_ref(),
        ledger: pipeline.runs.as_ref(),
        bus: pipeline.events.as_ref(),
        readers: &readers,
        pipeline: name,
    };
    Ok(produce(config, &tick, backends, &PublishOptions::default()).await?)
}

/// Drains the job queue through local consumer invocations.
pub async fn consume(
    config: &PipelineConfig,
    pipeline: &Pipeline,
    options: &RunOptions,
    expected_jobs: u64,
) -> Result<DrainOutcome, RunError> {
    let consumers = consumers(config, pipeline, options)?;
    let view = ProgressView::new(expected_jobs, options.quiet);
    let outcome = drain(
        pipeline.queue.clone(),
        consumers,
        &options.event_source,
        &|m| view.update(m),
    )
    .await?;
    view.finish();
    Ok(outcome)
}

/// The run's ledger record; a run the drain settled but nobody finished (a consumer's finish
/// failed) is finished here, as the watchdog would.
async fn ledger_record(
    pipeline: &Pipeline,
    name: &str,
    run_id: &str,
) -> Result<Option<fanout_shared::runs::RunRecord>, BackendError> {
    fanout_shared::runs::Finisher::new(pipeline.runs.as_ref(), pipeline.events.as_ref(), name)
        .sweep_run(run_id, fanout_shared::now_ms())
        .await?;
    pipeline.runs.get(run_id).await
}

/// Produce, consume until every job is settled (or the timeout), and summarise.
pub async fn run(
    config: &PipelineConfig,
    pipeline: &Pipeline,
    run_id: &str,
    options: &RunOptions,
) -> Result<(RunSummary, DrainOutcome), RunError> {
    let started = Instant::now();
    let produced = produce_tick(config, pipeline, run_id, &options.pipeline_name).await?;
    let consume_started = Instant::now();
    let outcome = consume(config, pipeline, options, produced.jobs as u64).await?;
    let consume_time = consume_started.elapsed();
    let readers = list_readers(config, pipeline).await;
    let job_ids = fanout_producer::message_ids(config, &readers, run_id).await?;
    let settlement = settle(
        &job_ids,
        pipeline.store.as_ref(),
        pipeline.dlq.as_ref(),
        options.event_source.poll_wait,
    )
    .await?;
    let budget = options
        .rate_override
        .or(config.rate_limit.map(|l| l.per_second));
    let ledger = ledger_record(pipeline, &options.pipeline_name, run_id).await?;
    let summary = RunSummary::new(
        run_id,
        &settlement,
        ledger.as_ref(),
        &outcome.metrics,
        budget,
        started.elapsed(),
        consume_time,
    );
    Ok((summary, outcome))
}
