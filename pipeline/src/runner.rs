//! The stage runner: pulls one stage's messages for one job and drives a handler.
//!
//! The delivery rules live here once, for every stage:
//! - a message is acked only after the handler returned `Ok`, i.e. after its effect is
//!   durable, and the ack is confirmed by the server (double ack);
//! - while the handler works, the runner tells JetStream it is still in progress, so a
//!   long upload is not redelivered, while a crashed worker's message is redelivered
//!   after `ack_wait`;
//! - a transient error naks with jittered backoff; after `max_deliveries` the message
//!   moves to `portshift.dlq.<stage>.<job>` with headers saying why, and the handler's
//!   `on_dead` records the loss so the job can still complete;
//! - a payload that does not parse, names another job, or fails its message's
//!   [`Validate`] checks goes to the DLQ at once (retrying cannot fix it), with the
//!   parse or validation error as its `Portshift-Error`; a payload too large to be
//!   dead-lettered whole is kept as a prefix, with a header saying so;
//! - a message dropped unacked (panic, cancellation) is nakked by its guard.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, Message};
use async_trait::async_trait;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::backoff;
use crate::messages::Validate;
use crate::topology::{self, Stage, TopologyError};
use crate::{JobId, messages};

/// Payloads larger than this are dead-lettered as a prefix of this size (plus the
/// `Portshift-Payload-Bytes` header with the original size): the DLQ message must stay
/// under the server's `max_payload` (1 MiB by default) together with its headers, and
/// no valid task is anywhere near this size.
pub const DLQ_MAX_PAYLOAD: usize = 64 * 1024;

/// Header on a dead letter whose payload was cut to [`DLQ_MAX_PAYLOAD`] bytes: the
/// original payload's size in bytes.
pub const HDR_PAYLOAD_BYTES: &str = "Portshift-Payload-Bytes";

/// How long one idle pull waits for a message before asking again (short, so a stopping
/// worker leaves no pull request behind for long).
const IDLE_WAIT: Duration = Duration::from_secs(5);
/// How long a no-wait fetch may take to answer. async-nats gives a `fetch()` batch no
/// timeout of its own, so a request lost with the node it went to (a SIGKILLed NATS
/// server) would otherwise leave the pull loop waiting forever, every slot idle.
const FETCH_REPLY_WAIT: Duration = Duration::from_secs(5);

/// Why a handler could not finish a message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StageError {
    /// May succeed later (network, 5xx, 429, a storage hiccup): nak and retry.
    #[error("{0}")]
    Transient(String),
    /// Can never succeed as sent (bad payload): dead-letter now.
    #[error("{0}")]
    Invalid(String),
    /// The job's credentials were refused: keep the message, stop the job's workers,
    /// and wait for a resume with new credentials.
    #[error("{0}")]
    NeedsCredentials(String),
}

/// Messages that belong to a job (all stage tasks, and the hash and upload records).
/// Every one is checked with [`Validate`] after it parsed.
pub trait JobTask: DeserializeOwned + Clone + Send + Sync + Validate + 'static {
    fn job(&self) -> &JobId;
    /// The msg-id this task is published with (DESIGN.md: `<job>.<stage>.<id>`).
    fn canonical_msg_id(&self) -> String;
    /// The recording the task is about, if it is about one (for log fields).
    fn recording(&self) -> Option<&str> {
        None
    }
}

/// Implements [`JobTask`] for a message with a `job` field; the message types differ
/// only in their msg-id (and the fetch task, written out below, in naming a recording).
macro_rules! job_task {
    ($ty:ty, |$task:ident| $msg_id:expr) => {
        impl JobTask for $ty {
            fn job(&self) -> &JobId {
                &self.job
            }
            fn canonical_msg_id(&self) -> String {
                let $task = self;
                $msg_id
            }
        }
    };
}

job_task!(messages::ListTask, |t| topology::msg_id(
    &t.job,
    "list",
    &[&t.page.to_string()]
));
// A record's msg-id is `<job>.<stage>.<worker>.<seq>`: a publish retried by the client
// is dropped as a duplicate, two workers' records never are.
job_task!(messages::HashRecord, |t| topology::msg_id(
    &t.job,
    "hash",
    &[&t.worker, &t.seq.to_string()]
));
job_task!(messages::UploadRecord, |t| topology::msg_id(
    &t.job,
    "upload",
    &[&t.worker, &t.seq.to_string()]
));
job_task!(messages::ManifestTask, |t| topology::msg_id(
    &t.job,
    "manifest",
    &[]
));
job_task!(messages::NotifyTask, |t| topology::msg_id(
    &t.job,
    "notify",
    &[]
));

impl JobTask for messages::FetchTask {
    fn job(&self) -> &JobId {
        &self.job
    }
    fn recording(&self) -> Option<&str> {
        Some(&self.recording_id)
    }
    fn canonical_msg_id(&self) -> String {
        let id = crate::keys::sanitize_segment(&self.recording_id);
        topology::msg_id(&self.job, "fetch", &[&id])
    }
}

/// Why [`decode`] refused a payload. `task` is the parsed task when only validation
/// failed (so its handler can settle the recording), `None` otherwise.
#[derive(Debug)]
pub struct Rejected<T> {
    pub task: Option<T>,
    /// The DLQ's `Portshift-Error`: `payload is not a valid <stage> task: ...`.
    pub reason: String,
}

/// What the runner does with a payload before its handler sees it: parse it as `T`,
/// check it belongs to `job`, and [`Validate`] it. `what` names the message in the
/// reason (`fetch task`, `hash record`). Public so tests can check exactly the runner's
/// verdict on a payload without a server.
pub fn decode<T: JobTask>(what: &str, job: &JobId, payload: &[u8]) -> Result<T, Rejected<T>> {
    let task: T = serde_json::from_slice(payload).map_err(|e| Rejected {
        task: None,
        reason: format!("payload is not a valid {what}: {e}"),
    })?;
    if task.job() != job {
        return Err(Rejected {
            task: None,
            reason: format!(
                "payload names job {} but arrived on the subject of job {job}",
                task.job()
            ),
        });
    }
    if let Err(e) = task.validate() {
        return Err(Rejected {
            reason: format!("payload is not a valid {what}: {e}"),
            task: Some(task),
        });
    }
    Ok(task)
}

#[async_trait]
pub trait StageHandler: Send + Sync + 'static {
    type Task: JobTask;
    fn stage(&self) -> Stage;
    /// Does the stage's work. Returns only once the effect is durable.
    async fn handle(&self, task: Self::Task) -> Result<(), StageError>;
    /// Records that a task was dead-lettered (e.g. marks the recording dead).
    /// `task` is `None` when the payload did not even parse or names another job; a task
    /// that parsed but failed validation is passed, so its recording can be settled.
    async fn on_dead(&self, task: Option<Self::Task>, reason: &str) -> Result<(), StageError>;
}

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Messages processed at once by this runner.
    pub concurrency: usize,
    /// How long JetStream waits for an ack (or a progress ping) before redelivering.
    pub ack_wait: Duration,
    /// Deliveries before a transiently failing message is dead-lettered.
    pub max_deliveries: u64,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            ack_wait: Duration::from_secs(30),
            max_deliveries: 8,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// Counters per runner, read by the CLI's summary and by tests.
#[derive(Debug, Default)]
pub struct StageCounters {
    pub processed: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Deliveries of a message JetStream had delivered before (count above 1): a retry
    /// after a nak, or a redelivery after a worker went silent or died.
    pub redelivered: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("could not start pulling {stage} messages: {source}. Check the NATS connection.")]
    Pull {
        stage: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Runs one stage for one job until `shutdown` turns true. In-flight messages are
/// finished (or nakked by their guard) before it returns.
pub async fn run<H: StageHandler>(
    js: jetstream::Context,
    job: JobId,
    handler: Arc<H>,
    config: RunnerConfig,
    counters: Arc<StageCounters>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RunnerError> {
    let stage = handler.stage();
    let max_ack_pending = (config.concurrency * 4) as i64;
    let consumer =
        topology::stage_consumer(&js, stage, &job, config.ack_wait, max_ack_pending).await?;
    let slots = Arc::new(Semaphore::new(config.concurrency));
    let mut inflight = JoinSet::new();
    let start = |msg: Message, permit: OwnedSemaphorePermit, inflight: &mut JoinSet<()>| {
        let handler = handler.clone();
        let js = js.clone();
        let config = config.clone();
        let counters = counters.clone();
        let job = job.clone();
        inflight.spawn(async move {
            process(
                &js,
                &job,
                handler.as_ref(),
                Guarded::new(msg),
                &config,
                &counters,
            )
            .await;
            drop(permit);
        });
    };
    // Pull only what free slots can start at once: a message JetStream delivered is
    // being worked on (and kept alive by progress acks), never waiting in a client
    // buffer while its ack_wait runs out, which would redeliver it (and count a
    // delivery) while its first copy is still queued.
    'pull: loop {
        if *shutdown.borrow() {
            break;
        }
        while inflight.try_join_next().is_some() {}
        let first = tokio::select! {
            _ = shutdown.changed() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        // What is waiting now, without waiting for more.
        let mut got = 0;
        match consumer
            .fetch()
            .max_messages(permits.len())
            .messages()
            .await
        {
            Ok(mut batch) => loop {
                let next = tokio::select! {
                    _ = shutdown.changed() => break 'pull,
                    n = tokio::time::timeout(FETCH_REPLY_WAIT, batch.next()) => match n {
                        Ok(n) => n,
                        Err(_) => {
                            // Anything delivered later to the abandoned inbox is
                            // redelivered after ack_wait.
                            tracing::info!(stage = stage.as_str(), "no answer to a fetch; pulling again");
                            None
                        }
                    },
                };
                match next {
                    Some(Ok(msg)) => {
                        let Some(permit) = permits.pop() else { break };
                        got += 1;
                        start(msg, permit, &mut inflight);
                    }
                    Some(Err(e)) => {
                        tracing::debug!(stage = stage.as_str(), error = %e, "fetch ended early");
                        break;
                    }
                    None => break,
                }
            },
            Err(e) => {
                // Reconnects surface here; the connection recovers on its own.
                tracing::debug!(stage = stage.as_str(), error = %e, "fetch failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        if got > 0 {
            continue;
        }
        // Nothing waiting: wait (bounded) for the next message, with one slot held for it.
        permits.truncate(1);
        let waited = consumer
            .batch()
            .max_messages(1)
            .expires(IDLE_WAIT)
            .messages()
            .await;
        match waited {
            Ok(mut batch) => {
                let next = tokio::select! {
                    _ = shutdown.changed() => break 'pull,
                    n = batch.next() => n,
                };
                match (next, permits.pop()) {
                    (Some(Ok(msg)), Some(permit)) => start(msg, permit, &mut inflight),
                    (Some(Err(e)), _) => {
                        tracing::debug!(stage = stage.as_str(), error = %e, "pull wait ended early");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    _ => {}
                }
            }
            Err(e) => {
                tracing::debug!(stage = stage.as_str(), error = %e, "pull failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    while inflight.join_next().await.is_some() {}
    Ok(())
}

/// A message that is nakked if it is dropped before being settled.
struct Guarded(Option<Message>);

impl Guarded {
    fn new(msg: Message) -> Self {
        Self(Some(msg))
    }
    fn msg(&self) -> &Message {
        // Only `settle` takes the message out, and it consumes the guard.
        self.0
            .as_ref()
            .expect("guarded message present until settled")
    }
    async fn settle(mut self, kind: AckKind) -> Result<(), String> {
        let Some(msg) = self.0.take() else {
            return Ok(());
        };
        match kind {
            AckKind::Ack => msg.double_ack().await.map_err(|e| e.to_string()),
            other => msg.ack_with(other).await.map_err(|e| e.to_string()),
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(msg) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
            });
        }
    }
}

async fn process<H: StageHandler>(
    js: &jetstream::Context,
    job: &JobId,
    handler: &H,
    guarded: Guarded,
    config: &RunnerConfig,
    counters: &StageCounters,
) {
    let stage = handler.stage();
    let delivered = guarded
        .msg()
        .info()
        .map(|i| i.delivered.max(1) as u64)
        .unwrap_or(1);
    if delivered > 1 {
        counters.redelivered.fetch_add(1, Ordering::Relaxed);
    }
    let what = format!("{} task", stage.as_str());
    let task: H::Task = match decode(&what, job, &guarded.msg().payload) {
        Ok(t) => t,
        Err(Rejected { task, reason }) => {
            dead_letter(
                js, job, handler, guarded, task, &reason, delivered, counters,
            )
            .await;
            return;
        }
    };

    let outcome = {
        // The job, stage and (for a fetch) recording become fields of every log line the
        // handler writes (JSON logs show them as `span` fields).
        let span = tracing::info_span!(
            "message",
            job = %job,
            stage = stage.as_str(),
            recording = task.recording().unwrap_or_default(),
            attempt = delivered
        );
        let work = tracing::Instrument::instrument(handler.handle(task.clone()), span);
        tokio::pin!(work);
        let mut ping = tokio::time::interval(config.ack_wait / 3);
        ping.tick().await;
        loop {
            tokio::select! {
                r = &mut work => break r,
                _ = ping.tick() => { let _ = guarded.msg().ack_with(AckKind::Progress).await; }
            }
        }
    };

    // Every arm that does not return settles the message as a dead letter, for this reason.
    let reason = match outcome {
        Ok(()) => {
            counters.processed.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = guarded.settle(AckKind::Ack).await {
                // The effect is durable and idempotent; a redelivery repeats it harmlessly.
                tracing::warn!(stage = stage.as_str(), error = %e, "ack not confirmed; the message may be redelivered");
            }
            return;
        }
        Err(StageError::Transient(reason)) if delivered >= config.max_deliveries => {
            format!("gave up after {delivered} attempts: {reason}")
        }
        Err(StageError::Transient(reason)) => {
            counters.retried.fetch_add(1, Ordering::Relaxed);
            let delay = backoff::delay(delivered as u32 - 1, config.retry_base, config.retry_max);
            tracing::info!(stage = stage.as_str(), attempt = delivered, retry_in_ms = delay.as_millis() as u64, %reason, "will retry");
            let _ = guarded.settle(AckKind::Nak(Some(delay))).await;
            return;
        }
        Err(StageError::Invalid(reason)) => reason,
        Err(StageError::NeedsCredentials(reason)) => {
            tracing::warn!(stage = stage.as_str(), %reason, "credentials refused; leaving the message for a resumed worker");
            let _ = guarded
                .settle(AckKind::Nak(Some(Duration::from_secs(60))))
                .await;
            return;
        }
    };
    dead_letter(
        js,
        job,
        handler,
        guarded,
        Some(task),
        &reason,
        delivered,
        counters,
    )
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn dead_letter<H: StageHandler>(
    js: &jetstream::Context,
    job: &JobId,
    handler: &H,
    guarded: Guarded,
    task: Option<H::Task>,
    reason: &str,
    attempts: u64,
    counters: &StageCounters,
) {
    let stage = handler.stage();
    let msg = guarded.msg();
    // JetStream does not hand the publish-time Nats-Msg-Id to consumers; derive it from
    // the task when the header is absent (a payload that did not parse has none).
    // Bounded, like the reason: whatever a publisher sent, the dead letter must fit.
    let original_id: String = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| v.as_str().to_string())
        .or_else(|| task.as_ref().map(<H::Task as JobTask>::canonical_msg_id))
        .unwrap_or_default()
        .chars()
        .take(256)
        .collect();
    let stream_seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let mut headers = HeaderMap::new();
    // One line, bounded: headers cannot carry newlines, and a parse error may quote a
    // huge field name. The same text goes to `on_dead` and the log.
    let one_line: String = reason
        .replace(['\r', '\n'], " ")
        .chars()
        .take(1000)
        .collect();
    let reason = one_line.as_str();
    headers.insert(topology::HDR_ERROR, one_line.as_str());
    headers.insert(topology::HDR_STAGE, stage.as_str());
    headers.insert(topology::HDR_ATTEMPTS, attempts.to_string().as_str());
    headers.insert(topology::HDR_ORIGINAL_SUBJECT, msg.subject.as_str());
    headers.insert(topology::HDR_ORIGINAL_MSG_ID, original_id.as_str());
    headers.insert(
        "Nats-Msg-Id",
        format!("dlq.{original_id}.{stream_seq}").as_str(),
    );
    let mut payload = msg.payload.clone();
    if payload.len() > DLQ_MAX_PAYLOAD {
        headers.insert(HDR_PAYLOAD_BYTES, payload.len().to_string().as_str());
        payload.truncate(DLQ_MAX_PAYLOAD);
    }
    let published = topology::publish_raw(js, stage.dlq_subject(job), headers, payload).await;
    if let Err(e) = published {
        tracing::warn!(stage = stage.as_str(), error = %e, "could not dead-letter; will retry");
        let _ = guarded
            .settle(AckKind::Nak(Some(Duration::from_secs(5))))
            .await;
        return;
    }
    if let Err(e) = handler.on_dead(task, reason).await {
        tracing::warn!(stage = stage.as_str(), error = %e, "could not record the dead letter; will retry");
        let _ = guarded
            .settle(AckKind::Nak(Some(Duration::from_secs(5))))
            .await;
        return;
    }
    counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(stage = stage.as_str(), %reason, "message dead-lettered");
    let _ = guarded.settle(AckKind::Term).await;
}
