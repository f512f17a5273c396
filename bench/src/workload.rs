//! Workloads: configs of N targets on a target server, SQS events built from them, scratch files.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fanout::{to_event, EventSourceOptions, Pipeline, RunOptions};
use fanout_shared::embedded::Duplicates;
use fanout_shared::PipelineConfig;

/// `n` targets answering 200 at once, on `base_url`, under an optional global budget.
pub(crate) fn ok_targets(base_url: &str, n: usize, rate: Option<f64>) -> PipelineConfig {
    let paths: Vec<String> = (0..n).map(|i| format!("ok/{i}")).collect();
    fanout_tests::config_for(base_url, &paths, rate)
}

/// The `fanout run` defaults (README "The `fanout` command"), with `concurrency` invocations.
pub(crate) fn cli_options(concurrency: usize) -> RunOptions {
    RunOptions {
        event_source: EventSourceOptions {
            concurrency,
            batch_size: 10,
            visibility_timeout: Duration::from_secs(10),
            function_timeout: Duration::from_secs(10),
            poll_wait: Duration::from_millis(100),
            timeout: Duration::from_secs(300),
        },
        rate_override: None,
        quiet: true,
        pipeline_name: "fanout".into(),
        separate_instances: false,
    }
}

/// The deployed stack's shape (figure 8's) without the emulator: `concurrency` instances as
/// Lambda runs them, each with its own lease and share, 30 s functions behind a queue that
/// hides a record 6 × as long.
pub(crate) fn lambda_options(concurrency: usize) -> RunOptions {
    let mut options = cli_options(concurrency);
    options.event_source.function_timeout = Duration::from_secs(30);
    options.event_source.visibility_timeout = Duration::from_secs(180);
    options.separate_instances = true;
    options
}

/// An embedded pipeline on a state file (`:memory:` for none), as `fanout run` opens it.
pub(crate) fn embedded(state: &Path, duplicate_rate: f64) -> Result<Pipeline, String> {
    let settings = fanout::EmbeddedSettings {
        state: state.to_owned(),
        max_receive_count: Some(5),
        duplicates: Duplicates {
            twice: duplicate_rate,
            ..Duplicates::default()
        },
    };
    fanout::embedded(&settings).map_err(|e| e.to_string())
}

/// Publishes one tick of `config` and writes the SQS events Lambda would deliver for it, in
/// batches of `batch_size`, one JSON event per line. Returns the number of events.
pub(crate) async fn write_events(
    config: &PipelineConfig,
    batch_size: u32,
    path: &Path,
) -> Result<usize, String> {
    let pipeline = embedded(":memory:".as_ref(), 0.0)?;
    fanout::produce_tick(config, &pipeline, "bench-events", "fanout")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    let mut events = 0;
    loop {
        let messages = pipeline
            .queue
            .receive(batch_size, Duration::from_secs(3600), Duration::ZERO)
            .await
            .map_err(|e| e.to_string())?;
        if messages.is_empty() {
            break;
        }
        let line = serde_json::to_string(&to_event(pipeline.queue.name(), messages))
            .map_err(|e| e.to_string())?;
        writeln!(out, "{line}").map_err(|e| e.to_string())?;
        events += 1;
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(events)
}

/// A scratch directory under the system temp dir, removed when dropped.
pub(crate) struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `fanout-bench-<pid>-<name>`.
    pub(crate) fn new(name: &str) -> Result<Self, String> {
        let path = std::env::temp_dir().join(format!("fanout-bench-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self { path })
    }

    /// A path inside the directory.
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
