//! Where `s3://` row lists are kept: the small trait the producer reads them through and
//! `fanout targets push` writes them through, with S3 behind it (`aws::S3Objects`).
//!
//! Every object is named with its version (the bucket's version ID, else its ETag), so a run
//! can record what it read and a re-run of the same tick can read exactly that again, or learn
//! that it is gone.

use std::fmt;
use std::path::Path;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;

use crate::BackendError;

/// One version of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectVersion {
    /// The object's key.
    pub key: String,
    /// Its version ID, in a versioned bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// Its ETag (a digest of its bytes for a plain upload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

impl fmt::Display for ObjectVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)?;
        match (&self.version_id, &self.etag) {
            (Some(version), _) => write!(f, " (version {version})"),
            (None, Some(etag)) => write!(f, " (ETag {etag})"),
            (None, None) => Ok(()),
        }
    }
}

/// An object's bytes, streamed, and how they are encoded.
pub struct ObjectBody {
    /// The bytes as stored.
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    /// Its `Content-Encoding` (`gzip` for a compressed list without a `.gz` name).
    pub content_encoding: Option<String>,
}

impl fmt::Debug for ObjectBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBody")
            .field("content_encoding", &self.content_encoding)
            .finish_non_exhaustive()
    }
}

/// A bucket of row lists.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// The current versions of the object `key`, or of every object under the prefix `key` when
    /// `prefix` is set, in key order. An object that does not exist is an error (a list that is
    /// not there is never read as empty); an empty prefix is an empty list.
    async fn list(
        &self,
        bucket: &str,
        key: &str,
        prefix: bool,
    ) -> Result<Vec<ObjectVersion>, BackendError>;

    /// The bytes of exactly `object`'s version: by version ID, else only if its ETag still
    /// matches. A version that is gone or changed is an error saying so.
    async fn get(&self, bucket: &str, object: &ObjectVersion) -> Result<ObjectBody, BackendError>;

    /// Uploads the file at `path` as `key` and answers the version written.
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        content_encoding: Option<&str>,
    ) -> Result<ObjectVersion, BackendError>;
}
