//! `portshift verify`: re-reads an export and checks every file against its
//! `portshift-manifest.txt`, the same check `sha256sum -c` does, for destinations the
//! user cannot easily download. Needs read access, which exporting never does.

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::destination::{Destination, DestinationError};
use crate::manifest::MANIFEST_TXT;

#[derive(Debug, Default)]
pub struct VerifyReport {
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
    #[error("could not read {MANIFEST_TXT}: {0}. Is this the root of a finished export?")]
    NoManifest(DestinationError),
    #[error("{MANIFEST_TXT} line {line} is not `<64 hex>  <path>`; the manifest was altered")]
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

pub async fn verify(
    dest: &dyn Destination,
    concurrency: usize,
) -> Result<VerifyReport, VerifyError> {
    let body = dest
        .open(MANIFEST_TXT)
        .await
        .map_err(VerifyError::NoManifest)?;
    let bytes: Vec<u8> = body
        .try_fold(Vec::new(), |mut acc, c| async move {
            acc.extend_from_slice(&c);
            Ok(acc)
        })
        .await
        .map_err(|e| VerifyError::NoManifest(DestinationError::Source(e)))?;
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
    let mut report = VerifyReport::default();
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
