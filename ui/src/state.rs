//! The console's shared state, below every area: `AppState` (the store, NATS, the worker
//! launcher, limits, counters, the mailer and Stripe client, the operator's options) and
//! the client's rate-limit key the router puts on each request; the worker launcher (one
//! `portshift worker` process per job, credentials over its standard input); and the
//! server's error type.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use pipeline::JobId;
use pipeline::accounts::Accounts;
use pipeline::store::JobStore;
use pipeline::worker_process::WorkerCommand;
use zeroize::Zeroizing;

use crate::live::StatsCache;

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error(transparent)]
    Services(#[from] pipeline::config::ServicesError),
    #[error(transparent)]
    EmbeddedNats(#[from] pipeline::embedded_nats::EmbeddedNatsError),
    #[error(transparent)]
    Accounts(#[from] pipeline::accounts::AccountsError),
    #[error("could not listen on {addr}: {source}. Choose another address with --listen")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "could not load the TLS certificate {cert} or key {key}: {source}. Give PEM files with --tls-cert and --tls-key"
    )]
    Tls {
        cert: String,
        key: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Signing(#[from] pipeline::signing::SigningError),
    #[error("the console server stopped: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Mail(#[from] crate::mail::MailError),
    #[error(transparent)]
    Billing(#[from] crate::stripe::BillingSetupError),
}

pub use pipeline::worker_process::LaunchError;

/// Starts a job's worker. The server's implementation spawns `portshift worker`; tests
/// substitute a recorder.
pub trait WorkerLauncher: Send + Sync {
    /// Starts a worker for `job` and hands it `credentials` (a JSON document).
    fn launch(
        &self,
        job: &JobId,
        credentials: Zeroizing<Vec<u8>>,
    ) -> futures::future::BoxFuture<'static, Result<(), LaunchError>>;
    /// Stops the job's worker if this server started one; true if one was running.
    fn stop(&self, job: &JobId) -> bool;
}

/// Spawns `portshift worker` per job through [`WorkerCommand`] (shared with the
/// scheduler): an emptied environment, nothing secret on the command line, the service
/// URLs and credentials on standard input, output in the job's private worker log.
pub struct ProcessLauncher {
    pub command: WorkerCommand,
    /// The operator's manifest signing key, in this process's memory only.
    pub signing_key: Option<pipeline::signing::SigningKeyMaterial>,
    running: Arc<Mutex<HashMap<JobId, tokio::sync::oneshot::Sender<()>>>>,
    /// Worker processes not yet exited (including ones already asked to stop).
    live: Arc<std::sync::atomic::AtomicUsize>,
}

/// How long a worker asked to stop (SIGTERM) may take to finish or nak what it holds
/// before it is killed.
pub const WORKER_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Asks a child process to stop (SIGTERM), as systemd would; kills it after `grace`.
async fn stop_child(child: &mut tokio::process::Child, grace: std::time::Duration) {
    if let Some(pid) = child.id() {
        // Our own child, not reaped yet: the pid is still its.
        pipeline::shutdown::terminate(pid);
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Adds `"signing_key": {...}` to a credentials JSON object, in zeroed-on-drop buffers.
pub fn with_signing_key(
    credentials: Zeroizing<Vec<u8>>,
    key: Option<&pipeline::signing::SigningKeyMaterial>,
) -> Zeroizing<Vec<u8>> {
    let Some(key) = key else {
        return credentials;
    };
    let Some(end) = credentials.iter().rposition(|b| *b == b'}') else {
        return credentials;
    };
    let member = key.to_credentials_json();
    let mut out = Zeroizing::new(Vec::with_capacity(credentials.len() + member.len() + 32));
    out.extend_from_slice(&credentials[..end]);
    let empty = credentials[..end]
        .iter()
        .rev()
        .find(|b| !b.is_ascii_whitespace())
        == Some(&b'{');
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(b"\"signing_key\":");
    out.extend_from_slice(&member);
    out.extend_from_slice(&credentials[end..]);
    out
}

impl ProcessLauncher {
    pub fn new(exe: PathBuf, nats_url: String, database_url: String, data_dir: PathBuf) -> Self {
        Self {
            command: WorkerCommand::new(exe, &nats_url, &database_url, data_dir),
            signing_key: None,
            running: Arc::default(),
            live: Arc::default(),
        }
    }

    /// Stops every worker this server started (SIGTERM each, as on cancel) and waits up
    /// to `within` for them to exit. Called when the server stops: workers use its
    /// NATS server and must not outlive it.
    pub async fn stop_all(&self, within: std::time::Duration) {
        let senders: Vec<_> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, tx)| tx)
            .collect();
        for tx in senders {
            let _ = tx.send(());
        }
        let deadline = std::time::Instant::now() + within;
        while self.live.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl WorkerLauncher for ProcessLauncher {
    fn launch(
        &self,
        job: &JobId,
        credentials: Zeroizing<Vec<u8>>,
    ) -> futures::future::BoxFuture<'static, Result<(), LaunchError>> {
        let command = self.command.clone();
        let credentials = with_signing_key(credentials, self.signing_key.as_ref());
        let running = self.running.clone();
        let live = self.live.clone();
        let job = job.clone();
        Box::pin(async move {
            let mut child = command.spawn(&job, credentials).await?;
            live.fetch_add(1, Ordering::SeqCst);
            // Counted down when the watcher below ends (or if handing over fails).
            struct Live(Arc<std::sync::atomic::AtomicUsize>);
            impl Drop for Live {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let live = Live(live);
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(job.clone(), tx);
            tokio::spawn(async move {
                let _live = live;
                tokio::select! {
                    status = child.wait() => {
                        tracing::info!(%job, ?status, "worker exited");
                    }
                    _ = rx => {
                        // Gracefully: the worker finishes or naks what it holds, aborts
                        // its open uploads and removes its partial files.
                        stop_child(&mut child, WORKER_STOP_GRACE).await;
                        tracing::info!(%job, "worker stopped");
                    }
                }
                running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&job);
            });
            Ok(())
        })
    }

    fn stop(&self, job: &JobId) -> bool {
        let tx = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(job);
        tx.map(|tx| tx.send(()).is_ok()).unwrap_or(false)
    }
}

/// Rate-limit settings: hits allowed per fixed window (milliseconds); and the cap on
/// live workers per organisation.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub sign_in: (u64, i64),
    pub api: (u64, i64),
    /// Requests that start work (start an export, retry one, create a schedule), per
    /// user, on top of the per-client API limit: each can mean a new worker process.
    pub start_work: (u64, i64),
    /// Live workers (running exports, scheduled ones included) one organisation may
    /// have at once; one more is refused with a message saying so.
    pub workers_per_org: u64,
}

pub use pipeline::worker_process::DEFAULT_MAX_WORKERS_PER_ORG;

impl Default for Limits {
    fn default() -> Self {
        Self {
            sign_in: (10, 5 * 60 * 1000),
            api: (600, 60 * 1000),
            start_work: (30, 10 * 60 * 1000),
            workers_per_org: DEFAULT_MAX_WORKERS_PER_ORG,
        }
    }
}

#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub rate_limited: AtomicU64,
    pub sign_ins: AtomicU64,
    pub failed_sign_ins: AtomicU64,
    pub exports_started: AtomicU64,
    /// Stripe webhooks refused (bad, missing or stale signature, or not an event).
    pub webhooks_refused: AtomicU64,
}

/// Everything a handler needs.
pub struct AppState {
    pub store: JobStore,
    pub accounts: Accounts,
    pub js: jetstream::Context,
    pub launcher: Arc<dyn WorkerLauncher>,
    pub stats: StatsCache,
    pub ip_salt: String,
    pub tls: bool,
    pub trust_proxy: bool,
    pub limits: Limits,
    pub counters: Counters,
    /// Public keys that verify this console's manifest signatures (never a secret).
    pub signing_keys: SigningKeys,
    /// Every job and schedule created here is a tenant's, with these allowances.
    pub tenant_allowances: pipeline::tenancy::Allowances,
    /// The operator's retention settings (the settings page shows them).
    pub retention: pipeline::retention::RetentionOptions,
    /// What this server's purge loop deleted (for `/metrics`).
    pub purge: Arc<pipeline::retention::PurgeCounters>,
    /// Held from the worker-cap check until the new job exists, so two requests to this
    /// server cannot both take the last place.
    pub start_lock: tokio::sync::Mutex<()>,
    /// The operator's SMTP relay; without it nobody can sign up (nothing could prove
    /// an address).
    pub mail: Option<Arc<crate::mail::Mailer>>,
    /// The operator's Stripe billing; without it no plan is on sale and every
    /// organisation stays on the trial.
    pub stripe: Option<Arc<crate::stripe::Stripe>>,
    /// What this server's supervisor did (for `/metrics`).
    pub supervisor: Arc<pipeline::leases::SupervisorCounters>,
}

/// The public side of manifest signing: the current key (if the operator configured
/// one) and retired keys, published by key id at `/.well-known/`.
#[derive(Clone, Debug, Default)]
pub struct SigningKeys {
    pub current: Option<pipeline::signing::PublicKey>,
    pub retired: Vec<pipeline::signing::PublicKey>,
}

impl SigningKeys {
    pub fn by_id(&self, id: &str) -> Option<&pipeline::signing::PublicKey> {
        self.current
            .iter()
            .chain(self.retired.iter())
            .find(|k| k.key_id().eq_ignore_ascii_case(id))
    }
}

pub type Shared = Arc<AppState>;

impl AppState {
    /// The trust every job and schedule created through the console or API gets.
    pub fn tenant_trust(&self) -> pipeline::Trust {
        pipeline::Trust::Tenant(self.tenant_allowances.clone())
    }

    pub async fn new(
        store: JobStore,
        js: jetstream::Context,
        launcher: Arc<dyn WorkerLauncher>,
    ) -> Result<Shared, UiError> {
        let accounts = Accounts::new(&store);
        let ip_salt = accounts.ip_salt().await?;
        Ok(Arc::new(Self {
            store,
            accounts,
            js,
            launcher,
            stats: StatsCache::default(),
            ip_salt,
            tls: false,
            trust_proxy: false,
            limits: Limits::default(),
            counters: Counters::default(),
            signing_keys: SigningKeys::default(),
            tenant_allowances: Default::default(),
            retention: pipeline::retention::RetentionOptions::default(),
            purge: Arc::default(),
            start_lock: tokio::sync::Mutex::new(()),
            mail: None,
            stripe: None,
            supervisor: Arc::default(),
        }))
    }
}

/// The client's rate-limit key, stored by the outer middleware for handlers.
#[derive(Clone)]
pub struct ClientKey(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signing_key_joins_the_workers_credentials_document() {
        let material: pipeline::signing::SigningKeyMaterial = serde_json::from_str(
            r#"{"secret_key": "untrusted comment: k\nRWQ\"quoted\"\n", "password": "p"}"#,
        )
        .unwrap();
        let doc = with_signing_key(
            Zeroizing::new(br#"{"chorus_token": "t"}"#.to_vec()),
            Some(&material),
        );
        let creds = pipeline::secrets::Credentials::from_json(&doc).unwrap();
        let key = creds.signing_key.unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(
            key.secret_key.expose_secret(),
            "untrusted comment: k\nRWQ\"quoted\"\n"
        );
        assert_eq!(key.password.unwrap().expose_secret(), "p");
        // Without a key the document is passed on untouched.
        let plain = with_signing_key(Zeroizing::new(b"{\"chorus_token\":\"t\"}".to_vec()), None);
        assert_eq!(&plain[..], b"{\"chorus_token\":\"t\"}");
    }
}
