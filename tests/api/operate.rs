//! Operating jobcast: metrics that move as they should, JSON logs without
//! tokens, connection limits, and a graceful drain on SIGTERM.

use std::time::{Duration, Instant};

use crate::app::{Options, bearer, claims, sign, spawn_app_with};
use crate::child::ChildApp;
use crate::clients::Gateway as _;
use crate::support::{RedisServer, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_a_scripted_scenario_plays() {
    let redis = RedisServer::start().await;
    let app = ChildApp::spawn(&redis.url(), &[]).await;
    redis
        .set("progress:job:m", r#"{"seq":1,"owner_id":"alice"}"#)
        .await;
    let auth = bearer(&sign(&claims("alice")));

    let before = app.metrics().await;
    assert!(
        before.contains("jobcast_redis_up"),
        "metrics are exposed before any traffic"
    );
    // The process listens before its pub/sub connection is up.
    wait_until(Duration::from_secs(10), "jobcast_redis_up is 1", || async {
        app.metric("jobcast_redis_up", "").await == 1.0
    })
    .await;

    let mut sse = app.sse("/jobs/m/events", &auth).await;
    sse.expect("connected").await;
    sse.expect("progress").await;
    let mut ws = app.ws("/jobs/m/ws", &auth).await;
    ws.expect("connected").await;
    ws.expect("progress").await;
    assert_eq!(
        app.metric("jobcast_connections", r#"transport="sse""#)
            .await,
        1.0
    );
    assert_eq!(
        app.metric("jobcast_connections", r#"transport="ws""#).await,
        1.0
    );
    assert_eq!(app.metric("jobcast_active_jobs", "").await, 1.0);
    assert_eq!(app.metric("jobcast_watchers", "").await, 2.0);
    assert_eq!(app.metric("jobcast_redis_up", "").await, 1.0);

    redis
        .publish("progress:job:m", r#"{"seq":2,"owner_id":"alice"}"#)
        .await;
    redis
        .publish("progress:job:m", r#"{"seq":2,"owner_id":"alice"}"#)
        .await;
    redis.publish("progress:job:m", "garbage").await;
    redis
        .set("progress:job:m", r#"{"seq":3,"owner_id":"alice"}"#)
        .await;
    assert_eq!(sse.expect("progress").await.id.as_deref(), Some("2"));
    assert_eq!(sse.expect("progress").await.id.as_deref(), Some("3"));
    ws.expect("progress").await;
    ws.expect("progress").await;
    let bad = reqwest::Client::new()
        .get(app.url("/jobs/m/events"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);

    let text = app.metrics().await;
    let m = |name: &str, labels: &str| crate::child::metric_value(&text, name, labels);
    assert_eq!(
        m("jobcast_events_delivered_total", r#"transport="sse""#),
        3.0
    );
    assert_eq!(
        m("jobcast_events_delivered_total", r#"transport="ws""#),
        3.0
    );
    assert_eq!(m("jobcast_redis_events_total", r#"source="channel""#), 3.0);
    assert!(m("jobcast_redis_events_total", r#"source="keyspace""#) >= 1.0);
    assert_eq!(
        m("jobcast_documents_dropped_total", r#"reason="stale""#),
        1.0
    );
    assert_eq!(
        m("jobcast_documents_dropped_total", r#"reason="invalid""#),
        1.0
    );
    assert!(m("jobcast_auth_failures_total", r#"reason="malformed""#) >= 1.0);
    assert!(m("jobcast_delivery_latency_seconds_count", "") >= 6.0);
    assert!(m("jobcast_redis_reads_total", "") >= 2.0);

    drop(sse);
    ws.close().await;
    wait_until(
        Duration::from_secs(10),
        "both connections are counted closed",
        || async {
            app.metric("jobcast_connections", "").await == 0.0
                && app.metric("jobcast_watchers", "").await == 0.0
        },
    )
    .await;
    assert!(
        app.metric("jobcast_connections_closed_total", r#"transport="sse""#)
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_and_never_hold_a_token() {
    let redis = RedisServer::start().await;
    let mut app = ChildApp::spawn(
        &redis.url(),
        &[
            ("JOBCAST_LOG_FORMAT", "json".into()),
            ("RUST_LOG", "trace".into()),
        ],
    )
    .await;
    redis
        .set(
            "progress:job:l",
            r#"{"seq":1,"owner_id":"alice","status":"completed"}"#,
        )
        .await;
    let token = sign(&claims("alice"));
    let wrong = sign(&claims("mallory"));
    let client = reqwest::Client::new();
    for url in [
        app.url(&format!("/jobs/l/events?access_token={token}")),
        app.url(&format!("/jobs/l/poll?access_token={wrong}")),
    ] {
        let _ = client.get(url).send().await.unwrap().bytes().await;
    }
    let _ = client
        .get(app.url("/jobs/l"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let _ = client
        .get(app.url("/jobs/l"))
        .header("cookie", format!("jobcast_token={wrong}"))
        .send()
        .await
        .unwrap();

    // Every line is in the log once the process has exited.
    app.signal(libc::SIGTERM);
    let status = app.exited().await;
    assert!(status.success(), "clean exit, got {status:?}");
    let log = app.log();
    assert!(log.lines().count() > 5, "trace logging wrote lines: {log}");
    for line in log.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let sig = |t: &str| t.rsplit('.').next().unwrap_or(t).to_owned();
        assert!(
            !line.contains(&token) && !line.contains(&sig(&token)),
            "a token leaked into: {line}"
        );
        assert!(
            !line.contains(&wrong) && !line.contains(&sig(&wrong)),
            "a token leaked into: {line}"
        );
    }
}

#[tokio::test]
async fn connection_limits_answer_429_and_recover_below_them() {
    let app = spawn_app_with(Options {
        tweak: Box::new(|s| {
            s.max_connections = 3;
            s.max_connections_per_user = 2;
        }),
        ..Default::default()
    })
    .await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let mut c = claims("bob");
    c.jobs = vec!["j".into()];
    let (alice, bob) = (app.bearer("alice"), bearer(&sign(&c)));
    let mut carol_c = claims("carol");
    carol_c.jobs = vec!["*".into()];
    let carol = bearer(&sign(&carol_c));

    let mut a1 = app.sse("/jobs/j/events", &alice).await;
    a1.expect("connected").await;
    let mut a2 = app.ws("/jobs/j/ws", &alice).await;
    a2.expect("connected").await;
    let a3 = app.sse("/jobs/j/events", &alice).await;
    assert_eq!(a3.status, 429, "per-user limit");
    let mut b1 = app.sse("/jobs/j/events", &bob).await;
    b1.expect("connected").await;
    let res = reqwest::Client::new()
        .get(app.url("/jobs/j/events"))
        .header("authorization", &carol)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429, "overall limit");
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["error"],
        "too_many_connections"
    );
    assert!(matches!(
        app.ws_with("/jobs/j/ws", &[("authorization", &carol)])
            .await,
        Err((429, _))
    ));

    drop(a1);
    wait_until(
        Duration::from_secs(10),
        "a freed slot is usable again",
        || async {
            let s = app.sse("/jobs/j/events", &carol).await;
            s.status == 200
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_hundred_streams_politely_in_time_and_persists_the_last_state() {
    let redis = RedisServer::start().await;
    let db = crate::support::TestDb::create().await;
    let app = ChildApp::spawn(
        &redis.url(),
        &[
            ("JOBCAST_SHUTDOWN_SECS", "5".into()),
            ("JOBCAST_MAX_CONNECTIONS_PER_USER", "0".into()),
            ("DATABASE_URL", db.url().to_owned()),
        ],
    )
    .await;
    redis
        .set("progress:job:d", r#"{"seq":1,"owner_id":"alice"}"#)
        .await;
    let auth = bearer(&sign(&claims("alice")));
    let mut sses = Vec::new();
    let mut wss = Vec::new();
    for _ in 0..50 {
        let mut s = app.sse("/jobs/d/events", &auth).await;
        s.expect("connected").await;
        s.expect("progress").await;
        sses.push(s);
        let mut w = app.ws("/jobs/d/ws", &auth).await;
        w.expect("connected").await;
        w.expect("progress").await;
        wss.push(w);
    }
    // A newer state, delivered to everyone; the write-behind (at most once a
    // second per job) may not have written it yet when the signal comes.
    redis
        .set(
            "progress:job:d",
            r#"{"seq":2,"owner_id":"alice","stage":"last"}"#,
        )
        .await;
    for s in sses.iter_mut() {
        assert_eq!(s.expect("progress").await.id.as_deref(), Some("2"));
    }
    for w in wss.iter_mut() {
        assert_eq!(w.expect("progress").await["id"], "2");
    }

    let started = Instant::now();
    app.signal(libc::SIGTERM);

    for s in sses.iter_mut() {
        let last = s.next().await.expect("a final retry: before the end");
        assert!(
            last.retry.is_some(),
            "SSE goodbye is a retry: line, got {last:?}"
        );
        assert!(s.next().await.is_none(), "then the stream ends");
    }
    for w in wss.iter_mut() {
        assert_eq!(w.expect_close().await, 1012);
    }
    let mut app = app;
    let status = tokio::time::timeout(Duration::from_secs(6), app.child.wait())
        .await
        .expect("the process exits within JOBCAST_SHUTDOWN_SECS")
        .expect("wait");
    assert!(status.success(), "clean exit, got {status:?}");
    assert!(started.elapsed() < Duration::from_secs(6));

    let (seq, stage): (Option<i64>, Option<String>) =
        sqlx::query_as("SELECT seq, snapshot->>'stage' FROM jobcast.jobs WHERE id = 'd'")
            .fetch_one(&db.pool().await)
            .await
            .expect("the job's row exists");
    assert_eq!(
        (seq, stage.as_deref()),
        (Some(2), Some("last")),
        "the last state is in Postgres"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = crate::app::spawn_app().await;
    let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    // Slow-loris: half a request head, then silence.
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf))
        .await
        .expect("the server cuts the connection within the header read timeout");
    let waited = started.elapsed();
    assert!(
        matches!(read, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).contains("408"),
        "connection closed (or 408), got {read:?}"
    );
    assert!(
        waited >= Duration::from_secs(5),
        "not cut before the timeout: {waited:?}"
    );
}
