//! The job commands: `export`, `resume`, `worker`, `verify`, `jobs`, `schemas`.
//! Secrets come from the environment or a prompt, never from argv, and stay in memory.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use pipeline::config::Services;
use pipeline::human::human_bytes;
use pipeline::rate_budget::BudgetConfig;
use pipeline::secrets::Credentials;
use pipeline::store::ExpectedTotal;
use pipeline::topology::{self, Stage};
use pipeline::worker_process::{WorkerInput, WorkerSecrets};
use pipeline::{ExportKinds, FileKind, JobId, JobSpec, JobStatus};
use secrecy::ExposeSecret;
use secrecy::SecretString;
use stages::destination::{DestinationUrl, Tuning};
use stages::worker::{self, WorkerCounters, WorkerOptions};
use tokio::sync::watch;

use crate::{SigningArgs, StateArgs};

/// Where the recordings come from and what of each is exported: `export` and
/// `schedule create` alike.
#[derive(clap::Args)]
pub struct SourceArgs {
    /// The Chorus API root (PORTSHIFT_CHORUS_URL; the simulator's for demos and tests).
    #[arg(
        long,
        env = "PORTSHIFT_CHORUS_URL",
        default_value = "https://chorus.ai/"
    )]
    chorus_url: String,
    /// What to export per recording.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "media,transcript,metadata"
    )]
    include: Vec<String>,
}

impl SourceArgs {
    /// The Chorus URL, checked, and the file kinds.
    pub fn checked(self) -> anyhow::Result<(String, ExportKinds)> {
        url::Url::parse(&self.chorus_url)
            .with_context(|| format!("--chorus-url {:?} is not a URL", self.chorus_url))?;
        Ok((self.chorus_url, parse_kinds(&self.include)?))
    }
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// First day (YYYY-MM-DD, UTC) or an RFC 3339 time.
    #[arg(long)]
    from: String,
    /// Last day, inclusive (YYYY-MM-DD, UTC) or an RFC 3339 time.
    #[arg(long)]
    to: String,
    /// Where the export goes: file:///path, s3://bucket/prefix?region=..&endpoint=..,
    /// azure://account/container/prefix (SAS in AZURE_STORAGE_SAS_TOKEN) or
    /// gs://bucket/prefix (key file in GOOGLE_APPLICATION_CREDENTIALS); any of them may add
    /// &bigquery=project.dataset.table. Write '#', '?', '%' and spaces in a path as %23,
    /// %3F, %25 and %20. See docs/permissions.md and docs/bigquery.md.
    #[arg(long)]
    dest: String,
    #[command(flatten)]
    source: SourceArgs,
    /// POST a signed job summary here when the job ends (secret: PORTSHIFT_WEBHOOK_SECRET).
    #[arg(long)]
    webhook_url: Option<String>,
    /// After the manifest, read every file back and check it against the manifest
    /// (needs read permission on the destination: docs/permissions.md).
    #[arg(long)]
    verify_after: bool,
    /// plain, or bagit: a BagIt 1.0 bag (payload under data/) that `bagit.py --validate` checks.
    #[arg(long, default_value = "plain")]
    layout: pipeline::Layout,
    #[command(flatten)]
    signing: SigningArgs,
    #[command(flatten)]
    tuning: TuningArgs,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(clap::Args, Clone)]
pub struct TuningArgs {
    /// Recordings transferred at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Multipart part size in MiB (S3 needs at least 5).
    #[arg(long, default_value_t = 8)]
    part_size_mib: usize,
    /// Parts of one file in flight at once.
    #[arg(long, default_value_t = 3)]
    parts_in_flight: usize,
    /// Files of at most this many MiB whose size Chorus announces go to S3 in one
    /// streamed request, without part buffers (0: always in parts).
    #[arg(long, default_value_t = Tuning::DEFAULT_SINGLE_REQUEST_MAX_MIB)]
    single_request_max_mib: u64,
    /// Seconds before a message whose worker went silent is delivered again.
    #[arg(long, default_value_t = 30)]
    ack_wait_secs: u64,
    /// Seconds this worker's lease on the job lasts without renewal (renewed every 3 s;
    /// at least 6). Once every lease of a running job ran out, a supervisor acts on it.
    #[arg(
        long,
        default_value_t = 15,
        env = "PORTSHIFT_LEASE_SECS",
        value_name = "SECS"
    )]
    lease_secs: u64,
    #[command(flatten)]
    budget: BudgetArgs,
}

/// The Chorus request budget, shared by every worker of every job on one Chorus account.
#[derive(clap::Args, Clone, Debug)]
pub struct BudgetArgs {
    /// Chorus API requests per second, for all workers of the account together (the rate
    /// halves on a 429 and recovers slowly up to this).
    #[arg(long, env = "PORTSHIFT_CHORUS_RATE", default_value_t = BudgetConfig::DEFAULT_RATE)]
    pub chorus_rate: f64,
    /// Chorus API requests allowed at once after a quiet spell.
    #[arg(long, env = "PORTSHIFT_CHORUS_BURST", default_value_t = BudgetConfig::DEFAULT_BURST)]
    pub chorus_burst: u32,
}

impl BudgetArgs {
    pub fn config(&self) -> anyhow::Result<BudgetConfig> {
        BudgetConfig::new(self.chorus_rate, self.chorus_burst)
            .context("check --chorus-rate and --chorus-burst")
    }

    /// The same options as arguments of a `portshift worker` command line.
    pub fn worker_args(&self) -> Vec<String> {
        vec![
            "--chorus-rate".into(),
            self.chorus_rate.to_string(),
            "--chorus-burst".into(),
            self.chorus_burst.to_string(),
        ]
    }
}

impl TuningArgs {
    fn options(&self) -> anyhow::Result<WorkerOptions> {
        let mut options = WorkerOptions {
            fetch_concurrency: self.concurrency.max(1),
            tuning: Tuning {
                part_size: self.part_size_mib.max(1) * 1024 * 1024,
                parts_in_flight: self.parts_in_flight.max(1),
                single_request_max: self.single_request_max_mib.saturating_mul(1024 * 1024),
            },
            ..WorkerOptions::default()
        };
        options.runner.ack_wait = Duration::from_secs(self.ack_wait_secs.max(3));
        options.lease = pipeline::leases::lease_from_secs(self.lease_secs);
        options.chorus_budget = self.budget.config()?;
        Ok(options)
    }
}

#[derive(clap::Args)]
pub struct ResumeArgs {
    /// The job id, as `export` printed it or `portshift jobs` lists it.
    job: String,
    #[command(flatten)]
    signing: SigningArgs,
    #[command(flatten)]
    tuning: TuningArgs,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The job whose dead letters to list or replay (its id, as `portshift jobs` lists it).
    #[arg(long)]
    job: String,
    /// Only this stage's dead letters (list, fetch, manifest, notify).
    #[arg(long)]
    stage: Option<String>,
    /// Replay every dead letter of the job (without it, they are only listed).
    #[arg(long, conflicts_with = "seq")]
    all: bool,
    /// Replay these dead letters (DLQ stream sequence numbers, as listed).
    #[arg(long, value_delimiter = ',')]
    seq: Vec<u64>,
    /// After replaying, run the job's worker here until it finishes (needs CHORUS_API_TOKEN).
    #[arg(long)]
    run: bool,
    #[command(flatten)]
    signing: SigningArgs,
    #[command(flatten)]
    tuning: TuningArgs,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The job to work on (the console and the scheduler start workers with it).
    #[arg(long)]
    job: String,
    /// Used only when the credentials document on standard input has no signing key.
    #[command(flatten)]
    signing: SigningArgs,
    /// STS and Secrets Manager endpoint for runs that read their credentials through a
    /// cross-account role (an emulator; AWS's own when unset).
    #[arg(long, env = "PORTSHIFT_AWS_ENDPOINT_URL")]
    aws_endpoint_url: Option<String>,
    /// Serve Prometheus metrics (lease, redeliveries, dead letters per stage) at
    /// http://ADDR/metrics, e.g. 127.0.0.1:9464. Off unless given.
    #[arg(long, env = "PORTSHIFT_WORKER_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    tuning: TuningArgs,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The export root, in the same URL grammar as `export --dest`.
    dest: String,
    /// The manifest to check (a scheduled run's is portshift-manifest-<job>.txt; with
    /// --chain, the newest run's). Default: portshift-manifest.txt, or with --chain on a
    /// local folder the newest run's manifest there.
    #[arg(long)]
    manifest: Option<String>,
    /// Check a schedule's whole chain of runs, newest to first: each run's files and
    /// the exact bytes of the run before it.
    #[arg(long)]
    chain: bool,
    /// Also check the manifest's minisign signature with these public keys (`.pub`
    /// files; the one whose key id the signature names is used). Fails if unsigned.
    #[arg(long = "public-key")]
    public_keys: Vec<std::path::PathBuf>,
    /// Files read and hashed at once (memory is bounded by this × a 256 KiB chunk).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

#[derive(clap::Args)]
pub struct JobsArgs {
    /// Show at most this many jobs, newest first.
    #[arg(long, default_value_t = 20)]
    limit: i64,
    #[command(flatten)]
    state: StateArgs,
}

pub fn parse_time(s: &str, end_of_day: bool) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(s, "%Y-%m-%d").with_context(|| {
        format!("{s:?} is not a date: use YYYY-MM-DD (e.g. 2024-01-31) or an RFC 3339 time")
    })?;
    let time = if end_of_day {
        NaiveTime::from_hms_opt(23, 59, 59)
    } else {
        NaiveTime::from_hms_opt(0, 0, 0)
    };
    Ok(day.and_time(time.unwrap_or_default()).and_utc())
}

fn parse_kinds(list: &[String]) -> anyhow::Result<ExportKinds> {
    let mut kinds = ExportKinds {
        media: false,
        transcript: false,
        metadata: false,
    };
    for item in list {
        match item
            .trim()
            .parse::<FileKind>()
            .map_err(anyhow::Error::msg)?
        {
            FileKind::Media => kinds.media = true,
            FileKind::Transcript => kinds.transcript = true,
            FileKind::Metadata => kinds.metadata = true,
        }
    }
    if !(kinds.media || kinds.transcript || kinds.metadata) {
        bail!("--include names nothing to export: use media, transcript and/or metadata");
    }
    Ok(kinds)
}

/// The Chorus token: `CHORUS_API_TOKEN`, else a hidden prompt on a terminal, else one
/// line of standard input.
fn chorus_token() -> anyhow::Result<SecretString> {
    if let Ok(t) = std::env::var("CHORUS_API_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(SecretString::from(t.trim().to_string()));
    }
    let token = if std::io::stdin().is_terminal() {
        rpassword::prompt_password("Chorus API token: ")
            .context("could not read the token from the terminal")?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("could not read the token from standard input")?;
        line
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!(
            "no Chorus API token: set CHORUS_API_TOKEN or type it at the prompt (Chorus: Settings > Personal settings > API access)"
        );
    }
    Ok(SecretString::from(token))
}

fn credentials_from_env(signing: &SigningArgs) -> anyhow::Result<Credentials> {
    // The key first: a bad key should fail before the token prompt.
    let signing_key = signing.material()?;
    let mut creds = Credentials::new(chorus_token()?);
    creds.signing_key = signing_key;
    // S3 keys come from the standard AWS chain inside the destination (env, profile, role).
    creds.webhook_secret = std::env::var("PORTSHIFT_WEBHOOK_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
        .map(SecretString::from);
    Ok(creds)
}

pub async fn export(a: ExportArgs) -> anyhow::Result<ExitCode> {
    let from = parse_time(&a.from, false)?;
    let to = parse_time(&a.to, true)?;
    if from > to {
        bail!("--from ({from}) is after --to ({to})");
    }
    let destination: DestinationUrl = a.dest.parse()?;
    let (chorus_url, kinds) = a.source.checked()?;
    let options = a.tuning.options()?;
    // Before the job exists: found later, it would leave a job that can never run.
    if matches!(destination.storage, stages::destination::Storage::S3(_))
        && a.tuning.part_size_mib < 5
    {
        bail!(
            "--part-size-mib {} is too small for S3, whose smallest part is 5 MiB: use 5 or more",
            a.tuning.part_size_mib
        );
    }
    let creds = credentials_from_env(&a.signing)?;
    if a.webhook_url.is_some() && creds.webhook_secret.is_none() {
        bail!(
            "--webhook-url needs PORTSHIFT_WEBHOOK_SECRET (the HMAC key receivers verify the signature with)"
        );
    }
    let spec = JobSpec {
        chorus_url,
        from,
        to,
        kinds,
        destination: destination.to_string(),
        webhook_url: a.webhook_url.clone(),
        schedule: None,
        options: pipeline::ExportOptions {
            verify_after: a.verify_after,
            layout: a.layout,
        },
        trust: pipeline::Trust::Operator,
    };
    let services = Services::start(
        &a.state.data_dir(),
        a.state.nats_url.as_deref(),
        a.state.database_url.as_deref(),
    )
    .await?;
    // Stop the services whatever the body returns: an early `?` must not leave the
    // embedded nats-server running after the command exits.
    let result = command_body(async {
        let job = JobId::new();
        let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
        pipeline::start::start_job(&services.store, &services.js, &job, "local", &who, &spec)
            .await?;
        eprintln!(
            "Job {job}: exporting {} .. {} to {}",
            from.date_naive(),
            to.date_naive(),
            destination
        );
        drive(&services, &job, creds, options, true).await
    })
    .await;
    services.stop().await;
    result
}

pub async fn resume(a: ResumeArgs) -> anyhow::Result<ExitCode> {
    let job: JobId = a.job.parse()?;
    let creds = credentials_from_env(&a.signing)?;
    let services = Services::start(
        &a.state.data_dir(),
        a.state.nats_url.as_deref(),
        a.state.database_url.as_deref(),
    )
    .await?;
    // Stop the services whatever the body returns: an early `?` must not leave the
    // embedded nats-server running after the command exits.
    let result = command_body(async {
        let status = services.store.reopen(&job).await?;
        if status != JobStatus::Running {
            // A finished job can still have queued work: a dead letter replayed into it
            // (its webhook, say). Run that; otherwise there is nothing to do.
            let left = topology::job_work_left(&services.js, &job, &Stage::ALL).await?;
            if left == 0 {
                bail!(
                    "job {job} already finished; nothing to resume (failed recordings are replayed with `portshift replay --job {job}`)"
                );
            }
            eprintln!("job {job} is {status}; running its {left} queued message(s)");
        }
        // The queue may have lost the job's tasks (a store restored from backup, a new NATS
        // server): put back what the store says is outstanding (idempotent).
        let ctx = worker::prepare(
            &job,
            services.store.clone(),
            services.js.clone(),
            &creds,
            &a.tuning.options()?,
        )
        .await?;
        let requeued = worker::requeue_outstanding(&ctx).await?;
        drop(ctx);
        if requeued.listing || requeued.fetches > 0 {
            eprintln!(
                "Job {job}: queued again {}{} recordings still to export",
                if requeued.listing {
                    "the listing and "
                } else {
                    ""
                },
                requeued.fetches
            );
        }
        drive(&services, &job, creds, a.tuning.options()?, true).await
    })
    .await;
    services.stop().await;
    result
}

/// The per-job worker process: credentials (and the service URLs, which may hold
/// passwords) arrive as one JSON document on standard input, so they appear in neither
/// argv nor the environment; everything the process logs is redacted of them.
pub async fn worker(a: WorkerArgs) -> anyhow::Result<ExitCode> {
    pipeline::secrets::harden_process().context("could not disable core dumps")?;
    let job: JobId = a.job.parse()?;
    // Sized up front: growing the buffer would leave copies of the secrets behind.
    let mut input = zeroize::Zeroizing::new(Vec::with_capacity(1 << 16));
    std::io::stdin()
        .read_to_end(&mut input)
        .context("could not read credentials from standard input")?;
    let WorkerInput {
        nats_url,
        database_url,
        secrets,
    } = WorkerInput::from_json(&input)?;
    drop(input);
    let mut secrets = secrets;
    match &mut secrets {
        WorkerSecrets::Credentials(c) => {
            c.redact_in_logs();
            if c.signing_key.is_none() {
                c.signing_key = a.signing.material()?;
            }
        }
        WorkerSecrets::AwsRole(g) => g.redact_in_logs(),
    }
    let nats_url = nats_url
        .map(|u| u.expose_secret().to_string())
        .or(a.state.nats_url.clone());
    let database_url = database_url
        .map(|u| u.expose_secret().to_string())
        .or(a.state.database_url.clone());
    for url in nats_url.iter().chain(database_url.iter()) {
        pipeline::secrets::register_url_password(url);
    }
    let Some(nats_url) = nats_url.as_deref() else {
        bail!(
            "a worker joins an existing job: give --nats-url (or PORTSHIFT_NATS_URL) of the server that runs it"
        );
    };
    let services =
        Services::start(&a.state.data_dir(), Some(nats_url), database_url.as_deref()).await?;
    if services.store.job(&job).await?.status == JobStatus::NeedsCredentials {
        services
            .store
            .set_status(&job, JobStatus::Running, None)
            .await?;
    }
    let options = a.tuning.options()?;
    let aws = stages::aws_role::AwsRoleOptions {
        endpoint_url: a.aws_endpoint_url.clone(),
        region: None,
    };
    let prepared = async {
        let creds = match secrets {
            WorkerSecrets::Credentials(c) => c,
            WorkerSecrets::AwsRole(grant) => {
                stages::aws_role::credentials_from_grant(&grant, &aws).await?
            }
        };
        let ctx = worker::prepare(
            &job,
            services.store.clone(),
            services.js.clone(),
            &creds,
            &options,
        )
        .await?;
        drop(creds);
        anyhow::Ok(ctx)
    }
    .await;
    let ctx = match prepared {
        Ok(ctx) => ctx,
        Err(e) => {
            // Nothing can run with these credentials: say why on the job, where the
            // console and the scheduler's run history show it.
            let reason = pipeline::secrets::redact(&e.to_string());
            let _ = services
                .store
                .set_status(&job, JobStatus::Failed, Some(&reason))
                .await;
            services.stop().await;
            bail!("{reason}");
        }
    };
    let counters = WorkerCounters::default();
    let (stop_metrics, metrics_stopped) = watch::channel(false);
    let metrics = match a.metrics_addr {
        Some(addr) => {
            let c = counters.clone();
            let id = job.clone();
            let render: stages::metrics::Render = std::sync::Arc::new(move || {
                let mut out = format!(
                    "# HELP portshift_worker_info The job this worker serves.\n# TYPE portshift_worker_info gauge\nportshift_worker_info{{job=\"{id}\"}} 1\n"
                );
                c.render_metrics(&mut out);
                Box::pin(std::future::ready(out))
            });
            match stages::metrics::serve(addr, render, metrics_stopped).await {
                Ok((bound, task)) => {
                    tracing::info!(%bound, "serving /metrics");
                    Some(task)
                }
                Err(e) => {
                    services.stop().await;
                    return Err(e.into());
                }
            }
        }
        None => None,
    };
    let code = drive_prepared(&services, &job, ctx, options, counters, false).await;
    let _ = stop_metrics.send(true);
    if let Some(task) = metrics {
        let _ = task.await;
    }
    services.stop().await;
    code
}

/// Fixes an async block's output type, so `?` and `return` inside it know it (an
/// async block otherwise has no declared return type).
fn command_body<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(body: F) -> F {
    body
}

async fn drive(
    services: &Services,
    job: &JobId,
    creds: Credentials,
    options: WorkerOptions,
    interactive: bool,
) -> anyhow::Result<ExitCode> {
    let ctx = worker::prepare(
        job,
        services.store.clone(),
        services.js.clone(),
        &creds,
        &options,
    )
    .await?;
    drop(creds);
    drive_prepared(
        services,
        job,
        ctx,
        options,
        WorkerCounters::default(),
        interactive,
    )
    .await
}

async fn drive_prepared(
    services: &Services,
    job: &JobId,
    ctx: std::sync::Arc<stages::context::JobContext>,
    options: WorkerOptions,
    counters: WorkerCounters,
    interactive: bool,
) -> anyhow::Result<ExitCode> {
    // SIGINT (Ctrl-C) and SIGTERM alike: the first stops taking work and lets the
    // transfers in flight finish; a second abandons them (their messages are nakked and
    // redelivered to the next worker). Either way the caller still stops the services,
    // so the embedded nats-server never outlives this process.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (abort_tx, abort_rx) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::spawn(async move {
        pipeline::shutdown::nth(1).await;
        eprintln!("\nstopping: finishing the files in flight (Ctrl-C again to abort)");
        let _ = stop_tx.send(true);
        pipeline::shutdown::nth(2).await;
        let _ = abort_tx.send(());
    });
    let started = Instant::now();
    let budget = ctx.chorus.budget().cloned();
    let dates = (ctx.spec.from.timestamp(), ctx.spec.to.timestamp());
    let progress = interactive
        .then(|| spawn_progress(services.store.clone(), job.clone(), started, dates, budget));
    let status = tokio::select! {
        s = worker::run(ctx.clone(), options, counters.clone(), stop_rx) => s,
        _ = abort_rx => {
            eprintln!("aborted: the transfers in flight will be redelivered");
            Ok(JobStatus::Running)
        }
    };
    listener.abort();
    if let Some((bar, task)) = progress {
        task.abort();
        bar.finish_and_clear();
    }
    let status = status?;
    summary(
        services,
        job,
        status,
        started.elapsed(),
        ctx.destination.location(),
        &counters,
        &ctx.chorus,
        ctx.signing_key.as_ref().map(|k| k.key_id()),
    )
    .await
}

/// The progress bar of an interactive export. `dates` is the job's date range (Unix
/// seconds), to estimate the total while the listing is still running.
fn spawn_progress(
    store: pipeline::store::JobStore,
    job: JobId,
    started: Instant,
    dates: (i64, i64),
    budget: Option<std::sync::Arc<pipeline::rate_budget::RequestBudget>>,
) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} recordings  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let b = bar.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(p) = store.progress(&job).await {
                b.set_length(p.listed);
                b.set_position(p.exported + p.skipped + p.dead);
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let eta = p
                    .time_left(dates, secs)
                    .map(|(left, expected)| {
                        let about = match expected {
                            ExpectedTotal::Known(_) => "",
                            ExpectedTotal::Estimated { .. } => "~",
                        };
                        format!("  ETA {about}{}{}", human_duration(left), expected.note())
                    })
                    .unwrap_or_default();
                let waiting = match &budget {
                    Some(budget) if budget.waiting_now() > 0 => format!(
                        "  waiting for Chorus rate limit ({:.1} req/s)",
                        budget.view().rate
                    ),
                    _ => String::new(),
                };
                b.set_message(format!(
                    "{} files  {}  {}/s{}{}{}",
                    p.files,
                    human_bytes(p.bytes),
                    human_bytes((p.bytes as f64 / secs) as u64),
                    if p.listing_complete {
                        ""
                    } else {
                        "  (listing…)"
                    },
                    eta,
                    waiting
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (bar, task)
}

/// `1 h 02 min`, `3 min 05 s`, `42 s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

#[allow(clippy::too_many_arguments)]
async fn summary(
    services: &Services,
    job: &JobId,
    status: JobStatus,
    took: Duration,
    location: String,
    counters: &WorkerCounters,
    chorus: &stages::chorus::ChorusClient,
    ctx_signing: Option<String>,
) -> anyhow::Result<ExitCode> {
    use std::sync::atomic::Ordering::Relaxed;
    let store = &services.store;
    let p = store.progress(job).await?;
    let record = store.job(job).await?;
    let secs = took.as_secs_f64().max(0.001);
    println!(
        "Job {job}: {status} in {:.1} s: {} recordings exported, {} skipped, {} failed; {} files, {} ({}/s)",
        secs,
        p.exported,
        p.skipped,
        p.dead,
        p.files,
        human_bytes(p.bytes),
        human_bytes((p.bytes as f64 / secs) as u64)
    );
    println!(
        "  retries: {} Chorus requests, {} stage messages; dead-lettered: {}",
        chorus.retries(),
        counters.fetch.retried.load(Relaxed) + counters.list.retried.load(Relaxed),
        counters.fetch.dead_lettered.load(Relaxed) + counters.list.dead_lettered.load(Relaxed)
    );
    let problems = store.problems(job).await?;
    for (label, wanted) in [("Skipped", "skipped"), ("Failed", "dead")] {
        let list: Vec<_> = problems.iter().filter(|p| p.status == wanted).collect();
        if !list.is_empty() {
            println!("{label} ({}):", list.len());
            for p in list.iter().take(20) {
                println!("  {}: {}", p.recording_id, p.reason);
            }
            if list.len() > 20 {
                println!(
                    "  … and {} more (see portshift-manifest.json)",
                    list.len() - 20
                );
            }
        }
    }
    if let (Some(key), Some(sha)) = (&record.manifest_key, &record.manifest_sha256) {
        println!("Manifest: {key} (sha256 {sha})");
        let name = key.rsplit('/').next().unwrap_or(key);
        match &ctx_signing {
            Some(id) => println!(
                "Signed: {name}.minisig (minisign key {id}); check it with `minisign -Vm {name} -p portshift-signing-key.pub` (`portshift signing-key public` prints the key)"
            ),
            None => println!("{}", stages::manifest::UNSIGNED_NOTE),
        }
        if let Some(dir) = location.strip_prefix("file://") {
            // Quoted for the shell when the folder name needs it.
            let dir = if dir
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@".contains(c))
            {
                dir.to_string()
            } else {
                format!("'{}'", dir.replace('\'', r"'\''"))
            };
            println!("Check it: cd {dir} && sha256sum -c {name}");
        }
    }
    Ok(match status {
        JobStatus::Finished => ExitCode::SUCCESS,
        JobStatus::NeedsCredentials => {
            eprintln!(
                "error: the job stopped: {}\nFix it, then run: portshift resume {job}",
                record.status_reason.unwrap_or_default()
            );
            ExitCode::from(3)
        }
        JobStatus::Running => {
            eprintln!("interrupted; continue with: portshift resume {job}");
            ExitCode::from(130)
        }
        JobStatus::Failed => {
            eprintln!(
                "error: the job failed: {}",
                record.status_reason.unwrap_or_default()
            );
            ExitCode::FAILURE
        }
        JobStatus::FinishedWithFailures | JobStatus::Cancelled => {
            eprintln!(
                "error: {} recordings failed after every retry; replay them with `portshift replay --job {job}` (docs/replay.md)",
                p.dead
            );
            ExitCode::FAILURE
        }
    })
}

pub async fn replay(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let job: JobId = a.job.parse()?;
    let stage = match a.stage.as_deref() {
        None => None,
        Some(s) => Some(Stage::parse(s).with_context(|| {
            format!("unknown stage {s:?}: use list, fetch, manifest or notify")
        })?),
    };
    let services = Services::start(
        &a.state.data_dir(),
        a.state.nats_url.as_deref(),
        a.state.database_url.as_deref(),
    )
    .await?;
    // Stop the services whatever the body returns: an early `?` must not leave the
    // embedded nats-server running after the command exits.
    let result = command_body(async {
        // A mistyped id must not read as "no dead letters".
        services.store.job(&job).await?;
        let letters = pipeline::replay::dead_letters(&services.js, &job, stage).await?;
        let chosen: Vec<_> = letters
            .iter()
            .filter(|l| a.all || a.seq.contains(&l.seq))
            .collect();
        if chosen.is_empty() {
            if letters.is_empty() {
                println!("job {job} has no dead letters");
            }
            for l in &letters {
                println!(
                    "{:>8}  {:<8} attempts {:<3} {}",
                    l.seq, l.stage, l.attempts, l.error
                );
            }
            if !letters.is_empty() {
                println!("replay them with: portshift replay --job {job} --all   (or --seq N,M)");
            }
            return Ok(ExitCode::SUCCESS);
        }
        for l in &chosen {
            pipeline::replay::replay(&services.js, &job, l).await?;
            println!("replayed {} ({} stage): {}", l.seq, l.stage, l.error);
        }
        services.store.reopen(&job).await?;
        if !a.run {
            println!(
                "{} message(s) back in their stage; run the job with: portshift resume {job}",
                chosen.len()
            );
            return Ok(ExitCode::SUCCESS);
        }
        let creds = credentials_from_env(&a.signing)?;
        drive(&services, &job, creds, a.tuning.options()?, true).await
    })
    .await;
    services.stop().await;
    result
}

pub async fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let url: DestinationUrl = a.dest.parse()?;
    let dest = stages::destination::open(&url, None, &Tuning::default()).await?;
    let started = Instant::now();
    let mut keys = Vec::new();
    for p in &a.public_keys {
        keys.extend(pipeline::signing::read_public_keys(p)?);
    }
    if a.chain {
        return verify_chain(&a, &url, dest.as_ref(), &keys).await;
    }
    let manifest = a
        .manifest
        .clone()
        .unwrap_or_else(|| stages::manifest::MANIFEST_TXT.to_string());
    let mut signature_ok = true;
    if !keys.is_empty() {
        signature_ok = check_signature(dest.as_ref(), &manifest, &keys).await?;
    }
    let report = stages::verify::verify_manifest(dest.as_ref(), &manifest, a.concurrency).await?;
    for m in &report.mismatched {
        println!("{m}: FAILED (content differs from the manifest)");
    }
    for m in &report.missing {
        println!("{m}: MISSING");
    }
    println!(
        "{} files, {} checked in {:.1} s: {}",
        report.checked,
        human_bytes(report.bytes),
        started.elapsed().as_secs_f64(),
        if report.ok() {
            "all match the manifest".to_string()
        } else {
            format!(
                "{} differ, {} missing",
                report.mismatched.len(),
                report.missing.len()
            )
        }
    );
    Ok(if report.ok() && signature_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `verify --chain`: every run of a schedule's chain, newest first.
async fn verify_chain(
    a: &VerifyArgs,
    url: &DestinationUrl,
    dest: &dyn stages::destination::Destination,
    keys: &[pipeline::signing::PublicKey],
) -> anyhow::Result<ExitCode> {
    let head = match (&a.manifest, &url.storage) {
        (Some(m), _) => m.clone(),
        (None, stages::destination::Storage::Local { root }) => {
            // Run manifests are named by job id, and job ids (UUIDv7) sort by time.
            let mut names: Vec<String> = std::fs::read_dir(root)
                .with_context(|| format!("reading {}", root.display()))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| stages::verify::is_run_manifest(n))
                .collect();
            names.sort();
            names.pop().with_context(|| {
                format!(
                    "no portshift-manifest-<job>.txt in {}: is this a schedule's destination?",
                    root.display()
                )
            })?
        }
        (None, _) => bail!(
            "give --manifest portshift-manifest-<job>.txt of the newest run (`portshift schedule runs <id>` lists the jobs): portshift does not list your bucket"
        ),
    };
    let mut all_ok = true;
    let links = stages::verify::verify_chain(dest, &head, a.concurrency).await;
    for link in &links {
        if !keys.is_empty() && !check_signature(dest, &link.manifest, keys).await? {
            all_ok = false;
        }
        match &link.report {
            Err(e) => {
                all_ok = false;
                println!("{}: FAILED: {e}", link.manifest);
            }
            Ok(r) => {
                for m in &r.mismatched {
                    println!(
                        "{}: {m}: FAILED (content differs from the manifest)",
                        link.manifest
                    );
                }
                for m in &r.missing {
                    println!("{}: {m}: MISSING", link.manifest);
                }
                if r.ok() {
                    println!("{}: {} files OK", link.manifest, r.checked);
                } else {
                    all_ok = false;
                }
            }
        }
    }
    println!(
        "chain of {} run manifest(s) from {head}: {}",
        links.len(),
        if all_ok { "intact" } else { "BROKEN" }
    );
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Checks `<manifest>.minisig` with the key it names, and that its trusted comment's
/// JSON hash matches the manifest JSON beside it. Prints the outcome; false if it fails.
async fn check_signature(
    dest: &dyn stages::destination::Destination,
    manifest: &str,
    keys: &[pipeline::signing::PublicKey],
) -> anyhow::Result<bool> {
    use sha2::Digest;
    let sig_name = pipeline::signing::signature_name(manifest);
    let sig = match stages::verify::read_small(dest, &sig_name).await {
        Ok(s) => String::from_utf8_lossy(&s).to_string(),
        Err(e) => {
            println!(
                "{sig_name}: MISSING: the manifest is unsigned or its signature was removed ({e})"
            );
            return Ok(false);
        }
    };
    let id = pipeline::signing::signature_key_id(&sig)?;
    let Some(key) = keys.iter().find(|k| k.key_id() == id) else {
        println!(
            "{sig_name}: signed by key {id}, which none of the given public keys is (fetch it from {}/{id}.pub)",
            pipeline::signing::PUBLIC_KEYS_DIR
        );
        return Ok(false);
    };
    let text = stages::verify::read_small(dest, manifest).await?;
    let comment = match key.verify(&text, &sig) {
        Ok(c) => c,
        Err(e) => {
            println!("{manifest}: SIGNATURE FAILED with key {id}: {e}");
            return Ok(false);
        }
    };
    println!("{manifest}: signature OK (key {id}): {comment}");
    let json_name = manifest
        .strip_suffix(".txt")
        .map(|s| format!("{s}.json"))
        .unwrap_or_default();
    if let Some(want) = comment
        .split_whitespace()
        .find_map(|w| w.strip_prefix("manifest_json_sha256="))
    {
        let json = stages::verify::read_small(dest, &json_name).await?;
        if hex::encode(sha2::Sha256::digest(&json)) != want {
            println!("{json_name}: FAILED: differs from the SHA-256 in the signed comment");
            return Ok(false);
        }
        println!("{json_name}: OK (matches the signed comment)");
    }
    Ok(true)
}

pub async fn jobs(a: JobsArgs) -> anyhow::Result<ExitCode> {
    let store = match &a.state.database_url {
        Some(url) => pipeline::store::JobStore::connect(url).await?,
        None => pipeline::store::JobStore::open_sqlite_in(&a.state.data_dir()).await?,
    };
    store
        .expire_silent_workers(worker::WORKER_GONE_AFTER)
        .await?;
    for j in store.recent_jobs(a.limit).await? {
        let p = store.progress(&j.id).await?;
        let created = DateTime::from_timestamp_millis(j.created_ms)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        println!(
            "{}  {:<22} {}  {} exported, {} skipped, {} failed, {}  {}",
            j.id,
            j.status.as_str(),
            created,
            p.exported,
            p.skipped,
            p.dead,
            human_bytes(p.bytes),
            j.spec.destination
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn write_schemas(dir: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut all = pipeline::schema::message_schemas();
    all.push(stages::manifest::manifest_schema());
    for (name, body) in all {
        std::fs::write(dir.join(name), body).with_context(|| format!("writing {name}"))?;
    }
    Ok(ExitCode::SUCCESS)
}
