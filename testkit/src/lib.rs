//! Test doubles of the fanout pipeline, kept out of the product crates: the tests, the
//! benchmarks and `fanout run --demo` use them.
//!
//! # Layout
//! - [`target_server`]: a scriptable HTTP target on 127.0.0.1 (fast, slow, flaky, limited,
//!   broken, outage paths) that records every call.
//! - [`targets`]: the config targets of a list of paths on that server, the one builder the
//!   demo, the test workloads and the local-cloud configs share.
//! - [`list_server`]: an HTTP list endpoint on 127.0.0.1 whose pages (status, headers, body)
//!   are set by path, for the producer's HTTP sources.
//! - [`aws_proxy`]: an AWS endpoint between SDK clients (deployed functions or a test's own)
//!   and an emulator that counts every request by service and operation with its billed units,
//!   and injects throttling, server errors, lost responses and latency by a seeded
//!   [`aws_proxy::FaultPlan`], answered in each service's own protocol so the SDK's retry
//!   classifier sees real AWS errors.

#![warn(missing_docs)]

pub mod aws_proxy;
pub mod list_server;
mod serve;
pub mod target_server;

pub use target_server::{CallRecord, TargetServer, TargetStats};

use fanout_shared::Target;

/// One target per `(id, path)` on the target server at `base_url` (`http://127.0.0.1:PORT`),
/// with the given call timeout (`None`: the config's default).
pub fn targets<'a>(
    base_url: &str,
    paths: impl IntoIterator<Item = (String, &'a str)>,
    timeout_ms: Option<u64>,
) -> Vec<Target> {
    paths
        .into_iter()
        .map(|(id, path)| Target {
            id,
            url: format!("{base_url}/{path}"),
            method: None,
            headers: Default::default(),
            body: None,
            timeout_ms,
        })
        .collect()
}

/// The targets of a tick spread over several hosts: `hosts` gives each host's base URL and
/// job count; the jobs are interleaved in proportion (a host with 1 job in 6 has about one in
/// every 6 positions), as a list mixing the endpoints of fast and slow services would be. Path
/// `ok/{host}-{n}`, ids `t0…`, call timeout 1 s.
pub fn interleaved_targets(hosts: &[(String, usize)]) -> Vec<Target> {
    let total: usize = hosts.iter().map(|(_, jobs)| jobs).sum();
    let mut placed = vec![0usize; hosts.len()];
    let mut out = Vec::with_capacity(total);
    for i in 0..total {
        // The host furthest behind its share of the first i + 1 positions goes next.
        let next = (0..hosts.len())
            .filter(|&h| placed[h] < hosts[h].1)
            .max_by(|&a, &b| {
                let behind =
                    |h: usize| hosts[h].1 as f64 * (i + 1) as f64 / total as f64 - placed[h] as f64;
                behind(a).total_cmp(&behind(b))
            });
        let Some(h) = next else { break };
        let path = format!("ok/{h}-{}", placed[h]);
        placed[h] += 1;
        out.extend(targets(
            &hosts[h].0,
            [(format!("t{i}"), path.as_str())],
            Some(1000),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn interleaved_targets_spread_each_host_in_proportion() {
        let hosts = [("http://a".to_owned(), 10), ("http://b".to_owned(), 2)];
        let targets = super::interleaved_targets(&hosts);
        let hosts_in_order: String = targets
            .iter()
            .map(|t| {
                if t.url.starts_with("http://a/") {
                    'a'
                } else {
                    'b'
                }
            })
            .collect();
        assert_eq!(hosts_in_order, "aabaaaaabaaa");
        let ids: Vec<&str> = targets.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids[..3], ["t0", "t1", "t2"]);
    }
}
