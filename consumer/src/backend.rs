//! The consumer's own dependencies failing: DynamoDB, SQS and EventBridge.
//!
//! A backend fault costs a backoff, never a visibility timeout, a lost job or a retry of the
//! job's budget. The SDK retries each call a few times first (`fanout_shared::aws::Retries`);
//! what still fails comes here:
//! - [`Consumer::with_backend_retries`] retries it with jittered exponential backoff while the
//!   step may still wait (before a call: a few seconds, since nothing is held; after it: until
//!   the invocation's working time ends, since a call's outcome is held in memory only);
//! - if that is not enough, the record rescheduled as a delayed copy
//!   ([`crate::Reschedule::Backend`]) comes back later; only a record that cannot even be
//!   rescheduled is left to the visibility timeout;
//! - every fault is counted per operation ([`BackendFaults`]) as `BackendThrottled` or
//!   `BackendFailed`, so an operator tells "AWS throttled us" from "the target failed".

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use fanout_shared::metrics::{Metric, MetricSet};
use fanout_shared::BackendError;
use tracing::warn;

use crate::Consumer;

/// The first backoff of the consumer's own retries (after the SDK's), doubled per retry.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest backoff of the consumer's own retries.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a step before the call (the acquire) retries in place before the record is
/// rescheduled instead: nothing is held yet, so a later copy loses nothing.
pub(crate) const BEFORE_CALL_PATIENCE: Duration = Duration::from_secs(3);
/// How long sending a rescheduled copy retries in place before the record falls back to the
/// batch item failure (hidden for its delay).
pub(crate) const RESCHEDULE_PATIENCE: Duration = Duration::from_secs(2);
/// A rescheduled record's delay after a backend fault, before jitter (0.5–1.5 ×).
const RESCHEDULE_DELAY: Duration = Duration::from_secs(4);

/// Faults counted per operation (`dynamodb:UpdateItem`, `sqs:SendMessage`, ...) since the last
/// [`BackendFaults::take`]; shared by the batches of one instance.
#[derive(Debug, Default)]
pub(crate) struct BackendFaults {
    counts: Mutex<BTreeMap<&'static str, (u64, u64)>>,
}

impl BackendFaults {
    /// Counts one fault of `e`'s operation.
    pub(crate) fn record(&self, e: &BackendError) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let (throttled, failed) = counts.entry(e.service).or_default();
        if e.throttled {
            *throttled += 1;
        } else {
            *failed += 1;
        }
    }

    /// The faults counted so far, as one metric set per operation (dimensions `Function` and
    /// `Operation`), and resets them.
    pub(crate) fn take(&self, function: &str) -> Vec<MetricSet> {
        let counts =
            std::mem::take(&mut *self.counts.lock().unwrap_or_else(PoisonError::into_inner));
        counts
            .into_iter()
            .map(|(operation, (throttled, failed))| {
                let mut m = MetricSet::new([
                    ("Function".to_owned(), function.to_owned()),
                    ("Operation".to_owned(), operation.to_owned()),
                ]);
                m.count(Metric::BackendThrottled, throttled);
                m.count(Metric::BackendFailed, failed);
                m
            })
            .collect()
    }
}

/// How long a step may try: no try starts after `retry_until`, and none runs past `stop` (the
/// invocation's end: a try cut off there is a fault like any other, and the next delivery
/// finds its write if it was applied).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) retry_until: Instant,
    pub(crate) stop: Instant,
}

impl Window {
    /// Tries for `patience` from now, each ending within a second after it.
    pub(crate) fn from_now(patience: Duration) -> Self {
        let retry_until = Instant::now() + patience;
        Self {
            retry_until,
            stop: retry_until + Duration::from_secs(1),
        }
    }
}

impl Consumer {
    /// Runs `op` until it succeeds, fails for good (not retryable) or the next backoff would
    /// end outside `window`; every fault is counted. Answers the last error.
    pub(crate) async fn with_backend_retries<T, F, Fut>(
        &self,
        step: &str,
        window: Window,
        mut op: F,
    ) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let left = window.stop.saturating_duration_since(Instant::now());
            let error = match tokio::time::timeout(left, op()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => e,
                Err(_) => BackendError::transient(
                    "deadline",
                    format!("{step} cut off at the invocation's end"),
                ),
            };
            self.faults.record(&error);
            let wait = backoff.mul_f64(fastrand::f64());
            if !error.retryable || Instant::now() + wait > window.retry_until {
                return Err(error);
            }
            warn!(step, error = %error, wait_ms = wait.as_millis() as u64, "backend fault; retrying");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// How long a record waits after a backend fault it could not ride out in place: about
/// [`RESCHEDULE_DELAY`], jittered so the copies of one throttled burst do not come back as one.
pub(crate) fn reschedule_delay() -> Duration {
    RESCHEDULE_DELAY.mul_f64(0.5 + fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_counted_per_operation_and_kind_then_reset() {
        let faults = BackendFaults::default();
        let throttle = BackendError {
            throttled: true,
            ..BackendError::transient("dynamodb:UpdateItem", "ThrottlingException")
        };
        faults.record(&throttle);
        faults.record(&throttle);
        faults.record(&BackendError::transient(
            "dynamodb:UpdateItem",
            "InternalServerError",
        ));
        faults.record(&BackendError::transient("sqs:SendMessage", "503"));
        let sets = faults.take("consumer");
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0].total(Metric::BackendThrottled), 2.0);
        assert_eq!(sets[0].total(Metric::BackendFailed), 1.0);
        assert_eq!(sets[1].total(Metric::BackendThrottled), 0.0);
        assert_eq!(sets[1].total(Metric::BackendFailed), 1.0);
        assert!(faults.take("consumer").is_empty());
    }

    #[test]
    fn a_rescheduled_record_waits_a_jittered_few_seconds() {
        for _ in 0..100 {
            let d = reschedule_delay();
            assert!(
                d >= RESCHEDULE_DELAY / 2 && d <= RESCHEDULE_DELAY * 3 / 2,
                "{d:?}"
            );
        }
    }
}
