//! This instance's side of batch counting ([`fanout_shared::runs`]'s `count` module): the
//! settlements it wrote, gathered per run into numbered batches and applied to the runs'
//! counters one write per batch, in order.
//!
//! A settlement joins its run's open batch *before* its record is written (the record stores
//! the batch's token), and reports how the write went: written (its delta joins the batch), not
//! written (the lock was superseded), or unknown (every try failed, but one may have been
//! applied with its answer lost). A batch with an unknown member cannot be applied: it might
//! miss a job its token claims, so it is sealed instead, and its jobs, whose messages are
//! kept, are counted by whoever receives them next. [`Counter::flush`] closes the open
//! batches, waits for their writes to end, and applies them; a settled record's message is
//! deleted only once its batch is [`BatchStatus::Applied`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fanout_shared::runs::{
    BatchState, CountState, CountToken, Counted, Delta, RunCounts, RunLedger,
};
use fanout_shared::BackendError;
use tokio::sync::Notify;
use tracing::warn;

/// How long an instance keeps a run's batches and count state after its last settlement: a
/// warm container lives for hours and ticks come every few minutes, so without forgetting them
/// its memory grew by a few KB per run. An invocation asks only about the runs it settles in,
/// and lasts 15 minutes at most.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// One run's batches of this instance.
#[derive(Default)]
struct RunBatches {
    /// The last settlement that joined a batch of the run.
    touched: Option<Instant>,
    /// The batch new settlements join (0: none open; the next one is `last_opened + 1`).
    open: u64,
    last_opened: u64,
    /// Batches opened and not yet applied or sealed, by number.
    pending: BTreeMap<u64, Batch>,
    /// Every batch up to this one is applied or sealed.
    settled_to: u64,
    /// Of those, the sealed ones.
    sealed: Vec<u64>,
}

#[derive(Default)]
struct Batch {
    delta: Delta,
    /// Settlements whose record write is under way.
    writing: usize,
    /// A settlement's write ended unknown: the batch is sealed, never applied.
    tainted: bool,
    drained: Arc<Notify>,
}

/// Where one batch stands for this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchStatus {
    /// Applied: its records' messages may be deleted.
    Applied,
    /// Sealed: its records' messages must come back, to be counted by whoever receives them.
    Sealed,
    /// Not applied yet.
    Pending,
    /// Of a run this instance forgot ([`FORGET_AFTER`]): every batch of it was applied or
    /// sealed, and only the ledger says which.
    Forgotten,
}

/// How a settlement's record write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Written with the batch's token: its delta joins the batch.
    Yes,
    /// Not written (the lock was taken over): it adds nothing.
    No,
    /// Unknown (every try failed; one may have been applied).
    Unknown,
}

/// A settlement's place in its run's open batch, from before its record is written until
/// [`Joined::written`] says how the write went.
pub(crate) struct Joined<'a> {
    counter: &'a Counter,
    run_id: String,
    token: CountToken,
    ended: bool,
}

impl Joined<'_> {
    /// The batch's token, for the record.
    pub(crate) fn token(&self) -> &CountToken {
        &self.token
    }

    /// How the record write went; `delta` joins the batch if it was written.
    pub(crate) fn written(mut self, written: Written, delta: &Delta) -> u64 {
        self.ended = true;
        self.counter
            .end_write(&self.run_id, self.token.seq, written, delta);
        self.token.seq
    }
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.counter.end_write(
                &self.run_id,
                self.token.seq,
                Written::Unknown,
                &Delta::default(),
            );
        }
    }
}

/// This instance's counting.
pub(crate) struct Counter {
    instance: String,
    runs: Mutex<HashMap<String, RunBatches>>,
    /// One flush at a time: batches apply in order.
    flushing: tokio::sync::Mutex<()>,
    /// The last count state seen per run (its batch states only grow), and when.
    states: Mutex<HashMap<String, (CountState, Instant)>>,
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counter")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Counter {
    /// The counting of a new instance (random ID: batch numbers are per instance).
    pub(crate) fn new() -> Self {
        Self {
            instance: format!("{:016x}", fastrand::u64(..)),
            runs: Mutex::default(),
            flushing: tokio::sync::Mutex::new(()),
            states: Mutex::default(),
        }
    }

    /// This instance's ID in count tokens.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// Joins the run's open batch for a settlement about to be written in an invocation that
    /// ends at `deadline_ms`. The batch waits for [`Joined::written`]; a settlement dropped
    /// before it says (its invocation was cut off mid-write) counts as unknown.
    pub(crate) fn join(&self, run_id: &str, deadline_ms: i64) -> Joined<'_> {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        let run = runs.entry(run_id.to_owned()).or_default();
        run.touched = Some(Instant::now());
        if run.open == 0 {
            run.last_opened += 1;
            run.open = run.last_opened;
        }
        run.pending.entry(run.open).or_default().writing += 1;
        Joined {
            counter: self,
            run_id: run_id.to_owned(),
            token: CountToken {
                instance: self.instance.clone(),
                seq: run.open,
                deadline_ms,
            },
            ended: false,
        }
    }

    fn end_write(&self, run_id: &str, seq: u64, written: Written, delta: &Delta) {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(run) = runs.get_mut(run_id) else {
            return;
        };
        if written == Written::Unknown && run.open == seq {
            // Nothing more joins a batch that will be sealed.
            run.open = 0;
        }
        let Some(batch) = run.pending.get_mut(&seq) else {
            return;
        };
        match written {
            Written::Yes => batch.delta.add(delta),
            Written::No => {}
            Written::Unknown => batch.tainted = true,
        }
        batch.writing = batch.writing.saturating_sub(1);
        if batch.writing == 0 {
            batch.drained.notify_waiters();
        }
    }

    /// Whether any batch waits to be applied or sealed.
    pub(crate) fn has_pending(&self) -> bool {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|run| !run.pending.is_empty())
    }

    /// Where batch `seq` of this instance for `run_id` stands.
    pub(crate) fn status(&self, run_id: &str, seq: u64) -> BatchStatus {
        let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        match runs.get(run_id) {
            Some(run) if seq <= run.settled_to && run.sealed.contains(&seq) => BatchStatus::Sealed,
            Some(run) if seq <= run.settled_to => BatchStatus::Applied,
            Some(_) => BatchStatus::Pending,
            None => BatchStatus::Forgotten,
        }
    }

    /// The last count state seen for `run_id`, if any.
    pub(crate) fn cached(&self, run_id: &str) -> Option<CountState> {
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(run_id)
            .map(|(state, _)| state.clone())
    }

    /// Remembers a count state read or answered for `run_id`.
    pub(crate) fn remember(&self, run_id: &str, state: &CountState) {
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(run_id.to_owned(), (state.clone(), Instant::now()));
    }

    /// Forgets the runs no settlement joined for [`FORGET_AFTER`] (none of their batches is
    /// pending), and the count states not seen for as long.
    pub(crate) fn forget_idle_runs(&self) {
        self.forget_idle(FORGET_AFTER);
    }

    fn forget_idle(&self, after: Duration) {
        let idle = |at: Option<Instant>| at.is_none_or(|at| at.elapsed() >= after);
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, run| !run.pending.is_empty() || !idle(run.touched));
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, (_, seen)| !idle(Some(*seen)));
    }

    /// Applies every batch opened so far, run by run and in order, each once its writes ended
    /// (waiting at most until `until`). A batch whose apply fails stays pending, with the ones
    /// after it, for the next flush. Answers the counters of each run a batch was applied to.
    pub(crate) async fn flush(
        &self,
        ledger: &dyn RunLedger,
        until: tokio::time::Instant,
    ) -> Vec<(String, RunCounts)> {
        let _one = self.flushing.lock().await;
        let closed: Vec<(String, Vec<u64>)> = {
            let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
            runs.iter_mut()
                .filter(|(_, run)| !run.pending.is_empty())
                .map(|(run_id, run)| {
                    run.open = 0;
                    (run_id.clone(), run.pending.keys().copied().collect())
                })
                .collect()
        };
        let mut counts = Vec::new();
        for (run_id, seqs) in closed {
            for seq in seqs {
                match self.apply(ledger, &run_id, seq, until).await {
                    Ok(Some(state)) => {
                        counts.push((run_id.clone(), state.counts.clone()));
                        self.remember(&run_id, &state);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(run_id, seq, error = %e, "could not count a batch; its records' messages are kept until it is");
                        break;
                    }
                }
            }
        }
        counts
    }

    /// Applies (or, if tainted, seals) batch `seq` once its writes ended. `Ok(None)` when it
    /// was sealed or the run has no ledger.
    async fn apply(
        &self,
        ledger: &dyn RunLedger,
        run_id: &str,
        seq: u64,
        until: tokio::time::Instant,
    ) -> Result<Option<CountState>, BackendError> {
        loop {
            let drained = {
                let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
                match runs.get(run_id).and_then(|r| r.pending.get(&seq)) {
                    Some(batch) if batch.writing > 0 => batch.drained.clone(),
                    Some(_) => break,
                    None => return Ok(None),
                }
            };
            // Registered before the count is looked at again, so no wake-up falls in between.
            let notified = drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let writing = {
                let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
                runs.get(run_id)
                    .and_then(|r| r.pending.get(&seq))
                    .is_some_and(|b| b.writing > 0)
            };
            if writing && tokio::time::timeout_at(until, notified).await.is_err() {
                return Err(BackendError::transient(
                    "run counters",
                    "a settlement's write outlasted the flush",
                ));
            }
        }
        let (delta, tainted) = {
            let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
            match runs.get(run_id).and_then(|r| r.pending.get(&seq)) {
                Some(batch) => (batch.delta.clone(), batch.tainted),
                None => return Ok(None),
            }
        };
        let (state, sealed) = if tainted {
            match ledger.seal(run_id, &self.instance, seq).await? {
                Some(state) => {
                    let sealed = state.batch_of(&self.instance, seq) != BatchState::Applied;
                    (Some(state), sealed)
                }
                None => (None, false),
            }
        } else {
            match ledger.count(run_id, &self.instance, seq, &delta).await? {
                Counted::Applied(state) => (Some(state), false),
                Counted::Sealed => (None, true),
                Counted::NoLedger => (None, false),
            }
        };
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(run) = runs.get_mut(run_id) {
            run.pending.remove(&seq);
            run.settled_to = run.settled_to.max(seq);
            if sealed {
                run.sealed.push(seq);
            }
        }
        Ok(if sealed { None } else { state })
    }
}

#[cfg(test)]
mod tests {
    use fanout_shared::embedded::EmbeddedBackend;

    use super::*;

    /// A run's batches are kept while one is pending, and forgotten once all are applied and
    /// the run is idle; a forgotten run's batch answers `Forgotten` (the ledger says the rest),
    /// never `Pending`, which would keep its message waiting for a batch that never comes.
    #[tokio::test]
    async fn an_idle_run_is_forgotten_once_its_batches_are_applied() {
        let backend = EmbeddedBackend::open(":memory:".as_ref()).unwrap();
        let ledger = backend.runs();
        let counter = Counter::new();
        let joined = counter.join("r", i64::MAX);
        let seq = joined.written(Written::Yes, &Delta::default());

        counter.forget_idle(Duration::ZERO);
        assert_eq!(
            counter.status("r", seq),
            BatchStatus::Pending,
            "pending: kept"
        );

        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        counter.flush(&ledger, until).await;
        counter.remember("r", &CountState::default());
        counter.forget_idle_runs();
        assert_eq!(
            counter.status("r", seq),
            BatchStatus::Applied,
            "recent: kept"
        );
        assert!(counter.cached("r").is_some());

        counter.forget_idle(Duration::ZERO);
        assert_eq!(counter.status("r", seq), BatchStatus::Forgotten);
        assert!(counter.cached("r").is_none());
        assert!(!counter.has_pending());
    }
}
