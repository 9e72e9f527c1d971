//! Azure, GCS and BigQuery test plumbing: containers and buckets made, and exports read
//! back, with the providers' own Python SDKs (`tests/support/cloud.py`, run with the
//! project venv's Python); a throw-away service-account key and a local token endpoint
//! for the GCS and BigQuery credentials; a proxy that records requests on their way.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use pipeline::secrets::Credentials;

use super::{TOKEN, env_or_fail};

/// Runs `tests/support/cloud.py ARGS`; returns its standard output, trimmed.
pub fn cloud_py(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/cloud.py");
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
    let container = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
    let sas = cloud_py(&[
        "azure-container",
        &env_or_fail("PORTSHIFT_TEST_AZURE_ENDPOINT"),
        &env_or_fail("PORTSHIFT_TEST_AZURE_ACCOUNT"),
        &env_or_fail("PORTSHIFT_TEST_AZURE_KEY"),
        &container,
        perms,
    ]);
    (container, sas)
}

pub fn azure_dest(container: &str, prefix: &str) -> String {
    format!(
        "azure://{}/{container}/{prefix}?endpoint={}",
        env_or_fail("PORTSHIFT_TEST_AZURE_ACCOUNT"),
        env_or_fail("PORTSHIFT_TEST_AZURE_ENDPOINT")
    )
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

pub fn gcs_dest(endpoint: &str, bucket: &str, prefix: &str) -> String {
    format!("gs://{bucket}/{prefix}?endpoint={endpoint}")
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

/// A throw-away RSA key (made by `openssl` once per test process) as a Google
/// service-account key document whose `token_uri` is `token_uri`.
pub fn service_account_json(token_uri: &str) -> String {
    static PEM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let pem = PEM.get_or_init(|| {
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
    });
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
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(|body: String| async move {
            if body.contains("assertion=") {
                axum::Json(serde_json::json!({"access_token": "test-token", "expires_in": 3600}))
            } else {
                axum::Json(serde_json::json!({"error": "invalid_grant"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The worker's credentials for a cloud export: the Chorus token plus whichever of an
/// Azure SAS token and a Google service-account key is given.
pub fn cloud_credentials(azure_sas: Option<&str>, gcp_key_json: Option<&str>) -> Credentials {
    let mut doc = serde_json::json!({ "chorus_token": TOKEN });
    if let Some(sas) = azure_sas {
        doc["azure"] = serde_json::json!({ "sas_token": sas });
    }
    if let Some(key) = gcp_key_json {
        doc["gcs"] = serde_json::json!({ "service_account_json": key });
        doc["bigquery"] = serde_json::json!({ "service_account_json": key });
    }
    let creds = Credentials::from_json(doc.to_string().as_bytes()).unwrap();
    assert!(!format!("{creds:?}").contains(TOKEN));
    creds
}

/// A forwarding HTTP proxy that keeps `(method, path, body)` of every request.
pub struct RecordingProxy {
    pub url: String,
    pub requests: Arc<Mutex<Vec<(String, String, bytes::Bytes)>>>,
}

pub async fn recording_proxy(upstream: String) -> RecordingProxy {
    let requests: Arc<Mutex<Vec<(String, String, bytes::Bytes)>>> = Arc::default();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let seen = requests.clone();
    let handler = move |req: axum::extract::Request| {
        let (client, upstream, seen) = (client.clone(), upstream.clone(), seen.clone());
        async move {
            use axum::response::IntoResponse;
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 64 * 1024 * 1024).await.unwrap();
            let path = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            seen.lock()
                .unwrap()
                .push((parts.method.to_string(), path.clone(), body.clone()));
            let mut out = client.request(parts.method.clone(), format!("{upstream}{path}"));
            for (name, value) in parts.headers.iter() {
                if !matches!(name.as_str(), "host" | "connection" | "content-length") {
                    out = out.header(name, value);
                }
            }
            match out.body(body).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let ct = resp.headers().get("content-type").cloned();
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let mut r = axum::http::Response::builder().status(status);
                    if let Some(ct) = ct {
                        r = r.header("content-type", ct);
                    }
                    r.body(axum::body::Body::from(bytes))
                        .unwrap()
                        .into_response()
                }
                Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            }
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    RecordingProxy { url, requests }
}
