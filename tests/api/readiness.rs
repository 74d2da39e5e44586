//! Staying answerable under load: `/readyz` answers from a report refreshed in
//! the background (no Redis round trip per probe), and the accept loop keeps
//! open sockets below the open-file limit so a Redis reconnect always finds a
//! descriptor.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::app::{bearer, claims, sign, spawn_app};
use crate::child::ChildApp;
use crate::clients::Gateway as _;
use crate::support::{RedisServer, free_port, wait_until};

/// `calls` of `cmdstat_ping` from `INFO commandstats` (0 before the first PING).
async fn ping_calls(redis: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis.connection().await)
        .await
        .expect("INFO commandstats");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_ping:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn readyz_does_not_ask_redis_per_request() {
    const PROBES: u64 = 60;
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    let before = ping_calls(&app.redis).await;
    let started = Instant::now();
    for _ in 0..PROBES {
        let res = client.get(app.url("/readyz")).send().await.expect("readyz");
        assert_eq!(res.status(), 200);
    }
    let elapsed = started.elapsed();
    let pings = ping_calls(&app.redis).await - before;
    // One refresh a second at most, whatever the number of probes.
    let allowed = elapsed.as_secs() + 2;
    assert!(
        pings <= allowed,
        "{pings} PINGs reached Redis for {PROBES} probes in {elapsed:?} (allowed {allowed})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_cannot_take_the_descriptors_a_redis_reconnect_needs() {
    /// The gateway's open-file limit; it keeps accepted sockets 128 below it.
    const NOFILE: u64 = 256;
    /// Enough idle clients that, without a cap, the gateway would run out of
    /// descriptors with more waiting in the listen backlog (128) than a Redis
    /// restart frees; fewer than the cap plus that backlog, so every connect
    /// completes.
    const CLIENTS: usize = 250;
    jobcast::sys::raise_nofile_limit();
    let mut redis = RedisServer::start().await;
    let app = ChildApp::spawn_with_nofile(free_port(), &redis.url(), &[], Some(NOFILE)).await;
    redis
        .set("progress:job:fd", r#"{"seq":1,"owner_id":"alice"}"#)
        .await;
    let auth = bearer(&sign(&claims("alice")));
    let mut sse = app.sse("/jobs/fd/events", &auth).await;
    sse.expect("connected").await;
    sse.expect("progress").await;

    // Idle clients connect (and say nothing) until the gateway stops accepting.
    let mut idle = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let connect = TcpStream::connect(("127.0.0.1", app.port));
        idle.push(
            tokio::time::timeout(Duration::from_secs(2), connect)
                .await
                .expect("connect in time (the listen backlog takes what is not accepted)")
                .expect("connect"),
        );
    }
    let started = Instant::now();
    wait_until(
        Duration::from_secs(3),
        "the gateway has accepted up to its socket cap",
        || async { app.open_fds() as u64 >= NOFILE - 128 },
    )
    .await;

    // Redis restarts: the listener needs a new descriptor to reconnect.
    redis.restart().await;
    redis
        .set(
            "progress:job:fd",
            r#"{"seq":2,"owner_id":"alice","status":"completed"}"#,
        )
        .await;
    let ev = loop {
        let ev = sse
            .next_within(Duration::from_secs(6))
            .await
            .expect("the stream stays open");
        if ev.event == "progress" {
            break ev;
        }
    };
    assert_eq!(ev.id.as_deref(), Some("2"));
    // Before the header-read timeout (10 s) could have freed any idle socket.
    assert!(started.elapsed() < Duration::from_secs(9));
    let fds = app.open_fds() as u64;
    assert!(
        fds < NOFILE,
        "{fds} descriptors open under a limit of {NOFILE}"
    );
    drop(idle);
}
