//! The stage runner's delivery rules, against a real nats-server per test: ack only on
//! success, nak and retry transient errors, dead-letter with explanatory headers after
//! the delivery limit or at once for a payload that cannot parse, and never lose a
//! message whose worker died mid-way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use pipeline::JobId;
use pipeline::embedded_nats::EmbeddedNats;
use pipeline::messages::FetchTask;
use pipeline::runner::{self, RunnerConfig, StageCounters, StageError, StageHandler};
use pipeline::topology::{self, Stage};
use tokio::sync::watch;

/// Fails each recording `failures[id]` times (forever if `u32::MAX`), then succeeds.
#[derive(Default)]
struct Scripted {
    failures: HashMap<String, u32>,
    seen: Mutex<HashMap<String, u32>>,
    done: Mutex<Vec<String>>,
    dead: Mutex<Vec<(Option<String>, String)>>,
    hang: bool,
    /// How long each message takes (a transfer slower than ack_wait).
    slow: Duration,
    started: AtomicU32,
}

#[async_trait]
impl StageHandler for Scripted {
    type Task = FetchTask;
    fn stage(&self) -> Stage {
        Stage::Fetch
    }
    async fn handle(&self, task: FetchTask) -> Result<(), StageError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        if self.hang {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.slow).await;
        let n = {
            let mut seen = self.seen.lock().unwrap();
            let n = seen.entry(task.recording_id.clone()).or_default();
            *n += 1;
            *n
        };
        if n <= *self.failures.get(&task.recording_id).unwrap_or(&0) {
            return Err(StageError::Transient(format!("flaky attempt {n}")));
        }
        self.done.lock().unwrap().push(task.recording_id);
        Ok(())
    }
    async fn on_dead(&self, task: Option<FetchTask>, reason: &str) -> Result<(), StageError> {
        self.dead
            .lock()
            .unwrap()
            .push((task.map(|t| t.recording_id), reason.to_string()));
        Ok(())
    }
}

struct Env {
    _dir: tempfile::TempDir,
    _nats: EmbeddedNats,
    js: jetstream::Context,
    job: JobId,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let nats = EmbeddedNats::start(dir.path())
        .await
        .expect("nats-server (scripts/test installs it)");
    let client = pipeline::config::connect_nats(&nats.url(), None)
        .await
        .unwrap();
    let js = jetstream::new(client);
    topology::ensure_streams(&js).await.unwrap();
    Env {
        _dir: dir,
        _nats: nats,
        js,
        job: JobId::new(),
    }
}

fn config() -> RunnerConfig {
    RunnerConfig {
        concurrency: 4,
        ack_wait: Duration::from_secs(2),
        max_deliveries: 3,
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(100),
    }
}

async fn publish(env: &Env, id: &str) {
    let task = FetchTask {
        job: env.job.clone(),
        recording_id: id.into(),
        recorded_at: None,
    };
    topology::publish_json(
        &env.js,
        Stage::Fetch.subject(&env.job),
        &topology::msg_id(&env.job, "fetch", &[id]),
        &task,
    )
    .await
    .unwrap();
}

async fn publish_bytes(env: &Env, id: &str, body: &'static [u8]) {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", id);
    topology::publish_raw(&env.js, Stage::Fetch.subject(&env.job), h, body.into())
        .await
        .unwrap();
}

async fn run_until<F: Fn(&Scripted) -> bool>(
    env: &Env,
    handler: Arc<Scripted>,
    until: F,
) -> Arc<StageCounters> {
    run_until_with(env, handler, config(), Duration::from_secs(30), until).await
}

async fn run_until_with<F: Fn(&Scripted) -> bool>(
    env: &Env,
    handler: Arc<Scripted>,
    config: RunnerConfig,
    within: Duration,
    until: F,
) -> Arc<StageCounters> {
    let (tx, rx) = watch::channel(false);
    let counters = Arc::new(StageCounters::default());
    let task = tokio::spawn(runner::run(
        env.js.clone(),
        env.job.clone(),
        handler.clone(),
        config,
        counters.clone(),
        rx,
    ));
    tokio::time::timeout(within, async {
        while !until(&handler) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("condition not reached");
    // Let acks settle before stopping.
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    counters
}

async fn work_left(env: &Env) -> u64 {
    env.js
        .get_stream(topology::WORK_STREAM)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state
        .messages
}

async fn dead_letters(env: &Env) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let stream = env.js.get_stream(topology::DLQ_STREAM).await.unwrap();
    let info = stream.clone().get_info().await.unwrap();
    let mut out = vec![];
    if info.state.messages == 0 {
        return out;
    }
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

#[tokio::test]
async fn success_is_acked_and_transient_errors_are_retried() {
    let env = env().await;
    let handler = Arc::new(Scripted {
        failures: HashMap::from([("B".into(), 2)]),
        ..Default::default()
    });
    for id in ["A", "B", "C"] {
        publish(&env, id).await;
    }
    let counters = run_until(&env, handler.clone(), |h| h.done.lock().unwrap().len() == 3).await;
    assert_eq!(counters.retried.load(Ordering::SeqCst), 2);
    assert_eq!(counters.processed.load(Ordering::SeqCst), 3);
    assert_eq!(
        work_left(&env).await,
        0,
        "acked messages are gone from the work queue"
    );
    assert!(dead_letters(&env).await.is_empty());
}

/// Transfers slower than ack_wait, several at once: the runner pulls only what a free
/// slot can start, so no message waits un-acked in the client's buffer past ack_wait.
/// Without a failure, nothing is delivered twice and no delivery count passes 1.
#[tokio::test]
async fn slow_transfers_are_not_redelivered_while_queued() {
    let env = env().await;
    let handler = Arc::new(Scripted {
        slow: Duration::from_millis(2500),
        ..Default::default()
    });
    let ids: Vec<String> = (0..8).map(|i| format!("R{i}")).collect();
    for id in &ids {
        publish(&env, id).await;
    }
    let config = RunnerConfig {
        concurrency: 3,
        ack_wait: Duration::from_secs(1),
        ..config()
    };
    let counters = run_until_with(
        &env,
        handler.clone(),
        config,
        Duration::from_secs(60),
        |h| h.done.lock().unwrap().len() == 8,
    )
    .await;
    let seen = handler.seen.lock().unwrap().clone();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "handled more than once without a failure: {twice:?}"
    );
    assert_eq!(seen.len(), 8);
    assert_eq!(counters.retried.load(Ordering::SeqCst), 0);
    let mut consumer = env
        .js
        .get_stream(topology::WORK_STREAM)
        .await
        .unwrap()
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
            &Stage::Fetch.consumer_name(&env.job),
        )
        .await
        .unwrap();
    let info = consumer.info().await.unwrap().clone();
    assert_eq!(
        info.num_redelivered, 0,
        "deliveries counted without a failure"
    );
    assert_eq!(info.delivered.consumer_sequence, 8, "{info:?}");
    assert_eq!(work_left(&env).await, 0);
}

#[tokio::test]
async fn exhausted_messages_move_to_the_dlq_with_their_story() {
    let env = env().await;
    let handler = Arc::new(Scripted {
        failures: HashMap::from([("X".into(), u32::MAX)]),
        ..Default::default()
    });
    publish(&env, "X").await;
    run_until(&env, handler.clone(), |h| {
        !h.dead.lock().unwrap().is_empty()
    })
    .await;
    let dead = handler.dead.lock().unwrap().clone();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0.as_deref(), Some("X"));
    assert_eq!(
        *handler.seen.lock().unwrap().get("X").unwrap(),
        3,
        "delivered exactly max_deliveries times"
    );
    let dlq = dead_letters(&env).await;
    assert_eq!(dlq.len(), 1);
    let m = &dlq[0];
    assert_eq!(m.subject.as_str(), Stage::Fetch.dlq_subject(&env.job));
    let h = &m.headers;
    assert_eq!(h.get(topology::HDR_STAGE).unwrap().as_str(), "fetch");
    assert_eq!(h.get(topology::HDR_ATTEMPTS).unwrap().as_str(), "3");
    assert!(
        h.get(topology::HDR_ERROR)
            .unwrap()
            .as_str()
            .contains("flaky attempt 3")
    );
    assert_eq!(
        h.get(topology::HDR_ORIGINAL_SUBJECT).unwrap().as_str(),
        Stage::Fetch.subject(&env.job)
    );
    assert_eq!(
        h.get(topology::HDR_ORIGINAL_MSG_ID).unwrap().as_str(),
        topology::msg_id(&env.job, "fetch", &["X"])
    );
    let original: FetchTask = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(
        original.recording_id, "X",
        "the payload is kept byte for byte for replay"
    );
    assert_eq!(work_left(&env).await, 0);
}

#[tokio::test]
async fn malformed_payloads_are_dead_lettered_at_once_with_the_reason() {
    let env = env().await;
    let handler = Arc::new(Scripted::default());
    publish_bytes(&env, "bad-1", b"{not json").await;
    publish_bytes(&env, "bad-2", br#"{"job":"0123","recording_id":"A"}"#).await;
    publish_bytes(
        &env,
        "bad-3",
        br#"{"job":"0123456789abcdef0123456789abcdef","recording_id":"A","extra":1}"#,
    )
    .await;
    run_until(&env, handler.clone(), |h| h.dead.lock().unwrap().len() == 3).await;
    assert_eq!(
        handler.started.load(Ordering::SeqCst),
        0,
        "the handler never saw them"
    );
    let dlq = dead_letters(&env).await;
    assert_eq!(dlq.len(), 3);
    for m in &dlq {
        assert_eq!(m.headers.get(topology::HDR_ATTEMPTS).unwrap().as_str(), "1");
        assert!(
            m.headers
                .get(topology::HDR_ERROR)
                .unwrap()
                .as_str()
                .contains("not a valid fetch task")
        );
    }
}

#[tokio::test]
async fn a_worker_that_dies_mid_message_loses_nothing() {
    let env = env().await;
    publish(&env, "Z").await;
    let hanging = Arc::new(Scripted {
        hang: true,
        ..Default::default()
    });
    let (_tx, rx) = watch::channel(false);
    let task = tokio::spawn(runner::run(
        env.js.clone(),
        env.job.clone(),
        hanging.clone(),
        config(),
        Default::default(),
        rx,
    ));
    tokio::time::timeout(Duration::from_secs(10), async {
        while hanging.started.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    task.abort(); // the worker dies while the message is in flight
    let _ = task.await;
    assert_eq!(work_left(&env).await, 1, "not acked by the dead worker");
    let healthy = Arc::new(Scripted::default());
    run_until(&env, healthy.clone(), |h| h.done.lock().unwrap().len() == 1).await;
    assert_eq!(work_left(&env).await, 0);
}
