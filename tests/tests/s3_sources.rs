//! Lists in S3 (issue #25) against the emulator (moto): `fanout targets push` checks a list and
//! uploads it to the list home, the next tick calls it with no deploy, the run records the
//! version it read, a re-run of a tick in flight reads that version again, and a list that
//! cannot be read fails the tick visibly.

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use fanout::{aws_with, provision};
use fanout_shared::runs::RunStatus;
use fanout_shared::PipelineConfig;
use fanout_testkit::target_server::TargetServer;
use fanout_tests::{fanout_bin, fast_options, moto_or_skip};
use serde_json::json;

/// A config whose one source reads `lists://customers.jsonl` through a template on `base_url`.
fn write_config(dir: &Path, base_url: &str, location: &str) -> std::path::PathBuf {
    let text = json!({
        "allow_private_networks": true,
        "templates": { "sync": {
            "url": format!("{base_url}/ok/{{id}}"),
            "method": "POST",
            "body": { "plan": "{plan}" }
        }},
        "sources": [{ "name": "customers", "template": "sync", "id_field": "id",
                      "location": location }]
    });
    let path = dir.join("fanout.json");
    std::fs::write(&path, text.to_string()).unwrap();
    path
}

fn write_rows(path: &Path, ids: impl Iterator<Item = u32>) {
    let lines: Vec<String> = ids
        .map(|i| json!({"id": format!("c-{i}"), "plan": "pro"}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// IDs called at the target (`/ok/<id>`) from its `from`-th call on, each once (a second call
/// of one fails the test).
fn called_once(server: &TargetServer, from: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for record in server.records().into_iter().skip(from) {
        let id = record.path.trim_start_matches("/ok/").to_owned();
        assert!(seen.insert(id.clone()), "{id} called twice");
    }
    seen
}

fn ids(range: std::ops::Range<u32>) -> BTreeSet<String> {
    range.map(|i| format!("c-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_list_is_called_row_by_row_and_a_changed_one_needs_no_deploy() {
    let moto = moto_or_skip!();
    let sdk = moto.sdk().await;
    let resources = provision(&sdk, "lists-push", 5, 30).await.unwrap();
    let home = resources
        .lists
        .clone()
        .expect("provision makes a list home");
    let server = TargetServer::start().await.unwrap();
    let dir = tempdir("push");
    let config_path = write_config(&dir, &server.base_url(), "lists://customers.jsonl");
    let config = PipelineConfig::load(&config_path).unwrap();
    let env: Vec<(String, String)> = resources
        .to_string()
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let push = |file: &Path| {
        let output = Command::new(fanout_bin())
            .envs(moto.env())
            .envs(env.clone())
            .args(["--backend", "aws", "targets", "push", "--json", "--config"])
            .arg(&config_path)
            .arg(file)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    // A list with a bad row is refused, naming the line; nothing is uploaded.
    let list = dir.join("customers.jsonl");
    std::fs::write(
        &list,
        "{\"id\": \"c-1\", \"plan\": \"pro\"}\n{\"id\": \"c-2\"}\n",
    )
    .unwrap();
    let (code, _, stderr) = push(&list);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("not pushed") && stderr.contains("line 2"),
        "{stderr}"
    );

    write_rows(&list, 0..60);
    let (code, stdout, stderr) = push(&list);
    assert_eq!(code, Some(0), "{stderr}");
    let pushed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(pushed["rows"], 60, "{pushed}");
    assert_eq!(
        pushed["location"],
        format!("s3://{}/{}customers.jsonl", home.bucket, home.prefix)
    );
    let first_version = pushed["version"]["version_id"].as_str().unwrap().to_owned();

    let pipeline = aws_with(&sdk, &resources);
    let (summary, _) = fanout::run(&config, &pipeline, "tick-1", &fast_options(4))
        .await
        .unwrap();
    assert_eq!(
        (summary.succeeded, summary.dead_lettered, summary.lost),
        (60, 0, 0),
        "{summary:?}"
    );
    assert_eq!(called_once(&server, 0), ids(0..60));
    let run = pipeline.runs.get("tick-1").await.unwrap().unwrap();
    assert_eq!(run.sources.len(), 1);
    assert_eq!(
        (
            run.sources[0].rows,
            run.sources[0].objects[0].version_id.as_deref()
        ),
        (60, Some(first_version.as_str())),
        "the run records the version it read"
    );

    // A changed list (rows 0..20 removed, 60..80 added), pushed: the next tick calls the new
    // list, with no deploy in between.
    write_rows(&list, 20..80);
    let (code, _, stderr) = push(&list);
    assert_eq!(code, Some(0), "{stderr}");
    let (summary, _) = fanout::run(&config, &pipeline, "tick-2", &fast_options(4))
        .await
        .unwrap();
    assert_eq!((summary.succeeded, summary.lost), (60, 0), "{summary:?}");
    assert_eq!(called_once(&server, 60), ids(20..80));

    // A tick cut off after its run began is re-run on the version it first read, though a
    // newer one was pushed since: same jobs, same counts.
    write_rows(&list, 0..5);
    fanout::produce_tick(&config, &pipeline, "tick-3", "fanout")
        .await
        .unwrap();
    write_rows(&list, 100..103);
    assert_eq!(push(&list).0, Some(0));
    let again = fanout::produce_tick(&config, &pipeline, "tick-3", "fanout")
        .await
        .unwrap();
    assert_eq!(
        (again.started.clone(), again.jobs),
        (fanout_producer::Started::Resumed, 60),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_that_cannot_be_read_fails_the_tick_as_a_failed_run() {
    let moto = moto_or_skip!();
    let sdk = moto.sdk().await;
    let resources = provision(&sdk, "lists-gone", 5, 30).await.unwrap();
    let server = TargetServer::start().await.unwrap();
    let dir = tempdir("gone");
    let config_path = write_config(&dir, &server.base_url(), "lists://nobody.jsonl");
    let config = PipelineConfig::load(&config_path).unwrap();
    let pipeline = aws_with(&sdk, &resources);
    let error = fanout::produce_tick(&config, &pipeline, "gone-1", "fanout")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("source \"customers\"") && error.contains("does not exist"),
        "{error}"
    );
    let run = pipeline.runs.get("gone-1").await.unwrap().unwrap();
    assert_eq!((run.status, run.counts.expected), (RunStatus::Failed, 0));
    assert!(
        run.note
            .as_deref()
            .unwrap_or_default()
            .contains("nobody.jsonl"),
        "{run:?}"
    );
    assert!(server.records().is_empty());
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fanout-s3-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
