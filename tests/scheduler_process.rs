//! Scheduled runs in their own worker processes, seen from outside. The real
//! `portshift scheduler` runs a schedule whose credentials are canaries (Chorus token,
//! S3 secret key and webhook secret behind `file:` references; a job store URL with a
//! canary password in the scheduler's own environment, as an operator sets it). For the
//! scheduler's whole life, `/proc` of the scheduler and of every child is sampled:
//! - each run is a `portshift worker --job <that run's job>` child of the scheduler,
//!   with core dumps off;
//! - no command line or environment, the scheduler's or a child's, holds a credential,
//!   and no child's holds the job store password (positive control: the scan finds
//!   that password in the scheduler's environment, where the operator put it);
//! - each run's worker log exists, is readable by the server user only (0600) and
//!   holds no canary.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pipeline::JobId;
use pipeline::schedules::{CredentialRefs, ScheduleTemplate};
use pipeline::store::JobStore;
use pipeline::worker_process::worker_log_path;

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Children of `parent`, from /proc/<pid>/stat (field 4 is the parent's pid).
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            // The command name (field 2) is in parentheses and may hold spaces.
            && let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r)
            && rest.split_whitespace().nth(1) == Some(&parent.to_string())
        {
            out.push(pid);
        }
    }
    out
}

/// What was seen of one child process.
#[derive(Default, Debug)]
struct Seen {
    argv: Vec<String>,
    samples: usize,
    core_off: bool,
}

fn core_limit_is_zero(pid: u32) -> Option<bool> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    Some(f.get(4) == Some(&"0") && f.get(5) == Some(&"0"))
}

fn write_secret(dir: &Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap();
    format!("file:{}", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_runs_are_hardened_worker_processes_and_proc_shows_no_secret() {
    let chorus = format!("CANARY-SCHED-CHORUS-{}", uuid::Uuid::new_v4().simple());
    let hook_secret = format!("CANARY-SCHED-HOOK-{}", uuid::Uuid::new_v4().simple());
    let db_password = format!("CANARYDBPW{}", uuid::Uuid::new_v4().simple());
    let s3_secret = env_or_fail("PORTSHIFT_TEST_S3_SECRET_KEY");
    let mut sim = Harness::sim_config(6, 91);
    sim.token = chorus.clone();
    // Slow enough answers that each worker lives long enough to be sampled many times.
    sim.faults.slow_ms = 40;
    let h = Harness::start(sim).await;
    let s3 = s3_client().await;
    let bucket = fresh_bucket(&s3).await;

    // A PostgreSQL job store whose URL carries a (canary) password. The test server
    // trusts local connections, so the password is accepted and never checked.
    let base = env_or_fail("PORTSHIFT_TEST_POSTGRES_URL");
    let mut url = fresh_database_on(&base, "sched").await;
    url.set_password(Some(&db_password)).unwrap();
    let database_url = url.to_string();
    let store = JobStore::connect(&database_url).await.unwrap();

    let secrets = tempfile::tempdir().unwrap();
    let refs = CredentialRefs {
        chorus_token: write_secret(secrets.path(), "chorus", &chorus),
        s3: Some(write_secret(
            secrets.path(),
            "s3.json",
            &serde_json::json!({
                "access_key_id": env_or_fail("PORTSHIFT_TEST_S3_ACCESS_KEY"),
                "secret_access_key": s3_secret,
            })
            .to_string(),
        )),
        webhook_secret: Some(write_secret(secrets.path(), "hook", &hook_secret)),
        azure: None,
        gcs: None,
    };
    let (hook_url, hook_seen) = webhook().await;
    let schedule = store
        .create_schedule(
            "org",
            "every few seconds",
            "*/3 * * * * *",
            "UTC",
            &ScheduleTemplate {
                chorus_url: h.sim.api_url.to_string(),
                kinds: Default::default(),
                destination: s3_dest(&bucket, "sched"),
                webhook_url: Some(hook_url),
                lookback_s: 7 * 24 * 3600,
                options: Default::default(),
            },
            &refs,
            "2024-01-01T00:00:00Z".parse().unwrap(),
            pipeline::TrustLevel::Operator,
        )
        .await
        .unwrap();

    let data_dir = tempfile::tempdir().unwrap();
    // Stopped if the test fails, so a failure leaves no scheduler (or worker) running.
    let mut scheduler = test_support::process::Killed(
        Command::new(env!("CARGO_BIN_EXE_portshift"))
            .args(["scheduler", "--tick-secs", "1"])
            .args(["--nats-url", &h.nats.as_ref().unwrap().url()])
            .arg("--data-dir")
            .arg(data_dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("PORTSHIFT_DATABASE_URL", &database_url)
            .env("PORTSHIFT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(data_dir.path().join("scheduler.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let spid = scheduler.0.id();

    let credentials = [&chorus, &hook_secret, &s3_secret];
    let mut children: BTreeMap<u32, Seen> = BTreeMap::new();
    let mut scheduler_samples = 0;
    let mut db_password_in_scheduler_env = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    let finished_runs = loop {
        assert!(
            scheduler.0.try_wait().unwrap().is_none(),
            "the scheduler exited: {}",
            std::fs::read_to_string(data_dir.path().join("scheduler.log")).unwrap_or_default()
        );
        for what in ["cmdline", "environ"] {
            if let Ok(bytes) = std::fs::read(format!("/proc/{spid}/{what}")) {
                for secret in credentials {
                    assert!(
                        !contains(&bytes, secret),
                        "a credential is in the scheduler's /proc/{spid}/{what}"
                    );
                }
                if what == "environ" {
                    db_password_in_scheduler_env |= contains(&bytes, &db_password);
                }
                scheduler_samples += 1;
            }
        }
        for pid in children_of(spid) {
            // A child that has not exec'd yet is still a copy of the scheduler, with the
            // scheduler's environment (the operator's database URL included): only the
            // worker it becomes is checked.
            let is_worker = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|argv| argv.split(|b| *b == 0).nth(1) == Some(b"worker".as_slice()));
            if !is_worker {
                continue;
            }
            let seen = children.entry(pid).or_default();
            for what in ["cmdline", "environ"] {
                let Ok(bytes) = std::fs::read(format!("/proc/{pid}/{what}")) else {
                    continue;
                };
                for secret in credentials.iter().copied().chain([&db_password]) {
                    assert!(
                        !contains(&bytes, secret),
                        "a secret is in the worker's /proc/{pid}/{what}"
                    );
                }
                if what == "cmdline" && !bytes.is_empty() {
                    seen.argv = bytes
                        .split(|b| *b == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect();
                }
            }
            if let Some(off) = core_limit_is_zero(pid) {
                seen.core_off = off;
                seen.samples += 1;
            }
        }
        let runs = store.schedule_runs(&schedule.id, 100).await.unwrap();
        let finished: Vec<_> = runs
            .into_iter()
            .filter(|r| r.status == "finished")
            .collect();
        if finished.len() >= 2 {
            break finished;
        }
        assert!(
            Instant::now() < deadline,
            "no two finished runs in 90 s: {:?}",
            store.schedule_runs(&schedule.id, 100).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // SIGINT, as Ctrl-C: the scheduler lets its runs finish and exits.
    // SAFETY: a signal to the child this test started.
    unsafe {
        libc::kill(spid as i32, libc::SIGINT);
    }
    let exited = tokio::task::spawn_blocking(move || scheduler.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exited.success(), "scheduler: {exited}");

    assert!(scheduler_samples >= 10, "the scheduler was sampled");
    assert!(
        db_password_in_scheduler_env,
        "positive control: the scan finds the password the operator put in the scheduler's environment"
    );
    // Every finished run was a `portshift worker --job <its job>` child, hardened.
    let workers: BTreeMap<String, &Seen> = children
        .values()
        .filter(|s| s.argv.get(1).map(String::as_str) == Some("worker"))
        .filter_map(|s| {
            let i = s.argv.iter().position(|a| a == "--job")?;
            Some((s.argv.get(i + 1)?.clone(), s))
        })
        .collect();
    eprintln!(
        "scheduler sampled {scheduler_samples} times; {} children seen: {:?}",
        children.len(),
        children
            .values()
            .map(|s| (&s.argv, s.samples))
            .collect::<Vec<_>>()
    );
    for run in &finished_runs {
        let job: JobId = run.job_id.as_deref().unwrap().parse().unwrap();
        let seen = workers
            .get(job.as_str())
            .unwrap_or_else(|| panic!("run {run:?} was not a worker process of the scheduler"));
        assert!(
            seen.core_off,
            "the worker of {job} could dump core: {seen:?}"
        );
        assert!(
            !seen
                .argv
                .iter()
                .any(|a| a.contains("database") || a.contains("postgres")),
            "the job store is named on the worker's command line: {:?}",
            seen.argv
        );
        // Its log: private, and no canary in it.
        let log = worker_log_path(data_dir.path(), &job);
        let meta = std::fs::metadata(&log).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            log.display()
        );
        let text = std::fs::read(&log).unwrap();
        assert!(
            text.split(|b| *b == b'\n').count() > 5,
            "the debug log has lines, so the search means something"
        );
        for secret in credentials.iter().copied().chain([&db_password]) {
            assert!(!contains(&text, secret), "a secret is in {}", log.display());
        }
    }
    // The runs did their work: the first exported everything, and the webhook was signed.
    let keys: BTreeSet<String> = list_keys(&s3, &bucket, "sched").await.into_iter().collect();
    assert!(keys.len() >= 6 * 3 + 2, "{keys:?}");
    assert!(!hook_seen.lock().unwrap().is_empty());
}
