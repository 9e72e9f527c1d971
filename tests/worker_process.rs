//! The per-job worker process: credentials only on its standard input, core dumps off,
//! and when it dies mid-job the job waits in needs_credentials (it neither fails
//! silently nor restarts from scratch); resuming with credentials finishes it.

mod common;

use std::time::Duration;

use common::*;
use pipeline::JobStatus;
use stages::chorus::Faults;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_leaves_the_job_waiting_for_credentials_and_resume_finishes_it() {
    let recordings = 30;
    // Slow media, so the kill lands mid-job.
    let sim = Harness::slow_media_config(recordings, 61, 2 * 1024 * 1024);
    let h = Harness::start(sim).await;
    let (out, job) = h.start_folder_job().await;
    let db = h.database_url();
    let log = h.tmp.path().join("worker.log");
    let mut worker = spawn_worker(
        &h,
        &job,
        &db,
        &["--concurrency", "4", "--ack-wait-secs", "3"],
        &log,
    );

    // Core dumps are off for the process holding the secrets.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", worker.id())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!((fields[4], fields[5]), ("0", "0"), "{core}");

    tokio::time::timeout(Duration::from_secs(60), async {
        while h.store.progress(&job).await.unwrap().exported < 5 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    worker.kill().unwrap(); // SIGKILL: the credentials die with it
    worker.wait().unwrap();
    let before = h.store.progress(&job).await.unwrap();
    assert!(before.exported < recordings as u64, "killed mid-job");

    // Nobody is working on it: the job must say so, not look "running" forever.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        h.store
            .expire_silent_workers(Duration::from_secs(1))
            .await
            .unwrap(),
        1
    );
    let record = h.store.job(&job).await.unwrap();
    assert_eq!(record.status, JobStatus::NeedsCredentials);
    assert!(record.status_reason.unwrap().contains("resume"));

    // Resume with credentials: it finishes, and what was exported is not fetched again.
    h.sim.set_faults(Faults::default());
    let media_before = h.sim.stats.snapshot().media_requests;
    resume_to_the_end(&h, &job, &db).await;
    let refetched = h.sim.stats.snapshot().media_requests - media_before;
    assert!(
        refetched <= recordings as u64 - before.exported,
        "resume fetched {refetched} media files; only {} were missing",
        recordings as u64 - before.exported
    );
    assert_eq!(sha256sum_check(out.path()), recordings * 3);
}
