//! The JetStream topology: stream and subject names, per-job durable consumers, and the
//! publish helper that puts a `Nats-Msg-Id` on every message. Creating it is idempotent,
//! so every process calls [`ensure_streams`] at start.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use serde::Serialize;

use crate::JobId;
use crate::keys;
use crate::messages::{FetchTask, ListTask};

/// How long a JetStream management request (make a stream or a consumer) is tried again
/// while a cluster elects a leader, after a node was lost or while one rejoins. Meant for
/// answers that say "not now" (a timeout, "temporarily unavailable"); a server without
/// JetStream answers "no responders" at once, and that error is reported at once.
pub const CLUSTER_SETTLE: Duration = Duration::from_secs(60);

/// Runs `op` until it succeeds, fails with an error that is not "not now", or
/// [`CLUSTER_SETTLE`] has passed.
async fn while_settling<T, E, F, Fut>(what: &str, mut op: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = std::time::Instant::now();
    loop {
        match op().await {
            Err(e) if is_not_now(&e.to_string()) && started.elapsed() < CLUSTER_SETTLE => {
                tracing::warn!(what, error = %e, "JetStream did not answer (a leader election?); trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// An answer that means "not now" from a JetStream cluster that is electing a leader.
fn is_not_now(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("timed out")
        || e.contains("temporarily unavailable")
        || e.contains("no suitable peers")
        || e.contains("insufficient resources")
}

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

/// Tasks older than this leave the work stream unprocessed: a job abandoned for two
/// weeks (never resumed, never cancelled) no longer holds queue space. Documented in
/// docs/replay.md.
pub const WORK_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);
/// Upper bound of the work stream's store (tasks are a few hundred bytes each: about
/// two million queued recordings).
pub const WORK_MAX_BYTES: i64 = 1024 * 1024 * 1024;
/// Durable consumers of a job nobody works on disappear after this idle time (a job is
/// normally retired, consumers and all, when it ends; see [`retire_job`]).
pub const CONSUMER_INACTIVE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long JetStream remembers msg-ids to drop duplicate publishes.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// The same for the hash and upload records. A record's msg-id names its worker and
/// sequence number, and only a publish retried by the client repeats one, within
/// seconds; a short window keeps the server from remembering ids for two minutes.
pub const RECORD_DUPLICATE_WINDOW: Duration = Duration::from_secs(10);

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

/// Creates the three streams if missing (idempotent; safe from many processes at once),
/// with one replica (a single server).
pub async fn ensure_streams(js: &jetstream::Context) -> Result<(), TopologyError> {
    ensure_streams_replicated(js, 1).await
}

/// [`ensure_streams`] with `replicas` copies of each stream (3 on the reference cluster,
/// `deploy/cluster/`). Streams that exist keep the replicas they were made with.
pub async fn ensure_streams_replicated(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<(), TopologyError> {
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
            max_age: WORK_MAX_AGE,
            max_bytes: WORK_MAX_BYTES,
            max_message_size: MAX_MESSAGE_BYTES as i32,
            // Full: refuse new tasks (the publisher sees the error and retries) rather
            // than silently dropping queued ones.
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        },
        stream::Config {
            name: RECORD_STREAM.into(),
            subjects: vec!["portshift.hash.*".into(), "portshift.upload.*".into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(24 * 3600),
            duplicate_window: RECORD_DUPLICATE_WINDOW,
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
    for mut config in configs {
        config.num_replicas = replicas.max(1);
        let name: &'static str = match config.name.as_str() {
            WORK_STREAM => WORK_STREAM,
            RECORD_STREAM => RECORD_STREAM,
            _ => DLQ_STREAM,
        };
        let limits = (config.max_age, config.max_bytes, config.discard);
        let stream = while_settling(name, || js.get_or_create_stream(config.clone()))
            .await
            .map_err(|e| TopologyError::Stream {
                stream: name,
                source: Box::new(e),
            })?;
        // A stream made by an older portshift is brought up to date, keeping everything
        // else (e.g. the replicas an operator chose): a work stream without limits gets
        // them, a record stream remembering ids for two minutes gets the short window.
        // The stream as the server has it (get-or-create returns its current info):
        let current = stream.cached_info().config.clone();
        let upgraded = match name {
            WORK_STREAM if current.max_age.is_zero() => {
                let mut updated = current;
                (updated.max_age, updated.max_bytes, updated.discard) = limits;
                Some(updated)
            }
            RECORD_STREAM if current.duplicate_window != RECORD_DUPLICATE_WINDOW => {
                Some(stream::Config {
                    duplicate_window: RECORD_DUPLICATE_WINDOW,
                    ..current
                })
            }
            _ => None,
        };
        if let Some(updated) = upgraded {
            while_settling(name, || js.update_stream(updated.clone()))
                .await
                .map_err(|e| TopologyError::Stream {
                    stream: name,
                    source: Box::new(e),
                })?;
        }
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
    let stream = while_settling(&name, || js.get_stream(WORK_STREAM))
        .await
        .map_err(|e| TopologyError::Consumer {
            name: name.clone(),
            source: Box::new(e),
        })?;
    while_settling(&name, || {
        stream.get_or_create_consumer(
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
                inactive_threshold: CONSUMER_INACTIVE,
                ..Default::default()
            },
        )
    })
    .await
    .map_err(|e| TopologyError::Consumer {
        name,
        source: Box::new(e),
    })
}

/// Publishes the task that lists a job's first page. Its msg-id is fixed, so a second
/// publish (a resume while the first is still queued) is dropped by JetStream.
pub async fn publish_first_list_task(
    js: &jetstream::Context,
    job: &JobId,
) -> Result<(), TopologyError> {
    publish_json(
        js,
        Stage::List.subject(job),
        &msg_id(job, "list", &["0"]),
        &ListTask {
            job: job.clone(),
            page: 0,
            continuation_key: None,
        },
    )
    .await
}

/// Publishes the fetch task of one listed recording. Its msg-id is the recording's, so a
/// task published again (a list page retried, `resume` requeueing pending work) within
/// the duplicate window is dropped by JetStream.
pub async fn publish_fetch_task(
    js: &jetstream::Context,
    job: &JobId,
    recording_id: &str,
    recorded_at: Option<i64>,
) -> Result<(), TopologyError> {
    let id_token = keys::sanitize_segment(recording_id);
    publish_json(
        js,
        Stage::Fetch.subject(job),
        &msg_id(job, "fetch", &[&id_token]),
        &FetchTask {
            job: job.clone(),
            recording_id: recording_id.to_string(),
            recorded_at,
        },
    )
    .await
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

/// How many of the job's tasks for `stages` are in the work stream: queued, or
/// delivered and not yet acked (work-queue retention removes a task only when acked).
pub async fn job_work_left(
    js: &jetstream::Context,
    job: &JobId,
    stages: &[Stage],
) -> Result<u64, TopologyError> {
    use futures::TryStreamExt;
    let err = |e: Box<dyn std::error::Error + Send + Sync>| TopologyError::Stream {
        stream: WORK_STREAM,
        source: e,
    };
    let stream = js
        .get_stream(WORK_STREAM)
        .await
        .map_err(|e| err(Box::new(e)))?;
    let subjects = stream
        .info_with_subjects(format!("portshift.*.{job}"))
        .await
        .map_err(|e| err(Box::new(e)))?;
    let counts: Vec<(String, usize)> =
        subjects.try_collect().await.map_err(|e| err(Box::new(e)))?;
    Ok(counts
        .into_iter()
        .filter(|(subject, _)| stages.iter().any(|s| *subject == s.subject(job)))
        .map(|(_, n)| n as u64)
        .sum())
}

/// Retires a job that reached a final state: deletes its four durable consumers (a
/// schedule every 5 minutes would otherwise pile up thousands) and purges whatever of
/// its tasks is still in the work stream (a cancelled job's unstarted fetches). Best
/// effort: what fails here the stream's limits and the consumers' inactivity threshold
/// clean up later. A replay into a retired job makes its consumers again.
pub async fn retire_job(js: &jetstream::Context, job: &JobId) {
    let Ok(stream) = js.get_stream(WORK_STREAM).await else {
        return;
    };
    for stage in Stage::ALL {
        let _ = stream.delete_consumer(&stage.consumer_name(job)).await;
        if let Err(e) = stream.purge().filter(stage.subject(job)).await {
            tracing::debug!(%job, stage = stage.as_str(), error = %e, "could not purge the job's tasks");
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
