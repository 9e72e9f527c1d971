//! Billing through Stripe: owners subscribe, change plan and cancel on Stripe's own
//! hosted pages (Checkout and the customer portal), and Stripe's signed webhooks are the
//! only thing that changes an organisation's plan. This server calls Stripe with the
//! operator's secret key (from the operator's environment, never from a user), sends
//! the browser on to the page Stripe returns, and keeps only Stripe's ids: no card data
//! ever reaches it, because no form of ours asks for any.
//!
//! The plan state and its rules (limits, signature check, replay guard) are
//! `pipeline::billing`; this module is the HTTP side: the Stripe client, the owner-only
//! routes, and the webhook endpoint.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use pipeline::billing::{Applied, Billing, Plan, Prices, StripeEvent, WebhookError};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::Shared;
use crate::ctx::{Denied, OrgCtx};

/// Stripe's API.
pub const STRIPE_API: &str = "https://api.stripe.com";

/// The operator's Stripe settings.
#[derive(Clone, Debug)]
pub struct StripeConfig {
    /// Stripe's API base URL (`--stripe-api-url`; a local Stripe in tests).
    pub api_url: String,
    /// The secret API key (`PORTSHIFT_STRIPE_SECRET_KEY`, environment only).
    pub secret_key: SecretString,
    /// The webhook endpoint's signing secret (`PORTSHIFT_STRIPE_WEBHOOK_SECRET`).
    pub webhook_secret: SecretString,
    /// The Stripe price of each paid plan.
    pub prices: Prices,
    /// Where users reach the console (Stripe sends the browser back here).
    pub public_url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BillingSetupError {
    #[error(
        "the Stripe API URL {0:?} is not https:// (plain http:// is allowed only to 127.0.0.1 or localhost, for a local Stripe)"
    )]
    Insecure(String),
    #[error("billing needs {0}")]
    Missing(&'static str),
    #[error("could not build the HTTP client for Stripe: {0}")]
    Client(#[from] reqwest::Error),
    #[error("could not set up the HTTP client for Stripe: {0}")]
    Setup(#[from] pipeline::http_client::HttpSetupError),
}

/// The console's Stripe client.
pub struct Stripe {
    pub config: StripeConfig,
    http: reqwest::Client,
}

impl Stripe {
    pub fn new(config: StripeConfig) -> Result<Self, BillingSetupError> {
        let url = url::Url::parse(&config.api_url)
            .map_err(|_| BillingSetupError::Insecure(config.api_url.clone()))?;
        let local = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        if url.scheme() != "https" && !(url.scheme() == "http" && local) {
            return Err(BillingSetupError::Insecure(config.api_url.clone()));
        }
        if config.secret_key.expose_secret().is_empty() {
            return Err(BillingSetupError::Missing(
                "PORTSHIFT_STRIPE_SECRET_KEY (the secret API key)",
            ));
        }
        if config.webhook_secret.expose_secret().is_empty() {
            return Err(BillingSetupError::Missing(
                "PORTSHIFT_STRIPE_WEBHOOK_SECRET (the webhook endpoint's signing secret)",
            ));
        }
        if config.prices.team.is_none() && config.prices.enterprise.is_none() {
            return Err(BillingSetupError::Missing(
                "--stripe-price-team or --stripe-price-enterprise",
            ));
        }
        if config.public_url.is_empty() {
            return Err(BillingSetupError::Missing(
                "--public-url (Stripe sends the browser back there)",
            ));
        }
        // The shared builder: TLS validation always on, the operator's extra CA if any;
        // no redirects to follow.
        let http = pipeline::http_client::client_builder(
            pipeline::http_client::ca_file_from_env().as_deref(),
        )?
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
        Ok(Self { config, http })
    }

    /// One form-encoded POST to Stripe; the JSON answer, or a message for the owner.
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Result<Value, Denied> {
        let url = format!("{}{path}", self.config.api_url.trim_end_matches('/'));
        let res = self
            .http
            .post(&url)
            .basic_auth(self.config.secret_key.expose_secret(), Some(""))
            .form(form)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, path, "Stripe request failed");
                Denied::Internal("Stripe could not be reached".into())
            })?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            tracing::warn!(%status, path, error = %body["error"], "Stripe refused a request");
            return Err(Denied::Internal(format!(
                "Stripe refused the request ({status})"
            )));
        }
        Ok(body)
    }

    /// The organisation's Stripe customer, created on first use (with the owner's
    /// address, for Stripe's receipts) and linked to the organisation.
    async fn customer(&self, state: &Shared, c: &OrgCtx) -> Result<String, Denied> {
        let billing = Billing::new(&state.store);
        if let Some(a) = billing.account(&c.org.id).await? {
            return Ok(a.customer_id);
        }
        let made = self
            .post(
                "/v1/customers",
                &[
                    ("email", &c.session.user.email),
                    ("metadata[portshift_org]", &c.org.id),
                ],
            )
            .await?;
        let id = made["id"]
            .as_str()
            .ok_or_else(|| Denied::Internal("Stripe answered without a customer id".into()))?;
        Ok(billing.link_customer(&c.org.id, id).await?)
    }

    fn settings_url(&self, org: &str) -> String {
        format!(
            "{}/orgs/{org}/settings",
            self.config.public_url.trim_end_matches('/')
        )
    }

    /// A Checkout session for `plan`; returns the URL of Stripe's payment page.
    pub async fn checkout(&self, state: &Shared, c: &OrgCtx, plan: Plan) -> Result<String, Denied> {
        let Some(price) = self.config.prices.price_of(plan) else {
            return Err(Denied::Invalid(format!(
                "Choose a paid plan this server sells: {}.",
                self.plans_on_sale().join(" or ")
            )));
        };
        let customer = self.customer(state, c).await?;
        let back = self.settings_url(&c.org.id);
        let success = format!("{back}?billing=done");
        let cancel = format!("{back}?billing=cancelled");
        let session = self
            .post(
                "/v1/checkout/sessions",
                &[
                    ("mode", "subscription"),
                    ("customer", &customer),
                    ("client_reference_id", &c.org.id),
                    ("line_items[0][price]", price),
                    ("line_items[0][quantity]", "1"),
                    ("subscription_data[metadata][portshift_org]", &c.org.id),
                    ("success_url", &success),
                    ("cancel_url", &cancel),
                ],
            )
            .await?;
        stripe_url(&session)
    }

    /// A customer-portal session (change plan, cancel, invoices, card); returns its URL.
    pub async fn portal(&self, state: &Shared, c: &OrgCtx) -> Result<String, Denied> {
        let Some(account) = Billing::new(&state.store).account(&c.org.id).await? else {
            return Err(Denied::Conflict(
                "This organisation has no subscription yet: subscribe to a plan first.".into(),
            ));
        };
        let back = self.settings_url(&c.org.id);
        let session = self
            .post(
                "/v1/billing_portal/sessions",
                &[("customer", &account.customer_id), ("return_url", &back)],
            )
            .await?;
        stripe_url(&session)
    }

    /// Ends the organisation's subscription by deleting its Stripe customer (before the
    /// organisation is deleted, so nobody keeps paying for it).
    pub async fn forget(&self, state: &Shared, org_id: &str) -> Result<(), Denied> {
        let Some(account) = Billing::new(&state.store).account(org_id).await? else {
            return Ok(());
        };
        let url = format!(
            "{}/v1/customers/{}",
            self.config.api_url.trim_end_matches('/'),
            account.customer_id
        );
        let res = self
            .http
            .delete(&url)
            .basic_auth(self.config.secret_key.expose_secret(), Some(""))
            .send()
            .await
            .map_err(|_| {
                Denied::Internal("Stripe could not be reached to end the subscription".into())
            })?;
        if !res.status().is_success() && res.status() != StatusCode::NOT_FOUND {
            return Err(Denied::Internal(format!(
                "Stripe refused to end the subscription ({})",
                res.status()
            )));
        }
        Ok(())
    }

    /// Where the billing forms' redirects lead (for the settings page's CSP
    /// `form-action`): Stripe's Checkout and portal hosts, or the local Stripe's origin.
    pub fn form_targets(&self) -> String {
        match url::Url::parse(&self.config.api_url) {
            Ok(u) if u.host_str() == Some("api.stripe.com") => {
                "https://checkout.stripe.com https://billing.stripe.com".into()
            }
            Ok(u) => u.origin().ascii_serialization(),
            Err(_) => String::new(),
        }
    }

    pub fn plans_on_sale(&self) -> Vec<&'static str> {
        Plan::PAID
            .into_iter()
            .filter(|p| self.config.prices.price_of(*p).is_some())
            .map(Plan::as_str)
            .collect()
    }
}

/// Only Stripe's own pages are redirect targets: the URL comes from Stripe's answer.
fn stripe_url(session: &Value) -> Result<String, Denied> {
    session["url"]
        .as_str()
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        .map(str::to_string)
        .ok_or_else(|| Denied::Internal("Stripe answered without a page URL".into()))
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
    crate::ctx::check_csrf(&c.session, f.csrf.as_deref())?;
    let plan = paid_plan(&f.plan)?;
    let url = stripe_of(state)?.checkout(state, c, plan).await?;
    audit_opened(state, c, &format!("checkout for the {plan} plan")).await?;
    Ok(Redirect::to(&url).into_response())
}

/// Page form: `POST /orgs/{org}/settings/billing/portal` → 303 to Stripe's portal.
pub async fn web_portal(
    state: &Shared,
    c: &OrgCtx,
    csrf: Option<&str>,
) -> Result<Response, Denied> {
    crate::ctx::check_csrf(&c.session, csrf)?;
    let url = stripe_of(state)?.portal(state, c).await?;
    audit_opened(state, c, "the customer portal").await?;
    Ok(Redirect::to(&url).into_response())
}

/// API: `POST /api/v1/orgs/{org}/billing/checkout {"plan"}` → `{"url"}`.
pub async fn api_checkout(state: &Shared, c: &OrgCtx, plan: &str) -> Result<Response, Denied> {
    let plan = paid_plan(plan)?;
    let url = stripe_of(state)?.checkout(state, c, plan).await?;
    audit_opened(state, c, &format!("checkout for the {plan} plan")).await?;
    Ok(Json(json!({"url": url})).into_response())
}

/// API: `POST /api/v1/orgs/{org}/billing/portal` → `{"url"}`.
pub async fn api_portal(state: &Shared, c: &OrgCtx) -> Result<Response, Denied> {
    let url = stripe_of(state)?.portal(state, c).await?;
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
