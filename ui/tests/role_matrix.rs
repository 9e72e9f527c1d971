//! The console's authorisation and protection rules as tests against the real router,
//! a real SQLite store and a real `nats-server`:
//! - every API route × every role (owner, admin, member, signed-in outsider, a member
//!   whose e-mail address is not confirmed, anonymous) gets the status the ONE permission
//!   table (`ui::roles`, with `UNVERIFIED_OK`) implies;
//! - writes without the CSRF header are refused; every error has the stable JSON shape;
//! - the 11th sign-in attempt within the window is refused with 429 and Retry-After, and
//!   the stored rate-limit keys are salted hashes, never addresses;
//! - schedules: an organisation sees and touches only its own (another organisation's
//!   schedule id is 404 and stays as it was), pause and resume change the store and the
//!   audit trail, and the schedules page and its forms follow the same rules as the API.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{RecordedConsole, api_request, send};
use pipeline::JobId;
use pipeline::accounts::{Accounts, Role, User};
use pipeline::store::JobStore;
use test_support::plans::on_team_plan;
use ui::roles::{API_ROUTES, Action, ApiRoute, UNVERIFIED_OK, allows};

type World = RecordedConsole;

async fn world() -> World {
    RecordedConsole::start(|_| {}).await
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Caller {
    Role(Role),
    Outsider,
    /// A member whose e-mail address is not confirmed (signed up, never used the link).
    Unverified,
    Anonymous,
}

/// Every cell user's password (hashed once: argon2 is slow on purpose).
const CELL_PASSWORD: &str = "tangerine-orbit-Violin-42";
static CELL_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| ui::auth::hash_password(CELL_PASSWORD).unwrap());

/// One organisation with one user per role, a member to act on, an outsider and a job.
struct Cell {
    org: String,
    job: JobId,
    schedule: String,
    target: User,
    sessions: Vec<(Caller, Option<(String, String)>)>,
}

async fn cell(w: &World, n: usize) -> Cell {
    let accounts = Accounts::new(&w.store);
    let user = |who: &str| format!("{who}-{n}-{}@example.com", uuid::Uuid::new_v4().simple());
    let mk = |email: String| {
        let accounts = accounts.clone();
        async move { accounts.create_user(&email, &CELL_HASH).await.unwrap() }
    };
    let owner = mk(user("owner")).await;
    let admin = mk(user("admin")).await;
    let member = mk(user("member")).await;
    let target = mk(user("target")).await;
    let outsider = mk(user("outsider")).await;
    let unverified = accounts
        .register(&user("unverified"), &CELL_HASH)
        .await
        .unwrap();
    let org = accounts.create_org("Matrix Ltd", &owner).await.unwrap();
    accounts
        .set_role(&org.id, &unverified.id, Role::Member)
        .await
        .unwrap();
    // Everyone holds an invitation, so accept/decline have something to act on (an
    // outsider accepting joins; a member accepting keeps their role).
    for u in [&owner, &admin, &member, &outsider, &unverified] {
        accounts
            .invite(&org.id, &u.email, Role::Member, &owner.email)
            .await
            .unwrap();
    }
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
    let job =
        test_support::jobs::stored_job(&w.store, &org.id, &owner.email, "file:///tmp/x").await;
    let schedule = new_schedule(&w.store, &org.id).await;
    let mut sessions = vec![];
    for (caller, u) in [
        (Caller::Role(Role::Owner), Some(&owner)),
        (Caller::Role(Role::Admin), Some(&admin)),
        (Caller::Role(Role::Member), Some(&member)),
        (Caller::Outsider, Some(&outsider)),
        (Caller::Unverified, Some(&unverified)),
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
        schedule,
        target,
        sessions,
    }
}

/// A schedule in `org` (references only, as always); returns its id.
async fn new_schedule(store: &JobStore, org: &str) -> String {
    let name = format!("nightly-{}", uuid::Uuid::new_v4().simple());
    test_support::orgs::tenant_schedule(store, org, &name, 7 * 24 * 3600).await
}

fn path_of(route: &ApiRoute, c: &Cell, schedule: &str) -> String {
    route
        .path
        .replace("{org}", &c.org)
        .replace("{job}", c.job.as_str())
        .replace("{user}", &c.target.id)
        .replace("{schedule}", schedule)
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
        "change_password" => serde_json::json!({
            "current_password": CELL_PASSWORD, "new_password": CELL_PASSWORD,
        }),
        "delete_me" => serde_json::json!({"password": CELL_PASSWORD}),
        "set_retention" => serde_json::json!({"days": 30}),
        "billing_checkout" => serde_json::json!({"plan": "team"}),
        "create_schedule" => serde_json::json!({
            "name": "nightly", "cron": "0 2 * * *", "timezone": "Europe/Helsinki",
            "start": "2024-01-01", "destination": "s3://bucket/chorus?region=eu-west-1",
            "chorus_token_ref": "env:CHORUS_API_TOKEN", "s3_ref": "aws:default",
        }),
        _ => serde_json::json!({}),
    }
}

/// The status the permission table implies.
fn expected(route: &ApiRoute, caller: Caller) -> u16 {
    match (caller, route.action) {
        (Caller::Anonymous, _) => 401,
        (Caller::Unverified, _) if !UNVERIFIED_OK.contains(&route.name) => 403,
        // The last owner must hand the organisation over (or delete it) first.
        (Caller::Role(Role::Owner), None) if route.name == "delete_me" => 409,
        (_, None) => route.ok,
        (Caller::Unverified, Some(_)) => 403,
        (Caller::Outsider, Some(_)) => 404,
        (Caller::Role(r), Some(a)) => {
            if allows(r, a) && route.name == "create_schedule" {
                // A permitted caller reaches validation, which refuses the server-side
                // references a console user may not use (every kind that exists today
                // reads the server's environment, files or identity).
                422
            } else if allows(r, a) && matches!(route.name, "billing_checkout" | "billing_portal") {
                // This world has no Stripe billing set up: the owner is told so.
                // tests/billing.rs runs these routes against a local Stripe.
                409
            } else if allows(r, a) {
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
    let (status, bytes, headers) =
        send(state, api_request(method, path, session, csrf, body)).await;
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json, headers)
}

/// A JSON write through the API as `session` (with its CSRF token): status and body.
async fn post(
    w: &World,
    path: &str,
    session: &(String, String),
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let (status, json, _) = call(&w.state, "POST", path, Some(session), true, Some(body)).await;
    (status, json)
}

#[tokio::test]
async fn every_api_route_for_every_role_matches_the_permission_table() {
    let w = world().await;
    let mut failures = vec![];
    let mut checked = 0;
    for (i, route) in API_ROUTES.iter().enumerate() {
        // A fresh organisation per route, so destructive routes do not disturb others.
        let c = cell(&w, i).await;
        let mut schedule = c.schedule.clone();
        // Least privileged first, so the owner's delete_org runs last.
        for (caller, session) in c.sessions.iter().rev() {
            let path = path_of(route, &c, &schedule);
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
                    "delete_schedule" => schedule = new_schedule(&w.store, &c.org).await,
                    _ => {}
                }
            }
        }
    }
    assert_eq!(checked, API_ROUTES.len() * 6);
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
        let path = path_of(route, &c, &c.schedule);
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
    let s = w.store.schedule(&c.schedule).await.unwrap();
    assert!(
        !s.paused,
        "a write without the CSRF token changed the schedule"
    );
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

/// A page request (a GET, or a form post when `form` is given): status, body, headers.
async fn page(
    state: &ui::Shared,
    method: &str,
    path: &str,
    session: Option<&(String, String)>,
    form: Option<String>,
) -> (StatusCode, String, axum::http::HeaderMap) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some((token, _)) = session {
        req = req.header("cookie", format!("portshift_session={token}"));
    }
    let req = match form {
        Some(f) => req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(f))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let (status, bytes, headers) = send(state, req).await;
    (
        status,
        String::from_utf8_lossy(&bytes).into_owned(),
        headers,
    )
}

/// A page form posted as `session`, with its CSRF token and nothing else.
async fn form_post(
    w: &World,
    path: &str,
    session: &(String, String),
) -> (StatusCode, String, axum::http::HeaderMap) {
    page(
        &w.state,
        "POST",
        path,
        Some(session),
        Some(format!("csrf={}", session.1)),
    )
    .await
}

fn schedule_actions(accounts_log: &[pipeline::accounts::AuditEvent]) -> Vec<&str> {
    accounts_log
        .iter()
        .filter(|e| e.action.starts_with("schedule."))
        .map(|e| e.action.as_str())
        .collect()
}

#[tokio::test]
async fn another_organisations_schedule_is_not_found_and_left_alone() {
    let w = world().await;
    let a = cell(&w, 0).await;
    let b = cell(&w, 1).await;
    let owner_a = a.sessions[0].1.clone().unwrap();
    let b_before = w.store.schedule(&b.schedule).await.unwrap();

    // A's list holds A's schedule only, through the API and the page.
    let (status, json, _) = call(
        &w.state,
        "GET",
        &format!("/api/v1/orgs/{}/schedules", a.org),
        Some(&owner_a),
        false,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let ids: Vec<&str> = json["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a.schedule.as_str()], "{json}");
    assert!(
        !json.to_string().contains("CHORUS_API_TOKEN"),
        "the list shows credential references: {json}"
    );
    let (status, html, _) = page(
        &w.state,
        "GET",
        &format!("/orgs/{}/schedules", a.org),
        Some(&owner_a),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains(&a.schedule) && !html.contains(&b.schedule));

    // B's schedule id under A's organisation, and an id that does not exist, are both
    // "not found" for every change, through the API and the page forms.
    for id in [b.schedule.as_str(), "no-such-schedule"] {
        for (method, suffix) in [("POST", "/pause"), ("POST", "/resume"), ("DELETE", "")] {
            let (status, json, _) = call(
                &w.state,
                method,
                &format!("/api/v1/orgs/{}/schedules/{id}{suffix}", a.org),
                Some(&owner_a),
                true,
                Some(serde_json::json!({})),
            )
            .await;
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "{method} {id}{suffix}: {json}"
            );
            assert_eq!(json["error"]["code"], "not_found", "{json}");
        }
        for action in ["pause", "resume", "delete"] {
            let (status, html, _) = form_post(
                &w,
                &format!("/orgs/{}/schedules/{id}/{action}", a.org),
                &owner_a,
            )
            .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "page {action} {id}: {html}");
        }
    }
    assert_eq!(
        w.store.schedule(&b.schedule).await.unwrap(),
        b_before,
        "another organisation's schedule changed"
    );
    let accounts = Accounts::new(&w.store);
    for org in [&a.org, &b.org] {
        let log = accounts.audit_log(org, 100).await.unwrap();
        assert!(schedule_actions(&log).is_empty(), "{log:?}");
    }
}

#[tokio::test]
async fn pause_resume_and_delete_change_the_store_and_the_audit_trail() {
    let w = world().await;
    let c = cell(&w, 0).await;
    let admin = c.sessions[1].1.clone().unwrap();
    let api = format!("/api/v1/orgs/{}/schedules/{}", c.org, c.schedule);
    let due = |store: JobStore, id: String| async move {
        store
            .due_schedules(i64::MAX)
            .await
            .unwrap()
            .iter()
            .any(|s| s.id == id)
    };

    // Through the API.
    let (status, json, _) = call(
        &w.state,
        "POST",
        &format!("{api}/pause"),
        Some(&admin),
        true,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["paused"], true, "{json}");
    assert!(json["next_run_ms"].is_null(), "{json}");
    assert!(w.store.schedule(&c.schedule).await.unwrap().paused);
    assert!(!due(w.store.clone(), c.schedule.clone()).await);
    let (_, json, _) = call(
        &w.state,
        "GET",
        &format!("/api/v1/orgs/{}/schedules", c.org),
        Some(&admin),
        false,
        None,
    )
    .await;
    assert_eq!(json["schedules"][0]["paused"], true, "{json}");
    assert_eq!(json["schedules"][0]["cron"], "0 2 * * *", "{json}");
    assert_eq!(json["schedules"][0]["timezone"], "Europe/Helsinki");
    assert_eq!(json["schedules"][0]["destination"], "file:///tmp/x");
    assert!(json["schedules"][0]["last_run_status"].is_null(), "{json}");

    let (status, json, _) = call(
        &w.state,
        "POST",
        &format!("{api}/resume"),
        Some(&admin),
        true,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["paused"], false, "{json}");
    let now = chrono::Utc::now().timestamp_millis();
    assert!(json["next_run_ms"].as_i64().unwrap() > now, "{json}");
    let s = w.store.schedule(&c.schedule).await.unwrap();
    assert!(!s.paused && s.next_run_ms > now);
    assert!(due(w.store.clone(), c.schedule.clone()).await);

    // Through the page forms: without the CSRF token nothing changes.
    let form = format!("/orgs/{}/schedules/{}", c.org, c.schedule);
    let (status, _, _) = page(
        &w.state,
        "POST",
        &format!("{form}/pause"),
        Some(&admin),
        Some(String::new()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!w.store.schedule(&c.schedule).await.unwrap().paused);
    for (action, paused) in [("pause", true), ("resume", false)] {
        let (status, html, headers) = form_post(&w, &format!("{form}/{action}"), &admin).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{action}: {html}");
        assert_eq!(headers["location"], format!("/orgs/{}/schedules", c.org));
        assert_eq!(
            w.store.schedule(&c.schedule).await.unwrap().paused,
            paused,
            "{action}"
        );
    }

    // A member may do neither.
    let member = c.sessions[2].1.clone().unwrap();
    let (status, _, _) = form_post(&w, &format!("{form}/pause"), &member).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!w.store.schedule(&c.schedule).await.unwrap().paused);

    // Delete through the page.
    let (status, html, _) = form_post(&w, &format!("{form}/delete"), &admin).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    assert!(w.store.schedule(&c.schedule).await.is_err());
    let (status, json, _) = call(&w.state, "DELETE", &api, Some(&admin), true, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{json}");

    let log = Accounts::new(&w.store)
        .audit_log(&c.org, 100)
        .await
        .unwrap();
    // Sorted: events within one millisecond have no defined order.
    let mut actions = schedule_actions(&log);
    actions.sort();
    assert_eq!(
        actions,
        [
            "schedule.deleted",
            "schedule.paused",
            "schedule.paused",
            "schedule.resumed",
            "schedule.resumed"
        ],
        "{log:?}"
    );
    assert!(
        log.iter()
            .filter(|e| e.action.starts_with("schedule."))
            .all(|e| e.actor.starts_with("admin-") && e.detail.contains(&c.schedule)),
        "{log:?}"
    );
}

#[tokio::test]
async fn the_schedules_page_and_its_link_follow_the_permission_table() {
    let w = world().await;
    let c = cell(&w, 0).await;
    let schedules = format!("/orgs/{}/schedules", c.org);
    for (caller, session) in &c.sessions {
        let (status, html, headers) =
            page(&w.state, "GET", &schedules, session.as_ref(), None).await;
        let want = match caller {
            Caller::Anonymous => StatusCode::SEE_OTHER,
            Caller::Outsider => StatusCode::NOT_FOUND,
            Caller::Unverified => StatusCode::FORBIDDEN,
            Caller::Role(r) if allows(*r, Action::ManageSchedules) => StatusCode::OK,
            Caller::Role(_) => StatusCode::FORBIDDEN,
        };
        assert_eq!(status, want, "{caller:?}: {html}");
        match caller {
            Caller::Anonymous => assert_eq!(headers["location"], "/signin"),
            Caller::Role(r) => {
                if status == StatusCode::OK {
                    let (token, csrf) = session.as_ref().unwrap();
                    assert!(!html.contains(token.as_str()));
                    assert!(html.contains(&format!("{schedules}/{}/pause", c.schedule)));
                    assert!(html.contains(&format!("{schedules}/{}/delete", c.schedule)));
                    assert!(
                        html.contains(csrf.as_str()),
                        "the forms carry the CSRF token"
                    );
                    assert!(!html.contains("CHORUS_API_TOKEN"), "shows references");
                }
                // The nav link, on the job history page every member sees.
                let (status, html, _) = page(
                    &w.state,
                    "GET",
                    &format!("/orgs/{}/jobs", c.org),
                    session.as_ref(),
                    None,
                )
                .await;
                assert_eq!(status, StatusCode::OK);
                assert_eq!(
                    html.contains(&format!("href=\"{schedules}\"")),
                    allows(*r, Action::ManageSchedules),
                    "{caller:?}: schedules link"
                );
            }
            Caller::Outsider | Caller::Unverified => {}
        }
    }
}

/// Deleting an organisation stops its schedules too: nothing keeps exporting for an
/// organisation that no longer exists. Another organisation's schedule is untouched.
#[tokio::test]
async fn deleting_an_organisation_deletes_its_schedules() {
    let w = world().await;
    let doomed = cell(&w, 0).await;
    let other = cell(&w, 1).await;
    let owner = doomed.sessions[0].1.clone().unwrap();
    assert!(w.store.schedule(&doomed.schedule).await.is_ok());
    let (status, json, _) = call(
        &w.state,
        "DELETE",
        &format!("/api/v1/orgs/{}", doomed.org),
        Some(&owner),
        true,
        None,
    )
    .await;
    assert!(status.is_success(), "{status} {json}");
    assert!(
        w.store.schedule(&doomed.schedule).await.is_err(),
        "the deleted organisation's schedule survived"
    );
    assert!(
        !w.store
            .due_schedules(i64::MAX)
            .await
            .unwrap()
            .iter()
            .any(|s| s.organisation == doomed.org)
    );
    assert!(w.store.schedule(&other.schedule).await.is_ok());
}

/// Creating a schedule through the API: each mistake is reported against its field, a
/// credential pasted where a reference belongs is refused without being echoed or
/// stored, and a valid schedule is listed, stored with its references only, and audited.
#[tokio::test]
async fn schedules_are_created_with_references_only() {
    let w = world().await;
    let c = cell(&w, 0).await;
    let admin = c.sessions[1].1.clone().unwrap();
    let path = format!("/api/v1/orgs/{}/schedules", c.org);
    // Each mistake against its field; a credential pasted into a reference field is not
    // echoed.
    for (body, fields) in [
        (
            serde_json::json!({
                "name": "", "cron": "every night", "timezone": "Mars/Olympus",
                "start": "yesterday", "destination": "ftp://x",
                "chorus_token_ref": "sk-live-PASTED-SECRET-91c2",
            }),
            &[
                "name",
                "timezone",
                "start",
                "destination",
                "chorus_token_ref",
            ][..],
        ),
        (
            serde_json::json!({
                "name": "n", "cron": "every night", "start": "2024-01-01",
                "destination": "gs://bucket/calls", "chorus_token_ref": "env:CHORUS_API_TOKEN",
                "gcs_ref": "azure:managed-identity",
            }),
            &["cron", "gcs_ref"][..],
        ),
    ] {
        let (status, json) = post(&w, &path, &admin, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{json}");
        for f in fields {
            assert!(
                json["error"]["fields"][f].is_string(),
                "{f} missing in {json}"
            );
        }
        assert!(!json.to_string().contains("PASTED-SECRET"), "{json}");
    }

    // Every reference that resolves on the server is refused for console users, each
    // against its field, with what to use instead; nothing is stored.
    let before = w.store.schedules_of(&c.org).await.unwrap().len();
    let server_refs = |token_file: &str, secret_env: &str| {
        serde_json::json!({
            "name": "nightly gcs", "cron": "30 1 * * *", "timezone": "Europe/Helsinki",
            "start": "2024-02-01", "destination": "gs://bucket/calls",
            "media": false,
            "chorus_token_ref": format!("file:{token_file}"), "gcs_ref": "gcp:workload-identity",
            "webhook_url": "https://hooks.example/x", "webhook_secret_ref": format!("env:{secret_env}"),
        })
    };
    let (status, json) = post(&w, &path, &admin, server_refs("/etc/passwd", "HOME")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{json}");
    let fields = &json["error"]["fields"];
    for f in ["chorus_token_ref", "gcs_ref", "webhook_secret_ref"] {
        let msg = fields[f]
            .as_str()
            .unwrap_or_else(|| panic!("{f} missing in {json}"));
        assert!(msg.contains("cross-account role"), "{f}: {msg}");
    }
    // The answer for a file that exists is the answer for one that does not.
    let (_, other) = post(
        &w,
        &path,
        &admin,
        server_refs("/nonexistent/portshift", "PORTSHIFT_SURELY_UNSET"),
    )
    .await;
    assert_eq!(json, other);
    assert_eq!(w.store.schedules_of(&c.org).await.unwrap().len(), before);
    // A member may not create one.
    let member = c.sessions[2].1.clone().unwrap();
    let (status, _) = post(&w, &path, &member, serde_json::json!({"name": "x"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// The console's "New schedule" form: a mistake comes back as the page with the error
/// next to its field (and without echoing what was typed into a reference field); a
/// valid form creates the schedule (unchecked boxes mean "not exported") and returns to
/// the list; without the CSRF token nothing is created.
#[tokio::test]
async fn the_new_schedule_form_creates_one_or_shows_the_field_errors() {
    let w = world().await;
    let c = cell(&w, 0).await;
    let admin = c.sessions[1].1.clone().unwrap();
    let path = format!("/orgs/{}/schedules", c.org);
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let before = w.store.schedules_of(&c.org).await.unwrap().len();

    let bad = format!(
        "csrf={}&name=n&cron=often&timezone=UTC&start=2024-01-01&destination={}&chorus_token_ref={}",
        admin.1,
        enc("s3://b/p"),
        enc("sk-live-PASTED-FORM-SECRET")
    );
    let (status, html, _) = page(&w.state, "POST", &path, Some(&admin), Some(bad)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("id=\"error-cron\""), "{html}");
    assert!(html.contains("id=\"error-chorus_token_ref\""), "{html}");
    assert!(!html.contains("PASTED-FORM-SECRET"));

    let good = format!(
        "name=weekly&cron={}&timezone={}&start=2024-03-01&destination={}&transcript=true&chorus_token_ref={}&azure_ref={}",
        enc("0 3 * * 1"),
        enc("Europe/Helsinki"),
        enc("azure://acct/calls/chorus"),
        enc("env:CHORUS_API_TOKEN"),
        enc("file:/run/secrets/azure-sas"),
    );
    let (status, _, _) = page(&w.state, "POST", &path, Some(&admin), Some(good.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF token");
    assert_eq!(w.store.schedules_of(&c.org).await.unwrap().len(), before);

    // With the token, the server-side references are refused next to their fields.
    let (status, html, _) = page(
        &w.state,
        "POST",
        &path,
        Some(&admin),
        Some(format!("csrf={}&{good}", admin.1)),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("id=\"error-chorus_token_ref\""), "{html}");
    assert!(html.contains("id=\"error-azure_ref\""), "{html}");
    // The refusal is judged on the reference's form alone: it never says whether the
    // file or variable exists on the server (the form may show the tenant's own input).
    assert!(
        !html.contains("does not exist")
            && !html.contains("not set")
            && !html.contains("No such file"),
        "a refusal told whether a reference exists: {html}"
    );
    assert_eq!(w.store.schedules_of(&c.org).await.unwrap().len(), before);
    let (_, html, _) = page(&w.state, "GET", &path, Some(&admin), None).await;
    assert!(html.contains("id=\"new-schedule\""));
}

/// A tenant's valid schedule body (the Chorus token and the S3 writes through the
/// customer's own role), with `extra` fields merged in.
fn role_schedule(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut body = serde_json::json!({
        "name": name, "cron": "0 2 * * *", "start": "2024-01-01",
        "destination": "s3://tenant-bucket/calls?region=eu-west-1",
        "chorus_token_ref": "aws-role:arn:aws:iam::123456789012:role/portshift-export?secret=arn:aws:secretsmanager:eu-west-1:123456789012:secret:chorus-AbC",
        "s3_ref": "aws-role:arn:aws:iam::123456789012:role/portshift-export",
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// The schedule's layout and read-back verification, through the JSON API and the
/// console form (one model): bad values are reported against their fields and nothing
/// is stored; good ones are stored in the schedule's run template, which every run
/// copies; leaving them out means plain and no verification.
#[tokio::test]
async fn schedules_take_layout_and_verify_after_from_the_api_and_the_form() {
    let w = world().await;
    let c = cell(&w, 0).await;
    // A trial has no schedules (docs/billing.md).
    on_team_plan(&w.store, &c.org).await;
    let admin = c.sessions[1].1.clone().unwrap();
    let api = format!("/api/v1/orgs/{}/schedules", c.org);
    let before = w.store.schedules_of(&c.org).await.unwrap().len();

    let (status, json) = post(
        &w,
        &api,
        &admin,
        role_schedule(
            "bad",
            serde_json::json!({"layout": "zip", "verify_after": "perhaps"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{json}");
    let fields = &json["error"]["fields"];
    assert!(
        fields["layout"].as_str().unwrap().contains("bagit"),
        "{json}"
    );
    assert!(fields["verify_after"].is_string(), "{json}");
    assert_eq!(w.store.schedules_of(&c.org).await.unwrap().len(), before);

    let (status, json) = post(
        &w,
        &api,
        &admin,
        role_schedule(
            "bagged",
            serde_json::json!({"layout": "bagit", "verify_after": true}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    assert_eq!(json["layout"], "bagit", "{json}");
    assert_eq!(json["verify_after"], true, "{json}");
    let stored = w
        .store
        .schedule(json["id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(stored.template.options.layout, pipeline::Layout::Bagit);
    assert!(stored.template.options.verify_after);

    let (status, json) = post(
        &w,
        &api,
        &admin,
        role_schedule("defaults", serde_json::json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    let stored = w
        .store
        .schedule(json["id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(stored.template.options, pipeline::ExportOptions::default());

    // The console form: the same checks, the same fields.
    let path = format!("/orgs/{}/schedules", c.org);
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let body = role_schedule("form", serde_json::json!({}));
    let form = |extra: &str| {
        let mut f = format!("csrf={}", admin.1);
        for (k, v) in body.as_object().unwrap() {
            f.push_str(&format!("&{k}={}", enc(v.as_str().unwrap())));
        }
        f.push_str("&media=true&transcript=true&metadata=true");
        f.push_str(extra);
        f
    };
    let count = w.store.schedules_of(&c.org).await.unwrap().len();
    let (status, html, _) = page(
        &w.state,
        "POST",
        &path,
        Some(&admin),
        Some(form("&layout=tarball&verify_after=sometimes")),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{html}");
    assert!(html.contains("id=\"error-layout\""), "{html}");
    assert!(html.contains("id=\"error-verify_after\""), "{html}");
    assert_eq!(w.store.schedules_of(&c.org).await.unwrap().len(), count);
    // The page offers both fields.
    assert!(html.contains("name=\"layout\"") && html.contains("name=\"verify_after\""));

    let (status, _, headers) = page(
        &w.state,
        "POST",
        &path,
        Some(&admin),
        Some(form("&layout=bagit&verify_after=true")),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], path.as_str());
    let all = w.store.schedules_of(&c.org).await.unwrap();
    assert_eq!(all.len(), count + 1);
    let made = all.iter().find(|s| s.name == "form").unwrap();
    assert_eq!(made.template.options.layout, pipeline::Layout::Bagit);
    assert!(made.template.options.verify_after);
}
