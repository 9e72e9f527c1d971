//! The Chorus API simulator: an axum server that serves a [`Dataset`] the way the real
//! API does (raw-token auth, `/v3/engagements` continuation-key paging, JSON:API
//! conversations, media by redirect to a separate host) and injects the faults the
//! exporter must survive (429 bursts with `Retry-After`, 5xx, truncated media, latency).
//!
//! Two listeners, so the media host is a different origin from the API: the media host
//! rejects any request carrying an `Authorization` header, which is how tests prove the
//! token is never forwarded to storage. `/_sim/*` admin routes on the API listener let
//! another process change faults, add recordings and read the counters.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use url::Url;

use super::synth::{Dataset, Knobs, MediaSizes, SynthRecording, fill_media};

/// Media bodies are streamed in chunks of this size.
const CHUNK: usize = 64 * 1024;

/// Lifetime of a media link handed out by the redirect.
const LINK_TTL_SECS: i64 = 15 * 60;

/// Most recordings one `/_sim/recordings` call may add.
const MAX_ADD: usize = 1_000_000;

/// What to simulate.
#[derive(Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub recordings: usize,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub sizes: MediaSizes,
    /// Engagements per listing page (100 like the real API).
    pub page_size: usize,
    /// The only accepted `Authorization` header value.
    pub token: String,
    /// Every n-th recording is private (never listed, 404); 0 = none.
    pub private_every: u64,
    /// Every n-th recording is deleted (listed, but 404 on details and media); 0 = none.
    pub deleted_every: u64,
    /// Every n-th recording is an `unrecorded_meeting` (listed, no media); 0 = none.
    pub unrecorded_every: u64,
    pub faults: Faults,
    /// Test-only: the first recordings get these ids instead of generated ones (see
    /// [`Dataset::set_ids`]), to export hostile ids (`../x`, newlines, NUL, look-alike
    /// letters, very long ids) end to end. Empty by default.
    pub hostile_ids: Vec<String>,
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("seed", &self.seed)
            .field("recordings", &self.recordings)
            .field("from", &self.from)
            .field("to", &self.to)
            .field("sizes", &self.sizes)
            .field("page_size", &self.page_size)
            .field("token", &"[redacted]")
            .field("private_every", &self.private_every)
            .field("deleted_every", &self.deleted_every)
            .field("unrecorded_every", &self.unrecorded_every)
            .field("faults", &self.faults)
            .field("hostile_ids", &self.hostile_ids.len())
            .finish()
    }
}

impl SimConfig {
    /// The demo set: `recordings` calls during 2024, media 64 KiB to 4 MiB, pages of
    /// 100, token `portshift-sim-token`, no faults.
    pub fn demo(recordings: usize, seed: u64) -> Self {
        let from = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single();
        let to = Utc.with_ymd_and_hms(2024, 12, 31, 23, 59, 59).single();
        SimConfig {
            seed,
            recordings,
            from: from.unwrap_or(DateTime::UNIX_EPOCH),
            to: to.unwrap_or(DateTime::UNIX_EPOCH),
            sizes: MediaSizes::default(),
            page_size: 100,
            token: "portshift-sim-token".into(),
            private_every: 0,
            deleted_every: 0,
            unrecorded_every: 0,
            faults: Faults::default(),
            hostile_ids: Vec::new(),
        }
    }
}

/// Fault injection. Every API and media request rolls the rates independently; a fault
/// is never tied to a recording, so a retried request can succeed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Probability that a request gets 429.
    pub rate_429: f64,
    /// Consecutive 429s once one is rolled (the next `burst_429 - 1` requests get one too).
    pub burst_429: u32,
    /// `Retry-After` sent with each 429 (seconds); 0 = no header.
    pub retry_after_secs: u64,
    /// Probability that a request gets 503 or 500.
    pub rate_5xx: f64,
    /// Probability that a media body is cut short (right `Content-Length`, fewer bytes).
    pub rate_truncate: f64,
    /// Latency added to every API request, milliseconds.
    pub slow_ms: u64,
    /// Media throughput cap, bytes per second; 0 = unlimited.
    pub slow_media_bytes_per_sec: u64,
    /// The next this-many API or media requests get 429 whatever the rates
    /// (deterministic tests).
    pub next_429: u32,
    /// The next this-many API or media requests get 503 whatever the rates.
    pub next_5xx: u32,
    /// The last (short) page of a listing hands out the key of the first page's end
    /// instead of finishing, so paging would loop forever (A -> B -> A).
    pub cyclic_listing: bool,
    /// A hard rate limit on API requests, like a real API's: a request when this many
    /// were answered in the last second gets 429 (with `Retry-After` if
    /// `retry_after_secs` is set); 0 = no limit. The media host is not limited.
    pub limit_per_sec: u32,
}

/// Counters of what the simulator did.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Requests to `/v3` and `/api` routes.
    pub api_requests: AtomicU64,
    /// Requests to the media host.
    pub media_requests: AtomicU64,
    /// API requests refused for a missing or wrong token.
    pub unauthorized: AtomicU64,
    pub faults_429: AtomicU64,
    pub faults_5xx: AtomicU64,
    pub faults_truncated: AtomicU64,
    pub media_bytes_served: AtomicU64,
    /// Media bodies produced to their last byte.
    pub media_completed: AtomicU64,
    /// Media requests refused because they carried an `Authorization` header (must stay 0).
    pub media_auth_rejected: AtomicU64,
    /// API requests refused with 429 by the hard rate limit (`Faults::limit_per_sec`).
    pub rate_limited: AtomicU64,
}

/// A point-in-time copy of [`SimStats`] (what `GET /_sim/stats` returns).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStatsSnapshot {
    pub api_requests: u64,
    pub media_requests: u64,
    pub unauthorized: u64,
    pub faults_429: u64,
    pub faults_5xx: u64,
    pub faults_truncated: u64,
    pub media_bytes_served: u64,
    pub media_completed: u64,
    pub media_auth_rejected: u64,
    #[serde(default)]
    pub rate_limited: u64,
}

impl SimStats {
    pub fn snapshot(&self) -> SimStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimStatsSnapshot {
            api_requests: get(&self.api_requests),
            media_requests: get(&self.media_requests),
            unauthorized: get(&self.unauthorized),
            faults_429: get(&self.faults_429),
            faults_5xx: get(&self.faults_5xx),
            faults_truncated: get(&self.faults_truncated),
            media_bytes_served: get(&self.media_bytes_served),
            media_completed: get(&self.media_completed),
            media_auth_rejected: get(&self.media_auth_rejected),
            rate_limited: get(&self.rate_limited),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct SimState {
    seed: u64,
    token: String,
    page_size: usize,
    media_url: Url,
    dataset: Arc<RwLock<Dataset>>,
    faults: Mutex<Faults>,
    burst_remaining: AtomicU32,
    forced_429: AtomicU32,
    forced_5xx: AtomicU32,
    stats: Arc<SimStats>,
    /// When the API requests of the last second were answered (for `limit_per_sec`).
    answered: Mutex<std::collections::VecDeque<std::time::Instant>>,
}

impl SimState {
    fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_faults(&self, faults: Faults) {
        self.burst_remaining.store(0, Ordering::SeqCst);
        self.forced_429.store(faults.next_429, Ordering::SeqCst);
        self.forced_5xx.store(faults.next_5xx, Ordering::SeqCst);
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Dataset> {
        self.dataset.read().unwrap_or_else(|e| e.into_inner())
    }

    fn add_recordings(&self, n: usize, at: DateTime<Utc>) -> Vec<String> {
        self.dataset
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .add_recordings(n, at)
    }

    /// The hard rate limit: `Some(429)` if `limit` requests were already answered in
    /// the last second, else the request is counted and may go on.
    fn over_limit(&self, faults: &Faults) -> Option<Response> {
        if faults.limit_per_sec == 0 {
            return None;
        }
        let now = std::time::Instant::now();
        let mut answered = self.answered.lock().unwrap_or_else(|e| e.into_inner());
        while answered
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            answered.pop_front();
        }
        if answered.len() >= faults.limit_per_sec as usize {
            drop(answered);
            bump(&self.stats.rate_limited);
            let mut response = api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too Many Requests",
                format!("more than {} requests per second", faults.limit_per_sec),
                None,
            );
            if faults.retry_after_secs > 0 {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(faults.retry_after_secs));
            }
            return Some(response);
        }
        answered.push_back(now);
        None
    }

    /// Rolls the 429 and 5xx faults for one request.
    fn roll_fault(&self) -> Option<Response> {
        let faults = self.faults();
        if take_one(&self.forced_429) || take_one(&self.burst_remaining) {
            return Some(self.too_many_requests(&faults));
        }
        if take_one(&self.forced_5xx) {
            return Some(self.server_error(StatusCode::SERVICE_UNAVAILABLE));
        }
        if faults.rate_429 > 0.0 && fastrand::f64() < faults.rate_429 {
            self.burst_remaining
                .store(faults.burst_429.saturating_sub(1), Ordering::SeqCst);
            return Some(self.too_many_requests(&faults));
        }
        if faults.rate_5xx > 0.0 && fastrand::f64() < faults.rate_5xx {
            let status = if fastrand::bool() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            return Some(self.server_error(status));
        }
        None
    }

    fn too_many_requests(&self, faults: &Faults) -> Response {
        bump(&self.stats.faults_429);
        let mut response = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too Many Requests",
            "simulated rate limit".into(),
            None,
        );
        if faults.retry_after_secs > 0 {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(faults.retry_after_secs));
        }
        response
    }

    fn server_error(&self, status: StatusCode) -> Response {
        bump(&self.stats.faults_5xx);
        api_error(
            status,
            "server_error",
            status.canonical_reason().unwrap_or("Server Error"),
            "simulated server error".into(),
            None,
        )
    }

    /// The signature of a media link: binds id and expiry to this simulator's seed.
    fn link_signature(&self, id: &str, expires: i64) -> String {
        let digest = Sha256::digest(format!("{}:{id}:{expires}", self.seed).as_bytes());
        hex::encode(&digest[..16])
    }

    fn media_link(&self, id: &str) -> (Url, i64) {
        let expires = Utc::now().timestamp() + LINK_TTL_SECS;
        let mut url = self.media_url.clone();
        // Encoded whole, like the client's requests, so odd test ids survive the trip.
        super::client::append_segments(&mut url, &["media", id]);
        url.query_pairs_mut()
            .append_pair("expires", &expires.to_string())
            .append_pair("sig", &self.link_signature(id, expires));
        (url, expires)
    }
}

fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// A running simulator.
pub struct SimHandle {
    /// The API root (pass as the client's base URL).
    pub api_url: Url,
    /// The media host's root (a different origin).
    pub media_url: Url,
    pub stats: Arc<SimStats>,
    state: Arc<SimState>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<io::Result<()>>>,
}

impl SimHandle {
    pub fn set_faults(&self, faults: Faults) {
        self.state.set_faults(faults);
    }

    pub fn faults(&self) -> Faults {
        self.state.faults()
    }

    /// Adds `n` recordings dated `at`; returns their ids.
    pub fn add_recordings(&self, n: usize, at: DateTime<Utc>) -> Vec<String> {
        self.state.add_recordings(n, at)
    }

    /// The dataset being served (shared: changes are visible to the server at once).
    pub fn dataset(&self) -> Arc<RwLock<Dataset>> {
        self.state.dataset.clone()
    }

    pub fn seed(&self) -> u64 {
        self.state.seed
    }

    /// Stops both listeners, letting in-flight requests finish for up to 5 seconds.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the simulator: the API on `api_addr`, the media host on `media_addr` (port 0
/// picks a free port; the chosen ones are in the handle's URLs).
pub async fn start(
    config: SimConfig,
    api_addr: SocketAddr,
    media_addr: SocketAddr,
) -> io::Result<SimHandle> {
    let api_listener = tokio::net::TcpListener::bind(api_addr).await?;
    let media_listener = tokio::net::TcpListener::bind(media_addr).await?;
    let api_url = root_url(api_listener.local_addr()?)?;
    let media_url = root_url(media_listener.local_addr()?)?;

    let mut dataset = Dataset::new(
        config.seed,
        config.recordings,
        config.from,
        config.to,
        config.sizes,
    )
    .with_knobs(Knobs {
        private_every: config.private_every,
        deleted_every: config.deleted_every,
        unrecorded_every: config.unrecorded_every,
    });
    if !config.hostile_ids.is_empty() {
        dataset.set_ids(&config.hostile_ids);
    }
    let stats = Arc::new(SimStats::default());
    let state = Arc::new(SimState {
        seed: config.seed,
        token: config.token,
        page_size: config.page_size.max(1),
        media_url: media_url.clone(),
        dataset: Arc::new(RwLock::new(dataset)),
        faults: Mutex::new(Faults::default()),
        burst_remaining: AtomicU32::new(0),
        forced_429: AtomicU32::new(0),
        forced_5xx: AtomicU32::new(0),
        stats: stats.clone(),
        answered: Mutex::new(std::collections::VecDeque::new()),
    });
    state.set_faults(config.faults);

    let api = Router::new()
        .route("/v3/engagements", get(list_engagements))
        .route("/api/v1/conversations/{id}", get(conversation))
        .route("/api/v1/conversations/{id}/media", get(media_link))
        .route_layer(middleware::from_fn_with_state(state.clone(), api_guard))
        .route("/_sim/faults", post(admin_set_faults).get(admin_get_faults))
        .route("/_sim/recordings", post(admin_add_recordings))
        .route("/_sim/stats", get(admin_stats))
        .fallback(not_found)
        .with_state(state.clone());
    let media = Router::new()
        .route("/media/{id}", get(media_bytes))
        .route_layer(middleware::from_fn_with_state(state.clone(), media_guard))
        .fallback(not_found)
        .with_state(state.clone());

    let (stop, stopped) = watch::channel(false);
    let serve = |listener: tokio::net::TcpListener, router: Router| {
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await
        })
    };
    let tasks = vec![serve(api_listener, api), serve(media_listener, media)];
    Ok(SimHandle {
        api_url,
        media_url,
        stats,
        state,
        stop,
        tasks,
    })
}

/// `http://<addr>/`, with 127.0.0.1 (or ::1) for a wildcard bind so the URL is usable.
fn root_url(addr: SocketAddr) -> io::Result<Url> {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        });
    }
    Url::parse(&format!("http://{addr}/"))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}

/// Latency, faults and the raw-token check, in that order, for every API route.
async fn api_guard(State(state): State<Arc<SimState>>, request: Request, next: Next) -> Response {
    bump(&state.stats.api_requests);
    let faults = state.faults();
    if faults.slow_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.slow_ms)).await;
    }
    if let Some(limited) = state.over_limit(&faults) {
        return limited;
    }
    if let Some(fault) = state.roll_fault() {
        return fault;
    }
    let authorized = request
        .headers()
        .get(AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == state.token.as_bytes());
    if !authorized {
        bump(&state.stats.unauthorized);
        return api_error(
            StatusCode::UNAUTHORIZED,
            "ZI0001",
            "Unauthorized",
            "missing or invalid Authorization header".into(),
            None,
        );
    }
    next.run(request).await
}

/// The media host refuses forwarded credentials before anything else, then rolls faults.
async fn media_guard(State(state): State<Arc<SimState>>, request: Request, next: Next) -> Response {
    bump(&state.stats.media_requests);
    if request.headers().contains_key(AUTHORIZATION) {
        bump(&state.stats.media_auth_rejected);
        return (
            StatusCode::BAD_REQUEST,
            "authorization header must not be forwarded\n",
        )
            .into_response();
    }
    if let Some(fault) = state.roll_fault() {
        return fault;
    }
    next.run(request).await
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn query_param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

const ENGAGEMENT_TYPES: &[&str] = &[
    "meeting",
    "dialer",
    "email",
    "content_viewed",
    "unrecorded_meeting",
];

async fn list_engagements(
    State(state): State<Arc<SimState>>,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let mut bounds = [None, None];
    for (slot, name) in bounds.iter_mut().zip(["min_date", "max_date"]) {
        if let Some(text) = query_param(&pairs, name) {
            match DateTime::parse_from_rfc3339(text) {
                Ok(at) => *slot = Some(at.timestamp()),
                Err(e) => {
                    return api_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_parameter",
                        "Bad Request",
                        format!("{name} must be an RFC 3339 date-time: {e}"),
                        Some(name),
                    );
                }
            }
        }
    }
    let engagement_type = query_param(&pairs, "engagement_type");
    if let Some(t) = engagement_type
        && !ENGAGEMENT_TYPES.contains(&t)
    {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "Bad Request",
            format!(
                "engagement_type must be one of {}",
                ENGAGEMENT_TYPES.join(", ")
            ),
            Some("engagement_type"),
        );
    }
    let cursor = match query_param(&pairs, "continuation_key") {
        None => None,
        // The key handed out with the (empty) last page: the listing is over.
        Some(key) if key.trim().is_empty() => {
            return Json(json!({"continuation_key": " ", "engagements": []})).into_response();
        }
        Some(key) => match parse_key(key) {
            Some(cursor) => Some(cursor),
            None => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    "Bad Request",
                    "unknown continuation_key".into(),
                    Some("continuation_key"),
                );
            }
        },
    };
    let dataset = state.read();
    let page = dataset.list_page(
        bounds[0],
        bounds[1],
        engagement_type,
        cursor.as_ref().map(|(t, id)| (*t, id.as_str())),
        state.page_size,
    );
    // Like the real API, the last non-empty page still carries a key, and the page
    // after it is empty with the key " ".
    let key_after = |r: &&SynthRecording| format!("{}.0 {}", r.date_time, key_id(&r.id));
    let mut key = page.last().map(key_after).unwrap_or_else(|| " ".into());
    if state.faults().cyclic_listing && cursor.is_some() && page.len() < state.page_size {
        let first = dataset.list_page(bounds[0], bounds[1], engagement_type, None, state.page_size);
        if let Some(r) = first.last() {
            key = key_after(r);
        }
    }
    let engagements: Vec<Value> = page.iter().map(|r| dataset.engagement_json(r)).collect();
    Json(json!({"continuation_key": key, "engagements": engagements})).into_response()
}

/// An id as it appears in a continuation key: itself when alphanumeric (as Chorus's
/// are), else `~` and its hex (hostile test ids), so the key stays one clean token.
fn key_id(id: &str) -> String {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        id.to_owned()
    } else {
        format!("~{}", hex::encode(id.as_bytes()))
    }
}

/// `"<epoch>.0 <ID>"` → `(epoch, ID)` (the inverse of the key's [`key_id`]).
fn parse_key(key: &str) -> Option<(i64, String)> {
    let (epoch, id) = key.split_once(' ')?;
    let epoch: f64 = epoch.parse().ok()?;
    let id = match id.strip_prefix('~') {
        Some(hexed) => String::from_utf8(hex::decode(hexed).ok()?).ok()?,
        None if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()) => id.to_owned(),
        None => return None,
    };
    epoch.is_finite().then_some((epoch as i64, id))
}

async fn conversation(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let fields: Vec<&str> = query_param(&pairs, "fields")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .collect();
    let dataset = state.read();
    let Some(recording) = dataset.get(&id).filter(|r| r.is_served()) else {
        return conversation_not_found(&id);
    };
    match dataset.conversation_json(recording, &fields) {
        Ok(doc) => jsonapi(StatusCode::OK, &doc),
        Err(unknown) => api_error(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "Bad Request",
            format!("unknown field {unknown:?}"),
            Some("fields"),
        ),
    }
}

async fn media_link(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let info = query_param(&pairs, "info") == Some("true");
    let (size, content_type) = {
        let dataset = state.read();
        match dataset.get(&id).filter(|r| r.is_served() && r.has_media()) {
            Some(r) => (r.media_size, r.media_content_type),
            None => return conversation_not_found(&id),
        }
    };
    let (link, expires) = state.media_link(&id);
    if info {
        let expires_at = DateTime::from_timestamp(expires, 0)
            .map(|at| at.to_rfc3339())
            .unwrap_or_default();
        return Json(json!({
            "id": id,
            "url": link.as_str(),
            "content_type": content_type,
            "size": size,
            "expires_at": expires_at,
        }))
        .into_response();
    }
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(location) = HeaderValue::from_str(link.as_str()) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

async fn media_bytes(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let expires = query_param(&pairs, "expires").and_then(|e| e.parse::<i64>().ok());
    let signed = match (expires, query_param(&pairs, "sig")) {
        (Some(expires), Some(sig)) => state.link_signature(&id, expires) == sig,
        _ => false,
    };
    if !signed {
        return (StatusCode::FORBIDDEN, "invalid media link signature\n").into_response();
    }
    if expires.is_some_and(|e| e < Utc::now().timestamp()) {
        return (StatusCode::FORBIDDEN, "media link expired\n").into_response();
    }
    let (size, content_type) = {
        let dataset = state.read();
        match dataset.get(&id).filter(|r| r.is_served() && r.has_media()) {
            Some(r) => (r.media_size, r.media_content_type),
            None => return (StatusCode::NOT_FOUND, "no such media\n").into_response(),
        }
    };
    let faults = state.faults();
    let cut = (size > 0 && faults.rate_truncate > 0.0 && fastrand::f64() < faults.rate_truncate)
        .then(|| fastrand::u64(size / 4..=size * 3 / 4).min(size - 1));
    if cut.is_some() {
        bump(&state.stats.faults_truncated);
    }
    let body = MediaBody {
        seed: state.seed,
        id,
        offset: 0,
        size,
        cut,
        bytes_per_sec: faults.slow_media_bytes_per_sec,
        stats: state.stats.clone(),
        finished: false,
    };
    let stream = futures::stream::unfold(body, |mut body| async move {
        let item = body.next_chunk().await?;
        Some((item, body))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
    response
}

/// Generates one media body chunk by chunk, optionally throttled or cut short.
struct MediaBody {
    seed: u64,
    id: String,
    offset: u64,
    size: u64,
    /// Where to break the body off (simulated truncation).
    cut: Option<u64>,
    bytes_per_sec: u64,
    stats: Arc<SimStats>,
    finished: bool,
}

impl MediaBody {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, io::Error>> {
        if self.finished {
            return None;
        }
        let limit = self.cut.unwrap_or(self.size);
        if self.offset >= limit {
            self.finished = true;
            if self.cut.is_some() {
                // An error makes hyper abort the connection mid-body: the client sees
                // fewer bytes than Content-Length promised. The pause first lets hyper
                // flush what it has buffered (else the client might see no answer at all,
                // which tests a different failure).
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "simulated truncation",
                )));
            }
            if self.size == 0 {
                bump(&self.stats.media_completed);
            }
            return None;
        }
        let n = (limit - self.offset).min(CHUNK as u64) as usize;
        if self.bytes_per_sec > 0 {
            let secs = n as f64 / self.bytes_per_sec as f64;
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        }
        let mut buf = vec![0u8; n];
        fill_media(self.seed, &self.id, self.offset, &mut buf);
        self.offset += n as u64;
        self.stats
            .media_bytes_served
            .fetch_add(n as u64, Ordering::Relaxed);
        // Counted here: hyper stops polling once Content-Length bytes are out, so the
        // stream's end is never observed.
        if self.cut.is_none() && self.offset >= self.size {
            bump(&self.stats.media_completed);
        }
        Some(Ok(Bytes::from(buf)))
    }
}

async fn admin_set_faults(
    State(state): State<Arc<SimState>>,
    Json(faults): Json<Faults>,
) -> Response {
    state.set_faults(faults.clone());
    Json(faults).into_response()
}

async fn admin_get_faults(State(state): State<Arc<SimState>>) -> Response {
    Json(state.faults()).into_response()
}

async fn admin_add_recordings(
    State(state): State<Arc<SimState>>,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let count = query_param(&pairs, "count").map(str::parse::<usize>);
    match count {
        Some(Ok(n)) if n <= MAX_ADD => {
            let ids = state.add_recordings(n, Utc::now());
            Json(json!({ "added": ids })).into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            format!("pass ?count=N with N between 0 and {MAX_ADD}\n"),
        )
            .into_response(),
    }
}

async fn admin_stats(State(state): State<Arc<SimState>>) -> Response {
    Json(state.stats.snapshot()).into_response()
}

async fn not_found() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "Not Found",
        "no such route".into(),
        None,
    )
}

fn conversation_not_found(id: &str) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "Not Found",
        format!("conversation {id} not found"),
        None,
    )
}

fn jsonapi(status: StatusCode, doc: &Value) -> Response {
    let mut response = (status, doc.to_string()).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.api+json"),
    );
    response
}

/// A JSON:API error document (`{"errors": [...]}`).
fn api_error(
    status: StatusCode,
    code: &str,
    title: &str,
    detail: String,
    parameter: Option<&str>,
) -> Response {
    let mut error = json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "status": status.as_u16().to_string(),
        "code": code,
        "title": title,
        "detail": detail,
    });
    if let Some(parameter) = parameter {
        error["source"] = json!({ "parameter": parameter });
    }
    jsonapi(status, &json!({ "errors": [error] }))
}
