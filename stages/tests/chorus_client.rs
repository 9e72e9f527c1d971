//! The Chorus client against the simulator (and against a deliberately broken server):
//! paging, auth, not-found, media integrity through the redirect, the token never
//! reaching the media host, retries under injected faults, truncation and malformed
//! answers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{TimeZone, Utc};
use futures::StreamExt;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use stages::chorus::{
    ChorusClient, ChorusConfig, ChorusError, Dataset, Engagement, EngagementFilter, EngagementPage,
    Faults, Knobs, MEDIA_MARKER, MediaSizes, SimConfig, SimHandle, extension_for, fill_media,
    media_sha256,
};
use stages::http::{HttpSetupError, client_builder};

const TOKEN: &str = "test-token-0123456789";

fn any_addr() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn small_config(recordings: usize) -> SimConfig {
    let mut config = SimConfig::demo(recordings, 42);
    config.token = TOKEN.into();
    config.sizes = MediaSizes {
        min: 64 * 1024,
        max: 300 * 1024,
        large_every: 0,
        large_size: 0,
    };
    config
}

async fn start_sim(config: SimConfig) -> SimHandle {
    stages::chorus::sim::start(config, any_addr(), any_addr())
        .await
        .unwrap()
}

fn client_config(base: &url::Url, token: &str) -> ChorusConfig {
    let mut config = ChorusConfig::new(base.clone(), SecretString::from(token.to_owned()));
    config.base_backoff = Duration::from_millis(1);
    config.max_backoff = Duration::from_millis(10);
    config
}

fn client(sim: &SimHandle) -> ChorusClient {
    ChorusClient::new(client_config(&sim.api_url, TOKEN)).unwrap()
}

fn all_of_2024() -> EngagementFilter {
    EngagementFilter {
        min_date: Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(),
        max_date: Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
        engagement_type: None,
    }
}

/// Every page of the listing, following `next_key` like the list stage does.
async fn list_all(client: &ChorusClient, filter: &EngagementFilter) -> (Vec<Engagement>, usize) {
    let mut all = Vec::new();
    let mut key: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = client
            .list_engagements(filter, key.as_deref())
            .await
            .unwrap();
        pages += 1;
        let next = page.next_key(key.as_deref());
        all.extend(page.engagements);
        match next {
            Some(next) => key = Some(next),
            None => break,
        }
        assert!(pages < 1000, "listing does not end");
    }
    (all, pages)
}

async fn read_all(
    mut body: futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// The JSON answer to `request` (which must get one).
async fn json_answer<T: serde::de::DeserializeOwned>(request: reqwest::RequestBuilder) -> T {
    request.send().await.unwrap().json().await.unwrap()
}

/// JSON equality where numbers compare by value (`300` equals `300.0`).
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

#[tokio::test]
async fn pagination_visits_every_listed_recording_exactly_once() {
    let mut config = small_config(50);
    config.page_size = 7;
    config.private_every = 5;
    config.deleted_every = 7;
    let sim = start_sim(config).await;
    let client = client(&sim);

    let (listed, pages) = list_all(&client, &all_of_2024()).await;
    let ids: Vec<&str> = listed.iter().map(|e| e.engagement_id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an engagement was listed twice");

    let dataset = sim.dataset();
    let dataset = dataset.read().unwrap();
    let expected: HashSet<&str> = dataset
        .recordings()
        .iter()
        .filter(|r| !r.private)
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(expected.len(), 40);
    assert_eq!(unique, expected);
    // 40 over pages of 7 = 6 pages, then the empty last page.
    assert_eq!(pages, 7);
    // Newest first.
    let times: Vec<f64> = listed.iter().map(|e| e.date_time.unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]));
    // Deleted ones are listed; metadata is complete (unknown fields kept).
    assert!(
        listed
            .iter()
            .any(|e| dataset.get(&e.engagement_id).unwrap().deleted)
    );
    let first = &listed[0];
    assert!(first.has_recording());
    assert!(first.recorded_at().is_some());
    assert!(first.extra.contains_key("tracker_matches"));
    assert!(!first.participants.is_empty());
    let round_trip = serde_json::to_value(first).unwrap();
    let source = dataset.engagement_json(dataset.get(&first.engagement_id).unwrap());
    assert!(same_json(&round_trip, &source), "{round_trip}\n{source}");
    assert!(
        round_trip["date_time"].is_i64(),
        "whole seconds stay integers"
    );
}

#[tokio::test]
async fn listing_filters_by_type_and_date() {
    let sim = start_sim(small_config(60)).await;
    let client = client(&sim);
    let mut filter = all_of_2024();
    filter.engagement_type = Some("dialer".into());
    let (dialers, _) = list_all(&client, &filter).await;
    assert!(!dialers.is_empty());
    assert!(
        dialers
            .iter()
            .all(|e| e.engagement_type.as_deref() == Some("dialer"))
    );

    let filter = EngagementFilter {
        min_date: Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).unwrap(),
        max_date: Utc.with_ymd_and_hms(2024, 6, 1, 0, 0, 0).unwrap(),
        engagement_type: None,
    };
    let (spring, _) = list_all(&client, &filter).await;
    let dataset = sim.dataset();
    let expected = dataset
        .read()
        .unwrap()
        .recordings()
        .iter()
        .filter(|r| {
            r.date_time >= filter.min_date.timestamp() && r.date_time <= filter.max_date.timestamp()
        })
        .count();
    assert_eq!(spring.len(), expected);
    assert!(spring.iter().all(|e| {
        let at = e.recorded_at().unwrap();
        at >= filter.min_date && at <= filter.max_date
    }));
}

#[tokio::test]
async fn incremental_recordings_appear_in_the_listing() {
    let sim = start_sim(small_config(5)).await;
    let client = client(&sim);
    let at = Utc.with_ymd_and_hms(2024, 12, 31, 12, 0, 0).unwrap();
    let added = sim.add_recordings(3, at);
    assert_eq!(added.len(), 3);
    let (listed, _) = list_all(&client, &all_of_2024()).await;
    assert_eq!(listed.len(), 8);
    let newest: HashSet<&str> = listed[..3]
        .iter()
        .map(|e| e.engagement_id.as_str())
        .collect();
    assert_eq!(newest, added.iter().map(String::as_str).collect());
}

#[tokio::test]
async fn wrong_or_missing_token_is_unauthorized() {
    let sim = start_sim(small_config(3)).await;
    let wrong = "wrong-token-987654321";
    let client = ChorusClient::new(client_config(&sim.api_url, wrong)).unwrap();
    let err = client
        .list_engagements(&all_of_2024(), None)
        .await
        .unwrap_err();
    assert!(err.is_job_fatal(), "{err:?}");
    assert!(!err.is_permanent());
    let ChorusError::Unauthorized { code, .. } = &err else {
        panic!("expected Unauthorized, got {err:?}");
    };
    assert_eq!(code.as_deref(), Some("ZI0001"));
    let message = err.to_string();
    assert!(message.contains("CHORUS_API_TOKEN"), "{message}");
    assert!(!message.contains(wrong) && !format!("{err:?}").contains(wrong));
    assert!(!format!("{client:?}").contains(wrong));
    assert!(!format!("{:?}", client_config(&sim.api_url, wrong)).contains(wrong));

    // No header at all.
    let response = reqwest::get(sim.api_url.join("v3/engagements").unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "ZI0001");
    // A "Bearer" prefix is not the raw token either.
    let response = reqwest::Client::new()
        .get(sim.api_url.join("v3/engagements").unwrap())
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // An empty token is refused before any request.
    let err = ChorusClient::new(client_config(&sim.api_url, "  ")).unwrap_err();
    assert!(matches!(err, ChorusError::Config { .. }), "{err:?}");
}

#[tokio::test]
async fn deleted_private_and_unknown_are_not_found() {
    let mut config = small_config(10);
    config.private_every = 3;
    config.deleted_every = 4;
    let sim = start_sim(config).await;
    let client = client(&sim);
    let (deleted, private) = {
        let dataset = sim.dataset();
        let dataset = dataset.read().unwrap();
        let pick = |f: fn(&stages::chorus::SynthRecording) -> bool| {
            dataset
                .recordings()
                .iter()
                .find(|r| f(r))
                .unwrap()
                .id
                .clone()
        };
        (pick(|r| r.deleted), pick(|r| r.private))
    };
    for id in [
        deleted.as_str(),
        private.as_str(),
        "0123456789ABCDEF0123456789ABCDEF",
    ] {
        let err = client.conversation(id, &["name"]).await.unwrap_err();
        assert!(
            matches!(&err, ChorusError::NotFound { id: got } if got == id),
            "{err:?}"
        );
        assert!(err.is_permanent());
        let err = client.media(id).await.unwrap_err();
        assert!(matches!(err, ChorusError::NotFound { .. }), "{err:?}");
        let err = client.transcript(id).await.unwrap_err();
        assert!(matches!(err, ChorusError::NotFound { .. }), "{err:?}");
    }
    assert_eq!(client.retries(), 0);
}

#[tokio::test]
async fn conversation_fields_and_transcript() {
    let sim = start_sim(small_config(4)).await;
    let client = client(&sim);
    let dataset = sim.dataset();
    let (id, expected_utterances) = {
        let dataset = dataset.read().unwrap();
        let r = &dataset.recordings()[1];
        (r.id.clone(), dataset.utterances(r))
    };
    let data = client
        .conversation(
            &id,
            &["name", "owner", "participants", "recording.start_time"],
        )
        .await
        .unwrap();
    assert_eq!(data["type"], "recording");
    assert_eq!(data["id"], id.as_str());
    let attributes = &data["attributes"];
    assert!(attributes["name"].is_string());
    assert!(attributes["owner"]["email"].is_string());
    assert!(attributes["participants"].is_array());
    assert!(attributes["recording"]["start_time"].is_string());
    assert!(attributes.get("language").is_none());
    assert!(attributes["recording"].get("utterances").is_none());

    let transcript = client.transcript(&id).await.unwrap();
    let utterances = transcript.as_array().unwrap();
    assert!((3..=20).contains(&utterances.len()));
    assert_eq!(transcript, expected_utterances);

    // An unknown field name is the caller's mistake: a permanent rejection.
    let err = client
        .conversation(&id, &["no_such_field"])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChorusError::Rejected { status: 400, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("no_such_field"), "{err}");
}

#[tokio::test]
async fn media_bytes_match_the_synthetic_sha256_and_never_carry_the_token() {
    let sim = start_sim(small_config(6)).await;
    let client = client(&sim);
    let recordings = sim.dataset().read().unwrap().recordings().to_vec();
    for r in &recordings[..4] {
        let media = client.media(&r.id).await.unwrap();
        assert_eq!(media.content_type, r.media_content_type);
        assert_eq!(media.extension, r.media_extension());
        assert_eq!(media.content_length, Some(r.media_size));
        let bytes = read_all(media.body).await.unwrap();
        assert_eq!(bytes.len() as u64, r.media_size);
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        assert_eq!(digest, media_sha256(sim.seed(), &r.id, r.media_size));
        assert!(bytes.starts_with(MEDIA_MARKER));
    }
    let stats = sim.stats.snapshot();
    assert_eq!(stats.media_auth_rejected, 0);
    assert_eq!(stats.media_completed, 4);
    assert_eq!(stats.media_requests, 4);

    // The media API answers with a redirect to the other origin ...
    let raw = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let media_api = sim
        .api_url
        .join(&format!("api/v1/conversations/{}/media", recordings[0].id))
        .unwrap();
    // A GET that carries the API token (what the client must not do to the media host).
    let get_with_token = |url: url::Url| raw.get(url).header(header::AUTHORIZATION, TOKEN).send();
    let response = get_with_token(media_api.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = url::Url::parse(response.headers()[header::LOCATION].to_str().unwrap()).unwrap();
    assert_eq!(location.origin(), sim.media_url.origin());
    assert_ne!(location.origin(), sim.api_url.origin());
    // ... which refuses a request that carries the token, and counts it.
    let response = get_with_token(location.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("must not be forwarded")
    );
    assert_eq!(sim.stats.snapshot().media_auth_rejected, 1);
    // A tampered link is refused too.
    let mut tampered = location.clone();
    tampered.set_query(Some("expires=99999999999&sig=00"));
    assert_eq!(
        raw.get(tampered).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );

    // info=true describes the file instead of redirecting.
    let mut info_url = media_api;
    info_url.set_query(Some("info=true"));
    let info: serde_json::Value = get_with_token(info_url)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["size"], recordings[0].media_size);
    assert_eq!(info["content_type"], recordings[0].media_content_type);
    assert!(
        info["url"]
            .as_str()
            .unwrap()
            .starts_with(sim.media_url.as_str())
    );
}

#[tokio::test]
async fn injected_429_and_5xx_are_retried_until_success() {
    let mut config = small_config(30);
    config.page_size = 4;
    config.faults = Faults {
        rate_429: 0.3,
        burst_429: 2,
        retry_after_secs: 0,
        rate_5xx: 0.2,
        ..Faults::default()
    };
    let sim = start_sim(config).await;
    let mut settings = client_config(&sim.api_url, TOKEN);
    settings.max_attempts = 30;
    let client = ChorusClient::new(settings).unwrap();

    let (listed, _) = list_all(&client, &all_of_2024()).await;
    assert_eq!(listed.len(), 30);
    for e in &listed {
        let data = client
            .conversation(&e.engagement_id, &["name"])
            .await
            .unwrap();
        assert_eq!(data["id"], e.engagement_id.as_str());
    }
    let clone = client.clone();
    let media = clone.media(&listed[0].engagement_id).await.unwrap();
    read_all(media.body).await.unwrap();

    let stats = sim.stats.snapshot();
    assert!(stats.faults_429 > 0 && stats.faults_5xx > 0, "{stats:?}");
    assert!(client.retries() > 0);
    assert_eq!(
        client.retries(),
        clone.retries(),
        "clones share the counter"
    );
    assert_eq!(client.retries(), stats.faults_429 + stats.faults_5xx);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let sim = start_sim(small_config(3)).await;
    sim.set_faults(Faults {
        next_429: 1,
        retry_after_secs: 1,
        ..Faults::default()
    });
    let client = client(&sim);
    let started = Instant::now();
    let page = client.list_engagements(&all_of_2024(), None).await.unwrap();
    assert_eq!(page.engagements.len(), 3);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(client.retries(), 1);
    assert_eq!(sim.stats.snapshot().faults_429, 1);
}

#[tokio::test]
async fn exhausted_retries_are_unavailable() {
    let sim = start_sim(small_config(3)).await;
    sim.set_faults(Faults {
        next_5xx: 10,
        ..Faults::default()
    });
    let mut settings = client_config(&sim.api_url, TOKEN);
    settings.max_attempts = 3;
    let client = ChorusClient::new(settings).unwrap();
    let err = client
        .list_engagements(&all_of_2024(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChorusError::Unavailable { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(!err.is_permanent() && !err.is_job_fatal());
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(client.retries(), 2);
}

#[tokio::test]
async fn truncated_media_ends_in_an_error() {
    let sim = start_sim(small_config(3)).await;
    sim.set_faults(Faults {
        rate_truncate: 1.0,
        ..Faults::default()
    });
    let client = client(&sim);
    let id = sim.dataset().read().unwrap().recordings()[0].id.clone();
    for _ in 0..3 {
        let media = client.media(&id).await.unwrap();
        let mut body = media.body;
        let mut received = 0u64;
        let mut failed = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => received += bytes.len() as u64,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let err = failed.expect("a truncated body must end in an error");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
        assert!(received < media.content_length.unwrap());
        assert!(err.to_string().contains("cut short"), "{err}");
        assert!(
            body.next().await.is_none(),
            "the stream ends after the error"
        );
    }
    assert_eq!(sim.stats.snapshot().faults_truncated, 3);
}

#[tokio::test]
async fn admin_routes_drive_the_simulator() {
    let sim = start_sim(small_config(2)).await;
    let http = reqwest::Client::new();
    let faults = Faults {
        rate_5xx: 0.5,
        ..Faults::default()
    };
    let response = http
        .post(sim.api_url.join("_sim/faults").unwrap())
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sim.faults(), faults);
    // Partial JSON works: missing knobs default to off.
    http.post(sim.api_url.join("_sim/faults").unwrap())
        .json(&serde_json::json!({"slow_ms": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(sim.faults().rate_5xx, 0.0);
    assert_eq!(sim.faults().slow_ms, 1);

    let added: serde_json::Value =
        json_answer(http.post(sim.api_url.join("_sim/recordings?count=3").unwrap())).await;
    assert_eq!(added["added"].as_array().unwrap().len(), 3);
    assert_eq!(sim.dataset().read().unwrap().recordings().len(), 5);

    let stats: stages::chorus::SimStatsSnapshot =
        json_answer(http.get(sim.api_url.join("_sim/stats").unwrap())).await;
    assert_eq!(stats, sim.stats.snapshot());
    sim.shutdown().await;
}

// ---- a deliberately broken server ----

#[derive(Clone, Default)]
struct Broken {
    mode: Arc<Mutex<&'static str>>,
}

impl Broken {
    fn set(&self, mode: &'static str) {
        *self.mode.lock().unwrap() = mode;
    }
}

fn typed(content_type: &'static str, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn broken_answer(State(broken): State<Broken>) -> Response {
    let mode = *broken.mode.lock().unwrap();
    match mode {
        "garbage" => typed("application/json", "{\"continuation_key\": \"x\", \"engag"),
        "wrong-id-type" => typed(
            "application/json",
            r#"{"continuation_key":"k","engagements":[{"engagement_id":"A1"},{"engagement_id":17}]}"#,
        ),
        "wrong-field-type" => typed(
            "application/json",
            r#"{"continuation_key":"k","engagements":[{"engagement_id":"A1","date_time":"secret@example.com"}]}"#,
        ),
        "wrong-participant" => typed(
            "application/json",
            r#"{"engagements":[{"engagement_id":"A1","participants":[{"name":"x"},{"email":5}]}]}"#,
        ),
        "not-an-object" => typed("application/json", "[1,2,3]"),
        "html" => typed("text/html", "<html><body>Sign in</body></html>"),
        "no-content-type" => Response::new(Body::from("{}")),
        "too-big" => typed(
            "application/json",
            vec![b' '; stages::chorus::MAX_JSON_BYTES + 1],
        ),
        "too-big-chunked" => {
            let chunk = bytes::Bytes::from(vec![b' '; 1024 * 1024]);
            let stream =
                futures::stream::iter((0..40).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
            typed("application/json", Body::from_stream(stream))
        }
        "no-data" => typed("application/vnd.api+json", r#"{"meta":{}}"#),
        "other-id" => typed(
            "application/vnd.api+json",
            r#"{"data":{"type":"recording","id":"OTHER","attributes":{}}}"#,
        ),
        "no-utterances" => typed(
            "application/vnd.api+json",
            r#"{"data":{"type":"recording","id":"A1","attributes":{"recording":{}}}}"#,
        ),
        "bad-request" => {
            let mut response = typed(
                "application/vnd.api+json",
                r#"{"errors":[{"status":"400","code":"bad_param","title":"Bad Request","detail":"min_date is invalid"}]}"#,
            );
            *response.status_mut() = StatusCode::BAD_REQUEST;
            response
        }
        "echo-token" => {
            let mut response = typed(
                "application/json",
                format!(r#"{{"errors":[{{"detail":"token {TOKEN} is not allowed here"}}]}}"#),
            );
            *response.status_mut() = StatusCode::FORBIDDEN;
            response
        }
        "media-html" => typed("text/html", "<html>error</html>"),
        "media-short" => {
            // Promises 1000 bytes, sends 10 and breaks off (after a pause, so hyper has
            // flushed the head and the 10 bytes before it aborts the connection).
            let stream = futures::stream::unfold(0, |step| async move {
                match step {
                    0 => Some((Ok(bytes::Bytes::from_static(b"0123456789")), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Some((Err(std::io::Error::other("boom")), 2))
                    }
                    _ => None,
                }
            });
            let mut response = typed("audio/mpeg", Body::from_stream(stream));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("1000"));
            response
        }
        "media-loop" => found("/api/v1/conversations/A1/media"),
        "media-ftp" => found("ftp://example.com/x"),
        _ => StatusCode::IM_A_TEAPOT.into_response(),
    }
}

/// A 302 redirect to `location`.
fn found(location: &'static str) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(location));
    response
}

async fn start_broken() -> (Broken, url::Url) {
    let broken = Broken::default();
    let router = Router::new()
        .route("/v3/engagements", get(broken_answer))
        .route("/api/v1/conversations/{id}", get(broken_answer))
        .route("/api/v1/conversations/{id}/media", get(broken_answer))
        .with_state(broken.clone());
    let listener = tokio::net::TcpListener::bind(any_addr()).await.unwrap();
    let url = url::Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (broken, url)
}

#[tokio::test]
async fn malformed_answers_are_errors_not_panics() {
    let (broken, base) = start_broken().await;
    let client = ChorusClient::new(client_config(&base, TOKEN)).unwrap();
    let filter = all_of_2024();

    let listing_error = |mode: &'static str| {
        broken.set(mode);
        let client = client.clone();
        let filter = filter.clone();
        async move { client.list_engagements(&filter, None).await.unwrap_err() }
    };
    for mode in [
        "garbage",
        "not-an-object",
        "html",
        "no-content-type",
        "too-big",
        "too-big-chunked",
    ] {
        let err = listing_error(mode).await;
        assert!(
            matches!(err, ChorusError::Malformed { .. }),
            "{mode}: {err:?}"
        );
        assert!(!err.is_permanent() && !err.is_job_fatal(), "{mode}");
    }
    let err = listing_error("wrong-id-type").await;
    assert!(
        err.to_string().contains("engagements[1].engagement_id"),
        "{err}"
    );
    let err = listing_error("wrong-field-type").await;
    let text = err.to_string();
    assert!(text.contains("engagements[0].date_time"), "{text}");
    assert!(
        !text.contains("secret@example.com"),
        "values stay out of errors: {text}"
    );
    let err = listing_error("wrong-participant").await;
    assert!(
        err.to_string()
            .contains("engagements[0].participants[1].email"),
        "{err}"
    );

    let err = listing_error("bad-request").await;
    let ChorusError::Rejected { status, detail } = &err else {
        panic!("expected Rejected, got {err:?}");
    };
    assert_eq!(*status, 400);
    assert!(detail.contains("min_date is invalid"), "{detail}");
    assert!(err.is_permanent());

    let err = listing_error("echo-token").await;
    assert!(err.is_job_fatal());
    assert!(!err.to_string().contains(TOKEN), "{err}");

    // Any other refusal is permanent, and says so.
    let err = listing_error("teapot").await;
    assert!(
        matches!(err, ChorusError::Rejected { status: 418, .. }),
        "{err:?}"
    );

    for (mode, call) in [
        ("no-data", "conversation"),
        ("other-id", "conversation"),
        ("no-utterances", "transcript"),
    ] {
        broken.set(mode);
        let err = if call == "conversation" {
            client.conversation("A1", &["name"]).await.unwrap_err()
        } else {
            client.transcript("A1").await.unwrap_err()
        };
        assert!(
            matches!(err, ChorusError::Malformed { .. }),
            "{mode}: {err:?}"
        );
    }

    broken.set("media-html");
    let err = client.media("A1").await.unwrap_err();
    assert!(matches!(err, ChorusError::Malformed { .. }), "{err:?}");

    broken.set("media-loop");
    let err = client.media("A1").await.unwrap_err();
    assert!(err.to_string().contains("redirects"), "{err}");

    broken.set("media-ftp");
    let err = client.media("A1").await.unwrap_err();
    assert!(matches!(err, ChorusError::Malformed { .. }), "{err:?}");

    broken.set("media-short");
    let media = client.media("A1").await.unwrap();
    assert_eq!(media.content_length, Some(1000));
    assert_eq!(media.extension, "mp3");
    let err = read_all(media.body).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(err.to_string().contains("of 1000 bytes"), "{err}");
}

#[test]
fn next_key_stops_on_blank_repeated_or_empty() {
    let engagement: Engagement =
        serde_json::from_value(serde_json::json!({"engagement_id": "A"})).unwrap();
    let page = |key: Option<&str>, items: usize| EngagementPage {
        continuation_key: key.map(str::to_owned),
        engagements: vec![engagement.clone(); items],
    };
    assert_eq!(
        page(Some("1.0 A"), 1).next_key(None).as_deref(),
        Some("1.0 A")
    );
    assert_eq!(page(Some("1.0 A"), 1).next_key(Some("1.0 A")), None);
    assert_eq!(page(Some(" "), 1).next_key(None), None);
    assert_eq!(page(Some(""), 1).next_key(None), None);
    assert_eq!(page(None, 1).next_key(None), None);
    assert_eq!(page(Some("2.0 B"), 0).next_key(None), None);
}

#[test]
fn engagement_model_helpers() {
    let parse = |v: serde_json::Value| serde_json::from_value::<Engagement>(v).unwrap();
    assert!(parse(serde_json::json!({"engagement_id": "A"})).has_recording());
    assert!(parse(serde_json::json!({"engagement_id": "A", "engagement_type": "dialer", "processing_state": "done"})).has_recording());
    assert!(
        !parse(serde_json::json!({"engagement_id": "A", "engagement_type": "email"}))
            .has_recording()
    );
    assert!(
        !parse(serde_json::json!({"engagement_id": "A", "engagement_type": "unrecorded_meeting"}))
            .has_recording()
    );
    assert!(
        !parse(serde_json::json!({"engagement_id": "A", "processing_state": "processing"}))
            .has_recording()
    );
    let e = parse(
        serde_json::json!({"engagement_id": "A", "date_time": 1632490362.5, "no_show": true}),
    );
    assert_eq!(
        e.recorded_at().unwrap(),
        Utc.timestamp_opt(1632490362, 500_000_000).unwrap()
    );
    assert_eq!(e.extra["no_show"], true);
    assert!(
        parse(serde_json::json!({"engagement_id": "A", "date_time": 1e300}))
            .recorded_at()
            .is_none()
    );
}

#[test]
fn extensions_follow_the_content_type() {
    for (content_type, ext) in [
        ("video/mp4", "mp4"),
        ("audio/mpeg", "mp3"),
        ("audio/mp4", "m4a"),
        ("audio/x-m4a", "m4a"),
        ("audio/wav", "wav"),
        ("audio/x-wav", "wav"),
        ("video/webm", "webm"),
        ("audio/ogg", "ogg"),
        ("Video/MP4; codecs=avc1", "mp4"),
        ("application/octet-stream", "bin"),
    ] {
        assert_eq!(extension_for(content_type), ext, "{content_type}");
    }
}

#[test]
fn synthetic_dataset_is_deterministic() {
    let from = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let to = Utc.with_ymd_and_hms(2024, 12, 31, 0, 0, 0).unwrap();
    let sizes = MediaSizes {
        min: 1000,
        max: 2000,
        large_every: 4,
        large_size: 1 << 20,
    };
    let a = Dataset::new(7, 20, from, to, sizes);
    let b = Dataset::new(7, 20, from, to, sizes);
    let c = Dataset::new(8, 20, from, to, sizes);
    assert_eq!(a.recordings(), b.recordings());
    assert_ne!(a.recordings()[0].id, c.recordings()[0].id);
    for (i, r) in a.recordings().iter().enumerate() {
        assert_eq!(r.id.len(), 32);
        assert!(
            r.id.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        );
        if (i + 1) % 4 == 0 {
            assert_eq!(r.media_size, 1 << 20);
        } else {
            assert!((1000..=2000).contains(&r.media_size));
        }
        assert!(r.date_time >= from.timestamp() && r.date_time <= to.timestamp());
        assert!(matches!(r.engagement_type, "meeting" | "dialer"));
        assert!(matches!(r.media_content_type, "video/mp4" | "audio/mpeg"));
        assert!(!r.private && !r.deleted && r.participants.len() >= 2);
        assert_eq!(a.get(&r.id), Some(r));
        assert_eq!(a.engagement_json(r), b.engagement_json(r));
        assert_eq!(a.utterances(r), b.utterances(r));
    }
    let knobs = a.clone().with_knobs(Knobs {
        private_every: 2,
        deleted_every: 3,
        unrecorded_every: 5,
    });
    assert!(knobs.recordings()[1].private && knobs.recordings()[2].deleted);
    assert_eq!(knobs.recordings()[4].engagement_type, "unrecorded_meeting");
    assert_eq!(knobs.recordings()[0].id, a.recordings()[0].id);

    let mut grown = a.clone();
    let at = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    let added = grown.add_recordings(2, at);
    assert_eq!(grown.recordings().len(), 22);
    assert!(
        added
            .iter()
            .all(|id| grown.get(id).unwrap().date_time == at.timestamp())
    );
}

#[test]
fn media_bytes_are_random_access_and_marked() {
    let id = "EE8ED5BBBC254177B8201B9D84855949";
    let size = 600 * 1024 + 13;
    let mut whole = vec![0u8; size];
    fill_media(9, id, 0, &mut whole);
    // Any offset and length reproduces the same bytes.
    for (offset, len) in [
        (0, 1),
        (3, 5),
        (7, 9),
        (262_140, 40),
        (500_001, 100_000),
        (size - 3, 3),
    ] {
        let mut part = vec![0u8; len];
        fill_media(9, id, offset as u64, &mut part);
        assert_eq!(
            part,
            whole[offset..offset + len],
            "offset {offset} len {len}"
        );
    }
    let digest: [u8; 32] = Sha256::digest(&whole).into();
    assert_eq!(digest, media_sha256(9, id, size as u64));
    // The marker appears at least every 1 MiB (here: every 256 KiB).
    let positions: Vec<usize> = whole
        .windows(MEDIA_MARKER.len())
        .enumerate()
        .filter(|(_, w)| *w == MEDIA_MARKER)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(positions, vec![0, 256 * 1024, 512 * 1024]);
    // Other ids and seeds give other bytes.
    let mut other = vec![0u8; 4096];
    fill_media(9, "OTHER", 0, &mut other);
    assert_ne!(other[64..], whole[64..4096]);
}

#[test]
fn http_client_builder_checks_the_ca_bundle() {
    assert!(client_builder(None).unwrap().build().is_ok());

    let err = client_builder(Some(std::path::Path::new("/nonexistent/ca.pem"))).unwrap_err();
    assert!(
        matches!(err, HttpSetupError::CaFileUnreadable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.der");
    std::fs::write(&not_pem, b"\x30\x82\x01\x0a not a PEM file").unwrap();
    let err = client_builder(Some(&not_pem)).unwrap_err();
    assert!(
        matches!(err, HttpSetupError::CaFileNotPem { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("ca.der"), "{err}");

    let bad_pem = dir.path().join("bad.pem");
    std::fs::write(
        &bad_pem,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = client_builder(Some(&bad_pem)).unwrap_err();
    assert!(
        matches!(err, HttpSetupError::CaFileInvalid { .. }),
        "{err:?}"
    );

    // A real bundle (several certificates) is accepted.
    let system = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt");
    if system.exists() {
        assert!(client_builder(Some(system)).unwrap().build().is_ok());
    }
}

#[tokio::test]
async fn refused_media_links_are_renewed_then_reported_without_their_query() {
    // A storage host that refuses every link, counting requests and forwarded tokens.
    #[derive(Clone, Default)]
    struct Storage {
        requests: Arc<Mutex<(u32, u32)>>,
    }
    async fn refuse(State(storage): State<Storage>, headers: axum::http::HeaderMap) -> Response {
        let mut counts = storage.requests.lock().unwrap();
        counts.0 += 1;
        if headers.contains_key(header::AUTHORIZATION) {
            counts.1 += 1;
        }
        (StatusCode::FORBIDDEN, "<Error>Request has expired</Error>").into_response()
    }
    let storage = Storage::default();
    let storage_listener = tokio::net::TcpListener::bind(any_addr()).await.unwrap();
    let storage_addr = storage_listener.local_addr().unwrap();
    let router = Router::new()
        .route("/bucket/{id}", get(refuse))
        .with_state(storage.clone());
    tokio::spawn(async move { axum::serve(storage_listener, router).await });

    let link = format!("http://{storage_addr}/bucket/A1?X-Amz-Signature=SECRETSIG");
    let api = Router::new().route(
        "/api/v1/conversations/{id}/media",
        get(move || {
            let link = link.clone();
            async move {
                let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
                response
                    .headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_str(&link).unwrap());
                response
            }
        }),
    );
    let api_listener = tokio::net::TcpListener::bind(any_addr()).await.unwrap();
    let base = url::Url::parse(&format!("http://{}/", api_listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move { axum::serve(api_listener, api).await });

    let mut settings = client_config(&base, TOKEN);
    settings.max_attempts = 3;
    let client = ChorusClient::new(settings).unwrap();
    let err = client.media("A1").await.unwrap_err();
    assert!(
        matches!(err, ChorusError::Unavailable { attempts: 3, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("refused the download link"), "{text}");
    assert!(!text.contains("SECRETSIG"), "{text}");
    assert_eq!(*storage.requests.lock().unwrap(), (3, 0));
    assert_eq!(client.retries(), 2);
}
