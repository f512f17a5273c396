//! The `fanout` command line's definitions (clap): every command, flag and environment
//! variable, with the help text users see. What each command does is in [`crate::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backend::ResourceNames;
use crate::dlq::DlqFilter;

/// The fanout operator command.
#[derive(Debug, Parser)]
#[command(
    name = "fanout",
    version,
    about = "Run, inspect and operate the fanout pipeline"
)]
pub struct Cli {
    /// Where the pipeline lives: the embedded state file, or SNS/SQS/DynamoDB.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "embedded",
        env = "FANOUT_BACKEND"
    )]
    pub(crate) backend: BackendKind,
    /// Embedded state file (`:memory:` for a throwaway run).
    #[arg(
        long,
        global = true,
        default_value = ".fanout/local.db",
        env = "FANOUT_STATE"
    )]
    pub(crate) state: PathBuf,
    /// AWS resource names (the `--backend aws` commands).
    #[command(flatten)]
    pub(crate) aws: AwsArgs,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where the pipeline's state lives: one SQLite file on this machine, or a deployed stack's
/// AWS resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendKind {
    /// One SQLite file on this machine.
    Embedded,
    /// SNS, SQS and DynamoDB through the standard AWS SDK configuration.
    Aws,
}

/// Names of the AWS resources (`--backend aws`).
#[derive(Debug, Args)]
pub(crate) struct AwsArgs {
    /// SNS topic ARN.
    #[arg(long, global = true, env = "FANOUT_TOPIC_ARN")]
    pub(crate) topic_arn: Option<String>,
    /// SQS job queue URL.
    #[arg(long, global = true, env = "FANOUT_QUEUE_URL")]
    pub(crate) queue_url: Option<String>,
    /// SQS dead-letter queue URL.
    #[arg(long, global = true, env = "FANOUT_DLQ_URL")]
    pub(crate) dlq_url: Option<String>,
    /// DynamoDB idempotency table.
    #[arg(long, global = true, env = "FANOUT_TABLE_NAME")]
    pub(crate) table_name: Option<String>,
    /// The list home of `lists://` sources, `s3://bucket/prefix/` (the stack's `ListsLocation`).
    #[arg(long, global = true, env = "FANOUT_LISTS")]
    pub(crate) lists: Option<String>,
    /// CloudFormation stack whose outputs name topic, queue, DLQ and table (instead of the four
    /// above, which it overrides).
    #[arg(long, global = true, env = "FANOUT_STACK")]
    pub(crate) stack: Option<String>,
    /// The pipeline's name: with `--stack`, which of the stack's pipelines (its `PipelineName`
    /// output; needed when the stack holds several); in run events and metrics of `fanout run`
    /// and `produce`.
    #[arg(long, global = true, env = "FANOUT_PIPELINE")]
    pub(crate) pipeline: Option<String>,
}

impl AwsArgs {
    /// `--stack` (or `FANOUT_STACK`), unless empty.
    pub(crate) fn stack_name(&self) -> Option<&str> {
        self.stack.as_deref().filter(|s| !s.is_empty())
    }

    /// `--pipeline` (or `FANOUT_PIPELINE`), unless empty.
    pub(crate) fn pipeline_name(&self) -> Option<&str> {
        self.pipeline.as_deref().filter(|s| !s.is_empty())
    }

    /// The four resources these flags (or `FANOUT_*` variables) name; `Err` lists every one
    /// missing, so the caller can say all of them at once.
    pub(crate) fn names(&self) -> Result<ResourceNames, Vec<&'static str>> {
        let given = [
            (&self.topic_arn, "FANOUT_TOPIC_ARN"),
            (&self.queue_url, "FANOUT_QUEUE_URL"),
            (&self.dlq_url, "FANOUT_DLQ_URL"),
            (&self.table_name, "FANOUT_TABLE_NAME"),
        ];
        match given.map(|(value, _)| value.clone()) {
            [Some(topic_arn), Some(queue_url), Some(dlq_url), Some(table_name)] => {
                Ok(ResourceNames {
                    topic_arn,
                    queue_url,
                    dlq_url,
                    table_name,
                    lists: None,
                })
            }
            _ => Err(given
                .into_iter()
                .filter(|(value, _)| value.is_none())
                .map(|(_, var)| var)
                .collect()),
        }
    }
}

/// What `fanout` does: one subcommand per operator task.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Produce one tick, then consume until every job is settled.
    Run(RunArgs),
    /// Publish one tick (producer only).
    Produce(ProduceArgs),
    /// Drain the job queue through local consumer invocations.
    Consume(ConsumeArgs),
    /// Inspect and replay the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The run ledger: each tick's status, counts, failures and duration.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Run the deployed producer now, with the event its schedule sends (needs --stack).
    Trigger(crate::trigger::TriggerArgs),
    /// Config file tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The lists a tick reads: what the next tick would call.
    #[command(subcommand)]
    Targets(TargetsCommand),
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

/// `fanout runs …`.
#[derive(Debug, Subcommand)]
pub(crate) enum RunsCommand {
    /// The latest runs, newest first.
    List {
        /// How many runs.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// One JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// One run: status, counts, failures by reason and by host, timing.
    Show {
        /// The run's ID, as `fanout runs list` prints it.
        run_id: String,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// `fanout config …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
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
        /// Also check this list against its source's template, every row as a tick reads it.
        #[arg(long)]
        rows: Option<PathBuf>,
        /// The source `--rows` is for (needed when several sources read a list).
        #[arg(long, requires = "rows")]
        source: Option<String>,
    },
}

/// `fanout targets …`.
#[derive(Debug, Subcommand)]
pub(crate) enum TargetsCommand {
    /// Where each source reads from, its row count and a sample of the rendered calls (from the
    /// config alone: file and inline sources are read as the producer reads them).
    Show {
        /// The config file.
        #[arg(long, env = "FANOUT_CONFIG")]
        config: PathBuf,
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// A JSON array of `{"id", "method", "url"}` on stdout.
        #[arg(long)]
        json: bool,
        /// Every call, not a sample.
        #[arg(long)]
        all: bool,
    },
    /// Check a list against its source's template (every row, as a tick would read it) and,
    /// if every row is good, put it where the source reads from: the next tick calls it, no
    /// deploy. `lists://` sources go to the stack's list home (`--backend aws --stack NAME`),
    /// or to `lists/` beside the config with the embedded backend.
    Push {
        /// The list (JSON Lines, JSON array or CSV; `.gz` for gzip).
        file: PathBuf,
        /// The config file.
        #[arg(long, env = "FANOUT_CONFIG")]
        config: PathBuf,
        /// The source the list is for (needed when the config has several that can be pushed).
        #[arg(long)]
        source: Option<String>,
        /// Print what was pushed as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `fanout dlq …`.
#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
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
pub(crate) struct FilterArgs {
    /// Only this target ID.
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// Only messages whose reason or last error contains this text (case-insensitive).
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// Only this target host.
    #[arg(long)]
    pub(crate) host: Option<String>,
    /// Only this run ID.
    #[arg(long)]
    pub(crate) run: Option<String>,
}

/// `fanout dlq replay`.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// Which DLQ messages.
    #[command(flatten)]
    pub(crate) filter: FilterArgs,
    /// Show what would move; move nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Move at most this many messages.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max: Option<u64>,
    /// Move at most this many messages per second.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// With an SQS move task (unfiltered replay on AWS): wait until it has finished.
    #[arg(long)]
    pub(crate) wait: bool,
    /// Seconds a message being moved stays hidden in the DLQ (a replay killed half way leaves
    /// its unmoved messages hidden this long).
    #[arg(long, default_value_t = 60.0)]
    pub(crate) hold: f64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

impl FilterArgs {
    /// The DLQ filter these flags describe.
    pub(crate) fn filter(&self) -> DlqFilter {
        DlqFilter {
            target: self.target.clone(),
            reason: self.reason.clone(),
            host: self.host.clone(),
            run: self.run.clone(),
        }
    }
}

/// Settings of the local event source and the embedded queue.
#[derive(Debug, Args, Clone)]
pub(crate) struct LocalArgs {
    /// Global outbound budget, requests/s (overrides the config).
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Concurrent invocations (the event source's MaximumConcurrency).
    #[arg(long, default_value_t = 4)]
    pub(crate) concurrency: usize,
    /// Records per invocation (1..=10).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub(crate) batch_size: u32,
    /// Receives before the embedded queue redrives a message to the DLQ (default: the state
    /// file's setting, 5 for a new one).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_receive_count: Option<u32>,
    /// Fraction of messages the embedded topic delivers twice.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) duplicate_rate: f64,
    /// Seconds a received message stays hidden.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) visibility_timeout: f64,
    /// Seconds each invocation may run.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) function_timeout: f64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    pub(crate) timeout: f64,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `fanout run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The pipeline config file (JSON or YAML).
    #[arg(long, required_unless_present = "demo")]
    pub(crate) config: Option<PathBuf>,
    /// Start a demo target server and run 500 generated targets against it.
    #[arg(long, conflicts_with = "config")]
    pub(crate) demo: bool,
    /// The run ID (default: derived from the config name and the current hour).
    #[arg(long)]
    pub(crate) run_id: Option<String>,
    /// The local event source's settings.
    #[command(flatten)]
    pub(crate) local: LocalArgs,
}

/// `fanout produce`.
#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    /// The pipeline config file.
    #[arg(long)]
    pub(crate) config: PathBuf,
    /// The run ID (default: derived from the config name and the current hour).
    #[arg(long)]
    pub(crate) run_id: Option<String>,
    /// Receives before the embedded queue redrives a message to the DLQ (default: the state
    /// file's setting, 5 for a new one).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_receive_count: Option<u32>,
    /// Fraction of messages the embedded topic delivers twice.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) duplicate_rate: f64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `fanout consume`.
#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    /// The pipeline config file (the consumer's budgets and allowed hosts).
    #[arg(long)]
    pub(crate) config: PathBuf,
    /// The local event source's settings.
    #[command(flatten)]
    pub(crate) local: LocalArgs,
}
