//! The run ledger on the embedded backend: counts, verdict and exactly one completion event per
//! run; the same tick again; the schedule guard; the watchdog. (Counts under every fault are
//! checked by `fault_injection.rs`, after a DLQ replay by `dlq.rs`, on DynamoDB by `moto.rs`.)

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use std::time::Duration;

use fanout_producer::Started;
use fanout_shared::embedded::Duplicates;
use fanout_shared::runs::{self, Overlap, RunPolicy, RunStatus, Tally};
use fanout_shared::{message_id, Acquire, Claim, PipelineConfig};
use fanout_testkit::target_server::TargetServer;
use fanout_tests::{config_for, embedded_pipeline, fast_options, RecordingBus};

fn paths(ok: usize, bad: usize) -> Vec<String> {
    (0..ok)
        .map(|i| format!("ok/{i}"))
        .chain((0..bad).map(|i| format!("bad/{i}")))
        .collect()
}

fn config(server: &TargetServer, ok: usize, bad: usize, policy: RunPolicy) -> PipelineConfig {
    PipelineConfig {
        runs: policy,
        ..config_for(&server.base_url(), &paths(ok, bad), None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_counted_judged_and_announced_once() {
    let server = TargetServer::start().await.unwrap();
    for (tolerated, verdict, detail_type) in [
        (5, RunStatus::Succeeded, "Run Succeeded"),
        (4, RunStatus::Failed, "Run Failed"),
    ] {
        let (pipeline, bus) = RecordingBus::install(&embedded_pipeline(
            5,
            Duplicates {
                twice: 0.3,
                thrice: 0.0,
                seed: 3,
            },
        ));
        let config = config(
            &server,
            20,
            5,
            RunPolicy {
                tolerated_failure_count: Some(tolerated),
                ..RunPolicy::default()
            },
        );
        let (summary, _) = fanout::run(&config, &pipeline, "r1", &fast_options(4))
            .await
            .unwrap();
        assert_eq!(
            (
                summary.status,
                summary.succeeded,
                summary.dead_lettered,
                summary.lost
            ),
            (verdict, 20, 5, 0),
            "tolerating {tolerated}"
        );
        assert_eq!(
            summary.dead_lettered_by_reason,
            [("HTTP 400".to_owned(), 5)].into()
        );
        assert_eq!(
            summary.dead_lettered_by_host,
            [("127.0.0.1".to_owned(), 5)].into()
        );

        let run = pipeline.runs.get("r1").await.unwrap().unwrap();
        assert_eq!(
            (run.counts.expected, run.counts.in_flight(), run.event_sent),
            (25, 0, true)
        );
        assert!(
            run.finished_at_ms >= Some(run.started_at_ms) && run.config_digest == config.digest()
        );
        let events = bus.events();
        assert_eq!(events.len(), 1, "exactly one completion event: {events:?}");
        let (kind, detail) = &events[0];
        assert_eq!(kind, detail_type);
        assert_eq!(
            (
                detail["run_id"].as_str(),
                detail["expected"].as_u64(),
                detail["succeeded"].as_u64(),
                detail["dead_lettered"].as_u64()
            ),
            (Some("r1"), Some(25), Some(20), Some(5))
        );
        assert_eq!(detail["failures_by_reason"]["HTTP 400"], 5);
        assert!(detail["duration_ms"].as_i64().is_some_and(|d| d >= 0));

        // The same tick again (a re-delivered schedule event): the run has ended, nothing is
        // published, nothing is counted or announced twice.
        let calls = server.records().len();
        let (again, _) = fanout::run(&config, &pipeline, "r1", &fast_options(4))
            .await
            .unwrap();
        assert_eq!(
            (
                again.status,
                again.succeeded,
                again.dead_lettered,
                again.outbound_calls
            ),
            (verdict, 20, 5, 0)
        );
        assert_eq!((server.records().len(), bus.events().len()), (calls, 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_guard_skips_a_tick_while_the_previous_run_is_in_flight() {
    let server = TargetServer::start().await.unwrap();
    let pipeline = embedded_pipeline(5, Duplicates::default());
    let skip = RunPolicy {
        on_overlap: Overlap::Skip,
        deadline_seconds: Some(1),
        ..RunPolicy::default()
    };
    let config = config(&server, 3, 0, skip);
    let first = fanout::produce_tick(&config, &pipeline, "tick-1", "fanout")
        .await
        .unwrap();
    assert_eq!((first.started, first.published), (Started::New, 3));
    let second = fanout::produce_tick(&config, &pipeline, "tick-2", "fanout")
        .await
        .unwrap();
    assert!(
        matches!(&second.started, Started::Skipped(why) if why.contains("tick-1") && why.contains("0 of 3")),
        "{second:?}"
    );
    assert_eq!(
        (
            second.published,
            pipeline.queue.depth().await.unwrap().visible
        ),
        (0, 3),
        "a skipped tick publishes nothing"
    );
    let skipped = pipeline.runs.get("tick-2").await.unwrap().unwrap();
    assert_eq!(skipped.status, RunStatus::Skipped);
    assert!(skipped.note.is_some_and(|n| n.contains("tick-1")));
    // The same tick again is not an overlap.
    assert_eq!(
        fanout::produce_tick(&config, &pipeline, "tick-1", "fanout")
            .await
            .unwrap()
            .started,
        Started::Resumed
    );
    // Allowed overlaps publish.
    let allow = PipelineConfig {
        runs: RunPolicy {
            on_overlap: Overlap::Allow,
            ..skip
        },
        ..config.clone()
    };
    assert_eq!(
        fanout::produce_tick(&allow, &pipeline, "tick-3", "fanout")
            .await
            .unwrap()
            .started,
        Started::New
    );
    // A run past its deadline blocks nothing (a stuck run must not stop the schedule).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        fanout::produce_tick(&config, &pipeline, "tick-4", "fanout")
            .await
            .unwrap()
            .started,
        Started::New
    );
    let listed: Vec<(String, RunStatus)> = pipeline
        .runs
        .list(10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.run_id, r.status))
        .collect();
    let expected = ["tick-4", "tick-3", "tick-2", "tick-1"].map(|r| r.to_owned());
    assert_eq!(
        listed.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(),
        expected,
        "newest first"
    );
}

#[tokio::test]
async fn the_watchdog_finishes_a_run_whose_finisher_died_and_reports_overdue_ones() {
    let server = TargetServer::start().await.unwrap();
    let (pipeline, bus) = RecordingBus::install(&embedded_pipeline(5, Duplicates::default()));
    let config = config(
        &server,
        2,
        0,
        RunPolicy {
            deadline_seconds: Some(1),
            ..RunPolicy::default()
        },
    );
    fanout::produce_tick(&config, &pipeline, "crashed", "fanout")
        .await
        .unwrap();
    fanout::produce_tick(&config, &pipeline, "stuck", "fanout")
        .await
        .unwrap();
    // Both jobs of "crashed" settle and are counted (one batch), but no consumer finishes the
    // run (it died after counting).
    let now = fanout_shared::now_ms();
    for target in ["t0", "t1"] {
        let id = message_id("crashed", target);
        let claim = Claim {
            message_id: &id,
            run_id: "crashed",
            target_id: target,
            now_ms: now,
            lock_until_ms: now + 60_000,
            expiration_s: 0,
            replay_of: None,
            holder: Claim::new_holder(),
        };
        assert!(matches!(
            pipeline.store.acquire(&claim).await.unwrap(),
            Acquire::Acquired { attempt: 1, .. }
        ));
        let tally = Tally {
            run_id: "crashed",
            host: "127.0.0.1",
            reason: None,
            undo: None,
        };
        let token = fanout_shared::runs::CountToken {
            instance: "crashed-consumer".to_owned(),
            seq: 1,
            deadline_ms: now,
        };
        pipeline
            .store
            .complete(&id, 1, 200, 0, (&tally, &token))
            .await
            .unwrap();
    }
    pipeline
        .runs
        .count(
            "crashed",
            "crashed-consumer",
            1,
            &fanout_shared::runs::Delta {
                succeeded: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let crashed = pipeline.runs.get("crashed").await.unwrap().unwrap();
    assert_eq!(
        (
            crashed.status,
            crashed.counts.succeeded,
            crashed.counts.in_flight()
        ),
        (RunStatus::Running, 2, 0)
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let sweep = runs::Finisher::new(pipeline.runs.as_ref(), pipeline.events.as_ref(), "fanout")
        .sweep(20, fanout_shared::now_ms())
        .await
        .unwrap();
    assert_eq!(
        sweep
            .finished
            .iter()
            .map(|r| (r.run_id.as_str(), r.status))
            .collect::<Vec<_>>(),
        vec![("crashed", RunStatus::Succeeded)]
    );
    assert_eq!(
        sweep
            .overdue
            .iter()
            .map(|r| r.run_id.as_str())
            .collect::<Vec<_>>(),
        vec!["stuck"],
        "past its 1 s deadline"
    );
    assert_eq!(bus.events().len(), 1);
    let again = runs::Finisher::new(pipeline.runs.as_ref(), pipeline.events.as_ref(), "fanout")
        .sweep(20, fanout_shared::now_ms())
        .await
        .unwrap();
    assert!(
        again.finished.is_empty() && again.events_sent == 0,
        "{again:?}"
    );
    assert_eq!(bus.events().len(), 1, "a finished run is announced once");
}
