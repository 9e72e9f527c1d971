//! The `portshift` command line: a thin layer that parses arguments, gathers secrets
//! from the environment (never from argv), and calls into `pipeline` and `stages`.

mod export;
mod schedule;
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
    /// Write the JSON Schemas of messages and the manifest into a folder.
    Schemas {
        #[arg(default_value = "schemas")]
        dir: PathBuf,
    },
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
    #[command(flatten)]
    mail: MailArgs,
    #[command(flatten)]
    state: StateArgs,
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
        worker_exe,
        mail: a.mail.config(),
    })
    .await?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PORTSHIFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
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
            Command::Schemas { dir } => export::write_schemas(&dir),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
