//! Worker leases and the supervisor's view of them. Every worker process serving a job
//! holds a row in `worker_leases` (worker id, job, host and pid for operators, expiry),
//! renews it with each heartbeat and deletes it when it exits cleanly. A job is
//! *abandoned* when it is `running`, none of its leases is live, and its heartbeat is
//! older than the lease (that last condition gives a just-started worker time to take
//! its first lease). The supervisor loop of `serve` and `scheduler` acts on abandoned
//! jobs; every action starts with one conditional UPDATE of the job's row, so when
//! several supervisors see the same job, exactly one of them acts.
//!
//! The counters here are what `/metrics` of workers, `serve` and `scheduler` show.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::Row;
use tokio::sync::watch;

use crate::JobId;
use crate::store::{JobStore, StoreError, now_ms};

/// How often a worker renews its lease (and stamps its job's heartbeat).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);
/// How long a lease lasts without renewal (`--lease-secs`): five missed heartbeats.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
/// The shortest lease accepted: two heartbeats, so one slow store write does not lose it.
pub const MIN_LEASE: Duration = Duration::from_secs(6);
/// How often the supervisor looks for abandoned jobs (`--supervise-secs`).
pub const DEFAULT_SUPERVISE_EVERY: Duration = Duration::from_secs(5);
/// Expired lease rows are kept this long for operators (which host, which pid), then
/// the supervisor deletes them.
pub const KEEP_EXPIRED_LEASES: Duration = Duration::from_secs(24 * 3600);

/// A lease duration as the operator gave it, raised to [`MIN_LEASE`].
pub fn lease_from_secs(secs: u64) -> Duration {
    Duration::from_secs(secs).max(MIN_LEASE)
}

/// One worker process's claim on a job.
#[derive(Clone, Debug)]
pub struct Lease {
    pub worker_id: String,
    pub job: JobId,
    pub host: String,
    pub pid: u32,
    pub duration: Duration,
}

impl Lease {
    /// A new lease for this process on `job` (not yet in the store: [`JobStore::take_lease`]).
    pub fn new(job: &JobId, duration: Duration) -> Self {
        Self {
            worker_id: uuid::Uuid::now_v7().simple().to_string(),
            job: job.clone(),
            host: host_name(),
            pid: std::process::id(),
            duration: duration.max(MIN_LEASE),
        }
    }
}

/// This machine's host name (for operators finding a worker), or "unknown".
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end])
            && !s.is_empty()
        {
            return s.to_string();
        }
    }
    "unknown".into()
}

/// A lease as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub worker_id: String,
    pub job: String,
    pub host: String,
    pub pid: i64,
    pub started_ms: i64,
    pub renewed_ms: i64,
    pub expires_ms: i64,
}

/// A running job with no live lease and a stale heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Abandoned {
    pub job: JobId,
    /// The schedule whose run the job is, if any (the scheduler restarts those).
    pub schedule: Option<String>,
    pub heartbeat_ms: i64,
}

/// A schedule run still marked running although its job no longer runs and no worker
/// holds it: the scheduler that followed it is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrphanedRun {
    pub schedule_id: String,
    pub slot_ms: i64,
    pub job: JobId,
}

/// The reason an abandoned job waits in `needs_credentials` with: what happened and the
/// command that continues it.
pub fn abandoned_reason(job: &JobId) -> String {
    format!(
        "no worker holds this job any more (every worker's lease expired), and its credentials went with its workers; \
         continue it with `portshift resume {job}` and the credentials (or Retry it in the console)"
    )
}

impl JobStore {
    /// Records (or re-records, after it was lost) the lease, and stamps the job's
    /// heartbeat.
    pub async fn take_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let now = now_ms();
        let expires = now + lease.duration.as_millis() as i64;
        sqlx::query(
            "INSERT INTO worker_leases (worker_id, job_id, host, pid, started_ms, renewed_ms, expires_ms) \
             VALUES ($1, $2, $3, $4, $5, $5, $6) \
             ON CONFLICT (worker_id) DO UPDATE SET renewed_ms = excluded.renewed_ms, expires_ms = excluded.expires_ms",
        )
        .bind(&lease.worker_id)
        .bind(lease.job.as_str())
        .bind(&lease.host)
        .bind(i64::from(lease.pid))
        .bind(now)
        .bind(expires)
        .execute(&self.pool)
        .await?;
        self.heartbeat(&lease.job).await
    }

    /// Renews the lease; false if it had expired or was gone (it is taken again, but a
    /// supervisor may have acted on the job in between: the caller counts it as lost).
    pub async fn renew_lease(&self, lease: &Lease) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE worker_leases SET renewed_ms = $1, expires_ms = $2 WHERE worker_id = $3 AND expires_ms >= $1",
        )
        .bind(now)
        .bind(now + lease.duration.as_millis() as i64)
        .bind(&lease.worker_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            self.heartbeat(&lease.job).await?;
            return Ok(true);
        }
        self.take_lease(lease).await?;
        Ok(false)
    }

    /// Deletes the lease (a clean exit).
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM worker_leases WHERE worker_id = $1")
            .bind(&lease.worker_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The job's leases, live or expired, newest first.
    pub async fn leases_of(&self, job: &JobId) -> Result<Vec<LeaseRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT worker_id, job_id, host, pid, started_ms, renewed_ms, expires_ms FROM worker_leases \
             WHERE job_id = $1 ORDER BY started_ms DESC, worker_id",
        )
        .bind(job.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LeaseRow {
                    worker_id: r.try_get(0)?,
                    job: r.try_get(1)?,
                    host: r.try_get(2)?,
                    pid: r.try_get(3)?,
                    started_ms: r.try_get(4)?,
                    renewed_ms: r.try_get(5)?,
                    expires_ms: r.try_get(6)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Live leases in the whole store (a gauge for `/metrics`).
    pub async fn live_lease_count(&self) -> Result<u64, StoreError> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM worker_leases WHERE expires_ms >= $1")
                .bind(now_ms())
                .fetch_one(&self.pool)
                .await?;
        Ok(n.max(0) as u64)
    }

    /// Running jobs none of whose leases is live and whose heartbeat is older than
    /// `grace` (at most `limit`, oldest heartbeat first).
    pub async fn abandoned_jobs(
        &self,
        grace: Duration,
        limit: i64,
    ) -> Result<Vec<Abandoned>, StoreError> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT id, spec_json, COALESCE(heartbeat_ms, created_ms) AS beat FROM jobs j \
             WHERE status = 'running' AND COALESCE(heartbeat_ms, created_ms) < $1 \
             AND NOT EXISTS (SELECT 1 FROM worker_leases l WHERE l.job_id = j.id AND l.expires_ms >= $2) \
             ORDER BY beat, id LIMIT $3",
        )
        .bind(now - grace.as_millis() as i64)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get(0)?;
            let spec: String = r.try_get(1)?;
            let schedule = serde_json::from_str::<serde_json::Value>(&spec)
                .ok()
                .and_then(|v| v.get("schedule")?.as_str().map(str::to_string));
            out.push(Abandoned {
                job: id
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
                schedule,
                heartbeat_ms: r.try_get(2)?,
            });
        }
        Ok(out)
    }

    /// The abandonment condition of [`JobStore::abandoned_jobs`] for one job, as SQL on
    /// `jobs` with `$2` = heartbeat cutoff and `$3` = now.
    const ABANDONED: &'static str = "status = 'running' AND COALESCE(heartbeat_ms, created_ms) < $2 \
         AND NOT EXISTS (SELECT 1 FROM worker_leases l WHERE l.job_id = jobs.id AND l.expires_ms >= $3)";

    /// Moves the job to `needs_credentials` with `reason` if it is still abandoned; true
    /// for the one caller whose UPDATE did it (one conditional UPDATE of the job's row:
    /// a second supervisor's finds it no longer running).
    pub async fn mark_abandoned(
        &self,
        job: &JobId,
        grace: Duration,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = sqlx::query(&format!(
            "UPDATE jobs SET status = 'needs_credentials', status_reason = $4, updated_ms = $3 \
             WHERE id = $1 AND {}",
            Self::ABANDONED
        ))
        .bind(job.as_str())
        .bind(now - grace.as_millis() as i64)
        .bind(now)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Claims a still-abandoned job for a new worker by stamping its heartbeat (which
    /// ends the abandonment for `grace`, time for the new worker to take its lease);
    /// true for the one caller whose UPDATE did it.
    pub async fn claim_abandoned(&self, job: &JobId, grace: Duration) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = sqlx::query(&format!(
            "UPDATE jobs SET heartbeat_ms = $3, updated_ms = $3 WHERE id = $1 AND {}",
            Self::ABANDONED
        ))
        .bind(job.as_str())
        .bind(now - grace.as_millis() as i64)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Schedule runs marked running whose job stopped running more than `grace` ago
    /// and that no worker holds.
    pub async fn orphaned_runs(
        &self,
        grace: Duration,
        limit: i64,
    ) -> Result<Vec<OrphanedRun>, StoreError> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT r.schedule_id, r.slot_ms, r.job_id FROM schedule_runs r JOIN jobs j ON j.id = r.job_id \
             WHERE r.status = 'running' AND j.status <> 'running' AND j.updated_ms < $1 \
             AND NOT EXISTS (SELECT 1 FROM worker_leases l WHERE l.job_id = j.id AND l.expires_ms >= $2) \
             ORDER BY r.slot_ms LIMIT $3",
        )
        .bind(now - grace.as_millis() as i64)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let job: String = r.try_get(2)?;
                Ok(OrphanedRun {
                    schedule_id: r.try_get(0)?,
                    slot_ms: r.try_get(1)?,
                    job: job
                        .parse()
                        .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
                })
            })
            .collect()
    }

    /// Sets a run's outcome only if it is still marked running; true for the one caller
    /// that did.
    pub async fn settle_run(
        &self,
        run: &OrphanedRun,
        status: &str,
        reason: Option<&str>,
        totals: (u64, u64),
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE schedule_runs SET status = $1, reason = $2, files = $3, bytes = $4, updated_ms = $5 \
             WHERE schedule_id = $6 AND slot_ms = $7 AND status = 'running'",
        )
        .bind(status)
        .bind(reason)
        .bind(totals.0 as i64)
        .bind(totals.1 as i64)
        .bind(now_ms())
        .bind(&run.schedule_id)
        .bind(run.slot_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The schedule run (schedule id, slot) whose job `job` is, if any.
    pub async fn run_of_job(&self, job: &JobId) -> Result<Option<(String, i64)>, StoreError> {
        let row = sqlx::query("SELECT schedule_id, slot_ms FROM schedule_runs WHERE job_id = $1")
            .bind(job.as_str())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?))),
            None => Ok(None),
        }
    }

    /// Deletes lease rows that expired more than `older_than` ago; returns how many.
    pub async fn forget_expired_leases(&self, older_than: Duration) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM worker_leases WHERE expires_ms < $1")
            .bind(now_ms() - older_than.as_millis() as i64)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// A worker's lease, as `/metrics` shows it.
#[derive(Debug, Default)]
pub struct LeaseCounters {
    /// 1 while the worker holds its lease.
    pub held: AtomicU64,
    pub taken: AtomicU64,
    pub renewed: AtomicU64,
    /// Renewals that found the lease expired or gone (taken again at once).
    pub lost: AtomicU64,
    /// Renewals that failed (store unreachable); the lease runs out if they go on.
    pub renew_errors: AtomicU64,
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
    );
}

impl LeaseCounters {
    /// Prometheus text lines.
    pub fn render(&self, out: &mut String) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metric(
            out,
            "portshift_worker_lease_held",
            "gauge",
            "1 while this worker holds its job lease.",
            g(&self.held),
        );
        metric(
            out,
            "portshift_worker_lease_taken_total",
            "counter",
            "Leases this worker took (again after a loss).",
            g(&self.taken),
        );
        metric(
            out,
            "portshift_worker_lease_renewals_total",
            "counter",
            "Lease renewals (one per heartbeat).",
            g(&self.renewed),
        );
        metric(
            out,
            "portshift_worker_lease_lost_total",
            "counter",
            "Renewals that found the lease already expired or gone.",
            g(&self.lost),
        );
        metric(
            out,
            "portshift_worker_lease_renew_errors_total",
            "counter",
            "Renewals that failed (job store unreachable).",
            g(&self.renew_errors),
        );
    }
}

/// What a supervisor did, for `/metrics`.
#[derive(Debug, Default)]
pub struct SupervisorCounters {
    pub passes: AtomicU64,
    /// Abandoned jobs this supervisor moved to `needs_credentials`.
    pub marked_needs_credentials: AtomicU64,
    /// Abandoned scheduled runs this supervisor started a new worker for.
    pub restarted: AtomicU64,
    /// Schedule runs left `running` by a dead scheduler that this supervisor settled.
    pub runs_settled: AtomicU64,
    /// Abandoned jobs another supervisor acted on first.
    pub claims_lost: AtomicU64,
    pub errors: AtomicU64,
}

impl SupervisorCounters {
    /// Prometheus text lines; `live_leases` is the store's count, when it could be read.
    pub fn render(&self, out: &mut String, live_leases: Option<u64>) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metric(
            out,
            "portshift_supervisor_passes_total",
            "counter",
            "Looks for abandoned jobs by this process's supervisor.",
            g(&self.passes),
        );
        let _ = writeln!(
            out,
            "# HELP portshift_supervisor_abandoned_jobs_total Abandoned jobs this supervisor acted on, by action.\n\
             # TYPE portshift_supervisor_abandoned_jobs_total counter\n\
             portshift_supervisor_abandoned_jobs_total{{action=\"needs_credentials\"}} {}\n\
             portshift_supervisor_abandoned_jobs_total{{action=\"restarted\"}} {}",
            g(&self.marked_needs_credentials),
            g(&self.restarted)
        );
        metric(
            out,
            "portshift_supervisor_runs_settled_total",
            "counter",
            "Schedule runs left running by a dead scheduler that this supervisor settled.",
            g(&self.runs_settled),
        );
        metric(
            out,
            "portshift_supervisor_claims_lost_total",
            "counter",
            "Abandoned jobs another supervisor acted on first.",
            g(&self.claims_lost),
        );
        metric(
            out,
            "portshift_supervisor_errors_total",
            "counter",
            "Supervisor passes that stopped on an error (retried at the next interval).",
            g(&self.errors),
        );
        if let Some(n) = live_leases {
            metric(
                out,
                "portshift_worker_leases_live",
                "gauge",
                "Live worker leases in the job store (all jobs, all hosts).",
                n,
            );
        }
    }
}

/// The supervisor of a process that cannot start workers itself (`serve`): abandoned
/// jobs that are not schedule runs move to `needs_credentials`; schedule runs are left
/// to the scheduler, which resolves their references again.
#[derive(Clone, Debug)]
pub struct Supervisor {
    pub store: JobStore,
    /// The lease duration: a job's heartbeat must be this old before it counts as abandoned.
    pub lease: Duration,
    pub every: Duration,
    pub counters: Arc<SupervisorCounters>,
}

impl Supervisor {
    /// One look: marks every abandoned one-shot job (not a schedule run); returns the
    /// jobs this call moved. Also forgets long-expired lease rows.
    pub async fn pass(&self) -> Result<Vec<JobId>, StoreError> {
        self.counters.passes.fetch_add(1, Ordering::Relaxed);
        let mut marked = Vec::new();
        for a in self.store.abandoned_jobs(self.lease, 100).await? {
            if a.schedule.is_some() {
                continue;
            }
            if self
                .store
                .mark_abandoned(&a.job, self.lease, &abandoned_reason(&a.job))
                .await?
            {
                self.counters
                    .marked_needs_credentials
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(job = %a.job, "job abandoned by its workers; it waits for `portshift resume`");
                marked.push(a.job);
            } else {
                self.counters.claims_lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.store
            .forget_expired_leases(KEEP_EXPIRED_LEASES)
            .await?;
        Ok(marked)
    }

    /// Runs [`Supervisor::pass`] every `every` until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = stop.changed() => if changed.is_err() { break },
            }
            if *stop.borrow() {
                break;
            }
            if let Err(e) = self.pass().await {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "supervisor pass failed; will retry");
            }
        }
    }
}
