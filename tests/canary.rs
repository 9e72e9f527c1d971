//! Trust rules as tests. A real `portshift worker` process gets recognisable canary
//! credentials on its standard input and exports a job. While it runs, its
//! `/proc/<pid>/cmdline` and `/proc/<pid>/environ` are read; afterwards every byte
//! portshift persisted or logged (the JetStream store, the job database — SQLite files,
//! or PostgreSQL's whole data directory — and the worker's debug log) is searched for
//! the canaries. The recordings' bytes carry a marker the simulator embeds; it must not
//! be in the JetStream store or the database either.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use pipeline::store::JobStore;
use pipeline::{JobId, JobSpec, JobStatus};
use stages::chorus::MEDIA_MARKER;

struct Canaries {
    chorus: String,
    webhook: String,
    s3_secret: String,
}

async fn run_canary_export(
    database_url: String,
    store: JobStore,
    data_dirs: Vec<PathBuf>,
) -> JobId {
    let canaries = Canaries {
        chorus: format!("CANARY-CHORUS-{}", uuid::Uuid::new_v4().simple()),
        webhook: format!("CANARY-HOOK-{}", uuid::Uuid::new_v4().simple()),
        s3_secret: env_or_fail("PORTSHIFT_TEST_S3_SECRET_KEY"),
    };
    let mut sim = Harness::sim_config(40, 31);
    sim.token = canaries.chorus.clone();
    sim.sizes.large_every = 20;
    sim.sizes.large_size = 12 * 1024 * 1024;
    let h = Harness::start(sim).await;
    let s3 = s3_client().await;
    let bucket = fresh_bucket(&s3).await;
    let (hook_url, hook_seen) = webhook().await;

    let spec = JobSpec {
        webhook_url: Some(hook_url),
        ..export_spec(h.sim.api_url.as_str(), &s3_dest(&bucket, "canary"))
    };
    let job = create_and_list(&store, &h.js, &spec, "org", "tester").await;

    let log_path = h.tmp.path().join("worker.log");
    let mut child = worker_process(&h, &job, &database_url)
        .env("PORTSHIFT_LOG", "debug")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(h.tmp.path().join("worker.out")).unwrap())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let creds = serde_json::json!({
        "chorus_token": canaries.chorus,
        "s3": {"access_key_id": env_or_fail("PORTSHIFT_TEST_S3_ACCESS_KEY"), "secret_access_key": canaries.s3_secret},
        "webhook_secret": canaries.webhook,
    });
    hand_document(&mut child, &creds);

    // While it runs: its argv and environment hold none of the secrets.
    let pid = child.id();
    let mut samples = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        for what in ["cmdline", "environ"] {
            if let Ok(bytes) = std::fs::read(format!("/proc/{pid}/{what}")) {
                for secret in [&canaries.chorus, &canaries.webhook, &canaries.s3_secret] {
                    assert!(
                        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                        "a secret is in /proc/{pid}/{what}"
                    );
                }
                samples += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        status.success(),
        "worker failed: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    assert!(samples >= 2, "the worker was never observed running");
    assert_eq!(store.job(&job).await.unwrap().status, JobStatus::Finished);
    assert_eq!(
        list_keys(&s3, &bucket, "canary").await.len(),
        40 * 3 + 2,
        "the export itself worked"
    );

    // The webhook got the summary, signed with the secret, and not the secret itself.
    let hooks = hook_seen.lock().unwrap().clone();
    assert_eq!(hooks.len(), 1);
    let (headers, body) = &hooks[0];
    let ts: i64 = headers["portshift-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        headers["portshift-signature"].to_str().unwrap(),
        stages::notify::signature(canaries.webhook.as_bytes(), ts, body)
    );
    let summary: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(summary["recordings_exported"], 40);

    // Everything portshift persisted or logged: no secret, and no recording bytes.
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.lines().count() > 10,
        "the debug log is not empty, so the search means something"
    );
    let mut places = vec![
        h.tmp.path().to_path_buf(),
        h.nats.as_ref().unwrap().store_dir().to_path_buf(),
    ];
    places.extend(data_dirs);
    let mut searched = 0;
    for place in &places {
        // A place that is not there would make the search below pass unseen.
        assert!(place.is_dir(), "{} is not a folder", place.display());
        searched += count_files(place);
        for secret in [&canaries.chorus, &canaries.webhook, &canaries.s3_secret] {
            let hits = files_containing(place, secret.as_bytes());
            assert!(hits.is_empty(), "a secret was written to {hits:?}");
        }
        let hits = files_containing(place, MEDIA_MARKER);
        assert!(hits.is_empty(), "recording bytes were written to {hits:?}");
    }
    // Positive control: the same search does find what is there (the job id).
    assert!(
        !files_containing(
            h.nats.as_ref().unwrap().store_dir(),
            job.as_str().as_bytes()
        )
        .is_empty(),
        "the search cannot find the job id in the JetStream store"
    );
    eprintln!("canary: searched {searched} files under {places:?}; /proc sampled {samples} times");
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_or_recording_byte_at_rest_with_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/jobs.sqlite3", dir.path().display());
    let store = JobStore::connect(&url).await.unwrap();
    let job = run_canary_export(url, store, vec![dir.path().to_path_buf()]).await;
    assert!(
        !files_containing(dir.path(), job.as_str().as_bytes()).is_empty(),
        "the search cannot find the job id in the SQLite files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_or_recording_byte_at_rest_with_postgres() {
    let base = env_or_fail("PORTSHIFT_TEST_POSTGRES_URL");
    let url = fresh_database_on(&base, "canary").await;
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    let store = JobStore::connect(url.as_str()).await.unwrap();
    let data_dir: String = sqlx::query_scalar("SHOW data_directory")
        .fetch_one(&admin)
        .await
        .unwrap();
    let probe = std::path::PathBuf::from(&data_dir);
    let job = run_canary_export(url.to_string(), store, vec![]).await;
    // Make PostgreSQL write everything it holds, then search its whole data directory.
    sqlx::query("CHECKPOINT").execute(&admin).await.unwrap();
    for secret in ["CANARY-CHORUS-", "CANARY-HOOK-"] {
        let hits = files_containing(&probe, secret.as_bytes());
        assert!(
            hits.is_empty(),
            "a secret reached PostgreSQL's files: {hits:?}"
        );
    }
    let hits = files_containing(&probe, MEDIA_MARKER);
    assert!(
        hits.is_empty(),
        "recording bytes reached PostgreSQL's files: {hits:?}"
    );
    // Positive control: the job's own row is found in the data directory.
    assert!(
        !files_containing(&probe, job.as_str().as_bytes()).is_empty(),
        "the search cannot find the job id in PostgreSQL's files"
    );
    eprintln!(
        "canary: searched {} files of PostgreSQL's data directory {data_dir}",
        count_files(&probe)
    );
}
