//! Everything the fanout producer, consumer and operator CLI agree on.
//!
//! # Its face
//! Each public item has one path. Most are at the root, re-exported from private modules. A
//! module is a public namespace instead when its items only read well under its name
//! (`runs::Begin`, `rows::Format`, `sources::Location`, `fleet::LEASE_TTL`,
//! `logging::init_json`), or when it is a feature-gated backend (`aws`, `embedded`,
//! `guarded_http`); none of a namespace's items is also at the root. What no other crate uses,
//! by name or through a public signature, is `pub(crate)`.
//!
//! # Layout
//! At the root (the private module's file in parentheses):
//! - The pipeline config file (targets, rate budgets, allowed hosts) and its validation
//!   (`config.rs`): [`PipelineConfig`], [`ConfigErrors`], [`check_rate`].
//! - The versioned job message (`job.rs`): [`JobMessage`], [`JobTarget`], [`OutboundMessage`],
//!   its deterministic ID ([`message_id`]), decoding of SQS bodies, raw or SNS envelope
//!   ([`decode_body`]), and the message attributes (`ATTR_*`).
//! - The SSRF guard, which IP addresses a job may never call (`netguard.rs`):
//!   [`check_literal_host`].
//! - What a target's URL and headers may hold, config and messages alike (`target_rules.rs`):
//!   [`FieldError`], [`MAX_RUN_ID_LEN`].
//! - Call templates rendered from data rows, and why a row cannot change the call
//!   (`template.rs`): [`Template`], [`CompiledTemplate`], [`TickValues`].
//! - The small traits the handlers use for SNS, SQS and DynamoDB (`publish.rs`, `queue.rs`,
//!   `idempotency.rs`): [`Publisher`], [`Queue`], [`IdempotencyStore`], with the idempotency
//!   record's state machine ([`Acquire`], [`Transition`]); their errors are [`BackendError`]
//!   (`error.rs`).
//! - Host protection shared by the fleet, one state machine (`hosts.rs`): rate factor, pause,
//!   circuit breaker ([`HostState`], [`HostEvent`], [`HostPolicy`]).
//! - The bucket `s3://` lists are read from and pushed to (`objects.rs`): [`ObjectStore`].
//! - Why a job failed for good, typed (`failure.rs`): [`Failure`]; its class keys the run's
//!   counts, its text is the DLQ's reason.
//! - The retry schedule of transient failures, backoff with full jitter (`retry.rs`):
//!   [`RetryPolicy`].
//! - [`now_ms`], the time unit of every stored timestamp.
//!
//! Public namespaces:
//! - [`runs`]: the run ledger (counts per run, verdict, completion event) and its traits.
//! - [`fleet`]: the store the consumer instances share host states in, and the leases that
//!   split the rate budgets among the instances at work.
//! - [`sources`]: the config's row sources (where a list is, which template its rows fill).
//! - [`rows`]: streaming readers of a target list's rows (JSON Lines, JSON array, CSV; gzip).
//! - [`metrics`]: CloudWatch Embedded Metric Format lines.
//! - [`logging`]: JSON logs through `tracing`.
//! - `guarded_http` (feature `http`): the guarded HTTP client the consumer's calls and the
//!   producer's HTTP list endpoints share (guard in the resolver, redirects by hand, secrets).
//! - `embedded` (feature `embedded`): one SQLite file standing in for SNS, SQS and DynamoDB.
//! - `aws` (feature `aws`): the same traits over the AWS SDK.

#![warn(missing_docs)]

mod config;
mod error;
mod failure;
pub mod fleet;
#[cfg(feature = "http")]
pub mod guarded_http;
mod hosts;
mod idempotency;
mod job;
pub mod logging;
pub mod metrics;
mod netguard;
mod objects;
mod publish;
mod queue;
mod retry;
pub mod rows;
pub mod runs;
pub mod sources;
mod target_rules;
mod template;

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "embedded")]
pub mod embedded;

pub use config::{
    check_rate, BadRate, ConfigError, ConfigErrors, Defaults, HostLimit, PipelineConfig, RateLimit,
    Target,
};
pub use error::BackendError;
pub use failure::{Failure, FailureKind};
pub use hosts::{Circuit, Gate, HoldReason, HostEvent, HostPolicy, HostState, ALL_HOSTS};
pub use idempotency::{Acquire, Claim, IdempotencyRecord, IdempotencyStore, Status, Transition};
pub use job::{
    check_run_id, decode_body, message_id, BadRunId, DecodeError, JobMessage, JobTarget,
    OutboundMessage, TemplateCall, ATTR_DEAD_LETTER_ATTEMPT, ATTR_FAILURE_REASON, ATTR_HOLDER,
    ATTR_MESSAGE_ID, ATTR_NOT_BEFORE, ATTR_STATUS_CODE, ATTR_TARGET_HOST, ATTR_UNRECORDED_SUCCESS,
    MAX_MESSAGE_BYTES,
};
pub use netguard::{check_literal_host, RefusedHost};
pub use objects::{ObjectBody, ObjectStore, ObjectVersion};
pub use publish::{EntryFailure, Publisher, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
pub use queue::{
    MessageMover, MoveTaskState, MoveTaskStatus, Queue, QueueDepth, QueueMessage, MAX_DELAY,
};
pub use retry::RetryPolicy;
pub use target_rules::{FieldError, PlaceholderError, MAX_RUN_ID_LEN};
pub use template::{CompiledTemplate, RowError, Template, TickValues};

/// A random token that tells one writer from another (an idempotency claim, a run's finisher),
/// so a writer whose first answer was lost recognises its own write when it asks again.
pub(crate) fn random_token() -> i64 {
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
