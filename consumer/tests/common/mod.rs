//! The harness both test binaries share: a consumer on the embedded backend and a local target
//! server, and SQS events built from JSON as Lambda sends them.
#![allow(dead_code)]

use std::sync::Arc;

use aws_lambda_events::event::sqs::SqsEvent;
use fanout_consumer::{Backends, Consumer, Settings};
use fanout_shared::embedded::EmbeddedBackend;
use fanout_shared::{JobMessage, PipelineConfig};
use fanout_testkit::target_server::TargetServer;
use serde_json::json;

pub(crate) struct Harness {
    pub backend: EmbeddedBackend,
    pub consumer: Consumer,
    pub server: TargetServer,
}

/// The consumer's backends on `backend`, reading `source` and dead-lettering into `dlq`.
pub(crate) fn backends(backend: &EmbeddedBackend, source: &str, dlq: &str) -> Backends {
    Backends {
        store: Arc::new(backend.store()),
        source: Arc::new(backend.queue(source)),
        dlq: Arc::new(backend.queue(dlq)),
        fleet: Arc::new(backend.fleet()),
        runs: Arc::new(backend.runs()),
        events: Arc::new(backend.events()),
    }
}

pub(crate) async fn harness(config: serde_json::Value, settings: Settings) -> Harness {
    let server = TargetServer::start().await.unwrap();
    let backend = EmbeddedBackend::open(":memory:".as_ref()).unwrap();
    backend
        .ensure_pipeline("jobs", "jobs", "jobs-dlq", Some(5))
        .unwrap();
    let config = config.to_string().replace("BASE", &server.base_url());
    let config = PipelineConfig::parse(&config, false, "test.json").unwrap();
    let consumer =
        Consumer::new(&config, backends(&backend, "jobs", "jobs-dlq"), settings).unwrap();
    Harness {
        backend,
        consumer,
        server,
    }
}

/// A config of `targets`, with the timeout [`job`] writes into its messages, so the consumer's
/// policy (the message must match its own config) accepts them.
pub(crate) fn config(targets: serde_json::Value) -> serde_json::Value {
    json!({ "allow_private_networks": true, "defaults": {"timeout_ms": 2000}, "targets": targets })
}

pub(crate) fn job(run: &str, id: &str, url: &str) -> JobMessage {
    let target = fanout_shared::JobTarget {
        id: id.into(),
        url: url.into(),
        method: "GET".into(),
        headers: Default::default(),
        body: None,
        timeout_ms: 2000,
    };
    JobMessage::new(run, target, chrono::Utc::now())
}

/// An SQS event as Lambda delivers it, one record per body.
pub(crate) fn event(bodies: &[String]) -> SqsEvent {
    let records: Vec<_> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            json!({
                "messageId": format!("sqs-{i}"), "receiptHandle": format!("rh-{i}"), "body": body,
                "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
                "md5OfBody": "", "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:jobs", "awsRegion": "us-east-1"
            })
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

pub(crate) fn in_seconds(s: i64) -> i64 {
    fanout_shared::now_ms() + s * 1000
}
