//! Server-Sent Events through the public route: headers, the event sequence from
//! every kind of worker write, terminal handling and resumption.

use crate::app::{Options, bearer, claims, doc, sign, spawn_app, spawn_app_with};
use crate::child::ChildApp;
use crate::clients::Gateway as _;
use crate::support::RedisServer;

#[tokio::test]
async fn sse_stream_carries_every_kind_of_worker_write_until_done() {
    let app = spawn_app().await;
    app.set("job1", &doc(1, "running")).await;
    let token = app.token("alice");

    let mut s = app.sse("/jobs/job1/events", &bearer(&token)).await;

    assert_eq!(s.status, 200);
    assert_eq!(
        s.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(s.header("cache-control"), Some("no-cache, no-transform"));
    assert_eq!(s.header("content-encoding"), Some("identity"));
    assert_eq!(s.header("x-accel-buffering"), Some("no"));
    assert!(
        s.header("content-length").is_none(),
        "a stream has no Content-Length"
    );

    let first = s.next().await.expect("retry");
    assert!(
        first.retry.is_some_and(|r| (2000..=4000).contains(&r)),
        "retry: drawn from [JOBCAST_SSE_RETRY_MS, 2 × that], got {first:?}"
    );
    assert_eq!(s.expect("connected").await.json()["job_id"], "job1");
    let current = s.expect("progress").await;
    assert_eq!(
        (current.id.as_deref(), current.json()["seq"].as_i64()),
        (Some("1"), Some(1))
    );

    // SET
    app.set("job1", &doc(2, "running")).await;
    assert_eq!(s.expect("progress").await.id.as_deref(), Some("2"));
    // SETEX
    let mut r = app.redis().await;
    let _: () = redis::cmd("SETEX")
        .arg(app.key("job1"))
        .arg(60)
        .arg(doc(3, "running"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(s.expect("progress").await.id.as_deref(), Some("3"));
    // PUBLISH
    app.publish("job1", &doc(4, "running")).await;
    assert_eq!(s.expect("progress").await.id.as_deref(), Some("4"));
    // HSET (the key becomes a hash; a field that parses as JSON is embedded)
    app.set_hash(
        "job1",
        &[
            ("seq", "5"),
            ("owner_id", "alice"),
            ("endpoint_a", r#"{"status":"processed"}"#),
            ("status", "running"),
        ],
    )
    .await;
    let hashed = s.expect("progress").await;
    assert_eq!(hashed.id.as_deref(), Some("5"));
    assert_eq!(hashed.json()["endpoint_a"]["status"], "processed");
    // Terminal
    app.set("job1", &doc(6, "Completed")).await;
    assert_eq!(s.expect("progress").await.id.as_deref(), Some("6"));
    let done = s.expect("done").await.json();
    assert_eq!(
        done,
        serde_json::json!({"job_id":"job1","status":"Completed"})
    );
    s.expect_end().await;
}

#[tokio::test]
async fn connected_comes_first_for_a_claim_holder_watching_anothers_job() {
    let app = spawn_app().await;
    let mut c = crate::app::claims("bob");
    c.jobs = vec!["theirs".into()];
    app.set("theirs", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let mut s = app
        .sse("/jobs/theirs/events", &bearer(&crate::app::sign(&c)))
        .await;
    assert_eq!(s.status, 200);
    // `expect` skips only comments and the bare `retry:`: connected is first.
    assert_eq!(s.expect("connected").await.json()["job_id"], "theirs");
    assert_eq!(s.expect("progress").await.id.as_deref(), Some("1"));
}

#[tokio::test]
async fn last_event_id_equal_to_current_gets_no_duplicate() {
    let app = spawn_app().await;
    app.set("j", &doc(7, "running")).await;
    let token = app.token("alice");
    let auth = bearer(&token);

    let mut s = app
        .sse_with(
            "/jobs/j/events",
            &[("authorization", &auth), ("last-event-id", "7")],
        )
        .await;
    s.expect("connected").await;
    app.set("j", &doc(8, "running")).await;
    let next = s.expect("progress").await;
    assert_eq!(next.id.as_deref(), Some("8"), "id 7 was not sent again");
}

#[tokio::test]
async fn ended_job_answers_204_to_a_client_that_saw_the_end() {
    let app = spawn_app().await;
    app.set("j", &doc(9, "failed")).await;
    let auth = app.bearer("alice");

    let seen = app
        .sse_with(
            "/jobs/j/events",
            &[("authorization", &auth), ("last-event-id", "9")],
        )
        .await;
    assert_eq!(seen.status, 204);

    let mut fresh = app.sse("/jobs/j/events", &auth).await;
    assert_eq!(fresh.status, 200);
    fresh.expect("connected").await;
    assert_eq!(fresh.expect("progress").await.id.as_deref(), Some("9"));
    assert_eq!(fresh.expect("done").await.json()["status"], "failed");
    fresh.expect_end().await;
}

#[tokio::test]
async fn heartbeats_and_padding_are_written() {
    let app = spawn_app_with(Options {
        tweak: Box::new(|s| {
            s.heartbeat_secs = 1;
            s.sse_padding = 2048;
        }),
        ..Default::default()
    })
    .await;
    app.set("j", &doc(1, "running")).await;
    let auth = app.bearer("alice");
    let mut s = app.sse("/jobs/j/events", &auth).await;
    assert!(
        s.next()
            .await
            .unwrap()
            .retry
            .is_some_and(|r| (2000..=4000).contains(&r))
    );
    let pad = s.next().await.unwrap();
    assert_eq!(pad.event, ":comment");
    s.expect("connected").await;
    s.expect("progress").await;
    let ping = s
        .next_within(std::time::Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(
        (ping.event.as_str(), ping.data.as_str()),
        (":comment", "ping")
    );
}

#[tokio::test]
async fn bad_documents_are_dropped_and_the_stream_goes_on() {
    // A child process: its drop counter is moved by this test alone.
    let redis = RedisServer::start().await;
    let app = ChildApp::spawn(&redis.url(), &[]).await;
    let key = "progress:job:j";
    redis.set(key, &doc(1, "running")).await;
    let auth = bearer(&sign(&claims("alice")));
    let mut s = app.sse("/jobs/j/events", &auth).await;
    s.expect("connected").await;
    s.expect("progress").await;
    assert_eq!(
        app.metric("jobcast_documents_dropped_total", "").await,
        0.0,
        "nothing dropped yet"
    );

    redis.publish(key, "not json at all").await;
    redis.publish(key, "[1,2,3]").await;
    redis
        .publish(
            key,
            &format!(r#"{{"seq":2,"pad":"{}"}}"#, "x".repeat(70_000)),
        )
        .await;
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(&[0xffu8, 0xfe, 0x00][..])
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    redis.publish(key, &doc(3, "running")).await;

    let next = s.expect("progress").await;
    assert_eq!(
        next.id.as_deref(),
        Some("3"),
        "only the valid document is forwarded"
    );
    let dropped = app.metric("jobcast_documents_dropped_total", "").await;
    assert!(
        dropped >= 3.0,
        "the three bad messages are counted: {dropped}"
    );
}

#[tokio::test]
async fn a_stream_no_source_can_answer_for_is_503_not_403() {
    let mut app = spawn_app().await;
    app.redis.kill();
    let auth = app.bearer("alice");
    let res = reqwest::Client::new()
        .get(app.url("/jobs/j/events"))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["error"],
        "unavailable"
    );
}
