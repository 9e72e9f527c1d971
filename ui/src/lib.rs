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
//! Its modules are layered: each uses only modules below it. Bottom to top:
//! - leaves that use no other module: `auth` (passwords, tokens, cookies), `roles` (the
//!   permission and API route tables), `mail`, `live` (a job's live view);
//! - `layout` (the page frame and form errors), `respond` (`Denied` and how pages and
//!   the API say no), `stripe` (the Stripe client), `state` (`AppState`, the worker
//!   launcher), `ctx` (who is asking and what they may touch);
//! - `ops` (health, metrics, static files, public keys) and `openapi`;
//! - the areas, each with its logic, pages (`pages`), HTML handlers (`web`) and JSON
//!   handlers (`api`): `account` (sign-in and one's own account), `orgs` (organisations,
//!   members, audit trail), `exports` (exports and jobs), `schedules`, `billing`, and
//!   `settings`; a higher area may use a lower one;
//! - `server` on top: the router that puts them together, and `serve`.
//!
//! Depends on `pipeline` only; jobs run in `portshift worker` processes it starts.

mod account;
pub mod auth;
pub mod billing;
mod ctx;
mod exports;
mod layout;
mod live;
pub mod mail;
mod openapi;
mod ops;
mod orgs;
mod respond;
pub mod roles;
mod schedules;
mod server;
mod settings;
mod state;
mod stripe;

pub use openapi::openapi_document;
pub use server::{ServeOptions, router, serve};
pub use state::{
    AppState, DEFAULT_MAX_WORKERS_PER_ORG, LaunchError, Limits, ProcessLauncher, Shared,
    SigningKeys, UiError, WorkerLauncher, with_signing_key,
};
