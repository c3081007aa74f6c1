//! The production blob store: S3 or any S3-compatible store (`S3_BASE_ENDPOINT`, path-style).
//!
//! Uploads stream from the staging file: one PUT up to [`MULTIPART_THRESHOLD`], multipart
//! above it, reading each part straight from disk, so memory stays flat whatever the size.
//! Devices download with presigned GET URLs (buckets block public ACLs by default), or from a
//! public base URL when one is configured, as the seed did.

use std::path::Path;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;

use super::{BlobBytes, BlobInfo, BlobStore, StoreError};
use crate::domain::manifest::FILE_OBJECT_PREFIX;

/// Files larger than this go up in parts.
const MULTIPART_THRESHOLD: u64 = 32 << 20;
/// Size of each part (S3 allows 5 MiB to 5 GiB, at most 10,000 parts).
const PART_SIZE: u64 = 16 << 20;
/// Where this server's objects live in the bucket: bundle zips and file objects. The orphan
/// sweep lists only these prefixes, so objects of others (imports, the seed) are never judged.
const OWNED_PREFIXES: [&str; 2] = ["bundles/", FILE_OBJECT_PREFIX];

/// How devices get a bundle's URL.
#[derive(Debug, Clone)]
pub enum DownloadUrls {
    /// Presigned GET URLs valid this long.
    Presigned(Duration),
    /// `<base>/<key>`: a public bucket, or a CDN in front of it.
    Public(String),
}

#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub download_urls: DownloadUrls,
}

pub struct S3BlobStore {
    client: Client,
    bucket: String,
    download_urls: DownloadUrls,
}

fn describe<E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static>(
    what: &str,
    error: SdkError<E>,
) -> StoreError {
    let transient = match &error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => true,
        SdkError::ServiceError(e) => e.raw().status().is_server_error(),
        _ => false,
    };
    let context = format!("S3 {what}");
    // DisplayErrorContext carries the SDK's whole chain (service code, message, I/O cause).
    let source = DisplayErrorContext(&error).to_string();
    if transient {
        StoreError::unavailable(context, source)
    } else {
        StoreError::internal(context, source)
    }
}

impl S3BlobStore {
    /// Builds the client from the AWS SDK's usual credential and region chain, then checks
    /// that the bucket answers, so wrong settings stop start-up with a clear message.
    pub async fn connect(settings: S3Settings) -> Result<S3BlobStore, StoreError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            // S3-compatible stores often ignore the region, but signing needs one.
            config = config.region(aws_sdk_s3::config::Region::new("us-east-1"));
        }
        if settings.endpoint.is_some() {
            // S3-compatible stores address buckets by path, and many (Garage, older MinIO)
            // reject the SDK's default streamed trailing checksums.
            config = config
                .force_path_style(true)
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        let store = S3BlobStore {
            client: Client::from_conf(config.build()),
            bucket: settings.bucket,
            download_urls: settings.download_urls,
        };
        let endpoint = settings.endpoint.as_deref().unwrap_or("AWS S3");
        store.client.head_bucket().bucket(&store.bucket).send().await.map_err(|e| {
            let status = e.raw_response().map(|r| r.status().as_u16());
            let hint = match status {
                Some(403) => "access denied: check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the bucket policy",
                Some(404) => "the bucket does not exist",
                Some(301 | 400) => "wrong region (AWS_REGION) for this bucket",
                _ => "the endpoint did not answer as S3",
            };
            StoreError::unavailable(
                format!(
                    "cannot use S3 bucket {:?} at {endpoint} (S3_BUCKET / S3_BASE_ENDPOINT): {hint}",
                    store.bucket
                ),
                DisplayErrorContext(&e).to_string(),
            )
        })?;
        Ok(store)
    }

    async fn put_in_parts(&self, key: &str, source: &Path, size: u64) -> Result<(), StoreError> {
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/zip")
            .send()
            .await
            .map_err(|e| describe("create multipart upload", e))?;
        let upload_id = upload
            .upload_id()
            .ok_or_else(|| StoreError::invalid("S3 returned no multipart upload id"))?
            .to_string();
        let result = self.upload_parts(key, source, size, &upload_id).await;
        if result.is_err() {
            // Parts of an aborted upload are freed; a failure here only costs storage until
            // the bucket's lifecycle rule (if any) removes them.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        source: &Path,
        size: u64,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        let mut parts = Vec::new();
        let mut offset = 0;
        let mut number = 1;
        while offset < size {
            let length = PART_SIZE.min(size - offset);
            let body = ByteStream::read_from()
                .path(source)
                .offset(offset)
                .length(Length::Exact(length))
                .build()
                .await
                .map_err(|e| StoreError::internal("cannot read the staged upload", e))?;
            let part = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(body)
                .send()
                .await
                .map_err(|e| describe("upload part", e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .build(),
            );
            offset += length;
            number += 1;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| describe("complete multipart upload", e))?;
        Ok(())
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put_file(&self, key: &str, source: &Path) -> Result<(), StoreError> {
        let size = tokio::fs::metadata(source)
            .await
            .map_err(|e| StoreError::internal("cannot read the staged upload", e))?
            .len();
        if size > MULTIPART_THRESHOLD {
            return self.put_in_parts(key, source, size).await;
        }
        let body = ByteStream::from_path(source)
            .await
            .map_err(|e| StoreError::internal("cannot read the staged upload", e))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/zip")
            .body(body)
            .send()
            .await
            .map_err(|e| describe("put object", e))?;
        Ok(())
    }

    async fn read(&self, key: &str) -> Result<Option<BlobBytes>, StoreError> {
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => return Ok(None),
            Err(e) => return Err(describe("get object", e)),
        };
        let key = key.to_string();
        let chunks = futures_util::stream::unfold(Some(object.body), move |body| {
            let key = key.clone();
            async move {
                let mut body = body?;
                match body.next().await {
                    None => None,
                    Some(Ok(chunk)) => Some((Ok(chunk), Some(body))),
                    Some(Err(e)) => Some((
                        Err(StoreError::unavailable(format!("S3 read of {key}"), e)),
                        None,
                    )),
                }
            }
        });
        Ok(Some(Box::pin(chunks)))
    }

    async fn object_size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(Some(head.content_length().unwrap_or(0).max(0) as u64)),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(None),
            Err(e) => Err(describe("head object", e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| describe("delete object", e))?;
        Ok(())
    }

    async fn abort_stale_uploads(&self, min_age: Duration) -> Result<usize, StoreError> {
        let now = SystemTime::now();
        let mut aborted = 0;
        for prefix in OWNED_PREFIXES {
            let listed = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .send()
                .await
                .map_err(|e| describe("list multipart uploads", e))?;
            for upload in listed.uploads() {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                let started = upload
                    .initiated()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(now);
                if now.duration_since(started).unwrap_or_default() < min_age {
                    continue;
                }
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(|e| describe("abort multipart upload", e))?;
                tracing::info!(key, "aborted an interrupted multipart upload");
                aborted += 1;
            }
        }
        Ok(aborted)
    }

    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        let mut found = Vec::new();
        for prefix in OWNED_PREFIXES {
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| describe("list objects", e))?;
                for object in page.contents() {
                    let Some(key) = object.key() else { continue };
                    let modified = object
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or_else(SystemTime::now);
                    found.push(BlobInfo {
                        key: key.to_string(),
                        modified,
                    });
                }
            }
        }
        Ok(found)
    }

    async fn download_url(&self, key: &str) -> Result<String, StoreError> {
        match &self.download_urls {
            DownloadUrls::Public(base) => Ok(format!("{}/{key}", base.trim_end_matches('/'))),
            DownloadUrls::Presigned(lifetime) => {
                let config = PresigningConfig::expires_in(*lifetime)
                    .map_err(|e| StoreError::internal("presigning", e))?;
                let request = self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .presigned(config)
                    .await
                    .map_err(|e| describe("presign", e))?;
                Ok(request.uri().to_string())
            }
        }
    }
}
