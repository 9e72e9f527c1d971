//! The console's pages as Leptos components rendered on the server to HTML strings (no
//! hydration: there is no wasm). Everything the user typed or the store holds is escaped
//! by Leptos; the only raw markup is the throughput SVG, which holds numbers only.

use std::collections::BTreeMap;

use leptos::prelude::*;
use pipeline::accounts::{AuditEvent, Invitation, JobSummary, Member, Organisation, Role};

use crate::live::{JobView, StageView, chart_svg, human_bytes};
use crate::roles::{Action, allows};
use crate::schedules::{Listed, ScheduleValues};

/// What the header needs: who is signed in, their CSRF token, the current organisation.
#[derive(Clone, Debug)]
pub struct Nav {
    pub email: String,
    pub csrf: String,
    pub org: Option<(String, String, Role)>,
}

pub type Errors = BTreeMap<&'static str, String>;

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

fn day(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

fn duration(created: i64, finished: Option<i64>) -> String {
    let end = finished.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let s = ((end - created).max(0) / 1000) as u64;
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn rate(bps: f64) -> String {
    if bps <= 0.0 {
        "–".into()
    } else {
        format!("{}/s", human_bytes(bps as u64))
    }
}

pub(crate) fn document(title: String, nav: Option<Nav>, body: impl IntoView + 'static) -> String {
    let header = nav.map(|n| {
        let org_links = n.org.clone().map(|(id, name, role)| {
            let base = format!("/orgs/{id}");
            view! {
                <a href=format!("{base}/jobs")>{format!("{name}: jobs")}</a>
                <a href=format!("{base}/exports/new")>"New export"</a>
                {allows(role, Action::ViewMembers).then(|| view! { <a href=format!("{base}/members")>"Members"</a> })}
                {allows(role, Action::ViewAudit).then(|| view! { <a href=format!("{base}/audit")>"Audit"</a> })}
                {allows(role, Action::ManageSchedules).then(|| view! { <a href=format!("{base}/schedules")>"Schedules"</a> })}
                {allows(role, Action::ManageRetention).then(|| view! { <a href=format!("{base}/settings")>"Settings"</a> })}
            }
        });
        view! {
            <header class="top">
                <a class="brand" href="/orgs">"portshift"</a>
                <nav>{org_links}</nav>
                <a class="muted" id="whoami" href="/account">{n.email.clone()}</a>
                <form method="post" action="/signout">
                    <input type="hidden" name="csrf" value=n.csrf.clone()/>
                    <button type="submit">"Sign out"</button>
                </form>
                <form method="post" action="/signout-everywhere">
                    <input type="hidden" name="csrf" value=n.csrf.clone()/>
                    <button type="submit">"Sign out everywhere"</button>
                </form>
            </header>
        }
    });
    let page = view! {
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <title>{format!("{title} · portshift")}</title>
                <link rel="stylesheet" href="/static/app.css"/>
            </head>
            <body>
                {header}
                <main>{body}</main>
                <script src="/static/live.js"></script>
            </body>
        </html>
    };
    format!("<!DOCTYPE html>{}", page.to_html())
}

pub(crate) fn field_error(errors: &Errors, field: &str) -> impl IntoView + use<> {
    errors
        .get(field)
        .cloned()
        .map(|e| view! { <p class="field-error" id=format!("error-{field}")>{e}</p> })
}

/// The export form's and the schedule form's shared fields: what to export per
/// recording, and where to.
fn what_and_where(
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

pub fn error_page(nav: Option<Nav>, title: &str, message: &str) -> String {
    let message = message.to_string();
    document(
        title.to_string(),
        nav,
        view! {
            <h1>{title.to_string()}</h1>
            <p class="notice bad" id="error">{message}</p>
            <p><a href="/orgs">"Back to your organisations"</a></p>
        },
    )
}

pub fn sign_in(pre: &str, email: &str, error: Option<String>, notice: Option<String>) -> String {
    document(
        "Sign in".into(),
        None,
        view! {
            <div class="card">
                <h1>"Sign in to portshift"</h1>
                {notice.map(|n| view! { <p class="notice">{n}</p> })}
                {error.map(|e| view! { <p class="notice bad" id="error">{e}</p> })}
                <form class="stack" method="post" action="/signin">
                    <input type="hidden" name="csrf" value=pre.to_string()/>
                    <label>"E-mail" <input type="email" name="email" value=email.to_string() required=true autocomplete="username"/></label>
                    <label>"Password" <input type="password" name="password" required=true autocomplete="current-password"/></label>
                    <button class="primary" type="submit" id="signin">"Sign in"</button>
                </form>
                <p class="muted">"No account yet? " <a href="/signup">"Sign up"</a>" · " <a href="/reset-password" id="forgot">"Forgot your password?"</a></p>
            </div>
        },
    )
}

pub fn sign_up(pre: &str, email: &str, errors: &Errors) -> String {
    document(
        "Sign up".into(),
        None,
        view! {
            <div class="card">
                <h1>"Create your portshift account"</h1>
                <form class="stack" method="post" action="/signup">
                    <input type="hidden" name="csrf" value=pre.to_string()/>
                    <label>"E-mail" <input type="email" name="email" value=email.to_string() required=true autocomplete="username"/></label>
                    {field_error(errors, "email")}
                    <label>"Password (at least 12 characters)" <input type="password" name="password" required=true autocomplete="new-password"/></label>
                    {field_error(errors, "password")}
                    <button class="primary" type="submit" id="signup">"Create account"</button>
                </form>
                <p class="muted">"Already have an account? " <a href="/signin">"Sign in"</a></p>
            </div>
        },
    )
}

pub fn orgs(
    nav: Nav,
    orgs: Vec<(Organisation, Role)>,
    errors: &Errors,
    mine: crate::account_pages::MyInvitations,
) -> String {
    let csrf = nav.csrf.clone();
    let invitations = crate::account_pages::invitations_panel(&csrf, mine);
    let rows = orgs
        .into_iter()
        .map(|(o, r)| {
            view! {
                <tr>
                    <td><a class="org-link" href=format!("/orgs/{}/jobs", o.id)>{o.name}</a></td>
                    <td>{r.as_str()}</td>
                </tr>
            }
        })
        .collect::<Vec<_>>();
    let empty = rows.is_empty();
    document(
        "Organisations".into(),
        Some(nav),
        view! {
            <h1>"Your organisations"</h1>
            {invitations}
            {(!empty).then(|| view! { <table id="orgs"><thead><tr><th>"Organisation"</th><th>"Your role"</th></tr></thead><tbody>{rows}</tbody></table> })}
            {empty.then(|| view! { <p class="notice">"You are not in an organisation yet: create one, or ask an admin to invite your e-mail address."</p> })}
            <h2>"Create an organisation"</h2>
            <form class="stack card" method="post" action="/orgs">
                <input type="hidden" name="csrf" value=csrf/>
                <label>"Name" <input type="text" name="name" required=true maxlength="80"/></label>
                {field_error(errors, "name")}
                <button class="primary" type="submit" id="create-org">"Create organisation"</button>
            </form>
        },
    )
}

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

pub fn members(
    nav: Nav,
    org: &Organisation,
    my_role: Role,
    members: Vec<Member>,
    invitations: Vec<Invitation>,
    errors: &Errors,
    notice: Option<String>,
) -> String {
    let csrf = nav.csrf.clone();
    let base = format!("/orgs/{}/members", org.id);
    let rows = members
        .into_iter()
        .map(|m| {
            let editable = crate::roles::may_change_role(my_role, m.role, None);
            let options = Role::ALL
                .into_iter()
                .filter(|r| crate::roles::may_change_role(my_role, m.role, Some(*r)))
                .map(|r| view! { <option value=r.as_str() selected=r == m.role>{r.as_str()}</option> })
                .collect::<Vec<_>>();
            let csrf = csrf.clone();
            let csrf2 = csrf.clone();
            let uid = m.user.id.clone();
            view! {
                <tr class="member">
                    <td>{m.user.email.clone()}</td>
                    <td class="role">{m.role.as_str()}</td>
                    <td>{editable.then(|| view! {
                        <form method="post" action=format!("{base}/{uid}/role")>
                            <input type="hidden" name="csrf" value=csrf/>
                            <select name="role">{options}</select>
                            <button type="submit">"Change"</button>
                        </form>
                        <form method="post" action=format!("{base}/{uid}/remove")>
                            <input type="hidden" name="csrf" value=csrf2/>
                            <button class="danger" type="submit">"Remove"</button>
                        </form>
                    })}</td>
                </tr>
            }
        })
        .collect::<Vec<_>>();
    let pending = invitations
        .into_iter()
        .map(|i| view! { <tr><td>{i.email}</td><td>{i.role.as_str()}</td><td class="muted">{format!("invited by {}", i.invited_by)}</td></tr> })
        .collect::<Vec<_>>();
    let invite_roles = Role::ALL
        .into_iter()
        .filter(|r| my_role == Role::Owner || *r != Role::Owner)
        .map(
            |r| view! { <option value=r.as_str() selected=r == Role::Member>{r.as_str()}</option> },
        )
        .collect::<Vec<_>>();
    document(
        "Members".into(),
        Some(nav),
        view! {
            <h1>"Members"</h1>
            {notice.map(|n| view! { <p class="notice" id="notice">{n}</p> })}
            <table id="members"><thead><tr><th>"E-mail"</th><th>"Role"</th><th>""</th></tr></thead><tbody>{rows}{pending}</tbody></table>
            <h2>"Invite someone"</h2>
            <form class="stack card" method="post" action=format!("{base}/invite")>
                <input type="hidden" name="csrf" value=csrf.clone()/>
                <label>"E-mail" <input type="email" name="email" required=true/></label>
                {field_error(errors, "email")}
                <label>"Role" <select name="role">{invite_roles}</select></label>
                {field_error(errors, "role")}
                <button class="primary" type="submit" id="invite">"Invite"</button>
            </form>
        },
    )
}

pub fn audit(nav: Nav, events: Vec<AuditEvent>) -> String {
    let rows = events
        .into_iter()
        .map(|e| view! { <tr><td>{time(e.at_ms)}</td><td>{e.actor}</td><td>{e.action}</td><td>{e.detail}</td></tr> })
        .collect::<Vec<_>>();
    document(
        "Audit trail".into(),
        Some(nav),
        view! {
            <h1>"Audit trail"</h1>
            <table id="audit"><thead><tr><th>"When"</th><th>"Who"</th><th>"What"</th><th>"Detail"</th></tr></thead><tbody>{rows}</tbody></table>
        },
    )
}

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
            let next = crate::schedules::next_run_ms(&s)
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

/// What the settings page says about retention: the organisation's period is in
/// `Organisation`; these come from the job store and the operator's options.
#[derive(Clone, Copy, Debug)]
pub struct RetentionFacts {
    /// When the oldest job still kept started, if any job is kept.
    pub oldest_job_ms: Option<i64>,
    /// How long audit events are kept (the operator's `--audit-retention-days`).
    pub audit_days: i64,
}

/// What the billing card shows: the plan's limits, this month's use, what is on sale.
#[derive(Clone, Debug, Default)]
pub struct BillingFacts {
    pub schedules: Option<u64>,
    pub exports_per_month: Option<u64>,
    pub exports_this_month: u64,
    pub subscription_status: Option<String>,
    /// Paid plans this server sells (empty: the operator set up no Stripe billing).
    pub on_sale: Vec<&'static str>,
    /// The organisation has a Stripe customer (the portal can open).
    pub has_customer: bool,
}

fn limit(n: Option<u64>) -> String {
    n.map(|n| n.to_string())
        .unwrap_or_else(|| "unlimited".into())
}

/// The billing card: every role on the settings page sees the plan; only owners get the
/// buttons, which lead to Stripe's own pages. No card field is ours.
fn billing_card(
    base: &str,
    csrf: &str,
    org: &Organisation,
    role: Role,
    b: &BillingFacts,
) -> impl IntoView + use<> {
    let owner = role == Role::Owner;
    let plan = org.billing_plan.clone();
    let status = b
        .subscription_status
        .clone()
        .map(|s| format!(" (Stripe subscription: {s})"))
        .unwrap_or_default();
    let terms = format!(
        "Schedules: {}. Exports a month: {} (used this month: {}).",
        limit(b.schedules),
        limit(b.exports_per_month),
        b.exports_this_month
    );
    let buttons = (owner && !b.on_sale.is_empty()).then(|| {
        let options = b
            .on_sale
            .iter()
            .map(|p| view! { <option value=p.to_string()>{p.to_string()}</option> })
            .collect::<Vec<_>>();
        let portal = b.has_customer.then(|| view! {
            <form method="post" action=format!("{base}/settings/billing/portal") id="billing-portal">
                <input type="hidden" name="csrf" value=csrf.to_string()/>
                <button type="submit">"Change plan, cancel or see invoices (Stripe)"</button>
            </form>
        });
        view! {
            <form method="post" action=format!("{base}/settings/billing/checkout") id="billing-checkout">
                <input type="hidden" name="csrf" value=csrf.to_string()/>
                <select name="plan">{options}</select>
                <button type="submit">"Subscribe with Stripe"</button>
            </form>
            {portal}
            <p class="muted">"Payment happens on Stripe's pages; portshift never sees your card. The plan changes when Stripe confirms it."</p>
        }
    });
    let note = (!owner).then(|| view! { <p class="muted">"Only owners can change the plan."</p> });
    let none_on_sale = (owner && b.on_sale.is_empty())
        .then(|| view! { <p class="muted">"This server sells no plans (its operator has not set up Stripe billing)."</p> });
    view! {
        <div class="card" id="billing">
            <h2>"Billing"</h2>
            <p id="billing-plan">"Plan: " <strong>{plan}</strong>{status}</p>
            <p id="billing-limits">{terms}</p>
            {note}
            {none_on_sale}
            {buttons}
        </div>
    }
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
