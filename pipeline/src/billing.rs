//! Billing state and its rules: the plans and the limits the product enforces, which
//! Stripe customer pays for an organisation, the plan that *verified* Stripe webhooks
//! gave it, the webhook events already applied (so a replay changes nothing), and each
//! month's usage counted against the plan. Owns the tables of `0016_billing.sql`; the
//! plan itself is `organisations.billing_plan`.
//!
//! It checks Stripe's webhook signatures (`Stripe-Signature: t=<unix>,v1=<hex
//! HMAC-SHA256(secret, "<t>.<body>")>`, within a tolerance window) but never talks to
//! Stripe: the console does, with the operator's key. No card data exists here: Stripe's
//! hosted pages take the card.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::{AnyPool, Row};

use crate::store::{JobStore, is_unique_violation, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("billing store query failed: {0}. Check that the database is reachable")]
    Query(#[from] sqlx::Error),
}

/// Why a webhook was refused before anything was applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("no Stripe-Signature header")]
    MissingSignature,
    #[error("the Stripe-Signature header is not t=<unix time>,v1=<hex signature>")]
    Malformed,
    #[error(
        "the signature's timestamp is {age_s} s away from now (at most {tolerance_s} s): a replay, or a clock to fix"
    )]
    Stale { age_s: i64, tolerance_s: i64 },
    #[error("no v1 signature matches this body with the endpoint's signing secret")]
    BadSignature,
    #[error("the event is not the JSON Stripe sends: {0}")]
    Body(String),
}

/// How far a webhook's signed timestamp may be from our clock (Stripe's libraries use
/// the same 5 minutes). An event id is remembered longer than this ([`EVENTS_KEPT_MS`]),
/// so a captured event is refused either as stale or as already applied.
pub const SIGNATURE_TOLERANCE_S: i64 = 300;

/// How long applied event ids are kept (far longer than the tolerance window).
pub const EVENTS_KEPT_MS: i64 = 30 * 24 * 3600 * 1000;

/// A plan an organisation is on. Every organisation starts on the trial; only a verified
/// Stripe webhook moves it to a paid plan or back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Plan {
    Trial,
    Team,
    Enterprise,
}

/// What a plan allows. `None` is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanLimits {
    /// Schedules (recurring syncs) the organisation may have.
    pub schedules: Option<u64>,
    /// Exports started per calendar month (UTC), from the console, the API or a schedule.
    pub exports_per_month: Option<u64>,
}

impl Plan {
    pub const ALL: [Plan; 3] = [Plan::Trial, Plan::Team, Plan::Enterprise];
    pub const PAID: [Plan; 2] = [Plan::Team, Plan::Enterprise];

    /// The limits documented in docs/billing.md.
    pub fn limits(self) -> PlanLimits {
        match self {
            Plan::Trial => PlanLimits {
                schedules: Some(0),
                exports_per_month: Some(20),
            },
            Plan::Team => PlanLimits {
                schedules: Some(25),
                exports_per_month: Some(2000),
            },
            Plan::Enterprise => PlanLimits {
                schedules: None,
                exports_per_month: None,
            },
        }
    }

    /// The plan stored for an organisation; anything unknown counts as the trial.
    pub fn of_stored(s: &str) -> Plan {
        s.parse().unwrap_or(Plan::Trial)
    }
}

word_enum!(Plan, "plan", {
    Trial => "trial",
    Team => "team",
    Enterprise => "enterprise",
});

/// The operator's Stripe prices for the paid plans (never from a user).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prices {
    pub team: Option<String>,
    pub enterprise: Option<String>,
}

impl Prices {
    pub fn price_of(&self, plan: Plan) -> Option<&str> {
        match plan {
            Plan::Trial => None,
            Plan::Team => self.team.as_deref(),
            Plan::Enterprise => self.enterprise.as_deref(),
        }
    }
    pub fn plan_of(&self, price: &str) -> Option<Plan> {
        Plan::PAID
            .into_iter()
            .find(|p| self.price_of(*p) == Some(price))
    }
}

/// The `Stripe-Signature` header Stripe would send for `body` at unix time `t`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    format!(
        "t={t},v1={}",
        hex::encode(mac(secret, t, body).finalize().into_bytes())
    )
}

fn mac(secret: &[u8], t: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// Checks a webhook's `Stripe-Signature` header against `body` at `now_s`: one `t`, at
/// least one `v1` that is the HMAC-SHA256 of `"<t>.<body>"` under `secret` (compared in
/// constant time; several `v1` appear while a secret is being rolled), and `t` within
/// `tolerance_s` of now. Returns `t`.
pub fn verify_signature(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> Result<i64, WebhookError> {
    let header = header.ok_or(WebhookError::MissingSignature)?;
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or(WebhookError::Malformed)?;
        match k {
            "t" => {
                if t.is_some() {
                    return Err(WebhookError::Malformed);
                }
                t = Some(v.parse::<i64>().map_err(|_| WebhookError::Malformed)?);
            }
            "v1" => sigs.push(hex::decode(v).map_err(|_| WebhookError::Malformed)?),
            _ => {} // v0 (test-mode legacy) and future schemes are ignored, as Stripe says
        }
    }
    let t = t.ok_or(WebhookError::Malformed)?;
    if sigs.is_empty() {
        return Err(WebhookError::Malformed);
    }
    if !sigs
        .iter()
        .any(|s| mac(secret, t, body).verify_slice(s).is_ok())
    {
        return Err(WebhookError::BadSignature);
    }
    let age_s = (now_s - t).abs();
    if age_s > tolerance_s {
        return Err(WebhookError::Stale { age_s, tolerance_s });
    }
    Ok(t)
}

/// The parts of a Stripe event portshift reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripeEvent {
    pub id: String,
    pub kind: String,
    pub created_s: i64,
    /// For `customer.subscription.*`: the subscription.
    pub subscription: Option<Subscription>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub customer: String,
    pub status: String,
    /// The first item's price (or, in older API versions, plan) id.
    pub price: Option<String>,
}

impl StripeEvent {
    pub fn parse(body: &[u8]) -> Result<Self, WebhookError> {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| WebhookError::Body(e.to_string()))?;
        let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
        let id = s(&v["id"]).ok_or_else(|| WebhookError::Body("no event id".into()))?;
        let kind = s(&v["type"]).ok_or_else(|| WebhookError::Body("no event type".into()))?;
        let created_s = v["created"]
            .as_i64()
            .ok_or_else(|| WebhookError::Body("no created time".into()))?;
        let subscription = if kind.starts_with("customer.subscription.") {
            let o = &v["data"]["object"];
            let item = &o["items"]["data"][0];
            Some(Subscription {
                id: s(&o["id"]).ok_or_else(|| WebhookError::Body("no subscription id".into()))?,
                customer: s(&o["customer"])
                    .ok_or_else(|| WebhookError::Body("no subscription customer".into()))?,
                status: s(&o["status"]).unwrap_or_default(),
                price: s(&item["price"]["id"])
                    .or_else(|| s(&item["plan"]["id"]))
                    .or_else(|| s(&o["plan"]["id"])),
            })
        } else {
            None
        };
        Ok(StripeEvent {
            id,
            kind,
            created_s,
            subscription,
        })
    }
}

/// What applying a verified event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The organisation's plan is now this.
    Plan { org_id: String, plan: Plan },
    /// This event id was applied before: nothing changed.
    Duplicate,
    /// Older than an event already applied for the organisation (Stripe does not
    /// promise order): recorded, nothing changed.
    Outdated,
    /// Not about a customer of this server, or a type portshift does not act on.
    Ignored,
}

/// An organisation's Stripe link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillingAccount {
    pub customer_id: String,
    pub subscription_id: Option<String>,
    pub subscription_status: Option<String>,
}

/// Refusal because the plan's limit is reached; the message says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LimitReached(pub String);

/// The month usage is counted in, `YYYY-MM` (UTC).
pub fn month_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m")
        .to_string()
}

fn next_month_start(month: &str) -> String {
    let (y, m) = month.split_once('-').unwrap_or(("1970", "01"));
    let (y, m): (i32, u32) = (y.parse().unwrap_or(1970), m.parse().unwrap_or(1));
    let (y, m) = if m >= 12 { (y + 1, 1) } else { (y, m + 1) };
    format!("{y}-{m:02}-01")
}

#[derive(Clone, Debug)]
pub struct Billing {
    pool: AnyPool,
}

impl Billing {
    pub fn new(store: &JobStore) -> Self {
        Self {
            pool: store.pool.clone(),
        }
    }

    pub async fn plan_of(&self, org_id: &str) -> Result<Plan, BillingError> {
        let row = sqlx::query("SELECT billing_plan FROM organisations WHERE id = $1")
            .bind(org_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Plan::of_stored(&r.try_get::<String, _>(0)?),
            None => Plan::Trial,
        })
    }

    pub async fn account(&self, org_id: &str) -> Result<Option<BillingAccount>, BillingError> {
        let row = sqlx::query(
            "SELECT customer_id, subscription_id, subscription_status FROM billing_accounts WHERE org_id = $1",
        )
        .bind(org_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(BillingAccount {
            customer_id: r.try_get("customer_id")?,
            subscription_id: r.try_get("subscription_id")?,
            subscription_status: r.try_get("subscription_status")?,
        }))
    }

    /// Links the organisation to the Stripe customer the console created for it. If two
    /// requests raced, the first link wins and is returned.
    pub async fn link_customer(
        &self,
        org_id: &str,
        customer_id: &str,
    ) -> Result<String, BillingError> {
        let done = sqlx::query(
            "INSERT INTO billing_accounts (org_id, customer_id, updated_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (org_id) DO NOTHING",
        )
        .bind(org_id)
        .bind(customer_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(customer_id.to_string());
        }
        Ok(self
            .account(org_id)
            .await?
            .map(|a| a.customer_id)
            .unwrap_or_else(|| customer_id.to_string()))
    }

    /// Applies a *verified* event once. The event id is recorded in the same transaction
    /// as its effect, so a replay (or two servers receiving the same delivery) applies
    /// nothing the second time. Only `customer.subscription.{created,updated,deleted}`
    /// of a customer this server created change anything: an active or trialing
    /// subscription to a known price sets its plan; a deleted, cancelled, unpaid or
    /// incomplete one puts the organisation back on the trial.
    pub async fn apply(&self, ev: &StripeEvent, prices: &Prices) -> Result<Applied, BillingError> {
        // The customer's organisation never changes once linked: read it before the
        // transaction, whose first statement is then a write (SQLite refuses, rather
        // than waits for, a reader that turns writer while another writer is busy).
        let org: Option<String> = match &ev.subscription {
            Some(sub) => sqlx::query("SELECT org_id FROM billing_accounts WHERE customer_id = $1")
                .bind(&sub.customer)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get::<String, _>(0))
                .transpose()?,
            None => None,
        };
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO billing_events (event_id, org_id, event_type, received_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(&ev.id)
        .bind(&org)
        .bind(&ev.kind)
        .bind(now_ms())
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                let _ = tx.rollback().await;
                return Ok(Applied::Duplicate);
            }
            Err(e) => return Err(e.into()),
        }
        let (Some(org_id), Some(sub)) = (org, &ev.subscription) else {
            tx.commit().await?;
            return Ok(Applied::Ignored);
        };
        let last: i64 = sqlx::query("SELECT last_event_s FROM billing_accounts WHERE org_id = $1")
            .bind(&org_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if ev.created_s < last {
            tx.commit().await?;
            return Ok(Applied::Outdated);
        }
        let live = ev.kind != "customer.subscription.deleted"
            && matches!(sub.status.as_str(), "active" | "trialing" | "past_due");
        let plan = match (live, sub.price.as_deref().and_then(|p| prices.plan_of(p))) {
            (true, Some(p)) => p,
            (true, None) => {
                tracing::warn!(
                    price = ?sub.price,
                    "a Stripe subscription with a price that is none of --stripe-price-*: plan unchanged"
                );
                tx.commit().await?;
                return Ok(Applied::Ignored);
            }
            (false, _) => Plan::Trial,
        };
        sqlx::query(
            "UPDATE billing_accounts SET subscription_id = $1, subscription_status = $2, \
             last_event_s = $3, updated_ms = $4 WHERE org_id = $5",
        )
        .bind(&sub.id)
        .bind(&sub.status)
        .bind(ev.created_s)
        .bind(now_ms())
        .bind(&org_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE organisations SET billing_plan = $1 WHERE id = $2")
            .bind(plan.as_str())
            .bind(&org_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO audit_events (id, org_id, actor, action, detail, at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(uuid::Uuid::now_v7().simple().to_string())
        .bind(&org_id)
        .bind("stripe")
        .bind("billing.changed")
        .bind(format!(
            "plan {plan} (Stripe event {} {}: subscription {} {})",
            ev.id, ev.kind, sub.id, sub.status
        ))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Applied::Plan { org_id, plan })
    }

    /// Forgets applied event ids older than [`EVENTS_KEPT_MS`] (at most `limit`).
    pub async fn purge_events(&self, now_ms: i64, limit: i64) -> Result<u64, BillingError> {
        Ok(crate::store::delete_some(
            &self.pool,
            "billing_events",
            "received_ms < $1",
            &[crate::store::Bound::Int(now_ms - EVENTS_KEPT_MS)],
            limit,
        )
        .await?)
    }

    /// Exports started this month (`month` as [`month_of`]).
    pub async fn exports_in(&self, org_id: &str, month: &str) -> Result<u64, BillingError> {
        let row = sqlx::query("SELECT exports FROM billing_usage WHERE org_id = $1 AND month = $2")
            .bind(org_id)
            .bind(month)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<i64, _>(0)?.max(0) as u64,
            None => 0,
        })
    }

    /// Counts one more export this month if the plan allows it; otherwise refuses, with
    /// what to do. The check and the count are one statement, so servers starting
    /// exports at once never pass the limit together.
    pub async fn take_export(
        &self,
        org_id: &str,
        org_name: &str,
        now_ms: i64,
    ) -> Result<Result<(), LimitReached>, BillingError> {
        let plan = self.plan_of(org_id).await?;
        let month = month_of(now_ms);
        sqlx::query(
            "INSERT INTO billing_usage (org_id, month, exports) VALUES ($1, $2, 0) \
             ON CONFLICT (org_id, month) DO NOTHING",
        )
        .bind(org_id)
        .bind(&month)
        .execute(&self.pool)
        .await?;
        let limit = plan
            .limits()
            .exports_per_month
            .map(|l| l as i64)
            .unwrap_or(i64::MAX);
        let done = sqlx::query(
            "UPDATE billing_usage SET exports = exports + 1 WHERE org_id = $1 AND month = $2 AND exports < $3",
        )
        .bind(org_id)
        .bind(&month)
        .bind(limit)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(Ok(()));
        }
        Ok(Err(LimitReached(format!(
            "{org_name} is on the {plan} plan, which includes {limit} exports a month, and this \
             month's are used. Nothing was started and nothing was kept. An owner can upgrade \
             in Settings → Billing; otherwise exports start again on {}.",
            next_month_start(&month)
        ))))
    }

    /// Gives back an export counted by [`Billing::take_export`] whose job never started.
    pub async fn give_back_export(&self, org_id: &str, now_ms: i64) -> Result<(), BillingError> {
        sqlx::query(
            "UPDATE billing_usage SET exports = exports - 1 WHERE org_id = $1 AND month = $2 AND exports > 0",
        )
        .bind(org_id)
        .bind(month_of(now_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Refuses one more schedule beyond the plan's.
    pub async fn may_add_schedule(
        &self,
        org_id: &str,
    ) -> Result<Result<(), LimitReached>, BillingError> {
        let plan = self.plan_of(org_id).await?;
        let Some(limit) = plan.limits().schedules else {
            return Ok(Ok(()));
        };
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM schedules WHERE organisation = $1")
            .bind(org_id)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        if (n as u64) < limit {
            return Ok(Ok(()));
        }
        Ok(Err(LimitReached(if limit == 0 {
            format!(
                "Schedules come with the team and enterprise plans; this organisation is on the {plan} plan. \
                 An owner can subscribe in Settings → Billing. Nothing was saved."
            )
        } else {
            format!(
                "The {plan} plan includes {limit} schedules and this organisation has {n}. Delete one, \
                 or an owner can upgrade in Settings → Billing. Nothing was saved."
            )
        })))
    }

    /// Whether a scheduled run of a tenant's schedule may start under the plan (a
    /// downgraded organisation keeps its schedules, but they do not run).
    pub async fn schedules_allowed(&self, org_id: &str) -> Result<bool, BillingError> {
        Ok(self.plan_of(org_id).await?.limits().schedules != Some(0))
    }
}

/// Deletes an organisation's billing rows (its Stripe link, applied events, usage), in
/// the caller's transaction.
pub async fn delete_billing_of_org(
    tx: &mut sqlx::AnyConnection,
    org_id: &str,
) -> Result<(), sqlx::Error> {
    crate::store::delete_with_org(
        tx,
        org_id,
        &[
            "DELETE FROM billing_accounts WHERE org_id = $1",
            "DELETE FROM billing_events WHERE org_id = $1",
            "DELETE FROM billing_usage WHERE org_id = $1",
        ],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test_secret";

    #[test]
    fn a_signature_made_as_stripe_makes_it_verifies() {
        let body = br#"{"id":"evt_1"}"#;
        let h = sign(SECRET, 1_700_000_000, body);
        assert_eq!(
            verify_signature(SECRET, Some(&h), body, 1_700_000_010, 300),
            Ok(1_700_000_000)
        );
        // Stripe's own example shape: extra schemes and a second v1 are fine.
        let two = format!("{h},v1={},v0=abcd", "00".repeat(32));
        assert!(verify_signature(SECRET, Some(&two), body, 1_700_000_000, 300).is_ok());
    }

    #[test]
    fn forged_changed_stale_and_malformed_signatures_are_refused() {
        let body = br#"{"id":"evt_1"}"#;
        let h = sign(SECRET, 1_700_000_000, body);
        let at = 1_700_000_000;
        assert_eq!(
            verify_signature(b"another secret", Some(&h), body, at, 300),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_signature(SECRET, Some(&h), br#"{"id":"evt_2"}"#, at, 300),
            Err(WebhookError::BadSignature)
        );
        // The timestamp is signed: moving it breaks the signature.
        let moved = h.replace("t=1700000000", "t=1700000400");
        assert_eq!(
            verify_signature(SECRET, Some(&moved), body, at + 400, 300),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_signature(SECRET, Some(&h), body, at + 301, 300),
            Err(WebhookError::Stale {
                age_s: 301,
                tolerance_s: 300
            })
        );
        assert_eq!(
            verify_signature(SECRET, None, body, at, 300),
            Err(WebhookError::MissingSignature)
        );
        for bad in [
            "",
            "t=1",
            "v1=00",
            "t=x,v1=00",
            "t=1,t=2,v1=00",
            "t=1,v1=zz",
        ] {
            assert_eq!(
                verify_signature(SECRET, Some(bad), body, at, 300),
                Err(WebhookError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn subscription_events_are_read_in_old_and_new_api_shapes() {
        let new = br#"{"id":"evt_1","type":"customer.subscription.updated","created":5,
            "data":{"object":{"id":"sub_1","customer":"cus_1","status":"active",
            "items":{"data":[{"price":{"id":"price_team"}}]}}}}"#;
        let old = br#"{"id":"evt_2","type":"customer.subscription.created","created":6,
            "data":{"object":{"id":"sub_1","customer":"cus_1","status":"active",
            "items":{"data":[{"plan":{"id":"price_team"}}]}}}}"#;
        for b in [&new[..], &old[..]] {
            let e = StripeEvent::parse(b).unwrap();
            assert_eq!(e.subscription.unwrap().price.as_deref(), Some("price_team"));
        }
        assert!(StripeEvent::parse(b"{}").is_err());
        assert!(StripeEvent::parse(b"not json").is_err());
    }

    #[test]
    fn months_roll_over() {
        assert_eq!(month_of(0), "1970-01");
        assert_eq!(next_month_start("2026-12"), "2027-01-01");
        assert_eq!(next_month_start("2026-03"), "2026-04-01");
    }
}
