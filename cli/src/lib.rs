//! The `fanout` operator command, as a library so tests and benchmarks drive the same code.
//!
//! The modules are private; what tests and benchmarks use is re-exported here, one path each:
//! the command line ([`Cli`], [`main`]), the backends ([`Pipeline`], [`embedded`],
//! [`aws_with`], [`provision`], [`StackOutputs`]), a run in process ([`run()`],
//! [`produce_tick`], [`consume`], the event source's [`drain`]) and what it left behind
//! ([`settle()`], [`peek_all`], [`list_dlq`], [`replay_dlq`]).
//!
//! # Layout
//! - `args`: the command line's definitions (clap).
//! - `commands`: what each command does, one function each, and the dispatch to them.
//! - `input`: the checks of flags and configs every command shares (bad input: exit 2).
//! - `failure`: why a command failed, and its exit code.
//! - `run`: produce a tick, drain the queue, settle every job.
//! - `event_source`: the local stand-in for the Lambda SQS event source mapping.
//! - `backend`: the embedded state file or SNS/SQS/DynamoDB.
//! - `dlq`: `fanout dlq list|replay`, the dead-letter queue for operators.
//! - `runs`: `fanout runs list|show`, the run ledger for operators.
//! - `scan`: reading a queue without consuming it.
//! - `provision`: `fanout provision`, the resources in an emulator or a trial account.
//! - `stack`: `--stack NAME`, the resources from a deployed stack's outputs.
//! - `trigger`: `fanout trigger`, the deployed producer run now, as its schedule would.
//! - `settle`: where each job of a run ended up.
//! - `report`: the summary table/JSON and the progress display.
//! - `demo`: the `--demo` workload.
//! - `check`: `fanout config check`.
//! - `targets`: `fanout targets show`, what the next tick would call.
//! - `hosts`: `fanout hosts`, the fleet's shared host states and the operator's pause, resume
//!   and runtime budget.

#![warn(missing_docs)]

mod args;
mod backend;
mod check;
mod commands;
mod demo;
mod dlq;
mod event_source;
mod failure;
mod hosts;
mod input;
mod provision;
mod report;
mod run;
mod runs;
mod scan;
mod settle;
mod stack;
mod targets;
mod trigger;

pub use args::Cli;
pub use backend::{aws_with, embedded, EmbeddedSettings, Pipeline, ResourceNames};
pub use commands::main;
pub use dlq::{
    list as list_dlq, replay as replay_dlq, DlqEntry, DlqFilter, MoveTask, ReplayMethod,
    ReplayOptions, ReplaySummary, ReplayTargets,
};
pub use event_source::{
    drain, drain_with_faults, to_event, DrainOutcome, EventSourceOptions, InvocationFaults,
};
pub use provision::provision;
pub use report::{Latency, RunSummary};
pub use run::{consume, consumers, produce_tick, run, RunError, RunOptions};
pub use scan::peek_all;
pub use settle::{dlq_reason, settle, Settlement};
pub use stack::{StackError, StackOutputs};
