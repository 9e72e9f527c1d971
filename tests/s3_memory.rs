//! Memory on the S3 upload path, measured on the built binary: `portshift export` of a
//! few large simulated files (the simulator generates the bytes, in this test process,
//! never stored) into SeaweedFS with several transfers at once. Its peak resident
//! memory must stay within what the README promises: 64 MiB for the process itself
//! plus part size × (parts in flight + 1) per transfer.
//!
//! The peak is the kernel's own: `VmHWM` of /proc/<pid>/status, read while the export
//! runs, and the child's `ru_maxrss` from wait4 once it exits (the same counter, read at
//! the very end). Costs a few seconds: 8 files of 48 MiB.
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

const FILES: usize = 8;
const SIZE: u64 = 48 * 1024 * 1024;
const TRANSFERS: u64 = 4;
const PART_MIB: u64 = 8;
const IN_FLIGHT: u64 = 3;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
// The child is reaped by wait4 in `wait_with_maxrss`, which clippy cannot see.
#[allow(clippy::zombie_processes)]
async fn s3_export_peak_memory_stays_within_parts_in_flight() {
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

    let keys = list_keys(&s3, &bucket, "mem").await;
    let media = keys
        .iter()
        .filter(|k| !k.contains("portshift-manifest"))
        .count();
    assert_eq!(media, FILES, "{keys:?}");
    // 384 MiB: do not leave them on the shared test server.
    for key in &keys {
        let _ = s3
            .delete_object()
            .bucket(&bucket)
            .key(format!("mem/{key}"))
            .send()
            .await;
    }
    let _ = s3.delete_bucket().bucket(&bucket).send().await;

    let peak_mib = polled.load(Ordering::Relaxed).max(maxrss_kib) / 1024;
    let budget_mib = 64 + PART_MIB * (IN_FLIGHT + 1) * TRANSFERS;
    eprintln!(
        "peak RSS {peak_mib} MiB (VmHWM polled {} MiB, ru_maxrss {} MiB); budget {budget_mib} MiB",
        polled.load(Ordering::Relaxed) / 1024,
        maxrss_kib / 1024
    );
    assert!(
        peak_mib <= budget_mib,
        "peak RSS {peak_mib} MiB is over 64 MiB + {PART_MIB} MiB x ({IN_FLIGHT} + 1) x {TRANSFERS} = {budget_mib} MiB"
    );
    drop(sim);
}
