//! What one job's end adds to its run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one terminal transition of a job adds to its run: its [`Delta`], stored on the job's
/// record with the transition and added to the run's counters with its batch
/// ([`super::count`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Tally<'a> {
    /// The job's run.
    pub run_id: &'a str,
    /// The job's host (failures by host).
    pub host: &'a str,
    /// For a dead-lettering: its class ([`crate::FailureKind::class`]).
    pub reason: Option<&'a str>,
    /// The class the job is already counted under as dead-lettered (a replayed job), taken
    /// back by this transition.
    pub undo: Option<&'a str>,
}

/// What a [`Tally`] changes in its run's counters; a batch's is the sum of its jobs'.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Added to `succeeded`.
    #[serde(default, rename = "s", skip_serializing_if = "is_zero")]
    pub succeeded: i64,
    /// Added to `dead_lettered`.
    #[serde(default, rename = "d", skip_serializing_if = "is_zero")]
    pub dead_lettered: i64,
    /// Added to failures by reason (no zero entries).
    #[serde(default, rename = "r", skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<(String, i64)>,
    /// Added to failures by host (no zero entries).
    #[serde(default, rename = "h", skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<(String, i64)>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl Delta {
    /// Adds `other` (a batch's deltas summed), keeping no zero entries.
    pub fn add(&mut self, other: &Delta) {
        self.succeeded += other.succeeded;
        self.dead_lettered += other.dead_lettered;
        for (into, from) in [
            (&mut self.reasons, &other.reasons),
            (&mut self.hosts, &other.hosts),
        ] {
            for (key, n) in from {
                match into.iter_mut().find(|(k, _)| k == key) {
                    Some((_, m)) => *m += n,
                    None => into.push((key.clone(), *n)),
                }
            }
            into.retain(|(_, n)| *n != 0);
        }
    }

    /// The settlements it counts: succeeded plus dead-lettered.
    pub fn settled(&self) -> i64 {
        self.succeeded + self.dead_lettered
    }
}

impl Tally<'_> {
    /// The change to the run's counters when the job completes (`succeeded`) or is
    /// dead-lettered: the new outcome, minus the dead-lettering it replaces (`undo`).
    pub fn delta(&self, succeeded: bool) -> Delta {
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

    #[test]
    fn deltas_add_up_and_read_back_compactly() {
        let mut batch = Delta::default();
        batch.add(
            &Tally {
                run_id: "r",
                host: "h",
                reason: Some("HTTP 400"),
                undo: None,
            }
            .delta(false),
        );
        batch.add(
            &Tally {
                run_id: "r",
                host: "h",
                reason: None,
                undo: Some("HTTP 400"),
            }
            .delta(true),
        );
        assert_eq!(
            (batch.succeeded, batch.dead_lettered, batch.settled()),
            (1, 0, 1)
        );
        assert!(
            batch.reasons.is_empty() && batch.hosts.is_empty(),
            "{batch:?}"
        );
        let text = serde_json::to_string(&batch).unwrap();
        assert_eq!(text, r#"{"s":1}"#);
        assert_eq!(serde_json::from_str::<Delta>(&text).unwrap(), batch);
    }
}
