//! The fetch stage, with hash and upload in the same streaming pass: for one recording,
//! asks Chorus for its details (which also tells whether it still exists), then streams
//! each requested file from Chorus through the SHA-256 tee into the destination. No byte
//! touches a disk of ours or NATS; memory per transfer is bounded by the destination's
//! part buffers. Files already exported in this job are not fetched again, so a
//! redelivered message only finishes what is missing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::DateTime;
use pipeline::backoff::{GaveUp, Outcome, RetryPolicy};
use pipeline::messages::FetchTask;
use pipeline::runner::{StageError, StageHandler};
use pipeline::store::FileRow;
use pipeline::topology::Stage;
use pipeline::{FileKind, keys};

use crate::chorus::{ChorusError, METADATA_FIELDS};
use crate::context::{JobContext, store_err};
use crate::destination::ByteStream;
use crate::hash;

/// Attempts per file inside one delivery before the message is nakked: a body cut short
/// is usually fixed by asking again at once, without waiting for a redelivery.
const FILE_RETRIES: RetryPolicy = RetryPolicy {
    tries: 3,
    base: Duration::from_millis(200),
    max: Duration::from_secs(3),
};

pub struct FetchStage(pub Arc<JobContext>);

enum Failure {
    /// Chorus will not give the recording (404, an unusable id, a refusal): skip it,
    /// permanently. `deleted` when Chorus answered 404 for a recording its listing
    /// returned: deleted (or made private) in Chorus during the export.
    Gone {
        reason: String,
        deleted: bool,
    },
    Stage(StageError),
}

impl FetchStage {
    async fn chorus(&self, e: ChorusError) -> Failure {
        if e.is_permanent() {
            Failure::Gone {
                deleted: matches!(e, ChorusError::NotFound { .. }),
                reason: e.to_string(),
            }
        } else {
            Failure::Stage(self.0.chorus_error(e).await)
        }
    }

    async fn export_file(
        &self,
        task: &FetchTask,
        kind: FileKind,
        metadata: &serde_json::Value,
    ) -> Result<(), Failure> {
        let ctx = &self.0;
        let recorded_at = task
            .recorded_at
            .and_then(|s| DateTime::from_timestamp(s, 0));
        // Which Chorus version the bytes are: the details call's `_modified_at` for the
        // metadata and the media, the transcript call's own for the transcript (Chorus
        // may re-process a transcript between the two calls).
        let mut version = crate::chorus::client::modified_at(metadata);
        let (body, expected, content_type, extension): (ByteStream, Option<u64>, String, &str) =
            match kind {
                FileKind::Metadata => json_body(metadata),
                FileKind::Transcript => {
                    match ctx.chorus.transcript_version(&task.recording_id).await {
                        Ok((t, modified)) => {
                            version = modified.or(version);
                            json_body(&t)
                        }
                        Err(e) => return Err(self.chorus(e).await),
                    }
                }
                FileKind::Media => match ctx.chorus.media(&task.recording_id).await {
                    Ok(m) => (m.body, m.content_length, m.content_type, m.extension),
                    Err(e) => return Err(self.chorus(e).await),
                },
            };
        let rel = keys::relative_path(&task.recording_id, recorded_at, kind, extension);
        // A BagIt export keeps the same tree under its bag's `data/` folder.
        let rel = match ctx.spec.bag_root(&ctx.job) {
            Some(root) => format!("{root}data/{rel}"),
            None => rel,
        };
        let started = Instant::now();
        let (tee, digest) = hash::tee(body, expected);
        let written = match ctx
            .destination
            .put_hashed(&rel, tee, &content_type, expected, &digest)
            .await
        {
            Ok(w) => w,
            Err(e) => return Err(Failure::Stage(ctx.destination_error(e).await)),
        };
        let Some(d) = digest.result() else {
            return Err(Failure::Stage(StageError::Transient(format!(
                "{rel}: the destination finished before the whole body was read"
            ))));
        };
        if d.bytes != written.bytes {
            return Err(Failure::Stage(StageError::Transient(format!(
                "{rel}: hashed {} bytes but the destination wrote {}",
                d.bytes, written.bytes
            ))));
        }
        let row = FileRow {
            recording_id: task.recording_id.clone(),
            file: kind,
            key: rel,
            bytes: d.bytes,
            sha256: d.sha256.clone(),
            content_type,
        };
        ctx.store
            .record_file_version(&ctx.job, &row, version.as_deref())
            .await
            .map_err(|e| Failure::Stage(store_err(e)))?;
        ctx.records.add(row.bytes, started.elapsed());
        Ok(())
    }

    /// Skips the recording for good. One Chorus answered 404 for after listing it is
    /// recorded as deleted in the source (the manifest says so); files of it written
    /// before the 404 stay exported and listed.
    async fn skip(&self, task: &FetchTask, reason: &str, deleted: bool) -> Result<(), StageError> {
        let ctx = &self.0;
        if deleted {
            ctx.store
                .mark_deleted_in_source(&ctx.job, &task.recording_id, reason)
                .await
        } else {
            ctx.store
                .mark_skipped(&ctx.job, &task.recording_id, reason)
                .await
        }
        .map_err(store_err)?;
        ctx.maybe_request_manifest().await
    }
}

fn json_body(value: &serde_json::Value) -> (ByteStream, Option<u64>, String, &'static str) {
    let bytes = Bytes::from(serde_json::to_vec_pretty(value).unwrap_or_default());
    let len = bytes.len() as u64;
    (
        Box::pin(futures::stream::once(async move { Ok(bytes) })),
        Some(len),
        "application/json".into(),
        "json",
    )
}

#[async_trait]
impl StageHandler for FetchStage {
    type Task = FetchTask;

    fn stage(&self) -> Stage {
        Stage::Fetch
    }

    async fn handle(&self, task: FetchTask) -> Result<(), StageError> {
        let ctx = &self.0;
        if task.recording_id.is_empty() || task.recording_id.len() > 1024 {
            return Err(StageError::Invalid(
                "the recording id is empty or longer than 1024 bytes".into(),
            ));
        }
        let done: HashSet<FileKind> = ctx
            .store
            .files_of(&ctx.job, &task.recording_id)
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|f| f.file)
            .collect();
        let todo: Vec<FileKind> = ctx
            .spec
            .kinds
            .kinds()
            .filter(|k| !done.contains(k))
            .collect();
        let mut conversation = None;
        if !todo.is_empty() {
            // The details call comes first: a deleted or private recording is skipped
            // before anything of it is written.
            let metadata = match ctx
                .chorus
                .conversation(&task.recording_id, METADATA_FIELDS)
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    return match self.chorus(e).await {
                        Failure::Gone { reason, deleted } => {
                            self.skip(&task, &reason, deleted).await
                        }
                        Failure::Stage(e) => Err(e),
                    };
                }
            };
            for kind in todo {
                let tried = FILE_RETRIES
                    .run(
                        |_| {
                            let export = self.export_file(&task, kind, &metadata);
                            async move {
                                match export.await {
                                    Ok(()) => Outcome::Done(()),
                                    Err(e @ Failure::Stage(StageError::Transient(_))) => {
                                        Outcome::Retry {
                                            error: e,
                                            at_least: None,
                                        }
                                    }
                                    Err(other) => Outcome::Fail(other),
                                }
                            }
                        },
                        |_, failure, _| {
                            if let Failure::Stage(reason) = failure {
                                tracing::info!(job = %ctx.job, recording = %task.recording_id, file = kind.as_str(), %reason, "retrying file");
                            }
                        },
                    )
                    .await;
                match tried {
                    Ok(()) => {}
                    Err(GaveUp::Failed(failure) | GaveUp::Exhausted { last: failure, .. }) => {
                        return match failure {
                            Failure::Gone { reason, deleted } => {
                                self.skip(&task, &reason, deleted).await
                            }
                            Failure::Stage(e) => Err(e),
                        };
                    }
                }
            }
            conversation = Some(metadata);
        }
        // The BigQuery row goes in before the recording counts as exported, so a failed
        // insert is retried by redelivery (its insertId keeps it to one row).
        record_row(ctx, &task, conversation).await?;
        ctx.store
            .mark_exported(&ctx.job, &task.recording_id)
            .await
            .map_err(store_err)?;
        ctx.maybe_request_manifest().await
    }

    async fn on_dead(&self, task: Option<FetchTask>, reason: &str) -> Result<(), StageError> {
        let ctx = &self.0;
        if let Some(task) = task {
            ctx.store
                .mark_dead(&ctx.job, &task.recording_id, reason)
                .await
                .map_err(store_err)?;
            ctx.maybe_request_manifest().await?;
        }
        Ok(())
    }
}

/// The fetch stage's hook: writes the recording's row when the job has a sink. Uses the
/// conversation document fetched for this delivery, or asks Chorus again when this
/// delivery had nothing left to fetch (a redelivery after the files were written).
async fn record_row(
    ctx: &JobContext,
    task: &pipeline::messages::FetchTask,
    conversation: Option<serde_json::Value>,
) -> Result<(), pipeline::runner::StageError> {
    let Some(sink) = &ctx.metadata_sink else {
        return Ok(());
    };
    let conversation = match conversation {
        Some(c) => c,
        None => match ctx
            .chorus
            .conversation(&task.recording_id, METADATA_FIELDS)
            .await
        {
            Ok(c) => c,
            Err(e) => return Err(ctx.chorus_error(e).await),
        },
    };
    let files = ctx
        .store
        .files_of(&ctx.job, &task.recording_id)
        .await
        .map_err(store_err)?;
    let row = crate::bigquery::RecordingRow::new(
        ctx.job.as_str(),
        &task.recording_id,
        task.recorded_at,
        &conversation,
        &files,
    );
    match sink.insert(&row).await {
        Ok(()) => Ok(()),
        Err(e) => Err(ctx.sink_error(e).await),
    }
}
