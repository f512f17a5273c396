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
use fanout_shared::idempotency::IdempotencyStore;
use fanout_shared::{FleetStore, Queue, RunLedger};
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

/// A run of `ids` (each job counted in its shard) started at `started_at_ms`, deadline 600 s.
pub fn run_start(run_id: &str, ids: &[&str], started_at_ms: i64) -> fanout_shared::runs::RunStart {
    let mut expected_per_shard = std::collections::BTreeMap::new();
    for id in ids {
        *expected_per_shard
            .entry(fanout_shared::runs::shard_of(id))
            .or_default() += 1;
    }
    fanout_shared::runs::RunStart {
        run_id: run_id.to_owned(),
        scheduled_at: Some("2026-01-01T00:00:00Z".to_owned()),
        config_digest: "0123456789abcdef".to_owned(),
        started_at_ms,
        expected_per_shard,
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

/// `n` job IDs starting with `prefix`, each in a counter shard of its own.
pub fn ids_in_distinct_shards(prefix: &str, n: usize) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|id| seen.insert(fanout_shared::runs::shard_of(id)))
        .take(n)
        .collect()
}
