//! Cutting a streaming body into fixed-size parts in memory: S3 multipart parts, Azure
//! blocks and GCS resumable chunks all come from here, so each destination holds at most
//! one part (plus one incoming chunk) per transfer and never touches a disk.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::ByteStream;

/// Cuts a byte stream into parts of exactly `part_size` bytes (the last may be shorter),
/// holding at most one part plus one chunk in memory.
pub(crate) struct PartReader {
    body: ByteStream,
    buf: BytesMut,
    part_size: usize,
    finished: bool,
}

impl PartReader {
    pub(crate) fn new(body: ByteStream, part_size: usize) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
            part_size,
            finished: false,
        }
    }

    /// The next part, `None` at the end; an error if the body failed.
    pub(crate) async fn next_part(&mut self) -> Result<Option<Bytes>, std::io::Error> {
        while !self.finished && self.buf.len() < self.part_size {
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    if self.buf.capacity() < self.part_size {
                        // Sized once per part: growing by doubling would hold up to
                        // twice the part size per transfer.
                        self.buf
                            .reserve(self.part_size.max(chunk.len()) - self.buf.len());
                    }
                    self.buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => return Err(e),
                None => self.finished = true,
            }
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let take = self.buf.len().min(self.part_size);
        Ok(Some(self.buf.split_to(take).freeze()))
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished && self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parts_are_exact_and_complete() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..37u8)
            .map(|i| Ok(Bytes::from(vec![i; 1000 + i as usize])))
            .collect();
        let total: usize = (0..37usize).map(|i| 1000 + i).sum();
        let mut reader = PartReader::new(Box::pin(futures::stream::iter(chunks)), 4096);
        let mut seen = 0;
        let mut sizes = vec![];
        while let Some(p) = reader.next_part().await.unwrap() {
            seen += p.len();
            sizes.push(p.len());
        }
        assert_eq!(seen, total);
        assert!(
            sizes[..sizes.len() - 1].iter().all(|s| *s == 4096),
            "{sizes:?}"
        );
    }

    #[tokio::test]
    async fn a_failing_body_fails_the_part() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from(vec![1; 10])),
            Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "cut",
            )),
        ];
        let mut reader = PartReader::new(Box::pin(futures::stream::iter(chunks)), 4096);
        assert!(reader.next_part().await.is_err());
    }
}
