//! The JSON API (`/api/v1/...`): everything the pages do, behind the same session cookie
//! (writes also need the session's CSRF token in `X-CSRF-Token`), rate limited per
//! client, with errors of one stable shape: `{"error": {"code", "message", "fields"?}}`.
//! The routes, and the OpenAPI document, come from `roles::API_ROUTES`.

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use axum::{Json, Router};
use pipeline::accounts::{RateDecision, Role};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::{ClientKey, Shared};
use crate::ctx::{self, Denied, OrgCtx};
use crate::exports::{self, ExportForm, RetryForm};
use crate::pages::Errors;
use crate::roles::{API_ROUTES, Action, ApiRoute, PUBLIC_API_ROUTES};
use crate::schedules;
use crate::web::{self, HistoryQuery};

pub struct ApiError(Denied);

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        ApiError(d)
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

pub(crate) fn invalid(errors: &Errors) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"error": {
            "code": "invalid",
            "message": "Some fields are not valid: see fields.",
            "fields": errors,
        }})),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self.0 {
            Denied::SignIn => error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Sign in first: POST /api/v1/session with your e-mail and password.",
            ),
            Denied::NotFound(m) => error(StatusCode::NOT_FOUND, "not_found", &m),
            Denied::Forbidden(m) => error(StatusCode::FORBIDDEN, "forbidden", &m),
            Denied::Csrf => error(
                StatusCode::FORBIDDEN,
                "csrf",
                "Send the session's CSRF token (GET /api/v1/me: csrf_token) in the X-CSRF-Token header.",
            ),
            Denied::RateLimited(secs) => {
                let mut r = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    &format!("Too many requests from your network: retry after {secs} seconds."),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                r
            }
            Denied::Invalid(m) => error(StatusCode::BAD_REQUEST, "bad_request", &m),
            Denied::Conflict(m) => error(StatusCode::CONFLICT, "conflict", &m),
            Denied::Internal(m) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &format!("{m}. Try again; if it keeps failing, tell your portshift operator."),
            ),
        }
    }
}

type ApiResult = Result<Response, ApiError>;

pub(crate) fn csrf_header(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-csrf-token").and_then(|v| v.to_str().ok())
}

async fn org_ctx(
    state: &Shared,
    headers: &HeaderMap,
    org: &str,
    action: Action,
    write: bool,
) -> Result<OrgCtx, Denied> {
    let c = ctx::org(state, headers, org, action).await?;
    if write {
        ctx::check_csrf(&c.session, csrf_header(headers))?;
    }
    Ok(c)
}

pub(crate) fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, Denied> {
    let bytes = if bytes.is_empty() {
        &b"{}"[..]
    } else {
        &bytes[..]
    };
    serde_json::from_slice(bytes).map_err(|e| {
        Denied::Invalid(format!(
            "the request body is not the expected JSON (line {} column {}): see /api/v1/openapi.json",
            e.line(),
            e.column()
        ))
    })
}

/// The handler of each table entry.
fn handler(route: &ApiRoute) -> MethodRouter<Shared> {
    match route.name {
        "me" => get(me),
        "create_org" => post(create_org),
        "list_jobs" => get(list_jobs),
        "start_export" => post(start_export),
        "get_job" => get(get_job),
        "cancel_job" => post(cancel_job),
        "retry_job" => post(retry_job),
        "list_members" => get(list_members),
        "invite_member" => post(invite_member),
        "change_role" => put(change_role),
        "remove_member" => delete(remove_member),
        "audit" => get(audit),
        "list_schedules" => get(list_schedules),
        "create_schedule" => post(create_schedule),
        "pause_schedule" => post(pause_schedule),
        "resume_schedule" => post(resume_schedule),
        "delete_schedule" => delete(delete_schedule),
        "set_retention" => put(set_retention),
        "aws_external_id" => get(aws_external_id),
        "billing" => get(billing),
        "billing_checkout" => post(billing_checkout),
        "billing_portal" => post(billing_portal),
        "delete_org" => delete(delete_org),
        "sign_in" => post(sign_in),
        "my_data" => get(crate::account::api_my_data),
        "change_password" => put(crate::account::api_change_password),
        "delete_me" => delete(crate::account::api_delete_me),
        "my_invitations" => get(crate::account::api_my_invitations),
        "accept_invitation" => post(crate::account::api_accept_invitation),
        "decline_invitation" => post(crate::account::api_decline_invitation),
        "resend_verification" => post(crate::account::api_resend_verification),
        "sign_up" => post(crate::account::api_sign_up),
        "verify_email" => post(crate::account::api_verify_email),
        "password_reset" => post(crate::account::api_password_reset),
        "password_reset_confirm" => post(crate::account::api_password_reset_confirm),
        "openapi" => get(openapi),
        other => unreachable!("API route {other} has no handler"),
    }
}

pub fn routes(state: Shared) -> Router<Shared> {
    let mut r = Router::new();
    let mut paths: Vec<(&str, MethodRouter<Shared>)> = Vec::new();
    for route in API_ROUTES.iter().chain(PUBLIC_API_ROUTES) {
        if let Some((_, m)) = paths.iter_mut().find(|(p, _)| *p == route.path) {
            let merged = std::mem::take(m).merge(handler(route));
            *m = merged;
        } else {
            paths.push((route.path, handler(route)));
        }
    }
    for (p, m) in paths {
        r = r.route(p, m);
    }
    r.fallback(|| async {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            "No such API route: see /api/v1/openapi.json.",
        )
    })
    .layer(middleware::from_fn_with_state(state, rate_limit))
}

/// Counts every API request against the client's limit.
async fn rate_limit(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    req: Request,
    next: Next,
) -> Response {
    let (limit, window) = state.limits.api;
    match state.accounts.hit(&key, "api", window, limit).await {
        Ok(RateDecision::Allowed { .. }) => next.run(req).await,
        Ok(RateDecision::Refused { retry_after_s }) => {
            state.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            ApiError(Denied::RateLimited(retry_after_s)).into_response()
        }
        Err(e) => ApiError(e.into()).into_response(),
    }
}

#[derive(Deserialize)]
struct SignIn {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

impl Drop for SignIn {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

async fn sign_in(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    raw: Bytes,
) -> ApiResult {
    web::sign_in_allowed(&state, &key).await?;
    let b: SignIn = body(&raw)?;
    match web::authenticate(&state, &b.email, &b.password).await? {
        Some((user, token, csrf)) => {
            let mut r =
                Json(json!({"user": {"id": user.id, "email": user.email}, "csrf_token": csrf}))
                    .into_response();
            if let Ok(v) = HeaderValue::from_str(&crate::auth::session_cookie(&token)) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            Ok(r)
        }
        None => Ok(error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Wrong e-mail address or password: check both and try again.",
        )),
    }
}

async fn me(State(state): State<Shared>, headers: HeaderMap) -> ApiResult {
    let s = ctx::session(&state, &headers).await?;
    let orgs = state
        .accounts
        .orgs_of(&s.user.id)
        .await
        .map_err(Denied::from)?;
    Ok(Json(json!({
        "user": {"id": s.user.id, "email": s.user.email},
        "email_verified": s.email_verified,
        "csrf_token": s.csrf_token,
        "organisations": orgs.iter().map(|(o, r)| json!({"id": o.id, "name": o.name, "role": r.as_str()})).collect::<Vec<_>>(),
    }))
    .into_response())
}

#[derive(Deserialize)]
struct NewOrg {
    #[serde(default)]
    name: String,
}

async fn create_org(State(state): State<Shared>, headers: HeaderMap, raw: Bytes) -> ApiResult {
    let s = ctx::verified_session(&state, &headers).await?;
    ctx::check_csrf(&s, csrf_header(&headers))?;
    let b: NewOrg = body(&raw)?;
    let name = web::check_org_name(&b.name).map_err(|m| {
        let mut e = Errors::new();
        e.insert("name", m);
        e
    });
    let name = match name {
        Ok(n) => n,
        Err(e) => return Ok(invalid(&e)),
    };
    let o = state
        .accounts
        .create_org(&name, &s.user)
        .await
        .map_err(Denied::from)?;
    state
        .accounts
        .audit(&o.id, &s.user.email, "org.created", &name)
        .await
        .map_err(Denied::from)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": o.id, "name": o.name, "role": "owner"})),
    )
        .into_response())
}

async fn list_jobs(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult {
    org_ctx(&state, &headers, &org, Action::ViewJobs, false).await?;
    let h = web::history_page(&state, &org, &q).await?;
    Ok(Json(json!({
        "jobs": h.jobs.iter().map(|j| json!({
            "id": j.id.to_string(),
            "status": j.status.as_str(),
            "started_by": j.started_by,
            "created_ms": j.created_ms,
            "finished_ms": j.finished_ms,
            "files": j.files,
            "bytes": j.bytes,
        })).collect::<Vec<_>>(),
        "total": h.total,
        "page": h.page,
        "per_page": h.per_page,
    }))
    .into_response())
}

async fn start_export(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let c = org_ctx(&state, &headers, &org, Action::StartExport, true).await?;
    let f: ExportForm = body(&raw)?;
    let spec = match exports::validate(&f, &state.tenant_trust()) {
        Ok(s) => s,
        Err(e) => return Ok(invalid(&e)),
    };
    let job = exports::start(&state, &c, spec, &f).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"job": job.to_string(), "status": "running", "page": format!("/orgs/{org}/jobs/{job}")})),
    )
        .into_response())
}

async fn get_job(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, job)): Path<(String, String)>,
) -> ApiResult {
    org_ctx(&state, &headers, &org, Action::ViewJobs, false).await?;
    let job = ctx::job_in_org(&state, &org, &job).await?;
    let record = state.store.job(&job).await.map_err(Denied::from)?;
    let mut view = crate::live::job_view(&state.store, &state.js, &state.stats, &record)
        .await
        .map_err(Denied::from)?;
    view.signing_public_key = state.signing_keys.current.as_ref().map(|k| k.file());
    Ok(Json(view).into_response())
}

async fn cancel_job(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, job)): Path<(String, String)>,
) -> ApiResult {
    let c = org_ctx(&state, &headers, &org, Action::CancelExport, true).await?;
    let job = ctx::job_in_org(&state, &org, &job).await?;
    exports::cancel(&state, &c, &job).await?;
    let status = state.store.job(&job).await.map_err(Denied::from)?.status;
    Ok(Json(json!({"job": job.to_string(), "status": status.as_str()})).into_response())
}

async fn retry_job(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, job)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    let c = org_ctx(&state, &headers, &org, Action::RetryFailed, true).await?;
    let job = ctx::job_in_org(&state, &org, &job).await?;
    let f: RetryForm = body(&raw)?;
    let n = exports::retry(&state, &c, &job, &f).await?;
    Ok(Json(json!({"job": job.to_string(), "replayed": n})).into_response())
}

async fn list_members(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    org_ctx(&state, &headers, &org, Action::ViewMembers, false).await?;
    let members = state.accounts.members(&org).await.map_err(Denied::from)?;
    let invitations = state
        .accounts
        .invitations(&org)
        .await
        .map_err(Denied::from)?;
    Ok(Json(json!({
        "members": members.iter().map(|m| json!({"user_id": m.user.id, "email": m.user.email, "role": m.role.as_str()})).collect::<Vec<_>>(),
        "invitations": invitations.iter().map(|i| json!({"email": i.email, "role": i.role.as_str(), "invited_by": i.invited_by})).collect::<Vec<_>>(),
    }))
    .into_response())
}

#[derive(Deserialize)]
struct Invite {
    #[serde(default)]
    email: String,
    #[serde(default)]
    role: String,
}

async fn invite_member(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let c = org_ctx(&state, &headers, &org, Action::ManageMembers, true).await?;
    let b: Invite = body(&raw)?;
    match web::do_invite(&state, &c, &b.email, &b.role).await {
        // The same answer whether or not the address has an account.
        Ok((email, role)) => Ok((
            StatusCode::CREATED,
            Json(json!({"email": email, "role": role.as_str(), "status": "invited"})),
        )
            .into_response()),
        Err(e) => Ok(invalid(&e)),
    }
}

#[derive(Deserialize)]
struct RoleBody {
    #[serde(default)]
    role: String,
}

async fn change_role(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, user)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    let c = org_ctx(&state, &headers, &org, Action::ManageMembers, true).await?;
    let b: RoleBody = body(&raw)?;
    let role: Role = b.role.parse().map_err(Denied::Invalid)?;
    web::do_change(&state, &c, &user, Some(role)).await?;
    Ok(Json(json!({"user_id": user, "role": role.as_str()})).into_response())
}

async fn remove_member(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, user)): Path<(String, String)>,
) -> ApiResult {
    let c = org_ctx(&state, &headers, &org, Action::ManageMembers, true).await?;
    web::do_change(&state, &c, &user, None).await?;
    Ok(Json(json!({"user_id": user, "removed": true})).into_response())
}

async fn audit(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    org_ctx(&state, &headers, &org, Action::ViewAudit, false).await?;
    let events = state
        .accounts
        .audit_log(&org, 500)
        .await
        .map_err(Denied::from)?;
    Ok(Json(json!({
        "events": events.iter().map(|e| json!({"at_ms": e.at_ms, "actor": e.actor, "action": e.action, "detail": e.detail})).collect::<Vec<_>>(),
    }))
    .into_response())
}

async fn list_schedules(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    org_ctx(&state, &headers, &org, Action::ManageSchedules, false).await?;
    let listed = schedules::list(&state, &org).await?;
    Ok(Json(json!({
        "schedules": listed.iter().map(schedules::schedule_json).collect::<Vec<_>>(),
    }))
    .into_response())
}

async fn create_schedule(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let c = org_ctx(&state, &headers, &org, Action::ManageSchedules, true).await?;
    let f: schedules::NewSchedule = body(&raw)?;
    let valid = match schedules::validate(&f, &state.tenant_trust()) {
        Ok(v) => v,
        Err(e) => return Ok(invalid(&e)),
    };
    let schedule = schedules::create(&state, &c, valid).await?;
    let listed = schedules::Listed {
        schedule,
        runs: Vec::new(),
    };
    Ok((StatusCode::CREATED, Json(schedules::schedule_json(&listed))).into_response())
}

async fn set_schedule_paused(
    state: &Shared,
    headers: &HeaderMap,
    org: &str,
    schedule: &str,
    paused: bool,
) -> ApiResult {
    let c = org_ctx(state, headers, org, Action::ManageSchedules, true).await?;
    let s = schedules::set_paused(state, &c, schedule, paused).await?;
    Ok(Json(json!({
        "id": s.id,
        "paused": s.paused,
        "next_run_ms": schedules::next_run_ms(&s),
    }))
    .into_response())
}

async fn pause_schedule(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, schedule)): Path<(String, String)>,
) -> ApiResult {
    set_schedule_paused(&state, &headers, &org, &schedule, true).await
}

async fn resume_schedule(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, schedule)): Path<(String, String)>,
) -> ApiResult {
    set_schedule_paused(&state, &headers, &org, &schedule, false).await
}

async fn delete_schedule(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, schedule)): Path<(String, String)>,
) -> ApiResult {
    let c = org_ctx(&state, &headers, &org, Action::ManageSchedules, true).await?;
    let s = schedules::delete(&state, &c, &schedule).await?;
    Ok(Json(json!({"id": s.id, "deleted": true})).into_response())
}

#[derive(Deserialize)]
struct Retention {
    #[serde(default)]
    days: Value,
}

async fn aws_external_id(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    org_ctx(&state, &headers, &org, Action::ManageSchedules, false).await?;
    let id = state
        .store
        .aws_external_id(&org)
        .await
        .map_err(Denied::from)?;
    Ok(Json(json!({
        "external_id": id,
        "reference": "aws-role:<role ARN>?secret=<secret ARN>",
    }))
    .into_response())
}

async fn set_retention(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let c = org_ctx(&state, &headers, &org, Action::ManageRetention, true).await?;
    let b: Retention = body(&raw)?;
    let days = web::check_days(&match &b.days {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })?;
    state
        .accounts
        .set_retention(&org, days)
        .await
        .map_err(Denied::from)?;
    state
        .accounts
        .audit(
            &org,
            &c.session.user.email,
            "retention.changed",
            &format!("{days} days"),
        )
        .await
        .map_err(Denied::from)?;
    Ok(Json(json!({"retention_days": days})).into_response())
}

async fn billing(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    let c = org_ctx(&state, &headers, &org, Action::ViewBilling, false).await?;
    Ok(
        Json(crate::billing::summary(&state, &c.org.id, &c.org.billing_plan).await?)
            .into_response(),
    )
}

#[derive(Deserialize)]
struct CheckoutBody {
    #[serde(default)]
    plan: String,
}

async fn billing_checkout(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let c = org_ctx(&state, &headers, &org, Action::ManageBilling, true).await?;
    let b: CheckoutBody = body(&raw)?;
    Ok(crate::billing::api_checkout(&state, &c, &b.plan).await?)
}

async fn billing_portal(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    let c = org_ctx(&state, &headers, &org, Action::ManageBilling, true).await?;
    Ok(crate::billing::api_portal(&state, &c).await?)
}

async fn delete_org(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    let _c = org_ctx(&state, &headers, &org, Action::DeleteOrganisation, true).await?;
    web::erase_org(&state, &org).await?;
    Ok(Json(json!({"deleted": org})).into_response())
}

/// The OpenAPI 3.1 document, generated from the route table.
pub fn openapi_document() -> Value {
    let mut paths = serde_json::Map::new();
    for r in API_ROUTES.iter().chain(PUBLIC_API_ROUTES) {
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let roles: Vec<&str> = match r.action {
            None => vec!["any signed-in user"],
            Some(a) => crate::roles::PERMISSIONS
                .iter()
                .find(|(x, _)| *x == a)
                .map(|(_, roles)| roles.iter().map(|r| r.as_str()).collect())
                .unwrap_or_default(),
        };
        let public = PUBLIC_API_ROUTES.iter().any(|p| p.name == r.name);
        let op = json!({
            "operationId": r.name,
            "summary": r.summary,
            "description": if public { "Public.".to_string() } else { format!("Allowed roles: {}. Writes need the X-CSRF-Token header.", roles.join(", ")) },
            "parameters": params,
            "security": if public { json!([]) } else { json!([{"session": []}]) },
            "responses": {
                r.ok.to_string(): {"description": "success", "content": {"application/json": {}}},
                "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method.to_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "portshift console API", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {"session": {"type": "apiKey", "in": "cookie", "name": crate::auth::SESSION_COOKIE}},
            "schemas": {"Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "enum": ["unauthenticated", "not_found", "forbidden", "csrf", "rate_limited", "bad_request", "conflict", "invalid", "internal"]},
                        "message": {"type": "string"},
                        "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                }},
            }},
        },
    })
}

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}
