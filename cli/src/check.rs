//! `fanout config check`: what a valid config would do.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use fanout_shared::PipelineConfig;

/// The deployed stack's settings a tick must fit (`fanout config check` flags, defaults as the
/// CDK stack's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StackFit {
    /// The event source mapping's `MaximumConcurrency`.
    pub concurrency: u32,
    /// The consumer function's timeout, seconds.
    pub function_timeout_s: f64,
    /// The schedule's period, seconds (`rate(15 minutes)` = 900).
    pub schedule_period_s: f64,
    /// Records per invocation.
    pub batch_size: u32,
}

/// How long a message may live in the job queue (the stack's retention, 4 days).
const QUEUE_RETENTION_S: f64 = 4.0 * 24.0 * 3600.0;
/// The consumer's default safety margin before the deadline.
const DEADLINE_MARGIN_S: f64 = 1.0;

/// A plain-text description: targets per host, budgets per instance, the least time a tick
/// takes, and whether the stack's settings carry it.
pub(crate) fn describe(config: &PipelineConfig, file: &Path, fit: &StackFit) -> String {
    let concurrency = fit.concurrency;
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for target in &config.targets {
        *per_host
            .entry(config.job_target(target).host().unwrap_or_default())
            .or_insert(0) += 1;
    }
    let n = config.targets.len();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: valid, {n} targets on {} hosts",
        file.display(),
        per_host.len()
    );
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
                let _ = writeln!(
                    out,
                    "  {host}: {count} targets, budget {}/s",
                    limit.per_second
                );
                minimum = minimum.max(*count as f64 / limit.per_second);
            }
            None => {
                let _ = writeln!(out, "  {host}: {count} targets");
            }
        }
    }
    let _ = writeln!(out, "expected minimum duration of a tick: {minimum:.1} s");
    for line in stack_fit(config, fit, minimum) {
        let _ = writeln!(out, "{line}");
    }
    if config.allow_private_networks {
        let _ = writeln!(out, "warning: allow_private_networks is on: targets may reach loopback, private and metadata addresses");
    }
    out
}

/// Whether the stack's settings carry a tick of `minimum` seconds: one line per check, each
/// starting with `ok:` or `warning:`.
pub(crate) fn stack_fit(config: &PipelineConfig, fit: &StackFit, minimum: f64) -> Vec<String> {
    let mut lines = Vec::new();
    let working = (fit.function_timeout_s - DEADLINE_MARGIN_S).max(0.0);
    lines.push(format!(
        "stack: concurrency {}, function timeout {} s, batch size {}, schedule every {} s",
        fit.concurrency, fit.function_timeout_s, fit.batch_size, fit.schedule_period_s
    ));
    if minimum > fit.schedule_period_s {
        lines.push(format!(
            "warning: a tick takes at least {minimum:.0} s, longer than the schedule's period ({} s): ticks overlap and share the budget",
            fit.schedule_period_s
        ));
    } else {
        lines.push(format!(
            "ok: a tick ({minimum:.1} s at least) fits in the schedule's period ({} s)",
            fit.schedule_period_s
        ));
    }
    if minimum > QUEUE_RETENTION_S {
        lines.push(
            "warning: a tick takes longer than the job queue keeps messages (4 days)".to_owned(),
        );
    }
    let longest = config
        .job_targets()
        .iter()
        .map(|t| t.timeout_ms)
        .max()
        .unwrap_or(0) as f64
        / 1000.0;
    if longest > working {
        lines.push(format!(
            "warning: a target's timeout ({longest} s) is longer than an invocation can work ({working} s = function timeout - {DEADLINE_MARGIN_S} s margin): its calls are cut short"
        ));
    } else {
        lines.push(format!(
            "ok: every call's timeout ({longest} s at most) fits in an invocation ({working} s)"
        ));
    }
    if let Some(limit) = config.rate_limit {
        // When every instance works, each spends budget / concurrency; a batch larger than what
        // an invocation can spend is partly rescheduled (it waits, never fails).
        let per_invocation = limit.per_second / f64::from(fit.concurrency.max(1)) * working;
        if per_invocation < f64::from(fit.batch_size) {
            lines.push(format!(
                "ok (with waiting): an instance can spend {per_invocation:.1} calls per invocation at full concurrency, less than a batch of {}: the rest of each batch is rescheduled for when its permit is due, never dead-lettered",
                fit.batch_size
            ));
        } else {
            lines.push(format!(
                "ok: an instance can spend {per_invocation:.0} calls per invocation, a batch is {}",
                fit.batch_size
            ));
        }
    }
    lines
}
