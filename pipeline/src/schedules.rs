//! Schedules: recurring incremental syncs. Owns the schedule model, cron evaluation in
//! a time zone, credential *references* and their resolution, and the schedule tables.
//!
//! A schedule never holds a credential value: it holds references (`env:NAME`,
//! `file:/path`, `aws:default`, ...) that the scheduler resolves into memory at the start
//! of each run. Exactly-once runs come from the database: the scheduler that moves a
//! schedule's `next_run_ms` forward (a compare-and-set) owns that slot, and the slot's
//! row in `schedule_runs` has the slot as its primary key.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::aws_role::RoleRef;
use crate::secrets::{AzureCredentials, Credentials, GcsCredentials, S3Credentials};
use crate::store::{Bound, DAY_MS, JobStore, StoreError, delete_some, now_ms};
use crate::{ExportKinds, JobId, TrustLevel};

/// What each run exports, minus the time window (which the schedule computes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleTemplate {
    pub chorus_url: String,
    pub kinds: ExportKinds,
    pub destination: String,
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// How far before the watermark each run looks again, for recordings that arrive
    /// late in Chorus (processing delays). Seconds; default 7 days.
    #[serde(default = "default_lookback")]
    pub lookback_s: i64,
    /// Each run's optional extra proofs (e.g. read-back verification).
    #[serde(default)]
    pub options: crate::ExportOptions,
}

fn default_lookback() -> i64 {
    7 * 24 * 3600
}

/// Where a run finds each credential. Stored as strings, validated on creation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRefs {
    pub chorus_token: String,
    #[serde(default)]
    pub s3: Option<String>,
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// An Azure SAS token for azure:// destinations (`env:` or `file:`).
    #[serde(default)]
    pub azure: Option<String>,
    /// A Google service-account key JSON for gs:// and BigQuery (`env:`, `file:`), or
    /// `gcp:workload-identity` for the machine's own identity.
    #[serde(default)]
    pub gcs: Option<String>,
}

/// One credential reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialRef {
    /// A variable in the scheduler's environment.
    Env(String),
    /// A file, e.g. a mounted Kubernetes secret.
    File(PathBuf),
    /// The AWS default chain: environment, profile, instance or pod role.
    AwsDefault,
    AzureManagedIdentity,
    GcpWorkloadIdentity,
    /// A role in the customer's AWS account, assumed with the organisation's
    /// ExternalId; the value is in the customer's Secrets Manager (see `aws_role`).
    AwsRole(RoleRef),
}

const REF_FORMS: &str = "env:NAME, file:/absolute/path, aws:default, azure:managed-identity, \
     gcp:workload-identity or aws-role:<role ARN>?secret=<secret ARN>";

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "{what}: {given:?} is not a credential reference. Use {REF_FORMS}; the value itself is never stored"
    )]
    BadRef { what: &'static str, given: String },
    #[error(
        "invalid cron expression {expr:?}: {detail}. Use five fields (minute hour day month weekday), e.g. \"0 2 * * *\""
    )]
    Cron { expr: String, detail: String },
    #[error("unknown time zone {0:?}: use an IANA name such as Europe/Helsinki or UTC")]
    TimeZone(String),
    #[error("{what}: {reference} cannot be resolved: {detail}")]
    Unresolved {
        what: &'static str,
        reference: String,
        detail: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no schedule {0}: `portshift schedule list` shows them")]
    NoSuchSchedule(String),
}

impl FromStr for CredentialRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let r = match s {
            "aws:default" => CredentialRef::AwsDefault,
            "azure:managed-identity" => CredentialRef::AzureManagedIdentity,
            "gcp:workload-identity" => CredentialRef::GcpWorkloadIdentity,
            _ => {
                if let Some(role) = crate::aws_role::parse(s) {
                    return role.map(CredentialRef::AwsRole).map_err(|_| s.to_string());
                }
                if let Some(name) = s.strip_prefix("env:") {
                    let ok = !name.is_empty()
                        && name.len() <= 128
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if !ok {
                        return Err(s.to_string());
                    }
                    CredentialRef::Env(name.to_string())
                } else if let Some(path) = s.strip_prefix("file:") {
                    if !path.starts_with('/') || path.contains('\n') {
                        return Err(s.to_string());
                    }
                    CredentialRef::File(PathBuf::from(path))
                } else {
                    return Err(s.to_string());
                }
            }
        };
        Ok(r)
    }
}

impl fmt::Display for CredentialRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialRef::Env(n) => write!(f, "env:{n}"),
            CredentialRef::File(p) => write!(f, "file:{}", p.display()),
            CredentialRef::AwsDefault => f.write_str("aws:default"),
            CredentialRef::AzureManagedIdentity => f.write_str("azure:managed-identity"),
            CredentialRef::GcpWorkloadIdentity => f.write_str("gcp:workload-identity"),
            CredentialRef::AwsRole(r) => r.fmt(f),
        }
    }
}

fn parse_ref(what: &'static str, given: &str) -> Result<CredentialRef, ScheduleError> {
    if let Some(Err(detail)) = crate::aws_role::parse(given) {
        return Err(ScheduleError::Unresolved {
            what,
            reference: redact_guess(given),
            detail,
        });
    }
    // Never echo something that is not a reference: it may be a pasted secret.
    given.parse().map_err(|_| ScheduleError::BadRef {
        what,
        given: redact_guess(given),
    })
}

fn redact_guess(given: &str) -> String {
    match given.split_once(':') {
        Some((scheme, _)) if scheme.len() < 12 => format!("{scheme}:…"),
        _ => "[not shown]".to_string(),
    }
}

impl CredentialRefs {
    /// Checks every reference's form (not whether it resolves: that is a run's job).
    pub fn validate(&self) -> Result<(), ScheduleError> {
        self.role_plan()?;
        let chorus = parse_ref("chorus token", &self.chorus_token)?;
        if matches!(
            chorus,
            CredentialRef::AwsDefault
                | CredentialRef::AzureManagedIdentity
                | CredentialRef::GcpWorkloadIdentity
        ) {
            return Err(ScheduleError::BadRef {
                what: "chorus token",
                given: self.chorus_token.clone(),
            });
        }
        if let Some(s3) = &self.s3 {
            parse_ref("s3", s3)?;
        }
        if let Some(w) = &self.webhook_secret {
            parse_ref("webhook secret", w)?;
        }
        if let Some(a) = &self.azure {
            // Managed identity needs an Azure AD token flow portshift does not have yet;
            // refuse it at creation rather than fail every run.
            if !matches!(
                parse_ref("azure", a)?,
                CredentialRef::Env(_) | CredentialRef::File(_)
            ) {
                // (An Azure SAS token through an AWS role is not a thing either.)
                return Err(ScheduleError::Unresolved {
                    what: "azure",
                    reference: a.clone(),
                    detail: "Azure destinations take a SAS token: use env:NAME or file:/path \
                             (azure:managed-identity is not supported yet)"
                        .into(),
                });
            }
        }
        if let Some(g) = &self.gcs
            && !matches!(
                parse_ref("gcs", g)?,
                CredentialRef::Env(_) | CredentialRef::File(_) | CredentialRef::GcpWorkloadIdentity
            )
        {
            return Err(ScheduleError::Unresolved {
                what: "gcs",
                reference: g.clone(),
                detail: "use env:NAME or file:/path (a service-account key JSON), or \
                         gcp:workload-identity"
                    .into(),
            });
        }
        Ok(())
    }

    /// The role a schedule reads its credentials through, if it does. Such a schedule
    /// reads them all through that one role: the Chorus token and the webhook secret
    /// from secrets, S3 with the role's own temporary credentials; nothing else mixes in.
    pub fn role_plan(&self) -> Result<Option<crate::aws_role::RolePlan>, ScheduleError> {
        let mixed = |what: &'static str, reference: &str, detail: &str| ScheduleError::Unresolved {
            what,
            reference: reference.to_string(),
            detail: detail.to_string(),
        };
        let role_of =
            |what: &'static str, r: &Option<String>| -> Result<Option<RoleRef>, ScheduleError> {
                match r {
                    Some(r) => match parse_ref(what, r)? {
                        CredentialRef::AwsRole(role) => Ok(Some(role)),
                        _ => Ok(None),
                    },
                    None => Ok(None),
                }
            };
        let chorus = role_of("chorus token", &Some(self.chorus_token.clone()))?;
        let s3 = role_of("s3", &self.s3)?;
        let webhook = role_of("webhook secret", &self.webhook_secret)?;
        let azure = role_of("azure", &self.azure)?;
        let gcs = role_of("gcs", &self.gcs)?;
        let Some(chorus) = chorus else {
            if let Some(r) = s3.iter().chain(&webhook).chain(&azure).chain(&gcs).next() {
                return Err(mixed(
                    "chorus token",
                    &r.to_string(),
                    "a schedule that uses an AWS role reads its Chorus token through it too: \
                     use aws-role:<role ARN>?secret=<secret ARN> for the Chorus token",
                ));
            }
            return Ok(None);
        };
        let Some(chorus_secret) = chorus.secret_arn.clone() else {
            return Err(mixed(
                "chorus token",
                &chorus.to_string(),
                "name the Secrets Manager secret that holds the token: \
                 aws-role:<role ARN>?secret=<secret ARN>",
            ));
        };
        if azure.is_some() || gcs.is_some() || self.azure.is_some() || self.gcs.is_some() {
            let (what, given) = match &self.azure {
                Some(a) => ("azure", a.as_str()),
                None => ("gcs", self.gcs.as_deref().unwrap_or_default()),
            };
            return Err(mixed(
                what,
                given,
                "an AWS role reaches AWS only: use an s3:// destination with it",
            ));
        }
        for (what, given, role) in [
            ("s3", &self.s3, &s3),
            ("webhook secret", &self.webhook_secret, &webhook),
        ] {
            if let Some(given) = given {
                match role {
                    None => {
                        return Err(mixed(
                            what,
                            given,
                            "a schedule that reads its Chorus token through an AWS role reads \
                             every credential through that role (aws-role:...)",
                        ));
                    }
                    Some(r) if r.role_arn != chorus.role_arn => {
                        return Err(mixed(
                            what,
                            given,
                            "use the same role as for the Chorus token",
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        if let Some(r) = &s3
            && r.secret_arn.is_some()
        {
            return Err(mixed(
                "s3",
                &r.to_string(),
                "S3 writes with the role's own temporary credentials: give the role without ?secret=",
            ));
        }
        let webhook_secret = match &webhook {
            Some(r) => Some(r.secret_arn.clone().ok_or_else(|| {
                mixed(
                    "webhook secret",
                    &r.to_string(),
                    "name the Secrets Manager secret that holds it: aws-role:<role ARN>?secret=<secret ARN>",
                )
            })?),
            None => None,
        };
        Ok(Some(crate::aws_role::RolePlan {
            role_arn: chorus.role_arn,
            chorus_token_secret: chorus_secret,
            webhook_secret_secret: webhook_secret,
            s3: s3.is_some(),
        }))
    }

    /// Resolves the references into in-memory credentials for one run.
    pub fn resolve(&self) -> Result<Credentials, ScheduleError> {
        let chorus = parse_ref("chorus token", &self.chorus_token)?;
        let token = read_secret("chorus token", &chorus)?;
        let mut creds = Credentials::new(token);
        if let Some(s3) = &self.s3 {
            let r = parse_ref("s3", s3)?;
            creds.s3 = match &r {
                CredentialRef::AwsDefault => None,
                CredentialRef::Env(_) | CredentialRef::File(_) => {
                    let doc = read_secret("s3", &r)?;
                    let parsed: S3Credentials = serde_json::from_str(secrecy::ExposeSecret::expose_secret(&doc)).map_err(|e| {
                        ScheduleError::Unresolved {
                            what: "s3",
                            reference: r.to_string(),
                            detail: format!(
                                "expected JSON {{\"access_key_id\": ..., \"secret_access_key\": ...}} ({:?} at line {})",
                                e.classify(),
                                e.line()
                            ),
                        }
                    })?;
                    Some(parsed)
                }
                other => {
                    return Err(ScheduleError::Unresolved {
                        what: "s3",
                        reference: other.to_string(),
                        detail: "S3 destinations use aws:default for keyless identity".into(),
                    });
                }
            };
        }
        if let Some(w) = &self.webhook_secret {
            let r = parse_ref("webhook secret", w)?;
            creds.webhook_secret = Some(read_secret("webhook secret", &r)?);
        }
        if let Some(a) = &self.azure {
            let r = parse_ref("azure", a)?;
            creds.azure = Some(AzureCredentials {
                sas_token: read_secret("azure", &r)?,
            });
        }
        if let Some(g) = &self.gcs {
            creds.gcs = match parse_ref("gcs", g)? {
                // The destination asks the metadata server for a token.
                CredentialRef::GcpWorkloadIdentity => None,
                r => Some(GcsCredentials {
                    service_account_json: read_secret("gcs", &r)?,
                }),
            };
        }
        Ok(creds)
    }
}

fn read_secret(what: &'static str, r: &CredentialRef) -> Result<SecretString, ScheduleError> {
    let unresolved = |detail: String| ScheduleError::Unresolved {
        what,
        reference: r.to_string(),
        detail,
    };
    let value = match r {
        CredentialRef::Env(name) => std::env::var(name).map_err(|_| {
            unresolved(format!(
                "the variable {name} is not set in the scheduler's environment"
            ))
        })?,
        CredentialRef::File(path) => std::fs::read_to_string(path)
            .map_err(|e| unresolved(format!("could not read {}: {e}", path.display())))?,
        other => return Err(unresolved(format!("{other} holds no value for {what}"))),
    };
    let value = value.trim().to_string();
    if value.is_empty() {
        return Err(unresolved("it is empty".into()));
    }
    Ok(SecretString::from(value))
}

fn parse_cron(expr: &str) -> Result<croner::Cron, ScheduleError> {
    croner::Cron::new(expr)
        .with_seconds_optional()
        .parse()
        .map_err(|e| ScheduleError::Cron {
            expr: expr.to_string(),
            detail: e.to_string().trim_end_matches('.').to_string(),
        })
}

fn parse_time_zone(tz: &str) -> Result<Tz, ScheduleError> {
    tz.parse()
        .map_err(|_| ScheduleError::TimeZone(tz.to_string()))
}

/// A cron expression in a time zone. Five fields; a sixth (seconds, first) is accepted
/// for tests and fine-grained syncs.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    cron: croner::Cron,
    tz: Tz,
}

impl CronSchedule {
    pub fn parse(expr: &str, tz: &str) -> Result<Self, ScheduleError> {
        Ok(Self {
            cron: parse_cron(expr)?,
            tz: parse_time_zone(tz)?,
        })
    }

    /// Checks a cron expression alone (forms report it apart from the time zone).
    pub fn check_cron(expr: &str) -> Result<(), ScheduleError> {
        parse_cron(expr).map(drop)
    }

    /// Checks an IANA time zone name alone.
    pub fn check_time_zone(tz: &str) -> Result<(), ScheduleError> {
        parse_time_zone(tz).map(drop)
    }

    /// The first occurrence strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|n| n.with_timezone(&Utc))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub id: String,
    pub organisation: String,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub template: ScheduleTemplate,
    pub refs: CredentialRefs,
    /// The first run exports from here.
    pub start_s: i64,
    pub paused: bool,
    /// The end of the window of the last successful run (Chorus `date_time`).
    pub watermark_s: Option<i64>,
    pub next_run_ms: i64,
    pub created_ms: i64,
    /// Operator (created with the CLI) or tenant (the console or API): decides what
    /// its references and URLs may use at every run (see `tenancy`).
    pub trust: TrustLevel,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleRun {
    pub slot_ms: i64,
    pub job_id: Option<String>,
    pub status: String,
    pub reason: Option<String>,
    pub files: Option<i64>,
    pub bytes: Option<i64>,
}

fn schedule_from_row(r: &sqlx::any::AnyRow) -> Result<Schedule, StoreError> {
    let template: String = r.try_get("template_json")?;
    let refs: String = r.try_get("credential_refs")?;
    Ok(Schedule {
        id: r.try_get("id")?,
        organisation: r.try_get("organisation")?,
        name: r.try_get("name")?,
        cron: r.try_get("cron")?,
        timezone: r.try_get("timezone")?,
        template: serde_json::from_str(&template)
            .map_err(|e| StoreError::Corrupt(format!("schedule template: {e}")))?,
        refs: serde_json::from_str(&refs)
            .map_err(|e| StoreError::Corrupt(format!("schedule references: {e}")))?,
        start_s: r.try_get("start_s")?,
        paused: r.try_get::<i64, _>("paused")? != 0,
        watermark_s: r.try_get("watermark_s")?,
        next_run_ms: r.try_get("next_run_ms")?,
        created_ms: r.try_get("created_ms")?,
        trust: TrustLevel::from_stored(&r.try_get::<String, _>("trust")?),
    })
}

const SCHEDULE_COLUMNS: &str = "id, organisation, name, cron, timezone, template_json, credential_refs, start_s, paused, watermark_s, next_run_ms, created_ms, trust";

impl JobStore {
    /// Validates and stores a new schedule; returns it with its first run time.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_schedule(
        &self,
        organisation: &str,
        name: &str,
        cron: &str,
        timezone: &str,
        template: &ScheduleTemplate,
        refs: &CredentialRefs,
        start: DateTime<Utc>,
        trust: TrustLevel,
    ) -> Result<Schedule, ScheduleError> {
        refs.validate()?;
        let parsed = CronSchedule::parse(cron, timezone)?;
        let now = Utc::now();
        let next = parsed.next_after(now).ok_or_else(|| ScheduleError::Cron {
            expr: cron.into(),
            detail: "it never fires".into(),
        })?;
        let schedule = Schedule {
            id: JobId::new().to_string(),
            organisation: organisation.into(),
            name: name.into(),
            cron: cron.into(),
            timezone: timezone.into(),
            template: template.clone(),
            refs: refs.clone(),
            start_s: start.timestamp(),
            paused: false,
            watermark_s: None,
            next_run_ms: next.timestamp_millis(),
            created_ms: now.timestamp_millis(),
            trust,
        };
        let template_json =
            serde_json::to_string(template).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let refs_json =
            serde_json::to_string(refs).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(&format!("INSERT INTO schedules ({SCHEDULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"))
            .bind(&schedule.id)
            .bind(organisation)
            .bind(name)
            .bind(cron)
            .bind(timezone)
            .bind(template_json)
            .bind(refs_json)
            .bind(schedule.start_s)
            .bind(0i64)
            .bind(None::<i64>)
            .bind(schedule.next_run_ms)
            .bind(schedule.created_ms)
            .bind(trust.as_str())
            .execute(&self.pool)
            .await
            .map_err(StoreError::from)?;
        Ok(schedule)
    }

    pub async fn schedule(&self, id: &str) -> Result<Schedule, ScheduleError> {
        let row = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| ScheduleError::NoSuchSchedule(id.to_string()))?;
        Ok(schedule_from_row(&row)?)
    }

    pub async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY created_ms"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// One organisation's schedules, oldest first (the console lists only these).
    pub async fn schedules_of(&self, organisation: &str) -> Result<Vec<Schedule>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE organisation = $1 ORDER BY created_ms, id"
        ))
        .bind(organisation)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// Schedules whose next run is due at `now_ms`.
    pub async fn due_schedules(&self, now_ms: i64) -> Result<Vec<Schedule>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE paused = 0 AND next_run_ms <= $1"
        ))
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// Pauses or resumes. Resuming sets the next run from now: a paused schedule does
    /// not catch up on the slots it skipped while paused.
    pub async fn set_schedule_paused(&self, id: &str, paused: bool) -> Result<(), ScheduleError> {
        let s = self.schedule(id).await?;
        let next = CronSchedule::parse(&s.cron, &s.timezone)?
            .next_after(Utc::now())
            .map(|t| t.timestamp_millis())
            .unwrap_or(s.next_run_ms);
        sqlx::query("UPDATE schedules SET paused = $1, next_run_ms = $2 WHERE id = $3")
            .bind(if paused { 1i64 } else { 0 })
            .bind(next)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(StoreError::from)?;
        Ok(())
    }

    pub async fn delete_schedule(&self, id: &str) -> Result<(), ScheduleError> {
        let done = sqlx::query("DELETE FROM schedules WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(StoreError::from)?;
        if done.rows_affected() == 0 {
            return Err(ScheduleError::NoSuchSchedule(id.to_string()));
        }
        Ok(())
    }

    /// Moves the next run from `from_ms` to `to_ms`; true only for the one caller that
    /// saw `from_ms` (several schedulers may race for the same slot).
    pub async fn take_slot(&self, id: &str, from_ms: i64, to_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE schedules SET next_run_ms = $1 WHERE id = $2 AND next_run_ms = $3 AND paused = 0")
            .bind(to_ms)
            .bind(id)
            .bind(from_ms)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO schedule_runs (schedule_id, slot_ms, status, created_ms, updated_ms) VALUES ($1, $2, 'starting', $3, $3) \
             ON CONFLICT (schedule_id, slot_ms) DO NOTHING",
        )
        .bind(id)
        .bind(from_ms)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    pub async fn update_run(
        &self,
        schedule_id: &str,
        slot_ms: i64,
        status: &str,
        job: Option<&JobId>,
        reason: Option<&str>,
        totals: Option<(u64, u64)>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE schedule_runs SET status = $1, job_id = COALESCE($2, job_id), reason = $3, files = $4, bytes = $5, updated_ms = $6 \
             WHERE schedule_id = $7 AND slot_ms = $8",
        )
        .bind(status)
        .bind(job.map(|j| j.to_string()))
        .bind(reason)
        .bind(totals.map(|t| t.0 as i64))
        .bind(totals.map(|t| t.1 as i64))
        .bind(now_ms())
        .bind(schedule_id)
        .bind(slot_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The schedule's runs, newest first.
    pub async fn schedule_runs(
        &self,
        schedule_id: &str,
        limit: i64,
    ) -> Result<Vec<ScheduleRun>, StoreError> {
        let rows = sqlx::query(
            "SELECT slot_ms, job_id, status, reason, files, bytes FROM schedule_runs WHERE schedule_id = $1 ORDER BY slot_ms DESC LIMIT $2",
        )
        .bind(schedule_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ScheduleRun {
                    slot_ms: r.try_get(0)?,
                    job_id: r.try_get(1)?,
                    status: r.try_get(2)?,
                    reason: r.try_get(3)?,
                    files: r.try_get(4)?,
                    bytes: r.try_get(5)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The newest `limit` runs of each of the organisation's schedules, in one query
    /// (newest first per schedule), for lists that show every schedule with its runs.
    pub async fn recent_runs_of_org(
        &self,
        organisation: &str,
        limit: i64,
    ) -> Result<std::collections::HashMap<String, Vec<ScheduleRun>>, StoreError> {
        let rows = sqlx::query(
            "SELECT schedule_id, slot_ms, job_id, status, reason, files, bytes FROM ( \
               SELECT r.schedule_id, r.slot_ms, r.job_id, r.status, r.reason, r.files, r.bytes, \
                 ROW_NUMBER() OVER (PARTITION BY r.schedule_id ORDER BY r.slot_ms DESC) AS nth \
               FROM schedule_runs r JOIN schedules s ON s.id = r.schedule_id \
               WHERE s.organisation = $1) recent \
             WHERE nth <= $2 ORDER BY schedule_id, slot_ms DESC",
        )
        .bind(organisation)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut runs: std::collections::HashMap<String, Vec<ScheduleRun>> = Default::default();
        for r in &rows {
            let schedule: String = r.try_get(0)?;
            runs.entry(schedule).or_default().push(ScheduleRun {
                slot_ms: r.try_get(1)?,
                job_id: r.try_get(2)?,
                status: r.try_get(3)?,
                reason: r.try_get(4)?,
                files: r.try_get(5)?,
                bytes: r.try_get(6)?,
            });
        }
        Ok(runs)
    }

    /// Remembers every recording `job` exported, for the schedule's later runs.
    pub async fn record_schedule_exports(
        &self,
        schedule_id: &str,
        destination: &str,
        job: &JobId,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO schedule_exported (schedule_id, destination, recording_id, job_id) \
             SELECT $1, $2, recording_id, job_id FROM recordings WHERE job_id = $3 AND status = 'exported' \
             ON CONFLICT (schedule_id, destination, recording_id) DO NOTHING",
        )
        .bind(schedule_id)
        .bind(destination)
        .bind(job.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Which of `ids` the schedule already exported to `destination`.
    pub async fn already_exported(
        &self,
        schedule_id: &str,
        destination: &str,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let placeholders: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 3)).collect();
        let sql = format!(
            "SELECT recording_id FROM schedule_exported WHERE schedule_id = $1 AND destination = $2 AND recording_id IN ({})",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(schedule_id).bind(destination);
        for id in ids {
            q = q.bind(id);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }

    pub async fn set_watermark(
        &self,
        schedule_id: &str,
        watermark_s: i64,
    ) -> Result<(), StoreError> {
        // Only forward: a run settled late (its scheduler died) must not move the
        // watermark back behind a later run's.
        sqlx::query(
            "UPDATE schedules SET watermark_s = $1 WHERE id = $2 AND (watermark_s IS NULL OR watermark_s < $1)",
        )
            .bind(watermark_s)
            .bind(schedule_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Retention of the schedule tables (see `retention`).
impl JobStore {
    /// Deletes up to `limit` rows of each schedule table that point at `job` (its run
    /// row and what it exported); returns `(runs, exported)` deleted.
    ///
    /// Forgetting what a purged run exported is safe: a later run that lists those
    /// recordings again (a window reaching back past the retention period) writes the
    /// same bytes at the same keys.
    pub async fn purge_schedule_rows_of_job(
        &self,
        job: &JobId,
        limit: i64,
    ) -> Result<(u64, u64), StoreError> {
        let bind = [Bound::Text(job.as_str().to_string())];
        let runs = delete_some(&self.pool, "schedule_runs", "job_id = $1", &bind, limit).await?;
        let exported =
            delete_some(&self.pool, "schedule_exported", "job_id = $1", &bind, limit).await?;
        Ok((runs, exported))
    }

    /// Deletes up to `limit` run rows that have no job (skipped or failed slots) and are
    /// older than their schedule's organisation's retention period at `now_ms`
    /// (`default_days` for a CLI schedule or a deleted one).
    pub async fn purge_jobless_runs(
        &self,
        now_ms: i64,
        default_days: i64,
        limit: i64,
    ) -> Result<u64, StoreError> {
        Ok(delete_some(
            &self.pool,
            "schedule_runs",
            "job_id IS NULL AND updated_ms < $1 - $3 * COALESCE((SELECT o.retention_days \
             FROM schedules s JOIN organisations o ON o.id = s.organisation \
             WHERE s.id = schedule_runs.schedule_id), $2)",
            &[
                Bound::Int(now_ms),
                Bound::Int(default_days),
                Bound::Int(DAY_MS),
            ],
            limit,
        )
        .await?)
    }
}

/// Deletes an organisation's schedules with their runs and the memory of what they
/// exported, in the caller's transaction (before the organisation's jobs, which runs
/// name).
pub async fn delete_schedules_of_org(
    tx: &mut sqlx::AnyConnection,
    org_id: &str,
) -> Result<(), sqlx::Error> {
    crate::store::delete_with_org(
        tx,
        org_id,
        &[
            "DELETE FROM schedule_runs WHERE schedule_id IN (SELECT id FROM schedules WHERE organisation = $1) \
             OR job_id IN (SELECT id FROM jobs WHERE organisation = $1)",
            "DELETE FROM schedule_exported WHERE schedule_id IN (SELECT id FROM schedules WHERE organisation = $1) \
             OR job_id IN (SELECT id FROM jobs WHERE organisation = $1)",
            "DELETE FROM schedules WHERE organisation = $1",
        ],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_validated_and_never_echo_a_pasted_secret() {
        for ok in [
            "env:CHORUS_TOKEN",
            "file:/run/secrets/chorus",
            "aws:default",
            "azure:managed-identity",
            "gcp:workload-identity",
        ] {
            assert_eq!(ok.parse::<CredentialRef>().unwrap().to_string(), ok);
        }
        let refs = CredentialRefs {
            chorus_token: "sk-live-SECRETVALUE".into(),
            s3: None,
            webhook_secret: None,
            azure: None,
            gcs: None,
        };
        let e = refs.validate().unwrap_err().to_string();
        assert!(!e.contains("SECRETVALUE"), "{e}");
        assert!(e.contains("env:NAME"), "{e}");
        let keyless_chorus = CredentialRefs {
            chorus_token: "aws:default".into(),
            s3: None,
            webhook_secret: None,
            azure: None,
            gcs: None,
        };
        assert!(keyless_chorus.validate().is_err());
        for bad in ["env:", "env:A-B", "file:relative", "vault:x"] {
            assert!(bad.parse::<CredentialRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn unresolvable_references_say_which_and_why() {
        let refs = CredentialRefs {
            chorus_token: "env:PORTSHIFT_TEST_SURELY_UNSET_VAR".into(),
            s3: None,
            webhook_secret: None,
            azure: None,
            gcs: None,
        };
        let e = refs.resolve().unwrap_err().to_string();
        assert!(
            e.contains("PORTSHIFT_TEST_SURELY_UNSET_VAR") && e.contains("not set"),
            "{e}"
        );
        let refs = CredentialRefs {
            chorus_token: "file:/nonexistent/portshift/token".into(),
            s3: None,
            webhook_secret: None,
            azure: None,
            gcs: None,
        };
        let e = refs.resolve().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/portshift/token"), "{e}");
    }

    #[test]
    fn azure_and_gcs_references_resolve_to_their_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let sas = dir.path().join("sas");
        std::fs::write(&sas, "?sv=2024&sp=cw&sig=CANARYSAS\n").unwrap();
        let key = dir.path().join("key.json");
        std::fs::write(&key, r#"{"client_email":"a@p","private_key":"CANARYKEY"}"#).unwrap();
        let chorus = dir.path().join("chorus");
        std::fs::write(&chorus, "tok").unwrap();
        let file_ref = |p: &std::path::Path| format!("file:{}", p.display());
        let refs = CredentialRefs {
            chorus_token: file_ref(&chorus),
            s3: None,
            webhook_secret: None,
            azure: Some(file_ref(&sas)),
            gcs: Some(file_ref(&key)),
        };
        refs.validate().unwrap();
        let creds = refs.resolve().unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(
            creds.azure.unwrap().sas_token.expose_secret(),
            "?sv=2024&sp=cw&sig=CANARYSAS"
        );
        assert!(
            creds
                .gcs
                .unwrap()
                .service_account_json
                .expose_secret()
                .contains("CANARYKEY")
        );
        // The stored form is the references, never the values.
        let stored = serde_json::to_string(&refs).unwrap();
        assert!(!stored.contains("CANARY"), "{stored}");

        let keyless = CredentialRefs {
            gcs: Some("gcp:workload-identity".into()),
            azure: None,
            ..refs.clone()
        };
        keyless.validate().unwrap();
        assert!(keyless.resolve().unwrap().gcs.is_none());
        let managed = CredentialRefs {
            azure: Some("azure:managed-identity".into()),
            ..refs
        };
        let e = managed.validate().unwrap_err().to_string();
        assert!(
            e.contains("SAS token") && e.contains("not supported"),
            "{e}"
        );
    }

    #[test]
    fn cron_runs_in_its_time_zone() {
        let c = CronSchedule::parse("0 2 * * *", "Europe/Helsinki").unwrap();
        // 2024-06-01 12:00 UTC → next 02:00 Helsinki (UTC+3 in summer) is 2024-06-01 23:00 UTC.
        let t: DateTime<Utc> = "2024-06-01T12:00:00Z".parse().unwrap();
        assert_eq!(
            c.next_after(t).unwrap(),
            "2024-06-01T23:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        // In winter (UTC+2) the same schedule fires at 00:00 UTC.
        let t: DateTime<Utc> = "2024-01-10T12:00:00Z".parse().unwrap();
        assert_eq!(
            c.next_after(t).unwrap(),
            "2024-01-11T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert!(CronSchedule::parse("61 * * * *", "UTC").is_err());
        assert!(CronSchedule::parse("0 2 * * *", "Mars/Olympus").is_err());
    }
}
