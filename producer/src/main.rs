//! Producer Lambda: wires the environment and the clients, then calls
//! [`fanout_producer::produce`] for a scheduled tick or [`fanout_producer::watchdog`] for the
//! watchdog's `{"watchdog": true}`. Environment: `FANOUT_CONFIG` (default `fanout.json`),
//! `FANOUT_TOPIC_ARN`, `FANOUT_TABLE_NAME` (the run ledger), `FANOUT_EVENT_BUS` (`default`),
//! `FANOUT_PIPELINE` (`fanout`: the metric dimension and events' `pipeline`), `FANOUT_LISTS`
//! (the list home of `lists://` sources, `s3://bucket/prefix/`),
//! `FANOUT_PUBLISH_CONCURRENCY` (default 8). See the README.

use std::path::PathBuf;

use std::sync::Arc;

use fanout_producer::{
    is_watchdog, produce, tick_from_event, tick_metrics, watchdog, Backends, ListReaders,
    PublishOptions, WatchdogAnswer,
};
use fanout_shared::aws::{
    dynamodb_client, eventbridge_client, load_sdk_config, required_env, sns_client, DynamoDbRuns,
    EventBridgeBus, Retries, S3Objects, SnsPublisher,
};
use fanout_shared::sources::ListsHome;
use fanout_shared::{logging, PipelineConfig};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    logging::init_json();
    let path =
        PathBuf::from(std::env::var("FANOUT_CONFIG").unwrap_or_else(|_| "fanout.json".into()));
    let config = PipelineConfig::load(&path)?;
    let topic = required_env("FANOUT_TOPIC_ARN")?;
    let table = required_env("FANOUT_TABLE_NAME")?;
    let pipeline = std::env::var("FANOUT_PIPELINE").unwrap_or_else(|_| "fanout".into());
    let mut options = PublishOptions::default();
    if let Ok(n) = std::env::var("FANOUT_PUBLISH_CONCURRENCY") {
        options.concurrency = n
            .parse()
            .map_err(|_| format!("FANOUT_PUBLISH_CONCURRENCY: cannot parse {n:?}"))?;
    }
    let sdk = load_sdk_config().await;
    let publisher = SnsPublisher::new(sns_client(&sdk, Retries::PRODUCER_SNS), topic);
    let ledger = DynamoDbRuns::new(dynamodb_client(&sdk, Retries::PRODUCER_DYNAMODB), table);
    let bus = EventBridgeBus::new(
        eventbridge_client(&sdk, Retries::EVENTS),
        std::env::var("FANOUT_EVENT_BUS").unwrap_or_else(|_| "default".into()),
    );
    let lists = match std::env::var("FANOUT_LISTS").ok().filter(|l| !l.is_empty()) {
        Some(text) => Some(ListsHome::parse(&text).map_err(|e| format!("FANOUT_LISTS: {e}"))?),
        None => None,
    };
    let objects = S3Objects::from_sdk(&sdk);
    let readers = ListReaders {
        lists,
        ..ListReaders::new(Some(Arc::new(objects)))
    };
    let (config, publisher, ledger, bus, readers, options, pipeline) = (
        &config,
        &publisher,
        &ledger,
        &bus,
        &readers,
        &options,
        pipeline.as_str(),
    );
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        if is_watchdog(&event.payload) {
            let (sweep, metrics) = watchdog(ledger, bus, pipeline).await?;
            metrics.flush_stdout();
            return Ok::<Value, Error>(serde_json::to_value(WatchdogAnswer::from(&sweep))?);
        }
        let tick = tick_from_event(&event.payload, chrono::Utc::now())?;
        let backends = Backends {
            publisher,
            ledger,
            bus,
            readers,
            pipeline,
        };
        let summary = produce(config, &tick, backends, options).await?;
        for metrics in tick_metrics(pipeline, &tick, &summary) {
            metrics.flush_stdout();
        }
        Ok(serde_json::to_value(&summary)?)
    }))
    .await
}
