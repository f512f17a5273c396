//! The AWS backend against a real emulator (moto server): SNS → SQS → consumer → DynamoDB.

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use fanout_shared::metrics::Metric;
use std::sync::Arc;
use std::time::Duration;

use fanout::{aws_with, peek_all, provision, to_event};
use fanout_consumer::{Consumer, Settings};
use fanout_shared::runs::{RunLedger as _, Tally};
use fanout_shared::{
    decode_body, JobMessage, Queue, ATTR_FAILURE_REASON, ATTR_MESSAGE_ID, ATTR_STATUS_CODE,
    ATTR_TARGET_HOST,
};
use fanout_testkit::target_server::TargetServer;
use fanout_tests::fault::{moto_fault_options, run_faults, CrashInjection, FaultPlan};
use fanout_tests::{
    config_file, config_file_at, config_for, fanout_bin, fast_options, moto_or_skip, Moto,
};

fn in_seconds(s: i64) -> i64 {
    fanout_shared::now_ms() + s * 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_batch_arrives_raw_and_enveloped_with_attributes() {
    let moto = moto_or_skip!();
    let sdk = moto.sdk().await;
    let resources = provision(&sdk, "pub", 5, 30).await.unwrap();
    // A second queue subscribed without raw delivery receives SNS envelopes.
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let envelope_url = sqs
        .create_queue()
        .queue_name("pub-envelope")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let envelope_arn = "arn:aws:sqs:us-east-1:123456789012:pub-envelope";
    aws_sdk_sns::Client::new(&sdk)
        .subscribe()
        .topic_arn(&resources.topic_arn)
        .protocol("sqs")
        .endpoint(envelope_arn)
        .send()
        .await
        .unwrap();

    let pipeline = aws_with(&sdk, &resources);
    let config = config_for("https://api.example.com", &["ok/1".to_owned()], None);
    let job = JobMessage::new(
        "run-1",
        config.job_target(&config.targets[0]),
        chrono::Utc::now(),
    );
    assert!(pipeline
        .publisher
        .publish_batch(&[job.encode()])
        .await
        .unwrap()
        .is_empty());

    let raw = pipeline
        .queue
        .receive(10, Duration::from_secs(30), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(raw.len(), 1);
    assert_eq!(decode_body(&raw[0].body).unwrap(), job);
    assert_eq!(raw[0].attributes[ATTR_MESSAGE_ID], job.message_id);
    assert_eq!(raw[0].attributes[ATTR_TARGET_HOST], "api.example.com");

    let enveloped = fanout_shared::aws::SqsQueue::new(sqs, envelope_url);
    let wrapped = enveloped
        .receive(10, Duration::from_secs(30), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(wrapped.len(), 1);
    assert_eq!(
        decode_body(&wrapped[0].body).unwrap(),
        job,
        "the consumer reads envelopes too"
    );
    let envelope: serde_json::Value = serde_json::from_str(&wrapped[0].body).unwrap();
    assert_eq!(
        envelope["MessageAttributes"][ATTR_MESSAGE_ID]["Value"],
        job.message_id.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_publishes_redeliveries_and_racing_consumers_make_one_call() {
    let moto = moto_or_skip!();
    let sdk = moto.sdk().await;
    let resources = provision(&sdk, "dup", 5, 30).await.unwrap();
    let pipeline = aws_with(&sdk, &resources);
    let server = TargetServer::start().await.unwrap();
    let config = config_for(
        &server.base_url(),
        &["slow/a?ms=200".to_owned(), "ok/b".to_owned()],
        None,
    );
    let job_a = JobMessage::new(
        "run-1",
        config.job_target(&config.targets[0]),
        chrono::Utc::now(),
    );
    let job_b = JobMessage::new(
        "run-1",
        config.job_target(&config.targets[1]),
        chrono::Utc::now(),
    );
    // Job a published twice (a re-run producer), job b once.
    for job in [&job_a, &job_a, &job_b] {
        pipeline
            .publisher
            .publish_batch(&[job.encode()])
            .await
            .unwrap();
    }
    let consumer = |_: usize| {
        let backends = pipeline.consumer_backends();
        Arc::new(Consumer::new(&config, backends, Settings::default()).unwrap())
    };
    // Two consumers race on the two copies of a, one message each.
    let mut copies = Vec::new();
    while copies.len() < 3 {
        copies.extend(
            pipeline
                .queue
                .receive(1, Duration::from_secs(30), Duration::from_secs(1))
                .await
                .unwrap(),
        );
    }
    let a_copies: Vec<_> = copies
        .iter()
        .filter(|m| decode_body(&m.body).unwrap().message_id == job_a.message_id)
        .cloned()
        .collect();
    assert_eq!(a_copies.len(), 2);
    let (c1, c2) = (consumer(1), consumer(2));
    let (e1, e2) = (
        to_event("q", vec![a_copies[0].clone()]),
        to_event("q", vec![a_copies[1].clone()]),
    );
    let (r1, r2) = tokio::join!(
        c1.handle_batch(e1, in_seconds(10)),
        c2.handle_batch(e2, in_seconds(10))
    );
    let returned = r1.response.batch_item_failures.len() + r2.response.batch_item_failures.len();
    assert!(
        returned <= 1,
        "the loser is either skipped or sent back while the winner holds the lock"
    );
    // The same SQS message received twice (its visibility ran out): one call.
    let b = copies
        .iter()
        .find(|m| decode_body(&m.body).unwrap().message_id == job_b.message_id)
        .unwrap()
        .clone();
    c1.handle_batch(to_event("q", vec![b.clone()]), in_seconds(10))
        .await;
    let again = c2
        .handle_batch(to_event("q", vec![b]), in_seconds(10))
        .await;
    assert_eq!(again.metrics.total(Metric::DuplicatesSkipped), 1.0);
    let calls = server.records();
    assert_eq!(
        calls
            .iter()
            .filter(|r| r.path.starts_with("/slow/a"))
            .count(),
        1,
        "one call for job a"
    );
    assert_eq!(
        calls.iter().filter(|r| r.path.starts_with("/ok/b")).count(),
        1,
        "one call for job b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_is_retried_with_backoff_until_max_attempts_and_permanent_is_dead_lettered() {
    let moto = moto_or_skip!();
    let sdk = moto.sdk().await;
    let resources = provision(&sdk, "retry", 2, 1).await.unwrap();
    let pipeline = aws_with(&sdk, &resources);
    let server = TargetServer::start().await.unwrap();
    let paths = [
        "flaky/once?fail=1",
        "flaky/always?fail=1000",
        "bad/x",
        "ok/y",
    ]
    .map(String::from);
    let mut config = config_for(&server.base_url(), &paths, None);
    // Three attempts, more than maxReceiveCount (2): retries are delayed copies (SQS
    // DelaySeconds) and use up no receives.
    config.retry = fanout_shared::RetryPolicy {
        base_ms: 10,
        cap_ms: 100,
        max_attempts: 3,
    };
    let mut options = fast_options(2);
    options.event_source.visibility_timeout = Duration::from_secs(1);
    options.event_source.poll_wait = Duration::from_secs(1);
    let (summary, _) = fanout::run(&config, &pipeline, "retry-run", &options)
        .await
        .unwrap();
    assert_eq!(summary.lost, 0, "{summary:?}");
    assert_eq!(
        summary.succeeded, 2,
        "the ok job and the one that failed once"
    );
    // The ledger in DynamoDB counts reason classes; the DLQ keeps each whole reason.
    assert_eq!(
        summary
            .dead_lettered_by_reason
            .get("retries exhausted (HTTP 500)"),
        Some(&1),
        "{summary:?}"
    );
    assert_eq!(
        summary.dead_lettered_by_reason.get("HTTP 400"),
        Some(&1),
        "{summary:?}"
    );
    assert_eq!(
        summary.status,
        fanout_shared::runs::RunStatus::Failed,
        "2 dead-lettered, none tolerated"
    );
    let dlq = peek_all(pipeline.dlq.as_ref(), 100, Duration::from_secs(1))
        .await
        .unwrap();
    let bad = dlq
        .iter()
        .find(|m| {
            m.attributes
                .get(ATTR_FAILURE_REASON)
                .is_some_and(|r| r == "HTTP 400 Bad Request")
        })
        .unwrap();
    assert_eq!(bad.attributes[ATTR_STATUS_CODE], "400");
    let given_up = "transient failure on all 3 attempts, the last: HTTP 500 Internal Server Error";
    assert!(dlq.iter().any(|m| m
        .attributes
        .get(ATTR_FAILURE_REASON)
        .is_some_and(|r| r == given_up)));
    assert_eq!(
        server
            .records()
            .iter()
            .filter(|r| r.path.starts_with("/bad"))
            .count(),
        1,
        "a permanent failure is called once"
    );
    assert_eq!(
        server
            .records()
            .iter()
            .filter(|r| r.path.starts_with("/flaky/always"))
            .count(),
        3,
        "max_attempts calls"
    );
}

#[test]
fn fanout_run_backend_aws_settles_200_jobs() {
    let moto = moto_or_skip!();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TargetServer::start()).unwrap();
    let paths: Vec<String> = (0..200).map(|i| format!("ok/{i}")).collect();
    let (_dir, config_path) = config_file("moto-run", &server.base_url(), &paths);

    let exports = provision_with_cli(&moto, "cli");
    let output = std::process::Command::new(fanout_bin())
        .envs(moto.env())
        .envs(exports)
        .args([
            "--backend",
            "aws",
            "run",
            "--run-id",
            "cli-run",
            "--json",
            "--config",
        ])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (summary["succeeded"].as_u64(), summary["lost"].as_u64()),
        (Some(200), Some(0)),
        "{summary}"
    );
    assert_eq!(server.stats().effects, 200);
}

/// `fanout --backend aws ARGS` against `moto` with the provisioned `exports`: its JSON output.
fn fanout_aws(moto: &Moto, exports: &[(String, String)], args: &[&str]) -> serde_json::Value {
    fanout_aws_exit(moto, exports, args, 0)
}

/// [`fanout_aws`] of a command that must exit with `code`.
fn fanout_aws_exit(
    moto: &Moto,
    exports: &[(String, String)],
    args: &[&str],
    code: i32,
) -> serde_json::Value {
    let output = std::process::Command::new(fanout_bin())
        .envs(moto.env())
        .envs(exports.iter().cloned())
        .arg("--backend")
        .arg("aws")
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(code),
        "fanout {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `fanout provision` in moto: the `FANOUT_*` variables it prints.
fn provision_with_cli(moto: &Moto, prefix: &str) -> Vec<(String, String)> {
    let provisioned = std::process::Command::new(fanout_bin())
        .envs(moto.env())
        .args(["provision", "--prefix", prefix])
        .output()
        .unwrap();
    assert!(
        provisioned.status.success(),
        "{}",
        String::from_utf8_lossy(&provisioned.stderr)
    );
    let exports: Vec<(String, String)> = String::from_utf8_lossy(&provisioned.stdout)
        .lines()
        .filter_map(|l| {
            l.strip_prefix("export ")?
                .split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    assert_eq!(exports.len(), 5, "four resources and the list home");
    exports
}

#[test]
fn dlq_list_and_replay_on_sqs_settle_fifty_fixed_jobs_once_each() {
    let moto = moto_or_skip!();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TargetServer::start()).unwrap();
    let paths: Vec<String> = (0..50).map(|i| format!("broken/{i}")).collect();
    let (_dir, config_path) = config_file("moto-dlq", &server.base_url(), &paths);
    let exports = provision_with_cli(&moto, "dlq");
    let fanout = |args: &[&str]| fanout_aws(&moto, &exports, args);
    let config = config_path.to_str().unwrap();

    // moto serves one request at a time: give invocations time, so none is cut off mid-batch.
    // 50 dead-lettered, none tolerated: the run FAILED (exit 3).
    let run = fanout_aws_exit(
        &moto,
        &exports,
        &[
            "run",
            "--run-id",
            "dlq-run",
            "--json",
            "--function-timeout",
            "20",
            "--visibility-timeout",
            "25",
            "--config",
            config,
        ],
        3,
    );
    assert_eq!(
        (
            run["dead_lettered"].as_u64(),
            run["lost"].as_u64(),
            run["status"].as_str()
        ),
        (Some(50), Some(0), Some("FAILED")),
        "{run}"
    );
    let listed = fanout(&["dlq", "list", "--json"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 50, "{run}");
    assert!(listed.iter().all(|e| e["reason"] == "HTTP 400 Bad Request" && e["record_status"] == "DEAD_LETTERED"), "{listed:?}");

    // Replaying one job before the fix: it fails again and is back in the DLQ.
    let one = fanout(&["dlq", "replay", "--target", "t7", "--json"]);
    assert_eq!(
        (
            one["method"].as_str(),
            one["moved"].as_u64(),
            one["skipped"].as_u64()
        ),
        (Some("one-by-one"), Some(1), Some(49)),
        "{one}"
    );
    let again = fanout(&[
        "consume",
        "--json",
        "--function-timeout",
        "20",
        "--visibility-timeout",
        "25",
        "--config",
        config,
    ]);
    assert_eq!(again["dead_lettered"], 1, "{again}");

    let dry = fanout(&["dlq", "replay", "--dry-run", "--json"]);
    assert_eq!(dry["moved"], 50);
    assert_eq!(
        fanout(&["dlq", "list", "--json"]).as_array().unwrap().len(),
        50,
        "a dry run moves nothing"
    );

    server.fix();
    let all = fanout(&["dlq", "replay", "--json"]);
    assert_eq!(
        (
            all["method"].as_str(),
            all["moved"].as_u64(),
            all["failed"].as_u64()
        ),
        (Some("one-by-one"), Some(50), Some(0)),
        "{all}"
    );
    assert!(
        all["move_task_unavailable"].is_string(),
        "moto has no StartMessageMoveTask: {all}"
    );
    let consumed = fanout(&[
        "consume",
        "--json",
        "--function-timeout",
        "20",
        "--visibility-timeout",
        "25",
        "--config",
        config,
    ]);
    assert_eq!(consumed["succeeded"], 50, "{consumed}");
    assert_eq!(
        fanout(&["dlq", "list", "--json"]).as_array().unwrap().len(),
        0
    );
    let stats = server.stats();
    assert_eq!((stats.effects, stats.repeat_successes), (50, 0));
    let calls = |path: &str| server.records().iter().filter(|r| r.path == path).count();
    assert_eq!(
        calls("/broken/7"),
        3,
        "400, 400 on the early replay, then 200"
    );
    assert_eq!(calls("/broken/8"), 2, "400, then 200");
    // The ledger in DynamoDB moved each replayed job to succeeded, t7 once despite two replays.
    let shown = fanout(&["runs", "show", "dlq-run", "--json"]);
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
        (shown["status"].as_str(), shown["event_sent"].as_bool()),
        (Some("FAILED"), Some(true)),
        "{shown}"
    );
    let listed = fanout(&["runs", "list", "--json"]);
    assert_eq!(
        listed
            .as_array()
            .map(|l| l.iter().map(|r| r["run_id"].clone()).collect::<Vec<_>>()),
        Some(vec![serde_json::json!("dlq-run")]),
        "the runs index lists it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_run_of_100_jobs_settles_every_job_once() {
    let moto = moto_or_skip!();
    let sdk = moto.sdk().await;
    let resources = provision(&sdk, "faults", 5, 1).await.unwrap();
    let pipeline = aws_with(&sdk, &resources);
    let server = TargetServer::start().await.unwrap();
    let options = moto_fault_options(Duration::from_secs(120));
    let crash = Some(CrashInjection {
        rate: 0.05,
        within: Duration::from_millis(500),
        seed: 8,
    });
    let plan = FaultPlan {
        jobs: 100,
        seed: 8,
        rate: 50.0,
        call_timeout: Duration::from_millis(1200),
        options,
        crash,
    };
    // No transport duplicates on moto: the double producer makes every job arrive twice.
    let figures = run_faults(&pipeline, &server, &plan).await;
    eprintln!("^ fault run against moto");
    assert_eq!(figures.duplicates_delivered, 100, "{figures}");
    assert_eq!(
        figures.dead_lettered.get("HTTP 400 Bad Request"),
        Some(&5),
        "{figures}"
    );
}

#[test]
fn flow_control_on_dynamodb_holds_a_down_host_and_waits_for_a_tight_budget_without_dead_letters() {
    // The host state and the leases in DynamoDB (moto), through the binary as a user runs it:
    // a host down for its first 4 s, and a budget of 8/s the jobs have to wait for. Without the
    // circuit, about 32 calls would meet the outage.
    let moto = moto_or_skip!();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TargetServer::start()).unwrap();
    let paths: Vec<String> = (0..40).map(|i| format!("outage/{i}?secs=4")).collect();
    let (dir, file) = config_file_at("moto-flow", &server.base_url(), &paths, Some(8.0));
    let exports = provision_with_cli(&moto, "flow");
    let fanout = |args: &[&str]| fanout_aws(&moto, &exports, args);

    let config = file.to_str().unwrap();
    let run = fanout(&[
        "run",
        "--run-id",
        "flow-run",
        "--json",
        "--function-timeout",
        "5",
        "--visibility-timeout",
        "6",
        "--config",
        config,
    ]);
    eprintln!("{run}");
    assert_eq!(
        (
            run["succeeded"].as_u64(),
            run["dead_lettered"].as_u64(),
            run["lost"].as_u64()
        ),
        (Some(40), Some(0), Some(0)),
        "{run}"
    );
    let stats = server.stats();
    assert_eq!(
        (stats.effects, stats.repeat_successes),
        (40, 0),
        "each job's effect once"
    );
    let outage_calls = calls_with_status(&server, 503);
    assert!(
        (5..=12).contains(&outage_calls),
        "{outage_calls} calls while the host was down: 5 open the circuit, then probes only"
    );

    // The host's state is in the table, for every instance and for the operator.
    let hosts = fanout(&["hosts", "--json", "--config", config]);
    let host = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] != "*")
        .unwrap_or_else(|| panic!("{hosts}"))["host"]
        .as_str()
        .unwrap()
        .to_owned();
    fanout(&["hosts", "--json", "--config", config, "pause", &host]);
    let paused = fanout(&["hosts", "--json", "--config", config]);
    assert!(
        paused
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["host"] == host.as_str() && h["operator_paused"] == true),
        "{paused}"
    );
    fanout(&["hosts", "--json", "--config", config, "resume", &host]);
    let resumed = fanout(&["hosts", "--json", "--config", config]);
    assert!(
        resumed
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["operator_paused"] == false && h["circuit"] == "closed"),
        "{resumed}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn calls_with_status(server: &TargetServer, status: u16) -> usize {
    server
        .records()
        .iter()
        .filter(|r| r.status == status)
        .count()
}

/// The DynamoDB operations a client sent (its `X-Amz-Target`, e.g. `DynamoDB_20120810.UpdateItem`).
#[derive(Debug, Clone, Default)]
struct DynamoDbCalls(Arc<std::sync::Mutex<Vec<String>>>);

impl DynamoDbCalls {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl aws_sdk_dynamodb::config::Intercept for DynamoDbCalls {
    fn name(&self) -> &'static str {
        "DynamoDbCalls"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_sdk_dynamodb::config::RuntimeComponents,
        _: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .push(target.rsplit('.').next().unwrap_or_default().to_owned());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_costs_two_dynamodb_calls_and_a_settled_duplicate_one() {
    use fanout_shared::aws::DynamoDbIdempotency;
    use fanout_shared::{Acquire, Claim, IdempotencyStore};
    let moto = moto_or_skip!();
    let sdk = moto.sdk().await;
    let resources = provision(&sdk, "calls", 5, 30).await.unwrap();
    let calls = DynamoDbCalls::default();
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .interceptor(calls.clone())
            .build(),
    );
    let store = DynamoDbIdempotency::new(client.clone(), &resources.table_name);
    let claim = |now_ms| Claim {
        message_id: "m1",
        run_id: "r",
        target_id: "t",
        now_ms,
        lock_until_ms: now_ms + 30_000,
        expiration_s: 0,
        replay_of: None,
        holder: Claim::new_holder(),
    };

    // A job: acquire, call, complete: two single-item writes, the second also storing where
    // the job is counted (its batch's token and its delta). The batch, however many jobs it
    // holds, is one more write on the run's counters (issue #28: the per-job transaction with
    // the run's shard cost 4 write units; these cost 1 each).
    let now = fanout_shared::now_ms();
    let ledger = fanout_shared::aws::DynamoDbRuns::new(client.clone(), &resources.table_name);
    let start = fanout_producer::run_start(&fanout_shared::PipelineConfig::default(), "r", None, 2);
    ledger.begin(&start).await.unwrap();
    calls.take();
    let tally = Tally {
        run_id: "r",
        host: "h",
        reason: None,
        undo: None,
    };
    let token = fanout_shared::runs::CountToken {
        instance: "i1".to_owned(),
        seq: 1,
        deadline_ms: now,
    };
    assert!(matches!(
        store.acquire(&claim(now)).await.unwrap(),
        Acquire::Acquired { attempt: 1, .. }
    ));
    store
        .complete("m1", 1, 200, 0, (&tally, &token))
        .await
        .unwrap();
    assert_eq!(calls.take(), ["UpdateItem", "UpdateItem"]);
    let batch = tally.delta(true);
    ledger.count("r", "i1", 1, &batch).await.unwrap();
    assert_eq!(calls.take(), ["UpdateItem"]);
    assert_eq!(ledger.get("r").await.unwrap().unwrap().counts.succeeded, 1);
    calls.take();
    // A job of a run without a ledger (published before it had one): the same two writes.
    let orphan = Claim {
        message_id: "m9",
        run_id: "old",
        ..claim(now)
    };
    store.acquire(&orphan).await.unwrap();
    let old = Tally {
        run_id: "old",
        ..tally.clone()
    };
    store
        .complete("m9", 1, 200, 0, (&old, &token))
        .await
        .unwrap();
    assert_eq!(calls.take(), ["UpdateItem", "UpdateItem"]);

    // A duplicate delivery: the failed condition brings the item back, no GetItem after it
    // (two calls before ReturnValuesOnConditionCheckFailure).
    assert_eq!(
        store.acquire(&claim(now + 1)).await.unwrap(),
        Acquire::AlreadyCompleted
    );
    assert_eq!(calls.take(), ["UpdateItem"]);

    // A copy while another consumer holds the lock: the same single call.
    let held = Claim {
        message_id: "m3",
        ..claim(now)
    };
    store.acquire(&held).await.unwrap();
    calls.take();
    assert!(matches!(
        store
            .acquire(&Claim {
                message_id: "m3",
                ..claim(now + 1)
            })
            .await
            .unwrap(),
        Acquire::Locked { .. }
    ));
    assert_eq!(calls.take(), ["UpdateItem"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_racing_on_a_runs_last_jobs_finish_it_once_with_one_eventbridge_event() {
    let moto = moto_or_skip!();
    let sdk = moto.sdk().await;
    let resources = provision(&sdk, "race", 5, 30).await.unwrap();
    let pipeline = aws_with(&sdk, &resources);
    // The completion events land in a queue through an EventBridge rule, as a subscriber's would.
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let inbox = sqs
        .create_queue()
        .queue_name("run-events")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let inbox_arn = fanout_shared::aws::queue_arn(&sqs, &inbox).await.unwrap();
    let events = aws_sdk_eventbridge::Client::new(&sdk);
    let pattern =
        serde_json::json!({"source": ["fanout"], "detail-type": ["Run Succeeded", "Run Failed"]});
    events
        .put_rule()
        .name("runs")
        .event_pattern(pattern.to_string())
        .send()
        .await
        .unwrap();
    let target = aws_sdk_eventbridge::types::Target::builder()
        .id("inbox")
        .arn(inbox_arn)
        .build()
        .unwrap();
    events
        .put_targets()
        .rule("runs")
        .targets(target)
        .send()
        .await
        .unwrap();

    let server = TargetServer::start().await.unwrap();
    let paths: Vec<String> = (0..8).map(|i| format!("ok/{i}")).collect();
    let config = config_for(&server.base_url(), &paths, None);
    let options = fanout::RunOptions {
        separate_instances: true,
        ..fast_options(4)
    };
    let consumers = fanout::consumers(&config, &pipeline, &options).unwrap();
    for round in 0..3 {
        let run_id = format!("race-{round}");
        fanout::produce_tick(&config, &pipeline, &run_id, "fanout")
            .await
            .unwrap();
        let mut messages = Vec::new();
        while messages.len() < 8 {
            messages.extend(
                pipeline
                    .queue
                    .receive(10, Duration::from_secs(60), Duration::from_secs(1))
                    .await
                    .unwrap(),
            );
        }
        // Four consumers settle two jobs each at the same moment: every one of them may be the
        // one that settles the run's last job.
        let batches: Vec<_> = messages
            .chunks(2)
            .zip(&consumers)
            .map(|(batch, c)| c.handle_batch(to_event("q", batch.to_vec()), in_seconds(20)))
            .collect();
        let reports = futures_util::future::join_all(batches).await;
        let finished: usize = reports.iter().map(|r| r.finished_runs.len()).sum();
        assert_eq!(
            finished, 1,
            "{run_id}: exactly one consumer finished the run"
        );
        let run = pipeline.runs.get(&run_id).await.unwrap().unwrap();
        assert_eq!(
            (run.status, run.counts.succeeded, run.event_sent),
            (fanout_shared::runs::RunStatus::Succeeded, 8, true)
        );
    }
    let mut received = Vec::new();
    for _ in 0..5 {
        let output = sqs
            .receive_message()
            .queue_url(&inbox)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        received.extend(
            output
                .messages()
                .iter()
                .filter_map(|m| serde_json::from_str::<serde_json::Value>(m.body()?).ok()),
        );
    }
    let mut runs: Vec<&str> = received
        .iter()
        .filter_map(|e| e["detail"]["run_id"].as_str())
        .collect();
    runs.sort_unstable();
    assert_eq!(
        runs,
        ["race-0", "race-1", "race-2"],
        "one event per run: {received:?}"
    );
    assert!(
        received.iter().all(|e| e["detail-type"] == "Run Succeeded"
            && e["source"] == "fanout"
            && e["detail"]["succeeded"] == 8),
        "{received:?}"
    );
}
