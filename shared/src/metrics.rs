//! CloudWatch Embedded Metric Format: metrics written as one JSON log line.
//!
//! Lambda ships stdout to CloudWatch Logs, which turns lines with an `_aws` member into metrics,
//! with no API call on the hot path. The consumer aggregates one [`MetricSet`] per invocation and
//! flushes it once, so a batch of ten records costs one log line, not ten. (The EMF crates on
//! crates.io wrap the `metrics` facade and emit per-flush too; this is the 60 lines we need.)

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// The CloudWatch namespace of every fanout metric.
pub const NAMESPACE: &str = "Fanout";

/// The unit of a metric, as EMF spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
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

/// Metrics gathered over one invocation, with one dimension set.
#[derive(Debug, Clone, Default)]
pub struct MetricSet {
    dimensions: BTreeMap<String, String>,
    values: BTreeMap<&'static str, (Unit, Vec<f64>)>,
}

impl MetricSet {
    /// An empty set with the given dimensions (e.g. `Function`).
    pub fn new(dimensions: impl IntoIterator<Item = (String, String)>) -> Self {
        Self { dimensions: dimensions.into_iter().collect(), values: BTreeMap::new() }
    }

    /// Adds to a counter.
    pub fn count(&mut self, name: &'static str, n: u64) {
        let entry = self.values.entry(name).or_insert((Unit::Count, vec![0.0]));
        entry.1[0] += n as f64;
    }

    /// Records one sample (EMF keeps every value, so CloudWatch can compute percentiles).
    pub fn sample(&mut self, name: &'static str, unit: Unit, value: f64) {
        self.values.entry(name).or_insert((unit, Vec::new())).1.push(value);
    }

    /// The current total of a counter, or the sum of a sampled metric.
    pub fn total(&self, name: &str) -> f64 {
        self.values.get(name).map(|(_, v)| v.iter().sum()).unwrap_or(0.0)
    }

    /// Every sample of a sampled metric (empty for unknown names).
    pub fn samples(&self, name: &str) -> &[f64] {
        self.values.get(name).map_or(&[], |(_, v)| v.as_slice())
    }

    /// Folds another set's values into this one.
    pub fn merge(&mut self, other: MetricSet) {
        for (name, (unit, values)) in other.values {
            match (unit, self.values.get_mut(name)) {
                (Unit::Count, Some((_, mine))) => mine[0] += values.iter().sum::<f64>(),
                (_, Some((_, mine))) => mine.extend(values),
                (_, None) => {
                    self.values.insert(name, (unit, values));
                }
            }
        }
    }

    /// The EMF document for these metrics at `timestamp_ms`, or `None` if there are none.
    pub fn to_emf(&self, timestamp_ms: i64) -> Option<Value> {
        if self.values.is_empty() {
            return None;
        }
        let definitions: Vec<Value> = self.values.iter().map(|(name, (unit, _))| json!({"Name": name, "Unit": unit.as_str()})).collect();
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
        for (k, v) in &self.dimensions {
            doc.insert(k.clone(), json!(v));
        }
        for (name, (_, values)) in &self.values {
            let value = if values.len() == 1 { json!(values[0]) } else { json!(values) };
            doc.insert((*name).to_owned(), value);
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
        m.count("Requests", 2);
        m.count("Requests", 1);
        m.sample("CallLatency", Unit::Milliseconds, 12.0);
        m.sample("CallLatency", Unit::Milliseconds, 30.0);
        let doc = m.to_emf(1_700_000_000_000).unwrap();
        assert_eq!(doc["Requests"], json!(3.0));
        assert_eq!(doc["CallLatency"], json!([12.0, 30.0]));
        assert_eq!(doc["Function"], "consumer");
        let spec = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(spec["Namespace"], "Fanout");
        assert_eq!(spec["Dimensions"], json!([["Function"]]));
        assert_eq!(spec["Metrics"].as_array().unwrap().len(), 2);
        assert!(MetricSet::default().to_emf(0).is_none());
    }
}
