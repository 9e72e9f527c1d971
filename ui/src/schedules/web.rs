//! The HTML handlers of schedules.

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::pages;
use crate::ctx::{csrf, org_ctx};
use crate::layout::Errors;
use crate::respond::{CsrfOnly, refuse};
use crate::roles::Action;
use crate::schedules;
use crate::state::Shared;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/orgs/{org}/schedules",
            get(schedules_page).post(create_schedule),
        )
        .route(
            "/orgs/{org}/schedules/{schedule}/pause",
            post(pause_schedule),
        )
        .route(
            "/orgs/{org}/schedules/{schedule}/resume",
            post(resume_schedule),
        )
        .route(
            "/orgs/{org}/schedules/{schedule}/delete",
            post(delete_schedule),
        )
}

async fn schedules_page(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ManageSchedules);
    match schedules::list(&state, &org).await {
        Ok(list) => Html(pages::schedules(
            c.nav(),
            &c.org,
            list,
            schedules::ScheduleValues::default(),
            &Errors::new(),
        ))
        .into_response(),
        Err(d) => refuse(d, Some(c.nav())),
    }
}

async fn create_schedule(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Form(f): Form<schedules::NewSchedule>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ManageSchedules);
    csrf!(c, f.csrf.as_deref());
    let result = match schedules::validate(&f, &state.tenant_trust()) {
        Ok(valid) => schedules::create(&state, &c, valid).await.map_err(Err),
        Err(errors) => Err(Ok(errors)),
    };
    match result {
        Ok(_) => Redirect::to(&format!("/orgs/{org}/schedules")).into_response(),
        Err(Ok(errors)) => match schedules::list(&state, &org).await {
            Ok(list) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Html(pages::schedules(c.nav(), &c.org, list, f.values(), &errors)),
            )
                .into_response(),
            Err(d) => refuse(d, Some(c.nav())),
        },
        Err(Err(d)) => refuse(d, Some(c.nav())),
    }
}

async fn set_schedule_paused(
    state: Shared,
    headers: HeaderMap,
    org: String,
    schedule: String,
    f: CsrfOnly,
    paused: bool,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ManageSchedules);
    csrf!(c, f.csrf.as_deref());
    match schedules::set_paused(&state, &c, &schedule, paused).await {
        Ok(_) => Redirect::to(&format!("/orgs/{org}/schedules")).into_response(),
        Err(d) => refuse(d, Some(c.nav())),
    }
}

async fn pause_schedule(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, schedule)): Path<(String, String)>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    set_schedule_paused(state, headers, org, schedule, f, true).await
}

async fn resume_schedule(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, schedule)): Path<(String, String)>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    set_schedule_paused(state, headers, org, schedule, f, false).await
}

async fn delete_schedule(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, schedule)): Path<(String, String)>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ManageSchedules);
    csrf!(c, f.csrf.as_deref());
    match schedules::delete(&state, &c, &schedule).await {
        Ok(_) => Redirect::to(&format!("/orgs/{org}/schedules")).into_response(),
        Err(d) => refuse(d, Some(c.nav())),
    }
}
