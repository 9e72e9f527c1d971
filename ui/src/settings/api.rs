//! The JSON handlers of settings: retention, the AWS ExternalId, deleting the
//! organisation.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{check_days, erase_org};
use crate::ctx;
use crate::respond::{ApiResult, Denied, body};
use crate::roles::Action;
use crate::state::Shared;

#[derive(Deserialize)]
struct Retention {
    #[serde(default)]
    days: Value,
}

pub(crate) async fn aws_external_id(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    ctx::org_api(&state, &headers, &org, Action::ManageSchedules, false).await?;
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

pub(crate) async fn set_retention(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let c = ctx::org_api(&state, &headers, &org, Action::ManageRetention, true).await?;
    let b: Retention = body(&raw)?;
    let days = check_days(&match &b.days {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })?;
    super::set_retention(&state, &c, days).await?;
    Ok(Json(json!({"retention_days": days})).into_response())
}

pub(crate) async fn delete_org(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    let _c = ctx::org_api(&state, &headers, &org, Action::DeleteOrganisation, true).await?;
    erase_org(&state, &org).await?;
    Ok(Json(json!({"deleted": org})).into_response())
}
