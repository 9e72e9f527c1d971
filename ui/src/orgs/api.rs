//! The JSON handlers of organisations and members.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use pipeline::accounts::Role;
use serde::Deserialize;
use serde_json::json;

use super::{check_org_name, do_change, do_invite};
use crate::ctx;
use crate::layout::Errors;
use crate::respond::{ApiResult, Denied, body, csrf_header, invalid};
use crate::roles::Action;
use crate::state::Shared;

#[derive(Deserialize)]
struct NewOrg {
    #[serde(default)]
    name: String,
}

pub(crate) async fn create_org(
    State(state): State<Shared>,
    headers: HeaderMap,
    raw: Bytes,
) -> ApiResult {
    let s = ctx::verified_session(&state, &headers).await?;
    ctx::check_csrf(&s, csrf_header(&headers))?;
    let b: NewOrg = body(&raw)?;
    let name = check_org_name(&b.name).map_err(|m| Errors::from([("name", m)]));
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

pub(crate) async fn list_members(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    ctx::org_api(&state, &headers, &org, Action::ViewMembers, false).await?;
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

pub(crate) async fn invite_member(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let c = ctx::org_api(&state, &headers, &org, Action::ManageMembers, true).await?;
    let b: Invite = body(&raw)?;
    match do_invite(&state, &c, &b.email, &b.role).await {
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

pub(crate) async fn change_role(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, user)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    let c = ctx::org_api(&state, &headers, &org, Action::ManageMembers, true).await?;
    let b: RoleBody = body(&raw)?;
    let role: Role = b.role.parse().map_err(Denied::Invalid)?;
    do_change(&state, &c, &user, Some(role)).await?;
    Ok(Json(json!({"user_id": user, "role": role.as_str()})).into_response())
}

pub(crate) async fn remove_member(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, user)): Path<(String, String)>,
) -> ApiResult {
    let c = ctx::org_api(&state, &headers, &org, Action::ManageMembers, true).await?;
    do_change(&state, &c, &user, None).await?;
    Ok(Json(json!({"user_id": user, "removed": true})).into_response())
}

pub(crate) async fn audit(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    ctx::org_api(&state, &headers, &org, Action::ViewAudit, false).await?;
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
