//! Billing plans in tests: an organisation on the team plan (a trial has no schedules),
//! reached the way production reaches it, through Stripe's signed subscription event.

use pipeline::billing::{Billing, Plan, Prices, StripeEvent};
use pipeline::store::JobStore;

/// Puts `org` on the team plan, as Stripe's subscription webhook would.
pub async fn on_team_plan(store: &JobStore, org: &str) {
    let billing = Billing::new(store);
    let customer = format!("cus_{}", uuid::Uuid::new_v4().simple());
    billing.link_customer(org, &customer).await.unwrap();
    let event = serde_json::json!({
        "id": format!("evt_{}", uuid::Uuid::new_v4().simple()),
        "type": "customer.subscription.created",
        "created": chrono::Utc::now().timestamp(),
        "data": {"object": {"id": format!("sub_{customer}"), "customer": customer,
            "status": "active", "items": {"data": [{"price": {"id": "price_team"}}]}}}
    });
    let event = StripeEvent::parse(event.to_string().as_bytes()).unwrap();
    let prices = Prices {
        team: Some("price_team".into()),
        enterprise: None,
    };
    billing.apply(&event, &prices).await.unwrap();
    assert_eq!(billing.plan_of(org).await.unwrap(), Plan::Team);
}
