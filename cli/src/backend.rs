//! Which backend a command talks to: the embedded state file, or SNS/SQS/DynamoDB.

use std::path::PathBuf;
use std::sync::Arc;

use fanout_shared::aws::{load_sdk_config, DynamoDbFleet, DynamoDbStore, SnsPublisher, SqsMessageMover, SqsQueue};
use fanout_shared::embedded::{Duplicates, EmbeddedBackend};
use fanout_shared::{BackendError, FleetStore, IdempotencyStore, MessageMover, Publisher, Queue};

/// Names of the embedded pipeline's topic, queue and DLQ.
pub const EMBEDDED_TOPIC: &str = "fanout-jobs";
/// The embedded job queue.
pub const EMBEDDED_QUEUE: &str = "fanout-jobs";
/// The embedded dead-letter queue.
pub const EMBEDDED_DLQ: &str = "fanout-jobs-dlq";

/// The four resources of a pipeline, whatever holds them.
#[derive(Clone)]
pub struct Pipeline {
    /// Where the producer publishes.
    pub publisher: Arc<dyn Publisher>,
    /// The job queue.
    pub queue: Arc<dyn Queue>,
    /// The dead-letter queue.
    pub dlq: Arc<dyn Queue>,
    /// The idempotency table.
    pub store: Arc<dyn IdempotencyStore>,
    /// Host states and consumer leases (in the idempotency table on AWS).
    pub fleet: Arc<dyn FleetStore>,
    /// Server-side DLQ → queue moves, where the backend has them (SQS).
    pub mover: Option<Arc<dyn MessageMover>>,
}

/// Settings of the embedded backend.
#[derive(Debug, Clone)]
pub struct EmbeddedSettings {
    /// State file, or `:memory:`.
    pub state: PathBuf,
    /// Receives before a message is redriven to the DLQ (`None`: keep the state file's).
    pub max_receive_count: Option<u32>,
    /// Duplicate injection.
    pub duplicates: Duplicates,
}

/// Names of deployed (or provisioned) AWS resources.
#[derive(Debug, Clone, Default)]
pub struct AwsNames {
    /// `FANOUT_TOPIC_ARN`.
    pub topic_arn: Option<String>,
    /// `FANOUT_QUEUE_URL`.
    pub queue_url: Option<String>,
    /// `FANOUT_DLQ_URL`.
    pub dlq_url: Option<String>,
    /// `FANOUT_TABLE_NAME`.
    pub table_name: Option<String>,
}

impl AwsNames {
    /// The variables (or flags) still missing, so the caller can say all of them at once.
    pub fn missing(&self) -> Vec<&'static str> {
        [
            (&self.topic_arn, "FANOUT_TOPIC_ARN"),
            (&self.queue_url, "FANOUT_QUEUE_URL"),
            (&self.dlq_url, "FANOUT_DLQ_URL"),
            (&self.table_name, "FANOUT_TABLE_NAME"),
        ]
        .into_iter()
        .filter(|(value, _)| value.is_none())
        .map(|(_, var)| var)
        .collect()
    }
}

/// Opens the embedded pipeline (creating its queues and subscription if needed).
pub fn embedded(settings: &EmbeddedSettings) -> Result<Pipeline, BackendError> {
    let backend = EmbeddedBackend::open(&settings.state)?;
    backend.ensure_pipeline(EMBEDDED_TOPIC, EMBEDDED_QUEUE, EMBEDDED_DLQ, settings.max_receive_count)?;
    backend.set_duplicates(settings.duplicates)?;
    Ok(Pipeline {
        publisher: Arc::new(backend.topic(EMBEDDED_TOPIC)),
        queue: Arc::new(backend.queue(EMBEDDED_QUEUE)),
        dlq: Arc::new(backend.queue(EMBEDDED_DLQ)),
        store: Arc::new(backend.store()),
        fleet: Arc::new(backend.fleet()),
        mover: None,
    })
}

/// The AWS pipeline named by `names`, through the standard SDK configuration.
pub async fn aws(names: &AwsNames) -> Result<Pipeline, BackendError> {
    aws_with(&load_sdk_config().await, names)
}

/// The AWS pipeline named by `names`, with an SDK configuration already loaded.
pub fn aws_with(sdk: &aws_config::SdkConfig, names: &AwsNames) -> Result<Pipeline, BackendError> {
    let need = |value: &Option<String>, var: &str| value.clone().ok_or_else(|| BackendError::permanent("fanout", format!("{var} is not set")));
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let (queue_url, dlq_url) = (need(&names.queue_url, "FANOUT_QUEUE_URL")?, need(&names.dlq_url, "FANOUT_DLQ_URL")?);
    let table = need(&names.table_name, "FANOUT_TABLE_NAME")?;
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    Ok(Pipeline {
        publisher: Arc::new(SnsPublisher::new(aws_sdk_sns::Client::new(sdk), need(&names.topic_arn, "FANOUT_TOPIC_ARN")?)),
        queue: Arc::new(SqsQueue::new(sqs.clone(), &queue_url)),
        dlq: Arc::new(SqsQueue::new(sqs.clone(), &dlq_url)),
        store: Arc::new(DynamoDbStore::new(dynamodb.clone(), table.clone())),
        fleet: Arc::new(DynamoDbFleet::new(dynamodb, table)),
        mover: Some(Arc::new(SqsMessageMover::new(sqs, dlq_url, queue_url))),
    })
}
