//! Signed manifests, checked with Debian's real `minisign` binary: a CLI export to a
//! local folder, an export to S3 (SeaweedFS) checked on a downloaded copy, a worker
//! process that receives the key on its standard input, tampering that must fail, an
//! unsigned export that says so, and a rotated-out key still verifying old exports
//! with the public key the console publishes for it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use pipeline::signing::{SigningKeyMaterial, SigningKeyRef};
use pipeline::{ExportKinds, JobStatus};

const MINISIGN: &str = "minisign";

fn portshift() -> Command {
    let mut c = Command::new(portshift_bin());
    c.env_remove("PORTSHIFT_SIGNING_KEY");
    c
}

/// `portshift signing-key generate` into `dir`; returns (secret key, public key) paths.
fn generate_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (sk, pk) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    );
    let out = portshift()
        .args(["signing-key", "generate", "--secret-key"])
        .arg(&sk)
        .arg("--public-key")
        .arg(&pk)
        .output()
        .unwrap();
    assert_success(&out, "signing-key generate");
    (sk, pk)
}

/// What `portshift signing-key public --signing-key file:SK` prints (it must succeed).
fn public_key_of(secret_key: &Path) -> String {
    let printed = portshift()
        .args(["signing-key", "public", "--signing-key"])
        .arg(format!("file:{}", secret_key.display()))
        .output()
        .unwrap();
    assert_success(&printed, "signing-key public");
    String::from_utf8(printed.stdout).unwrap()
}

/// `portshift export` of 2024 from the harness's simulator into the folder `root`, its
/// data folder `cli-data` in the harness's; the caller adds the key and the token.
fn export_command(h: &Harness, root: &Path) -> Command {
    let mut c = portshift();
    c.args(["export", "--from", "2024-01-01", "--to", "2024-12-31"])
        .arg("--dest")
        .arg(format!("file://{}", root.display()))
        .args(["--chorus-url", h.sim.api_url.as_str()])
        .arg("--data-dir")
        .arg(h.tmp.path().join("cli-data"));
    c
}

/// Verifies the export in `dir` with minisign, then shows that a one-byte change and a
/// removed line each make it fail (restoring the manifest in between).
fn check_signed_and_tamper_evident(dir: &Path, public_key: &Path, job: &str) {
    let (ok, out) = minisign_verify(dir, "portshift-manifest.txt", public_key);
    assert!(ok, "minisign rejected a fresh export: {out}");
    let json = std::fs::read(dir.join("portshift-manifest.json")).unwrap();
    assert!(
        out.contains(&format!("job={job}"))
            && out.contains(&format!("manifest_json_sha256={}", sha256_hex(&json))),
        "the trusted comment names the job and the JSON's SHA-256: {out}"
    );
    let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(doc["signature"]["signed"], true, "{}", doc["signature"]);

    let path = dir.join("portshift-manifest.txt");
    let original = std::fs::read(&path).unwrap();
    let mut one_byte = original.clone();
    one_byte[3] = if one_byte[3] == b'0' { b'1' } else { b'0' };
    std::fs::write(&path, &one_byte).unwrap();
    let (ok, out) = minisign_verify(dir, "portshift-manifest.txt", public_key);
    assert!(!ok, "a one-byte change still verified: {out}");

    let text = String::from_utf8(original.clone()).unwrap();
    let fewer: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, fewer).unwrap();
    let (ok, out) = minisign_verify(dir, "portshift-manifest.txt", public_key);
    assert!(!ok, "a removed line still verified: {out}");

    std::fs::write(&path, &original).unwrap();
    assert!(minisign_verify(dir, "portshift-manifest.txt", public_key).0);
}

/// The standard output of an `export` that must have succeeded and said it signed the
/// manifest.
fn signed_export_output(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "export failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Signed: portshift-manifest.txt.minisig"),
        "{stdout}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_export_to_a_local_folder_is_signed_and_minisign_catches_tampering() {
    let h = Harness::start(Harness::sim_config(12, 41)).await;
    let keys = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(keys.path(), "current");
    // `signing-key public` prints exactly the public key file minisign reads.
    assert_eq!(public_key_of(&sk), std::fs::read_to_string(&pk).unwrap());

    let root = h.tmp.path().join("export");
    let out = export_command(&h, &root)
        // The key from an environment reference, as an operator's secret store would give it.
        .env("PORTSHIFT_SIGNING_KEY", "env:MY_SIGNING_KEY")
        .env("MY_SIGNING_KEY", std::fs::read_to_string(&sk).unwrap())
        .env("CHORUS_API_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = signed_export_output(&out);
    let job = stdout
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    assert!(root.join("portshift-manifest.txt.minisig").exists());
    sha256sum_check(&root);
    check_signed_and_tamper_evident(&root, &pk, &job);

    // Another key's public key does not verify it.
    let (_, other_pk) = generate_key(keys.path(), "other");
    assert!(!minisign_verify(&root, "portshift-manifest.txt", &other_pk).0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_to_s3_is_signed_and_verifies_on_a_downloaded_copy() {
    let h = Harness::start(Harness::sim_config(10, 42)).await;
    let keys = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(keys.path(), "s3");
    let s3 = s3_client().await;
    let bucket = fresh_bucket(&s3).await;
    let job = h
        .start_job(&s3_dest(&bucket, "signed"), ExportKinds::default())
        .await;
    assert_eq!(
        h.run_worker_signed(&job, &sk, Duration::from_secs(300))
            .await,
        JobStatus::Finished
    );
    let copy = tempfile::tempdir().unwrap();
    download(&s3, &bucket, "signed", copy.path()).await;
    sha256sum_check(copy.path());
    check_signed_and_tamper_evident(copy.path(), &pk, job.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_process_signs_with_the_key_from_its_standard_input() {
    use std::io::Write;
    let h = Harness::start(Harness::sim_config(6, 43)).await;
    let keys = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(keys.path(), "worker");
    let root = h.tmp.path().join("export");
    let job = h.start_job_into(&root).await;
    let database_url = format!(
        "sqlite://{}",
        h.tmp.path().join("portshift.sqlite3").display()
    );
    let material = SigningKeyMaterial::load(&SigningKeyRef::File(sk.clone())).unwrap();
    // The document the console writes: its credentials plus the operator's key.
    let creds = ui::with_signing_key(
        zeroize::Zeroizing::new(
            serde_json::json!({"chorus_token": TOKEN})
                .to_string()
                .into_bytes(),
        ),
        Some(&material),
    );
    let log = h.tmp.path().join("worker.log");
    let mut child = portshift()
        .args(["worker", "--job", job.as_str()])
        .args(["--nats-url", &h.nats.as_ref().unwrap().url()])
        .args(["--database-url", &database_url])
        .arg("--data-dir")
        .arg(h.tmp.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&creds).unwrap();
    let pid = child.id();
    let secret_line = std::fs::read_to_string(&sk)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        for what in ["cmdline", "environ"] {
            if let Ok(bytes) = std::fs::read(format!("/proc/{pid}/{what}")) {
                assert!(
                    !bytes
                        .windows(secret_line.len())
                        .any(|w| w == secret_line.as_bytes()),
                    "the signing key is in /proc/{pid}/{what}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(minisign_verify(&root, "portshift-manifest.txt", &pk).0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unsigned_export_says_so() {
    let h = Harness::start(Harness::sim_config(4, 44)).await;
    let root = h.tmp.path().join("export");
    let out = export_command(&h, &root)
        .env("CHORUS_API_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("UNSIGNED"), "{stdout}");
    assert!(!root.join("portshift-manifest.txt.minisig").exists());
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("portshift-manifest.json")).unwrap())
            .unwrap();
    assert_eq!(doc["signature"]["signed"], false);
    assert!(
        doc["signature"]["note"]
            .as_str()
            .unwrap()
            .starts_with("UNSIGNED")
    );
    sha256sum_check(&root);
}

/// Starts `portshift serve` with a signing key and a file of retired public keys.
fn start_console(data: &Path, signing_key: &Path, retired: &Path) -> (Killed, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = data.join("console.log");
    std::fs::create_dir_all(data).unwrap();
    let child = portshift()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .arg("--signing-key")
        .arg(signing_key)
        .arg("--retired-signing-keys")
        .arg(retired)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let child = Killed(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("listening on")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "console did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, format!("http://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_out_key_still_verifies_old_exports_with_its_published_key() {
    let h = Harness::start(Harness::sim_config(4, 45)).await;
    let keys = tempfile::tempdir().unwrap();
    let (old_sk, old_pk) = generate_key(keys.path(), "old");
    let (new_sk, new_pk) = generate_key(keys.path(), "new");
    // An export signed before the rotation.
    let root = h.tmp.path().join("before-rotation");
    let job = h.start_job_into(&root).await;
    assert_eq!(
        h.run_worker_signed(&job, &old_sk, Duration::from_secs(120))
            .await,
        JobStatus::Finished
    );

    // The console now signs with the new key and publishes the old one as retired.
    let (_console, base) = start_console(&h.tmp.path().join("console"), &new_sk, &old_pk);
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r = http.get(format!("{base}{path}")).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (code, current) = get("/.well-known/portshift-signing-key.pub".into()).await;
    assert_eq!(code, 200);
    assert_eq!(current, std::fs::read_to_string(&new_pk).unwrap());
    let (code, index) = get("/.well-known/portshift-signing-keys".into()).await;
    assert_eq!(code, 200);
    let sig = std::fs::read_to_string(root.join("portshift-manifest.txt.minisig")).unwrap();
    let old_id = pipeline::signing::signature_key_id(&sig).unwrap();
    assert!(
        index.contains(&format!("{old_id} retired")),
        "the index lists the retired key: {index}"
    );
    let (code, published_old) =
        get(format!("/.well-known/portshift-signing-keys/{old_id}.pub")).await;
    assert_eq!(code, 200);
    let fetched = keys.path().join("fetched-old.pub");
    std::fs::write(&fetched, published_old).unwrap();
    let (ok, out) = minisign_verify(&root, "portshift-manifest.txt", &fetched);
    assert!(ok, "the published retired key does not verify: {out}");
    // Negative control: the current key does not verify the old export.
    assert!(!minisign_verify(&root, "portshift-manifest.txt", &new_pk).0);
    let (code, _) = get("/.well-known/portshift-signing-keys/0000000000000000.pub".into()).await;
    assert_eq!(code, 404);
}

/// A key pair made by Debian's `minisign -G -W` (no password; minisign 0.11 leaves the
/// key's checksum field empty, which the crate alone refuses as "Corrupted key") is
/// usable as the operator's secret key: `signing-key public` prints the same public
/// key, and an export signed with it verifies with Debian's `minisign -Vm`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_made_by_debian_minisign_without_a_password_signs_exports() {
    let h = Harness::start(Harness::sim_config(3, 44)).await;
    let keys = tempfile::tempdir().unwrap();
    let (sk, pk) = (
        keys.path().join("debian.key"),
        keys.path().join("debian.pub"),
    );
    let made = Command::new(MINISIGN)
        .args(["-G", "-W", "-s"])
        .arg(&sk)
        .arg("-p")
        .arg(&pk)
        .stdin(Stdio::null())
        .output()
        .expect("run minisign (Debian's minisign, deploy/local/install.sh)");
    assert_success(&made, "minisign -G");

    let base64_line = |text: &str| text.lines().nth(1).unwrap().trim().to_string();
    assert_eq!(
        base64_line(&public_key_of(&sk)),
        base64_line(&std::fs::read_to_string(&pk).unwrap()),
        "the same public key as Debian's minisign wrote"
    );

    let root = h.tmp.path().join("export");
    let out = export_command(&h, &root)
        .arg("--signing-key")
        .arg(format!("file:{}", sk.display()))
        .env("CHORUS_API_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    signed_export_output(&out);
    sha256sum_check(&root);
    let (ok, out) = minisign_verify(&root, "portshift-manifest.txt", &pk);
    assert!(ok, "Debian's minisign rejected the export: {out}");
}

/// The manifest is read from the job store a page (1,000 rows) at a time while it is
/// written and signed: with 1,200 recordings (3,240 files, 1,080 recordings exported,
/// 120 deleted in Chorus during the export) every section spans pages, and the text,
/// its signature and the JSON still agree with each other and with the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifest_of_many_pages_is_whole_signed_and_in_order() {
    let mut sim = Harness::sim_config(1200, 44);
    sim.sizes.min = 64;
    sim.sizes.max = 256;
    sim.deleted_every = 10;
    let h = Harness::start(sim).await;
    let keys = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(keys.path(), "pages");
    let root = h.tmp.path().join("export");
    let job = h.start_job_into(&root).await;
    let mut creds = credentials();
    creds.signing_key = Some(SigningKeyMaterial::load(&SigningKeyRef::File(sk)).unwrap());
    let (status, _) = h
        .run_worker_with(&job, fast_options(), Duration::from_secs(600), &creds)
        .await;
    assert_eq!(status, JobStatus::Finished);

    let lines = sha256sum_check(&root);
    assert_eq!(lines, 1080 * 3);
    check_signed_and_tamper_evident(&root, &pk, job.as_str());

    let text = std::fs::read_to_string(root.join("portshift-manifest.txt")).unwrap();
    let doc: stages::manifest::ManifestDocument =
        serde_json::from_slice(&std::fs::read(root.join("portshift-manifest.json")).unwrap())
            .unwrap();
    let text_paths: Vec<&str> = text.lines().map(|l| &l[66..]).collect();
    let json_paths: Vec<&str> = doc.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        json_paths, text_paths,
        "the JSON lists the text's files, in its order"
    );
    let mut sorted = json_paths.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, json_paths, "in key order, each once");
    assert_eq!(
        (doc.totals.files, doc.totals.recordings, doc.totals.skipped),
        (3240, 1080, 120)
    );
    assert_eq!(
        doc.totals.bytes,
        doc.files.iter().map(|f| f.bytes).sum::<u64>()
    );
    let ids: Vec<&str> = doc
        .recordings
        .iter()
        .map(|r| r.recording_id.as_str())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        (ids.len(), unique),
        (1080, ids.clone()),
        "each recording once, in id order"
    );
    assert!(doc.recordings.iter().all(|r| r.exported_at.is_some()));
    assert_eq!(doc.skipped.len(), 120);
    assert!(
        doc.skipped
            .iter()
            .all(|p| p.state == Some(stages::manifest::ProblemState::DeletedInSource))
    );
    assert!(doc.failed.is_empty());
}
