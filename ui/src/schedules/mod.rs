//! Recurring syncs in the console: an organisation's schedules with their recent runs,
//! and pausing, resuming and deleting them, each change recorded in the audit trail.
//!
//! Shared by the pages and the JSON API, which check `Action::ManageSchedules` (and the
//! CSRF token for changes) before calling in here. Every schedule id a caller gives goes
//! through `ctx::schedule_in_org` first, so an id of another organisation is "not
//! found" and never acted on. Schedules are created here (API) or with `portshift
//! schedule create`; they hold credential references only (a pasted secret is refused
//! without being echoed), and nothing here shows those references back.
//!
//! Its page is `pages`, its HTML handlers `web`, its JSON handlers `api`.

pub(crate) mod api;
pub mod pages;
pub(crate) mod web;

use chrono::{DateTime, Utc};
use pipeline::schedules::{
    CredentialRefs, CronSchedule, Schedule, ScheduleError, ScheduleRun, ScheduleTemplate,
};
use pipeline::tenancy::Supplied;
use pipeline::{ExportKinds, Trust, TrustLevel};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ctx::{self, OrgCtx};
use crate::exports;
use crate::layout::Errors;
use crate::respond::Denied;
use crate::state::AppState;

/// How many of a schedule's runs the page and the API show, newest first.
pub const RECENT_RUNS: i64 = 10;

/// A schedule with its most recent runs.
pub struct Listed {
    pub schedule: Schedule,
    pub runs: Vec<ScheduleRun>,
}

/// The organisation's schedules, oldest first, each with its recent runs.
pub async fn list(state: &AppState, org_id: &str) -> Result<Vec<Listed>, Denied> {
    let mut runs = state.store.recent_runs_of_org(org_id, RECENT_RUNS).await?;
    Ok(state
        .store
        .schedules_of(org_id)
        .await?
        .into_iter()
        .map(|schedule| {
            let runs = runs.remove(&schedule.id).unwrap_or_default();
            Listed { schedule, runs }
        })
        .collect())
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
    c.audit(
        state,
        if paused {
            "schedule.paused"
        } else {
            "schedule.resumed"
        },
        &audit_detail(&s),
    )
    .await?;
    state.store.schedule(&s.id).await.map_err(gone)
}

/// Deletes the organisation's schedule `id`; returns what it was.
pub async fn delete(state: &AppState, c: &OrgCtx, id: &str) -> Result<Schedule, Denied> {
    let s = ctx::schedule_in_org(state, &c.org.id, id).await?;
    state.store.delete_schedule(&s.id).await.map_err(gone)?;
    c.audit(state, "schedule.deleted", &audit_detail(&s))
        .await?;
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
        "layout": s.template.options.layout,
        "verify_after": s.template.options.verify_after,
        "last_run_status": l.runs.first().map(|r| r.status.as_str()),
        "runs": l.runs.iter().map(run_json).collect::<Vec<_>>(),
    })
}

/// A new schedule, as the API's JSON body and the console's form both send it (one model,
/// one validation). Credentials are given as references (`env:NAME`, `file:/path`,
/// `aws:default`, `gcp:workload-identity`), never values.
#[derive(Deserialize, Default, Debug)]
#[serde(default)]
pub struct NewSchedule {
    /// The console form's CSRF token (the API checks its header instead).
    pub csrf: Option<String>,
    /// Set by the console's form, whose unchecked checkboxes are simply absent: there an
    /// absent yes/no field means no, where the API's default is yes.
    pub checkboxes: Option<String>,
    pub name: String,
    /// Five cron fields, e.g. `0 2 * * *`.
    pub cron: String,
    /// An IANA time zone; empty means UTC.
    pub timezone: String,
    /// The first run exports from this day (YYYY-MM-DD, UTC).
    pub start: String,
    pub destination: String,
    /// Empty means the public Chorus API.
    pub chorus_url: String,
    /// What to export; each defaults to true (in the API).
    pub media: Option<FlagValue>,
    pub transcript: Option<FlagValue>,
    pub metadata: Option<FlagValue>,
    pub chorus_token_ref: String,
    pub s3_ref: Option<String>,
    pub azure_ref: Option<String>,
    pub gcs_ref: Option<String>,
    pub webhook_url: Option<String>,
    pub webhook_secret_ref: Option<String>,
    /// Days before the watermark each run looks again; default 7.
    pub lookback_days: Option<i64>,
    /// `plain` (the default) or `bagit`: each run writes its own BagIt bag.
    pub layout: Option<String>,
    /// Each run reads every file back after its manifest (needs read permission): a
    /// JSON boolean, or from the form `true`/`on`/`1` and `false`/`off`/`0`.
    pub verify_after: Option<FlagValue>,
}

/// A yes/no field as JSON (`true`) or a form (`"on"`) gives it; anything else is
/// reported against its field rather than guessed.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum FlagValue {
    Bool(bool),
    Text(String),
}

impl FlagValue {
    fn get(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            Self::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
                "true" | "on" | "1" | "yes" => Some(true),
                "" | "false" | "off" | "0" | "no" => Some(false),
                _ => None,
            },
        }
    }
}

impl NewSchedule {
    /// A yes/no field's value when it is absent: no from the console's form (an
    /// unchecked box), yes from the API.
    fn absent_means(&self) -> bool {
        self.checkboxes.is_none()
    }

    fn yes(&self, v: &Option<FlagValue>) -> bool {
        v.as_ref()
            .map_or(self.absent_means(), |v| v.get().unwrap_or(false))
    }

    /// What the form shows again after an error. Reference fields are not echoed: a
    /// credential pasted there by mistake must not come back in the page.
    pub fn values(&self) -> ScheduleValues {
        ScheduleValues {
            name: self.name.clone(),
            cron: self.cron.clone(),
            timezone: self.timezone.clone(),
            start: self.start.clone(),
            destination: self.destination.clone(),
            chorus_url: self.chorus_url.clone(),
            media: self.yes(&self.media),
            transcript: self.yes(&self.transcript),
            metadata: self.yes(&self.metadata),
            layout: self.layout.as_deref().unwrap_or_default().trim().to_owned(),
            verify_after: self
                .verify_after
                .as_ref()
                .and_then(FlagValue::get)
                .unwrap_or(false),
        }
    }
}

/// The non-secret values the schedule form is filled with.
#[derive(Clone)]
pub struct ScheduleValues {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub start: String,
    pub destination: String,
    pub chorus_url: String,
    pub media: bool,
    pub transcript: bool,
    pub metadata: bool,
    /// As typed (`plain`, `bagit`; anything else was refused).
    pub layout: String,
    pub verify_after: bool,
}

impl Default for ScheduleValues {
    fn default() -> Self {
        Self {
            name: String::new(),
            cron: "0 2 * * *".into(),
            timezone: "UTC".into(),
            start: chrono::Utc::now().date_naive().to_string(),
            destination: String::new(),
            chorus_url: "https://chorus.ai/".into(),
            media: true,
            transcript: true,
            metadata: true,
            layout: "plain".into(),
            verify_after: false,
        }
    }
}

/// A checked [`NewSchedule`], ready to store.
pub struct ValidSchedule {
    name: String,
    cron: String,
    timezone: String,
    template: ScheduleTemplate,
    refs: CredentialRefs,
    start: DateTime<Utc>,
}

fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The form field a reference error belongs to.
fn ref_field(what: &str) -> &'static str {
    match what {
        "s3" => "s3_ref",
        "azure" => "azure_ref",
        "gcs" => "gcs_ref",
        "webhook secret" => "webhook_secret_ref",
        _ => "chorus_token_ref",
    }
}

/// Checks a new schedule; every problem is reported against its field. `trust` is the
/// console's (a tenant's): references that resolve on the server are refused, as are
/// URLs a tenant may not reach (see `pipeline::tenancy`).
pub fn validate(f: &NewSchedule, trust: &Trust) -> Result<ValidSchedule, Errors> {
    let mut e = Errors::new();
    let name = f.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        e.insert(
            "name",
            "Give the schedule a name of 1 to 100 characters.".into(),
        );
    }
    let timezone = match f.timezone.trim() {
        "" => "UTC",
        tz => tz,
    };
    let cron = f.cron.trim();
    if let Err(err) = CronSchedule::check_time_zone(timezone) {
        e.insert("timezone", err.to_string());
    }
    if let Err(err) = CronSchedule::check_cron(cron) {
        e.insert("cron", err.to_string());
    }
    let start = exports::day(&f.start, false);
    if start.is_none() {
        e.insert("start", "Enter the first day as YYYY-MM-DD.".into());
    }
    let destination = exports::check_destination(f.destination.trim(), &mut e)
        .map(|d| d.to_string())
        .unwrap_or_default();
    exports::refused(&mut e, trust.check_destination(f.destination.trim()));
    let chorus_url = match f.chorus_url.trim() {
        "" => "https://chorus.ai/",
        u => u,
    };
    exports::check_chorus_url(chorus_url, &mut e);
    exports::refused(&mut e, trust.check_chorus_url(chorus_url));
    let mut kind = |field: &'static str, v: &Option<FlagValue>| match v {
        None => f.absent_means(),
        Some(v) => v.get().unwrap_or_else(|| {
            e.insert(field, "Use true or false.".into());
            false
        }),
    };
    let kinds = ExportKinds {
        media: kind("media", &f.media),
        transcript: kind("transcript", &f.transcript),
        metadata: kind("metadata", &f.metadata),
    };
    exports::check_kinds(&kinds, &mut e);
    let webhook_url = given(&f.webhook_url);
    if let Some(w) = &webhook_url {
        exports::refused(&mut e, trust.check_webhook_url(w));
        if !url::Url::parse(w).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
            e.insert(
                "webhook_url",
                "Enter an https:// URL or leave it empty.".into(),
            );
        } else if given(&f.webhook_secret_ref).is_none() {
            e.insert(
                "webhook_secret_ref",
                "A webhook needs a reference to its signing secret (env:NAME or file:/path)."
                    .into(),
            );
        }
    }
    let layout = match f.layout.as_deref().map(str::trim) {
        None | Some("") => pipeline::Layout::Plain,
        Some(other) => other.parse().unwrap_or_else(|msg: String| {
            e.insert("layout", msg);
            pipeline::Layout::Plain
        }),
    };
    let verify_after = match &f.verify_after {
        None => false,
        Some(v) => v.get().unwrap_or_else(|| {
            e.insert(
                "verify_after",
                "Use true or false (read every file back after each run's manifest).".into(),
            );
            false
        }),
    };
    let options = pipeline::ExportOptions {
        verify_after,
        layout,
    };
    let lookback_days = f.lookback_days.unwrap_or(7);
    if !(0..=365).contains(&lookback_days) {
        e.insert("lookback_days", "Look back between 0 and 365 days.".into());
    }
    let refs = CredentialRefs {
        chorus_token: f.chorus_token_ref.trim().to_owned(),
        s3: given(&f.s3_ref),
        webhook_secret: given(&f.webhook_secret_ref),
        azure: given(&f.azure_ref),
        gcs: given(&f.gcs_ref),
    };
    match refs.validate() {
        Ok(()) => {}
        Err(
            err @ (ScheduleError::BadRef { what, .. } | ScheduleError::Unresolved { what, .. }),
        ) => {
            // These messages never contain the value given (see pipeline::schedules).
            e.insert(ref_field(what), err.to_string());
        }
        Err(err) => {
            e.insert("chorus_token_ref", err.to_string());
        }
    }
    for r in trust.check_refs(&refs) {
        e.entry(r.field).or_insert(r.message);
    }
    let supplied = Supplied {
        s3: refs.s3.is_some(),
        azure: refs.azure.is_some(),
        gcs: refs.gcs.is_some(),
        bigquery: false,
    };
    if let Err(r) = trust.check_destination_credentials(&destination, supplied) {
        // The export form's field names, as this form's reference fields.
        let field = match r.field {
            "s3_access_key_id" => "s3_ref",
            "azure_sas_token" => "azure_ref",
            _ => "gcs_ref",
        };
        e.entry(field).or_insert(r.message);
    }
    match start {
        Some(start) if e.is_empty() => Ok(ValidSchedule {
            name: name.to_owned(),
            cron: cron.to_owned(),
            timezone: timezone.to_owned(),
            template: ScheduleTemplate {
                chorus_url: chorus_url.to_owned(),
                kinds,
                destination,
                webhook_url,
                lookback_s: lookback_days * 24 * 3600,
                options,
            },
            refs,
            start,
        }),
        _ => Err(e),
    }
}

/// Stores a checked schedule for the caller's organisation and records it in the audit
/// trail.
pub async fn create(state: &AppState, c: &OrgCtx, v: ValidSchedule) -> Result<Schedule, Denied> {
    exports::start_work_allowed(state, c).await?;
    if let Err(limit) = pipeline::billing::Billing::new(&state.store)
        .may_add_schedule(&c.org.id)
        .await?
    {
        return Err(Denied::Conflict(limit.0));
    }
    let s = state
        .store
        .create_schedule(
            &c.org.id,
            &v.name,
            &v.cron,
            &v.timezone,
            &v.template,
            &v.refs,
            v.start,
            TrustLevel::Tenant,
        )
        .await?;
    c.audit(
        state,
        "schedule.created",
        &format!("{} ({}): {} {}", s.name, s.id, s.cron, s.timezone),
    )
    .await?;
    Ok(s)
}
