//! What the console's tests share: a console on a fresh `nats-server` and SQLite store,
//! worker launchers that start nothing (one that records what it was asked to start),
//! and one request sent through the real router as if from 127.0.0.1. The helpers that
//! need no console (buckets, processes, plans) are in the `test-support` crate.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use futures::future::BoxFuture;
use pipeline::JobId;
use pipeline::embedded_nats::EmbeddedNats;
use pipeline::store::JobStore;
use tower::ServiceExt;
use ui::{AppState, LaunchError, WorkerLauncher};

/// A launcher for tests that start no workers.
pub struct NoWorkers;

impl WorkerLauncher for NoWorkers {
    fn launch(
        &self,
        _job: &JobId,
        _credentials: zeroize::Zeroizing<Vec<u8>>,
    ) -> BoxFuture<'static, Result<(), LaunchError>> {
        Box::pin(async { Ok(()) })
    }
    fn stop(&self, _job: &JobId) -> bool {
        false
    }
}

/// Records launches (the job and its credentials document) instead of starting processes.
#[derive(Default)]
pub struct Recorder {
    pub launched: Mutex<Vec<(JobId, Vec<u8>)>>,
}

impl WorkerLauncher for Recorder {
    fn launch(
        &self,
        job: &JobId,
        credentials: zeroize::Zeroizing<Vec<u8>>,
    ) -> BoxFuture<'static, Result<(), LaunchError>> {
        self.launched
            .lock()
            .unwrap()
            .push((job.clone(), credentials.to_vec()));
        Box::pin(async { Ok(()) })
    }
    fn stop(&self, _job: &JobId) -> bool {
        false
    }
}

/// A fresh `nats-server` whose store is in `dir`, with the console's streams.
pub async fn nats_in(dir: &Path) -> (EmbeddedNats, async_nats::jetstream::Context) {
    let nats = EmbeddedNats::start(dir).await.expect(
        "start nats-server (run under scripts/test, or put nats-server on PATH / PORTSHIFT_NATS_SERVER_BIN)",
    );
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    pipeline::topology::ensure_streams(&js).await.unwrap();
    (nats, js)
}

/// The console's state on a fresh `nats-server` and SQLite store in `dir`, starting
/// workers through `launcher`.
pub async fn console_in(
    dir: &Path,
    launcher: Arc<dyn WorkerLauncher>,
) -> (EmbeddedNats, JobStore, ui::Shared) {
    let (nats, js) = nats_in(dir).await;
    let store = JobStore::open_sqlite_in(dir).await.unwrap();
    let state = AppState::new(store.clone(), js, launcher).await.unwrap();
    (nats, store, state)
}

/// A console (see [`console_in`]) in its own temporary folder whose worker launches are
/// recorded, not run: what the tests of routes and roles that start exports use.
pub struct RecordedConsole {
    pub tmp: tempfile::TempDir,
    pub nats: EmbeddedNats,
    pub store: JobStore,
    pub state: ui::Shared,
    pub recorder: Arc<Recorder>,
}

impl RecordedConsole {
    /// Starts it, its state changed by `configure` first (e.g. its worker limits).
    pub async fn start(configure: impl FnOnce(&mut AppState)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let recorder = Arc::new(Recorder::default());
        let (nats, store, mut state) = console_in(tmp.path(), recorder.clone()).await;
        configure(Arc::get_mut(&mut state).unwrap());
        Self {
            tmp,
            nats,
            store,
            state,
            recorder,
        }
    }
}

/// Sends one request through the router as if from 127.0.0.1: status, body, headers.
pub async fn send(
    state: &ui::Shared,
    mut req: Request<Body>,
) -> (StatusCode, axum::body::Bytes, HeaderMap) {
    req.extensions_mut().insert(ConnectInfo(
        "127.0.0.1:50000".parse::<SocketAddr>().unwrap(),
    ));
    let res = ui::router(state.clone()).oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 4 << 20)
        .await
        .unwrap();
    (status, bytes, headers)
}

/// A JSON API request: the session's cookie and, when `csrf`, its CSRF header; `body` as
/// JSON.
pub fn api_request(
    method: &str,
    path: &str,
    session: Option<&(String, String)>,
    csrf: bool,
    body: Option<serde_json::Value>,
) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(path);
    if let Some((token, csrf_token)) = session {
        req = req.header("cookie", format!("portshift_session={token}"));
        if csrf {
            req = req.header("x-csrf-token", csrf_token);
        }
    }
    match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    }
}

/// Sends a JSON API request as `session` (with its CSRF token): status, the answer as
/// JSON (`Null` when it is not JSON), headers.
pub async fn api(
    state: &ui::Shared,
    method: &str,
    path: &str,
    session: Option<&(String, String)>,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value, HeaderMap) {
    let (status, bytes, headers) =
        send(state, api_request(method, path, session, true, body)).await;
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json, headers)
}
