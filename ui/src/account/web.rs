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
use crate::respond::{CsrfOnly, Denied, Page, pre_ok, pre_token, refuse, with_cookie};
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
    Errors::from([(field, EXPIRED.into())])
}

/// What every signed-out form checks before it acts (sign-in, sign-up, e-mail
/// confirmation, password reset): its pre-session CSRF token, whose failure shows the form
/// again (403, rendered by `expired` from the pre-session token, with the pre-session
/// cookie set if new), then the client's sign-in rate limit. Returns the pre-session token
/// for the pages that follow (it came with the request, so no cookie is to be set).
async fn signed_out_checks(
    state: &AppState,
    key: &str,
    headers: &HeaderMap,
    submitted: Option<&str>,
    expired: impl FnOnce(&str) -> String,
) -> Result<String, Response> {
    let (pre, set) = pre_token(headers);
    if !pre_ok(headers, submitted) {
        let page = (StatusCode::FORBIDDEN, Html(expired(&pre))).into_response();
        return Err(with_cookie(page, set));
    }
    sign_in_allowed(state, key)
        .await
        .map_err(|d| refuse(d, None))?;
    Ok(pre)
}

/// How a form whose action checks its fields answers: `done` with the action's outcome,
/// the form `again` with its field errors (422), or the refusal page (with `nav`).
fn answer<T>(
    outcome: Result<Result<T, Errors>, Denied>,
    nav: Option<Nav>,
    done: impl FnOnce(T) -> Response,
    again: impl FnOnce(&Errors) -> String,
) -> Response {
    match outcome {
        Ok(Ok(v)) => done(v),
        Ok(Err(e)) => (StatusCode::UNPROCESSABLE_ENTITY, Html(again(&e))).into_response(),
        Err(d) => refuse(d, nav),
    }
}

/// A signed-out form's page, rendered with the pre-session token (its cookie set if new).
fn signed_out_form(headers: &HeaderMap, page: impl FnOnce(&str) -> String) -> Response {
    let (pre, set) = pre_token(headers);
    with_cookie(Html(page(&pre)).into_response(), set)
}

/// Where a signed-out visitor lands, with the session cookie cleared.
fn signed_out_to(to: &str) -> Response {
    with_cookie(
        Redirect::to(to).into_response(),
        Some(auth::clear_session_cookie()),
    )
}

/// A new session: its cookie, and on to the organisations.
fn signed_in(token: &str) -> Response {
    with_cookie(
        Redirect::to("/orgs").into_response(),
        Some(auth::session_cookie(token)),
    )
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
    signed_out_form(&headers, |pre| {
        pages::sign_in(pre, "", None, notice.filter(|n| !n.is_empty()))
    })
}

async fn sign_in(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    headers: HeaderMap,
    Form(f): Form<Credentials>,
) -> Page {
    let expired = |pre: &str| pages::sign_in(pre, &f.email, Some(EXPIRED.into()), None);
    let pre = signed_out_checks(&state, &key, &headers, f.csrf.as_deref(), expired).await?;
    Ok(match authenticate(&state, &f.email, &f.password).await {
        Ok(Some((_, token, _))) => signed_in(&token),
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
    })
}

async fn sign_up_form(headers: HeaderMap) -> Response {
    signed_out_form(&headers, |pre| pages::sign_up(pre, "", &Errors::new()))
}

async fn sign_up(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    headers: HeaderMap,
    Form(f): Form<Credentials>,
) -> Page {
    let expired = |pre: &str| pages::sign_up(pre, &f.email, &expired_error("email"));
    let pre = signed_out_checks(&state, &key, &headers, f.csrf.as_deref(), expired).await?;
    // No session here, new address or not: the answer is "check your inbox" either way
    // (see account::sign_up), so it tells nobody whether the address has an account.
    Ok(answer(
        super::sign_up(&state, &f.email, &f.password).await,
        None,
        |email| Html(pages::check_inbox(&email)).into_response(),
        |errors| pages::sign_up(&pre, &f.email, errors),
    ))
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
    signed_out_to("/signin?notice=signed-out")
}

async fn sign_out_everywhere(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Page {
    let s = ctx::session_form(&state, &headers, f.csrf.as_deref()).await?;
    if let Err(e) = state.accounts.delete_sessions_of(&s.user.id).await {
        return Err(refuse(e.into(), None));
    }
    Ok(signed_out_to("/signin?notice=everywhere"))
}

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

async fn verify_form(headers: HeaderMap, Query(q): Query<TokenQuery>) -> Response {
    signed_out_form(&headers, |pre| pages::verify_email(pre, &q.token, None))
}

async fn verify_post(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    headers: HeaderMap,
    Form(f): Form<TokenPassword>,
) -> Page {
    let page = |pre: &str, m: &str| pages::verify_email(pre, &f.token, Some(m.to_string()));
    let expired = |pre: &str| page(pre, EXPIRED);
    let pre = signed_out_checks(&state, &key, &headers, f.csrf.as_deref(), expired).await?;
    Ok(match verify(&state, &f.token, &f.password).await {
        Ok((_, token, _)) => signed_in(&token),
        Err(Denied::Invalid(m)) => (StatusCode::BAD_REQUEST, Html(page(&pre, &m))).into_response(),
        Err(d) => refuse(d, None),
    })
}

async fn resend_post(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Page {
    let s = ctx::session_form(&state, &headers, f.csrf.as_deref()).await?;
    let sent = match sign_in_allowed(&state, &key).await {
        Ok(()) if s.email_verified => Ok(()),
        Ok(()) => send_verification(&state, &s.user).await,
        Err(d) => Err(d),
    };
    sent.map_err(|d| refuse(d, None))?;
    Ok(Redirect::to("/orgs").into_response())
}

async fn reset_form(headers: HeaderMap) -> Response {
    signed_out_form(&headers, |pre| {
        pages::reset_request(pre, "", &Errors::new(), false)
    })
}

async fn reset_post(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    headers: HeaderMap,
    Form(f): Form<EmailOnly>,
) -> Page {
    let expired = |pre: &str| pages::reset_request(pre, &f.email, &expired_error("email"), false);
    let pre = signed_out_checks(&state, &key, &headers, f.csrf.as_deref(), expired).await?;
    Ok(answer(
        request_reset(&state, &f.email).await,
        None,
        |email| Html(pages::reset_request(&pre, &email, &Errors::new(), true)).into_response(),
        |e| pages::reset_request(&pre, &f.email, e, false),
    ))
}

async fn reset_confirm_form(headers: HeaderMap, Query(q): Query<TokenQuery>) -> Response {
    signed_out_form(&headers, |pre| {
        pages::reset_confirm(pre, &q.token, &Errors::new())
    })
}

async fn reset_confirm_post(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    headers: HeaderMap,
    Form(f): Form<TokenPassword>,
) -> Page {
    let expired = |pre: &str| pages::reset_confirm(pre, &f.token, &expired_error("token"));
    let pre = signed_out_checks(&state, &key, &headers, f.csrf.as_deref(), expired).await?;
    Ok(answer(
        reset(&state, &f.token, &f.password).await,
        None,
        |()| signed_out_to("/signin?notice=password-reset"),
        |e| pages::reset_confirm(&pre, &f.token, e),
    ))
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
) -> Page {
    let s = ctx::session_form(&state, &headers, f.csrf.as_deref()).await?;
    let nav = || Nav::signed_in(&s);
    Ok(answer(
        change_password(&state, &headers, &f.current_password, &f.new_password).await,
        Some(nav()),
        |ended| {
            let notice = format!("Password changed. {ended} other session(s) signed out.");
            Html(pages::account(nav(), &Errors::new(), Some(notice))).into_response()
        },
        |e| pages::account(nav(), e, None),
    ))
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
) -> Page {
    let s = ctx::session_form(&state, &headers, f.csrf.as_deref()).await?;
    Ok(answer(
        delete_account(&state, &headers, &f.password).await,
        Some(Nav::signed_in(&s)),
        |()| signed_out_to("/signin?notice=deleted"),
        |e| pages::account(Nav::signed_in(&s), e, None),
    ))
}

async fn invitation_post(
    state: Shared,
    headers: HeaderMap,
    org: String,
    f: CsrfOnly,
    yes: bool,
) -> Page {
    let s = ctx::session_form(&state, &headers, f.csrf.as_deref()).await?;
    let done = if yes {
        accept(&state, &headers, &org)
            .await
            .map(|_| format!("/orgs/{org}/jobs"))
    } else {
        decline(&state, &headers, &org)
            .await
            .map(|_| "/orgs".to_string())
    };
    let to = done.map_err(|d| refuse(d, Some(Nav::signed_in(&s))))?;
    Ok(Redirect::to(&to).into_response())
}

async fn accept_post(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Page {
    invitation_post(state, headers, org, f, true).await
}

async fn decline_post(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Page {
    invitation_post(state, headers, org, f, false).await
}
