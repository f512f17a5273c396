//! Which backend a command talks to: the embedded state file, or SNS/SQS/DynamoDB.

use std::path::PathBuf;
use std::sync::Arc;

use fanout_shared::aws::{
    dynamodb_client, eventbridge_client, sns_client, sqs_client, DynamoDbFleet,
    DynamoDbIdempotency, DynamoDbRuns, EventBridgeBus, Retries, S3Objects, SnsPublisher,
    SqsMessageMover, SqsQueue,
};
use fanout_shared::embedded::{Duplicates, EmbeddedBackend};
use fanout_shared::fleet::FleetStore;
use fanout_shared::runs::{EventBus, RunLedger};
use fanout_shared::sources::ListsHome;
use fanout_shared::{BackendError, IdempotencyStore, MessageMover, ObjectStore, Publisher, Queue};

/// Names of the embedded pipeline's topic, queue and DLQ.
pub(crate) const EMBEDDED_TOPIC: &str = "fanout-jobs";
/// The embedded job queue.
pub(crate) const EMBEDDED_QUEUE: &str = "fanout-jobs";
/// The embedded dead-letter queue.
pub(crate) const EMBEDDED_DLQ: &str = "fanout-jobs-dlq";

/// The resources of a pipeline, whatever holds them.
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
    /// The run ledger (in the idempotency table on AWS).
    pub runs: Arc<dyn RunLedger>,
    /// Where completion events go (EventBridge's `FANOUT_EVENT_BUS`, default `default`, on AWS).
    pub events: Arc<dyn EventBus>,
    /// Where `s3://` lists are read from and pushed to (S3, on AWS).
    pub objects: Option<Arc<dyn ObjectStore>>,
    /// The list home of `lists://` sources (none: `lists/` beside the config file).
    pub lists: Option<ListsHome>,
}

/// Opaque: the resources are trait objects.
impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

impl Pipeline {
    /// The consumer's backends in this pipeline.
    pub fn consumer_backends(&self) -> fanout_consumer::Backends {
        fanout_consumer::Backends {
            store: self.store.clone(),
            source: self.queue.clone(),
            dlq: self.dlq.clone(),
            fleet: self.fleet.clone(),
            runs: self.runs.clone(),
            events: self.events.clone(),
        }
    }
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

/// The pipeline's four AWS resources, however they were found: flags or `FANOUT_*` variables
/// ([`crate::args::AwsArgs::names`]), a stack's outputs ([`crate::stack::StackOutputs::names`])
/// or `fanout provision` ([`crate::provision::provision`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceNames {
    /// The SNS topic's ARN (`FANOUT_TOPIC_ARN`).
    pub topic_arn: String,
    /// The job queue's URL (`FANOUT_QUEUE_URL`).
    pub queue_url: String,
    /// The dead-letter queue's URL (`FANOUT_DLQ_URL`).
    pub dlq_url: String,
    /// The DynamoDB table's name (`FANOUT_TABLE_NAME`).
    pub table_name: String,
    /// The list home, where `lists://` sources are and `fanout targets push` writes
    /// (`FANOUT_LISTS`, `s3://bucket/prefix/`), if the pipeline has one.
    pub lists: Option<ListsHome>,
}

impl std::fmt::Display for ResourceNames {
    /// The `export FANOUT_…=` lines a shell can `eval`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "export FANOUT_TOPIC_ARN={}", self.topic_arn)?;
        writeln!(f, "export FANOUT_QUEUE_URL={}", self.queue_url)?;
        writeln!(f, "export FANOUT_DLQ_URL={}", self.dlq_url)?;
        writeln!(f, "export FANOUT_TABLE_NAME={}", self.table_name)?;
        match &self.lists {
            Some(home) => writeln!(
                f,
                "export FANOUT_LISTS=s3://{}/{}",
                home.bucket, home.prefix
            ),
            None => Ok(()),
        }
    }
}

/// Opens the embedded pipeline (creating its queues and subscription if needed).
pub fn embedded(settings: &EmbeddedSettings) -> Result<Pipeline, BackendError> {
    let backend = EmbeddedBackend::open(&settings.state)?;
    backend.ensure_pipeline(
        EMBEDDED_TOPIC,
        EMBEDDED_QUEUE,
        EMBEDDED_DLQ,
        settings.max_receive_count,
    )?;
    backend.set_duplicates(settings.duplicates)?;
    Ok(Pipeline {
        publisher: Arc::new(backend.topic(EMBEDDED_TOPIC)),
        queue: Arc::new(backend.queue(EMBEDDED_QUEUE)),
        dlq: Arc::new(backend.queue(EMBEDDED_DLQ)),
        store: Arc::new(backend.store()),
        fleet: Arc::new(backend.fleet()),
        mover: None,
        runs: Arc::new(backend.runs()),
        events: Arc::new(backend.events()),
        objects: None,
        lists: None,
    })
}

/// The AWS pipeline named by `names`, with an SDK configuration already loaded. Its clients
/// retry as the deployed functions' do (`fanout run` runs the consumer in this process).
pub fn aws_with(sdk: &aws_config::SdkConfig, names: &ResourceNames) -> Pipeline {
    let sqs = sqs_client(sdk, Retries::CONSUMER_SQS);
    let dynamodb = dynamodb_client(sdk, Retries::CONSUMER_DYNAMODB);
    Pipeline {
        publisher: Arc::new(SnsPublisher::new(
            sns_client(sdk, Retries::PRODUCER_SNS),
            names.topic_arn.clone(),
        )),
        queue: Arc::new(SqsQueue::new(sqs.clone(), &names.queue_url)),
        dlq: Arc::new(SqsQueue::new(sqs.clone(), &names.dlq_url)),
        store: Arc::new(DynamoDbIdempotency::new(
            dynamodb.clone(),
            names.table_name.clone(),
        )),
        fleet: Arc::new(DynamoDbFleet::new(
            dynamodb.clone(),
            names.table_name.clone(),
        )),
        mover: Some(Arc::new(SqsMessageMover::new(
            sqs,
            names.dlq_url.clone(),
            names.queue_url.clone(),
        ))),
        runs: Arc::new(DynamoDbRuns::new(dynamodb, names.table_name.clone())),
        events: Arc::new(EventBridgeBus::new(
            eventbridge_client(sdk, Retries::EVENTS),
            std::env::var("FANOUT_EVENT_BUS")
                .ok()
                .filter(|b| !b.is_empty())
                .unwrap_or_else(|| "default".into()),
        )),
        objects: Some(Arc::new(S3Objects::from_sdk(sdk))),
        lists: names.lists.clone(),
    }
}
