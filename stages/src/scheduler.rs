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

use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use pipeline::messages::ListTask;
use pipeline::schedules::{CronSchedule, Schedule};
use pipeline::store::JobStore;
use pipeline::tenancy::{Allowances, Trust};
use pipeline::topology::{self, Stage};
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

impl Scheduler {
    /// Runs until `stop` turns true. Runs already started finish in the background of
    /// this call and are awaited before it returns.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut runs = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(self.tick);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
            while runs.try_join_next().is_some() {}
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
        // A tenant's schedule may not read the server's environment, files or identity,
        // whenever it was created: checked before anything is resolved, so the reason
        // says nothing about what exists on this machine.
        let trust = Trust::for_level(schedule.trust, &self.tenant_allowances);
        let refused = trust.check_refs(&schedule.refs);
        if !refused.is_empty() {
            let reason = refused
                .iter()
                .map(|r| format!("{}: {}", r.field, r.message))
                .collect::<Vec<_>>()
                .join(" ");
            store
                .update_run(&schedule.id, slot, "failed", None, Some(&reason), None)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        let fail = |reason: String| async move {
            // The watermark stays where it is: the next run covers this window too.
            store
                .update_run(&schedule.id, slot, "failed", None, Some(&reason), None)
                .await
                .map_err(|e| e.to_string())
        };
        let (field, credentials) = match schedule.refs.role_plan() {
            Ok(Some(plan)) => {
                // The customer's role, assumed with this organisation's own ExternalId
                // (never one from the schedule): the Chorus token stays in their
                // account until the worker reads it.
                let external_id = store
                    .aws_external_id(&schedule.organisation)
                    .await
                    .map_err(|e| e.to_string())?;
                let session = format!("portshift-{}", schedule.id);
                match crate::aws_role::assume(
                    &plan,
                    &external_id,
                    &session,
                    &self.aws,
                    self.signing_key.as_ref(),
                )
                .await
                {
                    Ok(grant) => (WorkerSecrets::AWS_ROLE, grant),
                    Err(e) => return fail(e.to_string()).await,
                }
            }
            Ok(None) => match schedule.refs.resolve() {
                // Resolved into one zeroed-on-drop buffer, for the worker's pipe only.
                Ok(mut c) => {
                    c.signing_key = self.signing_key.clone();
                    (WorkerSecrets::CREDENTIALS, c.to_worker_document())
                }
                Err(e) => return fail(e.to_string()).await,
            },
            Err(e) => return fail(e.to_string()).await,
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
        store
            .create_job(
                &job,
                &schedule.organisation,
                &format!("schedule {} ({})", schedule.name, self.name),
                &spec,
            )
            .await
            .map_err(|e| e.to_string())?;
        topology::publish_json(
            &self.js,
            Stage::List.subject(&job),
            &topology::msg_id(&job, "list", &["0"]),
            &ListTask {
                job: job.clone(),
                page: 0,
                continuation_key: None,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        store
            .update_run(&schedule.id, slot, "running", Some(&job), None, None)
            .await
            .map_err(|e| e.to_string())?;

        let mut child = match self.worker.spawn_with(&job, field, credentials).await {
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
        let progress = store.progress(&job).await.map_err(|e| e.to_string())?;
        let totals = Some((progress.files, progress.bytes));
        match status {
            st @ (JobStatus::Finished | JobStatus::FinishedWithFailures) => {
                store
                    .record_schedule_exports(&schedule.id, &schedule.template.destination, &job)
                    .await
                    .map_err(|e| e.to_string())?;
                if st == JobStatus::Finished {
                    store
                        .set_watermark(&schedule.id, now.timestamp())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                store
                    .update_run(&schedule.id, slot, st.as_str(), Some(&job), None, totals)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            other => {
                let reason = store.job(&job).await.ok().and_then(|j| j.status_reason);
                store
                    .update_run(
                        &schedule.id,
                        slot,
                        other.as_str(),
                        Some(&job),
                        reason.as_deref(),
                        totals,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// Resolves once `stop` turns true (never, if its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
