//! What every stage of one job shares: the job's spec, the store, JetStream, the Chorus
//! client, the destination, and the job's secrets (in memory only). Also the two
//! decisions several stages make the same way: how a Chorus or destination error maps
//! to a stage outcome, and when the job is settled enough for its manifest.

use std::sync::Arc;

use async_nats::jetstream;
use pipeline::messages::ManifestTask;
use pipeline::runner::StageError;
use pipeline::store::{JobStore, StoreError};
use pipeline::topology::{self, Stage, TopologyError};
use pipeline::{JobId, JobSpec, JobStatus};
use secrecy::SecretString;

use crate::chorus::{ChorusClient, ChorusError, EngagementFilter};
use crate::destination::{Destination, DestinationError};

pub struct JobContext {
    pub job: JobId,
    pub spec: JobSpec,
    pub store: JobStore,
    pub js: jetstream::Context,
    pub chorus: ChorusClient,
    pub destination: Arc<dyn Destination>,
    pub webhook_secret: Option<SecretString>,
    /// The operator's manifest signing key, if one was handed to this worker.
    pub signing_key: Option<Arc<pipeline::signing::SigningKey>>,
    /// For the webhook (built by `http::client_builder`: TLS validation on, and the
    /// job's network guard with each redirect hop checked).
    pub http: reqwest::Client,
    /// The job's network guard (open for the operator's jobs).
    pub egress: crate::http::Egress,
    /// The optional BigQuery metadata sink (one row per exported recording).
    pub metadata_sink: Option<Arc<crate::bigquery::BigQuerySink>>,
    /// The hash and upload records this worker counts and publishes once a second.
    pub records: crate::records::JobRecords,
    /// Signalled when this process changes the job's status, so the worker notices a
    /// final state at once instead of at its next look at the store.
    pub status_changed: tokio::sync::Notify,
}

impl JobContext {
    /// Records the job's status and wakes this process's worker loop.
    pub async fn set_status(
        &self,
        status: JobStatus,
        reason: Option<&str>,
    ) -> Result<(), pipeline::store::StoreError> {
        let result = match self.store.set_status(&self.job, status, reason).await {
            // Another process moved the job on first (cancelled or finished it): its
            // state stands, and this stage has nothing more to record.
            Err(StoreError::IllegalTransition { from, to, .. }) => {
                tracing::info!(job = %self.job, %from, %to, "status change refused: the job moved on");
                Ok(())
            }
            other => other,
        };
        // One waiter (the worker loop); a stored permit covers a change made while it
        // was busy.
        self.status_changed.notify_one();
        result
    }

    pub fn filter(&self) -> EngagementFilter {
        EngagementFilter {
            min_date: self.spec.from,
            max_date: self.spec.to,
            engagement_type: None,
        }
    }

    /// Records that the job cannot go on without new credentials (or a fixed
    /// destination) and returns the stage outcome that keeps the message for later.
    pub async fn blocked(&self, reason: String) -> StageError {
        if let Err(e) = self
            .set_status(JobStatus::NeedsCredentials, Some(&reason))
            .await
        {
            tracing::warn!(job = %self.job, error = %e, "could not record the blocked state");
        }
        StageError::NeedsCredentials(reason)
    }

    pub async fn chorus_error(&self, e: ChorusError) -> StageError {
        if e.is_job_fatal() {
            self.blocked(e.to_string()).await
        } else {
            StageError::Transient(e.to_string())
        }
    }

    pub async fn sink_error(&self, e: crate::bigquery::SinkError) -> StageError {
        match e {
            crate::bigquery::SinkError::Refused { .. } => self.blocked(e.to_string()).await,
            crate::bigquery::SinkError::Transient { .. } => StageError::Transient(e.to_string()),
        }
    }

    pub async fn destination_error(&self, e: DestinationError) -> StageError {
        match e {
            DestinationError::Refused { .. } => self.blocked(e.to_string()).await,
            DestinationError::UnsafeKey(_) => StageError::Invalid(e.to_string()),
            other => StageError::Transient(other.to_string()),
        }
    }

    /// Publishes the manifest task if every recording is settled. Called after anything
    /// that can settle the last recording or change a settled file; concurrent callers
    /// publish the same msg-id, so JetStream keeps one. The id carries a digest of what
    /// the manifest would say (each recording's final state, each file's key and
    /// SHA-256), so a late duplicate that changes a file's bytes, or a replay that turns
    /// a dead recording into an exported one, asks for a fresh manifest, even after the
    /// job was final, while a duplicate that changes nothing does not.
    pub async fn maybe_request_manifest(&self) -> Result<(), StageError> {
        if !self.store.is_settled(&self.job).await.map_err(store_err)? {
            return Ok(());
        }
        let signature = self.manifest_signature().await?;
        topology::publish_json(
            &self.js,
            Stage::Manifest.subject(&self.job),
            &topology::msg_id(&self.job, "manifest", &[&signature]),
            &ManifestTask {
                job: self.job.clone(),
            },
        )
        .await
        .map_err(publish_err)
    }
}

impl JobContext {
    /// A short digest of the manifest's content: final states of the recordings and the
    /// key and SHA-256 of every file (not the export time, which changes every write),
    /// and the job's manifest generation (see `JobStore::mark_unverified`).
    pub async fn manifest_signature(&self) -> Result<String, StageError> {
        use sha2::{Digest, Sha256};
        let p = self.store.progress(&self.job).await.map_err(store_err)?;
        let generation = self
            .store
            .manifest_generation(&self.job)
            .await
            .map_err(store_err)?;
        let mut h = Sha256::new();
        // The generation first: after read-back verification took a file out, the
        // replayed upload can restore exactly the first manifest's content, and that
        // manifest must still be written again (and the job finished) at once, not only
        // after JetStream's duplicate window.
        h.update(format!(
            "g{generation}\n{}-{}-{}\n",
            p.exported, p.skipped, p.dead
        ));
        // Page by page, as the manifest itself: a large job is never whole in memory.
        let mut cursor = pipeline::store::ManifestCursor::default();
        loop {
            let (rows, next) = self
                .store
                .manifest_page(&self.job, &cursor, PAGE_ROWS)
                .await
                .map_err(store_err)?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let f = &row.file;
                h.update(format!(
                    "{}\0{}\0{}\0{}\n",
                    f.recording_id,
                    f.file.as_str(),
                    f.key,
                    f.sha256
                ));
            }
            cursor = next;
        }
        for status in ["dead", "skipped"] {
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .store
                    .problems_page(&self.job, status, after.as_deref(), PAGE_ROWS)
                    .await
                    .map_err(store_err)?;
                let Some(last) = page.last() else { break };
                after = Some(last.recording_id.clone());
                for pr in &page {
                    h.update(format!(
                        "{}\0{}\0{}\n",
                        pr.recording_id,
                        pr.status,
                        pr.source_state.as_deref().unwrap_or_default()
                    ));
                }
            }
        }
        Ok(format!(
            "{}-{}-{}-{}",
            p.exported,
            p.skipped,
            p.dead,
            &hex::encode(h.finalize())[..16]
        ))
    }
}

/// Rows per page wherever a stage reads a whole job's rows from the store (the
/// manifest and its digest): bounded memory whatever the job's size.
pub const PAGE_ROWS: u32 = 1000;

pub fn store_err(e: StoreError) -> StageError {
    StageError::Transient(format!("job store: {e}"))
}

pub fn publish_err(e: TopologyError) -> StageError {
    StageError::Transient(e.to_string())
}
