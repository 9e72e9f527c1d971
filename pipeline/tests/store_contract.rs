//! One contract suite for the job store, run against both backends: SQLite (a fresh
//! file per test) and PostgreSQL (a fresh database per test on the server `scripts/test`
//! starts, `PORTSHIFT_TEST_POSTGRES_URL`).

use pipeline::store::{FileRow, JobStore, ListedRecording, StoreError};
use pipeline::{ExportKinds, FileKind, JobId, JobSpec, JobStatus};

async fn sqlite() -> (JobStore, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().unwrap();
    (
        JobStore::open_sqlite_in(dir.path()).await.unwrap(),
        Some(dir),
    )
}

async fn postgres() -> (JobStore, Option<tempfile::TempDir>) {
    let base = std::env::var("PORTSHIFT_TEST_POSTGRES_URL")
        .expect("PORTSHIFT_TEST_POSTGRES_URL is not set: run the suite with scripts/test, which starts PostgreSQL");
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&name);
    (JobStore::connect(url.as_str()).await.unwrap(), None)
}

fn spec() -> JobSpec {
    JobSpec {
        chorus_url: "https://chorus.example/".into(),
        from: "2024-01-01T00:00:00Z".parse().unwrap(),
        to: "2024-12-31T23:59:59Z".parse().unwrap(),
        kinds: ExportKinds::default(),
        destination: "s3://bucket/prefix".into(),
        webhook_url: None,
        schedule: None,
        options: Default::default(),
        trust: pipeline::Trust::Operator,
    }
}

fn listed(id: &str) -> ListedRecording {
    ListedRecording {
        recording_id: id.into(),
        recorded_at: Some(1_717_000_000),
        duration_s: Some(61.5),
        engagement_type: Some("meeting".into()),
    }
}

/// A new job of "org" by "ana" whose listing found the recordings A and B.
async fn job_listing_a_and_b(store: &JobStore) -> JobId {
    let id = JobId::new();
    store.create_job(&id, "org", "ana", &spec()).await.unwrap();
    store
        .add_listed(&id, &[listed("A"), listed("B")])
        .await
        .unwrap();
    id
}

fn file(rec: &str, kind: FileKind, sha: char) -> FileRow {
    FileRow {
        recording_id: rec.into(),
        file: kind,
        key: format!("2024/05/29/{rec}/{rec}.{}", kind.as_str()),
        bytes: 10,
        sha256: sha.to_string().repeat(64),
        content_type: "application/json".into(),
    }
}

async fn job_round_trip(store: JobStore) {
    let id = JobId::new();
    store.create_job(&id, "org", "ana", &spec()).await.unwrap();
    let j = store.job(&id).await.unwrap();
    assert_eq!(
        (
            j.status,
            j.spec,
            j.organisation.as_str(),
            j.started_by.as_str()
        ),
        (JobStatus::Running, spec(), "org", "ana")
    );
    assert!(j.finished_ms.is_none());
    store
        .set_status(&id, JobStatus::NeedsCredentials, Some("token refused"))
        .await
        .unwrap();
    let j = store.job(&id).await.unwrap();
    assert_eq!(
        (j.status, j.status_reason.as_deref()),
        (JobStatus::NeedsCredentials, Some("token refused"))
    );
    store
        .set_status(&id, JobStatus::Finished, None)
        .await
        .unwrap();
    assert!(store.job(&id).await.unwrap().finished_ms.is_some());
    let missing = JobId::new();
    assert!(matches!(
        store.job(&missing).await,
        Err(StoreError::NoSuchJob(_))
    ));
    assert!(matches!(
        store.set_status(&missing, JobStatus::Failed, None).await,
        Err(StoreError::NoSuchJob(_))
    ));
    let other = JobId::new();
    store
        .create_job(&other, "org", "ana", &spec())
        .await
        .unwrap();
    let recent: Vec<JobId> = store
        .recent_jobs(10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(recent, vec![other, id], "newest first");
}

async fn completion_is_derived_from_rows(store: JobStore) {
    let id = JobId::new();
    store.create_job(&id, "org", "ana", &spec()).await.unwrap();
    store
        .add_listed(&id, &[listed("A"), listed("B"), listed("C")])
        .await
        .unwrap();
    // Re-listing (a redelivered list page) adds nothing and resets nothing.
    store.mark_exported(&id, "A").await.unwrap();
    store
        .add_listed(&id, &[listed("A"), listed("B")])
        .await
        .unwrap();
    let p = store.progress(&id).await.unwrap();
    assert_eq!((p.listed, p.pending, p.exported), (3, 2, 1));
    assert!(!p.settled(), "listing not complete yet");
    assert!(!store.is_settled(&id).await.unwrap());
    store.mark_listing_complete(&id).await.unwrap();
    assert!(
        !store.progress(&id).await.unwrap().settled(),
        "B and C pending"
    );
    store
        .mark_skipped(&id, "B", "deleted in Chorus")
        .await
        .unwrap();
    store.mark_dead(&id, "C", "gave up").await.unwrap();
    let p = store.progress(&id).await.unwrap();
    assert_eq!((p.pending, p.exported, p.skipped, p.dead), (0, 1, 1, 1));
    assert!(p.settled());
    assert!(store.is_settled(&id).await.unwrap());
    let problems = store.problems(&id).await.unwrap();
    assert_eq!(problems.len(), 2);
    assert_eq!(
        problems
            .iter()
            .find(|p| p.recording_id == "C")
            .unwrap()
            .reason,
        "gave up"
    );
}

async fn transitions_never_lose_a_success(store: JobStore) {
    let id = job_listing_a_and_b(&store).await;
    store.mark_exported(&id, "A").await.unwrap();
    // A late duplicate of A that died must not undo A's export.
    store.mark_dead(&id, "A", "duplicate failed").await.unwrap();
    // A replay of a dead recording that then succeeds must count as exported.
    store.mark_dead(&id, "B", "gave up").await.unwrap();
    store.mark_exported(&id, "B").await.unwrap();
    let p = store.progress(&id).await.unwrap();
    assert_eq!((p.exported, p.dead), (2, 0));
}

fn refused(r: Result<(), StoreError>, from: JobStatus, to: JobStatus) {
    match r {
        Err(StoreError::IllegalTransition { from: f, to: t, .. }) => assert_eq!((f, t), (from, to)),
        other => panic!("{from} -> {to} was not refused: {other:?}"),
    }
}

async fn final_jobs_are_never_overwritten(store: JobStore) {
    use JobStatus::*;
    // A console cancels a job while one of its workers (another process, which read
    // "running" a moment ago) finds its token refused, or fails.
    let cancelled = JobId::new();
    store
        .create_job(&cancelled, "org", "ana", &spec())
        .await
        .unwrap();
    let seen_by_worker = store.job(&cancelled).await.unwrap().status;
    assert_eq!(seen_by_worker, Running);
    store
        .set_status(&cancelled, Cancelled, Some("cancelled by ana"))
        .await
        .unwrap();
    for late in [NeedsCredentials, Failed, Running, Finished] {
        refused(
            store.set_status(&cancelled, late, Some("late")).await,
            Cancelled,
            late,
        );
    }
    // The supervisor's sweep and a reopen leave it alone too.
    store
        .expire_silent_workers(std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(store.reopen(&cancelled).await.unwrap(), Cancelled);
    let j = store.job(&cancelled).await.unwrap();
    assert_eq!(
        (j.status, j.status_reason.as_deref()),
        (Cancelled, Some("cancelled by ana"))
    );

    let finished = JobId::new();
    store
        .create_job(&finished, "org", "ana", &spec())
        .await
        .unwrap();
    store.set_status(&finished, Finished, None).await.unwrap();
    let finished_ms = store.job(&finished).await.unwrap().finished_ms;
    for late in [NeedsCredentials, Failed, Running, Cancelled] {
        refused(
            store.set_status(&finished, late, None).await,
            Finished,
            late,
        );
    }
    // A replayed notification writes the same status again: allowed, and the job
    // keeps its finishing time.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.set_status(&finished, Finished, None).await.unwrap();
    assert_eq!(store.job(&finished).await.unwrap().finished_ms, finished_ms);

    // A dead recording replayed after the end can turn failures into a clean finish.
    let partial = JobId::new();
    store
        .create_job(&partial, "org", "ana", &spec())
        .await
        .unwrap();
    store
        .set_status(&partial, FinishedWithFailures, None)
        .await
        .unwrap();
    refused(
        store.set_status(&partial, NeedsCredentials, None).await,
        FinishedWithFailures,
        NeedsCredentials,
    );
    store.set_status(&partial, Finished, None).await.unwrap();
    assert_eq!(store.job(&partial).await.unwrap().status, Finished);
}

async fn file_rows_are_idempotent(store: JobStore) {
    let id = job_listing_a_and_b(&store).await;
    let repeated = [("B", FileKind::Media, 'b'), ("A", FileKind::Media, 'a')].repeat(3);
    // The last: a redelivery that re-uploads replaces the row, not adds one.
    let then = [
        ("A", FileKind::Transcript, 'c'),
        ("A", FileKind::Media, 'd'),
    ];
    for (recording, kind, fill) in repeated.into_iter().chain(then) {
        store
            .record_file(&id, &file(recording, kind, fill))
            .await
            .unwrap();
    }
    let entries = store.manifest_entries(&id).await.unwrap();
    let keys: Vec<&str> = entries.iter().map(|f| f.key.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "ordered by key");
    assert_eq!(entries.len(), 3);
    assert_eq!(
        entries
            .iter()
            .find(|f| f.recording_id == "A" && f.file == FileKind::Media)
            .unwrap()
            .sha256,
        "d".repeat(64)
    );
    assert_eq!(store.files_of(&id, "A").await.unwrap().len(), 2);
    let p = store.progress(&id).await.unwrap();
    assert_eq!((p.files, p.bytes), (3, 30));
    store.mark_exported(&id, "A").await.unwrap();
    let facts: Vec<ListedRecording> = store
        .exported_recordings_page(&id, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.recording)
        .collect();
    assert_eq!(facts, vec![listed("A")]);
    store
        .set_manifest(&id, "prefix/portshift-manifest.txt", &"e".repeat(64))
        .await
        .unwrap();
    assert_eq!(
        store.job(&id).await.unwrap().manifest_sha256,
        Some("e".repeat(64))
    );
}

async fn a_repeated_continuation_key_is_reported_as_a_loop(store: JobStore) {
    let id = JobId::new();
    store.create_job(&id, "org", "ana", &spec()).await.unwrap();
    assert_eq!(store.record_list_page(&id, "K1", 1).await.unwrap(), None);
    assert_eq!(store.record_list_page(&id, "K2", 2).await.unwrap(), None);
    // A redelivered page records its own key again: not a loop.
    assert_eq!(store.record_list_page(&id, "K2", 2).await.unwrap(), None);
    assert_eq!(store.record_list_page(&id, "K1", 3).await.unwrap(), Some(1));
    // Keys are per job.
    let other = JobId::new();
    store
        .create_job(&other, "org", "ana", &spec())
        .await
        .unwrap();
    assert_eq!(store.record_list_page(&other, "K1", 5).await.unwrap(), None);
}

/// Every manifest row of the job (version and export time of each file).
async fn versions(store: &JobStore, id: &JobId) -> Vec<pipeline::store::ManifestRow> {
    let cursor = pipeline::store::ManifestCursor::default();
    store.manifest_page(id, &cursor, 1000).await.unwrap().0
}

async fn a_transcript(store: &JobStore, id: &JobId) -> pipeline::store::ManifestRow {
    versions(store, id)
        .await
        .into_iter()
        .find(|v| v.file.recording_id == "A" && v.file.file == FileKind::Transcript)
        .unwrap()
}

/// What the manifest says about versions and states (docs/manifest.md, "Deleted and
/// changed recordings"): a redelivery of the same bytes keeps a file's export time and
/// takes a version when one is given, different bytes get a new time; a 404 after
/// listing is `deleted_in_source`; taking a file back out for a failed read-back moves
/// the manifest generation on.
async fn versions_states_and_the_manifest_generation(store: JobStore) {
    let id = job_listing_a_and_b(&store).await;
    let a = file("A", FileKind::Transcript, 'a');
    store
        .record_file_version(&id, &a, Some("2024-05-29T10:00:00Z"))
        .await
        .unwrap();
    let first = a_transcript(&store, &id).await;
    assert_eq!(
        first.source_modified_at.as_deref(),
        Some("2024-05-29T10:00:00Z")
    );
    let t0 = first.exported_ms.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.record_file(&id, &a).await.unwrap();
    let again = a_transcript(&store, &id).await;
    assert_eq!(again.exported_ms, Some(t0), "same bytes: first time kept");
    assert_eq!(again.source_modified_at, first.source_modified_at);
    let changed = file("A", FileKind::Transcript, 'b');
    store
        .record_file_version(&id, &changed, Some("2025-01-01T00:00:00Z"))
        .await
        .unwrap();
    let newer = a_transcript(&store, &id).await;
    assert!(newer.exported_ms.unwrap() > t0, "new bytes: new time");
    assert_eq!(
        newer.source_modified_at.as_deref(),
        Some("2025-01-01T00:00:00Z")
    );

    store.mark_deleted_in_source(&id, "B", "404").await.unwrap();
    let problems = store.problems(&id).await.unwrap();
    assert_eq!(problems.len(), 1);
    assert_eq!(
        (
            problems[0].status.as_str(),
            problems[0].source_state.as_deref()
        ),
        ("skipped", Some(pipeline::store::DELETED_IN_SOURCE))
    );
    assert!(problems[0].at_ms > 0);

    store.mark_exported(&id, "A").await.unwrap();
    assert_eq!(store.manifest_generation(&id).await.unwrap(), 0);
    store
        .mark_unverified(&id, "A", &changed.key, "read-back")
        .await
        .unwrap();
    assert_eq!(store.manifest_generation(&id).await.unwrap(), 1);
    assert!(versions(&store, &id).await.is_empty());
}

/// A schedule in `org` whose next run is at `first_slot_ms`.
async fn a_schedule(store: &JobStore, org: &str) -> pipeline::schedules::Schedule {
    let name = format!("nightly-{}", uuid::Uuid::new_v4().simple());
    test_support::orgs::nightly_tenant_schedule(store, org, &name, "UTC", 0).await
}

async fn an_organisations_recent_runs_come_in_one_list(store: JobStore) {
    let (a, b) = (
        a_schedule(&store, "org-1").await,
        a_schedule(&store, "org-1").await,
    );
    let other = a_schedule(&store, "org-2").await;
    // Runs at slots 1..=n for each schedule (take_slot moves the next run along).
    for (s, n) in [(&a, 5i64), (&b, 2), (&other, 3)] {
        let mut next = s.next_run_ms;
        for i in 1..=n {
            assert!(store.take_slot(&s.id, next, i * 1000).await.unwrap());
            store
                .update_run(&s.id, next, "finished", None, None, Some((i as u64, 0)))
                .await
                .unwrap();
            next = i * 1000;
        }
    }
    let runs = store.recent_runs_of_org("org-1", 3).await.unwrap();
    assert_eq!(runs.len(), 2, "only org-1's schedules: {:?}", runs.keys());
    for s in [&a, &b] {
        assert_eq!(
            runs[&s.id],
            store.schedule_runs(&s.id, 3).await.unwrap(),
            "the same runs, newest first, as one schedule's own list"
        );
    }
    assert_eq!(runs[&a.id].len(), 3, "at most the limit per schedule");
    assert_eq!(runs[&b.id].len(), 2);
}

/// The manifest reads a job page by page (so memory stays flat in the number of
/// recordings): with pages of two, every row comes exactly once, in the order the
/// whole-list reads give, and each section ends with an empty page. The first page
/// includes a recording whose id is empty (Chorus sent one; it is recorded as failed).
async fn manifest_pages_cover_every_row_once_in_order(store: JobStore) {
    let id = JobId::new();
    store.create_job(&id, "org", "ana", &spec()).await.unwrap();
    let ids = ["E", "A", "D", "B", "C", "F", "G", ""];
    store.add_listed(&id, &ids.map(listed)).await.unwrap();
    for rec in ["E", "A", "D", "B"] {
        for (kind, fill) in [(FileKind::Media, 'a'), (FileKind::Transcript, 'b')] {
            store
                .record_file_version(&id, &file(rec, kind, fill), Some("2024-05-29T10:00:00Z"))
                .await
                .unwrap();
        }
        store.mark_exported(&id, rec).await.unwrap();
    }
    // Exported with no file row (nothing of the asked kinds existed).
    store.mark_exported(&id, "C").await.unwrap();
    store.mark_skipped(&id, "F", "private").await.unwrap();
    store.mark_dead(&id, "G", "gave up").await.unwrap();
    store
        .mark_dead(&id, "", "recording_id: must not be empty")
        .await
        .unwrap();

    let mut paged = Vec::new();
    let mut cursor = pipeline::store::ManifestCursor::default();
    loop {
        let (rows, next) = store.manifest_page(&id, &cursor, 2).await.unwrap();
        assert!(rows.len() <= 2);
        if rows.is_empty() {
            break;
        }
        paged.extend(rows);
        cursor = next;
    }
    let whole = store.manifest_entries(&id).await.unwrap();
    assert_eq!(whole.len(), 8);
    assert_eq!(
        paged.iter().map(|r| r.file.clone()).collect::<Vec<_>>(),
        whole
    );
    assert!(paged.iter().all(
        |r| r.source_modified_at.as_deref() == Some("2024-05-29T10:00:00Z")
            && r.exported_ms.is_some()
    ));

    let mut recordings = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .exported_recordings_page(&id, after.as_deref(), 2)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.recording.recording_id.clone());
        recordings.extend(page);
    }
    assert_eq!(
        recordings
            .iter()
            .map(|r| (r.recording.recording_id.as_str(), r.files.len()))
            .collect::<Vec<_>>(),
        [("A", 2), ("B", 2), ("C", 0), ("D", 2), ("E", 2)]
    );
    assert_eq!(recordings[0].recording, listed("A"));

    for (status, expected) in [("skipped", &["F"][..]), ("dead", &["", "G"])] {
        let page = store.problems_page(&id, status, None, 2).await.unwrap();
        assert_eq!(
            page.iter()
                .map(|p| p.recording_id.as_str())
                .collect::<Vec<_>>(),
            expected
        );
        let last = expected.last().copied();
        assert!(
            store
                .problems_page(&id, status, last, 2)
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(
        store
            .recording_at_key(&id, &file("D", FileKind::Media, 'a').key)
            .await
            .unwrap(),
        Some(("D".to_string(), Some(1_717_000_000)))
    );
    assert_eq!(
        store.recording_at_key(&id, "no/such/key").await.unwrap(),
        None
    );
}

/// The listing's date span widens page by page (whatever order the pages come in), and
/// the pending count the list stage waits on stops at its cap.
async fn the_listed_span_and_the_pending_backlog(store: JobStore) {
    let id = JobId::new();
    store.create_job(&id, "org", "ana", &spec()).await.unwrap();
    assert_eq!(store.progress(&id).await.unwrap().listed_span, None);
    let at = |rec: &str, t: Option<i64>| ListedRecording {
        recorded_at: t,
        ..listed(rec)
    };
    store
        .add_listed(
            &id,
            &[at("A", Some(500)), at("B", Some(300)), at("C", None)],
        )
        .await
        .unwrap();
    assert_eq!(
        store.progress(&id).await.unwrap().listed_span,
        Some((300, 500))
    );
    store.add_listed(&id, &[at("D", Some(100))]).await.unwrap();
    store.add_listed(&id, &[at("E", Some(900))]).await.unwrap();
    store.add_listed(&id, &[at("F", None)]).await.unwrap();
    assert_eq!(
        store.progress(&id).await.unwrap().listed_span,
        Some((100, 900))
    );
    assert_eq!(store.pending_up_to(&id, 100).await.unwrap(), 6);
    assert_eq!(store.pending_up_to(&id, 4).await.unwrap(), 4);
    store.mark_exported(&id, "A").await.unwrap();
    assert_eq!(store.pending_up_to(&id, 100).await.unwrap(), 5);
}

/// A listing longer than one INSERT (100 rows) is written whole, each row with its own
/// fields; a recording listed twice, in the same page or again later, is one row.
async fn a_long_listing_is_written_whole_and_once(store: JobStore) {
    let id = JobId::new();
    store.create_job(&id, "org", "ana", &spec()).await.unwrap();
    let row = |i: usize| ListedRecording {
        recording_id: format!("R{i:03}"),
        recorded_at: Some(1_700_000_000 + i as i64),
        duration_s: Some(i as f64 / 2.0),
        engagement_type: i.is_multiple_of(2).then(|| format!("type-{i}")),
    };
    let mut page: Vec<_> = (0..250).map(row).collect();
    page.push(row(7));
    store.add_listed(&id, &page).await.unwrap();
    let again: Vec<_> = (200..260).map(row).collect();
    store.add_listed(&id, &again).await.unwrap();
    let stored = store.pending_recordings(&id).await.unwrap();
    assert_eq!(stored.len(), 260);
    for (i, got) in stored.iter().enumerate() {
        let want = row(i);
        assert_eq!(
            (
                &got.recording_id,
                got.recorded_at,
                got.duration_s,
                &got.engagement_type
            ),
            (
                &want.recording_id,
                want.recorded_at,
                want.duration_s,
                &want.engagement_type
            )
        );
    }
}

macro_rules! contract {
    ($($case:ident),*) => {
        mod sqlite_backend { $( #[tokio::test] async fn $case() { let (s, _d) = super::sqlite().await; super::$case(s).await; } )* }
        mod postgres_backend { $( #[tokio::test] async fn $case() { let (s, _d) = super::postgres().await; super::$case(s).await; } )* }
    };
}

contract!(
    job_round_trip,
    completion_is_derived_from_rows,
    transitions_never_lose_a_success,
    final_jobs_are_never_overwritten,
    file_rows_are_idempotent,
    a_repeated_continuation_key_is_reported_as_a_loop,
    versions_states_and_the_manifest_generation,
    an_organisations_recent_runs_come_in_one_list,
    manifest_pages_cover_every_row_once_in_order,
    the_listed_span_and_the_pending_backlog,
    a_long_listing_is_written_whole_and_once
);

#[tokio::test]
async fn an_unreachable_database_gets_an_actionable_error() {
    let err = JobStore::connect("postgres://portshift:hunter2@127.0.0.1:1/nothing")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("PORTSHIFT_DATABASE_URL"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "password leaked into the error: {err}"
    );
}
