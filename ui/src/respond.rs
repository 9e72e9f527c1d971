//! How the console says no and answers, below every area: `Denied` (why a request is
//! refused), the page form of a refusal (`refuse`, an error page) and the API's
//! (`ApiError`, one stable JSON shape), the API's request bodies (`body`) and CSRF header,
//! the forms' CSRF-only body, and the pre-session CSRF cookie of the sign-in forms.

use axum::Json;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use crate::auth;
use crate::layout::{self, Errors, Nav};

/// Why a request is refused.
#[derive(Debug)]
pub enum Denied {
    /// No valid session: sign in.
    SignIn,
    /// No such organisation or job, or the caller is not a member (not told apart, so
    /// outsiders learn nothing).
    NotFound(String),
    /// A member whose role does not allow the action.
    Forbidden(String),
    /// The form or request lacks a valid CSRF token.
    Csrf,
    /// A rate limit: retry after this many seconds.
    RateLimited(u64),
    /// The request itself is wrong; the message says how to fix it.
    Invalid(String),
    /// The request conflicts with the current state (e.g. removing the last owner).
    Conflict(String),
    Internal(String),
}

impl<E: std::fmt::Display> From<E> for Denied
where
    E: std::error::Error,
{
    fn from(e: E) -> Self {
        tracing::error!("console: {e}");
        Denied::Internal(e.to_string())
    }
}

/// How a page says no.
pub(crate) fn refuse(d: Denied, nav: Option<Nav>) -> Response {
    match d {
        Denied::SignIn => Redirect::to("/signin").into_response(),
        Denied::NotFound(m) => (StatusCode::NOT_FOUND, Html(layout::error_page(nav, "Not found", &m))).into_response(),
        Denied::Forbidden(m) => (StatusCode::FORBIDDEN, Html(layout::error_page(nav, "Not allowed", &m))).into_response(),
        Denied::Csrf => (
            StatusCode::FORBIDDEN,
            Html(layout::error_page(
                nav,
                "Form expired",
                "This form's security token is missing or out of date: go back, reload the page and submit it again.",
            )),
        )
            .into_response(),
        Denied::RateLimited(secs) => {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                Html(layout::error_page(
                    nav,
                    "Too many attempts",
                    &format!("Too many attempts from your network: wait {secs} seconds, then try again."),
                )),
            )
                .into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
        Denied::Invalid(m) => (StatusCode::BAD_REQUEST, Html(layout::error_page(nav, "Cannot do that", &m))).into_response(),
        Denied::Conflict(m) => (StatusCode::CONFLICT, Html(layout::error_page(nav, "Cannot do that", &m))).into_response(),
        Denied::Internal(m) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Html(layout::error_page(
                nav,
                "Something went wrong",
                &format!("{m}. Try again; if it keeps failing, tell your portshift operator."),
            )),
        )
            .into_response(),
    }
}

/// A page handler's answer: the page, or the refusal page it stopped at. axum answers
/// either, so a handler stops at a failed check with `?`.
pub(crate) type Page = Result<Response, Response>;

/// A form whose only field is its CSRF token (sign-out, pause, remove, ...).
#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    pub csrf: Option<String>,
}

/// Reuses or sets the pre-session CSRF cookie for the sign-in and sign-up forms.
pub(crate) fn pre_token(headers: &HeaderMap) -> (String, Option<String>) {
    match auth::cookie(headers, auth::PRE_COOKIE) {
        Some(t) => (t, None),
        None => {
            let t = auth::random_token();
            let c = auth::pre_cookie(&t);
            (t, Some(c))
        }
    }
}

/// Adds a `Set-Cookie` header (if any) to a response.
pub(crate) fn with_cookie(mut r: Response, cookie: Option<String>) -> Response {
    if let Some(c) = cookie
        && let Ok(v) = HeaderValue::from_str(&c)
    {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// Checks a sign-in form's token against the pre-session cookie.
pub(crate) fn pre_ok(headers: &HeaderMap, submitted: Option<&str>) -> bool {
    match (auth::cookie(headers, auth::PRE_COOKIE), submitted) {
        (Some(c), Some(s)) => auth::tokens_match(&c, s),
        _ => false,
    }
}

/// A refusal in the JSON API's shape: `{"error": {"code", "message"}}`.
pub struct ApiError(Denied);

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        ApiError(d)
    }
}

/// An API error without field details.
pub(crate) fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

pub(crate) fn invalid(errors: &Errors) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"error": {
            "code": "invalid",
            "message": "Some fields are not valid: see fields.",
            "fields": errors,
        }})),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self.0 {
            Denied::SignIn => api_error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Sign in first: POST /api/v1/session with your e-mail and password.",
            ),
            Denied::NotFound(m) => api_error(StatusCode::NOT_FOUND, "not_found", &m),
            Denied::Forbidden(m) => api_error(StatusCode::FORBIDDEN, "forbidden", &m),
            Denied::Csrf => api_error(
                StatusCode::FORBIDDEN,
                "csrf",
                "Send the session's CSRF token (GET /api/v1/me: csrf_token) in the X-CSRF-Token header.",
            ),
            Denied::RateLimited(secs) => {
                let mut r = api_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    &format!("Too many requests from your network: retry after {secs} seconds."),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                r
            }
            Denied::Invalid(m) => api_error(StatusCode::BAD_REQUEST, "bad_request", &m),
            Denied::Conflict(m) => api_error(StatusCode::CONFLICT, "conflict", &m),
            Denied::Internal(m) => api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &format!("{m}. Try again; if it keeps failing, tell your portshift operator."),
            ),
        }
    }
}

pub(crate) type ApiResult = Result<Response, ApiError>;

pub(crate) fn csrf_header(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-csrf-token").and_then(|v| v.to_str().ok())
}

pub(crate) fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, Denied> {
    let bytes = if bytes.is_empty() {
        &b"{}"[..]
    } else {
        &bytes[..]
    };
    serde_json::from_slice(bytes).map_err(|e| {
        Denied::Invalid(format!(
            "the request body is not the expected JSON (line {} column {}): see /api/v1/openapi.json",
            e.line(),
            e.column()
        ))
    })
}
