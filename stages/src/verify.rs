//! `portshift verify` and the `--verify-after` stage: re-reads an export and checks
//! every file against its `portshift-manifest.txt` (or a scheduled run's
//! `portshift-manifest-<job>.txt`), the same check `sha256sum -c` does, for destinations
//! the user cannot easily download. Works on every destination through
//! [`Destination::open`]; each file streams through SHA-256 in chunks, so memory is
//! bounded by `concurrency` × the chunk size whatever the file sizes. Needs read access,
//! which exporting never does (docs/permissions.md).

use futures::{StreamExt, TryStreamExt};
use pipeline::keys::MANIFEST_TXT;
use sha2::{Digest, Sha256};

use crate::destination::{Destination, DestinationError};

#[derive(Debug, Default)]
pub struct VerifyReport {
    /// SHA-256 of the manifest as read back.
    pub manifest_sha256: String,
    /// The manifest's bytes as read back (small: one line per file).
    pub manifest: Vec<u8>,
    pub checked: u64,
    pub bytes: u64,
    pub mismatched: Vec<String>,
    pub missing: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.mismatched.is_empty() && self.missing.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("could not read {name}: {source}. Is this the root of a finished export?")]
    NoManifest {
        name: String,
        source: DestinationError,
    },
    #[error("the manifest's line {line} is not `<64 hex>  <path>`; the manifest was altered")]
    BadLine { line: usize },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: DestinationError,
    },
}

/// Parses `sha256sum` lines into `(hex, path)`.
pub fn parse_manifest(text: &str) -> Result<Vec<(String, String)>, VerifyError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| {
            let (hash, path) = l
                .split_once("  ")
                .ok_or(VerifyError::BadLine { line: i + 1 })?;
            if hash.len() != 64
                || !hash.bytes().all(|b| b.is_ascii_hexdigit())
                || !pipeline::keys::is_safe_relative(path)
            {
                return Err(VerifyError::BadLine { line: i + 1 });
            }
            Ok((hash.to_ascii_lowercase(), path.to_string()))
        })
        .collect()
}

/// Checks the export against `portshift-manifest.txt`.
pub async fn verify(
    dest: &dyn Destination,
    concurrency: usize,
) -> Result<VerifyReport, VerifyError> {
    verify_manifest(dest, MANIFEST_TXT, concurrency).await
}

/// Reads a whole small object (a manifest or its signature).
pub async fn read_small(dest: &dyn Destination, name: &str) -> Result<Vec<u8>, VerifyError> {
    let no_manifest = |source| VerifyError::NoManifest {
        name: name.to_string(),
        source,
    };
    let body = dest.open(name).await.map_err(no_manifest)?;
    body.try_fold(Vec::new(), |mut acc, c| async move {
        // A manifest line is under 1.2 KiB; 1 GiB would be ~a million files more than
        // any export has. Refuse rather than grow without bound.
        if acc.len() + c.len() > 1 << 30 {
            return Err(std::io::Error::other("larger than 1 GiB"));
        }
        acc.extend_from_slice(&c);
        Ok(acc)
    })
    .await
    .map_err(|e| no_manifest(DestinationError::Source(e)))
}

/// Checks the export against the manifest called `manifest` at its root.
pub async fn verify_manifest(
    dest: &dyn Destination,
    manifest: &str,
    concurrency: usize,
) -> Result<VerifyReport, VerifyError> {
    let bytes = read_small(dest, manifest).await?;
    let entries = parse_manifest(&String::from_utf8_lossy(&bytes))?;
    let results = futures::stream::iter(entries)
        .map(|(hash, path)| async move {
            match dest.open(&path).await {
                Err(DestinationError::NotFound(_)) => Ok((path, None)),
                Err(source) => Err(VerifyError::Read { path, source }),
                Ok(mut s) => {
                    let mut h = Sha256::new();
                    let mut n = 0u64;
                    while let Some(chunk) = s.next().await {
                        let chunk = chunk.map_err(|e| VerifyError::Read {
                            path: path.clone(),
                            source: DestinationError::Source(e),
                        })?;
                        n += chunk.len() as u64;
                        h.update(&chunk);
                    }
                    let ok = hex::encode(h.finalize()) == hash;
                    Ok((path, Some((ok, n))))
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut report = VerifyReport {
        manifest_sha256: hex::encode(Sha256::digest(&bytes)),
        manifest: bytes,
        ..VerifyReport::default()
    };
    for r in results {
        let (path, outcome) = r?;
        match outcome {
            None => report.missing.push(path),
            Some((ok, n)) => {
                report.checked += 1;
                report.bytes += n;
                if !ok {
                    report.mismatched.push(path);
                }
            }
        }
    }
    report.missing.sort();
    report.mismatched.sort();
    Ok(report)
}

/// Is `path` a scheduled run's manifest name (`portshift-manifest-<job>.txt`)?
pub fn is_run_manifest(path: &str) -> bool {
    path.strip_prefix("portshift-manifest-")
        .and_then(|rest| rest.strip_suffix(".txt"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// One manifest of a chain and what checking it found.
#[derive(Debug)]
pub struct ChainLink {
    pub manifest: String,
    pub report: Result<VerifyReport, VerifyError>,
}

impl ChainLink {
    pub fn ok(&self) -> bool {
        self.report.as_ref().is_ok_and(VerifyReport::ok)
    }
}

/// Checks a chain of scheduled runs from `head` (the newest run's manifest) back to the
/// first: every manifest's files, and through its `<sha256>  portshift-manifest-<job>.txt`
/// line the exact bytes of the run before. Stops where a link is missing or broken
/// (that link's report says so); the returned list is newest first.
pub async fn verify_chain(
    dest: &dyn Destination,
    head: &str,
    concurrency: usize,
) -> Vec<ChainLink> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut next = Some(head.to_string());
    while let Some(name) = next.take() {
        if !seen.insert(name.clone()) {
            break; // a loop can only come from a forged manifest; its hash check fails anyway
        }
        let report = verify_manifest(dest, &name, concurrency).await;
        if let Ok(r) = &report {
            let text = String::from_utf8_lossy(&r.manifest);
            next = parse_manifest(&text).ok().and_then(|entries| {
                entries
                    .into_iter()
                    .map(|(_, path)| path)
                    .find(|p| is_run_manifest(p) && !r.missing.contains(p))
            });
        }
        out.push(ChainLink {
            manifest: name,
            report,
        });
    }
    out
}
