//! The console's worker launcher stops workers the way systemd would: SIGTERM, so a
//! worker can drop its transfers, remove its partial files and abort its open uploads
//! (a SIGKILL would leave them behind). `stop_all`, run when the console stops, waits
//! for every worker to exit before the console's NATS server may stop.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use pipeline::JobId;
use ui::{ProcessLauncher, WorkerLauncher};
use zeroize::Zeroizing;

/// A stand-in for `portshift worker`: reads its credentials, says it started, and on
/// SIGTERM records that it got one (in its --data-dir) and exits.
const FAKE_WORKER: &str = r#"#!/bin/bash
dir=""; job=""
while [ $# -gt 0 ]; do
    case "$1" in --data-dir) dir=$2 ;; --job) job=$2 ;; esac
    shift
done
cat >/dev/null
trap 'echo TERM >"$dir/$job.signal"; exit 0' TERM
echo started >"$dir/$job.started"
while :; do sleep 0.05; done
"#;

fn wait_for(path: &Path, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// Multi-threaded: the test waits with blocking sleeps while the launcher's watcher
// tasks deliver the signals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_shutdown_stop_workers_with_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("fake-portshift");
    std::fs::write(&exe, FAKE_WORKER).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let launcher = ProcessLauncher::new(
        exe,
        "nats://127.0.0.1:1".into(),
        "sqlite://unused".into(),
        tmp.path().to_path_buf(),
    );

    // Cancel: one worker is asked to stop.
    let job = JobId::new();
    launcher
        .launch(&job, Zeroizing::new(b"{}".to_vec()))
        .await
        .unwrap();
    wait_for(&tmp.path().join(format!("{job}.started")), 10);
    assert!(launcher.stop(&job));
    assert_eq!(
        wait_for(&tmp.path().join(format!("{job}.signal")), 10).trim(),
        "TERM"
    );

    // Shutdown: every worker is asked, and stop_all returns once they are gone.
    let jobs = [JobId::new(), JobId::new()];
    for j in &jobs {
        launcher
            .launch(j, Zeroizing::new(b"{}".to_vec()))
            .await
            .unwrap();
        wait_for(&tmp.path().join(format!("{j}.started")), 10);
    }
    launcher.stop_all(Duration::from_secs(20)).await;
    for j in &jobs {
        let signal = std::fs::read_to_string(tmp.path().join(format!("{j}.signal")))
            .expect("stop_all returned before the worker got SIGTERM and exited");
        assert_eq!(signal.trim(), "TERM");
    }
}
