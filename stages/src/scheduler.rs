//! The scheduler: starts each due run of each schedule exactly once, even with several
//! schedulers (portshift servers) against one database, and runs it as a job in its own
//! short-lived `portshift worker` process, with the credentials resolved from the
//! schedule's references handed over the child's standard input. The scheduler holds a
//! run's credentials only between resolving them and writing them to the pipe; every
//! organisation's secrets live in their own worker's address space.
//!
//! - A missed slot (scheduler down) becomes one run at start-up, not one per slot: the
//!   next run is always computed from *now*.
//! - One run of a schedule at a time: a slot that comes due while the previous run's job
//!   still works is recorded as skipped, with the reason.
//! - At most `max_workers_per_org` live workers per organisation (console exports
//!   included): a slot beyond it is skipped with the reason, and the next one catches up.
//! - Incremental: each run's window starts at the schedule's watermark minus its
//!   lookback, and recordings the schedule already exported to the destination are not
//!   exported again. The watermark only moves after a run that finished cleanly.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use pipeline::leases::{OrphanedRun, SupervisorCounters, abandoned_reason};
use pipeline::schedules::{CronSchedule, Schedule};
use pipeline::store::{JobStore, StoreError};
use pipeline::tenancy::{Allowances, Trust};
use pipeline::worker_process::{WorkerCommand, WorkerSecrets};
use pipeline::{JobId, JobSpec, JobStatus};
use tokio::sync::watch;

use crate::aws_role::AwsRoleOptions;
use crate::worker::WORKER_GONE_AFTER;

pub use pipeline::worker_process::DEFAULT_MAX_WORKERS_PER_ORG;

#[derive(Clone)]
pub struct Scheduler {
    pub store: JobStore,
    pub js: jetstream::Context,
    /// How each run's worker process is started.
    pub worker: WorkerCommand,
    /// Live workers one organisation may have at once.
    pub max_workers_per_org: u64,
    /// Where STS is, for schedules that read their credentials through a customer's
    /// role (the worker gets the same endpoint on its command line).
    pub aws: AwsRoleOptions,
    /// How often due schedules are looked for.
    pub tick: Duration,
    /// Who started the jobs (shown in job history).
    pub name: String,
    /// The operator's manifest signing key, added to each run's credentials in memory.
    pub signing_key: Option<pipeline::signing::SigningKeyMaterial>,
    /// What the operator opened for tenant schedules (`scheduler --allow-origin`,
    /// `--allow-file-root`); nothing by default.
    pub tenant_allowances: Allowances,
}

/// The scheduler's supervisor settings (`scheduler --supervise-secs`, `--lease-secs`).
#[derive(Clone, Debug)]
pub struct Supervision {
    /// A running job's heartbeat must be this old, and all its leases expired, before
    /// it counts as abandoned.
    pub lease: Duration,
    /// How often abandoned jobs and orphaned runs are looked for.
    pub every: Duration,
    pub counters: Arc<SupervisorCounters>,
}

impl Scheduler {
    /// Runs until `stop` turns true, without a supervisor. Runs already started finish
    /// in the background of this call and are awaited before it returns.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        self.run_supervised(None, stop).await
    }

    /// [`Scheduler::run`], and with `supervision` a supervisor too: every `every`, before
    /// looking for due schedules, it
    /// - starts a new worker for each abandoned schedule run (its references resolved
    ///   again, as for a new run) and follows it like its own run;
    /// - moves each abandoned one-shot job (console, CLI) to `needs_credentials`: no
    ///   process holds its credentials any more;
    /// - settles each run a dead scheduler left marked running after its job ended, so
    ///   its watermark moves and the next slot runs.
    ///
    /// Each action starts with a conditional UPDATE, so with several schedulers (and
    /// consoles) supervising one store, one of them acts on each job.
    pub async fn run_supervised(
        self,
        supervision: Option<Supervision>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut runs = tokio::task::JoinSet::new();
        let every = supervision
            .as_ref()
            .map_or(self.tick, |s| s.every.min(self.tick));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut supervised: Option<std::time::Instant> = None;
        let mut looked: Option<std::time::Instant> = None;
        while !pipeline::shutdown::next_tick_or_stop(&mut tick, &mut stop).await {
            let woke = std::time::Instant::now();
            while runs.try_join_next().is_some() {}
            if let Some(sup) = &supervision
                && supervised.is_none_or(|t| t.elapsed() >= sup.every)
            {
                supervised = Some(std::time::Instant::now());
                if let Err(e) = self.supervise(sup, &mut runs, &stop).await {
                    sup.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "supervisor pass failed; will retry");
                }
            }
            // Due schedules every `tick`, even when the supervisor wakes the loop more often.
            if looked
                .is_some_and(|t| woke.duration_since(t) + Duration::from_millis(100) < self.tick)
            {
                continue;
            }
            looked = Some(woke);
            let now = Utc::now();
            let due = match self.store.due_schedules(now.timestamp_millis()).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read schedules; will retry");
                    continue;
                }
            };
            for schedule in due {
                let Some(next) = CronSchedule::parse(&schedule.cron, &schedule.timezone)
                    .ok()
                    .and_then(|c| c.next_after(now))
                else {
                    tracing::warn!(schedule = %schedule.id, "schedule has an unusable cron expression; skipped");
                    continue;
                };
                let slot = schedule.next_run_ms;
                match self
                    .store
                    .take_slot(&schedule.id, slot, next.timestamp_millis())
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => continue, // another scheduler took it
                    Err(e) => {
                        tracing::warn!(error = %e, "could not claim a schedule slot");
                        continue;
                    }
                }
                let this = self.clone();
                let stop = stop.clone();
                runs.spawn(async move {
                    if let Err(e) = this.run_slot(&schedule, slot, now, stop).await {
                        let _ = this
                            .store
                            .update_run(&schedule.id, slot, "failed", None, Some(&e), None)
                            .await;
                    }
                });
            }
        }
        while runs.join_next().await.is_some() {}
    }

    async fn run_slot(
        &self,
        schedule: &Schedule,
        slot: i64,
        now: DateTime<Utc>,
        stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let store = &self.store;
        // Never overlap: an earlier run whose job still works makes this slot a skip.
        let earlier = store
            .schedule_runs(&schedule.id, 20)
            .await
            .map_err(|e| e.to_string())?;
        for run in earlier
            .iter()
            .filter(|r| r.slot_ms != slot && r.status == "running")
        {
            if let Some(job) = run.job_id.as_deref().and_then(|j| j.parse::<JobId>().ok())
                && let Ok(record) = store.job(&job).await
                && record.status == JobStatus::Running
            {
                let reason = format!("the previous run (job {job}) was still running");
                store
                    .update_run(&schedule.id, slot, "skipped", None, Some(&reason), None)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(());
            }
        }
        let trust = Trust::for_level(schedule.trust, &self.tenant_allowances);
        let (field, credentials) = match self.credentials_for(schedule).await {
            Ok(c) => c,
            Err(reason) => {
                // The watermark stays where it is: the next run covers this window too.
                store
                    .update_run(&schedule.id, slot, "failed", None, Some(&reason), None)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(());
            }
        };
        let live = store
            .live_workers_of(&schedule.organisation, WORKER_GONE_AFTER)
            .await
            .map_err(|e| e.to_string())?;
        if live >= self.max_workers_per_org {
            let reason = format!(
                "the organisation already has {live} exports running (the limit is {}); \
                 the next run catches up",
                self.max_workers_per_org
            );
            store
                .update_run(&schedule.id, slot, "skipped", None, Some(&reason), None)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        // A tenant's plan: a downgraded organisation keeps its schedules but they do not
        // run, and scheduled runs count against the month's exports. A skipped slot
        // loses nothing: the watermark stays, so a later run covers its window.
        if schedule.trust == pipeline::TrustLevel::Tenant {
            let billing = pipeline::billing::Billing::new(store);
            let skip = if !billing
                .schedules_allowed(&schedule.organisation)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(
                    "the organisation's plan has no schedules; an owner can subscribe in \
                     Settings → Billing, and the next run then catches up"
                        .to_string(),
                )
            } else {
                billing
                    .take_export(
                        &schedule.organisation,
                        &schedule.organisation,
                        now.timestamp_millis(),
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .err()
                    .map(|l| l.0)
            };
            if let Some(reason) = skip {
                store
                    .update_run(&schedule.id, slot, "skipped", None, Some(&reason), None)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(());
            }
        }
        let from_s = match schedule.watermark_s {
            Some(w) => (w - schedule.template.lookback_s).max(schedule.start_s),
            None => schedule.start_s,
        };
        let spec = JobSpec {
            chorus_url: schedule.template.chorus_url.clone(),
            from: DateTime::from_timestamp(from_s, 0).unwrap_or(DateTime::UNIX_EPOCH),
            to: now,
            kinds: schedule.template.kinds.clone(),
            destination: schedule.template.destination.clone(),
            webhook_url: schedule.template.webhook_url.clone(),
            schedule: Some(schedule.id.clone()),
            options: schedule.template.options.clone(),
            trust,
        };
        let job = JobId::new();
        pipeline::start::start_job(
            store,
            &self.js,
            &job,
            &schedule.organisation,
            &format!("schedule {} ({})", schedule.name, self.name),
            &spec,
        )
        .await
        .map_err(|e| e.to_string())?;
        store
            .update_run(&schedule.id, slot, "running", Some(&job), None, None)
            .await
            .map_err(|e| e.to_string())?;

        let child = match self.worker.spawn_with(&job, field, credentials).await {
            Ok(child) => child,
            Err(e) => {
                let reason = e.to_string();
                let _ = store
                    .set_status(&job, JobStatus::Failed, Some(&reason))
                    .await;
                return Err(reason);
            }
        };
        tracing::info!(%job, pid = ?child.id(), schedule = %schedule.id, "worker started");
        self.follow(schedule, Some(slot), &job, child, now, stop)
            .await
    }

    /// The secrets a run's worker gets, from the schedule's references (resolved now),
    /// as `(field of the worker's input, document)`; or why there are none.
    async fn credentials_for(
        &self,
        schedule: &Schedule,
    ) -> Result<(&'static str, zeroize::Zeroizing<Vec<u8>>), String> {
        // A tenant's schedule may not read the server's environment, files or identity,
        // whenever it was created: checked before anything is resolved, so the reason
        // says nothing about what exists on this machine.
        let trust = Trust::for_level(schedule.trust, &self.tenant_allowances);
        let refused = trust.check_refs(&schedule.refs);
        if !refused.is_empty() {
            return Err(refused
                .iter()
                .map(|r| format!("{}: {}", r.field, r.message))
                .collect::<Vec<_>>()
                .join(" "));
        }
        match schedule.refs.role_plan() {
            Ok(Some(plan)) => {
                // The customer's role, assumed with this organisation's own ExternalId
                // (never one from the schedule): the Chorus token stays in their
                // account until the worker reads it.
                let external_id = self
                    .store
                    .aws_external_id(&schedule.organisation)
                    .await
                    .map_err(|e| e.to_string())?;
                let session = format!("portshift-{}", schedule.id);
                crate::aws_role::assume(
                    &plan,
                    &external_id,
                    &session,
                    &self.aws,
                    self.signing_key.as_ref(),
                )
                .await
                .map(|grant| (WorkerSecrets::AWS_ROLE, grant))
                .map_err(|e| e.to_string())
            }
            Ok(None) => match schedule.refs.resolve() {
                // Resolved into one zeroed-on-drop buffer, for the worker's pipe only.
                Ok(mut c) => {
                    c.signing_key = self.signing_key.clone();
                    Ok((WorkerSecrets::CREDENTIALS, c.to_worker_document()))
                }
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        }
    }

    /// Waits for a run's worker and records the run's outcome (`slot`: its row in the
    /// schedule's run history, if it has one; `run_time`: the end of its window).
    async fn follow(
        &self,
        schedule: &Schedule,
        slot: Option<i64>,
        job: &JobId,
        mut child: tokio::process::Child,
        run_time: DateTime<Utc>,
        stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let store = &self.store;
        let job = job.clone();
        let now = run_time;
        let child_pid = child.id().map(i64::from);
        let mut stopping = false;
        let exit = tokio::select! {
            exit = child.wait() => exit,
            _ = stopped(stop) => {
                // Like Ctrl-C for the worker: it finishes the files in flight and exits;
                // the job waits for its workers to come back.
                stopping = true;
                if let Some(pid) = child.id() {
                    // SAFETY: a signal to our own child process.
                    unsafe {
                        libc::kill(pid as i32, libc::SIGINT);
                    }
                }
                child.wait().await
            }
        };
        let exit = match exit {
            Ok(status) => status.to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        tracing::info!(%job, %exit, "worker exited");
        let mut status = store.job(&job).await.map_err(|e| e.to_string())?.status;
        let others = store
            .leases_of(&job)
            .await
            .map(|l| {
                // Not the lease our own (killed) child left behind.
                let now = Utc::now().timestamp_millis();
                let host = pipeline::leases::host_name();
                l.iter()
                    .any(|l| l.expires_ms >= now && !(Some(l.pid) == child_pid && l.host == host))
            })
            .unwrap_or(false);
        if status == JobStatus::Running && others {
            // Other workers (other hosts) still serve the job: they finish it, and a
            // supervisor settles the run then.
            return Ok(());
        }
        if status == JobStatus::Running && !stopping {
            // The worker is gone but the job did not end: nothing else will finish it.
            let reason = format!(
                "the job's worker process ended ({exit}) before the job did; \
                 its log is logs/worker-{job}.log in the scheduler's data folder"
            );
            store
                .set_status(&job, JobStatus::Failed, Some(&reason))
                .await
                .map_err(|e| e.to_string())?;
            status = JobStatus::Failed;
        }
        if status == JobStatus::Running && stopping {
            // Stopped with this scheduler: the run stays running, and a supervisor
            // (this scheduler when it comes back, or another) picks it up.
            return Ok(());
        }
        let progress = store.progress(&job).await.map_err(|e| e.to_string())?;
        let totals = Some((progress.files, progress.bytes));
        record_exports(store, schedule, &job, status, now.timestamp())
            .await
            .map_err(|e| e.to_string())?;
        let reason = match status {
            JobStatus::Finished | JobStatus::FinishedWithFailures => None,
            _ => store.job(&job).await.ok().and_then(|j| j.status_reason),
        };
        if let Some(slot) = slot {
            store
                .update_run(
                    &schedule.id,
                    slot,
                    status.as_str(),
                    Some(&job),
                    reason.as_deref(),
                    totals,
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// One supervisor pass (see [`Scheduler::run_supervised`]).
    async fn supervise(
        &self,
        sup: &Supervision,
        runs: &mut tokio::task::JoinSet<()>,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), StoreError> {
        let c = &sup.counters;
        c.passes.fetch_add(1, Ordering::Relaxed);
        for a in self.store.abandoned_jobs(sup.lease, 100).await? {
            if a.schedule.is_none() {
                if self
                    .store
                    .mark_abandoned(&a.job, sup.lease, &abandoned_reason(&a.job))
                    .await?
                {
                    c.marked_needs_credentials.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(job = %a.job, "job abandoned by its workers; it waits for `portshift resume`");
                } else {
                    c.claims_lost.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            if !self.store.claim_abandoned(&a.job, sup.lease).await? {
                c.claims_lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            c.restarted.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(job = %a.job, "scheduled run abandoned by its workers; starting a new worker");
            let this = self.clone();
            let stop = stop.clone();
            let job = a.job.clone();
            runs.spawn(async move {
                if let Err(e) = this.restart(&job, stop).await {
                    tracing::warn!(%job, error = %e, "could not restart the abandoned run");
                    let _ = this
                        .store
                        .set_status(&job, JobStatus::Failed, Some(&e))
                        .await;
                }
            });
        }
        for run in self.store.orphaned_runs(sup.lease, 100).await? {
            if self.settle(&run).await? {
                c.runs_settled.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(schedule = %run.schedule_id, job = %run.job, "settled a run its scheduler left running");
            }
        }
        self.store
            .forget_expired_leases(pipeline::leases::KEEP_EXPIRED_LEASES)
            .await?;
        Ok(())
    }

    /// Starts a new worker for an abandoned schedule run this scheduler claimed, with
    /// the schedule's references resolved again, and follows it.
    async fn restart(&self, job: &JobId, stop: watch::Receiver<bool>) -> Result<(), String> {
        let store = &self.store;
        let record = store.job(job).await.map_err(|e| e.to_string())?;
        let Some(schedule_id) = record.spec.schedule.clone() else {
            return Ok(());
        };
        let slot = store
            .run_of_job(job)
            .await
            .map_err(|e| e.to_string())?
            .map(|(_, slot)| slot);
        let fail = |reason: String, status: JobStatus| async move {
            let _ = store.set_status(job, status, Some(&reason)).await;
            if let Some(slot) = slot {
                let _ = store
                    .update_run(
                        &schedule_id,
                        slot,
                        status.as_str(),
                        Some(job),
                        Some(&reason),
                        None,
                    )
                    .await;
            }
            Ok(())
        };
        let schedule = match store
            .schedule(&record.spec.schedule.clone().unwrap_or_default())
            .await
        {
            Ok(s) => s,
            Err(e) => {
                return fail(
                    format!(
                        "every worker of this scheduled run stopped, and its schedule is gone ({e}), so nothing can resolve its credentials; \
                         continue it with `portshift resume {job}` and the credentials"
                    ),
                    JobStatus::NeedsCredentials,
                )
                .await;
            }
        };
        let (field, credentials) = match self.credentials_for(&schedule).await {
            Ok(c) => c,
            Err(reason) => return fail(reason, JobStatus::Failed).await,
        };
        let child = match self.worker.spawn_with(job, field, credentials).await {
            Ok(child) => child,
            Err(e) => return fail(e.to_string(), JobStatus::Failed).await,
        };
        tracing::info!(%job, pid = ?child.id(), schedule = %schedule.id, "worker started again for an abandoned run");
        self.follow(&schedule, slot, job, child, record.spec.to, stop)
            .await
    }

    /// Records the outcome of a run a dead scheduler left marked running; true if this
    /// call did (another supervisor may have first).
    async fn settle(&self, run: &OrphanedRun) -> Result<bool, StoreError> {
        let store = &self.store;
        let record = store.job(&run.job).await?;
        let progress = store.progress(&run.job).await?;
        let reason = match record.status {
            JobStatus::Finished | JobStatus::FinishedWithFailures => None,
            _ => record.status_reason.clone(),
        };
        if !store
            .settle_run(
                run,
                record.status.as_str(),
                reason.as_deref(),
                (progress.files, progress.bytes),
            )
            .await?
        {
            return Ok(false);
        }
        match store.schedule(&run.schedule_id).await {
            Ok(schedule) => {
                record_exports(
                    store,
                    &schedule,
                    &run.job,
                    record.status,
                    record.spec.to.timestamp(),
                )
                .await?
            }
            Err(e) => {
                tracing::info!(schedule = %run.schedule_id, error = %e, "the settled run's schedule is gone")
            }
        }
        Ok(true)
    }
}

/// What a finished run leaves for the schedule's next ones: the recordings it exported
/// (never exported again), and after a clean finish the watermark at its window's end.
async fn record_exports(
    store: &JobStore,
    schedule: &Schedule,
    job: &JobId,
    status: JobStatus,
    run_end_s: i64,
) -> Result<(), StoreError> {
    if matches!(
        status,
        JobStatus::Finished | JobStatus::FinishedWithFailures
    ) {
        store
            .record_schedule_exports(&schedule.id, &schedule.template.destination, job)
            .await?;
        if status == JobStatus::Finished {
            store.set_watermark(&schedule.id, run_end_s).await?;
        }
    }
    Ok(())
}

/// Resolves once `stop` turns true (never, if its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
