//! The accept loop: warp's filters served by hyper with the settings warp's own
//! `serve` does not expose: a header read timeout (slow-loris protection), a
//! write-stall bound (`stall`), and an
//! ordered graceful stop (stop accepting, then wait for open connections, whose
//! streams end themselves on the same shutdown token).

use std::convert::Infallible;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
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

pub async fn serve<F, R>(
    listener: TcpListener,
    routes: F,
    stall_after: Duration,
    shutdown: CancellationToken,
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
    loop {
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
