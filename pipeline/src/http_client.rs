//! The one outbound HTTP client builder of portshift (the stages and the console's
//! Stripe client alike): rustls, TLS 1.2 or newer, certificate validation always on, and
//! an optional extra CA bundle so private endpoints and emulators are trusted by adding
//! their CA, never by turning checks off.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Connecting must not hang a stage: a host that does not answer the handshake in this
/// time is treated as down (the callers retry).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest silence tolerated between two reads. There is deliberately no overall
/// timeout: media bodies stream for as long as they need, but a stalled one fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Environment variable naming an extra CA bundle (PEM) to trust.
pub const CA_FILE_ENV: &str = "PORTSHIFT_CA_FILE";

/// The extra CA bundle named by `PORTSHIFT_CA_FILE`, if set and not blank. Read by the
/// callers of [`client_builder`], so the builder itself stays free of hidden inputs.
pub fn ca_file_from_env() -> Option<PathBuf> {
    std::env::var_os(CA_FILE_ENV)
        .filter(|v| !v.to_string_lossy().trim().is_empty())
        .map(PathBuf::from)
}

/// A CA bundle is a few hundred KiB at most; anything larger is not a CA bundle.
const MAX_CA_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Why an HTTP client could not be set up. Each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error(
        "cannot read the CA bundle {path}: {source}; check the path (PORTSHIFT_CA_FILE) and its permissions"
    )]
    CaFileUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the CA bundle {path} is larger than 16 MiB; point PORTSHIFT_CA_FILE at a PEM file of CA certificates"
    )]
    CaFileTooLarge { path: PathBuf },
    #[error(
        "the CA bundle {path} holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" block); convert it to PEM, e.g. `openssl x509 -inform der -in CA.der -out CA.pem`"
    )]
    CaFileNotPem { path: PathBuf },
    #[error(
        "the CA bundle {path} is not a valid PEM certificate bundle ({detail}); export the CA certificates again as PEM"
    )]
    CaFileInvalid { path: PathBuf, detail: String },
    #[error("could not build the HTTP client: {0}")]
    Build(String),
}

/// Builds a reqwest client builder: rustls, TLS 1.2 minimum, certificate validation
/// always on (there is deliberately no option to turn it off), the native root store
/// plus the certificates of `extra_ca_file` (a PEM file that may hold several), connect
/// timeout 10 s, read timeout 60 s, no overall timeout (bodies stream), and the user
/// agent `portshift/<version>`.
///
/// The caller decides where the CA file comes from (usually `PORTSHIFT_CA_FILE`), and
/// may still adjust the builder (redirect policy, pool) before building it.
pub fn client_builder(
    extra_ca_file: Option<&Path>,
) -> Result<reqwest::ClientBuilder, HttpSetupError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
        .tls_built_in_root_certs(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .tcp_keepalive(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("portshift/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = extra_ca_file {
        for cert in load_ca_bundle(path)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

/// Reads and checks a PEM bundle. Certificates are validated here, with a throw-away
/// client holding only them, so a bad bundle is reported with its file name now rather
/// than as an anonymous error when the real client is built.
fn load_ca_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, HttpSetupError> {
    let unreadable = |source| HttpSetupError::CaFileUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(unreadable)?.len();
    if len > MAX_CA_FILE_BYTES {
        return Err(HttpSetupError::CaFileTooLarge {
            path: path.to_path_buf(),
        });
    }
    let pem = std::fs::read(path).map_err(unreadable)?;
    let certs =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| HttpSetupError::CaFileInvalid {
            path: path.to_path_buf(),
            detail: error_chain(&e),
        })?;
    if certs.is_empty() {
        return Err(HttpSetupError::CaFileNotPem {
            path: path.to_path_buf(),
        });
    }
    let mut probe = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false);
    for cert in &certs {
        probe = probe.add_root_certificate(cert.clone());
    }
    probe.build().map_err(|e| HttpSetupError::CaFileInvalid {
        path: path.to_path_buf(),
        detail: error_chain(&e),
    })?;
    Ok(certs)
}

/// An error and its causes on one line ("a: b: c"), because reqwest's top-level message
/// ("error sending request") alone does not say what went wrong.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // hyper and reqwest often repeat the inner message in the outer one.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
