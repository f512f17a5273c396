//! The run ledger: one record per tick, so a run can be seen (counts, failures, duration) and
//! ends exactly once, with one completion event.
//!
//! # A run's life
//! ```text
//!   (none) ──begin (producer, before it publishes)──▶ RUNNING ──finish (settled = expected)──▶ SUCCEEDED | FAILED
//!   (none) ──skip (previous run in flight, `on_overlap: skip`)──▶ SKIPPED
//!   (none) ──fail_unpublished (the list could not be read)──▶ FAILED, no jobs ──begin (the tick re-run)──▶ RUNNING
//! ```
//! - [`RunLedger::begin`] is a conditional create: a second producer of the same tick (a
//!   re-delivered schedule event, a manual re-run) finds the run and changes nothing. The one
//!   run it replaces is one that failed before publishing: nothing of it is in flight, and
//!   re-running its tick once the list is fixed is how it is completed.
//! - Counting: a job's terminal transition in the idempotency state machine
//!   ([`crate::IdempotencyStore`]) stores what it adds to its run ([`Delta`]) and the batch it
//!   is counted in; its consumer adds whole batches to the run's counters, one conditional
//!   write each, before it deletes their messages (`count` says how a crash, a lost answer or
//!   a duplicate leaves every job counted once). IN_PROGRESS → COMPLETED counts a success;
//!   REJECTED → DEAD_LETTERED counts a dead-lettering under its failure's class
//!   ([`crate::FailureKind`]); a replayed job that then succeeds moves from dead-lettered to
//!   succeeded ([`Tally::undo`]). The run is settled when its settled count reaches its
//!   expected count: the batch write that gets there answers it.
//! - [`RunLedger::finish`] moves RUNNING to its verdict ([`RunPolicy::verdict`]) conditionally:
//!   of the consumers that settle a run's last jobs at once, exactly one wins, and only the
//!   winner puts the completion event (`completion_event`), then marks it sent. A finisher
//!   that crashed before the event is covered by the producer's watchdog ([`Finisher::sweep`]).

//!
//! # Layout
//! - `model`: a run as the ledger holds it ([`RunRecord`], [`RunCounts`], [`RunStart`]).
//! - `policy`: the config's `runs` section and its verdict ([`RunPolicy::verdict`]).
//! - `tally`: what one job's end adds to its run ([`Tally`], [`Delta`]).
//! - `count`: counting in batches ([`CountToken`], [`CountState`]).
//! - `ledger`, `bus`: the [`RunLedger`] and [`EventBus`] traits.
//! - `finish`: the finisher and the watchdog ([`Finisher`]).

mod bus;
mod count;
mod finish;
mod ledger;
mod model;
mod policy;
mod tally;

pub use bus::EventBus;
pub(crate) use bus::EVENT_SOURCE;
pub use count::{BatchState, CountState, CountToken, Counted, JobCount};
pub use finish::{run_metrics, Finished, Finisher, Sweep};
pub use ledger::RunLedger;
pub use model::{rfc3339, Begin, RunCounts, RunRecord, RunStart, RunStatus, SourceRead};
pub use policy::{Overlap, RunPolicy};
pub use tally::{Delta, Tally};
