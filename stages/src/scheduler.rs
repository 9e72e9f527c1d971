//! The scheduler: starts each due run of each schedule exactly once, even with several
//! schedulers (portshift servers) against one database, and runs it as a job in this
//! process with credentials resolved from the schedule's references.
//!
//! - A missed slot (scheduler down) becomes one run at start-up, not one per slot: the
//!   next run is always computed from *now*.
//! - One run of a schedule at a time: a slot that comes due while the previous run's job
//!   still works is recorded as skipped, with the reason.
//! - Incremental: each run's window starts at the schedule's watermark minus its
//!   lookback, and recordings the schedule already exported to the destination are not
//!   exported again. The watermark only moves after a run that finished cleanly.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use pipeline::messages::ListTask;
use pipeline::schedules::{CronSchedule, Schedule};
use pipeline::store::JobStore;
use pipeline::tenancy::{Allowances, Trust};
use pipeline::topology::{self, Stage};
use pipeline::{JobId, JobSpec, JobStatus};
use tokio::sync::watch;

use crate::worker::{self, WorkerCounters, WorkerOptions};

#[derive(Clone)]
pub struct Scheduler {
    pub store: JobStore,
    pub js: jetstream::Context,
    pub options: WorkerOptions,
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
        let credentials = match schedule.refs.resolve() {
            Ok(mut c) => {
                c.signing_key = self.signing_key.clone();
                c
            }
            Err(e) => {
                // The watermark stays where it is: the next run covers this window too.
                store
                    .update_run(
                        &schedule.id,
                        slot,
                        "failed",
                        None,
                        Some(&e.to_string()),
                        None,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(());
            }
        };
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

        let ctx = worker::prepare(
            &job,
            store.clone(),
            self.js.clone(),
            &credentials,
            &self.options,
        )
        .await;
        drop(credentials);
        let status = match ctx {
            Ok(ctx) => worker::run(ctx, self.options.clone(), WorkerCounters::default(), stop)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => {
                let reason = e.to_string();
                let _ = store
                    .set_status(&job, JobStatus::Failed, Some(&reason))
                    .await;
                Err(reason)
            }
        };
        let progress = store.progress(&job).await.map_err(|e| e.to_string())?;
        let totals = Some((progress.files, progress.bytes));
        match status {
            Ok(st @ (JobStatus::Finished | JobStatus::FinishedWithFailures)) => {
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
            Ok(other) => {
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
            Err(reason) => {
                store
                    .update_run(
                        &schedule.id,
                        slot,
                        "failed",
                        Some(&job),
                        Some(&reason),
                        totals,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// Convenience for tests and the CLI: a scheduler with default worker options.
pub fn scheduler(
    store: JobStore,
    js: jetstream::Context,
    tick: Duration,
    name: &str,
) -> Arc<Scheduler> {
    Arc::new(Scheduler {
        store,
        js,
        options: WorkerOptions::default(),
        tick,
        name: name.to_string(),
        signing_key: None,
        tenant_allowances: Allowances::default(),
    })
}
