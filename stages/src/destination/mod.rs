//! Destinations: where exported files are written. Every destination implements one
//! trait, [`Destination`], with the same promises, checked by one behaviour test suite
//! (`stages/tests/destinations.rs`) run against each implementation:
//! - an object appears at its final key only when its whole body arrived (a body stream
//!   that ends in an error leaves nothing at the key, and no partial upload behind);
//! - writing the same key again replaces it (redeliveries are idempotent);
//! - keys are relative paths under the destination's prefix and can never escape it.
//!
//! Writing never needs read or list permission on the customer's storage; reading
//! ([`Destination::open`]) is used only by `portshift verify`, with the customer's own
//! read credentials.

pub mod azure;
pub mod gcs;
pub mod local;
pub(crate) mod multipart;
pub mod s3;
pub mod url;

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use self::url::{DestinationUrl, DestinationUrlError, Storage};
use crate::hash::DigestHandle;
/// Every destination applies it to a body given with a size hint.
pub(crate) use crate::hash::exact_length;
use crate::http::Egress;

/// File bytes as they stream through: never collected whole, never written to our disk.
pub type ByteStream = BoxStream<'static, Result<Bytes, io::Error>>;

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// The source body failed mid-way (cut short, connection lost): nothing was stored.
    #[error("the source stream failed before the file was complete: {0}")]
    Source(#[source] io::Error),
    /// The destination had a passing problem (5xx, throttling, network): retry.
    #[error("{destination}: {detail}")]
    Transient { destination: String, detail: String },
    /// The destination refused us in a way retrying cannot fix (credentials, missing
    /// bucket, permissions): the job waits until this is fixed.
    #[error("{destination}: {detail}")]
    Refused { destination: String, detail: String },
    /// A key that would escape the prefix or break the manifest format.
    #[error("refusing to write the unsafe key {0:?}")]
    UnsafeKey(String),
    #[error("{0} does not exist at the destination")]
    NotFound(String),
}

impl DestinationError {
    pub fn is_refused(&self) -> bool {
        matches!(self, DestinationError::Refused { .. })
    }
}

/// What a completed write reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The full key (prefix included) the object now lives at.
    pub key: String,
    pub bytes: u64,
}

#[async_trait]
pub trait Destination: Send + Sync {
    /// Where this destination writes, without secrets (for logs, summaries, the job record).
    fn location(&self) -> String;

    /// Streams `body` to `relative_path` under the prefix. The object exists at its final
    /// key only if this returns `Ok`.
    async fn put(
        &self,
        relative_path: &str,
        body: ByteStream,
        content_type: &str,
        size_hint: Option<u64>,
    ) -> Result<Written, DestinationError>;

    /// [`Destination::put`] of a body that flows through [`crate::hash::tee`]: a store
    /// whose one-request upload sends the body's SHA-256 (S3) takes it from `digest`
    /// instead of hashing the same bytes a second time. The default ignores it.
    async fn put_hashed(
        &self,
        relative_path: &str,
        body: ByteStream,
        content_type: &str,
        size_hint: Option<u64>,
        _digest: &DigestHandle,
    ) -> Result<Written, DestinationError> {
        self.put(relative_path, body, content_type, size_hint).await
    }

    /// Writes a small in-memory document (metadata, transcript, manifest).
    async fn put_bytes(
        &self,
        relative_path: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<Written, DestinationError> {
        let len = bytes.len() as u64;
        let body: ByteStream = Box::pin(futures::stream::once(async move { Ok(bytes) }));
        self.put(relative_path, body, content_type, Some(len)).await
    }

    /// Reads an object back (verification only).
    async fn open(&self, relative_path: &str) -> Result<ByteStream, DestinationError>;

    /// Gives the destination a journal of the uploads it leaves open while it works
    /// (S3 multipart uploads; Azure and GCS discard unfinished uploads themselves).
    fn set_upload_journal(&mut self, _journal: Arc<dyn UploadJournal>) {}

    /// Aborts every upload the journal still lists (a killed worker's), at the end of a
    /// job; returns how many.
    async fn abort_left_open(&self) -> Result<usize, DestinationError> {
        Ok(0)
    }
}

/// Where a destination notes the multipart uploads it has open, so that a worker killed
/// mid-upload does not leave parts billed in the customer's bucket: the next attempt
/// at the same key, or the end of the job, aborts them. It is hygiene, not integrity
/// (an open upload is never visible as an object), so a journal that fails is logged
/// and the upload goes on.
#[async_trait]
pub trait UploadJournal: Send + Sync {
    async fn opened(&self, key: &str, upload_id: &str);
    async fn closed(&self, upload_id: &str);
    /// Uploads still open, as `(key, upload id)`; only at `key` when given.
    async fn left_open(&self, key: Option<&str>) -> Vec<(String, String)>;
}

/// Checks a relative path before any destination touches it.
pub(crate) fn checked(relative_path: &str) -> Result<&str, DestinationError> {
    if pipeline::keys::is_safe_relative(relative_path) {
        Ok(relative_path)
    } else {
        Err(DestinationError::UnsafeKey(
            relative_path.chars().take(200).collect(),
        ))
    }
}

/// The secrets a destination may need, borrowed from the worker's [`Credentials`].
/// Any that is missing falls back to the provider's usual environment (the AWS chain,
/// `AZURE_STORAGE_SAS_TOKEN`, `GOOGLE_APPLICATION_CREDENTIALS` or the machine's identity).
///
/// [`Credentials`]: pipeline::secrets::Credentials
#[derive(Clone, Copy, Debug, Default)]
pub struct DestinationCredentials<'a> {
    pub s3: Option<&'a pipeline::secrets::S3Credentials>,
    pub azure: Option<&'a pipeline::secrets::AzureCredentials>,
    pub gcs: Option<&'a pipeline::secrets::GcsCredentials>,
}

impl<'a> From<&'a pipeline::secrets::Credentials> for DestinationCredentials<'a> {
    fn from(c: &'a pipeline::secrets::Credentials) -> Self {
        Self {
            s3: c.s3.as_ref(),
            azure: c.azure.as_ref(),
            gcs: c.gcs.as_ref(),
        }
    }
}

/// Opens the destination a URL names, with S3 credentials from the worker's memory
/// (others from the environment) and the CA bundle named by `PORTSHIFT_CA_FILE`.
pub async fn open(
    url: &DestinationUrl,
    s3_credentials: Option<&pipeline::secrets::S3Credentials>,
    tuning: &Tuning,
) -> Result<Box<dyn Destination>, DestinationError> {
    let credentials = DestinationCredentials {
        s3: s3_credentials,
        ..Default::default()
    };
    open_with(
        url,
        credentials,
        tuning,
        crate::http::ca_file_from_env().as_deref(),
    )
    .await
}

/// Opens the destination a URL names with the given credentials and extra CA bundle,
/// for an operator's job (no network guard).
pub async fn open_with(
    url: &DestinationUrl,
    credentials: DestinationCredentials<'_>,
    tuning: &Tuning,
    extra_ca_file: Option<&std::path::Path>,
) -> Result<Box<dyn Destination>, DestinationError> {
    open_guarded(url, credentials, tuning, extra_ca_file, &Egress::open()).await
}

/// Opens the destination with the job's network guard: for a console job no fallback
/// to the server's identity or environment, and endpoints only where `egress` allows.
/// (`file://` for console jobs is checked by the worker against the allowed root.)
pub async fn open_guarded(
    url: &DestinationUrl,
    credentials: DestinationCredentials<'_>,
    tuning: &Tuning,
    extra_ca_file: Option<&std::path::Path>,
    egress: &Egress,
) -> Result<Box<dyn Destination>, DestinationError> {
    match &url.storage {
        Storage::Local { root } => Ok(Box::new(local::LocalFolder::new(root.clone()))),
        Storage::S3(s3url) => Ok(Box::new(
            s3::S3Destination::connect(s3url, credentials.s3, tuning, egress).await?,
        )),
        Storage::Azure(a) => Ok(Box::new(azure::AzureDestination::connect(
            a,
            credentials.azure,
            tuning,
            extra_ca_file,
            egress,
        )?)),
        Storage::Gcs(g) => Ok(Box::new(gcs::GcsDestination::connect(
            g,
            credentials.gcs,
            tuning,
            extra_ca_file,
            egress,
        )?)),
    }
}

/// Knobs that trade memory for throughput.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Multipart part / Azure block / GCS chunk size (S3's minimum is 5 MiB; GCS rounds
    /// down to a multiple of 256 KiB). Files smaller than this go in one PUT.
    pub part_size: usize,
    /// Parts of one file uploaded at once. Memory per transfer is about
    /// `part_size * (parts_in_flight + 1)`.
    pub parts_in_flight: usize,
    /// A file whose size the source announced, up to this many bytes, is streamed in one
    /// request by a store that can (S3: `PutObject` with a trailing SHA-256), holding no
    /// part buffer: one request instead of a multipart upload's four or more, and only
    /// the chunks in transit in memory. A failure retries the whole file from the source
    /// rather than one part. 0 turns it off.
    pub single_request_max: u64,
}

impl Tuning {
    /// The default of [`Tuning::single_request_max`], in MiB: most audio recordings go in
    /// one request, long videos in parts.
    pub const DEFAULT_SINGLE_REQUEST_MAX_MIB: u64 = 64;
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            part_size: 8 * 1024 * 1024,
            parts_in_flight: 3,
            single_request_max: Self::DEFAULT_SINGLE_REQUEST_MAX_MIB << 20,
        }
    }
}
