//! Issue #13 end to end on the embedded backend: a message may only make the consumer do what
//! the consumer's own config allows. Jobs are produced from one config and consumed with another
//! (an attacker with publish access, or a producer on an older config), and redirects are
//! followed across loopback hosts (127.0.0.1, .2 and .3 are distinct hosts to the consumer).

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use std::time::Duration;

use fanout::{peek_all, Pipeline};
use fanout_shared::embedded::Duplicates;
use fanout_shared::{PipelineConfig, ATTR_FAILURE_REASON};
use fanout_testkit::target_server::{CallRecord, TargetServer};
use fanout_tests::{embedded_pipeline, fast_options};

const SECRET: &str = "pol-5ecr3t-19be44";
const TOKEN: &str = "pol-t0ken-7c1d02";

fn parse(json: serde_json::Value) -> PipelineConfig {
    PipelineConfig::parse(&json.to_string(), false, "policy.json").unwrap()
}

/// Produces a tick of `producer`, drains it with a consumer of `consumer`, returns the DLQ's
/// failure reasons, sorted.
async fn produce_and_consume(
    producer: &PipelineConfig,
    consumer: &PipelineConfig,
    run_id: &str,
) -> (Pipeline, Vec<String>) {
    let pipeline = embedded_pipeline(3, Duplicates::default());
    fanout::produce_tick(producer, &pipeline, run_id, "fanout")
        .await
        .unwrap();
    let outcome = fanout::consume(
        consumer,
        &pipeline,
        &fast_options(2),
        producer.targets.len() as u64,
    )
    .await
    .unwrap();
    assert!(outcome.drained);
    let dlq = peek_all(pipeline.dlq.as_ref(), 100, Duration::ZERO)
        .await
        .unwrap();
    let mut reasons: Vec<String> = dlq
        .iter()
        .map(|m| m.attributes[ATTR_FAILURE_REASON].clone())
        .collect();
    reasons.sort();
    (pipeline, reasons)
}

fn header<'a>(record: &'a CallRecord, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn paths(server: &TargetServer) -> Vec<String> {
    let mut paths: Vec<String> = server.records().iter().map(|r| r.path.clone()).collect();
    paths.sort();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_cannot_bring_headers_secrets_or_a_body_the_consumer_config_lacks() {
    std::env::set_var("FANOUT_POLICY_SECRET", SECRET);
    let server = TargetServer::start().await.unwrap();
    let base = server.base_url();
    let producer = parse(serde_json::json!({
        "allow_private_networks": true,
        "targets": [
            {"id": "leak", "url": format!("{base}/ok/leak"), "headers": {"X-Leak": "${env:FANOUT_POLICY_SECRET}", "X-Home": "${env:HOME}"}},
            {"id": "posted", "url": format!("{base}/ok/posted"), "method": "POST", "body": {"delete": "everything"}},
            {"id": "slowed", "url": format!("{base}/ok/slowed"), "timeout_ms": 900_000},
            {"id": "moved", "url": format!("{base}/ok/elsewhere")},
            {"id": "plain", "url": format!("{base}/ok/plain")},
        ]
    }));
    let consumer = parse(serde_json::json!({
        "allow_private_networks": true,
        "targets": [
            {"id": "leak", "url": format!("{base}/ok/leak")},
            {"id": "posted", "url": format!("{base}/ok/posted")},
            {"id": "slowed", "url": format!("{base}/ok/slowed")},
            {"id": "moved", "url": format!("{base}/ok/moved")},
            {"id": "plain", "url": format!("{base}/ok/plain")},
        ]
    }));
    let (_pipeline, reasons) = produce_and_consume(&producer, &consumer, "policy-run").await;
    assert_eq!(
        reasons,
        [
            r#"target "leak" differs from the consumer's config: header X-Home is not in the config; header X-Leak is not in the config"#,
            r#"target "moved" differs from the consumer's config: field `url` differs"#,
            r#"target "posted" differs from the consumer's config: field `method` differs; field `body` differs"#,
            r#"target "slowed" differs from the consumer's config: field `timeout_ms` differs"#,
        ]
    );
    // Only the message that matches the consumer's config was called; no value left the process.
    assert_eq!(paths(&server), ["/ok/plain"]);
    let home = std::env::var("HOME").unwrap_or_else(|_| "/nonexistent-home".into());
    for record in server.records() {
        assert!(
            !format!("{:?}", record.headers).contains(SECRET)
                && header(&record, "x-home") != Some(home.as_str()),
            "{record:?}"
        );
    }
}

/// Loopback target servers on three hosts and a config whose redirects may reach 127.0.0.2 (a
/// `hosts` key) but never 127.0.0.3, with secret, credential and plain default headers.
async fn three_hosts(
    targets: impl Fn(&str, &str, &str) -> serde_json::Value,
) -> ([TargetServer; 3], PipelineConfig) {
    std::env::set_var("FANOUT_POLICY_TOKEN", TOKEN);
    std::env::set_var("FANOUT_POLICY_KEY", SECRET);
    let servers = [
        TargetServer::start().await.unwrap(),
        TargetServer::start_on("127.0.0.2".parse().unwrap())
            .await
            .unwrap(),
        TargetServer::start_on("127.0.0.3".parse().unwrap())
            .await
            .unwrap(),
    ];
    let config = parse(serde_json::json!({
        "allow_private_networks": true,
        "hosts": {"127.0.0.2": {"per_second": 1000}},
        "defaults": {"headers": {
            "Authorization": "Bearer ${env:FANOUT_POLICY_TOKEN}", "X-Api-Key": "${env:FANOUT_POLICY_KEY}",
            "Cookie": "session=literal", "X-Plain": "visible"}},
        "targets": targets(&servers[0].base_url(), &servers[1].base_url(), &servers[2].base_url()),
    }));
    (servers, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_outside_the_allow_list_is_refused_naming_the_host() {
    let ([first, allowed, foreign], config) = three_hosts(|a, b, c| {
        serde_json::json!([
            {"id": "off-list", "url": format!("{a}/redirect/1?to={c}/ok/off-list")},
            {"id": "via-allowed", "url": format!("{a}/redirect/2?to={b}/redirect/3?to={c}/ok/off-list")},
            {"id": "on-list", "url": format!("{a}/redirect/4?to={b}/ok/on-list")},
        ])
    })
    .await;
    let (_pipeline, reasons) = produce_and_consume(&config, &config, "redirect-run").await;
    let refused = r#"redirect refused: host "127.0.0.3" is not in the consumer's allowed hosts (a `hosts` key of the config allows it)"#;
    assert_eq!(reasons, [refused, refused]);
    assert!(
        foreign.records().is_empty(),
        "the host outside the allow-list was never called"
    );
    assert_eq!(
        paths(&allowed)
            .iter()
            .filter(|p| p.starts_with("/ok"))
            .collect::<Vec<_>>(),
        ["/ok/on-list"]
    );
    assert_eq!(first.records().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_credentials_stay_on_their_origin_across_redirects() {
    let ([first, allowed, _foreign], config) = three_hosts(|a, b, _| {
        serde_json::json!([
            {"id": "cross", "url": format!("{a}/redirect/2?to={b}/ok/cross")},
            {"id": "same", "url": format!("{a}/redirect/3?to={a}/ok/same")},
            {"id": "chain", "url": format!("{a}/redirect/4?to={b}/redirect/5?to={a}/ok/back")},
        ])
    })
    .await;
    let (pipeline, reasons) = produce_and_consume(&config, &config, "secrets-run").await;
    assert!(reasons.is_empty(), "{reasons:?}");
    let ids = ["cross", "same", "chain"].map(|t| fanout_shared::message_id("secrets-run", t));
    let settled = pipeline.store.get_many(&ids).await.unwrap();
    assert!(
        settled.len() == 3
            && settled
                .iter()
                .all(|r| r.status == fanout_shared::Status::Completed),
        "{settled:?}"
    );

    let find = |server: &TargetServer, path: &str| {
        server
            .records()
            .into_iter()
            .find(|r| r.path.starts_with(path))
            .unwrap()
    };
    // Same origin: every header arrives.
    let same = find(&first, "/ok/same");
    assert_eq!(
        same.authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(
        (header(&same, "x-api-key"), header(&same, "cookie")),
        (Some(SECRET), Some("session=literal"))
    );
    // Another origin, and anything after it: no environment value, no credential header.
    for record in [
        find(&allowed, "/ok/cross"),
        find(&allowed, "/redirect/5"),
        find(&first, "/ok/back"),
    ] {
        assert_eq!(header(&record, "x-plain"), Some("visible"), "{record:?}");
        assert!(header(&record, "idempotency-key").is_some(), "{record:?}");
        for dropped in ["authorization", "x-api-key", "cookie"] {
            assert_eq!(
                header(&record, dropped),
                None,
                "{dropped} reached {}: {record:?}",
                record.path
            );
        }
    }
}
