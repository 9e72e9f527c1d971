//! The job store: jobs, per-recording and per-file progress, over sqlx with either
//! SQLite (the embedded default) or PostgreSQL, chosen by the URL. One portable set of
//! migrations serves both, and one contract test suite runs against both.
//!
//! Completion is derived from rows, never guessed: a job is settled when its listing is
//! complete and no recording is still pending.

use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::{FileKind, JobId, JobSpec, JobStatus};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "could not open the job store at {url}: {source}. Check PORTSHIFT_DATABASE_URL (or --database-url) and that the database is reachable."
    )]
    Connect { url: String, source: sqlx::Error },
    #[error(
        "could not migrate the job store: {0}. The database may belong to a newer portshift; upgrade portshift."
    )]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("job store query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("the job store holds a record portshift cannot read: {0}")]
    Corrupt(String),
    #[error("no job {0} in the job store: check the id (`portshift jobs` lists them)")]
    NoSuchJob(JobId),
    /// Another process moved the job on first (e.g. cancelled or finished it).
    #[error("job {job} is {from}; it cannot become {to}")]
    IllegalTransition {
        job: JobId,
        from: JobStatus,
        to: JobStatus,
    },
    #[error(
        "the job store URL asks for sslmode={mode}, which encrypts without checking the server's certificate. \
         Use sslmode=verify-full (with sslrootcert=<CA file> for a private CA), or sslmode=disable for a local server"
    )]
    UnverifiedTls { mode: String },
}

impl StoreError {
    /// The database is away for now (connection lost, server shutting down or starting
    /// up, no connection free in time), not wrong about the job or the query: worth
    /// asking again shortly. A deleted job or a bad record is not.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Query(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed,
            ) => true,
            // PostgreSQL's classes 08 (connection exception) and 57P (shutting down,
            // starting up).
            StoreError::Query(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        }
    }
}

/// Refuses PostgreSQL TLS modes that skip certificate validation when asked for by
/// name (`require`, `prefer`, `allow`): portshift never turns validation off, so a URL
/// that asks for it is a configuration mistake, reported before connecting.
/// `verify-full`, `verify-ca` and `disable` pass, as does a URL without `sslmode`.
pub fn check_tls_mode(url: &str) -> Result<(), StoreError> {
    if !(url.starts_with("postgres:") || url.starts_with("postgresql:")) {
        return Ok(());
    }
    let Ok(parsed) = url::Url::parse(url) else {
        return Ok(()); // sqlx reports an unparsable URL itself
    };
    for (name, value) in parsed.query_pairs() {
        let mode = value.to_ascii_lowercase();
        if name == "sslmode" && matches!(mode.as_str(), "require" | "prefer" | "allow") {
            return Err(StoreError::UnverifiedTls { mode });
        }
    }
    Ok(())
}

/// A recording as the list stage found it (no personal data).
#[derive(Clone, Debug, PartialEq)]
pub struct ListedRecording {
    pub recording_id: String,
    pub recorded_at: Option<i64>,
    pub duration_s: Option<f64>,
    pub engagement_type: Option<String>,
}

/// A file durably written at its final key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRow {
    pub recording_id: String,
    pub file: FileKind,
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
    pub content_type: String,
}

/// One line of the manifest: a file durably written in this job, with its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestRow {
    pub file: FileRow,
    /// Chorus's `_modified_at` of the conversation as read when the file was fetched,
    /// verbatim.
    pub source_modified_at: Option<String>,
    /// When these bytes were written at their key (epoch milliseconds); `None` for rows
    /// written before portshift recorded it.
    pub exported_ms: Option<i64>,
}

/// Where the next page of [`JobStore::manifest_page`] starts: after this row's key,
/// recording and file (a key alone need not be unique, the triple is).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestCursor(Option<(String, String, String)>);

/// An exported recording with the version and write time of each of its files, for
/// the manifest's `recordings` section.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordingWithFiles {
    pub recording: ListedRecording,
    /// `(source_modified_at, exported_ms)` of each file written for it.
    pub files: Vec<(Option<String>, Option<i64>)>,
}

#[derive(Clone, Debug)]
pub struct JobRecord {
    pub id: JobId,
    pub organisation: String,
    pub started_by: String,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
    pub status: JobStatus,
    pub status_reason: Option<String>,
    pub spec: JobSpec,
    pub listing_complete: bool,
    pub manifest_key: Option<String>,
    pub manifest_sha256: Option<String>,
}

/// Counts derived from the progress rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub listing_complete: bool,
    pub listed: u64,
    pub pending: u64,
    pub exported: u64,
    pub skipped: u64,
    pub dead: u64,
    pub files: u64,
    pub bytes: u64,
    /// The oldest and newest recording date listed so far (Unix seconds).
    pub listed_span: Option<(i64, i64)>,
}

/// What a job is expected to hold in all, for its ETA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedTotal {
    /// The listing is complete: the total is known.
    Known(u64),
    /// Estimated from the share of the date range listed so far (that share in
    /// percent): the listing runs only a bounded distance ahead of the fetches.
    Estimated { total: u64, listed_percent: u8 },
}

impl ExpectedTotal {
    pub fn total(self) -> u64 {
        match self {
            ExpectedTotal::Known(n) | ExpectedTotal::Estimated { total: n, .. } => n,
        }
    }

    /// What a display adds after an ETA resting on this total: nothing when it is
    /// known, else how much of the listing the estimate rests on.
    pub fn note(self) -> String {
        match self {
            ExpectedTotal::Known(_) => String::new(),
            ExpectedTotal::Estimated { listed_percent, .. } => {
                format!(" (estimated: {listed_percent}% of the dates listed)")
            }
        }
    }
}

impl Progress {
    pub fn settled(&self) -> bool {
        self.listing_complete && self.pending == 0
    }

    /// The job's total: known once the listing is complete, else estimated by assuming
    /// the recordings are spread over the dates `from..to` (Unix seconds) as over the
    /// span listed so far. The listed span leaves out the stretch between the range's
    /// edge and the first recording listed, so the estimate errs high (a longer ETA)
    /// and converges as the listing goes on. `None` before a span of at least 1 % of
    /// the range is listed: too early to say.
    /// Time left at the pace so far, for a job over `dates` (Unix seconds) that started
    /// `elapsed_secs` ago, and the total it rests on; `None` when too early to say.
    pub fn time_left(
        &self,
        dates: (i64, i64),
        elapsed_secs: f64,
    ) -> Option<(std::time::Duration, ExpectedTotal)> {
        let expected = self.expected_total(dates.0, dates.1)?;
        let settled = self.exported + self.skipped + self.dead;
        let left = crate::rate_budget::eta(settled, expected.total(), elapsed_secs)?;
        Some((left, expected))
    }

    pub fn expected_total(&self, from: i64, to: i64) -> Option<ExpectedTotal> {
        if self.listing_complete {
            return Some(ExpectedTotal::Known(self.listed));
        }
        let (oldest, newest) = self.listed_span?;
        let range = to.checked_sub(from).filter(|r| *r > 0)? as f64;
        let share = ((newest - oldest) as f64 / range).clamp(0.0, 1.0);
        if share < 0.01 {
            return None;
        }
        let total = ((self.listed as f64 / share).ceil() as u64).max(self.listed);
        Some(ExpectedTotal::Estimated {
            total,
            listed_percent: (share * 100.0).floor() as u8,
        })
    }
}

/// A recording that did not export, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub recording_id: String,
    pub status: String,
    pub reason: String,
    /// `deleted_in_source` for a skipped recording the listing returned and Chorus
    /// answered 404 for afterwards; `None` otherwise.
    pub source_state: Option<String>,
    /// When the recording reached this state (epoch milliseconds).
    pub at_ms: i64,
}

/// The state of a recording deleted in Chorus after the listing returned it.
pub const DELETED_IN_SOURCE: &str = "deleted_in_source";

#[derive(Clone, Debug)]
pub struct JobStore {
    pub(crate) pool: AnyPool,
}

/// A unique-key conflict, on either database: SQLite names the constraint in its
/// message, PostgreSQL answers SQLSTATE 23505.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation()
                || d.message().contains("UNIQUE")
                || d.code().as_deref() == Some("23505")
        }
        _ => false,
    }
}

/// Listed recordings written by one `INSERT` (four parameters each, well under SQLite's
/// and PostgreSQL's limits).
const LISTED_ROWS_PER_INSERT: usize = 100;

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl JobStore {
    /// Opens (creating if needed) the store at `url` and applies migrations.
    /// `sqlite://<path>` or `postgres://...`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        check_tls_mode(url)?;
        sqlx::any::install_default_drivers();
        // sslmode=verify-full connects over rustls with the process's crypto provider.
        crate::tls::install_crypto_provider();
        let is_sqlite = url.starts_with("sqlite:");
        let url_full = if is_sqlite && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
        } else {
            url.to_string()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if is_sqlite { 4 } else { 16 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if is_sqlite {
                        // WAL lets readers (the progress bar) run beside the writers;
                        // the busy timeout makes concurrent workers wait, not fail.
                        sqlx::query("PRAGMA journal_mode=WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout=10000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous=NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        // 64 KiB of page cache per connection (SQLite's default is
                        // 2 MiB): a connection's cache is dropped whenever another one
                        // wrote, every few statements during an export, so a larger one
                        // only holds memory that grows with the store. Measured on
                        // 1,000 and 20,000 recordings: the peak grew 44 → 47 MiB with
                        // 1 MiB, 42 → 43 MiB with 64 KiB, at the same CPU.
                        sqlx::query("PRAGMA cache_size=-64")
                            .execute(&mut *conn)
                            .await?;
                        // Deleted rows are overwritten with zeros, so an erased
                        // account leaves no trace in free pages (see Accounts::delete_user).
                        sqlx::query("PRAGMA secure_delete=ON")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url_full)
            .await
            .map_err(|source| StoreError::Connect {
                url: redact_url(url),
                source,
            })?;
        // Two processes opening one SQLite store at once (serve and scheduler on one data
        // folder) may both apply a migration; the loser fails on what the winner made
        // (an ALTER TABLE is not idempotent) and, asked again, finds it applied.
        let mut tries = 0;
        loop {
            match MIGRATOR.run(&pool).await {
                Ok(()) => break,
                Err(_) if tries < 4 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(250 * tries)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Self { pool })
    }

    /// The store in a data folder: `<dir>/portshift.sqlite3`.
    pub async fn open_sqlite_in(dir: &Path) -> Result<Self, StoreError> {
        Self::connect(&format!(
            "sqlite://{}",
            dir.join("portshift.sqlite3").display()
        ))
        .await
    }

    pub async fn create_job(
        &self,
        id: &JobId,
        organisation: &str,
        started_by: &str,
        spec: &JobSpec,
    ) -> Result<(), StoreError> {
        let spec_json =
            serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO jobs (id, organisation, started_by, created_ms, updated_ms, status, spec_json, trust) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id.as_str())
        .bind(organisation)
        .bind(started_by)
        .bind(now)
        .bind(now)
        .bind(JobStatus::Running.as_str())
        .bind(spec_json)
        .bind(spec.trust.level().as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn job(&self, id: &JobId) -> Result<JobRecord, StoreError> {
        let row = sqlx::query(
            "SELECT id, organisation, started_by, created_ms, finished_ms, status, status_reason, \
             spec_json, listing_complete, manifest_key, manifest_sha256, trust FROM jobs WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NoSuchJob(id.clone()))?;
        job_from_row(&row)
    }

    /// The most recent jobs first.
    pub async fn recent_jobs(&self, limit: i64) -> Result<Vec<JobRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, organisation, started_by, created_ms, finished_ms, status, status_reason, \
             spec_json, listing_complete, manifest_key, manifest_sha256, trust FROM jobs \
             ORDER BY created_ms DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    pub async fn set_status(
        &self,
        id: &JobId,
        status: JobStatus,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let finished = if status.is_final() { Some(now) } else { None };
        // One conditional UPDATE: the check and the write are one step on both
        // backends, so a writer that read an older status cannot overwrite a newer one.
        let done = sqlx::query(&format!(
            "UPDATE jobs SET status = $1, status_reason = $2, updated_ms = $3, \
             finished_ms = COALESCE(CASE WHEN status = $1 THEN finished_ms END, $4), \
             heartbeat_ms = CASE WHEN $1 = 'running' THEN $3 ELSE heartbeat_ms END \
             WHERE id = $5 AND status IN ({})",
            status_list(&JobStatus::sources_of(status))
        ))
        .bind(status.as_str())
        .bind(reason)
        .bind(now)
        .bind(finished)
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            let from = self.job(id).await?.status;
            return Err(StoreError::IllegalTransition {
                job: id.clone(),
                from,
                to: status,
            });
        }
        Ok(())
    }

    /// Records recordings found by the listing as pending (idempotent: a re-listed
    /// recording keeps whatever state it already has).
    pub async fn add_listed(
        &self,
        job: &JobId,
        found: &[ListedRecording],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        // One statement per hundred rows, not one per row: each statement is a round trip
        // to the database (a thread hand-off for SQLite), and a page lists up to 100.
        for rows in found.chunks(LISTED_ROWS_PER_INSERT) {
            let mut sql = String::from(
                "INSERT INTO recordings (job_id, recording_id, status, recorded_at, duration_s, engagement_type, updated_ms) VALUES ",
            );
            for i in 0..rows.len() {
                let p = 3 + 4 * i;
                let sep = if i == 0 { "" } else { ", " };
                // Writing to a String cannot fail.
                let _ = write!(
                    sql,
                    "{sep}($1, ${p}, 'pending', ${}, ${}, ${}, $2)",
                    p + 1,
                    p + 2,
                    p + 3
                );
            }
            sql.push_str(" ON CONFLICT (job_id, recording_id) DO NOTHING");
            let mut insert = sqlx::query(&sql).bind(job.as_str()).bind(now);
            for r in rows {
                insert = insert
                    .bind(&r.recording_id)
                    .bind(r.recorded_at)
                    .bind(r.duration_s)
                    .bind(r.engagement_type.as_deref());
            }
            insert.execute(&mut *tx).await?;
        }
        let dates = found.iter().filter_map(|r| r.recorded_at);
        if let (Some(oldest), Some(newest)) = (dates.clone().min(), dates.max()) {
            sqlx::query(
                "UPDATE jobs SET \
                 listed_oldest = CASE WHEN listed_oldest IS NULL OR listed_oldest > $1 THEN $1 ELSE listed_oldest END, \
                 listed_newest = CASE WHEN listed_newest IS NULL OR listed_newest < $2 THEN $2 ELSE listed_newest END \
                 WHERE id = $3",
            )
            .bind(oldest)
            .bind(newest)
            .bind(job.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records that listing page `page` of `job` is fetched with `continuation_key`,
    /// and returns the earlier page that already used the same key, if any: Chorus
    /// handing out a key it gave before means the listing loops. A redelivered page
    /// finds its own number, which is not a loop.
    pub async fn record_list_page(
        &self,
        job: &JobId,
        continuation_key: &str,
        page: u32,
    ) -> Result<Option<u32>, StoreError> {
        sqlx::query(
            "INSERT INTO list_pages (job_id, continuation_key, page) VALUES ($1, $2, $3) \
             ON CONFLICT (job_id, continuation_key) DO NOTHING",
        )
        .bind(job.as_str())
        .bind(continuation_key)
        .bind(i64::from(page))
        .execute(&self.pool)
        .await?;
        let first: i64 = sqlx::query_scalar(
            "SELECT page FROM list_pages WHERE job_id = $1 AND continuation_key = $2",
        )
        .bind(job.as_str())
        .bind(continuation_key)
        .fetch_one(&self.pool)
        .await?;
        Ok((first != i64::from(page)).then_some(first as u32))
    }

    /// Records a multipart upload `job` started at `object_key` (see `open_uploads`).
    pub async fn record_open_upload(
        &self,
        job: &JobId,
        object_key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO open_uploads (job_id, object_key, upload_id, created_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (job_id, upload_id) DO NOTHING",
        )
        .bind(job.as_str())
        .bind(object_key)
        .bind(upload_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets an upload that was completed or aborted.
    pub async fn forget_open_upload(&self, job: &JobId, upload_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM open_uploads WHERE job_id = $1 AND upload_id = $2")
            .bind(job.as_str())
            .bind(upload_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The job's uploads still open, as `(object key, upload id)`, oldest first; only
    /// those at `object_key` when given.
    pub async fn open_uploads(
        &self,
        job: &JobId,
        object_key: Option<&str>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = match object_key {
            Some(key) => {
                sqlx::query(
                    "SELECT object_key, upload_id FROM open_uploads \
                     WHERE job_id = $1 AND object_key = $2 ORDER BY created_ms, upload_id",
                )
                .bind(job.as_str())
                .bind(key)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT object_key, upload_id FROM open_uploads \
                     WHERE job_id = $1 ORDER BY created_ms, upload_id",
                )
                .bind(job.as_str())
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|r| Ok((r.try_get("object_key")?, r.try_get("upload_id")?)))
            .collect()
    }

    pub async fn mark_listing_complete(&self, job: &JobId) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET listing_complete = 1, updated_ms = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(job.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Upserts a file's progress row (keyed by job, recording, file: a redelivery
    /// overwrites, never duplicates).
    pub async fn record_file(&self, job: &JobId, f: &FileRow) -> Result<(), StoreError> {
        self.record_file_version(job, f, None).await
    }

    /// [`Self::record_file`] with the Chorus version (`_modified_at`) the bytes came
    /// from. The row's export time is kept when the same bytes are written again at the
    /// same key (a redelivery), and set anew when they differ.
    pub async fn record_file_version(
        &self,
        job: &JobId,
        f: &FileRow,
        source_modified_at: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO files (job_id, recording_id, file, object_key, bytes, sha256, content_type, updated_ms, source_modified_at, exported_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $8) \
             ON CONFLICT (job_id, recording_id, file) DO UPDATE SET \
             exported_ms = CASE WHEN files.sha256 = excluded.sha256 AND files.object_key = excluded.object_key \
             THEN COALESCE(files.exported_ms, excluded.exported_ms) ELSE excluded.exported_ms END, \
             source_modified_at = COALESCE(excluded.source_modified_at, files.source_modified_at), \
             object_key = excluded.object_key, \
             bytes = excluded.bytes, sha256 = excluded.sha256, content_type = excluded.content_type, \
             updated_ms = excluded.updated_ms",
        )
        .bind(job.as_str())
        .bind(&f.recording_id)
        .bind(f.file.as_str())
        .bind(&f.key)
        .bind(f.bytes as i64)
        .bind(&f.sha256)
        .bind(&f.content_type)
        .bind(now)
        .bind(source_modified_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How many times read-back verification took files back out of this job (see
    /// [`Self::mark_unverified`]); part of the manifest request's message id.
    pub async fn manifest_generation(&self, job: &JobId) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT manifest_generation FROM jobs WHERE id = $1")
            .bind(job.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NoSuchJob(job.clone()))?;
        Ok(row.try_get(0)?)
    }

    /// Files of one recording already durably exported in this job.
    pub async fn files_of(
        &self,
        job: &JobId,
        recording_id: &str,
    ) -> Result<Vec<FileRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT recording_id, file, object_key, bytes, sha256, content_type FROM files \
             WHERE job_id = $1 AND recording_id = $2",
        )
        .bind(job.as_str())
        .bind(recording_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(file_from_row).collect()
    }

    /// Marks a recording exported. Final unless replaced by a later export of it.
    pub async fn mark_exported(&self, job: &JobId, recording_id: &str) -> Result<(), StoreError> {
        self.set_recording(
            job,
            recording_id,
            "exported",
            None,
            &["pending", "dead", "skipped"],
        )
        .await
    }

    /// Marks a recording skipped for a permanent reason (404, private, no media).
    pub async fn mark_skipped(
        &self,
        job: &JobId,
        recording_id: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.set_recording(
            job,
            recording_id,
            "skipped",
            Some(reason),
            &["pending", "dead"],
        )
        .await
    }

    /// Marks a recording skipped because Chorus answered 404 for it after the listing
    /// returned it: deleted (or made private) in Chorus during the export. The manifest
    /// states it as `deleted_in_source`.
    pub async fn mark_deleted_in_source(
        &self,
        job: &JobId,
        recording_id: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.mark_skipped(job, recording_id, reason).await?;
        sqlx::query(
            "UPDATE recordings SET source_state = $1 WHERE job_id = $2 AND recording_id = $3 AND status = 'skipped'",
        )
        .bind(DELETED_IN_SOURCE)
        .bind(job.as_str())
        .bind(recording_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a recording dead (its message was dead-lettered). Never overrides an export
    /// that succeeded on another delivery.
    pub async fn mark_dead(
        &self,
        job: &JobId,
        recording_id: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.set_recording(job, recording_id, "dead", Some(reason), &["pending"])
            .await
    }

    /// Marks an exported recording dead because reading `key` back found bytes that
    /// differ from what was uploaded (`--verify-after`), and forgets that file's row so
    /// that replaying the recording's fetch uploads it again.
    pub async fn mark_unverified(
        &self,
        job: &JobId,
        recording_id: &str,
        key: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM files WHERE job_id = $1 AND recording_id = $2 AND object_key = $3",
        )
        .bind(job.as_str())
        .bind(recording_id)
        .bind(key)
        .execute(&self.pool)
        .await?;
        // The manifest asked for after a replay may list exactly what the first one did
        // (the same bytes uploaded again): a new generation keeps that request from
        // being taken for a duplicate of the first.
        sqlx::query(
            "UPDATE jobs SET manifest_generation = manifest_generation + 1, updated_ms = $1 WHERE id = $2",
        )
        .bind(now_ms())
        .bind(job.as_str())
        .execute(&self.pool)
        .await?;
        self.set_recording(job, recording_id, "dead", Some(reason), &["exported"])
            .await
    }

    async fn set_recording(
        &self,
        job: &JobId,
        recording_id: &str,
        status: &str,
        reason: Option<&str>,
        from: &[&str],
    ) -> Result<(), StoreError> {
        // `from` is a fixed list of literals chosen above, never input.
        let allowed = from
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE recordings SET status = $1, reason = $2, updated_ms = $3 \
             WHERE job_id = $4 AND recording_id = $5 AND status IN ({allowed})"
        );
        let done = sqlx::query(&sql)
            .bind(status)
            .bind(reason)
            .bind(now_ms())
            .bind(job.as_str())
            .bind(recording_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            // Either already in a state this transition must not override, or a
            // recording the listing never recorded (a hand-made message): record it.
            sqlx::query(
                "INSERT INTO recordings (job_id, recording_id, status, reason, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job_id, recording_id) DO NOTHING",
            )
            .bind(job.as_str())
            .bind(recording_id)
            .bind(status)
            .bind(reason)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    pub async fn progress(&self, job: &JobId) -> Result<Progress, StoreError> {
        let row = sqlx::query(
            "SELECT listing_complete, listed_oldest, listed_newest FROM jobs WHERE id = $1",
        )
        .bind(job.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NoSuchJob(job.clone()))?;
        let listing: i64 = row.try_get(0)?;
        let oldest: Option<i64> = row.try_get(1)?;
        let newest: Option<i64> = row.try_get(2)?;
        let mut p = Progress {
            listing_complete: listing != 0,
            listed_span: oldest.zip(newest),
            ..Default::default()
        };
        let rows = sqlx::query(
            "SELECT status, COUNT(*) FROM recordings WHERE job_id = $1 GROUP BY status",
        )
        .bind(job.as_str())
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let status: String = row.try_get(0)?;
            let n = row.try_get::<i64, _>(1)? as u64;
            p.listed += n;
            match status.as_str() {
                "pending" => p.pending = n,
                "exported" => p.exported = n,
                "skipped" => p.skipped = n,
                "dead" => p.dead = n,
                other => return Err(StoreError::Corrupt(format!("recording status {other:?}"))),
            }
        }
        let row = sqlx::query(
            "SELECT COUNT(*), CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM files WHERE job_id = $1",
        )
        .bind(job.as_str())
        .fetch_one(&self.pool)
        .await?;
        p.files = row.try_get::<i64, _>(0)? as u64;
        p.bytes = row.try_get::<i64, _>(1)? as u64;
        Ok(p)
    }

    /// How many of the job's listed recordings are still pending (not yet exported,
    /// skipped or dead), counting no further than `cap`: the list stage's backlog check,
    /// a range read of at most `cap` index entries.
    pub async fn pending_up_to(&self, job: &JobId, cap: u64) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT 1 FROM recordings WHERE job_id = $1 AND status = 'pending' LIMIT $2) AS p",
        )
        .bind(job.as_str())
        .bind(i64::try_from(cap).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await?;
        Ok(count.max(0) as u64)
    }

    /// Whether every listed recording is settled, by an indexed lookup: called after
    /// each recording, so it must not scan the job's rows as `progress` does.
    pub async fn is_settled(&self, job: &JobId) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT listing_complete, \
             (SELECT COUNT(*) FROM (SELECT 1 FROM recordings WHERE job_id = $1 AND status = 'pending' LIMIT 1) AS p) \
             FROM jobs WHERE id = $1",
        )
        .bind(job.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NoSuchJob(job.clone()))?;
        let listing_complete: i64 = row.try_get(0)?;
        let pending: i64 = row.try_get(1)?;
        Ok(listing_complete != 0 && pending == 0)
    }

    /// Every file durably written in this job, ordered by key: the manifest's content.
    /// It lists every complete file at the destination, including files of a recording
    /// whose other files later failed (the manifest's `failed` section names those).
    /// The whole list at once, read through [`Self::manifest_page`]: the manifest stage
    /// itself reads the pages.
    pub async fn manifest_entries(&self, job: &JobId) -> Result<Vec<FileRow>, StoreError> {
        let (mut entries, mut cursor) = (Vec::new(), ManifestCursor::default());
        loop {
            let (rows, next) = self.manifest_page(job, &cursor, 1000).await?;
            if rows.is_empty() {
                return Ok(entries);
            }
            entries.extend(rows.into_iter().map(|r| r.file));
            cursor = next;
        }
    }

    /// Up to `limit` manifest rows after `after`, in key order, and the cursor of the
    /// page after them (the manifest stage streams a job of any size this way).
    pub async fn manifest_page(
        &self,
        job: &JobId,
        after: &ManifestCursor,
        limit: u32,
    ) -> Result<(Vec<ManifestRow>, ManifestCursor), StoreError> {
        // Row values compare in order on SQLite and PostgreSQL alike; the first page
        // starts at ("", "", ""), the least of all.
        let (after_or_at, (key, recording, file)) = match &after.0 {
            Some(row) => (">", row.clone()),
            None => (">=", Default::default()),
        };
        let rows = sqlx::query(&format!(
            "SELECT recording_id, file, object_key, bytes, sha256, content_type, source_modified_at, exported_ms \
             FROM files WHERE job_id = $1 AND (object_key, recording_id, file) {after_or_at} ($2, $3, $4) \
             ORDER BY object_key, recording_id, file LIMIT $5"
        ))
        .bind(job.as_str())
        .bind(key)
        .bind(recording)
        .bind(file)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let page = rows
            .iter()
            .map(|r| {
                Ok(ManifestRow {
                    file: file_from_row(r)?,
                    source_modified_at: r.try_get(6)?,
                    exported_ms: r.try_get(7)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let next = match page.last() {
            Some(last) => ManifestCursor(Some((
                last.file.key.clone(),
                last.file.recording_id.clone(),
                last.file.file.as_str().to_string(),
            ))),
            None => after.clone(),
        };
        Ok((page, next))
    }

    /// Up to `limit` exported recordings with ids after `after` (from the first when
    /// `None`), in id order, each with the versions of its files (the manifest's
    /// `recordings` section, page by page).
    pub async fn exported_recordings_page(
        &self,
        job: &JobId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RecordingWithFiles>, StoreError> {
        let (after_or_at, bound) = id_bound(after);
        let rows = sqlx::query(&format!(
            "SELECT r.recording_id, r.recorded_at, r.duration_s, r.engagement_type, f.source_modified_at, f.exported_ms, f.file \
             FROM (SELECT recording_id, recorded_at, duration_s, engagement_type FROM recordings \
                   WHERE job_id = $1 AND status = 'exported' AND recording_id {after_or_at} $2 \
                   ORDER BY recording_id LIMIT $3) r \
             LEFT JOIN files f ON f.job_id = $1 AND f.recording_id = r.recording_id \
             ORDER BY r.recording_id, f.file"
        ))
        .bind(job.as_str())
        .bind(bound)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut page: Vec<RecordingWithFiles> = Vec::new();
        for r in &rows {
            let recording_id: String = r.try_get(0)?;
            if page.last().map(|p| &p.recording.recording_id) != Some(&recording_id) {
                page.push(RecordingWithFiles {
                    recording: ListedRecording {
                        recording_id,
                        recorded_at: r.try_get(1)?,
                        duration_s: r.try_get(2)?,
                        engagement_type: r.try_get(3)?,
                    },
                    files: Vec::new(),
                });
            }
            // A recording with no file row (metadata-less export) joins to NULLs.
            let file: Option<String> = r.try_get(6)?;
            if file.is_some()
                && let Some(last) = page.last_mut()
            {
                last.files.push((r.try_get(4)?, r.try_get(5)?));
            }
        }
        Ok(page)
    }

    /// Up to `limit` recordings in `status` (`skipped` or `dead`) with ids after
    /// `after` (from the first when `None`), in id order, with reasons (the manifest's
    /// problem sections, page by page).
    pub async fn problems_page(
        &self,
        job: &JobId,
        status: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Problem>, StoreError> {
        let (after_or_at, bound) = id_bound(after);
        let rows = sqlx::query(&format!(
            "SELECT recording_id, status, COALESCE(reason, ''), source_state, updated_ms FROM recordings \
             WHERE job_id = $1 AND status = $2 AND recording_id {after_or_at} $3 ORDER BY recording_id LIMIT $4"
        ))
        .bind(job.as_str())
        .bind(status)
        .bind(bound)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(problem_from_row).collect()
    }

    /// The recording a file key belongs to and when it was recorded (read-back
    /// verification parks that recording's fetch).
    pub async fn recording_at_key(
        &self,
        job: &JobId,
        key: &str,
    ) -> Result<Option<(String, Option<i64>)>, StoreError> {
        let row = sqlx::query(
            "SELECT f.recording_id, r.recorded_at FROM files f \
             LEFT JOIN recordings r ON r.job_id = f.job_id AND r.recording_id = f.recording_id \
             WHERE f.job_id = $1 AND f.object_key = $2 ORDER BY f.recording_id LIMIT 1",
        )
        .bind(job.as_str())
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// Recordings still pending (what a resumed job must fetch again when the queue
    /// lost their tasks, e.g. after a restore from backup).
    pub async fn pending_recordings(
        &self,
        job: &JobId,
    ) -> Result<Vec<ListedRecording>, StoreError> {
        self.recordings_in(job, "pending").await
    }

    /// The job's recordings in one status, as listed, in recording-id order.
    async fn recordings_in(
        &self,
        job: &JobId,
        status: &str,
    ) -> Result<Vec<ListedRecording>, StoreError> {
        let rows = sqlx::query(
            "SELECT recording_id, recorded_at, duration_s, engagement_type FROM recordings \
             WHERE job_id = $1 AND status = $2 ORDER BY recording_id",
        )
        .bind(job.as_str())
        .bind(status)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ListedRecording {
                    recording_id: r.try_get(0)?,
                    recorded_at: r.try_get(1)?,
                    duration_s: r.try_get(2)?,
                    engagement_type: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Recordings that were skipped or died, with reasons, for the summary.
    pub async fn problems(&self, job: &JobId) -> Result<Vec<Problem>, StoreError> {
        let rows = sqlx::query(
            "SELECT recording_id, status, COALESCE(reason, ''), source_state, updated_ms FROM recordings \
             WHERE job_id = $1 AND status IN ('skipped', 'dead') ORDER BY status, recording_id",
        )
        .bind(job.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(problem_from_row).collect()
    }

    pub async fn set_manifest(
        &self,
        job: &JobId,
        key: &str,
        sha256: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET manifest_key = $1, manifest_sha256 = $2, updated_ms = $3 WHERE id = $4")
            .bind(key)
            .bind(sha256)
            .bind(now_ms())
            .bind(job.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A worker of the job is alive (called every few seconds by each worker).
    pub async fn heartbeat(&self, job: &JobId) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET heartbeat_ms = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(job.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Running jobs whose every worker went quiet for `stale_after` lost their
    /// credentials with their worker: they move to needs_credentials, to be resumed.
    /// Returns how many jobs moved.
    pub async fn expire_silent_workers(&self, stale_after: Duration) -> Result<u64, StoreError> {
        let cutoff = now_ms() - stale_after.as_millis() as i64;
        let done = sqlx::query(
            "UPDATE jobs SET status = 'needs_credentials', updated_ms = $1, \
             status_reason = 'its worker stopped (no heartbeat); resume the job with its credentials' \
             WHERE status = 'running' AND COALESCE(heartbeat_ms, created_ms) < $2",
        )
        .bind(now_ms())
        .bind(cutoff)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Puts a job that stopped (needs credentials, failed, finished with failures) back
    /// to running, for `resume` and `replay`. A finished job stays finished.
    pub async fn reopen(&self, job: &JobId) -> Result<JobStatus, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE jobs SET status = 'running', status_reason = NULL, finished_ms = NULL, \
             heartbeat_ms = $1, updated_ms = $1 WHERE id = $2 AND status IN ({})",
            status_list(&JobStatus::sources_of(JobStatus::Running))
        ))
        .bind(now_ms())
        .bind(job.as_str())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            // Finished or cancelled (or no such job): left as it is.
            return Ok(self.job(job).await?.status);
        }
        Ok(JobStatus::Running)
    }

    /// Jobs of `organisation` that have a live worker: running, and heard from (a
    /// heartbeat, or created) within `alive_within`. What the per-organisation worker
    /// cap counts, whichever server or scheduler started them.
    pub async fn live_workers_of(
        &self,
        organisation: &str,
        alive_within: Duration,
    ) -> Result<u64, StoreError> {
        let cutoff = now_ms() - alive_within.as_millis() as i64;
        let n: i64 = sqlx::query(
            "SELECT COUNT(*) FROM jobs WHERE organisation = $1 AND status = 'running' \
             AND COALESCE(heartbeat_ms, created_ms) >= $2",
        )
        .bind(organisation)
        .bind(cutoff)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        Ok(n.max(0) as u64)
    }

    /// Deletes a job and its progress rows. Schedule history (`schedule_runs`, and what a
    /// schedule already exported) stays: it is what keeps the next run incremental. Use
    /// `worker_process::delete_job`, which also removes the worker log.
    pub async fn delete_job(&self, job: &JobId) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for table in [
            "files",
            "recordings",
            "list_pages",
            "open_uploads",
            "worker_leases",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE job_id = $1"))
                .bind(job.as_str())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(job.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Closes the pool (lets SQLite checkpoint its WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `'a', 'b'` for an SQL `IN (...)`: the statuses are our own fixed names, never input.
fn status_list(statuses: &[JobStatus]) -> String {
    statuses
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value bound into a purge statement's condition.
#[derive(Clone, Debug)]
pub(crate) enum Bound {
    Text(String),
    Int(i64),
}

/// Whether the pool talks to SQLite (else PostgreSQL): the purge statements differ.
pub(crate) fn is_sqlite(pool: &AnyPool) -> bool {
    pool.connect_options()
        .database_url
        .scheme()
        .starts_with("sqlite")
}

/// Deletes at most `limit` rows of `table` matching `cond` (placeholders `$1`, `$2`, ...
/// bound from `binds`) and returns how many went. `table` and `cond` are literals of
/// this crate, never input.
///
/// Several servers may purge at once. On PostgreSQL each statement locks the rows it
/// picks and skips rows another purger holds (`FOR UPDATE SKIP LOCKED`), so two purgers
/// never wait on each other's rows in opposite orders (a deadlock); each row is deleted
/// and counted by exactly one of them. SQLite has one writer at a time (busy timeout).
pub(crate) async fn delete_some(
    pool: &AnyPool,
    table: &str,
    cond: &str,
    binds: &[Bound],
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let sql = if is_sqlite(pool) {
        format!(
            "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {cond} LIMIT {limit})"
        )
    } else {
        format!(
            "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {cond} \
             LIMIT {limit} FOR UPDATE SKIP LOCKED))"
        )
    };
    let mut q = sqlx::query(&sql);
    for b in binds {
        q = match b {
            Bound::Text(t) => q.bind(t.clone()),
            Bound::Int(i) => q.bind(*i),
        };
    }
    Ok(q.execute(pool).await?.rows_affected())
}

/// Milliseconds in a day.
pub(crate) const DAY_MS: i64 = 24 * 3600 * 1000;

/// The tables of the job store proper that hold rows keyed by a job, in the order the
/// purge empties them (the `jobs` row itself goes last, see [`JobStore::delete_job_if_bare`]).
pub const JOB_TABLES: [&str; 4] = ["recordings", "files", "list_pages", "open_uploads"];

impl JobStore {
    /// Jobs nothing has happened to for longer than their organisation's retention
    /// period at `now_ms`, oldest first, at most `limit`. "Happened" is the job's last
    /// status or progress change or its worker's last heartbeat, so a job that still
    /// runs is never expired. Jobs of no organisation (the CLI's `local`, or an
    /// organisation that no longer exists) use `default_days`.
    pub async fn expired_jobs(
        &self,
        now_ms: i64,
        default_days: i64,
        limit: i64,
    ) -> Result<Vec<JobId>, StoreError> {
        let rows = sqlx::query(
            "SELECT j.id FROM jobs j LEFT JOIN organisations o ON o.id = j.organisation \
             WHERE j.updated_ms < $1 - COALESCE(o.retention_days, $2) * $3 \
               AND COALESCE(j.heartbeat_ms, 0) < $1 - COALESCE(o.retention_days, $2) * $3 \
             ORDER BY j.updated_ms, j.id LIMIT $4",
        )
        .bind(now_ms)
        .bind(default_days)
        .bind(DAY_MS)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                id.parse::<JobId>()
                    .map_err(|e| StoreError::Corrupt(format!("{e}")))
            })
            .collect()
    }

    /// Deletes at most `limit` rows of each of the job's progress tables
    /// ([`JOB_TABLES`]); returns how many went from each. Call until all are zero.
    pub async fn purge_job_progress(
        &self,
        job: &JobId,
        limit: i64,
    ) -> Result<Vec<(&'static str, u64)>, StoreError> {
        let mut out = Vec::with_capacity(JOB_TABLES.len());
        for table in JOB_TABLES {
            let n = delete_some(
                &self.pool,
                table,
                "job_id = $1",
                &[Bound::Text(job.as_str().to_string())],
                limit,
            )
            .await?;
            out.push((table, n));
        }
        Ok(out)
    }

    /// Deletes the job's row, but only once nothing keyed by the job is left in any
    /// table (another purger may still hold some of its rows): true if this call
    /// deleted it, so each purged job is counted by exactly one purger.
    pub async fn delete_job_if_bare(&self, job: &JobId) -> Result<bool, StoreError> {
        // A job past its retention period has no live worker; the lease rows its
        // killed workers left (kept a day for operators) go with it.
        sqlx::query("DELETE FROM worker_leases WHERE job_id = $1")
            .bind(job.as_str())
            .execute(&self.pool)
            .await?;
        let done = sqlx::query(
            "DELETE FROM jobs WHERE id = $1 \
             AND NOT EXISTS (SELECT 1 FROM recordings WHERE job_id = $1) \
             AND NOT EXISTS (SELECT 1 FROM files WHERE job_id = $1) \
             AND NOT EXISTS (SELECT 1 FROM list_pages WHERE job_id = $1) \
             AND NOT EXISTS (SELECT 1 FROM open_uploads WHERE job_id = $1) \
             AND NOT EXISTS (SELECT 1 FROM schedule_runs WHERE job_id = $1) \
             AND NOT EXISTS (SELECT 1 FROM schedule_exported WHERE job_id = $1)",
        )
        .bind(job.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes up to `limit` listing pages of jobs whose listing is complete and that
    /// ended: the pages only serve to detect a looping listing while it runs.
    pub async fn purge_finished_list_pages(&self, limit: i64) -> Result<u64, StoreError> {
        Ok(delete_some(
            &self.pool,
            "list_pages",
            "job_id IN (SELECT id FROM jobs WHERE listing_complete <> 0 AND finished_ms IS NOT NULL)",
            &[],
            limit,
        )
        .await?)
    }

    /// How many rows of each table mention `job` in a job-id column (for tests and
    /// audits of the purge: all zero once a job is gone).
    pub async fn rows_of_job(&self, job: &JobId) -> Result<Vec<(&'static str, i64)>, StoreError> {
        let mut out = Vec::new();
        for (table, column) in [
            ("jobs", "id"),
            ("recordings", "job_id"),
            ("files", "job_id"),
            ("list_pages", "job_id"),
            ("open_uploads", "job_id"),
            ("worker_leases", "job_id"),
            ("schedule_runs", "job_id"),
            ("schedule_exported", "job_id"),
        ] {
            let n: i64 =
                sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE {column} = $1"))
                    .bind(job.as_str())
                    .fetch_one(&self.pool)
                    .await?;
            out.push((table, n));
        }
        Ok(out)
    }
}

fn job_from_row(row: &AnyRow) -> Result<JobRecord, StoreError> {
    let id: String = row.try_get(0)?;
    let status: String = row.try_get(5)?;
    let spec_json: String = row.try_get(7)?;
    let mut spec: JobSpec = serde_json::from_str(&spec_json)
        .map_err(|e| StoreError::Corrupt(format!("job spec: {e}")))?;
    // The column decides the level (older rows got theirs from the migration); the
    // spec carries what the operator allowed a tenant job. A spec claiming operator
    // in a tenant row gets nothing.
    let level: String = row.try_get(11)?;
    spec.trust = match (crate::job::TrustLevel::from_stored(&level), spec.trust) {
        (crate::job::TrustLevel::Operator, _) => crate::Trust::Operator,
        (_, t @ crate::Trust::Tenant(_)) => t,
        (_, crate::Trust::Operator) => crate::Trust::default(),
    };
    Ok(JobRecord {
        id: id
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
        organisation: row.try_get(1)?,
        started_by: row.try_get(2)?,
        created_ms: row.try_get(3)?,
        finished_ms: row.try_get(4)?,
        status: JobStatus::from_str(&status).map_err(StoreError::Corrupt)?,
        status_reason: row.try_get(6)?,
        spec,
        listing_complete: row.try_get::<i64, _>(8)? != 0,
        manifest_key: row.try_get(9)?,
        manifest_sha256: row.try_get(10)?,
    })
}

/// The comparison and bound of a page of recordings after `after`: the first page
/// starts at the empty id, which a recording may have (Chorus sent it; it is recorded
/// as failed), so it is `>= ''`, not `> ''`.
fn id_bound(after: Option<&str>) -> (&'static str, &str) {
    match after {
        Some(id) => (">", id),
        None => (">=", ""),
    }
}

fn problem_from_row(row: &AnyRow) -> Result<Problem, StoreError> {
    Ok(Problem {
        recording_id: row.try_get(0)?,
        status: row.try_get(1)?,
        reason: row.try_get(2)?,
        source_state: row.try_get(3)?,
        at_ms: row.try_get(4)?,
    })
}

fn file_from_row(row: &AnyRow) -> Result<FileRow, StoreError> {
    let file: String = row.try_get(1)?;
    Ok(FileRow {
        recording_id: row.try_get(0)?,
        file: FileKind::from_str(&file).map_err(StoreError::Corrupt)?,
        key: row.try_get(2)?,
        bytes: row.try_get::<i64, _>(3)? as u64,
        sha256: row.try_get(4)?,
        content_type: row.try_get(5)?,
    })
}

/// Hides a password in a database URL before it goes into an error message.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Runs `statements`, each binding `$1` to `org_id`, in the caller's transaction: how the
/// owners of an organisation's rows delete them when the organisation is deleted.
pub(crate) async fn delete_with_org(
    tx: &mut sqlx::AnyConnection,
    org_id: &str,
    statements: &[&str],
) -> Result<(), sqlx::Error> {
    for sql in statements {
        sqlx::query(sql).bind(org_id).execute(&mut *tx).await?;
    }
    Ok(())
}

/// Deletes an organisation's jobs and every row keyed by them (recordings, files, list
/// pages, open uploads, worker leases), in the caller's transaction. Rows of other
/// owners that name the jobs (schedule runs) go first, by their owner.
pub async fn delete_jobs_of_org(
    tx: &mut sqlx::AnyConnection,
    org_id: &str,
) -> Result<(), sqlx::Error> {
    delete_with_org(
        tx,
        org_id,
        &[
            "DELETE FROM recordings WHERE job_id IN (SELECT id FROM jobs WHERE organisation = $1)",
            "DELETE FROM files WHERE job_id IN (SELECT id FROM jobs WHERE organisation = $1)",
            "DELETE FROM list_pages WHERE job_id IN (SELECT id FROM jobs WHERE organisation = $1)",
            "DELETE FROM open_uploads WHERE job_id IN (SELECT id FROM jobs WHERE organisation = $1)",
            "DELETE FROM worker_leases WHERE job_id IN (SELECT id FROM jobs WHERE organisation = $1)",
            "DELETE FROM jobs WHERE organisation = $1",
        ],
    )
    .await
}

#[cfg(test)]
mod unavailable_tests {
    use super::*;

    #[test]
    fn a_lost_connection_is_worth_asking_again_a_deleted_job_is_not() {
        let lost = StoreError::Query(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(lost.is_unavailable());
        assert!(StoreError::Query(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(!StoreError::NoSuchJob(JobId::new()).is_unavailable());
        assert!(!StoreError::Query(sqlx::Error::RowNotFound).is_unavailable());
        assert!(!StoreError::Corrupt("bad row".into()).is_unavailable());
    }
}

#[cfg(test)]
mod tests {
    use super::{ExpectedTotal, Progress};

    fn listing(listed: u64, span: Option<(i64, i64)>) -> Progress {
        Progress {
            listed,
            listed_span: span,
            ..Progress::default()
        }
    }

    #[test]
    fn a_complete_listing_knows_its_total() {
        let p = Progress {
            listing_complete: true,
            ..listing(40, Some((0, 10)))
        };
        assert_eq!(p.expected_total(0, 1000), Some(ExpectedTotal::Known(40)));
    }

    #[test]
    fn a_running_listing_estimates_from_the_share_of_the_dates_listed() {
        // 2,000 recordings over a quarter of the range: about 8,000 in all.
        assert_eq!(
            listing(2000, Some((750, 1000))).expected_total(0, 1000),
            Some(ExpectedTotal::Estimated {
                total: 8000,
                listed_percent: 25
            })
        );
        // Never fewer than already listed, even with a span past the range's ends.
        assert_eq!(
            listing(50, Some((-10, 5000))).expected_total(0, 1000),
            Some(ExpectedTotal::Estimated {
                total: 50,
                listed_percent: 100
            })
        );
    }

    #[test]
    fn too_little_listed_or_a_bad_range_gives_no_estimate() {
        assert_eq!(listing(10, None).expected_total(0, 1000), None);
        assert_eq!(listing(10, Some((995, 1000))).expected_total(0, 1000), None);
        assert_eq!(listing(10, Some((0, 10))).expected_total(1000, 1000), None);
    }
}
