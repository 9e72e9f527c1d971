//! Memory on the S3 upload path, measured on the built binary: `portshift export` of a
//! few large simulated files (the simulator generates the bytes, in this test process,
//! never stored) into SeaweedFS with several transfers at once. Its peak resident
//! memory must stay within what the README promises: 64 MiB for the process itself
//! plus part size × (parts in flight + 1) per transfer for files sent in parts, and far
//! less for files streamed in one request. Each case also checks which way S3 got the
//! files, from the checksum S3 stored.
//!
//! The peak is the kernel's own: `VmHWM` of /proc/<pid>/status, read while the export
//! runs, and the child's `ru_maxrss` from wait4 once it exits (the same counter, read at
//! the very end). Costs a few seconds per case: 8 files of 48 MiB.
//!
//! It failed at first (issue 13): 230 MiB against 192 MiB. heaptrack showed the cause:
//! the chunk that overflowed a part was appended whole, so the part's buffer grew by
//! doubling to twice the part size, with a copy. Parts are now cut exactly (the overflow
//! starts the next part); the same export peaks at about 174 MiB.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use stages::destination::Tuning;

const FILES: usize = 8;
const SIZE: u64 = 48 * 1024 * 1024;
const TRANSFERS: u64 = 4;
const PART_MIB: u64 = 8;
const IN_FLIGHT: u64 = 3;
/// What one streamed single request may hold: the chunks in transit, far below a part.
const STREAMED_MIB_PER_TRANSFER: u64 = 4;

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Waits for the child and returns its exit status and peak RSS (KiB) from wait4.
fn wait_with_maxrss(child: &std::process::Child) -> (i32, u64) {
    let mut status: libc::c_int = 0;
    // SAFETY: plain syscall on our own child; rusage is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(got, pid, "wait4 failed");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, usage.ru_maxrss as u64)
}

/// What one export of [`FILES`] files of [`SIZE`] into a fresh bucket left: the peak RSS
/// (MiB), the manifest's `files` list, and the S3 client and bucket to look at them.
struct Exported {
    peak_mib: u64,
    manifest_files: Vec<serde_json::Value>,
    s3: aws_sdk_s3::Client,
    bucket: String,
}

impl Exported {
    /// 384 MiB: do not leave them on the shared test server.
    async fn remove(self) {
        for key in list_keys(&self.s3, &self.bucket, "mem").await {
            let _ = self
                .s3
                .delete_object()
                .bucket(&self.bucket)
                .key(format!("mem/{key}"))
                .send()
                .await;
        }
        let _ = self.s3.delete_bucket().bucket(&self.bucket).send().await;
    }
}

/// Runs `portshift export` of the simulated files into SeaweedFS with the given
/// `--single-request-max-mib` and the part settings above, and measures its peak RSS.
// The child is reaped by wait4 in `wait_with_maxrss`, which clippy cannot see.
#[allow(clippy::zombie_processes)]
async fn export_measured(single_request_max_mib: u64) -> Exported {
    let mut config = Harness::sim_config(FILES, 77);
    config.sizes.min = SIZE;
    config.sizes.max = SIZE;
    let sim = start_sim(config).await;
    let s3 = s3_client().await;
    let bucket = fresh_bucket(&s3).await;
    let state = tempfile::tempdir().unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_portshift"))
        .args(["export", "--chorus-url", sim.api_url.as_str()])
        .args([
            "--from",
            "2024-01-01",
            "--to",
            "2024-12-31",
            "--include",
            "media",
        ])
        .args(["--dest", &s3_dest(&bucket, "mem")])
        .args(["--concurrency", &TRANSFERS.to_string()])
        .args(["--part-size-mib", &PART_MIB.to_string()])
        .args(["--parts-in-flight", &IN_FLIGHT.to_string()])
        .args([
            "--single-request-max-mib",
            &single_request_max_mib.to_string(),
        ])
        .args(TEST_BUDGET_ARGS)
        .arg("--data-dir")
        .arg(state.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CHORUS_API_TOKEN", TOKEN)
        .env(
            "AWS_ACCESS_KEY_ID",
            env_or_fail("PORTSHIFT_TEST_S3_ACCESS_KEY"),
        )
        .env(
            "AWS_SECRET_ACCESS_KEY",
            env_or_fail("PORTSHIFT_TEST_S3_SECRET_KEY"),
        )
        .env(
            "PORTSHIFT_NATS_SERVER_BIN",
            env_or_fail("PORTSHIFT_NATS_SERVER_BIN"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Poll VmHWM while it runs (the process's own high-water mark).
    let pid = child.id();
    let polled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (polled, done) = (polled.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = vm_hwm_kib(pid) {
                    polled.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // Drain the output on threads so a full pipe never blocks the export.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let (code, maxrss_kib) = tokio::task::spawn_blocking(move || wait_with_maxrss(&child))
        .await
        .unwrap();
    done.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    assert_eq!(code, 0, "export failed:\n{stdout}\n{stderr}");
    drop(sim);

    let manifest = s3
        .get_object()
        .bucket(&bucket)
        .key("mem/portshift-manifest.json")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let manifest_files = manifest["files"].as_array().unwrap().clone();
    assert_eq!(manifest_files.len(), FILES, "{manifest}");

    let peak_mib = polled.load(Ordering::Relaxed).max(maxrss_kib) / 1024;
    eprintln!(
        "--single-request-max-mib {single_request_max_mib}: peak RSS {peak_mib} MiB (VmHWM polled {} MiB, ru_maxrss {} MiB)",
        polled.load(Ordering::Relaxed) / 1024,
        maxrss_kib / 1024
    );
    Exported {
        peak_mib,
        manifest_files,
        s3,
        bucket,
    }
}

/// S3's own stored SHA-256 of an object (`HeadObject` with checksum mode), base64 as S3
/// gives it; a multipart object's ends in `-<parts>` (a checksum of the parts' checksums).
async fn stored_checksum(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Option<String> {
    s3.head_object()
        .bucket(bucket)
        .key(key)
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap()
        .checksum_sha256()
        .map(str::to_string)
}

fn hex_to_base64(hex_digest: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(hex::decode(hex_digest).unwrap())
}

/// Files above `--single-request-max-mib` go in parts: the peak stays within the README's
/// formula, 64 MiB + part size x (parts in flight + 1) per transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_export_peak_memory_stays_within_parts_in_flight() {
    let exported = export_measured(0).await;
    let (s3, bucket) = (&exported.s3, &exported.bucket);
    for file in &exported.manifest_files {
        let key = format!("mem/{}", file["path"].as_str().unwrap());
        let stored = stored_checksum(s3, bucket, &key).await.unwrap_or_default();
        assert!(
            stored.ends_with("-6"),
            "{key} was not sent as 6 parts of {PART_MIB} MiB: S3's checksum is {stored:?}"
        );
    }
    let peak_mib = exported.peak_mib;
    exported.remove().await;
    let budget_mib = 64 + PART_MIB * (IN_FLIGHT + 1) * TRANSFERS;
    assert!(
        peak_mib <= budget_mib,
        "peak RSS {peak_mib} MiB is over 64 MiB + {PART_MIB} MiB x ({IN_FLIGHT} + 1) x {TRANSFERS} = {budget_mib} MiB"
    );
}

/// Files up to `--single-request-max-mib` (64 MiB by default) whose size Chorus announced
/// are streamed in one `PutObject` each: S3 stores the whole body's SHA-256, the very
/// digest of the manifest, and the export holds no part buffer: its peak stays within
/// 64 MiB plus [`STREAMED_MIB_PER_TRANSFER`] per transfer, less than one part.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_single_requests_hold_no_part_buffers_and_s3_keeps_the_manifest_digest() {
    let exported = export_measured(Tuning::DEFAULT_SINGLE_REQUEST_MAX_MIB).await;
    let (s3, bucket) = (&exported.s3, &exported.bucket);
    for file in &exported.manifest_files {
        let key = format!("mem/{}", file["path"].as_str().unwrap());
        let listed = hex_to_base64(file["sha256"].as_str().unwrap());
        assert_eq!(
            stored_checksum(s3, bucket, &key).await,
            Some(listed),
            "{key}: S3's stored SHA-256 is not the manifest's (not one streamed request?)"
        );
    }
    let peak_mib = exported.peak_mib;
    exported.remove().await;
    let budget_mib = 64 + STREAMED_MIB_PER_TRANSFER * TRANSFERS;
    assert!(
        peak_mib <= budget_mib,
        "peak RSS {peak_mib} MiB is over 64 MiB + {STREAMED_MIB_PER_TRANSFER} MiB x {TRANSFERS} = {budget_mib} MiB"
    );
}
