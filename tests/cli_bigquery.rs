//! The BigQuery metadata sink asked for on the command line, run as a user runs it: the
//! built `portshift` binary, `export` and `schedule create` + `scheduler`, with a
//! `file://` destination whose folder name needs percent-encoding and
//! `?bigquery=…&bigquery_endpoint=…` pointing at bqemulator. The table must then hold
//! exactly one row per exported recording, with the manifest's media digests (issue
//! 15: the CLI used to store the destination without its sink, and no row was written).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use pipeline::destination_url::{BigQueryUrl, DestinationUrl, Storage};

fn portshift() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portshift"))
}

/// A fresh dataset on bqemulator, and the destination URL that asks for its table,
/// rendered by the destination model (so the folder name is percent-encoded).
fn destination(root: &Path) -> (String, String, String) {
    let project = env_or_fail("PORTSHIFT_TEST_BQ_PROJECT");
    let dataset = format!("d{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let dest = DestinationUrl {
        storage: Storage::Local {
            root: root.to_path_buf(),
        },
        bigquery: Some(BigQueryUrl {
            project: project.clone(),
            dataset: dataset.clone(),
            table: "recordings".into(),
            endpoint: Some(env_or_fail("PORTSHIFT_TEST_BQ_ENDPOINT")),
        }),
    };
    (dest.to_string(), project, dataset)
}

/// A folder whose name a URL would misread unless it is encoded.
fn awkward_folder(parent: &Path) -> PathBuf {
    let root = parent.join("exports #1 ?50% Grüße");
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// A service-account key whose token endpoint is a local OAuth server.
async fn key_file(dir: &Path) -> PathBuf {
    let key = common::cloud::service_account_json(&common::cloud::token_server().await);
    let path = dir.join("key.json");
    std::fs::write(&path, key).unwrap();
    path
}

/// `recording id -> media_sha256` of every row in the table.
async fn table_rows(project: &str, dataset: &str) -> Vec<(String, Option<String>)> {
    let client = common::cloud::bigquery_emulator_client().await;
    let sql = format!("SELECT recording_id, media_sha256 FROM `{project}.{dataset}.recordings`");
    let rs = client
        .job()
        .query(
            project,
            gcp_bigquery_client::model::query_request::QueryRequest::new(sql),
        )
        .await
        .unwrap();
    let mut rows =
        gcp_bigquery_client::model::query_response::ResultSet::new_from_query_response(rs);
    let mut out = Vec::new();
    while rows.next_row() {
        out.push((
            rows.get_string_by_name("recording_id").unwrap().unwrap(),
            rows.get_string_by_name("media_sha256").unwrap(),
        ));
    }
    out
}

/// `recording id -> media SHA-256` from the manifest text files under `root`.
fn manifest_media(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("portshift-manifest") && name.ends_with(".txt")) {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let (sha, file) = line.split_once("  ").unwrap();
            if file.ends_with(".mp4") || file.ends_with(".mp3") {
                let id = file.rsplit('/').nth(1).unwrap().to_string();
                assert!(
                    out.insert(id.clone(), sha.to_string()).is_none(),
                    "{id} twice"
                );
            }
        }
    }
    out
}

/// Exactly one row per exported recording, each with the manifest's media digest.
async fn assert_rows_match_manifest(root: &Path, project: &str, dataset: &str, expected: usize) {
    let manifest = manifest_media(root);
    assert_eq!(manifest.len(), expected, "recordings in the manifest");
    let rows = table_rows(project, dataset).await;
    assert_eq!(
        rows.len(),
        manifest.len(),
        "one row per exported recording: {rows:?}"
    );
    let ids: BTreeSet<&String> = rows.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), rows.len(), "no recording has two rows");
    for (id, sha) in &rows {
        assert_eq!(
            sha.as_ref(),
            manifest.get(id),
            "{id}: the row's media_sha256 is the manifest's"
        );
    }
}

/// `sha256sum -c --strict` of every manifest in `root` (a scheduled run's manifest is
/// `portshift-manifest-<job>.txt`); the number of files checked.
fn check_manifests(root: &Path) -> usize {
    let mut checked = 0;
    for entry in std::fs::read_dir(root).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if name.starts_with("portshift-manifest") && name.ends_with(".txt") {
            let out = Command::new("sha256sum")
                .args(["-c", "--strict", &name])
                .current_dir(root)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", output_text(&out));
            checked += String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.ends_with(": OK"))
                .count();
        }
    }
    checked
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_command_writes_one_bigquery_row_per_recording() {
    let recordings = 12;
    let h = Harness::start(Harness::sim_config(recordings, 151)).await;
    let out = tempfile::tempdir().unwrap();
    let root = awkward_folder(out.path());
    let (dest, project, dataset) = destination(&root);
    let key = key_file(h.tmp.path()).await;
    let run = portshift()
        .args([
            "export",
            "--chorus-url",
            h.sim.api_url.as_str(),
            "--from",
            "2000-01-01",
            "--to",
            "2100-01-01",
            "--dest",
            &dest,
            "--nats-url",
            &h.nats.as_ref().unwrap().url(),
            "--data-dir",
        ])
        .arg(h.tmp.path().join("cli-state"))
        .env("CHORUS_API_TOKEN", TOKEN)
        .env("GOOGLE_APPLICATION_CREDENTIALS", &key)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", output_text(&run));
    // The files went to the folder the URL names, not to a truncated or escaped one.
    assert!(root.join("portshift-manifest.txt").is_file(), "{root:?}");
    assert_eq!(sha256sum_check(&root), recordings * 3);
    assert_rows_match_manifest(&root, &project, &dataset, recordings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_runs_write_one_bigquery_row_per_recording() {
    let recordings = 10;
    let h = Harness::start(Harness::sim_config(recordings, 152)).await;
    let out = tempfile::tempdir().unwrap();
    let root = awkward_folder(out.path());
    let (dest, project, dataset) = destination(&root);
    let key = key_file(h.tmp.path()).await;
    let token = h.tmp.path().join("chorus-token");
    std::fs::write(&token, TOKEN).unwrap();
    let db = format!("sqlite://{}/cli.sqlite3", h.tmp.path().display());
    let nats = h.nats.as_ref().unwrap().url();
    let state = ["--nats-url", nats.as_str(), "--database-url", db.as_str()];

    let created = portshift()
        .args([
            "schedule",
            "create",
            "--name",
            "bq",
            "--cron",
            "*/3 * * * * *",
        ])
        .args(["--start", "2000-01-01", "--dest", &dest])
        .args(["--chorus-url", h.sim.api_url.as_str()])
        .arg(format!("--chorus-token-ref=file:{}", token.display()))
        .arg(format!("--gcs-ref=file:{}", key.display()))
        .args(state)
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", output_text(&created));
    let stdout = String::from_utf8_lossy(&created.stdout).to_string();
    let id = stdout
        .strip_prefix("schedule ")
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no schedule id in {stdout:?}"))
        .to_string();

    let mut scheduler = portshift()
        .args(["scheduler", "--tick-secs", "1"])
        .args(state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first run to end, as `portshift schedule runs` shows it
    // (`<slot>  <status>  job <id> ...`, newest first).
    let runs = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let runs = portshift()
                .args(["schedule", "runs", &id])
                .args(state)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&runs.stdout).to_string();
            let ended: Vec<String> = text
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|s| !matches!(*s, "starting" | "running" | "skipped"))
                .map(str::to_string)
                .collect();
            if !ended.is_empty() {
                return (ended, text);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    let paused = portshift()
        .args(["schedule", "pause", &id])
        .args(state)
        .output()
        .unwrap();
    // SIGINT: the scheduler lets the run in progress end, then exits.
    unsafe { libc::kill(scheduler.id() as i32, libc::SIGINT) };
    let stopped = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if scheduler.try_wait().unwrap().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if stopped.is_err() {
        let _ = scheduler.kill();
        let _ = scheduler.wait();
    }
    let (ended, text) = runs.expect("the scheduled run did not end in 120 s");
    assert!(paused.status.success(), "{}", output_text(&paused));
    assert!(ended.iter().all(|s| s == "finished"), "{text}");
    assert_eq!(check_manifests(&root), recordings * 3);
    assert_rows_match_manifest(&root, &project, &dataset, recordings).await;
}
