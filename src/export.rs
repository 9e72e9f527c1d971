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
use pipeline::messages::ListTask;
use pipeline::secrets::Credentials;
use pipeline::topology::{self, Stage};
use pipeline::worker_process::{WorkerInput, WorkerSecrets};
use pipeline::{ExportKinds, FileKind, JobId, JobSpec, JobStatus};
use secrecy::ExposeSecret;
use secrecy::SecretString;
use stages::destination::{DestinationUrl, Tuning};
use stages::worker::{self, WorkerCounters, WorkerOptions};
use tokio::sync::watch;

use crate::StateArgs;

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
    /// gs://bucket/prefix (key file in GOOGLE_APPLICATION_CREDENTIALS). See docs/permissions.md.
    #[arg(long)]
    dest: String,
    #[arg(long, default_value = "https://chorus.ai/")]
    chorus_url: String,
    /// What to export per recording.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "media,transcript,metadata"
    )]
    include: Vec<String>,
    /// POST a signed job summary here when the job ends (secret: PORTSHIFT_WEBHOOK_SECRET).
    #[arg(long)]
    webhook_url: Option<String>,
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
    /// Seconds before a message whose worker went silent is delivered again.
    #[arg(long, default_value_t = 30)]
    ack_wait_secs: u64,
}

impl TuningArgs {
    fn options(&self) -> WorkerOptions {
        let mut options = WorkerOptions {
            fetch_concurrency: self.concurrency.max(1),
            tuning: Tuning {
                part_size: self.part_size_mib.max(1) * 1024 * 1024,
                parts_in_flight: self.parts_in_flight.max(1),
            },
            ..WorkerOptions::default()
        };
        options.runner.ack_wait = Duration::from_secs(self.ack_wait_secs.max(3));
        options
    }
}

#[derive(clap::Args)]
pub struct ResumeArgs {
    job: String,
    #[command(flatten)]
    tuning: TuningArgs,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(clap::Args)]
pub struct ReplayArgs {
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
    tuning: TuningArgs,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    job: String,
    /// STS and Secrets Manager endpoint for runs that read their credentials through a
    /// cross-account role (an emulator; AWS's own when unset).
    #[arg(long, env = "PORTSHIFT_AWS_ENDPOINT_URL")]
    aws_endpoint_url: Option<String>,
    #[command(flatten)]
    tuning: TuningArgs,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The export root, in the same URL grammar as `export --dest`.
    dest: String,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

#[derive(clap::Args)]
pub struct JobsArgs {
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

pub fn parse_kinds(list: &[String]) -> anyhow::Result<ExportKinds> {
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

fn credentials_from_env() -> anyhow::Result<Credentials> {
    let mut creds = Credentials::new(chorus_token()?);
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
    url::Url::parse(&a.chorus_url)
        .with_context(|| format!("--chorus-url {:?} is not a URL", a.chorus_url))?;
    let kinds = parse_kinds(&a.include)?;
    let creds = credentials_from_env()?;
    if a.webhook_url.is_some() && creds.webhook_secret.is_none() {
        bail!(
            "--webhook-url needs PORTSHIFT_WEBHOOK_SECRET (the HMAC key receivers verify the signature with)"
        );
    }
    let spec = JobSpec {
        chorus_url: a.chorus_url.clone(),
        from,
        to,
        kinds,
        destination: destination.to_string(),
        webhook_url: a.webhook_url.clone(),
        schedule: None,
    };
    let services = Services::start(
        &a.state.data_dir(),
        a.state.nats_url.as_deref(),
        a.state.database_url.as_deref(),
    )
    .await?;
    let job = JobId::new();
    let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    services
        .store
        .create_job(&job, "local", &who, &spec)
        .await?;
    topology::publish_json(
        &services.js,
        Stage::List.subject(&job),
        &topology::msg_id(&job, "list", &["0"]),
        &ListTask {
            job: job.clone(),
            page: 0,
            continuation_key: None,
        },
    )
    .await?;
    eprintln!(
        "Job {job}: exporting {} .. {} to {}",
        from.date_naive(),
        to.date_naive(),
        destination
    );
    let code = drive(&services, &job, creds, a.tuning.options(), true).await;
    services.stop().await;
    code
}

pub async fn resume(a: ResumeArgs) -> anyhow::Result<ExitCode> {
    let job: JobId = a.job.parse()?;
    let creds = credentials_from_env()?;
    let services = Services::start(
        &a.state.data_dir(),
        a.state.nats_url.as_deref(),
        a.state.database_url.as_deref(),
    )
    .await?;
    if services.store.reopen(&job).await? != JobStatus::Running {
        bail!(
            "job {job} already finished; nothing to resume (failed recordings are replayed with `portshift replay --job {job}`)"
        );
    }
    let code = drive(&services, &job, creds, a.tuning.options(), true).await;
    services.stop().await;
    code
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
    match &secrets {
        WorkerSecrets::Credentials(c) => c.redact_in_logs(),
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
    let options = a.tuning.options();
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
    let code = drive_prepared(&services, &job, ctx, options, false).await;
    services.stop().await;
    code
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
    drive_prepared(services, job, ctx, options, interactive).await
}

async fn drive_prepared(
    services: &Services,
    job: &JobId,
    ctx: std::sync::Arc<stages::context::JobContext>,
    options: WorkerOptions,
    interactive: bool,
) -> anyhow::Result<ExitCode> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping: finishing the files in flight (Ctrl-C again to abort)");
            let _ = stop_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let started = Instant::now();
    let progress =
        interactive.then(|| spawn_progress(services.store.clone(), job.clone(), started));
    let counters = WorkerCounters::default();
    let status = worker::run(ctx.clone(), options, counters.clone(), stop_rx).await;
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
    )
    .await
}

fn spawn_progress(
    store: pipeline::store::JobStore,
    job: JobId,
    started: Instant,
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
                b.set_message(format!(
                    "{} files  {}  {}/s{}",
                    p.files,
                    human_bytes(p.bytes),
                    human_bytes((p.bytes as f64 / secs) as u64),
                    if p.listing_complete {
                        ""
                    } else {
                        "  (listing…)"
                    }
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (bar, task)
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

async fn summary(
    services: &Services,
    job: &JobId,
    status: JobStatus,
    took: Duration,
    location: String,
    counters: &WorkerCounters,
    chorus: &stages::chorus::ChorusClient,
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
        if let Some(dir) = location.strip_prefix("file://") {
            println!("Check it: cd {dir} && sha256sum -c portshift-manifest.txt");
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
        services.stop().await;
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
        services.stop().await;
        return Ok(ExitCode::SUCCESS);
    }
    let creds = credentials_from_env()?;
    let code = drive(&services, &job, creds, a.tuning.options(), true).await;
    services.stop().await;
    code
}

pub async fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let url: DestinationUrl = a.dest.parse()?;
    let dest = stages::destination::open(&url, None, &Tuning::default()).await?;
    let started = Instant::now();
    let report = stages::verify::verify(dest.as_ref(), a.concurrency).await?;
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
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
