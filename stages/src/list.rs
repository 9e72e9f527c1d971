//! The list stage: one page of the Chorus engagement listing per message. Records each
//! recording as pending (so completion can be derived), emits a fetch task per
//! recording, then the next page's list task; the last page marks the listing complete.
//! It lists a page only while the job's backlog (recordings listed and not yet fetched)
//! is at most `list_ahead`: the work queue, the job store's pending rows and the Chorus
//! budget spent ahead of the fetches stay bounded whatever the size of the backfill.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pipeline::JobStatus;
use pipeline::messages::ListTask;
use pipeline::runner::{StageError, StageHandler};
use pipeline::store::ListedRecording;
use pipeline::topology::{self, Stage};

use crate::context::{JobContext, publish_err, store_err};

/// The default of `WorkerOptions::list_ahead`: twenty pages of the largest listing page
/// ahead of the fetches, enough that fetch workers never wait for a page.
pub const DEFAULT_LIST_AHEAD: u64 = 2_000;

/// How often a waiting list stage looks at the backlog again.
const BACKLOG_POLL: Duration = Duration::from_millis(250);

pub struct ListStage {
    pub ctx: Arc<JobContext>,
    /// The most recordings listed and not yet fetched before the next page is listed.
    pub list_ahead: u64,
    /// Turns true when the worker stops: a wait for the backlog ends there, and the page
    /// goes back in the queue.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// Whether the list stage may list its page now.
enum Backlog {
    /// At most `list_ahead` recordings wait: list the page.
    Room,
    /// The worker is stopping while the stage waited.
    Stopping,
}

impl ListStage {
    /// Returns once the job's backlog is at most `list_ahead`, or the worker stops. The
    /// runner keeps the message alive meanwhile (progress acks).
    async fn wait_for_backlog(&self) -> Result<Backlog, StageError> {
        let ctx = &self.ctx;
        let mut stopping = self.stopping.clone();
        let mut waited = false;
        loop {
            let backlog = ctx
                .store
                .pending_up_to(&ctx.job, self.list_ahead + 1)
                .await
                .map_err(store_err)?;
            if backlog <= self.list_ahead {
                return Ok(Backlog::Room);
            }
            if !waited {
                tracing::debug!(job = %ctx.job, backlog, list_ahead = self.list_ahead, "waiting for fetches before listing the next page");
                waited = true;
            }
            if *stopping.borrow() {
                return Ok(Backlog::Stopping);
            }
            tokio::select! {
                _ = tokio::time::sleep(BACKLOG_POLL) => {}
                // A closed channel means the worker is gone: stop as well.
                changed = stopping.changed() => if changed.is_err() { return Ok(Backlog::Stopping); },
            }
        }
    }

    /// Puts the page, unlisted, back in the queue as a new message for whichever worker
    /// goes on with the job, and lets the runner ack this one. A nak would count a
    /// delivery, and a long backfill stopped eight times while its listing waited would
    /// dead-letter the listing. Publish first, ack second: a crash in between leaves
    /// the page queued twice. That stays correct (recordings are added once, a fetch
    /// finds its files done, a page's own number is not a loop), but if the two copies
    /// run further apart than JetStream's duplicate window, the rest of the listing is
    /// requested twice.
    async fn hand_back(&self, task: &ListTask) -> Result<(), StageError> {
        let ctx = &self.ctx;
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        topology::publish_json(
            &ctx.js,
            Stage::List.subject(&ctx.job),
            &topology::msg_id(&ctx.job, "list", &[&task.page.to_string(), &fresh]),
            task,
        )
        .await
        .map_err(publish_err)
    }
}

#[async_trait]
impl StageHandler for ListStage {
    type Task = ListTask;

    fn stage(&self) -> Stage {
        Stage::List
    }

    async fn handle(&self, task: ListTask) -> Result<(), StageError> {
        if let Backlog::Stopping = self.wait_for_backlog().await? {
            return self.hand_back(&task).await;
        }
        let ctx = &self.ctx;
        let page = match ctx
            .chorus
            .list_engagements(&ctx.filter(), task.continuation_key.as_deref())
            .await
        {
            Ok(p) => p,
            Err(e) if e.is_permanent() => return Err(StageError::Invalid(e.to_string())),
            Err(e) => return Err(ctx.chorus_error(e).await),
        };

        let mut listed = Vec::with_capacity(page.engagements.len());
        let mut no_media = Vec::new();
        for e in &page.engagements {
            let row = ListedRecording {
                recording_id: e.engagement_id.clone(),
                recorded_at: e.recorded_at().map(|t| t.timestamp()),
                duration_s: e.duration.filter(|d| d.is_finite()),
                engagement_type: e.engagement_type.clone(),
            };
            if !e.has_recording() {
                no_media.push((
                    e.engagement_id.clone(),
                    format!(
                        "no recording to export (engagement type {}, processing state {})",
                        e.engagement_type.as_deref().unwrap_or("unknown"),
                        e.processing_state.as_deref().unwrap_or("unknown")
                    ),
                ));
            }
            listed.push(row);
        }
        if let Some(schedule) = &ctx.spec.schedule {
            // An incremental run: what this schedule already exported to this
            // destination is neither listed nor fetched again.
            let ids: Vec<String> = listed.iter().map(|r| r.recording_id.clone()).collect();
            let done = ctx
                .store
                .already_exported(schedule, &ctx.spec.destination, &ids)
                .await
                .map_err(store_err)?;
            listed.retain(|r| !done.contains(&r.recording_id));
            no_media.retain(|(id, _)| !done.contains(id));
        }
        ctx.store
            .add_listed(&ctx.job, &listed)
            .await
            .map_err(store_err)?;
        for (id, reason) in &no_media {
            ctx.store
                .mark_skipped(&ctx.job, id, reason)
                .await
                .map_err(store_err)?;
        }

        // The page's tasks are published together and their acks awaited together: one
        // round trip to JetStream per page rather than per recording. The list task is
        // acked only after every one is stored; a failure redelivers the page, and the
        // tasks stored already are dropped as duplicates by their msg-ids.
        let publishes = listed
            .iter()
            .filter(|r| !no_media.iter().any(|(id, _)| *id == r.recording_id))
            .map(|row| {
                topology::publish_fetch_task(&ctx.js, &ctx.job, &row.recording_id, row.recorded_at)
            });
        futures::future::try_join_all(publishes)
            .await
            .map_err(publish_err)?;

        match page.next_key(task.continuation_key.as_deref()) {
            Some(next) => {
                let next_page = task.page + 1;
                if let Some(first) = ctx
                    .store
                    .record_list_page(&ctx.job, &next, next_page)
                    .await
                    .map_err(store_err)?
                {
                    // Paging on would request the same pages forever.
                    return Err(StageError::Invalid(format!(
                        "Chorus's listing loops: page {} returned the same continuation key as \
                         page {first}, so the listing was stopped there. Re-run the export later, \
                         or report the date range to Chorus support if it persists",
                        task.page + 1
                    )));
                }
                topology::publish_json(
                    &ctx.js,
                    Stage::List.subject(&ctx.job),
                    &topology::msg_id(&ctx.job, "list", &[&next_page.to_string()]),
                    &ListTask {
                        job: ctx.job.clone(),
                        page: next_page,
                        continuation_key: Some(next),
                    },
                )
                .await
                .map_err(publish_err)?;
            }
            None => {
                ctx.store
                    .mark_listing_complete(&ctx.job)
                    .await
                    .map_err(store_err)?;
                ctx.maybe_request_manifest().await?;
            }
        }
        Ok(())
    }

    async fn on_dead(&self, _task: Option<ListTask>, reason: &str) -> Result<(), StageError> {
        // Without the rest of the listing the export cannot be complete: say so loudly.
        let ctx = &self.ctx;
        ctx.set_status(
            JobStatus::Failed,
            Some(&format!("listing Chorus failed: {reason}")),
        )
        .await
        .map_err(store_err)
    }
}
