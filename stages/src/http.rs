//! The outbound HTTP clients of the stages: the shared builder
//! ([`client_builder`], from `pipeline::http_client`, which the console uses too) and
//! the network guard of tenant jobs ([`Egress`]): a DNS resolver that drops every
//! non-public address at connect time (the address checked is the address connected,
//! so DNS rebinding cannot pass), URL checks for IP-literal hosts and plain http on the
//! first request and on every redirect hop, and no system proxy (which would hide the
//! real destination from the resolver). The rules come from `pipeline::tenancy`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use pipeline::Trust;
use pipeline::tenancy::{Refusal, is_public_ip};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

pub use pipeline::http_client::{
    CA_FILE_ENV, CONNECT_TIMEOUT, HttpSetupError, READ_TIMEOUT, ca_file_from_env, client_builder,
    error_chain,
};

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

/// A client with the job's guard that follows no redirect: for storage, BigQuery and
/// token endpoints, where a redirect would resend the credentials somewhere else.
pub fn no_redirect_client(
    extra_ca_file: Option<&Path>,
    egress: &Egress,
) -> Result<reqwest::Client, HttpSetupError> {
    guarded_client_builder(extra_ca_file, egress)?
        .redirect(reqwest::redirect::Policy::none())
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
