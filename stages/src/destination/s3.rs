//! Amazon S3 and S3-compatible servers, with `aws-sdk-s3`.
//!
//! Small files go in one `PutObject`; so do files whose size Chorus announced, up to
//! `--single-request-max-mib`, streamed as they arrive with a trailing checksum. Larger
//! ones stream as a multipart upload whose parts are cut from the body in memory (never
//! on disk), several in flight at once, and the upload is aborted if anything fails, so
//! no object and no orphaned parts remain. Every part and every single PUT carries
//! `x-amz-checksum-sha256` (a header, or the streamed PUT's trailer), so S3 itself
//! rejects bytes corrupted on the way. Server-side encryption is asked for per
//! destination (`sse=AES256` for SSE-S3, `sse=aws:kms[&kms_key_id=..]` for SSE-KMS) on
//! every `PutObject` and `CreateMultipartUpload`. Only `s3:PutObject`,
//! `s3:AbortMultipartUpload` and `s3:ListMultipartUploadParts` (plus `kms:GenerateDataKey`
//! on the key for SSE-KMS) are needed to write. Open multipart uploads are noted in an
//! [`UploadJournal`] (the job store), so those of a killed worker are aborted by the
//! next attempt at the key or at the end of the job, without listing the bucket. The
//! key is noted before the upload is created ([`INTENT_PREFIX`]), so a worker killed
//! between S3 creating it and the journal noting its id leaves a note too; that one
//! upload is found by listing the key's uploads, which needs
//! `s3:ListBucketMultipartUploads` (optional: without it a lifecycle rule cleans up).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption,
};
use aws_smithy_types::byte_stream::ByteStream as SdkByteStream;
use base64::Engine;
use bytes::Bytes;
use pipeline::backoff::{GaveUp, Outcome, RetryPolicy};
use sha2::{Digest, Sha256};

use super::multipart::{
    MultipartStore, OpenUpload, Part, PartRequest, SizedBody, StreamedPut, put_file,
};
use super::url::{S3Encryption, S3Url};
use super::{ByteStream, Destination, DestinationError, Tuning, UploadJournal, Written, checked};
use crate::hash::DigestHandle;

/// The journal's note of a multipart upload being created, whose id S3 has not given
/// yet: `intent:` and a random token, in place of the upload id.
pub const INTENT_PREFIX: &str = "intent:";

pub struct S3Destination {
    client: Client,
    bucket: String,
    prefix: String,
    location: String,
    tuning: Tuning,
    sse: Option<S3Encryption>,
    journal: Option<Arc<dyn UploadJournal>>,
}

impl S3Destination {
    /// Builds the client. Credentials: the given ones (from the worker's memory), else
    /// the standard AWS chain (environment, profile, instance role). A console job
    /// (guarded `egress`) gets no chain: it must give keys, and a custom endpoint only
    /// on an origin the operator allowed (the AWS SDK's connections do not pass through
    /// portshift's address guard, so tenants cannot name arbitrary endpoints).
    pub async fn connect(
        url: &S3Url,
        credentials: Option<&pipeline::secrets::S3Credentials>,
        tuning: &Tuning,
        egress: &crate::http::Egress,
    ) -> Result<Self, DestinationError> {
        use secrecy::ExposeSecret;
        if egress.is_guarded() {
            let refused = |detail: &str| DestinationError::Refused {
                destination: format!("s3://{}/{}", url.bucket, url.prefix),
                detail: detail.into(),
            };
            if credentials.is_none() {
                return Err(refused(
                    "no access key was given: console jobs must bring their own keys (portshift's own AWS identity is not lent to them)",
                ));
            }
            if let Some(ep) = &url.endpoint {
                let allowed = url::Url::parse(ep).is_ok_and(|u| egress.allows_origin(&u));
                if !allowed {
                    return Err(refused(
                        "a custom S3 endpoint is not available to console jobs unless the operator allows its origin (--allow-origin)",
                    ));
                }
            }
        }
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &url.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(c) = credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.expose_secret().to_string(),
                c.session_token
                    .as_ref()
                    .map(|t| t.expose_secret().to_string()),
                None,
                "portshift-worker",
            ));
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            config = config.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(endpoint) = &url.endpoint {
            config = config.endpoint_url(endpoint).force_path_style(true);
        }
        let location = format!("s3://{}/{}", url.bucket, url.prefix);
        if tuning.part_size < 5 * 1024 * 1024 {
            return Err(DestinationError::Refused {
                destination: location,
                detail: "the part size must be at least 5 MiB (S3's minimum)".into(),
            });
        }
        Ok(Self {
            client: Client::from_conf(config.build()),
            bucket: url.bucket.clone(),
            prefix: url.prefix.clone(),
            location,
            tuning: *tuning,
            sse: url.sse.clone(),
            journal: None,
        })
    }

    /// Aborts the journal's open uploads (at `key` only, when given); returns how many.
    async fn abort_journaled(&self, key: Option<&str>) -> Result<usize, DestinationError> {
        let Some(journal) = &self.journal else {
            return Ok(0);
        };
        // One that fails (a denied listing, say) does not keep the others open.
        let (mut aborted, mut first_error) = (0, None);
        for (k, id) in journal.left_open(key).await {
            let done = if id.starts_with(INTENT_PREFIX) {
                self.abort_all_at(&k).await
            } else {
                abort_upload(&self.client, &self.bucket, &self.location, &k, &id)
                    .await
                    .map(|()| 1)
            };
            match done {
                Ok(n) => {
                    aborted += n;
                    journal.closed(&id).await;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(aborted),
        }
    }

    /// Aborts every multipart upload open at exactly `key` (for a journal note whose
    /// upload id was never written: the worker was killed while S3 created it). Keys
    /// are the job's own, so whatever is open there is a leftover of this export.
    async fn abort_all_at(&self, key: &str) -> Result<usize, DestinationError> {
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        let mut found = Vec::new();
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(key)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| self.classify("ListMultipartUploads", e))?;
            found.extend(
                page.uploads()
                    .iter()
                    .filter(|u| u.key() == Some(key))
                    .filter_map(|u| u.upload_id().map(str::to_string)),
            );
            if !page.is_truncated().unwrap_or(false) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        for id in &found {
            abort_upload(&self.client, &self.bucket, &self.location, key, id).await?;
        }
        Ok(found.len())
    }

    /// The `x-amz-server-side-encryption` value and KMS key id for every new object.
    fn encryption(&self) -> (Option<ServerSideEncryption>, Option<String>) {
        match &self.sse {
            None => (None, None),
            Some(S3Encryption::Aes256) => (Some(ServerSideEncryption::Aes256), None),
            Some(S3Encryption::Kms { key_id }) => {
                (Some(ServerSideEncryption::AwsKms), key_id.clone())
            }
        }
    }

    /// A `PutObject` of `key` with its content type and the destination's encryption.
    fn put_object(
        &self,
        key: &str,
        content_type: &str,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        let (sse, kms_key) = self.encryption();
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
    }

    fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        what: &str,
        err: SdkError<E>,
    ) -> DestinationError {
        classify(&self.location, what, err)
    }
}

/// Aborts one multipart upload, retrying: an abort that fails leaves parts billed.
/// An upload S3 no longer knows (completed, aborted, expired) counts as aborted.
async fn abort_upload(
    client: &Client,
    bucket: &str,
    location: &str,
    key: &str,
    upload_id: &str,
) -> Result<(), DestinationError> {
    let policy = RetryPolicy {
        tries: 3,
        base: Duration::from_millis(200),
        max: Duration::from_secs(2),
    };
    let aborted = policy
        .run(
            |_| async {
                match client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .send()
                    .await
                {
                    Ok(_) => Outcome::Done(()),
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_upload()) => {
                        Outcome::Done(())
                    }
                    Err(e) => Outcome::Retry {
                        error: e,
                        at_least: None,
                    },
                }
            },
            |attempt, e, _| {
                tracing::warn!(key, attempt, error = %aws_sdk_s3::error::DisplayErrorContext(e), "aborting a multipart upload failed; trying again");
            },
        )
        .await;
    aborted.map_err(|gave_up| match gave_up {
        GaveUp::Failed(e) | GaveUp::Exhausted { last: e, .. } => {
            classify(location, "AbortMultipartUpload", e)
        }
    })
}

#[async_trait]
impl MultipartStore for S3Destination {
    type Upload = S3Upload;

    fn error_location(&self) -> &str {
        &self.location
    }

    fn tuning(&self) -> Tuning {
        self.tuning
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn put_whole(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        sha256: Option<[u8; 32]>,
    ) -> Result<(), DestinationError> {
        let checksum = match sha256 {
            Some(digest) => base64::engine::general_purpose::STANDARD.encode(digest),
            None => b64_sha256(&body),
        };
        self.put_object(key, content_type)
            .checksum_sha256(checksum)
            .body(SdkByteStream::from(body))
            .customize()
            // The x-amz-checksum-sha256 above already makes S3 verify every byte; a
            // signed payload would hash the whole body once more for nothing.
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.classify("PutObject", e))?;
        Ok(())
    }

    /// `PutObject` of a body streamed as it arrives: the SDK sends it `aws-chunked` with
    /// the whole body's SHA-256 in a trailer (`x-amz-checksum-sha256`), which S3 checks
    /// before it stores the object, and keeps as the object's checksum: the same digest
    /// the manifest lists. The body is not kept for a retry; a failed request fails the
    /// file, which the stage retries from the source.
    async fn put_sized(&self, key: &str, body: SizedBody, content_type: &str) -> StreamedPut {
        let size = body.size();
        let source_failure = body.source_failure();
        let sent = self
            .put_object(key, content_type)
            .content_length(size as i64)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .body(SdkByteStream::from_body_1_x(body))
            .send()
            .await;
        StreamedPut::Done(sent.map(|_| ()).map_err(|e| match source_failure.take() {
            Some(source) => DestinationError::Source(source),
            None => self.classify("PutObject", e),
        }))
    }

    async fn begin(&self, key: &str, content_type: &str) -> Result<S3Upload, DestinationError> {
        // A killed worker's upload of this key would otherwise stay open (and billed).
        if let Err(e) = self.abort_journaled(Some(key)).await {
            tracing::warn!(key, error = %e, "could not abort an earlier upload of this key; the end of the job tries again");
        }
        // Noted before S3 is asked, so a kill before the id is noted leaves a trace.
        let intent = match &self.journal {
            Some(journal) => {
                let token = format!("{INTENT_PREFIX}{}", uuid::Uuid::new_v4().simple());
                journal.opened(key, &token).await;
                Some((journal, token))
            }
            None => None,
        };
        let (sse, kms_key) = self.encryption();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| self.classify("CreateMultipartUpload", e))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(DestinationError::Transient {
                destination: self.location.clone(),
                detail: "CreateMultipartUpload returned no upload id".into(),
            });
        };
        // With the id noted, the intent has served. After a failure it stays: a request
        // that timed out may still have created an upload, which the next attempt at
        // this key (or the end of the job) finds by listing.
        if let Some((journal, token)) = intent {
            journal.opened(key, &upload_id).await;
            journal.closed(&token).await;
        }
        Ok(S3Upload {
            target: Arc::new(UploadTarget {
                client: self.client.clone(),
                bucket: self.bucket.clone(),
                key: key.to_string(),
                upload_id,
                location: self.location.clone(),
            }),
            journal: self.journal.clone(),
        })
    }
}

/// What every part request of one multipart upload shares.
struct UploadTarget {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    location: String,
}

/// An open multipart upload, noted in the journal until it is completed or aborted.
pub struct S3Upload {
    target: Arc<UploadTarget>,
    journal: Option<Arc<dyn UploadJournal>>,
}

#[async_trait]
impl OpenUpload for S3Upload {
    type Receipt = CompletedPart;

    fn send(&mut self, part: Part) -> PartRequest<CompletedPart> {
        let t = self.target.clone();
        Box::pin(async move {
            let number = part.index as i32 + 1;
            let checksum = b64_sha256(&part.bytes);
            let out = t
                .client
                .upload_part()
                .bucket(&t.bucket)
                .key(&t.key)
                .upload_id(&t.upload_id)
                .part_number(number)
                .checksum_sha256(&checksum)
                .body(SdkByteStream::from(part.bytes))
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| classify(&t.location, "UploadPart", e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .checksum_sha256(
                    out.checksum_sha256()
                        .map(str::to_string)
                        .unwrap_or(checksum),
                )
                .build())
        })
    }

    async fn complete(
        &mut self,
        receipts: Vec<CompletedPart>,
        _size: u64,
    ) -> Result<(), DestinationError> {
        let t = &self.target;
        t.client
            .complete_multipart_upload()
            .bucket(&t.bucket)
            .key(&t.key)
            .upload_id(&t.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(receipts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify(&t.location, "CompleteMultipartUpload", e))?;
        if let Some(journal) = &self.journal {
            journal.closed(&t.upload_id).await;
        }
        Ok(())
    }

    /// Aborted so nothing is left billed or visible. An abort that failed stays in the
    /// journal for the end of the job.
    async fn abort(&mut self) {
        let t = &self.target;
        let aborted = abort_upload(&t.client, &t.bucket, &t.location, &t.key, &t.upload_id).await;
        if aborted.is_ok()
            && let Some(journal) = &self.journal
        {
            journal.closed(&t.upload_id).await;
        }
    }
}

fn b64_sha256(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
}

fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    location: &str,
    what: &str,
    err: SdkError<E>,
) -> DestinationError {
    let destination = location.to_string();
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().unwrap_or_default().to_string();
    let message = err.message().unwrap_or_default().to_string();
    let refused = matches!(
        code.as_str(),
        "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "NoSuchBucket"
            | "AllAccessDisabled"
            | "InvalidBucketName"
            | "ExpiredToken"
            | "InvalidToken"
    ) || code.starts_with("KMS.")
        || matches!(status, Some(401 | 403));
    if refused {
        let hint = match code.as_str() {
            "NoSuchBucket" => "the bucket does not exist: create it or fix the destination URL",
            c if c.starts_with("KMS.") => {
                "the KMS key refused: check kms_key_id, that the key is enabled and in the bucket's region, and that the key policy grants kms:GenerateDataKey and kms:Decrypt (docs/permissions.md)"
            }
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken" => {
                "S3 rejected the credentials: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the role) and the region"
            }
            // Only needed to find an upload a killed worker left before its id was noted.
            _ if what == "ListMultipartUploads" => {
                "to abort an upload a killed worker left open, allow s3:ListBucketMultipartUploads on the bucket, or let a lifecycle rule with AbortIncompleteMultipartUpload remove it (docs/permissions.md)"
            }
            _ => {
                "S3 denied the request: the bucket policy must allow s3:PutObject, s3:AbortMultipartUpload and s3:ListMultipartUploadParts (docs/permissions.md)"
            }
        };
        return DestinationError::Refused {
            destination,
            detail: format!("{what} refused ({code} {message}): {hint}"),
        };
    }
    let detail = match status {
        Some(s) => format!("{what} failed with HTTP {s} {code} {message}"),
        None => format!(
            "{what} failed: {}",
            aws_sdk_s3::error::DisplayErrorContext(&err)
        ),
    };
    DestinationError::Transient {
        destination,
        detail,
    }
}

#[async_trait]
impl Destination for S3Destination {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn set_upload_journal(&mut self, journal: Arc<dyn UploadJournal>) {
        self.journal = Some(journal);
    }

    async fn abort_left_open(&self) -> Result<usize, DestinationError> {
        self.abort_journaled(None).await
    }

    async fn put(
        &self,
        relative_path: &str,
        body: ByteStream,
        content_type: &str,
        size_hint: Option<u64>,
    ) -> Result<Written, DestinationError> {
        put_file(self, relative_path, body, content_type, size_hint, None).await
    }

    async fn put_hashed(
        &self,
        relative_path: &str,
        body: ByteStream,
        content_type: &str,
        size_hint: Option<u64>,
        digest: &DigestHandle,
    ) -> Result<Written, DestinationError> {
        put_file(
            self,
            relative_path,
            body,
            content_type,
            size_hint,
            Some(digest),
        )
        .await
    }

    async fn open(&self, relative_path: &str) -> Result<ByteStream, DestinationError> {
        let key = self.key(checked(relative_path)?);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error()
                    .map(|s| s.is_no_such_key())
                    .unwrap_or(false)
                {
                    DestinationError::NotFound(key.clone())
                } else {
                    self.classify("GetObject", e)
                }
            })?;
        let reader = out.body.into_async_read();
        Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
            reader,
            256 * 1024,
        )))
    }
}
