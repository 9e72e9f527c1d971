//! Azure, GCS and BigQuery test plumbing for the binary's tests: destination URLs, the
//! worker's cloud credentials, a proxy that records requests on their way, and a client
//! of the BigQuery emulator to read tables back. Making containers and buckets and
//! reading exports back (the providers' own SDKs), the service-account key and the
//! token endpoint come from `test_support::cloud`.

use std::sync::{Arc, Mutex};

use pipeline::secrets::Credentials;

use super::{TOKEN, env_or_fail};

pub use test_support::cloud::{
    Listing, Object, azure_container, azure_download, cloud_py, gcs_bucket, gcs_download,
    service_account_json, token_server,
};

pub fn azure_dest(container: &str, prefix: &str) -> String {
    format!(
        "azure://{}/{container}/{prefix}?endpoint={}",
        env_or_fail("PORTSHIFT_TEST_AZURE_ACCOUNT"),
        env_or_fail("PORTSHIFT_TEST_AZURE_ENDPOINT")
    )
}

pub fn gcs_dest(endpoint: &str, bucket: &str, prefix: &str) -> String {
    format!("gs://{bucket}/{prefix}?endpoint={endpoint}")
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
    let url = format!(
        "http://{}",
        super::serve(axum::Router::new().fallback(handler)).await
    );
    RecordingProxy { url, requests }
}

/// A BigQuery client for the local emulator (`PORTSHIFT_TEST_BQ_ENDPOINT`), to read back
/// what an export streamed into a table.
pub async fn bigquery_emulator_client() -> gcp_bigquery_client::Client {
    gcp_bigquery_client::client_builder::ClientBuilder::new()
        .with_v2_base_url(env_or_fail("PORTSHIFT_TEST_BQ_ENDPOINT"))
        .build_from_authenticator(Arc::new(NoAuth))
        .await
        .unwrap()
}

/// The emulator takes no credentials.
#[derive(Clone)]
struct NoAuth;

#[async_trait::async_trait]
impl gcp_bigquery_client::auth::Authenticator for NoAuth {
    async fn access_token(&self) -> Result<String, gcp_bigquery_client::error::BQError> {
        Ok("test".into())
    }
}
