//! Retention: how long portshift keeps what it stores, and the purge that enforces it.
//!
//! A job is kept for its organisation's retention period (14 days unless an admin chose
//! 1 to 365) after the last thing that happened to it; jobs of no organisation (the
//! CLI's) use the operator's `--retention-days`. Then everything keyed by the job goes:
//! its rows in every table, its JetStream messages and consumers, and its worker log.
//! Expired sessions, spent rate-limit rows and audit events past their own period
//! (400 days by default) go too.
//!
//! The purge runs in `serve` and `scheduler` every `--purge-interval-secs`, or once
//! from cron with `portshift purge --once`. Every statement deletes a bounded batch. It
//! is idempotent, and several servers may purge at once: each row is deleted (and
//! counted) by exactly one of them, and a job's own row goes last, only once nothing
//! else of it is left, so an interrupted purge is finished by the next one.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::JobId;
use crate::accounts::{Accounts, AccountsError};
use crate::store::{JobStore, StoreError};
use crate::topology::{self, TopologyError};

pub use crate::accounts::DEFAULT_RETENTION_DAYS;
/// The shortest retention period an admin may choose.
pub const MIN_RETENTION_DAYS: i64 = 1;
/// The longest retention period an admin may choose.
pub const MAX_RETENTION_DAYS: i64 = 365;
/// How long audit events are kept unless the operator chooses otherwise: a year and a
/// month, so a yearly review still sees the whole previous year.
pub const DEFAULT_AUDIT_RETENTION_DAYS: i64 = 400;
/// How often `serve` and `scheduler` purge unless the operator chooses otherwise.
pub const DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(600);
/// Rows one purge statement deletes at most.
pub const DEFAULT_PURGE_BATCH: i64 = 500;
/// A worker log with no job is only removed once it is this many seconds old (its
/// job's row may be about to be written).
const ORPHAN_LOG_AGE_S: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(
        "a retention period of {0} days is outside the allowed {MIN_RETENTION_DAYS} to {MAX_RETENTION_DAYS} days"
    )]
    OutOfBounds(i64),
    #[error("purge: {0}")]
    Store(#[from] StoreError),
    #[error("purge: {0}")]
    Accounts(#[from] AccountsError),
    #[error("purge of JetStream records: {0}")]
    Topology(#[from] TopologyError),
    #[error("purge could not remove the worker log {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
}

/// Checks an organisation's retention period against the documented bounds.
pub fn check_retention_days(days: i64) -> Result<i64, RetentionError> {
    if (MIN_RETENTION_DAYS..=MAX_RETENTION_DAYS).contains(&days) {
        Ok(days)
    } else {
        Err(RetentionError::OutOfBounds(days))
    }
}

/// The operator's retention settings.
#[derive(Clone, Debug)]
pub struct RetentionOptions {
    /// Days to keep jobs of no organisation (CLI jobs and schedules).
    pub default_days: i64,
    /// Days to keep audit events.
    pub audit_days: i64,
    /// Time between two purges of the loop.
    pub interval: Duration,
    /// Rows one statement deletes at most.
    pub batch: i64,
}

impl Default for RetentionOptions {
    fn default() -> Self {
        Self {
            default_days: DEFAULT_RETENTION_DAYS,
            audit_days: DEFAULT_AUDIT_RETENTION_DAYS,
            interval: DEFAULT_PURGE_INTERVAL,
            batch: DEFAULT_PURGE_BATCH,
        }
    }
}

/// What one purge deleted, by kind (the labels of `portshift_purged_total`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub jobs: u64,
    pub recordings: u64,
    pub files: u64,
    pub list_pages: u64,
    pub open_uploads: u64,
    pub schedule_runs: u64,
    pub schedule_exported: u64,
    pub stream_messages: u64,
    pub consumers: u64,
    pub worker_logs: u64,
    pub sessions: u64,
    pub rate_limits: u64,
    pub audit_events: u64,
}

impl PurgeReport {
    /// Each kind with its count, in a fixed order.
    pub fn pairs(&self) -> [(&'static str, u64); 13] {
        [
            ("jobs", self.jobs),
            ("recordings", self.recordings),
            ("files", self.files),
            ("list_pages", self.list_pages),
            ("open_uploads", self.open_uploads),
            ("schedule_runs", self.schedule_runs),
            ("schedule_exported", self.schedule_exported),
            ("stream_messages", self.stream_messages),
            ("consumers", self.consumers),
            ("worker_logs", self.worker_logs),
            ("sessions", self.sessions),
            ("rate_limits", self.rate_limits),
            ("audit_events", self.audit_events),
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.pairs().iter().all(|(_, n)| *n == 0)
    }

    fn add(&mut self, o: &PurgeReport) {
        self.jobs += o.jobs;
        self.recordings += o.recordings;
        self.files += o.files;
        self.list_pages += o.list_pages;
        self.open_uploads += o.open_uploads;
        self.schedule_runs += o.schedule_runs;
        self.schedule_exported += o.schedule_exported;
        self.stream_messages += o.stream_messages;
        self.consumers += o.consumers;
        self.worker_logs += o.worker_logs;
        self.sessions += o.sessions;
        self.rate_limits += o.rate_limits;
        self.audit_events += o.audit_events;
    }
}

/// Totals of every purge this process ran (for `/metrics`).
#[derive(Debug, Default)]
pub struct PurgeCounters {
    totals: Mutex<PurgeReport>,
    pub runs: AtomicU64,
    pub failures: AtomicU64,
}

impl PurgeCounters {
    pub fn totals(&self) -> PurgeReport {
        self.totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn add(&self, r: &PurgeReport) {
        self.totals.lock().unwrap_or_else(|p| p.into_inner()).add(r);
    }
}

/// Deletes what is past its retention period. See the module documentation.
#[derive(Clone)]
pub struct Purger {
    pub store: JobStore,
    /// JetStream, to purge jobs' messages and consumers (None: the store only).
    pub js: Option<jetstream::Context>,
    /// The folder of this machine's worker logs (`<data dir>/logs`), if any.
    pub logs_dir: Option<PathBuf>,
    pub options: RetentionOptions,
    pub counters: Arc<PurgeCounters>,
}

impl Purger {
    pub fn new(
        store: JobStore,
        js: Option<jetstream::Context>,
        logs_dir: Option<PathBuf>,
        options: RetentionOptions,
    ) -> Self {
        Self {
            store,
            js,
            logs_dir,
            options,
            counters: Arc::default(),
        }
    }

    /// Purges everything past its period at `now` (the loop passes the clock's time,
    /// tests a time of their choosing). What was deleted before an error still counts.
    pub async fn purge_once(&self, now: DateTime<Utc>) -> Result<PurgeReport, RetentionError> {
        let mut report = PurgeReport::default();
        let result = self.purge_into(now, &mut report).await;
        self.counters.add(&report);
        self.counters.runs.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        result.map(|()| report)
    }

    async fn purge_into(
        &self,
        now: DateTime<Utc>,
        report: &mut PurgeReport,
    ) -> Result<(), RetentionError> {
        let now_ms = now.timestamp_millis();
        let batch = self.options.batch.max(1);
        let store = &self.store;
        let accounts = Accounts::new(store);

        // Jobs. A job another purger holds stays a candidate until its rows are gone;
        // each is tried once per purge so this never spins on it.
        let mut tried = HashSet::new();
        loop {
            let due = store
                .expired_jobs(now_ms, self.options.default_days, batch)
                .await?;
            let fresh: Vec<JobId> = due
                .into_iter()
                .filter(|j| tried.insert(j.clone()))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for job in fresh {
                self.purge_job(&job, batch, report).await?;
            }
        }

        until_zero(
            || store.purge_finished_list_pages(batch),
            &mut report.list_pages,
        )
        .await?;
        until_zero(
            || store.purge_jobless_runs(now_ms, self.options.default_days, batch),
            &mut report.schedule_runs,
        )
        .await?;
        until_zero(
            || accounts.purge_expired_sessions(now_ms, batch),
            &mut report.sessions,
        )
        .await?;
        until_zero(
            || accounts.purge_rate_limits(now_ms, batch),
            &mut report.rate_limits,
        )
        .await?;
        until_zero(
            || accounts.purge_audit_events(now_ms, self.options.audit_days, batch),
            &mut report.audit_events,
        )
        .await?;
        self.sweep_orphan_logs(now, report).await
    }

    /// JetStream and the worker log first, the rows after, the job's own row last: an
    /// interrupted purge leaves the job a candidate, and the next purge finishes it.
    async fn purge_job(
        &self,
        job: &JobId,
        batch: i64,
        report: &mut PurgeReport,
    ) -> Result<(), RetentionError> {
        if let Some(js) = &self.js {
            let gone = topology::purge_job(js, job).await?;
            report.stream_messages += gone.messages;
            report.consumers += gone.consumers;
        }
        if let Some(dir) = &self.logs_dir {
            report.worker_logs += remove_log(&dir.join(worker_log_name(job)))?;
        }
        loop {
            let mut deleted = 0;
            for (table, n) in self.store.purge_job_progress(job, batch).await? {
                deleted += n;
                match table {
                    "recordings" => report.recordings += n,
                    "files" => report.files += n,
                    "list_pages" => report.list_pages += n,
                    _ => report.open_uploads += n,
                }
            }
            let (runs, exported) = self.store.purge_schedule_rows_of_job(job, batch).await?;
            report.schedule_runs += runs;
            report.schedule_exported += exported;
            if deleted + runs + exported == 0 {
                break;
            }
        }
        if self.store.delete_job_if_bare(job).await? {
            report.jobs += 1;
        }
        Ok(())
    }

    /// Worker logs whose job is gone: another server purged the job's rows, but the log
    /// was written on this machine.
    async fn sweep_orphan_logs(
        &self,
        now: DateTime<Utc>,
        report: &mut PurgeReport,
    ) -> Result<(), RetentionError> {
        let Some(dir) = &self.logs_dir else {
            return Ok(());
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(()); // no logs folder: nothing to sweep
        };
        for entry in entries.flatten().take(10_000) {
            let name = entry.file_name();
            let Some(job) = name
                .to_str()
                .and_then(|n| n.strip_prefix("worker-"))
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|id| id.parse::<JobId>().ok())
            else {
                continue;
            };
            let old_enough = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|m| {
                    DateTime::<Utc>::from(m) + chrono::Duration::seconds(ORPHAN_LOG_AGE_S) < now
                })
                .unwrap_or(false);
            if !old_enough {
                continue;
            }
            match self.store.job(&job).await {
                Err(StoreError::NoSuchJob(_)) => {
                    report.worker_logs += remove_log(&entry.path())?;
                }
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Purges every `interval` until `stop` turns true. A failed purge is logged and
    /// tried again at the next tick.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.options.interval.max(Duration::from_secs(1)));
        while !crate::shutdown::next_tick_or_stop(&mut tick, &mut stop).await {
            match self.purge_once(Utc::now()).await {
                Ok(r) if !r.is_empty() => tracing::info!(?r, "retention purge"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention purge failed; will retry"),
            }
        }
    }
}

/// The name of a job's worker log in the logs folder.
pub fn worker_log_name(job: &JobId) -> String {
    format!("worker-{job}.log")
}

fn remove_log(path: &std::path::Path) -> Result<u64, RetentionError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(1),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(RetentionError::Log {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Runs a bounded delete until it deletes nothing, adding up what it deleted.
async fn until_zero<F, Fut, E>(mut step: F, total: &mut u64) -> Result<(), RetentionError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, E>>,
    RetentionError: From<E>,
{
    loop {
        let n = step().await?;
        *total += n;
        if n == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_bounds_are_enforced() {
        assert_eq!(check_retention_days(14).unwrap(), 14);
        assert_eq!(check_retention_days(1).unwrap(), 1);
        assert_eq!(check_retention_days(365).unwrap(), 365);
        for bad in [0, -1, 366, 3650] {
            let err = check_retention_days(bad).unwrap_err().to_string();
            assert!(err.contains("1 to 365"), "{err}");
        }
    }
}
