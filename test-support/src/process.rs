//! Child processes in tests: a free port to give them, a log file to write to, and
//! stopping them the way systemd would (SIGTERM first), so a `portshift` process stops
//! its embedded `nats-server` too instead of leaving it running, orphaned.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Live (non-zombie) processes whose command line mentions `dir`: each one's pid and
/// raw command line (its arguments separated by NUL bytes), read from /proc.
pub fn live_processes_mentioning(dir: &Path) -> Vec<(u32, Vec<u8>)> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().starts_with('Z'))
            .unwrap_or(true);
        if !zombie && cmdline.windows(needle.len()).any(|w| w == needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// A log file a child process appends its output to.
pub fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// Stops a process the way systemd would: SIGTERM, then SIGKILL if it has not exited
/// within 15 s.
pub fn stop_gracefully(child: &mut Child) {
    // Already reaped (or exited): its pid may belong to another process by now.
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: a signal to a child process this test started and has not reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A child process stopped with [`stop_gracefully`] when dropped, so a failing test
/// leaves nothing running.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        stop_gracefully(&mut self.0);
    }
}

/// A command for `program` as the tests run long-lived processes (`serve`, `scheduler`):
/// a clean environment (only `PATH`, and `PORTSHIFT_LOG=info`), standard input closed,
/// standard output dropped, standard error appended to `log`.
pub fn logged_command(program: &str, log: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("PORTSHIFT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(log));
    cmd
}
