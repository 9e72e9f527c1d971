//! A job's worker: builds the job's context from its spec and its credentials (held in
//! memory only) and runs every stage's runner for that job until the job reaches a final
//! state or needs new credentials. Several workers of one job, on one machine or many,
//! share the job's durable consumers, so JetStream spreads the work between them.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use pipeline::runner::{self, RunnerConfig, RunnerError, StageCounters};
use pipeline::secrets::Credentials;
use pipeline::store::{JobStore, StoreError};
use pipeline::topology::Stage;
use pipeline::{JobId, JobStatus};
use tokio::sync::watch;

use crate::bigquery::{BigQuerySink, SinkError};
use crate::chorus::{ChorusClient, ChorusConfig, ChorusError};
use crate::context::JobContext;
use crate::destination::{self, DestinationError, DestinationUrl, DestinationUrlError, Tuning};
use crate::fetch::FetchStage;
use crate::list::ListStage;
use crate::manifest::ManifestStage;
use crate::notify::NotifyStage;

/// How often a worker stamps its job as alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);
pub use pipeline::worker_process::WORKER_GONE_AFTER;

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Recordings fetched at once by this worker.
    pub fetch_concurrency: usize,
    pub runner: RunnerConfig,
    pub tuning: Tuning,
    /// Stages this worker runs (all by default; tests run subsets).
    pub stages: Vec<Stage>,
    /// Extra CA bundle for private endpoints and test servers.
    pub extra_ca_file: Option<std::path::PathBuf>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            fetch_concurrency: 8,
            runner: RunnerConfig::default(),
            tuning: Tuning::default(),
            stages: Stage::ALL.to_vec(),
            extra_ca_file: std::env::var_os("PORTSHIFT_CA_FILE").map(Into::into),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runner(#[from] RunnerError),
    #[error(transparent)]
    Chorus(#[from] ChorusError),
    #[error(transparent)]
    DestinationUrl(#[from] DestinationUrlError),
    #[error("could not open the destination: {0}")]
    Destination(#[from] DestinationError),
    #[error("could not set up the BigQuery metadata sink: {0}")]
    MetadataSink(#[from] SinkError),
    #[error("the job's Chorus URL {0:?} is not a valid URL")]
    ChorusUrl(String),
    #[error("could not build the HTTP client: {0}")]
    Http(String),
    #[error("a stage task of the worker stopped unexpectedly: {0}")]
    Join(String),
}

/// Everything one job's stages share, from the job record and the credentials.
pub async fn prepare(
    job: &JobId,
    store: JobStore,
    js: jetstream::Context,
    credentials: &Credentials,
    options: &WorkerOptions,
) -> Result<Arc<JobContext>, WorkerError> {
    let record = store.job(job).await?;
    let spec = record.spec;
    let base = url::Url::parse(&spec.chorus_url)
        .map_err(|_| WorkerError::ChorusUrl(spec.chorus_url.clone()))?;
    let mut chorus_config = ChorusConfig::new(base, credentials.chorus_token.clone());
    chorus_config.extra_ca_file = options.extra_ca_file.clone();
    let chorus = ChorusClient::new(chorus_config)?;
    let dest_url: DestinationUrl = spec.destination.parse()?;
    let mut destination = destination::open_with(
        &dest_url,
        credentials.into(),
        &options.tuning,
        options.extra_ca_file.as_deref(),
    )
    .await?;
    destination.set_upload_journal(Arc::new(crate::upload_journal::StoreJournal::new(
        store.clone(),
        job.clone(),
    )));
    let metadata_sink = match destination::url::bigquery_of(&spec.destination)? {
        Some(target) => Some(Arc::new(
            BigQuerySink::connect(
                &target,
                credentials.bigquery.as_ref().or(credentials.gcs.as_ref()),
                options.extra_ca_file.as_deref(),
            )
            .await?,
        )),
        None => None,
    };
    let http = crate::http::client_builder(options.extra_ca_file.as_deref())
        .map_err(|e| WorkerError::Http(e.to_string()))?
        .build()
        .map_err(|e| WorkerError::Http(e.to_string()))?;
    Ok(Arc::new(JobContext {
        job: job.clone(),
        spec,
        store,
        js,
        chorus,
        destination: Arc::from(destination),
        webhook_secret: credentials.webhook_secret.clone(),
        http,
        metadata_sink,
        status_changed: tokio::sync::Notify::new(),
    }))
}

/// Counters of each stage this worker ran.
#[derive(Debug, Default, Clone)]
pub struct WorkerCounters {
    pub list: Arc<StageCounters>,
    pub fetch: Arc<StageCounters>,
    pub manifest: Arc<StageCounters>,
    pub notify: Arc<StageCounters>,
}

/// Runs the job's stages until the job is final, needs credentials, or `stop` turns
/// true. Returns the job's status at that point.
pub async fn run(
    ctx: Arc<JobContext>,
    options: WorkerOptions,
    counters: WorkerCounters,
    mut stop: watch::Receiver<bool>,
) -> Result<JobStatus, WorkerError> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let single = RunnerConfig {
        concurrency: 1,
        ..options.runner.clone()
    };
    for stage in &options.stages {
        let js = ctx.js.clone();
        let job = ctx.job.clone();
        let rx = shutdown_rx.clone();
        match stage {
            Stage::List => {
                tasks.spawn(runner::run(
                    js,
                    job,
                    Arc::new(ListStage(ctx.clone())),
                    single.clone(),
                    counters.list.clone(),
                    rx,
                ));
            }
            Stage::Fetch => {
                let config = RunnerConfig {
                    concurrency: options.fetch_concurrency.max(1),
                    ..options.runner.clone()
                };
                tasks.spawn(runner::run(
                    js,
                    job,
                    Arc::new(FetchStage(ctx.clone())),
                    config,
                    counters.fetch.clone(),
                    rx,
                ));
            }
            Stage::Manifest => {
                tasks.spawn(runner::run(
                    js,
                    job,
                    Arc::new(ManifestStage(ctx.clone())),
                    single.clone(),
                    counters.manifest.clone(),
                    rx,
                ));
            }
            Stage::Notify => {
                tasks.spawn(runner::run(
                    js,
                    job,
                    Arc::new(NotifyStage(ctx.clone())),
                    single.clone(),
                    counters.notify.clone(),
                    rx,
                ));
            }
        }
    }

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_beat = std::time::Instant::now() - HEARTBEAT_EVERY;
    let status = loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.status_changed.notified() => {}
            _ = stop.changed() => {}
            Some(done) = tasks.join_next() => {
                // A runner only ends early on an error (e.g. its consumer could not be made).
                let _ = shutdown_tx.send(true);
                while tasks.join_next().await.is_some() {}
                return match done {
                    Ok(Ok(())) => Ok(ctx.store.job(&ctx.job).await?.status),
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(WorkerError::Join(e.to_string())),
                };
            }
        }
        if last_beat.elapsed() >= HEARTBEAT_EVERY {
            ctx.store.heartbeat(&ctx.job).await?;
            last_beat = std::time::Instant::now();
        }
        let status = ctx.store.job(&ctx.job).await?.status;
        if status.is_final() || status == JobStatus::NeedsCredentials || *stop.borrow() {
            break status;
        }
    };
    let _ = shutdown_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "a stage runner ended with an error during shutdown");
        }
    }
    Ok(status)
}
