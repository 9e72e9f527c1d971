//! Signing in and a person's own account, for the pages and the JSON API alike: sign-in
//! (the password check, its rate limit and audit), sign-up that proves the
//! e-mail address (a one-time link plus the password chosen at sign-up), password reset
//! by e-mail link, password change, invitations (accepted only by a verified owner of
//! the invited address), the download of everything held about the user, and account
//! deletion.
//!
//! No answer here tells a stranger whether an address has an account: sign-up answers
//! "check your inbox" either way (an existing address gets a "you already have an
//! account" mail instead of a link), a reset request answers the same either way, and
//! mails go out in the background so the time taken does not tell either.
//!
//! The area's pages are `pages`, its HTML handlers (with sign-in, sign-up and sign-out)
//! `web`, its JSON handlers `api`; what both kinds of handler share is here.

pub(crate) mod api;
pub mod pages;
pub(crate) mod web;

use std::sync::atomic::Ordering;

use axum::http::HeaderMap;
use pipeline::accounts::{AccountsError, RateDecision, Role, TokenPurpose, User};
use serde::Deserialize;
use zeroize::Zeroize;

use crate::auth;
use crate::ctx;
use crate::layout::Errors;
use crate::mail;
use crate::respond::Denied;
use crate::state::AppState;
use pages::MyInvitations;

/// How long a sign-up link works.
pub const VERIFY_HOURS: i64 = 48;
/// How long a password-reset link works.
pub const RESET_MINUTES: i64 = 60;

const BAD_LINK: &str = "This link is not valid: it was used already, it expired, or the password does not match. Sign in and ask for a new link, or reset your password.";

fn in_ms(minutes: i64) -> i64 {
    chrono::Utc::now().timestamp_millis() + minutes * 60 * 1000
}

// --- the area's forms: one model each for the page form and the API body -----------------
// A page form sends its CSRF token as `csrf`; the API sends it in a header and leaves
// `csrf` out. Every password is zeroed on drop.

/// Sign-in and sign-up: e-mail and password.
#[derive(Deserialize)]
pub(crate) struct Credentials {
    #[serde(default)]
    pub csrf: Option<String>,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub password: String,
}

/// Confirming an address or setting a new password with a mailed link's token.
#[derive(Deserialize)]
pub(crate) struct TokenPassword {
    #[serde(default)]
    pub csrf: Option<String>,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub password: String,
}

/// Asking for a password-reset link.
#[derive(Deserialize)]
pub(crate) struct EmailOnly {
    #[serde(default)]
    pub csrf: Option<String>,
    #[serde(default)]
    pub email: String,
}

/// Changing the password: the current one and the new one.
#[derive(Deserialize)]
pub(crate) struct PasswordChange {
    #[serde(default)]
    pub csrf: Option<String>,
    #[serde(default)]
    pub current_password: String,
    #[serde(default)]
    pub new_password: String,
}

/// Deleting the account: the password, to confirm.
#[derive(Deserialize)]
pub(crate) struct PasswordConfirm {
    #[serde(default)]
    pub csrf: Option<String>,
    #[serde(default)]
    pub password: String,
}

impl Drop for Credentials {
    fn drop(&mut self) {
        self.password.zeroize();
    }
}

impl Drop for TokenPassword {
    fn drop(&mut self) {
        self.password.zeroize();
    }
}

impl Drop for PasswordChange {
    fn drop(&mut self) {
        self.current_password.zeroize();
        self.new_password.zeroize();
    }
}

impl Drop for PasswordConfirm {
    fn drop(&mut self) {
        self.password.zeroize();
    }
}

// --- the shared logic ------------------------------------------------------------------

/// A new single-use link for `user` to `path` (only its hash is stored), valid for
/// `minutes`; empty when the server sends no mail.
async fn email_link(
    state: &AppState,
    user: &User,
    purpose: TokenPurpose,
    minutes: i64,
    path: &str,
) -> Result<String, Denied> {
    let token = auth::random_token();
    state
        .accounts
        .create_email_token(
            &auth::sha256_hex(token.as_bytes()),
            &user.id,
            purpose,
            in_ms(minutes),
        )
        .await?;
    Ok(state
        .mail
        .as_ref()
        .map(|m| m.link(&format!("{path}?token={token}")))
        .unwrap_or_default())
}

/// Mails a new sign-up link to `user` (earlier links stop working).
pub(crate) async fn send_verification(state: &AppState, user: &User) -> Result<(), Denied> {
    let link = email_link(
        state,
        user,
        TokenPurpose::Verify,
        VERIFY_HOURS * 60,
        "/verify-email",
    )
    .await?;
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

/// The user behind a live e-mail link (by its token's hash), with their password hash;
/// the link stays live until [`use_up_link`].
async fn link_owner(
    state: &AppState,
    sha: &str,
    purpose: TokenPurpose,
) -> Result<Option<(User, String, bool)>, Denied> {
    match state.accounts.peek_email_token(sha, purpose).await? {
        Some(id) => Ok(state.accounts.user_by_id(&id).await?),
        None => Ok(None),
    }
}

/// Uses up an e-mail link: false if it was not live any more (used meanwhile, or expired).
async fn use_up_link(state: &AppState, sha: &str, purpose: TokenPurpose) -> Result<bool, Denied> {
    Ok(state
        .accounts
        .take_email_token(sha, purpose)
        .await?
        .is_some())
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
    let user = link_owner(state, &sha, TokenPurpose::Verify).await?;
    let Some((user, hash, _)) = user else {
        auth::verify_password(password, auth::dummy_hash());
        return Err(Denied::Invalid(BAD_LINK.into()));
    };
    if !auth::verify_password(password, &hash) {
        return Err(Denied::Invalid(BAD_LINK.into()));
    }
    if !use_up_link(state, &sha, TokenPurpose::Verify).await? {
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
            return Ok(Err(Errors::from([("email", m)])));
        }
    };
    if let Some((user, _)) = state.accounts.user_by_email(&email).await? {
        let link = email_link(
            state,
            &user,
            TokenPurpose::Reset,
            RESET_MINUTES,
            "/reset-password/confirm",
        )
        .await?;
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
    const BAD_RESET: &str =
        "This reset link is not valid: it was used already or it expired. Ask for a new one.";
    let bad = || Errors::from([("token", BAD_RESET.to_string())]);
    let user = link_owner(state, &sha, TokenPurpose::Reset).await?;
    let Some((user, _, _)) = user else {
        return Ok(Err(bad()));
    };
    if let Err(m) = auth::check_password(password, &user.email) {
        return Ok(Err(Errors::from([("password", m)])));
    }
    let hash = auth::hash_password(password).map_err(Denied::Internal)?;
    if !use_up_link(state, &sha, TokenPurpose::Reset).await? {
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
        return Ok(Err(Errors::from([(
            "password",
            "This is not your password.".into(),
        )])));
    }
    match state.accounts.delete_user(&s.user.id).await {
        Ok(()) => {
            // The user's own rate-limit counter (keyed by their id, salted) goes too.
            let key = auth::user_rate_key(&state.ip_salt, &s.user.id);
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

/// Counts a sign-in attempt against the client's limit.
pub(crate) async fn sign_in_allowed(state: &AppState, key: &str) -> Result<(), Denied> {
    let (limit, window) = state.limits.sign_in;
    match state.accounts.hit(key, "sign_in", window, limit).await? {
        RateDecision::Allowed { .. } => Ok(()),
        RateDecision::Refused { retry_after_s } => {
            state.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            Err(Denied::RateLimited(retry_after_s))
        }
    }
}

/// Checks e-mail and password; on success returns a new session's cookie and records
/// the sign-in in the audit trail of the user's organisations.
pub(crate) async fn authenticate(
    state: &AppState,
    email: &str,
    password: &str,
) -> Result<Option<(pipeline::accounts::User, String, String)>, Denied> {
    let Ok(email) = auth::normalise_email(email) else {
        auth::verify_password(password, auth::dummy_hash());
        return Ok(None);
    };
    let found = state.accounts.user_by_email(&email).await?;
    let (user, hash) = match found {
        Some(f) => f,
        None => {
            auth::verify_password(password, auth::dummy_hash());
            state
                .counters
                .failed_sign_ins
                .fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
    };
    let ok = auth::verify_password(password, &hash);
    let orgs = state.accounts.orgs_of(&user.id).await?;
    for (o, _) in &orgs {
        state
            .accounts
            .audit(
                &o.id,
                &user.email,
                if ok { "sign_in" } else { "sign_in.failed" },
                "",
            )
            .await?;
    }
    if !ok {
        state
            .counters
            .failed_sign_ins
            .fetch_add(1, Ordering::Relaxed);
        return Ok(None);
    }
    state.counters.sign_ins.fetch_add(1, Ordering::Relaxed);
    let (token, csrf) = auth::issue_session(&state.accounts, &user).await?;
    Ok(Some((user, token, csrf)))
}

/// The invitations panel: shown only to a verified owner of the address.
pub(crate) async fn my_invitations(
    state: &AppState,
    s: &pipeline::accounts::Session,
) -> Result<MyInvitations, Denied> {
    if !s.email_verified {
        return Ok(MyInvitations::Unverified {
            email: s.user.email.clone(),
        });
    }
    Ok(MyInvitations::Verified(
        state.accounts.invitations_for(&s.user.email).await?,
    ))
}
