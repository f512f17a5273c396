//! Counting a run's jobs in batches: one counter write per batch of settlements, exact through
//! crashes, lost answers and duplicates.
//!
//! A job's settlement (COMPLETED, DEAD_LETTERED) is one single-item write of its idempotency
//! record, which also stores where the job will be counted: a [`CountToken`] (the consumer
//! instance, its batch number for the run, and the deadline of the invocation that settled it)
//! and the job's [`Delta`]. The instance then adds a whole batch of such deltas to the run's
//! counters in one conditional write ([`RunLedger::count`](super::RunLedger::count)): batch
//! `seq` of an instance applies only on top of its batch `seq - 1`, so a retried write whose
//! first answer was lost is recognised and never adds twice. A settled job's message is deleted
//! only once its batch is applied.
//!
//! A batch that never applies (its instance crashed, or the store refused it for the rest of
//! the invocation) leaves its jobs settled but uncounted, and their messages undeleted: they
//! come back. A copy that finds its job settled under a batch that is still pending after that
//! batch's deadline *seals* it ([`RunLedger::seal`](super::RunLedger::seal)): the batch number
//! is taken, so its instance can no longer apply it. Each job of a sealed batch is then moved
//! to the batch of the consumer that found it, one conditional write on its record
//! ([`crate::IdempotencyStore::recount`]), and counted there: exactly once.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::{Delta, RunCounts};

/// Where a settled job is counted: batch `seq` of consumer `instance` for the job's run, settled
/// in an invocation that ended at `deadline_ms`. Stored on the job's record as
/// `instance:seq:deadline_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountToken {
    /// The consumer instance (random, per process).
    pub instance: String,
    /// The instance's batch number for the run, from 1.
    pub seq: u64,
    /// The deadline of the invocation that settled the job (ms since the epoch): until then
    /// its instance may still apply the batch, so nobody seals it sooner.
    pub deadline_ms: i64,
}

impl fmt::Display for CountToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.instance, self.seq, self.deadline_ms)
    }
}

impl CountToken {
    /// Parses `instance:seq:deadline_ms`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let token = Self {
            instance: parts.next().filter(|i| !i.is_empty())?.to_owned(),
            seq: parts.next()?.parse().ok()?,
            deadline_ms: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(token)
    }
}

/// What a settled job's record says about its count: the batch it is counted in and what it
/// adds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobCount {
    /// The batch.
    pub token: CountToken,
    /// What the job adds to its run's counters.
    pub delta: Delta,
}

/// A run's counters and where each instance's batches stand.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CountState {
    /// The counters.
    pub counts: RunCounts,
    /// Per instance: its last batch applied or sealed.
    pub last: BTreeMap<String, u64>,
    /// Per instance: its batches sealed by others (never applied).
    pub sealed: BTreeMap<String, Vec<u64>>,
}

/// Where one batch stands in a [`CountState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchState {
    /// Applied: its jobs are counted.
    Applied,
    /// Sealed by another consumer: its jobs are counted only once moved to another batch.
    Sealed,
    /// Not applied yet; `next` when it is the instance's next batch (it may be sealed now).
    Pending {
        /// Whether every earlier batch of the instance is applied or sealed.
        next: bool,
    },
}

impl CountState {
    /// Where batch `token` stands.
    pub fn batch(&self, token: &CountToken) -> BatchState {
        self.batch_of(&token.instance, token.seq)
    }

    /// Where batch `seq` of `instance` stands.
    pub fn batch_of(&self, instance: &str, seq: u64) -> BatchState {
        let last = self.last.get(instance).copied().unwrap_or(0);
        if seq > last {
            return BatchState::Pending {
                next: seq == last + 1,
            };
        }
        if self.sealed.get(instance).is_some_and(|s| s.contains(&seq)) {
            BatchState::Sealed
        } else {
            BatchState::Applied
        }
    }

    /// What a count of batch `seq` of `instance` that found this state without applying
    /// answers: applied (by its own earlier try, whose answer was lost) or sealed. `None` when
    /// the batch is still pending: a count that failed then is one that skipped a batch number
    /// (both backends refuse it), or, for the next batch, one that applies.
    pub fn answer(self, instance: &str, seq: u64) -> Option<Counted> {
        match self.batch_of(instance, seq) {
            BatchState::Applied => Some(Counted::Applied(self)),
            BatchState::Sealed => Some(Counted::Sealed),
            BatchState::Pending { .. } => None,
        }
    }
}

/// The answer to a batch's count.
#[derive(Debug, Clone, PartialEq)]
pub enum Counted {
    /// Applied (now, or by this batch's earlier try whose answer was lost): the run's state
    /// after it.
    Applied(CountState),
    /// Another consumer sealed the batch: none of it is counted; its jobs come back and are
    /// counted by whoever finds them.
    Sealed,
    /// The run has no ledger (published before it had one, or expired): nothing to count.
    NoLedger,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(seq: u64) -> CountToken {
        CountToken {
            instance: "a1".into(),
            seq,
            deadline_ms: 5,
        }
    }

    #[test]
    fn a_token_reads_back_what_it_wrote_and_nothing_else_parses() {
        let t = token(7);
        assert_eq!(t.to_string(), "a1:7:5");
        assert_eq!(CountToken::parse("a1:7:5"), Some(t));
        for bad in ["", "a1:7", ":7:5", "a1:x:5", "a1:7:5:9"] {
            assert_eq!(CountToken::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_batch_is_applied_sealed_or_pending_next_or_later() {
        let state = CountState {
            last: BTreeMap::from([("a1".into(), 3)]),
            sealed: BTreeMap::from([("a1".into(), vec![2])]),
            ..CountState::default()
        };
        assert_eq!(state.batch(&token(1)), BatchState::Applied);
        assert_eq!(state.batch(&token(2)), BatchState::Sealed);
        assert_eq!(state.batch(&token(4)), BatchState::Pending { next: true });
        assert_eq!(state.batch(&token(5)), BatchState::Pending { next: false });
        let other = CountToken {
            instance: "b2".into(),
            ..token(1)
        };
        assert_eq!(state.batch(&other), BatchState::Pending { next: true });
    }
}
