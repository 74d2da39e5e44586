//! Shared helpers for the integration tests: throwaway `redis-server`
//! processes ([`RedisServer`]), throwaway Postgres databases ([`TestDb`]),
//! a strict nginx in front of a gateway ([`Nginx`]), a headless browser
//! driven over DevTools ([`Chromium`]), free loopback ports and bounded polling.
//!
//! Nothing here talks to the jobcast code; these only own the real services a
//! test runs jobcast against. `scripts/test.sh` (via `scripts/services.sh`)
//! makes sure `redis-server` is installed and Postgres answers at
//! `JOBCAST_TEST_DATABASE_URL`.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

pub mod chromium;
pub mod nginx;
pub mod postgres_db;
pub mod redis_server;

pub use chromium::Chromium;
pub use nginx::Nginx;
pub use postgres_db::TestDb;
pub use redis_server::RedisServer;

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use tokio::time::Instant;

/// How often [`wait_until`] and [`wait_for`] poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A loopback port that was free a moment ago: binds `127.0.0.1:0`, reads the
/// port the kernel chose, and releases it. Another process may still grab it
/// before the caller binds; callers that spawn servers should retry on
/// "address in use" (as [`RedisServer::start`] does).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
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
