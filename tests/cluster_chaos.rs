//! The cluster chaos run: the reference deployment of deploy/cluster on one machine,
//! under fire. Three `nats-server` nodes started by `deploy/cluster/start.sh` (TLS for
//! clients, `sync_interval: always`, streams with three replicas), a PostgreSQL job store,
//! three `portshift worker` processes sharing one job, the SeaweedFS S3 server behind a
//! proxy that answers a share of requests with 503, and Chorus faults (429 bursts, 5xx,
//! bodies cut short). During the export the node leading the work stream is SIGKILLed
//! (and restarted a few seconds later, as systemd would), two workers are SIGKILLed at
//! different moments, and PostgreSQL is restarted once. At the end the bucket holds
//! exactly the simulator's recordings, the manifest lists each file once and passes
//! `sha256sum -c` on a downloaded copy, and no multipart upload is left open.
//!
//! PostgreSQL: the suite's shared test server cannot be restarted (other tests use it at
//! the same time), so this test runs a private instance with the same binaries (initdb in
//! a temporary folder, as deploy/local/start.sh does) and restarts that one.
//!
//! The figures (recordings, kills, redeliveries, wall time) are printed as one line
//! starting with `cluster chaos:`; .config/nextest.toml shows it for passing runs too.
//! A bigger run: `PORTSHIFT_CLUSTER_CHAOS_RECORDINGS=1000 cargo test --test cluster_chaos -- --nocapture`

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use pipeline::store::JobStore;
use pipeline::topology::{self, Stage, WORK_STREAM};
use pipeline::{JobId, JobStatus};
use stages::chorus::Faults;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a script of the repository; panics with its output unless it succeeds.
fn run_script(script: &str, args: &[&Path], env: &[(&str, String)]) {
    let out = Command::new(repo().join(script))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_success(&out, script);
}

/// The three NATS nodes of deploy/cluster/start.sh, on ports moved by `offset` and with
/// their stores in `dir`. Stopped by deploy/cluster/stop.sh when dropped.
struct Cluster {
    dir: PathBuf,
    offset: u16,
    urls: String,
    ca: PathBuf,
}

impl Cluster {
    fn start(dir: PathBuf, offset: u16) -> Self {
        let mut c = Cluster {
            dir,
            offset,
            urls: String::new(),
            ca: PathBuf::new(),
        };
        c.run_start();
        let env = std::fs::read_to_string(c.dir.join("cluster.env")).unwrap();
        let var = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("{name} missing from cluster.env:\n{env}"))
                .to_string()
        };
        c.urls = var("PORTSHIFT_NATS_URL");
        c.ca = PathBuf::from(var("PORTSHIFT_CA_FILE"));
        assert_eq!(var("PORTSHIFT_STREAM_REPLICAS"), "3");
        assert_eq!(c.urls.split(',').count(), 3, "{}", c.urls);
        assert!(c.urls.split(',').all(|u| u.starts_with("tls://")));
        c
    }

    /// Starts the nodes that are not running (all of them the first time).
    fn run_start(&self) {
        run_script(
            "deploy/cluster/start.sh",
            &[&self.dir],
            &[("PORTSHIFT_CLUSTER_PORT_OFFSET", self.offset.to_string())],
        );
    }

    fn pid(&self, node: &str) -> i32 {
        std::fs::read_to_string(self.dir.join(format!("{node}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// SIGKILL: the node loses whatever it had not written, as on a power cut.
    fn kill(&self, node: &str) {
        let pid = self.pid(node);
        // SAFETY: a signal to the nats-server this test's cluster script started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        // It is not our child (start.sh ran it with nohup): wait until it is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}/status")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|s| !s.contains("State:\tZ"))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("deploy/cluster/stop.sh"))
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
    }
}

/// A private PostgreSQL server (initdb in a temporary folder, the machine's binaries),
/// so this test can restart it without disturbing other tests. Stopped when dropped.
struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Postgres {
    fn start() -> Self {
        let bin = std::env::var_os("PORTSHIFT_PG_BIN")
            .map(PathBuf::from)
            .or_else(|| {
                let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                    .ok()?
                    .filter_map(|e| Some(e.ok()?.path().join("bin")))
                    .filter(|p| p.join("pg_ctl").exists())
                    .collect();
                found.sort();
                found.pop()
            })
            .expect("no PostgreSQL binaries (deploy/local/install.sh installs them)");
        let dir = tempfile::Builder::new()
            .prefix("portshift-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if is_root() {
            // PostgreSQL refuses to run as root: the folder belongs to its own user.
            let ok = Command::new("chown")
                .args(["postgres:", dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            assert!(ok.success(), "chown postgres: failed");
        }
        let pg = Postgres { dir, bin, port };
        let data = pg.data();
        pg.pg(
            "initdb",
            &[
                &["-D", data.as_str()][..],
                &test_support::postgres::INITDB_FLAGS,
            ]
            .concat(),
        );
        // Commits are durable against a crash of the server process (synchronous_commit
        // on, the default): an immediate restart must not lose an acknowledged commit,
        // as a real server would not. fsync is off: only the machine losing power could
        // lose them, and that is not what this test does.
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nmax_connections = 100\n",
            pg.dir.path().display()
        );
        let mut all = std::fs::read_to_string(format!("{data}/postgresql.conf")).unwrap();
        all.push_str(&conf);
        std::fs::write(format!("{data}/postgresql.conf"), all).unwrap();
        pg.pg_ctl(&["start"]);
        pg
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.path().display())
    }

    fn pg(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?} failed:\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    fn pg_ctl(&self, action: &[&str]) {
        let data = self.data();
        let log = format!("{}/log", self.dir.path().display());
        let mut args = vec!["-D", &data, "-l", &log, "-w", "-t", "30"];
        args.extend_from_slice(action);
        self.pg("pg_ctl", &args);
    }

    /// What a crash and a service restart look like to clients: every connection is cut
    /// (immediate mode, no goodbye), the server recovers and accepts connections again.
    fn restart(&self) {
        self.pg_ctl(&["-m", "immediate", "restart"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .current_dir("/")
            .stdin(Stdio::null())
            .output();
    }
}

/// `portshift worker` for the job, joined to the cluster and the PostgreSQL store, with
/// its credentials on standard input (as `serve` hands them over).
fn spawn_worker(cluster: &Cluster, job: &JobId, db: &str, data_dir: &Path, log: &Path) -> Child {
    spawn_with_credentials(
        Command::new(env!("CARGO_BIN_EXE_portshift"))
            .args(["worker", "--job", job.as_str()])
            .args(["--nats-url", &cluster.urls, "--database-url", db])
            .args(["--data-dir", data_dir.to_str().unwrap()])
            .args(TEST_BUDGET_ARGS)
            .args(["--ack-wait-secs", "5", "--concurrency", "6"])
            // The 20 MiB files go in parts, the others in one streamed request.
            .args(["--single-request-max-mib", "16"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("PORTSHIFT_LOG", "info")
            .env("NO_COLOR", "1")
            .env("PORTSHIFT_CA_FILE", &cluster.ca)
            .env("PORTSHIFT_STREAM_REPLICAS", "3"),
        log,
    )
}

/// Counts what the workers acknowledge on the work stream, by listening to the ack
/// subjects (`$JS.ACK.<stream>.<consumer>.<delivered>.…`): an ack of a message on its
/// Nth delivery means N-1 redeliveries (a killed worker's message, an ack_wait that ran
/// out, a nak after a fault). A lower bound: acks sent while this listener's own node
/// was down are not seen.
#[derive(Default)]
struct AckCounts {
    acked: AtomicU64,
    acked_redelivered: AtomicU64,
    redeliveries: AtomicU64,
    naks: AtomicU64,
    max_delivered: AtomicU64,
}

async fn watch_acks(client: async_nats::Client) -> Arc<AckCounts> {
    let counts = Arc::new(AckCounts::default());
    let mut sub = client.subscribe("$JS.ACK.>").await.unwrap();
    let c = counts.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let tokens: Vec<&str> = m.subject.split('.').collect();
            let Some(i) = tokens.iter().position(|t| *t == WORK_STREAM) else {
                continue;
            };
            let Some(delivered) = tokens.get(i + 2).and_then(|d| d.parse::<u64>().ok()) else {
                continue;
            };
            if m.payload.starts_with(b"+ACK") {
                c.acked.fetch_add(1, Ordering::Relaxed);
                if delivered > 1 {
                    c.acked_redelivered.fetch_add(1, Ordering::Relaxed);
                    c.redeliveries.fetch_add(delivered - 1, Ordering::Relaxed);
                }
                c.max_delivered.fetch_max(delivered, Ordering::Relaxed);
            } else if m.payload.starts_with(b"-NAK") {
                c.naks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    counts
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Disruption {
    KillWorker,
    KillStreamLeader,
    RestartPostgres,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_chaos_export_ends_complete_and_exact() {
    let recordings = knob("PORTSHIFT_CLUSTER_CHAOS_RECORDINGS", 120);
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();

    let cluster = Cluster::start(tmp.path().join("cluster"), 100);
    let pg = Postgres::start();
    let db = pg.url();
    let setup_nats = started.elapsed();

    let client = pipeline::config::connect_nats(&cluster.urls, Some(&cluster.ca))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    topology::ensure_streams_replicated(&js, 3).await.unwrap();
    let store = JobStore::connect(&db).await.unwrap();

    let mut sim = Harness::sim_config(recordings, 43);
    sim.sizes.min = 16 * 1024;
    sim.sizes.max = 512 * 1024;
    // A few large files, uploaded in parts: a worker killed mid-file leaves a multipart
    // upload open that must be aborted by the end.
    sim.sizes.large_every = 40;
    sim.sizes.large_size = 20 * 1024 * 1024;
    sim.faults = Faults {
        rate_429: 0.02,
        burst_429: 5,
        retry_after_secs: 1,
        rate_5xx: 0.05,
        rate_truncate: 0.05,
        ..Faults::default()
    };
    let sim = start_sim(sim).await;
    let s3 = s3_client().await;
    let bucket = fresh_bucket(&s3).await;
    let proxy = fault_proxy(env_or_fail("PORTSHIFT_TEST_S3_ENDPOINT"), 0.05).await;
    let dest = format!(
        "s3://{bucket}/cluster?region=us-east-1&endpoint={}",
        proxy.url
    );

    // The job, as `portshift serve` creates it.
    let spec = export_spec(sim.api_url.as_str(), &dest);
    let job = create_and_list(&store, &js, &spec, "test-org", "tester").await;
    let info = js
        .get_stream(WORK_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, 3, "the work stream is replicated");
    assert_eq!(
        info.cluster.as_ref().map(|c| c.replicas.len()),
        Some(2),
        "a leader and two replicas: {:?}",
        info.cluster
    );
    let acks = watch_acks(client.clone()).await;

    let log = tmp.path().join("workers.log");
    let data_dir = tmp.path().join("worker-data");
    let mut workers: Vec<Child> = (0..3)
        .map(|_| spawn_worker(&cluster, &job, &db, &data_dir, &log))
        .collect();
    let export_started = Instant::now();

    // The disruptions, spread over the run as progress passes each threshold.
    let plan = [
        Disruption::KillWorker,
        Disruption::KillStreamLeader,
        Disruption::RestartPostgres,
        Disruption::KillWorker,
    ];
    let thresholds: Vec<u64> = (1..=plan.len())
        .map(|i| (recordings as u64 * i as u64) / (plan.len() as u64 + 2))
        .collect();
    let mut next = 0;
    let mut done: Vec<(Disruption, String, f64)> = vec![];
    let mut killed_node: Option<(String, Instant)> = None;
    let mut node_restarted = false;
    let mut unexpected_exits = 0;
    let mut last_progress = None;
    let mut moved_at = Instant::now();
    loop {
        if moved_at.elapsed() > Duration::from_secs(120) {
            panic!(
                "the cluster chaos run stalled: nothing settled for 2 minutes: {last_progress:?}\n\
                 pending recordings: {:?}\nfetch consumer: {}\nworker log:\n{}",
                store
                    .pending_recordings(&job)
                    .await
                    .map(|r| r.into_iter().map(|r| r.recording_id).collect::<Vec<_>>()),
                consumer_state(&js, &job).await,
                tail(&log, 60)
            );
        }
        // The store is unreachable while PostgreSQL restarts: ask again shortly.
        let (status, p) = match (store.job(&job).await, store.progress(&job).await) {
            (Ok(j), Ok(p)) => (j.status, p),
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if status.is_final() {
            break;
        }
        let settled = p.exported + p.skipped + p.dead;
        if last_progress
            .as_ref()
            .map(|l: &pipeline::store::Progress| l.exported + l.skipped + l.dead)
            != Some(settled)
        {
            moved_at = Instant::now();
        }
        last_progress = Some(p);
        if next < plan.len() && settled >= thresholds[next] {
            let at = export_started.elapsed().as_secs_f64();
            let what = match plan[next] {
                Disruption::KillWorker => {
                    let mut victim = workers.remove(0);
                    let pid = victim.id();
                    victim.kill().unwrap(); // SIGKILL: in-flight work abandoned
                    victim.wait().unwrap();
                    format!("worker pid {pid} SIGKILLed at {settled} settled")
                }
                Disruption::KillStreamLeader => {
                    let leader = stream_leader(&js).await;
                    cluster.kill(&leader);
                    killed_node = Some((leader.clone(), Instant::now()));
                    format!(
                        "NATS node {leader} (leader of {WORK_STREAM}) SIGKILLed at {settled} settled"
                    )
                }
                Disruption::RestartPostgres => {
                    let t = Instant::now();
                    tokio::task::block_in_place(|| pg.restart());
                    format!(
                        "PostgreSQL restarted (immediate) at {settled} settled, down {:.1} s",
                        t.elapsed().as_secs_f64()
                    )
                }
            };
            eprintln!("cluster chaos: {at:.1} s: {what}");
            done.push((plan[next], what, at));
            next += 1;
        }
        // The killed node comes back after a few seconds, as systemd restarts it.
        if let Some((node, at)) = &killed_node
            && !node_restarted
            && at.elapsed() > Duration::from_secs(5)
        {
            tokio::task::block_in_place(|| cluster.run_start());
            eprintln!(
                "cluster chaos: {:.1} s: NATS node {node} restarted",
                export_started.elapsed().as_secs_f64()
            );
            node_restarted = true;
        }
        // A worker must survive a node loss and a database restart: one that exits on
        // its own is a finding (replaced, so the run still shows the rest).
        for w in workers.iter_mut() {
            if let Ok(Some(code)) = w.try_wait() {
                unexpected_exits += 1;
                assert!(
                    unexpected_exits <= 6,
                    "workers keep exiting ({code}); worker log:\n{}",
                    tail(&log, 40)
                );
                eprintln!(
                    "cluster chaos: a worker exited on its own ({code}); log tail:\n{}",
                    tail(&log, 30)
                );
                *w = spawn_worker(&cluster, &job, &db, &data_dir, &log);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let export_took = export_started.elapsed();
    // Workers leave once the job is final and their queue is quiet; stop the rest.
    let deadline = Instant::now() + Duration::from_secs(20);
    for mut w in workers {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = w.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::task::block_in_place(|| stop_gracefully(&mut w));
    }

    let record = store.job(&job).await.unwrap();
    let p = store.progress(&job).await.unwrap();
    assert_eq!(
        record.status,
        JobStatus::Finished,
        "{:?}; problems: {:?}; worker log:\n{}",
        record.status_reason,
        store.problems(&job).await.unwrap(),
        tail(&log, 60)
    );

    // The bucket holds exactly the simulator's recordings, byte for byte; workers killed
    // mid-file left no multipart upload behind.
    let export = assert_exact_export(&s3, &bucket, "cluster", &sim, recordings).await;
    assert!(store.open_uploads(&job, None).await.unwrap().is_empty());

    let sim_stats = sim.stats.snapshot();
    let kills = done
        .iter()
        .filter(|d| d.0 == Disruption::KillWorker)
        .count();
    eprintln!(
        "cluster chaos: {recordings} recordings, {} files, {} bytes; export {:.1} s (setup {:.1} s, whole test {:.1} s); \
         disruptions: {kills} worker SIGKILLs, {} NATS stream-leader SIGKILL (node restarted: {node_restarted}), {} PostgreSQL restart; \
         workers that exited on their own: {unexpected_exits}; \
         work-stream acks seen: {} ({} after a redelivery, {} redeliveries in all, most deliveries of one message {}), naks {}; \
         {}, 0 open multipart uploads",
        export.files,
        p.bytes,
        export_took.as_secs_f64(),
        setup_nats.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        done.iter()
            .filter(|d| d.0 == Disruption::KillStreamLeader)
            .count(),
        done.iter()
            .filter(|d| d.0 == Disruption::RestartPostgres)
            .count(),
        acks.acked.load(Ordering::Relaxed),
        acks.acked_redelivered.load(Ordering::Relaxed),
        acks.redeliveries.load(Ordering::Relaxed),
        acks.max_delivered.load(Ordering::Relaxed),
        acks.naks.load(Ordering::Relaxed),
        fault_report(&sim_stats, &proxy, &p, &export),
    );
    assert_eq!(
        done.iter().map(|d| d.0).collect::<Vec<_>>(),
        plan,
        "every planned disruption happened mid-run"
    );
    assert_eq!(
        unexpected_exits,
        0,
        "workers must ride out a node loss and a database restart; worker log:\n{}",
        tail(&log, 80)
    );
    // A passing run leaves no bucket behind (the S3 test server has a fixed number of
    // volumes; a failing run keeps its bucket to look at).
    for k in list_keys(&s3, &bucket, "cluster").await {
        s3.delete_object()
            .bucket(&bucket)
            .key(format!("cluster/{k}"))
            .send()
            .await
            .unwrap();
    }
    s3.delete_bucket().bucket(&bucket).send().await.unwrap();
    drop(client);
}

/// The server name of the work stream's leader (`$JS.API.STREAM.INFO`).
async fn stream_leader(js: &async_nats::jetstream::Context) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut stream) = js.get_stream(WORK_STREAM).await
            && let Ok(info) = stream.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
        {
            return leader;
        }
        assert!(Instant::now() < deadline, "no leader for {WORK_STREAM}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The fetch consumer's view, for a stalled run: what JetStream still holds for the job.
async fn consumer_state(js: &async_nats::jetstream::Context, job: &JobId) -> String {
    let name = Stage::Fetch.consumer_name(job);
    match js.get_stream(WORK_STREAM).await {
        Ok(stream) => match stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
            .await
        {
            Ok(mut c) => match c.info().await {
                Ok(i) => format!(
                    "pending {}, ack pending {}, redelivered {}, delivered {:?}, ack floor {:?}, leader {:?}",
                    i.num_pending,
                    i.num_ack_pending,
                    i.num_redelivered,
                    i.delivered,
                    i.ack_floor,
                    i.cluster.as_ref().and_then(|c| c.leader.clone())
                ),
                Err(e) => format!("consumer info failed: {e}"),
            },
            Err(e) => format!("no consumer {name}: {e}"),
        },
        Err(e) => format!("no stream: {e}"),
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
