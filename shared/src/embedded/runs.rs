//! The embedded run ledger: tables `runs` (one row per run), `run_counts` (expected and
//! settled counts), `run_failures` (dead-lettered jobs by reason and by host) and
//! `run_batches` (per consumer instance: its last batch applied or sealed, and the ones sealed),
//! with the same batch counting as the DynamoDB ledger ([`crate::runs`]'s `count` module).

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, Transaction};

use super::{sql_error, EmbeddedBackend};
use crate::error::BackendError;
use crate::runs::{
    BatchState, Begin, CountState, Counted, Delta, RunCounts, RunLedger, RunPolicy, RunRecord,
    RunStart, RunStatus,
};

const COLUMNS: &str = "run_id, status, scheduled_at, config_digest, started_at, finished_at, deadline_at, policy, event_sent, note, sources";

/// The run ledger in the state file.
#[derive(Debug, Clone)]
pub struct EmbeddedRuns {
    backend: EmbeddedBackend,
}

fn run_row(row: &Row<'_>) -> rusqlite::Result<RunRecord> {
    let status: String = row.get(1)?;
    let policy: String = row.get(7)?;
    Ok(RunRecord {
        run_id: row.get(0)?,
        // Only this module writes the column; an unknown value means a hand edit.
        status: RunStatus::parse(&status).unwrap_or(RunStatus::Running),
        scheduled_at: row.get(2)?,
        config_digest: row.get(3)?,
        started_at_ms: row.get(4)?,
        finished_at_ms: row.get(5)?,
        deadline_at_ms: row.get(6)?,
        policy: serde_json::from_str::<RunPolicy>(&policy).unwrap_or_default(),
        counts: RunCounts::default(),
        event_sent: row.get(8)?,
        note: row.get(9)?,
        // Only this module writes the column: JSON of `RunStart::sources`.
        sources: row
            .get::<_, Option<String>>(10)?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default(),
    })
}

/// Adds a batch's `delta` to the run's counters, inside the batch's transaction.
fn apply(tx: &Transaction<'_>, run_id: &str, delta: &Delta) -> Result<(), BackendError> {
    tx.prepare_cached("UPDATE run_counts SET succeeded = succeeded + ?2, dead_lettered = dead_lettered + ?3 WHERE run_id = ?1")
        .and_then(|mut s| s.execute(rusqlite::params![run_id, delta.succeeded, delta.dead_lettered]))
        .map_err(sql_error)?;
    let mut upsert = tx
        .prepare_cached(
            "INSERT INTO run_failures (run_id, kind, key, count) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (run_id, kind, key) DO UPDATE SET count = count + ?4",
        )
        .map_err(sql_error)?;
    for (kind, entries) in [("reason", &delta.reasons), ("host", &delta.hosts)] {
        for (key, n) in entries {
            upsert
                .execute(rusqlite::params![run_id, kind, key, n])
                .map_err(sql_error)?;
        }
    }
    Ok(())
}

/// The run's counters (`None` without a ledger).
fn counts(tx: &rusqlite::Connection, run_id: &str) -> Result<Option<RunCounts>, BackendError> {
    let row = tx
        .prepare_cached(
            "SELECT expected, succeeded, dead_lettered FROM run_counts WHERE run_id = ?1",
        )
        .and_then(|mut s| {
            s.query_row([run_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .optional()
        })
        .map_err(sql_error)?;
    let Some((expected, succeeded, dead_lettered)) = row else {
        return Ok(None);
    };
    let mut counts = RunCounts {
        expected: unsigned(expected),
        succeeded: unsigned(succeeded),
        dead_lettered: unsigned(dead_lettered),
        ..RunCounts::default()
    };
    let mut stmt = tx
        .prepare_cached("SELECT kind, key, count FROM run_failures WHERE run_id = ?1 AND count > 0")
        .map_err(sql_error)?;
    let rows = stmt
        .query_map([run_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(sql_error)?;
    for row in rows {
        let (kind, key, n) = row.map_err(sql_error)?;
        let into = if kind == "host" {
            &mut counts.failures_by_host
        } else {
            &mut counts.failures_by_reason
        };
        into.insert(key, unsigned(n));
    }
    Ok(Some(counts))
}

/// The run's count state (`None` without a ledger).
fn count_state(
    tx: &rusqlite::Connection,
    run_id: &str,
) -> Result<Option<CountState>, BackendError> {
    let Some(counts) = counts(tx, run_id)? else {
        return Ok(None);
    };
    let mut state = CountState {
        counts,
        ..CountState::default()
    };
    let mut stmt = tx
        .prepare_cached("SELECT instance, last, sealed FROM run_batches WHERE run_id = ?1")
        .map_err(sql_error)?;
    let rows = stmt
        .query_map([run_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(sql_error)?;
    for row in rows {
        let (instance, last, sealed) = row.map_err(sql_error)?;
        // Only this module writes the column: a JSON list of batch numbers.
        let sealed: Vec<u64> = serde_json::from_str(&sealed).unwrap_or_default();
        if !sealed.is_empty() {
            state.sealed.insert(instance.clone(), sealed);
        }
        state.last.insert(instance, unsigned(last));
    }
    Ok(Some(state))
}

/// Sets `instance`'s last batch to `seq`, sealing it when `sealed`.
fn advance(
    tx: &Transaction<'_>,
    state: &CountState,
    (run_id, instance, seq): (&str, &str, u64),
    sealed: bool,
) -> Result<(), BackendError> {
    let mut list = state.sealed.get(instance).cloned().unwrap_or_default();
    if sealed {
        list.push(seq);
    }
    let list = serde_json::to_string(&list)
        .map_err(|e| BackendError::permanent("sqlite", e.to_string()))?;
    tx.execute(
        "INSERT INTO run_batches (run_id, instance, last, sealed) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (run_id, instance) DO UPDATE SET last = ?3, sealed = ?4",
        rusqlite::params![
            run_id,
            instance,
            i64::try_from(seq).unwrap_or(i64::MAX),
            list
        ],
    )
    .map_err(sql_error)?;
    Ok(())
}

impl EmbeddedRuns {
    pub(super) fn new(backend: EmbeddedBackend) -> Self {
        Self { backend }
    }

    fn insert(
        &self,
        start: &RunStart,
        status: RunStatus,
        note: Option<&str>,
    ) -> Result<bool, BackendError> {
        let mut inner = self.backend.lock()?;
        let tx = inner
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql_error)?;
        let policy = serde_json::to_string(&start.policy)
            .map_err(|e| BackendError::permanent("sqlite", e.to_string()))?;
        let sources = (!start.sources.is_empty())
            .then(|| serde_json::to_string(&start.sources))
            .transpose()
            .map_err(|e| BackendError::permanent("sqlite", e.to_string()))?;
        if status == RunStatus::Running {
            // A run that failed before publishing (its list could not be read) has no counters
            // and nothing in flight: a re-run of its tick begins it afresh.
            tx.execute(
                "DELETE FROM runs WHERE run_id = ?1 AND status = 'FAILED'
                 AND NOT EXISTS (SELECT 1 FROM run_counts WHERE run_id = ?1)",
                [&start.run_id],
            )
            .map_err(sql_error)?;
        }
        let finished_at = (status == RunStatus::Failed).then_some(start.started_at_ms);
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO runs (run_id, status, scheduled_at, config_digest, started_at, deadline_at, policy, note, sources, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                rusqlite::params![
                    start.run_id,
                    status.as_str(),
                    start.scheduled_at,
                    start.config_digest,
                    start.started_at_ms,
                    start.deadline_at_ms(),
                    policy,
                    note,
                    sources,
                    finished_at
                ],
            )
            .map_err(sql_error)?;
        if inserted == 1 && status == RunStatus::Running {
            tx.execute(
                "INSERT OR REPLACE INTO run_counts (run_id, expected) VALUES (?1, ?2)",
                rusqlite::params![
                    start.run_id,
                    i64::try_from(start.expected).unwrap_or(i64::MAX)
                ],
            )
            .map_err(sql_error)?;
        }
        tx.commit().map_err(sql_error)?;
        Ok(inserted == 1)
    }

    fn with_counts(&self, mut run: RunRecord) -> Result<RunRecord, BackendError> {
        let inner = self.backend.lock()?;
        run.counts = counts(&inner.conn, &run.run_id)?.unwrap_or_default();
        Ok(run)
    }

    /// Runs `decide` on the run's count state (`None` without a ledger) inside one transaction.
    fn batch_step<T>(
        &self,
        run_id: &str,
        decide: impl FnOnce(&Transaction<'_>, Option<CountState>) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let mut inner = self.backend.lock()?;
        let tx = inner
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql_error)?;
        let state = count_state(&tx, run_id)?;
        let answer = decide(&tx, state)?;
        tx.commit().map_err(sql_error)?;
        Ok(answer)
    }
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[async_trait]
impl RunLedger for EmbeddedRuns {
    async fn begin(&self, start: &RunStart) -> Result<Begin, BackendError> {
        if self.insert(start, RunStatus::Running, None)? {
            return Ok(Begin::Started);
        }
        let existing = self.get(&start.run_id).await?;
        existing
            .map(|r| Begin::Existing(Box::new(r)))
            .ok_or_else(|| {
                BackendError::permanent("sqlite", format!("run {} vanished", start.run_id))
            })
    }

    async fn skip(&self, start: &RunStart, reason: &str) -> Result<(), BackendError> {
        self.insert(start, RunStatus::Skipped, Some(reason))
            .map(|_| ())
    }

    async fn fail_unpublished(&self, start: &RunStart, reason: &str) -> Result<(), BackendError> {
        self.insert(start, RunStatus::Failed, Some(reason))
            .map(|_| ())
    }

    async fn get(&self, run_id: &str) -> Result<Option<RunRecord>, BackendError> {
        let run = {
            let inner = self.backend.lock()?;
            inner
                .conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM runs WHERE run_id = ?1"))
                .and_then(|mut s| s.query_row([run_id], run_row).optional())
        }
        .map_err(sql_error)?;
        run.map(|r| self.with_counts(r)).transpose()
    }

    async fn list(&self, limit: usize) -> Result<Vec<RunRecord>, BackendError> {
        let runs: Vec<RunRecord> = {
            let inner = self.backend.lock()?;
            let mut stmt = inner
                .conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?1"
                ))
                .map_err(sql_error)?;
            let rows = stmt
                .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], run_row)
                .map_err(sql_error)?;
            rows.collect::<Result<_, _>>().map_err(sql_error)?
        };
        runs.into_iter().map(|r| self.with_counts(r)).collect()
    }

    async fn count(
        &self,
        run_id: &str,
        instance: &str,
        seq: u64,
        delta: &Delta,
    ) -> Result<Counted, BackendError> {
        self.batch_step(run_id, |tx, state| {
            let Some(state) = state else {
                return Ok(Counted::NoLedger);
            };
            if state.batch_of(instance, seq) == (BatchState::Pending { next: true }) {
                apply(tx, run_id, delta)?;
                advance(tx, &state, (run_id, instance, seq), false)?;
                return Ok(Counted::Applied(
                    count_state(tx, run_id)?.unwrap_or_default(),
                ));
            }
            state.answer(instance, seq).ok_or_else(|| {
                BackendError::permanent(
                    "sqlite",
                    format!(
                        "run counters: batch {seq} of {instance} follows no batch {}",
                        seq - 1
                    ),
                )
            })
        })
    }

    async fn seal(
        &self,
        run_id: &str,
        instance: &str,
        seq: u64,
    ) -> Result<Option<CountState>, BackendError> {
        self.batch_step(run_id, |tx, state| {
            let Some(state) = state else {
                return Ok(None);
            };
            if state.batch_of(instance, seq) != (BatchState::Pending { next: true }) {
                return Ok(Some(state));
            }
            advance(tx, &state, (run_id, instance, seq), true)?;
            count_state(tx, run_id)
        })
    }

    async fn count_state(&self, run_id: &str) -> Result<Option<CountState>, BackendError> {
        let inner = self.backend.lock()?;
        count_state(&inner.conn, run_id)
    }

    async fn finish(
        &self,
        run_id: &str,
        status: RunStatus,
        finished_at_ms: i64,
        finisher: i64,
    ) -> Result<bool, BackendError> {
        let inner = self.backend.lock()?;
        // The second clause is the caller's own earlier finish (see the trait).
        let changed = inner
            .conn
            .execute(
                "UPDATE runs SET status = ?2, finished_at = ?3, finished_by = ?4 WHERE run_id = ?1
                     AND (status = 'RUNNING' OR finished_by = ?4)",
                rusqlite::params![run_id, status.as_str(), finished_at_ms, finisher],
            )
            .map_err(sql_error)?;
        Ok(changed == 1)
    }

    async fn mark_event_sent(&self, run_id: &str) -> Result<(), BackendError> {
        let inner = self.backend.lock()?;
        inner
            .conn
            .execute("UPDATE runs SET event_sent = 1 WHERE run_id = ?1", [run_id])
            .map_err(sql_error)?;
        Ok(())
    }
}
