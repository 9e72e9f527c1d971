//! The console's Stripe client, below the shared state that holds it: the operator's
//! Stripe settings, the checks made when it is set up, and the calls to Stripe
//! (customer, Checkout and portal sessions, ending a subscription). Billing's routes and
//! webhook are `billing`; the plan rules are `pipeline::billing`.

use std::time::Duration;

use axum::http::StatusCode;
use pipeline::billing::{Billing, Plan, Prices};
use pipeline::store::JobStore;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::respond::Denied;

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
    async fn customer(&self, store: &JobStore, org: &str, email: &str) -> Result<String, Denied> {
        let billing = Billing::new(store);
        if let Some(a) = billing.account(org).await? {
            return Ok(a.customer_id);
        }
        let made = self
            .post(
                "/v1/customers",
                &[("email", email), ("metadata[portshift_org]", org)],
            )
            .await?;
        let id = made["id"]
            .as_str()
            .ok_or_else(|| Denied::Internal("Stripe answered without a customer id".into()))?;
        Ok(billing.link_customer(org, id).await?)
    }

    fn settings_url(&self, org: &str) -> String {
        format!(
            "{}/orgs/{org}/settings",
            self.config.public_url.trim_end_matches('/')
        )
    }

    /// A Checkout session for `plan` of organisation `org`, whose customer (made on first
    /// use) gets `email`; returns the URL of Stripe's payment page.
    pub async fn checkout(
        &self,
        store: &JobStore,
        org: &str,
        email: &str,
        plan: Plan,
    ) -> Result<String, Denied> {
        let Some(price) = self.config.prices.price_of(plan) else {
            return Err(Denied::Invalid(format!(
                "Choose a paid plan this server sells: {}.",
                self.plans_on_sale().join(" or ")
            )));
        };
        let customer = self.customer(store, org, email).await?;
        let back = self.settings_url(org);
        let success = format!("{back}?billing=done");
        let cancel = format!("{back}?billing=cancelled");
        let session = self
            .post(
                "/v1/checkout/sessions",
                &[
                    ("mode", "subscription"),
                    ("customer", &customer),
                    ("client_reference_id", org),
                    ("line_items[0][price]", price),
                    ("line_items[0][quantity]", "1"),
                    ("subscription_data[metadata][portshift_org]", org),
                    ("success_url", &success),
                    ("cancel_url", &cancel),
                ],
            )
            .await?;
        stripe_url(&session)
    }

    /// A customer-portal session (change plan, cancel, invoices, card); returns its URL.
    pub async fn portal(&self, store: &JobStore, org: &str) -> Result<String, Denied> {
        let Some(account) = Billing::new(store).account(org).await? else {
            return Err(Denied::Conflict(
                "This organisation has no subscription yet: subscribe to a plan first.".into(),
            ));
        };
        let back = self.settings_url(org);
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
    pub async fn forget(&self, store: &JobStore, org_id: &str) -> Result<(), Denied> {
        let Some(account) = Billing::new(store).account(org_id).await? else {
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
