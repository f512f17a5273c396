//! [`RunLedger`] in the idempotency table.
//!
//! Items (key `message_id`):
//! - `run#ID`: the run: `run_id`, `run_status`, `scheduled_at`, `config_digest`, `started_at`
//!   (ms), `deadline_at`, `finished_at`, `policy` (JSON), `shard_ids` (the shards with jobs,
//!   comma-separated), `shards_done`, `event_sent`, `note`, `sources` (JSON: what each source
//!   of the list gave), and `run_index` = `runs`, which puts
//!   it (and only it) in the sparse global secondary index `runs` sorted by `started_at`.
//! - `run#ID#K`: shard K's counters: `expected`, `succeeded`, `dead_lettered`, the maps
//!   `reasons` and `hosts` (dead-lettered jobs by reason class and host), and `done` once the
//!   shard's settled count reached `expected` and was added to the run's `shards_done`.
//!
//! Every item expires with the table's TTL ([`RUN_TTL_S`] after the run started). A job's count
//! is the second item of its transition's `TransactWriteItems` ([`shard_update`]).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};

use super::table::{
    batch_get, cancellation_codes, n, number, run_key, s, shard_key, text, CONDITION_FAILED, KEY,
    RUNS_INDEX, RUNS_INDEX_KEY, RUNS_INDEX_SORT, TTL_ATTRIBUTE,
};
use super::{sdk_error, service_code};
use crate::error::BackendError;
use crate::runs::{
    shard_of, Begin, Delta, RunCounts, RunLedger, RunPolicy, RunRecord, RunStart, RunStatus,
};

/// How long run items live: 35 days, so a month of runs can be listed.
pub(crate) const RUN_TTL_S: i64 = 35 * 24 * 60 * 60;

/// The run ledger in the DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoDbRuns {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

fn shard_ids(item: &HashMap<String, AttributeValue>) -> Vec<u32> {
    text(item, "shard_ids")
        .unwrap_or_default()
        .split(',')
        .filter_map(|k| k.parse().ok())
        .collect()
}

fn parse_run(item: &HashMap<String, AttributeValue>) -> Option<RunRecord> {
    Some(RunRecord {
        run_id: text(item, "run_id")?,
        status: RunStatus::parse(&text(item, "run_status")?)?,
        scheduled_at: text(item, "scheduled_at"),
        config_digest: text(item, "config_digest").unwrap_or_default(),
        started_at_ms: number(item, RUNS_INDEX_SORT).unwrap_or(0),
        finished_at_ms: number(item, "finished_at"),
        deadline_at_ms: number(item, "deadline_at"),
        policy: text(item, "policy")
            .and_then(|p| serde_json::from_str::<RunPolicy>(&p).ok())
            .unwrap_or_default(),
        counts: RunCounts::default(),
        event_sent: item
            .get("event_sent")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
        note: text(item, "note"),
        sources: text(item, "sources")
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default(),
    })
}

/// The run's item as [`RunLedger::begin`] (RUNNING) or a run that publishes nothing writes it.
fn run_item(
    start: &RunStart,
    status: RunStatus,
    note: Option<&str>,
) -> Result<HashMap<String, AttributeValue>, BackendError> {
    let policy = serde_json::to_string(&start.policy)
        .map_err(|e| BackendError::permanent("dynamodb", e.to_string()))?;
    let shards: Vec<String> = start
        .expected_per_shard
        .keys()
        .map(ToString::to_string)
        .collect();
    let mut item = HashMap::from([
        (KEY.to_owned(), run_key(&start.run_id)),
        ("run_id".to_owned(), s(&start.run_id)),
        ("run_status".to_owned(), s(status.as_str())),
        ("config_digest".to_owned(), s(&start.config_digest)),
        (RUNS_INDEX_SORT.to_owned(), n(start.started_at_ms)),
        ("policy".to_owned(), s(policy)),
        ("shard_ids".to_owned(), s(shards.join(","))),
        ("shards_done".to_owned(), n(0)),
        ("event_sent".to_owned(), AttributeValue::Bool(false)),
        (RUNS_INDEX_KEY.to_owned(), s(RUNS_INDEX)),
        (
            TTL_ATTRIBUTE.to_owned(),
            n(start.started_at_ms / 1000 + RUN_TTL_S),
        ),
    ]);
    if let Some(at) = &start.scheduled_at {
        item.insert("scheduled_at".into(), s(at));
    }
    if let Some(at) = start.deadline_at_ms() {
        item.insert("deadline_at".into(), n(at));
    }
    if let Some(note) = note {
        item.insert("note".into(), s(note));
    }
    if status == RunStatus::Failed {
        item.insert("finished_at".into(), n(start.started_at_ms));
    }
    if !start.sources.is_empty() {
        let sources = serde_json::to_string(&start.sources)
            .map_err(|e| BackendError::permanent("dynamodb", e.to_string()))?;
        item.insert("sources".into(), s(sources));
    }
    Ok(item)
}

fn parse_shard(item: &HashMap<String, AttributeValue>) -> RunCounts {
    let map = |k: &str| -> BTreeMap<String, u64> {
        item.get(k)
            .and_then(|v| v.as_m().ok())
            .map(|m| {
                m.iter()
                    .filter_map(|(key, v)| Some((key.clone(), v.as_n().ok()?.parse::<i64>().ok()?)))
                    .filter(|(_, v)| *v > 0)
                    .map(|(k, v)| (k, v as u64))
                    .collect()
            })
            .unwrap_or_default()
    };
    let count = |k: &str| u64::try_from(number(item, k).unwrap_or(0)).unwrap_or(0);
    RunCounts {
        expected: count("expected"),
        succeeded: count("succeeded"),
        dead_lettered: count("dead_lettered"),
        failures_by_reason: map("reasons"),
        failures_by_host: map("hosts"),
    }
}

/// The shard update that counts a job's terminal transition ([`Delta`]), conditional on the
/// shard existing: a run published before it had a ledger counts nothing.
pub(super) fn shard_update(
    table: &str,
    run_id: &str,
    message_id: &str,
    delta: &Delta,
) -> Result<Update, BackendError> {
    let mut names = HashMap::from([("#expected".to_owned(), "expected".to_owned())]);
    let mut values = HashMap::from([
        (":succeeded".to_owned(), n(delta.succeeded)),
        (":dead".to_owned(), n(delta.dead_lettered)),
    ]);
    let mut sets = Vec::new();
    for (map, prefix, entries) in [
        ("reasons", "r", &delta.reasons),
        ("hosts", "h", &delta.hosts),
    ] {
        names.insert(format!("#{map}"), map.to_owned());
        for (i, (key, by)) in entries.iter().enumerate() {
            names.insert(format!("#{prefix}{i}"), key.clone());
            values.insert(format!(":{prefix}{i}"), n(by));
            sets.push(format!(
                "#{map}.#{prefix}{i} = if_not_exists(#{map}.#{prefix}{i}, :zero) + :{prefix}{i}"
            ));
        }
    }
    if !sets.is_empty() {
        values.insert(":zero".into(), n(0));
    }
    // DynamoDB refuses placeholders an expression does not use.
    names.retain(|k, _| k == "#expected" || sets.iter().any(|e| e.contains(k.as_str())));
    let set = if sets.is_empty() {
        String::new()
    } else {
        format!(" SET {}", sets.join(", "))
    };
    Update::builder()
        .table_name(table)
        .key(KEY, shard_key(run_id, shard_of(message_id)))
        .update_expression(format!(
            "ADD succeeded :succeeded, dead_lettered :dead{set}"
        ))
        .condition_expression("attribute_exists(#expected)")
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .build()
        .map_err(|e| BackendError::permanent("dynamodb:TransactWriteItems", e.to_string()))
}

impl DynamoDbRuns {
    /// The ledger in `table` (the idempotency table).
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Records a run that publishes nothing (no shards), unless the run exists.
    async fn unstarted(
        &self,
        start: &RunStart,
        status: RunStatus,
        reason: &str,
    ) -> Result<(), BackendError> {
        let unstarted = RunStart {
            expected_per_shard: BTreeMap::new(),
            ..start.clone()
        };
        self.create(vec![self.put(run_item(
            &unstarted,
            status,
            Some(reason),
        )?)?])
        .await
        .map(|_| ())
    }

    fn put(
        &self,
        item: HashMap<String, AttributeValue>,
    ) -> Result<TransactWriteItem, BackendError> {
        self.put_if(item, "attribute_not_exists(message_id)", HashMap::new())
    }

    fn put_if(
        &self,
        item: HashMap<String, AttributeValue>,
        condition: &str,
        values: HashMap<String, AttributeValue>,
    ) -> Result<TransactWriteItem, BackendError> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_values((!values.is_empty()).then_some(values))
            .build()
            .map_err(|e| BackendError::permanent("dynamodb:TransactWriteItems", e.to_string()))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Writes `items` at once; `Ok(false)` when a condition failed (the run exists).
    async fn create(&self, items: Vec<TransactWriteItem>) -> Result<bool, BackendError> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if cancellation_codes(&e)
                    .is_some_and(|codes| codes.iter().any(|c| c == "ConditionalCheckFailed")) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk_error("dynamodb:TransactWriteItems", e)),
        }
    }

    async fn run_item(
        &self,
        run_id: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, BackendError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, run_key(run_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("dynamodb:GetItem", e))?;
        Ok(output.item().cloned())
    }

    /// Each shard's item, by shard.
    async fn shards(
        &self,
        run_id: &str,
        shards: &[u32],
    ) -> Result<Vec<(u32, HashMap<String, AttributeValue>)>, BackendError> {
        let items = batch_get(
            &self.client,
            &self.table,
            shards.iter().map(|k| shard_key(run_id, *k)),
        )
        .await?;
        Ok(items
            .into_iter()
            .filter_map(|item| Some((text(&item, KEY)?.rsplit('#').next()?.parse().ok()?, item)))
            .collect())
    }

    /// The run with its counters summed over its shards.
    async fn with_counts(
        &self,
        item: &HashMap<String, AttributeValue>,
    ) -> Result<Option<RunRecord>, BackendError> {
        let Some(mut run) = parse_run(item) else {
            return Ok(None);
        };
        for (_, shard) in self.shards(&run.run_id, &shard_ids(item)).await? {
            run.counts.add(&parse_shard(&shard));
        }
        Ok(Some(run))
    }

    /// Marks a settled shard done and adds it to the run's `shards_done`, once. True for the
    /// caller that did.
    async fn register_done(&self, run_id: &str, shard: u32) -> Result<bool, BackendError> {
        let mark = Update::builder()
            .table_name(&self.table)
            .key(KEY, shard_key(run_id, shard))
            .update_expression("SET done = :yes")
            .condition_expression("attribute_not_exists(done)")
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .build()
            .map_err(|e| BackendError::permanent("dynamodb:TransactWriteItems", e.to_string()))?;
        let add = Update::builder()
            .table_name(&self.table)
            .key(KEY, run_key(run_id))
            .update_expression("ADD shards_done :one")
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(|e| BackendError::permanent("dynamodb:TransactWriteItems", e.to_string()))?;
        let items = vec![
            TransactWriteItem::builder().update(mark).build(),
            TransactWriteItem::builder().update(add).build(),
        ];
        self.create(items).await
    }
}

#[async_trait]
impl RunLedger for DynamoDbRuns {
    async fn begin(&self, start: &RunStart) -> Result<Begin, BackendError> {
        // A run that failed before publishing (its list could not be read) has no shards and
        // nothing in flight: a re-run of its tick begins it afresh.
        let mut items = vec![self.put_if(
            run_item(start, RunStatus::Running, None)?,
            "attribute_not_exists(message_id) OR (run_status = :failed AND shard_ids = :none)",
            HashMap::from([
                (":failed".to_owned(), s(RunStatus::Failed.as_str())),
                (":none".to_owned(), s("")),
            ]),
        )?];
        for (shard, expected) in &start.expected_per_shard {
            items.push(self.put(HashMap::from([
                (KEY.to_owned(), shard_key(&start.run_id, *shard)),
                ("expected".to_owned(), n(expected)),
                ("succeeded".to_owned(), n(0)),
                ("dead_lettered".to_owned(), n(0)),
                ("reasons".to_owned(), AttributeValue::M(HashMap::new())),
                ("hosts".to_owned(), AttributeValue::M(HashMap::new())),
                (
                    TTL_ATTRIBUTE.to_owned(),
                    n(start.started_at_ms / 1000 + RUN_TTL_S),
                ),
            ]))?);
        }
        if self.create(items).await? {
            return Ok(Begin::Started);
        }
        let existing = self.get(&start.run_id).await?;
        existing
            .map(|r| Begin::Existing(Box::new(r)))
            .ok_or_else(|| {
                BackendError::transient("dynamodb", format!("run {} exists in part", start.run_id))
            })
    }

    async fn skip(&self, start: &RunStart, reason: &str) -> Result<(), BackendError> {
        self.unstarted(start, RunStatus::Skipped, reason).await
    }

    async fn fail_unpublished(&self, start: &RunStart, reason: &str) -> Result<(), BackendError> {
        self.unstarted(start, RunStatus::Failed, reason).await
    }

    async fn get(&self, run_id: &str) -> Result<Option<RunRecord>, BackendError> {
        match self.run_item(run_id).await? {
            Some(item) => self.with_counts(&item).await,
            None => Ok(None),
        }
    }

    async fn list(&self, limit: usize) -> Result<Vec<RunRecord>, BackendError> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(RUNS_INDEX)
            .key_condition_expression("run_index = :runs")
            .expression_attribute_values(":runs", s(RUNS_INDEX))
            .scan_index_forward(false)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| sdk_error("dynamodb:Query", e))?;
        let mut runs = Vec::new();
        for item in output.items() {
            // The index is eventually consistent: read the run itself for its current state.
            let current = match text(item, "run_id") {
                Some(run_id) => self.run_item(&run_id).await?,
                None => None,
            };
            if let Some(run) = self.with_counts(current.as_ref().unwrap_or(item)).await? {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    async fn record_settled(
        &self,
        run_id: &str,
        shards: &[u32],
    ) -> Result<Option<RunRecord>, BackendError> {
        let mut touched = shards.to_vec();
        touched.sort_unstable();
        touched.dedup();
        let mut registered = false;
        for (shard, item) in self.shards(run_id, &touched).await? {
            let counts = parse_shard(&item);
            if counts.settled() >= counts.expected && !item.contains_key("done") {
                // A failed condition is another caller's registration, or this one's whose
                // answer was lost (the SDK retried the applied write): either way the shard is
                // done, and this caller may hold the run's last one, so it looks too.
                self.register_done(run_id, shard).await?;
                registered = true;
            }
        }
        // Only a caller that saw a shard complete looks further: it may have been the last.
        // (A crash right here is caught by the watchdog's sweep.)
        if !registered {
            return Ok(None);
        }
        let Some(item) = self.run_item(run_id).await? else {
            return Ok(None);
        };
        let total = shard_ids(&item).len() as i64;
        if text(&item, "run_status").as_deref() != Some(RunStatus::Running.as_str())
            || number(&item, "shards_done").unwrap_or(0) < total
        {
            return Ok(None);
        }
        self.with_counts(&item).await
    }

    async fn finish(
        &self,
        run_id: &str,
        status: RunStatus,
        finished_at_ms: i64,
        finisher: i64,
    ) -> Result<bool, BackendError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, run_key(run_id))
            .update_expression("SET run_status = :to, finished_at = :at, finished_by = :by")
            .condition_expression("run_status = :running")
            .expression_attribute_values(":to", s(status.as_str()))
            .expression_attribute_values(":at", n(finished_at_ms))
            .expression_attribute_values(":by", n(finisher))
            .expression_attribute_values(":running", s(RunStatus::Running.as_str()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            // Finished already: by another caller, or by this one's earlier try (see the trait).
            Err(e) if service_code(&e) == Some(CONDITION_FAILED) => Ok(self
                .run_item(run_id)
                .await?
                .is_some_and(|item| number(&item, "finished_by") == Some(finisher))),
            Err(e) => Err(sdk_error("dynamodb:UpdateItem", e)),
        }
    }

    async fn mark_event_sent(&self, run_id: &str) -> Result<(), BackendError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key(KEY, run_key(run_id))
            .update_expression("SET event_sent = :yes")
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .send()
            .await
            .map_err(|e| sdk_error("dynamodb:UpdateItem", e))?;
        Ok(())
    }
}
