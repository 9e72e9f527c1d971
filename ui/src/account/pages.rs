//! The pages of signing in and of a person's own account: sign-in, sign-up, "check your
//! inbox" after sign-up, confirming the e-mail address, resetting a forgotten password,
//! the account page (change the password, download one's data, delete the account) and
//! the invitations panel of the organisations page.

use leptos::prelude::*;
use pipeline::accounts::MyInvitation;

use crate::layout::{Errors, Nav, document, field_error};

/// What the organisations page shows about invitations: nothing until the address is
/// confirmed (an unconfirmed account must not learn who invited the address).
pub enum MyInvitations {
    Unverified { email: String },
    Verified(Vec<MyInvitation>),
}

pub fn invitations_panel(csrf: &str, mine: MyInvitations) -> impl IntoView + use<> {
    let csrf = csrf.to_string();
    match mine {
        MyInvitations::Unverified { email } => view! {
            <div class="card notice bad" id="unverified">
                <p>{format!("Confirm your e-mail address {email} first: open the link we sent to it. Until then you cannot create or join organisations.")}</p>
                <form method="post" action="/verify-email/resend">
                    <input type="hidden" name="csrf" value=csrf/>
                    <button type="submit" id="resend">"Send a new link"</button>
                </form>
            </div>
        }
        .into_any(),
        MyInvitations::Verified(list) if list.is_empty() => ().into_any(),
        MyInvitations::Verified(list) => {
            let rows = list
                .into_iter()
                .map(|i| {
                    let base = format!("/invitations/{}", i.org_id);
                    view! {
                        <tr class="invitation">
                            <td>{i.org_name}</td>
                            <td>{i.role.as_str()}</td>
                            <td>{i.invited_by}</td>
                            <td>
                                <form method="post" action=format!("{base}/accept")>
                                    <input type="hidden" name="csrf" value=csrf.clone()/>
                                    <button class="primary accept" type="submit">"Accept"</button>
                                </form>
                                <form method="post" action=format!("{base}/decline")>
                                    <input type="hidden" name="csrf" value=csrf.clone()/>
                                    <button type="submit">"Decline"</button>
                                </form>
                            </td>
                        </tr>
                    }
                })
                .collect::<Vec<_>>();
            view! {
                <h2>"Invitations"</h2>
                <table id="invitations">
                    <thead><tr><th>"Organisation"</th><th>"Role"</th><th>"Invited by"</th><th></th></tr></thead>
                    <tbody>{rows}</tbody>
                </table>
            }
            .into_any()
        }
    }
}

/// After sign-up (new address or not: the page is the same).
pub fn check_inbox(email: &str) -> String {
    let text = format!(
        "We sent a mail to {email}. Open the link in it to confirm the address and finish signing up. No mail after a few minutes? Check the spam folder, or sign up again to get a new one."
    );
    document(
        "Check your inbox".into(),
        None,
        view! {
            <div class="card">
                <h1>"Check your inbox"</h1>
                <p class="notice" id="check-inbox">{text}</p>
                <p class="muted"><a href="/signin">"Back to sign in"</a></p>
            </div>
        },
    )
}

pub fn verify_email(pre: &str, token: &str, error: Option<String>) -> String {
    document(
        "Confirm your e-mail address".into(),
        None,
        view! {
            <div class="card">
                <h1>"Confirm your e-mail address"</h1>
                <p class="muted">"Enter the password you chose at sign-up: this proves the account is yours, not only the mailbox."</p>
                {error.map(|e| view! { <p class="notice bad" id="error">{e}</p> })}
                <form class="stack" method="post" action="/verify-email">
                    <input type="hidden" name="csrf" value=pre.to_string()/>
                    <input type="hidden" name="token" value=token.to_string()/>
                    <label>"Password" <input type="password" name="password" required=true autocomplete="current-password"/></label>
                    <button class="primary" type="submit" id="confirm">"Confirm my address"</button>
                </form>
            </div>
        },
    )
}

pub fn reset_request(pre: &str, email: &str, errors: &Errors, sent: bool) -> String {
    let sent_text = format!(
        "If {email} has a portshift account, we sent it a link to choose a new password. It works once, for an hour."
    );
    document(
        "Reset your password".into(),
        None,
        view! {
            <div class="card">
                <h1>"Reset your password"</h1>
                {sent.then(|| view! { <p class="notice" id="reset-sent">{sent_text}</p> })}
                <form class="stack" method="post" action="/reset-password">
                    <input type="hidden" name="csrf" value=pre.to_string()/>
                    <label>"E-mail" <input type="email" name="email" value=email.to_string() required=true autocomplete="username"/></label>
                    {field_error(errors, "email")}
                    <button class="primary" type="submit" id="send-reset">"Send me a link"</button>
                </form>
                <p class="muted"><a href="/signin">"Back to sign in"</a></p>
            </div>
        },
    )
}

pub fn reset_confirm(pre: &str, token: &str, errors: &Errors) -> String {
    document(
        "Choose a new password".into(),
        None,
        view! {
            <div class="card">
                <h1>"Choose a new password"</h1>
                {field_error(errors, "token")}
                <form class="stack" method="post" action="/reset-password/confirm">
                    <input type="hidden" name="csrf" value=pre.to_string()/>
                    <input type="hidden" name="token" value=token.to_string()/>
                    <label>"New password (at least 12 characters)" <input type="password" name="password" required=true autocomplete="new-password"/></label>
                    {field_error(errors, "password")}
                    <button class="primary" type="submit" id="set-password">"Set the new password"</button>
                </form>
                <p class="muted">"Setting it signs the account out on every device."</p>
            </div>
        },
    )
}

pub fn account(nav: Nav, errors: &Errors, notice: Option<String>) -> String {
    let csrf = nav.csrf.clone();
    let email = nav.email.clone();
    document(
        "Your account".into(),
        Some(nav),
        view! {
            <h1>"Your account"</h1>
            {notice.map(|n| view! { <p class="notice" id="notice">{n}</p> })}
            <p>"Signed in as " <strong>{email}</strong></p>
            <h2>"Change your password"</h2>
            <form class="stack card" method="post" action="/account/password">
                <input type="hidden" name="csrf" value=csrf.clone()/>
                <label>"Current password" <input type="password" name="current_password" required=true autocomplete="current-password"/></label>
                {field_error(errors, "current_password")}
                <label>"New password (at least 12 characters)" <input type="password" name="new_password" required=true autocomplete="new-password"/></label>
                {field_error(errors, "new_password")}
                <button class="primary" type="submit" id="change-password">"Change password"</button>
                <p class="muted">"Your other devices are signed out; this one stays signed in."</p>
            </form>
            <h2>"Your data"</h2>
            <p><a href="/account/data.json" id="download-data" download="portshift-my-data.json">"Download everything portshift holds about you (JSON)"</a></p>
            <h2>"Delete your account"</h2>
            <form class="stack card" method="post" action="/account/delete">
                <input type="hidden" name="csrf" value=csrf/>
                <p class="muted">"Your account, sessions and memberships are deleted. Audit rows and jobs you started stay with their organisations under a pseudonym, without your e-mail address. If you are the last owner of an organisation, make someone else an owner or delete it first."</p>
                <label>"Password" <input type="password" name="password" required=true autocomplete="current-password"/></label>
                {field_error(errors, "password")}
                <button class="danger" type="submit" id="delete-account">"Delete my account"</button>
            </form>
        },
    )
}

pub fn sign_in(pre: &str, email: &str, error: Option<String>, notice: Option<String>) -> String {
    document(
        "Sign in".into(),
        None,
        view! {
            <div class="card">
                <h1>"Sign in to portshift"</h1>
                {notice.map(|n| view! { <p class="notice">{n}</p> })}
                {error.map(|e| view! { <p class="notice bad" id="error">{e}</p> })}
                <form class="stack" method="post" action="/signin">
                    <input type="hidden" name="csrf" value=pre.to_string()/>
                    <label>"E-mail" <input type="email" name="email" value=email.to_string() required=true autocomplete="username"/></label>
                    <label>"Password" <input type="password" name="password" required=true autocomplete="current-password"/></label>
                    <button class="primary" type="submit" id="signin">"Sign in"</button>
                </form>
                <p class="muted">"No account yet? " <a href="/signup">"Sign up"</a>" · " <a href="/reset-password" id="forgot">"Forgot your password?"</a></p>
            </div>
        },
    )
}

pub fn sign_up(pre: &str, email: &str, errors: &Errors) -> String {
    document(
        "Sign up".into(),
        None,
        view! {
            <div class="card">
                <h1>"Create your portshift account"</h1>
                <form class="stack" method="post" action="/signup">
                    <input type="hidden" name="csrf" value=pre.to_string()/>
                    <label>"E-mail" <input type="email" name="email" value=email.to_string() required=true autocomplete="username"/></label>
                    {field_error(errors, "email")}
                    <label>"Password (at least 12 characters)" <input type="password" name="password" required=true autocomplete="new-password"/></label>
                    {field_error(errors, "password")}
                    <button class="primary" type="submit" id="signup">"Create account"</button>
                </form>
                <p class="muted">"Already have an account? " <a href="/signin">"Sign in"</a></p>
            </div>
        },
    )
}
