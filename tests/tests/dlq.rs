//! `fanout dlq list|replay` on the embedded backend (issue #5): permanent failures replayed
//! after the target is fixed run once more and succeed once; dry runs and filters move exactly
//! what they say; replaying twice, or being killed half way, calls nothing twice.

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use fanout_shared::metrics::Metric;
use std::process::{Command, Stdio};
use std::time::Duration;

use fanout::{DlqFilter, Pipeline, ReplayOptions, ReplayTargets};
use fanout_shared::embedded::Duplicates;
use fanout_shared::runs::RunStatus;
use fanout_shared::{Acquire, Claim, Failure, FailureKind, JobMessage, Status};
use fanout_testkit::target_server::TargetServer;
use fanout_tests::{
    config_file, config_for, embedded_pipeline, fanout_bin, fast_options, RecordingBus,
};

fn replay_options(filter: DlqFilter, max: Option<usize>, dry_run: bool) -> ReplayOptions {
    ReplayOptions {
        filter,
        max,
        rate: None,
        dry_run,
        wait: false,
        hold: Duration::from_secs(30),
        poll_wait: Duration::ZERO,
    }
}

async fn replay(pipeline: &Pipeline, options: &ReplayOptions) -> fanout::ReplaySummary {
    let targets = ReplayTargets {
        queue: pipeline.queue.as_ref(),
        dlq: pipeline.dlq.as_ref(),
        store: pipeline.store.as_ref(),
        mover: None,
    };
    fanout::replay_dlq(&targets, options, &|_| {})
        .await
        .unwrap()
}

async fn depths(pipeline: &Pipeline) -> (u64, u64) {
    (
        pipeline.queue.depth().await.unwrap().visible,
        pipeline.dlq.depth().await.unwrap().visible,
    )
}

fn calls_to(server: &TargetServer, path: &str) -> usize {
    server.records().iter().filter(|r| r.path == path).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_permanent_failures_replayed_after_the_fix_succeed_once_each() {
    let server = TargetServer::start().await.unwrap();
    let paths: Vec<String> = (0..60)
        .map(|i| {
            if i < 50 {
                format!("broken/{i}")
            } else {
                format!("ok/{i}")
            }
        })
        .collect();
    let config = config_for(&server.base_url(), &paths, None);
    let (pipeline, bus) = RecordingBus::install(&embedded_pipeline(3, Duplicates::default()));
    let (summary, _) = fanout::run(&config, &pipeline, "replay-run", &fast_options(4))
        .await
        .unwrap();
    assert_eq!(
        (
            summary.status,
            summary.succeeded,
            summary.dead_lettered,
            summary.lost
        ),
        (RunStatus::Failed, 10, 50, 0)
    );
    assert_eq!(bus.events().len(), 1);

    // The listing joins each message with its record and consumes nothing.
    let listed = fanout::list_dlq(
        pipeline.dlq.as_ref(),
        pipeline.store.as_ref(),
        &DlqFilter::default(),
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(listed.len(), 50);
    assert!(listed
        .iter()
        .all(|e| e.reason == "HTTP 400 Bad Request" && e.status_code == Some(400)));
    assert!(listed
        .iter()
        .all(|e| e.record_status == Some(Status::DeadLettered) && e.attempts == Some(1)));
    assert!(listed.iter().all(
        |e| e.host.as_deref() == Some("127.0.0.1") && e.run_id.as_deref() == Some("replay-run")
    ));
    assert_eq!(depths(&pipeline).await, (0, 50), "listing consumed nothing");

    // A dry run names what would move and moves nothing.
    let dry = replay(&pipeline, &replay_options(DlqFilter::default(), None, true)).await;
    assert_eq!((dry.moved, dry.would_move.len()), (50, 50));
    assert_eq!(depths(&pipeline).await, (0, 50));

    server.fix();
    let moved = replay(
        &pipeline,
        &replay_options(DlqFilter::default(), None, false),
    )
    .await;
    assert_eq!(
        (moved.moved, moved.failed, moved.skipped, moved.not_deleted),
        (50, 0, 0, 0)
    );
    assert_eq!(depths(&pipeline).await, (50, 0));
    let outcome = fanout::consume(&config, &pipeline, &fast_options(4), 50)
        .await
        .unwrap();
    assert!(outcome.drained);
    assert_eq!(outcome.metrics.total(Metric::Succeeded), 50.0);
    for i in 0..50 {
        assert_eq!(
            calls_to(&server, &format!("/broken/{i}")),
            2,
            "job {i}: the 400, then one successful replay"
        );
    }
    // The ledger moves each replayed job from dead-lettered to succeeded; the verdict and the
    // completion event stay those of the run's end.
    let ledger = || async { pipeline.runs.get("replay-run").await.unwrap().unwrap() };
    let replayed = ledger().await;
    assert_eq!(
        (
            replayed.counts.succeeded,
            replayed.counts.dead_lettered,
            replayed.status
        ),
        (60, 0, RunStatus::Failed)
    );
    assert!(
        replayed.counts.failures_by_reason.is_empty()
            && replayed.counts.failures_by_host.is_empty(),
        "{:?}",
        replayed.counts
    );
    assert_eq!(bus.events().len(), 1);

    // Replaying again finds nothing; replaying the same messages again (a second copy of every
    // replayed message, as a duplicate move would make) calls nothing.
    assert_eq!(
        replay(
            &pipeline,
            &replay_options(DlqFilter::default(), None, false)
        )
        .await
        .moved,
        0
    );
    for entry in &dry.would_move {
        pipeline
            .queue
            .send(&entry.message.body, &entry.message.attributes)
            .await
            .unwrap();
    }
    let again = fanout::consume(&config, &pipeline, &fast_options(4), 50)
        .await
        .unwrap();
    assert_eq!(again.metrics.total(Metric::DuplicatesSkipped), 50.0);
    let stats = server.stats();
    assert_eq!(
        (stats.effects, stats.repeat_successes, stats.calls),
        (60, 0, 110),
        "50 × 400, 50 replays, 10 ok"
    );
    assert_eq!(
        ledger().await.counts,
        replayed.counts,
        "duplicates of replayed jobs count nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_exactly_the_matching_messages() {
    let server = TargetServer::start().await.unwrap();
    let other_host = server.base_url().replace("127.0.0.1", "localhost");
    // t0..t9: 400 on 127.0.0.1; t10..t19: 400 on localhost; t20..t29: given up after 2 × 500.
    let paths: Vec<String> = (0..30)
        .map(|i| {
            if i < 20 {
                format!("bad/{i}")
            } else {
                format!("flaky/{i}?fail=1000")
            }
        })
        .collect();
    let mut config = config_for(&server.base_url(), &paths, None);
    config.retry = fanout_shared::RetryPolicy {
        base_ms: 10,
        cap_ms: 50,
        max_attempts: 2,
    };
    // Per-job 500s on a host that otherwise answers: keep the circuit out of this test.
    config.host_protection.failure_threshold = 1000;
    for target in &mut config.targets[10..20] {
        target.url = target.url.replace(&server.base_url(), &other_host);
    }
    let pipeline = embedded_pipeline(2, Duplicates::default());
    let (summary, _) = fanout::run(&config, &pipeline, "filter-run", &fast_options(4))
        .await
        .unwrap();
    assert_eq!(
        (summary.dead_lettered, summary.lost),
        (30, 0),
        "{summary:?}"
    );

    let count = |filter: DlqFilter| {
        let pipeline = pipeline.clone();
        async move {
            fanout::list_dlq(
                pipeline.dlq.as_ref(),
                pipeline.store.as_ref(),
                &filter,
                Duration::ZERO,
            )
            .await
            .unwrap()
        }
    };
    let by_host = count(DlqFilter {
        host: Some("localhost".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(by_host.len(), 10);
    assert!(by_host.iter().all(|e| e
        .target_id
        .as_deref()
        .is_some_and(|t| (10..20).any(|i| t == format!("t{i}")))));
    assert_eq!(
        count(DlqFilter {
            reason: Some("400".into()),
            ..Default::default()
        })
        .await
        .len(),
        20
    );
    let given_up = count(DlqFilter {
        reason: Some("on all 2 attempts".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(given_up.len(), 10);
    assert!(given_up.iter().all(
        |e| e.last_error.as_deref().is_some_and(|l| l.contains("500"))
            && e.record_status == Some(Status::DeadLettered)
    ));
    assert_eq!(
        count(DlqFilter {
            reason: Some("HTTP 500".into()),
            ..Default::default()
        })
        .await
        .len(),
        10,
        "matches the record's last error"
    );
    assert_eq!(
        count(DlqFilter {
            target: Some("t3".into()),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    assert_eq!(
        count(DlqFilter {
            target: Some("t3".into()),
            host: Some("localhost".into()),
            ..Default::default()
        })
        .await
        .len(),
        0
    );

    // A filtered, capped replay moves only matching messages, and no more than asked.
    let filter = DlqFilter {
        host: Some("localhost".into()),
        ..Default::default()
    };
    let capped = replay(&pipeline, &replay_options(filter.clone(), Some(4), false)).await;
    assert_eq!(capped.moved, 4);
    assert_eq!(depths(&pipeline).await, (4, 26));
    let moved = pipeline
        .queue
        .receive(10, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert!(
        moved.iter().all(|m| m.body.contains("localhost")),
        "only localhost jobs moved"
    );
    let rest = replay(&pipeline, &replay_options(filter, None, false)).await;
    assert_eq!((rest.moved, rest.skipped), (6, 20));
}

#[test]
fn replay_killed_half_way_loses_nothing_and_calls_nothing_twice() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TargetServer::start()).unwrap();
    let paths: Vec<String> = (0..50).map(|i| format!("broken/{i}")).collect();
    let (dir, config) = config_file("dlq-kill", &server.base_url(), &paths);
    let state = dir.join("state.db");
    let fanout = |args: &[&str]| {
        let mut cmd = Command::new(fanout_bin());
        cmd.arg("--state").arg(&state).args(args);
        cmd
    };
    let run = fanout(&["run", "--run-id", "kill-replay", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        (summary["dead_lettered"].as_u64(), summary["lost"].as_u64()),
        (Some(50), Some(0)),
        "{summary}"
    );

    let listed = fanout(&["dlq", "list", "--json", "--reason", "bad request"])
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.len(), 50);
    assert!(
        listed
            .iter()
            .all(|e| e["status_code"] == 400 && e["record_status"] == "DEAD_LETTERED"),
        "{listed:?}"
    );

    let dry = fanout(&["dlq", "replay", "--dry-run", "--json"])
        .output()
        .unwrap();
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(
        (dry["moved"].as_u64(), dry["dry_run"].as_bool()),
        (Some(50), Some(true))
    );

    server.fix();
    // 50 messages at 20/s take 2.5 s; kill the replay after about 1 s.
    let mut first = fanout(&["dlq", "replay", "--rate", "20", "--hold", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    first.kill().unwrap();
    first.wait().unwrap();
    let pipeline = fanout::embedded(&fanout::EmbeddedSettings {
        state: state.clone(),
        max_receive_count: None,
        duplicates: Duplicates::default(),
    })
    .unwrap();
    let (queue, dlq) = runtime.block_on(async {
        (
            pipeline.queue.depth().await.unwrap(),
            pipeline.dlq.depth().await.unwrap(),
        )
    });
    assert!(
        queue.visible > 0 && queue.visible < 50,
        "killed half way: {queue:?} in the queue"
    );
    assert!(
        queue.visible + dlq.visible + dlq.in_flight >= 50,
        "nothing lost: queue {queue:?}, DLQ {dlq:?}"
    );

    // The killed replay's held messages come back after --hold; the second replay moves them.
    std::thread::sleep(Duration::from_millis(1200));
    let second = fanout(&["dlq", "replay", "--json"]).output().unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let consumed = fanout(&["consume", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        consumed.status.success(),
        "{}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    let stats = server.stats();
    assert_eq!(
        (stats.effects, stats.repeat_successes),
        (50, 0),
        "every job succeeded once: {stats:?}"
    );
    let empty = fanout(&["dlq", "list", "--json"]).output().unwrap();
    assert_eq!(
        serde_json::from_slice::<Vec<serde_json::Value>>(&empty.stdout)
            .unwrap()
            .len(),
        0
    );
    // The ledger, through `fanout runs`: every job counted once, as succeeded, kill or not.
    let shown = fanout(&["runs", "show", "kill-replay", "--json"])
        .output()
        .unwrap();
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        (
            shown["expected"].as_u64(),
            shown["succeeded"].as_u64(),
            shown["dead_lettered"].as_u64()
        ),
        (Some(50), Some(50), Some(0)),
        "{shown}"
    );
    assert_eq!(
        shown["status"], "FAILED",
        "the verdict at the run's end: {shown}"
    );
    let listed = fanout(&["runs", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("kill-replay") && l.contains("FAILED")),
        "{text}"
    );
    let missing = fanout(&["runs", "show", "no-such-run"]).output().unwrap();
    assert_eq!(
        missing.status.code(),
        Some(2),
        "an unknown run is bad input"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_copy_of_a_rejected_job_runs_once_when_replayed() {
    let server = TargetServer::start().await.unwrap();
    let config = config_for(&server.base_url(), &["broken/cut-off".to_owned()], None);
    let pipeline = embedded_pipeline(3, Duplicates::default());
    let job = JobMessage::new(
        "cut-run",
        config.job_target(&config.targets[0]),
        chrono::Utc::now(),
    );
    // A consumer called the target, got a 400, recorded REJECTED and was cut off before its own
    // DLQ copy; every redelivery was cut off too, and SQS redrove the message as it was.
    let now = fanout_shared::now_ms();
    let claim = Claim {
        message_id: &job.message_id,
        run_id: &job.run_id,
        target_id: "t0",
        now_ms: now,
        lock_until_ms: now + 1000,
        expiration_s: now / 1000 + 3600,
        replay_of: None,
        holder: Claim::new_holder(),
    };
    assert_eq!(
        pipeline.store.acquire(&claim).await.unwrap(),
        Acquire::Acquired {
            attempt: 1,
            failures: 0,
            dead_letter_class: None
        }
    );
    pipeline
        .store
        .reject(
            &job.message_id,
            1,
            &Failure::new(FailureKind::Http(400), "HTTP 400 Bad Request"),
        )
        .await
        .unwrap();
    let message = job.encode();
    pipeline
        .dlq
        .send(&message.body, &message.attributes)
        .await
        .unwrap();

    let listed = fanout::list_dlq(
        pipeline.dlq.as_ref(),
        pipeline.store.as_ref(),
        &DlqFilter::default(),
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(
        (listed[0].reason.as_str(), listed[0].record_status),
        ("max receives exceeded", Some(Status::Rejected))
    );
    server.fix();
    assert_eq!(
        replay(
            &pipeline,
            &replay_options(DlqFilter::default(), None, false)
        )
        .await
        .moved,
        1
    );
    let outcome = fanout::consume(&config, &pipeline, &fast_options(1), 1)
        .await
        .unwrap();
    assert_eq!(
        outcome.metrics.total(Metric::Succeeded),
        1.0,
        "the replay runs the job instead of dead-lettering it again"
    );
    assert_eq!(server.stats().effects, 1);
    assert_eq!(depths(&pipeline).await, (0, 0));
}
