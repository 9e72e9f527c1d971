//! Shared test harness: a fresh `nats-server` per test (temporary store, free port), a
//! fresh SQLite job store, the Chorus simulator in-process, and a fresh bucket on the
//! project's SeaweedFS S3 server (started by `scripts/test`, found via the
//! `PORTSHIFT_TEST_*` variables it exports). The helpers shared with the other crates'
//! tests come from the `test-support` crate and are re-exported here.
#![allow(dead_code, unused_imports)]

pub mod cloud;

// The helpers every test crate shares live in the `test-support` crate; this module
// adds what needs this package's `portshift` binary or its simulator.
pub use test_support::files::{count_files, files_containing};
pub use test_support::http::{Received, serve, webhook};
pub use test_support::postgres::{fresh_database, fresh_database_on};
pub use test_support::process::{Killed, free_port, log_file, logged_command, stop_gracefully};
pub use test_support::s3::{
    assert_no_open_uploads, fresh_bucket, get_object, list_keys, s3_client, s3_dest,
};
pub use test_support::{env_or_fail, plans::on_team_plan};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use pipeline::embedded_nats::EmbeddedNats;
use pipeline::schedules::{CredentialRefs, Schedule, ScheduleTemplate};
use pipeline::secrets::{Credentials, S3Credentials};
use pipeline::store::JobStore;
use pipeline::topology::{self, Stage};
use pipeline::{ExportKinds, JobId, JobSpec, JobStatus};
use secrecy::SecretString;
use stages::chorus::{SimConfig, SimHandle};
use stages::worker::{self, WorkerCounters, WorkerOptions};
use tempfile::TempDir;

pub const TOKEN: &str = "test-chorus-token";

/// The `portshift` binary under test. Cargo names it only to this package's tests, so
/// the helpers that start it live here; `test-support` stops what they start.
pub const PORTSHIFT: &str = env!("CARGO_BIN_EXE_portshift");

/// The portshift binary under test: `PORTSHIFT_TEST_BIN` when set (a copy kept apart
/// from a shared target folder), else the one cargo built for this test.
pub fn portshift_bin() -> std::path::PathBuf {
    std::env::var_os("PORTSHIFT_TEST_BIN")
        .map(Into::into)
        .unwrap_or_else(|| PORTSHIFT.into())
}

/// Fails, showing its standard output and error, unless the command run for `what`
/// (its output `out`) succeeded.
pub fn assert_success(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether a checking tool (`minisign`, `bagit.py`) passed, and what it printed
/// (standard output, then standard error).
pub fn passed_with_output(out: &std::process::Output) -> (bool, String) {
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs the real `minisign -Vm <manifest> -p <key>` in `dir`; returns (passed, output).
pub fn minisign_verify(dir: &Path, manifest: &str, public_key: &Path) -> (bool, String) {
    let out = std::process::Command::new("minisign")
        .arg("-Vm")
        .arg(manifest)
        .arg("-p")
        .arg(public_key)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "could not run minisign ({e}): install Debian's minisign (deploy/local/install.sh)"
            )
        });
    passed_with_output(&out)
}

/// The origin (`scheme://host:port`, the port always written) of `url`, as the
/// `--allow-origin` flag takes it.
pub fn origin(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    format!(
        "{}://{}:{}",
        u.scheme(),
        u.host_str().unwrap(),
        u.port_or_known_default().unwrap()
    )
}

/// The Chorus simulator with `config`, its API and media servers on free loopback ports.
pub async fn start_sim(config: SimConfig) -> SimHandle {
    stages::chorus::sim::start(
        config,
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

pub struct Harness {
    pub tmp: TempDir,
    pub nats: Option<EmbeddedNats>,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub store: JobStore,
    pub sim: SimHandle,
}

impl Harness {
    pub async fn start(sim: SimConfig) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let nats = EmbeddedNats::start(tmp.path())
            .await
            .expect("start nats-server");
        let client = pipeline::config::connect_nats(&nats.url(), None)
            .await
            .unwrap();
        let js = jetstream::new(client.clone());
        topology::ensure_streams(&js).await.unwrap();
        let store = JobStore::open_sqlite_in(tmp.path()).await.unwrap();
        let sim = start_sim(sim).await;
        Self {
            tmp,
            nats: Some(nats),
            client,
            js,
            store,
            sim,
        }
    }

    pub fn sim_config(recordings: usize, seed: u64) -> SimConfig {
        let mut c = SimConfig::demo(recordings, seed);
        c.token = TOKEN.into();
        c.sizes.min = 16 * 1024;
        c.sizes.max = 1024 * 1024;
        c
    }

    /// [`Harness::sim_config`] with every recording 512 KiB and media served at
    /// `bytes_per_sec`, so a kill or a stop lands mid-job.
    pub fn slow_media_config(recordings: usize, seed: u64, bytes_per_sec: u64) -> SimConfig {
        let mut c = Self::sim_config(recordings, seed);
        c.sizes.min = 512 * 1024;
        c.sizes.max = 512 * 1024;
        c.faults = stages::chorus::Faults {
            slow_media_bytes_per_sec: bytes_per_sec,
            ..stages::chorus::Faults::default()
        };
        c
    }

    /// The URL of the harness's SQLite job store, for `portshift` processes.
    pub fn database_url(&self) -> String {
        format!("sqlite://{}/portshift.sqlite3", self.tmp.path().display())
    }

    /// Creates a job and publishes its first list task, as `portshift export` does.
    pub async fn start_job(&self, destination: &str, kinds: ExportKinds) -> JobId {
        let spec = JobSpec {
            kinds,
            ..export_spec(self.sim.api_url.as_str(), destination)
        };
        create_and_list(&self.store, &self.js, &spec, "test-org", "tester").await
    }

    /// [`Harness::start_job`] of every kind into a new temporary folder; returns the
    /// folder (removed when dropped) and the job.
    pub async fn start_folder_job(&self) -> (TempDir, JobId) {
        let out = tempfile::tempdir().unwrap();
        let job = self.start_job_into(out.path()).await;
        (out, job)
    }

    /// [`Harness::start_job`] of every kind into the folder `dir`.
    pub async fn start_job_into(&self, dir: &Path) -> JobId {
        let destination = format!("file://{}", dir.display());
        self.start_job(&destination, ExportKinds::default()).await
    }

    /// Runs a worker for the job until it is final (or the timeout passes).
    pub async fn run_worker(
        &self,
        job: &JobId,
        options: WorkerOptions,
        timeout: Duration,
    ) -> (JobStatus, WorkerCounters) {
        self.run_worker_with(job, options, timeout, &credentials())
            .await
    }

    /// [`Harness::run_worker`] with the given credentials (Azure, GCS, BigQuery).
    pub async fn run_worker_with(
        &self,
        job: &JobId,
        options: WorkerOptions,
        timeout: Duration,
        credentials: &Credentials,
    ) -> (JobStatus, WorkerCounters) {
        let ctx = self.prepare_worker(job, credentials, &options).await;
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let counters = WorkerCounters::default();
        let status = tokio::time::timeout(
            timeout,
            worker::run(ctx, options, counters.clone(), stop_rx),
        )
        .await
        .expect("the job did not finish in time")
        .unwrap();
        (status, counters)
    }
}

impl Harness {
    /// The context a worker in this process runs `job` with: the harness's store and
    /// JetStream, `credentials` and `options`.
    async fn prepare_worker(
        &self,
        job: &JobId,
        credentials: &Credentials,
        options: &WorkerOptions,
    ) -> Arc<stages::context::JobContext> {
        worker::prepare(
            job,
            self.store.clone(),
            self.js.clone(),
            credentials,
            options,
        )
        .await
        .unwrap()
    }

    /// Runs a worker for the job (fast options, `timeout` at most) with the test's
    /// credentials plus the signing key in the file `secret_key`; returns the final status.
    pub async fn run_worker_signed(
        &self,
        job: &JobId,
        secret_key: &Path,
        timeout: Duration,
    ) -> JobStatus {
        let (status, _) = self
            .run_worker_with(
                job,
                fast_options(),
                timeout,
                &signed_credentials(secret_key),
            )
            .await;
        status
    }
}

/// An operator's export of everything the Chorus at `chorus_url` holds for 2024 into
/// `destination` (every kind, default options).
pub fn export_spec(chorus_url: &str, destination: &str) -> JobSpec {
    JobSpec {
        chorus_url: chorus_url.to_string(),
        from: "2024-01-01T00:00:00Z".parse().unwrap(),
        to: "2024-12-31T23:59:59Z".parse().unwrap(),
        kinds: ExportKinds::default(),
        destination: destination.to_string(),
        webhook_url: None,
        schedule: None,
        options: Default::default(),
        trust: pipeline::Trust::Operator,
    }
}

/// Creates a job from `spec` for `org` (started by `by`) and publishes its first list
/// task, as `portshift export` and the console do; returns its id.
pub async fn create_and_list(
    store: &JobStore,
    js: &jetstream::Context,
    spec: &JobSpec,
    org: &str,
    by: &str,
) -> JobId {
    let job = JobId::new();
    pipeline::start::start_job(store, js, &job, org, by, spec)
        .await
        .unwrap();
    job
}

/// A worker in this process that runs only some stages of a job, until stopped.
pub struct PartialWorker {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<JobStatus, stages::worker::WorkerError>>,
}

impl PartialWorker {
    /// Stops the worker; fails if it failed.
    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

impl Harness {
    /// Starts a worker running only `stages` of the job ([`fast_options`] otherwise),
    /// counting into `counters`.
    pub async fn spawn_stages(
        &self,
        job: &JobId,
        stages: Vec<Stage>,
        credentials: &Credentials,
        counters: WorkerCounters,
    ) -> PartialWorker {
        let mut options = fast_options();
        options.stages = stages;
        let ctx = self.prepare_worker(job, credentials, &options).await;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(worker::run(ctx, options, counters, stop_rx));
        PartialWorker { stop, task }
    }
}

/// Waits until `done` says so, checking every 50 ms; fails saying `what` after `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tokio::time::timeout(Duration::from_secs(secs), async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}

/// A schedule's credential references: the Chorus token's alone.
pub fn token_only(chorus_token: String) -> CredentialRefs {
    CredentialRefs {
        chorus_token,
        s3: None,
        webhook_secret: None,
        azure: None,
        gcs: None,
    }
}

/// An operator's schedule of `org` named `name`, firing on `cron` in `timezone` from
/// 2024 on, exporting every kind from the harness's simulator into `destination` (a week
/// of lookback) with the credentials `refs` names.
pub async fn operator_schedule(
    h: &Harness,
    org: &str,
    name: &str,
    cron: &str,
    timezone: &str,
    destination: &str,
    refs: &CredentialRefs,
) -> Schedule {
    let template = ScheduleTemplate {
        chorus_url: h.sim.api_url.to_string(),
        kinds: ExportKinds::default(),
        destination: destination.to_string(),
        webhook_url: None,
        lookback_s: 7 * 24 * 3600,
        options: Default::default(),
    };
    h.store
        .create_schedule(
            org,
            name,
            cron,
            timezone,
            &template,
            refs,
            "2024-01-01T00:00:00Z".parse().unwrap(),
            pipeline::TrustLevel::Operator,
        )
        .await
        .unwrap()
}

/// A Chorus request budget that never slows a test down (the simulator has no limit
/// unless a test sets one); the tests of the budget itself set their own.
pub const TEST_BUDGET_ARGS: [&str; 4] = ["--chorus-rate", "10000", "--chorus-burst", "10000"];
/// How a scheduler in a test starts `portshift worker` processes for the harness's
/// NATS server and SQLite store.
pub fn worker_command(h: &Harness) -> pipeline::worker_process::WorkerCommand {
    let mut c = pipeline::worker_process::WorkerCommand::new(
        PORTSHIFT.into(),
        &h.nats.as_ref().unwrap().url(),
        &h.database_url(),
        h.tmp.path().to_path_buf(),
    );
    c.extra_args = vec!["--ack-wait-secs".into(), "10".into()];
    c.extra_args
        .extend(TEST_BUDGET_ARGS.iter().map(|a| a.to_string()));
    c
}

/// Worker options with short retry delays, so fault tests take seconds.
pub fn fast_options() -> WorkerOptions {
    let mut o = WorkerOptions {
        chorus_budget: pipeline::rate_budget::BudgetConfig::new(10_000.0, 10_000).unwrap(),
        ..WorkerOptions::default()
    };
    o.runner.retry_base = Duration::from_millis(50);
    o.runner.retry_max = Duration::from_millis(500);
    o.runner.ack_wait = Duration::from_secs(10);
    o
}

pub fn credentials() -> Credentials {
    let mut c = Credentials::new(SecretString::from(TOKEN));
    if let (Ok(ak), Ok(sk)) = (
        std::env::var("PORTSHIFT_TEST_S3_ACCESS_KEY"),
        std::env::var("PORTSHIFT_TEST_S3_SECRET_KEY"),
    ) {
        c.s3 = Some(s3_credentials(&ak, &sk));
    }
    c
}

/// The test's [`credentials`] plus the signing key in the file `secret_key`.
pub fn signed_credentials(secret_key: &Path) -> Credentials {
    let mut c = credentials();
    c.signing_key = Some(
        pipeline::signing::SigningKeyMaterial::load(&pipeline::signing::SigningKeyRef::File(
            secret_key.to_path_buf(),
        ))
        .unwrap(),
    );
    c
}

fn s3_credentials(ak: &str, sk: &str) -> S3Credentials {
    serde_json::from_value(serde_json::json!({"access_key_id": ak, "secret_access_key": sk}))
        .unwrap()
}

/// Downloads the export under `prefix` into `dir`, as a customer would.
pub async fn download(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    dir: &Path,
) -> usize {
    let keys = list_keys(client, bucket, prefix).await;
    for k in &keys {
        let bytes = get_object(client, bucket, &format!("{prefix}/{k}")).await;
        let path = dir.join(k);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    keys.len()
}

/// Runs the real `sha256sum -c` in `dir`; panics with its output unless it passes.
pub fn sha256sum_check(dir: &Path) -> usize {
    sha256sum_check_of(dir, "portshift-manifest.txt")
}

/// [`sha256sum_check`] of the manifest file `manifest` (a scheduled run's
/// `portshift-manifest-JOB.txt`); returns how many files it found intact.
pub fn sha256sum_check_of(dir: &Path, manifest: &str) -> usize {
    let out = std::process::Command::new("sha256sum")
        .args(["-c", "--strict", manifest])
        .current_dir(dir)
        .output()
        .expect("run sha256sum");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sha256sum -c failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().filter(|l| l.ends_with(": OK")).count()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The media of every served recording the simulator holds: relative path → SHA-256.
pub fn expected_media(sim: &SimHandle) -> std::collections::BTreeMap<String, String> {
    let data = sim.dataset();
    let data = data.read().unwrap();
    data.recordings()
        .iter()
        .filter(|r| r.is_served() && r.has_media())
        .map(|r| {
            let at = chrono::DateTime::from_timestamp(r.date_time, 0);
            let path = pipeline::keys::relative_path(
                &r.id,
                at,
                pipeline::FileKind::Media,
                r.media_extension(),
            );
            (
                path,
                hex::encode(stages::chorus::media_sha256(
                    sim.seed(),
                    &r.id,
                    r.media_size,
                )),
            )
        })
        .collect()
}

/// A size knob of a long test (`name` in the environment), `default` when unset, so CI
/// and a developer can run the same test bigger or smaller.
pub fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What [`assert_exact_export`] counted: files exported, and the manifest's lines (all
/// of them, and distinct).
pub struct ExactExport {
    pub files: usize,
    pub lines: usize,
    pub unique: usize,
}

/// Checks that the export under `prefix` in `bucket` holds exactly the simulator's
/// recordings, byte for byte: the media objects are the simulator's set, each with its
/// SHA-256; the manifest has one line per file and no line twice; there are three files
/// per recording; a downloaded copy passes the real `sha256sum -c`; and no multipart
/// upload is left open (billed, invisible parts).
pub async fn assert_exact_export(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    sim: &SimHandle,
    recordings: usize,
) -> ExactExport {
    use std::collections::BTreeSet;
    let keys = list_keys(s3, bucket, prefix).await;
    let expected = expected_media(sim);
    let media: BTreeSet<&String> = keys
        .iter()
        .filter(|k| k.ends_with(".mp4") || k.ends_with(".mp3"))
        .collect();
    assert_eq!(
        media,
        expected.keys().collect::<BTreeSet<_>>(),
        "media objects differ from the simulator's set"
    );
    for (path, sha) in &expected {
        let bytes = get_object(s3, bucket, &format!("{prefix}/{path}")).await;
        assert_eq!(&sha256_hex(&bytes), sha, "{path}");
    }
    let manifest = get_object(s3, bucket, &format!("{prefix}/portshift-manifest.txt")).await;
    let manifest = String::from_utf8(manifest).unwrap();
    let lines: Vec<&str> = manifest.lines().collect();
    let unique: BTreeSet<&str> = lines.iter().map(|l| &l[66..]).collect();
    let files = keys.len() - 2;
    assert_eq!(unique.len(), lines.len(), "duplicate manifest lines");
    assert_eq!(lines.len(), files, "manifest lines != files in the bucket");
    assert_eq!(files, recordings * 3, "three files per recording");
    let copy = tempfile::tempdir().unwrap();
    download(s3, bucket, prefix, copy.path()).await;
    assert_eq!(sha256sum_check(copy.path()), files);
    assert_no_open_uploads(s3, bucket).await;
    ExactExport {
        files,
        lines: lines.len(),
        unique: unique.len(),
    }
}

/// The end of a chaos test's report: the Chorus faults the simulator injected, the S3
/// proxy's 503s of all requests, the job's final counts, and the manifest's lines.
pub fn fault_report(
    sim: &stages::chorus::SimStatsSnapshot,
    proxy: &FaultProxy,
    p: &pipeline::store::Progress,
    export: &ExactExport,
) -> String {
    use std::sync::atomic::Ordering;
    let injected = proxy.injected.load(Ordering::Relaxed);
    format!(
        "Chorus faults: {} x 429, {} x 5xx, {} bodies cut short; S3 proxy: {} x 503 of {} requests; \
         final: {} exported, {} skipped, {} dead; manifest {} lines, {} unique, sha256sum -c OK",
        sim.faults_429,
        sim.faults_5xx,
        sim.faults_truncated,
        injected,
        injected + proxy.forwarded.load(Ordering::Relaxed),
        p.exported,
        p.skipped,
        p.dead,
        export.lines,
        export.unique,
    )
}

pub fn all_files_of(root: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

pub type Shared<T> = Arc<T>;

/// An HTTP proxy in front of the S3 server that answers a share of requests with
/// 503 SlowDown instead of forwarding them (the "destination 5 % 5xx" fault). It keeps
/// the Host header, so SigV4 signatures made for the proxy's address still verify.
pub struct FaultProxy {
    pub url: String,
    pub injected: Arc<std::sync::atomic::AtomicU64>,
    pub forwarded: Arc<std::sync::atomic::AtomicU64>,
}

pub async fn fault_proxy(upstream: String, rate: f64) -> FaultProxy {
    use std::sync::atomic::{AtomicU64, Ordering};
    let injected = Arc::new(AtomicU64::new(0));
    let forwarded = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let (inj, fwd) = (injected.clone(), forwarded.clone());
    let handler = move |req: axum::extract::Request| {
        let (client, upstream, inj, fwd) =
            (client.clone(), upstream.clone(), inj.clone(), fwd.clone());
        async move {
            use axum::response::IntoResponse;
            if fastrand_f64() < rate {
                inj.fetch_add(1, Ordering::Relaxed);
                let body = "<Error><Code>SlowDown</Code><Message>injected by the test proxy</Message></Error>";
                return (axum::http::StatusCode::SERVICE_UNAVAILABLE, body).into_response();
            }
            fwd.fetch_add(1, Ordering::Relaxed);
            let (parts, body) = req.into_parts();
            let url = format!(
                "{upstream}{}",
                parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
            );
            let mut out = client.request(parts.method.clone(), url);
            for (name, value) in parts.headers.iter() {
                if !matches!(
                    name.as_str(),
                    "connection" | "transfer-encoding" | "keep-alive"
                ) {
                    out = out.header(name, value);
                }
            }
            let sent = out
                .body(reqwest::Body::wrap_stream(body.into_data_stream()))
                .send()
                .await;
            match sent {
                Ok(resp) => {
                    let mut builder = axum::http::Response::builder().status(resp.status());
                    for (name, value) in resp.headers() {
                        if !matches!(
                            name.as_str(),
                            "connection" | "transfer-encoding" | "keep-alive"
                        ) {
                            builder = builder.header(name, value);
                        }
                    }
                    builder
                        .body(axum::body::Body::from_stream(resp.bytes_stream()))
                        .unwrap()
                        .into_response()
                }
                Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            }
        }
    };
    let url = format!(
        "http://{}",
        serve(axum::Router::new().fallback(handler)).await
    );
    FaultProxy {
        url,
        injected,
        forwarded,
    }
}

fn fastrand_f64() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// `portshift resume JOB` against the harness's NATS server and `database_url`, the
/// Chorus token in its environment (how an operator finishes a job that waits for
/// credentials); fails unless it succeeds and the job is finished.
pub async fn resume_to_the_end(h: &Harness, job: &JobId, database_url: &str) {
    let resumed = std::process::Command::new(PORTSHIFT)
        .args([
            "resume",
            job.as_str(),
            "--nats-url",
            &h.nats.as_ref().unwrap().url(),
            "--database-url",
            database_url,
            "--ack-wait-secs",
            "3",
        ])
        .args(TEST_BUDGET_ARGS)
        .env("CHORUS_API_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_success(&resumed, "portshift resume");
    assert_eq!(h.store.job(job).await.unwrap().status, JobStatus::Finished);
}

/// Writes the test's credentials (the Chorus token and the S3 test keys) to a worker's
/// standard input, as `serve` and the scheduler hand them over, and closes it.
pub fn hand_credentials(child: &mut std::process::Child) {
    let creds = serde_json::json!({
        "chorus_token": TOKEN,
        "s3": {"access_key_id": env_or_fail("PORTSHIFT_TEST_S3_ACCESS_KEY"), "secret_access_key": env_or_fail("PORTSHIFT_TEST_S3_SECRET_KEY")},
    });
    hand_document(child, &creds);
}

/// Writes the credentials document `creds` to a worker's standard input and closes it.
pub fn hand_document(child: &mut std::process::Child, creds: &serde_json::Value) {
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(creds.to_string().as_bytes())
        .unwrap();
}

/// Starts `cmd` (a `portshift worker`) with its output appended to `log` and the test's
/// credentials handed over on its standard input ([`hand_credentials`]).
pub fn spawn_with_credentials(cmd: &mut std::process::Command, log: &Path) -> std::process::Child {
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(log_file(log))
        .stderr(log_file(log))
        .spawn()
        .unwrap();
    hand_credentials(&mut child);
    child
}

/// The command of a `portshift worker` for `job` on the harness's NATS server and
/// `database_url`, its data folder the harness's, with the test budget and a clean
/// environment (only `PATH`); the caller adds flags, log level and standard streams.
pub fn worker_process(h: &Harness, job: &JobId, database_url: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(PORTSHIFT);
    cmd.args([
        "worker",
        "--job",
        job.as_str(),
        "--nats-url",
        &h.nats.as_ref().unwrap().url(),
        "--database-url",
        database_url,
    ])
    .args(["--data-dir", h.tmp.path().to_str().unwrap()])
    .args(TEST_BUDGET_ARGS)
    .env_clear()
    .env("PATH", std::env::var("PATH").unwrap());
    cmd
}

/// `portshift worker` as a child process, credentials on its standard input.
pub fn spawn_worker(
    h: &Harness,
    job: &JobId,
    database_url: &str,
    extra: &[&str],
    log: &Path,
) -> std::process::Child {
    spawn_with_credentials(
        worker_process(h, job, database_url)
            .args(extra)
            .env("PORTSHIFT_LOG", "info"),
        log,
    )
}
