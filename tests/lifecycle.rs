//! Process lifecycles, run on the built binary: SIGTERM (what systemd, Docker and
//! Kubernetes send) stops every long-running command like Ctrl-C does, with nothing
//! left running afterwards (its embedded `nats-server` included) and a data folder that
//! reopens cleanly; and two processes on one data folder run on one `nats-server`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use pipeline::JobStatus;
use pipeline::store::JobStore;
use test_support::process::{free_port, live_processes_mentioning};

const TOKEN: &str = "lifecycle-token";

/// Live (non-zombie) processes whose command line mentions `dir`, with that command line.
fn processes_on(dir: &Path) -> Vec<(u32, String)> {
    live_processes_mentioning(dir)
        .into_iter()
        .map(|(pid, cmdline)| (pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        .collect()
}

fn nats_servers_on(dir: &Path) -> Vec<u32> {
    processes_on(dir)
        .into_iter()
        .filter(|(_, c)| c.split(' ').next().unwrap_or("").ends_with("nats-server"))
        .map(|(p, _)| p)
        .collect()
}

/// Children of `pid` (from /proc/<pid>/task/*/children).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(args: &[&str], data: &Path, envs: &[(&str, &str)], log: &Path) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portshift"));
        cmd.args(args);
        // The simulator keeps nothing, so it has no data folder.
        if args.first() != Some(&"chorus-sim") {
            cmd.arg("--data-dir").arg(data);
        }
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORTSHIFT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
            .stderr(std::fs::File::create(log).unwrap());
        if let Ok(bin) = std::env::var("PORTSHIFT_NATS_SERVER_BIN") {
            cmd.env("PORTSHIFT_NATS_SERVER_BIN", bin);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().expect("start portshift"),
            log: log.to_path_buf(),
        }
    }

    fn output(&self) -> String {
        format!(
            "{}{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(self.log.with_extension("out")).unwrap_or_default()
        )
    }

    fn wait_for_output(&self, text: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.output().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} within {secs} s:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn sigterm(&self) {
        assert!(pipeline::shutdown::terminate(self.child.id()));
    }

    /// Waits for the process to exit; fails the test (and kills it) after `secs`.
    fn wait_exit(&mut self, secs: u64) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("still running {secs} s after SIGTERM:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_nothing_left(dir: &Path) {
    // A stopped nats-server may take a moment to be reaped by whoever adopted it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_on(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes left running on {}: {left:#?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serve(data: &Path, log: &Path) -> Proc {
    let p = Proc::start(
        &["serve", "--listen", &format!("127.0.0.1:{}", free_port())],
        data,
        &[],
        log,
    );
    p.wait_for_output("listening on", 60);
    p
}

fn scheduler(data: &Path, log: &Path) -> Proc {
    let p = Proc::start(&["scheduler", "--tick-secs", "1"], data, &[], log);
    p.wait_for_output("scheduler running", 60);
    p
}

#[test]
fn sigterm_stops_serve_with_its_nats_server_and_the_folder_reopens() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut console = serve(&data, &tmp.path().join("serve.log"));
    let servers = nats_servers_on(&data);
    assert_eq!(servers.len(), 1, "{:#?}", processes_on(&data));
    console.sigterm();
    let status = console.wait_exit(60);
    assert!(status.success(), "{status:?}\n{}", console.output());
    assert_nothing_left(&data);

    // Reopens: a second start on the same folder works, and stops as cleanly.
    let mut again = serve(&data, &tmp.path().join("serve2.log"));
    again.sigterm();
    assert!(again.wait_exit(60).success(), "{}", again.output());
    assert_nothing_left(&data);
}

#[test]
fn sigterm_stops_the_scheduler_with_its_nats_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = scheduler(&data, &tmp.path().join("scheduler.log"));
    assert_eq!(nats_servers_on(&data).len(), 1);
    s.sigterm();
    let status = s.wait_exit(60);
    assert!(status.success(), "{status:?}\n{}", s.output());
    assert_nothing_left(&data);
    let mut again = scheduler(&data, &tmp.path().join("scheduler2.log"));
    again.sigterm();
    assert!(again.wait_exit(60).success(), "{}", again.output());
    assert_nothing_left(&data);
}

#[test]
fn serve_and_scheduler_on_one_data_folder_share_one_nats_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut console = serve(&data, &tmp.path().join("serve.log"));
    let mut s = scheduler(&data, &tmp.path().join("scheduler.log"));
    let servers = nats_servers_on(&data);
    assert_eq!(servers.len(), 1, "{:#?}", processes_on(&data));
    // The console started it; the scheduler did not start another of its own.
    assert!(
        children_of(s.child.id())
            .iter()
            .all(|c| !servers.contains(c))
    );

    // The first one stops: the server stays for the other.
    console.sigterm();
    assert!(console.wait_exit(60).success(), "{}", console.output());
    assert_eq!(nats_servers_on(&data), servers);
    assert!(s.child.try_wait().unwrap().is_none(), "{}", s.output());

    s.sigterm();
    assert!(s.wait_exit(60).success(), "{}", s.output());
    assert_nothing_left(&data);
}

#[test]
fn a_server_left_by_a_killed_process_is_reused_not_doubled() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut console = serve(&data, &tmp.path().join("serve.log"));
    let servers = nats_servers_on(&data);
    console.child.kill().unwrap(); // SIGKILL: no cleanup at all
    console.child.wait().unwrap();
    let mut s = scheduler(&data, &tmp.path().join("scheduler.log"));
    assert_eq!(
        nats_servers_on(&data),
        servers,
        "a second server was started"
    );
    s.sigterm();
    assert!(s.wait_exit(60).success(), "{}", s.output());
    assert_nothing_left(&data);
}

#[test]
fn sigterm_stops_the_chorus_simulator() {
    let tmp = tempfile::tempdir().unwrap();
    let api = format!("127.0.0.1:{}", free_port());
    let media = format!("127.0.0.1:{}", free_port());
    let mut sim = Proc::start(
        &["chorus-sim", "--listen", &api, "--media-listen", &media],
        tmp.path(),
        &[],
        &tmp.path().join("sim.log"),
    );
    sim.wait_for_output("Chorus simulator", 30);
    sim.sigterm();
    let status = sim.wait_exit(30);
    assert!(status.success(), "{status:?}\n{}", sim.output());
}

async fn start_sim(recordings: usize) -> stages::chorus::SimHandle {
    let mut config = stages::chorus::SimConfig::demo(recordings, 71);
    config.token = TOKEN.into();
    config.sizes.min = 256 * 1024;
    config.sizes.max = 256 * 1024;
    // Slow media, so SIGTERM lands mid-export with transfers in flight.
    config.faults.slow_media_bytes_per_sec = 512 * 1024;
    common::start_sim(config).await
}

async fn wait_exported(store: &JobStore, at_least: u64) -> pipeline::JobId {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(jobs) = store.recent_jobs(1).await
            && let Some(j) = jobs.first()
            && store.progress(&j.id).await.unwrap().exported >= at_least
        {
            return j.id.clone();
        }
        assert!(Instant::now() < deadline, "the export made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn open_store(data: &Path) -> JobStore {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !data.join("portshift.sqlite3").exists() {
        assert!(Instant::now() < deadline, "no job store appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    JobStore::open_sqlite_in(data).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_an_export_cleanly_and_resume_finishes_it() {
    let recordings = 12;
    let sim = start_sim(recordings).await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("out");
    let dest = format!("file://{}", out.display());
    let api = sim.api_url.to_string();
    let common = [
        "--concurrency",
        "2",
        "--ack-wait-secs",
        "5",
        "--chorus-url",
        api.as_str(),
    ];
    let mut args = vec![
        "export",
        "--from",
        "2024-01-01",
        "--to",
        "2024-12-31",
        "--dest",
        &dest,
    ];
    args.extend(common);
    let mut export = Proc::start(
        &args,
        &data,
        &[("CHORUS_API_TOKEN", TOKEN)],
        &tmp.path().join("export.log"),
    );
    let store = open_store(&data).await;
    let job = wait_exported(&store, 1).await;
    export.sigterm();
    let status = export.wait_exit(60);
    assert_eq!(status.code(), Some(130), "{}", export.output());
    assert!(
        export.output().contains("portshift resume"),
        "{}",
        export.output()
    );
    assert_nothing_left(&data);
    // Nothing half-written at a final key: no partial files left in the export.
    let partial: Vec<_> = walk(&out)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".portshift-partial-"))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");
    assert_eq!(store.job(&job).await.unwrap().status, JobStatus::Running);

    // The folder reopens: resume on it finishes the job, and the manifest checks out.
    let mut args = vec!["resume", job.as_str()];
    args.extend(["--concurrency", "4", "--ack-wait-secs", "5"]);
    // JSON logs on request, with the job (and stage, recording) as fields.
    let mut resume = Proc::start(
        &args,
        &data,
        &[
            ("CHORUS_API_TOKEN", TOKEN),
            ("PORTSHIFT_LOG_FORMAT", "json"),
            ("PORTSHIFT_LOG", "debug"),
        ],
        &tmp.path().join("resume.log"),
    );
    let status = tokio::task::spawn_blocking(move || {
        let s = resume.wait_exit(120);
        (s, resume.output())
    })
    .await
    .unwrap();
    assert!(status.0.success(), "{}", status.1);
    let log = std::fs::read_to_string(tmp.path().join("resume.log")).unwrap();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!events.is_empty(), "no JSON log lines:\n{log}");
    let in_job = events
        .iter()
        .filter(|e| e["span"]["job"] == job.as_str())
        .collect::<Vec<_>>();
    assert!(!in_job.is_empty(), "no log line carries the job id");
    assert!(
        in_job
            .iter()
            .any(|e| e["span"]["stage"] == "fetch" && e["span"]["recording"].is_string()),
        "no fetch log line carries its recording"
    );
    assert!(!log.contains(TOKEN), "the token reached the log");
    assert_eq!(store.job(&job).await.unwrap().status, JobStatus::Finished);
    assert_eq!(
        store.progress(&job).await.unwrap().exported,
        recordings as u64
    );
    let check = Command::new("sha256sum")
        .args(["-c", "--quiet", "portshift-manifest.txt"])
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    assert_nothing_left(&data);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_worker_which_leaves_its_job_to_the_next() {
    use std::io::Write;
    let sim = start_sim(8).await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("out");
    // The job's NATS server, as a console would run it.
    let nats = pipeline::embedded_nats::SharedNats::join(&tmp.path().join("server"))
        .await
        .unwrap();
    let services = pipeline::config::Services::start(&data, Some(&nats.url()), None)
        .await
        .unwrap();
    let job = pipeline::JobId::new();
    let spec = pipeline::JobSpec {
        chorus_url: sim.api_url.to_string(),
        from: "2024-01-01T00:00:00Z".parse().unwrap(),
        to: "2024-12-31T23:59:59Z".parse().unwrap(),
        kinds: pipeline::ExportKinds::default(),
        destination: format!("file://{}", out.display()),
        webhook_url: None,
        schedule: None,
        options: Default::default(),
        trust: pipeline::Trust::Operator,
    };
    pipeline::start::start_job(
        &services.store,
        &services.js,
        &job,
        "local",
        "tester",
        &spec,
    )
    .await
    .unwrap();
    let url = nats.url();
    let args = [
        "worker",
        "--job",
        job.as_str(),
        "--nats-url",
        &url,
        "--concurrency",
        "2",
        "--ack-wait-secs",
        "5",
    ];
    let log = tmp.path().join("worker.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portshift"));
    cmd.args(args)
        .arg("--data-dir")
        .arg(&data)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!(r#"{{"chorus_token":"{TOKEN}"}}"#).as_bytes())
        .unwrap();
    drop(stdin);
    let mut worker = Proc { child, log };
    wait_exported(&services.store, 1).await;
    worker.sigterm();
    let status = worker.wait_exit(60);
    assert_eq!(status.code(), Some(130), "{}", worker.output());
    assert_nothing_left(&data);
    let p = services.store.progress(&job).await.unwrap();
    assert!(p.exported < 8, "the worker did not stop early: {p:?}");
    services.stop().await;
    nats.leave().await;
    sim.shutdown().await;
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// SIGTERM while the command is still starting up (its `nats-server` has just appeared,
/// it has not said it is ready): it still stops cleanly, its children with it. Before
/// the handlers were installed first thing, this SIGTERM killed the process outright and
/// orphaned the `nats-server` (seen in CI).
#[test]
fn sigterm_during_startup_still_stops_everything() {
    for command in ["scheduler", "serve"] {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let listen = format!("127.0.0.1:{}", free_port());
        let args: Vec<&str> = match command {
            "serve" => vec!["serve", "--listen", &listen],
            _ => vec!["scheduler", "--tick-secs", "1"],
        };
        let mut p = Proc::start(&args, &data, &[], &tmp.path().join("startup.log"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while nats_servers_on(&data).is_empty() {
            assert!(Instant::now() < deadline, "no nats-server:\n{}", p.output());
            std::thread::sleep(Duration::from_millis(5));
        }
        p.sigterm();
        let status = p.wait_exit(60);
        assert!(status.success(), "{command}: {status:?}\n{}", p.output());
        assert_nothing_left(&data);
    }
}
