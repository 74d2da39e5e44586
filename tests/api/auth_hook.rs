//! `JOBCAST_AUTH_URL`: a cookie-session application decides who may watch,
//! through a small app server of the suite ([`SessionApp`]): its users get in
//! with their own session cookie on every route, refusals map to 401/403, an
//! app that fails is 503 (never an allow), a revoked session's open streams
//! end, a valid JWT never asks the app, and 50 streams opened at once with one
//! cookie cost the app one call.

use std::time::Duration;

use tokio::time::Instant;

use crate::app::{Options, TestApp, bearer, claims, sign, spawn_app_with};
use crate::child::ChildApp;
use crate::clients::{Gateway as _, Sse};
use crate::support::{RedisServer, SessionApp};

async fn gateway(session: &SessionApp, cache_secs: u64) -> TestApp {
    let url = session.auth_url();
    spawn_app_with(Options {
        tweak: Box::new(move |s| {
            s.auth_url = Some(url);
            s.auth_cache_secs = cache_secs;
        }),
        ..Default::default()
    })
    .await
}

async fn get(app: &TestApp, path: &str, cookie: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().get(app.url(path));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let body = if status == 200 && path.ends_with("/events") {
        serde_json::Value::Null
    } else {
        res.json().await.unwrap_or_default()
    };
    (status, body)
}

#[tokio::test]
async fn the_apps_user_gets_in_with_their_session_cookie_on_every_route() {
    let session = SessionApp::start().await;
    let app = gateway(&session, 30).await;
    app.set("j", r#"{"seq":1,"owner_id":"someone-else"}"#).await;
    session.grant("alice", "j");
    let cookie = session.sign_in("alice");

    let mut sse = app.sse_with("/jobs/j/events", &[("cookie", &cookie)]).await;
    assert_eq!(sse.status, 200);
    sse.expect("connected").await;
    assert_eq!(sse.expect("progress").await.json()["seq"], 1);
    let own = format!("http://{}", app.addr);
    let mut ws = app
        .ws_with("/jobs/j/ws", &[("cookie", &cookie), ("origin", &own)])
        .await
        .expect("upgrade");
    ws.expect("connected").await;
    assert_eq!(get(&app, "/jobs/j/poll", Some(&cookie)).await.0, 200);
    let (status, doc) = get(&app, "/jobs/j", Some(&cookie)).await;
    assert_eq!((status, doc["seq"].as_i64()), (200, Some(1)));
    assert_eq!(
        session.calls(),
        1,
        "one decision, cached for the other routes"
    );

    // Allowed by the app, but no source knows the job: 404, as for a claim.
    session.grant("alice", "ghost");
    assert_eq!(get(&app, "/jobs/ghost", Some(&cookie)).await.0, 404);
}

#[tokio::test]
async fn refusals_map_to_401_and_403_and_a_foreign_origin_websocket_is_refused() {
    let session = SessionApp::start().await;
    let app = gateway(&session, 30).await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    session.grant("alice", "j");
    let bob = session.sign_in("bob");

    for path in ["/jobs/j/events", "/jobs/j/poll", "/jobs/j"] {
        let (status, body) = get(&app, path, Some(&bob)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("forbidden")),
            "bob on {path}"
        );
        let (status, body) = get(&app, path, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized")),
            "no cookie on {path}"
        );
        let (status, _) = get(&app, path, Some("sid=forged")).await;
        assert_eq!(status, 401, "unknown session on {path}");
    }
    assert!(matches!(
        app.ws_with("/jobs/j/ws", &[("cookie", &bob)]).await,
        Err((403, _))
    ));
    // Cross-site WebSocket hijacking: alice's cookie from another origin.
    let alice = session.sign_in("alice");
    let calls = session.calls();
    let refused = app
        .ws_with(
            "/jobs/j/ws",
            &[("cookie", &alice), ("origin", "https://evil.example")],
        )
        .await;
    assert!(matches!(refused, Err((403, _))), "foreign origin refused");
    assert_eq!(session.calls(), calls, "the app is not even asked");
}

#[tokio::test]
async fn a_valid_jwt_is_checked_the_jwt_way_and_never_asks_the_app() {
    let session = SessionApp::start().await;
    let app = gateway(&session, 30).await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let jwt = sign(&claims("alice"));
    let mut sse = app.sse("/jobs/j/events", &bearer(&jwt)).await;
    sse.expect("connected").await;
    // A valid JWT of another user is refused by ownership, not sent to the app.
    let mallory = bearer(&sign(&claims("mallory")));
    let res = reqwest::Client::new()
        .get(app.url("/jobs/j"))
        .header("authorization", &mallory)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(session.calls(), 0);
}

#[tokio::test]
async fn a_revoked_session_ends_its_open_streams_with_forbidden() {
    let session = SessionApp::start().await;
    let app = gateway(&session, 1).await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    session.grant("alice", "j");
    let cookie = session.sign_in("alice");
    let own = format!("http://{}", app.addr);
    let mut sse = app.sse_with("/jobs/j/events", &[("cookie", &cookie)]).await;
    sse.expect("connected").await;
    sse.expect("progress").await;
    let mut ws = app
        .ws_with("/jobs/j/ws", &[("cookie", &cookie), ("origin", &own)])
        .await
        .expect("upgrade");
    ws.expect("connected").await;
    ws.expect("progress").await;

    session.sign_out("alice");
    let revoked = Instant::now();
    // Within two cache periods (1 s each) of the revocation, plus the call.
    let err = loop {
        match sse.next_within(Duration::from_secs(4)).await {
            Some(ev) if ev.event == "error" => break ev,
            Some(ev) if ev.event == ":comment" => continue,
            other => panic!("expected the stream to end with error, got {other:?}"),
        }
    };
    assert_eq!(err.json(), serde_json::json!({"error": "forbidden"}));
    sse.expect_end().await;
    assert_eq!(ws.expect("error").await["error"], "forbidden");
    assert_eq!(ws.expect_close().await, 1008);
    assert!(revoked.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn an_app_that_fails_or_is_slow_or_down_is_503_never_an_allow() {
    let session = SessionApp::start().await;
    let app = gateway(&session, 30).await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    session.grant("alice", "j");
    let cookie = session.sign_in("alice");

    session.set_failing(true);
    for path in ["/jobs/j/events", "/jobs/j/poll", "/jobs/j"] {
        let (status, body) = get(&app, path, Some(&cookie)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("unavailable")),
            "500 on {path}"
        );
    }
    session.set_failing(false);
    session.set_delay(Duration::from_secs(3));
    let started = Instant::now();
    let (status, _) = get(&app, "/jobs/j", Some(&cookie)).await;
    assert_eq!(status, 503, "an answer later than 2 s");
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "cut at the 2 s bound"
    );
    // Failures are not cached: the app answering again lets the user in.
    session.set_delay(Duration::ZERO);
    assert_eq!(get(&app, "/jobs/j", Some(&cookie)).await.0, 200);

    // Nothing listens at the URL at all.
    let port = crate::support::free_port();
    let dead = spawn_app_with(Options {
        tweak: Box::new(move |s| {
            s.auth_url = Some(format!("http://127.0.0.1:{port}/auth"));
        }),
        ..Default::default()
    })
    .await;
    dead.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    assert_eq!(get(&dead, "/jobs/j/events", Some(&cookie)).await.0, 503);
}

/// The real binary (its own metrics registry): 50 streams opened at once with
/// one cookie for one job make ONE call to the app, and the metrics say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_streams_opened_at_once_with_one_cookie_make_one_call() {
    let session = SessionApp::start().await;
    // Slow enough that all 50 asks overlap the one call.
    session.set_delay(Duration::from_millis(300));
    session.grant("alice", "j");
    let cookie = session.sign_in("alice");
    let redis = RedisServer::start().await;
    let app = ChildApp::spawn(&redis.url(), &[("JOBCAST_AUTH_URL", session.auth_url())]).await;
    redis
        .set("progress:job:j", r#"{"seq":1,"owner_id":"alice"}"#)
        .await;

    let url = app.url("/jobs/j/events");
    let opens = (0..50).map(|_| {
        let (url, cookie) = (url.clone(), cookie.clone());
        async move {
            let mut s = Sse::connect(&url, &[("cookie", &cookie)]).await;
            assert_eq!(s.status, 200);
            s.expect("connected").await;
            s
        }
    });
    let streams = futures::future::join_all(opens).await;
    assert_eq!(streams.len(), 50);
    assert_eq!(session.calls(), 1, "one call for 50 concurrent opens");
    assert_eq!(
        app.metric("jobcast_auth_hook_calls_total", r#"result="allow""#)
            .await,
        1.0
    );
    assert_eq!(
        app.metric("jobcast_auth_hook_cache_hits_total", "").await,
        49.0
    );
    assert_eq!(
        app.metric("jobcast_auth_hook_failures_total", "").await,
        0.0
    );

    // A failing app is counted as such (and the request is 503).
    session.set_delay(Duration::ZERO);
    session.set_failing(true);
    let other = session.sign_in("alice");
    let s = Sse::connect(&url, &[("cookie", &other)]).await;
    assert_eq!(s.status, 503);
    assert_eq!(
        app.metric("jobcast_auth_hook_failures_total", r#"reason="status""#)
            .await,
        1.0
    );
    assert_eq!(
        app.metric("jobcast_auth_hook_calls_total", r#"result="unavailable""#)
            .await,
        1.0
    );
}
