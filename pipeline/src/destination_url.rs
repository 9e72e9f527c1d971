//! Destination URLs: the one model of "where an export goes", used alike by the CLI,
//! the console, the JSON API, schedules and the worker. It lives in `pipeline` so the
//! console (which depends only on `pipeline`) checks a destination exactly as the
//! worker will read it.
//!
//! Grammar: `file:///path`, `s3://bucket/prefix?region=..&endpoint=..&sse=aws:kms&kms_key_id=..`,
//! `azure://account/container/prefix?endpoint=..&encryption_scope=..`,
//! `gs://bucket/prefix?kms_key=..&endpoint=..`, and on any of them the optional
//! BigQuery metadata sink `&bigquery=project.dataset.table[&bigquery_endpoint=..]`.
//!
//! [`DestinationUrl`]'s `Display` renders every part (the sink included), percent-encoding
//! what needs it, so `render(x).parse() == x`: a job or schedule stores the rendering and
//! the worker reads back the same destination. Secrets never appear in a destination
//! URL: a URL that carries user info, or an option that looks like a SAS token or a
//! secret, is refused (the URL is stored with the job).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// A destination: where the files go, and optionally a BigQuery table that gets one
/// metadata row per exported recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationUrl {
    pub storage: Storage,
    pub bigquery: Option<BigQueryUrl>,
}

/// Where the files go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    /// A local folder (operators only; an absolute path without `.`/`..` parts).
    Local {
        root: PathBuf,
    },
    S3(S3Url),
    Azure(AzureUrl),
    Gcs(GcsUrl),
}

/// `s3://bucket/prefix?region=..&endpoint=..&sse=..&kms_key_id=..`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Object key prefix: `/`-separated, no empty, `.` or `..` segments.
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

/// Google's Cloud Storage JSON API root, used when a `gs://` URL names no endpoint.
pub const GCS_DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";

/// The blob service URL of an Azure storage account when an `azure://` URL names none.
pub fn azure_default_endpoint(account: &str) -> String {
    format!("https://{account}.blob.core.windows.net")
}

impl DestinationUrl {
    /// The URL scheme: `file`, `s3`, `azure` or `gs`.
    pub fn scheme(&self) -> &'static str {
        match &self.storage {
            Storage::Local { .. } => "file",
            Storage::S3(_) => "s3",
            Storage::Azure(_) => "azure",
            Storage::Gcs(_) => "gs",
        }
    }

    /// Every HTTP(S) endpoint this destination names or defaults to (storage first,
    /// then the BigQuery sink's); S3 without `endpoint=` (AWS itself) and BigQuery
    /// without `bigquery_endpoint=` (Google itself) add none.
    pub fn endpoints(&self) -> Vec<&str> {
        let mut out = Vec::new();
        match &self.storage {
            Storage::Local { .. } => {}
            Storage::S3(s) => out.extend(s.endpoint.as_deref()),
            Storage::Azure(a) => out.push(a.endpoint.as_str()),
            Storage::Gcs(g) => out.push(g.endpoint.as_str()),
        }
        if let Some(b) = &self.bigquery {
            out.extend(b.endpoint.as_deref());
        }
        out
    }
}

impl From<Storage> for DestinationUrl {
    fn from(storage: Storage) -> Self {
        DestinationUrl {
            storage,
            bigquery: None,
        }
    }
}

const EXPECTED: &str = "file:///absolute/path, \
s3://bucket/prefix?region=eu-west-1[&endpoint=https://host:port][&sse=AES256|aws:kms[&kms_key_id=KEY]], \
azure://account/container/prefix[?endpoint=https://host:port/account][&encryption_scope=SCOPE], \
gs://bucket/prefix[?kms_key=projects/P/locations/L/keyRings/R/cryptoKeys/K][&endpoint=https://host:port]; \
any of them may add &bigquery=project.dataset.table[&bigquery_endpoint=https://host:port/bigquery/v2]; \
write '#', '?', '%' and spaces in paths as %23, %3F, %25 and %20";

#[derive(Debug, thiserror::Error)]
#[error("invalid destination {given:?}: {problem}. Expected one of: {EXPECTED}")]
pub struct DestinationUrlError {
    given: String,
    problem: String,
}

impl DestinationUrlError {
    /// What is wrong, without the destination and the list of expected forms (for a
    /// form field's error message).
    pub fn problem(&self) -> &str {
        &self.problem
    }
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
    if ep.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(
            given,
            format!("the {name} contains spaces or control characters"),
        ));
    }
    let u = url::Url::parse(ep).map_err(|e| err(given, format!("{name}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(err(
            given,
            format!("the {name} must be an http:// or https:// URL"),
        ));
    }
    if u.query().is_some()
        || u.fragment().is_some()
        || !u.username().is_empty()
        || u.password().is_some()
    {
        return Err(err(
            given,
            format!(
                "the {name} must be a plain URL without query, fragment or credentials (a SAS token goes in the credentials, never in the URL)"
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

/// A segment the URL parser would silently resolve (`.`, `..` and their
/// percent-encoded spellings).
fn is_dot_segment(seg: &str) -> bool {
    matches!(
        seg.to_ascii_lowercase().as_str(),
        "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e."
    )
}

/// Percent-decodes a URL path into text; a prefix must be UTF-8.
fn decode_path(given: &str, path: &str) -> Result<String, DestinationUrlError> {
    percent_decode(path).ok_or_else(|| {
        err(
            given,
            "the path is not valid UTF-8 once its %XX escapes are decoded",
        )
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Appends `bytes` to `out`, percent-encoding every byte that is not ASCII
/// alphanumeric or in `keep`.
fn encode_into(out: &mut String, bytes: &[u8], keep: &[u8]) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// A path component's bytes: exact on Unix (file names need not be UTF-8).
#[cfg(unix)]
fn os_bytes(s: &std::ffi::OsStr) -> std::borrow::Cow<'_, [u8]> {
    use std::os::unix::ffi::OsStrExt;
    std::borrow::Cow::Borrowed(s.as_bytes())
}

#[cfg(not(unix))]
fn os_bytes(s: &std::ffi::OsStr) -> std::borrow::Cow<'_, [u8]> {
    match s.to_string_lossy() {
        std::borrow::Cow::Borrowed(t) => std::borrow::Cow::Borrowed(t.as_bytes()),
        std::borrow::Cow::Owned(t) => std::borrow::Cow::Owned(t.into_bytes()),
    }
}

/// Characters left as they are in a bucket prefix (`/` separates segments).
const PREFIX_KEEP: &[u8] = b"-._~!$'()*,;=:@/";
/// Characters left as they are in an option value: never `&`, `=`, `+`, `#` or `%`,
/// which the query syntax would read differently.
const VALUE_KEEP: &[u8] = b"-._~!$'()*,;:@/";
/// Characters left as they are in a local path segment; `\`, `|` and `:` are encoded
/// because `file:` URLs treat them specially (Windows drive letters, separators).
const LOCAL_KEEP: &[u8] = b"-._~!$'()*,;=@+&";

impl std::str::FromStr for DestinationUrl {
    type Err = DestinationUrlError;

    fn from_str(given: &str) -> Result<Self, Self::Err> {
        parse(given)
    }
}

/// The BigQuery sink a destination URL asks for, if any.
pub fn bigquery_of(given: &str) -> Result<Option<BigQueryUrl>, DestinationUrlError> {
    Ok(parse(given)?.bigquery)
}

fn parse(given: &str) -> Result<DestinationUrl, DestinationUrlError> {
    // The URL parser would silently resolve `.`/`..` segments; a destination that
    // is not what the user typed is refused instead.
    let path_part = given.split(['?', '#']).next().unwrap_or_default();
    if path_part.split('/').skip(3).any(is_dot_segment) {
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
    if parsed.fragment().is_some() {
        // Everything after '#' would silently not be part of the destination.
        return Err(err(
            given,
            "'#' starts a fragment, which a destination does not have; write a '#' in a path or option as %23",
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
    let bigquery = sink_of(given, &query)?;
    let storage = match parsed.scheme() {
        "file" => {
            only_known(given, &query, &[])?;
            if parsed.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(err(
                    given,
                    "a file:// URL names a local folder: file:///absolute/path (three slashes)",
                ));
            }
            let root = parsed
                .to_file_path()
                .map_err(|_| err(given, "not an absolute local path"))?;
            Storage::Local { root }
        }
        "s3" => {
            let bucket = parsed.host_str().unwrap_or_default().to_string();
            if bucket.is_empty() {
                return Err(err(given, "the bucket name is missing"));
            }
            // Lenient on purpose: S3-compatible servers and old AWS buckets allow
            // upper case and '_'; nothing here can break the URL's syntax.
            if bucket.len() > 255
                || !bucket
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(err(
                    given,
                    format!(
                        "{bucket:?} is not a valid bucket name (letters, digits, '-', '_', '.')"
                    ),
                ));
            }
            let prefix = crate::keys::normalize_prefix(&decode_path(given, parsed.path())?)
                .map_err(|p| err(given, p))?;
            only_known(given, &query, &["region", "endpoint", "sse", "kms_key_id"])?;
            let endpoint = match query.get("endpoint") {
                Some(ep) => Some(http_endpoint(given, "endpoint", ep)?),
                None => None,
            };
            let region = query.get("region").cloned();
            if let Some(r) = &region
                && (r.is_empty() || r.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                return Err(err(
                    given,
                    "region is empty or has spaces; give a region such as eu-west-1",
                ));
            }
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
            Storage::S3(S3Url {
                bucket,
                prefix,
                region,
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
            let prefix = crate::keys::normalize_prefix(&decode_path(given, rest)?)
                .map_err(|p| err(given, p))?;
            only_known(given, &query, &["endpoint", "encryption_scope"])?;
            let endpoint = match query.get("endpoint") {
                Some(ep) => http_endpoint(given, "endpoint", ep)?,
                None => azure_default_endpoint(&account),
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
            Storage::Azure(AzureUrl {
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
            let prefix = crate::keys::normalize_prefix(&decode_path(given, parsed.path())?)
                .map_err(|p| err(given, p))?;
            only_known(given, &query, &["kms_key", "endpoint"])?;
            let endpoint = match query.get("endpoint") {
                Some(ep) => http_endpoint(given, "endpoint", ep)?,
                None => GCS_DEFAULT_ENDPOINT.to_string(),
            };
            let kms_key = query.get("kms_key").cloned();
            if let Some(k) = &kms_key {
                let parts: Vec<&str> = k.split('/').collect();
                let ok = parts.len() == 8
                    && parts[0] == "projects"
                    && parts[2] == "locations"
                    && parts[4] == "keyRings"
                    && parts[6] == "cryptoKeys"
                    && parts
                        .iter()
                        .all(|p| !p.is_empty() && !p.chars().any(|c| c.is_whitespace()));
                if !ok {
                    return Err(err(
                        given,
                        "kms_key must be a full key name: projects/P/locations/L/keyRings/R/cryptoKeys/K",
                    ));
                }
            }
            Storage::Gcs(GcsUrl {
                bucket,
                prefix,
                endpoint,
                kms_key,
            })
        }
        other => return Err(err(given, format!("unknown scheme {other:?}"))),
    };
    Ok(DestinationUrl { storage, bigquery })
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
        let mut out = String::new();
        // Options in a fixed order; values encoded so the query reads back the same.
        let mut options: Vec<(&str, &str)> = Vec::new();
        match &self.storage {
            Storage::Local { root } => {
                out.push_str("file://");
                let mut any = false;
                for c in root.components() {
                    match c {
                        std::path::Component::RootDir | std::path::Component::Prefix(_) => {}
                        other => {
                            out.push('/');
                            encode_into(&mut out, os_bytes(other.as_os_str()).as_ref(), LOCAL_KEEP);
                            any = true;
                        }
                    }
                }
                if !any {
                    out.push('/');
                }
            }
            Storage::S3(s) => {
                out.push_str("s3://");
                out.push_str(&s.bucket);
                out.push('/');
                encode_into(&mut out, s.prefix.as_bytes(), PREFIX_KEEP);
                if let Some(r) = &s.region {
                    options.push(("region", r.as_str()));
                }
                if let Some(e) = &s.endpoint {
                    options.push(("endpoint", e.as_str()));
                }
                match &s.sse {
                    None => {}
                    Some(S3Encryption::Aes256) => options.push(("sse", "AES256")),
                    Some(S3Encryption::Kms { key_id }) => {
                        options.push(("sse", "aws:kms"));
                        if let Some(k) = key_id {
                            options.push(("kms_key_id", k.as_str()));
                        }
                    }
                }
            }
            Storage::Azure(a) => {
                out.push_str("azure://");
                out.push_str(&a.account);
                out.push('/');
                out.push_str(&a.container);
                if !a.prefix.is_empty() {
                    out.push('/');
                    encode_into(&mut out, a.prefix.as_bytes(), PREFIX_KEEP);
                }
                // The default endpoint is left out: shorter, and it reads back the same.
                if a.endpoint != azure_default_endpoint(&a.account) {
                    options.push(("endpoint", a.endpoint.as_str()));
                }
                if let Some(s) = &a.encryption_scope {
                    options.push(("encryption_scope", s.as_str()));
                }
            }
            Storage::Gcs(g) => {
                out.push_str("gs://");
                out.push_str(&g.bucket);
                out.push('/');
                encode_into(&mut out, g.prefix.as_bytes(), PREFIX_KEEP);
                if g.endpoint != GCS_DEFAULT_ENDPOINT {
                    options.push(("endpoint", g.endpoint.as_str()));
                }
                if let Some(k) = &g.kms_key {
                    options.push(("kms_key", k.as_str()));
                }
            }
        }
        let table;
        if let Some(b) = &self.bigquery {
            table = format!("{}.{}.{}", b.project, b.dataset, b.table);
            options.push(("bigquery", table.as_str()));
            if let Some(e) = &b.endpoint {
                options.push(("bigquery_endpoint", e.as_str()));
            }
        }
        for (i, (k, v)) in options.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            out.push_str(k);
            out.push('=');
            encode_into(&mut out, v.as_bytes(), VALUE_KEEP);
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> DestinationUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_the_documented_forms() {
        let d = parse("s3://calls/exports/2024?region=eu-west-1&endpoint=http://127.0.0.1:19100");
        assert_eq!(
            d,
            DestinationUrl::from(Storage::S3(S3Url {
                bucket: "calls".into(),
                prefix: "exports/2024".into(),
                region: Some("eu-west-1".into()),
                endpoint: Some("http://127.0.0.1:19100".into()),
                sse: None,
            }))
        );
        let l = parse("file:///tmp/export");
        assert_eq!(
            l,
            DestinationUrl::from(Storage::Local {
                root: "/tmp/export".into()
            })
        );
    }

    #[test]
    fn parses_the_cloud_forms_and_the_sink() {
        let a = parse(
            "azure://acct1/calls/2024/q1?endpoint=http://127.0.0.1:10000/devstoreaccount1&encryption_scope=cmk1",
        );
        assert_eq!(
            a.storage,
            Storage::Azure(AzureUrl {
                account: "acct1".into(),
                container: "calls".into(),
                prefix: "2024/q1".into(),
                endpoint: "http://127.0.0.1:10000/devstoreaccount1".into(),
                encryption_scope: Some("cmk1".into()),
            })
        );
        let Storage::Azure(a) = parse("azure://acct1/calls").storage else {
            panic!()
        };
        assert_eq!(a.endpoint, "https://acct1.blob.core.windows.net");
        assert_eq!(a.prefix, "");
        let key = "projects/p/locations/eu/keyRings/r/cryptoKeys/k";
        let g = parse(&format!("gs://my-bucket/exports?kms_key={key}"));
        assert_eq!(
            g.storage,
            Storage::Gcs(GcsUrl {
                bucket: "my-bucket".into(),
                prefix: "exports".into(),
                endpoint: "https://storage.googleapis.com".into(),
                kms_key: Some(key.into()),
            })
        );
        let Storage::S3(s) = parse("s3://b/p?sse=aws:kms&kms_key_id=alias/exports").storage else {
            panic!()
        };
        assert_eq!(
            s.sse,
            Some(S3Encryption::Kms {
                key_id: Some("alias/exports".into())
            })
        );
        let s = parse("s3://b/p?sse=AES256");
        assert!(s.to_string().contains("sse=AES256"), "{s}");
        let given = "gs://b-1/p?bigquery=my-proj.calls.recordings&bigquery_endpoint=http://127.0.0.1:19050/bigquery/v2";
        let sink = Some(BigQueryUrl {
            project: "my-proj".into(),
            dataset: "calls".into(),
            table: "recordings".into(),
            endpoint: Some("http://127.0.0.1:19050/bigquery/v2".into()),
        });
        assert_eq!(bigquery_of(given).unwrap(), sink);
        assert_eq!(parse(given).bigquery, sink);
        assert_eq!(bigquery_of("file:///tmp/x").unwrap(), None);
        assert!(
            bigquery_of("file:///tmp/x?bigquery=p.d.t")
                .unwrap()
                .is_some()
        );
    }

    /// The bug of issue 15: the rendering a job stores must keep the BigQuery sink.
    #[test]
    fn the_rendering_keeps_the_sink_and_every_option() {
        for given in [
            "file:///tmp/out?bigquery=portshift-test.ceo.recordings&bigquery_endpoint=http://127.0.0.1:19050/bigquery/v2",
            "s3://calls/exports/2024?region=eu-west-1&endpoint=http://127.0.0.1:19100&sse=aws:kms&kms_key_id=arn:aws:kms:eu-west-1:1:key/abc&bigquery=p.d.t",
            "azure://acct1/calls/2024?endpoint=http://127.0.0.1:10000/devstoreaccount1&encryption_scope=cmk1&bigquery=p.d.t",
            "gs://b-1/p?endpoint=http://127.0.0.1:4443&kms_key=projects/p/locations/eu/keyRings/r/cryptoKeys/k&bigquery=p.d.t&bigquery_endpoint=https://bq.example/bigquery/v2",
            "azure://acct1/calls",
            "gs://b-1/",
        ] {
            let d = parse(given);
            assert_eq!(d.to_string(), given, "renders as typed");
            assert_eq!(parse(&d.to_string()), d);
        }
    }

    #[test]
    fn local_paths_with_special_characters_survive_a_round_trip() {
        for root in [
            "/tmp/a#b",
            "/tmp/what?x=1",
            "/tmp/100%",
            "/tmp/my export",
            "/tmp/Grüße/日本",
            "/tmp/a\\b",
            "/tmp/C|",
            "/tmp/c:",
            "/tmp/%2e%2e",
            "/tmp/a+b&c=d",
            "/",
        ] {
            let d = DestinationUrl::from(Storage::Local { root: root.into() });
            let shown = d.to_string();
            assert_eq!(parse(&shown), d, "{root} -> {shown}");
        }
        // What a user types with the escapes reads as the folder they mean.
        assert_eq!(
            parse("file:///tmp/my%20export%23").storage,
            Storage::Local {
                root: "/tmp/my export#".into()
            }
        );
    }

    #[test]
    fn prefixes_are_decoded_and_encoded() {
        let Storage::S3(s) = parse("s3://b/calls%20q1/50%25/%23x").storage else {
            panic!()
        };
        assert_eq!(s.prefix, "calls q1/50%/#x");
        let d = DestinationUrl::from(Storage::S3(S3Url {
            bucket: "b".into(),
            prefix: "a?b/c#d/e&f/ü".into(),
            region: None,
            endpoint: None,
            sse: None,
        }));
        assert_eq!(parse(&d.to_string()), d);
    }

    #[test]
    fn endpoints_lists_what_the_worker_will_contact() {
        let d = parse(
            "azure://acct1/calls?bigquery=p.d.t&bigquery_endpoint=http://127.0.0.1:19050/bigquery/v2",
        );
        assert_eq!(
            d.endpoints(),
            [
                "https://acct1.blob.core.windows.net",
                "http://127.0.0.1:19050/bigquery/v2"
            ]
        );
        assert_eq!(parse("s3://b/p").endpoints(), Vec::<&str>::new());
        assert_eq!(parse("file:///x").scheme(), "file");
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
            "s3://b/x/%2e%2E/y",
            "file:///tmp/%2e%2e/etc",
            "s3://b/p?endpoint=ftp://x",
            "s3://b/p?region=",
            "file:///tmp/a#b",
            "file://host/tmp/x",
            "s3://b/p?endpoint=http://h/#frag",
        ] {
            let e = bad.parse::<DestinationUrl>().unwrap_err().to_string();
            assert!(e.contains("Expected one of"), "{bad}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
