//! WebSocket through the public route: frames, subprotocol auth, close codes.

use crate::app::{doc, spawn_app};
use crate::clients::Gateway as _;

#[tokio::test]
async fn ws_stream_carries_updates_until_done_then_closes_1000() {
    let app = spawn_app().await;
    app.set("job1", &doc(1, "running")).await;
    let token = app.token("alice");
    let proto = format!("jobcast.v1, jobcast.bearer.{token}");

    let mut ws = app
        .ws_with("/jobs/job1/ws", &[("sec-websocket-protocol", &proto)])
        .await
        .expect("upgrade");

    assert_eq!(
        ws.response_headers.get("sec-websocket-protocol").unwrap(),
        "jobcast.v1"
    );
    assert_eq!(ws.expect("connected").await["job_id"], "job1");
    let p = ws.expect("progress").await;
    assert_eq!(
        (p["id"].as_str(), p["data"]["seq"].as_i64()),
        (Some("1"), Some(1))
    );

    app.set("job1", &doc(2, "running")).await;
    assert_eq!(ws.expect("progress").await["id"], "2");
    app.publish("job1", &doc(3, "running")).await;
    assert_eq!(ws.expect("progress").await["id"], "3");
    app.set_hash("job1", &[("seq", "4"), ("owner_id", "alice")])
        .await;
    assert_eq!(ws.expect("progress").await["id"], "4");
    app.set("job1", &doc(5, "cancelled")).await;
    assert_eq!(ws.expect("progress").await["id"], "5");
    let done = ws.expect("done").await;
    assert_eq!(
        (done["job_id"].as_str(), done["status"].as_str()),
        (Some("job1"), Some("cancelled"))
    );
    assert_eq!(ws.expect_close().await, 1000);
}

#[tokio::test]
async fn ws_accepts_bearer_header_and_ignores_client_frames() {
    use futures::SinkExt;
    let app = spawn_app().await;
    app.set("j", &doc(1, "running")).await;
    let auth = app.bearer("alice");
    let mut ws = app.ws("/jobs/j/ws", &auth).await;
    ws.expect("connected").await;
    ws.expect("progress").await;
    ws.stream
        .send(tokio_tungstenite::tungstenite::Message::text("hello?"))
        .await
        .unwrap();
    app.set("j", &doc(2, "running")).await;
    assert_eq!(ws.expect("progress").await["id"], "2");
}

#[tokio::test]
async fn ws_last_event_id_skips_the_state_already_seen() {
    let app = spawn_app().await;
    app.set("j", &doc(4, "running")).await;
    let auth = app.bearer("alice");
    let mut ws = app.ws("/jobs/j/ws?last_event_id=4", &auth).await;
    ws.expect("connected").await;
    app.set("j", &doc(5, "running")).await;
    assert_eq!(ws.expect("progress").await["id"], "5");
}
