//! Many workers, one job, and what happens when they all die. Real `portshift worker`,
//! `serve` and `scheduler` processes against one NATS server and one job store:
//! - every worker of a running job is SIGKILLed: the supervisor of a running `serve`
//!   moves the job to needs_credentials once the last lease ran out (not before, and
//!   within lease + one supervisor interval), and `portshift resume` finishes it;
//! - a scheduled run whose scheduler and worker were SIGKILLed is picked up by a new
//!   scheduler (references resolved again), and the schedule's later slots run;
//! - a run whose scheduler died while its worker finished the job is settled (history,
//!   watermark) by the next scheduler;
//! - several supervisors at once: each abandoned job is acted on exactly once;
//! - a worker's `/metrics` shows its lease, redeliveries and dead letters.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pipeline::leases::{Supervisor, SupervisorCounters};
use pipeline::schedules::Schedule;
use pipeline::store::JobStore;
use pipeline::{ExportKinds, JobId, JobSpec, JobStatus};
use stages::chorus::Faults;
use tempfile::TempDir;

/// The lease the tests' processes use (the shortest allowed), and how often their
/// supervisors look.
const LEASE_SECS: u64 = 6;
const SUPERVISE_SECS: u64 = 1;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn sigkill(pid: i64) {
    // SAFETY: a signal to a worker process this test started (directly or through
    // a scheduler it started).
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// GET a /metrics page; `None` while nothing listens.
async fn scrape(url: &str) -> Option<String> {
    let res = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    res.text().await.ok()
}

/// The value of one sample (`name` with its labels, exactly as rendered).
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn live_leases(leases: &[pipeline::leases::LeaseRow]) -> Vec<&pipeline::leases::LeaseRow> {
    let now = now_ms();
    leases.iter().filter(|l| l.expires_ms >= now).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_whose_workers_all_died_waits_for_resume_within_the_lease_and_resume_finishes_it() {
    let recordings = 30;
    // Slow media, so the kills land mid-job.
    let sim = Harness::slow_media_config(recordings, 71, 1024 * 1024);
    let h = Harness::start(sim).await;
    let (out, job) = h.start_folder_job().await;
    let db = h.database_url();
    let nats = h.nats.as_ref().unwrap().url();

    // A console with its supervisor on, short intervals.
    let console_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut console = logged_command(PORTSHIFT, &console_dir.path().join("serve.log"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(console_dir.path())
        .args(["--nats-url", &nats, "--database-url", &db])
        .args(["--supervise-secs", &SUPERVISE_SECS.to_string()])
        .args(["--lease-secs", &LEASE_SECS.to_string()])
        .spawn()
        .unwrap();

    // Two workers share the job.
    let log = h.tmp.path().join("workers.log");
    let worker_args = [
        "--concurrency",
        "2",
        "--ack-wait-secs",
        "3",
        "--lease-secs",
        "6",
    ];
    let mut workers = [
        spawn_worker(&h, &job, &db, &worker_args, &log),
        spawn_worker(&h, &job, &db, &worker_args, &log),
    ];
    let pids: BTreeSet<i64> = workers.iter().map(|w| i64::from(w.id())).collect();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let leases = h.store.leases_of(&job).await.unwrap();
            let holders: BTreeSet<i64> = live_leases(&leases).iter().map(|l| l.pid).collect();
            if holders == pids && h.store.progress(&job).await.unwrap().exported >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("both workers hold a lease and the export moves");
    for w in &mut workers {
        w.kill().unwrap(); // SIGKILL: the credentials die with them
        w.wait().unwrap();
    }
    let killed = Instant::now();
    let before = h.store.progress(&job).await.unwrap();
    assert!(before.exported < recordings as u64, "killed mid-job");
    let last_expiry = h
        .store
        .leases_of(&job)
        .await
        .unwrap()
        .iter()
        .map(|l| l.expires_ms)
        .max()
        .unwrap();

    // Nobody runs `portshift jobs`: the console's supervisor notices by itself.
    let bound = Duration::from_secs(LEASE_SECS + SUPERVISE_SECS + 2);
    let record = loop {
        let r = h.store.job(&job).await.unwrap();
        if r.status != JobStatus::Running {
            break r;
        }
        assert!(
            killed.elapsed() < bound + Duration::from_secs(10),
            "still running {:?} after the kills; console log:\n{}",
            killed.elapsed(),
            std::fs::read_to_string(console_dir.path().join("serve.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = killed.elapsed();
    eprintln!("marked needs_credentials {took:?} after the last worker was killed");
    assert_eq!(record.status, JobStatus::NeedsCredentials);
    assert!(
        took <= bound,
        "the job waited {took:?}; lease {LEASE_SECS} s + supervisor {SUPERVISE_SECS} s + 2 s slack"
    );
    let marked_at: i64 = sqlx::query_scalar("SELECT updated_ms FROM jobs WHERE id = ?")
        .bind(job.as_str())
        .fetch_one(&sqlx::SqlitePool::connect(&db).await.unwrap())
        .await
        .unwrap();
    assert!(
        marked_at >= last_expiry,
        "marked at {marked_at}, before the last lease ran out at {last_expiry}"
    );
    let reason = record.status_reason.unwrap_or_default();
    assert!(
        reason.contains(&format!("portshift resume {job}")),
        "{reason}"
    );
    let metrics = scrape(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("the console's /metrics answers");
    assert_eq!(
        sample(
            &metrics,
            "portshift_supervisor_abandoned_jobs_total{action=\"needs_credentials\"}"
        ),
        Some(1),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "portshift_worker_leases_live"), Some(0));

    // Resume with the credentials: it finishes, every file checks out.
    h.sim.set_faults(Faults::default());
    resume_to_the_end(&h, &job, &db).await;
    assert_eq!(sha256sum_check(out.path()), recordings * 3);
    assert!(
        live_leases(&h.store.leases_of(&job).await.unwrap()).is_empty(),
        "resume released its lease"
    );
    stop_gracefully(&mut console);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_run_whose_scheduler_and_worker_died_is_picked_up_and_the_schedule_goes_on() {
    let recordings = 12;
    let (h, db, nats, out, schedule, _secrets) = scheduled_runs(recordings, 72, 256 * 1024).await;
    let scheduler =
        |data: &Path, metrics_port: u16| start_scheduler(&nats, &db, data, metrics_port);
    let data_a = tempfile::tempdir().unwrap();
    let mut first = scheduler(data_a.path(), free_port());

    // The first run works; then its scheduler and its worker die.
    let (slot, job, worker_pids) = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let runs = h.store.schedule_runs(&schedule.id, 10).await.unwrap();
            if let Some(run) = runs.iter().find(|r| r.status == "running")
                && let Some(job) = run.job_id.as_deref()
            {
                let job: JobId = job.parse().unwrap();
                let leases = h.store.leases_of(&job).await.unwrap();
                let pids: Vec<i64> = live_leases(&leases).iter().map(|l| l.pid).collect();
                if !pids.is_empty() && h.store.progress(&job).await.unwrap().exported >= 2 {
                    return (run.slot_ms, job, pids);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the first run starts and exports");
    first.kill().unwrap();
    first.wait().unwrap();
    for pid in &worker_pids {
        sigkill(*pid);
    }
    let killed = Instant::now();
    assert!(
        h.store.progress(&job).await.unwrap().exported < recordings as u64,
        "killed mid-run"
    );

    // A new scheduler: it restarts the run with the references resolved again.
    let data_b = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let mut second = scheduler(data_b.path(), metrics_port);
    let restarted_by = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let leases = h.store.leases_of(&job).await.unwrap();
            if let Some(l) = live_leases(&leases)
                .into_iter()
                .find(|l| !worker_pids.contains(&l.pid))
            {
                return l.pid;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no new worker for the abandoned run; scheduler log:\n{}",
            scheduler_log(data_b.path())
        )
    });
    eprintln!(
        "run restarted (worker pid {restarted_by}) {:?} after the kills",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() <= Duration::from_secs(LEASE_SECS + SUPERVISE_SECS + 8),
        "restarted only after {:?}",
        killed.elapsed()
    );

    // The run finishes (its in-flight messages come back after the ack wait), with
    // every file, and its run row says so.
    let finished = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let runs = h.store.schedule_runs(&schedule.id, 50).await.unwrap();
            let killed_run = runs.iter().find(|r| r.slot_ms == slot).unwrap().clone();
            let later = runs
                .iter()
                .find(|r| r.slot_ms > slot && r.status == "finished")
                .cloned();
            if killed_run.status != "running"
                && killed_run.status != "starting"
                && let Some(later) = later
            {
                return (killed_run, later);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let Ok((killed_run, later)) = finished else {
        panic!(
            "the schedule stopped: {:#?}\nscheduler log:\n{}",
            h.store.schedule_runs(&schedule.id, 50).await,
            scheduler_log(data_b.path())
        )
    };
    eprintln!(
        "killed run {killed_run:?}; later run {later:?}; {:?} after the kills",
        killed.elapsed()
    );
    assert_eq!(killed_run.status, "finished", "{killed_run:?}");
    assert_eq!(killed_run.job_id.as_deref(), Some(job.as_str()));
    assert_eq!(h.store.job(&job).await.unwrap().status, JobStatus::Finished);
    let manifest = format!("portshift-manifest-{job}.txt");
    assert_eq!(sha256sum_check_of(out.path(), &manifest), recordings * 3);
    // The watermark moved with the restarted run, so later runs stay incremental.
    let s = h.store.schedule(&schedule.id).await.unwrap();
    assert!(s.watermark_s.is_some());

    let metrics = scrape(&format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("the scheduler's /metrics answers");
    assert_eq!(
        sample(
            &metrics,
            "portshift_supervisor_abandoned_jobs_total{action=\"restarted\"}"
        ),
        Some(1),
        "{metrics}"
    );
    stop_gracefully(&mut second);
}

/// What the scheduler-death tests start from: a harness whose simulator serves
/// `recordings` slow media files, its store's and NATS server's addresses, the folder
/// `out` a schedule every ten seconds exports into, that schedule, and the folder of its
/// token (to keep for the test's length).
async fn scheduled_runs(
    recordings: usize,
    seed: u64,
    bytes_per_sec: u64,
) -> (Harness, String, String, TempDir, Schedule, TempDir) {
    let h = Harness::start(Harness::slow_media_config(recordings, seed, bytes_per_sec)).await;
    let db = h.database_url();
    let nats = h.nats.as_ref().unwrap().url();
    let out = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let schedule = every_ten_seconds(&h, out.path(), secrets.path()).await;
    (h, db, nats, out, schedule, secrets)
}

/// What the scheduler started on `data` logged so far (for a failure message).
fn scheduler_log(data: &Path) -> String {
    std::fs::read_to_string(data.join("scheduler.log")).unwrap_or_default()
}

/// A schedule every ten seconds exporting into `out`, its Chorus token behind a
/// `file:` reference in `secrets`.
async fn every_ten_seconds(h: &Harness, out: &Path, secrets: &Path) -> Schedule {
    let token = secrets.join("chorus");
    std::fs::write(&token, TOKEN).unwrap();
    operator_schedule(
        h,
        "local",
        "every ten seconds",
        "*/10 * * * * *",
        "UTC",
        &format!("file://{}", out.display()),
        &token_only(format!("file:{}", token.display())),
    )
    .await
}

/// `portshift scheduler` with a short lease and supervisor interval, its metrics on
/// `metrics_port`, its log in `data/scheduler.log`.
fn start_scheduler(nats: &str, db: &str, data: &Path, metrics_port: u16) -> std::process::Child {
    logged_command(PORTSHIFT, &data.join("scheduler.log"))
        .args(["scheduler", "--tick-secs", "1"])
        .args(["--supervise-secs", &SUPERVISE_SECS.to_string()])
        .args(["--lease-secs", &LEASE_SECS.to_string()])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--nats-url", nats, "--database-url", db])
        .arg("--data-dir")
        .arg(data)
        .args(TEST_BUDGET_ARGS)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_scheduler_died_while_its_worker_finished_is_settled_by_the_next_scheduler() {
    let recordings = 8;
    let (h, db, nats, _out, schedule, _secrets) = scheduled_runs(recordings, 74, 512 * 1024).await;
    let data_a = tempfile::tempdir().unwrap();
    let mut first = start_scheduler(&nats, &db, data_a.path(), free_port());
    let (slot, job) = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let runs = h.store.schedule_runs(&schedule.id, 10).await.unwrap();
            if let Some(run) = runs.iter().find(|r| r.status == "running")
                && let Some(job) = run.job_id.as_deref()
            {
                let job: JobId = job.parse().unwrap();
                if !live_leases(&h.store.leases_of(&job).await.unwrap()).is_empty() {
                    return (run.slot_ms, job);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the first run starts");
    // Only the scheduler dies; its worker finishes the job on its own.
    first.kill().unwrap();
    first.wait().unwrap();
    let metrics_port = free_port();
    let data_b = tempfile::tempdir().unwrap();
    let mut second = start_scheduler(&nats, &db, data_b.path(), metrics_port);
    let run = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let runs = h.store.schedule_runs(&schedule.id, 50).await.unwrap();
            let run = runs.into_iter().find(|r| r.slot_ms == slot).unwrap();
            if run.status != "running" {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the dead scheduler's run stayed running; log:\n{}",
            scheduler_log(data_b.path())
        )
    });
    assert_eq!(run.status, "finished", "{run:?}");
    assert_eq!(run.files, Some(recordings as i64 * 3));
    let record = h.store.job(&job).await.unwrap();
    assert_eq!(record.status, JobStatus::Finished);
    // The watermark moved to the end of the run's window: the next runs are incremental.
    assert_eq!(
        h.store.schedule(&schedule.id).await.unwrap().watermark_s,
        Some(record.spec.to.timestamp())
    );
    let metrics = scrape(&format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap();
    assert_eq!(
        sample(&metrics, "portshift_supervisor_runs_settled_total"),
        Some(1),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "portshift_supervisor_abandoned_jobs_total{action=\"restarted\"}"
        ),
        Some(0),
        "a job that ended is not restarted"
    );
    stop_gracefully(&mut second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_supervisors_at_once_act_on_each_abandoned_job_exactly_once() {
    let url = fresh_database("leases").await.to_string();
    let store = JobStore::connect(&url).await.unwrap();

    let spec = JobSpec {
        chorus_url: "https://chorus.example/".into(),
        from: "2024-01-01T00:00:00Z".parse().unwrap(),
        to: "2024-12-31T23:59:59Z".parse().unwrap(),
        kinds: ExportKinds::default(),
        destination: "file:///tmp/x".into(),
        webhook_url: None,
        schedule: None,
        options: Default::default(),
        trust: pipeline::Trust::Operator,
    };
    let lease = Duration::from_secs(LEASE_SECS);
    let mut abandoned = BTreeSet::new();
    for _ in 0..30 {
        let job = JobId::new();
        store.create_job(&job, "org", "t", &spec).await.unwrap();
        abandoned.insert(job.to_string());
    }
    // Negative controls: a job whose worker holds a live lease (its heartbeat stale
    // all the same), and a job just created (its worker not started yet).
    let held = JobId::new();
    store.create_job(&held, "org", "t", &spec).await.unwrap();
    let young = JobId::new();
    store.create_job(&young, "org", "t", &spec).await.unwrap();
    sqlx::query("UPDATE jobs SET created_ms = 0, heartbeat_ms = 0 WHERE id <> $1")
        .bind(young.as_str())
        .execute(&admin_pool(&url).await)
        .await
        .unwrap();
    let holder = pipeline::leases::Lease::new(&held, lease);
    store.take_lease(&holder).await.unwrap();
    sqlx::query("UPDATE jobs SET heartbeat_ms = 0 WHERE id = $1")
        .bind(held.as_str())
        .execute(&admin_pool(&url).await)
        .await
        .unwrap();

    // Eight supervisors, each with its own connections, all at once.
    let mut supervisors = Vec::new();
    for _ in 0..8 {
        supervisors.push(Supervisor {
            store: JobStore::connect(&url).await.unwrap(),
            lease,
            every: Duration::from_secs(1),
            counters: Arc::new(SupervisorCounters::default()),
        });
    }
    let results = futures::future::join_all(
        supervisors
            .iter()
            .map(|s| async { s.pass().await.unwrap() }),
    )
    .await;
    let mut acted: Vec<String> = results.iter().flatten().map(JobId::to_string).collect();
    let total = acted.len();
    acted.sort();
    acted.dedup();
    assert_eq!(acted.len(), total, "a job was acted on twice: {results:?}");
    // Positive control: every abandoned job was acted on (by one of them), and only those.
    assert_eq!(acted.into_iter().collect::<BTreeSet<_>>(), abandoned);
    let by_each: Vec<usize> = results.iter().map(Vec::len).collect();
    eprintln!("jobs marked by each of 8 concurrent supervisors: {by_each:?}");
    for job in &abandoned {
        let r = store.job(&job.parse().unwrap()).await.unwrap();
        assert_eq!(r.status, JobStatus::NeedsCredentials);
    }
    for job in [&held, &young] {
        assert_eq!(store.job(job).await.unwrap().status, JobStatus::Running);
    }

    // The same for claims (a scheduler restarting a run): one winner per job.
    let job = JobId::new();
    store.create_job(&job, "org", "t", &spec).await.unwrap();
    sqlx::query("UPDATE jobs SET heartbeat_ms = 0 WHERE id = $1")
        .bind(job.as_str())
        .execute(&admin_pool(&url).await)
        .await
        .unwrap();
    let wins = futures::future::join_all(
        supervisors
            .iter()
            .map(|s| async { s.store.claim_abandoned(&job, lease).await.unwrap() }),
    )
    .await;
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");
    store.release_lease(&holder).await.unwrap();
}

async fn admin_pool(url: &str) -> sqlx::PgPool {
    sqlx::PgPool::connect(url).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workers_metrics_show_its_lease_redeliveries_and_dead_letters() {
    let recordings = 40;
    let mut sim = Harness::sim_config(recordings, 73);
    sim.sizes.min = 256 * 1024;
    sim.sizes.max = 256 * 1024;
    // Every media body is cut short until the worker has nakked a fetch (its own tries
    // used up), then none: the nakked messages are redelivered and succeed. Chance plays
    // no part (a 30 % rate once left every file to the in-stage retries).
    sim.faults = Faults {
        rate_truncate: 1.0,
        slow_media_bytes_per_sec: 1024 * 1024,
        ..Faults::default()
    };
    let h = Harness::start(sim).await;
    let (_out, job) = h.start_folder_job().await;
    // A fetch task no worker can read: dead-lettered at once.
    pipeline::topology::publish_raw(
        &h.js,
        pipeline::topology::Stage::Fetch.subject(&job),
        async_nats::HeaderMap::new(),
        bytes::Bytes::from_static(b"{not a fetch task"),
    )
    .await
    .unwrap();
    let db = h.database_url();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut worker = spawn_worker(
        &h,
        &job,
        &db,
        &[
            "--concurrency",
            "2",
            "--lease-secs",
            "6",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ],
        &h.tmp.path().join("worker.log"),
    );
    let mut scrapes = 0;
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while worker.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the worker did not finish");
        if let Some(text) = scrape(&url).await
            && sample(&text, "portshift_worker_lease_held") == Some(1)
        {
            if sample(&text, "portshift_stage_retries_total{stage=\"fetch\"}") >= Some(1) {
                h.sim.set_faults(Faults {
                    slow_media_bytes_per_sec: 1024 * 1024,
                    ..Faults::default()
                });
            }
            scrapes += 1;
            last = Some(text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = last.expect("the worker's /metrics answered while it ran");
    eprintln!("{scrapes} scrapes; the last:\n{text}");
    assert!(text.contains(&format!("portshift_worker_info{{job=\"{job}\"}} 1")));
    assert_eq!(sample(&text, "portshift_worker_lease_taken_total"), Some(1));
    assert!(sample(&text, "portshift_worker_lease_renewals_total").unwrap() >= 1);
    assert_eq!(sample(&text, "portshift_worker_lease_lost_total"), Some(0));
    let redelivered = sample(&text, "portshift_stage_redeliveries_total{stage=\"fetch\"}").unwrap();
    let retried = sample(&text, "portshift_stage_retries_total{stage=\"fetch\"}").unwrap();
    // One worker and no ack-wait expiry: every redelivery follows a retry it asked for.
    assert!(
        (1..=retried).contains(&redelivered),
        "redeliveries {redelivered}, retries {retried}"
    );
    assert_eq!(
        sample(&text, "portshift_stage_redeliveries_total{stage=\"list\"}"),
        Some(0)
    );
    // The dead-letter counter matches the dead-letter stream.
    let dead = sample(&text, "portshift_stage_dead_letters_total{stage=\"fetch\"}").unwrap();
    let letters = pipeline::replay::dead_letters(&h.js, &job, None)
        .await
        .unwrap();
    assert!(dead >= 1, "{text}");
    assert_eq!(dead as usize, letters.len());
    // Its lease went with it.
    assert!(h.store.leases_of(&job).await.unwrap().is_empty());
    let status = h.store.job(&job).await.unwrap().status;
    assert!(status.is_final(), "{status}");
}
