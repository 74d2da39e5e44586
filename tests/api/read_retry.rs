//! A state read that fails is retried: the keyspace event that asked for it
//! may carry a job's last state, and a watcher must still get `done`. After a
//! reconnect, watched jobs are re-read a few at a time, not all at once.

use std::time::Duration;

use crate::app::{Options, TestApp, bearer, claims, sign, spawn_app_with};
use crate::clients::Gateway as _;
use crate::support::wait_until;

async fn acl(app: &TestApp, args: &[&str]) {
    let mut c = app.redis().await;
    let _: () = redis::cmd("ACL")
        .arg(args)
        .query_async(&mut c)
        .await
        .unwrap_or_else(|e| panic!("ACL {args:?}: {e}"));
}

/// Commands the ACL log says were refused, as `(username, object)` pairs.
async fn acl_denials(app: &TestApp) -> Vec<String> {
    let mut c = app.redis().await;
    let entries: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut c)
        .await
        .expect("ACL LOG");
    entries
        .into_iter()
        .filter_map(|e| match e {
            redis::Value::Array(kv) | redis::Value::Set(kv) => Some(format!("{kv:?}")),
            redis::Value::Map(kv) => Some(format!("{kv:?}")),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_refused_state_read_is_retried_until_the_watcher_gets_done() {
    // No periodic re-read: only the retry can deliver the final state here.
    let app = spawn_app_with(Options {
        tweak: Box::new(|s| s.resync_secs = 0),
        ..Default::default()
    })
    .await;
    app.set(
        "retry",
        r#"{"seq":1,"owner_id":"alice","status":"running"}"#,
    )
    .await;
    let auth = app.bearer("alice");
    let mut sse = app.sse("/jobs/retry/events", &auth).await;
    sse.expect("connected").await;
    assert_eq!(sse.expect("progress").await.id.as_deref(), Some("1"));

    // Reads start failing: the gateway's Redis user may no longer run scripts.
    acl(&app, &["LOG", "RESET"]).await;
    acl(&app, &["SETUSER", "default", "-evalsha", "-eval"]).await;
    // The final state, written with SET only: its keyspace event is the only news.
    app.set(
        "retry",
        r#"{"seq":2,"owner_id":"alice","status":"completed"}"#,
    )
    .await;
    wait_until(
        Duration::from_secs(5),
        "Redis refused the gateway's read of the final state",
        || async {
            acl_denials(&app)
                .await
                .iter()
                .any(|e| e.contains("evalsha"))
        },
    )
    .await;
    acl(&app, &["SETUSER", "default", "+@all"]).await;

    let ev = sse.expect("progress").await;
    assert_eq!(ev.id.as_deref(), Some("2"), "the retried read delivered it");
    sse.expect("done").await;
}

#[tokio::test]
async fn a_state_read_that_times_out_on_a_paused_redis_is_retried() {
    let app = spawn_app_with(Options {
        tweak: Box::new(|s| s.resync_secs = 0),
        ..Default::default()
    })
    .await;
    app.set("paused", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let auth = app.bearer("alice");
    let mut sse = app.sse("/jobs/paused/events", &auth).await;
    sse.expect("connected").await;
    sse.expect("progress").await;

    // The final state and a pause of writes (scripts included) longer than the
    // gateway's 2 s read bound, in one step: the keyspace event goes out as the
    // transaction ends, and the read it triggers times out.
    let mut c = app.redis().await;
    let _: () = redis::pipe()
        .atomic()
        .set(
            app.key("paused"),
            r#"{"seq":2,"owner_id":"alice","status":"completed"}"#,
        )
        .ignore()
        .cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("WRITE")
        .ignore()
        .query_async(&mut c)
        .await
        .expect("SET + CLIENT PAUSE");

    let ev = sse
        .next_within(Duration::from_secs(8))
        .await
        .expect("the stream stays open");
    assert_eq!(
        (ev.event.as_str(), ev.id.as_deref()),
        ("progress", Some("2")),
        "the timed-out read was retried"
    );
    sse.expect("done").await;
}

/// `connected_clients` from `INFO clients`.
async fn connected_clients(app: &TestApp) -> u64 {
    let mut c = app.redis().await;
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut c)
        .await
        .expect("INFO clients");
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("connected_clients in INFO")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_watched_jobs_are_re_read_a_few_at_a_time() {
    const JOBS: usize = 48;
    let mut app = spawn_app_with(Options {
        tweak: Box::new(|s| s.resync_secs = 0),
        ..Default::default()
    })
    .await;
    let mut admin = claims("ops");
    admin.roles = vec!["admin".into()];
    let auth = bearer(&sign(&admin));
    let mut watchers = Vec::with_capacity(JOBS);
    for i in 0..JOBS {
        let job = format!("many-{i}");
        app.set(&job, r#"{"seq":1,"owner_id":"alice"}"#).await;
        let mut sse = app.sse(&format!("/jobs/{job}/events"), &auth).await;
        sse.expect("connected").await;
        sse.expect("progress").await;
        watchers.push(sse);
    }

    // Redis restarts empty; the workers write the next state meanwhile.
    app.redis.restart().await;
    for i in 0..JOBS {
        app.set(&format!("many-{i}"), r#"{"seq":2,"owner_id":"alice"}"#)
            .await;
    }
    for sse in &mut watchers {
        let ev = loop {
            let ev = sse
                .next_within(Duration::from_secs(15))
                .await
                .expect("the stream stays open");
            if ev.event == "progress" {
                break ev;
            }
        };
        assert_eq!(ev.id.as_deref(), Some("2"), "the re-read state arrives");
    }
    // The pool opened only as many connections as reads ran at once (plus the
    // pub/sub connection, the health check and this test's own connection),
    // not one per watched job up to the pool's size.
    let clients = connected_clients(&app).await;
    assert!(
        clients <= 14,
        "{clients} connections to Redis after re-reading {JOBS} jobs"
    );
}
