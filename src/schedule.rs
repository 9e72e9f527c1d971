//! `portshift schedule ...` (create, list, pause, resume, delete) and `portshift
//! scheduler` (runs due schedules). Schedules hold credential references only.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::DateTime;
use pipeline::config::Services;
use pipeline::schedules::{CredentialRefs, ScheduleTemplate};
use stages::destination::DestinationUrl;
use tokio::sync::watch;

use crate::StateArgs;

#[derive(clap::Subcommand)]
pub enum ScheduleCommand {
    /// Create a recurring incremental sync.
    Create(Box<CreateArgs>),
    /// List schedules with their next and last runs.
    List {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Show one schedule's run history.
    Runs {
        /// The schedule id, as `schedule create` printed it or `schedule list` lists it.
        id: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Stop a schedule's runs until `schedule resume` (a run in progress finishes).
    Pause {
        id: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Let a paused schedule run again from its next slot (missed slots are caught up
    /// by the next run's incremental window).
    Resume {
        id: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Delete a schedule and its run history (exported files stay where they are).
    Delete {
        id: String,
        #[command(flatten)]
        state: StateArgs,
    },
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// A name to recognise the schedule by in `schedule list` and the console.
    #[arg(long)]
    name: String,
    /// Cron expression, e.g. "0 2 * * *" (minute hour day month weekday).
    #[arg(long)]
    cron: String,
    /// IANA time zone the cron expression is read in.
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// Where each run writes, in the URL grammar of `export --dest` (BigQuery included).
    #[arg(long)]
    dest: String,
    #[command(flatten)]
    source: crate::export::SourceArgs,
    /// The first run exports from this day (YYYY-MM-DD).
    #[arg(long)]
    start: String,
    /// Where each run finds the Chorus token: env:NAME or file:/path.
    #[arg(long)]
    chorus_token_ref: String,
    /// Where each run finds S3 keys: aws:default (the machine's chain or role), env:NAME or file:/path (JSON).
    #[arg(long)]
    s3_ref: Option<String>,
    /// POST a signed summary of each run here when it ends (needs --webhook-secret-ref).
    #[arg(long, requires = "webhook_secret_ref")]
    webhook_url: Option<String>,
    /// Where each run finds the webhook's HMAC key: env:NAME or file:/path.
    #[arg(long)]
    webhook_secret_ref: Option<String>,
    /// Where each run finds the Azure SAS token (azure:// destinations): env:NAME or file:/path.
    #[arg(long)]
    azure_ref: Option<String>,
    /// Where each run finds the Google service-account key JSON (gs://, BigQuery):
    /// env:NAME, file:/path, or gcp:workload-identity.
    #[arg(long)]
    gcs_ref: Option<String>,
    /// The console organisation that owns the schedule (the id in its /orgs/<id> URLs), so
    /// its owners and admins see and manage it there; "local" for CLI-only use.
    #[arg(long, default_value = "local")]
    org: String,
    /// Days before the watermark each run looks again for late recordings.
    #[arg(long, default_value_t = 7)]
    lookback_days: i64,
    /// After each run's manifest, read its files back and check them (needs read
    /// permission: docs/permissions.md).
    #[arg(long)]
    verify_after: bool,
    /// plain, or bagit: each run writes its own BagIt bag, portshift-bag-<job>/.
    #[arg(long, default_value = "plain")]
    layout: pipeline::Layout,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(clap::Args)]
pub struct SchedulerArgs {
    /// Seconds between looks for due schedules.
    #[arg(long, default_value_t = 15)]
    tick_secs: u64,
    /// Exports one organisation may have running at once (console and schedules
    /// together); a scheduled run beyond it is skipped and the next run catches up.
    #[arg(long, default_value_t = stages::scheduler::DEFAULT_MAX_WORKERS_PER_ORG, env = "PORTSHIFT_MAX_WORKERS_PER_ORG")]
    max_workers_per_org: u64,
    /// STS and Secrets Manager endpoint for schedules that use a cross-account role
    /// (an emulator such as moto; AWS's own when unset). Operator setting only.
    #[arg(long, env = "PORTSHIFT_AWS_ENDPOINT_URL")]
    aws_endpoint_url: Option<String>,
    /// STS region for cross-account roles.
    #[arg(long, default_value = "us-east-1")]
    aws_sts_region: String,
    #[command(flatten)]
    signing: crate::SigningArgs,
    #[command(flatten)]
    tenants: crate::TenantArgs,
    #[command(flatten)]
    budget: crate::export::BudgetArgs,
    #[command(flatten)]
    retention: crate::keep::RetentionArgs,
    #[command(flatten)]
    supervise: crate::SuperviseArgs,
    /// Serve Prometheus metrics (supervisor actions, live worker leases) at
    /// http://ADDR/metrics, e.g. 127.0.0.1:9465. Off unless given.
    #[arg(long, env = "PORTSHIFT_SCHEDULER_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    state: StateArgs,
}

async fn store(state: &StateArgs) -> anyhow::Result<pipeline::store::JobStore> {
    Ok(match &state.database_url {
        Some(url) => pipeline::store::JobStore::connect(url).await?,
        None => {
            std::fs::create_dir_all(state.data_dir())?;
            pipeline::store::JobStore::open_sqlite_in(&state.data_dir()).await?
        }
    })
}

fn when(ms: Option<i64>) -> String {
    ms.and_then(DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| "-".into())
}

pub async fn run(cmd: ScheduleCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ScheduleCommand::Create(a) => {
            let dest: DestinationUrl = a.dest.parse()?;
            let (chorus_url, kinds) = a.source.checked()?;
            let start = crate::export::parse_time(&a.start, false)?;
            let template = ScheduleTemplate {
                chorus_url,
                kinds,
                destination: dest.to_string(),
                webhook_url: a.webhook_url,
                lookback_s: a.lookback_days.max(0) * 24 * 3600,
                options: pipeline::ExportOptions {
                    verify_after: a.verify_after,
                    layout: a.layout,
                },
            };
            let refs = CredentialRefs {
                chorus_token: a.chorus_token_ref,
                s3: a.s3_ref,
                webhook_secret: a.webhook_secret_ref,
                azure: a.azure_ref,
                gcs: a.gcs_ref,
            };
            let s = store(&a.state)
                .await?
                .create_schedule(
                    &a.org,
                    &a.name,
                    &a.cron,
                    &a.tz,
                    &template,
                    &refs,
                    start,
                    pipeline::TrustLevel::Operator,
                )
                .await?;
            println!(
                "schedule {} created; first run {}",
                s.id,
                when(Some(s.next_run_ms))
            );
        }
        ScheduleCommand::List { state } => {
            let store = store(&state).await?;
            for s in store.schedules().await? {
                let last = store.schedule_runs(&s.id, 1).await?.into_iter().next();
                println!(
                    "{}  {:<20} {:<14} {:<16} {}  next {}  last {}  watermark {}",
                    s.id,
                    s.name,
                    s.cron,
                    s.timezone,
                    if s.paused { "paused " } else { "active " },
                    if s.paused {
                        "-".to_string()
                    } else {
                        when(Some(s.next_run_ms))
                    },
                    last.map(|r| format!("{} ({} files)", r.status, r.files.unwrap_or(0)))
                        .unwrap_or_else(|| "-".into()),
                    when(s.watermark_s.map(|w| w * 1000)),
                );
            }
        }
        ScheduleCommand::Runs { id, state } => {
            let store = store(&state).await?;
            store.schedule(&id).await?;
            for r in store.schedule_runs(&id, 100).await? {
                println!(
                    "{}  {:<24} job {:<32} files {:<6} bytes {:<12} {}",
                    when(Some(r.slot_ms)),
                    r.status,
                    r.job_id.unwrap_or_default(),
                    r.files.unwrap_or(0),
                    r.bytes.unwrap_or(0),
                    r.reason.unwrap_or_default()
                );
            }
        }
        // Each says what it did: a silent success reads like nothing happened.
        ScheduleCommand::Pause { id, state } => {
            store(&state).await?.set_schedule_paused(&id, true).await?;
            println!("schedule {id} paused; `portshift schedule resume {id}` runs it again");
        }
        ScheduleCommand::Resume { id, state } => {
            let store = store(&state).await?;
            store.set_schedule_paused(&id, false).await?;
            let s = store.schedule(&id).await?;
            println!(
                "schedule {id} resumed; next run {}",
                when(Some(s.next_run_ms))
            );
        }
        ScheduleCommand::Delete { id, state } => {
            store(&state).await?.delete_schedule(&id).await?;
            println!("schedule {id} deleted; its exported files stay where they are");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn scheduler(a: SchedulerArgs) -> anyhow::Result<ExitCode> {
    let signing_key = a.signing.material()?;
    let tenant_allowances = a.tenants.allowances()?;
    // Checked here; each worker gets the budget as its own options.
    a.budget.config()?;
    // It resolves every schedule's credentials (briefly) on the way to their workers.
    pipeline::secrets::harden_process().context("could not disable core dumps")?;
    let data_dir = a.state.data_dir();
    let services = Services::start(
        &data_dir,
        a.state.nats_url.as_deref(),
        a.state.database_url.as_deref(),
    )
    .await
    .context("starting the scheduler's services")?;
    let database_url =
        a.state.database_url.clone().unwrap_or_else(|| {
            format!("sqlite://{}", data_dir.join("portshift.sqlite3").display())
        });
    let exe = std::env::current_exe()
        .context("could not find the portshift binary to start workers with")?;
    let mut worker = pipeline::worker_process::WorkerCommand::new(
        exe,
        services.nats_url(),
        &database_url,
        data_dir.clone(),
    );
    worker.extra_args.extend(a.budget.worker_args());
    worker.extra_args.extend(a.supervise.worker_args());
    if let Some(endpoint) = &a.aws_endpoint_url {
        worker
            .extra_args
            .extend(["--aws-endpoint-url".to_string(), endpoint.clone()]);
    }
    let scheduler = stages::scheduler::Scheduler {
        store: services.store.clone(),
        js: services.js.clone(),
        worker,
        max_workers_per_org: a.max_workers_per_org.max(1),
        aws: stages::aws_role::AwsRoleOptions {
            endpoint_url: a.aws_endpoint_url.clone(),
            region: Some(a.aws_sts_region.clone()),
        },
        tick: Duration::from_secs(a.tick_secs.max(1)),
        name: std::env::var("HOSTNAME").unwrap_or_else(|_| "scheduler".into()),
        signing_key,
        tenant_allowances,
    };
    let (tx, rx) = watch::channel(false);
    // SIGTERM like Ctrl-C: no new runs; the runs in progress stop taking work and
    // finish or nak what they hold.
    tokio::spawn(async move {
        pipeline::shutdown::signal().await;
        let _ = tx.send(true);
    });
    let purger = pipeline::retention::Purger::new(
        services.store.clone(),
        Some(services.js.clone()),
        Some(a.state.data_dir().join("logs")),
        a.retention.options(),
    );
    let purge_loop = tokio::spawn(purger.run(rx.clone()));
    let counters = std::sync::Arc::new(pipeline::leases::SupervisorCounters::default());
    let metrics = match a.metrics_addr {
        Some(addr) => {
            let c = counters.clone();
            let store = services.store.clone();
            let render: stages::metrics::Render = std::sync::Arc::new(move || {
                let c = c.clone();
                let store = store.clone();
                Box::pin(async move {
                    let mut out = String::new();
                    c.render(&mut out, store.live_lease_count().await.ok());
                    out
                })
            });
            match stages::metrics::serve(addr, render, rx.clone()).await {
                Ok((bound, task)) => {
                    eprintln!("scheduler metrics on http://{bound}/metrics");
                    Some(task)
                }
                Err(e) => {
                    purge_loop.abort();
                    services.stop().await;
                    return Err(e.into());
                }
            }
        }
        None => None,
    };
    let supervision = a
        .supervise
        .every()
        .map(|every| stages::scheduler::Supervision {
            lease: a.supervise.lease(),
            every,
            counters,
        });
    eprintln!("scheduler running; Ctrl-C (or SIGTERM) stops it after the runs in progress");
    scheduler.run_supervised(supervision, rx).await;
    let _ = purge_loop.await;
    if let Some(task) = metrics {
        let _ = task.await;
    }
    services.stop().await;
    Ok(ExitCode::SUCCESS)
}
