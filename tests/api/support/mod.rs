//! Shared helpers for the integration tests: throwaway `redis-server`
//! processes ([`RedisServer`]), a Redis Cluster ([`RedisCluster`]) and a
//! Sentinel deployment ([`SentinelSetup`]) made of them, throwaway Postgres databases ([`TestDb`]),
//! a strict nginx in front of a gateway ([`Nginx`]), a headless browser
//! driven over DevTools ([`Chromium`]), free loopback ports and bounded polling.
//!
//! Nothing here talks to the jobcast code; these only own the real services a
//! test runs jobcast against. `scripts/test.sh` (via `scripts/services.sh`)
//! makes sure `redis-server` is installed and Postgres answers at
//! `JOBCAST_TEST_DATABASE_URL`.

pub mod chromium;
pub mod idp;
pub mod jwks_server;
pub mod nginx;
pub mod otlp_receiver;
pub mod postgres_db;
pub mod redis_cluster;
pub mod redis_sentinel;
pub mod redis_server;
pub mod session_app;

pub use chromium::Chromium;
pub use nginx::Nginx;
pub use otlp_receiver::OtlpReceiver;
pub use postgres_db::TestDb;
pub use redis_cluster::RedisCluster;
pub use redis_sentinel::SentinelSetup;
pub use redis_server::RedisServer;
pub use session_app::SessionApp;

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use tokio::time::Instant;

/// How often [`wait_until`] and [`wait_for`] poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A loopback port that is free now and that no other test of this process
/// has been given: ports come from a per-process counter below the kernel's
/// ephemeral range (so no client socket takes them either), each checked with
/// a bind. Never handing a port out twice matters: a test that kills its
/// `redis-server` and restarts it on the same port must not find another
/// test's server there meanwhile. Callers that spawn servers still retry on
/// "address in use" (another process may hold the port).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    /// Ports handed out come from [FIRST_PORT, 32768).
    const FIRST_PORT: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Start at a point that depends on the pid, so two test processes on one
    // machine rarely walk the same ports.
    let _ = NEXT.compare_exchange(
        0,
        FIRST_PORT + (std::process::id() % 6_000) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = FIRST_PORT + port.wrapping_sub(FIRST_PORT) % SPAN;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free loopback port in {FIRST_PORT}..{}",
        FIRST_PORT + SPAN
    )
}

/// Polls `condition` every [`POLL_INTERVAL`] until it yields `true`; panics
/// naming `what` if that has not happened within `timeout`. A single call of
/// `condition` that hangs is cut off at the same deadline.
///
/// ```ignore
/// wait_until(Duration::from_secs(5), "the key expires", || async {
///     !con.clone().exists::<_, bool>("k").await.unwrap_or(true)
/// })
/// .await;
/// ```
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await;
}

/// Like [`wait_until`], for a probe that returns the value it was waiting
/// for: polls until `probe` yields `Some(value)` and returns that value.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(value)) = tokio::time::timeout_at(deadline, probe()).await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
