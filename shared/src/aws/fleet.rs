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

use super::table::{host_key, s, CONDITION_FAILED, HOST_PREFIX, KEY, LEASES_KEY};
use super::{sdk_error, service_code};
use crate::error::BackendError;
use crate::fleet::{FleetStore, Lease};
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

fn parse_state(item: &HashMap<String, AttributeValue>) -> (HostState, i64) {
    let state = item
        .get("host_state")
        .and_then(|v| v.as_s().ok())
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let version = item
        .get("version")
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (state, version)
}

fn parse_leases(item: &HashMap<String, AttributeValue>) -> Vec<Lease> {
    item.iter()
        .filter_map(|(name, value)| {
            let instance = name.strip_prefix(LEASE_PREFIX)?;
            let (since, expires) = value.as_s().ok()?.split_once(':')?;
            Some(Lease {
                instance: instance.to_owned(),
                since_ms: since.parse().ok()?,
                expires_ms: expires.parse().ok()?,
            })
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
        Ok(output.item().map(parse_state).unwrap_or_default())
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
            values.insert(
                format!(":l{i}"),
                AttributeValue::S(format!("{}:{}", lease.since_ms, lease.expires_ms)),
            );
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
    async fn host_states(
        &self,
        hosts: &[String],
    ) -> Result<Vec<(String, HostState)>, BackendError> {
        let items =
            super::table::batch_get(&self.client, &self.table, hosts.iter().map(|h| host_key(h)))
                .await?;
        Ok(items
            .iter()
            .filter_map(|item| {
                let host = item.get(KEY)?.as_s().ok()?.strip_prefix(HOST_PREFIX)?;
                Some((host.to_owned(), parse_state(item).0))
            })
            .collect())
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
            .expression_attribute_values(
                ":me",
                AttributeValue::S(format!("{}:{}", lease.since_ms, lease.expires_ms)),
            )
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
