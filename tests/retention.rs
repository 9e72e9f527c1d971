//! Retention with a test clock, on SQLite and PostgreSQL: real exports leave rows in
//! every job table, JetStream messages and consumers, and a worker log; a purge at a
//! chosen "now" past the period leaves nothing of the old job anywhere, while a job of
//! an organisation with a longer period is untouched. Two purgers at once do not error
//! and count each job once.

mod common;

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use common::*;
use pipeline::accounts::Accounts;
use pipeline::retention::{Purger, RetentionOptions};
use pipeline::schedules::{CredentialRefs, ScheduleTemplate};
use pipeline::store::JobStore;
use pipeline::topology::{self, Stage};
use pipeline::{ExportKinds, JobId, JobSpec, JobStatus};

const DAY: i64 = 24 * 3600 * 1000;

async fn postgres_url() -> String {
    fresh_database("retention").await.to_string()
}

/// Starts a job of `org` exporting into a local folder, as the console does.
async fn start_job(h: &Harness, org: &str, dest: &Path) -> JobId {
    let spec = JobSpec {
        kinds: ExportKinds {
            media: false,
            transcript: true,
            metadata: true,
        },
        ..export_spec(
            h.sim.api_url.as_str(),
            &format!("file://{}", dest.display()),
        )
    };
    create_and_list(&h.store, &h.js, &spec, org, "tester").await
}

/// Runs a job to the end and adds what a real job may also leave: a listing page, an
/// open upload, a schedule run and its exported rows, a dead letter, a leftover task, a
/// durable consumer and a worker log.
async fn finished_job(h: &Harness, org: &str, logs: &Path) -> JobId {
    let dest = h
        .tmp
        .path()
        .join(format!("export-{}", uuid::Uuid::new_v4()));
    let job = start_job(h, org, &dest).await;
    let (status, _) = h
        .run_worker(&job, fast_options(), Duration::from_secs(60))
        .await;
    assert_eq!(status, JobStatus::Finished);
    let s = &h.store;
    s.record_list_page(&job, "K2", 2).await.unwrap();
    s.record_open_upload(&job, "a/b.mp4", "upload-1")
        .await
        .unwrap();
    let template = ScheduleTemplate {
        chorus_url: h.sim.api_url.to_string(),
        kinds: ExportKinds::default(),
        destination: format!("file://{}", dest.display()),
        webhook_url: None,
        lookback_s: 0,
        options: Default::default(),
    };
    let refs = CredentialRefs {
        chorus_token: "env:CHORUS_API_TOKEN".into(),
        s3: None,
        webhook_secret: None,
        azure: None,
        gcs: None,
    };
    let schedule = s
        .create_schedule(
            org,
            "nightly",
            "0 2 * * *",
            "UTC",
            &template,
            &refs,
            Utc::now(),
            pipeline::TrustLevel::Operator,
        )
        .await
        .unwrap();
    let slot = schedule.next_run_ms;
    assert!(s.take_slot(&schedule.id, slot, slot + DAY).await.unwrap());
    s.update_run(
        &schedule.id,
        slot,
        "finished",
        Some(&job),
        None,
        Some((1, 1)),
    )
    .await
    .unwrap();
    s.record_schedule_exports(&schedule.id, &template.destination, &job)
        .await
        .unwrap();
    for subject in [Stage::Fetch.dlq_subject(&job), Stage::Fetch.subject(&job)] {
        topology::publish_json(&h.js, subject, &format!("{job}.extra"), &"left over")
            .await
            .unwrap();
    }
    topology::stage_consumer(&h.js, Stage::Notify, &job, Duration::from_secs(30), 10)
        .await
        .unwrap();
    std::fs::create_dir_all(logs).unwrap();
    std::fs::write(logs.join(format!("worker-{job}.log")), "worker log\n").unwrap();
    job
}

/// Subjects of the job that hold at least one message, in any of the three streams.
async fn subjects_with_messages(js: &jetstream::Context, job: &JobId) -> Vec<String> {
    let mut subjects = vec![topology::hash_subject(job), topology::upload_subject(job)];
    for stage in Stage::ALL {
        subjects.push(stage.subject(job));
        subjects.push(stage.dlq_subject(job));
    }
    let mut found = Vec::new();
    for stream in [
        topology::WORK_STREAM,
        topology::RECORD_STREAM,
        topology::DLQ_STREAM,
    ] {
        let stream = js.get_stream(stream).await.unwrap();
        for subject in &subjects {
            if stream
                .get_last_raw_message_by_subject(subject)
                .await
                .is_ok()
            {
                found.push(subject.clone());
            }
        }
    }
    found
}

async fn consumers_of(js: &jetstream::Context, job: &JobId) -> Vec<String> {
    let stream = js.get_stream(topology::WORK_STREAM).await.unwrap();
    let mut out = Vec::new();
    for stage in Stage::ALL {
        if stream.consumer_info(stage.consumer_name(job)).await.is_ok() {
            out.push(stage.consumer_name(job));
        }
    }
    out
}

async fn nothing_left(store: &JobStore, js: &jetstream::Context, logs: &Path, job: &JobId) {
    for (table, n) in store.rows_of_job(job).await.unwrap() {
        assert_eq!(n, 0, "{table} still holds {n} rows of purged job {job}");
    }
    assert_eq!(
        subjects_with_messages(js, job).await,
        Vec::<String>::new(),
        "JetStream still holds messages of purged job {job}"
    );
    assert_eq!(consumers_of(js, job).await, Vec::<String>::new());
    assert!(!logs.join(format!("worker-{job}.log")).exists());
}

/// Everything of the job is there (its listing pages only while `with_pages`: a purge
/// drops those of finished jobs at once).
async fn all_there(
    store: &JobStore,
    js: &jetstream::Context,
    logs: &Path,
    job: &JobId,
    with_pages: bool,
) {
    for (table, n) in store.rows_of_job(job).await.unwrap() {
        if table == "list_pages" && !with_pages {
            assert_eq!(n, 0, "a finished job's listing pages are purged");
            continue;
        }
        if table == "worker_leases" {
            // Released when the worker exits; none is left to purge (or to miss).
            continue;
        }
        assert!(n > 0, "{table} holds no row of job {job}");
    }
    let subjects = subjects_with_messages(js, job).await;
    for want in [
        topology::hash_subject(job),
        topology::upload_subject(job),
        Stage::Fetch.dlq_subject(job),
        Stage::Fetch.subject(job),
    ] {
        assert!(subjects.contains(&want), "{want} missing: {subjects:?}");
    }
    assert!(
        consumers_of(js, job)
            .await
            .contains(&Stage::Notify.consumer_name(job))
    );
    assert!(logs.join(format!("worker-{job}.log")).exists());
}

async fn retention_case(database_url: Option<String>) {
    let mut h = Harness::start(Harness::sim_config(5, 7)).await;
    if let Some(url) = &database_url {
        h.store = JobStore::connect(url).await.unwrap();
    }
    let store = h.store.clone();
    let accounts = Accounts::new(&store);
    let logs = h.tmp.path().join("logs");

    let owner = accounts
        .create_user("owner@example.com", "hash")
        .await
        .unwrap();
    let short = accounts.create_org("Short", &owner).await.unwrap();
    assert_eq!(short.retention_days, 14, "the default period is 14 days");
    assert_eq!(
        accounts
            .org(&short.id)
            .await
            .unwrap()
            .unwrap()
            .retention_days,
        14
    );
    let long = accounts.create_org("Long", &owner).await.unwrap();
    accounts.set_retention(&long.id, 30).await.unwrap();

    let old = finished_job(&h, &short.id, &logs).await;
    let cli = finished_job(&h, "local", &logs).await;
    let kept = finished_job(&h, &long.id, &logs).await;
    let started = Utc::now();
    for job in [&old, &cli, &kept] {
        all_there(&store, &h.js, &logs, job, true).await;
    }
    assert!(accounts.oldest_job_ms(&short.id).await.unwrap().is_some());

    // Console rows: a session that expires tomorrow and one in 20 days, a rate-limit
    // row, an audit event.
    accounts
        .create_session(
            "s-expiring",
            &owner.id,
            "csrf",
            started.timestamp_millis() + DAY,
        )
        .await
        .unwrap();
    accounts
        .create_session(
            "s-live",
            &owner.id,
            "csrf",
            started.timestamp_millis() + 20 * DAY,
        )
        .await
        .unwrap();
    accounts
        .hit("ip-hash", "sign_in", 60_000, 10)
        .await
        .unwrap();
    accounts
        .audit(&short.id, "owner@example.com", "test", "x")
        .await
        .unwrap();
    let purger = |store: &JobStore| {
        Purger::new(
            store.clone(),
            Some(h.js.clone()),
            Some(logs.clone()),
            RetentionOptions {
                batch: 2, // small batches: the loops must go round
                ..RetentionOptions::default()
            },
        )
    };

    // Inside the jobs' periods: no job goes, but the session that expired and the
    // spent rate-limit row do.
    let report = purger(&store).purge_once(at(started, 13)).await.unwrap();
    assert_eq!(report.jobs, 0, "{report:?}");
    assert_eq!(report.stream_messages, 0, "{report:?}");
    assert!(
        report.list_pages >= 3,
        "finished jobs' listing pages go: {report:?}"
    );
    assert_eq!(
        (report.sessions, report.rate_limits, report.audit_events),
        (1, 1, 0)
    );
    for job in [&old, &cli, &kept] {
        all_there(&store, &h.js, &logs, job, false).await;
    }

    // 15 days on, from two servers at once: the 14-day jobs go (each counted once),
    // the 30-day organisation's job stays.
    let (a, b) = (
        purger(&store),
        purger(
            &JobStore::connect(&store_url(&h, &database_url))
                .await
                .unwrap(),
        ),
    );
    let (ra, rb) = tokio::join!(a.purge_once(at(started, 15)), b.purge_once(at(started, 15)));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.jobs + rb.jobs, 2, "{ra:?} {rb:?}");
    assert_eq!(ra.sessions + rb.sessions, 0, "the live session stays");
    assert_eq!(
        ra.audit_events + rb.audit_events,
        0,
        "audit events stay 400 days"
    );
    assert!(ra.stream_messages + rb.stream_messages > 0);
    assert_eq!(a.counters.totals().jobs + b.counters.totals().jobs, 2);
    nothing_left(&store, &h.js, &logs, &old).await;
    nothing_left(&store, &h.js, &logs, &cli).await;
    all_there(&store, &h.js, &logs, &kept, false).await;
    assert_eq!(accounts.oldest_job_ms(&short.id).await.unwrap(), None);
    let (sessions, rate_rows, audit) = accounts.console_row_counts().await.unwrap();
    assert_eq!((sessions, rate_rows, audit), (1, 0, 1));

    // Purging again finds nothing and succeeds (idempotent).
    let again = purger(&store).purge_once(at(started, 15)).await.unwrap();
    assert!(again.is_empty(), "{again:?}");

    // Past the longer period too, and past the audit period.
    let late = purger(&store).purge_once(at(started, 401)).await.unwrap();
    assert_eq!((late.jobs, late.audit_events, late.sessions), (1, 1, 1));
    nothing_left(&store, &h.js, &logs, &kept).await;
    assert_eq!(accounts.console_row_counts().await.unwrap(), (0, 0, 0));
}

fn at(start: DateTime<Utc>, days: i64) -> DateTime<Utc> {
    start + chrono::Duration::days(days)
}

fn store_url(h: &Harness, database_url: &Option<String>) -> String {
    database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}",
            h.tmp.path().join("portshift.sqlite3").display()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_on_sqlite() {
    retention_case(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_on_postgres() {
    retention_case(Some(postgres_url().await)).await;
}
