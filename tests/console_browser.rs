//! The web console in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver + fantoccini) against a real `portshift serve` process, which starts a
//! real `portshift worker` process per job, exporting from the Chorus simulator to the
//! local S3 server. Covers sign-up (with a refused weak password) confirmed through the
//! link the console mailed (read from the SMTP server's saved mails), creating an
//! organisation, inviting a member who accepts after confirming their address, an export form with a field error, the job page
//! reaching "finished" without a reload, job history, the audit trail, and an invited
//! member who cannot open admin pages. Screenshots go to `target/screenshots/`.
//!
//! Canary: the Chorus token and S3 secret typed into the form must not appear in the
//! server's data folder (SQLite database and WAL, JetStream store, worker logs), the
//! server's log, or the worker's `/proc/<pid>/cmdline` and `environ`.
//!
//! A second run covers what the security page promises about people's data: the
//! settings page shows the 14-day retention default and the date of the oldest kept
//! job; an owner subscribes on Stripe's own payment page (the local Stripe) and the plan
//! changes when its signed webhook arrives; deleting the account is refused while the
//! user is the organisation's last owner, then works once the organisation is deleted,
//! and the address can no longer sign in.
//!
//! Needs `chromium` and `chromium-driver` (deploy/local/install.sh --with-browser; the
//! test fails with that advice when they are missing).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Killed, env_or_fail, files_containing, free_port, fresh_bucket, origin, s3_client, s3_dest,
    start_sim,
};
use fantoccini::{Client, ClientBuilder, Locator};

async fn object_count(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> usize {
    let out = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(format!("{prefix}/"))
        .send()
        .await
        .unwrap();
    out.contents().len()
}

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).unwrap();
}

/// Starts `portshift serve` on a free port, letting console jobs reach `allow` (the
/// simulator and the local S3 server are loopback plain-HTTP origins, which console
/// jobs may not reach by default); returns the process and its base URL.
fn start_console(data: &Path, log: &Path, allow: &[String]) -> (Killed, String) {
    start_console_with(data, log, allow, &[], &[])
}

/// [`start_console`] with extra flags and environment (the operator's Stripe settings).
fn start_console_with(
    data: &Path,
    log: &Path,
    allow: &[String],
    args: &[String],
    env: &[(&str, String)],
) -> (Killed, String) {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portshift"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
    for origin in allow {
        cmd.args(["--allow-origin", origin]);
    }
    // The simulator has no rate limit: a budget that never slows the test.
    cmd.args(["--chorus-rate", "10000", "--chorus-burst", "10000"])
        .arg("--data-dir")
        .arg(data)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORTSHIFT_LOG", "debug")
        .env("PORTSHIFT_SMTP_URL", env_or_fail("PORTSHIFT_TEST_SMTP_URL"))
        .env("PORTSHIFT_MAIL_FROM", "portshift <no-reply@portshift.test>")
        .env("PORTSHIFT_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap());
    if let Ok(bin) = std::env::var("PORTSHIFT_NATS_SERVER_BIN") {
        cmd.env("PORTSHIFT_NATS_SERVER_BIN", bin);
    }
    let child = Killed(cmd.spawn().expect("start portshift serve"));
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("listening on")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the console did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, url)
}

async fn start_browser(profile: &Path) -> (Killed, Client) {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: install Debian's {package} (deploy/local/install.sh --with-browser, which scripts/test runs)"
        );
    }
    // fantoccini's rustls needs a process-wide provider; choose ring as connect_nats does.
    let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let driver = Killed(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match ClientBuilder::rustls()
            .expect("rustls")
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("could not start a Chromium session: {e}"),
        }
    };
    (driver, client)
}

async fn fill(c: &Client, css: &str, value: &str) {
    let e = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn set_value(c: &Client, name: &str, value: &str) {
    c.execute(
        "document.querySelector('[name=\"' + arguments[0] + '\"]').value = arguments[1];",
        vec![name.into(), value.into()],
    )
    .await
    .unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Waits up to 10 s for an element matching `css` to appear (a page loaded after a click).
async fn wait_for(c: &Client, css: &str) {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
}

/// The text of the first element matching `css`, waiting up to 10 s for it to appear.
async fn text(c: &Client, css: &str) -> String {
    match c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
    {
        // The live view may replace the element between finding and reading it
        // (a stale reference): read it again, found afresh.
        Ok(e) => match e.text().await {
            Ok(t) => t,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                c.wait()
                    .at_most(Duration::from_secs(10))
                    .for_element(Locator::Css(css))
                    .await
                    .unwrap_or_else(|e| panic!("{css}: {e}"))
                    .text()
                    .await
                    .unwrap_or_else(|e| panic!("{css}: {e}"))
            }
        },
        Err(e) => {
            let url = c
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            let page = c.source().await.unwrap_or_default();
            panic!("{css} not found on {url}: {e}\n{page}")
        }
    }
}

/// Waits for the console's mail to `to` whose subject contains `subject` (the SMTP
/// server saves each message as a file) and returns the link in it starting with `base`.
async fn link_in_mail(to: &str, subject: &str, base: &str) -> String {
    let dir = PathBuf::from(env_or_fail("PORTSHIFT_TEST_SMTP_DIR"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort();
        for f in files {
            let raw = std::fs::read_to_string(&f).unwrap_or_default();
            if !raw.lines().any(|l| l == format!("X-Envelope-To: {to}"))
                || !raw
                    .lines()
                    .any(|l| l.starts_with("Subject:") && l.contains(subject))
            {
                continue;
            }
            // Undo quoted-printable soft breaks and '=' escapes (links are ASCII).
            let body = raw.replace("=\r\n", "").replace("=3D", "=");
            if let Some(at) = body.find(base) {
                return body[at..]
                    .split(|c: char| c.is_whitespace())
                    .next()
                    .unwrap()
                    .to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no mail \"{subject}\" to {to} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Confirms the address through the mailed link, with the sign-up password.
async fn confirm_address(c: &Client, base: &str, email: &str, password: &str) {
    text(c, "#check-inbox").await;
    let link = link_in_mail(email, "Confirm", base).await;
    assert!(link.contains("/verify-email?token="), "{link}");
    c.goto(&link).await.unwrap();
    fill(c, "input[name=password]", password).await;
    click(c, "#confirm").await;
}

async fn sign_up(c: &Client, base: &str, email: &str, password: &str) {
    c.goto(&format!("{base}/signup")).await.unwrap();
    fill(c, "input[name=email]", email).await;
    fill(c, "input[name=password]", password).await;
    click(c, "#signup").await;
}

async fn sign_out(c: &Client) {
    click(c, "header form[action='/signout'] button").await;
    wait_for(c, "#signin").await;
}

/// Pids of `portshift worker` children of `parent`.
fn workers_of(parent: u32) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmd.split(|b| *b == 0).any(|a| a == b"worker") {
                out.push(pid);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("console");
    let server_log = tmp.path().join("console.log");
    let canary_token = format!("CANARY-UI-CHORUS-{}", uuid::Uuid::new_v4().simple());
    let s3_secret = env_or_fail("PORTSHIFT_TEST_S3_SECRET_KEY");

    let mut sim_cfg = stages::chorus::SimConfig::demo(24, 11);
    sim_cfg.token = canary_token.clone();
    sim_cfg.sizes.min = 16 * 1024;
    sim_cfg.sizes.max = 1024 * 1024;
    let sim = start_sim(sim_cfg).await;
    let s3 = s3_client().await;
    let bucket = fresh_bucket(&s3).await;

    let allow = [
        origin(sim.api_url.as_str()),
        origin(sim.media_url.as_str()),
        origin(&env_or_fail("PORTSHIFT_TEST_S3_ENDPOINT")),
    ];
    let (server, base) = start_console(&data, &server_log, &allow);
    let (_driver, c) = start_browser(&tmp.path().join("chromium-profile")).await;
    let owner = format!("owner-{}@example.com", uuid::Uuid::new_v4().simple());
    let member = format!("member-{}@example.com", uuid::Uuid::new_v4().simple());

    // Sign up: a weak password is refused next to its field, then a strong one works.
    sign_up(&c, &base, &owner, "password123456").await;
    let err = text(&c, "#error-password").await;
    assert!(err.contains("breached"), "{err}");
    shot(&c, "01-signup-weak-password").await;
    fill(&c, "input[name=password]", "tangerine-orbit-Violin-42").await;
    click(&c, "#signup").await;
    shot(&c, "01b-signup-check-inbox").await;
    confirm_address(&c, &base, &owner, "tangerine-orbit-Violin-42").await;
    wait_for(&c, "#create-org").await;

    // Create an organisation.
    fill(&c, "input[name=name]", "Acme Recordings").await;
    click(&c, "#create-org").await;
    wait_for(&c, "#jobs").await;
    let url = c.current_url().await.unwrap();
    let org_id = url.path().split('/').nth(2).unwrap().to_string();

    // Invite a member.
    c.goto(&format!("{base}/orgs/{org_id}/members"))
        .await
        .unwrap();
    fill(&c, "input[name=email]", &member).await;
    click(&c, "#invite").await;
    let notice = text(&c, "#notice").await;
    assert!(notice.contains("they join once they accept"), "{notice}");
    assert!(text(&c, "#members").await.contains(&member));
    link_in_mail(&member, "invited", &base).await;
    shot(&c, "02-members-invited").await;

    // The export form: a field error first, shown next to the field.
    c.goto(&format!("{base}/orgs/{org_id}/exports/new"))
        .await
        .unwrap();
    let dest = s3_dest(&bucket, "console");
    let key_id = env_or_fail("PORTSHIFT_TEST_S3_ACCESS_KEY");
    fill(&c, "input[name=chorus_url]", sim.api_url.as_str()).await;
    fill(&c, "input[name=chorus_token]", &canary_token).await;
    set_value(&c, "from", "2024-01-01").await;
    set_value(&c, "to", "2023-12-31").await;
    fill(&c, "input[name=destination]", &dest).await;
    fill(&c, "input[name=s3_access_key_id]", &key_id).await;
    fill(&c, "input[name=s3_secret_access_key]", &s3_secret).await;
    click(&c, "#start-export").await;
    let err = text(&c, "#error-to").await;
    assert!(err.contains("must not be before"), "{err}");
    let page = c.source().await.unwrap();
    assert!(
        !page.contains(&canary_token) && !page.contains(&s3_secret),
        "the form echoed a credential"
    );
    shot(&c, "03-export-form-field-error").await;

    // Now a valid export: secrets typed again (never echoed back).
    fill(&c, "input[name=chorus_token]", &canary_token).await;
    set_value(&c, "to", "2024-12-31").await;
    fill(&c, "input[name=s3_secret_access_key]", &s3_secret).await;
    fill(&c, "input[name=s3_access_key_id]", &key_id).await;
    click(&c, "#start-export").await;
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#live"))
        .await
        .unwrap();
    let job_url = c.current_url().await.unwrap();
    let job_id = job_url.path().rsplit('/').next().unwrap().to_string();
    // Marks this page load: a reload would lose the marker.
    c.execute("window.__portshiftNoReload = 42;", vec![])
        .await
        .unwrap();
    shot(&c, "04-job-running").await;

    // While it runs: the worker's argv and environment hold no credential.
    let server_pid = server.0.id();
    let mut seen_worker = false;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        for pid in workers_of(server_pid) {
            for what in ["cmdline", "environ"] {
                if let Ok(bytes) = std::fs::read(format!("/proc/{pid}/{what}")) {
                    seen_worker = true;
                    for secret in [&canary_token, &s3_secret] {
                        assert!(
                            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                            "a credential is in the worker's /proc/{pid}/{what}"
                        );
                    }
                }
            }
        }
        let status = text(&c, "#job-status").await;
        if status == "finished" {
            break;
        }
        assert!(
            !matches!(
                status.as_str(),
                "failed" | "finished_with_failures" | "needs_credentials"
            ),
            "job ended {status}: {}\nserver log:\n{}",
            text(&c, "#live").await,
            std::fs::read_to_string(&server_log).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "the job did not finish in time: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_worker, "no worker process was observed");
    let marker = c
        .execute("return window.__portshiftNoReload;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, serde_json::json!(42), "the job page reloaded");
    let manifest = text(&c, "#manifest-sha").await;
    assert_eq!(manifest.len(), 64, "manifest SHA-256 shown: {manifest:?}");
    assert!(
        text(&c, "#stage-upload .items")
            .await
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(
        c.find(Locator::Css("#stage-upload svg.chart rect"))
            .await
            .is_ok()
    );
    shot(&c, "05-job-finished").await;
    assert!(
        object_count(&s3, &bucket, "console").await > 0,
        "nothing reached the S3 bucket"
    );

    // Job history lists it.
    c.goto(&format!("{base}/orgs/{org_id}/jobs")).await.unwrap();
    let history = text(&c, "#jobs").await;
    assert!(
        history.contains(&job_id) && history.contains("finished"),
        "{history}"
    );
    shot(&c, "06-job-history").await;
    c.goto(&format!("{base}/orgs/{org_id}/jobs?status=failed"))
        .await
        .unwrap();
    assert!(
        !text(&c, "#jobs").await.contains(&job_id),
        "the status filter let it through"
    );

    // The audit trail has the export and the invitation.
    c.goto(&format!("{base}/orgs/{org_id}/audit"))
        .await
        .unwrap();
    let audit = text(&c, "#audit").await;
    assert!(
        audit.contains("export.started") && audit.contains("member.invited"),
        "{audit}"
    );
    shot(&c, "07-audit-trail").await;

    // A nightly schedule from the console: a bad cron is shown next to its field, then
    // the server-side references (env:, aws:default) are refused next to theirs: a
    // console user may not borrow the server's environment or identity.
    c.goto(&format!("{base}/orgs/{org_id}/schedules"))
        .await
        .unwrap();
    // Reference fields are not echoed after an error, so they are typed again.
    let refs = [
        ("chorus_token_ref", "env:CHORUS_API_TOKEN"),
        ("s3_ref", "aws:default"),
    ];
    for (name, value) in [
        ("name", "Nightly archive"),
        ("cron", "every night"),
        ("timezone", "Europe/Helsinki"),
        ("destination", "s3://archive/chorus?region=eu-west-1"),
    ]
    .into_iter()
    .chain(refs)
    {
        fill(&c, &format!("#new-schedule input[name={name}]"), value).await;
    }
    set_value(&c, "start", "2024-01-01").await;
    click(&c, "#create-schedule").await;
    assert!(text(&c, "#error-cron").await.contains("cron"));
    for (name, value) in [("cron", "0 2 * * *")].into_iter().chain(refs) {
        fill(&c, &format!("#new-schedule input[name={name}]"), value).await;
    }
    click(&c, "#create-schedule").await;
    let refused = text(&c, "#error-chorus_token_ref").await;
    assert!(refused.contains("cross-account role"), "{refused}");
    assert!(text(&c, "#error-s3_ref").await.contains("aws:default"));
    shot(&c, "09-schedules").await;

    // The invited member signs up, sees the organisation and the job, but not admin pages.
    sign_out(&c).await;
    sign_up(&c, &base, &member, "lantern-Quartz-meadow-77").await;
    confirm_address(&c, &base, &member, "lantern-Quartz-meadow-77").await;
    // Confirmed: the invitation is offered, and accepting it makes the membership.
    assert!(text(&c, "#invitations").await.contains("Acme Recordings"));
    shot(&c, "08a-member-invitation").await;
    click(&c, "#invitations button.accept").await;
    wait_for(&c, "#jobs").await;
    c.goto(&format!("{base}/orgs")).await.unwrap();
    assert!(text(&c, "#orgs").await.contains("Acme Recordings"));
    click(&c, "a.org-link").await;
    wait_for(&c, "#jobs").await;
    assert!(text(&c, "#jobs").await.contains(&job_id));
    let nav = text(&c, "header.top nav").await;
    assert!(
        !nav.contains("Members") && !nav.contains("Settings") && !nav.contains("Audit"),
        "{nav}"
    );
    for page in ["members", "settings", "audit", "schedules"] {
        c.goto(&format!("{base}/orgs/{org_id}/{page}"))
            .await
            .unwrap();
        let e = text(&c, "#error").await;
        assert!(e.contains("Your role (member) cannot"), "{page}: {e}");
    }
    shot(&c, "08-member-refused-settings").await;
    c.close().await.unwrap();

    // Canary: nothing the console or the worker persisted or logged holds a credential.
    drop(server);
    for secret in [&canary_token, &s3_secret] {
        let hits = files_containing(tmp.path(), secret.as_bytes());
        let hits: Vec<_> = hits
            .into_iter()
            .filter(|p| !p.starts_with(tmp.path().join("chromium-profile")))
            .collect();
        assert!(
            hits.is_empty(),
            "a credential was persisted or logged in {hits:?}"
        );
    }
    let worker_logs = std::fs::read_dir(data.join("logs")).unwrap().count();
    assert!(worker_logs >= 1, "the worker's log was searched");
}

/// Creates a paid plan's price in the local Stripe (the operator's setup).
async fn stripe_price(stripe: &str, key: &str) -> String {
    let id = format!(
        "price_team_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let r = reqwest::Client::new()
        .post(format!("{stripe}/v1/plans"))
        .basic_auth(key, Some(""))
        .form(&[
            ("id", id.as_str()),
            ("amount", "2900"),
            ("currency", "eur"),
            ("interval", "month"),
            ("nickname", "team"),
            ("product[name]", "portshift team"),
        ])
        .send()
        .await
        .expect("reach the local Stripe (PORTSHIFT_TEST_STRIPE_URL)");
    assert!(
        r.status().is_success(),
        "create the Stripe price: {}",
        r.status()
    );
    id
}

/// Reloads until the element's text contains `want` (a webhook changes the page's data).
async fn eventually_text(c: &Client, css: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = text(c, css).await;
        if t.contains(want) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{css} still says {t:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.refresh().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_billing_and_erasure_in_a_real_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("console");
    let server_log = tmp.path().join("console.log");
    let stripe = env_or_fail("PORTSHIFT_TEST_STRIPE_URL");
    let key = "sk_test_portshift_browser";
    let hook_secret = format!("whsec_{}", uuid::Uuid::new_v4().simple());
    let price = stripe_price(&stripe, key).await;
    let (server, base) = start_console_with(
        &data,
        &server_log,
        &[],
        &[
            "--stripe-api-url".into(),
            stripe.clone(),
            "--stripe-price-team".into(),
            price.clone(),
            // Offered on the plan card; this test subscribes to team only.
            "--stripe-price-enterprise".into(),
            "price_enterprise_not_bought".into(),
        ],
        &[
            ("PORTSHIFT_STRIPE_SECRET_KEY", key.to_string()),
            ("PORTSHIFT_STRIPE_WEBHOOK_SECRET", hook_secret.clone()),
        ],
    );
    // The operator points Stripe's webhooks at the console.
    let hook = format!("browser-{}", uuid::Uuid::new_v4().simple());
    let r = reqwest::Client::new()
        .post(format!("{stripe}/_config/webhooks/{hook}"))
        .form(&[
            ("url", format!("{base}/webhooks/stripe")),
            ("secret", hook_secret),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (_driver, c) = start_browser(&tmp.path().join("chromium-profile")).await;
    let owner = format!("erase-owner-{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "tangerine-orbit-Violin-42";
    sign_up(&c, &base, &owner, password).await;
    confirm_address(&c, &base, &owner, password).await;
    wait_for(&c, "#create-org").await;
    let org_name = "Erasure Browser Ltd";
    fill(&c, "input[name=name]", org_name).await;
    click(&c, "#create-org").await;
    wait_for(&c, "#jobs").await;
    let org_id = c
        .current_url()
        .await
        .unwrap()
        .path()
        .split('/')
        .nth(2)
        .unwrap()
        .to_string();

    // Settings: the 14-day default, and no job kept yet.
    let settings = format!("{base}/orgs/{org_id}/settings");
    c.goto(&settings).await.unwrap();
    let period = text(&c, "#retention-period").await;
    assert!(period.contains("kept 14 days"), "{period}");
    assert_eq!(
        text(&c, "#oldest-job").await,
        "No jobs are kept at the moment."
    );
    // A job from three days ago (written to the console's store as a worker would).
    let store = pipeline::store::JobStore::open_sqlite_in(&data)
        .await
        .unwrap();
    let job = test_support::jobs::stored_job(&store, &org_id, &owner, "file:///tmp/x").await;
    let three_days_ago = chrono::Utc::now() - chrono::Duration::days(3);
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        data.join("portshift.sqlite3").display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE jobs SET created_ms = ?1, updated_ms = ?1 WHERE id = ?2")
        .bind(three_days_ago.timestamp_millis())
        .bind(job.to_string())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    c.refresh().await.unwrap();
    let oldest = text(&c, "#oldest-job").await;
    assert_eq!(
        oldest,
        format!(
            "Oldest job kept: started {}.",
            three_days_ago.format("%Y-%m-%d")
        )
    );
    assert!(text(&c, "#billing-plan").await.contains("trial"));
    shot(&c, "10-settings-retention-and-billing").await;

    // Subscribe: our button leads to Stripe's page; the card is typed there.
    click(&c, "#billing-checkout button").await;
    wait_for(&c, "input[name=number]").await;
    let pay = c.current_url().await.unwrap();
    assert!(
        pay.as_str().starts_with(&stripe),
        "the card form is Stripe's: {pay}"
    );
    shot(&c, "11-stripe-checkout").await;
    click(&c, "button[type=submit]").await;
    wait_for(&c, "#billing-plan").await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .as_str()
            .starts_with(&settings)
    );
    eventually_text(&c, "#billing-plan", "team").await;
    shot(&c, "12-settings-team-plan").await;

    // Erasure: the last owner is refused, with what to do.
    c.goto(&format!("{base}/account")).await.unwrap();
    fill(&c, "input[name=password]", password).await;
    click(&c, "#delete-account").await;
    // The click returns before the browser has the answer: wait for the refusal itself
    // (the account page also mentions "last owner" in its help text).
    let refused = text(&c, "#error").await;
    assert!(
        refused.contains("last owner of") && refused.contains(org_name),
        "{refused}"
    );
    shot(&c, "13-delete-account-refused").await;
    // Delete the organisation first (its name confirms), then the account.
    c.goto(&settings).await.unwrap();
    fill(&c, "#danger input[name=confirm]", org_name).await;
    click(&c, "#danger button").await;
    wait_for(&c, "#create-org").await;
    c.goto(&format!("{base}/account")).await.unwrap();
    fill(&c, "input[name=password]", password).await;
    click(&c, "#delete-account").await;
    wait_for(&c, "#signin").await;
    shot(&c, "14-account-deleted").await;
    // The address no longer signs in, and the organisation's job is gone.
    fill(&c, "input[name=email]", &owner).await;
    fill(&c, "input[name=password]", password).await;
    click(&c, "#signin").await;
    let answer = text(&c, "#error").await;
    assert!(
        answer.contains("Wrong e-mail address or password"),
        "{answer}"
    );
    assert!(matches!(
        store.job(&job).await,
        Err(pipeline::store::StoreError::NoSuchJob(_))
    ));
    let _ = reqwest::Client::new()
        .delete(format!("{stripe}/_config/webhooks/{hook}"))
        .send()
        .await;
    let _ = c.close().await;
    drop(server);
}
