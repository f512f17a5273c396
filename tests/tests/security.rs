//! Secrets and untrusted input, end to end on the embedded backend: `${env:…}` header values
//! reach the target and nothing else (message bodies and attributes, the DLQ, idempotency
//! records, the JSON logs at trace level); logs never print header maps; a queued job for a
//! host outside the consumer's allow-list is refused to the DLQ without a call.
//!
//! One test in this binary: it installs the process-wide log subscriber.

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fanout::{peek_all, Pipeline};
use fanout_shared::embedded::Duplicates;
use fanout_shared::{JobMessage, PipelineConfig, QueueMessage, ATTR_FAILURE_REASON};
use fanout_testkit::target_server::TargetServer;
use fanout_tests::{embedded_pipeline, fast_options};

const TOKEN: &str = "tok-5ecr3t-8f2a91";
const API_KEY: &str = "key-5ecr3t-c4e7d0";
/// A secret that is not a valid header value: the call fails, and the reason must not quote it.
const BAD_VALUE: &str = "bad-5ecr3t-77aa\nX-Injected: 1";

/// A log sink the subscriber writes into.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn config(base: &str) -> PipelineConfig {
    let text = serde_json::json!({
        "allow_private_networks": true,
        "defaults": {"timeout_ms": 300, "headers": {
            "Authorization": "Bearer ${env:FANOUT_SEC_TOKEN}", "X-Api-Key": "${env:FANOUT_SEC_KEY}"}},
        "targets": [
            {"id": "ok", "url": format!("{base}/ok/1"), "method": "POST", "body": {"n": 1}},
            {"id": "flaky", "url": format!("{base}/flaky/2?fail=1")},
            {"id": "limited", "url": format!("{base}/limited/3?fail=1&retry_after=1")},
            {"id": "reset", "url": format!("{base}/reset/4?fail=1")},
            {"id": "slow", "url": format!("{base}/slow/5?ms=600&fail=1")},
            {"id": "bad", "url": format!("{base}/bad/6")},
            {"id": "redirect", "url": format!("{base}/redirect/7?to=ftp://x.example.com/")},
            {"id": "invalid-secret", "url": format!("{base}/ok/8"), "headers": {"X-Api-Key": "${env:FANOUT_SEC_BAD}"}},
        ]
    });
    PipelineConfig::parse(&text.to_string(), false, "security.json").unwrap()
}

fn assert_clean(what: &str, text: &str) {
    for secret in [TOKEN, API_KEY, "bad-5ecr3t"] {
        assert!(!text.contains(secret), "{what} holds a secret: {text}");
    }
}

fn message_text(m: &QueueMessage) -> String {
    format!("{} {:?}", m.body, m.attributes)
}

async fn queued_foreign_job(pipeline: &Pipeline, config: &PipelineConfig) {
    // A well-formed job, as anyone with SendMessage on the queue could write it.
    let mut target = config.job_target(&config.targets[0]);
    target.id = "foreign".into();
    target.url = "https://evil.example.net/collect".into();
    let message = JobMessage::new("sec-run", target, chrono::Utc::now()).encode();
    pipeline
        .queue
        .send(&message.body, &message.attributes)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_target_and_nothing_else() {
    std::env::set_var("FANOUT_SEC_TOKEN", TOKEN);
    std::env::set_var("FANOUT_SEC_KEY", API_KEY);
    std::env::set_var("FANOUT_SEC_BAD", BAD_VALUE);
    std::env::set_var("RUST_LOG", "trace");
    let logs = Captured::default();
    let sink = logs.clone();
    fanout_shared::logging::init_json_to(move || sink.clone());

    let server = TargetServer::start().await.unwrap();
    let config = config(&server.base_url());
    let pipeline = embedded_pipeline(
        5,
        Duplicates {
            twice: 0.5,
            thrice: 0.0,
            seed: 3,
        },
    );
    let options = fast_options(2);
    fanout::produce_tick(&config, &pipeline, "sec-run", "fanout")
        .await
        .unwrap();
    queued_foreign_job(&pipeline, &config).await;
    let queued = peek_all(pipeline.queue.as_ref(), 1000, Duration::ZERO)
        .await
        .unwrap();
    assert!(queued.len() >= 9, "{} messages queued", queued.len());
    let outcome = fanout::consume(&config, &pipeline, &options, 9)
        .await
        .unwrap();
    assert!(outcome.drained);

    // The secrets were in play: the target got them.
    let auth: Vec<_> = server
        .records()
        .iter()
        .filter_map(|r| r.authorization.clone())
        .collect();
    assert!(
        auth.iter().all(|a| *a == format!("Bearer {TOKEN}")) && !auth.is_empty(),
        "{auth:?}"
    );

    for m in &queued {
        assert_clean("a queued message", &message_text(m));
    }
    let dlq = peek_all(pipeline.dlq.as_ref(), 1000, Duration::ZERO)
        .await
        .unwrap();
    let reasons: Vec<&str> = dlq
        .iter()
        .map(|m| m.attributes[ATTR_FAILURE_REASON].as_str())
        .collect();
    for expected in [
        "HTTP 400 Bad Request",
        "redirect refused: scheme \"ftp\" is not allowed",
        "header x-api-key: value is not valid",
        "host \"evil.example.net\" is not in the consumer's allowed hosts",
    ] {
        assert!(
            reasons.contains(&expected),
            "{expected:?} missing from {reasons:?}"
        );
    }
    for m in &dlq {
        assert_clean("a DLQ message", &message_text(m));
    }
    let ids: Vec<String> = config
        .targets
        .iter()
        .map(|t| fanout_shared::message_id("sec-run", &t.id))
        .collect();
    for record in pipeline.store.get_many(&ids).await.unwrap() {
        assert_clean("an idempotency record", &format!("{record:?}"));
    }
    assert!(
        !server.records().iter().any(|r| r.path.contains("collect")),
        "the foreign host was never called"
    );

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    for expected in [
        "transient failure, retry scheduled",
        "dead-lettered",
        "duplicate: already settled",
    ] {
        assert!(
            logs.contains(expected),
            "the logs are captured (missing {expected:?}):\n{logs}"
        );
    }
    assert_clean("the logs", &logs);
    // No header map is ever logged: these names and placeholders would show.
    for name in ["Authorization", "Idempotency-Key", "${env:"] {
        assert!(
            !logs
                .to_ascii_lowercase()
                .contains(&name.to_ascii_lowercase()),
            "the logs mention {name}:\n{logs}"
        );
    }
}
