//! The `portshift` command line: a thin layer that parses arguments, gathers secrets
//! from the environment (never from argv), and calls into `pipeline` and `stages`.

mod export;
mod keep;
mod schedule;
mod signing;
mod sim;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "portshift",
    version,
    about = "Move Chorus call recordings, transcripts and metadata into storage you own."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where state lives; shared by the commands that run jobs.
#[derive(clap::Args, Clone, Debug)]
pub struct StateArgs {
    /// Data folder for the embedded job store and NATS server.
    #[arg(long, env = "PORTSHIFT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Use this NATS server (with JetStream) instead of starting one.
    #[arg(long, env = "PORTSHIFT_NATS_URL")]
    pub nats_url: Option<String>,
    /// Use this job store (postgres://... or sqlite://...) instead of SQLite in the data folder.
    #[arg(long, env = "PORTSHIFT_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl StateArgs {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(pipeline::config::default_data_dir)
    }
}

/// The operator's manifest signing key (minisign). Never stored: read at start and
/// handed to each worker in memory.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SigningArgs {
    /// Sign every manifest with this minisign secret key: a file path (file:/path) or
    /// env:NAME (a variable holding the key file's text). Password, if the key has one:
    /// PORTSHIFT_SIGNING_KEY_PASSWORD. Without it exports are written unsigned.
    #[arg(long, env = "PORTSHIFT_SIGNING_KEY", value_name = "FILE|env:NAME")]
    pub signing_key: Option<String>,
}

impl SigningArgs {
    pub fn material(&self) -> anyhow::Result<Option<pipeline::signing::SigningKeyMaterial>> {
        let Some(reference) = self.signing_key.as_deref().filter(|s| !s.trim().is_empty()) else {
            return Ok(None);
        };
        let reference: pipeline::signing::SigningKeyRef = reference.parse()?;
        Ok(Some(pipeline::signing::SigningKeyMaterial::load(
            &reference,
        )?))
    }
}

/// The supervisor loop of `serve` and `scheduler`, and the lease of the workers they
/// start (docs/operations.md: Worker leases and the supervisor).
#[derive(clap::Args, Clone, Debug)]
pub struct SuperviseArgs {
    /// Seconds between the supervisor's looks for abandoned jobs: running jobs none of
    /// whose workers holds a live lease any more.
    #[arg(
        long,
        default_value_t = 5,
        env = "PORTSHIFT_SUPERVISE_SECS",
        value_name = "SECS"
    )]
    pub supervise_secs: u64,
    /// Run no supervisor in this process (another `serve` or `scheduler` on the same job
    /// store does).
    #[arg(long)]
    pub no_supervise: bool,
    /// Seconds a worker's lease on its job lasts without renewal (workers renew it every
    /// 3 s; at least 6). Given to the workers this process starts; a job's heartbeat
    /// must be this old before the supervisor counts the job as abandoned.
    #[arg(
        long,
        default_value_t = 15,
        env = "PORTSHIFT_LEASE_SECS",
        value_name = "SECS"
    )]
    pub lease_secs: u64,
}

impl SuperviseArgs {
    pub fn lease(&self) -> std::time::Duration {
        pipeline::leases::lease_from_secs(self.lease_secs)
    }

    /// How often to supervise, or `None` with `--no-supervise`.
    pub fn every(&self) -> Option<std::time::Duration> {
        (!self.no_supervise).then(|| std::time::Duration::from_secs(self.supervise_secs.max(1)))
    }

    /// `--lease-secs N` for the `portshift worker` command lines this process runs.
    pub fn worker_args(&self) -> Vec<String> {
        vec!["--lease-secs".into(), self.lease().as_secs().to_string()]
    }
}

/// What the operator opens for console users' (tenants') jobs; nothing by default.
/// See docs/security.md.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TenantArgs {
    /// Let console users' jobs reach this origin (scheme://host:port) although it is not
    /// public HTTPS: the Chorus simulator, a local storage emulator, a private webhook
    /// receiver. Repeat for several.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origins: Vec<String>,
    /// Let console users export to file:// folders under this folder (trials, demos).
    #[arg(long, value_name = "DIR")]
    pub allow_file_root: Option<PathBuf>,
}

impl TenantArgs {
    pub fn allowances(&self) -> anyhow::Result<pipeline::tenancy::Allowances> {
        Ok(pipeline::tenancy::Allowances::new(
            &self.allow_origins,
            self.allow_file_root.as_deref(),
        )?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Export recordings from Chorus to a destination, with a progress bar.
    Export(export::ExportArgs),
    /// Resume a job that was interrupted or is waiting for credentials.
    Resume(export::ResumeArgs),
    /// List a job's dead letters, or replay them into their stages.
    Replay(export::ReplayArgs),
    /// Re-hash an export against its portshift-manifest.txt.
    Verify(export::VerifyArgs),
    /// List recent jobs.
    Jobs(export::JobsArgs),
    /// Run one job's stages; reads the credentials as JSON on standard input.
    Worker(export::WorkerArgs),
    /// Manage recurring incremental syncs.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Run due schedules (one run of each schedule at a time; safe with several schedulers).
    Scheduler(schedule::SchedulerArgs),
    /// Serve a local Chorus API simulator (demos and tests).
    ChorusSim(sim::SimArgs),
    /// Run the web console (HTTPS with --tls-cert/--tls-key, else HTTP behind a proxy).
    Serve(ServeArgs),
    /// Create a manifest signing key pair, or print the public key of one.
    #[command(subcommand)]
    SigningKey(signing::SigningKeyCommand),
    /// Write a consistent backup of the job store to a file or storage (online).
    Backup(keep::BackupArgs),
    /// Restore a backup into an empty job store.
    Restore(keep::RestoreArgs),
    /// Delete what is past its retention period (jobs, sessions, audit events, ...).
    Purge(keep::PurgeArgs),
    /// Write the JSON Schemas of messages and the manifest into a folder.
    Schemas {
        #[arg(default_value = "schemas")]
        dir: PathBuf,
    },
}

impl Command {
    /// The long-running commands, which wait for SIGINT or SIGTERM and stop gracefully
    /// (see `pipeline::shutdown`).
    fn stops_on_signal(&self) -> bool {
        match self {
            Command::Export(_)
            | Command::Resume(_)
            | Command::Replay(_)
            | Command::Worker(_)
            | Command::Scheduler(_)
            | Command::ChorusSim(_)
            | Command::Serve(_) => true,
            Command::Purge(a) => !a.once,
            Command::Verify(_)
            | Command::Jobs(_)
            | Command::Schedule(_)
            | Command::SigningKey(_)
            | Command::Backup(_)
            | Command::Restore(_)
            | Command::Schemas { .. } => false,
        }
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "PORTSHIFT_LISTEN")]
    listen: std::net::SocketAddr,
    /// PEM certificate chain: serve HTTPS (with HSTS) instead of plain HTTP.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Take the client address from X-Forwarded-For (only behind your own proxy).
    #[arg(long)]
    trust_proxy: bool,
    /// Public keys of retired signing keys (one or more minisign .pub files' contents in
    /// one file), published by key id so exports signed before a rotation stay verifiable.
    #[arg(long, env = "PORTSHIFT_RETIRED_SIGNING_KEYS")]
    retired_signing_keys: Option<PathBuf>,
    #[command(flatten)]
    signing: SigningArgs,
    #[command(flatten)]
    tenants: TenantArgs,
    #[command(flatten)]
    budget: export::BudgetArgs,
    #[command(flatten)]
    retention: keep::RetentionArgs,
    /// Exports one organisation may have running at once (each is a worker process;
    /// scheduled runs count too). One more is refused with a message saying so.
    #[arg(long, default_value_t = ui::DEFAULT_MAX_WORKERS_PER_ORG, env = "PORTSHIFT_MAX_WORKERS_PER_ORG")]
    max_workers_per_org: u64,
    #[command(flatten)]
    mail: MailArgs,
    #[command(flatten)]
    billing: BillingArgs,
    #[command(flatten)]
    supervise: SuperviseArgs,
    #[command(flatten)]
    state: StateArgs,
}

/// Billing through Stripe (docs/billing.md). On when PORTSHIFT_STRIPE_SECRET_KEY is set;
/// the secret key and the webhook signing secret come only from the environment.
#[derive(clap::Args)]
struct BillingArgs {
    /// Stripe's API base URL (a local Stripe for tests: http:// only to 127.0.0.1).
    #[arg(long, env = "PORTSHIFT_STRIPE_API_URL", default_value = ui::billing::STRIPE_API)]
    stripe_api_url: String,
    /// The Stripe price id of the team plan.
    #[arg(long, env = "PORTSHIFT_STRIPE_PRICE_TEAM")]
    stripe_price_team: Option<String>,
    /// The Stripe price id of the enterprise plan.
    #[arg(long, env = "PORTSHIFT_STRIPE_PRICE_ENTERPRISE")]
    stripe_price_enterprise: Option<String>,
}

impl BillingArgs {
    fn config(self, public_url: Option<String>) -> Option<ui::billing::StripeConfig> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let secret_key = env("PORTSHIFT_STRIPE_SECRET_KEY")?;
        Some(ui::billing::StripeConfig {
            api_url: self.stripe_api_url,
            secret_key: secret_key.into(),
            webhook_secret: env("PORTSHIFT_STRIPE_WEBHOOK_SECRET")
                .unwrap_or_default()
                .into(),
            prices: pipeline::billing::Prices {
                team: self.stripe_price_team,
                enterprise: self.stripe_price_enterprise,
            },
            public_url: public_url.unwrap_or_default(),
        })
    }
}

/// Outgoing e-mail of the console (sign-up links, invitations, password reset). The
/// relay's user name and password come only from the environment, never from flags.
#[derive(clap::Args)]
struct MailArgs {
    /// SMTP relay: smtp://host[:port] (STARTTLS required), smtps://host[:port] (TLS),
    /// or smtp://127.0.0.1:port?tls=none for a relay on this machine. Relay login from
    /// PORTSHIFT_SMTP_USERNAME and PORTSHIFT_SMTP_PASSWORD.
    #[arg(long, env = "PORTSHIFT_SMTP_URL", requires_all = ["mail_from", "public_url"])]
    smtp_url: Option<String>,
    /// The From address of the console's mails, e.g. "portshift <no-reply@example.com>".
    #[arg(long, env = "PORTSHIFT_MAIL_FROM")]
    mail_from: Option<String>,
    /// Where users reach the console (links in mails point here), e.g. https://portshift.example.com.
    #[arg(long, env = "PORTSHIFT_PUBLIC_URL")]
    public_url: Option<String>,
    /// Extra CA certificates (PEM) for a relay with a private CA.
    #[arg(long, env = "PORTSHIFT_SMTP_CA_FILE")]
    smtp_ca_file: Option<PathBuf>,
}

impl MailArgs {
    fn config(self) -> Option<ui::mail::MailConfig> {
        let smtp_url = self.smtp_url?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(ui::mail::MailConfig {
            smtp_url,
            from: self.mail_from.unwrap_or_default(),
            public_url: self.public_url.unwrap_or_default(),
            ca_file: self.smtp_ca_file,
            username: env("PORTSHIFT_SMTP_USERNAME"),
            password: env("PORTSHIFT_SMTP_PASSWORD").map(ui::mail::Zeroizing::new),
        })
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context;
    a.budget.config()?;
    let worker_exe = std::env::current_exe()
        .context("could not find the portshift binary to start workers with")?;
    ui::serve(ui::ServeOptions {
        listen: a.listen,
        data_dir: a.state.data_dir(),
        nats_url: a.state.nats_url.clone(),
        database_url: a.state.database_url.clone(),
        tls_cert: a.tls_cert,
        tls_key: a.tls_key,
        trust_proxy: a.trust_proxy,
        tenant_allowances: a.tenants.allowances()?,
        worker_exe,
        signing_key: a.signing.material()?,
        retired_public_keys: match &a.retired_signing_keys {
            Some(p) => pipeline::signing::read_public_keys(p)?,
            None => Vec::new(),
        },
        worker_args: a
            .budget
            .worker_args()
            .into_iter()
            .chain(a.supervise.worker_args())
            .collect(),
        supervise: a.supervise.every(),
        lease: a.supervise.lease(),
        retention: a.retention.options(),
        max_workers_per_org: a.max_workers_per_org,
        stripe: a.billing.config(a.mail.public_url.clone()),
        mail: a.mail.config(),
    })
    .await?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn main() -> std::process::ExitCode {
    pipeline::memory::bound_allocator();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTSHIFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // PORTSHIFT_LOG_FORMAT=json: one JSON object per line (for log collectors), with the
    // job, stage and recording of the message being worked on as fields.
    if std::env::var("PORTSHIFT_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(|| pipeline::secrets::RedactingStderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(|| pipeline::secrets::RedactingStderr)
            .init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        // Before anything starts a child: from here on SIGTERM is a request, never a
        // kill that would orphan the embedded nats-server. Only for the commands that
        // wait for it: the others keep the default, so Ctrl-C still stops them at once.
        if cli.command.stops_on_signal() {
            pipeline::shutdown::listen();
        }
        match cli.command {
            Command::Export(args) => export::export(args).await,
            Command::Resume(args) => export::resume(args).await,
            Command::Replay(args) => export::replay(args).await,
            Command::Verify(args) => export::verify(args).await,
            Command::Jobs(args) => export::jobs(args).await,
            Command::Worker(args) => export::worker(args).await,
            Command::ChorusSim(args) => sim::run(args).await,
            Command::Serve(args) => serve(args).await,
            Command::Schedule(cmd) => schedule::run(cmd).await,
            Command::Scheduler(args) => schedule::scheduler(args).await,
            Command::SigningKey(cmd) => signing::run(cmd),
            Command::Purge(args) => keep::purge(args).await,
            Command::Backup(args) => keep::backup(args).await,
            Command::Restore(args) => keep::restore(args).await,
            Command::Schemas { dir } => export::write_schemas(&dir),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", pipeline::secrets::redact(&error_text(&e)));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, each cause only once: many library errors
/// already quote their source in their own message, and printing the chain as well
/// said the same thing twice ("…does not exist: …does not exist").
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
