//! Helpers shared by the end-to-end tests: workload configs on the local target server and
//! the pipeline on a fresh embedded backend.

// Test code: a failed setup step or contract is a failed test (Cargo.toml, [workspace.lints]).
#![allow(clippy::unwrap_used)]
#![allow(missing_debug_implementations)] // test doubles holding trait objects

pub mod contract;
pub mod fault;
pub mod local_cloud;

use std::time::Duration;

use fanout::{EmbeddedSettings, EventSourceOptions, Pipeline, RunOptions};
use fanout_shared::embedded::Duplicates;
use fanout_shared::{HostLimit, PipelineConfig, RateLimit};
use fanout_testkit::TargetServer;

/// A config of `paths` (target-server paths, see `fanout_testkit::target_server`) on `base_url`,
/// one target each, ids `t0`, `t1`, …
pub fn config_for(base_url: &str, paths: &[String], rate: Option<f64>) -> PipelineConfig {
    PipelineConfig {
        rate_limit: rate.map(|per_second| RateLimit {
            per_second,
            burst: 1,
        }),
        allow_private_networks: true,
        targets: fanout_testkit::targets(
            base_url,
            paths
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("t{i}"), p.as_str())),
            Some(1000),
        ),
        ..PipelineConfig::default()
    }
}

/// Servers on 127.0.0.1, 127.0.0.2, … with their budgets and job counts, and the config that
/// interleaves their jobs (no global budget unless `global`): the flow-control test and
/// figure 14 share it.
pub async fn hosts_tick(
    hosts: &[(f64, usize)],
    global: Option<f64>,
) -> (Vec<TargetServer>, PipelineConfig) {
    let mut servers = Vec::new();
    for last in 1..=hosts.len() as u8 {
        let ip = std::net::Ipv4Addr::new(127, 0, 0, last);
        servers.push(
            TargetServer::start_on(ip.into())
                .await
                .expect("a target server on 127.0.0.x"),
        );
    }
    let mut config = config_for("http://unused", &[], global);
    let spread: Vec<(String, usize)> = servers
        .iter()
        .zip(hosts)
        .map(|(s, (_, jobs))| (s.base_url(), *jobs))
        .collect();
    config.targets = fanout_testkit::interleaved_targets(&spread);
    config.hosts = servers
        .iter()
        .zip(hosts)
        .map(|(s, (per_second, _))| {
            // Budgets are per host name, whatever the port.
            let host = s.base_url().trim_start_matches("http://").to_owned();
            let host = host
                .rsplit_once(':')
                .map_or(host.clone(), |(h, _)| h.to_owned());
            let limit = HostLimit {
                per_second: *per_second,
                max_per_second: None,
            };
            (host, limit)
        })
        .collect();
    (servers, config)
}

/// Makes every target of a [`hosts_tick`] config one its server answers after `ms` (the
/// test kit's `slow` path): an API whose latency, not its budget, sets how many calls must be
/// in flight.
pub fn answered_after(config: &mut PipelineConfig, ms: u64) {
    for target in &mut config.targets {
        target.url = format!("{}?ms={ms}", target.url.replacen("/ok/", "/slow/", 1));
    }
}

/// A fresh directory `fanout-NAME-PID` under the temp dir holding `fanout.json`, the config of
/// `paths` on `base_url` (for tests that run the `fanout` binary). Returns the dir and the file.
pub fn config_file(
    name: &str,
    base_url: &str,
    paths: &[String],
) -> (std::path::PathBuf, std::path::PathBuf) {
    config_file_at(name, base_url, paths, None)
}

/// [`config_file`] with a global budget of `rate` per second (burst 1), when given.
pub fn config_file_at(
    name: &str,
    base_url: &str,
    paths: &[String],
    rate: Option<f64>,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("fanout-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("fanout.json");
    let config =
        serde_json::to_string(&config_for(base_url, paths, rate)).expect("config serializes");
    std::fs::write(&file, config).expect("config written");
    (dir, file)
}

/// An in-memory embedded pipeline.
pub fn embedded_pipeline(max_receive_count: u32, duplicates: Duplicates) -> Pipeline {
    let settings = EmbeddedSettings {
        state: ":memory:".into(),
        max_receive_count: Some(max_receive_count),
        duplicates,
    };
    fanout::embedded(&settings).expect("in-memory backend opens")
}

/// Fast local options: short invocations; the visibility timeout covers one invocation, as the
/// stack's does (retries and waits come back as delayed copies, not through visibility).
pub fn fast_options(concurrency: usize) -> RunOptions {
    RunOptions {
        event_source: EventSourceOptions {
            concurrency,
            batch_size: 10,
            visibility_timeout: Duration::from_millis(2500),
            function_timeout: Duration::from_millis(2500),
            poll_wait: Duration::from_millis(50),
            timeout: Duration::from_secs(60),
        },
        rate_override: None,
        quiet: true,
        pipeline_name: "fanout".into(),
        separate_instances: false,
    }
}

/// A moto server on a free port of 127.0.0.1, killed when dropped.
pub struct Moto {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl std::fmt::Debug for Moto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moto")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The variable `scripts/test` (and so CI, `.ci/run`) sets: a test whose emulator is missing
/// then fails instead of skipping, so a suite can never pass by not running.
pub const REQUIRE_EMULATORS: &str = "FANOUT_REQUIRE_EMULATORS";

/// Whether [`REQUIRE_EMULATORS`] is set (to anything but empty or `0`).
pub fn emulators_required() -> bool {
    std::env::var(REQUIRE_EMULATORS).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// What a test that needs `emulator` says when it is missing (at `path`): which one, and how
/// to install it.
fn missing_emulator(emulator: &str, path: &std::path::Path) -> String {
    format!(
        "{emulator} is not installed ({} is missing): run scripts/setup-emulator \
         (needs python3 with venv and pip; installs moto[server] into .venv, ~1.5 min)",
        path.display()
    )
}

/// The SDK configuration of an emulator at `endpoint` (moto, or a proxy in front of it):
/// region `us-east-1`, static test credentials.
pub async fn sdk_at(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .load()
        .await
}

/// A moto server for the test, or a skip: `let moto = moto_or_skip!();` returns from the test
/// when moto is missing and [`REQUIRE_EMULATORS`] is unset (a plain `cargo test` on a machine
/// without the emulator says SKIPPED and passes); under `scripts/test` it panics instead
/// ([`Moto::start`]).
#[macro_export]
macro_rules! moto_or_skip {
    () => {
        match $crate::Moto::start() {
            Some(moto) => moto,
            None => return,
        }
    };
}

impl Moto {
    /// Starts moto from the project venv (`scripts/setup-emulator`), serving one request at a
    /// time (`tests/emulator/moto_serial.py` says why). If the venv is absent: a panic naming
    /// the emulator and its installer when [`emulators_required`], else `None` after a loud
    /// SKIPPED line (a plain `cargo test` on a fresh machine).
    pub fn start() -> Option<Self> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        Self::start_in(&root.join("../.venv"), emulators_required())
    }

    /// [`Moto::start`] from the venv `venv`, failing (`required`) or skipping when it lacks moto.
    fn start_in(venv: &std::path::Path, required: bool) -> Option<Self> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = venv.join("bin/python");
        let server = venv.join("bin/moto_server");
        if !server.exists() {
            let missing = missing_emulator("moto (the AWS emulator)", &server);
            assert!(
                !required,
                "{REQUIRE_EMULATORS} is set (scripts/test, CI), so this test may not skip: {missing}"
            );
            eprintln!("SKIPPED: {missing}; set {REQUIRE_EMULATORS}=1 to make this an error");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new(python)
            .arg(root.join("emulator/moto_serial.py"))
            .args(["127.0.0.1", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let ready = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < ready,
                "moto did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    /// SDK configuration for this server: the same settings `AWS_ENDPOINT_URL`, `AWS_REGION` and
    /// static credentials give through the environment.
    pub async fn sdk(&self) -> aws_config::SdkConfig {
        sdk_at(&self.endpoint).await
    }

    /// Environment for a child process (the `fanout` binary) to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `fanout` binary of this build (`cargo test --workspace` builds it for the CLI's own
/// integration tests): next to a binary (`fanout-bench`), or one up from a test binary in `deps/`.
pub fn fanout_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().expect("the binary's directory");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("target dir")
    } else {
        dir
    };
    let bin = dir.join("fanout");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --bins`",
        bin.display()
    );
    bin
}

/// An event bus that records every event it is given (and passes nothing on): tests count
/// completion events with it.
#[derive(Debug, Default)]
pub struct RecordingBus {
    events: std::sync::Mutex<Vec<(String, serde_json::Value)>>,
}

impl RecordingBus {
    /// `pipeline` with its events going to a new recording bus, and that bus.
    pub fn install(pipeline: &Pipeline) -> (Pipeline, std::sync::Arc<RecordingBus>) {
        let bus = std::sync::Arc::new(RecordingBus::default());
        (
            Pipeline {
                events: bus.clone(),
                ..pipeline.clone()
            },
            bus,
        )
    }

    /// Every event so far: detail-type and detail.
    pub fn events(&self) -> Vec<(String, serde_json::Value)> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl fanout_shared::runs::EventBus for RecordingBus {
    async fn put(
        &self,
        detail_type: &str,
        detail: &serde_json::Value,
    ) -> Result<(), fanout_shared::BackendError> {
        if let Ok(mut events) = self.events.lock() {
            events.push((detail_type.to_owned(), detail.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_moto_skips_a_plain_cargo_test() {
        assert!(Moto::start_in(std::path::Path::new("/nonexistent/venv"), false).is_none());
    }

    #[test]
    #[should_panic(
        expected = "FANOUT_REQUIRE_EMULATORS is set (scripts/test, CI), so this test may not skip: \
                    moto (the AWS emulator) is not installed (/nonexistent/venv/bin/moto_server is \
                    missing): run scripts/setup-emulator"
    )]
    fn a_missing_moto_fails_under_scripts_test() {
        let _ = Moto::start_in(std::path::Path::new("/nonexistent/venv"), true);
    }
}
