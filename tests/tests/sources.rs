//! Targets are data (issue #25): a list read at tick time, each row one call through a template,
//! on the embedded backend end to end (`fanout run`'s library), against the target server.

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use fanout::run;
use fanout_shared::embedded::Duplicates;
use fanout_shared::runs::RunStatus;
use fanout_shared::PipelineConfig;
use fanout_testkit::target_server::TargetServer;
use fanout_tests::{embedded_pipeline, fast_options, RecordingBus};
use serde_json::json;

/// Row IDs that would move a call elsewhere if they were pasted into the URL.
const HOSTILE: &[&str] = &[
    "../admin",
    "a/b",
    "x?admin=1",
    "frag#ment",
    "user@evil.example",
    "%2F..%2F",
    "caf\u{e9} \u{1f600}",
    "back\\slash",
    "semi;colon&k=v",
];

fn list_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fanout-sources-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A config whose one source reads `list` through a template on the target server.
fn config(base_url: &str, list: &std::path::Path) -> PipelineConfig {
    let text = json!({
        "allow_private_networks": true,
        "templates": { "sync": {
            "url": format!("{base_url}/ok/{{id}}?q={{q}}"),
            "method": "POST",
            "headers": { "X-Since": "{tick.last_success_at}" },
            "body": { "amount": "{amount}", "note": "row {id}" },
            "timeout_ms": 2000
        }},
        "sources": [{ "name": "customers", "template": "sync", "id_field": "id",
                      "location": list.display().to_string() }]
    });
    PipelineConfig::parse(&text.to_string(), false, "sources.json").unwrap()
}

fn write_rows(path: &std::path::Path, ids: &[String]) {
    let lines: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"id": id, "q": format!("{id}&x=1"), "amount": i}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// Each call's decoded first path segment after `/ok/` and its `q` value, checking on the way
/// that the call kept the template's shape: path `/ok/<one segment>`, one query key `q`.
fn calls(server: &TargetServer) -> Vec<(String, String, Option<String>)> {
    server
        .records()
        .into_iter()
        .map(|r| {
            let url = url::Url::parse(&format!("http://h{}", r.path)).unwrap();
            let segments: Vec<&str> = url.path_segments().unwrap().collect();
            assert_eq!(segments.len(), 2, "path shape kept: {}", r.path);
            assert_eq!(segments[0], "ok", "{}", r.path);
            let id = url::form_urlencoded::parse(format!("v={}", segments[1]).as_bytes())
                .next()
                .unwrap()
                .1
                .into_owned();
            let keys: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
            assert_eq!(keys, ["q"], "query keys kept: {}", r.path);
            let q = url.query_pairs().next().unwrap().1.into_owned();
            let since = r
                .headers
                .iter()
                .find(|(k, _)| k == "x-since")
                .map(|(_, v)| v.clone());
            (id, q, since)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_is_called_once_on_the_templates_path_and_a_changed_list_needs_no_deploy() {
    let server = TargetServer::start().await.unwrap();
    let dir = list_dir("e2e");
    let list = dir.join("customers.jsonl");
    let mut ids: Vec<String> = (0..200).map(|i| format!("c-{i}")).collect();
    ids.extend(HOSTILE.iter().map(|s| (*s).to_owned()));
    write_rows(&list, &ids);
    let config = config(&server.base_url(), &list);
    let pipeline = embedded_pipeline(5, Duplicates::default());

    let (first, _) = run(&config, &pipeline, "list-1", &fast_options(4))
        .await
        .unwrap();
    assert_eq!(
        (first.jobs, first.succeeded, first.lost),
        (209, 209, 0),
        "{first:?}"
    );
    let seen = calls(&server);
    assert_eq!(seen.len(), 209, "each row called once");
    let called: BTreeSet<&str> = seen.iter().map(|(id, _, _)| id.as_str()).collect();
    let expected: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(
        called, expected,
        "each value reached the target as one path segment"
    );
    for (id, q, since) in &seen {
        assert_eq!(
            q,
            &format!("{id}&x=1"),
            "the query value decodes to the row's"
        );
        assert_eq!(
            since.as_deref(),
            Some("1970-01-01T00:00:00Z"),
            "no run succeeded before"
        );
    }

    // The list changes (rows removed and added); the config, the "deployment", does not.
    let first_success = pipeline.runs.get("list-1").await.unwrap().unwrap();
    let mut next: Vec<String> = ids[100..].to_vec();
    next.extend((0..50).map(|i| format!("new-{i}")));
    write_rows(&list, &next);
    let before = server.records().len();
    let (second, _) = run(&config, &pipeline, "list-2", &fast_options(4))
        .await
        .unwrap();
    assert_eq!((second.jobs, second.succeeded, second.lost), (159, 159, 0));
    let seen = calls(&server).split_off(before);
    let called: BTreeMap<&str, usize> = seen.iter().fold(BTreeMap::new(), |mut m, (id, _, _)| {
        *m.entry(id.as_str()).or_default() += 1;
        m
    });
    assert_eq!(called.len(), 159);
    assert!(called.values().all(|&n| n == 1), "each row once");
    assert!(
        called.contains_key("new-49") && !called.contains_key("c-0"),
        "removed rows not called"
    );
    let since = fanout_shared::runs::rfc3339(first_success.started_at_ms);
    assert!(
        seen.iter()
            .all(|(_, _, s)| s.as_deref() == Some(since.as_str())),
        "the previous good run's time reaches the target"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_fail_the_tick_before_anything_is_published_naming_each_line() {
    let server = TargetServer::start().await.unwrap();
    let dir = list_dir("bad");
    let list = dir.join("customers.jsonl");
    let rows = [
        json!({"id": "a", "q": "1", "amount": 1}).to_string(),
        json!({"id": "b", "amount": 2}).to_string(),
        "not json".to_owned(),
        json!({"id": "c", "q": "3", "amount": 3}).to_string(),
        json!({"id": "a", "q": "5", "amount": 5}).to_string(),
        json!({"id": {"nested": 1}, "q": "6", "amount": 6}).to_string(),
        json!({"id": "..", "q": "7", "amount": 7}).to_string(),
    ];
    std::fs::write(&list, rows.join("\n")).unwrap();
    let config = config(&server.base_url(), &list);
    let (pipeline, bus) = RecordingBus::install(&embedded_pipeline(5, Duplicates::default()));
    let error = run(&config, &pipeline, "bad-1", &fast_options(2))
        .await
        .unwrap_err()
        .to_string();
    for expected in [
        "5 bad row(s), nothing published",
        "source \"customers\" line 2: row has no field `q`",
        "source \"customers\" line 3:",
        "source \"customers\" line 5: duplicate id \"customers/a\"",
        "source \"customers\" line 6: field `id` must be a string or an integer",
        "source \"customers\" line 7: field `id` in URL path segment 2: the segment would be a dot-segment",
    ] {
        assert!(error.contains(expected), "{expected:?} not in:\n{error}");
    }
    assert!(server.records().is_empty(), "nothing called");
    // The failure is a FAILED run with nothing expected, and its event says why.
    let failed = pipeline
        .runs
        .get("bad-1")
        .await
        .unwrap()
        .expect("a run record");
    assert_eq!(
        (failed.status, failed.counts.expected),
        (RunStatus::Failed, 0)
    );
    assert!(
        failed
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("5 bad row(s)"),
        "{failed:?}"
    );
    let events = bus.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "Run Failed");
    assert!(events[0].1["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("line 7"));

    // Fixed, the same tick runs afresh: every row called once, one more event.
    let fixed = [
        json!({"id": "a", "q": "1", "amount": 1}).to_string(),
        json!({"id": "b", "q": "2", "amount": 2}).to_string(),
    ];
    std::fs::write(&list, fixed.join("\n")).unwrap();
    let (summary, _) = run(&config, &pipeline, "bad-1", &fast_options(2))
        .await
        .unwrap();
    assert_eq!(
        (summary.succeeded, summary.dead_lettered),
        (2, 0),
        "{summary:?}"
    );
    let rerun = pipeline.runs.get("bad-1").await.unwrap().unwrap();
    assert_eq!(
        (rerun.status, rerun.counts.expected, rerun.note),
        (RunStatus::Succeeded, 2, None)
    );
    assert_eq!(server.records().len(), 2);
    assert_eq!(bus.events().len(), 2);
    assert_eq!(bus.events()[1].0, "Run Succeeded");

    // An unreadable source fails the tick the same way, naming the source.
    let gone = config.clone();
    std::fs::remove_file(&list).unwrap();
    let error = run(&gone, &pipeline, "bad-2", &fast_options(2))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("source \"customers\"") && error.contains("cannot be read"),
        "{error}"
    );
    let failed = pipeline.runs.get("bad-2").await.unwrap().unwrap();
    assert!(
        failed.status == RunStatus::Failed
            && failed
                .note
                .as_deref()
                .unwrap_or_default()
                .contains("cannot be read"),
        "{failed:?}"
    );
}
