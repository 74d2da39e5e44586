//! Redis ACL users with too few rights: jobcast refuses to start naming the
//! missing permission, and a SUBSCRIBE refused for one job neither breaks the
//! other jobs' streams nor stays refused once the right is granted.

use std::time::Duration;

use crate::app::{Options, spawn_app_with};
use crate::child::ChildApp;
use crate::clients::Gateway as _;
use crate::support::{RedisServer, wait_until};

async fn acl_setuser(redis: &RedisServer, rules: &[&str]) {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(rules)
        .query_async(&mut redis.connection().await)
        .await
        .unwrap_or_else(|e| panic!("ACL SETUSER {rules:?}: {e}"));
}

fn user_url(redis: &RedisServer, user: &str) -> String {
    format!("redis://{user}:secret-pw@127.0.0.1:{}/0", redis.port())
}

#[tokio::test]
async fn a_user_without_channel_rights_is_refused_at_start_naming_the_permission() {
    let redis = RedisServer::start().await;
    acl_setuser(
        &redis,
        &["nochan", "on", ">secret-pw", "~*", "resetchannels", "+@all"],
    )
    .await;
    let (ok, log) = ChildApp::run_to_exit(&user_url(&redis, "nochan"), &[]).await;
    assert!(!ok, "jobcast must not start; log:\n{log}");
    assert!(
        log.contains("ACL channel permission") && log.contains("&__keyspace@0__:progress:job:*"),
        "the error names the channel permission to grant; log:\n{log}"
    );
}

#[tokio::test]
async fn a_user_without_scripting_rights_is_refused_at_start_naming_the_permission() {
    let redis = RedisServer::start().await;
    acl_setuser(
        &redis,
        &[
            "noscript",
            "on",
            ">secret-pw",
            "~*",
            "&*",
            "+@all",
            "-@scripting",
        ],
    )
    .await;
    let (ok, log) = ChildApp::run_to_exit(&user_url(&redis, "noscript"), &[]).await;
    assert!(!ok, "jobcast must not start; log:\n{log}");
    assert!(
        log.contains("+evalsha") && log.contains("evalsha"),
        "the error names the scripting permission to grant; log:\n{log}"
    );
}

#[tokio::test]
async fn a_refused_subscribe_of_one_job_leaves_the_others_streaming_and_is_retried() {
    let redis = RedisServer::start().await;
    // Channels of `ok-*` jobs (and the self-test's) only.
    acl_setuser(
        &redis,
        &[
            "partial",
            "on",
            ">secret-pw",
            "~*",
            "resetchannels",
            "&progress:job:ok-*",
            "&__keyspace@0__:progress:job:ok-*",
            "&progress:job:jobcast-selftest",
            "&__keyspace@0__:progress:job:jobcast-selftest",
            "+@all",
        ],
    )
    .await;
    let url = user_url(&redis, "partial");
    let app = spawn_app_with(Options {
        redis: Some(redis),
        tweak: Box::new(move |s| s.redis_url = url),
        ..Default::default()
    })
    .await;
    let auth = app.bearer("alice");
    app.set("ok-1", r#"{"seq":1,"owner_id":"alice"}"#).await;
    app.set("no-1", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let mut ok = app.sse("/jobs/ok-1/events", &auth).await;
    ok.expect("connected").await;
    ok.expect("progress").await;

    // The refused job still gets its state (read through the pool).
    let mut no = app.sse("/jobs/no-1/events", &auth).await;
    no.expect("connected").await;
    no.expect("progress").await;

    // The shared pub/sub connection survived: the other job's channel still
    // has its subscriber and a PUBLISH-only update reaches its watcher.
    assert_eq!(app.numsub("progress:job:ok-1").await, 1);
    app.publish("ok-1", r#"{"seq":2,"owner_id":"alice"}"#).await;
    assert_eq!(ok.expect("progress").await.id.as_deref(), Some("2"));
    assert_eq!(app.numsub("progress:job:no-1").await, 0);

    // Granted the right, the refused job is subscribed on a later attempt.
    acl_setuser(
        &app.redis,
        &[
            "partial",
            "&progress:job:no-*",
            "&__keyspace@0__:progress:job:no-*",
        ],
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "the refused job's SUBSCRIBE is retried and accepted",
        || async { app.numsub("progress:job:no-1").await == 1 },
    )
    .await;
    app.publish("no-1", r#"{"seq":2,"owner_id":"alice"}"#).await;
    assert_eq!(no.expect("progress").await.id.as_deref(), Some("2"));
    assert_eq!(app.numsub("progress:job:ok-1").await, 1);
}
