//! OpenTelemetry: the real binary with `OTEL_EXPORTER_OTLP_ENDPOINT` pointed at
//! a small OTLP/JSON receiver of the suite exports a span per stream and per
//! fan-out under `service.name` `jobcast`, and a document carrying a worker's
//! `traceparent` yields a fan-out span in the worker's trace.

use std::time::Duration;

use crate::app::{bearer, claims, sign};
use crate::child::ChildApp;
use crate::clients::Gateway as _;
use crate::support::otlp_receiver::attribute;
use crate::support::{OtlpReceiver, RedisServer, wait_for};

/// A worker's trace and span ids, as its own tracer would have made them.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const WORKER_SPAN_ID: &str = "00f067aa0ba902b7";

/// OTLP/JSON writes ids in hex; accept base64 too (older encoders).
fn is_id(value: &serde_json::Value, hex: &str) -> bool {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>(),
    );
    value
        .as_str()
        .is_some_and(|v| v.eq_ignore_ascii_case(hex) || v == b64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_and_its_updates_are_traced_and_join_the_workers_trace() {
    let receiver = OtlpReceiver::start().await;
    let redis = RedisServer::start().await;
    let app = ChildApp::spawn(
        &redis.url(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".into()),
            // Export batches every 200 ms instead of every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ],
    )
    .await;
    redis
        .set("progress:job:t", r#"{"seq":1,"owner_id":"alice"}"#)
        .await;
    let auth = bearer(&sign(&claims("alice")));
    let mut sse = app.sse("/jobs/t/events", &auth).await;
    sse.expect("connected").await;
    sse.expect("progress").await;
    let traceparent = format!("00-{TRACE_ID}-{WORKER_SPAN_ID}-01");
    redis
        .publish(
            "progress:job:t",
            &format!(
                r#"{{"seq":2,"owner_id":"alice","status":"completed","traceparent":"{traceparent}"}}"#
            ),
        )
        .await;
    assert_eq!(sse.expect("progress").await.id.as_deref(), Some("2"));
    sse.expect("done").await;
    sse.expect_end().await;

    // The stream span ends with the stream; both reach the receiver in a batch.
    let (stream, fanout) = wait_for(
        Duration::from_secs(10),
        "the stream and the traced fan-out spans are exported",
        || async {
            let spans = receiver.spans();
            let stream = spans
                .iter()
                .find(|(svc, s)| svc == "jobcast" && s["name"] == "stream")
                .cloned();
            let fanout = spans
                .iter()
                .find(|(svc, s)| {
                    svc == "jobcast" && s["name"] == "fanout" && is_id(&s["traceId"], TRACE_ID)
                })
                .cloned();
            stream.zip(fanout)
        },
    )
    .await;
    let (_, stream) = stream;
    assert_eq!(attribute(&stream, "job").as_deref(), Some("t"));
    assert_eq!(attribute(&stream, "transport").as_deref(), Some("sse"));
    let digest = attribute(&stream, "user_digest").expect("a user digest");
    assert!(digest.len() == 16 && digest != "alice", "{digest}");

    let (_, fanout) = fanout;
    assert!(
        is_id(&fanout["parentSpanId"], WORKER_SPAN_ID),
        "the worker's span is the parent: {fanout}"
    );
    assert_eq!(attribute(&fanout, "outcome").as_deref(), Some("accepted"));
    assert_eq!(attribute(&fanout, "source").as_deref(), Some("channel"));
    assert_eq!(attribute(&fanout, "watchers").as_deref(), Some("1"));
    assert!(attribute(&fanout, "encode_us").is_some());
}
