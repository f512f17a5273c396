//! Figure 13, AWS-side faults (issue #26): the real stack on the local cloud (as in figure 8)
//! with a chain of fault proxies between the deployed functions and the emulator
//! ([`fanout_tests::local_cloud::ProxyChain`], one [`fanout_testkit::aws_proxy::AwsProxy`] per
//! service, so each service's seeded rules draw over that service's own requests). Ticks of
//! 200 jobs at 50/s, every tenth a permanent 400, run clean, under the issue's plan and under
//! the harsher plan, interleaved; each is timed from the trigger to the run's finish in the
//! ledger, its AWS requests counted (retries included) and its faults tallied per rule.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use fanout::{aws_with, Pipeline, StackOutputs};
use fanout_shared::runs::RunStatus;
use fanout_shared::{PipelineConfig, RateLimit};
use fanout_testkit::aws_proxy::{Counts, FaultCounts, FaultKind, FaultPlan, FaultRule, Service};
use fanout_testkit::target_server::TargetServer;
use fanout_tests::local_cloud::{emulator_endpoint, function_lines, LocalCloud, ProxyChain};

use crate::report::{list, median, Figure, Section};
use crate::workload::Scratch;

/// Jobs per tick; every [`BAD_EVERY`]-th answers a permanent 400, the rest 200.
pub(crate) const JOBS: usize = 200;
const BAD_EVERY: usize = 10;
/// The config's budget, requests/s: N/R = 4 s.
pub(crate) const RATE: f64 = 50.0;
/// The issue's goal under its plan: the tick settles within N/R plus this.
const SLACK_S: f64 = 10.0;
/// Runs of each plan in `fanout-bench all` (a run is three ticks, about two minutes).
pub(crate) const RUNS_IN_ALL: usize = 3;
const STACK: &str = "BenchFaults";
/// The services of the proxy chain, in chain order (the functions' endpoint is the first).
const CHAIN: [Service; 4] = [
    Service::DynamoDb,
    Service::Sqs,
    Service::Sns,
    Service::EventBridge,
];
/// The seeds of the issue's plan (the local cloud suite's: each of its rules fires within the
/// requests a tick cannot do without) and of the harsher plan (the moto test's).
const ISSUE_SEED: u64 = 20;
const HARSH_SEED: u64 = 26;
/// How long a tick may take to finish before it is recorded as not finished by its consumer.
const FINISH_LIMIT: Duration = Duration::from_secs(120);
/// After a tick: the functions are idle once the proxies saw no request for this long.
const QUIET: Duration = Duration::from_secs(2);
const QUIET_LIMIT: Duration = Duration::from_secs(60);

/// One rule of a plan as the report names it: the service and kind identify its faults in
/// [`FaultCounts`] (no plan here has two rules of one service and kind).
#[derive(Debug, Clone)]
struct Rule {
    label: &'static str,
    service: Service,
    kind: FaultKind,
    rule: FaultRule,
}

/// A tick's fault plan: its rules, seeded per service.
#[derive(Debug, Clone)]
struct Plan {
    name: &'static str,
    seed: u64,
    rules: Vec<Rule>,
}

impl Plan {
    /// One [`FaultPlan`] per service of the chain that has rules, in rule order.
    fn per_service(&self) -> Vec<(Service, FaultPlan)> {
        CHAIN
            .iter()
            .filter_map(|service| {
                let rules: Vec<&Rule> = self
                    .rules
                    .iter()
                    .filter(|r| r.service == *service)
                    .collect();
                (!rules.is_empty()).then(|| {
                    let plan = rules.iter().fold(FaultPlan::new(self.seed), |plan, r| {
                        plan.rule(r.rule.clone())
                    });
                    (*service, plan)
                })
            })
            .collect()
    }
}

fn rule(
    label: &'static str,
    service: Service,
    kind: FaultKind,
    f: fn(FaultRule) -> FaultRule,
) -> Rule {
    Rule {
        label,
        service,
        kind,
        rule: f(FaultRule::new(service, kind)),
    }
}

/// The three plans: none, the issue's (as `tests/tests/local_cloud.rs` arms it: the window
/// throttles as `ProvisionedThroughputExceededException`, which tells its faults from the 10%;
/// a service's rules are tried in order, the first that fires wins), the harsher one (DynamoDB
/// only, as `tests/tests/backend_faults_moto.rs`, its storm told apart the same way).
fn plans() -> Vec<Plan> {
    vec![
        Plan {
            name: "clean",
            seed: 0,
            rules: Vec::new(),
        },
        Plan {
            name: "the issue's plan",
            seed: ISSUE_SEED,
            rules: vec![
                rule(
                    "DynamoDB all throttled from 2 s for 3 s",
                    Service::DynamoDb,
                    FaultKind::ThroughputExceeded,
                    |r| r.window(Duration::from_secs(2), Duration::from_secs(3)),
                ),
                rule(
                    "DynamoDB throttled 10%",
                    Service::DynamoDb,
                    FaultKind::Throttle,
                    |r| r.probability(0.10),
                ),
                rule(
                    "DynamoDB writes lost 3%",
                    Service::DynamoDb,
                    FaultKind::Lost,
                    |r| r.writes_only().probability(0.03),
                ),
                rule(
                    "SQS server error 10%",
                    Service::Sqs,
                    FaultKind::ServerError,
                    |r| r.probability(0.10),
                ),
                rule(
                    "SNS PublishBatch throttled 10%",
                    Service::Sns,
                    FaultKind::Throttle,
                    |r| r.operations(["PublishBatch"]).probability(0.10),
                ),
                rule(
                    "SNS PublishBatch lost 3%",
                    Service::Sns,
                    FaultKind::Lost,
                    |r| r.operations(["PublishBatch"]).probability(0.03),
                ),
                rule(
                    "EventBridge server error 20%",
                    Service::EventBridge,
                    FaultKind::ServerError,
                    |r| r.probability(0.20),
                ),
            ],
        },
        Plan {
            name: "the harsher plan",
            seed: HARSH_SEED,
            rules: vec![
                rule(
                    "DynamoDB all throttled from 2 s for 20 s",
                    Service::DynamoDb,
                    FaultKind::ThroughputExceeded,
                    |r| r.window(Duration::from_secs(2), Duration::from_secs(20)),
                ),
                rule(
                    "DynamoDB throttled 30%",
                    Service::DynamoDb,
                    FaultKind::Throttle,
                    |r| r.probability(0.30),
                ),
                rule(
                    "DynamoDB writes lost 10%",
                    Service::DynamoDb,
                    FaultKind::Lost,
                    |r| r.writes_only().probability(0.10),
                ),
            ],
        },
    ]
}

/// One tick as measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tick {
    /// Index into [`plans`].
    plan: usize,
    /// Trigger → the run's finish in the ledger, s; `None` when it did not finish within
    /// [`FINISH_LIMIT`].
    makespan_s: Option<f64>,
    /// Trigger → the ledger first counting every job settled, s (polled every 100 ms).
    settled_s: Option<f64>,
    /// The producer's invocation as `fanout trigger` reports it, ms.
    producer_ms: f64,
    /// Trigger → the target server's first and last call, s.
    calls_s: (f64, f64),
    /// Calls the target server saw during the tick, and jobs called more than once.
    calls: usize,
    called_twice: usize,
    /// The ledger at the end: status, succeeded, dead-lettered, expected.
    status: String,
    settled: (u64, u64, u64),
    /// The run's completion event marked sent.
    event_sent: bool,
    /// How `fanout trigger` failed, if it did (its last line).
    trigger_error: Option<String>,
    /// The run's finish was written by one of its consumers (its run metrics, no watchdog
    /// line) and logged with its event put.
    by_consumer: bool,
    /// For a run not finished within [`FINISH_LIMIT`]: whether one `fanout trigger --watchdog`
    /// then finished it with its event.
    watchdog: Option<bool>,
    /// The consumers' retries of their "finish run" step (their log lines).
    finish_retries: usize,
    /// Trigger → the finish in the ledger (`finished_at_ms`), event sent or not, s.
    ledger_finished_s: Option<f64>,
    /// The consumers' and the producer's log lines about a completion event not put or not
    /// marked sent, by message.
    event_lines: BTreeMap<String, usize>,
    /// Requests the functions made after the finish (or the limit) until they were idle, and
    /// how long that took, s.
    after_finish: (u64, f64),
    /// Every AWS request the functions made during the tick, retries and faulted ones
    /// included.
    counts: Counts,
    /// Every fault injected.
    faults: FaultCounts,
    /// The consumers' own counts (EMF) of the backend's faults and what they did about them.
    metrics: BTreeMap<String, f64>,
}

impl Tick {
    fn ratio(&self) -> Option<f64> {
        self.makespan_s.map(|s| s / n_over_r())
    }

    /// Requests per job of `service` (all services: `None`).
    fn per_job(&self, service: Option<Service>) -> f64 {
        let requests: u64 = self
            .counts
            .iter()
            .filter(|((s, _), _)| service.is_none_or(|x| x.label() == s))
            .map(|(_, t)| t.requests)
            .sum();
        requests as f64 / JOBS as f64
    }

    /// Faults injected by `rule`.
    fn injected(&self, rule: &Rule) -> u64 {
        self.faults
            .iter()
            .filter(|((s, _, k), _)| s == rule.service.label() && *k == rule.kind)
            .map(|(_, n)| n)
            .sum()
    }
}

/// N/R, s.
fn n_over_r() -> f64 {
    JOBS as f64 / RATE
}

/// The tick's config: `JOBS` targets on the target server, every `BAD_EVERY`-th `bad/` (a
/// permanent 400), the budget `RATE` (burst 1), calls allowed 10 s (the suite's config).
fn config(base_url: &str) -> PipelineConfig {
    let paths: Vec<(String, String)> = (0..JOBS)
        .map(|i| {
            let path = if i % BAD_EVERY == BAD_EVERY - 1 {
                format!("bad/f-{i}")
            } else {
                format!("ok/f-{i}")
            };
            (path.replace('/', "-"), path)
        })
        .collect();
    PipelineConfig {
        rate_limit: Some(RateLimit {
            per_second: RATE,
            burst: 1,
        }),
        allow_private_networks: true,
        targets: fanout_testkit::targets(
            base_url,
            paths.iter().map(|(id, path)| (id.clone(), path.as_str())),
            Some(10_000),
        ),
        ..PipelineConfig::default()
    }
}

/// `scripts/local-cloud up` off the async runtime, the chain's last link following the
/// emulator's port as soon as it listens.
async fn up(
    cloud: LocalCloud,
    chain: &Arc<ProxyChain>,
    config: &Path,
    context: Vec<String>,
) -> Result<(LocalCloud, f64, String), String> {
    let follower = chain.follow_emulator(cloud.state_dir(), Duration::from_secs(600));
    let config = config.to_path_buf();
    let deployed = tokio::task::spawn_blocking(move || {
        let mut cloud = cloud;
        let context: Vec<&str> = context.iter().map(String::as_str).collect();
        let deployed = cloud.try_up(&config, STACK, &context);
        (cloud, deployed)
    })
    .await
    .map_err(|e| format!("scripts/local-cloud up failed: {e}"))?;
    follower.abort();
    let (cloud, deployed) = deployed;
    let deployed =
        deployed.map_err(|stderr| format!("scripts/local-cloud up failed:\n{stderr}"))?;
    let endpoint = emulator_endpoint(&cloud.state_dir()).ok_or("the emulator wrote no port")?;
    chain.set_emulator(&endpoint);
    Ok((cloud, deployed.seconds, deployed.summary))
}

/// The stack's EventBridge Scheduler schedules (Scheduler's REST `ListSchedules`; the emulator
/// reads no signature), as (name, state).
async fn stack_schedules(endpoint: &str) -> Result<Vec<(String, String)>, String> {
    let answer = reqwest::Client::new()
        .get(format!("{endpoint}/schedules?NamePrefix={STACK}"))
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/scheduler/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .send()
        .await
        .map_err(|e| format!("Scheduler ListSchedules: {e}"))?;
    let status = answer.status();
    let text = answer.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("Scheduler ListSchedules: {status} {text}"));
    }
    let listed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(listed["Schedules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let field = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
            (field("Name"), field("State"))
        })
        .collect())
}

/// Checks that the stack's schedules, the tick's and the watchdog's (every 5 minutes), were
/// deployed disabled (`schedulesEnabled=false`), so that no scheduled tick runs into a measured
/// one and no sweep finishes a run its consumers left: the figure says what the consumers do
/// alone (the watchdog is invoked by hand after [`FINISH_LIMIT`]). Answers the schedules.
async fn schedules_disabled(endpoint: &str) -> Result<Vec<String>, String> {
    let schedules = stack_schedules(endpoint).await?;
    let enabled: Vec<&String> = schedules
        .iter()
        .filter(|(_, state)| state != "DISABLED")
        .map(|(name, _)| name)
        .collect();
    if schedules.len() < 2 || !enabled.is_empty() {
        return Err(format!(
            "the stack's schedules are not all disabled: {schedules:?} (still enabled: {enabled:?})"
        ));
    }
    Ok(schedules.into_iter().map(|(name, _)| name).collect())
}

/// Every request the chain has seen so far.
fn total(chain: &ProxyChain) -> u64 {
    chain.counts().values().map(|t| t.requests).sum()
}

/// Waits until the functions made no AWS request for [`QUIET`] (at most [`QUIET_LIMIT`]).
async fn quiet(chain: &ProxyChain) {
    let give_up = Instant::now() + QUIET_LIMIT;
    let mut seen = total(chain);
    let mut since = Instant::now();
    while Instant::now() < give_up && since.elapsed() < QUIET {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = total(chain);
        if now != seen {
            (seen, since) = (now, Instant::now());
        }
    }
}

/// The consumers' metrics of backend faults and of what they did about them.
const METRICS: [&str; 8] = [
    "BackendThrottled",
    "BackendFailed",
    "BackendRescheduled",
    "Retried",
    "Deferred",
    "Requeued",
    "LockedElsewhere",
    "DuplicatesSkipped",
];

/// Whether `run_id`'s finish came from its consumer, and the consumers' metrics, from the
/// functions' lines: a finisher writes the run's metrics (`RunsFailed` or `RunsSucceeded`
/// with the `Pipeline` dimension), the watchdog with `RunsOverdue` beside them, and the finish
/// is logged with its event put.
fn from_logs(lines: &[Value], run_id: &str) -> (bool, BTreeMap<String, f64>) {
    let ledger = |watchdog: bool| {
        lines
            .iter()
            .filter(|l| l["Pipeline"] == STACK)
            .filter(|l| l.get("RunsFailed").is_some() || l.get("RunsSucceeded").is_some())
            .filter(|l| l.get("RunsOverdue").is_some() == watchdog)
            .count()
    };
    let watchdog = lines
        .iter()
        .any(|l| l["Pipeline"] == STACK && l.get("RunsOverdue").is_some());
    let put = lines
        .iter()
        .filter(|l| {
            l["fields"]["message"] == "run finished, completion event put"
                && l.to_string().contains(run_id)
        })
        .count();
    let mut metrics = BTreeMap::new();
    for line in lines {
        let ours = line["Function"]
            .as_str()
            .is_some_and(|f| f.starts_with(STACK));
        if !ours || line.get("_aws").is_none() {
            continue;
        }
        for metric in METRICS {
            if let Some(n) = line[metric].as_f64().filter(|n| *n > 0.0) {
                *metrics.entry(metric.to_owned()).or_default() += n;
            }
        }
    }
    (ledger(false) == 1 && !watchdog && put == 1, metrics)
}

/// What a tick runs against.
struct Stage<'a> {
    cloud: &'a LocalCloud,
    chain: &'a ProxyChain,
    server: &'a TargetServer,
    pipeline: &'a Pipeline,
    config_path: &'a str,
}

/// One tick under `plans()[plan]` as `run_id`.
async fn tick(stage: &Stage<'_>, plan: usize, run_id: &str) -> Result<Tick, String> {
    let plans = plans();
    quiet(stage.chain).await;
    let log_from = stage.cloud.log().len();
    stage.chain.reset_counts();
    for (service, faults) in plans[plan].per_service() {
        stage.chain.set_plan(service, faults);
    }
    let started_ms = fanout_shared::now_ms();
    let started = Instant::now();
    let out = tokio::task::block_in_place(|| {
        stage.cloud.fanout(&[
            "--stack",
            STACK,
            "trigger",
            "--config",
            stage.config_path,
            "--run-id",
            run_id,
            "--json",
        ])
    });
    // A producer that fails under the plan is a result, not the benchmark's failure: what it
    // published may still run and finish.
    let trigger_error = (!out.status.success()).then(|| {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "fanout-bench faults: fanout trigger {run_id} failed ({}): {text}",
            out.status
        );
        text.lines().last().unwrap_or_default().to_owned()
    });
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut settled_s = None;
    let run = loop {
        let run = stage
            .pipeline
            .runs
            .get(run_id)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(run) = &run {
            if settled_s.is_none() && run.counts.expected > 0 && run.counts.in_flight() == 0 {
                settled_s = Some(started.elapsed().as_secs_f64());
            }
            if run.status != RunStatus::Running && run.event_sent {
                break Some(run.clone());
            }
        }
        if started.elapsed() >= FINISH_LIMIT || (run.is_none() && trigger_error.is_some()) {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stage.chain.clear_plans();
    let finished = run
        .as_ref()
        .is_some_and(|run| run.status != RunStatus::Running && run.event_sent);
    // The last batches' lease releases and any delayed copies land after the finish.
    let at_finish = (total(stage.chain), Instant::now());
    quiet(stage.chain).await;
    let counts = stage.chain.counts();
    let after_finish = (
        total(stage.chain) - at_finish.0,
        at_finish.1.elapsed().as_secs_f64(),
    );
    let faults = stage.chain.faults();
    let ended = Instant::now();
    let lines = function_lines(&stage.cloud.log(), log_from);
    let (by_consumer, metrics) = from_logs(&lines, run_id);
    let mut event_lines: BTreeMap<String, usize> = BTreeMap::new();
    for line in &lines {
        let message = line["fields"]["message"].as_str().unwrap_or_default();
        if message.contains("completion event")
            && message != "run finished, completion event put"
            && line.to_string().contains(run_id)
        {
            *event_lines.entry(message.to_owned()).or_default() += 1;
        }
    }
    let finish_retries = lines
        .iter()
        .filter(|l| {
            l["fields"]["message"] == "backend fault; retrying"
                && l["fields"]["step"] == "finish run"
        })
        .count();
    // A run its consumers left unfinished: what the watchdog (the schedule's, off here) does
    // with it, after the tick's requests were counted.
    let watchdog = match &run {
        Some(_) if !finished => {
            tokio::task::block_in_place(|| {
                stage
                    .cloud
                    .fanout(&["--stack", STACK, "trigger", "--watchdog", "--json"])
            });
            let after = stage
                .pipeline
                .runs
                .get(run_id)
                .await
                .map_err(|e| e.to_string())?;
            Some(after.is_some_and(|run| run.status != RunStatus::Running && run.event_sent))
        }
        _ => None,
    };
    let records: Vec<_> = stage
        .server
        .records()
        .into_iter()
        .filter(|r| r.at >= started && r.at <= ended)
        .collect();
    let mut per_path: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &records {
        *per_path.entry(r.path.as_str()).or_default() += 1;
    }
    let offsets: Vec<f64> = records
        .iter()
        .map(|r| (r.at - started).as_secs_f64())
        .collect();
    Ok(Tick {
        plan,
        makespan_s: run
            .as_ref()
            .filter(|_| finished)
            .and_then(|run| run.finished_at_ms)
            .map(|ms| (ms - started_ms) as f64 / 1000.0),
        settled_s,
        producer_ms: answer["elapsed_ms"].as_f64().unwrap_or(f64::NAN),
        calls_s: (
            offsets.iter().copied().fold(f64::INFINITY, f64::min),
            offsets.iter().copied().fold(0.0, f64::max),
        ),
        calls: records.len(),
        called_twice: per_path.values().filter(|n| **n > 1).count(),
        status: run
            .as_ref()
            .map_or("not in the ledger", |run| run.status.as_str())
            .to_owned(),
        settled: run.as_ref().map_or((0, 0, 0), |run| {
            (
                run.counts.succeeded,
                run.counts.dead_lettered,
                run.counts.expected,
            )
        }),
        event_sent: run.as_ref().is_some_and(|run| run.event_sent),
        trigger_error,
        by_consumer: finished && by_consumer,
        watchdog,
        finish_retries,
        ledger_finished_s: run
            .as_ref()
            .and_then(|run| run.finished_at_ms)
            .map(|ms| (ms - started_ms) as f64 / 1000.0),
        event_lines,
        after_finish,
        counts,
        faults,
        metrics,
    })
}

/// Deploys the stack and runs `runs` rounds of the three plans, interleaved.
pub(crate) async fn measure(runs: usize) -> Result<Vec<Tick>, String> {
    let server = TargetServer::start().await.map_err(|e| e.to_string())?;
    let chain = Arc::new(
        ProxyChain::start(&CHAIN)
            .await
            .map_err(|e| format!("proxies: {e}"))?,
    );
    let scratch = Scratch::new("faults")?;
    let mut cloud = LocalCloud::new("bench-faults");
    cloud.script_env("FANOUT_LOCAL_CLOUD_FUNCTION_ENDPOINT", &chain.url());
    let config = config(&server.base_url());
    let config_path = scratch.join("faults.json");
    std::fs::write(
        &config_path,
        serde_json::to_string(&config).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", config_path.display()))?;
    // No scheduled tick runs into the measured ones: the schedules are deployed disabled.
    let context = vec!["schedulesEnabled=false".to_owned()];
    let (cloud, deploy_s, summary) = up(cloud, &chain, &config_path, context).await?;
    eprintln!("fanout-bench faults: deployed in {deploy_s:.1} s [{summary}]");
    let endpoint = emulator_endpoint(&cloud.state_dir()).ok_or("the emulator wrote no port")?;
    let disabled = schedules_disabled(&endpoint).await?;
    eprintln!("fanout-bench faults: disabled {}", disabled.join(", "));
    let sdk = cloud.sdk().await;
    let outputs = StackOutputs::describe(&sdk, STACK)
        .await
        .map_err(|e| e.to_string())?;
    let pipeline = aws_with(&sdk, &outputs.names().map_err(|e| e.to_string())?);
    let config_path = config_path.display().to_string();
    let stage = Stage {
        cloud: &cloud,
        chain: &chain,
        server: &server,
        pipeline: &pipeline,
        config_path: &config_path,
    };
    let mut ticks = Vec::new();
    for run in 0..runs.max(1) {
        for (plan, p) in plans().iter().enumerate() {
            let t = tick(&stage, plan, &format!("bench/faults-{plan}-{run}")).await?;
            eprintln!(
                "fanout-bench faults: run {run}, {}: finished {:?} s, settled {:?} s, calls {:.1}–{:.1} s, by consumer {}, {:.2} AWS requests per job, {}/{}/{} {}",
                p.name,
                t.makespan_s,
                t.settled_s,
                t.calls_s.0,
                t.calls_s.1,
                t.by_consumer,
                t.per_job(None),
                t.settled.0,
                t.settled.1,
                t.settled.2,
                t.status
            );
            ticks.push(t);
        }
    }
    Ok(ticks)
}

/// `values`' median, `None` (not finished) counting as longer than any.
fn median_of(values: &[Option<f64>]) -> f64 {
    median(
        &values
            .iter()
            .map(|v| v.unwrap_or(f64::INFINITY))
            .collect::<Vec<_>>(),
    )
}

/// Seconds, or "> limit" for a tick not finished within [`FINISH_LIMIT`].
fn seconds(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        format!("> {}", FINISH_LIMIT.as_secs())
    }
}

fn list_of(values: &[Option<f64>], decimals: usize) -> String {
    values
        .iter()
        .map(|v| v.map_or_else(|| "not finished".to_owned(), |v| format!("{v:.decimals$}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Requests per job by service and in all, medians over `ticks`.
fn per_job(ticks: &[&Tick]) -> (Vec<f64>, f64) {
    let by_service = CHAIN
        .iter()
        .map(|s| {
            median(
                &ticks
                    .iter()
                    .map(|t| t.per_job(Some(*s)))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let all = median(&ticks.iter().map(|t| t.per_job(None)).collect::<Vec<_>>());
    (by_service, all)
}

fn per_job_text((by_service, all): &(Vec<f64>, f64)) -> String {
    let services: Vec<String> = CHAIN
        .iter()
        .zip(by_service)
        .map(|(s, n)| format!("{s} {n:.2}"))
        .collect();
    format!("{}; all {all:.2}", services.join(", "))
}

/// Medians of the consumers' metrics over `ticks`.
fn metrics_of(ticks: &[&Tick]) -> Vec<(&'static str, f64)> {
    METRICS
        .iter()
        .map(|m| {
            let values: Vec<f64> = ticks
                .iter()
                .map(|t| t.metrics.get(*m).copied().unwrap_or(0.0))
                .collect();
            (*m, median(&values))
        })
        .filter(|(_, n)| *n > 0.0)
        .collect()
}

fn metrics_text(metrics: &[(&str, f64)]) -> String {
    if metrics.is_empty() {
        return "none".into();
    }
    metrics
        .iter()
        .map(|(m, n)| format!("{m} {n:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What happened to runs their consumers did not finish within [`FINISH_LIMIT`], tick by
/// tick; empty when every run was finished.
fn unfinished_note(ticks: &[&Tick]) -> String {
    let left: Vec<&&Tick> = ticks.iter().filter(|t| t.watchdog.is_some()).collect();
    if left.is_empty() {
        return String::new();
    }
    let each: Vec<String> = left
        .iter()
        .map(|t| {
            let jobs = if t.settled.0 + t.settled.1 == t.settled.2 {
                format!(
                    "every job settled in the ledger {} s after the trigger",
                    t.settled_s.map_or_else(|| "?".to_owned(), |s| format!("{s:.1}"))
                )
            } else {
                format!(
                    "{} of {} jobs settled",
                    t.settled.0 + t.settled.1,
                    t.settled.2
                )
            };
            let ledger = match (t.status.as_str(), t.ledger_finished_s) {
                ("RUNNING", _) => "the run still RUNNING".to_owned(),
                (status, Some(s)) => format!(
                    "the ledger's finish ({status}) written {s:.1} s after the trigger but its completion event not marked sent"
                ),
                (status, None) => format!("the run {status} with its event not marked sent"),
            };
            let logged = if t.event_lines.is_empty() {
                "no line about its completion event".to_owned()
            } else {
                t.event_lines
                    .iter()
                    .map(|(m, n)| format!("\"{m}\" × {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "{jobs}; at the limit {ledger}; the functions logged {} retries of the consumers' \"finish run\" \
                 step and {logged}; the one `fanout trigger --watchdog` after the limit, with the plan cleared, {}",
                t.finish_retries,
                if t.watchdog == Some(true) {
                    "finished it with its event"
                } else {
                    "did not finish it"
                }
            )
        })
        .collect();
    format!(
        " In {} of {} ticks the run was not finished with its event within {} s, so in a deployed stack the \
         watchdog's sweep (every 5 minutes; off here) would have been left to finish it: {}.",
        left.len(),
        ticks.len(),
        FINISH_LIMIT.as_secs(),
        each.join("; in another, ")
    )
}

/// Figure 13 from the measured ticks.
pub(crate) fn section(ticks: &[Tick]) -> Section {
    let plans = plans();
    let of = |plan: usize| -> Vec<&Tick> { ticks.iter().filter(|t| t.plan == plan).collect() };
    let runs_done = of(0).len();
    let clean_per_job = per_job(&of(0));
    let clean_makespan = median_of(&of(0).iter().map(|t| t.makespan_s).collect::<Vec<_>>());
    let clean_last_call = median(&of(0).iter().map(|t| t.calls_s.1).collect::<Vec<_>>());
    let mut figures = Vec::new();
    let mut runs = Vec::new();
    let mut notes = Vec::new();
    let budget = n_over_r() + SLACK_S;
    for (index, plan) in plans.iter().enumerate() {
        let these = of(index);
        if these.is_empty() {
            continue;
        }
        let makespans: Vec<Option<f64>> = these.iter().map(|t| t.makespan_s).collect();
        let makespan = median_of(&makespans);
        let settled = median_of(&these.iter().map(|t| t.settled_s).collect::<Vec<_>>());
        let at = format!("{JOBS}-job tick at {RATE}/s, {}", plan.name);
        if index == 1 {
            let ratio = makespan / budget;
            figures.push(Figure::goal(
                &format!("{at}: trigger → run finished ÷ (N/R + {SLACK_S} s)"),
                if ratio.is_finite() {
                    format!("{ratio:.2}")
                } else {
                    format!("> {:.1}", FINISH_LIMIT.as_secs_f64() / budget)
                },
                "≤ 1",
                ratio <= 1.0,
            ));
        }
        figures.push(Figure::info(
            &format!("{at}: trigger → run finished, s; ÷ (N/R)"),
            format!(
                "{}; {}",
                seconds(makespan, 1),
                seconds(makespan / n_over_r(), 2)
            ),
        ));
        let per = per_job(&these);
        let mut per_text = per_job_text(&per);
        if index > 0 && clean_per_job.1 > 0.0 {
            per_text.push_str(&format!(
                " ({:.2}× the clean tick's)",
                per.1 / clean_per_job.1
            ));
        }
        figures.push(Figure::info(
            &format!("{at}: AWS requests per job (retries included)"),
            per_text,
        ));
        if !plan.rules.is_empty() {
            let injected: Vec<String> = plan
                .rules
                .iter()
                .map(|r| {
                    let n = median(
                        &these
                            .iter()
                            .map(|t| t.injected(r) as f64)
                            .collect::<Vec<_>>(),
                    );
                    format!("{} {n:.0}", r.label)
                })
                .collect();
            figures.push(Figure::info(
                &format!("{at}: faults injected per tick, by rule"),
                injected.join("; "),
            ));
        }
        figures.push(Figure::info(
            &format!("{at}: trigger → every job settled in the ledger, s; ÷ (N/R)"),
            format!(
                "{}; {}",
                seconds(settled, 1),
                seconds(settled / n_over_r(), 2)
            ),
        ));
        let by_consumer = these.iter().filter(|t| t.by_consumer).count();
        let rescued = these.iter().filter(|t| t.watchdog == Some(true)).count();
        let left = these.iter().filter(|t| t.watchdog.is_some()).count();
        figures.push(Figure::info(
            &format!("{at}: runs finished by their own consumer (no watchdog), event put"),
            if left == 0 {
                format!("{by_consumer} of {}", these.len())
            } else {
                format!(
                    "{by_consumer} of {} ({left} not within {} s; one `fanout trigger --watchdog` then finished {rescued})",
                    these.len(),
                    FINISH_LIMIT.as_secs()
                )
            },
        ));
        let outcomes: std::collections::BTreeSet<String> = these
            .iter()
            .map(|t| {
                format!(
                    "{}{} {} / {} of {}, {} calls{}{}",
                    t.trigger_error
                        .as_ref()
                        .map_or_else(String::new, |e| format!("trigger failed ({e}); ")),
                    t.status,
                    t.settled.0,
                    t.settled.1,
                    t.settled.2,
                    t.calls,
                    if t.event_sent { "" } else { ", event not put" },
                    if t.called_twice > 0 {
                        format!(" ({} jobs called twice)", t.called_twice)
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        figures.push(Figure::info(
            &format!("{at}: ledger (succeeded / dead-lettered of expected), target calls"),
            outcomes.into_iter().collect::<Vec<_>>().join("; "),
        ));

        runs.push(format!(
            "{}: trigger → run finished s: {}; ÷ (N/R): {}",
            plan.name,
            list_of(&makespans, 1),
            list_of(&these.iter().map(|t| t.ratio()).collect::<Vec<_>>(), 2)
        ));
        runs.push(format!(
            "{}: trigger → ledger all settled s: {}; first call s: {}; last call s: {}; producer invocation ms: {}",
            plan.name,
            list_of(&these.iter().map(|t| t.settled_s).collect::<Vec<_>>(), 1),
            list(&these.iter().map(|t| t.calls_s.0).collect::<Vec<_>>(), 1),
            list(&these.iter().map(|t| t.calls_s.1).collect::<Vec<_>>(), 1),
            list(&these.iter().map(|t| t.producer_ms).collect::<Vec<_>>(), 0)
        ));
        runs.push(format!(
            "{}: AWS requests per job: {}",
            plan.name,
            these
                .iter()
                .map(|t| per_job_text(&per_job(&[t])))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
        if !plan.rules.is_empty() {
            runs.push(format!(
                "{}: faults injected: {}",
                plan.name,
                these
                    .iter()
                    .map(|t| {
                        plan.rules
                            .iter()
                            .map(|r| t.injected(r).to_string())
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        runs.push(format!(
            "{}: after the finish (or the limit) until idle: {}",
            plan.name,
            these
                .iter()
                .map(|t| format!("{} requests in {:.1} s", t.after_finish.0, t.after_finish.1))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        runs.push(format!(
            "{}: the consumers' retries of \"finish run\": {}",
            plan.name,
            these
                .iter()
                .map(|t| t.finish_retries.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        runs.push(format!(
            "{}: the consumers' metrics: {}",
            plan.name,
            these
                .iter()
                .map(|t| {
                    metrics_text(
                        &METRICS
                            .iter()
                            .filter_map(|m| t.metrics.get(*m).map(|n| (*m, *n)))
                            .collect::<Vec<_>>(),
                    )
                })
                .collect::<Vec<_>>()
                .join(" | ")
        ));

        if index > 0 {
            let last_call = median(&these.iter().map(|t| t.calls_s.1).collect::<Vec<_>>());
            let tail = median(
                &these
                    .iter()
                    .map(|t| t.makespan_s.map_or(f64::INFINITY, |m| m - t.calls_s.1))
                    .collect::<Vec<_>>(),
            );
            let clean_tail = clean_makespan - clean_last_call;
            let verdict = if index == 1 {
                if makespan <= budget {
                    format!(
                        "within the goal's {budget:.0} s by {} s",
                        seconds(budget - makespan, 1)
                    )
                } else if makespan.is_finite() {
                    format!(
                        "**short** of the goal's {budget:.0} s by {} s",
                        seconds(makespan - budget, 1)
                    )
                } else {
                    format!("**short** of the goal's {budget:.0} s")
                }
            } else {
                "no goal".to_owned()
            };
            let lead = if makespan.is_finite() {
                format!(
                    "Under {}, the run finished {} s after the trigger (median), {} s after the clean tick's {} s \
                     ({verdict}).",
                    plan.name,
                    seconds(makespan, 1),
                    seconds(makespan - clean_makespan, 1),
                    seconds(clean_makespan, 1)
                )
            } else {
                format!(
                    "Under {}, the median run was not finished by its consumers within {} s of the trigger \
                     (clean tick: {} s; {verdict}).",
                    plan.name,
                    FINISH_LIMIT.as_secs(),
                    seconds(clean_makespan, 1)
                )
            };
            let tail = if tail.is_finite() {
                format!(
                    ", and the run finished {} s after it (clean: {} s)",
                    seconds(tail, 1),
                    seconds(clean_tail, 1)
                )
            } else {
                String::new()
            };
            notes.push(format!(
                "{lead} The last target call came {} s after the trigger ({} s later than in the clean tick){tail}. \
                 The consumers counted, per tick (median): {}. Faults per rule and run are listed under Runs in the \
                 order of the plan's rules.{}",
                seconds(last_call, 1),
                seconds(last_call - clean_last_call, 1),
                metrics_text(&metrics_of(&these)),
                unfinished_note(&these)
            ));
        }
    }
    Section {
        title: "13. AWS-side faults".into(),
        command: "target/release/fanout-bench faults".into(),
        workload: format!(
            "The real stack on the local cloud as in figure 8 (stack `{STACK}`, the stack's defaults, consumer \
             `maxConcurrency` 5, batches of 10), one emulator for the figure. The stack's schedules are deployed disabled \
             (`schedulesEnabled=false`: the tick's and the watchdog's, every 5 minutes), so no scheduled tick runs into a measured one and no \
             sweep finishes a run the consumers left: the figure is what the consumers do alone. Every AWS request of the deployed functions passes a chain of fault proxies \
             (`fanout_testkit::aws_proxy`, one per service: DynamoDB → SQS → SNS → EventBridge → the emulator, the \
             local cloud suite's `ProxyChain`), which counts it and draws each service's seeded rules over that \
             service's own requests; `fanout` itself (trigger, ledger reads) goes to the emulator directly. A tick is \
             `fanout trigger --run-id` of {JOBS} targets at {RATE}/s (N/R = {:.0} s), every {BAD_EVERY}th answering a \
             permanent 400 (so {} go to the DLQ and the run ends FAILED), timed from the trigger to the run's \
             `finished_at_ms` in the ledger with its completion event marked sent (polled every 100 ms; a run not \
             finished {} s after the trigger is reported as such, and the watchdog is invoked once after it). Three plans, armed at the trigger and cleared at \
             the finish (or that limit): clean (none); the issue's (#26: DynamoDB all throttled from 2 s for 3 s as \
             `ProvisionedThroughputExceededException`, then 10% throttled, then 3% of the writes that got through \
             applied but answered 500; SQS 10% server errors; SNS `PublishBatch` 10% throttled, 3% lost; \
             EventBridge 20% server errors; seed {ISSUE_SEED}); the harsher one (DynamoDB only: all throttled from \
             2 s for 20 s, then 30% throttled, then 10% of the writes that got through lost; seed {HARSH_SEED}; the moto test of the same plan tries the lost writes before the 30%). A service's rules \
             are tried in order, the first that fires wins. AWS requests are counted from the trigger until the \
             functions have been idle for {} s after the finish (or the limit; at most {} s more), faulted ones and \
             every retry included. \"Finished \
             by its own consumer\": the run's metrics line came from a consumer, its finish was logged with the \
             event put, and no watchdog ran. The plans run interleaved, {runs_done} round(s) (at most \
             {RUNS_IN_ALL} in `bench/run`: a round of three ticks is about two minutes); each figure is the median.",
            n_over_r(),
            JOBS / BAD_EVERY,
            FINISH_LIMIT.as_secs(),
            QUIET.as_secs(),
            QUIET_LIMIT.as_secs()
        ),
        figures,
        runs,
        notes,
    }
}
