//! The backend contracts (`tests/src/contract/`) against the embedded backend: one in-memory
//! state file per contract.

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use fanout_shared::embedded::Duplicates;
use fanout_tests::contract::{self, Backend, Limits, MAX_RECEIVE_COUNT};
use fanout_tests::embedded_pipeline;

fn fresh() -> Backend {
    Backend::of(
        &embedded_pipeline(MAX_RECEIVE_COUNT, Duplicates::default()),
        Limits::default(),
    )
}

async fn check(suite: &str) {
    let (_, contracts) = contract::all()
        .into_iter()
        .find(|(name, _)| *name == suite)
        .expect("a suite of that name");
    contract::check(suite, contracts, |_| async { fresh() }).await;
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
