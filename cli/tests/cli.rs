//! The `fanout` binary as a user runs it: JSON output, exit codes, and a run killed half way
//! then resumed.

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use std::process::{Command, Stdio};
use std::time::Duration;

use fanout_testkit::target_server::TargetServer;

const FANOUT: &str = env!("CARGO_BIN_EXE_fanout");

fn write_config(dir: &std::path::Path, base_url: &str, n: usize, rate: f64) -> std::path::PathBuf {
    let targets: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"id": format!("t{i}"), "url": format!("{base_url}/ok/{i}")}))
        .collect();
    let config = serde_json::json!({"allow_private_networks": true, "rate_limit": {"per_second": rate}, "targets": targets});
    let path = dir.join("fanout.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fanout-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn demo_json_parses_and_loses_nothing() {
    let output = Command::new(FANOUT)
        .args(["--state", ":memory:", "run", "--demo", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for key in [
        "jobs",
        "succeeded",
        "dead_lettered",
        "duplicates_skipped",
        "retries",
        "outbound_calls",
        "elapsed_s",
        "rate_budget",
        "achieved_rate",
        "latency_ms",
        "lost",
    ] {
        assert!(summary.get(key).is_some(), "missing {key} in {summary}");
    }
    assert_eq!(summary["jobs"], 500);
    assert_eq!(summary["lost"], 0);
    assert_eq!(
        summary["succeeded"].as_u64().unwrap() + summary["dead_lettered"].as_u64().unwrap(),
        500
    );
    assert!(
        summary["latency_ms"]["p99"].as_f64().unwrap()
            >= summary["latency_ms"]["p50"].as_f64().unwrap()
    );
}

#[test]
fn bad_config_exits_2_naming_file_target_and_field() {
    let dir = temp_dir("bad");
    let path = dir.join("broken.json");
    std::fs::write(
        &path,
        r#"{"targets":[{"id":"a","url":"ftp://x.example.com/"}]}"#,
    )
    .unwrap();
    let output = Command::new(FANOUT)
        .args(["--state", ":memory:", "run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("broken.json: targets[0] (id \"a\"): field `url`: scheme \"ftp\""),
        "{stderr}"
    );
}

#[test]
fn every_config_rule_exits_2_naming_file_target_and_field() {
    let dir = temp_dir("rules");
    let target = |extra: &str| {
        format!(r#"{{"targets":[{{"id":"t1","url":"https://api.example.com/a"{extra}}}]}}"#)
    };
    let cases = [
        (
            "dup.json",
            r#"{"targets":[{"id":"t1","url":"https://x.io/"},{"id":"t1","url":"https://x.io/"}]}"#
                .to_owned(),
            r#"dup.json: targets[1] (id "t1"): field `id`: duplicate id"#,
        ),
        (
            "scheme.json",
            r#"{"targets":[{"id":"t1","url":"file:///etc/passwd"}]}"#.to_owned(),
            r#"scheme.json: targets[0] (id "t1"): field `url`: scheme "file""#,
        ),
        (
            "method.json",
            target(r#","method":"FETCH""#),
            r#"method.json: targets[0] (id "t1"): field `method`"#,
        ),
        (
            "timeout.json",
            target(r#","timeout_ms":0"#),
            r#"timeout.json: targets[0] (id "t1"): field `timeout_ms`"#,
        ),
        (
            "header.json",
            target(r#","headers":{"X-Key":"${API_KEY}"}"#),
            r#"header.json: targets[0] (id "t1"): field `headers`: header X-Key"#,
        ),
        (
            "metadata.json",
            r#"{"targets":[{"id":"t1","url":"http://169.254.169.254/latest/meta-data/"}]}"#
                .to_owned(),
            r#"metadata.json: targets[0] (id "t1"): field `url`: 169.254.169.254 is a link-local"#,
        ),
        (
            "body.json",
            target(&format!(r#","body":"{}""#, "x".repeat(300 * 1024))),
            r#"body.json: targets[0] (id "t1"): field `body`"#,
        ),
        (
            "rate.json",
            r#"{"rate_limit":{"per_second":0},"targets":[{"id":"t1","url":"https://x.io/"}]}"#
                .to_owned(),
            "rate.json: rate_limit: field `per_second`",
        ),
        (
            "empty.json",
            r#"{"targets":[]}"#.to_owned(),
            "empty.json: field `targets`: no targets",
        ),
        (
            "syntax.yaml",
            "targets: [".to_owned(),
            "syntax.yaml: cannot parse",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let output = Command::new(FANOUT)
            .args(["--state", ":memory:", "run", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{name}: {stderr:?} should contain {expected:?}"
        );
    }
}

#[test]
fn aws_backend_without_resource_names_exits_2_naming_them() {
    let dir = temp_dir("names");
    let config = write_config(&dir, "http://127.0.0.1:1", 1, 10.0);
    let output = Command::new(FANOUT)
        .args(["--backend", "aws", "consume", "--config"])
        .arg(&config)
        .env_remove("FANOUT_TOPIC_ARN")
        .env("FANOUT_QUEUE_URL", "http://127.0.0.1:1/q")
        .env_remove("FANOUT_DLQ_URL")
        .env_remove("FANOUT_TABLE_NAME")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("FANOUT_TOPIC_ARN, FANOUT_DLQ_URL, FANOUT_TABLE_NAME not set"),
        "{stderr}"
    );
}

#[test]
fn run_killed_half_way_resumes_with_nothing_lost_and_no_double_effects() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TargetServer::start()).unwrap();
    let dir = temp_dir("kill");
    // 300 jobs at 100/s: about 3 s of work; the first run is killed after 1.2 s.
    let config = write_config(&dir, &server.base_url(), 300, 100.0);
    let state = dir.join("state.db");
    let args = |json: bool| {
        let mut cmd = Command::new(FANOUT);
        cmd.arg("--state").arg(&state).args([
            "run",
            "--run-id",
            "resume-test",
            "--visibility-timeout",
            "1",
            "--function-timeout",
            "1",
        ]);
        cmd.arg("--config").arg(&config);
        if json {
            cmd.arg("--json");
        }
        cmd
    };
    let mut first = args(false)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    first.kill().unwrap();
    first.wait().unwrap();
    let calls_before = server.stats().calls;
    assert!(
        calls_before > 0 && calls_before < 300,
        "killed half way: {calls_before} calls"
    );

    let output = args(true).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["lost"], 0);
    assert_eq!(summary["succeeded"], 300);
    let stats = server.stats();
    assert_eq!(stats.effects, 300, "each job took effect once");
    // Only a job killed between its call and its recorded completion can be called again.
    assert!(
        stats.repeat_successes <= 4 * 10,
        "at most one batch per killed invocation: {stats:?}"
    );
}

/// Issue #13: `config check` and `--run-id` refuse what they used to accept, or hang on.
#[test]
fn config_holes_and_bad_run_ids_exit_2_with_a_clear_error() {
    let dir = temp_dir("holes");
    let target = |extra: &str| {
        format!(r#"{{"targets":[{{"id":"t1","url":"https://api.example.com/a"{extra}}}]}}"#)
    };
    let files = [
        (
            "port0.json",
            r#"{"targets":[{"id":"t1","url":"https://api.example.com:0/a"}]}"#.to_owned(),
            r#"port0.json: targets[0] (id "t1"): field `url`: port 0"#,
        ),
        (
            "userinfo.json",
            r#"{"targets":[{"id":"t1","url":"https://bob:hunter2@api.example.com/a"}]}"#.to_owned(),
            r#"userinfo.json: targets[0] (id "t1"): field `url`: credentials (user:password@) in "https://***@api.example.com/a""#,
        ),
        (
            "host.json",
            target(r#","headers":{"Host":"internal.example.com"}"#),
            "host.json: targets[0] (id \"t1\"): field `headers`: header Host frames or routes",
        ),
        (
            "length.json",
            target(r#","headers":{"Content-Length":"5"}"#),
            "header Content-Length frames or routes",
        ),
        (
            "te.json",
            target(r#","headers":{"TE":"trailers"}"#),
            "header TE frames or routes",
        ),
        (
            "doc6.json",
            r#"{"targets":[{"id":"t1","url":"http://[2001:db8::10]/"}]}"#.to_owned(),
            "field `url`: 2001:db8::10 is a documentation address",
        ),
        (
            "sixtofour.json",
            r#"{"targets":[{"id":"t1","url":"http://[2002:c0a8:0101::1]/"}]}"#.to_owned(),
            "2002:c0a8:101::1 is a 6to4 address wrapping a non-public IPv4",
        ),
        (
            "sitelocal.json",
            r#"{"targets":[{"id":"t1","url":"http://[fec0::5]/"}]}"#.to_owned(),
            "fec0::5 is a site-local address",
        ),
    ];
    let check = |path: &std::path::Path| {
        Command::new(FANOUT)
            .args(["config", "check"])
            .arg(path)
            .output()
            .unwrap()
    };
    for (name, text, expected) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let output = check(&path);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{name}: {stderr:?} should contain {expected:?}"
        );
        assert!(
            !stderr.contains("hunter2"),
            "{name}: the password is printed: {stderr}"
        );
    }
    // Devices are read up to the cap, then refused, naming the file and the cap.
    for device in ["/dev/zero", "/dev/urandom"] {
        let output = check(std::path::Path::new(device));
        assert_eq!(output.status.code(), Some(2));
        assert_eq!(
            String::from_utf8_lossy(&output.stderr).trim(),
            format!("error: {device}: larger than the 32 MiB limit of a config file")
        );
    }
    // A byte order mark is skipped.
    let bom = dir.join("bom.json");
    std::fs::write(&bom, format!("\u{feff}{}", target(""))).unwrap();
    let output = check(&bom);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A bad run ID is bad input, refused before the pipeline is opened.
    let good = write_config(&dir, "http://127.0.0.1:1", 1, 10.0);
    for (command, run_id) in [
        ("produce", ""),
        ("produce", "a\nb"),
        ("run", &"r".repeat(129)[..]),
    ] {
        let output = Command::new(FANOUT)
            .args([
                "--state", ":memory:", command, "--run-id", run_id, "--config",
            ])
            .arg(&good)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{command} --run-id {run_id:?}: {stderr}"
        );
        assert!(
            stderr.contains("error: --run-id: run_id")
                && stderr.contains("must be 1..=128 printable characters"),
            "{stderr}"
        );
    }
}

#[test]
fn targets_show_renders_the_list_from_the_config_alone_and_names_a_bad_row() {
    let dir = temp_dir("targets");
    let config = serde_json::json!({
        "rate_limit": {"per_second": 10},
        "templates": {"sync": {"url": "https://api.example.com/customers/{id}/sync?plan={plan}", "method": "POST"}},
        "sources": [{"name": "customers", "template": "sync", "id_field": "id", "location": "customers.csv"}]
    });
    std::fs::write(dir.join("fanout.json"), config.to_string()).unwrap();
    // CSV quoting: a comma and a quote inside a field stay in the one value.
    std::fs::write(
        dir.join("customers.csv"),
        "id,plan\nc-1,pro\n\"c/2\",\"a,\"\"b\"\"\"\n",
    )
    .unwrap();
    let show = |extra: &[&str]| {
        let mut args = vec!["targets", "show", "--config"];
        let path = dir.join("fanout.json");
        let path = path.to_str().unwrap().to_owned();
        args.push(&path);
        args.extend_from_slice(extra);
        Command::new(FANOUT).args(&args).output().unwrap()
    };
    let output = show(&["--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let calls: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        calls,
        serde_json::json!([
            {"id": "customers/c-1", "method": "POST", "url": "https://api.example.com/customers/c-1/sync?plan=pro"},
            {"id": "customers/c/2", "method": "POST", "url": "https://api.example.com/customers/c%2F2/sync?plan=a%2C%22b%22"}
        ])
    );
    let table = String::from_utf8(show(&[]).stdout).unwrap();
    assert!(table.contains("source customers: 2 rows from"), "{table}");

    std::fs::write(dir.join("customers.csv"), "id,plan\nc-1,pro\nc-2\n").unwrap();
    let output = show(&[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("source \"customers\" line 3"), "{stderr}");
}

#[test]
fn targets_push_checks_every_row_then_replaces_the_local_list_and_config_check_rows_agrees() {
    let dir = temp_dir("push");
    let config = serde_json::json!({
        "templates": {"sync": {"url": "https://api.example.com/customers/{id}/sync?plan={plan}"}},
        "sources": [{"name": "customers", "template": "sync", "id_field": "id", "location": "lists://customers.jsonl"}]
    });
    let config_path = dir.join("fanout.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let fanout = |args: &[&str]| {
        Command::new(FANOUT)
            .args(["--state", ":memory:"])
            .args(args)
            .output()
            .unwrap()
    };
    let config_arg = config_path.to_str().unwrap();

    // A bad list: refused by both commands, naming its line; nothing written.
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"id\":\"c-1\",\"plan\":\"pro\"}\n{\"id\":\"c-1\",\"plan\":\"free\"}\n",
    )
    .unwrap();
    let push = fanout(&[
        "targets",
        "push",
        "--config",
        config_arg,
        bad.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&push.stderr);
    assert_eq!(push.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not pushed") && stderr.contains("line 2: duplicate id"),
        "{stderr}"
    );
    assert!(!dir.join("lists/customers.jsonl").exists());
    let check = fanout(&[
        "config",
        "check",
        config_arg,
        "--rows",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(check.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&check.stderr).contains("line 2: duplicate id"));

    // A good one: pushed to lists/ beside the config, and the next read sees it.
    let good = dir.join("customers.jsonl");
    std::fs::write(
        &good,
        "{\"id\":\"c-1\",\"plan\":\"pro\"}\n{\"id\":\"c-2\",\"plan\":\"free\"}\n",
    )
    .unwrap();
    let check = fanout(&[
        "config",
        "check",
        config_arg,
        "--rows",
        good.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        stdout.contains("2 rows for source customers, every one renders"),
        "{stdout}"
    );
    let push = fanout(&[
        "targets",
        "push",
        "--json",
        "--config",
        config_arg,
        good.to_str().unwrap(),
    ]);
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    let pushed: serde_json::Value = serde_json::from_slice(&push.stdout).unwrap();
    assert_eq!(pushed["rows"], 2, "{pushed}");
    assert_eq!(
        std::fs::read(dir.join("lists/customers.jsonl")).unwrap(),
        std::fs::read(&good).unwrap()
    );
    let show = fanout(&["targets", "show", "--json", "--config", config_arg]);
    let calls: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(
        calls[1]["url"],
        "https://api.example.com/customers/c-2/sync?plan=free"
    );
}
