//! `--layout bagit`: the export is a BagIt 1.0 bag (RFC 8493) that the Library of
//! Congress tool `bagit.py --validate` (PyPI `bagit`) accepts, on a local folder and on a
//! copy downloaded from S3; a tampered payload file fails it; the tag manifest is signed.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use pipeline::{ExportOptions, JobSpec, JobStatus, Layout};

fn bagit_validate(dir: &Path) -> (bool, String) {
    let out = Command::new("bagit.py")
        .arg("--validate")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("could not run bagit.py ({e}): install PyPI bagit (deploy/local/install.sh)")
        });
    passed_with_output(&out)
}

fn tamper_one_payload_file(dir: &Path) -> String {
    let manifest = std::fs::read_to_string(dir.join("manifest-sha256.txt")).unwrap();
    let victim = manifest
        .lines()
        .map(|l| &l[66..])
        .find(|p| p.ends_with(".transcript.json"))
        .unwrap()
        .to_string();
    let path = dir.join(&victim);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    victim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cli_bagit_export_to_a_local_folder_validates_and_tampering_fails() {
    let h = Harness::start(Harness::sim_config(8, 81)).await;
    let root = h.tmp.path().join("bag");
    let out = Command::new(portshift_bin())
        .args(["export", "--from", "2024-01-01", "--to", "2024-12-31"])
        .arg("--dest")
        .arg(format!("file://{}", root.display()))
        .args(["--layout", "bagit"])
        .args(["--chorus-url", h.sim.api_url.as_str()])
        .arg("--data-dir")
        .arg(h.tmp.path().join("cli-data"))
        .env_remove("PORTSHIFT_SIGNING_KEY")
        .env("CHORUS_API_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_success(&out, "portshift export --layout bagit");
    let (ok, report) = bagit_validate(&root);
    assert!(ok, "bagit.py rejected the bag: {report}");
    let info = std::fs::read_to_string(root.join("bag-info.txt")).unwrap();
    let files = all_files_of(&root.join("data"));
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(root.join("data").join(f)).unwrap().len())
        .sum();
    assert!(
        info.contains(&format!("Payload-Oxum: {bytes}.{}\n", files.len())),
        "{info}"
    );
    assert!(
        info.contains("External-Identifier: portshift job "),
        "{info}"
    );
    // The portshift manifest still checks with sha256sum, over the data/ paths.
    sha256sum_check(&root);

    let victim = tamper_one_payload_file(&root);
    let (ok, report) = bagit_validate(&root);
    assert!(!ok, "a tampered payload file still validated: {report}");
    assert!(report.contains(&victim), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_bagit_export_to_s3_validates_on_a_downloaded_copy() {
    let h = Harness::start(Harness::sim_config(6, 82)).await;
    let s3 = s3_client().await;
    let bucket = fresh_bucket(&s3).await;
    let spec = JobSpec {
        options: ExportOptions {
            layout: Layout::Bagit,
            ..Default::default()
        },
        ..export_spec(h.sim.api_url.as_str(), &s3_dest(&bucket, "bag"))
    };
    let job = create_and_list(&h.store, &h.js, &spec, "test-org", "tester").await;
    let keys = tempfile::tempdir().unwrap();
    let (sk, pk) = (keys.path().join("k.key"), keys.path().join("k.pub"));
    pipeline::signing::generate(&sk, &pk).unwrap();
    assert_eq!(
        h.run_worker_signed(&job, &sk, Duration::from_secs(300))
            .await,
        JobStatus::Finished
    );
    let copy = tempfile::tempdir().unwrap();
    download(&s3, &bucket, "bag", copy.path()).await;
    let (ok, report) = bagit_validate(copy.path());
    assert!(ok, "bagit.py rejected the downloaded bag: {report}");
    // The signature covers the tag manifest, which covers the payload manifest.
    let verified = Command::new("minisign")
        .args(["-Vm", "tagmanifest-sha256.txt", "-p"])
        .arg(&pk)
        .current_dir(copy.path())
        .output()
        .unwrap();
    assert_success(&verified, "minisign -Vm tagmanifest-sha256.txt");
    let victim = tamper_one_payload_file(copy.path());
    let (ok, report) = bagit_validate(copy.path());
    assert!(!ok && report.contains(&victim), "{report}");
}
