//! Flow control (issue #12) on the embedded backend: the budget decides when a job is called,
//! never whether; hosts are protected as a fleet. Counts here, timings in BENCHMARKS.md.
//!
//! Each test prints its figures (`-- --nocapture`).

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use std::time::{Duration, Instant};

use fanout::RunOptions;
use fanout_shared::embedded::Duplicates;
use fanout_shared::RateLimit;
use fanout_testkit::target_server::TargetServer;
use fanout_tests::{
    answered_after, config_file_at, config_for, embedded_pipeline, fanout_bin, fast_options,
    hosts_tick,
};

/// The `fanout` CLI's own defaults: concurrency 4, batches of 10, 3 s visibility and function
/// timeouts, 5 receives.
fn local_defaults(concurrency: usize) -> RunOptions {
    let mut options = fast_options(concurrency);
    options.event_source.visibility_timeout = Duration::from_secs(3);
    options.event_source.function_timeout = Duration::from_secs(3);
    options.event_source.poll_wait = Duration::from_millis(100);
    options.event_source.timeout = Duration::from_secs(300);
    options
}

fn calls_with_status(server: &TargetServer, status: u16) -> usize {
    server
        .records()
        .iter()
        .filter(|r| r.status == status)
        .count()
}

#[test]
fn eighty_targets_at_two_per_second_all_succeed_once_none_dead_lettered() {
    // The reproduction, through the binary: on main, 41 of 80 went to the DLQ as
    // "max receives exceeded", never called.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TargetServer::start()).unwrap();
    let paths: Vec<String> = (0..80).map(|i| format!("ok/{i}")).collect();
    let (dir, file) = config_file_at("flow-tight", &server.base_url(), &paths, Some(2.0));
    let output = std::process::Command::new(fanout_bin())
        .args(["--state", ":memory:", "run", "--json", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    eprintln!("80 targets at 2/s: {summary}");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        (
            summary["succeeded"].as_u64(),
            summary["dead_lettered"].as_u64(),
            summary["lost"].as_u64()
        ),
        (Some(80), Some(0), Some(0))
    );
    let stats = server.stats();
    assert_eq!(
        (stats.calls, stats.effects, stats.repeat_successes),
        (80, 80, 0),
        "each job called once"
    );
    assert!(
        summary["deferred"].as_u64() > Some(0),
        "jobs waited for their permits: {summary}"
    );
    // Each of the 4 instances may hold one permit as the split changes (the fault run's bound).
    let peak = server.max_calls_in_window(Duration::from_secs(1));
    eprintln!("peak {peak} calls in 1 s");
    assert!(
        peak <= 2 + 4,
        "{peak} calls in 1 s: budget 2/s + one permit per instance"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_over_a_hundred_function_timeouts_long_loses_nothing_to_waiting() {
    // 60 jobs at 5/s: 12 s of budget against a 100 ms function timeout (120×).
    let server = TargetServer::start().await.unwrap();
    let paths: Vec<String> = (0..60).map(|i| format!("ok/{i}")).collect();
    let config = config_for(&server.base_url(), &paths, Some(5.0));
    let mut options = local_defaults(4);
    options.event_source.function_timeout = Duration::from_millis(100);
    options.event_source.visibility_timeout = Duration::from_secs(1);
    let pipeline = embedded_pipeline(3, Duplicates::default());
    let (summary, outcome) = fanout::run(&config, &pipeline, "long-tick", &options)
        .await
        .unwrap();
    eprintln!(
        "{summary:?}\ninvocations {} (defer-only {})",
        outcome.invocations, summary.defer_only_invocations
    );
    assert_eq!(
        (summary.succeeded, summary.dead_lettered, summary.lost),
        (60, 0, 0),
        "{summary:?}"
    );
    assert_eq!(server.stats().calls, 60, "one call per job");
    assert!(summary.deferred > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hidden_limit_slows_the_fleet_down_instead_of_dead_lettering() {
    // The target allows 25/s (429 + Retry-After: 1 above it); our budget is 100/s.
    let server = TargetServer::start().await.unwrap();
    let paths: Vec<String> = (0..300).map(|i| format!("capped/{i}?rps=25")).collect();
    let config = config_for(&server.base_url(), &paths, Some(100.0));
    let pipeline = embedded_pipeline(5, Duplicates::default());
    let started = Instant::now();
    let (summary, _) = fanout::run(&config, &pipeline, "hidden-limit", &local_defaults(4))
        .await
        .unwrap();
    let (calls, throttled) = (server.stats().calls, calls_with_status(&server, 429));
    eprintln!(
        "hidden limit: {calls} calls, {throttled} 429s ({:.1}%), {:.1} s (N/25 = 12 s)\n{summary:?}",
        100.0 * throttled as f64 / calls as f64,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (summary.succeeded, summary.dead_lettered, summary.lost),
        (300, 0, 0),
        "{summary:?}"
    );
    assert!(
        throttled * 10 <= calls,
        "429s are at most 10% of calls: {throttled} of {calls}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_down_for_eight_seconds_is_not_hammered_and_every_job_succeeds_after() {
    let server = TargetServer::start().await.unwrap();
    let paths: Vec<String> = (0..100).map(|i| format!("outage/{i}?secs=8")).collect();
    let config = config_for(&server.base_url(), &paths, Some(50.0));
    let pipeline = embedded_pipeline(5, Duplicates::default());
    let (summary, _) = fanout::run(&config, &pipeline, "outage", &local_defaults(4))
        .await
        .unwrap();
    let during = calls_with_status(&server, 503);
    eprintln!(
        "host down 8 s: {during} calls during the outage, {} in all\n{summary:?}",
        server.stats().calls
    );
    assert_eq!(
        (summary.succeeded, summary.dead_lettered, summary.lost),
        (100, 0, 0),
        "{summary:?}"
    );
    assert!(during <= 30, "{during} calls while the host was down");
    assert!(
        summary.held > 0,
        "jobs were held while the circuit was open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_after_a_backoff_not_a_visibility_timeout() {
    // 10% of 200 jobs fail once with 500; the visibility timeout is 30 s.
    let server = TargetServer::start().await.unwrap();
    let paths: Vec<String> = (0..200)
        .map(|i| {
            if i % 10 == 0 {
                format!("flaky/{i}?fail=1")
            } else {
                format!("ok/{i}")
            }
        })
        .collect();
    let config = config_for(&server.base_url(), &paths, Some(100.0));
    let mut options = local_defaults(4);
    options.event_source.visibility_timeout = Duration::from_secs(30);
    let pipeline = embedded_pipeline(5, Duplicates::default());
    let started = Instant::now();
    let (summary, _) = fanout::run(&config, &pipeline, "transient", &options)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "10% transient: settled in {:.1} s (N/R = 2 s)\n{summary:?}",
        elapsed.as_secs_f64()
    );
    assert_eq!(
        (summary.succeeded, summary.dead_lettered, summary.lost),
        (200, 0, 0),
        "{summary:?}"
    );
    assert_eq!(summary.retries, 20, "each flaky job retried once");
    assert_eq!(server.stats().calls, 220);
    // A retry that waited for the visibility timeout would take 30 s; this is a count of how
    // many did (none), not a timing goal.
    assert!(
        elapsed < Duration::from_secs(30),
        "no retry waited out the 30 s visibility timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_busy_instances_of_eight_use_the_whole_budget_and_never_exceed_it() {
    // Eight instances as Lambda runs them, each with its own lease and limiters (`fanout run`
    // drains through one): with 20 jobs most find no work, and the busy ones share the budget.
    let server = TargetServer::start().await.unwrap();
    let paths: Vec<String> = (0..20).map(|i| format!("ok/{i}")).collect();
    let mut config = config_for(&server.base_url(), &paths, None);
    config.rate_limit = Some(RateLimit {
        per_second: 10.0,
        burst: 1,
    });
    let pipeline = embedded_pipeline(5, Duplicates::default());
    let mut options = local_defaults(8);
    options.separate_instances = true;
    let started = Instant::now();
    let (summary, _) = fanout::run(&config, &pipeline, "sparse", &options)
        .await
        .unwrap();
    let peak = server.max_calls_in_window(Duration::from_secs(1));
    eprintln!(
        "sparse fleet: {:.2} s (N/R = 2 s), peak {peak} in 1 s\n{summary:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!((summary.succeeded, summary.lost), (20, 0));
    assert!(
        peak <= 11,
        "peak {peak} in a 1 s window, budget 10 + burst 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_host_never_holds_back_a_fast_one_and_each_host_keeps_its_budget() {
    // 1 job in 6 on a host at 2/s, the rest on one at 100/s (BENCHMARKS.md figure 14 times
    // it). The slow host's jobs wait for their permits, none is dead-lettered for it, and
    // neither host sees more than its budget and burst in any second.
    let hosts = [(100.0, 100), (2.0, 20)];
    let (servers, config) = hosts_tick(&hosts, None).await;
    let pipeline = embedded_pipeline(5, Duplicates::default());
    let started = Instant::now();
    let (summary, _) = fanout::run(&config, &pipeline, "mixed", &local_defaults(4))
        .await
        .unwrap();
    assert_eq!(
        (summary.succeeded, summary.dead_lettered, summary.lost),
        (120, 0, 0),
        "{summary:?}"
    );
    for (server, (per_second, jobs)) in servers.iter().zip(hosts) {
        let stats = server.stats();
        let last = server.records().iter().map(|r| r.at).max().unwrap();
        let peak = server.max_calls_in_window(Duration::from_secs(1));
        eprintln!(
            "{per_second}/s: last call after {:.2} s (ideal {:.2} s), peak {peak} in 1 s",
            last.duration_since(started).as_secs_f64(),
            jobs as f64 / per_second
        );
        assert_eq!((stats.calls, stats.effects), (jobs, jobs), "{per_second}/s");
        assert!(
            peak as f64 <= per_second + 1.0,
            "{per_second}/s: {peak} calls in 1 s, above budget + burst"
        );
    }
    assert!(
        summary.deferred > 0,
        "slow-host jobs left their batches: {summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_gets_the_calls_in_flight_its_budget_needs() {
    // One invocation slot of 10 records, an API that answers in 200 ms, a 200/s budget:
    // spending it takes 40 calls in flight (BENCHMARKS.md figure 14 times it at 400/s). With
    // a fixed 10 in flight, no 150 ms could see more than 10 calls start.
    let hosts = [(200.0, 400)];
    let (servers, mut config) = hosts_tick(&hosts, None).await;
    answered_after(&mut config, 200);
    let pipeline = embedded_pipeline(5, Duplicates::default());
    let (summary, _) = fanout::run(&config, &pipeline, "slow-api", &local_defaults(1))
        .await
        .unwrap();
    let server = &servers[0];
    let (started_together, peak) = (
        server.max_calls_in_window(Duration::from_millis(150)),
        server.max_calls_in_window(Duration::from_secs(1)),
    );
    eprintln!(
        "slow API: {started_together} calls started in 150 ms, peak {peak} in 1 s\n{summary:?}"
    );
    assert_eq!(
        (summary.succeeded, summary.dead_lettered, summary.lost),
        (400, 0, 0)
    );
    assert_eq!(server.stats().effects, 400);
    assert!(
        started_together >= 20,
        "{started_together} calls started within 150 ms: the in-flight cap did not follow the budget"
    );
    assert!(peak <= 201, "{peak} calls in 1 s, budget 200 + burst 1");
}
