//! Azure Blob Storage, with Microsoft's official `azure_storage_blob` crate (the
//! maintained successor of the deprecated `azure_storage_blobs`).
//!
//! Authentication is a SAS token for the container (what customers hand us), held in
//! memory and only ever placed on request URLs; it needs exactly create (c) and write
//! (w). Small files go in one Put Blob; larger ones stream as staged blocks (cut from
//! the body in memory by the shared [`super::multipart`] loop, several in flight) and one Put Block List, so
//! the blob appears at its final key only when the list is committed. Every request
//! body carries `Content-MD5`, which the service checks, and a block blob gets the
//! whole body's MD5 as its `Content-MD5` property for downloads to check. A failed upload leaves only
//! uncommitted blocks, which are invisible, never readable at the key, and discarded
//! by the service (at the next commit of that blob, or after a week). An optional
//! encryption scope (customer-managed keys) is sent with every write.
//!
//! The SDK runs on our own HTTP transport (`transport.rs`): rustls, certificate
//! validation always on, the optional extra CA bundle.

mod transport;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::error::ErrorKind;
use azure_core::http::{
    ClientOptions, ExponentialRetryOptions, RequestContent, RetryOptions, Transport, Url,
};
use azure_storage_blob::models::{
    BlockBlobClientCommitBlockListOptions, BlockBlobClientStageBlockOptions,
    BlockBlobClientUploadOptions, BlockLookupList,
};
use azure_storage_blob::{BlobClient, BlobClientOptions, BlockBlobClient, BlockBlobClientOptions};
use bytes::Bytes;
use futures::TryStreamExt;
use md5::{Digest, Md5};
use secrecy::{ExposeSecret, SecretString};

use self::transport::{ContentMd5Policy, RustlsTransport};
use super::multipart::{MultipartStore, OpenUpload, Part, PartRequest, put_file};
use super::url::AzureUrl;
use super::{ByteStream, Destination, DestinationError, Tuning, Written, checked};

/// Environment variable the SAS token is read from when the credentials document has
/// none (the CLI's `portshift export`).
pub const SAS_ENV: &str = "AZURE_STORAGE_SAS_TOKEN";

/// What the missing-permission errors tell the user to grant.
const NEEDED: &str =
    "portshift needs exactly create (c) and write (w) on the container; see docs/permissions.md";

pub struct AzureDestination {
    /// `<endpoint>/<container>`, without the SAS token.
    container_url: Url,
    sas: SecretString,
    prefix: String,
    location: String,
    tuning: Tuning,
    encryption_scope: Option<String>,
    client_options: ClientOptions,
}

impl AzureDestination {
    /// Sets the destination up; sends nothing yet (a SAS token with only create+write
    /// cannot be checked without writing).
    pub fn connect(
        url: &AzureUrl,
        credentials: Option<&pipeline::secrets::AzureCredentials>,
        tuning: &Tuning,
        extra_ca_file: Option<&Path>,
        egress: &crate::http::Egress,
    ) -> Result<Self, DestinationError> {
        let location = format!("azure://{}/{}/{}", url.account, url.container, url.prefix);
        let refused = |detail: String| DestinationError::Refused {
            destination: location.clone(),
            detail,
        };
        let sas = match credentials {
            Some(c) => c.sas_token.clone(),
            // A console job never gets the server's own token from its environment.
            None if egress.is_guarded() => {
                return Err(refused(format!(
                    "no SAS token: console jobs must give their own SAS token for the container; {NEEDED}"
                )));
            }
            None => match std::env::var(SAS_ENV) {
                Ok(v) if !v.trim().is_empty() => SecretString::from(v),
                _ => {
                    return Err(refused(format!(
                        "no SAS token: give one in the credentials (\"azure\": {{\"sas_token\": \"...\"}}) or set {SAS_ENV}; {NEEDED}"
                    )));
                }
            },
        };
        let sas = normalize_sas(sas.expose_secret()).map_err(refused)?;
        let mut container_url = Url::parse(&url.endpoint)
            .map_err(|e| refused(format!("the endpoint {:?} is not a URL: {e}", url.endpoint)))?;
        container_url
            .path_segments_mut()
            .map_err(|_| {
                refused(format!(
                    "the endpoint {:?} cannot take a path",
                    url.endpoint
                ))
            })?
            .pop_if_empty()
            .push(&url.container);
        if tuning.part_size == 0 || tuning.part_size > 4000 * 1024 * 1024 {
            return Err(refused(
                "the block size must be between 1 byte and 4000 MiB (Azure's limit)".into(),
            ));
        }
        egress
            .check_url("storage endpoint", &container_url)
            .map_err(|e| refused(e.to_string()))?;
        // The SDK follows no redirects either; a redirect would resend the SAS.
        let http = crate::http::no_redirect_client(extra_ca_file, egress)
            .map_err(|e| refused(e.to_string()))?;
        let client_options = ClientOptions {
            per_call_policies: vec![Arc::new(ContentMd5Policy)],
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(200),
                max_retries: 4,
                max_total_elapsed: azure_core::time::Duration::seconds(30),
                max_delay: azure_core::time::Duration::seconds(5),
            }),
            transport: Some(Transport::new(Arc::new(RustlsTransport(http)))),
            ..Default::default()
        };
        Ok(Self {
            container_url,
            sas: SecretString::from(sas),
            prefix: url.prefix.clone(),
            location,
            tuning: *tuning,
            encryption_scope: url.encryption_scope.clone(),
            client_options,
        })
    }

    /// The blob's URL with the SAS token as its query. Never logged or shown.
    fn blob_url(&self, key: &str) -> Result<Url, DestinationError> {
        let mut url = self.container_url.clone();
        url.path_segments_mut()
            .map_err(|_| self.transient("the container URL cannot take a path".into()))?
            .extend(key.split('/'));
        url.set_query(Some(self.sas.expose_secret()));
        Ok(url)
    }

    fn block_client(&self, key: &str) -> Result<BlockBlobClient, DestinationError> {
        BlockBlobClient::new(
            self.blob_url(key)?,
            None,
            Some(BlockBlobClientOptions {
                client_options: self.client_options.clone(),
                ..Default::default()
            }),
        )
        .map_err(|e| self.classify("creating the blob client", e))
    }

    fn transient(&self, detail: String) -> DestinationError {
        DestinationError::Transient {
            destination: self.location.clone(),
            detail,
        }
    }

    fn classify(&self, what: &str, err: azure_core::Error) -> DestinationError {
        classify(&self.location, self.sas.expose_secret(), what, err)
    }
}

#[async_trait]
impl MultipartStore for AzureDestination {
    type Upload = AzureUpload;

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
        // Azure and GCS take an MD5 per request, which the store computes itself.
        _sha256: Option<[u8; 32]>,
    ) -> Result<(), DestinationError> {
        let client = self.block_client(key)?;
        let len = body.len();
        let options = BlockBlobClientUploadOptions {
            blob_content_type: Some(content_type.to_string()),
            encryption_scope: self.encryption_scope.clone(),
            // One request: the partition is at least the whole body.
            partition_size: std::num::NonZero::new(len.max(1) as u64),
            ..Default::default()
        };
        client
            .upload(body.into(), Some(options))
            .await
            .map_err(|e| self.classify("Put Blob", e))?;
        Ok(())
    }

    async fn begin(&self, key: &str, content_type: &str) -> Result<AzureUpload, DestinationError> {
        Ok(AzureUpload {
            client: Arc::new(self.block_client(key)?),
            // Unique per upload, so two deliveries of the same file writing at once can
            // never mix each other's blocks; all ids of one blob have the same length.
            upload: uuid::Uuid::new_v4().simple().to_string(),
            ids: Vec::new(),
            whole: Md5::new(),
            content_type: content_type.to_string(),
            location: self.location.clone(),
            sas: self.sas.clone(),
            encryption_scope: self.encryption_scope.clone(),
        })
    }
}

/// A block blob being staged: blocks are invisible until the block list is committed.
pub struct AzureUpload {
    client: Arc<BlockBlobClient>,
    upload: String,
    ids: Vec<Vec<u8>>,
    /// The whole blob's MD5, stored as its Content-MD5 property so downloads (azcopy,
    /// the SDKs) can check what they got; each block's own MD5 is checked by the service
    /// on the way in (`transport::ContentMd5Policy`).
    whole: Md5,
    content_type: String,
    location: String,
    sas: SecretString,
    encryption_scope: Option<String>,
}

#[async_trait]
impl OpenUpload for AzureUpload {
    type Receipt = ();

    fn send(&mut self, part: Part) -> PartRequest<()> {
        self.whole.update(&part.bytes);
        let id = format!("{}-{:06}", self.upload, part.index).into_bytes();
        self.ids.push(id.clone());
        let client = self.client.clone();
        let location = self.location.clone();
        let sas = self.sas.clone();
        let options = BlockBlobClientStageBlockOptions {
            encryption_scope: self.encryption_scope.clone(),
            ..Default::default()
        };
        Box::pin(async move {
            let len = part.bytes.len() as u64;
            client
                .stage_block(&id, len, part.bytes.into(), Some(options))
                .await
                .map_err(|e| classify(&location, sas.expose_secret(), "Put Block", e))?;
            Ok(())
        })
    }

    async fn complete(&mut self, _receipts: Vec<()>, _size: u64) -> Result<(), DestinationError> {
        let list = BlockLookupList {
            latest: Some(std::mem::take(&mut self.ids)),
            ..Default::default()
        };
        let sas = self.sas.expose_secret();
        let content: RequestContent<BlockLookupList, _> = list
            .try_into()
            .map_err(|e| classify(&self.location, sas, "encoding the block list", e))?;
        self.client
            .commit_block_list(
                content,
                Some(BlockBlobClientCommitBlockListOptions {
                    blob_content_type: Some(self.content_type.clone()),
                    blob_content_md5: Some(self.whole.clone().finalize().to_vec()),
                    encryption_scope: self.encryption_scope.clone(),
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| classify(&self.location, sas, "Put Block List", e))?;
        Ok(())
    }

    /// Nothing to do: uncommitted blocks are never readable at the key, and the service
    /// discards them (at the next commit of the blob, or after a week).
    async fn abort(&mut self) {}
}

/// Accepts the token with or without its leading `?`, and refuses what is clearly not
/// a SAS token (without quoting it).
fn normalize_sas(raw: &str) -> Result<String, String> {
    let sas = raw.trim().trim_start_matches('?');
    let has = |k: &str| sas.split('&').any(|p| p.starts_with(k));
    if sas.is_empty() || !has("sig=") || sas.contains(char::is_whitespace) {
        return Err(format!(
            "the SAS token is not a SAS query string (expected something like sp=cw&se=...&sig=...); copy the whole token; {NEEDED}"
        ));
    }
    Ok(sas.to_string())
}

/// Removes the SAS token (and any `sig=` value) from text bound for errors and logs.
fn redact(text: &str, sas: &str) -> String {
    let mut out = if sas.is_empty() {
        text.to_string()
    } else {
        text.replace(sas, "[sas redacted]")
    };
    while let Some(pos) = out.find("sig=") {
        let end = out[pos..]
            .find(|c: char| c == '&' || c == '"' || c == '\'' || c.is_whitespace())
            .map(|e| pos + e)
            .unwrap_or(out.len());
        out.replace_range(pos..end, "sig[redacted]");
    }
    out
}

fn classify(location: &str, sas: &str, what: &str, err: azure_core::Error) -> DestinationError {
    let destination = location.to_string();
    let (status, code) = match err.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => (
            Some(u16::from(*status)),
            error_code.clone().unwrap_or_default(),
        ),
        _ => (None, String::new()),
    };
    let refused_hint = match code.as_str() {
        "AuthorizationPermissionMismatch" => Some(format!(
            "the SAS token does not grant the write (w) permission {what} needs; {NEEDED}"
        )),
        "AuthenticationFailed" => Some(format!(
            "the SAS token was not accepted (expired, revoked, or made for another account or container); create a new one; {NEEDED}"
        )),
        "AuthorizationResourceTypeMismatch" => Some(format!(
            "the SAS token is not valid for blobs (an account SAS needs srt=o, or use a container SAS); {NEEDED}"
        )),
        "AuthorizationSourceIPMismatch" => {
            Some("the SAS token does not allow requests from this machine's IP address".into())
        }
        "AuthorizationProtocolMismatch" => {
            Some("the SAS token allows HTTPS only: use an https:// endpoint".into())
        }
        "ContainerNotFound" => Some(
            "the container does not exist: create it (portshift never creates containers) or fix the destination URL".into(),
        ),
        "EncryptionScopeNotFound" | "EncryptionScopeDisabled" => Some(
            "the encryption scope does not exist or is disabled on this storage account: fix encryption_scope in the destination URL".into(),
        ),
        _ if matches!(status, Some(401 | 403)) => Some(format!(
            "Azure refused the request ({code}); check the SAS token; {NEEDED}"
        )),
        _ => None,
    };
    if let Some(hint) = refused_hint {
        return DestinationError::Refused {
            destination,
            detail: format!(
                "{what} refused (HTTP {} {code}): {hint}",
                status.unwrap_or(0)
            ),
        };
    }
    if matches!(code.as_str(), "BlobNotFound") {
        return DestinationError::NotFound(location.to_string());
    }
    let detail = match status {
        Some(s) => format!("{what} failed with HTTP {s} {code}"),
        None => format!("{what} failed: {}", redact(&err.to_string(), sas)),
    };
    DestinationError::Transient {
        destination,
        detail,
    }
}

#[async_trait]
impl Destination for AzureDestination {
    fn location(&self) -> String {
        self.location.clone()
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

    async fn open(&self, relative_path: &str) -> Result<ByteStream, DestinationError> {
        let key = self.key(checked(relative_path)?);
        let client = BlobClient::new(
            self.blob_url(&key)?,
            None,
            Some(BlobClientOptions {
                client_options: self.client_options.clone(),
                ..Default::default()
            }),
        )
        .map_err(|e| self.classify("creating the blob client", e))?;
        let result =
            client
                .download(None)
                .await
                .map_err(|e| match self.classify("Get Blob", e) {
                    DestinationError::NotFound(_) => DestinationError::NotFound(key.clone()),
                    other => other,
                })?;
        let sas = self.sas.expose_secret().to_string();
        Ok(Box::pin(result.body.map_err(move |e| {
            std::io::Error::other(redact(&e.to_string(), &sas))
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sas_tokens_are_normalised_and_checked_without_quoting_them() {
        assert_eq!(
            normalize_sas(" ?sp=cw&sig=abc ").unwrap(),
            "sp=cw&sig=abc".to_string()
        );
        let e = normalize_sas("CANARY-not-a-token").unwrap_err();
        assert!(!e.contains("CANARY"), "{e}");
        assert!(e.contains("create (c) and write (w)"), "{e}");
    }

    #[test]
    fn redaction_removes_the_token_and_any_signature() {
        let text = "GET https://a.blob.core.windows.net/c/x?sp=cw&sig=SECRET123&se=1 failed; other sig=XYZ";
        let out = redact(text, "sp=cw&sig=SECRET123&se=1");
        assert!(!out.contains("SECRET123") && !out.contains("XYZ"), "{out}");
    }
}
