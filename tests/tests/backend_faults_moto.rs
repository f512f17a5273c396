//! The AWS backends failing under the consumers (issue #26's harsher plan), on moto behind the
//! test kit's fault proxy: 30% of DynamoDB calls throttled, a 20 s storm in which every
//! DynamoDB call is throttled, 10% of DynamoDB writes applied but answered 500 (the answer
//! lost), on top of the target faults of the fault-injection run. Every job still settles
//! exactly once, one effect each, nothing dead-lettered for a backend fault, the counts exact.

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use std::time::Duration;

use fanout::{aws_with, provision};
use fanout_testkit::aws_proxy::{AwsProxy, FaultKind, FaultPlan as AwsFaults, FaultRule, Service};
use fanout_testkit::target_server::TargetServer;
use fanout_tests::fault::{moto_fault_options, run_faults_with, FaultPlan};
use fanout_tests::{moto_or_skip, sdk_at};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harsh_dynamodb_faults_settle_every_job_once_and_dead_letter_none_for_them() {
    let moto = moto_or_skip!();
    let proxy = AwsProxy::start().await.unwrap();
    proxy.set_upstream(&moto.endpoint);
    let sdk = sdk_at(&proxy.url()).await;
    let resources = provision(&sdk, "harsh", 5, 1).await.unwrap();
    let pipeline = aws_with(&sdk, &resources);
    let server = TargetServer::start().await.unwrap();
    let plan = FaultPlan {
        jobs: 60,
        seed: 26,
        rate: 50.0,
        call_timeout: Duration::from_millis(1200),
        options: moto_fault_options(Duration::from_secs(180)),
        crash: None,
    };
    let faults = AwsFaults::new(26)
        .rule(
            FaultRule::new(Service::DynamoDb, FaultKind::Throttle)
                .window(Duration::from_secs(2), Duration::from_secs(20)),
        )
        .rule(
            FaultRule::new(Service::DynamoDb, FaultKind::Lost)
                .writes_only()
                .probability(0.10),
        )
        .rule(FaultRule::new(Service::DynamoDb, FaultKind::Throttle).probability(0.30));
    let arm = || proxy.set_plan(faults.clone());
    let disarm = || proxy.clear_plan();
    let figures = run_faults_with(&pipeline, &server, &plan, (&arm, &disarm)).await;
    eprintln!("^ fault run against moto behind the AWS fault proxy");
    let injected = proxy.faults();
    eprintln!("faults injected: {injected:?}");
    let total = |kind: FaultKind| -> u64 {
        injected
            .iter()
            .filter(|((service, _, k), _)| service == "DynamoDB" && *k == kind)
            .map(|(_, n)| n)
            .sum()
    };
    // A fault run that injected nothing proves nothing.
    assert!(total(FaultKind::Throttle) > 50, "{injected:?}");
    assert!(total(FaultKind::Lost) > 5, "{injected:?}");
    // run_faults asserted every job settled once with one effect and the ledger's counts; the
    // only dead-letters are the workload's permanent 400s, none for a backend fault.
    let reasons: Vec<&String> = figures.dead_lettered.keys().collect();
    assert!(
        reasons.iter().all(|r| r.starts_with("HTTP 400")),
        "dead-lettered for another reason than the target's 400: {reasons:?}\n{figures}"
    );
    assert_eq!(
        figures.dead_lettered.values().sum::<usize>(),
        3,
        "{figures}"
    );
}
