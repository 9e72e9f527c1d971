//! The HTML handlers of the settings page.

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::{check_days, erase_org, pages};
use crate::ctx::{OrgCtx, csrf, org_ctx};
use crate::respond::{Denied, refuse};
use crate::roles::Action;
use crate::state::Shared;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/orgs/{org}/settings", get(settings))
        .route("/orgs/{org}/settings/retention", post(set_retention))
        .route("/orgs/{org}/settings/delete", post(delete_org))
}

async fn settings(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ManageRetention);
    settings_page(&state, &c, None).await
}

/// The settings page: the retention facts from the store and the organisation's AWS
/// ExternalId (made on first view).
async fn settings_page(state: &Shared, c: &OrgCtx, notice: Option<String>) -> Response {
    let facts = pages::RetentionFacts {
        oldest_job_ms: state
            .accounts
            .oldest_job_ms(&c.org.id)
            .await
            .unwrap_or(None),
        audit_days: state.retention.audit_days,
    };
    let billing = match crate::billing::card_facts(state, &c.org).await {
        Ok(b) => b,
        Err(d) => return refuse(d, Some(c.nav())),
    };
    match state.store.aws_external_id(&c.org.id).await {
        Ok(external_id) => Html(pages::settings(
            c.nav(),
            &c.org,
            c.role,
            facts,
            &billing,
            &external_id,
            notice,
        ))
        .into_response(),
        Err(e) => refuse(e.into(), Some(c.nav())),
    }
}

#[derive(Deserialize)]
struct RetentionForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    days: String,
}

async fn set_retention(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Form(f): Form<RetentionForm>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ManageRetention);
    csrf!(c, f.csrf.as_deref());
    let days = match check_days(&f.days) {
        Ok(d) => d,
        Err(d) => return refuse(d, Some(c.nav())),
    };
    if let Err(d) = super::set_retention(&state, &c, days).await {
        return refuse(d, Some(c.nav()));
    }
    let mut c = c;
    c.org.retention_days = days;
    settings_page(
        &state,
        &c,
        Some(format!("Job history is now kept {days} days.")),
    )
    .await
}

#[derive(Deserialize)]
struct DeleteForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    confirm: String,
}

async fn delete_org(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Form(f): Form<DeleteForm>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::DeleteOrganisation);
    csrf!(c, f.csrf.as_deref());
    if f.confirm.trim() != c.org.name {
        return refuse(
            Denied::Invalid("Type the organisation's exact name to confirm the deletion.".into()),
            Some(c.nav()),
        );
    }
    match erase_org(&state, &org).await {
        Ok(()) => Redirect::to("/orgs").into_response(),
        Err(d) => refuse(d, Some(c.nav())),
    }
}
