//! The console's authorisation and protection rules as tests against the real router,
//! a real SQLite store and a real `nats-server`:
//! - every API route × every role (owner, admin, member, signed-in outsider, anonymous)
//!   gets the status the ONE permission table (`ui::roles`) implies;
//! - writes without the CSRF header are refused; every error has the stable JSON shape;
//! - the 11th sign-in attempt within the window is refused with 429 and Retry-After, and
//!   the stored rate-limit keys are salted hashes, never addresses.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use futures::future::BoxFuture;
use pipeline::accounts::{Accounts, Role, User};
use pipeline::embedded_nats::EmbeddedNats;
use pipeline::store::JobStore;
use pipeline::{JobId, JobSpec};
use tower::ServiceExt;
use ui::roles::{API_ROUTES, ApiRoute, allows};
use ui::{AppState, LaunchError, WorkerLauncher};

/// Records launches instead of starting processes.
#[derive(Default)]
struct Recorder {
    launched: Mutex<Vec<(JobId, Vec<u8>)>>,
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

struct World {
    _tmp: tempfile::TempDir,
    _nats: EmbeddedNats,
    store: JobStore,
    state: ui::Shared,
    recorder: Arc<Recorder>,
}

async fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let nats = EmbeddedNats::start(tmp.path()).await.expect(
        "start nats-server (run under scripts/test, or put nats-server on PATH / PORTSHIFT_NATS_SERVER_BIN)",
    );
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    pipeline::topology::ensure_streams(&js).await.unwrap();
    let store = JobStore::open_sqlite_in(tmp.path()).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    let state = AppState::new(store.clone(), js, recorder.clone())
        .await
        .unwrap();
    World {
        _tmp: tmp,
        _nats: nats,
        store,
        state,
        recorder,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Caller {
    Role(Role),
    Outsider,
    Anonymous,
}

/// One organisation with one user per role, a member to act on, an outsider and a job.
struct Cell {
    org: String,
    job: JobId,
    target: User,
    sessions: Vec<(Caller, Option<(String, String)>)>,
}

async fn cell(w: &World, n: usize) -> Cell {
    let accounts = Accounts::new(&w.store);
    let user = |who: &str| format!("{who}-{n}-{}@example.com", uuid::Uuid::new_v4().simple());
    let mk = |email: String| {
        let accounts = accounts.clone();
        async move {
            accounts
                .create_user(&email, "$argon2id$unused")
                .await
                .unwrap()
        }
    };
    let owner = mk(user("owner")).await;
    let admin = mk(user("admin")).await;
    let member = mk(user("member")).await;
    let target = mk(user("target")).await;
    let outsider = mk(user("outsider")).await;
    let org = accounts.create_org("Matrix Ltd", &owner).await.unwrap();
    accounts
        .set_role(&org.id, &admin.id, Role::Admin)
        .await
        .unwrap();
    accounts
        .set_role(&org.id, &member.id, Role::Member)
        .await
        .unwrap();
    accounts
        .set_role(&org.id, &target.id, Role::Member)
        .await
        .unwrap();
    let job = JobId::new();
    w.store
        .create_job(
            &job,
            &org.id,
            &owner.email,
            &JobSpec {
                chorus_url: "https://chorus.example/".into(),
                from: "2024-01-01T00:00:00Z".parse().unwrap(),
                to: "2024-01-31T23:59:59Z".parse().unwrap(),
                kinds: Default::default(),
                destination: "file:///tmp/x".into(),
                webhook_url: None,
                schedule: None,
            },
        )
        .await
        .unwrap();
    let mut sessions = vec![];
    for (caller, u) in [
        (Caller::Role(Role::Owner), Some(&owner)),
        (Caller::Role(Role::Admin), Some(&admin)),
        (Caller::Role(Role::Member), Some(&member)),
        (Caller::Outsider, Some(&outsider)),
        (Caller::Anonymous, None),
    ] {
        let s = match u {
            Some(u) => Some(ui::auth::issue_session(&accounts, u).await.unwrap()),
            None => None,
        };
        sessions.push((caller, s));
    }
    Cell {
        org: org.id,
        job,
        target,
        sessions,
    }
}

const CANARY: &str = "CANARY-MATRIX-TOKEN-7f3a";

fn body_for(route: &ApiRoute) -> serde_json::Value {
    match route.name {
        "create_org" => serde_json::json!({"name": "Another"}),
        "start_export" => serde_json::json!({
            "chorus_url": "https://chorus.example/",
            "from": "2024-01-01", "to": "2024-01-31",
            "media": true, "transcript": true, "metadata": false,
            "destination": "s3://bucket/prefix?region=eu-west-1",
            "chorus_token": CANARY,
            "s3_access_key_id": "AKIAEXAMPLE", "s3_secret_access_key": CANARY,
        }),
        "retry_job" => serde_json::json!({"chorus_token": CANARY}),
        "invite_member" => {
            serde_json::json!({"email": format!("new-{}@example.com", uuid::Uuid::new_v4().simple()), "role": "member"})
        }
        "change_role" => serde_json::json!({"role": "admin"}),
        "set_retention" => serde_json::json!({"days": 30}),
        _ => serde_json::json!({}),
    }
}

/// The status the permission table implies.
fn expected(route: &ApiRoute, caller: Caller) -> u16 {
    match (caller, route.action) {
        (Caller::Anonymous, _) => 401,
        (_, None) => route.ok,
        (Caller::Outsider, Some(_)) => 404,
        (Caller::Role(r), Some(a)) => {
            if allows(r, a) {
                route.ok
            } else {
                403
            }
        }
    }
}

async fn call(
    state: &ui::Shared,
    method: &str,
    path: &str,
    session: Option<&(String, String)>,
    csrf: bool,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value, axum::http::HeaderMap) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some((token, csrf_token)) = session {
        req = req.header("cookie", format!("portshift_session={token}"));
        if csrf {
            req = req.header("x-csrf-token", csrf_token);
        }
    }
    let mut req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    req.extensions_mut().insert(ConnectInfo(
        "127.0.0.1:50000".parse::<SocketAddr>().unwrap(),
    ));
    let res = ui::router(state.clone()).oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json, headers)
}

#[tokio::test]
async fn every_api_route_for_every_role_matches_the_permission_table() {
    let w = world().await;
    let mut failures = vec![];
    let mut checked = 0;
    for (i, route) in API_ROUTES.iter().enumerate() {
        // A fresh organisation per route, so destructive routes do not disturb others.
        let c = cell(&w, i).await;
        // Least privileged first, so the owner's delete_org runs last.
        for (caller, session) in c.sessions.iter().rev() {
            let path = route
                .path
                .replace("{org}", &c.org)
                .replace("{job}", c.job.as_str())
                .replace("{user}", &c.target.id);
            let body = (route.method != "GET").then(|| body_for(route));
            let (status, json, _) =
                call(&w.state, route.method, &path, session.as_ref(), true, body).await;
            let want = expected(route, *caller);
            checked += 1;
            if status.as_u16() != want {
                failures.push(format!(
                    "{} {} as {caller:?}: got {status}, the table says {want}: {json}",
                    route.method, route.path
                ));
            }
            if !status.is_success() {
                let code = json["error"]["code"].as_str().unwrap_or_default();
                let message = json["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    !code.is_empty() && !message.is_empty(),
                    "{} {} as {caller:?}: error without the stable shape: {json}",
                    route.method,
                    route.path
                );
            }
            assert!(
                !json.to_string().contains(CANARY),
                "{} echoed a credential: {json}",
                route.path
            );
            // Restore what a destructive call changed, so the next caller meets the
            // same organisation.
            if status.is_success() {
                let accounts = Accounts::new(&w.store);
                match route.name {
                    "change_role" | "remove_member" => accounts
                        .set_role(&c.org, &c.target.id, Role::Member)
                        .await
                        .unwrap(),
                    _ => {}
                }
            }
        }
    }
    assert_eq!(checked, API_ROUTES.len() * 5);
    assert!(
        failures.is_empty(),
        "{} of {checked} cells disagree with the permission table:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // start_export and retry_job each reached the worker launcher with the credentials
    // document, for every role allowed to call them.
    let launched = w.recorder.launched.lock().unwrap();
    assert_eq!(launched.len(), 6, "3 roles × (start + retry)");
    assert!(
        launched
            .iter()
            .all(|(_, c)| String::from_utf8_lossy(c).contains(CANARY))
    );
}

#[tokio::test]
async fn writes_need_the_csrf_token() {
    let w = world().await;
    let c = cell(&w, 0).await;
    let owner = c.sessions[0].1.clone().unwrap();
    for route in API_ROUTES.iter().filter(|r| r.method != "GET") {
        let path = route
            .path
            .replace("{org}", &c.org)
            .replace("{job}", c.job.as_str())
            .replace("{user}", &c.target.id);
        let (status, json, _) = call(
            &w.state,
            route.method,
            &path,
            Some(&owner),
            false,
            Some(body_for(route)),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{} {}: {json}",
            route.method,
            route.path
        );
        assert_eq!(json["error"]["code"], "csrf", "{json}");
    }
    assert!(w.recorder.launched.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_eleventh_sign_in_attempt_is_refused_and_keys_are_hashes() {
    let w = world().await;
    let accounts = Accounts::new(&w.store);
    let hash = ui::auth::hash_password("tangerine-orbit-Violin-42").unwrap();
    accounts
        .create_user("ada@example.com", &hash)
        .await
        .unwrap();
    for attempt in 1..=10 {
        let (status, json, _) = call(
            &w.state,
            "POST",
            "/api/v1/session",
            None,
            false,
            Some(serde_json::json!({"email": "ada@example.com", "password": "wrong-password-xyz"})),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}: {json}"
        );
    }
    // Even the right password is refused now: the limit counts attempts.
    let (status, json, headers) = call(
        &w.state,
        "POST",
        "/api/v1/session",
        None,
        false,
        Some(serde_json::json!({"email": "ada@example.com", "password": "tangerine-orbit-Violin-42"})),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    assert_eq!(json["error"]["code"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "Retry-After {retry}");
    let keys = accounts.rate_limit_keys().await.unwrap();
    assert!(!keys.is_empty());
    let unsalted = ui::auth::sha256_hex(b"127.0.0.1");
    for k in keys {
        assert!(
            k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()),
            "stored key {k:?} is not a SHA-256"
        );
        assert!(
            !k.contains("127.0.0.1") && k != unsalted,
            "stored key is not salted: {k}"
        );
    }
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let doc = ui::openapi_document();
    for r in API_ROUTES {
        assert!(
            doc["paths"][r.path][r.method.to_lowercase()].is_object(),
            "{} {} missing from the OpenAPI document",
            r.method,
            r.path
        );
    }
}
