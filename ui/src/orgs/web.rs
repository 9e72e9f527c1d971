//! The HTML handlers of organisations and members.

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use pipeline::accounts::Role;
use serde::Deserialize;

use super::{check_org_name, do_change, do_invite, pages};
use crate::account::my_invitations;
use crate::account::pages::MyInvitations;
use crate::ctx::{self, OrgCtx, csrf, org_ctx};
use crate::layout::{Errors, Nav};
use crate::respond::{CsrfOnly, Denied, refuse};
use crate::roles::Action;
use crate::state::{AppState, Shared};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/orgs", get(orgs).post(create_org))
        .route("/orgs/{org}", get(org_home))
        .route("/orgs/{org}/members", get(members))
        .route("/orgs/{org}/members/invite", post(invite))
        .route("/orgs/{org}/members/{user}/role", post(change_role))
        .route("/orgs/{org}/members/{user}/remove", post(remove_member))
        .route("/orgs/{org}/audit", get(audit))
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
    Html(pages::orgs(Nav::signed_in(&s), list, &Errors::new(), mine)).into_response()
}

#[derive(Deserialize)]
struct OrgForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    name: String,
}

async fn create_org(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<OrgForm>,
) -> Response {
    let s = match ctx::session_form(&state, &headers, f.csrf.as_deref()).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !s.email_verified {
        return refuse(ctx::unverified(&s), None);
    }
    let name = match check_org_name(&f.name) {
        Ok(n) => n,
        Err(m) => {
            let list = state.accounts.orgs_of(&s.user.id).await.unwrap_or_default();
            let mine = my_invitations(&state, &s)
                .await
                .unwrap_or(MyInvitations::Verified(Vec::new()));
            let mut e = Errors::new();
            e.insert("name", m);
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Html(pages::orgs(Nav::signed_in(&s), list, &e, mine)),
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

async fn members_page(
    state: &AppState,
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
            Html(pages::members(
                c.nav(),
                &c.org,
                c.role,
                m,
                i,
                errors,
                notice,
            )),
        )
            .into_response(),
        (Err(e), _) | (_, Err(e)) => refuse(e.into(), Some(c.nav())),
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
        Err(m) => return refuse(Denied::Invalid(m), Some(c.nav())),
    };
    match do_change(&state, &c, &user, Some(role)).await {
        Ok(()) => Redirect::to(&format!("/orgs/{org}/members")).into_response(),
        Err(d) => refuse(d, Some(c.nav())),
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
        Err(d) => refuse(d, Some(c.nav())),
    }
}

async fn audit(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ViewAudit);
    match state.accounts.audit_log(&org, 500).await {
        Ok(events) => Html(pages::audit(c.nav(), events)).into_response(),
        Err(e) => refuse(e.into(), Some(c.nav())),
    }
}
