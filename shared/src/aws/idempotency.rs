//! [`IdempotencyStore`] over a DynamoDB table keyed by `message_id`.
//!
//! Every transition of the state machine (see [`crate::idempotency`]) is one conditional
//! `UpdateItem`. Item attributes: `message_id`, `status`, `in_progress_expiry` (ms),
//! `expiration` (s, the table's TTL attribute), `attempts`, `failures`, `last_error`,
//! `status_code`, `run_id`, `target_id`.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::table::{batch_get, n, s, CONDITION_FAILED, KEY};
use super::{sdk_error, service_code};
use crate::error::BackendError;
use crate::failure::Failure;
use crate::idempotency::{
    already_moved, decide_acquire, Acquire, Claim, IdempotencyRecord, IdempotencyStore, Status,
    Transition,
};
use crate::runs::{CountToken, Delta, JobCount, Tally};

/// The condition of every transition: the record is in the expected state, held by the caller.
const TRANSITION_CONDITION: &str = "#status = :from AND #attempts = :attempt";

/// A transition's expression values plus its guard's ([`TRANSITION_CONDITION`]): the state it
/// leaves and the holder's attempt.
fn guarded(
    mut values: HashMap<String, AttributeValue>,
    from: Status,
    attempt: u32,
) -> HashMap<String, AttributeValue> {
    values.insert(":from".into(), s(from.as_str()));
    values.insert(":attempt".into(), n(attempt));
    values
}

/// The idempotency table.
#[derive(Debug, Clone)]
pub struct DynamoDbIdempotency {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoDbIdempotency {
    /// The store in `table`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    async fn get(&self, message_id: &str) -> Result<Option<IdempotencyRecord>, BackendError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, s(message_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("dynamodb:GetItem", e))?;
        Ok(output.item().and_then(parse_record))
    }

    /// One conditional acquire. When the condition fails, `Err` holds the item as it was, which
    /// DynamoDB returns with the failure (`ReturnValuesOnConditionCheckFailure`): no read
    /// after it. `Err(None)`: no item, or an endpoint that does not return it.
    async fn try_acquire(
        &self,
        message_id: &str,
        update: &str,
        condition: &str,
        values: HashMap<String, AttributeValue>,
    ) -> Result<Result<Acquire, Option<IdempotencyRecord>>, BackendError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(message_id))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names(&[update, condition])))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(output) => {
                let record = output.attributes().and_then(parse_record);
                let (attempt, failures, dead_letter_class) = record.map_or((1, 0, None), |r| {
                    (r.attempts, r.failures, r.dead_letter_class)
                });
                Ok(Ok(Acquire::Acquired {
                    attempt,
                    failures,
                    dead_letter_class,
                }))
            }
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                let old = match e.err() {
                    UpdateItemError::ConditionalCheckFailedException(failed) => {
                        failed.item().and_then(parse_record)
                    }
                    _ => None,
                };
                Ok(Err(old))
            }
            Err(e) => Err(sdk_error("dynamodb:UpdateItem", e)),
        }
    }

    /// One conditional transition out of IN_PROGRESS (or REJECTED) held by `attempt`.
    async fn transition(
        &self,
        message_id: &str,
        (from, to): (Status, Status),
        attempt: u32,
        set: &str,
        values: HashMap<String, AttributeValue>,
    ) -> Result<Transition, BackendError> {
        self.send_transition(
            message_id,
            (to, attempt),
            set,
            guarded(values, from, attempt),
        )
        .await
    }

    /// Sends a transition to `to` by `attempt` whose values already carry their guard.
    async fn send_transition(
        &self,
        message_id: &str,
        (to, attempt): (Status, u32),
        set: &str,
        values: HashMap<String, AttributeValue>,
    ) -> Result<Transition, BackendError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(message_id))
            .update_expression(set)
            .condition_expression(TRANSITION_CONDITION)
            .set_expression_attribute_names(Some(names(&[set, TRANSITION_CONDITION])))
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Transition::Done),
            Err(e) if service_code(&e) == Some(CONDITION_FAILED) => {
                self.judge_conflict(message_id, to, attempt).await
            }
            Err(e) => Err(sdk_error("dynamodb:UpdateItem", e)),
        }
    }

    /// A transition's condition failed: its own earlier try (applied, its answer lost and the
    /// SDK retrying) or another holder's takeover; one consistent read tells them apart
    /// ([`already_moved`]).
    async fn judge_conflict(
        &self,
        message_id: &str,
        to: Status,
        attempt: u32,
    ) -> Result<Transition, BackendError> {
        let current = self.get(message_id).await?;
        Ok(if already_moved(current.as_ref(), to, attempt) {
            Transition::Done
        } else {
            Transition::Superseded
        })
    }

    /// A terminal transition, storing the job's count (its delta, for batch `token`).
    async fn counted_transition(
        &self,
        message_id: &str,
        (from, to): (Status, Status),
        attempt: u32,
        set: &str,
        mut values: HashMap<String, AttributeValue>,
        (delta, token): (Delta, &CountToken),
    ) -> Result<Transition, BackendError> {
        let delta = serde_json::to_string(&delta)
            .map_err(|e| BackendError::permanent("dynamodb:UpdateItem", e.to_string()))?;
        values.insert(":count_token".into(), s(token.to_string()));
        values.insert(":count_delta".into(), s(delta));
        let set = set.replacen(
            "SET ",
            "SET #count_token = :count_token, #count_delta = :count_delta, ",
            1,
        );
        self.transition(message_id, (from, to), attempt, &set, values)
            .await
    }

    async fn fail_as(
        &self,
        to: Status,
        message_id: &str,
        attempt: u32,
        error: &str,
        code: Option<u16>,
        class: Option<&str>,
    ) -> Result<Transition, BackendError> {
        let mut values = HashMap::from([
            (":to".to_owned(), s(to.as_str())),
            (":err".to_owned(), s(error)),
        ]);
        let mut set = "SET #status = :to, #last_error = :err".to_owned();
        if let Some(code) = code {
            values.insert(":code".into(), n(code));
            set.push_str(", #status_code = :code");
        }
        if let Some(class) = class {
            values.insert(":fclass".into(), s(class));
            set.push_str(", #failure_class = :fclass");
        }
        if to == Status::Failed {
            values.insert(":one".into(), n(1));
            set.push_str(" ADD #failures :one");
        }
        if code.is_none() {
            set.push_str(" REMOVE #status_code");
        }
        self.transition(message_id, (Status::InProgress, to), attempt, &set, values)
            .await
    }
}

/// The name placeholders `expressions` use. Every attribute goes through one (`status` is a
/// DynamoDB reserved word), and DynamoDB refuses placeholders an expression does not use.
fn names(expressions: &[&str]) -> HashMap<String, String> {
    [
        "status",
        "attempts",
        "failures",
        "in_progress_expiry",
        "expiration",
        "last_error",
        "status_code",
        "run_id",
        "target_id",
        "message_id",
        "dead_letter_class",
        "failure_class",
        "holder",
        "count_token",
        "count_delta",
    ]
    .iter()
    .filter(|a| {
        let placeholder = format!("#{a}");
        // `#status` must not count as a use of `#status_code`, and vice versa.
        expressions.iter().any(|e| {
            e.match_indices(&placeholder).any(|(i, _)| {
                !e[i + placeholder.len()..]
                    .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            })
        })
    })
    .map(|a| (format!("#{a}"), (*a).to_owned()))
    .collect()
}

fn parse_record(item: &HashMap<String, AttributeValue>) -> Option<IdempotencyRecord> {
    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let number = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<i64>().ok())
    };
    Some(IdempotencyRecord {
        message_id: text("message_id")?,
        status: Status::parse(&text("status")?)?,
        in_progress_expiry_ms: number("in_progress_expiry").unwrap_or(0),
        expiration_s: number("expiration").unwrap_or(0),
        attempts: number("attempts")
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(0),
        failures: number("failures")
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(0),
        last_error: text("last_error"),
        status_code: number("status_code").and_then(|c| u16::try_from(c).ok()),
        run_id: text("run_id").unwrap_or_default(),
        target_id: text("target_id").unwrap_or_default(),
        dead_letter_class: text("dead_letter_class"),
        failure_class: text("failure_class"),
        holder: number("holder"),
        count: text("count_token")
            .and_then(|t| CountToken::parse(&t))
            .map(|token| JobCount {
                token,
                delta: text("count_delta")
                    .and_then(|d| serde_json::from_str(&d).ok())
                    .unwrap_or_default(),
            }),
    })
}

#[async_trait]
impl IdempotencyStore for DynamoDbIdempotency {
    async fn acquire(&self, claim: &Claim<'_>) -> Result<Acquire, BackendError> {
        // The conditions are `decide_acquire` written for DynamoDB; the item a failed condition
        // returns is judged by `decide_acquire` itself. A record that changed in between (so the
        // read says "acquire") is retried a few times before it is reported as locked. A replay
        // first tries its own branch, which also resets `failures` (a fresh retry budget).
        let values = HashMap::from([
            (":now".to_owned(), n(claim.now_ms)),
            (":lock".to_owned(), n(claim.lock_until_ms)),
            (":exp".to_owned(), n(claim.expiration_s)),
            (":run".to_owned(), s(claim.run_id)),
            (":target".to_owned(), s(claim.target_id)),
            (":holder".to_owned(), n(claim.holder)),
            (":one".to_owned(), n(1)),
            (":in_progress".to_owned(), s(Status::InProgress.as_str())),
        ]);
        let update =
            "SET #status = :in_progress, #in_progress_expiry = :lock, #expiration = :exp, \
                      #run_id = :run, #target_id = :target, #holder = :holder ADD #attempts :one";
        if let Some(replayed) = claim.replay_of {
            let mut values = values.clone();
            values.insert(":dead_lettered".into(), s(Status::DeadLettered.as_str()));
            values.insert(":rejected".into(), s(Status::Rejected.as_str()));
            values.insert(":replayed".into(), n(replayed));
            values.insert(":zero".into(), n(0));
            values.remove(":now");
            let condition =
                "(#status = :dead_lettered OR #status = :rejected) AND #attempts = :replayed";
            let update = "SET #status = :in_progress, #in_progress_expiry = :lock, #expiration = :exp, \
                          #run_id = :run, #target_id = :target, #holder = :holder, #failures = :zero \
                          ADD #attempts :one";
            if let Ok(acquired) = self
                .try_acquire(claim.message_id, update, condition, values)
                .await?
            {
                return Ok(acquired);
            }
        }
        let mut values = values;
        values.insert(":failed".into(), s(Status::Failed.as_str()));
        // A lock is live while its expiry is after now (`decide_acquire`): free at the expiry,
        // and to the claim that took it (its holder token).
        let condition = "attribute_not_exists(#message_id) OR #status = :failed \
                         OR (#status = :in_progress AND #in_progress_expiry <= :now) \
                         OR (#status = :in_progress AND #holder = :holder)";
        for _ in 0..3 {
            let current = match self
                .try_acquire(claim.message_id, update, condition, values.clone())
                .await?
            {
                Ok(acquired) => return Ok(acquired),
                Err(Some(old)) => Some(old),
                // The condition failed on an item, so one exists: read it where the endpoint
                // (an emulator) did not return it.
                Err(None) => self.get(claim.message_id).await?,
            };
            match decide_acquire(
                current.as_ref(),
                claim.now_ms,
                claim.replay_of,
                claim.holder,
            ) {
                Acquire::Acquired { .. } => continue,
                decided => return Ok(decided),
            }
        }
        Ok(Acquire::Locked {
            until_ms: claim.now_ms,
        })
    }

    async fn complete(
        &self,
        message_id: &str,
        attempt: u32,
        status_code: u16,
        expiration_s: i64,
        (tally, token): (&Tally<'_>, &CountToken),
    ) -> Result<Transition, BackendError> {
        let values = HashMap::from([
            (":to".to_owned(), s(Status::Completed.as_str())),
            (":code".to_owned(), n(status_code)),
            (":exp".to_owned(), n(expiration_s)),
        ]);
        let set = "SET #status = :to, #status_code = :code, #expiration = :exp REMOVE #in_progress_expiry, #last_error, #dead_letter_class";
        self.counted_transition(
            message_id,
            (Status::InProgress, Status::Completed),
            attempt,
            set,
            values,
            (tally.delta(true), token),
        )
        .await
    }

    async fn fail(
        &self,
        message_id: &str,
        attempt: u32,
        error: &str,
        status_code: Option<u16>,
    ) -> Result<Transition, BackendError> {
        self.fail_as(
            Status::Failed,
            message_id,
            attempt,
            error,
            status_code,
            None,
        )
        .await
    }

    async fn reject(
        &self,
        message_id: &str,
        attempt: u32,
        failure: &Failure,
    ) -> Result<Transition, BackendError> {
        let class = failure.class();
        let text = failure.to_string();
        self.fail_as(
            Status::Rejected,
            message_id,
            attempt,
            &text,
            failure.status(),
            Some(&class),
        )
        .await
    }

    async fn dead_lettered(
        &self,
        message_id: &str,
        attempt: u32,
        (tally, token): (&Tally<'_>, &CountToken),
    ) -> Result<Transition, BackendError> {
        let class = tally.reason.unwrap_or("unknown");
        let values = HashMap::from([
            (":to".to_owned(), s(Status::DeadLettered.as_str())),
            (":class".to_owned(), s(class)),
        ]);
        let set = "SET #status = :to, #dead_letter_class = :class";
        self.counted_transition(
            message_id,
            (Status::Rejected, Status::DeadLettered),
            attempt,
            set,
            values,
            (tally.delta(false), token),
        )
        .await
    }

    async fn recount(
        &self,
        message_id: &str,
        from: &CountToken,
        to: &CountToken,
    ) -> Result<bool, BackendError> {
        let set = "SET #count_token = :to";
        let condition = "#count_token = :from";
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(message_id))
            .update_expression(set)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names(&[set, condition])))
            .expression_attribute_values(":to", s(to.to_string()))
            .expression_attribute_values(":from", s(from.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            // Moved already: by this caller's earlier try (its answer lost), or by another.
            Err(e) if service_code(&e) == Some(CONDITION_FAILED) => Ok(self
                .get(message_id)
                .await?
                .and_then(|r| r.count)
                .is_some_and(|c| c.token == *to)),
            Err(e) => Err(sdk_error("dynamodb:UpdateItem", e)),
        }
    }

    async fn get_many(
        &self,
        message_ids: &[String],
    ) -> Result<Vec<IdempotencyRecord>, BackendError> {
        let items = batch_get(&self.client, &self.table, message_ids.iter().map(s)).await?;
        Ok(items.iter().filter_map(parse_record).collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_used_placeholders_are_sent() {
        let mut used: Vec<String> = super::names(&["SET #status = :to REMOVE #status_code"])
            .into_keys()
            .collect();
        used.sort();
        assert_eq!(used, vec!["#status", "#status_code"]);
        let used: Vec<String> = super::names(&["#status_code = :c"]).into_keys().collect();
        assert_eq!(used, vec!["#status_code"]);
    }
}
