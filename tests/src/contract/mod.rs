//! One contract per backend trait, run against every backend: the embedded SQLite file
//! (`tests/tests/contract_embedded.rs`) and DynamoDB/SQS on moto (`tests/tests/contract_moto.rs`).
//!
//! Each contract function states one rule of a trait ([`IdempotencyStore`], [`RunLedger`],
//! [`FleetStore`], [`Queue`]) and asserts it through the trait alone, so a backend that
//! translates the rule (DynamoDB condition expressions, SQS) is held to exactly what the other
//! one does. [`check`] runs a suite on a fresh [`Backend`] per contract and reports every
//! contract that failed, by name, not only the first.
//!
//! Where an emulator cannot do what the real service does, [`Limits`] says so and the contract
//! skips only that assertion (the comment at the flag says why), never the contract.

pub mod fleet;
pub mod idempotency;
pub mod queue;
pub mod runs;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use fanout::Pipeline;
use fanout_shared::fleet::FleetStore;
use fanout_shared::runs::RunLedger;
use fanout_shared::{IdempotencyStore, Queue};
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;

/// Receives before a contract backend's queue redrives a message to its DLQ.
pub const MAX_RECEIVE_COUNT: u32 = 2;

/// What an emulator does differently from the service it stands in for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// moto deletes a message by any receipt handle it ever had (`had_receipt_handle` in its SQS
    /// model); SQS and the embedded queue delete by the latest one only.
    pub stale_receipt_deletes: bool,
}

impl AsRef<Limits> for Limits {
    fn as_ref(&self) -> &Limits {
        self
    }
}

/// A fresh, empty backend: what one contract runs against.
pub struct Backend {
    /// The idempotency store.
    pub store: Arc<dyn IdempotencyStore>,
    /// The run ledger the store counts into.
    pub runs: Arc<dyn RunLedger>,
    /// Host states and leases.
    pub fleet: Arc<dyn FleetStore>,
    /// A queue that redrives to [`Backend::dlq`] after [`MAX_RECEIVE_COUNT`] receives.
    pub queue: Arc<dyn Queue>,
    /// The queue's dead-letter queue.
    pub dlq: Arc<dyn Queue>,
    /// See [`Limits`].
    pub limits: Limits,
}

impl Backend {
    /// The stores and queues of `pipeline`.
    pub fn of(pipeline: &Pipeline, limits: Limits) -> Self {
        Self {
            store: pipeline.store.clone(),
            runs: pipeline.runs.clone(),
            fleet: pipeline.fleet.clone(),
            queue: pipeline.queue.clone(),
            dlq: pipeline.dlq.clone(),
            limits,
        }
    }
}

/// One rule of a trait, by name.
pub struct Contract {
    /// The contract function's name.
    pub name: &'static str,
    /// Runs it against a backend.
    pub run: for<'a> fn(&'a Backend) -> BoxFuture<'a, ()>,
}

/// A [`Contract`] calling the function `$name` with the backend's `$field`s.
macro_rules! contract {
    ($name:ident($($field:ident),+)) => {
        $crate::contract::Contract {
            name: stringify!($name),
            run: |backend| Box::pin($name($(backend.$field.as_ref()),+)),
        }
    };
}
pub(crate) use contract;

/// Every contract of every trait.
pub fn all() -> Vec<(&'static str, Vec<Contract>)> {
    vec![
        ("IdempotencyStore", idempotency::contracts()),
        ("RunLedger", runs::contracts()),
        ("FleetStore", fleet::contracts()),
        ("Queue", queue::contracts()),
    ]
}

/// Runs every contract of `suite` on a backend of its own from `fresh` (given the contract's
/// name, for resource names), and fails listing each contract that failed and why.
pub async fn check<F, Fut>(suite: &str, contracts: Vec<Contract>, mut fresh: F)
where
    F: FnMut(&'static str) -> Fut,
    Fut: Future<Output = Backend>,
{
    let mut failed = Vec::new();
    for contract in &contracts {
        let backend = fresh(contract.name).await;
        let started = std::time::Instant::now();
        let outcome = AssertUnwindSafe((contract.run)(&backend))
            .catch_unwind()
            .await;
        let took = started.elapsed().as_millis();
        match outcome {
            Ok(()) => eprintln!("contract {suite}::{} ... ok ({took} ms)", contract.name),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                eprintln!("contract {suite}::{} ... FAILED: {message}", contract.name);
                failed.push(format!("{}: {message}", contract.name));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {suite} contracts failed:\n{}",
        failed.len(),
        contracts.len(),
        failed.join("\n")
    );
}

/// A run of `ids` started at `started_at_ms`, deadline 600 s.
pub fn run_start(run_id: &str, ids: &[&str], started_at_ms: i64) -> fanout_shared::runs::RunStart {
    fanout_shared::runs::RunStart {
        run_id: run_id.to_owned(),
        scheduled_at: Some("2026-01-01T00:00:00Z".to_owned()),
        config_digest: "0123456789abcdef".to_owned(),
        started_at_ms,
        expected: ids.len() as u64,
        policy: fanout_shared::runs::RunPolicy {
            deadline_seconds: Some(600),
            ..Default::default()
        },
        sources: vec![fanout_shared::runs::SourceRead {
            name: "customers".to_owned(),
            location: "s3://lists/customers.jsonl".to_owned(),
            objects: vec![fanout_shared::ObjectVersion {
                key: "customers.jsonl".to_owned(),
                version_id: Some("v1".to_owned()),
                etag: Some("\"e1\"".to_owned()),
            }],
            rows: ids.len() as u64,
            digest: "89abcdef01234567".to_owned(),
        }],
    }
}

/// The idempotency store as a consumer that counts every settlement in a batch of its own
/// uses it: each terminal transition written (or found written by its own earlier try) is
/// applied to its run's counters at once, under the token the record holds. The idempotency
/// contracts that check counts run through it; the batches themselves are the run ledger's
/// contracts.
pub struct CountingStore<'a> {
    /// The store.
    pub store: &'a dyn IdempotencyStore,
    /// The run ledger the counts go to.
    pub runs: &'a dyn RunLedger,
}

/// A fresh count token: the first batch of a new instance.
pub fn fresh_token() -> fanout_shared::runs::CountToken {
    fanout_shared::runs::CountToken {
        instance: format!("{:016x}", fastrand::u64(..)),
        seq: 1,
        deadline_ms: 0,
    }
}

impl CountingStore<'_> {
    async fn apply(
        &self,
        message_id: &str,
        transition: fanout_shared::Transition,
    ) -> Result<fanout_shared::Transition, fanout_shared::BackendError> {
        if transition == fanout_shared::Transition::Done {
            let records = self.store.get_many(&[message_id.to_owned()]).await?;
            if let Some((run_id, Some(count))) =
                records.into_iter().next().map(|r| (r.run_id, r.count))
            {
                self.runs
                    .count(
                        &run_id,
                        &count.token.instance,
                        count.token.seq,
                        &count.delta,
                    )
                    .await?;
            }
        }
        Ok(transition)
    }
}

#[async_trait::async_trait]
impl IdempotencyStore for CountingStore<'_> {
    async fn acquire(
        &self,
        claim: &fanout_shared::Claim<'_>,
    ) -> Result<fanout_shared::Acquire, fanout_shared::BackendError> {
        self.store.acquire(claim).await
    }
    async fn complete(
        &self,
        message_id: &str,
        attempt: u32,
        status_code: u16,
        expiration_s: i64,
        (tally, _): (
            &fanout_shared::runs::Tally<'_>,
            &fanout_shared::runs::CountToken,
        ),
    ) -> Result<fanout_shared::Transition, fanout_shared::BackendError> {
        let done = self
            .store
            .complete(
                message_id,
                attempt,
                status_code,
                expiration_s,
                (tally, &fresh_token()),
            )
            .await?;
        self.apply(message_id, done).await
    }
    async fn fail(
        &self,
        message_id: &str,
        attempt: u32,
        error: &str,
        status_code: Option<u16>,
    ) -> Result<fanout_shared::Transition, fanout_shared::BackendError> {
        self.store
            .fail(message_id, attempt, error, status_code)
            .await
    }
    async fn reject(
        &self,
        message_id: &str,
        attempt: u32,
        failure: &fanout_shared::Failure,
    ) -> Result<fanout_shared::Transition, fanout_shared::BackendError> {
        self.store.reject(message_id, attempt, failure).await
    }
    async fn dead_lettered(
        &self,
        message_id: &str,
        attempt: u32,
        (tally, _): (
            &fanout_shared::runs::Tally<'_>,
            &fanout_shared::runs::CountToken,
        ),
    ) -> Result<fanout_shared::Transition, fanout_shared::BackendError> {
        let done = self
            .store
            .dead_lettered(message_id, attempt, (tally, &fresh_token()))
            .await?;
        self.apply(message_id, done).await
    }
    async fn recount(
        &self,
        message_id: &str,
        from: &fanout_shared::runs::CountToken,
        to: &fanout_shared::runs::CountToken,
    ) -> Result<bool, fanout_shared::BackendError> {
        self.store.recount(message_id, from, to).await
    }
    async fn get_many(
        &self,
        message_ids: &[String],
    ) -> Result<Vec<fanout_shared::IdempotencyRecord>, fanout_shared::BackendError> {
        self.store.get_many(message_ids).await
    }
}
