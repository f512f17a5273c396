//! The one DynamoDB table, its schema and the helpers every store on it uses.
//!
//! One table holds four kinds of items, told apart by the key's prefix:
//! - idempotency records: the job's message ID itself (hex, never holds a `#`);
//! - runs: `run#<run ID>`, and their counters `run#<run ID>#counts`;
//! - host states: `host#<host>`;
//! - the fleet's leases: `fleet#leases`.
//!
//! Run items also carry [`RUNS_INDEX_KEY`] and [`RUNS_INDEX_SORT`], which makes the sparse
//! [`RUNS_INDEX`] list runs newest first. Every item may carry the [`TTL_ATTRIBUTE`]. The stack
//! (`infra/`) and `fanout provision` create the table from these names.

use std::collections::HashMap;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};

use super::sdk_error;
use crate::error::BackendError;

/// The table's partition key (a string).
pub const KEY: &str = "message_id";
/// The attribute DynamoDB's TTL deletes items by (seconds since the epoch).
pub const TTL_ATTRIBUTE: &str = "expiration";
/// The sparse index listing runs by start time.
pub const RUNS_INDEX: &str = "runs";
/// The runs index's partition key: the same value on every run item.
pub const RUNS_INDEX_KEY: &str = "run_index";
/// The runs index's sort key (a number: ms since the epoch).
pub const RUNS_INDEX_SORT: &str = "started_at";
/// The key prefix of host states.
pub(crate) const HOST_PREFIX: &str = "host#";
/// The key of the item holding every instance's lease.
pub(crate) const LEASES_KEY: &str = "fleet#leases";

/// The error code of a conditional write whose condition did not hold.
pub(crate) const CONDITION_FAILED: &str = "ConditionalCheckFailedException";

/// A string attribute.
pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// A number attribute.
pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A string attribute of `item`, if present.
pub(crate) fn text(item: &HashMap<String, AttributeValue>, k: &str) -> Option<String> {
    item.get(k).and_then(|v| v.as_s().ok()).cloned()
}

/// A number attribute of `item` that fits an `i64`, if present.
pub(crate) fn number(item: &HashMap<String, AttributeValue>, k: &str) -> Option<i64> {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

/// The key of a run's item.
pub(crate) fn run_key(run_id: &str) -> AttributeValue {
    s(format!("run#{run_id}"))
}

/// The key of a run's counters.
pub(crate) fn counts_key(run_id: &str) -> AttributeValue {
    s(format!("run#{run_id}#counts"))
}

/// The key of a host's shared state.
pub(crate) fn host_key(host: &str) -> AttributeValue {
    s(format!("{HOST_PREFIX}{host}"))
}

/// Every item of `table` whose key is one of `keys`, strongly consistent, in chunks of 100 (the
/// `BatchGetItem` limit), with unprocessed keys asked for again. A key given twice is asked for
/// once (`BatchGetItem` refuses a request that repeats a key): each item comes back once.
pub(crate) async fn batch_get(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    keys: impl Iterator<Item = AttributeValue>,
) -> Result<Vec<HashMap<String, AttributeValue>>, BackendError> {
    let mut seen = std::collections::HashSet::new();
    let keys: Vec<HashMap<String, AttributeValue>> = keys
        .filter(|k| k.as_s().map_or(true, |key| seen.insert(key.clone())))
        .map(|k| HashMap::from([(KEY.to_owned(), k)]))
        .collect();
    let mut items = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(100) {
        let mut request = KeysAndAttributes::builder()
            .set_keys(Some(chunk.to_vec()))
            .consistent_read(true)
            .build()
            .map_err(|e| BackendError::permanent("dynamodb:BatchGetItem", e.to_string()))?;
        loop {
            let output = client
                .batch_get_item()
                .request_items(table, request)
                .send()
                .await
                .map_err(|e| sdk_error("dynamodb:BatchGetItem", e))?;
            items.extend(
                output
                    .responses()
                    .and_then(|r| r.get(table))
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
            match output.unprocessed_keys().and_then(|u| u.get(table)) {
                Some(rest) if !rest.keys().is_empty() => request = rest.clone(),
                _ => break,
            }
        }
    }
    Ok(items)
}

/// What a canceled transaction's reasons say about each of its items, in order.
pub(crate) fn cancellation_codes(
    err: &SdkError<TransactWriteItemsError, HttpResponse>,
) -> Option<Vec<String>> {
    match err {
        SdkError::ServiceError(e) => match e.err() {
            TransactWriteItemsError::TransactionCanceledException(c) => Some(
                c.cancellation_reasons()
                    .iter()
                    .map(|r| r.code().unwrap_or("None").to_owned())
                    .collect(),
            ),
            _ => None,
        },
        _ => None,
    }
}
