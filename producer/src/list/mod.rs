//! A tick's jobs: the config's literal targets, then every row of every source rendered through
//! its template.
//!
//! Sources are read in one streaming pass before anything is published: each row is rendered,
//! its message ID counted in its shard (the run record needs the counts before the first
//! publish) and its message written to a spool file, which the publish pass then streams. So a
//! million-row list is never held in memory (only one 16-byte digest per job, to refuse a
//! duplicate ID), and what is published is exactly what was counted.
//!
//! A bad row (a missing or mistyped field, a value that cannot be rendered safely, a duplicate
//! ID, a row over the message limit) fails the tick before anything is published, with every
//! bad row named by source and line (the first [`MAX_REPORTED`]): a list is fixed and the tick
//! re-run, never half-published. A source that cannot be read fails the tick the same way.

mod http;
mod parts;
mod s3;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use fanout_shared::rows::Row;
use fanout_shared::runs::SourceRead;
use fanout_shared::sources::{self, RowIdError, Source};
use fanout_shared::{
    message_id, CompiledTemplate, JobMessage, ObjectVersion, OutboundMessage, PipelineConfig,
    RowError, TemplateCall, TickValues, MAX_MESSAGE_BYTES,
};

pub use parts::ListReaders;

/// Bad rows named in a failed tick's error; the rest are counted.
pub(crate) const MAX_REPORTED: usize = 20;

/// Why a tick's list could not become jobs. Nothing was published.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// A source could not be read at all.
    #[error("source {name:?} ({location}): cannot be read: {reason}")]
    Unreadable {
        /// The source.
        name: String,
        /// Where it points.
        location: String,
        /// Why.
        reason: String,
    },
    /// Rows that cannot be jobs; each names its source and line.
    #[error("{count} bad row(s), nothing published:\n{}", .named.join("\n"))]
    BadRows {
        /// How many.
        count: u64,
        /// The first [`MAX_REPORTED`], e.g. `source "customers" line 7: row has no field ...`.
        named: Vec<String>,
    },
    /// A re-run of a tick whose run is in flight read other jobs than the run's first read.
    #[error(
        "the list changed since run {run_id} first read it: {}; nothing published (the run \
         keeps the jobs it has; trigger a new tick for the new list)",
        .changes.join("; ")
    )]
    Changed {
        /// The run.
        run_id: String,
        /// Each source that changed, then and now.
        changes: Vec<String>,
    },
    /// The spool file could not be written or read.
    #[error("spool file {path}: {reason}")]
    Spool {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// A tick's jobs, counted and ready to publish.
#[derive(Debug)]
pub(crate) struct TickJobs {
    /// Literal targets' jobs (few: they are in the config).
    literal: Vec<JobMessage>,
    /// The source jobs' messages, one JSON line each.
    spool: Option<Spool>,
    /// Jobs in all.
    pub(crate) count: u64,
    /// What each source gave.
    pub(crate) sources: Vec<SourceRead>,
}

/// A temporary file of encoded messages, removed when dropped.
#[derive(Debug)]
struct Spool {
    path: PathBuf,
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Builds every job of the tick (blocking I/O: call it off the async runtime's workers).
pub(crate) fn collect(
    config: &PipelineConfig,
    readers: &ListReaders,
    tick: &TickValues,
    now: DateTime<Utc>,
) -> Result<TickJobs, ListError> {
    let run_id = tick.run_id.as_str();
    let mut jobs = TickJobs {
        literal: config
            .targets
            .iter()
            .map(|t| JobMessage::new(run_id, config.job_target(t), now))
            .collect(),
        spool: None,
        count: 0,
        sources: Vec::new(),
    };
    jobs.count = jobs.literal.len() as u64;
    if config.sources.is_empty() {
        return Ok(jobs);
    }
    let spool = Spool {
        path: std::env::temp_dir().join(format!(
            "fanout-spool-{}-{}.jsonl",
            std::process::id(),
            &message_id(run_id, &now.to_rfc3339())[..12]
        )),
    };
    let spool_error = |e: std::io::Error| ListError::Spool {
        path: spool.path.display().to_string(),
        reason: spool_reason(&e),
    };
    let mut out = BufWriter::new(File::create(&spool.path).map_err(spool_error)?);
    jobs.sources = read_sources(config, readers, tick, now, None, |_, _job, message| {
        jobs.count += 1;
        serde_json::to_writer(&mut out, message)
            .map_err(|e| spool_error(std::io::Error::other(e)))?;
        out.write_all(b"\n").map_err(spool_error)
    })?;
    out.flush().map_err(spool_error)?;
    jobs.spool = Some(spool);
    Ok(jobs)
}

/// Why the spool failed, with what to do when the disk is full: the list is longer than the
/// function's `/tmp` holds (the construct's `producerEphemeralStorageSize`).
fn spool_reason(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::StorageFull {
        format!(
            "{e}: the list's messages do not fit in the temporary directory (about 650 bytes a \
             row); on Lambda raise the producer's ephemeral storage (producerEphemeralStorageSize)"
        )
    } else {
        e.to_string()
    }
}

/// `jobs` if its sources gave what `first` (the run's first read, for a re-run of a tick in
/// flight) recorded: the same rows and digest per source. A run's counts were written for the
/// first list; publishing another under the same run would count jobs that it never expects.
pub(crate) fn same_as_first(
    jobs: TickJobs,
    run_id: &str,
    first: Option<&[SourceRead]>,
) -> Result<TickJobs, ListError> {
    let Some(first) = first else {
        return Ok(jobs);
    };
    let now: BTreeMap<&str, &SourceRead> =
        jobs.sources.iter().map(|r| (r.name.as_str(), r)).collect();
    let changes: Vec<String> = first
        .iter()
        .filter_map(|then| {
            let described = |r: &SourceRead| format!("{} rows, digest {}", r.rows, r.digest);
            match now.get(then.name.as_str()) {
                Some(now) if now.digest == then.digest => None,
                Some(now) => Some(format!(
                    "source {:?} gave {} then, {} now",
                    then.name,
                    described(then),
                    described(now)
                )),
                None => Some(format!("source {:?} is no longer in the config", then.name)),
            }
        })
        .collect();
    if changes.is_empty() {
        return Ok(jobs);
    }
    Err(ListError::Changed {
        run_id: run_id.to_owned(),
        changes,
    })
}

/// Reads every source (or only the one named `only`), renders each row and gives each job, with
/// its encoded message, to `sink`, in order; answers what each source gave. Bad rows are collected and fail the whole
/// read at its end (after `sink` saw the good ones: the caller publishes nothing then).
fn read_sources(
    config: &PipelineConfig,
    remote: &ListReaders,
    tick: &TickValues,
    now: DateTime<Utc>,
    only: Option<&str>,
    mut sink: impl FnMut(&Source, &JobMessage, &OutboundMessage) -> Result<(), ListError>,
) -> Result<Vec<SourceRead>, ListError> {
    let templates = config.compiled_templates();
    let mut seen: HashSet<u128> = HashSet::new();
    let mut bad = BadRows::default();
    let mut read = Vec::new();
    for source in config
        .sources
        .iter()
        .filter(|s| only.is_none_or(|name| s.name == name))
    {
        let Some(template) = templates.get(&source.template) else {
            // `PipelineConfig::parse` refuses a source without its template.
            continue;
        };
        let mut reader = SourceReader::new(source, template, tick, now);
        let place = source
            .location(&config.base_dir)
            .map(|l| l.in_home(remote.lists.as_ref(), &config.base_dir));
        let location = match &place {
            Ok(place) => place.to_string(),
            Err(reason) => reason.to_string(),
        };
        let unreadable = |reason: &dyn std::fmt::Display| ListError::Unreadable {
            name: source.name.clone(),
            location: location.clone(),
            reason: reason.to_string(),
        };
        let place = place.map_err(|e| unreadable(&e))?;
        let parts = remote
            .parts(config, source, place)
            .map_err(|e| unreadable(&e))?;
        for part in parts {
            let part = part.map_err(|e| unreadable(&e))?;
            let at = match &part.label {
                None => format!("source {:?}", source.name),
                Some(label) => format!("source {:?} ({label})", source.name),
            };
            if let Some(version) = part.version {
                reader.objects.push(version);
            }
            for row in part.rows {
                let row = match row {
                    Ok(row) => row,
                    Err(fatal) if fatal.is_fatal() => {
                        return Err(match &part.label {
                            None => unreadable(&fatal),
                            Some(label) => unreadable(&format_args!("{label}: {fatal}")),
                        })
                    }
                    Err(bad_row) => {
                        bad.add(format!("{at} {bad_row}"));
                        continue;
                    }
                };
                match reader.job(&row) {
                    Err(problem) => bad.add(format!("{at} line {}: {problem}", row.line)),
                    Ok((job, _)) if !seen.insert(id_bits(&job.message_id)) => bad.add(format!(
                        "{at} line {}: duplicate id {:?}",
                        row.line, job.target.id
                    )),
                    Ok((job, message)) => sink(source, &job, &message)?,
                }
            }
        }
        read.push(reader.finish(location));
    }
    if bad.count > 0 {
        return Err(ListError::BadRows {
            count: bad.count,
            named: bad.named,
        });
    }
    Ok(read)
}

/// The message IDs of every job of run `run_id` (literal targets, then each source's rows in
/// order), read from the sources as they are now: what `fanout run` checks each job's end
/// against.
pub async fn message_ids(
    config: &PipelineConfig,
    readers: &ListReaders,
    run_id: &str,
) -> Result<Vec<String>, ListError> {
    let (config, readers, run_id) = (config.clone(), readers.clone(), run_id.to_owned());
    off_runtime(move || message_ids_now(&config, &readers, &run_id)).await
}

/// Runs a list read (blocking I/O, remote reads driven with `block_on`) off the async
/// runtime's workers.
pub(crate) async fn off_runtime<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, ListError> + Send + 'static,
) -> Result<T, ListError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| ListError::Spool {
            path: "(none)".into(),
            reason: format!("the list reader stopped: {e}"),
        })?
}

fn message_ids_now(
    config: &PipelineConfig,
    readers: &ListReaders,
    run_id: &str,
) -> Result<Vec<String>, ListError> {
    let mut ids: Vec<String> = config
        .targets
        .iter()
        .map(|t| message_id(run_id, &t.id))
        .collect();
    let tick = TickValues {
        run_id: run_id.to_owned(),
        ..TickValues::default()
    };
    read_sources(config, readers, &tick, Utc::now(), None, |_, job, _| {
        ids.push(job.message_id.clone());
        Ok(())
    })?;
    Ok(ids)
}

/// What the next tick would call from one source: where it reads, how many rows, and the
/// calls of the first `limit` rows (all with `None`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preview {
    /// What the source gave.
    #[serde(flatten)]
    pub read: SourceRead,
    /// The rendered calls.
    pub calls: Vec<fanout_shared::JobTarget>,
}

/// [`Preview`] of every source (or only `only`), rendered with `tick`'s values; fails as the
/// tick would (bad rows, an unreadable source).
pub async fn preview(
    config: &PipelineConfig,
    readers: &ListReaders,
    tick: &TickValues,
    only: Option<&str>,
    limit: Option<usize>,
) -> Result<Vec<Preview>, ListError> {
    let (config, readers, tick) = (config.clone(), readers.clone(), tick.clone());
    let only = only.map(str::to_owned);
    off_runtime(move || preview_now(&config, &readers, &tick, only.as_deref(), limit)).await
}

fn preview_now(
    config: &PipelineConfig,
    readers: &ListReaders,
    tick: &TickValues,
    only: Option<&str>,
    limit: Option<usize>,
) -> Result<Vec<Preview>, ListError> {
    let mut calls: BTreeMap<String, Vec<fanout_shared::JobTarget>> = BTreeMap::new();
    let read = read_sources(config, readers, tick, Utc::now(), only, |source, job, _| {
        let kept = calls.entry(source.name.clone()).or_default();
        if limit.is_none_or(|n| kept.len() < n) {
            kept.push(job.target.clone());
        }
        Ok(())
    })?;
    Ok(read
        .into_iter()
        .map(|read| Preview {
            calls: calls.remove(&read.name).unwrap_or_default(),
            read,
        })
        .collect())
}

/// Why a row cannot be a job: a bad row, named by its source and line in the tick's error.
#[derive(Debug, thiserror::Error)]
enum JobError {
    /// The row has no usable ID.
    #[error(transparent)]
    Id(#[from] RowIdError),
    /// The template cannot render it safely.
    #[error(transparent)]
    Render(#[from] RowError),
    /// Its message would be over SNS's limit.
    #[error("the job message would be {0} bytes, over the 256 KiB SNS limit")]
    TooLarge(usize),
}

/// Renders one source's rows into jobs, and digests what it rendered.
struct SourceReader<'a> {
    source: &'a Source,
    template: &'a CompiledTemplate,
    tick: &'a TickValues,
    now: DateTime<Utc>,
    /// The row fields the template needs: what each message carries.
    placeholders: std::collections::BTreeSet<String>,
    /// The S3 objects read, with their versions.
    objects: Vec<ObjectVersion>,
    rows: u64,
    digest: Sha256,
}

impl<'a> SourceReader<'a> {
    fn new(
        source: &'a Source,
        template: &'a CompiledTemplate,
        tick: &'a TickValues,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            source,
            template,
            tick,
            now,
            placeholders: template.placeholders(),
            objects: Vec::new(),
            rows: 0,
            digest: Sha256::new(),
        }
    }

    /// The job of one row and its message, encoded once (the size check and the spool share
    /// it), or why the row cannot be one.
    fn job(&mut self, row: &Row) -> Result<(JobMessage, OutboundMessage), JobError> {
        let row_id = sources::row_id(&row.values, &self.source.id_field)?;
        let id = sources::job_id(&self.source.name, &row_id);
        let target = self.template.render(&id, &row.values, self.tick)?;
        let values: Map<String, Value> = sources::needed_values(&row.values, &self.placeholders);
        let mut job = JobMessage::new(&self.tick.run_id, target, self.now);
        job.template = Some(TemplateCall {
            name: self.source.template.clone(),
            values,
            tick: self.tick.clone(),
        });
        let message = job.encode();
        let size = message.size();
        if size > MAX_MESSAGE_BYTES {
            return Err(JobError::TooLarge(size));
        }
        self.rows += 1;
        self.digest.update(id.as_bytes());
        self.digest.update([0]);
        if let Some(call) = &job.template {
            // A map of JSON values always serializes.
            self.digest
                .update(serde_json::to_vec(&call.values).unwrap_or_default());
        }
        self.digest.update([0]);
        Ok((job, message))
    }

    fn finish(self, location: String) -> SourceRead {
        SourceRead {
            name: self.source.name.clone(),
            location,
            objects: self.objects,
            rows: self.rows,
            digest: self.digest.finalize()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        }
    }
}

#[derive(Default)]
struct BadRows {
    count: u64,
    named: Vec<String>,
}

impl BadRows {
    fn add(&mut self, problem: String) {
        self.count += 1;
        if self.named.len() < MAX_REPORTED {
            self.named.push(problem);
        }
    }
}

/// The message ID's 128 bits (it is 32 hex digits); any other text hashes to its own bits.
fn id_bits(message_id: &str) -> u128 {
    u128::from_str_radix(message_id, 16).unwrap_or_else(|_| {
        let hash = Sha256::digest(message_id.as_bytes());
        hash[..16]
            .iter()
            .fold(0u128, |acc, b| (acc << 8) | u128::from(*b))
    })
}

impl TickJobs {
    /// Every job's message: the literal ones, then the spooled ones in the order read. A spool
    /// line that cannot be read back ends the stream and is reported by [`Messages::error`]:
    /// the jobs after it are unpublished, and a re-run of the tick completes them.
    pub(crate) fn messages(&self) -> Messages<'_> {
        let spool = self
            .spool
            .as_ref()
            .map(|s| File::open(&s.path).map(BufReader::new));
        let (lines, error) = match spool {
            None => (None, None),
            Some(Ok(reader)) => (Some(reader.lines()), None),
            Some(Err(e)) => (None, Some(e.to_string())),
        };
        Messages {
            literal: self.literal.iter(),
            lines,
            error,
        }
    }
}

/// The stream [`TickJobs::messages`] gives.
pub(crate) struct Messages<'a> {
    literal: std::slice::Iter<'a, JobMessage>,
    lines: Option<std::io::Lines<BufReader<File>>>,
    error: Option<String>,
}

impl Messages<'_> {
    /// Why the stream ended early, if it did.
    pub(crate) fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    fn fail(&mut self, reason: String) -> Option<OutboundMessage> {
        self.error = Some(reason);
        self.lines = None;
        None
    }
}

impl Iterator for Messages<'_> {
    type Item = OutboundMessage;

    fn next(&mut self) -> Option<OutboundMessage> {
        if let Some(job) = self.literal.next() {
            return Some(job.encode());
        }
        let line = match self.lines.as_mut()?.next()? {
            Ok(line) => line,
            Err(e) => return self.fail(format!("spool file: {e}")),
        };
        match serde_json::from_str::<OutboundMessage>(&line) {
            Ok(message) => Some(message),
            Err(e) => self.fail(format!("spool file: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_names_the_setting_that_makes_room() {
        let full = spool_reason(&std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(full.contains("producerEphemeralStorageSize"), "{full}");
        let other = spool_reason(&std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(!other.contains("producerEphemeralStorageSize"), "{other}");
    }
}
