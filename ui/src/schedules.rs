//! Recurring syncs in the console: an organisation's schedules with their recent runs,
//! and pausing, resuming and deleting them, each change recorded in the audit trail.
//!
//! Shared by the pages and the JSON API, which check `Action::ManageSchedules` (and the
//! CSRF token for changes) before calling in here. Every schedule id a caller gives goes
//! through `ctx::schedule_in_org` first, so an id of another organisation is "not
//! found" and never acted on. Schedules are still created with `portshift schedule
//! create`; they hold credential references only, and nothing here shows those.

use pipeline::schedules::{Schedule, ScheduleError, ScheduleRun};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::ctx::{self, Denied, OrgCtx};

/// How many of a schedule's runs the page and the API show, newest first.
pub const RECENT_RUNS: i64 = 10;

/// A schedule with its most recent runs.
pub struct Listed {
    pub schedule: Schedule,
    pub runs: Vec<ScheduleRun>,
}

/// The organisation's schedules, oldest first, each with its recent runs.
pub async fn list(state: &AppState, org_id: &str) -> Result<Vec<Listed>, Denied> {
    let mut listed = Vec::new();
    for schedule in state.store.schedules_of(org_id).await? {
        let runs = state.store.schedule_runs(&schedule.id, RECENT_RUNS).await?;
        listed.push(Listed { schedule, runs });
    }
    Ok(listed)
}

/// A schedule checked a moment ago that has gone since (deleted concurrently) is not
/// found either.
fn gone(e: ScheduleError) -> Denied {
    match e {
        ScheduleError::NoSuchSchedule(_) => ctx::no_such_schedule(),
        e => e.into(),
    }
}

fn audit_detail(s: &Schedule) -> String {
    format!("{} ({})", s.name, s.id)
}

/// Pauses (`true`) or resumes (`false`) the organisation's schedule `id`; returns it as
/// it is now.
pub async fn set_paused(
    state: &AppState,
    c: &OrgCtx,
    id: &str,
    paused: bool,
) -> Result<Schedule, Denied> {
    let s = ctx::schedule_in_org(state, &c.org.id, id).await?;
    state
        .store
        .set_schedule_paused(&s.id, paused)
        .await
        .map_err(gone)?;
    let _ = state
        .accounts
        .audit(
            &c.org.id,
            &c.session.user.email,
            if paused {
                "schedule.paused"
            } else {
                "schedule.resumed"
            },
            &audit_detail(&s),
        )
        .await;
    state.store.schedule(&s.id).await.map_err(gone)
}

/// Deletes the organisation's schedule `id`; returns what it was.
pub async fn delete(state: &AppState, c: &OrgCtx, id: &str) -> Result<Schedule, Denied> {
    let s = ctx::schedule_in_org(state, &c.org.id, id).await?;
    state.store.delete_schedule(&s.id).await.map_err(gone)?;
    let _ = state
        .accounts
        .audit(
            &c.org.id,
            &c.session.user.email,
            "schedule.deleted",
            &audit_detail(&s),
        )
        .await;
    Ok(s)
}

/// When the schedule runs next; none while it is paused.
pub fn next_run_ms(s: &Schedule) -> Option<i64> {
    (!s.paused).then_some(s.next_run_ms)
}

pub fn run_json(r: &ScheduleRun) -> Value {
    json!({
        "slot_ms": r.slot_ms,
        "status": r.status,
        "job": r.job_id,
        "files": r.files,
        "bytes": r.bytes,
        "reason": r.reason,
    })
}

/// A schedule as the API shows it: no credential references, no template internals.
pub fn schedule_json(l: &Listed) -> Value {
    let s = &l.schedule;
    json!({
        "id": s.id,
        "name": s.name,
        "cron": s.cron,
        "timezone": s.timezone,
        "paused": s.paused,
        "next_run_ms": next_run_ms(s),
        "destination": s.template.destination,
        "last_run_status": l.runs.first().map(|r| r.status.as_str()),
        "runs": l.runs.iter().map(run_json).collect::<Vec<_>>(),
    })
}
