//! What portshift keeps and for how long: the retention options shared by `serve`,
//! `scheduler` and `purge`; `portshift purge` (the purge loop, or one pass for cron);
//! `portshift backup` and `portshift restore` of the job store, to and from a file or
//! storage (S3, Azure, GCS) through the destinations' own writers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use pipeline::config::Services;
use pipeline::retention::{
    DEFAULT_AUDIT_RETENTION_DAYS, DEFAULT_PURGE_BATCH, DEFAULT_RETENTION_DAYS, Purger,
    RetentionOptions,
};
use tokio::sync::watch;

use crate::StateArgs;

/// Retention options (see docs/operations.md).
#[derive(clap::Args, Clone, Debug)]
pub struct RetentionArgs {
    /// Days to keep jobs that belong to no organisation (CLI exports and CLI schedules);
    /// organisations choose their own period in the console (default 14).
    #[arg(long, env = "PORTSHIFT_RETENTION_DAYS", default_value_t = DEFAULT_RETENTION_DAYS,
          value_parser = clap::value_parser!(i64).range(1..=365))]
    pub retention_days: i64,
    /// Days to keep audit events.
    #[arg(long, env = "PORTSHIFT_AUDIT_RETENTION_DAYS", default_value_t = DEFAULT_AUDIT_RETENTION_DAYS,
          value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub audit_retention_days: i64,
    /// Seconds between two purges of the purge loop.
    #[arg(long, env = "PORTSHIFT_PURGE_INTERVAL_SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub purge_interval_secs: u64,
    /// Rows one purge statement deletes at most.
    #[arg(long, default_value_t = DEFAULT_PURGE_BATCH,
          value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub purge_batch: i64,
}

impl RetentionArgs {
    pub fn options(&self) -> RetentionOptions {
        RetentionOptions {
            default_days: self.retention_days,
            audit_days: self.audit_retention_days,
            interval: Duration::from_secs(self.purge_interval_secs),
            batch: self.purge_batch,
        }
    }
}

#[derive(clap::Args)]
pub struct PurgeArgs {
    /// Purge once and exit (for cron); without it, purge every --purge-interval-secs
    /// until Ctrl-C or SIGTERM.
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    retention: RetentionArgs,
    #[command(flatten)]
    state: StateArgs,
}

pub async fn purge(a: PurgeArgs) -> anyhow::Result<ExitCode> {
    let data_dir = a.state.data_dir();
    let services = Services::start(
        &data_dir,
        a.state.nats_url.as_deref(),
        a.state.database_url.as_deref(),
    )
    .await?;
    let purger = Purger::new(
        services.store.clone(),
        Some(services.js.clone()),
        Some(data_dir.join("logs")),
        a.retention.options(),
    );
    if a.once {
        let result = purger.purge_once(chrono::Utc::now()).await;
        services.stop().await;
        let report = result?;
        for (what, n) in report.pairs() {
            println!("{what:<18} {n}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        pipeline::shutdown::signal().await;
        let _ = tx.send(true);
    });
    eprintln!(
        "purging every {} s; Ctrl-C stops",
        a.retention.purge_interval_secs
    );
    purger.run(rx).await;
    services.stop().await;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct BackupArgs {
    /// Where the backup goes: a file path, or a destination URL with the file name last
    /// (s3://bucket/backups/portshift.sqlite3?region=…, azure://…, gs://…).
    #[arg(long)]
    to: String,
    /// The pg_dump program for a PostgreSQL store (default: pg_dump on PATH).
    #[arg(long, env = "PORTSHIFT_PG_DUMP", default_value = "pg_dump")]
    pg_dump: std::path::PathBuf,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup: a file path or a destination URL, as given to `backup --to`.
    #[arg(long)]
    from: String,
    /// The pg_restore program for a PostgreSQL store (default: pg_restore on PATH).
    #[arg(long, env = "PORTSHIFT_PG_RESTORE", default_value = "pg_restore")]
    pg_restore: std::path::PathBuf,
    #[command(flatten)]
    state: StateArgs,
}

/// The store's URL: --database-url, else SQLite in the data folder.
fn store_url(state: &StateArgs) -> anyhow::Result<String> {
    Ok(match &state.database_url {
        Some(url) => url.clone(),
        None => {
            let dir = state.data_dir();
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("could not create the data folder {}", dir.display()))?;
            format!("sqlite://{}", dir.join("portshift.sqlite3").display())
        }
    })
}

/// Where a backup lives: a local file, or an object in storage.
enum Place {
    File(PathBuf),
    Object {
        dest: Box<stages::destination::DestinationUrl>,
        name: String,
    },
}

fn place(s: &str) -> anyhow::Result<Place> {
    if let Some(path) = s.strip_prefix("file://") {
        return Ok(Place::File(PathBuf::from(path)));
    }
    if !s.contains("://") {
        return Ok(Place::File(PathBuf::from(s)));
    }
    let mut url = url::Url::parse(s).with_context(|| format!("{s:?} is not a URL"))?;
    let path = url.path().trim_end_matches('/').to_string();
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
    if name.is_empty() || (parent.is_empty() && url.scheme() != "s3" && url.scheme() != "gs") {
        bail!(
            "{s:?} names no file: end the URL with the backup's file name, e.g. s3://bucket/backups/portshift.sqlite3"
        );
    }
    let name = name.to_string();
    url.set_path(parent);
    let dest = url
        .as_str()
        .parse()
        .with_context(|| format!("{s:?} is not a storage URL portshift can write"))?;
    Ok(Place::Object {
        dest: Box::new(dest),
        name,
    })
}

/// A scratch file beside `near` (or in the temp folder), removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(near: Option<&std::path::Path>) -> Self {
        let stamp = format!(
            ".portshift-backup-{}-{}.partial",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        let dir = near
            .and_then(|p| p.parent())
            .filter(|d| !d.as_os_str().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        Self(dir.join(stamp))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub async fn backup(a: BackupArgs) -> anyhow::Result<ExitCode> {
    use std::os::unix::fs::PermissionsExt;
    let url = store_url(&a.state)?;
    let target = place(&a.to)?;
    let scratch = Scratch::new(match &target {
        Place::File(p) => Some(p.as_path()),
        Place::Object { .. } => None,
    });
    let tools = pipeline::backup::PgTools {
        pg_dump: a.pg_dump.clone(),
        ..Default::default()
    };
    let kind = pipeline::backup::backup(&url, &scratch.0, &tools).await?;
    // It holds e-mail addresses and password hashes: readable by its owner only.
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("could not restrict {}", scratch.0.display()))?;
    let bytes = std::fs::metadata(&scratch.0)?.len();
    match target {
        Place::File(path) => {
            std::fs::rename(&scratch.0, &path)
                .with_context(|| format!("could not move the backup to {}", path.display()))?;
            println!(
                "{kind:?} backup written to {} ({bytes} bytes)",
                path.display()
            );
        }
        Place::Object { dest, name } => {
            let d = stages::destination::open(&dest, None, &stages::destination::Tuning::default())
                .await?;
            let file = tokio::fs::File::open(&scratch.0).await?;
            let body = futures::stream::unfold(file, |mut f| async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 4 * 1024 * 1024];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(bytes::Bytes::from(buf)), f))
                    }
                    Err(e) => Some((Err(e), f)),
                }
            });
            let written = d
                .put(
                    &name,
                    Box::pin(body),
                    "application/octet-stream",
                    Some(bytes),
                )
                .await?;
            println!(
                "{kind:?} backup written to {} {} ({bytes} bytes)",
                d.location(),
                written.key
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn restore(a: RestoreArgs) -> anyhow::Result<ExitCode> {
    use futures::StreamExt;
    use std::io::Write;
    let url = store_url(&a.state)?;
    let tools = pipeline::backup::PgTools {
        pg_restore: a.pg_restore.clone(),
        ..Default::default()
    };
    let scratch;
    let from = match place(&a.from)? {
        Place::File(p) => p,
        Place::Object { dest, name } => {
            let d = stages::destination::open(&dest, None, &stages::destination::Tuning::default())
                .await?;
            let mut body = d.open(&name).await?;
            scratch = Scratch::new(None);
            let mut f = std::fs::File::create(&scratch.0)
                .with_context(|| format!("could not create {}", scratch.0.display()))?;
            while let Some(chunk) = body.next().await {
                f.write_all(&chunk?)?;
            }
            f.sync_all()?;
            scratch.0.clone()
        }
    };
    pipeline::backup::restore(&url, &from, &tools).await?;
    let store = pipeline::store::JobStore::connect(&url).await?;
    let jobs = store.recent_jobs(i64::MAX).await?.len();
    store.close().await;
    println!(
        "restored {} into {} ({jobs} jobs). Jobs that were running wait to be resumed: portshift resume <job>",
        a.from,
        pipeline::store::redact_url(&url)
    );
    Ok(ExitCode::SUCCESS)
}
