//! The console server: its shared state, the worker launcher (one `portshift worker`
//! process per job, credentials over its standard input), the router with its security
//! headers, rate limits and request counters, and `serve` (plain HTTP behind a proxy, or
//! HTTPS itself with rustls).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use pipeline::JobId;
use pipeline::accounts::Accounts;
use pipeline::store::JobStore;
use tokio::io::AsyncWriteExt;
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
    #[error("the console server stopped: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Mail(#[from] crate::mail::MailError),
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "could not start the worker process {exe}: {source}. Check that the portshift binary is intact"
    )]
    Spawn { exe: String, source: std::io::Error },
    #[error("could not hand the credentials to the worker: {0}. Start the export again")]
    Stdin(std::io::Error),
}

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

/// Spawns `<exe> worker --job J --nats-url U --database-url D --data-dir DIR` with an
/// empty environment (PATH only) and the credentials on standard input.
pub struct ProcessLauncher {
    pub exe: PathBuf,
    pub nats_url: String,
    pub database_url: String,
    pub data_dir: PathBuf,
    running: Arc<Mutex<HashMap<JobId, tokio::sync::oneshot::Sender<()>>>>,
}

impl ProcessLauncher {
    pub fn new(exe: PathBuf, nats_url: String, database_url: String, data_dir: PathBuf) -> Self {
        Self {
            exe,
            nats_url,
            database_url,
            data_dir,
            running: Arc::default(),
        }
    }
}

impl WorkerLauncher for ProcessLauncher {
    fn launch(
        &self,
        job: &JobId,
        credentials: Zeroizing<Vec<u8>>,
    ) -> futures::future::BoxFuture<'static, Result<(), LaunchError>> {
        let logs = self.data_dir.join("logs");
        let _ = std::fs::create_dir_all(&logs);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("worker-{job}.log")));
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("worker")
            .args(["--job", job.as_str()])
            .args(["--nats-url", &self.nats_url])
            .args(["--database-url", &self.database_url])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(std::process::Stdio::piped());
        match log_file.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((out, err)) => {
                cmd.stdout(out).stderr(err);
            }
            Err(_) => {
                cmd.stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
            }
        }
        let spawned = cmd.spawn();
        let exe = self.exe.display().to_string();
        let running = self.running.clone();
        let job = job.clone();
        Box::pin(async move {
            let mut child = spawned.map_err(|source| LaunchError::Spawn { exe, source })?;
            let mut stdin = child.stdin.take().ok_or_else(|| {
                LaunchError::Stdin(std::io::Error::other("no standard input pipe"))
            })?;
            stdin
                .write_all(&credentials)
                .await
                .map_err(LaunchError::Stdin)?;
            drop(credentials);
            stdin.shutdown().await.map_err(LaunchError::Stdin)?;
            drop(stdin);
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(job.clone(), tx);
            tokio::spawn(async move {
                tokio::select! {
                    status = child.wait() => {
                        tracing::info!(%job, ?status, "worker exited");
                    }
                    _ = rx => {
                        let _ = child.kill().await;
                        tracing::info!(%job, "worker stopped (job cancelled)");
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

/// Rate-limit settings: hits allowed per fixed window.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub sign_in: (u64, i64),
    pub api: (u64, i64),
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            sign_in: (10, 5 * 60 * 1000),
            api: (600, 60 * 1000),
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
    /// The operator's SMTP relay; without it nobody can sign up (nothing could prove
    /// an address).
    pub mail: Option<Arc<crate::mail::Mailer>>,
}

pub type Shared = Arc<AppState>;

impl AppState {
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
            mail: None,
        }))
    }
}

/// The client address: the socket peer, or with `trust_proxy` the last address the
/// proxy appended to X-Forwarded-For. Used only to derive the salted rate-limit key.
pub fn client_ip(state: &AppState, req: &Request) -> Option<IpAddr> {
    if state.trust_proxy
        && let Some(ip) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return Some(ip);
    }
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The client's rate-limit key, stored by the outer middleware for handlers.
#[derive(Clone)]
pub struct ClientKey(pub String);

async fn security_headers(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    state.counters.requests.fetch_add(1, Ordering::Relaxed);
    let key = crate::auth::client_key(&state.ip_salt, client_ip(&state, &req));
    req.extensions_mut().insert(ClientKey(key));
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "referrer-policy", "no-referrer");
    set(h, "cross-origin-opener-policy", "same-origin");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    if state.tls {
        set(
            h,
            "strict-transport-security",
            "max-age=63072000; includeSubDomains",
        );
    }
    res
}

/// The whole console: pages, the JSON API, static files, health and metrics.
pub fn router(state: Shared) -> Router {
    Router::new()
        .merge(crate::web::routes())
        .merge(crate::account::routes())
        .merge(crate::api::routes(state.clone()))
        .route("/healthz", axum::routing::get(crate::ops::healthz))
        .route("/metrics", axum::routing::get(crate::ops::metrics))
        .route("/static/live.js", axum::routing::get(crate::ops::live_js))
        .route("/static/app.css", axum::routing::get(crate::ops::app_css))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            security_headers,
        ))
        .with_state(state)
}

/// How `portshift serve` runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub nats_url: Option<String>,
    pub database_url: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub trust_proxy: bool,
    /// The `portshift` binary to run workers with (normally the running executable).
    pub worker_exe: PathBuf,
    /// Outgoing e-mail (sign-up links, invitations, password reset).
    pub mail: Option<crate::mail::MailConfig>,
}

/// Runs the console until Ctrl-C.
pub async fn serve(o: ServeOptions) -> Result<(), UiError> {
    std::fs::create_dir_all(&o.data_dir).map_err(|source| {
        UiError::Services(pipeline::config::ServicesError::DataDir {
            dir: o.data_dir.display().to_string(),
            source,
        })
    })?;
    let (embedded, nats_url) = match &o.nats_url {
        Some(u) => (None, u.clone()),
        None => {
            let server = pipeline::embedded_nats::EmbeddedNats::start(&o.data_dir).await?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let database_url = o.database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}",
            o.data_dir.join("portshift.sqlite3").display()
        )
    });
    let mailer = match &o.mail {
        Some(c) => Some(Arc::new(crate::mail::Mailer::new(c)?)),
        None => {
            eprintln!(
                "warning: no --smtp-url: nobody can sign up, because nothing could prove their e-mail address"
            );
            None
        }
    };
    let services =
        pipeline::config::Services::start(&o.data_dir, Some(&nats_url), Some(&database_url))
            .await?;
    let launcher = Arc::new(ProcessLauncher::new(
        o.worker_exe.clone(),
        nats_url,
        database_url,
        o.data_dir.clone(),
    ));
    let mut state = AppState::new(services.store.clone(), services.js.clone(), launcher).await?;
    if let Some(s) = Arc::get_mut(&mut state) {
        s.tls = o.tls_cert.is_some();
        s.trust_proxy = o.trust_proxy;
        s.mail = mailer;
    }
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match (&o.tls_cert, &o.tls_key) {
        (Some(cert), Some(key)) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|source| UiError::Tls {
                    cert: cert.display().to_string(),
                    key: key.display().to_string(),
                    source,
                })?;
            let listener =
                std::net::TcpListener::bind(o.listen).map_err(|source| UiError::Bind {
                    addr: o.listen,
                    source,
                })?;
            let addr = listener.local_addr().map_err(UiError::Serve)?;
            eprintln!("portshift console listening on https://{addr}");
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                h.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
            });
            axum_server::from_tcp_rustls(listener, config)
                .handle(handle)
                .serve(app)
                .await
                .map_err(UiError::Serve)?;
        }
        _ => {
            let listener = tokio::net::TcpListener::bind(o.listen)
                .await
                .map_err(|source| UiError::Bind {
                    addr: o.listen,
                    source,
                })?;
            let addr = listener.local_addr().map_err(UiError::Serve)?;
            eprintln!("portshift console listening on http://{addr}");
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(UiError::Serve)?;
        }
    }
    services.stop().await;
    if let Some(e) = embedded {
        e.stop().await;
    }
    Ok(())
}
