//! Where portshift keeps its state and how it reaches its services: the data folder,
//! the job store URL and the NATS URL. With neither URL given, it runs on one machine:
//! SQLite in the data folder and a `nats-server` child process (see `embedded_nats`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;

use crate::embedded_nats::{EmbeddedNatsError, SharedNats};
use crate::store::{JobStore, StoreError};
use crate::topology::{self, TopologyError};

/// The platform's data directory plus `portshift` (e.g. `~/.local/share/portshift`).
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("portshift")
}

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    EmbeddedNats(#[from] EmbeddedNatsError),
    #[error(
        "could not connect to NATS at {url}: {source}. Check PORTSHIFT_NATS_URL (or --nats-url) and that the server runs with JetStream.{hint}"
    )]
    Nats {
        url: String,
        /// Extra advice (TLS problems), empty or starting with a space.
        hint: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("could not create the data folder {dir}: {source}. Choose another with --data-dir")]
    DataDir { dir: String, source: std::io::Error },
    #[error(
        "{REPLICAS_ENV}={0:?} is not a replica count: use 1 (one server) or 3 (the reference cluster), at most 5"
    )]
    Replicas(String),
}

/// Environment variable: how many replicas new streams get (default 1; 3 on a cluster).
pub const REPLICAS_ENV: &str = "PORTSHIFT_STREAM_REPLICAS";

/// The replica count from [`REPLICAS_ENV`] (read at the edge, in [`Services::start`]).
fn stream_replicas() -> Result<usize, ServicesError> {
    match std::env::var(REPLICAS_ENV) {
        Err(_) => Ok(1),
        Ok(v) if v.trim().is_empty() => Ok(1),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n @ 1..=5) => Ok(n),
            _ => Err(ServicesError::Replicas(v)),
        },
    }
}

/// The job store and JetStream, connected, with the streams in place.
pub struct Services {
    pub store: JobStore,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    embedded: Option<SharedNats>,
    url: String,
}

/// Environment variable naming an extra CA bundle (PEM) trusted for NATS (and, in the
/// stages, for outbound HTTPS). Read only at the edge ([`Services::start`]).
pub const CA_FILE_ENV: &str = "PORTSHIFT_CA_FILE";

/// Connects to NATS. `tls://` URLs require TLS (a server that offers none is refused);
/// `ca_file` adds a CA bundle (PEM) to the system roots, for a private CA. Certificate
/// validation is always on, and rustls speaks TLS 1.2 and 1.3 only.
pub async fn connect_nats(
    url: &str,
    ca_file: Option<&Path>,
) -> Result<async_nats::Client, ServicesError> {
    crate::tls::install_crypto_provider();
    let mut options = async_nats::ConnectOptions::new()
        .name("portshift")
        .connection_timeout(Duration::from_secs(10))
        // Keep reconnecting: a restarted nats-server must not end the job.
        .max_reconnects(None);
    // A cluster is given as a comma-separated list (`tls://n1:4222,tls://n2:4222`): the
    // client connects to one and fails over to the others (and to the nodes the cluster
    // announces). async-nats parses a single string as one URL, so split it here.
    let servers: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if servers.iter().any(|s| s.starts_with("tls://")) {
        options = options.require_tls(true);
    }
    if let Some(ca) = ca_file {
        options = options.add_root_certificates(ca.to_path_buf());
    }
    options
        .connect(servers.as_slice())
        .await
        .map_err(|e| ServicesError::Nats {
            url: url.to_string(),
            hint: nats_hint(&e.to_string(), ca_file),
            source: Box::new(e),
        })
}

/// What to do about a failed NATS connection, beyond checking the URL.
fn nats_hint(error: &str, ca_file: Option<&Path>) -> String {
    let lower = error.to_ascii_lowercase();
    let tls = [
        "certificate",
        "unknownissuer",
        "tls",
        "handshake",
        "invalid peer",
    ]
    .iter()
    .any(|w| lower.contains(w));
    match (tls, ca_file) {
        (true, None) => format!(
            " The TLS handshake failed: if the server's certificate comes from a private CA, \
             set {CA_FILE_ENV} to that CA's PEM file."
        ),
        (true, Some(ca)) => format!(
            " The TLS handshake failed: check that {} holds the CA that signed the server's \
             certificate and that the certificate names the host in the URL.",
            ca.display()
        ),
        (false, _) => String::new(),
    }
}

impl Services {
    pub async fn start(
        data_dir: &Path,
        nats_url: Option<&str>,
        database_url: Option<&str>,
    ) -> Result<Self, ServicesError> {
        std::fs::create_dir_all(data_dir).map_err(|source| ServicesError::DataDir {
            dir: data_dir.display().to_string(),
            source,
        })?;
        let store = match database_url {
            Some(url) => JobStore::connect(url).await?,
            None => JobStore::open_sqlite_in(data_dir).await?,
        };
        let (embedded, url) = match nats_url {
            Some(url) => (None, url.to_string()),
            None => {
                // The data folder's one server: joined if another process runs it.
                let server = SharedNats::join(data_dir).await?;
                let url = server.url();
                (Some(server), url)
            }
        };
        let connected = async {
            let ca_file = std::env::var_os(CA_FILE_ENV)
                .filter(|v| !v.to_string_lossy().trim().is_empty())
                .map(PathBuf::from);
            let nats = connect_nats(&url, ca_file.as_deref()).await?;
            let js = jetstream::new(nats.clone());
            topology::ensure_streams_replicated(&js, stream_replicas()?).await?;
            Ok::<_, ServicesError>((nats, js))
        }
        .await;
        let (nats, js) = match connected {
            Ok(c) => c,
            Err(e) => {
                // Leave the shared server as we found it (stopped if we were its only user).
                if let Some(server) = embedded {
                    server.leave().await;
                }
                return Err(e);
            }
        };
        Ok(Self {
            store,
            nats,
            js,
            embedded,
            url,
        })
    }

    /// The NATS URL in use (given, or the embedded server's), for child processes.
    pub fn nats_url(&self) -> &str {
        &self.url
    }

    /// The data folder's embedded server, if this process uses one.
    pub fn embedded(&self) -> Option<&SharedNats> {
        self.embedded.as_ref()
    }

    /// Flushes, closes the store and leaves the embedded server, if any (stopping it if
    /// no other process on the data folder still uses it).
    pub async fn stop(self) {
        // Bounded: with the NATS server gone, a flush waits for a reconnection that never
        // comes, and SIGTERM would never stop the process.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.nats.flush()).await;
        self.store.close().await;
        if let Some(server) = self.embedded {
            server.leave().await;
        }
    }
}
