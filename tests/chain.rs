//! Chained scheduled runs: each run's manifest names the previous run's manifest (path
//! and SHA-256, as a `sha256sum` line), so `portshift verify --chain` and the documented
//! shell loop (`sha256sum` + `minisign`) check every run back to the first. Deleting a
//! run's manifest or one file of an earlier run breaks the chain, and the report names
//! what is missing.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use common::*;
use pipeline::signing::{SigningKeyMaterial, SigningKeyRef};
use stages::scheduler::Scheduler;
use tokio::sync::watch;

/// The job ids of the runs that wrote a manifest, oldest first, once there are `n`.
async fn runs_with_files(h: &Harness, schedule: &str, n: usize) -> Vec<String> {
    tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let mut runs = h.store.schedule_runs(schedule, 1000).await.unwrap();
            runs.retain(|r| r.status == "finished" && r.files.unwrap_or(0) > 0);
            if runs.len() >= n {
                runs.reverse();
                return runs
                    .into_iter()
                    .map(|r| r.job_id.unwrap())
                    .collect::<Vec<_>>();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the scheduled runs did not happen")
}

fn verify_chain(root: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(portshift_bin())
        .args(["verify", "--chain"])
        .arg(format!("file://{}", root.display()))
        .args(extra)
        .output()
        .unwrap();
    passed_with_output(&out)
}

/// The shell loop of docs/manifest.md, run as documented.
fn shell_loop(root: &Path) -> (bool, String) {
    let script = r#"
m=$(ls portshift-manifest-*.txt | sort | tail -n 1)
while [ -n "$m" ]; do
    minisign -Vqm "$m" -p portshift-signing-key.pub || { echo "BAD SIGNATURE: $m"; exit 1; }
    sha256sum -c --quiet "$m" || { echo "BROKEN: $m"; exit 1; }
    m=$(awk '$2 ~ /^portshift-manifest-.*\.txt$/ { print $2 }' "$m")
done
echo "chain intact"
"#;
    let out = Command::new("bash")
        .args(["-c", script])
        .current_dir(root)
        .output()
        .unwrap();
    passed_with_output(&out)
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_runs_chain_and_a_removed_manifest_or_file_breaks_it() {
    let h = Harness::start(Harness::sim_config(5, 61)).await;
    let out = tempfile::tempdir().unwrap();
    let root = out.path().join("export");
    let keys = tempfile::tempdir().unwrap();
    let key_path = keys.path().join("k.key");
    pipeline::signing::generate(&key_path, &root.with_file_name("k.pub")).unwrap();
    let token = h.tmp.path().join("chorus-token");
    std::fs::write(&token, TOKEN).unwrap();
    let schedule = operator_schedule(
        &h,
        "org",
        "chained",
        "*/2 * * * * *",
        "UTC",
        &format!("file://{}", root.display()),
        &token_only(format!("file:{}", token.display())),
    )
    .await;
    let scheduler = Scheduler {
        store: h.store.clone(),
        js: h.js.clone(),
        worker: worker_command(&h),
        max_workers_per_org: 4,
        aws: Default::default(),
        tick: Duration::from_millis(100),
        name: "chain".into(),
        signing_key: Some(SigningKeyMaterial::load(&SigningKeyRef::File(key_path)).unwrap()),
        tenant_allowances: Default::default(),
    };
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(scheduler.run(rx));
    runs_with_files(&h, &schedule.id, 1).await;
    h.sim
        .add_recordings(3, Utc::now() - chrono::Duration::hours(1));
    runs_with_files(&h, &schedule.id, 2).await;
    h.sim
        .add_recordings(2, Utc::now() - chrono::Duration::hours(1));
    let runs = runs_with_files(&h, &schedule.id, 3).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let runs = &runs[..3];
    let name = |job: &str| format!("portshift-manifest-{job}.txt");

    // Each later run names the one before, by path and SHA-256, in both manifests.
    for pair in runs.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let text = std::fs::read_to_string(root.join(name(after))).unwrap();
        let prev_sha = sha256_hex(&std::fs::read(root.join(name(before))).unwrap());
        assert!(
            text.contains(&format!("{prev_sha}  {}\n", name(before))),
            "{} does not link {}:\n{text}",
            name(after),
            name(before)
        );
        let doc: serde_json::Value = serde_json::from_slice(
            &std::fs::read(root.join(format!("portshift-manifest-{after}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(doc["previous_manifest"]["job_id"], before.as_str());
        assert_eq!(doc["previous_manifest"]["sha256"], prev_sha.as_str());
    }
    let first: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join(format!("portshift-manifest-{}.json", runs[0]))).unwrap(),
    )
    .unwrap();
    assert!(first["previous_manifest"].is_null());

    // Intact: portshift's check (with the signatures) and the documented shell loop pass.
    let pk = root.with_file_name("k.pub");
    let (ok, report) = verify_chain(&root, &["--public-key", pk.to_str().unwrap()]);
    assert!(ok, "{report}");
    assert!(report.contains("chain of 3 run manifest(s)"), "{report}");
    std::fs::copy(&pk, root.join("portshift-signing-key.pub")).unwrap();
    let (ok, report) = shell_loop(&root);
    assert!(ok, "{report}");
    std::fs::remove_file(root.join("portshift-signing-key.pub")).unwrap();

    // Run 2's manifest deleted: the chain breaks at run 3, naming it.
    let no_manifest = out.path().join("no-manifest");
    copy_dir(&root, &no_manifest);
    std::fs::remove_file(no_manifest.join(name(&runs[1]))).unwrap();
    let (ok, report) = verify_chain(&no_manifest, &[]);
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!("{}: MISSING", name(&runs[1]))),
        "{report}"
    );

    // One file of run 1 deleted: run 1's manifest names it.
    let no_file = out.path().join("no-file");
    copy_dir(&root, &no_file);
    let run1 = std::fs::read_to_string(no_file.join(name(&runs[0]))).unwrap();
    let victim = run1
        .lines()
        .map(|l| &l[66..])
        .find(|p| p.ends_with(".mp4"))
        .unwrap()
        .to_string();
    std::fs::remove_file(no_file.join(&victim)).unwrap();
    let (ok, report) = verify_chain(&no_file, &[]);
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!("{}: {victim}: MISSING", name(&runs[0]))),
        "{report}"
    );
    std::fs::copy(&pk, no_file.join("portshift-signing-key.pub")).unwrap();
    let (ok, report) = shell_loop(&no_file);
    assert!(!ok && report.contains(&victim), "{report}");
}
