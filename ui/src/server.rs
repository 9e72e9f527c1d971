//! The top of the console: the router that puts every area's pages and JSON handlers
//! together behind the security headers and request counters, and `serve` (plain HTTP
//! behind a proxy, or HTTPS itself with rustls).
//!
//! The JSON API (`/api/v1/...`) does everything the pages do, behind the same session
//! cookie (writes also need the session's CSRF token in `X-CSRF-Token`), rate limited per
//! client, with errors of one stable shape: `{"error": {"code", "message", "fields"?}}`.
//! Its routes, and the OpenAPI document, come from `roles::API_ROUTES`; each entry's
//! handler is its area's. Every page form carries a CSRF token, and every handler checks
//! the caller's role with `ctx::org` before it reads or changes anything.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{ConnectInfo, Extension, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use pipeline::accounts::RateDecision;

use crate::respond::{ApiError, Denied, api_error};
use crate::roles::{API_ROUTES, ApiRoute, PUBLIC_API_ROUTES};
use crate::state::{AppState, ClientKey, ProcessLauncher, Shared, SigningKeys, UiError};

/// The client address: the socket peer, or with `trust_proxy` the last address the
/// proxy appended to X-Forwarded-For. Used only to derive the salted rate-limit key.
pub fn client_ip(state: &AppState, req: &Request) -> Option<IpAddr> {
    if state.trust_proxy
        && let Some(ip) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return Some(ip);
    }
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

async fn security_headers(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    state.counters.requests.fetch_add(1, Ordering::Relaxed);
    let key = crate::auth::client_key(&state.ip_salt, client_ip(&state, &req));
    req.extensions_mut().insert(ClientKey(key));
    // The settings page's billing forms send the browser on to Stripe's own pages: the
    // page may submit forms there, and nowhere else.
    let to_stripe = req.uri().path().contains("/settings") && state.stripe.is_some();
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    let csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    match state.stripe.as_deref().filter(|_| to_stripe) {
        Some(stripe) => {
            let with = csp.replace(
                "form-action 'self'",
                &format!("form-action 'self' {}", stripe.form_targets()),
            );
            match HeaderValue::from_str(&with) {
                Ok(v) => {
                    h.insert("content-security-policy", v);
                }
                Err(_) => set(h, "content-security-policy", csp),
            }
        }
        None => set(h, "content-security-policy", csp),
    }
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "referrer-policy", "no-referrer");
    set(h, "cross-origin-opener-policy", "same-origin");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    if state.tls {
        set(
            h,
            "strict-transport-security",
            "max-age=63072000; includeSubDomains",
        );
    }
    res
}

/// The whole console: pages, the JSON API, static files, health and metrics.
pub fn router(state: Shared) -> Router {
    Router::new()
        .merge(crate::account::web::routes())
        .merge(crate::orgs::web::routes())
        .merge(crate::exports::web::routes())
        .merge(crate::schedules::web::routes())
        .merge(crate::settings::web::routes())
        .merge(crate::billing::routes())
        .merge(api_routes(state.clone()))
        .route(
            pipeline::signing::PUBLIC_KEY_PATH,
            axum::routing::get(crate::ops::signing_key),
        )
        .route(
            pipeline::signing::PUBLIC_KEYS_DIR,
            axum::routing::get(crate::ops::signing_keys),
        )
        .route(
            "/.well-known/portshift-signing-keys/{file}",
            axum::routing::get(crate::ops::signing_key_by_id),
        )
        .route(
            "/webhooks/stripe",
            axum::routing::post(crate::billing::webhook),
        )
        .route("/healthz", axum::routing::get(crate::ops::healthz))
        .route("/metrics", axum::routing::get(crate::ops::metrics))
        .route("/static/live.js", axum::routing::get(crate::ops::live_js))
        .route("/static/app.css", axum::routing::get(crate::ops::app_css))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            security_headers,
        ))
        .with_state(state)
}

/// How `portshift serve` runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub nats_url: Option<String>,
    pub database_url: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub trust_proxy: bool,
    /// What the operator opened for tenants (`--allow-origin`, `--allow-file-root`).
    pub tenant_allowances: pipeline::tenancy::Allowances,
    /// The `portshift` binary to run workers with (normally the running executable).
    pub worker_exe: PathBuf,
    /// The operator's manifest signing key, handed to each worker over its stdin.
    pub signing_key: Option<pipeline::signing::SigningKeyMaterial>,
    /// Public keys of retired signing keys, still published by key id.
    pub retired_public_keys: Vec<pipeline::signing::PublicKey>,
    /// Extra arguments for every `portshift worker` (operator options such as the
    /// Chorus request budget; never a secret: command lines are visible to the machine).
    pub worker_args: Vec<String>,
    /// Retention periods and the purge loop's interval and batch size.
    pub retention: pipeline::retention::RetentionOptions,
    /// Live workers one organisation may have at once (see [`Limits::workers_per_org`]).
    pub max_workers_per_org: u64,
    /// Outgoing e-mail (sign-up links, invitations, password reset).
    pub mail: Option<crate::mail::MailConfig>,
    /// Stripe billing (owners subscribe through Stripe's hosted pages).
    pub stripe: Option<crate::stripe::StripeConfig>,
    /// How often the supervisor looks for abandoned jobs; `None`: no supervisor here.
    pub supervise: Option<std::time::Duration>,
    /// Workers' lease duration (how stale an abandoned job's heartbeat must be).
    pub lease: std::time::Duration,
}

/// Runs the console until Ctrl-C.
pub async fn serve(o: ServeOptions) -> Result<(), UiError> {
    std::fs::create_dir_all(&o.data_dir).map_err(|source| {
        UiError::Services(pipeline::config::ServicesError::DataDir {
            dir: o.data_dir.display().to_string(),
            source,
        })
    })?;
    let database_url = o.database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}",
            o.data_dir.join("portshift.sqlite3").display()
        )
    });
    let mailer = match &o.mail {
        Some(c) => Some(Arc::new(crate::mail::Mailer::new(c)?)),
        None => {
            eprintln!(
                "warning: no --smtp-url: nobody can sign up, because nothing could prove their e-mail address"
            );
            None
        }
    };
    let stripe = match &o.stripe {
        Some(c) => Some(Arc::new(crate::stripe::Stripe::new(c.clone())?)),
        None => None,
    };
    // Without --nats-url: the data folder's one nats-server, shared with any other
    // portshift process on the folder (started here if none runs).
    let services =
        pipeline::config::Services::start(&o.data_dir, o.nats_url.as_deref(), Some(&database_url))
            .await?;
    let nats_url = services.nats_url().to_string();
    let mut launcher = ProcessLauncher::new(
        o.worker_exe.clone(),
        nats_url,
        database_url,
        o.data_dir.clone(),
    );
    let purger = pipeline::retention::Purger::new(
        services.store.clone(),
        Some(services.js.clone()),
        Some(o.data_dir.join("logs")),
        o.retention.clone(),
    );
    let current = match &o.signing_key {
        Some(m) => Some(pipeline::signing::PublicKey::parse(
            &pipeline::signing::SigningKey::from_material(m)?.public_key_file(),
        )?),
        None => None,
    };
    launcher.signing_key = o.signing_key.clone();
    launcher
        .command
        .extra_args
        .extend(o.worker_args.iter().cloned());
    let launcher = Arc::new(launcher);
    let mut state = AppState::new(
        services.store.clone(),
        services.js.clone(),
        launcher.clone(),
    )
    .await?;
    if let Some(s) = Arc::get_mut(&mut state) {
        s.tls = o.tls_cert.is_some();
        s.trust_proxy = o.trust_proxy;
        s.signing_keys = SigningKeys {
            current,
            retired: o.retired_public_keys.clone(),
        };
        s.tenant_allowances = o.tenant_allowances.clone();
        s.retention = o.retention.clone();
        s.purge = purger.counters.clone();
        s.limits.workers_per_org = o.max_workers_per_org.max(1);
        s.mail = mailer;
        s.stripe = stripe;
    }
    let (stop_purge, purge_stopped) = tokio::sync::watch::channel(false);
    // The supervisor: one-shot jobs whose workers all died wait for `portshift resume`
    // (or Retry) instead of looking "running" forever. Schedule runs are the
    // scheduler's, which resolves their references again.
    let supervisor = o.supervise.map(|every| {
        tokio::spawn(
            pipeline::leases::Supervisor {
                store: services.store.clone(),
                lease: o.lease,
                every,
                counters: state.supervisor.clone(),
            }
            .run(purge_stopped.clone()),
        )
    });
    let purge_loop = tokio::spawn(purger.run(purge_stopped));
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    // SIGTERM (systemd, Docker, Kubernetes) stops the console like Ctrl-C does.
    let shutdown = async {
        let signal = pipeline::shutdown::signal().await;
        eprintln!("stopping ({signal:?}): finishing requests, stopping this server's workers");
    };
    match (&o.tls_cert, &o.tls_key) {
        (Some(cert), Some(key)) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|source| UiError::Tls {
                    cert: cert.display().to_string(),
                    key: key.display().to_string(),
                    source,
                })?;
            let listener =
                std::net::TcpListener::bind(o.listen).map_err(|source| UiError::Bind {
                    addr: o.listen,
                    source,
                })?;
            let addr = listener.local_addr().map_err(UiError::Serve)?;
            eprintln!("portshift console listening on https://{addr}");
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                h.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
            });
            axum_server::from_tcp_rustls(listener, config)
                .handle(handle)
                .serve(app)
                .await
                .map_err(UiError::Serve)?;
        }
        _ => {
            let listener = tokio::net::TcpListener::bind(o.listen)
                .await
                .map_err(|source| UiError::Bind {
                    addr: o.listen,
                    source,
                })?;
            let addr = listener.local_addr().map_err(UiError::Serve)?;
            eprintln!("portshift console listening on http://{addr}");
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(UiError::Serve)?;
        }
    }
    // Workers use the embedded nats-server: they stop (finishing or nakking what they
    // hold) before it may stop.
    launcher.stop_all(std::time::Duration::from_secs(60)).await;
    let _ = stop_purge.send(true);
    let _ = purge_loop.await;
    if let Some(task) = supervisor {
        let _ = task.await;
    }
    services.stop().await;
    Ok(())
}

/// The handler of each entry of the API's route table.
fn handler(route: &ApiRoute) -> MethodRouter<Shared> {
    use crate::{account, billing, exports, orgs, schedules, settings};
    match route.name {
        "me" => get(account::api::me),
        "create_org" => post(orgs::api::create_org),
        "list_jobs" => get(exports::api::list_jobs),
        "start_export" => post(exports::api::start_export),
        "get_job" => get(exports::api::get_job),
        "cancel_job" => post(exports::api::cancel_job),
        "retry_job" => post(exports::api::retry_job),
        "list_members" => get(orgs::api::list_members),
        "invite_member" => post(orgs::api::invite_member),
        "change_role" => put(orgs::api::change_role),
        "remove_member" => delete(orgs::api::remove_member),
        "audit" => get(orgs::api::audit),
        "list_schedules" => get(schedules::api::list_schedules),
        "create_schedule" => post(schedules::api::create_schedule),
        "pause_schedule" => post(schedules::api::pause_schedule),
        "resume_schedule" => post(schedules::api::resume_schedule),
        "delete_schedule" => delete(schedules::api::delete_schedule),
        "set_retention" => put(settings::api::set_retention),
        "aws_external_id" => get(settings::api::aws_external_id),
        "billing" => get(billing::api_billing),
        "billing_checkout" => post(billing::api_billing_checkout),
        "billing_portal" => post(billing::api_billing_portal),
        "delete_org" => delete(settings::api::delete_org),
        "sign_in" => post(account::api::sign_in),
        "my_data" => get(account::api::my_data),
        "change_password" => put(account::api::change_password),
        "delete_me" => delete(account::api::delete_me),
        "my_invitations" => get(account::api::my_invitations),
        "accept_invitation" => post(account::api::accept_invitation),
        "decline_invitation" => post(account::api::decline_invitation),
        "resend_verification" => post(account::api::resend_verification),
        "sign_up" => post(account::api::sign_up),
        "verify_email" => post(account::api::verify_email),
        "password_reset" => post(account::api::password_reset),
        "password_reset_confirm" => post(account::api::password_reset_confirm),
        "openapi" => get(crate::openapi::openapi),
        other => unreachable!("API route {other} has no handler"),
    }
}

/// The JSON API (`/api/v1/...`): every entry of the route table, with its handler from
/// its area, rate limited per client; an unknown route gets the API's 404.
fn api_routes(state: Shared) -> Router<Shared> {
    let mut r = Router::new();
    let mut paths: Vec<(&str, MethodRouter<Shared>)> = Vec::new();
    for route in API_ROUTES.iter().chain(PUBLIC_API_ROUTES) {
        if let Some((_, m)) = paths.iter_mut().find(|(p, _)| *p == route.path) {
            let merged = std::mem::take(m).merge(handler(route));
            *m = merged;
        } else {
            paths.push((route.path, handler(route)));
        }
    }
    for (p, m) in paths {
        r = r.route(p, m);
    }
    r.fallback(|| async {
        api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "No such API route: see /api/v1/openapi.json.",
        )
    })
    .layer(middleware::from_fn_with_state(state, rate_limit))
}

/// Counts every API request against the client's limit.
async fn rate_limit(
    State(state): State<Shared>,
    Extension(ClientKey(key)): Extension<ClientKey>,
    req: Request,
    next: Next,
) -> Response {
    let (limit, window) = state.limits.api;
    match state.accounts.hit(&key, "api", window, limit).await {
        Ok(RateDecision::Allowed { .. }) => next.run(req).await,
        Ok(RateDecision::Refused { retry_after_s }) => {
            state.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            ApiError::from(Denied::RateLimited(retry_after_s)).into_response()
        }
        Err(e) => ApiError::from(Denied::from(e)).into_response(),
    }
}
