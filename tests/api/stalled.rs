//! Stalled jobs: a running job silent for its stall period (`stall_after_s`
//! here, for speed) gets `stalled` on single-job SSE and WebSocket streams
//! (also when it was already silent as the stream opened), and
//! `X-Jobcast-Stalled` on long-poll answers; the next state clears it.

use serde_json::json;

use crate::app::{bearer, spawn_app};
use crate::clients::Gateway;

#[tokio::test]
async fn a_silent_job_is_reported_stalled_on_single_job_streams_until_its_next_state() {
    let app = spawn_app().await;
    app.set("slow", r#"{"seq":1,"owner_id":"alice","stall_after_s":1}"#)
        .await;
    let auth = bearer(&app.token("alice"));
    let mut sse = app.sse("/jobs/slow/events", &auth).await;
    let mut ws = app.ws("/jobs/slow/ws", &auth).await;
    sse.expect("connected").await;
    sse.expect("progress").await;
    ws.expect("connected").await;
    ws.expect("progress").await;

    let stalled = sse.expect("stalled").await.json();
    assert_eq!(stalled["job_id"], "slow");
    assert!(
        stalled["seconds_since_update"]
            .as_u64()
            .is_some_and(|s| s >= 1)
    );
    let frame = ws.expect("stalled").await;
    assert_eq!(frame["job_id"], "slow");

    app.set("slow", r#"{"seq":2,"owner_id":"alice","stall_after_s":1}"#)
        .await;
    assert_eq!(sse.expect("progress").await.id.as_deref(), Some("2"));
    assert_eq!(ws.expect("progress").await["id"], "2");
    // Cleared, then silent again: reported again, once per silence.
    assert_eq!(sse.expect("stalled").await.json()["job_id"], "slow");
    app.set(
        "slow",
        r#"{"seq":3,"owner_id":"alice","status":"completed"}"#,
    )
    .await;
    assert_eq!(sse.expect("progress").await.id.as_deref(), Some("3"));
    assert_eq!(
        sse.expect("done").await.json(),
        json!({"job_id":"slow","status":"completed"})
    );
}

/// One long-poll of `/jobs/slow/poll` with `query`: status, `X-Jobcast-Stalled`.
async fn poll(app: &crate::app::TestApp, auth: &str, query: &str) -> (u16, Option<u64>) {
    let res = reqwest::Client::new()
        .get(app.url(&format!("/jobs/slow/poll?{query}")))
        .header("authorization", auth)
        .timeout(std::time::Duration::from_secs(40))
        .send()
        .await
        .expect("long-poll answered within its bound");
    let stalled = res
        .headers()
        .get("x-jobcast-stalled")
        .map(|v| v.to_str().expect("ASCII").parse().expect("whole seconds"));
    (res.status().as_u16(), stalled)
}

#[tokio::test]
async fn long_poll_says_stalled_ends_a_wait_when_the_job_goes_silent_and_keeps_its_clock_across_polls()
 {
    let app = spawn_app().await;
    app.set("slow", r#"{"seq":1,"owner_id":"alice","stall_after_s":1}"#)
        .await;
    let auth = bearer(&app.token("alice"));
    assert_eq!(
        poll(&app, &auth, "").await,
        (200, None),
        "a fresh state is answered at once, not stalled"
    );

    // A wait during which the job goes silent ends with 204 + the header,
    // long before its 30 s.
    let started = std::time::Instant::now();
    let (status, stalled) = poll(&app, &auth, "after=1&timeout=30").await;
    assert_eq!(status, 204);
    assert!(stalled.is_some_and(|s| s >= 1), "{stalled:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the wait ended when the job stalled: {:?}",
        started.elapsed()
    );
    // Every request builds the job's feed again; the silence goes on: the
    // document comes at once marked stalled, and a wait on an already
    // silent job lasts its timeout (no spinning) and says so again.
    let (status, stalled) = poll(&app, &auth, "").await;
    assert_eq!(status, 200);
    assert!(stalled.is_some_and(|s| s >= 1), "{stalled:?}");
    let started = std::time::Instant::now();
    let (status, stalled) = poll(&app, &auth, "after=1&timeout=2").await;
    assert_eq!((status, stalled.is_some()), (204, true));
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));

    // A new state clears it.
    app.set("slow", r#"{"seq":2,"owner_id":"alice","stall_after_s":30}"#)
        .await;
    assert_eq!(poll(&app, &auth, "after=1").await, (200, None));
}

#[tokio::test]
async fn a_stream_opened_on_a_job_already_stalled_is_told_at_once() {
    let app = spawn_app().await;
    app.set("slow", r#"{"seq":1,"owner_id":"alice","stall_after_s":1}"#)
        .await;
    let auth = bearer(&app.token("alice"));
    let mut first = app.sse("/jobs/slow/events", &auth).await;
    first.expect("connected").await;
    first.expect("progress").await;
    first.expect("stalled").await;

    // Another watcher joins the stalled feed; one after every watcher left
    // builds the feed again from Redis: both hear `stalled` after the state.
    let mut second = app.sse("/jobs/slow/events", &auth).await;
    second.expect("connected").await;
    second.expect("progress").await;
    assert_eq!(second.expect("stalled").await.json()["job_id"], "slow");
    drop((first, second));
    let mut ws = app.ws("/jobs/slow/ws", &auth).await;
    ws.expect("connected").await;
    ws.expect("progress").await;
    let frame = ws.expect("stalled").await;
    assert!(
        frame["seconds_since_update"]
            .as_u64()
            .is_some_and(|s| s >= 1),
        "{frame}"
    );
}
