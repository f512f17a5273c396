//! Helpers shared by the end-to-end tests: workload configs on the local target server and
//! the pipeline on a fresh embedded backend.

use std::time::Duration;

use fanout::backend::{self, EmbeddedSettings, Pipeline};
use fanout::event_source::EventSourceOptions;
use fanout::run::RunOptions;
use fanout_shared::config::{RateLimit, Target};
use fanout_shared::embedded::Duplicates;
use fanout_shared::PipelineConfig;

/// A config of `paths` (target-server paths, see `fanout_shared::target_server`) on `base_url`,
/// one target each, ids `t0`, `t1`, …
pub fn config_for(base_url: &str, paths: &[String], rate: Option<f64>) -> PipelineConfig {
    PipelineConfig {
        rate_limit: rate.map(|per_second| RateLimit { per_second, burst: 1 }),
        allow_private_networks: true,
        targets: paths
            .iter()
            .enumerate()
            .map(|(i, path)| Target {
                id: format!("t{i}"),
                url: format!("{base_url}/{path}"),
                method: None,
                headers: Default::default(),
                body: None,
                timeout_ms: Some(1000),
            })
            .collect(),
        ..PipelineConfig::default()
    }
}

/// An in-memory embedded pipeline.
pub fn embedded_pipeline(max_receive_count: u32, duplicates: Duplicates) -> Pipeline {
    let settings = EmbeddedSettings { state: ":memory:".into(), max_receive_count, duplicates };
    backend::embedded(&settings).expect("in-memory backend opens")
}

/// Fast local options: short visibility so retries come back quickly.
pub fn fast_options(concurrency: usize) -> RunOptions {
    RunOptions {
        event_source: EventSourceOptions {
            concurrency,
            batch_size: 10,
            visibility_timeout: Duration::from_millis(500),
            function_timeout: Duration::from_millis(2500),
            poll_wait: Duration::from_millis(50),
            timeout: Duration::from_secs(60),
        },
        rate_override: None,
        quiet: true,
    }
}
