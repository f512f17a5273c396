//! `fanout run` on the embedded backend against a local target server (issue #3's tests).

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use std::time::Duration;

use fanout_shared::embedded::Duplicates;
use fanout_testkit::target_server::TargetServer;
use fanout_tests::{config_for, embedded_pipeline, fast_options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_jobs_with_duplicates_settle_exactly_once_within_budget() {
    let server = TargetServer::start().await.unwrap();
    let paths: Vec<String> = (0..500)
        .map(|i| match i % 20 {
            0 => format!("flaky/{i}?fail=1"),
            1 => format!("bad/{i}"),
            2 => format!("limited/{i}?fail=1&retry_after=1"),
            _ => format!("ok/{i}"),
        })
        .collect();
    let rate = 400.0;
    let config = config_for(&server.base_url(), &paths, Some(rate));
    let pipeline = embedded_pipeline(
        5,
        Duplicates {
            twice: 0.3,
            thrice: 0.0,
            seed: 42,
        },
    );
    let options = fast_options(4);
    let (summary, outcome) = fanout::run(&config, &pipeline, "dup-run", &options)
        .await
        .unwrap();

    assert!(outcome.drained);
    assert_eq!(summary.lost, 0, "{summary:?}");
    assert_eq!(summary.jobs, 500);
    assert_eq!(summary.dead_lettered, 25, "the 25 permanent 400s");
    assert_eq!(summary.dead_lettered_by_reason.get("HTTP 400"), Some(&25));
    assert_eq!(summary.succeeded, 475);
    assert!(
        summary.duplicates_skipped >= 100,
        "~150 injected duplicates, most skipped: {summary:?}"
    );
    let stats = server.stats();
    assert_eq!(stats.effects, 475, "every succeeded job took effect once");
    assert_eq!(
        stats.repeat_successes, 0,
        "no job succeeded twice at the target"
    );
    // Rate: each of the 4 instances has burst 1, so the fleet's burst is 4.
    let max_1s = server.max_calls_in_window(Duration::from_secs(1));
    assert!(
        max_1s as f64 <= rate + 4.0,
        "max {max_1s} calls in one second, budget {rate}/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_failing_transiently_max_attempts_times_lands_in_the_dlq_with_its_last_reason() {
    let server = TargetServer::start().await.unwrap();
    let paths = vec!["flaky/always?fail=1000".to_owned(), "ok/fine".to_owned()];
    let mut config = config_for(&server.base_url(), &paths, None);
    config.retry = fanout_shared::RetryPolicy {
        base_ms: 10,
        cap_ms: 100,
        max_attempts: 3,
    };
    // maxReceiveCount (2) is below max_attempts: retries are fresh copies and use up no receives.
    let pipeline = embedded_pipeline(2, Duplicates::default());
    let (summary, _) = fanout::run(&config, &pipeline, "redrive-run", &fast_options(2))
        .await
        .unwrap();
    assert_eq!(summary.lost, 0);
    assert_eq!(summary.succeeded, 1);
    assert_eq!(
        summary
            .dead_lettered_by_reason
            .get("retries exhausted (HTTP 500)"),
        Some(&1),
        "{summary:?}"
    );
    let listed = fanout::list_dlq(
        pipeline.dlq.as_ref(),
        pipeline.store.as_ref(),
        &Default::default(),
        Duration::ZERO,
    )
    .await
    .unwrap();
    let reason = "transient failure on all 3 attempts, the last: HTTP 500 Internal Server Error";
    assert_eq!(
        listed.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(),
        vec![reason],
        "the DLQ keeps the whole reason"
    );
    let calls = server
        .records()
        .iter()
        .filter(|r| r.path.starts_with("/flaky"))
        .count();
    assert_eq!(calls, 3, "called max_attempts times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerunning_the_same_tick_calls_nothing_twice() {
    let server = TargetServer::start().await.unwrap();
    let paths: Vec<String> = (0..50).map(|i| format!("ok/{i}")).collect();
    let config = config_for(&server.base_url(), &paths, None);
    let pipeline = embedded_pipeline(5, Duplicates::default());
    let (first, _) = fanout::run(&config, &pipeline, "tick-1", &fast_options(2))
        .await
        .unwrap();
    // The tick's run has ended: a re-run publishes nothing and reports the run as it ended.
    let (second, _) = fanout::run(&config, &pipeline, "tick-1", &fast_options(2))
        .await
        .unwrap();
    assert_eq!(
        (
            first.succeeded,
            second.succeeded,
            second.lost,
            second.outbound_calls
        ),
        (50, 50, 0, 0)
    );
    assert_eq!(server.stats().calls, 50);
    // A re-run while the run is still in flight (the first producer died, or the schedule event
    // came twice) publishes again; dedupe absorbs the copies.
    fanout::produce_tick(&config, &pipeline, "tick-2", "fanout")
        .await
        .unwrap();
    let (third, _) = fanout::run(&config, &pipeline, "tick-2", &fast_options(2))
        .await
        .unwrap();
    assert_eq!(
        (third.succeeded, third.duplicates_skipped),
        (50, 50),
        "the producer's re-run is absorbed by dedupe"
    );
    assert_eq!(server.stats().effects, 100, "a new tick is new work, once");
}
