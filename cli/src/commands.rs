//! What each `fanout` command does: dispatch, exit codes, and the wiring from arguments to
//! the library. The arguments themselves are defined in [`crate::args`].

use std::process::ExitCode;
use std::time::Duration;

use fanout_producer::ListReaders;
use fanout_shared::runs::RunStatus;
use fanout_shared::sources::ListsHome;
use fanout_shared::{check_rate, PipelineConfig};
use fanout_testkit::target_server::TargetServer;

use crate::args::{
    BackendKind, Cli, Command, ConfigCommand, ConsumeArgs, DlqCommand, FilterArgs, LocalArgs,
    ProduceArgs, ReplayArgs, RunArgs, RunsCommand, TargetsCommand,
};
use crate::backend::{self, EmbeddedSettings, Pipeline};
use crate::event_source::EventSourceOptions;
use crate::failure::{Failure, RUN_FAILED};
use crate::input::{checked_run_id, default_run_id, duplicates, load_config, seconds};
use crate::run::{self, RunOptions};

/// Runs the parsed command line.
pub async fn main(cli: Cli) -> ExitCode {
    dispatch(cli).await.unwrap_or_else(Failure::report)
}

async fn pipeline(
    cli: &Cli,
    max_receive_count: Option<u32>,
    duplicate_rate: f64,
) -> Result<Pipeline, Failure> {
    match cli.backend {
        BackendKind::Embedded if cli.aws.stack_name().is_some() => Err(Failure::BadInput(
            "--stack (FANOUT_STACK) needs --backend aws".into(),
        )),
        BackendKind::Embedded => Ok(backend::embedded(&EmbeddedSettings {
            state: cli.state.clone(),
            max_receive_count,
            duplicates: duplicates(duplicate_rate)?,
        })?),
        BackendKind::Aws => {
            if duplicate_rate > 0.0 {
                return Err(Failure::BadInput(
                    "--duplicate-rate only applies to the embedded backend".into(),
                ));
            }
            let sdk = fanout_shared::aws::load_sdk_config().await;
            let mut names = match cli.aws.stack_name() {
                Some(stack) => crate::stack::StackOutputs::describe(&sdk, stack)
                    .await?
                    .pipeline(cli.aws.pipeline_name())?
                    .names()?,
                None => cli.aws.names().map_err(|missing| {
                    Failure::BadInput(format!(
                        "{} not set (flags or environment, or --stack NAME; `fanout provision` or the stack outputs give them)",
                        missing.join(", ")
                    ))
                })?,
            };
            if let Some(lists) = cli.aws.lists.as_deref().filter(|l| !l.is_empty()) {
                names.lists = Some(
                    ListsHome::parse(lists)
                        .map_err(|e| Failure::BadInput(format!("--lists/FANOUT_LISTS: {e}")))?,
                );
            }
            Ok(backend::aws_with(&sdk, &names))
        }
    }
}

/// What `targets` commands read lists with: the pipeline's bucket and list home with
/// `--backend aws`; else S3 from the standard configuration for `s3://` sources, and `lists/`
/// beside the config for `lists://` ones.
async fn list_readers(cli: &Cli, config: &PipelineConfig) -> Result<ListReaders, Failure> {
    Ok(match cli.backend {
        BackendKind::Aws => {
            let pipeline = pipeline(cli, None, 0.0).await?;
            ListReaders {
                lists: pipeline.lists.clone(),
                ..ListReaders::new(pipeline.objects.clone())
            }
        }
        BackendKind::Embedded => ListReaders::new(crate::targets::objects_for(config).await),
    })
}

/// SQS long polls in whole seconds (a short poll may miss messages); the embedded queue polls
/// locally.
fn poll_wait(backend: BackendKind) -> Duration {
    match backend {
        BackendKind::Aws => Duration::from_secs(1),
        BackendKind::Embedded => Duration::from_millis(100),
    }
}

/// The pipeline name of runs the CLI drives (metrics' `Pipeline`, events' `pipeline`):
/// `--pipeline`, else the stack's pipeline's `PipelineName` output (the stack's name for a stack
/// from before it), else `fanout`.
async fn pipeline_name(cli: &Cli) -> Result<String, Failure> {
    if let Some(name) = cli.aws.pipeline_name() {
        return Ok(name.to_owned());
    }
    // Only a deployed stack has outputs to read (the embedded backend refuses `--stack` when
    // its pipeline is built, with its own message).
    let (BackendKind::Aws, Some(stack)) = (cli.backend, cli.aws.stack_name()) else {
        return Ok("fanout".into());
    };
    let sdk = fanout_shared::aws::load_sdk_config().await;
    let outputs = crate::stack::StackOutputs::describe(&sdk, stack)
        .await?
        .pipeline(None)?;
    Ok(outputs
        .outputs
        .get(crate::stack::PIPELINE_NAME)
        .cloned()
        .unwrap_or_else(|| stack.to_owned()))
}

fn run_options(local: &LocalArgs, cli: &Cli, pipeline_name: String) -> Result<RunOptions, Failure> {
    let backend = cli.backend;
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
        },
        rate_override: local.rate,
        quiet: local.json,
        pipeline_name,
        separate_instances: false,
    })
}

async fn dispatch(cli: Cli) -> Result<ExitCode, Failure> {
    match &cli.command {
        Command::Run(args) => run_command(&cli, args).await,
        Command::Produce(args) => produce_command(&cli, args).await,
        Command::Consume(args) => consume_command(&cli, args).await,
        Command::Provision {
            prefix,
            max_receive_count,
            visibility_timeout,
        } => provision_command(prefix, *max_receive_count, *visibility_timeout).await,
        Command::Dlq(DlqCommand::List { filter, json }) => {
            dlq_list_command(&cli, filter, *json).await
        }
        Command::Dlq(DlqCommand::Replay(args)) => replay_command(&cli, args).await,
        Command::Runs(command) => runs_command(&cli, command).await,
        Command::Hosts(args) => hosts_command(&cli, args).await,
        Command::Trigger(args) => crate::trigger::command(&cli, args).await,
        Command::Config(command) => config_check_command(command).await,
        Command::Targets(TargetsCommand::Show {
            config,
            source,
            json,
            all,
        }) => {
            let config = load_config(config)?;
            let readers = list_readers(&cli, &config).await?;
            crate::targets::show(&config, &readers, source.as_deref(), *json, *all).await
        }
        Command::Targets(TargetsCommand::Push {
            file,
            config,
            source,
            json,
        }) => {
            let config = load_config(config)?;
            let readers = list_readers(&cli, &config).await?;
            crate::targets::push(&config, &readers, file, source.as_deref(), *json).await
        }
    }
}

async fn produce_command(cli: &Cli, args: &ProduceArgs) -> Result<ExitCode, Failure> {
    let config = load_config(&args.config)?;
    let run_id = checked_run_id(
        args.run_id
            .clone()
            .unwrap_or_else(|| default_run_id(&args.config)),
    )?;
    let pipeline = pipeline(cli, args.max_receive_count, args.duplicate_rate).await?;
    let name = pipeline_name(cli).await?;
    let summary = run::produce_tick(&config, &pipeline, &run_id, &name).await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    } else {
        let started = match &summary.started {
            fanout_producer::Started::New => String::new(),
            fanout_producer::Started::Resumed => " (the run existed: published again)".to_owned(),
            fanout_producer::Started::AlreadyEnded(status) => format!(
                " (the run already ended {}: nothing published)",
                status.as_str()
            ),
            fanout_producer::Started::Skipped(why) => format!(" (skipped: {why})"),
        };
        println!(
            "run {}{started}: published {} of {} jobs in {} PublishBatch calls ({} ms)",
            summary.run_id,
            summary.published,
            summary.jobs,
            summary.publish_calls,
            summary.elapsed.as_millis()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn consume_command(cli: &Cli, args: &ConsumeArgs) -> Result<ExitCode, Failure> {
    let config = load_config(&args.config)?;
    let pipeline = pipeline(cli, args.local.max_receive_count, args.local.duplicate_rate).await?;
    let options = run_options(&args.local, cli, pipeline_name(cli).await?)?;
    let outcome = run::consume(
        &config,
        &pipeline,
        &options,
        pipeline.queue.depth().await?.visible,
    )
    .await?;
    let summary = crate::report::ConsumeSummary::new(&outcome);
    let text = if args.local.json {
        serde_json::to_string(&summary)
    } else {
        serde_json::to_string_pretty(&summary)
    };
    println!("{}", text.unwrap_or_default());
    Ok(if outcome.drained {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn provision_command(
    prefix: &str,
    max_receive_count: u32,
    visibility_timeout: u32,
) -> Result<ExitCode, Failure> {
    let sdk = fanout_shared::aws::load_sdk_config().await;
    let provisioned =
        crate::provision::provision(&sdk, prefix, max_receive_count, visibility_timeout).await?;
    print!("{provisioned}");
    Ok(ExitCode::SUCCESS)
}

async fn dlq_list_command(cli: &Cli, filter: &FilterArgs, json: bool) -> Result<ExitCode, Failure> {
    let pipeline = pipeline(cli, None, 0.0).await?;
    let mut entries = crate::dlq::list(
        pipeline.dlq.as_ref(),
        pipeline.store.as_ref(),
        &filter.filter(),
        poll_wait(cli.backend),
    )
    .await?;
    entries.sort_by(|a, b| (&a.run_id, &a.target_id).cmp(&(&b.run_id, &b.target_id)));
    if json {
        println!("{}", serde_json::to_string(&entries).unwrap_or_default());
    } else if entries.is_empty() {
        println!(
            "the DLQ has no messages{}",
            if filter.filter().is_empty() {
                ""
            } else {
                " matching the filter"
            }
        );
    } else {
        print!("{}", crate::dlq::table(&entries));
    }
    Ok(ExitCode::SUCCESS)
}

async fn config_check_command(command: &ConfigCommand) -> Result<ExitCode, Failure> {
    let ConfigCommand::Check {
        file,
        concurrency,
        function_timeout,
        schedule_period,
        batch_size,
        rows,
        source,
    } = command;
    let config = load_config(file)?;
    let fit = crate::check::StackFit {
        concurrency: *concurrency,
        function_timeout_s: seconds("function-timeout", *function_timeout)?.as_secs_f64(),
        schedule_period_s: seconds("schedule-period", *schedule_period)?.as_secs_f64(),
        batch_size: *batch_size,
    };
    print!("{}", crate::check::describe(&config, file, &fit));
    if let Some(rows) = rows {
        let source = crate::targets::pushable_source(&config, source.as_deref())?;
        let name = rows.to_string_lossy();
        let read = crate::targets::check_rows(&config, rows, source, &name).await?;
        println!(
            "rows {}: {} rows for source {}, every one renders (digest {})",
            rows.display(),
            read.rows,
            source.name,
            read.digest
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn runs_command(cli: &Cli, command: &RunsCommand) -> Result<ExitCode, Failure> {
    let pipeline = pipeline(cli, None, 0.0).await?;
    let now = fanout_shared::now_ms();
    match command {
        RunsCommand::List { limit, json } => {
            let runs = pipeline.runs.list(*limit).await?;
            if *json {
                println!("{}", serde_json::to_string(&runs).unwrap_or_default());
            } else if runs.is_empty() {
                println!("no runs yet");
            } else {
                print!("{}", crate::runs::table(&runs, now));
            }
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Show { run_id, json } => {
            let Some(run) = pipeline.runs.get(run_id).await? else {
                return Err(Failure::BadInput(format!(
                    "no run {run_id:?} in the ledger (`fanout runs list` shows the latest)"
                )));
            };
            if *json {
                println!("{}", serde_json::to_string(&run).unwrap_or_default());
            } else {
                print!("{}", crate::runs::details(&run, now));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_command(cli: &Cli, args: &RunArgs) -> Result<ExitCode, Failure> {
    let options = run_options(&args.local, cli, pipeline_name(cli).await?)?;
    // The demo server lives as long as this function.
    let (config, default_run_id, _server) = match &args.config {
        Some(path) => (load_config(path)?, default_run_id(path), None),
        None => {
            let server = TargetServer::start()
                .await
                .map_err(|e| Failure::Other(format!("demo server: {e}")))?;
            let config = crate::demo::demo_config(&server.base_url());
            let run_id = format!(
                "demo@{}",
                chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ")
            );
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
        eprintln!(
            "timed out after {:.0} s with jobs still queued",
            options.event_source.timeout.as_secs_f64()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(if summary.lost > 0 {
        ExitCode::FAILURE
    } else if summary.status == RunStatus::Failed {
        ExitCode::from(RUN_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

async fn hosts_command(cli: &Cli, args: &crate::hosts::HostsArgs) -> Result<ExitCode, Failure> {
    let config = load_config(&args.config)?;
    let pipeline = pipeline(cli, None, 0.0).await?;
    let rows = match &args.action {
        None => crate::hosts::list(&config, pipeline.fleet.as_ref()).await?,
        Some(action) => vec![crate::hosts::act(&config, pipeline.fleet.as_ref(), action).await?],
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
        return Err(Failure::BadInput(format!(
            "--rate (messages per second) {e}"
        )));
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
    Ok(if summary.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
