//! A job's final state always arrives: bounded `seq`s, documents without `seq`
//! that do not block the next one, event ids that cannot be confused across a
//! feed's lifetimes, a shutdown that writes the last state to Postgres even
//! while clients hold the drain, and clients that stop reading cut in bounded
//! time (while snapshots meet the per-user limit like streams).

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::app::{Options, bearer, claims, sign, spawn_app, spawn_app_with};
use crate::child::ChildApp;
use crate::clients::{Gateway as _, Sse};
use crate::support::{RedisServer, TestDb, wait_until};

fn auth_for(user: &str) -> String {
    bearer(&sign(&claims(user)))
}

/// An SSE client that sends its request and never reads: its receive buffer
/// is made small so the gateway's writes back up quickly.
async fn unread_sse(port: u16, path: &str, auth: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\nAuthorization: {auth}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("request");
    stream
}

/// Publishes `count` states of ~60 KB (seq `from`..) on `job`, each after the
/// reading `pacer` saw the previous one, so every state reaches the gateway's
/// writers: several MB for a client that does not read, more than loopback
/// socket buffers hold.
async fn flood(redis: &RedisServer, job: &str, pacer: &mut Sse, from: i64, count: i64) {
    let pad = "x".repeat(60_000);
    for seq in from..from + count {
        let doc = format!(r#"{{"seq":{seq},"owner_id":"alice","pad":"{pad}"}}"#);
        redis.publish(&format!("progress:job:{job}"), &doc).await;
        let seen = pacer.expect("progress").await;
        assert_eq!(seen.id, Some(seq.to_string()));
    }
}

#[tokio::test]
async fn seq_outside_0_to_2_pow_53_is_refused_by_post_and_dropped_from_redis() {
    let app = spawn_app().await;
    let mut c = claims("svc");
    c.roles = vec!["publisher".into()];
    c.jobs = vec!["*".into()];
    let publisher = sign(&c);
    for (seq, want) in [
        ("9007199254740992", 400),
        ("-1", 400),
        ("1.5", 400),
        ("9007199254740991", 201),
    ] {
        let res = reqwest::Client::new()
            .post(app.url("/jobs/bounded"))
            .bearer_auth(&publisher)
            .body(format!(r#"{{"seq":{seq},"owner_id":"alice"}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), want, "seq {seq}");
    }

    app.set("big", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let mut sse = app.sse("/jobs/big/events", &auth_for("alice")).await;
    sse.expect("connected").await;
    sse.expect("progress").await;
    app.publish("big", r#"{"seq":18446744073709551615}"#).await;
    app.publish("big", r#"{"seq":9007199254740992}"#).await;
    app.publish("big", r#"{"seq":2,"status":"completed"}"#)
        .await;
    assert_eq!(
        sse.expect("progress").await.id.as_deref(),
        Some("2"),
        "out-of-range seqs did not move the gate"
    );
    sse.expect("done").await;
}

#[tokio::test]
async fn a_document_without_seq_does_not_make_the_next_seq_stale() {
    let app = spawn_app().await;
    app.set("mixed", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let mut sse = app.sse("/jobs/mixed/events", &auth_for("alice")).await;
    sse.expect("connected").await;
    assert_eq!(sse.expect("progress").await.id.as_deref(), Some("1"));

    app.publish("mixed", r#"{"note":"a state without seq"}"#)
        .await;
    let noseq = sse.expect("progress").await;
    assert_eq!(noseq.json()["note"], "a state without seq");
    app.publish("mixed", r#"{"seq":2,"status":"completed"}"#)
        .await;

    assert_eq!(sse.expect("progress").await.id.as_deref(), Some("2"));
    sse.expect("done").await;
}

#[tokio::test]
async fn an_id_from_an_earlier_feed_never_hides_the_final_state() {
    let app = spawn_app().await;
    let auth = auth_for("alice");
    app.set("reborn", r#"{"p":1,"owner_id":"alice"}"#).await;

    // A first watcher sees the first state, then leaves: the job's feed goes.
    let mut first = app.sse("/jobs/reborn/events", &auth).await;
    first.expect("connected").await;
    let seen = first.expect("progress").await.id.expect("an id");
    drop(first);
    let channel = app.key("reborn");
    wait_until(Duration::from_secs(5), "the feed is dropped", || async {
        app.numsub(&channel).await == 0
    })
    .await;

    // The job ends while nobody watches.
    app.set("reborn", r#"{"status":"completed","owner_id":"alice"}"#)
        .await;

    // A client resuming with its old id, or with a counter-style id, still ends.
    for old in [seen.as_str(), "1", "2"] {
        let mut again = app
            .sse_with(
                "/jobs/reborn/events",
                &[("authorization", &auth), ("last-event-id", old)],
            )
            .await;
        assert_eq!(again.status, 200, "resuming with {old}");
        again.expect("connected").await;
        let end = again.expect("progress").await;
        assert_eq!(end.json()["status"], "completed");
        assert_ne!(
            end.id.as_deref(),
            Some(seen.as_str()),
            "a new state has a new id"
        );
        again.expect("done").await;

        // Having seen the end, the same client is told to stop.
        let done_id = end.id.expect("id");
        let res = reqwest::Client::new()
            .get(app.url("/jobs/reborn/events"))
            .header("authorization", &auth)
            .header("last-event-id", done_id)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 204);
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_stall_bound() {
    let redis = RedisServer::start().await;
    let child = ChildApp::spawn(
        &redis.url(),
        &[
            ("JOBCAST_SSE_STALL_SECS", "2".into()),
            ("JOBCAST_MAX_DOCUMENT_BYTES", "65536".into()),
        ],
    )
    .await;
    redis
        .set("progress:job:stall", r#"{"seq":1,"owner_id":"alice"}"#)
        .await;
    let auth = auth_for("alice");
    let mut pacer = child.sse("/jobs/stall/events", &auth).await;
    pacer.expect("connected").await;
    pacer.expect("progress").await;
    let _frozen = unread_sse(child.port, "/jobs/stall/events", &auth).await;
    wait_until(Duration::from_secs(5), "both streams are open", || async {
        child
            .metric("jobcast_connections", r#"transport="sse""#)
            .await
            == 2.0
    })
    .await;

    flood(&redis, "stall", &mut pacer, 2, 120).await;

    wait_until(
        Duration::from_secs(20),
        "the frozen client is cut",
        || async {
            child
                .metric(
                    "jobcast_connections_closed_total",
                    r#"transport="sse",reason="write_stalled""#,
                )
                .await
                == 1.0
        },
    )
    .await;
    assert_eq!(
        child
            .metric("jobcast_connections", r#"transport="sse""#)
            .await,
        1.0
    );
    // The reading watcher is untouched and still gets the end.
    redis
        .publish("progress:job:stall", r#"{"seq":500,"status":"completed"}"#)
        .await;
    assert_eq!(pacer.expect("progress").await.id.as_deref(), Some("500"));
    pacer.expect("done").await;
}

#[tokio::test]
async fn sigterm_writes_the_last_state_even_while_a_frozen_client_holds_the_drain() {
    let redis = RedisServer::start().await;
    let db = TestDb::create().await;
    let mut child = ChildApp::spawn(
        &redis.url(),
        &[
            ("JOBCAST_SHUTDOWN_SECS", "3".into()),
            ("DATABASE_URL", db.url().to_owned()),
        ],
    )
    .await;
    redis
        .set("progress:job:last", r#"{"seq":1,"owner_id":"alice"}"#)
        .await;
    let auth = auth_for("alice");
    let mut pacer = child.sse("/jobs/last/events", &auth).await;
    pacer.expect("connected").await;
    pacer.expect("progress").await;
    let _frozen = unread_sse(child.port, "/jobs/last/events", &auth).await;
    flood(&redis, "last", &mut pacer, 2, 120).await;

    // The last state: delivered, most likely not yet written behind (at most
    // once a second per job) when the signal comes.
    redis
        .set(
            "progress:job:last",
            r#"{"seq":1000,"owner_id":"alice","stage":"last"}"#,
        )
        .await;
    assert_eq!(pacer.expect("progress").await.id.as_deref(), Some("1000"));
    child.signal(libc::SIGTERM);

    tokio::time::timeout(Duration::from_secs(6), child.child.wait())
        .await
        .expect("the process exits by JOBCAST_SHUTDOWN_SECS")
        .expect("wait");
    let (seq,): (Option<i64>,) = sqlx::query_as("SELECT seq FROM jobcast.jobs WHERE id = 'last'")
        .fetch_one(&db.pool().await)
        .await
        .expect("the job's row exists");
    assert_eq!(seq, Some(1000), "the last state reached Postgres");
}

#[tokio::test]
async fn snapshots_meet_the_per_user_limit_like_streams() {
    let app = spawn_app_with(Options {
        tweak: Box::new(|s| s.max_connections_per_user = 2),
        ..Options::default()
    })
    .await;
    app.set("snap", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let auth = auth_for("alice");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = app.sse("/jobs/snap/events", &auth).await;
        s.expect("connected").await;
        held.push(s);
    }
    let res = reqwest::Client::new()
        .get(app.url("/jobs/snap"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 429);
    drop(held);
    wait_until(Duration::from_secs(5), "the slots come back", || async {
        reqwest::Client::new()
            .get(app.url("/jobs/snap"))
            .header("authorization", &auth)
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    })
    .await;
}
