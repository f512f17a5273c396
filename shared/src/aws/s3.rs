//! [`ObjectStore`] over S3: the lists bucket of `s3://` sources.

use std::path::Path;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;

use super::{sdk_error, service_code};
use crate::objects::{ObjectBody, ObjectStore, ObjectVersion};
use crate::BackendError;

/// An S3 client from the standard SDK configuration. With an endpoint URL (an emulator, a
/// gateway) it addresses buckets by path, which every S3-compatible endpoint serves; on AWS
/// itself the SDK's default (virtual-hosted) addressing stays.
pub fn s3_client(sdk: &aws_config::SdkConfig) -> Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    Client::from_conf(config)
}

/// S3 as the home of row lists.
#[derive(Debug, Clone)]
pub struct S3Objects {
    client: Client,
}

impl S3Objects {
    /// Over a client from [`s3_client`].
    pub fn from_sdk(sdk: &aws_config::SdkConfig) -> Self {
        Self {
            client: s3_client(sdk),
        }
    }

    /// The current version of one object, or an error naming it when it is not there.
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectVersion, BackendError> {
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(ObjectVersion {
                key: key.to_owned(),
                version_id: head.version_id().map(str::to_owned),
                etag: head.e_tag().map(str::to_owned),
            }),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                Err(BackendError::permanent(
                    "s3:HeadObject",
                    format!("s3://{bucket}/{key} does not exist"),
                ))
            }
            Err(e) => Err(sdk_error("s3:HeadObject", e)),
        }
    }
}

#[async_trait]
impl ObjectStore for S3Objects {
    async fn list(
        &self,
        bucket: &str,
        key: &str,
        prefix: bool,
    ) -> Result<Vec<ObjectVersion>, BackendError> {
        if !prefix {
            return Ok(vec![self.head(bucket, key).await?]);
        }
        // ListObjectsV2 answers keys in UTF-8 binary order, a page at a time. It has no version
        // IDs: each object's current version is read with HeadObject (a prefix holds few
        // objects; rows are what is many).
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(key)
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error("s3:ListObjectsV2", e))?;
            for object in page.contents() {
                match object.key() {
                    // "Folder" markers some consoles create hold no rows.
                    Some(k) if !k.ends_with('/') => objects.push(self.head(bucket, k).await?),
                    _ => {}
                }
            }
        }
        Ok(objects)
    }

    async fn get(&self, bucket: &str, object: &ObjectVersion) -> Result<ObjectBody, BackendError> {
        let mut request = self.client.get_object().bucket(bucket).key(&object.key);
        request = match (&object.version_id, &object.etag) {
            (Some(version), _) => request.version_id(version),
            (None, Some(etag)) => request.if_match(etag),
            (None, None) => request,
        };
        let output = request.send().await.map_err(|e| {
            let gone = matches!(
                service_code(&e),
                Some("NoSuchKey" | "NoSuchVersion" | "PreconditionFailed")
            ) || e
                .raw_response()
                .is_some_and(|r| matches!(r.status().as_u16(), 404 | 412));
            if gone {
                BackendError::permanent(
                    "s3:GetObject",
                    format!("s3://{bucket}/{object} is gone or has changed"),
                )
            } else {
                sdk_error("s3:GetObject", e)
            }
        })?;
        Ok(ObjectBody {
            content_encoding: output.content_encoding().map(str::to_owned),
            reader: Box::new(output.body.into_async_read()),
        })
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        content_encoding: Option<&str>,
    ) -> Result<ObjectVersion, BackendError> {
        let body = ByteStream::from_path(path).await.map_err(|e| {
            BackendError::permanent("s3:PutObject", format!("{}: {e}", path.display()))
        })?;
        let output = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .set_content_encoding(content_encoding.map(str::to_owned))
            .body(body)
            .send()
            .await
            .map_err(|e| sdk_error("s3:PutObject", e))?;
        Ok(ObjectVersion {
            key: key.to_owned(),
            version_id: output.version_id().map(str::to_owned),
            etag: output.e_tag().map(str::to_owned),
        })
    }
}
