//! Streams through a deliberately strict nginx (`nginx/strict.conf.template`:
//! gzip on `text/event-stream`, `proxy_buffering on`, a short read timeout).
//! jobcast's headers and heartbeats must carry every event through it at once
//! and uncompressed, and keep idle streams open; a control stream without
//! those headers shows that the proxy really does swallow events.
//!
//! Latencies are measured from the instant right before the test's Redis
//! write to the instant the client has parsed the event.

use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::app::{Options, TestApp, doc, spawn_app, spawn_app_with};
use crate::clients::{Gateway as _, Sse, Ws};
use crate::support::Nginx;

/// Events per latency run, and the pause between two writes.
const EVENTS: i64 = 20;
const WRITE_INTERVAL: Duration = Duration::from_millis(200);
/// The bound on write → client, per event, through the proxy.
const MAX_LATENCY: Duration = Duration::from_millis(100);
/// The idle tests: nginx cuts an upstream silent this long; jobcast pings
/// every second; the stream stays idle for three read timeouts.
const READ_TIMEOUT: &str = "2s";
const IDLE: Duration = Duration::from_secs(6);

/// A gateway whose SSE and WS heartbeats come every `heartbeat_secs`.
async fn app_with_heartbeat(heartbeat_secs: u64) -> TestApp {
    spawn_app_with(Options {
        tweak: Box::new(move |s| s.heartbeat_secs = heartbeat_secs),
        ..Default::default()
    })
    .await
}

/// A gateway with `heartbeat_secs`, job `job1` at seq 1, behind a strict
/// nginx with the short read timeout.
async fn behind_strict_nginx(heartbeat_secs: u64) -> (TestApp, Nginx) {
    let app = app_with_heartbeat(heartbeat_secs).await;
    app.set("job1", &doc(1, "running")).await;
    let nginx = Nginx::strict(app.addr.port())
        .read_timeout(READ_TIMEOUT)
        .start()
        .await;
    (app, nginx)
}

/// [`behind_strict_nginx`], with an SSE stream through it past its first state.
async fn idle_sse_through_strict_nginx(heartbeat_secs: u64) -> (TestApp, Nginx, Sse) {
    let (app, nginx) = behind_strict_nginx(heartbeat_secs).await;
    let mut s = sse_through(&nginx, &app, "job1").await;
    assert_eq!(s.expect("connected").await.json()["job_id"], "job1");
    assert_eq!(s.expect("progress").await.id.as_deref(), Some("1"));
    (app, nginx, s)
}

async fn sse_through(nginx: &Nginx, app: &TestApp, job: &str) -> Sse {
    let bearer = app.bearer("alice");
    nginx
        .sse_with(
            &format!("/jobs/{job}/events"),
            &[
                ("authorization", bearer.as_str()),
                // What every browser sends: the proxy would gzip if it could.
                ("accept-encoding", "gzip"),
            ],
        )
        .await
}

async fn ws_through(nginx: &Nginx, app: &TestApp, job: &str) -> Ws {
    let proto = format!("jobcast.v1, jobcast.bearer.{}", app.token("alice"));
    nginx
        .ws_with(
            &format!("/jobs/{job}/ws"),
            &[("sec-websocket-protocol", &proto)],
        )
        .await
        .unwrap_or_else(|(status, body)| panic!("ws upgrade through nginx: {status} {body}"))
}

/// A client under measurement: it must hand over the event `seq` next.
enum Client<'a> {
    Sse(&'a mut Sse),
    Ws(&'a mut Ws),
}

impl Client<'_> {
    async fn expect_progress(&mut self, seq: i64) {
        let id = match self {
            Client::Sse(s) => s.expect("progress").await.id,
            Client::Ws(ws) => ws.expect("progress").await["id"]
                .as_str()
                .map(str::to_owned),
        };
        assert_eq!(id, Some(seq.to_string()), "events in order, none lost");
    }
}

/// Writes `EVENTS` documents `WRITE_INTERVAL` apart with one held Redis
/// connection; after each write, waits until the client has the event.
/// Returns each event's write -> receive latency.
async fn measure_latencies(app: &TestApp, job: &str, mut client: Client<'_>) -> Vec<Duration> {
    let mut redis = app.redis().await;
    let key = app.key(job);
    let mut latencies = Vec::new();
    for seq in 2..2 + EVENTS {
        let written = Instant::now();
        let _: () = redis
            .set_ex(&key, doc(seq, "running"), 7200)
            .await
            .expect("SET");
        client.expect_progress(seq).await;
        latencies.push(written.elapsed());
        // Pacing, not synchronisation: the writes are meant to be spaced out.
        tokio::time::sleep_until(written + WRITE_INTERVAL).await;
    }
    latencies
}

fn assert_all_within(latencies: &[Duration], bound: Duration, what: &str) {
    let ms: Vec<u128> = latencies.iter().map(Duration::as_millis).collect();
    let max = latencies.iter().max().expect("some latencies");
    eprintln!("{what}: write -> client latencies (ms): {ms:?}; max {max:?}");
    assert!(
        latencies.iter().all(|l| *l < bound),
        "{what}: every event must arrive within {bound:?} of its write; got (ms) {ms:?}"
    );
}

#[tokio::test]
async fn sse_events_cross_strict_nginx_uncompressed_within_100ms_each() {
    let app = spawn_app().await;
    app.set("job1", &doc(1, "running")).await;
    let nginx = Nginx::strict(app.addr.port()).start().await;

    let mut s = sse_through(&nginx, &app, "job1").await;
    assert_eq!(s.status, 200, "nginx error log:\n{}", nginx.error_log());
    assert_eq!(
        s.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_ne!(
        s.header("content-encoding"),
        Some("gzip"),
        "the strict proxy compressed the stream"
    );
    assert_eq!(s.header("content-encoding"), Some("identity"));
    assert_eq!(s.expect("connected").await.json()["job_id"], "job1");
    assert_eq!(s.expect("progress").await.id.as_deref(), Some("1"));

    let latencies = measure_latencies(&app, "job1", Client::Sse(&mut s)).await;

    assert_all_within(&latencies, MAX_LATENCY, "SSE through strict nginx");
}

#[tokio::test]
async fn ws_frames_cross_strict_nginx_within_100ms_each() {
    let app = spawn_app().await;
    app.set("job1", &doc(1, "running")).await;
    let nginx = Nginx::strict(app.addr.port()).start().await;

    let mut ws = ws_through(&nginx, &app, "job1").await;
    assert_eq!(
        ws.response_headers
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("jobcast.v1")
    );
    assert_eq!(ws.expect("connected").await["job_id"], "job1");
    assert_eq!(ws.expect("progress").await["id"], "1");

    let latencies = measure_latencies(&app, "job1", Client::Ws(&mut ws)).await;

    assert_all_within(&latencies, MAX_LATENCY, "WebSocket through strict nginx");
}

#[tokio::test]
async fn sse_stream_idle_for_three_read_timeouts_stays_open_on_heartbeats() {
    let (app, nginx, mut s) = idle_sse_through_strict_nginx(1).await;

    // Nothing but heartbeats for three read timeouts. Each read is bounded by
    // one read timeout: a ping must come at least that often.
    let idle_start = Instant::now();
    let mut pings = 0;
    while idle_start.elapsed() < IDLE {
        match s.next_within(Duration::from_secs(2)).await {
            Some(ev) if ev.event == ":comment" => pings += 1,
            Some(ev) => panic!("unexpected event while idle: {ev:?}"),
            None => panic!(
                "the proxy closed the stream after {:?} idle ({pings} pings seen); nginx log:\n{}",
                idle_start.elapsed(),
                nginx.error_log()
            ),
        }
    }
    assert!(
        pings >= 4,
        "about one ping a second, got {pings} in {IDLE:?}"
    );

    let written = Instant::now();
    app.publish("job1", &doc(2, "running")).await;
    assert_eq!(s.expect("progress").await.id.as_deref(), Some("2"));
    let latency = written.elapsed();
    eprintln!("SSE after {IDLE:?} idle: {pings} pings, next event in {latency:?}");
    assert!(latency < Duration::from_secs(1), "took {latency:?}");
}

#[tokio::test]
async fn ws_idle_for_three_read_timeouts_stays_open_on_pings() {
    let (app, nginx) = behind_strict_nginx(1).await;
    let mut ws = ws_through(&nginx, &app, "job1").await;
    assert_eq!(ws.expect("connected").await["job_id"], "job1");
    assert_eq!(ws.expect("progress").await["id"], "1");

    // Reading also answers the server's pings (tungstenite queues the pong).
    let idle_start = Instant::now();
    let mut pings = 0;
    while idle_start.elapsed() < IDLE {
        let frame = tokio::time::timeout(Duration::from_secs(2), ws.stream.next())
            .await
            .unwrap_or_else(|_| panic!("no ping within 2 s ({pings} so far)"));
        match frame {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Pong(_))) => {}
            other => panic!(
                "the connection ended or spoke after {:?} idle: {other:?}; nginx log:\n{}",
                idle_start.elapsed(),
                nginx.error_log()
            ),
        }
    }
    assert!(
        pings >= 4,
        "about one ping a second, got {pings} in {IDLE:?}"
    );

    let written = Instant::now();
    app.publish("job1", &doc(2, "running")).await;
    assert_eq!(ws.expect("progress").await["id"], "2");
    let latency = written.elapsed();
    eprintln!("WS after {IDLE:?} idle: {pings} pings, next frame in {latency:?}");
    assert!(latency < Duration::from_secs(1), "took {latency:?}");
}

/// Control: the read timeout is real. Without heartbeats the same proxy cuts
/// the same idle stream after one read timeout.
#[tokio::test]
async fn strict_nginx_cuts_an_sse_stream_without_heartbeats() {
    let (_app, _nginx, mut s) = idle_sse_through_strict_nginx(60).await;

    let idle_start = Instant::now();
    let end = s.next_within(Duration::from_secs(5)).await;
    let cut_after = idle_start.elapsed();
    eprintln!("without heartbeats nginx cut the stream after {cut_after:?}");
    assert!(
        end.is_none(),
        "expected the proxy to cut the stream, got {end:?}"
    );
    assert!(
        cut_after >= Duration::from_millis(1500),
        "cut too early ({cut_after:?}): not the read timeout"
    );
}

/// Control: an event stream without jobcast's headers (no
/// `Content-Encoding: identity`, no `X-Accel-Buffering: no`) does not get
/// through the strict proxy in time, while it does directly. Without this,
/// the tests above could pass against a proxy that buffers nothing.
#[tokio::test]
async fn strict_nginx_swallows_a_stream_that_lacks_jobcasts_headers() {
    let upstream = naive_sse_server().await;
    let nginx = Nginx::strict(upstream).start().await;

    // Directly: the event comes at once.
    let direct = first_event_within(upstream, Duration::from_secs(1)).await;
    eprintln!("naive stream, direct: first event after {direct:?}");
    assert!(
        direct.is_some(),
        "directly, the first event arrives within 1 s"
    );

    // Through nginx: gzip and the proxy buffer hold it back (in practice
    // even the response head, which waits in nginx's output buffer).
    let proxied = first_event_within(nginx.port(), Duration::from_secs(1)).await;
    eprintln!("naive stream, through strict nginx: first event after {proxied:?}");
    assert!(
        proxied.is_none(),
        "the first event got through the strict proxy within 1 s; the proxy does not buffer"
    );
}

/// A raw HTTP/1.1 client: asks `127.0.0.1:port` for `/events` (accepting
/// gzip, as browsers do) and reads until the plain text `event: progress`
/// shows up in the bytes received. Returns how long that took, or `None` if
/// it did not happen within `bound`.
async fn first_event_within(port: u16, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let deadline = started + bound;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    conn.write_all(
        b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nAccept-Encoding: gzip\r\n\r\n",
    )
    .await
    .expect("send request");
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
        if received.windows(15).any(|w| w == b"event: progress") {
            return Some(started.elapsed());
        }
    }
}

/// A minimal event-stream server of the kind the seeds wrote: correct SSE,
/// chunked, but with none of jobcast's proxy defences. It sends one small
/// event per connection at once, then holds the connection open until the
/// client leaves. Returns its port.
async fn naive_sse_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the request head.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let event = "event: progress\ndata: {\"seq\":1,\"overall_progress\":5}\n\n";
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                     Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
                    event.len()
                );
                if conn.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                // Hold the stream open until the client (or nginx) goes away.
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    port
}
