//! The JSON handlers of schedules.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::json;

use crate::ctx;
use crate::respond::{ApiResult, body, invalid};
use crate::roles::Action;
use crate::schedules;
use crate::state::Shared;

pub(crate) async fn list_schedules(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    ctx::org_api(&state, &headers, &org, Action::ManageSchedules, false).await?;
    let listed = schedules::list(&state, &org).await?;
    Ok(Json(json!({
        "schedules": listed.iter().map(schedules::schedule_json).collect::<Vec<_>>(),
    }))
    .into_response())
}

pub(crate) async fn create_schedule(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let c = ctx::org_api(&state, &headers, &org, Action::ManageSchedules, true).await?;
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
    let c = ctx::org_api(state, headers, org, Action::ManageSchedules, true).await?;
    let s = schedules::set_paused(state, &c, schedule, paused).await?;
    Ok(Json(json!({
        "id": s.id,
        "paused": s.paused,
        "next_run_ms": schedules::next_run_ms(&s),
    }))
    .into_response())
}

pub(crate) async fn pause_schedule(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, schedule)): Path<(String, String)>,
) -> ApiResult {
    set_schedule_paused(&state, &headers, &org, &schedule, true).await
}

pub(crate) async fn resume_schedule(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, schedule)): Path<(String, String)>,
) -> ApiResult {
    set_schedule_paused(&state, &headers, &org, &schedule, false).await
}

pub(crate) async fn delete_schedule(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, schedule)): Path<(String, String)>,
) -> ApiResult {
    let c = ctx::org_api(&state, &headers, &org, Action::ManageSchedules, true).await?;
    let s = schedules::delete(&state, &c, &schedule).await?;
    Ok(Json(json!({"id": s.id, "deleted": true})).into_response())
}
