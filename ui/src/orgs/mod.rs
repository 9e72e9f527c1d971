//! Organisations and their members: the organisations page (with creating one), the
//! members page (inviting, changing roles, removing), and the audit trail. Pages are
//! `pages`, HTML handlers `web`, JSON handlers `api`; the checks and changes both kinds
//! of handler make are here.

pub(crate) mod api;
pub mod pages;
pub(crate) mod web;

use pipeline::accounts::Role;

use crate::auth;
use crate::ctx::OrgCtx;
use crate::layout::Errors;
use crate::mail;
use crate::respond::Denied;
use crate::roles::may_change_role;
use crate::state::AppState;

pub(crate) fn check_org_name(name: &str) -> Result<String, String> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 80 {
        Err("Give the organisation a name of 1 to 80 characters.".into())
    } else {
        Ok(n.to_string())
    }
}

/// Invites `email` with `role` and mails the address; shared by the page and the API.
/// Nothing here depends on whether the address has an account: nobody joins until a
/// verified owner of the address accepts (`account::accept`).
pub(crate) async fn do_invite(
    state: &AppState,
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
        .map_err(|err| Errors::from([("email", format!("{err}"))]))?;
    let link = state
        .mail
        .as_ref()
        .map(|m| m.link("/orgs"))
        .unwrap_or_default();
    mail::send_later(
        state.mail.as_ref(),
        email.clone(),
        "You are invited to an organisation on portshift",
        mail::invitation_body(
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
        const UNRECORDED: &str = "The invitation was made, but the audit trail could not record it: try again in a moment, or tell your operator.";
        return Err(Errors::from([("email", UNRECORDED.into())]));
    }
    Ok((email, role))
}

/// Changes (`Some`) or removes (`None`) a member's role; shared by the page and the API.
pub(crate) async fn do_change(
    state: &AppState,
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
