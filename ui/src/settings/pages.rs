//! The settings page: retention, the AWS ExternalId, the billing card and, for owners,
//! deleting the organisation.

use leptos::prelude::*;
use pipeline::accounts::{Organisation, Role};

use crate::billing::{BillingFacts, billing_card};
use crate::layout::{Nav, day, document};

/// What the settings page says about retention: the organisation's period is in
/// `Organisation`; these come from the job store and the operator's options.
#[derive(Clone, Copy, Debug)]
pub struct RetentionFacts {
    /// When the oldest job still kept started, if any job is kept.
    pub oldest_job_ms: Option<i64>,
    /// How long audit events are kept (the operator's `--audit-retention-days`).
    pub audit_days: i64,
}

pub fn settings(
    nav: Nav,
    org: &Organisation,
    role: Role,
    facts: RetentionFacts,
    billing: &BillingFacts,
    aws_external_id: &str,
    notice: Option<String>,
) -> String {
    let csrf = nav.csrf.clone();
    let base = format!("/orgs/{}", org.id);
    let billing = billing_card(&base, &csrf, org, role, billing);
    let owner = (role == Role::Owner).then(|| {
        let csrf2 = csrf.clone();
        view! {
            <div class="card" id="danger">
                <h2>"Delete this organisation (owners)"</h2>
                <form method="post" action=format!("{base}/settings/delete")>
                    <input type="hidden" name="csrf" value=csrf2/>
                    <label>"Type the organisation's name to confirm " <input type="text" name="confirm" required=true/></label>
                    <button class="danger" type="submit">"Delete organisation"</button>
                </form>
            </div>
        }
    });
    document(
        "Settings".into(),
        Some(nav),
        view! {
            <h1>"Settings"</h1>
            {notice.map(|n| view! { <p class="notice">{n}</p> })}
            <div class="card" id="retention">
                <h2>"Retention"</h2>
                <p id="retention-period">{format!(
                    "Job history is kept {} days after a job's last activity; then the job, its \
                     progress rows, queue messages and worker log are deleted.",
                    org.retention_days
                )}</p>
                <p id="oldest-job">{match facts.oldest_job_ms {
                    Some(ms) => format!("Oldest job kept: started {}.", day(ms)),
                    None => "No jobs are kept at the moment.".to_string(),
                }}</p>
                <p class="muted">{format!(
                    "The default is {} days; choose from {} to {} days. Audit events are kept {} days.",
                    pipeline::retention::DEFAULT_RETENTION_DAYS,
                    pipeline::retention::MIN_RETENTION_DAYS,
                    pipeline::retention::MAX_RETENTION_DAYS,
                    facts.audit_days
                )}</p>
                <form method="post" action=format!("{base}/settings/retention")>
                    <input type="hidden" name="csrf" value=csrf.clone()/>
                    <label>"Keep job history for (days) " <input type="text" name="days" value=org.retention_days.to_string()/></label>
                    <button type="submit">"Save"</button>
                </form>
            </div>
            <div class="card" id="aws-role">
                <h2>"AWS cross-account role"</h2>
                <p>"Schedules can read their credentials from your own AWS account: create a role that trusts portshift's AWS principal with the condition sts:ExternalId equal to this organisation's ExternalId, keep the Chorus token in your Secrets Manager, and give the schedule aws-role:<role ARN>?secret=<secret ARN>."</p>
                <p>"ExternalId: " <code id="aws-external-id">{aws_external_id.to_string()}</code></p>
            </div>
            {billing}
            {owner}
        },
    )
}
