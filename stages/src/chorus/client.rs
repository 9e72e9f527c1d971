//! The typed Chorus API client: the engagement listing, conversation details, the
//! transcript and the media stream, with retries (jittered exponential backoff that
//! honours `Retry-After`) and an error type that tells the pipeline what is permanent.
//!
//! Every request to the API's own origin first takes a slot of the account's request
//! budget ([`pipeline::rate_budget`]), when one is configured, and reports a 429 to it,
//! so all of a job's workers (and every job on the same Chorus account) slow down
//! together.
//!
//! The token travels only in the `Authorization` header of requests to the API's own
//! origin: redirects are followed by hand so a storage host never receives it, and it is
//! kept out of every error message, `Debug` output and log line.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::stream::{BoxStream, Stream, StreamExt};
use pipeline::backoff::{GaveUp, Outcome, RetryPolicy};
use pipeline::rate_budget::RequestBudget;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;

use super::model::{EngagementPage, kind, parse_engagement_page};
pub use super::model::{modified_at, parse_conversation};
use crate::http::{
    Egress, HttpSetupError, ca_file_from_env, egress_refusal, error_chain, guarded_client_builder,
};

/// Largest JSON response accepted (a page of engagements or a long transcript is a few
/// MiB at most); anything larger is treated as malformed rather than buffered.
pub const MAX_JSON_BYTES: usize = 32 * 1024 * 1024;

/// Error bodies are read only to quote their message.
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// A `Retry-After` longer than this is not waited for in full: the request is retried
/// anyway, and a server that keeps refusing ends in `Unavailable`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// Redirect hops followed for one media request.
const MAX_REDIRECTS: usize = 5;

/// JSON answers are small, so unlike media bodies they get an overall deadline: a server
/// trickling bytes must not hold a listing forever.
const JSON_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// How to reach Chorus and how hard to retry.
#[derive(Debug, Clone)]
pub struct ChorusConfig {
    /// The API root, e.g. `https://chorus.ai/` (paths are appended to it).
    pub base_url: Url,
    /// The API token, sent raw as `Authorization: <token>`.
    pub token: SecretString,
    /// Extra CA bundle (PEM) trusted in addition to the system roots.
    pub extra_ca_file: Option<PathBuf>,
    /// Attempts per request, the first included (default 6).
    pub max_attempts: u32,
    /// First backoff ceiling; doubles per attempt (default 250 ms).
    pub base_backoff: Duration,
    /// Largest backoff ceiling (default 20 s).
    pub max_backoff: Duration,
    /// Where the client may connect (open for the operator's jobs; public HTTPS and
    /// allowed origins only for a tenant's), checked on every redirect hop too.
    pub egress: Egress,
    /// The account's request budget; `None` = unlimited (tests of the client itself).
    pub budget: Option<Arc<RequestBudget>>,
}

impl ChorusConfig {
    /// The defaults: 6 attempts, backoff from 250 ms up to 20 s, and the extra CA
    /// bundle named by `PORTSHIFT_CA_FILE` (if set).
    pub fn new(base_url: Url, token: SecretString) -> Self {
        ChorusConfig {
            base_url,
            token,
            extra_ca_file: ca_file_from_env(),
            max_attempts: 6,
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(20),
            egress: Egress::open(),
            budget: None,
        }
    }

    /// The opaque key of this token's Chorus account, for the shared request budget:
    /// a truncated SHA-256 of the API origin and the token under a fixed label. Tokens
    /// are long random strings, so the key reveals nothing usable; it only lets every
    /// worker of every job on one account find the same budget.
    pub fn account_key(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"portshift chorus request budget v1\n")
            .chain_update(self.base_url.origin().ascii_serialization().as_bytes())
            .chain_update(b"\n")
            .chain_update(self.token.expose_secret().trim().as_bytes())
            .finalize();
        hex::encode(&digest[..16])
    }
}

/// What went wrong talking to Chorus. Messages say what to do; none carries the token.
#[derive(Debug, thiserror::Error)]
pub enum ChorusError {
    /// An id that no URL can carry (empty, `.` or `..`: URL path normalisation would
    /// address another resource): permanent, the recording is skipped.
    #[error(
        "the Chorus recording id {shown} cannot be requested (an empty, `.` or `..` path segment would address another resource); it is skipped"
    )]
    UnusableId { shown: String },
    /// Deleted, private or not permitted for the token's user: permanent.
    #[error(
        "Chorus has no accessible recording {id} (it was deleted, is private, or the token's user may not see it); it is skipped"
    )]
    NotFound { id: String },
    /// The token was refused: every further request of the job would fail too.
    #[error(
        "Chorus rejected the API token (HTTP {status}{}): check CHORUS_API_TOKEN (is it current and complete, and does its Chorus user still have API access?)",
        code_and_detail(.code, .detail)
    )]
    Unauthorized {
        status: u16,
        /// The JSON:API error code, e.g. `ZI0001`.
        code: Option<String>,
        detail: String,
    },
    /// A 4xx other than 401/403/404/408/429: the request itself is wrong.
    #[error(
        "Chorus refused the request (HTTP {status}): {detail}; check the export's filter and the Chorus API URL"
    )]
    Rejected { status: u16, detail: String },
    /// Retries exhausted on 429, 5xx or network errors.
    #[error(
        "Chorus stayed unavailable after {attempts} attempts (last: {last}); try again later, or lower the concurrency if Chorus is rate-limiting"
    )]
    Unavailable { attempts: u32, last: String },
    /// The answer was not what the API promises (bad JSON, wrong shape or content type,
    /// too large). Possibly a garbling proxy, so the pipeline may retry it.
    #[error(
        "Chorus sent a malformed {what}: {detail}; if this persists, check for a proxy between portshift and Chorus or report an API change"
    )]
    Malformed { what: String, detail: String },
    /// The network guard of a console job refused the address (not public, not HTTPS):
    /// permanent, the recording is skipped.
    #[error("refused to connect for the {what}: {detail}")]
    Refused { what: String, detail: String },
    /// The HTTP client could not be set up (CA bundle).
    #[error(transparent)]
    Setup(#[from] HttpSetupError),
    /// The client configuration is unusable (URL, token format).
    #[error("invalid Chorus client configuration: {detail}")]
    Config { detail: String },
}

fn code_and_detail(code: &Option<String>, detail: &str) -> String {
    match (code.as_deref(), detail.is_empty()) {
        (Some(code), false) => format!(", code {code}: {detail}"),
        (Some(code), true) => format!(", code {code}"),
        (None, false) => format!(": {detail}"),
        (None, true) => String::new(),
    }
}

impl ChorusError {
    /// Retrying will not help: the recording is skipped with this reason.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ChorusError::NotFound { .. }
                | ChorusError::Rejected { .. }
                | ChorusError::UnusableId { .. }
                | ChorusError::Refused { .. }
        )
    }

    /// The whole job must stop (and wait for a new token).
    pub fn is_job_fatal(&self) -> bool {
        matches!(self, ChorusError::Unauthorized { .. })
    }
}

/// The listing filter; dates are sent as RFC 3339 (`2024-01-01T00:00:00Z`).
#[derive(Debug, Clone, PartialEq)]
pub struct EngagementFilter {
    pub min_date: DateTime<Utc>,
    pub max_date: DateTime<Utc>,
    /// `meeting`, `dialer`, ... or `None` for all types.
    pub engagement_type: Option<String>,
}

/// An open media download. `body` ends in an `Err` if fewer (or more) bytes arrive than
/// `content_length` promised, so a truncated file is never mistaken for a complete one.
pub struct MediaStream {
    /// The media type without parameters, lower case (`video/mp4`).
    pub content_type: String,
    /// File extension for `content_type` (`mp4`, `mp3`, `m4a`, `wav`, `webm`, `ogg`, `bin`).
    pub extension: &'static str,
    pub content_length: Option<u64>,
    pub body: BoxStream<'static, Result<Bytes, io::Error>>,
}

impl fmt::Debug for MediaStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaStream")
            .field("content_type", &self.content_type)
            .field("extension", &self.extension)
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

/// The file extension for a media type (parameters and case ignored).
pub fn extension_for(content_type: &str) -> &'static str {
    match essence(content_type).as_str() {
        "video/mp4" => "mp4",
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/mp4" | "audio/x-m4a" | "audio/m4a" => "m4a",
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => "wav",
        "video/webm" | "audio/webm" => "webm",
        "audio/ogg" | "video/ogg" => "ogg",
        _ => "bin",
    }
}

/// The Chorus API client. Cheap to clone: clones share connections and counters.
#[derive(Clone)]
pub struct ChorusClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Requests to the API origin (carry the token); redirects are never followed.
    api: reqwest::Client,
    /// Requests to other origins (media storage); never given the token.
    media: reqwest::Client,
    base: Url,
    auth: HeaderValue,
    /// Only to scrub the token from text a server echoes back into an error.
    token: SecretString,
    egress: Egress,
    max_attempts: u32,
    base_backoff: Duration,
    max_backoff: Duration,
    retries: AtomicU64,
    budget: Option<Arc<RequestBudget>>,
}

impl fmt::Debug for ChorusClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChorusClient")
            .field("base_url", &self.inner.base.as_str())
            .field("retries", &self.retries())
            .finish_non_exhaustive()
    }
}

/// One attempt's outcome when it did not fail for good.
enum Step<T> {
    Done(T),
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
}

impl ChorusClient {
    pub fn new(config: ChorusConfig) -> Result<Self, ChorusError> {
        let mut base = config.base_url;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(ChorusError::Config {
                detail: format!(
                    "the Chorus API URL {base} must be an http(s) URL such as https://chorus.ai/"
                ),
            });
        }
        base.set_query(None);
        base.set_fragment(None);
        config
            .egress
            .check_url("Chorus API address", &base)
            .map_err(|e| ChorusError::Config {
                detail: e.to_string(),
            })?;
        let token = config.token.expose_secret().trim();
        if token.is_empty() {
            return Err(ChorusError::Config {
                detail: "the Chorus API token is empty: set CHORUS_API_TOKEN".into(),
            });
        }
        let mut auth = HeaderValue::from_str(token).map_err(|_| ChorusError::Config {
            detail: "the Chorus API token contains characters an HTTP header cannot carry \
                     (a line break or non-ASCII text?): check CHORUS_API_TOKEN"
                .into(),
        })?;
        auth.set_sensitive(true);
        let build = |what: &str| -> Result<reqwest::Client, ChorusError> {
            guarded_client_builder(config.extra_ca_file.as_deref(), &config.egress)?
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| ChorusError::Config {
                    detail: format!("cannot build the {what} HTTP client: {}", error_chain(&e)),
                })
        };
        Ok(ChorusClient {
            inner: Arc::new(Inner {
                api: build("Chorus API")?,
                media: build("media download")?,
                base,
                auth,
                token: SecretString::from(token.to_owned()),
                egress: config.egress.clone(),
                max_attempts: config.max_attempts.max(1),
                base_backoff: config.base_backoff,
                max_backoff: config.max_backoff,
                retries: AtomicU64::new(0),
                budget: config.budget,
            }),
        })
    }

    /// Requests retried so far (all kinds), for the job report.
    pub fn retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    /// The request budget this client spends, if any.
    pub fn budget(&self) -> Option<&Arc<RequestBudget>> {
        self.inner.budget.as_ref()
    }

    /// Waits for a slot of the request budget (if any).
    async fn spend(&self) {
        if let Some(budget) = &self.inner.budget {
            budget.acquire().await;
        }
    }

    /// Tells the budget about a 429 from the API's own origin.
    async fn note_throttled(&self, response: &reqwest::Response) {
        if response.status() == StatusCode::TOO_MANY_REQUESTS
            && let Some(budget) = &self.inner.budget
        {
            budget
                .throttled(retry_after(response.headers(), Utc::now()))
                .await;
        }
    }

    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// One page of `GET /v3/engagements`. `continuation_key` `None` asks for the first
    /// page; use [`EngagementPage::next_key`] to decide whether to ask for another.
    pub async fn list_engagements(
        &self,
        filter: &EngagementFilter,
        continuation_key: Option<&str>,
    ) -> Result<EngagementPage, ChorusError> {
        let mut url = self.endpoint(&["v3", "engagements"])?;
        let min = rfc3339(filter.min_date);
        let max = rfc3339(filter.max_date);
        // Only parameter names from the spec: Chorus reportedly ignores unknown ones, so a
        // typo would silently widen the listing.
        let mut query = vec![("min_date", min.as_str()), ("max_date", max.as_str())];
        if let Some(t) = filter.engagement_type.as_deref() {
            query.push(("engagement_type", t));
        }
        if let Some(key) = continuation_key {
            query.push(("continuation_key", key));
        }
        url.set_query(Some(&encode_query(&query)));
        let what = "engagement listing";
        let body = self
            .with_retries(what, || self.get_json_once(&url, what, None))
            .await?;
        parse_engagement_page(&body).map_err(|detail| ChorusError::Malformed {
            what: "engagement listing page".into(),
            detail,
        })
    }

    /// `GET /api/v1/conversations/{id}?fields=...`: the JSON:API `data` object, after
    /// checking the envelope (`data` with the right `id` and an `attributes` object).
    pub async fn conversation(&self, id: &str, fields: &[&str]) -> Result<Value, ChorusError> {
        let mut url = self.endpoint(&["api", "v1", "conversations", id])?;
        if !fields.is_empty() {
            let joined = fields.join(",");
            url.set_query(Some(&encode_query(&[("fields", joined.as_str())])));
        }
        let what = "conversation";
        let body = self
            .with_retries(what, || self.get_json_once(&url, what, Some(id)))
            .await?;
        parse_conversation(&body, id).map_err(|detail| ChorusError::Malformed {
            what: format!("conversation {id}"),
            detail,
        })
    }

    /// The transcript: the `recording.utterances` array of the conversation.
    pub async fn transcript(&self, id: &str) -> Result<Value, ChorusError> {
        Ok(self.transcript_version(id).await?.0)
    }

    /// The transcript and the conversation's `_modified_at` read in the same call (the
    /// version the transcript belongs to; `None` when Chorus leaves it out).
    pub async fn transcript_version(
        &self,
        id: &str,
    ) -> Result<(Value, Option<String>), ChorusError> {
        let mut data = self
            .conversation(id, &["recording.utterances", "_modified_at"])
            .await?;
        let modified = modified_at(&data);
        match data.pointer_mut("/attributes/recording/utterances") {
            Some(utterances @ Value::Array(_)) => Ok((utterances.take(), modified)),
            Some(other) => Err(ChorusError::Malformed {
                what: format!("transcript of {id}"),
                detail: format!(
                    "`recording.utterances` must be an array, found {}",
                    kind(other)
                ),
            }),
            None => Err(ChorusError::Malformed {
                what: format!("transcript of {id}"),
                detail: "the conversation has no `recording.utterances`".into(),
            }),
        }
    }

    /// Opens the media of a conversation: `GET .../media`, following up to 5 redirects by
    /// hand. The token goes only to the API's own origin (scheme, host and port), never
    /// to a storage host. A refused or expired link is retried with a fresh one.
    pub async fn media(&self, id: &str) -> Result<MediaStream, ChorusError> {
        let url = self.endpoint(&["api", "v1", "conversations", id, "media"])?;
        self.with_retries("media download", || self.media_once(id, &url))
            .await
    }

    async fn media_once(&self, id: &str, start: &Url) -> Result<Step<MediaStream>, ChorusError> {
        let api_origin = self.inner.base.origin();
        let mut url = start.clone();
        for hop in 0..=MAX_REDIRECTS {
            let own_origin = url.origin() == api_origin;
            if own_origin {
                self.spend().await;
            }
            let request = if own_origin {
                self.inner
                    .api
                    .get(url.clone())
                    .header(AUTHORIZATION, self.inner.auth.clone())
            } else {
                self.inner.media.get(url.clone())
            };
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => return self.transport_step(e, "media download"),
            };
            let status = response.status();
            if own_origin {
                self.note_throttled(&response).await;
            }
            if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                if hop == MAX_REDIRECTS {
                    return Err(ChorusError::Malformed {
                        what: format!("media redirect for {id}"),
                        detail: format!("more than {MAX_REDIRECTS} redirects"),
                    });
                }
                url = redirect_target(&url, response.headers()).map_err(|detail| {
                    ChorusError::Malformed {
                        what: format!("media redirect for {id}"),
                        detail,
                    }
                })?;
                self.inner
                    .egress
                    .check_url("media redirect", &url)
                    .map_err(|e| ChorusError::Refused {
                        what: format!("media of {id}"),
                        detail: e.to_string(),
                    })?;
                continue;
            }
            if status == StatusCode::OK {
                return MediaStream::from_response(response, id).map(Step::Done);
            }
            if !own_origin && matches!(status.as_u16(), 401 | 403 | 410) {
                // A storage host refusing a pre-signed link means the link expired (or
                // was garbled): asking Chorus again yields a fresh one.
                return Ok(Step::Retry {
                    reason: format!(
                        "the media host {} refused the download link (HTTP {status})",
                        origin_text(&url)
                    ),
                    retry_after: None,
                });
            }
            if status.is_success() {
                return Err(ChorusError::Malformed {
                    what: format!("media response for {id}"),
                    detail: format!("expected HTTP 200 with the file, got HTTP {status}"),
                });
            }
            return self.failure(response, "media download", Some(id)).await;
        }
        // The loop returns on every path; this only satisfies the type checker.
        Err(ChorusError::Malformed {
            what: format!("media redirect for {id}"),
            detail: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// One GET of a JSON endpoint: the body bytes, or why to retry, or a final error.
    async fn get_json_once(
        &self,
        url: &Url,
        what: &str,
        id: Option<&str>,
    ) -> Result<Step<Vec<u8>>, ChorusError> {
        self.spend().await;
        let sent = self
            .inner
            .api
            .get(url.clone())
            .header(AUTHORIZATION, self.inner.auth.clone())
            .header(ACCEPT, "application/vnd.api+json, application/json")
            .timeout(JSON_REQUEST_TIMEOUT)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return self.transport_step(e, what),
        };
        let status = response.status();
        if !status.is_success() {
            self.note_throttled(&response).await;
            return self.failure(response, what, id).await;
        }
        let content_type = header_text(response.headers(), CONTENT_TYPE);
        if !is_json(&content_type) {
            return Err(ChorusError::Malformed {
                what: what.into(),
                detail: if content_type.is_empty() {
                    "the answer has no content type (expected JSON)".into()
                } else {
                    format!("expected JSON, got content type {}", essence(&content_type))
                },
            });
        }
        match read_limited(response, MAX_JSON_BYTES).await {
            Ok(Some(body)) => Ok(Step::Done(body)),
            Ok(None) => Err(ChorusError::Malformed {
                what: what.into(),
                detail: format!("the answer is larger than {} MiB", MAX_JSON_BYTES >> 20),
            }),
            Err(e) => self.transport_step(e, what),
        }
    }

    /// A failed request (no response, or the body broke off): retry unless the
    /// request itself could not be built.
    fn transport_step<T>(&self, e: reqwest::Error, what: &str) -> Result<Step<T>, ChorusError> {
        // Without the URL: a storage link's query string is a credential of sorts.
        let e = e.without_url();
        let text = self.redact(error_chain(&e));
        if let Some(refused) = egress_refusal(&e) {
            return Err(ChorusError::Refused {
                what: what.into(),
                detail: refused.to_string(),
            });
        }
        if e.is_builder() {
            return Err(ChorusError::Config {
                detail: format!("cannot build the {what} request: {text}"),
            });
        }
        Ok(Step::Retry {
            reason: format!("{what}: {text}"),
            retry_after: None,
        })
    }

    /// A non-success status: retry (429, 408, 5xx) or the matching error.
    async fn failure<T>(
        &self,
        response: reqwest::Response,
        what: &str,
        id: Option<&str>,
    ) -> Result<Step<T>, ChorusError> {
        let status = response.status();
        let retry_after = retry_after(response.headers(), Utc::now());
        let content_type = header_text(response.headers(), CONTENT_TYPE);
        // The body only explains the error; if it cannot be read, the status still can.
        let body = read_limited(response, MAX_ERROR_BYTES)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let errors = ApiErrors::parse(&body, &content_type);
        let detail = self.redact(errors.detail.clone());
        match status.as_u16() {
            408 | 429 | 500..=599 => Ok(Step::Retry {
                reason: if detail.is_empty() {
                    format!("{what}: HTTP {status}")
                } else {
                    format!("{what}: HTTP {status}: {detail}")
                },
                retry_after,
            }),
            401 | 403 => Err(ChorusError::Unauthorized {
                status: status.as_u16(),
                code: errors.code.map(|c| self.redact(c)),
                detail,
            }),
            404 => match id {
                Some(id) => Err(ChorusError::NotFound { id: id.to_owned() }),
                None => Err(ChorusError::Rejected {
                    status: 404,
                    detail: format!(
                        "the {what} endpoint was not found under {}: check the Chorus API URL",
                        self.inner.base
                    ),
                }),
            },
            300..=399 => Err(ChorusError::Rejected {
                status: status.as_u16(),
                detail: format!(
                    "unexpected redirect for the {what}: check the Chorus API URL (it may need https)"
                ),
            }),
            _ => Err(ChorusError::Rejected {
                status: status.as_u16(),
                detail: if detail.is_empty() {
                    format!("{what} refused without explanation")
                } else {
                    detail
                },
            }),
        }
    }

    /// Runs `attempt` until it is done, fails for good, or `max_attempts` is used up,
    /// with the shared backoff (at least `Retry-After`, capped at 2 minutes).
    async fn with_retries<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, ChorusError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Step<T>, ChorusError>>,
    {
        let policy = RetryPolicy {
            tries: self.inner.max_attempts,
            base: self.inner.base_backoff,
            max: self.inner.max_backoff,
        };
        let result = policy
            .run(
                |_| {
                    let attempt = attempt();
                    async move {
                        match attempt.await {
                            Ok(Step::Done(value)) => Outcome::Done(value),
                            // Carried as the error a last failed try becomes.
                            Ok(Step::Retry {
                                reason,
                                retry_after,
                            }) => Outcome::Retry {
                                error: ChorusError::Unavailable {
                                    attempts: 0,
                                    last: reason,
                                },
                                at_least: retry_after.map(|wait| wait.min(MAX_RETRY_AFTER)),
                            },
                            Err(e) => Outcome::Fail(e),
                        }
                    }
                },
                |made, error, delay| {
                    self.inner.retries.fetch_add(1, Ordering::Relaxed);
                    if let ChorusError::Unavailable { last: reason, .. } = error {
                        tracing::info!(
                            what,
                            attempt = made,
                            delay_ms = delay.as_millis() as u64,
                            reason = %reason,
                            "Chorus request failed; retrying."
                        );
                    }
                },
            )
            .await;
        match result {
            Ok(value) => Ok(value),
            Err(GaveUp::Failed(e)) => Err(e),
            Err(GaveUp::Exhausted {
                tries,
                last: ChorusError::Unavailable { last, .. },
            }) => {
                tracing::warn!(what, attempts = tries, reason = %last, "Chorus request failed; giving up.");
                Err(ChorusError::Unavailable {
                    attempts: tries,
                    last,
                })
            }
            Err(GaveUp::Exhausted { last, .. }) => Err(last),
        }
    }

    /// `base` + path segments (each percent-encoded whole, so an odd id cannot change the
    /// path). Empty, `.` and `..` segments are refused: URL path normalisation would drop
    /// them, so the request would address another resource.
    fn endpoint(&self, segments: &[&str]) -> Result<Url, ChorusError> {
        if let Some(bad) = segments.iter().find(|s| matches!(**s, "" | "." | "..")) {
            return Err(ChorusError::UnusableId {
                shown: format!("{bad:?}"),
            });
        }
        let mut url = self.inner.base.clone();
        if url.cannot_be_a_base() {
            return Err(ChorusError::Config {
                detail: format!("the Chorus API URL {} cannot take a path", self.inner.base),
            });
        }
        append_segments(&mut url, segments);
        Ok(url)
    }

    fn redact(&self, text: String) -> String {
        let token = self.inner.token.expose_secret();
        if token.len() >= 4 && text.contains(token) {
            text.replace(token, "[redacted]")
        } else {
            text
        }
    }
}

impl MediaStream {
    fn from_response(response: reqwest::Response, id: &str) -> Result<Self, ChorusError> {
        let raw_type = header_text(response.headers(), CONTENT_TYPE);
        let content_type = if raw_type.is_empty() {
            "application/octet-stream".to_owned()
        } else {
            essence(&raw_type)
        };
        // An HTML or JSON "200" is an error page (a proxy's, or a login page), not media.
        if content_type == "text/html" || is_json(&content_type) {
            return Err(ChorusError::Malformed {
                what: format!("media response for {id}"),
                detail: format!("expected audio or video, got content type {content_type}"),
            });
        }
        let content_length = response.content_length();
        let body = CheckedBody {
            inner: response.bytes_stream().boxed(),
            id: id.to_owned(),
            expected: content_length,
            received: 0,
            done: false,
        };
        Ok(MediaStream {
            extension: extension_for(&content_type),
            content_type,
            content_length,
            body: body.boxed(),
        })
    }
}

/// The media body, checked against `Content-Length`: too few bytes (however the
/// connection ended) or too many end the stream with an error.
struct CheckedBody {
    inner: BoxStream<'static, reqwest::Result<Bytes>>,
    id: String,
    expected: Option<u64>,
    received: u64,
    done: bool,
}

impl CheckedBody {
    fn cut_short(&self, cause: Option<String>) -> io::Error {
        let received = self.received;
        let mut msg = match self.expected {
            Some(expected) => format!(
                "the media body of {} was cut short after {received} of {expected} bytes",
                self.id
            ),
            None => format!(
                "the media body of {} broke off after {received} bytes",
                self.id
            ),
        };
        if let Some(cause) = cause {
            msg.push_str(": ");
            msg.push_str(&cause);
        }
        io::Error::new(io::ErrorKind::UnexpectedEof, msg)
    }
}

impl Stream for CheckedBody {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.received += chunk.len() as u64;
                match this.expected {
                    Some(expected) if this.received > expected => {
                        this.done = true;
                        Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "the media body of {} is longer than its Content-Length of {expected} bytes",
                                this.id
                            ),
                        ))))
                    }
                    _ => Poll::Ready(Some(Ok(chunk))),
                }
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                let timed_out = e.is_timeout();
                let cause = error_chain(&e.without_url());
                let err = if timed_out {
                    let inner = this.cut_short(Some(cause));
                    io::Error::new(io::ErrorKind::TimedOut, inner.to_string())
                } else {
                    this.cut_short(Some(cause))
                };
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => {
                this.done = true;
                match this.expected {
                    Some(expected) if this.received < expected => {
                        Poll::Ready(Some(Err(this.cut_short(None))))
                    }
                    _ => Poll::Ready(None),
                }
            }
        }
    }
}

/// The JSON:API `errors[]` of an error answer, condensed for a message.
#[derive(Debug, Default)]
struct ApiErrors {
    code: Option<String>,
    detail: String,
}

impl ApiErrors {
    fn parse(body: &[u8], content_type: &str) -> Self {
        let mut out = ApiErrors::default();
        if let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(body) {
            if let Some(Value::Array(errors)) = doc.get("errors") {
                let mut parts = Vec::new();
                for error in errors.iter().take(5) {
                    let field = |name: &str| match error.get(name) {
                        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
                        Some(Value::Number(n)) => Some(n.to_string()),
                        _ => None,
                    };
                    if out.code.is_none() {
                        out.code = field("code");
                    }
                    let text = match (field("title"), field("detail")) {
                        (Some(t), Some(d)) if t != d => format!("{t}: {d}"),
                        (Some(t), _) => t,
                        (None, Some(d)) => d,
                        (None, None) => continue,
                    };
                    parts.push(text);
                }
                out.detail = parts.join("; ");
                return out;
            }
            if let Some(Value::String(message)) = doc.get("message").or_else(|| doc.get("error")) {
                out.detail = message.clone();
                return out;
            }
        }
        let content_type = essence(content_type);
        if content_type == "text/html" {
            out.detail = "(an HTML page instead of an API error)".into();
        } else if content_type.starts_with("text/") || is_json(&content_type) {
            let text = String::from_utf8_lossy(body);
            let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            out.detail = line.chars().take(200).collect();
        }
        out
    }
}

/// Reads at most `limit` bytes of a body: `None` if it is larger.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The next URL of a redirect, resolved against the current one. Only http(s), and
/// never from https down to http.
fn redirect_target(current: &Url, headers: &HeaderMap) -> Result<Url, String> {
    let location = headers
        .get(LOCATION)
        .ok_or("a redirect without a Location header")?
        .to_str()
        .map_err(|_| "a redirect Location that is not text".to_owned())?;
    let next = current
        .join(location)
        .map_err(|e| format!("a redirect Location that is not a URL ({e})"))?;
    match (current.scheme(), next.scheme()) {
        ("https", "http") => Err("refusing a redirect from https to plain http".into()),
        (_, "http" | "https") => Ok(next),
        (_, other) => Err(format!("refusing a redirect to a {other}: URL")),
    }
}

/// `Retry-After` as a duration: delta-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

fn header_text(headers: &HeaderMap, name: reqwest::header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// `Type/Sub; charset=x` → `type/sub`.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn is_json(content_type: &str) -> bool {
    let essence = essence(content_type);
    essence == "application/json"
        || essence == "application/vnd.api+json"
        || essence.ends_with("+json")
}

/// `scheme://host:port` of a URL: enough to name a host without its signed query.
fn origin_text(url: &Url) -> String {
    url.origin().ascii_serialization()
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Appends `segments` to `url`'s path, each percent-encoded whole (everything but RFC
/// 3986 unreserved characters). Unlike `Url::path_segments_mut`, which follows the URL
/// standard in silently removing tabs and line breaks (`a\nb` would request `ab`, another
/// recording) and skipping `.` and `..`, every byte of a segment reaches the server.
/// Callers refuse empty, `.` and `..` segments, which no server would keep.
pub(crate) fn append_segments(url: &mut Url, segments: &[&str]) {
    let mut path = url.path().trim_end_matches('/').to_owned();
    for segment in segments {
        path.push('/');
        push_encoded(&mut path, segment);
    }
    url.set_path(&path);
}

fn push_encoded(out: &mut String, text: &str) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

/// Percent-encodes a query (everything but RFC 3986 unreserved characters), so a space
/// becomes `%20`, which every server decodes, rather than the form encoding's `+`.
fn encode_query(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        push_encoded(&mut out, name);
        out.push('=');
        push_encoded(&mut out, value);
    }
    out
}
