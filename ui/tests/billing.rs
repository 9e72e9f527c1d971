//! Billing through Stripe, against the real router, a real SQLite store, a real
//! `nats-server` and a real local Stripe (`deploy/local/stripe-server.py`: PyPI
//! localstripe, which signs its webhooks exactly as Stripe does, plus hosted Checkout
//! and portal pages):
//! - only owners reach Stripe (admins, members and other organisations' users are
//!   refused; every member sees the plan), and the old free plan switch is gone;
//! - subscribe, upgrade and cancel through Stripe's pages, the plan following only the
//!   signed webhooks Stripe sends to the console; no card number reaches our pages or
//!   our database;
//! - forged, tampered, stale and replayed webhooks are refused and change nothing;
//! - a plan limit reached mid-month refuses the next export before it starts (nothing
//!   started, nothing kept), and schedules need a paid plan.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Recorder, console_in};
use pipeline::accounts::{Accounts, Role, User};
use pipeline::billing::{Billing, Plan, Prices};
use pipeline::embedded_nats::EmbeddedNats;
use pipeline::store::JobStore;
use serde_json::{Value, json};
use ui::billing::{Stripe, StripeConfig};

const WEBHOOK_SECRET: &str = "whsec_portshift_test_0123456789";
const SECRET_KEY: &str = "sk_test_portshift_billing";
const CARD: &str = "4242424242424242";

fn stripe_url() -> String {
    std::env::var("PORTSHIFT_TEST_STRIPE_URL").unwrap_or_else(|_| {
        panic!("PORTSHIFT_TEST_STRIPE_URL is not set: source .data/services.env (deploy/local/start.sh stripe starts the local Stripe)")
    })
}

struct World {
    tmp: tempfile::TempDir,
    _nats: EmbeddedNats,
    store: JobStore,
    accounts: Accounts,
    state: ui::Shared,
    recorder: Arc<Recorder>,
    prices: Prices,
    /// Where the console listens when served over TCP (Stripe's webhooks reach it).
    addr: Option<SocketAddr>,
}

/// Creates this test's own team and enterprise prices in the local Stripe.
async fn fresh_prices(http: &reqwest::Client) -> Prices {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let mut made = vec![];
    for (name, amount) in [("team", "2900"), ("enterprise", "9900")] {
        let id = format!("price_{name}_{tag}");
        let r = http
            .post(format!("{}/v1/plans", stripe_url()))
            .basic_auth(SECRET_KEY, Some(""))
            .form(&[
                ("id", id.as_str()),
                ("amount", amount),
                ("currency", "eur"),
                ("interval", "month"),
                ("nickname", name),
                ("product[name]", name),
            ])
            .send()
            .await
            .expect("reach the local Stripe (PORTSHIFT_TEST_STRIPE_URL)");
        assert!(r.status().is_success(), "create plan: {}", r.status());
        made.push(id);
    }
    Prices {
        team: Some(made[0].clone()),
        enterprise: Some(made[1].clone()),
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn world(serve: bool) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let recorder = Arc::new(Recorder::default());
    let (nats, store, mut state) = console_in(tmp.path(), recorder.clone()).await;
    let prices = fresh_prices(&http()).await;
    let listener = if serve {
        Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
    } else {
        None
    };
    let addr = listener.as_ref().map(|l| l.local_addr().unwrap());
    let st = Arc::get_mut(&mut state).unwrap();
    st.stripe = Some(Arc::new(
        Stripe::new(StripeConfig {
            api_url: stripe_url(),
            secret_key: SECRET_KEY.to_string().into(),
            webhook_secret: WEBHOOK_SECRET.to_string().into(),
            prices: prices.clone(),
            public_url: match addr {
                Some(a) => format!("http://{a}"),
                None => "https://console.portshift.test".into(),
            },
        })
        .unwrap(),
    ));
    if let Some(listener) = listener {
        let app = ui::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    World {
        accounts: Accounts::new(&store),
        tmp,
        _nats: nats,
        store,
        state,
        recorder,
        prices,
        addr,
    }
}

type Sess = (String, String);

async fn user(w: &World, who: &str) -> (User, Sess) {
    static HASH: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| ui::auth::hash_password("tangerine-orbit-Violin-42").unwrap());
    let email = format!("{who}-{}@example.com", uuid::Uuid::new_v4().simple());
    let u = w.accounts.create_user(&email, &HASH).await.unwrap();
    let s = ui::auth::issue_session(&w.accounts, &u).await.unwrap();
    (u, s)
}

/// An organisation with an owner, an admin, a member, and a user of another organisation.
struct Org {
    id: String,
    owner: Sess,
    admin: Sess,
    member: Sess,
    outsider: Sess,
}

async fn org(w: &World) -> Org {
    let (owner_u, owner) = user(w, "owner").await;
    let (admin_u, admin) = user(w, "admin").await;
    let (member_u, member) = user(w, "member").await;
    let (outsider_u, outsider) = user(w, "outsider").await;
    let members = [(&admin_u, Role::Admin), (&member_u, Role::Member)];
    let o = test_support::orgs::org_with(&w.accounts, "Billing Ltd", &owner_u, &members).await;
    w.accounts
        .create_org("Elsewhere Ltd", &outsider_u)
        .await
        .unwrap();
    Org {
        id: o.id,
        owner,
        admin,
        member,
        outsider,
    }
}

async fn send(
    state: &ui::Shared,
    req: Request<Body>,
) -> (StatusCode, String, axum::http::HeaderMap) {
    let (status, bytes, headers) = common::send(state, req).await;
    (
        status,
        String::from_utf8_lossy(&bytes).into_owned(),
        headers,
    )
}

async fn api(
    w: &World,
    method: &str,
    path: &str,
    s: Option<&Sess>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let (status, json, _) = common::api(&w.state, method, path, s, body).await;
    (status, json)
}

async fn form(
    w: &World,
    path: &str,
    s: &Sess,
    fields: &[(&str, &str)],
) -> (StatusCode, String, axum::http::HeaderMap) {
    let mut body = url::form_urlencoded::Serializer::new(String::new());
    body.append_pair("csrf", &s.1);
    for (k, v) in fields {
        body.append_pair(k, v);
    }
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("cookie", format!("portshift_session={}", s.0))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body.finish()))
        .unwrap();
    send(&w.state, req).await
}

async fn page(w: &World, path: &str, s: &Sess) -> (StatusCode, String) {
    let req = Request::builder()
        .uri(path)
        .header("cookie", format!("portshift_session={}", s.0))
        .body(Body::empty())
        .unwrap();
    let (status, text, _) = send(&w.state, req).await;
    (status, text)
}

async fn plan(w: &World, org: &str) -> String {
    w.accounts.org(org).await.unwrap().unwrap().billing_plan
}

async fn wait_for_plan(w: &World, org: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = plan(w, org).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the plan stayed {now:?}, expected {want:?}: did Stripe's webhook reach the console?"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every file under the test's data folder (the SQLite database, its WAL, the NATS store).
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.extend(b);
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The `<input>`/`<select>` names of an HTML page.
fn field_names(html: &str) -> Vec<String> {
    html.split("name=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_owners_reach_stripe_and_every_member_sees_the_plan() {
    let w = world(false).await;
    let o = org(&w).await;
    let checkout = format!("/api/v1/orgs/{}/billing/checkout", o.id);
    let portal = format!("/api/v1/orgs/{}/billing/portal", o.id);
    let team = json!({"plan": "team"});
    // Attack: admin, member and another organisation's user, by API and by page form.
    for (who, s, want) in [
        ("admin", &o.admin, StatusCode::FORBIDDEN),
        ("member", &o.member, StatusCode::FORBIDDEN),
        ("outsider", &o.outsider, StatusCode::NOT_FOUND),
    ] {
        let (st, _) = api(&w, "POST", &checkout, Some(s), Some(team.clone())).await;
        assert_eq!(st, want, "{who}: API checkout");
        let (st, _) = api(&w, "POST", &portal, Some(s), None).await;
        assert_eq!(st, want, "{who}: API portal");
        for path in ["checkout", "portal"] {
            let (st, _, h) = form(
                &w,
                &format!("/orgs/{}/settings/billing/{path}", o.id),
                s,
                &[("plan", "team")],
            )
            .await;
            assert_eq!(st, want, "{who}: page form {path}");
            assert!(h.get("location").is_none(), "{who} was sent on to Stripe");
        }
        // The old free switch between plan names is gone for everyone.
        let (st, _, _) = form(
            &w,
            &format!("/orgs/{}/settings/billing", o.id),
            s,
            &[("plan", "enterprise")],
        )
        .await;
        assert!(st.is_client_error(), "{who}: old plan switch answered {st}");
    }
    // Anonymous.
    let (st, _) = api(&w, "POST", &checkout, None, Some(team.clone())).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // No Stripe customer was made for anyone but an owner.
    assert!(
        Billing::new(&w.store)
            .account(&o.id)
            .await
            .unwrap()
            .is_none()
    );
    // Every member sees the plan, its limits and the month's use.
    for s in [&o.owner, &o.admin, &o.member] {
        let (st, b) = api(
            &w,
            "GET",
            &format!("/api/v1/orgs/{}/billing", o.id),
            Some(s),
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(b["plan"], "trial");
        assert_eq!(b["limits"]["schedules"], 0);
        assert_eq!(b["limits"]["exports_per_month"], 20);
    }
    let (st, _) = api(
        &w,
        "GET",
        &format!("/api/v1/orgs/{}/billing", o.id),
        Some(&o.outsider),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // The old switch also left the plan alone for the owner.
    let (st, _, _) = form(
        &w,
        &format!("/orgs/{}/settings/billing", o.id),
        &o.owner,
        &[("plan", "enterprise")],
    )
    .await;
    assert!(st.is_client_error(), "owner: old plan switch answered {st}");
    assert_eq!(plan(&w, &o.id).await, "trial");

    // Positive control: the owner gets Stripe's Checkout page, and the plan does not
    // change by asking for it.
    let (st, b) = api(&w, "POST", &checkout, Some(&o.owner), Some(team.clone())).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let url = b["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/pay/cs_test_", stripe_url())),
        "{url}"
    );
    let (st, _, h) = form(
        &w,
        &format!("/orgs/{}/settings/billing/checkout", o.id),
        &o.owner,
        &[("plan", "enterprise")],
    )
    .await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert!(h["location"].to_str().unwrap().starts_with(&stripe_url()));
    let (st, b) = api(&w, "POST", &portal, Some(&o.owner), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert!(
        b["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/portal/bps_", stripe_url()))
    );
    assert_eq!(
        plan(&w, &o.id).await,
        "trial",
        "asking for a page changed the plan"
    );
    // A plan that is not sold, and the trial, are refused with what to do.
    let (st, b) = api(
        &w,
        "POST",
        &checkout,
        Some(&o.owner),
        Some(json!({"plan": "platinum"})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team or enterprise")
    );

    // The settings page: admins see the plan without buttons; owners get buttons that
    // lead to Stripe; no field of ours takes card data.
    let (st, html) = page(&w, &format!("/orgs/{}/settings", o.id), &o.admin).await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        html.contains("id=\"billing-plan\"") && html.contains("Only owners can change the plan.")
    );
    assert!(!html.contains("billing-checkout"));
    let (_, html) = page(&w, &format!("/orgs/{}/settings", o.id), &o.owner).await;
    assert!(
        html.contains("id=\"billing-checkout\"") && html.contains("id=\"billing-portal\""),
        "{html}"
    );
    for name in field_names(&html) {
        let n = name.to_ascii_lowercase();
        assert!(
            !["card", "cvc", "cvv", "number", "exp", "pan", "iban"]
                .iter()
                .any(|c| n.contains(c)),
            "the settings page has a field {name:?} that could take card data"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_upgrade_and_cancel_through_stripe_follow_its_signed_webhooks() {
    let w = world(true).await;
    let o = org(&w).await;
    let addr = w.addr.unwrap();
    let browser = http();
    // The operator registers the console's webhook endpoint with Stripe.
    let hook = format!("portshift-test-{}", uuid::Uuid::new_v4().simple());
    let r = browser
        .post(format!("{}/_config/webhooks/{hook}", stripe_url()))
        .form(&[
            ("url", format!("http://{addr}/webhooks/stripe")),
            ("secret", WEBHOOK_SECRET.into()),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    // Subscribe: our form sends the browser to Stripe's payment page.
    let (st, _, h) = form(
        &w,
        &format!("/orgs/{}/settings/billing/checkout", o.id),
        &o.owner,
        &[("plan", "team")],
    )
    .await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let pay = h["location"].to_str().unwrap().to_string();
    assert!(
        pay.starts_with(&stripe_url()),
        "checkout goes to Stripe, not to us: {pay}"
    );
    let r = browser.get(&pay).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text().await.unwrap().contains("name=\"number\""),
        "Stripe's page asks for the card"
    );
    // The card goes to Stripe only.
    let r = browser
        .post(&pay)
        .form(&[
            ("number", CARD),
            ("exp_month", "12"),
            ("exp_year", "2034"),
            ("cvc", "123"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let back = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(
        back,
        format!("http://{addr}/orgs/{}/settings?billing=done", o.id)
    );
    wait_for_plan(&w, &o.id, "team").await;
    let account = Billing::new(&w.store)
        .account(&o.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(account.subscription_status.as_deref(), Some("active"));

    // Upgrade in Stripe's portal.
    let (st, _, h) = form(
        &w,
        &format!("/orgs/{}/settings/billing/portal", o.id),
        &o.owner,
        &[],
    )
    .await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let portal = h["location"].to_str().unwrap().to_string();
    assert!(portal.starts_with(&format!("{}/portal/", stripe_url())));
    let r = browser
        .post(format!("{portal}/plan"))
        .form(&[("price", w.prices.enterprise.clone().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    wait_for_plan(&w, &o.id, "enterprise").await;
    let (_, b) = api(
        &w,
        "GET",
        &format!("/api/v1/orgs/{}/billing", o.id),
        Some(&o.member),
        None,
    )
    .await;
    assert_eq!(b["plan"], "enterprise");
    assert_eq!(b["limits"]["exports_per_month"], Value::Null, "unlimited");

    // Cancel: back to the trial.
    let r = browser
        .post(format!("{portal}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    wait_for_plan(&w, &o.id, "trial").await;
    let log = w.accounts.audit_log(&o.id, 50).await.unwrap();
    let changes: Vec<_> = log
        .iter()
        .filter(|e| e.action == "billing.changed")
        .map(|e| (e.actor.as_str(), e.detail.split(' ').nth(1).unwrap_or("")))
        .collect();
    assert_eq!(
        changes,
        [
            ("stripe", "trial"),
            ("stripe", "enterprise"),
            ("stripe", "team")
        ]
    );

    // The card number is in none of our files (database, WAL, queue store).
    let bytes = all_bytes(w.tmp.path());
    assert!(bytes.len() > 10_000, "read the data folder");
    assert!(!contains(&bytes, CARD), "a card number reached our disk");
    assert!(!contains(&bytes, &CARD[CARD.len() - 8..]));

    let _ = browser
        .delete(format!("{}/_config/webhooks/{hook}", stripe_url()))
        .send()
        .await;
}

fn subscription_event(
    id: &str,
    kind: &str,
    created: i64,
    customer: &str,
    price: &str,
    status: &str,
) -> Vec<u8> {
    json!({
        "id": id, "object": "event", "type": kind, "created": created,
        "data": {"object": {
            "id": "sub_test_1", "object": "subscription", "customer": customer, "status": status,
            "items": {"object": "list", "data": [{"id": "si_1", "price": {"id": price}}]}
        }}
    })
    .to_string()
    .into_bytes()
}

async fn deliver(w: &World, body: &[u8], signature: Option<String>) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method("POST")
        .uri("/webhooks/stripe")
        .header("content-type", "application/json");
    if let Some(s) = signature {
        req = req.header("stripe-signature", s);
    }
    let (st, text, _) = send(&w.state, req.body(Body::from(body.to_vec())).unwrap()).await;
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_tampered_stale_and_replayed_webhooks_change_nothing() {
    let w = world(false).await;
    let o = org(&w).await;
    let customer = format!("cus_test_{}", uuid::Uuid::new_v4().simple());
    Billing::new(&w.store)
        .link_customer(&o.id, &customer)
        .await
        .unwrap();
    let team = w.prices.team.clone().unwrap();
    let enterprise = w.prices.enterprise.clone().unwrap();
    let now = chrono::Utc::now().timestamp();
    let secret = WEBHOOK_SECRET.as_bytes();
    let upgrade = subscription_event(
        "evt_up_1",
        "customer.subscription.updated",
        now,
        &customer,
        &enterprise,
        "active",
    );

    // Forged: signed with another secret; unsigned; tampered after signing; stale.
    let (st, _) = deliver(
        &w,
        &upgrade,
        Some(pipeline::billing::sign(b"whsec_attacker", now, &upgrade)),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = deliver(&w, &upgrade, None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let genuine_small = subscription_event(
        "evt_up_0",
        "customer.subscription.updated",
        now,
        &customer,
        &team,
        "active",
    );
    let sig = pipeline::billing::sign(secret, now, &genuine_small);
    let tampered = String::from_utf8(genuine_small.clone())
        .unwrap()
        .replace(&team, &enterprise);
    let (st, b) = deliver(&w, tampered.as_bytes(), Some(sig)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
    let old = now - pipeline::billing::SIGNATURE_TOLERANCE_S - 60;
    let (st, b) = deliver(
        &w,
        &upgrade,
        Some(pipeline::billing::sign(secret, old, &upgrade)),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        b["error"]["message"].as_str().unwrap().contains("replay"),
        "{b}"
    );
    assert_eq!(
        plan(&w, &o.id).await,
        "trial",
        "a refused webhook changed the plan"
    );

    // Positive control: the genuine, fresh event applies.
    let (st, b) = deliver(
        &w,
        &upgrade,
        Some(pipeline::billing::sign(secret, now, &upgrade)),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(plan(&w, &o.id).await, "enterprise");
    // Cancelled afterwards.
    let cancel = subscription_event(
        "evt_cancel_1",
        "customer.subscription.deleted",
        now + 1,
        &customer,
        &enterprise,
        "canceled",
    );
    let (st, _) = deliver(
        &w,
        &cancel,
        Some(pipeline::billing::sign(secret, now + 1, &cancel)),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(plan(&w, &o.id).await, "trial");
    // Replayed: the captured upgrade, re-sent byte for byte, and again with a fresh
    // timestamp (as Stripe's retry would sign it): acknowledged, not applied.
    for t in [now, now + 2] {
        let (st, b) = deliver(
            &w,
            &upgrade,
            Some(pipeline::billing::sign(secret, t, &upgrade)),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert!(
            b["outcome"].as_str().unwrap().starts_with("duplicate"),
            "{b}"
        );
    }
    assert_eq!(
        plan(&w, &o.id).await,
        "trial",
        "a replayed event brought the paid plan back"
    );
    // An event older than one applied (Stripe does not promise order) changes nothing.
    let late = subscription_event(
        "evt_late_1",
        "customer.subscription.updated",
        now - 5,
        &customer,
        &team,
        "active",
    );
    let (st, b) = deliver(&w, &late, Some(pipeline::billing::sign(secret, now, &late))).await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        b["outcome"].as_str().unwrap().starts_with("outdated"),
        "{b}"
    );
    assert_eq!(plan(&w, &o.id).await, "trial");
    // Another server's customer: ignored.
    let stranger = subscription_event(
        "evt_other_1",
        "customer.subscription.updated",
        now + 3,
        "cus_someone_else",
        &team,
        "active",
    );
    let (st, b) = deliver(
        &w,
        &stranger,
        Some(pipeline::billing::sign(secret, now + 3, &stranger)),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(b["outcome"], "ignored");
    // The refusals are counted for the operator.
    let req = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let (_, metrics, _) = send(&w.state, req).await;
    assert!(
        metrics.contains("portshift_console_stripe_webhooks_refused_total 4"),
        "{metrics}"
    );
}

fn export_body() -> Value {
    json!({
        "chorus_url": "https://chorus.example/",
        "from": "2024-01-01", "to": "2024-01-31",
        "media": true, "transcript": true, "metadata": false,
        "destination": "s3://bucket/prefix?region=eu-west-1",
        "chorus_token": "CANARY-BILLING-TOKEN",
        "s3_access_key_id": "AKIAEXAMPLE", "s3_secret_access_key": "CANARY-BILLING-SECRET",
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_limit_reached_mid_month_refuses_the_next_export_before_it_starts() {
    let w = world(false).await;
    let o = org(&w).await;
    let billing = Billing::new(&w.store);
    let limit = Plan::Trial.limits().exports_per_month.unwrap();
    // Mid-month: all but one of the trial's exports are used.
    let now = chrono::Utc::now().timestamp_millis();
    for _ in 0..limit - 1 {
        billing
            .take_export(&o.id, "Billing Ltd", now)
            .await
            .unwrap()
            .unwrap();
    }
    let start = format!("/api/v1/orgs/{}/jobs", o.id);
    let (st, b) = api(&w, "POST", &start, Some(&o.member), Some(export_body())).await;
    assert!(
        st.is_success(),
        "the last export of the month starts: {st} {b}"
    );
    assert_eq!(w.recorder.launched.lock().unwrap().len(), 1);
    let jobs_before = w.accounts.job_history(&o.id, None, 0, 100).await.unwrap().1;
    // The next one is refused before anything starts, saying what to do.
    let (st, b) = api(&w, "POST", &start, Some(&o.member), Some(export_body())).await;
    assert_eq!(st, StatusCode::CONFLICT, "{b}");
    let msg = b["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("trial plan") && msg.contains(&format!("{limit} exports a month")),
        "{msg}"
    );
    assert!(
        msg.contains("upgrade") && msg.contains("Nothing was started"),
        "{msg}"
    );
    assert_eq!(
        w.recorder.launched.lock().unwrap().len(),
        1,
        "a worker started"
    );
    assert_eq!(
        w.accounts.job_history(&o.id, None, 0, 100).await.unwrap().1,
        jobs_before,
        "a job was made"
    );
    assert_eq!(
        billing
            .exports_in(&o.id, &pipeline::billing::month_of(now))
            .await
            .unwrap(),
        limit
    );
    // Schedules need a paid plan (a console schedule's references are validated first,
    // and every kind today is refused to tenants; the plan rule is checked directly).
    let refused = billing.may_add_schedule(&o.id).await.unwrap().unwrap_err();
    assert!(
        refused.0.contains("team and enterprise plans"),
        "{}",
        refused.0
    );

    // After Stripe says the organisation pays for the team plan, both work again.
    let customer = format!("cus_test_{}", uuid::Uuid::new_v4().simple());
    billing.link_customer(&o.id, &customer).await.unwrap();
    let t = chrono::Utc::now().timestamp();
    let ev = subscription_event(
        "evt_limit_1",
        "customer.subscription.created",
        t,
        &customer,
        w.prices.team.as_deref().unwrap(),
        "active",
    );
    let (st, _) = deliver(
        &w,
        &ev,
        Some(pipeline::billing::sign(WEBHOOK_SECRET.as_bytes(), t, &ev)),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(plan(&w, &o.id).await, "team");
    let (st, b) = api(&w, "POST", &start, Some(&o.member), Some(export_body())).await;
    assert!(st.is_success(), "{st} {b}");
    assert_eq!(w.recorder.launched.lock().unwrap().len(), 2);
    assert!(billing.may_add_schedule(&o.id).await.unwrap().is_ok());
    // The usage survives retention: it is not counted from the jobs.
    assert_eq!(
        billing
            .exports_in(&o.id, &pipeline::billing::month_of(now))
            .await
            .unwrap(),
        limit + 1
    );
}
