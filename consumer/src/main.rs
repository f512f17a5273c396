//! Consumer Lambda: wires the environment and the SQS/DynamoDB clients, then calls
//! [`Consumer::handle_batch`]. Environment: `FANOUT_CONFIG`, `FANOUT_TABLE_NAME`,
//! `FANOUT_QUEUE_URL` (rescheduled copies go back to it), `FANOUT_DLQ_URL`, `FANOUT_EVENT_BUS`
//! (completion events; `default`) and the tunables of [`Settings::from_env`].

use std::path::PathBuf;
use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use fanout_consumer::{Backends, Consumer, Settings};
use fanout_shared::aws::{
    dynamodb_client, eventbridge_client, load_sdk_config, required_env, sqs_client, DynamoDbFleet,
    DynamoDbIdempotency, DynamoDbRuns, EventBridgeBus, Retries, SqsQueue,
};
use fanout_shared::{logging, PipelineConfig};
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    logging::init_json();
    let path =
        PathBuf::from(std::env::var("FANOUT_CONFIG").unwrap_or_else(|_| "fanout.json".into()));
    let config = PipelineConfig::load(&path)?;
    let settings = Settings::from_env(|k| std::env::var(k).ok())?;
    let sdk = load_sdk_config().await;
    let sqs = sqs_client(&sdk, Retries::CONSUMER_SQS);
    let (dynamodb, table) = (
        dynamodb_client(&sdk, Retries::CONSUMER_DYNAMODB),
        required_env("FANOUT_TABLE_NAME")?,
    );
    let backends = Backends {
        store: Arc::new(DynamoDbIdempotency::new(dynamodb.clone(), table.clone())),
        fleet: Arc::new(DynamoDbFleet::new(dynamodb.clone(), table.clone())),
        runs: Arc::new(DynamoDbRuns::new(dynamodb, table)),
        events: Arc::new(EventBridgeBus::new(
            eventbridge_client(&sdk, Retries::EVENTS),
            std::env::var("FANOUT_EVENT_BUS").unwrap_or_else(|_| "default".into()),
        )),
        source: Arc::new(SqsQueue::new(
            sqs.clone(),
            required_env("FANOUT_QUEUE_URL")?,
        )),
        dlq: Arc::new(SqsQueue::new(sqs, required_env("FANOUT_DLQ_URL")?)),
    };
    let consumer = Consumer::new(&config, backends, settings)?;
    let consumer = &consumer;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let deadline_ms = i64::try_from(event.context.deadline).unwrap_or(i64::MAX);
        let report = consumer.handle_batch(event.payload, deadline_ms).await;
        report.flush_stdout();
        Ok::<SqsBatchResponse, Error>(report.response)
    }))
    .await
}
