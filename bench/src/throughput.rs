//! Figures 2 and 6: consumer throughput on the embedded backend with no rate limit, and what 30%
//! duplicate deliveries cost.
//!
//! Each run is a child process (`fanout-bench drain`) that produces a tick into a fresh state
//! file, then drains it through the local event source; only the drain is timed, and its CPU
//! time is the child's own. The target server runs in the parent, so its CPU is not counted.

use fanout_shared::metrics::Metric;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fanout_shared::message_id;
use fanout_testkit::target_server::TargetServer;

use crate::measure::{cpu_seconds, max_rss_kb, run_child, this_exe, ProcessStats};
use crate::report::{list, median, Figure, Section};
use crate::workload::{cli_options, embedded, ok_targets, Scratch};

/// Jobs per drain.
pub(crate) const JOBS: usize = 20_000;
/// Concurrent invocations.
pub(crate) const CONCURRENCY: usize = 8;

/// `fanout-bench drain`: one measured drain, run in its own process. Prints [`ProcessStats`].
pub(crate) async fn drain_child(
    target: &str,
    jobs: usize,
    duplicate_rate: f64,
    concurrency: usize,
    state: &Path,
) -> Result<ProcessStats, String> {
    let config = ok_targets(target, jobs, None);
    let pipeline = embedded(state, duplicate_rate)?;
    let run_id = "bench-drain";
    let produced = fanout::produce_tick(&config, &pipeline, run_id, "fanout")
        .await
        .map_err(|e| e.to_string())?;
    let mut options = cli_options(concurrency);
    // The figure is speed, not the local default timeout's: a WAL checkpoint stalled by the disk must not
    // cut an invocation off (its calls would then be made again, at least once as documented).
    options.event_source.function_timeout = Duration::from_secs(30);
    options.event_source.visibility_timeout = Duration::from_secs(30);
    let started_ms = fanout_shared::now_ms();
    let cpu = cpu_seconds();
    let outcome = fanout::consume(&config, &pipeline, &options, produced.jobs as u64)
        .await
        .map_err(|e| e.to_string())?;
    let cpu_s = cpu_seconds() - cpu;
    let ids: Vec<String> = config
        .targets
        .iter()
        .map(|t| message_id(run_id, &t.id))
        .collect();
    let settlement = fanout::settle(
        &ids,
        pipeline.store.as_ref(),
        pipeline.dlq.as_ref(),
        options.event_source.poll_wait,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(ProcessStats {
        jobs: jobs as u64,
        wall_s: outcome.elapsed.as_secs_f64(),
        cpu_s,
        max_rss_kb: max_rss_kb(),
        not_succeeded: (jobs - settlement.succeeded) as u64,
        records: outcome.metrics.total(Metric::Records) as u64,
        started_ms,
    })
}

fn drain_args(target: &str, duplicate_rate: f64, state: &Path) -> Vec<String> {
    [
        "drain",
        "--target",
        target,
        "--jobs",
        &JOBS.to_string(),
        "--concurrency",
        &CONCURRENCY.to_string(),
        "--duplicate-rate",
        &duplicate_rate.to_string(),
        "--state",
        &state.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A drain's stats and the seconds from its start to the last job's successful call.
struct Drain {
    stats: ProcessStats,
    settled_s: f64,
}

impl Drain {
    /// Distinct jobs per second until every job had succeeded (copies still queued after that
    /// are acked without a call).
    fn settled_jobs_per_s(&self) -> f64 {
        self.stats.jobs as f64 / self.settled_s.max(1e-9)
    }
}

/// Runs `runs` drains of each kind, interleaved, each against a fresh target server: on a fresh
/// state file without and with 30% duplicates, and in memory (`--state :memory:`) without.
async fn measure(runs: usize) -> Result<(Vec<Drain>, Vec<Drain>, Vec<Drain>), String> {
    let exe = this_exe()?;
    let scratch = Scratch::new("drain")?;
    let (mut plain, mut duplicated, mut in_memory) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        for (rate, on_file, into) in [
            (0.0, true, &mut plain),
            (0.3, true, &mut duplicated),
            (0.0, false, &mut in_memory),
        ] {
            let server = TargetServer::start().await.map_err(|e| e.to_string())?;
            // Maps the child's epoch timestamps onto this process's `Instant`s.
            let anchor = (Instant::now(), fanout_shared::now_ms());
            let state: PathBuf = if on_file {
                scratch.join(&format!("state-{run}-{rate}.db"))
            } else {
                ":memory:".into()
            };
            let args = drain_args(&server.base_url(), rate, &state);
            let stats = tokio::task::spawn_blocking({
                let exe = exe.clone();
                move || run_child(&exe, &args)
            })
            .await
            .map_err(|e| e.to_string())??;
            let target = server.stats();
            if stats.not_succeeded > 0 || target.effects != JOBS || target.repeat_successes > 0 {
                return Err(format!(
                    "drain: {} jobs unsucceeded, {} effects, {} repeated",
                    stats.not_succeeded, target.effects, target.repeat_successes
                ));
            }
            let started = anchor.0
                + Duration::from_millis(u64::try_from(stats.started_ms - anchor.1).unwrap_or(0));
            let last = server
                .records()
                .iter()
                .map(|r| r.at)
                .max()
                .unwrap_or(started);
            into.push(Drain {
                settled_s: last.saturating_duration_since(started).as_secs_f64(),
                stats,
            });
        }
    }
    Ok((plain, duplicated, in_memory))
}

/// Figures 2 and 6 from the same interleaved runs.
pub(crate) async fn sections(runs: usize) -> Result<(Section, Section), String> {
    let (plain, duplicated, in_memory) = measure(runs).await?;
    let mem_jps: Vec<f64> = in_memory.iter().map(|d| d.stats.jobs_per_s()).collect();
    let mem_cpu: Vec<f64> = in_memory.iter().map(|d| d.stats.cpu_us_per_job()).collect();
    let jps: Vec<f64> = plain.iter().map(|d| d.stats.jobs_per_s()).collect();
    let cpu: Vec<f64> = plain.iter().map(|d| d.stats.cpu_us_per_job()).collect();
    let rss: Vec<f64> = plain
        .iter()
        .map(|d| d.stats.max_rss_kb as f64 / 1024.0)
        .collect();
    let settled: Vec<f64> = plain.iter().map(Drain::settled_jobs_per_s).collect();
    let dup_settled: Vec<f64> = duplicated.iter().map(Drain::settled_jobs_per_s).collect();
    let dup_jps: Vec<f64> = duplicated.iter().map(|d| d.stats.jobs_per_s()).collect();
    let dup_records: Vec<f64> = duplicated
        .iter()
        .map(|d| d.stats.records as f64 / d.stats.jobs as f64)
        .collect();
    let ratios: Vec<f64> = dup_settled
        .iter()
        .zip(&settled)
        .map(|(d, p)| d / p)
        .collect();
    let drain_ratios: Vec<f64> = dup_jps.iter().zip(&jps).map(|(d, p)| d / p).collect();
    let command = "target/release/fanout-bench throughput";
    let throughput = Section {
        title: "2. Consumer throughput".into(),
        command: command.into(),
        workload: format!(
            "{JOBS} jobs, embedded backend on a state file (as `fanout run` uses it by default) and in memory, no rate limit, {CONCURRENCY} concurrent \
             invocations of 10-record batches (30 s function and visibility timeouts, so a stalled disk cannot cut an \
             invocation off), target server (keep-alive, HTTP/1.1) in the parent process. Only the drain is timed; CPU is \
             the consumer process's own (user + system)."
        ),
        figures: vec![
            Figure::goal("jobs/s, state file", format!("{:.0}", median(&jps)), "≥ 10,000", median(&jps) >= 10_000.0),
            Figure::info("CPU µs per job, state file", format!("{:.1}", median(&cpu))),
            Figure::goal("jobs/s, `--state :memory:`", format!("{:.0}", median(&mem_jps)), "≥ 10,000", median(&mem_jps) >= 10_000.0),
            Figure::info("CPU µs per job, `--state :memory:`", format!("{:.1}", median(&mem_cpu))),
            Figure::info("peak RSS of the consumer process, state file", format!("{:.1} MiB", median(&rss))),
        ],
        runs: vec![
            format!("jobs/s, state file: {}", list(&jps, 0)),
            format!("CPU µs/job, state file: {}", list(&cpu, 1)),
            format!("jobs/s, in memory: {}", list(&mem_jps, 0)),
            format!("CPU µs/job, in memory: {}", list(&mem_cpu, 1)),
        ],
        notes: vec![format!(
            "Where the time goes. In memory, the consumer process spends the CPU µs per job above on its side of one \
             keep-alive HTTP call, two idempotency transactions (acquire, complete), its share of the batch's receive \
             and delete, and the event and job JSON; the target server's share is in the parent process, and the two \
             share 2 cores. On a state file every transaction is a WAL commit: `strace -f -c -e trace=pwrite64,fsync \
             target/release/fanout-bench drain --target URL --jobs 20000 --state /tmp/s.db` (URL from `fanout-bench \
             target`) counted ~18 pwrite calls per job when this was written (2 per 4 KiB WAL frame: each commit rewrites every b-tree page it \
             touches, ~7 frames a job, plus checkpoints), all under the backend's one connection mutex, so the \
             consumer's instances queue behind it: the file path runs at {:.2}× the in-memory rate while using \
             {:.1}× its CPU per job. Closing that gap needs group commit (several records' transitions in one \
             transaction), which the per-call `IdempotencyStore` contract does not allow without weakening the \
             lock's visibility to other processes sharing the file; not done.",
            median(&jps) / median(&mem_jps),
            median(&cpu) / median(&mem_cpu)
        )],
    };
    let dedupe = Section {
        title: "6. Dedupe cost".into(),
        command: command.into(),
        workload: "As figure 2, with the embedded topic delivering 30% of the messages twice (`--duplicate-rate 0.3`), \
                   interleaved with the runs of figure 2. jobs/s counts distinct jobs; every job must succeed exactly once."
            .into(),
        figures: vec![
            Figure::goal("jobs/s with 30% duplicates ÷ without", format!("{:.3}", median(&ratios)), "≥ 0.9", median(&ratios) >= 0.9),
            Figure::info("jobs/s with 30% duplicates (to the last job's success)", format!("{:.0}", median(&dup_settled))),
            Figure::info("jobs/s without (to the last job's success)", format!("{:.0}", median(&settled))),
            Figure::info("records handled per job with duplicates", format!("{:.2}", median(&dup_records))),
            Figure::info("whole drain, with ÷ without", format!("{:.3}", median(&drain_ratios))),
        ],
        runs: vec![
            format!("jobs/s with duplicates: {}", list(&dup_settled, 0)),
            format!("jobs/s without: {}", list(&settled, 0)),
            format!("ratio per pair: {}", list(&ratios, 3)),
            format!("whole-drain ratio per pair: {}", list(&drain_ratios, 3)),
        ],
        notes: vec![
            "jobs/s here is distinct jobs ÷ the time from the drain's start to the last job's successful call (taken from \
             the target server's log). The whole drain also counts the copies still queued after that: a copy that \
             lands in a different batch than its twin while the twin's call is in flight meets a live lock and is \
             hidden until that lock lapses (the holder's deadline: its invocation's end, 30 s here), and is then acked \
             without a call. That tail is the whole-drain ratio's gap; it is latency, not work (copies in the same \
             batch run in turn and are acked at once)."
                .into(),
            format!(
                "Where the time goes: against a local target that answers in microseconds, a job's cost is mostly \
                 per-record queue and store work (its share of a receive and a delete, the event and job JSON, the \
                 idempotency transaction), and a duplicate pays all of that except the call and the completion. With \
                 {:.2} records per job the ratio would be 1 ÷ {:.2} = {:.2} if a copy cost as much as a job; the \
                 measured {:.2} puts a copy at about {:.2} of a job. Against a real API whose call takes tens of \
                 milliseconds the call dominates and the copies' share shrinks accordingly; on this workload the goal \
                 is not met.",
                median(&dup_records),
                median(&dup_records),
                1.0 / median(&dup_records),
                median(&ratios),
                (1.0 / median(&ratios) - 1.0) / (median(&dup_records) - 1.0).max(1e-9)
            ),
        ],
    };
    Ok((throughput, dedupe))
}
