//! `fanout dlq`: what is in the dead-letter queue, and moving it back.
//!
//! - [`list`] reads the DLQ without consuming it and joins each message with its job's
//!   idempotency record, so an operator sees the reason, the last error and the attempts in one
//!   row.
//! - [`replay`] moves messages back to the job queue (body and attributes as they are, so a
//!   replay of a dead-lettered attempt may run the job again while dedupe keeps a job that
//!   meanwhile succeeded from running twice).

mod replay;

pub use replay::{replay, MoveTask, ReplayMethod, ReplayOptions, ReplaySummary, ReplayTargets};

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Duration;

use serde::Serialize;

use fanout_shared::{
    decode_body, BackendError, IdempotencyStore, Queue, QueueMessage, Status, ATTR_MESSAGE_ID,
    ATTR_TARGET_HOST,
};

use crate::scan::pass_over;
use crate::settle::dlq_reason;

/// One DLQ message, described for an operator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DlqEntry {
    /// The job's message ID (the idempotency key); absent for a message that is not a job.
    pub message_id: Option<String>,
    /// The job's run.
    pub run_id: Option<String>,
    /// The job's target ID.
    pub target_id: Option<String>,
    /// The target's host.
    pub host: Option<String>,
    /// Why it is here: the consumer's `failure_reason`, or "max receives exceeded".
    pub reason: String,
    /// The idempotency record's state, where there is a record.
    pub record_status: Option<Status>,
    /// The record's last error (for a redriven job: the transient failure that kept recurring).
    pub last_error: Option<String>,
    /// The target's last HTTP status.
    pub status_code: Option<u16>,
    /// Times the job's lock was taken (calls started).
    pub attempts: Option<u32>,
    /// The queue's receive count (SQS counts this listing's receive too).
    pub receive_count: u32,
    /// Seconds since the message was first sent.
    pub age_s: u64,
    /// The queue's own message ID.
    pub queue_message_id: String,
    /// The message as received (for a replay).
    #[serde(skip)]
    pub message: QueueMessage,
}

/// Which DLQ messages a command acts on: all of the given conditions hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DlqFilter {
    /// Exactly this target ID.
    pub target: Option<String>,
    /// This text (case-insensitive) in the reason or the record's last error.
    pub reason: Option<String>,
    /// Exactly this host (case-insensitive).
    pub host: Option<String>,
    /// Exactly this run ID.
    pub run: Option<String>,
}

impl DlqFilter {
    /// Whether no condition is set.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Whether `entry` meets every condition.
    pub fn matches(&self, entry: &DlqEntry) -> bool {
        let same = |want: &Option<String>, have: &Option<String>| {
            want.as_ref()
                .is_none_or(|w| have.as_deref() == Some(w.as_str()))
        };
        let host = self.host.as_ref().is_none_or(|h| {
            entry
                .host
                .as_ref()
                .is_some_and(|e| e.eq_ignore_ascii_case(h))
        });
        let reason = self.reason.as_ref().is_none_or(|text| {
            let text = text.to_lowercase();
            entry.reason.to_lowercase().contains(&text)
                || entry
                    .last_error
                    .as_ref()
                    .is_some_and(|e| e.to_lowercase().contains(&text))
        });
        same(&self.target, &entry.target_id) && same(&self.run, &entry.run_id) && host && reason
    }
}

/// Describes received DLQ messages, joining each job with its idempotency record.
pub(crate) async fn describe(
    messages: Vec<QueueMessage>,
    store: &dyn IdempotencyStore,
) -> Result<Vec<DlqEntry>, BackendError> {
    let jobs: Vec<_> = messages.iter().map(|m| decode_body(&m.body).ok()).collect();
    let ids: Vec<String> = jobs
        .iter()
        .flatten()
        .map(|j| j.message_id.clone())
        .collect();
    let records: HashMap<String, _> = store
        .get_many(&ids)
        .await?
        .into_iter()
        .map(|r| (r.message_id.clone(), r))
        .collect();
    let now_ms = fanout_shared::now_ms();
    Ok(messages
        .into_iter()
        .zip(jobs)
        .map(|(message, job)| {
            let message_id = job
                .as_ref()
                .map(|j| j.message_id.clone())
                .or_else(|| message.attributes.get(ATTR_MESSAGE_ID).cloned());
            let record = message_id.as_ref().and_then(|id| records.get(id));
            DlqEntry {
                run_id: job.as_ref().map(|j| j.run_id.clone()),
                target_id: job.as_ref().map(|j| j.target.id.clone()),
                host: job
                    .as_ref()
                    .and_then(|j| j.target.host())
                    .or_else(|| message.attributes.get(ATTR_TARGET_HOST).cloned()),
                reason: dlq_reason(&message),
                record_status: record.map(|r| r.status),
                last_error: record.and_then(|r| r.last_error.clone()),
                status_code: record.and_then(|r| r.status_code),
                attempts: record.map(|r| r.attempts),
                receive_count: message.receive_count,
                age_s: u64::try_from((now_ms - message.sent_at_ms) / 1000).unwrap_or(0),
                queue_message_id: message.message_id.clone(),
                message_id,
                message,
            }
        })
        .collect())
}

/// Every DLQ message matching `filter`, without consuming any (`wait`: long-poll per receive).
pub async fn list(
    dlq: &dyn Queue,
    store: &dyn IdempotencyStore,
    filter: &DlqFilter,
    wait: Duration,
) -> Result<Vec<DlqEntry>, BackendError> {
    let mut entries = Vec::new();
    pass_over(dlq, Duration::from_secs(120), wait, async |_, batch| {
        entries.extend(
            describe(batch, store)
                .await?
                .into_iter()
                .filter(|e| filter.matches(e)),
        );
        Ok(ControlFlow::Continue(()))
    })
    .await?;
    Ok(entries)
}

/// The entries as an aligned table, one row each.
pub(crate) fn table(entries: &[DlqEntry]) -> String {
    let header = [
        "MESSAGE ID",
        "TARGET",
        "HOST",
        "REASON",
        "RECORD",
        "LAST ERROR",
        "ATTEMPTS",
        "RECEIVES",
        "AGE",
    ]
    .map(str::to_owned);
    let dash = || "-".to_owned();
    let rows: Vec<[String; 9]> = entries
        .iter()
        .map(|e| {
            let last_error = match (&e.last_error, e.status_code) {
                (Some(error), _) if *error == e.reason => "(as reason)".to_owned(),
                (Some(error), _) => error.clone(),
                (None, Some(code)) => format!("HTTP {code}"),
                (None, None) => dash(),
            };
            [
                e.message_id.clone().unwrap_or_else(dash),
                e.target_id.clone().unwrap_or_else(dash),
                e.host.clone().unwrap_or_else(dash),
                clip(&e.reason, 48),
                e.record_status.map_or_else(dash, |s| s.as_str().to_owned()),
                clip(&last_error, 40),
                e.attempts.map_or_else(dash, |a| a.to_string()),
                e.receive_count.to_string(),
                age(e.age_s),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect()
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max - 1).collect();
    format!("{kept}…")
}

fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(target: &str, host: &str, reason: &str, last_error: Option<&str>) -> DlqEntry {
        DlqEntry {
            message_id: Some("m".into()),
            run_id: Some("run-1".into()),
            target_id: Some(target.into()),
            host: Some(host.into()),
            reason: reason.into(),
            record_status: None,
            last_error: last_error.map(str::to_owned),
            status_code: None,
            attempts: None,
            receive_count: 1,
            age_s: 0,
            queue_message_id: "q".into(),
            message: QueueMessage {
                message_id: "q".into(),
                receipt_handle: "r".into(),
                body: String::new(),
                attributes: Default::default(),
                receive_count: 1,
                sent_at_ms: 0,
            },
        }
    }

    #[test]
    fn filters_combine_and_match_reason_or_last_error() {
        let bad = entry("a", "api.example.com", "HTTP 400 Bad Request", None);
        let redriven = entry(
            "b",
            "other.example.com",
            "max receives exceeded",
            Some("HTTP 503 Service Unavailable"),
        );
        let by = |f: DlqFilter| [&bad, &redriven].iter().filter(|e| f.matches(e)).count();
        assert_eq!(by(DlqFilter::default()), 2);
        assert_eq!(
            by(DlqFilter {
                target: Some("a".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            by(DlqFilter {
                host: Some("API.example.com".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            by(DlqFilter {
                reason: Some("503".into()),
                ..Default::default()
            }),
            1,
            "matches the record's last error"
        );
        assert_eq!(
            by(DlqFilter {
                reason: Some("http".into()),
                ..Default::default()
            }),
            2,
            "case-insensitive"
        );
        assert_eq!(
            by(DlqFilter {
                target: Some("a".into()),
                reason: Some("503".into()),
                ..Default::default()
            }),
            0,
            "all conditions hold"
        );
        assert_eq!(
            by(DlqFilter {
                run: Some("run-2".into()),
                ..Default::default()
            }),
            0
        );
    }

    #[test]
    fn table_has_a_row_per_entry_and_clips_long_reasons() {
        let long = "x".repeat(200);
        let text = table(&[entry("a", "h", &long, None), entry("b", "h", "short", None)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("MESSAGE ID"));
        assert!(lines[1].contains('…') && !lines[1].contains(&long));
        assert_eq!(age(59), "59s");
        assert_eq!(age(3 * 3600), "3h");
    }
}
