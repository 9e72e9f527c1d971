//! A person's own account, for the pages and the JSON API alike: sign-up that proves the
//! e-mail address (a one-time link plus the password chosen at sign-up), password reset
//! by e-mail link, password change, invitations (accepted only by a verified owner of
//! the invited address), the download of everything held about the user, and account
//! deletion.
//!
//! No answer here tells a stranger whether an address has an account: sign-up answers
//! "check your inbox" either way (an existing address gets a "you already have an
//! account" mail instead of a link), a reset request answers the same either way, and
//! mails go out in the background so the time taken does not tell either.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use pipeline::accounts::{AccountsError, Role, TokenPurpose, User};
use serde::Deserialize;
use serde_json::json;

use crate::account_pages;
use crate::api::{ApiError, body, csrf_header};
use crate::app::{AppState, ClientKey, Shared};
use crate::auth;
use crate::ctx::{self, Denied};
use crate::mail;
use crate::pages::{Errors, Nav};
use crate::web::{pre_ok, pre_token, refuse, sign_in_allowed, with_cookie};

/// How long a sign-up link works.
pub const VERIFY_HOURS: i64 = 48;
/// How long a password-reset link works.
pub const RESET_MINUTES: i64 = 60;

const BAD_LINK: &str = "This link is not valid: it was used already, it expired, or the password does not match. Sign in and ask for a new link, or reset your password.";

fn in_ms(minutes: i64) -> i64 {
    chrono::Utc::now().timestamp_millis() + minutes * 60 * 1000
}

// --- the shared logic ------------------------------------------------------------------

/// Mails a new sign-up link to `user` (earlier links stop working).
pub(crate) async fn send_verification(state: &AppState, user: &User) -> Result<(), Denied> {
    let token = auth::random_token();
    state
        .accounts
        .create_email_token(
            &auth::sha256_hex(token.as_bytes()),
            &user.id,
            TokenPurpose::Verify,
            in_ms(VERIFY_HOURS * 60),
        )
        .await?;
    let link = state
        .mail
        .as_ref()
        .map(|m| m.link(&format!("/verify-email?token={token}")))
        .unwrap_or_default();
    mail::send_later(
        state.mail.as_ref(),
        user.email.clone(),
        "Confirm your e-mail address for portshift",
        mail::verify_body(&link, VERIFY_HOURS),
    );
    Ok(())
}

/// Signs up `email`. Field errors depend only on what was typed. A new address gets an
/// unverified account and a link; an address with an account gets a "you already have
/// one" mail. The caller answers the same in both cases.
pub(crate) async fn sign_up(
    state: &AppState,
    email: &str,
    password: &str,
) -> Result<Result<String, Errors>, Denied> {
    let mut errors = Errors::new();
    let email = match auth::normalise_email(email) {
        Ok(e) => e,
        Err(m) => {
            errors.insert("email", m);
            String::new()
        }
    };
    if let Err(m) = auth::check_password(password, &email) {
        errors.insert("password", m);
    }
    if !errors.is_empty() {
        return Ok(Err(errors));
    }
    if state.mail.is_none() {
        return Err(Denied::Conflict(
            "Sign-up needs e-mail, and this portshift server has none configured: ask its operator to start it with --smtp-url.".into(),
        ));
    }
    let hash = auth::hash_password(password).map_err(Denied::Internal)?;
    match state.accounts.register(&email, &hash).await {
        Ok(user) => send_verification(state, &user).await?,
        Err(AccountsError::EmailTaken) => {
            let link = |p: &str| state.mail.as_ref().map(|m| m.link(p)).unwrap_or_default();
            mail::send_later(
                state.mail.as_ref(),
                email.clone(),
                "You already have a portshift account",
                mail::already_body(&link("/signin"), &link("/reset-password")),
            );
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Ok(email))
}

/// Confirms the address behind a sign-up link: the link must be live and the password
/// the account's (so whoever signed up with someone else's address cannot have that
/// person confirm it by clicking). Returns a new session for the now verified user.
pub(crate) async fn verify(
    state: &AppState,
    token: &str,
    password: &str,
) -> Result<(User, String, String), Denied> {
    let sha = auth::sha256_hex(token.as_bytes());
    let user = match state
        .accounts
        .peek_email_token(&sha, TokenPurpose::Verify)
        .await?
    {
        Some(id) => state.accounts.user_by_id(&id).await?,
        None => None,
    };
    let Some((user, hash, _)) = user else {
        auth::verify_password(password, auth::dummy_hash());
        return Err(Denied::Invalid(BAD_LINK.into()));
    };
    if !auth::verify_password(password, &hash) {
        return Err(Denied::Invalid(BAD_LINK.into()));
    }
    if state
        .accounts
        .take_email_token(&sha, TokenPurpose::Verify)
        .await?
        .is_none()
    {
        return Err(Denied::Invalid(BAD_LINK.into()));
    }
    state.accounts.mark_verified(&user.id).await?;
    let (session, csrf) = auth::issue_session(&state.accounts, &user).await?;
    Ok((user, session, csrf))
}

/// Mails a reset link if the address has an account; answers the same either way.
pub(crate) async fn request_reset(
    state: &AppState,
    email: &str,
) -> Result<Result<String, Errors>, Denied> {
    let email = match auth::normalise_email(email) {
        Ok(e) => e,
        Err(m) => {
            let mut e = Errors::new();
            e.insert("email", m);
            return Ok(Err(e));
        }
    };
    if let Some((user, _)) = state.accounts.user_by_email(&email).await? {
        let token = auth::random_token();
        state
            .accounts
            .create_email_token(
                &auth::sha256_hex(token.as_bytes()),
                &user.id,
                TokenPurpose::Reset,
                in_ms(RESET_MINUTES),
            )
            .await?;
        let link = state
            .mail
            .as_ref()
            .map(|m| m.link(&format!("/reset-password/confirm?token={token}")))
            .unwrap_or_default();
        mail::send_later(
            state.mail.as_ref(),
            user.email,
            "Reset your portshift password",
            mail::reset_body(&link, RESET_MINUTES),
        );
    }
    Ok(Ok(email))
}

/// Sets a new password through a reset link: the link is used up, the address counts
/// as verified (the link proved it), and every session of the user ends.
pub(crate) async fn reset(
    state: &AppState,
    token: &str,
    password: &str,
) -> Result<Result<(), Errors>, Denied> {
    let sha = auth::sha256_hex(token.as_bytes());
    let bad = || {
        let mut e = Errors::new();
        e.insert(
            "token",
            "This reset link is not valid: it was used already or it expired. Ask for a new one."
                .to_string(),
        );
        e
    };
    let user = match state
        .accounts
        .peek_email_token(&sha, TokenPurpose::Reset)
        .await?
    {
        Some(id) => state.accounts.user_by_id(&id).await?,
        None => None,
    };
    let Some((user, _, _)) = user else {
        return Ok(Err(bad()));
    };
    if let Err(m) = auth::check_password(password, &user.email) {
        let mut e = Errors::new();
        e.insert("password", m);
        return Ok(Err(e));
    }
    let hash = auth::hash_password(password).map_err(Denied::Internal)?;
    if state
        .accounts
        .take_email_token(&sha, TokenPurpose::Reset)
        .await?
        .is_none()
    {
        return Ok(Err(bad()));
    }
    state.accounts.set_password(&user.id, &hash).await?;
    state.accounts.mark_verified(&user.id).await?;
    state.accounts.delete_sessions_of(&user.id).await?;
    audit_all(
        state,
        &user,
        "password.reset",
        "by e-mail link; all sessions ended",
    )
    .await?;
    Ok(Ok(()))
}

/// Changes the password of the signed-in user, who must give the current one; their
/// other sessions end, this one stays.
pub(crate) async fn change_password(
    state: &AppState,
    headers: &HeaderMap,
    current: &str,
    new: &str,
) -> Result<Result<u64, Errors>, Denied> {
    let s = ctx::session(state, headers).await?;
    let Some((user, hash, _)) = state.accounts.user_by_id(&s.user.id).await? else {
        return Err(Denied::SignIn);
    };
    let mut e = Errors::new();
    if !auth::verify_password(current, &hash) {
        e.insert(
            "current_password",
            "This is not your current password.".into(),
        );
    } else if let Err(m) = auth::check_password(new, &user.email) {
        e.insert("new_password", m);
    }
    if !e.is_empty() {
        return Ok(Err(e));
    }
    let new_hash = auth::hash_password(new).map_err(Denied::Internal)?;
    state.accounts.set_password(&user.id, &new_hash).await?;
    let keep = auth::cookie(headers, auth::SESSION_COOKIE)
        .map(|t| auth::sha256_hex(t.as_bytes()))
        .unwrap_or_default();
    let ended = state
        .accounts
        .delete_other_sessions(&user.id, &keep)
        .await?;
    audit_all(state, &user, "password.changed", "other sessions ended").await?;
    Ok(Ok(ended))
}

/// Deletes the signed-in user's account after checking their password.
pub(crate) async fn delete_account(
    state: &AppState,
    headers: &HeaderMap,
    password: &str,
) -> Result<Result<(), Errors>, Denied> {
    let s = ctx::session(state, headers).await?;
    let Some((_, hash, _)) = state.accounts.user_by_id(&s.user.id).await? else {
        return Err(Denied::SignIn);
    };
    if !auth::verify_password(password, &hash) {
        let mut e = Errors::new();
        e.insert("password", "This is not your password.".into());
        return Ok(Err(e));
    }
    match state.accounts.delete_user(&s.user.id).await {
        Ok(()) => {
            // The user's own rate-limit counter (keyed by their id, salted) goes too.
            let key = crate::exports::user_rate_key(&state.ip_salt, &s.user.id);
            state.accounts.delete_rate_limit_key(&key).await?;
            Ok(Ok(()))
        }
        Err(e @ AccountsError::LastOwner(_)) => Err(Denied::Conflict(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// Accepts an invitation to `org` for the signed-in, verified user.
pub(crate) async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    org: &str,
) -> Result<Role, Denied> {
    let s = ctx::verified_session(state, headers).await?;
    match state.accounts.accept_invitation(&s.user, org).await? {
        Some(role) => {
            state.accounts.audit(org, &s.user.email, "member.joined", &format!("accepted the invitation; role {role}")).await?;
            Ok(role)
        }
        None => Err(Denied::NotFound(
            "No live invitation of your address to this organisation: it was withdrawn, declined or expired. Ask an admin to invite you again.".into(),
        )),
    }
}

pub(crate) async fn decline(
    state: &AppState,
    headers: &HeaderMap,
    org: &str,
) -> Result<bool, Denied> {
    let s = ctx::verified_session(state, headers).await?;
    let had = state
        .accounts
        .decline_invitation(&s.user.email, org)
        .await?;
    if had {
        state
            .accounts
            .audit(org, &s.user.email, "invitation.declined", "")
            .await?;
    }
    Ok(had)
}

/// Records an event in the audit trail of every organisation of `user`.
async fn audit_all(
    state: &AppState,
    user: &User,
    action: &str,
    detail: &str,
) -> Result<(), Denied> {
    for (o, _) in state.accounts.orgs_of(&user.id).await? {
        state
            .accounts
            .audit(&o.id, &user.email, action, detail)
            .await?;
    }
    Ok(())
}

// --- pages -----------------------------------------------------------------------------

pub fn routes() -> Router<Shared> {
    Router::new()
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

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

async fn verify_form(headers: HeaderMap, Query(q): Query<TokenQuery>) -> Response {
    let (pre, set) = pre_token(&headers);
    with_cookie(
        Html(account_pages::verify_email(&pre, &q.token, None)).into_response(),
        set,
    )
}

#[derive(Deserialize)]
struct TokenPassword {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
}

impl Drop for TokenPassword {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
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
                Html(account_pages::verify_email(
                    &pre,
                    &f.token,
                    Some(m.to_string()),
                )),
            )
                .into_response(),
            set.clone(),
        )
    };
    if !pre_ok(&headers, f.csrf.as_deref()) {
        return again(StatusCode::FORBIDDEN, "The form expired: submit it again.");
    }
    if let Err(d) = sign_in_allowed(&state, &key).await {
        return refuse(d, None);
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

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: Option<String>,
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

#[derive(Deserialize)]
struct EmailForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    email: String,
}

async fn reset_form(headers: HeaderMap) -> Response {
    let (pre, set) = pre_token(&headers);
    with_cookie(
        Html(account_pages::reset_request(
            &pre,
            "",
            &Errors::new(),
            false,
        ))
        .into_response(),
        set,
    )
}

async fn reset_post(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    headers: HeaderMap,
    Form(f): Form<EmailForm>,
) -> Response {
    let (pre, set) = pre_token(&headers);
    if !pre_ok(&headers, f.csrf.as_deref()) {
        let mut e = Errors::new();
        e.insert("email", "The form expired: submit it again.".into());
        return with_cookie(
            (
                StatusCode::FORBIDDEN,
                Html(account_pages::reset_request(&pre, &f.email, &e, false)),
            )
                .into_response(),
            set,
        );
    }
    if let Err(d) = sign_in_allowed(&state, &key).await {
        return refuse(d, None);
    }
    match request_reset(&state, &f.email).await {
        Ok(Ok(email)) => Html(account_pages::reset_request(
            &pre,
            &email,
            &Errors::new(),
            true,
        ))
        .into_response(),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(account_pages::reset_request(&pre, &f.email, &e, false)),
        )
            .into_response(),
        Err(d) => refuse(d, None),
    }
}

async fn reset_confirm_form(headers: HeaderMap, Query(q): Query<TokenQuery>) -> Response {
    let (pre, set) = pre_token(&headers);
    with_cookie(
        Html(account_pages::reset_confirm(&pre, &q.token, &Errors::new())).into_response(),
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
    if !pre_ok(&headers, f.csrf.as_deref()) {
        let mut e = Errors::new();
        e.insert("token", "The form expired: submit it again.".into());
        return with_cookie(
            (
                StatusCode::FORBIDDEN,
                Html(account_pages::reset_confirm(&pre, &f.token, &e)),
            )
                .into_response(),
            set,
        );
    }
    if let Err(d) = sign_in_allowed(&state, &key).await {
        return refuse(d, None);
    }
    match reset(&state, &f.token, &f.password).await {
        Ok(Ok(())) => with_cookie(
            Redirect::to("/signin?notice=password-reset").into_response(),
            Some(auth::clear_session_cookie()),
        ),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(account_pages::reset_confirm(&pre, &f.token, &e)),
        )
            .into_response(),
        Err(d) => refuse(d, None),
    }
}

fn nav_of(s: &pipeline::accounts::Session) -> Nav {
    Nav {
        email: s.user.email.clone(),
        csrf: s.csrf_token.clone(),
        org: None,
    }
}

async fn account_page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match ctx::session(&state, &headers).await {
        Ok(s) => Html(account_pages::account(nav_of(&s), &Errors::new(), None)).into_response(),
        Err(d) => refuse(d, None),
    }
}

#[derive(Deserialize)]
struct PasswordForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    new_password: String,
}

impl Drop for PasswordForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.current_password);
        zeroize::Zeroize::zeroize(&mut self.new_password);
    }
}

async fn password_post(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<PasswordForm>,
) -> Response {
    let s = match ctx::session(&state, &headers).await {
        Ok(s) => s,
        Err(d) => return refuse(d, None),
    };
    if ctx::check_csrf(&s, f.csrf.as_deref()).is_err() {
        return refuse(Denied::Csrf, Some(nav_of(&s)));
    }
    match change_password(&state, &headers, &f.current_password, &f.new_password).await {
        Ok(Ok(ended)) => Html(account_pages::account(
            nav_of(&s),
            &Errors::new(),
            Some(format!(
                "Password changed. {ended} other session(s) signed out."
            )),
        ))
        .into_response(),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(account_pages::account(nav_of(&s), &e, None)),
        )
            .into_response(),
        Err(d) => refuse(d, Some(nav_of(&s))),
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
        Err(e) => refuse(e.into(), Some(nav_of(&s))),
    }
}

#[derive(Deserialize)]
struct DeleteForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    password: String,
}

impl Drop for DeleteForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

async fn delete_post(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<DeleteForm>,
) -> Response {
    let s = match ctx::session(&state, &headers).await {
        Ok(s) => s,
        Err(d) => return refuse(d, None),
    };
    if ctx::check_csrf(&s, f.csrf.as_deref()).is_err() {
        return refuse(Denied::Csrf, Some(nav_of(&s)));
    }
    match delete_account(&state, &headers, &f.password).await {
        Ok(Ok(())) => with_cookie(
            Redirect::to("/signin?notice=deleted").into_response(),
            Some(auth::clear_session_cookie()),
        ),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(account_pages::account(nav_of(&s), &e, None)),
        )
            .into_response(),
        Err(d) => refuse(d, Some(nav_of(&s))),
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
        return refuse(Denied::Csrf, Some(nav_of(&s)));
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
        Err(d) => refuse(d, Some(nav_of(&s))),
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

// --- JSON API --------------------------------------------------------------------------

type ApiResult = Result<Response, ApiError>;

fn invalid(errors: &Errors) -> Response {
    crate::api::invalid(errors)
}

#[derive(Deserialize)]
struct EmailPassword {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

impl Drop for EmailPassword {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

/// The one answer of a valid sign-up, whether the address had an account or not.
fn inbox_answer(email: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "email": email,
            "status": "check_your_inbox",
            "message": "We sent a mail to this address: open its link to confirm the address and finish signing up.",
        })),
    )
        .into_response()
}

pub(crate) async fn api_sign_up(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    raw: Bytes,
) -> ApiResult {
    sign_in_allowed(&state, &key).await?;
    let b: EmailPassword = body(&raw)?;
    match sign_up(&state, &b.email, &b.password).await? {
        Ok(email) => Ok(inbox_answer(&email)),
        Err(e) => Ok(invalid(&e)),
    }
}

#[derive(Deserialize)]
struct TokenPasswordBody {
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
}

impl Drop for TokenPasswordBody {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

pub(crate) async fn api_verify_email(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    raw: Bytes,
) -> ApiResult {
    sign_in_allowed(&state, &key).await?;
    let b: TokenPasswordBody = body(&raw)?;
    let (user, token, csrf) = verify(&state, &b.token, &b.password).await?;
    let mut r = Json(json!({"user": {"id": user.id, "email": user.email}, "csrf_token": csrf, "email_verified": true}))
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::session_cookie(&token)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

#[derive(Deserialize)]
struct EmailBody {
    #[serde(default)]
    email: String,
}

pub(crate) async fn api_password_reset(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    raw: Bytes,
) -> ApiResult {
    sign_in_allowed(&state, &key).await?;
    let b: EmailBody = body(&raw)?;
    match request_reset(&state, &b.email).await? {
        Ok(email) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "email": email,
                "status": "check_your_inbox",
                "message": "If this address has an account, we sent it a link to choose a new password.",
            })),
        )
            .into_response()),
        Err(e) => Ok(invalid(&e)),
    }
}

pub(crate) async fn api_password_reset_confirm(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    raw: Bytes,
) -> ApiResult {
    sign_in_allowed(&state, &key).await?;
    let b: TokenPasswordBody = body(&raw)?;
    match reset(&state, &b.token, &b.password).await? {
        Ok(()) => Ok(Json(json!({"password_reset": true, "sessions_ended": true})).into_response()),
        Err(e) => Ok(invalid(&e)),
    }
}

pub(crate) async fn api_my_data(State(state): State<Shared>, headers: HeaderMap) -> ApiResult {
    let s = ctx::verified_session(&state, &headers).await?;
    let v = state
        .accounts
        .personal_data(&s.user.id)
        .await
        .map_err(Denied::from)?;
    Ok(Json(v).into_response())
}

#[derive(Deserialize)]
struct PasswordBody {
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    new_password: String,
}

impl Drop for PasswordBody {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.current_password);
        zeroize::Zeroize::zeroize(&mut self.new_password);
    }
}

async fn checked_session(state: &AppState, headers: &HeaderMap) -> Result<(), Denied> {
    let s = ctx::session(state, headers).await?;
    ctx::check_csrf(&s, csrf_header(headers))
}

pub(crate) async fn api_change_password(
    State(state): State<Shared>,
    headers: HeaderMap,
    raw: Bytes,
) -> ApiResult {
    checked_session(&state, &headers).await?;
    let b: PasswordBody = body(&raw)?;
    match change_password(&state, &headers, &b.current_password, &b.new_password).await? {
        Ok(ended) => Ok(
            Json(json!({"password_changed": true, "other_sessions_ended": ended})).into_response(),
        ),
        Err(e) => Ok(invalid(&e)),
    }
}

#[derive(Deserialize)]
struct PasswordOnly {
    #[serde(default)]
    password: String,
}

impl Drop for PasswordOnly {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

pub(crate) async fn api_delete_me(
    State(state): State<Shared>,
    headers: HeaderMap,
    raw: Bytes,
) -> ApiResult {
    checked_session(&state, &headers).await?;
    let b: PasswordOnly = body(&raw)?;
    match delete_account(&state, &headers, &b.password).await? {
        Ok(()) => {
            let mut r = Json(json!({"deleted": true})).into_response();
            if let Ok(v) = HeaderValue::from_str(&auth::clear_session_cookie()) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            Ok(r)
        }
        Err(e) => Ok(invalid(&e)),
    }
}

pub(crate) async fn api_my_invitations(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> ApiResult {
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

pub(crate) async fn api_accept_invitation(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    checked_session(&state, &headers).await?;
    let role = accept(&state, &headers, &org).await?;
    Ok(Json(json!({"organisation": org, "role": role.as_str()})).into_response())
}

pub(crate) async fn api_decline_invitation(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    checked_session(&state, &headers).await?;
    let had = decline(&state, &headers, &org).await?;
    Ok(Json(json!({"organisation": org, "declined": had})).into_response())
}

pub(crate) async fn api_resend_verification(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    headers: HeaderMap,
) -> ApiResult {
    let s = ctx::session(&state, &headers).await?;
    ctx::check_csrf(&s, csrf_header(&headers))?;
    sign_in_allowed(&state, &key).await?;
    if !s.email_verified {
        send_verification(&state, &s.user).await?;
    }
    Ok(Json(json!({"email": s.user.email, "email_verified": s.email_verified, "link_sent": !s.email_verified})).into_response())
}
