//! `fanout hosts`: the fleet's shared host states, and an operator's hand on them.
//!
//! Because every consumer instance reads a host's state from the store (within about a
//! second), a pause, a resume or a new budget takes effect on the running fleet without a
//! redeploy. Held jobs wait (rescheduled, never dead-lettered) until the host is resumed.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use fanout_shared::fleet::FleetStore;
use fanout_shared::{
    check_rate, now_ms, BackendError, Circuit, HostEvent, HostState, PipelineConfig, ALL_HOSTS,
};

/// `fanout hosts`: list, or act on one host.
#[derive(Debug, Args)]
pub(crate) struct HostsArgs {
    /// The pipeline config file (its hosts and budgets).
    #[arg(long)]
    pub config: PathBuf,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Act on a host; without one, list them all.
    #[command(subcommand)]
    pub action: Option<HostAction>,
}

/// What to do to a host.
#[derive(Debug, Subcommand)]
pub(crate) enum HostAction {
    /// Hold every job for HOST (or for every host, with --all) until resumed.
    Pause(Which),
    /// Let HOST's jobs (or every host's, with --all) be called again.
    Resume(Which),
    /// Change HOST's budget for the whole fleet at runtime.
    Set {
        /// The host.
        host: String,
        /// Requests per second, for the whole fleet (at most the config's `max_per_second`).
        #[arg(long, required_unless_present = "reset")]
        rate: Option<f64>,
        /// Back to the config's budget.
        #[arg(long, conflicts_with = "rate")]
        reset: bool,
    },
}

/// A host, or all of them.
#[derive(Debug, Args)]
pub(crate) struct Which {
    /// The host (as in the target URLs).
    #[arg(required_unless_present = "all")]
    pub host: Option<String>,
    /// The whole pipeline.
    #[arg(long, conflicts_with = "host")]
    pub all: bool,
}

/// One host's line in `fanout hosts`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HostRow {
    /// The host, or `*` for the pipeline-wide state.
    pub host: String,
    /// The config's budget for the fleet, requests/s (`None`: unlimited).
    pub budget: Option<f64>,
    /// The rate the fleet may send now (`None`: unlimited).
    pub rate_now: Option<f64>,
    /// The slow-down factor now (1 = the whole budget).
    pub factor: f64,
    /// `closed`, `open` or `half-open`.
    pub circuit: &'static str,
    /// Paused by an operator.
    pub operator_paused: bool,
    /// An operator's budget, if set.
    pub operator_rate: Option<f64>,
    /// Transient failures in a row.
    pub consecutive_failures: u32,
    /// Everything in one phrase.
    pub state: String,
}

/// Why an operator's command was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostsError {
    /// Bad input: unknown host, a rate over the ceiling.
    #[error("{0}")]
    BadInput(String),
    /// The store failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

fn row(config: &PipelineConfig, host: &str, state: &HostState) -> HostRow {
    let now = now_ms();
    let policy = &config.host_protection;
    let budget = if host == ALL_HOSTS {
        config.rate_limit.map(|l| l.per_second)
    } else {
        config.host_budget(host)
    };
    let ceiling = budget.or(state.operator_rate);
    let operator_max = config.host_operator_max(host).unwrap_or(f64::INFINITY);
    HostRow {
        host: host.to_owned(),
        budget,
        rate_now: ceiling.map(|c| state.rate(c, operator_max, now, policy)),
        factor: state.factor_at(now, policy),
        circuit: match state.circuit {
            Circuit::Closed => "closed",
            Circuit::Open { .. } => "open",
            Circuit::HalfOpen { .. } => "half-open",
        },
        operator_paused: state.operator_paused,
        operator_rate: state.operator_rate,
        consecutive_failures: state.consecutive_failures,
        state: state.describe(now),
    }
}

/// Every host the config allows, plus the pipeline-wide `*`, with its shared state.
pub(crate) async fn list(
    config: &PipelineConfig,
    fleet: &dyn FleetStore,
) -> Result<Vec<HostRow>, BackendError> {
    let hosts: Vec<String> = std::iter::once(ALL_HOSTS.to_owned())
        .chain(config.allowed_hosts())
        .collect();
    let states: std::collections::HashMap<String, HostState> =
        fleet.host_states(&hosts).await?.into_iter().collect();
    Ok(hosts
        .iter()
        .map(|h| row(config, h, &states.get(h).cloned().unwrap_or_default()))
        .collect())
}

/// Applies an operator's `action`; returns the host's row after it.
pub(crate) async fn act(
    config: &PipelineConfig,
    fleet: &dyn FleetStore,
    action: &HostAction,
) -> Result<HostRow, HostsError> {
    let known = config.allowed_hosts();
    let pick = |which: &Which| -> Result<String, HostsError> {
        match (&which.host, which.all) {
            (_, true) => Ok(ALL_HOSTS.to_owned()),
            (Some(host), false) if known.contains(&host.to_ascii_lowercase()) => {
                Ok(host.to_ascii_lowercase())
            }
            (Some(host), false) => Err(HostsError::BadInput(format!(
                "unknown host {host:?}: the config's hosts are {}",
                known.iter().cloned().collect::<Vec<_>>().join(", ")
            ))),
            (None, false) => Err(HostsError::BadInput("name a host or give --all".into())),
        }
    };
    let (host, event) = match action {
        HostAction::Pause(which) => (pick(which)?, HostEvent::Paused),
        HostAction::Resume(which) => (pick(which)?, HostEvent::Resumed),
        HostAction::Set { host, rate, reset } => {
            let host = pick(&Which {
                host: Some(host.clone()),
                all: false,
            })?;
            let rate = if *reset { None } else { *rate };
            if let Some(rate) = rate {
                if let Err(e) = check_rate(rate) {
                    return Err(HostsError::BadInput(format!("--rate {e}")));
                }
                if let Some(max) = config.host_operator_max(&host).filter(|max| rate > *max) {
                    return Err(HostsError::BadInput(format!(
                        "--rate {rate} is above what the config allows for {host} ({max}/s; raise hosts.{host}.max_per_second to allow more)"
                    )));
                }
            }
            (host, HostEvent::RateSet(rate))
        }
    };
    let (state, _) = fleet
        .apply(&host, &event, now_ms(), &config.host_protection)
        .await?;
    Ok(row(config, &host, &state))
}

/// The rows as a plain-text table.
pub(crate) fn table(rows: &[HostRow]) -> String {
    let rate = |r: Option<f64>| r.map_or("unlimited".to_owned(), |r| format!("{r:.2}/s"));
    let mut out = format!(
        "{:<32} {:>12} {:>12} {:>7} {:>9} {:>5}  {}\n",
        "host", "budget", "rate now", "factor", "circuit", "fails", "state"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<32} {:>12} {:>12} {:>7.2} {:>9} {:>5}  {}",
            r.host,
            rate(r.budget),
            rate(r.rate_now),
            r.factor,
            r.circuit,
            r.consecutive_failures,
            r.state
        );
    }
    out
}
