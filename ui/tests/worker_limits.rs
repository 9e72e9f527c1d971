//! Limits on starting work, against the real router, a real SQLite store and a real
//! `nats-server`:
//! - an organisation at its cap of live workers gets its next export refused with a
//!   message that says so (and no worker is launched); when one of its exports ends,
//!   the next one starts again; another organisation is not affected;
//! - routes that start work are rate limited per user (429 with Retry-After), on top of
//!   the per-client API limit.

mod common;

use axum::http::StatusCode;
use common::{RecordedConsole, api_request, send};
use pipeline::accounts::Accounts;
use pipeline::{JobId, JobStatus};
use ui::Limits;

type World = RecordedConsole;

async fn world(limits: Limits) -> World {
    RecordedConsole::start(|state| state.limits = limits).await
}

/// A new organisation with one owner; returns (org id, session token, csrf token).
async fn owner(w: &World, name: &str) -> (String, (String, String)) {
    let accounts = Accounts::new(&w.store);
    let user = accounts
        .create_user(
            &format!("owner-{}@example.com", uuid::Uuid::new_v4().simple()),
            "$argon2id$unused",
        )
        .await
        .unwrap();
    let org = accounts.create_org(name, &user).await.unwrap();
    let session = ui::auth::issue_session(&accounts, &user).await.unwrap();
    (org.id, session)
}

async fn start_export(
    w: &World,
    org: &str,
    session: &(String, String),
) -> (StatusCode, serde_json::Value, axum::http::HeaderMap) {
    let body = serde_json::json!({
        "chorus_url": "https://chorus.example/",
        "from": "2024-01-01", "to": "2024-01-31",
        "media": true, "transcript": true, "metadata": false,
        "destination": "s3://bucket/prefix?region=eu-west-1",
        "chorus_token": "token",
        "s3_access_key_id": "AKIAEXAMPLE", "s3_secret_access_key": "secret",
    });
    let path = format!("/api/v1/orgs/{org}/jobs");
    let req = api_request("POST", &path, Some(session), true, Some(body));
    let (status, bytes, headers) = send(&w.state, req).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or_default(),
        headers,
    )
}

#[tokio::test]
async fn the_worker_cap_refuses_one_more_export_with_a_clear_message() {
    let w = world(Limits {
        workers_per_org: 2,
        ..Limits::default()
    })
    .await;
    let (org, session) = owner(&w, "Capped Ltd").await;
    let mut jobs = vec![];
    for _ in 0..2 {
        let (status, json, _) = start_export(&w, &org, &session).await;
        assert_eq!(status, StatusCode::CREATED, "{json}");
        jobs.push(json["job"].as_str().unwrap().parse::<JobId>().unwrap());
    }
    let (status, json, _) = start_export(&w, &org, &session).await;
    assert_eq!(status, StatusCode::CONFLICT, "{json}");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("already has 2 exports running") && message.contains("(2)"),
        "{message}"
    );
    assert!(message.contains("Wait for one to finish"), "{message}");
    assert_eq!(
        w.recorder.launched.lock().unwrap().len(),
        2,
        "the refused export started no worker"
    );
    // Another organisation has its own cap.
    let (other, other_session) = owner(&w, "Other Ltd").await;
    let (status, json, _) = start_export(&w, &other, &other_session).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    // When one export ends, the next one starts (the refusal was the cap, nothing else).
    w.store
        .set_status(&jobs[0], JobStatus::Finished, None)
        .await
        .unwrap();
    let (status, json, _) = start_export(&w, &org, &session).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    assert_eq!(w.recorder.launched.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn starting_work_is_rate_limited_per_user() {
    let w = world(Limits {
        start_work: (3, 60 * 60 * 1000),
        workers_per_org: 100,
        ..Limits::default()
    })
    .await;
    let (org, session) = owner(&w, "Busy Ltd").await;
    for _ in 0..3 {
        let (status, json, _) = start_export(&w, &org, &session).await;
        assert_eq!(status, StatusCode::CREATED, "{json}");
    }
    let (status, json, headers) = start_export(&w, &org, &session).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    assert_eq!(json["error"]["code"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 3600, "{retry}");
    assert_eq!(w.recorder.launched.lock().unwrap().len(), 3);
    // Another user (same address) still has their own allowance.
    let (other, other_session) = owner(&w, "Calm Ltd").await;
    let (status, json, _) = start_export(&w, &other, &other_session).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
}
