//! An organisation's settings: retention of its job history, its AWS ExternalId (for
//! cross-account roles), its billing card (`billing`), and deleting the organisation
//! with everything it owns. The page is `pages`, its HTML handlers `web`, the JSON
//! handlers `api`.

pub(crate) mod api;
pub mod pages;
pub(crate) mod web;

use crate::ctx::OrgCtx;
use crate::respond::Denied;
use crate::state::{AppState, Shared};

/// Reads a retention period as typed (form) or sent (API).
pub(crate) fn check_days(days: &str) -> Result<i64, Denied> {
    use pipeline::retention::{MAX_RETENTION_DAYS, MIN_RETENTION_DAYS, check_retention_days};
    days.trim()
        .parse::<i64>()
        .ok()
        .and_then(|d| check_retention_days(d).ok())
        .ok_or_else(|| {
            Denied::Invalid(format!(
                "Retention is a whole number of days from {MIN_RETENTION_DAYS} to {MAX_RETENTION_DAYS}."
            ))
        })
}

/// Sets the organisation's retention period and records it in the audit trail.
pub(crate) async fn set_retention(state: &AppState, c: &OrgCtx, days: i64) -> Result<(), Denied> {
    state.accounts.set_retention(&c.org.id, days).await?;
    c.audit(state, "retention.changed", &format!("{days} days"))
        .await
}

/// Deletes an organisation with everything it owns: its Stripe customer first (so its
/// subscription ends), then its jobs' workers on this server and their queue messages,
/// then every row (`Accounts::delete_org`). Its own audit trail goes with it, so the
/// deletion is logged here, by id only.
pub(crate) async fn erase_org(state: &Shared, org: &str) -> Result<(), Denied> {
    if let Some(stripe) = state.stripe.as_deref() {
        stripe.forget(&state.store, org).await?;
    }
    for job in state.accounts.org_jobs(org).await? {
        state.launcher.stop(&job);
        pipeline::topology::purge_job(&state.js, &job).await?;
    }
    state.accounts.delete_org(org).await?;
    tracing::info!(org, "organisation deleted with all its data");
    Ok(())
}
