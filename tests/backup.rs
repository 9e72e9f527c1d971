//! Backup and restore, on SQLite and PostgreSQL, through the real `portshift` binary:
//! a backup taken while an export runs, restored into a fresh store (a restore into a
//! store that holds data is refused), shows the same job history; `portshift resume`
//! with a fresh NATS server finishes the job that was running at backup time; and the
//! backup's bytes hold no credential (canary), though they do hold the job ids.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use pipeline::accounts::Accounts;
use pipeline::secrets::Credentials;
use pipeline::store::JobStore;
use pipeline::{JobId, JobStatus};
use secrecy::SecretString;
use stages::worker::{self, WorkerCounters};

async fn postgres_url() -> String {
    fresh_database("backup").await.to_string()
}

fn portshift(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portshift"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap());
    if let Ok(bin) = std::env::var("PORTSHIFT_NATS_SERVER_BIN") {
        cmd.env("PORTSHIFT_NATS_SERVER_BIN", bin);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "{what} failed: {}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).to_string() + &stderr
}

async fn start_job(h: &Harness, dest: &Path) -> JobId {
    let dest = format!("file://{}", dest.display());
    let spec = export_spec(h.sim.api_url.as_str(), &dest);
    create_and_list(&h.store, &h.js, &spec, "local", "ops").await
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// `store_url` is the store the harness works in; `fresh_store` are the `restore`
/// arguments naming a fresh one, at `fresh_url`.
async fn backup_case(store_url: String, fresh_store: Vec<String>, fresh_url: String) {
    let canary = format!("CANARY-CHORUS-{}", uuid::Uuid::new_v4().simple());
    let mut sim = Harness::sim_config(30, 5);
    sim.token = canary.clone();
    sim.page_size = 10;
    sim.faults.slow_ms = 30;
    let mut h = Harness::start(sim).await;
    h.store = JobStore::connect(&store_url).await.unwrap();
    let creds = Credentials::new(SecretString::from(canary.clone()));

    // History: one finished job, then one that runs while the backup is taken.
    let done_dest = h.tmp.path().join("done");
    let done = start_job(&h, &done_dest).await;
    let (status, _) = h
        .run_worker_with(&done, fast_options(), Duration::from_secs(120), &creds)
        .await;
    assert_eq!(status, JobStatus::Finished);

    let running_dest = h.tmp.path().join("running");
    let running = start_job(&h, &running_dest).await;
    let mut options = fast_options();
    options.fetch_concurrency = 1;
    let ctx = worker::prepare(&running, h.store.clone(), h.js.clone(), &creds, &options)
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(worker::run(
        ctx,
        options,
        WorkerCounters::default(),
        stop_rx,
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while h.store.progress(&running).await.unwrap().exported < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the export never got going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backup = h.tmp.path().join("store.backup");
    let out = portshift(
        &[
            "backup",
            "--to",
            backup.to_str().unwrap(),
            "--database-url",
            &store_url,
        ],
        &[],
    );
    ok(&out, "backup");
    let _ = stop_tx.send(true);
    assert_eq!(
        run.await.unwrap().unwrap(),
        JobStatus::Running,
        "stopped mid-export"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o600,
        "the backup is readable by its owner only"
    );

    // The backup holds no credential, but does hold the jobs (so the search works).
    let bytes = std::fs::read(&backup).unwrap();
    assert!(
        !contains(&bytes, &canary),
        "the Chorus token is in the backup"
    );
    assert!(!contains(&bytes, "CANARY-"), "a canary is in the backup");
    assert!(contains(&bytes, running.as_str()) && contains(&bytes, done.as_str()));

    // A store that holds data is not restored over.
    let out = portshift(
        &[
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--database-url",
            &store_url,
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not empty") && err.contains("jobs"), "{err}");

    // Into a fresh store: the same history.
    let mut args = vec!["restore", "--from", backup.to_str().unwrap()];
    args.extend(fresh_store.iter().map(String::as_str));
    ok(&portshift(&args, &[]), "restore");
    let restored = JobStore::connect(&fresh_url).await.unwrap();
    let ids = |jobs: Vec<pipeline::store::JobRecord>| -> Vec<(JobId, JobStatus)> {
        jobs.into_iter().map(|j| (j.id, j.status)).collect()
    };
    assert_eq!(
        ids(restored.recent_jobs(10).await.unwrap()),
        ids(h.store.recent_jobs(10).await.unwrap())
    );
    let history = |s: &JobStore| {
        let accounts = Accounts::new(s);
        async move { accounts.job_history("local", None, 0, 10).await.unwrap() }
    };
    let (before, after) = (history(&h.store).await, history(&restored).await);
    assert_eq!(after.1, 2);
    assert_eq!(
        after.0.iter().find(|j| j.id == done),
        before.0.iter().find(|j| j.id == done),
        "the finished job's history is the same"
    );
    let at_backup = restored.progress(&running).await.unwrap();
    assert!(!at_backup.settled(), "the backup was taken mid-export");

    // Resume the running job on the restored store, with a new NATS server.
    let fresh_dir = tempfile::tempdir().unwrap();
    let args = [
        "resume",
        running.as_str(),
        "--data-dir",
        fresh_dir.path().to_str().unwrap(),
        "--database-url",
        fresh_url.as_str(),
    ];
    let out = portshift(&args, &[("CHORUS_API_TOKEN", &canary)]);
    let text = ok(&out, "resume");
    assert!(text.contains("queued again"), "{text}");
    let record = restored.job(&running).await.unwrap();
    assert_eq!(record.status, JobStatus::Finished, "{text}");
    let p = restored.progress(&running).await.unwrap();
    assert_eq!(p.pending, 0);
    assert!(p.exported > at_backup.exported);
    let checked = sha256sum_check(&running_dest);
    assert_eq!(
        checked as u64, p.files,
        "every exported file is in the manifest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_and_restore_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}", dir.path().join("jobs.sqlite3").display());
    let fresh = tempfile::tempdir().unwrap();
    let fresh_url = format!(
        "sqlite://{}",
        fresh.path().join("portshift.sqlite3").display()
    );
    backup_case(
        store_url,
        vec!["--data-dir".into(), fresh.path().display().to_string()],
        fresh_url,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_and_restore_on_postgres() {
    let store_url = postgres_url().await;
    let fresh_url = postgres_url().await;
    backup_case(
        store_url,
        vec!["--database-url".into(), fresh_url.clone()],
        fresh_url,
    )
    .await;
}
