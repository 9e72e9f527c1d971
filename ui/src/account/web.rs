//! The sign-in and account area's HTML handlers: sign-in, sign-up, sign-out (here or
//! everywhere), e-mail confirmation, password reset and change, the account page, the data
//! download, account deletion, and accepting or declining an invitation.

use axum::Json;
use axum::Router;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::pages;
use super::{Credentials, EmailOnly, PasswordChange, PasswordConfirm, TokenPassword};
use super::{
    accept, authenticate, change_password, decline, delete_account, request_reset, reset,
    send_verification, sign_in_allowed, verify,
};
use crate::auth;
use crate::ctx;
use crate::layout::{Errors, Nav};
use crate::respond::{CsrfOnly, Denied, pre_ok, pre_token, refuse, with_cookie};
use crate::state::{AppState, ClientKey, Shared};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(index))
        .route("/signin", get(sign_in_form).post(sign_in))
        .route("/signup", get(sign_up_form).post(sign_up))
        .route("/signout", post(sign_out))
        .route("/signout-everywhere", post(sign_out_everywhere))
        .route("/verify-email", get(verify_form).post(verify_post))
        .route("/verify-email/resend", post(resend_post))
        .route("/reset-password", get(reset_form).post(reset_post))
        .route(
            "/reset-password/confirm",
            get(reset_confirm_form).post(reset_confirm_post),
        )
        .route("/account", get(account_page))
        .route("/account/password", post(password_post))
        .route("/account/data.json", get(data_download))
        .route("/account/delete", post(delete_post))
        .route("/invitations/{org}/accept", post(accept_post))
        .route("/invitations/{org}/decline", post(decline_post))
}

/// What a signed-out form says when its pre-session token is missing or stale.
const EXPIRED: &str = "The form expired: submit it again.";

/// [`EXPIRED`] against a form's field.
fn expired_error(field: &'static str) -> Errors {
    let mut e = Errors::new();
    e.insert(field, EXPIRED.into());
    e
}

/// What every signed-out form checks before it acts (sign-in, sign-up, e-mail
/// confirmation, password reset): its pre-session CSRF token, whose failure shows the form
/// again (403, rendered by `expired`, with the pre-session cookie `set` if new), then the
/// client's sign-in rate limit.
async fn signed_out_checks(
    state: &AppState,
    key: &str,
    headers: &HeaderMap,
    submitted: Option<&str>,
    set: Option<String>,
    expired: impl FnOnce() -> String,
) -> Result<(), Response> {
    if !pre_ok(headers, submitted) {
        let page = (StatusCode::FORBIDDEN, Html(expired())).into_response();
        return Err(with_cookie(page, set));
    }
    sign_in_allowed(state, key)
        .await
        .map_err(|d| refuse(d, None))
}

async fn index(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match ctx::session(&state, &headers).await {
        Ok(_) => Redirect::to("/orgs").into_response(),
        Err(_) => Redirect::to("/signin").into_response(),
    }
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

async fn sign_in(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    headers: HeaderMap,
    Form(f): Form<Credentials>,
) -> Response {
    let (pre, set) = pre_token(&headers);
    let expired = || pages::sign_in(&pre, &f.email, Some(EXPIRED.into()), None);
    if let Err(r) = signed_out_checks(&state, &key, &headers, f.csrf.as_deref(), set, expired).await
    {
        return r;
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
    let expired = || pages::sign_up(&pre, &f.email, &expired_error("email"));
    if let Err(r) = signed_out_checks(&state, &key, &headers, f.csrf.as_deref(), set, expired).await
    {
        return r;
    }
    // No session here, new address or not: the answer is "check your inbox" either way
    // (see account::sign_up), so it tells nobody whether the address has an account.
    match super::sign_up(&state, &f.email, &f.password).await {
        Ok(Ok(email)) => Html(pages::check_inbox(&email)).into_response(),
        Ok(Err(errors)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(pages::sign_up(&pre, &f.email, &errors)),
        )
            .into_response(),
        Err(d) => refuse(d, None),
    }
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

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

async fn verify_form(headers: HeaderMap, Query(q): Query<TokenQuery>) -> Response {
    let (pre, set) = pre_token(&headers);
    with_cookie(
        Html(pages::verify_email(&pre, &q.token, None)).into_response(),
        set,
    )
}

async fn verify_post(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    headers: HeaderMap,
    Form(f): Form<TokenPassword>,
) -> Response {
    let (pre, set) = pre_token(&headers);
    let again = |status: StatusCode, m: &str| {
        with_cookie(
            (
                status,
                Html(pages::verify_email(&pre, &f.token, Some(m.to_string()))),
            )
                .into_response(),
            set.clone(),
        )
    };
    let expired = || pages::verify_email(&pre, &f.token, Some(EXPIRED.into()));
    if let Err(r) = signed_out_checks(
        &state,
        &key,
        &headers,
        f.csrf.as_deref(),
        set.clone(),
        expired,
    )
    .await
    {
        return r;
    }
    match verify(&state, &f.token, &f.password).await {
        Ok((_, token, _)) => with_cookie(
            Redirect::to("/orgs").into_response(),
            Some(auth::session_cookie(&token)),
        ),
        Err(Denied::Invalid(m)) => again(StatusCode::BAD_REQUEST, &m),
        Err(d) => refuse(d, None),
    }
}

async fn resend_post(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
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
    if let Err(d) = sign_in_allowed(&state, &key).await {
        return refuse(d, None);
    }
    if !s.email_verified
        && let Err(d) = send_verification(&state, &s.user).await
    {
        return refuse(d, None);
    }
    Redirect::to("/orgs").into_response()
}

async fn reset_form(headers: HeaderMap) -> Response {
    let (pre, set) = pre_token(&headers);
    with_cookie(
        Html(pages::reset_request(&pre, "", &Errors::new(), false)).into_response(),
        set,
    )
}

async fn reset_post(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    headers: HeaderMap,
    Form(f): Form<EmailOnly>,
) -> Response {
    let (pre, set) = pre_token(&headers);
    let expired = || pages::reset_request(&pre, &f.email, &expired_error("email"), false);
    if let Err(r) = signed_out_checks(&state, &key, &headers, f.csrf.as_deref(), set, expired).await
    {
        return r;
    }
    match request_reset(&state, &f.email).await {
        Ok(Ok(email)) => {
            Html(pages::reset_request(&pre, &email, &Errors::new(), true)).into_response()
        }
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(pages::reset_request(&pre, &f.email, &e, false)),
        )
            .into_response(),
        Err(d) => refuse(d, None),
    }
}

async fn reset_confirm_form(headers: HeaderMap, Query(q): Query<TokenQuery>) -> Response {
    let (pre, set) = pre_token(&headers);
    with_cookie(
        Html(pages::reset_confirm(&pre, &q.token, &Errors::new())).into_response(),
        set,
    )
}

async fn reset_confirm_post(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    headers: HeaderMap,
    Form(f): Form<TokenPassword>,
) -> Response {
    let (pre, set) = pre_token(&headers);
    let expired = || pages::reset_confirm(&pre, &f.token, &expired_error("token"));
    if let Err(r) = signed_out_checks(&state, &key, &headers, f.csrf.as_deref(), set, expired).await
    {
        return r;
    }
    match reset(&state, &f.token, &f.password).await {
        Ok(Ok(())) => with_cookie(
            Redirect::to("/signin?notice=password-reset").into_response(),
            Some(auth::clear_session_cookie()),
        ),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(pages::reset_confirm(&pre, &f.token, &e)),
        )
            .into_response(),
        Err(d) => refuse(d, None),
    }
}

async fn account_page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match ctx::session(&state, &headers).await {
        Ok(s) => Html(pages::account(Nav::signed_in(&s), &Errors::new(), None)).into_response(),
        Err(d) => refuse(d, None),
    }
}

async fn password_post(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<PasswordChange>,
) -> Response {
    let s = match ctx::session(&state, &headers).await {
        Ok(s) => s,
        Err(d) => return refuse(d, None),
    };
    if ctx::check_csrf(&s, f.csrf.as_deref()).is_err() {
        return refuse(Denied::Csrf, Some(Nav::signed_in(&s)));
    }
    match change_password(&state, &headers, &f.current_password, &f.new_password).await {
        Ok(Ok(ended)) => Html(pages::account(
            Nav::signed_in(&s),
            &Errors::new(),
            Some(format!(
                "Password changed. {ended} other session(s) signed out."
            )),
        ))
        .into_response(),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(pages::account(Nav::signed_in(&s), &e, None)),
        )
            .into_response(),
        Err(d) => refuse(d, Some(Nav::signed_in(&s))),
    }
}

async fn data_download(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let s = match ctx::verified_session(&state, &headers).await {
        Ok(s) => s,
        Err(d) => return refuse(d, None),
    };
    match state.accounts.personal_data(&s.user.id).await {
        Ok(v) => {
            let mut r = Json(v).into_response();
            r.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"portshift-my-data.json\""),
            );
            r
        }
        Err(e) => refuse(e.into(), Some(Nav::signed_in(&s))),
    }
}

async fn delete_post(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<PasswordConfirm>,
) -> Response {
    let s = match ctx::session(&state, &headers).await {
        Ok(s) => s,
        Err(d) => return refuse(d, None),
    };
    if ctx::check_csrf(&s, f.csrf.as_deref()).is_err() {
        return refuse(Denied::Csrf, Some(Nav::signed_in(&s)));
    }
    match delete_account(&state, &headers, &f.password).await {
        Ok(Ok(())) => with_cookie(
            Redirect::to("/signin?notice=deleted").into_response(),
            Some(auth::clear_session_cookie()),
        ),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(pages::account(Nav::signed_in(&s), &e, None)),
        )
            .into_response(),
        Err(d) => refuse(d, Some(Nav::signed_in(&s))),
    }
}

async fn invitation_post(
    state: Shared,
    headers: HeaderMap,
    org: String,
    f: CsrfOnly,
    yes: bool,
) -> Response {
    let s = match ctx::session(&state, &headers).await {
        Ok(s) => s,
        Err(d) => return refuse(d, None),
    };
    if ctx::check_csrf(&s, f.csrf.as_deref()).is_err() {
        return refuse(Denied::Csrf, Some(Nav::signed_in(&s)));
    }
    let done = if yes {
        accept(&state, &headers, &org)
            .await
            .map(|_| format!("/orgs/{org}/jobs"))
    } else {
        decline(&state, &headers, &org)
            .await
            .map(|_| "/orgs".to_string())
    };
    match done {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(d) => refuse(d, Some(Nav::signed_in(&s))),
    }
}

async fn accept_post(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    invitation_post(state, headers, org, f, true).await
}

async fn decline_post(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    invitation_post(state, headers, org, f, false).await
}
