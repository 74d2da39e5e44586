//! The accept loop: warp's filters served by hyper with the settings warp's own
//! `serve` does not expose, and event streams answered on the direct path
//! ([`direct`]) when they are a connection's first request: a header read
//! timeout (slow-loris protection), a
//! write-stall bound (`stall`), an ordered graceful stop (stop accepting, then
//! wait for open connections, whose streams end themselves on the same
//! shutdown token), and a cap on open
//! sockets below the open-file limit: at the cap the loop stops accepting (new
//! clients wait in the kernel's backlog), so the descriptors a Redis or Postgres
//! reconnect needs are always there.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use warp::{Filter, Reply};

use crate::http::client_info::WithClientInfo;
use crate::http::direct::{self, DirectSlot, DirectSocket};
use crate::http::head::{self, FirstRequest, Rewind};
use crate::http::stall::{StallFlag, StallGuard};
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
    R: Reply + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    let conns = Arc::new(Connections {
        builder,
        routes,
        stall_after,
        shutdown: shutdown.clone(),
    });
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
        // Every connection holds a watcher, so the stop below waits for it,
        // on the direct path as under hyper.
        tokio::spawn(conns.clone().serve(stream, peer, graceful.watcher()));
    }
    drop(listener);
    graceful.shutdown().await;
}

/// What every connection is served with.
struct Connections<F> {
    builder: Builder<TokioExecutor>,
    routes: F,
    stall_after: Duration,
    shutdown: CancellationToken,
}

impl<F, R> Connections<F>
where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    R: Reply + 'static,
{
    /// One connection: its first request on the direct path when it asks for
    /// an event stream or a job's WebSocket, then (or else) hyper for
    /// whatever follows.
    async fn serve(self: Arc<Self>, mut stream: Slotted, peer: SocketAddr, watcher: Watcher) {
        let first = tokio::select! {
            _ = self.shutdown.cancelled() => return,
            first = tokio::time::timeout(
                HEADER_READ_TIMEOUT,
                head::read_first(&mut stream, MAX_REQUEST_HEAD_BYTES),
            ) => first,
        };
        let pre = match first {
            // As hyper does: a client that sends no head in time is dropped.
            Err(_) | Ok(FirstRequest::Gone) => return,
            Ok(FirstRequest::Other(read)) => read,
            Ok(FirstRequest::Stream(req, rest)) => {
                let Slotted { stream: tcp, _slot } = stream;
                let socket = Arc::new(DirectSocket::new(tcp));
                let ended = self.direct(&socket, *req, peer).await;
                if let direct::Ended::Upgraded(upgrade) = ended {
                    return upgrade(socket, rest).await;
                }
                match (ended, Arc::try_unwrap(socket)) {
                    (direct::Ended::KeepAlive, Ok(socket)) if !self.shutdown.is_cancelled() => {
                        stream = Slotted {
                            stream: socket.into_inner(),
                            _slot,
                        };
                        rest
                    }
                    _ => return,
                }
            }
        };
        let io = StallGuard::new(Rewind::new(pre, stream), self.stall_after);
        let service = WithUpgradeSlot(
            WithClientInfo {
                peer,
                inner: TowerToHyperService::new(warp::service(self.routes.clone())),
            },
            io.flag(),
        );
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        // Boxed for the same reason: only connections hyper serves pay for it.
        if let Err(e) = Box::pin(watcher.watch(conn.into_owned())).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }

    /// Answers one event-stream or WebSocket request on the socket itself.
    async fn direct(
        &self,
        socket: &Arc<DirectSocket>,
        req: hyper::Request<()>,
        peer: SocketAddr,
    ) -> direct::Ended {
        let (parts, ()) = req.into_parts();
        let close = head::wants_close(&parts);
        let mut req =
            hyper::Request::from_parts(parts, http_body_util::Empty::<bytes::Bytes>::new());
        let slot = DirectSlot::new(socket.clone());
        let stall = StallFlag::default();
        req.extensions_mut().insert(slot.clone());
        req.extensions_mut().insert(stall.clone());
        let service = WithClientInfo {
            peer,
            inner: TowerToHyperService::new(warp::service(self.routes.clone())),
        };
        // Boxed: the route future is large, and a task is as big as the
        // largest thing it ever awaits; the stream that follows lives for hours.
        let res = match Box::pin(hyper::service::Service::call(&service, req)).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
        direct::write_response(res, &slot, close, self.stall_after, &stall).await
    }
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
