//! The two trust levels and the one policy that tells them apart.
//!
//! - **Operator**: whoever runs `portshift` on the command line (or writes its
//!   configuration) may use the machine's identity, environment, files and private
//!   networks.
//! - **Tenant**: everything that arrives through the console or the JSON API. A tenant
//!   is a stranger: nothing a tenant gives may resolve against the server's environment,
//!   files or ambient cloud identity, reach a non-public address, travel in clear, or
//!   land on the server's disk, unless the operator opened exactly that with an explicit
//!   option (`--allow-origin`, `--allow-file-root` on `serve` and `scheduler`).
//!
//! The trust level is set by the code path that creates a job or schedule (never by
//! tenant input), stored with it, and travels in the job spec to the worker, which
//! checks the same rules again before it opens a connection. This module is the only
//! place those rules are written; the console and the worker both call it. The network
//! side (resolved addresses at connect time, each redirect hop) is enforced by the
//! shared HTTP client in `stages::http`, with [`is_public_ip`] from here.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Component, Path};

use url::Url;

pub use crate::job::{Allowances, Trust, TrustLevel};
use crate::schedules::{CredentialRef, CredentialRefs};

/// An operator option that cannot be used as given.
#[derive(Debug, thiserror::Error)]
pub enum AllowanceError {
    #[error(
        "--allow-origin {0:?} is not an origin: give scheme, host and port only, e.g. http://127.0.0.1:9000 or https://minio.internal:9000"
    )]
    Origin(String),
    #[error("--allow-file-root {path}: {detail}")]
    FileRoot { path: String, detail: String },
}

/// `scheme://host:port` of a URL, with the scheme's default port made explicit, so that
/// `https://h` and `https://h:443` are the same origin.
pub fn origin_of(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    Some(format!(
        "{}://{}:{port}",
        url.scheme(),
        host.to_ascii_lowercase()
    ))
}

impl Allowances {
    /// Checks and normalises the operator's options. The file root must exist; it is
    /// kept in canonical form so a symlink cannot widen it later.
    pub fn new(origins: &[String], file_root: Option<&Path>) -> Result<Self, AllowanceError> {
        let mut normalised = BTreeSet::new();
        for given in origins {
            let bad = || AllowanceError::Origin(given.clone());
            let u = Url::parse(given.trim()).map_err(|_| bad())?;
            let plain = matches!(u.scheme(), "http" | "https")
                && u.username().is_empty()
                && u.password().is_none()
                && matches!(u.path(), "" | "/")
                && u.query().is_none()
                && u.fragment().is_none();
            if !plain {
                return Err(bad());
            }
            normalised.insert(origin_of(&u).ok_or_else(bad)?);
        }
        let file_root = match file_root {
            None => None,
            Some(p) => {
                let err = |detail: String| AllowanceError::FileRoot {
                    path: p.display().to_string(),
                    detail,
                };
                if !p.is_absolute() {
                    return Err(err("give an absolute path".into()));
                }
                let canonical = p
                    .canonicalize()
                    .map_err(|e| err(format!("{e}; create the folder first")))?;
                if !canonical.is_dir() {
                    return Err(err("it is not a folder".into()));
                }
                if canonical == Path::new("/") {
                    return Err(err("the root of the file system is not a sandbox".into()));
                }
                Some(canonical)
            }
        };
        Ok(Self {
            origins: normalised.into_iter().collect(),
            file_root,
        })
    }

    pub fn allows_origin(&self, url: &Url) -> bool {
        origin_of(url).is_some_and(|o| self.origins.contains(&o))
    }

    /// Host names (not addresses) of the allowed origins: the network guard resolves
    /// these without filtering, and only for their allowed origins.
    pub fn allowed_hosts(&self) -> BTreeSet<String> {
        self.origins
            .iter()
            .filter_map(|o| Url::parse(o).ok())
            .filter_map(|u| match u.host() {
                Some(url::Host::Domain(d)) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect()
    }
}

/// Why a tenant may not do something, and which field of the form it concerns. The
/// message names what to use instead and never reveals anything about the server
/// (whether a file or variable exists, what answers at an address).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The form / API field (`chorus_url`, `destination`, `chorus_token_ref`, ...).
    pub field: &'static str,
    pub message: String,
}

fn refuse(field: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        field,
        message: message.into(),
    }
}

/// Which secrets a tenant handed over for a job (in the form, or through a reference
/// that reads the tenant's own account), so the worker never fills a gap with the
/// server's own identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Supplied {
    pub s3: bool,
    pub azure: bool,
    pub gcs: bool,
    pub bigquery: bool,
}

const REF_INSTEAD: &str = "they read the portshift server's own environment, files or cloud identity, which console users may not use. \
Keep the secret in your own cloud account and let portshift read it through a cross-account role (see docs/security.md), \
or ask the operator to create this schedule with `portshift schedule create`";

impl Trust {
    pub fn operator() -> Self {
        Trust::Operator
    }

    /// A schedule's level with what the running scheduler allows tenants.
    pub fn for_level(level: TrustLevel, allowances: &Allowances) -> Self {
        match level {
            TrustLevel::Operator => Trust::Operator,
            TrustLevel::Tenant => Trust::Tenant(allowances.clone()),
        }
    }

    pub fn tenant(allowances: Allowances) -> Self {
        Trust::Tenant(allowances)
    }

    pub fn is_tenant(&self) -> bool {
        matches!(self, Trust::Tenant(_))
    }

    pub fn level(&self) -> TrustLevel {
        match self {
            Trust::Operator => TrustLevel::Operator,
            Trust::Tenant(_) => TrustLevel::Tenant,
        }
    }

    /// The allowances of a tenant job; `None` for the operator (everything allowed).
    pub fn allowances(&self) -> Option<&Allowances> {
        match self {
            Trust::Operator => None,
            Trust::Tenant(a) => Some(a),
        }
    }

    /// Any outbound URL (Chorus API, a media redirect hop, a webhook, a storage or
    /// token endpoint): for tenants HTTPS to a public host, or an allowed origin.
    /// Names are checked again, resolved, when the connection is made (`stages::http`).
    pub fn check_url(&self, field: &'static str, what: &str, url: &Url) -> Result<(), Refusal> {
        let Trust::Tenant(allow) = self else {
            return Ok(());
        };
        if allow.allows_origin(url) {
            return Ok(());
        }
        if url.scheme() != "https" {
            return Err(refuse(
                field,
                format!(
                    "The {what} must use https:// (plain http would carry credentials and data in clear)."
                ),
            ));
        }
        match url.host() {
            None => Err(refuse(field, format!("The {what} has no host."))),
            Some(url::Host::Ipv4(ip)) if !is_public_ip(IpAddr::V4(ip)) => {
                Err(not_public(field, what))
            }
            Some(url::Host::Ipv6(ip)) if !is_public_ip(IpAddr::V6(ip)) => {
                Err(not_public(field, what))
            }
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                if d == "localhost"
                    || d.ends_with(".localhost")
                    || d == "metadata.google.internal"
                    || d == "metadata"
                    || allow.allowed_hosts().contains(&d)
                {
                    // An allowed host name reaches only its allowed origins.
                    Err(not_public(field, what))
                } else {
                    Ok(())
                }
            }
            Some(_) => Ok(()),
        }
    }

    fn check_url_text(&self, field: &'static str, what: &str, given: &str) -> Result<(), Refusal> {
        let url = Url::parse(given.trim())
            .map_err(|_| refuse(field, format!("The {what} is not a URL.")))?;
        self.check_url(field, what, &url)
    }

    pub fn check_chorus_url(&self, given: &str) -> Result<(), Refusal> {
        self.check_url_text("chorus_url", "Chorus API address", given)
    }

    pub fn check_webhook_url(&self, given: &str) -> Result<(), Refusal> {
        self.check_url_text("webhook_url", "webhook URL", given)
    }

    /// A destination URL (its form is checked by the destination grammar): for tenants
    /// no `file://` outside the allowed root, custom endpoints only over public HTTPS
    /// (or allowed origins), and custom S3 endpoints only on allowed origins (the AWS
    /// SDK's connections do not pass through portshift's address guard).
    pub fn check_destination(&self, given: &str) -> Result<(), Refusal> {
        let Trust::Tenant(allow) = self else {
            return Ok(());
        };
        let field = "destination";
        let Ok(url) = Url::parse(given.trim()) else {
            return Ok(()); // the grammar reports it
        };
        if url.scheme() == "file" {
            let Some(root) = &allow.file_root else {
                return Err(refuse(
                    field,
                    "file:// destinations write onto the portshift server's disk, which console users may not do. \
                     Export to storage you own: s3://, azure:// or gs://.",
                ));
            };
            let path = url
                .to_file_path()
                .map_err(|_| refuse(field, "A file:// destination needs an absolute path."))?;
            if !under_root(&path, root) {
                return Err(refuse(
                    field,
                    format!(
                        "file:// destinations are allowed only under {} on this server; choose a folder there, or export to s3://, azure:// or gs://.",
                        root.display()
                    ),
                ));
            }
            return Ok(());
        }
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "endpoint" => {
                    let ep = Url::parse(&v)
                        .map_err(|_| refuse(field, "The storage endpoint is not a URL."))?;
                    if url.scheme() == "s3" && !allow.allows_origin(&ep) {
                        return Err(refuse(
                            field,
                            "A custom S3 endpoint is not available from the console unless the operator allows its origin \
                             (portshift serve --allow-origin); leave out endpoint= to use Amazon S3.",
                        ));
                    }
                    self.check_url(field, "storage endpoint", &ep)?;
                }
                "bigquery_endpoint" => {
                    let ep = Url::parse(&v)
                        .map_err(|_| refuse(field, "The BigQuery endpoint is not a URL."))?;
                    self.check_url(field, "BigQuery endpoint", &ep)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// For tenants, every destination needs the tenant's own credentials: a missing key
    /// would otherwise fall back to the server's AWS chain, its Google metadata server
    /// or its environment (and a custom endpoint would receive the server's token).
    pub fn check_destination_credentials(
        &self,
        destination: &str,
        supplied: Supplied,
    ) -> Result<(), Refusal> {
        if !self.is_tenant() {
            return Ok(());
        }
        let Ok(url) = Url::parse(destination.trim()) else {
            return Ok(());
        };
        match url.scheme() {
            "s3" if !supplied.s3 => {
                return Err(refuse(
                    "s3_access_key_id",
                    "Give an access key for your bucket: without one portshift would use its own AWS identity, \
                     which console users may not borrow.",
                ));
            }
            "azure" if !supplied.azure => {
                return Err(refuse(
                    "azure_sas_token",
                    "Give a SAS token for your container (create and write permission).",
                ));
            }
            "gs" if !supplied.gcs => {
                return Err(refuse(
                    "gcs_service_account_json",
                    "Give a service-account key for your bucket: without one portshift would use its own Google identity, \
                     which console users may not borrow.",
                ));
            }
            _ => {}
        }
        if url.query_pairs().any(|(k, _)| k == "bigquery") && !(supplied.bigquery || supplied.gcs) {
            return Err(refuse(
                "gcs_service_account_json",
                "BigQuery needs your own service-account key: without one portshift would use its own Google identity, \
                 which console users may not borrow.",
            ));
        }
        Ok(())
    }

    /// One credential reference of a schedule. Tenants may use none that resolves on
    /// the server. Judged by its form alone: nothing is looked up, so the answer says
    /// nothing about the server's files or variables.
    pub fn check_reference(&self, field: &'static str, r: &CredentialRef) -> Result<(), Refusal> {
        if !self.is_tenant() {
            return Ok(());
        }
        // Exhaustive on purpose: a new kind of reference must be judged here.
        match r {
            CredentialRef::Env(_) => Err(refuse(
                field,
                format!("env: references are not available from the console: {REF_INSTEAD}."),
            )),
            CredentialRef::File(_) => Err(refuse(
                field,
                format!("file: references are not available from the console: {REF_INSTEAD}."),
            )),
            CredentialRef::AwsDefault => Err(refuse(
                field,
                format!("aws:default is not available from the console: {REF_INSTEAD}."),
            )),
            CredentialRef::AzureManagedIdentity => Err(refuse(
                field,
                format!("azure:managed-identity is not available from the console: {REF_INSTEAD}."),
            )),
            CredentialRef::GcpWorkloadIdentity => Err(refuse(
                field,
                format!("gcp:workload-identity is not available from the console: {REF_INSTEAD}."),
            )),
            // The customer's own role, assumed with the organisation's ExternalId: the
            // secret stays in the customer's account (docs/security.md).
            CredentialRef::AwsRole(_) => Ok(()),
        }
    }

    /// Every reference of a schedule; each refusal names its field. References that
    /// are not well-formed are left to `CredentialRefs::validate`.
    pub fn check_refs(&self, refs: &CredentialRefs) -> Vec<Refusal> {
        let fields: [(&'static str, Option<&String>); 5] = [
            ("chorus_token_ref", Some(&refs.chorus_token)),
            ("s3_ref", refs.s3.as_ref()),
            ("webhook_secret_ref", refs.webhook_secret.as_ref()),
            ("azure_ref", refs.azure.as_ref()),
            ("gcs_ref", refs.gcs.as_ref()),
        ];
        fields
            .into_iter()
            .filter_map(|(field, given)| {
                let r: CredentialRef = given?.parse().ok()?;
                self.check_reference(field, &r).err()
            })
            .collect()
    }

    /// A local folder the worker is about to write to: for tenants it must lie under
    /// the allowed root once symlinks are resolved (the part of the path that exists).
    pub fn check_local_folder(&self, path: &Path) -> Result<(), Refusal> {
        let Trust::Tenant(allow) = self else {
            return Ok(());
        };
        let field = "destination";
        let Some(root) = &allow.file_root else {
            return Err(refuse(
                field,
                "file:// destinations are not allowed for console jobs on this server.",
            ));
        };
        let mut existing = path.to_path_buf();
        let mut rest = Vec::new();
        while !existing.exists() {
            match (
                existing.file_name().map(|n| n.to_owned()),
                existing.parent(),
            ) {
                (Some(name), Some(parent)) => {
                    rest.push(name);
                    existing = parent.to_path_buf();
                }
                _ => break,
            }
        }
        let mut resolved = existing.canonicalize().unwrap_or(existing);
        for name in rest.into_iter().rev() {
            resolved.push(name);
        }
        if under_root(&resolved, root) {
            Ok(())
        } else {
            Err(refuse(
                field,
                format!(
                    "file:// destinations are allowed only under {} on this server.",
                    root.display()
                ),
            ))
        }
    }
}

fn not_public(field: &'static str, what: &str) -> Refusal {
    refuse(
        field,
        format!(
            "The {what} must be a public internet address; loopback, private, link-local and metadata addresses are not reachable from the console."
        ),
    )
}

/// Whether `path` (absolute, without `.`/`..`) lies at or under `root`, comparing
/// whole components.
fn under_root(path: &Path, root: &Path) -> bool {
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return false;
    }
    path.starts_with(root)
}

/// Whether an address is on the public internet: not loopback, private (RFC 1918),
/// link-local (with the cloud metadata address), CGNAT, multicast, unspecified,
/// broadcast, documentation, benchmarking or reserved; for IPv6 only global unicast,
/// and IPv4 embedded in IPv6 (mapped, compatible, NAT64, 6to4) judged as IPv4.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                   // "this network", unspecified
        || a == 10                             // private
        || a == 127                            // loopback
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 169 && b == 254)              // link-local, metadata 169.254.169.254
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)      // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)      // documentation
        || (a == 192 && b == 88 && c == 99)    // 6to4 relay anycast
        || (a == 192 && b == 168)              // private
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100)   // documentation
        || (a == 203 && b == 0 && c == 113)    // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // IPv4 carried in IPv6: judge the IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    if s[0..6] == [0, 0, 0, 0, 0, 0] {
        // ::, ::1 and the deprecated IPv4-compatible ::a.b.c.d: never public.
        return false;
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        // NAT64 64:ff9b::/96
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return is_public_v4(v4);
    }
    if s[0] == 0x2002 {
        // 6to4 2002:a.b.c.d::/48
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return is_public_v4(v4);
    }
    // Only global unicast 2000::/3 ...
    if s[0] & 0xe000 != 0x2000 {
        return false; // ULA fc00::/7 (fd00:ec2::254), link-local, multicast, 64:ff9b:1::/48, ...
    }
    // ... minus its special blocks: 2001::/23 (IETF protocol assignments: Teredo,
    // ORCHID, ...), documentation 2001:db8::/32 and 3fff::/20.
    let ietf = s[0] == 0x2001 && s[1] < 0x0200;
    let documentation = (s[0] == 0x2001 && s[1] == 0x0db8) || s[0] == 0x3fff;
    !(ietf || documentation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
        ] {
            assert!(!is_public_ip(ip(private)), "{private} counted as public");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
        ] {
            assert!(is_public_ip(ip(public)), "{public} counted as not public");
        }
    }

    fn tenant() -> Trust {
        Trust::tenant(Allowances::default())
    }

    #[test]
    fn tenants_reach_only_public_https_unless_allowed() {
        let t = tenant();
        assert!(t.check_chorus_url("https://chorus.ai/").is_ok());
        for bad in [
            "http://chorus.ai/",
            "https://127.0.0.1:8443/",
            "https://[::ffff:127.0.0.1]/",
            "https://169.254.169.254/latest/meta-data/",
            "https://2130706433/",
            "https://localhost:9/",
            "https://metadata.google.internal/",
            "https://[fd00:ec2::254]/",
        ] {
            let r = t.check_chorus_url(bad).unwrap_err();
            assert_eq!(r.field, "chorus_url");
        }
        let allow = Allowances::new(
            &[
                "http://127.0.0.1:7070".into(),
                "http://localhost:8080".into(),
            ],
            None,
        )
        .unwrap();
        let t = Trust::tenant(allow);
        assert!(t.check_chorus_url("http://127.0.0.1:7070/").is_ok());
        assert!(t.check_webhook_url("http://localhost:8080/hook").is_ok());
        // Only the allowed origin, not the host's other ports.
        assert!(t.check_chorus_url("http://127.0.0.1:7071/").is_err());
        assert!(t.check_chorus_url("https://localhost:8081/").is_err());
        assert!(
            Trust::Operator
                .check_chorus_url("http://127.0.0.1:1/")
                .is_ok()
        );
        assert!(Allowances::new(&["http://x:1/path".into()], None).is_err());
    }

    #[test]
    fn tenant_destinations_stay_off_the_servers_disk_and_network() {
        let t = tenant();
        let e = t.check_destination("file:///var/www/html").unwrap_err();
        assert!(e.message.contains("s3://"), "{e}");
        assert!(
            t.check_destination("s3://b/p?region=eu-west-1&endpoint=https://s3.tenant.example")
                .is_err()
        );
        assert!(t.check_destination("s3://b/p?region=eu-west-1").is_ok());
        assert!(
            t.check_destination("gs://b/p?endpoint=http://169.254.169.254")
                .is_err()
        );
        assert!(
            t.check_destination(
                "gs://b/p?bigquery=p.d.t&bigquery_endpoint=https://10.0.0.1/bigquery/v2"
            )
            .is_err()
        );
        assert!(
            t.check_destination("gs://b/p?endpoint=https://gcs.tenant.example")
                .is_ok()
        );

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("exports");
        std::fs::create_dir(&root).unwrap();
        let allow = Allowances::new(&[], Some(&root)).unwrap();
        let t = Trust::tenant(allow);
        let inside = format!("file://{}/org1/x", root.canonicalize().unwrap().display());
        assert!(t.check_destination(&inside).is_ok());
        assert!(t.check_destination("file:///etc/cron.d").is_err());
        // A symlink inside the root that leads out is caught when the worker writes.
        std::os::unix::fs::symlink("/tmp", root.join("out")).unwrap();
        let via_link = root.canonicalize().unwrap().join("out/x");
        assert!(t.check_local_folder(&via_link).is_err());
        assert!(
            t.check_local_folder(&root.canonicalize().unwrap().join("a/b"))
                .is_ok()
        );
    }

    #[test]
    fn tenants_must_bring_their_own_credentials() {
        let t = tenant();
        let none = Supplied::default();
        assert_eq!(
            t.check_destination_credentials("s3://b/p", none)
                .unwrap_err()
                .field,
            "s3_access_key_id"
        );
        assert!(t.check_destination_credentials("gs://b/p", none).is_err());
        assert!(
            t.check_destination_credentials("azure://acct/c/p", none)
                .is_err()
        );
        assert!(
            t.check_destination_credentials(
                "s3://b/p?bigquery=p.d.t",
                Supplied { s3: true, ..none }
            )
            .is_err()
        );
        assert!(
            Trust::Operator
                .check_destination_credentials("gs://b/p", none)
                .is_ok()
        );
    }

    #[test]
    fn server_side_references_are_refused_for_tenants_without_looking_them_up() {
        let refs = CredentialRefs {
            chorus_token: "env:HOME".into(),
            s3: Some("aws:default".into()),
            webhook_secret: Some("file:/etc/shadow".into()),
            azure: None,
            gcs: Some("gcp:workload-identity".into()),
        };
        let refused = tenant().check_refs(&refs);
        let fields: Vec<_> = refused.iter().map(|r| r.field).collect();
        assert_eq!(
            fields,
            [
                "chorus_token_ref",
                "s3_ref",
                "webhook_secret_ref",
                "gcs_ref"
            ]
        );
        // The same answer for a file that exists and one that does not.
        let a = tenant().check_reference("x", &"file:/etc/passwd".parse().unwrap());
        let b = tenant().check_reference("x", &"file:/nonexistent/zz".parse().unwrap());
        assert_eq!(a, b);
        assert!(Trust::Operator.check_refs(&refs).is_empty());
    }

    #[test]
    fn missing_trust_means_tenant() {
        use serde::Deserialize;
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default)]
            trust: Trust,
        }
        let d: Doc = serde_json::from_str("{}").unwrap();
        assert!(d.trust.is_tenant());
        let op = serde_json::to_string(&Trust::Operator).unwrap();
        assert_eq!(op, r#"{"level":"operator"}"#);
        let back: Trust =
            serde_json::from_str(r#"{"level":"tenant","origins":["http://127.0.0.1:1"]}"#).unwrap();
        assert_eq!(back.allowances().unwrap().origins, ["http://127.0.0.1:1"]);
    }
}
