//! The portshift web console: Leptos components rendered on the server (no wasm, no
//! hydration) behind axum. It owns sign-up and sign-in, sessions and CSRF, organisations
//! and roles (one permission table, `roles`), starting exports (credentials go only to
//! the job's own worker process, over its standard input), the live job page (SSE plus a
//! small static script), job history, recurring schedules (pause, resume, delete), the
//! audit trail, the JSON API with its OpenAPI document, rate limits, security headers,
//! `/healthz` and `/metrics`; and each person's own account: e-mail verification by
//! SMTP, invitations, password change and reset, data download and account deletion;
//! and billing through Stripe (owners only; plans change only by verified webhooks).
//!
//! Depends on `pipeline` only; jobs run in `portshift worker` processes it starts.

mod account;
mod account_pages;
mod api;
mod app;
pub mod auth;
pub mod billing;
mod ctx;
mod exports;
mod live;
pub mod mail;
mod ops;
mod pages;
pub mod roles;
mod schedules;
mod web;

pub use api::openapi_document;
pub use app::{
    AppState, DEFAULT_MAX_WORKERS_PER_ORG, LaunchError, Limits, ProcessLauncher, ServeOptions,
    Shared, SigningKeys, UiError, WorkerLauncher, router, serve, with_signing_key,
};
