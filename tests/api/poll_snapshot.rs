//! Long-poll and the one-shot snapshot route, plus health endpoints.

use std::time::{Duration, Instant};

use crate::app::spawn_app;
use crate::support::wait_until;

#[tokio::test]
async fn long_poll_answers_at_once_waits_and_times_out() {
    let app = spawn_app().await;
    app.set("j", r#"{"seq":5,"owner_id":"alice"}"#).await;
    let token = app.token("alice");
    let client = reqwest::Client::new();

    let res = client
        .get(app.url("/jobs/j/poll"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-jobcast-event-id"], "5");
    assert_eq!(res.json::<serde_json::Value>().await.unwrap()["seq"], 5);

    // Waits for the next state.
    let waiting = {
        let (client, url, token) = (
            client.clone(),
            app.url("/jobs/j/poll?after=5&timeout=10"),
            token.clone(),
        );
        tokio::spawn(async move { client.get(url).bearer_auth(token).send().await.unwrap() })
    };
    // The waiting poll is parked once the gateway listens on the job's channel.
    wait_until(
        Duration::from_secs(5),
        "the poll listens for news",
        || async { app.numsub(&app.key("j")).await >= 1 },
    )
    .await;
    assert!(!waiting.is_finished(), "nothing new yet: the poll waits");
    app.set("j", r#"{"seq":6,"owner_id":"alice"}"#).await;
    let res = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-jobcast-event-id"], "6");

    // Times out with 204.
    let started = Instant::now();
    let res = client
        .get(app.url("/jobs/j/poll?after=6&timeout=1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(started.elapsed() >= Duration::from_millis(900));

    let res = client
        .get(app.url("/jobs/j/poll?timeout=soon"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn snapshot_reports_redis_as_source_and_404_for_unknown() {
    let app = spawn_app().await;
    app.set("j", r#"{"seq":1,"owner_id":"alice","stage":"x"}"#)
        .await;
    let client = reqwest::Client::new();
    let res = client
        .get(app.url("/jobs/j"))
        .bearer_auth(app.token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-jobcast-source"], "redis");
    assert_eq!(res.json::<serde_json::Value>().await.unwrap()["stage"], "x");

    let mut admin = crate::app::claims("root");
    admin.roles = vec!["admin".into()];
    let res = client
        .get(app.url("/jobs/unknown"))
        .bearer_auth(crate::app::sign(&admin))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["error"],
        "not_found"
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let mut app = spawn_app().await;
    assert_eq!(
        reqwest::get(app.url("/healthz")).await.unwrap().status(),
        200
    );
    let ready = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["redis"], "up");
    app.redis.kill();
    // The report is refreshed in the background, about once a second.
    wait_until(
        Duration::from_secs(5),
        "readyz answers 503: no source reachable (Redis down, no Postgres)",
        || async { reqwest::get(app.url("/readyz")).await.unwrap().status() == 503 },
    )
    .await;
    let unknown = reqwest::get(app.url("/nope")).await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.json::<serde_json::Value>().await.unwrap()["error"],
        "not_found"
    );
}
