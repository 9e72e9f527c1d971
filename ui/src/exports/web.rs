//! The HTML handlers of exports and jobs: the job history, the export form, the live job
//! page with its Server-Sent Events stream, cancel and retry.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::{ExportForm, HistoryQuery, RetryForm, history_page, pages};
use crate::ctx::{self, OrgCtx, csrf, org_ctx};
use crate::layout::Errors;
use crate::respond::{CsrfOnly, Denied, Page, refuse};
use crate::roles::{Action, allows};
use crate::state::{AppState, Shared};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/orgs/{org}/jobs", get(history))
        .route(
            "/orgs/{org}/exports/new",
            get(new_export).post(start_export),
        )
        .route("/orgs/{org}/jobs/{job}", get(job_page))
        .route("/orgs/{org}/jobs/{job}/events", get(job_events))
        .route("/orgs/{org}/jobs/{job}/cancel", post(cancel_job))
        .route("/orgs/{org}/jobs/{job}/retry", post(retry_job))
}

async fn history(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ViewJobs);
    match history_page(&state, &org, &q).await {
        Ok(h) => Html(pages::history(c.nav(), &c.org, h)).into_response(),
        Err(d) => refuse(d, Some(c.nav())),
    }
}

async fn new_export(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::StartExport);
    Html(pages::new_export(
        c.nav(),
        &c.org,
        super::default_values(),
        &Errors::new(),
    ))
    .into_response()
}

async fn start_export(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Form(f): Form<ExportForm>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::StartExport);
    csrf!(c, f.csrf.as_deref());
    let spec = match super::validate(&f, &state.tenant_trust()) {
        Ok(s) => s,
        Err(errors) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Html(pages::new_export(c.nav(), &c.org, f.values(), &errors)),
            )
                .into_response();
        }
    };
    match super::start(&state, &c, spec, &f).await {
        Ok(job) => Redirect::to(&format!("/orgs/{org}/jobs/{job}")).into_response(),
        Err(d) => refuse(d, Some(c.nav())),
    }
}

async fn render_panel(
    state: &AppState,
    c: &OrgCtx,
    job: &pipeline::JobId,
) -> Result<(crate::live::JobView, String), Denied> {
    let view = super::job_view(state, job).await?;
    let panel = pages::live_panel(
        &view,
        &c.org.id,
        &c.session.csrf_token,
        allows(c.role, Action::RetryFailed),
        allows(c.role, Action::CancelExport),
    );
    Ok((view, panel))
}

/// The job a job route names, once it is known to be the organisation's (the caller's
/// role and, for a form, its CSRF token are checked before it, in `ctx`); otherwise the
/// not-found page.
async fn job_of(state: &AppState, c: &OrgCtx, job: &str) -> Result<pipeline::JobId, Response> {
    ctx::job_in_org(state, &c.org.id, job)
        .await
        .map_err(|d| c.refuse(d))
}

/// The page context and job of a job page or its event stream: the caller may view the
/// organisation's jobs, and the job is the organisation's; otherwise the refusal page.
async fn viewed_job(
    state: &AppState,
    headers: &HeaderMap,
    org: &str,
    job: &str,
) -> Result<(OrgCtx, pipeline::JobId), Response> {
    let c = ctx::org_page(state, headers, org, Action::ViewJobs).await?;
    let job = job_of(state, &c, job).await?;
    Ok((c, job))
}

async fn job_page(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, job)): Path<(String, String)>,
) -> Page {
    let (c, job) = viewed_job(&state, &headers, &org, &job).await?;
    let (view, panel) = render_panel(&state, &c, &job)
        .await
        .map_err(|d| c.refuse(d))?;
    Ok(Html(pages::job(c.nav(), &c.org, &view, panel)).into_response())
}

async fn job_events(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, job)): Path<(String, String)>,
) -> Page {
    let (c, job) = viewed_job(&state, &headers, &org, &job).await?;
    let stream =
        futures::stream::unfold((state, c, job, false), |(state, c, job, done)| async move {
            if done {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let (event, finished) = match render_panel(&state, &c, &job).await {
                Ok((view, panel)) => {
                    let panel = panel.replace(['\n', '\r'], " ");
                    if view.is_final {
                        (Event::default().event("done").data(panel), true)
                    } else {
                        (Event::default().event("update").data(panel), false)
                    }
                }
                Err(_) => (
                    Event::default()
                        .event("error")
                        .data("could not read the job; retrying"),
                    false,
                ),
            };
            Some((Ok::<_, Infallible>(event), (state, c, job, finished)))
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// What the job page's buttons ask for, with their forms.
enum JobChange<'a> {
    Cancel(&'a CsrfOnly),
    Retry(&'a RetryForm),
}

/// Cancel and retry: the caller's role for the change, the form's CSRF token and that
/// the job is the organisation's are checked, in this order; then the change, and back
/// to the job page.
async fn change_job(
    state: &AppState,
    headers: &HeaderMap,
    (org, job): (String, String),
    change: JobChange<'_>,
) -> Page {
    let (action, csrf) = match &change {
        JobChange::Cancel(f) => (Action::CancelExport, f.csrf.as_deref()),
        JobChange::Retry(f) => (Action::RetryFailed, f.csrf.as_deref()),
    };
    let c = ctx::org_form(state, headers, &org, action, csrf).await?;
    let job = job_of(state, &c, &job).await?;
    let done = match change {
        JobChange::Cancel(_) => super::cancel(state, &c, &job).await,
        JobChange::Retry(f) => super::retry(state, &c, &job, f).await.map(|_| ()),
    };
    done.map_err(|d| c.refuse(d))?;
    Ok(Redirect::to(&format!("/orgs/{org}/jobs/{job}")).into_response())
}

async fn cancel_job(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(at): Path<(String, String)>,
    Form(f): Form<CsrfOnly>,
) -> Page {
    change_job(&state, &headers, at, JobChange::Cancel(&f)).await
}

async fn retry_job(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(at): Path<(String, String)>,
    Form(f): Form<RetryForm>,
) -> Page {
    change_job(&state, &headers, at, JobChange::Retry(&f)).await
}
