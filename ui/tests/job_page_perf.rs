//! Render time of the job page (and the first history page) for an organisation with
//! 10 000 jobs in its history, through the real router, store and `nats-server`. Prints
//! p50/p95 (run with `--nocapture` to see them) and fails if p95 passes a generous bound,
//! so a query that starts scanning the whole history is caught.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{NoWorkers, nats_in};
use pipeline::accounts::Accounts;
use pipeline::store::{FileRow, JobStore, ListedRecording};
use pipeline::{FileKind, JobId, JobStatus};
use tower::ServiceExt;
use ui::AppState;

const JOBS: usize = 10_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_page_with_ten_thousand_jobs_in_history() {
    let tmp = tempfile::tempdir().unwrap();
    let (_nats, js) = nats_in(tmp.path()).await;
    let store = JobStore::open_sqlite_in(tmp.path()).await.unwrap();
    let accounts = Accounts::new(&store);
    let owner = accounts
        .create_user("perf@example.com", "$argon2id$unused")
        .await
        .unwrap();
    let org = accounts.create_org("Perf", &owner).await.unwrap();
    let spec = test_support::jobs::stored_only_spec("s3://bucket/prefix?region=eu-west-1");
    let seeded = Instant::now();
    let mut last = None;
    let mut tasks = futures::stream::FuturesUnordered::new();
    for i in 0..JOBS {
        let (store, spec, org, email) = (
            store.clone(),
            spec.clone(),
            org.id.clone(),
            owner.email.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let job = JobId::new();
            store.create_job(&job, &org, &email, &spec).await.unwrap();
            if i % 3 == 0 {
                store
                    .set_status(&job, JobStatus::Finished, None)
                    .await
                    .unwrap();
            }
            job
        }));
        if tasks.len() >= 8 {
            use futures::StreamExt;
            last = tasks.next().await.map(|r| r.unwrap());
        }
    }
    {
        use futures::StreamExt;
        while let Some(r) = tasks.next().await {
            last = Some(r.unwrap());
        }
    }
    let job = last.unwrap();
    // The job shown has 200 recordings and 600 files.
    let listed: Vec<_> = (0..200)
        .map(|i| ListedRecording {
            recording_id: format!("rec{i:04}"),
            recorded_at: Some(1_704_067_200 + i),
            duration_s: Some(60.0),
            engagement_type: None,
        })
        .collect();
    store.add_listed(&job, &listed).await.unwrap();
    for r in &listed {
        for kind in FileKind::ALL {
            store
                .record_file(
                    &job,
                    &FileRow {
                        recording_id: r.recording_id.clone(),
                        file: kind,
                        key: format!("p/{}/{}", r.recording_id, kind.as_str()),
                        bytes: 1_000_000,
                        sha256: "0".repeat(64),
                        content_type: "application/octet-stream".into(),
                    },
                )
                .await
                .unwrap();
        }
        store.mark_exported(&job, &r.recording_id).await.unwrap();
    }
    store.mark_listing_complete(&job).await.unwrap();
    println!(
        "seeded {JOBS} jobs in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );

    let state = AppState::new(store.clone(), js, Arc::new(NoWorkers))
        .await
        .unwrap();
    let (token, _) = ui::auth::issue_session(&accounts, &owner).await.unwrap();
    let app = ui::router(state);
    let measure = |path: String| {
        let app = app.clone();
        let token = token.clone();
        async move {
            let mut times = vec![];
            for i in 0..120 {
                let req = Request::builder()
                    .uri(&path)
                    .header("cookie", format!("portshift_session={token}"))
                    .body(Body::empty())
                    .unwrap();
                let t = Instant::now();
                let res = app.clone().oneshot(req).await.unwrap();
                assert_eq!(res.status(), StatusCode::OK, "{path}");
                let body = axum::body::to_bytes(res.into_body(), 8 << 20)
                    .await
                    .unwrap();
                if i >= 20 {
                    // The first requests warm the connection pool and caches.
                    times.push(t.elapsed());
                }
                assert!(body.len() > 1000);
            }
            times.sort();
            (percentile(&times, 0.5), percentile(&times, 0.95))
        }
    };
    let (p50, p95) = measure(format!("/orgs/{}/jobs/{job}", org.id)).await;
    println!(
        "job page, organisation with {JOBS} jobs: p50 {:.1} ms, p95 {:.1} ms",
        p50.as_secs_f64() * 1000.0,
        p95.as_secs_f64() * 1000.0
    );
    let (h50, h95) = measure(format!("/orgs/{}/jobs", org.id)).await;
    println!(
        "history page 1 (50 of {JOBS}): p50 {:.1} ms, p95 {:.1} ms",
        h50.as_secs_f64() * 1000.0,
        h95.as_secs_f64() * 1000.0
    );
    let (f50, f95) = measure(format!("/orgs/{}/jobs?status=finished&page=50", org.id)).await;
    println!(
        "history filtered by status, page 50: p50 {:.1} ms, p95 {:.1} ms",
        f50.as_secs_f64() * 1000.0,
        f95.as_secs_f64() * 1000.0
    );
    for (what, p95) in [
        ("job page", p95),
        ("history", h95),
        ("filtered history", f95),
    ] {
        assert!(
            p95 < Duration::from_millis(750),
            "{what} p95 {p95:?} on a 2-core machine: something scans the whole history"
        );
    }
}
