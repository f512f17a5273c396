//! The backend contracts (`tests/src/contract/`) against DynamoDB and SQS on moto: one moto
//! server per trait's suite, and fresh resources (`provision` with a prefix of the contract's
//! own) per contract.

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use fanout::aws_with;
use fanout::provision;
use fanout_tests::contract::{self, Backend, Limits, MAX_RECEIVE_COUNT};

/// What moto does differently from AWS (TOOLCHAIN.md lists its limits).
const MOTO: Limits = Limits {
    stale_receipt_deletes: true,
};

async fn check(suite: &str) {
    let moto = fanout_tests::moto_or_skip!();
    let sdk = moto.sdk().await;
    let (_, contracts) = contract::all()
        .into_iter()
        .find(|(name, _)| *name == suite)
        .expect("a suite of that name");
    let mut n = 0;
    contract::check(suite, contracts, |name| {
        n += 1;
        // Queue and table names: at most 80 characters, letters, digits, `-` and `_`.
        let prefix: String = format!("c{n}-{name}").chars().take(60).collect();
        let sdk = sdk.clone();
        async move {
            let resources = provision(&sdk, &prefix, MAX_RECEIVE_COUNT, 30)
                .await
                .expect("provision");
            Backend::of(&aws_with(&sdk, &resources), MOTO)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_store_contract() {
    check("IdempotencyStore").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ledger_contract() {
    check("RunLedger").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_store_contract() {
    check("FleetStore").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_contract() {
    check("Queue").await;
}
