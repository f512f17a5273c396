//! Publishing every job: batches under SNS limits, several in flight, failed entries retried.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};

use fanout_shared::{EntryFailure, OutboundMessage, Publisher, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};

/// How publishing behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishOptions {
    /// `PublishBatch` calls in flight at once.
    pub concurrency: usize,
    /// Tries per entry, the first included.
    pub max_attempts: u32,
    /// First backoff; doubled per retry, with full jitter.
    pub base_backoff: Duration,
}

impl Default for PublishOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            max_attempts: 5,
            base_backoff: Duration::from_millis(50),
        }
    }
}

/// A tick that did not publish every job.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The run ID cannot be used.
    #[error("{0}")]
    BadRunId(String),
    /// The run record could not be written: nothing was published.
    #[error("run ledger: {0}")]
    Ledger(fanout_shared::BackendError),
    /// The tick's list could not become jobs (a source unreadable, bad rows): nothing was
    /// published.
    #[error("{0}")]
    List(#[from] crate::list::ListError),
    /// The spooled jobs could not be read back: the jobs after the failure are unpublished; a
    /// re-run of the tick publishes them (the IDs are the same).
    #[error("{0}")]
    Spool(String),
    /// Some jobs are still unpublished after all retries.
    #[error("{} of {} jobs unpublished after retries: {}", failures.len(), summary.jobs, describe(failures))]
    Unpublished {
        /// What was published.
        summary: Box<crate::Summary>,
        /// Each unpublished job, by message ID.
        failures: Vec<EntryFailure>,
    },
}

fn describe(failures: &[EntryFailure]) -> String {
    let shown: Vec<String> = failures
        .iter()
        .take(20)
        .map(|f| format!("{} ({}: {})", f.id, f.code, f.message))
        .collect();
    let more = failures.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// What [`publish_all`] did.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Messages published.
    pub published: usize,
    /// Messages given up on.
    pub failures: Vec<EntryFailure>,
    /// `PublishBatch` calls made.
    pub calls: u64,
}

/// Cuts messages into batches of at most 10 entries and 256 KiB, lazily.
pub(crate) fn batches(
    messages: impl Iterator<Item = OutboundMessage>,
) -> impl Iterator<Item = Vec<OutboundMessage>> {
    let mut messages = messages.peekable();
    std::iter::from_fn(move || {
        let mut batch = Vec::with_capacity(MAX_BATCH_ENTRIES);
        let mut bytes = 0;
        while let Some(next) = messages.peek() {
            let size = next.size();
            if batch.len() == MAX_BATCH_ENTRIES
                || (!batch.is_empty() && bytes + size > MAX_BATCH_BYTES)
            {
                break;
            }
            bytes += size;
            batch.extend(messages.next());
        }
        (!batch.is_empty()).then_some(batch)
    })
}

/// Publishes every message, `options.concurrency` batches at a time.
pub(crate) async fn publish_all(
    messages: impl Iterator<Item = OutboundMessage>,
    publisher: &dyn Publisher,
    options: &PublishOptions,
) -> Outcome {
    let calls = AtomicU64::new(0);
    let results: Vec<(usize, Vec<EntryFailure>)> = stream::iter(batches(messages))
        .map(|batch| publish_batch_with_retry(batch, publisher, options, &calls))
        .buffer_unordered(options.concurrency.max(1))
        .collect()
        .await;
    let mut outcome = Outcome {
        calls: calls.load(Ordering::Relaxed),
        ..Outcome::default()
    };
    for (published, failures) in results {
        outcome.published += published;
        outcome.failures.extend(failures);
    }
    outcome
}

/// Publishes one batch; retries only the entries that failed for a retryable reason (and the
/// whole batch when the call itself failed retryably), with exponential backoff.
async fn publish_batch_with_retry(
    batch: Vec<OutboundMessage>,
    publisher: &dyn Publisher,
    options: &PublishOptions,
    calls: &AtomicU64,
) -> (usize, Vec<EntryFailure>) {
    let total = batch.len();
    let mut pending = batch;
    let mut given_up = Vec::new();
    for attempt in 1..=options.max_attempts.max(1) {
        calls.fetch_add(1, Ordering::Relaxed);
        let failed = match publisher.publish_batch(&pending).await {
            Ok(failed) => failed,
            Err(e) => {
                let failure = |m: &OutboundMessage| EntryFailure {
                    id: m.id.clone(),
                    code: e.service.to_owned(),
                    message: e.message.clone(),
                    sender_fault: !e.retryable,
                };
                pending.iter().map(failure).collect()
            }
        };
        let (permanent, retryable): (Vec<_>, Vec<_>) =
            failed.into_iter().partition(|f| f.sender_fault);
        given_up.extend(permanent);
        if retryable.is_empty() {
            pending.clear();
            break;
        }
        if attempt == options.max_attempts.max(1) {
            given_up.extend(retryable);
            pending.clear();
            break;
        }
        pending.retain(|m| retryable.iter().any(|f| f.id == m.id));
        tracing::warn!(
            attempt,
            retrying = pending.len(),
            "some entries failed to publish; retrying"
        );
        let ceiling = options.base_backoff.saturating_mul(1 << attempt.min(10));
        tokio::time::sleep(ceiling.mul_f64(jitter_fraction())).await;
    }
    (total - given_up.len(), given_up)
}

/// A fraction in [0.5, 1) for jittered backoff, from the clock's low bits (no RNG needed here).
fn jitter_fraction() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    0.5 + f64::from(nanos % 1000) / 2000.0
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Mutex;

    use async_trait::async_trait;
    use fanout_shared::BackendError;

    use super::*;

    fn message(id: usize, body_len: usize) -> OutboundMessage {
        OutboundMessage {
            id: format!("m{id}"),
            body: "x".repeat(body_len),
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn batches_respect_entry_and_byte_limits() {
        let sizes: Vec<usize> = batches((0..25).map(|i| message(i, 10)))
            .map(|b| b.len())
            .collect();
        assert_eq!(sizes, vec![10, 10, 5]);
        // 100 KiB each: two fit in 256 KiB, a third does not.
        let sizes: Vec<usize> = batches((0..5).map(|i| message(i, 100 * 1024)))
            .map(|b| b.len())
            .collect();
        assert_eq!(sizes, vec![2, 2, 1]);
    }

    /// Fails each entry a set number of times, then accepts it; records what it saw.
    #[derive(Default)]
    struct FlakyTopic {
        failures_left: Mutex<HashMap<String, u32>>,
        sender_fault: Vec<String>,
        published: Mutex<Vec<String>>,
        calls: Mutex<u32>,
    }

    #[async_trait]
    impl Publisher for FlakyTopic {
        async fn publish_batch(
            &self,
            batch: &[OutboundMessage],
        ) -> Result<Vec<EntryFailure>, BackendError> {
            assert!(batch.len() <= MAX_BATCH_ENTRIES);
            *self.calls.lock().unwrap() += 1;
            let mut left = self.failures_left.lock().unwrap();
            let mut failed = Vec::new();
            for m in batch {
                let n = left.entry(m.id.clone()).or_insert(0);
                if self.sender_fault.contains(&m.id) {
                    failed.push(EntryFailure {
                        id: m.id.clone(),
                        code: "InvalidParameter".into(),
                        message: "bad".into(),
                        sender_fault: true,
                    });
                } else if *n > 0 {
                    *n -= 1;
                    failed.push(EntryFailure {
                        id: m.id.clone(),
                        code: "Throttled".into(),
                        message: "slow down".into(),
                        sender_fault: false,
                    });
                } else {
                    self.published.lock().unwrap().push(m.id.clone());
                }
            }
            Ok(failed)
        }
    }

    fn fast() -> PublishOptions {
        PublishOptions {
            concurrency: 4,
            max_attempts: 4,
            base_backoff: Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn failed_entries_are_retried_alone() {
        let topic = FlakyTopic::default();
        topic
            .failures_left
            .lock()
            .unwrap()
            .extend([("m3".to_owned(), 2), ("m17".to_owned(), 1)]);
        let outcome = publish_all((0..20).map(|i| message(i, 10)), &topic, &fast()).await;
        assert_eq!(outcome.published, 20);
        assert!(outcome.failures.is_empty());
        let published = topic.published.lock().unwrap();
        assert_eq!(published.len(), 20, "each message published exactly once");
        // 2 batches + 2 retries for m3 (one shared with m17's single retry, or not) ≤ 5 calls.
        assert!((3..=5).contains(&outcome.calls), "{}", outcome.calls);
    }

    #[tokio::test]
    async fn unpublishable_entries_are_reported_with_ids() {
        let topic = FlakyTopic {
            sender_fault: vec!["m4".into()],
            ..FlakyTopic::default()
        };
        topic.failures_left.lock().unwrap().insert("m7".into(), 99);
        let outcome = publish_all((0..10).map(|i| message(i, 10)), &topic, &fast()).await;
        assert_eq!(outcome.published, 8);
        let mut ids: Vec<_> = outcome.failures.iter().map(|f| f.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, vec!["m4", "m7"]);
        assert_eq!(
            *topic.calls.lock().unwrap(),
            4,
            "m7 retried up to max_attempts, m4 never retried"
        );
    }

    #[tokio::test]
    async fn produce_fails_loudly_and_ids_are_deterministic() {
        let config: fanout_shared::PipelineConfig =
            serde_json::from_str(r#"{"targets":[{"id":"a","url":"https://x.example.com/a"},{"id":"b","url":"https://x.example.com/b"}]}"#).unwrap();
        let topic = FlakyTopic::default();
        let backend = fanout_shared::embedded::EmbeddedBackend::open(":memory:".as_ref()).unwrap();
        let (ledger, bus) = (backend.runs(), backend.events());
        let readers = crate::ListReaders::default();
        let backends = |topic| crate::Backends {
            publisher: topic,
            ledger: &ledger,
            bus: &bus,
            readers: &readers,
            pipeline: "test",
        };
        let tick = |id: &str| crate::Tick {
            run_id: id.into(),
            scheduled_at: None,
            schedule: None,
        };
        crate::produce(&config, &tick("run-1"), backends(&topic), &fast())
            .await
            .unwrap();
        let again = crate::produce(&config, &tick("run-1"), backends(&topic), &fast())
            .await
            .unwrap();
        assert_eq!(
            again.started,
            crate::Started::Resumed,
            "a second producer of the tick publishes again"
        );
        crate::produce(&config, &tick("run-2"), backends(&topic), &fast())
            .await
            .unwrap();
        let published = topic.published.lock().unwrap().clone();
        assert_eq!(published[0..2], published[2..4], "same tick → same IDs");
        assert!(
            !published[4..].contains(&published[0]),
            "new tick → new IDs"
        );

        let failing = FlakyTopic {
            sender_fault: vec![fanout_shared::message_id("run-1", "b")],
            ..FlakyTopic::default()
        };
        let err = crate::produce(&config, &tick("run-1"), backends(&failing), &fast())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("1 of 2 jobs unpublished")
                && text.contains(&fanout_shared::message_id("run-1", "b")),
            "{text}"
        );
    }
}
