//! The job model: what an export is asked to do (its spec) and where it stands (its status).
//! A spec holds the destination's *location* only; secrets travel separately (see `secrets`).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A job id: 32 lower-case hex characters (a UUIDv7, so ids sort by creation time).
/// Restricted so it is always a valid NATS subject token and consumer name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7().simple().to_string())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "invalid job id {0:?}: expected 32 lower-case hex characters as printed by `portshift export`"
)]
pub struct InvalidJobId(String);

impl FromStr for JobId {
    type Err = InvalidJobId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_string()))
        } else {
            Err(InvalidJobId(s.chars().take(80).collect()))
        }
    }
}

impl TryFrom<String> for JobId {
    type Error = InvalidJobId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> Self {
        id.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One exported file of a recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    Media,
    Transcript,
    Metadata,
}

impl FileKind {
    pub const ALL: [FileKind; 3] = [FileKind::Metadata, FileKind::Transcript, FileKind::Media];
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Media => "media",
            FileKind::Transcript => "transcript",
            FileKind::Metadata => "metadata",
        }
    }
}

impl FromStr for FileKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "media" => Ok(FileKind::Media),
            "transcript" => Ok(FileKind::Transcript),
            "metadata" => Ok(FileKind::Metadata),
            other => Err(format!(
                "unknown file kind {other:?}: expected media, transcript or metadata"
            )),
        }
    }
}

/// What to export for each recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExportKinds {
    pub media: bool,
    pub transcript: bool,
    pub metadata: bool,
}

impl Default for ExportKinds {
    fn default() -> Self {
        Self {
            media: true,
            transcript: true,
            metadata: true,
        }
    }
}

impl ExportKinds {
    pub fn includes(&self, kind: FileKind) -> bool {
        match kind {
            FileKind::Media => self.media,
            FileKind::Transcript => self.transcript,
            FileKind::Metadata => self.metadata,
        }
    }
    pub fn kinds(&self) -> impl Iterator<Item = FileKind> + '_ {
        FileKind::ALL.into_iter().filter(|k| self.includes(*k))
    }
}

/// Everything a job needs except secrets. Stored in the job record as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobSpec {
    /// Chorus API base URL, e.g. `https://chorus.ai`.
    pub chorus_url: String,
    /// Earliest engagement time (inclusive).
    pub from: DateTime<Utc>,
    /// Latest engagement time (inclusive).
    pub to: DateTime<Utc>,
    pub kinds: ExportKinds,
    /// The destination URL without secrets (`s3://bucket/prefix?region=..`, `file:///path`).
    pub destination: String,
    /// Optional webhook notified with the job summary when the job ends.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Set when a schedule started the job: recordings that schedule already exported
    /// to this destination are not exported again, and the manifest gets a per-run name.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Optional extra proofs (read-back verification); all off by default.
    #[serde(default)]
    pub options: ExportOptions,
    /// Who the job acts for (operator: the CLI; tenant: the console or API, with what
    /// the operator allowed). Set by the code path that creates the job, never from
    /// tenant input; the worker enforces it (see `tenancy`).
    #[serde(default)]
    pub trust: Trust,
}

/// Who a job or schedule acts for. Set by the code path, stored with the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "level", rename_all = "snake_case")]
pub enum Trust {
    /// The CLI: the machine's identity, environment, files and networks are allowed.
    Operator,
    /// The console or the API: a stranger, with only what the operator opened.
    Tenant(Allowances),
}

impl Default for Trust {
    /// A job record without a trust level (written before trust levels existed, or by a
    /// path that forgot) is treated as a stranger's: the safe default.
    fn default() -> Self {
        Trust::Tenant(Allowances::default())
    }
}

/// What the operator opened for tenants (`--allow-origin`, `--allow-file-root`).
/// Empty by default: nothing beyond public HTTPS addresses and cloud storage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Allowances {
    /// Origins (`scheme://host:port`) tenants may reach even when they are not public
    /// or not HTTPS: the Chorus simulator, local emulators, a private webhook receiver.
    #[serde(default)]
    pub origins: Vec<String>,
    /// A folder under which tenants may export to `file://` (trials, demos).
    #[serde(default)]
    pub file_root: Option<PathBuf>,
}

/// The level alone, as stored in the job and schedule tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustLevel {
    Operator,
    Tenant,
}

impl TrustLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            TrustLevel::Operator => "operator",
            TrustLevel::Tenant => "tenant",
        }
    }

    /// Anything but `operator` reads as tenant: the safe side.
    pub fn from_stored(s: &str) -> Self {
        if s == "operator" {
            TrustLevel::Operator
        } else {
            TrustLevel::Tenant
        }
    }
}

/// What an export does beyond writing files and a manifest. Shared by one-off jobs and
/// schedule templates; every field defaults to off, so older records read unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExportOptions {
    /// After the manifest is written, read every file back and compare it with the
    /// manifest (needs read permission, see docs/permissions.md). A file that differs is
    /// reported, its recording fails and its fetch is parked for `portshift replay`.
    #[serde(default)]
    pub verify_after: bool,
    /// How the files are laid out at the destination.
    #[serde(default)]
    pub layout: Layout,
}

/// The export's layout at the destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `<yyyy>/<mm>/<dd>/<recording>/<files>` with the portshift manifests at the root.
    #[default]
    Plain,
    /// A BagIt 1.0 bag (RFC 8493): the same tree under `data/`, with `bagit.txt`,
    /// `bag-info.txt`, `manifest-sha256.txt` and `tagmanifest-sha256.txt`. A scheduled
    /// run writes its own bag, `portshift-bag-<job>/`.
    Bagit,
}

impl std::str::FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "plain" => Ok(Self::Plain),
            "bagit" => Ok(Self::Bagit),
            other => Err(format!(
                "unknown layout {other:?}: use plain (the default) or bagit"
            )),
        }
    }
}

impl JobSpec {
    /// Where this job's bag starts, relative to the destination root (`""` or
    /// `portshift-bag-<job>/`); `None` for the plain layout.
    pub fn bag_root(&self, job: &JobId) -> Option<String> {
        match self.options.layout {
            Layout::Plain => None,
            Layout::Bagit if self.schedule.is_some() => Some(format!("portshift-bag-{job}/")),
            Layout::Bagit => Some(String::new()),
        }
    }
}

/// Where a job stands. Final states never change again except by an explicit resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Running,
    /// A worker lost (or was refused) its credentials; resuming asks for them again.
    NeedsCredentials,
    Finished,
    FinishedWithFailures,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::NeedsCredentials => "needs_credentials",
            JobStatus::Finished => "finished",
            JobStatus::FinishedWithFailures => "finished_with_failures",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Finished
                | JobStatus::FinishedWithFailures
                | JobStatus::Failed
                | JobStatus::Cancelled
        )
    }
}

/// Every legal status change, `(from, to)`; the job store refuses any other (with a
/// conditional UPDATE, so a stale writer in another process cannot overwrite a newer
/// state). Writing a job's current status again is legal (it updates the reason), except
/// that nothing follows `cancelled`'s first write but itself.
///
/// - `running` may become anything: a worker blocks on credentials, the job finishes,
///   fails, or is cancelled.
/// - `needs_credentials` resumes to `running`; other workers of the job may still
///   finish it; it may be cancelled or fail.
/// - `finished_with_failures` and `failed` reopen to `running` (`resume`, `replay`);
///   a replayed dead letter on a finished job can turn `finished_with_failures` into
///   `finished` without a reopen.
/// - `finished` and `cancelled` are final: no worker, supervisor or late message moves
///   them to `needs_credentials`, `failed` or back to `running`.
pub const TRANSITIONS: &[(JobStatus, JobStatus)] = {
    use JobStatus::*;
    &[
        (Running, Running),
        (Running, NeedsCredentials),
        (Running, Finished),
        (Running, FinishedWithFailures),
        (Running, Failed),
        (Running, Cancelled),
        (NeedsCredentials, NeedsCredentials),
        (NeedsCredentials, Running),
        (NeedsCredentials, Finished),
        (NeedsCredentials, FinishedWithFailures),
        (NeedsCredentials, Failed),
        (NeedsCredentials, Cancelled),
        (FinishedWithFailures, FinishedWithFailures),
        (FinishedWithFailures, Running),
        (FinishedWithFailures, Finished),
        (Failed, Failed),
        (Failed, Running),
        (Finished, Finished),
        (Cancelled, Cancelled),
    ]
};

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Running,
        JobStatus::NeedsCredentials,
        JobStatus::Finished,
        JobStatus::FinishedWithFailures,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// True if a job in this status may move to `next` (see [`TRANSITIONS`]).
    pub fn can_become(self, next: JobStatus) -> bool {
        TRANSITIONS.contains(&(self, next))
    }

    /// The statuses a job may be in to move to `next`.
    pub fn sources_of(next: JobStatus) -> Vec<JobStatus> {
        TRANSITIONS
            .iter()
            .filter(|(_, to)| *to == next)
            .map(|(from, _)| *from)
            .collect()
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "running" => JobStatus::Running,
            "needs_credentials" => JobStatus::NeedsCredentials,
            "finished" => JobStatus::Finished,
            "finished_with_failures" => JobStatus::FinishedWithFailures,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            other => return Err(format!("unknown job status {other:?} in the job store")),
        })
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_and_cancelled_jobs_are_never_overwritten_by_a_worker_or_a_failure() {
        use JobStatus::*;
        for done in [Finished, Cancelled] {
            for next in [Running, NeedsCredentials, Failed, FinishedWithFailures] {
                assert!(!done.can_become(next), "{done} -> {next} allowed");
            }
        }
        assert!(!Cancelled.can_become(Finished));
        assert!(!Finished.can_become(Cancelled));
        // Every status can be written again, so a replayed notification is harmless.
        for s in JobStatus::ALL {
            assert!(s.can_become(s), "{s} -> {s} refused");
        }
        // Resume and replay reopen what stopped short of finishing.
        for s in [NeedsCredentials, Failed, FinishedWithFailures] {
            assert!(s.can_become(Running), "{s} cannot be resumed");
        }
        assert_eq!(
            JobStatus::sources_of(Cancelled),
            vec![Running, NeedsCredentials, Cancelled]
        );
    }

    #[test]
    fn job_ids_are_subject_safe_and_validated() {
        let id = JobId::new();
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(id.as_str().parse::<JobId>().unwrap(), id);
        for bad in [
            "",
            "a.b",
            "../x",
            "ABCDEF0123456789ABCDEF0123456789",
            "*",
            "x y",
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<JobId>("\"not-a-job\"").is_err());
    }
}
