//! Figure 8, the real stack on the local cloud: the CDK stack of `infra/` deployed into ministack
//! by `scripts/local-cloud` with the release binaries, timed from deploy to a 600-job tick's last
//! settled job; every AWS request the deployed functions make is counted by a proxy
//! ([`fanout_testkit::aws_proxy`], no faults planned) for figure 9's costs ([`crate::cost`]).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use fanout::{aws_with, StackOutputs};
use fanout_shared::job::JobMessage;
use fanout_shared::PipelineConfig;
use fanout_testkit::aws_proxy::{AwsProxy, Counts};
use fanout_testkit::target_server::TargetServer;
use fanout_tests::local_cloud::{emulator_endpoint, LocalCloud};

use crate::report::{list, median, Figure, Section};
use crate::workload::Scratch;

/// Jobs per tick.
pub(crate) const JOBS: usize = 600;
/// The global budget, requests/s: the config's `rate_limit.per_second`, which the stack runs
/// as it is (no `ratePerSecond` context: synth refuses one that disagrees with the config).
pub(crate) const RATE: f64 = 200.0;
/// The budget of the second series of clean ticks: 10/s per instance, so a 10-record batch
/// lasts about a second.
pub(crate) const SLOW_RATE: f64 = 50.0;
/// The stack's consumer `maxConcurrency` (its default).
pub(crate) const CONCURRENCY: u32 = 5;
/// Both functions' memory (the stack's default), MB.
pub(crate) const MEMORY_MB: f64 = 256.0;
const STACK: &str = "Bench";
/// Share of the jobs delivered twice in the duplicates tick, and of the jobs whose first call
/// fails (HTTP 500) in the transient tick.
pub(crate) const DUPLICATE_SHARE: f64 = 0.3;
/// See [`DUPLICATE_SHARE`].
pub(crate) const TRANSIENT_SHARE: f64 = 0.1;

/// One tick on the deployed stack, as measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tick {
    /// What the tick was.
    pub name: String,
    /// The stack's global budget, requests/s.
    pub rate: f64,
    /// Jobs of the tick.
    pub jobs: usize,
    /// Messages SNS delivered to the queue: jobs and duplicate copies.
    pub deliveries: usize,
    /// Every AWS request the deployed functions made, from the trigger until the run finished.
    pub counts: Counts,
    /// Consumer invocations (one EMF line each).
    pub invocations: u64,
    /// Their summed duration, ms (the `DurationMs` of each EMF line).
    pub consumer_ms: f64,
    /// The producer's invocation, ms (its publish time as it reports it).
    pub producer_ms: f64,
    /// Bytes the functions wrote to their logs (JSON logs and EMF).
    pub log_bytes: u64,
    /// Trigger to the run's finish, s.
    pub makespan_s: f64,
    /// The run's own duration (producer's start to finish), s.
    pub run_s: f64,
    /// Trigger to the target server's first call, and to its last, s.
    pub calls_s: (f64, f64),
    /// Jobs that succeeded, and that were dead-lettered.
    pub settled: (u64, u64),
}

/// Deploys, ticks, measures; `runs` clean ticks for the makespan, then one tick each with
/// duplicates and transient failures for the costs.
pub(crate) struct CloudRun {
    /// `scripts/local-cloud up` creating the stack, s, and its summary line.
    pub deploy: (f64, String),
    /// The same after a config change (update), s, and its summary line.
    pub redeploy: (f64, String),
    /// First invocation of the freshly deployed producer (its process starts), ms, and the
    /// median of three warm ones.
    pub cold_ms: (f64, f64),
    /// The clean ticks at [`RATE`].
    pub clean: Vec<Tick>,
    /// The clean ticks at [`SLOW_RATE`].
    pub slow: Vec<Tick>,
    /// The redeploy to [`SLOW_RATE`], s, and its summary line.
    pub rate_redeploy: (f64, String),
    /// The tick with [`DUPLICATE_SHARE`] of its jobs delivered twice.
    pub duplicates: Tick,
    /// The tick with [`TRANSIENT_SHARE`] of its jobs failing once.
    pub transient: Tick,
}

/// `JOBS` targets on `base_url`; every `failing_every`-th fails its first call (spread out, as
/// transient failures are: a run of them would open the host's circuit).
fn config(base_url: &str, run: &str, failing_every: Option<usize>, rate: f64) -> PipelineConfig {
    let targets: Vec<Value> = (0..JOBS)
        .map(|i| {
            let url = if failing_every.is_some_and(|n| i % n == 0) {
                format!("{base_url}/flaky/{run}-{i}?fail=1")
            } else {
                format!("{base_url}/ok/{run}-{i}")
            };
            json!({ "id": format!("t{i}"), "url": url })
        })
        .collect();
    let value = json!({ "rate_limit": { "per_second": rate, "burst": 1 }, "allow_private_networks": true, "targets": targets });
    serde_json::from_value(value).unwrap_or_default()
}

fn write(scratch: &Scratch, name: &str, config: &PipelineConfig) -> Result<String, String> {
    let path = scratch.join(name);
    let text = serde_json::to_string(config).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path.display().to_string())
}

/// `scripts/local-cloud up`, off the async runtime; while it runs, the proxy learns where the
/// emulator listens as soon as it does (a deploy may already invoke functions).
async fn up(
    cloud: LocalCloud,
    proxy: &AwsProxy,
    config: String,
    context: Vec<String>,
) -> Result<(LocalCloud, f64, String), String> {
    let state = cloud.state_dir();
    let mut job = std::pin::pin!(tokio::task::spawn_blocking(move || {
        let mut cloud = cloud;
        let context: Vec<&str> = context.iter().map(String::as_str).collect();
        let deployed = cloud.up(Path::new(&config), STACK, &context);
        (cloud, deployed)
    }));
    loop {
        if let Some(endpoint) = emulator_endpoint(&state) {
            proxy.set_upstream(&endpoint);
        }
        tokio::select! {
            done = &mut job => {
                let (cloud, deployed) = done.map_err(|e| format!("scripts/local-cloud up failed: {e}"))?;
                return Ok((cloud, deployed.seconds, deployed.summary));
            }
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// `fanout ARGS --json` against the stack ([`LocalCloud::fanout_json`]: it must succeed), on
/// this worker thread without stalling the runtime's other tasks.
fn fanout_json(cloud: &LocalCloud, args: &[&str]) -> Value {
    tokio::task::block_in_place(|| cloud.fanout_json(args))
}

/// The run once it has finished (by its last consumer, or by the watchdog when that
/// invocation did not get to it).
async fn finished(cloud: &LocalCloud, run_id: &str) -> Result<Value, String> {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let run = fanout_json(cloud, &["--stack", STACK, "runs", "show", run_id]);
        if run["status"] != "RUNNING" && run["event_sent"] == true {
            return Ok(run);
        }
        let counted =
            run["succeeded"].as_u64().unwrap_or(0) + run["dead_lettered"].as_u64().unwrap_or(0);
        if Instant::now() >= give_up {
            if Some(counted) == run["expected"].as_u64() {
                fanout_json(cloud, &["--stack", STACK, "trigger", "--watchdog"]);
                return Ok(fanout_json(
                    cloud,
                    &["--stack", STACK, "runs", "show", run_id],
                ));
            }
            return Err(format!("run {run_id} did not finish: {run}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The consumer's EMF lines in the emulator's log after byte `from`: (invocations, summed
/// `DurationMs`), and the bytes of every function log line (the emulator's own lines start
/// with a date).
fn function_logs(log: &str, from: usize) -> (u64, f64, u64) {
    let (mut invocations, mut ms, mut bytes) = (0, 0.0, 0);
    for line in log.get(from..).unwrap_or_default().lines() {
        let own = line.as_bytes().first().is_some_and(u8::is_ascii_digit)
            || line.starts_with('[')
            || line.trim().is_empty();
        if own {
            continue;
        }
        bytes += line.len() as u64 + 1;
        if let Ok(doc) = serde_json::from_str::<Value>(line) {
            if let Some(duration) = doc.get("DurationMs").and_then(Value::as_f64) {
                invocations += 1;
                ms += duration;
            }
        }
    }
    (invocations, ms, bytes)
}

/// Publishes a second copy of the first `copies` jobs of `run_id`, as SQS at-least-once
/// delivery would hand them over again.
async fn duplicate(
    cloud: &LocalCloud,
    config: &PipelineConfig,
    run_id: &str,
    copies: usize,
) -> Result<(), String> {
    let sdk = cloud.sdk().await;
    let outputs = StackOutputs::describe(&sdk, STACK)
        .await
        .map_err(|e| e.to_string())?;
    let pipeline = aws_with(&sdk, &outputs.names().map_err(|e| e.to_string())?);
    let now = chrono::Utc::now();
    let messages: Vec<_> = config
        .targets
        .iter()
        .take(copies)
        .map(|t| JobMessage::new(run_id, config.job_target(t), now).encode())
        .collect();
    for batch in messages.chunks(10) {
        let failed = pipeline
            .publisher
            .publish_batch(batch)
            .await
            .map_err(|e| e.to_string())?;
        if !failed.is_empty() {
            return Err(format!(
                "{} duplicate copies were not published",
                failed.len()
            ));
        }
    }
    Ok(())
}

/// What a tick runs against: the deployed stack, the proxy counting its requests, the targets.
struct Stage<'a> {
    cloud: &'a LocalCloud,
    proxy: &'a AwsProxy,
    server: &'a TargetServer,
}

/// One tick of `config` (written at `config_path`) as `run_id`, with `copies` duplicate
/// deliveries.
async fn tick(
    stage: &Stage<'_>,
    name: &str,
    (config_path, config): (&str, &PipelineConfig),
    run_id: &str,
    copies: usize,
) -> Result<Tick, String> {
    let rate = config.rate_limit.map_or(RATE, |l| l.per_second);
    let Stage {
        cloud,
        proxy,
        server,
    } = *stage;
    proxy.take();
    let from = cloud.log().len();
    let started_ms = fanout_shared::now_ms();
    let started = Instant::now();
    let answer = fanout_json(
        cloud,
        &[
            "--stack",
            STACK,
            "trigger",
            "--config",
            config_path,
            "--run-id",
            run_id,
        ],
    );
    if copies > 0 {
        duplicate(cloud, config, run_id, copies).await?;
    }
    let run = finished(cloud, run_id).await?;
    // The last batches' lease releases land right after the finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = proxy.take();
    let (invocations, consumer_ms, log_bytes) = function_logs(&cloud.log(), from);
    let calls: Vec<f64> = server
        .records()
        .iter()
        .filter(|r| r.at >= started)
        .map(|r| (r.at - started).as_secs_f64())
        .collect();
    let calls_s = (
        calls.iter().copied().fold(f64::INFINITY, f64::min),
        calls.iter().copied().fold(0.0, f64::max),
    );
    let finished_ms = run["finished_at_ms"].as_i64().unwrap_or(started_ms);
    let run_started_ms = run["started_at_ms"].as_i64().unwrap_or(started_ms);
    Ok(Tick {
        name: name.to_owned(),
        rate,
        jobs: config.targets.len(),
        deliveries: config.targets.len() + copies,
        counts,
        invocations,
        consumer_ms,
        producer_ms: answer["elapsed_ms"].as_f64().unwrap_or(0.0),
        log_bytes,
        makespan_s: (finished_ms - started_ms) as f64 / 1000.0,
        run_s: (finished_ms - run_started_ms) as f64 / 1000.0,
        calls_s,
        settled: (
            run["succeeded"].as_u64().unwrap_or(0),
            run["dead_lettered"].as_u64().unwrap_or(0),
        ),
    })
}

/// Wall time of one `fanout trigger --watchdog` (a synchronous invocation of the producer), ms.
fn watchdog_ms(cloud: &LocalCloud) -> f64 {
    let started = Instant::now();
    fanout_json(cloud, &["--stack", STACK, "trigger", "--watchdog"]);
    started.elapsed().as_secs_f64() * 1000.0
}

/// Deploys the stack, redeploys it after a config change, times the producer's cold start and
/// runs the ticks.
pub(crate) async fn measure(runs: usize) -> Result<CloudRun, String> {
    let server = TargetServer::start().await.map_err(|e| e.to_string())?;
    let proxy = AwsProxy::start().await.map_err(|e| format!("proxy: {e}"))?;
    let scratch = Scratch::new("cloud")?;
    let mut cloud = LocalCloud::new("bench");
    cloud.script_env("FANOUT_LOCAL_CLOUD_FUNCTION_ENDPOINT", &proxy.url());
    let base = server.base_url();
    let clean = config(&base, "clean", None, RATE);
    let clean_path = write(&scratch, "clean.json", &clean)?;
    let context = vec![format!("maxConcurrency={CONCURRENCY}")];
    let (cloud, deploy_s, deploy_summary) = up(cloud, &proxy, clean_path.clone(), context).await?;
    let mut ticks = Vec::new();
    {
        let stage = Stage {
            cloud: &cloud,
            proxy: &proxy,
            server: &server,
        };
        for run in 0..runs.max(1) {
            ticks.push(
                tick(
                    &stage,
                    "clean tick",
                    (&clean_path, &clean),
                    &format!("bench/clean-{run}"),
                    0,
                )
                .await?,
            );
        }
        let copies = (JOBS as f64 * DUPLICATE_SHARE).round() as usize;
        ticks.push(
            tick(
                &stage,
                "30% duplicate deliveries",
                (&clean_path, &clean),
                "bench/duplicates",
                copies,
            )
            .await?,
        );
    }
    let duplicates = ticks.pop().unwrap_or_default();
    // A config change: the packaged config names the targets, so the transient tick needs its own.
    let every = (1.0 / TRANSIENT_SHARE).round() as usize;
    let transient_config = config(&base, "transient", Some(every), RATE);
    let transient_path = write(&scratch, "transient.json", &transient_config)?;
    let (cloud, redeploy_s, redeploy_summary) =
        up(cloud, &proxy, transient_path.clone(), Vec::new()).await?;
    // The functions were replaced: the producer's next invocation starts its process.
    let cold = watchdog_ms(&cloud);
    let mut warm = Vec::new();
    for _ in 0..3 {
        warm.push(watchdog_ms(&cloud));
    }
    let transient = tick(
        &Stage {
            cloud: &cloud,
            proxy: &proxy,
            server: &server,
        },
        "10% transient failures",
        (&transient_path, &transient_config),
        "bench/transient",
        0,
    )
    .await?;
    let slow_config = config(&base, "slow", None, SLOW_RATE);
    let slow_path = write(&scratch, "slow.json", &slow_config)?;
    // The new budget travels in the config alone.
    let (cloud, rate_s, rate_summary) = up(cloud, &proxy, slow_path.clone(), Vec::new()).await?;
    let mut slow = Vec::new();
    let stage = Stage {
        cloud: &cloud,
        proxy: &proxy,
        server: &server,
    };
    for run in 0..runs.max(1) {
        slow.push(
            tick(
                &stage,
                "clean tick at 50/s",
                (&slow_path, &slow_config),
                &format!("bench/slow-{run}"),
                0,
            )
            .await?,
        );
    }
    for t in ticks.iter().chain(&slow).chain([&duplicates, &transient]) {
        if t.settled != (JOBS as u64, 0) {
            return Err(format!(
                "{}: {} succeeded, {} dead-lettered of {JOBS}",
                t.name, t.settled.0, t.settled.1
            ));
        }
    }
    Ok(CloudRun {
        deploy: (deploy_s, deploy_summary),
        redeploy: (redeploy_s, redeploy_summary),
        rate_redeploy: (rate_s, rate_summary),
        cold_ms: (cold, median(&warm)),
        clean: ticks,
        slow,
        duplicates,
        transient,
    })
}

/// Figures 8 and 9 from a measured run; `cpu_us` is the Rust consumer's and the Python peer's
/// CPU per job (figure 3).
pub(crate) fn sections(run: &CloudRun, cpu_us: (f64, f64)) -> Vec<Section> {
    let clean = run.clean.last().unwrap_or(&run.duplicates);
    vec![
        section(run),
        crate::cost::section(
            clean,
            &run.duplicates,
            &run.transient,
            run.slow.last(),
            cpu_us,
            f64::from(CONCURRENCY),
        ),
    ]
}

/// Per series of clean ticks: (ratios trigger → finished, run's own, first call s, call phase,
/// busy share, ms per invocation, turnaround ms).
struct Series {
    makespan: Vec<f64>,
    run: Vec<f64>,
    first_call: Vec<f64>,
    phase: Vec<f64>,
    busy: Vec<f64>,
    per_invocation_ms: Vec<f64>,
    gap_ms: Vec<f64>,
}

fn series(ticks: &[Tick]) -> Series {
    let of = |f: &dyn Fn(&Tick) -> f64| ticks.iter().map(f).collect::<Vec<f64>>();
    let ideal = |t: &Tick| t.jobs as f64 / t.rate;
    let instances = f64::from(CONCURRENCY);
    Series {
        makespan: of(&|t| t.makespan_s / ideal(t)),
        run: of(&|t| t.run_s / ideal(t)),
        first_call: of(&|t| t.calls_s.0),
        phase: of(&|t| (t.calls_s.1 - t.calls_s.0) / ideal(t)),
        // Share of the call phase the instances spent inside invocations, and the time between
        // one invocation's end and the same instance's next one.
        busy: of(&|t| t.consumer_ms / 1000.0 / (instances * (t.calls_s.1 - t.calls_s.0))),
        per_invocation_ms: of(&|t| t.consumer_ms / t.invocations.max(1) as f64),
        gap_ms: of(&|t| {
            (instances * (t.calls_s.1 - t.calls_s.0) * 1000.0 - t.consumer_ms).max(0.0)
                / t.invocations.max(1) as f64
        }),
    }
}

fn section(run: &CloudRun) -> Section {
    let mut figures = Vec::new();
    let mut runs = Vec::new();
    for (rate, ticks) in [(RATE, &run.clean), (SLOW_RATE, &run.slow)] {
        let s = series(ticks);
        let share = rate / f64::from(CONCURRENCY);
        let at = format!("at {rate}/s ({share}/s per instance)");
        let makespan = median(&s.makespan);
        figures.push(Figure::goal(
            &format!("600-job tick {at}: trigger → run finished ÷ (N/R)"),
            format!("{makespan:.2}"),
            "≤ 1.10",
            makespan <= 1.10,
        ));
        figures.push(Figure::info(
            &format!("… {at}: run's own duration (producer start → finish) ÷ (N/R)"),
            format!("{:.2}", median(&s.run)),
        ));
        figures.push(Figure::info(
            &format!("… {at}: trigger → first call, s"),
            format!("{:.2}", median(&s.first_call)),
        ));
        figures.push(Figure::info(
            &format!("… {at}: first call → last call ÷ (N/R)"),
            format!("{:.2}", median(&s.phase)),
        ));
        figures.push(Figure::info(
            &format!(
                "… {at}: instances busy in the call phase (Σ invocation time ÷ instances × phase)"
            ),
            format!("{:.0}%", 100.0 * median(&s.busy)),
        ));
        figures.push(Figure::info(
            &format!("… {at}: invocation of 10 records, ms; between an instance's invocations, ms"),
            format!(
                "{:.0}; {:.0}",
                median(&s.per_invocation_ms),
                median(&s.gap_ms)
            ),
        ));
        runs.push(format!(
            "{at}: trigger → finished ÷ (N/R): {}; first → last call ÷ (N/R): {}",
            list(&s.makespan, 2),
            list(&s.phase, 2)
        ));
    }
    figures.push(Figure::info(
        "deploy (create), s",
        format!("{:.1}", run.deploy.0),
    ));
    figures.push(Figure::info(
        "redeploy after a config change (new target list), s",
        format!("{:.1}", run.redeploy.0),
    ));
    figures.push(Figure::info(
        "redeploy after a config and budget change, s",
        format!("{:.1}", run.rate_redeploy.0),
    ));
    figures.push(Figure::info(
        "producer cold start: first invocation after a redeploy − warm one, ms",
        format!("{:.0}", run.cold_ms.0 - run.cold_ms.1),
    ));
    figures.push(Figure::info(
        "producer warm invocation (`fanout trigger --watchdog`, process included), ms",
        format!("{:.0}", run.cold_ms.1),
    ));
    runs.push(format!("deploy: {}", run.deploy.1));
    runs.push(format!("redeploy: {}", run.redeploy.1));
    runs.push(format!("redeploy (budget): {}", run.rate_redeploy.1));
    let fast = series(&run.clean);
    let share = RATE / f64::from(CONCURRENCY);
    Section {
        title: "8. The real stack on the local cloud".into(),
        command: "target/release/fanout-bench cloud".into(),
        workload: format!(
            "The CDK stack of `infra/` deployed into ministack by `scripts/local-cloud` (synth, assets, CloudFormation) with the \
             release binaries as the functions, consumer `maxConcurrency` {CONCURRENCY}, batches of 10, {MEMORY_MB} MB \
             functions, the config's `rate_limit.per_second` {RATE} and later {SLOW_RATE}. A tick is `fanout trigger --run-id` (the producer Lambda \
             invoked through the emulator), SNS → SQS → event source mapping → consumer processes under the emulator's \
             Runtime API, {JOBS} targets on a local server; it ends when the run ledger says the run finished. {} clean \
             ticks at each budget.",
            run.clean.len()
        ),
        figures,
        runs,
        notes: vec![format!(
            "Where the time goes. Each of the {CONCURRENCY} instances paces its batch at its share of the budget, so at \
             {RATE}/s ({share:.0}/s each) 10 records take ~{:.0} ms; between two invocations of one instance the event \
             source mapping deletes the batch, polls and invokes again (~{:.0} ms here), and the instance's share goes \
             unused meanwhile: the others cannot know of so short a pause without sending above the budget when it \
             ends. That turnaround is a fixed cost per batch, so it weighs {:.0}% of the call phase at {share:.0}/s per \
             instance and a few percent at 10/s, where a batch lasts about a second. Larger batches would amortise \
             it (`batchSize` up to 10,000 with a batching window), but the emulator's mapping hands over at most 10 \
             messages per invocation, so it cannot be shown here. Before the first call: the producer's invocation \
             and publish, SNS → SQS inside the emulator, the mapping's poll.",
            9000.0 / share,
            median(&fast.gap_ms),
            100.0 * (1.0 - median(&fast.busy))
        )],
    }
}
