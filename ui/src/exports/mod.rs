//! Starting, cancelling and retrying exports from the console. The form's credentials
//! live only in this request's memory: they are written as one JSON document to the new
//! worker process's standard input and zeroed; the job record gets the spec (destination
//! *location* only), the audit trail gets who and what, never a secret.
//!
//! With the job history and the live job page, this is the exports and jobs area: its
//! pages are `pages`, its HTML handlers (and the live page's event stream) `web`, its
//! JSON handlers `api`; the forms, their validation and the actions are here.

pub(crate) mod api;
pub mod pages;
pub(crate) mod web;

use std::collections::BTreeMap;

use chrono::{NaiveDate, NaiveTime};
use pipeline::destination_url::DestinationUrl;
use pipeline::tenancy::{Refusal, Supplied};
use pipeline::{ExportKinds, JobId, JobSpec, JobStatus, Trust};
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use crate::ctx::OrgCtx;
use crate::layout::Errors;
use crate::respond::Denied;
use crate::state::AppState;
use pages::{ExportValues, HistoryPage};

/// A checkbox (`"true"`/`"on"` from a form) or a JSON boolean.
pub(crate) fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        B(bool),
        S(String),
    }
    Ok(match Option::<Flag>::deserialize(d)? {
        None => false,
        Some(Flag::B(b)) => b,
        Some(Flag::S(s)) => !matches!(s.as_str(), "" | "false" | "off" | "0"),
    })
}

/// The credentials a job needs, as the export and retry forms (and their API bodies)
/// take them: one set of fields for both. Zeroed on drop, never printed.
#[derive(Deserialize, Default)]
pub struct CredentialFields {
    #[serde(default)]
    pub chorus_token: String,
    #[serde(default)]
    pub s3_access_key_id: String,
    #[serde(default)]
    pub s3_secret_access_key: String,
    #[serde(default)]
    pub webhook_secret: String,
    /// For azure:// destinations: a SAS token with create + write on the container.
    #[serde(default)]
    pub azure_sas_token: String,
    /// For gs:// destinations (and BigQuery): a service-account key file's JSON; empty
    /// means the worker machine's own identity.
    #[serde(default)]
    pub gcs_service_account_json: String,
}

impl Drop for CredentialFields {
    fn drop(&mut self) {
        self.chorus_token.zeroize();
        self.s3_access_key_id.zeroize();
        self.s3_secret_access_key.zeroize();
        self.webhook_secret.zeroize();
        self.azure_sas_token.zeroize();
        self.gcs_service_account_json.zeroize();
    }
}

impl std::fmt::Debug for CredentialFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialFields([redacted])")
    }
}

/// The export form (and the API's body: the same fields). Secrets are zeroed on drop
/// and never printed.
#[derive(Deserialize, Default)]
pub struct ExportForm {
    #[serde(default)]
    pub csrf: Option<String>,
    #[serde(default)]
    pub chorus_url: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default, deserialize_with = "flag")]
    pub media: bool,
    #[serde(default, deserialize_with = "flag")]
    pub transcript: bool,
    #[serde(default, deserialize_with = "flag")]
    pub metadata: bool,
    #[serde(default)]
    pub destination: String,
    #[serde(default)]
    pub webhook_url: String,
    /// The credentials, the same fields as the retry form's.
    #[serde(flatten)]
    pub credentials: CredentialFields,
    /// Read every file back after the manifest (needs read permission).
    #[serde(default, deserialize_with = "flag")]
    pub verify_after: bool,
    /// `plain` (default) or `bagit`.
    #[serde(default)]
    pub layout: String,
}

impl std::fmt::Debug for ExportForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExportForm([credentials redacted])")
    }
}

impl ExportForm {
    pub fn values(&self) -> ExportValues {
        ExportValues {
            chorus_url: self.chorus_url.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            media: self.media,
            transcript: self.transcript,
            metadata: self.metadata,
            destination: self.destination.clone(),
            webhook_url: self.webhook_url.clone(),
        }
    }
}

pub fn default_values() -> ExportValues {
    let today = chrono::Utc::now().date_naive();
    ExportValues {
        chorus_url: "https://chorus.ai/".into(),
        from: (today - chrono::Duration::days(30)).to_string(),
        to: today.to_string(),
        media: true,
        transcript: true,
        metadata: true,
        destination: String::new(),
        webhook_url: String::new(),
    }
}

pub(crate) fn day(s: &str, end: bool) -> Option<chrono::DateTime<chrono::Utc>> {
    let d = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()?;
    let t = if end {
        NaiveTime::from_hms_opt(23, 59, 59)?
    } else {
        NaiveTime::from_hms_opt(0, 0, 0)?
    };
    Some(d.and_time(t).and_utc())
}

/// Checks a destination URL with the one destination grammar the worker reads
/// ([`DestinationUrl`]); shared by the export form, schedules and the JSON API. Gives
/// back the destination as it is to be stored: its canonical rendering, which reads
/// back as the same destination (BigQuery sink and every option included).
pub fn check_destination(dest: &str, e: &mut Errors) -> Option<DestinationUrl> {
    if dest.is_empty() {
        e.insert(
            "destination",
            "Enter a destination URL: s3://bucket/prefix?region=.., azure://account/container/prefix, gs://bucket/prefix or file:///path".into(),
        );
        return None;
    }
    match dest.parse::<DestinationUrl>() {
        Ok(d) => Some(d),
        Err(err) => {
            e.insert(
                "destination",
                format!(
                    "{} (destinations look like s3://bucket/prefix?region=.., azure://account/container/prefix, gs://bucket/prefix or file:///path; see docs/permissions.md).",
                    capitalise(err.problem())
                ),
            );
            None
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Checks the Chorus API address; shared by the export form and schedules.
pub fn check_chorus_url(chorus_url: &str, e: &mut Errors) {
    match url::Url::parse(chorus_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
        _ => {
            e.insert(
                "chorus_url",
                "Enter the Chorus API address, e.g. https://chorus.ai/".into(),
            );
        }
    }
}

/// Checks that something is exported; shared by the export form and schedules.
pub fn check_kinds(kinds: &ExportKinds, e: &mut Errors) {
    if !(kinds.media || kinds.transcript || kinds.metadata) {
        e.insert(
            "kinds",
            "Choose at least one of media, transcripts and metadata.".into(),
        );
    }
}

/// Records a tenancy refusal against its field, unless the field already has an error
/// (the form's own message comes first).
pub(crate) fn refused(e: &mut Errors, r: Result<(), Refusal>) {
    if let Err(r) = r {
        e.entry(r.field).or_insert(r.message);
    }
}

/// Checks the form; returns the job spec or an error per field. `trust` is the
/// console's (a tenant's, with what the operator allowed): what it may not use is
/// reported against the field, with what to use instead.
pub fn validate(f: &ExportForm, trust: &Trust) -> Result<JobSpec, Errors> {
    let mut e: Errors = BTreeMap::new();
    check_chorus_url(f.chorus_url.trim(), &mut e);
    if f.credentials.chorus_token.trim().is_empty() {
        e.insert(
            "chorus_token",
            "Paste your Chorus API token (Chorus: Settings > Personal settings > API access)."
                .into(),
        );
    }
    let from = day(&f.from, false);
    let to = day(&f.to, true);
    if from.is_none() {
        e.insert("from", "Enter the first day as YYYY-MM-DD.".into());
    }
    if to.is_none() {
        e.insert("to", "Enter the last day as YYYY-MM-DD.".into());
    }
    if let (Some(a), Some(b)) = (from, to)
        && a > b
    {
        e.insert(
            "to",
            "The last day must not be before the first day.".into(),
        );
    }
    check_kinds(
        &ExportKinds {
            media: f.media,
            transcript: f.transcript,
            metadata: f.metadata,
        },
        &mut e,
    );
    refused(&mut e, trust.check_chorus_url(f.chorus_url.trim()));
    let dest = f.destination.trim();
    let parsed = check_destination(dest, &mut e);
    let layout = match f.layout.trim() {
        "" => pipeline::Layout::Plain,
        other => other.parse().unwrap_or_else(|msg: String| {
            e.insert("layout", msg);
            pipeline::Layout::Plain
        }),
    };
    refused(&mut e, trust.check_destination(dest));
    let has_key = !f.credentials.s3_access_key_id.trim().is_empty();
    let has_secret = !f.credentials.s3_secret_access_key.is_empty();
    if has_key != has_secret {
        e.insert(
            if has_key {
                "s3_secret_access_key"
            } else {
                "s3_access_key_id"
            },
            "Give both the access key id and its secret, or neither.".into(),
        );
    }
    check_cloud_secrets(
        parsed.as_ref(),
        &f.credentials.azure_sas_token,
        &f.credentials.gcs_service_account_json,
        &mut e,
    );
    refused(
        &mut e,
        trust.check_destination_credentials(
            dest,
            Supplied {
                s3: has_key && has_secret,
                azure: !f.credentials.azure_sas_token.trim().is_empty(),
                gcs: !f.credentials.gcs_service_account_json.trim().is_empty(),
                bigquery: false,
            },
        ),
    );
    let webhook = f.webhook_url.trim();
    if !webhook.is_empty() {
        refused(&mut e, trust.check_webhook_url(webhook));
        match url::Url::parse(webhook) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {
                if f.credentials.webhook_secret.is_empty() {
                    e.insert(
                        "webhook_secret",
                        "A webhook needs a signing secret so receivers can verify it.".into(),
                    );
                }
            }
            _ => {
                e.insert(
                    "webhook_url",
                    "Enter an https:// URL or leave it empty.".into(),
                );
            }
        }
    }
    if !e.is_empty() {
        return Err(e);
    }
    Ok(JobSpec {
        chorus_url: f.chorus_url.trim().to_string(),
        from: from.unwrap_or_default(),
        to: to.unwrap_or_default(),
        kinds: ExportKinds {
            media: f.media,
            transcript: f.transcript,
            metadata: f.metadata,
        },
        destination: parsed.map(|d| d.to_string()).unwrap_or_default(),
        webhook_url: (!webhook.is_empty()).then(|| webhook.to_string()),
        schedule: None,
        options: pipeline::ExportOptions {
            verify_after: f.verify_after,
            layout,
        },
        trust: trust.clone(),
    })
}

/// Azure needs a SAS token (portshift has no other way in); a GCS key, when given, must
/// be a service-account key file, and neither belongs to another kind of destination.
fn check_cloud_secrets(
    dest: Option<&DestinationUrl>,
    azure_sas: &str,
    gcs_json: &str,
    e: &mut Errors,
) {
    // An unreadable destination already has its own error; nothing to compare with.
    let Some(dest) = dest else { return };
    let scheme = dest.scheme();
    if scheme == "azure" && azure_sas.trim().is_empty() {
        e.insert(
            "azure_sas_token",
            "An azure:// destination needs a SAS token for the container with create and write permission (see docs/permissions.md).".into(),
        );
    }
    if !azure_sas.trim().is_empty() && scheme != "azure" {
        e.insert(
            "azure_sas_token",
            "A SAS token is only used for azure:// destinations: clear it or change the destination.".into(),
        );
    }
    let gcs_json = gcs_json.trim();
    if !gcs_json.is_empty() {
        let is_key = serde_json::from_str::<serde_json::Value>(gcs_json)
            .ok()
            .is_some_and(|v| {
                v.get("client_email").is_some_and(|x| x.is_string())
                    && v.get("private_key").is_some_and(|x| x.is_string())
            });
        if !is_key {
            e.insert(
                "gcs_service_account_json",
                "Paste the whole service-account key file (JSON with client_email and private_key).".into(),
            );
        } else if scheme != "gs" && dest.bigquery.is_none() {
            e.insert(
                "gcs_service_account_json",
                "A Google key is only used for gs:// destinations and BigQuery: clear it or change the destination.".into(),
            );
        }
    }
}

/// The worker's credentials document (pipeline::secrets::Credentials), zeroed on drop.
pub fn credentials_json(f: &CredentialFields) -> Zeroizing<Vec<u8>> {
    let mut doc = serde_json::Map::new();
    doc.insert("chorus_token".into(), f.chorus_token.trim().into());
    if !f.s3_access_key_id.trim().is_empty() {
        doc.insert(
            "s3".into(),
            serde_json::json!({"access_key_id": f.s3_access_key_id.trim(), "secret_access_key": f.s3_secret_access_key}),
        );
    }
    if !f.webhook_secret.is_empty() {
        doc.insert("webhook_secret".into(), f.webhook_secret.as_str().into());
    }
    if !f.azure_sas_token.trim().is_empty() {
        doc.insert(
            "azure".into(),
            serde_json::json!({"sas_token": f.azure_sas_token.trim()}),
        );
    }
    if !f.gcs_service_account_json.trim().is_empty() {
        doc.insert(
            "gcs".into(),
            serde_json::json!({"service_account_json": f.gcs_service_account_json.trim()}),
        );
    }
    let mut value = serde_json::Value::Object(doc);
    let bytes = Zeroizing::new(serde_json::to_vec(&value).unwrap_or_default());
    zero_value(&mut value);
    bytes
}

fn zero_value(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Object(m) => m.values_mut().for_each(zero_value),
        _ => {}
    }
}

/// Counts a request that starts work against the user's limit (on top of the per-client
/// API limit: one user can come from many addresses).
pub async fn start_work_allowed(state: &AppState, ctx: &OrgCtx) -> Result<(), Denied> {
    let (limit, window) = state.limits.start_work;
    let key = crate::auth::user_rate_key(&state.ip_salt, &ctx.session.user.id);
    match state
        .accounts
        .hit(&key, "start_work", window, limit)
        .await?
    {
        pipeline::accounts::RateDecision::Allowed { .. } => Ok(()),
        pipeline::accounts::RateDecision::Refused { retry_after_s } => {
            state
                .counters
                .rate_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(Denied::RateLimited(retry_after_s))
        }
    }
}

/// Refuses one more worker for an organisation at its cap (live workers, whoever
/// started them). Call with `state.start_lock` held until the job exists.
async fn below_worker_cap(state: &AppState, ctx: &OrgCtx) -> Result<(), Denied> {
    let cap = state.limits.workers_per_org;
    let live = state
        .store
        .live_workers_of(&ctx.org.id, pipeline::worker_process::WORKER_GONE_AFTER)
        .await?;
    if live >= cap {
        return Err(Denied::Conflict(format!(
            "{} already has {live} exports running, the most this server runs at once for one \
             organisation ({cap}). Wait for one to finish, or cancel one, then start this export again.",
            ctx.org.name
        )));
    }
    Ok(())
}

/// Creates the job, publishes its first list task and starts its worker.
pub async fn start(
    state: &AppState,
    ctx: &OrgCtx,
    spec: JobSpec,
    form: &ExportForm,
) -> Result<JobId, Denied> {
    start_work_allowed(state, ctx).await?;
    let _cap = state.start_lock.lock().await;
    below_worker_cap(state, ctx).await?;
    // The plan's monthly exports: refused before anything starts or is kept.
    let billing = pipeline::billing::Billing::new(&state.store);
    let now = chrono::Utc::now().timestamp_millis();
    if let Err(limit) = billing.take_export(&ctx.org.id, &ctx.org.name, now).await? {
        return Err(Denied::Conflict(limit.0));
    }
    let started = start_counted(state, ctx, spec, form).await;
    if started.is_err() {
        let _ = billing.give_back_export(&ctx.org.id, now).await;
    }
    started
}

async fn start_counted(
    state: &AppState,
    ctx: &OrgCtx,
    spec: JobSpec,
    form: &ExportForm,
) -> Result<JobId, Denied> {
    let job = JobId::new();
    pipeline::start::start_job(
        &state.store,
        &state.js,
        &job,
        &ctx.org.id,
        &ctx.session.user.email,
        &spec,
    )
    .await?;
    let creds = credentials_json(&form.credentials);
    if let Err(e) = state.launcher.launch(&job, creds).await {
        let reason = e.to_string();
        state
            .store
            .set_status(&job, JobStatus::Failed, Some(&reason))
            .await?;
        return Err(Denied::Internal(reason));
    }
    state
        .counters
        .exports_started
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ctx.audit(
        state,
        "export.started",
        &format!(
            "job {job}: {} .. {} to {}",
            spec.from.date_naive(),
            spec.to.date_naive(),
            spec.destination
        ),
    )
    .await?;
    Ok(job)
}

pub async fn cancel(state: &AppState, ctx: &OrgCtx, job: &JobId) -> Result<(), Denied> {
    let record = state.store.job(job).await?;
    if record.status.is_final() {
        return Ok(());
    }
    // Recorded first, so the worker (stopped gracefully next) sees a final job.
    match state
        .store
        .set_status(
            job,
            JobStatus::Cancelled,
            Some(&format!("cancelled by {}", ctx.session.user.email)),
        )
        .await
    {
        // It finished (or failed) meanwhile: that outcome stands.
        Err(pipeline::store::StoreError::IllegalTransition { .. }) => return Ok(()),
        other => other?,
    }
    // Gracefully (SIGTERM): the worker drops its transfers, which removes their
    // partial files, and aborts the multipart uploads they left open.
    state.launcher.stop(job);
    // Its consumers and unstarted tasks go now, whether a worker runs here or not.
    pipeline::topology::retire_job(&state.js, job).await;
    ctx.audit(state, "export.cancelled", &format!("job {job}"))
        .await?;
    Ok(())
}

/// The retry form: credentials again, since none were kept.
#[derive(Deserialize, Default)]
pub struct RetryForm {
    #[serde(default)]
    pub csrf: Option<String>,
    #[serde(flatten)]
    pub credentials: CredentialFields,
}

/// Replays the job's dead letters into their stages and starts a worker; returns how many
/// were replayed.
pub async fn retry(
    state: &AppState,
    ctx: &OrgCtx,
    job: &JobId,
    form: &RetryForm,
) -> Result<usize, Denied> {
    if form.credentials.chorus_token.trim().is_empty() {
        return Err(Denied::Invalid(
            "Give the Chorus API token again: retrying starts a new worker, and portshift kept no credentials.".into(),
        ));
    }
    start_work_allowed(state, ctx).await?;
    let _cap = state.start_lock.lock().await;
    if state.store.job(job).await?.status != JobStatus::Running {
        // A running job already has its worker (counted); a stopped one gets a new one.
        below_worker_cap(state, ctx).await?;
    }
    let letters = pipeline::replay::dead_letters(&state.js, job, None).await?;
    for l in &letters {
        pipeline::replay::replay(&state.js, job, l).await?;
    }
    state.store.reopen(job).await?;
    let creds = credentials_json(&form.credentials);
    // Gracefully (SIGTERM): the worker drops its transfers, which removes their
    // partial files, and aborts the multipart uploads they left open.
    state.launcher.stop(job);
    // Its consumers and unstarted tasks go now, whether a worker runs here or not.
    pipeline::topology::retire_job(&state.js, job).await;
    state
        .launcher
        .launch(job, creds)
        .await
        .map_err(|e| Denied::Internal(e.to_string()))?;
    ctx.audit(
        state,
        "export.retried",
        &format!("job {job}: {} dead letters replayed", letters.len()),
    )
    .await?;
    Ok(letters.len())
}

/// The job history's query: page number and status filter (pages and API alike).
#[derive(Deserialize, Default)]
pub(crate) struct HistoryQuery {
    #[serde(default)]
    pub page: Option<i64>,
    #[serde(default)]
    pub status: Option<String>,
}

pub(crate) const PER_PAGE: i64 = 50;

pub(crate) async fn history_page(
    state: &AppState,
    org: &str,
    q: &HistoryQuery,
) -> Result<HistoryPage, Denied> {
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse::<JobStatus>().map_err(|_| {
            Denied::Invalid(format!(
                "unknown status {s:?}: use running, needs_credentials, finished, finished_with_failures, failed or cancelled"
            ))
        })?),
    };
    let page = q.page.unwrap_or(1).max(1);
    let (jobs, total) = state
        .accounts
        .job_history(org, status, (page - 1) * PER_PAGE, PER_PAGE)
        .await?;
    Ok(HistoryPage {
        jobs,
        total,
        page,
        per_page: PER_PAGE,
        status: status.map(|s| s.as_str().to_string()),
    })
}

/// What the job page and `GET .../jobs/{job}` show: the job's live view, with the public
/// key that verifies its manifest signature.
pub(crate) async fn job_view(
    state: &AppState,
    job: &JobId,
) -> Result<crate::live::JobView, Denied> {
    let record = state.store.job(job).await?;
    let mut view = crate::live::job_view(&state.store, &state.js, &state.stats, &record).await?;
    view.signing_public_key = state.signing_keys.current.as_ref().map(|k| k.file());
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form() -> ExportForm {
        let mut credentials = CredentialFields::default();
        credentials.chorus_token = "t".into();
        credentials.s3_access_key_id = "AKIA".into();
        credentials.s3_secret_access_key = "sec".into();
        ExportForm {
            chorus_url: "https://chorus.ai/".into(),
            from: "2024-01-01".into(),
            to: "2024-01-31".into(),
            media: true,
            destination: "s3://bucket/prefix?region=eu-west-1".into(),
            credentials,
            ..Default::default()
        }
    }

    /// What `validate` gets in the console: a tenant's trust, nothing allowed.
    fn validate(f: &ExportForm) -> Result<JobSpec, Errors> {
        super::validate(f, &Trust::default())
    }

    #[test]
    fn validation_names_the_field() {
        assert!(validate(&form()).is_ok());
        let mut f = form();
        f.to = "2023-12-31".into();
        f.destination = "ftp://x".into();
        f.media = false;
        f.credentials.s3_secret_access_key.clear();
        let e = validate(&f).unwrap_err();
        for k in ["to", "destination", "kinds", "s3_secret_access_key"] {
            assert!(e.contains_key(k), "{k} missing in {e:?}");
        }
    }

    #[test]
    fn credentials_document_matches_the_worker_format() {
        let mut f = form();
        f.credentials.s3_access_key_id = "AKIA".into();
        f.credentials.s3_secret_access_key = "sec".into();
        let doc = credentials_json(&f.credentials);
        let creds = pipeline::secrets::Credentials::from_json(&doc).unwrap();
        assert!(creds.s3.is_some());
        assert!(creds.webhook_secret.is_none() && creds.azure.is_none() && creds.gcs.is_none());

        let mut f = form();
        f.credentials.s3_access_key_id.clear();
        f.credentials.s3_secret_access_key.clear();
        f.destination = "azure://acct/calls/chorus".into();
        f.credentials.azure_sas_token = "?sv=2024&sp=cw&sig=x".into();
        assert!(validate(&f).is_ok());
        let creds =
            pipeline::secrets::Credentials::from_json(&credentials_json(&f.credentials)).unwrap();
        assert!(creds.azure.is_some() && creds.s3.is_none());

        let mut f = form();
        f.credentials.s3_access_key_id.clear();
        f.credentials.s3_secret_access_key.clear();
        f.destination = "gs://bucket/chorus".into();
        f.credentials.gcs_service_account_json =
            r#"{"type":"service_account","client_email":"a@p.iam","private_key":"k"}"#.into();
        assert!(validate(&f).is_ok());
        let creds =
            pipeline::secrets::Credentials::from_json(&credentials_json(&f.credentials)).unwrap();
        assert!(creds.gcs.is_some());
    }

    /// The console reads a destination with the worker's grammar: what the worker would
    /// refuse is refused at the form, and what is stored reads back the same (sink too).
    #[test]
    fn destinations_are_checked_with_the_worker_grammar() {
        let mut f = form();
        f.destination = "file:///tmp/my%20calls?bigquery=p-1.calls.recordings&bigquery_endpoint=http://127.0.0.1:19050/bigquery/v2".into();
        // file:// and a private BigQuery endpoint without a key are the operator's to use.
        let spec = super::validate(&f, &Trust::Operator).unwrap();
        let d: DestinationUrl = spec.destination.parse().unwrap();
        assert_eq!(d, f.destination.parse::<DestinationUrl>().unwrap());
        assert_eq!(d.bigquery.unwrap().table, "recordings");
        for bad in [
            "s3://bucket/p?colour=red",
            "s3://bucket/p?bigquery=two.parts",
            "s3://bucket/p?sse=rot13",
            "gs://bucket/p?kms_key=mykey",
            "file:///tmp/a#b",
            "s3://key:secret@bucket/p",
            "s3://bucket/a/../b",
            "",
        ] {
            f.destination = bad.into();
            let e = validate(&f).unwrap_err();
            assert!(e.contains_key("destination"), "{bad}: {e:?}");
            assert!(!e["destination"].contains("secret@"), "{e:?}");
        }
    }

    #[test]
    fn cloud_credentials_are_checked_against_the_destination() {
        let mut f = form();
        f.destination = "azure://acct/calls".into();
        let e = validate(&f).unwrap_err();
        assert!(e["azure_sas_token"].contains("SAS token"), "{e:?}");

        let mut f = form();
        f.credentials.azure_sas_token = "sp=cw".into();
        f.credentials.s3_access_key_id.clear();
        assert!(validate(&f).unwrap_err().contains_key("azure_sas_token"));

        let mut f = form();
        f.destination = "gs://bucket/p".into();
        f.credentials.gcs_service_account_json = "not json".into();
        let e = validate(&f).unwrap_err();
        assert!(
            e["gcs_service_account_json"].contains("client_email"),
            "{e:?}"
        );
        // Keyless GCS would be the server's own identity: a tenant must bring a key.
        f.credentials.gcs_service_account_json.clear();
        let e = validate(&f).unwrap_err();
        assert!(
            e["gcs_service_account_json"].contains("own Google identity"),
            "{e:?}"
        );
    }

    #[test]
    fn tenants_are_refused_the_servers_disk_network_and_identity() {
        let mut f = form();
        f.credentials.s3_access_key_id.clear();
        f.credentials.s3_secret_access_key.clear();
        let e = validate(&f).unwrap_err();
        assert!(e["s3_access_key_id"].contains("own AWS identity"), "{e:?}");

        let mut f = form();
        f.destination = "file:///var/www/html".into();
        f.chorus_url = "http://169.254.169.254/".into();
        f.webhook_url = "https://127.0.0.1:22/".into();
        f.credentials.webhook_secret = "s".into();
        let e = validate(&f).unwrap_err();
        assert!(e["destination"].contains("s3://"), "{e:?}");
        assert!(e["chorus_url"].contains("https://"), "{e:?}");
        assert!(e["webhook_url"].contains("public"), "{e:?}");

        // The operator's allowances open exactly what they name.
        let dir = tempfile::tempdir().unwrap();
        let allow =
            pipeline::tenancy::Allowances::new(&["http://127.0.0.1:7070".into()], Some(dir.path()))
                .unwrap();
        let mut f = form();
        f.chorus_url = "http://127.0.0.1:7070/".into();
        f.destination = format!("file://{}/x", dir.path().canonicalize().unwrap().display());
        let spec = super::validate(&f, &Trust::Tenant(allow)).unwrap();
        assert!(spec.trust.is_tenant());
    }
}
