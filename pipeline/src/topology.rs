//! The JetStream topology: stream and subject names, per-job durable consumers, and the
//! publish helper that puts a `Nats-Msg-Id` on every message. Creating it is idempotent,
//! so every process calls [`ensure_streams`] at start.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use serde::Serialize;

use crate::JobId;

/// Work stream: list, fetch, manifest and notify tasks. Work-queue retention: a task is
/// gone once acked.
pub const WORK_STREAM: &str = "PORTSHIFT_WORK";
/// Record stream: hash and upload records, kept a day for the console's throughput views.
pub const RECORD_STREAM: &str = "PORTSHIFT_RECORDS";
/// Dead letters: tasks that exhausted their deliveries, kept until replayed or expired.
pub const DLQ_STREAM: &str = "PORTSHIFT_DLQ";

/// Largest message (payload plus headers) portshift publishes: nats-server's default
/// `max_payload`. A larger one would make the server drop the connection with a
/// "maximum payload violation" and the publish end in an ack timeout; every message
/// portshift makes is a few KiB, so a larger one is refused here, with its size.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// How long JetStream remembers msg-ids to drop duplicate publishes.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Header names on dead letters (documented in docs/replay.md; stable).
pub const HDR_ERROR: &str = "Portshift-Error";
pub const HDR_STAGE: &str = "Portshift-Stage";
pub const HDR_ATTEMPTS: &str = "Portshift-Attempts";
pub const HDR_ORIGINAL_SUBJECT: &str = "Portshift-Original-Subject";
pub const HDR_ORIGINAL_MSG_ID: &str = "Portshift-Original-Msg-Id";

/// The stages that consume a subject of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    List,
    Fetch,
    Manifest,
    Notify,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::List, Stage::Fetch, Stage::Manifest, Stage::Notify];
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::List => "list",
            Stage::Fetch => "fetch",
            Stage::Manifest => "manifest",
            Stage::Notify => "notify",
        }
    }
    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.as_str() == s)
    }
    pub fn subject(self, job: &JobId) -> String {
        format!("portshift.{}.{}", self.as_str(), job)
    }
    pub fn consumer_name(self, job: &JobId) -> String {
        format!("{}-{}", self.as_str(), job)
    }
    pub fn dlq_subject(self, job: &JobId) -> String {
        format!("portshift.dlq.{}.{}", self.as_str(), job)
    }
}

pub fn hash_subject(job: &JobId) -> String {
    format!("portshift.hash.{job}")
}
pub fn upload_subject(job: &JobId) -> String {
    format!("portshift.upload.{job}")
}

/// `<job>.<stage>.<recording id>[.<file>]`, as DESIGN.md fixes it.
pub fn msg_id(job: &JobId, stage: &str, parts: &[&str]) -> String {
    let mut id = format!("{job}.{stage}");
    for p in parts {
        id.push('.');
        id.push_str(p);
    }
    id
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(
        "could not create or update JetStream stream {stream}: {source}. Is nats-server running with JetStream enabled (-js)?"
    )]
    Stream {
        stream: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("could not create JetStream consumer {name}: {source}")]
    Consumer {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("could not publish to {subject}: {source}. Check the NATS connection.")]
    Publish {
        subject: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the message for {subject} is {bytes} bytes, more than the {MAX_MESSAGE_BYTES} bytes NATS accepts by default; it is not published"
    )]
    TooLarge { subject: String, bytes: usize },
    #[error("could not encode a message for {subject}: {source}")]
    Encode {
        subject: String,
        source: serde_json::Error,
    },
}

/// Creates the three streams if missing (idempotent; safe from many processes at once).
pub async fn ensure_streams(js: &jetstream::Context) -> Result<(), TopologyError> {
    let configs = [
        stream::Config {
            name: WORK_STREAM.into(),
            subjects: vec![
                "portshift.list.*".into(),
                "portshift.fetch.*".into(),
                "portshift.manifest.*".into(),
                "portshift.notify.*".into(),
            ],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        },
        stream::Config {
            name: RECORD_STREAM.into(),
            subjects: vec!["portshift.hash.*".into(), "portshift.upload.*".into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(24 * 3600),
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        },
        stream::Config {
            name: DLQ_STREAM.into(),
            subjects: vec!["portshift.dlq.>".into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(30 * 24 * 3600),
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        },
    ];
    for config in configs {
        let name: &'static str = match config.name.as_str() {
            WORK_STREAM => WORK_STREAM,
            RECORD_STREAM => RECORD_STREAM,
            _ => DLQ_STREAM,
        };
        js.get_or_create_stream(config)
            .await
            .map_err(|e| TopologyError::Stream {
                stream: name,
                source: Box::new(e),
            })?;
    }
    Ok(())
}

/// The durable pull consumer of one stage of one job. Idempotent; shared by every worker
/// of the job, so JetStream spreads the job's messages across them.
pub async fn stage_consumer(
    js: &jetstream::Context,
    stage: Stage,
    job: &JobId,
    ack_wait: Duration,
    max_ack_pending: i64,
) -> Result<consumer::PullConsumer, TopologyError> {
    let name = stage.consumer_name(job);
    let stream = js
        .get_stream(WORK_STREAM)
        .await
        .map_err(|e| TopologyError::Consumer {
            name: name.clone(),
            source: Box::new(e),
        })?;
    stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: stage.subject(job),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                // The runner dead-letters after its own limit; the server must keep
                // redelivering until then, so no server-side limit.
                max_deliver: -1,
                max_ack_pending,
                inactive_threshold: Duration::from_secs(7 * 24 * 3600),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| TopologyError::Consumer {
            name,
            source: Box::new(e),
        })
}

/// Publishes a JSON message with `Nats-Msg-Id` and waits for JetStream's ack, so the
/// caller knows the message is stored before it acks its own input.
pub async fn publish_json<T: Serialize>(
    js: &jetstream::Context,
    subject: String,
    msg_id: &str,
    payload: &T,
) -> Result<(), TopologyError> {
    let body = serde_json::to_vec(payload).map_err(|source| TopologyError::Encode {
        subject: subject.clone(),
        source,
    })?;
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    publish_raw(js, subject, headers, body.into()).await
}

/// Publishes bytes with the given headers and waits for the stream's ack.
pub async fn publish_raw(
    js: &jetstream::Context,
    subject: String,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<(), TopologyError> {
    let header_bytes: usize = headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|v| name.to_string().len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    let bytes = body.len() + header_bytes;
    if bytes > MAX_MESSAGE_BYTES {
        return Err(TopologyError::TooLarge { subject, bytes });
    }
    let ack = js
        .publish_with_headers(subject.clone(), headers, body)
        .await
        .map_err(|e| TopologyError::Publish {
            subject: subject.clone(),
            source: Box::new(e),
        })?;
    ack.await.map_err(|e| TopologyError::Publish {
        subject,
        source: Box::new(e),
    })?;
    Ok(())
}

/// Removes a finished job's consumers (hygiene; they would expire on their own).
pub async fn delete_job_consumers(js: &jetstream::Context, job: &JobId) {
    if let Ok(stream) = js.get_stream(WORK_STREAM).await {
        for stage in Stage::ALL {
            let _ = stream.delete_consumer(&stage.consumer_name(job)).await;
        }
    }
}

/// What [`purge_job`] removed from JetStream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgedMessages {
    pub messages: u64,
    pub consumers: u64,
}

/// Removes everything JetStream holds of a job: its messages in the three streams
/// (purged by subject, so other jobs' messages stay) and its durable consumers.
/// Idempotent: a second call finds nothing and succeeds.
pub async fn purge_job(
    js: &jetstream::Context,
    job: &JobId,
) -> Result<PurgedMessages, TopologyError> {
    let mut subjects: Vec<(&'static str, String)> = Vec::new();
    for stage in Stage::ALL {
        subjects.push((WORK_STREAM, stage.subject(job)));
        subjects.push((DLQ_STREAM, stage.dlq_subject(job)));
    }
    subjects.push((RECORD_STREAM, hash_subject(job)));
    subjects.push((RECORD_STREAM, upload_subject(job)));
    let mut out = PurgedMessages::default();
    for stream_name in [WORK_STREAM, RECORD_STREAM, DLQ_STREAM] {
        let stream = js
            .get_stream(stream_name)
            .await
            .map_err(|e| TopologyError::Stream {
                stream: stream_name,
                source: Box::new(e),
            })?;
        for (_, subject) in subjects.iter().filter(|(s, _)| *s == stream_name) {
            let done = stream.purge().filter(subject.as_str()).await.map_err(|e| {
                TopologyError::Stream {
                    stream: stream_name,
                    source: Box::new(e),
                }
            })?;
            out.messages += done.purged;
        }
    }
    let work = js
        .get_stream(WORK_STREAM)
        .await
        .map_err(|e| TopologyError::Stream {
            stream: WORK_STREAM,
            source: Box::new(e),
        })?;
    for stage in Stage::ALL {
        // Not found (never made, already deleted, expired) is the goal, not an error.
        if work
            .delete_consumer(&stage.consumer_name(job))
            .await
            .is_ok()
        {
            out.consumers += 1;
        }
    }
    Ok(out)
}
