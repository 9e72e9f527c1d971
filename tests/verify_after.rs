//! `--verify-after` on SeaweedFS S3, Azurite and fake-gcs-server: an object altered
//! behind portshift's back between its upload and the verification is reported, its
//! recording fails with the file named, and its fetch waits in the dead-letter stream
//! for `portshift replay`. Positive controls: an untouched export verifies and finishes;
//! a SAS without read permission stops the job with a pointer to docs/permissions.md.

mod common;

use std::time::Duration;

use common::*;
use pipeline::secrets::Credentials;
use pipeline::topology::Stage;
use pipeline::{ExportOptions, JobId, JobSpec, JobStatus};
use stages::destination::{DestinationUrl, Tuning};
use stages::worker::WorkerCounters;

async fn start_verified_job(h: &Harness, destination: &str) -> JobId {
    let spec = JobSpec {
        options: ExportOptions {
            verify_after: true,
            ..Default::default()
        },
        ..export_spec(h.sim.api_url.as_str(), destination)
    };
    create_and_list(&h.store, &h.js, &spec, "test-org", "tester").await
}

/// Runs only list and fetch (hash and upload run inside fetch) until every recording is
/// settled: the files are uploaded, the manifest and the verification not yet done.
async fn upload_only(h: &Harness, job: &JobId, creds: &Credentials) {
    let worker = h
        .spawn_stages(
            job,
            vec![Stage::List, Stage::Fetch],
            creds,
            WorkerCounters::default(),
        )
        .await;
    eventually(120, "the uploads did not settle", || async {
        h.store.is_settled(job).await.unwrap()
    })
    .await;
    worker.stop().await;
}

/// Overwrites one uploaded media file at the destination (as someone with write access
/// to the bucket could), returning its path.
async fn tamper(h: &Harness, job: &JobId, destination: &str, creds: &Credentials) -> String {
    let files = h.store.manifest_entries(job).await.unwrap();
    let victim = files
        .iter()
        .find(|f| f.key.ends_with(".mp4"))
        .unwrap()
        .key
        .clone();
    let url: DestinationUrl = destination.parse().unwrap();
    let dest = stages::destination::open_with(
        &url,
        creds.into(),
        &Tuning::default(),
        stages::http::ca_file_from_env().as_deref(),
    )
    .await
    .unwrap();
    dest.put_bytes(
        &victim,
        bytes::Bytes::from_static(b"not the recording"),
        "video/mp4",
    )
    .await
    .unwrap();
    victim
}

/// The rest of the job (manifest, verification, notify) until it is final.
async fn finish(h: &Harness, job: &JobId, creds: &Credentials) -> JobStatus {
    h.run_worker_with(job, fast_options(), Duration::from_secs(120), creds)
        .await
        .0
}

/// A verified export into `dest` whose one file is altered between its upload and the
/// read-back, run to the end and checked to report it; returns the job and that file.
async fn altered_and_reported(h: &Harness, dest: &str, creds: &Credentials) -> (JobId, String) {
    let job = start_verified_job(h, dest).await;
    upload_only(h, &job, creds).await;
    let victim = tamper(h, &job, dest, creds).await;
    let status = finish(h, &job, creds).await;
    assert_reported(h, &job, &victim, status).await;
    (job, victim)
}

async fn assert_reported(h: &Harness, job: &JobId, victim: &str, status: JobStatus) {
    assert_eq!(status, JobStatus::FinishedWithFailures);
    let problems = h.store.problems(job).await.unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].status, "dead");
    assert!(
        problems[0].reason.contains(victim) && problems[0].reason.contains("read-back"),
        "{problems:?}"
    );
    let recording = victim.rsplit('/').nth(1).unwrap();
    let letters = pipeline::replay::dead_letters(&h.js, job, Some(Stage::Fetch))
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let task: pipeline::messages::FetchTask = serde_json::from_slice(&letters[0].payload).unwrap();
    assert_eq!(task.recording_id, recording);
    assert!(letters[0].error.contains(victim));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_an_object_altered_after_upload_is_reported_and_replayable() {
    let h = Harness::start(Harness::sim_config(6, 71)).await;
    let s3 = s3_client().await;
    let bucket = fresh_bucket(&s3).await;
    let dest = s3_dest(&bucket, "verified");
    let creds = credentials();
    let (job, victim) = altered_and_reported(&h, &dest, &creds).await;

    // Replaying the parked fetch exports the recording again, byte-exact.
    let letters = pipeline::replay::dead_letters(&h.js, &job, None)
        .await
        .unwrap();
    pipeline::replay::replay(&h.js, &job, &letters[0])
        .await
        .unwrap();
    h.store.reopen(&job).await.unwrap();
    let fetcher = h
        .spawn_stages(&job, vec![Stage::Fetch], &creds, WorkerCounters::default())
        .await;
    eventually(
        60,
        "the replayed recording was not exported again",
        || async { h.store.progress(&job).await.unwrap().dead == 0 },
    )
    .await;
    fetcher.stop().await;
    let expected = expected_media(&h.sim);
    let bytes = get_object(&s3, &bucket, &format!("verified/{victim}")).await;
    assert_eq!(&sha256_hex(&bytes), expected.get(&victim).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_an_untouched_export_verifies_and_finishes() {
    let h = Harness::start(Harness::sim_config(6, 72)).await;
    let s3 = s3_client().await;
    let bucket = fresh_bucket(&s3).await;
    let job = start_verified_job(&h, &s3_dest(&bucket, "verified")).await;
    let status = finish(&h, &job, &credentials()).await;
    assert_eq!(
        status,
        JobStatus::Finished,
        "{:?}",
        h.store.problems(&job).await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_an_object_altered_after_upload_is_reported() {
    let h = Harness::start(Harness::sim_config(5, 73)).await;
    // Verification reads: this SAS adds read (r) to create and write.
    let (container, sas) = common::cloud::azure_container("rcw");
    let dest = common::cloud::azure_dest(&container, "verified");
    let creds = common::cloud::cloud_credentials(Some(&sas), None);
    altered_and_reported(&h, &dest, &creds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_verification_without_read_permission_says_what_is_missing() {
    let h = Harness::start(Harness::sim_config(3, 74)).await;
    let (container, sas) = common::cloud::azure_container("cw");
    let creds = common::cloud::cloud_credentials(Some(&sas), None);
    let job = start_verified_job(&h, &common::cloud::azure_dest(&container, "v")).await;
    let status = finish(&h, &job, &creds).await;
    assert_eq!(status, JobStatus::NeedsCredentials);
    let reason = h.store.job(&job).await.unwrap().status_reason.unwrap();
    assert!(
        reason.contains("read permission") && reason.contains("docs/permissions.md"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gcs_an_object_altered_after_upload_is_reported() {
    let h = Harness::start(Harness::sim_config(5, 75)).await;
    let endpoint = env_or_fail("PORTSHIFT_TEST_GCS_ENDPOINT");
    let bucket = common::cloud::gcs_bucket(&endpoint);
    let key = common::cloud::service_account_json(&common::cloud::token_server().await);
    let creds = common::cloud::cloud_credentials(None, Some(&key));
    let dest = common::cloud::gcs_dest(&endpoint, &bucket, "verified");
    altered_and_reported(&h, &dest, &creds).await;
}

/// The whole loop within seconds, well inside JetStream's 2-minute duplicate window:
/// read-back verification finds a file altered at the destination, the job finishes
/// with that file's recording failed, `replay` uploads it again, and the manifest is
/// written again (not dropped as a duplicate of the first request, whose content it
/// repeats), the job finishes clean, and the export checks out with `sha256sum -c`
/// and Debian's `minisign`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_after_a_failed_read_back_writes_the_manifest_again() {
    let h = Harness::start(Harness::sim_config(4, 76)).await;
    let keys = tempfile::tempdir().unwrap();
    let (sk, pk) = (keys.path().join("k.key"), keys.path().join("k.pub"));
    pipeline::signing::generate(&sk, &pk).unwrap();
    let creds = signed_credentials(&sk);
    let root = h.tmp.path().join("export");
    let dest = format!("file://{}", root.display());
    let (job, victim) = altered_and_reported(&h, &dest, &creds).await;
    let first_written = std::time::Instant::now();
    let read_json = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(root.join("portshift-manifest.json")).unwrap())
            .unwrap()
    };
    let first = read_json();
    let time = |v: &serde_json::Value| -> chrono::DateTime<chrono::Utc> {
        v.as_str().unwrap().parse().unwrap()
    };
    let file_exported_at = |doc: &serde_json::Value| -> chrono::DateTime<chrono::Utc> {
        doc["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == victim.as_str())
            .unwrap_or_else(|| panic!("{victim} not in the manifest"))["exported_at"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let first_victim_at = file_exported_at(&first);

    let letters = pipeline::replay::dead_letters(&h.js, &job, None)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    pipeline::replay::replay(&h.js, &job, &letters[0])
        .await
        .unwrap();
    h.store.reopen(&job).await.unwrap();
    let (status, _) = h
        .run_worker_with(&job, fast_options(), Duration::from_secs(60), &creds)
        .await;
    assert!(
        first_written.elapsed() < Duration::from_secs(100),
        "the replay must land inside the duplicate window to test it"
    );
    assert_eq!(
        status,
        JobStatus::Finished,
        "{:?}",
        h.store.problems(&job).await.unwrap()
    );

    // The manifest was written again: a later export time, the re-uploaded file's new
    // time, no failures left; the export checks out with stock tools.
    let again = read_json();
    assert!(
        time(&again["exported_at"]) > time(&first["exported_at"]),
        "the manifest was not written again: {} vs {}",
        again["exported_at"],
        first["exported_at"]
    );
    assert!(file_exported_at(&again) > first_victim_at);
    assert_eq!(again["failed"], serde_json::json!([]), "{again}");
    sha256sum_check(&root);
    let (ok, out) = minisign_verify(&root, "portshift-manifest.txt", &pk);
    assert!(ok, "{out}");
    let json_sha = sha256_hex(&std::fs::read(root.join("portshift-manifest.json")).unwrap());
    assert!(
        out.contains(&format!("manifest_json_sha256={json_sha}")),
        "the signature is over the rewritten manifest: {out}"
    );
}
