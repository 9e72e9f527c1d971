//! Bad input, table-driven. Every case must end in a clear error or a safe result:
//! - malformed stage payloads (every message type in `pipeline::messages`: invalid JSON,
//!   wrong types, missing and unknown fields, another job's id, huge payloads) are
//!   dead-lettered by a real runner on a real nats-server, with the parse or validation
//!   error as `Portshift-Error` (the record types, which no stage consumes, go through
//!   the runner's own `decode`);
//! - malformed Chorus answers (wrong types, missing fields, huge pages, invalid JSON or
//!   UTF-8, wrong content types, a repeated continuation key, duplicate ids, ids no URL
//!   can carry) give `ChorusError`s that say what is wrong, or a page the pipeline can
//!   take;
//! - hostile recording ids and file names (`../`, newlines, backslashes, NUL, very long,
//!   non-UTF-8, look-alike letters) give keys inside the export prefix, through
//!   `pipeline::keys` and through real exports from the simulator to a local folder and
//!   to S3, whose manifests the real `sha256sum -c` accepts.
//!
//! Each test prints how many inputs it tried (`bad inputs tried: ...`).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use common::*;
use pipeline::embedded_nats::EmbeddedNats;
use pipeline::messages::{FetchTask, HashRecord, ListTask, ManifestTask, NotifyTask, UploadRecord};
use pipeline::runner::{self, JobTask, RunnerConfig, StageCounters, StageError, StageHandler};
use pipeline::topology::{self, Stage};
use pipeline::{ExportKinds, FileKind, JobId, JobStatus, keys};
use serde_json::{Value, json};
use stages::chorus::{ChorusClient, ChorusConfig, ChorusError, EngagementFilter};
use tokio::sync::watch;

// ---------------------------------------------------------------------------------
// Stage payloads
// ---------------------------------------------------------------------------------

/// One malformed payload and what its dead letter's `Portshift-Error` must say.
struct Case {
    name: String,
    payload: Vec<u8>,
    /// Every one of these must appear in the reason.
    expect: Vec<String>,
}

/// A message type under test: its valid form, its required fields, its label in
/// reasons, and the cases only it has.
struct MessageType {
    label: &'static str,
    valid: Value,
    required: &'static [&'static str],
    extra: Vec<(String, Value, &'static str)>,
}

fn message_types(job: &JobId) -> Vec<MessageType> {
    let j = job.as_str();
    let long = |n: usize| "r".repeat(n);
    vec![
        MessageType {
            label: "list task",
            valid: json!({"job": j, "page": 0}),
            required: &["job", "page"],
            extra: vec![
                (
                    "page -1".into(),
                    json!({"job": j, "page": -1}),
                    "invalid value",
                ),
                (
                    "page 2^32".into(),
                    json!({"job": j, "page": 4_294_967_296u64}),
                    "invalid value",
                ),
                (
                    "page 1.5".into(),
                    json!({"job": j, "page": 1.5}),
                    "invalid type",
                ),
                (
                    "page as text".into(),
                    json!({"job": j, "page": "0"}),
                    "invalid type",
                ),
                (
                    "continuation_key number".into(),
                    json!({"job": j, "page": 1, "continuation_key": 7}),
                    "invalid type",
                ),
                (
                    "continuation_key 4097 bytes".into(),
                    json!({"job": j, "page": 1, "continuation_key": long(4097)}),
                    "continuation_key: is 4097 bytes long",
                ),
            ],
        },
        MessageType {
            label: "fetch task",
            valid: json!({"job": j, "recording_id": "A1", "recorded_at": 1_700_000_000}),
            required: &["job", "recording_id"],
            extra: vec![
                (
                    "empty recording_id".into(),
                    json!({"job": j, "recording_id": ""}),
                    "recording_id: must not be empty",
                ),
                (
                    "recording_id 1025 bytes".into(),
                    json!({"job": j, "recording_id": long(1025)}),
                    "recording_id: is 1025 bytes long",
                ),
                (
                    "recording_id 900 KB".into(),
                    json!({"job": j, "recording_id": long(900_000)}),
                    "recording_id: is 900000 bytes long",
                ),
                (
                    "recorded_at 1.5".into(),
                    json!({"job": j, "recording_id": "A", "recorded_at": 1.5}),
                    "invalid type",
                ),
                (
                    "recorded_at past i64".into(),
                    json!({"job": j, "recording_id": "A", "recorded_at": 9_223_372_036_854_775_808u64}),
                    "invalid value",
                ),
                (
                    "recorded_at as a date".into(),
                    json!({"job": j, "recording_id": "A", "recorded_at": "2024-01-01"}),
                    "invalid type",
                ),
            ],
        },
        MessageType {
            label: "manifest task",
            valid: json!({"job": j}),
            required: &["job"],
            extra: vec![(
                "500 KB unknown field name".into(),
                json!({"job": j, long(500_000): 1}),
                "unknown field",
            )],
        },
        MessageType {
            label: "notify task",
            valid: json!({"job": j}),
            required: &["job"],
            extra: vec![(
                "job twice in an array".into(),
                json!({"job": [j, j]}),
                "invalid type",
            )],
        },
        MessageType {
            label: "hash record",
            valid: json!({"job": j, "worker": WORKER, "seq": 1, "files": 3, "bytes": 0}),
            required: &["job", "worker", "seq", "files", "bytes"],
            extra: record_cases(
                json!({"job": j, "worker": WORKER, "seq": 1, "files": 3, "bytes": 0}),
            ),
        },
        MessageType {
            label: "upload record",
            valid: json!({"job": j, "worker": WORKER, "seq": 1, "files": 3, "bytes": 9, "elapsed_ms": 2}),
            required: &["job", "worker", "seq", "files", "bytes", "elapsed_ms"],
            extra: record_cases(
                json!({"job": j, "worker": WORKER, "seq": 1, "files": 3, "bytes": 9, "elapsed_ms": 2}),
            ),
        },
    ]
}

/// A worker id as portshift makes them.
const WORKER: &str = "5f0c2b3a9d8e4f6a8b7c6d5e4f3a2b1c";

/// The cases both records share (they differ only in `elapsed_ms`): the worker id goes
/// into the msg-id, so it must be a plain token; an empty interval is never published.
fn record_cases(valid: Value) -> Vec<(String, Value, &'static str)> {
    let with = |field: &str, value: Value| {
        let mut v = valid.clone();
        v[field] = value;
        v
    };
    let mut cases: Vec<(String, Value, &'static str)> = ["", "a.b", "a b", "a*", "a>", "é"]
        .into_iter()
        .map(|w| {
            (
                format!("worker {w:?}"),
                with("worker", json!(w)),
                "worker: must be 1 to 64",
            )
        })
        .collect();
    cases.extend([
        (
            "worker 65 bytes".to_string(),
            with("worker", json!("w".repeat(65))),
            "worker: must be 1 to 64",
        ),
        (
            "seq 0".to_string(),
            with("seq", json!(0)),
            "seq: must be at least 1",
        ),
        (
            "files 0".to_string(),
            with("files", json!(0)),
            "files: must be at least 1",
        ),
        (
            "negative bytes".to_string(),
            with("bytes", json!(-1)),
            "invalid value",
        ),
        (
            "bytes past u64".to_string(),
            with("bytes", json!(18_446_744_073_709_551_616f64)),
            "invalid type",
        ),
        (
            "unknown field sha256".to_string(),
            with("sha256", json!("00")),
            "unknown field",
        ),
    ]);
    cases
}

/// Values of another JSON type than `value` (a float and a negative number count as
/// other types for an unsigned integer field; `recorded_at` is signed).
fn wrong_types(field: &str, value: &Value) -> Vec<(&'static str, Value)> {
    let candidates = [
        ("null", Value::Null),
        ("bool", json!(true)),
        ("float", json!(1.5)),
        ("negative", json!(-1)),
        ("string", json!("x")),
        ("array", json!([])),
        ("object", json!({})),
    ];
    candidates
        .into_iter()
        .filter(|(name, c)| match *name {
            "negative" => !value.is_number() || (value.is_u64() && field != "recorded_at"),
            "float" => !value.is_f64(),
            _ => std::mem::discriminant(value) != std::mem::discriminant(c),
        })
        .collect()
}

/// The table for one message type: the generic cases every type shares, then its own.
fn cases_for(t: &MessageType, job: &JobId) -> Vec<Case> {
    let label = t.label;
    let prefix = format!("payload is not a valid {label}: ");
    let with = |name: String, payload: Vec<u8>, more: &[&str]| {
        let mut expect = vec![prefix.clone()];
        expect.extend(more.iter().map(|s| s.to_string()));
        Case {
            name,
            payload,
            expect,
        }
    };
    let valid = t.valid.to_string();
    let obj = t.valid.as_object().unwrap().clone();
    let mut cases = vec![
        with(
            "not JSON".into(),
            b"{not json".to_vec(),
            &["key must be a string"],
        ),
        with("empty".into(), Vec::new(), &["EOF"]),
        with("null".into(), b"null".to_vec(), &["invalid type: null"]),
        with("array".into(), b"[]".to_vec(), &["invalid length 0"]),
        with(
            "string".into(),
            br#""task""#.to_vec(),
            &["invalid type: string"],
        ),
        with("number".into(), b"42".to_vec(), &["invalid type: integer"]),
        with(
            "truncated".into(),
            valid.as_bytes()[..valid.len() / 2].to_vec(),
            &["EOF"],
        ),
        with(
            "trailing garbage".into(),
            format!("{valid} x").into_bytes(),
            &["trailing characters"],
        ),
        with(
            "two documents".into(),
            format!("{valid}{valid}").into_bytes(),
            &["trailing characters"],
        ),
        with(
            "byte order mark".into(),
            [b"\xEF\xBB\xBF".as_slice(), valid.as_bytes()].concat(),
            &["expected value"],
        ),
        with(
            "invalid UTF-8".into(),
            format!(r#"{{"job":"{}","#, job)
                .into_bytes()
                .into_iter()
                .chain(b"\"\xff\xfe\":1}".iter().copied())
                .collect(),
            &["invalid unicode"],
        ),
        with(
            "lone surrogate".into(),
            format!(r#"{{"job":"{job}","\ud800":1}}"#).into_bytes(),
            &["escape"],
        ),
        with(
            "nested 100k deep".into(),
            "[".repeat(100_000).into_bytes(),
            // Refused at the first level (a struct wants its fields), never recursed into.
            &[],
        ),
        with(
            "duplicate job field".into(),
            format!(r#"{{"job":"{job}",{}"#, &valid[1..]).into_bytes(),
            &["duplicate field `job`"],
        ),
    ];
    {
        let mut o = obj.clone();
        o.insert("zzz_unknown".into(), json!(1));
        cases.push(with(
            "unknown field".into(),
            Value::Object(o).to_string().into_bytes(),
            &["unknown field `zzz_unknown`"],
        ));
    }
    for field in t.required {
        let mut o = obj.clone();
        o.remove(*field);
        cases.push(with(
            format!("missing {field}"),
            Value::Object(o).to_string().into_bytes(),
            &[&format!("missing field `{field}`")],
        ));
    }
    for (field, value) in &obj {
        for (kind, wrong) in wrong_types(field, value) {
            if wrong.is_null() && !t.required.contains(&field.as_str()) {
                continue; // null is how an optional field is left out
            }
            let mut o = obj.clone();
            o.insert(field.clone(), wrong);
            cases.push(with(
                format!("{field} as {kind}"),
                Value::Object(o).to_string().into_bytes(),
                &[],
            ));
        }
    }
    for bad_job in [
        "0123",
        "0123456789ABCDEF0123456789ABCDEF",
        "0123456789abcdef0123456789abcdef0",
        "../../0123456789abcdef0123456789ab",
        "",
        "0123456789abcdef\u{0}123456789abcde",
    ] {
        let mut o = obj.clone();
        o.insert("job".into(), json!(bad_job));
        cases.push(with(
            format!("job {bad_job:?}"),
            Value::Object(o).to_string().into_bytes(),
            &["invalid job id"],
        ));
    }
    for (name, payload, want) in &t.extra {
        cases.push(with(
            name.clone(),
            payload.to_string().into_bytes(),
            &[want],
        ));
    }
    // Another job's valid task on this job's subject.
    let other = JobId::new();
    let mut o = obj.clone();
    o.insert("job".into(), json!(other.as_str()));
    cases.push(Case {
        name: "another job's id".into(),
        payload: Value::Object(o).to_string().into_bytes(),
        expect: vec![format!(
            "payload names job {other} but arrived on the subject of job {job}"
        )],
    });
    // Unique payloads only: the DLQ is matched back to cases by payload.
    let mut seen = HashSet::new();
    cases.retain(|c| seen.insert(c.payload.clone()));
    cases
}

/// Records what the runner hands it: handled tasks and dead letters.
struct Recorder<T> {
    stage: Stage,
    handled: Mutex<Vec<T>>,
    dead: Mutex<Vec<(bool, String)>>,
}

#[async_trait]
impl<T: JobTask> StageHandler for Recorder<T> {
    type Task = T;
    fn stage(&self) -> Stage {
        self.stage
    }
    async fn handle(&self, task: T) -> Result<(), StageError> {
        self.handled.lock().unwrap().push(task);
        Ok(())
    }
    async fn on_dead(&self, task: Option<T>, reason: &str) -> Result<(), StageError> {
        self.dead
            .lock()
            .unwrap()
            .push((task.is_some(), reason.to_string()));
        Ok(())
    }
}

struct Nats {
    _dir: tempfile::TempDir,
    _server: EmbeddedNats,
    client: async_nats::Client,
    js: jetstream::Context,
}

async fn nats() -> Nats {
    let dir = tempfile::tempdir().unwrap();
    let server = EmbeddedNats::start(dir.path())
        .await
        .expect("nats-server (scripts/test installs it)");
    let client = pipeline::config::connect_nats(&server.url(), None)
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    topology::ensure_streams(&js).await.unwrap();
    Nats {
        _dir: dir,
        _server: server,
        client,
        js,
    }
}

async fn publish(js: &jetstream::Context, subject: String, id: &str, payload: Vec<u8>) {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", id);
    topology::publish_raw(js, subject, h, payload.into())
        .await
        .unwrap();
}

/// Dead letters on `subject`: payload → (Portshift-Error, Portshift-Payload-Bytes).
async fn dead_letters(
    js: &jetstream::Context,
    subject: &str,
) -> Vec<(Vec<u8>, String, Option<String>)> {
    let stream = js.get_stream(topology::DLQ_STREAM).await.unwrap();
    let info = stream.clone().get_info().await.unwrap();
    let mut out = vec![];
    if info.state.messages == 0 {
        return out;
    }
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        if m.subject.as_str() != subject {
            continue;
        }
        let error = m
            .headers
            .get(topology::HDR_ERROR)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        let size = m
            .headers
            .get(runner::HDR_PAYLOAD_BYTES)
            .map(|v| v.as_str().to_string());
        out.push((m.payload.to_vec(), error, size));
    }
    out
}

fn check_reason(stage: &str, case: &Case, reason: &str) {
    for want in &case.expect {
        assert!(
            reason.contains(want.as_str()),
            "{stage} / {}: the reason {reason:?} does not say {want:?}",
            case.name
        );
    }
    assert!(
        !reason.contains('\n') && reason.chars().count() <= 1000,
        "{stage} / {}: the reason must be one bounded line",
        case.name
    );
}

/// Publishes every case (then one valid task) on the stage's subject, runs a real
/// runner, and checks each case was dead-lettered at once with the expected reason
/// while the valid task still reached the handler.
async fn run_stage<T: JobTask + std::fmt::Debug>(
    n: &Nats,
    job: &JobId,
    stage: Stage,
    t: &MessageType,
) -> usize {
    let cases = cases_for(t, job);
    for (i, case) in cases.iter().enumerate() {
        publish(
            &n.js,
            stage.subject(job),
            &format!("{}-bad-{i}", stage.as_str()),
            case.payload.clone(),
        )
        .await;
    }
    publish(
        &n.js,
        stage.subject(job),
        &format!("{}-good", stage.as_str()),
        t.valid.to_string().into_bytes(),
    )
    .await;

    let handler = Arc::new(Recorder::<T> {
        stage,
        handled: Mutex::default(),
        dead: Mutex::default(),
    });
    let (tx, rx) = watch::channel(false);
    let counters = Arc::new(StageCounters::default());
    let config = RunnerConfig {
        concurrency: 4,
        ack_wait: Duration::from_secs(5),
        max_deliveries: 3,
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(100),
    };
    let task = tokio::spawn(runner::run(
        n.js.clone(),
        job.clone(),
        handler.clone(),
        config,
        counters.clone(),
        rx,
    ));
    let want = cases.len();
    tokio::time::timeout(Duration::from_secs(60), async {
        while handler.dead.lock().unwrap().len() < want
            || handler.handled.lock().unwrap().is_empty()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{}: {} of {want} dead-lettered, {} handled",
            t.label,
            handler.dead.lock().unwrap().len(),
            handler.handled.lock().unwrap().len()
        )
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();

    assert_eq!(handler.handled.lock().unwrap().len(), 1, "{}", t.label);
    assert_eq!(
        counters
            .dead_lettered
            .load(std::sync::atomic::Ordering::SeqCst),
        want as u64
    );
    assert_eq!(
        counters.retried.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "never retried"
    );
    let work =
        n.js.get_stream(topology::WORK_STREAM)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap();
    assert_eq!(
        work.state.messages, 0,
        "{}: nothing left in the work queue",
        t.label
    );

    let dlq = dead_letters(&n.js, &stage.dlq_subject(job)).await;
    assert_eq!(dlq.len(), want, "{}: one dead letter per case", t.label);
    for case in &cases {
        let found = dlq.iter().find(|(payload, _, size)| match size {
            None => *payload == case.payload,
            Some(size) => {
                case.payload.len() > runner::DLQ_MAX_PAYLOAD
                    && *size == case.payload.len().to_string()
                    && payload.len() == runner::DLQ_MAX_PAYLOAD
                    && case.payload.starts_with(payload)
            }
        });
        let (_, reason, _) =
            found.unwrap_or_else(|| panic!("{} / {}: no dead letter", t.label, case.name));
        check_reason(t.label, case, reason);
    }
    want
}

/// The record types no stage consumes: the runner's `decode` must refuse each case
/// with the same reason it would dead-letter it with.
fn decode_all<T: JobTask + std::fmt::Debug>(job: &JobId, t: &MessageType) -> usize {
    let cases = cases_for(t, job);
    for case in &cases {
        let err = runner::decode::<T>(t.label, job, &case.payload)
            .expect_err(&format!("{} / {} was accepted", t.label, case.name));
        check_reason(
            t.label,
            case,
            &err.reason
                .replace(['\r', '\n'], " ")
                .chars()
                .take(1000)
                .collect::<String>(),
        );
    }
    runner::decode::<T>(t.label, job, t.valid.to_string().as_bytes()).expect("the valid form");
    cases.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_stage_payloads_are_dead_lettered_with_the_reason() {
    let n = nats().await;
    let job = JobId::new();
    let types = message_types(&job);
    let mut tried = BTreeMap::new();
    tried.insert(
        "list",
        run_stage::<ListTask>(&n, &job, Stage::List, &types[0]).await,
    );
    tried.insert(
        "fetch",
        run_stage::<FetchTask>(&n, &job, Stage::Fetch, &types[1]).await,
    );
    tried.insert(
        "manifest",
        run_stage::<ManifestTask>(&n, &job, Stage::Manifest, &types[2]).await,
    );
    tried.insert(
        "notify",
        run_stage::<NotifyTask>(&n, &job, Stage::Notify, &types[3]).await,
    );
    tried.insert("hash", decode_all::<HashRecord>(&job, &types[4]));
    tried.insert("upload", decode_all::<UploadRecord>(&job, &types[5]));

    // Larger than the server's max_payload (1 MiB): refused at publish, with a reason.
    let huge = json!({"job": job.as_str(), "recording_id": "r".repeat(2 << 20)}).to_string();
    let err = topology::publish_raw(
        &n.js,
        Stage::Fetch.subject(&job),
        async_nats::HeaderMap::new(),
        huge.into(),
    )
    .await
    .expect_err("a 2 MiB payload cannot be published");
    assert!(
        matches!(err, topology::TopologyError::TooLarge { .. })
            && err.to_string().contains("bytes NATS accepts by default"),
        "{err}"
    );
    tried.insert("over max_payload", 1);
    assert!(
        n.client.server_info().max_payload <= 1 << 20,
        "the test assumes the default max_payload"
    );

    let total: usize = tried.values().sum();
    eprintln!("bad inputs tried: stage payloads {total} {tried:?}");
}

// ---------------------------------------------------------------------------------
// Chorus answers
// ---------------------------------------------------------------------------------

#[derive(Clone)]
struct Answer {
    status: u16,
    content_type: Option<&'static str>,
    body: bytes::Bytes,
}

fn json_answer(body: impl Into<bytes::Bytes>) -> Answer {
    Answer {
        status: 200,
        content_type: Some("application/json"),
        body: body.into(),
    }
}

#[derive(Clone, Default)]
struct Canned {
    answer: Arc<Mutex<Option<Answer>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

async fn canned(State(c): State<Canned>, request: axum::extract::Request) -> Response {
    c.paths
        .lock()
        .unwrap()
        .push(request.uri().path().to_string());
    let answer = c.answer.lock().unwrap().clone().expect("an answer is set");
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap();
    if let Some(ct) = answer.content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    response
}

async fn start_canned() -> (Canned, url::Url) {
    let c = Canned::default();
    let router = Router::new().fallback(get(canned)).with_state(c.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = url::Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (c, url)
}

enum Call {
    List,
    Conversation,
    Transcript,
}

/// What a case must give: a `Malformed` error whose message has this text, or another
/// outcome checked by the closure.
enum Expect {
    Malformed(&'static str),
    Check(Box<dyn Fn(&Outcome)>),
}

/// What a call gave: the number of engagements (1 for a conversation), or the error.
type Outcome = Result<usize, ChorusError>;

fn page_with(engagement: Value) -> String {
    json!({"continuation_key": "k", "engagements": [engagement]}).to_string()
}

fn chorus_cases() -> Vec<(String, Call, Answer, Expect)> {
    use Expect::Malformed as M;
    let mut cases: Vec<(String, Call, Answer, Expect)> = vec![];
    let mut list = |name: &str, answer: Answer, expect: Expect| {
        cases.push((format!("listing: {name}"), Call::List, answer, expect));
    };
    list("empty body", json_answer(""), M("not JSON"));
    list(
        "null",
        json_answer("null"),
        M("expected a JSON object, found null"),
    );
    list("a string", json_answer(r#""page""#), M("found a string"));
    list(
        "invalid UTF-8",
        json_answer(&b"{\"continuation_key\":\"\xff\xfe\",\"engagements\":[]}"[..]),
        M("not JSON"),
    );
    list(
        "lone surrogate",
        json_answer(r#"{"engagements":[{"engagement_id":"\ud800"}]}"#),
        M("not JSON"),
    );
    list(
        "100k deep",
        json_answer("[".repeat(100_000)),
        M("recursion limit"),
    );
    for (what, v) in [
        ("number", json!(5)),
        ("array", json!([])),
        ("object", json!({})),
        ("bool", json!(true)),
    ] {
        list(
            &format!("continuation_key as {what}"),
            json_answer(json!({"continuation_key": v, "engagements": []}).to_string()),
            M("continuation_key: expected a string"),
        );
    }
    for (what, v) in [
        ("object", json!({})),
        ("string", json!("x")),
        ("number", json!(1)),
    ] {
        list(
            &format!("engagements as {what}"),
            json_answer(json!({"engagements": v}).to_string()),
            M("engagements: expected an array"),
        );
    }
    for (what, v) in [
        ("string", json!("A1")),
        ("number", json!(1)),
        ("null", Value::Null),
        ("array", json!([])),
    ] {
        list(
            &format!("an engagement that is a {what}"),
            json_answer(json!({"engagements": [v]}).to_string()),
            M("engagements[0]: expected an object"),
        );
    }
    list(
        "engagement_id missing",
        json_answer(page_with(json!({"subject": "x"}))),
        M("engagements[0]: missing field `engagement_id`"),
    );
    for (what, v) in [
        ("null", Value::Null),
        ("number", json!(17)),
        ("array", json!(["A"])),
        ("object", json!({})),
    ] {
        list(
            &format!("engagement_id as {what}"),
            json_answer(page_with(json!({"engagement_id": v}))),
            M("engagements[0].engagement_id: expected a string"),
        );
    }
    for (field, v) in [
        ("date_time", json!("2024-01-01")),
        ("date_time", json!({})),
        ("duration", json!("long")),
        ("subject", json!(5)),
        ("processing_state", json!(false)),
        ("engagement_type", json!(["meeting"])),
        ("user_email", json!(1)),
        ("participants", json!("everyone")),
        ("participants", json!({"name": "x"})),
    ] {
        list(
            &format!("{field} as {v}"),
            json_answer(page_with(json!({"engagement_id": "A1", field: v}))),
            M(Box::leak(
                format!("engagements[0].{field}").into_boxed_str(),
            )),
        );
    }
    list(
        "a participant that is a string",
        json_answer(page_with(
            json!({"engagement_id": "A1", "participants": ["x"]}),
        )),
        M("engagements[0].participants[0]"),
    );
    list(
        "a participant's name as a number",
        json_answer(page_with(
            json!({"engagement_id": "A1", "participants": [{"name": 5}]}),
        )),
        M("engagements[0].participants[0].name"),
    );
    for ct in [
        "text/plain",
        "application/xml",
        "application/octet-stream",
        "text/html; charset=utf-8",
        "application/jsonp",
    ] {
        list(
            &format!("content type {ct}"),
            Answer {
                status: 200,
                content_type: Some(ct),
                body: r#"{"engagements":[]}"#.into(),
            },
            M("expected JSON, got content type"),
        );
    }
    list(
        "no content type",
        Answer {
            status: 200,
            content_type: None,
            body: r#"{"engagements":[]}"#.into(),
        },
        M("no content type"),
    );
    list(
        "33 MiB of whitespace",
        json_answer(vec![b' '; 33 << 20]),
        M("larger than 32 MiB"),
    );
    // A huge page within the limit is an answer, not an error.
    let many: Vec<Value> = (0..200_000)
        .map(|i| json!({"engagement_id": format!("ID{i:08}")}))
        .collect();
    list(
        "a page of 200 000 engagements",
        json_answer(json!({"continuation_key": "k", "engagements": many}).to_string()),
        Expect::Check(Box::new(|r| assert_eq!(r.as_ref().ok(), Some(&200_000)))),
    );
    list(
        "a 20 MiB subject",
        json_answer(page_with(
            json!({"engagement_id": "A1", "subject": "s".repeat(20 << 20)}),
        )),
        Expect::Check(Box::new(|r| assert_eq!(r.as_ref().ok(), Some(&1)))),
    );
    list(
        "duplicate ids in one page",
        json_answer(
            json!({"continuation_key": "k", "engagements": [
                {"engagement_id": "A1"}, {"engagement_id": "A1"}, {"engagement_id": "B2"}
            ]})
            .to_string(),
        ),
        // Passed on as sent; the store lists each id once (checked below).
        Expect::Check(Box::new(|r| assert_eq!(r.as_ref().ok(), Some(&3)))),
    );
    list(
        "an error answer of 10 MiB",
        Answer {
            status: 400,
            content_type: Some("text/plain"),
            body: vec![b'x'; 10 << 20].into(),
        },
        Expect::Check(Box::new(|r| match r {
            Err(ChorusError::Rejected {
                status: 400,
                detail,
            }) => {
                assert!(
                    detail.len() < 300,
                    "the detail is bounded: {} bytes",
                    detail.len()
                )
            }
            other => panic!("expected Rejected, got {other:?}"),
        })),
    );
    list(
        "500 with an HTML body",
        Answer {
            status: 500,
            content_type: Some("text/html"),
            body: "<html>oops</html>".into(),
        },
        Expect::Check(Box::new(|r| {
            assert!(
                matches!(r, Err(ChorusError::Unavailable { attempts: 2, .. })),
                "{r:?}"
            )
        })),
    );

    let vnd = |body: &'static [u8]| Answer {
        status: 200,
        content_type: Some("application/vnd.api+json"),
        body: body.into(),
    };
    for (name, body, want) in [
        ("not JSON", &b"{"[..], "not JSON"),
        ("an array", b"[]", "found an array"),
        ("no data", br#"{"meta":{}}"#, "no `data` member"),
        (
            "data null",
            br#"{"data":null}"#,
            "`data` must be an object, found null",
        ),
        (
            "data an array",
            br#"{"data":[]}"#,
            "`data` must be an object",
        ),
        (
            "data.id missing",
            br#"{"data":{"attributes":{}}}"#,
            "`data` has no `id`",
        ),
        (
            "data.id a number",
            br#"{"data":{"id":1,"attributes":{}}}"#,
            "`data.id` must be a string",
        ),
        (
            "data.id another",
            br#"{"data":{"id":"B2","attributes":{}}}"#,
            "names a different conversation",
        ),
        (
            "attributes missing",
            br#"{"data":{"id":"A1"}}"#,
            "`data` has no `attributes`",
        ),
        (
            "attributes a string",
            br#"{"data":{"id":"A1","attributes":"x"}}"#,
            "`data.attributes` must be an object",
        ),
        (
            "invalid UTF-8",
            b"{\"data\":{\"id\":\"A1\",\"attributes\":{\"name\":\"\xff\"}}}",
            "not JSON",
        ),
    ] {
        cases.push((
            format!("conversation: {name}"),
            Call::Conversation,
            vnd(body),
            M(want),
        ));
    }
    cases.push((
        "conversation: content type text/html".into(),
        Call::Conversation,
        Answer {
            status: 200,
            content_type: Some("text/html"),
            body: r#"{"data":{"id":"A1","attributes":{}}}"#.into(),
        },
        M("expected JSON, got content type text/html"),
    ));
    for (name, body, want) in [
        (
            "utterances missing",
            &br#"{"data":{"id":"A1","attributes":{"recording":{}}}}"#[..],
            "no `recording.utterances`",
        ),
        (
            "utterances a string",
            br#"{"data":{"id":"A1","attributes":{"recording":{"utterances":"x"}}}}"#,
            "must be an array, found a string",
        ),
        (
            "utterances an object",
            br#"{"data":{"id":"A1","attributes":{"recording":{"utterances":{}}}}}"#,
            "must be an array, found an object",
        ),
        (
            "recording a number",
            br#"{"data":{"id":"A1","attributes":{"recording":7}}}"#,
            "no `recording.utterances`",
        ),
    ] {
        cases.push((
            format!("transcript: {name}"),
            Call::Transcript,
            vnd(body),
            M(want),
        ));
    }
    cases
}

fn filter() -> EngagementFilter {
    EngagementFilter {
        min_date: "2024-01-01T00:00:00Z".parse().unwrap(),
        max_date: "2025-01-01T00:00:00Z".parse().unwrap(),
        engagement_type: None,
    }
}

fn chorus_client(base: &url::Url) -> ChorusClient {
    let mut config = ChorusConfig::new(base.clone(), secrecy::SecretString::from(TOKEN));
    config.max_attempts = 2;
    config.base_backoff = Duration::from_millis(1);
    config.max_backoff = Duration::from_millis(5);
    ChorusClient::new(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chorus_answers_are_clear_errors() {
    let (canned, base) = start_canned().await;
    let client = chorus_client(&base);
    let mut tried = BTreeMap::new();
    for (name, call, answer, expect) in chorus_cases() {
        *canned.answer.lock().unwrap() = Some(answer);
        let result: Result<usize, ChorusError> = match call {
            Call::List => client
                .list_engagements(&filter(), None)
                .await
                .map(|p| p.engagements.len()),
            Call::Conversation => client.conversation("A1", &["name"]).await.map(|_| 1),
            Call::Transcript => client.transcript("A1").await.map(|_| 1),
        };
        match expect {
            Expect::Malformed(text) => {
                let err = result.expect_err(&name);
                assert!(
                    matches!(err, ChorusError::Malformed { .. }),
                    "{name}: expected Malformed, got {err:?}"
                );
                let message = err.to_string();
                assert!(
                    message.contains(text),
                    "{name}: {message:?} does not say {text:?}"
                );
                assert!(
                    message.contains("check for a proxy") && message.len() < 2000,
                    "{name}: the message says what to do and is bounded: {message}"
                );
                assert!(!err.is_permanent() && !err.is_job_fatal(), "{name}");
            }
            Expect::Check(check) => check(&result),
        }
        *tried
            .entry(name.split(':').next().unwrap().to_string())
            .or_insert(0usize) += 1;
    }

    // A listing that repeats the key it was asked with ends instead of looping.
    *canned.answer.lock().unwrap() = Some(json_answer(page_with(json!({"engagement_id": "A1"}))));
    let page = client.list_engagements(&filter(), Some("k")).await.unwrap();
    assert_eq!(
        page.next_key(Some("k")),
        None,
        "a repeated key ends the listing"
    );
    assert_eq!(page.next_key(None).as_deref(), Some("k"));
    *tried.entry("listing".into()).or_insert(0) += 1;

    // Duplicate ids in pages are listed once by the store (the list stage's sink).
    let dir = tempfile::tempdir().unwrap();
    let store = pipeline::store::JobStore::open_sqlite_in(dir.path())
        .await
        .unwrap();
    let job = JobId::new();
    let spec: pipeline::JobSpec = serde_json::from_value(json!({
        "chorus_url": base.to_string(),
        "from": "2024-01-01T00:00:00Z",
        "to": "2024-12-31T23:59:59Z",
        "kinds": ExportKinds::default(),
        "destination": "file:///tmp/unused",
    }))
    .unwrap();
    store.create_job(&job, "o", "u", &spec).await.unwrap();
    let row = |id: &str| pipeline::store::ListedRecording {
        recording_id: id.into(),
        recorded_at: None,
        duration_s: None,
        engagement_type: None,
    };
    store
        .add_listed(&job, &[row("A1"), row("A1"), row("B2")])
        .await
        .unwrap();
    store
        .add_listed(&job, &[row("B2"), row("C3")])
        .await
        .unwrap();
    assert_eq!(store.progress(&job).await.unwrap().listed, 3);

    // Ids no URL can carry are refused before any request; others are encoded whole.
    canned.paths.lock().unwrap().clear();
    for id in ["", ".", ".."] {
        let err = client.conversation(id, &[]).await.unwrap_err();
        assert!(
            matches!(err, ChorusError::UnusableId { .. }),
            "{id:?}: {err:?}"
        );
        assert!(err.is_permanent(), "{id:?} is skipped, not retried");
        let err = client.media(id).await.unwrap_err();
        assert!(
            matches!(err, ChorusError::UnusableId { .. }),
            "{id:?}: {err:?}"
        );
        *tried.entry("unusable id".into()).or_insert(0) += 1;
    }
    assert!(
        canned.paths.lock().unwrap().is_empty(),
        "no request was sent"
    );
    *canned.answer.lock().unwrap() = Some(json_answer("{}"));
    for (id, path) in [
        (
            "../../v3/engagements",
            "/api/v1/conversations/..%2F..%2Fv3%2Fengagements",
        ),
        ("a\\b", "/api/v1/conversations/a%5Cb"),
        ("a\nb", "/api/v1/conversations/a%0Ab"),
        ("a\tb\r", "/api/v1/conversations/a%09b%0D"),
        ("x/y", "/api/v1/conversations/x%2Fy"),
        ("\u{0}", "/api/v1/conversations/%00"),
        ("é", "/api/v1/conversations/%C3%A9"),
        ("a?b#c", "/api/v1/conversations/a%3Fb%23c"),
        ("%2e%2e", "/api/v1/conversations/%252e%252e"),
    ] {
        let _ = client.conversation(id, &[]).await;
        assert_eq!(
            canned.paths.lock().unwrap().pop().as_deref(),
            Some(path),
            "{id:?}"
        );
        *tried.entry("id encoding".into()).or_insert(0) += 1;
    }

    let total: usize = tried.values().sum();
    eprintln!("bad inputs tried: Chorus answers {total} {tried:?}");
}

// ---------------------------------------------------------------------------------
// Hostile recording ids
// ---------------------------------------------------------------------------------

/// Ids a listing could carry, each one a way to escape a folder, break a manifest line
/// or impersonate another id. All valid JSON strings (what Chorus can send at all).
fn hostile_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "../../../../../tmp/portshift-escape",
        "..",
        ".",
        "",
        "/etc/passwd",
        "a/../../b",
        "..\\..\\windows\\system32",
        "C:\\x",
        "line\nbreak",
        "cr\rlf\r\n",
        "nul\0byte",
        "tab\there",
        " spaced ",
        "-rf",
        "--help",
        "~",
        "$HOME",
        "*?[]",
        "%2e%2e%2f",
        "%00",
        "CON",
        "ABC",
        "\u{410}\u{412}\u{421}",
        "\u{FF21}\u{FF22}\u{FF23}",
        "A\u{200B}BC",
        "\u{202E}cba",
        "e\u{301}",
        "\u{E9}",
        "\u{2028}",
        "\u{85}",
        "\u{FEFF}bom",
        "a_b",
        "a-b",
        "a.",
        "manifest  line",
        "0123456789abcdef0123456789abcdef  portshift-manifest.txt",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    ids.push("x".repeat(300));
    ids.push("\u{1F600}".repeat(100));
    // An id crafted to equal another id's sanitised form.
    ids.push(keys::sanitize_segment("a."));
    ids.push("y".repeat(5000));
    ids
}

#[test]
fn hostile_ids_and_file_names_give_safe_keys() {
    let mut tried = BTreeMap::new();
    let mut segments: HashMap<String, String> = HashMap::new();
    let at = Some("2024-02-29T23:59:59Z".parse().unwrap());
    let exts = [
        "mp4",
        "../mp4",
        "mp4\n",
        "m\\p4",
        "",
        "ünï",
        "x".repeat(100).leak() as &str,
    ];
    for id in hostile_ids() {
        let seg = keys::sanitize_segment(&id);
        assert!(keys::is_safe_relative(&seg), "{id:?} -> {seg:?}");
        if let Some(other) = segments.insert(seg.clone(), id.clone()) {
            panic!("{id:?} and {other:?} share {seg}");
        }
        for ext in exts {
            for kind in FileKind::ALL {
                for when in [None, at] {
                    let rel = keys::relative_path(&id, when, kind, ext);
                    assert!(keys::is_safe_relative(&rel), "{id:?} {ext:?} -> {rel:?}");
                    let key = keys::join("exports/2024", &rel);
                    assert!(key.starts_with("exports/2024/"), "{key}");
                    assert!(rel.len() < 300);
                    *tried.entry("id x file name").or_insert(0usize) += 1;
                }
            }
        }
    }
    // Not UTF-8 (ids that arrived as raw bytes).
    let raw: Vec<&[u8]> = vec![
        b"\xff",
        b"\xff\xfe",
        b"A\xff/../..",
        b"\xc0\xaf",     // overlong '/'
        b"\xe0\x80\xaf", // overlong '/'
        b"\xed\xa0\x80", // a UTF-16 surrogate in UTF-8
        b"\x00",
        b"\xef\xbf\xbd", // U+FFFD itself, valid UTF-8
        b"\xff\xfe\xfd",
    ];
    for bytes in &raw {
        let seg = keys::sanitize_segment_bytes(bytes);
        assert!(keys::is_safe_relative(&seg), "{bytes:?} -> {seg:?}");
        if let Some(other) = segments.insert(seg.clone(), format!("{bytes:?}")) {
            panic!("{bytes:?} and {other} share {seg}");
        }
        *tried.entry("non-UTF-8 id").or_insert(0) += 1;
    }
    // Prefixes come from users: refused, or normalised to plain segments.
    for prefix in [
        "../x", "a/../b", "./a", "a/./b", "a\\b", "a\nb", "a\0b", "..", ".",
    ] {
        assert!(keys::normalize_prefix(prefix).is_err(), "{prefix:?}");
        *tried.entry("prefix").or_insert(0) += 1;
    }
    for (prefix, want) in [("/a//b/", "a/b"), ("", ""), ("///", ""), ("a b/ü", "a b/ü")] {
        assert_eq!(keys::normalize_prefix(prefix).unwrap(), want);
        *tried.entry("prefix").or_insert(0) += 1;
    }
    let total: usize = tried.values().sum();
    eprintln!("bad inputs tried: hostile ids and names through pipeline::keys {total} {tried:?}");
}

/// How each hostile id must end in an export.
#[derive(Debug, PartialEq)]
enum Fate {
    Exported,
    /// Skipped with a reason containing this.
    Skipped(&'static str),
    /// Failed with a reason containing this.
    Failed(&'static str),
}

fn fate(id: &str) -> Fate {
    match id {
        "." | ".." => Fate::Skipped("cannot be requested"),
        "" => Fate::Failed("recording_id: must not be empty"),
        id if id.len() > pipeline::messages::MAX_RECORDING_ID_BYTES => {
            Fate::Failed("recording_id: is 5000 bytes long")
        }
        _ => Fate::Exported,
    }
}

/// Exports the simulator's hostile ids (plus a few ordinary recordings) and returns the
/// harness, the job and how many hostile ids there were.
async fn hostile_export(destination: impl FnOnce(&Harness) -> String) -> (Harness, JobId, usize) {
    let ids = hostile_ids();
    let mut config = Harness::sim_config(ids.len() + 4, 77);
    config.sizes.min = 1024;
    config.sizes.max = 64 * 1024;
    config.hostile_ids = ids.clone();
    let h = Harness::start(config).await;
    {
        let data = h.sim.dataset();
        let data = data.read().unwrap();
        let served: HashSet<&str> = data.recordings().iter().map(|r| r.id.as_str()).collect();
        for id in &ids {
            assert!(served.contains(id.as_str()), "the simulator serves {id:?}");
        }
    }
    let dest = destination(&h);
    let job = h.start_job(&dest, ExportKinds::default()).await;
    let (status, _) = h
        .run_worker(&job, fast_options(), Duration::from_secs(300))
        .await;
    assert_eq!(
        status,
        JobStatus::FinishedWithFailures,
        "the over-long and empty ids fail"
    );
    (h, job, ids.len())
}

/// Checks a downloaded copy of a hostile export: only safe paths, exactly the expected
/// files, byte-identical media, every recording accounted for, and `sha256sum -c`.
fn check_hostile_copy(h: &Harness, root: &std::path::Path) -> (usize, usize) {
    let files = all_files_of(root);
    for f in &files {
        assert!(keys::is_safe_relative(f), "unsafe path {f:?}");
    }
    let manifest = std::fs::read_to_string(root.join("portshift-manifest.txt")).unwrap();
    let mut listed = BTreeSet::new();
    for line in manifest.lines() {
        let (sha, path) = line.split_once("  ").expect("sha256sum format");
        assert_eq!(sha.len(), 64, "{line:?}");
        assert!(sha.bytes().all(|b| b.is_ascii_hexdigit()), "{line:?}");
        assert!(keys::is_safe_relative(path), "{line:?}");
        assert!(listed.insert(path.to_string()), "duplicate line {line:?}");
    }
    let on_disk: BTreeSet<String> = files
        .iter()
        .filter(|f| !f.starts_with("portshift-manifest"))
        .cloned()
        .collect();
    assert_eq!(listed, on_disk, "manifest lines == files");
    assert_eq!(sha256sum_check(root), listed.len());

    let doc: Value =
        serde_json::from_slice(&std::fs::read(root.join("portshift-manifest.json")).unwrap())
            .unwrap();
    let reason_of = |section: &str, id: &str| -> Option<String> {
        doc[section].as_array().unwrap().iter().find_map(|p| {
            (p["recording_id"] == id).then(|| p["reason"].as_str().unwrap().to_string())
        })
    };
    let data = h.sim.dataset();
    let data = data.read().unwrap();
    let mut expected_paths = BTreeSet::new();
    let mut hostile = 0;
    for r in data.recordings() {
        let at = chrono::DateTime::from_timestamp(r.date_time, 0);
        match fate(&r.id) {
            Fate::Exported => {
                let media = keys::relative_path(&r.id, at, FileKind::Media, r.media_extension());
                let bytes = std::fs::read(root.join(&media))
                    .unwrap_or_else(|e| panic!("{:?}: {media}: {e}", r.id));
                assert_eq!(
                    sha256_hex(&bytes),
                    hex::encode(stages::chorus::media_sha256(
                        h.sim.seed(),
                        &r.id,
                        r.media_size
                    )),
                    "{:?}",
                    r.id
                );
                expected_paths.insert(media);
                for kind in [FileKind::Transcript, FileKind::Metadata] {
                    expected_paths.insert(keys::relative_path(&r.id, at, kind, "json"));
                }
                // The metadata file carries the id exactly as Chorus sent it.
                let meta = keys::relative_path(&r.id, at, FileKind::Metadata, "json");
                let meta: Value =
                    serde_json::from_slice(&std::fs::read(root.join(meta)).unwrap()).unwrap();
                assert!(
                    meta.to_string()
                        .contains(&serde_json::to_string(&r.id).unwrap()[1..])
                );
            }
            Fate::Skipped(why) => {
                let reason =
                    reason_of("skipped", &r.id).unwrap_or_else(|| panic!("{:?} not skipped", r.id));
                assert!(reason.contains(why), "{:?}: {reason}", r.id);
            }
            Fate::Failed(why) => {
                let reason =
                    reason_of("failed", &r.id).unwrap_or_else(|| panic!("{:?} not failed", r.id));
                assert!(reason.contains(why), "{:?}: {reason}", r.id);
            }
        }
        if hostile_ids().contains(&r.id) {
            hostile += 1;
        }
    }
    assert_eq!(listed, expected_paths, "exactly the expected files");
    (hostile, listed.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_ids_export_to_a_local_folder_inside_the_root() {
    let out = tempfile::tempdir().unwrap();
    let root = out.path().join("export");
    let (h, _job, n) = hostile_export(|_| format!("file://{}", root.display())).await;
    // Nothing was written beside or above the export root.
    let beside: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, vec![std::ffi::OsString::from("export")]);
    assert!(!std::path::Path::new("/tmp/portshift-escape").exists());
    let (hostile, files) = check_hostile_copy(&h, &root);
    assert_eq!(hostile, n, "every hostile id checked");
    eprintln!(
        "bad inputs tried: hostile ids exported to a local folder {n} ({files} files, sha256sum -c OK)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_ids_export_to_s3_inside_the_prefix() {
    let s3 = s3_client().await;
    let bucket = fresh_bucket(&s3).await;
    let prefix = "tenant/hostile";
    let (h, _job, n) = hostile_export(|_| s3_dest(&bucket, prefix)).await;
    // Every key in the whole bucket is under the prefix.
    let mut all = Vec::new();
    let mut pages = s3.list_objects_v2().bucket(&bucket).into_paginator().send();
    while let Some(page) = pages.next().await {
        for o in page.unwrap().contents() {
            all.push(o.key().unwrap().to_string());
        }
    }
    assert!(!all.is_empty());
    for key in &all {
        let rel = key
            .strip_prefix(&format!("{prefix}/"))
            .unwrap_or_else(|| panic!("{key:?} is outside {prefix}/"));
        assert!(keys::is_safe_relative(rel), "{key:?}");
    }
    let copy = tempfile::tempdir().unwrap();
    download(&s3, &bucket, prefix, copy.path()).await;
    let (hostile, files) = check_hostile_copy(&h, copy.path());
    assert_eq!(hostile, n, "every hostile id checked");
    eprintln!(
        "bad inputs tried: hostile ids exported to S3 {n} ({files} objects, sha256sum -c OK)"
    );
}
