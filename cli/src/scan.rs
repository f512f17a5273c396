//! Non-consuming passes over a queue: every message received once and kept hidden until the
//! pass ends, then made visible again.
//!
//! SQS has no "peek": the only way to read a message is to receive it, which hides it for the
//! visibility timeout. A pass therefore holds what it has read (so the next receive returns new
//! messages) and gives it back at the end. What the caller deletes during the pass (a replay's
//! moved messages) is not given back.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::time::Duration;

use fanout_shared::{BackendError, Queue, QueueMessage};

/// One pass over `queue`.
pub(crate) struct Pass<'a> {
    queue: &'a dyn Queue,
    hold: Duration,
    wait: Duration,
    seen: HashSet<String>,
    held: HashSet<String>,
}

impl<'a> Pass<'a> {
    /// A pass that hides what it reads for `hold` (long enough for the whole pass: a message
    /// that reappears mid-pass is recognised and not returned twice) and long-polls `wait`.
    pub(crate) fn new(queue: &'a dyn Queue, hold: Duration, wait: Duration) -> Self {
        Self {
            queue,
            hold,
            wait,
            seen: HashSet::new(),
            held: HashSet::new(),
        }
    }

    /// The next messages this pass has not returned yet; empty once the queue has nothing new.
    pub(crate) async fn next_batch(&mut self) -> Result<Vec<QueueMessage>, BackendError> {
        let batch = self.queue.receive(10, self.hold, self.wait).await?;
        let mut fresh = Vec::with_capacity(batch.len());
        for message in batch {
            self.held.insert(message.receipt_handle.clone());
            if self.seen.insert(message.message_id.clone()) {
                fresh.push(message);
            }
        }
        // A batch of only already-seen messages means the pass has come round: it is over.
        Ok(fresh)
    }

    /// Deletes a message this pass received (it is not given back at the end).
    pub(crate) async fn delete(&mut self, receipt_handle: &str) -> Result<(), BackendError> {
        self.queue.delete(&[receipt_handle.to_owned()]).await?;
        self.held.remove(receipt_handle);
        Ok(())
    }

    /// Makes every held message visible again. Best effort: a message that cannot be given back
    /// reappears by itself when `hold` ends. Returns how many could not be given back.
    pub(crate) async fn restore(self) -> usize {
        let mut failed = 0;
        for handle in &self.held {
            if let Err(e) = self.queue.change_visibility(handle, Duration::ZERO).await {
                tracing::debug!(error = %e, "message stays hidden until its visibility timeout");
                failed += 1;
            }
        }
        failed
    }
}

/// The one skeleton of every pass (`peek_all`, `dlq list`, `dlq replay`): `visit` gets each new
/// batch (and the pass, to delete what it consumes) until the queue has nothing new or `visit`
/// breaks; then every message not deleted is given back, also when a receive or `visit` failed
/// half way.
pub(crate) async fn pass_over(
    queue: &dyn Queue,
    hold: Duration,
    wait: Duration,
    mut visit: impl AsyncFnMut(
        &mut Pass<'_>,
        Vec<QueueMessage>,
    ) -> Result<ControlFlow<()>, BackendError>,
) -> Result<(), BackendError> {
    let mut pass = Pass::new(queue, hold, wait);
    let result = async {
        loop {
            let batch = pass.next_batch().await?;
            if batch.is_empty() || visit(&mut pass, batch).await?.is_break() {
                return Ok(());
            }
        }
    }
    .await;
    pass.restore().await;
    result
}

/// Reads up to `max` messages of `queue` without consuming them.
pub async fn peek_all(
    queue: &dyn Queue,
    max: usize,
    wait: Duration,
) -> Result<Vec<QueueMessage>, BackendError> {
    let mut seen = Vec::new();
    pass_over(queue, Duration::from_secs(120), wait, async |_, batch| {
        seen.extend(batch);
        Ok(if seen.len() >= max {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    })
    .await?;
    seen.truncate(max);
    Ok(seen)
}
