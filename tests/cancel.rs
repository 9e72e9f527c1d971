//! A job's end: its durable consumers are deleted (a frequent schedule would otherwise
//! pile them up), and a cancelled job stops at once: its transfers are dropped, their
//! local `.portshift-partial-*` files removed and their S3 multipart uploads aborted.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use pipeline::topology::{self, WORK_STREAM};
use pipeline::{ExportKinds, JobId, JobStatus};
use stages::worker::{self, WorkerCounters, WorkerOptions};

async fn consumers_of(h: &Harness, job: &JobId) -> Vec<String> {
    use futures::TryStreamExt;
    let stream = h.js.get_stream(WORK_STREAM).await.unwrap();
    let names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
    names
        .into_iter()
        .filter(|n| n.ends_with(job.as_str()))
        .collect()
}

async fn work_messages(h: &Harness) -> u64 {
    let mut stream = h.js.get_stream(WORK_STREAM).await.unwrap();
    stream.info().await.unwrap().state.messages
}

fn partial_files(root: &Path) -> Vec<String> {
    all_files_of(root)
        .into_iter()
        .filter(|p| p.contains(".portshift-partial-"))
        .collect()
}

/// Slow media (several seconds per file), so a cancel lands with transfers in flight.
fn slow_sim(recordings: usize, size: u64) -> stages::chorus::SimConfig {
    let mut sim = Harness::sim_config(recordings, 83);
    sim.sizes.min = size;
    sim.sizes.max = size;
    sim.faults.slow_media_bytes_per_sec = 1024 * 1024;
    sim
}

/// Runs a worker in the background; returns its join handle.
async fn background_worker(
    h: &Harness,
    job: &JobId,
    options: WorkerOptions,
) -> tokio::task::JoinHandle<JobStatus> {
    let ctx = worker::prepare(job, h.store.clone(), h.js.clone(), &credentials(), &options)
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let status = worker::run(ctx, options, WorkerCounters::default(), stop_rx)
            .await
            .unwrap();
        drop(stop_tx);
        status
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finished_job_leaves_no_consumers_and_the_work_stream_has_limits() {
    let h = Harness::start(Harness::sim_config(6, 81)).await;
    let (_out, job) = h.start_folder_job().await;
    let (status, _) = h
        .run_worker(&job, fast_options(), Duration::from_secs(60))
        .await;
    assert_eq!(status, JobStatus::Finished);
    assert_eq!(consumers_of(&h, &job).await, Vec::<String>::new());
    assert_eq!(work_messages(&h).await, 0);

    let mut stream = h.js.get_stream(WORK_STREAM).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, topology::WORK_MAX_AGE);
    assert_eq!(config.max_bytes, topology::WORK_MAX_BYTES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_work_stream_made_without_limits_gets_them() {
    let h = Harness::start(Harness::sim_config(1, 1)).await;
    let mut stream = h.js.get_stream(WORK_STREAM).await.unwrap();
    let mut bare = stream.info().await.unwrap().config.clone();
    bare.max_age = Duration::ZERO;
    bare.max_bytes = -1;
    h.js.update_stream(bare).await.unwrap();
    topology::ensure_streams(&h.js).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, topology::WORK_MAX_AGE);
}

/// A record stream made by an older portshift remembered ids for two minutes, which
/// costs the server memory in proportion to the export's rate: it is shortened, and
/// what else it has (its retention) is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_stream_made_with_the_old_duplicate_window_gets_the_short_one() {
    let h = Harness::start(Harness::sim_config(1, 1)).await;
    let mut stream = h.js.get_stream(topology::RECORD_STREAM).await.unwrap();
    let mut old = stream.info().await.unwrap().config.clone();
    assert_eq!(old.duplicate_window, topology::RECORD_DUPLICATE_WINDOW);
    old.duplicate_window = topology::DUPLICATE_WINDOW;
    h.js.update_stream(old).await.unwrap();
    topology::ensure_streams(&h.js).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.duplicate_window, topology::RECORD_DUPLICATE_WINDOW);
    assert_eq!(config.max_age, Duration::from_secs(24 * 3600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_drops_transfers_and_their_partial_files_at_once() {
    let h = Harness::start(slow_sim(12, 4 * 1024 * 1024)).await;
    let (out, job) = h.start_folder_job().await;
    let mut options = fast_options();
    options.fetch_concurrency = 3;
    let running = background_worker(&h, &job, options).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while partial_files(out.path()).is_empty() {
        assert!(Instant::now() < deadline, "no transfer started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.store
        .set_status(&job, JobStatus::Cancelled, Some("cancelled by test"))
        .await
        .unwrap();
    let cancelled = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the worker did not stop")
        .unwrap();
    assert_eq!(status, JobStatus::Cancelled);
    // A 4 MiB file at 1 MiB/s would take seconds to finish: it was dropped instead.
    assert!(
        cancelled.elapsed() < Duration::from_secs(3),
        "took {:?}",
        cancelled.elapsed()
    );
    assert_eq!(partial_files(out.path()), Vec::<String>::new());
    assert_eq!(consumers_of(&h, &job).await, Vec::<String>::new());
    assert_eq!(
        work_messages(&h).await,
        0,
        "the cancelled job's tasks stayed queued"
    );
    assert!(h.store.progress(&job).await.unwrap().exported < 12);
}

/// A fresh bucket and a job of every kind into it (prefix `cancel`).
async fn s3_job(h: &Harness) -> (aws_sdk_s3::Client, String, JobId) {
    let client = s3_client().await;
    let bucket = fresh_bucket(&client).await;
    let job = h
        .start_job(&s3_dest(&bucket, "cancel"), ExportKinds::default())
        .await;
    (client, bucket, job)
}

/// Cancels the job as the console does and waits for its worker to end cancelled.
async fn cancel_and_wait(h: &Harness, job: &JobId, running: tokio::task::JoinHandle<JobStatus>) {
    h.store
        .set_status(job, JobStatus::Cancelled, Some("cancelled by test"))
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the worker did not stop")
        .unwrap();
    assert_eq!(status, JobStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_aborts_open_multipart_uploads() {
    let h = Harness::start(slow_sim(6, 12 * 1024 * 1024)).await;
    let (client, bucket, job) = s3_job(&h).await;
    let mut options = fast_options();
    options.fetch_concurrency = 2;
    options.tuning.part_size = 5 * 1024 * 1024;
    // In parts: a streamed single request has no upload to abort (its case is below).
    options.tuning.single_request_max = 0;
    let running = background_worker(&h, &job, options).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open = client
            .list_multipart_uploads()
            .bucket(&bucket)
            .send()
            .await
            .unwrap();
        if !open.uploads().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no multipart upload started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel_and_wait(&h, &job, running).await;
    assert_no_open_uploads(&client, &bucket).await;
    assert_eq!(consumers_of(&h, &job).await, Vec::<String>::new());
}

/// Cancelled while files stream to S3 in one request each (the default for files up to
/// 64 MiB): the requests are dropped mid-body, so S3 stores none of the cut files, and
/// what the bucket holds is only whole files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_mid_stream_leaves_no_cut_object() {
    const SIZE: u64 = 12 * 1024 * 1024;
    let h = Harness::start(slow_sim(6, SIZE)).await;
    let (client, bucket, job) = s3_job(&h).await;
    let mut options = fast_options();
    options.fetch_concurrency = 2;
    let running = background_worker(&h, &job, options).await;
    // At 1 MiB/s a 12 MiB file takes 12 s: cancel once two MiB of media went out.
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.sim.stats.snapshot().media_bytes_served < 2 * 1024 * 1024 {
        assert!(Instant::now() < deadline, "no media transfer started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel_and_wait(&h, &job, running).await;
    assert_eq!(h.sim.stats.snapshot().media_completed, 0);
    let keys = list_keys(&client, &bucket, "cancel").await;
    // Metadata and transcripts are JSON; everything else is a recording's media.
    let media: Vec<&String> = keys
        .iter()
        .filter(|k| !k.ends_with(".json") && !k.contains("portshift-manifest"))
        .collect();
    assert!(media.is_empty(), "cut media stored in S3: {media:?}");
    assert_no_open_uploads(&client, &bucket).await;
}
