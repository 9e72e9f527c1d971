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
