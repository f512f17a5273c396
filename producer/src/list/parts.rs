//! Where a source's rows come from: each source is one or more *parts* (an inline list, a file,
//! each S3 object under a prefix), streamed one after another.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;

use fanout_shared::guarded_http::{root_cause, EnvHeaderError};
use fanout_shared::rows::{is_gzip, FormatError, ReadError, Row, RowReader};
use fanout_shared::sources::{ListsHome, Location, Source};
use fanout_shared::{BackendError, ObjectStore, ObjectVersion, PipelineConfig};

use super::http::PageError;

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
pub(super) type Parts = Box<dyn Iterator<Item = Result<Part, SourceError>> + Send>;

/// Why a source cannot be read, or one of its parts: the tick fails naming the source and its
/// location ([`super::ListError::Unreadable`]), before anything is published.
#[derive(Debug, thiserror::Error)]
pub(super) enum SourceError {
    /// A file's, object's or page's name does not tell its rows' format, and none is set.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A local file cannot be opened.
    #[error(transparent)]
    File(#[from] std::io::Error),
    /// A `lists://` location reached the readers: callers make it concrete first
    /// ([`Location::in_home`]).
    #[error("a lists:// location is resolved before it is read")]
    Unresolved,
    /// An `s3://` source without a bucket to read from (the embedded backend).
    #[error("s3:// sources are read with the AWS backend only")]
    NoObjectStore,
    /// Listing or getting an S3 object failed.
    #[error(transparent)]
    Object(#[from] BackendError),
    /// An HTTP list endpoint without a runtime to drive its requests.
    #[error("HTTP list endpoints are read on an async runtime, and there is none")]
    NoRuntime,
    /// An HTTP list's `http.headers` cannot be built (an unset `${env:…}` variable, an invalid
    /// value).
    #[error(transparent)]
    Headers(#[from] EnvHeaderError),
    /// The HTTP client cannot be built.
    #[error("cannot build the HTTP client: {}", root_cause(.0))]
    Client(reqwest::Error),
    /// A page of an HTTP list could not be read (boxed: it is by far the largest variant).
    #[error(transparent)]
    Page(Box<PageError>),
}

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
    ) -> Result<Parts, SourceError> {
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
                let file = File::open(&path)?;
                Ok(one(Box::new(RowReader::new(
                    Box::new(file),
                    format,
                    is_gzip(&name, None),
                ))))
            }
            Location::Lists(_) => Err(SourceError::Unresolved),
            Location::S3 { bucket, key } => {
                let prefix = Location::S3 {
                    bucket: bucket.clone(),
                    key: key.clone(),
                }
                .is_prefix();
                let (Some(objects), Some(runtime)) = (&self.objects, &self.runtime) else {
                    return Err(SourceError::NoObjectStore);
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
