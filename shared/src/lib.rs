//! Everything the fanout producer, consumer and operator CLI agree on.
//!
//! # Layout
//! - [`config`]: the pipeline config file (targets, rate budgets, allowed hosts) and its validation.
//! - [`job`]: the versioned job message, its deterministic ID, and decoding of SQS bodies
//!   (raw or SNS envelope).
//! - [`netguard`]: the SSRF guard: which IP addresses a job may never call.
//! - `guarded_http` (feature `http`): the guarded HTTP client the consumer's calls and the
//!   producer's HTTP list endpoints share (guard in the resolver, redirects by hand, secrets).
//! - [`target_rules`]: what a target's URL and headers may hold (config and messages alike).
//! - [`template`]: call templates rendered from data rows, and why a row cannot change the call.
//! - [`publish`], [`queue`], [`idempotency`]: the small traits the handlers use for SNS, SQS and
//!   DynamoDB, with the idempotency record's state machine.
//! - [`hosts`]: host protection shared by the fleet (rate factor, pause, circuit breaker), one
//!   state machine; [`fleet`]: the store the consumer instances share it in, and the leases that
//!   split the rate budgets among the instances at work.
//! - [`sources`]: the config's row sources (where a list is, which template its rows fill).
//! - [`rows`]: streaming readers of a target list's rows (JSON Lines, JSON array, CSV; gzip).
//! - [`objects`]: the bucket `s3://` lists are read from and pushed to.
//! - [`runs`]: the run ledger (counts per run, verdict, completion event) and its traits.
//! - [`failure`]: why a job failed for good, typed: its class keys the run's counts, its
//!   text is the DLQ's reason.
//! - [`retry`]: the retry schedule of transient failures (backoff with full jitter).
//! - [`metrics`]: CloudWatch Embedded Metric Format lines.
//! - [`logging`]: JSON logs through `tracing`.
//! - `embedded` (feature `embedded`): one SQLite file standing in for SNS, SQS and DynamoDB.
//! - `aws` (feature `aws`): the same traits over the AWS SDK.

#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod failure;
pub mod fleet;
#[cfg(feature = "http")]
pub mod guarded_http;
pub mod hosts;
pub mod idempotency;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod netguard;
pub mod objects;
pub mod publish;
pub mod queue;
pub mod retry;
pub mod rows;
pub mod runs;
pub mod sources;
pub mod target_rules;
pub mod template;

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "embedded")]
pub mod embedded;

pub use config::{ConfigError, ConfigErrors, PipelineConfig};
pub use error::BackendError;
pub use failure::{Failure, FailureKind};
pub use fleet::{FleetStore, HostStates, Lease};
pub use hosts::{HostEvent, HostPolicy, HostState};
pub use idempotency::{Acquire, IdempotencyRecord, IdempotencyStore, Status, Transition};
pub use job::{JobMessage, JobTarget, OutboundMessage};
pub use objects::{ObjectBody, ObjectStore, ObjectVersion};
pub use publish::{EntryFailure, Publisher};
pub use queue::{MessageMover, MoveTaskState, MoveTaskStatus, Queue, QueueDepth, QueueMessage};
pub use runs::{EventBus, RunLedger, RunRecord, RunStatus};

/// A random token that tells one writer from another (an idempotency claim, a run's finisher),
/// so a writer whose first answer was lost recognises its own write when it asks again.
pub fn random_token() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    // Each RandomState has its own random keys: no dependency needed for 64 random bits.
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    i64::from_ne_bytes(bits.to_ne_bytes())
}

/// Milliseconds since the Unix epoch, the time unit of every stored timestamp.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
