//! The `fanout` operator command, as a library so tests and benchmarks drive the same code.
//!
//! # Layout
//! - [`args`]: the command line's definitions (clap).
//! - [`commands`]: what each command does, one function each, and the dispatch to them.
//! - `input`: the checks of flags and configs every command shares (bad input: exit 2).
//! - `failure`: why a command failed, and its exit code.
//! - [`run`]: produce a tick, drain the queue, settle every job.
//! - [`event_source`]: the local stand-in for the Lambda SQS event source mapping.
//! - [`backend`]: the embedded state file or SNS/SQS/DynamoDB.
//! - [`dlq`]: `fanout dlq list|replay`, the dead-letter queue for operators.
//! - [`runs`]: `fanout runs list|show`, the run ledger for operators.
//! - [`scan`]: reading a queue without consuming it.
//! - [`provision`]: `fanout provision`, the resources in an emulator or a trial account.
//! - [`stack`]: `--stack NAME`, the resources from a deployed stack's outputs.
//! - [`trigger`]: `fanout trigger`, the deployed producer run now, as its schedule would.
//! - [`settle`]: where each job of a run ended up.
//! - [`report`]: the summary table/JSON and the progress display.
//! - [`demo`]: the `--demo` workload.
//! - [`check`]: `fanout config check`.
//! - [`hosts`]: `fanout hosts`, the fleet's shared host states and the operator's pause, resume
//!   and runtime budget.

#![warn(missing_docs)]

pub mod args;
pub mod backend;
pub mod check;
pub mod commands;
pub mod demo;
pub mod dlq;
pub mod event_source;
mod failure;
pub mod hosts;
mod input;
pub mod provision;
pub mod report;
pub mod run;
pub mod runs;
pub mod scan;
pub mod settle;
pub mod stack;
pub mod trigger;
