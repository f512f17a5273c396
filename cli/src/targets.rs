//! `fanout targets show`: what the next tick would call (sources are read here as the producer
//! reads them; nothing is published). `fanout targets push`: a new list for a source, checked
//! row by row as a tick would read it, then put where the source reads from.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use std::sync::Arc;

use fanout_producer::{ListReaders, Preview};
use fanout_shared::aws::{load_sdk_config, S3Objects};
use fanout_shared::rows::Format;
use fanout_shared::runs::SourceRead;
use fanout_shared::sources::{Location, Source};
use fanout_shared::{ObjectStore, ObjectVersion, PipelineConfig, TickValues};
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
pub(crate) async fn objects_for(config: &PipelineConfig) -> Option<Arc<dyn ObjectStore>> {
    let any_s3 = config
        .sources
        .iter()
        .any(|s| matches!(s.location(&config.base_dir), Ok(Location::S3 { .. })));
    if !any_s3 {
        return None;
    }
    let sdk = load_sdk_config().await;
    Some(Arc::new(S3Objects::from_sdk(&sdk)))
}

/// Reads the sources (or only `source`) with the tick values a tick at this moment would have
/// before any run succeeded, and prints where each reads from, its rows and a sample (`all`:
/// every call). A bad row or an unreadable source is bad input, named as the tick names it.
pub(crate) async fn show(
    config: &PipelineConfig,
    readers: &ListReaders,
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
    let limit = (!all).then_some(SAMPLE);
    let previews = fanout_producer::preview(config, readers, &preview_tick(config), source, limit)
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

/// The tick values a tick at this moment would have before any run succeeded.
fn preview_tick(config: &PipelineConfig) -> TickValues {
    TickValues {
        scheduled_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        run_id: "preview".to_owned(),
        last_success_at: config.tick.first_last_success_at.clone(),
    }
}

/// What `targets push` put where.
#[derive(Debug, Serialize)]
struct Pushed {
    source: String,
    location: String,
    rows: u64,
    digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<ObjectVersion>,
}

/// Checks `file` as the list of `source` (every row rendered through its template, as a tick
/// reads it: bad rows and duplicate IDs refuse the push, nothing is written), then puts it
/// where the source reads from: an S3 object (a prefix gets the file's name under it) or a
/// local file (replaced whole, so a tick never reads half a list).
pub(crate) async fn push(
    config: &PipelineConfig,
    readers: &ListReaders,
    file: &Path,
    source: Option<&str>,
    json: bool,
) -> Result<ExitCode, Failure> {
    let source = pushable_source(config, source)?;
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Failure::BadInput(format!("{}: not a file", file.display())))?;
    let location = source
        .location(&config.base_dir)
        .map_err(|e| Failure::BadInput(format!("source {:?}: {e}", source.name)))?
        .in_home(readers.lists.as_ref(), &config.base_dir);
    let destination = match &location {
        Location::S3 { bucket, key } if location.is_prefix() => Location::S3 {
            bucket: bucket.clone(),
            key: format!("{key}{file_name}"),
        },
        other => other.clone(),
    };
    let dest_name = destination.to_string();
    let read = check_rows(config, file, source, &dest_name)
        .await
        .map_err(|e| match e {
            Failure::BadInput(why) => Failure::BadInput(format!("not pushed: {why}")),
            other => other,
        })?;
    let version = match &destination {
        Location::S3 { bucket, key } => {
            let objects = readers.objects.as_ref().ok_or_else(|| {
                Failure::BadInput(format!(
                    "source {:?} reads {dest_name}: push it with --backend aws (and --stack NAME)",
                    source.name
                ))
            })?;
            Some(objects.put(bucket, key, file, None).await?)
        }
        Location::File(path) => {
            replace_file(file, path)
                .map_err(|e| Failure::BadInput(format!("{}: {e}", path.display())))?;
            None
        }
        Location::Inline | Location::Http(_) | Location::Lists(_) => {
            return Err(Failure::BadInput(format!(
                "source {:?} reads {dest_name}: only file and S3 lists can be pushed",
                source.name
            )))
        }
    };
    let pushed = Pushed {
        source: source.name.clone(),
        location: dest_name,
        rows: read.rows,
        digest: read.digest,
        version,
    };
    if json {
        println!("{}", serde_json::to_string(&pushed).unwrap_or_default());
    } else {
        let version = match &pushed.version {
            Some(ObjectVersion {
                version_id: Some(id),
                ..
            }) => format!(" (version {id})"),
            Some(ObjectVersion {
                etag: Some(etag), ..
            }) => format!(" (ETag {etag})"),
            _ => String::new(),
        };
        println!(
            "pushed {} rows (digest {}) for source {} to {}{version}: the next tick calls them",
            pushed.rows, pushed.digest, pushed.source, pushed.location
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The source named `name`, or the config's one source that reads a list (a file or S3).
pub(crate) fn pushable_source<'a>(
    config: &'a PipelineConfig,
    name: Option<&str>,
) -> Result<&'a Source, Failure> {
    if let Some(name) = name {
        return config
            .sources
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Failure::BadInput(format!("no source {name:?} in the config")));
    }
    let lists: Vec<&Source> = config
        .sources
        .iter()
        .filter(|s| s.rows.is_none() && s.http.is_none())
        .collect();
    match lists.as_slice() {
        [one] => Ok(one),
        [] => Err(Failure::BadInput(
            "the config has no source that reads a list".into(),
        )),
        many => Err(Failure::BadInput(format!(
            "the config has {} sources that read a list ({}): name one with --source",
            many.len(),
            many.iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Reads every row of `file` as the list of `source` whose rows will be named `name` (its
/// format from the source, else from `name`), rendering each through the source's template as
/// a tick would: what it gave, or bad input naming every bad row (the first 20) by line.
pub(crate) async fn check_rows(
    config: &PipelineConfig,
    file: &Path,
    source: &Source,
    name: &str,
) -> Result<SourceRead, Failure> {
    let format = source
        .format
        .map_or_else(|| Format::resolve(None, name), Ok)
        .map_err(|e| Failure::BadInput(format!("source {:?}: {e}", source.name)))?;
    let mut check = config.clone();
    check.sources = vec![Source {
        location: Some(
            std::path::absolute(file)
                .unwrap_or_else(|_| file.to_owned())
                .display()
                .to_string(),
        ),
        rows: None,
        format: Some(format),
        http: None,
        ..source.clone()
    }];
    let checked = fanout_producer::preview(
        &check,
        &ListReaders::default(),
        &preview_tick(config),
        None,
        Some(0),
    )
    .await
    .map_err(|e| Failure::BadInput(format!("{}: {e}", file.display())))?;
    checked
        .into_iter()
        .next()
        .map(|p| p.read)
        .ok_or_else(|| Failure::BadInput(format!("{}: nothing read", file.display())))
}

/// Copies `from` over `to` through a temporary file beside it and a rename.
fn replace_file(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = to.with_extension("partial");
    std::fs::copy(from, &partial)?;
    std::fs::rename(&partial, to)
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
