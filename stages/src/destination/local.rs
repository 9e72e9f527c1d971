//! A local folder (for trials and for tests): each file is written to a hidden
//! temporary name beside its final path, flushed to disk, then renamed into place, so a
//! reader never sees a partial file at a final path.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{ByteStream, Destination, DestinationError, Written, checked, exact_length};

pub struct LocalFolder {
    root: PathBuf,
    /// Folders this process made or found, so a file costs no `create_dir_all` (a
    /// blocking-pool round trip) when its folder is known to exist.
    known_dirs: Mutex<HashSet<PathBuf>>,
}

impl LocalFolder {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            known_dirs: Mutex::new(HashSet::new()),
        }
    }

    async fn ensure_dir(&self, dir: &Path) -> Result<(), DestinationError> {
        if self.known(dir) {
            return Ok(());
        }
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| self.refused("creating the folder", e))?;
        self.known_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dir.to_path_buf());
        Ok(())
    }

    fn known(&self, dir: &Path) -> bool {
        self.known_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(dir)
    }

    fn forget(&self, dir: &Path) {
        self.known_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(dir);
    }

    fn refused(&self, what: &str, e: std::io::Error) -> DestinationError {
        let detail = format!("{what}: {e}");
        let destination = self.location();
        match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                DestinationError::Refused {
                    destination,
                    detail: format!("{detail}. Give portshift write access to the folder."),
                }
            }
            _ => DestinationError::Transient {
                destination,
                detail,
            },
        }
    }
}

async fn write_all(file: &mut tokio::fs::File, mut body: ByteStream) -> Result<u64, WriteFailure> {
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(WriteFailure::Source)?;
        file.write_all(&chunk).await.map_err(WriteFailure::Sink)?;
        n += chunk.len() as u64;
    }
    file.flush().await.map_err(WriteFailure::Sink)?;
    Ok(n)
}

/// Flushes the file to disk, renames it into place and makes the rename durable, in one
/// trip to the blocking pool (three would cost three thread hand-offs per file).
fn commit(file: std::fs::File, temp: &Path, final_path: &Path, dir: &Path) -> std::io::Result<()> {
    file.sync_all()?;
    drop(file);
    std::fs::rename(temp, final_path)?;
    // Makes the rename itself durable; best effort (not every filesystem allows it).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

enum WriteFailure {
    Source(std::io::Error),
    Sink(std::io::Error),
}

/// A `.portshift-partial-*` file that is deleted when dropped, unless it was renamed
/// into place.
struct PartialFile(Option<std::path::PathBuf>);

impl PartialFile {
    fn renamed(mut self) {
        self.0 = None;
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Synchronous: Drop cannot await, and one unlink is quick.
            let _ = std::fs::remove_file(path);
        }
    }
}

#[async_trait]
impl Destination for LocalFolder {
    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put(
        &self,
        relative_path: &str,
        body: ByteStream,
        _content_type: &str,
        size_hint: Option<u64>,
    ) -> Result<Written, DestinationError> {
        let rel = checked(relative_path)?;
        let body = match size_hint {
            Some(size) => exact_length(body, size),
            None => body,
        };
        let final_path = self.root.join(rel);
        let dir = final_path.parent().unwrap_or(&self.root).to_path_buf();
        self.ensure_dir(&dir).await?;
        let name = final_path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("file");
        let temp = dir.join(format!(
            ".{name}.portshift-partial-{}",
            uuid::Uuid::new_v4().simple()
        ));
        // Removed on every way out but the rename, including a transfer dropped
        // mid-way (a cancelled job aborts its transfers).
        let partial = PartialFile(Some(temp.clone()));
        let created = match tokio::fs::File::create(&temp).await {
            // The folder was removed since this process saw it: make it again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.known(&dir) => {
                self.forget(&dir);
                self.ensure_dir(&dir).await?;
                tokio::fs::File::create(&temp).await
            }
            other => other,
        };
        let mut file = created.map_err(|e| self.refused("creating a file", e))?;
        let written = write_all(&mut file, body).await;
        let bytes = match written {
            Ok(n) => n,
            Err(failure) => {
                return Err(match failure {
                    WriteFailure::Source(e) => DestinationError::Source(e),
                    WriteFailure::Sink(e) => self.refused("writing", e),
                });
            }
        };
        let file = file.into_std().await;
        let paths = (temp.clone(), final_path.clone(), dir.clone());
        let committed =
            tokio::task::spawn_blocking(move || commit(file, &paths.0, &paths.1, &paths.2))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = committed {
            return Err(self.refused("flushing and renaming into place", e));
        }
        partial.renamed();
        Ok(Written {
            key: final_path.display().to_string(),
            bytes,
        })
    }

    async fn open(&self, relative_path: &str) -> Result<ByteStream, DestinationError> {
        let rel = checked(relative_path)?;
        let path = self.root.join(rel);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    DestinationError::NotFound(path.display().to_string())
                }
                _ => self.refused("opening", e),
            })?;
        Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
            file,
            256 * 1024,
        )))
    }
}
