//! The fault-injection run (issue #8): one seeded workload with every fault at once, driven
//! through the real producer, the local event source and the consumer, then checked job by job
//! against the idempotency records, the DLQ and what the target server saw.

use fanout_shared::metrics::Metric;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use fanout::{
    dlq_reason, drain, drain_with_faults, peek_all, InvocationFaults, Pipeline, RunOptions,
};
use fanout_shared::{decode_body, message_id, Status};
use fanout_testkit::target_server::TargetServer;

use crate::config_for;

/// What a target does, by share of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// 500 on the first call, then 200.
    ServerError,
    /// 429 with `Retry-After: 1` on the first call, then 200.
    RateLimited,
    /// Slower than the call timeout on the first call, then 200.
    Slow,
    /// 400, always: a permanent failure.
    BadRequest,
    /// Connection reset on the first call, then 200.
    Reset,
    /// 200.
    None,
}

/// Shares of the workload, in percent, as issue #8 sets them; the rest answers 200.
const FAULT_PERCENT: [(Fault, usize); 5] = [
    (Fault::ServerError, 10),
    (Fault::RateLimited, 5),
    (Fault::Slow, 5),
    (Fault::BadRequest, 5),
    (Fault::Reset, 2),
];

/// One fault run's parameters.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Jobs (targets) in the tick.
    pub jobs: usize,
    /// Seeds the workload's shuffle, duplicate draws (embedded backend) and crash draws.
    pub seed: u64,
    /// Global outbound budget, requests/s (burst 1).
    pub rate: f64,
    /// Every target's call timeout; slow targets take twice as long on their first call.
    pub call_timeout: Duration,
    /// The event source.
    pub options: RunOptions,
    /// Consumer invocations that die mid-batch, if any.
    pub crash: Option<CrashInjection>,
}

/// Makes a seeded fraction of invocations die (see [`InvocationFaults`]): each at an instant
/// drawn uniformly in `[0, within)` after it starts. A handler that finishes before that instant
/// has its response dropped all the same.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrashInjection {
    /// Fraction of invocations that crash, 0..=1.
    pub rate: f64,
    /// Crashes hit within this long of the invocation's start.
    pub within: Duration,
    /// Seed of the draws: invocation number N crashes (or not) at the same instant in every run.
    pub seed: u64,
}

impl InvocationFaults for CrashInjection {
    fn dies_at(&self, n: u64) -> Option<Duration> {
        // One generator per invocation number, so concurrent workers do not reorder the draws.
        let mut rng = fastrand::Rng::with_seed(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        (rng.f64() < self.rate).then(|| self.within.mul_f64(rng.f64()))
    }
}

/// The event source of a fault run on moto: two invocation slots, 3 s functions; SQS counts
/// visibility in whole seconds, so 1 s, shorter than a slow call (1.2 s timeout). The queue must
/// drain within `timeout`.
pub fn moto_fault_options(timeout: Duration) -> RunOptions {
    let mut options = crate::fast_options(2);
    options.event_source.visibility_timeout = Duration::from_secs(1);
    options.event_source.poll_wait = Duration::from_secs(1);
    options.event_source.function_timeout = Duration::from_secs(3);
    options.event_source.timeout = timeout;
    options
}

/// The figures of one run, as the closing note quotes them.
#[derive(Debug, Clone, Default)]
pub struct FaultFigures {
    /// Jobs in the tick.
    pub jobs: usize,
    /// Messages in the queue after both producer invocations.
    pub messages_delivered: u64,
    /// Messages beyond one per job (double publish plus transport duplicates).
    pub duplicates_delivered: u64,
    /// Deliveries acked without a call because the job had settled.
    pub duplicates_suppressed: u64,
    /// Deliveries sent back because another invocation held the job's lock.
    pub locked_elsewhere: u64,
    /// Deliveries sent back after a transient failure.
    pub retried: u64,
    /// Consumer invocations.
    pub invocations: u64,
    /// Invocations killed mid-batch.
    pub crashes: u64,
    /// Invocations cut off at their function timeout.
    pub timed_out: u64,
    /// Requests the target server received.
    pub calls: usize,
    /// Jobs that succeeded.
    pub succeeded: usize,
    /// Jobs in the DLQ, by reason.
    pub dead_lettered: BTreeMap<String, usize>,
    /// Jobs with more than one DLQ copy.
    pub extra_dlq_copies: usize,
    /// Distinct idempotency keys that took effect at the target.
    pub effects: usize,
    /// 2xx calls for a key that had already succeeded.
    pub repeats: usize,
    /// Most calls the target saw within one second.
    pub max_calls_in_1s: usize,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl fmt::Display for FaultFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "jobs                   {}", self.jobs)?;
        writeln!(
            f,
            "messages delivered     {} ({} duplicates)",
            self.messages_delivered, self.duplicates_delivered
        )?;
        writeln!(f, "duplicates suppressed  {}", self.duplicates_suppressed)?;
        writeln!(f, "locked elsewhere       {}", self.locked_elsewhere)?;
        writeln!(f, "retried                {}", self.retried)?;
        writeln!(
            f,
            "invocations            {} ({} crashed, {} timed out)",
            self.invocations, self.crashes, self.timed_out
        )?;
        writeln!(f, "calls                  {}", self.calls)?;
        writeln!(f, "succeeded              {}", self.succeeded)?;
        for (reason, n) in &self.dead_lettered {
            writeln!(f, "dead-lettered          {n}  {reason}")?;
        }
        writeln!(f, "extra DLQ copies       {}", self.extra_dlq_copies)?;
        writeln!(f, "effects                {}", self.effects)?;
        writeln!(f, "repeat successes       {}", self.repeats)?;
        writeln!(f, "max calls in 1 s       {}", self.max_calls_in_1s)?;
        write!(
            f,
            "elapsed                {:.1} s",
            self.elapsed.as_secs_f64()
        )
    }
}

/// The workload: `jobs` target-server paths with the shares of [`FAULT_PERCENT`], shuffled by
/// `seed`, each with its fault.
pub fn workload(jobs: usize, seed: u64, call_timeout: Duration) -> Vec<(Fault, String)> {
    let mut faults: Vec<Fault> = FAULT_PERCENT
        .iter()
        .flat_map(|&(fault, pct)| std::iter::repeat_n(fault, jobs * pct / 100))
        .collect();
    faults.resize(jobs, Fault::None);
    fastrand::Rng::with_seed(seed).shuffle(&mut faults);
    let slow_ms = call_timeout.as_millis() * 2;
    faults
        .into_iter()
        .enumerate()
        .map(|(i, fault)| {
            let path = match fault {
                Fault::ServerError => format!("flaky/{i}?fail=1"),
                Fault::RateLimited => format!("limited/{i}?fail=1&retry_after=1"),
                Fault::Slow => format!("slow/{i}?ms={slow_ms}&fail=1"),
                Fault::BadRequest => format!("bad/{i}"),
                Fault::Reset => format!("reset/{i}?fail=1"),
                Fault::None => format!("ok/{i}"),
            };
            (fault, path)
        })
        .collect()
}

/// Runs `plan` on `pipeline` against `server`: the producer publishes the tick twice, the event
/// source drains the queue, then every invariant of issue #8 is asserted. Returns the figures.
pub async fn run_faults(
    pipeline: &Pipeline,
    server: &TargetServer,
    plan: &FaultPlan,
) -> FaultFigures {
    run_faults_with(pipeline, server, plan, (&|| {}, &|| {})).await
}

/// [`run_faults`], calling `arm` once the tick is published and `disarm` once the queue is
/// drained: faults of the backends (an AWS fault proxy's plan) then hit the consumers' part
/// only, not the checks after it.
pub async fn run_faults_with(
    pipeline: &Pipeline,
    server: &TargetServer,
    plan: &FaultPlan,
    (arm, disarm): (&(dyn Fn() + Sync), &(dyn Fn() + Sync)),
) -> FaultFigures {
    let started = Instant::now();
    let (pipeline, bus) = crate::RecordingBus::install(pipeline);
    let pipeline = &pipeline;
    let workload = workload(plan.jobs, plan.seed, plan.call_timeout);
    let paths: Vec<String> = workload.iter().map(|(_, p)| p.clone()).collect();
    let mut config = config_for(&server.base_url(), &paths, Some(plan.rate));
    let timeout_ms = u64::try_from(plan.call_timeout.as_millis()).expect("timeout fits");
    config
        .targets
        .iter_mut()
        .for_each(|t| t.timeout_ms = Some(timeout_ms));
    let run_id = format!("faults-{}", plan.seed);

    // The producer invoked twice for the same tick (EventBridge delivers at least once).
    for _ in 0..2 {
        fanout::produce_tick(&config, pipeline, &run_id, "fanout")
            .await
            .expect("tick published");
    }
    let delivered = pipeline.queue.depth().await.expect("depth").visible;
    arm();
    // Lambda's shape: every invocation slot its own instance, lease and share.
    let options = RunOptions {
        separate_instances: true,
        ..plan.options.clone()
    };
    let consumers = fanout::consumers(&config, pipeline, &options).expect("consumers");
    let outcome = match plan.crash {
        Some(crash) => {
            drain_with_faults(
                pipeline.queue.clone(),
                consumers,
                &plan.options.event_source,
                &|_| {},
                std::sync::Arc::new(crash),
            )
            .await
        }
        None => {
            drain(
                pipeline.queue.clone(),
                consumers,
                &plan.options.event_source,
                &|_| {},
            )
            .await
        }
    }
    .expect("drain");
    disarm();
    eprintln!(
        "deferred {} held {} retried {} locked {} requeued {} dup {}",
        outcome.metrics.total(Metric::Deferred),
        outcome.metrics.total(Metric::Held),
        outcome.metrics.total(Metric::Retried),
        outcome.metrics.total(Metric::LockedElsewhere),
        outcome.metrics.total(Metric::Requeued),
        outcome.metrics.total(Metric::DuplicatesSkipped)
    );
    assert!(
        outcome.drained,
        "the queue drained within {:?}",
        plan.options.event_source.timeout
    );

    let ids: Vec<String> = config
        .targets
        .iter()
        .map(|t| message_id(&run_id, &t.id))
        .collect();
    let records = pipeline.store.get_many(&ids).await.expect("records");
    let status: HashMap<&str, Status> = records
        .iter()
        .map(|r| (r.message_id.as_str(), r.status))
        .collect();
    let mut dlq_reasons: HashMap<String, Vec<String>> = HashMap::new();
    for message in peek_all(
        pipeline.dlq.as_ref(),
        usize::MAX,
        plan.options.event_source.poll_wait,
    )
    .await
    .expect("DLQ")
    {
        let job = decode_body(&message.body).expect("only jobs reach this DLQ");
        dlq_reasons
            .entry(job.message_id)
            .or_default()
            .push(dlq_reason(&message));
    }
    let calls = server.records();
    let mut successes: HashMap<&str, usize> = HashMap::new();
    let mut calls_by_path: HashMap<&str, usize> = HashMap::new();
    for call in &calls {
        *calls_by_path
            .entry(call.path.trim_start_matches('/'))
            .or_default() += 1;
        if (200..300).contains(&call.status) {
            *successes
                .entry(call.idempotency_key.as_deref().unwrap_or_default())
                .or_default() += 1;
        }
    }

    let m = &outcome.metrics;
    let mut figures = FaultFigures {
        jobs: plan.jobs,
        messages_delivered: delivered,
        duplicates_delivered: delivered.saturating_sub(plan.jobs as u64),
        duplicates_suppressed: m.total(Metric::DuplicatesSkipped) as u64,
        locked_elsewhere: m.total(Metric::LockedElsewhere) as u64,
        retried: m.total(Metric::Retried) as u64,
        invocations: outcome.invocations,
        crashes: outcome.crashed,
        timed_out: outcome.timed_out,
        calls: calls.len(),
        effects: successes.len(),
        repeats: successes.values().map(|n| n - 1).sum(),
        max_calls_in_1s: server.max_calls_in_window(Duration::from_secs(1)),
        ..FaultFigures::default()
    };
    // Violations are collected, so a failing run still prints its figures.
    let mut violations = Vec::new();
    for ((fault, path), id) in workload.iter().zip(&ids) {
        let completed = status.get(id.as_str()) == Some(&Status::Completed);
        let in_dlq = dlq_reasons.get(id).map_or(&[][..], Vec::as_slice);
        // Settled exactly once: succeeded, or in the DLQ with a reason; never both, never neither.
        match (completed, in_dlq.first()) {
            (true, None) => figures.succeeded += 1,
            (false, Some(reason)) => {
                *figures.dead_lettered.entry(reason.clone()).or_default() += 1;
                figures.extra_dlq_copies += usize::from(in_dlq.len() > 1);
            }
            (true, Some(_)) => {
                violations.push(format!("{path}: succeeded and in the DLQ ({in_dlq:?})"))
            }
            (false, None) => {
                violations.push(format!("{path}: lost ({:?})", status.get(id.as_str())))
            }
        }
        // Exactly one effect per succeeded job, none for a dead-lettered one.
        if successes.contains_key(id.as_str()) != completed {
            violations.push(format!(
                "{path}: succeeded = {completed}, but {} 2xx at the target",
                successes.get(id.as_str()).unwrap_or(&0)
            ));
        }
        if *fault == Fault::BadRequest
            && (in_dlq.first().map(String::as_str) != Some("HTTP 400 Bad Request")
                || calls_by_path.get(path.as_str()) != Some(&1))
        {
            violations.push(format!(
                "{path}: a 400 must be dead-lettered after one call: {in_dlq:?}, {:?} calls",
                calls_by_path.get(path.as_str())
            ));
        }
    }
    figures.elapsed = started.elapsed();
    eprintln!("fault run, seed {}:\n{figures}", plan.seed);
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
    let fleet_burst = plan.options.event_source.concurrency as f64;
    assert!(
        figures.max_calls_in_1s as f64 <= plan.rate + fleet_burst,
        "{} calls in one second, budget {}/s",
        figures.max_calls_in_1s,
        plan.rate
    );
    // Only a crash between a successful call and its recorded completion may repeat a call, and
    // only a crash between a DLQ send and its confirmation may leave a second copy.
    // An invocation cut off at its function timeout dies like a crashed one.
    let died = figures.crashes + figures.timed_out;
    assert!(
        figures.repeats as u64 <= died,
        "repeats > invocations that died"
    );
    assert!(
        figures.extra_dlq_copies as u64 <= died,
        "extra DLQ copies > invocations that died"
    );
    check_ledger(pipeline, &bus, &run_id, &figures).await;
    figures
}

/// The run ledger agrees with where every job is, whatever crashed or was delivered twice, and
/// the run was announced exactly once (by a consumer, or by the watchdog's sweep when the
/// consumer that counted the last job died before finishing the run).
async fn check_ledger(
    pipeline: &Pipeline,
    bus: &crate::RecordingBus,
    run_id: &str,
    figures: &FaultFigures,
) {
    let sweep = fanout_shared::runs::Finisher::new(
        pipeline.runs.as_ref(),
        pipeline.events.as_ref(),
        "fanout",
    )
    .sweep_run(run_id, fanout_shared::now_ms())
    .await
    .expect("sweep");
    let run = pipeline
        .runs
        .get(run_id)
        .await
        .expect("ledger")
        .expect("the run is in the ledger");
    let dead: usize = figures.dead_lettered.values().sum();
    let counts = &run.counts;
    assert_eq!(
        (counts.expected, counts.succeeded, counts.dead_lettered),
        (figures.jobs as u64, figures.succeeded as u64, dead as u64),
        "ledger vs truth (sweep finished {} runs)",
        sweep.finished.len()
    );
    let by_reason: u64 = counts.failures_by_reason.values().sum();
    let by_host: u64 = counts.failures_by_host.values().sum();
    assert_eq!(
        (by_reason, by_host),
        (dead as u64, dead as u64),
        "{counts:?}"
    );
    let bad = figures
        .dead_lettered
        .get("HTTP 400 Bad Request")
        .copied()
        .unwrap_or(0) as u64;
    assert_eq!(
        counts
            .failures_by_reason
            .get("HTTP 400")
            .copied()
            .unwrap_or(0),
        bad,
        "{counts:?}"
    );
    assert_eq!(
        run.status,
        if dead > 0 {
            fanout_shared::runs::RunStatus::Failed
        } else {
            fanout_shared::runs::RunStatus::Succeeded
        }
    );
    let events = bus.events();
    assert_eq!(events.len(), 1, "one completion event: {events:?}");
    assert_eq!(
        events[0].1["succeeded"].as_u64(),
        Some(figures.succeeded as u64)
    );
    eprintln!(
        "ledger: {} succeeded, {} dead-lettered {:?}, {} (finished by the sweep: {})",
        counts.succeeded,
        counts.dead_lettered,
        counts.failures_by_reason,
        run.status.as_str(),
        sweep.finished.len()
    );
}
