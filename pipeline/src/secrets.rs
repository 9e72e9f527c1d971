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
        Self::check(&creds)?;
        Ok(creds)
    }

    /// The credentials document again, for handing to a worker process over its standard
    /// input (the scheduler resolves references, then passes the values on). The only way
    /// back out: written into one zeroed-on-drop buffer, sized up front so it does not
    /// leave reallocated copies behind.
    pub fn to_worker_document(&self) -> zeroize::Zeroizing<Vec<u8>> {
        #[derive(serde::Serialize)]
        struct S3<'a> {
            access_key_id: &'a str,
            secret_access_key: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            session_token: Option<&'a str>,
        }
        #[derive(serde::Serialize)]
        struct Key<'a> {
            service_account_json: &'a str,
        }
        #[derive(serde::Serialize)]
        struct Sas<'a> {
            sas_token: &'a str,
        }
        use crate::signing::ExposedSigningKey;
        #[derive(serde::Serialize)]
        struct Doc<'a> {
            chorus_token: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            signing_key: Option<ExposedSigningKey<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            s3: Option<S3<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            webhook_secret: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            azure: Option<Sas<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            gcs: Option<Key<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            bigquery: Option<Key<'a>>,
        }
        fn key(g: &Option<GcsCredentials>) -> Option<Key<'_>> {
            g.as_ref().map(|g| Key {
                service_account_json: g.service_account_json.expose_secret(),
            })
        }
        let doc = Doc {
            chorus_token: self.chorus_token.expose_secret(),
            signing_key: self.signing_key.as_ref().map(|k| k.exposed()),
            s3: self.s3.as_ref().map(|s| S3 {
                access_key_id: &s.access_key_id,
                secret_access_key: s.secret_access_key.expose_secret(),
                session_token: s.session_token.as_ref().map(|t| t.expose_secret()),
            }),
            webhook_secret: self.webhook_secret.as_ref().map(|w| w.expose_secret()),
            azure: self.azure.as_ref().map(|a| Sas {
                sas_token: a.sas_token.expose_secret(),
            }),
            gcs: key(&self.gcs),
            bigquery: key(&self.bigquery),
        };
        let sizes = [
            Some(doc.chorus_token.len()),
            doc.s3.as_ref().map(|s| {
                s.access_key_id.len()
                    + s.secret_access_key.len()
                    + s.session_token.map_or(0, str::len)
            }),
            doc.webhook_secret.map(str::len),
            doc.azure.as_ref().map(|a| a.sas_token.len()),
            doc.gcs.as_ref().map(|g| g.service_account_json.len()),
            doc.bigquery.as_ref().map(|g| g.service_account_json.len()),
            doc.signing_key.as_ref().map(ExposedSigningKey::secret_len),
        ];
        let capacity = 512 + 2 * sizes.iter().flatten().sum::<usize>();
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(capacity));
        // Writing borrowed strings into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &doc);
        out
    }

    /// What a parsed document must also satisfy (serde cannot say it).
    pub fn check(creds: &Credentials) -> Result<(), CredentialsError> {
        if creds.chorus_token.expose_secret().trim().is_empty() {
            return Err(CredentialsError {
                detail: "chorus_token is empty".into(),
            });
        }
        Ok(())
    }

    /// Registers every secret value with this process's [`redact`] list, so nothing the
    /// process logs can carry them (a library error that quotes a URL or a header, say).
    pub fn redact_in_logs(&self) {
        register_redaction(self.chorus_token.expose_secret());
        if let Some(s3) = &self.s3 {
            register_redaction(s3.secret_access_key.expose_secret());
            if let Some(t) = &s3.session_token {
                register_redaction(t.expose_secret());
            }
        }
        if let Some(w) = &self.webhook_secret {
            register_redaction(w.expose_secret());
        }
        if let Some(a) = &self.azure {
            let sas = a.sas_token.expose_secret();
            register_redaction(sas);
            register_redaction(sas.trim_start_matches('?'));
        }
        for g in [&self.gcs, &self.bigquery].into_iter().flatten() {
            let key = g.service_account_json.expose_secret();
            register_redaction(key);
            // The private key may be quoted on its own.
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(key)
                && let Some(pk) = v.get("private_key").and_then(|p| p.as_str())
            {
                for line in pk.lines() {
                    register_redaction(line);
                }
            }
        }
    }
}

/// Secrets this process must never write out, longest first. Shorter values are not
/// registered: replacing every short string would garble the log, and a secret that
/// short is not worth protecting this way.
static REDACTIONS: std::sync::Mutex<Vec<zeroize::Zeroizing<String>>> =
    std::sync::Mutex::new(Vec::new());

/// The shortest value [`register_redaction`] keeps.
pub const MIN_REDACTED_LEN: usize = 6;

/// Adds a value to this process's redaction list (see [`redact`]).
pub fn register_redaction(secret: &str) {
    let secret = secret.trim();
    if secret.len() < MIN_REDACTED_LEN || secret.starts_with("-----") {
        return;
    }
    let mut list = REDACTIONS.lock().unwrap_or_else(|p| p.into_inner());
    if !list.iter().any(|s| s.as_str() == secret) {
        list.push(zeroize::Zeroizing::new(secret.to_string()));
        list.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Registers the password of a service URL (NATS, PostgreSQL), if it has one.
pub fn register_url_password(url: &str) {
    if let Ok(u) = url::Url::parse(url)
        && let Some(p) = u.password()
    {
        register_redaction(p);
        if let Ok(decoded) = percent_decode(p) {
            register_redaction(&decoded);
        }
    }
}

fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
}

/// `text` with every registered secret replaced by `[redacted]`.
pub fn redact(text: &str) -> String {
    let list = REDACTIONS.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = text.to_string();
    for s in list.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "[redacted]");
        }
    }
    out
}

/// Standard error through [`redact`]: the writer of the worker's log. Each `write` is
/// redacted on its own, so callers write whole records at once (the tracing formatter
/// writes one event per call).
pub struct RedactingStderr;

impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
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

    #[test]
    fn the_worker_document_round_trips() {
        let doc = br#"{"chorus_token":"t\"1","s3":{"access_key_id":"AKIA","secret_access_key":"s","session_token":"x"},"webhook_secret":"w","azure":{"sas_token":"sv=1"},"gcs":{"service_account_json":"{}"},"bigquery":{"service_account_json":"{\"a\":1}"}}"#;
        let creds = Credentials::from_json(doc).unwrap();
        let again = Credentials::from_json(&creds.to_worker_document()).unwrap();
        assert_eq!(again.chorus_token.expose_secret(), "t\"1");
        let s3 = again.s3.unwrap();
        assert_eq!(s3.secret_access_key.expose_secret(), "s");
        assert_eq!(s3.session_token.unwrap().expose_secret(), "x");
        assert_eq!(again.webhook_secret.unwrap().expose_secret(), "w");
        assert_eq!(again.azure.unwrap().sas_token.expose_secret(), "sv=1");
        assert_eq!(
            again.bigquery.unwrap().service_account_json.expose_secret(),
            "{\"a\":1}"
        );
        let bare = Credentials::new(SecretString::from("only"));
        assert_eq!(
            &bare.to_worker_document()[..],
            br#"{"chorus_token":"only"}"#
        );
    }

    #[test]
    fn registered_secrets_are_redacted_from_log_text() {
        let creds = Credentials::from_json(
            br#"{"chorus_token":"CANARY-RDT-1","s3":{"access_key_id":"AKIA","secret_access_key":"CANARY-RDT-2"}}"#,
        )
        .unwrap();
        assert_eq!(
            redact("token CANARY-RDT-1"),
            "token CANARY-RDT-1",
            "nothing registered yet"
        );
        creds.redact_in_logs();
        register_url_password("postgres://u:CANARY%2DRDT-3@db/x");
        let out = redact("a CANARY-RDT-1 b CANARY-RDT-2 c CANARY-RDT-3 d CANARY%2DRDT-3 AKIA");
        assert_eq!(
            out,
            "a [redacted] b [redacted] c [redacted] d [redacted] AKIA"
        );
    }
}
