//! The manifest stage: once every recording is settled, writes at the export root
//! `portshift-manifest.txt` (`sha256sum` format, one line per exported file, so
//! `sha256sum -c portshift-manifest.txt` checks a downloaded copy with no portshift
//! tooling) and `portshift-manifest.json` (totals and per-file detail). Both are built
//! from the job's progress rows, never by listing the customer's bucket, and each
//! recording appears once however often it was delivered. Its SHA-256 goes into the
//! job record so later tampering is evident.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use pipeline::messages::{ManifestTask, NotifyTask};
use pipeline::runner::{StageError, StageHandler};
use pipeline::store::FileRow;
use pipeline::topology::{self, Stage};
use pipeline::{ExportKinds, FileKind};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::context::{JobContext, publish_err, store_err};

pub const MANIFEST_TXT: &str = "portshift-manifest.txt";
pub const MANIFEST_JSON: &str = "portshift-manifest.json";

/// The manifest's file names: `portshift-manifest.txt`/`.json` for an export, and
/// `portshift-manifest-<job>.txt`/`.json` for a scheduled run, so each run of a schedule
/// keeps its own manifest beside the others in the same destination.
pub fn manifest_names(spec: &pipeline::JobSpec, job: &pipeline::JobId) -> (String, String) {
    match spec.schedule {
        None => (MANIFEST_TXT.to_string(), MANIFEST_JSON.to_string()),
        Some(_) => (
            format!("portshift-manifest-{job}.txt"),
            format!("portshift-manifest-{job}.json"),
        ),
    }
}

/// `portshift-manifest.json`. Stable; its schema is `schemas/manifest.schema.json`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ManifestDocument {
    /// Always `portshift-manifest/1` for this layout.
    pub format: String,
    pub job_id: String,
    pub exported_at: DateTime<Utc>,
    pub source: String,
    pub destination: String,
    pub filter: ManifestFilter,
    pub totals: ManifestTotals,
    pub files: Vec<ManifestFile>,
    pub recordings: Vec<ManifestRecording>,
    /// Recordings not exported on purpose (deleted, private, nothing recorded).
    pub skipped: Vec<ManifestProblem>,
    /// Recordings that failed after every retry (replayable, see docs/replay.md).
    pub failed: Vec<ManifestProblem>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ManifestFilter {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub kinds: ExportKinds,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ManifestTotals {
    pub recordings: u64,
    pub files: u64,
    pub bytes: u64,
    pub skipped: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ManifestFile {
    /// Relative to the export root, as in the `.txt` manifest.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    pub recording_id: String,
    pub kind: FileKind,
    pub content_type: String,
}

/// The recording's metadata as the manifest keeps it: facts only, no personal data
/// (participants are in the exported metadata file, not here).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ManifestRecording {
    pub recording_id: String,
    pub recorded_at: Option<DateTime<Utc>>,
    pub duration_s: Option<f64>,
    pub engagement_type: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ManifestProblem {
    pub recording_id: String,
    pub reason: String,
}

/// The `sha256sum` text for these rows (GNU format: hash, two spaces, path).
pub fn manifest_text(files: &[FileRow]) -> String {
    let mut out = String::with_capacity(files.len() * 120);
    for f in files {
        out.push_str(&f.sha256);
        out.push_str("  ");
        out.push_str(&f.key);
        out.push('\n');
    }
    out
}

pub struct ManifestStage(pub Arc<JobContext>);

impl ManifestStage {
    async fn request_notify(&self) -> Result<(), StageError> {
        let ctx = &self.0;
        // The same content digest as the manifest request: a rewritten manifest (new
        // file hashes, same counts) is announced again.
        let signature = ctx.manifest_signature().await?;
        topology::publish_json(
            &ctx.js,
            Stage::Notify.subject(&ctx.job),
            &topology::msg_id(&ctx.job, "notify", &[&signature]),
            &NotifyTask {
                job: ctx.job.clone(),
            },
        )
        .await
        .map_err(publish_err)
    }
}

#[async_trait]
impl StageHandler for ManifestStage {
    type Task = ManifestTask;

    fn stage(&self) -> Stage {
        Stage::Manifest
    }

    async fn handle(&self, _task: ManifestTask) -> Result<(), StageError> {
        let ctx = &self.0;
        let progress = ctx.store.progress(&ctx.job).await.map_err(store_err)?;
        if !progress.settled() {
            // A stale request (e.g. replayed by hand): the last settling will ask again.
            return Ok(());
        }
        // Every file is settled: an upload still open is a killed worker's leftover.
        match ctx.destination.abort_left_open().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(job = %ctx.job, aborted = n, "aborted multipart uploads left by earlier workers")
            }
            Err(e) => {
                tracing::warn!(job = %ctx.job, error = %e, "could not abort every leftover multipart upload; a bucket lifecycle rule for incomplete uploads cleans them (docs/permissions.md)")
            }
        }
        let files = ctx
            .store
            .manifest_entries(&ctx.job)
            .await
            .map_err(store_err)?;
        if let Some(bad) = files
            .iter()
            .find(|f| !pipeline::keys::is_safe_relative(&f.key))
        {
            return Err(StageError::Invalid(format!(
                "unsafe path {:?} in the progress rows",
                bad.key
            )));
        }
        let facts = ctx
            .store
            .recording_facts(&ctx.job)
            .await
            .map_err(store_err)?;
        let problems = ctx.store.problems(&ctx.job).await.map_err(store_err)?;
        let text = manifest_text(&files);
        let (skipped, failed): (Vec<_>, Vec<_>) =
            problems.into_iter().partition(|p| p.status == "skipped");
        let doc = ManifestDocument {
            format: "portshift-manifest/1".into(),
            job_id: ctx.job.to_string(),
            exported_at: Utc::now(),
            source: ctx.spec.chorus_url.clone(),
            destination: ctx.destination.location(),
            filter: ManifestFilter {
                from: ctx.spec.from,
                to: ctx.spec.to,
                kinds: ctx.spec.kinds.clone(),
            },
            totals: ManifestTotals {
                recordings: facts.len() as u64,
                files: files.len() as u64,
                bytes: files.iter().map(|f| f.bytes).sum(),
                skipped: skipped.len() as u64,
                failed: failed.len() as u64,
            },
            files: files
                .iter()
                .map(|f| ManifestFile {
                    path: f.key.clone(),
                    sha256: f.sha256.clone(),
                    bytes: f.bytes,
                    recording_id: f.recording_id.clone(),
                    kind: f.file,
                    content_type: f.content_type.clone(),
                })
                .collect(),
            recordings: facts
                .into_iter()
                .map(|r| ManifestRecording {
                    recorded_at: r.recorded_at.and_then(|s| DateTime::from_timestamp(s, 0)),
                    recording_id: r.recording_id,
                    duration_s: r.duration_s,
                    engagement_type: r.engagement_type,
                })
                .collect(),
            skipped: skipped
                .into_iter()
                .map(|p| ManifestProblem {
                    recording_id: p.recording_id,
                    reason: p.reason,
                })
                .collect(),
            failed: failed
                .into_iter()
                .map(|p| ManifestProblem {
                    recording_id: p.recording_id,
                    reason: p.reason,
                })
                .collect(),
        };
        if ctx.spec.schedule.is_some() && doc.files.is_empty() {
            // A scheduled run that found nothing new writes nothing: a schedule running
            // every few minutes must not fill the bucket with empty manifests. The run's
            // history (in the job store) says it ran and found nothing.
            return self.request_notify().await;
        }
        let json =
            serde_json::to_vec_pretty(&doc).map_err(|e| StageError::Invalid(e.to_string()))?;
        let txt_sha = hex::encode(Sha256::digest(text.as_bytes()));
        let (txt_name, json_name) = manifest_names(&ctx.spec, &ctx.job);
        let written = ctx
            .destination
            .put_bytes(&txt_name, Bytes::from(text), "text/plain; charset=utf-8")
            .await;
        let written = match written {
            Ok(w) => w,
            Err(e) => return Err(ctx.destination_error(e).await),
        };
        if let Err(e) = ctx
            .destination
            .put_bytes(&json_name, Bytes::from(json), "application/json")
            .await
        {
            return Err(ctx.destination_error(e).await);
        }
        ctx.store
            .set_manifest(&ctx.job, &written.key, &txt_sha)
            .await
            .map_err(store_err)?;
        self.request_notify().await
    }

    async fn on_dead(&self, _task: Option<ManifestTask>, reason: &str) -> Result<(), StageError> {
        let ctx = &self.0;
        ctx.set_status(
            pipeline::JobStatus::Failed,
            Some(&format!("writing the manifest failed: {reason}")),
        )
        .await
        .map_err(store_err)
    }
}

/// `(file name, pretty JSON)` of the manifest document's schema.
pub fn manifest_schema() -> (&'static str, String) {
    let schema = schemars::schema_for!(ManifestDocument);
    (
        "manifest.schema.json",
        serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n",
    )
}
