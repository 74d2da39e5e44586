//! The accept loop: warp's filters served by hyper with the settings warp's own
//! `serve` does not expose: a header read timeout (slow-loris protection), a
//! write-stall bound (`stall`), an ordered graceful stop (stop accepting, then
//! wait for open connections, whose streams end themselves on the same
//! shutdown token), and a cap on open
//! sockets below the open-file limit: at the cap the loop stops accepting (new
//! clients wait in the kernel's backlog), so the descriptors a Redis or Postgres
//! reconnect needs are always there.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use warp::{Filter, Reply};

use crate::http::client_info::WithClientInfo;
use crate::http::stall::StallGuard;
use crate::http::upgrade::WithUpgradeSlot;

/// A client must send its request head within this time, or it is disconnected.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line + headers) accepted, like nginx's default
/// `large_client_header_buffers`. Also caps hyper's per-connection read buffer,
/// which every open stream keeps for its whole life.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors) before the next try.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves `routes` on `listener` with at most `max_sockets` accepted sockets
/// open at once, until `shutdown`.
pub async fn serve<F, R>(
    listener: TcpListener,
    routes: F,
    stall_after: Duration,
    shutdown: CancellationToken,
    max_sockets: usize,
) where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    R: Reply,
{
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    let slots = Arc::new(Semaphore::new(max_sockets.max(1)));
    let mut at_cap = false;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !at_cap {
                    tracing::warn!(
                        max_sockets,
                        "open sockets at the cap; new clients wait in the backlog"
                    );
                    at_cap = true;
                }
                metrics::counter!("jobcast_accept_paused_total").increment(1);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                }
            }
        };
        if at_cap && slots.available_permits() > max_sockets / 10 {
            at_cap = false;
        }
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // The slot goes with the socket, also into a WebSocket after the upgrade.
        let stream = Slotted {
            stream,
            _slot: slot,
        };
        let io = StallGuard::new(stream, stall_after);
        let service = WithUpgradeSlot(
            WithClientInfo {
                peer,
                inner: TowerToHyperService::new(warp::service(routes.clone())),
            },
            io.flag(),
        );
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// An accepted socket holding its slot of the socket cap until it is dropped.
struct Slotted {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Slotted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Slotted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
