//! A job's worker: builds the job's context from its spec and its credentials (held in
//! memory only) and runs every stage's runner for that job until the job reaches a final
//! state or needs new credentials. Several workers of one job, on one machine or many,
//! share the job's durable consumers, so JetStream spreads the work between them.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use pipeline::leases::{Lease, LeaseCounters};
use pipeline::rate_budget::{BudgetConfig, RequestBudget};
use pipeline::runner::{self, RunnerConfig, RunnerError, StageCounters};
use pipeline::secrets::Credentials;
use pipeline::store::{JobStore, StoreError};
use pipeline::tenancy::{Refusal, Supplied};
use pipeline::topology::{self, Stage};
use pipeline::{JobId, JobSpec, JobStatus};
use tokio::sync::watch;

use crate::bigquery::{BigQuerySink, SinkError};
use crate::chorus::{ChorusClient, ChorusConfig, ChorusError};
use crate::context::JobContext;
use crate::destination::{self, DestinationError, DestinationUrl, DestinationUrlError, Tuning};
use crate::fetch::FetchStage;
use crate::http::Egress;
use crate::list::ListStage;
use crate::manifest::ManifestStage;
use crate::notify::NotifyStage;

/// How often a worker renews its lease and stamps its job as alive.
pub use pipeline::leases::HEARTBEAT_EVERY;

/// How long the job store may be unreachable before a worker gives up (a PostgreSQL
/// restart takes seconds; a failover to a standby well under a minute).
pub const STORE_OUTAGE_LIMIT: Duration = Duration::from_secs(120);
pub use pipeline::worker_process::WORKER_GONE_AFTER;

#[derive(Clone)]
pub struct WorkerOptions {
    /// Recordings fetched at once by this worker.
    pub fetch_concurrency: usize,
    pub runner: RunnerConfig,
    pub tuning: Tuning,
    /// Stages this worker runs (all by default; tests run subsets).
    pub stages: Vec<Stage>,
    /// Extra CA bundle for private endpoints and test servers.
    pub extra_ca_file: Option<std::path::PathBuf>,
    /// Turns host names into addresses for a console job's network guard (the system
    /// resolver when `None`; tests inject answers). The guard's filter applies either way.
    pub resolver: Option<Arc<dyn reqwest::dns::Resolve>>,
    /// The Chorus request budget (rate and burst), shared through JetStream by every
    /// worker of every job on the same Chorus account.
    pub chorus_budget: BudgetConfig,
    /// How long this worker's lease on its job lasts without renewal (renewed every
    /// [`HEARTBEAT_EVERY`]); once every lease of a running job has run out, a supervisor
    /// acts on it.
    pub lease: Duration,
    /// The list stage lists the next Chorus page only while at most this many listed
    /// recordings wait to be fetched, so a backfill of any size holds a bounded queue.
    pub list_ahead: u64,
}

impl std::fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOptions")
            .field("fetch_concurrency", &self.fetch_concurrency)
            .field("runner", &self.runner)
            .field("tuning", &self.tuning)
            .field("stages", &self.stages)
            .field("extra_ca_file", &self.extra_ca_file)
            .field("resolver", &self.resolver.as_ref().map(|_| "injected"))
            .field("chorus_budget", &self.chorus_budget)
            .field("lease", &self.lease)
            .field("list_ahead", &self.list_ahead)
            .finish()
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            fetch_concurrency: 8,
            runner: RunnerConfig::default(),
            tuning: Tuning::default(),
            stages: Stage::ALL.to_vec(),
            extra_ca_file: std::env::var_os("PORTSHIFT_CA_FILE").map(Into::into),
            resolver: None,
            chorus_budget: BudgetConfig::default(),
            lease: pipeline::leases::DEFAULT_LEASE,
            list_ahead: crate::list::DEFAULT_LIST_AHEAD,
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
    #[error("the manifest signing key is not usable: {0}")]
    Signing(#[from] pipeline::signing::SigningError),
    #[error("a stage task of the worker stopped unexpectedly: {0}")]
    Join(String),
    #[error("this job may not run as given: {0}")]
    Refused(#[from] Refusal),
    #[error("could not put the job's outstanding work back in its queue: {0}")]
    Requeue(String),
}

/// The job's trust rules on its spec and the credentials it was given (see
/// `pipeline::tenancy`): nothing here for the operator's jobs.
fn check_trust(spec: &JobSpec, credentials: &Credentials) -> Result<(), Refusal> {
    let trust = &spec.trust;
    trust.check_chorus_url(&spec.chorus_url)?;
    trust.check_destination(&spec.destination)?;
    if let Some(w) = &spec.webhook_url {
        trust.check_webhook_url(w)?;
    }
    trust.check_destination_credentials(
        &spec.destination,
        Supplied {
            s3: credentials.s3.is_some(),
            azure: credentials.azure.is_some(),
            gcs: credentials.gcs.is_some(),
            bigquery: credentials.bigquery.is_some(),
        },
    )
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
    // The console checked this when the job was made; checked again here because the
    // worker is what acts, whoever made the job and whenever.
    check_trust(&spec, credentials)?;
    let egress = match &options.resolver {
        Some(r) => Egress::for_trust(&spec.trust).with_resolver(r.clone()),
        None => Egress::for_trust(&spec.trust),
    };
    let base = url::Url::parse(&spec.chorus_url)
        .map_err(|_| WorkerError::ChorusUrl(spec.chorus_url.clone()))?;
    let mut chorus_config = ChorusConfig::new(base, credentials.chorus_token.clone());
    chorus_config.extra_ca_file = options.extra_ca_file.clone();
    chorus_config.egress = egress.clone();
    let account = chorus_config.account_key();
    chorus_config.budget = Some(Arc::new(
        RequestBudget::shared(&js, &account, Some(job), options.chorus_budget).await,
    ));
    let chorus = ChorusClient::new(chorus_config)?;
    let dest_url: DestinationUrl = spec.destination.parse()?;
    if let destination::Storage::Local { root } = &dest_url.storage {
        spec.trust.check_local_folder(root)?;
    }
    let mut destination = destination::open_guarded(
        &dest_url,
        credentials.into(),
        &options.tuning,
        options.extra_ca_file.as_deref(),
        &egress,
    )
    .await?;
    destination.set_upload_journal(Arc::new(crate::upload_journal::StoreJournal::new(
        store.clone(),
        job.clone(),
    )));
    let metadata_sink = match &dest_url.bigquery {
        Some(target) => Some(Arc::new(
            BigQuerySink::connect(
                target,
                credentials.bigquery.as_ref().or(credentials.gcs.as_ref()),
                options.extra_ca_file.as_deref(),
                &egress,
            )
            .await?,
        )),
        None => None,
    };
    let signing_key = credentials
        .signing_key
        .as_ref()
        .map(pipeline::signing::SigningKey::from_material)
        .transpose()?
        .map(Arc::new);
    let http = crate::http::webhook_client(options.extra_ca_file.as_deref(), &egress)
        .map_err(|e| WorkerError::Http(e.to_string()))?;
    Ok(Arc::new(JobContext {
        job: job.clone(),
        spec,
        store,
        js,
        chorus,
        destination: Arc::from(destination),
        webhook_secret: credentials.webhook_secret.clone(),
        signing_key,
        http,
        egress,
        metadata_sink,
        records: crate::records::JobRecords::new(job.clone()),
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
    /// This worker's lease on its job.
    pub lease: Arc<LeaseCounters>,
}

impl WorkerCounters {
    /// Messages settled so far, all stages (any change means the worker made progress).
    /// Each stage's name with its counters.
    pub fn stages(&self) -> [(&'static str, &StageCounters); 4] {
        [
            ("list", &self.list),
            ("fetch", &self.fetch),
            ("manifest", &self.manifest),
            ("notify", &self.notify),
        ]
    }

    /// Prometheus text of this worker: its lease, and per stage the messages processed,
    /// retried, redelivered and dead-lettered.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        self.lease.render(out);
        for (name, help, pick) in [
            (
                "portshift_stage_processed_total",
                "Messages this worker settled (acked) per stage.",
                (|c: &StageCounters| c.processed.load(Relaxed)) as fn(&StageCounters) -> u64,
            ),
            (
                "portshift_stage_retries_total",
                "Messages this worker nakked for a retry after a transient failure.",
                |c| c.retried.load(Relaxed),
            ),
            (
                "portshift_stage_redeliveries_total",
                "Deliveries to this worker of a message delivered before (delivery count above 1).",
                |c| c.redelivered.load(Relaxed),
            ),
            (
                "portshift_stage_dead_letters_total",
                "Messages this worker moved to the dead-letter stream.",
                |c| c.dead_lettered.load(Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (stage, c) in self.stages() {
                let _ = writeln!(out, "{name}{{stage=\"{stage}\"}} {}", pick(c));
            }
        }
    }

    fn activity(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        [&self.list, &self.fetch, &self.manifest, &self.notify]
            .iter()
            .map(|c| {
                c.processed.load(Relaxed) + c.retried.load(Relaxed) + c.dead_lettered.load(Relaxed)
            })
            .sum()
    }
}

/// A final job's worker stops when nothing of the job moved for this long, even if the
/// queue is not empty (another worker holds a message, or one waits for credentials).
pub const FINAL_DRAIN_QUIET: Duration = Duration::from_secs(30);

/// Runs the job's stages until the job is final, needs credentials, or `stop` turns
/// true. Returns the job's status at that point. The worker holds a lease on the job
/// for as long as it runs (renewed every [`HEARTBEAT_EVERY`], released when it returns).
pub async fn run(
    ctx: Arc<JobContext>,
    options: WorkerOptions,
    counters: WorkerCounters,
    stop: watch::Receiver<bool>,
) -> Result<JobStatus, WorkerError> {
    use std::sync::atomic::Ordering::Relaxed;
    let lease = Lease::new(&ctx.job, options.lease);
    ctx.store.take_lease(&lease).await?;
    counters.lease.taken.fetch_add(1, Relaxed);
    counters.lease.held.store(1, Relaxed);
    tracing::info!(job = %ctx.job, worker = %lease.worker_id, lease_ms = lease.duration.as_millis() as u64, "lease taken");
    let result = run_leased(ctx.clone(), options, counters.clone(), stop, &lease).await;
    counters.lease.held.store(0, Relaxed);
    if let Err(e) = ctx.store.release_lease(&lease).await {
        tracing::warn!(job = %ctx.job, error = %e, "could not release the lease; it runs out by itself");
    }
    result
}

/// Runs the stages with the job's record publisher beside them; the publisher stops
/// after the stages, so what their last transfers wrote is published too.
async fn run_leased(
    ctx: Arc<JobContext>,
    options: WorkerOptions,
    counters: WorkerCounters,
    stop: watch::Receiver<bool>,
    lease: &Lease,
) -> Result<JobStatus, WorkerError> {
    let (records_stop, records_rx) = watch::channel(false);
    let records = tokio::spawn({
        let ctx = ctx.clone();
        async move { ctx.records.run(&ctx.js, records_rx).await }
    });
    let status = run_stages(ctx, options, counters, stop, lease).await;
    let _ = records_stop.send(true);
    let _ = records.await;
    status
}

async fn run_stages(
    ctx: Arc<JobContext>,
    options: WorkerOptions,
    counters: WorkerCounters,
    mut stop: watch::Receiver<bool>,
    lease: &Lease,
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
                    Arc::new(ListStage {
                        ctx: ctx.clone(),
                        list_ahead: options.list_ahead,
                        stopping: shutdown_rx.clone(),
                    }),
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
    let mut last_activity = counters.activity();
    let mut quiet_since = std::time::Instant::now();
    let mut drained = false;
    let mut store_down_since: Option<std::time::Instant> = None;
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
        // The job store may be away for a moment (a PostgreSQL restart or failover):
        // the stages retry their own writes, and this loop asks again on the next tick.
        // Only an outage longer than STORE_OUTAGE_LIMIT ends the worker; the lease runs
        // out only if renewals fail for its length.
        let checked = async {
            if last_beat.elapsed() >= HEARTBEAT_EVERY {
                use std::sync::atomic::Ordering::Relaxed;
                match ctx.store.renew_lease(lease).await {
                    Ok(true) => {
                        counters.lease.renewed.fetch_add(1, Relaxed);
                    }
                    Ok(false) => {
                        counters.lease.lost.fetch_add(1, Relaxed);
                        counters.lease.taken.fetch_add(1, Relaxed);
                        tracing::warn!(job = %ctx.job, worker = %lease.worker_id, "lease had run out; taken again");
                    }
                    Err(e) => {
                        counters.lease.renew_errors.fetch_add(1, Relaxed);
                        tracing::warn!(job = %ctx.job, error = %e, "could not renew the lease; will retry");
                    }
                }
                last_beat = std::time::Instant::now();
            }
            ctx.store.job(&ctx.job).await
        }
        .await;
        let status = match checked {
            Ok(job) => {
                store_down_since = None;
                job.status
            }
            Err(e) => {
                let since = *store_down_since.get_or_insert_with(std::time::Instant::now);
                if !e.is_unavailable() || since.elapsed() >= STORE_OUTAGE_LIMIT {
                    return Err(e.into());
                }
                tracing::warn!(job = %ctx.job, error = %e, "job store unreachable; asking again");
                continue;
            }
        };
        if status == JobStatus::NeedsCredentials || status == JobStatus::Cancelled || *stop.borrow()
        {
            break status;
        }
        if status.is_final() {
            // A final job may still have work: a late duplicate's manifest rewrite, a
            // replayed dead letter (a recording, a webhook). It is done here rather than
            // left in the queue with nobody to take it; the worker stops once the job's
            // queue is empty, or when nothing of it moved for a while (a message another
            // worker holds, or one that keeps waiting for credentials).
            let activity = counters.activity();
            if activity != last_activity {
                last_activity = activity;
                quiet_since = std::time::Instant::now();
            }
            match topology::job_work_left(&ctx.js, &ctx.job, &options.stages).await {
                Ok(0) => {
                    drained = true;
                    break status;
                }
                Ok(_) if quiet_since.elapsed() >= FINAL_DRAIN_QUIET => break status,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(job = %ctx.job, error = %e, "could not see the job's queue; stopping");
                    break status;
                }
            }
        }
    };
    let _ = shutdown_tx.send(true);
    if status == JobStatus::Cancelled {
        // Cancelled: nothing in flight is worth finishing. Dropping the transfers
        // removes their partial files and naks their messages; the multipart uploads
        // they leave open are aborted from the journal below.
        tasks.abort_all();
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "a stage runner ended with an error during shutdown");
        }
    }
    if status == JobStatus::Cancelled {
        match ctx.destination.abort_left_open().await {
            Ok(n) => {
                tracing::info!(job = %ctx.job, aborted = n, "job cancelled; open uploads aborted")
            }
            Err(e) => {
                tracing::warn!(job = %ctx.job, error = %e, "could not abort every open upload of the cancelled job; a bucket lifecycle rule for incomplete uploads cleans them (docs/permissions.md)")
            }
        }
    }
    if status == JobStatus::Cancelled || (status.is_final() && drained) {
        // The job's consumers (and, for a cancelled job, its unstarted tasks) go with
        // it. Not while another worker may still hold a message of it: then the
        // consumers' inactivity limit and the stream's age limit clean up.
        topology::retire_job(&ctx.js, &ctx.job).await;
    }
    Ok(status)
}

/// What [`requeue_outstanding`] put back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requeued {
    pub listing: bool,
    pub fetches: usize,
}

/// Puts back in JetStream the work the job store says is outstanding: the listing from
/// its first page if it is not complete, a fetch task per pending recording, and the
/// manifest task if everything is settled. For `resume` after the queue lost the job's
/// tasks (a store restored from backup, a new NATS server). Everything it publishes is
/// idempotent: a task that is still queued has the same msg-id (JetStream drops the
/// copy within its duplicate window) and a recording fetched twice is written to the
/// same keys, files already exported are skipped.
pub async fn requeue_outstanding(ctx: &JobContext) -> Result<Requeued, WorkerError> {
    use pipeline::topology;
    let record = ctx.store.job(&ctx.job).await?;
    let mut out = Requeued::default();
    let failed = |e: topology::TopologyError| WorkerError::Requeue(e.to_string());
    if !record.listing_complete {
        topology::publish_first_list_task(&ctx.js, &ctx.job)
            .await
            .map_err(failed)?;
        out.listing = true;
    }
    for r in ctx.store.pending_recordings(&ctx.job).await? {
        topology::publish_fetch_task(&ctx.js, &ctx.job, &r.recording_id, r.recorded_at)
            .await
            .map_err(failed)?;
        out.fetches += 1;
    }
    ctx.maybe_request_manifest()
        .await
        .map_err(|e| WorkerError::Requeue(e.to_string()))?;
    Ok(out)
}
