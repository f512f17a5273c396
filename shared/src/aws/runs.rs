//! [`RunLedger`] in the idempotency table.
//!
//! Items (key `message_id`):
//! - `run#ID`: the run: `run_id`, `run_status`, `scheduled_at`, `config_digest`, `started_at`
//!   (ms), `deadline_at`, `finished_at`, `policy` (JSON), `expected`, `event_sent`, `note`,
//!   `sources` (JSON: what each source of the list gave), and `run_index` = `runs`, which
//!   puts it (and only it) in the sparse global secondary index `runs` sorted by `started_at`.
//! - `run#ID#counts`: its counters: `expected`, `succeeded`, `dead_lettered`, the maps
//!   `reasons` and `hosts` (dead-lettered jobs by reason class and host), and, per consumer
//!   instance, `last` (its last batch applied or sealed) and `sealed` (the list of its batches
//!   others sealed) ([`crate::runs`]'s `count` module). One conditional `UpdateItem` adds a
//!   whole batch ([`count_update`]).
//!
//! Every item expires with the table's TTL ([`RUN_TTL_S`] after the run started).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};

use super::table::{
    cancellation_codes, counts_key, n, number, run_key, s, text, CONDITION_FAILED, KEY, RUNS_INDEX,
    RUNS_INDEX_KEY, RUNS_INDEX_SORT, TTL_ATTRIBUTE,
};
use super::{sdk_error, service_code};
use crate::error::BackendError;
use crate::runs::{
    Begin, CountState, Counted, Delta, RunCounts, RunLedger, RunPolicy, RunRecord, RunStart,
    RunStatus,
};

/// How long run items live: 35 days, so a month of runs can be listed.
pub(crate) const RUN_TTL_S: i64 = 35 * 24 * 60 * 60;

/// The run ledger in the DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoDbRuns {
    client: aws_sdk_dynamodb::Client,
    table: String,
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
    let mut item = HashMap::from([
        (KEY.to_owned(), run_key(&start.run_id)),
        ("run_id".to_owned(), s(&start.run_id)),
        ("run_status".to_owned(), s(status.as_str())),
        ("config_digest".to_owned(), s(&start.config_digest)),
        (RUNS_INDEX_SORT.to_owned(), n(start.started_at_ms)),
        ("policy".to_owned(), s(policy)),
        ("expected".to_owned(), n(start.expected)),
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

/// The counters and batch state of a `run#ID#counts` item.
fn parse_counts(item: &HashMap<String, AttributeValue>) -> CountState {
    let numbers = |k: &str| -> BTreeMap<String, i64> {
        item.get(k)
            .and_then(|v| v.as_m().ok())
            .map(|m| {
                m.iter()
                    .filter_map(|(key, v)| Some((key.clone(), v.as_n().ok()?.parse::<i64>().ok()?)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let positive = |k: &str| -> BTreeMap<String, u64> {
        numbers(k)
            .into_iter()
            .filter_map(|(k, v)| Some((k, u64::try_from(v).ok().filter(|v| *v > 0)?)))
            .collect()
    };
    let count = |k: &str| u64::try_from(number(item, k).unwrap_or(0)).unwrap_or(0);
    let sealed = item
        .get("sealed")
        .and_then(|v| v.as_m().ok())
        .map(|m| {
            m.iter()
                .map(|(instance, list)| {
                    let seqs = list
                        .as_l()
                        .map(|l| {
                            l.iter()
                                .filter_map(|v| v.as_n().ok()?.parse().ok())
                                .collect()
                        })
                        .unwrap_or_default();
                    (instance.clone(), seqs)
                })
                .collect()
        })
        .unwrap_or_default();
    CountState {
        counts: RunCounts {
            expected: count("expected"),
            succeeded: count("succeeded"),
            dead_lettered: count("dead_lettered"),
            failures_by_reason: positive("reasons"),
            failures_by_host: positive("hosts"),
        },
        last: positive("last"),
        sealed,
    }
}

/// The update that adds batch `seq` of `instance` (`delta`) to a run's counters: conditional on
/// the counters existing (a run published before it had a ledger counts nothing) and on the
/// instance's last batch being `seq - 1`.
fn count_update(instance: &str, seq: u64, delta: &Delta) -> (String, String, Names, Values) {
    let mut names = Names::from([
        ("#last".to_owned(), "last".to_owned()),
        ("#i".to_owned(), instance.to_owned()),
    ]);
    let mut values = Values::from([
        (":succeeded".to_owned(), n(delta.succeeded)),
        (":dead".to_owned(), n(delta.dead_lettered)),
        (":seq".to_owned(), n(seq)),
    ]);
    let mut sets = vec!["#last.#i = :seq".to_owned()];
    for (map, prefix, entries) in [
        ("reasons", "r", &delta.reasons),
        ("hosts", "h", &delta.hosts),
    ] {
        if entries.is_empty() {
            continue;
        }
        names.insert(format!("#{map}"), map.to_owned());
        values.insert(":zero".into(), n(0));
        for (i, (key, by)) in entries.iter().enumerate() {
            names.insert(format!("#{prefix}{i}"), key.clone());
            values.insert(format!(":{prefix}{i}"), n(by));
            sets.push(format!(
                "#{map}.#{prefix}{i} = if_not_exists(#{map}.#{prefix}{i}, :zero) + :{prefix}{i}"
            ));
        }
    }
    let update = format!(
        "ADD succeeded :succeeded, dead_lettered :dead SET {}",
        sets.join(", ")
    );
    (update, after_last(seq, &mut values), names, values)
}

/// The condition that the instance (`#i`) has applied or sealed exactly its batches before
/// `seq`, on counters that exist.
fn after_last(seq: u64, values: &mut Values) -> String {
    if seq <= 1 {
        "attribute_exists(expected) AND attribute_not_exists(#last.#i)".to_owned()
    } else {
        values.insert(":previous".into(), n(seq - 1));
        "attribute_exists(expected) AND #last.#i = :previous".to_owned()
    }
}

/// A batch's count whose condition failed on existing counters: applied by its own earlier try,
/// or sealed by another consumer ([`CountState::answer`]). Anything else (an earlier batch of
/// the instance missing) is a consumer that skipped a batch number: refused, never guessed.
fn judge_count(state: CountState, instance: &str, seq: u64) -> Result<Counted, BackendError> {
    state.answer(instance, seq).ok_or_else(|| {
        BackendError::permanent(
            "dynamodb:UpdateItem",
            format!(
                "run counters: batch {seq} of {instance} follows no batch {}",
                seq - 1
            ),
        )
    })
}

type Names = HashMap<String, String>;
type Values = HashMap<String, AttributeValue>;

impl DynamoDbRuns {
    /// The ledger in `table` (the idempotency table).
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Records a run that publishes nothing (no counters), unless the run exists.
    async fn unstarted(
        &self,
        start: &RunStart,
        status: RunStatus,
        reason: &str,
    ) -> Result<(), BackendError> {
        let unstarted = RunStart {
            expected: 0,
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

    /// The run's counters item, read consistently.
    async fn counts_item(&self, run_id: &str) -> Result<Option<CountState>, BackendError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, counts_key(run_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("dynamodb:GetItem", e))?;
        Ok(output.item().map(parse_counts))
    }

    /// The run with its counters.
    async fn with_counts(
        &self,
        item: &HashMap<String, AttributeValue>,
    ) -> Result<Option<RunRecord>, BackendError> {
        let Some(mut run) = parse_run(item) else {
            return Ok(None);
        };
        if let Some(state) = self.counts_item(&run.run_id).await? {
            run.counts = state.counts;
        }
        Ok(Some(run))
    }

    /// One conditional update of a run's counters; `Ok(None)` when its condition failed.
    async fn update_counts(
        &self,
        run_id: &str,
        (update, condition, names, values): (String, String, Names, Values),
    ) -> Result<Option<CountState>, BackendError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, counts_key(run_id))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(output) => Ok(Some(
                output.attributes().map(parse_counts).unwrap_or_default(),
            )),
            Err(e) if service_code(&e) == Some(CONDITION_FAILED) => Ok(None),
            Err(e) => Err(sdk_error("dynamodb:UpdateItem", e)),
        }
    }
}

#[async_trait]
impl RunLedger for DynamoDbRuns {
    async fn begin(&self, start: &RunStart) -> Result<Begin, BackendError> {
        // A run that failed before publishing (its list could not be read) has no jobs and
        // nothing in flight: a re-run of its tick begins it afresh. (`shard_ids` is how runs
        // written before the batch counters said so.)
        let run = self.put_if(
            run_item(start, RunStatus::Running, None)?,
            "attribute_not_exists(message_id) OR (run_status = :failed AND (expected = :none OR shard_ids = :no_shards))",
            HashMap::from([
                (":failed".to_owned(), s(RunStatus::Failed.as_str())),
                (":none".to_owned(), n(0)),
                (":no_shards".to_owned(), s("")),
            ]),
        )?;
        let empty = || AttributeValue::M(HashMap::new());
        let counts = self.put(HashMap::from([
            (KEY.to_owned(), counts_key(&start.run_id)),
            ("expected".to_owned(), n(start.expected)),
            ("succeeded".to_owned(), n(0)),
            ("dead_lettered".to_owned(), n(0)),
            ("reasons".to_owned(), empty()),
            ("hosts".to_owned(), empty()),
            ("last".to_owned(), empty()),
            ("sealed".to_owned(), empty()),
            (
                TTL_ATTRIBUTE.to_owned(),
                n(start.started_at_ms / 1000 + RUN_TTL_S),
            ),
        ]))?;
        if self.create(vec![run, counts]).await? {
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

    async fn count(
        &self,
        run_id: &str,
        instance: &str,
        seq: u64,
        delta: &Delta,
    ) -> Result<Counted, BackendError> {
        if let Some(state) = self
            .update_counts(run_id, count_update(instance, seq, delta))
            .await?
        {
            return Ok(Counted::Applied(state));
        }
        // The condition failed: no ledger, this batch's own earlier try (applied, its answer
        // lost), or another consumer's seal. One consistent read tells them apart.
        Ok(match self.counts_item(run_id).await? {
            None => Counted::NoLedger,
            Some(state) => judge_count(state, instance, seq)?,
        })
    }

    async fn seal(
        &self,
        run_id: &str,
        instance: &str,
        seq: u64,
    ) -> Result<Option<CountState>, BackendError> {
        let mut values = Values::from([
            (":seq".to_owned(), n(seq)),
            (":one".to_owned(), AttributeValue::L(vec![n(seq)])),
            (":none".to_owned(), AttributeValue::L(Vec::new())),
        ]);
        let condition = after_last(seq, &mut values);
        let names = Names::from([
            ("#last".to_owned(), "last".to_owned()),
            ("#sealed".to_owned(), "sealed".to_owned()),
            ("#i".to_owned(), instance.to_owned()),
        ]);
        let update =
            "SET #last.#i = :seq, #sealed.#i = list_append(if_not_exists(#sealed.#i, :none), :one)"
                .to_owned();
        match self
            .update_counts(run_id, (update, condition, names, values))
            .await?
        {
            Some(state) => Ok(Some(state)),
            None => self.counts_item(run_id).await,
        }
    }

    async fn count_state(&self, run_id: &str) -> Result<Option<CountState>, BackendError> {
        self.counts_item(run_id).await
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
