//! Who may do what: the one permission table of the console, the one table of JSON API
//! routes (which the router, the OpenAPI document and the role-matrix test are all built
//! from), and the extra rule that only owners touch owners.

use pipeline::accounts::Role;

/// Something a member of an organisation may be allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    ViewJobs,
    StartExport,
    CancelExport,
    RetryFailed,
    ViewMembers,
    ManageMembers,
    ViewAudit,
    /// See, pause, resume and delete the organisation's recurring syncs. One action for
    /// seeing and changing them, owners and admins only, so there is no `ViewSchedules`:
    /// members watch exports in the job history, where every scheduled run already
    /// appears as a job ("schedule <name>"); a schedule's definition (cron, destination,
    /// the credential references naming the machine's variables and secret files) is the
    /// organisation's configuration, like retention, which members do not see either.
    ManageSchedules,
    ManageRetention,
    /// See the plan, its limits and this month's usage (everyone); only owners change it.
    ViewBilling,
    ManageBilling,
    DeleteOrganisation,
}

use Role::{Admin, Member, Owner};

/// THE permission table: every action and the roles allowed to do it. Pages, API
/// handlers and the role-matrix test all read this.
pub const PERMISSIONS: &[(Action, &[Role])] = &[
    (Action::ViewJobs, &[Owner, Admin, Member]),
    (Action::StartExport, &[Owner, Admin, Member]),
    (Action::CancelExport, &[Owner, Admin, Member]),
    (Action::RetryFailed, &[Owner, Admin, Member]),
    (Action::ViewMembers, &[Owner, Admin]),
    (Action::ManageMembers, &[Owner, Admin]),
    (Action::ViewAudit, &[Owner, Admin]),
    (Action::ManageSchedules, &[Owner, Admin]),
    (Action::ManageRetention, &[Owner, Admin]),
    (Action::ViewBilling, &[Owner, Admin, Member]),
    (Action::ManageBilling, &[Owner]),
    (Action::DeleteOrganisation, &[Owner]),
];

pub fn allows(role: Role, action: Action) -> bool {
    PERMISSIONS
        .iter()
        .any(|(a, roles)| *a == action && roles.contains(&role))
}

/// Beyond `ManageMembers`: admins manage members and admins, never owners; only an owner
/// makes someone an owner or changes an owner's role.
pub fn may_change_role(actor: Role, target_now: Role, target_new: Option<Role>) -> bool {
    if !allows(actor, Action::ManageMembers) {
        return false;
    }
    actor == Owner || (target_now != Owner && target_new != Some(Owner))
}

/// One JSON API route. `action: None` means any signed-in user.
#[derive(Clone, Copy, Debug)]
pub struct ApiRoute {
    pub name: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    pub action: Option<Action>,
    /// The status of a successful call.
    pub ok: u16,
    pub summary: &'static str,
}

/// THE table of authenticated API routes (sign-in itself and the OpenAPI document are
/// public and listed in `PUBLIC_API_ROUTES`).
pub const API_ROUTES: &[ApiRoute] = &[
    ApiRoute {
        name: "me",
        method: "GET",
        path: "/api/v1/me",
        action: None,
        ok: 200,
        summary: "The signed-in user, their organisations and the CSRF token for writes",
    },
    ApiRoute {
        name: "my_data",
        method: "GET",
        path: "/api/v1/me/data",
        action: None,
        ok: 200,
        summary: "Everything portshift holds about the signed-in user, as JSON (confirmed address needed)",
    },
    ApiRoute {
        name: "change_password",
        method: "PUT",
        path: "/api/v1/me/password",
        action: None,
        ok: 200,
        summary: "Change the password (give current_password and new_password); the user's other sessions end",
    },
    ApiRoute {
        name: "delete_me",
        method: "DELETE",
        path: "/api/v1/me",
        action: None,
        ok: 200,
        summary: "Delete the signed-in user's account (give password); refused while they are an organisation's last owner",
    },
    ApiRoute {
        name: "resend_verification",
        method: "POST",
        path: "/api/v1/me/verification",
        action: None,
        ok: 200,
        summary: "Mail a new link confirming the user's e-mail address (rate limited)",
    },
    ApiRoute {
        name: "my_invitations",
        method: "GET",
        path: "/api/v1/me/invitations",
        action: None,
        ok: 200,
        summary: "Invitations addressed to the user's confirmed e-mail address",
    },
    ApiRoute {
        name: "accept_invitation",
        method: "POST",
        path: "/api/v1/me/invitations/{org}/accept",
        action: None,
        ok: 200,
        summary: "Accept an invitation to the organisation (confirmed address needed); an existing member keeps their role",
    },
    ApiRoute {
        name: "decline_invitation",
        method: "POST",
        path: "/api/v1/me/invitations/{org}/decline",
        action: None,
        ok: 200,
        summary: "Decline an invitation to the organisation (confirmed address needed)",
    },
    ApiRoute {
        name: "create_org",
        method: "POST",
        path: "/api/v1/orgs",
        action: None,
        ok: 201,
        summary: "Create an organisation; the caller becomes its owner",
    },
    ApiRoute {
        name: "list_jobs",
        method: "GET",
        path: "/api/v1/orgs/{org}/jobs",
        action: Some(Action::ViewJobs),
        ok: 200,
        summary: "Job history (?status=&page=), newest first, 50 per page",
    },
    ApiRoute {
        name: "start_export",
        method: "POST",
        path: "/api/v1/orgs/{org}/jobs",
        action: Some(Action::StartExport),
        ok: 201,
        summary: "Start an export; credentials go to the job's worker process only",
    },
    ApiRoute {
        name: "get_job",
        method: "GET",
        path: "/api/v1/orgs/{org}/jobs/{job}",
        action: Some(Action::ViewJobs),
        ok: 200,
        summary: "A job with its six stages, errors, dead letters and manifest",
    },
    ApiRoute {
        name: "cancel_job",
        method: "POST",
        path: "/api/v1/orgs/{org}/jobs/{job}/cancel",
        action: Some(Action::CancelExport),
        ok: 200,
        summary: "Cancel a job and stop its worker",
    },
    ApiRoute {
        name: "retry_job",
        method: "POST",
        path: "/api/v1/orgs/{org}/jobs/{job}/retry",
        action: Some(Action::RetryFailed),
        ok: 200,
        summary: "Replay the job's dead letters and start a worker (credentials in the body)",
    },
    ApiRoute {
        name: "list_members",
        method: "GET",
        path: "/api/v1/orgs/{org}/members",
        action: Some(Action::ViewMembers),
        ok: 200,
        summary: "Members with their roles, and pending invitations",
    },
    ApiRoute {
        name: "invite_member",
        method: "POST",
        path: "/api/v1/orgs/{org}/members",
        action: Some(Action::ManageMembers),
        ok: 201,
        summary: "Invite an e-mail address with a role (admins cannot invite owners); the address is mailed and joins only when its confirmed owner accepts. The answer is the same whether or not the address has an account",
    },
    ApiRoute {
        name: "change_role",
        method: "PUT",
        path: "/api/v1/orgs/{org}/members/{user}",
        action: Some(Action::ManageMembers),
        ok: 200,
        summary: "Change a member's role (only owners touch owners)",
    },
    ApiRoute {
        name: "remove_member",
        method: "DELETE",
        path: "/api/v1/orgs/{org}/members/{user}",
        action: Some(Action::ManageMembers),
        ok: 200,
        summary: "Remove a member (only owners remove owners; never the last owner)",
    },
    ApiRoute {
        name: "audit",
        method: "GET",
        path: "/api/v1/orgs/{org}/audit",
        action: Some(Action::ViewAudit),
        ok: 200,
        summary: "The audit trail, newest first",
    },
    ApiRoute {
        name: "list_schedules",
        method: "GET",
        path: "/api/v1/orgs/{org}/schedules",
        action: Some(Action::ManageSchedules),
        ok: 200,
        summary: "This organisation's recurring syncs with their next run and recent runs",
    },
    ApiRoute {
        name: "create_schedule",
        method: "POST",
        path: "/api/v1/orgs/{org}/schedules",
        action: Some(Action::ManageSchedules),
        ok: 201,
        summary: "Create a recurring sync; credentials as references (env:NAME, file:/path, aws:default, gcp:workload-identity, aws-role:<role ARN>?secret=<secret ARN>), never values",
    },
    ApiRoute {
        name: "pause_schedule",
        method: "POST",
        path: "/api/v1/orgs/{org}/schedules/{schedule}/pause",
        action: Some(Action::ManageSchedules),
        ok: 200,
        summary: "Pause a schedule: no runs start until it is resumed",
    },
    ApiRoute {
        name: "resume_schedule",
        method: "POST",
        path: "/api/v1/orgs/{org}/schedules/{schedule}/resume",
        action: Some(Action::ManageSchedules),
        ok: 200,
        summary: "Resume a schedule from its next slot (skipped slots are not caught up)",
    },
    ApiRoute {
        name: "delete_schedule",
        method: "DELETE",
        path: "/api/v1/orgs/{org}/schedules/{schedule}",
        action: Some(Action::ManageSchedules),
        ok: 200,
        summary: "Delete a schedule (its past jobs stay in the job history)",
    },
    ApiRoute {
        name: "aws_external_id",
        method: "GET",
        path: "/api/v1/orgs/{org}/aws-external-id",
        action: Some(Action::ManageSchedules),
        ok: 200,
        summary: "The organisation's ExternalId, for the trust policy of a cross-account AWS role (aws-role: references)",
    },
    ApiRoute {
        name: "set_retention",
        method: "PUT",
        path: "/api/v1/orgs/{org}/retention",
        action: Some(Action::ManageRetention),
        ok: 200,
        summary: "Set how many days job history is kept",
    },
    ApiRoute {
        name: "billing",
        method: "GET",
        path: "/api/v1/orgs/{org}/billing",
        action: Some(Action::ViewBilling),
        ok: 200,
        summary: "The organisation's plan, its limits and this month's usage (every member may see it)",
    },
    ApiRoute {
        name: "billing_checkout",
        method: "POST",
        path: "/api/v1/orgs/{org}/billing/checkout",
        action: Some(Action::ManageBilling),
        ok: 200,
        summary: "Owners: a Stripe Checkout page for a paid plan (give plan: team or enterprise); answers its url. The plan changes when Stripe confirms the payment",
    },
    ApiRoute {
        name: "billing_portal",
        method: "POST",
        path: "/api/v1/orgs/{org}/billing/portal",
        action: Some(Action::ManageBilling),
        ok: 200,
        summary: "Owners: a Stripe customer-portal page (change plan, cancel, invoices); answers its url",
    },
    ApiRoute {
        name: "delete_org",
        method: "DELETE",
        path: "/api/v1/orgs/{org}",
        action: Some(Action::DeleteOrganisation),
        ok: 200,
        summary: "Delete the organisation",
    },
];

/// The signed-in routes an account whose e-mail address is not yet confirmed may use;
/// every other route answers 403 until the address is confirmed.
pub const UNVERIFIED_OK: &[&str] = &["me", "change_password", "delete_me", "resend_verification"];

/// Routes that need no session.
pub const PUBLIC_API_ROUTES: &[ApiRoute] = &[
    ApiRoute {
        name: "sign_up",
        method: "POST",
        path: "/api/v1/signup",
        action: None,
        ok: 202,
        summary: "Sign up with e-mail and password: mails a link that confirms the address. The answer is the same whether or not the address has an account (rate limited)",
    },
    ApiRoute {
        name: "verify_email",
        method: "POST",
        path: "/api/v1/verify-email",
        action: None,
        ok: 200,
        summary: "Confirm the address with the link's token and the account's password; signs in (rate limited)",
    },
    ApiRoute {
        name: "password_reset",
        method: "POST",
        path: "/api/v1/password-reset",
        action: None,
        ok: 202,
        summary: "Mail a one-time password-reset link if the address has an account; the answer is the same either way (rate limited)",
    },
    ApiRoute {
        name: "password_reset_confirm",
        method: "POST",
        path: "/api/v1/password-reset/confirm",
        action: None,
        ok: 200,
        summary: "Set a new password with the link's token; ends every session of the account (rate limited)",
    },
    ApiRoute {
        name: "sign_in",
        method: "POST",
        path: "/api/v1/session",
        action: None,
        ok: 200,
        summary: "Sign in with e-mail and password; sets the session cookie (rate limited)",
    },
    ApiRoute {
        name: "openapi",
        method: "GET",
        path: "/api/v1/openapi.json",
        action: None,
        ok: 200,
        summary: "This API's OpenAPI 3.1 document",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_is_in_the_table_once() {
        let all = [
            Action::ViewJobs,
            Action::StartExport,
            Action::CancelExport,
            Action::RetryFailed,
            Action::ViewMembers,
            Action::ManageMembers,
            Action::ViewAudit,
            Action::ManageSchedules,
            Action::ManageRetention,
            Action::ViewBilling,
            Action::ManageBilling,
            Action::DeleteOrganisation,
        ];
        for a in all {
            assert_eq!(
                PERMISSIONS.iter().filter(|(x, _)| *x == a).count(),
                1,
                "{a:?}"
            );
        }
    }

    #[test]
    fn only_owners_touch_owners() {
        assert!(may_change_role(Owner, Owner, Some(Admin)));
        assert!(may_change_role(Owner, Member, Some(Owner)));
        assert!(may_change_role(Admin, Member, Some(Admin)));
        assert!(!may_change_role(Admin, Owner, Some(Member)));
        assert!(!may_change_role(Admin, Member, Some(Owner)));
        assert!(!may_change_role(Admin, Owner, None));
        assert!(!may_change_role(Member, Member, Some(Admin)));
    }
}
