//! Where a source's rows come from: each source is one or more *parts* (an inline list, a file,
//! each S3 object under a prefix), streamed one after another.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;

use fanout_shared::rows::{is_gzip, ReadError, Row, RowReader};
use fanout_shared::sources::{ListsHome, Location, Source};
use fanout_shared::{ObjectStore, ObjectVersion, PipelineConfig};

/// A stream of rows.
pub(super) type Rows = Box<dyn Iterator<Item = Result<Row, ReadError>> + Send>;

/// One part of a source.
pub(super) struct Part {
    /// How a bad row's place names it (an object's key under a prefix), when the source has
    /// several parts.
    pub(super) label: Option<String>,
    /// The version read, for an S3 object.
    pub(super) version: Option<ObjectVersion>,
    /// Its rows.
    pub(super) rows: Rows,
}

/// A source's parts, opened one at a time as the previous one is read to its end.
pub(super) type Parts = Box<dyn Iterator<Item = Result<Part, String>> + Send>;

/// What a tick reads its lists with. Inline rows and local files need nothing; `s3://` sources
/// need [`ListReaders::objects`].
#[derive(Debug, Clone, Default)]
pub struct ListReaders {
    /// The bucket `s3://` sources are read from (the AWS backend).
    pub objects: Option<Arc<dyn ObjectStore>>,
    /// Per source, the versions a run read the first time: a re-run of the tick reads exactly
    /// these.
    pub pinned: BTreeMap<String, Vec<ObjectVersion>>,
    /// The pipeline's list home, where `lists://` sources are (none: `lists/` beside the
    /// config file).
    pub lists: Option<ListsHome>,
    /// The runtime that remote reads are driven on (the readers are synchronous and run off
    /// its workers).
    pub runtime: Option<tokio::runtime::Handle>,
}

impl ListReaders {
    /// Readers for `s3://` sources from `objects`, driven on the current runtime.
    pub fn new(objects: Option<Arc<dyn ObjectStore>>) -> Self {
        Self {
            objects,
            pinned: BTreeMap::new(),
            lists: None,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// The parts of `source` at `location`, or why it cannot be read at all; `config` holds
    /// what guards remote reads (the allow-list, `allow_private_networks`).
    pub(super) fn parts(
        &self,
        config: &PipelineConfig,
        source: &Source,
        location: Location,
    ) -> Result<Parts, String> {
        match location {
            Location::Inline => {
                let rows: Vec<_> = source.rows.clone().unwrap_or_default();
                let rows: Rows = Box::new(rows.into_iter().enumerate().map(|(i, values)| {
                    Ok(Row {
                        line: i as u64 + 1,
                        values,
                    })
                }));
                Ok(one(rows))
            }
            Location::File(path) => {
                let name = path.to_string_lossy().into_owned();
                let format = source.format_of(&name)?;
                let file = File::open(&path).map_err(|e| e.to_string())?;
                Ok(one(Box::new(RowReader::new(
                    Box::new(file),
                    format,
                    is_gzip(&name, None),
                ))))
            }
            Location::Lists(_) => Err("a lists:// location is resolved before it is read".into()),
            Location::S3 { bucket, key } => {
                let prefix = Location::S3 {
                    bucket: bucket.clone(),
                    key: key.clone(),
                }
                .is_prefix();
                let (Some(objects), Some(runtime)) = (&self.objects, &self.runtime) else {
                    return Err("s3:// sources are read with the AWS backend only".into());
                };
                super::s3::parts(
                    objects.clone(),
                    runtime.clone(),
                    source,
                    &bucket,
                    &key,
                    prefix,
                    self.pinned.get(&source.name),
                )
            }
            Location::Http(url) => super::http::parts(self.runtime.clone(), config, source, url),
        }
    }
}

/// A source of one unnamed part.
fn one(rows: Rows) -> Parts {
    Box::new(std::iter::once(Ok(Part {
        label: None,
        version: None,
        rows,
    })))
}
