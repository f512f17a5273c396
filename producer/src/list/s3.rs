//! The parts of an `s3://` source: one object, or every object under a prefix in key order,
//! each streamed from S3 through the synchronous row readers.

use std::sync::Arc;

use fanout_shared::rows::{is_gzip, RowReader};
use fanout_shared::sources::Source;
use fanout_shared::{ObjectStore, ObjectVersion};
use tokio::runtime::Handle;
use tokio_util::io::SyncIoBridge;

use super::parts::{Part, Parts, SourceError};

/// The parts of `s3://bucket/key`: the versions in `pinned` (a re-run of a tick reads what the
/// run first read), else the objects there now. Listing happens here, so a missing object or an
/// unreadable bucket fails before any row is read; each object is opened when its turn comes.
pub(super) fn parts(
    objects: Arc<dyn ObjectStore>,
    runtime: Handle,
    source: &Source,
    bucket: &str,
    key: &str,
    prefix: bool,
    pinned: Option<&Vec<ObjectVersion>>,
) -> Result<Parts, SourceError> {
    let versions = match pinned {
        Some(versions) => versions.clone(),
        None => runtime.block_on(objects.list(bucket, key, prefix))?,
    };
    let format = source.format;
    let bucket = bucket.to_owned();
    Ok(Box::new(versions.into_iter().map(move |version| {
        let format = fanout_shared::rows::Format::resolve(format, &version.key)?;
        let body = runtime.block_on(objects.get(&bucket, &version))?;
        let gzip = is_gzip(&version.key, body.content_encoding.as_deref());
        let reader = SyncIoBridge::new_with_handle(body.reader, runtime.clone());
        Ok(Part {
            label: prefix.then(|| version.key.clone()),
            version: Some(version),
            rows: Box::new(RowReader::new(Box::new(reader), format, gzip)),
        })
    })))
}
