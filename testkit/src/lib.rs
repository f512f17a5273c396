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

use fanout_shared::config::Target;

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
