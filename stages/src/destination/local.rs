//! A local folder (for trials and for tests): each file is written to a hidden
//! temporary name beside its final path, flushed to disk, then renamed into place, so a
//! reader never sees a partial file at a final path.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{ByteStream, Destination, DestinationError, Written, checked};

pub struct LocalFolder {
    root: PathBuf,
}

impl LocalFolder {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
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
    file.sync_all().await.map_err(WriteFailure::Sink)?;
    Ok(n)
}

enum WriteFailure {
    Source(std::io::Error),
    Sink(std::io::Error),
}

async fn sync_dir(dir: &Path) {
    // Makes the rename itself durable; best effort (not every filesystem allows it).
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
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
        _size_hint: Option<u64>,
    ) -> Result<Written, DestinationError> {
        let rel = checked(relative_path)?;
        let final_path = self.root.join(rel);
        let dir = final_path.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| self.refused("creating the folder", e))?;
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
        let mut file = tokio::fs::File::create(&temp)
            .await
            .map_err(|e| self.refused("creating a file", e))?;
        let written = write_all(&mut file, body).await;
        drop(file);
        let bytes = match written {
            Ok(n) => n,
            Err(failure) => {
                return Err(match failure {
                    WriteFailure::Source(e) => DestinationError::Source(e),
                    WriteFailure::Sink(e) => self.refused("writing", e),
                });
            }
        };
        if let Err(e) = tokio::fs::rename(&temp, &final_path).await {
            return Err(self.refused("renaming into place", e));
        }
        partial.renamed();
        sync_dir(&dir).await;
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
