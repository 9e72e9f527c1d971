//! Google access tokens for the GCS destination and the BigQuery sink, fetched through
//! our own HTTP client (rustls, certificate validation always on, optional extra CA):
//! - a service-account key (the JSON document customers download): a JWT signed with
//!   the key (RS256) is exchanged at the key's `token_uri` (OAuth 2.0 JWT bearer grant);
//! - keyless, on a machine with an attached identity (GCE, GKE workload identity,
//!   Cloud Run): the metadata server hands out the token; `GCE_METADATA_HOST` overrides
//!   its address as in Google's own libraries.
//!
//! The key stays in memory (the private key only as the signing key object); tokens are
//! cached until a minute before they expire. Nothing here ever prints a key or a token.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::http::Egress;

/// Environment variable naming a service-account key file (Google's convention), used
/// when the credentials document has no key.
pub const KEY_FILE_ENV: &str = "GOOGLE_APPLICATION_CREDENTIALS";
const METADATA_HOST_ENV: &str = "GCE_METADATA_HOST";
const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

pub const SCOPE_STORAGE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
pub const SCOPE_BIGQUERY: &str = "https://www.googleapis.com/auth/bigquery";

#[derive(Debug, thiserror::Error)]
pub enum GcpAuthError {
    #[error(
        "the service-account key is not valid: {0}. Give the whole JSON key file as downloaded from the Google Cloud console (IAM > Service accounts > Keys)"
    )]
    BadKey(String),
    #[error("cannot read the service-account key file named by {KEY_FILE_ENV}: {0}")]
    KeyFile(String),
    #[error(
        "Google refused the service-account key ({0}): the key may be deleted or disabled; create a new key for the service account"
    )]
    Refused(String),
    #[error(
        "no Google credentials: give a service-account key in the credentials, set {KEY_FILE_ENV}, or run on a machine with an attached service account (metadata server: {0})"
    )]
    NoIdentity(String),
    #[error("getting a Google access token failed: {0}")]
    Transient(String),
    #[error(
        "no service-account key was given: console jobs must bring their own key (portshift's own Google identity is not lent to them)"
    )]
    NotForTenants,
}

impl GcpAuthError {
    /// Whether retrying cannot help (the job needs new credentials).
    pub fn is_refused(&self) -> bool {
        !matches!(self, GcpAuthError::Transient(_))
    }
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
}

enum Source {
    ServiceAccount {
        email: String,
        key_id: Option<String>,
        key: RsaKeyPair,
        token_uri: String,
    },
    Metadata {
        host: String,
    },
}

/// A source of access tokens for one scope. Cheap to clone.
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

struct Inner {
    source: Source,
    scope: String,
    http: reqwest::Client,
    cached: Mutex<Option<(SecretString, Instant)>>,
    project_id: Option<String>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner.source {
            Source::ServiceAccount { .. } => "service account",
            Source::Metadata { .. } => "metadata server",
        };
        write!(f, "TokenSource({kind}, [redacted])")
    }
}

impl TokenSource {
    /// From a key given in the credentials, else the key file named by
    /// `GOOGLE_APPLICATION_CREDENTIALS`, else the machine's identity. A console job
    /// (guarded `egress`) gets neither fallback: the key must be its own, and the key's
    /// `token_uri` must pass the network guard.
    pub fn resolve(
        key_json: Option<&SecretString>,
        scope: &str,
        extra_ca_file: Option<&Path>,
        egress: &Egress,
    ) -> Result<Self, GcpAuthError> {
        let http = crate::http::no_redirect_client(extra_ca_file, egress)
            .map_err(|e| GcpAuthError::Transient(e.to_string()))?;
        if let Some(json) = key_json {
            let source = Self::service_account(json.expose_secret().as_bytes(), scope, http)?;
            if let Source::ServiceAccount { token_uri, .. } = &source.inner.source {
                let url = url::Url::parse(token_uri)
                    .map_err(|_| GcpAuthError::BadKey("token_uri is not a URL".into()))?;
                egress
                    .check_url("key's token_uri", &url)
                    .map_err(|e| GcpAuthError::BadKey(e.to_string()))?;
            }
            return Ok(source);
        }
        if egress.is_guarded() {
            return Err(GcpAuthError::NotForTenants);
        }
        if let Some(path) = std::env::var_os(KEY_FILE_ENV).filter(|p| !p.is_empty()) {
            let bytes = zeroize::Zeroizing::new(std::fs::read(&path).map_err(|e| {
                GcpAuthError::KeyFile(format!("{}: {e}", Path::new(&path).display()))
            })?);
            return Self::service_account(&bytes, scope, http);
        }
        let host = std::env::var(METADATA_HOST_ENV)
            .ok()
            .filter(|h| !h.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_METADATA_HOST.to_string());
        Ok(Self::metadata(host, scope, http))
    }

    /// Tokens from a service-account key document.
    pub fn service_account(
        json: &[u8],
        scope: &str,
        http: reqwest::Client,
    ) -> Result<Self, GcpAuthError> {
        let key: KeyFile = serde_json::from_slice(json).map_err(|e| {
            // serde's message may quote a value; keep only where it failed.
            GcpAuthError::BadKey(format!(
                "line {} column {} ({:?})",
                e.line(),
                e.column(),
                e.classify()
            ))
        })?;
        let key = zeroize::Zeroizing::new(key);
        if key.kind != "service_account" {
            return Err(GcpAuthError::BadKey(format!(
                "its type is {:?}, not \"service_account\"",
                key.kind.chars().take(40).collect::<String>()
            )));
        }
        let der = pem_to_der(&key.private_key).ok_or_else(|| {
            GcpAuthError::BadKey("private_key is not a PEM \"PRIVATE KEY\" block".into())
        })?;
        let signing = RsaKeyPair::from_pkcs8(&der)
            .map_err(|_| GcpAuthError::BadKey("private_key is not an RSA PKCS#8 key".into()))?;
        let token_uri = key
            .token_uri
            .clone()
            .unwrap_or_else(|| "https://oauth2.googleapis.com/token".to_string());
        let parsed = url::Url::parse(&token_uri)
            .map_err(|_| GcpAuthError::BadKey("token_uri is not a URL".into()))?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(GcpAuthError::BadKey(
                "token_uri must be an https:// URL".into(),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                source: Source::ServiceAccount {
                    email: key.client_email.clone(),
                    key_id: key.private_key_id.clone(),
                    key: signing,
                    token_uri,
                },
                scope: scope.to_string(),
                http,
                cached: Mutex::new(None),
                project_id: key.project_id.clone(),
            }),
        })
    }

    /// Tokens from the metadata server at `host` (keyless).
    pub fn metadata(host: String, scope: &str, http: reqwest::Client) -> Self {
        Self {
            inner: Arc::new(Inner {
                source: Source::Metadata { host },
                scope: scope.to_string(),
                http,
                cached: Mutex::new(None),
                project_id: None,
            }),
        }
    }

    /// The project the key belongs to, if it says.
    pub fn project_id(&self) -> Option<&str> {
        self.inner.project_id.as_deref()
    }

    /// A valid access token (cached until shortly before it expires).
    pub async fn token(&self) -> Result<SecretString, GcpAuthError> {
        let mut cached = self.inner.cached.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        let margin = Duration::from_secs(60).min(lifetime / 2);
        *cached = Some((token.clone(), Instant::now() + lifetime - margin));
        Ok(token)
    }

    /// Forgets the cached token (after the service said it is no longer valid).
    pub async fn invalidate(&self) {
        *self.inner.cached.lock().await = None;
    }

    async fn fetch(&self) -> Result<(SecretString, Duration), GcpAuthError> {
        let inner = &self.inner;
        let response = match &inner.source {
            Source::ServiceAccount {
                email,
                key_id,
                key,
                token_uri,
            } => {
                let assertion = jwt(email, key_id.as_deref(), key, token_uri, &inner.scope)?;
                inner
                    .http
                    .post(token_uri)
                    .form(&[
                        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                        ("assertion", assertion.expose_secret()),
                    ])
                    .send()
                    .await
                    .map_err(|e| {
                        GcpAuthError::Transient(crate::http::error_chain(&e.without_url()))
                    })?
            }
            Source::Metadata { host } => {
                // The metadata server is link-local plain HTTP by design (it never
                // leaves the machine); it is the documented way to get these tokens.
                let url = format!(
                    "http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
                );
                inner
                    .http
                    .get(url)
                    .query(&[("scopes", inner.scope.as_str())])
                    .header("Metadata-Flavor", "Google")
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .map_err(|e| {
                        GcpAuthError::NoIdentity(crate::http::error_chain(&e.without_url()))
                    })?
            }
        };
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let reason = oauth_error(&body).unwrap_or_else(|| format!("HTTP {status}"));
            return Err(match (&inner.source, status.as_u16()) {
                (Source::Metadata { .. }, 404) => {
                    GcpAuthError::NoIdentity("no service account is attached".into())
                }
                (_, 400 | 401 | 403) => GcpAuthError::Refused(reason),
                _ => GcpAuthError::Transient(reason),
            });
        }
        #[derive(Deserialize)]
        struct Token {
            access_token: SecretString,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let token: Token = response.json().await.map_err(|e| {
            GcpAuthError::Transient(format!(
                "the token response is not valid JSON: {}",
                e.without_url()
            ))
        })?;
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(3600).clamp(60, 3600 * 12));
        Ok((token.access_token, lifetime))
    }
}

impl zeroize::Zeroize for KeyFile {
    fn zeroize(&mut self) {
        self.private_key.zeroize();
    }
}

/// The `error` / `error_description` of an OAuth error body (never anything else).
fn oauth_error(body: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct E {
        error: String,
        #[serde(default)]
        error_description: Option<String>,
    }
    let e: E = serde_json::from_str(body).ok()?;
    let clean = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).take(200).collect() };
    Some(match e.error_description {
        Some(d) => format!("{}: {}", clean(&e.error), clean(&d)),
        None => clean(&e.error),
    })
}

fn pem_to_der(pem: &str) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    let start = pem.find("-----BEGIN PRIVATE KEY-----")? + "-----BEGIN PRIVATE KEY-----".len();
    let end = pem[start..].find("-----END PRIVATE KEY-----")? + start;
    let body: zeroize::Zeroizing<String> = zeroize::Zeroizing::new(
        pem[start..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect(),
    );
    base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .ok()
        .map(zeroize::Zeroizing::new)
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The signed JWT for the bearer grant (valid for one hour).
fn jwt(
    email: &str,
    key_id: Option<&str>,
    key: &RsaKeyPair,
    audience: &str,
    scope: &str,
) -> Result<SecretString, GcpAuthError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = key_id {
        header["kid"] = serde_json::Value::String(kid.to_string());
    }
    let claims = serde_json::json!({
        "iss": email,
        "scope": scope,
        "aud": audience,
        "iat": now,
        "exp": now + 3600,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut signature = vec![0u8; key.public_modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| GcpAuthError::BadKey("signing with the private key failed".into()))?;
    Ok(SecretString::from(format!(
        "{signing_input}.{}",
        b64url(&signature)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_are_refused_without_quoting_them() {
        let http = reqwest::Client::new();
        for doc in [
            &br#"{"type":"authorized_user","client_email":"a","private_key":"CANARY"}"#[..],
            br#"{"type":"service_account","client_email":"a","private_key":"CANARY"}"#,
            br#"{"type":"service_account","client_email":"a","private_key":"-----BEGIN PRIVATE KEY-----\nQ0FOQVJZ\n-----END PRIVATE KEY-----\n"}"#,
            b"not json CANARY",
        ] {
            let e = TokenSource::service_account(doc, SCOPE_STORAGE, http.clone())
                .unwrap_err()
                .to_string();
            assert!(!e.contains("CANARY"), "{e}");
            assert!(e.contains("service-account key"), "{e}");
        }
    }

    #[test]
    fn the_jwt_is_signed_with_the_key_and_names_issuer_audience_and_scope() {
        use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
        let pem = test_support::cloud::rsa_key_pem();
        let der = pem_to_der(pem).unwrap();
        let key = RsaKeyPair::from_pkcs8(&der).unwrap();
        let token = jwt(
            "sa@p.iam",
            Some("kid-1"),
            &key,
            "https://aud/token",
            SCOPE_STORAGE,
        )
        .unwrap();
        let token = token.expose_secret();
        let (signed, sig) = token.rsplit_once('.').unwrap();
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.public_key().as_ref())
            .verify(signed.as_bytes(), &sig)
            .expect("the signature verifies with the key's public half");
        let (header, claims) = signed.split_once('.').unwrap();
        let decode = |s: &str| -> serde_json::Value {
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(s)
                    .unwrap(),
            )
            .unwrap()
        };
        let (header, claims) = (decode(header), decode(claims));
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], "kid-1");
        assert_eq!(claims["iss"], "sa@p.iam");
        assert_eq!(claims["aud"], "https://aud/token");
        assert_eq!(claims["scope"], SCOPE_STORAGE);
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            3600
        );
    }

    /// Keyless: the metadata server is asked (with `Metadata-Flavor: Google` and the
    /// scope), its token is cached, and a missing identity is explained.
    #[tokio::test]
    async fn keyless_tokens_come_from_the_metadata_server() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let app = axum::Router::new().route(
            "/computeMetadata/v1/instance/service-accounts/default/token",
            axum::routing::get(
                move |headers: axum::http::HeaderMap,
                      q: axum::extract::Query<std::collections::HashMap<String, String>>| {
                    let seen = seen.clone();
                    async move {
                        seen.fetch_add(1, Ordering::SeqCst);
                        let flavor = headers.get("metadata-flavor").map(|v| v.as_bytes());
                        if flavor != Some(b"Google".as_slice())
                            || q.get("scopes").map(String::as_str) != Some(SCOPE_STORAGE)
                        {
                            return (axum::http::StatusCode::FORBIDDEN, "{}".to_string());
                        }
                        (
                            axum::http::StatusCode::OK,
                            r#"{"access_token":"md-token","expires_in":3599,"token_type":"Bearer"}"#
                                .to_string(),
                        )
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let source = TokenSource::metadata(host.clone(), SCOPE_STORAGE, reqwest::Client::new());
        for _ in 0..3 {
            assert_eq!(source.token().await.unwrap().expose_secret(), "md-token");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // No identity attached (404 on a real VM without a service account).
        let none = TokenSource::metadata(
            format!("{host}/none"),
            SCOPE_STORAGE,
            reqwest::Client::new(),
        );
        let e = none.token().await.unwrap_err();
        assert!(matches!(e, GcpAuthError::NoIdentity(_)), "{e}");
        assert!(e.to_string().contains("service-account key"), "{e}");
    }

    #[test]
    fn oauth_errors_keep_only_code_and_description() {
        assert_eq!(
            oauth_error(
                r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#
            )
            .as_deref(),
            Some("invalid_grant: Invalid JWT Signature.")
        );
        assert_eq!(oauth_error("<html>"), None);
    }
}
