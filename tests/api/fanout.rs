//! Fan-out properties seen from Redis and from clients: one subscription per job
//! however many watchers, seq ordering and dedup, latest-value conflation.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::app::{Options, bearer, spawn_app, spawn_app_with};
use crate::clients::{Gateway as _, Sse};
use crate::support::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_watchers_cost_one_subscription_per_channel() {
    let app = spawn_app_with(Options {
        tweak: Box::new(|s| s.max_connections_per_user = 0),
        ..Default::default()
    })
    .await;
    app.set("hot", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let auth = app.bearer("alice");

    let mut sse = Vec::new();
    for _ in 0..150 {
        let mut s = app.sse("/jobs/hot/events", &auth).await;
        s.expect("connected").await;
        sse.push(s);
    }
    let mut ws = Vec::new();
    for _ in 0..50 {
        let mut w = app.ws("/jobs/hot/ws", &auth).await;
        w.expect("connected").await;
        ws.push(w);
    }
    assert_eq!(app.numsub(&app.key("hot")).await, 1);
    assert_eq!(app.numsub(&app.keyspace_channel("hot")).await, 1);

    // Everyone gets the next update.
    app.publish("hot", r#"{"seq":2,"owner_id":"alice"}"#).await;
    for s in sse.iter_mut() {
        assert_eq!(s.expect("progress").await.id.as_deref(), Some("1"));
        assert_eq!(s.expect("progress").await.id.as_deref(), Some("2"));
    }
    for w in ws.iter_mut() {
        assert_eq!(w.expect("progress").await["id"], "1");
        assert_eq!(w.expect("progress").await["id"], "2");
    }

    drop(sse);
    for w in ws {
        w.close().await;
    }
    wait_until(
        Duration::from_secs(10),
        "the last watcher's leave drops the subscriptions",
        || async {
            app.numsub(&app.key("hot")).await == 0
                && app.numsub(&app.keyspace_channel("hot")).await == 0
        },
    )
    .await;
}

#[tokio::test]
async fn set_and_publish_of_the_same_seq_deliver_once_and_lower_seq_never_follows() {
    let app = spawn_app().await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let auth = app.bearer("alice");
    let mut s = app.sse("/jobs/j/events", &auth).await;
    s.expect("connected").await;
    s.expect("progress").await;

    let d2 = r#"{"seq":2,"owner_id":"alice"}"#;
    app.set("j", d2).await;
    app.publish("j", d2).await;
    app.publish("j", r#"{"seq":1,"owner_id":"alice","late":true}"#)
        .await;
    app.set("j", r#"{"seq":3,"owner_id":"alice"}"#).await;
    app.publish("j", r#"{"seq":2,"owner_id":"alice","stale":true}"#)
        .await;
    app.publish("j", r#"{"seq":4,"owner_id":"alice"}"#).await;

    let mut ids = Vec::new();
    while ids.last().map(String::as_str) != Some("4") {
        ids.push(s.expect("progress").await.id.unwrap());
    }
    assert_eq!(ids, ["2", "3", "4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_gets_latest_state_not_backlog() {
    // A separate gateway process, so its memory is measured alone.
    let redis = crate::support::RedisServer::start().await;
    let child = crate::child::ChildApp::spawn(&redis.url(), &[]).await;
    let port = child.port;
    let mut r = redis.connection().await;
    let key = "progress:job:slow";
    redis.set(key, r#"{"seq":0,"owner_id":"alice"}"#).await;

    // A raw client with a small receive buffer that stops reading.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let mut conn = sock.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let token = crate::app::sign(&crate::app::claims("alice"));
    conn.write_all(
        format!(
            "GET /jobs/slow/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));

    // A second watcher that reads everything paces the writer: each batch is
    // sent once the gateway has taken in the previous one, so what is measured
    // is what the stalled watcher costs, not Redis output queued upstream.
    let fast_seen = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut fast = Sse::connect(
        &format!("http://127.0.0.1:{port}/jobs/slow/events"),
        &[("authorization", &bearer(&token))],
    )
    .await;
    fast.expect("connected").await;
    let fast_task = {
        let seen = fast_seen.clone();
        tokio::spawn(async move {
            while let Some(ev) = fast.next_within(Duration::from_secs(30)).await {
                if let Some(id) = ev.id.and_then(|i| i.parse::<i64>().ok()) {
                    seen.store(id, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
    };

    let before = child.rss_kib();
    let pad = "x".repeat(2000);
    for batch in 0..20 {
        let mut pipe = redis::pipe();
        for seq in batch * 500 + 1..=(batch + 1) * 500 {
            pipe.cmd("PUBLISH")
                .arg(key)
                .arg(format!(
                    r#"{{"seq":{seq},"owner_id":"alice","pad":"{pad}"}}"#
                ))
                .ignore();
        }
        let _: () = pipe.query_async(&mut r).await.unwrap();
        let last = (batch + 1) * 500;
        let seen = fast_seen.clone();
        wait_until(
            Duration::from_secs(20),
            "the gateway took in the batch",
            || {
                let seen = seen.clone();
                async move { seen.load(std::sync::atomic::Ordering::SeqCst) >= last }
            },
        )
        .await;
    }
    let after = child.rss_kib();
    fast_task.abort();
    eprintln!(
        "gateway RSS before {before} KiB, after 10,000 x 2 KB states with a stalled watcher {after} KiB"
    );
    // 10,000 × 2 KB = 20 MB of backlog; conflation keeps the gateway's growth far below it.
    assert!(
        after < before + 8 * 1024,
        "gateway RSS grew from {before} KiB to {after} KiB with a stalled watcher"
    );

    // Resume reading: the stream reaches the latest state and skipped most of the rest.
    let mut text = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !text
        .split("\"seq\":10000,")
        .nth(1)
        .is_some_and(|rest| rest.contains("\n\n"))
    {
        let n = tokio::time::timeout_at(deadline, conn.read(&mut buf))
            .await
            .expect("latest state in time")
            .unwrap();
        assert!(n > 0, "stream ended early");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let delivered = text.matches("event: progress").count();
    assert!(
        delivered < 5_000,
        "a stalled watcher received {delivered} of 10000 states; expected conflation"
    );
    // Whoever wrote them (the feed while the socket took them, the watcher's
    // task once it was full), the events are whole and in order.
    let mut last = -1i64;
    for event in text.split("\nevent: progress\ndata: ").skip(1) {
        let data = event.split('\n').next().unwrap_or_default();
        let doc: serde_json::Value = serde_json::from_str(data)
            .unwrap_or_else(|e| panic!("a torn event ({e}): {:.80}", data));
        let seq = doc["seq"].as_i64().expect("seq");
        assert!(seq > last, "seq {seq} after {last}");
        last = seq;
    }
    assert_eq!(last, 10_000);
}
