//! Scheduled incremental syncs against the simulator (a schedule firing every two
//! seconds stands in for "every minute"): each run exports exactly what is new, the
//! union of the runs' manifests is the full set with no recording twice, two schedulers
//! start each run once, unresolvable references fail the run without moving the
//! watermark, and schedule rows never hold a credential value.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use common::*;
use pipeline::JobId;
use pipeline::schedules::{CredentialRefs, Schedule};
use pipeline::store::JobStore;
use stages::scheduler::Scheduler;
use tokio::sync::watch;

fn token_file(dir: &std::path::Path, value: &str) -> String {
    let path = dir.join("chorus-token");
    std::fs::write(&path, value).unwrap();
    format!("file:{}", path.display())
}

fn start_scheduler(
    h: &Harness,
    store: JobStore,
    name: &str,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let scheduler = Scheduler {
        store,
        js: h.js.clone(),
        worker: worker_command(h),
        max_workers_per_org: 4,
        aws: Default::default(),
        tick: Duration::from_millis(100),
        name: name.into(),
        signing_key: None,
        tenant_allowances: Default::default(),
    };
    let (tx, rx) = watch::channel(false);
    (tx, tokio::spawn(scheduler.run(rx)))
}

async fn create(h: &Harness, refs: CredentialRefs, dest: &str, cron: &str) -> Schedule {
    operator_schedule(h, "org", "nightly", cron, "Europe/Helsinki", dest, &refs).await
}

/// Waits until the schedule has `n` runs in a final state; returns them oldest first.
async fn wait_runs(h: &Harness, id: &str, n: usize) -> Vec<pipeline::schedules::ScheduleRun> {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let mut runs = h.store.schedule_runs(id, 1000).await.unwrap();
            runs.retain(|r| !matches!(r.status.as_str(), "starting" | "running"));
            if runs.len() >= n {
                runs.reverse();
                return runs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("schedule runs did not happen")
}

/// A schedule firing every second, exporting to the folder `out`.
async fn every_second(h: &Harness, refs: CredentialRefs, out: &std::path::Path) -> Schedule {
    create(h, refs, &format!("file://{}", out.display()), "* * * * * *").await
}

/// Runs one scheduler until the schedule has `n` final runs; returns them oldest first.
async fn run_until(h: &Harness, id: &str, n: usize) -> Vec<pipeline::schedules::ScheduleRun> {
    let (stop, task) = start_scheduler(h, h.store.clone(), "a");
    let runs = wait_runs(h, id, n).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    runs
}

/// The ids of every recording the simulator holds.
fn sim_ids(h: &Harness) -> BTreeSet<String> {
    h.sim
        .dataset()
        .read()
        .unwrap()
        .recordings()
        .iter()
        .map(|r| r.id.clone())
        .collect()
}

/// The recording ids in a finished run's manifest.
fn manifest_ids(root: &std::path::Path, job: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root.join(format!("portshift-manifest-{job}.txt"))).unwrap();
    let mut ids: Vec<String> = text
        .lines()
        .filter(|l| l.contains(".metadata.json"))
        .map(|l| l.rsplit('/').nth(1).unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_run_exports_exactly_what_is_new() {
    let h = Harness::start(Harness::sim_config(20, 51)).await;
    let out = tempfile::tempdir().unwrap();
    let dest = format!("file://{}", out.path().display());
    let refs = token_only(token_file(h.tmp.path(), TOKEN));
    let schedule = create(&h, refs, &dest, "*/2 * * * * *").await;
    let (stop, task) = start_scheduler(&h, h.store.clone(), "a");

    let mut per_run: Vec<Vec<String>> = vec![];
    let mut expected_new: Vec<BTreeSet<String>> = vec![];
    // Run 1 exports the whole range.
    let first = wait_runs(&h, &schedule.id, 1).await;
    assert_eq!(first[0].status, "finished", "{first:?}");
    let all_initial: BTreeSet<String> = sim_ids(&h);
    expected_new.push(all_initial);
    // Between runs: new calls today, and a late arrival dated two days back (inside the lookback).
    let added_now: BTreeSet<String> = h
        .sim
        .add_recordings(5, Utc::now() - chrono::Duration::hours(1))
        .into_iter()
        .collect();
    let seen_runs = h
        .store
        .schedule_runs(&schedule.id, 1000)
        .await
        .unwrap()
        .len();
    let runs = wait_runs(&h, &schedule.id, seen_runs + 1).await;
    let late: BTreeSet<String> = h
        .sim
        .add_recordings(2, Utc::now() - chrono::Duration::days(2))
        .into_iter()
        .collect();
    let runs_after = wait_runs(&h, &schedule.id, runs.len() + 2).await;
    stop.send(true).unwrap();
    task.await.unwrap();

    let all_runs = h.store.schedule_runs(&schedule.id, 1000).await.unwrap();
    assert!(
        all_runs
            .iter()
            .all(|r| r.status == "finished" || r.status == "skipped"),
        "{all_runs:?}"
    );
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for run in all_runs
        .iter()
        .rev()
        .filter(|r| r.status == "finished" && r.files.unwrap_or(0) > 0)
    {
        let ids = manifest_ids(out.path(), run.job_id.as_deref().unwrap());
        for id in &ids {
            *seen.entry(id.clone()).or_default() += 1;
        }
        per_run.push(ids);
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "a recording was exported twice: {seen:?}"
    );
    let everything: BTreeSet<String> = sim_ids(&h);
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        everything,
        "the union of the manifests is the full set"
    );
    // The runs that found something found exactly the additions, in order.
    let non_empty: Vec<BTreeSet<String>> = per_run
        .into_iter()
        .filter(|r| !r.is_empty())
        .map(|r| r.into_iter().collect())
        .collect();
    expected_new.push(added_now);
    expected_new.push(late);
    assert_eq!(non_empty, expected_new);
    assert!(runs_after.len() >= 3);
    let watermark = h
        .store
        .schedule(&schedule.id)
        .await
        .unwrap()
        .watermark_s
        .unwrap();
    assert!(
        watermark > Utc::now().timestamp() - 60,
        "the watermark moved to the last clean run"
    );
    // Each run's manifest checks with the real sha256sum.
    let empty_runs = all_runs
        .iter()
        .filter(|r| r.status == "finished" && r.files == Some(0))
        .count();
    let manifests = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".txt"))
        .count();
    assert_eq!(
        manifests,
        all_runs.iter().filter(|r| r.files.unwrap_or(0) > 0).count(),
        "{empty_runs} empty runs wrote no manifest"
    );
    for run in all_runs
        .iter()
        .filter(|r| r.status == "finished" && r.files.unwrap_or(0) > 0)
    {
        let name = format!("portshift-manifest-{}.txt", run.job_id.as_deref().unwrap());
        let out_cmd = std::process::Command::new("sha256sum")
            .args(["-c", "--strict", &name])
            .current_dir(out.path())
            .output()
            .unwrap();
        assert!(
            out_cmd.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out_cmd.stdout)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schedulers_start_each_run_once() {
    let h = Harness::start(Harness::sim_config(3, 52)).await;
    let out = tempfile::tempdir().unwrap();
    let refs = token_only(token_file(h.tmp.path(), TOKEN));
    let schedule = every_second(&h, refs, out.path()).await;
    // A second scheduler with its own connections to the same database, as a second server.
    let other_store = JobStore::open_sqlite_in(h.tmp.path()).await.unwrap();
    let (stop_a, a) = start_scheduler(&h, h.store.clone(), "a");
    let (stop_b, b) = start_scheduler(&h, other_store, "b");
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop_a.send(true).unwrap();
    stop_b.send(true).unwrap();
    a.await.unwrap();
    b.await.unwrap();

    let runs = h.store.schedule_runs(&schedule.id, 1000).await.unwrap();
    assert!(runs.len() >= 4, "about one run a second: {runs:?}");
    let slots: BTreeSet<i64> = runs.iter().map(|r| r.slot_ms).collect();
    assert_eq!(slots.len(), runs.len());
    let run_jobs: BTreeSet<String> = runs.iter().filter_map(|r| r.job_id.clone()).collect();
    let jobs: Vec<_> = h
        .store
        .recent_jobs(1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.spec.schedule.as_deref() == Some(schedule.id.as_str()))
        .collect();
    assert_eq!(
        jobs.len(),
        run_jobs.len(),
        "a job was started that no run owns (a slot started twice)"
    );
    let starters: BTreeSet<&str> = jobs.iter().map(|j| j.started_by.as_str()).collect();
    eprintln!(
        "two schedulers: {} slots, {} jobs, started by {starters:?}",
        runs.len(),
        jobs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unresolvable_reference_fails_the_run_and_keeps_the_watermark() {
    let h = Harness::start(Harness::sim_config(3, 53)).await;
    let out = tempfile::tempdir().unwrap();
    let refs = token_only("file:/nonexistent/portshift/chorus-token".into());
    let schedule = every_second(&h, refs, out.path()).await;
    let runs = run_until(&h, &schedule.id, 2).await;
    for run in &runs {
        assert_eq!(run.status, "failed");
        assert!(
            run.reason
                .as_deref()
                .unwrap()
                .contains("/nonexistent/portshift/chorus-token"),
            "{run:?}"
        );
        assert!(run.job_id.is_none(), "no job starts without credentials");
    }
    assert_eq!(
        h.store.schedule(&schedule.id).await.unwrap().watermark_s,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedule_rows_hold_references_never_values() {
    let canary = format!("CANARY-SCHEDULE-{}", JobId::new());
    let mut sim = Harness::sim_config(2, 54);
    sim.token = canary.clone();
    let h = Harness::start(sim).await;
    let out = tempfile::tempdir().unwrap();
    let reference = token_file(h.tmp.path(), &canary);
    let refs = token_only(reference.clone());
    let schedule = every_second(&h, refs, out.path()).await;
    let runs = run_until(&h, &schedule.id, 1).await;
    assert_eq!(
        runs[0].status, "finished",
        "the reference resolved and the run used it: {runs:?}"
    );
    h.store.close().await;
    let mut db = Vec::new();
    for entry in std::fs::read_dir(h.tmp.path()).unwrap().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("portshift.sqlite3")
        {
            db.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    let contains = |needle: &str| db.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        contains(&reference),
        "positive control: the reference itself is stored"
    );
    assert!(
        !contains(&canary),
        "the credential value reached the database"
    );
}
