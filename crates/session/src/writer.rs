//! A session's writer task: takes everything queued at once and writes it with vectored
//! writes, so a burst of events costs one system call rather than one per frame.

use std::io::IoSlice;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::queue::{Next, Queue};

/// How many buffers one vectored write carries at most (Linux's `IOV_MAX` is 1024).
const MAX_IOVECS: usize = 256;

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterEnd {
    /// The close frame was written and the write side shut down.
    Closed,
    /// A write failed: the connection is gone.
    Failed,
}

/// Writes every frame of `frames` in order, many per system call.
///
/// # Cancel safety
/// Not cancel-safe: a cancelled call may have written part of the frames.
pub(crate) async fn write_all<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frames: &[Bytes],
) -> std::io::Result<()> {
    let mut index = 0;
    let mut offset = 0;
    while index < frames.len() {
        let end = (index + MAX_IOVECS).min(frames.len());
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(end - index);
        slices.push(IoSlice::new(&frames[index][offset..]));
        slices.extend(frames[index + 1..end].iter().map(|f| IoSlice::new(f)));
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        // Advance past what was written.
        while written > 0 && index < frames.len() {
            let left = frames[index].len() - offset;
            if written >= left {
                written -= left;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
        // Skip empty frames so the first slice is never empty.
        while index < frames.len() && frames[index].len() == offset {
            index += 1;
            offset = 0;
        }
    }
    Ok(())
}

/// Drains `queue` into `writer` until the queue is closed or a write fails.
///
/// # Cancel safety
/// Not cancel-safe (see [`write_all`]); it ends by itself when the queue closes.
pub(crate) async fn run<W: AsyncWrite + Unpin>(
    queue: &Queue,
    writer: &mut W,
    close_timeout: std::time::Duration,
) -> WriterEnd {
    loop {
        match queue.next().await {
            Next::Frames(frames) => {
                if write_all(writer, &frames).await.is_err() {
                    return WriterEnd::Failed;
                }
            }
            Next::Close(frame) => {
                let closed = async {
                    writer.write_all(&frame).await?;
                    writer.shutdown().await
                };
                return match tokio::time::timeout(close_timeout, closed).await {
                    Ok(Ok(())) => WriterEnd::Closed,
                    _ => WriterEnd::Failed,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A writer that takes at most `chunk` bytes per call, to exercise partial writes.
    struct Trickle {
        out: Vec<u8>,
        chunk: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.chunk);
            self.out.extend_from_slice(&buf[..n]);
            self.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut budget = self.chunk;
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(budget);
                self.out.extend_from_slice(&buf[..take]);
                budget -= take;
                n += take;
                if budget == 0 {
                    break;
                }
            }
            self.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_vectored_writes_keep_order() {
        let frames: Vec<Bytes> = (0..600u32)
            .map(|i| Bytes::from(format!("frame-{i};")))
            .chain([Bytes::new(), Bytes::from_static(b"end")])
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        for chunk in [1, 7, 100, 1 << 20] {
            let mut w = Trickle {
                out: Vec::new(),
                chunk,
                calls: 0,
            };
            write_all(&mut w, &frames).await.expect("writes");
            assert_eq!(w.out, expected, "chunk {chunk}");
            if chunk == 1 << 20 {
                // 602 frames in batches of 256 buffers: three calls.
                assert_eq!(w.calls, 3);
            }
        }
    }
}
