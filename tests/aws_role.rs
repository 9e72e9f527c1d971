//! Cross-account roles against moto's STS and Secrets Manager (the real
//! `portshift scheduler` binary, its real worker processes). A customer keeps their
//! Chorus token in their own Secrets Manager and lets portshift assume a role with
//! their organisation's ExternalId:
//! - the schedule runs and exports, reading the token through the role; the schedule
//!   row holds only ARNs, and neither the scheduler's nor the worker's log holds the token;
//! - the run's manifest is signed with the operator's key (handed to the worker in the
//!   role grant) and Debian's `minisign -Vm` accepts it;
//! - another organisation naming the same role (the confused deputy) gets its own
//!   ExternalId sent, is refused, and its run fails with a message saying what to fix.
//!
//! moto does not enforce a role's trust policy or its ExternalId. So the test puts a
//! small proxy in front of moto that records every AssumeRole request and enforces the
//! one trust-policy condition under test (`sts:ExternalId` equals the customer
//! organisation's ExternalId) the way AWS answers a failed condition (403
//! AccessDenied). What is asserted is portshift's side: which ExternalId it sends for
//! which organisation, and how it reports a refusal.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use common::*;
use pipeline::schedules::{CredentialRefs, ScheduleRun, ScheduleTemplate};
use pipeline::store::JobStore;

const ROLE: &str = "arn:aws:iam::123456789012:role/portshift-export";

/// One AssumeRole request as the proxy saw it: (role ARN, ExternalId).
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A proxy to moto that records AssumeRole calls and refuses those whose ExternalId is
/// not `trusted` for the role (AWS's trust-policy check, which moto lacks).
async fn sts_proxy(moto: String, trusted: Arc<Mutex<Option<String>>>) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (seen, trusted, http, moto) = (s.clone(), trusted.clone(), http.clone(), moto.clone());
            async move {
                let form: Vec<(String, String)> = url::form_urlencoded::parse(&body)
                    .into_owned()
                    .collect();
                let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                if get("Action").as_deref() == Some("AssumeRole") {
                    let role = get("RoleArn").unwrap_or_default();
                    let external_id = get("ExternalId");
                    seen.lock().unwrap().push((role.clone(), external_id.clone()));
                    let allowed = trusted.lock().unwrap().clone();
                    if role == ROLE && external_id != allowed {
                        let xml = format!(
                            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
                             <Type>Sender</Type><Code>AccessDenied</Code><Message>User: \
                             arn:aws:iam::111111111111:user/portshift is not authorized to perform: \
                             sts:AssumeRole on resource: {role}</Message></Error>\
                             <RequestId>proxy</RequestId></ErrorResponse>"
                        );
                        return (StatusCode::FORBIDDEN, [("content-type", "text/xml")], xml.into_bytes())
                            .into_response();
                    }
                }
                let mut req = http.request(method, format!("{moto}{uri}"));
                for (name, value) in &headers {
                    if name != "host" && name != "content-length" {
                        req = req.header(name, value);
                    }
                }
                let res = req.body(body).send().await.unwrap();
                let status = StatusCode::from_u16(res.status().as_u16()).unwrap();
                let content_type = res
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/octet-stream")
                    .to_string();
                let bytes = res.bytes().await.unwrap().to_vec();
                (status, [("content-type", content_type)], bytes).into_response()
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// A secret in moto's Secrets Manager (account 123456789012); returns its ARN.
async fn create_secret(moto: &str, name: &str, value: &str) -> String {
    let creds =
        aws_sdk_secretsmanager::config::Credentials::new("test", "test", None, None, "test");
    let config = aws_sdk_secretsmanager::config::Builder::new()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("eu-west-1"))
        .endpoint_url(moto)
        .credentials_provider(creds)
        .build();
    let client = aws_sdk_secretsmanager::Client::from_conf(config);
    client
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_string()
}

/// A console organisation named `name` (its id returned), put on the team plan as
/// Stripe's subscription webhook would.
async fn team_org(store: &JobStore, name: &str) -> String {
    let accounts = pipeline::accounts::Accounts::new(store);
    let owner = accounts
        .create_user(
            &format!("{name}-{}@example.com", uuid::Uuid::new_v4().simple()),
            "x",
        )
        .await
        .unwrap();
    let org = accounts.create_org(name, &owner).await.unwrap().id;
    on_team_plan(store, &org).await;
    org
}

async fn first_final_run(store: &JobStore, schedule: &str) -> ScheduleRun {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = store.schedule_runs(schedule, 100).await.unwrap();
        let seen = format!("{runs:?}");
        if let Some(r) = runs
            .into_iter()
            .rev()
            // A slot skipped because the previous run still worked is not a run.
            .find(|r| !matches!(r.status.as_str(), "starting" | "running" | "skipped"))
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no run of {schedule} ended in 60 s: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_schedule_reads_its_chorus_token_through_the_customers_role() {
    let moto = env_or_fail("PORTSHIFT_TEST_MOTO_ENDPOINT");
    let token = format!("CANARY-ROLE-CHORUS-{}", uuid::Uuid::new_v4().simple());
    let mut sim = Harness::sim_config(4, 71);
    sim.token = token.clone();
    let h = Harness::start(sim).await;
    let secret_arn = create_secret(
        &moto,
        &format!("chorus-token-{}", uuid::Uuid::new_v4().simple()),
        &token,
    )
    .await;

    // The customer's organisation and its ExternalId, which their trust policy names.
    // Two organisations of the console, on the team plan (a trial has no schedules).
    let (acme, mallory) = (
        team_org(&h.store, "acme").await,
        team_org(&h.store, "mallory").await,
    );
    let acme_id = h.store.aws_external_id(&acme).await.unwrap();
    let mallory_id = h.store.aws_external_id(&mallory).await.unwrap();
    assert_ne!(
        acme_id, mallory_id,
        "each organisation has its own ExternalId"
    );
    assert_eq!(
        h.store.aws_external_id(&acme).await.unwrap(),
        acme_id,
        "and it is stable"
    );
    let trusted = Arc::new(Mutex::new(Some(acme_id.clone())));
    let (proxy, seen) = sts_proxy(moto.clone(), trusted).await;

    let reference = format!("aws-role:{ROLE}?secret={secret_arn}");
    let refs = CredentialRefs {
        chorus_token: reference.clone(),
        s3: None,
        webhook_secret: None,
        azure: None,
        gcs: None,
    };
    let acme_out = tempfile::tempdir().unwrap();
    let mallory_out = tempfile::tempdir().unwrap();
    let mut schedules = vec![];
    for (org, out) in [(acme.as_str(), &acme_out), (mallory.as_str(), &mallory_out)] {
        let s = h
            .store
            .create_schedule(
                org,
                "nightly",
                "*/2 * * * * *",
                "UTC",
                &ScheduleTemplate {
                    chorus_url: h.sim.api_url.to_string(),
                    kinds: Default::default(),
                    destination: format!("file://{}", out.path().display()),
                    webhook_url: None,
                    lookback_s: 7 * 24 * 3600,
                    options: Default::default(),
                },
                &refs,
                "2024-01-01T00:00:00Z".parse().unwrap(),
                // A console user's schedule: only the customer's role may hold its secret.
                pipeline::TrustLevel::Tenant,
            )
            .await
            .unwrap();
        schedules.push(s);
    }

    // The operator's signing key: role runs sign their manifests like any other run.
    let keys = tempfile::tempdir().unwrap();
    let (sk, pk) = (keys.path().join("k.key"), keys.path().join("k.pub"));
    pipeline::signing::generate(&sk, &pk).unwrap();

    let log = h.tmp.path().join("scheduler.log");
    // `PORTSHIFT_TEST_BIN` when set (a copy kept apart from a shared target folder).
    let exe: std::path::PathBuf = std::env::var_os("PORTSHIFT_TEST_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_portshift").into());
    let mut scheduler = std::process::Command::new(exe)
        .args([
            "scheduler",
            "--tick-secs",
            "1",
            "--aws-endpoint-url",
            &proxy,
        ])
        // What the operator opens for tenants in this test: the simulator (loopback,
        // plain HTTP) and folders under the temporary directory.
        .args([
            "--allow-origin",
            h.sim.api_url.origin().ascii_serialization().as_str(),
        ])
        .args([
            "--allow-origin",
            h.sim.media_url.origin().ascii_serialization().as_str(),
        ])
        .arg("--allow-file-root")
        .arg(std::env::temp_dir())
        .args(["--nats-url", &h.nats.as_ref().unwrap().url()])
        .arg("--data-dir")
        .arg(h.tmp.path())
        .arg("--signing-key")
        .arg(format!("file:{}", sk.display()))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("PORTSHIFT_LOG", "debug")
        // portshift's own AWS principal (moto takes any keys).
        .env("AWS_ACCESS_KEY_ID", "portshift-principal")
        .env("AWS_SECRET_ACCESS_KEY", "portshift-principal-secret")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let acme_run = first_final_run(&h.store, &schedules[0].id).await;
    let mallory_run = first_final_run(&h.store, &schedules[1].id).await;
    // SAFETY: SIGINT to the scheduler this test started.
    unsafe {
        libc::kill(scheduler.id() as i32, libc::SIGINT);
    }
    let status = tokio::task::spawn_blocking(move || scheduler.wait())
        .await
        .unwrap()
        .unwrap();
    let scheduler_log = std::fs::read(&log).unwrap();
    assert!(
        status.success(),
        "{}",
        String::from_utf8_lossy(&scheduler_log)
    );

    // The customer's run exported everything with the token read through the role.
    assert_eq!(acme_run.status, "finished", "{acme_run:?}");
    assert_eq!(acme_run.files, Some(4 * 3));
    let acme_job = acme_run.job_id.clone().unwrap();
    let manifest = format!("portshift-manifest-{acme_job}.txt");
    sha256sum_check_of(acme_out.path(), &manifest);
    // Signed with the operator's key, and Debian's minisign accepts it.
    assert!(
        acme_out.path().join(format!("{manifest}.minisig")).exists(),
        "the role run's manifest is unsigned"
    );
    let (verified, out) = minisign_verify(acme_out.path(), &manifest, &pk);
    assert!(verified, "{out}");
    // The deputy sent the customer's ExternalId for the customer's schedule, and the
    // other organisation's own ExternalId (never the customer's) for theirs.
    let requests = seen.lock().unwrap().clone();
    assert!(
        requests.contains(&(ROLE.to_string(), Some(acme_id.clone()))),
        "{requests:?}"
    );
    assert!(
        requests.contains(&(ROLE.to_string(), Some(mallory_id.clone()))),
        "{requests:?}"
    );
    assert!(
        requests.iter().all(|(_, e)| e.is_some()),
        "every AssumeRole carried an ExternalId: {requests:?}"
    );
    // The other organisation was refused, clearly, and nothing reached its folder.
    assert_eq!(mallory_run.status, "failed", "{mallory_run:?}");
    assert!(
        mallory_run.job_id.is_none(),
        "no job starts without credentials"
    );
    let reason = mallory_run.reason.clone().unwrap();
    assert!(
        reason.contains(&format!("could not assume the role {ROLE}"))
            && reason.contains(&mallory_id)
            && reason.contains("AccessDenied")
            && reason.contains("sts:ExternalId"),
        "{reason}"
    );
    assert_eq!(std::fs::read_dir(mallory_out.path()).unwrap().count(), 0);

    // The token is nowhere on our side: not in the schedule rows, not in any log.
    let stored = h.store.schedule(&schedules[0].id).await.unwrap();
    assert_eq!(
        stored.refs.chorus_token, reference,
        "the row holds the ARNs"
    );
    assert!(
        !contains(&scheduler_log, &token),
        "the scheduler never saw the token"
    );
    let worker_log = std::fs::read(pipeline::worker_process::worker_log_path(
        h.tmp.path(),
        &acme_job.parse().unwrap(),
    ))
    .unwrap();
    assert!(!worker_log.is_empty());
    assert!(
        !contains(&worker_log, &token),
        "the worker log holds the token"
    );
}
