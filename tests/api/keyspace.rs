//! Redis keyspace notifications: turned on at start, turned back on when
//! another application turns them off, and, where they stay off, the periodic
//! re-read still brings a SET-only job to `done` while `/readyz` and a gauge
//! report it.

use std::time::Duration;

use jobcast::upstream::redis_setup::missing_flags;

use crate::app::{Options, bearer, claims, sign, spawn_app_with};
use crate::child::ChildApp;
use crate::clients::Gateway as _;
use crate::support::{RedisServer, wait_until};

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
    for f in ['K', '$', 'h', 'g', 's', 'x'] {
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
    let auth = app.bearer("alice");
    let mut s = app.sse("/jobs/j/events", &auth).await;
    s.expect("connected").await;
    s.expect("progress").await;
    app.publish("j", r#"{"seq":2,"owner_id":"alice"}"#).await;
    assert_eq!(s.expect("progress").await.id.as_deref(), Some("2"));
}

/// `notify-keyspace-events` as Redis has it now.
async fn flags(app: &crate::app::TestApp) -> String {
    let mut c = app.redis().await;
    let (_, flags): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut c)
        .await
        .expect("CONFIG GET");
    flags
}

#[tokio::test]
async fn notifications_turned_off_by_another_app_are_turned_back_on() {
    // No periodic re-read: only the flags coming back can deliver the SET.
    let app = spawn_app_with(Options {
        tweak: Box::new(|s| {
            s.redis_check_secs = 1;
            s.resync_secs = 0;
        }),
        ..Default::default()
    })
    .await;
    app.set("off", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let auth = app.bearer("alice");
    let mut s = app.sse("/jobs/off/events", &auth).await;
    s.expect("connected").await;
    s.expect("progress").await;

    // Another application turns keyspace notifications off.
    let mut c = app.redis().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("")
        .query_async(&mut c)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "jobcast turns the notification flags back on",
        || async { missing_flags(&flags(&app).await).is_empty() },
    )
    .await;
    app.set(
        "off",
        r#"{"seq":2,"owner_id":"alice","status":"completed"}"#,
    )
    .await;
    assert_eq!(s.expect("progress").await.id.as_deref(), Some("2"));
    s.expect("done").await;
}

#[tokio::test]
async fn a_set_only_job_reaches_done_without_notifications_and_readyz_says_so() {
    let redis = RedisServer::builder()
        .notify_keyspace_events("")
        .start()
        .await;
    // jobcast may not turn them on; the periodic re-read is all that is left.
    let app = ChildApp::spawn(
        &redis.url(),
        &[
            ("JOBCAST_CONFIGURE_REDIS", "false".into()),
            ("JOBCAST_RESYNC_SECS", "1".into()),
        ],
    )
    .await;
    redis
        .set("progress:job:quiet", r#"{"seq":1,"owner_id":"alice"}"#)
        .await;
    let auth = bearer(&sign(&claims("alice")));
    let mut s = app.sse("/jobs/quiet/events", &auth).await;
    s.expect("connected").await;
    s.expect("progress").await;

    let readyz: serde_json::Value = reqwest::get(app.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(readyz["keyspace_events"], "off", "{readyz}");
    assert_eq!(readyz["status"], "degraded", "{readyz}");
    assert_eq!(app.metric("jobcast_redis_keyspace_events", "").await, 0.0);

    redis
        .set(
            "progress:job:quiet",
            r#"{"seq":2,"owner_id":"alice","status":"completed"}"#,
        )
        .await;
    let started = std::time::Instant::now();
    let ev = s.expect("progress").await;
    assert_eq!(ev.id.as_deref(), Some("2"));
    s.expect("done").await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the re-read found it within a few periods"
    );
}
