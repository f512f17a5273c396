//! The `--demo` workload: a config of targets on the local target server with a realistic mix.

use fanout_shared::runs::RunPolicy;
use fanout_shared::{PipelineConfig, RateLimit};

/// Targets in the demo.
pub(crate) const DEMO_TARGETS: usize = 500;
/// The demo's global budget, requests per second.
pub(crate) const DEMO_RATE: f64 = 250.0;

/// 500 targets on `base_url`: mostly fast 200s, some slow responses, a few 500s that succeed on
/// retry, a few 429s with `Retry-After`, a few permanent 400s (3%, within the run's 5% of
/// tolerated failures, so the demo run SUCCEEDS). Deterministic by index.
pub(crate) fn demo_config(base_url: &str) -> PipelineConfig {
    let paths: Vec<String> = (0..DEMO_TARGETS)
        .map(|i| match i % 100 {
            0..=79 => format!("ok/{i}"),
            80..=89 => format!("slow/{i}?ms=300"),
            90..=93 => format!("flaky/{i}?fail=1"),
            94..=96 => format!("limited/{i}?fail=1&retry_after=1"),
            _ => format!("bad/{i}"),
        })
        .collect();
    let targets = fanout_testkit::targets(
        base_url,
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("demo-{i}"), p.as_str())),
        None,
    );
    PipelineConfig {
        rate_limit: Some(RateLimit {
            per_second: DEMO_RATE,
            burst: 1,
        }),
        allow_private_networks: true,
        runs: RunPolicy {
            tolerated_failure_percentage: Some(5.0),
            ..RunPolicy::default()
        },
        targets,
        ..PipelineConfig::default()
    }
}
