//! End-to-end exports against real servers: the Chorus simulator → JetStream stages
//! (a real nats-server per test) → SeaweedFS S3 or a local folder, checked with the
//! real `sha256sum -c` and by comparing every object with the simulator's bytes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use pipeline::runner::RunnerConfig;
use pipeline::topology::{self, Stage};
use pipeline::{ExportKinds, JobId, JobStatus};
use stages::chorus::Faults;

fn mixed_sizes(recordings: usize, seed: u64) -> stages::chorus::SimConfig {
    let mut c = Harness::sim_config(recordings, seed);
    // Mostly small calls, and every 75th a 65 MiB video, so multipart is exercised.
    c.sizes.min = 16 * 1024;
    c.sizes.max = 1536 * 1024;
    c.sizes.large_every = 75;
    c.sizes.large_size = 65 * 1024 * 1024;
    c
}

/// What must hold after any export to S3: every media object byte-identical to the
/// simulator's, the manifest complete and exact, and `sha256sum -c` passing on a copy.
async fn check_s3_export(h: &Harness, bucket: &str, prefix: &str) -> usize {
    let s3 = s3_client().await;
    let keys = list_keys(&s3, bucket, prefix).await;
    let expected = expected_media(&h.sim);
    for (path, sha) in &expected {
        let bytes = get_object(&s3, bucket, &format!("{prefix}/{path}")).await;
        assert_eq!(
            &sha256_hex(&bytes),
            sha,
            "{path} differs from the simulator's media"
        );
    }
    let manifest = String::from_utf8(
        get_object(&s3, bucket, &format!("{prefix}/portshift-manifest.txt")).await,
    )
    .unwrap();
    let lines: Vec<&str> = manifest.lines().collect();
    let listed: BTreeSet<&str> = lines.iter().map(|l| &l[66..]).collect();
    assert_eq!(listed.len(), lines.len(), "duplicate manifest lines");
    let files: Vec<&String> = keys
        .iter()
        .filter(|k| !k.starts_with("portshift-manifest"))
        .collect();
    assert_eq!(
        lines.len(),
        files.len(),
        "manifest lines != files in the bucket"
    );
    assert_eq!(
        files.len(),
        expected.len() * 3,
        "media, transcript and metadata per recording"
    );
    let copy = tempfile::tempdir().unwrap();
    download(&s3, bucket, prefix, copy.path()).await;
    assert_eq!(sha256sum_check(copy.path()), lines.len());
    lines.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_recordings_to_s3() {
    let h = Harness::start(mixed_sizes(300, 11)).await;
    let s3 = s3_client().await;
    let bucket = fresh_bucket(&s3).await;
    let job = h
        .start_job(&s3_dest(&bucket, "calls/2024"), ExportKinds::default())
        .await;
    let started = std::time::Instant::now();
    let (status, _) = h
        .run_worker(&job, fast_options(), Duration::from_secs(600))
        .await;
    report_job_rate(&h, &job, "s3 (SeaweedFS)", started.elapsed()).await;
    assert_eq!(status, JobStatus::Finished);
    let files = check_s3_export(&h, &bucket, "calls/2024").await;
    assert_eq!(files, 900);
    let record = h.store.job(&job).await.unwrap();
    let manifest = get_object(&s3, &bucket, "calls/2024/portshift-manifest.txt").await;
    assert_eq!(
        record.manifest_sha256.as_deref(),
        Some(sha256_hex(&manifest).as_str()),
        "job record keeps the manifest's digest"
    );
    assert_eq!(
        h.sim.stats.snapshot().media_auth_rejected,
        0,
        "the Chorus token reached the media host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_recordings_to_a_local_folder() {
    let h = Harness::start(mixed_sizes(300, 12)).await;
    let out = tempfile::tempdir().unwrap();
    let root = out.path().join("export");
    let job = h.start_job_into(&root).await;
    let started = std::time::Instant::now();
    let (status, _) = h
        .run_worker(&job, fast_options(), Duration::from_secs(600))
        .await;
    report_job_rate(&h, &job, "local folder", started.elapsed()).await;
    assert_eq!(status, JobStatus::Finished);
    for (path, sha) in expected_media(&h.sim) {
        let bytes = std::fs::read(root.join(&path)).unwrap();
        assert_eq!(sha256_hex(&bytes), sha, "{path}");
    }
    let files = all_files_of(&root);
    assert!(
        files.iter().all(|f| !f.contains("portshift-partial")),
        "temporary files left behind"
    );
    let lines = sha256sum_check(&root);
    assert_eq!(lines, files.len() - 2, "manifest lines != files");
    assert_eq!(lines, 900);

    // The console's stage totals come from the hash and upload records: they count
    // every file the job store holds, the last second's too, once.
    let progress = h.store.progress(&job).await.unwrap();
    assert_eq!(progress.files, 900);
    for subject in [topology::hash_subject(&job), topology::upload_subject(&job)] {
        assert_eq!(
            record_totals(&h.js, &subject).await,
            (progress.files, progress.bytes),
            "{subject}"
        );
    }
}

/// Files and bytes summed over every record on `subject` (a hash or upload subject).
async fn record_totals(js: &async_nats::jetstream::Context, subject: &str) -> (u64, u64) {
    use async_nats::jetstream::consumer;
    use futures::StreamExt;
    let stream = js.get_stream(topology::RECORD_STREAM).await.unwrap();
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.to_string(),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut left = consumer.cached_info().num_pending;
    let (mut files, mut bytes) = (0, 0);
    while left > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(left.min(500) as usize)
            .messages()
            .await
            .unwrap();
        while let Some(msg) = batch.next().await {
            let record: serde_json::Value = serde_json::from_slice(&msg.unwrap().payload).unwrap();
            files += record["files"].as_u64().unwrap();
            bytes += record["bytes"].as_u64().unwrap();
            left -= 1;
        }
    }
    (files, bytes)
}

/// At-least-once delivery: every fetch task is delivered twice (re-published with a new
/// msg-id so JetStream's duplicate window cannot hide it). Nothing is duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fetch_delivered_twice_changes_nothing() {
    let h = Harness::start(mixed_sizes(120, 13)).await;
    let s3 = s3_client().await;
    let bucket = fresh_bucket(&s3).await;
    let job = h
        .start_job(&s3_dest(&bucket, "twice"), ExportKinds::default())
        .await;

    // List only, so every fetch task sits in the stream; then duplicate each one.
    let lister = h
        .spawn_stages(&job, vec![Stage::List], &credentials(), Default::default())
        .await;
    eventually(60, "the listing did not complete", || async {
        h.store.progress(&job).await.unwrap().listing_complete
    })
    .await;
    lister.stop().await;

    let stream = h.js.get_stream(topology::WORK_STREAM).await.unwrap();
    let info = stream.get_info().await.unwrap();
    let mut duplicated = 0;
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        if msg.subject.as_str() != Stage::Fetch.subject(&job) {
            continue;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("dup-{seq}").as_str());
        topology::publish_raw(&h.js, msg.subject.to_string(), headers, msg.payload.clone())
            .await
            .unwrap();
        duplicated += 1;
    }
    assert_eq!(duplicated, 120);

    // Fetch only, until originals and duplicates are all processed (a full worker
    // stops as soon as the job is finished, which may be before the duplicates).
    let counters = stages::worker::WorkerCounters::default();
    let fetcher = h
        .spawn_stages(&job, vec![Stage::Fetch], &credentials(), counters.clone())
        .await;
    let processed = || {
        counters
            .fetch
            .processed
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    tokio::time::timeout(Duration::from_secs(300), async {
        while processed() < 240 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every original and duplicate fetch is processed");
    fetcher.stop().await;

    let (status, _) = h
        .run_worker(&job, fast_options(), Duration::from_secs(300))
        .await;
    assert_eq!(status, JobStatus::Finished);
    assert_eq!(check_s3_export(&h, &bucket, "twice").await, 360);
}

/// Chorus misbehaves: 429 bursts with Retry-After, 10 % 5xx, 10 % of media bodies cut
/// short. The export still completes and every file is correct; a cut-short body never
/// becomes an object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chorus_faults_still_export_every_file_correctly() {
    let mut config = mixed_sizes(150, 14);
    config.sizes.large_every = 50;
    config.sizes.large_size = 20 * 1024 * 1024;
    config.faults = Faults {
        rate_429: 0.03,
        burst_429: 4,
        retry_after_secs: 1,
        rate_5xx: 0.10,
        rate_truncate: 0.10,
        ..Faults::default()
    };
    let h = Harness::start(config).await;
    let s3 = s3_client().await;
    let bucket = fresh_bucket(&s3).await;
    let job = h
        .start_job(&s3_dest(&bucket, "faults"), ExportKinds::default())
        .await;
    let (status, _) = h
        .run_worker(&job, fast_options(), Duration::from_secs(600))
        .await;
    assert_eq!(
        status,
        JobStatus::Finished,
        "{:?}",
        h.store.problems(&job).await.unwrap()
    );
    let stats = h.sim.stats.snapshot();
    assert!(
        stats.faults_truncated > 0 && stats.faults_5xx > 0 && stats.faults_429 > 0,
        "faults were injected: {stats:?}"
    );
    assert_eq!(check_s3_export(&h, &bucket, "faults").await, 450);
    assert_no_open_uploads(&s3, &bucket).await;
}

/// Chorus hands back a continuation key it already gave (A -> B -> A): instead of
/// paging forever the job fails, saying the listing loops, and names no success.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_looping_listing_fails_the_job_instead_of_paging_forever() {
    let mut config = Harness::sim_config(25, 16);
    config.page_size = 10;
    config.faults = Faults {
        cyclic_listing: true,
        ..Faults::default()
    };
    let h = Harness::start(config).await;
    let (_out, job) = h.start_folder_job().await;
    let (status, counters) = h
        .run_worker(&job, fast_options(), Duration::from_secs(120))
        .await;
    assert_eq!(status, JobStatus::Failed);
    let record = h.store.job(&job).await.unwrap();
    let reason = record.status_reason.unwrap_or_default();
    assert!(
        reason.contains("listing loops") && reason.contains("page 3") && reason.contains("page 1"),
        "{reason}"
    );
    assert_eq!(
        counters
            .list
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Three pages were requested, not an endless stream of them.
    assert!(h.sim.stats.snapshot().api_requests < 200);
}

/// A media body that is cut short on every attempt: the recording ends dead (recorded,
/// replayable), its media never appears at its final key, and nothing partial remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_always_cut_short_never_reaches_a_final_key() {
    let mut config = Harness::sim_config(4, 15);
    config.sizes.large_every = 2;
    config.sizes.large_size = 18 * 1024 * 1024;
    config.faults = Faults {
        rate_truncate: 1.0,
        ..Faults::default()
    };
    let h = Harness::start(config).await;
    let s3 = s3_client().await;
    let bucket = fresh_bucket(&s3).await;
    let local = tempfile::tempdir().unwrap();
    let mut options = fast_options();
    options.runner.max_deliveries = 2;
    for dest in [
        s3_dest(&bucket, "cut"),
        format!("file://{}", local.path().display()),
    ] {
        let job = h.start_job(&dest, ExportKinds::default()).await;
        let (status, counters) = h
            .run_worker(&job, options.clone(), Duration::from_secs(120))
            .await;
        assert_eq!(status, JobStatus::FinishedWithFailures, "{dest}");
        assert_eq!(
            counters
                .fetch
                .dead_lettered
                .load(std::sync::atomic::Ordering::Relaxed),
            4
        );
        let p = h.store.progress(&job).await.unwrap();
        assert_eq!((p.exported, p.dead), (0, 4));
        assert!(
            h.store
                .problems(&job)
                .await
                .unwrap()
                .iter()
                .all(|p| p.reason.contains("cut short")),
            "{:?}",
            h.store.problems(&job).await.unwrap()
        );
    }
    let keys = list_keys(&s3, &bucket, "cut").await;
    assert!(
        keys.iter()
            .all(|k| !k.ends_with(".mp4") && !k.ends_with(".mp3")),
        "media object at a final key: {keys:?}"
    );
    assert_no_open_uploads(&s3, &bucket).await;
    let files = all_files_of(local.path());
    assert!(
        files
            .iter()
            .all(|f| !f.ends_with(".mp4") && !f.ends_with(".mp3") && !f.contains("partial")),
        "{files:?}"
    );
    // The manifest lists exactly the complete files that exist.
    assert_eq!(sha256sum_check(local.path()), files.len() - 2);
}

/// What must hold after an export to Azure or GCS, read back with the provider's own
/// SDK: every media object byte-identical to the simulator's, exactly the manifest's
/// files (each recording once), and `sha256sum -c` passing on the downloaded copy.
fn check_cloud_export(h: &Harness, listing: &common::cloud::Listing, copy: &std::path::Path) {
    let expected = expected_media(&h.sim);
    for (path, sha) in &expected {
        let got = listing
            .objects
            .get(path)
            .unwrap_or_else(|| panic!("{path} is missing"));
        assert_eq!(
            &got.sha256, sha,
            "{path} differs from the simulator's media"
        );
    }
    let manifest = std::fs::read_to_string(copy.join("portshift-manifest.txt")).unwrap();
    let lines: Vec<&str> = manifest.lines().collect();
    let listed: BTreeSet<&str> = lines.iter().map(|l| &l[66..]).collect();
    assert_eq!(listed.len(), lines.len(), "duplicate manifest lines");
    let files: BTreeSet<&str> = listing
        .objects
        .keys()
        .map(String::as_str)
        .filter(|k| !k.starts_with("portshift-manifest"))
        .collect();
    assert_eq!(
        listed, files,
        "manifest paths != objects at the destination"
    );
    assert_eq!(files.len(), expected.len() * 3);
    assert_eq!(sha256sum_check(copy), lines.len());
}

/// MB/s of an export from the job's own progress rows, printed (`--nocapture`).
async fn report_job_rate(h: &Harness, job: &pipeline::JobId, what: &str, took: Duration) {
    let files = h.store.manifest_entries(job).await.unwrap();
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    eprintln!(
        "{what}: {} files, {:.1} MiB in {:.1} s = {:.1} MiB/s",
        files.len(),
        bytes as f64 / 1048576.0,
        took.as_secs_f64(),
        bytes as f64 / 1048576.0 / took.as_secs_f64()
    );
}

/// Runs `job` to the end with `credentials` (fast options, ten minutes at most), checks
/// it finished without problems, and returns how long it took.
async fn run_to_the_end(
    h: &Harness,
    job: &pipeline::JobId,
    credentials: &pipeline::secrets::Credentials,
) -> Duration {
    let started = std::time::Instant::now();
    let (status, _) = h
        .run_worker_with(job, fast_options(), Duration::from_secs(600), credentials)
        .await;
    let took = started.elapsed();
    assert_eq!(
        status,
        JobStatus::Finished,
        "{:?}",
        h.store.problems(job).await.unwrap()
    );
    took
}

/// MB/s of an export, printed for the closing note (`--nocapture` shows it).
fn report_rate(what: &str, listing: &common::cloud::Listing, took: Duration) {
    let bytes: u64 = listing.objects.values().map(|o| o.bytes).sum();
    eprintln!(
        "{what}: {} objects, {:.1} MiB in {:.1} s = {:.1} MiB/s",
        listing.objects.len(),
        bytes as f64 / 1048576.0,
        took.as_secs_f64(),
        bytes as f64 / 1048576.0 / took.as_secs_f64()
    );
}

/// The 300-recording export to Azurite, with a SAS token that grants only create and
/// write (the least privilege docs/permissions.md asks customers for).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_recordings_to_azure_with_a_create_write_sas() {
    let h = Harness::start(mixed_sizes(300, 21)).await;
    let (container, sas) = common::cloud::azure_container("cw");
    let job = h
        .start_job(
            &common::cloud::azure_dest(&container, "calls/2024"),
            ExportKinds::default(),
        )
        .await;
    let took = run_to_the_end(
        &h,
        &job,
        &common::cloud::cloud_credentials(Some(&sas), None),
    )
    .await;
    let copy = tempfile::tempdir().unwrap();
    let listing = common::cloud::azure_download(&container, "calls/2024", copy.path());
    report_rate("azure (Azurite)", &listing, took);
    check_cloud_export(&h, &listing, copy.path());
    assert_eq!(listing.uncommitted_blocks, 0, "uncommitted blocks left");
    assert!(
        listing.objects.values().all(|o| o.md5.is_some()),
        "every blob has the Content-MD5 the service checked"
    );
    let media = listing
        .objects
        .get(expected_media(&h.sim).keys().next().unwrap())
        .unwrap();
    assert!(media.content_type.as_deref().unwrap_or("").contains('/'));
}

/// The 300-recording export to fake-gcs-server with a service-account key, and the
/// BigQuery metadata sink on bqemulator: one row per recording, streamed with
/// insertId = recording id (checked on the wire through a recording proxy, because
/// the emulator does not de-duplicate by insertId as BigQuery does), read back with a
/// query.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_recordings_to_gcs_with_bigquery_rows() {
    let h = Harness::start(mixed_sizes(300, 22)).await;
    let endpoint = env_or_fail("PORTSHIFT_TEST_GCS_ENDPOINT");
    let bucket = common::cloud::gcs_bucket(&endpoint);
    let key = common::cloud::service_account_json(&common::cloud::token_server().await);
    let bq = common::cloud::recording_proxy(
        env_or_fail("PORTSHIFT_TEST_BQ_ENDPOINT")
            .trim_end_matches("/bigquery/v2")
            .to_string(),
    )
    .await;
    let project = env_or_fail("PORTSHIFT_TEST_BQ_PROJECT");
    let dataset = format!("d{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let dest = format!(
        "{}&bigquery={project}.{dataset}.recordings&bigquery_endpoint={}/bigquery/v2",
        common::cloud::gcs_dest(&endpoint, &bucket, "calls/2024"),
        bq.url
    );
    let job = h.start_job(&dest, ExportKinds::default()).await;
    let took = run_to_the_end(
        &h,
        &job,
        &common::cloud::cloud_credentials(None, Some(&key)),
    )
    .await;
    let copy = tempfile::tempdir().unwrap();
    let listing = common::cloud::gcs_download(&endpoint, &bucket, "calls/2024", copy.path());
    report_rate("gcs (fake-gcs-server)", &listing, took);
    check_cloud_export(&h, &listing, copy.path());

    // On the wire: every insertAll row's insertId is its recording id.
    let mut ids = BTreeSet::new();
    for (method, path, body) in bq.requests.lock().unwrap().iter() {
        if method == "POST" && path.ends_with("/insertAll") {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            for row in v["rows"].as_array().unwrap() {
                assert_eq!(row["insertId"], row["json"]["recording_id"], "{row}");
                assert_eq!(row["json"]["job_id"], job.as_str());
                ids.insert(row["insertId"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(ids.len(), 300, "one insertId per recording");

    // Read back with a query: one row per exported recording, with its files' digests.
    let client = common::cloud::bigquery_emulator_client().await;
    let sql = format!(
        "SELECT recording_id, media_sha256, participants, duration_s FROM `{project}.{dataset}.recordings`"
    );
    let rs = client
        .job()
        .query(
            &project,
            gcp_bigquery_client::model::query_request::QueryRequest::new(sql),
        )
        .await
        .unwrap();
    let mut rows =
        gcp_bigquery_client::model::query_response::ResultSet::new_from_query_response(rs);
    let manifest = std::fs::read_to_string(copy.path().join("portshift-manifest.txt")).unwrap();
    let media_shas: BTreeSet<&str> = manifest
        .lines()
        .filter(|l| l.ends_with(".mp4") || l.ends_with(".mp3"))
        .map(|l| &l[..64])
        .collect();
    let mut seen = BTreeSet::new();
    while rows.next_row() {
        let id = rows.get_string_by_name("recording_id").unwrap().unwrap();
        assert!(seen.insert(id.clone()), "{id} has two rows");
        if let Some(sha) = rows.get_string_by_name("media_sha256").unwrap() {
            assert!(
                media_shas.contains(sha.as_str()),
                "{id}: {sha} not in the manifest"
            );
        }
        assert!(rows.get_i64_by_name("participants").unwrap().unwrap_or(0) > 0);
    }
    assert_eq!(seen, ids, "the table holds exactly the exported recordings");
}

/// A simulator of `recordings` 1 KiB recordings listed 25 to a page, and a job of
/// their media into a new folder.
async fn small_media_job(recordings: usize, seed: u64) -> (Harness, tempfile::TempDir, JobId) {
    let mut config = Harness::sim_config(recordings, seed);
    config.page_size = 25;
    config.sizes.min = 1024;
    config.sizes.max = 1024;
    let h = Harness::start(config).await;
    let out = tempfile::tempdir().unwrap();
    let job = h
        .start_job(
            &format!("file://{}", out.path().display()),
            ExportKinds {
                media: true,
                transcript: false,
                metadata: false,
            },
        )
        .await;
    (h, out, job)
}

/// The largest number of the job's recordings that waited to be fetched at once while a
/// worker with `list_ahead` ran the job to its end (sampled every 10 ms); it checks that
/// the job finished with every recording's media written.
async fn most_waiting_with(list_ahead: u64) -> u64 {
    const RECORDINGS: usize = 200;
    let (h, out, job) = small_media_job(RECORDINGS, 31).await;
    let sampler = {
        let (store, job) = (h.store.clone(), job.clone());
        tokio::spawn(async move {
            let mut most = 0;
            loop {
                most = most.max(store.pending_up_to(&job, u64::MAX).await.unwrap());
                if store.job(&job).await.unwrap().status.is_final() {
                    return most;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let options = stages::worker::WorkerOptions {
        list_ahead,
        fetch_concurrency: 2,
        ..fast_options()
    };
    let (status, _) = h.run_worker(&job, options, Duration::from_secs(300)).await;
    assert_eq!(status, JobStatus::Finished, "list_ahead {list_ahead}");
    assert_eq!(
        sha256sum_check(out.path()),
        expected_media(&h.sim).len(),
        "list_ahead {list_ahead}: not every recording's media is in the manifest"
    );
    sampler.await.unwrap()
}

/// A backfill holds a bounded queue: the list stage lists the next page only while at
/// most `list_ahead` recordings wait to be fetched, so no more than that plus one page
/// (25 here) ever wait, and every recording is still exported. The control: with the
/// default (2,000), the whole listing of 200 runs ahead of the fetches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listing_stays_a_bounded_distance_ahead_of_the_fetches() {
    let bounded = most_waiting_with(30).await;
    assert!(
        bounded <= 30 + 25,
        "{bounded} recordings waited at once with list_ahead 30 and pages of 25"
    );
    let unbounded = most_waiting_with(stages::list::DEFAULT_LIST_AHEAD).await;
    eprintln!(
        "most recordings waiting: {bounded} with list_ahead 30, {unbounded} with the default"
    );
    assert!(
        unbounded > 30 + 25,
        "the control never saw a backlog ({unbounded}): the sampler cannot tell the bound works"
    );
}

/// A list stage waiting for the backlog does not hold its worker: stopped while it
/// waits, the worker returns at once and puts the unlisted page back as a new message.
/// Stopped that way more often than a message may be delivered (8 times), the listing
/// is still not dead-lettered, and the next worker exports everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_stops_at_once_while_its_listing_waits_for_the_fetches() {
    let (h, out, job) = small_media_job(120, 32).await;
    // Only the list stage: nothing fetches, so after the first page it waits.
    let options = stages::worker::WorkerOptions {
        list_ahead: 10,
        stages: vec![Stage::List],
        ..fast_options()
    };
    let list_consumer = Stage::List.consumer_name(&job);
    let in_flight = || async {
        let stream = h.js.get_stream(topology::WORK_STREAM).await.unwrap();
        stream
            .consumer_info(&list_consumer)
            .await
            .map(|c| c.num_ack_pending)
            .unwrap_or(0)
    };
    let stops = RunnerConfig::default().max_deliveries + 1;
    for stop in 1..=stops {
        let ctx = stages::worker::prepare(
            &job,
            h.store.clone(),
            h.js.clone(),
            &credentials(),
            &options,
        )
        .await
        .unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let counters = stages::worker::WorkerCounters::default();
        let lister = tokio::spawn(stages::worker::run(
            ctx,
            options.clone(),
            counters.clone(),
            stop_rx,
        ));
        // Wait until the page is listed (first round) and the next one is held.
        let waiting = async {
            while h.store.pending_up_to(&job, u64::MAX).await.unwrap() < 25
                || in_flight().await == 0
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .unwrap_or_else(|_| panic!("stop {stop}: the listing never waited"));
        // Longer than a few backlog polls: the stage is waiting, not listing.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            h.store.pending_up_to(&job, u64::MAX).await.unwrap(),
            25,
            "stop {stop}: a second page was listed while 25 recordings waited (list_ahead 10)"
        );
        stop_tx.send(true).unwrap();
        let stopped = tokio::time::timeout(Duration::from_secs(5), lister).await;
        assert!(
            stopped.is_ok(),
            "stop {stop}: the worker did not return within 5 s of being stopped"
        );
        assert_eq!(
            counters
                .list
                .dead_lettered
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "stop {stop}"
        );
    }
    let (status, _) = h
        .run_worker(&job, fast_options(), Duration::from_secs(300))
        .await;
    assert_eq!(status, JobStatus::Finished);
    assert_eq!(sha256sum_check(out.path()), expected_media(&h.sim).len());
}

/// While a bounded listing is still running, the ETA's total is estimated from the share
/// of the job's dates listed: an estimate exists well before the listing completes,
/// never below what is listed, and once a third of the recordings is listed it is
/// within a quarter of the true total (the simulator spreads dates evenly at random).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unfinished_listing_still_gives_an_estimated_total() {
    let (h, _out, job) = small_media_job(400, 33).await;
    let spec = h.store.job(&job).await.unwrap().spec;
    let (from, to) = (spec.from.timestamp(), spec.to.timestamp());
    let sampler = {
        let (store, job) = (h.store.clone(), job.clone());
        tokio::spawn(async move {
            // (listed, estimated total) while the listing ran
            let mut seen = Vec::new();
            loop {
                let p = store.progress(&job).await.unwrap();
                if p.listing_complete {
                    return (seen, p.listed);
                }
                if let Some(pipeline::store::ExpectedTotal::Estimated { total, .. }) =
                    p.expected_total(from, to)
                {
                    seen.push((p.listed, total));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let options = stages::worker::WorkerOptions {
        list_ahead: 30,
        fetch_concurrency: 2,
        ..fast_options()
    };
    let (status, _) = h.run_worker(&job, options, Duration::from_secs(300)).await;
    assert_eq!(status, JobStatus::Finished);
    let (seen, total) = sampler.await.unwrap();
    assert!(
        seen.first().is_some_and(|(listed, _)| *listed <= total / 4),
        "no estimate while a quarter of the listing was left: {seen:?}"
    );
    for (listed, estimate) in &seen {
        assert!(
            estimate >= listed,
            "{estimate} estimated with {listed} listed"
        );
        if *listed >= total / 3 {
            let error = (*estimate as f64 - total as f64).abs() / total as f64;
            assert!(
                error <= 0.25,
                "{estimate} estimated with {listed} listed; the total was {total}"
            );
        }
    }
}
