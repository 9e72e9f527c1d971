//! The schedules page: each schedule with its recent runs, and the new-schedule form.

use leptos::prelude::*;
use pipeline::accounts::Organisation;

use super::{Listed, ScheduleValues};
use crate::exports::pages::what_and_where;
use crate::layout::{Errors, Nav, document, field_error, time};
use crate::live::human_bytes;

pub fn schedules(
    nav: Nav,
    org: &Organisation,
    list: Vec<Listed>,
    v: ScheduleValues,
    errors: &Errors,
) -> String {
    let csrf = nav.csrf.clone();
    let form_csrf = nav.csrf.clone();
    let base = format!("/orgs/{}/schedules", org.id);
    let jobs = format!("/orgs/{}/jobs", org.id);
    let empty = list.is_empty();
    let cards = list
        .into_iter()
        .map(|Listed { schedule: s, runs }| {
            let action = format!("{base}/{}", s.id);
            let (toggle, label) = if s.paused {
                ("resume", "Resume")
            } else {
                ("pause", "Pause")
            };
            let next = super::next_run_ms(&s)
                .map(time)
                .unwrap_or_else(|| "none while paused".into());
            let runs = runs
                .into_iter()
                .map(|r| {
                    let job = r.job_id.map(|j| {
                        let href = format!("{jobs}/{j}");
                        view! { <a class="mono" href=href>{j}</a> }
                    });
                    view! {
                        <tr class="run">
                            <td>{time(r.slot_ms)}</td>
                            <td><span class=format!("status {}", r.status)>{r.status.clone()}</span></td>
                            <td>{job}</td>
                            <td>{r.files.unwrap_or(0)}</td>
                            <td>{human_bytes(r.bytes.unwrap_or(0).max(0) as u64)}</td>
                            <td class="muted">{r.reason.unwrap_or_default()}</td>
                        </tr>
                    }
                })
                .collect::<Vec<_>>();
            let has_runs = !runs.is_empty();
            let (csrf, csrf2) = (csrf.clone(), csrf.clone());
            view! {
                <div class="card schedule" id=format!("schedule-{}", s.id)>
                    <h2>{s.name.clone()}</h2>
                    <p class="mono">{format!("{} ({}) → {}", s.cron, s.timezone, s.template.destination)}</p>
                    <p>
                        "Status: " <span class="schedule-status">{if s.paused { "paused" } else { "active" }}</span>
                        " · next run: " {next}
                    </p>
                    <form method="post" action=format!("{action}/{toggle}")>
                        <input type="hidden" name="csrf" value=csrf/>
                        <button type="submit">{label}</button>
                    </form>
                    <form method="post" action=format!("{action}/delete")>
                        <input type="hidden" name="csrf" value=csrf2/>
                        <button class="danger" type="submit">"Delete schedule"</button>
                    </form>
                    {has_runs.then(|| view! {
                        <table class="runs">
                            <thead><tr><th>"Slot"</th><th>"Status"</th><th>"Job"</th><th>"Files"</th><th>"Bytes"</th><th>"Reason"</th></tr></thead>
                            <tbody>{runs}</tbody>
                        </table>
                    })}
                    {(!has_runs).then(|| view! { <p class="muted">"No runs yet."</p> })}
                </div>
            }
        })
        .collect::<Vec<_>>();
    document(
        "Schedules".into(),
        Some(nav),
        view! {
            <h1>"Schedules"</h1>
            <p class="muted">"Each run exports only what is new since the last clean run, and appears in the job history. A schedule holds credential references, never the credentials: the scheduler reads them when a run starts."</p>
            {empty.then(|| view! { <p class="notice" id="no-schedules">"This organisation has no schedules yet."</p> })}
            <div id="schedules">{cards}</div>
            <form class="card stack" method="post" action=base.clone() id="new-schedule" autocomplete="off">
                <h2>"New schedule"</h2>
                <input type="hidden" name="csrf" value=form_csrf/>
                <input type="hidden" name="checkboxes" value="1"/>
                <label>"Name" <input type="text" name="name" value=v.name required=true/></label>
                {field_error(errors, "name")}
                <label>"When (cron: minute hour day month weekday)" <input type="text" name="cron" value=v.cron required=true/></label>
                {field_error(errors, "cron")}
                <label>"Time zone (IANA, e.g. Europe/Helsinki)" <input type="text" name="timezone" value=v.timezone/></label>
                {field_error(errors, "timezone")}
                <label>"First run exports from (YYYY-MM-DD)" <input type="date" name="start" value=v.start required=true/></label>
                {field_error(errors, "start")}
                <label>"Chorus API URL" <input type="url" name="chorus_url" value=v.chorus_url/></label>
                {field_error(errors, "chorus_url")}
                {what_and_where(v.media, v.transcript, v.metadata, v.destination, errors)}
                <p class="muted">"References: env:NAME (the scheduler's environment), file:/path (a mounted secret), aws:default, gcp:workload-identity, or aws-role:<role ARN>?secret=<secret ARN> (a role in your AWS account, trusted with this organisation's ExternalId: see Settings)."</p>
                <label>"Chorus token reference" <input type="text" name="chorus_token_ref" required=true placeholder="env:NAME or file:/path"/></label>
                {field_error(errors, "chorus_token_ref")}
                <label>"S3 keys reference (s3://)" <input type="text" name="s3_ref" placeholder="aws:default"/></label>
                {field_error(errors, "s3_ref")}
                <label>"Azure SAS reference (azure://)" <input type="text" name="azure_ref" placeholder="file:/run/secrets/azure-sas"/></label>
                {field_error(errors, "azure_ref")}
                <label>"Google key reference (gs://, BigQuery)" <input type="text" name="gcs_ref" placeholder="gcp:workload-identity"/></label>
                {field_error(errors, "gcs_ref")}
                <label>"Webhook URL (optional)" <input type="url" name="webhook_url"/></label>
                {field_error(errors, "webhook_url")}
                <label>"Webhook secret reference" <input type="text" name="webhook_secret_ref"/></label>
                {field_error(errors, "webhook_secret_ref")}
                <label><input type="checkbox" name="verify_after" value="true" checked=v.verify_after/>" read every file back after each run's manifest (needs read permission)"</label>
                {field_error(errors, "verify_after")}
                <label>"Layout" <select name="layout">
                    <option value="plain" selected={v.layout != "bagit"}>"plain"</option>
                    <option value="bagit" selected={v.layout == "bagit"}>"BagIt bag per run (payload under data/)"</option>
                </select></label>
                {field_error(errors, "layout")}
                <button class="primary" type="submit" id="create-schedule">"Create schedule"</button>
            </form>
        },
    )
}
