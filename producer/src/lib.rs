//! The fanout producer: one scheduled tick → one job message per target, published in batches.
//!
//! # Layout
//! - [`tick`]: the run ID, derived from the EventBridge event (or given by hand).
//! - [`publish`]: batching under SNS limits, batches in flight at once, retry of failed entries.
//!
//! The Lambda binary (`main.rs`) loads the config, builds the SNS client and calls [`produce`].

#![warn(missing_docs)]

pub mod publish;
pub mod tick;

use std::time::{Duration, Instant};

use serde::Serialize;

use fanout_shared::{JobMessage, PipelineConfig, Publisher};

pub use publish::{PublishError, PublishOptions};
pub use tick::{run_id_from_event, TickError};

/// What one tick did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The run's ID.
    pub run_id: String,
    /// Jobs built (one per target).
    pub jobs: usize,
    /// Jobs published.
    pub published: usize,
    /// Jobs that could not be published.
    pub failed: usize,
    /// `PublishBatch` calls made, retries included.
    pub publish_calls: u64,
    /// Wall time of the tick.
    #[serde(rename = "elapsed_ms", serialize_with = "as_millis")]
    pub elapsed: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_millis())
}

/// Publishes one job per target of `config` for `run_id`. Fails loudly, with the message IDs,
/// if any job is still unpublished after retries; the summary is then inside the error.
pub async fn produce(config: &PipelineConfig, run_id: &str, publisher: &dyn Publisher, options: &PublishOptions) -> Result<Summary, PublishError> {
    tick::check_run_id(run_id).map_err(|e| PublishError::BadRunId(e.to_string()))?;
    let started = Instant::now();
    let now = chrono::Utc::now();
    let messages = config.targets.iter().map(|t| JobMessage::new(run_id, config.job_target(t), now).encode());
    let outcome = publish::publish_all(messages, publisher, options).await;
    let summary = Summary {
        run_id: run_id.to_owned(),
        jobs: config.targets.len(),
        published: outcome.published,
        failed: outcome.failures.len(),
        publish_calls: outcome.calls,
        elapsed: started.elapsed(),
    };
    tracing::info!(run_id, jobs = summary.jobs, published = summary.published, failed = summary.failed, "tick published");
    if outcome.failures.is_empty() {
        Ok(summary)
    } else {
        Err(PublishError::Unpublished { summary: Box::new(summary), failures: outcome.failures })
    }
}
