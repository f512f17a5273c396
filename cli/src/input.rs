//! The checks every command applies to its input before anything is opened: a bad flag or
//! config is bad input (exit 2), reported before any queue, table or stack is touched.

use std::path::Path;
use std::time::Duration;

use fanout_shared::embedded::Duplicates;
use fanout_shared::PipelineConfig;

use crate::failure::Failure;

/// The pipeline config at `path`; one that cannot be read or is invalid is bad input.
pub(crate) fn load_config(path: &Path) -> Result<PipelineConfig, Failure> {
    PipelineConfig::load(path).map_err(|e| Failure::BadInput(e.to_string()))
}

/// The flag `--NAME` as a duration: a positive, finite number of seconds.
pub(crate) fn seconds(name: &str, value: f64) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Failure::BadInput(format!(
                "--{name} must be a positive number of seconds, got {value}"
            ))
        })
}

/// `--duplicate-rate` as the embedded topic's duplicates: a fraction of messages delivered twice.
pub(crate) fn duplicates(rate: f64) -> Result<Duplicates, Failure> {
    if !(0.0..=1.0).contains(&rate) {
        return Err(Failure::BadInput(format!(
            "--duplicate-rate must be between 0 and 1, got {rate}"
        )));
    }
    Ok(Duplicates {
        twice: rate,
        ..Duplicates::default()
    })
}

/// `local/<config name>@<current hour>`: re-running within the hour resumes the same tick.
pub(crate) fn default_run_id(config: &Path) -> String {
    let stem = config
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("config");
    format!(
        "local/{stem}@{}",
        chrono::Utc::now().format("%Y-%m-%dT%H:00:00Z")
    )
}

/// A run ID the producer accepts, or bad input (exit 2) before anything is opened.
pub(crate) fn checked_run_id(run_id: String) -> Result<String, Failure> {
    fanout_shared::check_run_id(&run_id)
        .map_err(|e| Failure::BadInput(format!("--run-id: {e}")))?;
    Ok(run_id)
}
