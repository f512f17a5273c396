//! `fanout config check`: what a valid config would do.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use fanout_shared::PipelineConfig;

/// A plain-text description: targets per host, budgets per instance, the least time a tick takes.
pub fn describe(config: &PipelineConfig, file: &Path, concurrency: u32) -> String {
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for target in &config.targets {
        *per_host.entry(config.job_target(target).host().unwrap_or_default()).or_insert(0) += 1;
    }
    let n = config.targets.len();
    let mut out = String::new();
    let _ = writeln!(out, "{}: valid, {n} targets on {} hosts", file.display(), per_host.len());
    let mut minimum = 0.0f64;
    match config.rate_limit {
        Some(limit) => {
            let share = limit.per_second / f64::from(concurrency.max(1));
            let _ = writeln!(out, "global budget: {}/s (burst {}), {share:.2}/s per instance at concurrency {concurrency}", limit.per_second, limit.burst);
            minimum = n as f64 / limit.per_second;
        }
        None => {
            let _ = writeln!(out, "global budget: none (unlimited)");
        }
    }
    for (host, count) in &per_host {
        match config.hosts.get(host) {
            Some(limit) => {
                let _ = writeln!(out, "  {host}: {count} targets, budget {}/s", limit.per_second);
                minimum = minimum.max(*count as f64 / limit.per_second);
            }
            None => {
                let _ = writeln!(out, "  {host}: {count} targets");
            }
        }
    }
    let _ = writeln!(out, "expected minimum duration of a tick: {minimum:.1} s");
    if config.allow_private_networks {
        let _ = writeln!(out, "warning: allow_private_networks is on: targets may reach loopback, private and metadata addresses");
    }
    out
}
