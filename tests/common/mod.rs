//! Shared test harness: a fresh `nats-server` per test (temporary store, free port), a
//! fresh SQLite job store, the Chorus simulator in-process, and a fresh bucket on the
//! project's SeaweedFS S3 server (started by `scripts/test`, found via the
//! `PORTSHIFT_TEST_*` variables it exports).
#![allow(dead_code)]

pub mod cloud;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use pipeline::embedded_nats::EmbeddedNats;
use pipeline::messages::ListTask;
use pipeline::secrets::{Credentials, S3Credentials};
use pipeline::store::JobStore;
use pipeline::topology::{self, Stage};
use pipeline::{ExportKinds, JobId, JobSpec, JobStatus};
use secrecy::SecretString;
use stages::chorus::{SimConfig, SimHandle};
use stages::worker::{self, WorkerCounters, WorkerOptions};
use tempfile::TempDir;

pub const TOKEN: &str = "test-chorus-token";

pub fn env_or_fail(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with scripts/test, which starts the local servers and exports it")
    })
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
        let sim = stages::chorus::sim::start(
            sim,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
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

    /// Creates a job and publishes its first list task, as `portshift export` does.
    pub async fn start_job(&self, destination: &str, kinds: ExportKinds) -> JobId {
        let job = JobId::new();
        let spec = JobSpec {
            chorus_url: self.sim.api_url.to_string(),
            from: "2024-01-01T00:00:00Z".parse().unwrap(),
            to: "2024-12-31T23:59:59Z".parse().unwrap(),
            kinds,
            destination: destination.to_string(),
            webhook_url: None,
            schedule: None,
            options: Default::default(),
            trust: pipeline::Trust::Operator,
        };
        self.store
            .create_job(&job, "test-org", "tester", &spec)
            .await
            .unwrap();
        topology::publish_json(
            &self.js,
            Stage::List.subject(&job),
            &topology::msg_id(&job, "list", &["0"]),
            &ListTask {
                job: job.clone(),
                page: 0,
                continuation_key: None,
            },
        )
        .await
        .unwrap();
        job
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
        let ctx = worker::prepare(
            job,
            self.store.clone(),
            self.js.clone(),
            credentials,
            &options,
        )
        .await
        .unwrap();
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

/// A Chorus request budget that never slows a test down (the simulator has no limit
/// unless a test sets one); the tests of the budget itself set their own.
pub const TEST_BUDGET_ARGS: [&str; 4] = ["--chorus-rate", "10000", "--chorus-burst", "10000"];
/// How a scheduler in a test starts `portshift worker` processes for the harness's
/// NATS server and SQLite store.
pub fn worker_command(h: &Harness) -> pipeline::worker_process::WorkerCommand {
    let mut c = pipeline::worker_process::WorkerCommand::new(
        env!("CARGO_BIN_EXE_portshift").into(),
        &h.nats.as_ref().unwrap().url(),
        &format!("sqlite://{}/portshift.sqlite3", h.tmp.path().display()),
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

fn s3_credentials(ak: &str, sk: &str) -> S3Credentials {
    serde_json::from_value(serde_json::json!({"access_key_id": ak, "secret_access_key": sk}))
        .unwrap()
}

/// An S3 client for the test server, used to check what portshift wrote.
pub async fn s3_client() -> aws_sdk_s3::Client {
    let endpoint = env_or_fail("PORTSHIFT_TEST_S3_ENDPOINT");
    let creds = aws_sdk_s3::config::Credentials::new(
        env_or_fail("PORTSHIFT_TEST_S3_ACCESS_KEY"),
        env_or_fail("PORTSHIFT_TEST_S3_SECRET_KEY"),
        None,
        None,
        "test",
    );
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(creds)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A new empty bucket; returns its name.
pub async fn fresh_bucket(client: &aws_sdk_s3::Client) -> String {
    let name = format!("t-{}", uuid::Uuid::new_v4().simple());
    client.create_bucket().bucket(&name).send().await.unwrap();
    name
}

pub fn s3_dest(bucket: &str, prefix: &str) -> String {
    format!(
        "s3://{bucket}/{prefix}?region=us-east-1&endpoint={}",
        env_or_fail("PORTSHIFT_TEST_S3_ENDPOINT")
    )
}

/// Fails if any multipart upload is still open in `bucket` (invisible, but billed).
pub async fn assert_no_open_uploads(client: &aws_sdk_s3::Client, bucket: &str) {
    let out = client
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    assert!(
        out.uploads().is_empty(),
        "multipart uploads left open: {:?}",
        out.uploads()
    );
}

/// Every key under `prefix` (with the prefix stripped).
pub async fn list_keys(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(format!("{prefix}/"))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for o in page.unwrap().contents() {
            keys.push(
                o.key()
                    .unwrap()
                    .strip_prefix(&format!("{prefix}/"))
                    .unwrap()
                    .to_string(),
            );
        }
    }
    keys.sort();
    keys
}

pub async fn get_object(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    out.body.collect().await.unwrap().into_bytes().to_vec()
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
    let out = std::process::Command::new("sha256sum")
        .args(["-c", "--strict", "portshift-manifest.txt"])
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
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
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

/// `portshift worker` as a child process, credentials on its standard input.
pub fn spawn_worker(
    h: &Harness,
    job: &JobId,
    database_url: &str,
    extra: &[&str],
    log: &Path,
) -> std::process::Child {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portshift"))
        .args([
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
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("PORTSHIFT_LOG", "info")
        .stdin(std::process::Stdio::piped())
        .stdout(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let creds = serde_json::json!({
        "chorus_token": TOKEN,
        "s3": {"access_key_id": env_or_fail("PORTSHIFT_TEST_S3_ACCESS_KEY"), "secret_access_key": env_or_fail("PORTSHIFT_TEST_S3_SECRET_KEY")},
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(creds.to_string().as_bytes())
        .unwrap();
    child
}

/// Stops a portshift process the way systemd would: SIGTERM, so it stops its embedded
/// `nats-server` too (a SIGKILL would leave that server running, orphaned), then
/// SIGKILL if it has not exited within 15 s.
pub fn stop_gracefully(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: a signal to a child process this test started and has not reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
