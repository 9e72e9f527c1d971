//! The outbound HTTP client builder every stage shares: rustls, TLS 1.2 or newer,
//! certificate validation always on, and an optional extra CA bundle so private
//! endpoints and emulators are trusted by adding their CA, never by turning checks off.
//!
//! Also the network guard of tenant jobs ([`Egress`]): a DNS resolver that drops every
//! non-public address at connect time (the address checked is the address connected,
//! so DNS rebinding cannot pass), URL checks for IP-literal hosts and plain http on the
//! first request and on every redirect hop, and no system proxy (which would hide the
//! real destination from the resolver). The rules come from `pipeline::tenancy`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pipeline::Trust;
use pipeline::tenancy::{Refusal, is_public_ip};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

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

/// Where a job's outbound connections may go. [`Egress::open`] for the operator's jobs;
/// for a tenant's, only public addresses over HTTPS plus the origins the operator
/// allowed. Cheap to clone; every client of a job is built with the same one.
#[derive(Clone, Default)]
pub struct Egress {
    guard: Option<Arc<Guard>>,
}

struct Guard {
    trust: Trust,
    /// Host names of allowed origins: resolved without filtering (their other ports are
    /// refused by the URL check).
    allowed_hosts: BTreeSet<String>,
    /// Turns names into addresses; the system resolver unless a test injects one.
    inner: Arc<dyn Resolve>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.guard {
            None => f.write_str("Egress(open)"),
            Some(g) => write!(f, "Egress(public only, allowed {:?})", g.trust.allowances()),
        }
    }
}

/// A connection the network guard refused. The message names the host as given and
/// what may be reached instead, never what answers at the refused address.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct EgressRefused(pub String);

impl From<Refusal> for EgressRefused {
    fn from(r: Refusal) -> Self {
        EgressRefused(r.message)
    }
}

impl Egress {
    /// No restriction: the operator's jobs.
    pub fn open() -> Self {
        Self { guard: None }
    }

    /// The guard a job's trust level asks for.
    pub fn for_trust(trust: &Trust) -> Self {
        match trust {
            Trust::Operator => Self::open(),
            Trust::Tenant(allow) => Self {
                guard: Some(Arc::new(Guard {
                    allowed_hosts: allow.allowed_hosts(),
                    trust: trust.clone(),
                    inner: Arc::new(SystemResolver),
                })),
            },
        }
    }

    /// The same guard with another name-to-address step (tests answer with the
    /// addresses they need; the guard's filter still decides).
    pub fn with_resolver(self, inner: Arc<dyn Resolve>) -> Self {
        match self.guard {
            None => self,
            Some(g) => Self {
                guard: Some(Arc::new(Guard {
                    trust: g.trust.clone(),
                    allowed_hosts: g.allowed_hosts.clone(),
                    inner,
                })),
            },
        }
    }

    pub fn is_guarded(&self) -> bool {
        self.guard.is_some()
    }

    /// The addresses a connection to `host` may use now, as the guard's resolver
    /// filters them (the same step runs again, inside the client, for every new
    /// connection; this is for callers that want to report early).
    pub async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, EgressRefused> {
        let name: Name = host
            .parse()
            .map_err(|_| EgressRefused(format!("{host:?} is not a host name")))?;
        let resolving = match &self.guard {
            None => SystemResolver.resolve(name),
            Some(g) => GuardedResolver(g.clone()).resolve(name),
        };
        match resolving.await {
            Ok(addrs) => Ok(addrs.collect()),
            Err(e) => Err(egress_refusal(e.as_ref())
                .cloned()
                .unwrap_or_else(|| EgressRefused(format!("{host} could not be resolved: {e}")))),
        }
    }

    /// Whether the operator allowed this URL's origin (always, for an open egress).
    pub fn allows_origin(&self, url: &Url) -> bool {
        match &self.guard {
            None => true,
            Some(g) => g.trust.allowances().is_some_and(|a| a.allows_origin(url)),
        }
    }

    /// Checks a URL before it is requested (the first request, each redirect hop): for
    /// tenants HTTPS only, no IP literal that is not public, or an allowed origin.
    /// Host names are judged again, resolved, when the connection is made.
    pub fn check_url(&self, what: &str, url: &Url) -> Result<(), EgressRefused> {
        match &self.guard {
            None => Ok(()),
            Some(g) => g.trust.check_url("url", what, url).map_err(Into::into),
        }
    }

    /// Applies the guard to a client builder: the filtering resolver and no proxy.
    /// Redirects are the caller's choice; use [`Egress::redirect_policy`] to follow any.
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        match &self.guard {
            None => builder,
            Some(g) => builder
                .no_proxy()
                .dns_resolver(Arc::new(GuardedResolver(g.clone()))),
        }
    }

    /// A redirect policy that follows at most `max` hops and checks each with
    /// [`Egress::check_url`] (the resolver checks its addresses when it connects).
    pub fn redirect_policy(&self, max: usize) -> reqwest::redirect::Policy {
        let egress = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= max {
                return attempt.error(EgressRefused(format!("more than {max} redirects")));
            }
            match egress.check_url("redirect target", attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        })
    }
}

/// The client the notify stage posts webhooks with: the job's guard, and at most 5
/// redirect hops, each checked.
pub fn webhook_client(
    extra_ca_file: Option<&Path>,
    egress: &Egress,
) -> Result<reqwest::Client, HttpSetupError> {
    guarded_client_builder(extra_ca_file, egress)?
        .redirect(egress.redirect_policy(5))
        .build()
        .map_err(|e| HttpSetupError::Build(error_chain(&e)))
}

/// The shared client builder with the job's network guard applied.
pub fn guarded_client_builder(
    extra_ca_file: Option<&Path>,
    egress: &Egress,
) -> Result<reqwest::ClientBuilder, HttpSetupError> {
    Ok(egress.apply(client_builder(extra_ca_file)?))
}

/// The system's resolver (getaddrinfo on a blocking thread, as reqwest's own).
struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Resolves through the inner resolver and keeps only public addresses, so the
/// connection is made to an address that was checked (DNS rebinding cannot pass).
struct GuardedResolver(Arc<Guard>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let guard = self.0.clone();
        if guard.allowed_hosts.contains(&host) {
            return guard.inner.resolve(name);
        }
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = guard.inner.resolve(name).await?.collect();
            let public: Vec<SocketAddr> =
                addrs.into_iter().filter(|a| is_public_ip(a.ip())).collect();
            if public.is_empty() {
                return Err(Box::new(EgressRefused(format!(
                    "{host} does not resolve to a public internet address; console jobs may reach only public HTTPS hosts"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// The network guard's refusal somewhere in an error's causes (from the resolver).
pub fn egress_refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a EgressRefused> {
    let mut cause: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<EgressRefused>() {
            return Some(r);
        }
        cause = c.source();
    }
    None
}
