//! Billing through Stripe: owners subscribe, change plan and cancel on Stripe's own
//! hosted pages (Checkout and the customer portal), and Stripe's signed webhooks are the
//! only thing that changes an organisation's plan. This server calls Stripe with the
//! operator's secret key (from the operator's environment, never from a user), sends
//! the browser on to the page Stripe returns, and keeps only Stripe's ids: no card data
//! ever reaches it, because no form of ours asks for any.
//!
//! The plan state and its rules (limits, signature check, replay guard) are
//! `pipeline::billing`; this module is the HTTP side: the Stripe client, the owner-only
//! routes (page forms and JSON), the billing card of the settings page, and the webhook
//! endpoint. The Stripe client itself sits lower, in `stripe` (the shared state holds
//! it); its public names are re-exported here.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::post;
use leptos::prelude::*;
use pipeline::accounts::{Organisation, Role};
use pipeline::billing::{Applied, Billing, Plan, StripeEvent, WebhookError};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

pub use crate::stripe::{BillingSetupError, STRIPE_API, Stripe, StripeConfig};

use crate::ctx::{self, OrgCtx, org_ctx};
use crate::respond::{ApiResult, CsrfOnly, Denied, body, refuse};
use crate::roles::Action;
use crate::state::Shared;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/orgs/{org}/settings/billing/checkout", post(checkout_post))
        .route("/orgs/{org}/settings/billing/portal", post(portal_post))
}

fn stripe_of(state: &Shared) -> Result<&Stripe, Denied> {
    state.stripe.as_deref().ok_or_else(|| {
        Denied::Conflict(
            "This portshift server sells no plans: its operator has not set up Stripe billing (docs/billing.md)."
                .into(),
        )
    })
}

/// What the billing card and `GET /billing` show every member.
pub async fn summary(state: &Shared, org_id: &str, plan: &str) -> Result<Value, Denied> {
    let billing = Billing::new(&state.store);
    let plan = Plan::of_stored(plan);
    let limits = plan.limits();
    let month = pipeline::billing::month_of(chrono::Utc::now().timestamp_millis());
    let used = billing.exports_in(org_id, &month).await?;
    let account = billing.account(org_id).await?;
    Ok(json!({
        "plan": plan.as_str(),
        "limits": {
            "schedules": limits.schedules,
            "exports_per_month": limits.exports_per_month,
        },
        "usage": {"month": month, "exports": used},
        "has_customer": account.is_some(),
        "subscription_status": account.and_then(|a| a.subscription_status),
        "plans_on_sale": state.stripe.as_deref().map(Stripe::plans_on_sale).unwrap_or_default(),
    }))
}

// --- the owner-only routes --------------------------------------------------------------

#[derive(Deserialize)]
pub struct PlanChoice {
    #[serde(default)]
    pub csrf: Option<String>,
    #[serde(default)]
    pub plan: String,
}

fn paid_plan(plan: &str) -> Result<Plan, Denied> {
    match plan.trim().parse::<Plan>() {
        Ok(p) if p != Plan::Trial => Ok(p),
        _ => Err(Denied::Invalid(
            "Choose the team or enterprise plan. To go back to the trial, cancel in the billing portal."
                .into(),
        )),
    }
}

/// Page form: `POST /orgs/{org}/settings/billing/checkout` → 303 to Stripe Checkout.
pub async fn web_checkout(state: &Shared, c: &OrgCtx, f: &PlanChoice) -> Result<Response, Denied> {
    ctx::check_csrf(&c.session, f.csrf.as_deref())?;
    let plan = paid_plan(&f.plan)?;
    let url = stripe_of(state)?
        .checkout(&state.store, &c.org.id, &c.session.user.email, plan)
        .await?;
    audit_opened(state, c, &format!("checkout for the {plan} plan")).await?;
    Ok(Redirect::to(&url).into_response())
}

/// Page form: `POST /orgs/{org}/settings/billing/portal` → 303 to Stripe's portal.
pub async fn web_portal(
    state: &Shared,
    c: &OrgCtx,
    csrf: Option<&str>,
) -> Result<Response, Denied> {
    ctx::check_csrf(&c.session, csrf)?;
    let url = stripe_of(state)?.portal(&state.store, &c.org.id).await?;
    audit_opened(state, c, "the customer portal").await?;
    Ok(Redirect::to(&url).into_response())
}

/// API: `POST /api/v1/orgs/{org}/billing/checkout {"plan"}` → `{"url"}`.
pub async fn api_checkout(state: &Shared, c: &OrgCtx, plan: &str) -> Result<Response, Denied> {
    let plan = paid_plan(plan)?;
    let url = stripe_of(state)?
        .checkout(&state.store, &c.org.id, &c.session.user.email, plan)
        .await?;
    audit_opened(state, c, &format!("checkout for the {plan} plan")).await?;
    Ok(Json(json!({"url": url})).into_response())
}

/// API: `POST /api/v1/orgs/{org}/billing/portal` → `{"url"}`.
pub async fn api_portal(state: &Shared, c: &OrgCtx) -> Result<Response, Denied> {
    let url = stripe_of(state)?.portal(&state.store, &c.org.id).await?;
    audit_opened(state, c, "the customer portal").await?;
    Ok(Json(json!({"url": url})).into_response())
}

async fn audit_opened(state: &Shared, c: &OrgCtx, what: &str) -> Result<(), Denied> {
    c.audit(state, "billing.opened", &format!("opened Stripe {what}"))
        .await
}

// --- the webhook --------------------------------------------------------------------------

/// `POST /webhooks/stripe`: Stripe's signed events. Refused (400) unless the signature
/// verifies within the tolerance window; an event id seen before is answered 200 and
/// not applied again (Stripe retries anything but 2xx).
pub async fn webhook(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(stripe) = state.stripe.as_deref() else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": "not_found", "message": "billing is not set up on this server"}})),
        )
            .into_response();
    };
    let refuse = |e: WebhookError| {
        state
            .counters
            .webhooks_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(error = %e, "Stripe webhook refused");
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"code": "bad_signature", "message": e.to_string()}})),
        )
            .into_response()
    };
    let now_s = chrono::Utc::now().timestamp();
    if let Err(e) = pipeline::billing::verify_signature(
        stripe.config.webhook_secret.expose_secret().as_bytes(),
        headers
            .get("stripe-signature")
            .and_then(|v| v.to_str().ok()),
        &body,
        now_s,
        pipeline::billing::SIGNATURE_TOLERANCE_S,
    ) {
        return refuse(e);
    }
    let event = match StripeEvent::parse(&body) {
        Ok(e) => e,
        Err(e) => return refuse(e),
    };
    let billing = Billing::new(&state.store);
    let _ = billing
        .purge_events(chrono::Utc::now().timestamp_millis(), 1000)
        .await;
    match billing.apply(&event, &stripe.config.prices).await {
        Ok(applied) => {
            let outcome = match &applied {
                Applied::Plan { plan, .. } => format!("applied: plan {plan}"),
                Applied::Duplicate => "duplicate: already applied, not applied again".into(),
                Applied::Outdated => "outdated: a newer event was applied".into(),
                Applied::Ignored => "ignored".into(),
            };
            Json(json!({"received": true, "outcome": outcome})).into_response()
        }
        // 500: Stripe retries later.
        Err(e) => {
            tracing::error!(error = %e, "applying a Stripe webhook failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": {"code": "internal", "message": "try again"}})),
            )
                .into_response()
        }
    }
}

// --- the billing card of the settings page ----------------------------------------------

/// What the billing card shows: the plan's limits, this month's use, what is on sale.
#[derive(Clone, Debug, Default)]
pub struct BillingFacts {
    pub schedules: Option<u64>,
    pub exports_per_month: Option<u64>,
    pub exports_this_month: u64,
    pub subscription_status: Option<String>,
    /// Paid plans this server sells (empty: the operator set up no Stripe billing).
    pub on_sale: Vec<&'static str>,
    /// The organisation has a Stripe customer (the portal can open).
    pub has_customer: bool,
}

fn limit(n: Option<u64>) -> String {
    n.map(|n| n.to_string())
        .unwrap_or_else(|| "unlimited".into())
}

/// The billing card: every role on the settings page sees the plan; only owners get the
/// buttons, which lead to Stripe's own pages. No card field is ours.
pub(crate) fn billing_card(
    base: &str,
    csrf: &str,
    org: &Organisation,
    role: Role,
    b: &BillingFacts,
) -> impl IntoView + use<> {
    let owner = role == Role::Owner;
    let plan = org.billing_plan.clone();
    let status = b
        .subscription_status
        .clone()
        .map(|s| format!(" (Stripe subscription: {s})"))
        .unwrap_or_default();
    let terms = format!(
        "Schedules: {}. Exports a month: {} (used this month: {}).",
        limit(b.schedules),
        limit(b.exports_per_month),
        b.exports_this_month
    );
    let buttons = (owner && !b.on_sale.is_empty()).then(|| {
        let options = b
            .on_sale
            .iter()
            .map(|p| view! { <option value=p.to_string()>{p.to_string()}</option> })
            .collect::<Vec<_>>();
        let portal = b.has_customer.then(|| view! {
            <form method="post" action=format!("{base}/settings/billing/portal") id="billing-portal">
                <input type="hidden" name="csrf" value=csrf.to_string()/>
                <button type="submit">"Change plan, cancel or see invoices (Stripe)"</button>
            </form>
        });
        view! {
            <form method="post" action=format!("{base}/settings/billing/checkout") id="billing-checkout">
                <input type="hidden" name="csrf" value=csrf.to_string()/>
                <select name="plan">{options}</select>
                <button type="submit">"Subscribe with Stripe"</button>
            </form>
            {portal}
            <p class="muted">"Payment happens on Stripe's pages; portshift never sees your card. The plan changes when Stripe confirms it."</p>
        }
    });
    let note = (!owner).then(|| view! { <p class="muted">"Only owners can change the plan."</p> });
    let none_on_sale = (owner && b.on_sale.is_empty())
        .then(|| view! { <p class="muted">"This server sells no plans (its operator has not set up Stripe billing)."</p> });
    view! {
        <div class="card" id="billing">
            <h2>"Billing"</h2>
            <p id="billing-plan">"Plan: " <strong>{plan}</strong>{status}</p>
            <p id="billing-limits">{terms}</p>
            {note}
            {none_on_sale}
            {buttons}
        </div>
    }
}

/// The billing card's facts for an organisation (what `summary` says, typed).
pub(crate) async fn card_facts(state: &Shared, org: &Organisation) -> Result<BillingFacts, Denied> {
    let b = summary(state, &org.id, &org.billing_plan).await?;
    Ok(BillingFacts {
        schedules: b["limits"]["schedules"].as_u64(),
        exports_per_month: b["limits"]["exports_per_month"].as_u64(),
        exports_this_month: b["usage"]["exports"].as_u64().unwrap_or(0),
        subscription_status: b["subscription_status"].as_str().map(str::to_string),
        on_sale: state
            .stripe
            .as_deref()
            .map(Stripe::plans_on_sale)
            .unwrap_or_default(),
        has_customer: b["has_customer"].as_bool().unwrap_or(false),
    })
}

// --- handlers ----------------------------------------------------------------------------

/// Owners only: on to Stripe Checkout for a paid plan. The plan changes when Stripe's
/// signed webhook says the subscription is active, never here.
async fn checkout_post(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Form(f): Form<PlanChoice>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ManageBilling);
    match web_checkout(&state, &c, &f).await {
        Ok(r) => r,
        Err(d) => refuse(d, Some(c.nav())),
    }
}

/// Owners only: on to Stripe's customer portal (change plan, cancel, invoices).
async fn portal_post(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let c = org_ctx!(state, headers, org, Action::ManageBilling);
    match web_portal(&state, &c, f.csrf.as_deref()).await {
        Ok(r) => r,
        Err(d) => refuse(d, Some(c.nav())),
    }
}

pub(crate) async fn api_billing(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    let c = ctx::org_api(&state, &headers, &org, Action::ViewBilling, false).await?;
    Ok(Json(summary(&state, &c.org.id, &c.org.billing_plan).await?).into_response())
}

#[derive(Deserialize)]
struct CheckoutBody {
    #[serde(default)]
    plan: String,
}

pub(crate) async fn api_billing_checkout(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let c = ctx::org_api(&state, &headers, &org, Action::ManageBilling, true).await?;
    let b: CheckoutBody = body(&raw)?;
    Ok(api_checkout(&state, &c, &b.plan).await?)
}

pub(crate) async fn api_billing_portal(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult {
    let c = ctx::org_api(&state, &headers, &org, Action::ManageBilling, true).await?;
    Ok(api_portal(&state, &c).await?)
}
