//! The sign-in and account area's JSON handlers: sign-in, who am I, sign-up, e-mail
//! confirmation, password reset and change, the data download, account deletion, and
//! invitations.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{
    Credentials, EmailOnly, PasswordChange, PasswordConfirm, TokenPassword, accept, authenticate,
    decline, delete_account, request_reset, reset, send_verification, sign_in_allowed, verify,
};
use crate::auth;
use crate::ctx;
use crate::layout::Errors;
use crate::respond::{ApiResult, Denied, api_error, body, invalid, with_cookie};
use crate::state::{AppState, ClientKey, Shared};

pub(crate) async fn sign_in(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    raw: Bytes,
) -> ApiResult {
    let b: Credentials = signed_out_body(&state, &key, &raw).await?;
    match authenticate(&state, &b.email, &b.password).await? {
        Some((user, token, csrf)) => {
            let r = Json(json!({"user": {"id": user.id, "email": user.email}, "csrf_token": csrf}))
                .into_response();
            Ok(with_cookie(r, Some(auth::session_cookie(&token))))
        }
        None => Ok(api_error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Wrong e-mail address or password: check both and try again.",
        )),
    }
}

pub(crate) async fn me(State(state): State<Shared>, headers: HeaderMap) -> ApiResult {
    let s = ctx::session(&state, &headers).await?;
    let orgs = state
        .accounts
        .orgs_of(&s.user.id)
        .await
        .map_err(Denied::from)?;
    Ok(Json(json!({
        "user": {"id": s.user.id, "email": s.user.email},
        "email_verified": s.email_verified,
        "csrf_token": s.csrf_token,
        "organisations": orgs.iter().map(|(o, r)| json!({"id": o.id, "name": o.name, "role": r.as_str()})).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// The one answer of a valid sign-up or reset request, whether the address had an account
/// or not.
fn inbox_answer(email: &str, message: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({"email": email, "status": "check_your_inbox", "message": message})),
    )
        .into_response()
}

/// What every signed-out request checks and reads first: the client's sign-in rate limit,
/// then its JSON body.
async fn signed_out_body<T: DeserializeOwned>(
    state: &AppState,
    key: &str,
    raw: &Bytes,
) -> Result<T, Denied> {
    sign_in_allowed(state, key).await?;
    body(raw)
}

/// The answer of an action that checks its fields: `done` with its outcome, or the
/// field errors (422).
fn checked<T>(outcome: Result<T, Errors>, done: impl FnOnce(T) -> Response) -> ApiResult {
    Ok(outcome.map_or_else(|e| invalid(&e), done))
}

pub(crate) async fn sign_up(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    raw: Bytes,
) -> ApiResult {
    let b: Credentials = signed_out_body(&state, &key, &raw).await?;
    checked(
        super::sign_up(&state, &b.email, &b.password).await?,
        |email| {
            inbox_answer(
                &email,
                "We sent a mail to this address: open its link to confirm the address and finish signing up.",
            )
        },
    )
}

pub(crate) async fn verify_email(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    raw: Bytes,
) -> ApiResult {
    let b: TokenPassword = signed_out_body(&state, &key, &raw).await?;
    let (user, token, csrf) = verify(&state, &b.token, &b.password).await?;
    let r = Json(json!({"user": {"id": user.id, "email": user.email}, "csrf_token": csrf, "email_verified": true}))
        .into_response();
    Ok(with_cookie(r, Some(auth::session_cookie(&token))))
}

pub(crate) async fn password_reset(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    raw: Bytes,
) -> ApiResult {
    let b: EmailOnly = signed_out_body(&state, &key, &raw).await?;
    checked(request_reset(&state, &b.email).await?, |email| {
        inbox_answer(
            &email,
            "If this address has an account, we sent it a link to choose a new password.",
        )
    })
}

pub(crate) async fn password_reset_confirm(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    raw: Bytes,
) -> ApiResult {
    let b: TokenPassword = signed_out_body(&state, &key, &raw).await?;
    checked(reset(&state, &b.token, &b.password).await?, |()| {
        Json(json!({"password_reset": true, "sessions_ended": true})).into_response()
    })
}

pub(crate) async fn my_data(State(state): State<Shared>, headers: HeaderMap) -> ApiResult {
    let s = ctx::verified_session(&state, &headers).await?;
    let v = state
        .accounts
        .personal_data(&s.user.id)
        .await
        .map_err(Denied::from)?;
    Ok(Json(v).into_response())
}

pub(crate) async fn change_password(
    State(state): State<Shared>,
    headers: HeaderMap,
    raw: Bytes,
) -> ApiResult {
    ctx::session_api_write(&state, &headers).await?;
    let b: PasswordChange = body(&raw)?;
    let outcome =
        super::change_password(&state, &headers, &b.current_password, &b.new_password).await?;
    checked(outcome, |ended| {
        Json(json!({"password_changed": true, "other_sessions_ended": ended})).into_response()
    })
}

pub(crate) async fn delete_me(
    State(state): State<Shared>,
    headers: HeaderMap,
    raw: Bytes,
) -> ApiResult {
    ctx::session_api_write(&state, &headers).await?;
    let b: PasswordConfirm = body(&raw)?;
    checked(delete_account(&state, &headers, &b.password).await?, |()| {
        let r = Json(json!({"deleted": true})).into_response();
        with_cookie(r, Some(auth::clear_session_cookie()))
    })
}

pub(crate) async fn my_invitations(State(state): State<Shared>, headers: HeaderMap) -> ApiResult {
    let s = ctx::verified_session(&state, &headers).await?;
    let list = state
        .accounts
        .invitations_for(&s.user.email)
        .await
        .map_err(Denied::from)?;
    Ok(Json(json!({
        "invitations": list.iter().map(|i| json!({
            "organisation": i.org_id, "name": i.org_name, "role": i.role.as_str(),
            "invited_by": i.invited_by, "created_ms": i.created_ms,
        })).collect::<Vec<_>>(),
    }))
    .into_response())
}

pub(crate) async fn accept_invitation(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    ctx::session_api_write(&state, &headers).await?;
    let role = accept(&state, &headers, &org).await?;
    Ok(Json(json!({"organisation": org, "role": role.as_str()})).into_response())
}

pub(crate) async fn decline_invitation(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    ctx::session_api_write(&state, &headers).await?;
    let had = decline(&state, &headers, &org).await?;
    Ok(Json(json!({"organisation": org, "declined": had})).into_response())
}

pub(crate) async fn resend_verification(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    headers: HeaderMap,
) -> ApiResult {
    let s = ctx::session_api_write(&state, &headers).await?;
    sign_in_allowed(&state, &key).await?;
    if !s.email_verified {
        send_verification(&state, &s.user).await?;
    }
    Ok(Json(json!({"email": s.user.email, "email_verified": s.email_verified, "link_sent": !s.email_verified})).into_response())
}
