//! The pages of organisations and members: the organisations list, the members page and
//! the audit trail.

use leptos::prelude::*;
use pipeline::accounts::{AuditEvent, Invitation, Member, Organisation, Role};

use crate::account::pages::{MyInvitations, invitations_panel};
use crate::layout::{Errors, Nav, document, field_error, time};
use crate::roles::may_change_role;

pub fn orgs(
    nav: Nav,
    orgs: Vec<(Organisation, Role)>,
    errors: &Errors,
    mine: MyInvitations,
) -> String {
    let csrf = nav.csrf.clone();
    let invitations = invitations_panel(&csrf, mine);
    let rows = orgs
        .into_iter()
        .map(|(o, r)| {
            view! {
                <tr>
                    <td><a class="org-link" href=format!("/orgs/{}/jobs", o.id)>{o.name}</a></td>
                    <td>{r.as_str()}</td>
                </tr>
            }
        })
        .collect::<Vec<_>>();
    let empty = rows.is_empty();
    document(
        "Organisations".into(),
        Some(nav),
        view! {
            <h1>"Your organisations"</h1>
            {invitations}
            {(!empty).then(|| view! { <table id="orgs"><thead><tr><th>"Organisation"</th><th>"Your role"</th></tr></thead><tbody>{rows}</tbody></table> })}
            {empty.then(|| view! { <p class="notice">"You are not in an organisation yet: create one, or ask an admin to invite your e-mail address."</p> })}
            <h2>"Create an organisation"</h2>
            <form class="stack card" method="post" action="/orgs">
                <input type="hidden" name="csrf" value=csrf/>
                <label>"Name" <input type="text" name="name" required=true maxlength="80"/></label>
                {field_error(errors, "name")}
                <button class="primary" type="submit" id="create-org">"Create organisation"</button>
            </form>
        },
    )
}

pub fn members(
    nav: Nav,
    org: &Organisation,
    my_role: Role,
    members: Vec<Member>,
    invitations: Vec<Invitation>,
    errors: &Errors,
    notice: Option<String>,
) -> String {
    let csrf = nav.csrf.clone();
    let base = format!("/orgs/{}/members", org.id);
    let rows = members
        .into_iter()
        .map(|m| {
            let editable = may_change_role(my_role, m.role, None);
            let options = Role::ALL
                .into_iter()
                .filter(|r| may_change_role(my_role, m.role, Some(*r)))
                .map(|r| view! { <option value=r.as_str() selected=r == m.role>{r.as_str()}</option> })
                .collect::<Vec<_>>();
            let csrf = csrf.clone();
            let csrf2 = csrf.clone();
            let uid = m.user.id.clone();
            view! {
                <tr class="member">
                    <td>{m.user.email.clone()}</td>
                    <td class="role">{m.role.as_str()}</td>
                    <td>{editable.then(|| view! {
                        <form method="post" action=format!("{base}/{uid}/role")>
                            <input type="hidden" name="csrf" value=csrf/>
                            <select name="role">{options}</select>
                            <button type="submit">"Change"</button>
                        </form>
                        <form method="post" action=format!("{base}/{uid}/remove")>
                            <input type="hidden" name="csrf" value=csrf2/>
                            <button class="danger" type="submit">"Remove"</button>
                        </form>
                    })}</td>
                </tr>
            }
        })
        .collect::<Vec<_>>();
    let pending = invitations
        .into_iter()
        .map(|i| view! { <tr><td>{i.email}</td><td>{i.role.as_str()}</td><td class="muted">{format!("invited by {}", i.invited_by)}</td></tr> })
        .collect::<Vec<_>>();
    let invite_roles = Role::ALL
        .into_iter()
        .filter(|r| my_role == Role::Owner || *r != Role::Owner)
        .map(
            |r| view! { <option value=r.as_str() selected=r == Role::Member>{r.as_str()}</option> },
        )
        .collect::<Vec<_>>();
    document(
        "Members".into(),
        Some(nav),
        view! {
            <h1>"Members"</h1>
            {notice.map(|n| view! { <p class="notice" id="notice">{n}</p> })}
            <table id="members"><thead><tr><th>"E-mail"</th><th>"Role"</th><th>""</th></tr></thead><tbody>{rows}{pending}</tbody></table>
            <h2>"Invite someone"</h2>
            <form class="stack card" method="post" action=format!("{base}/invite")>
                <input type="hidden" name="csrf" value=csrf.clone()/>
                <label>"E-mail" <input type="email" name="email" required=true/></label>
                {field_error(errors, "email")}
                <label>"Role" <select name="role">{invite_roles}</select></label>
                {field_error(errors, "role")}
                <button class="primary" type="submit" id="invite">"Invite"</button>
            </form>
        },
    )
}

pub fn audit(nav: Nav, events: Vec<AuditEvent>) -> String {
    let rows = events
        .into_iter()
        .map(|e| view! { <tr><td>{time(e.at_ms)}</td><td>{e.actor}</td><td>{e.action}</td><td>{e.detail}</td></tr> })
        .collect::<Vec<_>>();
    document(
        "Audit trail".into(),
        Some(nav),
        view! {
            <h1>"Audit trail"</h1>
            <table id="audit"><thead><tr><th>"When"</th><th>"Who"</th><th>"What"</th><th>"Detail"</th></tr></thead><tbody>{rows}</tbody></table>
        },
    )
}
