//! The fanout consumer: executes job messages from SQS, safely.
//!
//! # Layout
//! - [`batch`]: one invocation: records concurrently, partial batch response, EMF metrics.
//! - [`record`]: one record: parse → dedupe → rate-limit → call → record the outcome.
//! - [`limiter`]: this instance's share of the global and per-host rate budgets.
//! - [`policy`]: what a message may make the consumer do: only what its own config says.
//! - [`http`]: the SSRF-guarded HTTP client and the transient/permanent classification.
//! - [`redirect`]: redirects followed by hand: allow-list and guard on every hop, no secrets
//!   to another origin.
//! - [`settings`]: the Lambda's environment variables.
//!
//! The Lambda binary (`main.rs`) only builds a [`Consumer`] from the environment and calls
//! [`Consumer::handle_batch`]; the `fanout` CLI's local event source calls the same function.

pub mod batch;
pub mod http;
pub mod limiter;
pub mod policy;
pub mod record;
pub mod redirect;
pub mod settings;

use std::sync::Arc;

use fanout_shared::{IdempotencyStore, PipelineConfig, Queue};

pub use batch::BatchReport;
pub use record::{RecordReport, Verdict};
pub use settings::Settings;

/// One consumer instance: its clients, its rate budget and its settings. Build it once per
/// process (Lambda reuses it across invocations) and share it.
pub struct Consumer {
    store: Arc<dyn IdempotencyStore>,
    source: Arc<dyn Queue>,
    dlq: Arc<dyn Queue>,
    caller: http::Caller,
    budget: limiter::RateBudget,
    policy: policy::Policy,
    settings: Settings,
}

/// The consumer's backends: idempotency table, source queue (for `Retry-After`) and DLQ.
pub struct Backends {
    /// Idempotency records.
    pub store: Arc<dyn IdempotencyStore>,
    /// The queue the records come from.
    pub source: Arc<dyn Queue>,
    /// Where permanent failures go.
    pub dlq: Arc<dyn Queue>,
}

impl Consumer {
    /// A consumer for `config`'s hosts and budgets.
    pub fn new(config: &PipelineConfig, backends: Backends, settings: Settings) -> Result<Self, reqwest::Error> {
        let policy = policy::Policy::new(config);
        Ok(Self {
            store: backends.store,
            source: backends.source,
            dlq: backends.dlq,
            caller: http::Caller::new(config.allow_private_networks, policy.allowed_hosts().clone())?,
            budget: limiter::RateBudget::new(config, settings.rate_per_second, settings.max_concurrency),
            policy,
            settings,
        })
    }
}
