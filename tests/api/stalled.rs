//! Stalled jobs: a running job silent for its stall period (`stall_after_s`
//! here, for speed) gets `stalled` on single-job SSE and WebSocket streams,
//! and the next state clears it.

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
