//! The notify stage: posts the job summary to the configured webhook, signed with
//! HMAC-SHA256 (`Portshift-Signature: sha256=<hex>` over `<timestamp>.<body>`, with the
//! timestamp in `Portshift-Timestamp`, so receivers can reject replays), then marks the
//! job finished. Without a webhook it only marks the job finished.

use std::sync::Arc;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use pipeline::JobStatus;
use pipeline::messages::NotifyTask;
use pipeline::runner::{StageError, StageHandler};
use pipeline::topology::Stage;
use secrecy::ExposeSecret;
use serde::Serialize;
use sha2::Sha256;

use crate::context::{JobContext, store_err};

#[derive(Serialize)]
pub struct JobSummary {
    pub job_id: String,
    pub status: JobStatus,
    pub destination: String,
    pub recordings_exported: u64,
    pub recordings_skipped: u64,
    pub recordings_failed: u64,
    pub files: u64,
    pub bytes: u64,
    pub manifest_key: Option<String>,
    pub manifest_sha256: Option<String>,
}

/// `sha256=<hex>` over `<timestamp>.<body>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub struct NotifyStage(pub Arc<JobContext>);

impl NotifyStage {
    async fn summary(&self) -> Result<JobSummary, StageError> {
        let ctx = &self.0;
        let p = ctx.store.progress(&ctx.job).await.map_err(store_err)?;
        let job = ctx.store.job(&ctx.job).await.map_err(store_err)?;
        Ok(JobSummary {
            job_id: ctx.job.to_string(),
            status: if p.dead > 0 {
                JobStatus::FinishedWithFailures
            } else {
                JobStatus::Finished
            },
            destination: ctx.destination.location(),
            recordings_exported: p.exported,
            recordings_skipped: p.skipped,
            recordings_failed: p.dead,
            files: p.files,
            bytes: p.bytes,
            manifest_key: job.manifest_key,
            manifest_sha256: job.manifest_sha256,
        })
    }
}

#[async_trait]
impl StageHandler for NotifyStage {
    type Task = NotifyTask;

    fn stage(&self) -> Stage {
        Stage::Notify
    }

    async fn handle(&self, _task: NotifyTask) -> Result<(), StageError> {
        let ctx = &self.0;
        let summary = self.summary().await?;
        if let Some(url) = &ctx.spec.webhook_url {
            let parsed = url::Url::parse(url).map_err(|_| {
                StageError::Invalid(format!("the webhook URL {url:?} is not a URL"))
            })?;
            ctx.egress
                .check_url("webhook URL", &parsed)
                .map_err(|e| StageError::Invalid(format!("webhook {url}: {e}")))?;
            let body =
                serde_json::to_vec(&summary).map_err(|e| StageError::Invalid(e.to_string()))?;
            let ts = chrono::Utc::now().timestamp();
            let mut req = ctx
                .http
                .post(url)
                .header("content-type", "application/json")
                .header("Portshift-Timestamp", ts.to_string());
            if let Some(secret) = &ctx.webhook_secret {
                req = req.header(
                    "Portshift-Signature",
                    signature(secret.expose_secret().as_bytes(), ts, &body),
                );
            }
            let resp =
                req.body(body)
                    .send()
                    .await
                    .map_err(|e| match crate::http::egress_refusal(&e) {
                        // The guard's answer is final; retrying cannot change it.
                        Some(refused) => StageError::Invalid(format!("webhook {url}: {refused}")),
                        None => StageError::Transient(format!("webhook {url}: {e}")),
                    })?;
            if !resp.status().is_success() {
                return Err(StageError::Transient(format!(
                    "webhook {url} answered HTTP {}",
                    resp.status()
                )));
            }
        }
        ctx.set_status(summary.status, None)
            .await
            .map_err(store_err)
    }

    async fn on_dead(&self, _task: Option<NotifyTask>, reason: &str) -> Result<(), StageError> {
        // The export itself is complete; only the notification failed. Say so.
        let ctx = &self.0;
        let summary = self.summary().await?;
        ctx.set_status(
            summary.status,
            Some(&format!("the webhook could not be notified: {reason}")),
        )
        .await
        .map_err(store_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_hmac() {
        // Computed with Python's hmac module: what a receiver would check.
        assert_eq!(
            signature(b"secret", 1_700_000_000, br#"{"a":1}"#),
            "sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
