//! Credentials as the worker holds them: in memory only, zeroed on drop, printed as
//! `[redacted]`. They arrive as one JSON document (on the worker's standard input, or
//! built by `portshift export` from its environment) and are never serialised back out.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::fmt;

/// Everything secret a job's worker may need. Deserialize-only on purpose: there is no
/// way to write these back out through serde.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub chorus_token: SecretString,
    #[serde(default)]
    pub s3: Option<S3Credentials>,
    #[serde(default)]
    pub webhook_secret: Option<SecretString>,
    #[serde(default)]
    pub azure: Option<AzureCredentials>,
    #[serde(default)]
    pub gcs: Option<GcsCredentials>,
    /// For the BigQuery metadata sink; when absent the `gcs` key (if any) is used, then
    /// the machine's own identity.
    #[serde(default)]
    pub bigquery: Option<GcsCredentials>,
    /// The operator's manifest signing key (minisign), when one is configured. Like the
    /// rest, it lives only in the worker's memory.
    #[serde(default)]
    pub signing_key: Option<crate::signing::SigningKeyMaterial>,
}

/// An Azure SAS token for the destination container (with or without the leading `?`).
/// It needs exactly create (c) and write (w); see docs/permissions.md.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureCredentials {
    pub sas_token: SecretString,
}

/// A Google service-account key, the JSON document as downloaded from the console.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcsCredentials {
    pub service_account_json: SecretString,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    #[serde(default)]
    pub session_token: Option<SecretString>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials([redacted])")
    }
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("S3Credentials([redacted])")
    }
}

impl fmt::Debug for AzureCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AzureCredentials([redacted])")
    }
}

impl fmt::Debug for GcsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GcsCredentials([redacted])")
    }
}

impl Credentials {
    pub fn new(chorus_token: SecretString) -> Self {
        Self {
            chorus_token,
            s3: None,
            webhook_secret: None,
            azure: None,
            gcs: None,
            bigquery: None,
            signing_key: None,
        }
    }

    /// Parses the worker's credential document. The error never quotes the input.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CredentialsError> {
        let creds: Credentials = serde_json::from_slice(bytes).map_err(|e| CredentialsError {
            // serde's message may quote a value; keep only where it failed.
            detail: format!(
                "line {} column {} ({:?})",
                e.line(),
                e.column(),
                e.classify()
            ),
        })?;
        if creds.chorus_token.expose_secret().trim().is_empty() {
            return Err(CredentialsError {
                detail: "chorus_token is empty".into(),
            });
        }
        Ok(creds)
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the credentials document is not valid: {detail}. Expected JSON like \
     {{\"chorus_token\": \"...\", \"s3\": {{\"access_key_id\": \"...\", \"secret_access_key\": \"...\"}}}} \
     (or \"azure\": {{\"sas_token\": \"...\"}}, \"gcs\": {{\"service_account_json\": \"...\"}}, \"bigquery\": {{\"service_account_json\": \"...\"}}, \"signing_key\": {{\"secret_key\": \"...\"}})"
)]
pub struct CredentialsError {
    detail: String,
}

/// Stops this process from ever writing a core dump (which would hold the secrets) and
/// from being attached to by other unprivileged processes.
pub fn harden_process() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain syscalls with valid arguments; no memory is shared.
        unsafe {
            if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret_and_errors_never_quote_input() {
        let creds = Credentials::from_json(
            br#"{"chorus_token":"CANARY-123","s3":{"access_key_id":"AKIA","secret_access_key":"CANARY-456"}}"#,
        )
        .unwrap();
        let shown = format!("{creds:?} {:?}", creds.s3);
        assert!(!shown.contains("CANARY"), "{shown}");
        let cloud = Credentials::from_json(
            br#"{"chorus_token":"t","azure":{"sas_token":"sv=CANARY-1"},"gcs":{"service_account_json":"CANARY-2"},"bigquery":{"service_account_json":"CANARY-3"}}"#,
        )
        .unwrap();
        let shown = format!(
            "{cloud:?} {:?} {:?} {:?}",
            cloud.azure, cloud.gcs, cloud.bigquery
        );
        assert!(!shown.contains("CANARY"), "{shown}");
        let err = Credentials::from_json(br#"{"chorus_token":"CANARY-789","extra":"CANARY-000"}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("CANARY"), "{err}");
        assert!(Credentials::from_json(br#"{"chorus_token":"  "}"#).is_err());
        let signed = Credentials::from_json(
            br#"{"chorus_token":"t","signing_key":{"secret_key":"CANARY-4","password":"CANARY-5"}}"#,
        )
        .unwrap();
        let shown = format!("{signed:?} {:?}", signed.signing_key);
        assert!(!shown.contains("CANARY"), "{shown}");
    }
}
