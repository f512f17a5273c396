//! Poison messages in the job queue, through the local event source: each is received once,
//! dead-lettered with its reason, and never retried, while a good job next to them succeeds.

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use fanout_shared::metrics::Metric;
use std::collections::BTreeMap;
use std::time::Duration;

use fanout::peek_all;
use fanout_shared::embedded::Duplicates;
use fanout_shared::ATTR_FAILURE_REASON;
use fanout_testkit::target_server::TargetServer;
use fanout_tests::{config_for, embedded_pipeline, fast_options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_received_once_and_dead_lettered_without_a_retry_loop() {
    let server = TargetServer::start().await.unwrap();
    let config = config_for(&server.base_url(), &["ok/1".to_owned()], None);
    let pipeline = embedded_pipeline(5, Duplicates::default());
    let huge = "x".repeat(300 * 1024);
    let poison = [
        "{not json",
        "",
        r#"{"v":2,"message_id":"x"}"#,
        "[1,2,3]",
        huge.as_str(),
        r#"{"Type":"Notification","Message":"{oops"}"#,
        r#"{"v":1,"message_id":"0","run_id":"r","target":{"id":"t","url":"gopher://x/","method":"GET","timeout_ms":1},"enqueued_at":"2026-01-01T00:00:00Z"}"#,
    ];
    for body in poison {
        pipeline.queue.send(body, &BTreeMap::new()).await.unwrap();
    }
    let (summary, outcome) = fanout::run(&config, &pipeline, "poison-run", &fast_options(2))
        .await
        .unwrap();
    assert!(outcome.drained);
    assert_eq!((summary.succeeded, summary.lost), (1, 0), "{summary:?}");
    let m = &outcome.metrics;
    assert_eq!(
        m.total(Metric::Records),
        (poison.len() + 1) as f64,
        "every message was received exactly once"
    );
    assert_eq!(m.total(Metric::DeadLettered), poison.len() as f64);
    assert_eq!(
        m.total(Metric::Retried) + m.total(Metric::LockedElsewhere),
        0.0,
        "no poison message was retried"
    );
    let dlq = peek_all(pipeline.dlq.as_ref(), 100, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(dlq.len(), poison.len());
    for body in poison {
        let copy = dlq
            .iter()
            .find(|m| m.body == body)
            .expect("each poison body is in the DLQ as sent");
        assert!(
            copy.attributes[ATTR_FAILURE_REASON].starts_with("poison message: "),
            "{:?}",
            copy.attributes
        );
    }
    assert_eq!(server.stats().calls, 1, "only the good job was called");
}
