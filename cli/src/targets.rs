//! `fanout targets show`: what the next tick would call, from the config alone (sources are read
//! here as the producer reads them, `s3://` ones with the standard AWS configuration; nothing
//! is published).

use std::fmt::Write as _;
use std::process::ExitCode;

use std::sync::Arc;

use fanout_producer::{ListReaders, Preview};
use fanout_shared::aws::{load_sdk_config, S3Objects};
use fanout_shared::sources::Location;
use fanout_shared::template::TickValues;
use fanout_shared::{ObjectStore, PipelineConfig};
use serde::Serialize;

use crate::failure::Failure;

/// How many rendered calls per source the table shows without `--all`.
const SAMPLE: usize = 5;

/// One rendered call, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Call<'a> {
    id: &'a str,
    method: &'a str,
    url: &'a str,
}

/// S3, from the standard SDK configuration, when a source of `config` is an `s3://` one: the
/// only remote reads that need credentials.
async fn objects_for(config: &PipelineConfig) -> Option<Arc<dyn ObjectStore>> {
    let any_s3 = config
        .sources
        .iter()
        .any(|s| matches!(s.location(&config.base_dir), Ok(Location::S3 { .. })));
    if !any_s3 {
        return None;
    }
    let sdk = load_sdk_config().await;
    Some(Arc::new(S3Objects::new(aws_sdk_s3::Client::new(&sdk))))
}

/// Reads the sources (or only `source`) with the tick values a tick at this moment would have
/// before any run succeeded, and prints where each reads from, its rows and a sample (`all`:
/// every call). A bad row or an unreadable source is bad input, named as the tick names it.
pub(crate) async fn show(
    config: &PipelineConfig,
    source: Option<&str>,
    json: bool,
    all: bool,
) -> Result<ExitCode, Failure> {
    if let Some(name) = source {
        if !config.sources.iter().any(|s| s.name == name) {
            return Err(Failure::BadInput(format!(
                "no source {name:?} in the config"
            )));
        }
    }
    let now = chrono::Utc::now();
    let tick = TickValues {
        scheduled_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        run_id: "preview".to_owned(),
        last_success_at: config.tick.first_last_success_at.clone(),
    };
    let limit = (!all).then_some(SAMPLE);
    let readers = ListReaders::new(objects_for(config).await);
    let previews = fanout_producer::preview(config, &readers, &tick, source, limit)
        .await
        .map_err(|e| Failure::BadInput(e.to_string()))?;
    if json {
        let calls: Vec<Call<'_>> = previews
            .iter()
            .flat_map(|p| &p.calls)
            .map(|t| Call {
                id: &t.id,
                method: &t.method,
                url: &t.url,
            })
            .collect();
        println!("{}", serde_json::to_string(&calls).unwrap_or_default());
    } else {
        print!("{}", table(&previews, all));
    }
    Ok(ExitCode::SUCCESS)
}

fn table(previews: &[Preview], all: bool) -> String {
    let mut out = String::new();
    for p in previews {
        let _ = writeln!(
            out,
            "source {}: {} rows from {} (digest {})",
            p.read.name, p.read.rows, p.read.location, p.read.digest
        );
        for call in &p.calls {
            let _ = writeln!(out, "  {:<7} {}  ({})", call.method, call.url, call.id);
        }
        let more = p.read.rows.saturating_sub(p.calls.len() as u64);
        if more > 0 && !all {
            let _ = writeln!(out, "  … and {more} more (--all shows every call)");
        }
    }
    out
}
