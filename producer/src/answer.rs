//! What the producer's Lambda answers, as the types both ends use: the Lambda serializes them
//! (`main.rs`) and `fanout trigger` deserializes the same types, so the two cannot drift apart.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use fanout_shared::runs::{RunStatus, Sweep};

use crate::Started;

/// What one tick did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The run's ID, which names its jobs' message IDs (`fanout trigger --wait` follows them).
    pub run_id: String,
    /// What the ledger said: new, resumed (same tick again), already ended, or skipped.
    #[serde(with = "started_text")]
    pub started: Started,
    /// Jobs built (one per target).
    pub jobs: usize,
    /// Jobs published.
    pub published: usize,
    /// Jobs that could not be published.
    pub failed: usize,
    /// `PublishBatch` calls made, retries included.
    pub publish_calls: u64,
    /// Wall time of the tick.
    #[serde(rename = "elapsed_ms", with = "millis")]
    pub elapsed: Duration,
    /// What each source gave (rows, digest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<crate::SourceRead>,
}

/// What the watchdog's invocation answers: how much its sweep did. The runs themselves are in
/// the ledger and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchdogAnswer {
    /// Runs the sweep finished because their finisher died.
    pub finished: usize,
    /// Missed completion events the sweep put.
    pub events_sent: usize,
    /// Runs still RUNNING past their deadline.
    pub overdue: usize,
}

impl From<&Sweep> for WatchdogAnswer {
    fn from(sweep: &Sweep) -> Self {
        WatchdogAnswer {
            finished: sweep.finished.len(),
            events_sent: sweep.events_sent,
            overdue: sweep.overdue.len(),
        }
    }
}

/// A duration as whole milliseconds, the unit the producer's logs and metrics use.
mod millis {
    use super::*;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u128(d.as_millis())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// [`Started`] as one phrase an operator reads: `new`, `resumed`, `already succeeded`,
/// `skipped: WHY`.
mod started_text {
    use super::*;

    pub(super) fn serialize<S: Serializer>(started: &Started, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&match started {
            Started::New => "new".to_owned(),
            Started::Resumed => "resumed".to_owned(),
            Started::AlreadyEnded(status) => {
                format!("already {}", status.as_str().to_ascii_lowercase())
            }
            Started::Skipped(why) => format!("skipped: {why}"),
        })
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Started, D::Error> {
        let text = String::deserialize(d)?;
        let started = match text.as_str() {
            "new" => Some(Started::New),
            "resumed" => Some(Started::Resumed),
            other => match (
                other.strip_prefix("already "),
                other.strip_prefix("skipped: "),
            ) {
                (Some(status), _) => {
                    RunStatus::parse(&status.to_ascii_uppercase()).map(Started::AlreadyEnded)
                }
                (_, Some(why)) => Some(Started::Skipped(why.to_owned())),
                _ => None,
            },
        };
        started
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not how a tick started")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_reads_back_as_it_was_written() {
        for started in [
            Started::New,
            Started::Resumed,
            Started::AlreadyEnded(RunStatus::Succeeded),
            Started::Skipped("run r@1 is still RUNNING".into()),
        ] {
            let summary = Summary {
                run_id: "rule/r@2026-11-21T10:15:00Z".into(),
                started,
                jobs: 3,
                published: 2,
                failed: 1,
                publish_calls: 4,
                elapsed: Duration::from_millis(1234),
                sources: vec![crate::SourceRead {
                    name: "customers".into(),
                    location: "customers.jsonl".into(),
                    objects: Vec::new(),
                    rows: 3,
                    digest: "0123456789abcdef".into(),
                }],
            };
            let json = serde_json::to_value(&summary).unwrap();
            assert_eq!(json["elapsed_ms"], 1234);
            assert_eq!(serde_json::from_value::<Summary>(json).unwrap(), summary);
        }
        assert!(serde_json::from_value::<Summary>(serde_json::json!({
            "run_id": "r", "started": "sideways", "jobs": 0, "published": 0, "failed": 0,
            "publish_calls": 0, "elapsed_ms": 0
        }))
        .is_err());
    }

    #[test]
    fn the_watchdog_answer_names_its_counts() {
        let answer = WatchdogAnswer {
            finished: 1,
            events_sent: 2,
            overdue: 3,
        };
        let json = serde_json::to_value(answer).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"finished": 1, "events_sent": 2, "overdue": 3})
        );
        assert_eq!(
            serde_json::from_value::<WatchdogAnswer>(json).unwrap(),
            answer
        );
    }
}
