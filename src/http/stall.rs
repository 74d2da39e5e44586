//! The write-stall bound of every connection: a client that stops reading
//! fills its socket buffer, after which each write the server tries waits. A
//! connection whose writes have waited `JOBCAST_SSE_STALL_SECS` without the
//! buffer draining at all is closed, so a dead or frozen client holds its slot
//! (and file descriptor) a bounded time. Conflation already keeps such a
//! watcher from costing memory; this bounds the slot.
//!
//! The check lives in the socket wrapper the accept loop gives hyper, because
//! a stalled SSE body is simply not polled any more: only the writer that
//! waits on the socket can notice. Its timer is armed when a write would block
//! and dropped when one succeeds, so a healthy connection carries none.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Set once the connection was closed for stalling; the stream that was
/// writing on it reads it to count why it ended. Reaches the handlers as a
/// request extension.
#[derive(Clone, Default, Debug)]
pub struct StallFlag(Arc<AtomicBool>);

impl StallFlag {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Marks the connection as cut for not reading.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

pub struct StallGuard<T> {
    io: T,
    limit: Duration,
    /// Armed while writes wait; fires after `limit` without progress.
    waiting: Option<Pin<Box<Sleep>>>,
    flag: StallFlag,
}

impl<T> StallGuard<T> {
    pub fn new(io: T, limit: Duration) -> Self {
        StallGuard {
            io,
            limit,
            waiting: None,
            flag: StallFlag::default(),
        }
    }

    pub fn flag(&self) -> StallFlag {
        self.flag.clone()
    }

    /// Turns a write's outcome into the stall decision: progress disarms the
    /// timer; a wait arms it (once) and polls it, so its expiry wakes the task.
    fn check<R>(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if outcome.is_ready() {
            self.waiting = None;
            return outcome;
        }
        let limit = self.limit;
        let timer = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            self.flag.set();
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client stopped reading: write stalled",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.io).poll_write(cx, buf);
        self.check(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.check(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.io).poll_flush(cx);
        self.check(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_past_the_limit_fails_and_sets_the_flag() {
        // A duplex pipe with a 16-byte buffer nobody reads: the second write waits.
        let (client, _server_end_unread) = tokio::io::duplex(16);
        let mut guarded = StallGuard::new(client, Duration::from_secs(30));
        let flag = guarded.flag();
        guarded.write_all(&[0u8; 16]).await.unwrap();
        let err = guarded.write_all(&[1u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(flag.is_set());
    }

    #[tokio::test(start_paused = true)]
    async fn progress_disarms_the_timer() {
        let (client, mut reader) = tokio::io::duplex(16);
        let mut guarded = StallGuard::new(client, Duration::from_secs(30));
        let flag = guarded.flag();
        let drain = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                tokio::io::AsyncReadExt::read_exact(&mut reader, &mut buf)
                    .await
                    .unwrap();
            }
        });
        for _ in 0..5 {
            guarded.write_all(&[0u8; 16]).await.unwrap();
        }
        drain.await.unwrap();
        assert!(!flag.is_set(), "each wait was 20 s, under the 30 s limit");
    }
}
