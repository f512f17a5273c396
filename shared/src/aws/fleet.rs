//! [`FleetStore`] in the idempotency table: one item per host (`message_id` = `host#NAME`,
//! attributes `host_state`, the JSON of [`HostState`], and `version`), and one item holding
//! every instance's lease (`message_id` = `fleet#leases`, one attribute `lease_ID` =
//! `"SINCE:EXPIRES"` per instance). Neither has an `expiration`, so the table's TTL keeps them.
//!
//! A host event is a read, [`HostState::apply`], and a write conditional on `version`, retried
//! on a conflict: the same rule as the embedded store, made atomic by the condition.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use tracing::warn;

use super::table::{host_key, s, CONDITION_FAILED, HOST_PREFIX, KEY, LEASES_KEY};
use super::{sdk_error, service_code};
use crate::error::BackendError;
use crate::fleet::{FleetStore, HostStates, Lease};
use crate::hosts::{HostEvent, HostPolicy, HostState};

const LEASE_PREFIX: &str = "lease_";
/// Conflicting writers retried before the event is reported as a (transient) backend error.
const MAX_CONFLICTS: usize = 8;

/// Host states and leases in the DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoDbFleet {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

/// Why a stored `host_state` does not read (an item written by hand, or by another version).
#[derive(Debug, thiserror::Error)]
enum UnreadableState {
    /// The attribute is not a string.
    #[error("not a string attribute")]
    NotString,
    /// The string is not a [`HostState`]'s JSON.
    #[error(transparent)]
    NotJson(serde_json::Error),
}

/// An item's state and version. A `host_state` that is absent reads as the default; one that
/// does not parse is `Err` with the reason, and its caller decides (the version still counts, so
/// the next write replaces it under the usual condition).
fn parse_state(
    item: &HashMap<String, AttributeValue>,
) -> (Result<HostState, UnreadableState>, i64) {
    let state = match item.get("host_state") {
        None => Ok(HostState::default()),
        Some(value) => value
            .as_s()
            .map_err(|_| UnreadableState::NotString)
            .and_then(|text| serde_json::from_str(text).map_err(UnreadableState::NotJson)),
    };
    let version = item
        .get("version")
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (state, version)
}

/// A `host_state` that does not parse is read as the default (not paused, circuit closed): an
/// unreadable item must not stop every call to its host. Said at warn, naming the host, since
/// an operator's pause may be what stopped holding.
fn unreadable_state(host: &str, error: &UnreadableState) -> HostState {
    warn!(
        host,
        error = %error,
        "stored host_state does not parse; read as not paused, circuit closed"
    );
    HostState::default()
}

/// The host states of `items` (from the table), split into those that read and those that do not.
fn host_states_of(items: &[HashMap<String, AttributeValue>]) -> HostStates {
    let mut found = HostStates::default();
    for item in items {
        let Some(host) = item
            .get(KEY)
            .and_then(|k| k.as_s().ok())
            .and_then(|k| k.strip_prefix(HOST_PREFIX))
        else {
            continue;
        };
        match parse_state(item).0 {
            Ok(state) => found.states.push((host.to_owned(), state)),
            Err(e) => {
                unreadable_state(host, &e);
                found.unreadable.push(host.to_owned());
            }
        }
    }
    found
}

fn parse_leases(item: &HashMap<String, AttributeValue>) -> Vec<Lease> {
    item.iter()
        .filter_map(|(name, value)| {
            Lease::from_value(name.strip_prefix(LEASE_PREFIX)?, value.as_s().ok()?)
        })
        .collect()
}

impl DynamoDbFleet {
    /// The fleet's state in `table` (the idempotency table).
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    async fn read(&self, host: &str) -> Result<(HostState, i64), BackendError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, host_key(host))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("dynamodb:GetItem", e))?;
        let Some(item) = output.item() else {
            return Ok((HostState::default(), 0));
        };
        let (state, version) = parse_state(item);
        // The event then applies to the default and its write replaces the unreadable item.
        let state = state.unwrap_or_else(|e| unreadable_state(host, &e));
        Ok((state, version))
    }

    /// Removes lapsed leases, unless one of them was renewed meanwhile (then the next renewal
    /// tries again).
    async fn prune(&self, lapsed: &[Lease]) -> Result<(), BackendError> {
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        let mut removes = Vec::new();
        let mut conditions = Vec::new();
        for (i, lease) in lapsed.iter().enumerate() {
            names.insert(
                format!("#l{i}"),
                format!("{LEASE_PREFIX}{}", lease.instance),
            );
            values.insert(format!(":l{i}"), AttributeValue::S(lease.to_value()));
            removes.push(format!("#l{i}"));
            conditions.push(format!("#l{i} = :l{i}"));
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(LEASES_KEY))
            .update_expression(format!("REMOVE {}", removes.join(", ")))
            .condition_expression(conditions.join(" AND "))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if service_code(&e) == Some(CONDITION_FAILED) => Ok(()),
            Err(e) => Err(sdk_error("dynamodb:UpdateItem", e)),
        }
    }
}

#[async_trait]
impl FleetStore for DynamoDbFleet {
    async fn read_host_states(&self, hosts: &[String]) -> Result<HostStates, BackendError> {
        let items =
            super::table::batch_get(&self.client, &self.table, hosts.iter().map(|h| host_key(h)))
                .await?;
        Ok(host_states_of(&items))
    }

    async fn apply(
        &self,
        host: &str,
        event: &HostEvent,
        now_ms: i64,
        policy: &HostPolicy,
    ) -> Result<(HostState, bool), BackendError> {
        for _ in 0..MAX_CONFLICTS {
            let (current, version) = self.read(host).await?;
            let Some(next) = current.apply(event, now_ms, policy) else {
                return Ok((current, false));
            };
            let text = serde_json::to_string(&next)
                .map_err(|e| BackendError::permanent("dynamodb", e.to_string()))?;
            let condition = if version == 0 {
                "attribute_not_exists(#version)"
            } else {
                "#version = :version"
            };
            let mut values = HashMap::from([
                (":state".to_owned(), AttributeValue::S(text)),
                (
                    ":next".to_owned(),
                    AttributeValue::N((version + 1).to_string()),
                ),
            ]);
            if version != 0 {
                values.insert(":version".into(), AttributeValue::N(version.to_string()));
            }
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(KEY, host_key(host))
                .update_expression("SET #state = :state, #version = :next")
                .condition_expression(condition)
                .expression_attribute_names("#state", "host_state")
                .expression_attribute_names("#version", "version")
                .set_expression_attribute_values(Some(values))
                .send()
                .await;
            match result {
                Ok(_) => return Ok((next, true)),
                Err(e) if service_code(&e) == Some(CONDITION_FAILED) => continue,
                Err(e) => return Err(sdk_error("dynamodb:UpdateItem", e)),
            }
        }
        Err(BackendError::transient(
            "dynamodb:UpdateItem",
            format!("host {host}: {MAX_CONFLICTS} conflicting writers in a row"),
        ))
    }

    async fn renew(&self, lease: &Lease, now_ms: i64) -> Result<Vec<Lease>, BackendError> {
        let output = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(LEASES_KEY))
            .update_expression("SET #me = :me")
            .expression_attribute_names("#me", format!("{LEASE_PREFIX}{}", lease.instance))
            .expression_attribute_values(":me", AttributeValue::S(lease.to_value()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| sdk_error("dynamodb:UpdateItem", e))?;
        let (live, lapsed): (Vec<Lease>, Vec<Lease>) = output
            .attributes()
            .map(parse_leases)
            .unwrap_or_default()
            .into_iter()
            .partition(|l| l.expires_ms > now_ms);
        if !lapsed.is_empty() {
            self.prune(&lapsed).await?;
        }
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(host: &str, state: Option<AttributeValue>) -> HashMap<String, AttributeValue> {
        let mut item = HashMap::from([
            (KEY.to_owned(), host_key(host)),
            ("version".to_owned(), AttributeValue::N("3".into())),
        ]);
        if let Some(state) = state {
            item.insert("host_state".to_owned(), state);
        }
        item
    }

    #[test]
    fn an_unparseable_host_state_is_listed_as_unreadable_not_hidden() {
        let paused = HostState {
            operator_paused: true,
            ..HostState::default()
        };
        let text = serde_json::to_string(&paused).unwrap();
        let items = [
            item("good.example", Some(AttributeValue::S(text))),
            item(
                "garbled.example",
                Some(AttributeValue::S("{not json".into())),
            ),
            item("number.example", Some(AttributeValue::N("1".into()))),
            item("fresh.example", None),
        ];
        let found = host_states_of(&items);
        assert_eq!(
            found.states,
            [
                ("good.example".to_owned(), paused),
                ("fresh.example".to_owned(), HostState::default())
            ]
        );
        assert_eq!(found.unreadable, ["garbled.example", "number.example"]);
        // The version still reads, so the next event's conditional write replaces the item.
        assert_eq!(parse_state(&items[1]).1, 3);
    }
}
