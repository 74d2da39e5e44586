//! No reconnect storms: every SSE stream gets its own `retry:`, a drain
//! spreads its clients' return over `JOBCAST_SHUTDOWN_SECS` (SSE `retry:`,
//! WebSocket 1012 reason), and `JOBCAST_MAX_CONNECT_RATE` turns a wave of new
//! connections into `429` + `Retry-After`.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::app::{Options, bearer, claims, sign, spawn_app_with};
use crate::child::ChildApp;
use crate::clients::{Gateway as _, Sse};
use crate::support::wait_until;

fn no_per_user_limit() -> Options {
    Options {
        tweak: Box::new(|s| s.max_connections_per_user = 0),
        ..Default::default()
    }
}

#[tokio::test]
async fn each_sse_stream_gets_its_own_retry_between_the_setting_and_twice_it() {
    let app = spawn_app_with(no_per_user_limit()).await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let auth = app.bearer("alice");
    let base = app.settings.sse_retry_ms;
    let mut retries = Vec::new();
    for _ in 0..20 {
        let mut s = app.sse("/jobs/j/events", &auth).await;
        assert_eq!(s.status, 200);
        let first = s.next().await.expect("the stream opens with retry:");
        retries.push(first.retry.expect("the first line is retry:"));
        s.expect("connected").await;
    }
    assert!(
        retries.iter().all(|r| (base..=2 * base).contains(r)),
        "every retry in [{base}, {}]: {retries:?}",
        2 * base
    );
    let distinct: HashSet<u64> = retries.iter().copied().collect();
    assert!(
        distinct.len() >= 10,
        "at least 10 distinct retry: values among 20, got {retries:?}"
    );
}

/// 200 EventSource-like clients on instance A; A drains (SIGTERM). Each client
/// does what EventSource does with the final `retry:` — waits that long — and
/// then reconnects, here to instance B (what a load balancer would pick). The
/// returns reach B spread over at least half the drain window, not as one wave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_of_200_streams_returns_them_spread_over_the_drain_window() {
    const STREAMS: usize = 200;
    const DRAIN_SECS: u64 = 4;
    let b = spawn_app_with(no_per_user_limit()).await;
    let a = ChildApp::spawn(
        &b.redis.url(),
        &[
            ("JOBCAST_SHUTDOWN_SECS", DRAIN_SECS.to_string()),
            ("JOBCAST_MAX_CONNECTIONS_PER_USER", "0".into()),
        ],
    )
    .await;
    b.set("d", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let auth = bearer(&sign(&claims("alice")));
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let mut s = a.sse("/jobs/d/events", &auth).await;
        s.expect("connected").await;
        s.expect("progress").await;
        streams.push(s);
    }

    let drained_at = Instant::now();
    a.signal(libc::SIGTERM);
    let b_url = b.url("/jobs/d/events");
    let returns: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            let (url, auth) = (b_url.clone(), auth.clone());
            tokio::spawn(async move {
                let last = s.next().await.expect("a final retry: before the end");
                let retry = last.retry.expect("the drain's last line is retry:");
                assert!(s.next().await.is_none(), "then the stream ends");
                // The client's own reconnect delay (EventSource honours retry:),
                // not a wait for the server: this is the behaviour under test.
                tokio::time::sleep(Duration::from_millis(retry)).await;
                let mut again = Sse::connect(&url, &[("authorization", &auth)]).await;
                again.expect("connected").await;
                (retry, drained_at.elapsed())
            })
        })
        .collect();
    let mut back = Vec::with_capacity(STREAMS);
    for r in returns {
        back.push(
            tokio::time::timeout(Duration::from_secs(DRAIN_SECS + 20), r)
                .await
                .expect("every client is back in time")
                .expect("client task"),
        );
    }

    let window = Duration::from_secs(DRAIN_SECS);
    assert!(
        back.iter()
            .all(|(retry, _)| *retry <= window.as_millis() as u64),
        "final retry: values lie within the drain window"
    );
    let mut at: Vec<Duration> = back.iter().map(|(_, t)| *t).collect();
    at.sort();
    let spread = at[STREAMS - 1] - at[0];
    assert!(
        spread >= window / 2,
        "returns spread over at least half the {window:?} drain window, got {spread:?}"
    );
    let busiest_second = (0..STREAMS)
        .map(|i| {
            at[i..]
                .iter()
                .take_while(|t| **t - at[i] < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        busiest_second <= STREAMS * 6 / 10,
        "no one second takes most of the returns: {busiest_second} of {STREAMS} in the busiest"
    );
}

#[tokio::test]
async fn a_drained_websocket_is_told_when_to_come_back() {
    let mut app = spawn_app_with(Options {
        tweak: Box::new(|s| s.shutdown_secs = 3),
        ..Default::default()
    })
    .await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let auth = app.bearer("alice");
    let mut delays = HashSet::new();
    let mut sockets = Vec::new();
    for _ in 0..10 {
        let mut ws = app.ws("/jobs/j/ws", &auth).await;
        ws.expect("connected").await;
        ws.expect("progress").await;
        sockets.push(ws);
    }
    let stopping = tokio::spawn(async move {
        app.stop().await;
    });
    for ws in sockets.iter_mut() {
        let (code, reason) = ws.expect_close_frame().await;
        assert_eq!(code, 1012, "{reason}");
        let delay: u64 = reason
            .strip_prefix("gateway restarting; reconnect in ")
            .and_then(|r| r.strip_suffix(" ms"))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("the reason names a delay: {reason:?}"));
        assert!(delay <= 3000, "within JOBCAST_SHUTDOWN_SECS: {delay}");
        delays.insert(delay);
    }
    assert!(delays.len() >= 5, "delays are drawn per socket: {delays:?}");
    stopping.await.expect("drained");
}

#[tokio::test]
async fn connections_beyond_the_connect_rate_get_429_with_retry_after() {
    let app = spawn_app_with(Options {
        tweak: Box::new(|s| {
            s.max_connect_rate = 5;
            s.max_connections_per_user = 0;
        }),
        ..Default::default()
    })
    .await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let auth = app.bearer("alice");
    let client = reqwest::Client::new();
    let open = || {
        client
            .get(app.url("/jobs/j/poll"))
            .header("authorization", &auth)
            .send()
    };
    let mut admitted = 0;
    let mut refused = Vec::new();
    let started = Instant::now();
    for _ in 0..20 {
        let res = open().await.expect("request");
        match res.status().as_u16() {
            200 => admitted += 1,
            429 => refused.push(res),
            other => panic!("unexpected status {other}"),
        }
    }
    // The burst (one second's worth), plus what the bucket refilled while
    // the requests were being made (5 a second), plus one for rounding.
    let refilled = (started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        (5..=5 + refilled + 1).contains(&admitted),
        "the burst and the refill admitted, no more: {admitted} (refilled {refilled})"
    );
    let res = refused.pop().expect("some were refused");
    let retry_after: u64 = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds");
    assert!((1..=4).contains(&retry_after), "Retry-After {retry_after}");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "too_many_connections");
    // The bucket refills: within a few seconds a new connection is admitted.
    wait_until(Duration::from_secs(5), "the rate admits again", || async {
        open().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
}
