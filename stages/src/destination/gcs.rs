//! Google Cloud Storage, as a thin client over the JSON API on our own reqwest client.
//!
//! Why not a GCS crate: the one behaviour that matters most here is resuming an
//! interrupted resumable upload from the offset the *server* says it committed (status
//! query `Content-Range: bytes */*` → `308` + `Range`), re-sending exactly the bytes
//! after it from the chunk we still hold in memory. Google's `google-cloud-storage`
//! crate keeps that logic internal (and brings gRPC, tonic and its own HTTP/TLS stack,
//! a heavy build on our shared 2-core machines); `object_store`'s GCS backend uses the
//! XML multipart API, not resumable uploads, and cannot resume from a committed offset.
//! A few hundred lines over the documented JSON API give us that control, the shared
//! rustls client (certificate validation always on, optional extra CA), and the same
//! shape as the other destinations.
//!
//! Small files go in one multipart upload (metadata + bytes, with `md5Hash`, which the
//! service checks). Larger ones use a resumable session: chunks (multiples of 256 KiB)
//! cut from the body in memory by the shared [`super::multipart`] loop; on a failed chunk the session is
//! asked what it committed and the upload continues from there; if it cannot, the
//! session is cancelled (`DELETE`), so an object appears at its final key only when the
//! whole body arrived. The final chunk carries `X-Goog-Hash: md5=` of the whole body and
//! the returned `md5Hash` is compared. An optional Cloud KMS key (`kms_key=`, CMEK)
//! encrypts every object. Writing needs `storage.objects.create` and (to overwrite on a
//! redelivery) `storage.objects.delete`; nothing reads or lists the bucket.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use futures::TryStreamExt;
use md5::{Digest, Md5};
use pipeline::backoff::{GaveUp, Outcome, RetryPolicy};
use reqwest::StatusCode;
use secrecy::ExposeSecret;

use super::multipart::{MultipartStore, OpenUpload, Part, PartRequest, put_file};
use super::url::GcsUrl;
use super::{ByteStream, Destination, DestinationError, Tuning, Written, checked};
use crate::gcp_auth::{GcpAuthError, SCOPE_STORAGE, TokenSource};
use crate::http::Egress;

/// Resumable chunks must be multiples of this (except the last).
pub const CHUNK_GRANULE: usize = 256 * 1024;

/// Tries per chunk (the first send plus resumes) before the upload is given up.
const CHUNK_RETRIES: RetryPolicy = RetryPolicy {
    tries: 6,
    base: Duration::from_millis(250),
    max: Duration::from_secs(4),
};

pub struct GcsDestination(Arc<GcsClient>);

/// The client every request of the destination (and of its open uploads) goes through.
pub struct GcsClient {
    http: reqwest::Client,
    auth: TokenSource,
    endpoint: String,
    bucket: String,
    prefix: String,
    kms_key: Option<String>,
    location: String,
    chunk_size: usize,
}

/// Where a resumable session stands after a status query.
enum Committed {
    /// The server holds bytes `0..n`.
    Offset(u64),
    /// The upload is complete (the object exists).
    Done(serde_json::Value),
}

impl std::ops::Deref for GcsDestination {
    type Target = GcsClient;

    fn deref(&self) -> &GcsClient {
        &self.0
    }
}

impl GcsDestination {
    pub fn connect(
        url: &GcsUrl,
        credentials: Option<&pipeline::secrets::GcsCredentials>,
        tuning: &Tuning,
        extra_ca_file: Option<&Path>,
        egress: &Egress,
    ) -> Result<Self, DestinationError> {
        let location = format!("gs://{}/{}", url.bucket, url.prefix);
        let refused = |detail: String| DestinationError::Refused {
            destination: location.clone(),
            detail,
        };
        let chunk_size = tuning.part_size / CHUNK_GRANULE * CHUNK_GRANULE;
        if chunk_size == 0 {
            return Err(refused(
                "the chunk size must be at least 256 KiB (GCS resumable uploads send multiples of 256 KiB)".into(),
            ));
        }
        let auth = TokenSource::resolve(
            credentials.map(|c| &c.service_account_json),
            SCOPE_STORAGE,
            extra_ca_file,
            egress,
        )
        .map_err(|e| refused(e.to_string()))?;
        let endpoint = url::Url::parse(&url.endpoint)
            .map_err(|e| refused(format!("the endpoint is not a URL: {e}")))?;
        egress
            .check_url("storage endpoint", &endpoint)
            .map_err(|e| refused(e.to_string()))?;
        let http = crate::http::no_redirect_client(extra_ca_file, egress)
            .map_err(|e| refused(e.to_string()))?;
        Ok(Self(Arc::new(GcsClient {
            http,
            auth,
            endpoint: url.endpoint.clone(),
            bucket: url.bucket.clone(),
            prefix: url.prefix.clone(),
            kms_key: url.kms_key.clone(),
            location,
            chunk_size,
        })))
    }
}

impl GcsClient {
    fn transient(&self, detail: impl Into<String>) -> DestinationError {
        DestinationError::Transient {
            destination: self.location.clone(),
            detail: detail.into(),
        }
    }

    fn auth_error(&self, e: GcpAuthError) -> DestinationError {
        if e.is_refused() {
            DestinationError::Refused {
                destination: self.location.clone(),
                detail: e.to_string(),
            }
        } else {
            self.transient(e.to_string())
        }
    }

    async fn bearer(&self) -> Result<String, DestinationError> {
        let token = self.auth.token().await.map_err(|e| self.auth_error(e))?;
        Ok(format!("Bearer {}", token.expose_secret()))
    }

    fn upload_url(&self, upload_type: &str, name: &str) -> Result<url::Url, DestinationError> {
        let mut url = url::Url::parse(&self.endpoint)
            .map_err(|e| self.transient(format!("the endpoint is not a URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|_| self.transient("the endpoint cannot take a path"))?
            .pop_if_empty()
            .extend(["upload", "storage", "v1", "b", &self.bucket, "o"]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("uploadType", upload_type);
            q.append_pair("name", name);
            if let Some(k) = &self.kms_key {
                q.append_pair("kmsKeyName", k);
            }
        }
        Ok(url)
    }

    /// Turns an unsuccessful response into the error the stage acts on.
    async fn failure(&self, what: &str, response: reqwest::Response) -> DestinationError {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let message = google_error(&body).unwrap_or_default();
        let detail = format!("{what} failed with HTTP {status} {message}");
        match status.as_u16() {
            401 => {
                self.auth.invalidate().await;
                self.transient(format!(
                    "{detail} (the access token was refused; a new one will be fetched)"
                ))
            }
            403 => DestinationError::Refused {
                destination: self.location.clone(),
                detail: format!(
                    "{detail}: the service account needs storage.objects.create and storage.objects.delete on the bucket{} (docs/permissions.md)",
                    if self.kms_key.is_some() {
                        ", and the Cloud Storage service agent needs roles/cloudkms.cryptoKeyEncrypterDecrypter on the KMS key"
                    } else {
                        ""
                    }
                ),
            },
            404 if what != "reading" => DestinationError::Refused {
                destination: self.location.clone(),
                detail: format!(
                    "{detail}: the bucket does not exist; create it or fix the destination URL"
                ),
            },
            400 if message.to_ascii_lowercase().contains("kms") => DestinationError::Refused {
                destination: self.location.clone(),
                detail: format!("{detail}: check kms_key in the destination URL"),
            },
            _ => self.transient(detail),
        }
    }

    async fn put_single(
        &self,
        name: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), DestinationError> {
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&body));
        let metadata = serde_json::json!({
            "name": name,
            "contentType": content_type,
            "md5Hash": md5,
        });
        let boundary = format!("portshift-{}", uuid::Uuid::new_v4().simple());
        let mut head = format!(
            "--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{metadata}\r\n--{boundary}\r\ncontent-type: {content_type}\r\n\r\n"
        )
        .into_bytes();
        head.reserve(body.len() + boundary.len() + 8);
        head.extend_from_slice(&body);
        head.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let response = self
            .http
            .post(self.upload_url("multipart", name)?)
            .header("authorization", self.bearer().await?)
            .header(
                "content-type",
                format!("multipart/related; boundary={boundary}"),
            )
            .body(head)
            .send()
            .await
            .map_err(|e| self.transient(format!("upload: {}", crate::http::error_chain(&e))))?;
        if !response.status().is_success() {
            return Err(self.failure("upload", response).await);
        }
        let object: serde_json::Value = response.json().await.unwrap_or_default();
        self.check_md5(&object, &md5)
    }

    /// The service's `md5Hash` must be ours (when it reports one).
    fn check_md5(&self, object: &serde_json::Value, ours: &str) -> Result<(), DestinationError> {
        match object.get("md5Hash").and_then(|v| v.as_str()) {
            Some(theirs) if theirs != ours => Err(self.transient(format!(
                "the stored object's MD5 {theirs} differs from the bytes sent ({ours}); it will be written again"
            ))),
            _ => Ok(()),
        }
    }

    async fn start_session(
        &self,
        name: &str,
        content_type: &str,
    ) -> Result<String, DestinationError> {
        let response = self
            .http
            .post(self.upload_url("resumable", name)?)
            .header("authorization", self.bearer().await?)
            .header("x-upload-content-type", content_type)
            .json(&serde_json::json!({"name": name, "contentType": content_type}))
            .send()
            .await
            .map_err(|e| {
                self.transient(format!(
                    "starting the resumable upload: {}",
                    crate::http::error_chain(&e)
                ))
            })?;
        if !response.status().is_success() {
            return Err(self
                .failure("starting the resumable upload", response)
                .await);
        }
        let session = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.transient("the resumable upload answer has no Location"))?
            .to_string();
        // The session URI receives our bearer token: it must be the endpoint we were
        // given, never another host a response names.
        let (ours, theirs) = (url::Url::parse(&self.endpoint), url::Url::parse(&session));
        match (ours, theirs) {
            (Ok(a), Ok(b)) if a.origin() == b.origin() => Ok(session),
            _ => Err(self.transient(
                "the resumable session URI is not on the endpoint's host; refusing to send data there",
            )),
        }
    }

    /// Asks the session what it has (`Content-Range: bytes */<total or *>`).
    async fn status(
        &self,
        session: &str,
        total: Option<u64>,
    ) -> Result<Committed, DestinationError> {
        let range = match total {
            Some(t) => format!("bytes */{t}"),
            None => "bytes */*".to_string(),
        };
        let response = self
            .http
            .put(session)
            .header("authorization", self.bearer().await?)
            .header("content-range", range)
            .header("content-length", "0")
            .send()
            .await
            .map_err(|e| {
                self.transient(format!(
                    "resumable status query: {}",
                    crate::http::error_chain(&e)
                ))
            })?;
        match response.status().as_u16() {
            308 => Ok(Committed::Offset(committed_of(response.headers()))),
            200 | 201 => Ok(Committed::Done(response.json().await.unwrap_or_default())),
            _ => Err(self.failure("resumable status query", response).await),
        }
    }

    /// Cancels the session so nothing of it is ever finalised. Best effort (an
    /// abandoned session also expires by itself after a week).
    async fn cancel(&self, session: &str) {
        let Ok(bearer) = self.bearer().await else {
            return;
        };
        let sent = self
            .http
            .delete(session)
            .header("authorization", bearer)
            .header("content-length", "0")
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Err(e) = sent {
            tracing::warn!(location = %self.location, error = %crate::http::error_chain(&e.without_url()), "could not cancel a failed resumable upload");
        }
    }

    /// Sends `chunk` (which starts at byte `start` of the object), resuming from the
    /// server's committed offset after a failure. `total` is set on the last chunk.
    /// Returns the object's metadata when the upload completed.
    async fn send_chunk(
        &self,
        session: &str,
        start: u64,
        chunk: &Bytes,
        total: Option<u64>,
        whole_md5: Option<&str>,
    ) -> Result<Option<serde_json::Value>, DestinationError> {
        let end = start + chunk.len() as u64;
        let from = AtomicU64::new(start);
        let result = CHUNK_RETRIES
            .run(
                |attempt| {
                    let from = &from;
                    async move {
                        if attempt > 0 {
                            // Ask what the server actually has before sending anything again.
                            match self.status(session, total).await {
                                Ok(Committed::Done(object)) => return Outcome::Done(Some(object)),
                                Ok(Committed::Offset(n)) if (start..=end).contains(&n) => from.store(n, Ordering::Relaxed),
                                Ok(Committed::Offset(n)) => {
                                    return Outcome::Fail(self.transient(format!(
                                        "the server committed {n} bytes, outside the chunk held in memory ({start}..{end}); the file will be uploaded again"
                                    )));
                                }
                                Err(e @ DestinationError::Refused { .. }) => return Outcome::Fail(e),
                                Err(e) => {
                                    return Outcome::Retry {
                                        error: e,
                                        at_least: None,
                                    };
                                }
                            }
                            tracing::info!(location = %self.location, from = from.load(Ordering::Relaxed), start, end, "resuming a GCS upload from the committed offset");
                        }
                        self.send_rest(session, start, from, chunk, total, whole_md5)
                            .await
                    }
                },
                |_, _, _| {},
            )
            .await;
        match result {
            Ok(object) => Ok(object),
            Err(GaveUp::Failed(e) | GaveUp::Exhausted { last: e, .. }) => Err(e),
        }
    }

    /// One try at sending `chunk` from the byte `from` on; moves `from` to what the
    /// server kept when it kept only part.
    async fn send_rest(
        &self,
        session: &str,
        start: u64,
        from: &AtomicU64,
        chunk: &Bytes,
        total: Option<u64>,
        whole_md5: Option<&str>,
    ) -> Outcome<Option<serde_json::Value>, DestinationError> {
        let end = start + chunk.len() as u64;
        let at = from.load(Ordering::Relaxed);
        let piece = chunk.slice((at - start) as usize..);
        let range = match (piece.is_empty(), total) {
            (true, Some(t)) => format!("bytes */{t}"),
            (false, Some(t)) => format!("bytes {at}-{}/{t}", end - 1),
            (false, None) => format!("bytes {at}-{}/*", end - 1),
            (true, None) => return Outcome::Done(None),
        };
        let bearer = match self.bearer().await {
            Ok(b) => b,
            Err(e) => return Outcome::Fail(e),
        };
        let mut request = self
            .http
            .put(session)
            .header("authorization", bearer)
            .header("content-range", range)
            .header("content-length", piece.len().to_string());
        if let Some(md5) = whole_md5 {
            request = request.header("x-goog-hash", format!("md5={md5}"));
        }
        let response = match request.body(piece).send().await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    error: self.transient(format!(
                        "sending bytes {at}..{end}: {}",
                        crate::http::error_chain(&e.without_url())
                    )),
                    at_least: None,
                };
            }
        };
        match response.status().as_u16() {
            200 | 201 => Outcome::Done(Some(response.json().await.unwrap_or_default())),
            308 => {
                let committed = committed_of(response.headers());
                if committed >= end {
                    return Outcome::Done(None);
                }
                // Fewer bytes kept than sent: send the rest of the chunk.
                if committed < start {
                    return Outcome::Fail(self.transient(format!(
                        "the server went back to {committed} bytes, before this chunk ({start}); the file will be uploaded again"
                    )));
                }
                from.store(committed, Ordering::Relaxed);
                Outcome::Retry {
                    error: self
                        .transient(format!("the server kept only {committed} of {end} bytes")),
                    at_least: None,
                }
            }
            s if s == StatusCode::REQUEST_TIMEOUT.as_u16()
                || s == StatusCode::TOO_MANY_REQUESTS.as_u16()
                || s >= 500 =>
            {
                Outcome::Retry {
                    error: self.failure("sending a chunk", response).await,
                    at_least: None,
                }
            }
            _ => Outcome::Fail(self.failure("sending a chunk", response).await),
        }
    }
}

#[async_trait]
impl MultipartStore for GcsDestination {
    type Upload = GcsUpload;

    fn error_location(&self) -> &str {
        &self.location
    }

    fn tuning(&self) -> Tuning {
        Tuning {
            part_size: self.chunk_size,
            // A resumable session takes its chunks strictly in order.
            parts_in_flight: 1,
            // GCS has no streamed one-request upload here: every body goes through parts.
            single_request_max: 0,
        }
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn put_whole(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        // GCS takes an MD5 per request, which the store computes itself.
        _sha256: Option<[u8; 32]>,
    ) -> Result<(), DestinationError> {
        self.put_single(key, body, content_type).await
    }

    async fn begin(&self, key: &str, content_type: &str) -> Result<GcsUpload, DestinationError> {
        Ok(GcsUpload {
            session: Arc::new(self.start_session(key, content_type).await?),
            client: self.0.clone(),
            md5: Md5::new(),
            whole_md5: None,
        })
    }
}

/// A resumable session; the object is finalised by the chunk that carries the total.
pub struct GcsUpload {
    client: Arc<GcsClient>,
    session: Arc<String>,
    md5: Md5,
    /// Set when the chunk marked last was handed out.
    whole_md5: Option<String>,
}

impl GcsUpload {
    fn finish_md5(&mut self) -> String {
        self.whole_md5
            .get_or_insert_with(|| {
                base64::engine::general_purpose::STANDARD.encode(self.md5.clone().finalize())
            })
            .clone()
    }
}

#[async_trait]
impl OpenUpload for GcsUpload {
    /// The object's metadata, when the chunk completed the upload.
    type Receipt = Option<serde_json::Value>;

    fn send(&mut self, part: Part) -> PartRequest<Option<serde_json::Value>> {
        self.md5.update(&part.bytes);
        let end = part.offset + part.bytes.len() as u64;
        let (total, whole) = if part.last {
            (Some(end), Some(self.finish_md5()))
        } else {
            (None, None)
        };
        let (client, session) = (self.client.clone(), self.session.clone());
        Box::pin(async move {
            client
                .send_chunk(&session, part.offset, &part.bytes, total, whole.as_deref())
                .await
        })
    }

    async fn complete(
        &mut self,
        receipts: Vec<Option<serde_json::Value>>,
        size: u64,
    ) -> Result<(), DestinationError> {
        let sent_last = self.whole_md5.is_some();
        let whole = self.finish_md5();
        let object = match receipts.into_iter().last().flatten() {
            Some(object) if sent_last => Some(object),
            // The body ended exactly on a chunk boundary: an empty last chunk carries
            // the total and finalises the object.
            _ => {
                self.client
                    .send_chunk(&self.session, size, &Bytes::new(), Some(size), Some(&whole))
                    .await?
            }
        };
        let object = object.ok_or_else(|| {
            self.client
                .transient("the last chunk was accepted but the upload is not complete")
        })?;
        self.client.check_md5(&object, &whole)
    }

    async fn abort(&mut self) {
        self.client.cancel(&self.session).await;
    }
}

/// The committed byte count from a `308`'s `Range: bytes=0-N` (none means 0).
fn committed_of(headers: &reqwest::header::HeaderMap) -> u64 {
    headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes=0-"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .map(|n| n + 1)
        .unwrap_or(0)
}

/// The `error.message` of a Google JSON error body (nothing else of it is kept).
fn google_error(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let msg = v.get("error")?.get("message")?.as_str()?;
    Some(msg.chars().filter(|c| !c.is_control()).take(300).collect())
}

#[async_trait]
impl Destination for GcsDestination {
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
        let mut url = url::Url::parse(&self.endpoint)
            .map_err(|e| self.transient(format!("the endpoint is not a URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|_| self.transient("the endpoint cannot take a path"))?
            .pop_if_empty()
            .extend(["storage", "v1", "b", &self.bucket, "o", &key]);
        url.query_pairs_mut().append_pair("alt", "media");
        let response = self
            .http
            .get(url)
            .header("authorization", self.bearer().await?)
            .send()
            .await
            .map_err(|e| self.transient(format!("reading: {}", crate::http::error_chain(&e))))?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(DestinationError::NotFound(key));
        }
        if !response.status().is_success() {
            return Err(self.failure("reading", response).await);
        }
        Ok(Box::pin(
            response
                .bytes_stream()
                .map_err(|e| std::io::Error::other(e.without_url())),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_offsets_come_from_the_range_header() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(committed_of(&h), 0);
        h.insert("range", "bytes=0-524287".parse().unwrap());
        assert_eq!(committed_of(&h), 524288);
        h.insert("range", "garbage".parse().unwrap());
        assert_eq!(committed_of(&h), 0);
    }
}
