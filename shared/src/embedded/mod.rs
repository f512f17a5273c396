//! The embedded backend: SNS, SQS and DynamoDB semantics in one SQLite file.
//!
//! State survives between commands and a killed process loses nothing: every operation is one
//! SQLite transaction (WAL journal). Receive, delete and visibility changes are transactional,
//! so two pollers never hold the same visible message at once. Anyone can look inside with the
//! `sqlite3` tool: tables `queues`, `subscriptions`, `messages`, `idempotency`, `hosts`
//! (shared host states), `leases` (consumer instances at work), `runs`, `run_shards` and
//! `run_failures` (the run ledger) and `events` (completion events).
//!
//! Calls run SQLite synchronously under a mutex: each is a few microseconds against a local
//! file, far below the cost of handing it to a blocking thread.

mod events;
mod fleet;
mod idempotency;
mod queue;
mod runs;
mod topic;

pub use events::{EmbeddedEvents, StoredEvent};
pub use fleet::EmbeddedFleet;
pub use idempotency::EmbeddedIdempotency;
pub use queue::EmbeddedQueue;
pub use runs::EmbeddedRuns;
pub use topic::EmbeddedTopic;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

use crate::error::BackendError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    dlq TEXT,
    max_receive_count INTEGER
);
CREATE TABLE IF NOT EXISTS subscriptions (
    topic TEXT NOT NULL,
    queue TEXT NOT NULL,
    PRIMARY KEY (topic, queue)
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    attributes TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at, seq);
CREATE TABLE IF NOT EXISTS idempotency (
    message_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    in_progress_expiry INTEGER NOT NULL DEFAULT 0,
    expiration INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    status_code INTEGER,
    run_id TEXT NOT NULL,
    target_id TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    dead_letter_class TEXT,
    failure_class TEXT,
    holder INTEGER,
    count_token TEXT,
    count_delta TEXT
);
CREATE INDEX IF NOT EXISTS idempotency_run ON idempotency (run_id);
CREATE TABLE IF NOT EXISTS hosts (
    host TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    scheduled_at TEXT,
    config_digest TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    finished_by INTEGER,
    deadline_at INTEGER,
    policy TEXT NOT NULL,
    event_sent INTEGER NOT NULL DEFAULT 0,
    note TEXT,
    sources TEXT
);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at);
CREATE TABLE IF NOT EXISTS run_counts (
    run_id TEXT PRIMARY KEY,
    expected INTEGER NOT NULL,
    succeeded INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS run_batches (
    run_id TEXT NOT NULL,
    instance TEXT NOT NULL,
    last INTEGER NOT NULL,
    sealed TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (run_id, instance)
);
CREATE TABLE IF NOT EXISTS run_failures (
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (run_id, kind, key)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    detail_type TEXT NOT NULL,
    detail TEXT NOT NULL,
    time INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    instance TEXT PRIMARY KEY,
    since INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    entitled INTEGER,
    released INTEGER
);
";

/// Receives before a new queue redrives a message to its DLQ (the CDK stack's default too).
pub(crate) const DEFAULT_MAX_RECEIVE_COUNT: u32 = 5;

/// How often the embedded topic delivers a message more than once, like SNS's at-least-once
/// delivery. Draws come from a seeded generator, so a run reproduces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Duplicates {
    /// Fraction of messages delivered twice.
    pub twice: f64,
    /// Fraction of messages delivered three times.
    pub thrice: f64,
    /// Seed of the generator.
    pub seed: u64,
}

impl Default for Duplicates {
    fn default() -> Self {
        Self {
            twice: 0.0,
            thrice: 0.0,
            seed: 1,
        }
    }
}

struct Inner {
    conn: Connection,
    /// Message IDs and receipt handles: seeded from entropy, since every process sharing the
    /// state file must mint distinct ones.
    ids: fastrand::Rng,
    /// The time part of the last ID minted (see [`EmbeddedBackend::new_id`]).
    last_id_nanos: u64,
    /// Duplicate draws: seeded from [`Duplicates::seed`], so a run reproduces.
    draws: fastrand::Rng,
    duplicates: Duplicates,
}

/// One state file (or an in-memory database) holding topics, queues and idempotency records.
#[derive(Clone)]
pub struct EmbeddedBackend {
    inner: Arc<Mutex<Inner>>,
}

/// Opaque: the connection and its random sources say nothing about the state a test looks at.
impl std::fmt::Debug for EmbeddedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBackend").finish_non_exhaustive()
    }
}

/// Brings a state file written by an older build up to [`SCHEMA`]: columns added since.
fn migrate(conn: &Connection) -> Result<(), BackendError> {
    let has_failures: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('idempotency') WHERE name = 'failures'",
            [],
            |r| r.get(0),
        )
        .map_err(sql_error)?;
    if !has_failures {
        conn.execute_batch(
            "ALTER TABLE idempotency ADD COLUMN failures INTEGER NOT NULL DEFAULT 0",
        )
        .map_err(sql_error)?;
    }
    for (table, column, kind) in [
        ("idempotency", "dead_letter_class", "TEXT"),
        ("idempotency", "failure_class", "TEXT"),
        ("idempotency", "holder", "INTEGER"),
        ("idempotency", "count_token", "TEXT"),
        ("idempotency", "count_delta", "TEXT"),
        ("runs", "sources", "TEXT"),
        ("runs", "finished_by", "INTEGER"),
        ("leases", "entitled", "INTEGER"),
        ("leases", "released", "INTEGER"),
    ] {
        let has: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
                [table, column],
                |r| r.get(0),
            )
            .map_err(sql_error)?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))
                .map_err(sql_error)?;
        }
    }
    Ok(())
}

fn sql_error(e: rusqlite::Error) -> BackendError {
    let busy = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    BackendError {
        service: "sqlite",
        message: e.to_string(),
        retryable: busy,
        throttled: false,
    }
}

impl EmbeddedBackend {
    /// Opens (creating if needed) the state file at `path`; `:memory:` gives a throwaway one.
    pub fn open(path: &Path) -> Result<Self, BackendError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                BackendError::permanent("sqlite", format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = Connection::open(path)
            .map_err(|e| BackendError::permanent("sqlite", format!("{}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql_error)?;
        // WAL + NORMAL: a killed process loses nothing committed; only a power cut may lose
        // the last transactions.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql_error)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql_error)?;
        // Every job is two small commits; what they cost is mostly pages re-read after the
        // default 2 MiB cache overflows, and the two fsyncs of each WAL checkpoint, taken under
        // the backend's mutex. A 64 MiB cache and a checkpoint every 10,000 pages (~40 MiB of
        // WAL) instead of 1,000 cut the fsyncs of a 20,000-job drain from ~540 to ~60
        // (BENCHMARKS.md, figure 2). Durability is unchanged: NORMAL still syncs at checkpoints.
        conn.pragma_update(None, "cache_size", -65536)
            .map_err(sql_error)?;
        conn.pragma_update(None, "wal_autocheckpoint", 10000)
            .map_err(sql_error)?;
        // Closing would copy the WAL into the database, fsync and delete it: ~80 ms at the end of
        // every `fanout run` on this machine. Left in place, the WAL is read by the next opener and
        // checkpointed by the next command that fills it.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(sql_error)?;
        conn.execute_batch(SCHEMA).map_err(sql_error)?;
        migrate(&conn)?;
        let inner = Inner {
            conn,
            ids: fastrand::Rng::new(),
            last_id_nanos: 0,
            draws: fastrand::Rng::with_seed(1),
            duplicates: Duplicates::default(),
        };
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// Sets duplicate injection for later publishes.
    pub fn set_duplicates(&self, duplicates: Duplicates) -> Result<(), BackendError> {
        let mut inner = self.lock()?;
        inner.draws = fastrand::Rng::with_seed(duplicates.seed);
        inner.duplicates = duplicates;
        Ok(())
    }

    /// Creates (or updates) a queue, its DLQ and the redrive policy between them, and
    /// subscribes the queue to `topic`. Idempotent. `max_receive_count: None` keeps an existing
    /// queue's setting (a new queue gets `DEFAULT_MAX_RECEIVE_COUNT`).
    pub fn ensure_pipeline(
        &self,
        topic: &str,
        queue: &str,
        dlq: &str,
        max_receive_count: Option<u32>,
    ) -> Result<(), BackendError> {
        let inner = self.lock()?;
        inner.conn.execute("INSERT OR IGNORE INTO queues (name, dlq, max_receive_count) VALUES (?1, NULL, NULL)", [dlq]).map_err(sql_error)?;
        inner
            .conn
            .execute(
                "INSERT INTO queues (name, dlq, max_receive_count) VALUES (?1, ?2, COALESCE(?3, ?4))
                 ON CONFLICT (name) DO UPDATE SET dlq = excluded.dlq, max_receive_count = COALESCE(?3, max_receive_count)",
                rusqlite::params![queue, dlq, max_receive_count, DEFAULT_MAX_RECEIVE_COUNT],
            )
            .map_err(sql_error)?;
        inner
            .conn
            .execute(
                "INSERT OR IGNORE INTO subscriptions (topic, queue) VALUES (?1, ?2)",
                [topic, queue],
            )
            .map_err(sql_error)?;
        Ok(())
    }

    /// The topic named `name`.
    pub fn topic(&self, name: &str) -> EmbeddedTopic {
        EmbeddedTopic::new(self.clone(), name)
    }

    /// The queue named `name`.
    pub fn queue(&self, name: &str) -> EmbeddedQueue {
        EmbeddedQueue::new(self.clone(), name)
    }

    /// The idempotency table.
    pub fn store(&self) -> EmbeddedIdempotency {
        EmbeddedIdempotency::new(self.clone())
    }

    /// Host states and instance leases.
    pub fn fleet(&self) -> EmbeddedFleet {
        EmbeddedFleet::new(self.clone())
    }

    /// The run ledger.
    pub fn runs(&self) -> EmbeddedRuns {
        EmbeddedRuns::new(self.clone())
    }

    /// The event bus (completion events land in the `events` table).
    pub fn events(&self) -> EmbeddedEvents {
        EmbeddedEvents::new(self.clone())
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, BackendError> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is still usable.
        Ok(self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// A message ID or receipt handle: the time in nanoseconds (strictly increasing within the
    /// process), then 64 random bits that keep processes sharing the file apart. Time first
    /// makes every insert into the IDs' unique indexes land at their end: with random IDs a
    /// tick of a million messages outgrows the page cache and each insert reads a random page
    /// (a publish cost per message that grew 70% from 100,000 to 1,000,000 messages).
    fn new_id(inner: &mut Inner) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        inner.last_id_nanos = now.max(inner.last_id_nanos + 1);
        format!("{:016x}{:016x}", inner.last_id_nanos, inner.ids.u64(..))
    }
}
