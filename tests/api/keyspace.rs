//! Start-up check of Redis keyspace notifications.

use crate::app::{Options, spawn_app_with};
use crate::support::RedisServer;

#[tokio::test]
async fn jobcast_turns_keyspace_notifications_on() {
    let redis = RedisServer::builder()
        .notify_keyspace_events("")
        .start()
        .await;
    let app = spawn_app_with(Options {
        redis: Some(redis),
        ..Default::default()
    })
    .await;
    let mut c = app.redis().await;
    let (_, flags): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut c)
        .await
        .unwrap();
    for f in ['K', '$', 'h', 'g', 'x'] {
        assert!(
            flags.contains(f) || (f != 'K' && flags.contains('A')),
            "flag {f} missing from {flags:?}"
        );
    }
}

#[tokio::test]
async fn without_config_jobcast_still_serves_channels() {
    let redis = RedisServer::builder()
        .disable_config_command()
        .start()
        .await;
    let app = spawn_app_with(Options {
        redis: Some(redis),
        ..Default::default()
    })
    .await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let auth = format!("Bearer {}", app.token("alice"));
    let mut s =
        crate::clients::Sse::connect(&app.url("/jobs/j/events"), &[("authorization", &auth)]).await;
    s.expect("connected").await;
    s.expect("progress").await;
    app.publish("j", r#"{"seq":2,"owner_id":"alice"}"#).await;
    assert_eq!(s.expect("progress").await.id.as_deref(), Some("2"));
}
