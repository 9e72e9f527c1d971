//! What the console says about retention is true: the settings page shows the
//! organisation's real period (14 days by default) and the oldest kept job; a period
//! outside 1..=365 days is refused; and what the purge deleted is counted on /metrics.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::{NoWorkers, api_request, nats_in, send};
use pipeline::accounts::Accounts;
use pipeline::retention::{Purger, RetentionOptions};
use pipeline::store::JobStore;
use ui::AppState;

async fn get(
    state: &ui::Shared,
    path: &str,
    session: Option<&(String, String)>,
) -> (StatusCode, String) {
    request(state, "GET", path, session, None).await
}

async fn request(
    state: &ui::Shared,
    method: &str,
    path: &str,
    session: Option<&(String, String)>,
    json: Option<serde_json::Value>,
) -> (StatusCode, String) {
    let req = api_request(method, path, session, true, json);
    let (status, bytes, _) = send(state, req).await;
    (status, String::from_utf8_lossy(&bytes).to_string())
}

#[tokio::test]
async fn the_settings_page_and_metrics_tell_the_truth_about_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let (nats, js) = nats_in(tmp.path()).await;
    let store = JobStore::open_sqlite_in(tmp.path()).await.unwrap();
    let purger = Purger::new(
        store.clone(),
        Some(js.clone()),
        Some(tmp.path().join("logs")),
        RetentionOptions::default(),
    );
    let mut state = AppState::new(store.clone(), js, Arc::new(NoWorkers))
        .await
        .unwrap();
    Arc::get_mut(&mut state).unwrap().purge = purger.counters.clone();

    let accounts = Accounts::new(&store);
    let admin = accounts
        .create_user("admin@example.com", "$argon2id$unused")
        .await
        .unwrap();
    let org = accounts.create_org("Keepers", &admin).await.unwrap();
    let session = ui::auth::issue_session(&accounts, &admin).await.unwrap();
    let settings = format!("/orgs/{}/settings", org.id);

    let (status, page) = get(&state, &settings, Some(&session)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Job history is kept 14 days"), "{page}");
    assert!(!page.contains("90 days"), "{page}");
    assert!(page.contains("No jobs are kept"), "{page}");

    test_support::jobs::stored_job(&store, &org.id, &admin.email, "s3://bucket/prefix").await;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let (_, page) = get(&state, &settings, Some(&session)).await;
    assert!(
        page.contains(&format!("Oldest job kept: started {today}")),
        "{page}"
    );

    // Out of bounds is refused with the bounds; in bounds is shown.
    let api = format!("/api/v1/orgs/{}/retention", org.id);
    let (status, body) = request(
        &state,
        "PUT",
        &api,
        Some(&session),
        Some(serde_json::json!({"days": 400})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("1 to 365"), "{body}");
    let (status, body) = request(
        &state,
        "PUT",
        &api,
        Some(&session),
        Some(serde_json::json!({"days": 30})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, page) = get(&state, &settings, Some(&session)).await;
    assert!(page.contains("Job history is kept 30 days"), "{page}");

    // A purge 31 days on deletes the job; /metrics counts it.
    let (_, metrics) = get(&state, "/metrics", None).await;
    assert!(
        metrics.contains("portshift_purged_total{what=\"jobs\"} 0"),
        "{metrics}"
    );
    let report = purger
        .purge_once(chrono::Utc::now() + chrono::Duration::days(31))
        .await
        .unwrap();
    assert_eq!(report.jobs, 1);
    let (_, metrics) = get(&state, "/metrics", None).await;
    assert!(
        metrics.contains("portshift_purged_total{what=\"jobs\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portshift_purge_runs_total 1"),
        "{metrics}"
    );
    // The purge 31 days on also ended the (expired) session: sign in again.
    let session = ui::auth::issue_session(&accounts, &admin).await.unwrap();
    let (_, page) = get(&state, &settings, Some(&session)).await;
    assert!(page.contains("No jobs are kept"), "{page}");
    nats.stop().await;
}
