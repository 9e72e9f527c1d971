//! Azure and GCS plumbing for tests: containers and buckets made, and exports read back,
//! with the providers' own Python SDKs (`tests/support/cloud.py`, run with the project
//! venv's Python); a throw-away Google service-account key and a local OAuth token
//! endpoint for it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::env_or_fail;

/// Runs `tests/support/cloud.py ARGS`; returns its standard output, trimmed.
pub fn cloud_py(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/support/cloud.py");
    let out = std::process::Command::new(env_or_fail("PORTSHIFT_TEST_PYTHON"))
        .arg(script)
        .args(args)
        .output()
        .expect("run tests/support/cloud.py");
    assert!(
        out.status.success(),
        "cloud.py {:?} failed: {}",
        args.first(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// One object as the provider's SDK read it back.
#[derive(Debug)]
pub struct Object {
    pub bytes: u64,
    pub sha256: String,
    pub content_type: Option<String>,
    pub md5: Option<String>,
}

/// What the provider's SDK found under a prefix.
#[derive(Debug)]
pub struct Listing {
    pub objects: BTreeMap<String, Object>,
    pub uncommitted_blocks: u64,
}

impl Listing {
    fn parse(out: &str) -> Self {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        let text = |o: &serde_json::Value, k: &str| o[k].as_str().map(str::to_string);
        let objects = v["objects"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, o)| {
                (
                    k.clone(),
                    Object {
                        bytes: o["bytes"].as_u64().unwrap(),
                        sha256: text(o, "sha256").unwrap(),
                        content_type: text(o, "content_type"),
                        md5: text(o, "md5"),
                    },
                )
            })
            .collect();
        Listing {
            objects,
            uncommitted_blocks: v["uncommitted_blocks"].as_u64().unwrap_or(0),
        }
    }
}

/// A new container on the project's Azurite; returns its name and a SAS token that
/// grants exactly `perms`.
pub fn azure_container(perms: &str) -> (String, String) {
    azure_container_at(&env_or_fail("PORTSHIFT_TEST_AZURE_ENDPOINT"), perms)
}

/// [`azure_container`] on the Azurite at `endpoint` (a test may run its own).
pub fn azure_container_at(endpoint: &str, perms: &str) -> (String, String) {
    let container = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
    let sas = cloud_py(&[
        "azure-container",
        endpoint,
        &env_or_fail("PORTSHIFT_TEST_AZURE_ACCOUNT"),
        &env_or_fail("PORTSHIFT_TEST_AZURE_KEY"),
        &container,
        perms,
    ]);
    (container, sas)
}

/// Downloads everything under `prefix` with Microsoft's SDK (account key) into `dir`.
pub fn azure_download(container: &str, prefix: &str, dir: &Path) -> Listing {
    let out = cloud_py(&[
        "azure-download",
        &env_or_fail("PORTSHIFT_TEST_AZURE_ENDPOINT"),
        &env_or_fail("PORTSHIFT_TEST_AZURE_ACCOUNT"),
        &env_or_fail("PORTSHIFT_TEST_AZURE_KEY"),
        container,
        prefix,
        dir.to_str().unwrap(),
    ]);
    Listing::parse(&out)
}

/// A new bucket on the GCS server at `endpoint`.
pub fn gcs_bucket(endpoint: &str) -> String {
    let bucket = format!("t-{}", uuid::Uuid::new_v4().simple());
    cloud_py(&["gcs-bucket", endpoint, &bucket]);
    bucket
}

/// Downloads everything under `prefix` with Google's SDK into `dir`.
pub fn gcs_download(endpoint: &str, bucket: &str, prefix: &str, dir: &Path) -> Listing {
    let out = cloud_py(&[
        "gcs-download",
        endpoint,
        bucket,
        prefix,
        dir.to_str().unwrap(),
    ]);
    Listing::parse(&out)
}

/// A throw-away 2048-bit RSA private key in PEM, made by `openssl` once per test process.
pub fn rsa_key_pem() -> &'static str {
    static PEM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PEM.get_or_init(|| {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("run openssl genpkey");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    })
}

/// [`rsa_key_pem`] as a Google service-account key document whose `token_uri` is
/// `token_uri`.
pub fn service_account_json(token_uri: &str) -> String {
    let pem = rsa_key_pem();
    serde_json::json!({
        "type": "service_account",
        "project_id": "portshift-test",
        "private_key_id": "test-key-1",
        "private_key": pem,
        "client_email": "portshift-test@portshift-test.iam.gserviceaccount.com",
        "token_uri": token_uri,
    })
    .to_string()
}

/// A local OAuth token endpoint for the JWT bearer grant; returns its URL.
pub async fn token_server() -> String {
    counting_token_server().await.0
}

/// [`token_server`], also counting the token requests it answers.
pub async fn counting_token_server() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move |body: String| {
            let counter = counter.clone();
            async move {
                let ok = body.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
                    && body.contains("assertion=");
                counter.fetch_add(1, Ordering::SeqCst);
                if ok {
                    axum::Json(serde_json::json!({"access_token": "test-token", "expires_in": 3600, "token_type": "Bearer"}))
                } else {
                    axum::Json(serde_json::json!({"error": "invalid_grant"}))
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}
