//! CloudWatch Embedded Metric Format: metrics written as one JSON log line.
//!
//! Lambda ships stdout to CloudWatch Logs, which turns lines with an `_aws` member into metrics,
//! with no API call on the hot path. The consumer aggregates one [`MetricSet`] per invocation and
//! flushes it once, so a batch of ten records costs one log line, not ten. (The EMF crates on
//! crates.io wrap the `metrics` facade and emit per-flush too; this is the 60 lines we need.)

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// The CloudWatch namespace of every fanout metric.
pub(crate) const NAMESPACE: &str = "Fanout";

/// The unit of a metric, as EMF spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// A count of events.
    Count,
    /// A duration in milliseconds.
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// Every metric fanout emits. A metric is named by a variant, so a misspelt name does not
/// compile (a string would read as an empty metric and make an assertion on it check nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Records an invocation handled: its batch and what it pulled.
    Records,
    /// Records an invocation received from the queue itself, beyond its batch (the consumer's
    /// `pull` module says why).
    Pulled,
    /// Jobs that succeeded.
    Succeeded,
    /// Copies of jobs already settled (or settled by another copy), acked without a call.
    DuplicatesSkipped,
    /// Jobs sent to the DLQ.
    DeadLettered,
    /// Transient failures rescheduled after a backoff.
    Retried,
    /// Jobs rescheduled to wait for a permit.
    Deferred,
    /// Jobs rescheduled because their host (or the pipeline) is paused or its circuit open.
    Held,
    /// Jobs rescheduled because another consumer holds their lock.
    LockedElsewhere,
    /// Records handed back to SQS (a backend error).
    Requeued,
    /// Invocations that only put work back: no call made, some job waited or held.
    DeferOnlyInvocations,
    /// Stored host states that did not parse, read as not paused and circuit closed (the
    /// consumer's warn log names each host), counted on each read (an instance reads a host's
    /// state at most once per cache period): a pause or open circuit that silently stopped
    /// holding must show on a dashboard, not only in a log.
    HostStateUnreadable,
    /// Records rescheduled because a backend (DynamoDB, SQS) failed after every retry.
    BackendRescheduled,
    /// Calls to a backend answered "slow down" after the SDK's own retries (dimension
    /// `Operation`, e.g. `dynamodb:UpdateItem`).
    BackendThrottled,
    /// Calls to a backend that failed otherwise (5xx, lost connection) after the SDK's own
    /// retries (dimension `Operation`).
    BackendFailed,
    /// HTTP calls made.
    OutboundCalls,
    /// Each call's latency (ms).
    CallLatency,
    /// Each call's wait for its permits (ms).
    RateLimitWait,
    /// Per host: calls made.
    HostCalls,
    /// Per host: calls answered 429.
    HostThrottled,
    /// Per host: slow-downs applied.
    HostRateDecreased,
    /// Per host: circuits opened.
    CircuitOpened,
    /// Per host: circuits closed again.
    CircuitClosed,
    /// Per host: jobs held.
    JobsHeld,
    /// Per pipeline: runs finished SUCCEEDED.
    RunsSucceeded,
    /// Per pipeline: runs finished FAILED (more dead-lettered jobs than tolerated).
    RunsFailed,
    /// Per pipeline: a finished run's duration, start to finish (ms).
    RunDuration,
    /// Per pipeline: scheduled ticks the producer handled (started, re-run or skipped).
    Ticks,
    /// Per pipeline: runs the producer started.
    RunsStarted,
    /// Per pipeline: ticks skipped because the previous run was in flight.
    RunsSkipped,
    /// Per pipeline: runs past their deadline, as the watchdog found them.
    RunsOverdue,
}

impl Metric {
    /// The metric's CloudWatch name (the dashboard and alarms in `infra/` use the same).
    pub const fn name(self) -> &'static str {
        match self {
            Metric::Records => "Records",
            Metric::Pulled => "Pulled",
            Metric::Succeeded => "Succeeded",
            Metric::DuplicatesSkipped => "DuplicatesSkipped",
            Metric::DeadLettered => "DeadLettered",
            Metric::Retried => "Retried",
            Metric::Deferred => "Deferred",
            Metric::Held => "Held",
            Metric::LockedElsewhere => "LockedElsewhere",
            Metric::Requeued => "Requeued",
            Metric::DeferOnlyInvocations => "DeferOnlyInvocations",
            Metric::HostStateUnreadable => "HostStateUnreadable",
            Metric::BackendRescheduled => "BackendRescheduled",
            Metric::BackendThrottled => "BackendThrottled",
            Metric::BackendFailed => "BackendFailed",
            Metric::OutboundCalls => "OutboundCalls",
            Metric::CallLatency => "CallLatency",
            Metric::RateLimitWait => "RateLimitWait",
            Metric::HostCalls => "HostCalls",
            Metric::HostThrottled => "HostThrottled",
            Metric::HostRateDecreased => "HostRateDecreased",
            Metric::CircuitOpened => "CircuitOpened",
            Metric::CircuitClosed => "CircuitClosed",
            Metric::JobsHeld => "JobsHeld",
            Metric::RunsSucceeded => "RunsSucceeded",
            Metric::RunsFailed => "RunsFailed",
            Metric::RunDuration => "RunDuration",
            Metric::Ticks => "Ticks",
            Metric::RunsStarted => "RunsStarted",
            Metric::RunsSkipped => "RunsSkipped",
            Metric::RunsOverdue => "RunsOverdue",
        }
    }

    /// Its unit: latencies and durations are in milliseconds, everything else is a count.
    pub(crate) const fn unit(self) -> Unit {
        match self {
            Metric::CallLatency | Metric::RateLimitWait | Metric::RunDuration => Unit::Milliseconds,
            _ => Unit::Count,
        }
    }
}

/// Metrics gathered over one invocation, with one dimension set.
#[derive(Debug, Clone, Default)]
pub struct MetricSet {
    dimensions: BTreeMap<String, String>,
    values: BTreeMap<Metric, Vec<f64>>,
    /// Fields of the EMF line that are not metrics (no CloudWatch cost; Logs Insights reads them).
    properties: BTreeMap<String, Value>,
}

impl MetricSet {
    /// An empty set with the given dimensions (e.g. `Function`).
    pub fn new(dimensions: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            dimensions: dimensions.into_iter().collect(),
            values: BTreeMap::new(),
            properties: BTreeMap::new(),
        }
    }

    /// Sets a field of the EMF line that is not a metric, e.g. the invocation's duration.
    pub fn property(&mut self, name: &str, value: impl Into<Value>) {
        self.properties.insert(name.to_owned(), value.into());
    }

    /// Adds to a counter.
    pub fn count(&mut self, metric: Metric, n: u64) {
        let entry = self.values.entry(metric).or_insert_with(|| vec![0.0]);
        entry[0] += n as f64;
    }

    /// Records one sample (EMF keeps every value, so CloudWatch can compute percentiles).
    pub fn sample(&mut self, metric: Metric, value: f64) {
        self.values.entry(metric).or_default().push(value);
    }

    /// The value of dimension `name`, if the set has it.
    pub fn dimension(&self, name: &str) -> Option<&str> {
        self.dimensions.get(name).map(String::as_str)
    }

    /// The current total of a counter, or the sum of a sampled metric (0 if none was recorded).
    pub fn total(&self, metric: Metric) -> f64 {
        self.values
            .get(&metric)
            .map(|v| v.iter().sum())
            .unwrap_or(0.0)
    }

    /// Every sample of a sampled metric.
    pub fn samples(&self, metric: Metric) -> &[f64] {
        self.values.get(&metric).map_or(&[], Vec::as_slice)
    }

    /// Folds another set's values into this one.
    pub fn merge(&mut self, other: MetricSet) {
        for (metric, values) in other.values {
            match (metric.unit(), self.values.get_mut(&metric)) {
                (Unit::Count, Some(mine)) => mine[0] += values.iter().sum::<f64>(),
                (_, Some(mine)) => mine.extend(values),
                (_, None) => {
                    self.values.insert(metric, values);
                }
            }
        }
    }

    /// The EMF document for these metrics at `timestamp_ms`, or `None` if there are none.
    pub(crate) fn to_emf(&self, timestamp_ms: i64) -> Option<Value> {
        if self.values.is_empty() {
            return None;
        }
        let definitions: Vec<Value> = self
            .values
            .keys()
            .map(|m| json!({"Name": m.name(), "Unit": m.unit().as_str()}))
            .collect();
        let mut doc = Map::new();
        doc.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [self.dimensions.keys().collect::<Vec<_>>()],
                    "Metrics": definitions,
                }],
            }),
        );
        for (k, v) in &self.properties {
            doc.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.dimensions {
            doc.insert(k.clone(), json!(v));
        }
        for (metric, values) in &self.values {
            let value = if values.len() == 1 {
                json!(values[0])
            } else {
                json!(values)
            };
            doc.insert(metric.name().to_owned(), value);
        }
        Some(Value::Object(doc))
    }

    /// Prints the EMF line to stdout, where Lambda's log capture picks it up.
    pub fn flush_stdout(&self) {
        if let Some(doc) = self.to_emf(crate::now_ms()) {
            println!("{doc}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_document_declares_every_metric() {
        let mut m = MetricSet::new([("Function".to_owned(), "consumer".to_owned())]);
        m.count(Metric::Records, 2);
        m.count(Metric::Records, 1);
        m.sample(Metric::CallLatency, 12.0);
        m.sample(Metric::CallLatency, 30.0);
        let doc = m.to_emf(1_700_000_000_000).unwrap();
        assert_eq!(doc["Records"], json!(3.0));
        assert_eq!(doc["CallLatency"], json!([12.0, 30.0]));
        assert_eq!(doc["Function"], "consumer");
        let spec = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(spec["Namespace"], "Fanout");
        assert_eq!(spec["Dimensions"], json!([["Function"]]));
        assert_eq!(
            spec["Metrics"],
            json!([{"Name": "Records", "Unit": "Count"}, {"Name": "CallLatency", "Unit": "Milliseconds"}])
        );
        assert!(MetricSet::default().to_emf(0).is_none());
    }
}
