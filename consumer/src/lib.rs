//! The fanout consumer: executes job messages from SQS, safely.
//!
//! # Layout
//! - [`batch`]: one invocation: records concurrently, the lease ticker, partial batch response,
//!   EMF metrics (per function and per host), and finishing the runs whose last jobs it settled.
//! - [`record`]: one record: parse → admit → permit → dedupe → call → record the outcome, and
//!   rescheduling (a delayed copy) for every job that waits or retries.
//! - `count`: this instance's batches of settlements, applied to the runs' counters one write
//!   per batch before their messages are deleted.
//! - `backend`: the consumer's own dependencies failing: retries with backoff, rescheduling,
//!   the `BackendThrottled`/`BackendFailed` counts per operation.
//! - [`flow`]: flow control shared by the fleet: host states (pause, circuit, slow-down), the
//!   instance's lease and its share of the budgets.
//! - `pull`: an invocation with room and time receives more records itself, so a batch's
//!   slowest record never holds back the instance and its share is not idle between batches.
//! - `in_flight`: how many records an invocation runs at once: enough to spend its share of
//!   the budgets (Little's law), at least `batch_concurrency`.
//! - `latency`: how long a call to a host is expected to take, so a job waits for its permit
//!   until just before the invocation's end.
//! - [`limiter`]: the `governor` limiters that pace this instance at its share.
//! - [`policy`]: what a message may make the consumer do: only what its own config says.
//! - [`http`]: the calls, through the SSRF-guarded HTTP client the producer's list endpoints
//!   share (`fanout_shared::guarded_http`: guard in the resolver, redirects followed by hand
//!   under the allow-list, no secrets to another origin), and the transient/permanent
//!   classification.
//! - [`settings`]: the Lambda's environment variables.
//!
//! The Lambda binary (`main.rs`) only builds a [`Consumer`] from the environment and calls
//! [`Consumer::handle_batch`]; the `fanout` CLI's local event source calls the same function.

#![warn(missing_docs)]

mod backend;
mod batch;
mod count;
mod flow;
mod http;
mod in_flight;
mod latency;
mod limiter;
mod policy;
mod pull;
mod record;
mod settings;

use std::sync::Arc;

use fanout_shared::fleet::FleetStore;
use fanout_shared::runs::{EventBus, RunLedger};
use fanout_shared::{IdempotencyStore, PipelineConfig, Queue, RetryPolicy};

pub use batch::BatchReport;
pub use pull::to_record;
pub use record::{Deadline, RecordReport, Reschedule, Verdict};
pub use settings::{BadVariable, Settings};

/// One consumer instance: its clients, its flow control and its settings. Build it once per
/// process (Lambda reuses it across invocations) and share it.
pub struct Consumer {
    store: Arc<dyn IdempotencyStore>,
    source: Arc<dyn Queue>,
    dlq: Arc<dyn Queue>,
    runs: Arc<dyn RunLedger>,
    events: Arc<dyn EventBus>,
    caller: http::Caller,
    flow: flow::Flow,
    latencies: latency::Latencies,
    in_flight: in_flight::InFlight,
    retry: RetryPolicy,
    policy: policy::Policy,
    settings: Settings,
    faults: backend::BackendFaults,
    counter: count::Counter,
    /// Runs this instance saw settled but could not finish (a backend fault outlasted the
    /// finish's retries), with their counters: tried again with its next batch.
    unfinished:
        std::sync::Mutex<std::collections::BTreeMap<String, fanout_shared::runs::RunCounts>>,
}

/// Its settings; the clients and the flow control's live state are opaque.
impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The consumer's backends.
pub struct Backends {
    /// Idempotency records.
    pub store: Arc<dyn IdempotencyStore>,
    /// The queue the records come from; rescheduled copies go back to it.
    pub source: Arc<dyn Queue>,
    /// Where permanent failures go.
    pub dlq: Arc<dyn Queue>,
    /// Host states and instance leases, shared by the fleet.
    pub fleet: Arc<dyn FleetStore>,
    /// The run ledger: the consumer counts its batches of settlements there and finishes
    /// settled runs.
    pub runs: Arc<dyn RunLedger>,
    /// Where a finished run's completion event goes.
    pub events: Arc<dyn EventBus>,
}

/// Opaque: the backends are trait objects.
impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}

/// Why a consumer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// A setting from the environment breaks a rule.
    #[error("{0}")]
    Settings(String),
}

impl Consumer {
    /// A consumer for `config`'s hosts and budgets, with the stack's `settings`.
    pub fn new(
        config: &PipelineConfig,
        backends: Backends,
        settings: Settings,
    ) -> Result<Self, SetupError> {
        let retry = settings.retry.apply(config.retry);
        if let Some(e) = retry.problems().into_iter().next() {
            return Err(SetupError::Settings(format!(
                "retry {} (config `retry` or FANOUT_* override): {}",
                e.field, e.problem
            )));
        }
        let policy = policy::Policy::new(config);
        Ok(Self {
            store: backends.store,
            source: backends.source,
            dlq: backends.dlq,
            runs: backends.runs,
            events: backends.events,
            caller: http::Caller::new(
                config.allow_private_networks,
                policy.allowed_hosts().clone(),
            )?,
            flow: flow::Flow::new(
                config,
                backends.fleet,
                (settings.rate_per_second, settings.max_instances),
                settings.host_state_ttl,
            ),
            latencies: latency::Latencies::default(),
            in_flight: in_flight::InFlight::default(),
            retry,
            policy,
            settings,
            faults: backend::BackendFaults::default(),
            counter: count::Counter::new(),
            unfinished: Default::default(),
        })
    }
}
