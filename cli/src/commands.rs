//! The `fanout` command line: argument definitions and what each command does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use fanout_shared::config::check_rate;
use fanout_shared::embedded::Duplicates;
use fanout_shared::target_server::TargetServer;
use fanout_shared::PipelineConfig;

use crate::backend::{self, AwsNames, EmbeddedSettings, Pipeline};
use crate::dlq::DlqFilter;
use crate::event_source::EventSourceOptions;
use crate::run::{self, RunOptions};

/// The fanout operator command.
#[derive(Debug, Parser)]
#[command(name = "fanout", version, about = "Run, inspect and operate the fanout pipeline")]
pub struct Cli {
    /// Where the pipeline lives: the embedded state file, or SNS/SQS/DynamoDB.
    #[arg(long, global = true, value_enum, default_value = "embedded", env = "FANOUT_BACKEND")]
    pub backend: BackendKind,
    /// Embedded state file (`:memory:` for a throwaway run).
    #[arg(long, global = true, default_value = ".fanout/local.db", env = "FANOUT_STATE")]
    pub state: PathBuf,
    /// AWS resource names (the `--backend aws` commands).
    #[command(flatten)]
    pub aws: AwsArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// One SQLite file on this machine.
    Embedded,
    /// SNS, SQS and DynamoDB through the standard AWS SDK configuration.
    Aws,
}

/// Names of the AWS resources (`--backend aws`).
#[derive(Debug, Args)]
pub struct AwsArgs {
    /// SNS topic ARN.
    #[arg(long, global = true, env = "FANOUT_TOPIC_ARN")]
    pub topic_arn: Option<String>,
    /// SQS job queue URL.
    #[arg(long, global = true, env = "FANOUT_QUEUE_URL")]
    pub queue_url: Option<String>,
    /// SQS dead-letter queue URL.
    #[arg(long, global = true, env = "FANOUT_DLQ_URL")]
    pub dlq_url: Option<String>,
    /// DynamoDB idempotency table.
    #[arg(long, global = true, env = "FANOUT_TABLE_NAME")]
    pub table_name: Option<String>,
    /// CloudFormation stack whose outputs name topic, queue, DLQ and table (instead of the four
    /// above, which it overrides).
    #[arg(long, global = true, env = "FANOUT_STACK")]
    pub stack: Option<String>,
}

impl AwsArgs {
    /// `--stack` (or `FANOUT_STACK`), unless empty.
    pub fn stack_name(&self) -> Option<&str> {
        self.stack.as_deref().filter(|s| !s.is_empty())
    }
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Produce one tick, then consume until every job is settled.
    Run(RunArgs),
    /// Publish one tick (producer only).
    Produce(ProduceArgs),
    /// Drain the job queue through local consumer invocations.
    Consume(ConsumeArgs),
    /// Inspect and replay the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Run the deployed producer now, with the event its schedule sends (needs --stack).
    Trigger(crate::trigger::TriggerArgs),
    /// Config file tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The fleet's shared host states: budgets, current rates, circuits, pauses; pause, resume
    /// or re-budget a host at runtime.
    Hosts(crate::hosts::HostsArgs),
    /// Create topic, queue, DLQ, subscription and table where the SDK config points (emulators,
    /// trials); prints `export FANOUT_…=` lines.
    Provision {
        /// Prefix of every resource name.
        #[arg(long, default_value = "fanout")]
        prefix: String,
        /// Receives before SQS redrives a message to the DLQ.
        #[arg(long, default_value_t = 5)]
        max_receive_count: u32,
        /// The job queue's visibility timeout, seconds.
        #[arg(long, default_value_t = 30)]
        visibility_timeout: u32,
    },
}

/// `fanout config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config and show what it would do.
    Check {
        /// The config file.
        file: PathBuf,
        /// The stack's `maxConcurrency` (consumer instances at most).
        #[arg(long, default_value_t = 5)]
        concurrency: u32,
        /// The stack's consumer timeout, seconds.
        #[arg(long, default_value_t = 30.0)]
        function_timeout: f64,
        /// The schedule's period, seconds (the stack's default is rate(15 minutes)).
        #[arg(long, default_value_t = 900.0)]
        schedule_period: f64,
        /// The stack's batch size.
        #[arg(long, default_value_t = 10)]
        batch_size: u32,
    },
}

/// `fanout dlq …`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// What is in the DLQ, with each job's last error (reading does not consume anything).
    List {
        /// Which DLQ messages.
        #[command(flatten)]
        filter: FilterArgs,
        /// Print a JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Move DLQ messages back to the job queue, so the consumer runs them again.
    Replay(ReplayArgs),
}

/// Which DLQ messages a `dlq` command acts on (all given conditions hold).
#[derive(Debug, Args, Clone)]
pub struct FilterArgs {
    /// Only this target ID.
    #[arg(long)]
    pub target: Option<String>,
    /// Only messages whose reason or last error contains this text (case-insensitive).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only this target host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only this run ID.
    #[arg(long)]
    pub run: Option<String>,
}

/// `fanout dlq replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Which DLQ messages.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Show what would move; move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Move at most this many messages.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max: Option<u64>,
    /// Move at most this many messages per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// With an SQS move task (unfiltered replay on AWS): wait until it has finished.
    #[arg(long)]
    pub wait: bool,
    /// Seconds a message being moved stays hidden in the DLQ (a replay killed half way leaves
    /// its unmoved messages hidden this long).
    #[arg(long, default_value_t = 60.0)]
    pub hold: f64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

impl FilterArgs {
    fn filter(&self) -> DlqFilter {
        DlqFilter { target: self.target.clone(), reason: self.reason.clone(), host: self.host.clone(), run: self.run.clone() }
    }
}

/// Settings of the local event source and the embedded queue.
#[derive(Debug, Args, Clone)]
pub struct LocalArgs {
    /// Global outbound budget, requests/s (overrides the config).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Concurrent invocations (the event source's MaximumConcurrency).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Records per invocation (1..=10).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub batch_size: u32,
    /// Receives before the embedded queue redrives a message to the DLQ (default: the state
    /// file's setting, 5 for a new one).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_receive_count: Option<u32>,
    /// Fraction of messages the embedded topic delivers twice.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_rate: f64,
    /// Seconds a received message stays hidden.
    #[arg(long, default_value_t = 3.0)]
    pub visibility_timeout: f64,
    /// Seconds each invocation may run.
    #[arg(long, default_value_t = 3.0)]
    pub function_timeout: f64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `fanout run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline config file (JSON or YAML).
    #[arg(long, required_unless_present = "demo")]
    pub config: Option<PathBuf>,
    /// Start a demo target server and run 500 generated targets against it.
    #[arg(long, conflicts_with = "config")]
    pub demo: bool,
    /// The run ID (default: derived from the config name and the current hour).
    #[arg(long)]
    pub run_id: Option<String>,
    /// The local event source's settings.
    #[command(flatten)]
    pub local: LocalArgs,
}

/// `fanout produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// The pipeline config file.
    #[arg(long)]
    pub config: PathBuf,
    /// The run ID (default: derived from the config name and the current hour).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Receives before the embedded queue redrives a message to the DLQ (default: the state
    /// file's setting, 5 for a new one).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_receive_count: Option<u32>,
    /// Fraction of messages the embedded topic delivers twice.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_rate: f64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `fanout consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The pipeline config file (the consumer's budgets and allowed hosts).
    #[arg(long)]
    pub config: PathBuf,
    /// The local event source's settings.
    #[command(flatten)]
    pub local: LocalArgs,
}

/// Exit code for bad input.
const BAD_INPUT: u8 = 2;

/// Runs the parsed command line.
pub async fn main(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(code) => code,
        Err(Failure::BadInput(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(BAD_INPUT)
        }
        Err(Failure::Other(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command failed: bad input (exit 2) or anything else (exit 1).
pub(crate) enum Failure {
    BadInput(String),
    Other(String),
}

impl From<crate::stack::StackError> for Failure {
    fn from(e: crate::stack::StackError) -> Self {
        if e.is_bad_input() {
            Failure::BadInput(e.to_string())
        } else {
            Failure::Other(e.to_string())
        }
    }
}

impl From<run::RunError> for Failure {
    fn from(e: run::RunError) -> Self {
        Failure::Other(e.to_string())
    }
}

impl From<fanout_shared::BackendError> for Failure {
    fn from(e: fanout_shared::BackendError) -> Self {
        Failure::Other(e.to_string())
    }
}

pub(crate) fn load_config(path: &Path) -> Result<PipelineConfig, Failure> {
    PipelineConfig::load(path).map_err(|e| Failure::BadInput(e.to_string()))
}

fn duplicates(rate: f64) -> Result<Duplicates, Failure> {
    if !(0.0..=1.0).contains(&rate) {
        return Err(Failure::BadInput(format!("--duplicate-rate must be between 0 and 1, got {rate}")));
    }
    Ok(Duplicates { twice: rate, ..Duplicates::default() })
}

async fn pipeline(cli: &Cli, max_receive_count: Option<u32>, duplicate_rate: f64) -> Result<Pipeline, Failure> {
    match cli.backend {
        BackendKind::Embedded if cli.aws.stack_name().is_some() => Err(Failure::BadInput("--stack (FANOUT_STACK) needs --backend aws".into())),
        BackendKind::Embedded => {
            Ok(backend::embedded(&EmbeddedSettings { state: cli.state.clone(), max_receive_count, duplicates: duplicates(duplicate_rate)? })?)
        }
        BackendKind::Aws => {
            if duplicate_rate > 0.0 {
                return Err(Failure::BadInput("--duplicate-rate only applies to the embedded backend".into()));
            }
            let sdk = fanout_shared::aws::load_sdk_config().await;
            let names = match cli.aws.stack_name() {
                Some(stack) => crate::stack::StackOutputs::describe(&sdk, stack).await?.names()?,
                None => AwsNames {
                    topic_arn: cli.aws.topic_arn.clone(),
                    queue_url: cli.aws.queue_url.clone(),
                    dlq_url: cli.aws.dlq_url.clone(),
                    table_name: cli.aws.table_name.clone(),
                },
            };
            let missing = names.missing();
            if !missing.is_empty() {
                let list = missing.join(", ");
                return Err(Failure::BadInput(format!(
                    "{list} not set (flags or environment, or --stack NAME; `fanout provision` or the stack outputs give them)"
                )));
            }
            Ok(backend::aws_with(&sdk, &names)?)
        }
    }
}

pub(crate) fn seconds(name: &str, value: f64) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| Failure::BadInput(format!("--{name} must be a positive number of seconds, got {value}")))
}

/// SQS long polls in whole seconds (a short poll may miss messages); the embedded queue polls
/// locally.
fn poll_wait(backend: BackendKind) -> Duration {
    match backend {
        BackendKind::Aws => Duration::from_secs(1),
        BackendKind::Embedded => Duration::from_millis(100),
    }
}

fn run_options(local: &LocalArgs, backend: BackendKind) -> Result<RunOptions, Failure> {
    if local.concurrency == 0 {
        return Err(Failure::BadInput("--concurrency must be at least 1".into()));
    }
    if let Some(Err(e)) = local.rate.map(check_rate) {
        return Err(Failure::BadInput(format!("--rate {e}")));
    }
    Ok(RunOptions {
        event_source: EventSourceOptions {
            concurrency: local.concurrency,
            batch_size: local.batch_size,
            visibility_timeout: seconds("visibility-timeout", local.visibility_timeout)?,
            function_timeout: seconds("function-timeout", local.function_timeout)?,
            poll_wait: poll_wait(backend),
            timeout: seconds("timeout", local.timeout)?,
            crash: None,
        },
        rate_override: local.rate,
        quiet: local.json,
    })
}

/// `local/<config name>@<current hour>`: re-running within the hour resumes the same tick.
fn default_run_id(config: &Path) -> String {
    let stem = config.file_stem().and_then(|s| s.to_str()).unwrap_or("config");
    format!("local/{stem}@{}", chrono::Utc::now().format("%Y-%m-%dT%H:00:00Z"))
}

/// A run ID the producer accepts, or bad input (exit 2) before anything is opened.
fn checked_run_id(run_id: String) -> Result<String, Failure> {
    fanout_shared::job::check_run_id(&run_id).map_err(|e| Failure::BadInput(format!("--run-id: {e}")))?;
    Ok(run_id)
}

async fn dispatch(cli: Cli) -> Result<ExitCode, Failure> {
    match &cli.command {
        Command::Run(args) => run_command(&cli, args).await,
        Command::Produce(args) => {
            let config = load_config(&args.config)?;
            let run_id = checked_run_id(args.run_id.clone().unwrap_or_else(|| default_run_id(&args.config)))?;
            let pipeline = pipeline(&cli, args.max_receive_count, args.duplicate_rate).await?;
            let summary = run::produce_tick(&config, &pipeline, &run_id).await?;
            if args.json {
                println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            } else {
                println!(
                    "run {}: published {} of {} jobs in {} PublishBatch calls ({} ms)",
                    summary.run_id,
                    summary.published,
                    summary.jobs,
                    summary.publish_calls,
                    summary.elapsed.as_millis()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Consume(args) => {
            let config = load_config(&args.config)?;
            let pipeline = pipeline(&cli, args.local.max_receive_count, args.local.duplicate_rate).await?;
            let options = run_options(&args.local, cli.backend)?;
            let outcome = run::consume(&config, &pipeline, &options, pipeline.queue.depth().await?.visible).await?;
            let summary = crate::report::ConsumeSummary::new(&outcome);
            let text = if args.local.json { serde_json::to_string(&summary) } else { serde_json::to_string_pretty(&summary) };
            println!("{}", text.unwrap_or_default());
            Ok(if outcome.drained { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Provision { prefix, max_receive_count, visibility_timeout } => {
            let sdk = fanout_shared::aws::load_sdk_config().await;
            let provisioned = crate::provision::provision(&sdk, prefix, *max_receive_count, *visibility_timeout).await?;
            print!("{provisioned}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq(DlqCommand::List { filter, json }) => {
            let pipeline = pipeline(&cli, None, 0.0).await?;
            let mut entries = crate::dlq::list(pipeline.dlq.as_ref(), pipeline.store.as_ref(), &filter.filter(), poll_wait(cli.backend)).await?;
            entries.sort_by(|a, b| (&a.run_id, &a.target_id).cmp(&(&b.run_id, &b.target_id)));
            if *json {
                println!("{}", serde_json::to_string(&entries).unwrap_or_default());
            } else if entries.is_empty() {
                println!("the DLQ has no messages{}", if filter.filter().is_empty() { "" } else { " matching the filter" });
            } else {
                print!("{}", crate::dlq::table(&entries));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq(DlqCommand::Replay(args)) => replay_command(&cli, args).await,
        Command::Hosts(args) => hosts_command(&cli, args).await,
        Command::Trigger(args) => crate::trigger::command(&cli, args).await,
        Command::Config(ConfigCommand::Check { file, concurrency, function_timeout, schedule_period, batch_size }) => {
            let config = load_config(file)?;
            let fit = crate::check::StackFit {
                concurrency: *concurrency,
                function_timeout_s: seconds("function-timeout", *function_timeout)?.as_secs_f64(),
                schedule_period_s: seconds("schedule-period", *schedule_period)?.as_secs_f64(),
                batch_size: *batch_size,
            };
            print!("{}", crate::check::describe(&config, file, &fit));
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_command(cli: &Cli, args: &RunArgs) -> Result<ExitCode, Failure> {
    let options = run_options(&args.local, cli.backend)?;
    // The demo server lives as long as this function.
    let (config, default_run_id, _server) = match &args.config {
        Some(path) => (load_config(path)?, default_run_id(path), None),
        None => {
            let server = TargetServer::start().await.map_err(|e| Failure::Other(format!("demo server: {e}")))?;
            let config = crate::demo::demo_config(&server.base_url());
            let run_id = format!("demo@{}", chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"));
            (config, run_id, Some(server))
        }
    };
    let run_id = checked_run_id(args.run_id.clone().unwrap_or(default_run_id))?;
    let pipeline = pipeline(cli, args.local.max_receive_count, args.local.duplicate_rate).await?;
    let (summary, outcome) = run::run(&config, &pipeline, &run_id, &options).await?;
    if args.local.json {
        println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    } else {
        print!("{}", summary.table());
    }
    if !outcome.drained {
        eprintln!("timed out after {:.0} s with jobs still queued", options.event_source.timeout.as_secs_f64());
        return Ok(ExitCode::FAILURE);
    }
    Ok(if summary.lost > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

async fn hosts_command(cli: &Cli, args: &crate::hosts::HostsArgs) -> Result<ExitCode, Failure> {
    let config = load_config(&args.config)?;
    let pipeline = pipeline(cli, None, 0.0).await?;
    let rows = match &args.action {
        None => crate::hosts::list(&config, pipeline.fleet.as_ref()).await?,
        Some(action) => vec![crate::hosts::act(&config, pipeline.fleet.as_ref(), action).await.map_err(|e| match e {
            crate::hosts::HostsError::BadInput(m) => Failure::BadInput(m),
            crate::hosts::HostsError::Backend(e) => Failure::from(e),
        })?],
    };
    if args.json {
        println!("{}", serde_json::to_string(&rows).unwrap_or_default());
    } else {
        print!("{}", crate::hosts::table(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay_command(cli: &Cli, args: &ReplayArgs) -> Result<ExitCode, Failure> {
    if let Some(Err(e)) = args.rate.map(check_rate) {
        return Err(Failure::BadInput(format!("--rate (messages per second) {e}")));
    }
    let options = crate::dlq::ReplayOptions {
        filter: args.filter.filter(),
        max: args.max.map(|m| usize::try_from(m).unwrap_or(usize::MAX)),
        rate: args.rate,
        dry_run: args.dry_run,
        wait: args.wait,
        hold: seconds("hold", args.hold)?,
        poll_wait: poll_wait(cli.backend),
    };
    let pipeline = pipeline(cli, None, 0.0).await?;
    let total = match options.max {
        Some(max) => max as u64,
        None => pipeline.dlq.depth().await?.visible,
    };
    let view = crate::report::ProgressView::counting(total, "moved", args.json);
    let targets = crate::dlq::ReplayTargets {
        queue: pipeline.queue.as_ref(),
        dlq: pipeline.dlq.as_ref(),
        store: pipeline.store.as_ref(),
        mover: pipeline.mover.as_deref(),
    };
    let summary = crate::dlq::replay(&targets, &options, &|s| view.update_replay(s)).await?;
    view.finish();
    if args.json {
        println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    } else {
        if summary.dry_run && !summary.would_move.is_empty() {
            print!("{}", crate::dlq::table(&summary.would_move));
        }
        print!("{}", crate::report::replay_table(&summary));
    }
    Ok(if summary.failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
