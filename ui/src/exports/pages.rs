//! The pages of exports and jobs: the job history, the export form, and the live job page
//! with the panel its script replaces.

use leptos::prelude::*;
use pipeline::accounts::{JobSummary, Organisation};

use crate::layout::{Errors, Nav, document, duration, field_error, rate, time};
use crate::live::{JobView, StageView, chart_svg, human_bytes};

pub struct HistoryPage {
    pub jobs: Vec<JobSummary>,
    pub total: i64,
    pub page: i64,
    pub per_page: i64,
    pub status: Option<String>,
}

pub fn history(nav: Nav, org: &Organisation, h: HistoryPage) -> String {
    let base = format!("/orgs/{}/jobs", org.id);
    let filters = [
        None,
        Some("running"),
        Some("finished"),
        Some("finished_with_failures"),
        Some("failed"),
        Some("needs_credentials"),
        Some("cancelled"),
    ]
    .into_iter()
    .map(|s| {
        let href = match s {
            Some(s) => format!("{base}?status={s}"),
            None => base.clone(),
        };
        let current = h.status.as_deref() == s;
        view! { <a href=href class=if current { "current" } else { "" }>{s.unwrap_or("all")}</a> }
    })
    .collect::<Vec<_>>();
    let rows = h
        .jobs
        .iter()
        .map(|j| {
            view! {
                <tr class="job-row">
                    <td><a class="mono" href=format!("{base}/{}", j.id)>{j.id.to_string()}</a></td>
                    <td><span class=format!("status {}", j.status.as_str())>{j.status.as_str()}</span></td>
                    <td>{j.started_by.clone()}</td>
                    <td>{time(j.created_ms)}</td>
                    <td>{duration(j.created_ms, j.finished_ms)}</td>
                    <td>{j.files}</td>
                    <td>{human_bytes(j.bytes)}</td>
                </tr>
            }
        })
        .collect::<Vec<_>>();
    let pages = ((h.total + h.per_page - 1) / h.per_page).max(1);
    let link = |p: i64| {
        let mut q = format!("{base}?page={p}");
        if let Some(s) = &h.status {
            q.push_str(&format!("&status={s}"));
        }
        q
    };
    let prev = (h.page > 1).then(|| view! { <a href=link(h.page - 1) id="prev">"← newer"</a> });
    let next = (h.page < pages).then(|| view! { <a href=link(h.page + 1) id="next">"older →"</a> });
    let summary = format!("page {} of {} · {} jobs", h.page, pages, h.total);
    document(
        format!("{}: jobs", org.name),
        Some(nav),
        view! {
            <h1>"Job history"</h1>
            <p class="filters">"Status: " {filters}</p>
            <table id="jobs">
                <thead><tr><th>"Job"</th><th>"Status"</th><th>"Started by"</th><th>"When"</th><th>"Duration"</th><th>"Files"</th><th>"Bytes"</th></tr></thead>
                <tbody>{rows}</tbody>
            </table>
            <div class="pager">{prev}<span class="muted">{summary}</span>{next}</div>
        },
    )
}

/// The non-secret values of the export form, echoed back after a validation error.
#[derive(Clone, Debug, Default)]
pub struct ExportValues {
    pub chorus_url: String,
    pub from: String,
    pub to: String,
    pub media: bool,
    pub transcript: bool,
    pub metadata: bool,
    pub destination: String,
    pub webhook_url: String,
}

pub fn new_export(nav: Nav, org: &Organisation, v: ExportValues, errors: &Errors) -> String {
    let csrf = nav.csrf.clone();
    let action = format!("/orgs/{}/exports/new", org.id);
    document(
        "New export".into(),
        Some(nav),
        view! {
            <h1>"Start an export"</h1>
            <p class="muted">"Credentials go straight to the job's own worker process over a pipe: portshift never stores them, and this page never shows them again."</p>
            {(!errors.is_empty()).then(|| view! { <p class="notice bad" id="error">"Some fields need attention: see below."</p> })}
            <form class="stack card" method="post" action=action id="export-form" autocomplete="off">
                <input type="hidden" name="csrf" value=csrf/>
                <label>"Chorus API URL" <input type="url" name="chorus_url" value=v.chorus_url required=true/></label>
                {field_error(errors, "chorus_url")}
                <label>"Chorus API token" <input type="password" name="chorus_token" required=true autocomplete="off"/></label>
                {field_error(errors, "chorus_token")}
                <label>"From (first day, UTC)" <input type="date" name="from" value=v.from required=true/></label>
                {field_error(errors, "from")}
                <label>"To (last day, inclusive)" <input type="date" name="to" value=v.to required=true/></label>
                {field_error(errors, "to")}
                {what_and_where(v.media, v.transcript, v.metadata, v.destination, errors)}
                <label>"S3 access key id (empty: the worker's default credential chain)" <input type="text" name="s3_access_key_id" autocomplete="off"/></label>
                {field_error(errors, "s3_access_key_id")}
                <label>"S3 secret access key" <input type="password" name="s3_secret_access_key" autocomplete="off"/></label>
                {field_error(errors, "s3_secret_access_key")}
                <label>"Azure SAS token (azure:// only; create + write on the container)" <input type="password" name="azure_sas_token" autocomplete="off"/></label>
                {field_error(errors, "azure_sas_token")}
                <label>"Google service-account key JSON (gs:// and BigQuery; empty: the worker's own identity)" <textarea name="gcs_service_account_json" rows="3" autocomplete="off" spellcheck="false"></textarea></label>
                {field_error(errors, "gcs_service_account_json")}
                <label>"Webhook URL (optional)" <input type="url" name="webhook_url" value=v.webhook_url/></label>
                {field_error(errors, "webhook_url")}
                <label>"Webhook signing secret" <input type="password" name="webhook_secret" autocomplete="off"/></label>
                {field_error(errors, "webhook_secret")}
                <label><input type="checkbox" name="verify_after" value="true"/>" read every file back after the manifest (needs read permission)"</label>
                <label>"Layout" <select name="layout"><option value="plain" selected=true>"plain"</option><option value="bagit">"BagIt bag (payload under data/)"</option></select></label>
                {field_error(errors, "layout")}
                <button class="primary" type="submit" id="start-export">"Start export"</button>
            </form>
        },
    )
}

/// The export form's and the schedule form's shared fields: what to export per
/// recording, and where to.
pub(crate) fn what_and_where(
    media: bool,
    transcript: bool,
    metadata: bool,
    destination: String,
    errors: &Errors,
) -> impl IntoView + use<> {
    view! {
        <p class="checks"><strong>"Export: "</strong>
            <label><input type="checkbox" name="media" value="true" checked=media/>" media"</label>
            <label><input type="checkbox" name="transcript" value="true" checked=transcript/>" transcripts"</label>
            <label><input type="checkbox" name="metadata" value="true" checked=metadata/>" metadata"</label>
        </p>
        {field_error(errors, "kinds")}
        <label>"Destination URL" <input type="text" name="destination" value=destination required=true placeholder="s3://bucket/prefix?region=eu-west-1"/></label>
        {field_error(errors, "destination")}
    }
}

#[component]
fn StageRow(stage: StageView) -> impl IntoView {
    let svg = chart_svg(&stage.series);
    let has_chart = !stage.series.is_empty();
    view! {
        <tr class="stage" id=format!("stage-{}", stage.stage)>
            <td><strong>{stage.stage}</strong></td>
            <td class="items">{stage.items}</td>
            <td class="bytes">{human_bytes(stage.bytes)}</td>
            <td class="rate">{rate(stage.throughput_bps)}</td>
            <td>{has_chart.then(|| view! { <div inner_html=svg.clone()></div> })}</td>
            <td class="muted">{stage.note}</td>
        </tr>
    }
}

/// The part of the job page the live script replaces.
pub fn live_panel(
    v: &JobView,
    org_id: &str,
    csrf: &str,
    can_retry: bool,
    can_cancel: bool,
) -> String {
    let base = format!("/orgs/{org_id}/jobs/{}", v.id);
    let stages = v
        .stages
        .iter()
        .cloned()
        .map(|s| view! { <StageRow stage=s/> })
        .collect::<Vec<_>>();
    let problems = v
        .problems
        .iter()
        .map(|p| view! { <tr><td class="mono">{p.recording_id.clone()}</td><td>{p.status.clone()}</td><td>{p.reason.clone()}</td></tr> })
        .collect::<Vec<_>>();
    let has_problems = !problems.is_empty();
    let manifest = v.manifest_key.clone().map(|k| {
        let sha = v.manifest_sha256.clone().unwrap_or_default();
        let name = k.rsplit('/').next().unwrap_or(&k).to_string();
        let signing = match v.signing_public_key.clone() {
            Some(pk) => view! {
                <div id="signing-key">
                    <p>"Signature: " <span class="mono">{format!("{name}.minisig")}</span> ". Public key ("
                        <a href={pipeline::signing::PUBLIC_KEY_PATH}>{pipeline::signing::PUBLIC_KEY_PATH}</a>
                        "; retired keys: " <a href={pipeline::signing::PUBLIC_KEYS_DIR}>{pipeline::signing::PUBLIC_KEYS_DIR}</a> "):"</p>
                    <pre class="mono">{pk}</pre>
                    <p class="muted">{format!("Check it with: minisign -Vm {name} -p portshift-signing-key.pub")}</p>
                </div>
            }
            .into_any(),
            None => view! {
                <p id="signing-key" class="muted">"Unsigned: this console has no signing key configured, so nothing proves portshift wrote this manifest (its hashes still check the files)."</p>
            }
            .into_any(),
        };
        view! {
            <div class="card" id="manifest">
                <h2>"Manifest"</h2>
                <p>"Location: " <span class="mono" id="manifest-key">{k}</span></p>
                <p>"SHA-256: " <span class="mono" id="manifest-sha">{sha}</span></p>
                <p class="muted">{format!("Check a downloaded copy with: sha256sum -c {name}")}</p>
                {signing}
            </div>
        }
    });
    let retry = (can_retry && v.dead_letters > 0).then(|| {
        view! {
            <form class="stack" method="post" action=format!("{base}/retry") id="retry-form" autocomplete="off">
                <input type="hidden" name="csrf" value=csrf.to_string()/>
                <p class="muted">"Retrying starts a worker again: give the credentials once more (they were never stored)."</p>
                <label>"Chorus API token" <input type="password" name="chorus_token" required=true/></label>
                <label>"S3 access key id" <input type="text" name="s3_access_key_id"/></label>
                <label>"S3 secret access key" <input type="password" name="s3_secret_access_key"/></label>
                <label>"Azure SAS token" <input type="password" name="azure_sas_token"/></label>
                <label>"Google service-account key JSON" <textarea name="gcs_service_account_json" rows="3" spellcheck="false"></textarea></label>
                <button class="primary" type="submit" id="retry">{format!("Retry {} failed", v.dead_letters)}</button>
            </form>
        }
    });
    let cancel = (can_cancel && !v.is_final).then(|| {
        view! {
            <form method="post" action=format!("{base}/cancel")>
                <input type="hidden" name="csrf" value=csrf.to_string()/>
                <button class="danger" type="submit" id="cancel">"Cancel job"</button>
            </form>
        }
    });
    let took = duration(v.created_ms, v.finished_ms);
    let panel = view! {
        <div class="card">
            <p>
                "Status: " <span id="job-status" class=format!("status {}", v.status)>{v.status.clone()}</span>
                {v.status_reason.clone().map(|r| view! { " " <span class="muted" id="status-reason">{r}</span> })}
            </p>
            <div class="grid">
                <div><div class="num" id="listed">{v.listed}</div><div class="muted">"recordings found"</div></div>
                <div><div class="num" id="exported">{v.exported}</div><div class="muted">"exported"</div></div>
                <div><div class="num">{v.skipped}</div><div class="muted">"skipped"</div></div>
                <div><div class="num" id="failed">{v.failed}</div><div class="muted">"failed"</div></div>
                <div><div class="num" id="files">{v.files}</div><div class="muted">"files"</div></div>
                <div><div class="num">{human_bytes(v.bytes)}</div><div class="muted">"written"</div></div>
                <div><div class="num">{took}</div><div class="muted">"duration"</div></div>
                <div><div class="num" id="dlq">{v.dead_letters}</div><div class="muted">"dead letters"</div></div>
            </div>
        </div>
        <table id="stages">
            <thead><tr><th>"Stage"</th><th>"Items"</th><th>"Bytes"</th><th>"Throughput"</th><th>"Over time"</th><th>""</th></tr></thead>
            <tbody>{stages}</tbody>
        </table>
        {retry}
        {cancel}
        {manifest}
        {has_problems.then(|| view! {
            <h2>"Errors"</h2>
            <table id="problems"><thead><tr><th>"Recording"</th><th>"Status"</th><th>"Reason"</th></tr></thead><tbody>{problems}</tbody></table>
        })}
    };
    panel.to_html()
}

pub fn job(nav: Nav, org: &Organisation, v: &JobView, panel: String) -> String {
    let title = format!("Job {}", v.id);
    let meta = format!(
        "{} → {} · {} .. {} · started by {} at {}",
        "Chorus",
        v.destination,
        v.from,
        v.to,
        v.started_by,
        time(v.created_ms)
    );
    let back = format!("/orgs/{}/jobs", org.id);
    document(
        title.clone(),
        Some(nav),
        view! {
            <h1>{title}</h1>
            <p class="muted mono">{meta}</p>
            <div id="live" inner_html=panel></div>
            <p><a href=back>"All jobs"</a></p>
        },
    )
}
