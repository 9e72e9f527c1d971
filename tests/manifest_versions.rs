//! Deleted and changed recordings in the manifest (docs/manifest.md, "Deleted and
//! changed recordings"), against the Chorus simulator with its test knobs: after the
//! listing returned them, one recording is deleted in Chorus and another one's
//! transcript is re-processed (Chorus moves `_modified_at` on). The manifest states the
//! deleted one as `deleted_in_source` with when it was found out, and for the changed
//! one which version was exported (`source_modified_at`, per file and per recording)
//! and when (`exported_at`); the files are that version, byte for byte.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use pipeline::JobStatus;
use pipeline::topology::Stage;
use stages::worker::WorkerCounters;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_and_a_reprocessed_recording_are_stated_in_the_manifest() {
    let h = Harness::start(Harness::sim_config(5, 81)).await;
    let root = h.tmp.path().join("export");
    let job = h.start_job_into(&root).await;
    let started: DateTime<Utc> = Utc::now();

    // The listing only: every recording is listed, none fetched yet.
    let creds = credentials();
    let lister = h
        .spawn_stages(&job, vec![Stage::List], &creds, WorkerCounters::default())
        .await;
    eventually(60, "the listing did not complete", || async {
        h.store.job(&job).await.unwrap().listing_complete
    })
    .await;
    lister.stop().await;
    assert_eq!(h.store.progress(&job).await.unwrap().listed, 5);

    // Chorus changes under the export: one recording deleted, one re-processed.
    let reprocessed_at: DateTime<Utc> = "2025-06-01T12:00:00Z".parse().unwrap();
    let (deleted, changed, old_transcript, new_transcript) = {
        let data = h.sim.dataset();
        let mut data = data.write().unwrap();
        let ids: Vec<String> = data.recordings().iter().map(|r| r.id.clone()).collect();
        let (deleted, changed) = (ids[1].clone(), ids[3].clone());
        let old = data.utterances(data.get(&changed).unwrap());
        assert!(data.delete(&deleted));
        assert_eq!(data.reprocess(&changed, reprocessed_at), Some(1));
        let r = data.get(&changed).unwrap();
        let new = data.utterances(r);
        (deleted, changed, old, new)
    };
    assert_ne!(
        old_transcript, new_transcript,
        "re-processing changes the transcript"
    );

    let (status, _) = h
        .run_worker_with(&job, fast_options(), Duration::from_secs(120), &creds)
        .await;
    assert_eq!(status, JobStatus::Finished);
    let finished: DateTime<Utc> = Utc::now();
    sha256sum_check(&root);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("portshift-manifest.json")).unwrap())
            .unwrap();

    // The deleted recording: stated as deleted in the source, with when, and nothing of
    // it exported.
    let skipped = doc["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{doc}");
    assert_eq!(skipped[0]["recording_id"], deleted.as_str());
    assert_eq!(skipped[0]["state"], "deleted_in_source", "{doc}");
    let at: DateTime<Utc> = skipped[0]["at"].as_str().unwrap().parse().unwrap();
    assert!(started <= at && at <= finished, "{at}");
    assert!(
        skipped[0]["reason"].as_str().unwrap().contains("deleted"),
        "{doc}"
    );
    let files = doc["files"].as_array().unwrap();
    assert!(files.iter().all(|f| f["recording_id"] != deleted.as_str()));
    assert!(
        doc["recordings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["recording_id"] != deleted.as_str())
    );
    assert_eq!(doc["totals"]["recordings"], 4);

    // The re-processed recording: its files are the new version and say so.
    let version = "2025-06-01T12:00:00Z";
    let mine: Vec<&serde_json::Value> = files
        .iter()
        .filter(|f| f["recording_id"] == changed.as_str())
        .collect();
    assert_eq!(mine.len(), 3, "{doc}");
    for f in &mine {
        assert_eq!(f["source_modified_at"], version, "{f}");
        let at: DateTime<Utc> = f["exported_at"].as_str().unwrap().parse().unwrap();
        assert!(started <= at && at <= finished, "{f}");
    }
    let transcript = mine.iter().find(|f| f["kind"] == "transcript").unwrap();
    let bytes = std::fs::read(root.join(transcript["path"].as_str().unwrap())).unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
        new_transcript,
        "the transcript exported is the re-processed one"
    );
    assert_eq!(transcript["sha256"], sha256_hex(&bytes).as_str());
    let metadata = mine.iter().find(|f| f["kind"] == "metadata").unwrap();
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join(metadata["path"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["attributes"]["_modified_at"], version, "{meta}");
    let recording = doc["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["recording_id"] == changed.as_str())
        .unwrap();
    assert_eq!(recording["source_modified_at"], version, "{recording}");
    assert!(recording["exported_at"].is_string(), "{recording}");

    // An unchanged recording's version is the end of its call, as Chorus reports it.
    let other = files
        .iter()
        .find(|f| f["recording_id"] != changed.as_str())
        .unwrap();
    let other_version: DateTime<Utc> = other["source_modified_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(other_version < reprocessed_at, "{other}");
}
