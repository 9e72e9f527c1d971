//! The hash stage, in stream: a tee that computes SHA-256 and the byte count of a file
//! while its bytes flow from Chorus to the destination, and that turns a body shorter
//! or longer than announced into an error *before* the destination could commit it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use sha2::{Digest, Sha256};

/// The same type as `destination::ByteStream`, named here so that the destinations may use
/// [`DigestHandle`] without an import circle.
type ByteStream = futures::stream::BoxStream<'static, Result<Bytes, io::Error>>;

/// The digest of a finished stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digested {
    /// Hex, as the manifest writes it.
    pub sha256: String,
    /// The same digest as bytes (for a store's checksum header).
    pub sha256_bytes: [u8; 32],
    pub bytes: u64,
}

#[derive(Default)]
struct State {
    hasher: Sha256,
    bytes: u64,
    result: Option<Digested>,
}

/// Reads the digest once the stream has ended cleanly.
#[derive(Clone)]
pub struct DigestHandle(Arc<Mutex<State>>);

impl DigestHandle {
    /// `None` unless the whole stream was consumed and matched its expected length.
    pub fn result(&self) -> Option<Digested> {
        self.0.lock().ok().and_then(|s| s.result.clone())
    }
}

/// `body`, checked against the length its source announced: a body that runs long or
/// ends short yields an error instead of its extra bytes or its end, so no destination
/// commits it. [`tee`] applies it, and so does every destination given a size hint.
pub fn exact_length(body: ByteStream, size: u64) -> ByteStream {
    use futures::StreamExt;
    let checked = futures::stream::unfold(
        (body, 0u64, false),
        move |(mut body, seen, ended)| async move {
            if ended {
                return None;
            }
            let (item, seen, ended) = match body.next().await {
                Some(Ok(chunk)) => match seen.checked_add(chunk.len() as u64) {
                    Some(total) if total <= size => (Ok(chunk), total, false),
                    _ => (
                        Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("the body is longer than the {size} bytes announced"),
                        )),
                        seen,
                        true,
                    ),
                },
                Some(Err(e)) => (Err(e), seen, true),
                None if seen < size => (
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the body ended after {seen} of the {size} bytes announced"),
                    )),
                    seen,
                    true,
                ),
                None => return None,
            };
            Some((item, (body, seen, ended)))
        },
    );
    Box::pin(checked)
}

struct Tee {
    /// Length-checked already when a length was announced.
    inner: ByteStream,
    state: Arc<Mutex<State>>,
    ended: bool,
}

/// Wraps `inner` so every byte passing through is hashed and counted. If `expected` is
/// given, a stream ending early or running long yields an `Err` as its last item.
pub fn tee(inner: ByteStream, expected: Option<u64>) -> (ByteStream, DigestHandle) {
    let state = Arc::new(Mutex::new(State::default()));
    let handle = DigestHandle(state.clone());
    let inner = match expected {
        Some(size) => exact_length(inner, size),
        None => inner,
    };
    (
        Box::pin(Tee {
            inner,
            state,
            ended: false,
        }),
        handle,
    )
}

impl Stream for Tee {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                let Ok(mut st) = self.state.lock() else {
                    return Poll::Ready(Some(Err(io::Error::other("hash state poisoned"))));
                };
                st.hasher.update(&chunk);
                st.bytes += chunk.len() as u64;
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.ended = true;
                Poll::Ready(Some(Err(e)))
            }
            // The body ended, and (when a length was announced) at that length.
            Poll::Ready(None) => {
                self.ended = true;
                let Ok(mut st) = self.state.lock() else {
                    return Poll::Ready(Some(Err(io::Error::other("hash state poisoned"))));
                };
                let hasher = std::mem::take(&mut st.hasher);
                let bytes = st.bytes;
                let sha256_bytes: [u8; 32] = hasher.finalize().into();
                st.result = Some(Digested {
                    sha256: hex::encode(sha256_bytes),
                    sha256_bytes,
                    bytes,
                });
                Poll::Ready(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn body(parts: &[&'static [u8]]) -> ByteStream {
        Box::pin(futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        ))
    }

    #[tokio::test]
    async fn digest_matches_sha256_of_the_whole() {
        let (mut s, h) = tee(body(&[b"hello ", b"world"]), Some(11));
        while let Some(c) = s.next().await {
            c.unwrap();
        }
        let d = h.result().unwrap();
        assert_eq!(d.bytes, 11);
        assert_eq!(d.sha256, hex::encode(Sha256::digest(b"hello world")));
    }

    #[tokio::test]
    async fn short_and_long_bodies_are_errors_and_give_no_digest() {
        for (parts, expected) in [(vec![&b"abc"[..]], 4u64), (vec![&b"abcde"[..]], 4)] {
            let (mut s, h) = tee(body(&parts), Some(expected));
            let mut failed = false;
            while let Some(c) = s.next().await {
                failed |= c.is_err();
            }
            assert!(failed);
            assert!(h.result().is_none());
        }
    }
}
