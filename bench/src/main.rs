//! `fanout-bench`: the benchmarks behind `BENCHMARKS.md` (issue 7). `bench/run` builds it,
//! installs the Python peer, and runs `fanout-bench all`; each figure's subcommand reproduces
//! that figure alone (run from the repository root). Timing goals live here, never in tests.
//!
//! # Layout
//! - [`rate`]: 1, rate accuracy (global and per-host budgets).
//! - [`throughput`]: 2 and 6, consumer throughput and dedupe cost (child `drain` processes).
//! - [`peer`]: 3, the Python peer on the same event batches (child `replay` processes).
//! - [`produce`]: 4, producer fan-out (embedded and moto).
//! - [`coldstart`]: 5, the Lambda binary's cold start against a mock Runtime API.
//! - [`flow`]: 7, flow control (issue #12): hidden limit, host down, transient failures, sparse
//!   fleet, tight budget.
//! - [`cloud`], [`cost`]: 8 and 9, the real stack on the local cloud and what a tick costs
//!   (every AWS request counted by `fanout_testkit::aws_proxy`), beside Distributed Map and the
//!   Python peer.
//! - [`process`]: 10, `fanout run` as a whole process.
//! - [`coldstart`] also 11: the `lambda-release` profile against `release`.
//! - [`lists`]: 12, the producer reading a list of 100,000 and 1,000,000 rows from S3 on the
//!   local cloud's emulator (child `list-tick` processes), beside literal targets.
//! - [`faults`]: 13, AWS-side faults (issue #26): the real stack on the local cloud behind a
//!   chain of fault proxies, a tick clean, under the plan and under the harsher one.
//! - [`budgets`]: 14, every budget used (issue #27): mixed hosts, three hosts under a global
//!   budget, on the embedded backend (the deployed rows are figure 8's).
//! - [`report`], [`measure`], [`workload`]: figures and markdown, process measurements, workloads.

mod budgets;
mod cloud;
mod coldstart;
mod cost;
mod faults;
mod flow;
mod lists;
mod measure;
mod peer;
mod process;
mod produce;
mod rate;
mod report;
mod throughput;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use report::Section;

/// Benchmarks of the fanout pipeline.
#[derive(Debug, Parser)]
#[command(name = "fanout-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Paths the peer and cold-start figures need, relative to the repository root.
#[derive(Debug, Args, Clone)]
struct Paths {
    /// The bench venv's Python, with `bench/peer/requirements.txt` installed.
    #[arg(long, default_value = "bench/.venv/bin/python")]
    python: PathBuf,
    /// The Python peer's directory.
    #[arg(long, default_value = "bench/peer")]
    peer_dir: PathBuf,
    /// The release Lambda binary of the consumer.
    #[arg(long, default_value = "target/release/fanout-consumer")]
    consumer: PathBuf,
    /// The consumer built with the `lambda-release` profile (`scripts/package`'s).
    #[arg(long, default_value = "target/lambda-release/fanout-consumer")]
    lambda_consumer: PathBuf,
    /// The release `fanout` command.
    #[arg(long, default_value = "target/release/fanout")]
    fanout: PathBuf,
    /// The local cloud's emulator (`scripts/local-cloud setup` installs it), for figure 12's S3.
    #[arg(long, default_value = ".local-cloud/venv/bin/ministack")]
    ministack: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every figure; writes the markdown document.
    All {
        /// Where to write it.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
        /// Runs per figure (medians are reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[command(flatten)]
        paths: Paths,
    },
    /// Figure 1: rate accuracy.
    Rate {
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Figures 2 and 6: consumer throughput and dedupe cost.
    Throughput {
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Figure 3: the Python peer.
    Peer {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[command(flatten)]
        paths: Paths,
    },
    /// Figure 4: producer fan-out.
    Produce {
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Figure 5: cold-start proxy.
    ColdStart {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[command(flatten)]
        paths: Paths,
    },
    /// Figure 7: flow control (issue #12).
    Flow {
        /// Runs per scenario (medians are reported); `all` runs each once.
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// Figure 14: every budget used (issue #27): mixed hosts, three hosts under a global budget.
    Budgets {
        /// Runs per scenario (medians are reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Figure 8: the real stack on the local cloud (deploy, redeploy, ticks, cold start).
    Cloud {
        /// Clean ticks (medians are reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[command(flatten)]
        paths: Paths,
    },
    /// Figure 10: `fanout run` as a whole process, spawn to exit.
    Process {
        /// Runs per size (medians are reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[command(flatten)]
        paths: Paths,
    },
    /// Figure 11: the consumer built with `release` and with `lambda-release`.
    Profile {
        /// Cold starts of each (medians are reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[command(flatten)]
        paths: Paths,
    },
    /// Figure 12: the producer reading a list from S3 (100,000 and 1,000,000 rows).
    Lists {
        /// Runs of each tick (medians are reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[command(flatten)]
        paths: Paths,
    },
    /// Figure 13: AWS-side faults on the real stack on the local cloud (issue #26).
    Faults {
        /// Rounds of the three plans (medians are reported).
        #[arg(long, default_value_t = faults::RUNS_IN_ALL)]
        runs: usize,
    },
    /// A target server on 127.0.0.1 until interrupted (prints its URL): for running `drain` or
    /// `replay` by hand, e.g. under `perf record`.
    Target,
    /// Writes the SQS events (10 records each) of `jobs` targets on `target`, one per line: the
    /// input of `replay` and of `bench/peer/drive.py`.
    Events {
        #[arg(long)]
        target: String,
        #[arg(long)]
        jobs: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// (child process of figures 2 and 6) one measured drain; prints JSON stats.
    Drain {
        #[arg(long)]
        target: String,
        #[arg(long)]
        jobs: usize,
        #[arg(long, default_value_t = throughput::CONCURRENCY)]
        concurrency: usize,
        #[arg(long, default_value_t = 0.0)]
        duplicate_rate: f64,
        #[arg(long, default_value = ":memory:")]
        state: PathBuf,
    },
    /// (child process of figure 12) one measured tick into the embedded topic; prints JSON stats.
    #[command(hide = true)]
    ListTick {
        /// Literal targets, or the rows the list at `--source` holds (checked).
        #[arg(long)]
        rows: usize,
        /// An `s3://` location: the tick's one source.
        #[arg(long)]
        source: Option<String>,
        /// The S3 emulator's endpoint, for `--source`.
        #[arg(long)]
        endpoint: Option<String>,
        /// A local copy of the list, read once more without S3 after the tick.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The embedded state file (fresh).
        #[arg(long)]
        state: PathBuf,
        /// Publish into a topic that keeps nothing (the ledger stays in `--state`).
        #[arg(long)]
        discard: bool,
    },
    /// (child process of figure 3) replays an events file through one consumer; prints JSON stats.
    Replay {
        #[arg(long)]
        events: PathBuf,
        #[arg(long)]
        target: String,
        /// The `--jobs` the events were written with: the consumer's config holds those targets.
        #[arg(long, default_value_t = peer::JOBS)]
        jobs: usize,
    },
}

fn print_sections(sections: &[Section]) -> Result<(), String> {
    for section in sections {
        println!("{}", section.markdown());
    }
    Ok(())
}

async fn all(out: &PathBuf, runs: usize, paths: &Paths) -> Result<(), String> {
    let started = Instant::now();
    let mut sections = Vec::new();
    eprintln!("fanout-bench: 1. rate accuracy");
    sections.push(rate::section(runs).await?);
    eprintln!("fanout-bench: 2 and 6. throughput and dedupe");
    let (throughput, dedupe) = throughput::sections(runs).await?;
    sections.push(throughput);
    eprintln!("fanout-bench: 3. Python peer");
    let (peer, cpu) = peer::section(runs, &paths.python, &paths.peer_dir).await?;
    sections.push(peer);
    eprintln!("fanout-bench: 4. producer fan-out");
    sections.push(produce::section(runs).await?);
    eprintln!("fanout-bench: 5. cold start");
    sections.push(coldstart::section(runs, &paths.consumer, &paths.python, &paths.peer_dir).await?);
    sections.push(dedupe);
    eprintln!("fanout-bench: 7. flow control");
    sections.push(flow::section(flow::RUNS_IN_ALL).await?);
    eprintln!("fanout-bench: 8 and 9. the real stack on the local cloud, cost per million jobs");
    sections.extend(cloud::sections(&cloud::measure(runs).await?, cpu));
    eprintln!("fanout-bench: 10. fanout run as a whole process");
    sections.push(process::section(runs, &paths.fanout).await?);
    eprintln!("fanout-bench: 11. Lambda release profile");
    sections.push(coldstart::profile_section(runs, &paths.consumer, &paths.lambda_consumer).await?);
    eprintln!("fanout-bench: 12. producer reading a list");
    sections.push(lists::section(runs.min(lists::RUNS_IN_ALL), &paths.ministack).await?);
    eprintln!("fanout-bench: 13. AWS-side faults");
    sections.push(faults::section(
        &faults::measure(runs.min(faults::RUNS_IN_ALL)).await?,
    ));
    eprintln!("fanout-bench: 14. every budget used");
    sections.push(budgets::section(runs.min(budgets::RUNS_IN_ALL)).await?);
    let document = report::document(
        &sections,
        &report::machine(&paths.python),
        started.elapsed().as_secs_f64(),
    );
    std::fs::write(out, document).map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!(
        "fanout-bench: wrote {} in {:.0} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn dispatch(command: Command) -> Result<(), String> {
    match command {
        Command::All { out, runs, paths } => all(&out, runs, &paths).await,
        Command::Rate { runs } => print_sections(&[rate::section(runs).await?]),
        Command::Throughput { runs } => {
            let (throughput, dedupe) = throughput::sections(runs).await?;
            print_sections(&[throughput, dedupe])
        }
        Command::Peer { runs, paths } => {
            print_sections(&[peer::section(runs, &paths.python, &paths.peer_dir).await?.0])
        }
        Command::Produce { runs } => print_sections(&[produce::section(runs).await?]),
        Command::ColdStart { runs, paths } => print_sections(&[coldstart::section(
            runs,
            &paths.consumer,
            &paths.python,
            &paths.peer_dir,
        )
        .await?]),
        Command::Flow { runs } => print_sections(&[flow::section(runs).await?]),
        Command::Budgets { runs } => print_sections(&[budgets::section(runs).await?]),
        Command::Cloud { runs, paths } => {
            let run = cloud::measure(runs).await?;
            for tick in run
                .clean
                .iter()
                .chain(&run.slow)
                .chain(&run.fast)
                .chain(&run.ceiling)
                .chain(run.mixed.iter().map(|(t, _)| t))
                .chain([&run.duplicates, &run.transient])
            {
                eprintln!("{tick:#?}");
            }
            let cpu = peer::cpu_per_job(&paths.python, &paths.peer_dir).await?;
            print_sections(&cloud::sections(&run, cpu))
        }
        Command::Process { runs, paths } => {
            print_sections(&[process::section(runs, &paths.fanout).await?])
        }
        Command::Profile { runs, paths } => print_sections(&[coldstart::profile_section(
            runs,
            &paths.consumer,
            &paths.lambda_consumer,
        )
        .await?]),
        Command::Lists { runs, paths } => {
            print_sections(&[lists::section(runs, &paths.ministack).await?])
        }
        Command::Faults { runs } => {
            print_sections(&[faults::section(&faults::measure(runs).await?)])
        }
        Command::Target => {
            let server = fanout_testkit::target_server::TargetServer::start()
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", server.base_url());
            tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
            let stats = server.stats();
            eprintln!("fanout-bench target: {} calls", stats.calls);
            Ok(())
        }
        Command::Events { target, jobs, out } => {
            let events =
                workload::write_events(&workload::ok_targets(&target, jobs, None), 10, &out)
                    .await?;
            eprintln!("fanout-bench: {events} events in {}", out.display());
            Ok(())
        }
        Command::Drain {
            target,
            jobs,
            concurrency,
            duplicate_rate,
            state,
        } => {
            let stats =
                throughput::drain_child(&target, jobs, duplicate_rate, concurrency, &state).await?;
            println!(
                "{}",
                serde_json::to_string(&stats).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        Command::ListTick {
            rows,
            source,
            endpoint,
            file,
            state,
            discard,
        } => {
            let stats = lists::tick_child(&lists::TickArgs {
                rows,
                source,
                endpoint,
                file,
                state,
                discard,
            })
            .await?;
            println!(
                "{}",
                serde_json::to_string(&stats).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        Command::Replay {
            events,
            target,
            jobs,
        } => {
            let stats = peer::replay_child(&events, &target, jobs).await?;
            println!(
                "{}",
                serde_json::to_string(&stats).map_err(|e| e.to_string())?
            );
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match dispatch(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fanout-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
