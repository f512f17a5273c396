//! What one job's end adds to its run, and which counter shard takes it.

use std::collections::BTreeMap;

/// Counter shards per run (at most): each takes about 1/16 of a large run's writes.
pub(crate) const SHARDS: u32 = 16;

/// The shard counting the job `message_id` (FNV-1a of the ID, so every writer agrees).
pub fn shard_of(message_id: &str) -> u32 {
    let hash = message_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % u64::from(SHARDS)) as u32
}

/// What one terminal transition of a job adds to its run: written by the idempotency store in
/// the same atomic write as the transition.
#[derive(Debug, Clone, PartialEq)]
pub struct Tally<'a> {
    /// The job's run.
    pub run_id: &'a str,
    /// The job's host (failures by host).
    pub host: &'a str,
    /// For a dead-lettering: its class ([`crate::failure::FailureKind::class`]).
    pub reason: Option<&'a str>,
    /// The class the job is already counted under as dead-lettered (a replayed job), taken
    /// back by this transition.
    pub undo: Option<&'a str>,
}

/// What a [`Tally`] changes in its run's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Delta {
    /// Added to `succeeded`.
    pub succeeded: i64,
    /// Added to `dead_lettered`.
    pub dead_lettered: i64,
    /// Added to failures by reason (no zero entries).
    pub reasons: Vec<(String, i64)>,
    /// Added to failures by host (no zero entries).
    pub hosts: Vec<(String, i64)>,
}

impl Tally<'_> {
    /// The change to the run's counters when the job completes (`succeeded`) or is
    /// dead-lettered: the new outcome, minus the dead-lettering it replaces (`undo`).
    pub(crate) fn delta(&self, succeeded: bool) -> Delta {
        let mut reasons: BTreeMap<&str, i64> = BTreeMap::new();
        let mut hosts = 0;
        let mut delta = Delta::default();
        if let Some(old) = self.undo {
            delta.dead_lettered -= 1;
            *reasons.entry(old).or_default() -= 1;
            hosts -= 1;
        }
        if succeeded {
            delta.succeeded += 1;
        } else {
            delta.dead_lettered += 1;
            *reasons.entry(self.reason.unwrap_or("unknown")).or_default() += 1;
            hosts += 1;
        }
        delta.reasons = reasons
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .map(|(k, n)| (k.to_owned(), n))
            .collect();
        if hosts != 0 {
            delta.hosts.push((self.host.to_owned(), hosts));
        }
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_spread_and_agree() {
        let mut seen = [0u32; SHARDS as usize];
        for i in 0..1600 {
            let id = crate::job::message_id("run", &format!("t{i}"));
            assert_eq!(shard_of(&id), shard_of(&id));
            seen[shard_of(&id) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (60..=140).contains(&n)), "{seen:?}");
    }

    #[test]
    fn a_replay_moves_a_job_between_outcomes() {
        let tally = |reason, undo| Tally {
            run_id: "r",
            host: "h",
            reason,
            undo,
        };
        let fresh = tally(None, None).delta(true);
        assert_eq!(
            (
                fresh.succeeded,
                fresh.dead_lettered,
                fresh.reasons.len(),
                fresh.hosts.len()
            ),
            (1, 0, 0, 0)
        );
        let dead = tally(Some("HTTP 400"), None).delta(false);
        assert_eq!(
            (dead.dead_lettered, dead.reasons, dead.hosts),
            (1, vec![("HTTP 400".into(), 1)], vec![("h".into(), 1)])
        );
        let revived = tally(None, Some("HTTP 400")).delta(true);
        assert_eq!(
            (
                revived.succeeded,
                revived.dead_lettered,
                revived.reasons,
                revived.hosts
            ),
            (1, -1, vec![("HTTP 400".into(), -1)], vec![("h".into(), -1)])
        );
        let again = tally(Some("HTTP 400"), Some("HTTP 400")).delta(false);
        assert_eq!(
            again,
            Delta::default(),
            "a replay that fails the same way changes nothing"
        );
    }
}
