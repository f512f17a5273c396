//! A record's log lines carry its own IDs, also when records of a batch interleave. Alone in its
//! test binary: the subscriber it installs is the process's, so no other test's thread can have
//! cached a callsite's interest without it (with a thread's default subscriber, that happened).

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use std::sync::Arc;

use fanout_consumer::Settings;
use fanout_shared::metrics::Metric;
use fanout_shared::JobMessage;
use serde_json::json;

mod common;
use common::{config, event, harness, in_seconds, job};

/// Log lines written to a buffer, for the log-context test.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn each_records_log_lines_carry_its_own_ids_when_records_interleave() {
    // Slow successes and fast 400s in one batch, polled in turn on this one thread: a record span
    // held across an await (`span.enter()`) would lend its IDs to the other records' lines.
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber)
        .expect("the only subscriber of this test binary");
    let targets: Vec<serde_json::Value> = (0..5)
        .flat_map(|i| {
            [
                json!({"id": format!("slow{i}"), "url": format!("BASE/slow/{i}?ms=150")}),
                json!({"id": format!("bad{i}"), "url": format!("BASE/bad/{i}")}),
            ]
        })
        .collect();
    let h = harness(config(json!(targets)), Settings::default()).await;
    let jobs: Vec<JobMessage> = (0..5)
        .flat_map(|i| {
            let base = h.server.base_url();
            [
                job(
                    "run-slow",
                    &format!("slow{i}"),
                    &format!("{base}/slow/{i}?ms=150"),
                ),
                job("run-bad", &format!("bad{i}"), &format!("{base}/bad/{i}")),
            ]
        })
        .collect();
    let bodies: Vec<String> = jobs.iter().map(|j| j.encode().body).collect();
    let report = h
        .consumer
        .handle_batch(event(&bodies), in_seconds(10))
        .await;
    assert_eq!(
        (
            report.metrics.total(Metric::Succeeded),
            report.metrics.total(Metric::DeadLettered)
        ),
        (5.0, 5.0)
    );

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let bad: std::collections::BTreeSet<&str> = jobs
        .iter()
        .filter(|j| j.run_id == "run-bad")
        .map(|j| j.message_id.as_str())
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        if line["fields"]["message"] != "dead-lettered" {
            continue;
        }
        let span = &line["span"];
        let id = span["message_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no record span: {line}"));
        assert!(
            bad.contains(id),
            "a 400's line carries another record's message ID: {line}"
        );
        assert_eq!(span["run_id"], "run-bad", "{line}");
        seen.insert(id.to_owned());
    }
    assert_eq!(
        seen.len(),
        5,
        "one line per dead-lettered record, each with its own ID:\n{text}"
    );
}
