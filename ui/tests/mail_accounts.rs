//! E-mail ownership and account self-service against the real router, a real SQLite
//! store, a real `nats-server` and a real SMTP server (aiosmtpd, `deploy/local/smtp-sink.py`,
//! which saves every message it receives as a file the tests read):
//! - sign-up mails a link; the link plus the sign-up password confirm the address, and
//!   until then the account acts in no organisation;
//! - an invitation becomes a membership only when a verified owner of the address accepts
//!   it: someone who signed up with another person's address gets nothing;
//! - sign-up, sign-in, invitation and reset answers are the same whether or not the
//!   address has an account (status and body, with the address itself masked);
//! - password change (current password needed) and password reset by a single-use,
//!   expiring link stored only as a hash, both ending the user's other sessions;
//! - the data download, and account deletion: refused for an organisation's last owner,
//!   and afterwards the e-mail address is in no byte of the database file or its WAL
//!   (audit rows and jobs keep a pseudonym);
//! - the relay is never spoken to in clear unless the operator asked for it on loopback.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use common::{NoWorkers, console_in};
use pipeline::accounts::{Accounts, Role, TokenPurpose};
use pipeline::embedded_nats::EmbeddedNats;
use pipeline::store::JobStore;
use serde_json::{Value, json};
use test_support::env_or_fail;
use ui::mail::{MailConfig, Mailer};

const PASSWORD: &str = "tangerine-orbit-Violin-42";
const PUBLIC_URL: &str = "https://console.portshift.test";

fn mail_config(url: &str) -> MailConfig {
    MailConfig {
        smtp_url: url.into(),
        from: "portshift <no-reply@portshift.test>".into(),
        public_url: PUBLIC_URL.into(),
        ca_file: None,
        username: None,
        password: None,
    }
}

struct World {
    tmp: tempfile::TempDir,
    _nats: EmbeddedNats,
    store: JobStore,
    accounts: Accounts,
    state: ui::Shared,
}

async fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let (nats, store, mut state) = console_in(tmp.path(), Arc::new(NoWorkers)).await;
    let mailer = Mailer::new(&mail_config(&env_or_fail("PORTSHIFT_TEST_SMTP_URL"))).unwrap();
    let st = Arc::get_mut(&mut state).unwrap();
    st.mail = Some(Arc::new(mailer));
    // These tests make many sign-ins from one address; the limit has its own test.
    st.limits.sign_in = (10_000, 60_000);
    World {
        accounts: Accounts::new(&store),
        tmp,
        _nats: nats,
        store,
        state,
    }
}

fn fresh(who: &str, domain: &str) -> String {
    format!("{who}-{}@{domain}", uuid::Uuid::new_v4().simple())
}

/// Sends one request through the router as if from 127.0.0.1.
async fn send(state: &ui::Shared, req: Request<Body>) -> (StatusCode, Vec<u8>, HeaderMap) {
    let (status, bytes, headers) = common::send(state, req).await;
    (status, bytes.to_vec(), headers)
}

/// A session: (cookie token, CSRF token).
type Sess = (String, String);

async fn api(
    w: &World,
    method: &str,
    path: &str,
    session: Option<&Sess>,
    body: Option<Value>,
) -> (StatusCode, Value, HeaderMap) {
    common::api(&w.state, method, path, session, body).await
}

/// What the API answered: status, JSON body, headers.
type Answer = (StatusCode, Value, HeaderMap);

/// A signed-out JSON post (sign-up, e-mail confirmation, password reset).
async fn public_api(w: &World, path: &str, body: Value) -> Answer {
    api(w, "POST", path, None, Some(body)).await
}

async fn signup(w: &World, email: &str, password: &str) -> Answer {
    let body = json!({"email": email, "password": password});
    public_api(w, "/api/v1/signup", body).await
}

/// Confirms an address with the link's token and the sign-up password.
async fn verify(w: &World, token: &str, password: &str) -> Answer {
    let body = json!({"token": token, "password": password});
    public_api(w, "/api/v1/verify-email", body).await
}

async fn request_reset(w: &World, email: &str) -> Answer {
    public_api(w, "/api/v1/password-reset", json!({"email": email})).await
}

/// Sets a new password with a reset link's token.
async fn reset_confirm(w: &World, token: &str, password: &str) -> Answer {
    let body = json!({"token": token, "password": password});
    public_api(w, "/api/v1/password-reset/confirm", body).await
}

/// `s` invites `email` into `org` in `role`.
async fn invite(w: &World, org: &str, s: &Sess, email: &str, role: &str) -> Answer {
    let path = format!("/api/v1/orgs/{org}/members");
    let body = json!({"email": email, "role": role});
    api(w, "POST", &path, Some(s), Some(body)).await
}

/// `s`'s request without a body.
async fn call(w: &World, method: &str, path: &str, s: &Sess) -> Answer {
    api(w, method, path, Some(s), None).await
}

async fn create_org(w: &World, s: &Sess, name: &str) -> Answer {
    let body = json!({"name": name});
    api(w, "POST", "/api/v1/orgs", Some(s), Some(body)).await
}

/// `s` changes their password, giving `current` as the current one.
async fn change_password(w: &World, s: &Sess, current: &str, new: &str) -> Answer {
    let body = json!({"current_password": current, "new_password": new});
    api(w, "PUT", "/api/v1/me/password", Some(s), Some(body)).await
}

/// `s` deletes their own account, confirming with `password`.
async fn delete_me(w: &World, s: &Sess, password: &str) -> Answer {
    let body = json!({"password": password});
    api(w, "DELETE", "/api/v1/me", Some(s), Some(body)).await
}

/// A pre-session form post (sign-up, sign-in, reset): the double-submit cookie and field.
async fn public_form(
    w: &World,
    path: &str,
    fields: &[(&str, &str)],
) -> (StatusCode, String, HeaderMap) {
    let mut body = url::form_urlencoded::Serializer::new(String::new());
    body.append_pair("csrf", "pre-token-for-the-test");
    for (k, v) in fields {
        body.append_pair(k, v);
    }
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("cookie", "portshift_pre=pre-token-for-the-test")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body.finish()))
        .unwrap();
    let (status, bytes, headers) = send(&w.state, req).await;
    (
        status,
        String::from_utf8_lossy(&bytes).into_owned(),
        headers,
    )
}

async fn sign_in(w: &World, email: &str, password: &str) -> Option<Sess> {
    let body = json!({"email": email, "password": password});
    let (status, json, headers) = public_api(w, "/api/v1/session", body).await;
    if status != StatusCode::OK {
        return None;
    }
    let cookie = headers["set-cookie"].to_str().unwrap();
    let token = cookie
        .strip_prefix("portshift_session=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    Some((token, json["csrf_token"].as_str().unwrap().to_string()))
}

/// A verified user made by the operator's path, with a real password.
async fn verified_user(w: &World, email: &str) -> (pipeline::accounts::User, Sess) {
    let hash = ui::auth::hash_password(PASSWORD).unwrap();
    let user = w.accounts.create_user(email, &hash).await.unwrap();
    let s = sign_in(w, email, PASSWORD).await.unwrap();
    (user, s)
}

// --- the mailbox ------------------------------------------------------------------------

struct Mail {
    subject: String,
    body: String,
}

fn decode_qp(s: &str) -> String {
    let s = s.replace("=\r\n", "").replace("=\n", "");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'='
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mail(raw: &str) -> Mail {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .or_else(|| raw.split_once("\n\n"))
        .unwrap_or((raw, ""));
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
            .unwrap_or_default()
    };
    let body = if header("Content-Transfer-Encoding").eq_ignore_ascii_case("quoted-printable") {
        decode_qp(body)
    } else {
        body.to_string()
    };
    Mail {
        subject: header("Subject"),
        body,
    }
}

/// Every mail the SMTP server saved for `to`, oldest first.
fn mails_to(to: &str) -> Vec<Mail> {
    let dir = PathBuf::from(env_or_fail("PORTSHIFT_TEST_SMTP_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter(|raw| raw.lines().any(|l| l == format!("X-Envelope-To: {to}")))
        .map(|raw| parse_mail(&raw))
        .collect()
}

/// Waits for the `n`th mail (1-based) to `to`.
async fn nth_mail(to: &str, n: usize) -> Mail {
    let start = Instant::now();
    loop {
        let mut all = mails_to(to);
        if all.len() >= n {
            return all.swap_remove(n - 1);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no mail #{n} to {to} within 20 s (got {})",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The subjects of the first `n` mails to `to` (waiting for them), in any order.
async fn first_subjects(to: &str, n: usize) -> Vec<String> {
    nth_mail(to, n).await;
    mails_to(to)
        .into_iter()
        .take(n)
        .map(|m| m.subject)
        .collect()
}

fn token_in(mail: &Mail, path: &str) -> String {
    let marker = format!("{PUBLIC_URL}{path}?token=");
    let at = mail
        .body
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} link in: {}", mail.body));
    mail.body[at + marker.len()..]
        .split(|c: char| c.is_whitespace())
        .next()
        .unwrap()
        .to_string()
}

/// The database file and its WAL, as bytes.
fn db_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["portshift.sqlite3", "portshift.sqlite3-wal"] {
        if let Ok(b) = std::fs::read(dir.join(name)) {
            all.extend(b);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

// --- tests ------------------------------------------------------------------------------

#[tokio::test]
async fn sign_up_mails_a_link_that_with_the_password_confirms_the_address() {
    let w = world().await;
    let email = fresh("ada", "example.com");
    let (status, json, headers) = signup(&w, &email, PASSWORD).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(json["status"], "check_your_inbox");
    assert!(
        headers.get("set-cookie").is_none(),
        "sign-up must not sign in"
    );

    let mail = nth_mail(&email, 1).await;
    assert!(
        mail.subject.contains("Confirm your e-mail address"),
        "{}",
        mail.subject
    );
    let token = token_in(&mail, "/verify-email");

    // Signed in but unconfirmed: no organisation can be created, and the session says so.
    let s = sign_in(&w, &email, PASSWORD).await.expect("sign in");
    let (_, me, _) = api(&w, "GET", "/api/v1/me", Some(&s), None).await;
    assert_eq!(me["email_verified"], false, "{me}");
    let (status, json, _) = create_org(&w, &s, "Early").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Confirm your e-mail address")
    );

    // The link alone is not enough: the password chosen at sign-up goes with it.
    let (status, json, _) = verify(&w, &token, "someone-elses-Password-9").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    // The page shows the form for the link.
    let req = Request::builder()
        .uri(format!("/verify-email?token={token}"))
        .body(Body::empty())
        .unwrap();
    let (status, html, _) = send(&w.state, req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&html).contains(&token));

    let (status, json, headers) = verify(&w, &token, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert!(
        headers["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("portshift_session=")
    );
    let (_, me, _) = api(&w, "GET", "/api/v1/me", Some(&s), None).await;
    assert_eq!(me["email_verified"], true, "{me}");
    let (status, json, _) = create_org(&w, &s, "Confirmed").await;
    assert_eq!(status, StatusCode::CREATED, "{json}");

    // The link works once.
    let (status, _, _) = verify(&w, &token, PASSWORD).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Only the token's hash is stored.
    assert!(
        !contains(&db_bytes(w.tmp.path()), &token),
        "raw token stored"
    );
}

/// Attack 3 of the issue: sign up as cfo@victim.example while that address has a pending
/// invitation. The impostor must get nothing; the real owner of the address gets in.
#[tokio::test]
async fn an_invitation_is_accepted_only_by_a_verified_owner_of_the_address() {
    let w = world().await;
    let (owner, owner_s) = verified_user(&w, &fresh("owner", "example.com")).await;
    let org = w.accounts.create_org("Victim Corp", &owner).await.unwrap();
    let cfo = fresh("cfo", "victim.example");

    let (status, json, _) = invite(&w, &org.id, &owner_s, &cfo, "admin").await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    assert_eq!(json["status"], "invited");
    let invitation = nth_mail(&cfo, 1).await;
    assert!(
        invitation.body.contains("Victim Corp"),
        "{}",
        invitation.body
    );
    assert!(invitation.body.contains(&owner.email));

    // The impostor signs up with the invited address and their own password.
    let impostor_password = "impostor-Guess-Work-77";
    let (status, _, _) = signup(&w, &cfo, impostor_password).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let imp = sign_in(&w, &cfo, impostor_password)
        .await
        .expect("impostor signs in");
    for (method, path) in [
        ("GET", "/api/v1/me/invitations".to_string()),
        ("POST", format!("/api/v1/me/invitations/{}/accept", org.id)),
        ("POST", format!("/api/v1/me/invitations/{}/decline", org.id)),
        ("GET", format!("/api/v1/orgs/{}/jobs", org.id)),
    ] {
        let (status, json, _) = api(&w, method, &path, Some(&imp), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {json}");
        assert!(!json.to_string().contains("Victim Corp"), "{json}");
    }
    // The page hides the invitation too.
    let req = Request::builder()
        .uri("/orgs")
        .header("cookie", format!("portshift_session={}", imp.0))
        .body(Body::empty())
        .unwrap();
    let (_, html, _) = send(&w.state, req).await;
    let html = String::from_utf8_lossy(&html);
    assert!(
        html.contains("id=\"unverified\"") && !html.contains("Victim Corp"),
        "{html}"
    );
    assert_eq!(
        w.accounts
            .orgs_of(&w.accounts.user_by_email(&cfo).await.unwrap().unwrap().0.id)
            .await
            .unwrap()
            .len(),
        0
    );

    // The link went to the real owner's mailbox; clicking it without the impostor's
    // password confirms nothing.
    let link = nth_mail(&cfo, 2).await;
    let token = token_in(&link, "/verify-email");
    let (status, _, _) = verify(&w, &token, PASSWORD).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, me, _) = api(&w, "GET", "/api/v1/me", Some(&imp), None).await;
    assert_eq!(me["email_verified"], false);

    // Positive control: a verified owner of an invited address sees and accepts it.
    let bob = fresh("bob", "example.com");
    let (status, _, _) = signup(&w, &bob, PASSWORD).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let token = token_in(&nth_mail(&bob, 1).await, "/verify-email");
    let (status, _, _) = verify(&w, &token, PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let bob_s = sign_in(&w, &bob, PASSWORD).await.unwrap();
    let (status, _, _) = invite(&w, &org.id, &owner_s, &bob, "member").await;
    assert_eq!(status, StatusCode::CREATED);
    // Invited, not yet a member.
    let (status, _, _) = call(&w, "GET", &format!("/api/v1/orgs/{}/jobs", org.id), &bob_s).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list, _) = api(&w, "GET", "/api/v1/me/invitations", Some(&bob_s), None).await;
    assert_eq!(list["invitations"][0]["organisation"], org.id, "{list}");
    let accept = format!("/api/v1/me/invitations/{}/accept", org.id);
    let (status, json, _) = call(&w, "POST", &accept, &bob_s).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["role"], "member");
    let (status, _, _) = call(&w, "GET", &format!("/api/v1/orgs/{}/jobs", org.id), &bob_s).await;
    assert_eq!(status, StatusCode::OK);
    // Used up: accepting again finds nothing.
    let (status, _, _) = call(&w, "POST", &accept, &bob_s).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let log = w.accounts.audit_log(&org.id, 50).await.unwrap();
    assert!(
        log.iter()
            .any(|e| e.action == "member.joined" && e.actor == bob),
        "{log:?}"
    );
    assert_eq!(
        w.accounts.role_of(&org.id, &owner.id).await.unwrap(),
        Some(Role::Owner)
    );
}

fn masked(v: &Value, email: &str) -> String {
    v.to_string().replace(email, "<ADDRESS>")
}

#[tokio::test]
async fn no_answer_tells_whether_an_address_has_an_account() {
    let w = world().await;
    let (existing, _) = verified_user(&w, &fresh("taken", "example.com")).await;
    let nobody = fresh("nobody", "example.com");
    let (owner, owner_s) = verified_user(&w, &fresh("owner", "example.com")).await;
    let org = w.accounts.create_org("Oracle Test", &owner).await.unwrap();

    // Sign-up (API and page).
    let mut answers = vec![];
    for email in [&existing.email, &nobody] {
        let (status, json, headers) = signup(&w, email, PASSWORD).await;
        assert!(headers.get("set-cookie").is_none());
        answers.push((status, masked(&json, email)));
    }
    assert_eq!(answers[0], answers[1], "sign-up API answers differ");
    assert_eq!(answers[0].0, StatusCode::ACCEPTED);
    let mut pages = vec![];
    for email in [&existing.email, &nobody] {
        let (status, html, headers) =
            public_form(&w, "/signup", &[("email", email), ("password", PASSWORD)]).await;
        assert!(headers.get("set-cookie").is_none(), "{headers:?}");
        pages.push((status, html.replace(email.as_str(), "<ADDRESS>")));
    }
    assert_eq!(pages[0], pages[1], "sign-up pages differ");
    assert_eq!(pages[0].0, StatusCode::OK);
    // The existing account's owner is told by mail, once per sign-up. The new address
    // gets a link, then (its account exists by the second sign-up) an "already have"
    // mail. Mail goes out in the background, so the two may arrive in either order.
    let existing_got = first_subjects(&existing.email, 2).await;
    assert!(
        existing_got.iter().all(|s| s.contains("already have")),
        "{existing_got:?}"
    );
    let nobody_got = first_subjects(&nobody, 2).await;
    assert!(
        nobody_got.iter().any(|s| s.contains("Confirm"))
            && nobody_got.iter().any(|s| s.contains("already have")),
        "{nobody_got:?}"
    );

    // Sign-in with a wrong password vs an unknown address (API and page).
    let mut answers = vec![];
    for email in [&existing.email, &fresh("ghost", "example.com")] {
        let body = json!({"email": email, "password": "wrong-Password-123x"});
        let (status, json, _) = public_api(&w, "/api/v1/session", body).await;
        answers.push((status, masked(&json, email)));
    }
    assert_eq!(answers[0], answers[1], "sign-in API answers differ");
    assert_eq!(answers[0].0, StatusCode::UNAUTHORIZED);
    let mut pages = vec![];
    for email in [existing.email.clone(), fresh("ghost", "example.com")] {
        let (status, html, _) = public_form(
            &w,
            "/signin",
            &[("email", &email), ("password", "wrong-Password-123x")],
        )
        .await;
        pages.push((status, html.replace(email.as_str(), "<ADDRESS>")));
    }
    assert_eq!(pages[0], pages[1], "sign-in pages differ");

    // Invitations (API and page): nobody is added, whatever the address.
    let mut answers = vec![];
    for email in [&existing.email, &fresh("invitee", "example.com")] {
        let (status, json, _) = invite(&w, &org.id, &owner_s, email, "member").await;
        answers.push((status, masked(&json, email)));
    }
    assert_eq!(answers[0], answers[1], "invite API answers differ");
    assert_eq!(
        w.accounts.role_of(&org.id, &existing.id).await.unwrap(),
        None,
        "added without accepting"
    );
    let mut pages = vec![];
    for email in [existing.email.clone(), fresh("invitee", "example.com")] {
        let body = format!(
            "csrf={}&email={}&role=member",
            owner_s.1,
            url::form_urlencoded::byte_serialize(email.as_bytes()).collect::<String>()
        );
        let req = Request::builder()
            .method("POST")
            .uri(format!("/orgs/{}/members/invite", org.id))
            .header("cookie", format!("portshift_session={}", owner_s.0))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        let (status, html, _) = send(&w.state, req).await;
        let html = String::from_utf8_lossy(&html).into_owned();
        let notice = html
            .split("class=\"notice")
            .nth(1)
            .map(|n| {
                n.split("</p>")
                    .next()
                    .unwrap_or_default()
                    .replace(email.as_str(), "<ADDRESS>")
            })
            .unwrap_or_default();
        pages.push((status, notice));
    }
    assert_eq!(pages[0], pages[1], "invite page notices differ");
    assert_eq!(pages[0].0, StatusCode::OK);

    // Password reset requests.
    let mut answers = vec![];
    for email in [&existing.email, &fresh("ghost", "example.com")] {
        let (status, json, _) = request_reset(&w, email).await;
        answers.push((status, masked(&json, email)));
    }
    assert_eq!(answers[0], answers[1], "reset answers differ");
    assert_eq!(answers[0].0, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn password_change_and_reset_end_the_other_sessions() {
    let w = world().await;
    let email = fresh("pat", "example.com");
    let (user, a) = verified_user(&w, &email).await;
    let b = sign_in(&w, &email, PASSWORD).await.unwrap();
    let new_password = "marmalade-Comet-Harbour-8";

    let (status, json, _) = change_password(&w, &a, "not-the-Password-1", new_password).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{json}");
    assert!(
        json["error"]["fields"]["current_password"].is_string(),
        "{json}"
    );
    let (status, _, _) = api(&w, "GET", "/api/v1/me", Some(&b), None).await;
    assert_eq!(status, StatusCode::OK, "a refused change ends nothing");

    let (status, json, _) = change_password(&w, &a, PASSWORD, new_password).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["other_sessions_ended"], 1);
    let (status, _, _) = api(&w, "GET", "/api/v1/me", Some(&b), None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the other session survived"
    );
    let (status, _, _) = api(&w, "GET", "/api/v1/me", Some(&a), None).await;
    assert_eq!(status, StatusCode::OK, "the changing session ended");
    assert!(sign_in(&w, &email, PASSWORD).await.is_none());
    assert!(sign_in(&w, &email, new_password).await.is_some());

    // Reset by e-mail link.
    let (status, _, _) = request_reset(&w, &email).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mail = nth_mail(&email, 1).await;
    assert!(mail.subject.contains("Reset"), "{}", mail.subject);
    let token = token_in(&mail, "/reset-password/confirm");
    assert!(
        !contains(&db_bytes(w.tmp.path()), &token),
        "raw reset token stored"
    );
    let (status, json, _) = reset_confirm(&w, &token, "short").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(json["error"]["fields"]["password"].is_string(), "{json}");
    let reset_password = "lantern-Quiet-Meadow-31";
    let (status, json, _) = reset_confirm(&w, &token, reset_password).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let (status, _, _) = api(&w, "GET", "/api/v1/me", Some(&a), None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a session survived the reset"
    );
    let (status, json, _) = reset_confirm(&w, &token, "another-Fresh-Pass-55").await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the link worked twice"
    );
    assert!(json["error"]["fields"]["token"].is_string(), "{json}");
    assert!(sign_in(&w, &email, reset_password).await.is_some());

    // An expired link does nothing.
    let stale = "stale-token-for-the-expiry-check";
    w.accounts
        .create_email_token(
            &ui::auth::sha256_hex(stale.as_bytes()),
            &user.id,
            TokenPurpose::Reset,
            chrono::Utc::now().timestamp_millis() - 1,
        )
        .await
        .unwrap();
    let (status, _, _) = reset_confirm(&w, stale, "expired-Link-Try-66").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(sign_in(&w, &email, reset_password).await.is_some());
}

#[tokio::test]
async fn a_user_downloads_their_data_and_deleting_them_leaves_no_address_behind() {
    let w = world().await;
    let email = fresh("erin", "example.com");
    let (erin, s) = verified_user(&w, &email).await;
    let (boss, boss_s) = verified_user(&w, &fresh("boss", "example.com")).await;
    let shared = w.accounts.create_org("Shared Ltd", &boss).await.unwrap();
    w.accounts
        .set_role(&shared.id, &erin.id, Role::Admin)
        .await
        .unwrap();
    let own = w.accounts.create_org("Erin Solo", &erin).await.unwrap();
    // Records naming her: audit events by and about her, a job she started, an
    // invitation she sent and one addressed to her.
    w.accounts
        .audit(&shared.id, &email, "sign_in", "")
        .await
        .unwrap();
    w.accounts
        .audit(
            &shared.id,
            &boss.email,
            "member.role_changed",
            &format!("{email}: member → admin"),
        )
        .await
        .unwrap();
    let job = test_support::jobs::stored_job(
        &w.store,
        &shared.id,
        &email,
        "s3://bucket/prefix?region=eu-west-1",
    )
    .await;
    let guest = fresh("guest", "example.com");
    let (status, _, _) = invite(&w, &shared.id, &s, &guest, "member").await;
    assert_eq!(status, StatusCode::CREATED);
    w.accounts
        .invite(&own.id, &email, Role::Member, &boss.email)
        .await
        .unwrap();

    // Access: everything about her in one JSON document.
    let (status, data, _) = api(&w, "GET", "/api/v1/me/data", Some(&s), None).await;
    assert_eq!(status, StatusCode::OK, "{data}");
    assert_eq!(data["account"]["email"], email);
    assert_eq!(data["memberships"].as_array().unwrap().len(), 2, "{data}");
    assert_eq!(data["jobs_started"][0]["id"], job.as_str(), "{data}");
    assert!(
        data["audit_events"].as_array().unwrap().len() >= 3,
        "{data}"
    );
    assert!(data["invitations"].as_array().unwrap().len() >= 2, "{data}");
    assert!(
        !data.to_string().contains("$argon2id$"),
        "the password hash is not handed out"
    );
    // The page's download link answers the same document.
    let req = Request::builder()
        .uri("/account/data.json")
        .header("cookie", format!("portshift_session={}", s.0))
        .body(Body::empty())
        .unwrap();
    let (status, bytes, headers) = send(&w.state, req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).unwrap()["account"]["email"],
        email
    );

    // The last owner of an organisation must hand it over or delete it first.
    let (status, json, _) = delete_me(&w, &s, PASSWORD).await;
    assert_eq!(status, StatusCode::CONFLICT, "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Erin Solo"),
        "{json}"
    );
    let (status, _, _) = call(&w, "DELETE", &format!("/api/v1/orgs/{}", own.id), &s).await;
    assert_eq!(status, StatusCode::OK);
    let (status, json, _) = delete_me(&w, &s, "wrong-Password-000").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{json}");
    let (status, json, headers) = delete_me(&w, &s, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert!(
        headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );

    // Gone: no session, no sign-in, and not a byte of the address in the database.
    let (status, _, _) = api(&w, "GET", "/api/v1/me", Some(&s), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(sign_in(&w, &email, PASSWORD).await.is_none());
    let bytes = db_bytes(w.tmp.path());
    assert!(bytes.len() > 10_000, "read the database");
    assert!(
        contains(&bytes, &boss.email),
        "positive control: other addresses are found"
    );
    assert!(
        !contains(&bytes, &email),
        "the erased address is still in the database file or WAL"
    );
    let local = email.split('@').next().unwrap();
    assert!(
        !contains(&bytes, local),
        "part of the erased address is still stored"
    );

    // What must outlive her carries the pseudonym.
    let alias = pipeline::accounts::pseudonym(&erin.id);
    let log = w.accounts.audit_log(&shared.id, 100).await.unwrap();
    assert!(
        log.iter()
            .any(|e| e.actor == alias && e.action == "sign_in"),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|e| e.detail.contains(&alias) && e.action == "member.role_changed"),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|e| e.actor == alias && e.action == "account.deleted"),
        "{log:?}"
    );
    assert_eq!(w.store.job(&job).await.unwrap().started_by, alias);
    let members_path = format!("/api/v1/orgs/{}/members", shared.id);
    let (_, members, _) = call(&w, "GET", &members_path, &boss_s).await;
    assert!(!members.to_string().contains(&email), "{members}");
    assert!(
        members.to_string().contains(&alias),
        "invitations she sent keep the pseudonym: {members}"
    );
}

/// The relay is spoken to over TLS unless the operator named a loopback relay with
/// tls=none: a relay without STARTTLS gets no mail at all.
#[tokio::test]
async fn mail_is_not_sent_in_clear_unless_asked_for_on_loopback() {
    let url = env_or_fail("PORTSHIFT_TEST_SMTP_URL");
    let required = url.replace("?tls=none", "");
    let m = Mailer::new(&mail_config(&required)).unwrap();
    let to = fresh("tls", "example.com");
    let err = m
        .send(&to, "must not arrive", "secret link".into())
        .await
        .expect_err("sent without TLS");
    assert!(err.to_string().contains("SMTP relay"), "{err}");
    // Positive control: the same relay with the operator's explicit tls=none.
    let m = Mailer::new(&mail_config(&url)).unwrap();
    m.send(&to, "arrives", "hello".into()).await.unwrap();
    let got = nth_mail(&to, 1).await;
    assert_eq!(got.subject, "arrives");
    assert_eq!(
        mails_to(&to).len(),
        1,
        "the first attempt delivered something"
    );
}
