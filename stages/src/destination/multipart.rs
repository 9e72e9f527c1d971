//! The one multipart upload loop that every object store shares, in the manner of arrow-rs
//! `object_store`: the streaming body is cut into fixed-size parts in memory (never on
//! disk), a file that fits in one part goes in one request, and a larger one is sent as
//! parts with a bounded number in flight, then committed, or aborted if anything fails, so
//! an object appears at its final key only when its whole body arrived. S3 multipart
//! parts, Azure blocks and GCS resumable chunks all come from here; each store provides
//! only its own calls through [`MultipartStore`] (one-request upload, begin) and
//! [`OpenUpload`] (send one part, commit, abort). Memory per transfer is at most
//! `part_size * (parts_in_flight + 1)` plus one incoming chunk.
//!
//! A body whose length the source announced, up to [`Tuning::single_request_max`], is
//! instead streamed in one request by a store that offers it
//! ([`MultipartStore::put_sized`]), through a [`SizedBody`] that fails the request when
//! the body breaks or its length differs from the announced one, so the store never
//! commits it: no part buffers, and one request per file, as rclone does below its
//! upload cutoff.

use async_trait::async_trait;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use http_body::{Frame, SizeHint};
use tokio::task::JoinSet;

use super::{ByteStream, DestinationError, Tuning, Written, checked, exact_length};
use crate::hash::DigestHandle;

/// Part buffers given back by finished parts, for the next part to fill. A new buffer of
/// several MiB is fresh memory from the kernel, and filling it costs a page fault and a
/// zeroed page per 4 KiB: in a profile of a 512 MiB export to S3 that was about a sixth of
/// portshift's CPU. A buffer is kept only when a part is done with it, so the pool never
/// holds more buffers than the uploads once used at the same time (peak memory does not
/// grow), and never more than [`KEEP_BYTES`] in all.
static FREE_PARTS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// The most the pool keeps while idle.
const KEEP_BYTES: usize = 128 << 20;

fn free_parts() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    // The pool holds only empty buffers: a panic elsewhere leaves nothing half-done.
    FREE_PARTS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An empty buffer that holds `size` bytes without growing.
fn part_buffer(size: usize) -> Vec<u8> {
    let mut free = free_parts();
    match free.iter().position(|b| b.capacity() == size) {
        Some(i) => free.swap_remove(i),
        None => Vec::with_capacity(size),
    }
}

/// A filled part; when the last `Bytes` of it is dropped (its request is done), the
/// buffer goes back to the pool.
struct PooledPart(Vec<u8>);

impl AsRef<[u8]> for PooledPart {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for PooledPart {
    fn drop(&mut self) {
        let mut buffer = std::mem::take(&mut self.0);
        buffer.clear();
        let mut free = free_parts();
        let kept: usize = free.iter().map(Vec::capacity).sum();
        if kept + buffer.capacity() <= KEEP_BYTES {
            free.push(buffer);
        }
    }
}

/// Cuts a byte stream into parts of exactly `part_size` bytes (the last may be shorter),
/// holding at most one part in memory.
///
/// Each part is one buffer of exactly `part_size` (from the pool of finished parts'
/// buffers): a chunk that would overflow the part is split, and its rest starts the next
/// part. (Appending the whole chunk would make the buffer grow by doubling, to twice the
/// part size, with a copy.) A part made of one chunk is that chunk, without a copy, so a
/// small file uses no buffer here.
pub(crate) struct PartReader {
    body: ByteStream,
    /// The rest of a chunk that overflowed the previous part.
    pending: Option<Bytes>,
    part_size: usize,
    finished: bool,
}

impl PartReader {
    pub(crate) fn new(body: ByteStream, part_size: usize) -> Self {
        Self {
            body,
            pending: None,
            part_size: part_size.max(1),
            finished: false,
        }
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, std::io::Error> {
        if let Some(rest) = self.pending.take() {
            return Ok(Some(rest));
        }
        while !self.finished {
            match self.body.next().await {
                Some(Ok(chunk)) if chunk.is_empty() => {}
                Some(Ok(chunk)) => return Ok(Some(chunk)),
                Some(Err(e)) => return Err(e),
                None => self.finished = true,
            }
        }
        Ok(None)
    }

    /// The next part, `None` at the end; an error if the body failed.
    pub(crate) async fn next_part(&mut self) -> Result<Option<Bytes>, std::io::Error> {
        let mut single: Option<Bytes> = None;
        let mut joined: Option<Vec<u8>> = None;
        loop {
            let have = match (&single, &joined) {
                (Some(one), _) => one.len(),
                (None, Some(buffer)) => buffer.len(),
                (None, None) => 0,
            };
            if have == self.part_size {
                break;
            }
            let Some(mut chunk) = self.next_chunk().await? else {
                break;
            };
            let room = self.part_size - have;
            if chunk.len() > room {
                self.pending = Some(chunk.split_off(room));
            }
            let buffer = match (&mut joined, single.take()) {
                (None, None) => {
                    single = Some(chunk);
                    continue;
                }
                (Some(buffer), _) => buffer,
                (None, Some(first)) => {
                    let buffer = joined.insert(part_buffer(self.part_size));
                    buffer.extend_from_slice(&first);
                    buffer
                }
            };
            buffer.extend_from_slice(&chunk);
        }
        Ok(match (single, joined) {
            (Some(part), _) => Some(part),
            (None, Some(buffer)) => Some(Bytes::from_owner(PooledPart(buffer))),
            (None, None) => None,
        })
    }

    /// A reader of `body` and its first part (empty for an empty body): the peek that
    /// decides between writing a body in one go and in pieces.
    pub(crate) async fn start(
        body: ByteStream,
        part_size: usize,
    ) -> Result<(Self, Bytes), DestinationError> {
        let mut reader = Self::new(body, part_size);
        let first = reader
            .next_part()
            .await
            .map_err(DestinationError::Source)?
            .unwrap_or_default();
        Ok((reader, first))
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished && self.pending.is_none()
    }
}

/// One part of an upload, handed to [`OpenUpload::send`] in order.
pub(crate) struct Part {
    /// 0 for the first part.
    pub index: usize,
    /// Where the part starts in the object.
    pub offset: u64,
    pub bytes: Bytes,
    /// The body is known to end with this part. A body that ends exactly on a part
    /// boundary is only known to have ended after its last part was sent: then no part
    /// is marked last, and [`OpenUpload::complete`] finishes the object.
    pub last: bool,
}

/// The request that sends one part; it owns what it needs, so several run at once.
pub(crate) type PartRequest<R> = BoxFuture<'static, Result<R, DestinationError>>;

/// What a store provides to [`put_streaming`].
#[async_trait]
pub(crate) trait MultipartStore: Send + Sync {
    type Upload: OpenUpload;

    /// The destination as named in errors (without secrets).
    fn error_location(&self) -> &str;
    /// Part size, and parts sent at once (1 for stores that take parts strictly in order).
    fn tuning(&self) -> Tuning;
    /// The prefix every key of the export starts with ("" for the bucket's root).
    fn prefix(&self) -> &str;
    /// The object key of a path relative to the export's root.
    fn key(&self, relative: &str) -> String {
        pipeline::keys::join(self.prefix(), relative)
    }
    /// Writes a body that fits in one part with one request; `sha256` is the body's
    /// digest when the caller already has it.
    async fn put_whole(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        sha256: Option<[u8; 32]>,
    ) -> Result<(), DestinationError>;
    /// Starts a multipart upload to `key`; nothing is visible at the key until it commits.
    async fn begin(&self, key: &str, content_type: &str) -> Result<Self::Upload, DestinationError>;
    /// Streams `body`, exactly `body.size()` bytes, to `key` in one request that the store
    /// commits only if the whole body arrived. A store without such a request hands the
    /// body back (the default) and it goes through parts.
    async fn put_sized(&self, key: &str, body: SizedBody, content_type: &str) -> StreamedPut {
        let _ = (key, content_type);
        StreamedPut::NotOffered(body)
    }
}

/// What [`MultipartStore::put_sized`] did.
pub(crate) enum StreamedPut {
    Done(Result<(), DestinationError>),
    /// The store has no streamed one-request upload: the untouched body, for parts.
    NotOffered(SizedBody),
}

/// One started multipart upload.
#[async_trait]
pub(crate) trait OpenUpload: Send + 'static {
    /// What sending a part returns and committing needs (an ETag, a block id, ...).
    type Receipt: Send + 'static;

    /// Called once per part, in order, so whole-object digests can be updated here;
    /// returns the request that sends the part.
    fn send(&mut self, part: Part) -> PartRequest<Self::Receipt>;
    /// Commits the object from the parts' receipts (in part order); `size` is its length.
    async fn complete(
        &mut self,
        receipts: Vec<Self::Receipt>,
        size: u64,
    ) -> Result<(), DestinationError>;
    /// Discards what was sent, best effort, after a failure. It never makes an object
    /// appear at the key.
    async fn abort(&mut self);
}

/// A source body of announced length as an HTTP request body: its size hint is exact (a
/// store sends it as `Content-Length`, S3 as `x-amz-decoded-content-length`), and it is
/// [`exact_length`]-checked, so a body that breaks, runs long or ends short yields an
/// error instead of its end and the request fails before the store could commit it. The
/// source's own error is kept for [`SizedBody::source_failure`]: a failed request then
/// reports the source, not the store, as the cause.
pub(crate) struct SizedBody {
    /// In a `Mutex` only because HTTP clients want a `Sync` body; it is reached through
    /// `get_mut` (the body is polled by `&mut`), never locked.
    inner: Mutex<ByteStream>,
    size: u64,
    remaining: u64,
    done: bool,
    failure: Arc<Mutex<Option<std::io::Error>>>,
}

/// Where a [`SizedBody`] left its source error once the body was handed to a client.
#[derive(Clone)]
pub(crate) struct SourceFailure(Arc<Mutex<Option<std::io::Error>>>);

impl SourceFailure {
    /// The source's error, if the body failed because of it.
    pub(crate) fn take(&self) -> Option<std::io::Error> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl SizedBody {
    /// `inner` must already be [`exact_length`]-checked against `size`.
    fn new(inner: ByteStream, size: u64) -> Self {
        Self {
            inner: Mutex::new(inner),
            size,
            remaining: size,
            done: false,
            failure: Arc::default(),
        }
    }

    /// The announced length.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// A handle to the source error, to read after the request failed.
    pub(crate) fn source_failure(&self) -> SourceFailure {
        SourceFailure(self.failure.clone())
    }

    /// Back to a plain stream, for the parts path (nothing was read from it).
    fn into_stream(self) -> ByteStream {
        self.inner
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl http_body::Body for SizedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let inner = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        match inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.remaining = self.remaining.saturating_sub(chunk.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(error))) => {
                self.done = true;
                let reported = std::io::Error::new(error.kind(), error.to_string());
                *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
                Poll::Ready(Some(Err(reported)))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// [`super::Destination::put`] of every object store: checks the relative path, then
/// streams the body to its key.
pub(crate) async fn put_file<S: MultipartStore>(
    store: &S,
    relative_path: &str,
    body: ByteStream,
    content_type: &str,
    size_hint: Option<u64>,
    digest: Option<&DigestHandle>,
) -> Result<Written, DestinationError> {
    let key = store.key(checked(relative_path)?);
    let bytes = put_streaming(store, &key, body, content_type, size_hint, digest).await?;
    Ok(Written { key, bytes })
}

/// Bodies up to this size go in one buffered request even when they could be streamed:
/// the SDK can retry a request whose body is in memory, and the checksum goes in a
/// header instead of a chunked trailer.
const BUFFER_UP_TO: u64 = 256 * 1024;

/// Streams `body` to `key` through `store`: one streamed request for a body of announced
/// length the store can take that way, one buffered request for a body that fits in one
/// part, else a multipart upload that is committed only when every part arrived and
/// aborted otherwise. Returns the number of bytes written. `digest` is the hash of the
/// body as it is read: a one-request upload reuses it.
pub(crate) async fn put_streaming<S: MultipartStore>(
    store: &S,
    key: &str,
    body: ByteStream,
    content_type: &str,
    size_hint: Option<u64>,
    digest: Option<&DigestHandle>,
) -> Result<u64, DestinationError> {
    let tuning = store.tuning();
    let body = match size_hint {
        Some(size) if size > BUFFER_UP_TO && size <= tuning.single_request_max => {
            let body = SizedBody::new(exact_length(body, size), size);
            match store.put_sized(key, body, content_type).await {
                StreamedPut::Done(result) => return result.map(|()| size),
                StreamedPut::NotOffered(body) => body.into_stream(),
            }
        }
        Some(size) => exact_length(body, size),
        None => body,
    };
    let (mut parts, first) = PartReader::start(body, tuning.part_size).await?;
    // Peek: if the body ended within the first part, one request does it.
    let second = if parts.is_finished() {
        None
    } else {
        parts.next_part().await.map_err(DestinationError::Source)?
    };
    let Some(second) = second else {
        let size = first.len() as u64;
        // The body ended, so the tee has its digest; the length check makes sure it is
        // the digest of exactly these bytes.
        let sha256 = digest
            .and_then(DigestHandle::result)
            .filter(|d| d.bytes == size)
            .map(|d| d.sha256_bytes);
        store.put_whole(key, first, content_type, sha256).await?;
        return Ok(size);
    };
    let mut upload = store.begin(key, content_type).await?;
    let sent = send_parts(
        &mut upload,
        store.error_location(),
        tuning.parts_in_flight,
        [first, second],
        &mut parts,
    )
    .await;
    let result = match sent {
        Ok((receipts, size)) => upload.complete(receipts, size).await.map(|()| size),
        Err(e) => Err(e),
    };
    if result.is_err() {
        upload.abort().await;
    }
    result
}

/// Sends every part with at most `in_flight` at once; returns the receipts in part order
/// and the object's size.
async fn send_parts<U: OpenUpload>(
    upload: &mut U,
    location: &str,
    in_flight: usize,
    already_read: [Bytes; 2],
    parts: &mut PartReader,
) -> Result<(Vec<U::Receipt>, u64), DestinationError> {
    let mut running: JoinSet<(usize, Result<U::Receipt, DestinationError>)> = JoinSet::new();
    let mut receipts: Vec<(usize, U::Receipt)> = Vec::new();
    let mut already_read = already_read.into_iter();
    let (mut index, mut offset) = (0usize, 0u64);
    loop {
        let bytes = match already_read.next() {
            Some(p) => p,
            None => match parts.next_part().await.map_err(DestinationError::Source)? {
                Some(p) => p,
                None => break,
            },
        };
        while running.len() >= in_flight.max(1) {
            if let Some(done) = running.join_next().await {
                let (i, receipt) = joined(done, location)?;
                receipts.push((i, receipt?));
            }
        }
        let last = already_read.len() == 0 && parts.is_finished();
        let size = bytes.len() as u64;
        let request = upload.send(Part {
            index,
            offset,
            bytes,
            last,
        });
        running.spawn(async move { (index, request.await) });
        index += 1;
        offset += size;
    }
    while let Some(done) = running.join_next().await {
        let (i, receipt) = joined(done, location)?;
        receipts.push((i, receipt?));
    }
    receipts.sort_by_key(|(i, _)| *i);
    Ok((receipts.into_iter().map(|(_, r)| r).collect(), offset))
}

fn joined<T>(r: Result<T, tokio::task::JoinError>, location: &str) -> Result<T, DestinationError> {
    r.map_err(|e| DestinationError::Transient {
        destination: location.to_string(),
        detail: format!("upload task failed: {e}"),
    })
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
    async fn a_part_of_one_chunk_is_that_chunk_and_its_overflow_starts_the_next() {
        let big = Bytes::from(vec![7u8; 10_000]);
        let at = big.as_ptr();
        let mut reader = PartReader::new(Box::pin(futures::stream::iter(vec![Ok(big)])), 4096);
        let first = reader.next_part().await.unwrap().unwrap();
        // Not copied: the part is a view of the chunk.
        assert_eq!((first.len(), first.as_ptr()), (4096, at));
        assert_eq!(reader.next_part().await.unwrap().unwrap().len(), 4096);
        assert_eq!(
            reader.next_part().await.unwrap().unwrap().len(),
            10_000 - 8192
        );
        assert!(reader.next_part().await.unwrap().is_none());
        assert!(reader.is_finished());
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

    use std::sync::{Arc, Mutex};

    /// An in-memory store that records what the loop asked of it, to check the loop's
    /// own promises (order, parts in flight, commit or abort) apart from any server.
    #[derive(Default)]
    struct Recorder {
        whole: Mutex<Option<Vec<u8>>>,
        log: Arc<Mutex<Log>>,
        fail_part: Option<usize>,
        /// Offers the streamed one-request upload, and records its bodies.
        streams: bool,
        /// 100 unless set: bodies of streamed size need larger parts to stay quick.
        part_size: Option<usize>,
        streamed: Mutex<Option<Vec<u8>>>,
    }

    #[derive(Default)]
    struct Log {
        parts: Vec<(usize, u64, usize, bool)>,
        running: usize,
        most_running: usize,
        committed: Option<(Vec<usize>, u64)>,
        aborted: bool,
    }

    struct RecordedUpload {
        log: Arc<Mutex<Log>>,
        fail_part: Option<usize>,
    }

    #[async_trait]
    impl MultipartStore for Recorder {
        type Upload = RecordedUpload;
        fn error_location(&self) -> &str {
            "memory"
        }
        fn tuning(&self) -> Tuning {
            Tuning {
                part_size: self.part_size.unwrap_or(100),
                parts_in_flight: 2,
                single_request_max: 4 * BUFFER_UP_TO,
            }
        }
        fn prefix(&self) -> &str {
            ""
        }
        async fn put_whole(
            &self,
            _: &str,
            body: Bytes,
            _: &str,
            _: Option<[u8; 32]>,
        ) -> Result<(), DestinationError> {
            *self.whole.lock().unwrap() = Some(body.to_vec());
            Ok(())
        }
        async fn begin(&self, _: &str, _: &str) -> Result<RecordedUpload, DestinationError> {
            Ok(RecordedUpload {
                log: self.log.clone(),
                fail_part: self.fail_part,
            })
        }
        async fn put_sized(&self, _: &str, mut body: SizedBody, _: &str) -> StreamedPut {
            if !self.streams {
                return StreamedPut::NotOffered(body);
            }
            let failure = body.source_failure();
            let mut got = Vec::new();
            while let Some(frame) = std::future::poll_fn(|cx| {
                http_body::Body::poll_frame(std::pin::Pin::new(&mut body), cx)
            })
            .await
            {
                match frame {
                    Ok(f) => got.extend_from_slice(&f.into_data().unwrap()),
                    // As a store's client would: the request fails and nothing is kept.
                    Err(_) => {
                        let source = failure.take().expect("the source error is kept");
                        return StreamedPut::Done(Err(DestinationError::Source(source)));
                    }
                }
            }
            *self.streamed.lock().unwrap() = Some(got);
            StreamedPut::Done(Ok(()))
        }
    }

    #[async_trait]
    impl OpenUpload for RecordedUpload {
        type Receipt = usize;
        fn send(&mut self, part: Part) -> PartRequest<usize> {
            let log = self.log.clone();
            let fail = self.fail_part == Some(part.index);
            log.lock()
                .unwrap()
                .parts
                .push((part.index, part.offset, part.bytes.len(), part.last));
            Box::pin(async move {
                {
                    let mut l = log.lock().unwrap();
                    l.running += 1;
                    l.most_running = l.most_running.max(l.running);
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                log.lock().unwrap().running -= 1;
                if fail {
                    return Err(DestinationError::Transient {
                        destination: "memory".into(),
                        detail: "part refused".into(),
                    });
                }
                Ok(part.index)
            })
        }
        async fn complete(
            &mut self,
            receipts: Vec<usize>,
            size: u64,
        ) -> Result<(), DestinationError> {
            self.log.lock().unwrap().committed = Some((receipts, size));
            Ok(())
        }
        async fn abort(&mut self) {
            self.log.lock().unwrap().aborted = true;
        }
    }

    fn body_of(len: usize) -> ByteStream {
        let data: Vec<Result<Bytes, std::io::Error>> = vec![0u8; len]
            .chunks(37)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures::stream::iter(data))
    }

    #[tokio::test]
    async fn a_body_within_one_part_is_one_request() {
        let store = Recorder::default();
        assert_eq!(
            put_streaming(&store, "k", body_of(100), "x", None, None)
                .await
                .unwrap(),
            100
        );
        assert_eq!(
            store.whole.lock().unwrap().as_ref().map(Vec::len),
            Some(100)
        );
        assert!(store.log.lock().unwrap().parts.is_empty());
    }

    #[tokio::test]
    async fn parts_go_in_order_with_at_most_the_configured_number_in_flight() {
        let store = Recorder::default();
        assert_eq!(
            put_streaming(&store, "k", body_of(950), "x", None, None)
                .await
                .unwrap(),
            950
        );
        let log = store.log.lock().unwrap();
        let offsets: Vec<u64> = log.parts.iter().map(|p| p.1).collect();
        assert_eq!(offsets, (0..10).map(|i| i * 100).collect::<Vec<u64>>());
        assert_eq!(log.most_running, 2, "parts in flight");
        let lasts: Vec<bool> = log.parts.iter().map(|p| p.3).collect();
        assert_eq!(lasts.iter().filter(|l| **l).count(), 1);
        assert!(lasts[9], "the short final part is marked last");
        assert_eq!(log.committed, Some(((0..10).collect(), 950)));
        assert!(!log.aborted);
    }

    #[tokio::test]
    async fn a_body_ending_on_a_part_boundary_is_committed_with_its_size() {
        let store = Recorder::default();
        assert_eq!(
            put_streaming(&store, "k", body_of(300), "x", None, None)
                .await
                .unwrap(),
            300
        );
        let log = store.log.lock().unwrap();
        assert_eq!(log.parts.len(), 3);
        assert_eq!(log.committed, Some((vec![0, 1, 2], 300)));
    }

    #[tokio::test]
    async fn a_failed_part_aborts_and_commits_nothing() {
        let store = Recorder {
            fail_part: Some(3),
            ..Recorder::default()
        };
        assert!(
            put_streaming(&store, "k", body_of(950), "x", None, None)
                .await
                .is_err()
        );
        let log = store.log.lock().unwrap();
        assert!(log.aborted);
        assert!(log.committed.is_none());
    }

    #[tokio::test]
    async fn a_failing_body_aborts_an_upload_in_progress() {
        let store = Recorder::default();
        let mut chunks: Vec<Result<Bytes, std::io::Error>> =
            (0..5).map(|_| Ok(Bytes::from(vec![1u8; 100]))).collect();
        chunks.push(Err(std::io::Error::other("cut")));
        let err = put_streaming(
            &store,
            "k",
            Box::pin(futures::stream::iter(chunks)),
            "x",
            None,
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, DestinationError::Source(_)), "{err}");
        let log = store.log.lock().unwrap();
        assert!(log.aborted && log.committed.is_none());
    }

    fn streaming_store() -> Recorder {
        Recorder {
            streams: true,
            part_size: Some(64 * 1024),
            ..Recorder::default()
        }
    }

    const STREAMED: usize = 2 * BUFFER_UP_TO as usize;

    #[tokio::test]
    async fn an_announced_body_within_the_limit_is_one_streamed_request() {
        let store = streaming_store();
        let n = STREAMED as u64;
        assert_eq!(
            put_streaming(&store, "k", body_of(STREAMED), "x", Some(n), None)
                .await
                .unwrap(),
            n
        );
        assert_eq!(
            store.streamed.lock().unwrap().as_deref(),
            Some(&vec![0u8; STREAMED][..])
        );
        assert!(store.log.lock().unwrap().parts.is_empty(), "no parts");
        assert!(store.whole.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn unannounced_small_or_too_large_bodies_are_not_streamed() {
        let limit = 4 * BUFFER_UP_TO;
        for (len, hint) in [
            (STREAMED, None),
            (100, Some(100)),
            (limit as usize + 1, Some(limit + 1)),
        ] {
            let store = streaming_store();
            put_streaming(&store, "k", body_of(len), "x", hint, None)
                .await
                .unwrap();
            assert!(store.streamed.lock().unwrap().is_none(), "{len} {hint:?}");
        }
    }

    #[tokio::test]
    async fn a_store_without_streamed_requests_gets_the_body_in_parts() {
        let store = Recorder {
            part_size: Some(64 * 1024),
            ..Recorder::default()
        };
        let n = STREAMED as u64;
        assert_eq!(
            put_streaming(&store, "k", body_of(STREAMED), "x", Some(n), None)
                .await
                .unwrap(),
            n
        );
        let log = store.log.lock().unwrap();
        assert_eq!(log.committed.as_ref().map(|c| c.1), Some(n));
    }

    #[tokio::test]
    async fn a_streamed_body_that_breaks_or_differs_from_its_announced_length_fails() {
        let n = STREAMED as u64;
        let mut broken: Vec<Result<Bytes, std::io::Error>> = vec![Ok(Bytes::from(vec![1u8; 1000]))];
        broken.push(Err(std::io::Error::other("connection reset")));
        let cases: [(ByteStream, &str); 3] = [
            (body_of(STREAMED - 1), "ended after"),
            (body_of(STREAMED + 1), "longer than"),
            (Box::pin(futures::stream::iter(broken)), "connection reset"),
        ];
        for (body, says) in cases {
            let store = streaming_store();
            let err = put_streaming(&store, "k", body, "x", Some(n), None)
                .await
                .unwrap_err();
            assert!(
                matches!(&err, DestinationError::Source(e) if e.to_string().contains(says)),
                "{says}: {err}"
            );
            assert!(store.streamed.lock().unwrap().is_none(), "{says}");
        }
    }

    #[test]
    fn a_sized_body_announces_its_exact_remaining_length() {
        let body = SizedBody::new(exact_length(body_of(10), 10), 10);
        let hint = http_body::Body::size_hint(&body);
        assert_eq!((hint.lower(), hint.upper()), (10, Some(10)));
    }
}
