//! Operations endpoints and static files: `/healthz` (store and NATS reachable),
//! `/metrics` (Prometheus text: requests, sign-ins, rate-limit refusals, jobs by status,
//! per-stage counters, what the retention purge deleted, the supervisor's actions and
//! live worker leases), the console's one script and
//! one stylesheet, and the public keys that verify manifest signatures
//! (`/.well-known/portshift-signing-key.pub` and, by key id,
//! `/.well-known/portshift-signing-keys/<KEY ID>.pub`).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::state::Shared;

/// A public file of this type, which caches may keep for five minutes.
fn public_file(content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

fn public_key_response(text: String) -> Response {
    public_file("text/plain; charset=utf-8", text)
}

/// The current signing key's public key, in minisign's format (`minisign -p` reads it).
pub async fn signing_key(State(state): State<Shared>) -> Response {
    match &state.signing_keys.current {
        Some(k) => public_key_response(k.file()),
        None => (
            StatusCode::NOT_FOUND,
            "this console has no manifest signing key configured, so its exports are unsigned \
             (the operator starts it with --signing-key; see README: Signed manifests)\n",
        )
            .into_response(),
    }
}

/// Every published key id, current first: `<KEY ID> current|retired <path>` per line.
pub async fn signing_keys(State(state): State<Shared>) -> Response {
    let keys = &state.signing_keys;
    let mut out = String::new();
    for (k, status) in keys
        .current
        .iter()
        .map(|k| (k, "current"))
        .chain(keys.retired.iter().map(|k| (k, "retired")))
    {
        let id = k.key_id();
        let _ = writeln!(
            out,
            "{id} {status} {}/{id}.pub",
            pipeline::signing::PUBLIC_KEYS_DIR
        );
    }
    public_key_response(out)
}

/// One public key by its key id (as the signature's untrusted comment names it).
pub async fn signing_key_by_id(
    State(state): State<Shared>,
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Response {
    let id = file.strip_suffix(".pub").unwrap_or(&file);
    match state.signing_keys.by_id(id) {
        Some(k) => public_key_response(k.file()),
        None => (
            StatusCode::NOT_FOUND,
            format!(
                "no public key with this id; the published ones are listed at {}\n",
                pipeline::signing::PUBLIC_KEYS_DIR
            ),
        )
            .into_response(),
    }
}

pub async fn healthz(State(state): State<Shared>) -> Response {
    let db = state.accounts.jobs_by_status().await;
    let nats = state.js.get_stream(pipeline::topology::WORK_STREAM).await;
    match (db, nats) {
        (Ok(_), Ok(_)) => (StatusCode::OK, "ok\n").into_response(),
        (Err(e), _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("job store unreachable: {e}\n"),
        )
            .into_response(),
        (_, Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("NATS JetStream unreachable: {e}\n"),
        )
            .into_response(),
    }
}

/// One Prometheus counter: its help and type lines, then its value.
fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

pub async fn metrics(State(state): State<Shared>) -> Response {
    let c = &state.counters;
    let mut out = String::new();
    for (name, help, v) in [
        (
            "portshift_console_requests_total",
            "HTTP requests served by the console.",
            &c.requests,
        ),
        (
            "portshift_console_sign_ins_total",
            "Successful sign-ins.",
            &c.sign_ins,
        ),
        (
            "portshift_console_failed_sign_ins_total",
            "Refused sign-ins (wrong e-mail or password).",
            &c.failed_sign_ins,
        ),
        (
            "portshift_console_rate_limited_total",
            "Requests refused by a rate limit.",
            &c.rate_limited,
        ),
        (
            "portshift_console_exports_started_total",
            "Exports started from this console.",
            &c.exports_started,
        ),
        (
            "portshift_console_stripe_webhooks_refused_total",
            "Stripe webhooks refused: missing, forged or stale signature, or not an event.",
            &c.webhooks_refused,
        ),
    ] {
        counter(&mut out, name, help, v.load(Ordering::Relaxed));
    }
    if let Ok(by_status) = state.accounts.jobs_by_status().await {
        let _ = writeln!(
            out,
            "# HELP portshift_jobs Jobs in the job store by status.\n# TYPE portshift_jobs gauge"
        );
        for (s, n) in by_status {
            let _ = writeln!(out, "portshift_jobs{{status=\"{s}\"}} {n}");
        }
    }
    let [(hash_items, hash_bytes), (up_items, up_bytes)] = state.stats.totals().await;
    for (name, help, hash, upload) in [
        (
            "portshift_stage_items_total",
            "Items seen per stage in jobs this console watched.",
            hash_items,
            up_items,
        ),
        (
            "portshift_stage_bytes_total",
            "Bytes per stage in jobs this console watched.",
            hash_bytes,
            up_bytes,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n\
             {name}{{stage=\"hash\"}} {hash}\n{name}{{stage=\"upload\"}} {upload}"
        );
    }
    if let Ok(t) = state.accounts.stage_totals().await {
        for (stage, items) in t {
            let _ = writeln!(
                out,
                "portshift_stage_items_total{{stage=\"{stage}\",source=\"store\"}} {items}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP portshift_purged_total Rows, JetStream messages and consumers, and worker logs the retention purge of this server deleted.\n# TYPE portshift_purged_total counter"
    );
    for (what, n) in state.purge.totals().pairs() {
        let _ = writeln!(out, "portshift_purged_total{{what=\"{what}\"}} {n}");
    }
    for (name, help, v) in [
        (
            "portshift_purge_runs_total",
            "Retention purges this server ran.",
            state.purge.runs.load(Ordering::Relaxed),
        ),
        (
            "portshift_purge_failures_total",
            "Retention purges that stopped on an error (retried at the next interval).",
            state.purge.failures.load(Ordering::Relaxed),
        ),
    ] {
        counter(&mut out, name, help, v);
    }
    state
        .supervisor
        .render(&mut out, state.store.live_lease_count().await.ok());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

pub async fn live_js() -> Response {
    public_file(
        "text/javascript; charset=utf-8",
        include_str!("../static/live.js"),
    )
}

pub async fn app_css() -> Response {
    public_file("text/css; charset=utf-8", include_str!("../static/app.css"))
}
