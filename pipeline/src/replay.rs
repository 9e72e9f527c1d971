//! Dead letters and their replay: what `portshift replay` does, and exactly what an
//! operator does by hand with the stock `nats` CLI (docs/replay.md): list the job's
//! messages in `PORTSHIFT_DLQ`, read one, publish its payload back to its original
//! subject with a fresh `Nats-Msg-Id` (so the duplicate window does not drop it), and
//! remove it from the DLQ.

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;

use crate::JobId;
use crate::topology::{self, DLQ_STREAM, Stage, TopologyError};

/// One dead-lettered message, as `nats stream get PORTSHIFT_DLQ <seq>` shows it.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub seq: u64,
    pub stage: String,
    pub error: String,
    pub attempts: String,
    pub original_subject: String,
    pub original_msg_id: String,
    pub payload: Bytes,
}

impl DeadLetter {
    /// The msg-id a replay publishes with: new, so JetStream does not drop it as a
    /// duplicate, and traceable to the dead letter it came from.
    pub fn replay_msg_id(&self) -> String {
        format!("{}.replay.{}", self.original_msg_id, self.seq)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("could not read the dead-letter stream {DLQ_STREAM}: {0}. Check the NATS connection")]
    Read(String),
    #[error(
        "dead letter {seq} names the original subject {subject:?}, which is not a stage subject of job {job}; \
         it was not replayed (inspect it with `nats stream get {DLQ_STREAM} {seq}`)"
    )]
    ForeignSubject {
        seq: u64,
        subject: String,
        job: JobId,
    },
    #[error(transparent)]
    Publish(#[from] TopologyError),
    #[error(
        "replayed dead letter {seq} but could not remove it from {DLQ_STREAM}: {detail}. Remove it with `nats stream rmm {DLQ_STREAM} {seq} -f`"
    )]
    Remove { seq: u64, detail: String },
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

/// The job's dead letters, optionally of one stage, oldest first.
pub async fn dead_letters(
    js: &jetstream::Context,
    job: &JobId,
    stage: Option<Stage>,
) -> Result<Vec<DeadLetter>, ReplayError> {
    let stream = js
        .get_stream(DLQ_STREAM)
        .await
        .map_err(|e| ReplayError::Read(e.to_string()))?;
    let info = stream
        .get_info()
        .await
        .map_err(|e| ReplayError::Read(e.to_string()))?;
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return Ok(out);
    }
    let wanted: Vec<String> = match stage {
        Some(s) => vec![s.dlq_subject(job)],
        None => Stage::ALL.iter().map(|s| s.dlq_subject(job)).collect(),
    };
    for seq in info.state.first_sequence..=info.state.last_sequence {
        // Deleted sequences are gaps; skip them.
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        if !wanted.iter().any(|w| w == msg.subject.as_str()) {
            continue;
        }
        let h = &msg.headers;
        out.push(DeadLetter {
            seq,
            stage: header(h, topology::HDR_STAGE),
            error: header(h, topology::HDR_ERROR),
            attempts: header(h, topology::HDR_ATTEMPTS),
            original_subject: header(h, topology::HDR_ORIGINAL_SUBJECT),
            original_msg_id: header(h, topology::HDR_ORIGINAL_MSG_ID),
            payload: msg.payload.clone(),
        });
    }
    Ok(out)
}

/// Publishes a dead letter back to its stage subject and removes it from the DLQ.
pub async fn replay(
    js: &jetstream::Context,
    job: &JobId,
    letter: &DeadLetter,
) -> Result<(), ReplayError> {
    if !Stage::ALL
        .iter()
        .any(|s| s.subject(job) == letter.original_subject)
    {
        return Err(ReplayError::ForeignSubject {
            seq: letter.seq,
            subject: letter.original_subject.clone(),
            job: job.clone(),
        });
    }
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", letter.replay_msg_id().as_str());
    topology::publish_raw(
        js,
        letter.original_subject.clone(),
        headers,
        letter.payload.clone(),
    )
    .await?;
    let stream = js
        .get_stream(DLQ_STREAM)
        .await
        .map_err(|e| ReplayError::Read(e.to_string()))?;
    stream
        .delete_message(letter.seq)
        .await
        .map_err(|e| ReplayError::Remove {
            seq: letter.seq,
            detail: e.to_string(),
        })?;
    Ok(())
}

/// Puts a fetch task into the dead-letter stream exactly as the stage runner does for a
/// message that failed (same subject, same headers), so `portshift replay` and the stock
/// `nats` commands of docs/replay.md re-run it. Used when read-back verification finds
/// a recording whose stored bytes differ from what was uploaded: fetching it again is
/// the repair.
pub async fn park_fetch(
    js: &jetstream::Context,
    task: &crate::messages::FetchTask,
    reason: &str,
    attempt_tag: &str,
) -> Result<(), ReplayError> {
    use crate::runner::JobTask;
    let payload = serde_json::to_vec(task).map_err(|e| ReplayError::Read(e.to_string()))?;
    let original_id = task.canonical_msg_id();
    let one_line: String = reason
        .replace(['\r', '\n'], " ")
        .chars()
        .take(1000)
        .collect();
    let mut headers = HeaderMap::new();
    headers.insert(topology::HDR_ERROR, one_line.as_str());
    headers.insert(topology::HDR_STAGE, Stage::Fetch.as_str());
    headers.insert(topology::HDR_ATTEMPTS, "1");
    headers.insert(
        topology::HDR_ORIGINAL_SUBJECT,
        Stage::Fetch.subject(&task.job).as_str(),
    );
    headers.insert(topology::HDR_ORIGINAL_MSG_ID, original_id.as_str());
    headers.insert(
        "Nats-Msg-Id",
        format!("dlq.{original_id}.verify.{attempt_tag}").as_str(),
    );
    topology::publish_raw(
        js,
        Stage::Fetch.dlq_subject(&task.job),
        headers,
        Bytes::from(payload),
    )
    .await?;
    Ok(())
}
