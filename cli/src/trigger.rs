//! `fanout trigger`: runs the deployed producer now, with the input one of its EventBridge
//! Scheduler schedules sends, and with `--wait` follows the tick until every job is settled
//! (succeeded or in the DLQ).
//!
//! The function and the schedules come from the stack's outputs (`ProducerFunctionName`,
//! `ScheduleNames`), so the same command ticks a stack on AWS and one in the local cloud.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aws_sdk_lambda::error::DisplayErrorContext;
use aws_sdk_lambda::primitives::Blob;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};

use fanout_producer::ListReaders;
use fanout_producer::{Summary, WatchdogAnswer};
use fanout_shared::{BackendError, IdempotencyStore, PipelineConfig, Queue, Status};

use crate::args::Cli;
use crate::failure::Failure;
use crate::input::{load_config, seconds};
use crate::settle::{settle, Settlement};
use crate::stack::{StackOutputs, PRODUCER_FUNCTION, SCHEDULE_NAMES};

/// `fanout trigger`.
#[derive(Debug, Args)]
pub(crate) struct TriggerArgs {
    /// The tick's scheduled time (RFC 3339; default: now, to the second). Giving a past tick's
    /// time re-runs that tick: same run ID, same message IDs, so settled jobs are skipped.
    #[arg(long, conflicts_with = "run_id")]
    pub time: Option<String>,
    /// Invoke with `{"run_id": ID}` (a manual run) instead of a schedule's input.
    #[arg(long)]
    pub run_id: Option<String>,
    /// The schedule whose tick this is (its name in the stack's `schedules`; default: the
    /// first). The run ID is the one that schedule's tick at `--time` gets.
    #[arg(long, conflicts_with = "run_id")]
    pub schedule: Option<String>,
    /// Wait until every job of the tick is succeeded or in the DLQ.
    #[arg(long, requires = "config")]
    pub wait: bool,
    /// The config the stack was deployed with: its targets name the tick's jobs (for --wait).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Run the watchdog now instead of a tick (`{"watchdog": true}`, as its 5-minute rule
    /// does): finishes settled runs whose finisher died, puts missed completion events, reports
    /// overdue runs.
    #[arg(long, conflicts_with_all = ["time", "run_id", "wait"])]
    pub watchdog: bool,
}

/// Why a trigger failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TriggerError {
    /// The Invoke call failed (no such function, credentials, network).
    #[error("invoking {function}: {message}")]
    Invoke {
        /// The function.
        function: String,
        /// The SDK's error.
        message: String,
    },
    /// The producer ran and failed.
    #[error("the producer {function} failed: {message}")]
    Function {
        /// The function.
        function: String,
        /// Its error message.
        message: String,
    },
    /// `--schedule` names none of the stack's schedules.
    #[error("stack {stack} has no schedule {asked:?}; its schedules: {}", .known.join(", "))]
    NoSuchSchedule {
        /// The stack.
        stack: String,
        /// The name given.
        asked: String,
        /// The stack's schedules.
        known: Vec<String>,
    },
    /// The producer answered something that is not its summary.
    #[error("the producer {function} answered {answer:?}: not a tick summary ({reason})")]
    Answer {
        /// The function.
        function: String,
        /// The answer, as text.
        answer: String,
        /// The parse error.
        reason: String,
    },
}

/// The input the schedule `name` sends for `time` (the stack's schedules send exactly these
/// keys): the producer derives the run ID from the name and the time, as for a scheduled tick.
pub(crate) fn schedule_input(name: &str, time: DateTime<Utc>) -> Value {
    json!({
        "schedule": name,
        "scheduled_time": time.to_rfc3339_opts(SecondsFormat::Secs, true),
    })
}

/// Invokes `function` synchronously with `event` and returns its tick summary.
pub(crate) async fn invoke_producer(
    sdk: &aws_config::SdkConfig,
    function: &str,
    event: &Value,
) -> Result<Summary, TriggerError> {
    let answer = invoke(sdk, function, event).await?;
    serde_json::from_str(&answer).map_err(|e| TriggerError::Answer {
        function: function.to_owned(),
        answer,
        reason: e.to_string(),
    })
}

/// Invokes `function` synchronously with `event`: its answer, as text.
async fn invoke(
    sdk: &aws_config::SdkConfig,
    function: &str,
    event: &Value,
) -> Result<String, TriggerError> {
    let client = aws_sdk_lambda::Client::new(sdk);
    let payload = Blob::new(event.to_string().into_bytes());
    let out = client
        .invoke()
        .function_name(function)
        .payload(payload)
        .send()
        .await
        .map_err(|e| TriggerError::Invoke {
            function: function.to_owned(),
            message: DisplayErrorContext(e).to_string(),
        })?;
    let answer = out
        .payload()
        .map(|b| String::from_utf8_lossy(b.as_ref()).into_owned())
        .unwrap_or_default();
    if let Some(kind) = out.function_error() {
        let message = serde_json::from_str::<Value>(&answer)
            .ok()
            .and_then(|v| {
                v.get("errorMessage")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| answer.clone());
        return Err(TriggerError::Function {
            function: function.to_owned(),
            message: format!("{kind}: {message}"),
        });
    }
    Ok(answer)
}

/// The message IDs of run `run_id`'s jobs: its literal targets, and its sources' rows as the
/// run read them (the object versions its record names), so a list pushed since does not
/// change what is waited for.
async fn tick_job_ids(
    config: &PipelineConfig,
    pipeline: &crate::backend::Pipeline,
    run_id: &str,
) -> Result<Vec<String>, Failure> {
    let mut readers = ListReaders {
        lists: pipeline.lists.clone(),
        ..ListReaders::new(pipeline.objects.clone())
    };
    if !config.sources.is_empty() {
        if let Some(run) = pipeline.runs.get(run_id).await? {
            for read in run.sources {
                readers.pinned.insert(read.name, read.objects);
            }
        }
    }
    fanout_producer::message_ids(config, &readers, run_id)
        .await
        .map_err(|e| Failure::BadInput(e.to_string()))
}

/// Where a tick's jobs ended up after `--wait`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TickOutcome {
    /// Every job succeeded or reached the DLQ.
    pub settled: bool,
    /// Jobs whose call succeeded.
    pub succeeded: usize,
    /// Jobs in the DLQ, by reason.
    pub dead_lettered: BTreeMap<String, usize>,
    /// Jobs still neither (only when the wait timed out).
    pub unsettled: Vec<String>,
    /// From the invocation to the moment every job was seen settled (or the timeout).
    pub makespan_s: f64,
}

/// How often the idempotency records are read while waiting, and how often the DLQ is read for
/// jobs SQS dead-lettered itself (those keep a non-final record).
const RECORD_POLL: Duration = Duration::from_millis(250);
const DLQ_POLL: Duration = Duration::from_secs(5);

/// Waits until every job of `job_ids` is succeeded or in the DLQ, or `timeout` after `started`.
/// Records are cheap to read, the DLQ is not (every message is received and given back): the
/// DLQ is read when every record is final, and every few seconds for SQS's own redrives.
pub(crate) async fn wait_settled(
    job_ids: &[String],
    store: &dyn IdempotencyStore,
    dlq: &dyn Queue,
    poll_wait: Duration,
    started: Instant,
    timeout: Duration,
) -> Result<TickOutcome, BackendError> {
    let mut last_dlq_read = Instant::now();
    loop {
        let records = store.get_many(job_ids).await?;
        let finished = records
            .iter()
            .filter(|r| matches!(r.status, Status::Completed | Status::DeadLettered))
            .count();
        let timed_out = started.elapsed() >= timeout;
        if finished == job_ids.len() || last_dlq_read.elapsed() >= DLQ_POLL || timed_out {
            let seen_at = started.elapsed();
            let settlement = settle(job_ids, store, dlq, poll_wait).await?;
            last_dlq_read = Instant::now();
            if settlement.lost.is_empty() || timed_out {
                return Ok(outcome(settlement, seen_at));
            }
        }
        tokio::time::sleep(RECORD_POLL).await;
    }
}

fn outcome(settlement: Settlement, makespan: Duration) -> TickOutcome {
    TickOutcome {
        settled: settlement.lost.is_empty(),
        succeeded: settlement.succeeded,
        dead_lettered: settlement.dead_lettered,
        unsettled: settlement.lost,
        makespan_s: makespan.as_secs_f64(),
    }
}

/// A `--time` that is not an RFC 3339 time: bad input (exit 2), before the producer is invoked.
#[derive(Debug, thiserror::Error)]
#[error("--time {text:?}: not an RFC 3339 time such as 2026-11-21T10:15:00Z ({reason})")]
pub(crate) struct BadTime {
    /// The flag's value.
    text: String,
    /// The parser's objection.
    reason: chrono::ParseError,
}

/// The event to invoke with: `{"run_id": …}`, or the input of `schedule` for `--time` (or now).
pub(crate) fn event_for(args: &TriggerArgs, schedule: &str) -> Result<Value, BadTime> {
    if let Some(run_id) = &args.run_id {
        return Ok(json!({ "run_id": run_id }));
    }
    let time = match &args.time {
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map_err(|reason| BadTime {
                text: text.clone(),
                reason,
            })?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    Ok(schedule_input(schedule, time))
}

/// The schedule `--schedule` names among the stack's (`ScheduleNames`), or the first.
fn pick_schedule(stack: &str, names: &str, asked: Option<&str>) -> Result<String, TriggerError> {
    let known: Vec<String> = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    let found = match asked {
        Some(asked) => known.iter().find(|n| *n == asked),
        None => known.first(),
    };
    found.cloned().ok_or_else(|| TriggerError::NoSuchSchedule {
        stack: stack.to_owned(),
        asked: asked.unwrap_or_default().to_owned(),
        known: known.clone(),
    })
}

/// `fanout trigger`: invokes the stack's producer and, with `--wait`, follows the tick.
pub(crate) async fn command(cli: &Cli, args: &TriggerArgs) -> Result<ExitCode, Failure> {
    let stack = cli.aws.stack_name().ok_or_else(|| {
        Failure::BadInput(
            "fanout trigger needs --stack NAME (or FANOUT_STACK): it invokes that stack's producer"
                .into(),
        )
    })?;
    let timeout = seconds("timeout", args.timeout)?;
    let config = args.config.as_deref().map(load_config).transpose()?;
    let sdk = fanout_shared::aws::load_sdk_config().await;
    let outputs = StackOutputs::describe(&sdk, stack)
        .await?
        .pipeline(cli.aws.pipeline_name())?;
    let [function, schedules] = outputs.require([PRODUCER_FUNCTION, SCHEDULE_NAMES])?;
    if args.watchdog {
        let answer = invoke(&sdk, &function, &json!({"watchdog": true})).await?;
        let answer: WatchdogAnswer = serde_json::from_str(&answer)
            .map_err(|e| Failure::Other(format!("the watchdog answered {answer:?}: {e}")))?;
        if args.json {
            // Through a `Value`, as the tick's answer below: its keys print sorted.
            println!("{}", serde_json::to_value(answer).unwrap_or_default());
        } else {
            println!(
                "watchdog: finished {} runs, put {} completion events, {} runs overdue",
                answer.finished, answer.events_sent, answer.overdue
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let schedule = pick_schedule(stack, &schedules, args.schedule.as_deref())
        .map_err(|e| Failure::BadInput(e.to_string()))?;
    let event = event_for(args, &schedule).map_err(|e| Failure::BadInput(e.to_string()))?;
    let started = Instant::now();
    let answer = invoke_producer(&sdk, &function, &event).await?;
    let outcome = match (args.wait, &config, &args.config) {
        (true, Some(config), Some(path)) => {
            let pipeline = crate::backend::aws_with(&sdk, &outputs.names()?);
            let ids = tick_job_ids(config, &pipeline, &answer.run_id).await?;
            if answer.jobs != ids.len() {
                return Err(Failure::BadInput(format!(
                    "the producer of stack {stack} built {} jobs but {} gives {}: --config must be the file the stack was deployed with",
                    answer.jobs,
                    path.display(),
                    ids.len()
                )));
            }
            Some(
                wait_settled(
                    &ids,
                    pipeline.store.as_ref(),
                    pipeline.dlq.as_ref(),
                    Duration::from_secs(1),
                    started,
                    timeout,
                )
                .await?,
            )
        }
        _ => None,
    };
    if args.json {
        let mut value = serde_json::to_value(&answer).unwrap_or_default();
        if let (Some(map), Some(o)) = (value.as_object_mut(), &outcome) {
            map.insert("wait".into(), serde_json::to_value(o).unwrap_or_default());
        }
        println!("{value}");
    } else {
        print!("{}", describe(&answer, outcome.as_ref()));
    }
    let ok = answer.failed == 0 && outcome.as_ref().is_none_or(|o| o.settled);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The human summary of a trigger.
pub(crate) fn describe(answer: &Summary, outcome: Option<&TickOutcome>) -> String {
    let mut text = format!(
        "run {}: published {} of {} jobs in {} PublishBatch calls ({} ms)\n",
        answer.run_id,
        answer.published,
        answer.jobs,
        answer.publish_calls,
        answer.elapsed.as_millis()
    );
    if let Some(o) = outcome {
        let dead: usize = o.dead_lettered.values().sum();
        let verb = if o.settled {
            "settled in"
        } else {
            "NOT settled after"
        };
        text.push_str(&format!(
            "{verb} {:.1} s: {} succeeded, {dead} dead-lettered",
            o.makespan_s, o.succeeded
        ));
        if !o.unsettled.is_empty() {
            text.push_str(&format!(", {} unsettled", o.unsettled.len()));
        }
        text.push('\n');
        for (reason, n) in &o.dead_lettered {
            text.push_str(&format!("  {reason}  {n}\n"));
        }
        for id in o.unsettled.iter().take(20) {
            text.push_str(&format!("  unsettled: {id}\n"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_input_is_the_one_the_schedule_sends_and_names_the_same_run() {
        let time = Utc
            .with_ymd_and_hms(2026, 11, 21, 10, 15, 0)
            .single()
            .unwrap();
        let input = schedule_input("nightly", time);
        assert_eq!(
            input,
            json!({"schedule": "nightly", "scheduled_time": "2026-11-21T10:15:00Z"})
        );
        // The producer's own parser gives the run ID a scheduled tick of this schedule gets.
        let tick = fanout_producer::tick_from_event(&input, Utc::now()).unwrap();
        assert_eq!(tick.run_id, "schedule/nightly@2026-11-21T10:15:00Z");
    }

    #[test]
    fn a_run_id_or_a_time_picks_the_event() {
        let args = |time: Option<&str>, run_id: Option<&str>| TriggerArgs {
            time: time.map(str::to_owned),
            run_id: run_id.map(str::to_owned),
            schedule: None,
            wait: false,
            config: None,
            timeout: 1.0,
            json: false,
            watchdog: false,
        };
        assert_eq!(
            event_for(&args(None, Some("backfill-1")), "tick").unwrap(),
            json!({"run_id": "backfill-1"})
        );
        assert_eq!(
            event_for(&args(Some("2026-11-21T10:15:00+01:00"), None), "tick").unwrap()
                ["scheduled_time"],
            "2026-11-21T09:15:00Z"
        );
        assert!(event_for(&args(Some("yesterday"), None), "tick")
            .unwrap_err()
            .to_string()
            .contains("--time \"yesterday\""));
    }

    #[test]
    fn the_schedule_is_the_first_or_the_one_named() {
        assert_eq!(pick_schedule("S", "tick,nightly", None).unwrap(), "tick");
        assert_eq!(
            pick_schedule("S", "tick, nightly", Some("nightly")).unwrap(),
            "nightly"
        );
        let err = pick_schedule("S", "tick,nightly", Some("hourly")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "stack S has no schedule \"hourly\"; its schedules: tick, nightly"
        );
    }
}
