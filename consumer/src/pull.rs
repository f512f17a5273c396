//! Taking more work: an invocation with room and time receives records from the queue itself.
//!
//! The event source mapping hands an invocation one batch and waits for it to end before the
//! next: between the two (delete the batch, poll, invoke) the instance's share of the budgets
//! goes unused, and every record of the batch waits for the slowest one. So while the records
//! in hand leave room for a receive (of the records it may run at once, [`crate::in_flight`])
//! and the invocation has time left, it receives more itself (short polls, visible to no one
//! else until its deadline has passed) and runs them beside the others; it deletes what it
//! settles or reschedules as soon as it is done, and from its first pull on the batch's records
//! too (the invocation now runs past its batch, and a done record must not come back
//! meanwhile).
//!
//! It stops at the first empty receive, after [`PULL_FOR`] (so runs are finished, at the end of
//! an invocation, within seconds of their last job), or once a record received now might not
//! get its permit and its call in before the deadline: at least [`HOLD_IN_PLACE`] and
//! [`PULLED_CALL`] before it, and longer when the instance's pace says the records it holds
//! and the receive take longer to be called ([`InFlight::to_call`]). Stopping later than two
//! seconds before the end was tried: 3 s invocations (`fanout run`'s default then) against a
//! 200 ms API at 400/s took 1.12 × N/R instead of 1.25, but the fault-injection harness (2 s
//! functions, 429 pauses, crashes) took 166 s instead of 75: the pace said too little of the
//! records pulled late, 2,842 of them left for delayed copies instead of 121, and a crashed
//! invocation's pulled records stay hidden until past its deadline. Longer invocations were
//! the answer: at 10 s the same tick takes 1.08. A job waiting for a slow
//! host's permit holds one slot, never the instance ([`crate::limiter`] keeps that wait
//! under a second).

use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsMessage, SqsMessageAttribute};
use fanout_shared::{BackendError, QueueMessage};
use tracing::warn;

use crate::backend::Window;
use crate::in_flight::InFlight;
use crate::limiter::HOLD_IN_PLACE;
use crate::record::Deadline;
use crate::Consumer;

/// How long an invocation keeps pulling: its runs' completions wait for its end.
pub(crate) const PULL_FOR: Duration = Duration::from_secs(5);

/// The time a pulled record's call is given, beyond its wait for a permit.
const PULLED_CALL: Duration = Duration::from_secs(1);

/// How long a pulled record stays hidden past the invocation's deadline: a record the
/// invocation could not settle (it crashed, or a backend kept failing) comes back after it.
const HIDDEN_PAST_DEADLINE: Duration = Duration::from_secs(5);

/// When an invocation may pull, and whether the queue still gave it anything.
#[derive(Debug)]
pub(crate) struct Pull {
    until: Instant,
    work_until: Instant,
    dry: bool,
}

impl Pull {
    /// Pulling for an invocation that started now, with `deadline` (none when pulling is off).
    pub(crate) fn new(enabled: bool, deadline: Deadline) -> Self {
        let now = Instant::now();
        Self {
            until: if enabled { now + PULL_FOR } else { now },
            work_until: deadline.work_until,
            dry: false,
        }
    }

    /// How many records to receive now, holding `held` (running or queued) and able to run
    /// `capacity` at once, if any: once a full receive (ten, or half the capacity when that is
    /// less) fits, and while a record received now can still be called in time at `rate`
    /// calls a second ([`InFlight::to_call`]).
    pub(crate) fn room(
        &self,
        held: usize,
        capacity: usize,
        (in_flight, rate): (&InFlight, Option<f64>),
    ) -> Option<u32> {
        let least = (capacity / 2).clamp(1, 10);
        let now = Instant::now();
        if self.dry || capacity.saturating_sub(held) < least || now >= self.until {
            return None;
        }
        let n = capacity.saturating_sub(held).min(10);
        let floor = HOLD_IN_PLACE + PULLED_CALL;
        let tail = in_flight
            .to_call(rate, held + n, PULLED_CALL)
            .map_or(floor, |t| t.max(floor));
        if now + tail >= self.work_until {
            return None;
        }
        u32::try_from(n).ok().filter(|n| *n > 0)
    }

    /// A receive gave nothing (or failed): no more pulling this invocation.
    pub(crate) fn stop(&mut self) {
        self.dry = true;
    }
}

impl Consumer {
    /// Receives up to `max` records for this invocation (a short poll), hidden until shortly
    /// after its deadline.
    pub(crate) async fn pull(
        &self,
        max: u32,
        deadline: Deadline,
    ) -> Result<Vec<SqsMessage>, BackendError> {
        let messages = self
            .source
            .receive(max, hidden_past(deadline), Duration::ZERO)
            .await?;
        let queue = self.source.name().to_owned();
        Ok(messages.into_iter().map(|m| to_record(&queue, m)).collect())
    }

    /// Hides a record of the batch as a pulled one is hidden, until shortly after the
    /// invocation's deadline, so that it waits in place without coming back meanwhile
    /// ([`crate::record::Deadline::reappears_at`]). Whether it could.
    pub(crate) async fn keep_hidden(&self, record: &SqsMessage, deadline: Deadline) -> bool {
        let Some(receipt) = record.receipt_handle.as_deref() else {
            return false;
        };
        match self
            .source
            .change_visibility(receipt, hidden_past(deadline))
            .await
        {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "could not keep a waiting record hidden; it leaves for a delayed copy");
                false
            }
        }
    }

    /// Deletes records this invocation settled or rescheduled (its batch's and the pulled).
    /// One that cannot be deleted comes back and is found settled (or its copy's job waiting):
    /// a repeated delivery, never a lost job. The event source mapping deletes the batch's
    /// again after the invocation, which SQS answers as done.
    pub(crate) async fn delete_done(&self, receipts: &[String], window: Window) {
        if receipts.is_empty() {
            return;
        }
        let deleted = self
            .with_backend_retries("delete done", window, || self.source.delete(receipts))
            .await;
        if let Err(e) = deleted {
            warn!(error = %e, records = receipts.len(), "could not delete settled records; they come back and are found settled");
        }
    }
}

/// How long from now a record the invocation holds stays hidden: until shortly after its
/// deadline.
fn hidden_past(deadline: Deadline) -> Duration {
    deadline.ends.saturating_duration_since(Instant::now()) + HIDDEN_PAST_DEADLINE
}

/// A received queue message as the event source mapping hands it to the function: the body,
/// the string attributes, the receive count and sent timestamp, the queue as its source.
pub fn to_record(queue_name: &str, message: QueueMessage) -> SqsMessage {
    let mut record = SqsMessage::default();
    record.message_id = Some(message.message_id);
    record.receipt_handle = Some(message.receipt_handle);
    record.body = Some(message.body);
    record.attributes.insert(
        "ApproximateReceiveCount".into(),
        message.receive_count.to_string(),
    );
    record
        .attributes
        .insert("SentTimestamp".into(), message.sent_at_ms.to_string());
    for (name, value) in message.attributes {
        let mut attribute = SqsMessageAttribute::default();
        attribute.string_value = Some(value);
        attribute.data_type = Some("String".into());
        record.message_attributes.insert(name, attribute);
    }
    record.event_source = Some("aws:sqs".into());
    record.event_source_arn = Some(queue_name.to_owned());
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An invocation whose deadline is `secs` away, with no safety margin.
    fn pull_for(secs: f64) -> Pull {
        let epoch_ms = fanout_shared::now_ms() + (secs * 1000.0) as i64;
        Pull::new(true, Deadline::new(epoch_ms, Duration::ZERO))
    }

    /// A job takes 200 ms of its slot.
    fn served() -> InFlight {
        let in_flight = InFlight::default();
        in_flight.observe(Duration::from_millis(200));
        in_flight
    }

    #[test]
    fn it_receives_once_a_whole_receive_fits() {
        let (pull, in_flight) = (pull_for(30.0), served());
        assert_eq!(pull.room(25, 35, (&in_flight, Some(100.0))), Some(10));
        assert_eq!(pull.room(26, 35, (&in_flight, Some(100.0))), None);
        // A capacity under 20 receives once half of it fits.
        assert_eq!(pull.room(5, 10, (&in_flight, None)), Some(5));
        assert_eq!(pull.room(6, 10, (&in_flight, None)), None);
    }

    #[test]
    fn it_stops_once_a_record_received_now_could_not_be_called_in_time() {
        let (pull, in_flight) = (pull_for(2.5), served());
        // At 100/s, 30 records are called within 0.3 s, then 0.4 s for the call: in time.
        assert_eq!(pull.room(20, 35, (&in_flight, Some(100.0))), Some(10));
        // At 10/s they take 3 s: too late.
        assert_eq!(pull.room(20, 35, (&in_flight, Some(10.0))), None);
        // Without a pace, and however fast the pace, the allowance is a permit's wait in place
        // and a call: 2 s.
        assert_eq!(pull.room(0, 10, (&in_flight, None)), Some(10));
        assert_eq!(pull_for(1.5).room(0, 10, (&in_flight, None)), None);
        assert_eq!(pull_for(1.9).room(0, 10, (&in_flight, Some(1000.0))), None);
    }

    #[test]
    fn a_dry_queue_or_pulling_off_receives_nothing() {
        let in_flight = served();
        let mut pull = pull_for(30.0);
        pull.stop();
        assert_eq!(pull.room(0, 10, (&in_flight, None)), None);
        let epoch_ms = fanout_shared::now_ms() + 30_000;
        let off = Pull::new(false, Deadline::new(epoch_ms, Duration::ZERO));
        assert_eq!(off.room(0, 10, (&in_flight, None)), None);
    }
}
