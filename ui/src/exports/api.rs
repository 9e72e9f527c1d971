//! The JSON handlers of exports and jobs.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::json;

use super::{ExportForm, HistoryQuery, RetryForm, history_page};
use crate::ctx;
use crate::respond::{ApiResult, Denied, body, invalid};
use crate::roles::Action;
use crate::state::Shared;

pub(crate) async fn list_jobs(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult {
    ctx::org_api(&state, &headers, &org, Action::ViewJobs, false).await?;
    let h = history_page(&state, &org, &q).await?;
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

pub(crate) async fn start_export(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let c = ctx::org_api(&state, &headers, &org, Action::StartExport, true).await?;
    let f: ExportForm = body(&raw)?;
    let spec = match super::validate(&f, &state.tenant_trust()) {
        Ok(s) => s,
        Err(e) => return Ok(invalid(&e)),
    };
    let job = super::start(&state, &c, spec, &f).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"job": job.to_string(), "status": "running", "page": format!("/orgs/{org}/jobs/{job}")})),
    )
        .into_response())
}

pub(crate) async fn get_job(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, job)): Path<(String, String)>,
) -> ApiResult {
    ctx::org_api(&state, &headers, &org, Action::ViewJobs, false).await?;
    let job = ctx::job_in_org(&state, &org, &job).await?;
    Ok(Json(super::job_view(&state, &job).await?).into_response())
}

pub(crate) async fn cancel_job(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, job)): Path<(String, String)>,
) -> ApiResult {
    let c = ctx::org_api(&state, &headers, &org, Action::CancelExport, true).await?;
    let job = ctx::job_in_org(&state, &org, &job).await?;
    super::cancel(&state, &c, &job).await?;
    let status = state.store.job(&job).await.map_err(Denied::from)?.status;
    Ok(Json(json!({"job": job.to_string(), "status": status.as_str()})).into_response())
}

pub(crate) async fn retry_job(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, job)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    let c = ctx::org_api(&state, &headers, &org, Action::RetryFailed, true).await?;
    let job = ctx::job_in_org(&state, &org, &job).await?;
    let f: RetryForm = body(&raw)?;
    let n = super::retry(&state, &c, &job, &f).await?;
    Ok(Json(json!({"job": job.to_string(), "replayed": n})).into_response())
}
