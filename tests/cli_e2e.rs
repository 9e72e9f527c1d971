//! The command line as a user runs it: the built `portshift` binary, one subcommand and
//! flag after the other, each checked by its effect (files written or not, the signed
//! webhook a receiver gets, what `jobs` and `schedule list` print, exit codes of
//! `verify`, what `purge` removes) and bad input by its message and exit code. One
//! simulator and one data folder serve several commands per test to keep this file
//! short to run. `tests/cli-inventory.md` names, for every flag, the test covering it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// `portshift ARGS` with a clean environment (only PATH, for `nats-server`, and `env`):
/// nothing of the developer's or CI's `PORTSHIFT_*` variables leaks in.
fn portshift(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portshift"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(nats_server_bin())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run portshift")
}

/// `PORTSHIFT_NATS_SERVER_BIN`, when the test environment names the server binary.
fn nats_server_bin() -> Option<(&'static str, String)> {
    std::env::var("PORTSHIFT_NATS_SERVER_BIN")
        .ok()
        .map(|b| ("PORTSHIFT_NATS_SERVER_BIN", b))
}

/// A long-running `portshift ARGS` (serve, scheduler, purge loop), output to `log`.
fn spawn(args: &[&str], log: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_portshift"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(nats_server_bin())
        .stdin(Stdio::null())
        .stdout(log_file(log))
        .stderr(log_file(log))
        .spawn()
        .expect("start portshift")
}

/// `portshift verify --public-key PK` of the export in `root` passes and says the
/// signature is good.
fn assert_signature_ok(root: &Path, pk: &str) {
    let checked = ok(
        portshift(
            &[
                "verify",
                &format!("file://{}", root.display()),
                "--public-key",
                pk,
            ],
            &[],
        ),
        "verify --public-key",
    );
    assert!(checked.contains("signature OK"), "{checked}");
}

/// The budget and purge flags `scheduler` and `serve` share: a fast purge loop, a job
/// past one day's retention, audit rows kept 30 days.
const LOOP_FLAGS: [&str; 12] = [
    "--chorus-rate",
    "1000",
    "--chorus-burst",
    "100",
    "--retention-days",
    "1",
    "--audit-retention-days",
    "30",
    "--purge-interval-secs",
    "1",
    "--purge-batch",
    "5",
];

/// The tuning flags `export`, `resume` and `replay --run` are run with: two fetches at a
/// time, small parts one at a time, files up to 16 MiB in one streamed request, a short
/// ack wait and a Chorus budget the simulator never throttles. `worker` takes the first
/// ten (it has no Chorus budget of its own to set here).
const TUNING_FLAGS: [&str; 14] = [
    "--concurrency",
    "2",
    "--part-size-mib",
    "5",
    "--parts-in-flight",
    "1",
    "--single-request-max-mib",
    "16",
    "--ack-wait-secs",
    "10",
    "--chorus-rate",
    "1000",
    "--chorus-burst",
    "100",
];

/// `export --chorus-url URL --from FROM --to TO --dest DEST`: the start every export of
/// these tests shares; the caller appends what the case is about.
fn export_args<'a>(url: &'a str, from: &'a str, to: &'a str, dest: &'a str) -> Vec<&'a str> {
    vec![
        "export",
        "--chorus-url",
        url,
        "--from",
        from,
        "--to",
        to,
        "--dest",
        dest,
    ]
}

/// A job of no organisation whose last change is three days old, in the store of
/// `data`: what a purge with `--retention-days 1` (or 2) must remove.
async fn aged_job(data: &Path) -> String {
    std::fs::create_dir_all(data).unwrap();
    let store = pipeline::store::JobStore::open_sqlite_in(data)
        .await
        .unwrap();
    let job = pipeline::JobId::new();
    let spec = pipeline::JobSpec {
        chorus_url: "http://127.0.0.1:9/".into(),
        from: "2024-01-01T00:00:00Z".parse().unwrap(),
        to: "2024-01-31T23:59:59Z".parse().unwrap(),
        kinds: Default::default(),
        destination: "file:///tmp/portshift-aged-job".into(),
        webhook_url: None,
        schedule: None,
        options: Default::default(),
        trust: pipeline::Trust::Operator,
    };
    store
        .create_job(&job, "local", "tester", &spec)
        .await
        .unwrap();
    store.close().await;
    age_job(data, job.as_str(), 3).await;
    job.to_string()
}

/// Moves a job's last change and its worker's last heartbeat `days` into the past.
async fn age_job(data: &Path, job: &str, days: i64) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}/portshift.sqlite3", data.display()))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE jobs SET updated_ms = updated_ms - $1 * 86400000, \
         heartbeat_ms = heartbeat_ms - $1 * 86400000 WHERE id = $2",
    )
    .bind(days)
    .bind(job)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

/// Waits until `portshift jobs` on `data` no longer lists `job` (a purge loop removed it).
async fn wait_purged(data: &Path, job: &str, what: &str, log: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let listed = ok(
            portshift(&["jobs", "--data-dir", data.to_str().unwrap()], &[]),
            "jobs",
        );
        if !listed.contains(job) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the purge loop did not remove the 3-day-old job in 60 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A key pair made by `portshift signing-key generate`.
fn key_pair(dir: &Path) -> (String, String) {
    std::fs::create_dir_all(dir).unwrap();
    let (sk, pk) = (dir.join("signing.key"), dir.join("signing.pub"));
    let (sk, pk) = (sk.to_str().unwrap(), pk.to_str().unwrap());
    ok(
        portshift(
            &[
                "signing-key",
                "generate",
                "--secret-key",
                sk,
                "--public-key",
                pk,
            ],
            &[],
        ),
        "signing-key generate",
    );
    (sk.to_string(), pk.to_string())
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Standard output of a command that must succeed.
fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed:\n{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Standard error of a command that must fail with a clear message (not a panic).
fn refused(out: Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} succeeded:\n{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !err.contains("panicked"),
        "{what} panicked instead of saying what is wrong:\n{err}"
    );
    assert!(err.contains("error"), "{what}: no error message:\n{err}");
    // Each part of the message once: an error chain that quotes its cause and then
    // prints it again reads as noise.
    for line in err.lines().filter(|l| l.starts_with("error: ")) {
        for part in line.split(": ").filter(|p| p.len() >= 16) {
            assert_eq!(
                line.matches(part).count(),
                1,
                "{what}: the message says {part:?} twice:\n{line}"
            );
        }
    }
    err
}

/// HMAC-SHA256 written out from RFC 2104 (with `sha2` only), so the check below does
/// not reuse portshift's own signing code: what a receiver in another language does.
fn hmac_sha256(key: &[u8], message: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    hex::encode(
        Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize(),
    )
}

/// Files under `root` by kind: (media, transcripts, metadata), and the rest.
fn files_by_kind(root: &Path) -> (usize, usize, usize, Vec<String>) {
    let (mut media, mut transcripts, mut metadata, mut other) = (0, 0, 0, Vec::new());
    for f in all_files_of(root) {
        if f.ends_with(".transcript.json") {
            transcripts += 1;
        } else if f.ends_with(".metadata.json") {
            metadata += 1;
        } else if f.ends_with(".mp3") || f.ends_with(".mp4") || f.ends_with(".bin") {
            media += 1;
        } else {
            other.push(f);
        }
    }
    (media, transcripts, metadata, other)
}

/// The job id at the start of `Job <id>: …` in an export's output.
fn job_id_of(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Job "))
        .and_then(|l| l.split(':').next())
        .unwrap_or_else(|| panic!("no job id in {stdout}"))
        .to_string()
}

const SECRET: &str = "cli-e2e-webhook-secret";

/// `export` with `--include`, `--webhook-url`, `--verify-after` and the tuning flags;
/// then `jobs` (with `--limit`), `verify` (pass, `--manifest`, tampered, missing),
/// `backup`/`restore` into a second folder and `purge` there, all on one data folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_include_webhook_jobs_verify_backup_restore_purge() {
    let recordings = 6;
    let h = Harness::start(Harness::sim_config(recordings, 1501)).await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("state");
    let data_s = data.to_str().unwrap();
    let root = tmp.path().join("out");
    let dest = format!("file://{}", root.display());
    let (hook, seen) = webhook().await;
    let env = [
        ("CHORUS_API_TOKEN", TOKEN),
        ("PORTSHIFT_WEBHOOK_SECRET", SECRET),
    ];

    // --include transcript,metadata: no media file is written, the other two kinds are.
    let out = ok(
        portshift(
            &[
                &export_args(h.sim.api_url.as_str(), "2024-01-01", "2024-12-31", &dest)[..],
                &[
                    "--include",
                    "transcript,metadata",
                    "--webhook-url",
                    &hook,
                    "--verify-after",
                ],
                &TUNING_FLAGS,
                &["--data-dir", data_s],
            ]
            .concat(),
            &env,
        ),
        "export --include transcript,metadata",
    );
    let job1 = job_id_of(&out);
    assert!(
        out.contains(&format!("{recordings} recordings exported")),
        "{out}"
    );
    let (media, transcripts, metadata, other) = files_by_kind(&root);
    assert_eq!(media, 0, "--include without media wrote media: {other:?}");
    assert_eq!(transcripts, recordings);
    assert_eq!(metadata, recordings);
    assert!(
        other.contains(&"portshift-manifest.txt".to_string()),
        "{other:?}"
    );
    assert_eq!(sha256sum_check(&root), 2 * recordings);

    // --webhook-url: one POST whose signature verifies with the documented scheme,
    // HMAC-SHA256 over "<Portshift-Timestamp>.<body>".
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "webhook requests: {requests:?}");
    let (headers, body) = &requests[0];
    let ts = headers["portshift-timestamp"].to_str().unwrap();
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(body);
    assert_eq!(
        headers["portshift-signature"].to_str().unwrap(),
        format!("sha256={}", hmac_sha256(SECRET.as_bytes(), &signed)),
        "the webhook's signature does not verify"
    );
    assert_ne!(
        headers["portshift-signature"].to_str().unwrap(),
        format!("sha256={}", hmac_sha256(b"another secret", &signed)),
        "negative control: another key must not verify"
    );
    let summary: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(summary["job_id"], job1.as_str());
    assert_eq!(summary["status"], "finished");
    assert_eq!(summary["recordings_exported"], recordings as u64);

    // A second export (media only, as a BagIt bag, no webhook) so `jobs --limit` has a choice.
    let root2 = tmp.path().join("out2");
    let dest2 = format!("file://{}", root2.display());
    let out = ok(
        portshift(
            &[
                &export_args(
                    h.sim.api_url.as_str(),
                    "2024-01-01T00:00:00Z",
                    "2024-12-31T23:59:59Z",
                    &dest2,
                )[..],
                &[
                    "--include",
                    "media",
                    "--layout",
                    "bagit",
                    "--chorus-rate",
                    "1000",
                    "--data-dir",
                    data_s,
                ],
            ]
            .concat(),
            &env,
        ),
        "export --include media --layout bagit",
    );
    let job2 = job_id_of(&out);
    let (media, transcripts, metadata, _) = files_by_kind(&root2.join("data"));
    assert_eq!((media, transcripts, metadata), (recordings, 0, 0));
    assert!(root2.join("bagit.txt").is_file());

    // jobs: newest first, with status, counts and destination; --limit 1 only the newest.
    let listed = ok(portshift(&["jobs", "--data-dir", data_s], &[]), "jobs");
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(lines[0].starts_with(&job2), "newest first: {listed}");
    assert!(lines[1].starts_with(&job1), "{listed}");
    assert!(lines[1].contains("finished"), "{listed}");
    assert!(
        lines[1].contains(&format!("{recordings} exported")),
        "{listed}"
    );
    assert!(lines[1].contains(root.to_str().unwrap()), "{listed}");
    let limited = ok(
        portshift(&["jobs", "--limit", "1", "--data-dir", data_s], &[]),
        "jobs --limit 1",
    );
    assert_eq!(limited.lines().count(), 1, "{limited}");
    assert!(limited.starts_with(&job2), "{limited}");

    // verify: passes on the untouched export (default manifest and --manifest), fails
    // with exit 1 naming the file when one is changed, and names a removed one MISSING.
    let passed = ok(
        portshift(&["verify", &dest, "--concurrency", "2"], &[]),
        "verify",
    );
    assert!(passed.contains("all match the manifest"), "{passed}");
    ok(
        portshift(
            &["verify", &dest, "--manifest", "portshift-manifest.txt"],
            &[],
        ),
        "verify --manifest",
    );
    let missing_manifest = refused(
        portshift(
            &["verify", &dest, "--manifest", "portshift-manifest-nope.txt"],
            &[],
        ),
        "verify --manifest of a manifest that is not there",
    );
    assert!(
        missing_manifest.contains("portshift-manifest-nope.txt"),
        "{missing_manifest}"
    );
    let manifest = std::fs::read_to_string(root.join("portshift-manifest.txt")).unwrap();
    let mut names = manifest.lines().map(|l| l.split_once("  ").unwrap().1);
    let (changed, removed) = (names.next().unwrap(), names.next().unwrap());
    std::fs::write(root.join(changed), b"{\"changed\": true}").unwrap();
    std::fs::remove_file(root.join(removed)).unwrap();
    let failed = portshift(&["verify", &dest], &[]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let failed = String::from_utf8_lossy(&failed.stdout).to_string();
    assert!(
        failed.contains(&format!("{changed}: FAILED")),
        "verify does not name the changed file: {failed}"
    );
    assert!(
        failed.contains(&format!("{removed}: MISSING")),
        "verify does not name the removed file: {failed}"
    );

    // backup, then restore into an empty second folder: the same jobs are there.
    let backup_file = tmp.path().join("backup.sqlite3");
    ok(
        portshift(
            &[
                "backup",
                "--to",
                backup_file.to_str().unwrap(),
                "--data-dir",
                data_s,
            ],
            &[],
        ),
        "backup",
    );
    let data2 = tmp.path().join("restored");
    let data2_s = data2.to_str().unwrap();
    let restore = || {
        portshift(
            &[
                "restore",
                "--from",
                backup_file.to_str().unwrap(),
                "--data-dir",
                data2_s,
            ],
            &[],
        )
    };
    ok(restore(), "restore");
    let restored = ok(portshift(&["jobs", "--data-dir", data2_s], &[]), "jobs");
    assert_eq!(restored, listed, "the restored store lists other jobs");
    let again = refused(restore(), "restore into a store that is not empty");
    assert!(again.contains("empty"), "{again}");

    // purge --once: a job older than --retention-days goes, a recent one stays.
    age_job(&data2, &job1, 3).await;
    let purged = ok(
        portshift(
            &[
                "purge",
                "--once",
                "--retention-days",
                "2",
                "--audit-retention-days",
                "30",
                "--purge-batch",
                "1",
                "--data-dir",
                data2_s,
            ],
            &[],
        ),
        "purge --once",
    );
    let counts: BTreeMap<&str, u64> = purged
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(char::is_whitespace)?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect();
    assert_eq!(counts.get("jobs"), Some(&1), "{purged}");
    let left = ok(portshift(&["jobs", "--data-dir", data2_s], &[]), "jobs");
    assert_eq!(left.lines().count(), 1, "{left}");
    assert!(left.starts_with(&job2), "the recent job was purged: {left}");
}

/// `portshift chorus-sim` with its flags, exported by `portshift export`: exactly the
/// recordings an in-process simulator with the same settings serves, byte for byte,
/// although the binary one injects 429s, 5xx, cut bodies and a rate limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chorus_sim_flags_shape_what_an_export_gets() {
    let (recordings, seed) = (9usize, 1502u64);
    let mut config = stages::chorus::SimConfig::demo(recordings, seed);
    config.sizes.min = 20_000;
    config.sizes.max = 60_000;
    config.sizes.large_every = 4;
    config.sizes.large_size = 100_000;
    config.private_every = 5;
    config.deleted_every = 7;
    let reference = start_sim(config).await;
    let expected = expected_media(&reference);
    assert!(expected.len() < recordings, "the knobs removed none");

    let (api, media) = (free_port(), free_port());
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut sim = Command::new(env!("CARGO_BIN_EXE_portshift"))
        .args(["chorus-sim", "--recordings", "9", "--seed", "1502"])
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .args(["--media-listen", &format!("127.0.0.1:{media}")])
        .args(["--token", "sim-flag-token", "--page-size", "2"])
        .args(["--min-size", "20000", "--max-size", "60000"])
        .args(["--large-every", "4", "--large-size", "100000"])
        .args(["--private-every", "5", "--deleted-every", "7"])
        .args([
            "--fault-429",
            "0.1",
            "--burst-429",
            "2",
            "--retry-after",
            "0",
        ])
        .args(["--fault-5xx", "0.05", "--fault-truncate", "0.05"])
        .args(["--slow-ms", "5", "--limit-per-sec", "200"])
        .env_clear()
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let api_url = format!("http://127.0.0.1:{api}");
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if client.get(&api_url).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "chorus-sim did not listen on --listen");

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("out");
    let data = tmp.path().join("state");
    // --token: the simulator accepts only its own token.
    let never = format!("file://{}", tmp.path().join("never").display());
    let wrong = portshift(
        &[
            &export_args(&api_url, "2024-01-01", "2024-12-31", &never)[..],
            &["--data-dir", data.to_str().unwrap()],
        ]
        .concat(),
        &[("CHORUS_API_TOKEN", TOKEN)],
    );
    assert!(!wrong.status.success(), "{}", text(&wrong));
    let dest = format!("file://{}", root.display());
    let out = portshift(
        &[
            &export_args(&api_url, "2024-01-01", "2024-12-31", &dest)[..],
            &[
                "--include",
                "media",
                "--chorus-rate",
                "100",
                "--data-dir",
                data.to_str().unwrap(),
            ],
        ]
        .concat(),
        &[("CHORUS_API_TOKEN", "sim-flag-token")],
    );
    stop_gracefully(&mut sim);
    let out = ok(out, "export from the flagged simulator");
    let mut got = BTreeMap::new();
    for f in all_files_of(&root) {
        if f.ends_with(".mp3") || f.ends_with(".mp4") || f.ends_with(".bin") {
            got.insert(
                f.clone(),
                sha256_hex(&std::fs::read(root.join(&f)).unwrap()),
            );
        }
    }
    assert_eq!(got, expected, "{out}");
    let sizes: Vec<u64> = got
        .keys()
        .map(|f| std::fs::metadata(root.join(f)).unwrap().len())
        .collect();
    assert!(sizes.contains(&100_000), "no --large-size file: {sizes:?}");
    assert!(
        sizes
            .iter()
            .all(|s| *s == 100_000 || (20_000..=60_000).contains(s)),
        "sizes outside --min-size/--max-size: {sizes:?}"
    );
    reference.shutdown().await;
}

/// The `schedule` subcommands on one data folder: `create` stores what its flags say,
/// `list` shows it, `pause`/`resume` flip it, `runs` lists none yet, `delete` removes it;
/// bad cron, time zone and unknown ids are refused with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_subcommands_create_list_pause_resume_runs_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("state");
    let data_s = data.to_str().unwrap();
    let dest = format!("file://{}", tmp.path().join("out").display());
    let created = ok(
        portshift(
            &[
                "schedule",
                "create",
                "--name",
                "nightly-cli",
                "--cron",
                "30 2 * * *",
                "--tz",
                "Europe/Berlin",
                "--dest",
                &dest,
                "--chorus-url",
                "http://127.0.0.1:9/",
                "--include",
                "metadata,transcript",
                "--start",
                "2024-03-01",
                "--chorus-token-ref",
                "env:MY_CHORUS_TOKEN",
                "--s3-ref",
                "aws:default",
                "--webhook-url",
                "http://127.0.0.1:9/hook",
                "--webhook-secret-ref",
                "env:MY_HOOK_SECRET",
                "--azure-ref",
                "env:MY_SAS",
                "--gcs-ref",
                "file:/etc/portshift/gcs.json",
                "--org",
                "local",
                "--lookback-days",
                "3",
                "--verify-after",
                "--layout",
                "bagit",
                "--data-dir",
                data_s,
            ],
            &[],
        ),
        "schedule create",
    );
    let id = created
        .strip_prefix("schedule ")
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no id in {created}"))
        .to_string();
    {
        let store = pipeline::store::JobStore::open_sqlite_in(&data)
            .await
            .unwrap();
        let s = store.schedule(&id).await.unwrap();
        assert_eq!(
            (s.name.as_str(), s.cron.as_str(), s.timezone.as_str()),
            ("nightly-cli", "30 2 * * *", "Europe/Berlin")
        );
        assert_eq!(s.organisation, "local");
        let t = &s.template;
        assert_eq!(t.chorus_url, "http://127.0.0.1:9/");
        assert!(!t.kinds.media && t.kinds.transcript && t.kinds.metadata);
        assert_eq!(t.webhook_url.as_deref(), Some("http://127.0.0.1:9/hook"));
        assert_eq!(t.lookback_s, 3 * 24 * 3600);
        assert!(t.options.verify_after);
        assert_eq!(t.options.layout, pipeline::Layout::Bagit);
        type Dest = pipeline::destination_url::DestinationUrl;
        assert_eq!(
            t.destination.parse::<Dest>().unwrap(),
            dest.parse::<Dest>().unwrap()
        );
        assert_eq!(s.refs.chorus_token, "env:MY_CHORUS_TOKEN");
        assert_eq!(s.refs.s3.as_deref(), Some("aws:default"));
        assert_eq!(s.refs.webhook_secret.as_deref(), Some("env:MY_HOOK_SECRET"));
        assert_eq!(s.refs.azure.as_deref(), Some("env:MY_SAS"));
        assert_eq!(s.refs.gcs.as_deref(), Some("file:/etc/portshift/gcs.json"));
        assert_eq!(
            s.start_s,
            chrono::DateTime::parse_from_rfc3339("2024-03-01T00:00:00Z")
                .unwrap()
                .timestamp()
        );
        assert!(!s.paused);
    }

    let list = |what: &str| {
        ok(
            portshift(&["schedule", "list", "--data-dir", data_s], &[]),
            what,
        )
    };
    let listed = list("schedule list");
    assert!(listed.starts_with(&id), "{listed}");
    assert!(listed.contains("nightly-cli"), "{listed}");
    assert!(listed.contains("Europe/Berlin"), "{listed}");
    assert!(listed.contains("active"), "{listed}");

    let paused = ok(
        portshift(&["schedule", "pause", &id, "--data-dir", data_s], &[]),
        "schedule pause",
    );
    assert!(paused.contains("paused"), "pause says nothing: {paused:?}");
    assert!(list("schedule list").contains("paused"));
    let resumed = ok(
        portshift(&["schedule", "resume", &id, "--data-dir", data_s], &[]),
        "schedule resume",
    );
    assert!(
        resumed.contains("resumed"),
        "resume says nothing: {resumed:?}"
    );
    assert!(list("schedule list").contains("active"));
    let runs = ok(
        portshift(&["schedule", "runs", &id, "--data-dir", data_s], &[]),
        "schedule runs",
    );
    assert_eq!(runs, "", "a schedule that never ran has no runs");

    // Refusals: each names what is wrong, and nothing is created.
    let base = |cron: &str, tz: &str| {
        portshift(
            &[
                "schedule",
                "create",
                "--name",
                "bad",
                "--cron",
                cron,
                "--tz",
                tz,
                "--dest",
                &dest,
                "--start",
                "2024-03-01",
                "--chorus-token-ref",
                "env:MY_CHORUS_TOKEN",
                "--data-dir",
                data_s,
            ],
            &[],
        )
    };
    let err = refused(
        base("every night", "UTC"),
        "schedule create --cron 'every night'",
    );
    assert!(err.contains("every night"), "{err}");
    let err = refused(
        base("0 2 * * *", "Mars/Olympus"),
        "schedule create --tz Mars/Olympus",
    );
    assert!(err.contains("Mars/Olympus"), "{err}");
    let err = refused(
        portshift(
            &[
                "schedule",
                "create",
                "--name",
                "hook",
                "--cron",
                "0 2 * * *",
                "--dest",
                &dest,
                "--start",
                "2024-03-01",
                "--chorus-token-ref",
                "env:T",
                "--webhook-url",
                "http://127.0.0.1:9/hook",
                "--data-dir",
                data_s,
            ],
            &[],
        ),
        "schedule create --webhook-url without --webhook-secret-ref",
    );
    assert!(err.contains("--webhook-secret-ref"), "{err}");
    assert_eq!(list("schedule list").lines().count(), 1);

    let deleted = ok(
        portshift(&["schedule", "delete", &id, "--data-dir", data_s], &[]),
        "schedule delete",
    );
    assert!(
        deleted.contains("deleted"),
        "delete says nothing: {deleted:?}"
    );
    assert_eq!(list("schedule list"), "");
    for cmd in ["delete", "pause", "resume", "runs"] {
        let err = refused(
            portshift(&["schedule", cmd, &id, "--data-dir", data_s], &[]),
            &format!("schedule {cmd} of a deleted schedule"),
        );
        assert!(err.contains(&id), "schedule {cmd}: {err}");
    }
}

/// `replay` lists a job's dead letters (all, or one `--stage`), replays only the
/// `--seq` given, and says so; an unknown stage is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_lists_filters_and_replays_one_dead_letter() {
    let h = Harness::start(Harness::sim_config(3, 1503)).await;
    let root = h.tmp.path().join("out");
    h.sim.set_faults(stages::chorus::Faults {
        rate_truncate: 1.0,
        ..Default::default()
    });
    let job = h.start_job_into(&root).await;
    let mut options = fast_options();
    options.runner.max_deliveries = 1;
    let (status, _) = h.run_worker(&job, options, Duration::from_secs(120)).await;
    assert_eq!(status, pipeline::JobStatus::FinishedWithFailures);
    h.sim.set_faults(Default::default());

    let nats = h.nats.as_ref().unwrap().url();
    let db = h.database_url();
    let data = h.tmp.path().join("cli");
    // Where `replay` and `resume` find the job: the harness's NATS and store.
    let store_flags = [
        "--nats-url",
        nats.as_str(),
        "--database-url",
        db.as_str(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let replay = |extra: &[&str]| {
        let mut args = vec!["replay", "--job", job.as_str()];
        args.extend_from_slice(&store_flags);
        args.extend_from_slice(extra);
        portshift(&args, &[("CHORUS_API_TOKEN", TOKEN)])
    };
    let listed = ok(replay(&[]), "replay (list)");
    let letters: Vec<(u64, String)> = listed
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.to_string()))
        })
        .collect();
    assert_eq!(letters.len(), 3, "one dead letter per recording: {listed}");
    assert!(letters.iter().all(|(_, s)| s == "fetch"), "{listed}");
    assert!(listed.contains("replay them with"), "{listed}");
    let fetch_only = ok(replay(&["--stage", "fetch"]), "replay --stage fetch");
    assert_eq!(fetch_only, listed);
    let none = ok(replay(&["--stage", "list"]), "replay --stage list");
    assert!(none.contains("no dead letters"), "{none}");
    let err = refused(replay(&["--stage", "upload"]), "replay --stage upload");
    assert!(err.contains("unknown stage"), "{err}");
    let err = refused(
        replay(&["--all", "--seq", "1"]),
        "replay --all --seq together",
    );
    assert!(err.contains("--seq"), "{err}");

    let seq = letters[0].0.to_string();
    let replayed = ok(replay(&["--seq", &seq]), "replay --seq");
    assert!(replayed.contains(&format!("replayed {seq} ")), "{replayed}");
    assert!(replayed.contains("portshift resume"), "{replayed}");
    let after = ok(replay(&[]), "replay (list again)");
    let left: Vec<u64> = after
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let want: Vec<u64> = letters[1..].iter().map(|(s, _)| *s).collect();
    assert_eq!(left, want, "only --seq {seq} left the DLQ: {after}");

    // resume (with the tuning flags and a signing key) runs the one replayed message:
    // its recording is exported, the two still dead make it fail with advice.
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = key_pair(tmp.path());
    let tuning = [&["--signing-key", sk.as_str()][..], &TUNING_FLAGS].concat();
    let mut args = vec!["resume", job.as_str()];
    args.extend_from_slice(&store_flags);
    args.extend_from_slice(&tuning);
    let resumed = portshift(&args, &[("CHORUS_API_TOKEN", TOKEN)]);
    assert_eq!(resumed.status.code(), Some(1), "{}", text(&resumed));
    assert!(
        String::from_utf8_lossy(&resumed.stderr).contains("portshift replay --job"),
        "{}",
        text(&resumed)
    );
    let media_files = || {
        all_files_of(&root)
            .into_iter()
            .filter(|f| f.ends_with(".mp3") || f.ends_with(".mp4"))
            .count()
    };
    assert_eq!(media_files(), 1, "resume exported the replayed recording");

    // replay --all --run (same flags): the other two, and a signed manifest of all three.
    let mut args = vec!["--all", "--run"];
    args.extend_from_slice(&tuning);
    let out = ok(replay(&args), "replay --all --run");
    assert!(out.contains("3 recordings exported"), "{out}");
    assert_eq!(media_files(), 3);
    assert!(root.join("portshift-manifest.txt.minisig").is_file());
    assert_signature_ok(&root, &pk);
}

/// `portshift worker` with its tuning flags finishes a job it is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_process_with_tuning_flags_finishes_a_job() {
    let h = Harness::start(Harness::sim_config(4, 1505)).await;
    let root = h.tmp.path().join("out");
    let job = h.start_job_into(&root).await;
    let db = h.database_url();
    let log = h.tmp.path().join("worker.log");
    let (sk, pk) = key_pair(&h.tmp.path().join("keys"));
    let mut worker = spawn_worker(
        &h,
        &job,
        &db,
        &[
            &["--signing-key", &sk][..],
            &TUNING_FLAGS[..10],
            &["--aws-endpoint-url", "http://127.0.0.1:9"],
        ]
        .concat(),
        &log,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = worker.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        h.store.job(&job).await.unwrap().status,
        pipeline::JobStatus::Finished
    );
    assert_eq!(sha256sum_check(&root), 4 * 3);
    // Its standard input had no signing key, so --signing-key signed the manifest.
    assert_signature_ok(&root, &pk);
}

/// `portshift scheduler` with its flags: a due schedule runs, its run manifest is
/// signed with --signing-key, and the purge loop (--purge-interval-secs,
/// --retention-days) removes a job past retention; SIGTERM stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_runs_signed_and_purges_with_its_flags() {
    let sim = stages::chorus::sim::start(
        Harness::sim_config(3, 1506),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("state");
    let data_s = data.to_str().unwrap();
    let aged = aged_job(&data).await;
    let root = tmp.path().join("out");
    let (sk, pk) = key_pair(tmp.path());
    let token = tmp.path().join("chorus-token");
    std::fs::write(&token, TOKEN).unwrap();
    let created = ok(
        portshift(
            &[
                "schedule",
                "create",
                "--name",
                "often",
                "--cron",
                "*/2 * * * * *",
                "--start",
                "2024-01-01",
                "--dest",
                &format!("file://{}", root.display()),
                "--chorus-url",
                sim.api_url.as_str(),
                "--chorus-token-ref",
                &format!("file:{}", token.display()),
                "--data-dir",
                data_s,
            ],
            &[],
        ),
        "schedule create",
    );
    let id = created.split_whitespace().nth(1).unwrap().to_string();
    let log = tmp.path().join("scheduler.log");
    let origin = sim.api_url.as_str().trim_end_matches('/').to_string();
    let mut scheduler = spawn(
        &[
            &[
                "scheduler",
                "--tick-secs",
                "1",
                "--no-supervise",
                "--max-workers-per-org",
                "1",
                "--aws-sts-region",
                "eu-west-1",
                "--signing-key",
                &sk,
                "--allow-origin",
                &origin,
                "--allow-file-root",
                tmp.path().to_str().unwrap(),
            ][..],
            &LOOP_FLAGS[..],
            &["--data-dir", data_s][..],
        ]
        .concat(),
        &log,
    );
    wait_purged(&data, &aged, "scheduler", &log).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let runs = loop {
        let runs = ok(
            portshift(&["schedule", "runs", &id, "--data-dir", data_s], &[]),
            "schedule runs",
        );
        if runs
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("finished"))
        {
            break runs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no finished run in 120 s: {runs}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    ok(
        portshift(&["schedule", "pause", &id, "--data-dir", data_s], &[]),
        "schedule pause",
    );
    stop_gracefully(&mut scheduler);
    let status = scheduler.wait().unwrap();
    assert!(status.success(), "scheduler exit after SIGTERM: {status}");
    let job = runs
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("finished"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .to_string();
    let manifest = format!("portshift-manifest-{job}.txt");
    assert!(
        root.join(format!("{manifest}.minisig")).is_file(),
        "the run manifest is not signed: {:?}",
        all_files_of(&root)
    );
    let checked = ok(
        portshift(
            &[
                "verify",
                &format!("file://{}", root.display()),
                "--manifest",
                &manifest,
                "--public-key",
                &pk,
            ],
            &[],
        ),
        "verify a scheduled run",
    );
    assert!(checked.contains("signature OK"), "{checked}");
    sim.shutdown().await;
}

/// A CA and a server certificate for 127.0.0.1, as PEM files in `dir`: (ca, cert, key).
fn test_pki(dir: &Path) -> (Vec<u8>, String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "portshift cli test CA");
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    (
        ca.pem().into_bytes(),
        cert_path.to_str().unwrap().to_string(),
        key_path.to_str().unwrap().to_string(),
    )
}

/// `portshift serve` with every flag: HTTPS with HSTS from --tls-cert/--tls-key (plain
/// HTTP refused), the manifest key published, and the purge loop removing a job past
/// --retention-days every --purge-interval-secs; SIGTERM stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_with_every_flag_serves_https_and_purges() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("state");
    let aged = aged_job(&data).await;
    let (ca, cert, key) = test_pki(tmp.path());
    let (sk, pk) = key_pair(&tmp.path().join("current"));
    let (_, retired_pk) = key_pair(&tmp.path().join("retired"));
    let nats = pipeline::embedded_nats::EmbeddedNats::start(&tmp.path().join("nats"))
        .await
        .unwrap();
    let port = free_port();
    let log = tmp.path().join("serve.log");
    let smtp_ca = tmp.path().join("ca.pem");
    let mut serve = spawn(
        &[
            &[
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--trust-proxy",
                "--no-supervise",
                "--retired-signing-keys",
                &retired_pk,
                "--signing-key",
                &sk,
                "--allow-origin",
                "http://127.0.0.1:9",
                "--allow-file-root",
                tmp.path().to_str().unwrap(),
            ][..],
            &LOOP_FLAGS[..],
            &[
                "--max-workers-per-org",
                "2",
                "--smtp-url",
                "smtp://127.0.0.1:9?tls=none",
                "--mail-from",
                "portshift <no-reply@example.com>",
                "--public-url",
                "https://portshift.example.com",
                "--smtp-ca-file",
                smtp_ca.to_str().unwrap(),
                "--nats-url",
                &nats.url(),
                "--database-url",
                &format!("sqlite://{}/portshift.sqlite3", data.display()),
                "--data-dir",
                tmp.path().join("serve-data").to_str().unwrap(),
            ][..],
        ]
        .concat(),
        &log,
    );
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .no_proxy()
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/healthz");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let response = loop {
        match client.get(&url).send().await {
            Ok(r) => break r,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "serve did not answer HTTPS on --listen: {e}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(response.status().is_success(), "{}", response.status());
    assert!(
        response.headers().contains_key("strict-transport-security"),
        "no HSTS header over --tls-cert: {:?}",
        response.headers()
    );
    let plain = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(
        plain.map(|r| !r.status().is_success()).unwrap_or(true),
        "plain HTTP answered although --tls-cert is set"
    );
    // --signing-key and --retired-signing-keys: both public keys are published.
    let get = |path: &str| {
        let (client, url) = (client.clone(), format!("https://127.0.0.1:{port}{path}"));
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (code, current) = get("/.well-known/portshift-signing-key.pub").await;
    assert_eq!(code, 200);
    assert_eq!(current, std::fs::read_to_string(&pk).unwrap());
    let (code, index) = get("/.well-known/portshift-signing-keys").await;
    assert_eq!(code, 200);
    let retired_text = std::fs::read_to_string(&retired_pk).unwrap();
    let retired_id = index
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("retired"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no retired key in the index: {index}"))
        .to_string();
    let (code, published) = get(&format!(
        "/.well-known/portshift-signing-keys/{retired_id}.pub"
    ))
    .await;
    assert_eq!(code, 200);
    assert_eq!(published, retired_text);
    // --trust-proxy: the API's per-client rate limit counts the address the proxy put in
    // X-Forwarded-For, so when one address is limited another one still gets through.
    let api = |from: &'static str| {
        let (client, url) = (
            client.clone(),
            format!("https://127.0.0.1:{port}/api/v1/no-such-route"),
        );
        async move {
            client
                .get(url)
                .header("x-forwarded-for", from)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let mut sent = 0;
    while api("203.0.113.7").await != 429 {
        sent += 1;
        assert!(sent < 5000, "the API never rate-limited 203.0.113.7");
    }
    assert!(
        sent >= 10,
        "the API limited 203.0.113.7 after {sent} requests"
    );
    assert_ne!(
        api("198.51.100.9").await,
        429,
        "another X-Forwarded-For address was limited too: --trust-proxy had no effect"
    );
    wait_purged(&data, &aged, "serve", &log).await;
    stop_gracefully(&mut serve);
    let status = serve.wait().unwrap();
    assert!(status.success(), "serve exit after SIGTERM: {status}");
    nats.stop().await;
}

/// `serve --nats-url` whose NATS server went away still stops on SIGTERM (it used to
/// wait forever for a reconnection to flush to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_on_sigterm_after_its_nats_server_went_away() {
    let tmp = tempfile::tempdir().unwrap();
    let nats = pipeline::embedded_nats::EmbeddedNats::start(&tmp.path().join("nats"))
        .await
        .unwrap();
    let port = free_port();
    let log = tmp.path().join("serve.log");
    let mut serve = spawn(
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--nats-url",
            &nats.url(),
            "--data-dir",
            tmp.path().join("state").to_str().unwrap(),
        ],
        &log,
    );
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nats.stop().await;
    // SAFETY: a signal to a child process this test started and has not reaped.
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            stop_gracefully(&mut serve);
            panic!(
                "serve did not stop within 30 s of SIGTERM:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "serve exit after SIGTERM: {status}");
}

/// `portshift purge` without --once: purges every --purge-interval-secs until SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_loop_runs_every_interval_until_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("state");
    let aged = aged_job(&data).await;
    let log = tmp.path().join("purge.log");
    let nats = pipeline::embedded_nats::EmbeddedNats::start(&tmp.path().join("nats"))
        .await
        .unwrap();
    let mut purge = spawn(
        &[
            "purge",
            "--purge-interval-secs",
            "1",
            "--retention-days",
            "1",
            "--nats-url",
            &nats.url(),
            "--database-url",
            &format!("sqlite://{}/portshift.sqlite3", data.display()),
            "--data-dir",
            tmp.path().join("purge-data").to_str().unwrap(),
        ],
        &log,
    );
    wait_purged(&data, &aged, "purge", &log).await;
    stop_gracefully(&mut purge);
    let status = purge.wait().unwrap();
    assert!(status.success(), "purge exit after SIGTERM: {status}");
    nats.stop().await;
}

/// The commands that only read or write the job store (`jobs`, `backup`, `restore`,
/// the `schedule` subcommands) accept the shared --nats-url but never need NATS: they
/// work with an address where no server listens, on a store given by --database-url.
#[test]
fn store_commands_take_database_url_and_do_not_need_nats() {
    let tmp = tempfile::tempdir().unwrap();
    let db = |name: &str| format!("sqlite://{}/{name}.sqlite3", tmp.path().display());
    let (a, b) = (db("a"), db("b"));
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let run = |args: &[&str], db: &str, what: &str| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--nats-url", nowhere.as_str(), "--database-url", db]);
        ok(portshift(&all, &[]), what)
    };
    let created = run(
        &[
            "schedule",
            "create",
            "--name",
            "store-only",
            "--cron",
            "0 3 * * *",
            "--dest",
            "file:///tmp/portshift-store-only",
            "--start",
            "2024-01-01",
            "--chorus-token-ref",
            "env:T",
        ],
        &a,
        "schedule create",
    );
    let id = created.split_whitespace().nth(1).unwrap().to_string();
    assert!(run(&["schedule", "list"], &a, "schedule list").contains("store-only"));
    run(&["schedule", "runs", &id], &a, "schedule runs");
    run(&["schedule", "pause", &id], &a, "schedule pause");
    run(&["schedule", "resume", &id], &a, "schedule resume");
    run(&["jobs"], &a, "jobs");
    let file = tmp.path().join("a.backup");
    run(&["backup", "--to", file.to_str().unwrap()], &a, "backup");
    run(
        &["restore", "--from", file.to_str().unwrap()],
        &b,
        "restore",
    );
    assert!(run(&["schedule", "list"], &b, "schedule list").contains("store-only"));
    run(&["schedule", "delete", &id], &b, "schedule delete");
    assert_eq!(run(&["schedule", "list"], &b, "schedule list"), "");
    // The first store still has it: --database-url chose the store each time.
    assert!(run(&["schedule", "list"], &a, "schedule list").contains("store-only"));
}

/// `backup --pg-dump` and `restore --pg-restore` run the programs given (wrappers that
/// record their call, then run the real tools), and a missing program is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_use_the_given_pg_programs() {
    let mut urls = Vec::new();
    for _ in 0..2 {
        urls.push(fresh_database("cli").await.to_string());
    }
    let (from_db, to_db) = (&urls[0], &urls[1]);
    // A job in the first store, so the restore has something to show.
    ok(
        portshift(
            &[
                "schedule",
                "create",
                "--name",
                "pg",
                "--cron",
                "0 2 * * *",
                "--dest",
                "file:///tmp/portshift-pg",
                "--start",
                "2024-01-01",
                "--chorus-token-ref",
                "env:T",
                "--database-url",
                from_db,
            ],
            &[],
        ),
        "schedule create on PostgreSQL",
    );
    let tmp = tempfile::tempdir().unwrap();
    let calls = tmp.path().join("calls");
    let wrapper = |tool: &str| {
        let real = which(tool);
        let path = tmp.path().join(format!("my-{tool}"));
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho {tool} >> '{}'\nexec '{}' \"$@\"\n",
                calls.display(),
                real
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (dump, restore) = (wrapper("pg_dump"), wrapper("pg_restore"));
    let file = tmp.path().join("store.dump");
    let file_s = file.to_str().unwrap();
    let err = refused(
        portshift(
            &[
                "backup",
                "--to",
                file_s,
                "--pg-dump",
                "/nonexistent/pg_dump",
                "--database-url",
                from_db,
            ],
            &[],
        ),
        "backup --pg-dump of a program that is not there",
    );
    assert!(err.contains("/nonexistent/pg_dump"), "{err}");
    ok(
        portshift(
            &[
                "backup",
                "--to",
                file_s,
                "--pg-dump",
                &dump,
                "--database-url",
                from_db,
            ],
            &[],
        ),
        "backup --pg-dump",
    );
    ok(
        portshift(
            &[
                "restore",
                "--from",
                file_s,
                "--pg-restore",
                &restore,
                "--database-url",
                to_db,
            ],
            &[],
        ),
        "restore --pg-restore",
    );
    let called = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(called.lines().any(|l| l == "pg_dump"), "{called:?}");
    assert!(called.lines().any(|l| l == "pg_restore"), "{called:?}");
    let listed = ok(
        portshift(&["schedule", "list", "--database-url", to_db], &[]),
        "schedule list on the restored store",
    );
    assert!(listed.contains(" pg "), "{listed}");
}

/// The full path of `tool` on PATH (or PORTSHIFT_PG_* as the test servers set them).
fn which(tool: &str) -> String {
    let var = format!("PORTSHIFT_{}", tool.to_ascii_uppercase());
    if let Ok(p) = std::env::var(&var) {
        return p;
    }
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .unwrap();
    let p = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!p.is_empty(), "{tool} is not on PATH");
    p
}

fn cat<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<&'a str> {
    [a, b].concat()
}

/// Bad flags and values: a clear message on standard error, a non-zero exit, no panic,
/// and nothing started (each fails before any server or folder is touched).
#[test]
fn bad_flags_and_values_are_refused_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("state");
    let dest = format!("file://{}", tmp.path().join("out").display());
    let export = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            "export",
            "--chorus-url",
            "http://127.0.0.1:9/",
            "--dest",
            dest.as_str(),
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        portshift(&args, env)
    };
    let token = [("CHORUS_API_TOKEN", "t")];
    let dates = ["--from", "2024-01-01", "--to", "2024-01-31"];
    let cases: Vec<(&str, Output, &str)> = vec![
        (
            "an unknown flag",
            export(&cat(&dates, &["--includes", "media"]), &token),
            "unexpected argument '--includes'",
        ),
        (
            "a missing required flag",
            export(&["--from", "2024-01-01"], &token),
            "--to <TO>",
        ),
        (
            "a date that is not one",
            export(&["--from", "2024-13-01", "--to", "2024-12-31"], &token),
            "is not a date",
        ),
        (
            "--from after --to",
            export(&["--from", "2024-02-01", "--to", "2024-01-01"], &token),
            "is after --to",
        ),
        (
            "an unknown --include kind",
            export(&cat(&dates, &["--include", "media,video"]), &token),
            "video",
        ),
        (
            "an unknown --layout",
            export(&cat(&dates, &["--layout", "zip"]), &token),
            "zip",
        ),
        (
            "--webhook-url without its secret",
            export(
                &cat(&dates, &["--webhook-url", "http://127.0.0.1:9/h"]),
                &token,
            ),
            "PORTSHIFT_WEBHOOK_SECRET",
        ),
        (
            "a --chorus-rate of zero",
            export(&cat(&dates, &["--chorus-rate", "0"]), &token),
            "--chorus-rate",
        ),
        (
            "--concurrency that is not a number",
            export(&cat(&dates, &["--concurrency", "many"]), &token),
            "many",
        ),
        ("no Chorus token", export(&dates, &[]), "CHORUS_API_TOKEN"),
        (
            "a --signing-key file that is not there",
            export(
                &cat(&dates, &["--signing-key", "/nonexistent/portshift.key"]),
                &token,
            ),
            "/nonexistent/portshift.key",
        ),
        (
            "an unknown destination scheme",
            portshift(
                &[&["export"][..], &dates, &["--dest", "ftp://host/x"]].concat(),
                &token,
            ),
            "ftp",
        ),
        (
            "verify of a folder that is not there",
            portshift(&["verify", "file:///nonexistent/portshift-export"], &[]),
            "portshift-manifest.txt",
        ),
        (
            "--retention-days 0",
            portshift(
                &[
                    "purge",
                    "--once",
                    "--retention-days",
                    "0",
                    "--data-dir",
                    data.to_str().unwrap(),
                ],
                &[],
            ),
            "--retention-days",
        ),
        (
            "a job id that is not one",
            portshift(
                &["resume", "not-a-job", "--data-dir", data.to_str().unwrap()],
                &token,
            ),
            "not-a-job",
        ),
        (
            "--part-size-mib below S3's minimum",
            portshift(
                &[
                    &["export"][..],
                    &dates,
                    &[
                        "--dest",
                        "s3://bucket/prefix?region=us-east-1&endpoint=http://127.0.0.1:9",
                        "--part-size-mib",
                        "4",
                        "--data-dir",
                        data.to_str().unwrap(),
                    ],
                ]
                .concat(),
                &token,
            ),
            "--part-size-mib 4",
        ),
        (
            "replay of a job that does not exist",
            portshift(
                &[
                    "replay",
                    "--job",
                    "0190f5b600007000800000000000abcd",
                    "--data-dir",
                    data.to_str().unwrap(),
                ],
                &[],
            ),
            "no job 0190f5b600007000800000000000abcd",
        ),
        (
            "resume of a job that does not exist",
            portshift(
                &[
                    "resume",
                    "0190f5b600007000800000000000abcd",
                    "--data-dir",
                    data.to_str().unwrap(),
                ],
                &token,
            ),
            "no job 0190f5b600007000800000000000abcd",
        ),
        (
            "restore of a backup that is not there",
            portshift(
                &[
                    "restore",
                    "--from",
                    "/nonexistent/portshift.sqlite3",
                    "--data-dir",
                    data.to_str().unwrap(),
                ],
                &[],
            ),
            "/nonexistent/portshift.sqlite3",
        ),
        (
            "an unknown subcommand",
            portshift(&["exprot"], &[]),
            "unrecognized subcommand 'exprot'",
        ),
        (
            "serve with --tls-cert but no --tls-key",
            portshift(&["serve", "--tls-cert", "/tmp/cert.pem"], &[]),
            "--tls-key",
        ),
        (
            "serve with --smtp-url but no --mail-from",
            portshift(&["serve", "--smtp-url", "smtp://127.0.0.1:25"], &[]),
            "--mail-from",
        ),
        (
            "signing-key public without a key",
            portshift(&["signing-key", "public"], &[]),
            "--signing-key",
        ),
    ];
    for (what, out, says) in cases {
        let err = refused(out, what);
        assert!(
            err.contains(says),
            "{what}: the message does not say {says:?}:\n{err}"
        );
    }
    assert!(
        !tmp.path().join("out").exists(),
        "a refused command wrote to its destination"
    );
    // No refused export left a job behind (the S3 part size is checked before the job
    // is created, not by a worker that then cannot run it).
    let jobs = ok(
        portshift(&["jobs", "--data-dir", data.to_str().unwrap()], &[]),
        "jobs",
    );
    assert_eq!(jobs, "", "a refused export created a job");
    // The commands that failed after starting the embedded NATS server stopped it.
    let left = processes_mentioning(tmp.path());
    assert!(left.is_empty(), "left running: {left:?}");
}

/// Processes whose command line mentions `dir` (an embedded nats-server's store).
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_str().unwrap();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                out.push(cmdline);
            }
        }
    }
    out
}

/// `signing-key generate` writes a pair and never overwrites it; `signing-key public`
/// prints the same public key from `--signing-key FILE` and from `env:NAME`.
#[test]
fn signing_key_generate_never_overwrites_and_public_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = (tmp.path().join("k.key"), tmp.path().join("k.pub"));
    let (sk_s, pk_s) = (sk.to_str().unwrap(), pk.to_str().unwrap());
    let generate = || {
        portshift(
            &[
                "signing-key",
                "generate",
                "--secret-key",
                sk_s,
                "--public-key",
                pk_s,
            ],
            &[],
        )
    };
    let out = ok(generate(), "signing-key generate");
    assert!(out.contains(sk_s) && out.contains(pk_s), "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sk).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (secret, public) = (std::fs::read(&sk).unwrap(), std::fs::read(&pk).unwrap());
    let err = refused(generate(), "signing-key generate over an existing key");
    assert!(err.contains(sk_s), "{err}");
    assert_eq!(
        std::fs::read(&sk).unwrap(),
        secret,
        "the secret key was overwritten"
    );
    assert_eq!(std::fs::read(&pk).unwrap(), public);

    let printed = ok(
        portshift(&["signing-key", "public", "--signing-key", sk_s], &[]),
        "signing-key public --signing-key FILE",
    );
    assert_eq!(printed.as_bytes(), public.as_slice());
    let key_text = String::from_utf8(secret).unwrap();
    let printed = ok(
        portshift(
            &["signing-key", "public", "--signing-key", "env:MY_KEY"],
            &[("MY_KEY", key_text.as_str())],
        ),
        "signing-key public --signing-key env:NAME",
    );
    assert_eq!(printed.as_bytes(), public.as_slice());
}
