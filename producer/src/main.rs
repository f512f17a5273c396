//! Producer Lambda: wires the environment and the SNS client, then calls [`fanout_producer::produce`].
//! Environment: `FANOUT_CONFIG` (default `fanout.json`), `FANOUT_TOPIC_ARN`,
//! `FANOUT_PUBLISH_CONCURRENCY` (default 8). See the README.

use std::path::PathBuf;

use fanout_producer::{produce, run_id_from_event, PublishOptions, Summary};
use fanout_shared::aws::{load_sdk_config, SnsPublisher};
use fanout_shared::{logging, PipelineConfig};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    logging::init_json();
    let path = PathBuf::from(std::env::var("FANOUT_CONFIG").unwrap_or_else(|_| "fanout.json".into()));
    let config = PipelineConfig::load(&path)?;
    let topic = std::env::var("FANOUT_TOPIC_ARN").map_err(|_| "FANOUT_TOPIC_ARN is required")?;
    let mut options = PublishOptions::default();
    if let Ok(n) = std::env::var("FANOUT_PUBLISH_CONCURRENCY") {
        options.concurrency = n.parse().map_err(|_| format!("FANOUT_PUBLISH_CONCURRENCY: cannot parse {n:?}"))?;
    }
    let publisher = SnsPublisher::new(aws_sdk_sns::Client::new(&load_sdk_config().await), topic);
    let (config, publisher, options) = (&config, &publisher, &options);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let run_id = run_id_from_event(&event.payload)?;
        Ok::<Summary, Error>(produce(config, &run_id, publisher, options).await?)
    }))
    .await
}
