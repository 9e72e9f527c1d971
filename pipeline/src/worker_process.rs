//! Per-job worker processes: how the console and the scheduler start `portshift worker`
//! for one job, and what the worker reads back. Written once here so both launchers give
//! the same guarantees:
//!
//! - Nothing secret on the child's command line or in its environment: the command line
//!   carries the job id, the data folder and tuning only; the environment is emptied
//!   down to a few non-secret variables. The NATS URL and the job store URL (which may
//!   hold passwords) travel with the credentials as one JSON document on the child's
//!   standard input ([`WorkerInput`]).
//! - The child's output goes to `logs/worker-<job>.log` in the data folder, created
//!   readable by the server user only (0600, folder 0700); the worker redacts its own
//!   secrets from what it writes there. [`remove_worker_log`] removes it with the job.
//! - The child hardens itself first thing (no core dumps, not ptrace-able): see
//!   `secrets::harden_process`, called by `portshift worker` before it reads stdin.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use zeroize::Zeroizing;

use crate::JobId;
use crate::aws_role::RoleGrant;
use crate::secrets::{Credentials, CredentialsError};
use crate::store::{JobStore, StoreError};

/// Silence after which a running job counts as having lost its workers (workers beat
/// every few seconds); also what the per-organisation worker cap counts as live.
pub const WORKER_GONE_AFTER: std::time::Duration = std::time::Duration::from_secs(20);

/// Default cap on live workers per organisation (`serve` and `scheduler`
/// `--max-workers-per-org`): enough for a few parallel exports, few enough that one
/// tenant cannot fill the machine with processes.
pub const DEFAULT_MAX_WORKERS_PER_ORG: u64 = 4;

/// Environment variables a worker inherits from its parent: none of them may hold a
/// secret (operators put secrets in references, never in these).
pub const INHERITED_ENV: &[&str] = &["PATH", "PORTSHIFT_CA_FILE", "PORTSHIFT_LOG"];

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "could not start the worker process {exe}: {source}. Check that the portshift binary is intact"
    )]
    Spawn { exe: String, source: std::io::Error },
    #[error("could not hand the credentials to the worker: {0}. Start the export again")]
    Stdin(std::io::Error),
}

/// How to start a job's worker: the `portshift` binary and where the job's services are.
#[derive(Clone)]
pub struct WorkerCommand {
    pub exe: PathBuf,
    /// Sent on standard input: a NATS URL may carry a user and password.
    pub nats_url: SecretString,
    /// Sent on standard input: a PostgreSQL URL usually carries a password.
    pub database_url: SecretString,
    pub data_dir: PathBuf,
    /// Extra non-secret arguments after `worker --job J` (tuning, e.g. `--ack-wait-secs 3`).
    pub extra_args: Vec<String>,
}

impl std::fmt::Debug for WorkerCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCommand")
            .field("exe", &self.exe)
            .field("data_dir", &self.data_dir)
            .field("extra_args", &self.extra_args)
            .finish_non_exhaustive()
    }
}

impl WorkerCommand {
    pub fn new(exe: PathBuf, nats_url: &str, database_url: &str, data_dir: PathBuf) -> Self {
        Self {
            exe,
            nats_url: SecretString::from(nats_url.to_string()),
            database_url: SecretString::from(database_url.to_string()),
            data_dir,
            extra_args: Vec::new(),
        }
    }

    /// Starts `<exe> worker --job J --data-dir DIR [extra]` and writes the worker's input
    /// document (service URLs and `credentials`, a [`Credentials`] JSON document) to its
    /// standard input, then closes it. The returned child is the caller's to wait for.
    pub async fn spawn(
        &self,
        job: &JobId,
        credentials: Zeroizing<Vec<u8>>,
    ) -> Result<tokio::process::Child, LaunchError> {
        self.spawn_with(job, WorkerSecrets::CREDENTIALS, credentials)
            .await
    }

    /// [`WorkerCommand::spawn`] with the secrets under `field` of the input document:
    /// [`WorkerSecrets::CREDENTIALS`] or [`WorkerSecrets::AWS_ROLE`] (a role grant).
    pub async fn spawn_with(
        &self,
        job: &JobId,
        field: &'static str,
        credentials: Zeroizing<Vec<u8>>,
    ) -> Result<tokio::process::Child, LaunchError> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("worker")
            .args(["--job", job.as_str()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env_clear()
            .stdin(Stdio::piped())
            // The child outlives nothing: if the launcher's handle is dropped, it goes too.
            .kill_on_drop(false);
        for name in INHERITED_ENV {
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        match open_worker_log(&self.data_dir, job).and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((out, err)) => {
                cmd.stdout(out).stderr(err);
            }
            Err(e) => {
                tracing::warn!(%job, error = %e, "could not open the worker log; its output is discarded");
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            exe: self.exe.display().to_string(),
            source,
        })?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| LaunchError::Stdin(std::io::Error::other("no standard input pipe")))?;
        let written = async {
            let nats = Zeroizing::new(json_string(self.nats_url.expose_secret()));
            let db = Zeroizing::new(json_string(self.database_url.expose_secret()));
            stdin.write_all(b"{\"nats_url\":").await?;
            stdin.write_all(&nats).await?;
            stdin.write_all(b",\"database_url\":").await?;
            stdin.write_all(&db).await?;
            stdin.write_all(b",\"").await?;
            stdin.write_all(field.as_bytes()).await?;
            stdin.write_all(b"\":").await?;
            stdin.write_all(&credentials).await?;
            stdin.write_all(b"}").await?;
            stdin.shutdown().await
        }
        .await;
        drop(credentials);
        drop(stdin);
        if let Err(e) = written {
            let _ = child.start_kill();
            return Err(LaunchError::Stdin(e));
        }
        Ok(child)
    }
}

fn json_string(s: &str) -> Vec<u8> {
    // Serialising a &str cannot fail.
    serde_json::to_vec(s).unwrap_or_default()
}

/// What `portshift worker` reads on standard input: the service URLs its launcher uses
/// and the job's secrets. A bare [`Credentials`] document (what operators and older
/// launchers pipe in) is accepted too, with the URLs then taken from the command line
/// or the environment.
pub struct WorkerInput {
    pub nats_url: Option<SecretString>,
    pub database_url: Option<SecretString>,
    pub secrets: WorkerSecrets,
}

/// The job's credentials, or a role grant the worker reads them through.
pub enum WorkerSecrets {
    Credentials(Credentials),
    AwsRole(RoleGrant),
}

impl WorkerSecrets {
    pub const CREDENTIALS: &'static str = "credentials";
    pub const AWS_ROLE: &'static str = "aws_role";
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    #[serde(default)]
    nats_url: Option<SecretString>,
    #[serde(default)]
    database_url: Option<SecretString>,
    #[serde(default)]
    credentials: Option<Credentials>,
    #[serde(default)]
    aws_role: Option<RoleGrant>,
}

impl WorkerInput {
    /// Parses the worker's standard input. Errors never quote the input.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CredentialsError> {
        if let Ok(e) = serde_json::from_slice::<Envelope>(bytes) {
            let secrets = match (e.credentials, e.aws_role) {
                (Some(c), None) => {
                    // Same checks as a bare document (e.g. an empty token).
                    Credentials::check(&c)?;
                    Some(WorkerSecrets::Credentials(c))
                }
                (None, Some(g)) => Some(WorkerSecrets::AwsRole(g)),
                _ => None,
            };
            if let Some(secrets) = secrets {
                return Ok(Self {
                    nats_url: e.nats_url,
                    database_url: e.database_url,
                    secrets,
                });
            }
        }
        Ok(Self {
            nats_url: None,
            database_url: None,
            secrets: WorkerSecrets::Credentials(Credentials::from_json(bytes)?),
        })
    }
}

/// Where a job's worker writes its output.
pub fn worker_log_path(data_dir: &Path, job: &JobId) -> PathBuf {
    data_dir.join("logs").join(format!("worker-{job}.log"))
}

/// Opens (creating or appending) the job's worker log, readable and writable by the
/// server user only; an existing file from an older portshift is tightened to 0600.
pub fn open_worker_log(data_dir: &Path, job: &JobId) -> std::io::Result<std::fs::File> {
    let dir = data_dir.join("logs");
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(&dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(worker_log_path(data_dir, job))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// Removes the job's worker log; true if there was one. For job deletion and retention.
pub fn remove_worker_log(data_dir: &Path, job: &JobId) -> std::io::Result<bool> {
    match std::fs::remove_file(worker_log_path(data_dir, job)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not remove the worker log {path}: {source}. Remove it by hand")]
    Log {
        path: String,
        source: std::io::Error,
    },
}

/// Deletes a job: its rows in the job store and its worker log. What retention (and a
/// future "delete job" action) calls, so no log outlives its job.
pub async fn delete_job(store: &JobStore, data_dir: &Path, job: &JobId) -> Result<(), ForgetError> {
    store.delete_job(job).await?;
    remove_worker_log(data_dir, job).map_err(|source| ForgetError::Log {
        path: worker_log_path(data_dir, job).display().to_string(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_and_a_bare_document_both_parse_and_errors_never_quote() {
        let env = br#"{"nats_url":"nats://u:CANARY-N@h:4222","database_url":"postgres://u:CANARY-D@h/db","credentials":{"chorus_token":"CANARY-T"}}"#;
        let input = WorkerInput::from_json(env).unwrap();
        assert_eq!(
            input.database_url.unwrap().expose_secret(),
            "postgres://u:CANARY-D@h/db"
        );
        let WorkerSecrets::Credentials(c) = input.secrets else {
            panic!("credentials expected")
        };
        assert_eq!(c.chorus_token.expose_secret(), "CANARY-T");
        let bare = WorkerInput::from_json(br#"{"chorus_token":"CANARY-T"}"#).unwrap();
        assert!(bare.nats_url.is_none() && bare.database_url.is_none());
        let bad = br#"{"database_url":"CANARY-D","credentials":{"chorus_token":" "}}"#;
        let err = WorkerInput::from_json(bad).err().unwrap().to_string();
        assert!(!err.contains("CANARY"), "{err}");
    }

    #[test]
    fn worker_logs_are_private_and_removed_with_the_job() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let job = JobId::new();
        // An older portshift left a world-readable log: opening tightens it.
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        std::fs::write(worker_log_path(dir.path(), &job), b"old\n").unwrap();
        std::fs::set_permissions(
            worker_log_path(dir.path(), &job),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        drop(open_worker_log(dir.path(), &job).unwrap());
        let mode = std::fs::metadata(worker_log_path(dir.path(), &job))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let fresh = JobId::new();
        drop(open_worker_log(dir.path(), &fresh).unwrap());
        let meta = std::fs::metadata(worker_log_path(dir.path(), &fresh)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(remove_worker_log(dir.path(), &fresh).unwrap());
        assert!(!worker_log_path(dir.path(), &fresh).exists());
        assert!(!remove_worker_log(dir.path(), &fresh).unwrap());
    }
}
