//! The buffering self-test: its routes (`/debug/buffering`, `/debug/ws`,
//! `/debug/poll`) over real HTTP and WebSocket, then the page
//! (`static/buffering.html` + `jobcast.selfTest()`) in headless Chromium,
//! loaded through real nginx: the shipped `nginx/jobcast.conf` (passes), the
//! strict nginx made to buffer and compress (buffered, with the causes named),
//! and a network that refuses event streams (blocked, WebSocket works).
//!
//! Screenshots of each verdict go to `target/test-artifacts/`.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::app::spawn_app;
use crate::clients::Gateway as _;
use crate::support::chromium::artifact_path;
use crate::support::nginx::{STRIP_ACCEL_BUFFERING, STRIP_CONTENT_ENCODING};
use crate::support::{Chromium, Nginx};

/// The stream takes 2 s; a blocked one adds two probes of at most 5 s each.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn selftest_stream_sends_ten_padded_ticks_with_stream_headers_then_a_verdict() {
    let app = spawn_app().await;
    let started = Instant::now();
    let mut sse = app.sse_with("/debug/buffering", &[]).await;
    assert_eq!(sse.status, 200, "no token needed");
    assert_eq!(
        sse.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(sse.header("cache-control"), Some("no-cache, no-transform"));
    assert_eq!(sse.header("content-encoding"), Some("identity"));
    assert_eq!(sse.header("x-accel-buffering"), Some("no"));
    assert_eq!(sse.header("content-length"), None);

    let mut sent_at = Vec::new();
    for n in 1..=10u64 {
        let tick = sse.expect("tick").await;
        // The data line; the padding comment of the same event follows it.
        let data: Value =
            serde_json::from_str(tick.data.lines().next().expect("data")).expect("tick JSON");
        assert_eq!(data["n"], n);
        sent_at.push(data["sent_at_ms"].as_u64().expect("sent_at_ms"));
    }
    let verdict = sse.expect("verdict").await;
    let facts: Value = serde_json::from_str(&verdict.data).expect("verdict JSON");
    assert_eq!(facts["ticks"], 10);
    assert_eq!(facts["http_version"], "HTTP/1.1");
    sse.expect_end().await;

    let spacing: Vec<u64> = sent_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        spacing.iter().all(|ms| (150..=400).contains(ms)),
        "ticks are sent 200 ms apart: {spacing:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1800),
        "the stream is paced, not sent at once"
    );
}

#[tokio::test]
async fn selftest_ticks_are_one_kibibyte_on_the_wire() {
    let app = spawn_app().await;
    let res = reqwest::get(app.url("/debug/buffering"))
        .await
        .expect("request");
    let body = tokio::time::timeout(Duration::from_secs(10), res.text())
        .await
        .expect("the stream ends")
        .expect("body");
    let ticks: Vec<&str> = body
        .split_inclusive("\n\n")
        .filter(|e| e.starts_with("event: tick"))
        .collect();
    assert_eq!(ticks.len(), 10);
    assert!(
        ticks.iter().all(|e| e.len() == 1024),
        "sizes: {:?}",
        ticks.iter().map(|e| e.len()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn selftest_ws_and_poll_probes_answer_without_a_token() {
    let app = spawn_app().await;
    let mut ws = app
        .ws_with("/debug/ws", &[])
        .await
        .unwrap_or_else(|(status, body)| panic!("ws probe: {status} {body}"));
    for n in 1..=3 {
        let frame = ws.expect("tick").await;
        assert_eq!(frame["n"], n);
    }
    assert_eq!(ws.expect_close().await, 1000);

    let res = reqwest::get(app.url("/debug/poll")).await.expect("poll");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(body["transport"], "poll");
}

#[tokio::test]
async fn selftest_routes_are_rate_limited_per_address() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    let limit = jobcast::http::selftest::REQUESTS_PER_MINUTE;
    for i in 0..limit {
        let status = client
            .get(app.url("/debug/poll"))
            .send()
            .await
            .expect("poll")
            .status();
        assert_eq!(status, 200, "request {i} is within the limit");
    }
    let refused = client
        .get(app.url("/debug/buffering"))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.expect("JSON error");
    assert_eq!(body["error"], "too_many_connections");
    // The job routes are not affected.
    assert_eq!(
        client
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );
}

/// Loads the self-test page through `nginx`, waits for its verdict, leaves a
/// screenshot named `shot`, checks that `jobcast.selfTest()` called directly
/// agrees, and returns the page's result and its text.
async fn page_verdict(nginx: &Nginx, shot: &str) -> (Value, String) {
    let browser = Chromium::launch().await;
    let page = browser.new_page().await;
    page.goto(&nginx.url("/static/buffering.html")).await;
    page.wait_js(
        "['passes','buffered','blocked'].includes(document.getElementById('verdict')?.dataset.verdict)",
        "the self-test page reaches a verdict",
        VERDICT_TIMEOUT,
    )
    .await;
    page.wait_at_rest(VERDICT_TIMEOUT).await;
    let path = artifact_path(shot);
    page.screenshot(&path).await;
    eprintln!("screenshot of the self-test verdict: {}", path.display());
    let result = page.eval("window.__selftest").await.expect("the result");
    let text = page
        .eval("document.querySelector('main').innerText")
        .await
        .expect("page text");
    // The same check, called as an application would: jobcast.selfTest().
    let direct = page
        .eval("import('/static/jobcast.js').then((jobcast) => jobcast.selfTest()).then((r) => r.verdict)")
        .await
        .expect("jobcast.selfTest() resolves");
    assert_eq!(
        direct, result["verdict"],
        "jobcast.selfTest() gives the page's verdict"
    );
    (result, text.as_str().unwrap_or_default().to_owned())
}

fn cause_ids(result: &Value) -> Vec<String> {
    result["causes"]
        .as_array()
        .expect("causes")
        .iter()
        .map(|c| c["id"].as_str().expect("cause id").to_owned())
        .collect()
}

#[tokio::test]
async fn selftest_page_passes_through_the_shipped_nginx_config() {
    let app = spawn_app().await;
    let nginx = Nginx::production(app.addr.port()).start().await;
    let (result, text) = page_verdict(&nginx, "selftest-passes.png").await;
    assert_eq!(result["verdict"], "passes", "{result:#}");
    assert_eq!(result["ticks"].as_array().map(Vec::len), Some(10));
    assert_eq!(result["details"]["contentEncoding"], "identity");
    assert!(
        result["details"]["server"]
            .as_str()
            .is_some_and(|s| s.contains("nginx")),
        "the page went through nginx: {result:#}"
    );
    assert!(
        text.contains("events arrive one by one"),
        "the page says it in words: {text}"
    );
}

#[tokio::test]
async fn selftest_page_says_buffered_and_names_the_cause_behind_a_buffering_gzip_proxy() {
    let app = spawn_app().await;
    // The strict nginx (buffering on, gzip on text/event-stream), made to
    // ignore and hide X-Accel-Buffering and to drop Content-Encoding:
    // identity, so neither of jobcast's defences holds.
    let nginx = Nginx::strict(app.addr.port())
        .proxy_directives(STRIP_ACCEL_BUFFERING)
        .proxy_directives(STRIP_CONTENT_ENCODING)
        .start()
        .await;
    let (result, text) = page_verdict(&nginx, "selftest-buffered.png").await;
    assert_eq!(result["verdict"], "buffered", "{result:#}");
    assert_eq!(result["details"]["contentEncoding"], "gzip", "{result:#}");
    let causes = cause_ids(&result);
    assert!(
        causes.contains(&"compression".to_owned())
            && causes.contains(&"proxy_buffering".to_owned()),
        "{causes:?}"
    );
    assert!(
        text.contains("Content-Encoding: gzip") && text.contains("gzip_types"),
        "the page names compression and its fix: {text}"
    );
    assert!(
        text.contains("X-Accel-Buffering") && text.contains("\"proxy_buffering off;\""),
        "and the buffering nginx and its fix: {text}"
    );
}

#[tokio::test]
async fn selftest_page_says_blocked_and_that_websocket_works() {
    let app = spawn_app().await;
    let nginx = Nginx::strict(app.addr.port()).block_sse().start().await;
    let (result, text) = page_verdict(&nginx, "selftest-blocked.png").await;
    assert_eq!(result["verdict"], "blocked", "{result:#}");
    assert_eq!(result["transports"]["sse"], false);
    assert_eq!(result["transports"]["ws"], true, "{result:#}");
    assert_eq!(result["transports"]["poll"], true, "{result:#}");
    assert!(text.contains("WebSocket works"), "{text}");
}

#[tokio::test]
async fn selftest_page_says_blocked_and_that_long_poll_works() {
    let app = spawn_app().await;
    let nginx = Nginx::strict(app.addr.port())
        .block_sse()
        .block_ws()
        .start()
        .await;
    let (result, text) = page_verdict(&nginx, "selftest-blocked-poll.png").await;
    assert_eq!(result["verdict"], "blocked", "{result:#}");
    assert_eq!(result["transports"]["ws"], false, "{result:#}");
    assert_eq!(result["transports"]["poll"], true, "{result:#}");
    assert!(text.contains("long-polling works"), "{text}");
}
