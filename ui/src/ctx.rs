//! Who is asking and what they may touch, above the shared state and below every area:
//! the session behind a request's cookie and, for organisation routes, the caller's role
//! checked against the permission table. Pages and the JSON API share this and differ
//! only in how they say no: pages through `session_form`, `org_page`, `org_form` and the
//! `org_ctx!` and `csrf!` macros (an error page), the API through `org_api` (a JSON error).

use axum::http::HeaderMap;
use axum::response::Response;
use pipeline::accounts::{Organisation, Role, Session};

use crate::auth;
use crate::layout::Nav;
use crate::respond::{Denied, csrf_header, refuse};
use crate::roles::{Action, allows};
use crate::state::AppState;

pub struct OrgCtx {
    pub session: Session,
    pub org: Organisation,
    pub role: Role,
}

impl OrgCtx {
    /// The page header of this member in this organisation.
    pub fn nav(&self) -> Nav {
        Nav {
            email: self.session.user.email.clone(),
            csrf: self.session.csrf_token.clone(),
            org: Some((self.org.id.clone(), self.org.name.clone(), self.role)),
        }
    }

    /// The refusal page of `d`, with this member's page header.
    pub fn refuse(&self, d: Denied) -> Response {
        refuse(d, Some(self.nav()))
    }

    /// Records an action of this member in the organisation's audit trail. A failed write
    /// fails the request: an action the trail cannot show is reported, never hidden.
    pub async fn audit(&self, state: &AppState, action: &str, detail: &str) -> Result<(), Denied> {
        state
            .accounts
            .audit(&self.org.id, &self.session.user.email, action, detail)
            .await?;
        Ok(())
    }
}

/// What an account whose e-mail address is not yet confirmed gets from anything that
/// acts in an organisation: the address grants nothing until its owner proved it.
pub fn unverified(session: &Session) -> Denied {
    Denied::Forbidden(format!(
        "Confirm your e-mail address {} first: open the link we sent to it (your organisations page can send a new one).",
        session.user.email
    ))
}

/// A session whose user has confirmed their e-mail address.
pub async fn verified_session(state: &AppState, headers: &HeaderMap) -> Result<Session, Denied> {
    let s = session(state, headers).await?;
    if !s.email_verified {
        return Err(unverified(&s));
    }
    Ok(s)
}

pub async fn session(state: &AppState, headers: &HeaderMap) -> Result<Session, Denied> {
    let Some(token) = auth::cookie(headers, auth::SESSION_COOKIE) else {
        return Err(Denied::SignIn);
    };
    state
        .accounts
        .session(&auth::sha256_hex(token.as_bytes()))
        .await?
        .ok_or(Denied::SignIn)
}

pub fn describe(action: Action) -> &'static str {
    match action {
        Action::ViewJobs => "view jobs",
        Action::StartExport => "start exports",
        Action::CancelExport => "cancel exports",
        Action::RetryFailed => "retry failed recordings",
        Action::ViewMembers => "see the members",
        Action::ManageMembers => "manage members",
        Action::ViewAudit => "see the audit trail",
        Action::ManageSchedules => "manage schedules",
        Action::ManageRetention => "manage retention",
        Action::ViewBilling => "see the plan",
        Action::ManageBilling => "manage billing",
        Action::DeleteOrganisation => "delete the organisation",
    }
}

pub async fn org(
    state: &AppState,
    headers: &HeaderMap,
    org_id: &str,
    action: Action,
) -> Result<OrgCtx, Denied> {
    let session = verified_session(state, headers).await?;
    let not_found = || {
        Denied::NotFound(
            "No such organisation, or you are not a member: check the link, or ask an admin to invite you."
                .into(),
        )
    };
    let Some(role) = state.accounts.role_of(org_id, &session.user.id).await? else {
        return Err(not_found());
    };
    let Some(org) = state.accounts.org(org_id).await? else {
        return Err(not_found());
    };
    if !allows(role, action) {
        return Err(Denied::Forbidden(format!(
            "Your role ({role}) cannot {}: ask an owner{} of {} to do it or to change your role.",
            describe(action),
            if crate::roles::PERMISSIONS
                .iter()
                .any(|(a, r)| *a == action && r.contains(&Role::Admin))
            {
                " or admin"
            } else {
                ""
            },
            org.name
        )));
    }
    Ok(OrgCtx { session, org, role })
}

/// Checks a submitted CSRF token against the session's.
pub fn check_csrf(session: &Session, submitted: Option<&str>) -> Result<(), Denied> {
    match submitted {
        Some(s) if auth::tokens_match(s, &session.csrf_token) => Ok(()),
        _ => Err(Denied::Csrf),
    }
}

/// Checks that `job` belongs to the organisation.
pub async fn job_in_org(
    state: &AppState,
    org_id: &str,
    job: &str,
) -> Result<pipeline::JobId, Denied> {
    let not_found = || {
        Denied::NotFound("No such job in this organisation: pick it from the job history.".into())
    };
    let Ok(id) = job.parse::<pipeline::JobId>() else {
        return Err(not_found());
    };
    match state.accounts.job_organisation(&id).await? {
        Some(o) if o == org_id => Ok(id),
        _ => Err(not_found()),
    }
}

/// What a schedule id that is not this organisation's gets: the same answer as one that
/// does not exist, so other organisations' ids can be neither probed nor touched.
pub fn no_such_schedule() -> Denied {
    Denied::NotFound(
        "No such schedule in this organisation: pick it from the schedules page.".into(),
    )
}

/// Checks that schedule `id` belongs to the organisation and returns it.
pub async fn schedule_in_org(
    state: &AppState,
    org_id: &str,
    id: &str,
) -> Result<pipeline::schedules::Schedule, Denied> {
    match state.store.schedule(id).await {
        Ok(s) if s.organisation == org_id => Ok(s),
        Ok(_) | Err(pipeline::schedules::ScheduleError::NoSuchSchedule(_)) => {
            Err(no_such_schedule())
        }
        Err(e) => Err(e.into()),
    }
}

/// For the JSON API: the caller's organisation context for `action`; with `write`, the
/// session's CSRF token must also come in the `X-CSRF-Token` header.
pub async fn org_api(
    state: &AppState,
    headers: &HeaderMap,
    org_id: &str,
    action: Action,
    write: bool,
) -> Result<OrgCtx, Denied> {
    let c = org(state, headers, org_id, action).await?;
    if write {
        check_csrf(&c.session, csrf_header(headers))?;
    }
    Ok(c)
}

/// For the JSON API's writes outside an organisation: the session, with its CSRF token
/// in the `X-CSRF-Token` header.
pub async fn session_api_write(state: &AppState, headers: &HeaderMap) -> Result<Session, Denied> {
    let s = session(state, headers).await?;
    check_csrf(&s, csrf_header(headers))?;
    Ok(s)
}

/// In a page handler that writes outside an organisation: the session, with the form's
/// CSRF token checked; otherwise the refusal page.
pub async fn session_form(
    state: &AppState,
    headers: &HeaderMap,
    submitted: Option<&str>,
) -> Result<Session, Response> {
    let s = session(state, headers).await.map_err(|d| refuse(d, None))?;
    check_csrf(&s, submitted).map_err(|d| refuse(d, Some(Nav::signed_in(&s))))?;
    Ok(s)
}

/// In a page handler: the caller's [`OrgCtx`] for an action, or the refusal page (with
/// the caller's page header when they are signed in).
pub async fn org_page(
    state: &AppState,
    headers: &HeaderMap,
    org_id: &str,
    action: Action,
) -> Result<OrgCtx, Response> {
    match org(state, headers, org_id, action).await {
        Ok(c) => Ok(c),
        Err(d) => {
            let nav = session(state, headers)
                .await
                .ok()
                .map(|s| Nav::signed_in(&s));
            Err(refuse(d, nav))
        }
    }
}

/// [`org_page`] for a form: the form's CSRF token is checked too.
pub async fn org_form(
    state: &AppState,
    headers: &HeaderMap,
    org_id: &str,
    action: Action,
    submitted: Option<&str>,
) -> Result<OrgCtx, Response> {
    let c = org_page(state, headers, org_id, action).await?;
    check_csrf(&c.session, submitted).map_err(|d| c.refuse(d))?;
    Ok(c)
}

/// In a page handler: the caller's [`OrgCtx`] for an action, or the refusal page
/// returned from the handler.
macro_rules! org_ctx {
    ($state:expr, $headers:expr, $org:expr, $action:expr) => {
        match $crate::ctx::org_page(&$state, &$headers, &$org, $action).await {
            Ok(c) => c,
            Err(r) => return r,
        }
    };
}
pub(crate) use org_ctx;

/// In a page handler: checks the form's CSRF token, or returns the refusal page.
macro_rules! csrf {
    ($c:expr, $token:expr) => {
        if let Err(d) = $crate::ctx::check_csrf(&$c.session, $token) {
            return $c.refuse(d);
        }
    };
}
pub(crate) use csrf;
