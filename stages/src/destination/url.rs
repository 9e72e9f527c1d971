//! Destination URLs: one grammar for the CLI, the API and the console.
//! `file:///path`, `s3://bucket/prefix?region=..&endpoint=..&sse=aws:kms&kms_key_id=..`,
//! `azure://account/container/prefix?endpoint=..&encryption_scope=..`,
//! `gs://bucket/prefix?kms_key=..&endpoint=..`, and on any of them the optional
//! BigQuery metadata sink `&bigquery=project.dataset.table`. Secrets never appear in a
//! destination URL: a URL that carries user info, or an option that looks like a SAS
//! token or a secret, is refused (the URL is stored with the job).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestinationUrl {
    Local { root: PathBuf },
    S3(S3Url),
    Azure(AzureUrl),
    Gcs(GcsUrl),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: String,
    pub region: Option<String>,
    /// For S3-compatible servers; implies path-style addressing.
    pub endpoint: Option<String>,
    /// Server-side encryption asked for on every object (`sse=AES256|aws:kms`).
    pub sse: Option<S3Encryption>,
}

/// S3 server-side encryption: SSE-S3 (`AES256`) or SSE-KMS (`aws:kms`, optionally
/// with the customer's key id; without one S3 uses the account's `aws/s3` key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum S3Encryption {
    Aes256,
    Kms { key_id: Option<String> },
}

/// `azure://account/container/prefix?endpoint=..&encryption_scope=..`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureUrl {
    pub account: String,
    pub container: String,
    pub prefix: String,
    /// The blob service URL; `https://<account>.blob.core.windows.net` unless given
    /// (Azurite: `http://127.0.0.1:10000/devstoreaccount1`).
    pub endpoint: String,
    /// An encryption scope defined on the storage account (customer-managed keys).
    pub encryption_scope: Option<String>,
}

/// `gs://bucket/prefix?kms_key=projects/../cryptoKeys/..&endpoint=..`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcsUrl {
    pub bucket: String,
    pub prefix: String,
    /// The JSON API root; `https://storage.googleapis.com` unless given (emulators).
    pub endpoint: String,
    /// A Cloud KMS key (`projects/P/locations/L/keyRings/R/cryptoKeys/K`) that
    /// encrypts every object (CMEK).
    pub kms_key: Option<String>,
}

/// The optional BigQuery metadata sink, given as options on any destination URL:
/// `...?bigquery=project.dataset.table[&bigquery_endpoint=https://..]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BigQueryUrl {
    pub project: String,
    pub dataset: String,
    pub table: String,
    /// The REST root up to `/bigquery/v2`; Google's unless given (emulators).
    pub endpoint: Option<String>,
}

const EXPECTED: &str = "file:///absolute/path, \
s3://bucket/prefix?region=eu-west-1[&endpoint=https://host:port][&sse=AES256|aws:kms[&kms_key_id=KEY]], \
azure://account/container/prefix[?endpoint=https://host:port/account][&encryption_scope=SCOPE], \
gs://bucket/prefix[?kms_key=projects/P/locations/L/keyRings/R/cryptoKeys/K][&endpoint=https://host:port]; \
any of them may add &bigquery=project.dataset.table[&bigquery_endpoint=https://host:port/bigquery/v2]";

#[derive(Debug, thiserror::Error)]
#[error("invalid destination {given:?}: {problem}. Expected one of: {EXPECTED}")]
pub struct DestinationUrlError {
    given: String,
    problem: String,
}

fn err(given: &str, problem: impl Into<String>) -> DestinationUrlError {
    // A URL whose options look like a secret (a pasted SAS URL, say) is shown without
    // its options: the error ends up in logs and job records.
    let lower = given.to_ascii_lowercase();
    let shown = if ["sig=", "sv=", "token", "secret", "password"]
        .iter()
        .any(|s| lower.contains(s))
    {
        format!(
            "{}?[options hidden]",
            given.split('?').next().unwrap_or_default()
        )
    } else {
        given.to_string()
    };
    DestinationUrlError {
        given: shown.chars().take(200).collect(),
        problem: problem.into(),
    }
}

/// The BigQuery options, valid on every scheme.
const SINK_OPTIONS: [&str; 2] = ["bigquery", "bigquery_endpoint"];

/// Refuses options a scheme does not know, naming the ones it does.
fn only_known(
    given: &str,
    query: &BTreeMap<String, String>,
    known: &[&str],
) -> Result<(), DestinationUrlError> {
    for k in query.keys() {
        if !known.contains(&k.as_str()) && !SINK_OPTIONS.contains(&k.as_str()) {
            let mut all: Vec<&str> = known.to_vec();
            all.extend(SINK_OPTIONS);
            return Err(err(
                given,
                format!("unknown option {k:?} (known: {})", all.join(", ")),
            ));
        }
    }
    Ok(())
}

fn http_endpoint(given: &str, name: &str, ep: &str) -> Result<String, DestinationUrlError> {
    let u = url::Url::parse(ep).map_err(|e| err(given, format!("{name}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(err(
            given,
            format!("the {name} must be an http:// or https:// URL"),
        ));
    }
    if u.query().is_some() || !u.username().is_empty() || u.password().is_some() {
        return Err(err(
            given,
            format!(
                "the {name} must be a plain URL without query or credentials (a SAS token goes in the credentials, never in the URL)"
            ),
        ));
    }
    Ok(ep.trim_end_matches('/').to_string())
}

/// Letters, digits and `-`, 3 to 63 long (also what Azure allows for containers).
fn dns_label(name: &str, max: usize) -> bool {
    (3..=max).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl std::str::FromStr for DestinationUrl {
    type Err = DestinationUrlError;

    fn from_str(given: &str) -> Result<Self, Self::Err> {
        let (dest, _sink) = parse(given)?;
        Ok(dest)
    }
}

/// The BigQuery sink a destination URL asks for, if any.
pub fn bigquery_of(given: &str) -> Result<Option<BigQueryUrl>, DestinationUrlError> {
    Ok(parse(given)?.1)
}

fn parse(given: &str) -> Result<(DestinationUrl, Option<BigQueryUrl>), DestinationUrlError> {
    // The URL parser would silently resolve `.`/`..` segments; a destination that
    // is not what the user typed is refused instead.
    let path_part = given.split(['?', '#']).next().unwrap_or_default();
    if path_part
        .split('/')
        .skip(3)
        .any(|seg| seg == "." || seg == "..")
    {
        return Err(err(
            given,
            "the path contains '.' or '..' segments; write the path plainly",
        ));
    }
    let parsed = url::Url::parse(given).map_err(|e| err(given, e.to_string()))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        let mut shown = parsed.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        return Err(err(
            shown.as_str(),
            "credentials must not be part of the URL (they would be stored); pass them through the environment or the credentials form",
        ));
    }
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in parsed.query_pairs() {
        if query.insert(k.to_string(), v.to_string()).is_some() {
            return Err(err(given, format!("the option {k:?} is given twice")));
        }
    }
    if let Some(k) = query.keys().find(|k| {
        let k = k.to_ascii_lowercase();
        k == "sig" || k == "sv" || k.contains("token") || k.contains("secret")
    }) {
        return Err(err(
            given,
            format!(
                "the option {k:?} looks like a secret; secrets never go in the destination URL (it is stored): pass them through the credentials"
            ),
        ));
    }
    let sink = sink_of(given, &query)?;
    let dest = match parsed.scheme() {
        "file" => {
            only_known(given, &query, &[])?;
            let root = parsed
                .to_file_path()
                .map_err(|_| err(given, "not an absolute local path"))?;
            DestinationUrl::Local { root }
        }
        "s3" => {
            let bucket = parsed.host_str().unwrap_or_default().to_string();
            if bucket.is_empty() {
                return Err(err(given, "the bucket name is missing"));
            }
            let prefix =
                pipeline::keys::normalize_prefix(parsed.path()).map_err(|p| err(given, p))?;
            only_known(given, &query, &["region", "endpoint", "sse", "kms_key_id"])?;
            let endpoint = match query.get("endpoint") {
                Some(ep) => Some(http_endpoint(given, "endpoint", ep)?),
                None => None,
            };
            let sse = match (
                query.get("sse").map(String::as_str),
                query.get("kms_key_id"),
            ) {
                (None, None) => None,
                (Some("AES256"), None) => Some(S3Encryption::Aes256),
                (Some("aws:kms"), key) => {
                    if let Some(k) = key
                        && (k.is_empty() || k.chars().any(|c| c.is_whitespace() || c.is_control()))
                    {
                        return Err(err(
                            given,
                            "kms_key_id is empty or has spaces; give a KMS key id, ARN or alias",
                        ));
                    }
                    Some(S3Encryption::Kms {
                        key_id: key.cloned(),
                    })
                }
                (Some("AES256") | None, Some(_)) => {
                    return Err(err(given, "kms_key_id needs sse=aws:kms"));
                }
                (Some(other), _) => {
                    return Err(err(
                        given,
                        format!(
                            "sse={other:?} is not known: use sse=AES256 (SSE-S3) or sse=aws:kms (SSE-KMS)"
                        ),
                    ));
                }
            };
            DestinationUrl::S3(S3Url {
                bucket,
                prefix,
                region: query.get("region").cloned(),
                endpoint,
                sse,
            })
        }
        "azure" => {
            let account = parsed.host_str().unwrap_or_default().to_string();
            if account.is_empty() {
                return Err(err(given, "the storage account name is missing"));
            }
            if !(3..=24).contains(&account.len())
                || !account
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                return Err(err(
                    given,
                    "the storage account name must be 3 to 24 lowercase letters and digits",
                ));
            }
            let path = parsed.path().trim_start_matches('/');
            let (container, rest) = path.split_once('/').unwrap_or((path, ""));
            if container.is_empty() {
                return Err(err(given, "the container name is missing"));
            }
            if !dns_label(container, 63) || container.contains("--") {
                return Err(err(
                    given,
                    format!(
                        "{container:?} is not a valid container name (3 to 63 lowercase letters, digits and single dashes)"
                    ),
                ));
            }
            let prefix = pipeline::keys::normalize_prefix(rest).map_err(|p| err(given, p))?;
            only_known(given, &query, &["endpoint", "encryption_scope"])?;
            let endpoint = match query.get("endpoint") {
                Some(ep) => http_endpoint(given, "endpoint", ep)?,
                None => format!("https://{account}.blob.core.windows.net"),
            };
            let encryption_scope = query.get("encryption_scope").cloned();
            if let Some(s) = &encryption_scope
                && (s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            {
                return Err(err(
                    given,
                    "encryption_scope must be the scope's name (letters, digits, '-')",
                ));
            }
            DestinationUrl::Azure(AzureUrl {
                account,
                container: container.to_string(),
                prefix,
                endpoint,
                encryption_scope,
            })
        }
        "gs" => {
            let bucket = parsed.host_str().unwrap_or_default().to_string();
            if bucket.is_empty() {
                return Err(err(given, "the bucket name is missing"));
            }
            if !(3..=222).contains(&bucket.len())
                || !bucket.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
                })
            {
                return Err(err(
                    given,
                    format!(
                        "{bucket:?} is not a valid bucket name (lowercase letters, digits, '-', '_', '.')"
                    ),
                ));
            }
            let prefix =
                pipeline::keys::normalize_prefix(parsed.path()).map_err(|p| err(given, p))?;
            only_known(given, &query, &["kms_key", "endpoint"])?;
            let endpoint = match query.get("endpoint") {
                Some(ep) => http_endpoint(given, "endpoint", ep)?,
                None => "https://storage.googleapis.com".to_string(),
            };
            let kms_key = query.get("kms_key").cloned();
            if let Some(k) = &kms_key {
                let parts: Vec<&str> = k.split('/').collect();
                let ok = parts.len() == 8
                    && parts[0] == "projects"
                    && parts[2] == "locations"
                    && parts[4] == "keyRings"
                    && parts[6] == "cryptoKeys"
                    && parts.iter().all(|p| !p.is_empty());
                if !ok {
                    return Err(err(
                        given,
                        "kms_key must be a full key name: projects/P/locations/L/keyRings/R/cryptoKeys/K",
                    ));
                }
            }
            DestinationUrl::Gcs(GcsUrl {
                bucket,
                prefix,
                endpoint,
                kms_key,
            })
        }
        other => return Err(err(given, format!("unknown scheme {other:?}"))),
    };
    Ok((dest, sink))
}

fn sink_of(
    given: &str,
    query: &BTreeMap<String, String>,
) -> Result<Option<BigQueryUrl>, DestinationUrlError> {
    let Some(spec) = query.get("bigquery") else {
        if query.contains_key("bigquery_endpoint") {
            return Err(err(
                given,
                "bigquery_endpoint needs bigquery=project.dataset.table",
            ));
        }
        return Ok(None);
    };
    let parts: Vec<&str> = spec.split('.').collect();
    let valid = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.len() <= 1024
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c))
    };
    if parts.len() != 3
        || !valid(parts[0], &['-'])
        || !valid(parts[1], &[])
        || !valid(parts[2], &[])
    {
        return Err(err(
            given,
            "bigquery must be project.dataset.table (letters, digits and '_'; the project may have '-')",
        ));
    }
    let endpoint = match query.get("bigquery_endpoint") {
        Some(ep) => Some(http_endpoint(given, "bigquery_endpoint", ep)?),
        None => None,
    };
    Ok(Some(BigQueryUrl {
        project: parts[0].to_string(),
        dataset: parts[1].to_string(),
        table: parts[2].to_string(),
        endpoint,
    }))
}

impl fmt::Display for DestinationUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DestinationUrl::Local { root } => write!(f, "file://{}", root.display()),
            DestinationUrl::S3(s) => {
                write!(f, "s3://{}/{}", s.bucket, s.prefix)?;
                let mut sep = '?';
                let mut opt = |f: &mut fmt::Formatter<'_>, k: &str, v: &str| {
                    let r = write!(f, "{sep}{k}={v}");
                    sep = '&';
                    r
                };
                if let Some(r) = &s.region {
                    opt(f, "region", r)?;
                }
                if let Some(e) = &s.endpoint {
                    opt(f, "endpoint", e)?;
                }
                match &s.sse {
                    None => {}
                    Some(S3Encryption::Aes256) => opt(f, "sse", "AES256")?,
                    Some(S3Encryption::Kms { key_id }) => {
                        opt(f, "sse", "aws:kms")?;
                        if let Some(k) = key_id {
                            opt(f, "kms_key_id", k)?;
                        }
                    }
                }
                Ok(())
            }
            DestinationUrl::Azure(a) => {
                write!(f, "azure://{}/{}/{}", a.account, a.container, a.prefix)?;
                write!(f, "?endpoint={}", a.endpoint)?;
                if let Some(s) = &a.encryption_scope {
                    write!(f, "&encryption_scope={s}")?;
                }
                Ok(())
            }
            DestinationUrl::Gcs(g) => {
                write!(f, "gs://{}/{}?endpoint={}", g.bucket, g.prefix, g.endpoint)?;
                if let Some(k) = &g.kms_key {
                    write!(f, "&kms_key={k}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let d: DestinationUrl =
            "s3://calls/exports/2024?region=eu-west-1&endpoint=http://127.0.0.1:19100"
                .parse()
                .unwrap();
        assert_eq!(
            d,
            DestinationUrl::S3(S3Url {
                bucket: "calls".into(),
                prefix: "exports/2024".into(),
                region: Some("eu-west-1".into()),
                endpoint: Some("http://127.0.0.1:19100".into()),
                sse: None,
            })
        );
        let l: DestinationUrl = "file:///tmp/export".parse().unwrap();
        assert_eq!(
            l,
            DestinationUrl::Local {
                root: "/tmp/export".into()
            }
        );
    }

    #[test]
    fn parses_the_cloud_forms_and_the_sink() {
        let a: DestinationUrl =
            "azure://acct1/calls/2024/q1?endpoint=http://127.0.0.1:10000/devstoreaccount1&encryption_scope=cmk1"
                .parse()
                .unwrap();
        assert_eq!(
            a,
            DestinationUrl::Azure(AzureUrl {
                account: "acct1".into(),
                container: "calls".into(),
                prefix: "2024/q1".into(),
                endpoint: "http://127.0.0.1:10000/devstoreaccount1".into(),
                encryption_scope: Some("cmk1".into()),
            })
        );
        let a: DestinationUrl = "azure://acct1/calls".parse().unwrap();
        let DestinationUrl::Azure(a) = a else {
            panic!()
        };
        assert_eq!(a.endpoint, "https://acct1.blob.core.windows.net");
        assert_eq!(a.prefix, "");
        let key = "projects/p/locations/eu/keyRings/r/cryptoKeys/k";
        let g: DestinationUrl = format!("gs://my-bucket/exports?kms_key={key}")
            .parse()
            .unwrap();
        assert_eq!(
            g,
            DestinationUrl::Gcs(GcsUrl {
                bucket: "my-bucket".into(),
                prefix: "exports".into(),
                endpoint: "https://storage.googleapis.com".into(),
                kms_key: Some(key.into()),
            })
        );
        let s: DestinationUrl = "s3://b/p?sse=aws:kms&kms_key_id=alias/exports"
            .parse()
            .unwrap();
        let DestinationUrl::S3(s) = s else { panic!() };
        assert_eq!(
            s.sse,
            Some(S3Encryption::Kms {
                key_id: Some("alias/exports".into())
            })
        );
        let s: DestinationUrl = "s3://b/p?sse=AES256".parse().unwrap();
        assert!(s.to_string().contains("sse=AES256"), "{s}");
        let given = "gs://b-1/p?bigquery=my-proj.calls.recordings&bigquery_endpoint=http://127.0.0.1:19050/bigquery/v2";
        assert_eq!(
            bigquery_of(given).unwrap(),
            Some(BigQueryUrl {
                project: "my-proj".into(),
                dataset: "calls".into(),
                table: "recordings".into(),
                endpoint: Some("http://127.0.0.1:19050/bigquery/v2".into()),
            })
        );
        assert!(given.parse::<DestinationUrl>().is_ok());
        assert_eq!(bigquery_of("file:///tmp/x").unwrap(), None);
        assert!(
            bigquery_of("file:///tmp/x?bigquery=p.d.t")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn malformed_cloud_urls_explain_the_expected_form() {
        for bad in [
            "azure://acct1",
            "azure:///calls",
            "azure://Bad_Account/calls",
            "azure://acct1/Calls",
            "azure://acct1/calls?sig=CANARY",
            "azure://acct1/calls?sas_token=CANARY",
            "azure://acct1/calls?endpoint=http://h/?sv=CANARY",
            "gs:///p",
            "gs://b/p?kms_key=mykey",
            "gs://b/p?colour=red",
            "s3://b/p?sse=aws:kms&sse=AES256",
            "s3://b/p?sse=rot13",
            "s3://b/p?kms_key_id=k",
            "s3://b/p?sse=AES256&kms_key_id=k",
            "s3://b/p?bigquery=only-two.parts",
            "s3://b/p?bigquery_endpoint=http://x",
            "gs://b/p?bigquery=p.d.t&bigquery_endpoint=ftp://x",
        ] {
            let e = bad.parse::<DestinationUrl>().unwrap_err().to_string();
            assert!(e.contains("Expected one of"), "{bad}: {e}");
            assert!(e.contains("azure://account/container/prefix"), "{bad}: {e}");
            if bad.contains("CANARY") {
                assert!(
                    e.contains("secret") || e.contains("credentials"),
                    "{bad}: {e}"
                );
            }
        }
    }

    #[test]
    fn malformed_urls_explain_the_expected_form() {
        for bad in [
            "s3:///nobucket",
            "s3://b/p?colour=red",
            "s3://key:secret@bucket/p",
            "ftp://x/y",
            "relative/path",
            "s3://b/../x",
            "s3://b/p?endpoint=ftp://x",
        ] {
            let e = bad.parse::<DestinationUrl>().unwrap_err().to_string();
            assert!(e.contains("Expected one of"), "{bad}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
