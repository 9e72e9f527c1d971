//! The HTML side of the console: sign-up, sign-in and sign-out, organisations, members,
//! exports, the live job page (with its Server-Sent Events stream), job history,
//! schedules, audit trail and settings. Every form carries a CSRF token; every handler
//! checks the caller's role with `ctx::org` before it reads or changes anything.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use pipeline::JobStatus;
use pipeline::accounts::{RateDecision, Role};
use serde::Deserialize;

use crate::app::{ClientKey, Shared};
use crate::auth;
use crate::ctx::{self, Denied, OrgCtx};
use crate::exports::{self, ExportForm, RetryForm};
use crate::pages::{self, Errors, Nav};
use crate::roles::{Action, allows, may_change_role};
use crate::schedules;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(index))
        .route("/signin", get(sign_in_form).post(sign_in))
        .route("/signup", get(sign_up_form).post(sign_up))
        .route("/signout", post(sign_out))
        .route("/signout-everywhere", post(sign_out_everywhere))
        .route("/orgs", get(orgs).post(create_org))
        .route("/orgs/{org}", get(org_home))
        .route("/orgs/{org}/jobs", get(history))
        .route(
            "/orgs/{org}/exports/new",
            get(new_export).post(start_export),
        )
        .route("/orgs/{org}/jobs/{job}", get(job_page))
        .route("/orgs/{org}/jobs/{job}/events", get(job_events))
        .route("/orgs/{org}/jobs/{job}/cancel", post(cancel_job))
        .route("/orgs/{org}/jobs/{job}/retry", post(retry_job))
        .route("/orgs/{org}/members", get(members))
        .route("/orgs/{org}/members/invite", post(invite))
        .route("/orgs/{org}/members/{user}/role", post(change_role))
        .route("/orgs/{org}/members/{user}/remove", post(remove_member))
        .route("/orgs/{org}/audit", get(audit))
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
        .route("/orgs/{org}/settings", get(settings))
        .route("/orgs/{org}/settings/retention", post(set_retention))
        .route(
            "/orgs/{org}/settings/billing/checkout",
            post(billing_checkout),
        )
        .route("/orgs/{org}/settings/billing/portal", post(billing_portal))
        .route("/orgs/{org}/settings/delete", post(delete_org))
}

/// How a page says no.
pub(crate) fn refuse(d: Denied, nav: Option<Nav>) -> Response {
    match d {
        Denied::SignIn => Redirect::to("/signin").into_response(),
        Denied::NotFound(m) => (StatusCode::NOT_FOUND, Html(pages::error_page(nav, "Not found", &m))).into_response(),
        Denied::Forbidden(m) => (StatusCode::FORBIDDEN, Html(pages::error_page(nav, "Not allowed", &m))).into_response(),
        Denied::Csrf => (
            StatusCode::FORBIDDEN,
            Html(pages::error_page(
                nav,
                "Form expired",
                "This form's security token is missing or out of date: go back, reload the page and submit it again.",
            )),
        )
            .into_response(),
        Denied::RateLimited(secs) => {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                Html(pages::error_page(
                    nav,
                    "Too many attempts",
                    &format!("Too many attempts from your network: wait {secs} seconds, then try again."),
                )),
            )
                .into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
        Denied::Invalid(m) => (StatusCode::BAD_REQUEST, Html(pages::error_page(nav, "Cannot do that", &m))).into_response(),
        Denied::Conflict(m) => (StatusCode::CONFLICT, Html(pages::error_page(nav, "Cannot do that", &m))).into_response(),
        Denied::Internal(m) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Html(pages::error_page(
                nav,
                "Something went wrong",
                &format!("{m}. Try again; if it keeps failing, tell your portshift operator."),
            )),
        )
            .into_response(),
    }
}

fn nav(c: &OrgCtx) -> Nav {
    Nav {
        email: c.session.user.email.clone(),
        csrf: c.session.csrf_token.clone(),
        org: Some((c.org.id.clone(), c.org.name.clone(), c.role)),
    }
}

macro_rules! org_ctx {
    ($state:expr, $headers:expr, $org:expr, $action:expr) => {
        match ctx::org(&$state, &$headers, &$org, $action).await {
            Ok(c) => c,
            Err(d) => {
                let nav = ctx::session(&$state, &$headers).await.ok().map(|s| Nav {
                    email: s.user.email,
                    csrf: s.csrf_token,
                    org: None,
                });
                return refuse(d, nav);
            }
        }
    };
}

macro_rules! csrf {
    ($c:expr, $token:expr) => {
        if let Err(d) = ctx::check_csrf(&$c.session, $token) {
            return refuse(d, Some(nav(&$c)));
        }
    };
}

async fn index(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match ctx::session(&state, &headers).await {
        Ok(_) => Redirect::to("/orgs").into_response(),
        Err(_) => Redirect::to("/signin").into_response(),
    }
}

/// Reuses or sets the pre-session CSRF cookie for the sign-in and sign-up forms.
pub(crate) fn pre_token(headers: &HeaderMap) -> (String, Option<String>) {
    match auth::cookie(headers, auth::PRE_COOKIE) {
        Some(t) => (t, None),
        None => {
            let t = auth::random_token();
            let c = auth::pre_cookie(&t);
            (t, Some(c))
        }
    }
}

pub(crate) fn with_cookie(mut r: Response, cookie: Option<String>) -> Response {
    if let Some(c) = cookie
        && let Ok(v) = HeaderValue::from_str(&c)
    {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct Notice {
    #[serde(default)]
    notice: Option<String>,
}

async fn sign_in_form(headers: HeaderMap, Query(q): Query<Notice>) -> Response {
    let (pre, set) = pre_token(&headers);
    let notice = q.notice.as_deref().map(|n| match n {
        "signed-out" => "You are signed out.".to_string(),
        "everywhere" => "You are signed out on every device.".to_string(),
        "password-reset" => {
            "Your password is set and every device is signed out: sign in with the new password."
                .to_string()
        }
        "deleted" => "Your account is deleted.".to_string(),
        _ => String::new(),
    });
    with_cookie(
        Html(pages::sign_in(
            &pre,
            "",
            None,
            notice.filter(|n| !n.is_empty()),
        ))
        .into_response(),
        set,
    )
}

#[derive(Deserialize)]
struct Credentials {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

impl Drop for Credentials {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

pub(crate) fn pre_ok(headers: &HeaderMap, submitted: Option<&str>) -> bool {
    match (auth::cookie(headers, auth::PRE_COOKIE), submitted) {
        (Some(c), Some(s)) => auth::tokens_match(&c, s),
        _ => false,
    }
}

/// Counts a sign-in attempt against the client's limit.
pub(crate) async fn sign_in_allowed(state: &crate::app::AppState, key: &str) -> Result<(), Denied> {
    let (limit, window) = state.limits.sign_in;
    match state.accounts.hit(key, "sign_in", window, limit).await? {
        RateDecision::Allowed { .. } => Ok(()),
        RateDecision::Refused { retry_after_s } => {
            state.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            Err(Denied::RateLimited(retry_after_s))
        }
    }
}

/// Checks e-mail and password; on success returns a new session's cookie and records
/// the sign-in in the audit trail of the user's organisations.
pub(crate) async fn authenticate(
    state: &crate::app::AppState,
    email: &str,
    password: &str,
) -> Result<Option<(pipeline::accounts::User, String, String)>, Denied> {
    let Ok(email) = auth::normalise_email(email) else {
        auth::verify_password(password, auth::dummy_hash());
        return Ok(None);
    };
    let found = state.accounts.user_by_email(&email).await?;
    let (user, hash) = match found {
        Some(f) => f,
        None => {
            auth::verify_password(password, auth::dummy_hash());
            state
                .counters
                .failed_sign_ins
                .fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
    };
    let ok = auth::verify_password(password, &hash);
    let orgs = state.accounts.orgs_of(&user.id).await?;
    for (o, _) in &orgs {
        state
            .accounts
            .audit(
                &o.id,
                &user.email,
                if ok { "sign_in" } else { "sign_in.failed" },
                "",
            )
            .await?;
    }
    if !ok {
        state
            .counters
            .failed_sign_ins
            .fetch_add(1, Ordering::Relaxed);
        return Ok(None);
    }
    state.counters.sign_ins.fetch_add(1, Ordering::Relaxed);
    let (token, csrf) = auth::issue_session(&state.accounts, &user).await?;
    Ok(Some((user, token, csrf)))
}

async fn sign_in(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    headers: HeaderMap,
    Form(f): Form<Credentials>,
) -> Response {
    let (pre, set) = pre_token(&headers);
    if !pre_ok(&headers, f.csrf.as_deref()) {
        return with_cookie(
            (
                StatusCode::FORBIDDEN,
                Html(pages::sign_in(
                    &pre,
                    &f.email,
                    Some("The form expired: submit it again.".into()),
                    None,
                )),
            )
                .into_response(),
            set,
        );
    }
    if let Err(d) = sign_in_allowed(&state, &key).await {
        return refuse(d, None);
    }
    match authenticate(&state, &f.email, &f.password).await {
        Ok(Some((_, token, _))) => with_cookie(
            Redirect::to("/orgs").into_response(),
            Some(auth::session_cookie(&token)),
        ),
        Ok(None) => (
            StatusCode::UNAUTHORIZED,
            Html(pages::sign_in(
                &pre,
                &f.email,
                Some("Wrong e-mail address or password: check both and try again.".into()),
                None,
            )),
        )
            .into_response(),
        Err(d) => refuse(d, None),
    }
}

async fn sign_up_form(headers: HeaderMap) -> Response {
    let (pre, set) = pre_token(&headers);
    with_cookie(
        Html(pages::sign_up(&pre, "", &Errors::new())).into_response(),
        set,
    )
}

async fn sign_up(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    headers: HeaderMap,
    Form(f): Form<Credentials>,
) -> Response {
    let (pre, set) = pre_token(&headers);
    if !pre_ok(&headers, f.csrf.as_deref()) {
        let mut e = Errors::new();
        e.insert("email", "The form expired: submit it again.".into());
        return with_cookie(
            (
                StatusCode::FORBIDDEN,
                Html(pages::sign_up(&pre, &f.email, &e)),
            )
                .into_response(),
            set,
        );
    }
    if let Err(d) = sign_in_allowed(&state, &key).await {
        return refuse(d, None);
    }
    // No session here, new address or not: the answer is "check your inbox" either way
    // (see account::sign_up), so it tells nobody whether the address has an account.
    match crate::account::sign_up(&state, &f.email, &f.password).await {
        Ok(Ok(email)) => Html(crate::account_pages::check_inbox(&email)).into_response(),
        Ok(Err(errors)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(pages::sign_up(&pre, &f.email, &errors)),
        )
            .into_response(),
        Err(d) => refuse(d, None),
    }
}

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: Option<String>,
}

async fn sign_out(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Response {
    if let Ok(s) = ctx::session(&state, &headers).await {
        if ctx::check_csrf(&s, f.csrf.as_deref()).is_err() {
            return refuse(Denied::Csrf, None);
        }
        if let Some(token) = auth::cookie(&headers, auth::SESSION_COOKIE) {
            let _ = state
                .accounts
                .delete_session(&auth::sha256_hex(token.as_bytes()))
                .await;
        }
    }
    with_cookie(
        Redirect::to("/signin?notice=signed-out").into_response(),
        Some(auth::clear_session_cookie()),
    )
}

async fn sign_out_everywhere(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let s = match ctx::session(&state, &headers).await {
        Ok(s) => s,
        Err(d) => return refuse(d, None),
    };
    if ctx::check_csrf(&s, f.csrf.as_deref()).is_err() {
        return refuse(Denied::Csrf, None);
    }
    if let Err(e) = state.accounts.delete_sessions_of(&s.user.id).await {
        return refuse(e.into(), None);
    }
    with_cookie(
        Redirect::to("/signin?notice=everywhere").into_response(),
        Some(auth::clear_session_cookie()),
    )
}

async fn orgs(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let s = match ctx::session(&state, &headers).await {
        Ok(s) => s,
        Err(d) => return refuse(d, None),
    };
    let list = match state.accounts.orgs_of(&s.user.id).await {
        Ok(l) => l,
        Err(e) => return refuse(e.into(), None),
    };
    let mine = match my_invitations(&state, &s).await {
        Ok(m) => m,
        Err(d) => return refuse(d, None),
    };
    let nav = Nav {
        email: s.user.email,
        csrf: s.csrf_token,
        org: None,
    };
    Html(pages::orgs(nav, list, &Errors::new(), mine)).into_response()
}

/// The invitations panel: shown only to a verified owner of the address.
async fn my_invitations(
    state: &crate::app::AppState,
    s: &pipeline::accounts::Session,
) -> Result<crate::account_pages::MyInvitations, Denied> {
    use crate::account_pages::MyInvitations;
    if !s.email_verified {
        return Ok(MyInvitations::Unverified {
            email: s.user.email.clone(),
        });
    }
    Ok(MyInvitations::Verified(
        state.accounts.invitations_for(&s.user.email).await?,
    ))
}

#[derive(Deserialize)]
struct OrgForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    name: String,
}

pub(crate) fn check_org_name(name: &str) -> Result<String, String> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 80 {
        Err("Give the organisation a name of 1 to 80 characters.".into())
    } else {
        Ok(n.to_string())
    }
}

async fn create_org(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<OrgForm>,
) -> Response {
    let s = match ctx::session(&state, &headers).await {
        Ok(s) => s,
        Err(d) => return refuse(d, None),
    };
    if ctx::check_csrf(&s, f.csrf.as_deref()).is_err() {
        return refuse(Denied::Csrf, None);
    }
    if !s.email_verified {
        return refuse(ctx::unverified(&s), None);
    }
    let name = match check_org_name(&f.name) {
        Ok(n) => n,
        Err(m) => {
            let list = state.accounts.orgs_of(&s.user.id).await.unwrap_or_default();
            let mine = my_invitations(&state, &s)
                .await
                .unwrap_or(crate::account_pages::MyInvitations::Verified(Vec::new()));
            let mut e = Errors::new();
            e.insert("name", m);
            let nav = Nav {
                email: s.user.email,
                csrf: s.csrf_token,
                org: None,
            };
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Html(pages::orgs(nav, list, &e, mine)),
            )
                .into_response();
        }
    };
    match state.accounts.create_org(&name, &s.user).await {
        Ok(o) => {
            if let Err(e) = state
                .accounts
                .audit(&o.id, &s.user.email, "org.created", &name)
                .await
            {
                return refuse(e.into(), None);
            }
            Redirect::to(&format!("/orgs/{}/jobs", o.id)).into_response()
        }
        Err(e) => refuse(e.into(), None),
    }
}

async fn org_home(Path(org): Path<String>) -> Redirect {
    Redirect::to(&format!("/orgs/{org}/jobs"))
}

#[derive(Deserialize, Default)]
pub(crate) struct HistoryQuery {
    #[serde(default)]
    pub page: Option<i64>,
    #[serde(default)]
    pub status: Option<String>,
}

pub(crate) const PER_PAGE: i64 = 50;

pub(crate) async fn history_page(
    state: &crate::app::AppState,
    org: &str,
    q: &HistoryQuery,
) -> Result<pages::HistoryPage, Denied> {
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse::<JobStatus>().map_err(|_| {
            Denied::Invalid(format!(
                "unknown status {s:?}: use running, needs_credentials, finished, finished_with_failures, failed or cancelled"
            ))
        })?),
    };
    let page = q.page.unwrap_or(1).max(1);
    let (jobs, total) = state
        .accounts
        .job_history(org, status, (page - 1) * PER_PAGE, PER_PAGE)
        .await?;
    Ok(pages::HistoryPage {
        jobs,
        total,
        page,
        per_page: PER_PAGE,
        status: status.map(|s| s.as_str().to_string()),
    })
}

async fn history(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ViewJobs);
    match history_page(&state, &org, &q).await {
        Ok(h) => Html(pages::history(nav(&c), &c.org, h)).into_response(),
        Err(d) => refuse(d, Some(nav(&c))),
    }
}

async fn new_export(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::StartExport);
    Html(pages::new_export(
        nav(&c),
        &c.org,
        exports::default_values(),
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
    let spec = match exports::validate(&f, &state.tenant_trust()) {
        Ok(s) => s,
        Err(errors) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Html(pages::new_export(nav(&c), &c.org, f.values(), &errors)),
            )
                .into_response();
        }
    };
    match exports::start(&state, &c, spec, &f).await {
        Ok(job) => Redirect::to(&format!("/orgs/{org}/jobs/{job}")).into_response(),
        Err(d) => refuse(d, Some(nav(&c))),
    }
}

async fn render_panel(
    state: &crate::app::AppState,
    c: &OrgCtx,
    job: &pipeline::JobId,
) -> Result<(crate::live::JobView, String), Denied> {
    let record = state.store.job(job).await?;
    let mut view = crate::live::job_view(&state.store, &state.js, &state.stats, &record).await?;
    view.signing_public_key = state.signing_keys.current.as_ref().map(|k| k.file());
    let panel = pages::live_panel(
        &view,
        &c.org.id,
        &c.session.csrf_token,
        allows(c.role, Action::RetryFailed),
        allows(c.role, Action::CancelExport),
    );
    Ok((view, panel))
}

async fn job_page(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, job)): Path<(String, String)>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ViewJobs);
    let job = match ctx::job_in_org(&state, &org, &job).await {
        Ok(j) => j,
        Err(d) => return refuse(d, Some(nav(&c))),
    };
    match render_panel(&state, &c, &job).await {
        Ok((view, panel)) => Html(pages::job(nav(&c), &c.org, &view, panel)).into_response(),
        Err(d) => refuse(d, Some(nav(&c))),
    }
}

async fn job_events(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, job)): Path<(String, String)>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ViewJobs);
    let job = match ctx::job_in_org(&state, &org, &job).await {
        Ok(j) => j,
        Err(d) => return refuse(d, Some(nav(&c))),
    };
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
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn cancel_job(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, job)): Path<(String, String)>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::CancelExport);
    csrf!(c, f.csrf.as_deref());
    let job = match ctx::job_in_org(&state, &org, &job).await {
        Ok(j) => j,
        Err(d) => return refuse(d, Some(nav(&c))),
    };
    match exports::cancel(&state, &c, &job).await {
        Ok(()) => Redirect::to(&format!("/orgs/{org}/jobs/{job}")).into_response(),
        Err(d) => refuse(d, Some(nav(&c))),
    }
}

async fn retry_job(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, job)): Path<(String, String)>,
    Form(f): Form<RetryForm>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::RetryFailed);
    csrf!(c, f.csrf.as_deref());
    let job = match ctx::job_in_org(&state, &org, &job).await {
        Ok(j) => j,
        Err(d) => return refuse(d, Some(nav(&c))),
    };
    match exports::retry(&state, &c, &job, &f).await {
        Ok(_) => Redirect::to(&format!("/orgs/{org}/jobs/{job}")).into_response(),
        Err(d) => refuse(d, Some(nav(&c))),
    }
}

async fn members_page(
    state: &crate::app::AppState,
    c: &OrgCtx,
    errors: &Errors,
    notice: Option<String>,
    status: StatusCode,
) -> Response {
    let members = state.accounts.members(&c.org.id).await;
    let invitations = state.accounts.invitations(&c.org.id).await;
    match (members, invitations) {
        (Ok(m), Ok(i)) => (
            status,
            Html(pages::members(nav(c), &c.org, c.role, m, i, errors, notice)),
        )
            .into_response(),
        (Err(e), _) | (_, Err(e)) => refuse(e.into(), Some(nav(c))),
    }
}

async fn members(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ViewMembers);
    members_page(&state, &c, &Errors::new(), None, StatusCode::OK).await
}

#[derive(Deserialize)]
struct InviteForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    email: String,
    #[serde(default)]
    role: String,
}

/// Invites `email` with `role` and mails the address; shared by the page and the API.
/// Nothing here depends on whether the address has an account: nobody joins until a
/// verified owner of the address accepts (`account::accept`).
pub(crate) async fn do_invite(
    state: &crate::app::AppState,
    c: &OrgCtx,
    email: &str,
    role: &str,
) -> Result<(String, Role), Errors> {
    let mut e = Errors::new();
    let email = match auth::normalise_email(email) {
        Ok(m) => m,
        Err(m) => {
            e.insert("email", m);
            String::new()
        }
    };
    let role = match role.parse::<Role>() {
        Ok(r) if may_change_role(c.role, Role::Member, Some(r)) => Some(r),
        Ok(_) => {
            e.insert("role", "Only an owner can invite an owner.".into());
            None
        }
        Err(m) => {
            e.insert("role", m);
            None
        }
    };
    let Some(role) = role.filter(|_| e.is_empty()) else {
        return Err(e);
    };
    state
        .accounts
        .invite(&c.org.id, &email, role, &c.session.user.email)
        .await
        .map_err(|err| {
            let mut e = Errors::new();
            e.insert("email", format!("{err}"));
            e
        })?;
    let link = state
        .mail
        .as_ref()
        .map(|m| m.link("/orgs"))
        .unwrap_or_default();
    crate::mail::send_later(
        state.mail.as_ref(),
        email.clone(),
        "You are invited to an organisation on portshift",
        crate::mail::invitation_body(
            &c.org.name,
            role.as_str(),
            &c.session.user.email,
            &link,
            pipeline::accounts::INVITATION_DAYS,
        ),
    );
    if c.audit(state, "member.invited", &format!("{email} as {role}"))
        .await
        .is_err()
    {
        let mut e = Errors::new();
        e.insert(
            "email",
            "The invitation was made, but the audit trail could not record it: try again in a moment, or tell your operator.".into(),
        );
        return Err(e);
    }
    Ok((email, role))
}

async fn invite(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Form(f): Form<InviteForm>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ManageMembers);
    csrf!(c, f.csrf.as_deref());
    match do_invite(&state, &c, &f.email, &f.role).await {
        Ok((email, _)) => {
            let notice = format!(
                "Invitation sent to {email}: they join once they accept it, signed in with that confirmed address."
            );
            members_page(&state, &c, &Errors::new(), Some(notice), StatusCode::OK).await
        }
        Err(e) => members_page(&state, &c, &e, None, StatusCode::UNPROCESSABLE_ENTITY).await,
    }
}

/// Changes (`Some`) or removes (`None`) a member's role; shared by the page and the API.
pub(crate) async fn do_change(
    state: &crate::app::AppState,
    c: &OrgCtx,
    user: &str,
    new: Option<Role>,
) -> Result<(), Denied> {
    let Some(now) = state.accounts.role_of(&c.org.id, user).await? else {
        return Err(Denied::NotFound(
            "No such member in this organisation: reload the members page.".into(),
        ));
    };
    if !may_change_role(c.role, now, new) {
        return Err(Denied::Forbidden(
            "Only an owner can change an owner's role, make someone an owner or remove an owner."
                .into(),
        ));
    }
    if now == Role::Owner
        && new != Some(Role::Owner)
        && state.accounts.owner_count(&c.org.id).await? <= 1
    {
        return Err(Denied::Conflict(
            "This is the organisation's last owner: make someone else an owner first.".into(),
        ));
    }
    let email = state
        .accounts
        .members(&c.org.id)
        .await?
        .into_iter()
        .find(|m| m.user.id == user)
        .map(|m| m.user.email)
        .unwrap_or_default();
    match new {
        Some(r) => {
            state.accounts.set_role(&c.org.id, user, r).await?;
            c.audit(
                state,
                "member.role_changed",
                &format!("{email}: {now} → {r}"),
            )
            .await?;
        }
        None => {
            state.accounts.remove_member(&c.org.id, user).await?;
            c.audit(state, "member.removed", &format!("{email} (was {now})"))
                .await?;
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct RoleForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    role: String,
}

async fn change_role(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, user)): Path<(String, String)>,
    Form(f): Form<RoleForm>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ManageMembers);
    csrf!(c, f.csrf.as_deref());
    let role = match f.role.parse::<Role>() {
        Ok(r) => r,
        Err(m) => return refuse(Denied::Invalid(m), Some(nav(&c))),
    };
    match do_change(&state, &c, &user, Some(role)).await {
        Ok(()) => Redirect::to(&format!("/orgs/{org}/members")).into_response(),
        Err(d) => refuse(d, Some(nav(&c))),
    }
}

async fn remove_member(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((org, user)): Path<(String, String)>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ManageMembers);
    csrf!(c, f.csrf.as_deref());
    match do_change(&state, &c, &user, None).await {
        Ok(()) => Redirect::to(&format!("/orgs/{org}/members")).into_response(),
        Err(d) => refuse(d, Some(nav(&c))),
    }
}

async fn audit(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ViewAudit);
    match state.accounts.audit_log(&org, 500).await {
        Ok(events) => Html(pages::audit(nav(&c), events)).into_response(),
        Err(e) => refuse(e.into(), Some(nav(&c))),
    }
}

async fn schedules_page(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ManageSchedules);
    match schedules::list(&state, &org).await {
        Ok(list) => Html(pages::schedules(
            nav(&c),
            &c.org,
            list,
            schedules::ScheduleValues::default(),
            &pages::Errors::new(),
        ))
        .into_response(),
        Err(d) => refuse(d, Some(nav(&c))),
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
                Html(pages::schedules(nav(&c), &c.org, list, f.values(), &errors)),
            )
                .into_response(),
            Err(d) => refuse(d, Some(nav(&c))),
        },
        Err(Err(d)) => refuse(d, Some(nav(&c))),
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
        Err(d) => refuse(d, Some(nav(&c))),
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
        Err(d) => refuse(d, Some(nav(&c))),
    }
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
    let b = match crate::billing::summary(state, &c.org.id, &c.org.billing_plan).await {
        Ok(b) => b,
        Err(d) => return refuse(d, Some(nav(c))),
    };
    let billing = pages::BillingFacts {
        schedules: b["limits"]["schedules"].as_u64(),
        exports_per_month: b["limits"]["exports_per_month"].as_u64(),
        exports_this_month: b["usage"]["exports"].as_u64().unwrap_or(0),
        subscription_status: b["subscription_status"].as_str().map(str::to_string),
        on_sale: state
            .stripe
            .as_deref()
            .map(crate::billing::Stripe::plans_on_sale)
            .unwrap_or_default(),
        has_customer: b["has_customer"].as_bool().unwrap_or(false),
    };
    match state.store.aws_external_id(&c.org.id).await {
        Ok(external_id) => Html(pages::settings(
            nav(c),
            &c.org,
            c.role,
            facts,
            &billing,
            &external_id,
            notice,
        ))
        .into_response(),
        Err(e) => refuse(e.into(), Some(nav(c))),
    }
}

#[derive(Deserialize)]
struct RetentionForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    days: String,
}

pub(crate) fn check_days(days: &str) -> Result<i64, Denied> {
    use pipeline::retention::{MAX_RETENTION_DAYS, MIN_RETENTION_DAYS, check_retention_days};
    days.trim()
        .parse::<i64>()
        .ok()
        .and_then(|d| check_retention_days(d).ok())
        .ok_or_else(|| {
            Denied::Invalid(format!(
                "Retention is a whole number of days from {MIN_RETENTION_DAYS} to {MAX_RETENTION_DAYS}."
            ))
        })
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
        Err(d) => return refuse(d, Some(nav(&c))),
    };
    if let Err(e) = state.accounts.set_retention(&org, days).await {
        return refuse(e.into(), Some(nav(&c)));
    }
    if let Err(e) = state
        .accounts
        .audit(
            &org,
            &c.session.user.email,
            "retention.changed",
            &format!("{days} days"),
        )
        .await
    {
        return refuse(e.into(), Some(nav(&c)));
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

/// Owners only: on to Stripe Checkout for a paid plan. The plan changes when Stripe's
/// signed webhook says the subscription is active, never here.
async fn billing_checkout(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Form(f): Form<crate::billing::PlanChoice>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ManageBilling);
    match crate::billing::web_checkout(&state, &c, &f).await {
        Ok(r) => r,
        Err(d) => refuse(d, Some(nav(&c))),
    }
}

/// Owners only: on to Stripe's customer portal (change plan, cancel, invoices).
async fn billing_portal(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ManageBilling);
    match crate::billing::web_portal(&state, &c, f.csrf.as_deref()).await {
        Ok(r) => r,
        Err(d) => refuse(d, Some(nav(&c))),
    }
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
            Some(nav(&c)),
        );
    }
    match erase_org(&state, &org).await {
        Ok(()) => Redirect::to("/orgs").into_response(),
        Err(d) => refuse(d, Some(nav(&c))),
    }
}

/// Deletes an organisation with everything it owns: its Stripe customer first (so its
/// subscription ends), then its jobs' workers on this server and their queue messages,
/// then every row (`Accounts::delete_org`). Its own audit trail goes with it, so the
/// deletion is logged here, by id only.
pub(crate) async fn erase_org(state: &Shared, org: &str) -> Result<(), Denied> {
    if let Some(stripe) = state.stripe.as_deref() {
        stripe.forget(state, org).await?;
    }
    for job in state.accounts.org_jobs(org).await? {
        state.launcher.stop(&job);
        pipeline::topology::purge_job(&state.js, &job).await?;
    }
    state.accounts.delete_org(org).await?;
    tracing::info!(org, "organisation deleted with all its data");
    Ok(())
}
