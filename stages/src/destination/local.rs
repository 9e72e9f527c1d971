//! A local folder (for trials and for tests): each file is written to a hidden
//! temporary name beside its final path, flushed to disk, then renamed into place, so a
//! reader never sees a partial file at a final path.

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::multipart::PartReader;
use super::{ByteStream, Destination, DestinationError, Written, checked, exact_length};

/// A body that ends within this many bytes is written in one trip to the blocking pool
/// (folder, temporary file, write, flush, rename): most metadata and transcript files,
/// and small media. A longer body is written in pieces of this size as it arrives.
const ONE_TRIP_UP_TO: usize = 256 * 1024;

pub struct LocalFolder {
    root: PathBuf,
}

impl LocalFolder {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn refused(&self, (what, e): (&str, std::io::Error)) -> DestinationError {
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

/// A failed step of a write: what was being done, and the error.
type StepError = (&'static str, std::io::Error);

/// Creates the temporary file `temp`, and its folder if that is missing. No cache of
/// known folders: the file's creation finds out (a folder per recording would make such
/// a cache grow with the export), and a folder removed meanwhile is simply made again.
fn create_temp(temp: &Path) -> Result<(std::fs::File, PartialFile), StepError> {
    let file = match std::fs::File::create(temp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = temp.parent() {
                std::fs::create_dir_all(dir).map_err(|e| ("creating the folder", e))?;
            }
            std::fs::File::create(temp)
        }
        other => other,
    }
    .map_err(|e| ("creating a file", e))?;
    Ok((file, PartialFile(Some(temp.to_path_buf()))))
}

/// The whole of a small file, from folder to rename, in one blocking call.
fn write_whole(temp: &Path, final_path: &Path, bytes: &[u8]) -> Result<(), StepError> {
    let (mut file, partial) = create_temp(temp)?;
    file.write_all(bytes).map_err(|e| ("writing", e))?;
    commit(file, temp, final_path)?;
    partial.renamed();
    Ok(())
}

/// Flushes the file to disk, renames it into place and makes the rename durable, in one
/// trip to the blocking pool (three would cost three thread hand-offs per file).
fn commit(file: std::fs::File, temp: &Path, final_path: &Path) -> Result<(), StepError> {
    let step = "flushing and renaming into place";
    file.sync_all().map_err(|e| (step, e))?;
    drop(file);
    std::fs::rename(temp, final_path).map_err(|e| (step, e))?;
    // Makes the rename itself durable; best effort (not every filesystem allows it).
    if let Some(Ok(d)) = final_path.parent().map(std::fs::File::open) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Runs a step in the blocking pool; a task that panicked is reported, not propagated.
async fn blocking<T: Send + 'static>(
    step: impl FnOnce() -> Result<T, StepError> + Send + 'static,
) -> Result<T, StepError> {
    tokio::task::spawn_blocking(step)
        .await
        .unwrap_or_else(|e| Err(("writing", std::io::Error::other(e))))
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
        let key = final_path.display().to_string();
        let dir = final_path.parent().unwrap_or(&self.root);
        let name = final_path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("file");
        let temp = dir.join(format!(
            ".{name}.portshift-partial-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let (mut pieces, first) = PartReader::start(body, ONE_TRIP_UP_TO).await?;
        let bytes = if pieces.is_finished() {
            let size = first.len() as u64;
            blocking(move || write_whole(&temp, &final_path, &first))
                .await
                .map_err(|e| self.refused(e))?;
            size
        } else {
            // The partial file is removed on every way out but the rename, including a
            // transfer dropped mid-way (a cancelled job aborts its transfers).
            let opened = blocking({
                let temp = temp.clone();
                move || create_temp(&temp)
            });
            let (file, partial) = opened.await.map_err(|e| self.refused(e))?;
            let mut file = tokio::fs::File::from_std(file);
            let mut n = 0u64;
            let mut piece = Some(first);
            while let Some(bytes) = piece {
                file.write_all(&bytes)
                    .await
                    .map_err(|e| self.refused(("writing", e)))?;
                n += bytes.len() as u64;
                piece = pieces.next_part().await.map_err(DestinationError::Source)?;
            }
            file.flush()
                .await
                .map_err(|e| self.refused(("writing", e)))?;
            let file = file.into_std().await;
            blocking(move || commit(file, &temp, &final_path))
                .await
                .map_err(|e| self.refused(e))?;
            partial.renamed();
            n
        };
        Ok(Written { key, bytes })
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
                _ => self.refused(("opening", e)),
            })?;
        Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
            file,
            256 * 1024,
        )))
    }
}
