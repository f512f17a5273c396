//! The real stack on this machine: the CDK stack of infra/ deployed into ministack by
//! `scripts/local-cloud`, with the release binaries as the Lambda functions, ticked with
//! `fanout trigger` and operated with `fanout --stack`. Only deployed behaviour is observed:
//! what the target server saw, the idempotency records, the DLQ, the emulator's log.
//! The budget the config says is the one that runs: counted at the target, per second.
//! Every AWS request the functions make passes a chain of proxies, one per service
//! ([`ProxyChain`]), that forwards it as it came; the last section arms the AWS fault plan of
//! #26 on it.
//!
//! Minutes long, so ignored by a plain `cargo test`; `scripts/test` runs it after building the
//! binaries (`cargo test --release -p fanout-tests --test local_cloud -- --ignored`). Needs
//! python3 and npm (the script installs ministack and infra/node_modules); without them it fails,
//! it never skips.

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use fanout::{aws_with, Pipeline, StackOutputs};
use fanout_shared::{message_id, PipelineConfig, RateLimit, Status};
use fanout_testkit::aws_proxy::{FaultKind, FaultPlan, FaultRule, Service};
use fanout_testkit::target_server::{max_in_window, CallRecord, TargetServer};
use fanout_tests::local_cloud::{
    emulator_endpoint, eventually, function_lines, LocalCloud, ProxyChain,
};

const STACK: &str = "FanoutLocal";
const SCHEDULED: &str = "FanoutLocalSchedule";
/// The stack whose targets are a list in its list home (#25).
const LISTS: &str = "FanoutLocalLists";
/// Rows of that list.
const LIST_ROWS: usize = 2_000;
/// The stack whose budget comes from its config alone.
const BUDGET: &str = "FanoutLocalBudget";
/// Its config's `rate_limit.per_second`.
const BUDGET_RATE: f64 = 20.0;
/// Its jobs per tick: about 12 s at the budget, 10 of them steady.
const BUDGET_JOBS: usize = 240;
/// Its consumer instances at most (`maxConcurrency`, the stack's default).
const BUDGET_INSTANCES: usize = 5;
/// The consumer's function timeout: short, so a slow call runs into it and its batch comes back
/// after the visibility timeout (6 × 2 s) within the test.
const CONSUMER_TIMEOUT_S: u64 = 2;

/// The stack of the AWS-faults section (#26): the stack's defaults, its own config.
const FAULTS: &str = "FanoutLocalFaults";
/// Its jobs per tick; every tenth answers a permanent 400, the rest 200.
const FAULT_JOBS: usize = 200;
const FAULT_BAD_EVERY: usize = 10;
/// Its config's budget: N/R = 4 s.
const FAULT_RATE: f64 = 50.0;
/// The seed of every service's plan. With it, each rule fires within the requests the tick
/// cannot do without (see `the_fault_seed_fires_every_rule_within_a_ticks_own_requests`), so the
/// section never passes by injecting nothing.
const FAULT_SEED: u64 = 20;
/// The issue's shares: DynamoDB calls throttled, DynamoDB writes whose answer is lost, SQS
/// server errors, SNS `PublishBatch` throttled and lost, EventBridge server errors.
const DYNAMODB_THROTTLED: f64 = 0.10;
const DYNAMODB_WRITES_LOST: f64 = 0.03;
const SQS_ERRORS: f64 = 0.10;
const SNS_THROTTLED: f64 = 0.10;
const SNS_LOST: f64 = 0.03;
const EVENTS_ERRORS: f64 = 0.20;
/// The window in which every DynamoDB call is throttled: it opens this long after the plans are
/// armed (the trigger), when the consumers are calling, and lasts this long.
const THROTTLED_FROM: Duration = Duration::from_secs(2);
const THROTTLED_FOR: Duration = Duration::from_secs(3);

/// The issue's fault plan (#26), one plan per service for the service's own link of the
/// [`ProxyChain`]. A service's rules are tried in order and the first that fires wins, so the
/// shares of the second rule are of the requests the first let through: DynamoDB is throttled
/// during the window (as `ProvisionedThroughputExceededException`, the hot-partition throttle,
/// which also tells the window's faults from the others), then on 10% of calls
/// (`ThrottlingException`), then 3% of the writes that got through are lost (applied, answered
/// 500); SQS answers 10% of calls with a server error; SNS throttles 10% of `PublishBatch`
/// calls and loses 3% of the rest (published, answered 500: the producer publishes those jobs
/// again); EventBridge answers 20% of calls with a server error.
fn fault_plans(seed: u64) -> Vec<(Service, FaultPlan)> {
    let publish = ["PublishBatch"];
    vec![
        (
            Service::DynamoDb,
            FaultPlan::new(seed)
                .rule(
                    FaultRule::new(Service::DynamoDb, FaultKind::ThroughputExceeded)
                        .window(THROTTLED_FROM, THROTTLED_FOR),
                )
                .rule(
                    FaultRule::new(Service::DynamoDb, FaultKind::Throttle)
                        .probability(DYNAMODB_THROTTLED),
                )
                .rule(
                    FaultRule::new(Service::DynamoDb, FaultKind::Lost)
                        .writes_only()
                        .probability(DYNAMODB_WRITES_LOST),
                ),
        ),
        (
            Service::Sqs,
            FaultPlan::new(seed)
                .rule(FaultRule::new(Service::Sqs, FaultKind::ServerError).probability(SQS_ERRORS)),
        ),
        (
            Service::Sns,
            FaultPlan::new(seed)
                .rule(
                    FaultRule::new(Service::Sns, FaultKind::Throttle)
                        .operations(publish)
                        .probability(SNS_THROTTLED),
                )
                .rule(
                    FaultRule::new(Service::Sns, FaultKind::Lost)
                        .operations(publish)
                        .probability(SNS_LOST),
                ),
        ),
        (
            Service::EventBridge,
            FaultPlan::new(seed).rule(
                FaultRule::new(Service::EventBridge, FaultKind::ServerError)
                    .probability(EVENTS_ERRORS),
            ),
        ),
    ]
}

/// For rules that match every request of their link and have a probability (no window): the
/// first request (0-based) among the first `requests` at which each rule fires, drawn as the
/// proxy draws them (`fanout_testkit::aws_proxy`: the plan's generator seeded with `seed`, one
/// draw per rule tried, in order, until one fires).
fn first_firings(seed: u64, probabilities: &[f64], requests: usize) -> Vec<Option<usize>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut first = vec![None; probabilities.len()];
    for request in 0..requests {
        for (rule, p) in probabilities.iter().enumerate() {
            if rng.f64() < *p {
                first[rule] = first[rule].or(Some(request));
                break;
            }
        }
    }
    first
}

#[test]
fn the_fault_seed_fires_every_rule_within_a_ticks_own_requests() {
    // A tick of the faults stack makes at least: one PutEvents (its completion event), one
    // PublishBatch per 10 jobs, one SendMessage to the DLQ per permanent failure. Retries only
    // add requests, and the n-th request of a link draws the same numbers whichever it is.
    let (publishes, dead_letters) = (FAULT_JOBS.div_ceil(10), FAULT_JOBS / FAULT_BAD_EVERY);
    let events = first_firings(FAULT_SEED, &[EVENTS_ERRORS], 1);
    let sqs = first_firings(FAULT_SEED, &[SQS_ERRORS], dead_letters);
    let sns = first_firings(FAULT_SEED, &[SNS_THROTTLED, SNS_LOST], publishes);
    assert!(
        events.iter().chain(&sqs).chain(&sns).all(Option::is_some),
        "seed {FAULT_SEED}: EventBridge {events:?}, SQS {sqs:?}, SNS {sns:?}"
    );
    assert_eq!(first_firings(FAULT_SEED, &[0.0, 1.0], 3), [None, Some(0)]);
}

/// A config of `paths` on the target server, one target per path, the path as its ID, with a
/// global budget of `rate` per second (burst 1). The config is the budget's one source: the
/// stack runs it as it is, and refuses a `ratePerSecond` that disagrees. Calls may take 10 s,
/// longer than the consumer's function timeout.
fn write_config(
    dir: &Path,
    file: &str,
    base_url: &str,
    paths: &[String],
    rate: Option<f64>,
) -> PathBuf {
    let config = PipelineConfig {
        rate_limit: rate.map(|per_second| RateLimit {
            per_second,
            burst: 1,
        }),
        allow_private_networks: true,
        targets: fanout_testkit::targets(
            base_url,
            paths.iter().map(|p| {
                (
                    p.split('?').next().unwrap_or(p).replace('/', "-"),
                    p.as_str(),
                )
            }),
            Some(10_000),
        ),
        ..PipelineConfig::default()
    };
    let file = dir.join(file);
    std::fs::write(
        &file,
        serde_json::to_string_pretty(&config).expect("config serializes"),
    )
    .expect("config written");
    file
}

fn paths(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

/// Calls the target server saw, by path (without the query).
fn calls_by_path(server: &TargetServer) -> BTreeMap<String, Vec<CallRecord>> {
    let mut by_path: BTreeMap<String, Vec<CallRecord>> = BTreeMap::new();
    for record in server.records() {
        let path = record
            .path
            .trim_start_matches('/')
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        by_path.entry(path).or_default().push(record);
    }
    by_path
}

/// The stack's pipeline (topic, queues, table), resolved from its outputs like `--stack` does.
async fn pipeline(sdk: &aws_config::SdkConfig, stack: &str) -> Pipeline {
    // The stack's own pipeline (named as the stack) among any others it holds.
    let outputs = StackOutputs::describe(sdk, stack)
        .await
        .expect("the stack has outputs")
        .pipeline(Some(stack))
        .expect("the stack's own pipeline");
    aws_with(sdk, &outputs.names().expect("the four outputs"))
}

/// `fanout trigger --wait`: the tick's producer summary and its settlement.
fn tick(cloud: &LocalCloud, stack: &str, config: &Path, timeout_s: u32) -> Value {
    let config = config.to_string_lossy();
    let timeout = timeout_s.to_string();
    let answer = cloud.fanout_json(&[
        "--stack",
        stack,
        "trigger",
        "--config",
        &config,
        "--wait",
        "--timeout",
        &timeout,
    ]);
    assert_eq!(
        answer["wait"]["settled"], true,
        "every job settled: {answer}"
    );
    answer
}

/// Several pipelines in a stack (#29): without `--pipeline` a command is refused, naming them;
/// `fanout trigger --pipeline` ticks the `Report` pipeline of the scheduled stack: each of its
/// jobs called once, its run in its own ledger and not in the stack's first pipeline's.
async fn two_pipelines_in_one_stack(
    cloud: &LocalCloud,
    server: &TargetServer,
    config: &Path,
    report_paths: &[String],
) -> String {
    let report = format!("{SCHEDULED}-Report");
    let unnamed = cloud.fanout(&["--stack", SCHEDULED, "runs", "list"]);
    let stderr = String::from_utf8_lossy(&unnamed.stderr);
    assert!(
        !unnamed.status.success()
            && stderr.contains(&format!("holds the pipelines {SCHEDULED}, {report}")),
        "{stderr}"
    );
    let config = config.to_string_lossy();
    let answer = cloud.fanout_json(&[
        "--stack",
        SCHEDULED,
        "--pipeline",
        &report,
        "trigger",
        "--config",
        &config,
        "--wait",
    ]);
    assert_eq!(answer["wait"]["settled"], true, "{answer}");
    assert_eq!(answer["wait"]["succeeded"], report_paths.len(), "{answer}");
    let run_id = answer["run_id"].as_str().expect("run_id").to_owned();
    assert!(run_id.starts_with("schedule/tick@"), "{run_id}");
    let calls = calls_by_path(server);
    for path in report_paths {
        assert_eq!(calls.get(path).map(Vec::len), Some(1), "{path} called once");
    }
    let ids = |pipeline: &str| -> Vec<String> {
        cloud
            .fanout_json(&["--stack", SCHEDULED, "--pipeline", pipeline, "runs", "list"])
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["run_id"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(ids(&report), vec![run_id.clone()], "the report's ledger");
    assert!(
        !ids(SCHEDULED).contains(&run_id),
        "the report's run is not in the first pipeline's ledger"
    );
    println!("two pipelines in {SCHEDULED}: {report} ticked by trigger --pipeline, run {run_id} in its own ledger");
    run_id
}

/// The run as `fanout runs show` gives it, once it has finished. The consumer that counts a
/// run's last job finishes it right after its batch; when that invocation is killed first (this
/// stack works until the very deadline, and tick 2 has calls that outlive it), the deployed
/// watchdog finishes it: its schedule fires every 5 minutes, `fanout trigger --watchdog` now.
async fn finished_run(cloud: &LocalCloud, stack: &str, run_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let run = cloud.fanout_json(&["--stack", stack, "runs", "show", run_id]);
        if run["status"] != "RUNNING" && run["event_sent"] == true {
            println!("run {run_id}: finished by the consumer");
            return run;
        }
        if Instant::now() >= deadline {
            assert_eq!(
                run["succeeded"]
                    .as_u64()
                    .zip(run["dead_lettered"].as_u64())
                    .map(|(s, d)| s + d),
                run["expected"].as_u64(),
                "every job counted: {run}"
            );
            let sweep = cloud.fanout_json(&["--stack", stack, "trigger", "--watchdog"]);
            assert_eq!(
                (sweep["finished"].as_u64(), sweep["events_sent"].as_u64()),
                (Some(1), Some(1)),
                "the watchdog finished it: {sweep}"
            );
            let run = cloud.fanout_json(&["--stack", stack, "runs", "show", run_id]);
            assert!(
                run["status"] != "RUNNING" && run["event_sent"] == true,
                "{run}"
            );
            println!(
                "run {run_id}: finished by the watchdog (its last consumer invocation was killed)"
            );
            return run;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An SQS queue subscribed to the stack's run notifications topic: what an operator's email or
/// chat subscription would receive.
struct Inbox {
    sqs: aws_sdk_sqs::Client,
    url: String,
}

impl Inbox {
    async fn subscribe(sdk: &aws_config::SdkConfig, stack: &str) -> Self {
        let topic = StackOutputs::describe(sdk, stack)
            .await
            .expect("outputs")
            .outputs["RunNotificationsTopicArn"]
            .clone();
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let url = sqs
            .create_queue()
            .queue_name(format!("{stack}-run-notifications-inbox"))
            .send()
            .await
            .expect("CreateQueue")
            .queue_url()
            .unwrap_or_default()
            .to_owned();
        let arn = fanout_shared::aws::queue_arn(&sqs, &url)
            .await
            .expect("queue ARN");
        let sns = aws_sdk_sns::Client::new(sdk);
        sns.subscribe()
            .topic_arn(topic)
            .protocol("sqs")
            .endpoint(arn)
            .attributes("RawMessageDelivery", "true")
            .send()
            .await
            .expect("Subscribe");
        Self { sqs, url }
    }

    /// The next event, as EventBridge delivered it, within `limit`.
    async fn next_within(&self, limit: Duration) -> Option<Value> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let output = self
                .sqs
                .receive_message()
                .queue_url(&self.url)
                .wait_time_seconds(1)
                .send()
                .await
                .ok()?;
            if let Some(message) = output.messages().first() {
                let _ = self
                    .sqs
                    .delete_message()
                    .queue_url(&self.url)
                    .receipt_handle(message.receipt_handle().unwrap_or_default())
                    .send()
                    .await;
                return serde_json::from_str(message.body().unwrap_or_default()).ok();
            }
        }
        None
    }

    async fn next(&self, limit: Duration) -> Value {
        self.next_within(limit)
            .await
            .unwrap_or_else(|| panic!("no run notification within {limit:?}"))
    }
}

fn dlq_list(cloud: &LocalCloud) -> Vec<Value> {
    cloud
        .fanout_json(&["--stack", STACK, "dlq", "list"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Calls per whole second of the steady part of `times` (sorted arrivals): from `skip` after
/// the first call (instances starting and joining the budget split) to the last full second
/// before the last call. A count per second, not a wall-clock goal: the budget decides it.
fn steady_seconds(times: &[Instant], skip: Duration) -> Vec<usize> {
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        return Vec::new();
    };
    let start = *first + skip;
    let seconds = last.saturating_duration_since(start).as_secs();
    (0..seconds)
        .map(|i| {
            let from = start + Duration::from_secs(i);
            let to = from + Duration::from_secs(1);
            times.iter().filter(|t| **t >= from && **t < to).count()
        })
        .collect()
}

#[test]
fn steady_seconds_count_whole_seconds_after_the_ramp() {
    let t0 = Instant::now();
    // 1 call in the first second (the ramp), then 4 per second for 3 s, then one straggler.
    let mut times = vec![t0];
    times.extend((0..12).map(|i| t0 + Duration::from_millis(1000 + 250 * i)));
    times.push(t0 + Duration::from_millis(4500));
    assert_eq!(steady_seconds(&times, Duration::from_secs(1)), [4, 4, 4]);
    assert_eq!(max_in_window(&times, Duration::from_secs(1)), 4);
    assert!(steady_seconds(&[], Duration::ZERO).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "deploys the CDK stack into ministack (a few minutes); scripts/test runs it with --ignored"]
async fn the_real_stack_on_this_machine() {
    let suite = Instant::now();
    let server = TargetServer::start().await.expect("target server starts");
    let base = server.base_url();
    let dir =
        std::env::temp_dir().join(format!("fanout-local-cloud-configs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("config dir");
    let mut cloud = LocalCloud::new("suite");
    // Every AWS request of the deployed functions goes through a chain of proxies, one per
    // service, that forwards it as it came until the faults section arms a plan.
    let chain = Arc::new(
        ProxyChain::start(&[
            Service::DynamoDb,
            Service::Sqs,
            Service::Sns,
            Service::EventBridge,
        ])
        .await
        .expect("AWS proxies start"),
    );
    cloud.script_env("FANOUT_LOCAL_CLOUD_FUNCTION_ENDPOINT", &chain.url());
    let follower = chain.follow_emulator(cloud.state_dir(), Duration::from_secs(120));

    // A second stack whose schedule fires every minute: deployed first, so its countdown runs while
    // the main stack is exercised; checked at the end. It holds a second pipeline, `Report`,
    // with targets and a one-minute schedule of their own, ticked now by `fanout trigger
    // --pipeline` and, by the end, by its schedule too.
    let scheduled_paths = paths("ok/sched-", 0..3);
    let scheduled_config =
        write_config(&dir, "scheduled.json", &base, &scheduled_paths, Some(100.0));
    let report_paths = paths("ok/report-", 0..4);
    let report_config = write_config(&dir, "report.json", &base, &report_paths, Some(100.0));
    let report_pipeline = format!("Report={}@rate(1 minute)", report_config.display());
    let first = cloud.up_with(
        &scheduled_config,
        SCHEDULED,
        &["scheduleExpression=rate(1 minute)"],
        std::slice::from_ref(&report_pipeline),
    );
    let scheduled_since = Instant::now();
    println!(
        "deploy (create, cold emulator) {SCHEDULED}, two pipelines: {:.1} s  [{}]",
        first.seconds, first.summary
    );
    follower.abort();
    chain.set_emulator(&emulator_endpoint(&cloud.state_dir()).expect("the emulator's port"));
    let report_run =
        two_pipelines_in_one_stack(&cloud, &server, &report_config, &report_paths).await;

    // The main stack: 40 good targets and 5 that answer 400 until the operator fixes them.
    let good = paths("ok/a-", 0..40);
    let broken = paths("broken/a-", 0..5);
    let config_a = write_config(
        &dir,
        "a.json",
        &base,
        &[good.clone(), broken.clone()].concat(),
        Some(500.0),
    );
    let timeout_context = format!("consumerTimeoutSeconds={CONSUMER_TIMEOUT_S}");
    let context = [
        timeout_context.as_str(),
        "maxConcurrency=2",
        // Work until the very deadline: a call still running then outlives the function.
        r#"consumerEnvironment={"FANOUT_DEADLINE_MARGIN_MS":"0"}"#,
    ];
    let deployed = cloud.up(&config_a, STACK, &context);
    println!(
        "deploy (create) {STACK}: {:.1} s  [{}]",
        deployed.seconds, deployed.summary
    );
    let status = cloud.status();
    assert!(
        status.contains(&format!("stack {STACK}: CREATE_COMPLETE")) && status.contains(SCHEDULED),
        "{status}"
    );
    let sdk = cloud.sdk().await;
    let main = pipeline(&sdk, STACK).await;
    let missing = cloud.fanout(&["--stack", "NoSuchStack", "dlq", "list"]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(
        missing.status.code(),
        Some(2),
        "a missing stack is bad input: {stderr}"
    );
    assert!(
        stderr.contains(r#"stack "NoSuchStack" does not exist in us-east-1 at http://127.0.0.1:"#),
        "{stderr}"
    );

    // The emulator ignores the template's TTL; `up` enabled it as the template says.
    let table = StackOutputs::describe(&sdk, STACK).await.unwrap().outputs["TableName"].clone();
    let ttl = aws_sdk_dynamodb::Client::new(&sdk)
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .expect("DescribeTimeToLive");
    let ttl = ttl.time_to_live_description().expect("TTL description");
    assert_eq!(ttl.attribute_name(), Some("expiration"), "{ttl:?}");
    let inbox = Inbox::subscribe(&sdk, STACK).await;

    // Tick 1: every good job called once by the consumer Lambda, every broken one dead-lettered
    // with its reason after one call.
    let tick1 = tick(&cloud, STACK, &config_a, 60);
    let run1 = tick1["run_id"].as_str().expect("run_id").to_owned();
    println!(
        "tick 1 ({} jobs): makespan {:.2} s",
        tick1["jobs"],
        tick1["wait"]["makespan_s"].as_f64().unwrap_or(0.0)
    );
    assert!(
        run1.starts_with("schedule/tick@"),
        "trigger sends the input of the stack's schedule: {run1}"
    );
    assert_eq!(tick1["wait"]["succeeded"], 40, "{tick1}");
    let calls = calls_by_path(&server);
    for path in &good {
        assert_eq!(calls.get(path).map(Vec::len), Some(1), "{path} called once");
    }
    for path in &broken {
        assert_eq!(
            calls.get(path).map(Vec::len),
            Some(1),
            "{path} called once, then dead-lettered"
        );
    }
    let dlq = dlq_list(&cloud);
    assert_eq!(dlq.len(), 5, "{dlq:?}");
    for entry in &dlq {
        assert_eq!(entry["run_id"], run1.as_str());
        assert!(
            entry["reason"].as_str().unwrap_or_default().contains("400"),
            "the reason names the 400: {entry}"
        );
    }
    // The consumer Lambda that settled the last job finished the run (5 dead-lettered, none
    // tolerated: FAILED) and put one event, which the stack's rule routed to its topic.
    let ledger1 = finished_run(&cloud, STACK, &run1).await;
    assert_eq!(
        (
            ledger1["status"].as_str(),
            ledger1["expected"].as_u64(),
            ledger1["succeeded"].as_u64(),
            ledger1["dead_lettered"].as_u64()
        ),
        (Some("FAILED"), Some(45), Some(40), Some(5)),
        "{ledger1}"
    );
    assert_eq!(ledger1["failures_by_reason"]["HTTP 400"], 5, "{ledger1}");
    let event1 = inbox.next(Duration::from_secs(30)).await;
    assert_eq!(
        (
            event1["detail-type"].as_str(),
            event1["detail"]["run_id"].as_str(),
            event1["detail"]["pipeline"].as_str()
        ),
        (Some("Run Failed"), Some(run1.as_str()), Some(STACK)),
        "{event1}"
    );

    // The operator fixes the target and replays: the consumer Lambda runs each job once more.
    server.fix();
    let replay = cloud.fanout_json(&["--stack", STACK, "dlq", "replay"]);
    assert_eq!(
        (replay["moved"].as_u64(), replay["failed"].as_u64()),
        (Some(5), Some(0)),
        "{replay}"
    );
    let broken_ids: Vec<String> = dlq
        .iter()
        .filter_map(|e| e["message_id"].as_str().map(str::to_owned))
        .collect();
    let (store, ids) = (&main.store, &broken_ids);
    eventually(
        Duration::from_secs(60),
        "the replayed jobs to complete",
        || async move {
            let records = store.get_many(ids).await.ok()?;
            (records.len() == 5 && records.iter().all(|r| r.status == Status::Completed))
                .then_some(())
        },
    )
    .await;
    let calls = calls_by_path(&server);
    for path in &broken {
        let seen = &calls[path];
        assert_eq!(
            seen.iter().map(|c| c.status).collect::<Vec<_>>(),
            [400, 200],
            "{path}: the 400, then the replay's one call"
        );
        assert_eq!(
            seen[0].idempotency_key, seen[1].idempotency_key,
            "the replay is the same job"
        );
    }
    assert!(
        dlq_list(&cloud).is_empty(),
        "the DLQ is empty after the replay"
    );
    let replayed = cloud.fanout_json(&["--stack", STACK, "runs", "show", &run1]);
    assert_eq!(
        (
            replayed["succeeded"].as_u64(),
            replayed["dead_lettered"].as_u64()
        ),
        (Some(45), Some(0)),
        "the replayed jobs count as succeeded: {replayed}"
    );

    // Poison published straight to the topic: dead-lettered with a reason, never called.
    let topic = StackOutputs::describe(&sdk, STACK).await.unwrap().outputs["TopicArn"].clone();
    let forged = serde_json::json!({
        "v": 1, "message_id": message_id("forged", "evil"), "run_id": "forged", "enqueued_at": "2026-01-01T00:00:00Z",
        "target": { "id": "evil", "url": format!("http://127.0.0.2:{}/ok/evil", base.rsplit(':').next().unwrap_or("80")), "method": "GET", "timeout_ms": 1000 }
    });
    let sns = aws_sdk_sns::Client::new(&sdk);
    for body in ["this is not a job".to_owned(), forged.to_string()] {
        sns.publish()
            .topic_arn(&topic)
            .message(body)
            .send()
            .await
            .expect("Publish");
    }
    let cloud_ref = &cloud;
    let poison = eventually(
        Duration::from_secs(30),
        "2 poison messages in the DLQ",
        || async move {
            let dlq = dlq_list(cloud_ref);
            (dlq.len() == 2).then_some(dlq)
        },
    )
    .await;
    let reasons: BTreeSet<String> = poison
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("poison message")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("127.0.0.2")),
        "the forged job's reason names its host: {reasons:?}"
    );
    assert!(
        !calls_by_path(&server).contains_key("ok/evil"),
        "the forged job was not called"
    );

    // Redeploy with another target list: half of the good targets go, 20 new ones come, plus
    // slow ones (a first call outlives the consumer's function timeout) and a flaky one (500
    // once, retried through the partial batch response).
    let kept = &good[..20];
    let added = paths("ok/b-", 0..20);
    let slow = paths("slow/b-slow-", 0..3)
        .into_iter()
        .map(|p| format!("{p}?ms=8000&fail=1"))
        .collect::<Vec<_>>();
    let flaky = vec!["flaky/b-flaky-0?fail=1".to_owned()];
    let config_b = write_config(
        &dir,
        "b.json",
        &base,
        &[kept.to_vec(), added.clone(), slow.clone(), flaky.clone()].concat(),
        Some(500.0),
    );
    let redeployed = cloud.up(&config_b, STACK, &[]);
    println!(
        "redeploy (update, new target list) {STACK}: {:.1} s  [{}]",
        redeployed.seconds, redeployed.summary
    );
    assert!(
        redeployed.summary.contains("updated"),
        "{}",
        redeployed.summary
    );

    let before = calls_by_path(&server);
    let tick2 = tick(&cloud, STACK, &config_b, 120);
    println!(
        "tick 2 ({} jobs, incl. a function timeout): makespan {:.2} s",
        tick2["jobs"],
        tick2["wait"]["makespan_s"].as_f64().unwrap_or(0.0)
    );
    assert_eq!(
        tick2["jobs"], 44,
        "the producer used the new target list: {tick2}"
    );
    assert_eq!(
        tick2["wait"]["succeeded"], 44,
        "nothing lost, nothing dead-lettered: {tick2}"
    );
    let after = calls_by_path(&server);
    let new_calls =
        |path: &str| after.get(path).map_or(0, Vec::len) - before.get(path).map_or(0, Vec::len);
    for path in kept.iter().chain(&added) {
        assert_eq!(new_calls(path), 1, "{path} called once in tick 2");
    }
    for path in &good[20..] {
        assert_eq!(
            new_calls(path),
            0,
            "{path} left the config and was not called"
        );
    }
    for path in slow.iter().chain(&flaky) {
        let path = path.split('?').next().unwrap_or_default();
        assert_eq!(
            new_calls(path),
            2,
            "{path}: the failed first call, then one retry"
        );
    }
    let run2 = tick2["run_id"].as_str().expect("run_id").to_owned();
    let ledger2 = finished_run(&cloud, STACK, &run2).await;
    assert_eq!(
        (
            ledger2["status"].as_str(),
            ledger2["succeeded"].as_u64(),
            ledger2["dead_lettered"].as_u64()
        ),
        (Some("SUCCEEDED"), Some(44), Some(0)),
        "{ledger2}"
    );
    let event2 = inbox.next(Duration::from_secs(30)).await;
    assert_eq!(
        (
            event2["detail-type"].as_str(),
            event2["detail"]["run_id"].as_str()
        ),
        (Some("Run Succeeded"), Some(run2.as_str())),
        "{event2}"
    );
    assert!(
        inbox.next_within(Duration::from_secs(2)).await.is_none(),
        "one event per run"
    );
    let listed = cloud.fanout_json(&["--stack", STACK, "runs", "list"]);
    let listed: Vec<&str> = listed
        .as_array()
        .map(|l| l.iter().filter_map(|r| r["run_id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(listed, [run2.as_str(), run1.as_str()], "newest first");
    let timeouts = cloud
        .log()
        .matches(&format!(
            "Task timed out after {CONSUMER_TIMEOUT_S}.00 seconds"
        ))
        .count();
    assert!(
        timeouts >= 1,
        "a consumer invocation ran into its function timeout (emulator log)"
    );
    println!("consumer invocations that hit the function timeout: {timeouts}");

    // The budget the config says is the budget that runs (#29 item 6): a stack deployed with a
    // config at 20/s and no `ratePerSecond` calls its targets at 20/s, measured at the target;
    // a `ratePerSecond` that disagrees with the config is refused at synth, naming both values.
    let budget_paths = paths("ok/budget-", 0..BUDGET_JOBS);
    let budget_config = write_config(&dir, "budget.json", &base, &budget_paths, Some(BUDGET_RATE));
    let instances = format!("maxConcurrency={BUDGET_INSTANCES}");
    let deployed = cloud.up(&budget_config, BUDGET, &[instances.as_str()]);
    println!(
        "deploy (create) {BUDGET}: {:.1} s  [{}]",
        deployed.seconds, deployed.summary
    );
    let budget_tick = tick(&cloud, BUDGET, &budget_config, 120);
    assert_eq!(
        budget_tick["wait"]["succeeded"], BUDGET_JOBS,
        "{budget_tick}"
    );
    let mut budget_times: Vec<Instant> = server
        .records()
        .into_iter()
        .filter(|r| r.path.trim_start_matches('/').starts_with("ok/budget-"))
        .map(|r| r.at)
        .collect();
    budget_times.sort();
    assert_eq!(
        budget_times.len(),
        BUDGET_JOBS,
        "each budget job called once"
    );
    let per_second = steady_seconds(&budget_times, Duration::from_secs(2));
    let peak = max_in_window(&budget_times, Duration::from_secs(1));
    let steady = per_second.iter().sum::<usize>() as f64 / per_second.len().max(1) as f64;
    let fleet_bound = BUDGET_RATE as usize + BUDGET_INSTANCES;
    println!(
        "budget {BUDGET_RATE}/s from the config, no stack override: {steady:.1} calls/s over \
         {} steady seconds {per_second:?}, peak {peak} in any 1 s window (the fleet's bound, \
         budget + one cell per instance: {fleet_bound})",
        per_second.len(),
    );
    assert!(
        per_second.len() >= 5,
        "a steady part of at least 5 s: {per_second:?}"
    );
    assert!(
        (steady - BUDGET_RATE).abs() <= BUDGET_RATE * 0.15,
        "the config's {BUDGET_RATE}/s runs: {steady:.1}/s measured {per_second:?}"
    );
    // Each instance's limiter holds at most one cell (burst 1 of its share), and while the
    // split moves (an instance ends a batch, its lease lapses, it comes back) an instance may
    // spend at the old share until its next lease renewal: measured here, up to 24 calls in one
    // 1 s window of a 20/s budget (budget + burst would be 21). The fleet's bound is the budget
    // plus one cell per instance; a budget that did not hold (two instances each taking the
    // whole budget, or the stack's 10/s replacing it) falls far outside.
    assert!(
        peak <= fleet_bound,
        "peak {peak} in a 1 s window: budget {BUDGET_RATE} + one cell for each of \
         {BUDGET_INSTANCES} instances is {fleet_bound}"
    );
    let refused = cloud
        .try_up(&budget_config, BUDGET, &["ratePerSecond=10"])
        .expect_err("a ratePerSecond that disagrees with the config is refused");
    assert!(
        refused.contains("ratePerSecond=10 disagrees with fanout.json rate_limit.per_second=20"),
        "the synth error names both values:\n{refused}"
    );
    // `up` remembered the refused value; `-c ratePerSecond=` forgets it, and the stack deploys
    // as before.
    let again = cloud.up(&budget_config, BUDGET, &["ratePerSecond="]);
    println!(
        "{BUDGET} after forgetting the refused value: [{}]",
        again.summary
    );

    lists_from_the_list_home(&mut cloud, &server, &dir).await;

    // The schedule fired the other stack's producer on its own, and its consumer ran the jobs.
    let sched = pipeline(&sdk, SCHEDULED).await;
    let limit = Duration::from_secs(150)
        .saturating_sub(scheduled_since.elapsed())
        .max(Duration::from_secs(10));
    let (server_ref, sched_paths, sched_store) = (&server, &scheduled_paths, &sched.store);
    // One snapshot of the calls: every call's job completed, per path the calls and their keys.
    let (runs, per_path) = eventually(
        limit,
        "the one-minute schedule to fire and its jobs to complete",
        || async move {
            let calls = calls_by_path(server_ref);
            let per_path: Vec<(usize, usize)> = sched_paths
                .iter()
                .map(|p| {
                    let seen = calls.get(p).map(Vec::as_slice).unwrap_or_default();
                    (
                        seen.len(),
                        seen.iter()
                            .filter_map(|c| c.idempotency_key.as_ref())
                            .collect::<BTreeSet<_>>()
                            .len(),
                    )
                })
                .collect();
            let keys: Vec<String> = sched_paths
                .iter()
                .flat_map(|p| calls.get(p).into_iter().flatten())
                .filter_map(|c| c.idempotency_key.clone())
                .collect();
            if per_path.iter().any(|(n, _)| *n == 0) {
                return None;
            }
            let records = sched_store.get_many(&keys).await.ok()?;
            let unique: BTreeSet<&String> = keys.iter().collect();
            (records.len() == unique.len() && records.iter().all(|r| r.status == Status::Completed))
                .then(|| {
                    (
                        records
                            .iter()
                            .map(|r| r.run_id.clone())
                            .collect::<BTreeSet<String>>(),
                        per_path,
                    )
                })
        },
    )
    .await;
    println!(
        "scheduled ticks seen {:.0} s after the deploy: {runs:?}",
        scheduled_since.elapsed().as_secs_f64()
    );
    for run in &runs {
        assert!(
            run.starts_with("schedule/tick@"),
            "run ID of a scheduled tick: {run}"
        );
    }
    for (path, (calls, keys)) in scheduled_paths.iter().zip(&per_path) {
        assert_eq!(
            (*calls, *keys),
            (runs.len(), runs.len()),
            "{path} called once per scheduled tick"
        );
    }
    // The stack's second pipeline ticked on its own schedule too, into its own ledger.
    let report = format!("{SCHEDULED}-Report");
    let (cloud_ref, report_ref) = (&cloud, &report);
    let report_runs = eventually(
        Duration::from_secs(30),
        "the Report pipeline's schedule to fire and its run to finish",
        || async move {
            let runs = cloud_ref.fanout_json(&[
                "--stack",
                SCHEDULED,
                "--pipeline",
                report_ref,
                "runs",
                "list",
            ]);
            let runs: Vec<(String, String)> = runs
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| {
                    Some((
                        r["run_id"].as_str()?.to_owned(),
                        r["status"].as_str()?.to_owned(),
                    ))
                })
                .collect();
            (runs.len() > 1 && runs.iter().all(|(_, status)| status == "SUCCEEDED")).then_some(runs)
        },
    )
    .await;
    let calls = calls_by_path(&server);
    for path in &report_paths {
        assert_eq!(
            calls.get(path).map(Vec::len),
            Some(report_runs.len()),
            "{path} called once per Report run: {report_runs:?}"
        );
    }
    assert!(report_runs.iter().any(|(id, _)| id == &report_run));
    println!("{report}: runs {report_runs:?} (one triggered, the others scheduled)");

    // The schedule has shown it fires; stopped (redeployed with its schedules disabled), so no
    // scheduled tick runs into the faults.
    let stopped = cloud.up(
        &scheduled_config,
        SCHEDULED,
        &[
            "scheduleExpression=rate(1 minute)",
            "schedulesEnabled=false",
        ],
    );
    println!(
        "{SCHEDULED} with its schedules disabled: {:.1} s  [{}]",
        stopped.seconds, stopped.summary
    );

    aws_faults(&mut cloud, &chain, &server, &dir).await;

    println!("suite: {:.1} s", suite.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A config whose one source reads `lists://customers.jsonl` from the stack's list home; each
/// row is a call to `/list/<id>` carrying the previous good tick's time.
fn write_lists_config(dir: &Path, base_url: &str) -> PathBuf {
    let config = serde_json::json!({
        "allow_private_networks": true,
        "rate_limit": { "per_second": 500, "burst": 1 },
        "templates": { "sync": {
            "url": format!("{base_url}/list/{{id}}?since={{tick.last_success_at}}"),
            "timeout_ms": 10_000
        }},
        "sources": [{ "name": "customers", "template": "sync", "id_field": "id",
                      "location": "lists://customers.jsonl" }]
    });
    let file = dir.join("lists.json");
    std::fs::write(&file, config.to_string()).expect("config written");
    file
}

/// Writes rows `c-<i>` for `ids` as JSON Lines.
fn write_list(file: &Path, ids: std::ops::Range<usize>) {
    let rows: Vec<String> = ids
        .map(|i| serde_json::json!({ "id": format!("c-{i}") }).to_string())
        .collect();
    std::fs::write(file, rows.join("\n")).expect("list written");
}

/// Calls to `/list/<id>` per ID, with each call's `since` value.
fn list_calls(server: &TargetServer) -> BTreeMap<String, Vec<String>> {
    let mut calls: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in server.records() {
        let Some(rest) = record.path.strip_prefix("/list/") else {
            continue;
        };
        let (id, query) = rest.split_once('?').unwrap_or((rest, ""));
        let since = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "since")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        calls.entry(id.to_owned()).or_default().push(since);
    }
    calls
}

/// Targets are data (#25 acceptance): a list of 2,000 rows pushed to the stack's list home
/// with `fanout targets push`, ticked: every row called once; a changed list pushed (rows added
/// and removed) and ticked again with no deploy in between: the new rows called, the removed
/// ones not, and the previous good tick's time reaches the target; a list that is gone fails
/// its tick as a FAILED run naming it.
async fn lists_from_the_list_home(cloud: &mut LocalCloud, server: &TargetServer, dir: &Path) {
    let config = write_lists_config(dir, &server.base_url());
    let deployed = cloud.up(&config, LISTS, &["maxConcurrency=5"]);
    println!(
        "deploy (create) {LISTS}: {:.1} s  [{}]",
        deployed.seconds, deployed.summary
    );
    let list = dir.join("customers.jsonl");
    let config_arg = config.to_string_lossy().into_owned();
    let push = |cloud: &LocalCloud| {
        let pushed = cloud.fanout_json(&[
            "--stack",
            LISTS,
            "targets",
            "push",
            "--config",
            &config_arg,
            &list.to_string_lossy(),
        ]);
        assert!(
            pushed["version"]["version_id"].is_string(),
            "a versioned object: {pushed}"
        );
        pushed
    };
    write_list(&list, 0..LIST_ROWS);
    let pushed = push(cloud);
    assert_eq!(pushed["rows"], LIST_ROWS, "{pushed}");

    let started = Instant::now();
    let tick1 = tick(cloud, LISTS, &config, 300);
    println!(
        "list tick 1 ({LIST_ROWS} rows from the list home): {:.1} s trigger to settled",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(tick1["wait"]["succeeded"], LIST_ROWS, "{tick1}");
    let run1 = tick1["run_id"].as_str().expect("run_id").to_owned();
    let calls = list_calls(server);
    assert_eq!(calls.len(), LIST_ROWS);
    assert!(
        calls.values().all(|c| c.len() == 1),
        "every row called once"
    );
    let ledger1 = finished_run(cloud, LISTS, &run1).await;
    assert_eq!(ledger1["status"], "SUCCEEDED", "{ledger1}");
    assert_eq!(ledger1["sources"][0]["rows"], LIST_ROWS, "{ledger1}");
    assert_eq!(
        ledger1["sources"][0]["objects"][0]["version_id"], pushed["version"]["version_id"],
        "the run records the version it read: {ledger1}"
    );

    // Rows 0..500 removed, 2,000..2,500 added; pushed, no deploy.
    write_list(&list, 500..LIST_ROWS + 500);
    push(cloud);
    let tick2 = tick(cloud, LISTS, &config, 300);
    assert_eq!(tick2["wait"]["succeeded"], LIST_ROWS, "{tick2}");
    let calls = list_calls(server);
    let scheduled1 = ledger1["scheduled_at"]
        .as_str()
        .expect("a scheduled tick")
        .to_owned();
    for i in 0..LIST_ROWS + 500 {
        let seen = calls
            .get(&format!("c-{i}"))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let expected = usize::from(i < LIST_ROWS) + usize::from(i >= 500);
        assert_eq!(seen.len(), expected, "c-{i}: {seen:?}");
        if i >= 500 {
            let since = seen.last().map(String::as_str).unwrap_or_default();
            let since = chrono::DateTime::parse_from_rfc3339(since).expect("an RFC 3339 time");
            let first = chrono::DateTime::parse_from_rfc3339(&scheduled1).expect("scheduled_at");
            assert_eq!(since, first, "c-{i}: tick 2 carries tick 1's time");
        }
    }

    // The list gone: the tick fails, visibly, and publishes nothing.
    let home = StackOutputs::describe(&cloud.sdk().await, LISTS)
        .await
        .unwrap()
        .outputs["ListsLocation"]
        .clone();
    let (bucket, prefix) = home
        .trim_start_matches("s3://")
        .split_once('/')
        .expect("s3://bucket/prefix/");
    fanout_shared::aws::s3_client(&cloud.sdk().await)
        .delete_object()
        .bucket(bucket)
        .key(format!("{prefix}customers.jsonl"))
        .send()
        .await
        .expect("DeleteObject");
    // Counted on the list's own paths: the scheduled stack's rule keeps ticking its three
    // targets meanwhile (CI once saw its tick land inside this window).
    let list_call_count = || list_calls(server).values().map(Vec::len).sum::<usize>();
    let before = list_call_count();
    let failed = cloud.fanout(&["--stack", LISTS, "trigger", "--config", &config_arg]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        !failed.status.success() && stderr.contains("customers.jsonl"),
        "{stderr}"
    );
    let runs = cloud.fanout_json(&["--stack", LISTS, "runs", "list"]);
    let latest = &runs[0];
    assert_eq!(
        (latest["status"].as_str(), latest["expected"].as_u64()),
        (Some("FAILED"), Some(0)),
        "{latest}"
    );
    assert!(
        latest["note"]
            .as_str()
            .unwrap_or_default()
            .contains("customers.jsonl"),
        "runs list names the list: {latest}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(list_call_count(), before, "no row of the list called");
}

/// The log lines after byte `from` that mention `needle`.
fn log_lines_with(cloud: &LocalCloud, from: usize, needle: &str) -> Vec<String> {
    cloud
        .log()
        .get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// AWS faults cost a backoff (#26): the issue's seeded fault plan ([`fault_plans`]) between the
/// deployed functions and the emulator while a tick of 200 jobs (20 permanent 400s) runs at
/// 50/s on a stack of its own. Nothing is lost, no job is called twice, the ledger counts the
/// truth, the DLQ holds exactly the permanent failures, the run's own consumer finishes it and
/// puts its one event, and every rule fired. Prints the times, N/R and the requests per job;
/// asserts counts, never times.
async fn aws_faults(cloud: &mut LocalCloud, chain: &ProxyChain, server: &TargetServer, dir: &Path) {
    let jobs: Vec<String> = (0..FAULT_JOBS)
        .map(|i| {
            if i % FAULT_BAD_EVERY == FAULT_BAD_EVERY - 1 {
                format!("bad/f-{i}")
            } else {
                format!("ok/f-{i}")
            }
        })
        .collect();
    let config = write_config(
        dir,
        "faults.json",
        &server.base_url(),
        &jobs,
        Some(FAULT_RATE),
    );
    // The functions' `tracing` filter comes from `AWS_LAMBDA_LOG_LEVEL`, which Lambda sets for
    // JSON logs and the emulator does not: without this the consumer's log lines are filtered out.
    let deployed = cloud.up(
        &config,
        FAULTS,
        &[r#"consumerEnvironment={"RUST_LOG":"info,fanout_consumer=debug,fanout_shared=debug"}"#],
    );
    println!(
        "deploy (create) {FAULTS}: {:.1} s  [{}]",
        deployed.seconds, deployed.summary
    );
    let sdk = cloud.sdk().await;
    let inbox = Inbox::subscribe(&sdk, FAULTS).await;
    let config_arg = config.to_string_lossy().into_owned();
    let log_from = cloud.log().len();
    let calls_from = server.records().len();
    chain.reset_counts();
    for (service, plan) in fault_plans(FAULT_SEED) {
        chain.set_plan(service, plan);
    }
    let started = Instant::now();
    let out = cloud.fanout(&[
        "--stack",
        FAULTS,
        "trigger",
        "--config",
        &config_arg,
        "--wait",
        "--timeout",
        "120",
        "--json",
    ]);
    let settled_after = started.elapsed();
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "fanout trigger answered no JSON ({e}, {}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let run_id = answer["run_id"].as_str().expect("run_id").to_owned();
    if answer["wait"]["settled"] != true {
        // Which jobs, and what the functions said about them.
        let unsettled: Vec<&str> = answer["wait"]["unsettled"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let ids: Vec<String> = unsettled.iter().map(|id| (*id).to_owned()).collect();
        let records = pipeline(&sdk, FAULTS).await.store.get_many(&ids).await;
        eprintln!("the unsettled jobs' idempotency records: {records:?}");
        for id in unsettled.iter().take(5) {
            eprintln!("unsettled {id}:");
            for line in log_lines_with(cloud, log_from, id) {
                eprintln!("  {line}");
            }
        }
        let run = cloud.fanout_json(&["--stack", FAULTS, "runs", "show", &run_id]);
        panic!(
            "under AWS faults, {} of {FAULT_JOBS} jobs neither succeeded nor reached the DLQ \
             within 120 s: {answer}\nrun: {run}\nfaults: {:?}",
            unsettled.len(),
            chain.faults()
        );
    }

    // The run finished, by its consumer (the settling batch), with its event marked sent.
    let run = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let run = cloud.fanout_json(&["--stack", FAULTS, "runs", "show", &run_id]);
            if run["status"] != "RUNNING" && run["event_sent"] == true {
                break run;
            }
            if Instant::now() >= deadline {
                for line in log_lines_with(cloud, log_from, "run") {
                    if line.contains("finish") || line.contains("watchdog") {
                        eprintln!("  {line}");
                    }
                }
                let sweep = cloud.fanout_json(&["--stack", FAULTS, "trigger", "--watchdog"]);
                panic!(
                    "under AWS faults, the run was not finished with its event 60 s after its \
                     jobs settled: {run}\nthe watchdog then: {sweep}"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let finished_after = started.elapsed();
    chain.clear_plans();
    let counts = chain.counts();
    let faults = chain.faults();

    let n_over_r = FAULT_JOBS as f64 / FAULT_RATE;
    let calls: Vec<CallRecord> = server.records().split_off(calls_from);
    let first_call = calls.iter().map(|c| c.at).min();
    let last_call = calls.iter().map(|c| c.at).max();
    let offset = |t: Option<Instant>| t.map_or(f64::NAN, |t| (t - started).as_secs_f64());
    println!(
        "AWS faults ({FAULT_JOBS} jobs at {FAULT_RATE}/s, N/R {n_over_r:.1} s, seed {FAULT_SEED}): \
         trigger → settled {:.1} s ({:.2} × N/R; the CLI's makespan {:.1} s), → run finished \
         {:.1} s; first call {:.1} s, last call {:.1} s after the trigger",
        settled_after.as_secs_f64(),
        settled_after.as_secs_f64() / n_over_r,
        answer["wait"]["makespan_s"].as_f64().unwrap_or(f64::NAN),
        finished_after.as_secs_f64(),
        offset(first_call),
        offset(last_call)
    );
    let mut total = 0;
    for ((service, operation), tally) in &counts {
        total += tally.requests;
        println!(
            "  {service} {operation}: {} requests, {:.3} per job",
            tally.requests,
            tally.requests as f64 / FAULT_JOBS as f64
        );
    }
    println!(
        "  all AWS requests of the functions: {total}, {:.2} per job",
        total as f64 / FAULT_JOBS as f64
    );
    for ((service, operation, kind), n) in &faults {
        println!("  fault injected: {service} {operation} {kind:?} × {n}");
    }
    // What the consumers counted (their EMF lines), and who finished the run.
    let lines = function_lines(&cloud.log(), log_from);
    let mut consumer: BTreeMap<String, f64> = BTreeMap::new();
    for line in &lines {
        let ours = line["Function"]
            .as_str()
            .is_some_and(|f| f.starts_with(FAULTS));
        if !ours || line.get("_aws").is_none() {
            continue;
        }
        let operation = line["Operation"].as_str();
        for metric in [
            "Succeeded",
            "DeadLettered",
            "DuplicatesSkipped",
            "Retried",
            "Deferred",
            "LockedElsewhere",
            "Requeued",
            "BackendRescheduled",
            "BackendThrottled",
            "BackendFailed",
        ] {
            if let Some(n) = line[metric].as_f64().filter(|n| *n > 0.0) {
                let name = operation.map_or(metric.to_owned(), |op| format!("{metric} {op}"));
                *consumer.entry(name).or_default() += n;
            }
        }
    }
    println!("  the consumers' metrics: {consumer:?}");
    let mut retried: BTreeMap<String, usize> = BTreeMap::new();
    for line in &lines {
        let fields = &line["fields"];
        if fields["message"] == "backend fault; retrying" {
            *retried
                .entry(fields["step"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
    }
    println!("  the consumers' own backend retries, by step: {retried:?}");
    // A copy that met a lock held by no live attempt waits for the lock to lapse (the holder
    // invocation's deadline): the record's story, one line per job.
    let story = |id: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l["span"]["message_id"] == id)
            .map(|l| {
                let f = &l["fields"];
                let error = f["error"].as_str().unwrap_or_default();
                let code = error.split(": ").nth(1).unwrap_or_default();
                format!(
                    "{} {} {code}",
                    f["message"].as_str().unwrap_or_default(),
                    f["step"].as_str().unwrap_or_default()
                )
            })
            .collect()
    };
    for line in &lines {
        if line["fields"]["message"] == "locked by another consumer" {
            let id = line["span"]["message_id"].as_str().unwrap_or_default();
            println!("  job {id} met a held lock: {:?}", story(id));
        }
    }
    let ledger_lines = |pipeline_metric: &str, watchdog: bool| {
        lines
            .iter()
            .filter(|l| l["Pipeline"] == FAULTS && l.get(pipeline_metric).is_some())
            .filter(|l| l.get("RunsOverdue").is_some() == watchdog)
            .count()
    };
    let (by_consumer, watchdog_runs) = (
        ledger_lines("RunsFailed", false),
        ledger_lines("RunsOverdue", true),
    );
    let finished_lines = log_lines_with(cloud, log_from, "run finished, completion event put")
        .into_iter()
        .filter(|l| l.contains(&run_id))
        .count();
    println!(
        "  run finished by a consumer: {by_consumer} (\"run finished, completion event put\": \
         {finished_lines}), watchdog invocations: {watchdog_runs}"
    );

    // Every rule fired, on the requests of its own service.
    let injected = |service: Service, kind: FaultKind| -> u64 {
        faults
            .iter()
            .filter(|((s, _, k), _)| s == service.label() && *k == kind)
            .map(|(_, n)| n)
            .sum()
    };
    for (service, kind) in [
        (Service::DynamoDb, FaultKind::ThroughputExceeded),
        (Service::DynamoDb, FaultKind::Throttle),
        (Service::DynamoDb, FaultKind::Lost),
        (Service::Sqs, FaultKind::ServerError),
        (Service::Sns, FaultKind::Throttle),
        (Service::Sns, FaultKind::Lost),
        (Service::EventBridge, FaultKind::ServerError),
    ] {
        assert!(
            injected(service, kind) > 0,
            "no {service} {kind:?} was injected: the section tested nothing of it ({faults:?})"
        );
    }

    // Nothing lost: every job succeeded or is in the DLQ, as the CLI's wait found.
    let bad = FAULT_JOBS / FAULT_BAD_EVERY;
    let good = FAULT_JOBS - bad;
    let wait = &answer["wait"];
    let dead: u64 = wait["dead_lettered"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    assert_eq!(
        (wait["succeeded"].as_u64(), dead),
        (Some(good as u64), bad as u64),
        "{answer}"
    );
    // No double call: the target saw each job's Idempotency-Key once (the permanent 400s too).
    let mut by_path: BTreeMap<String, Vec<&CallRecord>> = BTreeMap::new();
    for call in &calls {
        by_path.entry(call.path.clone()).or_default().push(call);
    }
    let mut wrong = Vec::new();
    let mut bad_ids = BTreeSet::new();
    for path in &jobs {
        let target = path.replace('/', "-");
        let key = message_id(&run_id, &target);
        let expected = if path.starts_with("bad/") {
            bad_ids.insert(key.clone());
            400
        } else {
            200
        };
        let seen: Vec<(u16, Option<&str>)> = by_path
            .get(&format!("/{path}"))
            .map(|c| {
                c.iter()
                    .map(|c| (c.status, c.idempotency_key.as_deref()))
                    .collect()
            })
            .unwrap_or_default();
        if seen != [(expected, Some(key.as_str()))] {
            wrong.push(format!("{path}: {seen:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "each job called exactly once with its own key, {} not:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(calls.len(), FAULT_JOBS, "no other calls");
    // The ledger counts the truth; no tolerance configured: a dead-lettered job fails the run.
    assert_eq!(
        (
            run["status"].as_str(),
            run["expected"].as_u64(),
            run["succeeded"].as_u64(),
            run["dead_lettered"].as_u64(),
            run["failures_by_reason"]["HTTP 400"].as_u64()
        ),
        (
            Some("FAILED"),
            Some(FAULT_JOBS as u64),
            Some(good as u64),
            Some(bad as u64),
            Some(bad as u64)
        ),
        "{run}"
    );
    // The DLQ holds exactly the permanent failures, once each.
    let dlq = cloud.fanout_json(&["--stack", FAULTS, "dlq", "list"]);
    let dlq = dlq.as_array().cloned().unwrap_or_default();
    let dlq_ids: Vec<&str> = dlq
        .iter()
        .filter_map(|e| e["message_id"].as_str())
        .collect();
    assert_eq!(dlq_ids.len(), bad, "{dlq:?}");
    assert_eq!(
        dlq_ids
            .iter()
            .map(|id| (*id).to_owned())
            .collect::<BTreeSet<_>>(),
        bad_ids,
        "the DLQ holds the permanent failures: {dlq:?}"
    );
    for entry in &dlq {
        assert!(
            entry["run_id"] == run_id.as_str()
                && entry["reason"].as_str().unwrap_or_default().contains("400"),
            "{entry}"
        );
    }
    // One completion event, with the ledger's counts.
    let event = inbox.next(Duration::from_secs(30)).await;
    assert_eq!(
        (
            event["detail-type"].as_str(),
            event["detail"]["run_id"].as_str(),
            event["detail"]["pipeline"].as_str(),
            event["detail"]["succeeded"].as_u64(),
            event["detail"]["dead_lettered"].as_u64()
        ),
        (
            Some("Run Failed"),
            Some(run_id.as_str()),
            Some(FAULTS),
            Some(good as u64),
            Some(bad as u64)
        ),
        "{event}"
    );
    assert!(
        inbox.next_within(Duration::from_secs(2)).await.is_none(),
        "one event per run"
    );
    // Finished by its own consumer: a consumer wrote the run's metrics and logged the finish
    // (the producer, whose watchdog finishes runs too, logs nothing here), and no watchdog ran
    // (its every invocation writes `RunsOverdue`).
    assert_eq!(
        (by_consumer, finished_lines, watchdog_runs),
        (1, 1, 0),
        "the run's last consumer finished it and put its event, the watchdog did not run"
    );
}
