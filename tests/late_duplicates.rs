//! Late duplicates and late replays: the manifest is rewritten whenever a file's
//! recorded hash or a recording's final state changes, also after the job was final,
//! and it ends identical to what the destination holds (`sha256sum -c` passes).

mod common;

use std::time::Duration;

use common::*;
use pipeline::messages::FetchTask;
use pipeline::store::FileRow;
use pipeline::topology::{self, Stage};
use pipeline::{FileKind, JobStatus};
use stages::chorus::Faults;

fn manifest(out: &std::path::Path) -> String {
    std::fs::read_to_string(out.join("portshift-manifest.txt")).unwrap()
}

/// The slower copy of a duplicated fetch finishes after the job did, having exported a
/// metadata file whose bytes differ (Chorus changed the call's metadata in between):
/// its upload and file row land, then its recording is marked exported again. The
/// manifest must follow the new bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_duplicate_that_changes_a_files_bytes_rewrites_the_manifest() {
    let h = Harness::start(Harness::sim_config(4, 91)).await;
    let (out, job) = h.start_folder_job().await;
    let (status, _) = h
        .run_worker(&job, fast_options(), Duration::from_secs(60))
        .await;
    assert_eq!(status, JobStatus::Finished);
    assert_eq!(sha256sum_check(out.path()), 12);
    let before = manifest(out.path());

    // What the late copy's export of the metadata file does: the object, then its row.
    let rows = h.store.manifest_entries(&job).await.unwrap();
    let meta = rows.iter().find(|r| r.file == FileKind::Metadata).unwrap();
    let new_bytes = b"{\"changed\": \"after the job finished\"}\n";
    std::fs::write(out.path().join(&meta.key), new_bytes).unwrap();
    h.store
        .record_file(
            &job,
            &FileRow {
                bytes: new_bytes.len() as u64,
                sha256: sha256_hex(new_bytes),
                ..meta.clone()
            },
        )
        .await
        .unwrap();
    assert!(
        sha256sum_check_fails(out.path()),
        "the test did not make the manifest stale"
    );
    // ...and the rest of that copy: its fetch message is delivered to a worker (every
    // file already recorded, so it only settles the recording again).
    topology::publish_json(
        &h.js,
        Stage::Fetch.subject(&job),
        &format!(
            "{}.late",
            topology::msg_id(&job, "fetch", &[&meta.recording_id])
        ),
        &FetchTask {
            job: job.clone(),
            recording_id: meta.recording_id.clone(),
            recorded_at: None,
        },
    )
    .await
    .unwrap();
    let (status, _) = h
        .run_worker(&job, fast_options(), Duration::from_secs(60))
        .await;
    assert_eq!(status, JobStatus::Finished);
    let after = manifest(out.path());
    assert_ne!(before, after, "the manifest was not rewritten");
    assert!(after.contains(&sha256_hex(new_bytes)));
    assert_eq!(sha256sum_check(out.path()), 12);
    assert_eq!(
        h.store.job(&job).await.unwrap().manifest_sha256.unwrap(),
        sha256_hex(after.as_bytes())
    );
}

/// A recording dead-lettered during the job, replayed after the job finished (its
/// message put back by the stock nats recipe): a worker that finds the job final still
/// runs it, and the manifest gains the recording.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_recording_replayed_after_the_job_finished_reaches_the_manifest() {
    let h = Harness::start(Harness::sim_config(3, 92)).await;
    let out = tempfile::tempdir().unwrap();
    h.sim.set_faults(Faults {
        rate_truncate: 1.0,
        ..Faults::default()
    });
    let job = h.start_job_into(out.path()).await;
    let mut options = fast_options();
    options.runner.max_deliveries = 1;
    let (status, _) = h.run_worker(&job, options, Duration::from_secs(60)).await;
    assert_eq!(status, JobStatus::FinishedWithFailures);
    h.sim.set_faults(Faults::default());
    // The dead recordings' metadata and transcripts made it; their media did not.
    let before = manifest(out.path());
    assert_eq!(before.lines().count(), 6, "{before}");

    let letters = pipeline::replay::dead_letters(&h.js, &job, Some(Stage::Fetch))
        .await
        .unwrap();
    assert_eq!(letters.len(), 3);
    // Replay one, without reopening the job (as `nats pub` would).
    pipeline::replay::replay(&h.js, &job, &letters[0])
        .await
        .unwrap();
    let (status, _) = h
        .run_worker(&job, fast_options(), Duration::from_secs(60))
        .await;
    assert_eq!(status, JobStatus::FinishedWithFailures);
    let p = h.store.progress(&job).await.unwrap();
    assert_eq!((p.exported, p.dead), (1, 2));
    let text = manifest(out.path());
    assert_eq!(
        text.lines().count(),
        7,
        "the replayed media is missing:\n{text}"
    );
    assert_eq!(sha256sum_check(out.path()), 7);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("portshift-manifest.json")).unwrap())
            .unwrap();
    assert_eq!(json["totals"]["failed"], 2);
    assert_eq!(json["totals"]["files"], 7);
}

fn sha256sum_check_fails(dir: &std::path::Path) -> bool {
    !std::process::Command::new("sha256sum")
        .args(["-c", "--quiet", "portshift-manifest.txt"])
        .current_dir(dir)
        .output()
        .unwrap()
        .status
        .success()
}
